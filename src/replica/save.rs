//! Background document save: documents whose tail holds a few raw automerge changes are
//! saved whole into `docs_v1` and their tail removed, in bounded durable steps
//! (docs/design.md § "Document save").
//!
//! A row updated a few times keeps each update as a raw change in `doc_tail_v1` until the
//! tail reaches [`DOC_TAIL_CHANGES_MAX`](super::DOC_TAIL_CHANGES_MAX); automerge's saved
//! form of the same document is several times smaller (it shares the actor, the keys and
//! the change metadata among all changes). Saving changes how the document is stored, not
//! what it holds: its changes, heads, rows and digest are the same before and after.
//!
//! A step walks `doc_heads_v1` (which records each tail's length) from an in-memory
//! cursor, examines at most [`SAVE_SCAN_DOCS_MAX`] entries and saves at most `docs_max`
//! documents whose tail holds at least [`SAVE_TAIL_CHANGES_MIN`] changes, in one durable
//! transaction: a crash between or in steps leaves every document either as it was or
//! saved. A pass over every document starts only when some tail has grown since the last
//! pass began, so an idle store does no work, and a document is saved at most once per
//! pass however often it is written.

use std::ops::Bound;

use redb::ReadableDatabase;

use super::{load_working_doc, Replica, WorkingDoc, WriteTables};
use crate::doc;
use crate::error::{Corruption, StorageError};
use crate::storage;

/// Changes a tail must hold for its document to be saved. A document of one change saved
/// whole is larger than the change itself (docs/design.md § "Document save" has the
/// sizes), so a row written once stays a single tail change.
pub const SAVE_TAIL_CHANGES_MIN: u32 = 2;
/// `doc_heads_v1` entries a step examines at most, whether or not it saves them: bounds a
/// step's read when most documents need nothing.
pub const SAVE_SCAN_DOCS_MAX: usize = 4096;

/// What one [`Replica::save_docs_step`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// Documents examined (their `doc_heads_v1` entries read).
    pub docs_examined: u64,
    /// Documents saved whole.
    pub docs_saved: u64,
    /// Tail changes removed from `doc_tail_v1`.
    pub tail_changes_removed: u64,
    /// Bytes the saved documents were stored in before (old snapshots and tail changes,
    /// values only).
    pub bytes_before: u64,
    /// Bytes of their new snapshots.
    pub bytes_after: u64,
    /// Whether nothing is left to save: a pass over every document ended and no tail grew
    /// since it began. Another step does nothing until a tail grows.
    pub complete: bool,
}

/// Where the sweep is. In memory only: after a restart a pass starts from the first key.
#[derive(Debug)]
pub(crate) struct Sweep {
    /// The last document key the current pass examined; `None` between passes.
    cursor: Option<Vec<u8>>,
    /// A tail grew to [`SAVE_TAIL_CHANGES_MIN`] since the current pass began (or since
    /// the last one ended): another pass is due.
    dirty: bool,
}

impl Default for Sweep {
    /// A store just opened may hold tails from before: one pass is due.
    fn default() -> Sweep {
        Sweep { cursor: None, dirty: true }
    }
}

impl Sweep {
    /// A document's tail now holds `tail_len` changes (called whenever one is persisted;
    /// an aborted transaction may set it needlessly, which costs one pass).
    pub(crate) fn tail_persisted(&mut self, tail_len: u32) {
        self.dirty |= tail_len >= SAVE_TAIL_CHANGES_MIN;
    }
}

/// The documents a step saves, and the cursor after them (`None`: the pass ended).
type Candidates = (Vec<Vec<u8>>, Option<Vec<u8>>);

impl Replica {
    /// Saves at most `docs_max` documents whose tail holds at least
    /// [`SAVE_TAIL_CHANGES_MIN`] changes, examining at most [`SAVE_SCAN_DOCS_MAX`]
    /// documents from where the last step stopped, in one durable transaction (none when
    /// there is nothing to save). Documents, heads, rows and the digest are unchanged.
    /// Refused while the store is faulted or below the low-disk floor (a save writes a
    /// new snapshot before its tail's pages are free).
    pub fn save_docs_step(&mut self, docs_max: usize) -> Result<SaveReport, StorageError> {
        if let Some(refusal) = self.local_write_refusal() {
            return Err(refusal);
        }
        let mut report = SaveReport::default();
        if self.sweep.cursor.is_none() {
            if !self.sweep.dirty {
                report.complete = true;
                return Ok(report);
            }
            // A pass begins: a tail that grows from here on may be behind the cursor.
            self.sweep.dirty = false;
        }
        let (keys, next) = match self.save_candidates(docs_max, &mut report) {
            Ok(found) => found,
            Err(error) => return Err(self.save_failed(error)),
        };
        if !keys.is_empty() {
            if let Err(error) = self.save_txn(&keys, &mut report) {
                return Err(self.save_failed(error));
            }
        }
        self.sweep.cursor = next;
        report.complete = self.sweep.cursor.is_none() && !self.sweep.dirty;
        Ok(report)
    }

