//! SQL limits (issue 9): hostile statements never crash the process, memory-hungry
//! statements fail with the typed budget error and give their bytes back, and a running
//! statement stops soon after its interrupt is raised.
//!
//! Every hostile statement runs on a thread with exactly `STATEMENT_STACK_BYTES` of stack,
//! as the node runs statements. `measure_stack` (ignored; run it with `--ignored
//! --nocapture`) finds, in child processes of this test binary, the least stack each of the
//! deepest accepted statements needs; its figures are in docs/design.md § SQL "Limits".

use std::sync::Arc;

use edgestore::sql::{
    self, ExecOptions, Interrupt, InterruptCause, MemoryPool, SqlError, CTE_EXPANSION_BYTES_MAX, EXPR_DEPTH_MAX,
    STATEMENT_STACK_BYTES, SUBQUERY_DEPTH_COST,
};
use edgestore::{NodeId, Replica, Value};

fn replica(dir: &tempfile::TempDir) -> Replica {
    Replica::open(dir.path().join("limits.redb"), NodeId::from_public_key(b"sql-limits")).expect("open")
}

/// A table `t` of `rows` rows: `id` 0.., `v` a text of `payload` bytes.
fn table(replica: &mut Replica, rows: usize, payload: usize) {
    sql::execute(replica, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", &[], 0).expect("create");
    let insert = sql::prepare("INSERT INTO t VALUES (?, ?)").expect("prepare");
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, '{}')", "x".repeat(payload))).collect();
        sql::execute(replica, &format!("INSERT INTO t VALUES {}", values.join(", ")), &[], 0).expect("insert");
    }
    drop(insert);
}

/// Runs `f` on a thread with the statement stack, as the node does.
fn on_statement_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STATEMENT_STACK_BYTES)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the statement thread must not panic")
}

fn run(replica: &mut Replica, text: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
    sql::execute(replica, text, params, 0).and_then(|r| r.collect_rows())
}

fn chain(op: &str, term: &str, terms: usize) -> String {
    vec![term; terms].join(op)
}

fn nested(open: &str, inner: &str, close: &str, levels: usize) -> String {
    format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
}

fn assert_too_deep(result: Result<Vec<Vec<Value>>, SqlError>, what: &str) {
    match result {
        Err(e @ SqlError::TooDeep { limit }) => {
            assert_eq!(limit, EXPR_DEPTH_MAX, "{what}");
            assert_eq!(e.to_string(), format!("expression nested too deeply (limit {EXPR_DEPTH_MAX})"));
        }
        other => panic!("{what}: expected TooDeep, got {:?}", other.map(|rows| rows.len())),
    }
}

/// The deepest statements the limits accept, by kind: each must run on the statement stack
/// (and one level more must be refused, see `one_level_deeper_is_refused`).
fn deepest_accepted() -> Vec<(&'static str, String, Vec<Value>, Value)> {
    let d = EXPR_DEPTH_MAX;
    let params: Vec<Value> = (0..d).map(|_| Value::from(1)).collect();
    let (subqueries, derived) = (scalar_levels(), derived_levels());
    vec![
        ("1+1+…", format!("SELECT {}", chain("+", "1", d)), vec![], Value::from(d as i64)),
        ("?+?+…", format!("SELECT {}", chain("+", "?", d)), params, Value::from(d as i64)),
        ("x AND x AND …", format!("SELECT {}", chain(" AND ", "1", d)), vec![], Value::from(1)),
        ("x OR x OR …", format!("SELECT {}", chain(" OR ", "0", d)), vec![], Value::from(0)),
        ("'a'||'a'||…", format!("SELECT length({})", chain("||", "'a'", d - 1)), vec![], Value::from(d as i64 - 1)),
        ("((((1))))", format!("SELECT {}", nested("(", "1", ")", d - 1)), vec![], Value::from(1)),
        ("abs(abs(…))", format!("SELECT {}", nested("abs(", "1", ")", d - 1)), vec![], Value::from(1)),
        ("NOT NOT …", format!("SELECT {}", nested("NOT ", "1", "", d - 1)), vec![], Value::from(i64::from(d % 2 == 1))),
        ("CASE in CASE", format!("SELECT {}", nested("CASE WHEN 1 THEN ", "7", " END", d - 1)), vec![], Value::from(7)),
        ("x IS TRUE IS TRUE …", format!("SELECT 1{}", " IS TRUE".repeat((d - 1) / 3)), vec![], Value::from(1)),
        ("(SELECT (SELECT …))", format!("SELECT {}", nested("(SELECT ", "5", ")", subqueries)), vec![], Value::from(5)),
        (
            "correlated (SELECT … WHERE outer)",
            format!("SELECT {} FROM t AS t0 WHERE t0.id = 1", correlated(subqueries)),
            vec![],
            Value::from(1),
        ),
        (
            "FROM (SELECT * FROM (…))",
            format!("SELECT * FROM {} AS s", nested("(SELECT * FROM ", "t", " AS s WHERE id = 1)", derived)),
            vec![],
            Value::from(1),
        ),
        ("UNION chain", chain(" UNION ALL ", "SELECT 1", d), vec![], Value::from(1)),
        ("INTERSECT chain", chain(" INTERSECT ", "SELECT 1", d), vec![], Value::from(1)),
        ("EXCEPT chain", format!("SELECT 1 EXCEPT {}", chain(" EXCEPT ", "SELECT 2", d - 1)), vec![], Value::from(1)),
        ("WITH in WITH", nested("WITH c AS (", "SELECT 1", ") SELECT * FROM c", derived), vec![], Value::from(1)),
    ]
}

