//! The hostile-request suite (issue 9): one real `edge-node run` child process and the
//! requests a buggy or hostile local application sends it. Every case asserts that the
//! answer is the clear error it should be, that the node is still up afterwards
//! (`/v1/health`), that another client's `SELECT 1` was answered while the bad request
//! ran, and that the node's peak RSS (`VmHWM` in `/proc/<pid>/status`) stays under
//! [`RSS_BOUND_MIB`] with the 64 MiB statement budget of [`CONFIG`]. The suite prints a
//! table (request, answer, alive, peak RSS, the other client's slowest answer) for the
//! record; latencies are printed, never asserted (the machine may be loaded).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, start_with_env, Node};
use serde_json::{json, Value as Json};

/// The node's limits for the suite: small, so that the cases stay small.
const CONFIG: &str = "\
[api]
connections_max = 64
statements_max = 4
header_read_timeout_ms = 5000
body_read_timeout_ms = 1000
body_bytes_max = 65536
[sql]
statement_memory_mib = 64
memory_mib = 256
";
/// The bound on the node's peak RSS the suite asserts (with the budgets of [`CONFIG`]).
const RSS_BOUND_MIB: u64 = 512;
/// Slow-header connections opened at once in the connection-flood case (the cap is 64).
const SLOW_CONNECTIONS: usize = 300;

/// One line of the printed table.
struct Row {
    request: String,
    answer: String,
    alive: bool,
    peak_rss_mib: u64,
    probes: usize,
    probe_max_ms: f64,
}

/// Another client asking `SELECT 1` over and over while a case runs.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, Duration)>>,
}

impl Probe {
    fn start(api: SocketAddr, request: Vec<u8>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            // At least one probe runs even if the case is over at once.
            while answers.is_empty() || !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, _, _) = raw(api, &request);
                answers.push((status, started.elapsed()));
                std::thread::sleep(Duration::from_millis(20)); // pacing, so the probe is not a load of its own
            }
            answers
        });
        Probe { stop, thread }
    }

    /// Stops the probe; every answer must have one of `statuses`.
    fn finish(self, statuses: &[u16]) -> (usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.thread.join().expect("probe thread");
        for (status, _) in &answers {
            assert!(statuses.contains(status), "the other client got {status} (expected one of {statuses:?})");
        }
        let slowest = answers.iter().map(|(_, d)| d.as_secs_f64() * 1e3).fold(0.0, f64::max);
        (answers.len(), slowest)
    }
}

/// A `POST /v1/sql` request as bytes.
fn sql_request(sql: &str, params: &Json) -> Vec<u8> {
    post_request(&json!({ "sql": sql, "params": params }).to_string())
}

fn post_request(body: &str) -> Vec<u8> {
    format!("POST /v1/sql HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Sends `request` on a fresh connection; returns the status, the head and the JSON body.
fn raw(api: SocketAddr, request: &[u8]) -> (u16, String, Json) {
    let mut stream = TcpStream::connect(api).expect("connecting to the API");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    stream.write_all(request).expect("sending the request");
    read_answer(&mut stream)
}

/// Reads an answer; a connection the node closed (or reset) unanswered is status 0.
fn read_answer(stream: &mut TcpStream) -> (u16, String, Json) {
    let mut response = String::new();
    if let Err(error) = stream.read_to_string(&mut response) {
        assert!(error.kind() == std::io::ErrorKind::ConnectionReset, "reading the answer: {error}");
        return (0, format!("reset: {error}"), Json::Null);
    }
    let status: u16 = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_string(), serde_json::from_str(payload).unwrap_or(Json::String(payload.to_string())))
}

/// The node's peak resident set (MiB) so far.
fn peak_rss_mib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib / 1024
}

fn alive(node: &Node) -> bool {
    http(node.api, "GET", "/v1/health", None).0 == 200
}

fn start_node(dir: &tempfile::TempDir, name: &'static str, config: &str) -> Node {
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).expect("data directory");
    let file = data.join("hostile.toml");
    std::fs::write(&file, config).expect("writing the config");
    start_with_env(name, &data, "127.0.0.1:0", "127.0.0.1:0", &[("EDGE_NODE_CONFIG", file.to_str().expect("UTF-8"))])
}

