//! Striped parallel retrieval ("co-allocation"): one large object read as byte ranges from all
//! healthy replicas at once, with the allocation following each replica's measured speed.
//!
//! 1. each replica pulls its next range sized clamp(0.5 x remaining x bw_i / sum(bw), floor_i,
//!    max(8 MiB, floor_i)), bw a moving average of its speed measured in striped reads, and
//!    floor_i long enough that its request latency is at most a ninth of the range's time (at
//!    least 1 MiB, at most its share of the object); ranges end on 1 MiB boundaries;
//! 2. when nothing is left to assign, an idle replica takes over the unread tail of the range
//!    that will finish last, split in proportion to the two bandwidths so both finish together;
//! 3. a range that errors or makes no progress for `STALL` has its unread tail put back (bytes
//!    already received are kept) and its replica is marked down with backoff;
//! 4. the read returns as soon as every byte is in; it never waits on a hung replica (the
//!    futures of the others are simply dropped).
//!
//! The complete front of the object is handed to a hashing thread while the rest arrives; the
//! caller checks the digest against the recorded checksum. Whether to stripe at all is decided
//! by the caller (`health::predict`, `health::ReadOutcomes`).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::digest::{Algorithm, BackgroundDigest};
use super::health::ReplicaHealth;

pub const MIN_CHUNK: u64 = 1 << 20;
pub const MAX_CHUNK: u64 = 8 << 20;
/// Range boundaries fall on multiples of this where they can: stores that keep objects in
/// blocks (Garage: 1 MiB) then serve whole blocks. Measured on Garage 2.5 over loopback: a
/// keep-alive range request starting inside a block often stalls ~40 ms (the server's
/// Nagle delay meeting the client's delayed ACK), aligned ones take 2-5 ms per MiB.
pub const ALIGN: u64 = 1 << 20;
/// A range tail shorter than this is not worth splitting with another replica.
pub const MIN_SPLIT: u64 = 256 << 10;
/// A range with no new bytes for this long is taken away from its replica.
pub const STALL: Duration = Duration::from_millis(500);
/// How often in-flight ranges are checked for stalls.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Size of the next range for a replica: its share of half of what is left, by bandwidth,
/// at least `floor` (see `range_floor`).
pub fn chunk_size(unassigned: u64, bw_self: f64, bw_total: f64, floor: u64) -> u64 {
    let share = 0.5 * unassigned as f64 * bw_self / bw_total.max(1.0);
    (share as u64)
        .clamp(floor, MAX_CHUNK.max(floor))
        .min(unassigned)
}

/// Smallest range worth one request to a replica: long enough that the request's latency is
/// at most a ninth of its time (at least `MIN_CHUNK`), but never more than the replica's share
/// of the whole object (a replica with a slow start still takes only its part).
pub fn range_floor(latency: Duration, bw_self: f64, bw_total: f64, size: u64) -> u64 {
    let amortised = (8.0 * latency.as_secs_f64() * bw_self) as u64;
    let share = (size as f64 * bw_self / bw_total.max(1.0)) as u64;
    amortised.max(MIN_CHUNK).min(share.max(MIN_CHUNK))
}

/// `start..start + len` with its end moved up to the next `ALIGN` boundary (never past `limit`).
pub fn aligned_range(start: u64, len: u64, limit: u64) -> Range<u64> {
    let end = (start + len).next_multiple_of(ALIGN).min(limit);
    start..end
}

/// `cut` moved to the nearest `ALIGN` boundary when that boundary still leaves both sides of
/// `next..end` a part worth having; otherwise `cut` as it is.
pub fn aligned_cut(cut: u64, next: u64, end: u64) -> u64 {
    let down = cut / ALIGN * ALIGN;
    let up = down + ALIGN;
    let nearest = if cut - down <= up - cut { down } else { up };
    if nearest > next && nearest + MIN_SPLIT / 2 <= end {
        nearest
    } else {
        cut
    }
}

