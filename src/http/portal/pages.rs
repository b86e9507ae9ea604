//! The portal's pages: sign in and out, the study list with its filters, a study's page.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use futures::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{LOGIN_COOKIE, SESSION_COOKIE, new_token, same_token};
use super::{Peer, Signed, cookie, error_page, page, safe_next, set_cookie};
use crate::audit::{Event, LOGIN, Outcome, Role, USER_AUTHENTICATION};
use crate::http::qido::find_by_params;
use crate::http::wado::stored;
use crate::http::{WebError, WebState, path_uid};
use crate::index::account::MAX_PASSWORD_LEN;
use crate::index::query::{Level, Order};

/// Studies on one page of the list.
pub const PAGE_SIZE: u64 = 25;
/// Longest value of one search field.
const MAX_FIELD: usize = 64;
/// Instances of a study whose copies are checked replica by replica on its page; a larger
/// study shows the repair queue only (checking is a HEAD per copy).
const MAX_CHECKED_INSTANCES: usize = 2000;
/// Structured reports of a study shown on its page, and the largest one read.
const MAX_REPORTS: usize = 10;
const MAX_REPORT_BYTES: u64 = 16 << 20;
/// Modalities of series without images (reports, key objects, presentation states,
/// documents): no thumbnail is asked for.
const NO_IMAGES: [&str; 4] = ["SR", "KO", "PR", "DOC"];
/// Copy checks in flight at once.
const CHECKS_IN_FLIGHT: usize = 32;

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

/// GET /portal/login: the form, bound to this browser by a pre-login cookie.
pub async fn login_form(
    State(state): State<Arc<WebState>>,
    Query(q): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    login_page(&state, &headers, q.next, None, StatusCode::OK).await
}

async fn login_page(
    state: &WebState,
    headers: &HeaderMap,
    next: Option<String>,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let binding = cookie(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64)
        .unwrap_or_else(new_token);
    let next = next.filter(|n| safe_next(n)).unwrap_or_default();
    let no_accounts = state
        .index
        .accounts()
        .await
        .map(|a| a.is_empty())
        .unwrap_or(false);
    let body = html! {
        form.login method="post" action="/portal/login" {
            h1 { "Sign in to pacsd" }
            @if let Some(p) = &problem { p.error role="alert" { (p) } }
            @if no_accounts {
                p.notice {
                    "This archive has no accounts yet. An operator creates the first one on the "
                    "node: " code { "pacsd user add NAME --rights admin" } " (the password is "
                    "read from standard input)."
                }
            }
            label { "Account" input type="text" name="name" autocomplete="username" required autofocus; }
            label { "Password" input type="password" name="password" autocomplete="current-password" required; }
            input type="hidden" name="csrf" value=(binding);
            input type="hidden" name="next" value=(next);
            button type="submit" { "Sign in" }
        }
    };
    let mut rsp = (status, page("Sign in", None, body)).into_response();
    rsp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &binding, Some(3600), headers),
    );
    rsp
}

/// POST /portal/login.
pub async fn login(
    State(state): State<Arc<WebState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let bound = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same_token(&c, &f.csrf));
    if !bound {
        return login_page(
            &state,
            &headers,
            f.next,
            Some("The sign-in form expired; please try again.".into()),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let now = Instant::now();
    if let Some(wait) = state.sessions.wait_before_login(&f.name, peer, now) {
        return login_page(
            &state,
            &headers,
            f.next,
            Some(format!(
                "Too many failed sign-ins. Try again in {} s.",
                wait.as_secs().max(1)
            )),
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    }
    let audit = |outcome, who: &str| {
        state.audit.record(
            Event::new(USER_AUTHENTICATION, Some(LOGIN), 'E', outcome)
                .describe("portal sign-in")
                .by(who, Some(peer.to_string()), Role::Source),
        );
    };
    let account = if f.name.len() > 64 || f.password.len() > MAX_PASSWORD_LEN {
        None
    } else {
        state.auth.check_password(&f.name, &f.password).await.ok()
    };
    let Some(account) = account else {
        state.sessions.failed(&f.name, peer, now);
        audit(Outcome::MinorFailure, &super::super::clip(&f.name));
        return login_page(
            &state,
            &headers,
            f.next,
            Some("Wrong account name or password.".into()),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    };
    state.sessions.succeeded(&f.name);
    audit(Outcome::Success, &account.name);
    let token = state.sessions.start(account, now);
    let to = f
        .next
        .filter(|n| safe_next(n))
        .unwrap_or_else(|| "/portal/studies".into());
    let mut rsp = Redirect::to(&to).into_response();
    let h = rsp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, None, &headers),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", Some(0), &headers),
    );
    rsp
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// POST /portal/logout.
pub async fn logout(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(e) = signed.check_form(&f.csrf) {
        return error_page(e, Some(&signed));
    }
    state.sessions.end(&signed.token);
    let mut rsp = Redirect::to("/portal/login").into_response();
    rsp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Some(0), &headers),
    );
    rsp
}

