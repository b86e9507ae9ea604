//! Replica locations: what a configured string means and how its object store is opened.
//!
//! - a plain path or `file:///abs/dir`: a local directory (created if missing), fsync on write;
//! - `memory://name`: an in-process store (tests only);
//! - `s3://bucket[/prefix][?key=value&...]`: Amazon S3 or an S3-compatible store. Options in the
//!   query are object_store's S3 keys (`endpoint`, `region`, `allow_http`, `access_key_id`,
//!   `secret_access_key`, ...); anything not given there comes from the standard `AWS_*`
//!   environment variables. Secrets are better kept in the environment than in the config file.
//! - `hdfs://namenode:port/path[?key=value&...]` or `hdfs://nameservice/path?...`: HDFS through
//!   hdfs-native-object-store (cargo feature `hdfs`). Options in the query are Hadoop client
//!   settings (a nameservice's `dfs.ha.namenodes.*` and `dfs.namenode.rpc-address.*.*`); the
//!   files in HADOOP_CONF_DIR are read too, the query wins.
//!
//! Remote stores are built with short timeouts and one retry: a dead replica must fail fast so
//! that quorum writes and striped reads route around it instead of waiting for minutes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};

/// Connecting to a remote replica longer than this counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// One remote request (headers and body) longer than this counts as a failure; striped reads
/// detect stalls much earlier on their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed replica location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Memory,
    S3 {
        bucket: String,
        prefix: String,
        options: Vec<(String, String)>,
    },
    Hdfs {
        /// Scheme, NameNode (or nameservice) and path, without the query.
        url: String,
        /// Hadoop client settings from the URL's query (e.g. a nameservice's NameNodes:
        /// `dfs.ha.namenodes.ns=nn0,nn1&dfs.namenode.rpc-address.ns.nn0=host:port&...`);
        /// they override what HADOOP_CONF_DIR's files say.
        options: Vec<(String, String)>,
    },
}

/// Why a configured location cannot be understood or its store opened.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("a file:// URL needs an absolute path (file:///abs/dir)")]
    RelativeFileUrl,
    #[error("invalid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("an s3:// URL needs a bucket (s3://bucket/prefix)")]
    NoBucket,
    #[error("unknown S3 option `{0}`")]
    UnknownS3Option(String),
    #[error("`{0}` is not a Hadoop client setting (dfs.*, fs.* or hadoop.*)")]
    NotHadoopSetting(String),
    #[error(
        "unsupported scheme: use a directory path, file:///abs/dir, s3://bucket/prefix, \
         hdfs://namenode:port/path or memory://name"
    )]
    UnsupportedScheme,
    #[error("{what} {}: {source}", path.display())]
    Directory {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("HDFS client: {0}")]
    Hdfs(String),
    #[error("this build has no HDFS support: rebuild with `--features hdfs`")]
    NoHdfs,
}

impl Location {
    /// Parse a configured location; the error says what is wrong with it.
    pub fn parse(location: &str) -> Result<Location, LocationError> {
        if location.starts_with("memory://") {
            return Ok(Location::Memory);
        }
        if let Some(rest) = location.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(LocationError::RelativeFileUrl);
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if location.starts_with("s3://") {
            let url = url::Url::parse(location)?;
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or(LocationError::NoBucket)?
                .to_string();
            // The URL parser has already resolved `.` and `..` segments.
            let prefix = url.path().trim_matches('/').to_string();
            let mut options = Vec::new();
            for (k, v) in url.query_pairs() {
                s3_key(&k)?;
                options.push((k.into_owned(), v.into_owned()));
            }
            return Ok(Location::S3 {
                bucket,
                prefix,
                options,
            });
        }
        if location.starts_with("hdfs://") || location.starts_with("viewfs://") {
            let mut url = url::Url::parse(location)?;
            let mut options = Vec::new();
            for (k, v) in url.query_pairs() {
                if !["dfs.", "fs.", "hadoop."].iter().any(|p| k.starts_with(p)) {
                    return Err(LocationError::NotHadoopSetting(k.into_owned()));
                }
                options.push((k.into_owned(), v.into_owned()));
            }
            url.set_query(None);
            return Ok(Location::Hdfs {
                url: url.to_string(),
                options,
            });
        }
        if location.contains("://") {
            return Err(LocationError::UnsupportedScheme);
        }
        Ok(Location::Local(PathBuf::from(location)))
    }

