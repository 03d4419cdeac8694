//! Durability: a write acknowledged by the replica survives a replica that is never shut
//! down cleanly.
//!
//! Two ways of not shutting down:
//! - a *crash image*: the redb file is copied while the replica is still open (what is on
//!   disk at that instant), and the copy is opened as the same node;
//! - a *SIGKILL*: this test binary re-executes itself as a child process that writes rows
//!   from several threads through a [`ReplicaHandle`] and prints `ack <id> <version>` after
//!   each acknowledged write; the parent kills it after a seeded-random number of acks,
//!   reopens the store, checks every acknowledged row, and repeats on the same store.
//!
//! Every row follows one deterministic history (see [`row_at`]), so a stored row is either
//! exactly the acknowledged version or, for the at most one write per writer thread that
//! was committed but not yet acknowledged when the process died, exactly one version later.
//!
//! Seed: `EDGESTORE_TEST_SEED` (decimal), else [`DEFAULT_SEED`]; it is printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use edgestore::{ColumnDef, ColumnType, NodeId, Replica, ReplicaHandle, Row, TableSchema, Value, WriteBatch, WriteOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

mod common;
use common::{assert_healthy, test_seed};

/// Seed used when `EDGESTORE_TEST_SEED` is not set.
const DEFAULT_SEED: u64 = 0x0D07_AB1E_5EED;
/// The node every store in this file belongs to.
const NODE: NodeId = NodeId([7; 16]);
const TABLE: &str = "items";

/// Environment variable naming the store the child process writes to; unset = not a child.
const CHILD_STORE_ENV: &str = "EDGESTORE_CRASH_CHILD";
/// Environment variable carrying the child's seed.
const CHILD_SEED_ENV: &str = "EDGESTORE_CRASH_CHILD_SEED";
/// Name of the test function that is the child's body.
const CHILD_TEST: &str = "crash_child_writes_until_killed";
/// Writer threads in the child; each owns the rows whose `id % WRITER_THREADS` is its index.
const WRITER_THREADS: i64 = 4;
/// Safety net: a child stops by itself after this many writes per thread...
const CHILD_WRITES_PER_THREAD_MAX: usize = 2_000;
/// ...or exits after this long, whichever comes first (also if a write hangs).
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
/// Kills per SIGKILL test, all on the same store.
const KILL_ROUNDS: u64 = 5;
/// Acknowledged writes the parent waits for before each kill (a seeded choice in this range).
const ACKS_BEFORE_KILL: std::ops::RangeInclusive<usize> = 10..=300;

fn items_schema() -> TableSchema {
    TableSchema::new(TABLE)
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("version", ColumnType::Integer).not_null())
        .column(ColumnDef::new("note", ColumnType::Text))
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .primary_key(&["id"])
}

fn create_items_if_not_exists() -> WriteBatch {
    WriteBatch { ops: vec![WriteOp::CreateTable { schema: items_schema(), if_not_exists: true }] }
}

// ---------------------------------------------------------------------------------------
// The deterministic history of a row.
// ---------------------------------------------------------------------------------------

fn note(id: i64, version: i64) -> String {
    format!("row {id} version {version}")
}

/// The counter after `version` writes: write `v` adds `v` when `v` is a multiple of 3.
fn hits(version: i64) -> i64 {
    (1..=version).filter(|v| v % 3 == 0).sum()
}

/// The row as it reads after its `version`-th write.
fn row_at(id: i64, version: i64) -> Row {
    vec![Value::from(id), Value::from(version), Value::from(note(id, version)), Value::from(hits(version))]
}

/// The write that takes row `id` to `version`: an insert first, then updates, every third
/// one with a counter increment in the same batch.
fn write_for(id: i64, version: i64) -> WriteBatch {
    if version == 1 {
        return WriteBatch::new()
            .insert(TABLE, [("id", Value::from(id)), ("version", Value::from(1)), ("note", Value::from(note(id, 1)))]);
    }
    let batch = WriteBatch::new().update(
        TABLE,
        vec![Value::from(id)],
        [("version", Value::from(version)), ("note", Value::from(note(id, version)))],
    );
    if version % 3 == 0 {
        batch.increment(TABLE, vec![Value::from(id)], "hits", version)
    } else {
        batch
    }
}

/// Every row of the table as `id -> version`, checking that each row is exactly the row of
/// its version (no torn or mixed row).
fn stored_versions(replica: &Replica) -> BTreeMap<i64, i64> {
    let snapshot = replica.snapshot().unwrap();
    let mut versions = BTreeMap::new();
    for row in snapshot.scan(TABLE).unwrap() {
        let row = row.unwrap();
        let (Value::Integer(id), Value::Integer(version)) = (&row[0], &row[1]) else {
            panic!("row with a non-integer id or version: {row:?}");
        };
        assert_eq!(row, row_at(*id, *version), "row {id} is not the row of its version {version}");
        versions.insert(*id, *version);
    }
    versions
}