/// Runs one case with a probe beside it, checks the node afterwards, and returns its row.
fn case(node: &Node, request: &str, probe_statuses: &[u16], run: impl FnOnce() -> String) -> Row {
    case_probed(node, request, sql_request("SELECT 1", &json!([])), probe_statuses, run)
}

/// [`case`] with the other client sending `probe` instead of `SELECT 1`.
fn case_probed(
    node: &Node,
    request: &str,
    probe: Vec<u8>,
    probe_statuses: &[u16],
    run: impl FnOnce() -> String,
) -> Row {
    let probe = Probe::start(node.api, probe);
    let answer = run();
    let (probes, probe_max_ms) = probe.finish(probe_statuses);
    let row = Row {
        request: request.to_string(),
        answer,
        alive: alive(node),
        peak_rss_mib: peak_rss_mib(node),
        probes,
        probe_max_ms,
    };
    assert!(row.alive, "{request}: the node is down");
    assert!(row.peak_rss_mib <= RSS_BOUND_MIB, "{request}: peak RSS {} MiB", row.peak_rss_mib);
    row
}

/// Asserts the status and that the error contains `needle`; returns the answer's summary.
fn expect_error(answer: (u16, String, Json), status: u16, needle: &str) -> String {
    let (got, head, body) = answer;
    let error = body["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(got, status, "{head}\n{body}");
    assert!(error.contains(needle), "expected {needle:?} in {error:?}");
    if status == 503 {
        assert!(head.to_ascii_lowercase().contains("retry-after:"), "a 503 says when to retry: {head}");
    }
    format!("{status} {error}")
}

fn print_table(rows: &[Row]) {
    println!("| request | answer | node alive | peak RSS (MiB) | other client: answers, slowest (ms) |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let answer: String = row.answer.chars().take(110).collect();
        println!(
            "| {} | {} | {} | {} | {}, {:.1} |",
            row.request,
            answer.replace('|', "\\|"),
            if row.alive { "yes" } else { "NO" },
            row.peak_rss_mib,
            row.probes,
            row.probe_max_ms
        );
    }
    println!("(peak RSS bound asserted: {RSS_BOUND_MIB} MiB, statement budget 64 MiB, node-wide 256 MiB)");
}

#[test]
fn hostile_requests_get_clear_errors_and_the_node_stays_up() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let node = start_node(&dir, "hostile", CONFIG);
    let mut rows = Vec::new();

    rows.push(case(&node, "body over api.body_bytes_max (64 KiB + 1)", &[200], || {
        let padding = "x".repeat(65_537);
        expect_error(raw(node.api, &post_request(&padding)), 413, "larger than 65536 bytes")
    }));
    rows.push(case(&node, "body announced but never sent", &[200], || {
        let mut stream = TcpStream::connect(node.api).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let head = "POST /v1/sql HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{\"sql\"";
        stream.write_all(head.as_bytes()).expect("sending");
        expect_error(read_answer(&mut stream), 408, "api.body_read_timeout_ms")
    }));
    rows.push(case(&node, "param integer 2^63", &[200], || {
        let body = r#"{"sql": "SELECT ?", "params": [9223372036854775808]}"#;
        expect_error(raw(node.api, &post_request(body)), 400, "does not fit a 64-bit INTEGER")
    }));
    rows.push(case(&node, "param integer 10^25", &[200], || {
        let body = r#"{"sql": "SELECT ?", "params": [10000000000000000000000000]}"#;
        expect_error(raw(node.api, &post_request(body)), 400, "does not fit a 64-bit INTEGER")
    }));
    rows.push(case(&node, "fewer params than placeholders", &[200], || {
        expect_error(raw(node.api, &sql_request("SELECT ?, ?", &json!([1]))), 400, "the statement takes 2, 1 given")
    }));
    rows.push(case(&node, "REAL infinity in a result and as a param", &[200], || {
        let (status, _, body) =
            raw(node.api, &sql_request("SELECT 1e308 * 10, -1e308 * 10, ?", &json!([{ "real": "-Infinity" }])));
        assert_eq!(status, 200, "{body}");
        let expected = json!([[{ "real": "Infinity" }, { "real": "-Infinity" }, { "real": "-Infinity" }]]);
        assert_eq!(body["rows"], expected);
        format!("200 {}", body["rows"])
    }));
    rows.extend(statement_cases(&node));
    rows.push(case(
        &node,
        &format!("{SLOW_CONNECTIONS} connections sending headers slowly (cap 64)"),
        &[200, 503],
        || slow_header_flood(&node),
    ));
    print_table(&rows);
}

