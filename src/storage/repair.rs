//! Replica verification and repair: check one object on every replica (exists, size, digest)
//! and heal a replica from a copy that matches the recorded checksum. No DICOM, no index: the
//! caller supplies the key and what the object must be.

use bytes::Bytes;
use tracing::{debug, info};

use super::{Storage, store_path};
use object_store::ObjectStoreExt;

/// What an object must be, as recorded when it was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub key: String,
    pub size: u64,
    /// As recorded (`super::digest`): what verification, repair and the start-up check
    /// compare every copy with.
    pub digest: String,
    /// The read check recorded beside it (`super::digest`, XXH3-128), if the row has one:
    /// what a read that serves the object compares its copy with (`Storage::read`).
    pub read_check: Option<String>,
}

impl Expected {
    /// An object checked against its digest alone (verification, repair, rows without a
    /// read check).
    pub fn new(key: String, size: u64, digest: String) -> Expected {
        Expected {
            key,
            size,
            digest,
            read_check: None,
        }
    }

    /// The algorithm a copy's digest must be computed with to compare with `digest`.
    pub fn algorithm(&self) -> super::digest::Algorithm {
        super::digest::Algorithm::of(&self.digest)
    }

    /// The algorithm a read that serves the object hashes its copy with: the read check's
    /// when there is one, else the digest's.
    pub fn read_algorithm(&self) -> super::digest::Algorithm {
        super::digest::Algorithm::of(self.read_text())
    }

    fn read_text(&self) -> &str {
        self.read_check.as_deref().unwrap_or(&self.digest)
    }
}

/// A replica's copy that is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Unreadable(String),
    WrongSize { found: u64 },
    WrongChecksum,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::Unreadable(e) => write!(f, "unreadable: {e}"),
            Problem::WrongSize { found } => write!(f, "wrong size ({found} bytes)"),
            Problem::WrongChecksum => write!(f, "checksum mismatch"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("replica `{0}` is not configured")]
    UnknownReplica(String),
    #[error("no replica holds a good copy of `{0}`")]
    NoGoodCopy(String),
    #[error("writing `{key}` to `{replica}`: {reason}")]
    Write {
        key: String,
        replica: String,
        reason: String,
    },
    #[error("`{key}` on `{replica}` is still wrong after the repair: {problem}")]
    StillWrong {
        key: String,
        replica: String,
        problem: Problem,
    },
    #[error("invalid object key `{0}`")]
    BadKey(String),
}

pub(crate) fn check(bytes: &[u8], expected: &Expected) -> Option<Problem> {
    check_digest(
        bytes.len() as u64,
        &expected.algorithm().digest(bytes),
        expected,
    )
}

/// `check` of a copy whose length and digest (made with `expected.algorithm()`) are known.
pub(crate) fn check_digest(len: u64, digest: &str, expected: &Expected) -> Option<Problem> {
    compare(len, digest, expected.size, &expected.digest)
}

/// The check of a read that serves the object: its length, and its digest made with
/// `expected.read_algorithm()`.
pub(crate) fn check_read(len: u64, digest: &str, expected: &Expected) -> Option<Problem> {
    compare(len, digest, expected.size, expected.read_text())
}

fn compare(len: u64, digest: &str, size: u64, recorded: &str) -> Option<Problem> {
    if len != size {
        return Some(Problem::WrongSize { found: len });
    }
    (digest != recorded).then_some(Problem::WrongChecksum)
}

