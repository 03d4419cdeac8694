//! The remote path: applying change envelopes from peers, and reading the log for them.
//!
//! `apply_remote` is idempotent and order-insensitive: duplicates are recognised by
//! `(origin, seq)` and content hash, changes whose dependencies are missing are parked in
//! `pending_v1`, and parked changes are applied as soon as their dependencies arrive. A
//! batch is atomic: one bad change refuses the whole batch and nothing of it is applied.
//! A parked change that turns out bad when its turn comes is discarded on its own, so it
//! cannot block every later batch.
//!
//! Dependencies are checked twice: the envelope's (`deps`, and the origin's previous
//! seq) against the version vector, then each automerge change's against its document.
//! The second can fail while the first holds: a node that installed a state transfer
//! holds documents with changes above its vector, and its next change to such a document
//! depends on them without naming them (docs/design.md § "State transfer"). Such a change
//! is parked too, and is tried again whenever the drain has applied something since it
//! was last tried, so it is applied once its document has caught up.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::materialize::{Cause, ChangedDoc, RecordError};
use super::{Replica, WorkingDoc, WriteTables};
use crate::change::VerifiedChange;
use crate::doc;
use crate::error::{ApplyError, Corruption, StorageError};
use crate::keys;
use crate::storage;
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// Most changes that may wait for dependencies; a batch that would exceed it is refused.
pub const PENDING_CHANGES_MAX: usize = 100_000;
/// Most parked changes applied in one transaction when their dependencies arrive.
const PENDING_DRAIN_CHANGES_MAX: usize = 1024;

/// What `apply_remote` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes applied (including parked ones that became ready).
    pub applied: usize,
    /// Changes already held.
    pub duplicates: usize,
    /// Changes parked until their dependencies arrive.
    pub parked: usize,
    /// Parked changes that were refused when their dependencies arrived, and dropped.
    pub discarded: usize,
    /// Of `parked`, changes whose envelope dependencies were held but whose document
    /// lacked one of their automerge dependencies (see the module docs).
    pub parked_for_documents: usize,
}

/// What one transaction of the remote path did, for the drain.
#[derive(Default)]
struct Applied {
    report: ApplyReport,
    /// Origins with a change parked for its documents: the drain skips them until it has
    /// applied something else.
    waiting: BTreeSet<NodeId>,
}

/// A document the ready changes touch, loaded once for the dependency checks and the
/// apply.
struct DocGroup {
    key: crate::change::DocKey,
    working: WorkingDoc,
    /// Hashes of the automerge changes accepted for it so far: a later change in the
    /// batch may depend on them.
    staged: HashSet<automerge::ChangeHash>,
}

/// What the applied changes of a transaction add to one document: the first that touches
/// it (named in errors), and its automerge changes in causal order.
type DocChanges<'a> = (Cause, Vec<&'a automerge::Change>);

/// A bounded batch of encoded change envelopes read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeBatch {
    /// Encoded envelopes, per origin in seq order.
    pub changes: Vec<Vec<u8>>,
    /// Whether the batch holds everything the given vector lacks.
    pub complete: bool,
    /// The given vector advanced by the changes in the batch: what a receiver that held
    /// the given vector holds after applying the batch.
    pub covered: VersionVector,
}

impl Replica {
    /// Applies a batch of encoded change envelopes from a peer; see the module docs.
    pub fn apply_remote(&mut self, batch: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError> {
        if let Some(refusal) = self.fault_refusal() {
            return Err(ApplyError::Storage(refusal));
        }
        let mut changes = Vec::with_capacity(batch.len());
        for (index, bytes) in batch.into_iter().enumerate() {
            let change = VerifiedChange::decode(bytes).map_err(|source| ApplyError::Invalid { index, source })?;
            changes.push(change);
        }
        let mut report = self.apply_verified(changes)?.report;
        self.drain_pending(&mut report)?;
        Ok(report)
    }

    /// Applies verified changes atomically in one durable transaction.
    fn apply_verified(&mut self, changes: Vec<VerifiedChange>) -> Result<Applied, ApplyError> {
        let mut applied = Applied::default();
        match self.apply_txn(changes, &mut applied) {
            Ok(()) => Ok(applied),
            // An I/O error faults the store; any other storage error reloads the state.
            Err(ApplyError::Storage(error)) => Err(ApplyError::Storage(self.recover(error))),
            Err(refused) => match self.reload_state() {
                Ok(()) => Err(refused),
                Err(error) => Err(ApplyError::Storage(self.recover(error))),
            },
        }
    }

    fn apply_txn(&mut self, changes: Vec<VerifiedChange>, applied: &mut Applied) -> Result<(), ApplyError> {
        let report = &mut applied.report;
        let txn = self.begin_durable_write()?;
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut candidates = self.classify(&tables, changes, report)?;
            let ready = causal_order(&self.versions, &mut candidates);
            self.park(&mut tables, candidates.into_values(), report)?;
            let waiting = self.apply_ready(&mut tables, ready, report)?;
            applied.waiting.extend(waiting.iter().map(|change| change.origin));
            report.parked_for_documents += waiting.len();
            self.park(&mut tables, waiting.into_iter(), report)?;
        }
        txn.commit().map_err(StorageError::from)?;
        Ok(())
    }

