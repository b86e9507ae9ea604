//! Replicated object storage: every object is written to all replicas in parallel and counts
//! as stored once W of N hold it; reads fall through to the next replica. No DICOM here.

pub mod backend;
pub mod bench;
pub mod digest;
pub mod direct;
pub mod health;
pub mod keys;
pub mod paced;
pub mod quorum;
pub mod repair;
pub mod striped;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::{debug, error, info, warn};

pub use backend::Location;
pub use health::ReplicaHealth;
pub use keys::{Uid, UidError, is_abandoned_upload, object_key, parse_object_key};
pub use quorum::Quorum;
pub use repair::{Expected, Problem};

/// Longest time one replica may take for one put or whole-object get before it counts as
/// failed.
pub const REPLICA_OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Once the write quorum is met, how long a put waits for the remaining replicas itself;
/// those still writing then finish in the background (`Stragglers`) and the put returns. Local
/// directories finish within a few milliseconds of each other; an HDFS write takes 0.5 s or
/// more (hdfs-native asks again after a fixed 500 ms whether its block is complete), which
/// every C-STORE waited for when puts waited for all replicas (38 CT images/s against 192 with
/// three local replicas, 2026-12-03).
pub const STRAGGLER_PATIENCE: Duration = Duration::from_millis(20);
/// Replica writes finishing in the background at most, over all puts (each holds its object
/// in memory). With this many running, a put waits for its remaining replicas up to
/// `STRAGGLER_GRACE` instead: a hung replica fills the slots and is then abandoned as below.
pub const BACKGROUND_WRITES: usize = 64;
/// Bytes of objects held by background writes at most (an object counted once however many
/// replicas still write it, twice with the aligned copy of a direct write): 64 objects of the
/// largest size allowed must not pin 64 GiB.
pub const BACKGROUND_BYTES: u64 = 512 << 20;
/// With no background slot free, how long the remaining replicas may still take after the
/// quorum before they are counted as missed (and queued for repair), so that a hung replica
/// never holds a C-STORE.
pub const STRAGGLER_GRACE: Duration = Duration::from_secs(2);
/// Objects at least this large are read striped across replicas; smaller ones take one GET.
pub const STRIPE_THRESHOLD: u64 = 4 << 20;
/// One small read (a whole object below the stripe threshold) longer than this fails over to
/// the next replica.
pub const SMALL_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of objects being assembled by reads at any one time (in 64 KiB permits).
pub const READ_BUDGET: u64 = 512 << 20;
const PERMIT_BYTES: u64 = 64 << 10;
/// A whole-object read reserves memory for the size the replica announces up to this much
/// (beyond it the buffer grows as bytes come: a wrong announcement cannot claim memory).
const MAX_PREALLOCATION: u64 = 1 << 30;

/// How far a write must be on its replicas before it counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage when the put returns (a local replica flushes the file and its
    /// directory).
    Flushed,
    /// Handed to the replica without a flush of its own: the caller makes it durable with
    /// `Storage::flush`, one flush per file system for any number of writes, before it counts
    /// on it (objects up to 16 MiB, `Durability::of_object`; previews, a batch at a time). A
    /// write still running when its put returned flushes its file system itself before it
    /// counts as written. Remote replicas answer a put once it is durable either way.
    Deferred,
}

/// Objects up to this size are written as `Durability::Deferred` and flushed by one `syncfs`
/// per file system together with their index row; larger ones as `Flushed`. Deferred copies
/// up to `direct::DIRECT_FROM` go through the page cache and the syncfs writes them back;
/// larger ones are written to the device directly (`direct`) before the syncfs, which then
/// only has their metadata and the tail page to write and one device flush to make for all
/// of it. Measured on this project's 2-core machine, 3 local replicas, 525 KB CT images,
/// storescu, A/B of one build (2026-12-06, the line at 64 KiB -> here): over 4 associations
/// 404-450 -> 469-492 per s on the root disk (4 rounds each, CPU per C-STORE 1.95-2.43 ->
/// 1.51-1.77 ms, device flushes per C-STORE 4.6 -> 0.9, write requests 25 -> 17), 375-401 ->
/// 403-433 on a fresh file system; over 1 association 185-220 -> 226-248 (fresh file
/// system). Objects over `direct::DIRECT_UP_TO` are not copied into an aligned buffer (it
/// would double their memory) and keep a flush of their own.
///
/// Tried and undone (2026-12-06): the line at 1 MiB with those copies written through the
/// page cache. On the disk alone it looked even (`examples/disk_floor --compare`, 3 replicas,
/// per-file -> syncfs: 525 KB 1 stream 648 -> 613 per s, 4 streams 829 -> 887), but in three
/// runs of scripts/bench-ingest.sh 3 replicas over 4 associations made 436-492 CT per s
/// against 491-547: the syncfs then wrote back 1.6 MB of cached pages per CT C-STORE and
/// dropping them after it took 3 more opens.
pub const DEFER_FLUSH_UP_TO: usize = direct::DIRECT_UP_TO as usize;

impl Durability {
    /// How an acknowledged object of `size` bytes is made durable (`DEFER_FLUSH_UP_TO`).
    pub fn of_object(size: usize) -> Durability {
        if size <= DEFER_FLUSH_UP_TO {
            Durability::Deferred
        } else {
            Durability::Flushed
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening replica `{location}`: {reason}")]
    OpenReplica {
        location: String,
        reason: backend::LocationError,
    },
    #[error("configuring storage: {0}")]
    Quorum(#[from] quorum::QuorumRangeError),
    #[error("write quorum not met for `{key}`: {ok} of {total} replicas written, {needed} needed; errors: {}", errors.join("; "))]
    QuorumNotMet {
        key: String,
        needed: usize,
        ok: usize,
        total: usize,
        errors: Vec<String>,
        /// Replicas that did take the write (the caller undoes them).
        written: Vec<usize>,
    },
    #[error("reading `{key}` failed on every replica: {}", errors.join("; "))]
    ReadFailed { key: String, errors: Vec<String> },
    #[error("listing replica `{replica}`: {source}")]
    List {
        replica: String,
        source: object_store::Error,
    },
    #[error("invalid object key `{0}`")]
    BadKey(String),
    #[error("flushing replicas: {0}")]
    Flush(String),
}

/// One replica: a name for logs and the repair queue, and its object store.
#[derive(Debug)]
pub struct Replica {
    /// The configured location, as written in the config (stable across restarts).
    pub location: String,
    parsed: Location,
    /// The open store; `None` while the replica could not be opened (e.g. its directory could
    /// not be created at start-up): it is then treated as down and opening is retried on use.
    store: Mutex<Option<Arc<dyn ObjectStore>>>,
    /// A local directory's store that does not flush (`Durability::Deferred`); opened on
    /// first use. Other locations use `store`.
    unflushed: Mutex<Option<Arc<dyn ObjectStore>>>,
}

impl Replica {
    /// The store a write of this durability goes to: a local replica's deferred writes go to
    /// its store that does not flush; everything else to `store`.
    fn store_for(
        &self,
        durability: Durability,
    ) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        match (&self.parsed, durability) {
            (Location::Local(dir), Durability::Deferred) => {
                opened(&self.unflushed, || backend::open_local_unflushed(dir))
            }
            _ => self.store(),
        }
    }

    /// The replica's store, opening it first if it was unavailable so far.
    fn store(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        opened(&self.store, || {
            let store = self.parsed.open()?;
            info!(replica = %self.location, "replica available again");
            Ok(store)
        })
    }

    pub fn is_remote(&self) -> bool {
        self.parsed.is_remote()
    }

    /// The file that holds `path` in a local replica, named as object_store's
    /// `LocalFileSystem` names it (the directory as a URL, the path's parts appended); None
    /// for other replicas.
    fn local_file(&self, path: &StorePath) -> Option<PathBuf> {
        let dir = std::path::absolute(self.parsed.local_dir()?).ok()?;
        let mut url = url::Url::from_directory_path(dir).ok()?;
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(path.parts());
        url.to_file_path().ok()
    }
}

/// The store kept in `slot`, or one opened now with `open` and kept there.
fn opened(
    slot: &Mutex<Option<Arc<dyn ObjectStore>>>,
    open: impl FnOnce() -> Result<Arc<dyn ObjectStore>, backend::LocationError>,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let mut guard = slot.lock().expect("replica lock");
    if let Some(s) = guard.as_ref() {
        return Ok(s.clone());
    }
    let store = open().map_err(|reason| object_store::Error::Generic {
        store: "replica",
        source: format!("replica unavailable: {reason}").into(),
    })?;
    *guard = Some(store.clone());
    Ok(store)
}

/// Which replicas took a write, which missed it (the latter go to the repair queue) and which
/// were still writing when the put returned at its quorum.
#[derive(Debug, Default)]
pub struct PutOutcome {
    pub written: Vec<usize>,
    pub missed: Vec<(usize, String)>,
    pub stragglers: Stragglers,
}

/// Why a copy was not written to one replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaWriteError {
    /// The store failed, after the retries the replica allows.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// A straggler's copy landed, but its file system could not be flushed.
    #[error("flushing the copy: {0}")]
    Flush(#[source] StorageError),
}

/// One replica's write: its index and how it ended.
type ReplicaWrite = futures::future::BoxFuture<'static, (usize, Result<(), ReplicaWriteError>)>;

/// Replica writes still running when a put returned at its quorum. They go on whether or not
/// `finish` is awaited (each within `REPLICA_OP_TIMEOUT`); `finish` tells how they ended.
#[derive(Default)]
pub struct Stragglers {
    writes: Vec<tokio::task::JoinHandle<(usize, Result<(), ReplicaWriteError>)>>,
    replicas: Vec<usize>,
}

impl std::fmt::Debug for Stragglers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stragglers({:?})", self.replicas)
    }
}

