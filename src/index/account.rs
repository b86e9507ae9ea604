//! Accounts of the HTTP side (DICOMweb API clients, and the portal's people): a name, an
//! argon2id password hash, rights, and API tokens kept only as their SHA-256.
//!
//! Every change of an account or token is an `AccountChange`: applied by the index's single
//! writer together with a change-log row, so that HA replication carries it to the standby
//! like an instance (a removed account or revoked token is gone on both nodes, and an account
//! added on the primary signs in after a takeover). The change holds the password's hash and
//! the token's digest, never the secret itself.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{Index, IndexError};

/// Why an account's name, rights or password cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("unknown right `{0}` (read, upload, admin)")]
    UnknownRight(String),
    #[error("an account needs at least one right (read, upload, admin)")]
    NoRight,
    #[error("account name `{0}` must be 1-64 letters, digits or . _ - @")]
    BadName(String),
    #[error("hashing the password: {0}")]
    Hash(#[from] argon2::password_hash::Error),
    #[error("{0}")]
    Index(#[from] IndexError),
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What an account may do. `admin` includes the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Search and retrieve (QIDO-RS, WADO-RS, WADO-URI).
    pub read: bool,
    /// Store (STOW-RS).
    pub upload: bool,
    /// Operations: metrics, accounts.
    pub admin: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        read: true,
        upload: true,
        admin: true,
    };

    /// `read,upload,admin` (any subset, any order).
    pub fn parse(s: &str) -> Result<Rights, AccountError> {
        let mut r = Rights::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "read" | "viewer" => r.read = true,
                "upload" => r.upload = true,
                "uploader" => {
                    r.read = true;
                    r.upload = true;
                }
                "admin" => r = Rights::ALL,
                other => return Err(AccountError::UnknownRight(other.to_string())),
            }
        }
        if r == Rights::default() {
            return Err(AccountError::NoRight);
        }
        Ok(r)
    }

    pub fn to_text(self) -> String {
        if self.admin {
            return "admin".into();
        }
        [(self.read, "read"), (self.upload, "upload")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A signed-in account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub rights: Rights,
}

/// Account names are what people type and what the audit trail shows: 1-64 characters of
/// letters, digits and `._-@`.
pub fn validate_name(name: &str) -> Result<(), AccountError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadName(name.to_string()))
    }
}

/// Passwords shorter than this are refused when an account is created.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longer passwords are refused before hashing (argon2 would take them, but nobody types a
/// kilobyte and the request that carries it is untrusted).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The argon2id PHC string of `password` (argon2's default cost: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `hash` (CPU-heavy: call off the async threads).
pub fn password_matches(password: &str, hash: &str) -> bool {
    password.len() <= MAX_PASSWORD_LEN
        && PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
}

/// Fill `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) {
    use aws_lc_rs::rand::SecureRandom;
    aws_lc_rs::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random source works");
}

/// A new API token: `pacsd_` and 256 random bits in hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    format!("pacsd_{}", hex::encode(b))
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_text() -> String {
    crate::calendar::timestamp(std::time::SystemTime::now())
}

/// One change of the accounts, as applied, logged and replicated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AccountChange {
    /// Create an account (refused if the name is taken).
    Add {
        name: String,
        password_hash: String,
        rights: String,
        created: String,
    },
    /// Replace an account's password hash.
    Password { name: String, password_hash: String },
    /// Remove an account and its tokens.
    Remove { name: String },
    /// Issue a token (kept as its SHA-256).
    Token {
        sha256: String,
        account: String,
        label: String,
        created: String,
    },
    /// Revoke every token of an account with this label.
    Revoke { account: String, label: String },
}

impl AccountChange {
    /// A new account with a fresh hash of `password`.
    pub fn add(name: &str, password: &str, rights: Rights) -> Result<AccountChange, AccountError> {
        validate_name(name)?;
        Ok(AccountChange::Add {
            name: name.to_string(),
            password_hash: hash_password(password)?,
            rights: rights.to_text(),
            created: now_text(),
        })
    }

