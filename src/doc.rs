//! Reading and writing the automerge documents: one per row, one per catalog object.
//!
//! A document's root map holds `_cl`, the causal length (odd = alive, even = deleted,
//! merged by taking the maximum of all concurrent values), and one entry per column keyed
//! by the column's stable id. Catalog documents hold `_cl` and `def`, the encoded
//! definition. This module is the only one that knows these keys.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId as ExId, ReadDoc, ScalarValue, ROOT};

use crate::contain::{contain, Panicked};
use crate::schema::ColumnDef;
use crate::types::{ColumnType, NodeId, Value};

mod effects;
// Stage 1 of row-history compaction (docs/design.md): exercised by its property tests;
// storage does not compact with it yet.
#[cfg_attr(not(test), allow(dead_code))]
pub mod rebase;
pub use effects::{change_effects, DocEffect};

/// Map key of the causal length.
const CAUSAL_LENGTH: &str = "_cl";
/// Map key of a catalog object's encoded definition.
const DEFINITION: &str = "def";

/// A new, empty document whose changes are authored by `actor`.
pub fn new_doc(actor: NodeId) -> AutoCommit {
    act_as(AutoCommit::new(), actor)
}

/// The document with its future changes authored by `actor`.
pub fn act_as(doc: AutoCommit, actor: NodeId) -> AutoCommit {
    doc.with_actor(automerge::ActorId::from(actor.as_bytes().as_slice()))
}

/// Why a document or change from bytes could not be loaded, parsed or applied.
///
/// automerge's own error types are neither `Clone` nor comparable, and these errors travel
/// inside [`crate::ChangeError`], which is both: automerge's message is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// automerge panicked on the bytes; the panic was contained.
    #[error(transparent)]
    Panicked(#[from] Panicked),
    /// automerge refused to load a saved document.
    #[error("automerge cannot load the document: {0}")]
    Load(String),
    /// automerge refused to parse a change.
    #[error("automerge cannot parse the change: {0}")]
    Parse(String),
    /// automerge refused to apply a change.
    #[error("automerge cannot apply the change: {0}")]
    Apply(String),
    /// The change's chunk checksum (bytes 4..8) is not the start of its hash.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// A change was left waiting for an automerge dependency the document lacks.
    #[error("a change's automerge dependencies are missing")]
    MissingDependencies,
}

/// Loads a document from its stored snapshot (possibly empty) and tail of changes.
///
/// The bytes come from disk, so the automerge calls are contained.
pub fn load_doc(actor: NodeId, snapshot: &[u8], tail: Vec<Vec<u8>>) -> Result<AutoCommit, DocError> {
    let mut doc = if snapshot.is_empty() {
        new_doc(actor)
    } else {
        let loaded = contain("document load", || AutoCommit::load(snapshot))?;
        act_as(loaded.map_err(|e| DocError::Load(e.to_string()))?, actor)
    };
    let mut changes = Vec::with_capacity(tail.len());
    for bytes in tail {
        changes.push(parse_change(bytes)?);
    }
    apply_changes(&mut doc, changes)?;
    Ok(doc)
}

/// The number of automerge changes a document holds (its history, which a loaded
/// document keeps in memory: the document cache's estimate of its size).
pub fn change_count(doc: &mut AutoCommit) -> u64 {
    doc.get_changes(&[]).len() as u64
}

/// Parses an automerge change from untrusted bytes, contained, and verifies its checksum.
///
/// automerge 0.6.1's `Change::from_bytes` does not check the chunk checksum (bytes 4..8,
/// the first 4 bytes of the change hash); only a whole-document load does. Without this
/// check a corrupted change would be accepted under a genuine `(origin, seq)`.
pub fn parse_change(bytes: Vec<u8>) -> Result<automerge::Change, DocError> {
    let checksum: Option<[u8; 4]> = bytes.get(4..8).and_then(|c| c.try_into().ok());
    let change = contain("change decoding", || automerge::Change::from_bytes(bytes))?
        .map_err(|e| DocError::Parse(e.to_string()))?;
    if checksum.is_none_or(|c| c != change.hash().0[..4]) {
        return Err(DocError::ChecksumMismatch);
    }
    Ok(change)
}

