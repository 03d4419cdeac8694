//! `.history TABLE KEY...` and `GET /v1/history`: a row's changes as JSON, and as a table
//! for the shell.
//!
//! The library lists the changes in causal order ([`edgestore::Snapshot::row_history`]);
//! here each becomes `{node_id, doc_seq, time_ms, change, effects: [text]}` so the API and
//! both shell backends print the same thing.

use anyhow::{anyhow, Result};
use edgestore::error::ReadError;
use edgestore::{RowEffect, Snapshot, Value};
use serde_json::{json, Value as Json};

/// The history of one row, as the API answers it.
pub fn row_history(snapshot: &Snapshot, table: &str, key: &[Value]) -> Result<Json, ReadError> {
    let entries = snapshot.row_history(table, key)?;
    let changes: Vec<Json> = entries
        .iter()
        .map(|entry| {
            let hash = hex::encode(&entry.change_hash[..8]);
            json!({
                "node_id": entry.node_id.to_string(),
                "doc_seq": entry.doc_seq,
                "time_ms": entry.time_ms,
                "change": hash,
                "effects": entry.effects.iter().map(describe).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "table": table, "changes": changes }))
}

fn describe(effect: &RowEffect) -> String {
    match effect {
        RowEffect::Inserted { causal_length } if *causal_length == 1 => "inserted".to_string(),
        RowEffect::Inserted { .. } => "re-inserted".to_string(),
        RowEffect::Deleted { .. } => "deleted".to_string(),
        RowEffect::Set { column, value } => format!("{column} = {}", literal(value)),
        RowEffect::Incremented { column, by } => format!("{column} += {by}"),
        RowEffect::Removed { column } => format!("{column} removed"),
        RowEffect::Other(text) => text.clone(),
        _ => format!("{effect:?}"),
    }
}

/// A value as SQL would write it: text quoted, so `'NULL'` and NULL differ.
fn literal(value: &Value) -> String {
    match value {
        Value::Text(text) => format!("'{}'", text.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// The history answer as shell columns and rows, oldest change first.
pub fn table(history: &Json) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
    let changes = history["changes"].as_array().ok_or_else(|| anyhow!("the history answer has no changes"))?;
    let columns = ["#", "node", "time (UTC)", "change", "what"].map(String::from).to_vec();
    let rows = changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let effects: Vec<&str> =
                change["effects"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
            vec![
                Value::Integer(i as i64 + 1),
                Value::Text(change["node_id"].as_str().unwrap_or("?").chars().take(8).collect()),
                Value::Text(utc(change["time_ms"].as_i64().unwrap_or(0))),
                Value::Text(change["change"].as_str().unwrap_or("?").to_string()),
                Value::Text(effects.join(", ")),
            ]
        })
        .collect();
    Ok((columns, rows))
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC (the calendar is the `time` crate's). A time outside
/// the years -9999..=9999, which only a wrong clock or a hostile peer writes, is shown as
/// its milliseconds.
pub(crate) fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => format!("{ms} ms since 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(-1), "1969-12-31 23:59:59.999");
        assert_eq!(utc(i64::MIN), format!("{} ms since 1970", i64::MIN), "beyond the calendar");
    }
}
