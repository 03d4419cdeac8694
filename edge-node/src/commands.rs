//! The one-shot commands of the CLI: `init`, `status [--storage]`, `backup`, `restore`
//! and `compact`. Each asks the node running on the data directory through its API when
//! there is one ([`Client::discover`]) and opens the data directory itself otherwise;
//! `compact` runs only with the node stopped.
//!
//! A backup is a consistent copy of the store from one read snapshot (`backup.rs`); with a
//! node running it is taken by the node (`POST /v1/backup`) while it keeps serving. A
//! restore builds a new data directory with a new key pair and adopts the backup's data
//! under the new node id ([`edgestore::Replica::restore`]): the old identity is never
//! reused, so the restored node can rejoin the mesh while the original (or another
//! restore) still runs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgestore::Replica;
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::data_dir;
use crate::identity::{self, Identity};
use crate::{json, storage};

/// `edge-node init`.
pub fn init(data_dir: &Path) -> Result<()> {
    let identity = data_dir::init(data_dir)?;
    println!("initialised node {} in {}", identity.node_id, data_dir.display());
    Ok(())
}

/// `edge-node status`.
pub fn status(config: &Config) -> Result<()> {
    if let Some(client) = Client::discover(&config.data_dir, config.api_token.clone())? {
        return remote_status(&client);
    }
    let (identity, replica) = data_dir::open(&config.data_dir, &config.open_options())?;
    println!("node id:    {}", identity.node_id);
    let public_key = hex::encode(identity.key_pair.public_key_raw());
    println!("public key: ed25519 {public_key}");
    println!("data dir:   {}", config.data_dir.display());
    println!("running:    no");
    let tables: Vec<&str> = replica.catalog().live_tables().map(|t| t.schema.name.as_str()).collect();
    println!("tables:     {}", if tables.is_empty() { "(none)".to_string() } else { tables.join(", ") });
    let vector = replica.version_vector();
    let compacted = replica.log_floor().total_changes();
    println!(
        "changes:    {} from {} node(s), {compacted} compacted out of the log",
        vector.total_changes(),
        vector.len()
    );
    println!("digest:     {}", replica.state_digest().context("computing the state digest")?);
    let now = crate::clock::now_ms().max(0) as u64;
    let horizon = replica.horizon(now, config.peer_horizon_ms);
    print!("{}", crate::horizon::render(&crate::horizon::to_json(&horizon, vector, now)));
    let problems = replica.check_integrity().context("checking integrity")?;
    report_integrity(&problems.iter().map(ToString::to_string).collect::<Vec<_>>())
}

