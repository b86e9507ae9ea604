//! Portal sign-in: sessions behind an HttpOnly cookie, a CSRF token per session, and a
//! throttle on failed logins.
//!
//! Safety rules, stated once:
//! 1. The cookie carries a 256-bit random token; the node keeps only its SHA-256, so a
//!    memory dump or a log line cannot be replayed as a session.
//! 2. A session ends after `IDLE` without a request, `LIFETIME` after it began, at logout, and
//!    when the node restarts (sessions live in memory: a restart asks people to sign in again,
//!    it never lets anyone in).
//! 3. Every form that changes something carries the session's CSRF token, compared in
//!    constant time; the login form carries a token bound to a pre-login cookie (double
//!    submit). Cookies are SameSite=Strict, so another site cannot even make a browser send
//!    them.
//! 4. After `FREE_FAILURES` wrong passwords for an account name or from an address, further
//!    attempts wait (`lockout`), doubling up to `MAX_LOCKOUT`; the wait is per name and per
//!    address so that guessing many names from one host and one name from many hosts are both
//!    slowed. A success clears the name's count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::index::account::{Account, random_bytes};

/// A session without a request for this long is over.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session is over this long after sign-in, however busy.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the least recently used goes when a new one needs room.
const MAX_SESSIONS: usize = 10_000;
/// Wrong passwords allowed (per name, per address) before attempts must wait.
pub const FREE_FAILURES: u32 = 5;
/// The first wait after the free failures; it doubles with each further failure.
const FIRST_LOCKOUT: Duration = Duration::from_secs(30);
/// The longest wait.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(3600);
/// Names and addresses whose failures are remembered at once (the table is emptied of
/// expired entries, then of the oldest, when full).
const MAX_FAILURE_ENTRIES: usize = 10_000;

/// The cookie that carries the session token.
pub const SESSION_COOKIE: &str = "pacsd_session";
/// The cookie that binds a login form to the browser that loaded it.
pub const LOGIN_COOKIE: &str = "pacsd_login";

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: Account,
    /// Goes in every form; a POST without it is refused.
    pub csrf: String,
    started: Instant,
    last_seen: Instant,
}

/// Failed logins of one name or one address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// How long a name or address with `count` failures (the last at `last`) must wait from
/// `now` before the next attempt; `None` when it may try at once.
pub fn lockout(count: u32, last: Instant, now: Instant) -> Option<Duration> {
    if count < FREE_FAILURES {
        return None;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    let wait = FIRST_LOCKOUT
        .saturating_mul(1 << doublings)
        .min(MAX_LOCKOUT);
    let until = last + wait;
    (until > now).then(|| until - now)
}

/// A new random token (64 hex digits).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    hex::encode(b)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The sessions and login failures of this node.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Sessions {
    /// Begin a session for `account`; the token for the cookie.
    pub fn start(&self, account: Account, now: Instant) -> String {
        let token = new_token();
        let mut s = self.sessions.lock().expect("sessions");
        s.retain(|_, v| alive(v, now));
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, v)| v.last_seen).map(|(k, _)| *k)
        {
            s.remove(&oldest);
        }
        s.insert(
            digest(&token),
            Session {
                account,
                csrf: new_token(),
                started: now,
                last_seen: now,
            },
        );
        token
    }

    /// The session of this cookie token, if it is alive (and it is kept alive).
    pub fn get(&self, token: &str, now: Instant) -> Option<Session> {
        if token.len() != 64 {
            return None;
        }
        let key = digest(token);
        let mut s = self.sessions.lock().expect("sessions");
        match s.get_mut(&key) {
            Some(v) if alive(v, now) => {
                v.last_seen = now;
                Some(v.clone())
            }
            Some(_) => {
                s.remove(&key);
                None
            }
            None => None,
        }
    }

    /// End the session of this token (logout).
    pub fn end(&self, token: &str) {
        self.sessions
            .lock()
            .expect("sessions")
            .remove(&digest(token));
    }

    /// End every session of an account (its password changed or it was removed).
    pub fn end_all_of(&self, name: &str) {
        self.sessions
            .lock()
            .expect("sessions")
            .retain(|_, v| v.account.name != name);
    }

    /// How long a login for `name` from `peer` must still wait (the longer of the two).
    pub fn wait_before_login(&self, name: &str, peer: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.failures.lock().expect("failures");
        [name_key(name), addr_key(peer)]
            .iter()
            .filter_map(|k| f.get(k))
            .filter_map(|x| lockout(x.count, x.last, now))
            .max()
    }

    /// Count a wrong password for `name` from `peer`.
    pub fn failed(&self, name: &str, peer: IpAddr, now: Instant) {
        let mut f = self.failures.lock().expect("failures");
        if f.len() >= MAX_FAILURE_ENTRIES {
            f.retain(|_, x| now.saturating_duration_since(x.last) < FAILURE_MEMORY);
            while f.len() >= MAX_FAILURE_ENTRIES {
                let Some(oldest) = f.iter().min_by_key(|(_, x)| x.last).map(|(k, _)| k.clone())
                else {
                    break;
                };
                f.remove(&oldest);
            }
        }
        for key in [name_key(name), addr_key(peer)] {
            let e = f.entry(key).or_insert(Failures {
                count: 0,
                last: now,
            });
            if now.saturating_duration_since(e.last) >= FAILURE_MEMORY {
                e.count = 0;
            }
            e.count += 1;
            e.last = now;
        }
    }

    /// A correct password: the name's failures are forgotten (the address's are not, so a
    /// guesser who owns one account cannot reset its address's count with it).
    pub fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .expect("failures")
            .remove(&name_key(name));
    }

    /// Sessions alive now (for the operations page).
    pub fn count(&self, now: Instant) -> usize {
        self.sessions
            .lock()
            .expect("sessions")
            .values()
            .filter(|v| alive(v, now))
            .count()
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.last_seen) < IDLE
        && now.saturating_duration_since(s.started) < LIFETIME
}

