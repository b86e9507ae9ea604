//! Baseline JPEG (ITU-T T.81, Huffman, 8-bit) of an 8-bit grey image: every rendered CT,
//! MR or X-ray frame and every grey preview goes through here.
//!
//! jpeg-encoder (which still encodes colour) took about 1 ms for a 512x512 grey frame, 4096
//! blocks at some 700 cycles each: 40% of the CPU of a rendered request in a profile of 600
//! CT images. Its quantisation walks the zigzag one coefficient at a time, its blocks come
//! out of a row buffer through bounds-checked copies, and its Huffman coder looks at every
//! coefficient. This encoder does the same arithmetic as libjpeg's float method:
//!
//! 1. The quantisation table is Annex K.1's luminance table scaled for the quality as the IJG
//!    library (and jpeg-encoder) scale it, so a quality means what it means elsewhere.
//! 2. Each 8x8 block (the last row and column repeated where the image ends inside one) is
//!    level-shifted and transformed with the AAN forward DCT (libjpeg's jfdctflt), columns
//!    first: each pass works on eight lanes at once, which the compiler turns into vector
//!    instructions, with a transpose between the two.
//! 3. The coefficients are quantised with the AAN scale folded into the divisors (libjpeg's
//!    jcdctmgr) and rounded to the nearest integer; a bitmask records which are not zero,
//!    first in the DCT's own layout, then moved to zigzag order one set bit at a time.
//! 4. The DC difference and the AC run-lengths go out with Annex K.3's tables; the run-lengths
//!    come from the bitmask, so only non-zero coefficients are visited (most of a CT frame is
//!    air: a block with nothing but DC costs two codes).
//! 5. Bits gather in a 64-bit accumulator and leave 32 at a time, 0xFF bytes followed by 0x00.
//!
//! The tests decode what it writes with the image crate's decoder (an implementation no one
//! here wrote) and compare with the source and with jpeg-encoder's output for the same image.

/// Annex K.1, table K.1: luminance quantisation at quality 50, natural (row-major) order.
const LUMA_QUANT: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];

/// Zigzag position -> natural index (T.81 figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Annex K.3, tables K.3 and K.5: luminance DC and AC Huffman tables as T.81 writes them
/// (number of codes of each length 1-16, then the symbols in code order).
const DC_LENGTHS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_SYMBOLS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LENGTHS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_SYMBOLS: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// The AAN DCT's output scale per frequency (libjpeg jcdctmgr's aanscalefactor:
/// cos(k*pi/16) * sqrt(2) for k > 0, 1 for k = 0).
const AAN_SCALE: [f32; 8] = [
    1.0,
    1.387_039_8,
    1.306_563,
    1.175_875_6,
    1.0,
    0.785_694_96,
    0.541_196_1,
    0.275_899_38,
];

