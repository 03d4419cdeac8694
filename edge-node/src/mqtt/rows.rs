//! MQTT ingest, the pure part: which ingest a message's topic belongs to, and the rows its
//! payload gives. No I/O here; `store.rs` writes what this returns.
//!
//! A payload is a JSON object (one row) or a non-empty array of objects with the same keys
//! (one row each). A key names a column, case-insensitively like a SQL name; a number, a
//! string, a boolean and null become that SQL value, a nested object or array its JSON
//! text. `columns_from_topic` adds columns taken from topic levels, parsed by the column's
//! type. A value of the wrong type is left for the insert to refuse, so the one place that
//! decides what a column accepts is the SQL engine.

use edgestore::{ColumnType, TableSchema, Value};
use serde_json::Value as Json;

/// Rows of one payload, at most (a larger array is refused).
pub const ROWS_PER_MESSAGE_MAX: usize = 1000;

/// What an ingest does with a payload key that names no column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownKeys {
    /// The message is refused (a dead letter): a typo in a sensor's firmware is seen.
    #[default]
    Refuse,
    /// The key is left out.
    Ignore,
}

/// One `[[mqtt.ingest]]`: messages on topics matching `filter` go to `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The topic filter subscribed to (`+` and `#` allowed).
    pub filter: String,
    /// The table rows go to.
    pub table: String,
    /// Columns given by topic levels: (level index, column name), lower-cased.
    pub topic_columns: Vec<(usize, String)>,
    /// What a key that names no column does.
    pub unknown_keys: UnknownKeys,
}

/// The rows of one message: every row has a value for each of `columns`, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRows {
    /// Column names, lower-cased: the payload's keys in sorted order (serde_json's map),
    /// then the topic's, so messages with the same keys share a statement.
    pub columns: Vec<String>,
    /// One entry per row.
    pub rows: Vec<Vec<Value>>,
}

/// The first route whose filter matches `topic`.
pub fn route_of<'r>(routes: &'r [Route], topic: &str) -> Option<&'r Route> {
    routes.iter().find(|route| topic_matches(&route.filter, topic))
}

