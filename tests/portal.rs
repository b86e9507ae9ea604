//! The web portal in a real browser: headless Chromium (Debian's package, driven by npm's
//! playwright-core, installed by scripts/ohif.sh) against a running node, walking through
//! sign-in, search, a study page, image status and repair, a ZIP download and the rights of a
//! viewer (tests/js/portal_check.mjs), and "Open in viewer" drawing a study in the OHIF
//! viewer the node serves (tests/js/portal_viewer.mjs). Screenshots of every page are left in
//! target/portal-screenshots.

mod common;

use std::io::Read;
use std::process::Command;

use common::*;
use pacsd::synth::Spec;
use serde_json::json;

/// The corpus: study 1 (two CT series of three images), 2 (CT), 3 (MR), 4 (a patient with
/// a non-ASCII name). Synthetic study dates are 2005-01-02 to 2005-01-05.
fn corpus() -> Vec<Spec> {
    let mut specs = Vec::new();
    for series in 1..=2 {
        for i in 1..=3 {
            specs.push(Spec::ct(1, series, i, 64));
        }
    }
    for i in 1..=2 {
        specs.push(Spec::ct(2, 1, i, 64));
        let mut mr = Spec::ct(3, 1, i, 64);
        mr.modality = "MR".into();
        specs.push(mr);
    }
    let mut m = Spec::ct(4, 1, 1, 64);
    m.patient_name = "Müller^Jürgen".into();
    specs.push(m);
    specs
}