/// Applies changes to a document, contained; fails if any change is left waiting for a
/// dependency (automerge would otherwise queue it silently).
pub fn apply_changes(doc: &mut AutoCommit, changes: Vec<automerge::Change>) -> Result<(), DocError> {
    let hashes: Vec<_> = changes.iter().map(|c| c.hash()).collect();
    contain("apply_changes", || doc.apply_changes(changes))?.map_err(|e| DocError::Apply(e.to_string()))?;
    if !holds_changes(doc, &hashes)? {
        return Err(DocError::MissingDependencies);
    }
    Ok(())
}

/// Whether the document holds every change in `hashes`, contained: automerge applies a
/// change only once it holds all the change's dependencies (`is_causally_ready`).
pub fn holds_changes(doc: &mut AutoCommit, hashes: &[automerge::ChangeHash]) -> Result<bool, Panicked> {
    contain("dependency check", || hashes.iter().all(|hash| doc.get_change_by_hash(hash).is_some()))
}

/// The document's causal length: the maximum of every concurrent value (0 if never set).
pub fn causal_length(doc: &AutoCommit) -> u64 {
    doc.get_all(ROOT, CAUSAL_LENGTH)
        .unwrap_or_default()
        .iter()
        .filter_map(|(value, _)| match value.to_scalar() {
            Some(ScalarValue::Uint(n)) => Some(*n),
            Some(ScalarValue::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Whether the causal length says alive.
pub fn is_alive(doc: &AutoCommit) -> bool {
    causal_length(doc) % 2 == 1
}

/// Moves the causal length to the next value of the wanted parity: the next odd value to
/// (re)create, the next even value to delete. `None` if it is exhausted (a peer set it to
/// `u64::MAX`): the row can no longer change liveness.
pub fn bump_causal_length(doc: &mut AutoCommit) -> Option<u64> {
    let next = causal_length(doc).checked_add(1)?;
    doc.put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(next))
        .expect("putting a scalar in the root map of a local document cannot fail");
    Some(next)
}

/// Sets every column of a row being (re)inserted, in definition order: what an insert of a
/// row stages after bumping its causal length. [`new_row_doc`] rebuilds the document of a
/// row only ever inserted from the same operations.
pub fn put_row(doc: &mut AutoCommit, columns: &[ColumnDef], values: &[Value]) {
    assert_eq!(columns.len(), values.len(), "a row has one value per column");
    for (column, value) in columns.iter().zip(values) {
        put_column(doc, column, value);
    }
}

/// Whether operations are staged on the document and not committed yet.
pub fn has_staged_ops(doc: &AutoCommit) -> bool {
    doc.pending_ops() > 0
}

/// The document of a row inserted into an empty document by one change of `actor` at
/// `time_ms`: `_cl` = 1, then [`put_row`]. Equal inputs give a byte-identical change, so
/// such a document need not be stored (`replica/implicit.rs`).
pub fn new_row_doc(actor: NodeId, time_ms: i64, columns: &[ColumnDef], values: &[Value]) -> AutoCommit {
    let mut doc = new_doc(actor);
    let cl = bump_causal_length(&mut doc);
    debug_assert_eq!(cl, Some(1), "an empty document's causal length is 0");
    put_row(&mut doc, columns, values);
    doc.commit_with(automerge::transaction::CommitOptions::default().with_time(time_ms));
    doc
}

/// Sets a column's value.
pub fn put_column(doc: &mut AutoCommit, column: &ColumnDef, value: &Value) {
    let scalar = to_scalar(value, column.ty);
    doc.put(ROOT, column.id(), scalar).expect("putting a scalar in the root map of a local document cannot fail");
}

/// Why an increment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementError {
    /// The column holds no counter.
    NotACounter,
    /// The sum would leave the i64 range (automerge would panic or wrap).
    Overflow,
}

/// Adds `by` to a COUNTER column, refusing an increment that would overflow any of the
/// column's concurrent counter values.
pub fn increment(doc: &mut AutoCommit, column: &ColumnDef, by: i64) -> Result<(), IncrementError> {
    let values = doc.get_all(ROOT, column.id()).unwrap_or_default();
    for (value, _) in &values {
        match value.to_scalar() {
            Some(ScalarValue::Counter(c)) if i64::from(c).checked_add(by).is_none() => {
                return Err(IncrementError::Overflow)
            }
            Some(ScalarValue::Counter(_)) => {}
            _ => return Err(IncrementError::NotACounter),
        }
    }
    if values.is_empty() {
        return Err(IncrementError::NotACounter);
    }
    // Checked above; contained anyway, since the counter's history comes from peers. On
    // error the caller drops the staged document.
    contain("increment", || doc.increment(ROOT, column.id(), by))
        .map_err(|_| IncrementError::Overflow)?
        .map_err(|_| IncrementError::NotACounter)
}

/// A column's value as materialized, and every concurrent value with its writer.
pub fn read_column(doc: &AutoCommit, column: &ColumnDef) -> (Value, Vec<(Value, NodeId)>) {
    let all = doc.get_all(ROOT, column.id()).unwrap_or_default();
    let values: Vec<(Value, NodeId)> = all
        .iter()
        .map(|(value, id)| {
            let value = value.to_scalar().map_or(Value::Null, |s| from_scalar(s, column.ty));
            (value, writer(id))
        })
        .collect();
    // automerge orders concurrent values by op id; the last one is the winner `get` returns.
    let winner = values.last().map(|(v, _)| v.clone());
    let winner = winner.unwrap_or_else(|| column.absent_value());
    (winner, values)
}

/// Sets a catalog object's definition.
pub fn put_definition(doc: &mut AutoCommit, definition: Vec<u8>) {
    doc.put(ROOT, DEFINITION, ScalarValue::Bytes(definition))
        .expect("putting a scalar in the root map of a local document cannot fail");
}

/// Every concurrent definition with its writer; the last is the winner.
pub fn read_definitions(doc: &AutoCommit) -> Vec<(Vec<u8>, NodeId)> {
    doc.get_all(ROOT, DEFINITION)
        .unwrap_or_default()
        .iter()
        .filter_map(|(value, id)| match value.to_scalar() {
            Some(ScalarValue::Bytes(bytes)) => Some((bytes.clone(), writer(id))),
            _ => None,
        })
        .collect()
}

/// Prefix of the root keys that hold `ALTER TABLE` fields in a table's catalog document.
const ALTER_PREFIX: &str = "alter.";

/// Which field of a column an `ALTER TABLE` sets (docs/design.md § ALTER TABLE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlterField {
    /// `ADD COLUMN`: the column's encoded definition; its op orders the column.
    Add,
    /// `RENAME COLUMN`: the column's name.
    Name,
    /// `DROP COLUMN`: `true`.
    Drop,
}

impl AlterField {
    fn word(self) -> &'static str {
        match self {
            AlterField::Add => "add",
            AlterField::Name => "name",
            AlterField::Drop => "drop",
        }
    }
}

