//! Property test: replicas that exchange changes in any order converge.
//!
//! Each case runs 3–5 replicas through a seeded random schedule of local writes
//! (conflicting updates, deletes, re-inserts, counters, inserts into a table without a
//! primary key, DDL: tables and plain or unique indexes created and dropped concurrently
//! with writes, columns added, renamed and dropped concurrently with writes and with each other)
//! and deliveries over a lossy
//! in-memory "network" that reorders, duplicates and drops batches of change envelopes.
//! Lost changes are resent later (the sender recomputes what the receiver lacks from its
//! version vector). After a final full exchange, every replica must have the same digest,
//! rows, conflicts (same winner, same values, same writers), unique conflicts and catalog,
//! pass
//! `check_integrity`, and equal a fresh replica that received everything in one batch.
//!
//! The seed is printed; `EDGESTORE_SEED=<n>` replays one run, `EDGESTORE_CASES=<n>` runs
//! more cases (default 48).

use edgestore::{
    ColumnDef, ColumnType, IndexSchema, NodeId, Replica, TableSchema, Value, VersionVector, WriteBatch, WriteOp,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

const IDS: i64 = 6;

fn devices() -> TableSchema {
    TableSchema::new("devices")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("name", ColumnType::Text))
        .column(ColumnDef::new("temp", ColumnType::Real))
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .primary_key(&["id"])
}

/// A table without a primary key: every insert is a row of its own.
fn log() -> TableSchema {
    TableSchema::without_key("log").column(ColumnDef::new("msg", ColumnType::Text))
}

/// A second table whose definition varies, so concurrent CREATE TABLEs sometimes conflict.
fn notes(variant: u8) -> TableSchema {
    let schema = TableSchema::new("notes")
        .column(ColumnDef::new("site", ColumnType::Text))
        .column(ColumnDef::new("seq", ColumnType::Integer))
        .column(ColumnDef::new("body", ColumnType::Text))
        .primary_key(&["site", "seq"]);
    if variant == 0 {
        schema
    } else {
        schema.column(ColumnDef::new("flag", ColumnType::Boolean).default(false))
    }
}

fn random_value(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..4) {
        0 => Value::Null,
        _ => Value::from(format!("v{}", rng.random_range(0..5))),
    }
}

fn random_op(rng: &mut ChaCha8Rng) -> WriteOp {
    let id = Value::from(rng.random_range(0..IDS));
    let note_key = || vec![Value::from("s1"), Value::from(1)];
    match rng.random_range(0..113) {
        0..=19 => WriteOp::Insert {
            table: "devices".into(),
            values: vec![("id".into(), id), ("name".into(), random_value(rng))],
        },
        20..=29 => WriteOp::Upsert {
            table: "devices".into(),
            values: vec![("id".into(), id), ("temp".into(), Value::from(rng.random_range(0..40) as f64))],
        },
        30..=54 => {
            WriteOp::Update { table: "devices".into(), key: vec![id], set: vec![("name".into(), random_value(rng))] }
        }
        55..=66 => WriteOp::Delete { table: "devices".into(), key: vec![id] },
        67..=79 => WriteOp::Increment {
            table: "devices".into(),
            key: vec![id],
            column: "hits".into(),
            by: rng.random_range(-3..10),
        },
        80..=84 => WriteOp::CreateTable { schema: notes(rng.random_range(0..2)), if_not_exists: true },
        85..=87 => WriteOp::DropTable { name: "notes".into(), if_exists: true },
        88..=92 => WriteOp::Upsert {
            table: "notes".into(),
            values: vec![
                ("site".into(), "s1".into()),
                ("seq".into(), Value::from(1)),
                ("body".into(), random_value(rng)),
            ],
        },
        93..=94 => WriteOp::Delete { table: "notes".into(), key: note_key() },
        95..=97 => {
            // Plain or unique: two replicas creating it differently is a definition
            // conflict; a unique one created while others write duplicates lists them.
            let index = IndexSchema::new("by_name", "devices", &["name"]);
            let schema = if rng.random_bool(0.5) { index.unique() } else { index };
            WriteOp::CreateIndex { schema, if_not_exists: true }
        }
        98..=99 => WriteOp::DropIndex { name: "by_name".into(), if_exists: true },
        100..=103 => WriteOp::Insert { table: "log".into(), values: vec![("msg".into(), random_value(rng))] },
        104..=109 => random_alter(rng),
        110..=111 => WriteOp::Upsert {
            table: "notes".into(),
            values: vec![
                ("site".into(), "s1".into()),
                ("seq".into(), Value::from(1)),
                ("extra".into(), random_value(rng)),
            ],
        },
        _ => WriteOp::Update { table: "devices".into(), key: vec![id], set: vec![("unit".into(), random_value(rng))] },
    }
}

