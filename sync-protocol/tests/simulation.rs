//! Deterministic simulation of a sync mesh under partitions.
//!
//! N nodes, each a real `Replica` (a redb file on tmpfs when available) driven by the same
//! `Session` code as production, exchange frames over an in-memory network with virtual
//! time and a seeded RNG. Schedules partition links (full, one-way, bridge, flapping),
//! drop, delay, reorder and duplicate frames, and crash and restart nodes on their own
//! stores, while a workload writes on every node. After the network heals:
//!
//! - every node converges (same version vector, digest and table contents) within
//!   `CONVERGENCE_BOUND_MS` of simulated time;
//! - no acknowledged write is lost, and counters equal the sum of acknowledged increments;
//! - once converged, nothing but keepalives crosses the network (anti-entropy root
//!   digests ride in keepalive slots; nothing answers them when the trees agree);
//! - at every step, every node's causal-stability horizon is held by every node (`h_n ≤
//!   V_m`) and never falls while the node runs; once converged and idle, it equals the
//!   common version vector on every node.
//!
//! A separate scenario restores one node's document tables from an old backup while its
//! log and version vector stay, so the version vectors are equal but the documents
//! differ; anti-entropy must find and repair them.
//!
//! State transfer: members that themselves joined by a state transfer have a log floor
//! (their logs lack everything below the vector they installed); a new node joining such a
//! mesh while writes, partitions and crashes go on is offered documents by them and log
//! replay by the others, and the mesh converges with nothing acknowledged lost.
//!
//! Away past the peer horizon: with a 60 s peer horizon, a node cut off for longer keeps
//! acknowledging writes while the others compact their logs past what it holds (and it
//! compacts its own, the others being beyond its horizon); after the heal the mesh
//! converges by state transfer with nothing acknowledged lost, the node's offline writes
//! included. The invariants exempt it, both ways, until it has caught up.
//!
//! Every run prints its seed; the same seed gives the same run. `EDGESTORE_SIM_SEED=<n>`
//! replays one schedule; `EDGESTORE_SIM_SCHEDULES=<n>` runs a longer sweep (default 200),
//! `EDGESTORE_SIM_AWAY_SCHEDULES=<n>` a longer sweep of the away scenario (default 8).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;

use edgestore::{
    ColumnDef, ColumnType, IndexSchema, NodeId, Replica, TableSchema, Value, VersionVector, WriteBatch, WriteError,
    WriteOp,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sync_protocol::{Backoff, ClusterId, Event, Frame, Session, SessionConfig};

/// Simulated time within which a healed mesh must converge.
const CONVERGENCE_BOUND_MS: u64 = 60_000;
/// Rows every node may update concurrently (created before the faults start).
const SHARED_ROWS: i64 = 4;
/// `lifecycle.peer_horizon`'s default: no node of most schedules is away that long
/// (`Sim::peer_horizon_ms`; the away scenario shortens it).
const PEER_HORIZON_MS: u64 = 7 * 24 * 3600 * 1000;
/// Log entries each node's compaction step removes at most (small, so steps are partial).
const COMPACT_STEP_ENTRIES: usize = 8;

fn table() -> TableSchema {
    TableSchema::new("kv")
        .column(ColumnDef::new("k", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Text))
        .column(ColumnDef::new("n", ColumnType::Counter))
        .primary_key(&["k"])
}

/// A table without a primary key: every node inserts the same row into it, and each
/// acknowledged insert must stay a row of its own (design.md § Tables without a primary key).
fn events() -> TableSchema {
    TableSchema::without_key("events").column(ColumnDef::new("what", ColumnType::Text))
}

/// A table with a unique column: nodes insert rows whose tag is the simulated time's
/// 3-second slot, so nodes apart take one tag concurrently (design.md § Unique indexes).
fn tags() -> TableSchema {
    TableSchema::new("tags")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("tag", ColumnType::Text))
        .primary_key(&["id"])
}

const TAGS_INDEX: &str = "tags_tag";

/// Append-only with `ts` as the time column, in one-second blocks of simulated time.
fn one_second_buckets() -> edgestore::schema::AppendOptions {
    edgestore::schema::AppendOptions { time_column: Some("ts".into()), bucket: 1000, retention: None, max_bytes: None }
}

/// An append-only table (docs/design.md § Append-only tables): rows merged by union,
/// stored in one-second blocks of simulated time, carried by state transfer after the
/// documents once logs are compacted. Each acknowledged row has a value of its own.
fn readings() -> TableSchema {
    let mut schema = TableSchema::new("readings")
        .column(ColumnDef::new("ts", ColumnType::Timestamp).not_null())
        .column(ColumnDef::new("what", ColumnType::Text));
    schema.append = Some(one_second_buckets());
    schema
}

/// An append-only table with a deduplication key (docs/design.md § "Built: stage 2,
/// part 2"): nodes writing in the same half second of simulated time take the same key,
/// so a node that holds it refuses it and nodes apart both keep theirs.
fn msgs() -> TableSchema {
    let mut schema = TableSchema::new("msgs")
        .column(ColumnDef::new("ts", ColumnType::Timestamp).not_null())
        .column(ColumnDef::new("msg", ColumnType::Text))
        .column(ColumnDef::new("by", ColumnType::Text))
        .primary_key(&["msg"]);
    schema.append = Some(one_second_buckets());
    schema
}

/// A frame in flight. Ordered by delivery time, then by send order, for determinism.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: std::cmp::Reverse<(u64, u64)>,
    from: usize,
    to: usize,
    connection: u64,
    bytes: Vec<u8>,
}

/// Faults applied to frames while the schedule is in its faulty phase.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop: f64,
    duplicate: f64,
    /// Extra random delay, which reorders frames.
    jitter_ms: u64,
}

const CALM: Faults = Faults { drop: 0.0, duplicate: 0.0, jitter_ms: 0 };

struct Link {
    session: Session,
    connection: u64,
}

struct Node {
    id: NodeId,
    path: PathBuf,
    replica: Option<Replica>,
    links: BTreeMap<usize, Link>,
    retry_at: BTreeMap<usize, u64>,
    backoff: BTreeMap<usize, Backoff>,
    /// The horizon at the last step since the replica was opened.
    horizon: Option<VersionVector>,
    /// Added to a running mesh and not yet a member everywhere at or above every horizon
    /// (design.md § Causal-stability horizon, joins: such a node catches up by state
    /// transfer before it holds anyone's horizon back).
    joining: bool,
    /// Cut off for longer than the peer horizon (design.md § Causal-stability horizon,
    /// beyond the peer horizon): the others' horizons and floors may pass what it holds,
    /// and its own may pass what they hold, until it is back and has caught up
    /// (`end_away`).
    away: bool,
    /// An away node's links are up again: its exemption ends once it has caught up.
    back: bool,
    /// Other nodes this one counted as beyond its peer horizon (unheard of for that long,
    /// flagged away or not: under frame faults a link can fail that long, seed 2745172705)
    /// and that have not caught up with its horizon and floor since. Its horizon and floor
    /// may pass what they hold, as for an away node.
    passed: BTreeSet<usize>,
}

/// What the workload was told succeeded.
#[derive(Default)]
struct Acknowledged {
    /// Unique rows: key → value.
    rows: BTreeMap<i64, String>,
    /// Shared rows: key → sum of acknowledged increments.
    increments: BTreeMap<i64, i64>,
    /// Acknowledged inserts of the identical row into the key-less `events`.
    events: usize,
    /// Acknowledged rows of `tags`: id → tag.
    tags: BTreeMap<i64, String>,
    /// Acknowledged `ALTER TABLE`s of `events`.
    alters: usize,
    /// Acknowledged rows of the append-only `readings`, by their values (each unique),
    /// less those an acknowledged range delete removed.
    readings: BTreeSet<String>,
    /// Rows of `readings` an acknowledged range delete removed, with the delete's change
    /// (its node and seq): another node that has not yet received that change still holds
    /// them, and may delete them again.
    removed_readings: BTreeMap<String, Vec<(NodeId, u64)>>,
    /// Acknowledged range deletes of `readings`, and the rows they removed.
    range_deletes: (usize, usize),
    /// Acknowledged rows of the keyed append-only `msgs`: key → how many nodes wrote it.
    msgs: BTreeMap<String, usize>,
    /// Acknowledged `CREATE VIEW`s and `DROP VIEW`s of `small`.
    views: usize,
}

struct Sim {
    /// The schedule's seed, named in every failure.
    seed: u64,
    rng: ChaCha8Rng,
    now_ms: u64,
    nodes: Vec<Node>,
    network: BinaryHeap<InFlight>,
    sent_count: u64,
    next_connection: u64,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(usize, usize)>,
    faults: Faults,
    acked: Acknowledged,
    next_key: i64,
    /// Next `tags` id (ids are unique: only the unique index on `tag` can refuse).
    next_tag_id: i64,
    config: SessionConfig,
    /// `Changes` and `Ack` frames delivered since the counter was reset.
    data_frames: u64,
    /// Anti-entropy frames delivered since the counter was reset, root probes excepted.
    repair_frames: u64,
    /// Anti-entropy frames (root probes included) and their bytes delivered since reset.
    anti_entropy: (u64, u64),
    /// Every step runs a bounded compaction step on every node (`compact_logs`).
    compact: bool,
    /// Some `events` writes are `ALTER TABLE`s (`alter_events`); off where a scenario
    /// needs the catalog to stay as it was after the first write.
    alters: bool,
    /// Log entries compacted away, over all nodes.
    compacted: u64,
    /// Documents saved whole by the background save step, over all nodes.
    docs_saved: u64,
    /// Sessions closed because the peer needed changes below the log floor.
    below_floor_closes: u64,
    /// State-transfer batches delivered since the counter was reset.
    transfer_batches: u64,
    /// `lifecycle.peer_horizon` of every node: members silent longer stop counting.
    peer_horizon_ms: u64,
    _dir: tempfile::TempDir,
}

/// Node `i` with an empty store in `dir`.
fn new_node(dir: &tempfile::TempDir, i: usize) -> Node {
    let id = NodeId::from_public_key(&[i as u8, 0xA5]);
    let path = dir.path().join(format!("node{i}.redb"));
    let replica = Replica::open(&path, id).expect("open replica");
    Node {
        id,
        path,
        replica: Some(replica),
        links: BTreeMap::new(),
        retry_at: BTreeMap::new(),
        backoff: BTreeMap::new(),
        horizon: None,
        joining: false,
        away: false,
        back: false,
        passed: BTreeSet::new(),
    }
}

