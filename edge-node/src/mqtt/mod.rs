//! MQTT ingest (`[mqtt]`): the node subscribes to topics on a broker (over TCP, or TLS:
//! `tls.rs`) and writes each message's JSON payload as rows of a table (docs/design.md §
//! MQTT ingest).
//!
//! Two tasks. The connection task keeps one MQTT 3.1.1 session (a persistent session:
//! `clean_session = false`, QoS 1, manual acknowledgements) and forwards each message with
//! the client of the connection it arrived on. The batcher gathers up to
//! `mqtt.batch_messages` messages or `mqtt.batch_ms`, writes them in one job of a group
//! commit (`store.rs`), and acknowledges them only after that commit is durable: a message
//! the broker saw acknowledged is in the store, and one that was not is delivered again.
//!
//! Every connection gets a new client, so an acknowledgement is only ever sent on the
//! connection its message arrived on. A packet id is only unique among the messages in
//! flight on one connection: after a reconnect the broker redelivers the unacknowledged
//! messages and may give a freed id to a new message, so a late acknowledgement sent on
//! the new connection could acknowledge a message that is not durable yet. The old
//! client's channel is closed with its connection, and its late acknowledgements go
//! nowhere; the broker redelivers those messages, which `store.rs` counts as duplicates.
//! Messages of a connection that ended and are not written yet are not written at all
//! (each delivery carries its connection's `alive` flag): the broker redelivers them.
//!
//! What the node holds is bounded by `mqtt.pending_mib` whatever the broker does
//! (mosquitto 2.0 sends far more than its `max_inflight_messages` to a subscriber that
//! acknowledges steadily, and MQTT 3.1.1 gives a client no way to limit it): past half of
//! it the connection task reads one packet batch per [`THROTTLED_POLL`] until the batcher
//! has written enough, so the socket's flow control holds the broker back; the batcher
//! never waits for the connection task (written messages are released before their
//! acknowledgements are queued, and an acknowledgement that does not fit in the client's
//! channel waits in [`Link::overflow`]).

mod rows;
mod store;
pub mod tls;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgestore::sql::ExecOptions;
use edgestore::ReplicaHandle;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use serde_json::{json, Value as JsonValue};
use sync_protocol::transport::SyncNode;
use tokio::sync::{mpsc, Notify};

pub use rows::{Route, UnknownKeys};
use store::{Incoming, Statements};

/// The broker's port when `mqtt.broker` names none.
pub const DEFAULT_PORT: u16 = 1883;
/// The broker's port when a `mqtts://` URL names none.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Default `mqtt.batch_messages`.
pub const DEFAULT_BATCH_MESSAGES: usize = 1000;
/// Default `mqtt.batch_ms`.
pub const DEFAULT_BATCH_MS: u64 = 20;
/// Default `mqtt.keep_alive_s`.
pub const DEFAULT_KEEP_ALIVE_S: u64 = 30;
/// Default `mqtt.payload_bytes_max`.
pub const DEFAULT_PAYLOAD_BYTES_MAX: usize = 256 * 1024;
/// Largest `mqtt.payload_bytes_max` accepted: a batch holds up to `batch_messages` of them.
pub const PAYLOAD_BYTES_LIMIT: usize = 16 << 20;
/// Bytes of a PUBLISH packet besides its payload, at most: fixed header (5), topic length
/// and topic (2 + 65 535), packet id (2).
const PACKET_OVERHEAD_BYTES_MAX: usize = 5 + 2 + 65_535 + 2;
/// Default `mqtt.pending_mib`: MiB of received messages not yet written that the node
/// holds, at most (payload, topic and [`DELIVERY_OVERHEAD_BYTES`] each). Past half of it
/// reading is throttled; past all of it the connection is dropped (the broker keeps the
/// messages) and made again once the batcher has written half.
pub const DEFAULT_PENDING_MIB: u64 = 64;
/// Largest `mqtt.pending_mib` accepted.
pub const PENDING_MIB_LIMIT: u64 = 4096;
/// What a delivery costs besides its payload and topic, counted against
/// `mqtt.pending_mib`, so that empty messages are bounded too.
const DELIVERY_OVERHEAD_BYTES: u64 = 128;
/// While the node holds more than half of `mqtt.pending_mib`, the connection task polls
/// its event loop (which reads at most 10 packets, or sends one acknowledgement or ping)
/// once per this, or as soon as the batcher has written enough: reading slows to what the
/// store writes, and pings and acknowledgements still go out.
const THROTTLED_POLL: Duration = Duration::from_millis(100);
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Reconnect backoff to the broker, and retry backoff of a batch the store refused:
/// first delay and cap (ms).
const BACKOFF_MS: (u64, u64) = (200, 10_000);

