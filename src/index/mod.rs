//! The SQLite index: one writer thread with group commit, readers in parallel (WAL), schema
//! in numbered .sql migrations, a change log with a monotonically increasing seq.

pub mod account;
pub mod deletion;
pub mod preview;
pub mod query;
pub mod record;
pub mod replica;
pub mod settled;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

pub use preview::{PreviewCounts, PreviewState, PreviewTask, preview_key};
pub use record::{InstanceRecord, RecordError};

/// Step 3 of the durability contract in HA mode: an index commit counts once its change-log
/// row is on the standby too (or this node holds a solo epoch). Implemented by `ha`, waited on
/// by the store path; none when the node runs alone.
pub trait CommitGate: Send + Sync {
    /// Resolve once change-log rows up to `seq` may be acknowledged.
    fn confirm(&self, seq: i64) -> futures::future::BoxFuture<'_, Result<(), NotConfirmed>>;
}

/// Why an index commit cannot be acknowledged in an HA pair (the object is then not kept).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotConfirmed {
    #[error("this node is no longer the primary (epoch {epoch})")]
    NoLongerPrimary { epoch: u64 },
    #[error("the standby did not confirm index change {seq} within {limit:?}")]
    StandbyLate {
        seq: i64,
        limit: std::time::Duration,
    },
}

/// The index schema of this build: how many migrations it applies (replication refuses a
/// peer with another).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Numbered migrations; `PRAGMA user_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_previews.sql"),
    include_str!("migrations/0003_changelog_epoch.sql"),
    include_str!("migrations/0004_accounts.sql"),
    include_str!("migrations/0005_metadata.sql"),
    include_str!("migrations/0006_deletions.sql"),
    include_str!("migrations/0007_metadata_nested_bulk.sql"),
    include_str!("migrations/0008_digest.sql"),
    include_str!("migrations/0009_settled.sql"),
    include_str!("migrations/0010_read_check.sql"),
];

/// Most write jobs folded into one transaction (one fsync) by the group commit.
const MAX_GROUP: usize = 256;

/// Reader connections kept open for queries.
const READER_POOL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("creating the index directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening index {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migrating index schema to version {version}: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error("index database is at schema version {found}, newer than this pacsd ({known})")]
    TooNew { found: usize, known: usize },
    #[error("committing to the index: {0}")]
    Commit(rusqlite::Error),
    #[error("querying the index: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("encoding change-log record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the index writer has stopped")]
    WriterGone,
    #[error("replicated record out of order: change-log seq {got} arrived, {expected} expected")]
    OutOfOrder { expected: i64, got: i64 },
    #[error("replicated record {seq} does not apply here: {reason}")]
    Diverged { seq: i64, reason: String },
    #[error("change-log row {seq} is of an unknown kind `{kind}`")]
    UnknownChange { seq: i64, kind: String },
    #[error("an account change: {0}")]
    Account(String),
    #[error(
        "study {study} belongs to patient `{stored}`; this instance names patient `{received}`"
    )]
    PatientConflict {
        study: String,
        stored: String,
        received: String,
    },
}

/// Result of inserting an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new row; `seq` is its change-log position.
    Inserted { seq: i64 },
    /// The SOP Instance UID was already indexed; nothing changed.
    AlreadyPresent { digest: String },
}

/// What the index knows of a stored instance: who it is, how it is stored, and what every
/// read of it is checked against (`storage_key`, `size`, `digest`; `archive` makes the
/// storage's `Expected` of it). The one shape of a stored instance: C-MOVE/C-GET, WADO, the
/// portal and previews all read through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub storage_key: String,
    pub size: u64,
    pub digest: String,
    /// The read check recorded beside the digest, if any (`storage::digest`).
    pub read_check: Option<String>,
    /// It has image rows (Rows is recorded): an image, not a report or a waveform.
    pub has_pixels: bool,
}

/// Row counts, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub patients: u64,
    pub studies: u64,
    pub series: u64,
    pub instances: u64,
    pub changelog: u64,
    pub repair_queue: u64,
}

/// The latest commit that added instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Change-log seq of its last row.
    pub seq: i64,
    /// When it was committed (None: before this process opened the index).
    pub at: Option<std::time::Instant>,
}

/// An entry of the repair queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairEntry {
    pub storage_key: String,
    pub replica: String,
    pub reason: String,
}

/// A maintenance write run by the writer thread inside its group transaction.
type Maintenance = Box<dyn FnOnce(&Connection) -> Result<(), IndexError> + Send>;
/// A write of derived data; answers whether it wrote something that must survive a power loss
/// after all (`Work::Derived`).
type DerivedWrite = Box<dyn FnOnce(&Connection) -> Result<MustFlush, IndexError> + Send>;

/// Whether a derived write touched rows that are not derived (e.g. a tombstone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MustFlush(pub bool);

/// When an instance row is committed relative to its object's copies becoming durable
/// (`settled`, rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// The copies are durable before the commit, which flushes the WAL: the row is never
    /// open (`Index::insert`).
    AfterCopies,
    /// The commit flushes the WAL while the copies are still being written; the row is open
    /// until the caller says both are durable (`Index::insert_ahead`).
    BeforeCopies,
    /// The commit does not flush: the caller makes the row durable together with the copies
    /// (one `syncfs` of their file systems and the index's); open until then
    /// (`Index::insert_unflushed`).
    WithCopies,
}

impl RowOrder {
    /// Whether the commit flushes the WAL.
    fn flushes(self) -> bool {
        self != RowOrder::WithCopies
    }

    /// Whether the row is open from its commit until `Index::settled`.
    fn opens(self) -> bool {
        self != RowOrder::AfterCopies
    }
}

