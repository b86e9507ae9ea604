//! Real-world files: every file of pydicom's test data and charset data (the PyPI package's
//! `data/test_files` and `data/charset_files`) is sent with C-STORE, and so are truncated and
//! bit-flipped variants of each. Every one gets a DIMSE status (never a crash or a dropped
//! association), whatever was acknowledged is stored byte for byte and found by C-FIND, and the
//! node still serves at the end.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use pacsd::net::scu::{ProposedContext, ScuAssociation};

/// pydicom's data folders (pip install pydicom).
fn pydicom_files() -> Vec<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, pydicom; print(os.path.dirname(pydicom.__file__))",
        ])
        .output()
        .expect("python3");
    assert_succeeded(&out, "pydicom is needed");
    let root = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("data");
    let mut files =
        pacsd::tools::collect_files(&[root.join("test_files"), root.join("charset_files")])
            .unwrap();
    files.retain(|p| !p.extension().is_some_and(|e| e == "py" || e == "pyc"));
    files.sort();
    assert!(
        files.len() > 80,
        "pydicom's test data: {} files",
        files.len()
    );
    files
}

/// A deterministic xorshift, so that a failure names a reproducible variant.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The data set variants sent for one file: itself, cut short four ways, and four copies with
/// one to three bits flipped.
fn variants(data: &[u8], seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("original".to_string(), data.to_vec())];
    let n = data.len();
    for cut in [n / 4, n / 2, n * 3 / 4, n.saturating_sub(1)] {
        if cut > 0 && cut < n {
            out.push((format!("cut at {cut}"), data[..cut].to_vec()));
        }
    }
    let mut state = seed | 1;
    for flips in 1..=4u64 {
        let mut v = data.to_vec();
        let mut which = Vec::new();
        for _ in 0..(flips % 3 + 1) {
            let pos = (xorshift(&mut state) % n.max(1) as u64) as usize;
            let bit = xorshift(&mut state) % 8;
            if let Some(b) = v.get_mut(pos) {
                *b ^= 1 << bit;
                which.push(format!("{pos}.{bit}"));
            }
        }
        out.push((format!("flipped {}", which.join(",")), v));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pydicom_test_data_and_mangled_variants_get_a_status_and_stored_ones_are_intact() {
    let n = TestNode::start_with(|c| {
        c.access
            .unknown_ae_services
            .insert(pacsd::config::Service::Find);
    })
    .await;
    let files = pydicom_files();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut acknowledged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut sent = 0;
    for (i, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let Ok((meta, offset)) = pacsd::part10::split(&bytes) else {
            *outcomes.entry("not a Part 10 file".into()).or_default() += 1;
            continue;
        };
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
        let (class, sop, ts) = (
            trim(meta.media_storage_sop_class_uid()),
            trim(meta.media_storage_sop_instance_uid()),
            trim(meta.transfer_syntax()),
        );
        let Ok(mut a) = ScuAssociation::connect(
            &n.scu("CORPUS"),
            &[ProposedContext {
                abstract_syntax: class.clone(),
                transfer_syntaxes: vec![ts.clone()],
            }],
        )
        .await
        else {
            *outcomes.entry("association refused".into()).or_default() += 1;
            continue;
        };
        let Some(ctx) = a.contexts().first().map(|c| c.id) else {
            *outcomes
                .entry("SOP class or syntax not accepted".into())
                .or_default() += 1;
            let _ = a.release().await;
            continue;
        };
        for (what, data) in variants(&bytes[offset..], i as u64 + 1) {
            sent += 1;
            let st = a
                .store(ctx, &class, &sop, &data)
                .await
                .unwrap_or_else(|e| panic!("{} ({what}): no status: {e}", path.display()));
            if what == "original" && !st.is_success() {
                println!("original {} refused: {st:?}", path.display());
            }
            let key = if st.is_success() {
                if what == "original" || !acknowledged.contains_key(&sop) {
                    acknowledged.entry(sop.clone()).or_insert(data.clone());
                }
                "0000 stored".to_string()
            } else {
                format!("{:04X}", st.code)
            };
            *outcomes.entry(key).or_default() += 1;
        }
        a.release().await.unwrap();
    }
    println!(
        "{sent} data sets sent from {} files: {outcomes:#?}",
        files.len()
    );
    assert!(
        acknowledged.len() > 40,
        "only {} stored",
        acknowledged.len()
    );

    // Whatever was acknowledged is stored byte for byte (the first acknowledged version) and
    // its checksum is the index's.
    for (sop, data) in &acknowledged {
        let row = n
            .node
            .index
            .instance(sop)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{sop} acknowledged but not indexed"));
        let stored = std::fs::read(n.replica_dir(0).join(&row.storage_key))
            .unwrap_or_else(|e| panic!("{sop}: {e}"));
        assert_eq!(pacsd::storage::digest::record(&stored), row.digest, "{sop}");
        let check = pacsd::storage::digest::read_check(&stored);
        assert_eq!(row.read_check, Some(check), "{sop}");
        let (_, offset) = pacsd::part10::split(&stored).unwrap();
        let kept = &stored[offset..];
        assert!(
            kept == &data[..] || (kept.len() == data.len() + 1 && kept.starts_with(data)),
            "{sop}: stored data set differs from the one acknowledged"
        );
    }
    // C-FIND finds each (relational IMAGE-level query by SOP Instance UID alone).
    for sop in acknowledged.keys() {
        let found = pacsd::tools::find(
            &n.scu("CORPUS"),
            &pacsd::tools::FindSpec {
                model: pacsd::tools::Model::StudyRoot,
                level: "IMAGE".into(),
                keys: vec![format!("SOPInstanceUID={sop}")],
                charset: None,
                relational: true,
                cancel_after: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(found.matches.len(), 1, "{sop}");
    }
    assert!(echo_node(n.port()).await.status.success());
}
