//! Replica repair and verification with real local replicas: a replica down during ingest is
//! healed by the background worker when it returns; `pacsd storage verify` finds missing and
//! corrupted copies and `pacsd storage repair` heals them from a good copy.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_during_ingest_is_healed_when_it_returns() {
    let n = TestNode::start_with(|c| c.storage.repair_interval_secs = 0.2).await;
    n.break_replica(2);
    let src = tempfile::tempdir().unwrap();
    small_corpus(src.path(), 60, 4);
    let out = storescu_dir(n.port(), src.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(n.node.index.repair_queue().await.unwrap().len(), 4);

    // While the replica is still down, passes fail and the entries stay.
    assert!(
        holds_for(Duration::from_millis(600), async || n
            .node
            .index
            .repair_queue()
            .await
            .unwrap()
            .len()
            == 4)
        .await
    );

    // The replica comes back (an empty directory): the worker copies every object to it.
    let r3 = n.replica_dir(2);
    std::fs::remove_file(&r3).unwrap();
    std::fs::create_dir(&r3).unwrap();
    assert!(n.repairs_drain(Duration::from_secs(10)).await);
    assert_eq!(n.files_in_replica(2).len(), 4);
    let v = n.verify().await;
    assert_eq!((v.objects, v.bad_copies), (4, 0));
}

/// Store `files` with a node of `config` (one association), then stop it: the maintenance
/// commands run offline from the CLI.
async fn load_then_stop(config: &pacsd::config::Config, files: Vec<std::path::PathBuf>) {
    let node = pacsd::node::Node::open(config.clone())
        .unwrap()
        .spawn()
        .await
        .unwrap();
    let n = files.len() as u64;
    let opts = scu_to(node.addr.to_string(), "LOADER", Duration::from_secs(20));
    let s = pacsd::tools::store(&opts, files, 1, false).await.unwrap();
    assert_eq!(s.succeeded, n);
    node.stop().await;
}

