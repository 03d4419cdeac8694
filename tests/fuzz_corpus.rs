//! The fuzz corpus on stable: `replay_fuzz_corpus` runs every input in
//! `fuzz/corpus/change_envelope/` and `fuzz/regressions/change_envelope/` through the fuzz
//! target's entry point, `edgestore::fuzzing::apply_change_envelope`, so a fixed crash
//! stays fixed without a nightly toolchain.
//!
//! `regenerate_seed_corpus` (ignored; run by hand) writes the seed envelopes:
//! `cargo test --test fuzz_corpus -- --ignored regenerate_seed_corpus`.
//! The fuzz harness's replica is node `[1; 16]` holding table `t(id INTEGER PK, v TEXT,
//! n COUNTER)` and row 1, written at time 0. The seeds are envelopes of other nodes: some
//! that saw that state (so their first envelope applies there), some that create the same
//! table `t` on their own (a concurrent, identical definition that merges), and later
//! envelopes of both kinds, which the harness parks until their dependencies arrive.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use edgestore::fuzzing::apply_change_envelope;
use edgestore::{ColumnDef, ColumnType, IndexSchema, Replica, TableSchema, Value, VerifiedChange, WriteBatch};
use tempfile::TempDir;

mod common;
use common::{log_of, node, open};

/// Files `regenerate_seed_corpus` writes. The replay must see at least this many inputs,
/// so a missing or emptied corpus fails instead of passing vacuously.
const SEED_FILES: usize = 36;
/// Seed files are named `seed-<blake3 of the content>`; fuzzer-found inputs by their SHA-1.
const SEED_PREFIX: &str = "seed-";

fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join("change_envelope")
}

/// Every file in `dir`, sorted; none if the directory does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|entry| entry.expect("read a corpus entry").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

#[test]
fn replay_fuzz_corpus() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    for dir in [fuzz_dir("corpus"), fuzz_dir("regressions")] {
        for path in inputs(&dir) {
            let data = fs::read(&path).expect("read a corpus file");
            if catch_unwind(AssertUnwindSafe(|| apply_change_envelope(&data))).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
    }
    println!("replayed {replayed} fuzz inputs");
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
    assert!(
        replayed >= SEED_FILES,
        "replayed only {replayed} fuzz inputs, fewer than the {SEED_FILES} seeds: is fuzz/corpus/change_envelope/ missing?"
    );
}

// ---- seed generation -------------------------------------------------------------------

fn table_t() -> TableSchema {
    TableSchema::new("t")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Text))
        .column(ColumnDef::new("n", ColumnType::Counter))
        .primary_key(&["id"])
}

/// A table with every column type, a composite key, defaults and NOT NULL.
/// An append-only table bucketed by `at` (one bucket per hour).
fn table_log() -> TableSchema {
    let mut schema = TableSchema::new("log")
        .column(ColumnDef::new("at", ColumnType::Timestamp).not_null())
        .column(ColumnDef::new("msg", ColumnType::Text));
    schema.append = Some(edgestore::schema::AppendOptions {
        time_column: Some("at".into()),
        bucket: 3_600_000,
        retention: None,
        max_bytes: None,
    });
    schema
}

fn table_wide() -> TableSchema {
    TableSchema::new("wide")
        .column(ColumnDef::new("site", ColumnType::Text))
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("temp", ColumnType::Real))
        .column(ColumnDef::new("ok", ColumnType::Boolean).default(true))
        .column(ColumnDef::new("raw", ColumnType::Blob))
        .column(ColumnDef::new("at", ColumnType::Timestamp).not_null())
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .primary_key(&["site", "id"])
}

fn row(id: i64, v: &str) -> [(&'static str, Value); 2] {
    [("id", Value::from(id)), ("v", Value::from(v))]
}

fn wide_row(site: &str, id: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("site", Value::from(site)),
        ("id", Value::from(id)),
        ("temp", Value::from(id as f64 / 4.0)),
        ("raw", Value::from(vec![0u8, 1, 2, id as u8])),
        ("at", Value::Timestamp(1_700_000_000_000 + id)),
    ]
}

/// The harness's own state, written exactly as `apply_change_envelope` writes it, so the
/// envelope is byte-identical and other nodes can depend on it.
fn harness_batch() -> WriteBatch {
    WriteBatch::new().create_table(table_t()).insert("t", [("id", Value::from(1)), ("v", "a".into())])
}

/// Node `n` after receiving the harness's state.
fn synced(dir: &TempDir, harness: &Replica, n: u8) -> Replica {
    let mut replica = open(dir, n);
    let batch = harness.changes_since(replica.version_vector(), usize::MAX, usize::MAX).unwrap();
    replica.apply_remote(batch.changes).unwrap();
    replica
}

