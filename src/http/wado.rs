//! WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): instances, metadata, frames, bulk data,
//! rendered images and thumbnails, all read through the verified read path (striped for
//! large objects, checked against the checksum recorded at ingest).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dicom_dictionary_std::{tags, uids};
use futures::StreamExt;

use super::multipart::{
    DatasetsAs, MediaType, accept_ranges, closing, datasets_as, datasets_response, new_boundary,
    part_header, related_content_type,
};
use super::{Target, WebError, WebState, clip, origin_of, path_uid};
use crate::archive::read_verified;
use crate::dicomjson::BASE_PLACEHOLDER;
use crate::index::StoredInstance;
use crate::metrics::Metrics;
use crate::service::retrieve::transcode;

/// Bytes of series metadata kept in memory (JSON text); the least recently built series go
/// first. 256 MiB holds the metadata of about 100,000 CT instances.
pub const METADATA_CACHE_BYTES: usize = 256 * 1024 * 1024;
/// Objects read at the same time for one retrieve or metadata request: enough to overlap
/// one object's read with the previous one's sending, within the storage read budget.
const READ_AHEAD: usize = 4;
/// Frames in one `/frames/{list}` request at most.
const MAX_FRAMES_PER_REQUEST: usize = 4096;

/// The instances of a study, a series or one instance, in series then ingest order.
pub(crate) async fn stored(
    state: &WebState,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> Result<Vec<StoredInstance>, WebError> {
    let mut out = state.index.instances_under(study, series, sop).await?;
    if out.is_empty() {
        let what = crate::index::Index::named_under(study, series, sop);
        return Err(WebError::NotFound(format!("no {what} in this archive")));
    }
    out.sort_by(|a, b| a.series_instance_uid.cmp(&b.series_instance_uid));
    Ok(out)
}

/// What a path names, as `stored` finds it.
async fn stored_at(state: &WebState, t: &Target) -> Result<Vec<StoredInstance>, WebError> {
    stored(state, t.study()?, t.series(), t.instance()).await
}

/// The `{frames}` of a frames path (a list, checked by `frame_list`).
#[derive(serde::Deserialize)]
pub struct FramesParam {
    frames: String,
}

/// The `{*path}` of a bulk data path (checked by `bulk_path`).
#[derive(serde::Deserialize)]
pub struct BulkParam {
    path: String,
}

/// Read one object through the verified path.
pub(crate) async fn read(state: &WebState, s: &StoredInstance) -> Result<Bytes, WebError> {
    let b = read_verified(&state.storage, &state.index, &s.expected())
        .await
        .map_err(|e| WebError::Internal(format!("reading {}: {e}", s.sop_instance_uid)))?;
    Metrics::add(&state.metrics.bytes_out, b.len() as u64);
    Ok(b)
}

fn accept_of(headers: &HeaderMap) -> Vec<MediaType> {
    accept_ranges(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

/// Native syntaxes the archive can transcode anything it can decode into.
const NATIVE: [&str; 2] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
];

/// The transfer syntax asked for as `application/dicom` parts: `None` means as stored
/// (`transfer-syntax=*`). PS3.18 8.7.3.5.2: without the parameter, Explicit VR Little Endian.
fn dicom_syntax(accept: &[MediaType], stored: &[&str]) -> Result<Option<String>, WebError> {
    for r in accept {
        let ts = r.param("transfer-syntax");
        let fits = match r.essence.as_str() {
            "multipart/related" => r
                .param("type")
                .is_none_or(|t| t.eq_ignore_ascii_case("application/dicom")),
            "*/*" | "multipart/*" | "application/dicom" => true,
            _ => false,
        };
        if !fits {
            continue;
        }
        match ts {
            Some("*") => return Ok(None),
            Some(t) if stored.iter().all(|s| *s == t) || NATIVE.contains(&t) => {
                return Ok(Some(t.to_string()));
            }
            Some(_) => continue,
            None if r.essence == "*/*" => return Ok(None),
            None => return Ok(Some(uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string())),
        }
    }
    Err(WebError::NotAcceptable(
        "this archive sends multipart/related; type=\"application/dicom\" with the stored transfer \
         syntax (transfer-syntax=*), Explicit or Implicit VR Little Endian"
            .into(),
    ))
}

/// The Part 10 file of `s` in `ts` (None: as stored). Sent as stored, it is the bytes read;
/// a transcode runs on the blocking pool (sending as stored took a trip there too, one
/// hand-off per object of a series for nothing).
async fn in_syntax(s: &StoredInstance, file: Bytes, ts: Option<&str>) -> Result<Bytes, WebError> {
    let t = match ts {
        Some(t) if t != s.transfer_syntax_uid => t.to_string(),
        _ => return Ok(file),
    };
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let data = transcode(&file, &s.transfer_syntax_uid, &t).map_err(|e| {
            WebError::NotAcceptable(format!("{} cannot be sent in {t}: {e}", s.sop_instance_uid))
        })?;
        crate::part10::build(&s.sop_class_uid, &s.sop_instance_uid, &t, &data)
            .map(Bytes::from)
            .map_err(|e| WebError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))?
}

/// Stream `objects` as multipart/related application/dicom parts.
async fn retrieve(
    state: Arc<WebState>,
    objects: Vec<StoredInstance>,
    headers: &HeaderMap,
) -> Result<Response, WebError> {
    let stored: Vec<&str> = objects
        .iter()
        .map(|s| s.transfer_syntax_uid.as_str())
        .collect();
    let ts = dicom_syntax(&accept_of(headers), &stored)?;
    let boundary = new_boundary();
    let content_type = match &ts {
        Some(t) => format!(
            "{}; transfer-syntax={t}",
            related_content_type(&boundary, "application/dicom")
        ),
        None => related_content_type(&boundary, "application/dicom"),
    };
    let b = boundary.clone();
    let parts = futures::stream::iter(objects)
        .map(move |s| {
            let (state, ts, b) = (state.clone(), ts.clone(), b.clone());
            async move {
                let file = read(&state, &s).await?;
                let file = in_syntax(&s, file, ts.as_deref()).await?;
                let part_type = match ts.as_deref() {
                    Some(t) => format!("application/dicom; transfer-syntax={t}"),
                    None => format!(
                        "application/dicom; transfer-syntax={}",
                        s.transfer_syntax_uid
                    ),
                };
                Ok::<_, WebError>(futures::stream::iter([
                    Ok(part_header(&b, &part_type, None)),
                    Ok(file),
                ]))
            }
        })
        .buffered(READ_AHEAD)
        .flat_map(|r| match r {
            Ok(parts) => parts.left_stream(),
            Err(e) => {
                tracing::warn!(error = %e, "WADO-RS retrieve cut short");
                futures::stream::iter([Err(std::io::Error::other(e.to_string()))]).right_stream()
            }
        })
        .chain(futures::stream::iter([Ok(closing(&boundary))]));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(parts))
        .expect("valid response"))
}

