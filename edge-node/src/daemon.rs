//! `edge-node run`: the daemon. It opens (or on first run creates) the node's data
//! directory, starts the replica's owner thread, the QUIC sync endpoint and the HTTP API,
//! and runs until SIGTERM or SIGINT.
//!
//! Shutdown order: stop accepting HTTP requests and let in-flight ones finish (their
//! commits complete and are answered), close the sync sessions and the endpoint, stop the
//! runtime, then join the replica's owner thread so the redb file is closed cleanly. Every
//! acknowledged write was durable before it was acknowledged, so a SIGKILL loses nothing
//! either; the orderly path just spares the next start redb's repair.
//!
//! While it runs, `<data dir>/node.api` holds the API's URL, so the shell and the CLI on
//! the same machine find the node (see `client.rs`); it is removed on orderly shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgestore::{Replica, ReplicaHandle};
use sync_protocol::transport::{FaultSwitch, SyncNode, SyncNodeConfig};
use sync_protocol::SessionConfig;

use crate::api::Node;
use crate::compaction::{self, Compaction};
use crate::config::{Config, LogFormat, PeerList};
use crate::data_dir;
use crate::identity::Identity;
use crate::metrics::ApiCounters;
use crate::store_health::{self, StoreReopen};

/// How long shutdown waits for blocking store work still running.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for HTTP requests being answered before it drops their
/// connections (a request still being sent is dropped at once; see `serve.rs`).
const HTTP_DRAIN: Duration = Duration::from_secs(2);
/// Reconnect backoff to peers: first delay and cap (ms).
const BACKOFF_MS: (u64, u64) = (200, 10_000);

/// Runs the node until a shutdown signal.
pub fn run(config: Config) -> Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The blocking pool runs the statements: they need the stack the SQL limits are
        // measured for (the async workers get it too, which costs only address space).
        .thread_stack_size(edgestore::sql::STATEMENT_STACK_BYTES)
        .enable_all()
        .thread_name("edge-node")
        .build()
        .context("starting the async runtime")?;
    let owner = runtime.block_on(serve(&config))?;
    // Dropping the runtime drops every task, and with them the last replica handles.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match owner.join() {
        Ok(replica) => drop(replica),
        Err(_) => anyhow::bail!("the replica's owner thread panicked"),
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: &Config) -> Result<std::thread::JoinHandle<Option<Replica>>> {
    let (identity, replica) = data_dir::open_or_init(&config.data_dir, &config.open_options())?;
    let node_id = identity.node_id;
    // After an I/O error the owner thread closes the store and reopens it (store_health.rs).
    let floor_bytes = config.free_bytes_min;
    let reopen =
        StoreReopen { data_dir: config.data_dir.clone(), node_id, floor_bytes, options: config.open_options() };
    let (handle, owner) = ReplicaHandle::spawn_with_reopen(replica, reopen);
    tokio::spawn(store_health::probe(handle.clone(), config.data_dir.clone(), floor_bytes));
    let (sync, sync_addr, fault) = start_sync(config, &identity, handle.clone())?;
    let clock = sync.clone();
    let compaction = Arc::new(Compaction::new(move || clock.now_ms(), config.peer_horizon_ms));
    tokio::spawn(compaction::drive(handle.clone(), Arc::clone(&compaction)));
    let fault = fault_injection_enabled().then_some(fault);
    if fault.is_some() {
        tracing::warn!("fault injection is enabled (POST /v1/debug/fault); never in production");
    }
    let listener = tokio::net::TcpListener::bind(config.api_listen).await.with_context(|| {
        format!(
            "binding the HTTP API on {} (is another node running? choose another with --api-listen)",
            config.api_listen
        )
    })?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    let node = Arc::new(Node {
        handle,
        sync: sync.clone(),
        config: config.clone(),
        sync_addr,
        api_addr,
        counters: ApiCounters::default(),
        started: Instant::now(),
        peers_file: tokio::sync::Mutex::new(()),
        statements: std::sync::Mutex::default(),
        fault,
        statement_slots: Arc::new(tokio::sync::Semaphore::new(config.statements_max)),
        memory: edgestore::sql::MemoryPool::new(config.memory_mib << 20),
        running: Arc::default(),
        compaction,
        mqtt: std::sync::OnceLock::new(),
    });
    if let Some(mqtt) = &config.mqtt {
        let client_id = mqtt.client_id.clone().unwrap_or_else(|| format!("edge-{node_id}"));
        let options = edgestore::sql::ExecOptions {
            statement_memory_bytes_max: config.statement_memory_mib << 20,
            pool: node.memory.clone(),
            interrupt: edgestore::sql::Interrupt::new(),
        };
        tracing::info!(broker = %mqtt.host, port = mqtt.port, %client_id, ingests = mqtt.routes.len(), "MQTT ingest starting");
        let status = crate::mqtt::start(mqtt.clone(), client_id, node.handle.clone(), sync.clone(), options);
        let _ = node.mqtt.set(status);
    }
    data_dir::write_runtime_file(&config.data_dir, api_addr)?;
    print_banner(config, node_id, sync_addr, api_addr);
    tracing::info!(node = %node_id, %sync_addr, %api_addr, "node started");

    let running = node.running.clone();
    let shutdown = async move {
        shutdown_signal().await;
        let interrupted = running.interrupt_all(edgestore::sql::InterruptCause::Shutdown);
        tracing::info!(interrupted, "running statements interrupted");
    };
    crate::serve::serve(listener, node, HTTP_DRAIN, shutdown).await;
    tracing::info!("shutting down: HTTP requests finished, closing sync sessions");
    sync.shutdown().await;
    data_dir::remove_runtime_file(&config.data_dir);
    Ok(owner)
}