/// `[mqtt]`, resolved and validated.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's TCP port.
    pub port: u16,
    /// TLS to the broker (`mqtts://`), its client configuration built from `mqtt.ca_file`
    /// and the client certificate (`tls.rs`); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The MQTT client id; `None`: `edge-<node id>`.
    pub client_id: Option<String>,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// Seconds between keep-alive pings.
    pub keep_alive_s: u64,
    /// Messages written in one batch, at most.
    pub batch_messages: usize,
    /// How long a batch waits for more messages after its first (ms).
    pub batch_ms: u64,
    /// Largest MQTT packet accepted (bytes).
    pub payload_bytes_max: usize,
    /// Bytes of received messages not yet written that the node holds, at most.
    pub pending_bytes_max: u64,
    /// The ingests, in the order they are matched.
    pub routes: Vec<Route>,
}

impl MqttConfig {
    /// The broker's URL as the node uses it (an IPv6 address in brackets).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    /// Bytes held past which reading is throttled, and below which a connection dropped
    /// for holding too much is made again: half of `pending_bytes_max`.
    fn throttle_mark(&self) -> u64 {
        self.pending_bytes_max / 2
    }
}

/// A broker's address as its URL gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://` (or `ssl://`): TLS.
    pub tls: bool,
}

/// Parses `mqtt://host[:port]` (or `tcp://`), and `mqtts://host[:port]` (or `ssl://`)
/// for TLS; websockets are named as not built.
pub fn parse_broker(url: &str) -> Result<BrokerUrl> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{url:?} is not a broker URL: write mqtt://host or mqtt://host:port");
    };
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, DEFAULT_PORT),
        "mqtts" | "ssl" => (true, DEFAULT_TLS_PORT),
        "wss" | "ws" => {
            bail!("{url:?}: this build speaks MQTT over TCP (mqtt://) and TLS (mqtts://); websockets are not built in")
        }
        other => bail!("{url:?}: unknown scheme {other:?}; write mqtt://host[:port] or mqtts://host[:port]"),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        bail!("{url:?} is not a broker URL: write mqtt://host or mqtt://host:port (credentials go in mqtt.username)");
    }
    // An IPv6 address is written in brackets: mqtt://[::1]:1883.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && (!host.contains(':') || host.starts_with('[')) => {
            (host, port.parse::<u16>().with_context(|| format!("{url:?}: {port:?} is not a port"))?)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{url:?} names no host");
    }
    Ok(BrokerUrl { host: host.to_string(), port, tls })
}

/// What the ingest has done, for `GET /v1/status` and the metrics. Counters only grow.
#[derive(Debug, Default)]
pub struct IngestStatus {
    /// Whether a session with the broker is up.
    pub connected: AtomicBool,
    /// Whether the broker granted every subscription of the current session.
    pub subscribed: AtomicBool,
    /// Sessions established.
    pub connects: AtomicU64,
    /// Sessions lost.
    pub disconnects: AtomicU64,
    /// Messages received (redeliveries included).
    pub messages: AtomicU64,
    /// Rows inserted.
    pub rows: AtomicU64,
    /// Rows skipped because their key existed (redeliveries of keyed rows).
    pub duplicates: AtomicU64,
    /// Messages refused, kept as dead letters.
    pub refused: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages received and not yet written (or abandoned).
    pub pending: AtomicU64,
    /// Their bytes (payload, topic and overhead).
    pub pending_bytes: AtomicU64,
    /// The most `pending_bytes` has been.
    pub pending_bytes_peak: AtomicU64,
    /// Milliseconds the connection task spent throttled, holding more than half of
    /// `mqtt.pending_mib`.
    pub throttled_ms: AtomicU64,
    /// Signalled whenever the batcher takes messages off `pending_bytes`.
    released: Notify,
    /// Messages that came with the retain flag (stored like any other).
    pub retained: AtomicU64,
    /// Messages received on a connection that ended before they were written: not
    /// written, the broker delivers them again.
    pub abandoned: AtomicU64,
    /// The last connection or store error, with when it happened (ms).
    pub last_error: Mutex<Option<(i64, String)>>,
}