/// Most scalar subqueries nested in each other: each costs `SUBQUERY_DEPTH_COST` levels and
/// the expression it is (one), and the innermost expression takes up to two.
fn scalar_levels() -> usize {
    (EXPR_DEPTH_MAX - 2) / (SUBQUERY_DEPTH_COST + 1)
}

/// Most derived tables nested in each other (`FROM (SELECT … FROM (…) WHERE id = 1)`).
fn derived_levels() -> usize {
    (EXPR_DEPTH_MAX - 2) / SUBQUERY_DEPTH_COST
}

/// `(SELECT (SELECT t2.id FROM t AS t2 WHERE t2.id = t1.id) FROM t AS t1 WHERE t1.id = t0.id)`.
fn correlated(levels: usize) -> String {
    let mut inner = format!("t{levels}.id");
    for k in (1..=levels).rev() {
        inner = format!("(SELECT {inner} FROM t AS t{k} WHERE t{k}.id = t{}.id)", k - 1);
    }
    inner
}

fn first_value(rows: Vec<Vec<Value>>) -> Value {
    rows.into_iter().next().and_then(|r| r.into_iter().next()).expect("a row")
}

#[test]
fn the_deepest_accepted_statements_run_on_the_statement_stack() {
    on_statement_stack(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut replica = replica(&dir);
        table(&mut replica, 3, 1);
        for (what, text, params, expected) in deepest_accepted() {
            let rows = run(&mut replica, &text, &params).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(first_value(rows), expected, "{what}");
            let explained = run(&mut replica, &format!("EXPLAIN {text}"), &params);
            assert!(explained.is_ok_and(|lines| !lines.is_empty()), "EXPLAIN {what}");
        }
        // A write statement with the deepest expression (the replica runs it on this thread).
        let insert = format!("INSERT INTO t VALUES ({}, 'deep')", chain("+", "1", EXPR_DEPTH_MAX));
        assert_eq!(sql::execute(&mut replica, &insert, &[], 0).expect("insert").rows_affected, 1);
    });
}

