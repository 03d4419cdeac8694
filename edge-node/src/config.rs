//! The node's configuration: a TOML file, environment variables and command-line flags,
//! resolved into one validated [`Config`] at start.
//!
//! Precedence, highest first: a flag, its environment variable (clap reads both), the
//! config file, the built-in default. The file is `--config FILE` (`EDGE_NODE_CONFIG`), or
//! `<data dir>/edge-node.toml` when that exists. Unknown keys are errors, so a typo never
//! silently falls back to a default. Every error names where the bad value came from, the
//! key and the problem. README "Configuration" is the reference; keep the two in step.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use edgestore::NodeId;

use crate::mqtt::MqttConfig;
use serde::{Deserialize, Serialize};

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "edge-data";
/// Default QUIC (UDP) address for peer sync.
pub const DEFAULT_SYNC_LISTEN: &str = "127.0.0.1:7400";
/// Default address of the local HTTP API.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7480";
/// Default cluster name; nodes of different clusters refuse each other.
pub const DEFAULT_CLUSTER: &str = "default";
/// Name of the config file looked for in the data directory.
pub const CONFIG_FILE: &str = "edge-node.toml";
/// Rows one API query may return, by default.
pub const DEFAULT_MAX_RESULT_ROWS: usize = 100_000;
/// Default time limit of a statement run through the API (ms).
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 30_000;
/// Default cap on API connections served at once.
pub const DEFAULT_CONNECTIONS_MAX: usize = 256;
/// Default cap on statements the API runs at once.
pub const DEFAULT_STATEMENTS_MAX: usize = 16;
/// Default time a client has to send a request head, and then its body (ms).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 10_000;
/// Default cap on a request body (bytes).
pub const DEFAULT_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Free space below which local writes are refused, by default (bytes).
pub const DEFAULT_FREE_BYTES_MIN: u64 = 64 * 1024 * 1024;
/// Default memory budget of one statement (MiB).
pub const DEFAULT_STATEMENT_MEMORY_MIB: usize = 256;
/// Default memory budget of all statements running at once (MiB).
pub const DEFAULT_MEMORY_MIB: usize = 1024;
/// Default `lifecycle.peer_horizon`: a member not heard of for this long stops holding the
/// causal-stability horizon back (ms).
pub const DEFAULT_PEER_HORIZON_MS: u64 = 7 * 24 * 3600 * 1000;
/// Shortest and longest `lifecycle.peer_horizon` accepted (one minute, ten years).
pub const PEER_HORIZON_MS_RANGE: std::ops::RangeInclusive<u64> = 60_000..=3650 * 24 * 3600 * 1000;

/// Largest `store.cache_mib` accepted (64 GiB): a typo of a few digits is refused rather
/// than taken as a budget the gateway cannot have.
pub const STORE_CACHE_MIB_MAX: usize = 65_536;

/// The config file's layout. Every key is optional; see the README for each one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory, relative to the config file's directory.
    pub data_dir: Option<PathBuf>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// `[sync]`.
    #[serde(default)]
    pub sync: FileSync,
    /// `[api]`.
    #[serde(default)]
    pub api: FileApi,
    /// `[log]`.
    #[serde(default)]
    pub log: FileLog,
    /// `[store]`.
    #[serde(default)]
    pub store: FileStore,
    /// `[sql]`.
    #[serde(default)]
    pub sql: FileSql,
    /// `[lifecycle]`.
    #[serde(default)]
    pub lifecycle: FileLifecycle,
    /// `[[peers]]`.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// `[mqtt]`: ingest from a broker, off when absent.
    pub mqtt: Option<FileMqtt>,
}

/// `[mqtt]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMqtt {
    /// `mqtt://host[:port]`.
    pub broker: String,
    /// MQTT client id; default `edge-<node id>`.
    pub client_id: Option<String>,
    /// User name sent to the broker.
    pub username: Option<String>,
    /// Password sent to the broker (with `username`).
    pub password: Option<String>,
    /// `mqtts://`: the CA certificates (PEM) the broker's must chain to; default the
    /// system's trusted roots. Relative to the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: a client certificate chain (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `mqtts://`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Seconds between keep-alive pings.
    pub keep_alive_s: Option<u64>,
    /// Messages written in one batch, at most.
    pub batch_messages: Option<usize>,
    /// How long a batch waits for more messages (ms).
    pub batch_ms: Option<u64>,
    /// Largest MQTT packet accepted (bytes).
    pub payload_bytes_max: Option<usize>,
    /// MiB of received messages not yet written that the node holds, at most.
    pub pending_mib: Option<u64>,
    /// `[[mqtt.ingest]]`.
    #[serde(default)]
    pub ingest: Vec<FileIngest>,
}

