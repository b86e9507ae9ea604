//! DICOM TLS (PS3.15 B.9) with clients no one here wrote: DCMTK's storescu, findscu and
//! echoscu with `+tls` against the node's TLS listener (DCMTK 3.6.7's movescu has no TLS
//! options), a DCMTK storescp `+tls` as C-MOVE destination, and pynetdicom with an ssl context. Certificates are made by the test with
//! the openssl command (a CA, one certificate per AE, and a rogue CA's certificate).
//! The audit trail the node wrote during the scenario is then parsed as XML (Python's
//! xml.etree) and checked record by record, and the same records are found at a syslog
//! collector that received them over TLS.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use pacsd::config::{Peer, Service, TlsConfig};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl installed");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA and certificates for `names` (CN=<name>, O=Hospital, valid for 127.0.0.1 and
/// localhost, server and client use); `ROGUE` is signed by a CA the node does not trust.
fn make_pki(dir: &Path, names: &[&str]) {
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for ca in ["ca", "rogue-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/O=Test/CN={ca}"),
            ],
        );
    }
    let sign = |name: &str, ca: &str, cn: &str| {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/O=Hospital/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    };
    for n in names {
        sign(n, "ca", n);
    }
    // A certificate that claims to be CT1, from a CA nobody configured.
    sign("ROGUE", "rogue-ca", "CT1");
}

/// The node's `[tls]`: PACSD's certificate from `pki`, a client certificate required, beside
/// the plain port.
fn node_tls(pki: &Path) -> TlsConfig {
    TlsConfig {
        port: 0,
        certificate: pki.join("PACSD.crt"),
        private_key: pki.join("PACSD.key"),
        ca: pki.join("ca.crt"),
        require_client_certificate: true,
        only: false,
    }
}

/// DCMTK's TLS options for the certificate `name` in `pki`.
fn tls_args(pki: &Path, name: &str) -> Vec<String> {
    let p = |f: String| pki.join(f).display().to_string();
    vec![
        "+tls".into(),
        p(format!("{name}.key")),
        p(format!("{name}.crt")),
        "+cf".into(),
        p("ca.crt".into()),
    ]
}