/// Whether `topic` matches `filter` by MQTT 3.1.1's rules (§ 4.7): `+` is one level, a
/// last `#` is any number of levels (also none: `a/#` matches `a`), and a topic starting
/// with `$` matches no filter here (the config refuses filters that start with `$`).
/// Not `rumqttc::matches`: it slices the topic's first byte and panics when the first
/// character is not ASCII, and a topic is the broker's input.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') {
        return false;
    }
    let mut levels = topic.split('/');
    for wanted in filter.split('/') {
        match (wanted, levels.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some(_)) => {}
            (literal, Some(level)) if literal == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// The rows `payload` on `topic` gives for `route`'s table, or why it gives none.
pub fn message_rows(route: &Route, schema: &TableSchema, topic: &str, payload: &[u8]) -> Result<MessageRows, String> {
    let json: Json = serde_json::from_slice(payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let objects = match json {
        Json::Object(object) => vec![object],
        Json::Array(items) if items.is_empty() => return Err("the payload is an empty array".into()),
        Json::Array(items) if items.len() > ROWS_PER_MESSAGE_MAX => {
            return Err(format!("the payload has {} rows, more than {ROWS_PER_MESSAGE_MAX}", items.len()))
        }
        Json::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Json::Object(object) => Ok(object),
                other => Err(format!("an array payload holds objects, not {}", json_kind(&other))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("the payload is {}, not a JSON object or an array of objects", json_kind(&other))),
    };
    let keys = payload_columns(route, schema, &objects[0])?;
    let topic_values = topic_values(route, schema, topic)?;
    let mut columns: Vec<String> = keys.iter().map(|(_, column)| column.clone()).collect();
    columns.extend(route.topic_columns.iter().map(|(_, column)| column.clone()));
    if let Some(column) = first_repeated(&columns) {
        return Err(format!("column {column:?} is given twice (by two keys, or by a key and the topic)"));
    }
    let mut rows = Vec::with_capacity(objects.len());
    for object in &objects {
        rows.push(object_row(route, schema, &keys, object, &topic_values)?);
    }
    debug_assert!(rows.iter().all(|row| row.len() == columns.len()), "every row has a value for each column");
    Ok(MessageRows { columns, rows })
}

/// The object's keys that name columns, each with its column, in the object's order.
fn payload_columns(
    route: &Route,
    schema: &TableSchema,
    object: &serde_json::Map<String, Json>,
) -> Result<Vec<(String, String)>, String> {
    let mut keys = Vec::with_capacity(object.len());
    for key in object.keys() {
        match schema.visible_columns().find(|c| c.name.eq_ignore_ascii_case(key)) {
            Some(column) => keys.push((key.clone(), column.name.clone())),
            None if route.unknown_keys == UnknownKeys::Ignore => {}
            None => return Err(format!("table {} has no column {key:?}", schema.name)),
        }
    }
    if keys.is_empty() && route.topic_columns.is_empty() {
        return Err(format!("no key of the payload names a column of table {}", schema.name));
    }
    Ok(keys)
}

/// `object`'s values in the order of `keys` (the first object's), then the topic's values.
fn object_row(
    route: &Route,
    schema: &TableSchema,
    keys: &[(String, String)],
    object: &serde_json::Map<String, Json>,
    topic_values: &[Value],
) -> Result<Vec<Value>, String> {
    let these = payload_columns(route, schema, object)?;
    let differ = || "the objects of an array payload must have the same keys".to_string();
    if these.len() != keys.len() {
        return Err(differ());
    }
    let mut row = Vec::with_capacity(keys.len() + topic_values.len());
    for (_, column) in keys {
        let (key, _) = these.iter().find(|(_, c)| c == column).ok_or_else(differ)?;
        row.push(json_value(&object[key]));
    }
    row.extend_from_slice(topic_values);
    Ok(row)
}

/// The values of the topic's levels that `route` maps to columns, parsed by column type.
fn topic_values(route: &Route, schema: &TableSchema, topic: &str) -> Result<Vec<Value>, String> {
    let levels: Vec<&str> = topic.split('/').collect();
    route
        .topic_columns
        .iter()
        .map(|(index, column)| {
            let level =
                levels.get(*index).ok_or_else(|| format!("the topic has no level {index} for column {column}"))?;
            let ty = schema
                .visible_columns()
                .find(|c| c.name == *column)
                .map(|c| c.ty)
                .ok_or_else(|| format!("table {} has no column {column:?} (columns_from_topic)", schema.name))?;
            level_value(level, ty)
                .ok_or_else(|| format!("topic level {level:?} is not a {} for column {column}", ty.sql_name()))
        })
        .collect()
}

/// A topic level as a value of a column of type `ty`; `None` when it is not one. Text is
/// kept as text for TIMESTAMP and BLOB columns: the insert converts ISO-8601 timestamps and
/// refuses the rest with the SQL engine's message.
fn level_value(level: &str, ty: ColumnType) -> Option<Value> {
    Some(match ty {
        ColumnType::Integer | ColumnType::Counter => Value::Integer(level.parse().ok()?),
        ColumnType::Real => Value::Real(level.parse::<f64>().ok().filter(|r| r.is_finite())?),
        ColumnType::Boolean => match level.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Boolean(true),
            "false" | "0" => Value::Boolean(false),
            _ => return None,
        },
        ColumnType::Timestamp => match level.parse::<i64>() {
            Ok(ms) => Value::Timestamp(ms),
            Err(_) => Value::Text(level.to_string()),
        },
        ColumnType::Text | ColumnType::Blob => Value::Text(level.to_string()),
    })
}

/// A JSON value as the SQL value of a payload key.
fn json_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(_) | Json::Object(_) => Value::Text(json.to_string()),
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn first_repeated(columns: &[String]) -> Option<&String> {
    columns.iter().enumerate().find(|(i, c)| columns[..*i].contains(c)).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn topics_match_filters_level_by_level() {
        for (filter, topic, expected) in [
            ("plant/+/temp", "plant/7/temp", true),
            ("plant/+/temp", "plant/7/humidity", false),
            ("plant/+/temp", "plant/temp", false),
            ("plant/+", "plant/", true),
            ("plant/#", "plant", true),
            ("plant/#", "plant/a/b/c", true),
            ("#", "anything/at/all", true),
            ("#", "$SYS/broker/load", false),
            ("+/x", "$SYS/x", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            // Not ASCII: rumqttc::matches panics on a first character like these.
            ("+/temp", "é/temp", true),
            ("датчики/+", "датчики/1", true),
            ("датчики/+", "д", false),
        ] {
            assert_eq!(topic_matches(filter, topic), expected, "{filter} ~ {topic}");
        }
    }

    use super::*;
    use edgestore::ColumnDef;

    fn schema() -> TableSchema {
        TableSchema::new("readings")
            .column(ColumnDef::new("sensor", ColumnType::Text).not_null())
            .column(ColumnDef::new("seq", ColumnType::Integer).not_null())
            .column(ColumnDef::new("value", ColumnType::Real))
            .column(ColumnDef::new("ok", ColumnType::Boolean))
            .primary_key(&["sensor", "seq"])
    }

    fn route(unknown_keys: UnknownKeys) -> Route {
        Route {
            filter: "site/+/reading".into(),
            table: "readings".into(),
            topic_columns: vec![(1, "sensor".into())],
            unknown_keys,
        }
    }

    #[test]
    fn an_object_is_one_row_with_the_topic_levels_columns() {
        let rows =
            message_rows(&route(UnknownKeys::Refuse), &schema(), "site/s7/reading", br#"{"Seq": 3, "value": 21.5}"#)
                .unwrap();
        assert_eq!(rows.columns, ["seq", "value", "sensor"]);
        assert_eq!(rows.rows, [vec![Value::Integer(3), Value::Real(21.5), Value::Text("s7".into())]]);
    }

    #[test]
    fn an_array_is_one_row_per_object_and_its_keys_must_agree() {
        let route = route(UnknownKeys::Refuse);
        let rows =
            message_rows(&route, &schema(), "site/a/reading", br#"[{"seq": 1, "ok": true}, {"ok": null, "seq": 2}]"#)
                .unwrap();
        assert_eq!(rows.columns, ["ok", "seq", "sensor"], "keys in sorted order, then the topic's");
        assert_eq!(rows.rows[1], [Value::Null, Value::Integer(2), Value::Text("a".into())]);
        let error = message_rows(&route, &schema(), "site/a/reading", br#"[{"seq": 1}, {"value": 2}]"#).unwrap_err();
        assert!(error.contains("same keys"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused_or_ignored_as_configured() {
        let payload = br#"{"seq": 1, "humidity": 40}"#;
        let error = message_rows(&route(UnknownKeys::Refuse), &schema(), "site/a/reading", payload).unwrap_err();
        assert!(error.contains("no column \"humidity\""), "{error}");
        let rows = message_rows(&route(UnknownKeys::Ignore), &schema(), "site/a/reading", payload).unwrap();
        assert_eq!(rows.columns, ["seq", "sensor"]);
    }

    #[test]
    fn bad_payloads_say_why() {
        let route = route(UnknownKeys::Refuse);
        for (payload, expected) in [
            (&b"not json"[..], "not JSON"),
            (b"42", "a number, not a JSON object"),
            (b"[]", "empty array"),
            (b"[1]", "objects, not a number"),
            (br#"{"sensor": "x", "seq": 1}"#, "given twice"),
        ] {
            let error = message_rows(&route, &schema(), "site/a/reading", payload).unwrap_err();
            assert!(error.contains(expected), "{payload:?}: {error}");
        }
    }

    #[test]
    fn topic_levels_are_parsed_by_column_type() {
        assert_eq!(level_value("17", ColumnType::Integer), Some(Value::Integer(17)));
        assert_eq!(level_value("x", ColumnType::Integer), None);
        assert_eq!(level_value("2.5", ColumnType::Real), Some(Value::Real(2.5)));
        assert_eq!(level_value("inf", ColumnType::Real), None);
        assert_eq!(level_value("TRUE", ColumnType::Boolean), Some(Value::Boolean(true)));
        assert_eq!(level_value("1000", ColumnType::Timestamp), Some(Value::Timestamp(1000)));
        let mut route = route(UnknownKeys::Refuse);
        route.topic_columns = vec![(1, "seq".into())];
        let error = message_rows(&route, &schema(), "site/abc/reading", br#"{"sensor": "s"}"#).unwrap_err();
        assert!(error.contains("not a INTEGER"), "{error}");
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = [route(UnknownKeys::Refuse), Route { filter: "#".into(), ..route(UnknownKeys::Ignore) }];
        assert_eq!(route_of(&routes, "site/a/reading").unwrap().unknown_keys, UnknownKeys::Refuse);
        assert_eq!(route_of(&routes, "other").unwrap().unknown_keys, UnknownKeys::Ignore);
        assert!(route_of(&routes[..1], "site/a/b/reading").is_none());
    }
}
