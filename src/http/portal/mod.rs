//! The web portal: what the archive's people see in a browser (sign in, search, a study's
//! page with its thumbnails and the status of its copies, download). Server-rendered HTML
//! (maud, escaped by construction) with a little CSS and no script, embedded in the binary,
//! on the same server, index, query code and verified read path as DICOMweb.
//!
//! Every page needs a signed-in person (`Signed`); DICOMweb accepts the same session for
//! reads, so the thumbnails on a page load with the cookie.

pub mod download;
pub mod operations;
pub mod pages;
pub mod report;
pub mod session;
pub mod upload;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use super::{WebError, WebState};
use crate::index::account::Rights;
use session::{SESSION_COOKIE, Session};

/// Where the portal lives.
pub const ROOT: &str = "/portal";
/// A portal form (login, logout) is never larger than this.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The portal's routes, under `ROOT`.
pub fn routes() -> Router<Arc<WebState>> {
    let portal = Router::new()
        .route("/", get(|| async { Redirect::to("/portal/studies") }))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/studies", get(pages::studies))
        .route("/studies/{study}", get(pages::study))
        .route("/studies/{study}/verify", post(pages::verify))
        .route("/studies/{study}/delete", post(pages::delete))
        .route("/studies/{study}/download", get(download::study))
        .route(
            "/studies/{study}/series/{series}/download",
            get(download::series),
        )
        .route("/operations", get(operations::operations))
        .route(
            "/operations/switchover",
            get(operations::switchover_form).post(operations::switchover),
        )
        .route("/upload.js", get(upload::script))
        .route("/style.css", get(style))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        // An upload is read by its handler, within node.max_object_size.
        .route(
            "/upload",
            get(upload::form)
                .post(upload::store)
                .layer(DefaultBodyLimit::disable()),
        );
    Router::new().nest(ROOT, portal)
}

/// A request from a signed-in person. Without a live session a page answers with a redirect
/// to the login page (which comes back here after signing in).
pub struct Signed {
    pub session: Session,
    pub token: String,
}

impl Signed {
    pub fn rights(&self) -> Rights {
        self.session.account.rights
    }

    /// Refuse a form that did not come from this session (its CSRF token differs).
    pub fn check_form(&self, csrf: &str) -> Result<(), WebError> {
        if session::same_token(csrf, &self.session.csrf) {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "the form did not come from this session".into(),
            ))
        }
    }

    /// An administrator's form: from this session, by an admin (`what` says what it does).
    pub fn admin_form(&self, csrf: &str, what: &str) -> Result<(), WebError> {
        self.check_form(csrf)?;
        self.require(self.rights().admin, what)
    }

    /// Refuse unless the account has the right `what` names.
    pub fn require(&self, allowed: bool, what: &str) -> Result<(), WebError> {
        if allowed {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "account `{}` may not {what}",
                self.session.account.name
            )))
        }
    }
}

impl FromRequestParts<Arc<WebState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = cookie(&parts.headers, SESSION_COOKIE)
            && let Some(session) = state.sessions.get(&token, Instant::now())
        {
            return Ok(Signed { session, token });
        }
        let here = parts
            .extensions
            .get::<OriginalUri>()
            .map(|u| u.0.clone())
            .unwrap_or_else(|| parts.uri.clone());
        let next = here
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(ROOT)
            .to_string();
        let to = format!(
            "{ROOT}/login?next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        Err(Redirect::to(&to).into_response())
    }
}

/// The address a request came from (none when the server did not record it).
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<super::Conn>>()
                .map(|c| c.0.peer.ip()),
        ))
    }
}

/// The value of cookie `name` in the request, if sent (the first one).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the portal and DICOMweb paths, Secure
/// when the browser reached us over HTTPS (through a TLS proxy); `max_age` 0 removes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: Option<u64>,
    headers: &HeaderMap,
) -> HeaderValue {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if https {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are hex")
}

/// Whether a `next` target after login stays inside the portal or the viewer (no open
/// redirect).
pub fn safe_next(next: &str) -> bool {
    (next.starts_with("/portal/") || next.starts_with("/viewer?") || next.starts_with("/viewer/"))
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// A whole page: the header with the navigation (for a signed-in person), then `body`.
pub fn page(title: &str, who: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pacsd" }
                link rel="stylesheet" href="/portal/style.css";
            }
            body {
                header {
                    a.brand href="/portal/studies" { "pacsd" }
                    @if let Some(s) = who {
                        nav aria-label="Main" {
                            a href="/portal/studies" { "Studies" }
                            @if s.rights().upload { a href="/portal/upload" { "Upload" } }
                            @if s.rights().admin { a href="/portal/operations" { "Operations" } }
                        }
                        form.signout method="post" action="/portal/logout" {
                            span.who { (s.session.account.name) " · " (role_name(s.rights())) }
                            input type="hidden" name="csrf" value=(s.session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The portal's name for a set of rights.
pub fn role_name(r: Rights) -> &'static str {
    match (r.admin, r.upload) {
        (true, _) => "admin",
        (false, true) => "uploader",
        (false, false) => "viewer",
    }
}

/// An error as a page (the status stays the error's).
pub fn error_page(e: WebError, who: Option<&Signed>) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(%status, error = %e, "portal request failed");
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        p.error { (e.to_string()) }
        p { a href="/portal/studies" { "Back to the study list" } }
    };
    (status, page(title, who, body)).into_response()
}

const CSS: &str = include_str!("style.css");

async fn style() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; pacsd_session=abc ; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("pacsd_login=xyz"));
        assert_eq!(cookie(&h, "pacsd_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "pacsd_login").as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "pacsd"), None);
    }

    #[test]
    fn cookies_are_strict_http_only_and_secure_behind_https() {
        let plain = set_cookie("s", "v", None, &HeaderMap::new());
        assert_eq!(plain, "s=v; Path=/; HttpOnly; SameSite=Strict");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let secure = set_cookie("s", "", Some(0), &h);
        assert_eq!(
            secure,
            "s=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
        );
    }

    #[test]
    fn login_returns_only_inside_the_portal() {
        assert!(safe_next("/portal/studies?PatientID=1"));
        assert!(!safe_next("https://evil.example/"));
        assert!(!safe_next("//evil.example/portal/"));
        assert!(!safe_next("/portal/\\evil"));
        assert!(!safe_next("/dicom-web/studies"));
        assert!(!safe_next("/portal/a b"));
        assert!(safe_next("/viewer?StudyInstanceUIDs=1.2.3"));
        assert!(!safe_next("/viewerx"));
    }
}
