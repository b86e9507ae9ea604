//! ISO 2022 code extensions (PS3.5 6.1.2.5): multi-valued Specific Character Sets such as
//! `\ISO 2022 IR 87` (Japanese) or `\ISO 2022 IR 149` (Korean), whose values switch
//! character sets with escape sequences. dicom-rs decodes only the first listed set, which
//! for these is the ISO 646 default, byte for byte; this module re-decodes such text and
//! encodes answers back. Pure functions, no I/O.

use encoding_rs::{EUC_JP, EUC_KR, GBK, ISO_2022_JP, SHIFT_JIS};

const ESC: u8 = 0x1B;

/// Whether text under this Specific Character Set uses ISO 2022 code extensions that dicom-rs
/// does not apply (more than one value, at least one of them an `ISO 2022` set).
pub fn needs_iso2022(charset: &str) -> bool {
    let values: Vec<&str> = charset.split('\\').map(str::trim).collect();
    values.len() > 1 && values.iter().any(|v| v.starts_with("ISO 2022"))
}

/// The bytes of a string that was decoded one byte per character (ISO 8859-1 mapping), or
/// `None` if it holds characters that did not come from such a decoding.
pub fn latin1_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum G0 {
    Ascii,
    /// JIS X 0208 (ISO-IR 87), two bytes 0x21..0x7E.
    Jis0208,
    /// JIS X 0212 (ISO-IR 159), two bytes 0x21..0x7E.
    Jis0212,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum G1 {
    None,
    /// JIS X 0201 katakana (ISO-IR 13), one byte 0xA1..0xDF.
    Katakana,
    /// KS X 1001 (ISO-IR 149), two bytes 0xA1..0xFE.
    Ksx1001,
    /// GB 2312 (ISO-IR 58), two bytes 0xA1..0xFE.
    Gb2312,
    /// ISO 8859-1 right half (ISO-IR 100).
    Latin1,
}

/// Decode a value's raw bytes under ISO 2022 code extensions. The designations reset to
/// ASCII at every component or value delimiter (`^`, `=`, `\`, CR, LF), PS3.5 6.1.2.5.3.
pub fn decode_iso2022(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut g0, mut g1) = (G0::Ascii, G1::None);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == ESC {
            let rest = &raw[i + 1..];
            let (len, set0, set1) = match rest {
                [b'(', b'B', ..] | [b'(', b'J', ..] => (2, Some(G0::Ascii), None),
                [b'$', b'B', ..] | [b'$', b'@', ..] => (2, Some(G0::Jis0208), None),
                [b'$', b'(', b'D', ..] => (3, Some(G0::Jis0212), None),
                [b')', b'I', ..] => (2, None, Some(G1::Katakana)),
                [b'$', b')', b'C', ..] => (3, None, Some(G1::Ksx1001)),
                [b'$', b')', b'A', ..] => (3, None, Some(G1::Gb2312)),
                [b'-', b'A', ..] => (2, None, Some(G1::Latin1)),
                _ => (0, None, None),
            };
            if len > 0 {
                g0 = set0.unwrap_or(g0);
                g1 = set1.unwrap_or(g1);
                i += 1 + len;
                continue;
            }
        }
        if matches!(b, b'^' | b'=' | b'\\' | b'\r' | b'\n') {
            g0 = G0::Ascii;
            g1 = G1::None;
            out.push(b as char);
            i += 1;
            continue;
        }
        if b < 0x80 {
            match g0 {
                G0::Ascii => {
                    out.push(b as char);
                    i += 1;
                }
                G0::Jis0208 | G0::Jis0212 => {
                    let pair = &raw[i..(i + 2).min(raw.len())];
                    let decoded = if g0 == G0::Jis0208 {
                        let mut buf = vec![ESC, b'$', b'B'];
                        buf.extend_from_slice(pair);
                        ISO_2022_JP.decode_without_bom_handling(&buf).0.into_owned()
                    } else {
                        // EUC-JP carries JIS X 0212 behind the 0x8F single shift.
                        let buf: Vec<u8> = std::iter::once(0x8F)
                            .chain(pair.iter().map(|b| b | 0x80))
                            .collect();
                        EUC_JP.decode_without_bom_handling(&buf).0.into_owned()
                    };
                    out.push_str(&decoded);
                    i += pair.len();
                }
            }
            continue;
        }
        match g1 {
            G1::Katakana => {
                out.push_str(&SHIFT_JIS.decode_without_bom_handling(&[b]).0);
                i += 1;
            }
            G1::Ksx1001 | G1::Gb2312 => {
                let pair = &raw[i..(i + 2).min(raw.len())];
                let codec = if g1 == G1::Ksx1001 { EUC_KR } else { GBK };
                out.push_str(&codec.decode_without_bom_handling(pair).0);
                i += pair.len();
            }
            G1::Latin1 | G1::None => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    out
}

/// Encode `value` for a response under a multi-valued ISO 2022 Specific Character Set, or
/// `None` if this node cannot (then the answer goes out in ISO_IR 192). Supported: Japanese
/// (IR 87) and Korean (IR 149); each delimiter-separated part that is not ASCII gets its own
/// escape sequence, as PS3.5 Annexes H and I show.
pub fn encode_iso2022(value: &str, charset: &str) -> Option<Vec<u8>> {
    let values: Vec<&str> = charset.split('\\').map(str::trim).collect();
    let japanese = values.contains(&"ISO 2022 IR 87");
    let korean = values.contains(&"ISO 2022 IR 149");
    let mut out = Vec::with_capacity(value.len() * 2);
    let mut part = String::new();
    let flush = |part: &str, out: &mut Vec<u8>| -> Option<()> {
        if part.is_ascii() {
            out.extend_from_slice(part.as_bytes());
            return Some(());
        }
        if japanese {
            let (bytes, _, errors) = ISO_2022_JP.encode(part);
            if errors {
                return None;
            }
            out.extend_from_slice(&bytes);
            Some(())
        } else if korean {
            let (bytes, _, errors) = EUC_KR.encode(part);
            if errors {
                return None;
            }
            out.extend_from_slice(&[ESC, b'$', b')', b'C']);
            out.extend_from_slice(&bytes);
            Some(())
        } else {
            None
        }
    };
    for c in value.chars() {
        if matches!(c, '^' | '=' | '\\' | '\r' | '\n') {
            flush(&part, &mut out)?;
            part.clear();
            out.push(c as u8);
        } else {
            part.push(c);
        }
    }
    flush(&part, &mut out)?;
    Some(out)
}

/// Correct a value dicom-rs decoded under `charset`: for ISO 2022 code extensions it was
/// decoded byte for byte, so its bytes are re-decoded here; any other value is returned as is.
pub fn redecode(value: String, charset: Option<&str>) -> String {
    match charset
        .filter(|c| needs_iso2022(c))
        .and(latin1_bytes(&value))
    {
        Some(bytes) => decode_iso2022(&bytes),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PS3.5 H.3.1, Japanese with ISO 2022 IR 87.
    const YAMADA: &[u8] =
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
    /// PS3.5 I.2, Korean with ISO 2022 IR 149.
    const HONG: &[u8] = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";

    #[test]
    fn decodes_the_standards_examples() {
        assert_eq!(
            decode_iso2022(YAMADA),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
        assert_eq!(decode_iso2022(HONG), "Hong^Gildong=洪^吉洞=홍^길동");
    }

    /// PS3.5 K.2, Chinese with ISO 2022 IR 58 (GB 2312 in G1).
    #[test]
    fn decodes_the_chinese_example() {
        let wang = b"Wang^XiaoDong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab=";
        assert_eq!(decode_iso2022(wang), "Wang^XiaoDong=王^小东=");
        // Chinese answers are not encoded back to ISO 2022 (they go out in ISO_IR 192).
        assert!(encode_iso2022("王^小东", "\\ISO 2022 IR 58").is_none());
    }

    #[test]
    fn encodes_back_to_the_same_bytes() {
        assert_eq!(
            encode_iso2022("Yamada^Tarou=山田^太郎=やまだ^たろう", "\\ISO 2022 IR 87").unwrap(),
            YAMADA
        );
        assert_eq!(
            encode_iso2022("Hong^Gildong=洪^吉洞=홍^길동", "\\ISO 2022 IR 149").unwrap(),
            HONG
        );
        assert_eq!(
            encode_iso2022("Doe^John", "\\ISO 2022 IR 87").unwrap(),
            b"Doe^John"
        );
        assert!(encode_iso2022("Dvořák", "\\ISO 2022 IR 87").is_none());
    }

    #[test]
    fn detection_and_byte_recovery() {
        assert!(needs_iso2022("\\ISO 2022 IR 87"));
        assert!(needs_iso2022("ISO 2022 IR 6\\ISO 2022 IR 149"));
        assert!(!needs_iso2022("ISO_IR 100"));
        assert!(!needs_iso2022("ISO_IR 192"));
        assert_eq!(latin1_bytes("a\u{1b}\u{fb}"), Some(vec![b'a', 0x1b, 0xfb]));
        assert_eq!(latin1_bytes("山"), None);
    }
}