impl IngestStatus {
    /// The figures as the `mqtt` object of `GET /v1/status`.
    pub fn json(&self, config: &MqttConfig) -> JsonValue {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let last_error = self.last_error.lock().expect("status lock poisoned").clone();
        json!({
            "broker": config.url(),
            "topics": config.routes.iter().map(|r| json!({"topic": r.filter, "table": r.table})).collect::<Vec<_>>(),
            "connected": self.connected.load(Ordering::Relaxed),
            "subscribed": self.subscribed.load(Ordering::Relaxed),
            "connects": load(&self.connects),
            "disconnects": load(&self.disconnects),
            "messages": load(&self.messages),
            "rows": load(&self.rows),
            "duplicates": load(&self.duplicates),
            "refused": load(&self.refused),
            "batches": load(&self.batches),
            "pending": load(&self.pending),
            "pending_bytes": load(&self.pending_bytes),
            "pending_bytes_peak": load(&self.pending_bytes_peak),
            "pending_bytes_max": config.pending_bytes_max,
            "throttled_ms": load(&self.throttled_ms),
            "retained": load(&self.retained),
            "abandoned": load(&self.abandoned),
            "last_error": last_error.map(|(at_ms, error)| json!({"at_ms": at_ms, "error": error})),
        })
    }

    /// Waits until `pending_bytes` is at most `mark`, or `limit` has passed.
    async fn wait_below(&self, mark: u64, limit: Option<Duration>) {
        let below = async {
            loop {
                let released = self.released.notified();
                tokio::pin!(released);
                // Registered before the check, so a release between the two is not missed.
                released.as_mut().enable();
                if self.pending_bytes.load(Ordering::Relaxed) <= mark {
                    return;
                }
                released.await;
            }
        };
        match limit {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, below).await;
            }
            None => below.await,
        }
    }

    fn failed(&self, error: String) {
        *self.last_error.lock().expect("status lock poisoned") = Some((crate::clock::now_ms(), error));
    }
}

/// One connection to the broker, as its deliveries see it: where their acknowledgements go.
struct Link {
    client: AsyncClient,
    /// Whether the connection is still up: a message of one that ended is not written.
    alive: AtomicBool,
    /// Acknowledgements of written messages that did not fit in the client's request
    /// channel, oldest first: the connection task moves them there after each event, so
    /// the batcher never waits for the event loop. At most one per message received on
    /// the connection and written.
    overflow: Mutex<VecDeque<(u16, QoS)>>,
}

impl Link {
    /// Queues the acknowledgement of a written message, in order, without waiting.
    fn acknowledge(&self, publish: &Publish) {
        if !self.alive.load(Ordering::Acquire) {
            return; // Its connection is gone: the broker redelivers the message.
        }
        let mut overflow = self.overflow.lock().expect("overflow lock poisoned");
        if overflow.is_empty() && self.client.try_ack(publish).is_ok() {
            return;
        }
        overflow.push_back((publish.pkid, publish.qos));
    }

    /// Moves waiting acknowledgements into the client's channel while it has room.
    fn flush_overflow(&self) {
        let mut overflow = self.overflow.lock().expect("overflow lock poisoned");
        while let Some(&(pkid, qos)) = overflow.front() {
            let mut ack = Publish::new("", qos, Vec::<u8>::new());
            ack.pkid = pkid;
            if self.client.try_ack(&ack).is_err() {
                return;
            }
            overflow.pop_front();
        }
    }
}

/// A message and the connection it arrived on (to acknowledge it there).
struct Delivery {
    link: Arc<Link>,
    publish: Publish,
    received_ms: i64,
}

impl Delivery {
    /// What this delivery counts against `mqtt.pending_mib`.
    fn held_bytes(publish: &Publish) -> u64 {
        (publish.payload.len() + publish.topic.len()) as u64 + DELIVERY_OVERHEAD_BYTES
    }
}

/// Starts the connection task and the batcher; they run until the runtime stops.
pub fn start(
    config: MqttConfig,
    client_id: String,
    handle: ReplicaHandle,
    sync: SyncNode,
    options: ExecOptions,
) -> Arc<IngestStatus> {
    let status = Arc::new(IngestStatus::default());
    // Unbounded, so that the connection task never waits for the batcher (it must keep
    // polling its event loop: pings and acknowledgements go out there); what it holds is
    // bounded by `mqtt.pending_mib` instead.
    let (sender, receiver) = mpsc::unbounded_channel();
    let config = Arc::new(config);
    tokio::spawn(connection(Arc::clone(&config), client_id, sender, Arc::clone(&status)));
    let batcher = Batcher { config, handle, sync, options: Arc::new(options), status: Arc::clone(&status) };
    tokio::spawn(batcher.run(receiver));
    status
}