    /// Whether the store is on another machine (health probes and network timeouts apply).
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::S3 { .. } | Location::Hdfs { .. })
    }

    /// The directory of a local replica.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self {
            Location::Local(dir) => Some(dir.clone()),
            _ => None,
        }
    }

    /// Pauses between attempts of one put that failed, before the failure counts.
    ///
    /// HDFS only: hdfs-native does not retry a block whose write pipeline could not be set up
    /// (a DataNode stopped since the NameNode last heard from it), and the NameNode keeps
    /// offering that DataNode until it marks it stale (or, without
    /// `dfs.namenode.avoid.write.stale.datanode`, until it declares it dead after about ten
    /// minutes). A fresh put asks for a fresh block, placed again. Measured on a 4-DataNode
    /// MiniDFSCluster (replication 3, stale after 3 s), one DataNode stopped during 300
    /// C-STOREs on three HDFS replicas: 157 failed over 4.6 s without these retries. The
    /// pauses (7.5 s in all) outlast a 3 s stale interval with room to spare and give a
    /// cluster without stale avoidance 11 random placements. Other stores retry inside their
    /// clients (object_store's S3 client) or fail for reasons a retry does not cure (a full
    /// or read-only disk).
    pub fn put_retry_pauses(&self) -> &'static [Duration] {
        const HDFS: [Duration; 10] = [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400),
            Duration::from_millis(800),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ];
        match self {
            Location::Hdfs { .. } => &HDFS,
            _ => &[],
        }
    }

    /// Open the store. Local directories are created; remote stores are built without
    /// contacting the server (reachability is probed separately, see `Storage::probe`).
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, LocationError> {
        match self {
            Location::Local(dir) => open_local(dir, true),
            Location::Memory => Ok(Arc::new(InMemory::new())),
            Location::S3 {
                bucket,
                prefix,
                options,
            } => open_s3(bucket, prefix, options),
            Location::Hdfs { url, options } => open_hdfs(url, options),
        }
    }
}

/// An S3 option key from a URL query, checked against object_store's list.
fn s3_key(key: &str) -> Result<AmazonS3ConfigKey, LocationError> {
    key.parse::<AmazonS3ConfigKey>()
        .or_else(|_| {
            key.parse::<ClientConfigKey>()
                .map(AmazonS3ConfigKey::Client)
        })
        .map_err(|_| LocationError::UnknownS3Option(key.to_string()))
}

/// A local directory as a store that does not flush each write (`Durability::Deferred`): its
/// writes are made durable by `Storage::flush`.
pub fn open_local_unflushed(dir: &Path) -> Result<Arc<dyn ObjectStore>, LocationError> {
    open_local(dir, false)
}

