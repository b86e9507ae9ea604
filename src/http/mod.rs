//! The HTTP side: DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS, WADO-URI) on the same index,
//! storage and store path as the DIMSE services, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Layers, outermost first: tracing, CORS (so that preflights and error responses carry its
//! headers), authentication (`auth`), then the routes. Every failure is a `WebError`, which is
//! the one place an error becomes an HTTP status.

pub mod auth;
pub mod delete;
pub mod multipart;
pub mod ops;
pub mod portal;
pub mod qido;
pub mod stow;
pub mod viewer;
pub mod wado;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::archive::store::Store;
use crate::config::Config;
use crate::index::Index;
use crate::net::Shutdown;
use crate::storage::{Storage, Uid};

/// Everything a request handler reaches.
pub struct WebState {
    pub config: Arc<Config>,
    pub index: Index,
    pub storage: Arc<Storage>,
    pub store: Arc<Store>,
    pub auth: auth::Authenticator,
    pub metadata: wado::MetadataCache,
    pub metrics: Arc<ops::Metrics>,
    pub audit: crate::audit::Audit,
    /// The portal's signed-in people (also accepted for DICOMweb reads).
    pub sessions: portal::session::Sessions,
}

impl WebState {
    pub fn new(
        config: Arc<Config>,
        index: Index,
        storage: Arc<Storage>,
        store: Arc<Store>,
        metrics: Arc<ops::Metrics>,
        audit: crate::audit::Audit,
    ) -> WebState {
        WebState {
            audit,
            auth: auth::Authenticator::new(index.clone(), config.http.require_auth),
            config,
            index,
            storage,
            store,
            metadata: wado::MetadataCache::new(wado::METADATA_CACHE_BYTES),
            metrics,
            sessions: portal::session::Sessions::default(),
        }
    }

    /// Ask this node's HA driver over its control socket (as `pacsd ha` does); `None` for a
    /// single node.
    pub async fn ha(
        &self,
        req: &crate::ha::driver::ControlRequest,
    ) -> Option<Result<crate::ha::driver::ControlReply, crate::ha::driver::ControlError>> {
        let ha = self.config.ha.as_ref()?;
        let path = crate::ha::driver::control_path(&self.config, ha);
        Some(crate::ha::driver::control(&path, req).await)
    }
}

/// Why a request failed; `into_response` is the single mapping to a status and body.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::index::IndexError> for WebError {
    fn from(e: crate::index::IndexError) -> Self {
        WebError::Internal(format!("index: {e}"))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            warn!(%status, error = %self, "HTTP request failed");
        }
        let mut rsp = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            rsp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pacsd\", Bearer realm=\"pacsd\""),
            );
        }
        rsp
    }
}

/// A UID from a request path or parameter, checked before it reaches SQL or a storage key.
pub fn path_uid(what: &str, raw: &str) -> Result<Uid, WebError> {
    Uid::parse(raw).map_err(|e| WebError::BadRequest(format!("{what} `{}`: {e}", clip(raw))))
}

/// What a DICOMweb path names (PS3.18 8.2 and 10.6): a study, a series in it, an instance in
/// that; each UID checked (`path_uid`) before it goes further. All three are absent in the
/// searches at the root (`/studies`, `/series`, `/instances`).
#[derive(Debug, Default, Clone)]
pub struct Target {
    pub study: Option<Uid>,
    pub series: Option<Uid>,
    pub instance: Option<Uid>,
}

