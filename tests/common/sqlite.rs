//! Comparing edgestore's SQL engine with SQLite (rusqlite, bundled SQLite 3.50) on the same
//! expressions: values as edgestore's `Value`, reals compared bit for bit.

use edgestore::sql;
use edgestore::{Replica, Value};

/// A SQLite value as edgestore's (text read lossily, as edgestore reads bytes as text).
pub fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => Value::Integer(i),
        V::Real(r) => Value::Real(r),
        V::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// The same type and value; reals bit for bit.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// `SELECT <exprs>` in SQLite.
pub fn run_sqlite(conn: &rusqlite::Connection, exprs: &[&str]) -> Vec<Value> {
    let sql = format!("SELECT {}", exprs.join(", "));
    conn.query_row(&sql, [], |row| (0..exprs.len()).map(|i| row.get_ref(i).map(sqlite_value)).collect())
        .unwrap_or_else(|e| panic!("sqlite: {e}\n{sql}"))
}

/// `SELECT <exprs>` in edgestore at statement time `now_ms`.
pub fn run_ours(replica: &mut Replica, exprs: &[&str], now_ms: i64) -> Vec<Value> {
    let sql = format!("SELECT {}", exprs.join(", "));
    let rows = sql::execute(replica, &sql, &[], now_ms).and_then(|r| r.collect_rows());
    rows.unwrap_or_else(|e| panic!("edgestore: {e}\n{sql}")).remove(0)
}

/// What a comparison found: expressions compared, how many gave a value (not NULL), and
/// the differences.
#[derive(Default)]
pub struct Outcome {
    pub compared: usize,
    pub values: usize,
    pub mismatches: Vec<String>,
}

/// Compares (ours, theirs) expression pairs, `per_statement` to a `SELECT`.
pub fn compare(
    replica: &mut Replica,
    conn: &rusqlite::Connection,
    pairs: &[(String, String)],
    per_statement: usize,
    now_ms: i64,
) -> Outcome {
    let mut outcome = Outcome { compared: pairs.len(), ..Outcome::default() };
    for batch in pairs.chunks(per_statement) {
        let ours: Vec<&str> = batch.iter().map(|(o, _)| o.as_str()).collect();
        let theirs: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
        let (a, b) = (run_ours(replica, &ours, now_ms), run_sqlite(conn, &theirs));
        for ((expr, a), b) in ours.iter().zip(&a).zip(&b) {
            outcome.values += usize::from(!b.is_null());
            if !same(a, b) {
                outcome.mismatches.push(format!("{expr}: edgestore {a:?}, sqlite {b:?}"));
            }
        }
    }
    outcome
}
