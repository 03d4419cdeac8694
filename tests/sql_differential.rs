//! Differential test: random schemas (column types in several SQLite spellings: `INT`,
//! `VARCHAR(20)`, `DOUBLE`, ...; table t1 without a primary key; odd tables' indexes
//! unique, so that their `INSERT OR IGNORE` skips repeated values), a view over the first
//! table that queries read like a table, data and queries
//! (JSON built from the data and read back, recursive CTEs among the `WITH` queries) run
//! on edgestore's SQL engine and on SQLite (rusqlite, bundled); the results must match.
//!
//! Queries stay inside the supported scope and away from SQLite's type-affinity quirks:
//! every column holds one type, and only numbers are compared with numbers and text with
//! text. Results compare as multisets unless `ORDER BY` fixes the order of every output
//! column; reals compare with a relative tolerance, and an integer equals the real of the
//! same value (`DISTINCT` may keep either representative).
//!
//! The seed is printed. `EDGESTORE_SEED=<n>` replays a run; `EDGESTORE_SQL_QUERIES=<n>`
//! runs more queries (default 1200).

use std::cmp::Ordering;
use std::fmt::Write as _;

use edgestore::sql;
use edgestore::{NodeId, Replica, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const QUERIES_DEFAULT: usize = 1200;
const QUERIES_PER_WORLD: usize = 60;
/// Compound and `WITH` queries per world, besides the others (their own random stream, so
/// that adding them left the other queries as they were).
const SET_QUERIES_PER_WORLD: usize = 20;
const SEED_DEFAULT: u64 = 0x5157_4c20_6469_6666;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Int,
    Real,
    Text,
}

struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
}

struct World {
    tables: Vec<Table>,
}

/// A type name SQLite's affinity rule maps to `kind`, in both engines; which one depends on
/// the column's place, not the random stream, so seeds keep their worlds.
fn declared_sql(kind: Kind, place: usize) -> &'static str {
    let names: &[&str] = match kind {
        Kind::Int => &["INTEGER", "INT", "BIGINT"],
        Kind::Real => &["REAL", "DOUBLE", "FLOAT"],
        Kind::Text => &["TEXT", "VARCHAR(20)", "CLOB"],
    };
    names[place % names.len()]
}

fn literal(rng: &mut ChaCha8Rng, kind: Kind) -> String {
    match kind {
        Kind::Int => rng.random_range(-2..10).to_string(),
        Kind::Real => format!("{:.1}", f64::from(rng.random_range(-4..16)) * 0.5),
        Kind::Text => ["'a'", "'b'", "'c'", "'ab'", "'ba'", "''", "'B'"][rng.random_range(0..7)].to_string(),
    }
}

fn value_sql(rng: &mut ChaCha8Rng, kind: Kind) -> String {
    if rng.random_bool(0.15) {
        "NULL".into()
    } else {
        literal(rng, kind)
    }
}

/// DDL and inserts for a random world, as SQL both engines run.
fn make_world(rng: &mut ChaCha8Rng) -> (World, Vec<String>) {
    let mut statements = Vec::new();
    let mut tables = Vec::new();
    for t in 0..rng.random_range(2..=4) {
        let name = format!("t{t}");
        let mut columns = vec![("id".to_string(), Kind::Int), ("k".to_string(), Kind::Int)];
        for c in 0..rng.random_range(1..=3) {
            let kind = [Kind::Int, Kind::Real, Kind::Text][rng.random_range(0..3)];
            columns.push((format!("c{c}"), kind));
        }
        let defs: Vec<String> =
            columns.iter().enumerate().map(|(c, (n, k))| format!("{n} {}", declared_sql(*k, t + c))).collect();
        // Table t1 has no primary key (a hidden row identity here, a rowid in SQLite): its
        // `id` is an ordinary column. Chosen by place, not from the random stream.
        let key = if t == 1 { "" } else { ", PRIMARY KEY (id)" };
        statements.push(format!("CREATE TABLE {name} ({}{key})", defs.join(", ")));
        let mut indexed = None;
        if rng.random_bool(0.5) {
            let (col, _) = &columns[rng.random_range(1..columns.len())];
            // Odd tables' indexes are unique, so `INSERT OR IGNORE` below skips the rows
            // that repeat a value, in both engines alike. Chosen by place, as above.
            let unique = if t % 2 == 1 { "UNIQUE " } else { "" };
            statements.push(format!("CREATE {unique}INDEX {name}_{col} ON {name} ({col})"));
            indexed = Some(col.clone());
        }
        let rows = if rng.random_bool(0.15) { 0 } else { rng.random_range(1..25) };
        let mut values = Vec::new();
        for id in 0..rows {
            let mut row = vec![(id * 2 + rng.random_range(0..2)).to_string()];
            row.extend(columns[1..].iter().map(|(_, k)| value_sql(rng, *k)));
            values.push(format!("({})", row.join(", ")));
        }
        if !values.is_empty() {
            statements.push(format!("INSERT OR IGNORE INTO {name} VALUES {}", values.join(", ")));
        }
        alter_table(&name, &mut columns, indexed.as_deref(), rows as u64, &mut statements);
        tables.push(Table { name, columns });
    }
    // A view over the first table, which the queries read like any table (joins,
    // subqueries, aggregates over it): planned from its stored query in both engines.
    let base = &tables[0];
    let names: Vec<&str> = base.columns.iter().map(|(n, _)| n.as_str()).collect();
    let bound = literal(rng, Kind::Int);
    statements.push(format!("CREATE VIEW v0 AS SELECT {} FROM {} WHERE k > {bound}", names.join(", "), base.name));
    let view = Table { name: "v0".into(), columns: base.columns.clone() };
    tables.push(view);
    (World { tables }, statements)
}

