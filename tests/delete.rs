//! Deleting a study, a series or an instance (archive::delete) on a real node: through
//! DICOMweb's DELETE (admin only), objects gone from every replica and from C-FIND, counts
//! that follow, the rest untouched; a replica that cannot remove its copy keeps a tombstone
//! until the repair worker removes it; recovery from storage and a rebuild pass over a
//! tombstoned object; the same instance stored again is kept.

mod common;

use std::time::Duration;

use common::*;
use pacsd::synth::Spec;

const PASSWORD: &str = "a long test password";

/// Two studies of one patient (961: two series of two CT images; 1961: one series of two),
/// and a third study of another patient (962).
fn corpus() -> Vec<Spec> {
    let mut specs = Vec::new();
    for (study, series) in [(961, 1), (961, 2), (1961, 1), (962, 1)] {
        for i in 1..=2 {
            let mut s = Spec::ct(study, series, i, 16);
            if series == 2 {
                s.modality = "MR".into();
            }
            specs.push(s);
        }
    }
    specs
}

/// A node holding `corpus()` (stored over one association), with an admin and an uploader.
async fn loaded_node() -> (TestNode, String, Vec<pacsd::synth::Spec>) {
    let accounts = [
        ("pacs-admin", PASSWORD, "admin"),
        ("uploader", PASSWORD, "uploader"),
    ];
    let tweak = |c: &mut pacsd::config::Config| {
        c.storage.repair_interval_secs = 0.3;
        let find = pacsd::config::Service::Find;
        c.access.unknown_ae_services.insert(find);
    };
    let (n, base) = TestNode::start_web(tweak, &accounts).await;
    let specs = corpus();
    store_specs(&n.scu("MODALITY"), &specs).await;
    (n, base, specs)
}