/// What the single writer does for one job.
enum Work {
    Insert {
        record: Box<InstanceRecord>,
        /// Replicas (location, error) that missed the object's write.
        missed: Vec<(String, String)>,
        /// Before, after or with its object's copies (`RowOrder`).
        order: RowOrder,
    },
    /// Repair-queue bookkeeping and other small writes.
    Apply(Maintenance),
    /// Derived data that can be made again from the archive (WADO-RS metadata, preview
    /// outcomes), with no change-log row. A group of only such writes is committed without a
    /// flush (`synchronous=NORMAL`): a power loss may take its last commits back, never
    /// leaving the index inconsistent, and the next flushed commit flushes them too (the WAL
    /// is written in order). One that answers `MustFlush(true)` is flushed at once.
    Derived(DerivedWrite),
    /// A change of the accounts, with its change-log row.
    Account(Box<account::AccountChange>),
    /// Instances deleted, with their tombstones and change-log row.
    Delete(Box<deletion::Deletion>),
    /// A change-log row from the HA primary, applied at exactly its seq.
    Replicated {
        epoch: u64,
        seq: i64,
        change: Box<replica::Change>,
        missed: Vec<(String, String)>,
    },
}

impl Work {
    /// Whether a group holding this job commits with a flush of the WAL.
    fn flushed(&self) -> bool {
        match self {
            Work::Derived(_) => false,
            Work::Insert { order, .. } => order.flushes(),
            Work::Apply(_) | Work::Account(_) | Work::Delete(_) | Work::Replicated { .. } => true,
        }
    }
}

/// What a writer job did.
#[derive(Debug)]
enum Done {
    /// Repair-queue bookkeeping and other small writes.
    Applied,
    Instance(InsertOutcome),
    Account(account::AccountOutcome),
    Deleted(deletion::Deleted),
    Derived(MustFlush),
}

impl Done {
    /// The change-log row this job added, if any (what the HA replicator ships next).
    fn seq(&self) -> Option<i64> {
        match self {
            Done::Instance(InsertOutcome::Inserted { seq }) => Some(*seq),
            Done::Account(o) => o.seq,
            Done::Deleted(d) => d.seq,
            Done::Instance(InsertOutcome::AlreadyPresent { .. })
            | Done::Applied
            | Done::Derived(_) => None,
        }
    }
}

struct InsertJob {
    work: Work,
    reply: oneshot::Sender<Result<Done, IndexError>>,
}

/// Handle to the index. Cloning is cheap; the writer thread ends when the last handle drops.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<std::sync::mpsc::Sender<InsertJob>>>,
    readers: Mutex<Vec<Connection>>,
    writer_thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// The change-log seq and time of the latest commit that added instances (the render
    /// worker and the HA replicator watch it; every subscriber sees every change).
    commits: tokio::sync::watch::Sender<Commit>,
    /// HA epoch stamped on new change-log rows (0 when the node runs alone).
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Rows committed before their copies were flushed (`settled`).
    settling: Arc<Mutex<settled::Settling>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.lock().expect("writer lock").take();
        if let Some(h) = self.writer_thread.lock().expect("thread lock").take() {
            let _ = h.join();
        }
    }
}

/// Prepared statements kept per connection (`open_connection`).
const STATEMENT_CACHE: usize = 64;