fn temp_dir() -> tempfile::TempDir {
    // tmpfs keeps fsync cheap; the redb files and their commits are otherwise real.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("edgestore-sim").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::TempDir::new().expect("temporary directory")
}

impl Sim {
    fn new(seed: u64, node_count: usize) -> Sim {
        let dir = temp_dir();
        let nodes = (0..node_count).map(|i| new_node(&dir, i)).collect();
        let mut config = SessionConfig::new(ClusterId([7; 16]));
        config.batch_changes_max = 16;
        config.anti_entropy_interval_ms = 10_000;
        let mut sim = Sim {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now_ms: 0,
            nodes,
            network: BinaryHeap::new(),
            sent_count: 0,
            next_connection: 1,
            cut: BTreeSet::new(),
            faults: CALM,
            acked: Acknowledged::default(),
            next_key: 1000,
            next_tag_id: 1,
            config,
            data_frames: 0,
            repair_frames: 0,
            anti_entropy: (0, 0),
            compact: true,
            alters: true,
            compacted: 0,
            docs_saved: 0,
            below_floor_closes: 0,
            transfer_batches: 0,
            peer_horizon_ms: PEER_HORIZON_MS,
            _dir: dir,
        };
        // Every node of the mesh is a configured peer of every other: a member from the start.
        let ids: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
        for node in 0..node_count {
            sim.replica(node).add_members(&ids, 0).expect("add members");
        }
        sim.setup_shared_rows();
        sim
    }

    fn setup_shared_rows(&mut self) {
        let mut batch = WriteBatch::new()
            .create_table(table())
            .create_table(events())
            .create_table(tags())
            .create_table(readings())
            .create_table(msgs())
            .create_index(IndexSchema::new(TAGS_INDEX, "tags", &["tag"]).unique());
        for k in 0..SHARED_ROWS {
            batch = batch.insert("kv", [("k", Value::from(k)), ("v", Value::from("init"))]);
            self.acked.increments.insert(k, 0);
        }
        self.replica(0).write(batch, 0).expect("setup write");
    }

    /// The `readings` rows `node` holds with a time in `[lo, hi)`, by value.
    fn readings_in(&self, node: usize, lo: i64, hi: i64) -> Vec<String> {
        let replica = self.nodes[node].replica.as_ref().expect("node is up");
        let Ok(rows) = replica.snapshot().unwrap().scan("readings") else { return Vec::new() };
        rows.map(Result::unwrap)
            .filter(|row| matches!(row[0], Value::Timestamp(t) if lo <= t && t < hi))
            .map(|row| match &row[1] {
                Value::Text(what) => what.clone(),
                other => panic!("seed {}: a reading's value {other:?}", self.seed),
            })
            .collect()
    }

    fn replica(&mut self, node: usize) -> &mut Replica {
        self.nodes[node].replica.as_mut().expect("node is up")
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }

