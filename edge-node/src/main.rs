//! `edge-node`: the edgestore gateway daemon and the field engineer's tools.
//!
//! `run` is the daemon (`daemon.rs`: replica, QUIC sync, HTTP API, signals). The other
//! subcommands talk to a node running on the same data directory through its local API
//! (`client.rs`), and when none runs they open the data directory directly: `status`,
//! `shell`, `peers`, `backup`. `init` and `restore` create data directories. The CLI is
//! the only place that knows about flags, files and exit codes; README "Command line" and
//! "Configuration" are its reference.

mod api;
mod backup;
mod client;
mod compaction;
mod config;
mod daemon;
mod history;
mod identity;
mod json;
mod metrics;
mod peers;
mod render;
mod serve;
mod shell;
mod storage;
mod store_health;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgestore::{OpenOptions, Replica};

use client::Client;
use config::{Config, LogFormat, Overrides};
use identity::Identity;

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "store.redb";

#[derive(Parser)]
#[command(
    name = "edge-node",
    version,
    about = "edgestore gateway node: a CRDT-replicated SQL store for edge gateways",
    long_about = "edgestore gateway node: a CRDT-replicated SQL store for edge gateways.\n\n\
        Start a node with `edge-node run` (a data directory ./edge-data is created on first run), \
        then open its shell with `edge-node shell`. Settings come from flags, EDGE_NODE_* environment \
        variables and a TOML file (--config, or edge-node.toml in the data directory), in that order."
)]
struct Cli {
    /// Data directory holding the node key, the store and the peer list.
    #[arg(long, global = true, env = "EDGE_NODE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file [default: <data dir>/edge-node.toml if it exists].
    #[arg(long, global = true, env = "EDGE_NODE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bearer token for the HTTP API (required when it listens beyond loopback).
    #[arg(long, global = true, env = "EDGE_NODE_API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the node's key pair and an empty store.
    Init,
    /// Run the node: peer sync over QUIC and the local HTTP API, until SIGTERM or Ctrl-C.
    ///
    /// On first run the data directory is created and initialised. The node prints its id
    /// and addresses; other nodes list it with `edge-node peers add <NODE_ID> <IP:PORT>`.
    Run(RunArgs),
    /// Print the node id, addresses, tables, changes, digest and integrity.
    ///
    /// Asks the running node if there is one, otherwise reads the data directory.
    Status {
        /// Print where the store's bytes and memory go instead: per redb table and per
        /// user table (reads every page; proportional to the store).
        #[arg(long)]
        storage: bool,
    },
    /// Open the SQL shell on the node (or, with no node running, on its data directory).
    ///
    /// Statements end with ';'. With -c, or when standard input is not a terminal, the
    /// statements run as a script that stops at the first error (exit code 1).
    Shell {
        /// Run these statements and dot-commands, then exit.
        #[arg(short = 'c', long = "command", value_name = "SQL")]
        command: Option<String>,
        /// Talk to the node whose API is at this URL instead of the one on the data directory.
        #[arg(long, value_name = "URL", env = "EDGE_NODE_URL")]
        url: Option<String>,
    },
    /// List, add or remove the peers this node syncs with.
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Write a consistent copy of the store to FILE (from the running node, if any).
    Backup {
        /// Where to write the backup (must not exist).
        file: PathBuf,
    },
    /// Create a new data directory from a backup, under a new node identity.
    ///
    /// The restored node holds the backup's data but is a new node: add its new id to the
    /// other nodes' peers. The old identity is never reused, so nothing it wrote can clash.
    Restore {
        /// The backup file written by `edge-node backup`.
        file: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Cluster name; nodes of different clusters refuse each other [default: default].
    #[arg(long, env = "EDGE_NODE_CLUSTER", value_name = "NAME")]
    cluster: Option<String>,
    /// UDP address for peer sync (QUIC) [default: 127.0.0.1:7400].
    #[arg(long, env = "EDGE_NODE_SYNC_LISTEN", value_name = "IP:PORT")]
    sync_listen: Option<SocketAddr>,
    /// TCP address of the HTTP API [default: 127.0.0.1:7480].
    #[arg(long, env = "EDGE_NODE_API_LISTEN", value_name = "IP:PORT")]
    api_listen: Option<SocketAddr>,
    /// Log format [default: text].
    #[arg(long, env = "EDGE_NODE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,sync_protocol=debug` [default: info].
    #[arg(long, env = "EDGE_NODE_LOG", value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum PeersCommand {
    /// Show the peers with their connection state and sync lag.
    List,
    /// Add a peer (or change its address); it must also add this node.
    Add {
        /// The peer's node id, as its `edge-node status` prints it.
        node_id: String,
        /// The peer's sync address (IP:PORT, UDP).
        addr: SocketAddr,
    },
    /// Remove a peer: stop syncing with it and refuse its connections.
    Remove {
        /// The peer's node id.
        node_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edge-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let mut overrides =
        Overrides { data_dir: cli.data_dir, config: cli.config, api_token: cli.api_token, ..Overrides::default() };
    if let Command::Run(args) = &cli.command {
        overrides.cluster = args.cluster.clone();
        overrides.sync_listen = args.sync_listen;
        overrides.api_listen = args.api_listen;
        overrides.log_format = args.log_format;
        overrides.log_level = args.log_level.clone();
    }
    let config = Config::load(&overrides)?;
    let data_dir = config.data_dir.clone();
    match cli.command {
        Command::Init => init(&data_dir).map(|identity| {
            println!("initialised node {} in {}", identity.node_id, data_dir.display());
        }),
        Command::Run(_) => daemon::run(config),
        Command::Status { storage: false } => status(&config),
        Command::Status { storage: true } => storage_status(&config),
        Command::Shell { command, url } => {
            let history = data_dir.join("shell_history");
            let backend = match url {
                Some(url) => shell::Backend::Remote(Client::new(&url, config.api_token.clone())?),
                None => match Client::discover(&data_dir, config.api_token.clone())? {
                    Some(client) => shell::Backend::Remote(client),
                    None => shell::Backend::Local(open(&data_dir, &config.open_options())?.1),
                },
            };
            shell::main(backend, command, &history, config.statement_memory_mib << 20)
        }
        Command::Peers(command) => peers::main(&config, command),
        Command::Backup { file } => backup::backup(&config, &file),
        Command::Restore { file } => backup::restore(&data_dir, &file),
    }
}

/// Milliseconds since the Unix epoch: the commit time of writes made here.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn init(data_dir: &Path) -> Result<Identity> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let identity = Identity::create(data_dir)?;
    Replica::open(data_dir.join(STORE_FILE), identity.node_id).context("creating the store")?;
    Ok(identity)
}

/// Opens the node's identity and store.
pub fn open(data_dir: &Path, options: &OpenOptions) -> Result<(Identity, Replica)> {
    let identity = Identity::load(data_dir)
        .with_context(|| format!("no node in {} (run `edge-node init` first)", data_dir.display()))?;
    let store = data_dir.join(STORE_FILE);
    let replica = open_store(data_dir, identity.node_id, options)
        .with_context(|| format!("opening {} (if a node is running on it, stop it or use its API)", store.display()))?;
    Ok((identity, replica))
}

/// Opens the store file of a data directory (also how the daemon reopens it after a fault).
pub fn open_store(
    data_dir: &Path,
    node_id: edgestore::NodeId,
    options: &OpenOptions,
) -> Result<Replica, edgestore::OpenError> {
    Replica::open_with(data_dir.join(STORE_FILE), node_id, options)
}

/// Opens the node, initialising the data directory on first use.
pub fn open_or_init(data_dir: &Path, options: &OpenOptions) -> Result<(Identity, Replica)> {
    if !data_dir.join(identity::KEY_FILE).exists() {
        let identity = init(data_dir)?;
        tracing::info!(node = %identity.node_id, data_dir = %data_dir.display(), "first run: initialised the node");
    }
    open(data_dir, options)
}

fn status(config: &Config) -> Result<()> {
    if let Some(client) = Client::discover(&config.data_dir, config.api_token.clone())? {
        return remote_status(&client);
    }
    let (identity, replica) = open(&config.data_dir, &config.open_options())?;
    println!("node id:    {}", identity.node_id);
    let public_key = json::hex(identity.key_pair.public_key_raw());
    println!("public key: ed25519 {public_key}");
    println!("data dir:   {}", config.data_dir.display());
    println!("running:    no");
    let tables: Vec<&str> = replica.catalog().live_tables().map(|t| t.schema.name.as_str()).collect();
    println!("tables:     {}", if tables.is_empty() { "(none)".to_string() } else { tables.join(", ") });
    let vector = replica.version_vector();
    println!("changes:    {} from {} node(s)", vector.total_changes(), vector.len());
    println!("digest:     {}", replica.state_digest().context("computing the state digest")?);
    let problems = replica.check_integrity().context("checking integrity")?;
    report_integrity(&problems.iter().map(ToString::to_string).collect::<Vec<_>>())
}

fn storage_status(config: &Config) -> Result<()> {
    let breakdown = match Client::discover(&config.data_dir, config.api_token.clone())? {
        Some(client) => client.get("/v1/storage")?,
        None => storage::of_replica(&open(&config.data_dir, &config.open_options())?.1)?,
    };
    print!("{}", storage::render(&breakdown));
    Ok(())
}

fn remote_status(client: &Client) -> Result<()> {
    let status = client.get("/v1/status")?;
    let text = |key: &str| json::as_text(&status[key]);
    println!("node id:    {}", text("node_id"));
    println!("data dir:   {}", text("data_dir"));
    println!("running:    yes, up {} s (cluster {})", text("uptime_s"), text("cluster"));
    println!("sync:       quic://{}", text("sync_addr"));
    println!("http api:   {}", client.url());
    let tables: Vec<String> =
        status["tables"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect();
    println!("tables:     {}", if tables.is_empty() { "(none)".to_string() } else { tables.join(", ") });
    println!("changes:    {} from {} node(s), {} pending", text("changes"), text("origins"), text("pending_changes"));
    println!("peers:      {} connected", text("peers_connected"));
    println!("health:     {}", health_line(&status["health"]));
    println!("digest:     {}", text("digest"));
    let check = client.post("/v1/check", &serde_json::json!({}))?;
    let problems: Vec<String> = check["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    report_integrity(&problems)
}

/// The store's health of `/v1/status` in one line: `ok`, or its status and why.
pub fn health_line(health: &serde_json::Value) -> String {
    match (health["status"].as_str(), health["error"].as_str()) {
        (Some("ok"), _) => "ok".to_string(),
        (Some(status), Some(error)) => format!("{status}: {error}"),
        _ => health.to_string(),
    }
}

fn report_integrity(problems: &[String]) -> Result<()> {
    if problems.is_empty() {
        println!("integrity:  ok");
        return Ok(());
    }
    for problem in problems {
        println!("integrity:  {problem}");
    }
    anyhow::bail!("{} integrity problem(s)", problems.len())
}
