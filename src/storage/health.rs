//! What pacsd has learned about each replica: whether it is down (and until when it is left
//! alone), how long its answers take to start, and how fast it streams. Pure bookkeeping with an
//! explicit clock, so every rule is unit-tested; the storage engine feeds it measurements.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First backoff after a failure; doubles with each consecutive failure up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Weight of a new measurement in the moving averages.
const EWMA_ALPHA: f64 = 0.3;
/// Request latencies and whole-read speeds kept per replica (`Recent`).
const RECENT_WINDOW: usize = 12;
/// Bandwidth assumed for a replica never measured (bytes/s): optimistic, so it gets work and
/// is measured.
pub const UNMEASURED_BANDWIDTH: f64 = 100e6;
/// A replica's speed measured during striped reads is trusted this long; after that the read
/// plan assumes it streams as fast as alone again, so striping is tried (and measured) anew.
pub const STRIPED_SPEED_TTL: Duration = Duration::from_secs(30);
/// Ranges one replica typically serves in one striped read (the read plan charges each of
/// them one request latency).
pub const RANGES_PER_REPLICA: f64 = 3.0;
/// Stripe only when the plan predicts at least this fraction of the single GET's time saved
/// (the estimates are averages; a predicted tie is not worth the extra requests).
pub const MIN_STRIPE_GAIN: f64 = 0.15;

#[derive(Debug, Clone, Default)]
pub struct ReplicaHealth {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// Not used for reads before this instant (the backoff after a failure).
    pub down_until: Option<Instant>,
    pub last_error: Option<String>,
    /// Time to first byte: the lower quartile of the last requests (`Recent`).
    pub latency: Option<Duration>,
    latency_samples: Recent,
    /// Streaming speed in bytes/s of whole-object reads (the replica serving alone): the upper
    /// quartile of the last reads (`Recent`).
    pub bandwidth: Option<f64>,
    bandwidth_samples: Recent,
    /// Streaming speed in bytes/s of its ranges in striped reads (serving beside the other
    /// replicas, which may share a disk, a link or a CPU with it), smoothed, and when it was
    /// last measured.
    pub striped_bandwidth: Option<(f64, Instant)>,
}

impl ReplicaHealth {
    /// Usable for reads at `now` (not inside a backoff window).
    pub fn is_up(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|t| now >= t)
    }

    /// Record a failure: the replica is left alone for a backoff that doubles with each
    /// consecutive failure.
    pub fn fail(&mut self, now: Instant, error: impl Into<String>) {
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(MAX_BACKOFF);
        self.down_until = Some(now + backoff);
        self.last_error = Some(error.into());
    }

    /// Record a success: the failure streak ends.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.down_until = None;
    }

    pub fn observe_latency(&mut self, d: Duration) {
        self.latency_samples.push(d.as_secs_f64());
        self.latency = self
            .latency_samples
            .lower_quartile()
            .map(Duration::from_secs_f64);
    }

    /// Record a whole-object read: `bytes` streamed in `elapsed` after the first byte (ignored
    /// when too short to mean anything).
    pub fn observe_transfer(&mut self, bytes: u64, elapsed: Duration) {
        if let Some(bw) = speed(bytes, elapsed) {
            self.bandwidth_samples.push(bw);
            self.bandwidth = self.bandwidth_samples.upper_quartile();
        }
    }

    /// Record one range of a striped read: `bytes` streamed in `elapsed` after its first byte.
    pub fn observe_range(&mut self, bytes: u64, elapsed: Duration, now: Instant) {
        if let Some(bw) = speed(bytes, elapsed) {
            let old = self.striped_bandwidth.map(|(b, _)| b);
            self.striped_bandwidth = Some((smooth(old, bw), now));
        }
    }

    /// Expected speed of a whole-object read.
    pub fn bandwidth_or_default(&self) -> f64 {
        self.bandwidth
            .or(self.striped_bandwidth.map(|(b, _)| b))
            .unwrap_or(UNMEASURED_BANDWIDTH)
    }

    /// Expected speed of this replica's ranges in a striped read at `now`: as measured in
    /// recent striped reads, else as fast as alone (optimistic, so that striping is tried).
    pub fn striped_bandwidth_at(&self, now: Instant) -> f64 {
        fresh(self.striped_bandwidth, now, STRIPED_SPEED_TTL)
            .unwrap_or_else(|| self.bandwidth_or_default())
    }

    fn latency_secs(&self) -> f64 {
        self.latency.unwrap_or(Duration::ZERO).as_secs_f64()
    }
}

