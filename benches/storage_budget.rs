//! Where the bytes and the memory go: loads `readings (id INTEGER PRIMARY KEY, sensor
//! INTEGER, ts INTEGER, value REAL)` in 1000-row batches into a fresh store, prints the
//! storage breakdown (`Snapshot::storage_stats`) and the time of a state-digest call, then
//! runs itself again as a fresh process that opens the store with the memory budget,
//! reads every row, and reports its resident memory (VmRSS of /proc/self/status).
//!
//! Then it compacts the whole log (the node is alone: its horizon is its vector), saves
//! documents in the background steps the daemon runs (docs/design.md § "Document save"),
//! and updates every row `UPDATES` times (1000-row batches, log compaction and document
//! saves after each round), printing the breakdown after each stage, and finally shrinks
//! the file (`Replica::shrink_file`, what `edge-node compact` runs).
//!
//! SQLite (WAL, `synchronous=FULL`) loads and updates the same rows in the same batches
//! first, in the same process and directory, as the reference every figure is printed
//! next to.
//!
//! A measurement program, not a test:
//! `cargo run --example storage_budget -- [ROWS] [CACHE_MIB] [UPDATES]` (defaults 200 000
//! rows, the default budget, 64 MiB, and 5 updates; `STORAGE_BUDGET_SAVE=no` skips the
//! document saves, for the figures without them, and `STORAGE_BUDGET_SAVE=end` saves only
//! after the load and after the last round). README "Storage and memory" quotes its
//! figures.

use std::path::Path;
use std::time::Instant;

use edgestore::{NodeId, OpenOptions, Replica, StorageStats, Value, WriteBatch};

#[path = "readings.rs"]
mod readings;

const BATCH_ROWS: i64 = 1000;
const NODE: &[u8] = b"storage-budget";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--read") {
        let cache_mib = args[2].parse().expect("CACHE_MIB is a number");
        return read_phase(Path::new(&args[1]), cache_mib);
    }
    let rows: i64 = args.first().map(|n| n.parse().expect("ROWS is a number")).unwrap_or(200_000);
    let cache_mib: usize = args.get(1).map(|n| n.parse().expect("CACHE_MIB is a number")).unwrap_or(64);
    let dir = tempfile::tempdir().expect("temporary directory");
    // STORAGE_BUDGET_DIR keeps the store for a later `--read PATH CACHE_MIB` run.
    let path = match std::env::var_os("STORAGE_BUDGET_DIR") {
        Some(keep) => Path::new(&keep).join("store.redb"),
        None => dir.path().join("store.redb"),
    };
    let updates: u32 = args.get(2).map(|n| n.parse().expect("UPDATES is a number")).unwrap_or(5);
    let reference = sqlite_reference(dir.path(), rows, updates);
    load_phase(&path, rows, cache_mib, updates, &reference);
    let status = std::process::Command::new(std::env::current_exe().expect("this program's path"))
        .args(["--read", path.to_str().expect("a UTF-8 path"), &cache_mib.to_string()])
        .status()
        .expect("running the read phase");
    assert!(status.success(), "the read phase failed");
}

/// What SQLite took for the same rows: load rate, and bytes per row after the load and
/// after the updates (database and WAL files, after a truncating checkpoint).
struct Reference {
    rows_per_s: f64,
    load_bytes_per_row: f64,
    updated_bytes_per_row: f64,
}

#[allow(clippy::disallowed_methods, reason = "a measurement program is the edge where reading the clock is the point")]
fn sqlite_reference(dir: &Path, rows: i64, updates: u32) -> Reference {
    let path = dir.join("reference.sqlite");
    let db = rusqlite::Connection::open(&path).expect("open SQLite");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor INTEGER, ts INTEGER, value REAL);",
    )
    .expect("SQLite schema");
    let bytes_per_row = |db: &rusqlite::Connection| {
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").expect("checkpoint");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        (size(&path) + size(&dir.join("reference.sqlite-wal"))) as f64 / rows as f64
    };
    use rusqlite::types::Value as Sql;
    let run_batches = |db: &mut rusqlite::Connection, sql: &str, values: &dyn Fn(i64) -> Vec<Sql>| {
        let mut id = 0;
        while id < rows {
            let txn = db.transaction().expect("begin");
            {
                let mut statement = txn.prepare_cached(sql).expect("prepare");
                for _ in 0..BATCH_ROWS.min(rows - id) {
                    id += 1;
                    statement.execute(rusqlite::params_from_iter(values(id))).expect("execute");
                }
            }
            txn.commit().expect("commit");
        }
    };
    let mut db = db;
    let started = Instant::now();
    let insert = "INSERT INTO readings (id, sensor, ts, value) VALUES (?1, ?2, ?3, ?4)";
    let row = |id: i64| {
        let sql = |value: Value| match value {
            Value::Integer(v) => Sql::Integer(v),
            Value::Real(v) => Sql::Real(v),
            other => unreachable!("readings holds integers and reals, not {other:?}"),
        };
        readings::reading(id).into_iter().map(|(_, value)| sql(value)).collect()
    };
    run_batches(&mut db, insert, &row);
    let rows_per_s = rows as f64 / started.elapsed().as_secs_f64();
    let load_bytes_per_row = bytes_per_row(&db);
    for round in 1..=updates {
        let update = "UPDATE readings SET value = ?2 WHERE id = ?1";
        run_batches(&mut db, update, &|id| vec![Sql::Integer(id), Sql::Real(id as f64 * 0.5 + f64::from(round))]);
    }
    let updated_bytes_per_row = bytes_per_row(&db);
    println!(
        "SQLite (WAL, synchronous=FULL), same rows and batches: {rows_per_s:.0} rows/s; \
         {load_bytes_per_row:.1} B/row after load, {updated_bytes_per_row:.1} after {updates} updates of every row"
    );
    Reference { rows_per_s, load_bytes_per_row, updated_bytes_per_row }
}