fn open_connection(path: &Path) -> Result<Connection, IndexError> {
    let conn = Connection::open(path).map_err(|source| IndexError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk before the
    // C-STORE response that depends on it (the durability contract, step 2).
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; \
         PRAGMA busy_timeout=10000;",
    )
    .map_err(|source| IndexError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    query::register_functions(&conn).map_err(|source| IndexError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // Room for the writer's per-instance statements (`exec`) beside the rest it runs
    // (previews, metadata, repairs), which would evict them from the default 16.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Outcome of `Index::find`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindOutcome {
    /// The matches (each the query's `select` columns as text).
    Rows(Vec<Vec<Option<String>>>),
    /// More matches than the limit; nothing is returned.
    TooMany { matches: u64, limit: u64 },
}

fn migrate(conn: &mut Connection) -> Result<(), IndexError> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(|source| IndexError::Migrate { version: 0, source })? as usize;
    if current > MIGRATIONS.len() {
        return Err(IndexError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i + 1;
        let tx = conn
            .transaction()
            .map_err(|source| IndexError::Migrate { version, source })?;
        tx.execute_batch(sql)
            .and_then(|_| tx.pragma_update(None, "user_version", version as i64))
            .and_then(|_| tx.commit())
            .map_err(|source| IndexError::Migrate { version, source })?;
    }
    Ok(())
}

impl Index {
    /// Open (creating and migrating) the index at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| IndexError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut writer_conn = open_connection(path)?;
        migrate(&mut writer_conn)?;
        let readers = (0..READER_POOL)
            .map(|_| open_connection(path))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = std::sync::mpsc::channel::<InsertJob>();
        let last_seq: i64 = writer_conn
            .query_row("SELECT coalesce(max(seq), 0) FROM changelog", [], |r| {
                r.get(0)
            })
            .map_err(|source| IndexError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (commits, _) = tokio::sync::watch::channel(Commit {
            seq: last_seq,
            at: None,
        });
        let signal = commits.clone();
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer_epoch = epoch.clone();
        let written: i64 = writer_conn
            .query_row("SELECT seq FROM settled WHERE id = 0", [], |r| r.get(0))
            .map_err(|source| IndexError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let settling = Arc::new(Mutex::new(settled::Settling::new(written, last_seq)));
        let writer_settling = settling.clone();
        let handle = thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &signal, &writer_epoch, &writer_settling))
            .expect("spawning the index writer thread");
        Ok(Index {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(readers),
                writer_thread: Mutex::new(Some(handle)),
                commits,
                epoch,
                settling,
            }),
        })
    }

    /// Close the index if this is its only handle (the writer finishes and the files are
    /// released); otherwise hand the handle back.
    pub fn close(self) -> Result<(), Index> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                drop(inner);
                Ok(())
            }
            Err(inner) => Err(Index { inner }),
        }
    }

    /// Follow the commits that add instances: the receiver changes after each of them.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<Commit> {
        self.inner.commits.subscribe()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Insert an instance (idempotent on SOP Instance UID) and queue repairs for the replicas
    /// that missed its write, in one transaction. Returns once the commit is durable.
    pub async fn insert(
        &self,
        record: InstanceRecord,
        missed: Vec<(String, String)>,
    ) -> Result<InsertOutcome, IndexError> {
        self.insert_as(record, missed, RowOrder::AfterCopies).await
    }

    /// `insert`, committed without a flush of its own: the caller makes the row durable
    /// together with its object's copies (one `syncfs` of their file systems and the
    /// index's, `Storage::flush_with`) and then calls `settled` with its seq. Until then a
    /// power loss may keep the row and lose the copies (the kernel writes back in any order,
    /// and a checkpoint flushes the WAL): start-up checks every row after the last settled
    /// one against storage (`archive::reconcile`).
    pub async fn insert_unflushed(
        &self,
        record: InstanceRecord,
        missed: Vec<(String, String)>,
    ) -> Result<InsertOutcome, IndexError> {
        self.insert_as(record, missed, RowOrder::WithCopies).await
    }

    /// `insert`, committed (and flushed) while the object's copies are still being written:
    /// the caller queues a repair for each replica the write missed once it knows them,
    /// removes the row again if the write fails, and calls `settled` with its seq once the
    /// copies are durable. Until then a power loss may keep the row without its copies, as
    /// for `insert_unflushed`, and start-up checks it.
    pub async fn insert_ahead(&self, record: InstanceRecord) -> Result<InsertOutcome, IndexError> {
        self.insert_as(record, Vec::new(), RowOrder::BeforeCopies)
            .await
    }

    async fn insert_as(
        &self,
        record: InstanceRecord,
        missed: Vec<(String, String)>,
        order: RowOrder,
    ) -> Result<InsertOutcome, IndexError> {
        self.submit(Work::Insert {
            record: Box::new(record),
            missed,
            order,
        })
        .await
        .map(|done| match done {
            Done::Instance(o) => o,
            other => unreachable_job(other),
        })
    }

    /// `change_account`'s trip through the writer.
    async fn submit_account(
        &self,
        change: account::AccountChange,
    ) -> Result<account::AccountOutcome, IndexError> {
        match self.submit(Work::Account(Box::new(change))).await? {
            Done::Account(o) => Ok(o),
            other => Ok(unreachable_job(other)),
        }
    }

    /// Run a small write (repair-queue bookkeeping) on the single writer, in its group commit.
    /// Every write of this process goes through the writer: a second writing connection would
    /// make the writer wait on SQLite's lock (C-STORE failed with "database is locked" while
    /// the preview worker wrote metadata on a reader connection).
    async fn apply(&self, f: Maintenance) -> Result<(), IndexError> {
        self.submit(Work::Apply(f)).await.map(|_| ())
    }

    /// Run a write that answers with a value on the single writer, in its group commit.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.apply(Box::new(move |c| {
            let value = f(c)?;
            *out.lock().expect("write slot") = Some(value);
            Ok(())
        }))
        .await?;
        let value = slot.lock().expect("write slot").take();
        Ok(value.expect("a committed write left its value"))
    }

    /// Run a write of derived data (`Work::Derived`) on the single writer.
    async fn apply_derived(&self, f: DerivedWrite) -> Result<(), IndexError> {
        self.submit(Work::Derived(f)).await.map(|_| ())
    }

    /// Hand a job to the single writer and wait for its durable outcome.
    async fn submit(&self, work: Work) -> Result<Done, IndexError> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.inner.writer.lock().expect("writer lock");
            let sender = guard.as_ref().ok_or(IndexError::WriterGone)?;
            sender
                .send(InsertJob { work, reply })
                .map_err(|_| IndexError::WriterGone)?;
        }
        rx.await.map_err(|_| IndexError::WriterGone)?
    }

    /// Queue a repair of `storage_key` on `replica` (verification found a bad copy).
    pub async fn queue_repair(
        &self,
        storage_key: &str,
        replica: &str,
        reason: &str,
    ) -> Result<(), IndexError> {
        let (k, r, why) = (
            storage_key.to_string(),
            replica.to_string(),
            reason.to_string(),
        );
        self.apply(Box::new(move |c| queue_repair_row(c, &k, &r, &why)))
            .await
    }

    /// Remove a repair-queue entry (the replica was healed, or is no longer configured).
    pub async fn clear_repair(&self, storage_key: &str, replica: &str) -> Result<(), IndexError> {
        let (k, r) = (storage_key.to_string(), replica.to_string());
        self.apply(Box::new(move |c| {
            c.execute(
                "DELETE FROM repair_queue WHERE storage_key = ?1 AND replica = ?2",
                params![k, r],
            )?;
            Ok(())
        }))
        .await
    }

    /// Every indexed object with its recorded size and checksum, in index order, from `after`
    /// (an instance row id) on, at most `limit` of them: (row id, key, size, digest).
    pub async fn objects(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, u64, String)>, IndexError> {
        self.read(move |c| {
            stored_objects_page(
                c,
                "SELECT id, storage_key, size, digest FROM instance WHERE id > ?1 ORDER BY id LIMIT ?2",
                after,
                limit,
            )
        })
        .await
    }

    /// The `limit` objects indexed last (row id, key, size, digest), newest first.
    pub async fn latest_objects(
        &self,
        limit: usize,
    ) -> Result<Vec<(i64, String, u64, String)>, IndexError> {
        self.read(move |c| {
            stored_objects_page(
                c,
                "SELECT id, storage_key, size, digest FROM instance WHERE id > ?1
                 ORDER BY id DESC LIMIT ?2",
                0,
                limit,
            )
        })
        .await
    }

    /// Repair-queue entries with what their object must be: (key, replica, size, digest).
    pub async fn repair_tasks(&self) -> Result<Vec<(String, String, u64, String)>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT q.storage_key, q.replica, coalesce(i.size, p.size),
                        coalesce(i.digest, p.digest)
                 FROM repair_queue q
                 LEFT JOIN instance i ON i.storage_key = q.storage_key
                 LEFT JOIN preview p ON p.storage_key = q.storage_key AND p.state = 'done'
                 WHERE i.id IS NOT NULL OR p.instance_fk IS NOT NULL
                 ORDER BY q.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Run `f` on a reader connection in the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
    {
        let index = self.clone();
        tokio::task::spawn_blocking(move || index.read_here(f))
            .await
            .expect("index reader task panicked")
    }

    /// Run `f` on a reader connection on the calling thread: for work that is already on the
    /// blocking pool (never call it from an async task; it waits for SQLite).
    pub fn read_here<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let conn = self.inner.readers.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path)?,
        };
        let result = f(&conn);
        let mut pool = self.inner.readers.lock().expect("reader pool");
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
        result
    }

    /// The patients (ID, name) of these studies, each once (for audit records).
    pub async fn patients_of(
        &self,
        studies: Vec<String>,
    ) -> Result<Vec<(String, Option<String>)>, IndexError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT p.patient_id, p.patient_name FROM study s \
                 JOIN patient p ON p.id = s.patient_fk WHERE s.study_instance_uid = ?1",
            )?;
            let mut out: Vec<(String, Option<String>)> = Vec::new();
            for uid in &studies {
                let found = stmt
                    .query_map([uid], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<(String, Option<String>)>, _>>()?;
                for p in found {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The stored instance with this SOP Instance UID, if indexed.
    pub async fn instance(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<StoredInstance>, IndexError> {
        let only = [(query::Column::SopInstanceUid, sop_instance_uid)];
        Ok(self.instances_where(&only).await?.into_iter().next())
    }

    /// `instance`, on the calling thread (`read_here`).
    pub fn instance_here(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<StoredInstance>, IndexError> {
        let q = Self::instances_query(&[(query::Column::SopInstanceUid, sop_instance_uid)]);
        let found = self.read_here(move |c| Ok(query::stored(c, &q)?))?;
        Ok(found.into_iter().next())
    }

    /// The instances of a study, of one of its series, or one instance of it.
    pub async fn instances_under(
        &self,
        study: &str,
        series: Option<&str>,
        sop: Option<&str>,
    ) -> Result<Vec<StoredInstance>, IndexError> {
        use query::Column;
        let mut only = vec![(Column::StudyInstanceUid, study)];
        only.extend(series.map(|s| (Column::SeriesInstanceUid, s)));
        only.extend(sop.map(|s| (Column::SopInstanceUid, s)));
        self.instances_where(&only).await
    }

    /// What `instances_under` was asked for, in words for messages and the audit trail:
    /// `instance X`, `series Y` or `study Z`.
    pub fn named_under(study: &str, series: Option<&str>, sop: Option<&str>) -> String {
        match (series, sop) {
            (_, Some(i)) => format!("instance {i}"),
            (Some(se), None) => format!("series {se}"),
            _ => format!("study {study}"),
        }
    }

    /// The stored instances whose UIDs are exactly these (column, UID).
    async fn instances_where(
        &self,
        only: &[(query::Column, &str)],
    ) -> Result<Vec<StoredInstance>, IndexError> {
        self.stored_instances(Self::instances_query(only)).await
    }

    /// The instances whose UIDs are `only` (single value matching on each).
    fn instances_query(only: &[(query::Column, &str)]) -> query::Query {
        query::Query {
            level: query::Level::Image,
            conditions: only
                .iter()
                .map(|(column, uid)| query::Condition {
                    column: *column,
                    matcher: query::Matcher::Single(uid.to_string()),
                })
                .collect(),
            select: Vec::new(),
            pn_case_insensitive: false,
            combined_study_datetime: false,
            order: Default::default(),
        }
    }

    pub async fn counts(&self) -> Result<Counts, IndexError> {
        self.read(|c| {
            let n = |sql: &str| {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|v| v as u64)
            };
            Ok(Counts {
                patients: n("SELECT count(*) FROM patient")?,
                studies: n("SELECT count(*) FROM study")?,
                series: n("SELECT count(*) FROM series")?,
                instances: n("SELECT count(*) FROM instance")?,
                changelog: n("SELECT count(*) FROM changelog")?,
                repair_queue: n("SELECT count(*) FROM repair_queue")?,
            })
        })
        .await
    }

    pub async fn repair_queue(&self) -> Result<Vec<RepairEntry>, IndexError> {
        self.read(|c| {
            repair_entries(
                c,
                "SELECT storage_key, replica, reason FROM repair_queue ORDER BY id",
                [],
            )
        })
        .await
    }

    /// The repair-queue entries of one study's objects (the portal's image status).
    pub async fn repairs_of_study(&self, study_uid: &str) -> Result<Vec<RepairEntry>, IndexError> {
        let uid = study_uid.to_string();
        self.read(move |c| {
            repair_entries(
                c,
                "SELECT q.storage_key, q.replica, q.reason FROM repair_queue q
                 JOIN instance i ON i.storage_key = q.storage_key
                 JOIN series se ON i.series_fk = se.id
                 JOIN study st ON se.study_fk = st.id
                 WHERE st.study_instance_uid = ?1 ORDER BY q.id",
                [uid],
            )
        })
        .await
    }

    /// Run a C-FIND query. With a non-zero `limit`, a query matching more rows is refused
    /// as a whole (never silently truncated).
    pub async fn find(&self, q: query::Query, limit: u64) -> Result<FindOutcome, IndexError> {
        self.read(move |c| {
            if limit > 0 {
                let matches = query::count(c, &q)?;
                if matches > limit {
                    return Ok(FindOutcome::TooMany { matches, limit });
                }
            }
            Ok(FindOutcome::Rows(query::rows(c, &q)?))
        })
        .await
    }

    /// The stored WADO-RS metadata of these instances (by SOP Instance UID), where computed.
    pub async fn instance_metadata(
        &self,
        sops: Vec<String>,
    ) -> Result<std::collections::HashMap<String, String>, IndexError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT i.sop_instance_uid, m.json FROM instance i
                 JOIN instance_metadata m ON m.instance_fk = i.id
                 WHERE i.sop_instance_uid = ?1",
            )?;
            let mut out = std::collections::HashMap::new();
            for sop in sops {
                if let Some((k, v)) = stmt
                    .query_row(params![sop], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                {
                    out.insert(k, v);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Keep the WADO-RS metadata of an instance (derived data: not in the change log).
    pub async fn set_instance_metadata(&self, sop: &str, json: String) -> Result<(), IndexError> {
        let sop = sop.to_string();
        self.apply_derived(Box::new(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO instance_metadata (instance_fk, json)
                 SELECT id, ?2 FROM instance WHERE sop_instance_uid = ?1",
                params![sop, json],
            )?;
            Ok(MustFlush(false))
        }))
        .await
    }

    /// Every match of a query (no limit: retrieves, which name the entities they want).
    pub async fn find_all(&self, q: query::Query) -> Result<Vec<Vec<Option<String>>>, IndexError> {
        self.read(move |c| Ok(query::rows(c, &q)?)).await
    }

    /// The stored instances a query selects, in its order (retrieves, WADO, downloads).
    pub async fn stored_instances(
        &self,
        q: query::Query,
    ) -> Result<Vec<StoredInstance>, IndexError> {
        self.read(move |c| Ok(query::stored(c, &q)?)).await
    }

    /// One page of a query's matches in a stable order (QIDO-RS `offset` and `limit`).
    pub async fn find_page(
        &self,
        q: query::Query,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<Vec<Option<String>>>, IndexError> {
        self.read(move |c| Ok(query::page(c, &q, offset, limit)?))
            .await
    }

    /// The precomputed counts of a study: (series, instances, modalities in study).
    pub async fn study_counts(
        &self,
        study_uid: &str,
    ) -> Result<Option<(i64, i64, String)>, IndexError> {
        let uid = study_uid.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT num_series, num_instances, modalities_in_study FROM study
                 WHERE study_instance_uid = ?1",
                params![uid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(IndexError::from)
        })
        .await
    }
}

/// Repair-queue entries selected by `sql` (storage key, replica, reason).
fn repair_entries(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RepairEntry>, IndexError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok(RepairEntry {
            storage_key: r.get(0)?,
            replica: r.get(1)?,
            reason: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Offline bulk load (benchmarks): insert `records` into the index at `path` in transactions
/// of `batch`, with the same row logic as ingest. The node must not be running on this index.
/// Returns the number of new rows; `progress` is called after every transaction.
pub fn bulk_load(
    path: &Path,
    records: impl Iterator<Item = InstanceRecord>,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<u64, IndexError> {
    drop(Index::open(path)?); // creates and migrates
    let mut conn = open_connection(path)?;
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    let mut inserted = 0u64;
    let mut records = records.peekable();
    while records.peek().is_some() {
        let tx = conn.transaction().map_err(IndexError::Commit)?;
        for rec in records.by_ref().take(batch.max(1)) {
            if let InsertOutcome::Inserted { .. } = insert_rows(&tx, &rec, &[], 0)? {
                inserted += 1;
            }
        }
        tx.commit().map_err(IndexError::Commit)?;
        progress(inserted);
    }
    // Synthetic rows have no object to render, and none for a start-up check to look for:
    // they count as settled (`settled`; without this the next start would delete them all).
    conn.execute(
        "UPDATE preview SET state = 'none', reason = 'bulk-loaded index entry without an object'
         WHERE state = 'pending'",
        [],
    )?;
    let last: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM changelog", [], |r| {
        r.get(0)
    })?;
    settled::write_position(&conn, last)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    Ok(inserted)
}

/// The single writer: waits for a job, folds every job already queued (up to MAX_GROUP) into
/// the same transaction, commits once, then answers each job. A job that fails rolls back to
/// its own savepoint and fails alone; a failed commit fails the whole group.
fn writer_loop(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<InsertJob>,
    commits: &tokio::sync::watch::Sender<Commit>,
    epoch: &std::sync::atomic::AtomicU64,
    settling: &Mutex<settled::Settling>,
) {
    // `open_connection` set synchronous=FULL.
    let mut flushing = true;
    // The settled position as last written, and when (`settled`, rule 3).
    let mut position_written: Option<(i64, std::time::Instant)> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let flush = jobs.iter().any(|j| j.work.flushed());
        if flushing != flush {
            // A group that must be flushed never commits unless FULL is set.
            if let Err(e) = conn.pragma_update(None, "synchronous", flush_level(flush)) {
                error!(error = %e, "index: cannot set the flush level");
                for j in jobs {
                    let _ = j.reply.send(Err(IndexError::Commit(clone_err(&e))));
                }
                continue;
            }
            flushing = flush;
        }
        // IMMEDIATE: the write lock is taken at BEGIN, where SQLite's busy handler waits for
        // another process's writer (`pacsd account` on the same file); a deferred transaction
        // that meets a write on its way from read to write fails at once instead.
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                error!(error = %e, "index: cannot begin a transaction");
                for j in jobs {
                    let _ = j.reply.send(Err(IndexError::Commit(clone_err(&e))));
                }
                continue;
            }
        };
        let mut results = Vec::with_capacity(jobs.len());
        let mut tx = tx;
        let position = settling.lock().expect("settling").through();
        let write_position = match position_written {
            Some((written, at)) => position > written && at.elapsed() >= settled::WRITE_EVERY,
            None => true,
        };
        if write_position && let Err(e) = settled::write_position(&tx, position) {
            warn!(error = %e, "index: the settled position was not written");
        }
        let epoch = epoch.load(std::sync::atomic::Ordering::SeqCst);
        for job in jobs.iter_mut() {
            results.push(apply_job(&mut tx, &mut job.work, epoch));
        }
        let inserts = jobs.iter().any(|j| matches!(j.work, Work::Insert { .. }));
        if inserts {
            crate::crashpoint::hit("index-before-commit");
        }
        match tx.commit() {
            Ok(()) => {
                if inserts {
                    crate::crashpoint::hit("index-committed");
                }
                debug!(group = jobs.len(), "index group committed");
                let must_flush = results
                    .iter()
                    .any(|r| matches!(r, Ok(Done::Derived(MustFlush(true)))));
                if !flush && must_flush {
                    flush_wal(&conn);
                }
                let last = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok().and_then(Done::seq))
                    .max();
                let open = jobs
                    .iter()
                    .zip(&results)
                    .filter_map(|(j, r)| match (&j.work, r) {
                        (
                            Work::Insert { order, .. },
                            Ok(Done::Instance(InsertOutcome::Inserted { seq })),
                        ) if order.opens() => Some(*seq),
                        _ => None,
                    });
                settling.lock().expect("settling").committed(last, open);
                if write_position {
                    position_written = Some((position, std::time::Instant::now()));
                }
                if let Some(seq) = last {
                    commits.send_replace(Commit {
                        seq,
                        at: Some(std::time::Instant::now()),
                    });
                }
                for (job, res) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(res);
                }
            }
            Err(e) => {
                error!(error = %e, group = jobs.len(), "index commit failed");
                for job in jobs {
                    let _ = job.reply.send(Err(IndexError::Commit(clone_err(&e))));
                }
            }
        }
    }
    // The index is closing: the position once more, so that a clean stop leaves no row to
    // check at the next start.
    let position = settling.lock().expect("settling").through();
    if let Err(e) = settled::write_position(&conn, position) {
        warn!(error = %e, "index: the settled position was not written at close");
    }
}

