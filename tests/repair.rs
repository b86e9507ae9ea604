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
    let v = pacsd::archive::maintenance::verify_all(&n.node.index, &n.node.storage, false)
        .await
        .unwrap();
    assert_eq!((v.objects, v.bad_copies), (4, 0));
}

#[test]
fn verify_finds_bad_copies_and_repair_heals_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Load 3 objects with a node, then stop it: verify and repair run offline from the CLI.
    let config = config_in(dir.path());
    rt.block_on(async {
        let node = pacsd::node::Node::open(config.clone())
            .unwrap()
            .spawn()
            .await
            .unwrap();
        let src = dir.path().join("src");
        let files = small_corpus(&src, 61, 3);
        let opts = scu_to(node.addr.to_string(), "LOADER", Duration::from_secs(20));
        let s = pacsd::tools::store(&opts, files, 1, false).await.unwrap();
        assert_eq!(s.succeeded, 3);
        node.stop().await;
    });
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
    let verify = Command::new(bin)
        .args(["storage", "verify", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout)
            .contains("3 objects and 0 previews checked on 3 replicas: 2 bad copies"),
        "{}",
        text(&verify)
    );
    let repair = Command::new(bin)
        .args(["storage", "repair", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(repair.status.success(), "{}", text(&repair));
    assert!(
        String::from_utf8_lossy(&repair.stdout).contains("2 repaired, 0 failed"),
        "{}",
        text(&repair)
    );
    let verify = Command::new(bin)
        .args(["storage", "verify", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("0 bad copies"));
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
    assert!(
        out.status.success(),
        "node with 2 of 3 replicas meets quorum: {}",
        text(&out)
    );
    assert_eq!(n.node.index.repair_queue().await.unwrap().len(), 2);

    // The "mount" appears: the replica opens on next use and the worker fills it.
    std::fs::remove_file(&parent).unwrap();
    assert!(n.repairs_drain(Duration::from_secs(10)).await);
    assert_eq!(pacsd::tools::collect_files(&[r3]).unwrap().len(), 2);
}
