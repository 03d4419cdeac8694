//! How much memory a loaded row document holds, next to the bytes it is stored in: the
//! measurement behind the document cache's estimate (`src/replica/cache.rs`,
//! `DOC_CACHE_ENTRY_BYTES` + `DOC_CACHE_CHANGE_BYTES` × changes held).
//!
//! For each shape of document — a row inserted once (stored as one tail change), updated
//! 9 times (a 10-change tail), 63 times (saved whole), 127 and 159 times (saved, plus a
//! tail) — a fresh process loads thousands of them the way the replica does, keeps them in
//! memory, and divides the growth of its resident memory (VmRSS) by their number.
//! `cargo run --example doc_memory`.
//!
//! First it prints what a document of 1, 2, 3, 6, 10 and 64 changes costs on disk kept as raw
//! tail changes next to saved whole (`save()`): the measurement behind the background
//! document save (docs/design.md § "Document save").

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ScalarValue, ROOT};

/// Documents loaded per shape; fewer for the large shapes, so a shape stays ~1 GB at most.
const DOCS: usize = 20_000;

/// Shapes: (updates after the insert, documents loaded). Snapshots are written as the
/// replica writes them, when the tail reaches 64 changes.
const SHAPES: [(i64, usize); 5] = [(0, DOCS), (9, DOCS), (63, DOCS / 4), (127, DOCS / 4), (159, DOCS / 4)];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [updates, docs] = args.as_slice() {
        return measure(updates.parse().expect("updates"), docs.parse().expect("docs"));
    }
    print_saved_sizes();
    println!("doc_memory: each shape in a fresh process; memory = growth of VmRSS / documents loaded");
    for (updates, docs) in SHAPES {
        let status = std::process::Command::new(std::env::current_exe().expect("this program's path"))
            .args([updates.to_string(), docs.to_string()])
            .status()
            .expect("running a shape");
        assert!(status.success());
    }
}

fn measure(updates: i64, count: usize) {
    let (snapshot, tail) = row_doc(updates, 64);
    let tail_bytes: usize = tail.iter().map(Vec::len).sum();
    let before = rss_kib();
    let docs: Vec<AutoCommit> = (0..count).map(|_| load(&snapshot, &tail)).collect();
    let after = rss_kib();
    let per_doc = (after - before) as f64 * 1024.0 / count as f64;
    println!(
        "{} changes: snapshot {} B, tail {} changes {tail_bytes} B; loaded ≈ {per_doc:.0} B per document ({count} loaded)",
        updates + 1,
        snapshot.len(),
        tail.len(),
    );
    drop(docs);
}

/// A row document of `readings` after `updates` updates: its snapshot (empty unless saved)
/// and the changes after it, as the replica stores them (saved when the tail reaches
/// `saved_after` changes).
fn row_doc(updates: i64, saved_after: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(&[7u8; 16][..]));
    doc.put(ROOT, "_cl", ScalarValue::Uint(1)).expect("put");
    doc.put(ROOT, "a1b2c3d4e5f6", 123_456_i64).expect("put");
    doc.put(ROOT, "b1b2c3d4e5f6", 42_i64).expect("put");
    doc.put(ROOT, "c1b2c3d4e5f6", 1_700_000_000_000_i64).expect("put");
    doc.put(ROOT, "d1b2c3d4e5f6", 0.25_f64).expect("put");
    doc.commit();
    let mut snapshot = Vec::new();
    let mut tail = vec![doc.get_last_local_change().expect("committed").raw_bytes().to_vec()];
    for update in 0..updates {
        doc.put(ROOT, "d1b2c3d4e5f6", update as f64 * 0.5).expect("put");
        doc.commit();
        tail.push(doc.get_last_local_change().expect("committed").raw_bytes().to_vec());
        if tail.len() >= saved_after {
            snapshot = doc.save();
            tail.clear();
        }
    }
    (snapshot, tail)
}

/// Bytes of a row document kept as raw changes next to the same document saved whole.
fn print_saved_sizes() {
    println!("| changes | raw changes B | saved whole B | saved / raw |");
    println!("|---|---|---|---|");
    for changes in [1, 2, 3, 6, 10, 64] {
        let (_, tail) = row_doc(changes - 1, usize::MAX);
        let raw: usize = tail.iter().map(Vec::len).sum();
        let saved = load(&[], &tail).save().len();
        println!("| {changes} | {raw} | {saved} | {:.2} |", saved as f64 / raw as f64);
    }
}

/// Loads a document the way `doc::load_doc` does: the snapshot, then the tail changes.
fn load(snapshot: &[u8], tail: &[Vec<u8>]) -> AutoCommit {
    let mut doc = if snapshot.is_empty() { AutoCommit::new() } else { AutoCommit::load(snapshot).expect("load") };
    let changes: Vec<Change> = tail.iter().map(|c| Change::from_bytes(c.clone()).expect("change")).collect();
    doc.apply_changes(changes).expect("apply");
    doc
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    line.trim().trim_end_matches("kB").trim().parse().expect("a number of kB")
}