/// `SELECT` of a chain `first op first op ...` of `terms` terms.
fn chain(prefix: &str, term: &str, op: &str, terms: usize) -> String {
    format!("{prefix}{}", vec![term; terms].join(op))
}

/// Either the statement works (flat chains may) and answers `expected`, or it is refused
/// with "expression nested too deeply"; never anything else.
fn works_or_too_deep(answer: (u16, String, Json), expected: &Json) -> String {
    let (status, head, body) = answer;
    match status {
        200 => {
            assert_eq!(&body["rows"], expected, "{head}");
            format!("200 {}", body["rows"])
        }
        _ => expect_error((status, head, body), 400, "expression nested too deeply (limit"),
    }
}

/// The statement cases: each needs the engine's limits (depth, memory budget, interrupts).
fn statement_cases(node: &Node) -> Vec<Row> {
    let values: Vec<String> = (0..1000).map(|i| format!("({i}, 'row {i:04}')")).collect();
    common::sql(node, "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)", json!([]));
    common::sql(node, &format!("INSERT INTO t VALUES {}", values.join(", ")), json!([]));
    let api = node.api;
    let query = |sql: &str, params: Json| raw(api, &sql_request(sql, &params));
    let mut rows = Vec::new();
    rows.push(case(node, "SELECT 1+1+…+1 (1,350 terms)", &[200], || {
        works_or_too_deep(query(&chain("SELECT ", "1", "+", 1350), json!([])), &json!([[1350]]))
    }));
    rows.push(case(node, "SELECT 1+1+…+1 (30,000 terms, 60 KB)", &[200], || {
        works_or_too_deep(query(&chain("SELECT ", "1", "+", 30_000), json!([])), &json!([[30_000]]))
    }));
    rows.push(case(node, "SELECT ?+?+…+? (1,350 params)", &[200], || {
        works_or_too_deep(query(&chain("SELECT ", "?", "+", 1350), json!(vec![1; 1350])), &json!([[1350]]))
    }));
    rows.push(case(node, "WHERE 1=1 AND 1=1 AND … (5,000 terms)", &[200], || {
        works_or_too_deep(query(&chain("SELECT 7 WHERE ", "1=1", " AND ", 5000), json!([])), &json!([[7]]))
    }));
    rows.push(case(node, "WHERE 1=0 OR 1=0 OR … OR 1=1 (5,000 terms)", &[200], || {
        let sql = format!("{} OR 1=1", chain("SELECT 7 WHERE ", "1=0", " OR ", 4999));
        works_or_too_deep(query(&sql, json!([])), &json!([[7]]))
    }));
    rows.push(case(node, "'a' || 'a' || … (5,000 terms)", &[200], || {
        let sql = format!("SELECT length({})", vec!["'a'"; 5000].join(" || "));
        works_or_too_deep(query(&sql, json!([])), &json!([[5000]]))
    }));
    rows.push(case(node, "((((…1…)))) nested 5,000 deep", &[200], || {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        expect_error(query(&sql, json!([])), 400, "expression nested too deeply (limit")
    }));
    rows.push(case(node, "x IN (0, 1, …) with 5,000 items", &[200], || {
        let items: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let sql = format!("SELECT count(*) FROM t WHERE id IN ({})", items.join(", "));
        works_or_too_deep(query(&sql, json!([])), &json!([[1000]]))
    }));
    let budget = "query exceeded its memory budget (64 MiB)";
    rows.push(case(node, "ORDER BY without LIMIT over t×t×t (10^9 rows)", &[200], || {
        let sql = "SELECT a.s, b.s, c.s FROM t a, t b, t c ORDER BY a.s || b.s || c.s";
        expect_error(query(sql, json!([])), 422, budget)
    }));
    rows.push(case(node, "GROUP BY with 10^9 groups", &[200], || {
        let sql = "SELECT a.id, b.id, c.id, count(*) FROM t a, t b, t c GROUP BY a.id, b.id, c.id";
        expect_error(query(sql, json!([])), 422, budget)
    }));
    rows.push(case(node, "group_concat over 10^9 rows", &[200], || {
        expect_error(query("SELECT group_concat(a.s) FROM t a, t b, t c", json!([])), 422, budget)
    }));
    rows.push(case(node, "replace(replace(…(1 KB string)…)) x6, each 10x", &[200], || {
        let sql = "SELECT length(replace(replace(replace(replace(replace(replace(?1, 'a', ?2), 'a', ?2), 'a', ?2), \
                   'a', ?2), 'a', ?2), 'a', ?2))";
        expect_error(query(sql, json!(["a".repeat(1024), "a".repeat(10)])), 422, budget)
    }));
    rows.push(case(node, "count(*) of t×t×t×t (10^12 rows), 500 ms limit", &[200], || {
        let body = json!({ "sql": ENDLESS, "params": [], "timeout_ms": 500 });
        expect_error(raw(api, &post_request(&body.to_string())), 408, "statement exceeded its time limit (500 ms)")
    }));
    rows.push(case(node, "count(*) of t×t×t×t, client gives up", &[200], || client_gives_up(node)));
    // The other client asks /v1/health here: a SELECT of its own would race the four for
    // the slots, and a fifth statement is what the case sends anyway.
    let health = b"GET /v1/health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n".to_vec();
    rows.push(case_probed(node, "5 statements at once (api.statements_max = 4)", health, &[200], || {
        statements_over_the_cap(node)
    }));
    rows.push(case(node, "more params than placeholders", &[200], || {
        expect_error(
            query("SELECT ?", json!([1, 2])),
            400,
            "wrong number of parameters: the statement takes 1, 2 given",
        )
    }));
    rows
}

