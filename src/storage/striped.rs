//! Striped parallel retrieval ("co-allocation"): one large object read as byte ranges from all
//! healthy replicas at once, with the allocation following each replica's measured speed.
//!
//! 1. each replica pulls its next range sized clamp(0.5 x remaining x bw_i / sum(bw), 1 MiB,
//!    8 MiB), bw a moving average of its measured speed kept across reads;
//! 2. when nothing is left to assign, an idle replica takes over the unread tail of the range
//!    that will finish last, split in proportion to the two bandwidths so both finish together;
//! 3. a range that errors or makes no progress for `STALL` has its unread tail put back (bytes
//!    already received are kept) and its replica is marked down with backoff;
//! 4. the read returns as soon as every byte is in; it never waits on a hung replica (the
//!    futures of the others are simply dropped).
//!
//! The caller checks the reassembled bytes against the recorded checksum.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::health::ReplicaHealth;

pub const MIN_CHUNK: u64 = 1 << 20;
pub const MAX_CHUNK: u64 = 8 << 20;
/// A range tail shorter than this is not worth splitting with another replica.
pub const MIN_SPLIT: u64 = 256 << 10;
/// A range with no new bytes for this long is taken away from its replica.
pub const STALL: Duration = Duration::from_millis(500);
/// How often in-flight ranges are checked for stalls.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Size of the next range for a replica: its share of half of what is left, by bandwidth.
pub fn chunk_size(unassigned: u64, bw_self: f64, bw_total: f64) -> u64 {
    let share = 0.5 * unassigned as f64 * bw_self / bw_total.max(1.0);
    (share as u64).clamp(MIN_CHUNK, MAX_CHUNK).min(unassigned)
}