/// `edge-node status --storage`.
pub fn storage_status(config: &Config) -> Result<()> {
    let breakdown = match Client::discover(&config.data_dir, config.api_token.clone())? {
        Some(client) => client.get("/v1/storage")?,
        None => storage::of_replica(&data_dir::open(&config.data_dir, &config.open_options())?.1)?,
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
    println!(
        "changes:    {} from {} node(s), {} pending, {} compacted out of the log",
        text("changes"),
        text("origins"),
        text("pending_changes"),
        text("log_floor_changes")
    );
    println!("peers:      {} connected", text("peers_connected"));
    println!("health:     {}", health_line(&status["health"]));
    if !status["mqtt"].is_null() {
        println!("mqtt:       {}", mqtt_line(&status["mqtt"]));
    }
    for table in status["append_tables"].as_array().into_iter().flatten() {
        println!("append:     {}", crate::retention::line(table));
    }
    println!("digest:     {}", text("digest"));
    if !status["horizon"].is_null() {
        print!("{}", crate::horizon::render(&status["horizon"]));
    }
    let check = client.post("/v1/check", &serde_json::json!({}))?;
    let problems: Vec<String> = check["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    report_integrity(&problems)
}

/// MQTT ingest of `/v1/status` in one line: the broker, whether connected, the counts, and
/// the last error while disconnected.
pub fn mqtt_line(mqtt: &serde_json::Value) -> String {
    let count = |key: &str| mqtt[key].as_u64().unwrap_or(0);
    let connected = mqtt["connected"].as_bool() == Some(true);
    let mut line = format!(
        "{} {}, {} messages, {} rows, {} duplicate rows, {} refused, {} pending",
        json::as_text(&mqtt["broker"]),
        if connected { "connected" } else { "not connected" },
        count("messages"),
        count("rows"),
        count("duplicates"),
        count("refused"),
        count("pending"),
    );
    let throttled_ms = count("throttled_ms");
    if throttled_ms > 0 {
        // The store writes slower than the broker sends: the node slows its reading.
        line.push_str(&format!(", reading throttled {:.1} s in all", throttled_ms as f64 / 1000.0));
    }
    if let (false, Some(error)) = (connected, mqtt["last_error"]["error"].as_str()) {
        line.push_str(&format!(" (last error: {error})"));
    }
    line
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

/// `edge-node backup FILE`.
pub fn backup(config: &Config, file: &Path) -> Result<()> {
    let file = std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
    let report = match Client::discover(&config.data_dir, config.api_token.clone())? {
        Some(client) => client.post("/v1/backup", &json!({ "path": file }))?,
        None => {
            let snapshot = data_dir::open(&config.data_dir, &config.open_options())?.1.snapshot()?;
            crate::backup::write_backup(&snapshot, &file)
                .with_context(|| format!("backing up to {}", file.display()))?
        }
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
    if data_dir::holds_a_node(data_dir) {
        bail!("{} already holds a node; restore into a new data directory (--data-dir)", data_dir.display());
    }
    if !file.is_file() {
        bail!("no backup file {}", file.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let identity = Identity::create(data_dir)?;
    let restored = Replica::restore(file, &data_dir::store_path(data_dir), identity.node_id);
    let replica = match restored {
        Ok(replica) => replica,
        Err(error) => {
            // Leave no half-made node behind: without a store the key is useless.
            let _ = std::fs::remove_file(data_dir.join(identity::KEY_FILE));
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

/// Log entries removed per offline compaction step (no writer waits offline).
const OFFLINE_COMPACT_STEP_ENTRIES: usize = 4096;
/// Documents per offline document-save step.
const OFFLINE_SAVE_STEP_DOCS: usize = 1024;

/// `edge-node compact`: with the node stopped, compacts the log to the horizon, saves
/// every document with a tail whole, then shrinks the store file (redb's compaction:
/// the running node frees pages for reuse, but only this gives them back to the disk).
pub fn compact(config: &Config) -> Result<()> {
    if Client::discover(&config.data_dir, config.api_token.clone())?.is_some() {
        bail!(
            "a node is running on {}: stop it first (shrinking the file needs the store alone; \
             a running node compacts its log and saves documents by itself)",
            config.data_dir.display()
        );
    }
    let (_, mut replica) = data_dir::open(&config.data_dir, &config.open_options())?;
    let path = data_dir::store_path(&config.data_dir);
    let before = FileSize::of(&path)?;
    println!("store {}: {before}", path.display());

    let now = crate::clock::now_ms().max(0) as u64;
    let target = replica.horizon(now, config.peer_horizon_ms).vector;
    let (mut entries, mut bytes) = (0, 0);
    loop {
        let report = replica.compact_log_step(&target, OFFLINE_COMPACT_STEP_ENTRIES).context("compacting the log")?;
        (entries, bytes) = (entries + report.entries_removed, bytes + report.bytes_removed);
        if report.complete {
            break;
        }
    }
    println!("log:       {entries} entries ({bytes} bytes) compacted up to the horizon");

    let (mut saved, mut freed) = (0, 0);
    loop {
        let report = replica.save_docs_step(OFFLINE_SAVE_STEP_DOCS).context("saving documents")?;
        saved += report.docs_saved;
        freed += report.bytes_before.saturating_sub(report.bytes_after);
        if report.complete {
            break;
        }
    }
    println!("documents: {saved} saved whole ({freed} bytes smaller)");

    println!("shrinking the file (proportional to its size)...");
    replica.shrink_file().context("shrinking the store file")?;
    drop(replica);
    let after = FileSize::of(&path)?;
    println!("store {}: {after}", path.display());
    Ok(())
}

/// A file's length and the bytes the filesystem allocated for it.
struct FileSize {
    len: u64,
    allocated: u64,
}

impl FileSize {
    fn of(path: &Path) -> Result<FileSize> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        // st_blocks counts 512-byte units whatever the filesystem's block size.
        Ok(FileSize { len: metadata.len(), allocated: metadata.blocks() * 512 })
    }
}

impl std::fmt::Display for FileSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes long, {} bytes allocated", self.len, self.allocated)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_mqtt_line_names_throttling_and_the_last_error_only_when_there_are_some() {
        let mut mqtt = json!({
            "broker": "mqtt://127.0.0.1:1883", "connected": true, "messages": 5, "rows": 4,
            "duplicates": 1, "refused": 0, "pending": 0, "throttled_ms": 0,
            "last_error": {"at_ms": 1, "error": "connection refused"},
        });
        assert_eq!(
            super::mqtt_line(&mqtt),
            "mqtt://127.0.0.1:1883 connected, 5 messages, 4 rows, 1 duplicate rows, 0 refused, 0 pending"
        );
        mqtt["throttled_ms"] = json!(2_500);
        mqtt["connected"] = json!(false);
        assert_eq!(
            super::mqtt_line(&mqtt),
            "mqtt://127.0.0.1:1883 not connected, 5 messages, 4 rows, 1 duplicate rows, 0 refused, 0 pending, \
             reading throttled 2.5 s in all (last error: connection refused)"
        );
    }
}
