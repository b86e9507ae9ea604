//! The `pacsd` command line (clap lives here and nowhere else): `serve` runs the node
//! (`node`), `echo`, `store`, `find`, `move` and `get` are SCU tools (`scu`), `ha`, `account`,
//! `storage`, `index`, `preview` and `synth` administer it (`ha`, `account`, `admin`).

mod account;
mod admin;
mod ha;
mod node;
mod scu;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pacsd::config::Config;
use pacsd::net::scu::ScuOptions;

#[derive(Parser)]
#[command(
    name = "pacsd",
    version,
    about = "A DICOM archive node: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, DICOMweb and a web portal over replicated storage with a SQLite index"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum AccountCommand {
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
pub(crate) enum HaCommand {
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
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub(crate) enum StorageCommand {
    /// Check every indexed object on every replica (exists, size, checksum); bad copies are
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
pub(crate) enum IndexCommand {
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
pub(crate) enum ModelArg {
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
pub(crate) struct RetrieveArgs {
    /// Information model.
    #[arg(long, value_enum, default_value = "study")]
    pub(crate) model: ModelArg,
    /// Query/Retrieve level: PATIENT, STUDY, SERIES or IMAGE.
    #[arg(long, short, default_value = "STUDY")]
    pub(crate) level: String,
    /// Unique keys as Keyword=value (e.g. StudyInstanceUID=1.2.3).
    #[arg(long = "key", short = 'k')]
    pub(crate) keys: Vec<String>,
    /// Do not draw a progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

impl RetrieveArgs {
    pub(crate) fn spec(self) -> pacsd::tools::FindSpec {
        pacsd::tools::FindSpec::retrieve(self.model.into(), self.level, self.keys)
    }
}

#[derive(Args, Clone)]
pub(crate) struct Remote {
    /// Host of the remote node.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port of the remote node.
    #[arg(long, short, default_value_t = 11112)]
    pub(crate) port: u16,
    /// AE title of the remote node (called AE).
    #[arg(long, default_value = "PACSD")]
    pub(crate) called: String,
    /// Our AE title (calling AE).
    #[arg(long, default_value = "PACSD_SCU")]
    pub(crate) calling: String,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) timeout: f64,
}

impl Remote {
    pub(crate) fn options(&self) -> ScuOptions {
        ScuOptions {
            addr: format!("{}:{}", self.host, self.port),
            calling_ae: self.calling.clone(),
            called_ae: self.called.clone(),
            timeout: Duration::from_secs_f64(self.timeout.max(0.1)),
            tls: None,
        }
    }
}

/// Run one command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            port,
            http_port,
        } => node::serve(config, port, http_port).await,
        Command::Witness {
            listen,
            dir,
            nodes,
            key_file,
        } => node::witness(listen, dir, nodes, key_file).await,
        Command::Account { command } => account::run(command).await,
        Command::Ha { command } => ha::run(command).await,
        Command::Echo(remote) => scu::echo(remote).await,
        Command::Store {
            remote,
            jobs,
            no_progress,
            paths,
        } => scu::store(remote, jobs, no_progress, paths).await,
        Command::Find {
            remote,
            model,
            level,
            keys,
            charset,
            relational,
            json,
        } => scu::find(remote, model, level, keys, charset, relational, json).await,
        Command::FindLatency {
            remote,
            model,
            rounds,
            queries,
        } => scu::find_latency(remote, model, rounds, queries).await,
        Command::Move { remote, dest, what } => scu::move_to(remote, dest, what).await,
        Command::Get { remote, out, what } => scu::get_into(remote, out, what).await,
        Command::Preview {
            config,
            sop_instance_uid,
            study,
            out,
        } => admin::preview(config, sop_instance_uid, study, out).await,
        Command::Storage {
            command:
                StorageCommand::Bench {
                    replicas,
                    mbps,
                    sizes_mb,
                    rounds,
                },
        } => admin::storage_bench(replicas, mbps, sizes_mb, rounds).await,
        Command::Storage { command } => admin::storage(command).await,
        Command::Synth {
            out,
            studies,
            series,
            per_study,
            size,
            first_study,
        } => admin::synth(out, studies, series, per_study, size, first_study),
        Command::Index {
            command: IndexCommand::Rebuild { config },
        } => admin::index_rebuild(config).await,
        Command::Index {
            command:
                IndexCommand::FillSynthetic {
                    config,
                    studies,
                    series,
                    instances,
                    first_study,
                },
        } => admin::index_fill(config, studies, series, instances, first_study).await,
        Command::Index {
            command: IndexCommand::Stats { config },
        } => admin::index_stats(config).await,
    }
}

pub(crate) fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
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
pub(crate) fn exit_code(status: &pacsd::dimse::Status) -> ExitCode {
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(crate) async fn wait_for_signal() {
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