    /// Opens sessions on both ends of every link that is up and whose retry time has come.
    /// The lower-numbered node dials, so each pair has at most one connection.
    fn connect_ready_links(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                let both_up = self.nodes[a].replica.is_some() && self.nodes[b].replica.is_some();
                let connected = self.nodes[a].links.contains_key(&b) || self.nodes[b].links.contains_key(&a);
                let due = self.nodes[a].retry_at.get(&b).is_none_or(|&t| t <= self.now_ms);
                if !both_up || connected || !due {
                    continue;
                }
                if self.link_up(a, b) {
                    self.open_connection(a, b);
                } else {
                    self.schedule_retry(a, b);
                }
            }
        }
    }

    fn schedule_retry(&mut self, a: usize, b: usize) {
        let jitter = self.rng.random::<f64>();
        let delay = self.nodes[a].backoff.entry(b).or_insert_with(|| Backoff::new(200, 5_000)).next_delay_ms(jitter);
        self.nodes[a].retry_at.insert(b, self.now_ms + delay.max(1));
    }

    fn open_connection(&mut self, a: usize, b: usize) {
        let connection = self.next_connection;
        self.next_connection += 1;
        for (local, remote) in [(a, b), (b, a)] {
            let vector = self.nodes[local].replica.as_ref().expect("up").version_vector().clone();
            let (local_id, remote_id) = (self.nodes[local].id, self.nodes[remote].id);
            let session = Session::new(self.config.clone(), local_id, remote_id, &vector, self.now_ms);
            self.nodes[local].links.insert(remote, Link { session, connection });
        }
        self.nodes[a].backoff.entry(b).or_insert_with(|| Backoff::new(200, 5_000)).reset();
    }

    /// Drains every session's output onto the network and handles events.
    fn flush(&mut self) {
        for from in 0..self.nodes.len() {
            let peers: Vec<usize> = self.nodes[from].links.keys().copied().collect();
            for to in peers {
                self.flush_link(from, to);
            }
        }
    }

    fn flush_link(&mut self, from: usize, to: usize) {
        let now = self.now_ms;
        loop {
            let node = &mut self.nodes[from];
            let (Some(link), Some(replica)) = (node.links.get_mut(&to), node.replica.as_ref()) else { return };
            let Some(bytes) = link.session.poll_transmit(now, replica) else { break };
            let connection = link.connection;
            self.transmit(from, to, connection, bytes);
        }
        self.handle_events(from, to);
    }

    fn transmit(&mut self, from: usize, to: usize, connection: u64, bytes: Vec<u8>) {
        if self.cut.contains(&(from, to)) || self.rng.random_bool(self.faults.drop) {
            return;
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.random_range(0..=self.faults.jitter_ms);
            self.sent_count += 1;
            let deliver_at = std::cmp::Reverse((self.now_ms + delay, self.sent_count));
            self.network.push(InFlight { deliver_at, from, to, connection, bytes: bytes.clone() });
        }
    }

    fn handle_events(&mut self, node: usize, peer: usize) {
        let mut relay = false;
        let mut closed = false;
        if let Some(link) = self.nodes[node].links.get_mut(&peer) {
            while let Some(event) = link.session.poll_event() {
                match event {
                    Event::Applied(_) | Event::HoldersGrew => relay = true,
                    Event::Closed { error } => {
                        closed = true;
                        // A peer below the log floor needs a state transfer; until one
                        // exists the session fails loudly with the store's typed error.
                        let text = error.map(|e| e.to_string()).unwrap_or_default();
                        if text.contains("compacted out of the log") {
                            self.below_floor_closes += 1;
                        }
                    }
                    Event::Established { .. } | Event::Repaired(_) | Event::Transfer(_) => {}
                }
            }
            closed |= link.session.is_closed();
        }
        if closed {
            self.nodes[node].links.remove(&peer);
            let dialer = node.min(peer);
            self.schedule_retry(dialer, node.max(peer));
        }
        if relay {
            for link in self.nodes[node].links.values_mut() {
                link.session.handle_store_changed();
            }
        }
    }

    fn deliver(&mut self, frame: InFlight) {
        let InFlight { from, to, connection, bytes, .. } = frame;
        let now = self.now_ms;
        let node = &mut self.nodes[to];
        let (Some(link), Some(replica)) = (node.links.get_mut(&from), node.replica.as_mut()) else { return };
        if link.connection != connection {
            return; // a frame of a connection that no longer exists
        }
        // Sync data; handshakes of reconnecting links and keepalives are not.
        match Frame::decode(&bytes) {
            Ok(Frame::Changes { .. } | Frame::Ack { .. }) => self.data_frames += 1,
            Ok(Frame::TransferBatch { .. }) => {
                self.data_frames += 1;
                self.transfer_batches += 1;
            }
            Ok(Frame::Digests { ranges, .. }) => {
                self.anti_entropy.0 += 1;
                self.anti_entropy.1 += bytes.len() as u64;
                if ranges.iter().any(|r| r.depth > 0) {
                    self.repair_frames += 1;
                }
            }
            Ok(Frame::Heads { .. } | Frame::Repair { .. }) => {
                self.anti_entropy.0 += 1;
                self.anti_entropy.1 += bytes.len() as u64;
                self.repair_frames += 1;
            }
            _ => {}
        }
        // A protocol error closes the session; it reconnects after backoff.
        let _ = link.session.handle_frame(now, &bytes, replica);
        self.handle_events(to, from);
    }

    fn local_write(&mut self) {
        let node = self.rng.random_range(0..self.nodes.len());
        self.local_write_on(node);
    }

    /// One write of a random kind on `node` (if it is up); counted if acknowledged, and
    /// returns whether it was.
    fn local_write_on(&mut self, node: usize) -> bool {
        if self.nodes[node].replica.is_none() {
            return false;
        }
        let now = self.now_ms as i64;
        // The fourth kind alternates by simulated second, so the rng stream (and every
        // seed's schedule) is what it was before `tags` existed.
        let (batch, effect) = match self.rng.random_range(0..4) {
            3 if (self.now_ms / 1000) % 2 == 1 => {
                let id = self.next_tag_id;
                self.next_tag_id += 1;
                let tag = format!("t{}", self.now_ms / 3000);
                let batch =
                    WriteBatch::new().insert("tags", [("id", Value::from(id)), ("tag", Value::from(tag.as_str()))]);
                (batch, Effect::Tag(id, tag))
            }
            3 if self.alters && (self.now_ms / 1000) % 10 == 4 => (self.alter_events(node), Effect::Alter),
            // Chosen by the simulated time too, so the rng stream stays as it was: in the
            // last tenth of a reading second, a range delete of the readings of the 20
            // seconds before (but the last 300 ms), which removes exactly the rows this
            // node holds there (rows other nodes wrote concurrently in the range stay).
            3 if (self.now_ms / 1000) % 10 == 6 && (self.now_ms / 100) % 10 == 9 => {
                let (lo, hi) = (now - 20_000, now - 300);
                let held = self.readings_in(node, lo, hi);
                (WriteBatch::new().delete_range("readings", Some(lo), Some(hi)), Effect::DeleteReadings(held))
            }
            // Chosen by the simulated time too: in the first fifth of every tenth
            // second, create (even slots, a definition of this node's) or drop (odd slots)
            // the view `small`; nodes apart define it differently or drop it concurrently.
            3 if (self.now_ms / 1000) % 10 == 2 && (self.now_ms / 100) % 10 < 2 => (self.view_op(node), Effect::View),
            // Chosen by the simulated time too: a key per half second, shared by the
            // nodes that write then.
            3 if (self.now_ms / 1000) % 10 == 8 => {
                let msg = format!("m{}", self.now_ms / 500);
                let row = [
                    ("ts", Value::Timestamp(now)),
                    ("msg", Value::from(msg.as_str())),
                    ("by", Value::from(format!("n{node}"))),
                ];
                (WriteBatch::new().insert("msgs", row), Effect::Msg(msg))
            }
            3 if (self.now_ms / 1000) % 10 == 6 => {
                let what = format!("r{node}-{}", self.next_key);
                self.next_key += 1;
                let row = [("ts", Value::Timestamp(now)), ("what", Value::from(what.as_str()))];
                (WriteBatch::new().insert("readings", row), Effect::Reading(what))
            }
            3 => {
                let what = self.events_column(node);
                (WriteBatch::new().insert("events", [(what.as_str(), Value::from("tick"))]), Effect::Event)
            }
            0 => {
                let key = self.next_key;
                self.next_key += 1;
                let value = format!("n{node}-{key}");
                let batch =
                    WriteBatch::new().insert("kv", [("k", Value::from(key)), ("v", Value::from(value.clone()))]);
                (batch, Effect::Row(key, value))
            }
            1 => {
                let key = self.rng.random_range(0..SHARED_ROWS);
                let by = self.rng.random_range(1..5);
                (WriteBatch::new().increment("kv", vec![key.into()], "n", by), Effect::Increment(key, by))
            }
            _ => {
                let key = self.rng.random_range(0..SHARED_ROWS);
                let set = [("v", Value::from(format!("n{node}@{now}")))];
                (WriteBatch::new().update("kv", vec![key.into()], set), Effect::None)
            }
        };
        // A node that has not yet received the table or the shared rows refuses the write;
        // only acknowledged writes count. A key-less insert is never a duplicate: that
        // would be an identity given twice (a counter that went back).
        let held = match &effect {
            Effect::Tag(_, tag) => self.holds_tag(node, tag),
            Effect::Msg(msg) => self.holds_msg(node, msg),
            _ => false,
        };
        let result = self.replica(node).write(batch, now);
        if let Err(WriteError::DuplicateKey { table, key }) = &result {
            assert_ne!(table, "events", "seed {}: node {node} gave the identity {key} twice", self.seed);
        }
        if let Effect::Tag(_, tag) = &effect {
            // Refused exactly when this node already holds the tag: a local write never
            // makes a unique conflict, and one that makes none is never refused.
            let refused = matches!(result, Err(WriteError::UniqueViolation { .. }));
            assert_eq!(refused, held, "seed {}: node {node}, tag {tag}: held {held}, refused {refused}", self.seed);
        }
        if let Effect::Msg(msg) = &effect {
            // Refused exactly when this node holds the key (its own row or a peer's).
            let refused = matches!(&result, Err(WriteError::DuplicateKey { table, .. }) if table == "msgs");
            assert_eq!(refused, held, "seed {}: node {node}, msg {msg}: held {held}, refused {refused}", self.seed);
        }
        if let (Ok(receipt), Effect::DeleteReadings(held)) = (&result, &effect) {
            assert_eq!(receipt.rows_affected, held.len() as u64, "seed {}: a range delete's count", self.seed);
        }
        let delete_change = match (&result, &effect) {
            (Ok(receipt), Effect::DeleteReadings(_)) => receipt.seq.map(|seq| (self.replica(node).node_id(), seq)),
            _ => None,
        };
        if result.is_ok() {
            match effect {
                Effect::Event => self.acked.events += 1,
                Effect::Tag(id, tag) => {
                    self.acked.tags.insert(id, tag);
                }
                Effect::Row(key, value) => {
                    self.acked.rows.insert(key, value);
                }
                Effect::Increment(key, by) => *self.acked.increments.get_mut(&key).expect("shared row") += by,
                Effect::Alter => self.acked.alters += 1,
                Effect::View => self.acked.views += 1,
                Effect::Reading(what) => {
                    self.acked.readings.insert(what);
                }
                Effect::Msg(msg) => *self.acked.msgs.entry(msg).or_default() += 1,
                Effect::DeleteReadings(held) => {
                    let vector = self.replica(node).version_vector().clone();
                    for what in &held {
                        // Acknowledged, or removed by a delete made elsewhere that has not
                        // reached this node: never a row that was not written, nor one a
                        // delete this node has applied removed (that would be a resurrection).
                        if !self.acked.readings.remove(what) {
                            let Some(deletes) = self.acked.removed_readings.get(what) else {
                                panic!("seed {}: {what} held, never acknowledged", self.seed);
                            };
                            for &(by, seq) in deletes {
                                assert!(
                                    vector.seq(by) < seq,
                                    "seed {}: node {node} holds {what}, which the delete {by}:{seq} it applied removed",
                                    self.seed
                                );
                            }
                        }
                        if let Some(change) = delete_change {
                            self.acked.removed_readings.entry(what.clone()).or_default().push(change);
                        }
                    }
                    self.acked.range_deletes.0 += 1;
                    self.acked.range_deletes.1 += held.len();
                }
                Effect::None => {}
            }
            for link in self.nodes[node].links.values_mut() {
                link.session.handle_store_changed();
            }
            return true;
        }
        false
    }

    /// An `ALTER TABLE events`, chosen by the simulated time (not the rng, so every seed's
    /// schedule is what it was before): in each 10-second slot, add a column that nodes
    /// apart add alike (one column) and that comes back after a drop (a new column); rename
    /// the `what` column to a name of this node's (nodes apart conflict); or drop the
    /// first added column (racing renames, adds and inserts). Refusals (the column
    /// exists, is gone) are ordinary outcomes.
    fn alter_events(&mut self, node: usize) -> WriteBatch {
        let slot = self.now_ms / 10_000;
        let schema = self.replica(node).catalog().table("events").map(|t| t.schema.clone());
        match slot % 3 {
            0 => WriteBatch::new()
                .add_column("events", ColumnDef::new(&format!("c{}", slot % 4), ColumnType::Text).default("d")),
            1 => WriteBatch::new().rename_column("events", &self.events_column(node), &format!("w{node}_{slot}")),
            _ => {
                let added = schema.and_then(|s| s.visible_columns().find(|c| c.added).map(|c| c.name.clone()));
                WriteBatch::new().drop_column("events", &added.unwrap_or_else(|| "c0".into()))
            }
        }
    }

    /// A `CREATE VIEW small` of this node's (over `kv`, a bound of its own) in even
    /// 10-second slots, a `DROP VIEW small` in odd ones; refusals (it exists, it does not)
    /// are ordinary outcomes.
    fn view_op(&mut self, node: usize) -> WriteBatch {
        let slot = self.now_ms / 10_000;
        let op = match slot % 2 {
            0 => WriteOp::CreateView {
                def: edgestore::catalog::ViewDef {
                    name: "small".into(),
                    query: format!("SELECT k, v FROM kv WHERE k < {}", node + 2),
                    columns: Vec::new(),
                },
                if_not_exists: false,
            },
            _ => WriteOp::DropView { name: "small".into(), if_exists: false },
        };
        WriteBatch { ops: vec![op] }
    }

    /// The current name of `events`' `what` column on `node` (renamed by `alter_events`).
    fn events_column(&mut self, node: usize) -> String {
        let table = self.replica(node).catalog().table("events").cloned();
        table.map_or_else(|| "what".to_string(), |t| t.schema.columns[2].name.clone())
    }

    /// Whether `node` holds a row of `tags` with `tag` (false before it has the table).
    fn holds_msg(&mut self, node: usize, msg: &str) -> bool {
        let snapshot = self.replica(node).snapshot().expect("snapshot");
        snapshot.get("msgs", &[Value::from(msg)]).is_ok_and(|row| row.is_some())
    }

    fn holds_tag(&mut self, node: usize, tag: &str) -> bool {
        let snapshot = self.replica(node).snapshot().expect("snapshot");
        snapshot.index_lookup(TAGS_INDEX, &[Value::from(tag)]).is_ok_and(|rows| !rows.is_empty())
    }

    fn crash_and_restart(&mut self) {
        let node = self.rng.random_range(0..self.nodes.len());
        let peers: Vec<usize> = self.nodes[node].links.keys().copied().collect();
        self.nodes[node].links.clear();
        self.nodes[node].replica = None;
        for peer in peers {
            // The peer notices through its idle timeout; drop its session now to keep
            // the schedule short, as a reset connection would.
            self.nodes[peer].links.remove(&node);
        }
        let reopened = Replica::open(&self.nodes[node].path, self.nodes[node].id).expect("reopen after crash");
        self.nodes[node].replica = Some(reopened);
        self.nodes[node].horizon = None;
    }

    /// Advances virtual time to the next event (a frame, a timer or the next step).
    fn step_until(&mut self, until_ms: u64) {
        self.connect_ready_links();
        self.flush();
        let next_frame = self.network.peek().map(|f| f.deliver_at.0 .0);
        let next_timer =
            self.nodes.iter().flat_map(|n| n.links.values().filter_map(|l| l.session.poll_timeout())).min();
        let next_retry =
            self.nodes.iter().flat_map(|n| n.retry_at.values().copied()).filter(|&t| t > self.now_ms).min();
        let next = [next_frame, next_timer, next_retry, Some(until_ms)].into_iter().flatten().min().expect("until");
        let advanced = next > self.now_ms;
        self.now_ms = next.max(self.now_ms);
        let mut delivered = 0;
        while self.network.peek().is_some_and(|f| f.deliver_at.0 .0 <= self.now_ms) {
            let frame = self.network.pop().expect("peeked");
            self.deliver(frame);
            delivered += 1;
        }
        if !advanced && delivered == 0 {
            self.fail_livelock();
        }
        let now = self.now_ms;
        for node in &mut self.nodes {
            for link in node.links.values_mut() {
                link.session.handle_timeout(now);
            }
        }
        self.flush();
        self.check_horizons();
        if self.compact {
            self.compact_logs();
        }
    }

    /// The safety invariant of the causal-stability horizon: what node `n` counts as
    /// stable, every node holds (every node of a schedule is a live member, but a joining
    /// one, and one away past the peer horizon, which both sides may have passed, and one
    /// `n` itself has not heard of within the peer horizon); and
    /// `h_n` only grows while `n` runs (after a restart it may start lower: it is persisted with
    /// the next write of held vectors).
    fn check_horizons(&mut self) {
        let (now, seed) = (self.now_ms, self.seed);
        self.end_joins(now);
        self.end_away(now);
        for n in 0..self.nodes.len() {
            let Some(replica) = self.nodes[n].replica.as_ref() else { continue };
            let horizon = replica.horizon(now, self.peer_horizon_ms);
            let h = horizon.vector.clone();
            self.update_passed(n, &horizon);
            for (m, other) in self.nodes.iter().enumerate() {
                let exempt = self.nodes[m].joining
                    || self.nodes[m].away
                    || self.nodes[n].away
                    || self.nodes[n].passed.contains(&m);
                let Some(other) = other.replica.as_ref().filter(|_| !exempt) else { continue };
                assert!(
                    other.version_vector().dominates(&h),
                    "seed {seed}: at {now} ms node {n}'s horizon {h:?} is above node {m}'s vector {:?}",
                    other.version_vector()
                );
            }
            if let Some(last) = &self.nodes[n].horizon {
                assert!(h.dominates(last), "seed {seed}: at {now} ms node {n}'s horizon fell from {last:?} to {h:?}");
            }
            self.nodes[n].horizon = Some(h);
        }
    }

    /// Once converged and idle: every node's horizon is the common version vector.
    fn assert_horizons_reached(&self) {
        for (n, node) in self.nodes.iter().enumerate() {
            let replica = node.replica.as_ref().expect("up");
            let h = replica.horizon(self.now_ms, self.peer_horizon_ms);
            assert_eq!(
                &h.vector,
                replica.version_vector(),
                "seed {}: node {n}'s horizon is not the common vector once idle (waiting for {:?})",
                self.seed,
                h.waiting_for
            );
        }
    }

    /// One bounded compaction step on every node, up to its own causal-stability horizon
    /// (what the daemon compacts to). Then no floor a step raised may be above any node's
    /// vector: nothing compacted is still needed somewhere (but by a joining node, or by a
    /// node away past the peer horizon — flagged so, or unheard of by the compacting node
    /// for that long — or on it: the one side catches the other up by
    /// state transfer). A floor that installing a state transfer raised is not checked: that node's log never
    /// held the changes below it, and the others still do (or their documents do).
    /// A member `n` has not heard of for longer than the peer horizon no longer holds its
    /// horizon back (issue 10 item 4): it is passed until its vector covers `n`'s horizon
    /// and log floor again.
    fn update_passed(&mut self, n: usize, horizon: &edgestore::Horizon) {
        let floor = self.nodes[n].replica.as_ref().expect("up").log_floor().clone();
        for m in 0..self.nodes.len() {
            let id = self.nodes[m].id;
            if horizon.members.iter().any(|x| x.member == id && x.beyond_horizon) {
                self.nodes[n].passed.insert(m);
            } else if let Some(other) = self.nodes[m].replica.as_ref() {
                let vector = other.version_vector();
                if vector.dominates(&horizon.vector) && vector.dominates(&floor) {
                    self.nodes[n].passed.remove(&m);
                }
            }
        }
    }

    fn compact_logs(&mut self) {
        let (now, seed, peer_horizon_ms) = (self.now_ms, self.seed, self.peer_horizon_ms);
        let vectors: Vec<(usize, edgestore::VersionVector)> = (0..self.nodes.len())
            .filter(|&m| !self.nodes[m].away && !self.nodes[m].joining)
            .filter_map(|m| Some((m, self.nodes[m].replica.as_ref()?.version_vector().clone())))
            .collect();
        for i in 0..self.nodes.len() {
            let away = self.nodes[i].away;
            let Some(replica) = self.nodes[i].replica.as_mut() else { continue };
            let horizon = replica.horizon(now, peer_horizon_ms).vector;
            let before = replica.log_floor().clone();
            let report = replica.compact_log_step(&horizon, COMPACT_STEP_ENTRIES).expect("compaction");
            self.compacted += report.entries_removed;
            // The daemon's other background step: documents with a tail saved whole.
            self.docs_saved += replica.save_docs_step(COMPACT_STEP_ENTRIES).expect("document save").docs_saved;
            let raised: VersionVector = report.floor.iter().filter(|&(o, floor)| floor > before.seq(o)).collect();
            // Not checked against a member this node no longer waits for (beyond its peer
            // horizon): that one catches up by state transfer.
            let passed = &self.nodes[i].passed;
            let waited_for = |m: &usize| !passed.contains(m);
            for (m, vector) in vectors.iter().filter(|(m, _)| !away && waited_for(m)) {
                assert!(
                    vector.dominates(&raised),
                    "seed {seed}: at {now} ms node {i} compacted its log above node {m}'s vector"
                );
            }
        }
    }

    /// A step that neither delivered a frame nor moved time forward: some session keeps
    /// asking to be woken at a time already handled (its deadline is never consumed), so
    /// virtual time would stop here for ever.
    fn fail_livelock(&self) -> ! {
        let stuck: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.links.iter().map(move |(peer, link)| (i, *peer, &link.session)))
            .filter(|(_, _, session)| session.poll_timeout().is_some_and(|t| t <= self.now_ms))
            .map(|(i, peer, session)| {
                let state = if session.is_established() { "established" } else { "awaiting Hello" };
                format!("node {i} -> {peer} ({state}) wants a wake-up at {:?}", session.poll_timeout())
            })
            .collect();
        panic!("seed {}: livelock at {} ms (virtual time cannot advance): {stuck:?}", self.seed, self.now_ms);
    }

    fn run_for(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.step_until(end);
        }
    }

    /// Whether some node's log floor is above what the away node `away` holds (so it must
    /// catch up by state transfer). Every other node must count it beyond its horizon.
    fn compacted_past_away(&self, away: usize) -> bool {
        let away_id = self.nodes[away].id;
        let away_vector = self.nodes[away].replica.as_ref().expect("up").version_vector();
        let mut passed = false;
        for (n, node) in self.nodes.iter().enumerate().filter(|&(n, _)| n != away) {
            let replica = node.replica.as_ref().expect("up");
            let horizon = replica.horizon(self.now_ms, self.peer_horizon_ms);
            let member = horizon.members.iter().find(|m| m.member == away_id).expect("the away node is a member");
            assert!(member.beyond_horizon, "seed {}: node {n} still counts the away node {away}", self.seed);
            passed |= replica.log_floor().iter().any(|(origin, floor)| floor > away_vector.seq(origin));
        }
        passed
    }

    /// Each node's vector, log floor and links (established, closed, in flight, transfer,
    /// peer vector), its retry times, and the frames in flight: what a failed convergence
    /// assertion prints.
    fn describe(&self) -> String {
        let mut out = format!("at {} ms, {} frames in flight", self.now_ms, self.network.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(replica) = node.replica.as_ref() else {
                out += &format!("\n  node {i}: down");
                continue;
            };
            out += &format!(
                "\n  node {i}: vector {:?}, floor {:?}, joining {}",
                replica.version_vector(),
                replica.log_floor(),
                node.joining
            );
            for (peer, link) in &node.links {
                out += &format!(
                    "\n    link {peer}: established {}, closed {}, in flight {}, transfer {:?}, peer vector {:?}",
                    link.session.is_established(),
                    link.session.is_closed(),
                    link.session.in_flight(),
                    link.session.transfer_status(),
                    link.session.peer_vector()
                );
            }
            if !node.retry_at.is_empty() {
                out += &format!("\n    retry at {:?}", node.retry_at);
            }
        }
        out
    }

    fn converged(&self) -> bool {
        let first = self.nodes[0].replica.as_ref().expect("up").version_vector();
        self.network.is_empty() && self.nodes.iter().all(|n| n.replica.as_ref().expect("up").version_vector() == first)
    }
}