/// `[[mqtt.ingest]]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIngest {
    /// Topic filter (`+` and `#` allowed).
    pub topic: String,
    /// Table the rows go to.
    pub table: String,
    /// Topic level (0-based, as a string key) → column.
    #[serde(default)]
    pub columns_from_topic: std::collections::BTreeMap<String, String>,
    /// `refuse` (default) or `ignore` a payload key that names no column.
    #[serde(default)]
    pub unknown_keys: crate::mqtt::UnknownKeys,
}

/// `[sync]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSync {
    /// UDP address of the QUIC endpoint.
    pub listen: Option<SocketAddr>,
    /// Send a keepalive after this long without traffic (ms).
    pub keepalive_ms: Option<u64>,
    /// Drop a peer silent for this long (ms).
    pub idle_timeout_ms: Option<u64>,
}

/// `[api]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApi {
    /// TCP address of the HTTP API.
    pub listen: Option<SocketAddr>,
    /// Bearer token clients must send.
    pub token: Option<String>,
    /// Rows one query may return.
    pub max_result_rows: Option<usize>,
    /// Time limit of a statement (ms); 0 for none.
    pub statement_timeout_ms: Option<u64>,
    /// Connections served at once.
    pub connections_max: Option<usize>,
    /// Statements run at once.
    pub statements_max: Option<usize>,
    /// Time to send a request head (ms).
    pub header_read_timeout_ms: Option<u64>,
    /// Time to send a request body (ms).
    pub body_read_timeout_ms: Option<u64>,
    /// Largest request body (bytes).
    pub body_bytes_max: Option<usize>,
}

/// `[store]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    /// Free space of the data directory's filesystem below which local writes are refused.
    pub free_bytes_min: Option<u64>,
    /// Memory for the store's caches (redb's page cache and the document cache), MiB.
    pub cache_mib: Option<usize>,
}

/// `[sql]` in the config file: limits of statements, wherever they come from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSql {
    /// Memory budget of one statement (MiB).
    pub statement_memory_mib: Option<usize>,
    /// Memory budget of all statements running at once (MiB).
    pub memory_mib: Option<usize>,
}

/// `[lifecycle]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLifecycle {
    /// A member not heard of for this long stops holding the horizon back: seconds, or a
    /// string with a unit (`"90s"`, `"30m"`, `"12h"`, `"7d"`).
    pub peer_horizon: Option<DurationSetting>,
}

/// A duration in the config file: a number of seconds or a string with a unit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DurationSetting {
    /// Seconds.
    Seconds(u64),
    /// `<n>s`, `<n>m`, `<n>h` or `<n>d`.
    Text(String),
}

impl DurationSetting {
    /// The duration in ms, or why it is not one.
    pub fn millis(&self) -> Result<u64> {
        let (count, unit_ms) = match self {
            DurationSetting::Seconds(seconds) => (*seconds, 1000),
            DurationSetting::Text(text) => {
                let text = text.trim();
                let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
                let (digits, unit) = text.split_at(split);
                let unit_ms = match unit.trim() {
                    "s" => 1000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    _ => bail!("{text:?} is not a duration: a number with s, m, h or d (\"7d\"), or seconds"),
                };
                (digits.parse::<u64>().with_context(|| format!("{text:?} is not a duration"))?, unit_ms)
            }
        };
        count.checked_mul(unit_ms).context("the duration is too long")
    }
}

/// `[log]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// `text` or `json`.
    pub format: Option<LogFormat>,
    /// A `tracing` filter such as `info` or `info,sync_protocol=debug`.
    pub level: Option<String>,
}

/// A peer: its node id and the UDP address of its sync endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's node id (32 hex digits, as `edge-node status` prints it).
    pub node_id: String,
    /// The peer's sync address.
    pub addr: SocketAddr,
}

impl PeerEntry {
    /// The parsed node id, or an error naming `origin`.
    pub fn parsed_node_id(&self, origin: &str) -> Result<NodeId> {
        parse_node_id(&self.node_id).with_context(|| format!("{origin}: peer {:?}", self.node_id))
    }
}

