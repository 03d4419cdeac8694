//! Random histories of three writers: the next generation materializes the same row.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ReadDoc, ScalarValue, ROOT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const COLUMNS: [&str; 3] = ["c0", "c1", "c2"];
const COUNTER: &str = "n";
const CAUSAL_LENGTH: &str = "_cl";

/// Per key: every concurrent value (counters by value) in automerge's order, and the
/// writers of a conflict's values (a lone value's writer is not materialized anywhere).
fn state(doc: &AutoCommit) -> Vec<(String, Vec<String>, Vec<String>)> {
    doc.keys(ROOT)
        .map(|key| {
            let all = doc.get_all(ROOT, key.as_str()).unwrap();
            let values = all
                .iter()
                .map(|(value, _)| match value.to_scalar() {
                    Some(ScalarValue::Counter(c)) => format!("counter {}", i64::from(c)),
                    other => format!("{other:?}"),
                })
                .collect();
            let writers = match all.len() {
                1 => Vec::new(),
                _ => all.iter().map(|(_, id)| id.to_string().split('@').nth(1).unwrap().to_owned()).collect(),
            };
            (key, values, writers)
        })
        .collect()
}

fn writer(index: u8) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from([index; 16].as_slice()))
}

fn causal_length(doc: &AutoCommit) -> u64 {
    let all = doc.get_all(ROOT, CAUSAL_LENGTH).unwrap();
    all.iter().filter_map(|(v, _)| v.to_scalar().and_then(|s| s.to_u64())).max().unwrap_or(0)
}

/// One random operation of `doc`'s writer, committed as one change.
fn random_change(doc: &mut AutoCommit, rng: &mut ChaCha8Rng, time: i64) {
    match rng.random_range(0..10) {
        0..=4 => {
            let column = COLUMNS[rng.random_range(0..COLUMNS.len())];
            doc.put(ROOT, column, rng.random_range(-5i64..5)).unwrap();
        }
        5 | 6 => doc.increment(ROOT, COUNTER, rng.random_range(-3i64..4)).unwrap(),
        7 => {
            let next = causal_length(doc) + 1;
            doc.put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(next)).unwrap();
        }
        8 => {
            let column = COLUMNS[rng.random_range(0..COLUMNS.len())];
            if doc.get(ROOT, column).unwrap().is_some() {
                doc.delete(ROOT, column).unwrap();
            } else {
                doc.put(ROOT, column, "back").unwrap();
            }
        }
        _ => {
            doc.put(ROOT, COLUMNS[0], "two ops").unwrap();
            doc.increment(ROOT, COUNTER, 1).unwrap();
        }
    }
    doc.commit_with(CommitOptions::default().with_time(time));
}

/// Writers make random changes while merging each other at random; every `resolve_every`
/// steps they sync fully and one of them overwrites every key, so the history passes a
/// conflict-free point now and then.
fn random_history(seed: u64, steps: usize, resolve_every: usize) -> Vec<AutoCommit> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut writers: Vec<AutoCommit> = (1..=3).map(writer).collect();
    writers[0].put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(1)).unwrap();
    for column in COLUMNS {
        writers[0].put(ROOT, column, 0i64).unwrap();
    }
    writers[0].put(ROOT, COUNTER, ScalarValue::counter(0)).unwrap();
    writers[0].commit_with(CommitOptions::default().with_time(1));
    let first = writers[0].clone();
    for other in &mut writers[1..] {
        other.merge(&mut first.clone()).unwrap();
    }
    for step in 0..steps {
        let time = step as i64 + 2;
        if step % resolve_every == resolve_every - 1 {
            sync_all(&mut writers);
            let resolver = &mut writers[rng.random_range(0..3)];
            let cl = causal_length(resolver);
            resolver.put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(cl | 1)).unwrap();
            for column in COLUMNS {
                resolver.put(ROOT, column, step as i64).unwrap();
            }
            let total = match resolver.get(ROOT, COUNTER).unwrap() {
                Some((value, _)) => value.to_scalar().and_then(|s| s.to_i64()).unwrap_or(0),
                None => 0,
            };
            resolver.put(ROOT, COUNTER, ScalarValue::counter(total)).unwrap();
            resolver.commit_with(CommitOptions::default().with_time(time));
            sync_all(&mut writers);
            continue;
        }
        let who = rng.random_range(0..3);
        if rng.random_range(0..4) == 0 {
            let from = (who + rng.random_range(1..3)) % 3;
            let mut source = writers[from].clone();
            writers[who].merge(&mut source).unwrap();
        }
        random_change(&mut writers[who], &mut rng, time);
    }
    writers
}

fn sync_all(writers: &mut [AutoCommit]) {
    let mut all = writers[0].clone();
    for other in &mut writers[1..] {
        all.merge(other).unwrap();
    }
    for writer in writers.iter_mut() {
        writer.merge(&mut all.clone()).unwrap();
    }
}

fn merged(writers: &[AutoCommit]) -> AutoCommit {
    let mut all = writers[0].clone();
    for other in &writers[1..] {
        all.merge(&mut other.clone()).unwrap();
    }
    all
}

const SEEDS: u64 = 300;

