//! Keeps conformance/statement.md true: its SOP class and transfer syntax tables must equal
//! what the code accepts, checked both against the dictionaries and on the wire.
//! `PACSD_BLESS=1 cargo test --test conformance` regenerates the tables.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::TestNode;
use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::{StandardSopClassDictionary, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use pacsd::net::scu::{ProposedContext, ScuAssociation, ScuOptions};
use pacsd::net::syntax::{is_storage_sop_class, storage_transfer_syntaxes};

const STATEMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/statement.md");

/// The rows (uid -> name) of the generated table called `name`.
fn table(doc: &str, name: &str) -> BTreeMap<String, String> {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("marker {begin} missing"))
        + begin.len();
    let stop = doc
        .find(&end)
        .unwrap_or_else(|| panic!("marker {end} missing"));
    doc[start..stop]
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains('`'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[0].to_string())
        })
        .collect()
}

fn render(rows: &BTreeMap<String, String>, header: &str) -> String {
    let mut s = format!("\n{header}\n|---|---|\n");
    for (uid, name) in rows {
        s.push_str(&format!("| {name} | `{uid}` |\n"));
    }
    s
}

fn render_keys(rows: &BTreeMap<String, String>) -> String {
    let mut s = "\n| Level | Attribute | Matching | Tag |\n|---|---|---|---|\n".to_string();
    let mut sorted: Vec<(&String, &String)> = rows.iter().collect();
    let order = |l: &str| {
        ["PATIENT", "STUDY", "SERIES", "IMAGE"]
            .iter()
            .position(|x| l.starts_with(x))
            .unwrap_or(9)
    };
    sorted.sort_by_key(|(tag, v)| (order(v), (*tag).clone()));
    for (tag, v) in sorted {
        s.push_str(&format!("| {v} | `{tag}` |\n"));
    }
    s
}

/// The rows of the find-keys table: tag -> "level | keyword | matching".
fn key_table(doc: &str) -> BTreeMap<String, String> {
    let begin = "<!-- BEGIN find-keys -->";
    let start = doc.find(begin).expect("find-keys marker") + begin.len();
    let stop = doc
        .find("<!-- END find-keys -->")
        .expect("find-keys end marker");
    doc[start..stop]
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains('`'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[3].trim_matches('`').to_string(),
                format!("{} | {} | {}", cells[0], cells[1], cells[2]),
            )
        })
        .collect()
}

fn replace_table(doc: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let start = doc.find(&begin).unwrap() + begin.len();
    let stop = doc.find(&end).unwrap();
    format!("{}{}{}", &doc[..start], body, &doc[stop..])
}

/// Every SOP class UID that dicom-dictionary-std knows, read from its source (the crate has no
/// public iterator). The version is the one in Cargo.lock; the source is in the cargo registry.
fn dictionary_sop_class_uids() -> Vec<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"dicom-dictionary-std\""))
        .and_then(|p| p.lines().find(|l| l.starts_with("version = ")))
        .map(|l| {
            l.trim_start_matches("version = ")
                .trim_matches('"')
                .to_string()
        })
        .expect("dicom-dictionary-std in Cargo.lock");
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let src_root = cargo_home.join("registry/src");
    let uids_rs = std::fs::read_dir(&src_root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src_root.display()))
        .filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join(format!("dicom-dictionary-std-{version}/src/uids.rs"))
        })
        .find(|p| p.exists())
        .expect("dicom-dictionary-std source in the cargo registry");
    let text = std::fs::read_to_string(uids_rs).unwrap();
    let start = text
        .find("pub(crate) const SOP_CLASSES")
        .expect("SOP_CLASSES table");
    let body = &text[start..];
    let body = &body[..body.find("\n];").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("E::new(\""))
        .map(|l| l[..l.find('"').unwrap()].to_string())
        .collect()
}

fn expected_sop_classes() -> BTreeMap<String, String> {
    let all = dictionary_sop_class_uids();
    assert!(
        all.len() > 300,
        "parsed only {} SOP classes from the dictionary source",
        all.len()
    );
    all.into_iter()
        .filter(|uid| is_storage_sop_class(uid))
        .map(|uid| {
            let name = StandardSopClassDictionary
                .by_uid(&uid)
                .unwrap()
                .name
                .to_string();
            (uid, name)
        })
        .collect()
}

