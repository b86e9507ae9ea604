//! Media types (RFC 9110 8.3.1: `type/subtype; name=value; name="quoted value"`), Accept
//! negotiation, and the framing of `multipart/related` bodies (RFC 2387) that WADO-RS sends
//! and STOW-RS receives.

use bytes::Bytes;

use super::WebError;

/// A media type or Accept range: lower-case `type/subtype` and its parameters (names lower
/// case, values unquoted).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaType {
    pub essence: String,
    pub params: Vec<(String, String)>,
}

/// Parameters of one media type at most (a header is untrusted).
const MAX_PARAMS: usize = 16;

impl MediaType {
    /// Parse one media type; `None` when it is not `type/subtype[; params]`.
    pub fn parse(text: &str) -> Option<MediaType> {
        let mut rest = text.trim();
        let end = rest.find(';').unwrap_or(rest.len());
        let essence = rest[..end].trim().to_ascii_lowercase();
        let (t, s) = essence.split_once('/')?;
        let token = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&b))
        };
        if !token(t) || !token(s) {
            return None;
        }
        rest = &rest[end..];
        let mut params = Vec::new();
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start();
            if r.is_empty() {
                break;
            }
            let eq = r.find('=')?;
            let name = r[..eq].trim().to_ascii_lowercase();
            let after = r[eq + 1..].trim_start();
            let (value, next) = if let Some(q) = after.strip_prefix('"') {
                // Quoted string: backslash escapes the next character.
                let mut v = String::new();
                let mut chars = q.char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            close = Some(i);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                let close = close?;
                (v, q[close + 1..].trim_start())
            } else {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            if !token(&name) || params.len() >= MAX_PARAMS {
                return None;
            }
            params.push((name, value));
            rest = next;
        }
        if !rest.is_empty() {
            return None;
        }
        Some(MediaType { essence, params })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Accept quality (`q`), 1 when absent.
    pub fn quality(&self) -> f32 {
        self.param("q")
            .and_then(|q| q.parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0)
    }

    /// Whether this Accept range covers the media type `essence` (wildcards allowed).
    pub fn covers(&self, essence: &str) -> bool {
        let (t, _) = essence.split_once('/').unwrap_or((essence, ""));
        self.essence == "*/*"
            || self.essence == essence
            || self.essence.strip_suffix("/*") == Some(t)
    }
}

/// The ranges of an Accept header, best first (q=0 dropped); `*/*` when there is none.
/// Ranges are split on commas outside quotes.
pub fn accept_ranges(accept: Option<&str>) -> Vec<MediaType> {
    let Some(text) = accept.filter(|a| !a.trim().is_empty()) else {
        return vec![MediaType::parse("*/*").expect("valid")];
    };
    let mut ranges = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices().chain([(text.len(), ',')]) {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if let Some(m) = MediaType::parse(&text[start..i]) {
                    ranges.push(m);
                }
                start = i + 1;
                if ranges.len() >= 32 {
                    break;
                }
            }
            _ => {}
        }
    }
    ranges.retain(|m| m.quality() > 0.0);
    ranges.sort_by(|a, b| b.quality().total_cmp(&a.quality()));
    ranges
}

/// A random boundary for one response (RFC 2046 5.1.1: at most 70 characters, none of which
/// can appear in a DICOM object by accident with any useful probability).
pub fn new_boundary() -> String {
    let mut b = [0u8; 16];
    crate::index::account::random_bytes(&mut b);
    format!("pacsd-{}", hex::encode(b))
}

/// The header of one part, preceded by its delimiter.
pub fn part_header(boundary: &str, content_type: &str, location: Option<&str>) -> Bytes {
    let mut h = format!("\r\n--{boundary}\r\nContent-Type: {content_type}\r\n");
    if let Some(l) = location {
        h.push_str(&format!("Content-Location: {l}\r\n"));
    }
    h.push_str("\r\n");
    Bytes::from(h)
}

/// The close delimiter.
pub fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// The Content-Type header of a multipart/related body of `part_type` parts.
pub fn related_content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// How data sets (QIDO-RS matches, WADO-RS metadata) are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetsAs {
    /// `application/dicom+json`: one JSON array (PS3.18 F.2).
    Json,
    /// `multipart/related; type="application/dicom+xml"`: one Native DICOM Model document
    /// per part (PS3.19 A.1).
    Xml,
}

/// The first of the two the Accept ranges allow, in their order of quality (JSON for `*/*`
/// and without Accept); 406 when they allow neither.
pub fn datasets_as(accept: &[MediaType]) -> Result<DatasetsAs, WebError> {
    accept
        .iter()
        .find_map(|r| {
            if r.covers("application/dicom+json") || r.covers("application/json") {
                Some(DatasetsAs::Json)
            } else if r.essence == "application/dicom+xml"
                || (r.covers("multipart/related")
                    && r.param("type")
                        .is_some_and(|t| t.eq_ignore_ascii_case("application/dicom+xml")))
            {
                Some(DatasetsAs::Xml)
            } else {
                None
            }
        })
        .ok_or_else(|| {
            WebError::NotAcceptable(
                "data sets are sent as application/dicom+json or multipart/related; \
                 type=\"application/dicom+xml\""
                    .into(),
            )
        })
}