/// Whether `EDGE_NODE_FAULT_INJECTION=1`: the end-to-end tests cut a node off through the
/// API. It is an environment variable only, never a config key, so no config file turns
/// it on by accident.
fn fault_injection_enabled() -> bool {
    std::env::var("EDGE_NODE_FAULT_INJECTION").is_ok_and(|v| v == "1")
}

fn start_sync(
    config: &Config,
    identity: &Identity,
    handle: ReplicaHandle,
) -> Result<(SyncNode, SocketAddr, FaultSwitch)> {
    let mut session = SessionConfig::new(config.cluster_id());
    session.keepalive_ms = config.keepalive_ms;
    session.idle_timeout_ms = config.idle_timeout_ms;
    let sync_config = SyncNodeConfig {
        session,
        listen: config.sync_listen,
        backoff_ms: BACKOFF_MS,
        clock_base_ms: crate::clock::now_ms().max(0) as u64,
    };
    let allowed = Arc::new(RwLock::new(BTreeSet::new()));
    let (sync, fault) = SyncNode::start(handle, &identity.key_pair, allowed, sync_config).with_context(|| {
        format!(
            "starting peer sync on UDP {} (is another node running? choose another with --sync-listen)",
            config.sync_listen
        )
    })?;
    let peers = PeerList::load(&config.data_dir)?.parsed(&config.data_dir)?;
    for (peer, addr) in config.peers.iter().chain(&peers) {
        sync.add_peer(*peer, *addr);
    }
    let addr = sync.local_addr().context("reading the sync address")?;
    Ok((sync, addr, fault))
}

/// Prints who the node is and how to reach it. Write errors are ignored: a daemon whose
/// standard output was closed (a supervisor that stopped reading) must keep running.
fn print_banner(config: &Config, node_id: edgestore::NodeId, sync_addr: SocketAddr, api_addr: SocketAddr) {
    use std::io::Write;
    let data_dir = config.data_dir.display();
    let banner = format!(
        "edge-node {version} running\n  node id:   {node_id}\n  cluster:   {cluster}\n  data dir:  {data_dir}\n  \
         sync:      quic://{sync_addr}\n  http api:  http://{api_addr}\n\
         open the shell:  edge-node --data-dir {data_dir} shell\n\
         add a peer:      edge-node --data-dir {data_dir} peers add <NODE_ID> <IP:PORT>\n\
         stop with Ctrl-C or SIGTERM\n",
        version = env!("CARGO_PKG_VERSION"),
        cluster = config.cluster,
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