impl Stragglers {
    /// The replicas still writing.
    pub fn replicas(&self) -> &[usize] {
        &self.replicas
    }

    /// Wait for every one; how each ended. (A write task cannot panic without ending the
    /// process; one cancelled by the runtime's shutdown is left out.)
    pub async fn finish(self) -> Vec<(usize, Result<(), ReplicaWriteError>)> {
        join_all(self.writes)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// Wait for every one; the replicas whose write succeeded.
    pub async fn succeeded(self) -> Vec<usize> {
        let ended = self.finish().await;
        ended
            .into_iter()
            .filter_map(|(i, r)| r.is_ok().then_some(i))
            .collect()
    }
}

/// Writes running in the background: how many, the bytes they hold, and of which keys.
#[derive(Debug, Default)]
struct Background {
    writes: usize,
    bytes: u64,
    keys: std::collections::HashMap<String, usize>,
    /// Writes handed to the background since start (`/metrics`).
    handed: u64,
    /// Puts that found the background full and waited the grace instead.
    full: u64,
}

/// What the background writes have done since start (`/metrics`): how often a replica took
/// longer than the patience, and how often the bounds made a put wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackgroundStats {
    /// Running now.
    pub running: usize,
    /// Handed to the background since start.
    pub handed: u64,
    /// Puts that found every slot (or the byte budget) taken.
    pub full: u64,
}

/// A background write slot of one key, given back when its write ends (with the object's
/// bytes when it is the key's last).
struct Slot {
    background: Arc<Mutex<Background>>,
    key: String,
    bytes: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut b = self.background.lock().expect("background writes");
        b.writes -= 1;
        if let Some(n) = b.keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                b.keys.remove(&self.key);
                b.bytes = b.bytes.saturating_sub(self.bytes);
            }
        }
    }
}

/// The replica set with its write quorum and what is known about each replica's health.
#[derive(Debug)]
pub struct Storage {
    replicas: Vec<Replica>,
    quorum: Quorum,
    prefix: String,
    health: Arc<Mutex<Vec<ReplicaHealth>>>,
    /// How long a put waits for the other replicas once its quorum is met.
    patience: Duration,
    /// Replica writes running in the background (`Stragglers`), against `BACKGROUND_WRITES`.
    background: Arc<Mutex<Background>>,
    /// What striped and single reads of large objects achieved, to choose between them.
    outcomes: Mutex<health::ReadOutcomes>,
    read_budget: tokio::sync::Semaphore,
}

/// Why one replica could not give its copy.
#[derive(Debug)]
enum CopyError {
    Missing(String),
    Failed(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Missing(e) | CopyError::Failed(e) => f.write_str(e),
        }
    }
}

/// An object read back and checked against its recorded size and checksum, with the replicas
/// found holding a bad copy on the way (the caller queues them for repair).
#[derive(Debug)]
pub struct Verified {
    pub bytes: Bytes,
    pub bad_copies: Vec<(usize, Problem)>,
    /// How a striped read went (None: the object came from one replica).
    pub stripe: Option<striped::StripeReport>,
    /// The read went the way it was planned and no replica failed or served a bad copy: its
    /// time tells how fast that way of reading is (`health::ReadOutcomes`).
    pub clean: bool,
}

impl Storage {
    /// Open every replica location (creating local directories) with the given quorum
    /// (`None` = majority). A replica that cannot be opened is reported and starts as down.
    pub fn open(
        locations: &[String],
        quorum: Option<usize>,
        prefix: &str,
    ) -> Result<Storage, StorageError> {
        let replicas = locations
            .iter()
            .map(|l| open_replica(l))
            .collect::<Result<Vec<_>, _>>()?;
        Self::with_replicas(replicas, quorum, prefix)
    }

    /// A replica set from stores built by the caller (benchmarks and fault tests wrap real
    /// stores, e.g. in object_store's `ThrottledStore`, to make one replica slow).
    pub fn from_stores(
        stores: Vec<(String, Arc<dyn ObjectStore>)>,
        quorum: Option<usize>,
        prefix: &str,
    ) -> Result<Storage, StorageError> {
        let replicas = stores
            .into_iter()
            .map(|(location, store)| Replica {
                location,
                parsed: Location::Memory,
                store: Mutex::new(Some(store)),
                unflushed: Mutex::new(None),
            })
            .collect();
        Self::with_replicas(replicas, quorum, prefix)
    }

    fn with_replicas(
        replicas: Vec<Replica>,
        quorum: Option<usize>,
        prefix: &str,
    ) -> Result<Storage, StorageError> {
        let quorum = match quorum {
            Some(w) => Quorum::new(w, replicas.len())?,
            None => Quorum::majority(replicas.len())?,
        };
        let health = Arc::new(Mutex::new(vec![ReplicaHealth::default(); replicas.len()]));
        Ok(Storage {
            replicas,
            quorum,
            prefix: prefix.trim_end_matches('/').to_string(),
            health,
            patience: STRAGGLER_PATIENCE,
            background: Arc::default(),
            outcomes: Mutex::default(),
            read_budget: tokio::sync::Semaphore::new((READ_BUDGET / PERMIT_BYTES) as usize),
        })
    }

    /// How long a put waits for the other replicas once its quorum is met (at most
    /// `STRAGGLER_GRACE`); `STRAGGLER_PATIENCE` unless the configuration says otherwise.
    pub fn set_straggler_patience(&mut self, patience: Duration) {
        self.patience = patience.min(STRAGGLER_GRACE);
    }

    /// Counts of the background writes since start.
    pub fn background_stats(&self) -> BackgroundStats {
        let b = self.background.lock().expect("background writes");
        BackgroundStats {
            running: b.writes,
            handed: b.handed,
            full: b.full,
        }
    }

