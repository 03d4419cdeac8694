//! MQTT ingest end to end: a real mosquitto broker on a loopback port, real
//! `mosquitto_pub` publishers and `edge-node run` child processes (docs/design.md § MQTT
//! ingest). `.ci/run` installs mosquitto from Debian's packages.
//!
//! - rows land in an ordinary table and replicate to a peer; a redelivered key is a
//!   duplicate, not a second row; bad payloads become dead letters; the node reconnects
//!   after the broker restarts and ingests what is published after; a topic level that is
//!   not ASCII fills its column;
//! - kill -9 while messages stream in: after a restart every message the broker accepted
//!   is in the table (an acknowledgement to the broker only follows a durable commit),
//!   once in an append-only table with a deduplication key, and a redelivered message
//!   twice in a key-less table (the figures are printed);
//! - a broker that sends without limit (as mosquitto 2.0 does past its
//!   `max_inflight_messages` to a subscriber that acknowledges steadily) is slowed by the
//!   node, not cut off: the node holds at most `mqtt.pending_mib` and keeps its session.
//!
//! Waiting is for conditions, bounded by a deadline; nothing sleeps to pass.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cli, http, sql, start, Node};
use serde_json::{json, Value as Json};

/// How long a condition may take to hold.
const DEADLINE: Duration = Duration::from_secs(90);

