//! The data directory's layout: the store file, the runtime file that advertises a running
//! node's API, and opening (or first creating) the node that lives there.
//!
//! Both sides of the local API use this module: the daemon writes the runtime file, the
//! client reads it, and neither imports the other. The key file and the peer list belong
//! to `identity.rs` and `config.rs`, which read and write them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use edgestore::{NodeId, OpenOptions, Replica};
use serde_json::{json, Value as Json};

use crate::identity::{self, Identity};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "store.redb";
/// Name of the file that advertises a running node's API inside the data directory.
pub const RUNTIME_FILE: &str = "node.api";
/// The shell's line-editor history.
pub const SHELL_HISTORY_FILE: &str = "shell_history";

/// The store file of `data_dir`.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE)
}

/// Whether `data_dir` already holds a node (its key or its store).
pub fn holds_a_node(data_dir: &Path) -> bool {
    data_dir.join(identity::KEY_FILE).exists() || store_path(data_dir).exists()
}

/// Creates the data directory, the node's key pair and an empty store.
pub fn init(data_dir: &Path) -> Result<Identity> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let identity = Identity::create(data_dir)?;
    Replica::open(store_path(data_dir), identity.node_id).context("creating the store")?;
    Ok(identity)
}

/// Opens the node's identity and store.
pub fn open(data_dir: &Path, options: &OpenOptions) -> Result<(Identity, Replica)> {
    let identity = Identity::load(data_dir)
        .with_context(|| format!("no node in {} (run `edge-node init` first)", data_dir.display()))?;
    let store = store_path(data_dir);
    let replica = open_store(data_dir, identity.node_id, options)
        .with_context(|| format!("opening {} (if a node is running on it, stop it or use its API)", store.display()))?;
    Ok((identity, replica))
}

/// Opens the store file of a data directory (also how the daemon reopens it after a fault).
pub fn open_store(data_dir: &Path, node_id: NodeId, options: &OpenOptions) -> Result<Replica, edgestore::OpenError> {
    Replica::open_with(store_path(data_dir), node_id, options)
}

/// Opens the node, initialising the data directory on first use.
pub fn open_or_init(data_dir: &Path, options: &OpenOptions) -> Result<(Identity, Replica)> {
    if !data_dir.join(identity::KEY_FILE).exists() {
        let identity = init(data_dir)?;
        tracing::info!(node = %identity.node_id, data_dir = %data_dir.display(), "first run: initialised the node");
    }
    open(data_dir, options)
}

/// Advertises the running node's API: `{"url": "http://IP:PORT", "pid": N}`.
pub fn write_runtime_file(data_dir: &Path, api_addr: SocketAddr) -> Result<()> {
    let path = data_dir.join(RUNTIME_FILE);
    let text = json!({ "url": format!("http://{api_addr}"), "pid": std::process::id() }).to_string();
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Removes the runtime file on orderly shutdown (a missing one is fine).
pub fn remove_runtime_file(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(RUNTIME_FILE));
}

/// The API URL the runtime file advertises; `None` when there is no runtime file. The
/// node it names may be gone (killed): the caller checks that something answers there.
pub fn advertised_url(data_dir: &Path) -> Result<Option<String>> {
    let path = data_dir.join(RUNTIME_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let runtime: Json = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let url = runtime["url"].as_str().ok_or_else(|| anyhow!("{} has no url", path.display()))?;
    Ok(Some(url.to_string()))
}