/// Study, series or instance retrieval (PS3.18 10.4.1): every object the path names.
pub async fn get_objects(
    State(s): State<Arc<WebState>>,
    t: Target,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let objects = stored_at(&s, &t).await?;
    retrieve(s, objects, &h).await
}

// ---- metadata ----

/// Series metadata built from the stored objects, kept by series: each instance's JSON with
/// `BASE_PLACEHOLDER` where the base URL goes. A hit counts only when the series holds exactly
/// the instances it was built from, in the same order (an instance added, or deleted and
/// another added, builds it again).
pub struct MetadataCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

/// Each instance of a series: (SOP Instance UID, metadata JSON).
type SeriesMetadata = Arc<Vec<(String, String)>>;

#[derive(Default)]
struct CacheInner {
    map: HashMap<String, SeriesMetadata>,
    order: VecDeque<String>,
    bytes: usize,
}

impl MetadataCache {
    pub fn new(capacity: usize) -> MetadataCache {
        MetadataCache {
            inner: Mutex::new(CacheInner::default()),
            capacity,
        }
    }

    fn get(&self, series: &str, instances: &[StoredInstance]) -> Option<SeriesMetadata> {
        let c = self.inner.lock().expect("metadata cache");
        c.map
            .get(series)
            .filter(|v| {
                v.len() == instances.len()
                    && v.iter()
                        .zip(instances)
                        .all(|((sop, _), i)| *sop == i.sop_instance_uid)
            })
            .cloned()
    }

    fn put(&self, series: &str, value: SeriesMetadata) {
        let size: usize = value.iter().map(|(a, b)| a.len() + b.len()).sum();
        if size > self.capacity {
            return;
        }
        let mut c = self.inner.lock().expect("metadata cache");
        if let Some(old) = c.map.remove(series) {
            c.bytes -= old.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>();
            c.order.retain(|s| s != series);
        }
        while c.bytes + size > self.capacity {
            let Some(oldest) = c.order.pop_front() else {
                break;
            };
            if let Some(old) = c.map.remove(&oldest) {
                c.bytes -= old.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>();
            }
        }
        c.bytes += size;
        c.order.push_back(series.to_string());
        c.map.insert(series.to_string(), value);
    }
}

/// The metadata JSON of one instance (placeholder base URL), computed from the stored object
/// and kept in the index for the next request.
async fn instance_metadata_json(state: &WebState, s: &StoredInstance) -> Result<String, WebError> {
    let file = read(state, s).await?;
    let json = tokio::task::spawn_blocking(move || crate::dicomjson::instance_metadata(&file))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::Internal(e.to_string()))?;
    if let Err(e) = state
        .index
        .set_instance_metadata(&s.sop_instance_uid, json.clone())
        .await
    {
        tracing::debug!(sop = %s.sop_instance_uid, error = %e, "metadata not kept");
    }
    Ok(json)
}

