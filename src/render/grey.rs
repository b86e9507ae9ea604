//! The grayscale pipeline of dicom-pixeldata for the common frame (one 16-bit sample per
//! pixel, MONOCHROME1 or MONOCHROME2): the same image, byte for byte, without its cost.
//!
//! dicom-pixeldata (`to_dynamic_image_with_options` with `force_8bit`) copies the frame into
//! a `Vec<u16>`, builds a table of 2^BitsStored entries (65,536 for 16 bits stored, each a
//! rescale and a window in floating point), maps the samples through it into a second vector
//! and narrows that into a third. In a profile of 600 rendered 512x512 CT images that was 13%
//! of pacsd's CPU (the table alone 4.5%), about 0.25 ms of the 1.9 ms a rendered image costs;
//! previews, made for every stored image, pay it too. Here:
//!
//! 1. One pass over the samples finds the lowest and highest stored value the table will be
//!    asked for (after the mask to BitsStored) and, for a frame without a window, the lowest
//!    and highest raw sample, which is what dicom-pixeldata normalises over.
//! 2. The VOI is chosen in dicom-pixeldata's order: a window the request gives (with the
//!    object's VOI LUT Function), else the object's VOI LUT Sequence (not handled here), else
//!    its first window, else the frame's range.
//! 3. A table covers only the values of step 1 (a CT frame uses a few thousand), each entry
//!    computed with dicom-pixeldata's own `Rescale` and `WindowLevelTransform`, converted to
//!    16 bits as its table does, narrowed to 8 bits with its `>> 8` and, for MONOCHROME1,
//!    inverted as `DynamicImage::invert` would; its entries are then copied to where each raw
//!    sample of the frame's range indexes a 64 K table.
//! 4. A second pass maps each sample through that table into the 8-bit image.
//!
//! Anything else (a VOI LUT Sequence, 8-bit or 1-bit samples, colour, a value the crate would
//! refuse) is left to dicom-pixeldata: `grey16` answers None. The tests compare both paths
//! byte for byte over windows, functions, signs, slopes, bit depths and frames.

use dicom_pixeldata::{
    DecodedPixelData, PhotometricInterpretation, PixelRepresentation, Rescale, VoiLutFunction,
    WindowLevel, WindowLevelTransform,
};
use image::GrayImage;

/// Frame 0 of `frame` (a frame decoded on its own) as dicom-pixeldata renders it to 8-bit
/// grey with the default Modality LUT and `window` (center, width) or the object's own VOI;
/// None when this path does not cover the frame (the caller then asks dicom-pixeldata).
pub fn grey16(frame: &DecodedPixelData<'_>, window: Option<(f64, f64)>) -> Option<GrayImage> {
    if frame.samples_per_pixel() != 1 || frame.bits_allocated() != 16 {
        return None;
    }
    let bits = frame.bits_stored();
    if !(1..=16).contains(&bits) {
        return None;
    }
    let invert = match frame.photometric_interpretation() {
        PhotometricInterpretation::Monochrome1 => true,
        PhotometricInterpretation::Monochrome2 => false,
        _ => return None,
    };
    // The attributes dicom-pixeldata reads before it chooses (an error there is its to give).
    let rescale = *frame.rescale().ok()?.first()?;
    let function = match frame.voi_lut_function().ok()? {
        Some(f) => *f.first()?,
        None => VoiLutFunction::Linear,
    };
    let object_window = frame.window().ok()?.and_then(|w| w.first().copied());
    let has_voi_lut = frame.voi_lut_sequence().ok()?.is_some();
    let bytes = frame.frame_data(0).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let (pairs, _) = bytes.as_chunks::<2>();
    let samples = || pairs.iter().map(|&b| u16::from_ne_bytes(b));
    let mask = ((1u32 << bits) - 1) as u16;

    // 1. The range of masked values, and of raw samples.
    let (mut lo, mut hi) = (u16::MAX, 0u16);
    let (mut raw_lo, mut raw_hi) = (u16::MAX, 0u16);
    for s in samples() {
        raw_lo = raw_lo.min(s);
        raw_hi = raw_hi.max(s);
        let m = s & mask;
        lo = lo.min(m);
        hi = hi.max(m);
    }

    // 2. The VOI.
    let voi = match (window, has_voi_lut, object_window) {
        (Some((center, width)), _, _) => {
            WindowLevelTransform::new(function, WindowLevel { center, width })
        }
        (None, true, _) => return None,
        (None, false, Some(w)) => WindowLevelTransform::new(function, w),
        (None, false, None) => normalised(rescale, raw_lo, raw_hi),
    };

    // 3. The table over [lo, hi], then spread over every raw sample in [raw_lo, raw_hi] so
    //    that step 4 indexes it with the sample itself (no mask, no offset, no bounds check:
    //    twice as fast as indexing the short table).
    let size = 1u32 << bits;
    let signed = frame.pixel_representation() == PixelRepresentation::Signed;
    let y_max = ((1u64 << usize::from(bits).next_power_of_two()) - 1) as f64;
    let short = (lo..=hi)
        .map(|i| {
            let x = if signed && u32::from(i) >= size / 2 {
                f64::from(i) - f64::from(size)
            } else {
                f64::from(i)
            };
            let y = voi.apply(rescale.apply(x), y_max);
            // num-traits' f64 -> u16 (what the crate's table does): truncation in range,
            // refusal outside it (NaN included).
            if !(y > -1.0 && y < 65536.0) {
                return None;
            }
            let narrow = ((y as u16) >> 8) as u8;
            Some(if invert { 255 - narrow } else { narrow })
        })
        .collect::<Option<Vec<u8>>>()?;
    let mut table = vec![0u8; 1 << 16];
    for s in raw_lo..=raw_hi {
        // A raw value absent from the frame may mask outside [lo, hi]: never looked up.
        if let Some(&y) = short.get(usize::from((s & mask).wrapping_sub(lo))) {
            table[usize::from(s)] = y;
        }
    }
    let table: &[u8; 1 << 16] = table.as_slice().try_into().ok()?;

    // 4. The image.
    let pixels: Vec<u8> = samples().map(|s| table[usize::from(s)]).collect();
    GrayImage::from_raw(frame.columns(), frame.rows(), pixels)
}

