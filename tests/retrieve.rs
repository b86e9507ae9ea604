//! C-MOVE and C-GET against real clients and destinations: DCMTK movescu with a DCMTK storescp
//! destination, getscu, and pacsd's own SCU (cancel, destination killed mid-move).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use dicom_dictionary_std::{tags, uids};
use pacsd::config::Service;
use pacsd::synth::Spec;
use pacsd::tools::{FindSpec, Model};

async fn node_with(dest_port: u16, specs: &[Spec]) -> TestNode {
    node_configured(dest_port, specs, |_| {}).await
}

/// `node_with`, its configuration changed by `tweak` first.
async fn node_configured(
    dest_port: u16,
    specs: &[Spec],
    tweak: impl FnOnce(&mut pacsd::config::Config),
) -> TestNode {
    let n = TestNode::start_with(|c| {
        c.access
            .unknown_ae_services
            .extend([Service::Find, Service::Move, Service::Get]);
        c.peers = vec![loopback_peer("DEST", dest_port, &[])];
        tweak(c);
    })
    .await;
    let dir = n.dir.path().join("src");
    let files = write_specs(&dir, specs);
    if files.is_empty() {
        return n;
    }
    let r = pacsd::tools::store(&n.scu("LOADER"), files, 2, false)
        .await
        .unwrap();
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    n
}

fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let (_, off) = pacsd::part10::split(&bytes).unwrap();
    bytes[off..].to_vec()
}

fn pixel_data(path: &Path) -> Vec<u8> {
    let obj = dicom_object::open_file(path).unwrap();
    obj.element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned()
}

fn sop_uid(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

fn two_studies() -> Vec<Spec> {
    let mut v = Vec::new();
    for (study, series, n) in [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 1, 1), (2, 1, 2)] {
        let mut s = Spec::ct(study, series, n, 32);
        s.patient_id = format!("P{study}");
        v.push(s);
    }
    v
}

