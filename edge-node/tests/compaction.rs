//! End-to-end: a real `edge-node run` process is killed with SIGKILL while it compacts its
//! change log (docs/design.md § "Log compaction"), three times, with a client writing
//! throughout. After each kill the store must pass the offline integrity check, every
//! acknowledged write must be there, and the log floor must be at least what the node
//! reported before the kill; finally compaction runs to the end on the restarted node.
//!
//! A node alone compacts up to its horizon, its own vector, 256 entries per step; the
//! fault-injection route `POST /v1/debug/compact` makes the steps one entry each (and the
//! target its own vector) so the kill lands mid-way.
//! Waiting is for conditions, bounded by a deadline; nothing sleeps to pass.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{edge_node, http, metric, sql, start, try_http, Node};
use serde_json::json;

/// Single-row statements written before compaction starts: one log entry each.
const LOG_ENTRIES: i64 = 1200;
/// Kills during compaction.
const ROUNDS: usize = 3;
/// How long compaction may take to show progress, or to finish.
const DEADLINE: Duration = Duration::from_secs(120);

fn compact(node: &Node, entries_per_step: usize) {
    let body = json!({ "entries_per_step": entries_per_step });
    let (status, answer) = http(node.api, "POST", "/v1/debug/compact", Some(&body));
    assert_eq!(status, 200, "{answer}");
}

fn insert(api: SocketAddr, id: i64) -> Result<(), String> {
    let body = json!({ "sql": "INSERT INTO readings VALUES (?, ?)", "params": [id, format!("reading {id:05}")] });
    match try_http(api, "POST", "/v1/sql", Some(&body))? {
        (200, _) => Ok(()),
        (status, answer) => Err(format!("{status}: {answer}")),
    }
}

/// Writes rows `first..` until the node stops answering; returns the acknowledged ids.
fn write_until_killed(api: SocketAddr, first: i64) -> Vec<i64> {
    (first..).map_while(|id| insert(api, id).ok().map(|()| id)).collect()
}