/// dicom-pixeldata's window for a frame without one: its raw sample range, rescaled (ends
/// swapped for a negative slope).
fn normalised(rescale: Rescale, raw_lo: u16, raw_hi: u16) -> WindowLevelTransform {
    let (min, max) = (f64::from(raw_lo), f64::from(raw_hi));
    let (min, max) = if rescale.slope < 0. {
        (max, min)
    } else {
        (min, max)
    };
    let max = max * rescale.slope + rescale.intercept;
    let min = min * rescale.slope + rescale.intercept;
    WindowLevelTransform::linear(WindowLevel {
        width: max - min,
        center: (min + max) / 2.,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::meta::FileMetaTableBuilder;
    use dicom_object::{DefaultDicomObject, FileDicomObject};
    use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption};

    /// What a test frame declares.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        bits: u16,
        signed: bool,
        slope: f64,
        intercept: f64,
        /// The object's window (center, width), and its VOI LUT Function.
        window: Option<(f64, f64)>,
        function: Option<&'static str>,
        monochrome1: bool,
        frames: u32,
    }

    const PLAIN: Case = Case {
        bits: 12,
        signed: false,
        slope: 1.0,
        intercept: -1024.0,
        window: None,
        function: None,
        monochrome1: false,
        frames: 1,
    };

    /// A 37x23 frame (sides that are no multiple of anything) of pseudo-random samples,
    /// some with bits set above BitsStored, as real modalities sometimes write them.
    fn object(c: Case) -> DefaultDicomObject {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid("2.25.1")
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .build()
            .unwrap();
        let mut o = FileDicomObject::new_empty_with_meta(meta);
        let s = |v: &str| PrimitiveValue::from(v);
        let us = |v: u16| PrimitiveValue::from(v);
        let (w, h) = (37u16, 23u16);
        let pi = if c.monochrome1 {
            "MONOCHROME1"
        } else {
            "MONOCHROME2"
        };
        o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)));
        o.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            s(pi),
        ));
        o.put(DataElement::new(tags::ROWS, VR::US, us(h)));
        o.put(DataElement::new(tags::COLUMNS, VR::US, us(w)));
        o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, us(16)));
        o.put(DataElement::new(tags::BITS_STORED, VR::US, us(c.bits)));
        o.put(DataElement::new(tags::HIGH_BIT, VR::US, us(c.bits - 1)));
        o.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            us(u16::from(c.signed)),
        ));
        o.put(DataElement::new(
            tags::RESCALE_SLOPE,
            VR::DS,
            s(&c.slope.to_string()),
        ));
        o.put(DataElement::new(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            s(&c.intercept.to_string()),
        ));
        if let Some((center, width)) = c.window {
            o.put(DataElement::new(
                tags::WINDOW_CENTER,
                VR::DS,
                s(&center.to_string()),
            ));
            o.put(DataElement::new(
                tags::WINDOW_WIDTH,
                VR::DS,
                s(&width.to_string()),
            ));
        }
        if let Some(f) = c.function {
            o.put(DataElement::new(tags::VOILUT_FUNCTION, VR::CS, s(f)));
        }
        if c.frames > 1 {
            o.put(DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                s(&c.frames.to_string()),
            ));
        }
        let n = usize::from(w) * usize::from(h) * c.frames as usize;
        let mut state = 0x2545_f491u32 ^ u32::from(c.bits) << 8;
        let pixels: Vec<u16> = (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = (state >> 16) as u16;
                // Mostly inside BitsStored, every 11th sample with stray high bits.
                if i % 11 == 0 {
                    v
                } else {
                    v & ((1u32 << c.bits) - 1) as u16
                }
            })
            .collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        o
    }

    /// dicom-pixeldata's image of `frame` and ours; None from ours fails the test.
    fn both(c: Case, frame: u32, window: Option<(f64, f64)>) -> (Vec<u8>, Vec<u8>) {
        let obj = object(c);
        let decoded = obj.decode_pixel_data_frame(frame).unwrap();
        let mut options = ConvertOptions::new().force_8bit();
        if let Some((center, width)) = window {
            options = options.with_voi_lut(VoiLutOption::Custom(dicom_pixeldata::WindowLevel {
                center,
                width,
            }));
        }
        let theirs = decoded
            .to_dynamic_image_with_options(0, &options)
            .unwrap()
            .to_luma8()
            .into_raw();
        let ours = grey16(&decoded, window)
            .unwrap_or_else(|| panic!("the fast path declined {c:?}"))
            .into_raw();
        (theirs, ours)
    }

    #[test]
    fn the_same_image_as_dicom_pixeldata_for_every_window_sign_slope_and_depth() {
        let mut cases = Vec::new();
        for bits in [9u16, 12, 16] {
            for signed in [false, true] {
                for (slope, intercept) in [(1.0, -1024.0), (2.5, 7.0), (-1.0, 100.0), (0.25, 0.0)] {
                    for window in [None, Some((40.0, 400.0)), Some((300.0, 0.5))] {
                        for function in [None, Some("LINEAR_EXACT"), Some("SIGMOID")] {
                            for monochrome1 in [false, true] {
                                cases.push(Case {
                                    bits,
                                    signed,
                                    slope,
                                    intercept,
                                    window,
                                    function,
                                    monochrome1,
                                    frames: 1,
                                });
                            }
                        }
                    }
                }
            }
        }
        for c in cases {
            // The object's own VOI, then a window the request gives.
            for request in [None, Some((-600.0, 1500.0))] {
                let (theirs, ours) = both(c, 0, request);
                assert_eq!(theirs, ours, "{c:?} requested {request:?}");
            }
        }
    }

    #[test]
    fn each_frame_of_a_multiframe_object_is_its_own() {
        let c = Case { frames: 3, ..PLAIN };
        for frame in 0..3 {
            let (theirs, ours) = both(c, frame, None);
            assert_eq!(theirs, ours, "frame {frame}");
        }
        assert_ne!(both(c, 0, None).1, both(c, 2, None).1);
    }

    #[test]
    fn a_flat_frame_and_a_narrow_window_match_too() {
        // Every sample equal: the normalising window has width 0.
        let obj = {
            let mut o = object(PLAIN);
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(vec![700u16; 37 * 23].into()),
            ));
            o
        };
        let decoded = obj.decode_pixel_data_frame(0).unwrap();
        let options = ConvertOptions::new().force_8bit();
        let theirs = decoded.to_dynamic_image_with_options(0, &options).unwrap();
        assert_eq!(
            grey16(&decoded, None).unwrap().into_raw(),
            theirs.to_luma8().into_raw()
        );
        let (theirs, ours) = both(PLAIN, 0, Some((-1000.0, 0.1)));
        assert_eq!(theirs, ours);
    }

    #[test]
    fn what_it_does_not_cover_is_left_to_dicom_pixeldata() {
        // A VOI LUT Sequence (without a requested window), 8-bit samples, colour.
        let mut with_lut = object(PLAIN);
        let item = dicom_object::InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::LUT_DESCRIPTOR,
                VR::US,
                PrimitiveValue::U16(vec![4096, 0, 16].into()),
            ),
            DataElement::new(
                tags::LUT_DATA,
                VR::OW,
                PrimitiveValue::U16((0..4096u16).map(|v| v * 16).collect()),
            ),
        ]);
        with_lut.put(DataElement::new(
            tags::VOILUT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
        let decoded = with_lut.decode_pixel_data_frame(0).unwrap();
        assert!(grey16(&decoded, None).is_none());
        assert!(grey16(&decoded, Some((40.0, 400.0))).is_some());

        let mut eight = object(PLAIN);
        eight.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        eight.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        eight.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(vec![9u8; 37 * 23].into()),
        ));
        assert!(grey16(&eight.decode_pixel_data_frame(0).unwrap(), None).is_none());

        let mut rgb = object(PLAIN);
        rgb.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(3u16),
        ));
        rgb.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("RGB"),
        ));
        rgb.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![9u16; 37 * 23 * 3].into()),
        ));
        assert!(grey16(&rgb.decode_pixel_data_frame(0).unwrap(), None).is_none());
    }
}