/// Half the tables are altered after their first rows: a column added (with or without a
/// default), one renamed, one dropped (not the key, `k` or an indexed column, which SQLite
/// refuses too), then more rows written naming the columns as they are now. Its own
/// random stream, seeded by the table's name and rows, so each seed keeps its world's
/// tables, data and queries as they were before ALTER existed.
fn alter_table(name: &str, columns: &mut Vec<(String, Kind)>, indexed: Option<&str>, rows: u64, out: &mut Vec<String>) {
    let seed = name.bytes().fold(rows ^ 0xA17E_7AB1E, |h, b| h.wrapping_mul(0x100_0000_01B3) ^ u64::from(b));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if rng.random_bool(0.5) {
        return;
    }
    for step in 0..rng.random_range(1..=3) {
        let alterable: Vec<usize> = (2..columns.len()).filter(|&i| Some(columns[i].0.as_str()) != indexed).collect();
        match rng.random_range(0..3) {
            0 => {
                let kind = [Kind::Int, Kind::Real, Kind::Text][rng.random_range(0..3)];
                let column = format!("a{step}");
                let default =
                    if rng.random_bool(0.5) { format!(" DEFAULT {}", literal(&mut rng, kind)) } else { String::new() };
                out.push(format!("ALTER TABLE {name} ADD COLUMN {column} {}{default}", declared_sql(kind, step)));
                columns.push((column, kind));
            }
            1 if !alterable.is_empty() => {
                let i = alterable[rng.random_range(0..alterable.len())];
                let renamed = format!("r{step}_{}", columns[i].0);
                out.push(format!("ALTER TABLE {name} RENAME COLUMN {} TO {renamed}", columns[i].0));
                columns[i].0 = renamed;
            }
            2 if !alterable.is_empty() => {
                let i = alterable[rng.random_range(0..alterable.len())];
                out.push(format!("ALTER TABLE {name} DROP COLUMN {}", columns[i].0));
                columns.remove(i);
            }
            _ => {}
        }
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let values: Vec<String> = (0..rng.random_range(0..6))
        .map(|n| {
            let mut row = vec![(100 + n * 2).to_string()];
            row.extend(columns[1..].iter().map(|(_, k)| value_sql(&mut rng, *k)));
            format!("({})", row.join(", "))
        })
        .collect();
    if !values.is_empty() {
        out.push(format!("INSERT OR IGNORE INTO {name} ({}) VALUES {}", names.join(", "), values.join(", ")));
    }
}

/// A query generator over the tables in one FROM clause.
struct Gen<'w> {
    rng: ChaCha8Rng,
    world: &'w World,
    /// (alias, table index) in FROM order.
    from: Vec<(String, usize)>,
}

