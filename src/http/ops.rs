//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can take and serve
//! objects: the index answers and a write quorum of replicas is up), `/metrics` (Prometheus).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{WebError, WebState};
pub use crate::metrics::Metrics;
use crate::metrics::{counter, gauge};

/// Middleware: count every request by route and status, with its latency.
pub async fn count_request(
    State(state): State<Arc<WebState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let route = format!("{} {route}", req.method());
    let started = Instant::now();
    let rsp = next.run(req).await;
    state
        .metrics
        .observe("http", &route, rsp.status().as_str(), started.elapsed());
    rsp
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<Arc<WebState>>) -> Result<&'static str, WebError> {
    state.index.counts().await?;
    let now = Instant::now();
    let up = state
        .storage
        .health()
        .iter()
        .filter(|h| h.is_up(now))
        .count();
    let needed = state.storage.quorum().needed();
    if up < needed {
        return Err(WebError::Unavailable(format!(
            "{up} replicas up, {needed} needed for a write quorum"
        )));
    }
    Ok("ready\n")
}

pub async fn metrics(State(state): State<Arc<WebState>>) -> Result<Response, WebError> {
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.render(&mut out);
    let counts = state.index.counts().await?;
    for (name, help, v) in [
        ("pacsd_studies", "Studies indexed.", counts.studies),
        ("pacsd_series", "Series indexed.", counts.series),
        ("pacsd_instances", "Instances indexed.", counts.instances),
        (
            "pacsd_repair_queue_length",
            "Replica copies waiting for repair.",
            counts.repair_queue,
        ),
    ] {
        gauge(&mut out, name, help, v as f64);
    }
    let previews = state.index.preview_counts().await?;
    gauge(
        &mut out,
        "pacsd_preview_backlog",
        "Previews waiting to be rendered.",
        previews.pending as f64,
    );
    replica_metrics(&state, &mut out);
    let background = state.storage.background_stats();
    gauge(
        &mut out,
        "pacsd_replica_writes_in_background",
        "Replica writes still running after their put was answered at the write quorum.",
        background.running as f64,
    );
    counter(
        &mut out,
        "pacsd_replica_writes_backgrounded_total",
        "Replica writes that outlasted the straggler patience and finished in the background.",
        background.handed as f64,
    );
    counter(
        &mut out,
        "pacsd_replica_background_full_total",
        "Puts that found the background bounds taken and waited the straggler grace.",
        background.full as f64,
    );
    ha_metrics(&state, &mut out).await;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// A pair member's HA state, as its driver reports it (`pacsd ha status`): whether the
/// driver answered, the role, epoch, change-log position, replication lag and the peer.
async fn ha_metrics(state: &WebState, out: &mut String) {
    use crate::ha::driver::{ControlReply, ControlRequest};
    let Some(reply) = state.ha(&ControlRequest::Status).await else {
        return;
    };
    let st = match reply {
        Ok(ControlReply::Status(st)) => Some(st),
        _ => None,
    };
    let up = "HA driver answered its control socket (1) or not (0).";
    gauge(
        out,
        "pacsd_ha_driver_up",
        up,
        f64::from(u8::from(st.is_some())),
    );
    let Some(st) = st else { return };
    let flag = |b: bool| f64::from(u8::from(b));
    let mut gauges = vec![
        (
            "pacsd_ha_primary",
            "This node is the primary (1) or not (0).",
            flag(st.role.starts_with("primary")),
        ),
        (
            "pacsd_ha_epoch",
            "HA epoch (term) this node is in.",
            st.epoch as f64,
        ),
        (
            "pacsd_ha_solo",
            "Primary serving without a standby in step (1).",
            flag(st.solo),
        ),
        (
            "pacsd_ha_maintenance",
            "This node is in maintenance (1).",
            flag(st.maintenance),
        ),
        (
            "pacsd_ha_change_log_seq",
            "Last change-log row of this node's index.",
            st.seq as f64,
        ),
    ];
    if let Some(lag) = st.replication_lag {
        let help = "Index change-log rows not yet acknowledged by the standby (primary) \
                    or not yet applied here (standby).";
        gauges.push(("pacsd_ha_replication_lag_rows", help, lag as f64));
    }
    if let Some(ready) = st.standby_ready {
        let help = "A standby is in step and would take over (1).";
        gauges.push(("pacsd_ha_standby_ready", help, flag(ready)));
    }
    if let Some(peer) = &st.peer {
        let help = "Seconds since the peer was last heard on a heartbeat link.";
        gauges.push((
            "pacsd_ha_peer_heard_seconds",
            help,
            peer.heard_ms_ago as f64 / 1000.0,
        ));
    }
    for (name, help, v) in gauges {
        gauge(out, name, help, v);
    }
}

type ReplicaGauge<'a> = dyn Fn(&crate::storage::health::ReplicaHealth) -> f64 + 'a;

/// Per replica: up, consecutive failures, backoff left, latency and bandwidth.
fn replica_metrics(state: &WebState, out: &mut String) {
    use std::fmt::Write;
    let now = Instant::now();
    let health = state.storage.health();
    let families: [(&str, &str, &ReplicaGauge<'_>); 5] = [
        (
            "pacsd_replica_up",
            "1 when the replica is used for reads and writes.",
            &|h| f64::from(u8::from(h.is_up(now))),
        ),
        (
            "pacsd_replica_failures",
            "Consecutive failures since the last success.",
            &|h| f64::from(h.failures),
        ),
        (
            "pacsd_replica_backoff_seconds",
            "Time left before a failed replica is tried again.",
            &|h| {
                h.down_until
                    .map(|t| t.saturating_duration_since(now).as_secs_f64())
                    .unwrap_or(0.0)
            },
        ),
        (
            "pacsd_replica_latency_seconds",
            "Recent time to first byte.",
            &|h| h.latency.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        ),
        (
            "pacsd_replica_bandwidth_bytes_per_second",
            "Recent whole-object read speed.",
            &|h| h.bandwidth.unwrap_or(f64::NAN),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (r, h) in state.storage.replicas().iter().zip(&health) {
            let _ = writeln!(
                out,
                "{name}{{replica=\"{}\"}} {}",
                crate::metrics::escape(&r.location),
                value(h)
            );
        }
    }
}