#[test]
fn one_level_deeper_is_refused() {
    on_statement_stack(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut replica = replica(&dir);
        table(&mut replica, 3, 1);
        let d = EXPR_DEPTH_MAX + 1;
        let (s, derived) = (scalar_levels() + 1, derived_levels() + 1);
        let cases = [
            ("1+1+…", format!("SELECT {}", chain("+", "1", d))),
            ("((((1))))", format!("SELECT {}", nested("(", "1", ")", d - 1))),
            ("NOT NOT …", format!("SELECT {}", nested("NOT ", "1", "", d - 1))),
            ("(SELECT (SELECT …))", format!("SELECT {}", nested("(SELECT ", "5", ")", s))),
            ("correlated", format!("SELECT {} FROM t AS t0", correlated(s))),
            (
                "FROM (SELECT …)",
                format!("SELECT * FROM {} AS s", nested("(SELECT * FROM ", "t", " AS s WHERE id = 1)", derived)),
            ),
            ("UNION chain", chain(" UNION ALL ", "SELECT 1", d + 1)),
            ("INTERSECT chain", chain(" INTERSECT ", "SELECT 1", d + 1)),
            ("WITH in WITH", nested("WITH c AS (", "SELECT 1", ") SELECT * FROM c", derived)),
            ("in a WHERE", format!("SELECT * FROM t WHERE id = {}", chain("+", "0", d))),
            ("in an INSERT", format!("INSERT INTO t VALUES ({}, 'x')", chain("+", "1", d))),
            ("in an UPDATE", format!("UPDATE t SET v = {}", chain("||", "'a'", d))),
        ];
        for (what, text) in cases {
            assert_too_deep(run(&mut replica, &text, &[]), what);
        }
        assert_eq!(first_value(run(&mut replica, "SELECT count(*) FROM t", &[]).expect("count")), Value::from(3));
    });
}

/// The statements of issue 9 and longer ones: refused with the typed error (or answered),
/// never a stack overflow, also when the text nests far past the limit.
#[test]
fn hostile_chains_are_refused_or_answered() {
    on_statement_stack(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut replica = replica(&dir);
        table(&mut replica, 3, 1);
        let many: Vec<Value> = (0..10_000).map(Value::from).collect();
        let refused = [
            ("1+1+… (1,350 terms, issue 9)", format!("SELECT {}", chain("+", "1", 1350)), vec![]),
            ("a+b+c+… (10k terms)", format!("SELECT {} FROM t", chain("+", "id", 10_000)), vec![]),
            ("x AND y AND … (10k)", format!("SELECT * FROM t WHERE {}", chain(" AND ", "id > 0", 10_000)), vec![]),
            ("OR (10k)", format!("SELECT * FROM t WHERE {}", chain(" OR ", "id = 1", 10_000)), vec![]),
            ("|| (10k)", format!("SELECT {}", chain(" || ", "'a'", 10_000)), vec![]),
            ("?+? (10k)", format!("SELECT {}", chain("+", "?", 10_000)), many),
            ("1+1+… (500k terms, 1 MB)", format!("SELECT {}", chain("+", "1", 500_000)), vec![]),
            ("500k parentheses", format!("SELECT {}", nested("(", "1", ")", 500_000)), vec![]),
            ("200k NOT", format!("SELECT {}", nested("NOT ", "1", "", 200_000)), vec![]),
            ("60k nested subqueries", format!("SELECT {}", nested("(SELECT ", "1", ")", 60_000)), vec![]),
            ("UNION (50k)", chain(" UNION ", "SELECT 1", 50_000), vec![]),
            ("INTERSECT (50k)", chain(" INTERSECT ", "SELECT 1", 50_000), vec![]),
            ("EXCEPT / UNION ALL (50k)", chain(" EXCEPT SELECT 2 UNION ALL ", "SELECT 1", 25_000), vec![]),
            ("WITH in WITH (20k)", nested("WITH c AS (", "SELECT 1", ") SELECT * FROM c", 20_000), vec![]),
            ("x IS NULL IS NULL … (50k)", format!("SELECT 1{}", " IS NULL".repeat(50_000)), vec![]),
        ];
        for (what, text, params) in refused {
            assert_too_deep(run(&mut replica, &text, &params), what);
        }
        // Long flat lists are not deep: they are answered.
        let items: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        for (probe, found) in [(99_999, 1), (100_000, 0)] {
            let in_list = format!("SELECT {probe} IN ({})", items.join(","));
            assert_eq!(first_value(run(&mut replica, &in_list, &[]).expect("IN list")), Value::from(found));
        }
        let columns = format!("SELECT {} FROM t", chain(", ", "id + 1", 10_000));
        assert_eq!(run(&mut replica, &columns, &[]).expect("10k columns").len(), 3);
        let rows: Vec<String> = (0..50_000).map(|i| format!("({i})")).collect();
        let values = format!("SELECT count(*) FROM (VALUES {})", rows.join(","));
        assert_eq!(first_value(run(&mut replica, &values, &[]).expect("VALUES")), Value::from(50_000));
    });
}