/// The root key of a column's field in incarnation `epoch`: flat keys, not a nested map,
/// so that fields written concurrently by two nodes never meet in two different map
/// objects (one of which would lose), and a re-created table starts without them.
fn alter_key(epoch: u64, field: AlterField, column_id: &str) -> String {
    format!("{ALTER_PREFIX}{epoch}.{}.{column_id}", field.word())
}

/// One concurrent value of an `ALTER TABLE` field.
#[derive(Clone, Debug, PartialEq)]
pub struct AlterValue {
    /// `Add`: the encoded column; `Name`: the name, as UTF-8; `Drop`: empty.
    pub bytes: Vec<u8>,
    /// The node that wrote it.
    pub writer: NodeId,
    /// The op's Lamport counter: with the writer, the same total order on every node.
    pub counter: u64,
}

/// Sets a column's `ALTER TABLE` field in incarnation `epoch` of a table.
pub fn put_alter(doc: &mut AutoCommit, epoch: u64, field: AlterField, column_id: &str, bytes: Vec<u8>) {
    let value = match field {
        AlterField::Add => ScalarValue::Bytes(bytes),
        AlterField::Name => ScalarValue::Str(String::from_utf8(bytes).expect("a name is UTF-8").into()),
        AlterField::Drop => ScalarValue::Boolean(true),
    };
    doc.put(ROOT, alter_key(epoch, field, column_id), value)
        .expect("putting a scalar in the root map of a local document cannot fail");
}

