//! `cargo bench --bench sql`: benchmark B6 (BRIEF §8) — SQL joins over the materialized
//! state, each figure next to SQLite (rusqlite, bundled) on the same data in the same run.
//!
//! Data: `fact` (1M rows: id, dim_id, amount, flag; indexed on dim_id), `dim` (10k rows:
//! id, name, region), `region` (50 rows). Queries:
//!
//! - **scan join**: fact ⋈ dim with a filter on fact and a GROUP BY on dim's region.
//! - **selective join**: one dim row by name, its fact rows through the dim_id index.
//! - **point join**: one fact row by primary key, its dim row by primary key (many lookups;
//!   both engines prepare the statement once — `sql::prepare`, `prepare_cached`; ours plans
//!   at its first execution and reuses the kept plan with each new parameter).
//! - **3-way join**: fact ⋈ dim ⋈ region, GROUP BY region name.
//!
//! Each line prints our time, SQLite's, and the speed ratio (SQLite time / our time:
//! above 1 means we are faster), plus the peak resident memory of the process while our
//! engine ran the query (VmHWM of /proc/self/status, reset through /proc/self/clear_refs
//! before it). The queries run in a child process that only opens the two stores, so this
//! peak is not what loading left behind; it still includes what earlier queries left in
//! the allocator. Rows are loaded
//! through durable `WriteBatch`es of 10k rows. `EDGESTORE_B6_ROWS` (default 1000000) sets
//! the fact table's size (dim has 1/100 of it); results are checked to agree.
//! `EDGESTORE_B6_CASES` (default `scan,selective,point,3way`) picks the queries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgestore::sql;
use edgestore::{ColumnDef, ColumnType, IndexSchema, NodeId, Replica, TableSchema, Value, WriteBatch};
use rusqlite::Connection;

const ROWS_PER_BATCH: usize = 10_000;
const REGIONS: i64 = 50;
const POINT_LOOKUPS: usize = 2000;
const NOW_MS: i64 = 1_750_000_000_000;

const SCAN_JOIN: &str = "SELECT d.region, count(*), sum(f.amount) FROM fact f JOIN dim d ON d.id = f.dim_id \
                         WHERE f.flag < 5 GROUP BY d.region";
const SELECTIVE_JOIN: &str =
    "SELECT d.name, f.id, f.amount FROM dim d JOIN fact f ON f.dim_id = d.id WHERE d.name = 'dim-4242'";
const POINT_JOIN: &str = "SELECT f.amount, d.name FROM fact f JOIN dim d ON d.id = f.dim_id WHERE f.id = ?1";
const THREE_WAY_JOIN: &str = "SELECT r.name, count(*), avg(f.amount) FROM fact f JOIN dim d ON d.id = f.dim_id \
                              JOIN region r ON r.id = d.region GROUP BY r.name";

fn main() {
    let facts: i64 = std::env::var("EDGESTORE_B6_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dims = (facts / 100).max(REGIONS);
    if let Ok(dir) = std::env::var(QUERY_PHASE_DIR) {
        query_phase(std::path::Path::new(&dir), facts);
        return;
    }
    println!("B6: SQL joins, fact {facts} rows x dim {dims} rows x region {REGIONS} rows");
    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, load_ours) = load_edgestore(dir.path(), facts, dims);
    println!("load edgestore (durable batches of {ROWS_PER_BATCH}): {:.1} s", load_ours.as_secs_f64());
    let (conn, load_sqlite) = load_sqlite(dir.path(), facts, dims);
    println!("load sqlite (WAL, batches of {ROWS_PER_BATCH}):    {:.1} s", load_sqlite.as_secs_f64());
    drop((replica, conn));
    // The queries run in a fresh process, so that its peak memory is the queries' and not
    // what loading left behind in the allocator.
    let exe = std::env::current_exe().expect("current exe");
    let status = std::process::Command::new(exe).env(QUERY_PHASE_DIR, dir.path()).status().expect("query phase");
    assert!(status.success(), "query phase failed");
}

/// Set (to the data directory) in the child process that runs the queries.
const QUERY_PHASE_DIR: &str = "EDGESTORE_B6_QUERY_PHASE_DIR";

