//! SQL behaviour as data: every `tests/sql/*.txt` file is a script of statements and
//! expected results, run against a fresh replica.
//!
//! Format (blocks separated by blank lines, `#` starts a comment line):
//!
//! ```text
//! ok                      -- the statement succeeds
//! CREATE TABLE t (id INTEGER PRIMARY KEY)
//!
//! count 2                 -- the write affects 2 rows
//! INSERT INTO t VALUES (1), (2)
//!
//! error no such table     -- fails with a message containing the text
//! SELECT * FROM nope
//!
//! query                   -- rows in this order (`query unordered`: as a multiset)
//! params 1, 'x'           -- optional: bound parameters, as SQL literals
//! SELECT id FROM t WHERE id > ?
//! ----
//! 2
//! ```
//!
//! Result values are written `1`, `1.5`, `text`, `NULL`, `true`, `x'00ff'`, separated by
//! ` | `. A failing case reports its file and line.
//!
//! Bless mode: `EDGESTORE_BLESS=1 cargo test --test sql_cases` writes each `query` case's
//! rows and each `count` case's count back into its file as edgestore gives them, instead
//! of failing on a difference (`ok` and `error` cases still must pass). Review the change
//! with `git diff tests/sql` before committing it: blessed output is only as right as the
//! engine that wrote it (check it against `sqlite3` where SQLite can run the case).

use std::path::Path;

use edgestore::sql::{self, SqlError};
use edgestore::{NodeId, Replica, Value};

fn render(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        other => other.to_string(),
    }
}

struct Case {
    line: usize,
    directive: String,
    params: Option<String>,
    sql: String,
    expected: Vec<String>,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let mut case =
            Case { line: i + 1, directive: line.to_string(), params: None, sql: String::new(), expected: Vec::new() };
        i += 1;
        if let Some(p) = lines.get(i).and_then(|l| l.strip_prefix("params ")) {
            case.params = Some(p.to_string());
            i += 1;
        }
        let mut in_result = false;
        while i < lines.len() && !lines[i].trim().is_empty() {
            let l = lines[i].trim_end();
            if l == "----" {
                in_result = true;
            } else if in_result {
                case.expected.push(l.to_string());
            } else if !l.starts_with('#') {
                case.sql.push_str(l);
                case.sql.push('\n');
            }
            i += 1;
        }
        cases.push(case);
    }
    cases
}

fn params(replica: &mut Replica, list: &Option<String>) -> Vec<Value> {
    let Some(list) = list else { return Vec::new() };
    let result = sql::execute(replica, &format!("SELECT {list}"), &[], 0).expect("params parse");
    result.collect_rows().expect("params evaluate").remove(0)
}

/// What bless mode writes back for a case.
enum Blessed {
    Rows(Vec<String>),
    Count(String),
}

/// Runs one case; panics on a failure, except that in bless mode a `query` or `count`
/// case that runs returns what it gave instead.
fn check(file: &str, replica: &mut Replica, case: &Case, bless: bool) -> Option<Blessed> {
    let at = format!("{file}:{}", case.line);
    let params = params(replica, &case.params);
    let result = sql::execute(replica, &case.sql, &params, 1_700_000_000_000);
    let mut words = case.directive.splitn(2, ' ');
    let (verb, arg) = (words.next().unwrap_or(""), words.next().unwrap_or("").trim());
    match verb {
        "ok" => {
            if let Err(e) = result {
                panic!("{at}: expected success, got error: {e}\n{}", case.sql);
            }
        }
        "count" => match result {
            Ok(r) if bless => return Some(Blessed::Count(r.rows_affected.to_string())),
            Ok(r) => assert_eq!(r.rows_affected.to_string(), arg, "{at}: rows affected\n{}", case.sql),
            Err(e) => panic!("{at}: expected success, got error: {e}\n{}", case.sql),
        },
        "error" => {
            let message = match result.and_then(|r| r.collect_rows()) {
                Ok(rows) => panic!("{at}: expected an error containing {arg:?}, got {rows:?}\n{}", case.sql),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(arg), "{at}: error {message:?} does not contain {arg:?}\n{}", case.sql);
        }
        "query" => {
            let rows = match result.and_then(|r| r.collect_rows()) {
                Ok(rows) => rows,
                Err(e) => panic!("{at}: query failed: {e}\n{}", case.sql),
            };
            let mut got: Vec<String> =
                rows.iter().map(|r| r.iter().map(render).collect::<Vec<_>>().join(" | ")).collect();
            if bless {
                // A multiset already right is left as written (its order is the file's).
                let mut sorted = (got.clone(), case.expected.clone());
                sorted.0.sort();
                sorted.1.sort();
                let right = if arg == "unordered" { sorted.0 == sorted.1 } else { got == case.expected };
                return (!right).then_some(Blessed::Rows(got));
            }
            let mut expected = case.expected.clone();
            if arg == "unordered" {
                got.sort();
                expected.sort();
            }
            assert_eq!(got, expected, "{at}: query result\n{}", case.sql);
        }
        other => panic!("{at}: unknown directive {other:?}"),
    }
    None
}