    /// Wait until no write of `key` runs in the background (at most `REPLICA_OP_TIMEOUT`,
    /// which bounds each write): a removal must not be overtaken by a write still landing.
    async fn background_done(&self, key: &str) {
        let deadline = tokio::time::Instant::now() + REPLICA_OP_TIMEOUT;
        while self
            .background
            .lock()
            .expect("background writes")
            .keys
            .contains_key(key)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Make every `Durability::Deferred` write so far on `replicas` durable: one `syncfs` per
    /// file system among their local directories (remote replicas answer a put once it is
    /// durable). Fails if one of them cannot be flushed.
    pub async fn flush(&self, replicas: &[usize]) -> Result<(), StorageError> {
        self.flush_with(replicas, None).await
    }

    /// `flush`, and the file system that holds `also` (a file or directory) in the same
    /// round: one `syncfs` when it shares one with the replicas.
    pub async fn flush_with(
        &self,
        replicas: &[usize],
        also: Option<&Path>,
    ) -> Result<(), StorageError> {
        let dirs = replicas
            .iter()
            .filter_map(|i| self.replicas[*i].parsed.local_dir())
            .chain(also.map(Path::to_path_buf))
            .collect();
        flush_dirs(dirs).await
    }

    /// Groups of two or more local replicas that live on one device (the same `st_dev`): they
    /// protect against a bad copy, not against losing that disk. Replicas whose directory
    /// cannot be read yet, and remote ones, are not grouped.
    pub fn shared_devices(&self) -> Vec<Vec<String>> {
        use std::os::unix::fs::MetadataExt;
        let local = self.replicas.iter().filter_map(|r| {
            let dev = std::fs::metadata(r.parsed.local_dir()?).ok()?.dev();
            Some((r.location.clone(), dev))
        });
        same_device(local)
    }

    /// A snapshot of what is known about each replica (status commands, tests).
    pub fn health(&self) -> Vec<ReplicaHealth> {
        self.health.lock().expect("health").clone()
    }

    /// Which replicas are usable now (not inside a failure backoff), by index.
    fn up_now(&self) -> Vec<bool> {
        let now = Instant::now();
        let h = self.health.lock().expect("health");
        h.iter().map(|r| r.is_up(now)).collect()
    }

    fn note_failure(&self, i: usize, error: &str) {
        self.health.lock().expect("health")[i].fail(Instant::now(), error);
    }

    fn note_success(&self, i: usize) {
        self.health.lock().expect("health")[i].succeed();
    }

    /// Check that every replica answers (a listing of one level); unreachable ones are logged
    /// clearly and marked down. Returns the errors by replica.
    pub async fn probe(&self) -> Vec<(usize, String)> {
        let checks = self.replicas.iter().enumerate().map(|(i, r)| async move {
            let check = async {
                let store = r.store()?;
                store.list_with_delimiter(None).await.map(|_| ())
            };
            let result = match tokio::time::timeout(Duration::from_secs(5), check).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 5 s".to_string()),
            };
            (i, result)
        });
        let mut down = Vec::new();
        for (i, result) in join_all(checks).await {
            match result {
                Ok(()) => self.note_success(i),
                Err(e) => {
                    error!(replica = %self.replicas[i].location, error = %e, "replica unreachable; treated as down until it answers (writes it misses are queued for repair)");
                    self.note_failure(i, &e);
                    down.push((i, e));
                }
            }
        }
        down
    }

    /// Write `bytes` under `key` to every replica in parallel. Success when at least W
    /// replicas confirmed a durable write (LocalFileSystem: temp file, fsync, rename, fsync
    /// dir); the error carries every replica's failure. Once W replicas have answered, the
    /// others get `STRAGGLER_PATIENCE` more; those still writing then go on in the background
    /// (`PutOutcome::stragglers`: the caller records them as possibly missing until they
    /// succeed). With every background slot taken they get `STRAGGLER_GRACE` instead, and one
    /// still not done then counts as missed.
    ///
    /// A replica in a failure backoff is left out (counted as missed at once) while the
    /// others can make the quorum: a dead replica would otherwise hold every C-STORE for the
    /// straggler grace (measured: 2.0 s per C-STORE with an HDFS NameNode down).
    pub async fn put(
        &self,
        key: &str,
        bytes: impl Into<PutPayload>,
    ) -> Result<PutOutcome, StorageError> {
        self.put_as(key, bytes, Durability::Flushed).await
    }

