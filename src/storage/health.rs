//! What pacsd has learned about each replica: whether it is down (and until when it is left
//! alone), how long its answers take to start, and how fast it streams. Pure bookkeeping with an
//! explicit clock, so every rule is unit-tested; the storage engine feeds it measurements.

use std::time::{Duration, Instant};

/// First backoff after a failure; doubles with each consecutive failure up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Weight of a new measurement in the moving averages.
const EWMA_ALPHA: f64 = 0.3;
/// Bandwidth assumed for a replica never measured (bytes/s): optimistic, so it gets work and
/// is measured.
pub const UNMEASURED_BANDWIDTH: f64 = 100e6;

#[derive(Debug, Clone, Default)]
pub struct ReplicaHealth {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// Not used for reads before this instant (the backoff after a failure).
    pub down_until: Option<Instant>,
    pub last_error: Option<String>,
    /// Time to first byte, smoothed.
    pub latency: Option<Duration>,
    /// Streaming speed in bytes/s, smoothed.
    pub bandwidth: Option<f64>,
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
        self.latency = Some(match self.latency {
            None => d,
            Some(old) => old.mul_f64(1.0 - EWMA_ALPHA) + d.mul_f64(EWMA_ALPHA),
        });
    }

    /// Record `bytes` streamed in `elapsed` (ignored when too short to mean anything).
    pub fn observe_transfer(&mut self, bytes: u64, elapsed: Duration) {
        if bytes < 64 * 1024 || elapsed < Duration::from_micros(200) {
            return;
        }
        let bw = bytes as f64 / elapsed.as_secs_f64();
        self.bandwidth = Some(match self.bandwidth {
            None => bw,
            Some(old) => old * (1.0 - EWMA_ALPHA) + bw * EWMA_ALPHA,
        });
    }

    pub fn bandwidth_or_default(&self) -> f64 {
        self.bandwidth.unwrap_or(UNMEASURED_BANDWIDTH)
    }
}

/// The replicas usable at `now` for one whole read of `size` bytes, quickest expected first:
/// recent latency plus `size` at the recent bandwidth (unmeasured ones count as fast, so they
/// get measured); replicas in backoff come last, in case nothing else answers.
pub fn read_order(health: &[ReplicaHealth], now: Instant, size: u64) -> Vec<usize> {
    let expected = |h: &ReplicaHealth| {
        h.latency.unwrap_or(Duration::ZERO).as_secs_f64() + size as f64 / h.bandwidth_or_default()
    };
    let mut order: Vec<usize> = (0..health.len()).collect();
    order.sort_by(|&a, &b| {
        let (ha, hb) = (&health[a], &health[b]);
        (!ha.is_up(now))
            .cmp(&!hb.is_up(now))
            .then(expected(ha).total_cmp(&expected(hb)))
    });
    order
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
    fn bandwidth_is_smoothed_and_tiny_transfers_ignored() {
        let mut h = ReplicaHealth::default();
        assert_eq!(h.bandwidth_or_default(), UNMEASURED_BANDWIDTH);
        h.observe_transfer(100, Duration::from_millis(1));
        assert_eq!(h.bandwidth, None);
        h.observe_transfer(10_000_000, Duration::from_secs(1));
        assert_eq!(h.bandwidth, Some(10e6));
        h.observe_transfer(20_000_000, Duration::from_secs(1));
        let bw = h.bandwidth.unwrap();
        assert!((bw - 13e6).abs() < 1.0, "{bw}");
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
