//! The `pacsd` command line: `serve` runs the node; `echo`, `store` are SCU tools; `index`
//! maintains the index.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pacsd::config::Config;
use pacsd::net::scu::ScuOptions;
use pacsd::node::Node;

#[derive(Parser)]
#[command(
    name = "pacsd",
    version,
    about = "A DICOM archive node: C-ECHO and C-STORE into replicated storage with a SQLite index"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node. Without --config it runs on the embedded default: AE title PACSD,
    /// port 11112, index and three local replica directories under ./data.
    Serve {
        /// Node configuration (see ae-config/pacsd.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the listening port.
        #[arg(long)]
        port: Option<u16>,
        /// Override the HTTP (DICOMweb) port.
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// Send a C-ECHO to a DICOM node and print the status and round-trip time.
    Echo(Remote),
    /// Send DICOM files (directories are walked recursively) with C-STORE.
    Store {
        #[command(flatten)]
        remote: Remote,
        /// Parallel associations.
        #[arg(long, short, default_value_t = 1)]
        jobs: usize,
        /// Do not draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Files or directories to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Query a DICOM node with C-FIND and print the matches as a table or JSON.
    Find {
        #[command(flatten)]
        remote: Remote,
        /// Information model.
        #[arg(long, value_enum, default_value = "study")]
        model: ModelArg,
        /// Query/Retrieve level: PATIENT, STUDY, SERIES or IMAGE.
        #[arg(long, short, default_value = "STUDY")]
        level: String,
        /// Key as Keyword=value or gggg,eeee=value; an empty value asks for the attribute.
        #[arg(long = "key", short = 'k')]
        keys: Vec<String>,
        /// Specific Character Set of the query, e.g. "ISO_IR 192".
        #[arg(long)]
        charset: Option<String>,
        /// Ask for relational queries (extended negotiation).
        #[arg(long)]
        relational: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time C-FIND queries over one association: each --query runs --rounds times; prints
    /// p50/p99 latency per query.
    FindLatency {
        #[command(flatten)]
        remote: Remote,
        /// Information model.
        #[arg(long, value_enum, default_value = "study")]
        model: ModelArg,
        /// Runs of each query.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// A query as LABEL|LEVEL|Key=value;Key=value (repeatable).
        #[arg(long = "query", short = 'q', required = true)]
        queries: Vec<String>,
    },
    /// Ask a DICOM node to send instances to a destination AE with C-MOVE.
    Move {
        #[command(flatten)]
        remote: Remote,
        /// Destination AE title (must be known to the remote node).
        #[arg(long)]
        dest: String,
        #[command(flatten)]
        what: RetrieveArgs,
    },
    /// Retrieve instances from a DICOM node with C-GET into a directory.
    Get {
        #[command(flatten)]
        remote: Remote,
        /// Directory the received files are written to (named by SOP Instance UID).
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        what: RetrieveArgs,
    },
    /// Write synthetic CT-like instances (for tests and benchmarks).
    Synth {
        /// Output directory.
        #[arg(long, short)]
        out: PathBuf,
        /// Number of studies.
        #[arg(long, default_value_t = 1)]
        studies: u32,
        /// Series per study.
        #[arg(long, default_value_t = 1)]
        series: u32,
        /// Images per series.
        #[arg(long, default_value_t = 10)]
        per_study: u32,
        /// Rows and columns of each image (0 = no pixel data).
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// Number of the first study (keeps UIDs of separate corpora apart).
        #[arg(long, default_value_t = 1)]
        first_study: u32,
    },
    /// Write the JPEG preview of an instance (the stored one, or rendered now when it is not
    /// stored yet), or with --study a contact sheet of the first image of each series.
    Preview {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// SOP Instance UID of the instance.
        #[arg(required_unless_present = "study", conflicts_with = "study")]
        sop_instance_uid: Option<String>,
        /// Study Instance UID: write a contact sheet of the study's series instead.
        #[arg(long)]
        study: Option<String>,
        /// Output JPEG file.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Replica maintenance.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Index maintenance.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// High availability: status, planned switchover, planned stop and maintenance of a pair
    /// member.
    Ha {
        #[command(subcommand)]
        command: HaCommand,
    },
    /// Accounts of the HTTP side (DICOMweb and portal): add, list, remove, set a password,
    /// issue or revoke API tokens. Works while the node runs. Also `pacsd user ...`.
    #[command(alias = "user")]
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Run a witness: the arbiter that grants each HA epoch once, for a two-node site
    /// (`[ha] arbiter = "witness://HOST:PORT"` on both nodes).
    Witness {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// Directory where granted epochs are recorded.
        #[arg(long)]
        dir: PathBuf,
        /// A node id allowed to claim epochs (repeat for each node of the pair).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// The pair's shared key (the nodes' `[ha] key_file`): requests not signed with it
        /// are refused, and every answer is signed with it.
        #[arg(long)]
        key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; the password is read from standard input (one line).
    Add {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
        /// Rights: read, upload, admin (comma-separated; admin includes the others), or a
        /// portal role: viewer (read), uploader (read,upload), admin.
        #[arg(long, alias = "role", default_value = "read")]
        rights: String,
    },
    /// List the accounts, their rights and how many tokens each has.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove an account and its tokens (also `del`).
    #[command(alias = "del")]
    Remove {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
    },
    /// Set a new password, read from standard input (one line) (also `passwd`).
    #[command(alias = "passwd")]
    Password {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
    },
    /// Issue an API token (printed once; only its digest is kept) for bearer authentication.
    Token {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
        /// What the token is for (to revoke it later), e.g. the viewer's name.
        #[arg(long, default_value = "api")]
        label: String,
    },
    /// Revoke the tokens of an account with this label.
    Revoke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        name: String,
        #[arg(long, default_value = "api")]
        label: String,
    },
}

#[derive(Subcommand)]
enum HaCommand {
    /// Role, epoch, lease, peer, replication lag and service IP of the node.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand the primary role over to the standby (run on the primary; the standby must
    /// have caught up).
    Switchover {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Stop the node as SIGTERM does (a paired primary hands over to the standby first);
    /// returns once it has stopped.
    Stop {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Maintenance on: the node never becomes primary (a primary serves on); off: it may
    /// again. Persisted beside the index; recorded directly if the node is not running.
    Maintenance {
        #[arg(value_enum)]
        state: OnOff,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Check every indexed object on every replica (exists, size, SHA-256); bad copies are
    /// queued for repair. Exit status 1 when any was found.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Heal every replica copy in the repair queue from a good copy (the node's background
    /// worker does the same periodically).
    Repair {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Read benchmark of a replica set: one GET from the fastest replica, an equal split
    /// across replicas, and pacsd's adaptive striped read, per object size. Without
    /// --replica, three local replicas are made in a temporary directory and slowed to
    /// --mbps (default 20,40,80 MB/s).
    Bench {
        /// A replica URL (repeatable; as in [storage].replicas), e.g. Garage buckets.
        #[arg(long = "replica")]
        replicas: Vec<String>,
        /// Slow replica i to the i-th speed in MB/s (comma-separated).
        #[arg(long, value_delimiter = ',')]
        mbps: Vec<f64>,
        /// Object sizes in MB (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "0.5,8,64")]
        sizes_mb: Vec<f64>,
        /// Timed reads of each kind per size (the median is printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Rebuild the index from the objects in storage (run with the node stopped; the old
    /// database is kept as .bak).
    Rebuild {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Fill the index with synthetic studies directly, without objects (for query
    /// benchmarks; run with the node stopped).
    FillSynthetic {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Number of studies.
        #[arg(long, default_value_t = 1000)]
        studies: u32,
        /// Series per study.
        #[arg(long, default_value_t = 5)]
        series: u32,
        /// Instances per series.
        #[arg(long, default_value_t = 10)]
        instances: u32,
        /// Number of the first study.
        #[arg(long, default_value_t = 1)]
        first_study: u32,
    },
    /// Print row counts and the repair queue length.
    Stats {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Which Query/Retrieve information model a query or retrieve uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModelArg {
    Patient,
    Study,
}

impl From<ModelArg> for pacsd::tools::Model {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Patient => pacsd::tools::Model::PatientRoot,
            ModelArg::Study => pacsd::tools::Model::StudyRoot,
        }
    }
}

/// What to retrieve (C-MOVE, C-GET).
#[derive(Args, Clone)]
struct RetrieveArgs {
    /// Information model.
    #[arg(long, value_enum, default_value = "study")]
    model: ModelArg,
    /// Query/Retrieve level: PATIENT, STUDY, SERIES or IMAGE.
    #[arg(long, short, default_value = "STUDY")]
    level: String,
    /// Unique keys as Keyword=value (e.g. StudyInstanceUID=1.2.3).
    #[arg(long = "key", short = 'k')]
    keys: Vec<String>,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl RetrieveArgs {
    fn spec(self) -> pacsd::tools::FindSpec {
        pacsd::tools::FindSpec::retrieve(self.model.into(), self.level, self.keys)
    }
}

#[derive(Args, Clone)]
struct Remote {
    /// Host of the remote node.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the remote node.
    #[arg(long, short, default_value_t = 11112)]
    port: u16,
    /// AE title of the remote node (called AE).
    #[arg(long, default_value = "PACSD")]
    called: String,
    /// Our AE title (calling AE).
    #[arg(long, default_value = "PACSD_SCU")]
    calling: String,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

impl Remote {
    fn options(&self) -> ScuOptions {
        ScuOptions {
            addr: format!("{}:{}", self.host, self.port),
            calling_ae: self.calling.clone(),
            called_ae: self.called.clone(),
            timeout: Duration::from_secs_f64(self.timeout.max(0.1)),
            tls: None,
        }
    }
}

/// `pacsd account ...`: on the index named by the configuration.
async fn account(command: AccountCommand) -> anyhow::Result<ExitCode> {
    use pacsd::index::account::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Rights, validate_name};
    let read_password = || -> anyhow::Result<String> {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&pw.chars().count()) {
            anyhow::bail!("a password has {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters");
        }
        Ok(pw)
    };
    let open = |c: &Option<PathBuf>| -> anyhow::Result<pacsd::index::Index> {
        let config = load_config(c.as_ref())?;
        Ok(pacsd::index::Index::open(&config.index.path)?)
    };
    match command {
        AccountCommand::Add {
            config,
            name,
            rights,
        } => {
            validate_name(&name).map_err(anyhow::Error::msg)?;
            let rights = Rights::parse(&rights).map_err(anyhow::Error::msg)?;
            let password = read_password()?;
            open(&config)?.add_account(&name, &password, rights).await?;
            println!("account {name} ({}) added", rights.to_text());
        }
        AccountCommand::List { config } => {
            for (a, tokens) in open(&config)?.accounts().await? {
                println!("{:<24} {:<16} {tokens} tokens", a.name, a.rights.to_text());
            }
        }
        AccountCommand::Remove { config, name } => {
            if !open(&config)?.remove_account(&name).await? {
                anyhow::bail!("no account {name}");
            }
            println!("account {name} removed");
        }
        AccountCommand::Password { config, name } => {
            let password = read_password()?;
            if !open(&config)?.set_password(&name, &password).await? {
                anyhow::bail!("no account {name}");
            }
            println!(
                "password of {name} changed (a running node accepts the old one for up to a minute)"
            );
        }
        AccountCommand::Token {
            config,
            name,
            label,
        } => {
            let index = open(&config)?;
            if index.account_secret(&name).await?.is_none() {
                anyhow::bail!("no account {name}");
            }
            println!("{}", index.issue_token(&name, &label).await?);
        }
        AccountCommand::Revoke {
            config,
            name,
            label,
        } => {
            let n = open(&config)?.revoke_tokens(&name, &label).await?;
            println!("{n} tokens revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => {
            let c = Config::default();
            c.validate()?;
            Ok(c)
        }
    }
}

/// 0 for a Success status, 1 otherwise.
fn exit_code(status: &pacsd::dimse::Status) -> ExitCode {
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pacsd=info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `pacsd storage bench`: build the replica set, run the benchmark, print one table.
async fn storage_bench(
    urls: Vec<String>,
    mut mbps: Vec<f64>,
    sizes_mb: Vec<f64>,
    rounds: usize,
) -> anyhow::Result<ExitCode> {
    use pacsd::storage::{Location, Storage, bench};
    let tmp;
    let urls = if urls.is_empty() {
        tmp = tempfile::tempdir().context("making a temporary directory")?;
        if mbps.is_empty() {
            mbps = vec![20.0, 40.0, 80.0];
        }
        (0..mbps.len())
            .map(|i| tmp.path().join(format!("r{i}")).display().to_string())
            .collect()
    } else {
        urls
    };
    anyhow::ensure!(
        mbps.is_empty() || mbps.len() == urls.len(),
        "--mbps gives {} speeds for {} replicas",
        mbps.len(),
        urls.len()
    );
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let mut stores = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let store = Location::parse(url)
            .and_then(|l| l.open())
            .map_err(|e| anyhow::anyhow!("replica {url}: {e}"))?;
        let store = match mbps.get(i) {
            Some(&m) => bench::throttled(store, m),
            None => store,
        };
        let name = match mbps.get(i) {
            Some(m) => format!("replica {} ({m} MB/s)", i + 1),
            None => format!("replica {}", i + 1),
        };
        stores.push((name, store));
    }
    let storage = Storage::from_stores(stores.clone(), None, "bench")?;
    let sizes: Vec<u64> = sizes_mb.iter().map(|m| (m * 1e6) as u64).collect();
    let rows = bench::run(&storage, &stores, &sizes, rounds).await?;
    let names: Vec<&str> = stores.iter().map(|(n, _)| n.as_str()).collect();
    println!("replicas: {}; {rounds} rounds, medians", names.join(", "));
    println!(
        "{:>8} {:>22} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8} {:>10}  adaptive bytes per replica",
        "size MB",
        "alone MB/s",
        "(a) single",
        "(a)+sha256",
        "(b) equal",
        "(c) adaptive",
        "c/sum",
        "c/a",
        "c/(a+sha)"
    );
    for r in &rows {
        let solo: Vec<String> = r.solo.iter().map(|b| format!("{:.1}", b / 1e6)).collect();
        println!(
            "{:>8.1} {:>22} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>7.0}% {:>8.2} {:>10.2}  {:?}",
            r.size as f64 / 1e6,
            solo.join("/"),
            r.mbps(r.single_fastest),
            r.mbps(r.single_checked),
            r.mbps(r.equal_split),
            r.mbps(r.adaptive),
            100.0 * r.mbps(r.adaptive) * 1e6 / r.summed_bandwidth(),
            r.single_fastest / r.adaptive,
            r.single_checked / r.adaptive,
            r.adaptive_bytes_from
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    // dicom-rs's errors capture a backtrace whenever RUST_BACKTRACE is set, and its parser
    // makes one at the end of every data set and command set it reads (1.2% of pacsd's CPU
    // in a C-MOVE): library backtraces stay off unless asked for by RUST_LIB_BACKTRACE, while
    // RUST_BACKTRACE keeps its meaning for panics. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread runs yet (the runtime is built below).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("pacsd: cannot start the runtime: {e}");
            ExitCode::from(2)
        }
    }
}

async fn async_main() -> ExitCode {
    init_tracing();
    // A panic in pacsd's own code aborts (an HA peer takes over from a known state); one in a
    // decoder working on outside bytes is contained and answered with a failure status.
    pacsd::dataset::install_panic_hook();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pacsd: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            port,
            http_port,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(p) = port {
                config.node.port = p;
            }
            if let Some(p) = http_port {
                config.http.port = p;
            }
            let deadline = config.timeouts.shutdown();
            let pair = config.ha.is_some();
            let (trigger, shutdown) = pacsd::net::ShutdownTrigger::new();
            let mut node = tokio::spawn(Node::open(config)?.serve(shutdown));
            tokio::select! {
                r = &mut node => return Ok(r??).map(|()| ExitCode::SUCCESS),
                _ = wait_for_signal() => {}
            }
            if pair {
                tracing::info!("signal received: stepping down, then stopping");
            } else {
                tracing::info!("signal received: finishing in-flight messages, then stopping");
            }
            trigger.trigger();
            match tokio::time::timeout(deadline + Duration::from_secs(5), node).await {
                Ok(r) => r??,
                Err(_) => anyhow::bail!("shutdown did not finish within {deadline:?}"),
            }
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Witness {
            listen,
            dir,
            nodes,
            key_file,
        } => {
            let key = pacsd::ha::driver::read_key(&key_file)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let (trigger, shutdown) = pacsd::net::ShutdownTrigger::new();
            let task = tokio::spawn(async move {
                pacsd::ha::arbiter::run_witness(listener, &dir, &nodes, key, shutdown).await
            });
            wait_for_signal().await;
            trigger.trigger();
            task.await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Account { command } => account(command).await,
        Command::Ha { command } => {
            use pacsd::ha::driver::{
                ControlReply, ControlRequest, control, control_path, maintenance_path,
                set_maintenance,
            };
            let (config, req, json) = match command {
                HaCommand::Status { config, json } => (config, ControlRequest::Status, json),
                HaCommand::Switchover { config } => (config, ControlRequest::Switchover, false),
                HaCommand::Stop { config } => (config, ControlRequest::Stop, false),
                HaCommand::Maintenance { state, config } => (
                    config,
                    ControlRequest::Maintenance {
                        on: matches!(state, OnOff::On),
                    },
                    false,
                ),
            };
            let config = load_config(config.as_ref())?;
            let ha = config
                .ha
                .as_ref()
                .context("this configuration has no [ha] section")?;
            let socket = control_path(&config, ha);
            let reply = match (control(&socket, &req).await, &req) {
                (Ok(r), _) => r,
                (Err(e), ControlRequest::Maintenance { on })
                    if std::os::unix::net::UnixStream::connect(&socket).is_err_and(|e| {
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        )
                    }) =>
                {
                    // Not running: recorded now, in effect when it starts.
                    let path = maintenance_path(&config);
                    set_maintenance(&path, *on)
                        .with_context(|| format!("recording maintenance in {}", path.display()))?;
                    tracing::debug!(error = %e, "node not reachable");
                    ControlReply::Ok(format!(
                        "the node is not running: maintenance {} recorded in {}; it applies when the node starts",
                        if *on { "on" } else { "off" },
                        path.display()
                    ))
                }
                (Err(e), _) => return Err(anyhow::anyhow!(e)),
            };
            if let (ControlRequest::Stop, ControlReply::Ok(m)) = (&req, &reply) {
                // The node removes its control socket as it exits.
                println!("{m}");
                let deadline = std::time::Instant::now()
                    + config.timeouts.shutdown() * 3
                    + pacsd::ha::role::Timing::of(ha).dead_after() * 2;
                while std::fs::exists(&socket).unwrap_or(false) {
                    if std::time::Instant::now() > deadline {
                        eprintln!("pacsd: the node has not stopped yet");
                        return Ok(ExitCode::from(1));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                println!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            match reply {
                ControlReply::Status(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                }
                ControlReply::Status(s) => {
                    println!("node {}: {} in epoch {}", s.node, s.role, s.epoch);
                    if s.maintenance {
                        println!("in maintenance: will not become primary");
                    }
                    if let Some(p) = &s.planned {
                        println!("planned {p} under way: draining associations, then handing over");
                    }
                    if s.standby_ready == Some(false) {
                        println!("no standby ready to take over");
                    }
                    if let Some(l) = s.lease_ms {
                        println!("lease: {l} ms left");
                    }
                    match &s.peer {
                        Some(p) => println!(
                            "peer {}: {} in epoch {}, last heard {} ms ago, index seq {}",
                            p.node,
                            if p.primary { "primary" } else { "standby" },
                            p.epoch,
                            p.heard_ms_ago,
                            p.seq
                        ),
                        None => println!("peer: never heard"),
                    }
                    if let Some(p) = s.peer.as_ref().filter(|p| p.maintenance) {
                        println!("peer {} is in maintenance", p.node);
                    }
                    println!(
                        "index seq {}, replication lag {}",
                        s.seq,
                        s.replication_lag
                            .map_or("unknown".to_string(), |l| l.to_string())
                    );
                    if let Some(ip) = &s.service_ip {
                        println!(
                            "service IP {ip}: {}",
                            if s.holds_service_ip {
                                "held here"
                            } else {
                                "not held here"
                            }
                        );
                    }
                }
                ControlReply::Ok(m) => println!("{m}"),
                ControlReply::Error(e) => {
                    eprintln!("pacsd: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo(remote) => {
            let (code, rtt) = pacsd::tools::echo(&remote.options()).await?;
            println!(
                "C-ECHO {}:{} ({}): status {code:04X} in {:.1} ms",
                remote.host,
                remote.port,
                remote.called,
                rtt.as_secs_f64() * 1e3
            );
            Ok(if code == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Store {
            remote,
            jobs,
            no_progress,
            paths,
        } => {
            let files = pacsd::tools::collect_files(&paths)?;
            let s = pacsd::tools::store(&remote.options(), files, jobs, !no_progress).await?;
            for (path, why) in &s.failures {
                eprintln!("failed: {}: {why}", path.display());
            }
            println!(
                "{} stored ({} with warnings), {} failed, {:.1} MB in {:.2} s: {:.1} instances/s, {:.1} MB/s",
                s.succeeded,
                s.warnings,
                s.failed,
                s.bytes as f64 / 1e6,
                s.elapsed.as_secs_f64(),
                s.per_second(),
                s.mb_per_second()
            );
            Ok(if s.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Find {
            remote,
            model,
            level,
            keys,
            charset,
            relational,
            json,
        } => {
            let spec = pacsd::tools::FindSpec {
                model: model.into(),
                level,
                keys,
                charset,
                relational,
                cancel_after: None,
            };
            let r = pacsd::tools::find(&remote.options(), &spec).await?;
            if json {
                println!("{}", r.to_json());
            } else {
                println!("{}", r.to_table());
            }
            eprintln!(
                "{} match(es); final status {:04X}{}",
                r.matches.len(),
                r.status.code,
                r.status
                    .comment
                    .as_ref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
            Ok(if r.status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::FindLatency {
            remote,
            model,
            rounds,
            queries,
        } => {
            let mut parsed = Vec::new();
            for q in &queries {
                let mut parts = q.splitn(3, '|');
                let (Some(label), Some(level), keys) = (parts.next(), parts.next(), parts.next())
                else {
                    anyhow::bail!("--query `{q}` is not LABEL|LEVEL|Key=value;...");
                };
                let keys = keys
                    .unwrap_or("")
                    .split(';')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect();
                let spec = pacsd::tools::FindSpec {
                    model: model.into(),
                    level: level.to_string(),
                    keys,
                    charset: None,
                    relational: false,
                    cancel_after: None,
                };
                parsed.push((label.to_string(), spec));
            }
            let reports =
                pacsd::tools::find_latency(&remote.options(), model.into(), &parsed, rounds)
                    .await?;
            println!(
                "{:<24} {:>8} {:>10} {:>10} {:>10} {:>7}",
                "query", "matches", "p50 ms", "p99 ms", "max ms", "status"
            );
            for r in &reports {
                println!(
                    "{:<24} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>7}",
                    r.label,
                    r.matches,
                    r.quantile(0.5).as_secs_f64() * 1e3,
                    r.quantile(0.99).as_secs_f64() * 1e3,
                    r.quantile(1.0).as_secs_f64() * 1e3,
                    format!("{:04X}", r.status)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Move { remote, dest, what } => {
            let progress = !what.no_progress;
            let r = pacsd::tools::move_to(&remote.options(), &what.spec(), &dest, progress).await?;
            println!("C-MOVE to {dest}: {r}");
            Ok(exit_code(&r.status))
        }
        Command::Get { remote, out, what } => {
            let progress = !what.no_progress;
            let r = pacsd::tools::get_into(&remote.options(), &what.spec(), &out, progress).await?;
            println!("C-GET into {}: {r}", out.display());
            Ok(exit_code(&r.status))
        }
        Command::Preview {
            config,
            sop_instance_uid,
            study,
            out,
        } => {
            let node = Node::open(load_config(config.as_ref())?)?;
            let (jpeg, what) = match (sop_instance_uid, study) {
                (_, Some(study)) => {
                    let (jpeg, n) =
                        pacsd::render::fetch::contact_sheet(&node.index, &node.storage, &study)
                            .await?;
                    (
                        jpeg,
                        format!("contact sheet of {n} series of study {study}"),
                    )
                }
                (Some(sop), None) => (
                    pacsd::render::fetch::preview_of(&node.index, &node.storage, &sop).await?,
                    format!("preview of {sop}"),
                ),
                (None, None) => unreachable!("clap requires one of them"),
            };
            std::fs::write(&out, &jpeg).with_context(|| format!("writing {}", out.display()))?;
            println!("{what}: {} ({} bytes)", out.display(), jpeg.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Storage {
            command:
                StorageCommand::Bench {
                    replicas,
                    mbps,
                    sizes_mb,
                    rounds,
                },
        } => storage_bench(replicas, mbps, sizes_mb, rounds).await,
        Command::Storage { command } => {
            let (config, verify) = match command {
                StorageCommand::Verify { config } => (config, true),
                StorageCommand::Repair { config } => (config, false),
                StorageCommand::Bench { .. } => unreachable!("handled above"),
            };
            let node = Node::open(load_config(config.as_ref())?)?;
            if verify {
                let s = pacsd::archive::maintenance::verify_all(&node.index, &node.storage, true)
                    .await?;
                println!(
                    "{} objects and {} previews checked on {} replicas: {} bad copies (queued for repair)",
                    s.objects,
                    s.previews,
                    node.storage.replicas().len(),
                    s.bad_copies
                );
                Ok(if s.bad_copies == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            } else {
                let s =
                    pacsd::archive::maintenance::repair_pass(&node.index, &node.storage).await?;
                let left = node.index.counts().await?.repair_queue;
                println!(
                    "{} repaired, {} failed, {} dropped; {left} left in the repair queue",
                    s.repaired, s.failed, s.dropped
                );
                Ok(if left == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        }
        Command::Synth {
            out,
            studies,
            series,
            per_study,
            size,
            first_study,
        } => {
            let n = pacsd::synth::write_corpus(&out, first_study, studies, series, per_study, size)
                .map_err(anyhow::Error::msg)?;
            println!("wrote {n} instances under {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Index {
            command: IndexCommand::Rebuild { config },
        } => {
            let config = load_config(config.as_ref())?;
            let s = pacsd::archive::maintenance::rebuild_index(&config, true)
                .await
                .context("rebuilding the index")?;
            println!(
                "{} objects in storage: {} indexed, {} skipped (see log)",
                s.objects, s.indexed, s.skipped
            );
            Ok(if s.skipped == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Index {
            command:
                IndexCommand::FillSynthetic {
                    config,
                    studies,
                    series,
                    instances,
                    first_study,
                },
        } => {
            let config = load_config(config.as_ref())?;
            let total = u64::from(studies) * u64::from(series) * u64::from(instances);
            let bar = pacsd::tools::progress_bar(true, total);
            let records = (first_study..first_study + studies).flat_map(move |st| {
                (1..=series).flat_map(move |se| {
                    (1..=instances).map(move |n| {
                        pacsd::synth::record(&pacsd::synth::corpus_spec(st, se, n, 0))
                    })
                })
            });
            let path = config.index.path.clone();
            let n = tokio::task::spawn_blocking(move || {
                pacsd::index::bulk_load(&path, records, 10_000, |n| bar.set_position(n))
            })
            .await??;
            println!("{n} instances added to {}", config.index.path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Index {
            command: IndexCommand::Stats { config },
        } => {
            let config = load_config(config.as_ref())?;
            let index = pacsd::index::Index::open(&config.index.path)?;
            let c = index.counts().await?;
            let p = index.preview_counts().await?;
            println!(
                "patients {}\nstudies {}\nseries {}\ninstances {}\nchangelog {}\nrepair_queue {}\n\
                 previews_done {}\npreviews_pending {}\npreviews_none {}\npreviews_failed {}",
                c.patients,
                c.studies,
                c.series,
                c.instances,
                c.changelog,
                c.repair_queue,
                p.done,
                p.pending,
                p.none,
                p.failed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