/// The metadata of every instance of one series: from memory, else from the index (where the
/// preview worker put it after ingest), else built from the objects now.
async fn series_metadata_json(
    state: &Arc<WebState>,
    series: &str,
    objects: Vec<StoredInstance>,
) -> Result<SeriesMetadata, WebError> {
    if let Some(hit) = state.metadata.get(series, &objects) {
        return Ok(hit);
    }
    let kept = state
        .index
        .instance_metadata(objects.iter().map(|s| s.sop_instance_uid.clone()).collect())
        .await?;
    let built: Vec<(String, String)> = futures::stream::iter(objects)
        .map(|s| {
            let (state, known) = (state.clone(), kept.get(&s.sop_instance_uid).cloned());
            async move {
                let j = match known {
                    Some(j) => j,
                    None => instance_metadata_json(&state, &s).await?,
                };
                Ok::<_, WebError>((s.sop_instance_uid, j))
            }
        })
        .buffered(READ_AHEAD)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let built = Arc::new(built);
    state.metadata.put(series, built.clone());
    Ok(built)
}

async fn metadata(
    state: Arc<WebState>,
    objects: Vec<StoredInstance>,
    only: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, WebError> {
    let how = datasets_as(&accept_of(headers))?;
    let base = format!(
        "{}{}",
        origin_of(headers),
        state.config.http.base_path.trim_end_matches('/')
    );
    let mut by_series: Vec<(String, Vec<StoredInstance>)> = Vec::new();
    for s in objects {
        match by_series.last_mut() {
            Some((se, v)) if *se == s.series_instance_uid => v.push(s),
            _ => by_series.push((s.series_instance_uid.clone(), vec![s])),
        }
    }
    let mut body = String::from("[");
    let mut first = true;
    for (series, objects) in by_series {
        let all = if only.is_some() {
            // One instance: no need to build (or count against) the whole series.
            let s = objects[0].clone();
            Arc::new(vec![(
                s.sop_instance_uid.clone(),
                instance_metadata_json(&state, &s).await?,
            )])
        } else {
            series_metadata_json(&state, &series, objects).await?
        };
        for (_, json) in all.iter() {
            if !first {
                body.push(',');
            }
            first = false;
            body.push_str(json);
        }
    }
    body.push(']');
    let body = body.replace(BASE_PLACEHOLDER, &base);
    if how == DatasetsAs::Xml {
        // XML is spelled from the same (cached) JSON.
        let datasets: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| WebError::Internal(e.to_string()))?;
        return datasets_response(&datasets, how);
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        body,
    )
        .into_response())
}

/// Study, series or instance metadata (PS3.18 10.4.1.1.2).
pub async fn get_metadata(
    State(s): State<Arc<WebState>>,
    t: Target,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let objects = stored_at(&s, &t).await?;
    metadata(s, objects, t.instance(), &h).await
}

// ---- frames and bulk data ----

/// The media type of compressed frames in `ts` (PS3.18 Table 8.7.3-2), None when native.
fn frame_media_type(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        _ if crate::net::syntax::is_encapsulated(ts) => "application/octet-stream",
        _ => return None,
    })
}

/// `1,3,5` -> [1, 3, 5] (1-based, as PS3.18 numbers frames).
fn frame_list(text: &str) -> Result<Vec<u32>, WebError> {
    let list: Vec<u32> = text
        .split(',')
        .map(|f| f.trim().parse::<u32>().ok().filter(|n| *n >= 1))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            WebError::BadRequest(format!(
                "frame list `{}` is not 1-based numbers",
                clip(text)
            ))
        })?;
    if list.is_empty() || list.len() > MAX_FRAMES_PER_REQUEST {
        return Err(WebError::BadRequest(format!(
            "a frame list holds 1 to {MAX_FRAMES_PER_REQUEST} frames"
        )));
    }
    Ok(list)
}