/// CTEs each reading the one before twice: every reference plans its CTE again, so `n` of them
/// plan 2^n bodies; past [`CTE_EXPANSION_BYTES_MAX`] of planned text the statement is refused.
fn doubling_ctes(levels: usize) -> String {
    let mut ctes = vec!["c0 AS (SELECT 1 AS v)".to_string()];
    ctes.extend((1..=levels).map(|i| format!("c{i} AS (SELECT a.v FROM c{p} AS a, c{p} AS b)", p = i - 1)));
    format!("WITH {} SELECT count(*) FROM c{levels}", ctes.join(", "))
}

#[test]
fn ctes_that_double_at_each_level_are_bounded() {
    on_statement_stack(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut replica = replica(&dir);
        assert_eq!(first_value(run(&mut replica, &doubling_ctes(10), &[]).expect("1024 references")), Value::from(1));
        match run(&mut replica, &doubling_ctes(30), &[]) {
            Err(e @ SqlError::CteExpansion { limit_bytes: CTE_EXPANSION_BYTES_MAX }) => {
                assert!(e.to_string().starts_with("common table expressions expand to more than 4 MiB of SQL"), "{e}")
            }
            other => panic!("expected CteExpansion, got {other:?}"),
        }
    });
}

#[test]
fn parameter_counts_must_match() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 3, 1);
    let one = [Value::from(1)];
    let two = [Value::from(1), Value::from(2)];
    let cases: [(&str, &[Value], usize); 5] = [
        ("SELECT ?", &two, 1),
        ("SELECT ?", &[], 1),
        ("SELECT 1", &one, 0),
        ("SELECT ?2", &one, 2),
        ("INSERT INTO t VALUES (?, ?)", &one, 2),
    ];
    for (text, params, expected) in cases {
        match run(&mut replica, text, params) {
            Err(SqlError::ParamCount { expected: e, got }) => assert_eq!((e, got), (expected, params.len()), "{text}"),
            other => panic!("{text}: expected ParamCount, got {other:?}"),
        }
    }
    assert_eq!(run(&mut replica, "SELECT ?2, ?1", &two).expect("exact"), vec![vec![Value::from(2), Value::from(1)]]);
    let statement = sql::prepare("SELECT ?, ?5").expect("prepare");
    assert_eq!(statement.param_count(), 5);
}

/// Options with a `budget`-byte statement budget and an unbounded pool it reports to.
fn budget(bytes: usize) -> (ExecOptions, MemoryPool) {
    let pool = MemoryPool::unbounded();
    (ExecOptions { statement_memory_bytes_max: bytes, pool: pool.clone(), interrupt: Interrupt::new() }, pool)
}

fn run_with(replica: &mut Replica, text: &str, params: &[Value], opts: &ExecOptions) -> Result<usize, SqlError> {
    let statement = sql::prepare(text)?;
    let result = statement.execute_with(replica, params, 0, opts)?;
    let mut rows = 0;
    for row in result.rows {
        row?;
        rows += 1;
    }
    Ok(rows)
}