/// Every `ALTER TABLE` field of incarnation `epoch`, by (column id, field), each with its
/// concurrent values in automerge's order (the last one wins). Root keys of another shape
/// and values of another scalar type (a faulty peer) are skipped, alike on every node;
/// `catalog::apply_alters` refuses fields whose contents do not decode or validate.
pub fn read_alters(doc: &AutoCommit, epoch: u64) -> std::collections::BTreeMap<(String, AlterField), Vec<AlterValue>> {
    let prefix = format!("{ALTER_PREFIX}{epoch}.");
    let mut fields = std::collections::BTreeMap::new();
    for key in doc.keys(ROOT) {
        let Some(rest) = key.strip_prefix(&prefix) else { continue };
        let Some((word, id)) = rest.split_once('.') else { continue };
        let field = match word {
            "add" => AlterField::Add,
            "name" => AlterField::Name,
            "drop" => AlterField::Drop,
            _ => continue,
        };
        let values: Vec<AlterValue> = doc
            .get_all(ROOT, key.as_str())
            .unwrap_or_default()
            .iter()
            .filter_map(|(value, op)| {
                let bytes = match (field, value.to_scalar()?) {
                    (AlterField::Add, ScalarValue::Bytes(b)) => b.clone(),
                    (AlterField::Name, ScalarValue::Str(s)) => s.as_bytes().to_vec(),
                    (AlterField::Drop, ScalarValue::Boolean(true)) => Vec::new(),
                    _ => return None,
                };
                let ExId::Id(counter, _, _) = op else { return None };
                Some(AlterValue { bytes, writer: writer(op), counter: *counter })
            })
            .collect();
        if !values.is_empty() {
            fields.insert((id.to_string(), field), values);
        }
    }
    fields
}

/// The document's heads, sorted: equal heads mean equal documents.
pub fn heads(doc: &mut AutoCommit) -> Vec<[u8; 32]> {
    let mut heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
    heads.sort_unstable();
    heads
}

/// The node that wrote an op. Every foreign change's actor was checked to be a 16-byte
/// node id on arrival, so anything else is a local invariant violation shown as zeros.
fn writer(id: &ExId) -> NodeId {
    match id {
        ExId::Id(_, actor, _) => NodeId::from_slice(actor.to_bytes()).unwrap_or(NodeId([0; 16])),
        ExId::Root => NodeId([0; 16]),
    }
}

fn to_scalar(value: &Value, ty: ColumnType) -> ScalarValue {
    match (value, ty) {
        (Value::Null, _) => ScalarValue::Null,
        (Value::Integer(v), ColumnType::Counter) => ScalarValue::counter(*v),
        (Value::Integer(v), _) => ScalarValue::Int(*v),
        (Value::Timestamp(v), _) => ScalarValue::Timestamp(*v),
        (Value::Real(v), _) => ScalarValue::F64(*v),
        (Value::Text(v), _) => ScalarValue::Str(v.as_str().into()),
        (Value::Boolean(v), _) => ScalarValue::Boolean(*v),
        (Value::Blob(v), _) => ScalarValue::Bytes(v.clone()),
    }
}

/// Converts a stored scalar to a value of the column's type. A scalar of another type can
/// only come from a foreign writer; it reads as NULL on every replica alike.
fn from_scalar(scalar: &ScalarValue, ty: ColumnType) -> Value {
    match (scalar, ty) {
        (ScalarValue::Int(v), ColumnType::Integer) => Value::Integer(*v),
        (ScalarValue::Counter(c), ColumnType::Counter) => Value::Integer(i64::from(c)),
        (ScalarValue::Timestamp(v), ColumnType::Timestamp) => Value::Timestamp(*v),
        (ScalarValue::F64(v), ColumnType::Real) => Value::Real(*v),
        (ScalarValue::Str(v), ColumnType::Text) => Value::Text(v.to_string()),
        (ScalarValue::Boolean(v), ColumnType::Boolean) => Value::Boolean(*v),
        (ScalarValue::Bytes(v), ColumnType::Blob) => Value::Blob(v.clone()),
        _ => Value::Null,
    }
}
