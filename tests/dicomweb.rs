//! DICOMweb end to end: the dicomweb-client package (PyPI) drives STOW, QIDO and WADO-RS;
//! QIDO-RS and DCMTK's findscu answer the same queries alike on one corpus; bad requests get
//! their HTTP status and leave nothing half-stored; accounts, tokens and CORS.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use pacsd::synth::Spec;

const PASSWORD: &str = "a long test password";

/// A node with HTTP on, and accounts `admin` (all rights) and `viewer` (read).
async fn web_node(tweak: impl FnOnce(&mut pacsd::config::Config)) -> (TestNode, String) {
    let accounts = [
        ("pacs-admin", PASSWORD, "admin"),
        ("viewer", PASSWORD, "read"),
    ];
    let with_previews = |c: &mut pacsd::config::Config| {
        c.preview.enabled = true;
        tweak(c)
    };
    TestNode::start_web(with_previews, &accounts).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicomweb_client_drives_stow_qido_and_wado() {
    let (n, base) = web_node(|_| {}).await;
    // Two studies of two series (CT and MR), and one JPEG 2000 instance.
    let mut specs = Vec::new();
    for study in [951, 952] {
        for series in [1, 2] {
            for i in 1..=3 {
                let mut s = Spec::ct(study, series, i, 32);
                if series == 2 {
                    s.modality = "MR".into();
                }
                specs.push(s);
            }
        }
    }
    store_specs(&n.scu("MODALITY"), &specs).await;
    let j2k_spec = Spec::ct(953, 1, 1, 64);
    let j2k_dir = n.dir.path().join("j2k");
    std::fs::create_dir_all(&j2k_dir).unwrap();
    let j2k = j2k_object(&j2k_spec, &j2k_dir);
    let sent = storescu_paths(n.port(), &["-xv"], &[&j2k]).await;
    assert!(sent.status.success(), "{}", text(&sent));
    let new = Spec::ct(954, 1, 1, 32);
    let new_file = n.dir.path().join("new.dcm");
    part10_file(&new, &new_file);
    let token = n
        .node
        .index
        .issue_token("pacs-admin", "test")
        .await
        .unwrap();

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/dicomweb_client_check.py"
    );
    let args: Vec<String> = vec![
        base.clone(),
        "pacs-admin".into(),
        PASSWORD.into(),
        token,
        specs[0].study_uid.clone(),
        specs[0].series_uid.clone(),
        j2k_spec.study_uid.clone(),
        j2k_spec.series_uid.clone(),
        j2k_spec.sop_uid.clone(),
        new_file.display().to_string(),
    ];
    // python3 with dicomweb-client (pip install dicomweb-client)
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(&args);
    let seen = json_of(cmd).await;
    let s = |k: &str| seen[k].clone();
    use serde_json::json as j;

    let mut studies = vec![
        specs[0].study_uid.clone(),
        specs[6].study_uid.clone(),
        j2k_spec.study_uid.clone(),
    ];
    studies.sort();
    assert_eq!(s("studies"), j!(studies), "{seen}");
    // Synthetic^Patient00951, 00952 and 00953.
    assert_eq!(s("study_search_by_patient_wildcard"), j!(studies), "{seen}");
    // Paging counts studies: two pages of one, different studies.
    assert_eq!(s("page_1").as_array().unwrap().len(), 1, "{seen}");
    assert_ne!(s("page_1"), s("page_2"), "{seen}");
    assert_eq!(
        s("includefield_description"),
        j!(specs[0].study_description)
    );
    assert_eq!(
        s("series_of_study"),
        j!([specs[0].series_uid, specs[3].series_uid])
    );
    assert_eq!(s("instances_of_series"), j!(3));
    assert_eq!(s("all_instances_of_study"), j!(6));
    assert_eq!(
        s("modalities"),
        j!(["CT", "MR"]),
        "multi-valued, not CT\\MR"
    );
    assert_eq!(s("series_count_is_number"), j!(true));

    assert_eq!(s("retrieved_syntax"), j!("1.2.840.10008.1.2.1"));
    // Asked for Explicit VR Little Endian, the J2K object is decoded.
    assert_eq!(s("j2k_default_syntax"), j!("1.2.840.10008.1.2.1"));
    assert_eq!(s("j2k_default_pixels"), j!(64 * 64 * 2));
    assert_eq!(s("j2k_as_stored_syntax"), j!("1.2.840.10008.1.2.4.90"));
    assert_eq!(s("series_retrieved"), j!(3));

    assert_eq!(s("metadata_instances"), j!(3));
    assert_eq!(s("metadata_rows"), j!(32));
    assert_eq!(s("bulk_uri_is_absolute"), j!(true), "{seen}");
    assert_eq!(s("bulk_bytes"), j!(32 * 32 * 2));
    assert_eq!(s("study_metadata_instances"), j!(6));

    assert_eq!(s("native_frame_bytes"), j!(32 * 32 * 2));
    // A JPEG 2000 codestream starts with SOC and SIZ markers.
    assert_eq!(s("j2k_frame_is_codestream"), j!("ff4fff51"));
    assert_eq!(s("j2k_frame_decoded_bytes"), j!(64 * 64 * 2));

    assert_eq!(s("rendered_jpeg"), j!("ffd8"));
    assert_eq!(s("rendered_png"), j!("89504e47"));
    assert_eq!(s("series_rendered"), j!("ffd8"));
    assert_eq!(s("frame_rendered_png"), j!("89504e47"));
    assert_eq!(s("thumbnail"), j!([200, "image/jpeg", "ffd8"]), "{seen}");

    assert_eq!(s("stow_referenced"), j!([new.sop_uid]), "{seen}");
    assert_eq!(s("stow_failed"), j!(0));
    assert_eq!(s("stowed_found"), j!(1));
    assert_eq!(s("stowed_pixels_equal"), j!(true));
    // Bulk data inside a sequence: the icon image's pixels, by their own BulkDataURI.
    let icon_uri = s("icon_bulk_uri");
    assert!(
        icon_uri
            .as_str()
            .unwrap()
            .ends_with("/bulkdata/00880200/1/7FE00010"),
        "{seen}"
    );
    assert_eq!(s("icon_bulk_equal"), j!(true), "{seen}");
    // The audit trail names the account for searches, reads and the STOW.
    let audit = std::fs::read_to_string(n.dir.path().join("audit.log")).unwrap();
    let by_admin = |code: &str, action: &str| {
        audit.lines().any(|l| {
            l.contains(code)
                && l.contains(&format!("EventActionCode=\"{action}\""))
                && l.contains("pacs-admin")
        })
    };
    assert!(by_admin("110112", "E"), "QIDO-RS query recorded");
    assert!(by_admin("110104", "R"), "WADO-RS read recorded");
    assert!(by_admin("110104", "C"), "STOW-RS recorded");
    // STOW-RS stored under the C-STORE contract: indexed, on every replica.
    assert_eq!(
        n.instances().await,
        12 + 1 + 1 + 1,
        "with the one with an icon"
    );
    let stored = n.stored(&new.sop_uid).await;
    for i in 0..3 {
        assert!(
            n.node.storage.exists_on(i, &stored.storage_key).await,
            "replica {i}"
        );
    }
    n.node.stop().await;
}