/// Keeps a session with the broker, reconnecting with backoff, and forwards messages.
async fn connection(
    config: Arc<MqttConfig>,
    client_id: String,
    sender: mpsc::UnboundedSender<Delivery>,
    status: Arc<IngestStatus>,
) {
    let mut backoff = Backoff::default();
    loop {
        // After a connection dropped for holding too much, let the batcher catch up first.
        status.wait_below(config.throttle_mark(), None).await;
        let (client, events) = AsyncClient::new(mqtt_options(&config, &client_id), config.batch_messages + 64);
        let link = Arc::new(Link { client, alive: AtomicBool::new(true), overflow: Mutex::default() });
        let session = Session { config: &config, link: Arc::clone(&link), status: &status, sender: &sender };
        let up_since = session.run(events).await;
        link.alive.store(false, Ordering::Release);
        if sender.is_closed() {
            return; // The batcher stopped: the node is shutting down.
        }
        if up_since.is_some() {
            status.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        status.connected.store(false, Ordering::Relaxed);
        status.subscribed.store(false, Ordering::Relaxed);
        // Only a connection that stayed up resets the backoff: one that a message breaks
        // at once (the broker resends it on every reconnect) must not spin.
        if up_since.is_some_and(|since| since.elapsed() >= STABLE_CONNECTION) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One connection to the broker, with its own client (module doc).
struct Session<'a> {
    config: &'a MqttConfig,
    link: Arc<Link>,
    status: &'a IngestStatus,
    sender: &'a mpsc::UnboundedSender<Delivery>,
}

impl Session<'_> {
    /// Polls the connection until it fails; returns when its session began, if it did.
    /// Dropping the client and event loop at the end closes the client's channel, so late
    /// acknowledgements of this connection's messages go nowhere (module doc).
    async fn run(self, mut events: rumqttc::EventLoop) -> Option<Instant> {
        let (config, status) = (self.config, self.status);
        let mut session: Option<Instant> = None;
        loop {
            self.throttle().await;
            let event = events.poll().await;
            self.link.flush_overflow();
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    session = Some(Instant::now());
                    status.connected.store(true, Ordering::Relaxed);
                    status.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %config.host, port = config.port, session_present = ack.session_present,
                        "MQTT connected");
                    // Also on a resumed session: an ingest added to the config since needs it.
                    let filters =
                        config.routes.iter().map(|r| rumqttc::SubscribeFilter::new(r.filter.clone(), QoS::AtLeastOnce));
                    if let Err(error) = self.link.client.try_subscribe_many(filters) {
                        status.failed(format!("subscribing: {error}"));
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.subscribed(&ack),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // A retained message is stored like any other: the broker also sets the
                    // flag when it redelivers one it sent before (after a kill -9), so
                    // skipping it could lose it; on a keyed table a resent one is a duplicate.
                    if publish.retain {
                        status.retained.fetch_add(1, Ordering::Relaxed);
                    }
                    if !self.forward(publish) {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let error = connection_error(config, &error);
                    tracing::warn!(broker = %config.host, port = config.port, %error, "MQTT connection lost; reconnecting");
                    status.failed(error);
                    break;
                }
            }
        }
        session
    }

    fn subscribed(&self, ack: &rumqttc::SubAck) {
        let mut granted = true;
        for (route, code) in self.config.routes.iter().zip(&ack.return_codes) {
            match code {
                SubscribeReasonCode::Failure => {
                    granted = false;
                    tracing::error!(topic = %route.filter, "the broker refused the subscription");
                    self.status.failed(format!("the broker refused the subscription to {}", route.filter));
                }
                SubscribeReasonCode::Success(QoS::AtMostOnce) => {
                    // Messages still arrive, but the broker keeps none for the node: what is
                    // published while it is away or before a crash's batch commits is lost.
                    let error = format!(
                        "the broker granted {} at QoS 0 only: messages are not kept for the node",
                        route.filter
                    );
                    tracing::warn!(topic = %route.filter, "{error}");
                    self.status.failed(error);
                }
                SubscribeReasonCode::Success(_) => {}
            }
        }
        self.status.subscribed.store(granted, Ordering::Relaxed);
    }

    /// Waits, at most [`THROTTLED_POLL`], while the node holds more than half of
    /// `mqtt.pending_mib` of messages not yet written (module doc).
    async fn throttle(&self) {
        let mark = self.config.throttle_mark();
        if self.status.pending_bytes.load(Ordering::Relaxed) <= mark {
            return;
        }
        let started = Instant::now();
        self.status.wait_below(mark, Some(THROTTLED_POLL)).await;
        let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.status.throttled_ms.fetch_add(waited, Ordering::Relaxed);
    }

    /// Hands a message to the batcher; `false` when the connection must end: the batcher
    /// is gone, or the node holds more than `mqtt.pending_mib` of messages not yet
    /// written although reading is throttled (the broker keeps them and redelivers them
    /// after the reconnect).
    fn forward(&self, publish: Publish) -> bool {
        let bytes = Delivery::held_bytes(&publish);
        let status = self.status;
        status.messages.fetch_add(1, Ordering::Relaxed);
        status.pending.fetch_add(1, Ordering::Relaxed);
        let held = status.pending_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        status.pending_bytes_peak.fetch_max(held, Ordering::Relaxed);
        let delivery = Delivery { link: Arc::clone(&self.link), publish, received_ms: crate::clock::now_ms() };
        if self.sender.send(delivery).is_err() {
            return false;
        }
        if held > self.config.pending_bytes_max {
            let error = format!(
                "the node holds {} MiB of messages it has not written yet (mqtt.pending_mib); reconnecting once \
                 half is written",
                self.config.pending_bytes_max >> 20
            );
            tracing::warn!(held, "{error}");
            status.failed(error);
            return false;
        }
        true
    }
}

