//! Row-history compaction, stage 1: a document's next generation, built from a cut.
//!
//! A generation-`g + 1` document is one *base change* stating the row at a cut `x` of
//! generation `g`, followed by the *translations* of generation `g`'s changes after `x`.
//! Both are pure functions of the changes, so every node builds byte-identical documents.
//! The rules and the argument why merges come out as before are in `docs/design.md`
//! § Row-history compaction; storage and sync do not use this module yet (stages 2–4).
//!
//! automerge 0.6.1 cannot truncate history (a change's hash covers its deps), but it can
//! encode any change from an `ExpandedChange`: translation decodes a change, edits its
//! seq, start op, deps and preds in place (the operation types live in a private module
//! and cannot be named, only cloned and edited), and encodes it again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU64;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ReadDoc, ScalarValue, Value, ROOT};

use crate::contain::{contain, Panicked};

/// Label of the base change's actor derivation.
const BASE_ACTOR_LABEL: &[u8] = b"edgestore.rebase.base.v1\0";

/// Why a document could not be compacted or a change not translated.
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    /// automerge panicked on the document or change (contained).
    #[error(transparent)]
    Panicked(#[from] Panicked),
    /// automerge refused the new generation's changes.
    #[error("automerge refused the new generation: {0}")]
    Automerge(#[source] automerge::AutomergeError),
    /// No key is visible at the cut: there is no state to base a generation on.
    #[error("the cut {0} has no visible state")]
    EmptyState(ChangeHash),
    /// The cut is not a change of the document.
    #[error("the cut {0} is not a change of the document")]
    UnknownCut(ChangeHash),
    /// No dependency of a change is the cut or a translated change after it: the change is
    /// concurrent with the cut or before it.
    #[error("change {change} is not after the cut: it depends on {dep} and nothing after the cut")]
    NotAfterCut {
        /// The change being translated.
        change: ChangeHash,
        /// Its dependency.
        dep: ChangeHash,
    },
    /// A change's ops or seq do not lie after the cut's (a change after the cut starts
    /// above every op, and continues its actor's chain past, what the cut holds).
    #[error("change {0} does not number its ops or seq after the cut")]
    NumberedBeforeCut(ChangeHash),
    /// An operation is not a scalar put, delete or increment on the root map: row
    /// documents have no nested objects.
    #[error("change {0} has an operation outside the root map")]
    NotOnRoot(ChangeHash),
}

/// A cut of a document: a change all of whose history passes through it, with the
/// figures translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The cut change `x`.
    pub hash: ChangeHash,
    /// Changes in `x`'s ancestry, `x` included.
    pub depth: u64,
    /// The greatest op counter in `x`'s ancestry (`m`).
    pub max_op: u64,
    /// Per actor, its changes in `x`'s ancestry (`seq_x`).
    pub seqs: BTreeMap<ActorId, u64>,
    /// The time of `x`, the base change's time.
    pub time: i64,
}

/// The earliest cut of `doc` with depth ≥ `min_depth` that `is_stable` accepts: a change
/// that every other change of the document precedes or follows (nothing is concurrent with
/// it), at which no key of the root map has concurrent values and every value is a scalar.
///
/// The caller's `is_stable` must say whether no change concurrent with the given one can
/// still arrive (§ Causal-stability horizon); a stable change's ancestors are stable, so the
/// search stops at the first candidate that is not.
pub fn find_cut(
    doc: &mut AutoCommit,
    min_depth: u64,
    mut is_stable: impl FnMut(&Change) -> bool,
) -> Result<Option<Cut>, RebaseError> {
    let changes: Vec<Change> = contain("listing changes", || doc.get_changes(&[]).into_iter().cloned().collect())?;
    let position: HashMap<ChangeHash, usize> = changes.iter().enumerate().map(|(i, c)| (c.hash(), i)).collect();
    // Walk in causal order (automerge's history order), keeping the frontier: after a
    // change, a frontier of that change alone means every change so far is its ancestor.
    let mut frontier: HashSet<ChangeHash> = HashSet::new();
    for (index, change) in changes.iter().enumerate() {
        for dep in change.deps() {
            frontier.remove(dep);
        }
        frontier.insert(change.hash());
        let depth = index as u64 + 1;
        if frontier.len() != 1 || depth < min_depth {
            continue;
        }
        if !precedes_all_later(&changes, &position, index) || !conflict_free_at(doc, change.hash())? {
            continue;
        }
        if !is_stable(change) {
            return Ok(None);
        }
        return Ok(Some(cut_at(&changes[..=index])));
    }
    Ok(None)
}