    /// `put`, flushed or not (`Durability`). The object may come in pieces (a Part 10
    /// file's header and its data set): they are written in turn, never joined in memory.
    pub async fn put_as(
        &self,
        key: &str,
        bytes: impl Into<PutPayload>,
        durability: Durability,
    ) -> Result<PutOutcome, StorageError> {
        let bytes: PutPayload = bytes.into();
        let path = store_path(key)?;
        let left_out = self.quorum.left_out(&self.up_now());
        let mut outcome = PutOutcome::default();
        let mut answered = vec![false; self.replicas.len()];
        for (i, _) in left_out.iter().enumerate().filter(|(_, l)| **l) {
            answered[i] = true;
            outcome
                .missed
                .push((i, "left out: in a backoff after failing".to_string()));
        }
        let direct = self.direct_copy(&bytes, durability, &left_out).await;
        let mut writes: futures::stream::FuturesUnordered<ReplicaWrite> = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| !left_out[*i])
            .map(|(i, r)| self.write_one(i, r, &path, key, &bytes, durability, direct.clone()))
            .collect();
        // Waiting for the quorum (None), then for the patience, then (no background slot)
        // for the grace.
        let mut quorum_at: Option<tokio::time::Instant> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut in_grace = false;
        loop {
            let next = match deadline {
                None => writes.next().await,
                Some(d) => match tokio::time::timeout_at(d, writes.next()).await {
                    Ok(next) => next,
                    Err(_) if !in_grace => {
                        in_grace = true;
                        let running: Vec<usize> =
                            (0..answered.len()).filter(|i| !answered[*i]).collect();
                        // The object's aligned copy, if it has one, is held too.
                        let copies = 1 + u64::from(direct.is_some());
                        let size = bytes.content_length() as u64 * copies;
                        match self.to_background(&mut writes, running, key, size, durability) {
                            Some(stragglers) => {
                                outcome.stragglers = stragglers;
                                break;
                            }
                            None => {
                                deadline = quorum_at.map(|q| q + STRAGGLER_GRACE);
                                continue;
                            }
                        }
                    }
                    Err(_) => break,
                },
            };
            let Some((i, result)) = next else { break };
            answered[i] = true;
            match result {
                Ok(()) => {
                    outcome.written.push(i);
                    if !self.quorum.is_met(outcome.written.len()) {
                        crate::crashpoint::hit("put-first-replica");
                    }
                }
                Err(e) => outcome.missed.push((i, e.to_string())),
            }
            if quorum_at.is_none() && self.quorum.is_met(outcome.written.len()) {
                let now = tokio::time::Instant::now();
                quorum_at = Some(now);
                deadline = Some(now + self.patience);
            }
        }
        for i in outcome.stragglers.replicas() {
            answered[*i] = true;
        }
        for (i, done) in answered.iter().enumerate() {
            if !done {
                let e = format!("no answer within {STRAGGLER_GRACE:?} after the quorum was met");
                warn!(replica = %self.replicas[i].location, key, error = %e, "replica write abandoned");
                self.note_failure(i, &e);
                outcome.missed.push((i, e));
            }
        }
        outcome.written.sort_unstable();
        outcome.missed.sort_by_key(|(i, _)| *i);
        if self.quorum.is_met(outcome.written.len()) {
            Ok(outcome)
        } else {
            Err(StorageError::QuorumNotMet {
                key: key.to_string(),
                needed: self.quorum.needed(),
                ok: outcome.written.len(),
                total: self.replicas.len(),
                errors: outcome
                    .missed
                    .iter()
                    .map(|(i, e)| format!("{}: {e}", self.replicas[*i].location))
                    .collect(),
                written: outcome.written,
            })
        }
    }

    /// `put`, then wait for the replicas still writing too (tests and tools that look at
    /// every copy right after writing); which replicas took it in the end.
    pub async fn put_and_finish(
        &self,
        key: &str,
        bytes: impl Into<PutPayload>,
    ) -> Result<Vec<usize>, StorageError> {
        let outcome = self.put(key, bytes).await?;
        let mut written = outcome.written;
        written.extend(outcome.stragglers.succeeded().await);
        written.sort_unstable();
        Ok(written)
    }

    /// The object in an aligned buffer for the local replicas that write it directly
    /// (`direct`): an object up to `direct::DIRECT_UP_TO` with a local replica among the
    /// writers, flushed, or deferred and over `direct::DIRECT_FROM`. Copied here up to
    /// `direct::COPY_INLINE_UP_TO` (a 525 KB CT image takes some 50 us), on the blocking pool
    /// above.
    async fn direct_copy(
        &self,
        payload: &PutPayload,
        durability: Durability,
        left_out: &[bool],
    ) -> Option<Arc<direct::Aligned>> {
        let local = self
            .replicas
            .iter()
            .zip(left_out)
            .any(|(r, out)| !out && r.parsed.local_dir().is_some());
        let size = payload.content_length() as u64;
        let written_direct = match durability {
            Durability::Flushed => true,
            Durability::Deferred => size > direct::DIRECT_FROM,
        };
        if !written_direct || !local || size > direct::DIRECT_UP_TO {
            return None;
        }
        if size <= direct::COPY_INLINE_UP_TO {
            return Some(Arc::new(direct::Aligned::copy_of(payload)));
        }
        let payload = payload.clone();
        tokio::task::spawn_blocking(move || Arc::new(direct::Aligned::copy_of(&payload)))
            .await
            .ok()
    }

    /// One replica's part of a put: the write (retried as its location allows) within
    /// `REPLICA_OP_TIMEOUT`, its health noted. Owns what it needs, so that it can go on in
    /// the background after the put returned. A local replica given the object's aligned
    /// copy writes it directly (`direct`); the others go through their object store.
    #[allow(clippy::too_many_arguments)]
    fn write_one(
        &self,
        i: usize,
        r: &Replica,
        path: &StorePath,
        key: &str,
        payload: &PutPayload,
        durability: Durability,
        aligned: Option<Arc<direct::Aligned>>,
    ) -> ReplicaWrite {
        let store = r.store_for(durability);
        let direct = aligned.and_then(|a| Some((r.local_file(path)?, a)));
        let uncache = match direct {
            Some(_) => None,
            None => self.uncache(i, key, durability),
        };
        let pauses = r.parsed.put_retry_pauses();
        let (location, key) = (r.location.clone(), key.to_string());
        let (path, payload) = (path.clone(), payload.clone());
        let health = self.health.clone();
        Box::pin(async move {
            let write = async {
                let store = store?;
                let mut pauses = pauses.iter();
                loop {
                    let written = match &direct {
                        Some((file, object)) => {
                            let (file, object) = (file.clone(), object.clone());
                            let generic = |source| object_store::Error::Generic {
                                store: "LocalFileSystem",
                                source,
                            };
                            match tokio::task::spawn_blocking(move || {
                                direct::put(&file, &object, durability)
                            })
                            .await
                            {
                                Ok(put) => put.map_err(|e| generic(Box::new(e))),
                                Err(panicked) => Err(generic(Box::new(panicked))),
                            }
                        }
                        None => store.put(&path, payload.clone()).await.map(|_| ()),
                    };
                    match written {
                        Ok(()) => {
                            if let Some(file) = uncache {
                                // Not awaited: a hint, not part of the write.
                                tokio::task::spawn_blocking(move || forget_cached(&file));
                            }
                            return Ok(());
                        }
                        Err(e) => match pauses.next() {
                            Some(pause) => {
                                debug!(replica = %location, key, error = %e, ?pause, "replica write failed; trying again");
                                tokio::time::sleep(*pause).await;
                            }
                            None => return Err(e),
                        },
                    }
                }
            };
            let result = match tokio::time::timeout(REPLICA_OP_TIMEOUT, write).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(ReplicaWriteError::Store(e)),
                Err(_) => Err(ReplicaWriteError::TimedOut(REPLICA_OP_TIMEOUT)),
            };
            let mut h = health.lock().expect("health");
            match &result {
                Ok(()) => h[i].succeed(),
                Err(e) => {
                    warn!(replica = %location, key, error = %e, "replica write failed");
                    h[i].fail(Instant::now(), e.to_string());
                }
            }
            (i, result)
        })
    }

    /// The file of a copy of `key` on replica `i` whose cached pages are to be dropped once it
    /// is durable: every flushed copy on a local replica. An archive's objects are written
    /// once and most are not read again soon; the page cache keeps the index and what is being
    /// read instead. On this project's VM memory that the page cache takes fresh costs the
    /// host's page faults: a loop of 525 KB durable writes took 3.65 ms of system CPU per file
    /// (236 files per s) against 0.15 ms (1674 per s) with each file's pages dropped after its
    /// fsync, as the next files then reuse them (2026-12-05). Keeping the first local copy
    /// cached (for previews and a study viewed on arrival) cost a CT C-STORE about 1 ms of
    /// CPU in the copy into fresh page-cache pages: storescu, 800 CT of 525 KB, 1 association,
    /// A/B of the same build, 1 replica 310 -> 437 per s (pacsd CPU 2.46 -> 1.45 ms per
    /// C-STORE), 3 replicas 266 -> 317-341 per s (2026-12-06). The render worker reads the
    /// object back after the burst (`render::worker::QUIET`), from disk. Deferred copies are
    /// still dirty until their syncfs, and dropping them would only start their writeback
    /// early: left alone. Since 2026-12-06 a local copy up to `direct::DIRECT_UP_TO` is
    /// written around the page cache (`direct`; a deferred one only over
    /// `direct::DIRECT_FROM`): this is for larger objects only.
    fn uncache(&self, i: usize, key: &str, durability: Durability) -> Option<PathBuf> {
        match (durability, self.replicas[i].parsed.local_dir()) {
            (Durability::Flushed, Some(dir)) => Some(dir.join(key)),
            _ => None,
        }
    }

    /// Hand the writes still running (of an object holding `size` bytes) to tasks of their own,
    /// if the background has room for all of them (`BACKGROUND_WRITES`, `BACKGROUND_BYTES`).
    /// A `Deferred` one flushes its file system when it lands: its put's flush came before.
    fn to_background(
        &self,
        writes: &mut futures::stream::FuturesUnordered<ReplicaWrite>,
        replicas: Vec<usize>,
        key: &str,
        size: u64,
        durability: Durability,
    ) -> Option<Stragglers> {
        let n = writes.len();
        {
            let mut b = self.background.lock().expect("background writes");
            let new_key = !b.keys.contains_key(key);
            let added = if new_key { size } else { 0 };
            if b.writes + n > BACKGROUND_WRITES || b.bytes + added > BACKGROUND_BYTES {
                b.full += 1;
                return None;
            }
            b.handed += n as u64;
            b.writes += n;
            b.bytes += added;
            *b.keys.entry(key.to_string()).or_default() += n;
        }
        let mut stragglers = Stragglers {
            writes: Vec::with_capacity(n),
            replicas,
        };
        let dirs: Vec<Option<PathBuf>> = match durability {
            Durability::Deferred => self.replicas.iter().map(|r| r.parsed.local_dir()).collect(),
            Durability::Flushed => vec![None; self.replicas.len()],
        };
        for write in std::mem::take(writes) {
            let slot = Slot {
                background: self.background.clone(),
                key: key.to_string(),
                bytes: size,
            };
            let dirs = dirs.clone();
            stragglers.writes.push(tokio::spawn(async move {
                let _slot = slot;
                let (i, written) = write.await;
                match (written, &dirs[i]) {
                    (Ok(()), Some(dir)) => {
                        let flushed = flush_dirs(vec![dir.clone()]).await;
                        (i, flushed.map_err(ReplicaWriteError::Flush))
                    }
                    (written, _) => (i, written),
                }
            }));
        }
        Some(stragglers)
    }

    /// Remove `key` from the given replicas (undo of a write whose index commit failed).
    /// Failures are logged: the repair scan finds unindexed objects later.
    pub async fn delete_from(&self, key: &str, replicas: &[usize]) {
        for (i, e) in self.remove_from(key, replicas).await {
            warn!(replica = %self.replicas[i].location, key, error = %e, "undo delete failed");
        }
    }

    /// Remove `key` from every replica (a deleted instance); the replicas (location, error)
    /// that could not be reached or refused. A replica that does not hold it has lost it.
    pub async fn remove(&self, key: &str) -> Vec<(String, String)> {
        let all: Vec<usize> = (0..self.replicas.len()).collect();
        self.remove_from(key, &all)
            .await
            .into_iter()
            .map(|(i, e)| (self.replicas[i].location.clone(), e))
            .collect()
    }

    /// Remove `key` from the given replicas, each within `REPLICA_OP_TIMEOUT`; the ones that
    /// failed (index, error). Not found counts as removed.
    async fn remove_from(&self, key: &str, replicas: &[usize]) -> Vec<(usize, String)> {
        self.background_done(key).await;
        let path = match store_path(key) {
            Ok(p) => p,
            Err(e) => return replicas.iter().map(|&i| (i, e.to_string())).collect(),
        };
        let deletes = replicas
            .iter()
            .filter_map(|&i| self.replicas.get(i).map(|r| (i, r)))
            .map(|(i, r)| {
                let path = path.clone();
                async move {
                    let removed = tokio::time::timeout(REPLICA_OP_TIMEOUT, async {
                        r.store()?.delete(&path).await
                    })
                    .await;
                    match removed {
                        Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => None,
                        Ok(Err(e)) => Some((i, e.to_string())),
                        Err(_) => Some((i, format!("no answer within {REPLICA_OP_TIMEOUT:?}"))),
                    }
                }
            });
        join_all(deletes).await.into_iter().flatten().collect()
    }

    /// Read a whole object, trying replicas in order until one answers (no checksum: used
    /// when rebuilding the index, where nothing is recorded yet).
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = store_path(key)?;
        let mut errors = Vec::new();
        let order = health::read_order(&self.health(), Instant::now(), 0);
        for i in order {
            match self.get_whole(i, &path, REPLICA_OP_TIMEOUT, None).await {
                Ok((b, _)) => return Ok(b),
                Err(e) => {
                    debug!(replica = %self.replicas[i].location, key, error = %e, "read failed, trying next replica");
                    errors.push(format!("{}: {e}", self.replicas[i].location));
                }
            }
        }
        Err(StorageError::ReadFailed {
            key: key.to_string(),
            errors,
        })
    }

    /// One whole-object GET from replica `i`, timed for the latency and bandwidth averages;
    /// with `hash`, the digest of what was read (made with that algorithm) comes with it.
    async fn get_whole(
        &self,
        i: usize,
        path: &StorePath,
        timeout: Duration,
        hash: Option<digest::Algorithm>,
    ) -> Result<(Bytes, Option<String>), CopyError> {
        let t0 = Instant::now();
        let read = async {
            // (A replica that could not be opened is down, for local files too.)
            let store = self.replicas[i].store()?;
            // A local file is opened, read and hashed in one trip to the blocking pool
            // (object_store's `get` takes one to open it, and reading it takes another).
            if let Some(file) = self.replicas[i].local_file(path) {
                let (whole, digest, opened, streaming) =
                    on_blocking_pool(path, move || read_local_file(&file, hash)).await?;
                self.health.lock().expect("health")[i].observe_latency(opened);
                return Ok((whole, digest, streaming));
            }
            let res = store.get(path).await?;
            self.health.lock().expect("health")[i].observe_latency(t0.elapsed());
            let t1 = Instant::now();
            // A local file from a store the caller built (`from_stores`) is read and hashed in
            // one trip to the blocking pool too: its stream would take one trip per 8 KiB
            // (measured: 300 MB/s for a series of 512 KB objects), and hashing on another
            // thread cost two more hand-offs per object (C-MOVE of 2000 objects of 0.5 MB: 19
            // futex calls per object).
            if let object_store::GetResultPayload::File(file, local) = res.payload {
                let range = res.range.clone();
                let (whole, digest) = on_blocking_pool(path, move || {
                    read_local(file, range, hash).map_err(|e| (local, e))
                })
                .await?;
                return Ok::<_, object_store::Error>((whole, digest, t1.elapsed()));
            }
            // Hashed as it arrives, so that checking a copy costs (almost) no time after its
            // last byte.
            let hasher = hash.map(digest::BackgroundDigest::discarding);
            let mut buf = Vec::with_capacity(res.meta.size.min(MAX_PREALLOCATION) as usize);
            let mut stream = res.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                buf.extend_from_slice(&chunk);
                if let Some(hasher) = &hasher {
                    hasher.push(chunk);
                }
            }
            let digest = match hasher {
                Some(hasher) => Some(hasher.finish().await.0),
                None => None,
            };
            Ok::<_, object_store::Error>((Bytes::from(buf), digest, t1.elapsed()))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok((b, digest, streaming))) => {
                let mut h = self.health.lock().expect("health");
                h[i].observe_transfer(b.len() as u64, streaming);
                h[i].succeed();
                Ok((b, digest))
            }
            Ok(Err(e @ object_store::Error::NotFound { .. })) => {
                Err(CopyError::Missing(e.to_string()))
            }
            Ok(Err(e)) => {
                self.note_failure(i, &e.to_string());
                Err(CopyError::Failed(e.to_string()))
            }
            Err(_) => {
                self.note_failure(i, "timed out");
                Err(CopyError::Failed(format!("timed out after {timeout:?}")))
            }
        }
    }

    /// Read an object and check it against what was recorded when it was acknowledged.
    ///
    /// Objects of at least `STRIPE_THRESHOLD` bytes are read striped across the healthy
    /// replicas when the replicas' measured speeds predict that to beat one GET
    /// (`health::predict`), unless what striped and single reads of that size actually
    /// achieved says otherwise (`health::ReadOutcomes`); other reads take one GET from the replica expected to
    /// deliver the object soonest (recent latency + size at recent bandwidth). A
    /// copy that does not match (size or digest) is never returned: the read falls back to
    /// whole copies from each replica in turn, and every bad copy found is reported.
    pub async fn read(&self, expected: &Expected) -> Result<Verified, StorageError> {
        let path = store_path(&expected.key)?;
        let permits = expected
            .size
            .div_ceil(PERMIT_BYTES)
            .clamp(1, READ_BUDGET / PERMIT_BYTES) as u32;
        let _budget = self
            .read_budget
            .acquire_many(permits)
            .await
            .expect("read budget never closed");
        let now = Instant::now();
        let (up, stripe) = {
            let h = self.health.lock().expect("health");
            let up: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| h[i].is_up(now))
                .collect();
            let stripe = expected.size >= STRIPE_THRESHOLD && up.len() >= 2 && {
                let model = health::predict(&h, &up, expected.size, now);
                let mut outcomes = self.outcomes.lock().expect("read outcomes");
                outcomes.choose(expected.size, &model, now)
            };
            (up, stripe)
        };
        let read = self.read_as(&path, expected, &up, stripe).await;
        if let Ok(v) = &read
            && expected.size >= STRIPE_THRESHOLD
            && v.clean
        {
            let mut outcomes = self.outcomes.lock().expect("read outcomes");
            outcomes.record(
                expected.size,
                v.stripe.is_some(),
                now.elapsed(),
                Instant::now(),
            );
        }
        read
    }

    /// `read`, striped over `up` or not as decided.
    async fn read_as(
        &self,
        path: &StorePath,
        expected: &Expected,
        up: &[usize],
        stripe: bool,
    ) -> Result<Verified, StorageError> {
        let mut errors = Vec::new();
        if stripe {
            let stores: Vec<(usize, Arc<dyn ObjectStore>)> = up
                .iter()
                .filter_map(|&i| self.replicas[i].store().ok().map(|s| (i, s)))
                .collect();
            let striped = striped::StripedRead {
                stores,
                path,
                size: expected.size,
                algorithm: expected.read_algorithm(),
                health: &self.health,
                names: self.replicas.iter().map(|r| r.location.clone()).collect(),
            };
            match striped.run().await {
                Ok((bytes, digest, report)) => {
                    debug!(key = %expected.key, bytes_from = ?report.bytes_from, dropped = ?report.dropped, "striped read");
                    if repair::check_read(bytes.len() as u64, &digest, expected).is_none() {
                        return Ok(Verified {
                            bytes,
                            bad_copies: Vec::new(),
                            clean: report.dropped.is_empty(),
                            stripe: Some(report),
                        });
                    }
                    warn!(key = %expected.key, "striped read does not match the recorded checksum; reading whole copies to find the bad one");
                    let v = self.read_whole_copies(path, expected, true).await;
                    return v.map(|v| Verified { clean: false, ..v });
                }
                Err(e) => {
                    warn!(key = %expected.key, errors = ?e, "striped read failed; trying whole copies");
                    errors.extend(e);
                }
            }
        }
        match self.read_whole_copies(path, expected, false).await {
            Err(StorageError::ReadFailed { key, errors: more }) => {
                errors.extend(more);
                Err(StorageError::ReadFailed { key, errors })
            }
            Ok(v) if stripe => Ok(Verified { clean: false, ..v }),
            other => other,
        }
    }

    /// Whole-object reads, quickest expected first, until one matches. With `check_all`, every
    /// replica is read so that all bad copies are found (after a striped read went wrong).
    async fn read_whole_copies(
        &self,
        path: &StorePath,
        expected: &Expected,
        check_all: bool,
    ) -> Result<Verified, StorageError> {
        let mut good = None;
        let mut bad_copies = Vec::new();
        let mut errors = Vec::new();
        let timeout = if expected.size < STRIPE_THRESHOLD {
            SMALL_READ_TIMEOUT
        } else {
            REPLICA_OP_TIMEOUT
        };
        for i in health::read_order(&self.health(), Instant::now(), expected.size) {
            let location = &self.replicas[i].location;
            match self
                .get_whole(i, path, timeout, Some(expected.read_algorithm()))
                .await
            {
                Ok((b, digest)) => {
                    let digest = digest.expect("a hashed read gives its digest");
                    match repair::check_read(b.len() as u64, &digest, expected) {
                        None => {
                            good.get_or_insert(b);
                            if !check_all {
                                break;
                            }
                        }
                        Some(problem) => {
                            warn!(replica = %location, key = %expected.key, %problem, "bad copy");
                            errors.push(format!("{location}: {problem}"));
                            bad_copies.push((i, problem));
                        }
                    }
                }
                Err(CopyError::Missing(e)) => {
                    bad_copies.push((i, Problem::Missing));
                    errors.push(format!("{location}: {e}"));
                }
                Err(CopyError::Failed(e)) => errors.push(format!("{location}: {e}")),
            }
        }
        match good {
            Some(bytes) => Ok(Verified {
                bytes,
                clean: errors.is_empty() && bad_copies.is_empty(),
                bad_copies,
                stripe: None,
            }),
            None => Err(StorageError::ReadFailed {
                key: expected.key.clone(),
                errors,
            }),
        }
    }

    /// The replicas (location, what is wrong) whose copy of `expected.key` is missing or of
    /// another size, by one HEAD request each (within `SMALL_READ_TIMEOUT`); an unreachable
    /// replica is not named (it is in a backoff and its writes are queued anyway). A write is
    /// published whole (rename), so this finds every copy a lost write left out without
    /// reading the objects. A replica in a backoff is not asked, and one whose HEAD times out
    /// is put in a backoff: a replica that stopped answering costs one timeout, not one per
    /// object.
    pub async fn missing_copies(&self, expected: &Expected) -> Vec<(String, String)> {
        let Ok(path) = store_path(&expected.key) else {
            return Vec::new();
        };
        let up = self.up_now();
        let heads = self.replicas.iter().enumerate().map(|(i, r)| {
            let path = path.clone();
            let up = up[i];
            async move {
                if !up {
                    return None;
                }
                let store = r.store().ok()?;
                let head = tokio::time::timeout(SMALL_READ_TIMEOUT, store.head(&path)).await;
                let problem = match head {
                    Ok(Ok(meta)) if meta.size == expected.size => return None,
                    Ok(Ok(meta)) => format!("{} bytes, not {}", meta.size, expected.size),
                    Ok(Err(object_store::Error::NotFound { .. })) => "missing".to_string(),
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        self.note_failure(i, "no answer to a HEAD request in time");
                        return None;
                    }
                };
                Some((r.location.clone(), problem))
            }
        });
        join_all(heads).await.into_iter().flatten().collect()
    }

    /// Whether replica `i` holds `key` (used by tests and verification).
    pub async fn exists_on(&self, i: usize, key: &str) -> bool {
        let Ok(path) = store_path(key) else {
            return false;
        };
        match self.replicas.get(i) {
            Some(r) => match r.store() {
                Ok(store) => store.head(&path).await.is_ok(),
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Remove, on every reachable replica, what interrupted puts left behind
    /// (`keys::is_abandoned_upload`) that was last modified at least `older_than` ago; returns
    /// how many were removed. A put in progress is never that old (`REPLICA_OP_TIMEOUT`), so
    /// nothing a live put still needs is touched.
    pub async fn remove_abandoned_uploads(&self, older_than: Duration) -> usize {
        let prefix = self.list_prefix();
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut removed = 0;
        for r in &self.replicas {
            let Ok(store) = r.store() else { continue };
            let mut stream = store.list(prefix.as_ref());
            let mut stale = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(meta)
                        if keys::is_abandoned_upload(meta.location.as_ref())
                            && std::time::SystemTime::from(meta.last_modified) <= cutoff =>
                    {
                        stale.push(meta.location)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(replica = %r.location, error = %e, "listing for abandoned uploads failed");
                        break;
                    }
                }
            }
            for path in stale {
                match store.delete(&path).await {
                    Ok(()) => {
                        info!(replica = %r.location, key = %path, "removed an abandoned upload");
                        removed += 1;
                    }
                    Err(e) => {
                        warn!(replica = %r.location, key = %path, error = %e, "could not remove an abandoned upload")
                    }
                }
            }
        }
        removed
    }

    /// What a listing of this archive's objects starts from (None: the whole store).
    fn list_prefix(&self) -> Option<StorePath> {
        (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()))
    }

    /// Every object key under the prefix on every reachable replica, deduplicated and sorted.
    pub async fn list_keys(&self) -> Result<Vec<String>, StorageError> {
        let prefix = self.list_prefix();
        let mut keys = std::collections::BTreeSet::new();
        let mut reachable = 0;
        let mut last_err = None;
        for r in &self.replicas {
            let store = match r.store() {
                Ok(store) => store,
                Err(source) => {
                    warn!(replica = %r.location, error = %source, "replica unavailable for listing");
                    last_err = Some(StorageError::List {
                        replica: r.location.clone(),
                        source,
                    });
                    continue;
                }
            };
            let mut stream = store.list(prefix.as_ref());
            let mut ok = true;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(meta) => {
                        keys.insert(meta.location.to_string());
                    }
                    Err(source) => {
                        warn!(replica = %r.location, error = %source, "listing failed");
                        last_err = Some(StorageError::List {
                            replica: r.location.clone(),
                            source,
                        });
                        ok = false;
                        break;
                    }
                }
            }
            reachable += usize::from(ok);
        }
        match (reachable, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(keys.into_iter().collect()),
        }
    }
}