    /// A new password for `name`.
    pub fn password(name: &str, password: &str) -> Result<AccountChange, AccountError> {
        Ok(AccountChange::Password {
            name: name.to_string(),
            password_hash: hash_password(password)?,
        })
    }

    /// A new token for `account`: the change to apply and the token, shown once.
    pub fn token(account: &str, label: &str) -> (AccountChange, String) {
        let token = new_token();
        let change = AccountChange::Token {
            sha256: token_digest(&token),
            account: account.to_string(),
            label: label.to_string(),
            created: now_text(),
        };
        (change, token)
    }

    /// Apply on the writer's connection: how many rows it changed (0: nothing to do, and the
    /// primary writes no change-log row). A hash or rights text that does not parse is refused
    /// here too, whoever sent the change. `replicated`: the primary did this already, so the
    /// standby makes its rows equal to the primary's: an account or token it has already
    /// (added on both nodes by hand, before accounts were replicated) is overwritten, not a
    /// conflict that would stop replication.
    pub(super) fn apply(
        &self,
        c: &rusqlite::Connection,
        replicated: bool,
    ) -> Result<u64, IndexError> {
        let n = match self {
            AccountChange::Add {
                name,
                password_hash,
                rights,
                created,
            } => {
                validate_name(name).map_err(|e| invalid(e.to_string()))?;
                Rights::parse(rights).map_err(|e| invalid(e.to_string()))?;
                PasswordHash::new(password_hash).map_err(|e| invalid(e.to_string()))?;
                let sql = if replicated {
                    "INSERT INTO account (name, password_hash, rights, created)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                        rights = excluded.rights, created = excluded.created"
                } else {
                    "INSERT INTO account (name, password_hash, rights, created)
                     VALUES (?1, ?2, ?3, ?4)"
                };
                c.execute(sql, params![name, password_hash, rights, created])?
            }
            AccountChange::Password {
                name,
                password_hash,
            } => {
                PasswordHash::new(password_hash).map_err(|e| invalid(e.to_string()))?;
                c.execute(
                    "UPDATE account SET password_hash = ?2 WHERE name = ?1",
                    params![name, password_hash],
                )?
            }
            AccountChange::Remove { name } => {
                c.execute("DELETE FROM api_token WHERE account = ?1", params![name])?;
                c.execute("DELETE FROM account WHERE name = ?1", params![name])?
            }
            AccountChange::Token {
                sha256,
                account,
                label,
                created,
            } => c.execute(
                "INSERT INTO api_token (sha256, account, label, created)
                 SELECT ?1, name, ?3, ?4 FROM account WHERE name = ?2
                 ON CONFLICT (sha256) DO UPDATE SET account = excluded.account,
                    label = excluded.label, created = excluded.created",
                params![sha256, account, label, created],
            )?,
            AccountChange::Revoke { account, label } => c.execute(
                "DELETE FROM api_token WHERE account = ?1 AND label = ?2",
                params![account, label],
            )?,
        };
        Ok(n as u64)
    }
}

/// What an account change did: rows changed and, when it changed something, its change-log
/// row (an HA primary acknowledges it once the standby confirms that row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountOutcome {
    pub rows: u64,
    pub seq: Option<i64>,
}

impl Index {
    /// Apply an account change with its change-log row, on the single writer.
    pub async fn change_account(
        &self,
        change: AccountChange,
    ) -> Result<AccountOutcome, IndexError> {
        self.submit_account(change).await
    }

    /// Create an account (refused if the name is taken).
    pub async fn add_account(
        &self,
        name: &str,
        password: &str,
        rights: Rights,
    ) -> Result<(), IndexError> {
        let change =
            AccountChange::add(name, password, rights).map_err(|e| invalid(e.to_string()))?;
        self.change_account(change).await.map(|_| ())
    }