/// The pixel data of frames `wanted` of a Part 10 file: encapsulated frames as stored (one
/// fragment per frame, or several as the offset table says), native frames cut out.
fn extract_frames(file: &[u8], wanted: &[u32]) -> Result<Vec<Vec<u8>>, WebError> {
    use dicom_core::value::Value;
    use dicom_object::mem::InMemElement;
    let obj = crate::part10::open(file, crate::config::DEFAULT_MAX_OBJECT_SIZE)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let int = |tag| -> u64 {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e: &InMemElement| e.to_int::<u64>().ok())
            .unwrap_or(0)
    };
    let frames = int(tags::NUMBER_OF_FRAMES).max(1);
    if let Some(bad) = wanted.iter().find(|f| u64::from(**f) > frames) {
        return Err(WebError::NotFound(format!(
            "frame {bad} does not exist ({frames} frames)"
        )));
    }
    let pixel = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| WebError::NotFound("the instance has no pixel data".into()))?;
    match pixel.value() {
        Value::PixelSequence(seq) => {
            let fragments = seq.fragments();
            let offsets = seq.offset_table();
            let per_frame: Vec<Vec<u8>> = if fragments.len() as u64 == frames {
                fragments.iter().map(|f| f.to_vec()).collect()
            } else if frames == 1 {
                vec![fragments.concat()]
            } else if offsets.len() as u64 == frames {
                // Fragments grouped by the Basic Offset Table (byte offsets of each frame's
                // first fragment item, counted with the 8-byte item headers).
                let mut out = vec![Vec::new(); frames as usize];
                let mut pos = 0u64;
                let mut frame = 0usize;
                for f in fragments {
                    while frame + 1 < offsets.len() && pos >= u64::from(offsets[frame + 1]) {
                        frame += 1;
                    }
                    out[frame].extend_from_slice(f);
                    pos += 8 + f.len() as u64;
                }
                out
            } else {
                return Err(WebError::Internal(
                    "fragments cannot be matched to frames (no offset table)".into(),
                ));
            };
            Ok(wanted
                .iter()
                .map(|f| per_frame[*f as usize - 1].clone())
                .collect())
        }
        Value::Primitive(p) => {
            let bytes = p.to_bytes();
            let size = int(tags::ROWS)
                * int(tags::COLUMNS)
                * int(tags::SAMPLES_PER_PIXEL).max(1)
                * int(tags::BITS_ALLOCATED).max(1)
                / 8;
            wanted
                .iter()
                .map(|f| {
                    let start = (u64::from(*f) - 1) * size;
                    bytes
                        .get(start as usize..(start + size) as usize)
                        .map(|b| b.to_vec())
                        .ok_or_else(|| {
                            WebError::Internal("pixel data shorter than its frames".into())
                        })
                })
                .collect()
        }
        Value::Sequence(_) => Err(WebError::Internal("pixel data is a sequence".into())),
    }
}

pub async fn frames(
    State(s): State<Arc<WebState>>,
    t: Target,
    Path(FramesParam { frames }): Path<FramesParam>,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let wanted = frame_list(&frames)?;
    let obj = stored_at(&s, &t).await?.remove(0);
    let compressed = frame_media_type(&obj.transfer_syntax_uid);
    // As stored when the client takes that media type (or any, with transfer-syntax=*);
    // else decoded to native pixel data (application/octet-stream).
    let mut as_stored = compressed.is_none();
    let mut native_ok = false;
    for r in accept_of(&h) {
        let part = match r.essence.as_str() {
            "multipart/related" => r
                .param("type")
                .unwrap_or("application/octet-stream")
                .to_string(),
            e => e.to_string(),
        };
        let part = MediaType::parse(&part)
            .map(|m| m.essence)
            .unwrap_or_default();
        let ts = r.param("transfer-syntax");
        if let Some(c) = compressed
            && (part == c || part == "*/*" || ts == Some("*"))
            && (ts.is_none() || ts == Some("*") || ts == Some(&obj.transfer_syntax_uid))
        {
            as_stored = true;
            break;
        }
        if part == "application/octet-stream" || part == "*/*" {
            native_ok = true;
        }
    }
    if !as_stored && !native_ok {
        return Err(WebError::NotAcceptable(format!(
            "frames of this instance are sent as {} or application/octet-stream",
            compressed.unwrap_or("application/octet-stream")
        )));
    }
    let file = read(&s, &obj).await?;
    let ts = obj.transfer_syntax_uid.clone();
    let (frames, part_type) = tokio::task::spawn_blocking(move || {
        if as_stored {
            let t = match frame_media_type(&ts) {
                Some(m) => format!("{m}; transfer-syntax={ts}"),
                None => "application/octet-stream".to_string(),
            };
            Ok::<_, WebError>((extract_frames(&file, &wanted)?, t))
        } else {
            let data = transcode(&file, &ts, uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .map_err(|e| WebError::NotAcceptable(format!("cannot decode the frames: {e}")))?;
            let native = crate::part10::build(
                &obj.sop_class_uid,
                &obj.sop_instance_uid,
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                &data,
            )
            .map_err(|e| WebError::Internal(e.to_string()))?;
            Ok((
                extract_frames(&native, &wanted)?,
                "application/octet-stream".to_string(),
            ))
        }
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))??;
    let boundary = new_boundary();
    let essence = part_type.split(';').next().unwrap_or("").to_string();
    let mut body = Vec::new();
    for f in frames {
        body.extend_from_slice(&part_header(&boundary, &part_type, None));
        body.extend_from_slice(&f);
    }
    body.extend_from_slice(&closing(&boundary));
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            related_content_type(&boundary, &essence),
        )],
        body,
    )
        .into_response())
}