async fn delete(base: &str, path: &str, account: &str) -> (u16, String) {
    let rsp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(format!("{base}{path}"))
        .basic_auth(account, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    (rsp.status().as_u16(), rsp.text().await.unwrap())
}

/// DCMTK findscu for patient PAT00961 (Patient Root), asking for `keys` too.
fn patient_961(port: u16, keys: &[&str]) -> String {
    let mut args = vec![
        "-P",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=PAT00961",
    ];
    for k in keys {
        args.extend(["-k", k]);
    }
    findscu(port, &args)
}

/// The object files of a study on replica `i`.
fn files_of(n: &TestNode, i: usize, study: &str) -> usize {
    files_of_dir(&n.replica_dir(i).display().to_string(), study)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_deletes_an_instance_a_series_and_a_study_and_nothing_else() {
    let (n, base, specs) = loaded_node().await;
    let [a, b, c] = ["961", "1961", "962"].map(|s| format!("{}.{s}", pacsd::synth::SYNTH_ROOT));
    assert_eq!(n.instances().await, 8);

    // Only an admin deletes; a bad UID is refused before anything is looked up.
    let (status, _) = delete(&base, &format!("/studies/{a}"), "uploader").await;
    assert_eq!(status, 403);
    let (status, _) = delete(&base, "/studies/1.2.x", "pacs-admin").await;
    assert_eq!(status, 400);
    let (status, _) = delete(&base, "/studies/1.2.3.4", "pacs-admin").await;
    assert_eq!(status, 404);
    assert_eq!(n.instances().await, 8);

    // One instance of study A's MR series.
    let (status, body) = delete(
        &base,
        &format!("/studies/{a}/series/{a}.2/instances/{a}.2.1"),
        "pacs-admin",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["instances"], 1);
    assert_eq!(report["pending"], 0);
    assert!(
        n.node
            .index
            .instance(&format!("{a}.2.1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(n.instances().await, 7);
    for r in 0..3 {
        assert_eq!(files_of(&n, r, &a), 3, "replica {r}");
    }
    let counts = n.node.index.study_counts(&a).await.unwrap().unwrap();
    assert_eq!(
        (counts.0, counts.1),
        (2, 3),
        "series and instances of study A"
    );

    // The rest of that series: the series goes, and with it MR from ModalitiesInStudy.
    let (status, _) = delete(&base, &format!("/studies/{a}/series/{a}.2"), "pacs-admin").await;
    assert_eq!(status, 200);
    let counts = n.node.index.study_counts(&a).await.unwrap().unwrap();
    assert_eq!(counts, (1, 2, "CT".to_string()));
    let found = findscu_instances(n.port(), &a, &format!("{a}.2"));
    assert!(!found.contains("(0008,0018) UI ["), "{found}");
    let found = findscu_instances(n.port(), &a, &format!("{a}.1"));
    assert_eq!(found.matches("(0008,0018) UI [").count(), 2, "{found}");

    // The whole of study A: its patient stays (study B is theirs too).
    let (status, _) = delete(&base, &format!("/studies/{a}"), "pacs-admin").await;
    assert_eq!(status, 200);
    for r in 0..3 {
        assert_eq!(files_of(&n, r, &a), 0, "replica {r}");
        assert_eq!(files_of(&n, r, &b), 2, "replica {r}");
        assert_eq!(files_of(&n, r, &c), 2, "replica {r}");
    }
    let counts = n.node.index.counts().await.unwrap();
    assert_eq!(
        (
            counts.patients,
            counts.studies,
            counts.series,
            counts.instances
        ),
        (2, 2, 2, 4)
    );
    let patient = patient_961(
        n.port(),
        &[
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedInstances",
        ],
    );
    assert!(patient.contains("(0020,1200) IS [1 ]"), "{patient}");
    assert!(patient.contains("(0020,1204) IS [2 ]"), "{patient}");
    let (status, _) = delete(&base, &format!("/studies/{a}"), "pacs-admin").await;
    assert_eq!(status, 404, "a deleted study is gone");

    // Study B too: the patient goes with their last study.
    let (status, _) = delete(&base, &format!("/studies/{b}"), "pacs-admin").await;
    assert_eq!(status, 200);
    let patient = patient_961(n.port(), &[]);
    assert!(!patient.contains("(Pending)"), "{patient}");
    assert!(
        patient.contains("Final Find Response (Success)"),
        "{patient}"
    );

    // The same instances stored again are kept: a deletion is not a ban.
    let again: Vec<Spec> = specs.iter().filter(|s| s.study_uid == a).cloned().collect();
    store_specs(&n.scu("MODALITY"), &again).await;
    assert_eq!(n.instances().await, 6);
    // ... also by the repair worker removing deleted objects (a pass every 0.3 s).
    assert!(
        holds_for(Duration::from_secs(1), async || (0..3)
            .all(|r| files_of(&n, r, &a) == 4))
        .await,
        "a re-stored instance lost a copy: {:?}",
        (0..3).map(|r| files_of(&n, r, &a)).collect::<Vec<_>>()
    );
    n.read_back(&format!("{a}.2.1")).await;

    // Every deletion is in the audit trail with who asked.
    let trail = std::fs::read_to_string(n.dir.path().join("audit.log")).unwrap();
    let deleted: Vec<&str> = trail.lines().filter(|l| l.contains("110105")).collect();
    assert_eq!(deleted.len(), 4, "{trail}");
    assert!(deleted.iter().all(|l| l.contains("pacs-admin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_could_not_be_removed_goes_later() {
    let (n, base, _) = loaded_node().await;
    let c = format!("{}.962", pacsd::synth::SYNTH_ROOT);

    // Replica 3 is out while study C is deleted: its copies stay there, tombstoned.
    let kept = n.dir.path().join("replica-3.kept");
    std::fs::rename(n.replica_dir(2), &kept).unwrap();
    std::fs::write(n.replica_dir(2), b"not a directory").unwrap();
    let (status, body) = delete(&base, &format!("/studies/{c}"), "pacs-admin").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["instances"], 2);
    assert!(report["pending"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(n.instances().await, 6);

    // It comes back with its copies.
    std::fs::remove_file(n.replica_dir(2)).unwrap();
    std::fs::rename(&kept, n.replica_dir(2)).unwrap();

    // The repair worker removes them and drops the tombstones.
    assert!(
        eventually(Duration::from_secs(20), async || files_of(&n, 2, &c) == 0).await,
        "the deleted copies stay on the replica that was out"
    );
    assert!(
        eventually(Duration::from_secs(20), async || {
            n.node.index.tombstones("", 10).await.unwrap().is_empty()
        })
        .await
    );
    for r in 0..3 {
        assert_eq!(files_of(&n, r, &c), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_and_a_rebuild_pass_over_a_deletion_whose_copies_are_still_in_storage() {
    let n = TestNode::start().await;
    let specs = corpus();
    store_specs(&n.scu("MODALITY"), &specs).await;
    let c = format!("{}.962", pacsd::synth::SYNTH_ROOT);
    // The index forgets study C but the node stops before any copy is removed (the rows
    // and tombstones are one transaction; removal comes after).
    let sops: Vec<String> = specs
        .iter()
        .filter(|s| s.study_uid == c)
        .map(|s| s.sop_uid.clone())
        .collect();
    let deleted = n
        .node
        .index
        .delete_instances(pacsd::index::deletion::Deletion { instances: sops })
        .await
        .unwrap();
    assert_eq!(deleted.instances, 2);
    let config = n.config.clone();
    n.node.stop().await;
    for r in 0..3 {
        assert_eq!(files_of_dir(&config.storage.replicas[r], &c), 2);
    }

    // Recovery from storage (what a node runs when it takes over) passes over them.
    {
        let index = pacsd::index::Index::open(&config.index.path).unwrap();
        let storage = pacsd::storage::Storage::open(
            &config.storage.replicas,
            config.storage.write_quorum,
            &config.storage.prefix,
        )
        .unwrap();
        let recovered = pacsd::archive::maintenance::recover_from_storage(&index, &storage)
            .await
            .unwrap();
        assert_eq!(recovered, 0);
        assert_eq!(index.counts().await.unwrap().instances, 6);
    }

    // So does a rebuild, which keeps the tombstones.
    let summary = pacsd::archive::maintenance::rebuild_index(&config, false)
        .await
        .unwrap();
    assert_eq!(summary.indexed, 6, "{summary:?}");
    let index = pacsd::index::Index::open(&config.index.path).unwrap();
    assert_eq!(index.counts().await.unwrap().instances, 6);
    let kept = index.tombstones("", 10).await.unwrap();
    assert_eq!(
        kept.len(),
        4,
        "objects and previews of two instances: {kept:?}"
    );
}

/// The object files of a study under a replica's directory.
fn files_of_dir(dir: &str, study: &str) -> usize {
    pacsd::tools::collect_files(&[std::path::PathBuf::from(dir)])
        .unwrap_or_default()
        .iter()
        .filter(|p| p.to_string_lossy().contains(&format!("/{study}/")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_metadata_follows_a_deletion() {
    let (n, base, _) = loaded_node().await;
    let a = format!("{}.961", pacsd::synth::SYNTH_ROOT);
    let series = format!("/studies/{a}/series/{a}.1");
    let sops = async || {
        let rsp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}{series}/metadata"))
            .basic_auth("pacs-admin", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&rsp.text().await.unwrap()).unwrap();
        let mut sops: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["00080018"]["Value"][0].as_str().unwrap().to_string())
            .collect();
        sops.sort();
        sops
    };
    assert_eq!(sops().await, [format!("{a}.1.1"), format!("{a}.1.2")]);
    // One instance deleted and another stored: as many as before, not the same ones.
    let (status, _) = delete(&base, &format!("{series}/instances/{a}.1.1"), "pacs-admin").await;
    assert_eq!(status, 200);
    store_specs(&n.scu("MODALITY"), &[Spec::ct(961, 1, 3, 16)]).await;
    assert_eq!(sops().await, [format!("{a}.1.2"), format!("{a}.1.3")]);
}
