//! Orthanc (Debian's package) as a real peer: driven through its REST API, it queries pacsd
//! with C-FIND and retrieves a study with C-MOVE to itself; with its DICOMweb plugin (Debian's
//! orthanc-dicomweb) it uses pacsd as a DICOMweb server: QIDO-RS, WADO-RS and STOW-RS.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pacsd::config::Service;
use pacsd::synth::Spec;

/// An Orthanc process with its own storage, killed on drop.
struct Orthanc {
    child: Child,
    http: u16,
}

impl Orthanc {
    /// Start on the given ports, with pacsd at `pacsd_port` as modality `pacsd`.
    fn start(dir: &Path, pacsd_port: u16, http: u16, dicom: u16) -> Orthanc {
        Self::start_with(dir, pacsd_port, http, dicom, serde_json::json!({}))
    }

    /// `start` with more configuration keys (`extra` overrides).
    fn start_with(
        dir: &Path,
        pacsd_port: u16,
        http: u16,
        dicom: u16,
        extra: serde_json::Value,
    ) -> Orthanc {
        let config = dir.join("orthanc.json");
        let mut json = serde_json::json!({
                "Name": "pacsd-interop",
                "StorageDirectory": dir.join("db"),
                "IndexDirectory": dir.join("db"),
                "HttpPort": http,
                "DicomPort": dicom,
                "DicomAet": "ORTHANC",
                "RemoteAccessAllowed": false,
                "AuthenticationEnabled": false,
                "DicomScuTimeout": 20,
                "Plugins": [],
                "DicomModalities": { "pacsd": ["PACSD", "127.0.0.1", pacsd_port] }
        });
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        std::fs::write(&config, json.to_string()).unwrap();
        let log = dir.join("orthanc.log");
        let child = Command::new("Orthanc")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("Orthanc (apt-get install orthanc)");
        let mut o = Orthanc { child, http };
        let deadline = Instant::now() + Duration::from_secs(60);
        while o.get("/system").is_none() {
            let exited = o.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(20).collect();
                panic!(
                    "Orthanc did not start ({exited:?}); its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    fn curl(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "60"])
            .args(args)
            .output()
            .expect("curl");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        self.curl(&[&format!("http://127.0.0.1:{}{path}", self.http)])
    }

    fn post(&self, path: &str, body: &str) -> Option<serde_json::Value> {
        self.curl(&[
            "-X",
            "POST",
            "-d",
            body,
            &format!("http://127.0.0.1:{}{path}", self.http),
        ])
    }

    /// The SOP Instance UIDs Orthanc holds, sorted.
    fn instances(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .get("/instances?expand")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["MainDicomTags"]["SOPInstanceUID"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    /// POST a file's bytes.
    fn post_file(&self, path: &str, file: &Path) -> Option<serde_json::Value> {
        self.curl(&[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://127.0.0.1:{}{path}", self.http),
        ])
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_queries_and_moves_a_study_from_pacsd() {
    let dir = tempfile::tempdir().unwrap();
    let (orthanc_http, orthanc_dicom) = (unused_port(), unused_port());
    let n = TestNode::start_with(|c| {
        c.peers = vec![loopback_peer(
            "ORTHANC",
            orthanc_dicom,
            &[Service::Echo, Service::Find, Service::Move],
        )];
    })
    .await;
    // Two studies in pacsd; Orthanc retrieves the second.
    let specs: Vec<Spec> = [(960, 1), (960, 2), (961, 1), (961, 2), (961, 3)]
        .iter()
        .map(|&(study, i)| Spec::ct(study, 1, i, 16))
        .collect();
    store_specs(&n.scu("MODALITY"), &specs).await;

    let port = n.port();
    let path = dir.path().to_path_buf();
    let (studies, instances) = tokio::task::spawn_blocking(move || {
        let o = Orthanc::start(&path, port, orthanc_http, orthanc_dicom);
        // C-ECHO from Orthanc.
        assert!(o.post("/modalities/pacsd/echo", "{}").is_some(), "C-ECHO");
        // C-FIND at study level.
        let q = o
            .post(
                "/modalities/pacsd/query",
                r#"{"Level":"Study","Query":{"PatientID":"*","StudyInstanceUID":""}}"#,
            )
            .expect("C-FIND through Orthanc");
        let id = q["ID"].as_str().unwrap().to_string();
        let answers = o
            .get(&format!("/queries/{id}/answers?expand&simplify"))
            .unwrap();
        let mut studies: Vec<String> = answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["StudyInstanceUID"].as_str().unwrap().to_string())
            .collect();
        studies.sort();
        // C-MOVE of the second study to Orthanc itself.
        let idx = answers
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a["StudyInstanceUID"] == Spec::ct(961, 1, 1, 16).study_uid.as_str())
            .unwrap();
        o.post(
            &format!("/queries/{id}/answers/{idx}/retrieve"),
            r#"{"TargetAet":"ORTHANC","Synchronous":true}"#,
        )
        .expect("C-MOVE through Orthanc");
        let instances = o.instances();
        (studies, instances)
    })
    .await
    .unwrap();

    let mut expected_studies = vec![specs[0].study_uid.clone(), specs[2].study_uid.clone()];
    expected_studies.sort();
    assert_eq!(studies, expected_studies);
    let mut expected: Vec<String> = specs[2..].iter().map(|s| s.sop_uid.clone()).collect();
    expected.sort();
    assert_eq!(instances, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_uses_pacsd_as_a_dicomweb_server() {
    let dir = tempfile::tempdir().unwrap();
    let (orthanc_http, orthanc_dicom) = (unused_port(), unused_port());
    let n = TestNode::start().await;
    n.node
        .index
        .add_account(
            "orthanc",
            "orthanc web password",
            pacsd::index::account::Rights::parse("read,upload").unwrap(),
        )
        .await
        .unwrap();
    let specs: Vec<Spec> = [(980, 1), (981, 1), (981, 2)]
        .iter()
        .map(|&(study, i)| Spec::ct(study, 1, i, 16))
        .collect();
    store_specs(&n.scu("MODALITY"), &specs).await;
    // An instance that only Orthanc has at first; it sends it to pacsd with STOW-RS.
    let new = Spec::ct(982, 1, 1, 16);
    let new_file = dir.path().join("new.dcm");
    part10_file(&new, &new_file);

    let url = format!(
        "http://127.0.0.1:{}/dicom-web/",
        n.node.http_addr.unwrap().port()
    );
    let (port, path) = (n.port(), dir.path().to_path_buf());
    let study = specs[1].study_uid.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let o = Orthanc::start_with(
            &path,
            port,
            orthanc_http,
            orthanc_dicom,
            serde_json::json!({
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
                "DicomWeb": {
                    "Enable": true,
                    "Servers": { "pacsd": [url, "orthanc", "orthanc web password"] }
                }
            }),
        );
        // QIDO-RS through Orthanc.
        let found = o
            .post(
                "/dicom-web/servers/pacsd/qido",
                r#"{"Uri":"/studies","Arguments":{"PatientID":"PAT00981"}}"#,
            )
            .expect("QIDO-RS through Orthanc's DICOMweb client");
        let found: Vec<String> = found
            .as_array()
            .unwrap()
            .iter()
            // Orthanc answers in its own simplified JSON (one value as a string).
            .map(|m| {
                m["0020000D"]["Value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m}"))
                    .to_string()
            })
            .collect();
        // WADO-RS: Orthanc retrieves the study and stores it.
        o.post(
            "/dicom-web/servers/pacsd/retrieve",
            &format!(r#"{{"Resources":[{{"Study":"{study}"}}]}}"#),
        )
        .expect("WADO-RS retrieve through Orthanc");
        let retrieved = o.instances();
        // STOW-RS: Orthanc sends its new instance to pacsd.
        let uploaded = o
            .post_file("/instances", &new_file)
            .expect("upload to Orthanc");
        let id = uploaded["ID"].as_str().unwrap().to_string();
        let stow = o
            .post(
                "/dicom-web/servers/pacsd/stow",
                &format!(r#"{{"Resources":["{id}"],"Synchronous":true}}"#),
            )
            .expect("STOW-RS through Orthanc");
        (found, retrieved, stow)
    })
    .await
    .unwrap();
    assert_eq!(seen.0, vec![specs[1].study_uid.clone()]);
    let mut expected: Vec<String> = specs[1..].iter().map(|s| s.sop_uid.clone()).collect();
    expected.sort();
    assert_eq!(seen.1, expected, "Orthanc holds the study it retrieved");
    assert!(
        n.node.index.instance(&new.sop_uid).await.unwrap().is_some(),
        "STOW-RS from Orthanc stored the instance: {}",
        seen.2
    );
}