/// A connection error as the operator needs it: a packet over the size limit names the
/// setting that fixes it (MQTT 3.1.1 cannot tell the broker the limit, and the broker
/// sends that message first on every reconnect until it is fixed).
fn connection_error(config: &MqttConfig, error: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectionError, StateError};
    match error {
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::PayloadSizeLimitExceeded(bytes))) => {
            format!(
                "connection: the broker sent a {bytes}-byte message, over mqtt.payload_bytes_max ({} bytes): \
                 set the broker's message_size_limit to at most that, or raise payload_bytes_max",
                config.payload_bytes_max
            )
        }
        other => format!("connection: {other}"),
    }
}

fn mqtt_options(config: &MqttConfig, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, &config.host, config.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(config.keep_alive_s))
        // A packet is its payload, its topic (up to 64 KiB) and a few header bytes: a
        // payload up to ~64 KiB over payload_bytes_max still arrives, to be refused as a
        // dead letter; a larger packet breaks the connection (`connection_error`).
        // Outgoing packets are acknowledgements and subscriptions.
        .set_max_packet_size(config.payload_bytes_max + PACKET_OVERHEAD_BYTES_MAX, 64 * 1024);
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls))));
    }
    options
}

/// Gathers messages into batches, writes them and acknowledges them once durable.
struct Batcher {
    config: Arc<MqttConfig>,
    handle: ReplicaHandle,
    sync: SyncNode,
    options: Arc<ExecOptions>,
    status: Arc<IngestStatus>,
}