fn options(cache_mib: usize) -> OpenOptions {
    OpenOptions { cache_bytes: cache_mib << 20 }
}

#[allow(clippy::disallowed_methods, reason = "a measurement program is the edge where reading the clock is the point")]
fn load_phase(path: &Path, rows: i64, cache_mib: usize, updates: u32, reference: &Reference) {
    let node = NodeId::from_public_key(NODE);
    println!("storage_budget: {rows} rows in {BATCH_ROWS}-row batches, cache budget {cache_mib} MiB");
    let mut replica = Replica::open_with(path, node, &options(cache_mib)).expect("open");
    replica.write(WriteBatch::new().create_table(readings::schema()), 0).expect("create table");
    let started = Instant::now();
    let mut id = 0;
    while id < rows {
        let mut batch = WriteBatch::new();
        for _ in 0..BATCH_ROWS.min(rows - id) {
            id += 1;
            batch = batch.insert("readings", readings::reading(id));
        }
        replica.write(batch, id).expect("write a batch");
    }
    let load_s = started.elapsed().as_secs_f64();
    let rate = rows as f64 / load_s;
    println!("loaded: {rows} rows in {load_s:.1} s ({rate:.0} rows/s, {:.3}x SQLite)", rate / reference.rows_per_s);
    let file = std::fs::metadata(path).map_or(0, |m| m.len());
    println!("file:   {file} bytes ({:.0} B/row)", file as f64 / rows as f64);
    println!("rss after load (loading process): {}", rss());
    let started = Instant::now();
    let stats = replica.snapshot().and_then(|s| s.storage_stats()).expect("storage stats");
    println!("storage_stats took {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    print_breakdown(&stats, rows as u64);
    digest_timing(&replica);
    let save = std::env::var("STORAGE_BUDGET_SAVE").unwrap_or_default();
    let (save_settled, save_rounds) = (save != "no", save != "no" && save != "end");
    settle(&mut replica, path, rows, save_settled, "after load", reference.load_bytes_per_row);
    for round in 1..=updates {
        let mut id = 0;
        while id < rows {
            let mut batch = WriteBatch::new();
            for _ in 0..BATCH_ROWS.min(rows - id) {
                id += 1;
                let value = Value::Real(id as f64 * 0.5 + f64::from(round));
                batch = batch.update("readings", vec![Value::from(id)], [("value", value)]);
            }
            replica.write(batch, id).expect("write a batch");
        }
        if round == updates {
            let stage = format!("after {round} updates of every row");
            settle(&mut replica, path, rows, save_settled, &stage, reference.updated_bytes_per_row);
        } else {
            settle_quietly(&mut replica, save_rounds);
        }
    }
    shrink(&mut replica, path, rows);
}

/// Shrinks the file as `edge-node compact` does, and prints its length before and after.
#[allow(clippy::disallowed_methods, reason = "a measurement program is the edge where reading the clock is the point")]
fn shrink(replica: &mut Replica, path: &Path, rows: i64) {
    let len = || std::fs::metadata(path).map_or(0, |m| m.len());
    let before = len();
    let started = Instant::now();
    replica.shrink_file().expect("shrink the file");
    let after = len();
    let per_row = |bytes: u64| bytes as f64 / rows as f64;
    println!(
        "shrink_file: {before} -> {after} bytes ({:.0} -> {:.0} B/row) in {:.1} s",
        per_row(before),
        per_row(after),
        started.elapsed().as_secs_f64()
    );
}

/// Compacts the whole log, then (if `save`) saves documents until nothing is left, as
/// the daemon's driver does, and prints the breakdown and the file's length.
fn settle(replica: &mut Replica, path: &Path, rows: i64, save: bool, stage: &str, sqlite_bytes_per_row: f64) {
    let (entries, saved) = settle_quietly(replica, save);
    println!("{stage}, log compacted ({entries} entries), {saved} documents saved:");
    let file = std::fs::metadata(path).map_or(0, |m| m.len());
    println!("file:   {file} bytes ({:.0} B/row)", file as f64 / rows as f64);
    let stats = replica.snapshot().and_then(|s| s.storage_stats()).expect("storage stats");
    print_breakdown(&stats, rows as u64);
    let allocated = stats.allocated_bytes() as f64 / rows as f64;
    println!(
        "vs SQLite: {allocated:.1} B/row allocated, SQLite {sqlite_bytes_per_row:.1} B/row: {:.2}x",
        allocated / sqlite_bytes_per_row
    );
    let problems = replica.check_integrity().expect("integrity check");
    assert!(problems.is_empty(), "{problems:?}");
}

/// Log entries compacted and documents saved.
fn settle_quietly(replica: &mut Replica, save: bool) -> (u64, u64) {
    let (mut entries, mut saved) = (0, 0);
    let vector = replica.version_vector().clone();
    loop {
        let report = replica.compact_log_step(&vector, 256).expect("compaction step");
        entries += report.entries_removed;
        if report.complete {
            break;
        }
    }
    if !save {
        return (entries, saved);
    }
    loop {
        let report = replica.save_docs_step(128).expect("document save step");
        saved += report.docs_saved;
        if report.complete {
            return (entries, saved);
        }
    }
}

fn read_phase(path: &Path, cache_mib: usize) {
    println!("read phase (fresh process): rss at start {}", rss());
    let replica = Replica::open_with(path, NodeId::from_public_key(NODE), &options(cache_mib)).expect("reopen");
    println!("rss after open: {}", rss());
    digest_timing(&replica);
    let snapshot = replica.snapshot().expect("snapshot");
    let rows = snapshot.scan("readings").expect("scan").count();
    drop(snapshot);
    println!("rss after reading every row ({rows}): {}", rss());
    let problems = replica.check_integrity().expect("integrity check");
    assert!(problems.is_empty(), "{problems:?}");
    println!("rss after check_integrity (reads every table and document): {}", rss());
    println!("caches: {:?}", replica.cache_figures());
}

fn print_breakdown(stats: &StorageStats, rows: u64) {
    let per_row = |bytes: u64| bytes as f64 / rows.max(1) as f64;
    println!("| redb table | entries | stored B | metadata B | fragmented B | allocated B/row |");
    println!("|---|---|---|---|---|---|");
    for t in &stats.redb_tables {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} |",
            t.name,
            t.entries,
            t.stored_bytes,
            t.metadata_bytes,
            t.fragmented_bytes,
            per_row(t.allocated_bytes())
        );
    }
    println!("| all tables | | | | | {:.1} |", per_row(stats.allocated_bytes()));
    println!(
        "| user table | rows | records B/row | heads B/row | snapshots B/row | tail B/row | index B/row | bytes/row |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for t in &stats.user_tables {
        let rows = t.rows.max(1) as f64;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            t.name,
            t.rows,
            t.row_bytes as f64 / rows,
            t.heads_bytes as f64 / rows,
            t.snapshot_bytes as f64 / rows,
            t.tail_bytes as f64 / rows,
            t.index_bytes as f64 / rows,
            t.bytes_per_row().unwrap_or(0.0)
        );
    }
}

#[allow(clippy::disallowed_methods, reason = "a measurement program is the edge where reading the clock is the point")]
fn digest_timing(replica: &Replica) {
    let mut times_ms = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let digest = replica.snapshot().and_then(|s| s.state_digest()).expect("digest");
        times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(digest);
    }
    report("state digest (snapshot + digest)", times_ms);
    let mut times_ms = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        std::hint::black_box(replica.heads_tree().expect("heads tree"));
        times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report("anti-entropy heads tree", times_ms);
}

fn report(what: &str, mut times_ms: Vec<f64>) {
    times_ms.sort_by(f64::total_cmp);
    let (min, median, max) = (times_ms[0], times_ms[times_ms.len() / 2], times_ms[times_ms.len() - 1]);
    println!("{what}, {} calls: min {min:.3} ms, median {median:.3} ms, max {max:.3} ms", times_ms.len());
}

/// This process's resident set (VmRSS of /proc/self/status), as the kernel reports it.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .map_or_else(|| "unknown (no /proc/self/status)".to_string(), |v| v.trim().to_string())
}
