//! SCU tools for operators: `pacsd echo` and `pacsd store` (files and directories, several
//! associations in parallel, progress and a summary). Kept in the library so tests use them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dicom_dictionary_std::uids;
use indicatif::{ProgressBar, ProgressStyle};

use crate::net::NetError;
use crate::net::scu::{Negotiation, ProposedContext, ScuAssociation, ScuOptions};
use crate::part10;
pub use crate::service::query::Model;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Net(#[from] NetError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    NotDicom { path: PathBuf, reason: String },
    #[error("no DICOM files found")]
    NothingToSend,
    #[error("query key: {0}")]
    Key(#[from] KeyError),
}

/// A `-k name=value` query key that names no attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("bad tag `{0}`")]
    BadTag(String),
    #[error("unknown attribute `{0}`")]
    Unknown(String),
}

/// C-ECHO once; returns the status code and the round-trip time.
pub async fn echo(opts: &ScuOptions) -> Result<(u16, Duration), ToolError> {
    let start = Instant::now();
    let mut assoc =
        ScuAssociation::connect(opts, &[uncompressed_context(uids::VERIFICATION)]).await?;
    let status = assoc.echo().await?;
    assoc.release().await?;
    Ok((status.code, start.elapsed()))
}

/// One file to send, with what its file meta says.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub path: PathBuf,
    pub sop_class: String,
    pub sop_instance: String,
    pub transfer_syntax: String,
}

/// Outcome of `store`.
#[derive(Debug, Default, Clone)]
pub struct StoreSummary {
    pub sent: u64,
    pub succeeded: u64,
    pub warnings: u64,
    pub failed: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// (file, status or error) for every failure.
    pub failures: Vec<(PathBuf, String)>,
}