/// `ALTER TABLE`s that conflict when replicas make them concurrently: the same column
/// added alike (one column) or with another type (two), the same column renamed to two
/// names, a rename back, drops racing renames and writes, and all of it on a table that
/// is dropped and re-created meanwhile.
fn random_alter(rng: &mut ChaCha8Rng) -> WriteOp {
    let add = |table: &str, column: ColumnDef| WriteOp::AddColumn { table: table.into(), column };
    let rename =
        |from: &str, to: &str| WriteOp::RenameColumn { table: "notes".into(), from: from.into(), to: to.into() };
    match rng.random_range(0..13) {
        0 => add("notes", ColumnDef::new("extra", ColumnType::Text)),
        1 => add("notes", ColumnDef::new("extra", ColumnType::Integer)),
        2 => add(
            "notes",
            ColumnDef::new("tag", ColumnType::Text).not_null().default(format!("t{}", rng.random_range(0..2))),
        ),
        3 => add("devices", ColumnDef::new("unit", ColumnType::Text).default("C")),
        4 => rename("body", "content"),
        5 => rename("body", "text"),
        6 => rename("content", "body"),
        7 => WriteOp::DropColumn { table: "notes".into(), column: "body".into() },
        // The column the other concurrent definition of notes has: its rows hold values
        // under this id already.
        9 => add("notes", ColumnDef::new("flag", ColumnType::Boolean).default(false)),
        10 => WriteOp::CreateIndex { schema: IndexSchema::new("by_extra", "notes", &["extra"]), if_not_exists: true },
        11 => WriteOp::DropIndex { name: "by_extra".into(), if_exists: true },
        8 => WriteOp::DropColumn { table: "notes".into(), column: "extra".into() },
        _ => rename("extra", "more"),
    }
}

struct Case {
    rng: ChaCha8Rng,
    replicas: Vec<Replica>,
    /// Batches of encoded changes in flight: (receiver, changes).
    network: Vec<(usize, Vec<Vec<u8>>)>,
    now_ms: i64,
    writes_ok: usize,
    writes_refused: usize,
    _dir: TempDir,
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dir = TempDir::new().unwrap();
        let count = rng.random_range(3..=5);
        let replicas: Vec<Replica> = (0..count)
            .map(|i| {
                let node = NodeId::from_public_key(&[i as u8, (seed & 0xFF) as u8]);
                Replica::open(dir.path().join(format!("r{i}.redb")), node).unwrap()
            })
            .collect();
        Case { rng, replicas, network: Vec::new(), now_ms: 0, writes_ok: 0, writes_refused: 0, _dir: dir }
    }

    fn local_write(&mut self) {
        let at = self.rng.random_range(0..self.replicas.len());
        let mut batch = WriteBatch::new();
        // Every replica may create the shared table itself: identical concurrent DDL.
        if self.replicas[at].catalog().table("devices").is_none() {
            batch.ops.push(WriteOp::CreateTable { schema: devices(), if_not_exists: true });
            batch.ops.push(WriteOp::CreateTable { schema: log(), if_not_exists: true });
        }
        for _ in 0..self.rng.random_range(1..=3) {
            batch.ops.push(random_op(&mut self.rng));
        }
        self.now_ms += 1;
        match self.replicas[at].write(batch, self.now_ms) {
            Ok(_) => self.writes_ok += 1,
            // Refused batches (duplicate key, missing row, ...) are part of the workload.
            Err(_) => self.writes_refused += 1,
        }
    }

    /// Puts what `to` lacks from `from` on the network, split, shuffled and duplicated.
    fn send(&mut self) {
        let from = self.rng.random_range(0..self.replicas.len());
        let to = (from + self.rng.random_range(1..self.replicas.len())) % self.replicas.len();
        let vector = self.replicas[to].version_vector().clone();
        let mut changes = self.replicas[from].changes_since(&vector, 64, 1 << 20).unwrap().changes;
        changes.shuffle(&mut self.rng);
        while !changes.is_empty() {
            let take = self.rng.random_range(1..=changes.len());
            let batch: Vec<_> = changes.drain(..take).collect();
            if self.rng.random_bool(0.2) {
                self.network.push((to, batch.clone()));
            }
            self.network.push((to, batch));
        }
    }

    fn deliver(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let (to, batch) = self.network.swap_remove(self.rng.random_range(0..self.network.len()));
        if self.rng.random_bool(0.15) {
            return; // lost
        }
        self.replicas[to].apply_remote(batch).unwrap();
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            match self.rng.random_range(0..10) {
                0..=4 => self.local_write(),
                5..=6 => self.send(),
                _ => self.deliver(),
            }
        }
    }

    /// Heals the network: every pair exchanges everything, resending what was lost.
    fn quiesce(&mut self) {
        let n = self.replicas.len();
        for _round in 0..2 {
            for from in 0..n {
                for to in (0..n).filter(|&to| to != from) {
                    sync_pair(&mut self.replicas, from, to);
                }
            }
        }
    }
}

