//! The memory budget, the maintained digest and the storage breakdown, through the public
//! API on real redb files: replicas with a 1 MiB budget (document cache and redb's page
//! cache both far smaller than the data) write, read and merge exactly like a replica with
//! the default budget; the digest kept in `digest_v1` survives reopening, is rebuilt for a
//! store of the previous format, and `check_integrity` catches it disagreeing with the
//! data; `storage_stats` counts what is stored.

use std::collections::BTreeMap;

use edgestore::error::OpenError;
use edgestore::replica::{CACHE_BYTES_MIN, DOC_CACHE_ENTRY_BYTES};
use edgestore::{
    ColumnDef, ColumnType, IndexSchema, IntegrityProblem, NodeId, OpenOptions, Replica, TableSchema, Value, WriteBatch,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tempfile::TempDir;

const TINY: OpenOptions = OpenOptions { cache_bytes: 1 << 20 };
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const DIGEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("digest_v1");
const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows_v1");

fn open(dir: &TempDir, n: u8, options: &OpenOptions) -> Replica {
    Replica::open_with(dir.path().join(format!("node{n}.redb")), NodeId([n; 16]), options).unwrap()
}

fn readings() -> TableSchema {
    TableSchema::new("readings")
        .column(ColumnDef::new("id", ColumnType::Integer))
        .column(ColumnDef::new("sensor", ColumnType::Integer))
        .column(ColumnDef::new("value", ColumnType::Real))
        .column(ColumnDef::new("hits", ColumnType::Counter))
        .primary_key(&["id"])
}

fn by_sensor() -> IndexSchema {
    IndexSchema::new("readings_by_sensor", "readings", &["sensor"])
}

/// A row as the model holds it: sensor, value, hits.
type Model = BTreeMap<i64, (i64, f64, i64)>;

/// One random batch of inserts, updates (a few hot rows most often, so their documents
/// reach snapshots), increments and deletes, applied to `model` too.
fn random_batch(rng: &mut ChaCha8Rng, model: &mut Model, next_id: &mut i64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..rng.random_range(1..40) {
        let existing: Vec<i64> = model.keys().copied().collect();
        let pick = |rng: &mut ChaCha8Rng| {
            if rng.random_bool(0.5) {
                existing[rng.random_range(0..existing.len().min(8))]
            } else {
                existing[rng.random_range(0..existing.len())]
            }
        };
        let choice = if existing.is_empty() { 0 } else { rng.random_range(0..10) };
        match choice {
            0..=3 => {
                *next_id += 1;
                let row = (rng.random_range(0..20), rng.random_range(0..1000) as f64 / 4.0, 0);
                batch = batch.insert(
                    "readings",
                    [("id", Value::from(*next_id)), ("sensor", row.0.into()), ("value", Value::Real(row.1))],
                );
                model.insert(*next_id, row);
                touched.insert(*next_id);
            }
            4..=6 => {
                let id = pick(rng);
                if !touched.insert(id) {
                    continue;
                }
                let value = rng.random_range(0..1000) as f64 / 4.0;
                batch = batch.update("readings", vec![id.into()], [("value", Value::Real(value))]);
                model.get_mut(&id).expect("exists").1 = value;
            }
            7 | 8 => {
                let id = pick(rng);
                if !touched.insert(id) {
                    continue;
                }
                let by = rng.random_range(1..5);
                batch = batch.increment("readings", vec![id.into()], "hits", by);
                model.get_mut(&id).expect("exists").2 += by;
            }
            _ => {
                let id = existing[rng.random_range(0..existing.len())];
                if id <= 8 || !touched.insert(id) {
                    continue; // keep the hot rows alive
                }
                batch = batch.delete("readings", vec![id.into()]);
                model.remove(&id);
            }
        }
    }
    batch
}

fn assert_matches_model(replica: &Replica, model: &Model) {
    let snapshot = replica.snapshot().unwrap();
    let rows: Vec<Vec<Value>> = snapshot.scan("readings").unwrap().map(Result::unwrap).collect();
    let expected: Vec<Vec<Value>> = model
        .iter()
        .map(|(id, (sensor, value, hits))| vec![(*id).into(), (*sensor).into(), Value::Real(*value), (*hits).into()])
        .collect();
    assert_eq!(rows, expected);
    for sensor in [0, 7, 19] {
        let found = snapshot.index_lookup("readings_by_sensor", &[sensor.into()]).unwrap().len();
        assert_eq!(found, model.values().filter(|row| row.0 == sensor).count(), "sensor {sensor}");
    }
}

fn sync(from: &Replica, to: &mut Replica) {
    let batch = from.changes_since(to.version_vector(), usize::MAX, usize::MAX).unwrap();
    to.apply_remote(batch.changes).unwrap();
}

#[test]
fn a_one_mib_budget_writes_reads_and_merges_like_the_default() {
    let seed = 0xB0D6_E701;
    println!("seed {seed:#x}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = TempDir::new().unwrap();
    let mut a = open(&dir, 1, &TINY);
    a.write(WriteBatch::new().create_table(readings()).create_index(by_sensor()), 0).unwrap();
    let (mut model, mut next_id) = (Model::new(), 0);
    for step in 0..300 {
        let batch = random_batch(&mut rng, &mut model, &mut next_id);
        a.write(batch, step).unwrap();
        let figures = a.cache_figures();
        assert!(figures.doc_cache_bytes <= figures.doc_cache_bytes_max, "{figures:?}");
    }
    assert_matches_model(&a, &model);
    let figures = a.cache_figures();
    assert!(next_id as usize > figures.doc_cache_docs, "the cache held every document: {figures:?}");
    assert_eq!(a.check_integrity().unwrap(), vec![]);

    // B (1 MiB) and C (default budget) take A's changes in small chunks, then all three
    // write concurrently and exchange everything.
    let mut b = open(&dir, 2, &TINY);
    let mut c = open(&dir, 3, &OpenOptions::default());
    loop {
        let chunk = a.changes_since(b.version_vector(), 7, usize::MAX).unwrap();
        b.apply_remote(chunk.changes.clone()).unwrap();
        c.apply_remote(chunk.changes).unwrap();
        if chunk.complete {
            break;
        }
    }
    for (i, replica) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let (mut scratch, mut id) = (model.clone(), 1_000_000 * (i as i64 + 1));
        for step in 0..20 {
            replica.write(random_batch(&mut rng, &mut scratch, &mut id), 1000 + step).unwrap();
        }
    }
    for _ in 0..2 {
        sync(&a, &mut b);
        sync(&b, &mut c);
        sync(&c, &mut a);
    }
    sync(&a, &mut b);
    let digest = a.state_digest().unwrap();
    for replica in [&a, &b, &c] {
        assert_eq!(replica.state_digest().unwrap(), digest, "{replica:?}");
        assert_eq!(replica.heads_tree().unwrap(), a.heads_tree().unwrap());
        assert_eq!(replica.check_integrity().unwrap(), vec![], "{replica:?}");
    }
    let rows = |r: &Replica| r.snapshot().unwrap().scan("readings").unwrap().count();
    assert_eq!(rows(&b), rows(&c));
}

#[test]
fn a_budget_below_the_minimum_is_refused() {
    let dir = TempDir::new().unwrap();
    let options = OpenOptions { cache_bytes: CACHE_BYTES_MIN - 1 };
    let error = Replica::open_with(dir.path().join("s.redb"), NodeId([1; 16]), &options).unwrap_err();
    assert!(
        matches!(error, OpenError::CacheTooSmall { bytes, min_bytes } if bytes == CACHE_BYTES_MIN - 1 && min_bytes == CACHE_BYTES_MIN)
    );
    assert!(!error.to_string().is_empty());
    assert!(OpenOptions::default().doc_cache_bytes() > DOC_CACHE_ENTRY_BYTES * 1000);
}

/// A store with rows, an index, a conflict, a dropped and re-created table.
fn populated(dir: &TempDir) -> Replica {
    let mut a = open(dir, 1, &OpenOptions::default());
    let mut b = open(dir, 2, &OpenOptions::default());
    a.write(WriteBatch::new().create_table(readings()).create_index(by_sensor()), 0).unwrap();
    let mut batch = WriteBatch::new();
    for id in 0..300 {
        batch = batch.insert("readings", [("id", Value::from(id)), ("sensor", (id % 7).into())]);
    }
    a.write(batch, 1).unwrap();
    sync(&a, &mut b);
    a.write(WriteBatch::new().update("readings", vec![5.into()], [("value", Value::Real(1.0))]), 2).unwrap();
    b.write(WriteBatch::new().update("readings", vec![5.into()], [("value", Value::Real(2.0))]), 2).unwrap();
    sync(&b, &mut a);
    let scratch = TableSchema::new("scratch").column(ColumnDef::new("k", ColumnType::Integer)).primary_key(&["k"]);
    a.write(WriteBatch::new().create_table(scratch.clone()).insert("scratch", [("k", Value::from(1))]), 3).unwrap();
    a.write(WriteBatch::new().drop_table("scratch"), 4).unwrap();
    a.write(WriteBatch::new().create_table(scratch).insert("scratch", [("k", Value::from(2))]), 5).unwrap();
    a
}

#[test]
fn the_digest_of_a_store_of_the_previous_format_is_built_on_open() {
    let dir = TempDir::new().unwrap();
    let a = populated(&dir);
    let (digest, tree) = (a.state_digest().unwrap(), a.heads_tree().unwrap());
    let path = dir.path().join("node1.redb");
    drop(a);
    {
        // What a store of format 1 looks like: no digest_v1 entries.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(DIGEST).unwrap().retain(|_, _| false).unwrap();
        txn.open_table(META).unwrap().insert("format_version", 1u32.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let a = Replica::open(&path, NodeId([1; 16])).unwrap();
    assert_eq!(a.state_digest().unwrap(), digest);
    assert_eq!(a.heads_tree().unwrap(), tree);
    assert_eq!(a.check_integrity().unwrap(), vec![]);
    drop(a);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get("format_version").unwrap().unwrap().value().to_vec();
    assert_eq!(format, 2u32.to_be_bytes(), "the upgrade is recorded");
}

#[test]
fn check_integrity_reports_a_maintained_digest_that_disagrees_with_the_data() {
    let dir = TempDir::new().unwrap();
    let a = populated(&dir);
    let path = dir.path().join("node1.redb");
    drop(a);
    {
        // A row changed behind the replica's back: its record, not its digest part.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            let (key, value) = {
                let (key, value) = rows.first().unwrap().unwrap();
                (key.value().to_vec(), value.value().to_vec())
            };
            let mut changed = value.clone();
            *changed.last_mut().unwrap() ^= 1;
            rows.insert(key.as_slice(), changed.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let a = Replica::open(&path, NodeId([1; 16])).unwrap();
    let problems = a.check_integrity().unwrap();
    let digest_problems: Vec<_> = problems.iter().filter(|p| matches!(p, IntegrityProblem::Digest { .. })).collect();
    assert_eq!(digest_problems.len(), 1, "{problems:?}");
    // The first row in key order is the `scratch` table's (shorter name).
    assert!(digest_problems[0].to_string().contains("rows of scratch"), "{problems:?}");
}

#[test]
fn the_digest_survives_reopening_and_tracks_every_kind_of_change() {
    let dir = TempDir::new().unwrap();
    let a = populated(&dir);
    let digest = a.state_digest().unwrap();
    drop(a);
    let mut a = open(&dir, 1, &TINY);
    assert_eq!(a.state_digest().unwrap(), digest);
    // Delete, then re-insert with the same values: a new document history, so the digest
    // moves on; dropping the index changes the catalog part.
    a.write(WriteBatch::new().delete("readings", vec![7.into()]), 10).unwrap();
    let deleted = a.state_digest().unwrap();
    assert_ne!(deleted, digest);
    a.write(WriteBatch::new().insert("readings", [("id", Value::from(7)), ("sensor", Value::from(0))]), 11).unwrap();
    assert_ne!(a.state_digest().unwrap(), deleted);
    a.write(WriteBatch::new().drop_index("readings_by_sensor"), 12).unwrap();
    a.write(WriteBatch::new().drop_table("readings"), 13).unwrap();
    assert_eq!(a.check_integrity().unwrap(), vec![]);
}

#[test]
fn storage_stats_count_what_is_stored() {
    let dir = TempDir::new().unwrap();
    let a = populated(&dir);
    let stats = a.snapshot().unwrap().storage_stats().unwrap();
    let names: Vec<&str> = stats.redb_tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 17, "{names:?}");
    assert!(
        names.contains(&"digest_v1")
            && names.contains(&"append_blocks_v1")
            && names.contains(&"append_tombstones_v1")
            && names.contains(&"append_keys_v1")
            && names.contains(&"log_v1")
            && names.contains(&"holders_v1")
            && names.contains(&"dead_letters_v1"),
        "{names:?}"
    );
    let table = |name: &str| stats.redb_tables.iter().find(|t| t.name == name).unwrap().clone();
    assert_eq!(table("rows_v1").entries, 301);
    assert_eq!(table("log_v1").entries, 7);
    for t in &stats.redb_tables {
        assert!(t.entries == 0 || t.stored_bytes > 0, "{t:?}");
    }
    let readings = stats.user_tables.iter().find(|t| t.name == "readings").unwrap();
    assert!(readings.live);
    assert_eq!((readings.rows, readings.documents, readings.index_entries, readings.conflicts), (300, 300, 300, 1));
    assert_eq!(readings.implicit_docs, 299, "rows only ever inserted are described, not stored");
    assert_eq!(readings.tail_changes, 3, "the conflicting row stores its insert and two concurrent updates");
    assert!(readings.bytes_per_row().unwrap() > readings.row_bytes as f64 / 300.0);
    let scratch = stats.user_tables.iter().find(|t| t.name == "scratch").unwrap();
    assert_eq!((scratch.rows, scratch.documents), (1, 2), "documents of both incarnations are kept");
    assert_eq!(
        (scratch.implicit_docs, scratch.tail_changes),
        (1, 1),
        "the dropped incarnation's row was stored by the drop (its record is gone); the live one is implicit"
    );
    assert!(stats.allocated_bytes() >= stats.redb_tables.iter().map(|t| t.stored_bytes).sum::<u64>());
}
