//! Who is calling: HTTP Basic (account name and password, argon2id) or a bearer token
//! (`pacsd account token`), checked against the accounts in the index; and what they may do
//! (read for GET, upload for POST, admin for `/metrics`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::warn;

use super::{WebError, WebState};
use crate::index::Index;
use crate::index::account::{Account, Rights, password_matches};

/// A password checked once is not hashed again for this long (argon2 takes tens of
/// milliseconds and a viewer sends hundreds of requests per study).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Entries in the verified-credentials cache; it is emptied when full.
const CACHE_ENTRIES: usize = 4096;
/// argon2 checks running at once (19 MiB each): failed guesses cannot take every core.
const CONCURRENT_HASHES: usize = 2;

/// Checks credentials against the index.
pub struct Authenticator {
    index: Index,
    required: bool,
    /// SHA-256 of verified Basic credentials -> the account and when it was verified.
    verified: Mutex<HashMap<[u8; 32], (Account, Instant)>>,
    hashing: Semaphore,
}

/// The caller when `http.require_auth` is false.
fn anonymous() -> Account {
    Account {
        name: "anonymous".into(),
        rights: Rights::ALL,
    }
}

impl Authenticator {
    pub fn new(index: Index, required: bool) -> Authenticator {
        Authenticator {
            index,
            required,
            verified: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(CONCURRENT_HASHES),
        }
    }

    /// The account behind this Authorization header value (None: no header).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Account, WebError> {
        let Some(value) = authorization else {
            return if self.required {
                Err(WebError::Unauthorized)
            } else {
                Ok(anonymous())
            };
        };
        let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if credentials.len() > 256 {
                return Err(WebError::Unauthorized);
            }
            return self
                .index
                .token_account(credentials)
                .await?
                .ok_or(WebError::Unauthorized);
        }
        if !scheme.eq_ignore_ascii_case("basic") || credentials.len() > 4096 {
            return Err(WebError::Unauthorized);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(WebError::Unauthorized)?;
        let (name, password) = decoded.split_once(':').ok_or(WebError::Unauthorized)?;
        self.check_password(name, password).await
    }

    pub(crate) async fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Account, WebError> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some((account, at)) = self.verified.lock().expect("auth cache").get(&key)
            && at.elapsed() < VERIFIED_FOR
        {
            return Ok(account.clone());
        }
        let Some((hash, rights)) = self.index.account_secret(name).await? else {
            warn!(account = %super::clip(name), "HTTP login for an unknown account");
            return Err(WebError::Unauthorized);
        };
        let _permit = self.hashing.acquire().await.expect("never closed");
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || password_matches(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            warn!(account = %super::clip(name), "HTTP login with a wrong password");
            return Err(WebError::Unauthorized);
        }
        let account = Account {
            name: name.to_string(),
            rights,
        };
        let mut cache = self.verified.lock().expect("auth cache");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (account.clone(), Instant::now()));
        Ok(account)
    }
}

/// The right a request needs.
fn needed(method: &Method, path: &str) -> Option<fn(&Rights) -> bool> {
    if path == "/healthz" || path == "/readyz" || method == Method::OPTIONS {
        return None;
    }
    // The portal signs people in itself (`portal::Signed`), and so does the viewer's page;
    // `/` only points to the portal.
    if path == "/" && method == Method::GET
        || path == "/portal"
        || path.starts_with("/portal/")
        || method == Method::GET && (path == "/viewer" || path.starts_with("/viewer/"))
    {
        return None;
    }
    if path == "/metrics" {
        return Some(|r| r.admin);
    }
    if method == Method::DELETE {
        Some(|r| r.admin)
    } else if method == Method::POST {
        Some(|r| r.upload)
    } else {
        Some(|r| r.read)
    }
}

/// Middleware: authenticate, check the right, and hand the account to the handler.
pub async fn require(State(state): State<Arc<WebState>>, mut req: Request, next: Next) -> Response {
    let Some(allowed) = needed(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A portal session reads too (the thumbnails on its pages, a viewer it opens); it never
    // stores: an upload needs a credential a page cannot be tricked into sending.
    let session = match (&authorization, req.method()) {
        (None, &Method::GET | &Method::HEAD) => {
            super::portal::cookie(req.headers(), super::portal::session::SESSION_COOKIE)
                .and_then(|t| state.sessions.get(&t, Instant::now()))
        }
        _ => None,
    };
    let account = match session {
        Some(s) => s.account,
        None => match state.auth.authenticate(authorization.as_deref()).await {
            Ok(a) => a,
            Err(e) => return e.into_response(),
        },
    };
    if !allowed(&account.rights) {
        return WebError::Forbidden(format!(
            "account `{}` ({}) may not do this",
            account.name,
            account.rights.to_text()
        ))
        .into_response();
    }
    req.extensions_mut().insert(account);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_needed_per_request() {
        let read = Rights {
            read: true,
            ..Rights::default()
        };
        let check = |m: Method, p: &str, r: &Rights| needed(&m, p).map(|f| f(r));
        assert_eq!(check(Method::GET, "/healthz", &read), None);
        assert_eq!(check(Method::GET, "/dicom-web/studies", &read), Some(true));
        assert_eq!(
            check(Method::POST, "/dicom-web/studies", &read),
            Some(false)
        );
        assert_eq!(check(Method::GET, "/metrics", &read), Some(false));
        assert_eq!(check(Method::GET, "/metrics", &Rights::ALL), Some(true));
        let upload = Rights {
            read: true,
            upload: true,
            ..Rights::default()
        };
        assert_eq!(
            check(Method::DELETE, "/dicom-web/studies/1.2", &upload),
            Some(false)
        );
        assert_eq!(
            check(Method::DELETE, "/dicom-web/studies/1.2", &Rights::ALL),
            Some(true)
        );
        // The portal checks its own sessions.
        assert_eq!(check(Method::GET, "/portal/studies", &read), None);
        assert_eq!(check(Method::POST, "/portal/login", &read), None);
        assert_eq!(check(Method::GET, "/", &read), None);
        assert_eq!(check(Method::POST, "/", &read), Some(false));
    }
}