/// The C-FIND key table: (tag, "level | keyword | matching") from the code's key list.
fn expected_find_keys() -> BTreeMap<String, String> {
    use pacsd::index::query::Kind;
    pacsd::service::query::KEYS
        .iter()
        .map(|k| {
            let matching = match k.column.kind() {
                Kind::Text => "single value, universal, wildcard",
                Kind::PersonName => {
                    "single value, universal, wildcard (component groups, case-insensitive option)"
                }
                Kind::Uid => "single value, universal, list of UIDs",
                Kind::Date | Kind::Time => "single value, universal, range",
                Kind::Integer => "single value, universal",
                Kind::Set => "universal, any of the listed values",
                Kind::Computed => "return only",
            };
            let tag = format!("({:04X},{:04X})", k.tag.group(), k.tag.element());
            (
                tag,
                format!("{} | {} | {}", k.column.level().code(), k.name, matching),
            )
        })
        .collect()
}

fn expected_transfer_syntaxes() -> BTreeMap<String, String> {
    storage_transfer_syntaxes()
        .iter()
        .map(|uid| {
            (
                uid.to_string(),
                TransferSyntaxRegistry.get(uid).unwrap().name().to_string(),
            )
        })
        .collect()
}

#[test]
fn tables_match_the_code() {
    let doc = std::fs::read_to_string(STATEMENT).unwrap();
    let sop = expected_sop_classes();
    let ts = expected_transfer_syntaxes();
    if std::env::var("PACSD_BLESS").is_ok() {
        let doc = replace_table(
            &doc,
            "storage-sop-classes",
            &render(&sop, "| SOP class | UID |"),
        );
        let doc = replace_table(
            &doc,
            "transfer-syntaxes",
            &render(&ts, "| Transfer syntax | UID |"),
        );
        let doc = replace_table(&doc, "find-keys", &render_keys(&expected_find_keys()));
        std::fs::write(STATEMENT, doc).unwrap();
        return;
    }
    let doc_sop = table(&doc, "storage-sop-classes");
    let doc_ts = table(&doc, "transfer-syntaxes");
    assert_eq!(
        key_table(&doc),
        expected_find_keys(),
        "C-FIND key table differs from the code (PACSD_BLESS=1 regenerates)"
    );
    let missing: Vec<_> = sop.keys().filter(|k| !doc_sop.contains_key(*k)).collect();
    let extra: Vec<_> = doc_sop.keys().filter(|k| !sop.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "SOP class table out of date: missing {missing:?}, extra {extra:?} (PACSD_BLESS=1 regenerates)"
    );
    assert_eq!(doc_sop, sop, "SOP class names differ from the dictionary");
    assert_eq!(doc_ts, ts, "transfer syntax table differs from the code");
    for uid in doc_sop.keys() {
        assert!(is_storage_sop_class(uid), "{uid} listed but not accepted");
    }
}