impl Target {
    pub fn parse(
        study: Option<&str>,
        series: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Target, WebError> {
        let check = |what, raw: Option<&str>| raw.map(|r| path_uid(what, r)).transpose();
        Ok(Target {
            study: check("Study Instance UID", study)?,
            series: check("Series Instance UID", series)?,
            instance: check("SOP Instance UID", instance)?,
        })
    }

    /// The study UID, which every path below `/studies/{study}` names.
    pub fn study_uid(&self) -> Result<&Uid, WebError> {
        self.study
            .as_ref()
            .ok_or_else(|| WebError::BadRequest("the path names no study".into()))
    }

    pub fn study(&self) -> Result<&str, WebError> {
        self.study_uid().map(Uid::as_str)
    }

    pub fn series(&self) -> Option<&str> {
        self.series.as_ref().map(Uid::as_str)
    }

    pub fn instance(&self) -> Option<&str> {
        self.instance.as_ref().map(Uid::as_str)
    }
}

/// The path parameters `{study}`, `{series}` and `{instance}` of a route, checked.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Target {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::{OptionalFromRequestParts, Path};
        let params: std::collections::HashMap<String, String> =
            <Path<_> as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
                .await
                .map_err(|e| WebError::BadRequest(e.body_text()))?
                .map(|Path(p)| p)
                .unwrap_or_default();
        let get = |k: &str| params.get(k).map(String::as_str);
        Target::parse(get("study"), get("series"), get("instance"))
    }
}

/// At most 64 characters of an untrusted value, for messages.
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// The scheme and authority this request was addressed to, for absolute URLs in responses
/// (BulkDataURI, RetrieveURL): X-Forwarded-Proto/Host from a reverse proxy, else Host.
pub fn origin_of(headers: &HeaderMap) -> String {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let valid_host = |h: &String| {
        h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    };
    let proto = text("x-forwarded-proto")
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| "http".to_string());
    let host = text("x-forwarded-host")
        .filter(valid_host)
        .or_else(|| text("host").filter(valid_host))
        .unwrap_or_else(|| "localhost".to_string());
    format!("{proto}://{host}")
}

/// Both ends of an HTTP connection (for the audit trail and `fill_host_port`).
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Reached over HTTPS on this node's own TLS.
    pub tls: bool,
}