/// 1.5 * 2^23: added to an f32 under 2^22 in magnitude, it leaves the value rounded to the
/// nearest integer in the low mantissa bits (8-bit baseline coefficients stay under 2048).
/// Unlike `as i32`, which must saturate and check for NaN, this vectorises.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `x` rounded to the nearest integer (ties to even), for |x| < 2^22.
#[inline]
fn round(x: f32) -> i32 {
    (x + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC.to_bits() as i32
}

/// Block (bx, by) of the image into `block`, level-shifted; rows and columns past the
/// image's end repeat its last ones.
#[inline]
fn load_block(pixels: &[u8], w: usize, h: usize, bx: usize, by: usize, block: &mut [[f32; 8]; 8]) {
    for (r, lane) in block.iter_mut().enumerate() {
        let row = &pixels[(by + r).min(h - 1) * w..][..w];
        if let Some(eight) = row.get(bx..bx + 8) {
            for (v, &p) in lane.iter_mut().zip(eight) {
                *v = f32::from(p) - 128.0;
            }
        } else {
            for (c, v) in lane.iter_mut().enumerate() {
                *v = f32::from(row[(bx + c).min(w - 1)]) - 128.0;
            }
        }
    }
}

/// A baseline JPEG of `pixels` (`width` x `height` bytes, row after row) at `quality`
/// (1-100). The caller checks that the sides are 1-65535 and the buffer is long enough.
pub fn encode_grey(pixels: &[u8], width: u16, height: u16, quality: u8) -> Vec<u8> {
    let (w, h) = (usize::from(width), usize::from(height));
    debug_assert!(w > 0 && h > 0 && pixels.len() >= w * h);
    let tables = Tables::new(quality);
    let mut out = BitWriter::with_capacity(w * h / 4 + 1024);
    write_headers(&mut out.bytes, width, height, &tables.quant);

    let mut prev_dc = 0i32;
    let mut block = [[0f32; 8]; 8];
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            // 2. Level shift and DCT.
            load_block(pixels, w, h, bx, by, &mut block);
            fdct_lanes(&mut block);
            transpose(&mut block);
            fdct_lanes(&mut block);
            // 3. Quantise where the coefficients lie.
            let mut q = [0i32; 64];
            for ((q, &c), &div) in q.iter_mut().zip(block.as_flattened()).zip(&tables.div) {
                *q = round(c * div);
            }
            // Which are not zero, as a bitmask over the DCT's output (in groups of eight, so
            // that every shift is a constant once unrolled), then over the zigzag order, one
            // set bit at a time: a CT block has a handful. Reading all 64 out in zigzag order
            // first took 25% longer (444 against 334 us for a 512x512 synthetic CT frame,
            // 525 against 440 for a noisy one; best of 30 rounds each).
            let mut natural = 0u64;
            for (g, eight) in q.chunks_exact(8).enumerate() {
                let mut bits = 0u64;
                for (k, &v) in eight.iter().enumerate() {
                    bits |= u64::from(v != 0) << k;
                }
                natural |= bits << (g * 8);
            }
            let mut nonzero = 0u64;
            while natural != 0 {
                nonzero |= 1u64 << tables.zigzag_of[natural.trailing_zeros() as usize];
                natural &= natural - 1;
            }
            let coefficient = |z: u32| q[usize::from(tables.at[z as usize]) & 63];
            // 4. Entropy coding.
            let dc = coefficient(0);
            let diff = dc - prev_dc;
            prev_dc = dc;
            let size = magnitude_bits(diff);
            let (code, len) = tables.dc[size as usize];
            out.put(code << size | value_bits(diff, size), u32::from(len) + size);
            let mut last = 0u32;
            let mut ac = nonzero & !1;
            while ac != 0 {
                let z = ac.trailing_zeros();
                let mut run = z - last - 1;
                while run > 15 {
                    let (code, len) = tables.ac[0xf0];
                    out.put(code, u32::from(len));
                    run -= 16;
                }
                let v = coefficient(z);
                let size = magnitude_bits(v);
                let (code, len) = tables.ac[(run << 4 | size) as usize];
                out.put(code << size | value_bits(v, size), u32::from(len) + size);
                last = z;
                ac &= ac - 1;
            }
            if last != 63 {
                let (code, len) = tables.ac[0x00];
                out.put(code, u32::from(len));
            }
        }
    }
    let mut bytes = out.finish();
    bytes.extend_from_slice(&[0xff, 0xd9]);
    bytes
}

/// What one quality needs: the table as written, where each zigzag coefficient sits in the
/// transposed DCT output with its divisor, and the Huffman codes by symbol.
struct Tables {
    /// Quantisation table in natural order, as written in DQT (in zigzag order there).
    quant: [u8; 64],
    /// For each coefficient of the DCT's output: 1 / (q * AAN scale * 8).
    div: [f32; 64],
    /// For each zigzag position: the coefficient's index in the DCT's output.
    at: [u8; 64],
    /// For each index in the DCT's output: the coefficient's zigzag position.
    zigzag_of: [u8; 64],
    /// (code, length) by symbol; length 0 for a symbol the table does not have.
    dc: [(u32, u8); 16],
    ac: [(u32, u8); 256],
}

