//! The one boundary where bytes from outside become DICOM objects: a bounded pre-scan of the
//! encoded data set (PS3.5 7.1-7.5) runs before dicom-rs parses anything a peer sent or
//! storage returned, deflated data sets are inflated under a cap, and a panic inside dicom-rs
//! or a pixel decoder on such bytes is contained here and becomes an error.
//!
//! Why a pre-scan: dicom-rs parses sequences recursively with no depth limit (about 1,700
//! nested sequences overflow a 2 MiB tokio worker stack and abort the process) and allocates
//! each value at its declared length before reading it (a 92-byte message declaring a 2 GiB
//! element cost 2 GB of RAM). It also stops quietly at the end of the input, so a truncated
//! object parsed "successfully". The scan walks the element headers only (no values are
//! copied), in the same interpretation dicom-rs uses, and refuses:
//! - nesting of sequences deeper than the caller's limit;
//! - any declared length longer than the bytes that remain in its container;
//! - a data set that is not well-formed to its last byte (a cut element, an undefined-length
//!   sequence or item without its delimiter, an item where an element belongs).

use std::cell::Cell;
use std::io::{Cursor, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntax, TransferSyntaxIndex};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};

/// Deepest nesting of sequences accepted in a data set. Real objects rarely go past 6
/// (structured reports, RT structure sets, enhanced multi-frame functional groups reach 4-8);
/// 64 leaves ample room while keeping dicom-rs's recursion far from the stack's end.
pub const MAX_DEPTH: usize = 64;
/// Command sets (PS3.7 E.1) have no sequences at all.
pub const COMMAND_DEPTH: usize = 0;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// What the pre-scan refused. Messages are short: they become a DIMSE ErrorComment, which
/// holds 64 characters (PS3.7 C.4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("sequences nested over {limit} deep at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
    #[error("{tag} at byte {offset} declares {declared} bytes, {remaining} left")]
    LengthBeyondEnd {
        tag: Tag,
        offset: usize,
        declared: u32,
        remaining: usize,
    },
    #[error("data set cut short at byte {offset} (in {inside})")]
    Truncated { offset: usize, inside: &'static str },
    #[error("{what} at byte {offset} not closed")]
    Unterminated { what: &'static str, offset: usize },
    #[error("unexpected {tag} at byte {offset}, not {expected}")]
    Unexpected {
        tag: Tag,
        offset: usize,
        expected: &'static str,
    },
    #[error("{tag} at byte {offset}: {declared} bytes is not a whole number of {vr} values")]
    PartialValue {
        tag: Tag,
        offset: usize,
        vr: VR,
        declared: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DataSetError {
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    #[error("{0}")]
    Malformed(#[from] ScanError),
    #[error("inflating the deflated data set: {0}")]
    Inflate(String),
    #[error("deflated data set inflates to over {limit} bytes")]
    InflatedTooLarge { limit: u64 },
    #[error("parsing the data set: {0}")]
    Parse(String),
    #[error("the decoder failed on this data ({what}): {message}")]
    DecoderPanicked { what: &'static str, message: String },
}

/// How a data set's elements are encoded (PS3.5 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
}

/// What a successful scan saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Data elements, at every level (items and delimiters not counted).
    pub elements: usize,
    /// Deepest sequence nesting met (0: no sequences).
    pub depth: usize,
}

/// Scan `bytes` as one data set in `encoding`: see the module notes for what is refused.
pub fn scan(bytes: &[u8], encoding: Encoding, max_depth: usize) -> Result<Scanned, ScanError> {
    let mut s = Scanner {
        bytes,
        encoding,
        max_depth,
        seen: Scanned {
            elements: 0,
            depth: 0,
        },
    };
    s.elements(0, bytes.len(), false, 0)?;
    Ok(s.seen)
}

/// One element header as read from the bytes.
struct Header {
    tag: Tag,
    /// The explicit VR, when the encoding carries one (never for items and delimiters).
    vr: Option<[u8; 2]>,
    len: u32,
    /// Bytes of the header itself (8 or 12).
    size: usize,
}

impl Header {
    /// The value's length, when the value (after this header, read at `pos`) ends by `end`.
    fn value_len(&self, pos: usize, end: usize) -> Result<usize, ScanError> {
        let body = pos + self.size;
        let len = self.len as usize;
        if len > end - body {
            return Err(ScanError::LengthBeyondEnd {
                tag: self.tag,
                offset: pos,
                declared: self.len,
                remaining: end - body,
            });
        }
        Ok(len)
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
    max_depth: usize,
    seen: Scanned,
}

impl Scanner<'_> {
    fn u16_at(&self, pos: usize) -> u16 {
        let b = [self.bytes[pos], self.bytes[pos + 1]];
        match self.encoding {
            Encoding::ExplicitBig => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        }
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let b = [
            self.bytes[pos],
            self.bytes[pos + 1],
            self.bytes[pos + 2],
            self.bytes[pos + 3],
        ];
        match self.encoding {
            Encoding::ExplicitBig => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }

    /// The header at `pos`, which must fit before `end`.
    fn header(&self, pos: usize, end: usize, inside: &'static str) -> Result<Header, ScanError> {
        let truncated = ScanError::Truncated {
            offset: pos,
            inside,
        };
        if end - pos < 8 {
            return Err(truncated);
        }
        let tag = Tag(self.u16_at(pos), self.u16_at(pos + 2));
        // PS3.5 7.5: items and delimiters have no VR in any transfer syntax.
        if tag.group() == 0xFFFE || self.encoding == Encoding::ImplicitLittle {
            return Ok(Header {
                tag,
                vr: None,
                len: self.u32_at(pos + 4),
                size: 8,
            });
        }
        let vr = [self.bytes[pos + 4], self.bytes[pos + 5]];
        if short_length(vr) {
            return Ok(Header {
                tag,
                vr: Some(vr),
                len: u32::from(self.u16_at(pos + 6)),
                size: 8,
            });
        }
        // PS3.5 Table 7.1-1: two reserved bytes, then a 32-bit length. dicom-rs reads an
        // unknown VR this way too (as UN).
        if end - pos < 12 {
            return Err(truncated);
        }
        Ok(Header {
            tag,
            vr: Some(vr),
            len: self.u32_at(pos + 8),
            size: 12,
        })
    }

    /// The VR dicom-rs reads an element with: the explicit one (unknown ones as UN), or in
    /// Implicit VR the data dictionary's (Pixel Data and overlays are OW there).
    fn vr_of(&self, h: &Header) -> VR {
        match h.vr {
            Some(bytes) => VR::from_binary(bytes).unwrap_or(VR::UN),
            None => {
                let overlay = h.tag.group() >> 8 == 0x60 && h.tag.element() == 0x3000;
                if h.tag == PIXEL_DATA || overlay {
                    VR::OW
                } else {
                    StandardDataDictionary
                        .by_tag(h.tag)
                        .map_or(VR::UN, |e| e.vr().relaxed())
                }
            }
        }
    }

    /// The elements of a data set or item from `pos`. With `delimited`, they end at an Item
    /// Delimitation Item (returns the position after it); otherwise exactly at `end`.
    fn elements(
        &mut self,
        mut pos: usize,
        end: usize,
        delimited: bool,
        depth: usize,
    ) -> Result<usize, ScanError> {
        let inside = if depth == 0 { "data set" } else { "item" };
        loop {
            if pos == end {
                if delimited {
                    return Err(ScanError::Unterminated {
                        what: "item",
                        offset: pos,
                    });
                }
                return Ok(pos);
            }
            let h = self.header(pos, end, inside)?;
            let body = pos + h.size;
            match h.tag {
                ITEM_END if delimited => return Ok(body),
                // dicom-rs skips an item delimiter outside any sequence; so do we.
                ITEM_END if depth == 0 => {
                    pos = body;
                    continue;
                }
                ITEM | ITEM_END | SEQUENCE_END => {
                    return Err(ScanError::Unexpected {
                        tag: h.tag,
                        offset: pos,
                        expected: "a data element",
                    });
                }
                _ => {}
            }
            self.seen.elements += 1;
            if h.len == UNDEFINED {
                pos = if h.tag == PIXEL_DATA {
                    self.fragments(body, end)?
                } else {
                    // Any other undefined length is a sequence (dicom-rs reads UN this way).
                    self.sequence(body, end, None, depth + 1)?
                };
                continue;
            }
            let len = h.value_len(pos, end)?;
            match self.vr_of(&h) {
                VR::SQ => {
                    self.sequence(body, end, Some(len), depth + 1)?;
                }
                // dicom-rs reads length / size values of a binary VR and then moves on by the
                // whole length: a remainder would leave it reading headers off by a few bytes
                // (found by fuzzing: a 5-byte UL made it allocate 4 GB two elements later).
                vr => {
                    if let Some(size) = binary_value_size(vr)
                        && !len.is_multiple_of(size)
                    {
                        return Err(ScanError::PartialValue {
                            tag: h.tag,
                            offset: pos,
                            vr,
                            declared: h.len,
                        });
                    }
                }
            }
            pos = body + len;
        }
    }

    /// The items of a sequence from `pos`: `len` bytes of them, or up to a Sequence
    /// Delimitation Item when the length is undefined (returns the position after it).
    fn sequence(
        &mut self,
        mut pos: usize,
        end: usize,
        len: Option<usize>,
        depth: usize,
    ) -> Result<usize, ScanError> {
        if depth > self.max_depth {
            return Err(ScanError::TooDeep {
                limit: self.max_depth,
                offset: pos,
            });
        }
        self.seen.depth = self.seen.depth.max(depth);
        let limit = len.map_or(end, |l| pos + l);
        loop {
            if pos == limit {
                if len.is_none() {
                    return Err(ScanError::Unterminated {
                        what: "sequence",
                        offset: pos,
                    });
                }
                return Ok(pos);
            }
            let h = self.header(pos, limit, "sequence")?;
            let body = pos + h.size;
            match h.tag {
                SEQUENCE_END if len.is_none() => return Ok(body),
                ITEM if h.len == UNDEFINED => pos = self.elements(body, limit, true, depth)?,
                ITEM => {
                    let item_len = h.value_len(pos, limit)?;
                    pos = self.elements(body, body + item_len, false, depth)?;
                }
                other => {
                    return Err(ScanError::Unexpected {
                        tag: other,
                        offset: pos,
                        expected: "an item",
                    });
                }
            }
        }
    }

    /// Encapsulated Pixel Data (PS3.5 A.4): items of raw fragments up to a Sequence
    /// Delimitation Item.
    fn fragments(&mut self, mut pos: usize, end: usize) -> Result<usize, ScanError> {
        loop {
            if pos == end {
                return Err(ScanError::Unterminated {
                    what: "encapsulated pixel data",
                    offset: pos,
                });
            }
            let h = self.header(pos, end, "encapsulated pixel data")?;
            let body = pos + h.size;
            match h.tag {
                SEQUENCE_END => return Ok(body),
                ITEM if h.len != UNDEFINED && (h.len as usize) <= end - body => {
                    pos = body + h.len as usize;
                }
                ITEM => {
                    return Err(ScanError::LengthBeyondEnd {
                        tag: h.tag,
                        offset: pos,
                        declared: h.len,
                        remaining: end - body,
                    });
                }
                other => {
                    return Err(ScanError::Unexpected {
                        tag: other,
                        offset: pos,
                        expected: "a fragment item",
                    });
                }
            }
        }
    }
}

/// The size of one value of a binary VR (PS3.5 Table 6.2-1), None for text and bytes.
fn binary_value_size(vr: VR) -> Option<usize> {
    match vr {
        VR::US | VR::SS | VR::OW => Some(2),
        VR::UL | VR::SL | VR::FL | VR::AT | VR::OL | VR::OF => Some(4),
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => Some(8),
        _ => None,
    }
}

/// PS3.5 Table 7.1-2: explicit VRs with a 16-bit length (the list dicom-rs uses).
fn short_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// The transfer syntax of `uid`, and the encoding of its data set once inflated.
fn resolve(uid: &str) -> Result<(&'static TransferSyntax, Encoding, bool), DataSetError> {
    let ts = TransferSyntaxRegistry
        .get(uid.trim_end_matches(['\0', ' ']))
        .ok_or_else(|| DataSetError::UnknownTransferSyntax(uid.to_string()))?;
    let deflated = matches!(ts.codec(), Codec::Dataset(Some(_)));
    // PS3.5 10.1 and A.1: Implicit VR Little Endian is the one syntax without explicit VRs
    // (dicom-rs does not expose the flag).
    let encoding = match (ts.uid() == IMPLICIT_VR_LITTLE_ENDIAN.uid(), ts.endianness()) {
        (true, _) => Encoding::ImplicitLittle,
        (false, Endianness::Little) => Encoding::ExplicitLittle,
        (false, Endianness::Big) => Encoding::ExplicitBig,
    };
    Ok((ts, encoding, deflated))
}

/// Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5: raw RFC 1951 deflate),
/// refusing to produce more than `limit` bytes.
pub fn inflate(bytes: &[u8], limit: u64) -> Result<Vec<u8>, DataSetError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataSetError::Inflate(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(DataSetError::InflatedTooLarge { limit });
    }
    Ok(out)
}

/// A data set ready for dicom-rs: its bytes (inflated when they were deflated) and the
/// transfer syntax to read them with.
pub struct Checked<'a> {
    pub bytes: std::borrow::Cow<'a, [u8]>,
    pub ts: &'static TransferSyntax,
}

/// Pre-scan a data set encoded in `transfer_syntax`; a deflated one is inflated first, to at
/// most `max_inflated` bytes.
pub fn check<'a>(
    bytes: &'a [u8],
    transfer_syntax: &str,
    max_depth: usize,
    max_inflated: u64,
) -> Result<Checked<'a>, DataSetError> {
    let (ts, encoding, deflated) = resolve(transfer_syntax)?;
    if deflated {
        let inflated = inflate(bytes, max_inflated)?;
        scan(&inflated, encoding, max_depth)?;
        let explicit = TransferSyntaxRegistry
            .get(EXPLICIT_VR_LITTLE_ENDIAN.uid())
            .expect("explicit VR little endian is built in");
        return Ok(Checked {
            bytes: inflated.into(),
            ts: explicit,
        });
    }
    scan(bytes, encoding, max_depth)?;
    Ok(Checked {
        bytes: bytes.into(),
        ts,
    })
}

