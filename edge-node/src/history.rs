//! `.history TABLE KEY...` and `GET /v1/history`: a row's changes as JSON, and as a table
//! for the shell.
//!
//! The library lists the changes in causal order ([`edgestore::Snapshot::row_history`]);
//! here each becomes `{node_id, doc_seq, time_ms, change, effects: [text]}` so the API and
//! both shell backends print the same thing.

use anyhow::{anyhow, Result};
use edgestore::{RowEffect, Snapshot, Value};
use serde_json::{json, Value as Json};

/// The history of one row, as the API answers it.
pub fn row_history(snapshot: &Snapshot, table: &str, key: &[Value]) -> Result<Json> {
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

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03}")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