/// Whether every change after `index` in causal order descends from the change there.
fn precedes_all_later(changes: &[Change], position: &HashMap<ChangeHash, usize>, index: usize) -> bool {
    let cut = changes[index].hash();
    let mut descends: HashSet<ChangeHash> = HashSet::from([cut]);
    for change in &changes[index + 1..] {
        let after = change.deps().iter().any(|dep| descends.contains(dep));
        if !after {
            return false;
        }
        debug_assert!(change.deps().iter().all(|dep| position.contains_key(dep)), "history is closed");
        descends.insert(change.hash());
    }
    true
}

/// Whether, at `cut`, every visible key holds exactly one scalar value.
fn conflict_free_at(doc: &mut AutoCommit, cut: ChangeHash) -> Result<bool, RebaseError> {
    let past = state_at(doc, cut)?;
    Ok(contain("reading the state at a cut", || {
        past.keys(ROOT).all(|key| {
            let values = past.get_all(ROOT, key.as_str()).unwrap_or_default();
            values.len() == 1 && matches!(values[0].0, Value::Scalar(_))
        })
    })?)
}

/// The document as of `cut`. automerge 0.6.1's historical reads (`keys_at`, `get_all_at`)
/// miss a counter whose increments come after the heads read at, so the state at a cut
/// is read from a fork at it instead.
fn state_at(doc: &mut AutoCommit, cut: ChangeHash) -> Result<AutoCommit, RebaseError> {
    contain("forking at a cut", || doc.fork_at(&[cut]))?.map_err(RebaseError::Automerge)
}

/// The cut at the last of `ancestry`, which holds exactly that change's ancestry.
fn cut_at(ancestry: &[Change]) -> Cut {
    let last = ancestry.last().expect("a cut has a change");
    let mut seqs: BTreeMap<ActorId, u64> = BTreeMap::new();
    for change in ancestry {
        *seqs.entry(change.actor_id().clone()).or_default() += 1;
    }
    Cut {
        hash: last.hash(),
        depth: ancestry.len() as u64,
        max_op: ancestry.iter().map(|c| c.max_op()).max().unwrap_or(0),
        seqs,
        time: last.timestamp(),
    }
}

/// The actor of the base change at `cut`: derived from the cut, so bases of different
/// cuts never share op ids.
pub fn base_actor(cut: ChangeHash) -> ActorId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(BASE_ACTOR_LABEL);
    hasher.update(&cut.0);
    ActorId::from(&hasher.finalize().as_bytes()[..16])
}

/// Builds the next generation of `doc` at `cut`: its base change, then every change
/// after the cut translated, in causal order. Returns the new document and the
/// translator, which translates changes after the cut that arrive later.
pub fn rebase(doc: &mut AutoCommit, cut: &Cut) -> Result<(AutoCommit, Translator), RebaseError> {
    let mut translator = Translator::new(doc, cut)?;
    let mut next = AutoCommit::new();
    let after = contain("listing changes after the cut", || changes_after(doc, cut.hash))?;
    let mut translated = vec![translator.base.clone()];
    for change in &after {
        translated.push(translator.translate(change)?);
    }
    contain("applying the new generation", || next.apply_changes(translated))?.map_err(RebaseError::Automerge)?;
    Ok((next, translator))
}

/// The changes of `doc` after `cut`, in causal order (automerge's `get_changes(heads)`
/// answers them in no particular order; its whole history is causal).
fn changes_after(doc: &mut AutoCommit, cut: ChangeHash) -> Vec<Change> {
    let after: HashSet<ChangeHash> = doc.get_changes(&[cut]).iter().map(|c| c.hash()).collect();
    doc.get_changes(&[]).into_iter().filter(|c| after.contains(&c.hash())).cloned().collect()
}

/// Translates changes of one generation made after its cut into the next generation.
#[derive(Debug, Clone)]
pub struct Translator {
    cut: Cut,
    base: Change,
    base_actor: ActorId,
    /// Per key of the base, the counter of its op (actor: `base_actor`).
    base_ops: BTreeMap<String, u64>,
    /// Generation-`g` hash → translated hash, of the changes after the cut.
    translated: HashMap<ChangeHash, ChangeHash>,
}

impl Translator {
    /// The translator of `doc` at `cut`, with the base change built from the state there.
    pub fn new(doc: &mut AutoCommit, cut: &Cut) -> Result<Translator, RebaseError> {
        let known = contain("looking up the cut", || doc.get_change_by_hash(&cut.hash).is_some())?;
        if !known {
            return Err(RebaseError::UnknownCut(cut.hash));
        }
        let (base, base_ops) = base_change(doc, cut)?;
        Ok(Translator {
            cut: cut.clone(),
            base,
            base_actor: base_actor(cut.hash),
            base_ops,
            translated: HashMap::new(),
        })
    }

