//! Read benchmark of a replica set (`pacsd storage bench`): for each object size, the time of
//! (a) one GET from the fastest replica (and the same GET with the digest of its bytes after
//! it), (b) a naive split into equal parts, one per replica,
//! fetched concurrently, and (c) pacsd's adaptive striped read (`Storage::read`, checksum
//! included), against the sum of the replicas' bandwidths measured alone.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::try_join_all;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{Expected, Storage, StorageError};

/// A replica slowed to about `mbps` MB/s for reads, streaming in small pieces spread over
/// the read as a network replica's arrive (`paced::PacedStore`).
pub fn throttled(store: Arc<dyn ObjectStore>, mbps: f64) -> Arc<dyn ObjectStore> {
    Arc::new(super::paced::PacedStore::new(store, mbps * 1e6))
}

/// Median seconds of each way of reading one object size.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub size: u64,
    /// Bandwidth (bytes/s) of each replica read alone (one whole GET).
    pub solo: Vec<f64>,
    pub single_fastest: f64,
    /// The same GET followed by a SHA-256 of its bytes: what checking a plain GET costs.
    pub single_checked: f64,
    pub equal_split: f64,
    pub adaptive: f64,
    /// Bytes each replica delivered in the last adaptive read.
    pub adaptive_bytes_from: Vec<u64>,
}

impl BenchRow {
    pub fn summed_bandwidth(&self) -> f64 {
        self.solo.iter().sum()
    }

    /// Throughput in MB/s of a read that took `secs`.
    pub fn mbps(&self, secs: f64) -> f64 {
        self.size as f64 / secs / 1e6
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("reading from replica {replica}: {source}")]
    Read {
        replica: String,
        source: object_store::Error,
    },
    #[error("{0}")]
    Wrong(String),
}

/// Deterministic bytes that differ everywhere (a misplaced range cannot go unnoticed); also
/// the objects of the storage tests.
pub fn body(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn timed<T, F: Future<Output = Result<T, BenchError>>>(f: F) -> Result<(f64, T), BenchError> {
    let t0 = Instant::now();
    let out = f.await?;
    Ok((t0.elapsed().as_secs_f64(), out))
}

/// One whole-object GET from one replica.
async fn whole_get(
    name: &str,
    store: &Arc<dyn ObjectStore>,
    path: &StorePath,
) -> Result<Bytes, BenchError> {
    let read = |source| BenchError::Read {
        replica: name.to_string(),
        source,
    };
    store
        .get(path)
        .await
        .map_err(read)?
        .bytes()
        .await
        .map_err(read)
}

/// Write one object of each size through `storage.put` (every replica), then time the three
/// ways of reading it `rounds` times each. `raw` are the same replicas as `storage`, for the
/// plain GETs of (a) and (b). The adaptive read is warmed up (once per replica, and once
/// more) for each size so that it chooses and allocates by measured speeds, as it does on a
/// running node.
pub async fn run(
    storage: &Storage,
    raw: &[(String, Arc<dyn ObjectStore>)],
    sizes: &[u64],
    rounds: usize,
) -> Result<Vec<BenchRow>, BenchError> {
    let mut rows = Vec::new();
    for (n, &size) in sizes.iter().enumerate() {
        let data = body(size as usize, n as u64 + 1);
        let key = format!("{}/1.2.3/1.2.3.4/1.2.3.4.{}.dcm", storage.prefix(), n + 1);
        storage.put(&key, data.clone()).await?;
        let path = StorePath::from(key.as_str());
        // As the archive's reads check it (against the read check).
        let expected = Expected {
            key: key.clone(),
            size,
            digest: super::digest::record(&data),
            read_check: Some(super::digest::read_check(&data)),
        };
        let check = |b: &[u8], what: &str| {
            if b == &data[..] {
                Ok(())
            } else {
                Err(BenchError::Wrong(format!("{what} returned wrong bytes")))
            }
        };

        // Each replica alone: its bandwidth, and which one is fastest.
        let mut solo = Vec::new();
        for (name, store) in raw {
            let (secs, b) = timed(whole_get(name, store, &path)).await?;
            check(&b, name)?;
            solo.push(size as f64 / secs);
        }
        let fastest = (0..raw.len())
            .max_by(|&a, &b| solo[a].total_cmp(&solo[b]))
            .expect("at least one replica");

        let (mut single, mut checked) = (Vec::new(), Vec::new());
        let (mut split, mut adaptive) = (Vec::new(), Vec::new());
        let mut bytes_from = Vec::new();
        // Warm-up: small objects go to the quickest replica once each has been measured.
        for _ in 0..=raw.len() {
            storage.read(&expected).await?;
        }
        for _ in 0..rounds {
            let (name, store) = &raw[fastest];
            let (secs, b) = timed(whole_get(name, store, &path)).await?;
            check(&b, "single GET")?;
            single.push(secs);

            let (secs, digest) = timed(async {
                let b = whole_get(name, store, &path).await?;
                Ok(super::digest::record(&b))
            })
            .await?;
            if digest != expected.digest {
                return Err(BenchError::Wrong("checked single GET: wrong digest".into()));
            }
            checked.push(secs);

            let parts = raw.len() as u64;
            let (secs, pieces) = timed(try_join_all(raw.iter().enumerate().map(
                |(i, (name, store))| {
                    let path = path.clone();
                    let range = size * i as u64 / parts..size * (i as u64 + 1) / parts;
                    async move {
                        store
                            .get_range(&path, range)
                            .await
                            .map_err(|source| BenchError::Read {
                                replica: name.clone(),
                                source,
                            })
                    }
                },
            )))
            .await?;
            check(&pieces.concat(), "equal split")?;
            split.push(secs);

            let (secs, v) = timed(async { Ok(storage.read(&expected).await?) }).await?;
            check(&v.bytes, "adaptive read")?;
            adaptive.push(secs);
            bytes_from = v
                .stripe
                .map(|s| s.bytes_from)
                .unwrap_or_else(|| vec![0; raw.len()]);
        }
        rows.push(BenchRow {
            size,
            solo,
            single_fastest: median(single),
            single_checked: median(checked),
            equal_split: median(split),
            adaptive: median(adaptive),
            adaptive_bytes_from: bytes_from,
        });
    }
    Ok(rows)
}
