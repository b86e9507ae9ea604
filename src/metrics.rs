//! Counters and latency histograms of requests (DIMSE and HTTP), kept in memory and written
//! in the Prometheus text format (exposition format 0.0.4) by `/metrics`. A leaf module: the
//! services record into it, the HTTP side renders it with the gauges it reads at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 1 ms to 60 s, roughly x2.5 apart
/// (a QIDO answer takes milliseconds, a whole-study retrieve can take a minute).
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }
}

/// (protocol, operation) -> (status -> count, latency histogram).
type Requests = BTreeMap<(&'static str, String), (BTreeMap<String, u64>, Histogram)>;

/// The node's request metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<Requests>,
    pub associations_accepted: AtomicU64,
    /// Associations established and not yet ended.
    pub associations_open: AtomicU64,
    pub associations_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// The node's receive budget (one permit per byte of data set being received) and its
    /// size, read at scrape time; shared by the DICOM acceptor (`watch_receive_budget`).
    receive_budget: Mutex<Option<(Arc<tokio::sync::Semaphore>, usize)>>,
}

/// Distinct operation names kept; beyond it requests count under `other` (the names come
/// from a fixed route table, so this only guards against a mistake).
const MAX_OPERATIONS: usize = 256;

impl Metrics {
    /// One finished request: `protocol` is `dimse` or `http`, `operation` a DIMSE command
    /// or an HTTP route, `status` its outcome (DIMSE status in hex or HTTP status code).
    pub fn observe(&self, protocol: &'static str, operation: &str, status: &str, took: Duration) {
        let mut r = self.requests.lock().expect("metrics");
        let op = if r.len() >= MAX_OPERATIONS && !r.contains_key(&(protocol, operation.to_string()))
        {
            "other".to_string()
        } else {
            operation.to_string()
        };
        let (statuses, hist) = r.entry((protocol, op)).or_default();
        *statuses.entry(status.to_string()).or_default() += 1;
        hist.observe(took.as_secs_f64());
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Report the receive budget `budget` of `total` bytes (the acceptor's, from now on).
    pub fn watch_receive_budget(&self, budget: Arc<tokio::sync::Semaphore>, total: usize) {
        *self.receive_budget.lock().expect("metrics") = Some((budget, total));
    }

    /// The request metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let r = self.requests.lock().expect("metrics").clone();
        let _ = writeln!(
            out,
            "# HELP pacsd_requests_total Requests answered, by protocol, operation and status.\n\
             # TYPE pacsd_requests_total counter"
        );
        for ((proto, op), (statuses, _)) in &r {
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "pacsd_requests_total{{protocol=\"{proto}\",operation=\"{}\",status=\"{}\"}} {n}",
                    escape(op),
                    escape(status)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pacsd_request_duration_seconds Time to answer a request.\n\
             # TYPE pacsd_request_duration_seconds histogram"
        );
        for ((proto, op), (_, h)) in &r {
            let labels = format!("protocol=\"{proto}\",operation=\"{}\"", escape(op));
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "pacsd_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            cumulative += h.counts[BUCKETS.len()];
            let _ = writeln!(
                out,
                "pacsd_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n\
                 pacsd_request_duration_seconds_sum{{{labels}}} {}\n\
                 pacsd_request_duration_seconds_count{{{labels}}} {cumulative}",
                h.sum
            );
        }
        for (name, help, v) in [
            (
                "pacsd_associations_accepted_total",
                "DICOM associations accepted.",
                &self.associations_accepted,
            ),
            (
                "pacsd_associations_refused_total",
                "DICOM associations rejected or closed before acceptance.",
                &self.associations_refused,
            ),
            (
                "pacsd_received_bytes_total",
                "Object bytes received (C-STORE and STOW-RS).",
                &self.bytes_in,
            ),
            (
                "pacsd_sent_bytes_total",
                "Object bytes read to be sent (C-MOVE, C-GET, WADO-RS, WADO-URI).",
                &self.bytes_out,
            ),
        ] {
            counter(out, name, help, v.load(Ordering::Relaxed) as f64);
        }
        gauge(
            out,
            "pacsd_associations_open",
            "DICOM associations established and not yet ended.",
            self.associations_open.load(Ordering::Relaxed) as f64,
        );
        if let Some((budget, total)) = &*self.receive_budget.lock().expect("metrics") {
            gauge(
                out,
                "pacsd_receive_budget_bytes",
                "Memory DICOM data sets being received may hold together (node.receive_budget).",
                *total as f64,
            );
            gauge(
                out,
                "pacsd_receive_budget_held_bytes",
                "Memory held now by DICOM data sets being received.",
                total.saturating_sub(budget.available_permits()) as f64,
            );
        }
    }
}

/// One counter or gauge with its help and type lines.
fn metric(out: &mut String, kind: &str, name: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

pub fn counter(out: &mut String, name: &str, help: &str, v: f64) {
    metric(out, "counter", name, help, v)
}

pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    metric(out, "gauge", name, help, v)
}

/// A label value in the text format: backslash, quote and newline escaped.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let m = Metrics::default();
        m.observe("http", "/studies", "200", Duration::from_micros(500));
        m.observe("http", "/studies", "200", Duration::from_millis(30));
        m.observe("http", "/studies", "404", Duration::from_secs(100));
        let mut out = String::new();
        m.render(&mut out);
        let line = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let l = "protocol=\"http\",operation=\"/studies\"";
        assert_eq!(
            line(&format!("pacsd_requests_total{{{l},status=\"200\"}}")),
            "2"
        );
        assert_eq!(
            line(&format!(
                "pacsd_request_duration_seconds_bucket{{{l},le=\"0.001\"}}"
            )),
            "1"
        );
        assert_eq!(
            line(&format!(
                "pacsd_request_duration_seconds_bucket{{{l},le=\"0.05\"}}"
            )),
            "2"
        );
        assert_eq!(
            line(&format!(
                "pacsd_request_duration_seconds_bucket{{{l},le=\"60\"}}"
            )),
            "2"
        );
        assert_eq!(
            line(&format!(
                "pacsd_request_duration_seconds_bucket{{{l},le=\"+Inf\"}}"
            )),
            "3"
        );
        assert_eq!(
            line(&format!("pacsd_request_duration_seconds_count{{{l}}}")),
            "3"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
