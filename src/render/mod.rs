//! Previews: the first frame of a stored image rendered to a small JPEG, the way a viewer
//! would first show it (PS3.4 N.2 grayscale pipeline: Modality LUT, then VOI LUT or window,
//! MONOCHROME1 inverted; colour converted to RGB). Pure computation on the Part 10 bytes; the
//! worker that feeds it from storage is in `worker`.

pub mod fetch;
pub mod grey;
mod jpeg;
pub mod worker;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, PixelDecoder};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// Longest side of a preview, in pixels (the image is scaled to fit, aspect ratio kept; a
/// smaller image is not enlarged).
pub const PREVIEW_SIDE: u32 = 256;
/// JPEG quality of previews (1-100).
pub const JPEG_QUALITY: u8 = 85;

/// Pixel data elements: an object with none of them has nothing to preview (SR, RT plans,
/// waveforms, presentation states, ...).
const PIXEL_ELEMENTS: [Tag; 3] = [
    tags::PIXEL_DATA,
    tags::FLOAT_PIXEL_DATA,
    tags::DOUBLE_FLOAT_PIXEL_DATA,
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("reading the stored object: {0}")]
    Read(String),
    #[error("decoding the pixel data: {0}")]
    Decode(String),
    #[error("converting the pixels to an image: {0}")]
    Convert(String),
    #[error("reading the palette colour lookup tables: {0}")]
    Palette(String),
    #[error("encoding the JPEG: {0}")]
    Encode(String),
}

/// A JPEG preview of the Part 10 object, or None when it has no pixel data.
pub fn render_preview(part10: &[u8]) -> Result<Option<Vec<u8>>, RenderError> {
    let Some(image) = render_image(part10)? else {
        return Ok(None);
    };
    encode_jpeg(&fit(image, PREVIEW_SIDE)).map(Some)
}

/// The first frame as an 8-bit grey or RGB image at full size, or None without pixel data.
/// The pixel decoders run inside the panic boundary of `crate::dataset`.
pub fn render_image(part10: &[u8]) -> Result<Option<DynamicImage>, RenderError> {
    render_frame(part10, 0, None)
}

/// Frame `frame` (0-based) rendered as `render_image` renders the first; `window` (center,
/// width, linear) replaces the object's own VOI LUT or window when given.
pub fn render_frame(
    part10: &[u8],
    frame: u32,
    window: Option<(f64, f64)>,
) -> Result<Option<DynamicImage>, RenderError> {
    let obj = crate::part10::open(part10, crate::config::DEFAULT_MAX_OBJECT_SIZE)
        .map_err(|e| RenderError::Read(e.to_string()))?;
    crate::dataset::contain("decoding pixel data for a preview", || {
        image_of(&obj, frame, window)
    })
    .map_err(|e| RenderError::Decode(e.to_string()))?
}

fn image_of(
    obj: &DefaultDicomObject,
    frame: u32,
    window: Option<(f64, f64)>,
) -> Result<Option<DynamicImage>, RenderError> {
    if PIXEL_ELEMENTS
        .iter()
        .all(|&t| obj.element_opt(t).ok().flatten().is_none())
    {
        return Ok(None);
    }
    let pi = obj
        .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let frame = obj
        .decode_pixel_data_frame(frame)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    if pi == "PALETTE COLOR" {
        let indices: Vec<u16> = frame
            .to_vec_frame_with_options(
                0,
                &ConvertOptions::new().with_modality_lut(dicom_pixeldata::ModalityLutOption::None),
            )
            .map_err(|e| RenderError::Convert(e.to_string()))?;
        let palette = Palette::from_object(obj)?;
        return Ok(Some(DynamicImage::ImageRgb8(palette.apply(
            &indices,
            frame.columns(),
            frame.rows(),
        )?)));
    }
    // dicom-pixeldata's default pipeline is the one wanted: rescale, then the first VOI LUT
    // or window of the object (min/max of the frame when there is none), MONOCHROME1
    // inverted, YBR converted to RGB; for 16-bit grey, the same image computed faster.
    if let Some(grey) = grey::grey16(&frame, window) {
        return Ok(Some(DynamicImage::ImageLuma8(grey)));
    }
    let mut options = ConvertOptions::new().force_8bit();
    if let Some((center, width)) = window {
        options = options.with_voi_lut(dicom_pixeldata::VoiLutOption::Custom(
            dicom_pixeldata::WindowLevel { center, width },
        ));
    }
    let image = frame
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| RenderError::Convert(e.to_string()))?;
    Ok(Some(match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLuma16(_) => {
            DynamicImage::ImageLuma8(image.to_luma8())
        }
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }))
}