/// A 200 answer carrying `datasets` (DICOM JSON objects) as `how` says.
pub fn datasets_response(
    datasets: &[serde_json::Value],
    how: DatasetsAs,
) -> Result<axum::response::Response, WebError> {
    use axum::response::IntoResponse;
    let (content_type, body) = match how {
        DatasetsAs::Json => (
            "application/dicom+json".to_string(),
            serde_json::to_vec(datasets).map_err(|e| WebError::Internal(e.to_string()))?,
        ),
        DatasetsAs::Xml => {
            let boundary = new_boundary();
            let mut body = Vec::new();
            for ds in datasets {
                body.extend_from_slice(&part_header(&boundary, "application/dicom+xml", None));
                body.extend_from_slice(crate::dicomxml::native_xml(ds).as_bytes());
            }
            body.extend_from_slice(&closing(&boundary));
            (
                related_content_type(&boundary, "application/dicom+xml"),
                body,
            )
        }
    };
    Ok((
        axum::http::StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response())
}

/// Longest boundary accepted in a request.
const MAX_BOUNDARY: usize = 200;

/// The boundary and part type of a request's `multipart/related` Content-Type.
pub fn request_boundary(content_type: Option<&str>) -> Result<(String, Option<String>), WebError> {
    let ct = content_type.ok_or_else(|| {
        WebError::UnsupportedMediaType("Content-Type is missing; multipart/related expected".into())
    })?;
    let m = MediaType::parse(ct).ok_or_else(|| {
        WebError::UnsupportedMediaType(format!(
            "Content-Type `{}` cannot be parsed",
            super::clip(ct)
        ))
    })?;
    if m.essence != "multipart/related" {
        return Err(WebError::UnsupportedMediaType(format!(
            "Content-Type {} is not multipart/related",
            super::clip(&m.essence)
        )));
    }
    // RFC 2046 allows 70 characters; Orthanc's DICOMweb plugin sends 73. Be lenient, within
    // a bound.
    let boundary = m
        .param("boundary")
        .filter(|b| (1..=MAX_BOUNDARY).contains(&b.len()))
        .ok_or_else(|| WebError::BadRequest("multipart/related without a valid boundary".into()))?;
    Ok((
        boundary.to_string(),
        m.param("type").map(str::to_ascii_lowercase),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_unquoted_parameters() {
        let m = MediaType::parse(
            "Multipart/Related; type=\"application/dicom\"; boundary=abc; transfer-syntax=1.2.840.10008.1.2.1",
        )
        .unwrap();
        assert_eq!(m.essence, "multipart/related");
        assert_eq!(m.param("type"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("abc"));
        assert_eq!(m.param("transfer-syntax"), Some("1.2.840.10008.1.2.1"));
        let q =
            MediaType::parse(r#"multipart/related; type=application/dicom; boundary="a;b \"c\"""#)
                .unwrap();
        assert_eq!(q.param("boundary"), Some("a;b \"c\""));
        assert_eq!(q.param("type"), Some("application/dicom"));
        for bad in ["", "text", "a/b; x", "a/b; x=\"open", "a b/c", "a/b; =1"] {
            assert_eq!(MediaType::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn accept_ranges_sorted_by_quality_and_split_outside_quotes() {
        let r = accept_ranges(Some(
            "image/png;q=0.5, multipart/related; type=\"application/dicom\"; transfer-syntax=*, text/html;q=0",
        ));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].essence, "multipart/related");
        assert_eq!(r[0].param("transfer-syntax"), Some("*"));
        assert_eq!(r[1].essence, "image/png");
        assert!(accept_ranges(None)[0].covers("application/dicom+json"));
        assert!(MediaType::parse("image/*").unwrap().covers("image/jpeg"));
        assert!(
            !MediaType::parse("image/*")
                .unwrap()
                .covers("application/dicom")
        );
    }

    #[test]
    fn request_boundaries() {
        let (b, t) = request_boundary(Some(
            "multipart/related; type=\"application/dicom\"; boundary=XyZ",
        ))
        .unwrap();
        assert_eq!(
            (b.as_str(), t.as_deref()),
            ("XyZ", Some("application/dicom"))
        );
        assert!(matches!(
            request_boundary(None),
            Err(WebError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            request_boundary(Some("application/dicom")),
            Err(WebError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            request_boundary(Some("multipart/related; type=\"application/dicom\"")),
            Err(WebError::BadRequest(_))
        ));
    }
}