fn run_file(path: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica =
        Replica::open(dir.path().join("store.redb"), NodeId::from_public_key(b"sql-cases")).expect("open");
    let text = std::fs::read_to_string(path).expect("read cases");
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("?").to_string();
    let bless = std::env::var_os("EDGESTORE_BLESS").is_some();
    let mut blessed = Vec::new();
    for case in parse_cases(&text) {
        if let Some(b) = check(&file, &mut replica, &case, bless) {
            blessed.push((case.line, b));
        }
    }
    if bless {
        let rewritten = rewrite(&text, &blessed);
        if rewritten != text {
            std::fs::write(path, rewritten).expect("write blessed cases");
            println!("blessed {file}");
        }
    }
}

/// The case file `text` with each case's result block (or count) replaced by what it gave.
fn rewrite(text: &str, blessed: &[(usize, Blessed)]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // From the last case back, so that earlier line numbers stay valid.
    for (line, b) in blessed.iter().rev() {
        let at = line - 1;
        match b {
            Blessed::Count(n) => lines[at] = format!("count {n}"),
            Blessed::Rows(rows) => {
                let Some(sep) =
                    (at..lines.len()).take_while(|&i| !lines[i].trim().is_empty()).find(|&i| lines[i] == "----")
                else {
                    continue;
                };
                let end = (sep + 1..lines.len()).find(|&i| lines[i].trim().is_empty()).unwrap_or(lines.len());
                lines.splice(sep + 1..end, rows.iter().cloned());
            }
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[test]
fn sql_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/sql").map(|e| e.expect("entry").path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());
    // Statements run on a thread with the stack the limits are made for, as in the node
    // (08_limits.txt has the deepest accepted expressions).
    let cases = std::thread::Builder::new().stack_size(sql::STATEMENT_STACK_BYTES).spawn(move || {
        for file in files {
            run_file(&file);
        }
    });
    cases.expect("spawn").join().expect("every case passes");
}

#[test]
fn sql_errors_are_typed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("s.redb"), NodeId::from_public_key(b"typed")).expect("open");
    let err = sql::execute(&mut replica, "SELECT * FROM\nnope WHERE", &[], 0).unwrap_err();
    assert!(matches!(err, SqlError::Syntax { line: 2, .. }), "{err:?}");
    let err = sql::execute(&mut replica, "SELECT * FROM nope", &[], 0).unwrap_err();
    assert!(matches!(err, SqlError::UnknownTable(ref t) if t == "nope"), "{err:?}");
    let err = sql::execute(&mut replica, "SELECT 1 FULL OUTER JOIN x", &[], 0).unwrap_err();
    assert!(matches!(err, SqlError::Syntax { .. } | SqlError::NotSupported(_)), "{err:?}");
}