/// Scale to fit in `side` x `side`, aspect ratio kept, never enlarged.
pub fn fit(image: DynamicImage, side: u32) -> DynamicImage {
    fit_within(image, side, side)
}

/// Scale to fit in `width` x `height`, aspect ratio kept (each side at least 1), never
/// enlarged; a bilinear filter widened to the scale, as the image crate's Triangle resize.
pub fn fit_within(image: DynamicImage, width: u32, height: u32) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    if w <= width && h <= height {
        return image;
    }
    let ratio = f64::min(
        f64::from(width) / f64::from(w),
        f64::from(height) / f64::from(h),
    );
    let scaled = |n: u32| ((f64::from(n) * ratio).round() as u32).max(1);
    let mut out = DynamicImage::new(scaled(w), scaled(h), image.color());
    let options = fast_image_resize::ResizeOptions::new().resize_alg(
        fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::Bilinear),
    );
    match fast_image_resize::Resizer::new().resize(&image, &mut out, &options) {
        Ok(()) => out,
        // A pixel layout it does not take (none that `image_of` makes): the slower resize.
        Err(_) => image.resize(width, height, FilterType::Triangle),
    }
}

pub fn encode_jpeg(image: &DynamicImage) -> Result<Vec<u8>, RenderError> {
    encode_jpeg_with(image, JPEG_QUALITY)
}