impl Tables {
    fn new(quality: u8) -> Tables {
        // 1. IJG quality scaling.
        let quality = u32::from(quality.clamp(1, 100));
        let scale = if quality < 50 {
            5000 / quality
        } else {
            200 - quality * 2
        };
        let mut quant = [0u8; 64];
        for (q, &base) in quant.iter_mut().zip(&LUMA_QUANT) {
            *q = ((u32::from(base) * scale + 50) / 100).clamp(1, 255) as u8;
        }
        let mut div = [0f32; 64];
        let mut at = [0u8; 64];
        let mut zigzag_of = [0u8; 64];
        for (z, slot) in at.iter_mut().enumerate() {
            let n = ZIGZAG[z];
            let (u, v) = (n / 8, n % 8);
            // After two passes with a transpose between them, frequency (u, v) sits at
            // row v, column u.
            *slot = (v * 8 + u) as u8;
            zigzag_of[v * 8 + u] = z as u8;
            div[v * 8 + u] = 1.0 / (f32::from(quant[n]) * AAN_SCALE[u] * AAN_SCALE[v] * 8.0);
        }
        let mut dc = [(0, 0); 16];
        let mut ac = [(0, 0); 256];
        huffman_codes(&DC_LENGTHS, &DC_SYMBOLS, &mut dc);
        huffman_codes(&AC_LENGTHS, &AC_SYMBOLS, &mut ac);
        Tables {
            quant,
            div,
            at,
            zigzag_of,
            dc,
            ac,
        }
    }
}

/// T.81 Annex C: canonical codes from the counts per length, indexed by symbol.
fn huffman_codes(lengths: &[u8; 16], symbols: &[u8], by_symbol: &mut [(u32, u8)]) {
    let mut code = 0u32;
    let mut k = 0;
    for (i, &count) in lengths.iter().enumerate() {
        for _ in 0..count {
            by_symbol[usize::from(symbols[k])] = (code, i as u8 + 1);
            code += 1;
            k += 1;
        }
        code <<= 1;
    }
}

/// The AAN forward DCT (libjpeg jfdctflt) down each of the eight lanes: `b[k][lane]` is
/// sample k of that lane's 1-D transform, and becomes coefficient k (scaled by AAN_SCALE[k]
/// and sqrt(8)).
// Indexing by lane is what lets the compiler see eight independent transforms.
#[allow(clippy::needless_range_loop)]
fn fdct_lanes(b: &mut [[f32; 8]; 8]) {
    for l in 0..8 {
        let tmp0 = b[0][l] + b[7][l];
        let tmp7 = b[0][l] - b[7][l];
        let tmp1 = b[1][l] + b[6][l];
        let tmp6 = b[1][l] - b[6][l];
        let tmp2 = b[2][l] + b[5][l];
        let tmp5 = b[2][l] - b[5][l];
        let tmp3 = b[3][l] + b[4][l];
        let tmp4 = b[3][l] - b[4][l];
        // Even part.
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        b[0][l] = tmp10 + tmp11;
        b[4][l] = tmp10 - tmp11;
        let z1 = (tmp12 + tmp13) * std::f32::consts::FRAC_1_SQRT_2;
        b[2][l] = tmp13 + z1;
        b[6][l] = tmp13 - z1;
        // Odd part.
        let tmp10 = tmp4 + tmp5;
        let tmp11 = tmp5 + tmp6;
        let tmp12 = tmp6 + tmp7;
        let z5 = (tmp10 - tmp12) * 0.382_683_43;
        let z2 = 0.541_196_1 * tmp10 + z5;
        let z4 = 1.306_563 * tmp12 + z5;
        let z3 = tmp11 * std::f32::consts::FRAC_1_SQRT_2;
        let z11 = tmp7 + z3;
        let z13 = tmp7 - z3;
        b[5][l] = z13 + z2;
        b[3][l] = z13 - z2;
        b[1][l] = z11 + z4;
        b[7][l] = z11 - z4;
    }
}

#[allow(clippy::needless_range_loop)]
fn transpose(b: &mut [[f32; 8]; 8]) {
    for r in 0..8 {
        for c in r + 1..8 {
            let t = b[r][c];
            b[r][c] = b[c][r];
            b[c][r] = t;
        }
    }
}

/// T.81 F.1.2.1: the number of bits of |v| (its category).
fn magnitude_bits(v: i32) -> u32 {
    32 - v.unsigned_abs().leading_zeros()
}

/// The `size` low bits that follow a category: v itself, or v - 1 for a negative v.
fn value_bits(v: i32, size: u32) -> u32 {
    let v = if v < 0 { v - 1 } else { v };
    (v as u32) & ((1u32 << size) - 1)
}

