//! End-to-end disk full: node `a` keeps its data directory on a small tmpfs that the test
//! mounts (root only; otherwise the test prints why and skips), node `b` on the ordinary
//! disk, both real `edge-node run` processes syncing over QUIC on loopback.
//!
//! The test fills the tmpfs with a file, writes rows to `a` until a write is refused for
//! lack of space, and checks what the node says while it cannot write: writes refused
//! with 507 (or 503) naming the cause, `/v1/health` non-200 with the reason, the store
//! metrics, and `b`'s changes not applied (their lag grows). Then it deletes the file and
//! waits — without restarting anything — until `a` reopens its store by itself, writes
//! resume, and the two nodes converge with every acknowledged row on both. It prints the
//! sequence as it ran.
//!
//! Waiting is for conditions, bounded by a deadline; nothing sleeps to pass.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cli, http, sql, start_logging_to, Node};
use serde_json::{json, Value as Json};

/// Size of the tmpfs holding node a's data directory.
const TMPFS_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes of padding per row: a few rows fill what redb has spare in its file.
const PAD_BYTES: usize = 16 * 1024;
/// Rows tried before the test gives up waiting for the disk to be full.
const FILL_ROWS_MAX: usize = 5_000;
/// How long recovery and convergence may take.
const DEADLINE: Duration = Duration::from_secs(90);

/// `store.free_bytes_min = 0`: no low-disk floor, so writes run into the real ENOSPC.
const CONFIG: &str =
    "cluster = \"disk\"\n[sync]\nkeepalive_ms = 300\nidle_timeout_ms = 1500\n[store]\nfree_bytes_min = 0\n";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem of `dir` with one file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler file");
    let chunk = vec![0xA5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn ids(node: &Node, origin: &str) -> Vec<i64> {
    let rows = sql(node, "SELECT id FROM t WHERE origin = ? ORDER BY id", json!([origin]));
    rows["rows"].as_array().expect("rows").iter().map(|r| r[0].as_i64().expect("id")).collect()
}

fn metric(node: &Node, name: &str) -> Option<f64> {
    let (_, text) = http(node.api, "GET", "/metrics", None);
    let text = text.as_str().map(str::to_string).unwrap_or_else(|| text.to_string());
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn insert(node: &Node, id: i64, origin: &str) -> (u16, Json) {
    let pad = "ab".repeat(PAD_BYTES / 2);
    let body = json!({ "sql": "INSERT INTO t VALUES (?, ?, ?)", "params": [id, origin, pad] });
    http(node.api, "POST", "/v1/sql", Some(&body))
}

#[test]
fn a_full_disk_refuses_writes_and_the_node_recovers_without_a_restart() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let mount_point = dir.path().join("small-fs");
    let tmpfs = match Tmpfs::mount(&mount_point) {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            println!("skipped: cannot make a small filesystem here ({reason})");
            return;
        }
    };
    let config = |data: &Path| {
        std::fs::create_dir_all(data).expect("data directory");
        std::fs::write(data.join("edge-node.toml"), CONFIG).expect("config file");
    };
    let (a_data, b_data) = (tmpfs.path.join("a"), dir.path().join("b"));
    config(&a_data);
    config(&b_data);
    let mut a = start_logging_to("a", &a_data, "127.0.0.1:0", "127.0.0.1:0", &[], &dir.path().join("a.log"));
    let mut b = start_logging_to("b", &b_data, "127.0.0.1:0", "127.0.0.1:0", &[], &dir.path().join("b.log"));
    cli(&a, &["peers", "add", &b.id, &b.sync.to_string()]);
    cli(&b, &["peers", "add", &a.id, &a.sync.to_string()]);
    sql(&a, "CREATE TABLE t (id INTEGER PRIMARY KEY, origin TEXT NOT NULL, pad TEXT)", json!([]));
    wait_for("the table on b", || http(b.api, "POST", "/v1/sql", Some(&json!({"sql": "SELECT 1 FROM t"}))).0 == 200);
    println!("1. a (data on a {TMPFS_BYTES}-byte tmpfs) and b (ordinary disk) run and sync table t");

    let filler = fill(&tmpfs.path);
    println!("2. filled the tmpfs with {} bytes", std::fs::metadata(&filler).expect("filler").len());
    let mut acked_a = Vec::new();
    let refusal = (0..FILL_ROWS_MAX as i64)
        .find_map(|id| match insert(&a, id, "a") {
            (200, _) => {
                acked_a.push(id);
                None
            }
            (status, answer) => Some((id, status, answer)),
        })
        .expect("the disk never filled up");
    let (refused_id, status, answer) = refusal;
    println!("3. {} rows acknowledged on a, then row {refused_id} -> {status} {answer}", acked_a.len());
    assert!(status == 507 || status == 503, "a write on a full disk: {status} {answer}");
    let (status, answer) = insert(&a, refused_id, "a");
    println!("   again -> {status} {answer}");
    assert!(status == 507 || status == 503, "{status} {answer}");
    let (health, reason) = http(a.api, "GET", "/v1/health", None);
    println!("   GET /v1/health -> {health} {reason}");
    assert_ne!(health, 200, "health while the store cannot write");
    assert_eq!(metric(&a, "edgestore_store_healthy"), Some(0.0));
    assert_eq!(metric(&a, "edgestore_store_faults_total"), Some(1.0));
    println!("   metrics: edgestore_store_healthy 0, edgestore_store_faults_total 1");

    let acked_b: Vec<i64> =
        (0..5).inspect(|&id| assert_eq!(insert(&b, 1_000 + id, "b").0, 200)).map(|id| 1_000 + id).collect();
    let (_, peers) = http(b.api, "GET", "/v1/peers", None);
    let (status, select) = http(a.api, "POST", "/v1/sql", Some(&json!({ "sql": "SELECT COUNT(*) FROM t" })));
    println!("4. wrote {} rows on b; b's view of a: {}", acked_b.len(), peers["peers"][0]);
    println!("   a SELECT while faulted -> {status} {select}");

    std::fs::remove_file(&filler).expect("removing the filler");
    let recovered = wait_for("a to reopen its store", || http(a.api, "GET", "/v1/health", None).0 == 200);
    println!("5. deleted the filler; a healthy again after {recovered:?}, same process (pid {})", a.child.id());
    assert_eq!(metric(&a, "edgestore_store_reopens_total"), Some(1.0));
    assert_eq!(insert(&a, refused_id, "a").0, 200, "a write after the reopen");
    acked_a.push(refused_id);
    let converged = wait_for("both nodes to hold every acknowledged row", || {
        ids(&a, "a") == acked_a && ids(&b, "a") == acked_a && ids(&a, "b") == acked_b && ids(&b, "b") == acked_b
    });
    println!(
        "6. writes on a resume; a and b converged in {converged:?}: {} rows of a and {} of b on both",
        acked_a.len(),
        acked_b.len()
    );
    let (status, check) = http(a.api, "POST", "/v1/check", None);
    assert_eq!((status, &check["ok"]), (200, &json!(true)), "{check}");
    for node in [&mut a, &mut b] {
        let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        assert!(node.child.wait().expect("wait").success(), "{} did not stop cleanly", node.name);
    }
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("store")) {
        println!("   a's log: {line}");
    }
    drop((a, b));
}