// ---------------------------------------------------------------------------------------
// Crash image of an open store.
// ---------------------------------------------------------------------------------------

/// How the acknowledged writes before the crash image are made.
#[derive(Debug, Clone, Copy)]
enum Writers {
    /// `Replica::write` on the test thread.
    Direct,
    /// `ReplicaHandle::write` from this many threads at once (group commit).
    Handle(i64),
}

/// Writes `rows` rows, each to version `versions`, and returns the acknowledged versions.
fn write_rows(replica: &mut Replica, rows: i64, versions: i64) -> BTreeMap<i64, i64> {
    let mut acked = BTreeMap::new();
    for version in 1..=versions {
        for id in 0..rows {
            replica.write(write_for(id, version), version).unwrap();
            acked.insert(id, version);
        }
    }
    acked
}

fn write_rows_through_handle(handle: &ReplicaHandle, threads: i64, rows: i64, versions: i64) -> BTreeMap<i64, i64> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut acked = BTreeMap::new();
                    for version in 1..=versions {
                        for id in (thread..rows).step_by(threads as usize) {
                            handle.write(write_for(id, version), version).unwrap();
                            acked.insert(id, version);
                        }
                    }
                    acked
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

fn check_crash_image(writers: Writers) {
    const ROWS: i64 = 24;
    const VERSIONS: i64 = 4;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("live.redb");
    let image = dir.path().join("image.redb");
    let mut replica = Replica::open(&path, NODE).unwrap();
    replica.write(create_items_if_not_exists(), 0).unwrap();
    let (acked, live_seq) = match writers {
        Writers::Direct => {
            let acked = write_rows(&mut replica, ROWS, VERSIONS);
            std::fs::copy(&path, &image).unwrap();
            (acked, replica.version_vector().seq(NODE))
        }
        Writers::Handle(threads) => {
            let (handle, owner) = ReplicaHandle::spawn(replica);
            let acked = write_rows_through_handle(&handle, threads, ROWS, VERSIONS);
            // The handle (and the replica behind it) is still open while the image is taken.
            std::fs::copy(&path, &image).unwrap();
            let seq = handle.call(|r| r.version_vector().seq(NODE)).unwrap();
            drop(handle);
            replica = owner.join().unwrap();
            (acked, seq)
        }
    };
    assert_eq!(acked.len(), ROWS as usize);

    let mut restored = Replica::open(&image, NODE).unwrap();
    assert_healthy(&restored);
    assert_eq!(stored_versions(&restored), acked, "{writers:?}: the crash image lost or changed acknowledged rows");
    assert_eq!(restored.version_vector(), replica.version_vector(), "{writers:?}: version vector differs");
    assert_eq!(restored.state_digest().unwrap(), replica.state_digest().unwrap(), "{writers:?}: state differs");
    // The restored node carries on from where it was: the next change has the next seq.
    let receipt = restored.write(write_for(ROWS, 1), 0).unwrap();
    assert_eq!(receipt.seq, Some(live_seq + 1), "{writers:?}: the restored node reuses a seq");
    assert_healthy(&restored);
}

#[test]
fn acknowledged_writes_survive_a_crash_image_of_an_open_store() {
    for writers in [Writers::Direct, Writers::Handle(4)] {
        check_crash_image(writers);
    }
}

// ---------------------------------------------------------------------------------------
// SIGKILL of a writing process.
// ---------------------------------------------------------------------------------------