fn query_phase(dir: &std::path::Path, facts: i64) {
    let mut replica = Replica::open(dir.join("b6.redb"), NodeId::from_public_key(b"b6")).expect("open");
    let conn = Connection::open(dir.join("b6.sqlite")).expect("sqlite");
    println!("query process after opening both stores: peak RSS {} MiB", peak_kib() / 1024);
    println!("{:<16} {:>12} {:>12} {:>8} {:>16}", "query", "edgestore", "sqlite", "ratio", "our peak RSS");
    // `EDGESTORE_B6_CASES=point,selective` runs only those (e.g. under a profiler).
    let cases = std::env::var("EDGESTORE_B6_CASES").unwrap_or_else(|_| "scan,selective,point,3way".into());
    let wanted = |case: &str| cases.split(',').any(|c| c.trim() == case);
    if wanted("scan") {
        compare(&mut replica, &conn, "scan join", SCAN_JOIN, 3);
    }
    if wanted("selective") {
        compare(&mut replica, &conn, "selective join", SELECTIVE_JOIN, 20);
    }
    if wanted("point") {
        point_joins(&replica, &conn, facts);
    }
    if wanted("3way") {
        compare(&mut replica, &conn, "3-way join", THREE_WAY_JOIN, 3);
    }
    for query in [SCAN_JOIN, SELECTIVE_JOIN, THREE_WAY_JOIN] {
        let plan = sql::execute(&mut replica, &format!("EXPLAIN {query}"), &[], NOW_MS).expect("explain");
        println!("plan of {}:", &query[..40]);
        for line in plan.collect_rows().expect("plan") {
            println!("    {}", line[0]);
        }
    }
}

fn dim_name(id: i64) -> String {
    format!("dim-{id}")
}

/// Deterministic pseudo-random dim of a fact row (a multiplicative hash).
fn dim_of(id: i64, dims: i64) -> i64 {
    ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as i64 % dims
}

fn amount_of(id: i64) -> f64 {
    (id % 1000) as f64 * 0.25
}

fn schemas() -> Vec<TableSchema> {
    let c = ColumnDef::new;
    vec![
        TableSchema::new("region")
            .column(c("id", ColumnType::Integer))
            .column(c("name", ColumnType::Text))
            .primary_key(&["id"]),
        TableSchema::new("dim")
            .column(c("id", ColumnType::Integer))
            .column(c("name", ColumnType::Text))
            .column(c("region", ColumnType::Integer))
            .primary_key(&["id"]),
        TableSchema::new("fact")
            .column(c("id", ColumnType::Integer))
            .column(c("dim_id", ColumnType::Integer))
            .column(c("amount", ColumnType::Real))
            .column(c("flag", ColumnType::Integer))
            .primary_key(&["id"]),
    ]
}

#[allow(clippy::disallowed_methods, reason = "benchmarks measure wall time")]
fn now() -> Instant {
    Instant::now()
}

fn load_edgestore(dir: &std::path::Path, facts: i64, dims: i64) -> (Replica, Duration) {
    let start = now();
    let mut replica = Replica::open(dir.join("b6.redb"), NodeId::from_public_key(b"b6")).expect("open");
    let mut ddl = WriteBatch::new();
    for schema in schemas() {
        ddl = ddl.create_table(schema);
    }
    let index = IndexSchema::new("fact_by_dim", "fact", &["dim_id"]);
    replica.write(ddl.create_index(index), NOW_MS).expect("ddl");
    let mut batch = WriteBatch::new();
    for r in 0..REGIONS {
        batch = batch.insert("region", [("id", Value::from(r)), ("name", format!("region-{r}").into())]);
    }
    replica.write(batch, NOW_MS).expect("regions");
    for chunk in (0..dims).collect::<Vec<_>>().chunks(ROWS_PER_BATCH) {
        let batch = chunk.iter().fold(WriteBatch::new(), |batch, &id| {
            batch.insert(
                "dim",
                [("id", Value::from(id)), ("name", dim_name(id).into()), ("region", Value::from(id % REGIONS))],
            )
        });
        replica.write(batch, NOW_MS).expect("dims");
    }
    for chunk in (0..facts).collect::<Vec<_>>().chunks(ROWS_PER_BATCH) {
        let batch = chunk.iter().fold(WriteBatch::new(), |batch, &id| {
            batch.insert(
                "fact",
                [
                    ("id", Value::from(id)),
                    ("dim_id", Value::from(dim_of(id, dims))),
                    ("amount", Value::from(amount_of(id))),
                    ("flag", Value::from(id % 10)),
                ],
            )
        });
        replica.write(batch, NOW_MS).expect("facts");
    }
    (replica, now() - start)
}

