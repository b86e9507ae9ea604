//! Accounts of the HTTP side (DICOMweb API clients, and the portal's people): a name, an
//! argon2id password hash, rights, and API tokens kept only as their SHA-256.
//!
//! Accounts live in this node's index file and are not carried by HA replication: in a pair,
//! add them on both nodes (`pacsd account add` works while the node runs).

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

impl Index {
    /// Create an account (refused if the name is taken).
    pub async fn add_account(
        &self,
        name: &str,
        password: &str,
        rights: Rights,
    ) -> Result<(), IndexError> {
        let (name, hash) = (
            name.to_string(),
            hash_password(password).map_err(|e| invalid(e.to_string()))?,
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO account (name, password_hash, rights, created) VALUES (?1, ?2, ?3, ?4)",
                params![name, hash, rights.to_text(), now_text()],
            )?;
            Ok(())
        })
        .await
    }

    /// Set a new password; false when there is no such account.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<bool, IndexError> {
        let (name, hash) = (
            name.to_string(),
            hash_password(password).map_err(|e| invalid(e.to_string()))?,
        );
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE account SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )? == 1)
        })
        .await
    }

    /// Remove an account and its tokens; false when there is no such account.
    pub async fn remove_account(&self, name: &str) -> Result<bool, IndexError> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM api_token WHERE account = ?1", params![name])?;
            Ok(c.execute("DELETE FROM account WHERE name = ?1", params![name])? == 1)
        })
        .await
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
        let token = new_token();
        let (digest, account, label) =
            (token_digest(&token), account.to_string(), label.to_string());
        self.write(move |c| {
            c.execute(
                "INSERT INTO api_token (sha256, account, label, created) VALUES (?1, ?2, ?3, ?4)",
                params![digest, account, label, now_text()],
            )?;
            Ok(())
        })
        .await?;
        Ok(token)
    }

    /// Revoke every token of `account` with this label; how many were revoked.
    pub async fn revoke_tokens(&self, account: &str, label: &str) -> Result<u64, IndexError> {
        let (account, label) = (account.to_string(), label.to_string());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM api_token WHERE account = ?1 AND label = ?2",
                params![account, label],
            )? as u64)
        })
        .await
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
    IndexError::Query(rusqlite::Error::InvalidParameterName(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
