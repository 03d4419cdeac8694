//! Append-only tables' rows, bytes and expiry as `/v1/status` shows them, and as one line
//! per table for `edge-node status` and the shell's `.status` (docs/design.md
//! § "Retention, the budget and the floor"). The expiry itself runs in the compaction
//! driver (`compaction.rs`).

use edgestore::AppendTableStatus;
use serde_json::{json, Value as JsonValue};

/// The `append_tables` array of `/v1/status`.
pub fn to_json(tables: &[AppendTableStatus]) -> JsonValue {
    let tables: Vec<JsonValue> = tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "rows": t.rows,
                "bytes": t.bytes,
                "buckets": t.buckets,
                "time_unit": if t.timestamp { "ms" } else { "column" },
                "floor": t.floor,
                "retention": t.retention,
                "max_bytes": t.max_bytes,
                "expired_rows": t.expired_rows,
                "expired_on_arrival": t.expired_on_arrival,
            })
        })
        .collect();
    JsonValue::Array(tables)
}

/// One table of `append_tables` in a line: rows, bytes, the policy and what it removed.
pub fn line(table: &JsonValue) -> String {
    let count = |key: &str| table[key].as_u64().unwrap_or(0);
    let timestamp = table["time_unit"].as_str() == Some("ms");
    let mut line = format!(
        "{}: {} rows in {} bucket(s), {} B",
        table["name"].as_str().unwrap_or("?"),
        count("rows"),
        count("buckets"),
        count("bytes"),
    );
    let mut policy = Vec::new();
    if let Some(retention) = table["retention"].as_i64() {
        policy.push(if timestamp {
            format!("retention {}", duration(retention))
        } else {
            format!("retention {retention}")
        });
    }
    if let Some(max_bytes) = table["max_bytes"].as_u64() {
        policy.push(format!("max_bytes {max_bytes}"));
    }
    if !policy.is_empty() {
        line.push_str(&format!("; {}", policy.join(", ")));
    }
    if let Some(floor) = table["floor"].as_i64() {
        let floor = if timestamp { format!("{} UTC", crate::history::utc(floor)) } else { floor.to_string() };
        line.push_str(&format!("; kept from {floor}, {} rows expired", count("expired_rows")));
        let on_arrival = count("expired_on_arrival");
        if on_arrival > 0 {
            line.push_str(&format!(" (+{on_arrival} dropped on arrival)"));
        }
    }
    line
}

/// A retention in ms as the largest whole unit that divides it.
fn duration(ms: i64) -> String {
    for (unit, name) in [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second")] {
        if ms % unit == 0 {
            let n = ms / unit;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// A table three hours into its retention, for the tests of this module and of metrics.
#[cfg(test)]
pub(crate) fn sample_status() -> AppendTableStatus {
    AppendTableStatus {
        name: "readings".into(),
        rows: 540,
        bytes: 12_345,
        buckets: 3,
        timestamp: true,
        floor: Some(10_800_000),
        retention: Some(3 * 3_600_000),
        max_bytes: Some(1 << 20),
        expired_rows: 180,
        expired_on_arrival: 60,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_policy_the_floor_and_what_went() {
        let status = sample_status();
        let json = to_json(std::slice::from_ref(&status));
        assert_eq!(
            line(&json[0]),
            "readings: 540 rows in 3 bucket(s), 12345 B; retention 3 hours, max_bytes 1048576; \
             kept from 1970-01-01 03:00:00.000 UTC, 180 rows expired (+60 dropped on arrival)"
        );
        let fresh = AppendTableStatus {
            timestamp: false,
            floor: None,
            retention: None,
            max_bytes: None,
            expired_rows: 0,
            expired_on_arrival: 0,
            ..status
        };
        assert_eq!(line(&to_json(&[fresh])[0]), "readings: 540 rows in 3 bucket(s), 12345 B");
        assert_eq!(duration(90_000), "90 seconds");
        assert_eq!(duration(1500), "1500 ms");
    }
}