/// JPEG at `quality` (1-100): 8-bit grey stays grey, anything else is sent as RGB.
pub fn encode_jpeg_with(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, RenderError> {
    let too_large = |_| RenderError::Encode("an image side over 65535 pixels".into());
    let width = u16::try_from(image.width()).map_err(too_large)?;
    let height = u16::try_from(image.height()).map_err(too_large)?;
    let rgb;
    let (pixels, kind) = match image {
        DynamicImage::ImageLuma8(grey) => (grey.as_raw(), jpeg_encoder::ColorType::Luma),
        DynamicImage::ImageRgb8(colour) => (colour.as_raw(), jpeg_encoder::ColorType::Rgb),
        other => {
            rgb = other.to_rgb8();
            (rgb.as_raw(), jpeg_encoder::ColorType::Rgb)
        }
    };
    match kind {
        jpeg_encoder::ColorType::Luma
            if pixels.len() < usize::from(width) * usize::from(height) =>
        {
            Err(RenderError::Encode(
                "fewer pixels than the image's sides".into(),
            ))
        }
        jpeg_encoder::ColorType::Luma if width > 0 && height > 0 => {
            Ok(jpeg::encode_grey(pixels, width, height, quality))
        }
        _ => {
            let mut out = Vec::with_capacity(pixels.len() / 8);
            jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
                .encode(pixels, width, height, kind)
                .map_err(|e| RenderError::Encode(e.to_string()))?;
            Ok(out)
        }
    }
}

/// The red, green and blue palette colour lookup tables (PS3.3 C.7.6.3.1.5-6).
#[derive(Debug)]
struct Palette {
    /// Stored pixel value mapped to the first entry of each table.
    first_mapped: i32,
    /// Entries, already narrowed to 8 bits, for red, green and blue.
    tables: [Vec<u8>; 3],
}

impl Palette {
    fn from_object(obj: &DefaultDicomObject) -> Result<Palette, RenderError> {
        const DESCRIPTORS: [Tag; 3] = [
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        ];
        const DATA: [Tag; 3] = [
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        ];
        let mut first_mapped = 0;
        let mut tables: [Vec<u8>; 3] = Default::default();
        for c in 0..3 {
            let desc: Vec<u16> = obj
                .element(DESCRIPTORS[c])
                .map_err(|e| RenderError::Palette(e.to_string()))?
                .to_multi_int::<i32>()
                .map_err(|e| RenderError::Palette(e.to_string()))?
                .into_iter()
                .map(|v| v as u16)
                .collect();
            let [entries, first, bits] = desc[..] else {
                return Err(RenderError::Palette(format!(
                    "descriptor {:?} has {} values, 3 expected",
                    DESCRIPTORS[c],
                    desc.len()
                )));
            };
            // An entry count of 0 means 65536 (PS3.3 C.7.6.3.1.5). The first mapped value is
            // US or SS as the pixel representation says; as unsigned it covers both here.
            let entries = if entries == 0 {
                65536
            } else {
                entries as usize
            };
            first_mapped = first as i32;
            let raw = obj
                .element(DATA[c])
                .map_err(|e| RenderError::Palette(e.to_string()))?
                .to_bytes()
                .map_err(|e| RenderError::Palette(e.to_string()))?;
            tables[c] = match bits {
                8 if raw.len() >= entries * 2 => {
                    // 8-bit entries are still stored in 16-bit words (PS3.3 C.7.6.3.1.6).
                    raw.chunks_exact(2).take(entries).map(|w| w[0]).collect()
                }
                8 if raw.len() >= entries => raw[..entries].to_vec(),
                16 if raw.len() >= entries * 2 => raw
                    .chunks_exact(2)
                    .take(entries)
                    .map(|w| (u16::from_le_bytes([w[0], w[1]]) >> 8) as u8)
                    .collect(),
                _ => {
                    return Err(RenderError::Palette(format!(
                        "table {:?}: {} bytes for {entries} entries of {bits} bits",
                        DATA[c],
                        raw.len()
                    )));
                }
            };
        }
        Ok(Palette {
            first_mapped,
            tables,
        })
    }

    /// Values below the first mapped value take the first entry, values past the end the
    /// last (PS3.3 C.7.6.3.1.5).
    fn apply(&self, indices: &[u16], cols: u32, rows: u32) -> Result<RgbImage, RenderError> {
        let mut rgb = Vec::with_capacity(indices.len() * 3);
        for &v in indices {
            for t in &self.tables {
                let i = (v as i32 - self.first_mapped).clamp(0, t.len() as i32 - 1);
                rgb.push(t[i as usize]);
            }
        }
        RgbImage::from_raw(cols, rows, rgb)
            .ok_or_else(|| RenderError::Convert("palette image of the wrong size".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_ratio_and_never_enlarges() {
        let wide = DynamicImage::ImageLuma8(image::GrayImage::new(1024, 512));
        let f = fit(wide, 256);
        assert_eq!((f.width(), f.height()), (256, 128));
        let small = DynamicImage::ImageLuma8(image::GrayImage::new(64, 32));
        let f = fit(small, 256);
        assert_eq!((f.width(), f.height()), (64, 32));
        let thin = DynamicImage::ImageRgb8(image::RgbImage::new(2000, 3));
        let f = fit_within(thin, 100, 100);
        assert_eq!((f.width(), f.height()), (100, 1));
    }

    #[test]
    fn fit_averages_what_it_shrinks() {
        // Columns alternating 0 and 200, halved: every pixel off the clipped edge columns is
        // their mean (a filter that sampled instead of averaging would give 0 or 200).
        let stripes = image::GrayImage::from_fn(64, 64, |x, _| image::Luma([(x % 2 * 200) as u8]));
        let f = fit(DynamicImage::ImageLuma8(stripes), 32).to_luma8();
        assert_eq!(f.dimensions(), (32, 32));
        let mut inner = f.enumerate_pixels().filter(|(x, _, _)| (1..31).contains(x));
        assert!(
            inner.all(|(_, _, p)| (95..=105).contains(&p.0[0])),
            "{:?}",
            &f.as_raw()[..32]
        );
    }

    #[test]
    fn palette_clamps_out_of_range_indices() {
        let p = Palette {
            first_mapped: 10,
            tables: [vec![0, 100, 200], vec![1, 2, 3], vec![9, 8, 7]],
        };
        let img = p.apply(&[5, 10, 11, 12, 300], 5, 1).unwrap();
        let px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert_eq!(
            px,
            vec![[0, 1, 9], [0, 1, 9], [100, 2, 8], [200, 3, 7], [200, 3, 7]]
        );
    }
}