/// What the running node accepts on the wire equals the tables.
/// Associate proposing one presentation context per (abstract syntax, transfer syntax) pair;
/// returns the contexts accepted, as such pairs, and releases.
async fn negotiate(
    opts: &ScuOptions,
    pairs: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let proposed: Vec<ProposedContext> = pairs
        .map(|(abstract_syntax, ts)| ProposedContext {
            abstract_syntax,
            transfer_syntaxes: vec![ts],
        })
        .collect();
    let assoc = ScuAssociation::connect(opts, &proposed).await.unwrap();
    let accepted = assoc
        .contexts()
        .iter()
        .map(|c| (c.abstract_syntax.clone(), c.transfer_syntax.clone()))
        .collect();
    assoc.release().await.unwrap();
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_accepts_exactly_what_the_statement_lists() {
    let doc = std::fs::read_to_string(STATEMENT).unwrap();
    let doc_sop = table(&doc, "storage-sop-classes");
    let doc_ts = table(&doc, "transfer-syntaxes");
    let n = TestNode::start().await;
    let opts = n.scu("CONFORMANCE");

    // Every listed SOP class, 120 contexts per association, Explicit VR LE.
    let classes: Vec<&String> = doc_sop.keys().collect();
    for chunk in classes.chunks(120) {
        let explicit = || uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string();
        let accepted =
            negotiate(&opts, chunk.iter().map(|uid| (uid.to_string(), explicit()))).await;
        for uid in chunk {
            assert!(
                accepted.iter().any(|(a, _)| a == *uid),
                "{uid} ({}) listed but refused",
                doc_sop[*uid]
            );
        }
    }

    // Every listed transfer syntax, one context each, for CT Image Storage.
    let ct = || uids::CT_IMAGE_STORAGE.to_string();
    let accepted = negotiate(&opts, doc_ts.keys().map(|ts| (ct(), ts.clone()))).await;
    for ts in doc_ts.keys() {
        assert!(
            accepted.iter().any(|(_, t)| t == ts),
            "{ts} listed but refused"
        );
    }

    // Things not listed are refused.
    let refused = [
        (
            uids::STORAGE_COMMITMENT_PUSH_MODEL,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ),
        ("1.3.12.2.1107.5.9.1", uids::IMPLICIT_VR_LITTLE_ENDIAN),
        (uids::CT_IMAGE_STORAGE, uids::JPIP_REFERENCED),
        (uids::CT_IMAGE_STORAGE, "1.2.3.4.5.6"),
    ];
    let verification = (uids::VERIFICATION, uids::IMPLICIT_VR_LITTLE_ENDIAN);
    let proposed = refused.iter().chain([&verification]);
    let accepted = negotiate(&opts, proposed.map(|(a, t)| (a.to_string(), t.to_string()))).await;
    assert_eq!(
        accepted,
        vec![(
            uids::VERIFICATION.into(),
            uids::IMPLICIT_VR_LITTLE_ENDIAN.into()
        )],
        "only Verification should be accepted"
    );
    assert!(
        doc.contains("`1.2.840.10008.1.1`"),
        "Verification must be in the statement"
    );
}

#[test]
fn statuses_in_the_statement_are_the_codes_the_code_uses() {
    use pacsd::dimse::status::*;
    let doc = std::fs::read_to_string(STATEMENT).unwrap();
    for code in [
        SUCCESS,
        OUT_OF_RESOURCES,
        DOES_NOT_MATCH_SOP_CLASS,
        UNABLE_TO_PROCESS,
        SOP_CLASS_NOT_SUPPORTED,
        PROCESSING_FAILURE,
        UNRECOGNIZED_OPERATION,
        DUPLICATE_SOP_INSTANCE,
        PATIENT_CONFLICT,
        NOT_AUTHORIZED,
        PENDING,
        PENDING_WARNING,
        CANCELED,
        MOVE_DESTINATION_UNKNOWN,
        UNABLE_TO_PERFORM_SUBOPERATIONS,
        SUBOPERATIONS_WITH_FAILURES,
    ] {
        assert!(
            doc.contains(&format!("| {code:04X} |")) || doc.contains(&format!("{code:04X} (")),
            "status {code:04X} not documented"
        );
    }
    assert!(doc.contains(pacsd::part10::IMPLEMENTATION_CLASS_UID));
    assert!(doc.contains(pacsd::part10::IMPLEMENTATION_VERSION_NAME));
}

/// The FIND, MOVE and GET SOP classes of section 3.4 are accepted (for an AE allowed to use
/// them), in the two little-endian syntaxes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_retrieve_sop_classes_are_accepted_as_listed() {
    let doc = std::fs::read_to_string(STATEMENT).unwrap();
    let n = TestNode::start_with(|c| {
        use pacsd::config::Service;
        c.access
            .unknown_ae_services
            .extend([Service::Find, Service::Move, Service::Get]);
    })
    .await;
    let mut proposed = Vec::new();
    let retrieve = pacsd::net::syntax::MOVE_SOP_CLASSES
        .iter()
        .chain(pacsd::net::syntax::GET_SOP_CLASSES.iter());
    for uid in pacsd::service::query::FIND_SOP_CLASSES
        .iter()
        .map(|(u, _)| u)
        .chain(retrieve)
    {
        assert!(
            doc.contains(&format!("`{uid}`")),
            "{uid} missing from the statement"
        );
        for ts in [
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::JPEG_BASELINE8_BIT,
        ] {
            proposed.push(ProposedContext {
                abstract_syntax: uid.to_string(),
                transfer_syntaxes: vec![ts.to_string()],
            });
        }
    }
    let assoc = ScuAssociation::connect(&n.scu("Q"), &proposed)
        .await
        .unwrap();
    let accepted: Vec<(String, String)> = assoc
        .contexts()
        .iter()
        .map(|c| (c.abstract_syntax.clone(), c.transfer_syntax.clone()))
        .collect();
    assert_eq!(accepted.len(), 18, "{accepted:?}");
    assert!(
        accepted
            .iter()
            .all(|(_, ts)| ts != uids::JPEG_BASELINE8_BIT)
    );
    assoc.release().await.unwrap();
}