fn load_sqlite(dir: &std::path::Path, facts: i64, dims: i64) -> (Connection, Duration) {
    let start = now();
    let mut conn = Connection::open(dir.join("b6.sqlite")).expect("sqlite");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE region (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE dim (id INTEGER PRIMARY KEY, name TEXT, region INTEGER);
         CREATE TABLE fact (id INTEGER PRIMARY KEY, dim_id INTEGER, amount REAL, flag INTEGER);
         CREATE INDEX fact_by_dim ON fact (dim_id);",
    )
    .expect("schema");
    let insert = |conn: &mut Connection, sql: &str, count: i64, row: &dyn Fn(i64) -> Vec<rusqlite::types::Value>| {
        for chunk in (0..count).collect::<Vec<_>>().chunks(ROWS_PER_BATCH) {
            let txn = conn.transaction().expect("txn");
            {
                let mut stmt = txn.prepare_cached(sql).expect("prepare");
                for &id in chunk {
                    stmt.execute(rusqlite::params_from_iter(row(id))).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
    };
    use rusqlite::types::Value as V;
    insert(&mut conn, "INSERT INTO region VALUES (?1, ?2)", REGIONS, &|r| {
        vec![V::Integer(r), V::Text(format!("region-{r}"))]
    });
    insert(&mut conn, "INSERT INTO dim VALUES (?1, ?2, ?3)", dims, &|id| {
        vec![V::Integer(id), V::Text(dim_name(id)), V::Integer(id % REGIONS)]
    });
    insert(&mut conn, "INSERT INTO fact VALUES (?1, ?2, ?3, ?4)", facts, &|id| {
        vec![V::Integer(id), V::Integer(dim_of(id, dims)), V::Real(amount_of(id)), V::Integer(id % 10)]
    });
    conn.execute_batch("ANALYZE").expect("analyze");
    (conn, now() - start)
}

/// Peak resident set size in KiB (VmHWM).
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn sqlite_rows(conn: &Connection, query: &str, params: &[i64]) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare_cached(query).expect("prepare");
    let width = stmt.column_count();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Integer(v) => Value::Integer(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                        rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        _ => Value::Null,
                    })
                })
                .collect()
        })
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

fn ours(replica: &mut Replica, query: &str) -> Vec<Vec<Value>> {
    sql::execute(replica, query, &[], NOW_MS).and_then(|r| r.collect_rows()).expect("edgestore query")
}

fn canonical(mut rows: Vec<Vec<Value>>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .drain(..)
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    Value::Real(x) => format!("{x:.4}"),
                    Value::Integer(i) => format!("{i}"),
                    other => format!("{other}"),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = now();
            f();
            now() - start
        })
        .min()
        .unwrap_or_default()
}

fn report(name: &str, ours: Duration, sqlite: Duration, peak: u64) {
    let ratio = sqlite.as_secs_f64() / ours.as_secs_f64().max(1e-9);
    println!(
        "{name:<16} {:>9.3} ms {:>9.3} ms {:>7.2}x {:>10} MiB",
        ours.as_secs_f64() * 1e3,
        sqlite.as_secs_f64() * 1e3,
        ratio,
        peak / 1024
    );
}

fn compare(replica: &mut Replica, conn: &Connection, name: &str, query: &str, runs: usize) {
    let expected = canonical(sqlite_rows(conn, query, &[]));
    let got = canonical(ours(replica, query));
    assert_eq!(got, expected, "{name}: edgestore and SQLite disagree");
    reset_peak();
    let ours_time = best_of(runs, || {
        ours(replica, query);
    });
    let peak = peak_kib();
    let sqlite_time = best_of(runs, || {
        sqlite_rows(conn, query, &[]);
    });
    report(name, ours_time, sqlite_time, peak);
}

/// Many point-lookup joins; the figure is the time per query.
fn point_joins(replica: &Replica, conn: &Connection, facts: i64) {
    let ids: Vec<i64> = (0..POINT_LOOKUPS as i64).map(|i| dim_of(i * 7919, facts.max(1))).collect();
    let snapshot = Arc::new(replica.snapshot().expect("snapshot"));
    // Prepared once, as SQLite's statement is; planned at the first execution only.
    let statement = sql::prepare(POINT_JOIN).expect("prepare");
    for &id in ids.iter().take(10) {
        let got = statement.query(Arc::clone(&snapshot), &[Value::from(id)]).and_then(|r| r.collect_rows());
        assert_eq!(canonical(got.expect("point join")), canonical(sqlite_rows(conn, POINT_JOIN, &[id])));
    }
    reset_peak();
    let ours_time = best_of(3, || {
        for &id in &ids {
            let rows = statement.query(Arc::clone(&snapshot), &[Value::from(id)]).and_then(|r| r.collect_rows());
            assert_eq!(rows.expect("point join").len(), 1);
        }
    });
    let peak = peak_kib();
    let sqlite_time = best_of(3, || {
        for &id in &ids {
            assert_eq!(sqlite_rows(conn, POINT_JOIN, &[id]).len(), 1);
        }
    });
    let per = |d: Duration| d / POINT_LOOKUPS as u32;
    report("point join", per(ours_time), per(sqlite_time), peak);
}