/// Pre-scan, then parse a whole data set.
pub fn parse(
    bytes: &[u8],
    transfer_syntax: &str,
    max_depth: usize,
    max_inflated: u64,
) -> Result<InMemDicomObject, DataSetError> {
    let checked = check(bytes, transfer_syntax, max_depth, max_inflated)?;
    contain("parsing a data set", || {
        InMemDicomObject::read_dataset_with_ts(&checked.bytes[..], checked.ts)
            .map_err(|e| DataSetError::Parse(e.to_string()))
    })?
}

/// Pre-scan the whole data set (so a truncated or malformed tail is refused too), then parse
/// it up to Pixel Data, which is never read on ingest.
pub fn parse_header(
    bytes: &[u8],
    transfer_syntax: &str,
    max_inflated: u64,
) -> Result<InMemDicomObject, DataSetError> {
    let checked = check(bytes, transfer_syntax, MAX_DEPTH, max_inflated)?;
    contain("parsing a data set header", || {
        let mut collector = dicom_object::DicomCollector::new_with_ts(
            std::io::BufReader::new(Cursor::new(&checked.bytes[..])),
            checked.ts.uid().to_string(),
        );
        let mut obj = InMemDicomObject::new_empty();
        collector
            .read_dataset_up_to_pixeldata(&mut obj)
            .map_err(|e| DataSetError::Parse(e.to_string()))?;
        Ok(obj)
    })?
}