/// The study list's filters, as the form sends them.
#[derive(Deserialize, Default, Clone)]
pub struct Filters {
    #[serde(default)]
    patient_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    accession: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    modality: String,
    #[serde(default)]
    sort: String,
    page: Option<u64>,
    /// Set after a study was deleted: how many images went.
    deleted: Option<u64>,
}

/// `YYYY-MM-DD` (an HTML date field) as a DICOM date.
fn dicom_date(field: &str, v: &str) -> Result<String, WebError> {
    let d: String = v.chars().filter(|c| *c != '-').collect();
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        Ok(d)
    } else {
        Err(WebError::BadRequest(format!(
            "{field} `{}` is not a date (YYYY-MM-DD)",
            crate::http::clip(v)
        )))
    }
}

impl Filters {
    /// The filters as QIDO-RS parameters (the same matching as QIDO-RS and C-FIND). A patient
    /// name without a wildcard matches names that begin with it.
    pub fn to_params(&self) -> Result<String, WebError> {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        let fields = [
            ("patient ID", &self.patient_id),
            ("patient name", &self.name),
            ("accession number", &self.accession),
            ("modality", &self.modality),
        ];
        for (what, v) in fields {
            if v.chars().count() > MAX_FIELD {
                return Err(WebError::BadRequest(format!(
                    "the {what} is longer than {MAX_FIELD} characters"
                )));
            }
        }
        let id = self.patient_id.trim();
        if !id.is_empty() {
            q.append_pair("PatientID", id);
        }
        let name = self.name.trim();
        if !name.is_empty() {
            if name.contains(['*', '?']) {
                q.append_pair("PatientName", name);
            } else {
                q.append_pair("PatientName", &format!("{name}*"));
            }
        }
        let acc = self.accession.trim();
        if !acc.is_empty() {
            q.append_pair("AccessionNumber", acc);
        }
        let modality = self.modality.trim();
        if !modality.is_empty() {
            q.append_pair("ModalitiesInStudy", &modality.to_uppercase());
        }
        let (from, to) = (self.from.trim(), self.to.trim());
        if !from.is_empty() || !to.is_empty() {
            let from = if from.is_empty() {
                String::new()
            } else {
                dicom_date("from", from)?
            };
            let to = if to.is_empty() {
                String::new()
            } else {
                dicom_date("to", to)?
            };
            q.append_pair("StudyDate", &format!("{from}-{to}"));
        }
        let page = self.page.unwrap_or(1).clamp(1, 100_000);
        q.append_pair("limit", &PAGE_SIZE.to_string());
        q.append_pair("offset", &((page - 1) * PAGE_SIZE).to_string());
        Ok(q.finish())
    }

    fn order(&self) -> Order {
        if self.sort == "oldest" {
            Order::OldestStudyFirst
        } else {
            Order::NewestStudyFirst
        }
    }

    /// This search's URL on another page.
    fn url_for_page(&self, page: u64) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("patient_id", &self.patient_id),
            ("name", &self.name),
            ("accession", &self.accession),
            ("from", &self.from),
            ("to", &self.to),
            ("modality", &self.modality),
            ("sort", &self.sort),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("page", &page.to_string());
        format!("/portal/studies?{}", q.finish())
    }
}

/// A text attribute of a match (empty when absent).
pub fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// A person name for reading: `Doe^John` as `Doe, John`; other groups as given.
pub fn person(name: &str) -> String {
    let group = name.split('=').find(|g| !g.is_empty()).unwrap_or("");
    let parts: Vec<&str> = group.split('^').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => name.to_string(),
        [family] => family.to_string(),
        [family, rest @ ..] => format!("{family}, {}", rest.join(" ")),
    }
}