fn store_path(key: &str) -> Result<StorePath, StorageError> {
    StorePath::parse(key).map_err(|_| StorageError::BadKey(key.to_string()))
}

/// Open one replica from its configured location (see `backend`). A location that cannot be
/// understood stops start-up; one that cannot be opened now is reported and starts as down.
fn open_replica(location: &str) -> Result<Replica, StorageError> {
    let parsed = Location::parse(location).map_err(|reason| StorageError::OpenReplica {
        location: location.to_string(),
        reason,
    })?;
    let store = match parsed.open() {
        Ok(s) => Some(s),
        Err(reason) if matches!(parsed, Location::Local(_)) => {
            error!(replica = location, %reason, "replica unavailable at start-up; treated as down until it can be opened");
            None
        }
        Err(reason) => {
            return Err(StorageError::OpenReplica {
                location: location.to_string(),
                reason,
            });
        }
    };
    Ok(Replica {
        location: location.to_string(),
        parsed,
        store: Mutex::new(store),
        unflushed: Mutex::new(None),
    })
}

/// A local replica's whole file and with `hash` its digest, read on the calling (blocking)
/// thread, with the time it took to open and the time it took to read.
#[allow(clippy::type_complexity)]
fn read_local_file(
    file: &Path,
    hash: Option<digest::Algorithm>,
) -> Result<(Bytes, Option<String>, Duration, Duration), (PathBuf, std::io::Error)> {
    let failed = |e| (file.to_path_buf(), e);
    let t0 = Instant::now();
    let f = std::fs::File::open(file).map_err(failed)?;
    let len = f.metadata().map_err(failed)?.len();
    let opened = t0.elapsed();
    let (whole, digest) = read_local(f, 0..len, hash).map_err(failed)?;
    Ok((whole, digest, opened, t0.elapsed() - opened))
}