    /// A step failed: the committed state is reloaded (or the store faulted), and the pass
    /// is due again from where it was.
    fn save_failed(&mut self, error: StorageError) -> StorageError {
        self.sweep.dirty = true;
        self.recover(error)
    }

    /// The next documents to save after the cursor, and the cursor after them (`None`:
    /// the pass reached the last document).
    fn save_candidates(&self, docs_max: usize, report: &mut SaveReport) -> Result<Candidates, StorageError> {
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(storage::DOC_HEADS)?;
        let start = match &self.sweep.cursor {
            Some(cursor) => Bound::Excluded(cursor.as_slice()),
            None => Bound::Unbounded,
        };
        let mut range = heads.range::<&[u8]>((start, Bound::Unbounded))?;
        let (mut keys, mut last) = (Vec::new(), None);
        while keys.len() < docs_max && report.docs_examined < SAVE_SCAN_DOCS_MAX as u64 {
            let Some(item) = range.next() else { return Ok((keys, None)) };
            let (key, value) = item?;
            report.docs_examined += 1;
            let (tail_len, _) = storage::decode_heads(value.value())?;
            if tail_len >= SAVE_TAIL_CHANGES_MIN {
                keys.push(key.value().to_vec());
            }
            last = Some(key.value().to_vec());
        }
        // Stopped by a bound: the pass ends only once a step finds no key after the cursor.
        Ok((keys, last.or_else(|| self.sweep.cursor.clone())))
    }

    fn save_txn(&mut self, keys: &[Vec<u8>], report: &mut SaveReport) -> Result<(), StorageError> {
        let txn = self.begin_durable_write()?;
        {
            let mut tables = WriteTables::open(&txn)?;
            for key in keys {
                self.save_doc(&mut tables, key, report)?;
            }
            // Heads entries change only in their tail length, which the digest does not
            // cover: the flush writes nothing new, and the shadow check says so.
            tables.digest_delta.flush(&mut tables.digest)?;
            #[cfg(debug_assertions)]
            super::integrity::shadow_check_digest(&tables)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Saves one document whole, removes its tail and records the tail length 0 with the
    /// same heads. A cached document is saved from the cache and its cached tail length
    /// follows; one loaded here is not cached, so a sweep never evicts documents writers use.
    fn save_doc(
        &mut self,
        tables: &mut WriteTables<'_>,
        key: &[u8],
        report: &mut SaveReport,
    ) -> Result<(), StorageError> {
        let stored = storage::get_bytes(&tables.heads, key)?
            .expect("listed from doc_heads_v1 on the owner thread, which alone writes");
        let (tail_len, stored_heads) = storage::decode_heads(&stored)?;
        let mut loaded = None;
        if !self.cache.contains(key) {
            loaded = load_working_doc(self.node, &tables.doc_tables(), &self.catalog, key)?;
        }
        let working: &mut WorkingDoc = match loaded.as_mut() {
            Some(working) => working,
            None => self.cache.peek_mut(key).expect("the document is cached or was loaded: it has heads"),
        };
        assert_eq!(working.tail_len, tail_len, "a cached document's tail length is the stored one");
        let heads = doc::heads(&mut working.doc);
        if heads.concat() != stored_heads {
            let doc = super::describe_doc_key(key);
            return Err(Corruption::HeadsDiffer { doc }.into());
        }
        let snapshot = working.doc.save();
        #[cfg(debug_assertions)]
        shadow_check_saved(self.node, &snapshot, &heads);
        let old_snapshot = tables.docs.insert(key, snapshot.as_slice())?.map_or(0, |v| v.value().len());
        report.bytes_before += old_snapshot as u64;
        for position in 0..tail_len {
            let change = tables.tail.remove(storage::tail_key(key, position).as_slice())?;
            let change =
                change.ok_or_else(|| Corruption::TailMissing { doc: super::describe_doc_key(key), position })?;
            report.bytes_before += change.value().len() as u64;
        }
        let saved_heads = storage::encode_heads(0, &heads);
        tables.heads.insert(key, saved_heads.as_slice())?;
        tables.digest_delta.heads(key, Some(&stored), Some(&saved_heads))?;
        working.tail_len = 0;
        report.docs_saved += 1;
        report.tail_changes_removed += u64::from(tail_len);
        report.bytes_after += snapshot.len() as u64;
        Ok(())
    }
}

/// The saved bytes load on their own into a document with the stored heads: the snapshot
/// replaces the tail, so it must hold every change the tail held.
#[cfg(debug_assertions)]
fn shadow_check_saved(node: crate::types::NodeId, snapshot: &[u8], heads: &[[u8; 32]]) {
    let mut reloaded = doc::load_doc(node, snapshot, Vec::new()).expect("a document just saved loads");
    assert_eq!(doc::heads(&mut reloaded), heads, "a saved document has the heads it was saved with");
}
