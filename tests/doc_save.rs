//! The background document save (docs/design.md § "Document save") on real redb files:
//! saving keeps every row, every document's heads, the digest and integrity; each step is
//! one transaction, so a crash image taken between steps is a healthy store; it works
//! with a 1 MiB cache; saved documents updated on both sides still sync and merge.

use edgestore::{DocHeads, OpenOptions, Replica, Row, StateDigest, Value, WriteBatch, SAVE_TAIL_CHANGES_MIN};
use tempfile::TempDir;

mod common;
use common::{assert_healthy, insert, node, open, sensors, sync};

/// Everything saving must leave as it was: the rows, every document's heads, the digest.
#[derive(Debug, PartialEq)]
struct Observed {
    rows: Vec<Row>,
    heads: Vec<DocHeads>,
    digest: StateDigest,
}

fn observe(replica: &Replica) -> Observed {
    let snapshot = replica.snapshot().unwrap();
    let rows = snapshot.scan("sensors").unwrap().map(Result::unwrap).collect();
    let (heads, complete) = replica.heads_in_range(0, 0, usize::MAX).unwrap();
    assert!(complete);
    Observed { rows, heads, digest: replica.state_digest().unwrap() }
}

/// Tail changes and saved documents of `sensors`, as `storage_stats` counts them.
fn stored_form(replica: &Replica) -> (u64, u64) {
    stored_forms(replica).0
}

/// (tail changes, snapshots) and implicit documents of `sensors`.
fn stored_forms(replica: &Replica) -> ((u64, u64), u64) {
    let stats = replica.snapshot().unwrap().storage_stats().unwrap();
    let table = stats.user_tables.iter().find(|t| t.name == "sensors").unwrap();
    ((table.tail_changes, table.snapshots), table.implicit_docs)
}

/// Rows 1..=`rows`, row `id` renamed `id % 7` times: tails of 1 to 7 changes.
fn write_rows(replica: &mut Replica, rows: i64) {
    replica.write(WriteBatch::new().create_table(sensors()), 1).unwrap();
    for id in 1..=rows {
        replica.write(insert(id, "new"), id).unwrap();
        for update in 0..id % 7 {
            let name = Value::from(format!("{id}.{update}"));
            replica.write(WriteBatch::new().update("sensors", vec![Value::from(id)], [("name", name)]), id).unwrap();
        }
    }
}

/// Steps of at most `docs_max` documents until the save is complete; the steps taken.
fn save_all(replica: &mut Replica, docs_max: usize) -> usize {
    for steps in 1..10_000 {
        if replica.save_docs_step(docs_max).unwrap().complete {
            return steps;
        }
    }
    panic!("the document save never completed");
}

#[test]
fn saving_keeps_rows_heads_digest_and_integrity() {
    let dir = TempDir::new().unwrap();
    let mut replica = open(&dir, 1);
    write_rows(&mut replica, 40);
    let before = observe(&replica);
    let rows_with_tails: u64 = (1..=40).filter(|id| id % 7 + 1 >= i64::from(SAVE_TAIL_CHANGES_MIN)).count() as u64;
    assert_eq!(stored_form(&replica).1, 0, "nothing saved yet");
    let steps = save_all(&mut replica, 3);
    assert!(steps > rows_with_tails as usize / 3, "at most 3 documents per step");
    assert_eq!(observe(&replica), before);
    assert_healthy(&replica);
    // Rows written once are implicit: nothing stored but their heads entry (saved whole
    // their one change would be larger).
    let written_once = 40 - rows_with_tails;
    assert_eq!(stored_forms(&replica), ((0, rows_with_tails), written_once));
    // Complete: the next step examines nothing, until a tail grows again.
    let idle = replica.save_docs_step(3).unwrap();
    assert!(idle.complete && idle.docs_examined == 0, "{idle:?}");
    for name in ["a", "b"] {
        let set = [("name", Value::from(name))];
        replica.write(WriteBatch::new().update("sensors", vec![Value::from(6)], set), 99).unwrap();
    }
    let after_writes = observe(&replica);
    let report = replica.save_docs_step(100).unwrap();
    assert_eq!((report.docs_saved, report.tail_changes_removed), (1, 2), "{report:?}");
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    assert_eq!(observe(&replica), after_writes);
    assert_healthy(&replica);
    // Reopened, the saved documents load from their snapshots alone.
    drop(replica);
    let replica = open(&dir, 1);
    assert_eq!(observe(&replica), after_writes);
    assert_healthy(&replica);
}

