//! The OHIF viewer, served from the node itself when `http.viewer_dir` names its prebuilt
//! `dist/` (npm's `@ohif/app`, fetched by `scripts/ohif.sh`; nothing is built): the portal's
//! "Open in viewer" opens `/viewer?StudyInstanceUIDs=...` on the same origin, so the viewer
//! reads DICOMweb with the portal's session cookie and needs no token or CORS.
//!
//! OHIF's prebuilt bundle loads its files from the root (`/app.bundle.*.js`, `/assets/...`;
//! its public path is compiled in), so the viewer is served as:
//! - `/viewer`, `/viewer/...`: its page, for a signed-in person (else the portal's login);
//! - `/app-config.js`: generated here, one data source pointing at this node's DICOMweb;
//! - any other path no route of the node answers: a file of the dist directory, if there is
//!   one (read right needed, which the session cookie carries; `ServeDir` keeps requests
//!   inside the directory).

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::services::ServeDir;

use super::portal::Signed;
use super::{WebError, WebState, origin_of};

/// The path of the viewer's page; the portal links to it.
pub const ROOT: &str = "/viewer";

/// The viewer's routes, and its files as the fallback of every other path. `dir` has been
/// checked to hold an `index.html` (`Config::validate`).
pub fn routes(dir: &Path) -> Router<Arc<WebState>> {
    let not_found = || async { WebError::NotFound("no such resource".into()) };
    Router::new()
        .route(ROOT, get(page))
        .route(&format!("{ROOT}/{{*rest}}"), get(page))
        .route("/app-config.js", get(app_config))
        .fallback_service(
            ServeDir::new(dir)
                .append_index_html_on_directories(false)
                .fallback(axum::handler::HandlerWithoutStateExt::into_service(
                    not_found,
                )),
        )
}

/// The link that opens `study` in the viewer.
pub fn study_link(study: &str) -> String {
    format!("{ROOT}?StudyInstanceUIDs={study}")
}

/// The viewer's page (its `index.html`; OHIF routes inside it), for a signed-in person.
async fn page(_: Signed, State(state): State<Arc<WebState>>) -> Result<Response, WebError> {
    let dir = state
        .config
        .http
        .viewer_dir
        .clone()
        .ok_or_else(|| WebError::NotFound("no viewer is configured".into()))?;
    let html = tokio::fs::read(dir.join("index.html"))
        .await
        .map_err(|e| WebError::Internal(format!("the viewer's index.html: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response())
}

/// OHIF's configuration: one DICOMweb data source, this node at the origin the browser used.
async fn app_config(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let root = format!(
        "{}{}",
        origin_of(&headers),
        state.config.http.base_path.trim_end_matches('/')
    );
    let mut rsp = config_script(&root).into_response();
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    rsp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

/// OHIF's configuration, with `__DICOMWEB_ROOT__` where the DICOMweb root URL goes.
const OHIF_CONFIG: &str = include_str!("ohif-app-config.js");

/// The `window.config` script for a DICOMweb root URL (`origin_of` allows no quote or
/// backslash in it, so it is safe inside the string literal; checked again here).
fn config_script(root: &str) -> String {
    assert!(
        !root.contains(['\'', '\\', '\n', '<']),
        "origin_of keeps quotes out of URLs"
    );
    OHIF_CONFIG.replace("__DICOMWEB_ROOT__", root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_points_every_root_at_the_node() {
        let s = config_script("http://pacs.example:8104/dicom-web");
        assert!(s.contains("qidoRoot: 'http://pacs.example:8104/dicom-web',"));
        assert!(s.contains("wadoRoot: 'http://pacs.example:8104/dicom-web',"));
        assert!(s.contains("wadoUriRoot: 'http://pacs.example:8104/dicom-web/wado',"));
        assert!(s.contains("\nwindow.config = {"));
        assert!(!s.contains("__DICOMWEB_ROOT__"));
    }

    #[test]
    fn a_study_link_opens_the_viewer_on_that_study() {
        assert_eq!(
            study_link("1.2.840.1"),
            "/viewer?StudyInstanceUIDs=1.2.840.1"
        );
    }
}