/// `YYYYMMDD` as `YYYY-MM-DD`.
pub fn date(d: &str) -> String {
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        d.to_string()
    }
}

/// GET /portal/studies: the filters and a page of matching studies, newest first.
pub async fn studies(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Query(f): Query<Filters>,
) -> Response {
    match studies_page(&state, &signed, &f).await {
        Ok(m) => m.into_response(),
        Err(e) => error_page(e, Some(&signed)),
    }
}

async fn studies_page(state: &WebState, signed: &Signed, f: &Filters) -> Result<Markup, WebError> {
    let params = f.to_params()?;
    let found = find_by_params(state, Level::Study, None, &params, f.order()).await?;
    let page_no = f.page.unwrap_or(1).max(1);
    let body = html! {
        h1 { "Studies" }
        @if let Some(n) = f.deleted {
            p.notice role="status" #delete-result {
                "Study deleted: " (n) @if n == 1 { " image" } @else { " images" } " removed."
            }
        }
        form.filters method="get" action="/portal/studies" role="search" {
            label { "Patient ID" input type="text" name="patient_id" value=(f.patient_id) maxlength="64"; }
            label { "Patient name" input type="text" name="name" value=(f.name) maxlength="64" placeholder="Doe^J (* and ?)"; }
            label { "Accession number" input type="text" name="accession" value=(f.accession) maxlength="64"; }
            label { "Study date from" input type="date" name="from" value=(f.from); }
            label { "to" input type="date" name="to" value=(f.to); }
            label { "Modality" input type="text" name="modality" value=(f.modality) maxlength="16" placeholder="CT, MR…"; }
            label { "Order"
                select name="sort" {
                    option value="newest" selected[f.sort != "oldest"] { "Newest first" }
                    option value="oldest" selected[f.sort == "oldest"] { "Oldest first" }
                }
            }
            button type="submit" { "Search" }
            a.button.secondary href="/portal/studies" { "Clear" }
        }
        @if found.matches.is_empty() {
            p.muted #no-studies { "No study matches." }
        } @else {
            table #studies {
                caption.muted { "Page " (page_no) }
                thead { tr {
                    th scope="col" { "Patient" }
                    th scope="col" { "Patient ID" }
                    th scope="col" { "Study date" }
                    th scope="col" { "Description" }
                    th scope="col" { "Accession" }
                    th scope="col" { "Modalities" }
                    th.num scope="col" { "Series" }
                    th.num scope="col" { "Images" }
                } }
                tbody {
                    @for m in &found.matches {
                        @let uid = text(m, tags::STUDY_INSTANCE_UID);
                        tr {
                            td { a href={ "/portal/studies/" (uid) } { (person(&text(m, tags::PATIENT_NAME))) } }
                            td { (text(m, tags::PATIENT_ID)) }
                            td { (date(&text(m, tags::STUDY_DATE))) }
                            td { (text(m, tags::STUDY_DESCRIPTION)) }
                            td { (text(m, tags::ACCESSION_NUMBER)) }
                            td { (text(m, tags::MODALITIES_IN_STUDY).replace('\\', ", ")) }
                            td.num { (text(m, tags::NUMBER_OF_STUDY_RELATED_SERIES)) }
                            td.num { (text(m, tags::NUMBER_OF_STUDY_RELATED_INSTANCES)) }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if page_no > 1 { a rel="prev" href=(f.url_for_page(page_no - 1)) { "← Previous" } }
            @if found.more { a rel="next" href=(f.url_for_page(page_no + 1)) { "Next →" } }
        }
    };
    Ok(page("Studies", Some(signed), body))
}

#[derive(Deserialize, Default)]
pub struct StudyQuery {
    /// Set after a verify: how many bad copies it queued.
    verified: Option<u64>,
}

/// POST /portal/studies/{study}/verify (admin): read every copy of the study on every
/// replica, compare it with its recorded size and checksum, and queue a repair for each bad
/// or missing one; then back to the study's page, which says how many.
pub async fn verify(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Path(study): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let run = async {
        signed.admin_form(&f.csrf, "verify studies (admin only)")?;
        let study = path_uid("Study Instance UID", &study)?.to_string();
        let mut bad = 0u64;
        for s in stored(&state, &study, None, None).await? {
            bad += crate::archive::verify(&state.storage, &state.index, &s.expected()).await?;
        }
        tracing::info!(study, bad, account = %signed.session.account.name, "study verified from the portal");
        Ok(Redirect::to(&format!(
            "/portal/studies/{study}?verified={bad}#image-status"
        ))
        .into_response())
    };
    match run.await {
        Ok(r) => r,
        Err(e) => error_page(e, Some(&signed)),
    }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    csrf: String,
    /// The "I understand" box; unticked, nothing is deleted.
    #[serde(default)]
    confirm: Option<String>,
}

/// POST /portal/studies/{study}/delete (admin): delete the whole study from the archive
/// (`archive::delete`), audited; then back to the study list, which says how many images went.
pub async fn delete(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    super::Peer(peer): super::Peer,
    Path(study): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    let run = async {
        signed.admin_form(&f.csrf, "delete studies (admin only)")?;
        let study = path_uid("Study Instance UID", &study)?;
        if f.confirm.as_deref() != Some("yes") {
            return Err(WebError::BadRequest(
                "tick “I understand” to delete the study".into(),
            ));
        }
        let name = &signed.session.account.name;
        let peer = peer.map(|ip| ip.to_string());
        let r =
            crate::http::delete::delete_recorded(&state, name, peer, &study, None, None).await?;
        Ok(Redirect::to(&format!("/portal/studies?deleted={}", r.instances)).into_response())
    };
    match run.await {
        Ok(r) => r,
        Err(e) => error_page(e, Some(&signed)),
    }
}

/// What the page says about one copy of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    Present,
    Missing,
    /// Missing or not, the repair queue holds it: the repair worker will write it.
    Queued,
    NotChecked,
}

/// GET /portal/studies/{study}: the study's facts, its series with thumbnails, and the
/// status of every copy on every replica.
pub async fn study(
    State(state): State<Arc<WebState>>,
    signed: Signed,
    Path(study): Path<String>,
    Query(q): Query<StudyQuery>,
) -> Response {
    match study_page(&state, &signed, &study, q.verified).await {
        Ok(m) => m.into_response(),
        Err(e) => error_page(e, Some(&signed)),
    }
}

async fn study_page(
    state: &WebState,
    signed: &Signed,
    study: &str,
    verified: Option<u64>,
) -> Result<Markup, WebError> {
    let study = path_uid("Study Instance UID", study)?.to_string();
    let by_uid = format!("StudyInstanceUID={study}");
    let facts = find_by_params(state, Level::Study, None, &by_uid, Order::Received).await?;
    let Some(s) = facts.matches.first() else {
        return Err(WebError::NotFound(format!(
            "no study {study} in this archive"
        )));
    };
    let series = find_by_params(
        state,
        Level::Series,
        Some(&study),
        "includefield=SeriesDate",
        Order::Received,
    )
    .await?;
    let instances = find_by_params(state, Level::Image, Some(&study), "", Order::Received).await?;
    let copies = copy_status(state, &study).await?;
    let reports = reports(state, &study, &instances.matches).await;
    let base = state
        .config
        .http
        .base_path
        .trim_end_matches('/')
        .to_string();
    let replicas: Vec<String> = state
        .storage
        .replicas()
        .iter()
        .map(|r| shown_location(&r.location))
        .collect();
    let health = state.storage.health();
    let now = Instant::now();
    let mut ordered = series.matches.clone();
    ordered.sort_by_key(|m| {
        text(m, tags::SERIES_NUMBER)
            .parse::<i64>()
            .unwrap_or(i64::MAX)
    });
    let body = html! {
        h1 { (person(&text(s, tags::PATIENT_NAME))) " — " (text(s, tags::STUDY_DESCRIPTION)) }
        dl.facts {
            dt { "Patient ID" } dd { (text(s, tags::PATIENT_ID)) }
            dt { "Birth date" } dd { (date(&text(s, tags::PATIENT_BIRTH_DATE))) }
            dt { "Sex" } dd { (text(s, tags::PATIENT_SEX)) }
            dt { "Study date" } dd { (date(&text(s, tags::STUDY_DATE))) " " (text(s, tags::STUDY_TIME)) }
            dt { "Accession number" } dd { (text(s, tags::ACCESSION_NUMBER)) }
            dt { "Referring physician" } dd { (person(&text(s, tags::REFERRING_PHYSICIAN_NAME))) }
            dt { "Modalities" } dd { (text(s, tags::MODALITIES_IN_STUDY).replace('\\', ", ")) }
            dt { "Series / images" } dd {
                (text(s, tags::NUMBER_OF_STUDY_RELATED_SERIES)) " / "
                (text(s, tags::NUMBER_OF_STUDY_RELATED_INSTANCES))
            }
            dt { "Study Instance UID" } dd { code { (study) } }
        }
        div.actions {
            @if state.config.http.viewer_dir.is_some() {
                a.button href=(crate::http::viewer::study_link(&study)) target="_blank" rel="noopener" { "Open in viewer" }
            }
            a.button href={ "/portal/studies/" (study) "/download" } download { "Download study (ZIP)" }
            a.button.secondary href="/portal/studies" { "Back to the list" }
        }
        @if !reports.is_empty() {
            h2 { "Reports" }
            @for (sop, r) in &reports {
                section.card.report data-sop=(sop) {
                    @match r {
                        Ok(r) => {
                            h3 { (if r.title.is_empty() { "Structured report" } else { &r.title }) }
                            @if !r.status.is_empty() { p.muted { (r.status) } }
                            (report_lines(&r.content))
                            @if r.cut { p.notice { "The report is longer or deeper than shown here." } }
                        }
                        Err(e) => { p.error { "This report could not be read: " (e) } }
                    }
                }
            }
        }
        h2 { "Series" }
        div.series {
            @for se in &ordered {
                @let se_uid = text(se, tags::SERIES_INSTANCE_UID);
                section.card aria-label={ "Series " (text(se, tags::SERIES_NUMBER)) } {
                    @if NO_IMAGES.contains(&text(se, tags::MODALITY).as_str()) {
                        div.noimage { "No images (" (text(se, tags::MODALITY)) ")" }
                    } @else {
                        img src={ (base) "/studies/" (study) "/series/" (se_uid) "/thumbnail" }
                            alt={ "First image of series " (text(se, tags::SERIES_NUMBER)) }
                            width="200" height="200" loading="lazy";
                    }
                    p {
                        strong { (text(se, tags::SERIES_NUMBER)) " " (text(se, tags::MODALITY)) }
                        " " (text(se, tags::SERIES_DESCRIPTION))
                        br;
                        span.muted { (text(se, tags::NUMBER_OF_SERIES_RELATED_INSTANCES)) " images" }
                    }
                    a href={ "/portal/studies/" (study) "/series/" (se_uid) "/download" } download { "Download series" }
                    details {
                        summary { "Images" }
                        div.thumbs {
                            @for i in instances.matches.iter().filter(|i| text(i, tags::SERIES_INSTANCE_UID) == se_uid) {
                                @let sop = text(i, tags::SOP_INSTANCE_UID);
                                figure {
                                    img src={ (base) "/studies/" (study) "/series/" (se_uid) "/instances/" (sop) "/thumbnail" }
                                        alt={ "Image " (text(i, tags::INSTANCE_NUMBER)) } width="96" height="96" loading="lazy";
                                    figcaption { "#" (text(i, tags::INSTANCE_NUMBER)) " " (text(i, tags::ROWS)) "×" (text(i, tags::COLUMNS)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if instances.more {
            p.notice { "This study has more images than one page shows; thumbnails of the first "
                (instances.matches.len()) " are listed." }
        }
        h2 #image-status { "Image status" }
        p.muted {
            "Each copy is looked for on each replica now; “queued” copies are in the repair "
            "queue and will be written by the repair worker. A verify also reads every copy and "
            "compares it with its recorded size and checksum."
        }
        @if let Some(bad) = verified {
            p.notice role="status" #verify-result {
                "Verified: " (bad) " bad or missing copies queued for repair."
            }
        }
        @if signed.rights().admin {
            form method="post" action={ "/portal/studies/" (study) "/verify" } {
                input type="hidden" name="csrf" value=(signed.session.csrf);
                button type="submit" #verify { "Verify this study" }
            }
        }
        table #replicas {
            thead { tr {
                th scope="col" { "Replica" } th scope="col" { "Health" }
                th.num scope="col" { "Present" } th.num scope="col" { "Missing" } th.num scope="col" { "Queued for repair" }
            } }
            tbody {
                @for (r, loc) in replicas.iter().enumerate() {
                    @let h = health.get(r);
                    @let up = h.is_some_and(|h| h.is_up(now));
                    tr data-replica=(r) {
                        td { code { (loc) } }
                        td { @if up { span.ok { "up" } } @else { span.bad { "in backoff" } } }
                        td.num data-count="present" { (copies.count(r, CopyState::Present)) }
                        td.num data-count="missing" { (copies.count(r, CopyState::Missing)) }
                        td.num data-count="queued" { (copies.count(r, CopyState::Queued)) }
                    }
                }
            }
        }
        @if copies.unchecked > 0 {
            p.notice { (copies.unchecked) " images were not checked (the study is larger than "
                (MAX_CHECKED_INSTANCES) " images): their copies show only as queued or not." }
        }
        @if copies.rows.iter().any(|(_, _, c)| c.iter().any(|x| *x != CopyState::Present)) {
            h2 { "Images without a copy on every replica" }
            table #incomplete {
                thead { tr { th scope="col" { "SOP Instance UID" } @for loc in &replicas { th scope="col" { code { (loc) } } } } }
                tbody {
                    @for (sop, _, c) in copies.rows.iter().filter(|(_, _, c)| c.iter().any(|x| *x != CopyState::Present)) {
                        tr {
                            td { code { (sop) } }
                            @for x in c {
                                td { @match x {
                                    CopyState::Present => span.ok { "present" },
                                    CopyState::Missing => span.bad { "missing" },
                                    CopyState::Queued => span.queued { "queued" },
                                    CopyState::NotChecked => span.muted { "not checked" },
                                } }
                            }
                        }
                    }
                }
            }
        }
        @if signed.rights().admin {
            h2 #delete { "Delete" }
            form.delete method="post" action={ "/portal/studies/" (study) "/delete" } {
                input type="hidden" name="csrf" value=(signed.session.csrf);
                p.muted { "Deleting removes every image of this study from the index and from "
                    "every replica. It cannot be undone." }
                label { input type="checkbox" name="confirm" value="yes" required; " I understand" }
                button type="submit" #delete-study { "Delete this study" }
            }
        }
    };
    Ok(page("Study", Some(signed), body))
}

/// A replica's location as the pages show it: without its query, which may carry
/// credentials (`s3://bucket/p?secret_access_key=...`).
pub fn shown_location(location: &str) -> String {
    match location.split_once('?') {
        Some((before, _)) => format!("{before}?…"),
        None => location.to_string(),
    }
}

/// The content lines of a report, nested.
fn report_lines(lines: &[super::report::Line]) -> Markup {
    html! {
        ul {
            @for l in lines {
                li {
                    @if !l.label.is_empty() { strong { (l.label) } @if !l.value.is_empty() { ": " } }
                    (l.value)
                    @if !l.children.is_empty() { (report_lines(&l.children)) }
                }
            }
        }
    }
}

/// Why a structured report is not shown (said on the study page in its place).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("not in the index")]
    NotIndexed,
    #[error("larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Read(#[from] WebError),
    #[error("{0}")]
    Decode(#[from] crate::dataset::DataSetError),
}

/// The structured reports among a study's instances (at most `MAX_REPORTS`), read through the
/// verified path and turned into text.
async fn reports(
    state: &WebState,
    study: &str,
    instances: &[InMemDicomObject],
) -> Vec<(String, Result<super::report::Report, ReportError>)> {
    let mut out = Vec::new();
    for i in instances
        .iter()
        .filter(|i| super::report::is_sr(&text(i, tags::SOP_CLASS_UID)))
        .take(MAX_REPORTS)
    {
        let sop = text(i, tags::SOP_INSTANCE_UID);
        let series = text(i, tags::SERIES_INSTANCE_UID);
        let read = async {
            let s = stored(state, study, Some(&series), Some(&sop)).await?;
            let s = s.first().ok_or(ReportError::NotIndexed)?;
            if s.size > MAX_REPORT_BYTES {
                return Err(ReportError::TooLarge);
            }
            let bytes = crate::http::wado::read(state, s).await?;
            let doc = crate::part10::open(&bytes, MAX_REPORT_BYTES)?;
            Ok(super::report::report(&doc))
        };
        let r = read.await;
        out.push((sop, r));
    }
    out
}

/// The copies of a study's instances, replica by replica.
pub struct Copies {
    /// (SOP Instance UID, series, one status per replica).
    pub rows: Vec<(String, String, Vec<CopyState>)>,
    pub unchecked: usize,
}

impl Copies {
    fn count(&self, replica: usize, what: CopyState) -> usize {
        self.rows
            .iter()
            .filter(|(_, _, c)| c[replica] == what)
            .count()
    }
}

/// Look for every copy of the study's instances now (at most `MAX_CHECKED_INSTANCES`), and
/// mark the ones the repair queue holds.
pub async fn copy_status(state: &WebState, study: &str) -> Result<Copies, WebError> {
    let items = stored(state, study, None, None).await?;
    let queued = state.index.repairs_of_study(study).await?;
    let replicas: Vec<String> = state
        .storage
        .replicas()
        .iter()
        .map(|r| r.location.clone())
        .collect();
    let n = replicas.len();
    let unchecked = items.len().saturating_sub(MAX_CHECKED_INSTANCES);
    let mut wanted: Vec<(usize, usize, String)> = Vec::with_capacity(items.len() * n);
    for (k, s) in items.iter().enumerate() {
        for r in 0..n {
            wanted.push((k, r, s.storage_key.clone()));
        }
    }
    let checks = futures::stream::iter(wanted)
        .map(|(k, r, key)| async move {
            let present = if k < MAX_CHECKED_INSTANCES {
                Some(state.storage.exists_on(r, &key).await)
            } else {
                None
            };
            (k, r, present)
        })
        .buffer_unordered(CHECKS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut rows: Vec<(String, String, Vec<CopyState>)> = items
        .iter()
        .map(|s| {
            (
                s.sop_instance_uid.clone(),
                s.series_instance_uid.clone(),
                vec![CopyState::NotChecked; n],
            )
        })
        .collect();
    for (k, r, present) in checks {
        rows[k].2[r] = match present {
            Some(true) => CopyState::Present,
            Some(false) => CopyState::Missing,
            None => CopyState::NotChecked,
        };
    }
    for q in &queued {
        if let (Some(k), Some(r)) = (
            items.iter().position(|s| s.storage_key == q.storage_key),
            replicas.iter().position(|l| *l == q.replica),
        ) && rows[k].2[r] != CopyState::Present
        {
            rows[k].2[r] = CopyState::Queued;
        }
    }
    Ok(Copies { rows, unchecked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_the_qido_parameters_of_the_same_search() {
        let f = Filters {
            patient_id: " 12345 ".into(),
            name: "doe".into(),
            from: "2024-01-31".into(),
            modality: "ct".into(),
            page: Some(3),
            ..Filters::default()
        };
        assert_eq!(
            f.to_params().unwrap(),
            "PatientID=12345&PatientName=doe*&ModalitiesInStudy=CT&StudyDate=20240131-&limit=25&offset=50"
        );
        let wild = Filters {
            name: "D?e^J*".into(),
            to: "2025-12-01".into(),
            ..Filters::default()
        };
        assert_eq!(
            wild.to_params().unwrap(),
            "PatientName=D%3Fe%5EJ*&StudyDate=-20251201&limit=25&offset=0"
        );
        let bad = Filters {
            from: "yesterday".into(),
            ..Filters::default()
        };
        assert!(bad.to_params().is_err());
        let long = Filters {
            name: "x".repeat(65),
            ..Filters::default()
        };
        assert!(long.to_params().is_err());
    }

    #[test]
    fn replica_locations_are_shown_without_their_credentials() {
        assert_eq!(shown_location("/var/pacs/r1"), "/var/pacs/r1");
        assert_eq!(
            shown_location("s3://pacs/r2?endpoint=http://x&secret_access_key=hunter2"),
            "s3://pacs/r2?…"
        );
    }

    #[test]
    fn names_and_dates_read_as_people_write_them() {
        assert_eq!(person("Doe^John^^Dr"), "Doe, John Dr");
        assert_eq!(person("Yamada^Tarou=山田^太郎"), "Yamada, Tarou");
        assert_eq!(person("=山田^太郎"), "山田, 太郎");
        assert_eq!(person("Anonymous"), "Anonymous");
        assert_eq!(date("20240131"), "2024-01-31");
        assert_eq!(date("2024"), "2024");
    }
}