/// Parses a node id with an error that says what one looks like.
pub fn parse_node_id(text: &str) -> Result<NodeId> {
    NodeId::from_str(text.trim())
        .map_err(|_| anyhow::anyhow!("{text:?} is not a node id (32 hex digits, as `edge-node status` prints)"))
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Values given as flags or environment variables (clap merges the two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub cluster: Option<String>,
    pub sync_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub api_token: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    pub cluster: String,
    pub sync_listen: SocketAddr,
    pub keepalive_ms: u64,
    pub idle_timeout_ms: u64,
    pub api_listen: SocketAddr,
    pub api_token: Option<String>,
    pub max_result_rows: usize,
    /// `None`: statements through the API run without a time limit.
    pub statement_timeout_ms: Option<u64>,
    pub connections_max: usize,
    pub statements_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub body_bytes_max: usize,
    pub statement_memory_mib: usize,
    pub memory_mib: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Local writes are refused while the data directory has less free space (bytes).
    pub free_bytes_min: u64,
    /// Memory budget of the store's caches, MiB.
    pub cache_mib: usize,
    /// `lifecycle.peer_horizon`, ms.
    pub peer_horizon_ms: u64,
    /// Peers from the config file (the data directory's peer list is separate).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// `[mqtt]`, when set.
    pub mqtt: Option<MqttConfig>,
}

/// Where a value came from, for error messages.
struct Origin<'a> {
    file: Option<&'a Path>,
}

impl Origin<'_> {
    fn name(&self, key: &str, from_flag: bool, flag: &str) -> String {
        match (from_flag, self.file) {
            (true, _) => format!("{flag} (flag or environment)"),
            (false, Some(file)) => format!("{}: `{key}`", file.display()),
            (false, None) => format!("default `{key}`"),
        }
    }
}