/// SOI, JFIF APP0, DQT, SOF0, DHT (DC and AC), SOS.
fn write_headers(out: &mut Vec<u8>, width: u16, height: u16, quant: &[u8; 64]) {
    out.extend_from_slice(&[0xff, 0xd8]);
    // JFIF 1.01, no density unit, 1:1, no thumbnail.
    out.extend_from_slice(&[
        0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ]);
    out.extend_from_slice(&[0xff, 0xdb, 0, 67, 0]);
    out.extend(ZIGZAG.iter().map(|&n| quant[n]));
    out.extend_from_slice(&[0xff, 0xc0, 0, 11, 8]);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&[1, 1, 0x11, 0]);
    for (class, lengths, symbols) in [
        (0x00u8, &DC_LENGTHS, &DC_SYMBOLS[..]),
        (0x10, &AC_LENGTHS, &AC_SYMBOLS[..]),
    ] {
        let len = (2 + 1 + 16 + symbols.len()) as u16;
        out.extend_from_slice(&[0xff, 0xc4]);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(class);
        out.extend_from_slice(lengths);
        out.extend_from_slice(symbols);
    }
    out.extend_from_slice(&[0xff, 0xda, 0, 8, 1, 1, 0x00, 0, 63, 0]);
}

/// 5. Entropy-coded bits, most significant first, with 0xFF stuffing.
struct BitWriter {
    bytes: Vec<u8>,
    /// The low `count` bits are pending (higher bits are stale).
    acc: u64,
    count: u32,
}

impl BitWriter {
    fn with_capacity(n: usize) -> BitWriter {
        BitWriter {
            bytes: Vec::with_capacity(n),
            acc: 0,
            count: 0,
        }
    }

    /// Appends the low `len` bits of `bits` (len at most 32; a code and its value bits
    /// together are at most 16 + 11).
    #[inline]
    fn put(&mut self, bits: u32, len: u32) {
        self.acc = self.acc << len | u64::from(bits);
        self.count += len;
        if self.count >= 32 {
            self.count -= 32;
            let word = (self.acc >> self.count) as u32;
            self.emit(word);
        }
    }

    #[inline]
    fn emit(&mut self, word: u32) {
        let b = word.to_be_bytes();
        // A byte 0xFF among the four (the classic zero-byte test on the complement).
        let inv = !word;
        if inv.wrapping_sub(0x0101_0101) & !inv & 0x8080_8080 == 0 {
            self.bytes.extend_from_slice(&b);
        } else {
            for x in b {
                self.stuffed(x);
            }
        }
    }

    /// One byte of the scan; a 0xFF is followed by 0x00 so that it reads as no marker.
    #[inline]
    fn stuffed(&mut self, x: u8) {
        self.bytes.push(x);
        if x == 0xff {
            self.bytes.push(0);
        }
    }

    /// Pads the last byte with one bits (T.81 F.1.2.3) and hands the bytes back.
    fn finish(mut self) -> Vec<u8> {
        let pad = (8 - self.count % 8) % 8;
        self.acc = self.acc << pad | ((1u64 << pad) - 1);
        self.count += pad;
        while self.count >= 8 {
            self.count -= 8;
            self.stuffed((self.acc >> self.count) as u8);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded by the image crate (jpeg-decoder / zune-jpeg, whichever it uses).
    fn decode(jpeg: &[u8]) -> image::GrayImage {
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
            .expect("a JPEG the image crate decodes")
            .to_luma8()
    }

    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        let mse = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        if mse == 0.0 {
            return f64::INFINITY;
        }
        10.0 * (255.0f64.powi(2) / mse).log10()
    }

    fn theirs(pixels: &[u8], w: u16, h: u16, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(pixels, w, h, jpeg_encoder::ColorType::Luma)
            .unwrap();
        out
    }

    /// A CT-like frame: a disc of noisy tissue on black air, with a sharp bright edge.
    fn frame(w: u16, h: u16) -> Vec<u8> {
        let mut state = 12345u32;
        let (cx, cy, r) = (
            f64::from(w) / 2.0,
            f64::from(h) / 2.0,
            f64::from(w.min(h)) / 2.5,
        );
        (0..u32::from(h))
            .flat_map(|y| (0..u32::from(w)).map(move |x| (x, y)))
            .map(|(x, y)| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let d = ((f64::from(x) - cx).powi(2) + (f64::from(y) - cy).powi(2)).sqrt();
                if d > r {
                    0
                } else if d > r - 3.0 {
                    250
                } else {
                    (100.0 + 40.0 * (f64::from(x) / 9.0).sin() + f64::from(state >> 28)) as u8
                }
            })
            .collect()
    }