    /// Drops duplicates and refuses equivocations and forgeries in our name.
    fn classify(
        &self,
        tables: &WriteTables<'_>,
        changes: Vec<VerifiedChange>,
        report: &mut ApplyReport,
    ) -> Result<BTreeMap<(NodeId, u64), VerifiedChange>, ApplyError> {
        let mut candidates = BTreeMap::new();
        // Nothing parked (the usual case): no `pending_v1` lookup per change.
        let pending_empty = tables.pending.is_empty()?;
        for change in changes {
            let (origin, seq) = (change.origin, change.seq);
            if seq <= self.floor.seq(origin) {
                // Held and compacted away: a duplicate by (origin, seq) alone, as its bytes
                // are gone (an equivocation that old is not detected; every member holds
                // the original, docs/design.md § "Log compaction").
                report.duplicates += 1;
                continue;
            }
            let key = keys::log_key(origin, seq);
            let held = match tables.log.get(key.as_slice())? {
                Some(bytes) => Some(*blake3::hash(bytes.value()).as_bytes()),
                None if origin == self.node => return Err(ApplyError::ForgedLocalOrigin { seq }),
                None if pending_empty => None,
                None => tables.pending.get(key.as_slice())?.map(|b| *blake3::hash(b.value()).as_bytes()),
            };
            let held = held.or_else(|| candidates.get(&(origin, seq)).map(|c: &VerifiedChange| c.hash));
            match held {
                Some(hash) if hash != change.hash => return Err(ApplyError::Equivocation { origin, seq }),
                Some(_) if seq <= self.versions.seq(origin) || candidates.contains_key(&(origin, seq)) => {
                    report.duplicates += 1;
                }
                // Parked earlier and sent again: a candidate, it may be ready now.
                _ => {
                    candidates.insert((origin, seq), change);
                }
            }
        }
        Ok(candidates)
    }

    fn park(
        &self,
        tables: &mut WriteTables<'_>,
        changes: impl Iterator<Item = VerifiedChange>,
        report: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        for change in changes {
            let key = keys::log_key(change.origin, change.seq);
            if tables.pending.get(key.as_slice())?.is_none() {
                if tables.pending.len()? >= PENDING_CHANGES_MAX as u64 {
                    return Err(ApplyError::PendingFull(PENDING_CHANGES_MAX));
                }
                tables.pending.insert(key.as_slice(), change.bytes.as_slice())?;
            }
            report.parked += 1;
        }
        Ok(())
    }

    /// Applies the causally ordered changes whose automerge dependencies their documents
    /// hold: every document's automerge changes in one call (applying one at a time is
    /// quadratic on large documents), then records them. Returns the changes that must
    /// wait: those a document lacks a dependency of, and those that depend on them.
    fn apply_ready(
        &mut self,
        tables: &mut WriteTables<'_>,
        ready: Vec<VerifiedChange>,
        report: &mut ApplyReport,
    ) -> Result<Vec<VerifiedChange>, ApplyError> {
        let mut groups: BTreeMap<Vec<u8>, DocGroup> = BTreeMap::new();
        let mut held = self.versions.clone();
        // Whether each ready change is applied now (else it waits), in `ready`'s order.
        let mut accepted = Vec::with_capacity(ready.len());
        for change in &ready {
            let now = self.dependencies_held(tables, &mut groups, &held, change)?;
            accepted.push(now);
            if now {
                held.set(change.origin, change.seq);
                for op in &change.ops {
                    let group = groups.get_mut(&op.key.encode()).expect("dependencies_held loads every document");
                    group.staged.insert(op.change.hash());
                }
            }
        }
        let (applied, waiting): (Vec<_>, Vec<_>) = ready.into_iter().zip(accepted).partition(|(_, now)| *now);
        let applied: Vec<VerifiedChange> = applied.into_iter().map(|(change, _)| change).collect();
        let mut per_doc: BTreeMap<Vec<u8>, DocChanges<'_>> = BTreeMap::new();
        for change in &applied {
            for op in &change.ops {
                let entry = per_doc
                    .entry(op.key.encode())
                    .or_insert_with(|| (Cause::Change { origin: change.origin, seq: change.seq }, Vec::new()));
                entry.1.push(&op.change);
            }
        }
        let mut changed = Vec::with_capacity(per_doc.len());
        for (key_bytes, DocGroup { key, mut working, .. }) in groups {
            let Some((cause, changes)) = per_doc.remove(&key_bytes) else {
                // Loaded for a check only: unchanged, so it may go back to the cache.
                if !working.created {
                    self.cache.put(key_bytes, working);
                }
                continue;
            };
            let owned: Vec<automerge::Change> = changes.iter().map(|c| (*c).clone()).collect();
            doc::apply_changes(&mut working.doc, owned).map_err(|e| cause.refusal(e.into()))?;
            let new_changes = changes.iter().map(|c| c.raw_bytes()).collect();
            changed.push(ChangedDoc { key_bytes, key, working, new_changes, cause, inserted: None });
        }
        self.record_changes(tables, changed, &applied).map_err(RecordError::into_apply)?;
        report.applied += applied.len();
        Ok(waiting.into_iter().map(|(change, _)| change).collect())
    }

