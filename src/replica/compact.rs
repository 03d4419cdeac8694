//! Log compaction: change envelopes no member can need again leave `log_v1` in bounded
//! steps, and the log floor records how far (docs/design.md § "Log compaction").
//!
//! The floor is a version vector kept in `meta_v1` (`log_floor`): for every origin `o`
//! the log holds every change in `(floor[o], V[o]]`, and `floor ≤ V`. Entries at or below
//! the floor may remain where a state transfer raised it over a gap; compaction removes
//! them like any other. A step removes at most `entries_max` entries, origin by origin in
//! seq order, and raises the floor to the last one it removed above it, in one short
//! durable transaction — so a crash between steps
//! (or in one) leaves the log and its floor agreeing, and writers queued on the owner
//! thread wait for at most one step. Documents, rows and the state digest are untouched:
//! every compacted change is still in its document, and the digest covers the converged
//! state, not the log. Which target is safe is the caller's concern (the causal-stability
//! horizon); this module only checks that it is at or below what the replica holds.
//!
//! Removing entries frees redb pages for reuse but does not shorten the file: redb grows
//! the file and reuses free pages, and only its `compact` moves pages down and truncates.
//! [`Replica::shrink_file`] runs that, offline (`edge-node compact`): it needs the
//! database alone, and its time is proportional to the file.

use std::sync::Arc;

use redb::ReadableDatabase;

use super::{read, Replica};
use crate::codec;
use crate::error::{Corruption, StorageError};
use crate::keys;
use crate::storage::{self, FORMAT_VERSION, FORMAT_VERSION_COMPACTED, FORMAT_VERSION_UNCOMPACTED};
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// What one [`Replica::compact_log_step`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Log entries removed by this step.
    pub entries_removed: u64,
    /// Bytes of the removed envelopes (values only).
    pub bytes_removed: u64,
    /// The log floor after the step.
    pub floor: VersionVector,
    /// Whether the log holds nothing at or below the target any more: another step with
    /// the same target would remove nothing.
    pub complete: bool,
}

/// One origin's part of a step: remove every entry up to seq `to`; the log holds each
/// of `(floor, to]`, and may hold some at or below `floor`.
struct Span {
    origin: NodeId,
    floor: u64,
    to: u64,
}

impl Replica {
    /// Shrinks the store file: moves live pages down and truncates the free end (redb's
    /// `Database::compact`, a sequence of durable commits, so a crash leaves a valid
    /// store). Returns whether any page moved. Needs the database alone: it fails with
    /// [`StorageError::InUse`] while a [`super::Snapshot`] or a handle from
    /// [`Replica::database`] is alive.
    pub fn shrink_file(&mut self) -> Result<bool, StorageError> {
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        let db = Arc::get_mut(&mut self.db).ok_or(StorageError::InUse("another handle holds the database"))?;
        match db.compact() {
            Ok(moved) => Ok(moved),
            Err(redb::CompactionError::TransactionInProgress) => Err(StorageError::InUse("a transaction is open")),
            Err(error) => Err(StorageError::Redb(error.into())),
        }
    }

    /// The log floor: for every origin `o` the log holds every change in `(floor[o], V[o]]`
    /// (and possibly some at or below the floor, left by a state transfer). Empty until
    /// something is compacted; always `≤` the vector.
    pub fn log_floor(&self) -> &VersionVector {
        &self.floor
    }

    /// Removes at most `entries_max` log entries with `seq ≤ upto[o]`, origin by origin in
    /// seq order, and raises the floor to what it removed, in one durable transaction.
    /// Idempotent and monotone: the floor never goes back, and a target at or below it
    /// removes only entries left below it (by a state transfer).
    ///
    /// # Panics
    ///
    /// If `upto` is not at or below the version vector: compacting a change the replica
    /// does not hold would record a floor above it (the horizon never is).
    pub fn compact_log_step(
        &mut self,
        upto: &VersionVector,
        entries_max: usize,
    ) -> Result<CompactReport, StorageError> {
        assert!(
            self.versions.dominates(upto),
            "compaction target {upto:?} is above the version vector {:?}",
            self.versions
        );
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        let spans = match self.spans(upto) {
            Ok(spans) => spans,
            Err(error) => return Err(self.recover(error)),
        };
        if spans.is_empty() || entries_max == 0 {
            return Ok(CompactReport {
                floor: self.floor.clone(),
                complete: spans.is_empty(),
                ..CompactReport::default()
            });
        }
        match self.compact_txn(&spans, entries_max) {
            Ok(report) => {
                debug_assert!(self.versions.dominates(&report.floor), "floor ≤ V");
                self.floor = report.floor.clone();
                Ok(report)
            }
            // An I/O error faults the store; any other error reloads the committed state.
            Err(error) => Err(self.recover(error)),
        }
    }