enum Effect {
    Event,
    Reading(String),
    /// An insert into `msgs` under this key.
    Msg(String),
    /// A `CREATE VIEW` or `DROP VIEW` of `small`.
    View,
    /// A range delete of `readings`, and the rows the node held in its range.
    DeleteReadings(Vec<String>),
    Tag(i64, String),
    Row(i64, String),
    Increment(i64, i64),
    Alter,
    None,
}

/// The fault pattern of one schedule.
#[derive(Clone, Copy, Debug)]
enum Partition {
    /// One node cut off from all others.
    Isolate(usize),
    /// Frames from one node to another are lost, the other way works.
    OneWay(usize, usize),
    /// Two groups that only one bridge node connects.
    Bridge(usize),
    /// A node's links go down and up repeatedly.
    Flapping(usize),
}

fn apply_partition(sim: &mut Sim, partition: Partition, phase: u64) {
    let n = sim.nodes.len();
    sim.cut.clear();
    match partition {
        Partition::Isolate(x) => {
            for other in (0..n).filter(|&o| o != x) {
                sim.cut.insert((x, other));
                sim.cut.insert((other, x));
            }
        }
        Partition::OneWay(a, b) => {
            sim.cut.insert((a, b));
        }
        Partition::Bridge(bridge) => {
            // Nodes left of the bridge never talk to nodes right of it.
            for a in (0..n).filter(|&a| a < bridge) {
                for b in (0..n).filter(|&b| b > bridge) {
                    sim.cut.insert((a, b));
                    sim.cut.insert((b, a));
                }
            }
        }
        Partition::Flapping(x) if phase.is_multiple_of(2) => apply_partition(sim, Partition::Isolate(x), 0),
        Partition::Flapping(_) => {}
    }
}

struct Outcome {
    heal_to_converged_ms: u64,
    writes: usize,
    /// Log entries compacted away, over all nodes.
    compacted: u64,
    /// Documents saved whole by the background save step, over all nodes.
    docs_saved: u64,
    /// Sessions closed because the peer was below the log floor.
    below_floor_closes: u64,
    /// Unique conflicts (tags taken concurrently) at the end, all checked.
    unique_conflicts: usize,
    /// Acknowledged `ALTER TABLE`s, and those that lost to concurrent ones at the end.
    alters: (usize, usize),
    /// Acknowledged rows of the append-only `readings`, all checked.
    readings: usize,
    /// Acknowledged range deletes of `readings`, and the rows they removed.
    range_deletes: (usize, usize),
    /// Acknowledged rows of the keyed `msgs`, and the keys written on nodes apart.
    msgs: (usize, usize),
    /// Acknowledged `CREATE VIEW`s and `DROP VIEW`s.
    views: usize,
}

