//! SQLite's JSON functions over JSON text: `json`, `json_valid`, `json_quote`,
//! `json_array`, `json_object`, `json_extract`, `json_type`, `json_array_length`, and the
//! operators `->` (the element as JSON) and `->>` (the element as an SQL value).
//!
//! Text is parsed by serde_json into [`Json`], a tree that keeps object members in their
//! order and with their duplicates, as SQLite does (a path finds the first member of a
//! name). Differences from SQLite, by design of the parser: input must be RFC 8259 JSON
//! (SQLite also reads JSON5), nesting is limited to serde_json's 128 levels (SQLite's 1000),
//! and numbers are written back in canonical form (`1e2` becomes `100.0`; SQLite keeps the
//! text as written). A value returned by one of these functions and given directly to
//! `json_array` or `json_object` is embedded as JSON, as SQLite's JSON subtype does
//! (`json_array(json('[1]'))` is `[[1]]`, `json_array('[1]')` is `["[1]"]`); the binder
//! marks such arguments.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::limits::check_result_bytes;
use super::value;
use super::SqlError;
use crate::types::Value;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    Array(Vec<Json>),
    /// Members in document order, duplicates kept.
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        // Past i64, SQLite reads the integer as a real too.
        Ok(i64::try_from(v).map_or(Json::Real(v as f64), Json::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Real(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

fn malformed() -> SqlError {
    SqlError::invalid("malformed JSON")
}

/// Bytes the tree of a JSON text of `len` bytes may take: every element needs at least two
/// bytes of text (`0,`) and costs at most about 48 in the tree.
fn tree_bytes(len: usize) -> usize {
    len.saturating_mul(24)
}

/// Parses JSON text into a tree, refused first if the tree could pass the statement's
/// memory budget.
fn parse_text(text: &str) -> Result<Json, SqlError> {
    check_result_bytes(tree_bytes(text.len()))?;
    serde_json::from_str(text).map_err(|_| malformed())
}

/// Parses a function's JSON argument; NULL is `None`.
fn parse(v: &Value) -> Result<Option<Json>, SqlError> {
    match v {
        Value::Null => Ok(None),
        Value::Blob(_) => Err(malformed()),
        other => parse_text(&value::to_text(other).expect("not NULL")).map(Some),
    }
}

impl Json {
    /// Minified JSON text, as SQLite writes it.
    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Real(r) => out.push_str(&real_json(*r)),
            Json::Str(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (key, item)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    item.write(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> Result<Value, SqlError> {
        check_result_bytes(self.text_len())?;
        let mut out = String::with_capacity(self.text_len());
        self.write(&mut out);
        Ok(Value::Text(out))
    }

    /// The length of [`Json::write`]'s text at most (escapes counted at their longest),
    /// without building it.
    fn text_len(&self) -> usize {
        match self {
            Json::Null | Json::Bool(_) | Json::Int(_) | Json::Real(_) => 24,
            Json::Str(s) => string_len(s),
            Json::Array(items) => items.iter().fold(2, |n, item| n.saturating_add(item.text_len() + 1)),
            Json::Object(members) => {
                members.iter().fold(2, |n, (key, item)| n.saturating_add(string_len(key) + item.text_len() + 2))
            }
        }
    }

    /// The element as an SQL value: `json_extract` and `->>`.
    fn sql_value(&self) -> Result<Value, SqlError> {
        Ok(match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Integer(i64::from(*b)),
            Json::Int(i) => Value::Integer(*i),
            Json::Real(r) => Value::Real(*r),
            Json::Str(s) => Value::Text(s.clone()),
            Json::Array(_) | Json::Object(_) => return self.text(),
        })
    }

    /// Nodes in a pre-order walk of the value, member names counted (`each`'s ids).
    fn node_count(&self) -> usize {
        match self {
            Json::Array(items) => 1 + items.iter().map(Json::node_count).sum::<usize>(),
            Json::Object(members) => 1 + members.iter().map(|(_, v)| 1 + v.node_count()).sum::<usize>(),
            _ => 1,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(true) => "true",
            Json::Bool(false) => "false",
            Json::Int(_) => "integer",
            Json::Real(_) => "real",
            Json::Str(_) => "text",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    /// The element at `path` (SQLite's syntax: `$`, `.key`, `."key"`, `[N]`, `[#-N]`).
    /// The whole path is checked even past a miss, in one loop (a path is as long as the
    /// statement allows: no recursion, no copies per step).
    fn at(&self, path: &str) -> Result<Option<&Json>, SqlError> {
        let bad = || SqlError::invalid(format!("bad JSON path: '{path}'"));
        let mut rest = path.strip_prefix('$').ok_or_else(bad)?;
        let mut node = Some(self);
        while !rest.is_empty() {
            node = if let Some(after) = rest.strip_prefix('.') {
                let (key, after) = path_key(after).ok_or_else(bad)?;
                rest = after;
                match node {
                    Some(Json::Object(members)) => members.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
                    _ => None,
                }
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(bad)?;
                let index = &after[..end];
                rest = &after[end + 1..];
                let len = match node {
                    Some(Json::Array(items)) => items.len(),
                    _ => 0,
                };
                let position = array_index(index, len).ok_or_else(bad)?;
                match (node, position) {
                    (Some(Json::Array(items)), Some(i)) => items.get(i),
                    _ => None,
                }
            } else {
                return Err(bad());
            };
        }
        Ok(node)
    }
}

/// A `.key` of a path: quoted (`."a.b"`) or up to the next `.` or `[`.
fn path_key(after: &str) -> Option<(String, &str)> {
    if let Some(quoted) = after.strip_prefix('"') {
        let end = quoted.find('"')?;
        return Some((quoted[..end].to_string(), &quoted[end + 1..]));
    }
    let end = after.find(['.', '[']).unwrap_or(after.len());
    (end > 0).then(|| (after[..end].to_string(), &after[end..]))
}

/// The position `[N]` or `[#-N]` names in an array of `len` items: `None` if the index is
/// not well formed, `Some(None)` if it is past either end.
fn array_index(index: &str, len: usize) -> Option<Option<usize>> {
    if let Some(back) = index.strip_prefix('#') {
        let back = match back.strip_prefix('-') {
            Some(n) => n.parse::<usize>().ok()?,
            None if back.is_empty() => 0,
            None => return None,
        };
        return Some(len.checked_sub(back).filter(|_| back > 0));
    }
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(index.parse::<usize>().ok().filter(|&i| i < len))
}

/// The longest text [`write_string`] makes of `s` (every byte a `\u00XX`).
fn string_len(s: &str) -> usize {
    s.len().saturating_mul(6).saturating_add(2)
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A real as JSON: SQLite's text of a REAL; infinities as `9e999`, as SQLite writes them;
/// NaN as `null`.
fn real_json(r: f64) -> String {
    match r {
        r if r.is_nan() => "null".into(),
        r if r.is_infinite() => if r > 0.0 { "9e999" } else { "-9e999" }.into(),
        r => value::real_text(r),
    }
}

/// An SQL value as JSON; `as_json` embeds text that is JSON (an argument the binder marked).
fn from_sql(v: &Value, as_json: bool) -> Result<Json, SqlError> {
    Ok(match v {
        Value::Null => Json::Null,
        Value::Integer(i) | Value::Timestamp(i) => Json::Int(*i),
        Value::Boolean(b) => Json::Int(i64::from(*b)),
        Value::Real(r) => Json::Real(*r),
        Value::Text(t) if as_json => parse_text(t)?,
        Value::Text(t) => Json::Str(t.clone()),
        Value::Blob(_) => return Err(SqlError::invalid("JSON cannot hold BLOB values")),
    })
}

/// Whether bit `i` of a binder's JSON-argument mask is set.
fn marked(mask: u64, i: usize) -> bool {
    i < 64 && mask & (1 << i) != 0
}

/// `json(x)`: `x` minified; NULL for NULL.
pub(crate) fn json(args: &[Value]) -> Result<Value, SqlError> {
    match parse(&args[0])? {
        Some(json) => json.text(),
        None => Ok(Value::Null),
    }
}

/// `json_valid(x)`: 1 if `x` is JSON text, else 0; NULL for NULL.
pub(crate) fn json_valid(args: &[Value]) -> Value {
    match &args[0] {
        Value::Null => Value::Null,
        Value::Blob(_) => Value::Integer(0),
        // Checked without building a tree.
        v => {
            let text = value::to_text(v).expect("not NULL");
            Value::Integer(i64::from(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()))
        }
    }
}

/// `json_quote(x)`: the SQL value as JSON.
pub(crate) fn json_quote(args: &[Value], mask: u64) -> Result<Value, SqlError> {
    from_sql(&args[0], marked(mask, 0))?.text()
}

/// `json_array(v, ...)`.
pub(crate) fn json_array(args: &[Value], mask: u64) -> Result<Value, SqlError> {
    let items = args.iter().enumerate().map(|(i, v)| from_sql(v, marked(mask, i))).collect::<Result<_, _>>()?;
    Json::Array(items).text()
}

/// `json_object(k, v, ...)`: keys must be text.
pub(crate) fn json_object(args: &[Value], mask: u64) -> Result<Value, SqlError> {
    if args.len() % 2 == 1 {
        return Err(SqlError::invalid("json_object() requires an even number of arguments"));
    }
    let mut members = Vec::with_capacity(args.len() / 2);
    for (i, pair) in args.chunks(2).enumerate() {
        let Value::Text(key) = &pair[0] else {
            return Err(SqlError::invalid("json_object() labels must be TEXT"));
        };
        members.push((key.clone(), from_sql(&pair[1], marked(mask, 2 * i + 1))?));
    }
    Json::Object(members).text()
}

/// `json_extract(x, path, ...)`: one path gives the SQL value (`as_json`: the element as
/// JSON text), several a JSON array of the elements (null where missing).
pub(crate) fn json_extract(args: &[Value], as_json: bool) -> Result<Value, SqlError> {
    let Some(doc) = parse(&args[0])? else { return Ok(Value::Null) };
    let paths = &args[1..];
    if let [path] = paths {
        let Some(path) = value::to_text(path) else { return Ok(Value::Null) };
        return match doc.at(&path)? {
            None => Ok(Value::Null),
            Some(element) if as_json => element.text(),
            Some(element) => element.sql_value(),
        };
    }
    // Each element written out as it is found, never copied as a tree.
    let mut out = String::from("[");
    for (i, path) in paths.iter().enumerate() {
        let Some(path) = value::to_text(path) else { return Ok(Value::Null) };
        let element = doc.at(&path)?.unwrap_or(&Json::Null);
        check_result_bytes(out.len().saturating_add(element.text_len()))?;
        if i > 0 {
            out.push(',');
        }
        element.write(&mut out);
    }
    out.push(']');
    Ok(Value::Text(out))
}

/// `json_type(x[, path])`.
pub(crate) fn json_type(args: &[Value]) -> Result<Value, SqlError> {
    with_element(args, |element| Ok(Value::Text(element.type_name().into())))
}

/// `json_array_length(x[, path])`: 0 for an element that is not an array.
pub(crate) fn json_array_length(args: &[Value]) -> Result<Value, SqlError> {
    with_element(args, |element| {
        Ok(Value::Integer(match element {
            Json::Array(items) => items.len() as i64,
            _ => 0,
        }))
    })
}

/// Applies `f` to the element at the optional path argument; NULL if it is missing.
fn with_element(args: &[Value], f: impl Fn(&Json) -> Result<Value, SqlError>) -> Result<Value, SqlError> {
    let Some(doc) = parse(&args[0])? else { return Ok(Value::Null) };
    let path = match args.get(1) {
        None => "$".to_string(),
        Some(p) => match value::to_text(p) {
            Some(p) => p,
            None => return Ok(Value::Null),
        },
    };
    doc.at(&path)?.map_or(Ok(Value::Null), f)
}

/// The columns of `json_each` (SQLite's, without its hidden `json` and `root`).
pub(crate) const EACH_COLUMNS: [&str; 8] = ["key", "value", "type", "atom", "id", "parent", "fullkey", "path"];

/// `json_each(x[, path])` in `FROM`: one row per element of the array or member of the
/// object at `path` (the element itself when it is neither), as SQLite gives them: `key`
/// the index or member name (NULL for a lone element), `value` as `json_extract` reads it,
/// `type` as `json_type`, `atom` the value of a non-container (NULL otherwise), `id` the
/// element's place in a pre-order walk of the value at `path` counting member names
/// (SQLite numbers by its parse, which differs between its versions), `parent` NULL,
/// `fullkey` the element's path and `path` its container's. NULL JSON or a path that
/// finds nothing gives no rows.
pub(crate) fn each(args: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
    let Some(doc) = parse(&args[0])? else { return Ok(Vec::new()) };
    let path = match args.get(1) {
        None => "$".to_string(),
        Some(p) => match value::to_text(p) {
            Some(p) => p,
            None => return Ok(Vec::new()),
        },
    };
    let Some(root) = doc.at(&path)? else { return Ok(Vec::new()) };
    let row = |key: Value, element: &Json, id: usize, fullkey: String| -> Result<Vec<Value>, SqlError> {
        let atom = match element {
            Json::Array(_) | Json::Object(_) => Value::Null,
            other => other.sql_value()?,
        };
        let (value, kind) = (element.sql_value()?, Value::Text(element.type_name().into()));
        Ok(vec![key, value, kind, atom, Value::Integer(id as i64), Value::Null, Value::Text(fullkey), path_text(&path)])
    };
    let mut rows = Vec::new();
    let mut id = 1;
    match root {
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                rows.push(row(Value::Integer(i as i64), item, id, format!("{path}[{i}]"))?);
                id += item.node_count();
            }
        }
        Json::Object(members) => {
            for (key, item) in members {
                // A member name counts as a node before its value, as in SQLite's parse.
                rows.push(row(Value::Text(key.clone()), item, id + 1, format!("{path}{}", member_path(key)))?);
                id += 1 + item.node_count();
            }
        }
        lone => {
            let whole = vec![row(Value::Null, lone, 0, path.clone())?];
            return Ok(whole);
        }
    }
    Ok(rows)
}

fn path_text(path: &str) -> Value {
    Value::Text(path.to_string())
}

/// `.key`, quoted (`."a b"`) unless the key is a letter followed by letters and digits,
/// as SQLite writes a member's full key.
fn member_path(key: &str) -> String {
    let plain =
        key.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && key.chars().all(|c| c.is_ascii_alphanumeric());
    if plain {
        format!(".{key}")
    } else {
        format!(".\"{key}\"")
    }
}

/// `x -> p` (the element as JSON text) and `x ->> p` (as an SQL value). `p` is a path, a
/// label (`'a'` is `$."a"`), `'[N]'`, or an INTEGER (`2` is `$[2]`, `-1` is `$[#-1]`).
pub(crate) fn arrow(args: &[Value], as_sql: bool) -> Result<Value, SqlError> {
    let Some(doc) = parse(&args[0])? else { return Ok(Value::Null) };
    let path = match &args[1] {
        Value::Null => return Ok(Value::Null),
        Value::Integer(i) if *i < 0 => format!("$[#{i}]"),
        Value::Integer(i) => format!("$[{i}]"),
        v => match value::to_text(v).expect("not NULL") {
            p if p.starts_with('$') => p,
            p if p.len() >= 3 && p.starts_with('[') && p.ends_with(']') => format!("${p}"),
            label => format!("$.\"{label}\""),
        },
    };
    match doc.at(&path)? {
        None => Ok(Value::Null),
        Some(element) if as_sql => element.sql_value(),
        Some(element) => element.text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn objects_keep_order_and_duplicates_and_a_path_finds_the_first() {
        let d = doc(r#"{"b":1,"a":[10,20,{"x":"y"}],"b":2}"#);
        let mut out = String::new();
        d.write(&mut out);
        assert_eq!(out, r#"{"b":1,"a":[10,20,{"x":"y"}],"b":2}"#);
        assert_eq!(d.at("$.b").unwrap(), Some(&Json::Int(1)));
        assert_eq!(d.at("$.a[#-1].x").unwrap(), Some(&Json::Str("y".into())));
        assert_eq!(d.at("$.a[3]").unwrap(), None);
        assert_eq!(d.at("$.c.d").unwrap(), None);
        assert!(d.at("$.a[x]").is_err());
        assert!(d.at("a").is_err());
        assert!(d.at("$.c[").is_err(), "the rest of a path is checked after a miss");
    }
}
