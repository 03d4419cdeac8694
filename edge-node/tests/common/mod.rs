//! The harness of the end-to-end tests: `edge-node run` as a child process, its banner,
//! HTTP requests to its API, and the CLI.

#![allow(dead_code)] // each test file uses part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value as Json};

pub struct Node {
    pub name: &'static str,
    pub data: PathBuf,
    /// The node's log (its standard error).
    pub log: PathBuf,
    pub child: Child,
    pub id: String,
    pub sync: SocketAddr,
    pub api: SocketAddr,
}

pub fn edge_node() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edge-node"));
    command.env_remove("EDGE_NODE_DATA_DIR").env_remove("EDGE_NODE_CONFIG").env_remove("EDGE_NODE_API_TOKEN");
    command
}

/// Starts `edge-node run` and reads its banner for the node id and addresses.
pub fn start(name: &'static str, data: &Path, sync: &str, api: &str) -> Node {
    start_with_env(name, data, sync, api, &[])
}

/// [`start`] with extra environment variables.
pub fn start_with_env(name: &'static str, data: &Path, sync: &str, api: &str, env: &[(&str, &str)]) -> Node {
    start_logging_to(name, data, sync, api, env, &data.join("node.log"))
}

/// [`start_with_env`] with the log written to `log` (appended) instead of the data directory.
pub fn start_logging_to(
    name: &'static str,
    data: &Path,
    sync: &str,
    api: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Node {
    std::fs::create_dir_all(data).expect("data directory");
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let mut child = edge_node()
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(data)
        .args(["run", "--sync-listen", sync, "--api-listen", api, "--log-level", "info"])
        .env("EDGE_NODE_FAULT_INJECTION", "1")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawning edge-node run");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the banner, as a supervisor would.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (mut id, mut sync, mut api) = (None, None, None);
    while id.is_none() || sync.is_none() || api.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{name}: no banner"));
        let value = |prefix: &str| line.trim().strip_prefix(prefix).map(|v| v.trim().to_string());
        if let Some(v) = value("node id:") {
            id = Some(v);
        } else if let Some(v) = value("sync:") {
            sync = Some(v.trim_start_matches("quic://").parse().expect("sync address"));
        } else if let Some(v) = value("http api:") {
            api = Some(v.trim_start_matches("http://").parse().expect("api address"));
        }
    }
    let (id, sync, api) = (id.expect("id"), sync.expect("sync"), api.expect("api"));
    println!("{name}: node {id}, sync {sync}, api {api}");
    Node { name, data: data.to_path_buf(), log: log.to_path_buf(), child, id, sync, api }
}

/// The node's log (its standard error), appended across restarts.
pub fn log_file(data: &Path) -> std::fs::File {
    std::fs::create_dir_all(data).expect("data directory");
    std::fs::OpenOptions::new().create(true).append(true).open(data.join("node.log")).expect("log file")
}

impl Drop for Node {
    /// A failed test shows each node's log and leaves no process behind.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}'s log ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and JSON body. It
/// sends no `Content-Type` (and `curl -d` sends a form type): the API takes JSON whatever
/// the header says. The shell's client sends `application/json`, so both are exercised.
pub fn http(api: SocketAddr, method: &str, path: &str, body: Option<&Json>) -> (u16, Json) {
    http_with_token(api, method, path, body, None)
}

/// [`http`] with an `Authorization: Bearer` header when `token` is given.
pub fn http_with_token(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
    token: Option<&str>,
) -> (u16, Json) {
    try_http_with_token(api, method, path, body, token).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`] that reports a failed connection or a cut-off answer instead of panicking
/// (a node killed while answering).
pub fn try_http(api: SocketAddr, method: &str, path: &str, body: Option<&Json>) -> Result<(u16, Json), String> {
    try_http_with_token(api, method, path, body, None)
}

fn try_http_with_token(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
    token: Option<&str>,
) -> Result<(u16, Json), String> {
    let mut stream = TcpStream::connect(api).map_err(|e| format!("connecting to the API: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let body = body.map(Json::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default()
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("reading the answer: {e}"))?;
    let status: u16 =
        response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status code in the answer")?;
    let (_, payload) = response.split_once("\r\n\r\n").ok_or("the answer's headers do not end")?;
    Ok((status, serde_json::from_str(payload).unwrap_or(Json::String(payload.to_string()))))
}

/// The value of an unlabelled metric of `GET /metrics` (a counter's `_total` included).
pub fn metric(node: &Node, name: &str) -> u64 {
    let (status, answer) = http(node.api, "GET", "/metrics", None);
    assert_eq!(status, 200, "{answer}");
    let text = answer.as_str().expect("the exposition is text");
    let value = text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' '));
    value.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{}: no metric {name}", node.name))
}

/// Runs SQL through the API; panics unless it succeeds.
pub fn sql(node: &Node, text: &str, params: Json) -> Json {
    let (status, answer) = http(node.api, "POST", "/v1/sql", Some(&json!({ "sql": text, "params": params })));
    assert_eq!(status, 200, "{}: {text}: {answer}", node.name);
    answer
}

/// Runs statements through `edge-node shell -c` (which finds the running node's API).
pub fn shell(node: &Node, script: &str) -> String {
    let output = edge_node().arg("--data-dir").arg(&node.data).args(["shell", "-c", script]).output().expect("shell");
    assert!(output.status.success(), "{}: shell failed: {}", node.name, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

pub fn cli(node: &Node, args: &[&str]) {
    let output = edge_node().arg("--data-dir").arg(&node.data).args(args).output().expect("edge-node");
    assert!(output.status.success(), "{}: {args:?}: {}", node.name, String::from_utf8_lossy(&output.stderr));
}
