//! `cargo bench --bench replica`: the replica's write and apply throughput, each figure
//! printed next to a peer measured in the same run and the ratio (BRIEF §8, B1 and B2).
//!
//! - **B1a** durable local writes, 1000 rows per transaction: edgestore `write` against
//!   SQLite (WAL; `synchronous=NORMAL`, the usual WAL setting, and `FULL`) and a plain redb
//!   table committed with `Durability::Immediate`.
//! - **B1b** one row per durable transaction: edgestore `write` against SQLite WAL
//!   `synchronous=FULL` and raw redb; then edgestore's group commit (`ReplicaHandle`, several
//!   writer threads) against the same number of SQLite threads.
//! - **B1c** one row updated many times, 100 single-row updates per commit for everyone:
//!   cost per update overall and early against late (automerge history grows with each).
//! - **B2** applying remote changes (new rows, concurrent conflicting updates from two
//!   replicas, duplicate resends) in batches of 1000: edgestore `apply_remote` against a
//!   SQLite last-writer-wins upsert of the same rows and against raw automerge (the same
//!   automerge changes applied to in-memory per-row documents, no storage).
//!
//! Every engine writes the same rows: `id INTEGER PRIMARY KEY, name TEXT, temp REAL, site
//! TEXT, hits INTEGER`. Ratios are edgestore's speed over the peer's (higher is better).
//! `EDGESTORE_BENCH_SCALE` (default 1) scales every size and `EDGESTORE_BENCH_CASES` (e.g.
//! `B1c,B2`) runs only some cases; files live in temporary directories. This is a report,
//! not a test: nothing here asserts a timing, only that each engine did the work it was
//! timed for.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use edgestore::{
    sql, ColumnDef, ColumnType, NodeId, Replica, ReplicaHandle, TableSchema, Value, VerifiedChange, VersionVector,
    WriteBatch,
};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::{ReadableTableMetadata, TableDefinition};
use rusqlite::{params, Connection};
use tempfile::TempDir;

/// Rows per transaction in the batched cases (B1a, and the SQLite side of B2).
const ROWS_PER_TXN: usize = 1000;
/// Single-row updates committed together in B1c, by every engine.
const UPDATES_PER_COMMIT: usize = 100;
/// Writer threads in the group-commit line of B1b.
const GROUP_WRITERS: usize = 8;
/// Changes per `apply_remote` call in B2, of which [`APPLY_DUPLICATES_PER_BATCH`] are resends.
const APPLY_CHANGES_PER_BATCH: usize = 1000;
/// Changes of each B2 batch that resend a change already sent.
const APPLY_DUPLICATES_PER_BATCH: usize = 100;
/// Seed of every random choice, so runs compare.
const SEED: u64 = 0x5EED_0B5E;
/// A fixed wall clock for the writes (the library takes time as a parameter).
const NOW_MS: i64 = 1_750_000_000_000;

const TABLE: &str = "sensors";
const SITES: [&str; 4] = ["north", "south", "east", "west"];
const RAW_ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");

fn main() {
    let scale = bench_scale();
    let sizes = Sizes::scaled(scale);
    println!(
        "edgestore replica benchmarks: automerge {}, EDGESTORE_BENCH_SCALE={scale}",
        locked_version("automerge").unwrap_or("unknown")
    );
    println!("ratio = edgestore speed / peer speed (higher is better); SQLite is bundled, WAL mode");
    let cases: [(&str, Case); 4] = [
        ("B1a", bench_batched_writes),
        ("B1b", bench_single_row_writes),
        ("B1c", bench_update_heavy),
        ("B2", bench_apply_remote),
    ];
    for (name, case) in cases {
        if selected(name) {
            case(&sizes);
        }
    }
}

/// One benchmark case.
type Case = fn(&Sizes);

/// Every size of the run, already scaled.
struct Sizes {
    batched_rows: usize,
    single_rows: usize,
    group_rows_per_writer: usize,
    updates: usize,
    apply_rounds: usize,
    apply_inserts_per_round: usize,
    apply_updates_per_round: usize,
}

impl Sizes {
    fn scaled(scale: f64) -> Sizes {
        let at_least = |base: usize, min: usize| ((base as f64 * scale) as usize).max(min);
        Sizes {
            batched_rows: at_least(50_000, ROWS_PER_TXN).next_multiple_of(ROWS_PER_TXN),
            single_rows: at_least(300, 20),
            group_rows_per_writer: at_least(40, 5),
            updates: at_least(10_000, 10 * UPDATES_PER_COMMIT).next_multiple_of(UPDATES_PER_COMMIT),
            apply_rounds: at_least(24, 2),
            apply_inserts_per_round: 600,
            apply_updates_per_round: 200,
        }
    }
}