/// DCMTK movescu of study `study` (study root) to the destination the node knows, off the
/// runtime; the final response must be Success.
async fn move_study(port: u16, study: &str) {
    let study = study.to_string();
    let out = tokio::task::spawn_blocking(move || {
        movescu(
            port,
            &[
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                &format!("StudyInstanceUID={study}"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        out.contains("Received Final Move Response (Success)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movescu_every_level_arrives_byte_identical() {
    let dest = Destination::start(&[]);
    let specs = two_studies();
    let n = node_with(dest.port, &specs).await;
    let port = n.port();
    let study1 = specs[0].study_uid.clone();

    move_study(port, &study1).await;
    assert_eq!(dest.files().len(), 3);
    // Byte-identical data sets (stored in Explicit VR LE, destination accepts it; storescp +B).
    for f in dest.files() {
        let uid = sop_uid(&f);
        let spec = specs
            .iter()
            .find(|s| s.sop_uid == uid)
            .expect("a sent instance");
        let inst = n.stored(&spec.sop_uid).await;
        let stored = n.node.storage.get(&inst.storage_key).await.unwrap();
        let (_, off) = pacsd::part10::split(&stored).unwrap();
        assert_eq!(data_set(&f), stored[off..].to_vec(), "{uid}");
    }

    // SERIES and IMAGE level (Study Root), PATIENT level (Patient Root).
    let (s2, se2, i2) = (
        specs[3].study_uid.clone(),
        specs[3].series_uid.clone(),
        specs[4].sop_uid.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let a = movescu(
            port,
            &[
                "-S",
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                &format!("StudyInstanceUID={s2}"),
                "-k",
                &format!("SeriesInstanceUID={se2}"),
            ],
        );
        let b = movescu(
            port,
            &[
                "-S",
                "-k",
                "QueryRetrieveLevel=IMAGE",
                "-k",
                &format!("StudyInstanceUID={s2}"),
                "-k",
                &format!("SeriesInstanceUID={se2}"),
                "-k",
                &format!("SOPInstanceUID={i2}"),
            ],
        );
        let c = movescu(
            port,
            &[
                "-P",
                "-k",
                "QueryRetrieveLevel=PATIENT",
                "-k",
                "PatientID=P2",
            ],
        );
        format!("{a}\n{b}\n{c}")
    })
    .await
    .unwrap();
    assert_eq!(
        out.matches("Received Final Move Response (Success)")
            .count(),
        3,
        "{out}"
    );
    // 3 + 2 (series) + 1 (image) + 2 (patient) sub-operations; storescp overwrites same UIDs.
    assert_eq!(dest.files().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_is_a801() {
    let dest = Destination::start(&[]);
    let specs = two_studies();
    let n = node_with(dest.port, &specs).await;
    let port = n.port();
    let keys = study_retrieve_keys(&specs[0].study_uid);
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["-aem", "NOBODY"];
        args.extend(keys.iter().map(String::as_str));
        scu("movescu", port, &args)
    })
    .await
    .unwrap();
    assert!(out.contains("MoveDestinationUnknown"), "{out}");
    assert!(dest.files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getscu_receives_every_instance_on_the_same_association() {
    let specs = two_studies();
    let n = node_with(1, &specs).await;
    let out_dir = tempfile::tempdir().unwrap();
    getscu_study(n.port(), &specs[0].study_uid, out_dir.path(), 3).await;
    let files = pacsd::tools::collect_files(&[out_dir.path().to_path_buf()]).unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        let uid = sop_uid(&f);
        let original = n.dir.path().join("src").join(format!(
            "{}.dcm",
            specs.iter().position(|s| s.sop_uid == uid).unwrap()
        ));
        assert_eq!(pixel_data(&f), pixel_data(&original), "{uid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_only_destination_gets_re_encoded_and_decompressed_images() {
    let dest = Destination::start(&["+xi"]);
    let mut specs = two_studies();
    specs.truncate(3); // study 1
    let n = node_with(dest.port, &specs).await;
    let port = n.port();
    let study = specs[0].study_uid.clone();
    move_study(port, &study).await;
    let files = dest.files();
    assert_eq!(files.len(), 3);
    for f in &files {
        let obj = dicom_object::open_file(f).unwrap();
        assert_eq!(
            obj.meta().transfer_syntax(),
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            "destination only accepts ILE"
        );
        let uid = sop_uid(f);
        let i = specs.iter().position(|s| s.sop_uid == uid).unwrap();
        assert_eq!(
            pixel_data(f),
            pixel_data(&n.dir.path().join("src").join(format!("{i}.dcm"))),
            "pixels of {uid}"
        );
    }

    // Compressed objects (stored as received) are decompressed for this destination with
    // dicom-pixeldata; lossless codecs give back the original pixels exactly.
    #[allow(unused_mut)]
    let mut variants: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        ("dcmcjpeg", vec!["+e1"], "-xs", uids::JPEG_LOSSLESS_SV1),
        ("dcmcrle", vec![], "-xr", uids::RLE_LOSSLESS),
        (
            "dcmconv",
            vec!["+td"],
            "-xd",
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        // Lossy: 8-bit image, compared within a tolerance below.
        (
            "dcmcjpeg",
            vec!["+eb", "+un"],
            "-xy",
            uids::JPEG_BASELINE8_BIT,
        ),
    ];
    // JPEG-LS decoding is built with the `jpegls` feature (CharLS; `.ci/run` enables it).
    #[cfg(feature = "jpegls")]
    variants.push(("dcmcjpls", vec![], "-xt", uids::JPEGLS_LOSSLESS));
    let port_s = port.to_string();
    for (k, (tool, flags, propose, ts)) in variants.iter().enumerate() {
        let mut s = Spec::ct(9, 1, k as u32 + 1, 32);
        let lossy = *ts == uids::JPEG_BASELINE8_BIT;
        s.eight_bit = lossy;
        let plain = n.dir.path().join(format!("plain{k}.dcm"));
        let compressed = n.dir.path().join(format!("c{k}.dcm"));
        s.write(&plain).unwrap();
        let c = compressed.to_str().unwrap();
        let conv = dcmtk_convert(tool, flags, &plain, &compressed);
        assert!(conv.status.success(), "{tool}: {}", text(&conv));
        let stored = dcmtk(
            "storescu",
            &["-v", propose, "-aec", "PACSD", "127.0.0.1", &port_s, c],
        );
        assert!(stored.status.success(), "{}", text(&stored));
        let inst = n
            .node
            .index
            .instance(&s.sop_uid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{ts} not stored: {}", text(&stored)));
        assert_eq!(inst.transfer_syntax_uid, *ts, "stored as received");
        let (study, sop) = (s.study_uid.clone(), s.sop_uid.clone());
        let before = dest.files().len();
        let out = tokio::task::spawn_blocking(move || {
            movescu(
                port,
                &[
                    "-S",
                    "-k",
                    "QueryRetrieveLevel=IMAGE",
                    "-k",
                    &format!("StudyInstanceUID={study}"),
                    "-k",
                    &format!("SeriesInstanceUID={study}.1"),
                    "-k",
                    &format!("SOPInstanceUID={sop}"),
                ],
            )
        })
        .await
        .unwrap();
        assert!(
            out.contains("Received Final Move Response (Success)"),
            "{ts}: {out}"
        );
        assert_eq!(dest.files().len(), before + 1);
        let received = dest
            .files()
            .into_iter()
            .find(|f| sop_uid(f) == s.sop_uid)
            .unwrap();
        let obj = dicom_object::open_file(&received).unwrap();
        assert_eq!(
            obj.meta().transfer_syntax(),
            uids::IMPLICIT_VR_LITTLE_ENDIAN
        );
        let (got, want) = (pixel_data(&received), pixel_data(&plain));
        if lossy {
            // JPEG baseline is lossy: the mean absolute difference stays small.
            assert_eq!(got.len(), want.len());
            let mad = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .sum::<f64>()
                / want.len() as f64;
            assert!(mad < 4.0, "{ts}: mean absolute difference {mad}");
        } else {
            assert_eq!(got, want, "{ts}: pixels differ after decompression");
        }
    }
}

#[test]
fn undecodable_pixel_data_is_an_error_not_a_wrong_syntax() {
    // An encapsulated object whose fragments are garbage: transcoding reports why.
    let s = Spec::ct(3, 1, 1, 0);
    let ds = encode(&s);
    let file =
        pacsd::part10::build(&s.sop_class, &s.sop_uid, uids::JPEG_LOSSLESS_SV1, &ds).unwrap();
    let err = pacsd::service::retrieve::transcode(
        &file,
        uids::JPEG_LOSSLESS_SV1,
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
    );
    assert!(err.is_err());
    let into_compressed = pacsd::service::retrieve::transcode(
        &file,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        uids::JPEG_LOSSLESS_SV1,
    );
    assert!(matches!(
        into_compressed,
        Err(pacsd::service::retrieve::TranscodeError::CompressedTarget(
            _
        ))
    ));
}

/// A Study Root STUDY-level retrieve of one study, cancelled after `cancel_after` responses.
fn whole_study(study_uid: &str, cancel_after: Option<usize>) -> FindSpec {
    FindSpec {
        model: Model::StudyRoot,
        level: "STUDY".into(),
        keys: vec![format!("StudyInstanceUID={study_uid}")],
        charset: None,
        relational: false,
        cancel_after,
    }
}

/// A Pending response after every sub-operation (the tests below cancel after N of them).
fn every_sub_operation(c: &mut pacsd::config::Config) {
    c.retrieve.pending_interval_ms = 0;
}

/// `[retrieve].pending_interval_ms`: 0 gives a Pending after every sub-operation but the last;
/// an interval longer than the whole retrieve gives one, after the first; the counters of the
/// final response are whole either way, for C-MOVE and C-GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_responses_follow_the_configured_interval() {
    let dest = Destination::start(&[]);
    let specs: Vec<Spec> = (1..=40).map(|i| Spec::ct(42, 1, i, 32)).collect();
    let spec = whole_study(&specs[0].study_uid, None);
    for (interval_ms, pendings) in [(0, 39), (600_000, 1)] {
        let n = node_configured(dest.port, &specs, |c| {
            c.retrieve.pending_interval_ms = interval_ms
        })
        .await;
        let r = pacsd::tools::move_to(&n.scu("MOVER"), &spec, "DEST", false)
            .await
            .unwrap();
        assert_eq!((r.status.code, r.completed), (0, 40), "{r:?}");
        assert_eq!(
            r.pending_responses, pendings,
            "C-MOVE, {interval_ms} ms: {r:?}"
        );
        let out = tempfile::tempdir().unwrap();
        let r = pacsd::tools::get_into(&n.scu("GETTER"), &spec, out.path(), false)
            .await
            .unwrap();
        assert_eq!((r.status.code, r.completed), (0, 40), "{r:?}");
        assert_eq!(
            r.pending_responses, pendings,
            "C-GET, {interval_ms} ms: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_destination_killed_mid_move() {
    let mut dest = Destination::start(&[]);
    let specs: Vec<Spec> = (1..=600).map(|i| Spec::ct(40, 1, i, 32)).collect();
    let n = node_configured(dest.port, &specs, every_sub_operation).await;
    let spec = whole_study(&specs[0].study_uid, Some(5));

    // C-CANCEL after 5 Pending responses.
    let r = pacsd::tools::move_to(&n.scu("MOVER"), &spec, "DEST", false)
        .await
        .unwrap();
    assert_eq!(r.status.code, 0xFE00, "{r:?}");
    assert!(r.completed >= 5 && (r.completed as usize) < 600, "{r:?}");

    // Destination killed while the move runs: counts add up, the node keeps serving.
    let before = dest.files().len();
    let opts = n.scu("MOVER");
    let all = FindSpec {
        cancel_after: None,
        ..spec
    };
    let moving =
        tokio::spawn(async move { pacsd::tools::move_to(&opts, &all, "DEST", false).await });
    assert!(
        eventually(Duration::from_secs(20), async || dest.files().len()
            >= before + 5)
        .await
    );
    dest.kill();
    let r = moving.await.unwrap().unwrap();
    assert!(matches!(r.status.code, 0xB000 | 0xA702), "{r:?}");
    assert!(r.failed > 0, "{r:?}");
    assert_eq!(
        u32::from(r.completed) + u32::from(r.failed) + u32::from(r.warning),
        600,
        "{r:?}"
    );
    let (code, _) = pacsd::tools::echo(&n.scu("AFTER")).await.unwrap();
    assert_eq!(code, 0);
}

/// A C-CANCEL that arrives while the SCP waits for a C-GET sub-operation's C-STORE response is
/// kept and honoured before the next sub-operation: the final status is Cancel with counts
/// that add up, only the instances sent before it are on disk, and the association serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_get_cancelled_between_sub_operations() {
    let specs: Vec<Spec> = (1..=200).map(|i| Spec::ct(41, 1, i, 32)).collect();
    let n = node_configured(1, &specs, every_sub_operation).await;
    let out = tempfile::tempdir().unwrap();
    let spec = whole_study(&specs[0].study_uid, Some(3));
    let r = pacsd::tools::get_into(&n.scu("GETTER"), &spec, out.path(), false)
        .await
        .unwrap();
    assert_eq!(r.status.code, 0xFE00, "{r:?}");
    assert!(r.completed >= 3 && r.completed < 200, "{r:?}");
    assert_eq!(
        r.remaining.map(u32::from).unwrap_or(0) + u32::from(r.completed) + u32::from(r.failed),
        200,
        "{r:?}"
    );
    let files = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(files, usize::from(r.completed), "{r:?}");

    // The whole study afterwards, on a new association: nothing left over from the cancel.
    let all = FindSpec {
        cancel_after: None,
        ..spec
    };
    let again = tempfile::tempdir().unwrap();
    let r = pacsd::tools::get_into(&n.scu("GETTER"), &all, again.path(), false)
        .await
        .unwrap();
    assert_eq!((r.status.code, r.completed), (0, 200), "{r:?}");
}

#[test]
fn pacsd_move_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dest = Destination::start(&[]);
    let specs = two_studies();
    let n = rt.block_on(node_with(dest.port, &specs));
    let out = Command::new(env!("CARGO_BIN_EXE_pacsd"))
        .args([
            "move",
            "--port",
            &n.port().to_string(),
            "--dest",
            "DEST",
            "--no-progress",
            "-k",
            &format!("StudyInstanceUID={}", specs[3].study_uid),
        ])
        .output()
        .unwrap();
    assert_printed(&out, "2 completed, 0 failed");
    assert_eq!(dest.files().len(), 2);
    drop(rt);
}

#[test]
fn pacsd_get_cli_writes_every_instance() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let specs = two_studies();
    let n = rt.block_on(node_with(1, &specs));
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pacsd"))
        .args([
            "get",
            "--port",
            &n.port().to_string(),
            "--no-progress",
            "-o",
        ])
        .arg(out_dir.path())
        .args(["-k", &format!("StudyInstanceUID={}", specs[0].study_uid)])
        .output()
        .unwrap();
    assert_printed(&out, "3 completed, 0 failed");
    for s in &specs[..3] {
        let got = out_dir.path().join(format!("{}.dcm", s.sop_uid));
        let inst = rt
            .block_on(n.node.index.instance(&s.sop_uid))
            .unwrap()
            .unwrap();
        let stored = rt.block_on(n.node.storage.get(&inst.storage_key)).unwrap();
        assert_eq!(
            std::fs::read(&got).unwrap(),
            stored.to_vec(),
            "{} differs from the stored object",
            s.sop_uid
        );
    }
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_2000_is_decompressed_for_an_implicit_only_destination() {
    let dest = Destination::start(&["+xi"]);
    let n = node_with(dest.port, &[]).await;
    let spec = Spec::ct(12, 1, 1, 32);
    let plain = n.dir.path().join("plain.dcm");
    spec.write(&plain).unwrap();
    let j2k = j2k_object(&spec, n.dir.path());
    let stored = storescu_paths(n.port(), &["-xv"], &[&j2k]).await;
    assert!(stored.status.success(), "{}", text(&stored));
    let inst = n.stored(&spec.sop_uid).await;
    assert_eq!(inst.transfer_syntax_uid, uids::JPEG2000_LOSSLESS);
    let (port, study) = (n.port(), spec.study_uid.clone());
    move_study(port, &study).await;
    let received = dest.files().into_iter().next().expect("one file");
    assert_eq!(
        dicom_object::open_file(&received)
            .unwrap()
            .meta()
            .transfer_syntax(),
        uids::IMPLICIT_VR_LITTLE_ENDIAN
    );
    assert_eq!(
        pixel_data(&received),
        pixel_data(&plain),
        "JPEG 2000 lossless must give the pixels back"
    );
}