/// A Basic Text SR in `like`'s study (a new series): "Chest CT report" with a finding and a
/// measurement. Its directory (kept alive) and file.
fn upload_dir_sr(like: &Spec) -> (tempfile::TempDir, std::path::PathBuf) {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    let el = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let code = |value: &str, meaning: &str| {
        InMemDicomObject::from_element_iter([
            el(tags::CODE_VALUE, VR::SH, value),
            el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "99PACSD"),
            el(tags::CODE_MEANING, VR::LO, meaning),
        ])
    };
    let seq = |tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    };
    let finding = InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        el(tags::VALUE_TYPE, VR::CS, "TEXT"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("F1", "Finding")],
        ),
        el(tags::TEXT_VALUE, VR::UT, "Nodule in the left lower lobe"),
    ]);
    let diameter = InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        el(tags::VALUE_TYPE, VR::CS, "NUM"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("D1", "Diameter")],
        ),
        seq(
            tags::MEASURED_VALUE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::NUMERIC_VALUE, VR::DS, "12"),
                seq(
                    tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                    vec![code("mm", "millimeter")],
                ),
            ])],
        ),
    ]);
    let mut spec = like.clone();
    spec.size = 0;
    spec.modality = "SR".into();
    spec.sop_class = "1.2.840.10008.5.1.4.1.1.88.11".into();
    spec.series_uid = format!("{}.77", like.study_uid);
    spec.sop_uid = format!("{}.77.1", like.study_uid);
    let mut ds = spec.dataset();
    for e in [
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
    ] {
        ds.put(e);
    }
    ds.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("R1", "Chest CT report")],
    ));
    ds.put(seq(tags::CONTENT_SEQUENCE, vec![finding, diameter]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.dcm");
    write_part10(ds, &spec, &path);
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_in_a_browser() {
    let n = TestNode::start_with(|c| {
        c.preview.enabled = true;
        c.storage.repair_interval_secs = 0.5;
        c.access
            .unknown_ae_services
            .insert(pacsd::config::Service::Find);
    })
    .await;
    let admin_pw = "an admin's long password";
    let viewer_pw = "a viewer's long password";
    // Beside the first-start account (`admin`, random password): known ones.
    n.add_accounts(&[
        ("chief", admin_pw, "admin"),
        ("viewer", viewer_pw, "viewer"),
    ])
    .await;
    let specs = corpus();
    store_specs(&n.scu("MODALITY"), &specs).await;
    let study = specs[0].study_uid.clone();

    // Every preview made first: the thumbnails then come from them, and no object read (which
    // heals a copy it finds missing) changes the status the page is to show.
    assert!(
        eventually(std::time::Duration::from_secs(60), async || {
            let c = n.node.index.preview_counts().await.unwrap();
            c.done as usize == specs.len()
        })
        .await,
        "previews made"
    );
    // A structured report in study 2, sent by DCMTK storescu.
    let sr = upload_dir_sr(&specs[6]);
    let sent = storescu_paths(n.port(), &[], &[&sr.1]).await;
    assert!(sent.status.success(), "{}", text(&sent));

    // Replica 2 loses its copies of study 1 (nothing in the repair queue knows yet).
    let study_instances: Vec<_> = specs.iter().filter(|s| s.study_uid == study).collect();
    for s in &study_instances {
        let inst = n.stored(&s.sop_uid).await;
        n.node.storage.delete_from(&inst.storage_key, &[1]).await;
        assert!(!n.node.storage.exists_on(1, &inst.storage_key).await);
    }

    let pw_dir = browser_kit();
    let out = screenshot_dir();
    // Files to upload from the browser: three new instances and one that is not DICOM.
    let upload_dir = tempfile::tempdir().unwrap();
    let mut uploads = Vec::new();
    for i in 1..=3 {
        let s = Spec::ct(5, 1, i, 64);
        let path = upload_dir.path().join(format!("ct{i}.dcm"));
        part10_file(&s, &path);
        uploads.push((s, path));
    }
    let not_dicom = upload_dir.path().join("notes.txt");
    std::fs::write(&not_dicom, "not an image").unwrap();
    // And a folder of two more, in subfolders, chosen with "Choose a folder".
    let folder = tempfile::tempdir().unwrap();
    let mut folder_specs = Vec::new();
    for i in 1..=2 {
        let s = Spec::ct(6, 1, i, 64);
        let sub = folder.path().join(format!("scan/part{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        part10_file(&s, &sub.join(format!("ct{i}.dcm")));
        folder_specs.push(s);
    }
    let base = format!("http://127.0.0.1:{}", n.node.http_addr.unwrap().port());
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/portal_check.mjs"
    ))
    .args([
        &pw_dir,
        &base,
        admin_pw,
        viewer_pw,
        &study,
        &specs[specs.len() - 1].study_uid,
        &specs[6].study_uid,
    ])
    .arg(&out)
    .arg(folder.path())
    .args(uploads.iter().map(|(_, p)| p))
    .arg(&not_dicom);
    let seen = json_of(cmd).await;
    eprintln!("{seen:#}");
    assert!(seen.get("error").is_none(), "{seen:#}");

    // Anonymous visitors get the login page and nothing else.
    assert_eq!(seen["anonymousLandsOn"], "/portal/login");
    assert_eq!(seen["anonymousDownload"]["status"], 303);
    assert!(
        seen["anonymousDownload"]["location"]
            .as_str()
            .unwrap()
            .starts_with("/portal/login?next=")
    );
    assert_eq!(seen["anonymousThumbnail"], 401);

    // A wrong password is refused and said so; the right one goes where the visitor was going.
    assert_eq!(seen["wrongPassword"]["status"], 401);
    assert!(
        seen["wrongPassword"]["alert"]
            .as_str()
            .unwrap()
            .contains("Wrong account name or password")
    );
    assert_eq!(seen["afterLogin"], format!("/portal/studies/{study}"));
    assert_eq!(
        seen["sessionCookie"],
        json!({"httpOnly": true, "sameSite": "Strict"})
    );

    // Thumbnails of both series and of a series' images were drawn.
    let series_thumbs = seen["seriesThumbnails"].as_array().unwrap();
    assert_eq!(series_thumbs.len(), 2);
    assert!(
        series_thumbs
            .iter()
            .all(|t| t["width"].as_u64().unwrap() > 0)
    );
    let instance_thumbs = seen["instanceThumbnails"].as_array().unwrap();
    assert_eq!(instance_thumbs.len(), 3);
    assert!(instance_thumbs.iter().all(|w| w.as_u64().unwrap() > 0));

    // Image status: replica 2 (index 1) misses the six copies; a verify queues them; the
    // repair worker writes them back.
    let row = |key: &str, r: usize| seen[key][r].clone();
    assert_eq!(
        row("statusBefore", 1),
        json!({"replica": 1, "present": 0, "missing": 6, "queued": 0})
    );
    for r in [0, 2] {
        assert_eq!(row("statusBefore", r)["present"], 6);
    }
    assert!(
        seen["verifyMessage"]
            .as_str()
            .unwrap()
            .contains("6 bad or missing copies queued"),
        "{}",
        seen["verifyMessage"]
    );
    let queued = row("statusQueued", 1);
    assert_eq!(
        queued["queued"].as_u64().unwrap() + queued["present"].as_u64().unwrap(),
        6,
        "{queued}"
    );
    for r in 0..3 {
        assert_eq!(
            row("statusRepaired", r),
            json!({"replica": r, "present": 6, "missing": 0, "queued": 0})
        );
    }

    // The ZIP holds every instance of the study, byte for byte what the archive stored.
    let zip_path = seen["zip"]["path"].as_str().unwrap();
    assert_eq!(seen["zip"]["suggested"], format!("{study}.zip"));
    let mut zip = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    assert_eq!(zip.len(), 6);
    for s in &study_instances {
        let stored = n.read_back(&s.sop_uid).await.bytes;
        let name = format!("{study}/{}/{}.dcm", s.series_uid, s.sop_uid);
        let mut entry = zip.by_name(&name).unwrap();
        let mut got = Vec::new();
        entry.read_to_end(&mut got).unwrap();
        assert!(
            got == stored.as_ref(),
            "{name} differs from the stored object"
        );
    }

    // Every filter, through the same matching as C-FIND (newest study first by default).
    let ids = |v: &[&str]| json!(v);
    let f = &seen["filters"];
    assert_eq!(
        f["all"],
        ids(&["PAT00004", "PAT00003", "PAT00002", "PAT00001"])
    );
    assert_eq!(
        f["oldestFirst"],
        ids(&["PAT00001", "PAT00002", "PAT00003", "PAT00004"])
    );
    assert_eq!(f["patientId"], ids(&["PAT00002"]));
    assert_eq!(
        f["nameCaseInsensitive"],
        ids(&["PAT00003", "PAT00002", "PAT00001"])
    );
    assert_eq!(f["nameWildcard"], ids(&["PAT00003"]));
    assert_eq!(f["nonAscii"], ids(&["PAT00004"]));
    assert_eq!(f["accession"], ids(&["PAT00003"]));
    assert_eq!(f["dateRange"], ids(&["PAT00003", "PAT00002"]));
    assert_eq!(f["modality"], ids(&["PAT00003"]));
    assert_eq!(f["nothing"], ids(&[]));
    assert_eq!(seen["nonAsciiName"], "Müller, Jürgen");
    assert!(
        seen["nonAsciiHeading"]
            .as_str()
            .unwrap()
            .starts_with("Müller, Jürgen")
    );

    // The report reads as text.
    assert_eq!(seen["report"]["title"], "Chest CT report");
    assert_eq!(
        seen["report"]["lines"],
        json!(["Finding: Nodule in the left lower lobe", "Diameter: 12 mm"])
    );

    // The uploads: three stored (and found by C-FIND), the text file refused with a reason.
    assert_eq!(seen["uploadSummary"], "3 stored, 1 refused, 0 to go");
    assert_eq!(seen["uploadFolderSummary"], "5 stored, 1 refused, 0 to go");
    let outcomes = seen["uploadOutcomes"].as_array().unwrap();
    for o in outcomes {
        let (file, outcome) = (o["file"].as_str().unwrap(), o["outcome"].as_str().unwrap());
        if file == "notes.txt" {
            assert!(outcome.starts_with("refused: "), "{o}");
            assert!(
                outcome.len() > "refused: ".len() + 10,
                "a reason is given: {o}"
            );
        } else {
            assert_eq!(outcome, "stored", "{o}");
        }
    }
    let found = findscu_instances(n.port(), &uploads[0].0.study_uid, &uploads[0].0.series_uid);
    for (s, _) in &uploads {
        assert!(
            found.contains(&s.sop_uid),
            "{} not found by C-FIND: {found}",
            s.sop_uid
        );
    }
    let found = findscu_instances(
        n.port(),
        &folder_specs[0].study_uid,
        &folder_specs[0].series_uid,
    );
    for s in &folder_specs {
        assert!(found.contains(&s.sop_uid), "{}: {found}", s.sop_uid);
    }

    // Every page can be used with the keyboard alone: Tab reaches each of its controls (the
    // file pickers too), and the sign-in above was typed and sent with Enter.
    assert_eq!(
        seen["keyboardMisses"],
        json!({"login": [], "study": [], "studies": [], "upload": [], "operations": []})
    );

    // The operations page: 11 + a report + 5 uploaded instances, three healthy replicas, nothing to
    // repair any more.
    assert_eq!(
        seen["operations"],
        json!({"instances": 17, "repairs": 0, "replicas": 3, "upStates": ["up", "up", "up"], "repairsEmpty": true})
    );

    // Its recent activity is the audit trail: the sign-ins (the wrong one too), the uploads.
    let audit = seen["audit"].as_array().unwrap();
    let has = |event: &str, outcome: &str, who: &str, what: &str| {
        audit.iter().any(|r| {
            r["event"] == event
                && r["outcome"] == outcome
                && r["who"].as_str().unwrap().starts_with(who)
                && r["what"].as_str().unwrap().contains(what)
        })
    };
    assert!(
        has(
            "User Authentication / Login",
            "success",
            "chief@127.0.0.1",
            "portal sign-in"
        ),
        "{audit:#?}"
    );
    assert!(
        has(
            "User Authentication / Login",
            "minor failure",
            "chief@127.0.0.1",
            "portal sign-in"
        ),
        "{audit:#?}"
    );
    assert!(
        has(
            "DICOM Instances Transferred",
            "success",
            "chief@127.0.0.1",
            "portal upload"
        ),
        "{audit:#?}"
    );

    // The admin deleted the study of the special name: gone from the index and the replicas,
    // in the audit trail with who did it.
    let deleted_study = &specs[specs.len() - 1].study_uid;
    assert_eq!(
        seen["deleteUnconfirmedStaysOn"],
        format!("/portal/studies/{deleted_study}")
    );
    assert_eq!(seen["afterDelete"], "/portal/studies?deleted=1");
    assert!(
        seen["deleteMessage"]
            .as_str()
            .unwrap()
            .contains("1 image removed")
    );
    assert_eq!(seen["deletedStudyPage"], 404);
    assert_eq!(
        n.node.index.study_counts(deleted_study).await.unwrap(),
        None
    );
    for r in 0..3 {
        assert!(
            !n.files_in_replica(r)
                .iter()
                .any(|f| f.to_string_lossy().contains(&format!("/{deleted_study}/"))),
            "replica {r} still holds the deleted study"
        );
    }
    let trail = std::fs::read_to_string(n.dir.path().join("audit.log")).unwrap();
    assert!(
        trail.lines().any(|l| l.contains("110105")
            && l.contains("chief")
            && l.contains(deleted_study.as_str())),
        "no DICOM Study Deleted record"
    );

    // Signed out means signed out.
    assert_eq!(seen["afterLogout"], "/portal/login");
    assert_eq!(seen["afterLogoutStudies"], "/portal/login");

    // A viewer sees no admin action and cannot forge one; a form without the session's CSRF
    // token is refused.
    assert_eq!(seen["viewerSeesVerify"], false);
    assert_eq!(seen["viewerSeesUpload"], false);
    assert_eq!(seen["viewerUploadPage"], 403);
    assert_eq!(seen["viewerSeesOperations"], false);
    assert_eq!(seen["viewerOperationsPage"], 403);
    assert_eq!(seen["viewerVerify"], 403);
    assert_eq!(seen["viewerSeesDelete"], false);
    assert_eq!(seen["viewerDelete"], 403);
    assert!(n.node.index.study_counts(&study).await.unwrap().is_some());
    assert_eq!(seen["forgedCsrf"], 403);

    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_in_viewer_draws_the_study_in_ohif_served_by_the_node() {
    let kit = browser_kit();
    let dist = std::path::Path::new(&kit).join("package/dist");
    let n = TestNode::start_with(|c| {
        c.http.viewer_dir = Some(dist.clone());
    })
    .await;
    let password = "a radiologist's long password";
    n.add_accounts(&[("reader", password, "viewer")]).await;
    let specs: Vec<_> = (1..=6).map(|i| Spec::ct(7, 1, i, 256)).collect();
    store_specs(&n.scu("MODALITY"), &specs).await;
    let study = specs[0].study_uid.clone();

    let base = format!("http://127.0.0.1:{}", n.node.http_addr.unwrap().port());
    let seen = open_in_viewer(&kit, &base, ("reader", password), &study, &[]).await;
    assert_eq!(seen["dicomwebProtocols"], json!(["http/1.1"]), "{seen}");
    assert_eq!(seen["sessionCookie"]["secure"], false, "{seen}");
    n.node.stop().await;
}