fn bench_scale() -> f64 {
    match std::env::var("EDGESTORE_BENCH_SCALE") {
        Ok(text) => text.parse().ok().filter(|s: &f64| *s > 0.0).expect("EDGESTORE_BENCH_SCALE: a positive number"),
        Err(_) => 1.0,
    }
}

/// Whether `EDGESTORE_BENCH_CASES` (a comma-separated list such as `B1c,B2`; default all)
/// selects the case.
fn selected(case: &str) -> bool {
    std::env::var("EDGESTORE_BENCH_CASES").map_or(true, |cases| cases.split(',').any(|c| c.trim() == case))
}

/// The version of a dependency as locked in this workspace's `Cargo.lock`, so the output
/// says which automerge it measured.
fn locked_version(package: &str) -> Option<&'static str> {
    let lock = include_str!("../Cargo.lock");
    let entry = lock.split("[[package]]").find(|entry| entry.contains(&format!("name = \"{package}\"\n")))?;
    entry.lines().find_map(|line| line.strip_prefix("version = \"")?.strip_suffix('"'))
}

/// Runs `f` and measures its wall-clock time.
#[allow(clippy::disallowed_methods, reason = "a benchmark is the edge where reading the clock is the point")]
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

// ---------------------------------------------------------------------------------------
// The rows every engine writes.

/// One sensor row; every engine stores the same five columns.
#[derive(Clone, Debug, PartialEq)]
struct SensorRow {
    id: i64,
    name: String,
    temp: f64,
    site: &'static str,
    hits: i64,
}

impl SensorRow {
    fn sample(id: i64) -> SensorRow {
        SensorRow {
            id,
            name: format!("sensor-{id:06}"),
            temp: 15.0 + (id % 200) as f64 * 0.125,
            site: SITES[id as usize % SITES.len()],
            hits: id * 7 % 1000,
        }
    }

    fn values(&self) -> [(&'static str, Value); 5] {
        [
            ("id", Value::from(self.id)),
            ("name", Value::from(self.name.as_str())),
            ("temp", Value::from(self.temp)),
            ("site", Value::from(self.site)),
            ("hits", Value::from(self.hits)),
        ]
    }

    /// The raw redb value: fixed-width numbers, then length-prefixed strings.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.name.len() + self.site.len());
        out.extend_from_slice(&self.temp.to_le_bytes());
        out.extend_from_slice(&self.hits.to_le_bytes());
        for text in [self.name.as_str(), self.site] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    fn insert_batch(rows: &[SensorRow]) -> WriteBatch {
        rows.iter().fold(WriteBatch::new(), |batch, row| batch.insert(TABLE, row.values()))
    }
}

fn sensors_schema() -> TableSchema {
    TableSchema::new(TABLE)
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("name", ColumnType::Text).not_null())
        .column(ColumnDef::new("temp", ColumnType::Real))
        .column(ColumnDef::new("site", ColumnType::Text))
        .column(ColumnDef::new("hits", ColumnType::Integer))
        .primary_key(&["id"])
}

fn node(n: u8) -> NodeId {
    NodeId([n; 16])
}

// ---------------------------------------------------------------------------------------
// Opening each engine.

fn open_edgestore(dir: &TempDir, n: u8, with_table: bool) -> Replica {
    let mut replica = Replica::open(dir.path().join(format!("node{n}.redb")), node(n)).expect("open replica");
    if with_table {
        replica.write(WriteBatch::new().create_table(sensors_schema()), NOW_MS).expect("create table");
    }
    replica
}

/// SQLite's `synchronous` setting under WAL: `Normal` syncs the WAL only at checkpoints (a
/// power cut may roll back the last commits), `Full` syncs it at every commit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Synchronous {
    Normal,
    Full,
}

impl Synchronous {
    fn name(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

fn open_sqlite(path: &Path, synchronous: Synchronous) -> Connection {
    let conn = Connection::open(path).expect("open sqlite");
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).expect("set WAL");
    assert_eq!(mode, "wal");
    conn.execute_batch(&format!("PRAGMA synchronous={}", synchronous.name())).expect("set synchronous");
    conn.busy_timeout(Duration::from_secs(30)).expect("set busy timeout");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sensors (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, temp REAL, site TEXT, hits INTEGER,
            ts INTEGER NOT NULL DEFAULT 0
        )",
    )
    .expect("create sqlite table");
    conn
}