    /// Set a new password; false when there is no such account.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<bool, IndexError> {
        let change = AccountChange::password(name, password).map_err(|e| invalid(e.to_string()))?;
        Ok(self.change_account(change).await?.rows == 1)
    }

    /// Remove an account and its tokens; false when there is no such account.
    pub async fn remove_account(&self, name: &str) -> Result<bool, IndexError> {
        let change = AccountChange::Remove {
            name: name.to_string(),
        };
        Ok(self.change_account(change).await?.rows > 0)
    }

    /// Every account with its number of tokens, by name.
    pub async fn accounts(&self) -> Result<Vec<(Account, u64)>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT a.name, a.rights, (SELECT count(*) FROM api_token t WHERE t.account = a.name)
                 FROM account a ORDER BY a.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, rights, tokens) = row?;
                let rights = Rights::parse(&rights).unwrap_or_default();
                out.push((Account { name, rights }, tokens as u64));
            }
            Ok(out)
        })
        .await
    }

    /// The account's password hash and rights (None: no such account).
    pub async fn account_secret(&self, name: &str) -> Result<Option<(String, Rights)>, IndexError> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT password_hash, rights FROM account WHERE name = ?1",
                params![name],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(h, r)| (h, Rights::parse(&r).unwrap_or_default())))
        })
        .await
    }

    /// Issue an API token for `account`; the token is returned once and only its digest kept.
    pub async fn issue_token(&self, account: &str, label: &str) -> Result<String, IndexError> {
        let (change, token) = AccountChange::token(account, label);
        if self.change_account(change).await?.rows == 0 {
            return Err(invalid(format!("no account {account}")));
        }
        Ok(token)
    }

    /// Revoke every token of `account` with this label; how many were revoked.
    pub async fn revoke_tokens(&self, account: &str, label: &str) -> Result<u64, IndexError> {
        let change = AccountChange::Revoke {
            account: account.to_string(),
            label: label.to_string(),
        };
        Ok(self.change_account(change).await?.rows)
    }

    /// The account a bearer token belongs to (None: unknown or revoked).
    pub async fn token_account(&self, token: &str) -> Result<Option<Account>, IndexError> {
        let digest = token_digest(token);
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT a.name, a.rights FROM api_token t JOIN account a ON a.name = t.account
                 WHERE t.sha256 = ?1",
                params![digest],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(name, r)| Account {
                name,
                rights: Rights::parse(&r).unwrap_or_default(),
            }))
        })
        .await
    }
}