#[test]
fn prepared_statements_run_many_times() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("p.redb"), NodeId::from_public_key(b"prepared")).expect("open");
    sql::execute(&mut replica, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", &[], 0).expect("create");
    let insert = sql::prepare("INSERT INTO kv VALUES (?, ?)").expect("prepare");
    assert!(!insert.is_read_only());
    for k in 0..5 {
        insert.execute(&mut replica, &[Value::from(k), Value::from(format!("v{k}"))], 0).expect("insert");
    }
    let select = sql::prepare("SELECT v FROM kv WHERE k = ?1").expect("prepare");
    let snapshot = std::sync::Arc::new(replica.snapshot().expect("snapshot"));
    let got = select.query(std::sync::Arc::clone(&snapshot), &[Value::from(3)]).and_then(|r| r.collect_rows());
    assert_eq!(got.expect("query"), vec![vec![Value::from("v3")]]);
    assert!(insert.query(snapshot, &[Value::from(9), Value::from("x")]).is_err(), "a write needs execute");
}

/// A prepared query keeps its plan: the kept plan must take each execution's parameters
/// (also where they chose a key path), and must be dropped when a table it reads changes.
#[test]
fn kept_plans_follow_parameters_and_ddl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("k.redb"), NodeId::from_public_key(b"kept")).expect("open");
    let run = |replica: &mut Replica, sql: &str| sql::execute(replica, sql, &[], 0).expect(sql).rows_affected;
    run(&mut replica, "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT)");
    run(&mut replica, "INSERT INTO t VALUES (1, 10, 'x'), (2, 20, 'y'), (3, 10, 'z')");
    let by_a = sql::prepare("SELECT id FROM t WHERE a = ?1 ORDER BY id").expect("prepare");
    let by_id = sql::prepare("SELECT * FROM t WHERE id = ?1").expect("prepare");
    let rows = |statement: &sql::Statement, replica: &mut Replica, param: Value| {
        statement.execute(replica, &[param], 0).and_then(|r| r.collect_rows()).expect("query")
    };
    let ids = |v: &[i64]| v.iter().map(|i| vec![Value::from(*i)]).collect::<Vec<_>>();
    assert_eq!(rows(&by_a, &mut replica, Value::from(10)), ids(&[1, 3]));
    assert_eq!(rows(&by_a, &mut replica, Value::from(20)), ids(&[2]));
    run(&mut replica, "CREATE INDEX t_a ON t (a)");
    assert_eq!(rows(&by_a, &mut replica, Value::from(10)), ids(&[1, 3]));
    assert_eq!(rows(&by_a, &mut replica, Value::Real(20.0)), ids(&[2]), "20.0 = 20, through the index too");
    assert_eq!(rows(&by_a, &mut replica, Value::Null), ids(&[]));
    assert_eq!(rows(&by_a, &mut replica, Value::from("10")), ids(&[]), "TEXT never equals INTEGER");
    assert_eq!(
        rows(&by_id, &mut replica, Value::from(2)),
        vec![vec![Value::from(2), Value::from(20), Value::from("y")]]
    );
    assert_eq!(
        rows(&by_id, &mut replica, Value::Real(3.0)),
        vec![vec![Value::from(3), Value::from(10), Value::from("z")]]
    );
    assert_eq!(rows(&by_id, &mut replica, Value::Real(2.5)), Vec::<Vec<Value>>::new());
    // The same name, another definition: the kept plan (three columns) must not be used.
    run(&mut replica, "DROP TABLE t");
    run(&mut replica, "CREATE TABLE t (id INTEGER PRIMARY KEY, c TEXT)");
    run(&mut replica, "INSERT INTO t VALUES (2, 'new')");
    let result = by_id.execute(&mut replica, &[Value::from(2)], 0).expect("query");
    assert_eq!(result.columns, vec!["id".to_string(), "c".to_string()]);
    assert_eq!(result.collect_rows().expect("rows"), vec![vec![Value::from(2), Value::from("new")]]);
    let missing = by_id.execute(&mut replica, &[], 0).map(|_| ());
    assert!(matches!(missing, Err(SqlError::ParamCount { expected: 1, got: 0 })), "{missing:?}");
}

/// `random()` gives another value at each execution of a prepared query, also where the
/// plan evaluates it once (a `VALUES` row, a `LIMIT`): such a plan is not kept.
#[test]
fn kept_plans_draw_random_values_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("r.redb"), NodeId::from_public_key(b"random")).expect("open");
    for text in ["SELECT random()", "SELECT * FROM (VALUES (random()))", "VALUES (randomblob(8))"] {
        let statement = sql::prepare(text).expect("prepare");
        let draws: std::collections::BTreeSet<String> = (0..20)
            .map(|_| {
                format!("{:?}", statement.execute(&mut replica, &[], 0).and_then(|r| r.collect_rows()).expect(text))
            })
            .collect();
        assert_eq!(draws.len(), 20, "{text}: a value repeated over 20 executions: {draws:?}");
    }
}

