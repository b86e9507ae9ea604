//! The OHIF viewer (npm's @ohif/app prebuilt dist/, installed by scripts/ohif.sh at test
//! time) in headless Chromium (Debian's package, driven by playwright-core) opens a study
//! from pacsd over DICOMweb, on another origin (CORS) with a bearer token, and draws it.

mod common;

use std::process::Command;

use common::*;
use pacsd::index::account::Rights;
use pacsd::synth::Spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ohif_opens_a_study_from_pacsd_and_draws_it() {
    let ohif_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let n = TestNode::start_with(|c| {
        c.preview.enabled = true;
        c.http.allowed_origins = vec![format!("http://127.0.0.1:{ohif_port}")];
    })
    .await;
    n.node
        .index
        .add_account(
            "radiologist",
            "a long test password",
            Rights::parse("read").unwrap(),
        )
        .await
        .unwrap();
    let token = n
        .node
        .index
        .issue_token("radiologist", "ohif")
        .await
        .unwrap();
    // One study of two series of 10 images of 256x256.
    let mut specs = Vec::new();
    for series in 1..=2 {
        for i in 1..=10 {
            specs.push(Spec::ct(990, series, i, 256));
        }
    }
    store_specs(&n.scu("MODALITY"), &specs).await;

    let ohif_dir = browser_kit();
    let base = format!(
        "http://127.0.0.1:{}/dicom-web",
        n.node.http_addr.unwrap().port()
    );
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/ohif_check.mjs");
    let study = specs[0].study_uid.clone();
    let mut cmd = Command::new("node");
    cmd.args([
        check,
        &ohif_dir,
        &ohif_port.to_string(),
        &base,
        &study,
        &token,
        "90000",
    ]);
    let seen = json_of(cmd).await;
    // Drawn: a viewport canvas with many lit pixels in more than 16 grey levels.
    assert!(seen["firstImageMs"].is_u64(), "no image drawn: {seen}");
    assert!(seen["greyLevels"].as_u64().unwrap() > 16, "{seen}");
    // Every request OHIF made to pacsd succeeded (QIDO, metadata, frames, thumbnails).
    assert_eq!(seen["failures"], serde_json::json!([]), "{seen}");
    assert!(seen["requests"].as_u64().unwrap() >= 3, "{seen}");
    n.node.stop().await;
}