#[test]
fn memory_hungry_statements_fail_with_the_budget_error_and_give_their_bytes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 1000, 1000);
    const MIB: usize = 1 << 20;
    let hostile = [
        ("ORDER BY without LIMIT over a cross join", "SELECT a.v, b.id FROM t a, t b ORDER BY b.id, a.id"),
        ("GROUP BY with many groups", "SELECT a.id, b.id, count(*) FROM t a, t b GROUP BY a.id, b.id"),
        ("group_concat over many rows", "SELECT group_concat(a.v) FROM t a, t b"),
        ("DISTINCT", "SELECT DISTINCT a.v || b.id FROM t a, t b"),
        ("hash join build side", "SELECT count(*) FROM t a JOIN t b ON a.v = b.v || ''"),
        ("nested loop inner side", "SELECT count(*) FROM t a, t b WHERE a.v < b.v"),
        ("IN (SELECT …) set", "SELECT count(*) FROM t WHERE v IN (SELECT a.v || b.id FROM t a, t b)"),
        ("count(DISTINCT …)", "SELECT count(DISTINCT a.v || b.id) FROM t a, t b"),
        ("UNION's distinct set", "SELECT count(*) FROM (SELECT a.v || b.id FROM t a, t b UNION SELECT 1)"),
        (
            "INTERSECT's set of the right side",
            "SELECT count(*) FROM (SELECT 1 INTERSECT SELECT a.v || b.id FROM t a, t b)",
        ),
        ("EXCEPT's set of the right side", "SELECT count(*) FROM (SELECT 1 EXCEPT SELECT a.v || b.id FROM t a, t b)"),
        ("EXCEPT's distinct left rows", "SELECT count(*) FROM (SELECT a.v || b.id FROM t a, t b EXCEPT SELECT 1)"),
        (
            "a CTE read twice (a hash join of its rows)",
            "WITH s AS (SELECT a.v || b.id AS k FROM t a, t b) SELECT count(*) FROM s JOIN s AS r USING (k)",
        ),
        ("a window's rows over a cross join", "SELECT a.id, row_number() OVER (ORDER BY a.v, b.id) FROM t a, t b"),
        (
            "the tree of a large JSON array",
            "SELECT json_array_length('[' || replace(hex(zeroblob(100000)), '00', '0,') || '0]')",
        ),
        (
            "an endless recursive CTE's set of rows seen (UNION)",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION SELECT x + 1 FROM c) SELECT count(*) FROM c",
        ),
        (
            "a recursive CTE whose runs grow a thousandfold",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT c.x FROM c, t) SELECT count(*) FROM c",
        ),
        (
            "group_concat over a whole-partition window frame",
            "SELECT group_concat(v) OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) FROM t",
        ),
        ("INSERT … SELECT of a cross join", "INSERT INTO t SELECT a.id * 1000 + b.id + 1000000, a.v FROM t a, t b"),
        ("UPDATE of every row with a large value", "UPDATE t SET v = v || v"),
    ];
    for (what, text) in hostile {
        let (opts, pool) = budget(MIB);
        match run_with(&mut replica, text, &[], &opts) {
            Err(e @ SqlError::MemoryBudget { limit_bytes: MIB }) => {
                assert_eq!(e.to_string(), "query exceeded its memory budget (1 MiB)", "{what}")
            }
            other => panic!("{what}: expected MemoryBudget, got {other:?}"),
        }
        assert_eq!(pool.reserved_bytes(), 0, "{what}: every reservation is given back");
    }
    assert_eq!(first_value(run(&mut replica, "SELECT count(*) FROM t", &[]).expect("count")), Value::from(1000));
    // The same statements fit a larger budget (the hash join at least) and also give back.
    let (opts, pool) = budget(64 * MIB);
    let joined = run_with(&mut replica, "SELECT count(*) FROM t a JOIN t b ON a.v = b.v || ''", &[], &opts);
    assert_eq!(joined.expect("within 64 MiB"), 1);
    assert_eq!(pool.reserved_bytes(), 0);
}

#[test]
fn string_results_past_the_budget_fail_before_they_are_built() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    // 1 KiB grows 8 times per replace: 16 levels would be 2^48 KiB.
    let text = nested("replace(", "?", ", 'a', 'aaaaaaaa')", 16);
    let kib = Value::from("a".repeat(1024));
    for opts in [ExecOptions::default(), budget(1 << 20).0] {
        let limit = opts.statement_memory_bytes_max;
        match run_with(&mut replica, &format!("SELECT length({text})"), std::slice::from_ref(&kib), &opts) {
            Err(SqlError::MemoryBudget { limit_bytes }) => assert_eq!(limit_bytes, limit),
            other => panic!("nested replace: expected MemoryBudget, got {other:?}"),
        }
        assert_eq!(opts.pool.reserved_bytes(), 0);
    }
    let (opts, _) = budget(1 << 20);
    let big = Value::from("b".repeat(600 << 10));
    for f in ["upper(?)", "hex(?)", "? || ?", "lower(? || ?)", "CAST(? || ? AS BLOB)", "replace(?, 'b', 'bb')"] {
        let params = vec![big.clone(); f.matches('?').count()];
        match run_with(&mut replica, &format!("SELECT length({f})"), &params, &opts) {
            Err(SqlError::MemoryBudget { .. }) if f != "upper(?)" => {}
            Ok(1) if f == "upper(?)" => {}
            other => panic!("{f}: {other:?}"),
        }
    }
}