#[test]
fn the_next_generation_materializes_the_same_row() {
    let (mut cuts, mut translated, mut twice) = (0, 0, 0);
    for seed in 0..SEEDS {
        let writers = random_history(seed, 60, 15);
        let mut doc = merged(&writers);
        for min_depth in [1, 20, 40] {
            let Some(cut) = find_cut(&mut doc, min_depth, |_| true).unwrap() else { continue };
            assert!(cut.depth >= min_depth, "seed {seed}");
            let (mut next, _) = rebase(&mut doc, &cut).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(state(&next), state(&doc), "seed {seed}, cut at depth {}", cut.depth);
            let after = doc.get_changes(&[cut.hash]).len();
            assert_eq!(next.get_changes(&[]).len(), after + 1, "seed {seed}: the base and one translation per change");
            cuts += 1;
            translated += after;
            // The next generation compacts again, at its own cut.
            if let Some(again) = find_cut(&mut next, 2, |_| true).unwrap() {
                let (third, _) = rebase(&mut next, &again).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(state(&third), state(&doc), "seed {seed}, second cut at depth {}", again.depth);
                twice += 1;
            }
        }
    }
    println!("{cuts} cuts over {SEEDS} seeds, {translated} changes translated, {twice} compacted twice");
    assert!(cuts > SEEDS as usize, "most histories pass a conflict-free point: {cuts}");
    assert!(twice > SEEDS as usize / 2, "{twice}");
}

#[test]
fn compacting_then_applying_the_rest_equals_compacting_everything() {
    let mut checked = 0;
    for seed in 0..SEEDS {
        let writers = random_history(seed, 60, 15);
        let mut doc = merged(&writers);
        let Some(cut) = find_cut(&mut doc, 20, |_| true).unwrap() else { continue };
        let (mut whole, _) = rebase(&mut doc, &cut).unwrap();
        // The part a node held when it compacted: the cut and a causally closed prefix of
        // what came after (history order is causal).
        let history: Vec<Change> = doc.get_changes(&[]).into_iter().cloned().collect();
        let cut_index = history.iter().position(|c| c.hash() == cut.hash).unwrap();
        let held = cut_index + 1 + (history.len() - cut_index - 1) / 2;
        let mut partial = AutoCommit::new();
        partial.apply_changes(history[..held].to_vec()).unwrap();
        let (mut early, mut translator) = rebase(&mut partial, &cut).unwrap();
        let rest: Vec<Change> = history[held..].iter().map(|c| translator.translate(c).unwrap()).collect();
        early.apply_changes(rest).unwrap();
        assert_eq!(early.get_heads(), whole.get_heads(), "seed {seed}: the same generation, byte for byte");
        assert_eq!(state(&early), state(&doc), "seed {seed}");
        checked += 1;
    }
    println!("{checked} of {SEEDS} seeds compacted early and caught up");
    assert!(checked > SEEDS as usize / 2, "{checked}");
}

#[test]
fn merges_after_the_cut_come_out_as_before() {
    // Three writers continue concurrently from a compacted point: translating their
    // changes and merging them gives what merging the originals gives.
    let mut checked = 0;
    for seed in 0..SEEDS {
        let mut writers = random_history(seed, 30, 10);
        sync_all(&mut writers);
        let mut synced = writers[0].clone();
        // The last change, the resolver's after the final full sync, is the cut.
        let depth = synced.get_changes(&[]).len() as u64;
        let cut = find_cut(&mut synced, depth, |_| true).unwrap().expect("the resolver's change is a cut");
        assert_eq!(cut.hash, synced.get_heads()[0], "seed {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        for step in 0..10 {
            let who = rng.random_range(0..3);
            random_change(&mut writers[who], &mut rng, 1000 + step);
        }
        let mut doc = merged(&writers);
        let (next, _) = rebase(&mut doc, &cut).unwrap();
        assert_eq!(state(&next), state(&doc), "seed {seed}");
        let conflicts = state(&doc).iter().filter(|(_, values, _)| values.len() > 1).count();
        checked += usize::from(conflicts > 0);
    }
    println!("{checked} of {SEEDS} seeds ended with a conflict made after the cut, kept as it was");
    assert!(checked > 0, "some histories end with open conflicts");
}

/// Writer 1 inserts the row; writer 2 merges it; writer 1 then sets `c0` to 1.
fn two_writers_from_one_insert() -> (AutoCommit, AutoCommit) {
    let mut a = writer(1);
    a.put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(1)).unwrap();
    a.commit();
    let mut b = writer(2);
    b.merge(&mut a.clone()).unwrap();
    a.put(ROOT, "c0", 1i64).unwrap();
    a.commit();
    (a, b)
}

#[test]
fn a_cut_needs_stability_and_no_open_conflict() {
    let writers = random_history(7, 30, 10);
    let mut doc = merged(&writers);
    assert!(find_cut(&mut doc, 1, |_| false).unwrap().is_none(), "nothing is stable: no cut");
    // Two writers set one column concurrently and nobody resolves it: no point after
    // the conflict is free of it.
    let (mut a, mut b) = two_writers_from_one_insert();
    b.put(ROOT, "c0", 2i64).unwrap();
    b.commit();
    a.merge(&mut b).unwrap();
    a.put(ROOT, "c1", 3i64).unwrap();
    a.commit();
    let cut = find_cut(&mut a, 1, |_| true).unwrap().expect("the first change is a cut");
    assert_eq!(cut.depth, 1);
    assert!(find_cut(&mut a, 2, |_| true).unwrap().is_none(), "every later point has the c0 conflict");
}

#[test]
fn a_change_concurrent_with_the_cut_is_refused() {
    let (mut a, mut b) = two_writers_from_one_insert();
    b.put(ROOT, "c1", 2i64).unwrap();
    b.commit();
    let cut = find_cut(&mut a, 2, |_| true).unwrap().expect("a's own history is a line");
    let (_, mut translator) = rebase(&mut a, &cut).unwrap();
    let concurrent = b.get_last_local_change().unwrap().clone();
    assert!(matches!(
        translator.translate(&concurrent),
        Err(RebaseError::NumberedBeforeCut(_) | RebaseError::NotAfterCut { .. })
    ));
}
