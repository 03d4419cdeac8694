//! Log compaction: change envelopes no member can need again leave `log_v1` in bounded
//! steps, and the log floor records how far (docs/design.md § "Log compaction").
//!
//! The floor is a version vector kept in `meta_v1` (`log_floor`): for every origin `o`
//! the log holds exactly the changes `(floor[o], V[o]]`, and `floor ≤ V`. A step removes
//! at most `entries_max` entries, origin by origin in seq order, and raises the floor to
//! the last one it removed, in one short durable transaction — so a crash between steps
//! (or in one) leaves the log and its floor agreeing, and writers queued on the owner
//! thread wait for at most one step. Documents, rows and the state digest are untouched:
//! every compacted change is still in its document, and the digest covers the converged
//! state, not the log. Which target is safe is the caller's concern (the causal-stability
//! horizon); this module only checks that it is at or below what the replica holds.

use redb::ReadableTable;

use super::{read, Replica};
use crate::codec;
use crate::error::StorageError;
use crate::keys;
use crate::storage::{self, FORMAT_VERSION, FORMAT_VERSION_UNCOMPACTED};
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

/// One origin's part of a step: remove seqs `from..=to`, which the log holds.
struct Span {
    origin: NodeId,
    from: u64,
    to: u64,
}

impl Replica {
    /// The log floor: for every origin `o` the log holds every change in `(floor[o], V[o]]`
    /// and nothing else. Empty until something is compacted; always `≤` the vector.
    pub fn log_floor(&self) -> &VersionVector {
        &self.floor
    }

    /// Removes at most `entries_max` log entries with `seq ≤ upto[o]`, origin by origin in
    /// seq order, and raises the floor to what it removed, in one durable transaction.
    /// Idempotent and monotone: a target at or below the floor removes nothing.
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
        let spans: Vec<Span> = upto
            .iter()
            .filter(|&(origin, to)| to > self.floor.seq(origin))
            .map(|(origin, to)| Span { origin, from: self.floor.seq(origin) + 1, to })
            .collect();
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
                let last = remove_span(&mut log, span, budget, &mut report)?;
                report.floor.set(span.origin, last);
                report.complete &= last == span.to;
            }
            let mut meta = txn.open_table(storage::META)?;
            record_log_floor(&mut meta, &report.floor)?;
        }
        txn.commit()?;
        Ok(report)
    }
}

/// Removes up to `budget` entries of `span` from the log, in seq order; returns the last
/// seq removed. A gap is corruption: the caller's transaction is then dropped unapplied.
fn remove_span(
    log: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    span: &Span,
    budget: usize,
    report: &mut CompactReport,
) -> Result<u64, StorageError> {
    let (start, end) = (keys::log_key(span.origin, span.from), keys::log_key(span.origin, span.to));
    let mut last = span.from - 1;
    for item in log.extract_from_if(start.as_slice()..=end.as_slice(), |_, _| true)?.take(budget) {
        let (key, value) = item?;
        let (origin, seq) = keys::decode_log_key(key.value()).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        if origin != span.origin || seq != last + 1 {
            return Err(StorageError::Corrupt(format!(
                "log_v1 lacks {} seq {} below the vector",
                span.origin,
                last + 1
            )));
        }
        last = seq;
        report.entries_removed += 1;
        report.bytes_removed += value.value().len() as u64;
    }
    if last < span.to && (last - span.from + 1) < budget as u64 {
        return Err(StorageError::Corrupt(format!("log_v1 lacks {} seq {} below the vector", span.origin, last + 1)));
    }
    Ok(last)
}

/// Writes the log floor to `meta_v1` and moves the store to the format that can hold a
/// compacted log ([`FORMAT_VERSION`]), in the caller's transaction. State transfer, which
/// also starts a log above seq 1, records its floor the same way.
pub(crate) fn record_log_floor(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    floor: &VersionVector,
) -> Result<(), StorageError> {
    let format = meta.get(storage::META_FORMAT)?.map(|v| v.value().to_vec());
    let format = format.and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok()).map(u32::from_be_bytes);
    assert!(
        matches!(format, Some(FORMAT_VERSION | FORMAT_VERSION_UNCOMPACTED)),
        "an open store has format {FORMAT_VERSION_UNCOMPACTED} or {FORMAT_VERSION}, not {format:?}"
    );
    if format != Some(FORMAT_VERSION) {
        meta.insert(storage::META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
    }
    meta.insert(storage::META_LOG_FLOOR, codec::encode(floor).as_slice())?;
    Ok(())
}

/// The log floor as of a read transaction (for the integrity check).
pub(crate) fn stored_log_floor(txn: &redb::ReadTransaction) -> Result<VersionVector, StorageError> {
    read::meta_vector(&txn.open_table(storage::META)?, storage::META_LOG_FLOOR)
}