    #[test]
    fn decodes_to_the_image_as_closely_as_jpeg_encoders_output() {
        for (w, h) in [
            (512u16, 512u16),
            (37, 21),
            (1, 1),
            (8, 8),
            (9, 17),
            (300, 7),
        ] {
            let src = frame(w, h);
            for quality in [50u8, 85, 100] {
                let ours = encode_grey(&src, w, h, quality);
                let img = decode(&ours);
                assert_eq!(img.dimensions(), (u32::from(w), u32::from(h)));
                let p_ours = psnr(&src, img.as_raw());
                let p_theirs = psnr(&src, decode(&theirs(&src, w, h, quality)).as_raw());
                // The same table and the same transform up to rounding: within 0.5 dB of
                // jpeg-encoder's or above 50 dB (at quality 100 its integer transform and
                // our float one differ by a level here and there), and a floor that a
                // broken coefficient order would miss.
                assert!(
                    p_ours >= (p_theirs - 0.5).min(50.0) && p_ours > 24.0,
                    "{w}x{h} q{quality}: {p_ours:.2} dB against {p_theirs:.2}"
                );
            }
        }
    }

    #[test]
    fn the_sizes_match_the_standard_tables_output_within_a_few_percent() {
        let src = frame(512, 512);
        let ours = encode_grey(&src, 512, 512, 85).len() as f64;
        let theirs = theirs(&src, 512, 512, 85).len() as f64;
        assert!(
            (ours / theirs - 1.0).abs() < 0.03,
            "{ours} against {theirs}"
        );
    }

    #[test]
    fn flat_and_extreme_images_come_back_exactly() {
        // Every level of a flat block survives at quality 100 (DC only); 0 and 255 are the
        // level shift's ends.
        for v in [0u8, 1, 127, 128, 254, 255] {
            let src = vec![v; 24 * 16];
            let img = decode(&encode_grey(&src, 24, 16, 100));
            assert!(img.as_raw().iter().all(|&x| x == v), "level {v}");
        }
    }

    #[test]
    fn stuffing_keeps_ff_bytes_out_of_the_markers_way() {
        // Noise at quality 100 makes long codes and many 0xFF bytes in the scan.
        let mut state = 7u32;
        let src: Vec<u8> = (0..64 * 64)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let jpeg = encode_grey(&src, 64, 64, 100);
        let scan = &jpeg[jpeg.windows(2).position(|p| p == [0xff, 0xda]).unwrap() + 10..];
        let body = &scan[..scan.len() - 2];
        assert!(body.windows(2).filter(|p| p == &[0xff, 0x00]).count() > 10);
        assert!(
            body.windows(2).all(|p| p[0] != 0xff || p[1] == 0x00),
            "a marker inside the scan"
        );
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xff, 0xd9]);
        assert!(psnr(&src, decode(&jpeg).as_raw()) > 30.0);
    }

    #[test]
    fn huffman_codes_follow_annex_k() {
        // K.3: DC category 0 is 00, 5 is 110, 11 is 111111110; K.5: EOB 1010, ZRL 11111111001.
        let t = Tables::new(85);
        assert_eq!(t.dc[0], (0b00, 2));
        assert_eq!(t.dc[5], (0b110, 3));
        assert_eq!(t.dc[11], (0b1_1111_1110, 9));
        assert_eq!(t.ac[0x00], (0b1010, 4));
        assert_eq!(t.ac[0xf0], (0b111_1111_1001, 11));
        assert_eq!(t.ac[0x01], (0b00, 2));
        // Quality 50 is table K.1 itself; 100 is all ones.
        assert_eq!(Tables::new(50).quant[..4], [16, 11, 10, 16]);
        assert!(Tables::new(100).quant.iter().all(|&q| q == 1));
    }
}