    /// The origins with something to remove up to `upto`: above the floor, or left below
    /// it (one range probe per origin, in a read transaction: a step with nothing to do
    /// writes nothing).
    fn spans(&self, upto: &VersionVector) -> Result<Vec<Span>, StorageError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(storage::LOG)?;
        let mut spans = Vec::new();
        for (origin, to) in upto.iter() {
            let floor = self.floor.seq(origin);
            let below = to.min(floor);
            let (first, last) = (keys::log_key(origin, 0), keys::log_key(origin, below));
            let left_below = below > 0 && log.range::<&[u8]>(first.as_slice()..=last.as_slice())?.next().is_some();
            if to > floor || left_below {
                spans.push(Span { origin, floor, to });
            }
        }
        Ok(spans)
    }

    fn compact_txn(&self, spans: &[Span], entries_max: usize) -> Result<CompactReport, StorageError> {
        let txn = self.begin_durable_write()?;
        let mut report = CompactReport { floor: self.floor.clone(), complete: true, ..CompactReport::default() };
        {
            let mut log = txn.open_table(storage::LOG)?;
            for span in spans {
                let budget = entries_max - report.entries_removed as usize;
                if budget == 0 {
                    report.complete = false;
                    break;
                }
                let (floor, complete) = remove_span(&mut log, span, budget, &mut report)?;
                report.floor.set(span.origin, floor);
                report.complete &= complete;
            }
            let mut meta = txn.open_table(storage::META)?;
            record_log_floor(&mut meta, &report.floor)?;
        }
        txn.commit()?;
        Ok(report)
    }
}

/// Removes up to `budget` entries of `span` from the log, in seq order; returns the
/// origin's new floor (the last seq removed above the old one) and whether nothing up to
/// `span.to` is left. A missing entry above the floor is corruption: the caller's
/// transaction is then dropped unapplied.
fn remove_span(
    log: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    span: &Span,
    budget: usize,
    report: &mut CompactReport,
) -> Result<(u64, bool), StorageError> {
    let (start, end) = (keys::log_key(span.origin, 0), keys::log_key(span.origin, span.to));
    let lacks = |seq: u64| StorageError::from(Corruption::LogGap { origin: span.origin, seq });
    let (mut floor, mut removed, mut last) = (span.floor, 0usize, 0);
    for item in log.extract_from_if(start.as_slice()..=end.as_slice(), |_, _| true)?.take(budget) {
        let (key, value) = item?;
        let (origin, seq) =
            keys::decode_log_key(key.value()).map_err(|source| Corruption::Key { table: "log_v1", source })?;
        assert_eq!(origin, span.origin, "the range holds one origin's keys");
        if seq > floor {
            if seq != floor + 1 {
                return Err(lacks(floor + 1));
            }
            floor = seq;
        }
        (removed, last) = (removed + 1, seq);
        report.bytes_removed += value.value().len() as u64;
    }
    report.entries_removed += removed as u64;
    // The range ran out before the budget: everything up to `to` must have been there.
    let exhausted = removed < budget;
    if exhausted && floor < span.to {
        return Err(lacks(floor + 1));
    }
    Ok((floor, exhausted || last == span.to))
}

/// Writes the log floor to `meta_v1` and moves the store to a format that can hold a
/// compacted log ([`FORMAT_VERSION_COMPACTED`] or later), in the caller's transaction.
/// State transfer, which also starts a log above seq 1, records its floor the same way.
pub(crate) fn record_log_floor(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    floor: &VersionVector,
) -> Result<(), StorageError> {
    let format = storage::stored_format(meta)?;
    assert!(
        matches!(format, Some(FORMAT_VERSION | FORMAT_VERSION_COMPACTED | FORMAT_VERSION_UNCOMPACTED)),
        "an open store has format {FORMAT_VERSION_UNCOMPACTED} to {FORMAT_VERSION}, not {format:?}"
    );
    if format == Some(FORMAT_VERSION_UNCOMPACTED) {
        meta.insert(storage::META_FORMAT, FORMAT_VERSION_COMPACTED.to_be_bytes().as_slice())?;
    }
    meta.insert(storage::META_LOG_FLOOR, codec::encode(floor).as_slice())?;
    Ok(())
}

/// The log floor as of a read transaction (for the integrity check).
pub(crate) fn stored_log_floor(txn: &redb::ReadTransaction) -> Result<VersionVector, StorageError> {
    read::meta_vector(&txn.open_table(storage::META)?, storage::META_LOG_FLOOR)
}
