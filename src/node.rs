//! Wires configuration, index, storage, services and the listener together; ordered start
//! (storage, index, then listener) and shutdown (stop accepting, finish in-flight messages,
//! then close the index).

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::audit::{
    APPLICATION_ACTIVITY, APPLICATION_START, APPLICATION_STOP, Audit, Event, Object, Outcome, Role,
};
use crate::config::Config;
use crate::index::{Index, IndexError};
use crate::net::tls::TlsContext;
use crate::net::{AcceptorPolicy, Shutdown, ShutdownTrigger};
use crate::service::{FindService, RetrieveService, Services, StoreService};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("opening storage: {0}")]
    Storage(#[from] StorageError),
    #[error("opening index: {0}")]
    Index(#[from] IndexError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("{0}")]
    Ha(#[from] crate::ha::driver::HaError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Maintenance(#[from] crate::archive::maintenance::MaintenanceError),
    #[error("creating the first account: {0}")]
    Account(#[from] crate::index::account::AccountError),
}

/// A node with its storage and index open, ready to listen.
pub struct Node {
    pub config: Arc<Config>,
    pub index: Index,
    pub storage: Arc<Storage>,
    /// HA: what a C-STORE waits for after its index commit (None: the node runs alone).
    pub gate: Option<Arc<dyn crate::index::CommitGate>>,
    /// DICOM TLS credentials (`[tls]`), loaded once.
    pub tls: Option<TlsContext>,
    pub audit: Audit,
}

/// The sockets a node serves on: DICOM plain (`node.port`) and TLS (`tls.port`), and HTTP
/// (`http.port`).
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Bind what `config` asks for on `ip`; `freebind` for the HA service address, which
    /// is bound before it is added (IP_FREEBIND).
    pub async fn bind(
        config: &Config,
        ip: std::net::IpAddr,
        freebind: bool,
    ) -> Result<Listeners, NodeError> {
        let open = async |port: u16| {
            let addr = SocketAddr::from((ip, port));
            let bound = if freebind {
                crate::ha::vip::freebind_listener(addr)
            } else {
                TcpListener::bind(addr).await
            };
            bound.map_err(|source| NodeError::Bind {
                addr: addr.to_string(),
                source,
            })
        };
        let plain = match &config.tls {
            Some(t) if t.only => None,
            _ => Some(open(config.node.port).await?),
        };
        let tls = match &config.tls {
            Some(t) => Some(open(t.port).await?),
            None => None,
        };
        let http = match (&config.http.bind, config.http.enabled) {
            (_, false) => None,
            // An address of its own (not the HA service address).
            (Some(b), true) if !freebind => {
                let addr = SocketAddr::from((
                    b.parse::<std::net::IpAddr>().map_err(|_| NodeError::Bind {
                        addr: b.clone(),
                        source: std::io::Error::other("not an IP address"),
                    })?,
                    config.http.port,
                ));
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| NodeError::Bind {
                            addr: addr.to_string(),
                            source,
                        })?,
                )
            }
            _ => Some(open(config.http.port).await?),
        };
        Ok(Listeners { plain, tls, http })
    }

    fn addr(l: &Option<TcpListener>) -> Option<SocketAddr> {
        l.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Open the audit trail `config` names (forwarding over TLS with `tls`), and record that the
/// node started with it.
pub fn open_audit(config: &Config, tls: Option<&TlsContext>) -> Result<Audit, NodeError> {
    use crate::audit::Forward;
    use crate::config::SyslogTarget;
    let path = config.audit.file(&config.index);
    let forward = match (config.audit.syslog_target().ok().flatten(), tls) {
        (Some(SyslogTarget::Udp(a)), _) => Some(Forward::Udp(a)),
        (Some(SyslogTarget::Tls { addr, host }), Some(tls)) => Some(Forward::Tls {
            addr,
            server_name: crate::net::tls::server_name(&host)?,
            config: tls.client.clone(),
        }),
        _ => None,
    };
    let audit =
        Audit::open(&path, &config.node.ae_title, forward).map_err(|source| NodeError::Io {
            what: format!("opening the audit trail {}", path.display()),
            source,
        })?;
    let mut start = Event::new(
        APPLICATION_ACTIVITY,
        Some(APPLICATION_START),
        'E',
        Outcome::Success,
    )
    .describe(format!("pacsd {} started", env!("CARGO_PKG_VERSION")))
    .by(&config.node.ae_title, None, Role::Application);
    if let Some(f) = &config.file {
        start = start.on(Object::System {
            id: format!("file://{}", f.display()),
            description: "configuration loaded".into(),
        });
    }
    audit.record(start);
    Ok(audit)
}

/// The file that holds the password of the account created on first start.
pub fn first_password_file(config: &Config) -> std::path::PathBuf {
    config
        .index
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("admin-password")
}

/// A fresh node that requires HTTP logins has no account to log in with: create `admin` with
/// a random password, written (mode 0600) to `first_password_file` and named in the log.
/// Nothing happens once any account exists.
pub async fn ensure_first_account(
    config: &Config,
    index: &Index,
) -> Result<(), crate::index::account::AccountError> {
    use crate::index::account::{AccountError, Rights, random_bytes};
    if !config.http.require_auth || !index.accounts().await?.is_empty() {
        return Ok(());
    }
    let mut raw = [0u8; 12];
    random_bytes(&mut raw);
    let password = hex::encode(raw);
    let path = first_password_file(config);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{password}"))
            .map_err(|source| AccountError::File {
                path: path.clone(),
                source,
            })?;
    }
    index.add_account("admin", &password, Rights::ALL).await?;
    tracing::warn!(
        file = %path.display(),
        "no HTTP account existed: created `admin` with the password in this file; \
         add accounts with `pacsd account add` and remove the file"
    );
    Ok(())
}

/// A node serving in the background (tests and `serve`).
pub struct RunningNode {
    /// The plain DICOM listener (the TLS one when `tls.only`).
    pub addr: SocketAddr,
    /// The DICOM TLS listener, when `[tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The HTTP (DICOMweb) listener, when `http.enabled`.
    pub http_addr: Option<SocketAddr>,
    pub index: Index,
    pub storage: Arc<Storage>,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    pub fn open(config: Config) -> Result<Node, NodeError> {
        let mut storage = Storage::open(
            &config.storage.replicas,
            config.storage.write_quorum,
            &config.storage.prefix,
        )?;
        storage.set_straggler_patience(Duration::from_secs_f64(
            config.storage.straggler_patience_secs,
        ));
        let storage = Arc::new(storage);
        for group in storage.shared_devices() {
            warn!(
                replicas = %group.join(", "),
                "these replicas are on one device: they protect against a bad copy, not against \
                 losing that disk; put each replica on its own disk for that"
            );
        }
        let index = Index::open(&config.index.path)?;
        let tls = config.tls.as_ref().map(TlsContext::load).transpose()?;
        let audit = open_audit(&config, tls.as_ref())?;
        Ok(Node {
            config: Arc::new(config),
            index,
            storage,
            gate: None,
            tls,
            audit,
        })
    }

    pub async fn bind(&self) -> Result<Listeners, NodeError> {
        let ip = self.config.node.bind.parse().map_err(|_| NodeError::Bind {
            addr: self.config.node.bind.clone(),
            source: std::io::Error::other("not an IP address"),
        })?;
        Listeners::bind(&self.config, ip, false).await
    }

    /// Serve on `listeners` until `shutdown` fires and open associations have finished; the
    /// repair worker runs beside it.
    pub async fn run(self, listeners: Listeners, shutdown: Shutdown) {
        // Report unreachable replicas at once (they are treated as down, never a crash); the
        // listener does not wait for the probe.
        let probe = self.storage.clone();
        tokio::spawn(async move { probe.probe().await });
        let renderer = self.config.preview.enabled.then(|| {
            tokio::spawn(crate::render::worker::run(
                self.index.clone(),
                self.storage.clone(),
                self.config.preview.workers,
                shutdown.clone(),
            ))
        });
        let store = Arc::new(crate::archive::store::Store::new(
            self.index.clone(),
            self.storage.clone(),
            self.config.node.max_object_size,
            self.gate.clone(),
            {
                let config = self.config.clone();
                Box::new(move |ae: &str| config.on_conflict(ae))
            },
        ));
        // A node that runs alone may have committed rows just before an unclean stop that
        // its copies did not outlive (`archive::reconcile`); checked before it serves. (An
        // HA pair commits a row only after its copies are durable.)
        if self.gate.is_none()
            && let Err(e) = store.reconcile().await
        {
            error!(error = %e, "checking the instances indexed just before the last stop failed; they are left as they are, for `pacsd storage verify`");
        }
        let worker = tokio::spawn(crate::archive::maintenance::repair_worker(
            store.clone(),
            Duration::from_secs_f64(self.config.storage.repair_interval_secs),
            shutdown.clone(),
        ));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let services = Arc::new(Services {
            metrics: metrics.clone(),
            store: Arc::new(StoreService {
                archive: store.clone(),
            }),
            find: Arc::new(FindService {
                index: self.index.clone(),
                storage: self.storage.clone(),
                ae_title: self.config.node.ae_title.clone(),
                max_results: self.config.query.max_results,
                pn_case_insensitive: self.config.query.pn_case_insensitive,
            }),
            retrieve: Arc::new(RetrieveService {
                index: self.index.clone(),
                storage: self.storage.clone(),
                config: self.config.clone(),
                tls: self.tls.as_ref().map(|t| t.connector.clone()),
                metrics: metrics.clone(),
            }),
        });
        let policy = AcceptorPolicy::new(self.config.clone(), self.audit.clone(), metrics.clone());
        let mut serving = tokio::task::JoinSet::new();
        if let Some(l) = listeners.http {
            if let Err(e) = ensure_first_account(&self.config, &self.index).await {
                tracing::error!(error = %e, "could not create the first HTTP account");
            }
            let state = Arc::new(crate::http::WebState::new(
                self.config.clone(),
                self.index.clone(),
                self.storage.clone(),
                store,
                metrics,
                self.audit.clone(),
            ));
            let https = (self.config.http.tls)
                .then(|| self.tls.as_ref().map(|t| t.web.clone()))
                .flatten();
            serving.spawn(crate::http::serve(l, https, state, shutdown.clone()));
        }
        if let Some(l) = listeners.plain {
            serving.spawn(crate::net::run(
                l,
                None,
                policy.clone(),
                services.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(l) = listeners.tls {
            let acceptor = self.tls.as_ref().map(|t| t.acceptor.clone());
            serving.spawn(crate::net::run(
                l,
                acceptor,
                policy,
                services,
                shutdown.clone(),
            ));
        }
        while serving.join_next().await.is_some() {}
        let _ = worker.await;
        if let Some(r) = renderer {
            let _ = r.await;
        }
        info!("all associations closed; closing the index");
        self.audit.record(
            Event::new(
                APPLICATION_ACTIVITY,
                Some(APPLICATION_STOP),
                'E',
                Outcome::Success,
            )
            .by(&self.config.node.ae_title, None, Role::Application),
        );
        drop(self.index);
    }

    /// Serve until `shutdown`: alone, or as one node of an HA pair (`[ha]`), whose driver
    /// decides when this node serves (`PairMember`). The one start path of `pacsd serve`;
    /// either way the teardown is `run`'s.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), NodeError> {
        if self.config.ha.is_some() {
            let Node {
                config,
                index,
                storage,
                gate: _,
                tls,
                audit,
            } = self;
            let member = PairMember {
                config: config.clone(),
                storage,
                tls,
                audit: audit.clone(),
            };
            crate::ha::driver::run(config, index, audit, member, shutdown).await?;
            return Ok(());
        }
        let listeners = self.bind().await?;
        self.listening(&listeners)?;
        self.run(listeners, shutdown).await;
        Ok(())
    }

    /// Bind and serve in a background task; the returned handle stops it.
    pub async fn spawn(self) -> Result<RunningNode, NodeError> {
        let listeners = self.bind().await?;
        let addr = self.listening(&listeners)?;
        let (tls_addr, http_addr) = (
            Listeners::addr(&listeners.tls),
            Listeners::addr(&listeners.http),
        );
        let (trigger, shutdown) = ShutdownTrigger::new();
        let index = self.index.clone();
        let storage = self.storage.clone();
        let task = tokio::spawn(self.run(listeners, shutdown));
        Ok(RunningNode {
            addr,
            tls_addr,
            http_addr,
            index,
            storage,
            trigger,
            task,
        })
    }

    /// Say where the node listens; its DICOM address (plain, else TLS).
    fn listening(&self, listeners: &Listeners) -> Result<SocketAddr, NodeError> {
        let tls_addr = Listeners::addr(&listeners.tls);
        let http_addr = Listeners::addr(&listeners.http);
        let addr = Listeners::addr(&listeners.plain)
            .or(tls_addr)
            .ok_or_else(|| NodeError::Bind {
                addr: "local address".into(),
                source: std::io::Error::other("no listener"),
            })?;
        info!(
            ae_title = %self.config.node.ae_title,
            %addr,
            tls = ?tls_addr,
            http = ?http_addr,
            replicas = self.storage.replicas().len(),
            write_quorum = self.storage.quorum().needed(),
            index = %self.index.path().display(),
            "pacsd listening"
        );
        Ok(addr)
    }
}

/// A node as one member of an HA pair: what its driver serves with while this node is
/// primary (the node's storage, TLS and audit trail, with the term's index and commit gate).
struct PairMember {
    config: Arc<Config>,
    storage: Arc<Storage>,
    tls: Option<TlsContext>,
    audit: Audit,
}

impl crate::ha::Service for PairMember {
    type Bound = Listeners;
    type Error = NodeError;

    async fn bind(&self, ip: std::net::IpAddr, freebind: bool) -> Result<Listeners, NodeError> {
        Listeners::bind(&self.config, ip, freebind).await
    }

    fn serve(
        &self,
        bound: Listeners,
        index: Index,
        gate: Arc<dyn crate::index::CommitGate>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static {
        let node = Node {
            config: self.config.clone(),
            index,
            storage: self.storage.clone(),
            gate: Some(gate),
            tls: self.tls.clone(),
            audit: self.audit.clone(),
        };
        node.run(bound, shutdown)
    }

    async fn reconcile(&self, index: &Index) -> Result<u64, NodeError> {
        Ok(crate::archive::maintenance::recover_from_storage(index, &self.storage).await?)
    }
}

impl RunningNode {
    /// Stop accepting, let open associations finish their message, and wait.
    pub async fn stop(self) {
        self.trigger.trigger();
        let _ = self.task.await;
    }

    /// Wait until the node stops by itself (never, unless it is triggered elsewhere).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    pub fn trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }
}
