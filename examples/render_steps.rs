//! Where the time of a rendered image and of a preview goes, step by step, on one stored
//! object (for choosing what to make faster; the figures in src/render/mod.rs and Cargo.toml
//! come from it).
//!
//! Usage: render_steps FILE [ROUNDS]      (FILE: a Part 10 image, e.g. from `pacsd synth`)
//!
//! Each step is timed alone over ROUNDS rounds (default 200) and printed as ms per round:
//! (1) parsing the Part 10 bytes; (2) decoding the first frame; (3) the grey pipeline to 8
//! bits (rescale, VOI) as dicom-pixeldata does it and as `render::grey` does it for 16-bit grey;
//! (4) JPEG encoding at full size, with pacsd's encoder (grey) and with jpeg-encoder; (5)
//! scaling to the preview side (the image crate's Triangle resize, then `render::fit`); then
//! the two whole paths, `render_frame` (what /rendered decodes) and `render_preview`.

use std::time::Instant;

use dicom_pixeldata::{ConvertOptions, PixelDecoder};
use pacsd::render;

fn per_round(name: &str, rounds: u32, mut step: impl FnMut()) {
    let t = Instant::now();
    for _ in 0..rounds {
        step();
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!("{name:<28} {ms:.3} ms");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: render_steps FILE [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: u32 = args.next().and_then(|r| r.parse().ok()).unwrap_or(200);
    let bytes = std::fs::read(&file).expect("reading FILE");
    let max = pacsd::config::DEFAULT_MAX_OBJECT_SIZE;
    let obj = pacsd::part10::open(&bytes, max).expect("a Part 10 file");
    let frame = obj
        .decode_pixel_data_frame(0)
        .expect("a decodable first frame");
    let options = ConvertOptions::new().force_8bit();
    let image = frame
        .to_dynamic_image_with_options(0, &options)
        .expect("an image");
    println!("{}x{} {:?}", image.width(), image.height(), image.color());

    per_round("1. parse", rounds, || {
        pacsd::part10::open(&bytes, max).unwrap();
    });
    per_round("2. decode frame", rounds, || {
        obj.decode_pixel_data_frame(0).unwrap();
    });
    per_round("3a. to 8 bits (pixeldata)", rounds, || {
        frame.to_dynamic_image_with_options(0, &options).unwrap();
    });
    per_round("3b. to 8 bits (render::grey)", rounds, || {
        let _ = render::grey::grey16(&frame, None);
    });
    per_round("4a. JPEG, full size", rounds, || {
        render::encode_jpeg(&image).unwrap();
    });
    let grey = image.to_luma8();
    per_round("4b. JPEG (jpeg-encoder)", rounds, || {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, render::JPEG_QUALITY)
            .encode(
                grey.as_raw(),
                grey.width() as u16,
                grey.height() as u16,
                jpeg_encoder::ColorType::Luma,
            )
            .unwrap();
    });
    let side = render::PREVIEW_SIDE;
    per_round("5a. scale (image, Triangle)", rounds, || {
        let _ = image.resize(side, side, image::imageops::FilterType::Triangle);
    });
    per_round("5b. scale (render::fit)", rounds, || {
        render::fit(image.clone(), side);
    });
    per_round("render_frame", rounds, || {
        render::render_frame(&bytes, 0, None).unwrap();
    });
    per_round("render_preview", rounds, || {
        render::render_preview(&bytes).unwrap();
    });
}
