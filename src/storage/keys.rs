//! Object keys and UID validation: a UID becomes part of a key only after `Uid::parse` accepted it.

use std::fmt;

/// PS3.5 9.1: a UID is at most 64 characters.
pub const MAX_UID_LEN: usize = 64;

/// Why a UID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("UID is empty")]
    Empty,
    #[error("UID `{0}` is longer than 64 characters")]
    TooLong(String),
    #[error("UID `{0}` has a character other than digits and dots")]
    BadCharacter(String),
    #[error("UID `{0}` has an empty component")]
    EmptyComponent(String),
}

/// A validated UID (PS3.5 9.1): digits and dots only, no empty component, at most 64
/// characters. Safe as a path component and as SQL text. Components with a leading zero,
/// which PS3.5 forbids but real modalities emit, are accepted: refusing them would lose
/// images, and they cannot escape a key or a query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

impl Uid {
    /// Validate a UID as it came off the wire (trailing NUL/space padding removed first).
    pub fn parse(raw: &str) -> Result<Uid, UidError> {
        let s = raw.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
        if s.is_empty() {
            return Err(UidError::Empty);
        }
        if s.len() > MAX_UID_LEN {
            return Err(UidError::TooLong(s.chars().take(80).collect()));
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(UidError::BadCharacter(s.escape_debug().to_string()));
        }
        if s.split('.').any(str::is_empty) {
            return Err(UidError::EmptyComponent(s.to_string()));
        }
        Ok(Uid(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The storage key of an instance: `<prefix>/<Study>/<Series>/<SOP>.dcm` (DESIGN.md, Storage).
pub fn object_key(prefix: &str, study: &Uid, series: &Uid, sop: &Uid) -> String {
    if prefix.is_empty() {
        format!("{study}/{series}/{sop}.dcm")
    } else {
        format!(
            "{}/{study}/{series}/{sop}.dcm",
            prefix.trim_end_matches('/')
        )
    }
}

/// The three UIDs of an object key, if it is one (used by `index rebuild`).
pub fn parse_object_key(prefix: &str, key: &str) -> Option<(Uid, Uid, Uid)> {
    let rest = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix.trim_end_matches('/'))?
            .strip_prefix('/')?
    };
    let mut parts = rest.split('/');
    let (study, series, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let sop = file.strip_suffix(".dcm")?;
    Some((
        Uid::parse(study).ok()?,
        Uid::parse(series).ok()?,
        Uid::parse(sop).ok()?,
    ))
}

/// Whether `key` names what an interrupted put left behind rather than an object:
/// hdfs-native-object-store writes `.{name}.tmp.{n}` beside the object and renames it, and a
/// put that failed or was cut off leaves that file where listings show it. Such a file is
/// never an object (its name does not end in `.dcm` or `.jpg`) and is removed once it is
/// older than any put can last.
pub fn is_abandoned_upload(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let Some(hidden) = name.strip_prefix('.') else {
        return false;
    };
    match hidden.rsplit_once(".tmp.") {
        Some((object, n)) => {
            !object.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_uids_and_strips_padding() {
        let u = Uid::parse("1.2.840.10008.5.1.4.1.1.2\0").unwrap();
        assert_eq!(u.as_str(), "1.2.840.10008.5.1.4.1.1.2");
        assert!(Uid::parse("2.25.329800735698586629295641978511506172918").is_ok());
        let longest = format!("{}1", "1.".repeat(31));
        assert_eq!(longest.len(), 63);
        assert!(Uid::parse(&longest).is_ok());
    }

    #[test]
    fn refuses_what_could_escape_a_path_or_sql() {
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(Uid::parse("\0"), Err(UidError::Empty));
        assert!(matches!(
            Uid::parse("../../etc/passwd"),
            Err(UidError::BadCharacter(_))
        ));
        assert!(matches!(
            Uid::parse("1.2'; DROP TABLE x"),
            Err(UidError::BadCharacter(_))
        ));
        assert!(matches!(
            Uid::parse("1.2/3"),
            Err(UidError::BadCharacter(_))
        ));
        assert!(matches!(
            Uid::parse("1..2"),
            Err(UidError::EmptyComponent(_))
        ));
        assert!(matches!(
            Uid::parse(".1.2"),
            Err(UidError::EmptyComponent(_))
        ));
        assert!(matches!(
            Uid::parse("1.2."),
            Err(UidError::EmptyComponent(_))
        ));
        assert!(matches!(
            Uid::parse(&"1".repeat(65)),
            Err(UidError::TooLong(_))
        ));
        assert!(matches!(
            Uid::parse("1.2.a"),
            Err(UidError::BadCharacter(_))
        ));
    }

    #[test]
    fn keys_round_trip() {
        let (a, b, c) = (
            Uid::parse("1.2").unwrap(),
            Uid::parse("1.3").unwrap(),
            Uid::parse("1.4").unwrap(),
        );
        let k = object_key("dicom", &a, &b, &c);
        assert_eq!(k, "dicom/1.2/1.3/1.4.dcm");
        assert_eq!(
            parse_object_key("dicom", &k),
            Some((a.clone(), b.clone(), c.clone()))
        );
        assert_eq!(
            parse_object_key("", &object_key("", &a, &b, &c)),
            Some((a, b, c))
        );
        assert_eq!(parse_object_key("dicom", "dicom/1.2/x/1.4.dcm"), None);
        assert_eq!(parse_object_key("dicom", "dicom/1.2/1.3/1.4.jpg"), None);
        // What an interrupted HDFS put leaves is not an object, and is recognised as such.
        let temp = "dicom/1.2/1.3/.1.4.dcm.tmp.1";
        assert_eq!(parse_object_key("dicom", temp), None);
        assert!(is_abandoned_upload(temp));
        assert!(is_abandoned_upload("dicom/1.2/1.3/.1.4.jpg.tmp.12"));
        for not_temp in [
            "dicom/1.2/1.3/1.4.dcm",
            "dicom/1.2/1.3/.1.4.dcm.tmp.",
            "dicom/1.2/1.3/.1.4.dcm.tmp.x",
            "dicom/1.2/1.3/1.4.dcm.tmp.1",
            "dicom/1.2/1.3/..tmp.1",
        ] {
            assert!(!is_abandoned_upload(not_temp), "{not_temp}");
        }
    }
}
