//! `GET /metrics`: what an operator alerts on, in the Prometheus text format.
//!
//! Counters that only the daemon sees (SQL statements, rows written) live in
//! [`ApiCounters`]; everything else is read at scrape time from its source (the store, the
//! sync node's per-peer records), so a scrape always shows current values and nothing is
//! double-counted. The exposition is built with `prometheus-client` on a registry made per
//! scrape, which is cheap next to the store reads.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sync_protocol::transport::{NodeCounters, PeerStatus};

/// Counters kept by the API.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Read statements answered.
    pub queries: AtomicU64,
    /// Write statements committed (each one write batch, one durable commit).
    pub writes: AtomicU64,
    /// Rows inserted, updated or deleted by committed write statements.
    pub rows_written: AtomicU64,
    /// Statements refused (syntax, unknown names, constraint violations, ...).
    pub sql_errors: AtomicU64,
    /// Statements refused because `api.statements_max` were running.
    pub statements_refused: AtomicU64,
    /// Statements running now (until they have stopped, not just been answered).
    pub statements_running: AtomicU64,
    /// API connections accepted and served.
    pub connections_accepted: AtomicU64,
    /// API connections refused because `api.connections_max` were open.
    pub connections_refused: AtomicU64,
    /// API connections open now.
    pub connections_open: AtomicU64,
}

/// The store's side of a scrape, read on the replica.
#[derive(Debug, Default, Clone)]
pub struct StoreFigures {
    /// Changes this node originated (one per committed write batch).
    pub local_changes: u64,
    /// Changes held from every origin.
    pub changes: u64,
    /// Changes parked until their dependencies arrive.
    pub pending_changes: u64,
    /// Cells whose value is in conflict (concurrent writes kept side by side).
    pub conflicts: u64,
    /// Bytes of the redb file.
    pub store_bytes: u64,
    /// Health figures, read from the replica handle (also while the store is faulted).
    pub health: StoreHealthFigures,
    /// Entries per redb table (read from redb's table lengths, no scan).
    pub table_entries: Vec<(String, u64)>,
    /// The caches' use and budgets.
    pub caches: Option<edgestore::CacheFigures>,
    /// Changes below the log floor: compacted out of the log (still in their documents).
    pub log_floor_changes: u64,
    /// What the compaction driver did since the node started.
    pub compaction: CompactionFigures,
    /// The causal-stability horizon.
    pub horizon: HorizonFigures,
    /// MQTT ingest, when `[mqtt]` is set.
    pub mqtt: Option<MqttFigures>,
    /// Append-only tables: rows, bytes and expiry.
    pub append_tables: Vec<edgestore::AppendTableStatus>,
}

/// MQTT ingest's figures for a scrape (`mqtt/mod.rs`).
#[derive(Debug, Default, Clone)]
pub struct MqttFigures {
    /// Whether a session with the broker is up.
    pub connected: bool,
    /// Sessions established, sessions lost.
    pub connects: u64,
    pub disconnects: u64,
    /// Messages received, rows inserted, rows skipped as duplicates, messages refused.
    pub messages: u64,
    pub rows: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// Batches committed.
    pub batches: u64,
    /// Messages received and not yet written, and their bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Milliseconds reading was throttled because the node held half of `mqtt.pending_mib`.
    pub throttled_ms: u64,
}

impl MqttFigures {
    /// Reads them from the ingest's counters.
    pub fn of(status: &crate::mqtt::IngestStatus) -> MqttFigures {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        MqttFigures {
            connected: status.connected.load(Ordering::Relaxed),
            connects: load(&status.connects),
            disconnects: load(&status.disconnects),
            messages: load(&status.messages),
            rows: load(&status.rows),
            duplicates: load(&status.duplicates),
            refused: load(&status.refused),
            batches: load(&status.batches),
            pending: load(&status.pending),
            pending_bytes: load(&status.pending_bytes),
            throttled_ms: load(&status.throttled_ms),
        }
    }
}

