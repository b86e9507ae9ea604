//! What each fuzz target (tests/fuzz, `scripts/fuzz.sh`) runs on its input, kept here so that
//! tests/fuzz_regressions.rs replays the inputs that once failed through the same code. Each
//! takes raw bytes as a peer (or storage) could present them. Not an API.

use crate::dataset;
use crate::service::query::{MatchOptions, Model, decode_identifier};

/// Transfer syntaxes a data set may arrive in (the input's first byte picks one).
const SYNTAXES: [&str; 5] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
];

/// The data set pre-scan and parse, header parse and record extraction.
pub fn dataset(input: &[u8]) {
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    let ts = SYNTAXES[pick as usize % SYNTAXES.len()];
    let _ = dataset::parse(data, ts, dataset::MAX_DEPTH, 1 << 20);
    if let Ok(obj) = dataset::parse_header(data, ts, 1 << 20) {
        let _ = crate::index::record::extract(&obj);
    }
}

/// Command set decoding, and encoding what was decoded.
pub fn command(data: &[u8]) {
    if let Ok(c) = crate::dimse::Command::decode(data) {
        let _ = c.encode();
    }
}

/// Identifiers to index queries (model, syntax and options picked by the first byte).
pub fn identifier(input: &[u8]) {
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    let model = [
        Model::PatientRoot,
        Model::StudyRoot,
        Model::PatientStudyOnly,
    ][pick as usize % 3];
    let ts = SYNTAXES[(pick as usize / 3) % 2];
    let opts = MatchOptions {
        relational: pick & 0x10 != 0,
        combined_datetime: pick & 0x20 != 0,
        pn_case_insensitive: pick & 0x40 != 0,
    };
    if let Ok(req) = decode_identifier(data, ts, model, opts) {
        let _ = req.query.to_sql(false);
    }
}

/// PDUs through dicom-ul's reader (bounded as the node bounds it), command PDVs decoded.
pub fn pdu(data: &[u8]) {
    let mut cursor = std::io::Cursor::new(data);
    while let Ok(Some(pdu)) = dicom_ul::read_pdu(&mut cursor, 64 * 1024, true) {
        if let dicom_ul::Pdu::PData { data } = pdu {
            for pdv in data {
                let _ = crate::dimse::Command::decode(&pdv.data);
            }
        }
    }
}

/// P-DATA reassembly: the input is a run of PDVs, each `[control][length: u16 LE][bytes]`,
/// where control bit 0 marks a command fragment, bit 1 the last fragment, and bits 2-3 pick a
/// presentation context (1, 3 and 5 accepted, 7 not). Small limits make the size and budget
/// paths reachable.
pub fn pdata(input: &[u8]) {
    use crate::net::reassembly::Reassembler;
    use dicom_ul::pdu::{PDataValue, PDataValueType};
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(128 * 1024));
    let mut r = Reassembler::new(64 * 1024, budget, 128 * 1024);
    let mut held = Vec::new();
    let mut rest = input;
    while let [control, lo, hi, tail @ ..] = rest {
        let len = (u16::from_le_bytes([*lo, *hi]) as usize).min(tail.len());
        let (data, next) = tail.split_at(len);
        rest = next;
        let id = [1u8, 3, 5, 7][usize::from(control >> 2 & 3)];
        let pdv = PDataValue {
            presentation_context_id: id,
            value_type: if control & 1 == 1 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: control & 2 == 2,
            data: data.to_vec(),
        };
        match r.absorb(pdv, id != 7) {
            // Keep some messages alive so that the budget is really shared.
            Ok(Some(m)) if held.len() < 2 => held.push(m),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Part 10 files as storage returns them: meta group, then a preview rendered.
pub fn part10(data: &[u8]) {
    if crate::part10::split(data).is_ok() {
        let _ = crate::render::render_preview(data);
    }
}

/// Received text through every character set path (the first byte picks the set).
pub fn charset(input: &[u8]) {
    const SETS: [&str; 8] = [
        "ISO_IR 100",
        "ISO_IR 192",
        "ISO 2022 IR 87",
        "ISO 2022 IR 149",
        "\\ISO 2022 IR 87",
        "ISO 2022 IR 13\\ISO 2022 IR 87",
        "GB18030",
        "ISO_IR 144",
    ];
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    let set = SETS[pick as usize % SETS.len()];
    let decoded = crate::charset::decode_iso2022(data);
    let text = String::from_utf8_lossy(data).into_owned();
    let _ = crate::charset::redecode(text.clone(), Some(set));
    let _ = crate::charset::encode_iso2022(&decoded, set);
    let _ = crate::charset::latin1_bytes(&text);
}

/// HA replication frame bodies.
pub fn ha_frame(data: &[u8]) {
    let _ = crate::ha::replication::fuzz_frame(data);
}

/// What a target runs on one input.
pub type Target = fn(&[u8]);

/// Every target by name (fuzz targets and the regression replay use the same names).
pub const TARGETS: [(&str, Target); 8] = [
    ("dataset", dataset),
    ("command", command),
    ("identifier", identifier),
    ("pdu", pdu),
    ("pdata", pdata),
    ("part10", part10),
    ("charset", charset),
    ("ha_frame", ha_frame),
];