/// Middleware: an upload refused (4xx/5xx) may leave its body unread on the connection, which
/// then cannot carry another request: say `Connection: close` so the client does not reuse it.
async fn close_after_refused_upload(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // HTTP/2 has no Connection header: a stream's body is reset on its own.
    let upload = req.method() == Method::POST && req.version() < axum::http::Version::HTTP_2;
    let mut rsp = next.run(req).await;
    if upload && (rsp.status().is_client_error() || rsp.status().is_server_error()) {
        rsp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    rsp
}

/// Middleware: what a request says about where it was sent, made complete for the absolute
/// URLs built from it (BulkDataURI, RetrieveURL) and for cookies:
/// - an HTTP/2 request names its authority in the URI, not in Host: it becomes Host;
/// - a Host that names this node's own IP address without a port (some clients,
///   dicomweb-client among them, leave the port out) gets the port the request arrived on; a
///   name without a port is left alone: it is what a reverse proxy in front sends;
/// - a request that came over this node's own TLS is `https` whatever X-Forwarded-Proto it
///   carries (a proxy's header is believed only on a plain connection, where a proxy sits).
async fn fill_origin(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let conn = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Conn>>()
        .map(|c| c.0);
    if let Some(conn) = conn {
        let default_port = if conn.tls { 443 } else { 80 };
        if let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            && host.parse::<std::net::IpAddr>().ok() == Some(conn.local.ip())
            && conn.local.port() != default_port
            && let Ok(v) = HeaderValue::from_str(&conn.local.to_string())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        if conn.tls {
            req.headers_mut()
                .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        }
    }
    next.run(req).await
}

/// Middleware: the audit trail of reads (PS3.15 A.5.3): a QIDO-RS search is a Query, a
/// WADO-RS retrieve or metadata request of a study, series or instance (and WADO-URI) is
/// DICOM Instances Transferred (Read), each with the account, its address and the study.
/// Frames, rendered images, thumbnails and bulk data are not recorded one by one: a viewer
/// asks for hundreds of them after the metadata request that is recorded.
async fn audit_reads(
    State(state): State<Arc<WebState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::audit::{Event, INSTANCES_TRANSFERRED, Object, Outcome, QUERY, Role, Subject};
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let account = req
        .extensions()
        .get::<crate::index::account::Account>()
        .map(|a| a.name.clone());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Conn>>()
        .map(|c| c.0.peer.ip().to_string());
    let uri = req.uri().clone();
    let is_get = req.method() == Method::GET;
    let rsp = next.run(req).await;
    let last = route.rsplit('/').next().unwrap_or("");
    let recorded = is_get
        && rsp.status().is_success()
        && !["frames", "{frames}", "rendered", "thumbnail", "{tag}"].contains(&last);
    let (Some(account), true) = (account, recorded) else {
        return rsp;
    };
    let study = uri
        .path()
        .split("/studies/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(str::to_string)
        .or_else(|| {
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "studyUID")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|s| Uid::parse(s).is_ok());
    let search =
        matches!(last, "studies" | "series" | "instances") && !route.ends_with("/{instance}");
    let mut subject = Subject::default();
    if let Some(st) = &study {
        subject.studies.push(st.clone());
        if let Ok(p) = state.index.patients_of(vec![st.clone()]).await
            && let Some((id, name)) = p.into_iter().next()
        {
            subject.patient_id = Some(id);
            subject.patient_name = name;
        }
    }
    let event = if search {
        Event::new(QUERY, None, 'E', Outcome::Success).on(Object::Query {
            sop_class: "QIDO-RS".into(),
            description: clip_long(&format!("{}?{}", uri.path(), uri.query().unwrap_or(""))),
        })
    } else {
        Event::new(INSTANCES_TRANSFERRED, None, 'R', Outcome::Success)
            .describe(clip_long(&format!("{} {}", route, uri.path())))
    };
    state
        .audit
        .record(event.about(&subject).by(&account, peer, Role::Destination));
    rsp
}

/// At most 1024 characters of a request line, for the audit trail.
fn clip_long(s: &str) -> String {
    s.chars().take(1024).collect()
}

/// The DICOMweb routes, relative to `http.base_path`. A study, a series and an instance
/// each answer retrieval, metadata, rendered, thumbnail and DELETE (one handler each for
/// the three levels, `Target` tells them apart); the QIDO searches end in the level's name.
fn dicomweb_routes() -> Router<Arc<WebState>> {
    use axum::routing::post;
    const STUDY: &str = "/studies/{study}";
    const SERIES: &str = "/studies/{study}/series/{series}";
    const INSTANCE: &str = "/studies/{study}/series/{series}/instances/{instance}";
    let mut r = Router::new()
        .route("/", post(stow::store))
        .route("/studies", get(qido::search_resource).post(stow::store))
        .route(STUDY, post(stow::store_in_study));
    for search in [
        "/series",
        "/instances",
        "/studies/{study}/series",
        "/studies/{study}/instances",
        "/studies/{study}/series/{series}/instances",
    ] {
        r = r.route(search, get(qido::search_resource));
    }
    for level in [STUDY, SERIES, INSTANCE] {
        r = r
            .route(level, get(wado::get_objects).delete(delete::delete))
            .route(&format!("{level}/metadata"), get(wado::get_metadata))
            .route(&format!("{level}/rendered"), get(wado::get_rendered))
            .route(&format!("{level}/thumbnail"), get(wado::get_thumbnail));
    }
    r.route(&format!("{INSTANCE}/frames/{{frames}}"), get(wado::frames))
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/rendered"),
            get(wado::frame_rendered),
        )
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/thumbnail"),
            get(wado::frame_rendered),
        )
        .route(
            &format!("{INSTANCE}/bulkdata/{{*path}}"),
            get(wado::bulkdata),
        )
        .route("/wado", get(wado::wado_uri))
}