impl Gen<'_> {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn columns_of(&self, kinds: &[Kind]) -> Vec<String> {
        let mut out = Vec::new();
        for (alias, t) in &self.from {
            for (name, kind) in &self.world.tables[*t].columns {
                if kinds.contains(kind) {
                    out.push(format!("{alias}.{name}"));
                }
            }
        }
        out
    }

    fn column(&mut self, kinds: &[Kind]) -> Option<String> {
        let columns = self.columns_of(kinds);
        (!columns.is_empty()).then(|| self.pick(&columns).clone())
    }

    fn num(&mut self, depth: u32) -> String {
        let roll = if depth == 0 { self.rng.random_range(0..3) } else { self.rng.random_range(0..11) };
        match roll {
            10 => self.scalar_subquery(),
            0 | 1 => self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "1".into()),
            2 => {
                let kind = *self.pick(&[Kind::Int, Kind::Real]);
                literal(&mut self.rng, kind)
            }
            3 => format!("({} + {})", self.num(depth - 1), self.num(depth - 1)),
            4 => format!("({} - {})", self.num(depth - 1), self.num(depth - 1)),
            5 => format!("({} * {})", self.num(depth - 1), literal(&mut self.rng, Kind::Int)),
            6 => format!("({} / {})", self.num(depth - 1), self.num(depth - 1)),
            7 => format!("abs({})", self.num(depth - 1)),
            8 => format!("coalesce({}, {})", self.num(depth - 1), literal(&mut self.rng, Kind::Int)),
            _ => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.pred(depth - 1),
                self.num(depth - 1),
                self.num(depth - 1)
            ),
        }
    }

    fn text(&mut self, depth: u32) -> String {
        let roll = if depth == 0 { self.rng.random_range(0..2) } else { self.rng.random_range(0..9) };
        match roll {
            // JSON text made of the world's values, and a value read back out of it.
            7 => format!("json_object('k', {}, 'n', {})", self.text(depth - 1), self.num(depth - 1)),
            8 => format!("(json_array({}, {}) ->> 1)", self.num(depth - 1), self.text(depth - 1)),
            0 => self.column(&[Kind::Text]).unwrap_or_else(|| "'t'".into()),
            1 => literal(&mut self.rng, Kind::Text),
            2 => format!("lower({})", self.text(depth - 1)),
            3 => format!("upper({})", self.text(depth - 1)),
            4 => format!("substr({}, 1, 1)", self.text(depth - 1)),
            5 => format!("({} || {})", self.text(depth - 1), self.text(depth - 1)),
            _ => format!("coalesce({}, 'z')", self.text(depth - 1)),
        }
    }

    fn cmp(&mut self) -> &'static str {
        const OPS: [&str; 6] = ["=", "<>", "<", "<=", ">", ">="];
        OPS[self.rng.random_range(0..OPS.len())]
    }

    fn pred(&mut self, depth: u32) -> String {
        let roll = if depth == 0 { self.rng.random_range(0..6) } else { self.rng.random_range(0..13) };
        match roll {
            0 | 1 => format!("{} {} {}", self.num(depth), self.cmp(), self.num(depth)),
            2 => format!("{} {} {}", self.text(depth), self.cmp(), self.text(0)),
            3 => {
                let c = self.column(&[Kind::Int, Kind::Real, Kind::Text]).unwrap_or_else(|| "NULL".into());
                format!("{c} IS {}NULL", if self.rng.random_bool(0.5) { "NOT " } else { "" })
            }
            4 => {
                let (a, b) = (literal(&mut self.rng, Kind::Int), literal(&mut self.rng, Kind::Int));
                format!(
                    "{} {}BETWEEN {a} AND {b}",
                    self.num(depth),
                    if self.rng.random_bool(0.3) { "NOT " } else { "" }
                )
            }
            5 => {
                let items: Vec<String> = (0..self.rng.random_range(1..4))
                    .map(|_| if self.rng.random_bool(0.1) { "NULL".into() } else { literal(&mut self.rng, Kind::Int) })
                    .collect();
                let not = if self.rng.random_bool(0.3) { "NOT " } else { "" };
                format!("{} {not}IN ({})", self.num(depth), items.join(", "))
            }
            6 => {
                let pattern = *self.pick(&["'a%'", "'%b'", "'_'", "'%'", "'A_'"]);
                format!("{} LIKE {pattern}", self.text(depth))
            }
            7 => format!("NOT ({})", self.pred(depth - 1)),
            8 | 9 => format!("({} AND {})", self.pred(depth - 1), self.pred(depth - 1)),
            10 => format!("({} OR {})", self.pred(depth - 1), self.pred(depth - 1)),
            11 => self.row_value_pred(depth),
            _ => self.subquery_pred(),
        }
    }

    /// A comparison of row values, or a row value in a list of them (NULLs among the
    /// listed values): SQLite's left-to-right rule with its NULLs.
    fn row_value_pred(&mut self, depth: u32) -> String {
        let (a, b) = (self.num(depth - 1), self.num(depth - 1));
        if self.rng.random_bool(0.7) {
            let (c, d) = (self.num(0), self.num(0));
            return format!("({a}, {b}) {} ({c}, {d})", self.cmp());
        }
        let items: Vec<String> = (0..self.rng.random_range(1..4))
            .map(|_| {
                let second = if self.rng.random_bool(0.15) { "NULL".into() } else { literal(&mut self.rng, Kind::Int) };
                format!("({}, {second})", literal(&mut self.rng, Kind::Int))
            })
            .collect();
        let not = if self.rng.random_bool(0.3) { "NOT " } else { "" };
        format!("({a}, {b}) {not}IN ({})", items.join(", "))
    }

    /// An integer column of a random table (as `(table name, column)`), for subqueries.
    fn inner_table(&mut self) -> (String, String) {
        let t = self.rng.random_range(0..self.world.tables.len());
        let table = &self.world.tables[t];
        let ints: Vec<&String> = table.columns.iter().filter(|(_, k)| *k == Kind::Int).map(|(n, _)| n).collect();
        let inner = ints[self.rng.random_range(0..ints.len())].clone();
        (table.name.clone(), inner)
    }

    fn subquery_pred(&mut self) -> String {
        let (name, inner) = self.inner_table();
        let bound = literal(&mut self.rng, Kind::Int);
        // Correlated forms read a column of the outer FROM (aliases x0.., the subquery's is s).
        let outer = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "1".into());
        let cmp = self.cmp();
        match self.rng.random_range(0..9) {
            0 => format!("{} IN (SELECT {inner} FROM {name} WHERE {inner} < {bound})", self.num(0)),
            1 => format!("{} NOT IN (SELECT {inner} FROM {name} WHERE id > {bound})", self.num(0)),
            2 => format!("EXISTS (SELECT 1 FROM {name} WHERE {inner} = {bound})"),
            3 => format!("EXISTS (SELECT 1 FROM {name} AS s WHERE s.{inner} = {outer})"),
            4 => format!("NOT EXISTS (SELECT 1 FROM {name} AS s WHERE s.{inner} {cmp} {outer} AND s.id > {bound})"),
            5 => format!("{} IN (SELECT s.{inner} FROM {name} AS s WHERE s.id {cmp} {outer})", self.num(0)),
            6 => format!("{} NOT IN (SELECT s.{inner} FROM {name} AS s WHERE s.k = {outer})", self.num(0)),
            7 => format!("(SELECT count(*) FROM {name} AS s WHERE s.{inner} {cmp} {outer}) > {bound}"),
            _ => format!("{} {cmp} {}", self.scalar_subquery(), self.num(0)),
        }
    }

    /// A correlated scalar subquery; its value never depends on row order (an aggregate,
    /// or the first row by primary key).
    fn scalar_subquery(&mut self) -> String {
        let (name, inner) = self.inner_table();
        let outer = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "1".into());
        let cmp = self.cmp();
        match self.rng.random_range(0..3) {
            0 => format!("(SELECT max(s.{inner}) FROM {name} AS s WHERE s.id {cmp} {outer})"),
            1 => format!("(SELECT sum(s.{inner}) + count(*) FROM {name} AS s WHERE s.k {cmp} {outer})"),
            _ => format!("(SELECT s.{inner} FROM {name} AS s WHERE s.k {cmp} {outer} ORDER BY s.id LIMIT 1)"),
        }
    }

    /// FROM with joins; fills `self.from`.
    fn joined_tables(&mut self) -> String {
        let n = self.rng.random_range(1..=3.min(self.world.tables.len()));
        let mut text = String::new();
        for i in 0..n {
            let t = self.rng.random_range(0..self.world.tables.len());
            let alias = format!("x{i}");
            let name = self.world.tables[t].name.clone();
            if i == 0 {
                text = format!("{name} AS {alias}");
                self.from.push((alias, t));
                continue;
            }
            // A RIGHT JOIN is planned only as the first join, a FULL JOIN only as the only one.
            let kind = match i {
                1 if n == 2 => *self.pick(&["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "INNER JOIN", ","]),
                1 => *self.pick(&["JOIN", "LEFT JOIN", "RIGHT JOIN", "INNER JOIN", ","]),
                _ => *self.pick(&["JOIN", "LEFT JOIN", "LEFT JOIN", "INNER JOIN", ","]),
            };
            let left = self.column(&[Kind::Int]).expect("every table has integer columns");
            self.from.push((alias.clone(), t));
            if kind == "," {
                write!(text, ", {name} AS {alias}").expect("string");
                continue;
            }
            let right_col = if self.rng.random_bool(0.5) { "id" } else { "k" };
            let mut on = format!("{alias}.{right_col} {} {left}", if self.rng.random_bool(0.85) { "=" } else { "<" });
            if self.rng.random_bool(0.3) {
                write!(on, " AND {}", self.pred(0)).expect("string");
            }
            write!(text, " {kind} {name} AS {alias} ON {on}").expect("string");
        }
        text
    }

    fn query(&mut self) -> (String, bool) {
        let from = self.joined_tables();
        let filter = if self.rng.random_bool(0.7) { format!(" WHERE {}", self.pred(2)) } else { String::new() };
        if self.rng.random_bool(0.35) {
            return (self.aggregate_query(&from, &filter), false);
        }
        let count = self.rng.random_range(1..=4);
        let items: Vec<String> = (0..count)
            .map(|_| match self.rng.random_range(0..4) {
                0 => self.num(2),
                1 => self.text(1),
                _ => self.column(&[Kind::Int, Kind::Real, Kind::Text]).unwrap_or_else(|| "1".into()),
            })
            .collect();
        let distinct = if self.rng.random_bool(0.2) { "DISTINCT " } else { "" };
        let mut sql = format!("SELECT {distinct}{} FROM {from}{filter}", items.join(", "));
        let ordered = self.rng.random_bool(0.4);
        if ordered {
            let keys: Vec<String> =
                (1..=count).map(|i| format!("{i}{}", if self.rng.random_bool(0.5) { " DESC" } else { "" })).collect();
            write!(sql, " ORDER BY {}", keys.join(", ")).expect("string");
            if self.rng.random_bool(0.6) {
                write!(sql, " LIMIT {} OFFSET {}", self.rng.random_range(0..8), self.rng.random_range(0..3))
                    .expect("string");
            }
        }
        (sql, ordered)
    }

    /// One SELECT term of `width` columns over a fresh FROM clause, for compound queries
    /// and CTE bodies; columns are named `v0, v1, ...`.
    fn term(&mut self, width: usize) -> String {
        self.from.clear();
        let from = self.joined_tables();
        let filter = if self.rng.random_bool(0.6) { format!(" WHERE {}", self.pred(1)) } else { String::new() };
        let items: Vec<String> = (0..width)
            .map(|i| {
                let item = match self.rng.random_range(0..4) {
                    0 => self.num(1),
                    1 => self.text(0),
                    _ => self.column(&[Kind::Int, Kind::Real, Kind::Text]).unwrap_or_else(|| "1".into()),
                };
                format!("{item} AS v{i}")
            })
            .collect();
        format!("SELECT {} FROM {from}{filter}", items.join(", "))
    }

    /// ` ORDER BY` every output column (so the order is fixed up to equal rows), maybe
    /// with `LIMIT`/`OFFSET`.
    fn order_all(&mut self, width: usize) -> String {
        let keys: Vec<String> =
            (1..=width).map(|i| format!("{i}{}", if self.rng.random_bool(0.5) { " DESC" } else { "" })).collect();
        let mut sql = format!(" ORDER BY {}", keys.join(", "));
        if self.rng.random_bool(0.5) {
            write!(sql, " LIMIT {} OFFSET {}", self.rng.random_range(0..6), self.rng.random_range(0..3))
                .expect("string");
        }
        sql
    }

    /// A compound query: 2–4 terms joined by UNION [ALL] / INTERSECT / EXCEPT (SQLite
    /// evaluates them left to right), maybe ordered and limited as a whole.
    fn compound_query(&mut self) -> (String, bool) {
        let width = self.rng.random_range(1..=2);
        let mut sql = self.term(width);
        for _ in 0..self.rng.random_range(1..=3) {
            let op = *self.pick(&["UNION", "UNION ALL", "INTERSECT", "INTERSECT", "EXCEPT", "EXCEPT"]);
            let term = self.term(width);
            write!(sql, " {op} {term}").expect("string");
        }
        let ordered = self.rng.random_bool(0.4);
        if ordered {
            let order = self.order_all(width);
            sql.push_str(&order);
        }
        (sql, ordered)
    }

    /// A query with common table expressions: a CTE read once, twice (self-join), by a
    /// second CTE, in a compound, or recursive (a series that grows to a bound, or a walk
    /// from table to table by key, which `UNION` ends on a cycle).
    fn with_query(&mut self) -> (String, bool) {
        let width = self.rng.random_range(1..=2);
        let body = self.term(width);
        let columns = (0..width).map(|i| format!("v{i}")).collect::<Vec<_>>().join(", ");
        let (sql, ordered_width) = match self.rng.random_range(0..7) {
            5 => {
                let union = *self.pick(&["UNION", "UNION ALL"]);
                let step = *self.pick(&["1", "2", "0.5"]);
                let bound = self.rng.random_range(0..12);
                let anchor = self.term(1);
                let recursive = format!("SELECT v0 + {step} FROM r WHERE v0 < {bound}");
                (format!("WITH RECURSIVE r(v0) AS ({anchor} {union} {recursive}) SELECT v0 FROM r"), Some(1))
            }
            6 => {
                let a = self.rng.random_range(0..self.world.tables.len());
                let b = self.rng.random_range(0..self.world.tables.len());
                let (a, b) = (&self.world.tables[a].name, &self.world.tables[b].name);
                let start = self.rng.random_range(0..10);
                let walk = format!(
                    "WITH RECURSIVE r(v0) AS (SELECT k FROM {a} WHERE id <= {start} \
                     UNION SELECT {b}.k FROM {b} JOIN r ON {b}.id = r.v0) SELECT v0 FROM r"
                );
                (walk, Some(1))
            }
            0 => (format!("WITH w AS ({body}) SELECT {columns} FROM w"), Some(width)),
            1 => (format!("WITH w AS ({body}) SELECT count(*) FROM w AS p JOIN w AS q ON p.v0 = q.v0"), None),
            2 => {
                let filter = if self.rng.random_bool(0.5) { "v0 IS NOT NULL" } else { "v0 IS NULL" };
                (
                    format!("WITH w AS ({body}), u AS (SELECT {columns} FROM w WHERE {filter}) SELECT * FROM u"),
                    Some(width),
                )
            }
            3 => {
                let op = *self.pick(&["UNION", "INTERSECT", "EXCEPT"]);
                let other = self.term(width);
                (format!("WITH w AS ({body}) SELECT {columns} FROM w {op} {other}"), Some(width))
            }
            _ => {
                let named = (0..width).map(|i| format!("n{i}")).collect::<Vec<_>>().join(", ");
                (format!("WITH w({named}) AS ({body}) SELECT DISTINCT {named} FROM w"), Some(width))
            }
        };
        match ordered_width {
            Some(width) if self.rng.random_bool(0.4) => {
                let order = self.order_all(width);
                (sql + &order, true)
            }
            _ => (sql, false),
        }
    }

    fn aggregate_query(&mut self, from: &str, filter: &str) -> String {
        let groups: Vec<String> = (0..self.rng.random_range(0..=2))
            .filter_map(|_| self.column(&[Kind::Int, Kind::Real, Kind::Text]))
            .collect();
        let mut items = groups.clone();
        for _ in 0..self.rng.random_range(1..=3) {
            let num = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "1".into());
            let any = self.column(&[Kind::Int, Kind::Real, Kind::Text]).unwrap_or_else(|| "1".into());
            items.push(match self.rng.random_range(0..11) {
                9 => format!("count(*) FILTER (WHERE {})", self.pred(0)),
                10 => format!("sum({num}) FILTER (WHERE {})", self.pred(1)),
                0 => "count(*)".into(),
                1 => format!("count({any})"),
                2 => format!("sum({num})"),
                3 => format!("avg({num})"),
                4 => format!("min({any})"),
                5 => format!("max({any})"),
                6 => format!("count(DISTINCT {any})"),
                7 => format!("total({num})"),
                _ => format!("sum({num}) + count(*)"),
            });
        }
        let mut sql = format!("SELECT {} FROM {from}{filter}", items.join(", "));
        if !groups.is_empty() {
            write!(sql, " GROUP BY {}", groups.join(", ")).expect("string");
            if self.rng.random_bool(0.3) {
                sql.push_str(" HAVING count(*) > 1");
            }
        }
        sql
    }
}