/// The causal-stability horizon for a scrape (docs/design.md § "Causal-stability horizon").
#[derive(Debug, Default, Clone)]
pub struct HorizonFigures {
    /// Changes at or below the horizon (stable).
    pub changes: u64,
    /// Changes held here above the horizon.
    pub behind_changes: u64,
    /// Per member: node id, changes held here it is not known to hold, beyond the peer horizon.
    pub members: Vec<(String, u64, bool)>,
    /// The held-vector table's counters.
    pub counters: edgestore::HoldersCounters,
}

impl HorizonFigures {
    /// Reads them from a horizon and the replica's vector.
    pub fn of(horizon: &edgestore::Horizon, vector: &edgestore::VersionVector) -> HorizonFigures {
        let changes = horizon.vector.total_changes();
        HorizonFigures {
            changes,
            behind_changes: vector.total_changes().saturating_sub(changes),
            members: horizon.members.iter().map(|m| (m.member.to_string(), m.lag_changes, m.beyond_horizon)).collect(),
            counters: edgestore::HoldersCounters::default(),
        }
    }
}

/// The compaction driver's figures for a scrape.
#[derive(Debug, Default, Clone)]
pub struct CompactionFigures {
    /// Log entries removed.
    pub entries: u64,
    /// Bytes of the removed envelopes.
    pub bytes: u64,
    /// Steps that failed.
    pub failures: u64,
    /// The longest step, in microseconds.
    pub step_us_max: u64,
    /// Documents saved whole by the background document save.
    pub docs_saved: u64,
    /// Bytes those saves freed.
    pub docs_saved_bytes_freed: u64,
    /// Rows of append-only tables removed by retention and budgets, and their blocks' bytes.
    pub expired_rows: u64,
    pub expired_bytes: u64,
    /// The longest retention step, in microseconds.
    pub expire_step_us_max: u64,
}

impl CompactionFigures {
    /// Reads them from the driver's counters.
    pub fn of(compaction: &crate::compaction::Compaction) -> CompactionFigures {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        CompactionFigures {
            entries: load(&compaction.entries),
            bytes: load(&compaction.bytes),
            failures: load(&compaction.failures),
            step_us_max: load(&compaction.step_us_max),
            docs_saved: load(&compaction.docs_saved),
            docs_saved_bytes_freed: load(&compaction.docs_saved_bytes_freed),
            expired_rows: load(&compaction.expired_rows),
            expired_bytes: load(&compaction.expired_bytes),
            expire_step_us_max: load(&compaction.expire_step_us_max),
        }
    }
}

/// The store's health for a scrape.
#[derive(Debug, Default, Clone)]
pub struct StoreHealthFigures {
    /// Writes are accepted (not faulted, not below the free-space floor).
    pub healthy: bool,
    /// Times an I/O error faulted the store.
    pub faults: u64,
    /// Times a faulted store was reopened.
    pub reopens: u64,
    /// Free bytes of the data directory's filesystem, when measured.
    pub free_bytes: Option<u64>,
}