fn run_schedule(seed: u64) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0FFEE);
    let node_count = rng.random_range(3..=5);
    let mut sim = Sim::new(seed, node_count);
    let partition = match rng.random_range(0..4) {
        0 => Partition::Isolate(rng.random_range(0..node_count)),
        1 => {
            let a = rng.random_range(0..node_count);
            Partition::OneWay(a, (a + 1) % node_count)
        }
        2 => Partition::Bridge(rng.random_range(1..node_count - 1)),
        _ => Partition::Flapping(rng.random_range(0..node_count)),
    };
    let faults = Faults {
        drop: rng.random_range(0.0..0.05),
        duplicate: rng.random_range(0.0..0.05),
        jitter_ms: rng.random_range(0..20),
    };
    // Calm start, then faulty phases with writes everywhere, then heal.
    sim.run_for(2_000);
    sim.faults = faults;
    for phase in 0..6 {
        apply_partition(&mut sim, partition, phase);
        for _ in 0..rng.random_range(5..15) {
            sim.local_write();
            let pause = rng.random_range(10..400);
            sim.run_for(pause);
        }
        if rng.random_bool(0.3) {
            sim.crash_and_restart();
        }
    }
    sim.cut.clear();
    sim.faults = CALM;
    let healed_at = sim.now_ms;
    while !sim.converged() {
        assert!(
            sim.now_ms - healed_at <= CONVERGENCE_BOUND_MS,
            "seed {seed}: no convergence {CONVERGENCE_BOUND_MS} ms after heal ({partition:?}, {faults:?})"
        );
        sim.run_for(100);
    }
    let heal_to_converged_ms = sim.now_ms - healed_at;
    let checked = check_state(&sim, seed);
    assert!(sim.compacted > 0, "seed {seed}: compaction never ran");
    // Steady state: once in-flight redundant relays (a peer's view of what another holds
    // can lag; duplicates are harmless) have drained, no sync data moves — only keepalives
    // and the handshakes of links still reconnecting.
    sim.run_for(5_000);
    sim.data_frames = 0;
    sim.repair_frames = 0;
    sim.run_for(30_000);
    assert_eq!(sim.data_frames, 0, "seed {seed}: sync data crossed a converged, idle mesh");
    assert_eq!(sim.repair_frames, 0, "seed {seed}: anti-entropy found divergence in a converged mesh");
    sim.assert_horizons_reached();
    Outcome {
        heal_to_converged_ms,
        writes: sim.acked.rows.len()
            + sim.acked.increments.len()
            + sim.acked.events
            + sim.acked.tags.len()
            + sim.acked.readings.len()
            + sim.acked.msgs.values().sum::<usize>(),
        unique_conflicts: checked.unique_conflicts,
        msgs: (sim.acked.msgs.values().sum(), checked.msg_duplicates),
        views: sim.acked.views,
        alters: (sim.acked.alters, lost_alters(&sim)),
        readings: sim.acked.readings.len(),
        range_deletes: sim.acked.range_deletes,
        compacted: sim.compacted,
        docs_saved: sim.docs_saved,
        below_floor_closes: sim.below_floor_closes,
    }
}

/// Checks the converged state against what was acknowledged; returns the conflicts it
/// holds as expected.
fn check_state(sim: &Sim, seed: u64) -> Checked {
    let reference = sim.nodes[0].replica.as_ref().expect("up");
    let digest = reference.state_digest().unwrap();
    let rows: Vec<Vec<Value>> = reference.snapshot().unwrap().scan("kv").unwrap().map(Result::unwrap).collect();
    for (i, node) in sim.nodes.iter().enumerate() {
        let replica = node.replica.as_ref().expect("up");
        assert_eq!(replica.state_digest().unwrap(), digest, "seed {seed}: node {i} digest differs");
        let problems = replica.check_integrity().unwrap();
        assert!(problems.is_empty(), "seed {seed}: node {i}: {problems:?}");
    }
    let by_key: BTreeMap<i64, &Vec<Value>> = rows.iter().map(|r| (int(&r[0]), r)).collect();
    for (key, value) in &sim.acked.rows {
        let row = by_key.get(key).unwrap_or_else(|| panic!("seed {seed}: acknowledged row {key} lost"));
        assert_eq!(row[1], Value::from(value.as_str()), "seed {seed}: row {key} value");
    }
    for (key, sum) in &sim.acked.increments {
        assert_eq!(int(&by_key[key][2]), *sum, "seed {seed}: counter {key} lost increments");
    }
    // Identical rows from every node: as many as were acknowledged, none merged into another.
    let events: Vec<Vec<Value>> = reference.snapshot().unwrap().scan("events").unwrap().map(Result::unwrap).collect();
    assert_eq!(events.len(), sim.acked.events, "seed {seed}: key-less rows lost or merged");
    assert!(events.iter().all(|row| row[2] == Value::from("tick")), "seed {seed}: key-less row values");
    check_readings(sim, seed);
    check_view(sim, seed);
    Checked { unique_conflicts: check_tags(sim, seed), msg_duplicates: check_msgs(sim, seed) }
}

/// The view `small` is the same on every node (there or not, one winning definition),
/// and where it exists it reads the same rows everywhere, through SQL.
fn check_view(sim: &Sim, seed: u64) {
    let read = |replica: &Replica| {
        let view = replica.catalog().view("small").map(|v| v.def.clone());
        let rows = view.as_ref().map(|_| {
            let snapshot = replica.snapshot().unwrap();
            let result = edgestore::sql::query(snapshot, "SELECT k, v FROM small ORDER BY k", &[]).unwrap();
            result.collect_rows().unwrap()
        });
        (view, rows)
    };
    let reference = read(sim.nodes[0].replica.as_ref().expect("up"));
    for (i, node) in sim.nodes.iter().enumerate().skip(1) {
        assert_eq!(read(node.replica.as_ref().expect("up")), reference, "seed {seed}: node {i}'s view differs");
    }
}

/// What [`check_state`] found as expected, for the sweep's summary.
struct Checked {
    /// Tags taken on nodes apart, listed as unique conflicts.
    unique_conflicts: usize,
    /// `msgs` keys written on nodes apart, listed as duplicates.
    msg_duplicates: usize,
}

/// The keyed `msgs` show each acknowledged key exactly once, and a key that several nodes
/// wrote (apart: a node that held it refused it) is a `duplicate` conflict of exactly that
/// many rows, on the reference node (the others have the same rows: digests are equal).
/// Returns how many keys were written more than once.
fn check_msgs(sim: &Sim, seed: u64) -> usize {
    let reference = sim.nodes[0].replica.as_ref().expect("up");
    let snapshot = reference.snapshot().unwrap();
    let shown: Vec<String> = snapshot
        .scan("msgs")
        .unwrap()
        .map(|row| match &row.unwrap()[1] {
            Value::Text(msg) => msg.clone(),
            other => panic!("seed {seed}: a msg key, got {other:?}"),
        })
        .collect();
    let distinct: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(distinct.len(), shown.len(), "seed {seed}: a deduplication key shown twice");
    let acked: BTreeSet<&String> = sim.acked.msgs.keys().collect();
    assert_eq!(distinct, acked, "seed {seed}: keyed append-only rows lost or invented");
    let duplicates: BTreeMap<String, usize> = snapshot
        .duplicate_conflicts()
        .unwrap()
        .into_iter()
        .map(|c| match c.value.as_slice() {
            [Value::Text(msg)] => (msg.clone(), c.rows.len()),
            other => panic!("seed {seed}: a msg key, got {other:?}"),
        })
        .collect();
    let expected: BTreeMap<String, usize> =
        sim.acked.msgs.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (k.clone(), *n)).collect();
    assert_eq!(duplicates, expected, "seed {seed}: duplicates differ from the keys written on nodes apart");
    expected.len()
}

/// The append-only `readings` hold exactly the acknowledged rows: none lost, none twice
/// (a block sent by transfer and again with its envelope is one row).
fn check_readings(sim: &Sim, seed: u64) {
    let reference = sim.nodes[0].replica.as_ref().expect("up");
    let stored: Vec<Value> =
        reference.snapshot().unwrap().scan("readings").unwrap().map(|r| r.unwrap()[1].clone()).collect();
    let acked: Vec<Value> = sim.acked.readings.iter().map(|w| Value::from(w.as_str())).collect();
    let mut sorted = stored.clone();
    sorted.sort_by_key(|v| format!("{v:?}"));
    let mut expected = acked.clone();
    expected.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(sorted, expected, "seed {seed}: append-only rows lost or duplicated");
}

/// Every acknowledged `tags` row is kept, and the unique conflicts are exactly the tags
/// that two or more acknowledged rows took (only concurrent writes can, as each write
/// checked its own node), winner the least id, on every node. Returns how many there are.
fn check_tags(sim: &Sim, seed: u64) -> usize {
    let reference = sim.nodes[0].replica.as_ref().expect("up");
    let stored: BTreeMap<i64, Value> = reference
        .snapshot()
        .unwrap()
        .scan("tags")
        .unwrap()
        .map(Result::unwrap)
        .map(|r| (int(&r[0]), r[1].clone()))
        .collect();
    let acked: BTreeMap<i64, Value> = sim.acked.tags.iter().map(|(id, tag)| (*id, Value::from(tag.as_str()))).collect();
    assert_eq!(stored, acked, "seed {seed}: tags rows lost, or present unacknowledged");
    let mut by_tag: BTreeMap<&str, Vec<Vec<Value>>> = BTreeMap::new();
    for (id, tag) in &sim.acked.tags {
        by_tag.entry(tag.as_str()).or_default().push(vec![Value::from(*id)]);
    }
    let expected: Vec<(Vec<Value>, Vec<Vec<Value>>)> =
        by_tag.into_iter().filter(|(_, ids)| ids.len() >= 2).map(|(tag, ids)| (vec![Value::from(tag)], ids)).collect();
    for (i, node) in sim.nodes.iter().enumerate() {
        let conflicts = node.replica.as_ref().expect("up").snapshot().unwrap().unique_conflicts().unwrap();
        let got: Vec<(Vec<Value>, Vec<Vec<Value>>)> = conflicts.into_iter().map(|c| (c.value, c.keys)).collect();
        assert_eq!(got, expected, "seed {seed}: node {i} unique conflicts");
    }
    expected.len()
}