/// The last `RECENT_WINDOW` measurements of one kind, estimated by a quartile rather than a
/// mean: a server that now and then holds a response back (Garage's last segment waiting for
/// a delayed ACK, ~40 ms) would otherwise make every request of a replica look that slow, and
/// the read order and plan would flee from whichever replica drew the last stall. A replica
/// that becomes slow for good shows it once three quarters of the window are slow. (Speeds
/// measured inside striped reads stay a moving average: they steer the current allocation.)
#[derive(Debug, Clone, Default)]
struct Recent(VecDeque<f64>);

impl Recent {
    fn push(&mut self, v: f64) {
        if self.0.len() == RECENT_WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn lower_quartile(&self) -> Option<f64> {
        let v = self.sorted();
        v.get(v.len().checked_sub(1)? / 4).copied()
    }

    fn upper_quartile(&self) -> Option<f64> {
        let v = self.sorted();
        let last = v.len().checked_sub(1)?;
        v.get(last - last / 4).copied()
    }
}

fn speed(bytes: u64, elapsed: Duration) -> Option<f64> {
    (bytes >= 64 * 1024 && elapsed >= Duration::from_micros(200))
        .then(|| bytes as f64 / elapsed.as_secs_f64())
}

/// The value of a timed measurement if it is younger than `ttl` at `now`.
fn fresh(m: Option<(f64, Instant)>, now: Instant, ttl: Duration) -> Option<f64> {
    m.filter(|&(_, at)| now.duration_since(at) < ttl)
        .map(|(value, _)| value)
}

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        None => new,
        Some(old) => old * (1.0 - EWMA_ALPHA) + new * EWMA_ALPHA,
    }
}

/// Expected seconds of one whole GET of `size` bytes from `h`.
pub fn single_read_secs(h: &ReplicaHealth, size: u64) -> f64 {
    h.latency_secs() + size as f64 / h.bandwidth_or_default()
}

/// Expected seconds of a striped read of `size` bytes over `replicas` (all finishing together,
/// each paying `RANGES_PER_REPLICA` request latencies): T with sum of (T - k lat_i) bw_i = size
/// over the replicas that start early enough to contribute.
pub fn striped_read_secs(
    health: &[ReplicaHealth],
    replicas: &[usize],
    size: u64,
    now: Instant,
) -> f64 {
    let mut used: Vec<(f64, f64)> = replicas
        .iter()
        .map(|&i| {
            let h = &health[i];
            (
                RANGES_PER_REPLICA * h.latency_secs(),
                h.striped_bandwidth_at(now),
            )
        })
        .collect();
    // Fastest starters first; drop replicas whose start-up alone outlasts the plan.
    used.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best = f64::INFINITY;
    for n in 1..=used.len() {
        let part = &used[..n];
        let bw: f64 = part.iter().map(|p| p.1).sum();
        let t = (size as f64 + part.iter().map(|p| p.0 * p.1).sum::<f64>()) / bw.max(1.0);
        if part.iter().all(|p| p.0 <= t) {
            best = best.min(t);
        }
    }
    best
}

/// What the speed model expects of one read: one GET from the quickest replica, and a striped
/// read over the usable replicas (infinite with fewer than two).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub single_secs: f64,
    pub striped_secs: f64,
}

impl Prediction {
    /// Stripe only when the plan is expected to beat the single GET by `MIN_STRIPE_GAIN`.
    pub fn stripe(&self) -> bool {
        worth_striping(self.striped_secs, self.single_secs)
    }
}

fn worth_striping(striped_secs: f64, single_secs: f64) -> bool {
    striped_secs < (1.0 - MIN_STRIPE_GAIN) * single_secs
}

/// The model's expectations for a read of `size` bytes over `up` (the replicas usable now).
pub fn predict(health: &[ReplicaHealth], up: &[usize], size: u64, now: Instant) -> Prediction {
    let single_secs = up
        .iter()
        .map(|&i| single_read_secs(&health[i], size))
        .fold(f64::INFINITY, f64::min);
    let striped_secs = if up.len() < 2 {
        f64::INFINITY
    } else {
        striped_read_secs(health, up, size, now)
    };
    Prediction {
        single_secs,
        striped_secs,
    }
}

