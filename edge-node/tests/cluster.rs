//! End-to-end: three real `edge-node run` processes on loopback, configured as peers with
//! the real CLI, written to through the HTTP API and the shell; one node is cut off (the
//! daemon's fault-injection switch, enabled by `EDGE_NODE_FAULT_INJECTION=1`, drops its
//! sync datagrams), another is killed with SIGKILL and restarted on its data directory.
//! After healing, all three must hold identical digests and answer the same JOIN queries
//! identically, with every acknowledged write present and counters adding up, and the two
//! rows that took one UNIQUE value on either side of the cut both kept and listed alike
//! as a unique conflict, and two `ALTER TABLE`s made on either side of the cut (a column
//! added on one, one column renamed differently on both, rows written under each node's
//! definition) resolved to one schema with the losing rename listed; then, idle,
//! each node's compaction driver empties its log (the horizon reaches the common vector)
//! and the stores stay intact. Append-only rows written on every side of the cut (and
//! around the SIGKILL) are all there, once, on every node; a fourth node that joins the
//! compacted cluster gets them, with everything else, by state transfer. Finally SIGTERM
//! stops each node cleanly (exit code 0).
//!
//! Waiting is for conditions (convergence), bounded by a deadline; nothing sleeps to pass.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{cli, http, metric, shell, sql, start, Node};
use serde_json::{json, Value as Json};

/// How long the cluster may take to converge after the heal.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);

/// Session timers short enough for a test: a cut link is noticed in 1.5 s.
const CONFIG: &str = "cluster = \"e2e\"\n[sync]\nkeepalive_ms = 300\nidle_timeout_ms = 1500\n";

fn fault(node: &Node, cut: bool) {
    let (status, answer) = http(node.api, "POST", "/v1/debug/fault", Some(&json!({ "cut": cut })));
    assert_eq!(status, 200, "{answer}");
}

fn digest(node: &Node) -> String {
    let (status, answer) = http(node.api, "GET", "/v1/status", None);
    assert_eq!(status, 200, "{answer}");
    answer["digest"].as_str().expect("digest").to_string()
}

/// The queries every node must answer identically.
const BATTERY: &[&str] = &[
    "SELECT s.id, s.name, COUNT(x.id), SUM(x.hits) FROM sites s LEFT JOIN sensors x ON x.site = s.id \
     GROUP BY s.id, s.name ORDER BY s.id",
    "SELECT x.*, s.name FROM sensors x JOIN sites s ON s.id = x.site ORDER BY x.id",
    "SELECT position, name, type, default_value FROM edgestore_columns ORDER BY table_name, position",
    "SELECT table_name, primary_key, column_name, value, node, is_winner FROM edgestore_conflicts \
     ORDER BY table_name, primary_key, column_name, node",
];