/// `ALTER`s listed as lost on node 0 (the digest check made every node's catalog equal).
fn lost_alters(sim: &Sim) -> usize {
    let catalog = sim.nodes[0].replica.as_ref().expect("up").catalog();
    catalog.live_tables().map(|t| t.conflict.as_ref().map_or(0, |c| c.alters.len())).sum()
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Integer(v) => *v,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[test]
fn partitioned_meshes_converge_without_losing_acknowledged_writes() {
    let (seeds, label): (Vec<u64>, String) = match std::env::var("EDGESTORE_SIM_SEED") {
        Ok(seed) => (vec![seed.parse().expect("EDGESTORE_SIM_SEED is a u64")], format!("seed {seed}")),
        Err(_) => {
            let count: u64 =
                std::env::var("EDGESTORE_SIM_SCHEDULES").map(|n| n.parse().expect("a number")).unwrap_or(200);
            ((0..count).map(|i| 0x51A0_0000 + i).collect(), format!("seeds 0x51A00000..+{count}"))
        }
    };
    println!("simulation: {} schedules, {label} (replay one with EDGESTORE_SIM_SEED=<seed>)", seeds.len());
    let mut worst_ms = 0;
    let (mut writes, mut compacted, mut below_floor_closes, mut docs_saved) = (0, 0, 0, 0);
    let mut unique_conflicts = 0;
    let mut alters = (0, 0);
    let mut readings = 0;
    let mut range_deletes = (0, 0);
    let mut msgs = (0, 0);
    let mut views = 0;
    let mut failed = Vec::new();
    for &seed in &seeds {
        // A failing schedule does not hide the others: a sweep reports every failing seed.
        match std::panic::catch_unwind(|| run_schedule(seed)) {
            Ok(outcome) => {
                worst_ms = worst_ms.max(outcome.heal_to_converged_ms);
                writes += outcome.writes;
                compacted += outcome.compacted;
                docs_saved += outcome.docs_saved;
                below_floor_closes += outcome.below_floor_closes;
                unique_conflicts += outcome.unique_conflicts;
                alters.0 += outcome.alters.0;
                alters.1 += outcome.alters.1;
                readings += outcome.readings;
                range_deletes.0 += outcome.range_deletes.0;
                range_deletes.1 += outcome.range_deletes.1;
                msgs.0 += outcome.msgs.0;
                msgs.1 += outcome.msgs.1;
                views += outcome.views;
            }
            Err(_) => failed.push(seed),
        }
    }
    assert!(failed.is_empty(), "{} of {} schedules failed, seeds {failed:?}", failed.len(), seeds.len());
    assert!(docs_saved > 0, "no schedule left a document tail of two changes to save");
    assert!(readings > 0, "no schedule wrote an append-only row");
    println!(
        "simulation: {} schedules converged, 0 divergence, 0 lost writes ({writes} acknowledged rows/counters checked); \
         slowest convergence after heal {worst_ms} ms simulated (bound {CONVERGENCE_BOUND_MS} ms); \
         {compacted} log entries compacted, {docs_saved} documents saved whole, \
         {below_floor_closes} sessions closed below a log floor, \
         {unique_conflicts} unique conflicts (one tag taken on nodes apart) listed as expected, \
         {} ALTER TABLEs acknowledged and {} lost to concurrent ones (listed), \
         {readings} of the rows/counters append-only rows, \
         {} range deletes acknowledged ({} rows removed, every other acknowledged row kept), \
         {} keyed append-only rows ({} keys written on nodes apart, listed as duplicates, one shown), \
         {views} CREATE/DROP VIEWs acknowledged (the view alike on every node)",
        seeds.len(),
        alters.0,
        alters.1,
        range_deletes.0,
        range_deletes.1,
        msgs.0,
        msgs.1
    );
}

/// `doc_heads_v1`-style tables whose values are bytes: documents and what is derived from
/// them (the maintained digest included; its catalog part does not change after the
/// schedule's first write). Not the log, the version vector or the catalog.
const DOC_TABLES: [&str; 6] = ["docs_v1", "doc_tail_v1", "doc_heads_v1", "rows_v1", "conflicts_v1", "digest_v1"];
/// Secondary-index entries (unit values).
const INDEX_TABLE: &str = "index_v1";

/// Key/value entries of one table.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A copy of a node's document tables.
struct DocBackup {
    tables: Vec<(&'static str, Entries)>,
    index: Vec<Vec<u8>>,
}

fn backup_documents(replica: &Replica) -> DocBackup {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    let db = replica.database();
    let txn = db.begin_read().unwrap();
    let tables = DOC_TABLES
        .iter()
        .map(|&name| {
            let table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(name)).unwrap();
            let entries =
                table.iter().unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
            (name, entries.collect())
        })
        .collect();
    let index = txn.open_table(TableDefinition::<&[u8], ()>::new(INDEX_TABLE)).unwrap();
    let index = index.iter().unwrap().map(|e| e.unwrap().0.value().to_vec()).collect();
    DocBackup { tables, index }
}

impl Sim {
    /// Stops `node`, puts its document tables back to `backup` (its log and version vector
    /// stay: a partial restore, or a storage bug that lost document changes), restarts it.
    fn restore_documents(&mut self, node: usize, backup: &DocBackup) {
        use redb::{ReadableTable, TableDefinition};
        let peers: Vec<usize> = self.nodes[node].links.keys().copied().collect();
        self.nodes[node].links.clear();
        self.nodes[node].replica = None;
        for peer in peers {
            self.nodes[peer].links.remove(&node);
        }
        {
            let db = redb::Database::open(&self.nodes[node].path).unwrap();
            let txn = db.begin_write().unwrap();
            for (name, entries) in &backup.tables {
                let mut table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(name)).unwrap();
                let keys: Vec<Vec<u8>> = table.iter().unwrap().map(|e| e.unwrap().0.value().to_vec()).collect();
                for key in keys {
                    table.remove(key.as_slice()).unwrap();
                }
                for (key, value) in entries {
                    table.insert(key.as_slice(), value.as_slice()).unwrap();
                }
            }
            let mut index = txn.open_table(TableDefinition::<&[u8], ()>::new(INDEX_TABLE)).unwrap();
            let keys: Vec<Vec<u8>> = index.iter().unwrap().map(|e| e.unwrap().0.value().to_vec()).collect();
            for key in keys {
                index.remove(key.as_slice()).unwrap();
            }
            for key in &backup.index {
                index.insert(key.as_slice(), ()).unwrap();
            }
            drop(index);
            txn.commit().unwrap();
        }
        let reopened = Replica::open(&self.nodes[node].path, self.nodes[node].id).expect("reopen after restore");
        self.nodes[node].replica = Some(reopened);
        self.nodes[node].horizon = None;
    }

    fn run_until_vectors_converge(&mut self) {
        let start = self.now_ms;
        while !self.converged() {
            assert!(self.now_ms - start <= CONVERGENCE_BOUND_MS, "no convergence");
            self.run_for(100);
        }
    }

    fn heads_trees_equal(&self) -> bool {
        let tree = |i: usize| self.nodes[i].replica.as_ref().expect("up").heads_tree().unwrap();
        let first = tree(0);
        (1..self.nodes.len()).all(|i| tree(i) == first)
    }
}

/// Documents that differ between two replicas (by heads), both directions.
fn divergent_docs(a: &Replica, b: &Replica) -> usize {
    let (a, _) = a.heads_in_range(0, 0, usize::MAX).unwrap();
    let (b, _) = b.heads_in_range(0, 0, usize::MAX).unwrap();
    let a: BTreeSet<_> = a.into_iter().map(|d| (d.key, d.heads)).collect();
    let b: BTreeSet<_> = b.into_iter().map(|d| (d.key, d.heads)).collect();
    a.symmetric_difference(&b).map(|(key, _)| key).collect::<BTreeSet<_>>().len()
}