/// A mosquitto broker on a loopback port, persisting to its directory.
struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    /// Starts mosquitto on a free loopback port and waits until it accepts connections.
    fn start(dir: &Path) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        Broker::start_on(dir, port)
    }

    fn start_on(dir: &Path, port: u16) -> Broker {
        Broker::start_with(dir, port, 1000)
    }

    /// `inflight`: mosquitto's `max_inflight_messages`, 0 for no limit.
    fn start_with(dir: &Path, port: u16, inflight: u32) -> Broker {
        Broker::start_configured(dir, port, inflight, "")
    }

    /// With a second listener on `tls_port` that speaks TLS with `pki`'s server
    /// certificate and requires a client certificate signed by its CA.
    fn start_tls(dir: &Path, tls_port: u16, pki: &Pki) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let listener = format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.ca.display(),
            pki.server.0.display(),
            pki.server.1.display()
        );
        let broker = Broker::start_configured(dir, port, 1000, &listener);
        wait_for("the broker's TLS listener", || TcpStream::connect(("127.0.0.1", tls_port)).is_ok());
        broker
    }

    fn start_configured(dir: &Path, port: u16, inflight: u32, more: &str) -> Broker {
        std::fs::create_dir_all(dir).expect("broker directory");
        // The defaults would drop messages: 20 in flight, 1000 queued for a node away.
        // Started as root (CI), mosquitto would switch to user mosquitto, which cannot
        // write the test's directory: persistence and the log would be off.
        let config = format!(
            "user root\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_inflight_messages {inflight}\nmax_queued_messages 100000\nlog_dest file {}/mosquitto.log\n\
             listener {port} 127.0.0.1\n{more}",
            dir.display(),
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("broker config");
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning mosquitto (apt-get install mosquitto mosquitto-clients)");
        let broker = Broker { child, port, dir: dir.to_path_buf() };
        wait_for("the broker to listen", || TcpStream::connect(broker.addr()).is_ok());
        broker
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops it with SIGTERM (it saves its persistent state) and waits for it.
    fn stop(mut self) -> (PathBuf, u16) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        self.child.wait().expect("waiting for mosquitto");
        (self.dir.clone(), self.port)
    }

    /// Publishes `lines`, one message each, at QoS 1 on `topic`.
    fn publish(&self, topic: &str, lines: &[String]) -> Publisher {
        // Line-buffered output (coreutils' stdbuf): the last PUBACK lines would otherwise
        // wait in mosquitto_pub's stdout buffer until it exits.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_pub", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-t", topic])
            .args(["-l", "-d"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning mosquitto_pub (apt-get install mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (acks_tx, acks) = mpsc::channel();
        std::thread::spawn(move || {
            let lines = BufReader::new(stdout).lines().map_while(Result::ok);
            for _ in lines.filter(|line| line.contains("received PUBACK")) {
                if acks_tx.send(()).is_err() {
                    return;
                }
            }
        });
        let mut stdin = child.stdin.take().expect("piped stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("writing to mosquitto_pub");
        }
        Publisher { child, stdin: Some(stdin), acks, expected: lines.len() }
    }

    fn publish_all(&self, topic: &str, lines: &[String]) {
        self.publish(topic, lines).wait();
    }
}

/// A `mosquitto_pub -l` child and the broker's acknowledgements it has printed.
///
/// mosquitto_pub 2.0.11 (Debian 12) exits at the end of its input without sending what it
/// still queues (of 250 000 lines from a file it sent 53 395), so its input stays open
/// until the broker has acknowledged every line (`-d` prints each PUBACK).
struct Publisher {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    acks: mpsc::Receiver<()>,
    expected: usize,
}

impl Publisher {
    /// Waits until the broker has acknowledged every message, then ends the publisher.
    fn wait(mut self) {
        let started = Instant::now();
        for acked in 0..self.expected {
            let left = DEADLINE.saturating_sub(started.elapsed());
            assert!(
                self.acks.recv_timeout(left).is_ok(),
                "the broker acknowledged {acked} of {} messages",
                self.expected
            );
        }
        drop(self.stdin.take());
        let status = self.child.wait().expect("mosquitto_pub");
        assert!(status.success(), "mosquitto_pub failed: {status:?}");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: apt-get install mosquitto mosquitto-clients")
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A data directory whose config ingests `sites/<site>/readings` into `readings` and
/// `events/<site>` into the key-less `events`.
fn data_dir(root: &Path, name: &str, broker: &Broker) -> PathBuf {
    data_dir_with(root, name, broker, "")
}

/// [`data_dir`] with `mqtt` lines added to its `[mqtt]` section.
fn data_dir_with(root: &Path, name: &str, broker: &Broker, mqtt: &str) -> PathBuf {
    data_dir_for(root, name, &format!("mqtt://127.0.0.1:{}", broker.port), mqtt)
}

/// [`data_dir_with`] for the broker at `url`.
fn data_dir_for(root: &Path, name: &str, url: &str, mqtt: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).expect("data directory");
    let config = format!(
        "cluster = \"mqtt\"\n[sync]\nkeepalive_ms = 300\nidle_timeout_ms = 1500\n\
         [mqtt]\nbroker = \"{url}\"\nbatch_ms = 10\n{mqtt}\
         [[mqtt.ingest]]\ntopic = \"sites/+/readings\"\ntable = \"readings\"\ncolumns_from_topic = {{ \"1\" = \"site\" }}\n\
         [[mqtt.ingest]]\ntopic = \"events/+\"\ntable = \"events\"\ncolumns_from_topic = {{ \"1\" = \"site\" }}\n"
    );
    std::fs::write(path.join("edge-node.toml"), config).expect("config file");
    path
}

/// Certificates for a TLS broker, as PEM files: a CA, the broker's certificate for
/// 127.0.0.1 and a client's, both signed by it, and a CA that signed neither.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    other_ca: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki directory");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("a PEM file");
            path
        };
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("a key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("a CA certificate");
            (cert, rcgen::Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("edgestore test CA");
        let (other_cert, _) = ca("another CA");
        let leaf = |name: &str, san: &str| {
            let key = rcgen::KeyPair::generate().expect("a key");
            let cert = rcgen::CertificateParams::new(vec![san.to_string()])
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("a certificate");
            (write(&format!("{name}.pem"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
        };
        let server = leaf("server", "127.0.0.1");
        let client = leaf("client", "gw-7");
        Pki { ca: write("ca.pem", ca_cert.pem()), server, client, other_ca: write("other-ca.pem", other_cert.pem()) }
    }
}

const SCHEMA: &str = "CREATE TABLE readings (site TEXT NOT NULL, seq INTEGER NOT NULL, value REAL, \
                      PRIMARY KEY (site, seq))";
const EVENTS: &str = "CREATE TABLE events (site TEXT, seq INTEGER, kind TEXT)";
/// `readings` as telemetry: append-only, its key a deduplication key that skips a
/// message the broker redelivers (docs/design.md § "Built: stage 2, part 2").
const APPEND_SCHEMA: &str = "CREATE TABLE readings (site TEXT NOT NULL, seq INTEGER NOT NULL, value REAL, \
                             PRIMARY KEY (site, seq)) WITH (append_only = true)";

fn mqtt_status(node: &Node) -> Json {
    let (status, answer) = http(node.api, "GET", "/v1/status", None);
    assert_eq!(status, 200, "{answer}");
    answer["mqtt"].clone()
}

fn count(node: &Node, query: &str) -> i64 {
    let (status, answer) = http(node.api, "POST", "/v1/sql", Some(&json!({ "sql": query, "params": [] })));
    if status != 200 {
        return -1; // The table has not reached this node yet.
    }
    answer["rows"][0][0].as_i64().expect("a count")
}

fn readings(seqs: std::ops::Range<i64>) -> Vec<String> {
    seqs.map(|seq| json!({ "seq": seq, "value": seq as f64 / 2.0 }).to_string()).collect()
}

#[test]
fn messages_become_rows_replicate_and_bad_ones_become_dead_letters() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let mut broker = Broker::start(&dir.path().join("broker"));
    let a = start("a", &data_dir(dir.path(), "a", &broker), "127.0.0.1:0", "127.0.0.1:0");
    let b_data = dir.path().join("b");
    std::fs::create_dir_all(&b_data).expect("data directory");
    std::fs::write(b_data.join("edge-node.toml"), "cluster = \"mqtt\"\n").expect("config file");
    let b = start("b", &b_data, "127.0.0.1:0", "127.0.0.1:0");
    cli(&a, &["peers", "add", &b.id, &b.sync.to_string()]);
    cli(&b, &["peers", "add", &a.id, &a.sync.to_string()]);
    sql(&a, SCHEMA, json!([]));
    sql(&a, EVENTS, json!([]));
    wait_for("a's subscriptions", || mqtt_status(&a)["subscribed"] == json!(true));

    broker.publish_all("sites/s1/readings", &readings(0..500));
    let bad = [
        "not json".to_string(),
        json!({ "seq": "seven" }).to_string(),
        json!({ "seq": 1, "humidity": 40 }).to_string(),
        json!([]).to_string(),
        // A key that exists: a duplicate, the first value stays.
        json!({ "seq": 5, "value": 99.0 }).to_string(),
    ];
    broker.publish_all("sites/s1/readings", &bad);
    wait_for("500 rows and 4 dead letters", || {
        count(&a, "SELECT COUNT(*) FROM readings") == 500
            && count(&a, "SELECT COUNT(*) FROM edgestore_dead_letters") == 4
    });
    let value = sql(&a, "SELECT value, site FROM readings WHERE seq = 5", json!([]));
    assert_eq!(value["rows"], json!([[2.5, "s1"]]), "a duplicate key leaves the first row");
    let letters =
        sql(&a, "SELECT topic, table_name, payload, error FROM edgestore_dead_letters ORDER BY seq", json!([]));
    let letters = letters["rows"].as_array().expect("rows").clone();
    println!("dead letters: {letters:#?}");
    for (letter, (payload, error)) in letters.iter().zip([
        ("not json", "not JSON"),
        ("{\"seq\":\"seven\"}", "seq"),
        ("{\"humidity\":40,\"seq\":1}", "no column \"humidity\""),
        ("[]", "empty array"),
    ]) {
        assert_eq!(letter[0], json!("sites/s1/readings"));
        assert_eq!(letter[1], json!("readings"));
        assert_eq!(letter[2].as_str().map(|p| p.replace(' ', "")), Some(payload.replace(' ', "")), "{letter}");
        assert!(letter[3].as_str().is_some_and(|e| e.contains(error)), "{letter}: expected {error:?}");
    }
    let status = mqtt_status(&a);
    assert_eq!((status["rows"].clone(), status["refused"].clone()), (json!(500), json!(4)), "{status}");
    assert!(status["duplicates"].as_u64() >= Some(1), "{status}");
    assert_eq!(common::metric(&a, "edgestore_mqtt_rows_total"), 500);

    // Ingested rows are ordinary rows: they replicate.
    wait_for("b to hold the rows", || count(&b, "SELECT COUNT(*) FROM readings") == 500);

    // The broker restarts; the node reconnects and ingests what is published after.
    let (broker_dir, port) = broker.stop();
    wait_for("a to notice the broker is gone", || mqtt_status(&a)["connected"] == json!(false));
    broker = Broker::start_on(&broker_dir, port);
    wait_for("a to subscribe again", || mqtt_status(&a)["subscribed"] == json!(true));
    broker.publish_all("sites/s2/readings", &readings(0..100));
    wait_for("the rows published after the restart", || {
        count(&a, "SELECT COUNT(*) FROM readings WHERE site = 's2'") == 100
    });
    let status = mqtt_status(&a);
    assert!(status["connects"].as_u64() >= Some(2), "{status}");

    // A topic level outside ASCII (`rows::topic_matches`' unit test covers a topic that
    // starts with one, on which rumqttc's matcher panics).
    broker.publish_all("sites/é-7/readings", &readings(0..3));
    wait_for("the rows of a non-ASCII topic", || count(&a, "SELECT COUNT(*) FROM readings WHERE site = 'é-7'") == 3);
    drop(broker);
}

#[test]
fn kill_9_while_ingesting_loses_no_message_the_broker_accepted() {
    const MESSAGES: i64 = 10_000;
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let broker = Broker::start(&dir.path().join("broker"));
    let data = data_dir(dir.path(), "a", &broker);
    let mut a = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    sql(&a, APPEND_SCHEMA, json!([]));
    sql(&a, EVENTS, json!([]));
    wait_for("a's subscriptions", || mqtt_status(&a)["subscribed"] == json!(true));

    let keyed = broker.publish("sites/s1/readings", &readings(0..MESSAGES));
    let events: Vec<String> = (0..MESSAGES).map(|seq| json!({ "seq": seq, "kind": "door" }).to_string()).collect();
    let keyless = broker.publish("events/s1", &events);
    // Three kill -9s while the messages stream in, each at a later point.
    let mut rows_at_kills = Vec::new();
    for fraction in [10, 40, 70] {
        let stored = || count(&a, "SELECT COUNT(*) FROM readings");
        let started = Instant::now();
        while stored() < MESSAGES * fraction / 100 {
            assert!(started.elapsed() < DEADLINE, "ingest stalled: {}", mqtt_status(&a));
            std::thread::sleep(Duration::from_millis(50));
        }
        rows_at_kills.push(stored());
        a.child.kill().expect("kill -9");
        a.child.wait().expect("waiting for the killed node");
        drop(a);
        a = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    }
    // The publishers finish against the broker (which holds what the node has not taken).
    for publisher in [keyed, keyless] {
        publisher.wait();
    }
    wait_for("every message in the tables", || {
        count(&a, "SELECT COUNT(*) FROM readings") == MESSAGES
            && count(&a, "SELECT COUNT(DISTINCT seq) FROM events") == MESSAGES
    });
    let seqs = sql(&a, "SELECT MIN(seq), MAX(seq), COUNT(*) FROM readings", json!([]));
    assert_eq!(seqs["rows"], json!([[0, MESSAGES - 1, MESSAGES]]));
    // One node wrote every row: a redelivery was refused by the key, so none is a
    // duplicate kept beside the first (as a concurrent write on another node would be).
    assert_eq!(count(&a, "SELECT COUNT(*) FROM edgestore_conflicts WHERE kind = 'duplicate'"), 0);
    // A key-less table has no key to see a redelivery by: a message whose batch was
    // durable but not yet acknowledged at the kill is there twice.
    let events_rows = count(&a, "SELECT COUNT(*) FROM events");
    let status = mqtt_status(&a);
    println!(
        "kill -9 at {rows_at_kills:?} readings stored: {MESSAGES} messages per table, {} duplicate keyed rows \
         skipped after the last restart, {} key-less rows for {MESSAGES} events ({} redelivered twice)",
        status["duplicates"],
        events_rows,
        events_rows - MESSAGES
    );
    assert!(events_rows >= MESSAGES);
    assert_eq!(count(&a, "SELECT COUNT(*) FROM edgestore_dead_letters"), 0);
}

#[test]
fn a_broker_that_sends_more_than_the_node_holds_is_slowed_not_cut_off() {
    const MESSAGES: i64 = 20_000;
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    // No in-flight limit: on the resumed session the broker writes every queued message
    // at once, some 3.5 MB for a node that holds 1 MiB.
    let broker = Broker::start_with(&dir.path().join("broker"), port, 0);
    let data = data_dir_with(dir.path(), "a", &broker, "pending_mib = 1\n");
    let mut a = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    sql(&a, SCHEMA, json!([]));
    sql(&a, EVENTS, json!([]));
    wait_for("a's subscriptions", || mqtt_status(&a)["subscribed"] == json!(true));
    // The node goes away; the broker queues the messages for its session.
    a.child.kill().expect("kill -9");
    a.child.wait().expect("waiting for the killed node");
    drop(a);
    broker.publish_all("sites/s1/readings", &readings(0..MESSAGES));

    let a = start("a", &data, "127.0.0.1:0", "127.0.0.1:0");
    wait_for("every queued message in the table", || count(&a, "SELECT COUNT(*) FROM readings") == MESSAGES);
    let status = mqtt_status(&a);
    println!(
        "{MESSAGES} queued messages after a restart with mqtt.pending_mib = 1: peak held {} bytes of {}, reading \
         throttled {} ms, {} connects, {} disconnects",
        status["pending_bytes_peak"],
        status["pending_bytes_max"],
        status["throttled_ms"],
        status["connects"],
        status["disconnects"]
    );
    assert_eq!(status["pending_bytes_max"], json!(1 << 20), "{status}");
    assert!(status["pending_bytes_peak"].as_u64() <= Some(1 << 20), "the node held more than it may: {status}");
    // Before the throttle the node cut the connection at the limit, and the broker resent
    // everything in flight on every reconnect: no progress.
    assert_eq!((status["connects"].clone(), status["disconnects"].clone()), (json!(1), json!(0)), "{status}");
    assert_eq!(status["abandoned"], json!(0), "{status}");
    wait_for("nothing held unwritten", || mqtt_status(&a)["pending_bytes"] == json!(0));
    drop(broker);
}

#[test]
fn messages_arrive_over_tls_from_a_broker_that_requires_a_client_certificate() {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let pki = Pki::new(&dir.path().join("pki"));
    let tls_port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    // Publishers use the broker's plain listener; the nodes its TLS one.
    let broker = Broker::start_tls(&dir.path().join("broker"), tls_port, &pki);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let files = |ca: &Path| {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            pki.client.0.display(),
            pki.client.1.display()
        )
    };
    let a = start("a", &data_dir_for(dir.path(), "a", &url, &files(&pki.ca)), "127.0.0.1:0", "127.0.0.1:0");
    sql(&a, SCHEMA, json!([]));
    wait_for("a's subscriptions over TLS", || mqtt_status(&a)["subscribed"] == json!(true));
    assert_eq!(mqtt_status(&a)["broker"], json!(url));
    broker.publish_all("sites/s1/readings", &readings(0..200));
    wait_for("200 rows over TLS", || count(&a, "SELECT COUNT(*) FROM readings") == 200);

    // A node that trusts another CA does not take the broker's certificate, and says why.
    let b = start("b", &data_dir_for(dir.path(), "b", &url, &files(&pki.other_ca)), "127.0.0.1:0", "127.0.0.1:0");
    wait_for("b to refuse the broker's certificate", || {
        let error = mqtt_status(&b)["last_error"]["error"].as_str().unwrap_or_default().to_string();
        error.contains("certificate") || error.contains("UnknownIssuer")
    });
    let status = mqtt_status(&b);
    println!("b, trusting another CA: {}", status["last_error"]);
    assert_eq!(status["connects"], json!(0), "{status}");
    // Without a client certificate the broker refuses the node.
    let c_files = format!("ca_file = \"{}\"\n", pki.ca.display());
    let c = start("c", &data_dir_for(dir.path(), "c", &url, &c_files), "127.0.0.1:0", "127.0.0.1:0");
    wait_for("the broker to refuse c without a client certificate", || {
        mqtt_status(&c)["last_error"]["error"].as_str().is_some()
    });
    let status = mqtt_status(&c);
    println!("c, without a client certificate: {}", status["last_error"]);
    assert_eq!(status["subscribed"], json!(false), "{status}");
}
