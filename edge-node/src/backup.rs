//! `edge-node backup FILE` and `edge-node restore FILE`.
//!
//! A backup is a consistent copy of the store from one read snapshot
//! ([`edgestore::Snapshot::backup_to`]); with a node running it is taken by the node
//! (`POST /v1/backup`) while it keeps serving. A restore builds a new data directory with
//! a new key pair and adopts the backup's data under the new node id
//! ([`edgestore::Replica::restore`]): the old identity is never reused, so the restored
//! node can rejoin the mesh while the original (or another restore) still runs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgestore::{BackupReport, Replica, Snapshot};
use serde_json::{json, Value as Json};

use crate::client::Client;
use crate::config::Config;
use crate::identity::Identity;

/// Writes a backup from `snapshot` and describes it as JSON.
pub fn write_backup(snapshot: &Snapshot, file: &Path) -> Result<Json> {
    let report = snapshot.backup_to(file).with_context(|| format!("backing up to {}", file.display()))?;
    Ok(describe(&report))
}

fn describe(report: &BackupReport) -> Json {
    json!({
        "path": report.path.display().to_string(),
        "bytes": report.bytes,
        "node_id": report.node_id.to_string(),
        "rows": report.rows,
        "changes": report.changes,
        "pending_changes": report.pending_changes,
    })
}

/// `edge-node backup FILE`.
pub fn backup(config: &Config, file: &Path) -> Result<()> {
    let file = std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
    let report = match Client::discover(&config.data_dir, config.api_token.clone())? {
        Some(client) => client.post("/v1/backup", &json!({ "path": file }))?,
        None => write_backup(&crate::open(&config.data_dir, &config.open_options())?.1.snapshot()?, &file)?,
    };
    println!(
        "backup of node {} written to {}: {} bytes, {} rows, {} changes",
        report["node_id"].as_str().unwrap_or("?"),
        report["path"].as_str().unwrap_or("?"),
        report["bytes"],
        report["rows"],
        report["changes"]
    );
    println!("restore it on any machine with `edge-node --data-dir NEW_DIR restore {}`", file.display());
    Ok(())
}

/// `edge-node restore FILE`: a new data directory from a backup, under a new identity.
pub fn restore(data_dir: &Path, file: &Path) -> Result<()> {
    if data_dir.join(crate::identity::KEY_FILE).exists() || data_dir.join(crate::STORE_FILE).exists() {
        bail!("{} already holds a node; restore into a new data directory (--data-dir)", data_dir.display());
    }
    if !file.is_file() {
        bail!("no backup file {}", file.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let identity = Identity::create(data_dir)?;
    let restored = Replica::restore(file, &data_dir.join(crate::STORE_FILE), identity.node_id);
    let replica = match restored {
        Ok(replica) => replica,
        Err(error) => {
            // Leave no half-made node behind: without a store the key is useless.
            let _ = std::fs::remove_file(data_dir.join(crate::identity::KEY_FILE));
            return Err(error).with_context(|| format!("restoring {}", file.display()));
        }
    };
    let vector = replica.version_vector();
    println!("restored {} into {} as a new node", file.display(), data_dir.display());
    println!("  new node id: {}", identity.node_id);
    println!("  changes:     {} from {} node(s)", vector.total_changes(), vector.len());
    println!("start it with `edge-node --data-dir {} run`, and on each peer run", data_dir.display());
    println!("  edge-node peers add {} <IP:PORT of this node>", identity.node_id);
    println!("(the old node id is not reused: remove it from the peers if that node is gone)");
    Ok(())
}