const SQLITE_INSERT: &str = "INSERT INTO sensors (id, name, temp, site, hits) VALUES (?1, ?2, ?3, ?4, ?5)";

fn sqlite_insert(conn: &Connection, row: &SensorRow) {
    let mut insert = conn.prepare_cached(SQLITE_INSERT).expect("prepare insert");
    insert.execute(params![row.id, row.name, row.temp, row.site, row.hits]).expect("sqlite insert");
}

fn sqlite_count(conn: &Connection) -> usize {
    conn.query_row("SELECT COUNT(*) FROM sensors", [], |row| row.get::<_, i64>(0)).expect("count") as usize
}

fn open_raw_redb(dir: &TempDir) -> redb::Database {
    redb::Database::create(dir.path().join("raw.redb")).expect("open raw redb")
}

/// Begins a raw redb transaction that commits with an fsync, like edgestore's.
fn raw_redb_txn(db: &redb::Database) -> redb::WriteTransaction {
    let mut txn = db.begin_write().expect("begin raw redb");
    txn.set_durability(redb::Durability::Immediate).expect("set durability");
    txn
}

fn raw_redb_count(db: &redb::Database) -> usize {
    use redb::ReadableDatabase;
    let txn = db.begin_read().expect("read raw redb");
    txn.open_table(RAW_ROWS).expect("open raw table").len().expect("count") as usize
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn rate(units: usize, elapsed: Duration) -> f64 {
    units as f64 / elapsed.as_secs_f64()
}

fn header(title: &str) {
    println!();
    println!("{title}");
}

/// Prints edgestore's line of a case.
fn ours(label: &str, figure: f64, unit: &str) {
    println!("  {label:<44} {figure:>12.1} {unit}");
}

/// Prints a peer's line with the ratio of edgestore's speed to the peer's. `higher_is_faster`
/// says whether the figure is a rate (rows/s) or a cost (µs per unit).
fn peer(label: &str, figure: f64, unit: &str, ours_figure: f64, higher_is_faster: bool, target: &str) {
    let ratio = if higher_is_faster { ours_figure / figure } else { figure / ours_figure };
    println!("  {label:<44} {figure:>12.1} {unit:<10} ratio {ratio:>6.3}x {target}");
}

/// Costs of consecutive batches of work, for the overall figure and early against late.
#[derive(Default)]
struct BatchCosts {
    batches: Vec<(Duration, usize)>,
}

impl BatchCosts {
    fn record(&mut self, elapsed: Duration, units: usize) {
        self.batches.push((elapsed, units));
    }

    fn units(&self) -> usize {
        self.batches.iter().map(|(_, units)| units).sum()
    }

    fn elapsed(&self) -> Duration {
        self.batches.iter().map(|(elapsed, _)| *elapsed).sum()
    }

    fn per_second(&self) -> f64 {
        rate(self.units(), self.elapsed())
    }

    fn micros_per_unit(batches: &[(Duration, usize)]) -> f64 {
        let elapsed: Duration = batches.iter().map(|(elapsed, _)| *elapsed).sum();
        let units: usize = batches.iter().map(|(_, units)| units).sum();
        elapsed.as_secs_f64() * 1e6 / units as f64
    }

    fn tenth(&self) -> usize {
        self.batches.len().div_ceil(10)
    }

    /// µs per unit: overall, first 10% of batches, last 10% of batches.
    fn micros(&self) -> (f64, f64, f64) {
        let tenth = self.tenth();
        (
            Self::micros_per_unit(&self.batches),
            Self::micros_per_unit(&self.batches[..tenth]),
            Self::micros_per_unit(&self.batches[self.batches.len() - tenth..]),
        )
    }

    /// Prints how the cost per unit moved: overall, first and last 10% of batches, and the
    /// ratio of last to first (1.0 = flat).
    fn print_flatness(&self, label: &str, unit: &str, note: &str) {
        let (all, first, last) = self.micros();
        println!(
            "      {label} µs/{unit}: overall {all:.2}, first 10% {first:.2}, last 10% {last:.2}, \
             last/first {ratio:.2}{note}",
            ratio = last / first
        );
    }
}

// ---------------------------------------------------------------------------------------
// B1a: batched durable writes.

fn bench_batched_writes(sizes: &Sizes) {
    let rows: Vec<SensorRow> = (0..sizes.batched_rows as i64).map(SensorRow::sample).collect();
    header(&format!("B1a durable local writes, batched: {} rows, {ROWS_PER_TXN} rows per transaction", rows.len()));

    let dir = TempDir::new().expect("temp dir");
    let mut replica = open_edgestore(&dir, 1, true);
    let ((), elapsed) = timed(|| {
        for chunk in rows.chunks(ROWS_PER_TXN) {
            replica.write(SensorRow::insert_batch(chunk), NOW_MS).expect("edgestore batched write");
        }
    });
    assert_eq!(replica.snapshot().expect("snapshot").scan(TABLE).expect("scan").count(), rows.len());
    let edgestore = rate(rows.len(), elapsed);
    ours("edgestore write() (fsync per commit)", edgestore, "rows/s");

    for (synchronous, target) in
        [(Synchronous::Normal, "(floor 0.1x, goal 0.4x)"), (Synchronous::Full, "(same durability as ours)")]
    {
        let dir = TempDir::new().expect("temp dir");
        let conn = open_sqlite(&dir.path().join("b1a.sqlite"), synchronous);
        let ((), elapsed) = timed(|| {
            for chunk in rows.chunks(ROWS_PER_TXN) {
                let txn = conn.unchecked_transaction().expect("begin");
                chunk.iter().for_each(|row| sqlite_insert(&txn, row));
                txn.commit().expect("commit");
            }
        });
        assert_eq!(sqlite_count(&conn), rows.len());
        let label = format!("SQLite WAL synchronous={}", synchronous.name());
        peer(&label, rate(rows.len(), elapsed), "rows/s", edgestore, true, target);
    }

    let dir = TempDir::new().expect("temp dir");
    let db = open_raw_redb(&dir);
    let ((), elapsed) = timed(|| {
        for chunk in rows.chunks(ROWS_PER_TXN) {
            let txn = raw_redb_txn(&db);
            {
                let mut table = txn.open_table(RAW_ROWS).expect("open raw table");
                for row in chunk {
                    table.insert(row.id.to_be_bytes().as_slice(), row.encode().as_slice()).expect("raw insert");
                }
            }
            txn.commit().expect("raw commit");
        }
    });
    assert_eq!(raw_redb_count(&db), rows.len());
    peer("raw redb, Durability::Immediate", rate(rows.len(), elapsed), "rows/s", edgestore, true, "");
}

// ---------------------------------------------------------------------------------------
// B1b: one row per durable transaction, then group commit.

fn bench_single_row_writes(sizes: &Sizes) {
    let rows: Vec<SensorRow> = (0..sizes.single_rows as i64).map(SensorRow::sample).collect();
    header(&format!("B1b durable local writes, one row per transaction: {} rows", rows.len()));

    let dir = TempDir::new().expect("temp dir");
    let mut replica = open_edgestore(&dir, 1, true);
    let ((), elapsed) = timed(|| {
        for row in &rows {
            replica.write(SensorRow::insert_batch(std::slice::from_ref(row)), NOW_MS).expect("edgestore write");
        }
    });
    let edgestore = rate(rows.len(), elapsed);
    ours("edgestore write()", edgestore, "rows/s");

    let dir = TempDir::new().expect("temp dir");
    let conn = open_sqlite(&dir.path().join("b1b.sqlite"), Synchronous::Full);
    let ((), elapsed) = timed(|| rows.iter().for_each(|row| sqlite_insert(&conn, row)));
    assert_eq!(sqlite_count(&conn), rows.len());
    let sqlite_single = rate(rows.len(), elapsed);
    peer("SQLite WAL synchronous=FULL, autocommit", sqlite_single, "rows/s", edgestore, true, "(floor 0.8x)");

    let dir = TempDir::new().expect("temp dir");
    let db = open_raw_redb(&dir);
    let ((), elapsed) = timed(|| {
        for row in &rows {
            let txn = raw_redb_txn(&db);
            txn.open_table(RAW_ROWS)
                .expect("open raw table")
                .insert(row.id.to_be_bytes().as_slice(), row.encode().as_slice())
                .expect("raw insert");
            txn.commit().expect("raw commit");
        }
    });
    assert_eq!(raw_redb_count(&db), rows.len());
    peer("raw redb, Durability::Immediate", rate(rows.len(), elapsed), "rows/s", edgestore, true, "");

    bench_group_commit(sizes);
}

/// The rows writer `writer` inserts in the group-commit case.
fn writer_rows(writer: usize, per_writer: usize) -> Vec<SensorRow> {
    let first = (writer * per_writer) as i64;
    (first..first + per_writer as i64).map(SensorRow::sample).collect()
}

fn bench_group_commit(sizes: &Sizes) {
    let per_writer = sizes.group_rows_per_writer;
    let total = GROUP_WRITERS * per_writer;
    println!("  -- {GROUP_WRITERS} writer threads x {per_writer} single-row transactions each ({total} rows)");

    let dir = TempDir::new().expect("temp dir");
    let (handle, owner) = ReplicaHandle::spawn(open_edgestore(&dir, 1, true));
    let ((), elapsed) = timed(|| {
        std::thread::scope(|scope| {
            for writer in 0..GROUP_WRITERS {
                let handle = handle.clone();
                scope.spawn(move || {
                    for row in writer_rows(writer, per_writer) {
                        handle.write(SensorRow::insert_batch(&[row]), NOW_MS).expect("group-commit write");
                    }
                });
            }
        });
    });
    drop(handle);
    let replica = owner.join().expect("owner thread");
    assert_eq!(replica.snapshot().expect("snapshot").scan(TABLE).expect("scan").count(), total);
    let edgestore = rate(total, elapsed);
    ours("edgestore ReplicaHandle (group commit)", edgestore, "rows/s");

    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("b1b-threads.sqlite");
    drop(open_sqlite(&path, Synchronous::Full));
    let ((), elapsed) = timed(|| {
        std::thread::scope(|scope| {
            for writer in 0..GROUP_WRITERS {
                let path = &path;
                scope.spawn(move || {
                    let conn = open_sqlite(path, Synchronous::Full);
                    writer_rows(writer, per_writer).iter().for_each(|row| sqlite_insert(&conn, row));
                });
            }
        });
    });
    assert_eq!(sqlite_count(&open_sqlite(&path, Synchronous::Full)), total);
    let label = format!("SQLite WAL FULL, {GROUP_WRITERS} connections, autocommit");
    peer(&label, rate(total, elapsed), "rows/s", edgestore, true, "");
    bench_sql_group_commit(per_writer);
}

/// SQL `INSERT` statements from [`GROUP_WRITERS`] threads through `sql::execute` on a
/// `ReplicaHandle` (write jobs sharing durable commits), next to the same statements run
/// one durable commit each inside `ReplicaHandle::call` (how SQL writes ran before).
fn bench_sql_group_commit(per_writer: usize) {
    let total = GROUP_WRITERS * per_writer;
    let insert = "INSERT INTO sensors (id, name, temp, site, hits) VALUES (?, ?, ?, ?, ?)";
    let run = |grouped: bool| {
        let dir = TempDir::new().expect("temp dir");
        let (handle, owner) = ReplicaHandle::spawn(open_edgestore(&dir, 1, true));
        let ((), elapsed) = timed(|| {
            std::thread::scope(|scope| {
                for writer in 0..GROUP_WRITERS {
                    let mut handle = handle.clone();
                    scope.spawn(move || {
                        let statement = sql::prepare(insert).expect("prepare");
                        for row in writer_rows(writer, per_writer) {
                            let params: Vec<Value> = row.values().into_iter().map(|(_, v)| v).collect();
                            if grouped {
                                statement.execute(&mut handle, &params, NOW_MS).expect("grouped insert");
                            } else {
                                let statement = statement.clone();
                                let one = move |r: &mut Replica| statement.execute(r, &params, NOW_MS).map(drop);
                                handle.call(one).expect("owner").expect("insert in a call");
                            }
                        }
                    });
                }
            });
        });
        drop(handle);
        let replica = owner.join().expect("owner thread");
        assert_eq!(replica.snapshot().expect("snapshot").scan(TABLE).expect("scan").count(), total);
        rate(total, elapsed)
    };
    let grouped = run(true);
    ours(&format!("edgestore sql::execute INSERT, {GROUP_WRITERS} threads (group commit)"), grouped, "rows/s");
    peer("the same, one durable commit per statement (before)", run(false), "rows/s", grouped, true, "");
}

// ---------------------------------------------------------------------------------------
// B1c: one row updated many times.

/// The values of update number `i` of the hot row.
fn hot_update(i: usize) -> (f64, i64) {
    (20.0 + (i % 1000) as f64 * 0.01, i as i64)
}

fn bench_update_heavy(sizes: &Sizes) {
    let updates = sizes.updates;
    header(&format!(
        "B1c update-heavy: one row updated {updates} times, {UPDATES_PER_COMMIT} updates per durable commit"
    ));
    let hot = SensorRow::sample(7);
    let key = vec![Value::from(hot.id)];

    let dir = TempDir::new().expect("temp dir");
    let mut replica = open_edgestore(&dir, 1, true);
    replica.write(SensorRow::insert_batch(std::slice::from_ref(&hot)), NOW_MS).expect("insert hot row");
    let mut edgestore = BatchCosts::default();
    for group in (0..updates).collect::<Vec<_>>().chunks(UPDATES_PER_COMMIT) {
        let batches: Vec<WriteBatch> = group
            .iter()
            .map(|&i| {
                let (temp, hits) = hot_update(i);
                WriteBatch::new().update(TABLE, key.clone(), [("temp", Value::from(temp)), ("hits", Value::from(hits))])
            })
            .collect();
        let (results, elapsed) = timed(|| replica.write_group(batches, NOW_MS));
        results.into_iter().for_each(|result| _ = result.expect("edgestore update"));
        edgestore.record(elapsed, group.len());
    }
    let row = replica.snapshot().expect("snapshot").get(TABLE, &key).expect("read").expect("hot row");
    assert_eq!(row[4], Value::from(hot_update(updates - 1).1));
    let (ours_micros, _, _) = edgestore.micros();
    ours("edgestore write_group()", ours_micros, "µs/update");
    edgestore.print_flatness("edgestore", "update", "");

    let dir = TempDir::new().expect("temp dir");
    for synchronous in [Synchronous::Normal, Synchronous::Full] {
        let conn = open_sqlite(&dir.path().join(format!("b1c-{}.sqlite", synchronous.name())), synchronous);
        sqlite_insert(&conn, &hot);
        let mut sqlite = BatchCosts::default();
        for group in (0..updates).collect::<Vec<_>>().chunks(UPDATES_PER_COMMIT) {
            let ((), elapsed) = timed(|| {
                let txn = conn.unchecked_transaction().expect("begin");
                {
                    let mut update =
                        txn.prepare_cached("UPDATE sensors SET temp = ?1, hits = ?2 WHERE id = ?3").expect("prepare");
                    for &i in group {
                        let (temp, hits) = hot_update(i);
                        assert_eq!(update.execute(params![temp, hits, hot.id]).expect("update"), 1);
                    }
                }
                txn.commit().expect("commit");
            });
            sqlite.record(elapsed, group.len());
        }
        let label = format!("SQLite WAL synchronous={}", synchronous.name());
        peer(&label, sqlite.micros().0, "µs/update", ours_micros, false, "");
        sqlite.print_flatness("SQLite", "update", "");
    }

    let db = open_raw_redb(&dir);
    let mut raw = BatchCosts::default();
    let mut row = hot.clone();
    for group in (0..updates).collect::<Vec<_>>().chunks(UPDATES_PER_COMMIT) {
        let ((), elapsed) = timed(|| {
            let txn = raw_redb_txn(&db);
            {
                let mut table = txn.open_table(RAW_ROWS).expect("open raw table");
                for &i in group {
                    (row.temp, row.hits) = hot_update(i);
                    table.insert(row.id.to_be_bytes().as_slice(), row.encode().as_slice()).expect("raw update");
                }
            }
            txn.commit().expect("raw commit");
        });
        raw.record(elapsed, group.len());
    }
    peer("raw redb, Durability::Immediate", raw.micros().0, "µs/update", ours_micros, false, "");
    raw.print_flatness("raw redb", "update", "");
}

// ---------------------------------------------------------------------------------------
// B2: applying remote changes.

/// The row a change carries for the SQLite last-writer-wins peer: the full row and a
/// timestamp; a row with an older or equal timestamp than the stored one changes nothing.
#[derive(Clone, Debug)]
struct LwwUpsert {
    row: SensorRow,
    ts: i64,
}

/// The changes of B2, already cut into `apply_remote` batches, with the same rows for the
/// peers.
struct ApplyWorkload {
    /// Encoded change envelopes, per batch.
    batches: Vec<Vec<Vec<u8>>>,
    /// Per batch and change: the upsert for SQLite (`None` for the table's DDL).
    upserts: Vec<Vec<Option<LwwUpsert>>>,
    /// Per batch and change: `(document key, automerge change bytes)` for raw automerge.
    doc_changes: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    /// What the target should converge to.
    source_digest: edgestore::StateDigest,
    unique_changes: usize,
    rows: usize,
}

/// Writes single-row batches on `replica` in one commit, remembering each change's upsert.
fn write_recorded(
    replica: &mut Replica,
    writes: Vec<(WriteBatch, LwwUpsert)>,
    upserts: &mut HashMap<(NodeId, u64), LwwUpsert>,
) {
    let (batches, rows): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
    for (result, upsert) in replica.write_group(batches, NOW_MS).into_iter().zip(rows) {
        let seq = result.expect("source write").seq.expect("a write that changed something");
        upserts.insert((replica.node_id(), seq), upsert);
    }
}

/// Sends everything `from` has that `to` lacks.
fn sync(from: &Replica, to: &mut Replica) {
    let batch = from.changes_since(to.version_vector(), usize::MAX, usize::MAX).expect("changes_since");
    assert!(batch.complete);
    to.apply_remote(batch.changes).expect("sync apply");
}

/// Builds B2's stream on two source replicas, A and B. Each round, A inserts new rows and
/// B learns them; then A and B both update the same randomly chosen existing rows without
/// seeing each other (concurrent conflicting updates), and they sync. The stream is every
/// change in causal order, cut into batches of unique changes topped up with resends.
fn build_apply_workload(sizes: &Sizes) -> ApplyWorkload {
    let dir = TempDir::new().expect("temp dir");
    let mut a = open_edgestore(&dir, 1, true);
    let mut b = open_edgestore(&dir, 2, false);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut upserts = HashMap::new();
    let mut ts = 0i64;
    let mut rows = 0usize;
    let mut stream: Vec<Vec<u8>> = Vec::new();
    let mut streamed = VersionVector::new();
    for round in 0..sizes.apply_rounds {
        let inserts = (rows..rows + sizes.apply_inserts_per_round)
            .map(|id| {
                ts += 1;
                let row = SensorRow::sample(id as i64);
                (SensorRow::insert_batch(std::slice::from_ref(&row)), LwwUpsert { row, ts })
            })
            .collect();
        write_recorded(&mut a, inserts, &mut upserts);
        rows += sizes.apply_inserts_per_round;
        sync(&a, &mut b);
        let targets = sample(&mut rng, rows, sizes.apply_updates_per_round.min(rows));
        for (side, replica) in [("a", &mut a), ("b", &mut b)] {
            let updates = targets
                .iter()
                .map(|id| {
                    ts += 1;
                    let mut row = SensorRow::sample(id as i64);
                    row.name = format!("{side}-round{round}-{id}");
                    row.temp = rng.random_range(-40.0..60.0);
                    let set = [("name", Value::from(row.name.as_str())), ("temp", Value::from(row.temp))];
                    (WriteBatch::new().update(TABLE, vec![Value::from(row.id)], set), LwwUpsert { row, ts })
                })
                .collect();
            write_recorded(replica, updates, &mut upserts);
        }
        sync(&b, &mut a);
        sync(&a, &mut b);
        let round_changes = a.changes_since(&streamed, usize::MAX, usize::MAX).expect("changes_since");
        stream.extend(round_changes.changes);
        streamed = a.version_vector().clone();
    }
    let unique_per_batch = APPLY_CHANGES_PER_BATCH - APPLY_DUPLICATES_PER_BATCH;
    let mut workload = ApplyWorkload {
        batches: Vec::new(),
        upserts: Vec::new(),
        doc_changes: Vec::new(),
        source_digest: a.state_digest().expect("digest"),
        unique_changes: stream.len(),
        rows,
    };
    for start in (0..stream.len()).step_by(unique_per_batch) {
        let end = (start + unique_per_batch).min(stream.len());
        let mut batch = stream[start..end].to_vec();
        // Resends of changes sent before or earlier in this batch: already held or
        // recognised as duplicates of a candidate.
        batch.extend((0..APPLY_DUPLICATES_PER_BATCH).map(|_| stream[rng.random_range(0..end)].clone()));
        let decoded: Vec<VerifiedChange> =
            batch.iter().map(|bytes| VerifiedChange::decode(bytes.clone()).expect("valid change")).collect();
        workload
            .upserts
            .push(decoded.iter().map(|change| upserts.get(&(change.origin, change.seq)).cloned()).collect());
        workload.doc_changes.push(
            decoded
                .iter()
                .flat_map(|change| change.ops.iter().map(|op| (op.key.encode(), op.change.raw_bytes().to_vec())))
                .collect(),
        );
        workload.batches.push(batch);
    }
    workload
}

fn bench_apply_remote(sizes: &Sizes) {
    let (workload, build) = timed(|| build_apply_workload(sizes));
    let total: usize = workload.batches.iter().map(Vec::len).sum();
    header(&format!(
        "B2 applying remote changes: {} unique changes ({} rows; inserts and concurrent conflicting updates \
         from 2 replicas) + {} resent duplicates, {} batches of {APPLY_CHANGES_PER_BATCH} (stream built in {:.1} s)",
        workload.unique_changes,
        workload.rows,
        total - workload.unique_changes,
        workload.batches.len(),
        build.as_secs_f64()
    ));

    let dir = TempDir::new().expect("temp dir");
    let mut target = open_edgestore(&dir, 3, false);
    let mut edgestore = BatchCosts::default();
    let mut report = edgestore::ApplyReport::default();
    for batch in &workload.batches {
        let batch = batch.clone();
        let changes = batch.len();
        let (applied, elapsed) = timed(|| target.apply_remote(batch).expect("apply_remote"));
        edgestore.record(elapsed, changes);
        report.applied += applied.applied;
        report.duplicates += applied.duplicates;
        report.parked += applied.parked;
    }
    assert_eq!(report.applied, workload.unique_changes);
    assert_eq!(target.state_digest().expect("digest"), workload.source_digest, "the target must converge");
    let ours_rate = edgestore.per_second();
    println!(
        "  (edgestore applied {}, duplicates {}, parked {}; converged to the source's digest)",
        report.applied, report.duplicates, report.parked
    );
    ours("edgestore apply_remote()", ours_rate, "changes/s");
    edgestore.print_flatness("edgestore", "change", " (floor ≤ 1.5)");

    let sqlite = apply_sqlite_lww(&dir.path().join("b2.sqlite"), &workload);
    peer(
        "SQLite LWW upsert, WAL synchronous=NORMAL",
        sqlite.per_second(),
        "changes/s",
        ours_rate,
        true,
        "(floor 0.25x, goal 1x)",
    );
    sqlite.print_flatness("SQLite", "change", "");

    let automerge = apply_raw_automerge(&workload);
    peer("raw automerge, in-memory per-row docs", automerge.per_second(), "changes/s", ours_rate, true, "");
    automerge.print_flatness("raw automerge", "change", "");
}

fn apply_sqlite_lww(path: &Path, workload: &ApplyWorkload) -> BatchCosts {
    let conn = open_sqlite(path, Synchronous::Normal);
    let mut costs = BatchCosts::default();
    for batch in &workload.upserts {
        let ((), elapsed) = timed(|| {
            let txn = conn.unchecked_transaction().expect("begin");
            {
                let mut upsert = txn
                    .prepare_cached(
                        "INSERT INTO sensors (id, name, temp, site, hits, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(id) DO UPDATE SET name = excluded.name, temp = excluded.temp,
                           site = excluded.site, hits = excluded.hits, ts = excluded.ts
                         WHERE excluded.ts > sensors.ts",
                    )
                    .expect("prepare upsert");
                for LwwUpsert { row, ts } in batch.iter().flatten() {
                    upsert.execute(params![row.id, row.name, row.temp, row.site, row.hits, ts]).expect("upsert");
                }
            }
            txn.commit().expect("commit");
        });
        costs.record(elapsed, batch.len());
    }
    assert_eq!(sqlite_count(&conn), workload.rows);
    costs
}

fn apply_raw_automerge(workload: &ApplyWorkload) -> BatchCosts {
    let mut docs: HashMap<Vec<u8>, AutoCommit> = HashMap::new();
    let mut costs = BatchCosts::default();
    for batch in &workload.doc_changes {
        let ((), elapsed) = timed(|| {
            let mut groups: BTreeMap<&[u8], Vec<automerge::Change>> = BTreeMap::new();
            for (key, bytes) in batch {
                let change = automerge::Change::from_bytes(bytes.clone()).expect("valid automerge change");
                groups.entry(key.as_slice()).or_default().push(change);
            }
            for (key, changes) in groups {
                docs.entry(key.to_vec()).or_default().apply_changes(changes).expect("apply automerge changes");
            }
        });
        costs.record(elapsed, batch.len());
    }
    // One document per row plus the table's catalog document.
    assert_eq!(docs.len(), workload.rows + 1);
    costs
}