/// Waits until `condition` holds for the node's metrics, bounded by [`DEADLINE`].
fn wait_for(node: &Node, what: &str, condition: impl Fn(&Node) -> bool) {
    let started = Instant::now();
    while !condition(node) {
        assert!(started.elapsed() < DEADLINE, "{}: {what} within {DEADLINE:?}", node.name);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The offline `edge-node status` (the node is dead): opens the store and checks it.
fn assert_intact_offline(data: &Path) {
    let output = edge_node().arg("--data-dir").arg(data).arg("status").output().expect("edge-node status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "status after SIGKILL: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("running:    no") && stdout.contains("integrity:  ok"), "{stdout}");
}

fn stored_ids(node: &Node) -> BTreeSet<i64> {
    let rows = sql(node, "SELECT id FROM readings", json!([]));
    rows["rows"].as_array().expect("rows").iter().map(|row| row[0].as_i64().expect("an id")).collect()
}

#[test]
fn sigkill_during_log_compaction_loses_nothing_and_leaves_an_intact_store() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let data = dir.path().join("a");
    let mut node = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    sql(&node, "CREATE TABLE readings (id INTEGER PRIMARY KEY, v TEXT)", json!([]));
    for id in 0..LOG_ENTRIES {
        insert(node.api, id).expect("a write before compaction");
    }
    let mut acknowledged: BTreeSet<i64> = (0..LOG_ENTRIES).collect();
    let mut floor_before_kill = 0;
    for round in 0..ROUNDS {
        compact(&node, 1);
        let api = node.api;
        let first = LOG_ENTRIES + round as i64 * 1_000_000;
        let writer = std::thread::spawn(move || write_until_killed(api, first));
        wait_for(&node, "compaction progresses", |n| metric(n, "edgestore_log_floor_changes") > floor_before_kill);
        floor_before_kill = metric(&node, "edgestore_log_floor_changes");
        let changes = metric(&node, "edgestore_changes");
        node.child.kill().expect("SIGKILL");
        node.child.wait().expect("reaping the node");
        let written = writer.join().expect("the writer thread");
        println!(
            "round {round}: killed at a floor of {floor_before_kill} of {changes} changes, {} writes meanwhile",
            written.len()
        );
        acknowledged.extend(written);

        assert_intact_offline(&data);
        node = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
        let floor = metric(&node, "edgestore_log_floor_changes");
        assert!(floor >= floor_before_kill, "the floor went back from {floor_before_kill} to {floor}");
        println!("round {round}: restarted at a floor of {floor} of {} changes", metric(&node, "edgestore_changes"));
        floor_before_kill = floor;
        let missing: Vec<i64> = acknowledged.difference(&stored_ids(&node)).copied().collect();
        assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    }

    // The last run to the end: the whole log goes, the rows stay.
    compact(&node, 256);
    wait_for(&node, "compaction completes", |n| {
        metric(n, "edgestore_log_floor_changes") == metric(n, "edgestore_changes")
    });
    let (status, check) = http(node.api, "POST", "/v1/check", Some(&json!({})));
    assert_eq!((status, &check["problems"]), (200, &json!([])), "{check}");
    assert!(acknowledged.is_subset(&stored_ids(&node)));
    insert(node.api, -1).expect("writes go on above the floor");
}

/// Retention runs in the same driver: rows of an append-only table older than its
/// retention (on the node's wall clock) go within a tick or two, and `status`, the shell
/// and metrics show what went (docs/design.md § "Retention, the budget and the floor").
///
/// The driver's first tick raises the floor whether or not the table holds rows yet, so
/// the old rows are either stored and then expired (the tick came after the insert) or
/// dropped on arrival (it came before): one statement inserts them all, so it is one or
/// the other for all of them, and the test asserts what holds either way: they are gone,
/// and the two counts add up to them.
#[test]
fn the_node_expires_append_only_rows_older_than_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let node = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    sql(
        &node,
        "CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
         WITH (append_only = true, time_column = 'ts', bucket = '1 hour', retention = '1 day')",
        json!([]),
    );
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let day = 86_400_000;
    // Two and three days old (expired), and a minute ago (kept).
    let values: Vec<String> = [(1, now_ms - 3 * day), (2, now_ms - 2 * day), (3, now_ms - 60_000)]
        .into_iter()
        .flat_map(|(sensor, ts)| (0..50).map(move |i| format!("({sensor}, {}, {i}.5)", ts + i)))
        .collect();
    sql(&node, &format!("INSERT INTO readings VALUES {}", values.join(", ")), json!([]));
    let readings = |node: &Node| {
        let (status, answer) = http(node.api, "GET", "/v1/status", None);
        assert_eq!(status, 200, "{answer}");
        answer["append_tables"][0].clone()
    };
    let gone = |table: &serde_json::Value| {
        table["expired_rows"].as_u64().unwrap_or(0) + table["expired_on_arrival"].as_u64().unwrap_or(0)
    };
    wait_for(&node, "100 rows expired", |node| gone(&readings(node)) >= 100);
    let answer = sql(&node, "SELECT count(*), min(sensor) FROM readings", json!([]));
    assert_eq!(answer["rows"], json!([[50, 3]]), "{answer}");

    let table = readings(&node);
    assert_eq!((table["name"].as_str(), table["rows"].as_u64()), (Some("readings"), Some(50)), "{table}");
    assert_eq!(gone(&table), 100, "{table}");
    let expired = table["expired_rows"].as_u64().expect("expired_rows");
    assert!(expired == 0 || expired == 100, "one statement's rows go together: {table}");
    assert_eq!(metric(&node, "edgestore_retention_expired_rows_total"), expired);
    assert!(table["floor"].as_i64().is_some_and(|floor| floor > now_ms - 2 * day && floor < now_ms), "{table}");
    let shell = common::shell(&node, ".status");
    assert!(shell.contains("append:   readings: 50 rows in "), "{shell}");
    let shown = if expired == 100 {
        "100 rows expired".to_string()
    } else {
        "0 rows expired (+100 dropped on arrival)".to_string()
    };
    assert!(shell.contains("retention 1 day") && shell.contains(&shown), "{shell}");
}
