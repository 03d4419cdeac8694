//! The `edge-node` binary as a user runs it: init, status, refusal to re-init.

use std::process::Command;

fn edge_node(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-node")).arg("--data-dir").arg(data_dir).args(args).output().unwrap()
}

#[test]
fn init_then_status_reports_the_same_node() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    let init = edge_node(&data, &["init"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let init_out = String::from_utf8(init.stdout).unwrap();
    let node_id = init_out.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(node_id.len(), 32);
    let status = edge_node(&data, &["status"]);
    assert!(status.status.success());
    let out = String::from_utf8(status.stdout).unwrap();
    assert!(out.contains(&format!("node id:    {node_id}")), "{out}");
    assert!(out.contains("integrity:  ok"), "{out}");
    let again = edge_node(&data, &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to replace a node identity"));
}

#[test]
fn status_without_a_node_explains_what_to_do() {
    let dir = tempfile::TempDir::new().unwrap();
    let status = edge_node(&dir.path().join("missing"), &["status"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("run `edge-node init` first"));
}

/// A shell transcript: `transcripts/sites.sql` in on standard input, exactly
/// `transcripts/sites.out` out (`tests/node_api.rs` runs the same one against a running node).
#[test]
fn shell_transcript() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    assert!(edge_node(&data, &["init"]).status.success());
    let script = include_str!("transcripts/sites.sql");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .arg("--data-dir")
        .arg(&data)
        .arg("shell")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), include_str!("transcripts/sites.out"));
}

#[test]
fn shell_scripts_stop_at_the_first_error_with_a_non_zero_exit() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    assert!(edge_node(&data, &["init"]).status.success());
    let out = edge_node(
        &data,
        &[
            "shell",
            "-c",
            "CREATE TABLE t (id INTEGER PRIMARY KEY); SELECT nope FROM t; CREATE TABLE u (id INTEGER PRIMARY KEY);",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such column: nope"));
    let tables = edge_node(&data, &["shell", "-c", ".tables"]);
    assert_eq!(String::from_utf8(tables.stdout).unwrap(), "t\n", "statements after the error did not run");
}

/// The shell on a data directory runs a statement on a thread with the SQL limits' stack
/// (a deep expression is refused, not a stack overflow) and stops it at `.timeout`.
#[test]
fn shell_refuses_deep_expressions_and_stops_at_its_timeout() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    assert!(edge_node(&data, &["init"]).status.success());
    let deep = format!("SELECT {};", vec!["1"; 1350].join("+"));
    let out = edge_node(&data, &["shell", "-c", &deep]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expression nested too deeply"), "{out:?}");
    let values: Vec<String> = (0..1000).map(|i| format!("({i})")).collect();
    let script = format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES {};\n.timeout 300\n\
         SELECT count(*) FROM t a, t b, t c, t d;",
        values.join(", ")
    );
    let out = edge_node(&data, &["shell", "-c", &script]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("statement exceeded its time limit (300 ms)"), "{out:?}");
}

/// `edge-node compact` on a stopped node: the log compacts up to the horizon (a node alone:
/// its own vector), documents are saved whole, the file shrinks, and the data stays.
#[test]
fn compact_shrinks_the_store_of_a_stopped_node_and_keeps_its_rows() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    assert!(edge_node(&data, &["init"]).status.success());
    // One argument holds at most 128 KiB (Linux's MAX_ARG_STRLEN).
    let rows: Vec<String> = (0..1000).map(|id| format!("({id}, '{}')", "v".repeat(50))).collect();
    let mut script =
        format!("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES {};", rows.join(", "));
    for round in 0..3 {
        script.push_str(&format!("UPDATE t SET v = 'round {round} {}';", "w".repeat(100)));
    }
    let loaded = edge_node(&data, &["shell", "-c", &script]);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));

    let compact = edge_node(&data, &["compact"]);
    let out = String::from_utf8(compact.stdout).unwrap();
    assert!(compact.status.success(), "{out}{}", String::from_utf8_lossy(&compact.stderr));
    let lengths: Vec<u64> = out
        .lines()
        .filter(|line| line.starts_with("store "))
        .map(|line| line.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(lengths.len(), 2, "{out}");
    assert!(lengths[1] < lengths[0], "the file shrank: {out}");
    assert!(out.contains("log:       5 entries"), "every statement's entry compacted: {out}");

    let count = edge_node(&data, &["shell", "-c", "SELECT count(*), min(v) FROM t;"]);
    let answer = String::from_utf8(count.stdout).unwrap();
    assert!(answer.contains("1000") && answer.contains("round 2"), "{answer}");
    let status = String::from_utf8(edge_node(&data, &["status"]).stdout).unwrap();
    assert!(status.contains("integrity:  ok"), "{status}");
    assert!(status.contains("5 compacted out of the log"), "{status}");
}