/// Run a read of a local file on the blocking pool; a failure as object_store reports it.
async fn on_blocking_pool<T: Send + 'static>(
    path: &StorePath,
    read: impl FnOnce() -> Result<T, (PathBuf, std::io::Error)> + Send + 'static,
) -> Result<T, object_store::Error> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "replica",
            source: Box::new(e),
        })?
        .map_err(|(file, source)| local_read_error(path, &file, source))
}

/// A local read's failure as object_store reports it: a missing file is `NotFound` (a
/// missing copy, to repair), anything else a failure of the replica.
fn local_read_error(path: &StorePath, file: &Path, source: std::io::Error) -> object_store::Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        return object_store::Error::NotFound {
            path: path.to_string(),
            source: Box::new(source),
        };
    }
    object_store::Error::Generic {
        store: "replica",
        source: format!("reading {}: {source}", file.display()).into(),
    }
}

/// Read `range` of a local file that object_store's `get` opened, and with `hash` its digest,
/// on the calling (blocking) thread, in one read call for the whole range (`read_to_end`
/// would take seven for 512 KB, doubling its reads from 8 KiB), straight into the buffer's
/// unused capacity: zeroing it first (`read_exact` needs initialised bytes) was 2.7% of
/// pacsd's CPU in a C-MOVE of 512 KB objects (perf, 2026-12-05).
fn read_local(
    file: std::fs::File,
    range: std::ops::Range<u64>,
    hash: Option<digest::Algorithm>,
) -> std::io::Result<(Bytes, Option<String>)> {
    use std::os::fd::AsRawFd;
    let len = (range.end - range.start) as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = range.start + buf.len() as u64;
        let want = len - buf.len();
        // SAFETY: pread writes at most `want` bytes at the end of the initialised part, all
        // within the capacity reserved above, and only the bytes it reports written are then
        // counted as initialised.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(buf.len()).cast(),
                want,
                at as libc::off_t,
            )
        };
        match n {
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    let digest = hash.map(|algorithm| algorithm.digest(&buf));
    Ok((Bytes::from(buf), digest))
}

