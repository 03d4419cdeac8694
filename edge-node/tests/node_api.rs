//! One real `edge-node run` process and what a user does with it: the HTTP API (token,
//! errors, parameters, history, metrics), `peers add/list/remove` through the running
//! node, `backup` from the running node and `restore` into a new node that syncs with it.

mod common;

use common::{cli, edge_node, http, http_with_token, shell, sql, start, start_with_env};
use serde_json::json;

#[test]
fn api_requires_the_token_when_one_is_set_and_reports_errors() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let node =
        start_with_env("a", &dir.path().join("a"), "127.0.0.1:0", "127.0.0.1:0", &[("EDGE_NODE_API_TOKEN", "s3cret")]);
    let (status, _) = http(node.api, "GET", "/v1/health", None);
    assert_eq!(status, 200, "health needs no token");
    let (status, answer) = http(node.api, "GET", "/v1/status", None);
    assert_eq!(status, 401, "{answer}");
    let (status, _) = http_with_token(node.api, "GET", "/v1/status", None, Some("wrong"));
    assert_eq!(status, 401);
    let (status, answer) = http_with_token(node.api, "GET", "/v1/status", None, Some("s3cret"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["node_id"], json!(node.id));
    assert_eq!(answer["health"], json!({ "status": "ok" }), "the status names the store's health");

    let query = |sql: &str, params: serde_json::Value| {
        http_with_token(node.api, "POST", "/v1/sql", Some(&json!({ "sql": sql, "params": params })), Some("s3cret"))
    };
    let (status, answer) = query("SELEC 1", json!([]));
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("syntax error")), "{answer}");
    let (status, answer) = query("SELECT * FROM nowhere", json!([]));
    assert_eq!((status, answer["error"].clone()), (400, json!("no such table: nowhere")));
    let (status, answer) = query("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB, at TIMESTAMP, r REAL)", json!([]));
    assert_eq!(status, 200, "{answer}");
    let row = json!([1, { "blob": "00ff" }, { "timestamp_ms": 1_700_000_000_000_i64 }, 2.5]);
    let (status, answer) = query("INSERT INTO t VALUES (?, ?, ?, ?)", row.clone());
    assert_eq!((status, answer["rows_affected"].clone()), (200, json!(1)), "{answer}");
    let (_, answer) = query("SELECT id, b, at, r FROM t WHERE id = ?", json!([1]));
    assert_eq!(answer["rows"], json!([row]), "values round-trip through JSON");
    let (status, answer) = query("SELECT ?", json!([{ "unknown": 1 }]));
    assert_eq!(status, 400, "{answer}");
}

/// The shell transcript of `tests/cli.rs`, through a running node's API this time: the
/// output must be the same to the byte as on a data directory opened directly.
#[test]
fn shell_transcript_through_a_running_node() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let node = start("a", &dir.path().join("a"), "127.0.0.1:0", "127.0.0.1:0");
    let output = shell(&node, include_str!("transcripts/sites.sql"));
    assert_eq!(output, include_str!("transcripts/sites.out"));
}

#[test]
fn peers_backup_restore_and_history_through_the_cli() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let a = start("a", &dir.path().join("a"), "127.0.0.1:0", "127.0.0.1:0");
    shell(&a, "CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO sites VALUES (1, 'north');");
    shell(&a, "UPDATE sites SET name = 'north gate' WHERE id = 1;");
    let history = shell(&a, ".mode csv\n.history sites 1");
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[1].ends_with("\"inserted, id = 1, name = 'north'\""), "{history}");
    assert!(lines[2].ends_with("name = 'north gate'"), "{history}");

    // A backup from the running node, restored as a new node that rejoins a.
    let backup = dir.path().join("a.backup");
    cli(&a, &["backup", backup.to_str().expect("UTF-8 path")]);
    let restored_dir = dir.path().join("r");
    let output =
        edge_node().arg("--data-dir").arg(&restored_dir).arg("restore").arg(&backup).output().expect("restore");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let r = start("r", &restored_dir, "127.0.0.1:0", "127.0.0.1:0");
    assert_ne!(r.id, a.id, "a restore never reuses the backup's identity");
    assert_eq!(sql(&r, "SELECT name FROM sites", json!([]))["rows"], json!([["north gate"]]));

    cli(&a, &["peers", "add", &r.id, &r.sync.to_string()]);
    cli(&r, &["peers", "add", &a.id, &a.sync.to_string()]);
    sql(&r, "INSERT INTO sites VALUES (2, 'from the restored node')", json!([]));
    sql(&a, "INSERT INTO sites VALUES (3, 'from a')", json!([]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let converged = loop {
        let count = |n| sql(n, "SELECT COUNT(*) FROM sites", json!([]))["rows"][0][0].clone();
        if count(&a) == json!(3) && count(&r) == json!(3) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(converged, "the restored node did not sync with a");

    let list = edge_node().arg("--data-dir").arg(&a.data).args(["peers", "list"]).output().expect("peers list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains(&r.id) && listed.contains("connected"), "{listed}");
    cli(&a, &["peers", "remove", &r.id]);
    let (_, peers) = http(a.api, "GET", "/v1/peers", None);
    assert_eq!(peers["peers"], json!([]), "a removed peer is gone from the node");
    let peers_file = std::fs::read_to_string(a.data.join("peers.toml")).expect("peers.toml");
    assert!(!peers_file.contains(&r.id), "{peers_file}");
}