fn sqlite_rows(conn: &rusqlite::Connection, sql: &str) -> Result<Vec<Vec<Value>>, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let width = stmt.column_count();
    let rows = stmt
        .query_map([], |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Integer(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                        rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    })
                })
                .collect()
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Real(r) => Some(*r),
        _ => None,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn canonical(row: &[Value]) -> String {
    row.iter()
        .map(|v| match number(v) {
            Some(n) => format!("n{:.6e}", n + 0.0), // + 0.0 turns -0.0 into 0.0
            None => format!("{v:?}"),
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn same_rows(ours: &[Vec<Value>], theirs: &[Vec<Value>], ordered: bool) -> bool {
    if ours.len() != theirs.len() {
        return false;
    }
    let (mut a, mut b) = (ours.to_vec(), theirs.to_vec());
    if !ordered {
        a.sort_by_key(|r| canonical(r));
        b.sort_by_key(|r| canonical(r));
    }
    a.iter().zip(&b).all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sql_matches_sqlite() {
    let seed = env_number("EDGESTORE_SEED").unwrap_or(SEED_DEFAULT);
    let queries = env_number("EDGESTORE_SQL_QUERIES").map_or(QUERIES_DEFAULT, |n| n as usize);
    println!("sql differential: seed {seed} ({queries} queries); replay with EDGESTORE_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut checked = 0;
    let (mut set_queries, mut set_nonempty, mut alters) = (0, 0, 0);
    let mut world_index = 0;
    while checked < queries {
        let world_seed: u64 = rng.random();
        let ran = run_world(world_seed, world_index, QUERIES_PER_WORLD.min(queries - checked));
        set_queries += ran.set_queries;
        set_nonempty += ran.set_nonempty;
        alters += ran.alters;
        checked += QUERIES_PER_WORLD.min(queries - checked);
        world_index += 1;
    }
    println!(
        "sql differential: {checked} queries and {set_queries} compound/WITH queries ({set_nonempty} with rows) \
         matched SQLite over {world_index} random databases ({alters} ALTER TABLEs among their statements)"
    );
    // Set operations that only ever return nothing would compare nothing.
    assert!(set_nonempty * 3 >= set_queries, "{set_nonempty} of {set_queries} compound/WITH queries had rows");
}

/// A random world, loaded into a fresh replica and into SQLite.
struct Loaded {
    world: World,
    statements: Vec<String>,
    replica: Replica,
    conn: rusqlite::Connection,
    /// Holds the replica's files.
    _dir: tempfile::TempDir,
}

fn load_world(rng: &mut ChaCha8Rng, index: usize) -> Loaded {
    let (world, statements) = make_world(rng);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("w.redb"), NodeId::from_public_key(b"diff")).expect("open");
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    for statement in &statements {
        sql::execute(&mut replica, statement, &[], 0).unwrap_or_else(|e| panic!("world {index}: {statement}: {e}"));
        conn.execute(statement, []).unwrap_or_else(|e| panic!("sqlite: {statement}: {e}"));
    }
    Loaded { world, statements, replica, conn, _dir: dir }
}

/// What one world ran.
struct WorldRun {
    /// Compound/`WITH` queries run, and how many of them returned rows.
    set_queries: usize,
    set_nonempty: usize,
    /// `ALTER TABLE`s among the world's statements.
    alters: usize,
}

/// Runs `queries` queries and the compound/`WITH` ones on one random world.
fn run_world(seed: u64, index: usize, queries: usize) -> WorldRun {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let Loaded { world, statements, mut replica, conn, _dir } = load_world(&mut rng, index);
    let set_queries = SET_QUERIES_PER_WORLD * queries / QUERIES_PER_WORLD;
    let mut set_nonempty = 0;
    for q in 0..queries + set_queries {
        let mut generator = Gen { rng: ChaCha8Rng::seed_from_u64(rng.random()), world: &world, from: Vec::new() };
        let (query, ordered) = match q {
            q if q < queries => generator.query(),
            q if q % 2 == 0 => generator.compound_query(),
            _ => generator.with_query(),
        };
        let theirs = sqlite_rows(&conn, &query).unwrap_or_else(|e| panic!("sqlite refused {query}: {e}"));
        let ours = sql::execute(&mut replica, &query, &[], 0).and_then(|r| r.collect_rows()).unwrap_or_else(|e| {
            panic!("world {index} query {q}: edgestore failed: {e}\n{query}\n{}", statements.join(";\n"))
        });
        if !same_rows(&ours, &theirs, ordered) {
            panic!(
                "world {index} query {q} differs from SQLite\n{query}\nschema and data:\n{};\nedgestore: {ours:?}\nsqlite:    {theirs:?}",
                statements.join(";\n")
            );
        }
        if q >= queries && !theirs.is_empty() {
            set_nonempty += 1;
        }
    }
    let alters = statements.iter().filter(|s| s.starts_with("ALTER TABLE")).count();
    WorldRun { set_queries, set_nonempty, alters }
}

#[test]
fn comparison_helpers_work() {
    assert!(same_value(&Value::Integer(2), &Value::Real(2.0)));
    assert!(!same_value(&Value::Text("2".into()), &Value::Integer(2)));
    let a = vec![vec![Value::Integer(1)], vec![Value::Null]];
    let b = vec![vec![Value::Null], vec![Value::Integer(1)]];
    assert!(same_rows(&a, &b, false));
    assert!(!same_rows(&a, &b, true));
    // Rows that compare equal must sort to the same place, or multiset comparison breaks.
    assert_eq!(canonical(&[Value::Real(-0.0)]), canonical(&[Value::Real(0.0)]));
    assert_eq!(canonical(&[Value::Integer(2)]), canonical(&[Value::Real(2.0)]));
    assert_eq!(canonical(&[Value::Real(0.25)]).cmp(&canonical(&[Value::Real(0.5)])), Ordering::Less);
    assert_ne!(canonical(&[Value::Text("2".into())]), canonical(&[Value::Integer(2)]));
}

/// Window queries per world of [`windows_match_sqlite`].
const WINDOW_QUERIES_PER_WORLD: usize = 40;
/// Default number of window queries (`EDGESTORE_SQL_WINDOW_QUERIES` overrides it).
const WINDOW_QUERIES_DEFAULT: usize = 1000;
const WINDOW_SEED_DEFAULT: u64 = 0x5769_6e64_6f77_7321;

/// A generator of window queries over one table of a world, read as `x0`.
struct WindowGen<'w> {
    rng: ChaCha8Rng,
    table: &'w Table,
}

impl WindowGen<'_> {
    fn column(&mut self, kinds: &[Kind]) -> Option<String> {
        let columns: Vec<&String> =
            self.table.columns.iter().filter(|(_, k)| kinds.contains(k)).map(|(n, _)| n).collect();
        (!columns.is_empty()).then(|| format!("x0.{}", columns[self.rng.random_range(0..columns.len())]))
    }

    fn any_column(&mut self) -> (String, Kind) {
        let (name, kind) = &self.table.columns[self.rng.random_range(0..self.table.columns.len())];
        (format!("x0.{name}"), *kind)
    }

    /// A frame bound (a start or an end), its offset one of `offsets`.
    fn bound(&mut self, start: bool, offsets: &[&str]) -> String {
        let n = offsets[self.rng.random_range(0..offsets.len())];
        match (self.rng.random_range(0..4), start) {
            (0, true) => "UNBOUNDED PRECEDING".into(),
            (0, false) => "UNBOUNDED FOLLOWING".into(),
            (1, _) => format!("{n} PRECEDING"),
            (2, _) => "CURRENT ROW".into(),
            _ => format!("{n} FOLLOWING"),
        }
    }

    /// A frame clause (or none, for SQLite's default). Some are ones SQLite refuses
    /// (`CURRENT ROW AND 1 PRECEDING`): then edgestore must refuse them too.
    fn frame(&mut self) -> String {
        match self.rng.random_range(0..6) {
            0 | 1 => String::new(),
            2 => " RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW".into(),
            3 => " RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING".into(),
            units => {
                let units = if units == 4 { "ROWS" } else { "GROUPS" };
                let (start, end) = (self.bound(true, &["0", "1", "2", "3"]), self.bound(false, &["0", "1", "2", "3"]));
                format!(" {units} BETWEEN {start} AND {end}")
            }
        }
    }

    /// `OVER (...)`. `total_order`: the order must fix every row's place (its function
    /// depends on the order of peers), so `id` ends it; so must a ROWS frame's.
    fn over(&mut self, total_order: bool, frame: bool) -> String {
        if frame && !total_order && self.rng.random_bool(0.25) {
            return self.range_over();
        }
        let frame = if frame { self.frame() } else { String::new() };
        let total_order = total_order || frame.starts_with(" ROWS");
        let mut parts = Vec::new();
        if self.rng.random_bool(0.5) {
            let (c, _) = self.any_column();
            parts.push(format!("PARTITION BY {c}"));
        }
        let mut order = Vec::new();
        if self.rng.random_bool(0.8) {
            let (c, _) = self.any_column();
            let direction =
                *["", " DESC", " NULLS LAST", " DESC NULLS FIRST"].get(self.rng.random_range(0..4)).unwrap_or(&"");
            order.push(format!("{c}{direction}"));
        }
        if total_order {
            order.push(if self.rng.random_bool(0.5) { "x0.id".into() } else { "x0.id DESC".into() });
        }
        if !order.is_empty() {
            parts.push(format!("ORDER BY {}", order.join(", ")));
        }
        format!("OVER ({}{frame})", parts.join(" ")).replace("( ", "(")
    }

    /// `OVER (... ORDER BY <one number> RANGE ...)` with offsets (integers and reals).
    fn range_over(&mut self) -> String {
        let order = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "x0.k".into());
        let direction =
            *["", " DESC", " NULLS LAST", " DESC NULLS FIRST"].get(self.rng.random_range(0..4)).unwrap_or(&"");
        let partition =
            if self.rng.random_bool(0.4) { format!("PARTITION BY {} ", self.any_column().0) } else { String::new() };
        const OFFSETS: [&str; 5] = ["0", "1", "2", "1.5", "4"];
        let (start, end) = (self.bound(true, &OFFSETS), self.bound(false, &OFFSETS));
        format!("OVER ({partition}ORDER BY {order}{direction} RANGE BETWEEN {start} AND {end})")
    }

    fn call(&mut self) -> String {
        let num = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "x0.k".into());
        let (any, kind) = self.any_column();
        let fallback = literal(&mut self.rng, kind);
        let n = self.rng.random_range(1..4);
        let peers_only = self.rng.random_bool(0.5);
        match self.rng.random_range(0..18) {
            // Over numbers: the bundled SQLite's window group_concat of only '' is "\0" (its
            // plain aggregate's, and edgestore's, is '').
            // Its other name `string_agg` (SQLite 3.44) now and then, without a new draw.
            17 => {
                let name = if n == 2 { "string_agg" } else { "group_concat" };
                format!("{name}({num}, '-') {}", self.over(true, true))
            }
            0 => format!("row_number() {}", self.over(true, false)),
            1 => format!("rank() {}", self.over(false, false)),
            2 => format!("dense_rank() {}", self.over(false, false)),
            3 => format!("percent_rank() {}", self.over(false, false)),
            4 => format!("cume_dist() {}", self.over(false, false)),
            5 => format!("ntile({n}) {}", self.over(true, false)),
            6 => format!("lag({any}) {}", self.over(true, false)),
            7 => format!("lead({any}, {}, {fallback}) {}", n - 1, self.over(true, false)),
            8 => format!("first_value({any}) {}", self.over(true, true)),
            9 => format!("last_value({any}) {}", self.over(true, true)),
            10 => format!("nth_value({any}, {n}) {}", self.over(true, true)),
            11 => format!("count(*){} {}", self.window_filter(), self.over(!peers_only, true)),
            12 => format!("count({any}){} {}", self.window_filter(), self.over(!peers_only, true)),
            13 => format!("sum({num}){} {}", self.window_filter(), self.over(!peers_only, true)),
            14 => format!("avg({num}){} {}", self.window_filter(), self.over(!peers_only, true)),
            15 => format!("total({num}){} {}", self.window_filter(), self.over(!peers_only, true)),
            _ => format!(
                "{}({any}){} {}",
                if self.rng.random_bool(0.5) { "min" } else { "max" },
                self.window_filter(),
                self.over(!peers_only, true)
            ),
        }
    }

    /// Sometimes `FILTER (WHERE ...)` for an aggregate window function.
    fn window_filter(&mut self) -> String {
        match self.rng.random_bool(0.3) {
            true => {
                let (column, kind) = self.any_column();
                let op = ["=", "<>", "<", ">=", "IS NOT"][self.rng.random_range(0..5)];
                let value = if op == "IS NOT" { "NULL".to_string() } else { literal(&mut self.rng, kind) };
                format!(" FILTER (WHERE {column} {op} {value})")
            }
            false => String::new(),
        }
    }

    /// A query and whether its rows come in a fixed order.
    fn query(&mut self) -> (String, bool) {
        let name = &self.table.name;
        if self.rng.random_bool(0.15) {
            // Windows over groups: rank the groups by an aggregate.
            let (key, _) = self.any_column();
            let num = self.column(&[Kind::Int, Kind::Real]).unwrap_or_else(|| "x0.k".into());
            let over = if self.rng.random_bool(0.5) {
                format!("ORDER BY sum({num})")
            } else {
                format!("ORDER BY count(*) DESC, {key}")
            };
            let func = *["rank()", "dense_rank()", "cume_dist()"].get(self.rng.random_range(0..3)).unwrap_or(&"rank()");
            return (
                format!("SELECT {key}, sum({num}), {func} OVER ({over}) FROM {name} AS x0 GROUP BY {key} ORDER BY 1"),
                true,
            );
        }
        if self.rng.random_bool(0.1) {
            // A named window, used as it is and refined with a frame.
            let (part, _) = self.any_column();
            let (num, _) = self.any_column();
            let frame = self.frame().replace(" RANGE", " ROWS");
            return (
                format!(
                    "SELECT x0.id, row_number() OVER w, lag({num}) OVER w, count({num}) OVER (w{frame}) FROM {name} AS x0 \
                     WINDOW w AS (PARTITION BY {part} ORDER BY {num}, x0.id) ORDER BY x0.id"
                ),
                true,
            );
        }
        let calls: Vec<String> = (0..self.rng.random_range(1..=3)).map(|_| self.call()).collect();
        let filter = if self.rng.random_bool(0.3) {
            format!(" WHERE x0.id > {}", self.rng.random_range(0..10))
        } else {
            String::new()
        };
        let mut sql = format!("SELECT x0.id, {} FROM {name} AS x0{filter} ORDER BY x0.id", calls.join(", "));
        if self.rng.random_bool(0.2) {
            write!(sql, " LIMIT {}", self.rng.random_range(1..6)).expect("string");
        }
        (sql, true)
    }
}