    /// The translation of `change`, a change after the cut whose dependencies after the
    /// cut were translated before it. Deterministic: the same change gives the same bytes.
    pub fn translate(&mut self, change: &Change) -> Result<Change, RebaseError> {
        let hash = change.hash();
        if let Some(done) = self.translated.get(&hash) {
            debug_assert_ne!(*done, hash, "a translation is a different change");
        }
        let k = self.base_ops.len() as u64;
        let delta = self.cut.max_op - k;
        let seq_x = self.cut.seqs.get(change.actor_id()).copied().unwrap_or(0);
        if change.start_op().get() <= self.cut.max_op || change.seq() <= seq_x {
            return Err(RebaseError::NumberedBeforeCut(hash));
        }
        let deps = self.translate_deps(change)?;
        let (base_actor, base_ops, max_op) = (&self.base_actor, &self.base_ops, self.cut.max_op);
        let translated = contain("translating a change", || {
            let mut expanded = change.decode();
            expanded.hash = None;
            expanded.seq -= seq_x;
            expanded.start_op =
                NonZeroU64::new(expanded.start_op.get() - delta).expect("start op above the base's ops");
            expanded.deps = deps;
            for op in &mut expanded.operations {
                if op.obj.to_string() != "_root" || op.insert {
                    return None;
                }
                let base_op =
                    base_ops.iter().find(|(key, _)| op.key == key.as_str().into()).map(|(_, counter)| *counter);
                let mut preds: Vec<_> = op
                    .pred
                    .iter()
                    .filter_map(|pred| {
                        let mut mapped = pred.clone();
                        if pred.0 > max_op {
                            mapped.0 = pred.0 - delta;
                        } else {
                            mapped.0 = base_op?;
                            mapped.1 = base_actor.clone();
                        }
                        Some(mapped)
                    })
                    .collect();
                preds.sort();
                preds.dedup();
                op.pred = preds.into();
            }
            Some(Change::from(expanded))
        })?
        .ok_or(RebaseError::NotOnRoot(hash))?;
        debug_assert_eq!(translated.seq(), change.seq() - seq_x);
        debug_assert_eq!(translated.len(), change.len(), "a translation keeps every operation");
        self.translated.insert(hash, translated.hash());
        Ok(translated)
    }

    /// `change`'s deps in the next generation, sorted: a change after the cut becomes its
    /// translation; the cut, and any other dep, the base. automerge's deps need not be
    /// minimal (a change may name an ancestor of another dep), and translation runs in
    /// causal order (envelopes are delivered causally), so a dep not translated is in the
    /// cut's ancestry. A change with no dep after the cut or at it is not after the cut.
    fn translate_deps(&self, change: &Change) -> Result<Vec<ChangeHash>, RebaseError> {
        let mut after_cut = false;
        let mut deps = Vec::with_capacity(change.deps().len());
        for dep in change.deps() {
            let translated = self.translated.get(dep);
            after_cut |= translated.is_some() || *dep == self.cut.hash;
            deps.push(translated.copied().unwrap_or(self.base.hash()));
        }
        if !after_cut {
            let dep = change.deps().first().copied().unwrap_or(ChangeHash([0; 32]));
            return Err(RebaseError::NotAfterCut { change: change.hash(), dep });
        }
        deps.sort();
        deps.dedup();
        Ok(deps)
    }
}

/// The base change at `cut`: one put per key visible there, in key order, a counter as a
/// counter holding its value; and the counter of each key's op.
fn base_change(doc: &mut AutoCommit, cut: &Cut) -> Result<(Change, BTreeMap<String, u64>), RebaseError> {
    let past = state_at(doc, cut.hash)?;
    let state: Vec<(String, ScalarValue)> = contain("reading the state at the cut", || {
        let mut state: Vec<(String, ScalarValue)> = past
            .keys(ROOT)
            .filter_map(|key| match past.get(ROOT, key.as_str()) {
                // A fresh counter holding the value at the cut: automerge encodes a
                // counter's put by its start value, not its current one.
                Ok(Some((Value::Scalar(value), _))) => match value.into_owned() {
                    ScalarValue::Counter(counter) => Some((key, ScalarValue::counter(i64::from(&counter)))),
                    value => Some((key, value)),
                },
                _ => None,
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    })?;
    let mut base = AutoCommit::new().with_actor(base_actor(cut.hash));
    let mut ops = BTreeMap::new();
    for (index, (key, value)) in state.into_iter().enumerate() {
        base.put(ROOT, key.as_str(), value).map_err(RebaseError::Automerge)?;
        ops.insert(key, index as u64 + 1);
    }
    if ops.is_empty() {
        return Err(RebaseError::EmptyState(cut.hash));
    }
    base.commit_with(CommitOptions::default().with_time(cut.time));
    let change = base.get_last_local_change().cloned().expect("a transaction with operations commits a change");
    debug_assert_eq!(change.max_op(), ops.len() as u64, "one base op per key");
    Ok((change, ops))
}

#[cfg(test)]
mod tests;