/// The replicas usable at `now` for one whole read of `size` bytes, quickest expected first:
/// recent latency plus `size` at the recent bandwidth (unmeasured ones count as fast, so they
/// get measured); replicas in backoff come last, in case nothing else answers.
pub fn read_order(health: &[ReplicaHealth], now: Instant, size: u64) -> Vec<usize> {
    let expected = |h: &ReplicaHealth| single_read_secs(h, size);
    let mut order: Vec<usize> = (0..health.len()).collect();
    order.sort_by(|&a, &b| {
        let (ha, hb) = (&health[a], &health[b]);
        (!ha.is_up(now))
            .cmp(&!hb.is_up(now))
            .then(expected(ha).total_cmp(&expected(hb)))
    });
    order
}

/// How long the achieved speed of one way of reading (striped or one GET) counts.
pub const OUTCOME_TTL: Duration = Duration::from_secs(300);
/// After this many large reads of one size class without news of the other way of reading,
/// the other way is tried once.
pub const EXPLORE_EVERY: u32 = 32;

/// What striped reads and single GETs of large objects actually achieved (object bytes per
/// second, checksum included), per power-of-two size class. The speed model
/// (`predict`) guesses; these outcomes correct it where it guesses wrong (replicas
/// that share a CPU or a link, per-request costs it does not see).
#[derive(Debug, Default, Clone)]
pub struct ReadOutcomes {
    classes: std::collections::HashMap<u32, ClassOutcomes>,
}

#[derive(Debug, Default, Clone)]
struct ClassOutcomes {
    striped: Option<(f64, Instant)>,
    single: Option<(f64, Instant)>,
    since_explored: u32,
}

fn size_class(size: u64) -> u32 {
    64 - size.leading_zeros()
}

impl ReadOutcomes {
    /// Stripe this read of `size` bytes? `model` is what the speed model expects. Where both
    /// ways were measured lately, the faster one; where one way was, its achieved time takes
    /// the place of the model's guess for it (so a way that does worse than the model expected
    /// of the other makes way for the other, which is then measured too); else the model.
    pub fn choose(&mut self, size: u64, model: &Prediction, now: Instant) -> bool {
        let c = self.classes.entry(size_class(size)).or_default();
        let secs = |rate: f64| size as f64 / rate.max(1.0);
        let preferred = match (
            fresh(c.striped, now, OUTCOME_TTL),
            fresh(c.single, now, OUTCOME_TTL),
        ) {
            (Some(striped), Some(single)) => return striped > single,
            (Some(striped), None) => worth_striping(secs(striped), model.single_secs),
            (None, Some(single)) => worth_striping(model.striped_secs, secs(single)),
            (None, None) => model.stripe(),
        };
        c.since_explored += 1;
        if c.since_explored >= EXPLORE_EVERY {
            c.since_explored = 0;
            return !preferred;
        }
        preferred
    }