/// The child's body: does nothing unless [`CHILD_STORE_ENV`] is set.
///
/// It opens the store, creates the table if needed, and writes "forever" (bounded by
/// [`CHILD_WRITES_PER_THREAD_MAX`] and [`CHILD_RUN_MAX`]) from [`WRITER_THREADS`] threads,
/// continuing the history of whatever rows the store already holds.
#[test]
fn crash_child_writes_until_killed() {
    let Ok(store) = std::env::var(CHILD_STORE_ENV) else { return };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).expect("the parent passes a seed").parse().unwrap();
    let mut replica = Replica::open(&store, NODE).unwrap();
    replica.write(create_items_if_not_exists(), 0).unwrap();
    let existing = stored_versions(&replica);
    let (handle, _owner) = ReplicaHandle::spawn(replica);

    // A watchdog, not synchronisation: a child that is never killed (or whose writes hang)
    // still ends after CHILD_RUN_MAX.
    let (done, watchdog) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(CHILD_RUN_MAX) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("crash child: still running after {CHILD_RUN_MAX:?}; exiting");
            std::process::exit(3);
        }
    });

    std::thread::scope(|scope| {
        for thread in 0..WRITER_THREADS {
            let handle = handle.clone();
            let mut rows: BTreeMap<i64, i64> =
                existing.iter().filter(|(id, _)| *id % WRITER_THREADS == thread).map(|(&id, &v)| (id, v)).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            scope.spawn(move || {
                let mut next_new = rows.keys().next_back().map_or(thread, |last| last + WRITER_THREADS);
                for _ in 0..CHILD_WRITES_PER_THREAD_MAX {
                    let (id, version) = if rows.is_empty() || rng.random_bool(0.4) {
                        let id = next_new;
                        next_new += WRITER_THREADS;
                        (id, 1)
                    } else {
                        let pick = rng.random_range(0..rows.len());
                        let (&id, &version) = rows.iter().nth(pick).expect("in range");
                        (id, version + 1)
                    };
                    handle.write(write_for(id, version), 0).unwrap();
                    rows.insert(id, version);
                    // Acknowledged: only now does the parent hear of it.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {id} {version}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
    drop(done);
}

/// One acknowledged write, as the child reported it.
fn parse_ack(line: &str) -> Option<(i64, i64)> {
    // libtest may print its own "test name ... " in front of the first line.
    let rest = &line[line.find("ack ")? + 4..];
    let mut fields = rest.split_whitespace().map(|f| f.parse::<i64>().unwrap());
    Some((fields.next()?, fields.next()?))
}

/// Runs one child on `store`, SIGKILLs it after `kill_after` acknowledgements and returns
/// every write it acknowledged (the ones still in the pipe included), in order.
fn run_child_and_kill(store: &Path, seed: u64, kill_after: usize, stderr_path: &Path) -> Vec<(i64, i64)> {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_STORE_ENV, store)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut acks = Vec::new();
    let mut killed = false;
    let mut line = String::new();
    loop {
        line.clear();
        // A last line without its newline was cut by the kill; it is not counted.
        if lines.read_line(&mut line).unwrap() == 0 || !line.ends_with('\n') {
            break;
        }
        if let Some(ack) = parse_ack(&line) {
            acks.push(ack);
        }
        if !killed && acks.len() >= kill_after {
            child.kill().unwrap(); // SIGKILL on Unix
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    let child_stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    assert!(
        killed && died_of_sigkill(&status),
        "the child ended by itself ({status}) after {} acks, before the kill at {kill_after}; stderr:\n{child_stderr}",
        acks.len()
    );
    acks
}

#[cfg(unix)]
fn died_of_sigkill(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

#[cfg(not(unix))]
fn died_of_sigkill(status: &std::process::ExitStatus) -> bool {
    !status.success()
}

/// Reopens the store after a kill and checks it against the acknowledged versions:
/// healthy, every acknowledged row present at its version or (if a write was in flight)
/// one version later, and at most one in-flight write per writer thread. Returns what is
/// stored, which is what the next round continues from, and the number of unacknowledged
/// writes that had reached the disk.
fn verify_after_kill(store: &Path, acked: &BTreeMap<i64, i64>, round: u64) -> (BTreeMap<i64, i64>, usize) {
    let replica = Replica::open(store, NODE).unwrap();
    assert_healthy(&replica);
    let stored = stored_versions(&replica);
    let mut in_flight = Vec::new();
    for (&id, &version) in acked {
        match stored.get(&id) {
            Some(&s) if s == version => {}
            Some(&s) if s == version + 1 => in_flight.push((id, s)),
            Some(&s) => panic!("round {round}: row {id} acknowledged at version {version} is at version {s}"),
            None => panic!("round {round}: row {id} acknowledged at version {version} is missing"),
        }
    }
    for (&id, &version) in &stored {
        if !acked.contains_key(&id) {
            assert_eq!(version, 1, "round {round}: row {id} was never acknowledged yet is at version {version}");
            in_flight.push((id, version));
        }
    }
    assert!(
        in_flight.len() <= WRITER_THREADS as usize,
        "round {round}: {} unacknowledged writes survived, more than one per writer thread: {in_flight:?}",
        in_flight.len()
    );
    (stored, in_flight.len())
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_writing_process() {
    let seed = test_seed(DEFAULT_SEED);
    println!("durability SIGKILL test seed: {seed} (set EDGESTORE_TEST_SEED to replay)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store.redb");
    let stderr_path = dir.path().join("child.stderr");
    // What the store must hold: id -> version, from the last check plus new acks.
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    let mut total_acks = 0;
    for round in 0..KILL_ROUNDS {
        let kill_after = rng.random_range(ACKS_BEFORE_KILL);
        let acks = run_child_and_kill(&store, seed.wrapping_add(round), kill_after, &stderr_path);
        for (id, version) in &acks {
            let before = expected.insert(*id, *version).unwrap_or(0);
            assert!(*version > before, "round {round}: row {id} acknowledged at {version} after {before}");
        }
        total_acks += acks.len();
        let in_flight;
        (expected, in_flight) = verify_after_kill(&store, &expected, round);
        println!(
            "round {round}: SIGKILL after {} acks (target {kill_after}); {} rows verified, {in_flight} unacknowledged \
             writes had reached the disk",
            acks.len(),
            expected.len()
        );
    }
    println!("{KILL_ROUNDS} kills, {total_acks} acknowledged writes, {} rows verified", expected.len());
}