/// Scan a Part 10 file meta group (PS3.10 7.1: Explicit VR Little Endian elements of group
/// 0002) in `bytes`, which start right after `DICM`; returns its length in bytes. Every
/// element must fit in the bytes present; the group ends at the first element of another
/// group.
pub fn meta_group_len(bytes: &[u8]) -> Result<usize, ScanError> {
    let s = Scanner {
        bytes,
        encoding: Encoding::ExplicitLittle,
        max_depth: 0,
        seen: Scanned {
            elements: 0,
            depth: 0,
        },
    };
    let mut pos = 0;
    while bytes.len() - pos >= 2 && s.u16_at(pos) == 0x0002 {
        let h = s.header(pos, bytes.len(), "file meta group")?;
        let body = pos + h.size;
        if h.len == UNDEFINED || h.len as usize > bytes.len() - body {
            return Err(ScanError::LengthBeyondEnd {
                tag: h.tag,
                offset: pos,
                declared: h.len,
                remaining: bytes.len() - body,
            });
        }
        pos = body + h.len as usize;
    }
    Ok(pos)
}

thread_local! {
    /// Set while a third-party decoder runs on outside bytes inside `contain`.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (dicom-rs or a pixel decoder working on bytes from outside) so that a panic in it
/// becomes `DataSetError::DecoderPanicked` instead of ending the task or the process.
pub fn contain<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, DataSetError> {
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        tracing::warn!(what, %message, "decoder panicked on outside data; contained");
        DataSetError::DecoderPanicked { what, message }
    })
}