/// Where to cut the unread part `next..end` of a slow replica's range so that it (keeping the
/// front) and an idle faster replica (taking the back) finish at the same time.
pub fn split_point(next: u64, end: u64, bw_slow: f64, bw_idle: f64) -> u64 {
    let front = (end - next) as f64 * bw_slow / (bw_slow + bw_idle).max(1.0);
    next + front as u64
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
    buf: Vec<u8>,
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
    fn size(&self) -> u64 {
        self.buf.len() as u64
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
        bw: &[f64],
        active: &[usize],
    ) -> Option<(u64, Range<u64>)> {
        let bw_total: f64 = active
            .iter()
            .filter(|i| !self.dropped.contains(i))
            .map(|&i| bw[i])
            .sum();
        let range = if let Some(r) = self.returned.pop() {
            let len = chunk_size(r.end - r.start, bw[replica], bw_total).max(MIN_CHUNK);
            if r.end - r.start > len {
                self.returned.push(r.start + len..r.end);
                r.start..r.start + len
            } else {
                r
            }
        } else if self.cursor < self.size() {
            let len = chunk_size(self.size() - self.cursor, bw[replica], bw_total);
            let r = self.cursor..self.cursor + len;
            self.cursor = r.end;
            r
        } else {
            // Nothing unassigned: help the range whose remaining time is the longest, if
            // finishing it together is faster than leaving it alone.
            let (_, victim) = self
                .flights
                .iter()
                .filter(|(_, f)| f.replica != replica && f.end - f.next >= MIN_SPLIT)
                .map(|(&id, f)| ((f.end - f.next) as f64 / bw[f.replica], id))
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            let f = self.flights.get_mut(&victim)?;
            let cut = split_point(f.next, f.end, bw[f.replica], bw[replica]);
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
            self.buf[from as usize..to as usize].copy_from_slice(src);
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

/// Reads a large object by ranges from several replicas.
pub struct StripedRead<'a> {
    pub stores: Vec<(usize, Arc<dyn ObjectStore>)>,
    pub path: &'a StorePath,
    pub size: u64,
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
    pub async fn run(self) -> Result<(Vec<u8>, StripeReport), Vec<String>> {
        let n = self.health.lock().expect("health").len();
        let bw: Vec<f64> = self
            .health
            .lock()
            .expect("health")
            .iter()
            .map(ReplicaHealth::bandwidth_or_default)
            .collect();
        let active: Vec<usize> = self.stores.iter().map(|(i, _)| *i).collect();
        let state = Mutex::new(State {
            buf: vec![0; self.size as usize],
            cursor: 0,
            returned: Vec::new(),
            flights: HashMap::new(),
            next_id: 0,
            covered: 0,
            dropped: HashSet::new(),
            errors: Vec::new(),
        });
        let wake = Notify::new();
        let delivered = Mutex::new(vec![0u64; n]);
        let mut tasks = FuturesUnordered::new();
        for (i, store) in &self.stores {
            tasks.push(futures::future::Either::Left(self.worker(
                *i,
                store.clone(),
                &state,
                &wake,
                &bw,
                &active,
                &delivered,
            )));
        }
        tasks.push(futures::future::Either::Right(self.watch(&state, &wake)));
        while tasks.next().await.is_some() {
            let s = state.lock().expect("stripe state");
            let all_dropped = active.iter().all(|i| s.dropped.contains(i));
            if s.done() || all_dropped {
                break;
            }
        }
        drop(tasks);
        let s = state.into_inner().expect("stripe state");
        if !s.done() {
            return Err(s.errors);
        }
        let report = StripeReport {
            bytes_from: delivered.into_inner().expect("delivered"),
            dropped: s.dropped.into_iter().collect(),
        };
        Ok((s.buf, report))
    }

    fn mark_failed(&self, replica: usize, why: &str) {
        if let Some(h) = self.health.lock().expect("health").get_mut(replica) {
            h.fail(Instant::now(), why);
        }
    }

    /// Takes ranges away from replicas that stopped sending; ends when the object is complete.
    async fn watch(&self, state: &Mutex<State>, wake: &Notify) {
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

    #[allow(clippy::too_many_arguments)]
    async fn worker(
        &self,
        replica: usize,
        store: Arc<dyn ObjectStore>,
        state: &Mutex<State>,
        wake: &Notify,
        bw: &[f64],
        active: &[usize],
        delivered: &Mutex<Vec<u64>>,
    ) {
        loop {
            let job = {
                let mut s = state.lock().expect("stripe state");
                if s.done() || s.dropped.contains(&replica) {
                    return;
                }
                s.assign(replica, bw, active)
            };
            let Some((id, range)) = job else {
                // Nothing to do now; a stalled or failed range may come back.
                let _ = tokio::time::timeout(WATCH_INTERVAL, wake.notified()).await;
                continue;
            };
            let started = Instant::now();
            match self.fetch(&store, id, range.clone(), state, replica).await {
                Ok(bytes) => {
                    delivered.lock().expect("delivered")[replica] += bytes;
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
                    h[replica].observe_transfer(bytes, started.elapsed());
                    h[replica].succeed();
                }
                Err(e) => {
                    let why = format!("{}: {e}", self.names[replica]);
                    let abandoned = state.lock().expect("stripe state").abandon(id, why);
                    if abandoned.is_some() {
                        debug!(replica = %self.names[replica], error = %e, "range failed, tail requeued");
                    }
                    self.mark_failed(replica, &e);
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

    /// Stream one range into the buffer; the bytes this replica delivered.
    async fn fetch(
        &self,
        store: &Arc<dyn ObjectStore>,
        id: u64,
        range: Range<u64>,
        state: &Mutex<State>,
        replica: usize,
    ) -> Result<u64, String> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let t0 = Instant::now();
        let res = store
            .get_opts(self.path, opts)
            .await
            .map_err(|e| e.to_string())?;
        self.health.lock().expect("health")[replica].observe_latency(t0.elapsed());
        let mut stream = res.into_stream();
        let mut at = range.start;
        let mut got = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let (new, more) = state.lock().expect("stripe state").deliver(id, at, &chunk);
            got += new;
            at += chunk.len() as u64;
            if !more {
                return Ok(got);
            }
        }
        // The stream ended: either every wanted byte came, or the replica sent too little.
        if state
            .lock()
            .expect("stripe state")
            .flights
            .contains_key(&id)
        {
            return Err(format!("short read: range ended at {at} of {}", range.end));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_bandwidth_and_are_clamped() {
        // 100 MiB left, this replica is half of the total bandwidth: 25 MiB -> 8 MiB cap.
        assert_eq!(chunk_size(100 << 20, 50.0, 100.0), MAX_CHUNK);
        // 6 MiB left, a third of the bandwidth: 1 MiB.
        assert_eq!(chunk_size(6 << 20, 1.0, 3.0), MIN_CHUNK);
        // 20 MiB left, 60% of the bandwidth: 6 MiB.
        assert_eq!(chunk_size(20 << 20, 60.0, 100.0), 6 << 20);
        // Never more than what is left.
        assert_eq!(chunk_size(1000, 1.0, 1.0), 1000);
    }

    #[test]
    fn split_lets_both_replicas_finish_together() {
        let (next, end) = (1_000_000, 9_000_000);
        let cut = split_point(next, end, 20.0, 60.0);
        assert_eq!(cut, 3_000_000);
        let slow_time = (cut - next) as f64 / 20.0;
        let fast_time = (end - cut) as f64 / 60.0;
        assert!((slow_time - fast_time).abs() < 1.0);
    }

    fn state(size: usize) -> State {
        State {
            buf: vec![0; size],
            cursor: 0,
            returned: Vec::new(),
            flights: HashMap::new(),
            next_id: 0,
            covered: 0,
            dropped: HashSet::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn every_byte_is_assigned_once_and_abandoned_tails_come_back() {
        let bw = [10.0, 10.0];
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
    }

    #[test]
    fn an_idle_replica_takes_the_tail_of_a_slow_range() {
        let bw = [1.0, 3.0];
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