/// Where to cut the unread part `next..end` of a slow replica's range so that it (keeping the
/// front) and an idle faster replica (taking the back, after its request latency
/// `latency_idle`) finish at the same time: front/bw_slow = latency_idle + back/bw_idle.
pub fn split_point(next: u64, end: u64, slow: &Speed, idle: &Speed) -> u64 {
    let left = (end - next) as f64;
    let front = (left + idle.latency * idle.bw) * slow.bw / (slow.bw + idle.bw).max(1.0);
    next + (front as u64).min(end - next)
}

/// What a striped read assumes of one replica.
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    /// Bytes/s of its ranges.
    pub bw: f64,
    /// Seconds from a range request to its first byte.
    pub latency: f64,
    /// Smallest range worth a request to it (`range_floor`).
    pub floor: u64,
}

/// One range in flight on one replica. `end` may shrink while it is in flight (another
/// replica took over the tail); bytes beyond it are discarded.
#[derive(Debug)]
struct Flight {
    replica: usize,
    next: u64,
    end: u64,
    last_progress: Instant,
}

struct State {
    size: u64,
    /// The bytes from `base` to the end; the part before `base` was complete and has been
    /// split off to be hashed (nothing writes there any more).
    buf: BytesMut,
    base: u64,
    /// Start of the part never assigned to anyone.
    cursor: u64,
    /// Ranges given back by failed or stalled replicas.
    returned: Vec<Range<u64>>,
    flights: HashMap<u64, Flight>,
    next_id: u64,
    covered: u64,
    /// Replicas dropped from this read (failed or stalled).
    dropped: HashSet<usize>,
    errors: Vec<String>,
}