    /// Record that a read of `size` bytes, striped or not, took `elapsed`.
    pub fn record(&mut self, size: u64, striped: bool, elapsed: Duration, now: Instant) {
        let rate = size as f64 / elapsed.as_secs_f64().max(1e-6);
        let c = self.classes.entry(size_class(size)).or_default();
        let slot = if striped {
            &mut c.striped
        } else {
            &mut c.single
        };
        *slot = Some((smooth(fresh(*slot, now, OUTCOME_TTL), rate), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_and_success_clears_it() {
        let t0 = Instant::now();
        let mut h = ReplicaHealth::default();
        assert!(h.is_up(t0));
        h.fail(t0, "boom");
        assert!(!h.is_up(t0));
        assert!(h.is_up(t0 + FIRST_BACKOFF));
        h.fail(t0, "boom");
        assert!(!h.is_up(t0 + FIRST_BACKOFF));
        assert!(h.is_up(t0 + FIRST_BACKOFF * 2));
        for _ in 0..40 {
            h.fail(t0, "boom");
        }
        assert!(h.is_up(t0 + MAX_BACKOFF));
        assert_eq!(h.last_error.as_deref(), Some("boom"));
        h.succeed();
        assert!(h.is_up(t0));
        assert_eq!(h.failures, 0);
    }

    #[test]
    fn bandwidth_ignores_tiny_transfers_and_occasional_stalls_but_follows_a_lasting_slowdown() {
        let mut h = ReplicaHealth::default();
        assert_eq!(h.bandwidth_or_default(), UNMEASURED_BANDWIDTH);
        h.observe_transfer(100, Duration::from_millis(1));
        assert_eq!(h.bandwidth, None);
        h.observe_transfer(10_000_000, Duration::from_secs(1));
        assert_eq!(h.bandwidth, Some(10e6));
        // 80 MB/s, with every third read held back and measured at 10 MB/s.
        for i in 0..12 {
            let mb = if i % 3 == 2 { 10 } else { 80 };
            h.observe_transfer(mb * 1_000_000, Duration::from_secs(1));
        }
        assert_eq!(h.bandwidth, Some(80e6));
        // It really slows down to 5 MB/s: not taken for a stall for long.
        for _ in 0..3 {
            h.observe_transfer(5_000_000, Duration::from_secs(1));
        }
        assert_eq!(h.bandwidth, Some(80e6));
        for _ in 0..9 {
            h.observe_transfer(5_000_000, Duration::from_secs(1));
        }
        assert_eq!(h.bandwidth, Some(5e6));
    }

    fn replica(latency_ms: u64, solo_mbps: f64) -> ReplicaHealth {
        let mut h = ReplicaHealth::default();
        h.observe_latency(Duration::from_millis(latency_ms));
        h.observe_transfer((solo_mbps * 1e6) as u64, Duration::from_secs(1));
        h
    }

    #[test]
    fn striping_is_chosen_only_when_it_is_expected_to_pay() {
        let now = Instant::now();
        // 20/40/80 MB/s, 1 ms latency: 64 MB striped ~0.46 s vs 0.8 s alone; 0.5 MB is not
        // worth three requests each.
        let h = vec![replica(1, 20.0), replica(1, 40.0), replica(1, 80.0)];
        let all = [0, 1, 2];
        let t = striped_read_secs(&h, &all, 64_000_000, now);
        assert!(
            (t - (64e6 + 3.0 * 0.001 * 140e6) / 140e6).abs() < 1e-6,
            "{t}"
        );
        assert!(predict(&h, &all, 64_000_000, now).stripe());
        assert!(predict(&h, &all, 8_000_000, now).stripe());
        assert!(!predict(&h, &all, 100_000, now).stripe());
        assert!(!predict(&h, &[2], 64_000_000, now).stripe());
        // The same replicas, but striped reads measured them much slower together (a shared
        // disk or CPU): one GET from the fastest wins, until those measurements are stale.
        let mut shared = h.clone();
        for r in &mut shared {
            r.observe_range(10_000_000, Duration::from_secs(1), now);
        }
        assert!(!predict(&shared, &all, 64_000_000, now).stripe());
        assert!(predict(&shared, &all, 64_000_000, now + STRIPED_SPEED_TTL).stripe());
    }

    /// The model's expectation: one GET in `single_ms`, a striped read in `striped_ms`.
    fn expect(single_ms: u64, striped_ms: u64) -> Prediction {
        Prediction {
            single_secs: single_ms as f64 / 1e3,
            striped_secs: striped_ms as f64 / 1e3,
        }
    }

    #[test]
    fn achieved_speeds_overrule_the_model_and_the_other_way_is_tried_now_and_then() {
        let t0 = Instant::now();
        let size = 8 << 20;
        // The model: striped 12 ms, one GET 20 ms (stripe); or the other way round.
        let (stripe, single) = (expect(20, 12), expect(12, 20));
        let mut o = ReadOutcomes::default();
        // Nothing known: the model decides.
        assert!(o.choose(size, &stripe, t0));
        assert!(!o.choose(size, &single, t0));
        // Striped reads achieved 15 ms: still better than the model's one GET by the margin...
        o.record(size, true, Duration::from_millis(15), t0);
        let mut ways = Vec::new();
        for _ in 0..EXPLORE_EVERY {
            ways.push(o.choose(size, &stripe, t0));
        }
        // ...so striping goes on, and once in EXPLORE_EVERY reads one GET is tried.
        assert_eq!(ways.iter().filter(|&&w| !w).count(), 1, "{ways:?}");
        // One GET proved faster: it is used while both figures are fresh.
        o.record(size, false, Duration::from_millis(10), t0);
        assert!(!o.choose(size, &stripe, t0));
        assert!(!o.choose(size, &stripe, t0 + OUTCOME_TTL / 2));
        // Another size class knows nothing of this.
        assert!(o.choose(64 << 20, &stripe, t0));
        // Stale figures: back to the model.
        assert!(o.choose(size, &stripe, t0 + OUTCOME_TTL));
    }

    #[test]
    fn a_way_that_does_worse_than_the_model_expects_of_the_other_gives_way_at_once() {
        let t0 = Instant::now();
        let size = 8 << 20;
        let stripe = expect(20, 12);
        let mut o = ReadOutcomes::default();
        // Striped reads took 21 ms, no better than the 20 ms expected of one GET: try one GET
        // next, not after EXPLORE_EVERY reads.
        o.record(size, true, Duration::from_millis(21), t0);
        assert!(!o.choose(size, &stripe, t0));
        // One GET took 30 ms: striping (21 ms measured) is back.
        o.record(size, false, Duration::from_millis(30), t0);
        assert!(o.choose(size, &stripe, t0));
        // The same from the other side: single GETs measured at 40 ms while the model expects
        // a striped read in 12 ms: stripe.
        let mut o = ReadOutcomes::default();
        let single = expect(11, 12);
        o.record(size, false, Duration::from_millis(40), t0);
        assert!(o.choose(size, &single, t0));
    }

    #[test]
    fn a_replica_too_slow_to_start_is_left_out_of_the_plan() {
        let now = Instant::now();
        // Replica 1 takes 5 s to answer: the plan uses replica 0 alone rather than waiting.
        let h = vec![replica(1, 50.0), replica(5000, 50.0)];
        let t = striped_read_secs(&h, &[0, 1], 10_000_000, now);
        assert!((t - (10e6 + 0.003 * 50e6) / 50e6).abs() < 1e-6, "{t}");
    }

    #[test]
    fn occasional_slow_responses_do_not_set_the_latency_but_a_lasting_slowdown_does() {
        let mut h = ReplicaHealth::default();
        // Garage-like: most answers in 3 ms, every third held back 40 ms.
        for i in 0..12 {
            h.observe_latency(Duration::from_millis(if i % 3 == 2 { 43 } else { 3 }));
        }
        assert_eq!(h.latency, Some(Duration::from_millis(3)));
        // The replica really slows down: a few slow answers could be stalls...
        for _ in 0..3 {
            h.observe_latency(Duration::from_millis(50));
        }
        assert_eq!(h.latency, Some(Duration::from_millis(3)));
        // ...once three quarters of the window are slow, the estimate follows.
        for _ in 0..7 {
            h.observe_latency(Duration::from_millis(50));
        }
        assert_eq!(h.latency, Some(Duration::from_millis(50)));
    }

    #[test]
    fn read_order_prefers_low_latency_and_puts_down_replicas_last() {
        let now = Instant::now();
        let mut h = vec![ReplicaHealth::default(); 3];
        h[0].observe_latency(Duration::from_millis(9));
        h[1].observe_latency(Duration::from_millis(2));
        h[2].observe_latency(Duration::from_millis(1));
        h[2].fail(now, "down");
        assert_eq!(read_order(&h, now, 0), vec![1, 0, 2]);
        let fresh = vec![ReplicaHealth::default(), h[0].clone()];
        assert_eq!(read_order(&fresh, now, 0), vec![0, 1]);
    }

    #[test]
    fn read_order_weighs_bandwidth_by_the_size_of_the_read() {
        let now = Instant::now();
        let mut h = vec![ReplicaHealth::default(); 2];
        // Replica 0 answers sooner, replica 1 streams four times faster.
        h[0].observe_latency(Duration::from_millis(2));
        h[0].observe_transfer(20_000_000, Duration::from_secs(1));
        h[1].observe_latency(Duration::from_millis(5));
        h[1].observe_transfer(80_000_000, Duration::from_secs(1));
        // 10 KB: 2.5 ms vs 5.1 ms. 500 KB: 27 ms vs 11 ms.
        assert_eq!(read_order(&h, now, 10_000), vec![0, 1]);
        assert_eq!(read_order(&h, now, 500_000), vec![1, 0]);
    }
}
