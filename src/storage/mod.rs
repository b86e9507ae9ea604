//! Replicated object storage: every object is written to all replicas in parallel and counts
//! as stored once W of N hold it; reads fall through to the next replica. No DICOM here.

pub mod keys;
pub mod quorum;
pub mod repair;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::{debug, error, info, warn};

pub use keys::{Uid, UidError, object_key, parse_object_key};
pub use quorum::Quorum;

/// Longest time one replica may take for one put or get before it counts as failed.
pub const REPLICA_OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening replica `{location}`: {reason}")]
    OpenReplica { location: String, reason: String },
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
}

/// One replica: a name for logs and the repair queue, and its object store.
#[derive(Debug)]
pub struct Replica {
    /// The configured location, as written in the config (stable across restarts).
    pub location: String,
    /// Where a local replica lives (`None` for memory stores).
    dir: Option<PathBuf>,
    /// The open store; `None` while the replica is unavailable (e.g. its directory could not be
    /// created at start-up): it is then treated as down and opening is retried on every use.
    store: std::sync::Mutex<Option<Arc<dyn ObjectStore>>>,
}

impl Replica {
    /// The replica's store, opening it first if it was unavailable so far.
    fn store(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let mut guard = self.store.lock().expect("replica lock");
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let dir = self
            .dir
            .as_ref()
            .expect("only local replicas can be unavailable");
        let store = open_local(dir).map_err(|reason| object_store::Error::Generic {
            store: "replica",
            source: format!("replica unavailable: {reason}").into(),
        })?;
        info!(replica = %self.location, "replica available again");
        *guard = Some(store.clone());
        Ok(store)
    }
}

/// Which replicas took a write and which missed it (the latter go to the repair queue).
#[derive(Debug, Clone, Default)]
pub struct PutOutcome {
    pub written: Vec<usize>,
    pub missed: Vec<(usize, String)>,
}

/// The replica set with its write quorum.
#[derive(Debug)]
pub struct Storage {
    replicas: Vec<Replica>,
    quorum: Quorum,
    prefix: String,
}

impl Storage {
    /// Open every replica location (creating local directories) with the given quorum
    /// (`None` = majority).
    pub fn open(
        locations: &[String],
        quorum: Option<usize>,
        prefix: &str,
    ) -> Result<Storage, StorageError> {
        let replicas = locations
            .iter()
            .map(|l| open_replica(l))
            .collect::<Result<Vec<_>, _>>()?;
        let quorum = match quorum {
            Some(w) => Quorum::new(w, replicas.len())?,
            None => Quorum::majority(replicas.len())?,
        };
        Ok(Storage {
            replicas,
            quorum,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
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

    /// Write `bytes` under `key` to every replica in parallel. Success when at least W
    /// replicas confirmed a durable write (LocalFileSystem: temp file, fsync, rename, fsync
    /// dir); the error carries every replica's failure.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<PutOutcome, StorageError> {
        let path = store_path(key)?;
        let writes = self.replicas.iter().map(|r| {
            let payload = PutPayload::from_bytes(bytes.clone());
            let path = path.clone();
            async move {
                let write = async { r.store()?.put(&path, payload).await };
                match tokio::time::timeout(REPLICA_OP_TIMEOUT, write).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("timed out after {REPLICA_OP_TIMEOUT:?}")),
                }
            }
        });
        let results = join_all(writes).await;
        let mut outcome = PutOutcome::default();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => outcome.written.push(i),
                Err(e) => {
                    warn!(replica = %self.replicas[i].location, key, error = %e, "replica write failed");
                    outcome.missed.push((i, e));
                }
            }
        }
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

    /// Remove `key` from the given replicas (undo of a write whose index commit failed).
    /// Failures are logged: the repair scan finds unindexed objects later.
    pub async fn delete_from(&self, key: &str, replicas: &[usize]) {
        let Ok(path) = store_path(key) else { return };
        let deletes = replicas
            .iter()
            .filter_map(|&i| self.replicas.get(i))
            .map(|r| {
                let path = path.clone();
                async move {
                    if let Err(e) = async { r.store()?.delete(&path).await }.await {
                        warn!(replica = %r.location, key = %path, error = %e, "undo delete failed");
                    }
                }
            });
        join_all(deletes).await;
    }

    /// Read a whole object, trying replicas in order until one answers.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = store_path(key)?;
        let mut errors = Vec::new();
        for r in &self.replicas {
            let read = async { r.store()?.get(&path).await?.bytes().await };
            match tokio::time::timeout(REPLICA_OP_TIMEOUT, read).await {
                Ok(Ok(b)) => return Ok(b),
                Ok(Err(e)) => {
                    debug!(replica = %r.location, key, error = %e, "read failed, trying next replica");
                    errors.push(format!("{}: {e}", r.location));
                }
                Err(_) => errors.push(format!("{}: timed out", r.location)),
            }
        }
        Err(StorageError::ReadFailed {
            key: key.to_string(),
            errors,
        })
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

    /// Every object key under the prefix on every reachable replica, deduplicated and sorted.
    pub async fn list_keys(&self) -> Result<Vec<String>, StorageError> {
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(StorePath::from(self.prefix.as_str()))
        };
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

/// Open one replica from its configured location: a directory path, `file:///abs/dir` or
/// `memory://name`. Other schemes (S3, HDFS) are not built yet and are refused by name. A local
/// directory that cannot be created or opened is reported and the replica starts as down.
fn open_replica(location: &str) -> Result<Replica, StorageError> {
    if location.starts_with("memory://") {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        return Ok(Replica {
            location: location.to_string(),
            dir: None,
            store: std::sync::Mutex::new(Some(store)),
        });
    }
    let dir = if let Some(rest) = location.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if location.contains("://") {
        return Err(StorageError::OpenReplica {
            location: location.to_string(),
            reason:
                "unsupported scheme: this build stores to local directories (`file://` or a path) \
                     and `memory://`"
                    .to_string(),
        });
    } else {
        PathBuf::from(location)
    };
    let store = match open_local(&dir) {
        Ok(s) => Some(s),
        Err(reason) => {
            error!(replica = location, %reason, "replica unavailable at start-up; treated as down until it can be opened");
            None
        }
    };
    Ok(Replica {
        location: location.to_string(),
        dir: Some(dir),
        store: std::sync::Mutex::new(store),
    })
}

/// A local directory replica (created if missing), with fsync on every write.
fn open_local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    let fs = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| e.to_string())?
        .with_fsync(true);
    Ok(Arc::new(fs))
}

#[cfg(test)]
mod tests {
    use super::*;

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