impl State {
    fn new(size: u64) -> State {
        State {
            size,
            buf: BytesMut::zeroed(size as usize),
            base: 0,
            cursor: 0,
            returned: Vec::new(),
            flights: HashMap::new(),
            next_id: 0,
            covered: 0,
            dropped: HashSet::new(),
            errors: Vec::new(),
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// Split off the part after `base` that is complete (every byte before the first one
    /// still unassigned, in flight or given back), if any.
    fn take_complete_prefix(&mut self) -> Option<BytesMut> {
        let end = self
            .flights
            .values()
            .map(|f| f.next)
            .chain(self.returned.iter().map(|r| r.start))
            .fold(self.cursor, u64::min);
        (end > self.base).then(|| {
            let part = self.buf.split_to((end - self.base) as usize);
            self.base = end;
            part
        })
    }

    fn done(&self) -> bool {
        self.covered == self.size()
    }

    /// Give the flight's unread part back for others, and drop its replica from this read.
    fn abandon(&mut self, id: u64, why: String) -> Option<usize> {
        let f = self.flights.remove(&id)?;
        if f.next < f.end {
            self.returned.push(f.next..f.end);
        }
        self.dropped.insert(f.replica);
        self.errors.push(why);
        Some(f.replica)
    }

    /// The next range for `replica`: returned tails first, then fresh ranges, then a split of
    /// the in-flight range that would finish last.
    fn assign(
        &mut self,
        replica: usize,
        speed: &[Speed],
        active: &[usize],
    ) -> Option<(u64, Range<u64>)> {
        let bw_total: f64 = active
            .iter()
            .filter(|i| !self.dropped.contains(i))
            .map(|&i| speed[i].bw)
            .sum();
        let (bw, floor) = (speed[replica].bw, speed[replica].floor);
        let range = if let Some(r) = self.returned.pop() {
            let len = chunk_size(r.end - r.start, bw, bw_total, floor);
            let take = aligned_range(r.start, len, r.end);
            if take.end < r.end {
                self.returned.push(take.end..r.end);
            }
            take
        } else if self.cursor < self.size() {
            let len = chunk_size(self.size() - self.cursor, bw, bw_total, floor);
            let r = aligned_range(self.cursor, len, self.size());
            self.cursor = r.end;
            r
        } else {
            // Nothing unassigned: help the range whose remaining time is the longest, if
            // finishing it together is faster than leaving it alone.
            let (_, victim) = self
                .flights
                .iter()
                .filter(|(_, f)| f.replica != replica && f.end - f.next >= MIN_SPLIT)
                .map(|(&id, f)| ((f.end - f.next) as f64 / speed[f.replica].bw, id))
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            let f = self.flights.get_mut(&victim)?;
            let cut = aligned_cut(
                split_point(f.next, f.end, &speed[f.replica], &speed[replica]),
                f.next,
                f.end,
            );
            if f.end - cut < MIN_SPLIT / 2 {
                return None;
            }
            let r = cut..f.end;
            f.end = cut;
            r
        };
        let id = self.next_id;
        self.next_id += 1;
        self.flights.insert(
            id,
            Flight {
                replica,
                next: range.start,
                end: range.end,
                last_progress: Instant::now(),
            },
        );
        Some((id, range))
    }

    /// Store bytes that arrived for flight `id` at offset `at`: how many were new, and
    /// whether more are wanted (false once the flight is finished, cut short or taken away).
    fn deliver(&mut self, id: u64, at: u64, data: &[u8]) -> (u64, bool) {
        let Some(f) = self.flights.get_mut(&id) else {
            return (0, false);
        };
        let end_of_data = at + data.len() as u64;
        let from = f.next.max(at);
        let to = f.end.min(end_of_data);
        let mut new = 0;
        if from < to {
            let src = &data[(from - at) as usize..(to - at) as usize];
            let (from_buf, to_buf) = ((from - self.base) as usize, (to - self.base) as usize);
            self.buf[from_buf..to_buf].copy_from_slice(src);
            new = to - from;
            self.covered += new;
            f.next = to;
            f.last_progress = Instant::now();
        }
        if f.next >= f.end {
            self.flights.remove(&id);
            return (new, false);
        }
        (new, true)
    }
}

/// Hands the object's front to a hashing thread as it becomes complete; when every byte is
/// hashed, leaves the digest and the object's parts (in order) in `out`.
async fn hash_as_completed(sh: &Shared, algorithm: Algorithm) {
    let hasher = BackgroundDigest::keeping(algorithm);
    loop {
        let (part, all_taken) = {
            let mut s = sh.state.lock().expect("stripe state");
            let part = s.take_complete_prefix();
            (part, s.base == s.size())
        };
        match part {
            Some(part) => hasher.push(part),
            None if all_taken => break,
            None => {
                let _ = tokio::time::timeout(WATCH_INTERVAL, sh.front.notified()).await;
            }
        }
    }
    *sh.hashed.lock().expect("hashed") = Some(hasher.finish().await);
}

/// What the futures of one striped read share.
struct Shared {
    state: Mutex<State>,
    /// Woken when a range ends (an idle replica may find work).
    wake: Notify,
    /// Signalled when bytes arrive (the complete front may have grown).
    front: Notify,
    /// Bytes delivered by each replica.
    delivered: Mutex<Vec<u64>>,
    /// The digest and the object's parts, once every byte is hashed.
    hashed: Mutex<Option<(String, Vec<BytesMut>)>>,
    speed: Vec<Speed>,
    /// The replicas taking part.
    active: Vec<usize>,
}

/// Reads a large object by ranges from several replicas.
pub struct StripedRead<'a> {
    pub stores: Vec<(usize, Arc<dyn ObjectStore>)>,
    pub path: &'a StorePath,
    pub size: u64,
    /// How the digest that comes with the bytes is computed (the record's algorithm).
    pub algorithm: Algorithm,
    pub health: &'a Mutex<Vec<ReplicaHealth>>,
    pub names: Vec<String>,
}

/// What a striped read did, for logs and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct StripeReport {
    /// Bytes delivered per replica (indexed like the replica set).
    pub bytes_from: Vec<u64>,
    /// Replicas dropped from the read (errored or stalled).
    pub dropped: Vec<usize>,
}