/// Equal version vectors, different documents: node 1's document tables are put back to
/// an old copy while its log and vector stay, so delta sync has nothing to send. Anti-
/// entropy finds the divergent documents and repairs them from the peers' documents; then
/// every node has the same digest, no acknowledged write is lost, and the idle mesh sends
/// nothing but keepalives (and unanswered root digests in their slots). Run with the log
/// intact and with compaction on every step (the restore may then have dropped changes
/// whose log entries are gone, which only anti-entropy's heads comparison can see).
#[test]
fn anti_entropy_repairs_documents_restored_from_an_old_backup() {
    let cases = [0xAE00_0001u64, 0xAE00_0002, 0xAE00_0003].into_iter().flat_map(|s| [(s, false), (s, true)]);
    for (seed, compact) in cases {
        println!("anti-entropy restore scenario: seed {seed:#x}, compaction {compact}");
        let mut sim = Sim::new(seed, 3);
        sim.compact = compact;
        // The restore copies document tables, not the catalog, which must not change.
        sim.alters = false;
        sim.run_for(2_000);
        for _ in 0..10 {
            sim.local_write();
            sim.run_for(50);
        }
        sim.run_until_vectors_converge();
        let backup = backup_documents(sim.nodes[1].replica.as_ref().unwrap());
        for _ in 0..40 {
            sim.local_write();
            sim.run_for(50);
        }
        sim.run_until_vectors_converge();
        sim.restore_documents(1, &backup);
        let (n0, n1) = (sim.nodes[0].replica.as_ref().unwrap(), sim.nodes[1].replica.as_ref().unwrap());
        assert_eq!(n0.version_vector(), n1.version_vector(), "seed {seed}: vectors equal after the restore");
        let divergent = divergent_docs(n0, n1);
        assert!(divergent > 0, "seed {seed}: the restore made documents diverge");
        if !compact {
            assert!(!n1.check_integrity().unwrap().is_empty(), "seed {seed}: logged changes missing from documents");
        }
        let (frames_before, bytes_before) = sim.anti_entropy;
        let restored_at = sim.now_ms;
        let bound_ms = 3 * sim.config.anti_entropy_interval_ms;
        while !(sim.converged() && sim.heads_trees_equal()) {
            assert!(sim.now_ms - restored_at <= bound_ms, "seed {seed}: not repaired within {bound_ms} ms");
            sim.run_for(100);
        }
        check_state(&sim, seed);
        println!(
            "  {divergent} divergent documents repaired {} ms (simulated) after the restore; {} anti-entropy frames, \
             {} bytes",
            sim.now_ms - restored_at,
            sim.anti_entropy.0 - frames_before,
            sim.anti_entropy.1 - bytes_before
        );
        sim.run_for(5_000);
        sim.data_frames = 0;
        sim.repair_frames = 0;
        sim.run_for(30_000);
        assert_eq!((sim.data_frames, sim.repair_frames), (0, 0), "seed {seed}: traffic in a repaired, idle mesh");
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let digest = |seed| {
        let mut sim = Sim::new(seed, 3);
        sim.faults = Faults { drop: 0.02, duplicate: 0.02, jitter_ms: 10 };
        for _ in 0..20 {
            sim.local_write();
            sim.run_for(150);
        }
        (
            sim.now_ms,
            sim.sent_count,
            sim.acked.rows.len(),
            sim.nodes[2].replica.as_ref().unwrap().version_vector().clone(),
        )
    };
    assert_eq!(digest(42), digest(42));
}

/// Regression: two sessions each lost the other's `Hello` and sat in `AwaitingHello`;
/// `poll_timeout` returned the keepalive deadline, which nothing consumes before the
/// handshake (no `Ping` may precede `Hello`), so virtual time stopped at 11,653 ms.
/// Fixed by returning only the idle deadline before the handshake; the simulator now fails
/// any step that makes no progress.
#[test]
fn regression_awaiting_hello_keepalive_livelock_seed_1369441181() {
    let outcome = run_schedule(1_369_441_181);
    assert!(outcome.heal_to_converged_ms <= CONVERGENCE_BOUND_MS);
}

/// Regression: the last `Changes` batch of a burst was lost and pings kept the session
/// alive, so the isolated node never caught up. Fixed by `SessionConfig::ack_timeout_ms`.
#[test]
fn regression_lost_last_batch_is_resent_after_ack_timeout() {
    let outcome = run_schedule(1_369_440_284);
    assert!(outcome.heal_to_converged_ms <= CONVERGENCE_BOUND_MS);
}

/// A store whose `apply_remote` fails as a full disk would: everything else is the real
/// replica.
struct FailingStore(Replica);

impl sync_protocol::SyncStore for FailingStore {
    fn version_vector(&self) -> edgestore::VersionVector {
        self.0.version_vector().clone()
    }
    fn log_floor(&self) -> edgestore::VersionVector {
        self.0.log_floor().clone()
    }
    fn changes_since(
        &self,
        vector: &edgestore::VersionVector,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<edgestore::ChangeBatch, edgestore::StorageError> {
        self.0.changes_since(vector, changes_max, bytes_max)
    }
    fn apply_remote(&mut self, _: Vec<Vec<u8>>) -> Result<edgestore::ApplyReport, edgestore::ApplyError> {
        let io = std::io::Error::other("no space left on device");
        let cause = edgestore::StorageError::Redb(redb::Error::Io(io));
        Err(edgestore::ApplyError::Storage(edgestore::StorageError::GroupCommitFailed(std::sync::Arc::new(cause))))
    }
    fn heads_tree(&self) -> Result<edgestore::HeadsTree, edgestore::StorageError> {
        self.0.heads_tree()
    }
    fn heads_in_range(
        &self,
        depth: u8,
        prefix: u32,
        docs_max: usize,
    ) -> Result<(Vec<edgestore::DocHeads>, bool), edgestore::StorageError> {
        self.0.heads_in_range(depth, prefix, docs_max)
    }
    fn doc_changes_missing(&self, key: &[u8], heads: &[[u8; 32]]) -> Result<Vec<Vec<u8>>, edgestore::StorageError> {
        self.0.doc_changes_missing(key, heads)
    }
    fn repair_docs(
        &mut self,
        docs: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    ) -> Result<edgestore::RepairReport, edgestore::ApplyError> {
        self.0.repair_docs(docs)
    }
    fn record_held(
        &mut self,
        from: NodeId,
        claims: &[edgestore::HeldClaim],
        now_ms: u64,
    ) -> Result<bool, edgestore::StorageError> {
        self.0.record_held(from, claims, now_ms)
    }
    fn held_since(&self, generation: u64, entries_max: usize, now_ms: u64) -> edgestore::HeldPage {
        self.0.held_since(generation, entries_max, now_ms)
    }
    fn transfer_progress(&self) -> Result<Option<edgestore::TransferProgress>, edgestore::StorageError> {
        self.0.transfer_progress()
    }
    fn claim_transfer(&mut self, donor: NodeId, now_ms: u64, lease_ms: u64) -> bool {
        self.0.claim_transfer(donor, now_ms, lease_ms)
    }
    fn export_transfer(
        &self,
        after: &[u8],
        docs_max: usize,
        bytes_max: usize,
    ) -> Result<edgestore::TransferBatch, edgestore::StorageError> {
        self.0.export_transfer(after, docs_max, bytes_max)
    }
    fn import_transfer(
        &mut self,
        donor: NodeId,
        batch: edgestore::TransferBatch,
    ) -> Result<edgestore::TransferReport, edgestore::ApplyError> {
        self.0.import_transfer(donor, batch)
    }
}

/// CONTRACTS.md § C: a store failure while applying a peer's changes is this node's
/// failure. The session closes with `Internal` (not `ChangeRejected`), its error says it
/// is local, nothing was applied, and the peer sees a close by its peer, not a protocol
/// error of its own; its changes wait for the next session.
#[test]
fn a_store_failure_closes_the_session_as_internal_not_as_the_peers_fault() {
    let dir = temp_dir();
    let (a_id, b_id) = (NodeId::from_public_key(b"store-fail-a"), NodeId::from_public_key(b"store-fail-b"));
    let mut a = Replica::open(dir.path().join("a.redb"), a_id).unwrap();
    let mut b = FailingStore(Replica::open(dir.path().join("b.redb"), b_id).unwrap());
    a.write(WriteBatch::new().create_table(table()), 0).unwrap();
    let config = SessionConfig::new(ClusterId([7; 16]));
    let mut sa = Session::new(config.clone(), a_id, b_id, a.version_vector(), 0);
    let mut sb = Session::new(config, b_id, a_id, b.0.version_vector(), 0);
    let mut b_closes = Vec::new();
    for now in 1..10 {
        while let Some(bytes) = sa.poll_transmit(now, &a) {
            let _ = sb.handle_frame(now, &bytes, &mut b);
        }
        while let Some(bytes) = sb.poll_transmit(now, &b) {
            if let Ok(Frame::Close { code, .. }) = Frame::decode(&bytes) {
                b_closes.push(code);
            }
            let _ = sa.handle_frame(now, &bytes, &mut a);
        }
    }
    let b_error = std::iter::from_fn(|| sb.poll_event()).find_map(|e| match e {
        Event::Closed { error } => error,
        _ => None,
    });
    let b_error = b_error.expect("the failing side closed with an error");
    assert!(matches!(b_error, sync_protocol::ProtocolError::Storage(_)), "{b_error:?}");
    assert!(b_error.is_local(), "a store failure is this node's, not the peer's");
    assert_eq!(b_closes, vec![sync_protocol::CloseCode::Internal]);
    assert_eq!(b.0.version_vector().total_changes(), 0, "nothing of the batch was applied");
    let a_error = std::iter::from_fn(|| sa.poll_event()).find_map(|e| match e {
        Event::Closed { error } => error,
        _ => None,
    });
    match a_error {
        Some(sync_protocol::ProtocolError::ClosedByPeer { code: sync_protocol::CloseCode::Internal, .. }) => {}
        other => panic!("the peer sees its peer close with Internal, got {other:?}"),
    }
    assert!(sa.is_closed() && sb.is_closed());
}

impl Sim {
    /// A joining node becomes an ordinary node for the horizon invariant once every
    /// running node counts it as a member and its vector is at or above every horizon.
    fn end_joins(&mut self, now: u64) {
        let joining: Vec<usize> = (0..self.nodes.len()).filter(|&m| self.nodes[m].joining).collect();
        for m in joining {
            let Some(joiner) = self.nodes[m].replica.as_ref() else { continue };
            let id = self.nodes[m].id;
            let caught_up = self.nodes.iter().enumerate().filter(|&(n, _)| n != m).all(|(_, node)| {
                node.replica.as_ref().is_none_or(|r| {
                    let horizon = r.horizon(now, self.peer_horizon_ms);
                    horizon.members.iter().any(|member| member.member == id)
                        && joiner.version_vector().dominates(&horizon.vector)
                })
            });
            if caught_up {
                self.nodes[m].joining = false;
            }
        }
    }

    /// Adds a node; with `donor`, its store first receives every document of `donor`'s by
    /// a replica-level state transfer, so it joins with a log floor (its log lacks
    /// everything below the vector it installed), as a node that joined a compacted mesh.
    fn add_node(&mut self, donor: Option<usize>) -> usize {
        let i = self.nodes.len();
        let mut node = new_node(&self._dir, i);
        if let Some(donor) = donor {
            let from = self.nodes[donor].replica.as_ref().expect("donor up");
            let to = node.replica.as_mut().expect("just opened");
            to.transfer_from(from).expect("transfer");
            assert_eq!(to.log_floor(), from.version_vector());
        }
        node.joining = true;
        self.nodes.push(node);
        i
    }

    /// Writes and pauses for `count` steps, with a crash now and then.
    fn busy_phase(&mut self, rng: &mut ChaCha8Rng, count: usize) {
        for _ in 0..count {
            self.local_write();
            let pause = rng.random_range(10..300);
            self.run_for(pause);
        }
        if rng.random_bool(0.4) {
            self.crash_and_restart();
        }
    }
}

/// A new node joins a mesh in which two members have log floors (they joined by state
/// transfer): it gets documents from them and log replay from the others at once, under
/// drops, duplicates, reordering, partitions of the new node and crashes (an interrupted
/// transfer resumes from the persisted cursor, possibly with another donor). The mesh
/// converges within the bound, no acknowledged write is lost, and the idle mesh moves no
/// sync data.
fn run_join_schedule(seed: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7EA5);
    let mut sim = Sim::new(seed, 2);
    // Small batches, so the transfer takes many of them and a crash can interrupt it.
    sim.config.batch_bytes_max = 2 * 1024;
    sim.run_for(1_000);
    for _ in 0..3 {
        sim.busy_phase(&mut rng, 20);
    }
    sim.run_until_vectors_converge();
    sim.add_node(Some(0));
    sim.add_node(Some(1));
    sim.faults = Faults {
        drop: rng.random_range(0.0..0.03),
        duplicate: rng.random_range(0.0..0.03),
        jitter_ms: rng.random_range(0..20),
    };
    for _ in 0..2 {
        sim.busy_phase(&mut rng, 15);
    }
    let joining = sim.add_node(None);
    for phase in 0..4 {
        let partition = if phase % 2 == 1 { Partition::Isolate(joining) } else { Partition::OneWay(0, 1) };
        apply_partition(&mut sim, partition, 0);
        sim.busy_phase(&mut rng, 10);
    }
    sim.cut.clear();
    sim.faults = CALM;
    let healed_at = sim.now_ms;
    while !sim.converged() {
        assert!(
            sim.now_ms - healed_at <= CONVERGENCE_BOUND_MS,
            "seed {seed}: no convergence after heal: {}",
            sim.describe()
        );
        sim.run_for(100);
    }
    check_state(&sim, seed);
    let transferred = sim.transfer_batches;
    sim.run_for(5_000);
    sim.data_frames = 0;
    sim.run_for(30_000);
    assert_eq!(sim.data_frames, 0, "seed {seed}: sync data crossed a converged, idle mesh");
    let now = sim.now_ms;
    sim.end_joins(now);
    assert!(sim.nodes.iter().all(|n| !n.joining), "seed {seed}: a joined node is a member at every horizon");
    transferred
}

#[test]
fn a_new_node_joins_a_mesh_whose_members_have_log_floors() {
    let seeds: Vec<u64> = match std::env::var("EDGESTORE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => {
            let count: u64 =
                std::env::var("EDGESTORE_SIM_JOIN_SCHEDULES").map(|n| n.parse().expect("a number")).unwrap_or(8);
            (0..count).map(|i| 0x7A00_0000 + i).collect()
        }
    };
    let mut transferred = 0;
    for seed in seeds {
        println!("join scenario: seed {seed}");
        let batches = run_join_schedule(seed);
        println!("join scenario: seed {seed}: {batches} transfer batches delivered");
        transferred += batches;
    }
    assert!(transferred > 0, "some schedule moved documents by state transfer");
}