/// Generated window queries (functions, partitions, orders and frames at random) over
/// random tables, on edgestore and on SQLite: the rows must match, and a statement SQLite
/// refuses edgestore must refuse too. Prints the seed and how many queries matched.
#[test]
fn windows_match_sqlite() {
    let seed = env_number("EDGESTORE_SEED").unwrap_or(WINDOW_SEED_DEFAULT);
    let queries = env_number("EDGESTORE_SQL_WINDOW_QUERIES").map_or(WINDOW_QUERIES_DEFAULT, |n| n as usize);
    println!("window differential: seed {seed} ({queries} queries); replay with EDGESTORE_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut compared, mut matched, mut refused, mut nonempty) = (0, 0, 0, 0);
    let mut world_index = 0;
    while compared < queries {
        let mut world_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let Loaded { world, statements, mut replica, conn, _dir } = load_world(&mut world_rng, world_index);
        for q in 0..WINDOW_QUERIES_PER_WORLD.min(queries - compared) {
            let table = &world.tables[rng.random_range(0..world.tables.len())];
            let mut generator = WindowGen { rng: ChaCha8Rng::seed_from_u64(rng.random()), table };
            let (query, ordered) = generator.query();
            compared += 1;
            let ours = sql::execute(&mut replica, &query, &[], 0).and_then(|r| r.collect_rows());
            match (sqlite_rows(&conn, &query), ours) {
                // Refused for a reason, never by an internal error.
                (Err(_), Err(e @ (sql::SqlError::Invalid(_) | sql::SqlError::NotSupported(_))))
                    if !e.to_string().contains("internal") =>
                {
                    refused += 1
                }
                (Ok(theirs), Ok(ours)) if same_rows(&ours, &theirs, ordered) => {
                    nonempty += usize::from(!theirs.is_empty())
                }
                (theirs, ours) => panic!(
                    "world {world_index} window query {q} differs from SQLite\n{query}\nschema and data:\n{};\n\
                     edgestore: {ours:?}\nsqlite:    {theirs:?}",
                    statements.join(";\n")
                ),
            }
            matched += 1;
        }
        world_index += 1;
    }
    println!(
        "window differential: {matched} of {compared} window queries matched SQLite over {world_index} random \
         databases ({refused} refused by both, {nonempty} with rows)"
    );
    assert_eq!(matched, compared);
    // Queries that SQLite and edgestore both refuse, or that return nothing, compare nothing.
    assert!(refused * 5 <= compared, "{refused} of {compared} window queries were refused");
    assert!(nonempty * 2 >= compared, "{nonempty} of {compared} window queries had rows");
}