/// `synchronous` for a commit with a flush of the WAL (every write but derived data) or
/// without one. Set between transactions: SQLite refuses it inside one.
fn flush_level(flush: bool) -> &'static str {
    if flush { "FULL" } else { "NORMAL" }
}

/// Flush what a commit without a flush wrote: a checkpoint flushes the WAL before it copies
/// pages into the database file.
fn flush_wal(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
        error!(error = %e, "index: flushing a derived write that must be durable failed");
    }
}

/// One page of stored objects (row id, key, size, digest) from `sql`, which takes the row id
/// to start after (?1) and the page size (?2): instances for `Index::objects`, previews for
/// `Index::stored_previews`.
fn stored_objects_page(
    c: &Connection,
    sql: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, String, u64, String)>, IndexError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

/// Run one job inside a savepoint of the group transaction, so that its failure rolls back
/// only its own rows.
fn apply_job(tx: &mut Transaction<'_>, work: &mut Work, epoch: u64) -> Result<Done, IndexError> {
    let sp = tx.savepoint().map_err(IndexError::Commit)?;
    let res = match work {
        Work::Insert { record, missed, .. } => {
            insert_rows(&sp, record, missed, epoch).map(Done::Instance)
        }
        Work::Account(change) => account_rows(&sp, change, epoch, false).map(Done::Account),
        Work::Delete(deletion) => {
            deletion::delete_rows(&sp, deletion, epoch, false).map(Done::Deleted)
        }
        Work::Replicated {
            epoch,
            seq,
            change,
            missed,
        } => replica::apply_rows(&sp, *epoch, *seq, change, missed),
        Work::Apply(f) => {
            let f = std::mem::replace(f, Box::new(|_| Ok(())));
            f(&sp).map(|()| Done::Applied)
        }
        Work::Derived(f) => {
            let f = std::mem::replace(f, Box::new(|_| Ok(MustFlush(false))));
            f(&sp).map(Done::Derived)
        }
    };
    match res {
        Ok(outcome) => {
            sp.commit().map_err(IndexError::Commit)?;
            Ok(outcome)
        }
        Err(e) => {
            warn!(error = %e, "index job rolled back");
            drop(sp); // rolls back to the savepoint
            Err(e)
        }
    }
}