/// Regression: a node that installed a transfer wrote to a document holding changes above
/// its vector; its change named too few envelope dependencies, a peer lacking those changes
/// refused the batch on every session, and never caught up. Fixed by parking such a change
/// until its documents hold its automerge dependencies (`apply.rs`).
#[test]
fn regression_join_change_above_the_installed_vector_seed_2046820836() {
    assert!(run_join_schedule(2_046_820_836) > 0);
}

/// The peer horizon of the away scenario: short in simulated time, so a node can be away
/// past it within a schedule.
const AWAY_PEER_HORIZON_MS: u64 = 60_000;

impl Sim {
    /// Nodes away past the peer horizon become ordinary nodes for the horizon and floor
    /// invariants once every running node counts every other as a member heard within the
    /// peer horizon, and holds every node's horizon and log floor: from then on a horizon
    /// is a minimum over members that include every node.
    fn end_away(&mut self, now: u64) {
        if !self.nodes.iter().any(|n| n.away && n.back) || self.nodes.iter().any(|n| n.replica.is_none()) {
            return;
        }
        let up: Vec<(NodeId, &Replica)> =
            self.nodes.iter().map(|n| (n.id, n.replica.as_ref().expect("every node is up"))).collect();
        let caught_up = up.iter().all(|(id, replica)| {
            let horizon = replica.horizon(now, self.peer_horizon_ms);
            let live = |other: &NodeId| horizon.members.iter().any(|m| m.member == *other && !m.beyond_horizon);
            up.iter().all(|(other_id, other)| {
                (other_id == id || live(other_id))
                    && other.version_vector().dominates(&horizon.vector)
                    && other.version_vector().dominates(replica.log_floor())
            })
        });
        if caught_up {
            for node in self.nodes.iter_mut().filter(|n| n.back) {
                node.away = false;
            }
        }
    }
}

/// What one away schedule did.
struct AwayOutcome {
    heal_to_converged_ms: u64,
    /// How long the node was cut off, in simulated ms.
    away_ms: u64,
    /// Writes the away node acknowledged while cut off.
    away_writes: usize,
    /// State-transfer batches delivered after the heal.
    transfer_batches: u64,
    /// The away node compacted some of its offline writes out of its own log (the others
    /// being beyond its horizon), so they reach the others by state transfer too.
    own_writes_compacted: bool,
}

/// A node is cut off for longer than the peer horizon (60 s here) and keeps acknowledging
/// writes (new rows, updates and increments of the shared rows) while the others write
/// too, under drops, duplicates, reordering and crashes. Once it is beyond their horizon
/// they compact their logs past what it holds, so log replay cannot catch it up; it
/// compacts its own log likewise, the others being beyond its horizon. After the heal the
/// mesh converges within the bound (by state transfer), no acknowledged write is lost —
/// the away node's included — every store is intact, the idle mesh moves no sync data,
/// and every horizon ends at the common vector.
fn run_away_schedule(seed: u64) -> AwayOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA3A7);
    let node_count = rng.random_range(3..=4);
    let mut sim = Sim::new(seed, node_count);
    sim.peer_horizon_ms = AWAY_PEER_HORIZON_MS;
    sim.run_for(1_000);
    sim.busy_phase(&mut rng, 20);
    sim.run_until_vectors_converge();
    let away = rng.random_range(0..node_count);
    sim.faults = Faults {
        drop: rng.random_range(0.0..0.03),
        duplicate: rng.random_range(0.0..0.03),
        jitter_ms: rng.random_range(0..20),
    };
    apply_partition(&mut sim, Partition::Isolate(away), 0);
    sim.nodes[away].away = true;
    let cut_at = sim.now_ms;
    let back_at = cut_at + AWAY_PEER_HORIZON_MS + rng.random_range(20_000..60_000);
    let mut away_writes = 0;
    while sim.now_ms < back_at {
        sim.local_write();
        if rng.random_bool(0.5) && sim.local_write_on(away) {
            away_writes += 1;
        }
        let pause = rng.random_range(200..1_500);
        sim.run_for(pause);
        if rng.random_bool(0.02) {
            sim.crash_and_restart();
        }
    }
    assert!(away_writes > 0, "seed {seed}: the away node acknowledged writes while cut off");
    // No more writes: the others' horizons settle while the node is still away (a node
    // restarted late re-learns what the others hold from their next held vectors first).
    // The frame faults stop here, the cut stays. The simulated network drops and reorders
    // frames *within* a connection, which the real transport (one ordered QUIC stream)
    // never does; a session that sees it closes, and under high jitter most reconnects
    // meet it again (seed 2745172380: 13 reconnects of one link in a row saw a frame
    // before the peer's Hello), so progress is only owed on a fair network.
    sim.faults = CALM;
    let settle_from = sim.now_ms;
    loop {
        sim.run_for(5_000);
        if sim.compacted_past_away(away) {
            break;
        }
        assert!(
            sim.now_ms - settle_from <= CONVERGENCE_BOUND_MS,
            "seed {seed}: no node compacted its log past what the away node {away} holds: {}",
            sim.describe()
        );
    }
    let away_ms = sim.now_ms - cut_at;
    let away_id = sim.nodes[away].id;
    let own_floor = sim.nodes[away].replica.as_ref().expect("up").log_floor().seq(away_id);
    let own_writes_compacted = sim
        .nodes
        .iter()
        .filter_map(|n| n.replica.as_ref())
        .any(|r| r.node_id() != away_id && r.version_vector().seq(away_id) < own_floor);
    sim.cut.clear();
    sim.faults = CALM;
    sim.nodes[away].back = true;
    let (healed_at, batches_before) = (sim.now_ms, sim.transfer_batches);
    while !sim.converged() {
        assert!(sim.now_ms - healed_at <= CONVERGENCE_BOUND_MS, "seed {seed}: no convergence after heal");
        sim.run_for(100);
    }
    let heal_to_converged_ms = sim.now_ms - healed_at;
    check_state(&sim, seed);
    let transfer_batches = sim.transfer_batches - batches_before;
    sim.run_for(5_000);
    sim.data_frames = 0;
    sim.repair_frames = 0;
    sim.run_for(30_000);
    assert_eq!(sim.data_frames, 0, "seed {seed}: sync data crossed a converged, idle mesh");
    assert_eq!(sim.repair_frames, 0, "seed {seed}: anti-entropy found divergence in a converged mesh");
    let now = sim.now_ms;
    sim.end_away(now);
    assert!(!sim.nodes[away].away, "seed {seed}: the returned node holds every horizon and floor, and is live");
    sim.assert_horizons_reached();
    AwayOutcome { heal_to_converged_ms, away_ms, away_writes, transfer_batches, own_writes_compacted }
}

/// Regression: a link of the away scenario never synced during the settle phase, as the
/// simulated network reordered frames within each new connection (see `run_away_schedule`).
#[test]
fn regression_away_settle_under_reordering_seed_2745172380() {
    let outcome = run_away_schedule(2_745_172_380);
    assert!(outcome.away_writes > 0);
}

/// Regression: in the away scenario's faulty phase a link between two nodes that were not
/// away failed for longer than the peer horizon (ack timeouts and frames before `Hello`,
/// artefacts of the simulated network), so one counted the other beyond its horizon and
/// passed what it held, as the design allows; the invariant checks exempted only the
/// flagged away node. They now exempt every member a node has passed until it caught up.
#[test]
fn regression_away_link_down_past_the_peer_horizon_seed_2745172705() {
    let outcome = run_away_schedule(2_745_172_705);
    assert!(outcome.away_writes > 0);
}

#[test]
fn a_node_away_past_the_peer_horizon_returns_without_losing_writes() {
    let seeds: Vec<u64> = match std::env::var("EDGESTORE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => {
            let count: u64 =
                std::env::var("EDGESTORE_SIM_AWAY_SCHEDULES").map(|n| n.parse().expect("a number")).unwrap_or(8);
            (0..count).map(|i| 0xA3A0_0000 + i).collect()
        }
    };
    println!("away scenario: {} schedules (replay one with EDGESTORE_SIM_SEED=<seed>)", seeds.len());
    let (mut transferred, mut worst_ms) = (0, 0);
    let mut failed = Vec::new();
    for &seed in &seeds {
        match std::panic::catch_unwind(|| run_away_schedule(seed)) {
            Ok(outcome) => {
                println!(
                    "away scenario: seed {seed}: away {} ms, {} writes acknowledged there (compacted out of its own \
                     log: {}), converged {} ms after heal, {} transfer batches",
                    outcome.away_ms,
                    outcome.away_writes,
                    outcome.own_writes_compacted,
                    outcome.heal_to_converged_ms,
                    outcome.transfer_batches
                );
                transferred += outcome.transfer_batches;
                worst_ms = worst_ms.max(outcome.heal_to_converged_ms);
            }
            Err(_) => failed.push(seed),
        }
    }
    assert!(failed.is_empty(), "{} of {} away schedules failed, seeds {failed:?}", failed.len(), seeds.len());
    assert!(transferred > 0, "the returning nodes caught up by state transfer");
    println!(
        "away scenario: {} schedules converged, 0 lost writes; slowest {worst_ms} ms after heal; {transferred} \
         transfer batches",
        seeds.len()
    );
}