/// Where a BulkDataURI points inside an instance: an attribute, reached through `items`
/// (sequence tag, 1-based item number) when it sits inside sequences. The path below
/// `/bulkdata/` is what `dicomjson::metadata_object` writes: `GGGGEEEE`, or
/// `GGGGEEEE/n/GGGGEEEE[/n/GGGGEEEE…]`.
#[derive(Debug, PartialEq, Eq)]
struct BulkPath {
    items: Vec<(dicom_core::Tag, usize)>,
    attribute: dicom_core::Tag,
}

fn bulk_path(raw: &str) -> Result<BulkPath, WebError> {
    let bad = || {
        WebError::BadRequest(format!(
            "`{}` is not a bulk data path (GGGGEEEE, or GGGGEEEE/item/GGGGEEEE… into sequences)",
            clip(raw)
        ))
    };
    let tag = |t: &str| {
        (t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(t, 16).ok())
            .flatten()
            .map(|v| dicom_core::Tag((v >> 16) as u16, v as u16))
    };
    let parts: Vec<&str> = raw.split('/').collect();
    if parts.len().is_multiple_of(2) || parts.len() > 2 * crate::dataset::MAX_DEPTH + 1 {
        return Err(bad());
    }
    let mut items = Vec::new();
    for pair in parts[..parts.len() - 1].chunks(2) {
        let number = pair[1]
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1 && pair[1].bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?;
        items.push((tag(pair[0]).ok_or_else(bad)?, number));
    }
    let attribute = tag(parts[parts.len() - 1]).ok_or_else(bad)?;
    Ok(BulkPath { items, attribute })
}

/// The bytes of the attribute `path` names in `obj`.
fn bulk_value(obj: &dicom_object::InMemDicomObject, path: &BulkPath) -> Result<Vec<u8>, WebError> {
    let missing = |what: String| WebError::NotFound(format!("{what} in this instance"));
    let mut here = obj;
    for (sequence, number) in &path.items {
        let key = crate::dicomjson::tag_key(*sequence);
        let e = here
            .element_opt(*sequence)
            .ok()
            .flatten()
            .ok_or_else(|| missing(format!("no attribute {key}")))?;
        here = e
            .items()
            .ok_or_else(|| missing(format!("{key} is not a sequence")))?
            .get(number - 1)
            .ok_or_else(|| missing(format!("no item {number} of {key}")))?;
    }
    let key = crate::dicomjson::tag_key(path.attribute);
    let e = here
        .element_opt(path.attribute)
        .ok()
        .flatten()
        .ok_or_else(|| missing(format!("no attribute {key}")))?;
    e.value()
        .primitive()
        .map(|p| p.to_bytes().into_owned())
        .ok_or_else(|| WebError::NotFound(format!("{key} is not a bulk data attribute")))
}

pub async fn bulkdata(
    State(s): State<Arc<WebState>>,
    t: Target,
    Path(BulkParam { path }): Path<BulkParam>,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let path = bulk_path(&path)?;
    if path.items.is_empty() && path.attribute == tags::PIXEL_DATA {
        // The pixel data of every frame, as /frames would send them.
        let obj = stored_at(&s, &t).await?.remove(0);
        let file = read(&s, &obj).await?;
        let n = tokio::task::spawn_blocking(move || {
            crate::part10::open(&file, crate::config::DEFAULT_MAX_OBJECT_SIZE)
                .ok()
                .and_then(|o| {
                    o.element_opt(tags::NUMBER_OF_FRAMES)
                        .ok()
                        .flatten()
                        .and_then(|e| e.to_int::<u32>().ok())
                })
                .unwrap_or(1)
        })
        .await
        .unwrap_or(1);
        let list = (1..=n.max(1))
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(",");
        return frames(State(s), t, Path(FramesParam { frames: list }), h).await;
    }
    let obj = stored_at(&s, &t).await?.remove(0);
    let file = read(&s, &obj).await?;
    let value = tokio::task::spawn_blocking(move || {
        let o = crate::part10::open(&file, crate::config::DEFAULT_MAX_OBJECT_SIZE)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        bulk_value(&o, &path)
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))??;
    let boundary = new_boundary();
    let mut body = part_header(&boundary, "application/octet-stream", None).to_vec();
    body.extend_from_slice(&value);
    body.extend_from_slice(&closing(&boundary));
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            related_content_type(&boundary, "application/octet-stream"),
        )],
        body,
    )
        .into_response())
}

// ---- rendered and thumbnails ----

