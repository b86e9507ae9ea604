//! Previews end to end: images sent with DCMTK `storescu` in every transfer syntax and
//! photometric interpretation DCMTK can make, rendered by the node's background worker and
//! compared with DCMTK's own rendering (`dcm2pnm`) of the same pixels; window/level and
//! MONOCHROME1 on synthetic gradients; objects without pixel data or with undecodable pixels;
//! pending previews surviving a restart; verification and repair of stored previews;
//! `pacsd preview` from the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use image::DynamicImage;
use pacsd::index::PreviewState;
use pacsd::node::Node;
use pacsd::storage::Expected;
use pacsd::synth::Spec;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pacsd");

async fn node_with_previews() -> TestNode {
    TestNode::start_with(|c| c.preview.enabled = true).await
}

/// A node with previews on and a folder `name` in its directory for the test's files.
async fn node_with_previews_and(name: &str) -> (TestNode, PathBuf) {
    let n = node_with_previews().await;
    let dir = n.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    (n, dir)
}

/// Write `ds` (with its SOP Class/Instance UIDs) as a Part 10 file in Explicit VR LE.
fn write_dataset(ds: InMemDicomObject, path: &Path) {
    let text = |t| {
        ds.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    };
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(text(tags::SOP_CLASS_UID))
        .media_storage_sop_instance_uid(text(tags::SOP_INSTANCE_UID))
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    ds.with_exact_meta(meta).write_to_file(path).unwrap();
}

fn put(ds: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: PrimitiveValue) {
    ds.put(DataElement::new(tag, vr, v));
}

/// A synthetic image: `spec`'s identity with the given pixel module.
#[allow(clippy::too_many_arguments)]
fn image(
    spec: &Spec,
    cols: u16,
    rows: u16,
    photometric: &str,
    samples: u16,
    bits: u16,
    pixels: PrimitiveValue,
    extra: impl FnOnce(&mut InMemDicomObject),
) -> InMemDicomObject {
    let mut s = spec.clone();
    s.size = 0;
    let mut ds = s.dataset();
    let us = |v: u16| PrimitiveValue::from(v);
    put(&mut ds, tags::SAMPLES_PER_PIXEL, VR::US, us(samples));
    put(
        &mut ds,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric.into(),
    );
    if samples == 3 {
        put(&mut ds, tags::PLANAR_CONFIGURATION, VR::US, us(0));
    }
    put(&mut ds, tags::ROWS, VR::US, us(rows));
    put(&mut ds, tags::COLUMNS, VR::US, us(cols));
    let allocated = if bits > 8 { 16 } else { 8 };
    put(&mut ds, tags::BITS_ALLOCATED, VR::US, us(allocated));
    put(&mut ds, tags::BITS_STORED, VR::US, us(bits));
    put(&mut ds, tags::HIGH_BIT, VR::US, us(bits - 1));
    put(&mut ds, tags::PIXEL_REPRESENTATION, VR::US, us(0));
    let vr = if allocated == 16 { VR::OW } else { VR::OB };
    put(&mut ds, tags::PIXEL_DATA, vr, pixels);
    extra(&mut ds);
    ds
}

/// A CT-like 16-bit image (12 bits stored, rescale -1024) of `cols` x `rows` with a window.
fn ct_image(spec: &Spec, cols: u16, rows: u16, window: Option<(&str, &str)>) -> InMemDicomObject {
    let seed = spec.instance_number as u32;
    let px: Vec<u16> = (0..cols as u32 * rows as u32)
        .map(|i| {
            let (x, y) = (i % cols as u32, i / cols as u32);
            // A body-like disc on a gradient, so that windowing shows structure.
            let (dx, dy) = (x as i32 - cols as i32 / 2, y as i32 - rows as i32 / 2);
            let disc = if dx * dx + dy * dy < (rows as i32 / 3).pow(2) {
                900
            } else {
                0
            };
            ((x * 5 + y * 3 + seed * 11 + disc) % 4096) as u16
        })
        .collect();
    grey12(spec, (cols, rows), "MONOCHROME2", px, "-1024", window)
}

