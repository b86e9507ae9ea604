//! Conformant clients other than DCMTK: pynetdicom (PyPI) drives C-ECHO, C-GET with SCP/SCU
//! role selection and a relational C-FIND against the node (tests/py/pynetdicom_interop.py).

mod common;

use std::process::Command;

use common::*;
use pacsd::config::Service;
use pacsd::synth::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pynetdicom_gets_a_study_and_agrees_a_relational_find() {
    let n = TestNode::start_with(|c| {
        c.peers = vec![loopback_peer(
            "PYNET",
            104,
            &[Service::Echo, Service::Find, Service::Get],
        )];
    })
    .await;
    let specs: Vec<Spec> = (1..=3).map(|i| Spec::ct(950, 1, i, 16)).collect();
    store_specs(&n.scu("MODALITY"), &specs).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/pynetdicom_interop.py"
    );
    let (port, study, sop) = (
        n.port().to_string(),
        specs[0].study_uid.clone(),
        specs[1].sop_uid.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &port, &study, &sop])
            .output()
            .expect("python3 with pynetdicom (pip install pynetdicom)")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));

    assert_eq!(seen["echo_status"], 0, "{seen}");
    // C-GET: the role selection reply is in the AC and every instance arrives.
    assert_eq!(seen["get_role_reply"], true, "{seen}");
    assert_eq!(seen["get_status"], 0, "{seen}");
    let mut expected: Vec<String> = specs.iter().map(|s| s.sop_uid.clone()).collect();
    expected.sort();
    assert_eq!(seen["get_received"], serde_json::json!(expected), "{seen}");
    // Relational C-FIND: agreed in the AC, and the IMAGE-level query by SOP Instance UID
    // alone finds its study.
    assert_eq!(seen["find_relational_agreed"], true, "{seen}");
    assert_eq!(seen["find_status"], 0, "{seen}");
    assert_eq!(
        seen["find_matches"],
        serde_json::json!([specs[0].study_uid.clone()]),
        "{seen}"
    );
}
