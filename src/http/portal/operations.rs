//! The operations page (admin): the archive's size, every replica's health as the read path
//! sees it, the repair queue, the preview backlog, who is signed in, and the main settings in
//! effect (replica URLs without their queries, which may hold credentials).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::shown_location;
use super::{Signed, error_page, page};
use crate::ha::driver::{ControlReply, ControlRequest, Status};
use crate::http::{WebError, WebState};

/// Audit records listed (the newest).
const LISTED_AUDIT: usize = 30;
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

fn ha_section(
    status: &Option<Result<ControlReply, crate::ha::driver::ControlError>>,
    offer_switchover: bool,
) -> Markup {
    html! {
        h2 #ha { "High availability" }
        @match status {
            None => p.muted { "Single node: no [ha] section." },
            Some(Err(e)) => p.error { "The HA driver did not answer: " (e) },
            Some(Ok(ControlReply::Status(st))) => (ha_status(st, offer_switchover)),
            Some(Ok(other)) => p.error { "Unexpected answer: " (format!("{other:?}")) },
        }
    }
}

fn ha_status(st: &Status, offer_switchover: bool) -> Markup {
    html! {
        dl.facts #ha-status {
            dt { "This node" } dd { code { (st.node) } }
            dt { "Role" } dd data-role=(st.role) { strong { (st.role) }
                @if st.solo { " (alone: the standby is not in step)" }
                @if st.maintenance { " — in maintenance" }
                @if let Some(p) = &st.planned { " — " (p) " under way" } }
            dt { "Epoch" } dd { (st.epoch) }
            dt { "Lease" } dd { (st.lease_ms.map(|ms| format!("{ms} ms left")).unwrap_or_else(|| "—".into())) }
            dt { "Peer" } dd {
                @match &st.peer {
                    Some(p) => { code { (p.node) } ", " (if p.primary { "primary" } else { "standby" })
                        ", epoch " (p.epoch) ", heard " (p.heard_ms_ago) " ms ago"
                        @if p.maintenance { ", in maintenance" } }
                    None => "not heard",
                }
            }
            dt { "Index change log" } dd { "seq " (st.seq)
                @if let Some(lag) = st.replication_lag { ", replication lag " (lag) " rows" } }
            dt { "Service IP" } dd {
                (st.service_ip.clone().unwrap_or_else(|| "none configured".into()))
                @if st.service_ip.is_some() { @if st.holds_service_ip { " (held here)" } @else { " (not held here)" } }
            }
            @if let Some(ready) = st.standby_ready {
                dt { "Standby ready to take over" } dd { @if ready { span.ok { "yes" } } @else { span.bad { "no" } } }
            }
        }
        @if offer_switchover && st.role == "primary" {
            p { a.button.secondary #switchover href="/portal/operations/switchover" { "Switch over to the standby…" } }
        }
    }
}

/// GET /portal/operations/switchover (admin): what a switchover does, and the form that
/// confirms it.
pub async fn switchover_form(State(state): State<Arc<WebState>>, signed: Signed) -> Response {
    if let Err(e) = signed.require(signed.rights().admin, "switch over (admin only)") {
        return error_page(e, Some(&signed));
    }
    let status = state.ha(&ControlRequest::Status).await;
    let body = html! {
        h1 { "Switch over" }
        (ha_section(&status, false))
        p {
            "The primary stops taking new associations, lets the open ones finish, and hands the "
            "service (AE title, service IP, DICOMweb and this portal) to the standby, which "
            "takes over with everything acknowledged so far. Devices reconnect to the same "
            "address. This page will then be served by the other node."
        }
        form method="post" action="/portal/operations/switchover" {
            input type="hidden" name="csrf" value=(signed.session.csrf);
            input type="hidden" name="confirm" value="yes";
            div.actions {
                button type="submit" #confirm-switchover { "Yes, switch over now" }
                a.button.secondary href="/portal/operations" { "Cancel" }
            }
        }
    };
    page("Switch over", Some(&signed), body).into_response()
}

#[derive(Deserialize)]
pub struct SwitchoverForm {
    csrf: String,
    confirm: String,
}

/// POST /portal/operations/switchover (admin, confirmed): ask the HA driver to hand over.
pub async fn switchover(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Form(f): Form<SwitchoverForm>,
) -> Response {
    let run = async {
        signed.admin_form(&f.csrf, "switch over (admin only)")?;
        if f.confirm != "yes" {
            return Err(WebError::BadRequest(
                "the switchover was not confirmed".into(),
            ));
        }
        let (ok, text) = match state.ha(&ControlRequest::Switchover).await {
            None => (false, "this node is not part of an HA pair".to_string()),
            Some(Err(e)) => (false, format!("the HA driver did not answer: {e}")),
            Some(Ok(ControlReply::Ok(t))) => (true, t),
            Some(Ok(ControlReply::Error(t))) => (false, t),
            Some(Ok(other)) => (false, format!("unexpected answer: {other:?}")),
        };
        tracing::info!(account = %signed.session.account.name, ok, answer = %text, "switchover asked from the portal");
        let body = html! {
            h1 { "Switch over" }
            @if ok { p.notice role="status" #switchover-result { "Switching over: " (text) "." } }
            @else { p.error role="alert" #switchover-result { "Not switched over: " (text) } }
            p { a href="/portal/operations" { "Back to operations" } }
        };
        Ok(page("Switch over", Some(&signed), body).into_response())
    };
    match run.await {
        Ok(r) => r,
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
    let ha_status = state.ha(&ControlRequest::Status).await;
    let audit_file = c.audit.file(&c.index);
    let audit = {
        let path = audit_file.clone();
        tokio::task::spawn_blocking(move || crate::audit::recent(&path, LISTED_AUDIT))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
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
        (ha_section(&ha_status, true))
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
        h2 { "Recent activity" }
        p.muted { "The newest " (LISTED_AUDIT) " records of the audit trail (" code { (audit_file.display()) }
            "): associations accepted and refused, stores, queries, retrieves, sign-ins." }
        @match &audit {
            Err(e) => p.error { "The audit trail could not be read: " (e) },
            Ok(records) => {
                table #audit {
                    thead { tr {
                        th scope="col" { "When (UTC)" } th scope="col" { "Event" } th scope="col" { "Outcome" }
                        th scope="col" { "Who" } th scope="col" { "What" }
                    } }
                    tbody {
                        @for r in records {
                            tr {
                                td { (r.when.replace('T', " ").trim_end_matches('Z')) }
                                td { (r.event) }
                                td { @if r.outcome == "success" { span.ok { (r.outcome) } } @else { span.bad { (r.outcome) } } }
                                td { (r.participants.join(", ")) }
                                td { (r.description) }
                            }
                        }
                    }
                }
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
                    Some(ha) => { "pair member " code { (ha.node_id) } " (see High availability above)" }
                    None => "single node",
                }
            }
        }
    };
    Ok(page("Operations", Some(signed), body))
}