#[test]
fn the_node_pool_bounds_concurrent_statements() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 1000, 100);
    let pool = MemoryPool::new(3 << 20);
    let opts = ExecOptions { statement_memory_bytes_max: 64 << 20, pool: pool.clone(), interrupt: Interrupt::new() };
    // One statement holds a sorted result while it is read; another cannot take the rest.
    let sorted = sql::prepare("SELECT a.v, b.id FROM t a, t b WHERE b.id < 10 ORDER BY b.id").expect("prepare");
    let mut held = sorted.execute_with(&mut replica, &[], 0, &opts).expect("first statement").rows;
    assert!(held.next().is_some_and(|r| r.is_ok()));
    assert!(pool.reserved_bytes() > 1 << 20, "the sort holds its rows: {}", pool.reserved_bytes());
    match run_with(&mut replica, "SELECT a.v, b.id FROM t a, t b WHERE b.id < 10 ORDER BY b.id", &[], &opts) {
        Err(e @ SqlError::NodeMemoryBudget { limit_bytes }) => {
            assert_eq!(limit_bytes, 3 << 20);
            assert!(e.to_string().contains("node's memory budget"), "{e}");
        }
        other => panic!("expected NodeMemoryBudget, got {other:?}"),
    }
    drop(held);
    assert_eq!(pool.reserved_bytes(), 0);
    let sorted = run_with(&mut replica, "SELECT a.v FROM t a, t b WHERE b.id < 10 ORDER BY b.id", &[], &opts);
    assert_eq!(sorted.expect("the pool is free again"), 10_000);
    assert_eq!(pool.reserved_bytes(), 0);
}

#[test]
fn a_four_way_cross_join_stops_when_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 1000, 1);
    let causes = [InterruptCause::TimeLimit { limit_ms: 30_000 }, InterruptCause::ClientGone, InterruptCause::Shutdown];
    let messages = [
        "statement exceeded its time limit (30000 ms)",
        "statement cancelled: the client went away",
        "statement cancelled: the node is shutting down",
    ];
    let statements = [
        "SELECT count(*) FROM t a, t b, t c, t d",
        "SELECT a.id FROM t a, t b, t c, t d ORDER BY a.v",
        "SELECT DISTINCT a.id + b.id + c.id + d.id FROM t a, t b, t c, t d",
        "SELECT count(*) FROM t a, t b, t c, t d WHERE a.v || b.v = c.v || d.v || 'x'",
        "SELECT count(*) FROM t a WHERE EXISTS (SELECT 1 FROM t b, t c, t d WHERE b.id + c.id + d.id < a.id - 5000)",
        // min() cannot take a row out of its frame: a moving frame of a million rows is
        // rescanned for every row, and only the interrupt ends it.
        "SELECT min(a.id + b.id) OVER (ORDER BY a.id, b.id ROWS BETWEEN CURRENT ROW AND 1000000 FOLLOWING) FROM t a, t b",
        // Endless, in constant memory: one row a run, each run's input let go.
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    ];
    let mut replica = Some(replica);
    for (i, text) in statements.iter().enumerate() {
        let (cause, message) = (causes[i % 3], messages[i % 3]);
        let pool = MemoryPool::unbounded();
        let interrupt = Interrupt::new();
        let opts = ExecOptions { pool: pool.clone(), interrupt: interrupt.clone(), ..ExecOptions::default() };
        let mut moved = replica.take().expect("the replica comes back from each statement");
        let text = *text;
        let worker = std::thread::Builder::new()
            .stack_size(STATEMENT_STACK_BYTES)
            .spawn(move || {
                let result = run_with(&mut moved, text, &[], &opts);
                (result, moved)
            })
            .expect("spawn");
        // The statement holds memory once its joins' inner sides are read: it is running.
        while pool.reserved_bytes() == 0 && !worker.is_finished() {
            std::thread::yield_now();
        }
        #[allow(clippy::disallowed_methods)] // a figure for the report, not an assertion
        let raised = std::time::Instant::now();
        interrupt.interrupt(cause);
        let (result, back) = worker.join().expect("no panic");
        println!("{text}: stopped {} µs after the interrupt", raised.elapsed().as_micros());
        match result {
            Err(e @ SqlError::Interrupted(c)) => {
                assert_eq!(c, cause, "{text}");
                assert_eq!(e.to_string(), message);
            }
            other => panic!("{text}: expected Interrupted, got {other:?}"),
        }
        assert_eq!(pool.reserved_bytes(), 0, "{text}");
        replica = Some(back);
    }
}