    /// Whether `change` can be applied after the changes accepted so far (`held`): its
    /// envelope dependencies are held, and each of its documents (loaded into `groups`)
    /// holds every automerge dependency of its change, or a change accepted before it.
    fn dependencies_held(
        &mut self,
        tables: &WriteTables<'_>,
        groups: &mut BTreeMap<Vec<u8>, DocGroup>,
        held: &VersionVector,
        change: &VerifiedChange,
    ) -> Result<bool, ApplyError> {
        let envelope_held =
            held.seq(change.origin) + 1 == change.seq && change.deps.iter().all(|(node, dep)| held.seq(*node) >= *dep);
        if !envelope_held {
            return Ok(false);
        }
        for op in &change.ops {
            let key_bytes = op.key.encode();
            let group = match groups.entry(key_bytes) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let working = self.take_or_create_doc(tables, entry.key())?;
                    entry.insert(DocGroup { key: op.key.clone(), working, staged: HashSet::new() })
                }
            };
            let unstaged: Vec<_> = op.change.deps().iter().filter(|dep| !group.staged.contains(dep)).copied().collect();
            let in_doc = doc::holds_changes(&mut group.working.doc, &unstaged)
                .map_err(|e| ApplyError::Inconsistent { origin: change.origin, seq: change.seq, reason: e.into() })?;
            if !in_doc {
                tracing::debug!(origin = %change.origin, seq = change.seq, "parked: a document lacks an automerge dependency");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies parked changes whose dependencies are now held, a bounded chunk per
    /// transaction. A chunk that fails is retried change by change; a change that still
    /// fails is dropped from `pending_v1` and counted in `discarded`.
    ///
    /// An origin whose next change waits for its documents is skipped until the drain has
    /// applied something else, then tried again: each retry follows progress, so the drain
    /// ends, and a change whose document caught up in the same drain is not left behind.
    pub(super) fn drain_pending(&mut self, report: &mut ApplyReport) -> Result<(), ApplyError> {
        let mut skip = BTreeSet::new();
        let mut progress_since_skip = false;
        loop {
            let ready = self.ready_pending(&skip)?;
            if ready.is_empty() {
                if skip.is_empty() || !progress_since_skip {
                    return Ok(());
                }
                skip.clear();
                progress_since_skip = false;
                continue;
            }
            let chunk = match self.apply_verified(ready.clone()) {
                Ok(chunk) => chunk,
                Err(ApplyError::Storage(e)) => return Err(e.into()),
                Err(_) => self.apply_one_by_one(ready, report)?,
            };
            report.applied += chunk.report.applied;
            progress_since_skip |= chunk.report.applied > 0;
            skip.extend(chunk.waiting);
        }
    }

    /// Applies changes one transaction each; returns what they did, except the discarded
    /// count, which goes straight into `report`.
    fn apply_one_by_one(
        &mut self,
        ready: Vec<VerifiedChange>,
        report: &mut ApplyReport,
    ) -> Result<Applied, ApplyError> {
        let mut all = Applied::default();
        for change in ready {
            let (origin, seq) = (change.origin, change.seq);
            match self.apply_verified(vec![change]) {
                Ok(one) => {
                    all.report.applied += one.report.applied;
                    all.waiting.extend(one.waiting);
                }
                Err(ApplyError::Storage(e)) => return Err(e.into()),
                Err(error) => {
                    tracing::warn!(%origin, seq, %error, "discarding a parked change that cannot be applied");
                    self.discard_pending(origin, seq)?;
                    report.discarded += 1;
                }
            }
        }
        Ok(all)
    }

    fn discard_pending(&mut self, origin: NodeId, seq: u64) -> Result<(), StorageError> {
        let txn = self.begin_durable_write()?;
        txn.open_table(storage::PENDING)?.remove(keys::log_key(origin, seq).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Parked changes that are ready in causal order, at most a chunk, none of an origin
    /// in `skip`.
    fn ready_pending(&self, skip: &BTreeSet<NodeId>) -> Result<Vec<VerifiedChange>, StorageError> {
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(storage::PENDING)?;
        let mut origins = Vec::new();
        let mut cursor = Vec::new();
        while let Some(item) = pending.range(cursor.as_slice()..)?.next() {
            let (origin, _) = keys::decode_log_key(item?.0.value())
                .map_err(|source| Corruption::Key { table: "pending_v1", source })?;
            if !skip.contains(&origin) {
                origins.push(origin);
            }
            cursor = keys::prefix_end(origin.as_bytes()).unwrap_or_else(|| vec![0xFF; 25]);
        }
        let mut versions = self.versions.clone();
        let mut ready = Vec::new();
        loop {
            let before = ready.len();
            for &origin in &origins {
                loop {
                    let key = keys::log_key(origin, versions.seq(origin) + 1);
                    let Some(bytes) = pending.get(key.as_slice())? else { break };
                    let change = VerifiedChange::decode(bytes.value().to_vec()).map_err(Corruption::Pending)?;
                    if !change.deps.iter().all(|(node, seq)| versions.seq(*node) >= *seq) {
                        break;
                    }
                    versions.set(origin, change.seq);
                    ready.push(change);
                    if ready.len() >= PENDING_DRAIN_CHANGES_MAX {
                        return Ok(ready);
                    }
                }
            }
            if ready.len() == before {
                return Ok(ready);
            }
        }
    }

    /// Log entries that `vector` lacks, per origin in seq order, at most `changes_max`
    /// changes and about `bytes_max` bytes (always at least one change if any is lacking).
    ///
    /// [`StorageError::BelowLogFloor`] if `vector` lacks changes that compaction removed
    /// (`vector[o] < floor[o] < V[o]` for some origin): they are never silently skipped.
    pub fn changes_since(
        &self,
        vector: &VersionVector,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<ChangeBatch, StorageError> {
        self.check_above_floor(vector)?;
        let txn = self.db.begin_read()?;
        let log = txn.open_table(storage::LOG)?;
        let mut changes = Vec::new();
        let mut covered = vector.clone();
        let mut bytes = 0usize;
        for (origin, ours) in self.versions.iter() {
            let theirs = vector.seq(origin);
            if ours <= theirs {
                continue;
            }
            let start = keys::log_key(origin, theirs + 1);
            let end = keys::log_key(origin, ours);
            for (seq, item) in (theirs + 1..).zip(log.range(start.as_slice()..=end.as_slice())?) {
                let value = item?.1.value().to_vec();
                let full = !changes.is_empty() && (changes.len() >= changes_max || bytes + value.len() > bytes_max);
                if full {
                    return Ok(ChangeBatch { changes, complete: false, covered });
                }
                bytes += value.len();
                changes.push(value);
                covered.set(origin, seq);
            }
        }
        Ok(ChangeBatch { changes, complete: true, covered })
    }
}

impl Replica {
    /// Refuses a `changes_since` whose answer would need changes below the log floor.
    fn check_above_floor(&self, vector: &VersionVector) -> Result<(), StorageError> {
        for (origin, floor) in self.floor.iter() {
            let theirs = vector.seq(origin);
            if theirs < floor && self.versions.seq(origin) > theirs {
                return Err(StorageError::BelowLogFloor { origin, needed: theirs + 1, floor });
            }
        }
        Ok(())
    }
}

/// Picks the candidates whose dependencies are met, in an order that meets them, removing
/// them from `candidates`; what stays must be parked.
fn causal_order(
    versions: &VersionVector,
    candidates: &mut BTreeMap<(NodeId, u64), VerifiedChange>,
) -> Vec<VerifiedChange> {
    let mut versions = versions.clone();
    let mut ready = Vec::new();
    loop {
        let before = ready.len();
        // Keys sort by (origin, seq), so one pass takes a whole run of one origin.
        let keys: Vec<(NodeId, u64)> = candidates.keys().copied().collect();
        for (origin, seq) in keys {
            let change = &candidates[&(origin, seq)];
            let deps_met = change.deps.iter().all(|(node, dep)| versions.seq(*node) >= *dep);
            if versions.seq(origin) + 1 == seq && deps_met {
                versions.set(origin, seq);
                ready.push(candidates.remove(&(origin, seq)).expect("key taken from the map"));
            }
        }
        if ready.len() == before {
            return ready;
        }
    }
}
