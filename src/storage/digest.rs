//! The checksums recorded for every stored object, and their computation on another thread
//! while a read is still receiving.
//!
//! A recorded digest names its algorithm in its text: `blake3:` and 64 hex digits for objects
//! stored now, 64 bare hex digits (SHA-256) for objects recorded before BLAKE3 was adopted.
//! Every check computes the digest with the algorithm of the record it is checked against, so
//! both kinds stay verifiable side by side and nothing has to be rewritten. BLAKE3 because it
//! is cryptographic (a copy that matches its record is the one acknowledged, whoever could
//! write the replicas) and fast: on this project's 2-core machine (AVX-512, SHA-NI) it hashes
//! 512 KB in 67 us against SHA-256's 290 us (7.8 against 1.8 GB/s), and SHA-256 was 35% of
//! pacsd's CPU time in a C-MOVE of 1000 such objects (perf, 2026-12-05).
//!
//! Beside it, objects stored since 2026-12-06 have a read check: `xxh3-128:` and 32 hex digits
//! (XXH3, 128 bits). Every read that serves an object (C-MOVE, C-GET, WADO, previews) is
//! checked against it when the row has one: it catches what a disk, a network or a replica
//! does to a copy (a changed bit, a short or swapped copy) as surely as BLAKE3 for any
//! practical purpose, and costs a ninth of it (9.7 against 81 us for 525 KB, 2026-12-06; BLAKE3
//! was 22% of pacsd's CPU in a WADO-RS series retrieval). It is not cryptographic: a copy
//! forged by someone able to write a replica could match it. That is what `pacsd storage
//! verify`, the repair worker and the start-up check are for: they compare every copy with the
//! BLAKE3 digest.

use std::sync::mpsc;
use tokio::task::JoinHandle;

/// How a recorded digest was computed, read from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
    /// XXH3-128: read checks only, never the recorded digest (see the module doc).
    Xxh3,
}

/// What a BLAKE3 digest's text starts with (a SHA-256 one is bare hex).
const BLAKE3_PREFIX: &str = "blake3:";
/// What a read check's text starts with.
const XXH3_PREFIX: &str = "xxh3-128:";

impl Algorithm {
    /// The algorithm of objects recorded now.
    pub const RECORDED: Algorithm = Algorithm::Blake3;
    /// The algorithm of the read checks recorded now.
    pub const READ_CHECK: Algorithm = Algorithm::Xxh3;

    /// The algorithm `recorded` was made with.
    pub fn of(recorded: &str) -> Algorithm {
        if recorded.starts_with(BLAKE3_PREFIX) {
            Algorithm::Blake3
        } else if recorded.starts_with(XXH3_PREFIX) {
            Algorithm::Xxh3
        } else {
            Algorithm::Sha256
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Xxh3 => Hasher::Xxh3(Box::new(twox_hash::XxHash3_128::new())),
        }
    }

    /// The digest text of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> String {
        if self == Algorithm::Xxh3 {
            return xxh3_text(twox_hash::XxHash3_128::oneshot(bytes));
        }
        let mut h = self.hasher();
        h.update(bytes);
        h.finish()
    }

    /// The digest text of `pieces` one after the other (the same as of their concatenation).
    pub fn digest_pieces<'a>(self, pieces: impl IntoIterator<Item = &'a [u8]>) -> String {
        let mut h = self.hasher();
        for piece in pieces {
            h.update(piece);
        }
        h.finish()
    }
}

fn xxh3_text(hash: u128) -> String {
    format!("{XXH3_PREFIX}{hash:032x}")
}

/// The digest text recorded for a new object of these bytes.
pub fn record(bytes: &[u8]) -> String {
    Algorithm::RECORDED.digest(bytes)
}

/// The read check recorded for a new object of these bytes.
pub fn read_check(bytes: &[u8]) -> String {
    Algorithm::READ_CHECK.digest(bytes)
}

/// A digest being computed piece by piece.
pub enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
    Xxh3(Box<twox_hash::XxHash3_128>),
}

impl Hasher {
    pub fn update(&mut self, piece: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, piece),
            Hasher::Blake3(h) => {
                h.update(piece);
            }
            Hasher::Xxh3(h) => h.write(piece),
        }
    }

    /// The digest text, as it is recorded.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Blake3(h) => format!("{BLAKE3_PREFIX}{}", h.finalize().to_hex()),
            Hasher::Xxh3(h) => xxh3_text(h.finish_128()),
        }
    }
}