#[test]
fn an_interrupted_write_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 300, 1);
    let interrupt = Interrupt::new();
    interrupt.interrupt(InterruptCause::Shutdown);
    let opts = ExecOptions { interrupt, ..ExecOptions::default() };
    let insert = "INSERT INTO t SELECT a.id * 1000 + b.id + 1000000, 'x' FROM t a, t b";
    assert!(matches!(run_with(&mut replica, insert, &[], &opts), Err(SqlError::Interrupted(InterruptCause::Shutdown))));
    assert_eq!(first_value(run(&mut replica, "SELECT count(*) FROM t", &[]).expect("count")), Value::from(300));
}

#[test]
fn rows_being_read_stop_when_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 100, 1);
    let interrupt = Interrupt::new();
    let opts = ExecOptions { interrupt: interrupt.clone(), ..ExecOptions::default() };
    let snapshot = Arc::new(replica.snapshot().expect("snapshot"));
    let statement = sql::prepare("SELECT a.id FROM t a, t b").expect("prepare");
    let mut rows = statement.query_with(snapshot, &[], &opts).expect("query").rows;
    assert!(rows.next().is_some_and(|r| r.is_ok()));
    interrupt.interrupt(InterruptCause::ClientGone);
    assert!(matches!(rows.next(), Some(Err(SqlError::Interrupted(InterruptCause::ClientGone)))));
    assert!(rows.next().is_none(), "nothing after the error");
}

/// Finds the least stack each deepest accepted statement needs, by running it in a child
/// process of this binary with a given stack (a child that overflows dies; the parent
/// bisects). Prints one line per statement: the bytes at the full depth and per level.
#[test]
#[ignore = "a measurement: cargo test --test sql_limits -- --ignored --nocapture measure_stack"]
fn measure_stack() {
    if let Ok(spec) = std::env::var("EDGESTORE_STACK_PROBE") {
        return probe(&spec);
    }
    let exe = std::env::current_exe().expect("test binary");
    let fits = |index: usize, levels: usize, stack: usize| {
        std::process::Command::new(&exe)
            .args(["--exact", "measure_stack", "--ignored", "--test-threads=1", "--quiet"])
            .env("EDGESTORE_STACK_PROBE", format!("{index}:{levels}:{stack}"))
            .output()
            .expect("run the probe")
            .status
            .success()
    };
    let least = |index: usize, levels: usize| {
        let (mut low, mut high) = (16usize << 10, 256usize << 20);
        while high - low > 8 << 10 {
            let mid = (low + high) / 2;
            if fits(index, levels, mid) {
                high = mid;
            } else {
                low = mid;
            }
        }
        high
    };
    for (index, (what, _, _, _)) in deepest_accepted().iter().enumerate() {
        let full = least(index, 1);
        let half = least(index, 2);
        println!(
            "{what:40} {:>8} KiB at the deepest accepted, ~{} bytes per level (of {EXPR_DEPTH_MAX})",
            full >> 10,
            (full.saturating_sub(half)) * 2 / EXPR_DEPTH_MAX
        );
    }
}

/// In a child: runs statement `index` of [`deepest_accepted`] at 1/`divisor` of its depth
/// on a thread of `stack` bytes.
fn probe(spec: &str) {
    let parts: Vec<usize> = spec.split(':').map(|p| p.parse().expect("probe spec")).collect();
    let (index, divisor, stack) = (parts[0], parts[1], parts[2]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    table(&mut replica, 3, 1);
    let (_, text, params, _) = deepest_accepted().swap_remove(index);
    let text = if divisor == 1 { text } else { shallower(&text, divisor) };
    let params = params[..text.matches('?').count()].to_vec();
    let result = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || run(&mut replica, &text, &params).map(drop))
        .expect("spawn")
        .join()
        .expect("no panic");
    result.expect("the statement runs");
}