/// The writer answers every job with its own kind of outcome (`apply_job`).
fn unreachable_job<T>(done: Done) -> T {
    unreachable!("the index writer answered {done:?}")
}

/// An account change and, when it changed something, its change-log row. `replicated`: a row
/// of the primary's change log, written here at the same seq whatever it changed.
fn account_rows(
    c: &Connection,
    change: &account::AccountChange,
    epoch: u64,
    replicated: bool,
) -> Result<account::AccountOutcome, IndexError> {
    let rows = change.apply(c, replicated)?;
    if rows == 0 && !replicated {
        return Ok(account::AccountOutcome { rows, seq: None });
    }
    c.execute(
        "INSERT INTO changelog (at, kind, sop_instance_uid, record, epoch)
         VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'account', '', ?1, ?2)",
        params![serde_json::to_string(change)?, epoch as i64],
    )?;
    Ok(account::AccountOutcome {
        rows,
        seq: Some(c.last_insert_rowid()),
    })
}

/// `Connection::execute` through the connection's statement cache: the writer runs the same
/// dozen statements for every stored instance, and preparing them anew each time (parsing and
/// planning the SQL) took a quarter to a third of its CPU per small C-STORE.
fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache (`exec`).
fn row<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

fn insert_rows(
    c: &Connection,
    rec: &InstanceRecord,
    missed: &[(String, String)],
    epoch: u64,
) -> Result<InsertOutcome, IndexError> {
    if let Some(digest) = row(
        c,
        "SELECT digest FROM instance WHERE sop_instance_uid = ?1",
        params![rec.sop_instance_uid],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    {
        return Ok(InsertOutcome::AlreadyPresent { digest });
    }

    // Patient, identified by (PatientID, IssuerOfPatientID).
    let patient_fk: i64 = match row(
        c,
        "SELECT id FROM patient WHERE patient_id = ?1 AND issuer_of_patient_id = ?2",
        params![rec.patient_id, rec.issuer_of_patient_id],
        |r| r.get(0),
    )
    .optional()?
    {
        Some(id) => id,
        None => {
            exec(
                c,
                "INSERT INTO patient (patient_id, issuer_of_patient_id, patient_name,
                                      patient_birth_date, patient_sex)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    rec.patient_id,
                    rec.issuer_of_patient_id,
                    rec.patient_name,
                    rec.patient_birth_date,
                    rec.patient_sex
                ],
            )?;
            c.last_insert_rowid()
        }
    };

    // Study: the first instance's patient owns it; a later instance naming another patient
    // for the same study is refused (rolled back with the savepoint), never merged into it.
    let (study_fk, study_patient_fk, new_study) = match row(
        c,
        "SELECT id, patient_fk FROM study WHERE study_instance_uid = ?1",
        params![rec.study_instance_uid],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
    )
    .optional()?
    {
        Some((id, p)) => (id, p, false),
        None => {
            exec(
                c,
                "INSERT INTO study (patient_fk, study_instance_uid, study_date, study_time,
                                    accession_number, study_id, study_description,
                                    referring_physician_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    patient_fk,
                    rec.study_instance_uid,
                    rec.study_date,
                    rec.study_time,
                    rec.accession_number,
                    rec.study_id,
                    rec.study_description,
                    rec.referring_physician_name
                ],
            )?;
            (c.last_insert_rowid(), patient_fk, true)
        }
    };
    if study_patient_fk != patient_fk {
        let stored: (String, String) = row(
            c,
            "SELECT patient_id, issuer_of_patient_id FROM patient WHERE id = ?1",
            params![study_patient_fk],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let show = |(id, issuer): (&str, &str)| {
            if issuer.is_empty() {
                id.to_string()
            } else {
                format!("{id}^{issuer}")
            }
        };
        return Err(IndexError::PatientConflict {
            study: rec.study_instance_uid.clone(),
            stored: show((&stored.0, &stored.1)),
            received: show((&rec.patient_id, &rec.issuer_of_patient_id)),
        });
    }

    let (series_fk, new_series) = match row(
        c,
        "SELECT id FROM series WHERE series_instance_uid = ?1",
        params![rec.series_instance_uid],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    {
        Some(id) => (id, false),
        None => {
            exec(
                c,
                "INSERT INTO series (study_fk, series_instance_uid, modality, series_number,
                                     series_description, body_part_examined, series_date,
                                     series_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    study_fk,
                    rec.series_instance_uid,
                    rec.modality,
                    rec.series_number,
                    rec.series_description,
                    rec.body_part_examined,
                    rec.series_date,
                    rec.series_time
                ],
            )?;
            (c.last_insert_rowid(), true)
        }
    };

    exec(
        c,
        "INSERT INTO instance (series_fk, sop_instance_uid, sop_class_uid, instance_number,
                               number_of_frames, rows, columns, specific_character_set,
                               transfer_syntax_uid, storage_key, size, digest,
                               calling_ae_title, received_at, read_check)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?14)",
        params![
            series_fk,
            rec.sop_instance_uid,
            rec.sop_class_uid,
            rec.instance_number,
            rec.number_of_frames,
            rec.rows,
            rec.columns,
            rec.specific_character_set,
            rec.transfer_syntax_uid,
            rec.storage_key,
            rec.size as i64,
            rec.digest,
            rec.calling_ae_title,
            rec.read_check
        ],
    )?;

    // Precomputed counts (PS3.4 C.3.4 Number of ... Related ...).
    let patient_of_study = study_patient_fk;
    exec(
        c,
        "UPDATE series SET num_instances = num_instances + 1 WHERE id = ?1",
        params![series_fk],
    )?;
    exec(
        c,
        "UPDATE study SET num_instances = num_instances + 1, num_series = num_series + ?2
         WHERE id = ?1",
        params![study_fk, i64::from(new_series)],
    )?;
    exec(
        c,
        "UPDATE patient SET num_instances = num_instances + 1, num_series = num_series + ?2,
                            num_studies = num_studies + ?3
         WHERE id = ?1",
        params![
            patient_of_study,
            i64::from(new_series),
            i64::from(new_study)
        ],
    )?;
    if new_series {
        update_modalities_in_study(c, study_fk)?;
    }
    deletion::clear_tombstones(c, &rec.storage_key)?;

    for (replica, reason) in missed {
        queue_repair_row(c, &rec.storage_key, replica, reason)?;
    }

    exec(
        c,
        "INSERT INTO changelog (at, kind, sop_instance_uid, record, epoch)
         VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'instance', ?1, ?2, ?3)",
        params![
            rec.sop_instance_uid,
            serde_json::to_string(rec)?,
            epoch as i64
        ],
    )?;
    Ok(InsertOutcome::Inserted {
        seq: c.last_insert_rowid(),
    })
}