/// A statement that runs for hours unless it is stopped (10^12 rows with the 1,000-row t).
const ENDLESS: &str = "SELECT count(*) FROM t a, t b, t c, t d";

/// Waits until `edgestore_sql_statements_running` is `n`: an event of the node the case
/// needs before its next step (looked at every 20 ms, for at most a minute).
fn wait_running(node: &Node, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(node, "edgestore_sql_statements_running") != n {
        assert!(Instant::now() < deadline, "never {n} statements running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client starts an endless statement and closes its connection: the statement stops.
fn client_gives_up(node: &Node) -> String {
    let mut stream = TcpStream::connect(node.api).expect("connecting");
    stream.write_all(&sql_request(ENDLESS, &json!([]))).expect("sending");
    wait_running(node, 1);
    let started = Instant::now();
    drop(stream);
    wait_running(node, 0);
    format!("statement stopped {:.0} ms after the client closed its connection", started.elapsed().as_secs_f64() * 1e3)
}

/// Four endless statements fill `api.statements_max`; a fifth is refused at once with 503
/// and `Retry-After`; the four then stop at their time limit.
fn statements_over_the_cap(node: &Node) -> String {
    let body = json!({ "sql": ENDLESS, "params": [], "timeout_ms": 5000 }).to_string();
    let api = node.api;
    let four: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || raw(api, &post_request(&body)))
        })
        .collect();
    wait_running(node, 4);
    let fifth = expect_error(raw(api, &post_request(&body)), 503, "api.statements_max");
    for answer in four {
        expect_error(answer.join().expect("client thread"), 408, "time limit (5000 ms)");
    }
    format!("{fifth}; the four: 408 at their time limit")
}