async fn dcmtk_tls(
    tool: &'static str,
    pki: &Path,
    cert: &str,
    rest: &[String],
) -> std::process::Output {
    let mut args = tls_args(pki, cert);
    args.extend(rest.iter().cloned());
    dcmtk_async(tool, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmtk_and_pynetdicom_over_tls_with_certificates_checked_and_audited() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &["PACSD", "CT1", "DEST", "OTHER"]);
    // The C-MOVE destination: a DCMTK storescp over TLS with its own certificate.
    let dest = {
        let (serve, echo) = (tls_args(pki.path(), "DEST"), tls_args(pki.path(), "CT1"));
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        Destination::start_with(&strs(&serve), &strs(&echo))
    };
    let dest_port = dest.port;
    let collector = SyslogCollector::start(pki.path()).await;
    let syslog = format!("tls://127.0.0.1:{}", collector.port);
    let n = TestNode::start_with(|c| {
        c.audit.syslog = Some(syslog.clone());
        c.tls = Some(node_tls(pki.path()));
        c.peers = vec![
            // Known by its certificate: its hosts (a documentation address) would never
            // admit loopback, the certificate does.
            Peer {
                ae_title: "CT1".into(),
                host: "192.0.2.10".into(),
                port: 104,
                services: [Service::Echo, Service::Store, Service::Find, Service::Move]
                    .into_iter()
                    .collect(),
                tls_subject: Some("CN=CT1".into()),
                ..Peer::default()
            },
            // A C-MOVE destination reached over TLS, its server certificate checked.
            Peer {
                tls: true,
                ..Peer::new("DEST", "127.0.0.1", dest_port, &[])
            },
            // A workstation in clear, known by address.
            Peer::new("WS1", "127.0.0.1", 104, &[Service::Echo, Service::Move]),
            // pynetdicom: TLS required, known by address.
            Peer {
                tls: true,
                ..Peer::new("PYNET", "127.0.0.1", 104, &[Service::Echo, Service::Store])
            },
        ];
    })
    .await;
    let tls_port = n.node.tls_addr.expect("TLS listener").port().to_string();
    let plain_port = n.port().to_string();
    let corpus = tempfile::tempdir().unwrap();
    let files = small_corpus(corpus.path(), 771, 3);
    let to_node = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["-aet".into(), "CT1".into(), "-aec".into(), "PACSD".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // 1. storescu +tls with CT1's certificate: stored.
    let mut args = to_node(&["127.0.0.1", &tls_port]);
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = dcmtk_tls("storescu", pki.path(), "CT1", &args).await;
    assert_succeeded(&out, "storescu +tls");
    assert_eq!(n.instances().await, 3);

    // 2. findscu +tls: the study is found.
    let out = dcmtk_tls(
        "findscu",
        pki.path(),
        "CT1",
        &to_node(&[
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-k",
            "PatientID",
            "127.0.0.1",
            &tls_port,
        ]),
    )
    .await;
    assert_succeeded(&out, "findscu +tls");
    assert!(text(&out).contains("StudyInstanceUID"), "{}", text(&out));

    // 3. C-MOVE to a storescp +tls destination: the node connects to it over TLS and checks
    //    its server certificate. (DCMTK 3.6.7's movescu has no TLS options, so the request
    //    comes from a workstation known by address on the plain port.)
    let study = pacsd::synth::Spec::ct(771, 1, 1, 64).study_uid.clone();
    let patient = pacsd::synth::Spec::ct(771, 1, 1, 64).patient_id.clone();
    let out = dcmtk_async(
        "movescu",
        [
            "-aet",
            "WS1",
            "-aec",
            "PACSD",
            "-S",
            "-aem",
            "DEST",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "127.0.0.1",
            &plain_port,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert_succeeded(&out, "movescu");
    assert_eq!(dest.files().len(), 3, "{}", text(&out));

    // 4. Refusals. CT1 in clear, on the plain port: refused (it must use TLS).
    let out = dcmtk_async("echoscu", to_node(&["127.0.0.1", &plain_port])).await;
    assert_failed(&out, "CT1 in clear was accepted");
    // A certificate from an untrusted CA claiming CN=CT1: the handshake fails. A trusted
    // certificate naming another AE, calling as CT1: rejected.
    for (cert, what) in [
        ("ROGUE", "rogue certificate accepted"),
        ("OTHER", "CN=OTHER accepted as CT1"),
    ] {
        let to = to_node(&["127.0.0.1", &tls_port]);
        assert_failed(&dcmtk_tls("echoscu", pki.path(), cert, &to).await, what);
    }
    // No client certificate at all (anonymous TLS): refused.
    let out = dcmtk_async("echoscu", {
        let mut v = vec![
            "+tla".to_string(),
            "+cf".into(),
            pki.path().join("ca.crt").display().to_string(),
        ];
        v.extend(to_node(&["127.0.0.1", &tls_port]));
        v
    })
    .await;
    assert_failed(&out, "TLS without a client certificate accepted");
    // Plain DICOM on the TLS port: nothing is associated.
    let out = dcmtk_async("echoscu", to_node(&["127.0.0.1", &tls_port])).await;
    assert!(!out.status.success());

    // 5. pynetdicom with an ssl context (its own client certificate): C-ECHO and C-STORE.
    let script = r#"
import ssl, sys
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
pki, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki + "/ca.crt")
ctx.load_cert_chain(pki + "/DEST.crt", pki + "/DEST.key")
ctx.check_hostname = False
ae = AE(ae_title="PYNET")
ae.add_requested_context(Verification)
ae.add_requested_context(CTImageStorage)
assoc = ae.associate("127.0.0.1", port, ae_title="PACSD", tls_args=(ctx, None))
assert assoc.is_established, "not established"
assert assoc.send_c_echo().Status == 0
st = assoc.send_c_store(dcmread(path))
print("store", hex(st.Status))
assoc.release()
"#;
    let extra = pacsd::synth::Spec::ct(772, 1, 1, 64);
    let extra_path = corpus.path().join("py.dcm");
    extra.write(&extra_path).unwrap();
    let out = tokio::task::spawn_blocking({
        let pki = pki.path().to_path_buf();
        let port = tls_port.clone();
        move || {
            Command::new("python3")
                .args(["-c", script])
                .arg(&pki)
                .arg(&port)
                .arg(&extra_path)
                .output()
                .expect("python3")
        }
    })
    .await
    .unwrap();
    assert_succeeded(&out, "pynetdicom over TLS");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("store 0x0"),
        "{}",
        text(&out)
    );
    assert_eq!(n.instances().await, 4);

    // 6. The audit trail: every line one PS3.15 A.5 AuditMessage, parsed by a real XML
    //    parser; the scenario's events are all there.
    let log = n.config.audit.file(&n.config.index);
    let summary_script = r#"
import sys, json
import xml.etree.ElementTree as ET
out = []
for line in open(sys.argv[1], encoding="utf-8"):
    m = ET.fromstring(line)
    assert m.tag == "AuditMessage", m.tag
    ev = m.find("EventIdentification")
    assert ev.get("EventDateTime").endswith("Z")
    assert m.find("AuditSourceIdentification").get("AuditSourceID") == "PACSD"
    desc = ev.find("EventOutcomeDescription")
    out.append({
        "id": ev.find("EventID").get("csd-code"),
        "outcome": ev.get("EventOutcomeIndicator"),
        "action": ev.get("EventActionCode"),
        "users": [p.get("UserID") for p in m.findall("ActiveParticipant")],
        "objects": [o.get("ParticipantObjectID") for o in m.findall("ParticipantObjectIdentification")],
        "description": desc.text if desc is not None else "",
    })
print(json.dumps(out))
"#;
    // The writer flushes whenever its queue runs dry; wait for the last record.
    let records = {
        let mut last = serde_json::Value::Null;
        let ok = eventually(Duration::from_secs(10), async || {
            let out = Command::new("python3")
                .args(["-c", summary_script])
                .arg(&log)
                .output()
                .unwrap();
            assert_succeeded(&out, "audit trail does not parse");
            last = serde_json::from_slice(&out.stdout).unwrap();
            last.as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == "110104" && r["users"][0] == "PYNET")
        })
        .await;
        assert!(ok, "the pynetdicom C-STORE was never audited: {last}");
        last.as_array().unwrap().clone()
    };
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| records.iter().filter(|r| f(r)).count();
    // Start-up (Application Activity / Start).
    assert!(count(&|r| r["id"] == "110100") >= 1);
    // Three C-STOREs from CT1 naming the study, one from PYNET.
    assert_eq!(
        count(&|r| r["id"] == "110104"
            && r["users"][0] == "CT1"
            && r["outcome"] == "0"
            && r["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| *o == serde_json::json!(study))),
        3
    );
    // The C-FIND and the export to DEST.
    assert_eq!(count(&|r| r["id"] == "110112" && r["users"][0] == "CT1"), 1);
    assert_eq!(
        count(&|r| r["id"] == "110106"
            && r["users"].as_array().unwrap().iter().any(|u| *u == "WS1")
            && r["users"].as_array().unwrap().iter().any(|u| *u == "DEST")
            && r["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| *o == serde_json::json!(study))
            && r["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| *o == serde_json::json!(patient))),
        1
    );
    // Logins: accepted over TLS with the certificate named; refused ones with the reason.
    assert!(
        count(&|r| r["id"] == "110114"
            && r["outcome"] == "0"
            && r["description"].as_str().unwrap().contains("CN=CT1"))
            == 2
    );
    assert!(
        count(&|r| r["id"] == "110114"
            && r["outcome"] == "4"
            && r["description"].as_str().unwrap().contains("only over TLS"))
            >= 1
    );
    assert!(
        count(&|r| r["id"] == "110114"
            && r["outcome"] == "4"
            && r["description"].as_str().unwrap().contains("not `CN=CT1`"))
            >= 1
    );
    assert!(
        count(&|r| r["id"] == "110114"
            && r["outcome"] == "4"
            && r["description"]
                .as_str()
                .unwrap()
                .contains("TLS handshake failed"))
            >= 1
    );
    // The same records reached the syslog collector over TLS (RFC 5425 framing, RFC 5424
    // header), the node authenticated by its certificate.
    let forwarded = collector.messages();
    assert!(
        forwarded.len() >= records.len().min(10),
        "{} forwarded",
        forwarded.len()
    );
    assert!(
        forwarded
            .iter()
            .all(|m| m.starts_with('<') && m.contains(" DICOM+RFC3881 - \u{feff}<AuditMessage>"))
    );
    assert!(forwarded.iter().any(|m| m.contains("csd-code=\"110104\"")));
    drop(dest);
    n.node.stop().await;
}

/// A syslog collector over TLS (RFC 5425) that keeps every message it receives; it presents
/// the DEST certificate and requires a client certificate from the test CA.
struct SyslogCollector {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SyslogCollector {
    async fn start(pki: &Path) -> SyslogCollector {
        use tokio::io::AsyncReadExt;
        let tls = pacsd::net::tls::TlsContext::load(&TlsConfig {
            port: 0,
            certificate: pki.join("DEST.crt"),
            private_key: pki.join("DEST.key"),
            ca: pki.join("ca.crt"),
            require_client_certificate: true,
            only: false,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = got.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(mut s) = tls.acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // MSG-LEN SP SYSLOG-MSG, repeated.
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        keep.lock().unwrap().push(msg);
                        buf.drain(..sp + 1 + len);
                    }
                }
            }
        });
        SyslogCollector { port, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

/// curl (Debian's, with nghttp2) against the node: `-w` prints the HTTP version and status
/// after the body, on a line of their own.
fn curl(args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl installed");
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = all.rsplit_once('\n').unwrap_or(("", &all));
    let (version, code) = tail.split_once(' ').unwrap_or(("", ""));
    (body.to_string(), version.to_string(), code.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicomweb_over_https_speaks_http2_and_http1_with_https_urls_and_secure_cookies() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &["PACSD"]);
    let n = TestNode::start_with(|c| {
        c.tls = Some(node_tls(pki.path()));
        c.http.tls = true;
    })
    .await;
    n.add_accounts(&[("clerk", "https-test-password", "read,upload")])
        .await;
    let port = n.node.http_addr.expect("http listener").port();
    let base = format!("https://127.0.0.1:{port}/dicom-web");
    let ca = pki.path().join("ca.crt").display().to_string();
    let tls = ["--cacert", &ca, "-u", "clerk:https-test-password"];

    // 1. STOW-RS over HTTP/2 (ALPN h2): stored.
    let spec = pacsd::synth::Spec::ct(881, 1, 1, 64);
    let part_file = n.dir.path().join("part.dcm");
    part10_file(&spec, &part_file);
    let part = std::fs::read(&part_file).unwrap();
    let mut body = b"--b\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend_from_slice(&part);
    body.extend_from_slice(b"\r\n--b--\r\n");
    let body_file = n.dir.path().join("stow.body");
    std::fs::write(&body_file, &body).unwrap();
    let data = format!("@{}", body_file.display());
    let url = format!("{base}/studies");
    let mut args = tls.to_vec();
    args.extend([
        "--http2",
        "-X",
        "POST",
        "-H",
        "Content-Type: multipart/related; type=\"application/dicom\"; boundary=b",
        "--data-binary",
        &data,
        &url,
    ]);
    let (rsp, version, code) = curl(&args);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{rsp}");
    assert_eq!(n.instances().await, 1);

    // 2. QIDO-RS over HTTP/1.1 on the same port: the study.
    let url = format!("{base}/studies?StudyInstanceUID={}", spec.study_uid);
    let mut args = tls.to_vec();
    args.extend(["--http1.1", &url]);
    let (rsp, version, code) = curl(&args);
    assert_eq!((version.as_str(), code.as_str()), ("1.1", "200"), "{rsp}");
    assert!(rsp.contains(&spec.study_uid), "{rsp}");

    // 3. Metadata over HTTP/2 (no Host header, the authority is in the request): its
    //    BulkDataURIs are https URLs of this port, whatever X-Forwarded-Proto a client
    //    claims on a TLS connection.
    let url = format!(
        "{base}/studies/{}/series/{}/metadata",
        spec.study_uid, spec.series_uid
    );
    let mut args = tls.to_vec();
    args.extend(["--http2", "-H", "X-Forwarded-Proto: http", &url]);
    let (rsp, version, code) = curl(&args);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{rsp}");
    let https = format!("\"BulkDataURI\":\"https://127.0.0.1:{port}/dicom-web/");
    assert!(rsp.contains(&https), "{rsp}");
    assert!(!rsp.contains("\"BulkDataURI\":\"http:"), "{rsp}");

    // 4. dicomweb-client (requests, HTTP/1.1) checking the certificate against the CA.
    let script = format!(
        "import requests, sys\n\
         from dicomweb_client.api import DICOMwebClient\n\
         s = requests.Session(); s.auth = ('clerk', 'https-test-password'); s.verify = {ca:?}\n\
         c = DICOMwebClient(url={base:?}, session=s)\n\
         ds = c.retrieve_instance({:?}, {:?}, {:?})\n\
         print(ds.SOPInstanceUID)\n",
        spec.study_uid, spec.series_uid, spec.sop_uid
    );
    // requests lets REQUESTS_CA_BUNDLE (set on some machines) win over a session's own CA.
    let out = Command::new("python3")
        .args(["-c", &script])
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), spec.sop_uid);

    // 5. The portal's cookies are Secure over HTTPS.
    let url = format!("https://127.0.0.1:{port}/portal/login");
    let (rsp, _, code) = curl(&["--cacert", &ca, "-i", &url]);
    assert_eq!(code, "200", "{rsp}");
    let cookie = rsp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("; Secure"), "{rsp}");

    // 6. Plain HTTP on the HTTPS port gets no answer, a client that trusts another CA
    //    refuses the node, a client that never finishes its handshake holds nothing; the
    //    node goes on serving.
    let (_, _, code) = curl(&[&format!("http://127.0.0.1:{port}/healthz")]);
    assert_eq!(code, "000");
    let rogue = pki.path().join("rogue-ca.crt").display().to_string();
    let (_, _, code) = curl(&["--cacert", &rogue, &format!("{base}/studies")]);
    assert_eq!(code, "000");
    let idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let healthz = format!("https://127.0.0.1:{port}/healthz");
    let (_, version, code) = curl(&["--cacert", &ca, "--max-time", "5", &healthz]);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"));
    drop(idle);
}

/// The base64 SHA-256 of a certificate's public key (what Chromium's
/// `--ignore-certificate-errors-spki-list` names).
fn spki_sha256(cert: &Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The portal's "Open in viewer" over the node's HTTPS port, in headless Chromium: OHIF,
/// served by the node, draws the study through DICOMweb over HTTP/2 with a Secure session
/// cookie and no request refused (an `http:` URL in the viewer's configuration or in a
/// BulkDataURI would be blocked as mixed content and fail it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_in_viewer_over_https_draws_the_study_over_http2_with_a_secure_session() {
    let kit = browser_kit();
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &["PACSD"]);
    let dist = Path::new(&kit).join("package/dist");
    let n = TestNode::start_with(|c| {
        c.tls = Some(node_tls(pki.path()));
        c.http.tls = true;
        c.http.viewer_dir = Some(dist.clone());
    })
    .await;
    let password = "a radiologist's long password";
    n.add_accounts(&[("reader", password, "viewer")]).await;
    let specs: Vec<_> = (1..=4)
        .map(|i| pacsd::synth::Spec::ct(8, 1, i, 256))
        .collect();
    store_specs(&n.scu("MODALITY"), &specs).await;

    let base = format!("https://127.0.0.1:{}", n.node.http_addr.unwrap().port());
    // Chromium accepts the node's key and no other; Node's fetch trusts the test CA.
    let env = [
        (
            "PACSD_TRUST_SPKI",
            spki_sha256(&pki.path().join("PACSD.crt")),
        ),
        (
            "NODE_EXTRA_CA_CERTS",
            pki.path().join("ca.crt").display().to_string(),
        ),
    ];
    let credentials = ("reader", password);
    let seen = open_in_viewer(&kit, &base, credentials, &specs[0].study_uid, &env).await;
    assert_eq!(
        seen["dicomwebProtocols"],
        serde_json::json!(["h2"]),
        "{seen}"
    );
    assert_eq!(seen["sessionCookie"]["secure"], true, "{seen}");
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_port_also_speaks_http2_with_prior_knowledge() {
    let n = TestNode::start_with(|c| c.http.require_auth = false).await;
    let url = format!("{}/studies", n.dicomweb());
    let (_, version, code) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((version.as_str(), code.as_str()), ("2", "204"));
    let (_, version, code) = curl(&[&url]);
    assert_eq!((version.as_str(), code.as_str()), ("1.1", "204"));
}