impl Batcher {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<Delivery>) {
        let statements = Arc::new(Statements::default());
        while let Some(first) = receiver.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.batch_ms);
            while batch.len() < self.config.batch_messages {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(delivery)) => batch.push(delivery),
                    Ok(None) | Err(_) => break,
                }
            }
            self.write(batch, &statements).await;
        }
    }

    /// Writes `batch` durably and acknowledges what is stored, retrying the rest with
    /// backoff while the store refuses it.
    async fn write(&self, batch: Vec<Delivery>, statements: &Arc<Statements>) {
        let mut remaining = batch;
        let mut backoff = Backoff::default();
        loop {
            remaining = self.abandon_dead(remaining);
            if remaining.is_empty() {
                return;
            }
            let messages: Arc<Vec<Incoming>> = Arc::new(remaining.iter().map(Delivery::incoming).collect());
            let (handle, config, statements, options) =
                (self.handle.clone(), Arc::clone(&self.config), Arc::clone(statements), Arc::clone(&self.options));
            let job = move |replica: &mut edgestore::Replica| {
                store::write_batch(replica, &config, &messages, &statements, &options)
            };
            let failure = match tokio::task::spawn_blocking(move || handle.write_job(job)).await {
                Ok(Ok(written)) => {
                    self.count(&written.outcome);
                    let mut stored = written.stored.iter();
                    let (done, rest): (Vec<Delivery>, Vec<Delivery>) =
                        remaining.into_iter().partition(|_| *stored.next().expect("a flag per message"));
                    self.acknowledge(&done);
                    remaining = rest;
                    written.failure.map(|error| error.to_string())
                }
                Ok(Err(error)) => Some(error.to_string()),
                Err(panic) => Some(format!("the write panicked: {panic}")),
            };
            if let Some(error) = failure {
                tracing::warn!(%error, messages = remaining.len(), "the store refused MQTT messages; retrying them");
                self.status.failed(format!("store: {error}"));
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }

    fn count(&self, outcome: &store::BatchOutcome) {
        self.status.rows.fetch_add(outcome.rows, Ordering::Relaxed);
        self.status.duplicates.fetch_add(outcome.duplicates, Ordering::Relaxed);
        self.status.refused.fetch_add(outcome.refused, Ordering::Relaxed);
        self.status.batches.fetch_add(1, Ordering::Relaxed);
        if outcome.rows > 0 {
            self.sync.notify_changed();
        }
    }

    /// Acknowledges durable messages, each on the connection it came on. They are
    /// released first: holding them no longer costs anything but their acknowledgement,
    /// and a throttled connection task is waiting for exactly that.
    fn acknowledge(&self, done: &[Delivery]) {
        self.release(done);
        for delivery in done {
            delivery.link.acknowledge(&delivery.publish);
        }
    }

    /// Keeps the deliveries whose connection is still up. The others are not written:
    /// they could not be acknowledged, and the broker delivers them again on the next
    /// connection (writing them too would store a key-less table's rows twice).
    fn abandon_dead(&self, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let (alive, dead): (Vec<Delivery>, Vec<Delivery>) =
            deliveries.into_iter().partition(|d| d.link.alive.load(Ordering::Acquire));
        if !dead.is_empty() {
            self.status.abandoned.fetch_add(dead.len() as u64, Ordering::Relaxed);
            self.release(&dead);
        }
        alive
    }

    /// Takes `deliveries` off the pending figures.
    fn release(&self, deliveries: &[Delivery]) {
        let bytes: u64 = deliveries.iter().map(|d| Delivery::held_bytes(&d.publish)).sum();
        self.status.pending.fetch_sub(deliveries.len() as u64, Ordering::Relaxed);
        let before = self.status.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "released more bytes than were held");
        self.status.released.notify_waiters();
    }
}

impl Delivery {
    fn incoming(&self) -> Incoming {
        Incoming {
            topic: self.publish.topic.clone(),
            payload: self.publish.payload.to_vec(),
            received_ms: self.received_ms,
        }
    }
}

/// Doubling delays from [`BACKOFF_MS`]'s first to its cap.
#[derive(Default)]
struct Backoff {
    next_ms: u64,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.next_ms.max(BACKOFF_MS.0);
        self.next_ms = (delay * 2).min(BACKOFF_MS.1);
        Duration::from_millis(delay)
    }

    fn reset(&mut self) {
        self.next_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let url = |host: &str, port, tls| BrokerUrl { host: host.into(), port, tls };
        assert_eq!(parse_broker("mqtt://localhost").unwrap(), url("localhost", 1883, false));
        assert_eq!(parse_broker("mqtt://10.0.0.5:1884/").unwrap(), url("10.0.0.5", 1884, false));
        assert_eq!(parse_broker("tcp://[::1]:1885").unwrap(), url("::1", 1885, false));
        assert_eq!(parse_broker("mqtt://[::1]").unwrap(), url("::1", 1883, false));
        assert_eq!(parse_broker("mqtts://broker.example").unwrap(), url("broker.example", 8883, true));
        assert_eq!(parse_broker("ssl://127.0.0.1:9883").unwrap(), url("127.0.0.1", 9883, true));
        for (url, expected) in [
            ("localhost:1883", "not a broker URL"),
            ("wss://broker", "websockets are not built in"),
            ("http://broker", "unknown scheme"),
            ("mqtt://broker:http", "not a port"),
            ("mqtt://user:pw@broker", "credentials"),
            ("mqtt://", "not a broker URL"),
        ] {
            let error = parse_broker(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(200));
    }
}