/// ModalitiesInStudy (0008,0061) recomputed from the study's series: sorted, distinct.
fn update_modalities_in_study(c: &Connection, study_fk: i64) -> Result<(), IndexError> {
    exec(
        c,
        "UPDATE study SET modalities_in_study = coalesce((
             SELECT group_concat(m, '\\') FROM (
                 SELECT DISTINCT modality AS m FROM series
                 WHERE study_fk = ?1 AND modality IS NOT NULL AND modality <> ''
                 ORDER BY modality)), '')
         WHERE id = ?1",
        params![study_fk],
    )?;
    Ok(())
}

/// Queue (or re-queue with a new reason) the repair of `key` on `replica`.
fn queue_repair_row(
    c: &Connection,
    key: &str,
    replica: &str,
    reason: &str,
) -> Result<(), IndexError> {
    exec(
        c,
        "INSERT INTO repair_queue (storage_key, replica, reason, queued_at)
         VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         ON CONFLICT (storage_key, replica) DO UPDATE SET reason = excluded.reason",
        params![key, replica, reason],
    )?;
    Ok(())
}

/// Index rows for the tests of this module and its children.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// An instance record of a CT (or `modality`) image of patient P1.
    pub fn rec(study: &str, series: &str, sop: &str, modality: &str) -> InstanceRecord {
        InstanceRecord {
            patient_id: "P1".into(),
            issuer_of_patient_id: String::new(),
            patient_name: Some("Doe^Jane".into()),
            patient_birth_date: None,
            patient_sex: None,
            study_instance_uid: study.into(),
            study_date: Some("20240101".into()),
            study_time: None,
            accession_number: None,
            study_id: None,
            study_description: None,
            referring_physician_name: None,
            series_instance_uid: series.into(),
            modality: Some(modality.into()),
            series_number: Some(1),
            series_description: None,
            body_part_examined: None,
            series_date: None,
            series_time: None,
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            instance_number: Some(1),
            number_of_frames: None,
            rows: None,
            columns: None,
            specific_character_set: None,
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            storage_key: format!("dicom/{study}/{series}/{sop}.dcm"),
            size: 10,
            digest: "00".into(),
            read_check: None,
            calling_ae_title: None,
        }
    }

    /// Apply every change-log row of `from` that `to` lacks, as a standby does.
    pub async fn replay(from: &Index, to: &Index) {
        let after = to.last_change().await.unwrap().0;
        for change in from.changes_after(after, 100).await.unwrap() {
            to.apply_replicated(change, Vec::new()).await.unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::rec;
    use super::*;

    /// Derived data alone is committed without a flush; anything else is flushed.
    #[tokio::test]
    async fn only_derived_writes_commit_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let level = |c: &Connection| -> Result<i64, IndexError> {
            Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        for derived in [true, false, true, true, false] {
            let seen = seen.clone();
            if derived {
                idx.apply_derived(Box::new(move |c| {
                    seen.lock().unwrap().push(("derived", level(c)?));
                    Ok(MustFlush(false))
                }))
                .await
                .unwrap();
            } else {
                idx.apply(Box::new(move |c| {
                    seen.lock().unwrap().push(("flushed", level(c)?));
                    Ok(())
                }))
                .await
                .unwrap();
            }
        }
        // 1 = NORMAL (the WAL is flushed at checkpoints only), 2 = FULL (at every commit).
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("derived", 1),
                ("flushed", 2),
                ("derived", 1),
                ("derived", 1),
                ("flushed", 2)
            ]
        );
    }

    #[tokio::test]
    async fn insert_is_idempotent_and_counts_follow() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let a = idx
            .insert(rec("1.1", "1.1.1", "1.1.1.1", "CT"), vec![])
            .await
            .unwrap();
        assert_eq!(a, InsertOutcome::Inserted { seq: 1 });
        idx.insert(rec("1.1", "1.1.2", "1.1.2.1", "PR"), vec![])
            .await
            .unwrap();
        idx.insert(rec("1.1", "1.1.2", "1.1.2.2", "PR"), vec![])
            .await
            .unwrap();
        let again = idx
            .insert(rec("1.1", "1.1.1", "1.1.1.1", "CT"), vec![])
            .await
            .unwrap();
        assert!(matches!(again, InsertOutcome::AlreadyPresent { .. }));
        let c = idx.counts().await.unwrap();
        assert_eq!(
            (c.patients, c.studies, c.series, c.instances, c.changelog),
            (1, 1, 2, 3, 3)
        );
        assert_eq!(
            idx.study_counts("1.1").await.unwrap(),
            Some((2, 3, "CT\\PR".into()))
        );
    }

    #[tokio::test]
    async fn concurrent_inserts_are_grouped_and_all_committed() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let jobs = (0..200).map(|i| {
            let idx = idx.clone();
            tokio::spawn(async move {
                idx.insert(rec("1.2", "1.2.1", &format!("1.2.1.{i}"), "MR"), vec![])
                    .await
            })
        });
        let results = futures::future::join_all(jobs).await;
        let mut seqs: Vec<i64> = results
            .into_iter()
            .map(|r| match r.unwrap().unwrap() {
                InsertOutcome::Inserted { seq } => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert_eq!(idx.counts().await.unwrap().instances, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inserts_succeed_while_metadata_and_another_process_write() {
        // The preview worker writes each instance's metadata just after its insert, and
        // `pacsd account` may write the same file from another process: no C-STORE's insert
        // may fail on SQLite's lock because of either.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let idx = Index::open(&path).unwrap();
        let other = std::thread::spawn(move || {
            let c = open_connection(&path).unwrap();
            for i in 0..100 {
                c.execute(
                    "INSERT INTO account (name, password_hash, rights, created)
                     VALUES (?1, 'x', 'read', 'now')",
                    params![format!("a{i}")],
                )
                .unwrap();
            }
        });
        let jobs = (0..300).map(|i| {
            let idx = idx.clone();
            tokio::spawn(async move {
                let sop = format!("1.4.1.{i}");
                idx.insert(rec("1.4", "1.4.1", &sop, "CT"), vec![]).await?;
                idx.set_instance_metadata(&sop, format!("{{\"n\":{i}}}"))
                    .await
            })
        });
        for r in futures::future::join_all(jobs).await {
            r.unwrap().unwrap();
        }
        other.join().unwrap();
        assert_eq!(idx.counts().await.unwrap().instances, 300);
        let sops: Vec<String> = (0..300).map(|i| format!("1.4.1.{i}")).collect();
        assert_eq!(idx.instance_metadata(sops).await.unwrap().len(), 300);
        assert_eq!(idx.accounts().await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn missed_replicas_are_queued_for_repair() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        idx.insert(
            rec("1.3", "1.3.1", "1.3.1.1", "CT"),
            vec![("r2".into(), "disk full".into())],
        )
        .await
        .unwrap();
        let q = idx.repair_queue().await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].replica, "r2");
        assert_eq!(q[0].storage_key, "dicom/1.3/1.3.1/1.3.1.1.dcm");
    }

    #[test]
    fn reopening_keeps_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.sqlite");
        drop(Index::open(&p).unwrap());
        drop(Index::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn metadata_kept_by_an_older_version_is_forgotten_on_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.sqlite");
        {
            // An index as schema 6 left it, with kept metadata (no nested BulkDataURIs).
            let mut c = Connection::open(&p).unwrap();
            // The metadata row alone (its instance is beside the point here).
            c.execute_batch("PRAGMA foreign_keys=OFF").unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..6] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 6).unwrap();
            tx.execute(
                "INSERT INTO instance_metadata (instance_fk, json) VALUES (1, '{}')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        drop(Index::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        let kept: i64 = c
            .query_row("SELECT count(*) FROM instance_metadata", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 0, "made again on first request, with the nested URIs");
    }
}
