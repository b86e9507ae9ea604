//! C-FIND against real clients: DCMTK findscu (both models, every level, every matching
//! type, character sets, C-CANCEL, the result limit, bad identifiers) and pacsd's own SCU.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Stdio};

use common::*;
use dicom_dictionary_std::uids;
use pacsd::config::Service;
use pacsd::synth::Spec;
use pacsd::tools::{FindSpec, Model};

/// One study of the corpus.
fn spec(study: u32, series: u32, n: u32, f: impl FnOnce(&mut Spec)) -> Spec {
    let mut s = Spec::ct(study, series, n, 0);
    f(&mut s);
    s
}

/// The corpus every test queries: six patients, one study each; study 1 has two series.
fn corpus() -> Vec<Spec> {
    vec![
        spec(1, 1, 1, |s| {
            set(s, "P001", "Doe^John", "20200105", "083000", "A100", "CT")
        }),
        spec(1, 1, 2, |s| {
            set(s, "P001", "Doe^John", "20200105", "083000", "A100", "CT")
        }),
        spec(1, 2, 1, |s| {
            set(s, "P001", "Doe^John", "20200105", "083000", "A100", "OT");
            s.sop_class = uids::SECONDARY_CAPTURE_IMAGE_STORAGE.into();
        }),
        spec(2, 1, 1, |s| {
            set(s, "P002", "Doe^Jane", "20201231", "235959", "A200", "MR")
        }),
        spec(3, 1, 1, |s| {
            set(s, "P003", "Smith^Anna", "20210615", "120000", "A300", "CT")
        }),
        spec(4, 1, 1, |s| {
            set(
                s,
                "P004",
                "Müller^Jürgen",
                "20220101",
                "090000",
                "A400",
                "US",
            );
            s.charset = "ISO_IR 100".into();
        }),
        spec(5, 1, 1, |s| {
            set(
                s,
                "P005",
                "Dvořák^Antonín",
                "20230301",
                "100000",
                "A500",
                "CT",
            )
        }),
        spec(6, 1, 1, |s| {
            set(
                s,
                "P006",
                "Yamada^Tarou=山田^太郎=やまだ^たろう",
                "20230302",
                "110000",
                "A600",
                "CR",
            )
        }),
    ]
}

fn set(s: &mut Spec, pid: &str, name: &str, date: &str, time: &str, acc: &str, modality: &str) {
    s.patient_id = pid.into();
    s.patient_name = name.into();
    s.study_date = date.into();
    s.study_time = time.into();
    s.accession_number = acc.into();
    s.modality = modality.into();
}

async fn node_with_corpus(tweak: impl FnOnce(&mut pacsd::config::Config)) -> TestNode {
    let n = TestNode::start_with(|c| {
        c.access.unknown_ae_services.insert(Service::Find);
        tweak(c);
    })
    .await;
    let dir = n.dir.path().join("corpus");
    let files = write_specs(&dir, &corpus());
    let summary = pacsd::tools::store(&n.scu("LOADER"), files, 2, false)
        .await
        .unwrap();
    assert_eq!(summary.failed, 0, "{:?}", summary.failures);
    n
}

fn uid(study: u32) -> String {
    Spec::ct(study, 1, 1, 0).study_uid
}

/// What findscu printed: each Pending identifier as tag -> raw value bytes, and the final
/// status text.
struct FindOut {
    matches: Vec<BTreeMap<String, Vec<u8>>>,
    status: String,
    text: String,
}

impl FindOut {
    fn values(&self, tag: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .matches
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m.get(tag).map(|v| v.as_slice()).unwrap_or(b""))
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }
}