impl StoreHealthFigures {
    /// Reads them from the handle, without a round trip to the owner thread.
    pub fn of(handle: &edgestore::ReplicaHandle) -> StoreHealthFigures {
        let counters = handle.counters();
        StoreHealthFigures {
            healthy: handle.health() == edgestore::handle::StoreHealth::Ok,
            faults: counters.faults,
            reopens: counters.reopens,
            free_bytes: handle.disk_space().map(|disk| disk.free_bytes),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

/// Renders one scrape.
pub fn render(
    api: &ApiCounters,
    store: &StoreFigures,
    peers: &[PeerStatus],
    node: &NodeCounters,
    uptime_s: u64,
) -> String {
    let mut registry = Registry::with_prefix("edgestore");
    counter(&mut registry, "sql_queries", "Read statements answered", api.queries.load(Ordering::Relaxed));
    counter(&mut registry, "sql_writes", "Write statements committed", api.writes.load(Ordering::Relaxed));
    counter(
        &mut registry,
        "rows_written",
        "Rows written by committed statements",
        api.rows_written.load(Ordering::Relaxed),
    );
    counter(&mut registry, "sql_errors", "Statements refused with an error", api.sql_errors.load(Ordering::Relaxed));
    api_limit_metrics(&mut registry, api);
    counter(&mut registry, "local_changes", "Changes this node committed (one per write batch)", store.local_changes);
    gauge(&mut registry, "changes", "Changes held from every origin", store.changes);
    gauge(&mut registry, "pending_changes", "Changes parked until their dependencies arrive", store.pending_changes);
    gauge(&mut registry, "conflicts", "Cells holding concurrent values", store.conflicts);
    gauge(&mut registry, "store_bytes", "Size of the store file", store.store_bytes);
    let health = &store.health;
    gauge(
        &mut registry,
        "store_healthy",
        "1 while the store accepts writes (not faulted, not low on disk)",
        health.healthy.into(),
    );
    counter(&mut registry, "store_faults", "Times an I/O error faulted the store", health.faults);
    counter(&mut registry, "store_reopens", "Times a faulted store was reopened", health.reopens);
    if let Some(free) = health.free_bytes {
        gauge(&mut registry, "store_free_bytes", "Free bytes of the data directory's filesystem", free);
    }
    gauge(&mut registry, "uptime_seconds", "Seconds since the node started", uptime_s);
    counter(
        &mut registry,
        "sync_handshakes_refused",
        "Incoming connections refused in the handshake",
        node.handshakes_refused,
    );
    counter(
        &mut registry,
        "sync_protocol_errors",
        "Sessions closed for a protocol error or timeout",
        node.protocol_errors,
    );
    counter(
        &mut registry,
        "sync_rejected_changes",
        "Sessions closed because a peer sent a refused change",
        node.rejected_changes,
    );
    sync_hygiene_metrics(&mut registry, node);
    peer_metrics(&mut registry, peers);
    store_metrics(&mut registry, store);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

fn api_limit_metrics(registry: &mut Registry, api: &ApiCounters) {
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let refused = "Statements refused because api.statements_max were running";
    counter(registry, "sql_statements_refused", refused, load(&api.statements_refused));
    gauge(registry, "sql_statements_running", "Statements running now", load(&api.statements_running));
    let accepted = "API connections accepted";
    counter(registry, "api_connections_accepted", accepted, load(&api.connections_accepted));
    let refused = "API connections refused because api.connections_max were open";
    counter(registry, "api_connections_refused", refused, load(&api.connections_refused));
    gauge(registry, "api_connections_open", "API connections open now", load(&api.connections_open));
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Refused peers, local store failures, stalled session timers and what arrives at the
/// sync port (issue 9: refused peers and floods must show in a metric).
fn sync_hygiene_metrics(registry: &mut Registry, node: &NodeCounters) {
    let refused = Family::<ReasonLabel, Counter>::default();
    for (reason, count) in &node.peers_refused {
        refused.get_or_create(&ReasonLabel { reason: reason.label().to_string() }).inc_by(*count);
    }
    registry.register("sync_peers_refused", "Peers refused (either side's check), by reason", refused);
    let changes_refused = Family::<ReasonLabel, Counter>::default();
    changes_refused.get_or_create(&ReasonLabel { reason: "store".to_string() }).inc_by(node.store_failures);
    registry.register(
        "sync_changes_refused",
        "Sync sessions closed because this node could not take the peer's changes, by reason",
        changes_refused,
    );
    counter(
        registry,
        "sync_session_timer_stalls",
        "Times a sync session asked twice in a row to be woken in the past",
        node.timer_stalls,
    );
    counter(registry, "sync_datagrams_received", "UDP datagrams received on the sync port", node.datagrams_received);
    counter(
        registry,
        "sync_datagrams_invalid",
        "Datagrams that cannot be QUIC for this endpoint (garbage, unknown versions or connections)",
        node.datagrams_invalid,
    );
    counter(
        registry,
        "sync_datagrams_initial",
        "Datagrams carrying a QUIC Initial packet (handshake attempts)",
        node.datagrams_initial,
    );
    let handshakes = Family::<OutcomeLabel, Counter>::default();
    for (outcome, count) in [
        ("accepted", node.quic_handshakes_accepted),
        ("refused", node.quic_handshakes_refused),
        ("ignored", node.quic_handshakes_ignored),
        ("outgoing", node.quic_handshakes_outgoing),
    ] {
        handshakes.get_or_create(&OutcomeLabel { outcome: outcome.to_string() }).inc_by(count);
    }
    registry.register("sync_quic_handshakes", "QUIC handshakes by outcome (quinn's endpoint statistics)", handshakes);
}

fn peer_metrics(registry: &mut Registry, peers: &[PeerStatus]) {
    type Counters = Family<PeerLabel, Counter>;
    type Gauges = Family<PeerLabel, Gauge>;
    let (connected, lag, contact) = (Gauges::default(), Gauges::default(), Gauges::default());
    let (sessions, changes_sent, changes_received) = (Counters::default(), Counters::default(), Counters::default());
    let (bytes_sent, bytes_received) = (Counters::default(), Counters::default());
    for status in peers {
        let label = PeerLabel { peer: status.node_id.to_string() };
        connected.get_or_create(&label).set(i64::from(status.connected));
        lag.get_or_create(&label).set(clamp(status.lag_changes));
        if let Some(ms) = status.last_contact_ms_ago {
            contact.get_or_create(&label).set(clamp(ms / 1000));
        }
        sessions.get_or_create(&label).inc_by(status.sessions);
        changes_sent.get_or_create(&label).inc_by(status.totals.changes_sent);
        changes_received.get_or_create(&label).inc_by(status.totals.changes_received);
        bytes_sent.get_or_create(&label).inc_by(status.totals.bytes_sent);
        bytes_received.get_or_create(&label).inc_by(status.totals.bytes_received);
    }
    registry.register("peer_connected", "1 while a sync connection to the peer is up", connected);
    registry.register("peer_lag_changes", "Changes held here that the peer is not known to hold", lag);
    registry.register("peer_last_contact_seconds", "Seconds since the peer last sent a frame", contact);
    registry.register("peer_sessions", "Sync sessions established with the peer", sessions);
    registry.register("peer_changes_sent", "Changes sent to the peer", changes_sent);
    registry.register("peer_changes_received", "Changes received from the peer", changes_received);
    registry.register("peer_bytes_sent", "Frame bytes sent to the peer", bytes_sent);
    registry.register("peer_bytes_received", "Frame bytes received from the peer", bytes_received);
    transfer_metrics(registry, peers);
}

/// State transfer: documents moved in each direction and transfers completed, over every
/// peer and session, and the documents of the transfer running with each peer.
fn transfer_metrics(registry: &mut Registry, peers: &[PeerStatus]) {
    let docs = Family::<DirectionLabel, Counter>::default();
    let running = Family::<PeerLabel, Gauge>::default();
    let (mut sent, mut received, mut completed) = (0, 0, 0);
    for status in peers {
        sent += status.totals.transfer_docs_sent;
        received += status.totals.transfer_docs_received;
        completed += status.totals.transfers_completed;
        if let Some(transfer) = &status.transfer {
            running.get_or_create(&PeerLabel { peer: status.node_id.to_string() }).set(clamp(transfer.docs));
        }
    }
    docs.get_or_create(&DirectionLabel { direction: "sent".into() }).inc_by(sent);
    docs.get_or_create(&DirectionLabel { direction: "received".into() }).inc_by(received);
    registry.register("transfer_docs", "Documents moved by state transfer (a peer below a log floor)", docs);
    counter(registry, "transfers_completed", "State transfers this node received to the end", completed);
    registry.register("peer_transfer_docs", "Documents of the state transfer running with the peer so far", running);
}

/// Log compaction (docs/design.md § "Log compaction").
fn compaction_metrics(registry: &mut Registry, store: &StoreFigures) {
    let floor = "Changes compacted out of the change log (the log floor, summed over origins)";
    gauge(registry, "log_floor_changes", floor, store.log_floor_changes);
    let figures = &store.compaction;
    counter(registry, "log_compacted_entries", "Change-log entries removed by compaction", figures.entries);
    counter(registry, "log_compacted_bytes", "Bytes of the change-log entries removed by compaction", figures.bytes);
    counter(registry, "log_compaction_failures", "Compaction steps that failed", figures.failures);
    let pause = "Longest compaction step since the node started (writers wait for at most one), in microseconds";
    gauge(registry, "log_compaction_step_max_microseconds", pause, figures.step_us_max);
    let saved = "Documents saved whole by the background document save (docs/design.md § Document save)";
    counter(registry, "docs_saved", saved, figures.docs_saved);
    let freed = "Bytes the background document save freed (tails and old snapshots minus new snapshots)";
    counter(registry, "docs_saved_bytes_freed", freed, figures.docs_saved_bytes_freed);
}

/// The causal-stability horizon (docs/design.md § "Causal-stability horizon").
fn horizon_metrics(registry: &mut Registry, horizon: &HorizonFigures) {
    gauge(registry, "horizon_changes", "Changes at or below the causal-stability horizon (stable)", horizon.changes);
    gauge(registry, "horizon_behind_changes", "Changes held here above the horizon", horizon.behind_changes);
    let (lag, beyond) = (Family::<MemberLabel, Gauge>::default(), Family::<MemberLabel, Gauge>::default());
    for (member, lag_changes, is_beyond) in &horizon.members {
        let label = MemberLabel { member: member.clone() };
        lag.get_or_create(&label).set(clamp(*lag_changes));
        beyond.get_or_create(&label).set(i64::from(*is_beyond));
    }
    let lag_help = "Changes held here that the member is not known to hold (how far it holds the horizon back)";
    registry.register("horizon_lag_changes", lag_help, lag);
    let beyond_help =
        "1 while the member is not heard of within lifecycle.peer_horizon (it no longer holds the horizon back)";
    registry.register("horizon_member_beyond", beyond_help, beyond);
    let counters = &horizon.counters;
    counter(
        registry,
        "holders_claims_lower",
        "Held-vector claims lower than what was held (ignored)",
        counters.claims_lower,
    );
    let capped = "Forwarded held-vector claims above what the forwarder holds (capped)";
    counter(registry, "holders_claims_capped", capped, counters.claims_capped);
    let refused = "Members not tracked because the member table was full";
    counter(registry, "holders_members_refused", refused, counters.members_refused);
}

/// MQTT ingest (docs/design.md § MQTT ingest).
fn mqtt_metrics(registry: &mut Registry, mqtt: &MqttFigures) {
    gauge(registry, "mqtt_connected", "1 while the MQTT session with the broker is up", mqtt.connected.into());
    counter(registry, "mqtt_connects", "MQTT sessions established", mqtt.connects);
    counter(registry, "mqtt_disconnects", "MQTT sessions lost", mqtt.disconnects);
    counter(registry, "mqtt_messages", "MQTT messages received (redeliveries included)", mqtt.messages);
    counter(registry, "mqtt_rows", "Rows inserted from MQTT messages", mqtt.rows);
    let duplicates = "Rows from MQTT messages skipped because their key existed (redeliveries)";
    counter(registry, "mqtt_duplicate_rows", duplicates, mqtt.duplicates);
    let refused = "MQTT messages refused and kept as dead letters (edgestore_dead_letters)";
    counter(registry, "mqtt_refused", refused, mqtt.refused);
    counter(registry, "mqtt_batches", "MQTT batches committed", mqtt.batches);
    gauge(registry, "mqtt_pending", "MQTT messages received and not yet written", mqtt.pending);
    gauge(registry, "mqtt_pending_bytes", "Bytes of MQTT messages received and not yet written", mqtt.pending_bytes);
    let throttled = "Milliseconds MQTT reading was throttled while the node held half of mqtt.pending_mib";
    counter(registry, "mqtt_throttled_ms", throttled, mqtt.throttled_ms);
}

/// Append-only tables and their retention (docs/design.md § "Retention, the budget and
/// the floor").
fn append_metrics(registry: &mut Registry, store: &StoreFigures) {
    let figures = &store.compaction;
    let rows = "Rows of append-only tables removed by retention or max_bytes since the node started";
    counter(registry, "retention_expired_rows", rows, figures.expired_rows);
    let bytes = "Bytes of append-only blocks removed by retention or max_bytes since the node started";
    counter(registry, "retention_expired_bytes", bytes, figures.expired_bytes);
    let pause = "Longest retention step since the node started, in microseconds";
    gauge(registry, "retention_step_max_microseconds", pause, figures.expire_step_us_max);
    let (rows, bytes, floor) = (
        Family::<TableLabel, Gauge>::default(),
        Family::<TableLabel, Gauge>::default(),
        Family::<TableLabel, Gauge>::default(),
    );
    let (expired, on_arrival) = (Family::<TableLabel, Counter>::default(), Family::<TableLabel, Counter>::default());
    for table in &store.append_tables {
        let label = TableLabel { table: table.name.clone() };
        rows.get_or_create(&label).set(clamp(table.rows));
        bytes.get_or_create(&label).set(clamp(table.bytes));
        if let Some(start) = table.floor {
            floor.get_or_create(&label).set(start);
        }
        expired.get_or_create(&label).inc_by(table.expired_rows);
        on_arrival.get_or_create(&label).inc_by(table.expired_on_arrival);
    }
    registry.register("append_rows", "Rows an append-only table holds", rows);
    registry.register("append_bytes", "Bytes of an append-only table's blocks, keys included", bytes);
    let floor_help =
        "Start of the oldest bucket an append-only table keeps (ms since 1970 for a TIMESTAMP time column)";
    registry.register("append_floor", floor_help, floor);
    registry.register("append_expired_rows", "Rows an append-only table lost to retention or max_bytes", expired);
    let arrival = "Rows of an append-only table that arrived below its floor and were not stored";
    registry.register("append_expired_on_arrival", arrival, on_arrival);
}

fn store_metrics(registry: &mut Registry, store: &StoreFigures) {
    compaction_metrics(registry, store);
    append_metrics(registry, store);
    if let Some(mqtt) = &store.mqtt {
        mqtt_metrics(registry, mqtt);
    }
    horizon_metrics(registry, &store.horizon);
    let entries = Family::<TableLabel, Gauge>::default();
    for (table, count) in &store.table_entries {
        entries.get_or_create(&TableLabel { table: table.clone() }).set(clamp(*count));
    }
    registry.register("store_table_entries", "Entries of each redb table of the store", entries);
    if let Some(caches) = &store.caches {
        let budget = Family::<CacheLabel, Gauge>::default();
        let label = |cache: &str| CacheLabel { cache: cache.to_string() };
        budget.get_or_create(&label("redb")).set(clamp(caches.redb_cache_bytes_max as u64));
        budget.get_or_create(&label("documents")).set(clamp(caches.doc_cache_bytes_max as u64));
        registry.register("cache_budget_bytes", "Memory budget of each store cache", budget);
        gauge(registry, "doc_cache_bytes", "Estimated memory of the cached documents", caches.doc_cache_bytes as u64);
        gauge(registry, "doc_cache_documents", "Documents in the document cache", caches.doc_cache_docs as u64);
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Gauge = Gauge::default();
    metric.set(clamp(value));
    registry.register(name, help, metric);
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_typed_metrics_with_values() {
        let api = ApiCounters::default();
        api.writes.store(3, Ordering::Relaxed);
        let store = StoreFigures { changes: 10, conflicts: 2, store_bytes: 4096, ..StoreFigures::default() };
        let text = render(&api, &store, &[], &NodeCounters::default(), 5);
        assert!(text.contains("# TYPE edgestore_sql_writes counter"), "{text}");
        assert!(text.contains("edgestore_sql_writes_total 3"), "{text}");
        assert!(text.contains("edgestore_conflicts 2"), "{text}");
        assert!(text.contains("edgestore_store_bytes 4096"), "{text}");
        let store = StoreFigures {
            table_entries: vec![("rows_v1".into(), 7)],
            caches: Some(edgestore::CacheFigures {
                doc_cache_docs: 2,
                doc_cache_bytes: 100,
                doc_cache_bytes_max: 1000,
                redb_cache_bytes_max: 3000,
            }),
            ..StoreFigures::default()
        };
        let text = render(&api, &store, &[], &NodeCounters::default(), 5);
        assert!(text.contains("edgestore_store_table_entries{table=\"rows_v1\"} 7"), "{text}");
        assert!(text.contains("edgestore_cache_budget_bytes{cache=\"redb\"} 3000"), "{text}");
        assert!(text.contains("edgestore_doc_cache_bytes 100"), "{text}");
        let compaction = CompactionFigures {
            entries: 9,
            bytes: 900,
            failures: 0,
            step_us_max: 1500,
            docs_saved: 4,
            docs_saved_bytes_freed: 700,
            expired_rows: 180,
            expired_bytes: 5000,
            expire_step_us_max: 800,
        };
        let table = crate::retention::sample_status();
        let store =
            StoreFigures { log_floor_changes: 9, compaction, append_tables: vec![table], ..StoreFigures::default() };
        let text = render(&api, &store, &[], &NodeCounters::default(), 5);
        assert!(text.contains("edgestore_log_floor_changes 9"), "{text}");
        assert!(text.contains("edgestore_log_compacted_entries_total 9"), "{text}");
        assert!(text.contains("edgestore_log_compaction_step_max_microseconds 1500"), "{text}");
        assert!(text.contains("edgestore_docs_saved_total 4"), "{text}");
        assert!(text.contains("edgestore_retention_expired_rows_total 180"), "{text}");
        assert!(text.contains("edgestore_append_rows{table=\"readings\"} 540"), "{text}");
        assert!(text.contains("edgestore_append_floor{table=\"readings\"} 10800000"), "{text}");
        assert!(text.contains("edgestore_append_expired_on_arrival_total{table=\"readings\"} 60"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn sync_hygiene_counters_are_exported_with_their_labels() {
        let mut node = NodeCounters::default();
        node.peers_refused = sync_protocol::transport::RefusalReason::ALL.iter().map(|&r| (r, 0)).collect();
        node.peers_refused.insert(sync_protocol::transport::RefusalReason::ClusterMismatch, 4);
        node.store_failures = 2;
        node.datagrams_invalid = 7;
        node.quic_handshakes_refused = 3;
        let text = render(&ApiCounters::default(), &StoreFigures::default(), &[], &node, 0);
        for line in [
            "edgestore_sync_peers_refused_total{reason=\"cluster_mismatch\"} 4",
            "edgestore_sync_peers_refused_total{reason=\"not_allowed\"} 0",
            "edgestore_sync_changes_refused_total{reason=\"store\"} 2",
            "edgestore_sync_datagrams_invalid_total 7",
            "edgestore_sync_quic_handshakes_total{outcome=\"refused\"} 3",
            "edgestore_sync_session_timer_stalls_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