#[test]
fn verify_finds_bad_copies_and_repair_heals_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Load 3 objects with a node, then stop it: verify and repair run offline from the CLI.
    let config = config_in(dir.path());
    rt.block_on(load_then_stop(
        &config,
        small_corpus(&dir.path().join("src"), 61, 3),
    ));
    let toml = dir.path().join("pacsd.toml");
    write_cli_config(&config, &toml);

    // One copy deleted, one corrupted in place.
    let files1 =
        pacsd::tools::collect_files(&[std::path::PathBuf::from(&config.storage.replicas[0])])
            .unwrap();
    let files2 =
        pacsd::tools::collect_files(&[std::path::PathBuf::from(&config.storage.replicas[1])])
            .unwrap();
    std::fs::remove_file(&files1[0]).unwrap();
    let mut bytes = std::fs::read(&files2[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&files2[1], bytes).unwrap();

    let bin = env!("CARGO_BIN_EXE_pacsd");
    let storage = |what: &str| {
        let args = ["storage", what, "--config"];
        Command::new(bin).args(args).arg(&toml).output().unwrap()
    };
    let verify = storage("verify");
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout)
            .contains("3 objects and 0 previews checked on 3 replicas: 2 bad copies"),
        "{}",
        text(&verify)
    );
    assert_printed(&storage("repair"), "2 repaired, 0 failed");
    assert_printed(&storage("verify"), "0 bad copies");
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_unavailable_at_start_up_is_treated_as_down_then_healed() {
    // Replica 3's directory cannot be created: its parent is a regular file.
    let blocker = tempfile::tempdir().unwrap();
    let parent = blocker.path().join("mount");
    std::fs::write(&parent, b"not mounted").unwrap();
    let r3 = parent.join("replica-3");
    let n = TestNode::start_with(|c| {
        c.storage.repair_interval_secs = 0.2;
        c.storage.replicas[2] = r3.display().to_string();
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    small_corpus(src.path(), 62, 2);
    let out = storescu_dir(n.port(), src.path()).await;
    assert_succeeded(&out, "node with 2 of 3 replicas meets quorum");
    assert_eq!(n.node.index.repair_queue().await.unwrap().len(), 2);

    // The "mount" appears: the replica opens on next use and the worker fills it.
    std::fs::remove_file(&parent).unwrap();
    assert!(n.repairs_drain(Duration::from_secs(10)).await);
    assert_eq!(pacsd::tools::collect_files(&[r3]).unwrap().len(), 2);
}

/// An archive whose objects an older version recorded with SHA-256 keeps them checked with it
/// after the upgrade to BLAKE3: the index migrates (the column is renamed, no row rewritten),
/// getscu receives every object with the good bytes although two of the three copies of one
/// are corrupted, and `storage verify` finds those two copies and `storage repair` heals them.
#[test]
fn objects_recorded_with_sha256_by_an_older_version_are_still_checked_and_served() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = config_in(dir.path());
    config
        .access
        .unknown_ae_services
        .insert(pacsd::config::Service::Get);
    let files = small_corpus(&dir.path().join("src"), 62, 3);
    rt.block_on(load_then_stop(&config, files.clone()));

    // The index as schema 7 had it: each object's SHA-256 in a `sha256` column (and neither
    // the table of the later migration 9 nor the read check column of migration 10).
    let replica = |i: usize| std::path::PathBuf::from(&config.storage.replicas[i]);
    let keys: Vec<String> = {
        let c = rusqlite::Connection::open(&config.index.path).unwrap();
        let rows: Vec<(i64, String)> = c
            .prepare("SELECT id, storage_key FROM instance ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (id, key) in &rows {
            let bytes = std::fs::read(replica(0).join(key)).unwrap();
            let sha = hex::encode(Sha256::digest(&bytes));
            c.execute(
                "UPDATE instance SET digest = ?1 WHERE id = ?2",
                rusqlite::params![sha, id],
            )
            .unwrap();
        }
        c.execute_batch(
            "ALTER TABLE instance DROP COLUMN read_check;
             ALTER TABLE instance RENAME COLUMN digest TO sha256;
             ALTER TABLE preview RENAME COLUMN digest TO sha256;
             DROP TABLE settled;
             PRAGMA user_version = 7;",
        )
        .unwrap();
        rows.into_iter().map(|(_, key)| key).collect()
    };
    // Two of the three copies of the first object corrupted in their last byte.
    for i in [0, 1] {
        let path = replica(i).join(&keys[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
    }

    let received = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let node = pacsd::node::Node::open(config.clone())
            .unwrap()
            .spawn()
            .await
            .unwrap();
        let study = pacsd::synth::Spec::ct(62, 1, 1, 64).study_uid;
        getscu_study(node.addr.port(), &study, received.path(), 3).await;
        node.stop().await;
    });
    // The corrupted byte was the last of the pixel data: every object came back with the
    // last bytes it was sent with.
    let got = pacsd::tools::collect_files(&[received.path().to_path_buf()]).unwrap();
    assert_eq!(got.len(), 3);
    for original in &files {
        let sent = std::fs::read(original).unwrap();
        let tail = &sent[sent.len() - 16..];
        assert!(
            got.iter()
                .any(|f| std::fs::read(f).unwrap().ends_with(tail)),
            "{} not received intact",
            original.display()
        );
    }
    let c = rusqlite::Connection::open(&config.index.path).unwrap();
    let digests: Vec<String> = c
        .prepare("SELECT digest FROM instance")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        digests.iter().all(|d| d.len() == 64 && !d.contains(':')),
        "rows keep the SHA-256 they were recorded with: {digests:?}"
    );

    let toml = dir.path().join("pacsd.toml");
    write_cli_config(&config, &toml);
    let bin = env!("CARGO_BIN_EXE_pacsd");
    let storage = |command: &str| {
        Command::new(bin)
            .args(["storage", command, "--config"])
            .arg(&toml)
            .output()
            .unwrap()
    };
    let verify = storage("verify");
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        text(&verify).contains("3 objects and 0 previews checked on 3 replicas: 2 bad copies"),
        "{}",
        text(&verify)
    );
    let repair = storage("repair");
    assert!(
        text(&repair).contains("2 repaired, 0 failed"),
        "{}",
        text(&repair)
    );
    let verify = storage("verify");
    assert!(
        verify.status.success() && text(&verify).contains(": 0 bad copies"),
        "{}",
        text(&verify)
    );
}