fn write(replica: &mut Replica, batch: WriteBatch) {
    let receipt = replica.write(batch, 1_000).expect("seed write");
    assert!(receipt.seq.is_some(), "a seed write must change something");
}

/// The envelopes `replica` wrote itself, in seq order.
fn own_log(replica: &Replica) -> Vec<Vec<u8>> {
    let origin = |bytes: &Vec<u8>| VerifiedChange::decode(bytes.clone()).expect("a valid envelope").origin;
    log_of(replica).into_iter().filter(|c| origin(c) == replica.node_id()).collect()
}

/// Every seed envelope, each with whether it must apply to the harness's replica
/// (`true`) or may be parked, a duplicate or refused (`false`).
fn seed_envelopes() -> Vec<(Vec<u8>, bool)> {
    let dir = TempDir::new().unwrap();
    let mut seeds = Vec::new();
    let harness = harness_replica(&dir.path().join("harness"));
    // Node 1's own envelope (a duplicate there), then node 1's next one (refused there: a
    // forgery in the harness's own name).
    seeds.extend(log_of(&harness).into_iter().map(|c| (c, false)));
    let mut twin = harness_replica(&dir.path().join("twin"));
    write(&mut twin, WriteBatch::new().update("t", vec![1.into()], [("v", Value::from("self"))]));
    seeds.extend(own_log(&twin).into_iter().skip(1).map(|c| (c, false)));

    // One batch each from nodes that saw the harness's state: seq 1, applies there.
    let one_batch: Vec<(u8, WriteBatch)> = vec![
        (3, WriteBatch::new().update("t", vec![1.into()], [("v", Value::from("b"))])),
        (4, WriteBatch::new().delete("t", vec![1.into()])),
        (5, WriteBatch::new().increment("t", vec![1.into()], "n", 5)),
        (
            6,
            WriteBatch::new().increment("t", vec![1.into()], "n", -3).update("t", vec![1.into()], [("v", Value::Null)]),
        ),
        (7, (2..12).fold(WriteBatch::new(), |b, id| b.insert("t", row(id, &format!("row {id}"))))),
        (8, WriteBatch::new().create_index(IndexSchema::new("by_v", "t", &["v"]))),
        (9, WriteBatch::new().upsert("t", row(1, "upserted")).upsert("t", row(2, "fresh"))),
        (10, WriteBatch::new().drop_table("t")),
        (11, WriteBatch::new().drop_table("t").create_table(table_t()).insert("t", row(1, "reborn"))),
        (
            12,
            WriteBatch::new()
                .create_table(table_wide())
                .create_index(IndexSchema::new("by_temp", "wide", &["temp", "ok"]))
                .insert("wide", wide_row("north", 1))
                .insert("wide", wide_row("south", -7))
                .increment("wide", vec!["north".into(), 1.into()], "hits", 9),
        ),
        (
            13,
            WriteBatch::new()
                .insert("t", row(2, "two"))
                .update("t", vec![1.into()], [("v", Value::from("one"))])
                .increment("t", vec![2.into()], "n", 1)
                .delete("t", vec![1.into()])
                .create_index(IndexSchema::new("by_n", "t", &["n"])),
        ),
        // An append-only table and its rows: an envelope of version 2 with a batch (kind 0x03).
        (
            40,
            (0..6).fold(WriteBatch::new().create_table(table_log()), |b, i| {
                b.insert("log", [("at", Value::Timestamp(i * 1_000_000)), ("msg", Value::from(format!("m{i}")))])
            }),
        ),
    ];
    for (n, batch) in one_batch {
        let mut replica = synced(&dir, &harness, n);
        write(&mut replica, batch);
        seeds.extend(own_log(&replica).into_iter().map(|c| (c, true)));
    }

    // Node 2 creates `t` on its own, identically (a concurrent create that merges), then
    // goes on: only its first envelope applies to the harness, the rest wait for it.
    let mut independent = open(&dir, 2);
    let history = vec![
        WriteBatch::new().create_table(table_t()),
        WriteBatch::new().insert("t", row(1, "concurrent")).insert("t", row(2, "b")),
        WriteBatch::new().update("t", vec![2.into()], [("v", Value::from("c"))]),
        WriteBatch::new().increment("t", vec![2.into()], "n", 7),
        WriteBatch::new().delete("t", vec![2.into()]),
        WriteBatch::new().create_index(IndexSchema::new("by_v", "t", &["v"])),
        (10..20).fold(WriteBatch::new(), |b, id| b.insert("t", row(id, "batch"))),
        WriteBatch::new().insert("t", row(2, "revived")),
        WriteBatch::new().drop_index("by_v"),
        WriteBatch::new().drop_table("t"),
        WriteBatch::new().create_table(table_t()).insert("t", row(1, "epoch 3")),
    ];
    for batch in history {
        write(&mut independent, batch);
    }
    let log2 = own_log(&independent);
    seeds.extend(log2.iter().enumerate().map(|(i, c)| (c.clone(), i == 0)));

    // Single envelopes that apply on their own: an independent identical create with rows
    // (concurrent insert of row 1), and a different definition of `t` (a DDL conflict).
    let mut n14 = open(&dir, 14);
    write(
        &mut n14,
        WriteBatch::new()
            .create_table(table_t())
            .insert("t", row(1, "mine"))
            .insert("t", row(3, "three"))
            .increment("t", vec![3.into()], "n", 2)
            .create_index(IndexSchema::new("by_v", "t", &["v"])),
    );
    seeds.extend(own_log(&n14).into_iter().map(|c| (c, true)));
    let mut n15 = open(&dir, 15);
    let other_t = TableSchema::new("t")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("v", ColumnType::Integer))
        .column(ColumnDef::new("extra", ColumnType::Text).default("x"))
        .primary_key(&["id"]);
    write(&mut n15, WriteBatch::new().create_table(other_t).insert("t", [("id", Value::from(1)), ("v", 5.into())]));
    seeds.extend(own_log(&n15).into_iter().map(|c| (c, true)));

    // A node that saw the harness and node 2, and writes a few batches: its first envelope
    // depends on node 2's whole history, so it waits in the harness.
    let mut n16 = synced(&dir, &harness, 16);
    n16.apply_remote(log2.clone()).unwrap();
    write(&mut n16, WriteBatch::new().update("t", vec![1.into()], [("v", Value::from("merged"))]));
    write(&mut n16, WriteBatch::new().insert("t", row(40, "forty")).increment("t", vec![40.into()], "n", 4));
    write(&mut n16, WriteBatch::new().delete("t", vec![40.into()]));
    seeds.extend(own_log(&n16).into_iter().map(|c| (c, false)));

    // A chain from a node that saw the harness: seq 1 applies, later ones wait.
    let mut n17 = synced(&dir, &harness, 17);
    let chain = vec![
        WriteBatch::new().insert("t", row(2, "x")),
        WriteBatch::new().update("t", vec![2.into()], [("v", Value::from("y"))]),
        WriteBatch::new().increment("t", vec![1.into()], "n", 100),
        WriteBatch::new().delete("t", vec![2.into()]),
        WriteBatch::new().create_index(IndexSchema::new("by_v", "t", &["v"])).insert("t", row(3, "indexed")),
        WriteBatch::new().drop_index("by_v").insert("t", row(2, "again")),
    ];
    for batch in chain {
        write(&mut n17, batch);
    }
    seeds.extend(own_log(&n17).into_iter().enumerate().map(|(i, c)| (c, i == 0)));
    seeds
}