impl StoreSummary {
    pub fn per_second(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Every regular file under the given files and directories (recursive), sorted.
pub fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ToolError> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), ToolError> {
        let meta = std::fs::metadata(p).map_err(|source| ToolError::Read {
            path: p.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .map_err(|source| ToolError::Read {
                    path: p.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if meta.is_file() {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        walk(p, &mut out)?;
    }
    Ok(out)
}

/// Read a file's meta group (only the first part of the file is read).
pub fn inspect(path: &Path) -> Result<Outgoing, ToolError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16 * 1024);
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|source| ToolError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let (meta, _) = part10::split(&head).map_err(|e| ToolError::NotDicom {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Outgoing {
        path: path.to_path_buf(),
        sop_class: meta.media_storage_sop_class_uid().to_string(),
        sop_instance: meta.media_storage_sop_instance_uid().to_string(),
        transfer_syntax: meta.transfer_syntax().to_string(),
    })
}

/// Send files with C-STORE over `jobs` parallel associations. Files that are not DICOM are
/// counted as failures and skipped; the data set is sent as stored in the file, on a context
/// proposed with the file's own transfer syntax.
pub async fn store(
    opts: &ScuOptions,
    files: Vec<PathBuf>,
    jobs: usize,
    progress: bool,
) -> Result<StoreSummary, ToolError> {
    if files.is_empty() {
        return Err(ToolError::NothingToSend);
    }
    let mut summary = StoreSummary::default();
    let mut outgoing = Vec::with_capacity(files.len());
    for f in files {
        match inspect(&f) {
            Ok(o) => outgoing.push(o),
            Err(e) => {
                summary.failed += 1;
                summary.failures.push((f, e.to_string()));
            }
        }
    }
    let bar = progress_bar(progress, outgoing.len() as u64);
    let jobs = jobs.clamp(1, 64);
    let mut shards: Vec<Vec<Outgoing>> = vec![Vec::new(); jobs];
    for (i, o) in outgoing.into_iter().enumerate() {
        shards[i % jobs].push(o);
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for shard in shards.into_iter().filter(|s| !s.is_empty()) {
        let opts = opts.clone();
        let bar = bar.clone();
        let bytes = bytes.clone();
        handles.push(tokio::spawn(async move {
            store_shard(&opts, shard, &bar, &bytes).await
        }));
    }
    for h in handles {
        let part = h.await.expect("store worker panicked");
        summary.sent += part.sent;
        summary.succeeded += part.succeeded;
        summary.warnings += part.warnings;
        summary.failed += part.failed;
        summary.failures.extend(part.failures);
    }
    bar.finish_and_clear();
    summary.elapsed = start.elapsed();
    summary.bytes = bytes.load(Ordering::Relaxed);
    Ok(summary)
}

async fn store_shard(
    opts: &ScuOptions,
    shard: Vec<Outgoing>,
    bar: &ProgressBar,
    bytes: &AtomicU64,
) -> StoreSummary {
    let mut summary = StoreSummary::default();
    // One context per (SOP class, transfer syntax) found in the shard.
    let mut pairs: BTreeMap<(String, String), ()> = BTreeMap::new();
    for o in &shard {
        pairs.insert((o.sop_class.clone(), o.transfer_syntax.clone()), ());
    }
    let proposed: Vec<ProposedContext> = pairs
        .keys()
        .map(|(class, ts)| ProposedContext {
            abstract_syntax: class.clone(),
            transfer_syntaxes: vec![ts.clone()],
        })
        .collect();
    let fail_all = |summary: &mut StoreSummary, files: &[Outgoing], why: String| {
        for o in files {
            summary.failed += 1;
            summary.failures.push((o.path.clone(), why.clone()));
            bar.inc(1);
        }
    };
    let mut assoc = match ScuAssociation::connect(opts, &proposed).await {
        Ok(a) => a,
        Err(e) => {
            fail_all(&mut summary, &shard, format!("association failed: {e}"));
            return summary;
        }
    };
    for (i, o) in shard.iter().enumerate() {
        let ctx = assoc
            .context_for(&o.sop_class, &o.transfer_syntax)
            .filter(|c| c.transfer_syntax == o.transfer_syntax)
            .map(|c| c.id);
        let Some(ctx) = ctx else {
            summary.failed += 1;
            summary.failures.push((
                o.path.clone(),
                format!(
                    "no presentation context accepted for {} in {}",
                    o.sop_class, o.transfer_syntax
                ),
            ));
            bar.inc(1);
            continue;
        };
        let file = match tokio::fs::read(&o.path).await {
            Ok(b) => b,
            Err(e) => {
                summary.failed += 1;
                summary.failures.push((o.path.clone(), e.to_string()));
                bar.inc(1);
                continue;
            }
        };
        let offset = match part10::split(&file) {
            Ok((_, off)) => off,
            Err(e) => {
                summary.failed += 1;
                summary.failures.push((o.path.clone(), e.to_string()));
                bar.inc(1);
                continue;
            }
        };
        summary.sent += 1;
        match assoc
            .store(ctx, &o.sop_class, &o.sop_instance, &file[offset..])
            .await
        {
            Ok(st) if st.is_success() => {
                summary.succeeded += 1;
                bytes.fetch_add((file.len() - offset) as u64, Ordering::Relaxed);
            }
            Ok(st) if st.is_warning() => {
                summary.succeeded += 1;
                summary.warnings += 1;
                bytes.fetch_add((file.len() - offset) as u64, Ordering::Relaxed);
            }
            Ok(st) => {
                summary.failed += 1;
                summary.failures.push((
                    o.path.clone(),
                    format!(
                        "status {:04X}{}",
                        st.code,
                        st.comment.map(|c| format!(": {c}")).unwrap_or_default()
                    ),
                ));
            }
            Err(e) => {
                // The association is gone: everything left in this shard fails.
                summary.failed += 1;
                summary.failures.push((o.path.clone(), e.to_string()));
                bar.inc(1);
                fail_all(
                    &mut summary,
                    &shard[i + 1..],
                    format!("association lost: {e}"),
                );
                return summary;
            }
        }
        bar.inc(1);
    }
    if let Err(e) = assoc.release().await {
        tracing::debug!(error = %e, "release failed");
    }
    summary
}

/// A C-FIND to run: level, keys as `Keyword=value` or `gggg,eeee=value` (empty value:
/// return only), optional Specific Character Set, relational negotiation.
#[derive(Debug, Clone)]
pub struct FindSpec {
    pub model: Model,
    pub level: String,
    pub keys: Vec<String>,
    pub charset: Option<String>,
    pub relational: bool,
    pub cancel_after: Option<usize>,
}

/// What a C-FIND returned.
#[derive(Debug, Clone)]
pub struct FindResult {
    /// The requested keys (tag, keyword), in order.
    pub columns: FindColumns,
    pub matches: Vec<dicom_object::InMemDicomObject>,
    pub status: crate::dimse::Status,
}

fn parse_key(key: &str) -> Result<(dicom_core::Tag, dicom_core::VR, String, String), KeyError> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let (name, value) = key.split_once('=').unwrap_or((key, ""));
    let dict = dicom_dictionary_std::StandardDataDictionary;
    let entry = if let Some((g, e)) = name.split_once(',') {
        let bad = |_| KeyError::BadTag(name.to_string());
        let g = u16::from_str_radix(g.trim_start_matches('('), 16).map_err(bad)?;
        let e = u16::from_str_radix(e.trim_end_matches(')'), 16).map_err(bad)?;
        dict.by_tag(dicom_core::Tag(g, e))
    } else {
        dict.by_name(name)
    }
    .ok_or_else(|| KeyError::Unknown(name.to_string()))?;
    let vr = match entry.vr() {
        VirtualVr::Exact(vr) => vr,
        _ => dicom_core::VR::LO,
    };
    Ok((
        entry.tag_range().inner(),
        vr,
        entry.alias().to_string(),
        value.to_string(),
    ))
}

/// Requested keys of a C-FIND: (tag, keyword), in order.
pub type FindColumns = Vec<(dicom_core::Tag, String)>;

/// The identifier of a C-FIND (Explicit VR LE) and its requested keys.
pub fn find_identifier(spec: &FindSpec) -> Result<(Vec<u8>, FindColumns), ToolError> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_encoding::text::SpecificCharacterSet;
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

    let mut ident = dicom_object::InMemDicomObject::new_empty();
    let level = PrimitiveValue::from(spec.level.as_str());
    ident.put(DataElement::new(tags::QUERY_RETRIEVE_LEVEL, VR::CS, level));
    if let Some(cs) = &spec.charset {
        let cs = PrimitiveValue::from(cs.as_str());
        ident.put(DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
    }
    let mut columns = Vec::new();
    for k in &spec.keys {
        let (tag, vr, name, value) = parse_key(k)?;
        let v = if value.is_empty() {
            PrimitiveValue::Empty
        } else {
            PrimitiveValue::from(value)
        };
        ident.put(DataElement::new(tag, vr, v));
        columns.push((tag, name));
    }
    let cs = spec
        .charset
        .as_deref()
        .and_then(SpecificCharacterSet::from_code)
        .unwrap_or_default();
    let mut bytes = Vec::new();
    ident
        .write_dataset_with_ts_cs(&mut bytes, &EXPLICIT_VR_LITTLE_ENDIAN.erased(), cs)
        .map_err(|e| bad_query(e.to_string()))?;
    Ok((bytes, columns))
}

fn bad_query(reason: String) -> ToolError {
    ToolError::NotDicom {
        path: PathBuf::from("<query>"),
        reason,
    }
}

/// Open an association for C-FIND in `model` (optionally relational); returns it with the
/// accepted context id.
pub async fn find_association(
    opts: &ScuOptions,
    model: Model,
    relational: bool,
) -> Result<(ScuAssociation, u8), ToolError> {
    let sop = model.find_sop_class();
    let extended = if relational {
        vec![(sop.to_string(), vec![1, 1])]
    } else {
        Vec::new()
    };
    let negotiation = Negotiation {
        extended,
        ..Negotiation::default()
    };
    let context = ProposedContext {
        abstract_syntax: sop.to_string(),
        transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string()],
    };
    let assoc = ScuAssociation::connect_with(opts, &[context], &negotiation).await?;
    let ctx = accepted_context(&assoc, sop, "find")?;
    Ok((assoc, ctx))
}

/// Run one C-FIND (an association of its own) and collect the matches.
pub async fn find(opts: &ScuOptions, spec: &FindSpec) -> Result<FindResult, ToolError> {
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
    let (bytes, columns) = find_identifier(spec)?;
    let (mut assoc, ctx) = find_association(opts, spec.model, spec.relational).await?;
    let sop = spec.model.find_sop_class();
    let (raw, status) = assoc.find(ctx, sop, &bytes, spec.cancel_after).await?;
    assoc.release().await?;
    // The remote node's answers are outside bytes too: the bounded pre-scan first.
    let matches = raw
        .iter()
        .map(|b| {
            crate::dataset::parse(
                b,
                EXPLICIT_VR_LITTLE_ENDIAN.uid(),
                crate::dataset::MAX_DEPTH,
                0,
            )
            .map_err(|e| bad_query(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FindResult {
        columns,
        matches,
        status,
    })
}

/// Latencies of one labelled query run repeatedly over a single association.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    pub label: String,
    pub samples: Vec<Duration>,
    /// Matches of the last run.
    pub matches: usize,
    /// Final status of the last run.
    pub status: u16,
}

impl LatencyReport {
    /// The q-quantile (0.0..=1.0) of the samples, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.samples.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
}

/// Run each query `rounds` times, interleaved, over one association, timing each C-FIND from
/// request to final response.
pub async fn find_latency(
    opts: &ScuOptions,
    model: Model,
    queries: &[(String, FindSpec)],
    rounds: usize,
) -> Result<Vec<LatencyReport>, ToolError> {
    let (mut assoc, ctx) = find_association(opts, model, false).await?;
    let sop = model.find_sop_class();
    let prepared = queries
        .iter()
        .map(|(label, spec)| find_identifier(spec).map(|(bytes, _)| (label.clone(), bytes)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut reports: Vec<LatencyReport> = prepared
        .iter()
        .map(|(label, _)| LatencyReport {
            label: label.clone(),
            samples: Vec::with_capacity(rounds),
            matches: 0,
            status: 0,
        })
        .collect();
    for _ in 0..rounds {
        for (i, (_, bytes)) in prepared.iter().enumerate() {
            let started = Instant::now();
            let (matches, status) = assoc.find(ctx, sop, bytes, None).await?;
            reports[i].samples.push(started.elapsed());
            reports[i].matches = matches.len();
            reports[i].status = status.code;
        }
    }
    assoc.release().await?;
    Ok(reports)
}

impl FindResult {
    /// The text of `tag` in match `i` (multi-valued joined by `\`).
    pub fn value(&self, i: usize, tag: dicom_core::Tag) -> Option<String> {
        let e = self.matches.get(i)?.get(tag)?;
        let v = e.to_multi_str().ok()?;
        Some(
            v.iter()
                .map(|s| s.trim_end_matches(['\0', ' ']))
                .collect::<Vec<_>>()
                .join("\\"),
        )
    }

    /// One JSON object per match, keyed by keyword.
    pub fn to_json(&self) -> String {
        let rows: Vec<serde_json::Value> = (0..self.matches.len())
            .map(|i| {
                let obj: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .map(|(tag, name)| {
                        (
                            name.clone(),
                            self.value(i, *tag)
                                .map(serde_json::Value::String)
                                .unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect();
                serde_json::Value::Object(obj)
            })
            .collect();
        serde_json::to_string_pretty(&rows).expect("JSON of strings")
    }

    /// A plain text table, one row per match.
    pub fn to_table(&self) -> String {
        let cells: Vec<Vec<String>> = (0..self.matches.len())
            .map(|i| {
                self.columns
                    .iter()
                    .map(|(t, _)| self.value(i, *t).unwrap_or_default())
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, (_, name))| {
                cells
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([name.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |vals: Vec<String>| {
            vals.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = vec![line(self.columns.iter().map(|(_, n)| n.clone()).collect())];
        out.extend(cells.into_iter().map(line));
        out.join("\n")
    }
}

impl FindSpec {
    /// A retrieve request: level and unique keys only.
    pub fn retrieve(model: Model, level: String, keys: Vec<String>) -> FindSpec {
        FindSpec {
            model,
            level,
            keys,
            charset: None,
            relational: false,
            cancel_after: None,
        }
    }
}

impl MoveResult {
    fn from_final(last: crate::dimse::Command, pending_responses: usize) -> MoveResult {
        MoveResult {
            status: crate::dimse::Status {
                code: last.status.unwrap_or(crate::dimse::status::NO_STATUS),
                comment: last.error_comment,
            },
            completed: last.completed.unwrap_or(0),
            failed: last.failed.unwrap_or(0),
            warning: last.warning.unwrap_or(0),
            remaining: last.remaining,
            pending_responses,
        }
    }
}

/// A progress bar on the terminal (hidden when `show` is false) for `len` items.
pub fn progress_bar(show: bool, len: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// The accepted presentation context for `sop`, or why the node refused it.
fn accepted_context(assoc: &ScuAssociation, sop: &str, service: &str) -> Result<u8, NetError> {
    assoc
        .contexts()
        .iter()
        .find(|c| c.abstract_syntax == sop)
        .map(|c| c.id)
        .ok_or_else(|| {
            NetError::Rejected(format!(
                "{sop} not accepted (is `{service}` allowed for this AE?)"
            ))
        })
}

/// Advance a retrieve progress bar from a Pending response's counters.
/// The pending responses of a C-MOVE or C-GET as they come: counted, and shown on a bar.
struct SubOperationProgress {
    bar: ProgressBar,
    pending: usize,
}

impl SubOperationProgress {
    fn new(show: bool) -> SubOperationProgress {
        SubOperationProgress {
            bar: progress_bar(show, 0),
            pending: 0,
        }
    }

    fn pending(&mut self, rsp: &crate::dimse::Command) {
        self.pending += 1;
        let done = u64::from(rsp.completed.unwrap_or(0))
            + u64::from(rsp.failed.unwrap_or(0))
            + u64::from(rsp.warning.unwrap_or(0));
        self.bar
            .set_length(done + u64::from(rsp.remaining.unwrap_or(0)));
        self.bar.set_position(done);
        self.bar
            .set_message(format!("{} failed", rsp.failed.unwrap_or(0)));
    }

    /// The outcome, with the final response.
    fn finish(self, last: crate::dimse::Command) -> MoveResult {
        self.bar.finish_and_clear();
        MoveResult::from_final(last, self.pending)
    }
}

/// A query/retrieve context proposed with the uncompressed little-endian syntaxes.
fn uncompressed_context(sop: &str) -> ProposedContext {
    ProposedContext {
        abstract_syntax: sop.to_string(),
        transfer_syntaxes: vec![
            uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ],
    }
}

impl std::fmt::Display for MoveResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {:04X}", self.status.code)?;
        if let Some(c) = &self.status.comment {
            write!(f, " ({c})")?;
        }
        write!(
            f,
            "; {} completed, {} failed, {} warning",
            self.completed, self.failed, self.warning
        )
    }
}

/// Outcome of a C-MOVE: the final response's status and counters.
#[derive(Debug, Clone)]
pub struct MoveResult {
    pub status: crate::dimse::Status,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
    /// Sub-operations not run (a cancelled or failed operation's final response says it).
    pub remaining: Option<u16>,
    pub pending_responses: usize,
}

/// C-MOVE the instances selected by `spec` (level and unique keys) to `destination`.
pub async fn move_to(
    opts: &ScuOptions,
    spec: &FindSpec,
    destination: &str,
    progress: bool,
) -> Result<MoveResult, ToolError> {
    let (bytes, _) = find_identifier(spec)?;
    let sop = spec.model.move_sop_class();
    let context = uncompressed_context(sop);
    let extended = if spec.relational {
        vec![(sop.to_string(), vec![1])]
    } else {
        Vec::new()
    };
    let negotiation = Negotiation {
        extended,
        ..Negotiation::default()
    };
    let mut assoc = ScuAssociation::connect_with(opts, &[context], &negotiation).await?;
    let ctx = accepted_context(&assoc, sop, "move")?;
    let mut seen = SubOperationProgress::new(progress);
    let last = assoc
        .move_to(ctx, sop, destination, &bytes, spec.cancel_after, |rsp| {
            seen.pending(rsp)
        })
        .await?;
    assoc.release().await?;
    Ok(seen.finish(last))
}

/// Storage SOP classes `pacsd get` can receive (an association has at most 128 contexts, so
/// the common ones, as DCMTK getscu does).
pub const GET_STORAGE_CLASSES: &[&str] = &[
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_IMAGE_STORAGE,
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::ULTRASOUND_IMAGE_STORAGE,
    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids::X_RAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE,
    uids::NUCLEAR_MEDICINE_IMAGE_STORAGE,
    uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
    uids::ENHANCED_PET_IMAGE_STORAGE,
    uids::RT_IMAGE_STORAGE,
    uids::RT_DOSE_STORAGE,
    uids::RT_STRUCTURE_SET_STORAGE,
    uids::RT_PLAN_STORAGE,
    uids::BASIC_TEXT_SR_STORAGE,
    uids::ENHANCED_SR_STORAGE,
    uids::COMPREHENSIVE_SR_STORAGE,
    uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
    uids::GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids::SEGMENTATION_STORAGE,
    uids::ENCAPSULATED_PDF_STORAGE,
    uids::VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    uids::VL_ENDOSCOPIC_IMAGE_STORAGE,
    uids::VIDEO_ENDOSCOPIC_IMAGE_STORAGE,
    uids::OPHTHALMIC_PHOTOGRAPHY8_BIT_IMAGE_STORAGE,
    uids::VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE,
    uids::BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    uids::ENHANCED_XA_IMAGE_STORAGE,
    uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
];

/// Transfer syntaxes `pacsd get` accepts for received objects (stored as received).
const GET_TRANSFER_SYNTAXES: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEGLS_LOSSLESS,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
    uids::RLE_LOSSLESS,
];

/// C-GET the instances selected by `spec` into `out_dir` as Part 10 files named by SOP
/// Instance UID.
pub async fn get_into(
    opts: &ScuOptions,
    spec: &FindSpec,
    out_dir: &Path,
    progress: bool,
) -> Result<MoveResult, ToolError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ToolError::Read {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let (bytes, _) = find_identifier(spec)?;
    let sop = spec.model.get_sop_class();
    let mut proposed = vec![uncompressed_context(sop)];
    proposed.extend(GET_STORAGE_CLASSES.iter().map(|c| {
        ProposedContext {
            abstract_syntax: c.to_string(),
            transfer_syntaxes: GET_TRANSFER_SYNTAXES
                .iter()
                .map(|t| t.to_string())
                .collect(),
        }
    }));
    let negotiation = Negotiation {
        extended: Vec::new(),
        scp_role_for: GET_STORAGE_CLASSES.iter().map(|c| c.to_string()).collect(),
    };
    let mut assoc = ScuAssociation::connect_with(opts, &proposed, &negotiation).await?;
    let ctx = accepted_context(&assoc, sop, "get")?;
    let mut seen = SubOperationProgress::new(progress);
    let store = |class: &str, inst: &str, ts: &str, data: Vec<u8>| -> crate::dimse::Status {
        use crate::dimse::{Status, status};
        let Ok(uid) = crate::storage::Uid::parse(inst) else {
            return Status::with_comment(status::UNABLE_TO_PROCESS, "invalid SOP Instance UID");
        };
        let written = part10::build(class, uid.as_str(), ts, &data)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                std::fs::write(out_dir.join(format!("{uid}.dcm")), file).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => Status::success(),
            Err(e) => Status::with_comment(status::OUT_OF_RESOURCES, e),
        }
    };
    let last = assoc
        .get(ctx, sop, &bytes, spec.cancel_after, store, |rsp| {
            seen.pending(rsp)
        })
        .await?;
    assoc.release().await?;
    Ok(seen.finish(last))
}