fn invalid(reason: String) -> IndexError {
    IndexError::Account(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::fixtures::replay;

    #[test]
    fn rights_parse_and_print() {
        assert_eq!(Rights::parse("read").unwrap().to_text(), "read");
        assert_eq!(
            Rights::parse("upload, read").unwrap().to_text(),
            "read,upload"
        );
        assert_eq!(Rights::parse("read,admin").unwrap(), Rights::ALL);
        assert!(Rights::parse("").is_err());
        assert!(Rights::parse("read,root").is_err());
        // The portal's role names.
        assert_eq!(Rights::parse("viewer").unwrap().to_text(), "read");
        assert_eq!(Rights::parse("uploader").unwrap().to_text(), "read,upload");
    }

    #[test]
    fn names_are_bounded() {
        assert!(validate_name("alice.smith@ward-3").is_ok());
        for bad in ["", "a b", "x'; DROP TABLE account; --", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_matches_only_its_own_hash() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches("correct horse battery", &h));
        assert!(!password_matches("correct horse batterz", &h));
        assert!(!password_matches("correct horse battery", "not a hash"));
    }

    #[tokio::test]
    async fn accounts_and_tokens_round_trip_through_a_real_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        index
            .add_account("viewer", "long enough pw", Rights::parse("read").unwrap())
            .await
            .unwrap();
        assert!(
            index
                .add_account("viewer", "another password", Rights::ALL)
                .await
                .is_err()
        );
        let (hash, rights) = index.account_secret("viewer").await.unwrap().unwrap();
        assert!(password_matches("long enough pw", &hash));
        assert_eq!(
            rights,
            Rights {
                read: true,
                ..Rights::default()
            }
        );
        let token = index.issue_token("viewer", "ohif").await.unwrap();
        assert_eq!(
            index.token_account(&token).await.unwrap().unwrap().name,
            "viewer"
        );
        assert_eq!(index.token_account("pacsd_00").await.unwrap(), None);
        assert_eq!(index.revoke_tokens("viewer", "ohif").await.unwrap(), 1);
        assert_eq!(index.token_account(&token).await.unwrap(), None);
        assert!(index.remove_account("viewer").await.unwrap());
        assert!(index.accounts().await.unwrap().is_empty());
    }

    /// What a standby does with the primary's change log: each row applied at its seq.
    #[tokio::test]
    async fn account_changes_are_logged_and_replay_on_a_standby() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Index::open(&dir.path().join("p.sqlite")).unwrap();
        let standby = Index::open(&dir.path().join("s.sqlite")).unwrap();
        // The standby has an account of the same name, added by hand before accounts were
        // replicated (no change-log row): the primary's version replaces it instead of
        // stopping replication.
        standby
            .write(|c| {
                c.execute(
                    "INSERT INTO account (name, password_hash, rights, created)
                     VALUES ('nurse', ?1, 'admin', 'then')",
                    params![hash_password("the standby's own pw").unwrap()],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        primary
            .add_account("nurse", "the primary's pw", Rights::parse("read").unwrap())
            .await
            .unwrap();
        let token = primary.issue_token("nurse", "ohif").await.unwrap();
        primary
            .add_account("locum", "a locum's password", Rights::ALL)
            .await
            .unwrap();
        let locum = primary.issue_token("locum", "x").await.unwrap();
        assert!(primary.remove_account("locum").await.unwrap());
        // Changes that change nothing leave no change-log row.
        assert!(!primary.remove_account("locum").await.unwrap());
        assert_eq!(primary.revoke_tokens("nurse", "none").await.unwrap(), 0);
        assert!(primary.issue_token("nobody", "x").await.is_err());
        assert_eq!(primary.last_change().await.unwrap().0, 5);

        replay(&primary, &standby).await;
        assert_eq!(standby.last_change().await.unwrap().0, 5);
        let (hash, rights) = standby.account_secret("nurse").await.unwrap().unwrap();
        assert!(password_matches("the primary's pw", &hash));
        assert_eq!(rights.to_text(), "read");
        assert_eq!(
            standby.token_account(&token).await.unwrap().unwrap().name,
            "nurse"
        );
        assert_eq!(standby.account_secret("locum").await.unwrap(), None);
        assert_eq!(standby.token_account(&locum).await.unwrap(), None);

        // A password change and a revocation follow.
        assert!(
            primary
                .set_password("nurse", "a new password")
                .await
                .unwrap()
        );
        assert_eq!(primary.revoke_tokens("nurse", "ohif").await.unwrap(), 1);
        replay(&primary, &standby).await;
        let (hash, _) = standby.account_secret("nurse").await.unwrap().unwrap();
        assert!(password_matches("a new password", &hash));
        assert_eq!(standby.token_account(&token).await.unwrap(), None);
    }

    #[test]
    fn a_change_with_a_bad_hash_or_name_is_refused_whoever_sent_it() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        crate::index::migrate(&mut c).unwrap();
        let bad = [
            AccountChange::Add {
                name: "nurse".into(),
                password_hash: "plain text".into(),
                rights: "read".into(),
                created: String::new(),
            },
            AccountChange::Add {
                name: "x'; DROP TABLE account; --".into(),
                password_hash: hash_password("long enough pw").unwrap(),
                rights: "read".into(),
                created: String::new(),
            },
            AccountChange::Add {
                name: "nurse".into(),
                password_hash: hash_password("long enough pw").unwrap(),
                rights: "root".into(),
                created: String::new(),
            },
        ];
        for change in bad {
            for replicated in [false, true] {
                assert!(change.apply(&c, replicated).is_err(), "{change:?}");
            }
        }
    }
}