impl Config {
    /// Reads the config file (if any) and applies the overrides; validates the result.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        let (file_path, file) = read_file(overrides)?;
        let origin = Origin { file: file_path.as_deref() };
        let data_dir = match (&overrides.data_dir, &file.data_dir, &file_path) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(dir), Some(path)) => path.parent().unwrap_or(Path::new(".")).join(dir),
            _ => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let default_addr = |text: &str| text.parse::<SocketAddr>().expect("built-in default addresses parse");
        let config = Config {
            data_dir,
            cluster: pick(&overrides.cluster, &file.cluster, || DEFAULT_CLUSTER.to_string()),
            sync_listen: pick(&overrides.sync_listen, &file.sync.listen, || default_addr(DEFAULT_SYNC_LISTEN)),
            keepalive_ms: file.sync.keepalive_ms.unwrap_or(5_000),
            idle_timeout_ms: file.sync.idle_timeout_ms.unwrap_or(15_000),
            api_listen: pick(&overrides.api_listen, &file.api.listen, || default_addr(DEFAULT_API_LISTEN)),
            api_token: overrides.api_token.clone().or(file.api.token.clone()).filter(|t| !t.is_empty()),
            max_result_rows: file.api.max_result_rows.unwrap_or(DEFAULT_MAX_RESULT_ROWS),
            statement_timeout_ms: Some(file.api.statement_timeout_ms.unwrap_or(DEFAULT_STATEMENT_TIMEOUT_MS))
                .filter(|ms| *ms > 0),
            connections_max: file.api.connections_max.unwrap_or(DEFAULT_CONNECTIONS_MAX),
            statements_max: file.api.statements_max.unwrap_or(DEFAULT_STATEMENTS_MAX),
            header_read_timeout_ms: file.api.header_read_timeout_ms.unwrap_or(DEFAULT_READ_TIMEOUT_MS),
            body_read_timeout_ms: file.api.body_read_timeout_ms.unwrap_or(DEFAULT_READ_TIMEOUT_MS),
            body_bytes_max: file.api.body_bytes_max.unwrap_or(DEFAULT_BODY_BYTES_MAX),
            statement_memory_mib: file.sql.statement_memory_mib.unwrap_or(DEFAULT_STATEMENT_MEMORY_MIB),
            memory_mib: file.sql.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            log_format: pick(&overrides.log_format, &file.log.format, LogFormat::default),
            log_level: pick(&overrides.log_level, &file.log.level, || "info".to_string()),
            free_bytes_min: file.store.free_bytes_min.unwrap_or(DEFAULT_FREE_BYTES_MIN),
            cache_mib: file.store.cache_mib.unwrap_or(edgestore::replica::CACHE_BYTES_DEFAULT >> 20),
            peer_horizon_ms: match &file.lifecycle.peer_horizon {
                Some(setting) => setting.millis().with_context(|| origin.name("lifecycle.peer_horizon", false, ""))?,
                None => DEFAULT_PEER_HORIZON_MS,
            },
            peers: file
                .peers
                .iter()
                .map(|p| Ok((p.parsed_node_id(&origin.name("peers", false, ""))?, p.addr)))
                .collect::<Result<_>>()?,
            mqtt: match &file.mqtt {
                Some(mqtt) => {
                    let base = file_path.as_deref().and_then(Path::parent).unwrap_or(Path::new("."));
                    Some(resolve_mqtt(mqtt, base).with_context(|| origin.name("mqtt", false, ""))?)
                }
                None => None,
            },
            file: file_path.clone(),
        };
        config.validate(overrides, &origin)?;
        Ok(config)
    }

    fn validate(&self, overrides: &Overrides, origin: &Origin<'_>) -> Result<()> {
        if self.cluster.trim().is_empty() {
            bail!("{}: the cluster name is empty", origin.name("cluster", overrides.cluster.is_some(), "--cluster"));
        }
        if !self.api_listen.ip().is_loopback() && self.api_token.is_none() {
            bail!(
                "{}: the API listens on {}, beyond loopback, so it needs a bearer token: set `api.token` \
                 in the config file or EDGE_NODE_API_TOKEN",
                origin.name("api.listen", overrides.api_listen.is_some(), "--api-listen"),
                self.api_listen
            );
        }
        if self.keepalive_ms == 0 || self.idle_timeout_ms <= self.keepalive_ms {
            bail!(
                "{}: `sync.idle_timeout_ms` ({}) must be greater than `sync.keepalive_ms` ({}), and both above 0",
                origin.name("sync", false, ""),
                self.idle_timeout_ms,
                self.keepalive_ms
            );
        }
        let at_least_one = [
            ("api.max_result_rows", self.max_result_rows as u64),
            ("api.connections_max", self.connections_max as u64),
            ("api.statements_max", self.statements_max as u64),
            ("api.header_read_timeout_ms", self.header_read_timeout_ms),
            ("api.body_read_timeout_ms", self.body_read_timeout_ms),
            ("api.body_bytes_max", self.body_bytes_max as u64),
            ("sql.statement_memory_mib", self.statement_memory_mib as u64),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            bail!("{}: must be at least 1", origin.name(key, false, ""));
        }
        if self.memory_mib < self.statement_memory_mib {
            bail!(
                "{}: the node-wide budget ({} MiB) is smaller than one statement's (`sql.statement_memory_mib`, {} MiB)",
                origin.name("sql.memory_mib", false, ""),
                self.memory_mib,
                self.statement_memory_mib
            );
        }
        if !PEER_HORIZON_MS_RANGE.contains(&self.peer_horizon_ms) {
            bail!(
                "{}: {} s is outside one minute to ten years",
                origin.name("lifecycle.peer_horizon", false, ""),
                self.peer_horizon_ms / 1000
            );
        }
        let cache_mib_min = edgestore::replica::CACHE_BYTES_MIN >> 20;
        if !(cache_mib_min..=STORE_CACHE_MIB_MAX).contains(&self.cache_mib) {
            bail!(
                "{}: {} MiB is outside {cache_mib_min}..={STORE_CACHE_MIB_MAX}",
                origin.name("store.cache_mib", false, ""),
                self.cache_mib
            );
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            anyhow::anyhow!(
                "{}: {:?} is not a log filter ({e}); try `info` or `info,sync_protocol=debug`",
                origin.name("log.level", overrides.log_level.is_some(), "--log-level"),
                self.log_level
            )
        })?;
        Ok(())
    }

    /// How the store is opened: the memory budget of its caches.
    pub fn open_options(&self) -> edgestore::OpenOptions {
        edgestore::OpenOptions { cache_bytes: self.cache_mib << 20 }
    }

    /// The cluster id sent in `Hello`: the first 16 bytes of blake3 of the cluster name.
    pub fn cluster_id(&self) -> sync_protocol::ClusterId {
        let hash = blake3::hash(self.cluster.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        sync_protocol::ClusterId(id)
    }
}

