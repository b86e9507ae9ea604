//! Ingest behaviour against real clients: DCMTK echoscu/storescu and pacsd's own SCU,
//! with a node started in-process on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::*;
use dicom_dictionary_std::uids;
use pacsd::config::{Peer, Service};
use pacsd::dimse::{Command, status};
use pacsd::synth::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_gets_success() {
    let n = TestNode::start().await;
    let out = dcmtk_async(
        "echoscu",
        vec![
            "-v".into(),
            "-aec".into(),
            "PACSD".into(),
            "127.0.0.1".into(),
            n.port().to_string(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Received Echo Response (Success)"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_called_ae_is_rejected_with_reason() {
    let n = TestNode::start().await;
    let out = dcmtk_async(
        "echoscu",
        vec![
            "-aec".into(),
            "NOT_PACSD".into(),
            "127.0.0.1".into(),
            n.port().to_string(),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Called AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    // The node keeps serving.
    let ok = echo_node(n.port()).await;
    assert!(ok.status.success(), "{}", text(&ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_ae_policy_from_peers() {
    let n = TestNode::start_with(|c| {
        c.access.unknown_ae_services.clear();
        c.peers = vec![
            Peer::new(
                "MODALITY1",
                "127.0.0.1",
                104,
                &[Service::Echo, Service::Store],
            ),
            Peer::new("ECHOONLY", "127.0.0.1", 104, &[Service::Echo]),
        ];
    })
    .await;
    let port = n.port().to_string();
    let unknown = dcmtk_async(
        "echoscu",
        vec![
            "-aet".into(),
            "STRANGER".into(),
            "-aec".into(),
            "PACSD".into(),
            "127.0.0.1".into(),
            port.clone(),
        ],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&unknown)
    );

    let known = dcmtk_async(
        "echoscu",
        vec![
            "-aet".into(),
            "MODALITY1".into(),
            "-aec".into(),
            "PACSD".into(),
            "127.0.0.1".into(),
            port.clone(),
        ],
    )
    .await;
    assert!(known.status.success(), "{}", text(&known));

    // A peer allowed only C-ECHO gets its storage contexts refused and stores nothing.
    let files = small_corpus(n.dir.path(), 5, 1);
    let store = storescu_paths(n.port(), &["-aet", "ECHOONLY"], &[&files[0]]).await;
    assert_failed(&store, "a C-STORE from an echo-only peer was accepted");
    assert_eq!(n.instances().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_objects_land_on_every_replica_byte_exact_and_indexed() {
    let n = TestNode::start().await;
    let src = tempfile::tempdir().unwrap();
    let files = small_corpus(src.path(), 11, 6);
    let out = storescu_dir(n.port(), src.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    let c = n.node.index.counts().await.unwrap();
    assert_eq!((c.patients, c.studies, c.series, c.instances), (1, 1, 1, 6));
    assert_eq!(
        n.node
            .index
            .study_counts(&Spec::ct(11, 1, 1, 64).study_uid)
            .await
            .unwrap(),
        Some((1, 6, "CT".into()))
    );
    for i in 0..3 {
        assert_eq!(n.files_in_replica(i).len(), 6, "replica {i}");
    }
    // The stored data set is the one sent, byte for byte (storescu sent it unchanged: same TS).
    for (k, f) in files.iter().enumerate() {
        let spec = Spec::ct(11, 1, k as u32 + 1, 64);
        let inst = n.stored(&spec.sop_uid).await;
        let stored = n.node.storage.get(&inst.storage_key).await.unwrap();
        let original = std::fs::read(f).unwrap();
        let (_, so) = pacsd::part10::split(&stored).unwrap();
        let (_, oo) = pacsd::part10::split(&original).unwrap();
        assert_eq!(
            &stored[so..],
            &original[oo..],
            "data set of {}",
            f.display()
        );
        assert_eq!(inst.size, stored.len() as u64);
        assert_eq!(inst.transfer_syntax_uid, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_is_idempotent() {
    let n = TestNode::start().await;
    let src = tempfile::tempdir().unwrap();
    let files = small_corpus(src.path(), 12, 2);
    for _ in 0..3 {
        let out = storescu_paths(n.port(), &[], &[&files[0], &files[1]]).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let c = n.node.index.counts().await.unwrap();
    // One change-log row per instance (beside it, the first-start admin account's row).
    let logged = n.node.index.changes_after(0, 100).await.unwrap();
    let instance_rows = logged
        .iter()
        .filter(|r| matches!(r.change, pacsd::index::replica::Change::Instance(_)))
        .count();
    assert_eq!((c.instances, instance_rows), (2, 2));
    assert_eq!(n.files_in_replica(0).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_mismatched_uids_fail_clearly_and_write_nothing() {
    let n = TestNode::start().await;
    let mut assoc = ct_association(&n.scu("TESTSCU")).await;
    let ctx = assoc.contexts()[0].id;

    let cases: Vec<(&str, Spec, u16, &str)> = vec![
        (
            "bad study UID",
            Spec {
                study_uid: "1.2.abc".into(),
                ..Spec::ct(20, 1, 1, 8)
            },
            status::UNABLE_TO_PROCESS,
            "StudyInstanceUID",
        ),
        (
            "path traversal in series UID",
            Spec {
                series_uid: "../../etc".into(),
                ..Spec::ct(20, 1, 2, 8)
            },
            status::UNABLE_TO_PROCESS,
            "SeriesInstanceUID",
        ),
        (
            "empty series UID",
            Spec {
                series_uid: "".into(),
                ..Spec::ct(20, 1, 3, 8)
            },
            status::UNABLE_TO_PROCESS,
            "SeriesInstanceUID",
        ),
        (
            "UID over 64 chars",
            Spec {
                study_uid: format!("1.{}", "2".repeat(70)),
                ..Spec::ct(20, 1, 4, 8)
            },
            status::UNABLE_TO_PROCESS,
            "StudyInstanceUID",
        ),
    ];
    for (what, spec, code, needle) in cases {
        let st = store_spec(&mut assoc, ctx, &spec).await;
        assert_eq!(st.code, code, "{what}: {st:?}");
        let comment = st.comment.unwrap_or_default();
        assert!(
            comment.contains(needle),
            "{what}: comment `{comment}` should name {needle}"
        );
    }

    // Data set SOP Instance UID differs from the command's Affected SOP Instance UID.
    let spec = Spec::ct(21, 1, 1, 8);
    let st = assoc
        .store(ctx, &spec.sop_class, "1.2.3.4.5", &encode(&spec))
        .await
        .unwrap();
    assert_eq!(st.code, status::DOES_NOT_MATCH_SOP_CLASS, "{st:?}");

    // Data set SOP Class differs from the command's.
    let mr = Spec {
        sop_class: uids::MR_IMAGE_STORAGE.into(),
        ..Spec::ct(21, 1, 2, 8)
    };
    let st = assoc
        .store(ctx, uids::CT_IMAGE_STORAGE, &mr.sop_uid, &encode(&mr))
        .await
        .unwrap();
    assert_eq!(st.code, status::DOES_NOT_MATCH_SOP_CLASS, "{st:?}");

    // Garbage that does not parse.
    let st = assoc
        .store(ctx, uids::CT_IMAGE_STORAGE, "1.2.3.4.6", &[0xFF; 37])
        .await
        .unwrap();
    assert!((0xC000..=0xCFFF).contains(&st.code), "{st:?}");

    // An unknown command on the association gets 0211, and the association keeps working.
    let weird = Command {
        command_field: 0x0123,
        message_id: Some(99),
        data_set_type: pacsd::dimse::NO_DATA_SET,
        ..Command::default()
    };
    assoc.send_message(ctx, &weird, None).await.unwrap();
    let rsp = assoc.read_command().await.unwrap();
    assert_eq!(
        (
            rsp.command_field,
            rsp.status,
            rsp.message_id_being_responded_to
        ),
        (0x8123, Some(status::UNRECOGNIZED_OPERATION), Some(99))
    );

    assert_eq!(n.instances().await, 0);
    for i in 0..3 {
        assert!(n.files_in_replica(i).is_empty(), "replica {i} has files");
    }
    // Still able to store a good one on the same association.
    let good = Spec::ct(22, 1, 1, 8);
    let st = store_spec(&mut assoc, ctx, &good).await;
    assert!(st.is_success(), "{st:?}");
    assert_eq!(n.instances().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_down_still_meets_quorum_and_queues_repair() {
    let n = TestNode::start().await;
    n.break_replica(2);

    let src = tempfile::tempdir().unwrap();
    let files = small_corpus(src.path(), 30, 3);
    let out = storescu_dir(n.port(), src.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(n.instances().await, 3);
    assert_eq!(n.files_in_replica(0).len(), 3);
    assert_eq!(n.files_in_replica(1).len(), 3);
    let queue = n.node.index.repair_queue().await.unwrap();
    assert_eq!(queue.len(), 3, "{queue:?}");
    assert!(
        queue
            .iter()
            .all(|e| e.replica == n.config.storage.replicas[2])
    );
    drop(files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_fails_with_a700_and_indexes_nothing() {
    let n = TestNode::start().await;
    n.break_replica(1);
    n.break_replica(2);
    let mut assoc = ct_association(&n.scu("TESTSCU")).await;
    let ctx = assoc.contexts()[0].id;
    let spec = Spec::ct(31, 1, 1, 16);
    let st = store_spec(&mut assoc, ctx, &spec).await;
    assert_eq!(st.code, status::OUT_OF_RESOURCES, "{st:?}");
    assert!(st.comment.unwrap().contains("1 of 3 replicas, 2 needed"));
    assert_eq!(n.instances().await, 0);
    // The one replica that took the write was cleaned up: nothing half-stored is visible.
    assert!(n.files_in_replica(0).is_empty());
    // storescu sees the failure too.
    let src = tempfile::tempdir().unwrap();
    let files = small_corpus(src.path(), 32, 1);
    let out = storescu_paths(n.port(), &["-v"], &[&files[0]]).await;
    assert!(
        text(&out).contains("Refused: OutOfResources"),
        "{}",
        text(&out)
    );
    assert_eq!(n.instances().await, 0);
    // The node keeps serving.
    assert_eq!(
        assoc.echo().await.map(|s| s.code).ok(),
        None,
        "no echo context on this association"
    );
    let (code, _) = pacsd::tools::echo(&n.scu("TESTSCU")).await.unwrap();
    assert_eq!(code, 0);
}

/// Begin a C-STORE of `spec`: its command, then the first half of its data set in one
/// P-DATA-TF whose PDV is not flagged last (PS3.8 E.2). Returns the association, the
/// presentation context and the half not sent.
async fn half_a_store(n: &TestNode, spec: &Spec) -> (pacsd::net::scu::ScuAssociation, u8, Vec<u8>) {
    let mut assoc = ct_association(&n.scu("TESTSCU")).await;
    let ctx = assoc.contexts()[0].id;
    let data = encode(spec);
    let rq = Command::store_rq(1, &spec.sop_class, &spec.sop_uid);
    assoc.send_message(ctx, &rq, None).await.unwrap();
    let (first, rest) = data.split_at(data.len() / 2);
    let mut pdu = vec![0x04, 0x00];
    pdu.extend_from_slice(&((first.len() + 6) as u32).to_be_bytes());
    pdu.extend_from_slice(&((first.len() + 2) as u32).to_be_bytes());
    pdu.extend_from_slice(&[ctx, 0x00]);
    pdu.extend_from_slice(first);
    assoc.send_raw(&pdu).await.unwrap();
    (assoc, ctx, rest.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_mid_object_leaves_nothing_visible() {
    let n = TestNode::start().await;
    let (assoc, _, _) = half_a_store(&n, &Spec::ct(40, 1, 1, 64)).await;
    drop(assoc); // TCP close, no A-ABORT

    assert!(
        holds_for(Duration::from_millis(200), async || n.instances().await
            == 0
            && (0..3).all(|i| n.files_in_replica(i).is_empty()))
        .await
    );
    let (code, _) = pacsd::tools::echo(&n.scu("TESTSCU")).await.unwrap();
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_data_set_is_refused_and_drained() {
    let n = TestNode::start_with(|c| c.node.max_object_size = 4096).await;
    let mut assoc = ct_association(&n.scu("TESTSCU")).await;
    let ctx = assoc.contexts()[0].id;
    let big = Spec::ct(50, 1, 1, 64); // 8 KiB of pixels
    let st = store_spec(&mut assoc, ctx, &big).await;
    assert_eq!(st.code, status::OUT_OF_RESOURCES);
    assert!(st.comment.unwrap().contains("exceeds"));
    // Same association, small object: still works.
    let small = Spec::ct(50, 1, 2, 0);
    let st = store_spec(&mut assoc, ctx, &small).await;
    assert!(st.is_success(), "{st:?}");
    assert_eq!(n.instances().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_associations_all_land() {
    let n = TestNode::start().await;
    let src = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for study in 60..64 {
        files.extend(small_corpus(src.path(), study, 10));
    }
    // pacsd's own SCU over 8 associations, and 3 storescu processes at the same time.
    let scu = n.scu("PARALLEL");
    let ours = tokio::spawn({
        let files = files.clone();
        async move { pacsd::tools::store(&scu, files, 8, false).await.unwrap() }
    });
    let dirs: Vec<_> = (70..73)
        .map(|study| {
            let dir = src.path().join(format!("d{study}"));
            small_corpus(&dir, study, 5);
            dir
        })
        .collect();
    let dcmtk_runs = dirs.iter().map(|dir| storescu_dir(n.port(), dir));
    for out in futures::future::join_all(dcmtk_runs).await {
        assert!(out.status.success(), "{}", text(&out));
    }
    let summary = ours.await.unwrap();
    assert_eq!(
        (summary.succeeded, summary.failed),
        (40, 0),
        "{:?}",
        summary.failures
    );
    let c = n.node.index.counts().await.unwrap();
    assert_eq!((c.studies, c.instances), (7, 55));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_message_in_flight() {
    let n = TestNode::start().await;
    let spec = Spec::ct(80, 1, 1, 64);
    let (mut assoc, ctx, rest) = half_a_store(&n, &spec).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Shutdown arrives while the object is half received.
    let trigger = n.node.trigger();
    trigger.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The rest of the object still gets stored and acknowledged...
    assoc.send_data(ctx, &rest).await.unwrap();
    let st = assoc
        .read_response(pacsd::dimse::CommandField::CStoreRsp)
        .await
        .unwrap();
    assert!(st.is_success(), "{st:?}");
    assert!(
        n.node
            .index
            .instance(&spec.sop_uid)
            .await
            .unwrap()
            .is_some()
    );
    // ...and then the association is ended by the node, and the listener is gone.
    let after = tokio::time::timeout(Duration::from_secs(3), assoc.read_command()).await;
    assert!(
        matches!(after, Ok(Err(_))),
        "the node should abort the association after the message"
    );
    assert!(tokio::net::TcpStream::connect(n.node.addr).await.is_err());
}

/// Every family of transfer syntax is stored as received: DCMTK re-encodes one source image
/// as Deflated, Big Endian, Implicit LE, JPEG Lossless, JPEG-LS and RLE, storescu sends each
/// in its own syntax, and the stored data set equals the file's byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transfer_syntax_family_is_stored_as_received() {
    let n = TestNode::start().await;
    let src = tempfile::tempdir().unwrap();
    // (converter, its flags, resulting syntax, the storescu flag that proposes it)
    let variants: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (
            "dcmconv",
            vec!["+td"],
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            "-xd",
        ),
        ("dcmconv", vec!["+tb"], "1.2.840.10008.1.2.2", "-xb"), // Explicit VR Big Endian (retired)
        (
            "dcmconv",
            vec!["+ti"],
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            "-xi",
        ),
        ("dcmcjpeg", vec!["+e1"], uids::JPEG_LOSSLESS_SV1, "-xs"),
        ("dcmcjpls", vec![], uids::JPEGLS_LOSSLESS, "-xt"),
        ("dcmcrle", vec![], uids::RLE_LOSSLESS, "-xr"),
    ];
    let mut sent = Vec::new();
    for (k, (tool, flags, ts, propose)) in variants.iter().enumerate() {
        let spec = Spec::ct(95, 1, k as u32 + 1, 64);
        let plain = src.path().join(format!("plain{k}.dcm"));
        spec.write(&plain).unwrap();
        let out_path = src.path().join(format!("v{k}.dcm"));
        let conv = dcmtk_convert(tool, flags, &plain, &out_path);
        assert!(conv.status.success(), "{tool}: {}", text(&conv));
        let meta = pacsd::tools::inspect(&out_path).unwrap();
        assert_eq!(&meta.transfer_syntax, ts, "{tool} {flags:?}");
        // storescu proposes that syntax (and must not convert: -v shows any conversion).
        let out = storescu_paths(n.port(), &["-v", propose], &[&out_path]).await;
        assert!(out.status.success(), "{ts}: {}", text(&out));
        assert!(
            text(&out).contains("Received Store Response (Success)"),
            "{ts}: {}",
            text(&out)
        );
        sent.push((spec, out_path, *ts));
    }
    for (spec, path, ts) in &sent {
        let inst = n
            .node
            .index
            .instance(&spec.sop_uid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{ts} not indexed"));
        assert_eq!(&inst.transfer_syntax_uid, ts);
        let stored = n.node.storage.get(&inst.storage_key).await.unwrap();
        let original = std::fs::read(path).unwrap();
        let (meta, so) = pacsd::part10::split(&stored).unwrap();
        let (_, oo) = pacsd::part10::split(&original).unwrap();
        assert_eq!(meta.transfer_syntax(), *ts);
        // A deflated stream of odd length travels with one NUL pad byte (PS3.5 A.5), which
        // is part of what was received.
        let (stored_ds, file_ds) = (&stored[so..], &original[oo..]);
        let padded = *ts == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
            && file_ds.len() % 2 == 1
            && stored_ds.len() == file_ds.len() + 1
            && stored_ds.last() == Some(&0);
        assert_eq!(
            if padded {
                &stored_ds[..file_ds.len()]
            } else {
                stored_ds
            },
            file_ds,
            "{ts}: data set not stored as received"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artim_and_idle_timeouts_close_silent_connections() {
    let n = TestNode::start_with(|c| {
        c.timeouts.artim_secs = 0.3;
        c.timeouts.idle_secs = 0.5;
    })
    .await;
    // TCP connect, then silence: closed after ARTIM.
    let mut raw = tokio::net::TcpStream::connect(n.node.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection should be closed after ARTIM: {r:?}"
    );

    // Established association, then silence: aborted after the idle time.
    let mut assoc = ct_association(&n.scu("IDLE")).await;
    let r = tokio::time::timeout(Duration::from_secs(3), assoc.read_command()).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "association should be aborted after idle_secs: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_limit_makes_the_next_client_wait() {
    let n = TestNode::start_with(|c| c.node.max_associations = 1).await;
    let first = ct_association(&n.scu("FIRST")).await;
    // The second connects at TCP level but is not negotiated while the first is open.
    let opts = n.scu("SECOND");
    let second = tokio::spawn(async move { ct_association(&opts).await });
    assert!(
        holds_for(Duration::from_millis(300), async || !second.is_finished()).await,
        "second association was served beyond the limit"
    );
    first.release().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the first ended")
        .unwrap();
    second.release().await.unwrap();
}
