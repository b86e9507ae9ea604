//! SHA-256 computed on another thread while a read is still receiving: the read's task keeps
//! polling its streams (and copying bytes) while a blocking-pool thread hashes what already
//! arrived, so checking a copy adds almost nothing after its last byte.

use sha2::{Digest, Sha256};
use std::sync::mpsc;
use tokio::task::JoinHandle;

/// Takes pieces in order and hashes them as they come; gives them back with the digest when
/// made with `keeping`, or drops each once hashed when made with `discarding` (the caller has
/// its own copy: holding the pieces too would double the memory of the read).
pub struct BackgroundSha256<T> {
    tx: mpsc::Sender<T>,
    worker: JoinHandle<([u8; 32], Vec<T>)>,
}

impl<T: AsRef<[u8]> + Send + 'static> BackgroundSha256<T> {
    pub fn keeping() -> Self {
        Self::start(true)
    }

    pub fn discarding() -> Self {
        Self::start(false)
    }

    fn start(keep: bool) -> Self {
        let (tx, rx) = mpsc::channel::<T>();
        let worker = tokio::task::spawn_blocking(move || {
            let mut sha = Sha256::new();
            let mut pieces = Vec::new();
            for piece in rx {
                sha.update(piece.as_ref());
                if keep {
                    pieces.push(piece);
                }
            }
            (sha.finalize().into(), pieces)
        });
        BackgroundSha256 { tx, worker }
    }

    /// The next piece of the object (pieces must come in the object's order).
    pub fn push(&self, piece: T) {
        // The receiver lives until `finish` drops the sender: this cannot fail before.
        let _ = self.tx.send(piece);
    }

    /// The digest of everything pushed, and (`keeping`) the pieces in the order they came.
    pub async fn finish(self) -> ([u8; 32], Vec<T>) {
        drop(self.tx);
        self.worker.await.expect("hashing thread panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn pieces_hash_like_the_whole_and_come_back_in_order() {
        let whole: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let (kept, dropped) = (BackgroundSha256::keeping(), BackgroundSha256::discarding());
        for piece in whole.chunks(65_536) {
            kept.push(Bytes::copy_from_slice(piece));
            dropped.push(Bytes::copy_from_slice(piece));
        }
        let (digest, pieces) = kept.finish().await;
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&whole)));
        assert_eq!(pieces.concat(), whole);
        let (digest, pieces) = dropped.finish().await;
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&whole)));
        assert!(pieces.is_empty());
    }
}