/// Rendering options (PS3.18 8.3.5): the media type, viewport, quality and window (linear;
/// without it, the object's own VOI).
#[derive(Clone)]
struct Rendering {
    png: bool,
    viewport: Option<(u32, u32)>,
    quality: u8,
    window: Option<(f64, f64)>,
}

/// A window center and width as PS3.18 writes them (`window=center,width,function` with
/// function LINEAR; WADO-URI's windowCenter and windowWidth).
fn window(center: &str, width: &str, function: Option<&str>) -> Result<(f64, f64), WebError> {
    let num = |v: &str| v.trim().parse::<f64>().ok().filter(|f| f.is_finite());
    let function = function.map(|f| f.trim().to_ascii_uppercase());
    if let Some(f) = function.as_deref().filter(|f| *f != "LINEAR") {
        return Err(WebError::BadRequest(format!(
            "window function {} is not supported (LINEAR is)",
            clip(f)
        )));
    }
    match (num(center), num(width)) {
        (Some(c), Some(w)) if w > 0.0 => Ok((c, w)),
        _ => Err(WebError::BadRequest(
            "window is center,width with a width above 0".into(),
        )),
    }
}

fn rendering(raw: Option<&str>, headers: &HeaderMap) -> Result<Rendering, WebError> {
    let mut r = Rendering {
        png: false,
        viewport: None,
        quality: crate::render::JPEG_QUALITY,
        window: None,
    };
    let accept = accept_of(headers);
    match accept
        .iter()
        .find(|a| a.covers("image/jpeg") || a.covers("image/png"))
    {
        Some(a) if a.essence == "image/png" => r.png = true,
        Some(_) => {}
        None => {
            return Err(WebError::NotAcceptable(
                "rendered images are image/jpeg or image/png".into(),
            ));
        }
    }
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).take(32) {
        match k.as_ref() {
            "quality" => {
                r.quality = v
                    .parse::<u8>()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or_else(|| WebError::BadRequest("quality is 1 to 100".into()))?
            }
            "viewport" => {
                let mut it = v.split(',').map(|n| {
                    n.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=8192).contains(n))
                });
                match (it.next().flatten(), it.next().flatten()) {
                    (Some(w), Some(h)) => r.viewport = Some((w, h)),
                    _ => return Err(WebError::BadRequest("viewport is vw,vh (1 to 8192)".into())),
                }
            }
            "window" => {
                let mut it = v.split(',');
                let (c, w) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                r.window = Some(window(c, w, it.next())?);
            }
            _ => {}
        }
    }
    Ok(r)
}

fn encoded_image(image: image::DynamicImage, r: &Rendering) -> Result<Response, WebError> {
    let image = match r.viewport {
        Some((w, h)) => crate::render::fit_within(image, w, h),
        None => image,
    };
    let (bytes, ct) = if r.png {
        let mut out = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        (out.into_inner(), "image/png")
    } else {
        (
            crate::render::encode_jpeg_with(&image, r.quality)
                .map_err(|e| WebError::Internal(e.to_string()))?,
            "image/jpeg",
        )
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response())
}

/// Frame `frame` (1-based) of an instance, rendered.
async fn render(
    state: &WebState,
    obj: &StoredInstance,
    frame: u32,
    r: &Rendering,
) -> Result<Response, WebError> {
    if !obj.has_pixels {
        return Err(WebError::NotFound(format!(
            "instance {} has no image to render",
            obj.sop_instance_uid
        )));
    }
    let file = read(state, obj).await?;
    let r = r.clone();
    tokio::task::spawn_blocking(move || {
        let image = crate::render::render_frame(&file, frame - 1, r.window)
            .map_err(|e| WebError::Internal(e.to_string()))?
            .ok_or_else(|| WebError::NotFound("no pixel data".into()))?;
        encoded_image(image, &r)
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))?
}

/// What stands for the target in a picture: the instance it names, else the first instance
/// with pixel data of its study or series (by instance number).
async fn representative(state: &WebState, t: &Target) -> Result<StoredInstance, WebError> {
    let (study, series) = (t.study()?, t.series());
    if t.instance.is_some() {
        return Ok(stored_at(state, t).await?.remove(0));
    }
    let firsts = state.index.first_instance_of_each_series(study).await?;
    let all = stored(state, study, series, None).await?;
    let pick = firsts
        .iter()
        .filter_map(|(_, _, sop)| {
            all.iter()
                .find(|s| &s.sop_instance_uid == sop && s.has_pixels)
        })
        .next()
        .or_else(|| all.iter().find(|s| s.has_pixels));
    pick.cloned()
        .ok_or_else(|| WebError::NotFound("nothing with pixel data to render here".into()))
}

