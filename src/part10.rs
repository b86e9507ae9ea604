//! DICOM Part 10 files (PS3.10 7.1): preamble, `DICM`, file meta group, then the data set
//! bytes exactly as received. Pure byte work, no I/O.

use std::io::Cursor;

use dicom_object::meta::{FileMetaTable, FileMetaTableBuilder};

/// pacsd's Implementation Class UID (a UUID-derived 2.25 UID, PS3.5 B.2), in the file meta
/// group of every file it writes and in its A-ASSOCIATE-RQ/AC (PS3.7 D.3.3.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.190365820596473950347311417655442305513";
/// Implementation Version Name (at most 16 characters, PS3.7 D.3.3.2.3), beside it.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("PACSD_", env!("CARGO_PKG_VERSION"));

const PREAMBLE_LEN: usize = 128;
const MAGIC: &[u8; 4] = b"DICM";

#[derive(Debug, thiserror::Error)]
pub enum Part10Error {
    #[error("not a DICOM Part 10 file (no `DICM` at offset 0 or 128)")]
    NotPart10,
    #[error("reading the file meta group: {0}")]
    Meta(String),
    #[error("building the file meta group: {0}")]
    Build(String),
}

/// Wrap a received data set into a Part 10 file with pacsd's file meta group. The file is a
/// pure function of its arguments (no sender AE, no time), so a re-sent instance produces the
/// same bytes and the same checksum; the sender is recorded in the index instead.
pub fn build(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
    dataset: &[u8],
) -> Result<Vec<u8>, Part10Error> {
    let mut out = header(
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax_uid,
        dataset.len(),
    )?;
    out.extend_from_slice(dataset);
    Ok(out)
}

/// What `build` puts before the data set: preamble, `DICM` and the file meta group, in a
/// buffer with room for `dataset_len` more bytes. A writer that can send the two in turn
/// (a `PutPayload` of two chunks) stores the file without copying the data set.
pub fn header(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
    dataset_len: usize,
) -> Result<Vec<u8>, Part10Error> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| Part10Error::Build(e.to_string()))?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 4 + 256 + dataset_len);
    out.resize(PREAMBLE_LEN, 0);
    out.extend_from_slice(MAGIC);
    meta.write(&mut out)
        .map_err(|e| Part10Error::Build(e.to_string()))?;
    Ok(out)
}

/// Split a Part 10 file into its file meta table and the offset where the data set starts.
/// Files without the 128-byte preamble (starting at `DICM`) are accepted too.
pub fn split(bytes: &[u8]) -> Result<(FileMetaTable, usize), Part10Error> {
    let start =
        if bytes.len() >= PREAMBLE_LEN + 4 && &bytes[PREAMBLE_LEN..PREAMBLE_LEN + 4] == MAGIC {
            PREAMBLE_LEN
        } else if bytes.len() >= 4 && &bytes[..4] == MAGIC {
            0
        } else {
            return Err(Part10Error::NotPart10);
        };
    // The meta group is pre-scanned so that dicom-rs reads only bytes that are there.
    let meta_len = crate::dataset::meta_group_len(&bytes[start + MAGIC.len()..])
        .map_err(|e| Part10Error::Meta(e.to_string()))?;
    let mut cursor = Cursor::new(&bytes[start..start + MAGIC.len() + meta_len]);
    let meta = crate::dataset::contain("reading a file meta group", || {
        FileMetaTable::from_reader(&mut cursor)
    })
    .map_err(|e| Part10Error::Meta(e.to_string()))?
    .map_err(|e| Part10Error::Meta(e.to_string()))?;
    Ok((meta, start + cursor.position() as usize))
}

/// Open a whole Part 10 file (stored objects read back for previews and transcoding): the
/// file meta group and the data set are pre-scanned, then dicom-rs reads it inside `contain`.
pub fn open(
    part10: &[u8],
    max_inflated: u64,
) -> Result<dicom_object::DefaultDicomObject, crate::dataset::DataSetError> {
    let (meta, offset) =
        split(part10).map_err(|e| crate::dataset::DataSetError::Parse(e.to_string()))?;
    crate::dataset::check(
        &part10[offset..],
        meta.transfer_syntax(),
        crate::dataset::MAX_DEPTH,
        max_inflated,
    )?;
    // From `DICM` on (the reader expects no preamble).
    let start = if part10.get(128..132) == Some(b"DICM".as_slice()) {
        128
    } else {
        0
    };
    crate::dataset::contain("reading a Part 10 file", || {
        dicom_object::OpenFileOptions::new()
            .from_reader(Cursor::new(&part10[start..]))
            .map_err(|e| crate::dataset::DataSetError::Parse(e.to_string()))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_split_gives_back_the_data_set() {
        let data = b"\x08\x00\x16\x00\x04\x00\x00\x001.2\0".to_vec();
        let file = build(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.3",
            "1.2.840.10008.1.2",
            &data,
        )
        .unwrap();
        assert_eq!(&file[128..132], b"DICM");
        let (meta, offset) = split(&file).unwrap();
        assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2");
        assert_eq!(meta.media_storage_sop_instance_uid(), "1.2.3");
        assert_eq!(&file[offset..], &data[..]);
        // Without the preamble.
        let (_, off2) = split(&file[128..]).unwrap();
        assert_eq!(&file[128 + off2..], &data[..]);
        assert!(matches!(split(b"garbage"), Err(Part10Error::NotPart10)));
    }
}
