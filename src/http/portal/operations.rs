//! The operations page (admin): the archive's size, every replica's health as the read path
//! sees it, the repair queue, the preview backlog, who is signed in, and the main settings in
//! effect (replica URLs without their queries, which may hold credentials).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::pages::shown_location;
use super::{Signed, error_page, page};
use crate::http::{WebError, WebState};

/// Repair-queue entries listed (the count covers all of them).
const LISTED_REPAIRS: usize = 50;

/// GET /portal/operations (admin).
pub async fn operations(State(state): State<Arc<WebState>>, signed: Signed) -> Response {
    let run = async {
        signed.require(signed.rights().admin, "see operations (admin only)")?;
        operations_page(&state, &signed).await
    };
    match run.await {
        Ok(m) => m.into_response(),
        Err(e) => error_page(e, Some(&signed)),
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "—".into())
}

fn rate(bytes_per_sec: Option<f64>) -> String {
    bytes_per_sec
        .map(|b| format!("{:.0} MB/s", b / 1e6))
        .unwrap_or_else(|| "—".into())
}

async fn operations_page(state: &WebState, signed: &Signed) -> Result<Markup, WebError> {
    let counts = state.index.counts().await?;
    let previews = state.index.preview_counts().await?;
    let repairs = state.index.repair_queue().await?;
    let now = Instant::now();
    let health = state.storage.health();
    let c = &state.config;
    let body = html! {
        h1 { "Operations" }
        h2 { "Archive" }
        dl.facts #archive {
            dt { "Patients" } dd { (counts.patients) }
            dt { "Studies" } dd { (counts.studies) }
            dt { "Series" } dd { (counts.series) }
            dt { "Instances" } dd data-count="instances" { (counts.instances) }
            dt { "Repair queue" } dd data-count="repairs" { (counts.repair_queue) }
            dt { "Previews" } dd data-count="previews" {
                (previews.done) " made, " (previews.pending) " waiting, "
                (previews.failed) " failed, " (previews.none) " without pixels"
            }
            dt { "People signed in" } dd { (state.sessions.count(now)) }
        }
        h2 { "Replicas" }
        p.muted {
            "Write quorum: " (state.storage.quorum().needed()) " of " (state.storage.quorum().total())
            ". Latency is the time to the first byte, bandwidth the speed of whole-object reads, "
            "striped the speed of a replica's share in striped reads (last 30 s)."
        }
        table #replica-health {
            thead { tr {
                th scope="col" { "Replica" } th scope="col" { "State" }
                th.num scope="col" { "Failures in a row" } th scope="col" { "Last error" }
                th.num scope="col" { "Latency" } th.num scope="col" { "Bandwidth" }
                th.num scope="col" { "Striped" }
            } }
            tbody {
                @for (r, replica) in state.storage.replicas().iter().enumerate() {
                    @let h = health.get(r).cloned().unwrap_or_default();
                    tr {
                        td { code { (shown_location(&replica.location)) } }
                        td {
                            @if h.is_up(now) { span.ok { "up" } }
                            @else {
                                span.bad { "in backoff" }
                                @if let Some(until) = h.down_until {
                                    " (" (until.saturating_duration_since(now).as_secs()) " s)"
                                }
                            }
                        }
                        td.num { (h.failures) }
                        td { (h.last_error.clone().unwrap_or_default()) }
                        td.num { (millis(h.latency)) }
                        td.num { (rate(h.bandwidth)) }
                        td.num { (rate(h.striped_bandwidth
                            .filter(|(_, at)| now.saturating_duration_since(*at) < Duration::from_secs(30))
                            .map(|(b, _)| b))) }
                    }
                }
            }
        }
        h2 { "Repair queue" }
        @if repairs.is_empty() {
            p.muted #repairs-empty { "Empty: every copy the archive knows of is where it should be." }
        } @else {
            table #repairs {
                thead { tr { th scope="col" { "Object" } th scope="col" { "Replica" } th scope="col" { "Why" } } }
                tbody {
                    @for e in repairs.iter().take(LISTED_REPAIRS) {
                        tr { td { code { (e.storage_key) } } td { code { (shown_location(&e.replica)) } } td { (e.reason) } }
                    }
                }
            }
            @if repairs.len() > LISTED_REPAIRS {
                p.muted { "The first " (LISTED_REPAIRS) " of " (repairs.len()) "." }
            }
        }
        h2 { "Settings in effect" }
        dl.facts #settings {
            dt { "Configuration file" } dd { (c.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into())) }
            dt { "AE title" } dd { code { (c.node.ae_title) } }
            dt { "DICOM" } dd { (c.node.bind) ":" (c.node.port)
                @if let Some(t) = &c.tls { ", TLS on port " (t.port) } }
            dt { "HTTP" } dd { (c.http.bind.clone().unwrap_or_else(|| c.node.bind.clone())) ":" (c.http.port)
                ", DICOMweb at " code { (c.http.base_path) }
                @if c.http.require_auth { ", sign-in required" } @else { ", DICOMweb open without sign-in" } }
            dt { "Index" } dd { code { (c.index.path.display()) } }
            dt { "Replicas" } dd {
                @for r in &c.storage.replicas { code { (shown_location(r)) } br; }
            }
            dt { "Previews" } dd { @if c.preview.enabled { "on" } @else { "off" } }
            dt { "High availability" } dd {
                @match &c.ha {
                    Some(ha) => { "pair member " code { (ha.node_id) } "; role, lease and switchover: "
                        code { "pacsd ha status" } ", " code { "pacsd ha switchover" } }
                    None => "single node",
                }
            }
        }
    };
    Ok(page("Operations", Some(signed), body))
}