fn findscu(port: u16, args: Vec<OsString>) -> FindOut {
    let out = Command::new(dcmtk_path("findscu"))
        .arg("-v")
        .args(args)
        .args(["-aec", "PACSD", "127.0.0.1"])
        .arg(port.to_string())
        .env("TCP_NODELAY", "1")
        .stdin(Stdio::null())
        .output()
        .expect("findscu (DCMTK) installed");
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    let mut matches = Vec::new();
    let mut status = String::new();
    for line in all.split(|b| *b == b'\n') {
        let l = String::from_utf8_lossy(line);
        if l.contains("Find Response:") && l.contains("(Pending") {
            matches.push(BTreeMap::new());
        } else if let Some(i) = l.find("Received Final Find Response (") {
            status = l[i + 30..].trim_end_matches(')').to_string();
        } else if let (Some(start), Some(m)) =
            (line.iter().position(|b| *b == b'('), matches.last_mut())
        {
            // "(gggg,eeee) VR [value]   # ..."
            if line.len() > start + 10 && line[start + 5] == b',' && line[start + 10] == b')' {
                let tag = String::from_utf8_lossy(&line[start + 1..start + 10]).to_lowercase();
                let mut value = match (
                    line.iter().position(|b| *b == b'['),
                    line.iter().rposition(|b| *b == b']'),
                ) {
                    (Some(a), Some(b)) if b > a => line[a + 1..b]
                        .iter()
                        .copied()
                        .filter(|c| *c != 0)
                        .collect::<Vec<u8>>(),
                    // DCMTK prints well-known UIDs by name: "UI =CTImageStorage".
                    _ => match line.windows(2).position(|w| w == b" =") {
                        Some(i) => line[i + 2..]
                            .iter()
                            .copied()
                            .take_while(|c| *c != b' ')
                            .collect(),
                        None => Vec::new(),
                    },
                };
                while value.last() == Some(&b' ') {
                    value.pop();
                }
                m.insert(tag, value);
            }
        }
    }
    FindOut {
        matches,
        status,
        text: String::from_utf8_lossy(&all).into_owned(),
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// findscu's arguments for a query: the information model (`-P`, `-S`, `-W`) and each key
/// after its `-k`.
fn query(model: &str, keys: &[&str]) -> Vec<OsString> {
    let mut out = vec![OsString::from(model)];
    for k in keys {
        out.extend([OsString::from("-k"), OsString::from(k)]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_root_study_level_every_matching_type() {
    let n = node_with_corpus(|_| {}).await;
    let port = n.port();
    let q = |keys: &[&str]| {
        let mut a = query(
            "-S",
            &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID"],
        );
        for k in keys {
            a.push("-k".into());
            a.push(k.into());
        }
        let out = findscu(port, a);
        assert_eq!(out.status, "Success", "{}", out.text);
        out
    };
    let pids = |keys: &[&str]| q(keys).values("0010,0020");

    // Universal: every study, keys returned.
    assert_eq!(
        pids(&[]),
        vec!["P001", "P002", "P003", "P004", "P005", "P006"]
    );
    // Single value.
    assert_eq!(pids(&["PatientID=P002"]), vec!["P002"]);
    assert_eq!(pids(&["AccessionNumber=A300"]), vec!["P003"]);
    assert_eq!(pids(&["PatientID=P00"]), Vec::<String>::new());
    // Wildcards, and PN case-insensitivity (the default).
    assert_eq!(pids(&["PatientName=Doe*"]), vec!["P001", "P002"]);
    assert_eq!(pids(&["PatientName=D?e^J*n"]), vec!["P001"]);
    assert_eq!(pids(&["PatientName=doe^john"]), vec!["P001"]);
    assert_eq!(
        pids(&["PatientName=*"]),
        vec!["P001", "P002", "P003", "P004", "P005", "P006"]
    );
    assert_eq!(
        pids(&["AccessionNumber=A?00"]),
        vec!["P001", "P002", "P003", "P004", "P005", "P006"]
    );
    assert_eq!(pids(&["AccessionNumber=A1*"]), vec!["P001"]);
    // Date ranges, closed and open.
    assert_eq!(pids(&["StudyDate=20200101-20201231"]), vec!["P001", "P002"]);
    assert_eq!(pids(&["StudyDate=-20201231"]), vec!["P001", "P002"]);
    assert_eq!(
        pids(&["StudyDate=20210101-"]),
        vec!["P003", "P004", "P005", "P006"]
    );
    assert_eq!(pids(&["StudyDate=20220101"]), vec!["P004"]);
    // Time range (10:00 to 12:00 inclusive of 12:00:00).
    assert_eq!(
        pids(&["StudyTime=100000-1200"]),
        vec!["P003", "P005", "P006"]
    );
    // List of UIDs.
    let list = format!("StudyInstanceUID={}\\{}", uid(1), uid(3));
    assert_eq!(pids(&[&list]), vec!["P001", "P003"]);
    // ModalitiesInStudy: any listed modality.
    assert_eq!(pids(&["ModalitiesInStudy=MR"]), vec!["P002"]);
    assert_eq!(pids(&["ModalitiesInStudy=OT\\US"]), vec!["P001", "P004"]);
    // Several keys are ANDed.
    assert_eq!(
        pids(&["PatientName=Doe*", "StudyDate=20201201-"]),
        vec!["P002"]
    );

    // Computed attributes.
    let out = q(&[
        "PatientID=P001",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy",
        "RetrieveAETitle",
    ]);
    assert_eq!(out.matches.len(), 1);
    let m = &out.matches[0];
    let text = |t: &str| String::from_utf8_lossy(&m[t]).into_owned();
    assert_eq!(text("0008,0061"), "CT\\OT");
    assert_eq!(text("0020,1206"), "2");
    assert_eq!(text("0020,1208"), "3");
    assert_eq!(
        text("0008,0062"),
        format!(
            "{}\\{}",
            uids::CT_IMAGE_STORAGE,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE
        )
    );
    assert_eq!(text("0008,0054"), "PACSD");
    assert_eq!(text("0008,0052"), "STUDY");
    // Exactly the requested keys (plus level, retrieve AE, character set when needed).
    let returned: Vec<&String> = m.keys().collect();
    assert_eq!(
        returned,
        vec![
            "0008,0052",
            "0008,0054",
            "0008,0061",
            "0008,0062",
            "0010,0020",
            "0020,000d",
            "0020,1206",
            "0020,1208"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_root_every_level() {
    let n = node_with_corpus(|_| {}).await;
    let port = n.port();
    let patients = findscu(
        port,
        query(
            "-P",
            &[
                "QueryRetrieveLevel=PATIENT",
                "PatientName=Doe*",
                "PatientID",
                "NumberOfPatientRelatedStudies",
                "NumberOfPatientRelatedInstances",
            ],
        ),
    );
    assert_eq!(patients.status, "Success", "{}", patients.text);
    assert_eq!(patients.values("0010,0020"), vec!["P001", "P002"]);
    assert_eq!(patients.values("0020,1204"), vec!["1", "3"]);

    let studies = findscu(
        port,
        query(
            "-P",
            &[
                "QueryRetrieveLevel=STUDY",
                "PatientID=P001",
                "StudyInstanceUID",
                "StudyDate",
            ],
        ),
    );
    assert_eq!(studies.values("0020,000d"), vec![uid(1)]);
    assert_eq!(studies.values("0008,0020"), vec!["20200105"]);

    let series = findscu(
        port,
        query(
            "-P",
            &[
                "QueryRetrieveLevel=SERIES",
                "PatientID=P001",
                &format!("StudyInstanceUID={}", uid(1)),
                "SeriesInstanceUID",
                "Modality",
                "NumberOfSeriesRelatedInstances",
            ],
        ),
    );
    assert_eq!(series.status, "Success", "{}", series.text);
    assert_eq!(series.values("0008,0060"), vec!["CT", "OT"]);
    assert_eq!(series.values("0020,1209"), vec!["1", "2"]);

    let images = findscu(
        port,
        query(
            "-P",
            &[
                "QueryRetrieveLevel=IMAGE",
                "PatientID=P001",
                &format!("StudyInstanceUID={}", uid(1)),
                &format!("SeriesInstanceUID={}.1", uid(1)),
                "SOPInstanceUID",
                "InstanceNumber",
                "SOPClassUID",
            ],
        ),
    );
    assert_eq!(images.status, "Success", "{}", images.text);
    assert_eq!(images.values("0020,0013"), vec!["1", "2"]);
    assert_eq!(
        images.values("0008,0016"),
        vec!["CTImageStorage", "CTImageStorage"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_root_series_and_image_levels_with_header_keys() {
    let n = node_with_corpus(|_| {}).await;
    let port = n.port();
    let series = findscu(
        port,
        query(
            "-S",
            &[
                "QueryRetrieveLevel=SERIES",
                &format!("StudyInstanceUID={}", uid(1)),
                "Modality=CT",
                "SeriesNumber",
                "SeriesDescription",
            ],
        ),
    );
    assert_eq!(series.status, "Success", "{}", series.text);
    assert_eq!(series.values("0008,0060"), vec!["CT"]);
    assert_eq!(series.values("0008,103e"), vec!["Synthetic series"]);
    // IMAGE level: InstanceNumber single value; (0018,0050) and (0028,0002) are not in the index
    // and come from the stored object's header (SamplesPerPixel absent here: no pixel data).
    let images = findscu(
        port,
        query(
            "-S",
            &[
                "QueryRetrieveLevel=IMAGE",
                &format!("StudyInstanceUID={}", uid(1)),
                &format!("SeriesInstanceUID={}.1", uid(1)),
                "InstanceNumber=2",
                "SOPInstanceUID",
                "StudyDescription",
                "(0008,1090)",
            ],
        ),
    );
    assert_eq!(images.status, "Success", "{}", images.text);
    assert_eq!(images.matches.len(), 1);
    assert_eq!(images.values("0008,0018"), vec![format!("{}.1.2", uid(1))]);
    assert_eq!(images.values("0008,1030"), vec!["Synthetic study"]);
    assert!(
        images.matches[0].contains_key("0008,1090"),
        "{}",
        images.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_sets_latin1_utf8_and_component_groups() {
    let n = node_with_corpus(|_| {}).await;
    let port = n.port();
    // Latin-1 query bytes, Latin-1 answer.
    let mut a = query(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "SpecificCharacterSet=ISO_IR 100",
            "PatientID",
        ],
    );
    a.push("-k".into());
    a.push(OsString::from_vec(b"PatientName=m\xfcller*".to_vec()));
    let out = findscu(port, a);
    assert_eq!(out.status, "Success", "{}", out.text);
    assert_eq!(out.values("0010,0020"), vec!["P004"]);
    assert_eq!(
        out.matches[0]["0010,0010"],
        b"M\xfcller^J\xfcrgen".to_vec(),
        "name must come back in ISO_IR 100"
    );
    assert_eq!(out.matches[0]["0008,0005"], b"ISO_IR 100".to_vec());

    // UTF-8 query for a name Latin-1 cannot hold.
    let out = findscu(
        port,
        query(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "SpecificCharacterSet=ISO_IR 192",
                "PatientName=Dvořák*",
                "PatientID",
            ],
        ),
    );
    assert_eq!(out.values("0010,0020"), vec!["P005"], "{}", out.text);
    assert_eq!(
        String::from_utf8_lossy(&out.matches[0]["0010,0010"]),
        "Dvořák^Antonín"
    );

    // A Latin-1 query whose answer needs more than Latin-1 is answered in UTF-8.
    let out = findscu(
        port,
        query(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "SpecificCharacterSet=ISO_IR 100",
                "PatientID=P005",
                "PatientName",
            ],
        ),
    );
    assert_eq!(
        out.matches[0]["0008,0005"],
        b"ISO_IR 192".to_vec(),
        "{}",
        out.text
    );
    assert_eq!(
        String::from_utf8_lossy(&out.matches[0]["0010,0010"]),
        "Dvořák^Antonín"
    );

    // Ideographic and phonetic component groups match on their own, and group-wise.
    for pattern in [
        "PatientName=山田*",
        "PatientName=やまだ*",
        "PatientName=yamada^tarou",
        "PatientName==山田^太郎",
    ] {
        let out = findscu(
            port,
            query(
                "-S",
                &[
                    "QueryRetrieveLevel=STUDY",
                    "SpecificCharacterSet=ISO_IR 192",
                    pattern,
                    "PatientID",
                ],
            ),
        );
        assert_eq!(
            out.values("0010,0020"),
            vec!["P006"],
            "{pattern}: {}",
            out.text
        );
    }
    let out = findscu(
        port,
        query(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "SpecificCharacterSet=ISO_IR 192",
                "PatientName==Yamada^Tarou",
                "PatientID",
            ],
        ),
    );
    assert!(
        out.matches.is_empty(),
        "alphabetic name must not match the ideographic group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_sensitive_pn_when_configured() {
    let n = node_with_corpus(|c| c.query.pn_case_insensitive = false).await;
    let out = findscu(
        n.port(),
        query(
            "-S",
            &["QueryRetrieveLevel=STUDY", "PatientName=doe*", "PatientID"],
        ),
    );
    assert!(out.matches.is_empty(), "{}", out.text);
    let out = findscu(
        n.port(),
        query(
            "-S",
            &["QueryRetrieveLevel=STUDY", "PatientName=Doe*", "PatientID"],
        ),
    );
    assert_eq!(out.matches.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identifiers_get_clear_failures() {
    let n = node_with_corpus(|_| {}).await;
    let port = n.port();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-S", "-k", "PatientName=Doe*"], "QueryRetrieveLevel"),
        (vec!["-S", "-k", "QueryRetrieveLevel=WARD"], "WARD"),
        (
            vec!["-S", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"],
            "PATIENT",
        ),
        (
            vec!["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "Modality=CT"],
            "Modality",
        ),
        (
            vec!["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", "Modality=CT"],
            "StudyInstanceUID",
        ),
        (
            vec!["-P", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate"],
            "PatientID",
        ),
        (
            vec![
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyDate=2020-13",
            ],
            "StudyDate",
        ),
        (
            vec![
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID=1.2.abc",
            ],
            "StudyInstanceUID",
        ),
    ];
    for (mut a, needle) in cases {
        a.push("-d"); // debug output includes the response's Error Comment
        let out = findscu(port, args(&a));
        assert!(out.matches.is_empty(), "{a:?}");
        // With -d, findscu dumps the final response: its status and its Error Comment.
        let status_line = out
            .text
            .lines()
            .find(|l| l.contains("DIMSE Status"))
            .unwrap_or("");
        assert!(
            status_line.contains("0xa900") || status_line.contains("0xc000"),
            "{a:?}: {}",
            out.text
        );
        let comment = out
            .text
            .lines()
            .find(|l| l.contains("ErrorComment"))
            .unwrap_or("");
        assert!(
            comment.contains(needle),
            "{a:?}: error comment should name {needle}: {}",
            out.text
        );
    }
    // The node still answers.
    let ok = findscu(
        port,
        query("-S", &["QueryRetrieveLevel=STUDY", "PatientID"]),
    );
    assert_eq!(ok.matches.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_broad_queries_are_refused_not_truncated() {
    let n = node_with_corpus(|c| c.query.max_results = 3).await;
    let out = findscu(
        n.port(),
        args(&[
            "-d",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID",
        ]),
    );
    assert!(out.matches.is_empty());
    assert!(
        out.text.contains("DIMSE Status                  : 0xa700"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("more than the limit of 3"),
        "{}",
        out.text
    );
    let narrow = findscu(
        n.port(),
        query(
            "-S",
            &["QueryRetrieveLevel=STUDY", "PatientName=Doe*", "PatientID"],
        ),
    );
    assert_eq!(narrow.matches.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_cancel_stops_the_stream() {
    let n = TestNode::start_with(|c| {
        c.access.unknown_ae_services.insert(Service::Find);
    })
    .await;
    let dir = n.dir.path().join("many");
    let files: Vec<_> = (1..=400)
        .map(|i| {
            let p = dir.join(format!("{i}.dcm"));
            Spec::ct(500, 1, i, 0).write(&p).unwrap();
            p
        })
        .collect();
    let s = pacsd::tools::store(&n.scu("LOADER"), files, 4, false)
        .await
        .unwrap();
    assert_eq!(s.succeeded, 400);
    let study = Spec::ct(500, 1, 1, 0);
    let keys = vec![
        format!("StudyInstanceUID={}", study.study_uid),
        format!("SeriesInstanceUID={}", study.series_uid),
        "SOPInstanceUID".to_string(),
    ];

    // pacsd's SCU sends C-CANCEL before reading anything: the node sees it before it has
    // sent all 400 matches.
    let spec = FindSpec {
        model: Model::StudyRoot,
        level: "IMAGE".into(),
        keys: keys.clone(),
        charset: None,
        relational: false,
        cancel_after: Some(0),
    };
    let r = pacsd::tools::find(&n.scu("CANCELLER"), &spec)
        .await
        .unwrap();
    assert_eq!(r.status.code, 0xFE00, "{:?}", r.status);
    assert!(
        r.matches.len() < 400,
        "{} matches before cancel",
        r.matches.len()
    );

    // findscu --cancel 1: cancel after the first response. The node would otherwise write all
    // 400 small responses into the socket before findscu reads the first one, so each response
    // here asks for an attribute read from the stored object's header (BitsAllocated), which
    // paces the stream the way a slow query would.
    let mut a = args(&[
        "-S",
        "--cancel",
        "1",
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "SOPInstanceUID",
        "-k",
        "(0028,0100)",
    ]);
    for k in &keys[..2] {
        a.push("-k".into());
        a.push(k.into());
    }
    let out = findscu(n.port(), a);
    assert!(
        out.status.starts_with("Cancel"),
        "{}",
        out.text
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.matches.len() < 400);

    // Without cancel, all 400.
    let all = FindSpec {
        cancel_after: None,
        ..spec
    };
    let r = pacsd::tools::find(&n.scu("ALL"), &all).await.unwrap();
    assert_eq!((r.status.code, r.matches.len()), (0, 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relational_and_combined_datetime_via_extended_negotiation() {
    let n = node_with_corpus(|_| {}).await;
    // Relational: SERIES level without the study's UID.
    let spec = FindSpec {
        model: Model::StudyRoot,
        level: "SERIES".into(),
        keys: vec!["Modality=MR".into(), "SeriesInstanceUID".into()],
        charset: None,
        relational: true,
        cancel_after: None,
    };
    let r = pacsd::tools::find(&n.scu("REL"), &spec).await.unwrap();
    assert_eq!((r.status.code, r.matches.len()), (0, 1));
    // Without relational negotiation the same query is refused.
    let r = pacsd::tools::find(
        &n.scu("HIER"),
        &FindSpec {
            relational: false,
            ..spec
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status.code, 0xA900, "{:?}", r.status);
    // Combined date-time: from 2020-12-31 23:00 to 2021-06-15 12:00 is studies 2 and 3; the
    // same keys matched separately would exclude study 2 (23:59:59 is after 12:00).
    let keys = vec![
        "StudyDate=20201231-20210615".to_string(),
        "StudyTime=2300-1200".into(),
        "PatientID".into(),
    ];
    let combined = FindSpec {
        model: Model::StudyRoot,
        level: "STUDY".into(),
        keys,
        charset: None,
        relational: true,
        cancel_after: None,
    };
    let r = pacsd::tools::find(&n.scu("COMBINED"), &combined)
        .await
        .unwrap();
    let mut ids: Vec<String> = (0..r.matches.len())
        .map(|i| r.value(i, dicom_dictionary_std::tags::PATIENT_ID).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["P002", "P003"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_is_refused_to_aes_without_the_service() {
    let n = TestNode::start().await; // default policy: echo and store only
    let out = findscu(n.port(), query("-S", &["QueryRetrieveLevel=STUDY"]));
    assert!(out.matches.is_empty());
    assert!(
        out.text.contains("No Acceptable Presentation Contexts")
            || out.text.contains("No presentation context"),
        "{}",
        out.text
    );
}

#[test]
fn pacsd_find_prints_table_and_json() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(node_with_corpus(|_| {}));
    let port = n.port().to_string();
    let bin = env!("CARGO_BIN_EXE_pacsd");
    let out = Command::new(bin)
        .args([
            "find",
            "--port",
            &port,
            "-k",
            "PatientName=Doe*",
            "-k",
            "PatientID",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["PatientID"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["P001", "P002"]);
    let table = Command::new(bin)
        .args([
            "find",
            "--port",
            &port,
            "-l",
            "STUDY",
            "-k",
            "PatientID=P003",
            "-k",
            "AccessionNumber",
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.lines().next().unwrap().starts_with("PatientID"), "{t}");
    assert!(t.contains("P003") && t.contains("A300"), "{t}");
    drop(rt);
}

/// PS3.5 H.3.1 (Japanese, ISO 2022 IR 87) and I.2 (Korean, ISO 2022 IR 149) person names.
const YAMADA: &[u8] =
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
const HONG: &[u8] =
    b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_2022_japanese_and_korean_are_decoded_matched_and_answered() {
    let n = TestNode::start_with(|c| {
        c.access.unknown_ae_services.insert(Service::Find);
    })
    .await;
    // Files whose PN bytes are exactly the standard's examples (written byte for byte: the
    // first character set value is the ISO 646 default).
    let dir = n.dir.path().join("iso2022");
    let latin1 = |b: &[u8]| b.iter().map(|c| char::from(*c)).collect::<String>();
    let jp = spec(7, 1, 1, |s| {
        s.patient_id = "PJ1".into();
        s.patient_name = latin1(YAMADA);
        s.charset = "\\ISO 2022 IR 87".into();
    });
    let kr = spec(8, 1, 1, |s| {
        s.patient_id = "PK1".into();
        s.patient_name = latin1(HONG);
        s.charset = "\\ISO 2022 IR 149".into();
    });
    let (jp_path, kr_path) = (dir.join("jp.dcm"), dir.join("kr.dcm"));
    jp.write(&jp_path).unwrap();
    kr.write(&kr_path).unwrap();
    let out = storescu_paths(n.port(), &[], &[&jp_path, &kr_path]).await;
    assert!(out.status.success(), "{}", text(&out));

    let query = |charset: &str, name: &[u8]| {
        let mut a = args(&[
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID",
            "-k",
        ]);
        a.push(OsString::from(format!("SpecificCharacterSet={charset}")));
        a.push("-k".into());
        let mut k = b"PatientName=".to_vec();
        k.extend_from_slice(name);
        a.push(OsString::from_vec(k));
        findscu(n.port(), a)
    };
    // Japanese: ideographic "山田*" in ISO 2022 IR 87; the answer is the original bytes.
    let out = query("\\ISO 2022 IR 87", b"\x1b$B;3ED\x1b(B*");
    assert_eq!(out.values("0010,0020"), vec!["PJ1"], "{}", out.text);
    assert_eq!(out.matches[0]["0010,0010"], YAMADA.to_vec());
    assert_eq!(out.matches[0]["0008,0005"], b"\\ISO 2022 IR 87".to_vec());
    // The alphabetic group matches too, case-insensitively.
    assert_eq!(
        query("\\ISO 2022 IR 87", b"yamada*").values("0010,0020"),
        vec!["PJ1"]
    );
    // Korean: phonetic "홍*" in ISO 2022 IR 149.
    let out = query("\\ISO 2022 IR 149", b"\x1b$)C\xc8\xab*");
    assert_eq!(out.values("0010,0020"), vec!["PK1"], "{}", out.text);
    assert_eq!(out.matches[0]["0010,0010"], HONG.to_vec());
    // The same names asked in UTF-8 are found and answered in UTF-8.
    let out = query("ISO_IR 192", "山田*".as_bytes());
    assert_eq!(out.values("0010,0020"), vec!["PJ1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.matches[0]["0010,0010"]),
        "Yamada^Tarou=山田^太郎=やまだ^たろう"
    );
    let out = query("ISO_IR 192", "==홍^길동".as_bytes());
    assert_eq!(out.values("0010,0020"), vec!["PK1"], "{}", out.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_and_the_patient_study_only_model() {
    let n = node_with_corpus(|_| {}).await;
    // A sequence key (with an empty item key) is universal: every study matches, and the
    // sequence comes back (zero-length).
    let out = findscu(
        n.port(),
        query(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "PatientID",
                "ReferencedStudySequence",
                "ProcedureCodeSequence[0].CodeValue",
            ],
        ),
    );
    assert_eq!(out.status, "Success", "{}", out.text);
    assert_eq!(out.matches.len(), 6);
    assert!(
        out.matches
            .iter()
            .all(|m| m.contains_key("0008,1110") && m.contains_key("0008,1032")),
        "{}",
        out.text
    );
    // Patient/Study Only: PATIENT and STUDY levels, not SERIES.
    let out = findscu(
        n.port(),
        query(
            "-O",
            &[
                "QueryRetrieveLevel=PATIENT",
                "PatientName=Smith*",
                "PatientID",
            ],
        ),
    );
    assert_eq!(out.values("0010,0020"), vec!["P003"], "{}", out.text);
    let out = findscu(
        n.port(),
        query(
            "-O",
            &[
                "QueryRetrieveLevel=STUDY",
                "PatientID=P003",
                "AccessionNumber",
            ],
        ),
    );
    assert_eq!(out.values("0008,0050"), vec!["A300"], "{}", out.text);
    let out = findscu(
        n.port(),
        args(&[
            "-O",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            "PatientID=P003",
            "-k",
            &format!("StudyInstanceUID={}", uid(3)),
        ]),
    );
    assert!(out.matches.is_empty());
    assert!(out.status.starts_with("Error"), "{}", out.text);
}
