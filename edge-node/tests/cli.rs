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

/// A shell transcript: statements in on standard input, the exact output out.
#[test]
fn shell_transcript() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("node");
    assert!(edge_node(&data, &["init"]).status.success());
    let script = "\
CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE sensors (id INTEGER PRIMARY KEY, site INTEGER, kind TEXT, hits COUNTER);
INSERT INTO sites VALUES (1, 'north'), (2, 'south');
INSERT INTO sensors (id, site, kind) VALUES (10, 1, 'temp'), (11, 1, 'flow;rate'), (12, NULL, 'spare');
UPDATE sensors SET hits = hits + 3 WHERE site = 1;
SELECT s.id, t.name, s.kind, s.hits
  FROM sensors s LEFT JOIN sites t ON t.id = s.site
  ORDER BY s.id;
.mode csv
SELECT name, COUNT(*) FROM sites JOIN sensors ON sensors.site = sites.id GROUP BY name;
.tables
";
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
    let expected = "\
(0 rows affected)
(0 rows affected)
(2 rows affected)
(3 rows affected)
(2 rows affected)
+----+-------+-----------+------+
| id | name  | kind      | hits |
+----+-------+-----------+------+
| 10 | north | temp      |    3 |
| 11 | north | flow;rate |    3 |
| 12 | NULL  | spare     |    0 |
+----+-------+-----------+------+
(3 rows)
name,COUNT(*)
north,2
sensors
sites
";
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
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