/// The whole application: DICOMweb under the base path, operations at the root.
pub fn router(state: Arc<WebState>) -> Router {
    let base = state.config.http.base_path.clone();
    let dicomweb = dicomweb_routes();
    let mut app = Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .merge(portal::routes());
    app = if base == "/" {
        app.merge(dicomweb)
    } else {
        // A browser pointed at the node finds the portal.
        app.route(
            "/",
            get(|| async { axum::response::Redirect::to("/portal/studies") }),
        )
        .nest(&base, dicomweb)
    };
    // The viewer, when configured, answers the paths nothing else does (its files).
    let app = match &state.config.http.viewer_dir {
        Some(dir) => app.merge(viewer::routes(dir)),
        None => app.fallback(|| async { WebError::NotFound("no such resource".into()) }),
    };
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_reads,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::count_request,
        ))
        .layer(axum::middleware::from_fn(fill_origin))
        .layer(axum::middleware::from_fn(close_after_refused_upload))
        .layer(DefaultBodyLimit::disable());
    let app = match cors(&state.config) {
        Some(c) => app.layer(c),
        None => app,
    };
    app.layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// CORS for the configured origins (none: no CORS headers at all).
fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = &config.http.allowed_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS, Method::HEAD])
            .allow_headers([
                header::AUTHORIZATION,
                header::ACCEPT,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("x-requested-with"),
            ])
            .expose_headers([
                header::CONTENT_TYPE,
                header::WARNING,
                header::CONTENT_LENGTH,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// HTTP connections open at once; more wait in the kernel's backlog until one closes.
const MAX_CONNECTIONS: usize = 512;
/// HTTP connections from one address at once; more are closed at once, so one host cannot
/// take every connection (the DICOM listener's `max_associations_per_address` rule).
const MAX_CONNECTIONS_PER_ADDRESS: usize = 128;
/// A request head (line and headers) must arrive within this time, and an idle keep-alive
/// connection is closed after it: a client that opens connections and drips bytes cannot
/// hold them.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A TLS handshake must finish within this time (a client that connects and says nothing
/// cannot hold a connection slot).
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP/2 streams (requests) at once on one connection; a browser opens about a hundred.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest HTTP/2 request header block (hyper's default is 16 MiB; HTTP/1.1 heads are held
/// to about 400 KB by hyper's read buffer).
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// An idle HTTP/2 connection is pinged this often and closed when a ping goes unanswered
/// for `HEADER_READ_TIMEOUT`.
const H2_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve HTTP on `listener` until `shutdown`; requests in progress are given
/// `timeouts.shutdown_secs` to finish. With `tls`, HTTPS: HTTP/2 or HTTP/1.1 as ALPN
/// agrees; without it HTTP/1.1 or HTTP/2 with prior knowledge (h2c). Connections are
/// bounded in number (overall and per address), in the time their TLS handshake and request
/// heads may take, and in streams and header sizes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<WebState>,
    mut shutdown: Shutdown,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use std::collections::HashMap;
    use tower::ServiceExt;
    let addr = listener.local_addr().ok();
    let grace = state.config.timeouts.shutdown();
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    info!(addr = ?addr, https = tls.is_some(), "HTTP (DICOMweb) listening");
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: pause instead of spinning.
                    warn!(error = %e, "HTTP accept failed; pausing");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        {
            let mut counts = per_address.lock().expect("per-address counts");
            let n = counts.entry(peer.ip()).or_default();
            if *n >= MAX_CONNECTIONS_PER_ADDRESS {
                warn!(%peer, "HTTP connection refused: too many from this address");
                continue;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            local: stream.local_addr().unwrap_or(peer),
            tls: tls.is_some(),
        };
        let service =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(conn));
                    req
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let (per_address, builder, graceful, tls) = (
            per_address.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let c = builder.serve_connection(TokioIo::new(stream), service);
                    graceful.watch(c.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            let c = builder.serve_connection(TokioIo::new(stream), service);
                            graceful.watch(c.into_owned()).await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}").into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
            let mut counts = per_address.lock().expect("per-address counts");
            if let Some(n) = counts.get_mut(&peer.ip()) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&peer.ip());
                }
            }
        });
    }
    drop(listener);
    // Requests in progress finish; a client streaming a large retrieve or keeping a
    // connection open does not hold the node past the grace.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            warn!("HTTP requests still open after the shutdown grace; closed");
        }
    }
}