impl StripedRead<'_> {
    /// All bytes of the object, or every replica's error when they could not all be read.
    ///
    /// The digest of the bytes comes with them: the complete front of the object is hashed
    /// while the rest is still arriving.
    pub async fn run(self) -> Result<(Bytes, String, StripeReport), Vec<String>> {
        let active: Vec<usize> = self.stores.iter().map(|(i, _)| *i).collect();
        let speed = self.speeds(&active);
        let sh = Shared {
            state: Mutex::new(State::new(self.size)),
            wake: Notify::new(),
            front: Notify::new(),
            delivered: Mutex::new(vec![0u64; speed.len()]),
            hashed: Mutex::new(None),
            speed,
            active,
        };
        let mut tasks: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
            FuturesUnordered::new();
        for (i, store) in &self.stores {
            tasks.push(Box::pin(self.worker(*i, store.clone(), &sh)));
        }
        tasks.push(Box::pin(self.watch(&sh)));
        tasks.push(Box::pin(hash_as_completed(&sh, self.algorithm)));
        while tasks.next().await.is_some() {
            let s = sh.state.lock().expect("stripe state");
            let all_dropped = sh.active.iter().all(|i| s.dropped.contains(i));
            let hashed = sh.hashed.lock().expect("hashed").is_some();
            if (s.done() && hashed) || (!s.done() && all_dropped) {
                break;
            }
        }
        drop(tasks);
        let s = sh.state.into_inner().expect("stripe state");
        let Some((digest, parts)) = sh.hashed.into_inner().expect("hashed") else {
            return Err(s.errors);
        };
        let mut bytes = BytesMut::new();
        for part in parts {
            // The parts were split off one buffer in order: joined without copying.
            bytes.unsplit(part);
        }
        let report = StripeReport {
            bytes_from: sh.delivered.into_inner().expect("delivered"),
            dropped: s.dropped.into_iter().collect(),
        };
        Ok((bytes.freeze(), digest, report))
    }

    /// Each replica's expected range speed and latency now, and its smallest worthwhile range.
    fn speeds(&self, active: &[usize]) -> Vec<Speed> {
        let now = Instant::now();
        let health = self.health.lock().expect("health");
        let bw: Vec<f64> = health.iter().map(|h| h.striped_bandwidth_at(now)).collect();
        let bw_total: f64 = active.iter().map(|&i| bw[i]).sum();
        health
            .iter()
            .zip(bw)
            .map(|(h, bw)| {
                let latency = h.latency.unwrap_or(Duration::ZERO);
                Speed {
                    bw,
                    latency: latency.as_secs_f64(),
                    floor: range_floor(latency, bw, bw_total, self.size),
                }
            })
            .collect()
    }

    fn mark_failed(&self, replica: usize, why: &str) {
        if let Some(h) = self.health.lock().expect("health").get_mut(replica) {
            h.fail(Instant::now(), why);
        }
    }

    /// Takes ranges away from replicas that stopped sending; ends when the object is complete.
    async fn watch(&self, sh: &Shared) {
        let (state, wake) = (&sh.state, &sh.wake);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let stalled: Vec<usize> = {
                let mut s = state.lock().expect("stripe state");
                if s.done() {
                    return;
                }
                let now = Instant::now();
                let ids: Vec<u64> = s
                    .flights
                    .iter()
                    .filter(|(_, f)| now.duration_since(f.last_progress) > STALL)
                    .map(|(&id, _)| id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| {
                        let replica = s.flights.get(&id)?.replica;
                        let why =
                            format!("{}: stalled (no data for {STALL:?})", self.names[replica]);
                        s.abandon(id, why)
                    })
                    .collect()
            };
            for r in stalled {
                warn!(replica = %self.names[r], key = %self.path, "replica stalled mid-read; its ranges go elsewhere");
                self.mark_failed(r, "stalled mid-read");
                wake.notify_waiters();
            }
        }
    }

    async fn worker(&self, replica: usize, store: Arc<dyn ObjectStore>, sh: &Shared) {
        let (state, wake) = (&sh.state, &sh.wake);
        loop {
            let job = {
                let mut s = state.lock().expect("stripe state");
                if s.done() || s.dropped.contains(&replica) {
                    return;
                }
                s.assign(replica, &sh.speed, &sh.active)
            };
            let Some((id, range)) = job else {
                // Nothing to do now; a stalled or failed range may come back.
                let _ = tokio::time::timeout(WATCH_INTERVAL, wake.notified()).await;
                continue;
            };
            match self.fetch(&store, id, range.clone(), sh, replica).await {
                Ok((bytes, streaming)) => {
                    sh.delivered.lock().expect("delivered")[replica] += bytes;
                    if state
                        .lock()
                        .expect("stripe state")
                        .dropped
                        .contains(&replica)
                    {
                        // Taken away as stalled; it woke up too late to count as healthy.
                        return;
                    }
                    let mut h = self.health.lock().expect("health");
                    h[replica].observe_range(bytes, streaming, Instant::now());
                    h[replica].succeed();
                }
                Err(e) => {
                    let why = format!("{}: {e}", self.names[replica]);
                    let abandoned = state.lock().expect("stripe state").abandon(id, why);
                    if abandoned.is_some() {
                        debug!(replica = %self.names[replica], error = %e, "range failed, tail requeued");
                    }
                    self.mark_failed(replica, &e.to_string());
                    wake.notify_waiters();
                    return;
                }
            }
            wake.notify_waiters();
            // Let the other replicas' workers pick their next range too (a store that answers
            // without ever waiting would otherwise take every range in turn).
            tokio::task::yield_now().await;
        }
    }

    /// Stream one range into the buffer; the bytes this replica delivered, and how long they
    /// took from the first one.
    async fn fetch(
        &self,
        store: &Arc<dyn ObjectStore>,
        id: u64,
        range: Range<u64>,
        sh: &Shared,
        replica: usize,
    ) -> Result<(u64, Duration), RangeError> {
        let state = &sh.state;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let t0 = Instant::now();
        let res = store.get_opts(self.path, opts).await?;
        self.health.lock().expect("health")[replica].observe_latency(t0.elapsed());
        let t1 = Instant::now();
        let mut stream = res.into_stream();
        let mut at = range.start;
        let mut got = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let (new, more) = state.lock().expect("stripe state").deliver(id, at, &chunk);
            if new > 0 {
                sh.front.notify_one();
            }
            got += new;
            at += chunk.len() as u64;
            if !more {
                return Ok((got, t1.elapsed()));
            }
        }
        // The stream ended: either every wanted byte came, or the replica sent too little.
        if state
            .lock()
            .expect("stripe state")
            .flights
            .contains_key(&id)
        {
            return Err(RangeError::Short { at, end: range.end });
        }
        Ok((got, t1.elapsed()))
    }
}