/// A study, series or instance rendered (PS3.18 10.4.1.1.3): an instance's first frame, or
/// that of the study's or series' representative instance.
pub async fn get_rendered(
    State(s): State<Arc<WebState>>,
    t: Target,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let r = rendering(q.as_deref(), &h)?;
    let obj = representative(&s, &t).await?;
    render(&s, &obj, 1, &r).await
}

pub async fn frame_rendered(
    State(s): State<Arc<WebState>>,
    t: Target,
    Path(FramesParam { frames }): Path<FramesParam>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let frames = frame_list(&frames)?;
    if frames.len() != 1 {
        return Err(WebError::BadRequest(
            "a rendered frame request names one frame".into(),
        ));
    }
    let r = rendering(q.as_deref(), &h)?;
    let obj = stored_at(&s, &t).await?.remove(0);
    render(&s, &obj, frames[0], &r).await
}

/// The stored preview (JPEG) of an instance, resized to a viewport if asked.
async fn thumbnail(
    state: &WebState,
    obj: &StoredInstance,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, WebError> {
    let r = rendering(raw, headers)?;
    let jpeg =
        crate::render::fetch::preview_of(&state.index, &state.storage, &obj.sop_instance_uid)
            .await
            .map_err(|e| match e {
                crate::render::fetch::PreviewError::NoPixelData(_)
                | crate::render::fetch::PreviewError::UnknownInstance(_) => {
                    WebError::NotFound(e.to_string())
                }
                other => WebError::Internal(other.to_string()),
            })?;
    if !r.png && r.viewport.is_none() {
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response());
    }
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    encoded_image(image, &r)
}