/// The SOP/Study/Series UIDs findscu reports for a query (hierarchical Study Root).
/// QIDO-RS and WADO-RS metadata as PS3.19 XML: checked by tests/py/xml_check.py against
/// DCMTK's `dcm2xml --native-format` of the stored file, attribute by attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_qido_as_native_dicom_xml_agree_with_dcmtk_dcm2xml() {
    let (n, base) = web_node(|_| {}).await;
    let mut spec = Spec::ct(961, 1, 1, 32);
    spec.study_description = "Chest & abdomen <contrast>".into();
    spec.referring_physician = "Smith^Anna^Maria^Dr^PhD".into();
    let file = n.dir.path().join("xml.dcm");
    part10_file(&spec, &file);
    let sent = storescu_paths(n.port(), &[], &[&file]).await;
    assert!(sent.status.success(), "{}", text(&sent));
    let metadata = format!(
        "{base}/studies/{}/series/{}/instances/{}/metadata",
        spec.study_uid, spec.series_uid, spec.sop_uid
    );
    let qido = format!("{base}/studies?StudyInstanceUID={}", spec.study_uid);
    let stowed = Spec::ct(962, 1, 1, 32);
    let stow_file = n.dir.path().join("stow-xml.dcm");
    part10_file(&stowed, &stow_file);
    let stow = format!("{base}/studies");
    let other_study = format!("{base}/studies/{}", spec.study_uid);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/xml_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([&metadata, &qido])
        .arg(&file)
        .args(["viewer", PASSWORD, &stow, &other_study])
        .arg(&stow_file)
        .arg("pacs-admin");
    let seen = json_of(cmd).await;
    let s = |k: &str| seen[k].clone();
    use serde_json::json as j;
    assert_eq!(s("metadata_status"), j!(200), "{seen}");
    assert!(
        s("metadata_type")
            .as_str()
            .unwrap()
            .starts_with("multipart/related; type=\"application/dicom+xml\"; boundary="),
        "{seen}"
    );
    assert_eq!(s("metadata_parts"), j!(1), "{seen}");
    assert_eq!(
        s("metadata_part_types"),
        j!(["application/dicom+xml"]),
        "{seen}"
    );
    assert_eq!(
        s("diffs"),
        j!([]),
        "every attribute as dcm2xml writes it: {seen}"
    );
    assert!(s("attributes_ours").as_u64().unwrap() >= 20, "{seen}");
    assert!(
        s("pixel_data_bulk_uri")
            .as_str()
            .unwrap()
            .starts_with(&metadata.replace("/metadata", "/bulkdata/")),
        "{seen}"
    );
    assert_eq!(s("qido_status"), j!(200), "{seen}");
    assert_eq!(s("qido_parts"), j!(1), "{seen}");
    assert_eq!(s("qido_study_uid"), j!(spec.study_uid), "{seen}");
    assert_eq!(s("qido_patient_name"), j!(spec.patient_name), "{seen}");
    assert_eq!(s("qido_instances"), j!(1.0), "{seen}");
    let xml_type = |k: &str| {
        s(k).as_str()
            .unwrap()
            .starts_with("multipart/related; type=\"application/dicom+xml\"")
    };
    assert!(xml_type("qido_bare_xml_type"), "{seen}");
    assert!(xml_type("qido_xml_preferred_type"), "{seen}");
    assert_eq!(
        s("qido_json_preferred_type"),
        j!("application/dicom+json"),
        "{seen}"
    );
    assert_eq!(s("qido_html_status"), j!(406), "{seen}");

    // STOW-RS answers in DICOM XML when asked: the stored instance with its RetrieveURL,
    // then the same instance sent to another study refused with A900 (43264).
    let retrieve = format!(
        "{base}/studies/{}/series/{}/instances/{}",
        stowed.study_uid, stowed.series_uid, stowed.sop_uid
    );
    assert_eq!(
        s("stow_stored"),
        j!({"status": 200, "type": "application/dicom+xml", "root": "NativeDicomModel",
            "referenced": [{"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                            "ReferencedSOPInstanceUID": stowed.sop_uid,
                            "RetrieveURL": retrieve}],
            "failed": []}),
        "{seen}"
    );
    let refused = &seen["stow_refused"];
    assert_eq!(refused["status"], 409, "{seen}");
    assert_eq!(refused["referenced"], j!([]), "{seen}");
    assert_eq!(refused["failed"][0]["FailureReason"], "43264", "{seen}");
    assert_eq!(
        refused["failed"][0]["ReferencedSOPInstanceUID"],
        j!(stowed.sop_uid),
        "{seen}"
    );
    assert_eq!(n.instances().await, 2);
}