/// A kept plan follows each `ALTER TABLE`: `*` grows with an added column and shrinks with
/// a dropped one, and a statement naming a column renamed since fails as it would if it
/// were prepared now.
#[test]
fn kept_plans_follow_each_alter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("a.redb"), NodeId::from_public_key(b"alter")).expect("open");
    let run = |replica: &mut Replica, sql: &str| sql::execute(replica, sql, &[], 0).expect(sql).rows_affected;
    run(&mut replica, "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT)");
    run(&mut replica, "CREATE INDEX t_a ON t (a)");
    run(&mut replica, "INSERT INTO t VALUES (1, 10, 'x')");
    let all = sql::prepare("SELECT * FROM t").expect("prepare");
    let by_a = sql::prepare("SELECT b FROM t WHERE a = ?1").expect("prepare");
    let execute = |statement: &sql::Statement, replica: &mut Replica, params: &[Value]| {
        let result = statement.execute(replica, params, 0)?;
        let columns = result.columns.clone();
        Ok::<_, SqlError>((columns, result.collect_rows()?))
    };
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(execute(&all, &mut replica, &[]).expect("query").0, names(&["id", "a", "b"]));
    assert_eq!(execute(&by_a, &mut replica, &[Value::from(10)]).expect("query").1, vec![vec![Value::from("x")]]);
    run(&mut replica, "ALTER TABLE t ADD COLUMN c REAL DEFAULT 1.5");
    let (shown, rows) = execute(&all, &mut replica, &[]).expect("query");
    assert_eq!(shown, names(&["id", "a", "b", "c"]));
    assert_eq!(rows, vec![vec![Value::from(1), Value::from(10), Value::from("x"), Value::Real(1.5)]]);
    run(&mut replica, "ALTER TABLE t RENAME COLUMN a TO alpha");
    assert_eq!(execute(&all, &mut replica, &[]).expect("query").0, names(&["id", "alpha", "b", "c"]));
    let stale = execute(&by_a, &mut replica, &[Value::from(10)]);
    assert!(matches!(stale, Err(SqlError::UnknownColumn(_))), "{stale:?}");
    let renamed = sql::prepare("SELECT b FROM t WHERE alpha = ?1").expect("prepare");
    assert_eq!(execute(&renamed, &mut replica, &[Value::from(10)]).expect("query").1, vec![vec![Value::from("x")]]);
    let id = sql::execute(&mut replica, "SELECT column_id FROM edgestore_columns WHERE name = 'c'", &[], 0)
        .and_then(|r| r.collect_rows())
        .expect("column id");
    let Value::Text(id) = &id[0][0] else { panic!("{id:?}") };
    run(&mut replica, "ALTER TABLE t DROP COLUMN c");
    assert_eq!(execute(&all, &mut replica, &[]).expect("query").0, names(&["id", "alpha", "b"]));
    // Not even the name the scope gives the dropped slot reaches it, by name or USING.
    let internal = format!("\"\u{0}dropped {id}\"");
    for query in [
        format!("SELECT {internal} FROM t"),
        format!("SELECT * FROM t JOIN (SELECT 1 AS {internal}) USING ({internal})"),
    ] {
        let refused = sql::execute(&mut replica, &query, &[], 0).and_then(|r| r.collect_rows());
        assert!(matches!(refused, Err(SqlError::UnknownColumn(_))), "{query}: {refused:?}");
    }
}

