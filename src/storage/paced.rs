//! A replica slowed down to a set read bandwidth, for the read benchmark: each read streams in
//! small pieces, each released when the bytes so far are due at that bandwidth from the
//! read's first byte. Unlike object_store's `ThrottledStore` (one relative sleep per chunk),
//! timer rounding does not add up over a read, so the pieces can be small and arrive the way
//! a network replica's do, spread over the read rather than all at once. Writes, lists and
//! everything else go straight to the inner store.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::chunked::ChunkedStore;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tokio::time::Instant;

/// Size of the pieces a paced read is released in.
pub const PIECE: usize = 64 << 10;

#[derive(Debug)]
pub struct PacedStore {
    inner: Arc<dyn ObjectStore>,
    bytes_per_sec: f64,
}

impl PacedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, bytes_per_sec: f64) -> Self {
        PacedStore {
            inner: Arc::new(ChunkedStore::new(inner, PIECE)),
            bytes_per_sec,
        }
    }
}

impl fmt::Display for PacedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Paced({:.0} B/s, {})", self.bytes_per_sec, self.inner)
    }
}

/// Release each piece of `stream` once everything up to its end is due at `bytes_per_sec`
/// counted from the arrival of the first piece.
fn pace(
    stream: BoxStream<'static, Result<Bytes>>,
    bytes_per_sec: f64,
) -> BoxStream<'static, Result<Bytes>> {
    let mut start: Option<Instant> = None;
    let mut sent = 0u64;
    stream
        .then(move |piece| {
            let started = *start.get_or_insert_with(Instant::now);
            if let Ok(b) = &piece {
                sent += b.len() as u64;
            }
            let due = started + Duration::from_secs_f64(sent as f64 / bytes_per_sec);
            async move {
                tokio::time::sleep_until(due).await;
                piece
            }
        })
        .boxed()
}

#[async_trait]
impl ObjectStore for PacedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        let GetResultPayload::Stream(stream) = result.payload else {
            unreachable!("ChunkedStore always streams")
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(pace(stream, self.bytes_per_sec)),
            ..result
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.get_range_paced(location, r.clone()).await?);
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

impl PacedStore {
    async fn get_range_paced(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        let options = GetOptions {
            range: Some(range.into()),
            ..Default::default()
        };
        self.get_opts(location, options).await?.bytes().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    /// An in-memory store holding `body` as "x".
    async fn holding(body: &Bytes) -> Arc<dyn ObjectStore> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from("x"), body.clone().into())
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn reads_stream_at_the_set_speed_in_small_pieces() {
        let body = Bytes::from((0..8_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        // 200 MB/s: a 64 KiB piece is due every 0.33 ms, under the timer's 1 ms resolution.
        let paced = PacedStore::new(holding(&body).await, 200e6);
        let t0 = std::time::Instant::now();
        let mut stream = paced.get(&Path::from("x")).await.unwrap().into_stream();
        let (mut got, mut pieces) = (Vec::new(), 0);
        while let Some(piece) = stream.next().await {
            let piece = piece.unwrap();
            assert!(piece.len() <= PIECE);
            got.extend_from_slice(&piece);
            pieces += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(got, body);
        assert!(pieces >= 8_000_000 / PIECE);
        // 8 MB at 200 MB/s is 40 ms. Never sooner; and not the 122+ ms that one sleep per piece,
        // each rounded up to the next millisecond, would take.
        assert!((0.039..0.1).contains(&secs), "took {secs} s");
    }

    #[tokio::test]
    async fn ranges_are_paced_too() {
        let body = Bytes::from(
            (0..2_000_000u32)
                .map(|i| (i / 7) as u8)
                .collect::<Vec<u8>>(),
        );
        let paced = PacedStore::new(holding(&body).await, 20e6);
        let t0 = std::time::Instant::now();
        let part = paced
            .get_range(&Path::from("x"), 500_000..1_500_000)
            .await
            .unwrap();
        assert_eq!(part, body.slice(500_000..1_500_000));
        // 1 MB at 20 MB/s: 50 ms.
        assert!(t0.elapsed() >= Duration::from_millis(49));
    }
}