/// The thumbnail of a study, series or instance (PS3.18 10.4.1.1.4), from the stored preview.
pub async fn get_thumbnail(
    State(s): State<Arc<WebState>>,
    t: Target,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, WebError> {
    let obj = representative(&s, &t).await?;
    thumbnail(&s, &obj, q.as_deref(), &h).await
}

// ---- WADO-URI ----

/// WADO-URI (PS3.18 9): `?requestType=WADO&studyUID=&seriesUID=&objectUID=`, with
/// `contentType` application/dicom (the default here) or image/jpeg, and `transferSyntax`.
pub async fn wado_uri(
    State(s): State<Arc<WebState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, WebError> {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .take(32)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let get = |k: &str| params.get(k).map(String::as_str);
    if get("requestType") != Some("WADO") {
        return Err(WebError::BadRequest("requestType=WADO is required".into()));
    }
    let need = |k: &str| get(k).ok_or_else(|| WebError::BadRequest(format!("{k} is required")));
    let t = Target::parse(
        Some(need("studyUID")?),
        Some(need("seriesUID")?),
        Some(need("objectUID")?),
    )?;
    let obj = stored_at(&s, &t).await?.remove(0);
    let content_type = get("contentType").unwrap_or("application/dicom");
    let first = content_type.split(',').next().unwrap_or("").trim();
    match first {
        "application/dicom" => {
            let ts = match get("transferSyntax") {
                Some(t) => Some(path_uid("transferSyntax", t)?.to_string()),
                None => None,
            };
            if let Some(t) = &ts
                && *t != obj.transfer_syntax_uid
                && !NATIVE.contains(&t.as_str())
            {
                return Err(WebError::NotAcceptable(format!(
                    "cannot send in transfer syntax {t}"
                )));
            }
            let file = read(&s, &obj).await?;
            let file = in_syntax(&obj, file, ts.as_deref()).await?;
            Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/dicom".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{}.dcm\"", obj.sop_instance_uid),
                    ),
                ],
                file,
            )
                .into_response())
        }
        "image/jpeg" | "image/png" => {
            let mut r = Rendering {
                png: first == "image/png",
                viewport: None,
                quality: crate::render::JPEG_QUALITY,
                window: match (get("windowCenter"), get("windowWidth")) {
                    (Some(c), Some(w)) => Some(window(c, w, None)?),
                    (None, None) => None,
                    _ => {
                        return Err(WebError::BadRequest(
                            "windowCenter and windowWidth go together".into(),
                        ));
                    }
                },
            };
            if let Some(q) = get("imageQuality") {
                r.quality = q
                    .parse()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or_else(|| WebError::BadRequest("imageQuality is 1 to 100".into()))?;
            }
            if let (Some(w), Some(h)) = (get("columns"), get("rows")) {
                r.viewport = w.parse().ok().zip(h.parse().ok());
            }
            let frame = get("frameNumber")
                .map(|f| f.parse::<u32>().ok().filter(|f| *f >= 1))
                .unwrap_or(Some(1))
                .ok_or_else(|| WebError::BadRequest("frameNumber is a number from 1".into()))?;
            render(&s, &obj, frame, &r).await
        }
        other => Err(WebError::NotAcceptable(format!(
            "contentType {} is not served",
            clip(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_data_paths_name_an_attribute_through_numbered_items() {
        let t = |g, e| dicom_core::Tag(g, e);
        assert_eq!(
            bulk_path("7FE00010").unwrap(),
            BulkPath {
                items: vec![],
                attribute: t(0x7FE0, 0x0010)
            }
        );
        assert_eq!(
            bulk_path("00880200/2/7fe00010").unwrap(),
            BulkPath {
                items: vec![(t(0x0088, 0x0200), 2)],
                attribute: t(0x7FE0, 0x0010)
            }
        );
        for bad in [
            "",
            "7FE0001",
            "7FE000100",
            "7FE0001G",
            "00880200/1",
            "00880200/0/7FE00010",
            "00880200/+1/7FE00010",
            "00880200/x/7FE00010",
            "../etc/passwd",
            "00880200//7FE00010",
        ] {
            assert!(bulk_path(bad).is_err(), "{bad:?} accepted");
        }
        let deep = vec!["00880200/1"; crate::dataset::MAX_DEPTH + 1].join("/") + "/7FE00010";
        assert!(
            bulk_path(&deep).is_err(),
            "deeper than any stored object may nest"
        );
    }

    #[test]
    fn bulk_values_are_found_inside_sequence_items() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_object::InMemDicomObject;
        let mut o = InMemDicomObject::new_empty();
        crate::dicomjson::put_icons(&mut o, &[vec![9u8; 2048]]);
        o.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("Doe^J"),
        ));
        let at = |p: &str| bulk_value(&o, &bulk_path(p).unwrap());
        assert_eq!(at("00880200/1/7FE00010").unwrap(), vec![9u8; 2048]);
        for (path, why) in [
            ("00880200/2/7FE00010", "no item 2 of 00880200"),
            ("00100010/1/7FE00010", "00100010 is not a sequence"),
            ("00880200/1/00100010", "no attribute 00100010"),
            ("00880200", "00880200 is not a bulk data attribute"),
        ] {
            match at(path) {
                Err(WebError::NotFound(m)) => assert!(m.starts_with(why), "{path}: {m}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    fn accept(s: &str) -> Vec<MediaType> {
        accept_ranges(Some(s))
    }

    #[test]
    fn retrieve_syntax_negotiation() {
        let j2k = ["1.2.840.10008.1.2.4.90"];
        assert_eq!(
            dicom_syntax(
                &accept("multipart/related; type=\"application/dicom\"; transfer-syntax=*"),
                &j2k
            )
            .unwrap(),
            None
        );
        assert_eq!(
            dicom_syntax(
                &accept("multipart/related; type=\"application/dicom\""),
                &j2k
            )
            .unwrap()
            .as_deref(),
            Some(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        );
        assert_eq!(dicom_syntax(&accept("*/*"), &j2k).unwrap(), None);
        assert_eq!(
            dicom_syntax(&accept("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.90"), &j2k)
                .unwrap()
                .as_deref(),
            Some("1.2.840.10008.1.2.4.90")
        );
        // Into a compressed syntax it is not stored in: nothing this node can do.
        assert!(matches!(
            dicom_syntax(
                &accept(
                    "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.80"
                ),
                &j2k
            ),
            Err(WebError::NotAcceptable(_))
        ));
        assert!(matches!(
            dicom_syntax(&accept("application/json"), &j2k),
            Err(WebError::NotAcceptable(_))
        ));
    }

    #[test]
    fn frame_lists() {
        assert_eq!(frame_list("1,3, 5").unwrap(), vec![1, 3, 5]);
        for bad in ["0", "", "1,,2", "-1", "a", "99999999999"] {
            assert!(frame_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cache_evicts_the_oldest_series_to_stay_under_its_size() {
        let c = MetadataCache::new(100);
        let v = |n: usize| Arc::new(vec![("1.2".to_string(), "x".repeat(n))]);
        let inst = |sop: &str| StoredInstance {
            study_instance_uid: "1".into(),
            series_instance_uid: "1.1".into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: String::new(),
            transfer_syntax_uid: String::new(),
            storage_key: String::new(),
            size: 0,
            digest: String::new(),
            read_check: None,
            has_pixels: true,
        };
        let one = [inst("1.2")];
        c.put("a", v(40));
        c.put("b", v(40));
        assert!(c.get("a", &one).is_some());
        c.put("c", v(40));
        assert!(c.get("a", &one).is_none(), "oldest evicted");
        assert!(c.get("b", &one).is_some() && c.get("c", &one).is_some());
        assert!(
            c.get("b", &[inst("1.2"), inst("1.3")]).is_none(),
            "a series that grew is built again"
        );
        assert!(
            c.get("b", &[inst("1.3")]).is_none(),
            "one deleted and another stored: built again"
        );
        c.put("huge", v(1000));
        assert!(c.get("huge", &one).is_none());
    }
}