/// Why one range from one replica failed (its tail goes to the other replicas).
#[derive(Debug, thiserror::Error)]
enum RangeError {
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("short read: range ended at {at} of {end}")]
    Short { at: u64, end: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_bandwidth_and_are_clamped() {
        // 100 MiB left, this replica is half of the total bandwidth: 25 MiB -> 8 MiB cap.
        assert_eq!(chunk_size(100 << 20, 50.0, 100.0, MIN_CHUNK), MAX_CHUNK);
        // 6 MiB left, a third of the bandwidth: 1 MiB.
        assert_eq!(chunk_size(6 << 20, 1.0, 3.0, MIN_CHUNK), MIN_CHUNK);
        // 20 MiB left, 60% of the bandwidth: 6 MiB.
        assert_eq!(chunk_size(20 << 20, 60.0, 100.0, MIN_CHUNK), 6 << 20);
        // Never more than what is left.
        assert_eq!(chunk_size(1000, 1.0, 1.0, MIN_CHUNK), 1000);
        // A floor above the cap wins over both.
        assert_eq!(chunk_size(100 << 20, 1.0, 3.0, 20 << 20), 20 << 20);
    }

    #[test]
    fn a_slow_starting_replica_gets_ranges_that_amortise_its_latency() {
        // 40 ms to first byte at 800 MB/s: 256 MB would amortise it, but its share of a 64 MiB
        // object (a third) is the most it takes in one range.
        let floor = range_floor(Duration::from_millis(40), 800e6, 2400e6, 64 << 20);
        assert_eq!(floor, (64 << 20) / 3);
        // 1 ms at 20 MB/s: 160 kB -> the 1 MiB minimum.
        assert_eq!(
            range_floor(Duration::from_millis(1), 20e6, 140e6, 64 << 20),
            MIN_CHUNK
        );
        // 2 ms at 400 MB/s of 1200: 6.4 MB, below its 21 MB share.
        assert_eq!(
            range_floor(Duration::from_millis(2), 400e6, 1200e6, 64 << 20),
            6_400_000
        );
    }

    #[test]
    fn ranges_end_on_block_boundaries_where_they_can() {
        assert_eq!(aligned_range(0, 1_500_000, 64 << 20), 0..(2 << 20));
        assert_eq!(
            aligned_range(3 << 20, 1 << 20, 64 << 20),
            (3 << 20)..(4 << 20)
        );
        assert_eq!(aligned_range(0, 5_000_000, 4_000_000), 0..4_000_000);
        // A cut goes to the nearest boundary inside the range...
        assert_eq!(aligned_cut(5_300_000, 1_000_000, 9_000_000), 5 << 20);
        // ...unless that leaves one side (nearly) nothing.
        assert_eq!(aligned_cut(300_000, 100_000, 1 << 20), 300_000);
        assert_eq!(
            aligned_cut((8 << 20) - 1000, 7 << 20, (8 << 20) + 1000),
            (8 << 20) - 1000
        );
    }

    #[test]
    fn split_lets_both_replicas_finish_together() {
        let (next, end) = (1_000_000, 9_000_000);
        let [slow, fast] = [speed(20.0), speed(60.0)];
        let cut = split_point(next, end, &slow, &fast);
        assert_eq!(cut, 3_000_000);
        let slow_time = (cut - next) as f64 / 20.0;
        let fast_time = (end - cut) as f64 / 60.0;
        assert!((slow_time - fast_time).abs() < 1.0);
        // The helper's request latency leaves the slow replica more to do.
        let late = Speed {
            latency: 0.1 / 6.0,
            ..speed(60e6)
        };
        let cut = split_point(next, end, &speed(20e6), &late);
        let slow_time = (cut - next) as f64 / 20e6;
        let fast_time = late.latency + (end - cut) as f64 / 60e6;
        assert!(
            cut > 3_000_000 && (slow_time - fast_time).abs() < 1e-6,
            "{cut}"
        );
    }

    fn speed(bw: f64) -> Speed {
        Speed {
            bw,
            latency: 0.0,
            floor: MIN_CHUNK,
        }
    }

    fn state(size: usize) -> State {
        State::new(size as u64)
    }

    #[test]
    fn every_byte_is_assigned_once_and_abandoned_tails_come_back() {
        let bw = [speed(10.0), speed(10.0)];
        let mut s = state(5 << 20);
        let (a, ra) = s.assign(0, &bw, &[0, 1]).unwrap();
        let (b, rb) = s.assign(1, &bw, &[0, 1]).unwrap();
        assert_eq!(ra.end, rb.start);
        // Replica 0 delivers half of its range, then fails.
        let half = (ra.end - ra.start) / 2;
        assert!(s.deliver(a, ra.start, &vec![1u8; half as usize]).1);
        assert_eq!(s.abandon(a, "boom".into()), Some(0));
        assert_eq!(s.returned, vec![ra.start + half..ra.end]);
        // Replica 1 finishes its range, then takes the returned tail.
        assert!(
            !s.deliver(b, rb.start, &vec![2u8; (rb.end - rb.start) as usize])
                .1
        );
        let (c, rc) = s.assign(1, &bw, &[0, 1]).unwrap();
        assert_eq!(rc, ra.start + half..ra.end);
        assert!(
            !s.deliver(c, rc.start, &vec![3u8; (rc.end - rc.start) as usize])
                .1
        );
        while let Some((id, r)) = s.assign(1, &bw, &[0, 1]) {
            assert!(
                !s.deliver(id, r.start, &vec![4u8; (r.end - r.start) as usize])
                    .1
            );
        }
        assert!(s.done());
        assert_eq!(s.buf[ra.start as usize], 1);
        assert_eq!(s.buf[(ra.start + half) as usize], 3);
        assert_eq!(s.buf[rb.start as usize], 2);
        assert_eq!(s.take_complete_prefix().unwrap().len(), 5 << 20);
        assert!(s.take_complete_prefix().is_none());
    }

    #[test]
    fn the_complete_front_is_split_off_for_hashing_and_later_bytes_land_right() {
        let bw = [speed(10.0), speed(10.0)];
        let mut s = state(4 << 20);
        let (a, ra) = s.assign(0, &bw, &[0, 1]).unwrap();
        let (b, rb) = s.assign(1, &bw, &[0, 1]).unwrap();
        assert_eq!((ra.clone(), rb.start), (0..(1 << 20), 1 << 20));
        // Nothing complete yet; then the second range arrives first: still no front.
        assert!(s.take_complete_prefix().is_none());
        s.deliver(b, rb.start, &vec![2u8; (rb.end - rb.start) as usize]);
        assert!(s.take_complete_prefix().is_none());
        // Half of the first range: that half is the front.
        s.deliver(a, 0, &vec![1u8; 1 << 19]);
        let front = s.take_complete_prefix().unwrap();
        assert_eq!(front.len(), 1 << 19);
        assert!(front.iter().all(|&x| x == 1));
        // The rest of the first range lands after the split-off part.
        s.deliver(a, 1 << 19, &vec![3u8; 1 << 19]);
        let next = s.take_complete_prefix().unwrap();
        assert_eq!(next.len(), (rb.end - (1 << 19)) as usize);
        assert!(next[..1 << 19].iter().all(|&x| x == 3));
        assert!(next[1 << 19..].iter().all(|&x| x == 2));
    }

    #[test]
    fn an_idle_replica_takes_the_tail_of_a_slow_range() {
        let bw = [speed(1.0), speed(3.0)];
        let mut s = state(2 << 20);
        let (slow, r) = s.assign(0, &bw, &[0, 1]).unwrap();
        assert_eq!(r, 0..(1 << 20));
        let (fast, r2) = s.assign(1, &bw, &[0, 1]).unwrap();
        assert!(
            !s.deliver(fast, r2.start, &vec![9u8; (r2.end - r2.start) as usize])
                .1
        );
        // Nothing unassigned: replica 1 splits replica 0's range, keeping 3/4 of it.
        let (_, tail) = s.assign(1, &bw, &[0, 1]).unwrap();
        assert_eq!(tail, (1 << 18)..(1 << 20));
        // The slow replica's bytes past the cut are discarded, and its flight ends at the cut.
        assert!(!s.deliver(slow, 0, &vec![7u8; 1 << 20]).1);
        assert_eq!(s.buf[(1 << 18) - 1], 7);
        assert_eq!(s.buf[1 << 18], 0);
        assert_eq!(s.covered, (1 << 20) + (1 << 18));
    }
}
