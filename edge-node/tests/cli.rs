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