/// The harness's replica, as `apply_change_envelope` builds it.
fn harness_replica(dir: &Path) -> Replica {
    fs::create_dir_all(dir).unwrap();
    let mut replica = Replica::open(dir.join("harness.redb"), node(1)).expect("open the harness replica");
    replica.write(harness_batch(), 0).expect("harness write");
    replica
}

#[test]
#[ignore = "writes the seed corpus; run by hand when the envelope or document format changes"]
fn regenerate_seed_corpus() {
    let seeds = seed_envelopes();
    let dir = fuzz_dir("corpus");
    fs::create_dir_all(&dir).unwrap();
    let mut names = BTreeSet::new();
    for (index, (bytes, must_apply)) in seeds.iter().enumerate() {
        let scratch = TempDir::new().unwrap();
        let mut harness = harness_replica(scratch.path());
        let report = harness.apply_remote(vec![bytes.clone()]);
        if *must_apply {
            assert_eq!(report.as_ref().ok().map(|r| r.applied), Some(1), "seed {index} must apply: {report:?}");
        }
        assert!(harness.check_integrity().unwrap().is_empty());
        drop(harness);
        apply_change_envelope(bytes);
        let name = format!("{SEED_PREFIX}{}", blake3::hash(bytes).to_hex());
        fs::write(dir.join(&name), bytes).unwrap();
        names.insert(name);
    }
    println!("wrote {} seed files to {}", names.len(), dir.display());
    assert_eq!(names.len(), SEED_FILES, "update SEED_FILES");
}
