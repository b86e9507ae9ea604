//! What a hostile or broken peer sends, reproduced against an in-process node: nesting bombs,
//! declared lengths beyond the bytes, a deflate bomb, never-ending data sets, empty P-DATA,
//! a connection flood and a slowloris, instance squatting, patient hijack and truncated
//! objects. Each test asserts the status or the abort, that the node still answers, that
//! memory stayed bounded and that what was acknowledged is intact.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use dicom_dictionary_std::uids;
use pacsd::config::{OnConflict, Peer, Service};
use pacsd::dimse::{Command, status};
use pacsd::net::scu::{ProposedContext, ScuAssociation};
use pacsd::synth::Spec;
use pacsd::synth::raw::{self, UNDEFINED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Peak resident memory of this test process (the node runs in it), in bytes.
fn peak_rss() -> u64 {
    peak_rss_of("self")
}

/// Bound on the whole test process's peak RSS: a 2 GiB allocation or three 300 MB data sets
/// held at once would pass it; the node's normal work here stays far below.
const RSS_BOUND: u64 = 768 * 1024 * 1024;

/// `levels` nested sequences of undefined length, in Explicit VR LE.
fn nested_explicit(levels: usize) -> Vec<u8> {
    raw::nested(levels, &[])
}

/// One P-DATA-TF PDU with one PDV (PS3.8 9.3.5).
fn pdata(context_id: u8, command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x04, 0x00];
    v.extend_from_slice(&((data.len() + 6) as u32).to_be_bytes());
    v.extend_from_slice(&((data.len() + 2) as u32).to_be_bytes());
    v.push(context_id);
    v.push(u8::from(command) | (u8::from(last) << 1));
    v.extend_from_slice(data);
    v
}

/// One P-DATA-TF PDU holding several PDVs, each (context, command, last, bytes).
fn pdata_pdvs(pdvs: &[(u8, bool, bool, &[u8])]) -> Vec<u8> {
    let mut items = Vec::new();
    for (context_id, command, last, data) in pdvs {
        items.extend_from_slice(&((data.len() + 2) as u32).to_be_bytes());
        items.push(*context_id);
        items.push(u8::from(*command) | (u8::from(*last) << 1));
        items.extend_from_slice(data);
    }
    let mut v = vec![0x04, 0x00];
    v.extend_from_slice(&(items.len() as u32).to_be_bytes());
    v.extend(items);
    v
}

async fn echo_association(n: &TestNode, calling: &str) -> ScuAssociation {
    ScuAssociation::connect(
        &n.scu(calling),
        &[ProposedContext {
            abstract_syntax: uids::VERIFICATION.into(),
            transfer_syntaxes: vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.into()],
        }],
    )
    .await
    .expect("association")
}

/// A C-STORE refused with `code` and an ErrorComment containing `says`, after which nothing is
/// stored, the node still answers and memory stayed bounded.
async fn refused_and_unharmed(n: &TestNode, st: pacsd::dimse::Status, code: u16, says: &str) {
    assert_eq!(st.code, code, "{st:?}");
    let comment = st.comment.unwrap_or_default();
    assert!(comment.contains(says), "{comment}");
    assert_eq!(n.instances().await, 0);
    still_serves(n).await;
    assert!(peak_rss() < RSS_BOUND, "peak RSS {}", peak_rss());
}

/// The node answers a C-ECHO from a fresh association.
async fn still_serves(n: &TestNode) {
    let mut a = echo_association(n, "STILLUP").await;
    assert!(a.echo().await.unwrap().is_success());
    a.release().await.unwrap();
}

/// Send a C-STORE whose data set is `data` (already encoded) and return its status.
async fn store_raw(n: &TestNode, spec: &Spec, data: &[u8]) -> pacsd::dimse::Status {
    let mut a = ct_association(&n.scu("HOSTILE")).await;
    let ctx = a.contexts()[0].id;
    let st = store_data(&mut a, ctx, spec, data).await;
    let _ = a.release().await;
    st
}