fn wait_converged(nodes: &[&Node], expected_sites: usize) -> Duration {
    let started = Instant::now();
    loop {
        let digests: Vec<String> = nodes.iter().map(|n| digest(n)).collect();
        // A node that has not received the schema yet answers "no such table": not converged.
        let counts: Vec<Json> = nodes
            .iter()
            .map(|n| {
                let query = json!({ "sql": "SELECT COUNT(*) FROM sites", "params": [] });
                let (status, answer) = http(n.api, "POST", "/v1/sql", Some(&query));
                if status == 200 {
                    answer["rows"][0][0].clone()
                } else {
                    answer["error"].clone()
                }
            })
            .collect();
        if digests.iter().all(|d| *d == digests[0]) && counts.iter().all(|c| *c == json!(expected_sites)) {
            return started.elapsed();
        }
        assert!(started.elapsed() < CONVERGE_DEADLINE, "no convergence: digests {digests:?}, site counts {counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once converged and idle, every node learns what the others hold (held vectors ride on
/// `Hello`, `Ack` and `Holders`): its horizon reaches its whole vector.
fn wait_horizon_reached(nodes: &[&Node]) {
    let started = Instant::now();
    loop {
        let statuses: Vec<Json> = nodes.iter().map(|n| http(n.api, "GET", "/v1/status", None).1).collect();
        if statuses.iter().all(|s| s["horizon"]["changes"] == s["changes"] && s["horizon"]["members"].is_array()) {
            let members = statuses[0]["horizon"]["members"].as_array().expect("members").len();
            assert_eq!(members, nodes.len(), "every node is a member: {}", statuses[0]["horizon"]);
            return;
        }
        let horizons: Vec<&Json> = statuses.iter().map(|s| &s["horizon"]).collect();
        assert!(started.elapsed() < CONVERGE_DEADLINE, "the horizons never reached the vectors: {horizons:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(node: &mut Node) {
    let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let exit = node.child.wait().expect("waiting for the node");
    assert!(exit.success(), "{} did not stop cleanly after SIGTERM: {exit:?}", node.name);
}

#[test]
fn three_nodes_converge_after_a_cut_and_a_sigkill() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let data = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("data directory");
        std::fs::write(path.join("edge-node.toml"), CONFIG).expect("config file");
        path
    };
    let a = start("a", &data("a"), "127.0.0.1:0", "127.0.0.1:0");
    let mut b = start("b", &data("b"), "127.0.0.1:0", "127.0.0.1:0");
    let c = start("c", &data("c"), "127.0.0.1:0", "127.0.0.1:0");
    for (node, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        for other in others {
            cli(node, &["peers", "add", &other.id, &other.sync.to_string()]);
        }
    }

    // Schema through the shell on a; data through the API and the shell on every node.
    shell(
        &a,
        "CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE sensors (id INTEGER PRIMARY KEY, site INTEGER, kind TEXT, hits COUNTER);
         CREATE INDEX sensors_site ON sensors (site);
         CREATE TABLE devices (id INTEGER PRIMARY KEY, serial TEXT UNIQUE);
         CREATE TABLE readings (sensor INTEGER NOT NULL, ts TIMESTAMP NOT NULL, value REAL) \
           WITH (append_only = true, time_column = 'ts', bucket = '1 hour');",
    );
    wait_converged(&[&a, &b, &c], 0);
    let mut acknowledged_sites = Vec::new();
    let mut expected_hits = 0;
    // Append-only rows: (sensor, ts) of each acknowledged one (docs/design.md § Append-only
    // tables): merged by union across the cut, carried to a new node by state transfer.
    let mut acknowledged_readings: Vec<(i64, i64)> = Vec::new();
    let mut append = |node: &Node, sensor: i64| {
        let ts = 3_600_000 * (acknowledged_readings.len() as i64 % 5) + sensor;
        sql(node, "INSERT INTO readings VALUES (?, ?, ?)", json!([sensor, ts, 0.5]));
        acknowledged_readings.push((sensor, ts));
    };
    for (i, node) in [&a, &b, &c].into_iter().enumerate() {
        let site = 100 * (i as i64 + 1);
        sql(node, "INSERT INTO sites VALUES (?, ?)", json!([site, format!("site-{}", node.name)]));
        acknowledged_sites.push(site);
        shell(node, &format!("INSERT INTO sensors (id, site, kind) VALUES ({}, {site}, 'temp');", site + 1));
    }
    sql(&a, "INSERT INTO sites VALUES (1, 'shared')", json!([]));
    sql(&a, "INSERT INTO sensors (id, site, kind) VALUES (2, 1, 'flow')", json!([]));
    acknowledged_sites.push(1);
    wait_converged(&[&a, &b, &c], acknowledged_sites.len());

    // Cut c off; everyone keeps writing, including concurrent edits of the same row.
    fault(&c, true);
    for (round, node) in [&a, &b, &c, &a, &c].into_iter().enumerate() {
        let site = 1000 + round as i64;
        sql(node, "INSERT INTO sites VALUES (?, ?)", json!([site, format!("cut-{round}")]));
        acknowledged_sites.push(site);
        sql(node, "UPDATE sensors SET hits = hits + ? WHERE id = 2", json!([round + 1]));
        expected_hits += round as i64 + 1;
        append(node, round as i64);
    }
    sql(&a, "UPDATE sites SET name = 'renamed by a' WHERE id = 1", json!([]));
    sql(&c, "UPDATE sites SET name = 'renamed by c' WHERE id = 1", json!([]));
    // One serial taken on both sides of the cut: each node checks its own writes only.
    sql(&a, "INSERT INTO devices VALUES (1, 'sn-7')", json!([]));
    sql(&c, "INSERT INTO devices VALUES (2, 'sn-7')", json!([]));
    let again = json!({ "sql": "INSERT INTO devices VALUES (3, 'sn-7')", "params": [] });
    let (status, refused) = http(a.api, "POST", "/v1/sql", Some(&again));
    assert_ne!(status, 200, "a holds sn-7: {refused}");
    assert!(
        refused["error"].as_str().is_some_and(|e| e.contains("UNIQUE constraint failed: devices.serial")),
        "{refused}"
    );

    // The schema changes on both sides of the cut, with writes under each definition.
    shell(&a, "ALTER TABLE sensors ADD COLUMN unit TEXT DEFAULT 'C'; ALTER TABLE sensors RENAME kind TO category;");
    sql(&a, "INSERT INTO sensors (id, site, category, unit) VALUES (3001, 1, 'temp', 'F')", json!([]));
    sql(&c, "ALTER TABLE sensors RENAME COLUMN kind TO sort", json!([]));
    sql(&c, "INSERT INTO sensors (id, site, sort) VALUES (3002, 1, 'flow')", json!([]));
    sql(&c, "UPDATE sensors SET sort = 'temp2' WHERE id = 101", json!([]));

    // Kill b right after an acknowledged write, restart it on the same addresses.
    append(&b, 50);
    sql(&b, "INSERT INTO sites VALUES (2000, 'last before kill')", json!([]));
    acknowledged_sites.push(2000);
    let (b_sync, b_api) = (b.sync.to_string(), b.api.to_string());
    b.child.kill().expect("SIGKILL b");
    b.child.wait().expect("reaping b");
    let b = start("b", &b.data, &b_sync, &b_api);
    let survived = sql(&b, "SELECT name FROM sites WHERE id = 2000", json!([]));
    assert_eq!(survived["rows"], json!([["last before kill"]]), "b lost an acknowledged write");
    sql(&b, "INSERT INTO sites VALUES (2001, 'after restart')", json!([]));
    acknowledged_sites.push(2001);
    append(&b, 51);

    fault(&c, false);
    let took = wait_converged(&[&a, &b, &c], acknowledged_sites.len());
    println!("converged {:.1} s after the heal", took.as_secs_f64());

    for query in BATTERY {
        let answers: Vec<Json> = [&a, &b, &c].iter().map(|n| sql(n, query, json!([]))["rows"].clone()).collect();
        assert!(answers.iter().all(|x| *x == answers[0]), "{query}: {answers:?}");
    }
    let ids = sql(&a, "SELECT id FROM sites ORDER BY id", json!([]));
    let mut expected: Vec<Json> = acknowledged_sites.iter().map(|id| json!([id])).collect();
    expected.sort_by_key(|row| row[0].as_i64());
    assert_eq!(ids["rows"], Json::Array(expected), "an acknowledged write is missing");
    acknowledged_readings.sort_unstable();
    let expected_readings: Vec<Json> =
        acknowledged_readings.iter().map(|(s, ts)| json!([s, { "timestamp_ms": ts }])).collect();
    let readings = "SELECT sensor, ts FROM readings ORDER BY sensor, ts";
    for node in [&a, &b, &c] {
        let held = sql(node, readings, json!([]))["rows"].clone();
        assert_eq!(held, Json::Array(expected_readings.clone()), "{}: append-only rows", node.name);
    }
    let hits = sql(&c, "SELECT hits FROM sensors WHERE id = 2", json!([]));
    assert_eq!(hits["rows"], json!([[expected_hits]]), "counter increments were lost or doubled");
    let conflicts = sql(&b, "SELECT COUNT(*) FROM edgestore_conflicts WHERE table_name = 'sites'", json!([]));
    assert_eq!(conflicts["rows"], json!([[2]]), "the two concurrent renames are both kept");
    let unique = "SELECT primary_key, column_name, winner, value, is_winner FROM edgestore_conflicts \
                  WHERE kind = 'unique' ORDER BY primary_key";
    for node in [&a, &b, &c] {
        let listed = sql(node, unique, json!([]));
        let expected = json!([["(1)", "serial", "(1)", "sn-7", true], ["(2)", "serial", "(1)", "sn-7", false]]);
        assert_eq!(listed["rows"], expected, "{}: both devices kept, listed alike", node.name);
    }
    // One schema everywhere: `unit` added, `kind` under the winning one of the two names,
    // the other rename listed; every row written under either definition is there.
    let columns = "SELECT name FROM edgestore_columns WHERE table_name = 'sensors' ORDER BY position";
    let names = sql(&b, columns, json!([]))["rows"].clone();
    let renamed = names[2][0].as_str().expect("a name").to_string();
    assert!(renamed == "category" || renamed == "sort", "{names}");
    assert_eq!(names, json!([["id"], ["site"], [renamed], ["hits"], ["unit"]]));
    let written = format!("SELECT id, {renamed}, unit FROM sensors WHERE id IN (101, 3001, 3002) ORDER BY id");
    let rows = json!([[101, "temp2", "C"], [3001, "temp", "F"], [3002, "flow", "C"]]);
    for node in [&a, &b, &c] {
        assert_eq!(sql(node, &written, json!([]))["rows"], rows, "{}", node.name);
    }
    let lost = sql(&a, "SELECT lost_alters FROM edgestore_tables WHERE name = 'sensors'", json!([]));
    assert!(lost["rows"][0][0].as_str().is_some_and(|l| l.contains("RENAME COLUMN")), "{lost}");
    let schema = shell(&c, ".schema sensors");
    assert!(
        schema.contains("unit TEXT DEFAULT 'C'") && schema.contains("-- lost: ALTER TABLE sensors RENAME"),
        "{schema}"
    );

    wait_horizon_reached(&[&a, &b, &c]);
    let (status, metrics) = http(a.api, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("the exposition is text, not JSON").to_string();
    assert!(metrics.contains(&format!("edgestore_peer_connected{{peer=\"{}\"}} 1", c.id)), "{metrics}");
    let lag = format!("edgestore_horizon_lag_changes{{member=\"{}\"}} 0", c.id);
    assert!(metrics.contains(&lag) && metrics.contains("edgestore_horizon_behind_changes 0"), "{metrics}");

    // Idle and converged, every change is stable: each node's horizon reaches the common
    // vector and its compaction driver empties the log, the store staying intact.
    let started = Instant::now();
    for node in [&a, &b, &c] {
        while metric(node, "edgestore_log_floor_changes") < metric(node, "edgestore_changes") {
            assert!(started.elapsed() < CONVERGE_DEADLINE, "{}: the log was not compacted", node.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, check) = http(node.api, "POST", "/v1/check", Some(&json!({})));
        assert_eq!((status, &check["problems"]), (200, &json!([])), "{}: {check}", node.name);
    }
    println!("logs compacted {:.1} s after convergence", started.elapsed().as_secs_f64());

    // A new node joins the compacted cluster: nothing is left to replay, so it gets the
    // documents and the append-only blocks by state transfer over QUIC.
    let mut d = start("d", &data("d"), "127.0.0.1:0", "127.0.0.1:0");
    cli(&d, &["peers", "add", &a.id, &a.sync.to_string()]);
    cli(&a, &["peers", "add", &d.id, &d.sync.to_string()]);
    let took = wait_converged(&[&a, &d], acknowledged_sites.len());
    println!("a new node caught up by state transfer in {:.1} s", took.as_secs_f64());
    let held = sql(&d, readings, json!([]))["rows"].clone();
    assert_eq!(held, Json::Array(expected_readings), "d: append-only rows by state transfer");
    assert!(metric(&d, "edgestore_transfers_completed_total") >= 1, "d caught up by a transfer, not by log replay");
    let (status, check) = http(d.api, "POST", "/v1/check", Some(&json!({})));
    assert_eq!((status, &check["problems"]), (200, &json!([])), "d: {check}");
    terminate(&mut d);

    let mut nodes = [a, b, c];
    for node in &mut nodes {
        terminate(node);
    }
    assert!(!nodes[0].data.join("node.api").exists(), "an orderly stop removes node.api");
}