/// The statement with about 1/`divisor` of its nesting: the same shape, fewer levels.
fn shallower(text: &str, divisor: usize) -> String {
    // Each statement of `deepest_accepted` repeats one unit; rebuild it with fewer.
    let d = EXPR_DEPTH_MAX / divisor;
    let (s, derived) = (scalar_levels() / divisor, derived_levels() / divisor);
    match text {
        t if t.starts_with("SELECT 1+1") => format!("SELECT {}", chain("+", "1", d)),
        t if t.starts_with("SELECT ?") => format!("SELECT {}", chain("+", "?", d)),
        t if t.starts_with("SELECT 1 AND") => format!("SELECT {}", chain(" AND ", "1", d)),
        t if t.starts_with("SELECT 0 OR") => format!("SELECT {}", chain(" OR ", "0", d)),
        t if t.starts_with("SELECT length(") => format!("SELECT length({})", chain("||", "'a'", d)),
        t if t.starts_with("SELECT ((") => format!("SELECT {}", nested("(", "1", ")", d)),
        t if t.starts_with("SELECT abs(") => format!("SELECT {}", nested("abs(", "1", ")", d)),
        t if t.starts_with("SELECT NOT") => format!("SELECT {}", nested("NOT ", "1", "", d)),
        t if t.starts_with("SELECT CASE") => format!("SELECT {}", nested("CASE WHEN 1 THEN ", "7", " END", d)),
        t if t.starts_with("SELECT 1 IS") => format!("SELECT 1{}", " IS TRUE".repeat(d / 3)),
        t if t.starts_with("SELECT (SELECT") && !t.contains("FROM") => {
            format!("SELECT {}", nested("(SELECT ", "5", ")", s))
        }
        t if t.starts_with("SELECT (SELECT") => format!("SELECT {} FROM t AS t0 WHERE t0.id = 1", correlated(s)),
        t if t.starts_with("SELECT * FROM") => {
            format!("SELECT * FROM {} AS s", nested("(SELECT * FROM ", "t", " AS s WHERE id = 1)", derived))
        }
        t if t.starts_with("SELECT 1 INTERSECT") => chain(" INTERSECT ", "SELECT 1", d),
        t if t.starts_with("SELECT 1 EXCEPT") => format!("SELECT 1 EXCEPT {}", chain(" EXCEPT ", "SELECT 2", d - 1)),
        t if t.starts_with("WITH") => nested("WITH c AS (", "SELECT 1", ") SELECT * FROM c", derived),
        _ => chain(" UNION ALL ", "SELECT 1", d),
    }
}

/// A moving window over many rows: every value is the one computed here directly, the
/// rows it held count against the budget while they are read, and every byte is given
/// back after; under a budget too small for its rows it fails with the budget error.
#[test]
fn a_moving_window_over_many_rows_is_exact_and_accounted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = replica(&dir);
    let rows = 20_000;
    table(&mut replica, rows, 8);
    let text = "SELECT id, avg(id) OVER w, min(id) OVER w, count(*) OVER (ORDER BY id / 100) FROM t \
                WINDOW w AS (ORDER BY id ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) ORDER BY id";
    let (opts, pool) = budget(64 << 20);
    let result = sql::prepare(text).expect("prepare").execute_with(&mut replica, &[], 0, &opts).expect("run");
    let mut read = 0;
    for (i, row) in result.rows.enumerate() {
        let row = row.expect("row");
        assert!(pool.reserved_bytes() > 0, "the window's rows are held while they are read");
        let id = i as i64;
        let low = (id - 9).max(0);
        let mean = (low..=id).sum::<i64>() as f64 / (id - low + 1) as f64;
        let peers_so_far = (id / 100 + 1) * 100;
        assert_eq!(
            row,
            vec![Value::from(id), Value::Real(mean), Value::from(low), Value::from(peers_so_far)],
            "row {i}"
        );
        read += 1;
    }
    assert_eq!(read, rows);
    assert_eq!(pool.reserved_bytes(), 0, "every reservation is given back");
    let (small, pool) = budget(1 << 20);
    match run_with(&mut replica, text, &[], &small) {
        Err(SqlError::MemoryBudget { limit_bytes }) => assert_eq!(limit_bytes, 1 << 20),
        other => panic!("expected MemoryBudget, got {other:?}"),
    }
    assert_eq!(pool.reserved_bytes(), 0);
}
