//! Row history: who changed a row, what they did, when, in causal order.
//!
//! A read that calls automerge (queries never do; anti-entropy's `doc_changes_missing` is
//! the other): it loads the row's document from
//! the snapshot and expands each of its changes, contained like every automerge call on
//! bytes from disk. It is a diagnostic for one row (the shell's `.history`), so its cost —
//! proportional to the row's history — is paid only when asked for.

use std::collections::{BTreeMap, BTreeSet};

use super::{load_working_doc, Snapshot};
use crate::change::DocKey;
use crate::contain::contain;
use crate::doc::{self, DocEffect};
use crate::error::{Corruption, ReadError};
use crate::types::{NodeId, Value};

/// What one operation of a change did to the row.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RowEffect {
    /// The row was inserted (or re-inserted after a delete): its causal length became odd.
    Inserted {
        /// The new causal length.
        causal_length: u64,
    },
    /// The row was deleted: its causal length became even.
    Deleted {
        /// The new causal length.
        causal_length: u64,
    },
    /// A column was set (a COUNTER column to its initial value).
    Set {
        /// The column's name under the table's current definition, or its column id if
        /// the current definition has no such column.
        column: String,
        /// The value as written.
        value: Value,
    },
    /// A COUNTER column was incremented.
    Incremented {
        /// The column.
        column: String,
        /// The amount, possibly negative.
        by: i64,
    },
    /// A column's value was removed (never done by edgestore; a foreign writer might).
    Removed {
        /// The column.
        column: String,
    },
    /// An operation edgestore never makes, as automerge describes it.
    Other(String),
}

/// One change to a row.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    /// The node that made the change.
    pub node_id: NodeId,
    /// The automerge change hash (unique; the same on every replica).
    pub change_hash: [u8; 32],
    /// The number of this node's changes to this row up to this one (automerge's
    /// per-document seq; not the envelope seq, which the document does not record).
    pub doc_seq: u64,
    /// The writer's clock when it committed, ms since the epoch (display only: clocks of
    /// different nodes disagree, so it does not decide the order).
    pub time_ms: i64,
    /// What the change did, in operation order.
    pub effects: Vec<RowEffect>,
}

impl Snapshot {
    /// Every change to the row of `table` with primary key `key` (the table's current
    /// incarnation), in causal order: a change comes after every change it depends on;
    /// concurrent changes are ordered by time, node and hash, so every replica holding the
    /// same changes lists them identically. A deleted row still has its history.
    ///
    /// [`ReadError::UnknownTable`] for a table that does not exist, [`ReadError::UnknownRow`]
    /// for a key no change ever touched.
    pub fn row_history(&self, table: &str, key: &[Value]) -> Result<Vec<HistoryEntry>, ReadError> {
        let entry = self.table(table)?;
        let schema = &entry.schema;
        if key.len() != schema.primary_key.len() {
            return Err(ReadError::BadKey { table: schema.name.clone(), reason: "incomplete primary key".into() });
        }
        let pk = self.encoded_key(entry, key)?;
        let doc_key = DocKey::Row { table: schema.name.clone(), epoch: entry.causal_length, pk }.encode();
        let txn = self.txn();
        let stored = super::ReadDocTables::open(txn)?;
        // The actor only matters for writing; this document is only read.
        let Some(mut working) = load_working_doc(NodeId([0; 16]), &stored.tables(), self.catalog(), &doc_key)? else {
            return Err(ReadError::UnknownRow { table: schema.name.clone(), key: super::write::show_key(key) });
        };
        let corrupt = |e: crate::contain::Panicked| {
            ReadError::Storage(Corruption::Document { doc: super::describe_doc_key(&doc_key), source: e.into() }.into())
        };
        let changes = contain("get_changes", || working.doc.get_changes(&[]).into_iter().cloned().collect::<Vec<_>>())
            .map_err(corrupt)?;
        let columns: BTreeMap<String, String> = schema.columns.iter().map(|c| (c.id(), c.name.clone())).collect();
        let column_ids: Vec<String> = columns.keys().cloned().collect();
        causal_order(changes)
            .into_iter()
            .map(|change| {
                let effects = doc::change_effects(&change, &column_ids).map_err(corrupt)?;
                Ok(HistoryEntry {
                    node_id: NodeId::from_slice(change.actor_id().to_bytes()).unwrap_or(NodeId([0; 16])),
                    change_hash: change.hash().0,
                    doc_seq: change.seq(),
                    time_ms: change.timestamp(),
                    effects: effects.into_iter().map(|e| row_effect(e, &columns)).collect(),
                })
            })
            .collect()
    }
}

fn row_effect(effect: DocEffect, columns: &BTreeMap<String, String>) -> RowEffect {
    let name = |id: String| columns.get(&id).cloned().unwrap_or(id);
    match effect {
        DocEffect::CausalLength(n) if n % 2 == 1 => RowEffect::Inserted { causal_length: n },
        DocEffect::CausalLength(n) => RowEffect::Deleted { causal_length: n },
        DocEffect::Put { column_id, value } => RowEffect::Set { column: name(column_id), value },
        DocEffect::Increment { column_id, by } => RowEffect::Incremented { column: name(column_id), by },
        DocEffect::Remove { column_id } => RowEffect::Removed { column: name(column_id) },
        DocEffect::Other(shown) => RowEffect::Other(shown),
    }
}

/// A topological order of a document's changes (Kahn's algorithm) that does not depend on
/// the order this replica happened to receive them: among the changes whose dependencies
/// are listed, the earliest by (time, actor, seq, hash) comes next.
fn causal_order(changes: Vec<automerge::Change>) -> Vec<automerge::Change> {
    type Rank = (i64, Vec<u8>, u64, [u8; 32]);
    let rank =
        |c: &automerge::Change| -> Rank { (c.timestamp(), c.actor_id().to_bytes().to_vec(), c.seq(), c.hash().0) };
    let mut by_hash: BTreeMap<[u8; 32], automerge::Change> = changes.into_iter().map(|c| (c.hash().0, c)).collect();
    let mut waiting_for: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    let mut dependents: BTreeMap<[u8; 32], Vec<[u8; 32]>> = BTreeMap::new();
    let mut ready: BTreeSet<Rank> = BTreeSet::new();
    for (hash, change) in &by_hash {
        // A dependency outside the document cannot occur (it loaded); count only those held.
        let deps: Vec<[u8; 32]> = change.deps().iter().map(|d| d.0).filter(|d| by_hash.contains_key(d)).collect();
        for dep in &deps {
            dependents.entry(*dep).or_default().push(*hash);
        }
        if deps.is_empty() {
            ready.insert(rank(change));
        } else {
            waiting_for.insert(*hash, deps.len());
        }
    }
    let mut ordered = Vec::with_capacity(by_hash.len());
    while let Some(next) = ready.pop_first() {
        let hash = next.3;
        for dependent in dependents.remove(&hash).unwrap_or_default() {
            let count = waiting_for.get_mut(&dependent).expect("every dependent waits");
            *count -= 1;
            if *count == 0 {
                waiting_for.remove(&dependent);
                ready.insert(rank(&by_hash[&dependent]));
            }
        }
        ordered.push(by_hash.remove(&hash).expect("ranked changes are held"));
    }
    debug_assert!(by_hash.is_empty(), "a loaded document's change graph is acyclic");
    ordered
}