fn name_key(name: &str) -> String {
    format!("n:{}", name.to_lowercase())
}

fn addr_key(peer: IpAddr) -> String {
    format!("a:{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::account::Rights;

    fn someone() -> Account {
        Account {
            name: "reader".into(),
            rights: Rights::parse("read").unwrap(),
        }
    }

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle_or_old() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let token = s.start(someone(), t0);
        assert_eq!(token.len(), 64);
        assert_eq!(s.get(&token, t0).unwrap().account, someone());
        // Used every 20 minutes it stays; the lifetime still ends it.
        let mut t = t0;
        while t + Duration::from_secs(20 * 60) < t0 + LIFETIME {
            t += Duration::from_secs(20 * 60);
            assert!(s.get(&token, t).is_some(), "alive at {:?}", t - t0);
        }
        assert!(s.get(&token, t0 + LIFETIME).is_none());
        // Idle for IDLE: over.
        let token = s.start(someone(), t0);
        assert!(s.get(&token, t0 + IDLE).is_none());
    }

    #[test]
    fn logout_and_account_changes_end_sessions() {
        let s = Sessions::default();
        let now = Instant::now();
        let a = s.start(someone(), now);
        let b = s.start(someone(), now);
        s.end(&a);
        assert!(s.get(&a, now).is_none());
        assert!(s.get(&b, now).is_some());
        s.end_all_of("reader");
        assert!(s.get(&b, now).is_none());
    }

    #[test]
    fn unknown_or_malformed_tokens_find_nothing() {
        let s = Sessions::default();
        let now = Instant::now();
        let t = s.start(someone(), now);
        assert!(s.get(&new_token(), now).is_none());
        assert!(s.get("", now).is_none());
        assert!(s.get(&t[..63], now).is_none());
        // Each session has its own CSRF token, not the cookie's.
        let csrf = s.get(&t, now).unwrap().csrf;
        assert_ne!(csrf, t);
        assert!(same_token(&csrf, &csrf.clone()));
        assert!(!same_token(&csrf, &csrf[..63]));
        assert!(!same_token(&csrf, &new_token()));
    }

    #[test]
    fn failures_lock_out_by_name_and_by_address_doubling_to_a_ceiling() {
        let t0 = Instant::now();
        assert_eq!(lockout(FREE_FAILURES - 1, t0, t0), None);
        assert_eq!(lockout(FREE_FAILURES, t0, t0), Some(FIRST_LOCKOUT));
        assert_eq!(lockout(FREE_FAILURES + 1, t0, t0), Some(2 * FIRST_LOCKOUT));
        assert_eq!(lockout(FREE_FAILURES + 40, t0, t0), Some(MAX_LOCKOUT));
        assert_eq!(lockout(FREE_FAILURES, t0, t0 + FIRST_LOCKOUT), None);

        let s = Sessions::default();
        let guesser: IpAddr = "10.1.1.1".parse().unwrap();
        let other: IpAddr = "10.2.2.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(s.wait_before_login("reader", guesser, t0), None);
            s.failed("reader", guesser, t0);
        }
        // The name is locked from any address, and the address for any name.
        assert!(s.wait_before_login("reader", other, t0).is_some());
        assert!(s.wait_before_login("READER", other, t0).is_some());
        assert!(s.wait_before_login("someone-else", guesser, t0).is_some());
        assert_eq!(s.wait_before_login("someone-else", other, t0), None);
        // A success clears the name, not the address.
        s.succeeded("reader");
        assert_eq!(s.wait_before_login("reader", other, t0), None);
        assert!(s.wait_before_login("reader", guesser, t0).is_some());
        // An hour later the failures are forgotten.
        let later = t0 + FAILURE_MEMORY;
        assert_eq!(s.wait_before_login("x", guesser, later), None);
        s.failed("x", guesser, later);
        assert_eq!(s.wait_before_login("x", guesser, later), None);
    }
}