/// Install the process's panic policy: a panic inside `contain` is left to unwind (it is
/// contained and answered with a failure status); a panic anywhere else is a bug in pacsd,
/// so it is reported and the process aborts, and an HA peer takes over from a known state
/// instead of a node running on with half-updated state. Installed once; later calls do
/// nothing.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(|c| c.get()) {
                return;
            }
            default(info);
            std::process::abort();
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::synth::raw::{long, short};

    fn marker(tag: Tag, len: u32) -> Vec<u8> {
        crate::synth::raw::marker(tag.1, len)
    }

    /// `levels` sequences nested inside each other, all of undefined length.
    fn nested(levels: usize) -> Vec<u8> {
        crate::synth::raw::nested(levels, &short((0x0040, 0xA010), b"CS", b"CONTAINS"))
    }

    fn ex(bytes: &[u8], depth: usize) -> Result<Scanned, ScanError> {
        scan(bytes, Encoding::ExplicitLittle, depth)
    }

    #[test]
    fn a_well_formed_data_set_passes_and_is_counted() {
        let mut ds = short((0x0008, 0x0018), b"UI", b"1.2.3\0");
        ds.extend(nested(3));
        ds.extend(long((0x7FE0, 0x0010), b"OW", 4, &[1, 2, 3, 4]));
        let seen = ex(&ds, MAX_DEPTH).unwrap();
        assert_eq!(
            seen,
            Scanned {
                elements: 1 + 3 + 1 + 1,
                depth: 3
            }
        );
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_any_recursion_into_it() {
        assert!(ex(&nested(MAX_DEPTH), MAX_DEPTH).is_ok());
        assert!(matches!(
            ex(&nested(MAX_DEPTH + 1), MAX_DEPTH),
            Err(ScanError::TooDeep { limit: 64, .. })
        ));
        // 100,000 levels: the scan itself must not run out of stack either.
        assert!(matches!(
            ex(&nested(100_000), MAX_DEPTH),
            Err(ScanError::TooDeep { .. })
        ));
        // A command set may hold no sequence at all.
        assert!(matches!(
            ex(&nested(1), COMMAND_DEPTH),
            Err(ScanError::TooDeep { limit: 0, .. })
        ));
    }

    #[test]
    fn a_declared_length_longer_than_the_bytes_left_is_refused() {
        // 2 GiB declared, 4 bytes present: the 92-byte attack.
        let ds = long((0x0009, 0x1010), b"OB", 0x8000_0000, &[0; 4]);
        assert_eq!(
            ex(&ds, MAX_DEPTH),
            Err(ScanError::LengthBeyondEnd {
                tag: Tag(0x0009, 0x1010),
                offset: 0,
                declared: 0x8000_0000,
                remaining: 4
            })
        );
        // The same inside a defined-length sequence item: bounded by the item, not the file.
        let item_body = short((0x0008, 0x0100), b"SH", b"ABCD");
        let mut item = marker(ITEM, item_body.len() as u32 - 2);
        item.extend(&item_body);
        let mut ds = long((0x0008, 0x1110), b"SQ", item.len() as u32, &item);
        ds.extend(short((0x0010, 0x0010), b"PN", b"DOE"));
        assert!(matches!(
            ex(&ds, MAX_DEPTH),
            Err(ScanError::Truncated { .. } | ScanError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn a_data_set_cut_anywhere_is_refused() {
        let mut ds = short((0x0008, 0x0018), b"UI", b"1.2.3\0");
        ds.extend(nested(2));
        let mut frag = marker(ITEM, 0);
        frag.extend(marker(ITEM, 6));
        frag.extend([9u8; 6]);
        frag.extend(marker(SEQUENCE_END, 0));
        ds.extend(long((0x7FE0, 0x0010), b"OB", UNDEFINED, &frag));
        assert!(ex(&ds, MAX_DEPTH).is_ok());
        // Every proper prefix fails except those ending on a top-level element's boundary,
        // which are complete (smaller) data sets.
        let boundaries = [8 + 6, 8 + 6 + nested(2).len()];
        for cut in 1..ds.len() {
            let r = ex(&ds[..cut], MAX_DEPTH);
            assert_eq!(r.is_ok(), boundaries.contains(&cut), "cut at {cut}: {r:?}");
        }
    }

    #[test]
    fn delimiters_and_items_out_of_place_are_refused() {
        // An item at the top level.
        assert!(matches!(
            ex(&marker(ITEM, 0), MAX_DEPTH),
            Err(ScanError::Unexpected { .. })
        ));
        // An element where an item belongs.
        let ds = long(
            (0x0008, 0x1110),
            b"SQ",
            UNDEFINED,
            &short((0x0010, 0x0010), b"PN", b"DOE "),
        );
        assert!(matches!(
            ex(&ds, MAX_DEPTH),
            Err(ScanError::Unexpected { .. })
        ));
        // A stray item delimiter at the top level is skipped, as dicom-rs does.
        let mut ds = marker(ITEM_END, 0);
        ds.extend(short((0x0010, 0x0010), b"PN", b"DOE "));
        assert_eq!(ex(&ds, MAX_DEPTH).unwrap().elements, 1);
    }

    #[test]
    fn binary_values_must_fill_their_length() {
        // A 5-byte UL: dicom-rs would read 4 and lose its place (fuzz find).
        let ds = short((0x0028, 0x0008), b"UL", &[1, 0, 0, 0, 0]);
        assert!(matches!(
            ex(&ds, MAX_DEPTH),
            Err(ScanError::PartialValue {
                vr: VR::UL,
                declared: 5,
                ..
            })
        ));
        assert!(ex(&short((0x0028, 0x0010), b"US", &[1, 0]), MAX_DEPTH).is_ok());
        assert!(ex(&short((0x0028, 0x0010), b"US", &[1, 0, 0]), MAX_DEPTH).is_err());
        // In Implicit VR the dictionary gives the VR: (0028,0010) Rows is US.
        let mut implicit = Vec::new();
        implicit.extend_from_slice(&0x0028u16.to_le_bytes());
        implicit.extend_from_slice(&0x0010u16.to_le_bytes());
        implicit.extend_from_slice(&3u32.to_le_bytes());
        implicit.extend_from_slice(&[1, 0, 0]);
        assert!(scan(&implicit, Encoding::ImplicitLittle, MAX_DEPTH).is_err());
        // Text values may have any length.
        assert!(ex(&short((0x0010, 0x0010), b"PN", b"DOE"), MAX_DEPTH).is_ok());
    }

    #[test]
    fn implicit_vr_uses_the_dictionary_for_defined_length_sequences() {
        // (0008,1110) Referenced Study Sequence, defined length, holding an item whose
        // element overruns it: found only if the sequence is entered.
        let mut inner = Vec::new();
        inner.extend_from_slice(&0x0008u16.to_le_bytes());
        inner.extend_from_slice(&0x1150u16.to_le_bytes());
        inner.extend_from_slice(&1000u32.to_le_bytes());
        let mut item = marker(ITEM, inner.len() as u32);
        item.extend(&inner);
        let mut ds = Vec::new();
        ds.extend_from_slice(&0x0008u16.to_le_bytes());
        ds.extend_from_slice(&0x1110u16.to_le_bytes());
        ds.extend_from_slice(&(item.len() as u32).to_le_bytes());
        ds.extend(&item);
        assert!(matches!(
            scan(&ds, Encoding::ImplicitLittle, MAX_DEPTH),
            Err(ScanError::LengthBeyondEnd { .. } | ScanError::Truncated { .. })
        ));
        // The same bytes under a private tag are an opaque value: fine.
        ds[2..4].copy_from_slice(&0x1111u16.to_le_bytes());
        ds[0..2].copy_from_slice(&0x0009u16.to_le_bytes());
        assert!(scan(&ds, Encoding::ImplicitLittle, MAX_DEPTH).is_ok());
    }

    #[test]
    fn inflating_stops_at_the_cap() {
        use std::io::Write;
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            inflate(&bomb, 1024 * 1024),
            Err(DataSetError::InflatedTooLarge { limit: 1048576 })
        ));
        assert_eq!(inflate(&bomb, 10 * 1024 * 1024).unwrap().len(), 10 << 20);
    }

    #[test]
    fn a_panicking_decoder_is_contained() {
        let r: Result<(), _> = contain("test", || panic!("bad fragment"));
        assert!(matches!(
            r,
            Err(DataSetError::DecoderPanicked { message, .. }) if message == "bad fragment"
        ));
        assert_eq!(contain("test", || 7).unwrap(), 7);
    }
}