/// `'now'` is the statement time: a kept plan takes each execution's, a read-only
/// `query()` (no statement time) refuses it with a typed error instead of reading a clock,
/// and so does a `DEFAULT`, which would otherwise freeze the `CREATE TABLE` time.
#[test]
fn now_is_the_statement_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("n.redb"), NodeId::from_public_key(b"now")).expect("open");
    let now = sql::prepare("SELECT datetime('now'), unixepoch()").expect("prepare");
    let at =
        |replica: &mut Replica, ms: i64| now.execute(replica, &[], ms).and_then(|r| r.collect_rows()).expect("now");
    assert_eq!(at(&mut replica, 0), vec![vec![Value::from("1970-01-01 00:00:00"), Value::from(0)]]);
    assert_eq!(at(&mut replica, 86_400_000), vec![vec![Value::from("1970-01-02 00:00:00"), Value::from(86_400)]]);
    let snapshot = std::sync::Arc::new(replica.snapshot().expect("snapshot"));
    let refused = now.query(std::sync::Arc::clone(&snapshot), &[]).and_then(|r| r.collect_rows());
    assert!(matches!(refused, Err(SqlError::NoStatementTime { function: "datetime" })), "{refused:?}");
    // Without 'now', a read-only query needs no statement time.
    let fixed = sql::query(snapshot, "SELECT date('2024-01-01', '+1 day')", &[]).and_then(|r| r.collect_rows());
    assert_eq!(fixed.expect("fixed date"), vec![vec![Value::from("2024-01-02")]]);
    let default =
        sql::execute(&mut replica, "CREATE TABLE t (id INTEGER PRIMARY KEY, d TEXT DEFAULT (date('now')))", &[], 5);
    assert!(matches!(default, Err(SqlError::NoStatementTime { .. })), "{default:?}");
    let zone = sql::execute(&mut replica, "SELECT datetime(0, 'localtime')", &[], 5).and_then(|r| r.collect_rows());
    assert!(matches!(zone, Err(SqlError::NoTimeZone { ref modifier }) if modifier == "localtime"), "{zone:?}");
}

/// A kept plan with window functions takes each execution's parameters: in a window
/// function's arguments (substituted into the kept plan) and in a frame offset (a constant
/// of one execution: that plan is made again).
#[test]
fn window_plans_take_each_executions_parameters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::open(dir.path().join("w.redb"), NodeId::from_public_key(b"window")).expect("open");
    sql::execute(&mut replica, "CREATE TABLE t (id INTEGER PRIMARY KEY)", &[], 0).expect("create");
    sql::execute(&mut replica, "INSERT INTO t VALUES (1), (2), (3)", &[], 0).expect("insert");
    let lag = sql::prepare("SELECT lag(id, ?1, 0) OVER (ORDER BY id) FROM t ORDER BY id").expect("prepare");
    let framed =
        sql::prepare("SELECT sum(id) OVER (ORDER BY id ROWS BETWEEN ?1 PRECEDING AND CURRENT ROW) FROM t ORDER BY id")
            .expect("prepare");
    let column = |statement: &sql::Statement, replica: &mut Replica, param: i64| -> Vec<Value> {
        let rows = statement.execute(replica, &[Value::from(param)], 0).and_then(|r| r.collect_rows());
        rows.expect("query").into_iter().map(|mut r| r.remove(0)).collect()
    };
    let ints = |v: &[i64]| v.iter().map(|i| Value::from(*i)).collect::<Vec<_>>();
    assert_eq!(column(&lag, &mut replica, 1), ints(&[0, 1, 2]));
    assert_eq!(column(&lag, &mut replica, 2), ints(&[0, 0, 1]));
    assert_eq!(column(&framed, &mut replica, 0), ints(&[1, 2, 3]));
    assert_eq!(column(&framed, &mut replica, 2), ints(&[1, 3, 6]));
}

#[test]
fn bless_rewrites_result_blocks_and_counts_only() {
    let text = "# c\ncount 9\nINSERT INTO t VALUES (1)\n\nquery\nSELECT 1\n----\nold\nrows\n\nok\nSELECT 2\n";
    let cases = parse_cases(text);
    let blessed = vec![(cases[0].line, Blessed::Count("1".into())), (cases[1].line, Blessed::Rows(vec!["1".into()]))];
    assert_eq!(
        rewrite(text, &blessed),
        "# c\ncount 1\nINSERT INTO t VALUES (1)\n\nquery\nSELECT 1\n----\n1\n\nok\nSELECT 2\n"
    );
}
