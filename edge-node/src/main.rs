//! `edge-node`: the edgestore gateway daemon and the field engineer's tools.
//!
//! `run` is the daemon (`daemon.rs`: replica, QUIC sync, HTTP API, signals). The other
//! subcommands talk to a node running on the same data directory through its local API
//! (`client.rs`), and when none runs they open the data directory directly: `status`,
//! `shell`, `peers`, `backup`. `init` and `restore` create data directories. The CLI is
//! the only place that knows about flags, files and exit codes; README "Command line" and
//! "Configuration" are its reference. This file only parses the command line and hands it
//! to the module that runs it; no module imports from here.

mod api;
mod backup;
mod client;
mod clock;
mod commands;
mod compaction;
mod config;
mod daemon;
mod data_dir;
mod history;
mod horizon;
mod identity;
mod json;
mod metrics;
mod mqtt;
mod peers;
mod render;
mod retention;
mod serve;
mod shell;
mod statement_cache;
mod storage;
mod store_health;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use client::Client;
use config::{Config, LogFormat, Overrides};
use peers::PeersCommand;

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
    /// Shrink the store file, with the node stopped.
    ///
    /// Compacts the log up to the causal-stability horizon and saves documents whole (as a
    /// running node does in the background), then moves live pages down and truncates the
    /// file: a running node reuses freed pages but never gives them back to the disk.
    /// Takes time proportional to the file; a crash leaves a valid store.
    Compact,
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
        Command::Init => commands::init(&data_dir),
        Command::Run(_) => daemon::run(config),
        Command::Status { storage: false } => commands::status(&config),
        Command::Status { storage: true } => commands::storage_status(&config),
        Command::Shell { command, url } => {
            let history = data_dir.join(data_dir::SHELL_HISTORY_FILE);
            let backend = match url {
                Some(url) => shell::Backend::Remote(Client::new(&url, config.api_token.clone())?),
                None => match Client::discover(&data_dir, config.api_token.clone())? {
                    Some(client) => shell::Backend::Remote(client),
                    None => shell::Backend::Local(Box::new(data_dir::open(&data_dir, &config.open_options())?.1)),
                },
            };
            shell::main(backend, command, &history, config.statement_memory_mib << 20)
        }
        Command::Peers(command) => peers::main(&config, command),
        Command::Backup { file } => commands::backup(&config, &file),
        Command::Restore { file } => commands::restore(&data_dir, &file),
        Command::Compact => commands::compact(&config),
    }
}
