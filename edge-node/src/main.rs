//! `edge-node`: the edgestore gateway daemon.
//!
//! This version manages a node's identity and store: `init` creates them, `status` reports
//! on them, `shell` opens the SQL shell on them, and `run` opens them (initialising on
//! first use) and keeps the node up. Wiring peer sync (`sync-protocol`'s `SyncNode`) and
//! the local HTTP API into `run` is issue 5; `run` says so when it starts.

mod identity;
mod render;
mod shell;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgestore::Replica;

use identity::Identity;

/// File name of the store inside the data directory.
const STORE_FILE: &str = "store.redb";

#[derive(Parser)]
#[command(name = "edge-node", version, about = "edgestore gateway node: a CRDT-replicated SQL store for edge gateways")]
struct Cli {
    /// Data directory holding the node key and the store (created on first use).
    #[arg(long, global = true, env = "EDGE_NODE_DATA_DIR", default_value = "edge-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the node's key pair and an empty store.
    Init,
    /// Start the node, initialising the data directory on first run.
    Run,
    /// Print the node id, store version vector, tables, digest and integrity.
    Status,
    /// Open the SQL shell on the data directory (the node must not be running).
    ///
    /// Statements end with ';'. With -c, or when standard input is not a terminal, the
    /// statements run as a script that stops at the first error (exit code 1).
    Shell {
        /// Run these statements and dot-commands, then exit.
        #[arg(short = 'c', long = "command")]
        command: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init => init(&cli.data_dir).map(|identity| {
            println!("initialised node {} in {}", identity.node_id, cli.data_dir.display());
        }),
        Command::Run => run(&cli.data_dir),
        Command::Status => status(&cli.data_dir),
        Command::Shell { command } => open(&cli.data_dir)
            .and_then(|(_, replica)| shell::main(replica, command, &cli.data_dir.join("shell_history"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edge-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(data_dir: &Path) -> Result<Identity> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let identity = Identity::create(data_dir)?;
    Replica::open(data_dir.join(STORE_FILE), identity.node_id).context("creating the store")?;
    Ok(identity)
}

fn open(data_dir: &Path) -> Result<(Identity, Replica)> {
    let identity = Identity::load(data_dir)
        .with_context(|| format!("no node in {} (run `edge-node init` first)", data_dir.display()))?;
    let store = data_dir.join(STORE_FILE);
    let replica = Replica::open(&store, identity.node_id).with_context(|| format!("opening {}", store.display()))?;
    Ok((identity, replica))
}

fn run(data_dir: &Path) -> Result<()> {
    if !data_dir.join(identity::KEY_FILE).exists() {
        let identity = init(data_dir)?;
        println!("first run: initialised node {} in {}", identity.node_id, data_dir.display());
    }
    let (identity, replica) = open(data_dir)?;
    print_status(&identity, &replica, data_dir)?;
    println!("node running with its local store. Peer sync and the HTTP API are not wired into the daemon yet.");
    println!("press Ctrl-C to stop (every acknowledged write is already durable)");
    loop {
        std::thread::park();
    }
}

fn status(data_dir: &Path) -> Result<()> {
    let (identity, replica) = open(data_dir)?;
    print_status(&identity, &replica, data_dir)?;
    let problems = replica.check_integrity().context("checking integrity")?;
    if problems.is_empty() {
        println!("integrity:  ok");
        return Ok(());
    }
    for problem in &problems {
        println!("integrity:  {problem}");
    }
    anyhow::bail!("{} integrity problem(s)", problems.len())
}

fn print_status(identity: &Identity, replica: &Replica, data_dir: &Path) -> Result<()> {
    println!("node id:    {}", identity.node_id);
    let public_key: String = identity.key_pair.public_key_raw().iter().map(|b| format!("{b:02x}")).collect();
    println!("public key: ed25519 {public_key}");
    println!("data dir:   {}", data_dir.display());
    let tables: Vec<&str> = replica.catalog().live_tables().map(|t| t.schema.name.as_str()).collect();
    println!("tables:     {}", if tables.is_empty() { "(none)".to_string() } else { tables.join(", ") });
    println!(
        "changes:    {} from {} node(s)",
        replica.version_vector().total_changes(),
        replica.version_vector().len()
    );
    println!("digest:     {}", replica.state_digest().context("computing the state digest")?);
    Ok(())
}