impl Storage {
    /// The index of the replica configured at `location`.
    pub fn replica_index(&self, location: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.location == location)
    }

    /// Read `key` from replica `i` and compare it with what it must be.
    pub async fn check_on(&self, i: usize, expected: &Expected) -> Option<Problem> {
        let Ok(path) = store_path(&expected.key) else {
            return Some(Problem::Unreadable("invalid key".into()));
        };
        let replica = &self.replicas[i];
        let read = async { replica.store()?.get(&path).await?.bytes().await };
        match tokio::time::timeout(super::REPLICA_OP_TIMEOUT, read).await {
            Err(_) => Some(Problem::Unreadable("timed out".into())),
            Ok(Err(object_store::Error::NotFound { .. })) => Some(Problem::Missing),
            Ok(Err(e)) => Some(Problem::Unreadable(e.to_string())),
            Ok(Ok(bytes)) => check(&bytes, expected),
        }
    }

    /// Check an object on every replica: (replica location, problem) for each bad copy.
    pub async fn verify(&self, expected: &Expected) -> Vec<(String, Problem)> {
        let checks =
            (0..self.replicas.len()).map(|i| async move { (i, self.check_on(i, expected).await) });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(i, p)| p.map(|p| (self.replicas[i].location.clone(), p)))
            .collect()
    }

    /// Heal `replica` (a configured location): copy the object from a replica whose copy
    /// matches the recorded size and checksum, then read it back to confirm.
    pub async fn repair(&self, replica: &str, expected: &Expected) -> Result<(), RepairError> {
        let target = self
            .replica_index(replica)
            .ok_or_else(|| RepairError::UnknownReplica(replica.to_string()))?;
        let path =
            store_path(&expected.key).map_err(|_| RepairError::BadKey(expected.key.clone()))?;
        let mut good: Option<Bytes> = None;
        for (i, r) in self
            .replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != target)
        {
            match async { r.store()?.get(&path).await }.await {
                Ok(res) => match res.bytes().await {
                    Ok(b) if check(&b, expected).is_none() => {
                        good = Some(b);
                        break;
                    }
                    Ok(_) => {
                        debug!(replica = %r.location, key = %expected.key, "copy does not match its checksum")
                    }
                    Err(e) => {
                        debug!(replica = %r.location, key = %expected.key, error = %e, "read failed")
                    }
                },
                Err(e) => {
                    debug!(replica = %r.location, key = %expected.key, error = %e, "read failed (replica {i})")
                }
            }
        }
        let good = good.ok_or_else(|| RepairError::NoGoodCopy(expected.key.clone()))?;
        async { self.replicas[target].store()?.put(&path, good.into()).await }
            .await
            .map_err(|e| RepairError::Write {
                key: expected.key.clone(),
                replica: replica.to_string(),
                reason: e.to_string(),
            })?;
        if let Some(problem) = self.check_on(target, expected).await {
            return Err(RepairError::StillWrong {
                key: expected.key.clone(),
                replica: replica.to_string(),
                problem,
            });
        }
        info!(replica, key = %expected.key, "replica repaired");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::digest::Algorithm;

    #[tokio::test]
    async fn verify_finds_missing_and_corrupt_copies_and_repair_heals_them() {
        // Objects recorded with BLAKE3 (now) and with SHA-256 (before it) alike.
        for algorithm in [Algorithm::Blake3, Algorithm::Sha256] {
            verify_and_repair(algorithm).await;
        }
    }

    async fn verify_and_repair(algorithm: Algorithm) {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let locs: Vec<String> = dirs
            .iter()
            .map(|d| d.path().display().to_string())
            .collect();
        let s = Storage::open(&locs, None, "p").unwrap();
        let body = Bytes::from_static(b"the object");
        let key = "p/1.2/1.3/1.4.dcm";
        s.put(key, body.clone()).await.unwrap();
        let expected = Expected::new(key.into(), body.len() as u64, algorithm.digest(&body));
        assert!(s.verify(&expected).await.is_empty());

        std::fs::remove_file(dirs[1].path().join(key)).unwrap();
        std::fs::write(dirs[2].path().join(key), b"the 0bject").unwrap();
        let problems = s.verify(&expected).await;
        assert_eq!(
            problems,
            vec![
                (locs[1].clone(), Problem::Missing),
                (locs[2].clone(), Problem::WrongChecksum)
            ]
        );

        for (loc, _) in &problems {
            s.repair(loc, &expected).await.unwrap();
        }
        assert!(s.verify(&expected).await.is_empty());

        // With no good copy left, repair refuses rather than spreading a bad one.
        for d in &dirs {
            std::fs::write(d.path().join(key), b"garbage!!!").unwrap();
        }
        assert!(matches!(
            s.repair(&locs[0], &expected).await,
            Err(RepairError::NoGoodCopy(_))
        ));
    }
}