const HTTP_PASSWORD: &str = "a long test password";

/// Bytes of the receive budget held now, as `/metrics` says (account `ops`).
async fn received_budget_held(n: &TestNode) -> u64 {
    let text = n.metrics("ops", HTTP_PASSWORD).await;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("pacsd_receive_budget_held_bytes "))
        .unwrap_or_else(|| panic!("no receive budget gauge in {text}"));
    line.parse::<f64>().unwrap() as u64
}

/// PS3.8 9.3.5 lets one P-DATA-TF PDU carry PDVs of more than one message: every message in
/// it is answered, none is lost behind the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_in_one_pdu_are_both_answered() {
    let n = TestNode::start().await;
    let mut a = echo_association(&n, "PACKED").await;
    let ctx = a.contexts()[0].id;
    let (first, second) = (
        pacsd::dimse::Command::echo_rq(7).encode().unwrap(),
        pacsd::dimse::Command::echo_rq(8).encode().unwrap(),
    );
    a.send_raw(&pdata_pdvs(&[
        (ctx, true, true, &first),
        (ctx, true, true, &second),
    ]))
    .await
    .unwrap();
    for id in [7, 8] {
        let rsp = tokio::time::timeout(Duration::from_secs(10), a.read_command())
            .await
            .expect("a response to each C-ECHO")
            .unwrap();
        assert_eq!(rsp.message_id_being_responded_to, Some(id), "{rsp:?}");
        assert_eq!(rsp.status, Some(0));
    }
    a.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_command_set_is_aborted_and_the_node_keeps_serving() {
    let n = TestNode::start().await;
    // About 64 KiB of command set: 2,000 nested sequences (the remote crash on main).
    let mut cmd = Vec::new();
    for _ in 0..2000 {
        cmd.extend_from_slice(&0x0000u16.to_le_bytes());
        cmd.extend_from_slice(&0x0902u16.to_le_bytes());
        cmd.extend_from_slice(&UNDEFINED.to_le_bytes());
        cmd.extend(raw::marker(0xE000, UNDEFINED));
    }
    let mut a = echo_association(&n, "NESTER").await;
    let ctx = a.contexts()[0].id;
    a.send_raw(&pdata(ctx, true, true, &cmd)).await.unwrap();
    // A malformed command set has no message ID to answer: the node aborts (PS3.8 7.3).
    let r = tokio::time::timeout(Duration::from_secs(10), a.read_command()).await;
    assert!(matches!(r, Ok(Err(_))), "expected an abort, got {r:?}");
    still_serves(&n).await;
    assert!(peak_rss() < RSS_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_data_set_is_refused_with_a_failure_status() {
    let n = TestNode::start().await;
    let spec = Spec::ct(900, 1, 1, 8);
    let mut data = encode(&spec);
    data.extend(nested_explicit(1700));
    let st = store_raw(&n, &spec, &data).await;
    assert_eq!(st.code, status::UNABLE_TO_PROCESS, "{st:?}");
    assert!(st.comment.unwrap().contains("nested over 64 deep"));
    // 64 levels is within the limit: stored.
    let ok = Spec::ct(900, 1, 2, 8);
    let mut data = encode(&ok);
    data.extend(nested_explicit(64));
    assert!(store_raw(&n, &ok, &data).await.is_success());
    assert_eq!(n.instances().await, 1);
    still_serves(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_beyond_the_bytes_cost_no_memory() {
    let n = TestNode::start().await;
    // A 92-byte command set declaring a 2 GiB element, four times in parallel.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let opts = n.scu(&format!("LIAR{i}"));
        tasks.push(tokio::spawn(async move {
            let mut a = ScuAssociation::connect(
                &opts,
                &[ProposedContext {
                    abstract_syntax: uids::VERIFICATION.into(),
                    transfer_syntaxes: vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.into()],
                }],
            )
            .await
            .unwrap();
            let ctx = a.contexts()[0].id;
            let mut cmd = Command::echo_rq(1).encode().unwrap();
            cmd.extend_from_slice(&0x0000u16.to_le_bytes());
            cmd.extend_from_slice(&0x0902u16.to_le_bytes());
            cmd.extend_from_slice(&0x8000_0000u32.to_le_bytes());
            cmd.extend_from_slice(b"xxxx");
            a.send_raw(&pdata(ctx, true, true, &cmd)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), a.read_command()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(matches!(r, Ok(Err(_))), "expected an abort, got {r:?}");
    }
    // A C-STORE data set of about 300 bytes declaring 2 GiB.
    let spec = Spec::ct(901, 1, 1, 0);
    let mut data = encode(&spec);
    data.extend(raw::long((0x7FE1, 0x1010), b"OB", 0x8000_0000, &[0; 4]));
    let st = store_raw(&n, &spec, &data).await;
    refused_and_unharmed(
        &n,
        st,
        status::UNABLE_TO_PROCESS,
        "declares 2147483648 bytes, 4 left",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_object_is_refused_not_acknowledged() {
    let n = TestNode::start().await;
    let spec = Spec::ct(902, 1, 1, 64);
    let full = encode(&spec);
    // Cut inside Pixel Data (the header before it is complete), and inside the header.
    for cut in [full.len() * 2 / 3, full.len() - 1, 200] {
        let st = store_raw(&n, &spec, &full[..cut]).await;
        assert_eq!(st.code, status::UNABLE_TO_PROCESS, "cut at {cut}: {st:?}");
    }
    assert_eq!(n.instances().await, 0);
    for i in 0..3 {
        assert!(n.files_in_replica(i).is_empty());
    }
    assert!(store_raw(&n, &spec, &full).await.is_success());
    assert_eq!(n.instances().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_is_refused() {
    use std::io::Write;
    let n = TestNode::start_with(|c| {
        c.node.max_object_size = 16 * 1024 * 1024;
        c.node.receive_budget = 32 * 1024 * 1024;
    })
    .await;
    let spec = Spec::ct(903, 1, 1, 0);
    // Header, then 256 MiB of zeros as a private OB: about 256 KB once deflated.
    let mut deflate =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(&encode(&spec)).unwrap();
    deflate
        .write_all(&raw::long((0x0009, 0x1010), b"OB", 256 << 20, &[]))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        deflate.write_all(&zeros).unwrap();
    }
    let bomb = deflate.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let mut a = ScuAssociation::connect(
        &n.scu("BOMBER"),
        &[ProposedContext {
            abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
            transfer_syntaxes: vec![uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.into()],
        }],
    )
    .await
    .unwrap();
    let ctx = a.contexts()[0].id;
    let st = store_data(&mut a, ctx, &spec, &bomb).await;
    refused_and_unharmed(
        &n,
        st,
        status::UNABLE_TO_PROCESS,
        "inflates to over 16777216 bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sets_that_never_end_are_bounded_by_the_receive_budget() {
    let n = TestNode::start_with(|c| {
        c.node.max_object_size = 4 * 1024 * 1024;
        c.node.receive_budget = 8 * 1024 * 1024;
    })
    .await;
    let chunk = vec![0u8; 3_500_000];
    // Two associations start data sets of 3.5 MB each and never finish them.
    let mut hogs = Vec::new();
    for i in 0..2 {
        let mut a = ct_association(&n.scu(&format!("HOG{i}"))).await;
        let ctx = a.contexts()[0].id;
        let spec = Spec::ct(904, 1, 10 + i, 0);
        a.send_message(
            ctx,
            &Command::store_rq(1, &spec.sop_class, &spec.sop_uid),
            None,
        )
        .await
        .unwrap();
        // In PDUs within the node's receive size (256 KiB), none of them the last.
        for piece in chunk.chunks(200_000) {
            a.send_raw(&pdata(ctx, false, false, piece)).await.unwrap();
        }
        hogs.push(a);
    }
    // Wait until the node holds both data sets (/metrics says how much of the budget is held;
    // a probe sent earlier could take budget a hog's next PDU needs and get the hog dropped).
    // Then at most 1.4 MB of the 8 MiB is free, and a 2 MiB data set is refused with A700.
    n.add_accounts(&[("ops", HTTP_PASSWORD, "admin")]).await;
    let held = async || received_budget_held(&n).await >= 2 * chunk.len() as u64;
    assert!(
        eventually(Duration::from_secs(60), held).await,
        "the hogs' bytes never arrived: {} held",
        received_budget_held(&n).await
    );
    let big = Spec::ct(904, 2, 1, 1024); // 2 MiB of pixels
    let refused = store_raw(&n, &big, &encode(&big)).await;
    assert_eq!(refused.code, status::OUT_OF_RESOURCES, "{refused:?}");
    assert!(refused.comment.unwrap().contains("retry later"));
    // The hogs go away: their share comes back and the same object is stored.
    for a in hogs {
        a.abort().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = store_raw(&n, &big, &encode(&big)).await;
        if st.is_success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "budget never came back: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak_rss() < RSS_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pdata_does_not_keep_an_association_open() {
    let n = TestNode::start_with(|c| c.timeouts.idle_secs = 0.5).await;
    let mut a = echo_association(&n, "EMPTY").await;
    let ctx = a.contexts()[0].id;
    // An empty PDV every 100 ms for up to 5 s: the node must abort after about 0.5 s.
    let mut aborted = false;
    for _ in 0..50 {
        if a.send_raw(&pdata(ctx, false, false, &[])).await.is_err() {
            aborted = true;
            break;
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), a.read_command()).await {
            assert!(r.is_err(), "unexpected message {r:?}");
            aborted = true;
            break;
        }
    }
    assert!(aborted, "empty P-DATA kept the association open for 5 s");
    still_serves(&n).await;
}

/// A TCP connection to the node from a given loopback address.
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))?;
    s.connect(to).await
}

/// The first 20 bytes of a valid A-ASSOCIATE-RQ to PACSD (the rest is never sent).
fn associate_rq_start() -> Vec<u8> {
    let mut v = vec![0x01, 0x00, 0x00, 0x00, 0x00, 0xCD, 0x00, 0x01, 0x00, 0x00];
    v.extend_from_slice(b"PACSD     ");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_and_a_slowloris_do_not_keep_a_legitimate_echo_out() {
    let n = TestNode::start().await;
    let addr = n.node.addr;
    // 200 idle connections from one address, 200 more spread over ten addresses, and 70
    // requests dripped a byte every 200 ms from another.
    let mut held = Vec::new();
    for i in 0..200 {
        if let Ok(s) = connect_from([127, 0, 0, 2], addr).await {
            held.push(s);
        }
        let _ = i;
    }
    for i in 0..200u8 {
        if let Ok(s) = connect_from([127, 0, 1, 10 + i % 10], addr).await {
            held.push(s);
        }
    }
    let mut drips = Vec::new();
    for _ in 0..70 {
        if let Ok(s) = connect_from([127, 0, 0, 3], addr).await {
            drips.push(s);
        }
    }
    let drip = tokio::spawn(async move {
        let rq = associate_rq_start();
        for byte in rq {
            for s in drips.iter_mut() {
                let _ = s.write_all(&[byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drips
    });
    // The legitimate C-ECHO: answered well before the flood's ARTIM (30 s) would free slots.
    let echo = tokio::time::timeout(Duration::from_secs(10), async {
        let mut a = echo_association(&n, "LEGIT").await;
        let st = a.echo().await.unwrap();
        a.release().await.unwrap();
        st
    })
    .await
    .expect("a legitimate C-ECHO was kept out by the flood");
    assert!(echo.is_success());
    // DCMTK's echoscu too.
    let out = echo_node(n.port()).await;
    assert!(out.status.success(), "{}", text(&out));
    // The connections from one address beyond its limit were closed at once.
    let mut closed = 0;
    for s in held.iter_mut().take(200) {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 200 - 32,
        "only {closed} of 200 connections from one address were closed"
    );
    drip.abort();
    assert!(peak_rss() < RSS_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_resend_is_refused_and_the_first_version_kept() {
    let n = TestNode::start_with(|c| {
        c.peers = vec![Peer {
            on_conflict: Some(OnConflict::Keep),
            ..Peer::new("ROUTER", "127.0.0.1", 104, &[Service::Echo, Service::Store])
        }];
    })
    .await;
    let first = Spec::ct(905, 1, 1, 8);
    let mut second = first.clone();
    second.patient_name = "SQUATTER^EVE".into();
    assert!(store_raw(&n, &first, &encode(&first)).await.is_success());
    let stored = n.stored(&first.sop_uid).await;
    // Different bytes under the same SOP Instance UID: refused, named, the first kept.
    let st = store_raw(&n, &second, &encode(&second)).await;
    assert_eq!(st.code, status::DUPLICATE_SOP_INSTANCE, "{st:?}");
    let comment = st.comment.unwrap();
    assert!(comment.contains("different content"), "{comment}");
    // The same bytes again: idempotent Success.
    assert!(store_raw(&n, &first, &encode(&first)).await.is_success());
    // A peer whose policy is `keep` gets Success; the stored version still does not change.
    let mut a = ct_association(&n.scu("ROUTER")).await;
    let ctx = a.contexts()[0].id;
    let st = store_spec(&mut a, ctx, &second).await;
    assert!(st.is_success(), "{st:?}");
    a.release().await.unwrap();
    let after = n.stored(&first.sop_uid).await;
    assert_eq!(after.digest, stored.digest);
    assert_eq!(n.instances().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_naming_another_patient_is_not_merged_into_the_study() {
    let n = TestNode::start().await;
    let victim = Spec::ct(906, 1, 1, 8);
    assert!(store_raw(&n, &victim, &encode(&victim)).await.is_success());
    let mut hijack = Spec::ct(906, 1, 2, 8);
    hijack.patient_id = "OTHER-PATIENT".into();
    let st = store_raw(&n, &hijack, &encode(&hijack)).await;
    assert_eq!(st.code, status::PATIENT_CONFLICT, "{st:?}");
    assert!(st.comment.unwrap().contains("OTHER-PATIENT"));
    assert_eq!(n.instances().await, 1);
    // Nothing of it stays in storage (written, then removed when the index refused it).
    for i in 0..3 {
        let files = n.files_in_replica(i);
        assert_eq!(files.len(), 1, "{files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_association_requests_are_answered_as_ps3_8_says() {
    let n = TestNode::start().await;
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "GOOD", &[1, 3]).await,
        Some(0x02)
    );
    // Presentation context IDs must be odd and unique (PS3.8 9.3.2.2): A-ABORT.
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "EVEN", &[2]).await,
        Some(0x07)
    );
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "ZERO", &[1, 0]).await,
        Some(0x07)
    );
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "TWICE", &[1, 3, 1]).await,
        Some(0x07)
    );
    let many: Vec<u8> = (1..=255u8).step_by(2).chain([5]).collect();
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "MANY", &many).await,
        Some(0x07)
    );
    // A calling AE title with control bytes: rejected (calling AE not recognized).
    assert_eq!(
        associate_raw(n.node.addr, [127, 0, 0, 1], "EVIL\u{1b}[2J", &[1]).await,
        Some(0x03)
    );
    still_serves(&n).await;
}
