//! pacsd on a real HDFS: Hadoop 3.5.0's MiniDFSCluster (tests/minidfs, started by
//! `scripts/minidfs.sh`) on loopback. DICOM end to end with HDFS replicas; a DataNode lost while
//! storing, before reads and in the middle of a striped read; the NameNode failing over (HA pair) during a C-STORE burst and during a
//! C-MOVE; the whole HDFS down while storing, healed when it returns; what an interrupted HDFS
//! put leaves behind never taken for an object, and removed.
#![cfg(feature = "hdfs")]
// `serial()` is held for a whole test on purpose (one JVM cluster at a time on 2 cores).
#![allow(clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use pacsd::config::{Peer, Service};
use pacsd::net::scu::ScuOptions;
use pacsd::storage::REPLICA_OP_TIMEOUT;
use pacsd::synth::Spec;

use common::*;

/// A node with these replicas (`local:NAME` is a directory NAME in the node's own data
/// directory), C-FIND/C-MOVE/C-GET open to unknown AEs, the storescp at `dest` known as DEST,
/// and a quick repair worker.
async fn node_on(replicas: Vec<String>, dest: Option<u16>) -> TestNode {
    TestNode::start_with(|c| {
        let dir = c.index.path.parent().unwrap().to_path_buf();
        c.storage.replicas = replicas
            .into_iter()
            .map(|r| match r.strip_prefix("local:") {
                Some(name) => dir.join(name).display().to_string(),
                None => r,
            })
            .collect();
        c.storage.repair_interval_secs = 0.3;
        c.access
            .unknown_ae_services
            .extend([Service::Find, Service::Move, Service::Get]);
        if let Some(port) = dest {
            c.peers = vec![Peer::new("DEST", "127.0.0.1", port, &[])];
        }
    })
    .await
}

fn series(study: u32, n: u32, size: u16) -> Vec<Spec> {
    (1..=n).map(|i| Spec::ct(study, 1, i, size)).collect()
}

/// What one C-STORE of a burst got: its status (or the association's failure) and how long it
/// took.
struct Sent {
    spec: Spec,
    ok: bool,
    at: Instant,
    took: Duration,
}

/// C-STORE `specs` one after another over one association (a new one if the last was lost),
/// recording each outcome; `at(i)` runs before the i-th store (to inject a fault mid-burst).
/// C-STORE `specs` one after the other; with `event` = Some((k, command)), the cluster is
/// sent `command` just before the k-th (from 0).
async fn burst(
    opts: &ScuOptions,
    specs: &[Spec],
    mut event: Option<(usize, &str, &mut MiniDfs)>,
) -> Vec<Sent> {
    let mut out = Vec::new();
    let mut assoc = Some(ct_association(opts).await);
    for (i, s) in specs.iter().enumerate() {
        if let Some((k, command, dfs)) = event.as_mut()
            && *k == i
        {
            dfs.command(command);
        }
        if assoc.is_none() {
            assoc = Some(ct_association(opts).await);
        }
        let a = assoc.as_mut().unwrap();
        let ctx = a.contexts()[0].id;
        let t0 = Instant::now();
        let ok = match a.store(ctx, &s.sop_class, &s.sop_uid, &encode(s)).await {
            Ok(st) => st.is_success(),
            Err(_) => {
                assoc = None;
                false
            }
        };
        out.push(Sent {
            spec: s.clone(),
            ok,
            at: t0,
            took: t0.elapsed(),
        });
    }
    if let Some(a) = assoc {
        let _ = a.release().await;
    }
    out
}