/// Takes pieces in order and hashes them as they come; gives them back with the digest when
/// made with `keeping`, or drops each once hashed when made with `discarding` (the caller has
/// its own copy: holding the pieces too would double the memory of the read).
pub struct BackgroundDigest<T> {
    tx: mpsc::Sender<T>,
    worker: JoinHandle<(String, Vec<T>)>,
}

impl<T: AsRef<[u8]> + Send + 'static> BackgroundDigest<T> {
    pub fn keeping(algorithm: Algorithm) -> Self {
        Self::start(algorithm, true)
    }

    pub fn discarding(algorithm: Algorithm) -> Self {
        Self::start(algorithm, false)
    }

    fn start(algorithm: Algorithm, keep: bool) -> Self {
        let (tx, rx) = mpsc::channel::<T>();
        let worker = tokio::task::spawn_blocking(move || {
            let mut hasher = algorithm.hasher();
            let mut pieces = Vec::new();
            for piece in rx {
                hasher.update(piece.as_ref());
                if keep {
                    pieces.push(piece);
                }
            }
            (hasher.finish(), pieces)
        });
        BackgroundDigest { tx, worker }
    }

    /// The next piece of the object (pieces must come in the object's order).
    pub fn push(&self, piece: T) {
        // The receiver lives until `finish` drops the sender: this cannot fail before.
        let _ = self.tx.send(piece);
    }

    /// The digest text of everything pushed, and (`keeping`) the pieces in the order they came.
    pub async fn finish(self) -> (String, Vec<T>) {
        drop(self.tx);
        self.worker.await.expect("hashing thread panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_digest_names_its_algorithm_and_bare_hex_is_sha256() {
        // Known answers for "abc" (FIPS 180-2; the BLAKE3 reference implementation).
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let b3 = "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";
        assert_eq!(Algorithm::Sha256.digest(b"abc"), sha);
        assert_eq!(Algorithm::Blake3.digest(b"abc"), b3);
        assert_eq!(record(b"abc"), b3, "new objects are recorded with BLAKE3");
        assert_eq!(Algorithm::of(sha), Algorithm::Sha256);
        assert_eq!(Algorithm::of(b3), Algorithm::Blake3);
        // XXH3-128 of "abc" (the xxHash reference implementation, XXH3_128bits).
        let x3 = "xxh3-128:06b05ab6733a618578af5f94892f3950";
        assert_eq!(read_check(b"abc"), x3);
        assert_eq!(Algorithm::of(x3), Algorithm::Xxh3);
        // A record checked with its own algorithm matches; the others never do.
        for recorded in [sha, b3, x3] {
            assert_eq!(Algorithm::of(recorded).digest(b"abc"), recorded);
            assert_ne!(Algorithm::of(recorded).digest(b"abd"), recorded);
        }
    }

    #[tokio::test]
    async fn pieces_hash_like_the_whole_and_come_back_in_order() {
        let whole: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Blake3, Algorithm::Xxh3] {
            let kept = BackgroundDigest::keeping(algorithm);
            let dropped = BackgroundDigest::discarding(algorithm);
            for piece in whole.chunks(65_536) {
                kept.push(Bytes::copy_from_slice(piece));
                dropped.push(Bytes::copy_from_slice(piece));
            }
            let (digest, pieces) = kept.finish().await;
            assert_eq!(digest, algorithm.digest(&whole));
            assert_eq!(pieces.concat(), whole);
            let (digest, pieces) = dropped.finish().await;
            assert_eq!(digest, algorithm.digest(&whole));
            assert!(pieces.is_empty());
            // A Part 10 header and its data set hashed in turn (`digest_pieces`), split
            // where BLAKE3's 1 KiB chunks and XXH3's stripes do not fall.
            for cut in [0, 1, 332, 1024, 299_999, 300_000] {
                let (head, tail) = whole.split_at(cut);
                assert_eq!(
                    algorithm.digest_pieces([head, tail]),
                    algorithm.digest(&whole)
                );
            }
        }
        // A long input takes XXH3's vector path (AVX2 or SSE2 here): the reference
        // implementation's answer (python-xxhash 4.1.0, xxHash 0.8.4).
        assert_eq!(
            read_check(&whole),
            "xxh3-128:4af1e63c1a6a3df12c9f5a6f6e250a6b"
        );
    }
}