/// A counter of the node's `/metrics`.
fn metric(node: &Node, name: &str) -> u64 {
    let mut stream = TcpStream::connect(node.api).expect("connecting");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").expect("sending");
    let (status, _, body) = read_answer(&mut stream);
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// Opens [`SLOW_CONNECTIONS`] connections that send half a request head and stop. The node
/// serves at most 64 of them; the rest are refused at once (told `503` with `Retry-After`,
/// or closed unanswered past 64 refusals in progress). The header read timeout then
/// closes the 64, and the API answers `200` again.
fn slow_header_flood(node: &Node) -> String {
    let refused_before = metric(node, "edgestore_api_connections_refused_total");
    let mut streams = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let mut stream = TcpStream::connect(node.api).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: node\r\n").expect("half a head");
        streams.push(stream);
    }
    let mut refused = 0;
    for mut stream in streams {
        // Each connection ends: refused with an answer, or closed by the header timeout.
        let (status, head, _) = read_answer(&mut stream);
        match status {
            503 => {
                assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
                refused += 1;
            }
            0 => {} // closed by the header read timeout, or refused unanswered
            other => panic!("a half-sent request got {other}: {head}"),
        }
    }
    let refused_total = metric(node, "edgestore_api_connections_refused_total") - refused_before;
    // How many are refused depends on how fast the flood opens them against the header
    // read timeout (5 s) freeing slots; that the cap was reached and answered is what counts.
    assert!(refused > 0 && refused_total >= refused, "{refused_total} refused, {refused} told 503");
    assert_eq!(http(node.api, "GET", "/v1/health", None).0, 200, "the slots are free again");
    format!(
        "{refused_total} refused at once ({refused} told 503 + Retry-After), the rest closed by the header \
         read timeout; then 200"
    )
}

/// Sends SIGTERM, waits for the node to exit cleanly and prints how long it took.
fn terminate(node: &mut Node, while_: &str) {
    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let exit = node.child.wait().expect("waiting for the node");
    println!("the node exited {:.2} s after SIGTERM with {while_}", started.elapsed().as_secs_f64());
    assert!(exit.success(), "{exit:?}");
}

/// SIGTERM while a statement runs without a time limit: it is interrupted, its client is
/// told why, and the node exits.
#[test]
fn sigterm_interrupts_a_running_statement() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let mut node = start_node(&dir, "busy", "[api]\nstatement_timeout_ms = 0\n");
    let values: Vec<String> = (0..1000).map(|i| format!("({i})")).collect();
    common::sql(&node, "CREATE TABLE t (id INTEGER PRIMARY KEY)", json!([]));
    common::sql(&node, &format!("INSERT INTO t VALUES {}", values.join(", ")), json!([]));
    let api = node.api;
    let client = std::thread::spawn(move || raw(api, &sql_request(ENDLESS, &json!([]))));
    wait_running(&node, 1);
    terminate(&mut node, "a 10^12-row count running");
    let answer = expect_error(client.join().expect("client thread"), 503, "the node is shutting down");
    println!("its client: {answer}");
}

/// SIGTERM while a client holds a half-sent request: the node does not wait for it.
#[test]
fn sigterm_does_not_wait_for_a_half_sent_request() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    // A header timeout far beyond the wait below, so only shutdown can end the connection.
    let mut node = start_node(&dir, "term", "[api]\nheader_read_timeout_ms = 600000\nbody_read_timeout_ms = 600000\n");
    let mut half_head = TcpStream::connect(node.api).expect("connecting");
    half_head.write_all(b"POST /v1/sql HTTP/1.1\r\nHost: node\r\n").expect("half a head");
    let mut half_body = TcpStream::connect(node.api).expect("connecting");
    half_body.write_all(b"POST /v1/sql HTTP/1.1\r\nHost: node\r\nContent-Length: 100\r\n\r\n{").expect("half a body");
    // The half-sent body is inside a handler once the node answers another request.
    assert!(alive(&node));
    terminate(&mut node, "two half-sent requests open");
}