/// Sends `to` everything `from` has that it lacks, in bounded batches.
fn sync_pair(replicas: &mut [Replica], from: usize, to: usize) {
    loop {
        let vector = replicas[to].version_vector().clone();
        let batch = replicas[from].changes_since(&vector, 256, 1 << 20).unwrap();
        if batch.changes.is_empty() {
            return;
        }
        replicas[to].apply_remote(batch.changes).unwrap();
    }
}

/// Everything a user can observe, for comparing replicas.
#[derive(Debug, PartialEq)]
struct Observed {
    digest: String,
    tables: Vec<(String, Vec<Vec<Value>>)>,
    conflicts: String,
    unique_conflicts: String,
    catalog: String,
    pending: u64,
}

fn observe(replica: &Replica) -> Observed {
    let snapshot = replica.snapshot().unwrap();
    let tables = snapshot
        .catalog()
        .live_tables()
        .map(|t| {
            let rows = snapshot.scan(&t.schema.name).unwrap().map(Result::unwrap).collect();
            (t.schema.name.clone(), rows)
        })
        .collect();
    Observed {
        digest: replica.state_digest().unwrap().to_string(),
        tables,
        conflicts: format!("{:?}", snapshot.all_conflicts().unwrap()),
        unique_conflicts: format!("{:?}", snapshot.unique_conflicts().unwrap()),
        catalog: format!("{:?}", snapshot.catalog()),
        pending: replica.pending_changes().unwrap(),
    }
}

fn check_converged(case: &mut Case, seed: u64) {
    case.quiesce();
    let first_vector = case.replicas[0].version_vector().clone();
    let expected = observe(&case.replicas[0]);
    for (i, replica) in case.replicas.iter().enumerate() {
        assert_eq!(replica.version_vector(), &first_vector, "seed {seed}: replica {i} vector differs");
        assert_eq!(observe(replica), expected, "seed {seed}: replica {i} diverged");
        let problems = replica.check_integrity().unwrap();
        assert!(problems.is_empty(), "seed {seed}: replica {i} integrity: {problems:?}");
    }
    assert_eq!(expected.pending, 0, "seed {seed}: changes left pending");
    // A fresh replica that receives the whole log at once derives the same state.
    let dir = TempDir::new().unwrap();
    let mut fresh = Replica::open(dir.path().join("fresh.redb"), NodeId([0xEE; 16])).unwrap();
    let all = case.replicas[0].changes_since(&VersionVector::new(), usize::MAX, usize::MAX).unwrap();
    fresh.apply_remote(all.changes).unwrap();
    assert_eq!(observe(&fresh), expected, "seed {seed}: one-batch replay differs");
}

fn base_seed() -> u64 {
    match std::env::var("EDGESTORE_SEED") {
        Ok(seed) => seed.parse().expect("EDGESTORE_SEED is a u64"),
        Err(_) => 0x5EED_0001,
    }
}

fn case_count() -> u64 {
    if std::env::var("EDGESTORE_SEED").is_ok() {
        return 1;
    }
    std::env::var("EDGESTORE_CASES").map(|n| n.parse().expect("EDGESTORE_CASES is a number")).unwrap_or(48)
}

#[test]
fn replicas_converge_under_reordering_duplication_and_loss() {
    let base = base_seed();
    let cases = case_count();
    println!("convergence: base seed {base}, {cases} cases (replay one with EDGESTORE_SEED=<seed>)");
    let (mut writes_ok, mut writes_refused, mut conflicts, mut unique_conflicts) = (0, 0, 0, 0);
    let (mut added_columns, mut dropped_columns, mut lost_alters) = (0, 0, 0);
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        let mut case = Case::new(seed);
        case.run(160);
        check_converged(&mut case, seed);
        writes_ok += case.writes_ok;
        writes_refused += case.writes_refused;
        let snapshot = case.replicas[0].snapshot().unwrap();
        conflicts += snapshot.all_conflicts().unwrap().len();
        unique_conflicts += snapshot.unique_conflicts().unwrap().len();
        for table in snapshot.catalog().live_tables() {
            added_columns += table.schema.columns.iter().filter(|c| c.added).count();
            dropped_columns += table.schema.columns.iter().filter(|c| c.dropped).count();
            lost_alters += table.conflict.as_ref().map_or(0, |c| c.alters.len());
        }
    }
    println!(
        "convergence: {cases} cases passed; {writes_ok} batches acknowledged, {writes_refused} refused, \
         {conflicts} conflicted rows, {unique_conflicts} unique conflicts, {added_columns} added columns, \
         {dropped_columns} dropped columns and {lost_alters} lost ALTERs at the end"
    );
    assert!(writes_ok > cases as usize * 20, "the workload must mostly succeed");
}