#[test]
fn a_crash_image_between_steps_is_a_healthy_store_that_resumes() {
    let dir = TempDir::new().unwrap();
    let mut replica = open(&dir, 1);
    write_rows(&mut replica, 30);
    let before = observe(&replica);
    let path = dir.path().join("node1.redb");
    for step in 0.. {
        let complete = replica.save_docs_step(2).unwrap().complete;
        // Each step committed durably: the file now is what a kill -9 would leave.
        let image = dir.path().join(format!("image{step}.redb"));
        std::fs::copy(&path, &image).unwrap();
        let mut crashed = Replica::open(&image, node(1)).unwrap();
        assert_eq!(observe(&crashed), before, "step {step}");
        assert_healthy(&crashed);
        if step % 4 == 0 {
            // A restarted node starts a new pass and finishes what the crash left.
            save_all(&mut crashed, 5);
            assert_eq!(observe(&crashed), before);
            assert_healthy(&crashed);
        }
        if complete {
            break;
        }
    }
}

#[test]
fn saving_works_with_a_1_mib_cache() {
    let dir = TempDir::new().unwrap();
    let options = OpenOptions { cache_bytes: 1 << 20 };
    let mut small = Replica::open_with(dir.path().join("small.redb"), node(1), &options).unwrap();
    write_rows(&mut small, 300);
    let before = observe(&small);
    save_all(&mut small, 64);
    assert_eq!(observe(&small), before);
    assert_healthy(&small);
    // Writes after the save append to the saved documents' (now empty) tails.
    for id in (1..=300).step_by(11) {
        let set = [("name", Value::from("after"))];
        small.write(WriteBatch::new().update("sensors", vec![Value::from(id)], set), 500).unwrap();
    }
    save_all(&mut small, 64);
    assert_healthy(&small);
    let mut reference = open(&dir, 2);
    sync(&small, &mut reference);
    assert_eq!(observe(&reference), observe(&small));
}

#[test]
fn saved_documents_updated_on_both_sides_still_merge() {
    let dir = TempDir::new().unwrap();
    let (mut a, mut b, mut never_saves) = (open(&dir, 1), open(&dir, 2), open(&dir, 3));
    write_rows(&mut a, 20);
    sync(&a, &mut b);
    save_all(&mut a, 4);
    save_all(&mut b, 7);
    // Concurrent edits of saved documents: the same column, and a counter on both sides.
    for (replica, name) in [(&mut a, "from a"), (&mut b, "from b")] {
        for id in 1..=20 {
            let key = vec![Value::from(id)];
            let batch = WriteBatch::new()
                .update("sensors", key.clone(), [("name", Value::from(name))])
                .increment("sensors", key, "hits", 2);
            replica.write(batch, 1000 + id).unwrap();
        }
    }
    save_all(&mut a, 4);
    sync(&a, &mut b);
    sync(&b, &mut a);
    save_all(&mut b, 7);
    sync(&a, &mut never_saves);
    sync(&b, &mut never_saves);
    let merged = observe(&never_saves);
    assert_eq!(observe(&a), merged);
    assert_eq!(observe(&b), merged);
    let hits = merged.rows.iter().map(|row| row[2].clone()).collect::<Vec<_>>();
    assert!(hits.iter().all(|h| *h == Value::from(4)), "concurrent increments add up: {hits:?}");
    for replica in [&a, &b, &never_saves] {
        assert_healthy(replica);
    }
}