/// `[mqtt]` resolved: defaults filled in, every value checked, the TLS files (relative to
/// `base`, the config file's directory) read.
fn resolve_mqtt(file: &FileMqtt, base: &Path) -> Result<MqttConfig> {
    let url = crate::mqtt::parse_broker(&file.broker).context("`mqtt.broker`")?;
    let tls = resolve_tls(file, base, url.tls)?;
    let (host, port) = (url.host, url.port);
    let credentials = match (&file.username, &file.password) {
        (Some(user), password) => Some((user.clone(), password.clone().unwrap_or_default())),
        (None, Some(_)) => bail!("`mqtt.password` is set without `mqtt.username`"),
        (None, None) => None,
    };
    let pending_mib = file.pending_mib.unwrap_or(crate::mqtt::DEFAULT_PENDING_MIB);
    if !(1..=crate::mqtt::PENDING_MIB_LIMIT).contains(&pending_mib) {
        bail!("`mqtt.pending_mib` {pending_mib} is outside 1..={}", crate::mqtt::PENDING_MIB_LIMIT);
    }
    let config = MqttConfig {
        host,
        port,
        tls,
        client_id: file.client_id.clone(),
        credentials,
        keep_alive_s: file.keep_alive_s.unwrap_or(crate::mqtt::DEFAULT_KEEP_ALIVE_S),
        batch_messages: file.batch_messages.unwrap_or(crate::mqtt::DEFAULT_BATCH_MESSAGES),
        batch_ms: file.batch_ms.unwrap_or(crate::mqtt::DEFAULT_BATCH_MS),
        payload_bytes_max: file.payload_bytes_max.unwrap_or(crate::mqtt::DEFAULT_PAYLOAD_BYTES_MAX),
        pending_bytes_max: pending_mib << 20,
        routes: file.ingest.iter().map(resolve_ingest).collect::<Result<_>>()?,
    };
    if config.routes.is_empty() {
        bail!("no `[[mqtt.ingest]]`: name at least one topic and the table its messages go to");
    }
    if config.port == 0 {
        bail!("`mqtt.broker` {:?} names port 0", file.broker);
    }
    if let Some((user, password)) = &config.credentials {
        if user.len() > MQTT_STRING_BYTES_MAX || password.len() > MQTT_STRING_BYTES_MAX {
            bail!("`mqtt.username` and `mqtt.password` are at most {MQTT_STRING_BYTES_MAX} bytes each");
        }
    }
    let mut filters: Vec<&str> = config.routes.iter().map(|r| r.filter.as_str()).collect();
    let filter_bytes: usize = filters.iter().map(|f| f.len() + 3).sum();
    if filter_bytes > SUBSCRIBE_BYTES_MAX {
        bail!("the `[[mqtt.ingest]]` topics take {filter_bytes} bytes together, more than one subscription packet holds ({SUBSCRIBE_BYTES_MAX})");
    }
    filters.sort_unstable();
    if let Some(pair) = filters.windows(2).find(|pair| pair[0] == pair[1]) {
        bail!("`[[mqtt.ingest]]` topic {:?} is given twice: a message goes to one table", pair[0]);
    }
    if let Some(id) = &config.client_id {
        if id.is_empty() || id.len() > 256 {
            bail!("`mqtt.client_id` {id:?} must be 1 to 256 bytes");
        }
    }
    if !(5..=65_535).contains(&config.keep_alive_s) {
        bail!("`mqtt.keep_alive_s` {} is outside 5..=65535", config.keep_alive_s);
    }
    if !(1..=100_000).contains(&config.batch_messages) {
        bail!("`mqtt.batch_messages` {} is outside 1..=100000", config.batch_messages);
    }
    if config.batch_ms > 60_000 {
        bail!("`mqtt.batch_ms` {} is more than a minute", config.batch_ms);
    }
    if !(1024..=crate::mqtt::PAYLOAD_BYTES_LIMIT).contains(&config.payload_bytes_max) {
        bail!(
            "`mqtt.payload_bytes_max` {} is outside 1024..={}",
            config.payload_bytes_max,
            crate::mqtt::PAYLOAD_BYTES_LIMIT
        );
    }
    Ok(config)
}

/// Longest MQTT string (a length-prefixed UTF-8 string, MQTT 3.1.1 § 1.5.3).
const MQTT_STRING_BYTES_MAX: usize = 65_535;
/// Bytes every ingest filter takes together in the SUBSCRIBE packet, at most: the
/// client's outgoing packet limit (64 KiB) less room for the header.
const SUBSCRIBE_BYTES_MAX: usize = 60 * 1024;