/// A 12-bit greyscale image with a rescale intercept (slope 1) and, if given, a window.
fn grey12(
    spec: &Spec,
    (cols, rows): (u16, u16),
    photometric: &str,
    px: Vec<u16>,
    intercept: &str,
    window: Option<(&str, &str)>,
) -> InMemDicomObject {
    let pixels = PrimitiveValue::U16(px.into());
    image(spec, cols, rows, photometric, 1, 12, pixels, |ds| {
        put(ds, tags::RESCALE_INTERCEPT, VR::DS, intercept.into());
        put(ds, tags::RESCALE_SLOPE, VR::DS, "1".into());
        if let Some((c, w)) = window {
            put(ds, tags::WINDOW_CENTER, VR::DS, c.into());
            put(ds, tags::WINDOW_WIDTH, VR::DS, w.into());
        }
    })
}

/// An 8-bit RGB image: red along x, green along y, a blue square.
fn rgb_image(spec: &Spec, cols: u16, rows: u16) -> InMemDicomObject {
    let mut px = Vec::with_capacity(cols as usize * rows as usize * 3);
    for y in 0..rows as u32 {
        for x in 0..cols as u32 {
            let blue = if (x / 40 + y / 40) % 2 == 0 { 200 } else { 30 };
            px.extend_from_slice(&[
                (x * 255 / cols as u32) as u8,
                (y * 255 / rows as u32) as u8,
                blue,
            ]);
        }
    }
    let mut s = spec.clone();
    s.sop_class = uids::SECONDARY_CAPTURE_IMAGE_STORAGE.into();
    s.modality = "OT".into();
    image(
        &s,
        cols,
        rows,
        "RGB",
        3,
        8,
        PrimitiveValue::U8(px.into()),
        |_| {},
    )
}

/// Run a DCMTK tool and insist that it worked.
fn run(tool: &str, args: &[&str]) {
    let out = dcmtk(tool, args);
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
}

/// `src` as sent: itself when `tool` is empty, else converted by the DCMTK `tool` with
/// `flags` into `out`.
fn variant(tool: &str, flags: &[&str], src: &Path, out: &Path) -> PathBuf {
    if tool.is_empty() {
        return src.to_path_buf();
    }
    let mut a = flags.to_vec();
    let (i, o) = (s(src), s(out));
    a.push(&i);
    a.push(&o);
    run(tool, &a);
    out.to_path_buf()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Send each file (or directory) with its own storescu association, proposing only the
/// file's own transfer syntax (one association per syntax keeps storescu from converting).
async fn store(n: &TestNode, files: &[PathBuf]) {
    for f in files {
        let mut args: Vec<String> = vec!["-aec".into(), "PACSD".into()];
        if f.is_dir() {
            args.push("+sd".into());
        } else {
            args.push(propose_flag(f).into());
        }
        args.extend(["127.0.0.1".into(), n.port().to_string(), s(f)]);
        let out = dcmtk_async("storescu", args).await;
        assert!(
            out.status.success(),
            "storescu {}: {}",
            f.display(),
            text(&out)
        );
    }
}

/// storescu's option proposing the file's own transfer syntax first.
fn propose_flag(f: &Path) -> &'static str {
    let ts = dicom_object::open_file(f)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    match ts.as_str() {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => "-xi",
        "1.2.840.10008.1.2.2" => "-xb", // Explicit VR Big Endian (retired)
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => "-xd",
        uids::RLE_LOSSLESS => "-xr",
        uids::JPEG_LOSSLESS_SV1 => "-xs",
        uids::JPEG_BASELINE8_BIT => "-xy",
        uids::JPEGLS_LOSSLESS => "-xt",
        uids::JPEG2000_LOSSLESS => "-xv",
        _ => "-xe",
    }
}

/// Wait until no preview is pending.
async fn previews_settle(n: &TestNode) {
    assert!(
        eventually(Duration::from_secs(60), async || {
            n.node.index.preview_counts().await.unwrap().pending == 0
        })
        .await,
        "previews still pending: {:?}",
        n.node.index.preview_counts().await.unwrap()
    );
}

async fn preview_state(n: &TestNode, sop: &str) -> PreviewState {
    n.node
        .index
        .preview(sop)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{sop} not indexed"))
}

