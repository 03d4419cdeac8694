//! What one automerge change did to a row document, for row history.
//!
//! automerge 0.6.1 exposes a change's operations only through `ExpandedChange` (its legacy
//! JSON model), whose operation, key and object types live in a private module: they can
//! be compared and formatted but not named. Keys are compared with keys built from the
//! names we know (`_cl` and column ids), the root object by its display form `_root`, and
//! the action by its debug form. The tests pin every action this layout makes, so an
//! automerge upgrade that changes these forms fails them rather than the history.

use automerge::ScalarValue;

use super::CAUSAL_LENGTH;
use crate::contain::{contain, Panicked};
use crate::types::Value;

/// One operation of a change on a row document, in the layout's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum DocEffect {
    /// The causal length was set: odd means (re)inserted, even deleted.
    CausalLength(u64),
    /// A column was set to a value (a counter column to its initial value).
    Put {
        /// The column id.
        column_id: String,
        /// The value as written.
        value: Value,
    },
    /// A counter column was incremented.
    Increment {
        /// The column id.
        column_id: String,
        /// The amount, possibly negative.
        by: i64,
    },
    /// A column's value was removed (this layout never does; a foreign writer might).
    Remove {
        /// The column id.
        column_id: String,
    },
    /// An operation this layout never makes (nested objects, marks, unknown keys),
    /// described as automerge shows it.
    Other(String),
}

/// The effects of `change`, one per operation in order. `column_ids` are the keys to
/// recognise besides `_cl`; an operation on any other key is [`DocEffect::Other`].
///
/// Decoding is contained: the change came from a peer or from disk.
pub fn change_effects(change: &automerge::Change, column_ids: &[String]) -> Result<Vec<DocEffect>, Panicked> {
    contain("change expansion", || {
        let expanded = change.decode();
        expanded
            .operations
            .iter()
            .map(|op| {
                if op.obj.to_string() != "_root" || op.insert {
                    return DocEffect::Other(format!("{op:?}"));
                }
                let action = format!("{:?}", op.action);
                if op.key == CAUSAL_LENGTH.into() {
                    return match op.primitive_value() {
                        Some(ScalarValue::Uint(n)) if action.starts_with("Put(") => DocEffect::CausalLength(n),
                        _ => DocEffect::Other(format!("{op:?}")),
                    };
                }
                let Some(column_id) = column_ids.iter().find(|id| op.key == id.as_str().into()).cloned() else {
                    return DocEffect::Other(format!("{op:?}"));
                };
                match (op.primitive_value(), action.split('(').next()) {
                    (Some(value), Some("Put")) => DocEffect::Put { column_id, value: scalar_value(&value) },
                    (Some(ScalarValue::Int(by)), Some("Increment")) => DocEffect::Increment { column_id, by },
                    (None, Some("Delete")) => DocEffect::Remove { column_id },
                    _ => DocEffect::Other(format!("{op:?}")),
                }
            })
            .collect()
    })
}

/// A written scalar as a value, whatever the column's type (history shows what was
/// written, not how the winning definition reads it).
fn scalar_value(scalar: &ScalarValue) -> Value {
    match scalar {
        ScalarValue::Int(v) => Value::Integer(*v),
        ScalarValue::Uint(v) => i64::try_from(*v).map_or(Value::Real(*v as f64), Value::Integer),
        ScalarValue::F64(v) => Value::Real(*v),
        ScalarValue::Counter(c) => Value::Integer(i64::from(c)),
        ScalarValue::Timestamp(v) => Value::Timestamp(*v),
        ScalarValue::Str(v) => Value::Text(v.to_string()),
        ScalarValue::Boolean(v) => Value::Boolean(*v),
        ScalarValue::Bytes(v) => Value::Blob(v.clone()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    use super::*;
    use crate::types::NodeId;

    fn last_change_effects(doc: &mut AutoCommit, ids: &[String]) -> Vec<DocEffect> {
        doc.commit();
        let change = doc.get_last_local_change().expect("a change was committed").clone();
        change_effects(&change, ids).expect("a local change decodes")
    }

    #[test]
    fn every_action_of_the_row_layout_is_recognised() {
        let ids = vec!["c1".to_string(), "c2".to_string()];
        let mut doc = crate::doc::new_doc(NodeId([7; 16]));
        doc.put(ROOT, CAUSAL_LENGTH, ScalarValue::Uint(1)).unwrap();
        doc.put(ROOT, "c1", ScalarValue::Str("pump".into())).unwrap();
        doc.put(ROOT, "c2", ScalarValue::counter(5)).unwrap();
        let expected = vec![
            DocEffect::CausalLength(1),
            DocEffect::Put { column_id: "c1".into(), value: Value::Text("pump".into()) },
            DocEffect::Put { column_id: "c2".into(), value: Value::Integer(5) },
        ];
        assert_eq!(last_change_effects(&mut doc, &ids), expected);

        doc.increment(ROOT, "c2", -2).unwrap();
        doc.put(ROOT, "c1", ScalarValue::Int(3)).unwrap();
        doc.delete(ROOT, "c1").unwrap();
        doc.put(ROOT, "other", ScalarValue::Null).unwrap();
        let effects = last_change_effects(&mut doc, &ids);
        assert_eq!(effects[0], DocEffect::Increment { column_id: "c2".into(), by: -2 });
        assert_eq!(effects[1], DocEffect::Put { column_id: "c1".into(), value: Value::Integer(3) });
        assert_eq!(effects[2], DocEffect::Remove { column_id: "c1".into() });
        assert!(matches!(&effects[3], DocEffect::Other(shown) if shown.contains("other")), "{effects:?}");
    }
}
