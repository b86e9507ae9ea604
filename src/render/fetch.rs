//! Previews for people (`pacsd preview`): the stored preview of an instance, or one rendered
//! on the spot when it is not stored yet, and a contact sheet of a study (the first image of
//! each series, side by side).

use image::{DynamicImage, Rgb, RgbImage};

use super::{PREVIEW_SIDE, RenderError, encode_jpeg, render_preview};
use crate::archive::read_verified;
use crate::index::{Index, PreviewState};
use crate::storage::{Expected, Storage};

/// Series per row of a contact sheet.
const SHEET_COLUMNS: u32 = 4;
/// Gap between and around the tiles of a contact sheet, in pixels.
const SHEET_GAP: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("no instance with SOP Instance UID {0} is indexed")]
    UnknownInstance(String),
    #[error("no study with Study Instance UID {0} is indexed")]
    UnknownStudy(String),
    #[error("instance {0} has no pixel data: there is no preview")]
    NoPixelData(String),
    #[error("reading from the index: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error("reading {key} from storage: {reason}")]
    Read { key: String, reason: String },
    #[error("rendering {sop}: {source}")]
    Render { sop: String, source: RenderError },
}

/// The JPEG preview of an instance: the stored one if it is done, else rendered now from the
/// object (not stored: the node's worker does that).
pub async fn preview_of(
    index: &Index,
    storage: &Storage,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, PreviewError> {
    let state = index
        .preview(sop_instance_uid)
        .await?
        .ok_or_else(|| PreviewError::UnknownInstance(sop_instance_uid.to_string()))?;
    if let PreviewState::Done {
        storage_key,
        size,
        digest,
    } = state
    {
        let expected = Expected::new(storage_key, size, digest);
        match read_verified(storage, index, &expected).await {
            Ok(b) => return Ok(b.to_vec()),
            Err(reason) => {
                tracing::warn!(key = %expected.key, %reason, "stored preview unreadable; rendering it again");
            }
        }
    }
    let inst = index
        .instance(sop_instance_uid)
        .await?
        .ok_or_else(|| PreviewError::UnknownInstance(sop_instance_uid.to_string()))?;
    let object = read_verified(storage, index, &inst.expected())
        .await
        .map_err(|e| PreviewError::Read {
            key: inst.storage_key,
            reason: e.to_string(),
        })?;
    let sop = sop_instance_uid.to_string();
    tokio::task::spawn_blocking(move || render_preview(&object))
        .await
        .expect("renderer panicked")
        .map_err(|source| PreviewError::Render {
            sop: sop.clone(),
            source,
        })?
        .ok_or(PreviewError::NoPixelData(sop))
}

/// A JPEG contact sheet of a study: the preview of the first image of each series (series
/// without pixel data are left out), `SHEET_COLUMNS` to a row in series order. Returns the
/// sheet and how many series it shows.
pub async fn contact_sheet(
    index: &Index,
    storage: &Storage,
    study_instance_uid: &str,
) -> Result<(Vec<u8>, usize), PreviewError> {
    let series = index
        .first_instance_of_each_series(study_instance_uid)
        .await?;
    if series.is_empty() {
        return Err(PreviewError::UnknownStudy(study_instance_uid.to_string()));
    }
    let mut tiles = Vec::new();
    for (_, _, sop) in &series {
        match preview_of(index, storage, sop).await {
            Ok(jpeg) => match image::load_from_memory(&jpeg) {
                Ok(img) => tiles.push(img),
                Err(e) => tracing::warn!(sop, error = %e, "preview not decodable; left out"),
            },
            Err(PreviewError::NoPixelData(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let n = tiles.len();
    let sheet = tile(&tiles);
    let jpeg =
        encode_jpeg(&DynamicImage::ImageRgb8(sheet)).map_err(|source| PreviewError::Render {
            sop: study_instance_uid.to_string(),
            source,
        })?;
    Ok((jpeg, n))
}

/// Lay previews out on a black sheet, each centred in a `PREVIEW_SIDE` square cell.
fn tile(tiles: &[DynamicImage]) -> RgbImage {
    let count = tiles.len().max(1) as u32;
    let cols = count.min(SHEET_COLUMNS);
    let rows = count.div_ceil(SHEET_COLUMNS);
    let cell = PREVIEW_SIDE + SHEET_GAP;
    let mut sheet = RgbImage::from_pixel(
        cols * cell + SHEET_GAP,
        rows * cell + SHEET_GAP,
        Rgb([0, 0, 0]),
    );
    for (i, t) in tiles.iter().enumerate() {
        let (c, r) = (i as u32 % SHEET_COLUMNS, i as u32 / SHEET_COLUMNS);
        let t = super::fit(t.clone(), PREVIEW_SIDE).to_rgb8();
        let (w, h) = t.dimensions();
        let x = SHEET_GAP + c * cell + (PREVIEW_SIDE - w) / 2;
        let y = SHEET_GAP + r * cell + (PREVIEW_SIDE - h) / 2;
        image::imageops::replace(&mut sheet, &t, x as i64, y as i64);
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_go_four_to_a_row_centred_in_their_cells() {
        let white = DynamicImage::ImageRgb8(RgbImage::from_pixel(256, 128, Rgb([255; 3])));
        let sheet = tile(&vec![white; 5]);
        let cell = PREVIEW_SIDE + SHEET_GAP;
        assert_eq!(
            sheet.dimensions(),
            (4 * cell + SHEET_GAP, 2 * cell + SHEET_GAP)
        );
        // The fifth tile is at row 2, column 1, vertically centred (64 px of black above).
        let (x, y) = (SHEET_GAP + 10, SHEET_GAP + cell + 64);
        assert_eq!(sheet.get_pixel(x, y).0, [255; 3]);
        assert_eq!(sheet.get_pixel(x, y - 1).0, [0; 3]);
        // Column 2 of row 2 is empty.
        assert_eq!(sheet.get_pixel(SHEET_GAP + cell + 10, y).0, [0; 3]);
    }
}
