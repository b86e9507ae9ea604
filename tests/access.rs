//! Access control that means something: an AE title is accepted only from its configured
//! hosts (unknown AEs from `[access].unknown_ae_hosts`, loopback by default), and a storage
//! context accepted for C-GET sub-operations does not let a peer without `store` store.

mod common;

use common::*;
use dicom_dictionary_std::uids;
use pacsd::config::{Peer, Service};
use pacsd::dimse::status;
use pacsd::net::scu::{Negotiation, ProposedContext, ScuAssociation};
use pacsd::synth::Spec;

const AC: Option<u8> = Some(0x02);
const RJ: Option<u8> = Some(0x03);

fn peer(ae: &str, host: &str, hosts: &[&str], services: &[Service]) -> Peer {
    Peer {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..Peer::new(ae, host, 104, services)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ae_title_is_accepted_only_from_its_hosts() {
    let n = TestNode::start_with(|c| {
        c.peers = vec![
            peer("WS1", "127.0.0.1", &[], &[Service::Echo, Service::Find]),
            peer(
                "WS2",
                "127.0.0.1",
                &["127.0.0.5", "127.0.1.0/24"],
                &[Service::Echo],
            ),
            peer("WS3", "localhost", &[], &[Service::Echo]),
        ];
        c.access.unknown_ae_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let to = n.node.addr;
    // A peer from its `host`, and its title from anywhere else.
    assert_eq!(associate_raw(to, [127, 0, 0, 1], "WS1", &[1]).await, AC);
    assert_eq!(associate_raw(to, [127, 0, 0, 2], "WS1", &[1]).await, RJ);
    // `hosts` replaces `host`: addresses and networks.
    assert_eq!(associate_raw(to, [127, 0, 0, 5], "WS2", &[1]).await, AC);
    assert_eq!(associate_raw(to, [127, 0, 1, 77], "WS2", &[1]).await, AC);
    assert_eq!(associate_raw(to, [127, 0, 0, 1], "WS2", &[1]).await, RJ);
    // A DNS name is resolved (localhost: /etc/hosts).
    assert_eq!(associate_raw(to, [127, 0, 0, 1], "WS3", &[1]).await, AC);
    assert_eq!(associate_raw(to, [127, 0, 0, 9], "WS3", &[1]).await, RJ);
    // Unknown AEs only from `unknown_ae_hosts`.
    assert_eq!(
        associate_raw(to, [127, 0, 0, 1], "STRANGER", &[1]).await,
        AC
    );
    assert_eq!(
        associate_raw(to, [127, 0, 0, 3], "STRANGER", &[1]).await,
        RJ
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_unknown_aes_are_accepted_from_loopback_only() {
    let n = TestNode::start().await;
    assert_eq!(
        n.config.access.unknown_ae_hosts,
        vec!["127.0.0.0/8".to_string(), "::1".to_string()]
    );
    // A fresh install takes a test image from DCMTK on the same machine.
    let dir = tempfile::tempdir().unwrap();
    small_corpus(dir.path(), 970, 1);
    let out = storescu_dir(n.port(), dir.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(n.instances().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_store_cannot_store_through_a_c_get_role_context() {
    let n = TestNode::start_with(|c| {
        c.peers = vec![peer(
            "GETTER",
            "127.0.0.1",
            &[],
            &[Service::Echo, Service::Find, Service::Get],
        )];
    })
    .await;
    let mut a = ScuAssociation::connect_with(
        &n.scu("GETTER"),
        &[
            ProposedContext {
                abstract_syntax: uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET.into(),
                transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
            },
            ProposedContext {
                abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
                transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
            },
        ],
        &Negotiation {
            extended: Vec::new(),
            scp_role_for: vec![uids::CT_IMAGE_STORAGE.into()],
        },
    )
    .await
    .unwrap();
    let ctx = a
        .contexts()
        .iter()
        .find(|c| c.abstract_syntax == uids::CT_IMAGE_STORAGE)
        .expect("storage context accepted for C-GET sub-operations")
        .id;
    let spec = Spec::ct(971, 1, 1, 8);
    let st = store_spec(&mut a, ctx, &spec).await;
    assert_eq!(st.code, status::NOT_AUTHORIZED, "{st:?}");
    a.release().await.unwrap();
    assert_eq!(n.instances().await, 0);
}