fn findscu_uids(port: u16, level: &str, keys: &[(&str, &str)], unique: &str) -> BTreeSet<String> {
    let mut args: Vec<String> = vec![
        "-v".into(),
        "-S".into(),
        "-k".into(),
        format!("QueryRetrieveLevel={level}"),
    ];
    for (k, v) in keys {
        args.push("-k".into());
        args.push(format!("{k}={v}"));
    }
    if !keys.iter().any(|(k, _)| *k == unique) {
        args.push("-k".into());
        args.push(unique.to_string());
    }
    args.extend([
        "-aec".into(),
        "PACSD".into(),
        "127.0.0.1".into(),
        port.to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dcmtk("findscu", &refs);
    let all = text(&out);
    let tag = match unique {
        "StudyInstanceUID" => "(0020,000d)",
        "SeriesInstanceUID" => "(0020,000e)",
        _ => "(0008,0018)",
    };
    all.split("Find Response")
        .skip(1)
        .filter_map(|chunk| {
            chunk.lines().find(|l| l.contains(tag)).and_then(|l| {
                Some(
                    l[l.find('[')? + 1..l.rfind(']')?]
                        .trim_end_matches('\0')
                        .to_string(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qido_rs_and_c_find_give_the_same_answers() {
    let (n, base) = web_node(|c| {
        use pacsd::config::{Peer, Service};
        c.peers = vec![Peer::new("FINDSCU", "127.0.0.1", 104, &[Service::Find])];
    })
    .await;
    let mut specs = Vec::new();
    for study in 961..=966 {
        for series in 1..=2 {
            for i in 1..=2 {
                let mut s = Spec::ct(study, series, i, 0);
                if series == 2 && study % 2 == 0 {
                    s.modality = "MR".into();
                }
                specs.push(s);
            }
        }
    }
    store_specs(&n.scu("MODALITY"), &specs).await;
    let (st, se) = (specs[4].study_uid.clone(), specs[4].series_uid.clone());
    let list = format!("{}\\{}", specs[0].study_uid, specs[8].study_uid);
    let date = specs[12].study_date.clone();
    // (level, findscu keys, unique key, the QIDO-RS request)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, String);
    let cases: Vec<Case> = vec![
        (
            "STUDY",
            vec![("PatientName", "Synthetic^Patient0096*".into())],
            "StudyInstanceUID",
            "/studies?PatientName=Synthetic%5EPatient0096*".into(),
        ),
        (
            "STUDY",
            vec![("PatientName", "synthetic^patient00962".into())],
            "StudyInstanceUID",
            "/studies?PatientName=synthetic%5Epatient00962".into(),
        ),
        (
            "STUDY",
            vec![("PatientID", "PAT0096?".into())],
            "StudyInstanceUID",
            "/studies?PatientID=PAT0096%3F".into(),
        ),
        (
            "STUDY",
            vec![("ModalitiesInStudy", "MR".into())],
            "StudyInstanceUID",
            "/studies?ModalitiesInStudy=MR".into(),
        ),
        (
            "STUDY",
            vec![("StudyDate", format!("{date}-"))],
            "StudyInstanceUID",
            format!("/studies?StudyDate={date}-"),
        ),
        (
            "STUDY",
            vec![("StudyDate", format!("-{date}"))],
            "StudyInstanceUID",
            format!("/studies?00080020=-{date}"),
        ),
        (
            "STUDY",
            vec![("StudyInstanceUID", list.clone())],
            "StudyInstanceUID",
            format!("/studies?StudyInstanceUID={}", list.replace('\\', ",")),
        ),
        (
            "STUDY",
            vec![("AccessionNumber", "ACC0096[1]".into())],
            "StudyInstanceUID",
            "/studies?AccessionNumber=ACC0096%5B1%5D".into(),
        ),
        (
            "SERIES",
            vec![("StudyInstanceUID", st.clone()), ("Modality", "CT".into())],
            "SeriesInstanceUID",
            format!("/studies/{st}/series?Modality=CT"),
        ),
        (
            "IMAGE",
            vec![
                ("StudyInstanceUID", st.clone()),
                ("SeriesInstanceUID", se.clone()),
                ("InstanceNumber", "2".into()),
            ],
            "SOPInstanceUID",
            format!("/studies/{st}/series/{se}/instances?InstanceNumber=2"),
        ),
    ];
    let http = client();
    for (level, keys, unique, path) in cases {
        let port = n.port();
        let keys2 = keys.clone();
        let dimse = tokio::task::spawn_blocking(move || {
            let k: Vec<(&str, &str)> = keys2.iter().map(|(a, b)| (*a, b.as_str())).collect();
            findscu_uids(port, level, &k, unique)
        })
        .await
        .unwrap();
        let rsp = http
            .get(format!("{base}{path}"))
            .basic_auth("viewer", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let qido: BTreeSet<String> = if status == 204 {
            BTreeSet::new()
        } else {
            assert_eq!(status, 200, "{path}");
            let tag = match unique {
                "StudyInstanceUID" => "0020000D",
                "SeriesInstanceUID" => "0020000E",
                _ => "00080018",
            };
            let v: serde_json::Value = serde_json::from_slice(&rsp.bytes().await.unwrap()).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|m| m[tag]["Value"][0].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(qido, dimse, "{level} {keys:?} / {path}");
    }
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_store_nothing() {
    let (n, base) = web_node(|c| {
        c.http.max_upload_size = 64 * 1024;
        c.http.allowed_origins = vec!["http://viewer.example:3000".into()];
    })
    .await;
    let specs: Vec<Spec> = (1..=2).map(|i| Spec::ct(971, 1, i, 16)).collect();
    store_specs(&n.scu("MODALITY"), &specs).await;
    let http = client();
    let admin = |r: reqwest::RequestBuilder| r.basic_auth("pacs-admin", Some(PASSWORD));
    let status = |r: reqwest::Response| r.status().as_u16();
    let st = &specs[0].study_uid;

    // Authentication and rights.
    assert_eq!(
        status(http.get(format!("{base}/studies")).send().await.unwrap()),
        401
    );
    let wrong = http
        .get(format!("{base}/studies"))
        .basic_auth("pacs-admin", Some("wrong password"));
    assert_eq!(status(wrong.send().await.unwrap()), 401);
    let token = http
        .get(format!("{base}/studies"))
        .bearer_auth("pacsd_0000");
    assert_eq!(status(token.send().await.unwrap()), 401);
    let viewer_post = http
        .post(format!("{base}/studies"))
        .basic_auth("viewer", Some(PASSWORD))
        .header(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=x",
        )
        .body("--x--");
    assert_eq!(status(viewer_post.send().await.unwrap()), 403);
    let port = n.node.http_addr.unwrap().port();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(
        status(
            http.get(&metrics)
                .basic_auth("viewer", Some(PASSWORD))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    let m = n.metrics("pacs-admin", PASSWORD).await;
    assert!(m.contains("pacsd_instances 2"), "{m}");
    assert!(m.contains("pacsd_requests_total{protocol=\"http\""), "{m}");
    // The two C-STOREs that loaded the node, over one association.
    assert!(
        m.contains(
            "pacsd_requests_total{protocol=\"dimse\",operation=\"CStoreRq\",status=\"0000\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("pacsd_associations_accepted_total 1"), "{m}");
    assert!(m.contains("pacsd_associations_open 0"), "{m}");
    assert!(m.contains("pacsd_receive_budget_held_bytes 0"), "{m}");
    assert!(m.contains("pacsd_replica_up{replica="), "{m}");
    assert!(m.contains("pacsd_replica_writes_in_background 0"), "{m}");
    assert!(
        m.contains("# TYPE pacsd_replica_writes_backgrounded_total counter"),
        "{m}"
    );
    assert_eq!(
        status(
            http.get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            http.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .unwrap()
        ),
        200
    );

    // CORS: the preflight is answered, and error responses carry the header too.
    let pre = http
        .request(reqwest::Method::OPTIONS, format!("{base}/studies"))
        .header("Origin", "http://viewer.example:3000")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://viewer.example:3000"
    );
    let denied = http
        .get(format!("{base}/studies"))
        .header("Origin", "http://viewer.example:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(
        denied.headers()["access-control-allow-origin"],
        "http://viewer.example:3000"
    );

    // Paths and parameters.
    let instance = format!(
        "/studies/{st}/series/{}/instances/{}",
        specs[0].series_uid, specs[0].sop_uid
    );
    for (path, want) in [
        ("/studies/..%2F..%2Fetc%2Fpasswd".to_string(), 400),
        ("/studies/1.2.3.x/metadata".to_string(), 400),
        (format!("/studies/{st}/series/..%2Fx"), 400),
        ("/studies/1.2.999/metadata".to_string(), 404),
        (format!("/studies/{st}/nothing-here"), 404),
        ("/no/such/resource".to_string(), 404),
        (
            "/studies?PatientName=%27%3B%20DROP%20TABLE%20study%3B--".to_string(),
            204,
        ),
        ("/studies?PatientID=%25%25*_".to_string(), 204),
        ("/studies?StudyDate=2020-01-01".to_string(), 400),
        ("/studies?NotAKeyword=1".to_string(), 400),
        ("/studies?limit=x".to_string(), 400),
        ("/studies?Modality=CT".to_string(), 400),
        (format!("{instance}/frames/0"), 400),
        (format!("{instance}/frames/2"), 404),
        (format!("{instance}/bulkdata/..%2F..%2Fx"), 400),
        (format!("{instance}/bulkdata/00880200/0/7FE00010"), 400),
        (format!("{instance}/bulkdata/00880200/1/7FE00010"), 404),
    ] {
        let r = admin(http.get(format!("{base}{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}: {:?}", r.text().await);
    }
    // Rendered with a window of the caller's: applied (a different image), and checked.
    let rendered = format!(
        "{base}/studies/{st}/series/{}/instances/{}/rendered",
        specs[0].series_uid, specs[0].sop_uid
    );
    let render = async |q: &str| {
        let r = admin(http.get(format!("{rendered}{q}")))
            .header("Accept", "image/png")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    let (own, narrow, wide) = (
        render("").await,
        render("?window=0,1").await,
        render("?window=2000,8000,linear").await,
    );
    assert_eq!((own.0, narrow.0, wide.0), (200, 200, 200));
    assert_ne!(narrow.1, wide.1, "the window changes the image");
    assert_eq!(render("?window=40,0").await.0, 400);
    assert_eq!(render("?window=40,400,SIGMOID").await.0, 400);
    let r = admin(http.get(format!("{base}/studies/{st}")))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.80",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 406);
    let r = admin(http.get(format!("{base}/studies")))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 406);

    // STOW-RS: malformed bodies and wrong media types; nothing is stored.
    let mut good = Vec::new();
    let extra = Spec::ct(972, 1, 1, 16);
    let file = n.dir.path().join("extra.dcm");
    part10_file(&extra, &file);
    let bytes = std::fs::read(&file).unwrap();
    good.extend_from_slice(b"--b\r\nContent-Type: application/dicom\r\n\r\n");
    good.extend_from_slice(&bytes);
    good.extend_from_slice(b"\r\n--b--\r\n");
    let post = |ct: &str, body: Vec<u8>| {
        admin(http.post(format!("{base}/studies")))
            .header("Content-Type", ct.to_string())
            .body(body)
    };
    let related = "multipart/related; type=\"application/dicom\"; boundary=b";
    for (ct, body, want) in [
        ("application/dicom", bytes.clone(), 415),
        (
            "multipart/related; type=\"application/dicom+json\"; boundary=b",
            good.clone(),
            415,
        ),
        (
            "multipart/related; type=\"application/dicom\"",
            good.clone(),
            400,
        ),
        (related, b"not multipart at all".to_vec(), 400),
        (related, good[..good.len() / 2].to_vec(), 400),
        (
            related,
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n".to_vec(),
            415,
        ),
        (related, vec![b'x'; 100 * 1024], 413),
    ] {
        let r = post(ct, body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{ct}: {:?}", r.text().await);
    }
    // A part that is not DICOM, beside one that is: 202 with the failure listed.
    let mut mixed = b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM? no\r\n".to_vec();
    mixed.extend_from_slice(&good);
    let r = post(related, mixed).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["00081198"]["Value"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["00081199"]["Value"].as_array().unwrap().len(), 1, "{v}");
    // The study in the path must be the instance's: 409, nothing stored.
    let other = Spec::ct(973, 1, 1, 16);
    let file = n.dir.path().join("other.dcm");
    part10_file(&other, &file);
    let mut body = b"--b\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend_from_slice(&std::fs::read(&file).unwrap());
    body.extend_from_slice(b"\r\n--b--\r\n");
    let r = admin(http.post(format!("{base}/studies/{st}")))
        .header("Content-Type", related)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert!(
        n.node
            .index
            .instance(&other.sop_uid)
            .await
            .unwrap()
            .is_none()
    );
    // Exactly the two C-STOREd instances and the one good part: nothing half-stored, and
    // no object without its index row on any replica.
    assert_eq!(n.instances().await, 3);
    for i in 0..3 {
        let files = n
            .files_in_replica(i)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count();
        assert_eq!(files, 3, "replica {i}");
    }
    // Still serving.
    let r = admin(http.get(format!("{base}/studies")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_a_stalled_upload_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (n, base) = web_node(|c| c.timeouts.idle_secs = 1.0).await;
    let addr = n.node.http_addr.unwrap();
    let http = client();
    let get_ok = async || {
        http.get(format!("{base}/studies"))
            .basic_auth("viewer", Some(PASSWORD))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    // An upload that stops half-way is answered 408 after timeouts.idle_secs, not held.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("pacs-admin:{PASSWORD}"))
    };
    s.write_all(
        format!(
            "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n\
             Content-Length: 100000\r\n\r\n--b\r\nContent-Type: application/dicom\r\n\r\nDICM"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut rsp = vec![0u8; 512];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut rsp))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let head = String::from_utf8_lossy(&rsp[..got]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    drop(s);
    // One address holds at most 128 connections: the next is closed at once, and the node
    // serves again as soon as they go.
    let mut idle = Vec::new();
    for _ in 0..128 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b))
        .await
        .expect("closed at once");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(idle);
    drop(extra);
    let mut last = 0;
    let served = eventually(Duration::from_secs(5), async || {
        last = get_ok().await;
        last == 200 || last == 204
    })
    .await;
    assert!(served, "serves again: {last}");
    n.node.stop().await;
}