/// The acknowledged ones, after printing the burst's service gap (failed stores and the
/// slowest store) and checking that no store waited longer than a replica may take.
fn acked(what: &str, sent: &[Sent]) -> Vec<Spec> {
    let failed = sent.iter().filter(|s| !s.ok).count();
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    let mut took: Vec<Duration> = sent.iter().map(|s| s.took).collect();
    took.sort();
    let failures: Vec<Instant> = sent.iter().filter(|s| !s.ok).map(|s| s.at).collect();
    let window = match (failures.first(), failures.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    eprintln!(
        "{what}: {} C-STOREs, {failed} failed (from the first to the last failure {window:?}), \
         median {:?}, slowest {slowest:?}",
        sent.len(),
        took[took.len() / 2]
    );
    assert!(
        slowest < REPLICA_OP_TIMEOUT + Duration::from_secs(5),
        "{what}: a C-STORE waited {slowest:?}, longer than a replica operation may take"
    );
    sent.iter()
        .filter(|s| s.ok)
        .map(|s| s.spec.clone())
        .collect()
}

/// C-MOVE of a whole study to DEST with DCMTK movescu; its output.
fn move_study(port: u16, study: &str) -> String {
    let k = format!("StudyInstanceUID={study}");
    movescu(port, &["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", &k])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_end_to_end_with_hdfs_replicas() {
    let _serial = serial();
    let dfs = MiniDfs::start(3, false);
    let dest = Destination::start(&[]);
    // Two of the three replicas on HDFS: no C-STORE can succeed without HDFS taking it.
    let n = node_on(
        vec![
            "local:r1".into(),
            dfs.replica("pacs/r2"),
            dfs.replica("pacs/r3"),
        ],
        Some(dest.port),
    )
    .await;

    // C-STORE with DCMTK: 20 small images and 2 of 8 MB (read striped when it pays).
    let src = tempfile::tempdir().unwrap();
    let mut specs = series(6100, 20, 64);
    specs.extend((21..=22).map(|i| Spec::ct(6100, 1, i, 2048)));
    for (i, s) in specs.iter().enumerate() {
        part10_file(s, &src.path().join(format!("{i}.dcm")));
    }
    let out = storescu_dir(n.port(), src.path()).await;
    assert_succeeded(&out, "storescu");
    assert_eq!(n.instances().await, 22);
    assert!(
        n.node.index.repair_queue().await.unwrap().is_empty(),
        "every replica took every object"
    );
    for i in [1, 2] {
        for s in &specs {
            let key = n.stored(&s.sop_uid).await;
            assert!(n.node.storage.exists_on(i, &key.storage_key).await);
        }
    }

    // C-FIND with DCMTK.
    let found = findscu_instances(n.port(), &specs[0].study_uid, &specs[0].series_uid);
    assert_eq!(found.matches("(0008,0018) UI [").count(), 22, "{found}");

    // Reads served by HDFS alone: the local replica is emptied, so a C-MOVE must read every
    // object from HDFS (large ones striped over the two HDFS replicas when that pays).
    std::fs::remove_dir_all(n.replica_dir(0)).unwrap();
    std::fs::create_dir_all(n.replica_dir(0)).unwrap();
    let study = specs[0].study_uid.clone();
    let p = n.port();
    let out = tokio::task::spawn_blocking(move || move_study(p, &study))
        .await
        .unwrap();
    assert!(out.contains("Final Move Response (Success)"), "{out}");
    assert_eq!(dest.files().len(), 22, "{out}");
    for f in dest.files() {
        let sop = dicom_object::open_file(&f)
            .unwrap()
            .meta()
            .media_storage_sop_instance_uid()
            .to_string();
        let stored = n.stored(&sop).await;
        let bytes = n.node.storage.get(&stored.storage_key).await.unwrap();
        let (_, off) = pacsd::part10::split(&bytes).unwrap();
        let sent = std::fs::read(&f).unwrap();
        let (_, sent_off) = pacsd::part10::split(&sent).unwrap();
        assert!(
            sent[sent_off..] == bytes[off..],
            "{sop} arrived byte-identical"
        );
    }
    // Verify finds the missing local copies (those a read already found missing may have been
    // repaired by now) and queues them; the repair worker copies them back from HDFS.
    let v = n.verify().await;
    assert_eq!(v.objects, 22);
    assert!(v.bad_copies >= 1, "{v:?}");
    assert!(
        eventually(Duration::from_secs(60), async || {
            n.node.index.repair_queue().await.unwrap().is_empty()
                && n.files_in_replica(0).len() == 22
        })
        .await,
        "the local replica was healed from HDFS"
    );
    n.node.stop().await;
}

/// Two local replicas and one on HDFS, with the default straggler patience: a C-STORE is
/// answered once the two local copies are durable (an HDFS write takes 0.5 s or more), the
/// HDFS write goes on in the background, the replica stays in the repair queue until it is
/// done and is then cleared without the repair worker (which does not run here): every object
/// ends up on HDFS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_store_is_answered_at_the_local_quorum_and_hdfs_finishes_in_the_background() {
    let _serial = serial();
    let dfs = MiniDfs::start(1, false);
    let n = TestNode::start_with(|c| {
        let dir = c.index.path.parent().unwrap().to_path_buf();
        c.storage.replicas = vec![
            dir.join("r1").display().to_string(),
            dir.join("r2").display().to_string(),
            dfs.replica("pacs/background"),
        ];
        c.storage.straggler_patience_secs = pacsd::storage::STRAGGLER_PATIENCE.as_secs_f64();
        c.storage.repair_interval_secs = 3600.0;
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    let specs = series(6200, 20, 64);
    for (i, s) in specs.iter().enumerate() {
        part10_file(s, &src.path().join(format!("{i}.dcm")));
    }
    let t0 = Instant::now();
    let out = storescu_dir(n.port(), src.path()).await;
    let took = t0.elapsed();
    assert_succeeded(&out, "storescu");
    let queued = n.node.index.repair_queue().await.unwrap();
    eprintln!(
        "20 C-STOREs in {took:?}; HDFS still writing for {} of them when storescu was done",
        queued.len()
    );
    for e in &queued {
        assert_eq!(e.reason, pacsd::archive::STILL_WRITING, "{e:?}");
        assert!(e.replica.starts_with("hdfs://"), "{e:?}");
    }
    assert!(
        eventually(Duration::from_secs(60), async || {
            n.node.index.repair_queue().await.unwrap().is_empty()
                && n.node.storage.background_stats().running == 0
        })
        .await,
        "{:?}",
        n.node.index.repair_queue().await
    );
    for s in &specs {
        let key = n.stored(&s.sop_uid).await.storage_key;
        assert!(n.node.storage.exists_on(2, &key).await, "{key} on HDFS");
    }
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_lost_while_storing_and_reading() {
    let _serial = serial();
    // Four DataNodes with replication 3: the write pipeline can replace a lost one.
    let mut dfs = MiniDfs::start(4, false);
    let n = node_on(
        vec![
            dfs.replica("pacs/r1"),
            dfs.replica("pacs/r2"),
            dfs.replica("pacs/r3"),
        ],
        None,
    )
    .await;
    let opts = n.scu("BURST");
    let specs = series(6200, 300, 128);
    let sent = burst(&opts, &specs, Some((20, "stop-datanode 1", &mut dfs))).await;
    let kept = acked("DataNode 1 stopped after 20 of 300 C-STOREs", &sent);
    // A put whose pipeline met the stopped DataNode is tried again on a fresh block until
    // the NameNode stops placing blocks there (stale after 3 s here): none fails.
    assert_eq!(kept.len(), sent.len(), "every C-STORE acknowledged");
    check_kept(&opts, &kept).await.unwrap();

    // Reads with a second DataNode gone (the NameNode still lists it for a few seconds):
    // every object comes back whole from the DataNodes that hold its blocks.
    dfs.command("stop-datanode 2");
    let t0 = Instant::now();
    for s in &kept {
        let inst = n.stored(&s.sop_uid).await;
        assert_eq!(n.read_back(&s.sop_uid).await.bytes.len() as u64, inst.size);
    }
    eprintln!(
        "{} objects read back with DataNodes 1 and 2 down in {:?}",
        kept.len(),
        t0.elapsed()
    );
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namenode_failover_during_a_store_burst_and_a_move() {
    let _serial = serial();
    let mut dfs = MiniDfs::start(3, true);
    let dest = Destination::start(&[]);
    // Every replica on the HA cluster: pacsd can answer nothing without a NameNode.
    let n = node_on(
        (1..=3)
            .map(|i| dfs.replica(&format!("pacs/r{i}")))
            .collect(),
        Some(dest.port),
    )
    .await;
    let opts = n.scu("BURST");

    // A planned failover (nn0 -> nn1) in the middle of 80 C-STOREs.
    let specs = series(6300, 80, 128);
    let sent = burst(&opts, &specs, Some((30, "failover", &mut dfs))).await;
    let kept = acked("NameNode failover after 30 of 80 C-STOREs", &sent);
    check_kept(&opts, &kept).await.unwrap();

    // The active NameNode killed during a C-MOVE of the study, the other made active.
    let study = specs[0].study_uid.clone();
    let p = n.port();
    let mover = tokio::task::spawn_blocking(move || move_study(p, &study));
    // Under way: the first sub-operation delivered.
    assert!(eventually(Duration::from_secs(30), async || !dest.files().is_empty()).await);
    let t0 = Instant::now();
    dfs.command("kill-namenode 1");
    dfs.command("activate 0");
    eprintln!("NameNode 1 killed and 0 made active in {:?}", t0.elapsed());
    let out = mover.await.unwrap();
    assert!(out.contains("Final Move Response"), "{out}");
    let delivered = dest.files().len();
    eprintln!(
        "C-MOVE across the NameNode kill: {delivered} of {} delivered",
        kept.len()
    );
    // Whatever the C-MOVE could not send it reported as failed; a second C-MOVE on the new
    // active NameNode delivers everything acknowledged.
    let study = specs[0].study_uid.clone();
    let out = tokio::task::spawn_blocking(move || move_study(p, &study))
        .await
        .unwrap();
    assert!(out.contains("Final Move Response (Success)"), "{out}");
    let after: std::collections::BTreeSet<_> = dest
        .files()
        .iter()
        .map(|f| f.file_name().unwrap().to_os_string())
        .collect();
    assert!(
        after.len() >= kept.len(),
        "{} files for {} acknowledged",
        after.len(),
        kept.len()
    );
    check_kept(&opts, &kept).await.unwrap();
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_hdfs_down_while_storing_is_healed_when_it_returns() {
    let _serial = serial();
    let mut dfs = MiniDfs::start(3, false);
    let hdfs = dfs.replica("pacs/r3");
    let n = node_on(
        vec!["local:r1".into(), "local:r2".into(), hdfs.clone()],
        None,
    )
    .await;
    let opts = n.scu("BURST");
    store_specs(&opts, &series(6400, 10, 64)).await;

    dfs.command("kill-namenode 0");
    let specs = series(6401, 20, 64);
    let sent = burst(&opts, &specs, None).await;
    let kept = acked("HDFS NameNode down, 20 C-STOREs at the quorum", &sent);
    assert_eq!(kept.len(), 20, "the two local replicas make the quorum");
    let queued = n.node.index.repair_queue().await.unwrap();
    assert_eq!(queued.len(), 20, "one repair per object HDFS missed");
    assert!(queued.iter().all(|e| e.replica == hdfs));

    dfs.command("restart-namenode 0");
    // The repair worker heals the replica once it is back.
    let v = n.verify_once_repaired(Duration::from_secs(90)).await;
    assert_eq!((v.objects, v.bad_copies), (30, 0));
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_hdfs_put_leaves_nothing_taken_for_an_object() {
    let _serial = serial();
    let dfs = MiniDfs::start(1, false);
    let hdfs = dfs.replica("pacs/r2");
    let n = node_on(vec!["local:r1".into(), hdfs.clone()], None).await;
    let opts = n.scu("SCU");
    let specs = series(6500, 3, 64);
    store_specs(&opts, &specs).await;

    // What hdfs-native-object-store leaves when a put is cut off between its temporary file
    // and the rename: `.{name}.tmp.{n}` beside where the object would be, here with the bytes
    // of a real instance.
    let inst = n.stored(&specs[0].sop_uid).await;
    let (dir, name) = inst.storage_key.rsplit_once('/').unwrap();
    let orphan_sop = "1.2.826.0.1.3680043.10.1.999";
    let temp_key = format!("{dir}/.{orphan_sop}.dcm.tmp.1");
    let raw = pacsd::storage::Location::parse(&hdfs)
        .unwrap()
        .open()
        .unwrap();
    let bytes = n.node.storage.get(&inst.storage_key).await.unwrap();
    raw.put(&temp_key.as_str().into(), bytes.into())
        .await
        .unwrap();
    assert!(name.ends_with(".dcm"));
    assert!(
        n.node
            .storage
            .list_keys()
            .await
            .unwrap()
            .contains(&temp_key),
        "the listing shows the leftover"
    );

    // Recovery (HA takeover) and verify do not take it for an object.
    assert_eq!(
        pacsd::archive::maintenance::recover_from_storage(&n.node.index, &n.node.storage)
            .await
            .unwrap(),
        0
    );
    let v = n.verify().await;
    assert_eq!((v.objects, v.bad_copies), (3, 0));
    assert_eq!(n.instances().await, 3);

    // The sweep leaves a fresh leftover alone (a put may still be writing it), removes an old one.
    assert_eq!(
        n.node
            .storage
            .remove_abandoned_uploads(pacsd::archive::maintenance::ABANDONED_UPLOAD_AGE)
            .await,
        0
    );
    assert_eq!(
        n.node
            .storage
            .remove_abandoned_uploads(Duration::ZERO)
            .await,
        1
    );
    assert!(
        !n.node
            .storage
            .list_keys()
            .await
            .unwrap()
            .contains(&temp_key)
    );
    n.node.stop().await;

    // An index rebuilt from storage holds the three instances and nothing else.
    raw.put(
        &temp_key.as_str().into(),
        bytes::Bytes::from_static(b"partial").into(),
    )
    .await
    .unwrap();
    let mut config = n.config.clone();
    config.index.path = n.dir.path().join("rebuilt.sqlite");
    let summary = pacsd::archive::maintenance::rebuild_index(&config, false)
        .await
        .unwrap();
    eprintln!("rebuild: {summary:?}");
    let index = pacsd::index::Index::open(&config.index.path).unwrap();
    assert_eq!(index.counts().await.unwrap().instances, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_striped_read_survives_a_datanode_stopped_mid_read() {
    use object_store::ObjectStore;
    use std::sync::Arc;
    let _serial = serial();
    let mut dfs = MiniDfs::start(4, false);
    let urls: Vec<String> = (1..=3)
        .map(|i| dfs.replica(&format!("pacs/s{i}")))
        .collect();
    let stores: Vec<(String, Arc<dyn ObjectStore>)> = urls
        .iter()
        .map(|u| {
            let s = pacsd::storage::Location::parse(u).unwrap().open().unwrap();
            (u.clone(), s)
        })
        .collect();
    let data = pacsd::storage::bench::body(48 << 20, 7);
    let key = "dicom/1.2/1.3/1.7.dcm";
    pacsd::storage::Storage::from_stores(stores.clone(), None, "dicom")
        .unwrap()
        .put_and_finish(key, data.clone())
        .await
        .unwrap();
    // Each replica slowed to ~40 MB/s so that the read lasts about a second.
    let slowed = slowed_reads(stores, Duration::from_nanos(25));
    let storage = Arc::new(pacsd::storage::Storage::from_stores(slowed, None, "dicom").unwrap());
    let expected = pacsd::storage::Expected {
        key: key.into(),
        size: data.len() as u64,
        digest: pacsd::storage::digest::record(&data),
        read_check: Some(pacsd::storage::digest::read_check(&data)),
    };
    let reader = {
        let (storage, expected) = (storage.clone(), expected.clone());
        tokio::spawn(async move { storage.read(&expected).await })
    };
    assert!(
        holds_for(Duration::from_millis(300), async || !reader.is_finished()).await,
        "the read finished before the fault"
    );
    let fault = Instant::now();
    dfs.command("stop-datanode 1");
    let v = tokio::time::timeout(REPLICA_OP_TIMEOUT, reader)
        .await
        .expect("the read completes within a replica operation's time")
        .unwrap()
        .unwrap();
    assert!(v.bytes == data, "bytes after a DataNode stopped mid-read");
    eprintln!(
        "striped read with a DataNode stopped mid-read: done {:?} after the fault, stripe {:?}",
        fault.elapsed(),
        v.stripe.as_ref().map(|r| (&r.bytes_from, &r.dropped))
    );
}