fn open_local(dir: &Path, fsync: bool) -> Result<Arc<dyn ObjectStore>, LocationError> {
    let failed = |what| {
        move |source| LocationError::Directory {
            what,
            path: dir.to_path_buf(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(failed("creating"))?;
    let dir = dir.canonicalize().map_err(failed("resolving"))?;
    let fs = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(fsync);
    Ok(Arc::new(fs))
}

fn open_s3(
    bucket: &str,
    prefix: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, LocationError> {
    // `with_client_options` replaces the whole client configuration, so it comes first and
    // the environment and URL options (which may set client keys such as allow_http) after.
    let client = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    let mut builder = AmazonS3Builder::new().with_client_options(client);
    for (k, v) in std::env::vars() {
        if k.starts_with("AWS_")
            && let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(key, v);
        }
    }
    for (k, v) in options {
        builder = builder.with_config(s3_key(k)?, v);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 1,
        retry_timeout: Duration::from_secs(3),
    };
    let s3 = builder
        .with_bucket_name(bucket)
        .with_retry(retry)
        // pacsd never relies on conditional puts on a replica (some S3-compatible stores
        // ignore them); disabled, any accidental use fails loudly.
        .with_conditional_put(S3ConditionalPut::Disabled)
        .build()?;
    Ok(with_prefix(Arc::new(s3), prefix))
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

#[cfg(feature = "hdfs")]
fn open_hdfs(
    url: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, LocationError> {
    let parsed = url::Url::parse(url)?;
    let root = format!(
        "{}://{}",
        parsed.scheme(),
        &parsed[url::Position::BeforeHost..url::Position::AfterPort]
    );
    let store = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
        .with_url(root)
        .with_config(options.iter().cloned())
        .build()
        .map_err(|e| LocationError::Hdfs(e.to_string()))?;
    Ok(with_prefix(
        Arc::new(store),
        parsed.path().trim_matches('/'),
    ))
}

#[cfg(not(feature = "hdfs"))]
fn open_hdfs(
    _url: &str,
    _options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, LocationError> {
    Err(LocationError::NoHdfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("data/r1").unwrap(),
            Location::Local("data/r1".into())
        );
        assert_eq!(
            Location::parse("file:///srv/r1").unwrap(),
            Location::Local("/srv/r1".into())
        );
        assert_eq!(Location::parse("memory://x").unwrap(), Location::Memory);
        assert_eq!(
            Location::parse("s3://pacs/dicom/a?endpoint=http://127.0.0.1:3900&allow_http=true")
                .unwrap(),
            Location::S3 {
                bucket: "pacs".into(),
                prefix: "dicom/a".into(),
                options: vec![
                    ("endpoint".into(), "http://127.0.0.1:3900".into()),
                    ("allow_http".into(), "true".into())
                ],
            }
        );
        assert!(Location::parse("hdfs://nn:9000/pacs").unwrap().is_remote());
        assert_eq!(
            Location::parse(
                "hdfs://ns/pacs/r1?dfs.ha.namenodes.ns=nn0,nn1&dfs.namenode.rpc-address.ns.nn0=a:1"
            )
            .unwrap(),
            Location::Hdfs {
                url: "hdfs://ns/pacs/r1".into(),
                options: vec![
                    ("dfs.ha.namenodes.ns".into(), "nn0,nn1".into()),
                    ("dfs.namenode.rpc-address.ns.nn0".into(), "a:1".into()),
                ],
            }
        );
        assert!(
            Location::parse("hdfs://nn:9000/p?endpoint=x")
                .unwrap_err()
                .to_string()
                .contains("not a Hadoop client setting")
        );
    }

    #[test]
    fn bad_locations_are_explained() {
        for (loc, needle) in [
            ("gopher://x", "unsupported scheme"),
            ("file://relative", "absolute path"),
            ("s3:///prefix", "needs a bucket"),
            ("s3://b/p?colour=blue", "unknown S3 option `colour`"),
        ] {
            let err = Location::parse(loc).unwrap_err().to_string();
            assert!(err.contains(needle), "{loc}: {err}");
        }
    }

    #[test]
    fn only_hdfs_puts_are_tried_again_and_within_a_replica_operation() {
        let hdfs = Location::Hdfs {
            url: "hdfs://nn:9000/pacs".into(),
            options: vec![],
        };
        let total: Duration = hdfs.put_retry_pauses().iter().sum();
        assert_eq!(total, Duration::from_millis(7500));
        assert!(total < crate::storage::REPLICA_OP_TIMEOUT / 4);
        assert!(
            Location::parse("/var/pacs")
                .unwrap()
                .put_retry_pauses()
                .is_empty()
        );
        let s3 =
            Location::parse("s3://pacs/p?endpoint=http://127.0.0.1:3900&allow_http=true").unwrap();
        assert!(s3.put_retry_pauses().is_empty());
    }

    #[cfg(not(feature = "hdfs"))]
    #[test]
    fn hdfs_without_the_feature_says_how_to_get_it() {
        let err = Location::parse("hdfs://nn:9000/p")
            .unwrap()
            .open()
            .unwrap_err();
        assert!(matches!(err, LocationError::NoHdfs), "{err}");
    }
}
