//! How long a writer waits while the change log is compacted (docs/design.md § "Log
//! compaction"), and the log's bytes before and after.
//!
//! Loads `readings (id INTEGER PRIMARY KEY, sensor INTEGER, ts INTEGER, value REAL)` in
//! batches through a `ReplicaHandle` (the daemon's owner thread), then runs a writer of
//! one-row batches: first alone (the baseline), then while a compactor steps
//! `ReplicaHandle::compact_log_step` up to the whole vector, at most STEP_ENTRIES entries
//! per step, one request per step (so queued writes run between steps, as in the daemon).
//! Prints the writer's latency (max, p99, median) in both phases, the steps' durations, and
//! the `log_v1` figures of `Snapshot::storage_stats` before and after.
//!
//! A measurement program, not a test:
//! `cargo run --example compaction_pause -- [ROWS] [BATCH_ROWS] [STEP_ENTRIES]` (defaults
//! 200 000 rows, 1000-row batches, 1024 entries per step). README "Storage and memory"
//! quotes its figures.

#![allow(clippy::disallowed_methods, reason = "a measurement program is the edge where reading the clock is the point")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgestore::{NodeId, Replica, ReplicaHandle, StorageStats, WriteBatch};
use readings::reading;

#[path = "readings.rs"]
mod readings;

const NODE: &[u8] = b"compaction-pause";
/// How long the writer runs alone before compaction starts.
const BASELINE: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("arguments are numbers")).collect();
    let rows = args.first().copied().unwrap_or(200_000) as i64;
    let batch_rows = args.get(1).copied().unwrap_or(1000) as i64;
    let step_entries = args.get(2).copied().unwrap_or(1024);
    println!("compaction_pause: {rows} rows in {batch_rows}-row batches, {step_entries} entries per step");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.redb");
    let replica = Replica::open(&path, NodeId::from_public_key(NODE)).expect("open");
    let (handle, owner) = ReplicaHandle::spawn(replica);
    load(&handle, rows, batch_rows);
    let before = stats(&handle);
    print_log("before", &before, &path);

    let stop = Arc::new(AtomicBool::new(false));
    let compacting = Arc::new(AtomicBool::new(false));
    let writer = {
        let (handle, stop, compacting) = (handle.clone(), Arc::clone(&stop), Arc::clone(&compacting));
        std::thread::spawn(move || write_and_time(&handle, rows, &stop, &compacting))
    };
    std::thread::sleep(BASELINE);
    compacting.store(true, Ordering::SeqCst);
    let steps = compact(&handle, step_entries);
    compacting.store(false, Ordering::SeqCst);
    // A last second of writes after compaction, counted with the baseline.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (alone, during) = writer.join().expect("the writer");
    report("writer latency, no compaction", alone);
    report("writer latency, while compacting", during);
    report("compaction steps", steps);
    let after = stats(&handle);
    print_log("after", &after, &path);
    drop(handle);
    let replica = owner.join().expect("the owner thread");
    let problems = replica.check_integrity().expect("integrity check");
    assert!(problems.is_empty(), "{problems:?}");
    println!("integrity: ok; log floor {} changes", replica.log_floor().total_changes());
}

fn load(handle: &ReplicaHandle, rows: i64, batch_rows: i64) {
    handle.write(WriteBatch::new().create_table(readings::schema()), 0).expect("create table");
    let started = Instant::now();
    let mut id = 0;
    while id < rows {
        let mut batch = WriteBatch::new();
        for _ in 0..batch_rows.min(rows - id) {
            id += 1;
            batch = batch.insert("readings", reading(id));
        }
        handle.write(batch, id).expect("write a batch");
    }
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());
}

/// One-row writes until `stop`; latencies (ms) split by whether compaction was running
/// when the write was sent.
fn write_and_time(
    handle: &ReplicaHandle,
    rows: i64,
    stop: &AtomicBool,
    compacting: &AtomicBool,
) -> (Vec<f64>, Vec<f64>) {
    let (mut alone, mut during) = (Vec::new(), Vec::new());
    let mut id = rows;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        let while_compacting = compacting.load(Ordering::SeqCst);
        let started = Instant::now();
        handle.write(WriteBatch::new().insert("readings", reading(id)), id).expect("a one-row write");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if while_compacting || compacting.load(Ordering::SeqCst) {
            during.push(ms);
        } else {
            alone.push(ms);
        }
    }
    (alone, during)
}

/// Steps compaction up to the whole vector; returns each step's duration (ms).
fn compact(handle: &ReplicaHandle, step_entries: usize) -> Vec<f64> {
    let (mut times, mut entries, mut bytes) = (Vec::new(), 0u64, 0u64);
    let started = Instant::now();
    loop {
        let step = Instant::now();
        let report = handle
            .compact_log_step(|replica| replica.version_vector().clone(), step_entries)
            .expect("a compaction step");
        times.push(step.elapsed().as_secs_f64() * 1000.0);
        entries += report.entries_removed;
        bytes += report.bytes_removed;
        if report.complete {
            break;
        }
    }
    println!(
        "compacted {entries} entries ({:.1} MB) in {} steps, {:.2} s",
        bytes as f64 / 1e6,
        times.len(),
        started.elapsed().as_secs_f64()
    );
    times
}

fn stats(handle: &ReplicaHandle) -> StorageStats {
    handle.snapshot().and_then(|s| s.storage_stats()).expect("storage stats")
}

fn print_log(when: &str, stats: &StorageStats, path: &std::path::Path) {
    let log = stats.redb_tables.iter().find(|t| t.name == "log_v1").expect("log_v1");
    let file = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "{when}: log_v1 {} entries, {} stored B, {} allocated B; all tables {} allocated B; file {file} B",
        log.entries,
        log.stored_bytes,
        log.allocated_bytes(),
        stats.allocated_bytes()
    );
}

fn report(what: &str, mut ms: Vec<f64>) {
    if ms.is_empty() {
        println!("{what}: none");
        return;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
    println!(
        "{what}, {} samples: max {:.1} ms, p99 {:.1} ms, median {:.2} ms",
        ms.len(),
        ms[ms.len() - 1],
        at(0.99),
        at(0.5)
    );
}