fn resolve_ingest(file: &FileIngest) -> Result<crate::mqtt::Route> {
    let filter = &file.topic;
    if filter.len() > MQTT_STRING_BYTES_MAX {
        bail!("`mqtt.ingest` topic of {} bytes is longer than MQTT allows ({MQTT_STRING_BYTES_MAX})", filter.len());
    }
    if !rumqttc::valid_filter(filter) || filter.starts_with('$') {
        bail!("`mqtt.ingest` topic {filter:?} is not a topic filter (levels split by /, + for one level, # last)");
    }
    if file.table.trim().is_empty() {
        bail!("`mqtt.ingest` of {filter:?}: `table` is empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let open_ended = levels.last() == Some(&"#");
    let mut topic_columns = Vec::new();
    for (index, column) in &file.columns_from_topic {
        let index: usize = index.parse().with_context(|| {
            format!("`mqtt.ingest` of {filter:?}: columns_from_topic key {index:?} is not a level number")
        })?;
        let reachable = if open_ended { true } else { index < levels.len() };
        if !reachable {
            bail!("`mqtt.ingest` of {filter:?}: the topic has {} levels, so it has no level {index}", levels.len());
        }
        let column = column.to_ascii_lowercase();
        if topic_columns.iter().any(|(_, taken)| *taken == column) {
            bail!("`mqtt.ingest` of {filter:?}: two topic levels fill column {column:?}");
        }
        topic_columns.push((index, column));
    }
    Ok(crate::mqtt::Route {
        filter: filter.clone(),
        table: file.table.to_ascii_lowercase(),
        topic_columns,
        unknown_keys: file.unknown_keys,
    })
}

fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, default: impl FnOnce() -> T) -> T {
    flag.clone().or_else(|| file.clone()).unwrap_or_else(default)
}

fn read_file(overrides: &Overrides) -> Result<(Option<PathBuf>, FileConfig)> {
    let path = match &overrides.config {
        Some(path) => path.clone(),
        None => {
            let implicit = overrides.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR)).join(CONFIG_FILE);
            if !implicit.exists() {
                return Ok((None, FileConfig::default()));
            }
            implicit
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    Ok((Some(path), file))
}

/// The TLS client configuration of a `mqtts://` broker; `mqtt.ca_file`, `cert_file` and
/// `key_file` are refused with a plain `mqtt://` one (they would silently do nothing).
fn resolve_tls(file: &FileMqtt, base: &Path, tls: bool) -> Result<Option<Arc<rustls::ClientConfig>>> {
    let named = [("ca_file", &file.ca_file), ("cert_file", &file.cert_file), ("key_file", &file.key_file)];
    if !tls {
        if let Some((setting, _)) = named.iter().find(|(_, path)| path.is_some()) {
            bail!("`mqtt.{setting}` is set but `mqtt.broker` is not mqtts:// (plain TCP uses no certificate)");
        }
        return Ok(None);
    }
    let client = match (&file.cert_file, &file.key_file) {
        (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
        (None, None) => None,
        _ => bail!("`mqtt.cert_file` and `mqtt.key_file` go together: a client certificate and its key"),
    };
    let files = crate::mqtt::tls::TlsFiles { ca_file: file.ca_file.as_ref().map(|p| base.join(p)), client };
    Ok(Some(crate::mqtt::tls::client_config(&files)?))
}

/// The peers added with `edge-node peers add`, kept in `<data dir>/peers.toml`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerList {
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

/// File name of the peer list inside the data directory.
pub const PEERS_FILE: &str = "peers.toml";

impl PeerList {
    /// Reads the list; a missing file is an empty list.
    pub fn load(data_dir: &Path) -> Result<PeerList> {
        let path = data_dir.join(PEERS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("peer list {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PeerList::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the list atomically (temporary file, then rename).
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let path = data_dir.join(PEERS_FILE);
        let text = format!(
            "# Peers of this node, managed by `edge-node peers add|remove`.\n{}",
            toml::to_string(self).context("encoding the peer list")?
        );
        let temporary = data_dir.join(format!("{PEERS_FILE}.tmp"));
        std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Adds or re-addresses a peer; returns whether it was new.
    pub fn upsert(&mut self, node: NodeId, addr: SocketAddr) -> bool {
        let id = node.to_string();
        match self.peers.iter_mut().find(|p| p.node_id == id) {
            Some(entry) => {
                entry.addr = addr;
                false
            }
            None => {
                self.peers.push(PeerEntry { node_id: id, addr });
                true
            }
        }
    }

    /// Removes a peer; returns whether it was listed.
    pub fn remove(&mut self, node: NodeId) -> bool {
        let before = self.peers.len();
        let id = node.to_string();
        self.peers.retain(|p| p.node_id != id);
        self.peers.len() != before
    }

    /// The parsed entries.
    pub fn parsed(&self, data_dir: &Path) -> Result<Vec<(NodeId, SocketAddr)>> {
        let origin = data_dir.join(PEERS_FILE).display().to_string();
        self.peers.iter().map(|p| Ok((p.parsed_node_id(&origin)?, p.addr))).collect()
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("writing the config");
        Config::load(&Overrides { config: Some(path), ..Overrides::default() })
    }

    #[test]
    fn peer_horizon_takes_seconds_or_a_unit_and_is_validated() {
        let ms = |text: &str| load_text(&format!("[lifecycle]\npeer_horizon = {text}\n")).map(|c| c.peer_horizon_ms);
        assert_eq!(load_text("").unwrap().peer_horizon_ms, DEFAULT_PEER_HORIZON_MS);
        assert_eq!(ms("\"7d\"").unwrap(), 7 * 86_400_000);
        assert_eq!(ms("\"12h\"").unwrap(), 12 * 3_600_000);
        assert_eq!(ms("\"90m\"").unwrap(), 90 * 60_000);
        assert_eq!(ms("3600").unwrap(), 3_600_000);
        for bad in ["\"7 weeks\"", "\"d\"", "\"-1d\"", "10", "\"99999d\"", "18446744073709551615"] {
            let error = ms(bad).expect_err(bad);
            assert!(format!("{error:#}").contains("lifecycle.peer_horizon"), "{bad}: {error:#}");
        }
    }

    #[test]
    fn defaults_are_loopback() {
        let config = Config::load(&Overrides { data_dir: Some("/nonexistent".into()), ..Default::default() })
            .expect("defaults are valid");
        assert!(config.api_listen.ip().is_loopback() && config.sync_listen.ip().is_loopback());
        assert_eq!(config.api_token, None);
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let error = load_text("[api]\nlisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(error.contains("node.toml") && error.contains("lisen"), "{error}");
    }

    #[test]
    fn bad_address_is_refused_with_its_key() {
        let error = load_text("[sync]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(error.contains("listen") && error.contains("line 2"), "{error}");
    }

    #[test]
    fn api_beyond_loopback_needs_a_token() {
        let error = load_text("[api]\nlisten = \"0.0.0.0:7480\"\n").unwrap_err().to_string();
        assert!(error.contains("api.listen") && error.contains("token"), "{error}");
        let config = load_text("[api]\nlisten = \"0.0.0.0:7480\"\ntoken = \"s3cret\"\n").expect("valid with a token");
        assert_eq!(config.api_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "cluster = \"plant-7\"\ndata_dir = \"d\"\n[sync]\nlisten = \"127.0.0.1:9000\"\n")
            .expect("writing the config");
        let overrides = Overrides {
            config: Some(path),
            sync_listen: Some("127.0.0.1:9100".parse().expect("address")),
            ..Overrides::default()
        };
        let config = Config::load(&overrides).expect("valid");
        assert_eq!(config.sync_listen.port(), 9100);
        assert_eq!(config.cluster, "plant-7");
        assert_eq!(config.data_dir, dir.path().join("d"), "data_dir is relative to the config file");
    }

    #[test]
    fn bad_peer_id_and_log_filter_are_named() {
        let error = load_text("[[peers]]\nnode_id = \"xyz\"\naddr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(format!("{error:#}").contains("xyz"), "{error:#}");
        let error = load_text("[log]\nlevel = \"info,=[\"\n").unwrap_err().to_string();
        assert!(error.contains("log.level"), "{error}");
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let config = load_text("").expect("defaults are valid");
        assert_eq!(config.statement_timeout_ms, Some(DEFAULT_STATEMENT_TIMEOUT_MS));
        let config = load_text("[api]\nstatement_timeout_ms = 0\n").expect("0 turns the limit off");
        assert_eq!(config.statement_timeout_ms, None);
        let error = load_text("[api]\nconnections_max = 0\n").unwrap_err().to_string();
        assert!(error.contains("api.connections_max"), "{error}");
        let error = load_text("[sql]\nstatement_memory_mib = 64\nmemory_mib = 32\n").unwrap_err().to_string();
        assert!(error.contains("sql.memory_mib"), "{error}");
    }

    #[test]
    fn the_store_cache_budget_is_read_and_bounded() {
        let config = load_text("[store]\ncache_mib = 16\n").expect("valid");
        assert_eq!(config.open_options().cache_bytes, 16 << 20);
        let default = Config::load(&Overrides { data_dir: Some("/nonexistent".into()), ..Default::default() });
        assert_eq!(default.expect("defaults are valid").cache_mib, 64);
        for bad in ["0", "65537"] {
            let error = load_text(&format!("[store]\ncache_mib = {bad}\n")).unwrap_err().to_string();
            assert!(error.contains("store.cache_mib") && error.contains(bad), "{error}");
        }
    }

    #[test]
    fn mqtt_ingest_is_read_with_defaults_and_checked() {
        let ingest = "[[mqtt.ingest]]\ntopic = \"sites/+/readings\"\ntable = \"Readings\"\n\
                      columns_from_topic = { \"1\" = \"Site\" }\n";
        let config = load_text(&format!("[mqtt]\nbroker = \"mqtt://10.0.0.9\"\n{ingest}")).expect("valid");
        let mqtt = config.mqtt.expect("[mqtt] is set");
        assert_eq!((mqtt.host.as_str(), mqtt.port, mqtt.batch_messages), ("10.0.0.9", 1883, 1000));
        assert_eq!(mqtt.routes[0].table, "readings");
        assert_eq!(mqtt.routes[0].topic_columns, [(1, "site".to_string())]);
        assert!(load_text("").expect("valid").mqtt.is_none(), "no [mqtt], no ingest");
        for (text, expected) in [
            ("[mqtt]\nbroker = \"mqtt://b\"\n".to_string(), "no `[[mqtt.ingest]]`"),
            (format!("[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"/nonexistent/ca.pem\"\n{ingest}"), "not readable"),
            (format!("[mqtt]\nbroker = \"mqtt://b\"\nca_file = \"ca.pem\"\n{ingest}"), "is not mqtts://"),
            (format!("[mqtt]\nbroker = \"mqtts://b\"\ncert_file = \"c.pem\"\n{ingest}"), "go together"),
            (format!("[mqtt]\nbroker = \"wss://b\"\n{ingest}"), "websockets"),
            (format!("[mqtt]\nbroker = \"mqtt://b\"\nbatch_messages = 0\n{ingest}"), "batch_messages"),
            (format!("[mqtt]\nbroker = \"mqtt://b\"\npending_mib = 0\n{ingest}"), "pending_mib"),
            (format!("[mqtt]\nbroker = \"mqtt://b\"\npassword = \"p\"\n{ingest}"), "without `mqtt.username`"),
            ("[mqtt]\nbroker = \"mqtt://b\"\n[[mqtt.ingest]]\ntopic = \"a/#/b\"\ntable = \"t\"\n".into(), "not a topic filter"),
            (
                "[mqtt]\nbroker = \"mqtt://b\"\n[[mqtt.ingest]]\ntopic = \"a/+\"\ntable = \"t\"\n\
                 columns_from_topic = { \"2\" = \"c\" }\n"
                    .into(),
                "no level 2",
            ),
            ("[mqtt]\nbroker = \"mqtt://b\"\n[[mqtt.ingest]]\ntopic = \"a\"\ntable = \"t\"\nunknown_keys = \"drop\"\n".into(), "unknown variant"),
            (format!("[mqtt]\nbroker = \"mqtt://b:0\"\n{ingest}"), "port 0"),
            (format!("[mqtt]\nbroker = \"mqtt://b\"\n{ingest}{ingest}"), "given twice"),
            (
                "[mqtt]\nbroker = \"mqtt://b\"\n[[mqtt.ingest]]\ntopic = \"+/+\"\ntable = \"t\"\n\
                 columns_from_topic = { \"0\" = \"c\", \"1\" = \"C\" }\n"
                    .into(),
                "two topic levels fill column \"c\"",
            ),
            (
                format!("[mqtt]\nbroker = \"mqtt://b\"\n[[mqtt.ingest]]\ntopic = \"{}\"\ntable = \"t\"\n", "a".repeat(70_000)),
                "longer than MQTT allows",
            ),
        ] {
            let error = format!("{:#}", load_text(&text).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn peer_list_round_trips() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let node = NodeId::from_public_key(b"peer");
        let mut list = PeerList::load(dir.path()).expect("missing file is empty");
        assert!(list.upsert(node, "127.0.0.1:7401".parse().expect("address")));
        assert!(!list.upsert(node, "127.0.0.1:7402".parse().expect("address")));
        list.save(dir.path()).expect("saving");
        let loaded = PeerList::load(dir.path()).expect("loading");
        assert_eq!(loaded.parsed(dir.path()).expect("valid"), vec![(node, "127.0.0.1:7402".parse().expect("a"))]);
    }
}