/// Drop the cached pages of a durable local copy (posix_fadvise DONTNEED; they are clean after
/// its fsync, so nothing is written). A hint: if the file is gone or the call fails, nothing
/// changes but the cache.
fn forget_cached(file: &Path) {
    if let Ok(f) = std::fs::File::open(file) {
        direct::drop_cached(&f);
    }
}

/// Flush each file system that holds one of `dirs` once (syncfs(2)), on the blocking pool.
async fn flush_dirs(dirs: Vec<PathBuf>) -> Result<(), StorageError> {
    use std::os::unix::fs::MetadataExt;
    if dirs.is_empty() {
        return Ok(());
    }
    let flush = move || {
        let mut done = Vec::new();
        for dir in dirs {
            let flushed = std::fs::File::open(&dir).and_then(|d| {
                let dev = d.metadata()?.dev();
                if !done.contains(&dev) {
                    syncfs(&d)?;
                    done.push(dev);
                }
                Ok(())
            });
            flushed.map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    };
    tokio::task::spawn_blocking(flush)
        .await
        .map_err(|e| format!("flushing thread: {e}"))
        .and_then(|r| r)
        .map_err(StorageError::Flush)
}

/// Flush the file system that holds `file` (syncfs(2)).
fn syncfs(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The names that share a device, in their first-seen order; groups of one are left out.
fn same_device(replicas: impl IntoIterator<Item = (String, u64)>) -> Vec<Vec<String>> {
    let mut groups: Vec<(u64, Vec<String>)> = Vec::new();
    for (name, dev) in replicas {
        match groups.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, names)) => names.push(name),
            None => groups.push((dev, vec![name])),
        }
    }
    groups
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(_, names)| names)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three in-memory replicas, the last one's puts taking `slow` (in tokio's time, so a
    /// test with paused time runs them in no real time).
    fn with_slow_third(slow: Duration, quorum: Option<usize>) -> Storage {
        use object_store::memory::InMemory;
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        let fast = || Arc::new(InMemory::new()) as Arc<dyn ObjectStore>;
        let slowed = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: slow,
                ..ThrottleConfig::default()
            },
        );
        let stores = vec![
            ("r1".to_string(), fast()),
            ("r2".to_string(), fast()),
            ("r3".to_string(), Arc::new(slowed) as Arc<dyn ObjectStore>),
        ];
        Storage::from_stores(stores, quorum, "").unwrap()
    }

    const KEY: &str = "1.2.3/1.2.3.4/1.2.3.4.5.dcm";

    #[tokio::test(start_paused = true)]
    async fn a_replica_slower_than_the_patience_finishes_in_the_background() {
        let storage = with_slow_third(Duration::from_secs(30), None);
        let t0 = tokio::time::Instant::now();
        let put = storage.put(KEY, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(t0.elapsed(), STRAGGLER_PATIENCE);
        assert_eq!(put.written, vec![0, 1]);
        assert!(put.missed.is_empty(), "{:?}", put.missed);
        assert_eq!(put.stragglers.replicas(), [2]);
        let counted = BackgroundStats {
            running: 1,
            handed: 1,
            full: 0,
        };
        assert_eq!(storage.background_stats(), counted);
        // It goes on without anyone waiting, and succeeds; it was never counted as failing.
        let ended = put.stragglers.finish().await;
        assert!(matches!(ended.as_slice(), [(2, Ok(()))]), "{ended:?}");
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        assert!(storage.health()[2].is_up(Instant::now()));
        let read = storage.replicas()[2].store().unwrap();
        let got = read.get(&store_path(KEY).unwrap()).await.unwrap();
        assert_eq!(got.bytes().await.unwrap(), Bytes::from_static(b"x"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_holds_at_most_its_bytes_of_objects() {
        let storage = with_slow_third(Duration::from_secs(30), None);
        let big = Bytes::from(vec![7u8; (BACKGROUND_BYTES / 2 + 1) as usize]);
        let first = storage.put(KEY, big.clone()).await.unwrap();
        assert_eq!(first.stragglers.replicas(), [2]);
        // A second object of that size would pass the budget: its put waits (the grace)
        // and counts the slow replica as missed.
        let t0 = tokio::time::Instant::now();
        let second = storage
            .put("1.2.3/1.2.3.4/1.2.3.4.9.dcm", big)
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), STRAGGLER_GRACE);
        assert!(second.stragglers.replicas().is_empty());
        assert_eq!(second.missed.len(), 1);
        first.stragglers.finish().await;
        assert_eq!(storage.background_stats().running, 0);
        assert_eq!(storage.background.lock().unwrap().bytes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_does_not_answer_costs_the_search_for_missing_copies_one_timeout() {
        use object_store::memory::InMemory;
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        let silent = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_get_per_call: Duration::from_secs(3600),
                ..ThrottleConfig::default()
            },
        );
        let stores = vec![
            (
                "r1".to_string(),
                Arc::new(InMemory::new()) as Arc<dyn ObjectStore>,
            ),
            (
                "r2".to_string(),
                Arc::new(InMemory::new()) as Arc<dyn ObjectStore>,
            ),
            ("r3".to_string(), Arc::new(silent) as Arc<dyn ObjectStore>),
        ];
        let storage = Storage::from_stores(stores, None, "").unwrap();
        let expected =
            |n: u32| Expected::new(format!("1.2.3/1.2.3.4/1.2.3.4.{n}.dcm"), 1, String::new());
        // Nothing is stored: the replicas that answer say so; the silent one is not named
        // (its writes are queued anyway) and is put in a backoff after one timeout.
        let t0 = tokio::time::Instant::now();
        let missing = storage.missing_copies(&expected(1)).await;
        assert_eq!(t0.elapsed(), SMALL_READ_TIMEOUT);
        let names: Vec<&str> = missing.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["r1", "r2"]);
        assert!(!storage.health()[2].is_up(Instant::now()));
        // The next objects do not wait for it again.
        let t1 = tokio::time::Instant::now();
        for n in 2..10 {
            assert_eq!(storage.missing_copies(&expected(n)).await.len(), 2);
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_waits_for_a_write_of_its_key_still_landing() {
        let storage = with_slow_third(Duration::from_secs(30), None);
        let t0 = tokio::time::Instant::now();
        let put = storage.put(KEY, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(put.stragglers.replicas(), [2]);
        // Deleted right away: the removal waits for the slow replica's write, so that the
        // copy it lands is removed too, not left behind to come back.
        assert!(storage.remove(KEY).await.is_empty());
        assert!(t0.elapsed() >= Duration::from_secs(30));
        for i in 0..3 {
            assert!(!storage.exists_on(i, KEY).await, "replica {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_background_slot_taken_a_straggler_gets_the_grace_then_is_abandoned() {
        let storage = with_slow_third(Duration::from_secs(30), None);
        let mut running = Vec::new();
        for n in 0..BACKGROUND_WRITES {
            let key = format!("1.2.3/1.2.3.4/1.2.3.4.{n}.dcm");
            let put = storage.put(&key, Bytes::from_static(b"x")).await.unwrap();
            assert_eq!(put.stragglers.replicas(), [2], "put {n}");
            running.push(put.stragglers);
        }
        let t0 = tokio::time::Instant::now();
        let put = storage.put(KEY, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(t0.elapsed(), STRAGGLER_GRACE);
        assert_eq!(storage.background_stats().full, 1);
        assert_eq!(put.written, vec![0, 1]);
        assert!(put.stragglers.replicas().is_empty());
        assert_eq!(put.missed.len(), 1);
        assert_eq!(put.missed[0].0, 2);
        assert!(
            put.missed[0].1.contains("after the quorum was met"),
            "{:?}",
            put.missed
        );
        // It is now in a backoff: the next put leaves it out instead of waiting for it.
        let t1 = tokio::time::Instant::now();
        let next = storage.put(KEY, Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(next.written, vec![0, 1]);
        assert!(
            next.missed[0].1.starts_with("left out"),
            "{:?}",
            next.missed
        );
        // The slots come back as the background writes end.
        for s in running {
            s.finish().await;
        }
        assert_eq!(storage.background_stats().running, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_within_the_patience_is_waited_for() {
        let slow = STRAGGLER_PATIENCE - Duration::from_millis(5);
        let storage = with_slow_third(slow, None);
        let t0 = tokio::time::Instant::now();
        let put = storage.put(KEY, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(t0.elapsed(), slow);
        assert_eq!(put.written, vec![0, 1, 2]);
        assert!(put.missed.is_empty());
        assert!(put.stragglers.replicas().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_the_quorum_needs_is_given_up_at_the_replica_timeout() {
        let storage = with_slow_third(Duration::from_secs(600), Some(3));
        let t0 = tokio::time::Instant::now();
        let err = storage
            .put(KEY, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(t0.elapsed(), REPLICA_OP_TIMEOUT);
        match err {
            StorageError::QuorumNotMet {
                ok, needed, errors, ..
            } => {
                assert_eq!((ok, needed), (2, 3));
                assert!(errors[0].contains("timed out"), "{errors:?}");
            }
            other => panic!("expected QuorumNotMet, got {other}"),
        }
    }

    #[test]
    fn replicas_on_one_device_are_named_together() {
        let on = |name: &str, dev| (name.to_string(), dev);
        assert_eq!(
            same_device([
                on("r1", 7),
                on("r2", 9),
                on("r3", 7),
                on("r4", 9),
                on("r5", 3)
            ]),
            vec![
                vec!["r1".to_string(), "r3".into()],
                vec!["r2".into(), "r4".into()]
            ]
        );
        assert!(same_device([on("r1", 1), on("r2", 2)]).is_empty());
        assert!(same_device(Vec::new()).is_empty());
    }

    #[test]
    fn the_default_three_directories_share_this_disk() {
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<String> = (1..=3)
            .map(|i| {
                dir.path()
                    .join(format!("replica-{i}"))
                    .display()
                    .to_string()
            })
            .collect();
        let storage = Storage::open(&replicas, None, "").unwrap();
        assert_eq!(storage.shared_devices(), vec![replicas]);
    }

    #[tokio::test]
    async fn a_local_copy_is_read_from_the_file_object_store_wrote() {
        // Names that object_store encodes on disk (a space, a percent sign, a '#') as well as
        // the plain UIDs pacsd writes: the file read directly is the one the store wrote.
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("r1").display().to_string();
        let storage = Storage::open(std::slice::from_ref(&location), None, "").unwrap();
        let store = storage.replicas[0].store().unwrap();
        for key in ["1.2.3/1.2.3.4/1.2.3.4.5.dcm", "a b/c%d/e#f.dcm"] {
            let path = store_path(key).unwrap();
            store
                .put(&path, Bytes::from(key.to_string()).into())
                .await
                .unwrap();
            let file = storage.replicas[0].local_file(&path).unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), key.as_bytes(), "{key}");
            let (bytes, _) = storage
                .get_whole(0, &path, SMALL_READ_TIMEOUT, None)
                .await
                .unwrap();
            assert_eq!(bytes, key.as_bytes());
        }
        let missing = store_path("1.2.3/1.2.3.4/gone.dcm").unwrap();
        assert!(matches!(
            storage
                .get_whole(0, &missing, SMALL_READ_TIMEOUT, None)
                .await,
            Err(CopyError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn deferred_writes_are_flushed_per_replica_named_and_a_lost_directory_fails_it() {
        assert_eq!(Durability::of_object(8 << 10), Durability::Deferred);
        assert_eq!(Durability::of_object(512 << 10), Durability::Deferred);
        assert_eq!(
            Durability::of_object(direct::DIRECT_UP_TO as usize + 1),
            Durability::Flushed
        );
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<String> = (1..=3)
            .map(|i| dir.path().join(format!("r{i}")).display().to_string())
            .collect();
        let storage = Storage::open(&replicas, None, "").unwrap();
        let put = storage.put_as("s/e/i.dcm", Bytes::from_static(b"x"), Durability::Deferred);
        assert_eq!(put.await.unwrap().written, [0, 1, 2]);
        storage.flush(&[0, 1, 2]).await.unwrap();
        std::fs::remove_dir_all(&replicas[2]).unwrap();
        storage.flush(&[0, 1]).await.unwrap();
        let lost = storage.flush(&[1, 2]).await;
        assert!(
            matches!(&lost, Err(StorageError::Flush(e)) if e.contains("r3")),
            "{lost:?}"
        );
    }

    /// Pages of `file` in the page cache (mincore of a mapping that touches none of them).
    fn cached_pages(file: &std::path::Path) -> usize {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(file).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let mut resident = vec![0u8; len.div_ceil(4096)];
        // SAFETY: a read-only shared mapping of an open file, unmapped before returning;
        // mincore writes one byte per page into `resident`, which has room for every page.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert_eq!(libc::mincore(at, len, resident.as_mut_ptr()), 0);
            libc::munmap(at, len);
        }
        resident.iter().filter(|p| *p & 1 == 1).count()
    }

    #[tokio::test]
    async fn a_flushed_object_is_dropped_from_the_page_cache_on_every_local_replica() {
        // In the build directory: a tmpfs cannot drop its pages.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let replicas: Vec<String> = (1..=3)
            .map(|i| dir.path().join(format!("r{i}")).display().to_string())
            .chain(["memory://m".to_string()])
            .collect();
        let storage = Storage::open(&replicas, None, "").unwrap();
        // One object written around the page cache (`direct`), one too large for that
        // (`forget_cached` after object_store's write).
        let keys = ["s/e/i.dcm", "s/e/j.dcm"];
        let objects = [
            Bytes::from(vec![7u8; 512 << 10]),
            Bytes::from(vec![8u8; direct::DIRECT_UP_TO as usize + 4096]),
        ];
        for (key, object) in keys.iter().zip(&objects) {
            assert_eq!(
                storage.put_and_finish(key, object.clone()).await.unwrap(),
                [0, 1, 2, 3]
            );
        }
        let file = |i: usize, key: &str| std::path::Path::new(&replicas[i]).join(key);
        let cached = || {
            keys.iter()
                .flat_map(|k| (0..3).map(move |i| cached_pages(&file(i, k))))
                .sum::<usize>()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while cached() != 0 {
            assert!(Instant::now() < deadline, "copies still cached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Dropped from the cache, not lost.
        for (key, object) in keys.iter().zip(&objects) {
            assert_eq!(&storage.get(key).await.unwrap(), object);
        }
        let (key, file) = (keys[0], |i| file(i, keys[0]));
        // A deferred (small) object is left alone: it is dirty until its syncfs; a replica
        // that is not a local directory has no page cache of ours.
        assert_eq!(storage.uncache(1, key, Durability::Deferred), None);
        assert_eq!(storage.uncache(3, key, Durability::Flushed), None);
        assert_eq!(storage.uncache(0, key, Durability::Flushed), Some(file(0)));
    }

    #[tokio::test]
    async fn a_deferred_object_over_the_direct_line_bypasses_the_page_cache_but_its_tail() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let replicas: Vec<String> = (1..=3)
            .map(|i| dir.path().join(format!("r{i}")).display().to_string())
            .collect();
        let storage = Storage::open(&replicas, None, "").unwrap();
        let file = |i: usize, key: &str| std::path::Path::new(&replicas[i]).join(key);
        // A CT image's size (written directly, its last partial page through the cache) and a
        // small object's (through the cache, written back by the syncfs).
        let sized = [("s/e/ct.dcm", 525_332usize), ("s/e/small.dcm", 9_000)];
        for (key, len) in sized {
            let object = Bytes::from(vec![5u8; len]);
            let put = storage.put_as(key, object.clone(), Durability::Deferred);
            let written = put.await.unwrap().written;
            assert_eq!(written, [0, 1, 2]);
            storage.flush(&written).await.unwrap();
            for i in 0..3 {
                let pages = cached_pages(&file(i, key));
                if len as u64 > direct::DIRECT_FROM {
                    assert!(pages <= 1, "{key} on r{i}: {pages} pages cached");
                } else {
                    // (and the count sees cached pages: the check above is not vacuous)
                    assert!(pages >= 1, "{key} on r{i}: no page cached");
                }
            }
            assert_eq!(storage.get(key).await.unwrap(), object);
        }
    }

    #[tokio::test]
    async fn memory_replicas_write_and_read() {
        let locs: Vec<String> = (0..3).map(|i| format!("memory://r{i}")).collect();
        let s = Storage::open(&locs, None, "dicom").unwrap();
        let out = s
            .put("dicom/1.2/1.3/1.4.dcm", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(out.written, vec![0, 1, 2]);
        assert_eq!(&s.get("dicom/1.2/1.3/1.4.dcm").await.unwrap()[..], b"abc");
        assert_eq!(
            s.list_keys().await.unwrap(),
            vec!["dicom/1.2/1.3/1.4.dcm".to_string()]
        );
    }

    #[test]
    fn unknown_scheme_is_refused_by_name() {
        let err = Storage::open(&["gopher://x".into()], None, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gopher://x") && err.contains("unsupported scheme"),
            "{err}"
        );
    }
}