/// The stored preview of `sop`, read back through the checked storage path.
async fn stored_preview(n: &TestNode, sop: &str) -> DynamicImage {
    let PreviewState::Done {
        storage_key,
        size,
        digest,
    } = preview_state(n, sop).await
    else {
        panic!(
            "no stored preview for {sop}: {:?}",
            preview_state(n, sop).await
        );
    };
    assert!(
        storage_key.ends_with(&format!("{sop}.jpg")),
        "{storage_key}"
    );
    let v = n
        .node
        .storage
        .read(&Expected::new(storage_key, size, digest))
        .await
        .unwrap();
    image::load_from_memory_with_format(&v.bytes, image::ImageFormat::Jpeg).expect("a JPEG")
}

/// DCMTK's rendering of an uncompressed file as an 8-bit PNG, with `voi` options.
fn dcmtk_reference(src: &Path, voi: &[&str]) -> DynamicImage {
    let out = src.with_extension("ref.png");
    let mut args = vec!["+on"];
    args.extend_from_slice(voi);
    let (a, b) = (s(src), s(&out));
    args.push(&a);
    args.push(&b);
    run("dcm2pnm", &args);
    image::open(&out).unwrap()
}

/// Mean absolute difference per sample between the preview and the reference scaled to the
/// preview's size (grey compared as grey, colour as RGB).
fn mad(preview: &DynamicImage, reference: &DynamicImage) -> f64 {
    let (w, h) = (preview.width(), preview.height());
    let r = reference.resize_exact(w, h, image::imageops::FilterType::Triangle);
    let (a, b): (Vec<u8>, Vec<u8>) = if preview.color().has_color() {
        (preview.to_rgb8().into_raw(), r.to_rgb8().into_raw())
    } else {
        (preview.to_luma8().into_raw(), r.to_luma8().into_raw())
    };
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grey_previews_match_dcmtk_in_every_transfer_syntax() {
    let (n, dir) = node_with_previews_and("grey").await;
    // (tool, flags, lossy): each variant is made from its own uncompressed source.
    #[allow(unused_mut)]
    let mut variants: Vec<(&str, Vec<&str>, bool)> = vec![
        ("", vec![], false),
        ("dcmconv", vec!["+ti"], false),
        ("dcmconv", vec!["+tb"], false),
        ("dcmconv", vec!["+td"], false),
        ("dcmcrle", vec![], false),
        ("dcmcjpeg", vec!["+e1"], false),
        ("dcmcjpeg", vec!["+eb", "+un"], true),
    ];
    #[cfg(feature = "jpegls")]
    variants.push(("dcmcjpls", vec![], false));
    let mut cases = Vec::new();
    for (k, (tool, flags, lossy)) in variants.iter().enumerate() {
        let spec = Spec::ct(40, 1, k as u32 + 1, 0);
        // 8-bit for JPEG baseline; 16-bit with a window otherwise; one without a window
        // (min/max of the frame).
        let ds = if *lossy {
            let px: Vec<u8> = (0..320u32 * 200)
                .map(|i| ((i % 320) * 200 / 320 + (i / 320) / 4) as u8)
                .collect();
            image(
                &spec,
                320,
                200,
                "MONOCHROME2",
                1,
                8,
                PrimitiveValue::U8(px.into()),
                |_| {},
            )
        } else if k == 1 {
            ct_image(&spec, 320, 200, None)
        } else {
            ct_image(&spec, 320, 200, Some(("300", "1200")))
        };
        let windowed = ds.element(tags::WINDOW_CENTER).is_ok();
        let src = dir.join(format!("src{k}.dcm"));
        write_dataset(ds, &src);
        let sent = variant(tool, flags, &src, &dir.join(format!("v{k}.dcm")));
        cases.push((
            spec.sop_uid.clone(),
            src,
            sent,
            windowed,
            *lossy,
            tool.to_string(),
            (256, 160), // 320x200 fits 256x256 as 256x160: aspect ratio kept
        ));
    }
    // JPEG 2000 (OpenJPEG's opj_compress) of a square CT image without a window.
    let spec = Spec::ct(40, 1, 20, 300);
    let j2k_dir = dir.join("j2k");
    std::fs::create_dir_all(&j2k_dir).unwrap();
    let plain = j2k_dir.join("plain.dcm");
    spec.write(&plain).unwrap();
    cases.push((
        spec.sop_uid.clone(),
        plain,
        j2k_object(&spec, &j2k_dir),
        false,
        false,
        "opj_compress".to_string(),
        (256, 256),
    ));
    let sent: Vec<PathBuf> = cases.iter().map(|c| c.2.clone()).collect();
    store(&n, &sent).await;
    previews_settle(&n).await;
    for (sop, src, _, windowed, lossy, tool, dims) in &cases {
        let preview = stored_preview(&n, sop).await;
        assert_eq!((preview.width(), preview.height()), *dims, "{tool}");
        assert!(!preview.color().has_color(), "{tool}: grey stays grey");
        let voi: &[&str] = if *windowed { &["+Wi", "1"] } else { &["+Wm"] };
        let d = mad(&preview, &dcmtk_reference(src, voi));
        let bound = if *lossy { 6.0 } else { 4.0 };
        assert!(
            d < bound,
            "{tool}: mean difference {d:.2} to DCMTK's rendering"
        );
    }
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_previews_match_the_source_image() {
    let (n, dir) = node_with_previews_and("colour").await;
    let mut cases = Vec::new();
    #[allow(unused_mut)]
    let mut variants: Vec<(&str, Vec<&str>, f64)> = vec![
        ("", vec![], 4.0),
        ("dcmcrle", vec![], 4.0),
        ("dcmcjpeg", vec!["+e1"], 4.0),
        // Baseline JPEG: YBR_FULL_422, lossy.
        ("dcmcjpeg", vec!["+eb", "+un"], 8.0),
    ];
    #[cfg(feature = "jpegls")]
    variants.push(("dcmcjpls", vec![], 4.0));
    for (k, (tool, flags, bound)) in variants.iter().enumerate() {
        let spec = Spec::ct(41, 1, k as u32 + 1, 0);
        let src = dir.join(format!("src{k}.dcm"));
        write_dataset(rgb_image(&spec, 300, 300), &src);
        let sent = variant(tool, flags, &src, &dir.join(format!("v{k}.dcm")));
        let reference = dcmtk_reference(&src, &[]);
        cases.push((
            spec.sop_uid.clone(),
            sent,
            reference,
            *bound,
            tool.to_string(),
        ));
    }

    // A picture turned into DICOM by img2dcm (JPEG baseline, YBR_FULL_422): the reference is
    // the picture itself.
    let picture = image::RgbImage::from_fn(400, 300, |x, y| {
        image::Rgb([(x * 255 / 400) as u8, 90, (y * 255 / 300) as u8])
    });
    let jpg = dir.join("picture.jpg");
    DynamicImage::ImageRgb8(picture.clone())
        .save_with_format(&jpg, image::ImageFormat::Jpeg)
        .unwrap();
    let from_img2dcm = dir.join("img2dcm.dcm");
    run(
        "img2dcm",
        &["-k", "PatientID=IMG2DCM", &s(&jpg), &s(&from_img2dcm)],
    );
    let sop = dicom_object::open_file(&from_img2dcm)
        .unwrap()
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    cases.push((
        sop,
        from_img2dcm,
        DynamicImage::ImageRgb8(picture),
        8.0,
        "img2dcm".into(),
    ));

    // PALETTE COLOR: 8-bit indices into 16-bit tables; DCMTK renders it as the reference.
    let spec = Spec::ct(41, 2, 1, 0);
    let (cols, rows) = (400u16, 200u16);
    let idx: Vec<u8> = (0..cols as u32 * rows as u32)
        .map(|i| ((i % cols as u32) * 255 / cols as u32) as u8)
        .collect();
    let lut = |f: fn(u32) -> u32| -> PrimitiveValue {
        PrimitiveValue::U16((0..256u32).map(|i| (f(i) * 257) as u16).collect())
    };
    let palette = image(
        &spec,
        cols,
        rows,
        "PALETTE COLOR",
        1,
        8,
        PrimitiveValue::U8(idx.into()),
        |ds| {
            let desc = || PrimitiveValue::U16(vec![256u16, 0, 16].into());
            put(
                ds,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                VR::US,
                desc(),
            );
            put(
                ds,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                VR::US,
                desc(),
            );
            put(
                ds,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                VR::US,
                desc(),
            );
            put(
                ds,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                VR::OW,
                lut(|i| i),
            );
            put(
                ds,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                VR::OW,
                lut(|i| 255 - i),
            );
            put(
                ds,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                VR::OW,
                lut(|i| (i * 3) % 256),
            );
        },
    );
    let src = dir.join("palette.dcm");
    write_dataset(palette, &src);
    cases.push((
        spec.sop_uid.clone(),
        src.clone(),
        dcmtk_reference(&src, &[]),
        4.0,
        "PALETTE COLOR".into(),
    ));

    let sent: Vec<PathBuf> = cases.iter().map(|c| c.1.clone()).collect();
    store(&n, &sent).await;
    previews_settle(&n).await;
    for (sop, _, reference, bound, what) in &cases {
        let preview = stored_preview(&n, sop).await;
        assert!(preview.color().has_color(), "{what}: colour preview");
        assert!(
            preview.width().max(preview.height()) == 256,
            "{what}: fits 256"
        );
        let d = mad(&preview, reference);
        assert!(
            d < *bound,
            "{what}: mean difference {d:.2} to the reference"
        );
    }
    n.node.stop().await;
}

/// A 256x8 horizontal gradient of stored values 0..4095 (rescale identity).
fn gradient(spec: &Spec, photometric: &str, window: Option<(&str, &str)>) -> InMemDicomObject {
    let px: Vec<u16> = (0..256u32 * 8).map(|i| ((i % 256) * 16) as u16).collect();
    grey12(spec, (256, 8), photometric, px, "0", window)
}

/// Mean grey of column `x` of a preview.
fn column(img: &DynamicImage, x: u32) -> f64 {
    let g = img.to_luma8();
    (0..g.height())
        .map(|y| g.get_pixel(x, y).0[0] as f64)
        .sum::<f64>()
        / g.height() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_level_and_monochrome1_on_gradients() {
    let (n, dir) = node_with_previews_and("gradients").await;
    // Window 2048/1024 covers stored values 1536..2560, i.e. columns 96..160.
    let cases = [
        ("MONOCHROME2", Some(("2048", "1024"))),
        ("MONOCHROME1", Some(("2048", "1024"))),
        ("MONOCHROME2", None),
    ];
    let mut files = Vec::new();
    let mut sops = Vec::new();
    for (k, (pi, window)) in cases.iter().enumerate() {
        let spec = Spec::ct(42, 1, k as u32 + 1, 0);
        let f = dir.join(format!("g{k}.dcm"));
        write_dataset(gradient(&spec, pi, *window), &f);
        files.push(f);
        sops.push(spec.sop_uid.clone());
    }
    store(&n, &files).await;
    previews_settle(&n).await;

    let windowed = stored_preview(&n, &sops[0]).await;
    assert_eq!(
        (windowed.width(), windowed.height()),
        (256, 8),
        "not enlarged"
    );
    for x in [0, 40, 90] {
        assert!(
            column(&windowed, x) < 6.0,
            "below the window is black (x={x})"
        );
    }
    for x in [166, 200, 255] {
        assert!(
            column(&windowed, x) > 249.0,
            "above the window is white (x={x})"
        );
    }
    let mid = column(&windowed, 128);
    assert!(
        (mid - 128.0).abs() < 10.0,
        "window centre is mid-grey: {mid}"
    );
    assert!(column(&windowed, 112) < mid && mid < column(&windowed, 144));

    // MONOCHROME1: the same window, inverted.
    let inverted = stored_preview(&n, &sops[1]).await;
    for x in [0, 40, 90] {
        assert!(
            column(&inverted, x) > 249.0,
            "MONOCHROME1 low values are white (x={x})"
        );
    }
    for x in [166, 200, 255] {
        assert!(
            column(&inverted, x) < 6.0,
            "MONOCHROME1 high values are black (x={x})"
        );
    }

    // No window: the frame's min/max span the whole grey range.
    let full = stored_preview(&n, &sops[2]).await;
    assert!(column(&full, 0) < 6.0 && column(&full, 255) > 249.0);
    let quarter = column(&full, 64);
    assert!(
        (quarter - 64.0).abs() < 8.0,
        "linear between min and max: {quarter}"
    );
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_without_pixels_or_with_broken_pixels_get_no_preview_and_the_node_serves_on() {
    let (n, dir) = node_with_previews_and("odd").await;
    // No pixel data at all.
    let bare = Spec::ct(43, 1, 1, 0);
    let bare_file = dir.join("bare.dcm");
    bare.write(&bare_file).unwrap();
    // JPEG baseline whose fragment is not a JPEG stream.
    let broken = Spec::ct(43, 1, 2, 0);
    let mut ds = image(
        &broken,
        64,
        64,
        "MONOCHROME2",
        1,
        8,
        PrimitiveValue::Empty,
        |_| {},
    );
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![vec![0x42; 512]]),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(broken.sop_class.as_str())
        .media_storage_sop_instance_uid(broken.sop_uid.as_str())
        .transfer_syntax(uids::JPEG_BASELINE8_BIT)
        .build()
        .unwrap();
    let broken_file = dir.join("broken.dcm");
    ds.with_exact_meta(meta)
        .write_to_file(&broken_file)
        .unwrap();
    // And a good one after them.
    let good = Spec::ct(43, 1, 3, 64);
    let good_file = dir.join("good.dcm");
    good.write(&good_file).unwrap();

    store(&n, &[bare_file, broken_file, good_file]).await;
    previews_settle(&n).await;
    assert_eq!(
        preview_state(&n, &bare.sop_uid).await,
        PreviewState::NoPixelData
    );
    match preview_state(&n, &broken.sop_uid).await {
        PreviewState::Failed { reason } => {
            assert!(
                reason.contains("decoding"),
                "reason names the failed step: {reason}"
            )
        }
        other => panic!("broken pixels: {other:?}"),
    }
    assert_eq!(stored_preview(&n, &good.sop_uid).await.width(), 64);
    // No .jpg beside the objects without a preview.
    for i in 0..3 {
        let jpgs: Vec<_> = n
            .files_in_replica(i)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "jpg"))
            .collect();
        assert_eq!(
            jpgs.len(),
            1,
            "replica {i}: only the good image has a preview"
        );
    }
    let echo = echo_node(n.port()).await;
    assert_succeeded(&echo, "node still serving");
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_previews_survive_a_restart_and_stored_previews_are_verified_and_repaired() {
    // Previews off: the instances are stored and their previews left pending.
    let n = TestNode::start().await;
    let src = tempfile::tempdir().unwrap();
    small_corpus(src.path(), 44, 5);
    store(&n, &[src.path().to_path_buf()]).await;
    let counts = n.node.index.preview_counts().await.unwrap();
    assert_eq!((counts.pending, counts.done), (5, 0));
    let TestNode {
        node,
        mut config,
        dir,
    } = n;
    node.stop().await;

    // Restarted with previews on: the worker picks them up from the index.
    config.preview.enabled = true;
    let node = Node::open(config.clone()).unwrap().spawn().await.unwrap();
    let n = TestNode { node, config, dir };
    previews_settle(&n).await;
    assert_eq!(n.node.index.preview_counts().await.unwrap().done, 5);

    // `storage verify` knows previews: one deleted from replica 3 is found and healed.
    let v = n.verify().await;
    assert_eq!((v.objects, v.previews, v.bad_copies), (5, 5, 0));
    let jpg = n
        .files_in_replica(2)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    std::fs::remove_file(&jpg).unwrap();
    let v = n.verify().await;
    assert_eq!(v.bad_copies, 1);
    let queue = n.node.index.repair_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(queue[0].storage_key.ends_with(".jpg"));
    let r = pacsd::archive::maintenance::repair_pass(&n.node.index, &n.node.storage)
        .await
        .unwrap();
    assert_eq!(r.repaired, 1);
    assert!(jpg.exists(), "preview copy restored");
    let v = n.verify().await;
    assert_eq!((v.previews, v.bad_copies), (5, 0));
    n.node.stop().await;
}

/// A preview with no good copy left on any replica (removed, emptied, cut short) is still
/// served (rendered on the spot), and the repair pass, finding no good copy to heal from,
/// sends it back to be rendered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_lost_on_every_replica_is_served_and_rendered_again() {
    let n = node_with_previews().await;
    let src = tempfile::tempdir().unwrap();
    small_corpus(src.path(), 45, 3);
    store(&n, &[src.path().to_path_buf()]).await;
    previews_settle(&n).await;
    let jpg = n
        .files_in_replica(0)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    let relative = jpg.strip_prefix(n.replica_dir(0)).unwrap().to_path_buf();
    let sop = jpg.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(matches!(
        preview_state(&n, &sop).await,
        PreviewState::Done { .. }
    ));
    // Every copy bad: one emptied, one removed, one cut short.
    let copies: Vec<_> = (0..3).map(|i| n.replica_dir(i).join(&relative)).collect();
    std::fs::write(&copies[0], b"").unwrap();
    std::fs::remove_file(&copies[1]).unwrap();
    let whole = std::fs::read(&copies[2]).unwrap();
    std::fs::write(&copies[2], &whole[..whole.len() / 2]).unwrap();

    let served = pacsd::render::fetch::preview_of(&n.node.index, &n.node.storage, &sop)
        .await
        .unwrap();
    let img = image::load_from_memory(&served).unwrap();
    assert!(img.width() > 0 && img.height() > 0);

    let v = n.verify().await;
    assert_eq!((v.objects, v.previews, v.bad_copies), (3, 3, 3));
    let r = pacsd::archive::maintenance::repair_pass(&n.node.index, &n.node.storage)
        .await
        .unwrap();
    assert_eq!((r.repaired, r.rerender, r.failed), (0, 1, 0));
    assert!(n.node.index.repair_queue().await.unwrap().is_empty());
    // The render worker finds it pending again once idle, and stores it on every replica.
    previews_settle(&n).await;
    let PreviewState::Done { size, .. } = preview_state(&n, &sop).await else {
        panic!("{sop}: preview not rendered again");
    };
    for copy in &copies {
        assert_eq!(
            std::fs::metadata(copy).unwrap().len(),
            size,
            "{}",
            copy.display()
        );
    }
    let v = n.verify().await;
    assert_eq!((v.previews, v.bad_copies), (3, 0));
    // An object is never given up on: with no good copy its entries stay queued.
    let object_key = relative.with_extension("dcm");
    let forgotten = n
        .node
        .index
        .forget_lost_preview(object_key.to_str().unwrap());
    assert!(!forgotten.await.unwrap());
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacsd_preview_writes_a_preview_and_a_contact_sheet() {
    let (n, dir) = node_with_previews_and("cli").await;
    // Two series of one study; series 2's first image (lowest Instance Number) is number 1.
    // Every image has its own window, so that each tile can only match its own image.
    let mut files = Vec::new();
    for (series, number, window) in [
        (1, 1, ("0", "2000")),
        (1, 2, ("1500", "300")),
        (2, 2, ("-500", "600")),
        (2, 1, ("800", "400")),
    ] {
        let spec = Spec::ct(45, series, number, 0);
        let f = dir.join(format!("s{series}-{number}.dcm"));
        write_dataset(ct_image(&spec, 300, 150, Some(window)), &f);
        files.push(f);
    }
    store(&n, &files).await;
    previews_settle(&n).await;
    let config = n.dir.path().join("pacsd.toml");
    write_cli_config(&n.config, &config);
    let sop = Spec::ct(45, 1, 1, 0).sop_uid;
    let out = dir.join("one.jpg");
    let run_bin = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run pacsd")
    };
    let o = run_bin(&["preview", "-c", &s(&config), &sop, "-o", &s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&out).unwrap().len(),
        {
            let PreviewState::Done { size, .. } = preview_state(&n, &sop).await else {
                panic!()
            };
            size as usize
        },
        "the stored preview is written as it is"
    );
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (256, 128));

    let sheet = dir.join("sheet.jpg");
    let study = Spec::ct(45, 1, 1, 0).study_uid;
    let o = run_bin(&[
        "preview",
        "-c",
        &s(&config),
        "--study",
        &study,
        "-o",
        &s(&sheet),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 series"), "{}", text(&o));
    let img = image::open(&sheet).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 260 + 4, 264));
    // Each tile is the preview of its series' first image.
    for (col, series) in [(0u32, 1), (1, 2)] {
        let first = stored_preview(&n, &Spec::ct(45, series, 1, 0).sop_uid).await;
        let tile = img.crop_imm(4 + col * 260, 4 + 64, 256, 128);
        let d = mad(&first, &tile);
        assert!(
            d < 4.0,
            "tile {col} is series {series}'s first image ({d:.2})"
        );
    }

    // Unknown UIDs are a clear error, not a crash.
    let o = run_bin(&["preview", "-c", &s(&config), "1.2.3.999", "-o", &s(&out)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no instance with SOP Instance UID 1.2.3.999"),
        "{}",
        text(&o)
    );
    n.node.stop().await;
}
