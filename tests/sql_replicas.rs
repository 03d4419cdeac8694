//! SQL on replicated state: two replicas written concurrently through SQL, then synced
//! with `changes_since` / `apply_remote`, answer every query identically — joins,
//! aggregates, and the conflicts system table included. Also: SQL through a
//! `ReplicaHandle` (the statement's read and write run on the owner thread), and `CHECK`
//! constraints, which replicate with their table and bind local SQL writes only.

use edgestore::sql;
use edgestore::{NodeId, Replica, ReplicaHandle, Value, WriteBatch};

mod common;
use common::{sql_rows as rows, sql_run as run, sync};

fn open(dir: &tempfile::TempDir, name: &str) -> Replica {
    Replica::open(dir.path().join(format!("{name}.redb")), NodeId::from_public_key(name.as_bytes())).expect("open")
}

const QUERIES: &[&str] = &[
    "SELECT * FROM sensors ORDER BY id",
    "SELECT s.id, s.name, s.hits, r.value FROM sensors s LEFT JOIN readings r ON r.sensor = s.id ORDER BY s.id, r.at",
    "SELECT s.name, count(r.at), sum(r.value), max(r.value) FROM sensors s JOIN readings r ON r.sensor = s.id GROUP BY s.name ORDER BY s.name",
    "SELECT table_name, primary_key, column_name, winner, value, node, is_winner FROM edgestore_conflicts ORDER BY table_name, primary_key, column_name, node",
    "SELECT c.primary_key, s.name FROM edgestore_conflicts c JOIN sensors s ON s.id = c.key_value WHERE c.is_winner ORDER BY 1",
    "SELECT name, sql FROM edgestore_tables ORDER BY name",
];

#[test]
fn converged_replicas_answer_queries_identically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(&mut a, "CREATE TABLE sensors (id INTEGER PRIMARY KEY, name TEXT, hits COUNTER)");
    run(&mut a, "CREATE TABLE readings (sensor INTEGER, at TIMESTAMP, value REAL, PRIMARY KEY (sensor, at))");
    run(&mut a, "CREATE INDEX readings_by_value ON readings (value)");
    sync(&a, &mut b);

    // Concurrent writes: overlapping inserts, a conflicting update, counter increments on
    // both sides, a delete on one side.
    let insert = |from: i64, to: i64, tag: &str| {
        let values: Vec<String> = (from..to).map(|i| format!("({i}, '{tag}{}', 0)", i % 7)).collect();
        format!("INSERT INTO sensors VALUES {}", values.join(", "))
    };
    run(&mut a, &insert(1, 50, "a"));
    run(&mut b, &insert(40, 80, "b"));
    run(&mut a, "INSERT INTO readings SELECT id, 100, id * 0.5 FROM sensors WHERE id % 3 = 0");
    run(&mut b, "INSERT INTO readings SELECT id, 200, id * 1.5 FROM sensors WHERE id % 4 = 0");
    run(&mut a, "UPDATE sensors SET name = 'from-a' WHERE id = 1");
    assert_eq!(run(&mut a, "UPDATE sensors SET hits = hits + 2 WHERE id < 45"), 44);
    run(&mut b, "UPDATE sensors SET hits = hits + 3 WHERE id BETWEEN 40 AND 44");
    run(&mut b, "DELETE FROM sensors WHERE id = 79");
    sync(&a, &mut b);
    run(&mut b, "UPDATE sensors SET name = 'from-b-after-sync' WHERE id = 2");
    assert_eq!(run(&mut b, "UPDATE sensors SET hits = hits + 3 WHERE id BETWEEN 8 AND 12"), 5);
    run(&mut a, "UPDATE sensors SET hits = hits + 1 WHERE id = 10");
    run(&mut a, "UPDATE sensors SET name = 'concurrent-a' WHERE id = 3");
    run(&mut b, "UPDATE sensors SET name = 'concurrent-b' WHERE id = 3");
    sync(&b, &mut a);
    sync(&a, &mut b);
    assert_eq!(a.state_digest().expect("digest"), b.state_digest().expect("digest"));

    for query in QUERIES {
        assert_eq!(rows(&mut a, query), rows(&mut b, query), "replicas differ on {query}");
    }
    // The merged state is what the merge rules say: concurrent increments add up.
    let hits = rows(&mut a, "SELECT id, hits FROM sensors WHERE id IN (1, 8, 10, 45) ORDER BY id");
    let expected = [(1, 2), (8, 5), (10, 6), (45, 0)];
    let expected: Vec<Vec<Value>> = expected.iter().map(|&(i, h)| vec![Value::Integer(i), Value::Integer(h)]).collect();
    assert_eq!(hits, expected);
    assert_eq!(rows(&mut a, "SELECT count(*) FROM sensors"), vec![vec![Value::Integer(78)]]);
    let conflict =
        rows(&mut a, "SELECT count(*) FROM edgestore_conflicts WHERE primary_key = '(3)' AND column_name = 'name'");
    assert_eq!(conflict, vec![vec![Value::Integer(2)]], "both concurrent names of row 3 are listed");
    let overlap =
        rows(&mut a, "SELECT count(DISTINCT primary_key) FROM edgestore_conflicts WHERE key_value BETWEEN 40 AND 49");
    assert_eq!(overlap, vec![vec![Value::Integer(10)]], "rows inserted on both nodes conflict on name");
}

#[test]
fn sql_runs_through_a_replica_handle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut handle, thread) = ReplicaHandle::spawn(open(&dir, "handle"));
    let exec = |handle: &mut ReplicaHandle, statement: &str, params: &[Value]| {
        sql::execute(handle, statement, params, 5).unwrap_or_else(|e| panic!("{statement}: {e}"))
    };
    exec(&mut handle, "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER, n COUNTER)", &[]);
    let inserted =
        exec(&mut handle, "INSERT INTO kv (k, v) VALUES (?, ?), (?, ?)", &["a".into(), 1.into(), "b".into(), 2.into()]);
    assert_eq!(inserted.rows_affected, 2);
    exec(&mut handle, "UPDATE kv SET n = n + ?1, v = v * 10 WHERE k = ?2", &[7.into(), "b".into()]);
    let result = exec(&mut handle, "SELECT k, v, n FROM kv ORDER BY k", &[]);
    assert_eq!(result.columns, vec!["k", "v", "n"]);
    let got = result.collect_rows().expect("rows");
    let row = |k: &str, v: i64, n: i64| vec![Value::from(k), Value::Integer(v), Value::Integer(n)];
    assert_eq!(got, vec![row("a", 1, 0), row("b", 20, 7)]);

    // A read-only query on an explicit snapshot sees exactly that snapshot.
    let snapshot = handle.snapshot().expect("snapshot");
    exec(&mut handle, "DELETE FROM kv", &[]);
    let old = sql::query(snapshot, "SELECT count(*) FROM kv", &[]).and_then(|r| r.collect_rows()).expect("query");
    assert_eq!(old, vec![vec![Value::Integer(2)]]);
    let now = exec(&mut handle, "SELECT count(*) FROM kv", &[]).collect_rows().expect("rows");
    assert_eq!(now, vec![vec![Value::Integer(0)]]);
    let refused = sql::query(handle.snapshot().expect("snapshot"), "DELETE FROM kv", &[]);
    assert!(refused.is_err(), "query() is read-only");
    drop(handle);
    thread.join().expect("owner thread");
}

#[test]
fn a_streaming_query_is_not_disturbed_by_later_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = open(&dir, "stream");
    run(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    let values: Vec<String> = (0..500).map(|i| format!("({i})")).collect();
    run(&mut a, &format!("INSERT INTO t VALUES {}", values.join(", ")));
    let mut result = sql::execute(&mut a, "SELECT id FROM t", &[], 0).expect("query");
    let first = result.rows.next().expect("a row").expect("ok");
    run(&mut a, "DELETE FROM t WHERE id >= 100");
    let rest = result.rows.count();
    assert_eq!((first, rest), (vec![Value::Integer(0)], 499), "the query reads its own snapshot");
}

/// A `CHECK` and a foreign key replicate with their table; each node enforces the `CHECK`
/// on its own SQL writes, and neither re-checks what it merges (a merge cannot be
/// refused after the fact), nor does a library `WriteBatch` carry SQL to check.
#[test]
fn check_constraints_replicate_and_bind_local_writes_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(
        &mut a,
        "CREATE TABLE stock (id INTEGER PRIMARY KEY, part INT REFERENCES parts (id), \
         qty INTEGER CONSTRAINT qty_positive CHECK (qty > 0))",
    );
    sync(&a, &mut b);
    let sql = "SELECT sql FROM edgestore_tables WHERE name = 'stock'";
    assert_eq!(rows(&mut a, sql), rows(&mut b, sql));
    assert_eq!(
        rows(&mut b, sql),
        vec![vec![Value::from(
            "CREATE TABLE stock (id INTEGER NOT NULL, part INTEGER, qty INTEGER, PRIMARY KEY (id), \
             CONSTRAINT qty_positive CHECK (qty > 0), FOREIGN KEY (part) REFERENCES parts (id))"
        )]]
    );

    let refused = sql::execute(&mut b, "INSERT INTO stock (id, qty) VALUES (1, 0)", &[], 1000).map(|r| r.rows_affected);
    assert!(matches!(&refused, Err(e) if e.to_string() == "CHECK constraint failed: qty_positive"), "{refused:?}");

    let unchecked = WriteBatch::new().insert("stock", [("id", Value::from(2)), ("qty", Value::from(-5))]);
    a.write(unchecked, 1000).expect("a WriteBatch carries no SQL to check");
    sync(&a, &mut b);
    assert_eq!(rows(&mut b, "SELECT id, qty FROM stock"), vec![vec![Value::from(2), Value::from(-5)]]);

    // What `.schema` shows creates the same table again.
    let Value::Text(shown) = rows(&mut b, sql).remove(0).remove(0) else { panic!("sql is text") };
    let again = shown.replacen("CREATE TABLE stock ", "CREATE TABLE stock_again ", 1);
    run(&mut b, &again);
    let shown_again = rows(&mut b, "SELECT sql FROM edgestore_tables WHERE name = 'stock_again'");
    assert_eq!(shown_again, vec![vec![Value::from(again)]]);
}

/// Tables without a primary key: two nodes that insert the same rows while apart keep
/// every row after syncing (identities never collide), updates and deletes found by value
/// merge like any row's, and a reopened node never gives an identity twice.
#[test]
fn key_less_rows_inserted_on_two_nodes_are_all_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(&mut a, "CREATE TABLE events (kind TEXT, value INTEGER)");
    sync(&a, &mut b);
    // The same statement on both sides: SQLite would hold four rows after two of these.
    let insert = "INSERT INTO events VALUES ('start', 1), ('start', 1)";
    assert_eq!(run(&mut a, insert), 2);
    assert_eq!(run(&mut b, insert), 2);
    sync(&a, &mut b);
    sync(&b, &mut a);
    let all = "SELECT kind, value, count(*) FROM events GROUP BY kind, value";
    assert_eq!(rows(&mut a, all), vec![vec![Value::from("start"), Value::Integer(1), Value::Integer(4)]]);
    let origins = "SELECT count(DISTINCT _origin), count(DISTINCT rowid) FROM events";
    assert_eq!(rows(&mut a, origins), vec![vec![Value::Integer(2), Value::Integer(4)]]);

    // Concurrent: a updates every row, b deletes the rows it inserted.
    assert_eq!(run(&mut a, "UPDATE events SET value = 2"), 4);
    let own = rows(&mut b, "SELECT _origin FROM events WHERE rowid = (SELECT max(rowid) FROM events)");
    let deleted = run(&mut b, &format!("DELETE FROM events WHERE _origin = {}", sql_blob(&own[0][0])));
    assert_eq!(deleted, 2);
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().expect("digest"), b.state_digest().expect("digest"));
    let every = "SELECT rowid, _origin, kind, value FROM events ORDER BY rowid, _origin";
    assert_eq!(rows(&mut a, every), rows(&mut b, every));
    // A delete wins over a concurrent update (the causal length is odd, then even).
    assert_eq!(
        rows(&mut a, "SELECT count(*), min(value) FROM events"),
        vec![vec![Value::Integer(2), Value::Integer(2)]]
    );

    // Reopened, a node goes on from its stored counter: no identity is given twice. The
    // low 39 bits of a rowid are the inserting node's counter; a gave 1 and 2.
    drop(a);
    let mut a = open(&dir, "node-a");
    run(&mut a, "INSERT INTO events VALUES ('after', 3)");
    let counter = rows(&mut a, "SELECT rowid % 549755813888 FROM events WHERE kind = 'after'");
    assert_eq!(counter, vec![vec![Value::Integer(3)]]);
    assert_eq!(rows(&mut a, "SELECT count(*) FROM events"), vec![vec![Value::Integer(3)]]);
}

#[test]
fn unique_values_inserted_on_two_nodes_apart_are_kept_and_listed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(&mut a, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)");
    sync(&a, &mut b);
    // Apart, each node takes the same address; each write is checked, and passes, locally.
    run(&mut a, "INSERT INTO users VALUES (1, 'x@y', 'ann')");
    run(&mut b, "INSERT INTO users VALUES (2, 'x@y', 'bob'), (3, 'z@y', 'cy')");
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.state_digest().expect("digest"), b.state_digest().expect("digest"));
    // Neither acknowledged write is lost: both rows stay, and the violation is listed,
    // with the least key the winner, on both nodes alike.
    let holders = "SELECT id FROM users WHERE email = 'x@y' ORDER BY id";
    assert_eq!(rows(&mut a, holders), vec![vec![Value::Integer(1)], vec![Value::Integer(2)]]);
    let listed = "SELECT table_name, primary_key, column_name, winner, value, is_winner FROM edgestore_conflicts \
                  WHERE kind = 'unique' ORDER BY primary_key";
    let expected = vec![
        vec!["users".into(), "(1)".into(), "email".into(), "(1)".into(), "x@y".into(), Value::Boolean(true)],
        vec!["users".into(), "(2)".into(), "email".into(), "(1)".into(), "x@y".into(), Value::Boolean(false)],
    ];
    assert_eq!(rows(&mut a, listed), expected);
    assert_eq!(rows(&mut b, listed), expected);

    // A member of the violation can still be changed in its other columns; a third holder
    // of the value, or taking it with an update, is refused.
    assert_eq!(run(&mut b, "UPDATE users SET name = 'bo' WHERE email = 'x@y'"), 2);
    let refused = sql::execute(&mut a, "INSERT INTO users VALUES (4, 'x@y', 'dee')", &[], 0).map(|_| ());
    assert!(refused.is_err_and(|e| e.to_string().contains("UNIQUE constraint failed: users.email")));
    let refused = sql::execute(&mut a, "UPDATE users SET email = 'x@y' WHERE id = 3", &[], 0).map(|_| ());
    assert!(refused.is_err_and(|e| e.to_string().contains("UNIQUE constraint failed: users.email")));

    // Changing all but one member resolves it, everywhere.
    run(&mut a, "UPDATE users SET email = 'w@y' WHERE id = 2");
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(rows(&mut b, "SELECT count(*) FROM edgestore_conflicts"), vec![vec![Value::Integer(0)]]);
    let all = "SELECT id, email, name FROM users ORDER BY id";
    assert_eq!(rows(&mut a, all), rows(&mut b, all));
    assert_eq!(a.check_integrity().expect("check"), Vec::new());
}

#[test]
fn a_unique_index_created_while_another_node_inserts_a_duplicate_lists_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(&mut a, "CREATE TABLE devices (serial TEXT, site TEXT)");
    run(&mut a, "INSERT INTO devices VALUES ('s1', 'north')");
    sync(&a, &mut b);
    run(&mut a, "CREATE UNIQUE INDEX devices_serial ON devices (serial)");
    run(&mut b, "INSERT INTO devices VALUES ('s1', 'south')");
    sync(&a, &mut b);
    sync(&b, &mut a);
    let listed =
        "SELECT count(*), count(DISTINCT winner), sum(is_winner) FROM edgestore_conflicts WHERE kind = 'unique'";
    let expected = vec![vec![Value::Integer(2), Value::Integer(1), Value::Integer(1)]];
    assert_eq!(rows(&mut a, listed), expected);
    assert_eq!(rows(&mut b, listed), expected);
    // Once a node has the index, it checks its own writes.
    let refused = sql::execute(&mut b, "INSERT INTO devices VALUES ('s1', 'east')", &[], 0).map(|_| ());
    assert!(refused.is_err_and(|e| e.to_string().contains("UNIQUE constraint failed: devices.serial")));
    assert_eq!(run(&mut b, "DELETE FROM devices WHERE site = 'south'"), 1);
    assert_eq!(rows(&mut b, listed), vec![vec![Value::Integer(0), Value::Integer(0), Value::Null]]);
}

fn sql_blob(v: &Value) -> String {
    let Value::Blob(bytes) = v else { panic!("{v:?} is not a blob") };
    format!("x'{}'", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Four nodes for concurrent `ALTER`s: `a` runs `setup` and all get it; then `a` and `b`
/// run their statements apart; `c` hears `a` first and `d` hears `b` first; then `a` and
/// `b` hear everything from `c`.
fn altered_apart(setup: &[&str], on_a: &[&str], on_b: &[&str]) -> (tempfile::TempDir, [Replica; 4]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let [mut a, mut b, mut c, mut d] = ["node-a", "node-b", "node-c", "node-d"].map(|n| open(&dir, n));
    for statement in setup {
        run(&mut a, statement);
    }
    for other in [&mut b, &mut c, &mut d] {
        sync(&a, other);
    }
    for statement in on_a {
        run(&mut a, statement);
    }
    for statement in on_b {
        run(&mut b, statement);
    }
    sync(&a, &mut c);
    sync(&b, &mut c);
    sync(&b, &mut d);
    sync(&a, &mut d);
    sync(&c, &mut a);
    sync(&c, &mut b);
    (dir, [a, b, c, d])
}

#[test]
fn concurrent_alters_resolve_alike_in_either_order_of_arrival() {
    // Apart: both add `unit` alike (one column), rename `name` differently (one wins),
    // add `extra` with different types (two columns; the later is shown under another
    // name), and write rows under their own definitions.
    let (_dir, [mut a, mut b, mut c, mut d]) = altered_apart(
        &[
            "CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT, v REAL)",
            "CREATE INDEX s_name ON s (name)",
            "INSERT INTO s VALUES (1, 'a', 1.0), (2, 'b', 2.0)",
        ],
        &[
            "ALTER TABLE s ADD COLUMN unit TEXT DEFAULT 'C'",
            "ALTER TABLE s RENAME COLUMN name TO label",
            "ALTER TABLE s ADD COLUMN extra TEXT",
            "INSERT INTO s (id, label, v, unit, extra) VALUES (3, 'c', 3.0, 'F', 'e3')",
            "UPDATE s SET unit = 'K' WHERE id = 1",
        ],
        &[
            "ALTER TABLE s ADD COLUMN unit TEXT DEFAULT 'C'",
            "ALTER TABLE s RENAME COLUMN name TO title",
            "ALTER TABLE s ADD COLUMN extra INTEGER",
            "ALTER TABLE s ADD COLUMN note INTEGER DEFAULT 0",
            "INSERT INTO s VALUES (4, 'd', 4.0, 'C', 44, 9)",
            "UPDATE s SET title = 'bb', note = 2 WHERE id = 2",
        ],
    );
    let digest = a.state_digest().expect("digest");
    let columns =
        "SELECT name, type, default_value, added FROM edgestore_columns WHERE table_name = 's' ORDER BY position";
    let all = "SELECT * FROM s ORDER BY id";
    let expected_columns = rows(&mut a, columns);
    let expected_rows = rows(&mut a, all);
    for replica in [&mut b, &mut c, &mut d] {
        assert_eq!(replica.state_digest().expect("digest"), digest);
        assert_eq!(rows(replica, columns), expected_columns);
        assert_eq!(rows(replica, all), expected_rows);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
    assert_eq!(a.check_integrity().expect("check"), Vec::new());
    // One `unit`; `name` under one of the two new names; both `extra`s, the later one
    // shown under a name of its own; `note` from b.
    let names: Vec<String> = expected_columns.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(names[0], "id");
    assert!(names[1] == "label" || names[1] == "title", "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "unit").count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "extra").count(), 1, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("extra_")), "{names:?}");
    assert!(names.contains(&"note".to_string()), "{names:?}");
    // The losing rename and the shadowed column are listed.
    let lost = rows(&mut c, "SELECT lost_alters FROM edgestore_tables WHERE name = 's'");
    let lost = lost[0][0].to_string();
    assert!(lost.contains("RENAME COLUMN"), "{lost}");
    assert!(lost.contains("is shown as extra_"), "{lost}");
    // The index follows the winning name, and answers through it.
    let index = rows(&mut d, "SELECT columns FROM edgestore_indexes WHERE name = 's_name'");
    assert_eq!(index, vec![vec![Value::Text(names[1].clone())]]);
    let by_name = format!("SELECT id FROM s WHERE {} = 'bb'", names[1]);
    assert_eq!(rows(&mut d, &by_name), vec![vec![Value::Integer(2)]]);
    // Rows written before an add read its default; each node's writes landed.
    let unit_note = "SELECT id, unit, note FROM s ORDER BY id";
    let expected = vec![
        vec![Value::Integer(1), "K".into(), Value::Integer(0)],
        vec![Value::Integer(2), "C".into(), Value::Integer(2)],
        vec![Value::Integer(3), "F".into(), Value::Integer(0)],
        vec![Value::Integer(4), "C".into(), Value::Integer(9)],
    ];
    assert_eq!(rows(&mut b, unit_note), expected);
}

#[test]
fn a_drop_beats_a_concurrent_rename_and_a_name_added_again_on_both_nodes_is_one_column() {
    let (_dir, [mut a, mut b, mut c, mut d]) = altered_apart(
        &[
            "CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT, y INTEGER)",
            "INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20)",
        ],
        &[
            "ALTER TABLE t DROP COLUMN x",
            "INSERT INTO t VALUES (3, 30)",
            "ALTER TABLE t ADD COLUMN x TEXT DEFAULT 'fresh'",
        ],
        &[
            "ALTER TABLE t RENAME COLUMN x TO label",
            "UPDATE t SET label = 'changed' WHERE id = 1",
            "ALTER TABLE t ADD COLUMN x TEXT DEFAULT 'fresh'",
            "INSERT INTO t VALUES (4, 'four', 40, 'mine')",
        ],
    );
    let all = "SELECT * FROM t ORDER BY id";
    // The drop wins: `label` is gone whatever its writes; the two re-added `x`s have one id.
    let expected = vec![
        vec![Value::Integer(1), Value::Integer(10), "fresh".into()],
        vec![Value::Integer(2), Value::Integer(20), "fresh".into()],
        vec![Value::Integer(3), Value::Integer(30), "fresh".into()],
        vec![Value::Integer(4), Value::Integer(40), "mine".into()],
    ];
    let digest = a.state_digest().expect("digest");
    for replica in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(rows(replica, all), expected);
        assert_eq!(replica.state_digest().expect("digest"), digest);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
    let names = rows(&mut d, "SELECT name FROM edgestore_columns WHERE table_name = 't' ORDER BY position");
    assert_eq!(names, vec![vec![Value::from("id")], vec![Value::from("y")], vec![Value::from("x")]]);
}

#[test]
fn an_index_created_while_its_column_is_dropped_is_unusable_everywhere_and_stays_so() {
    let (_dir, mut nodes) = altered_apart(
        &[
            "CREATE TABLE t (id INTEGER PRIMARY KEY, c TEXT, d INTEGER)",
            "INSERT INTO t VALUES (1, 'x', 1), (2, 'y', 2)",
        ],
        &["CREATE INDEX t_c ON t (c)", "INSERT INTO t VALUES (3, 'z', 3)"],
        &["ALTER TABLE t DROP COLUMN c", "INSERT INTO t VALUES (4, 4)"],
    );
    let indexes = "SELECT name FROM edgestore_indexes WHERE table_name = 't'";
    let digest = nodes[0].state_digest().expect("digest");
    for replica in &mut nodes {
        assert_eq!(rows(replica, indexes), Vec::<Vec<Value>>::new(), "the index's column is gone");
        assert_eq!(replica.state_digest().expect("digest"), digest);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
    // The name added again, of another type: a new column, which the old index never covers.
    run(&mut nodes[1], "ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 7");
    run(&mut nodes[1], "UPDATE t SET c = 9 WHERE id = 2");
    let [a, b, c, d] = &mut nodes;
    for to in [&mut *a, &mut *c, &mut *d] {
        sync(b, to);
    }
    let all = "SELECT id, c FROM t WHERE c = 9";
    for replica in [a, b, c, d] {
        assert_eq!(rows(replica, indexes), Vec::<Vec<Value>>::new());
        assert_eq!(rows(replica, all), vec![vec![Value::Integer(2), Value::Integer(9)]]);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
}

#[test]
fn a_column_added_that_a_losing_definition_had_shows_the_values_its_rows_hold() {
    // Two different concurrent definitions: each node's row holds a column the other lacks.
    let (_dir, mut nodes) = altered_apart(
        &[],
        &["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, c INTEGER)", "INSERT INTO t VALUES (1, 'x', 5)"],
        &["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, d INTEGER)", "INSERT INTO t VALUES (2, 'y', 6)"],
    );
    let columns = rows(&mut nodes[0], "SELECT name FROM edgestore_columns WHERE table_name = 't' ORDER BY position");
    let (lost, key, value) = if columns.contains(&vec![Value::from("c")]) { ("d", 2, 6) } else { ("c", 1, 5) };
    // Added back by ALTER: the same id, so the losing rows' values show.
    run(&mut nodes[0], &format!("ALTER TABLE t ADD COLUMN {lost} INTEGER"));
    let [a, b, c, d] = &mut nodes;
    for to in [&mut *b, &mut *c, &mut *d] {
        sync(a, to);
    }
    let digest = a.state_digest().expect("digest");
    let query = format!("SELECT {lost} FROM t WHERE id = {key}");
    for replica in [a, b, c, d] {
        assert_eq!(rows(replica, &query), vec![vec![Value::Integer(value)]]);
        assert_eq!(replica.state_digest().expect("digest"), digest);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
}

#[test]
fn a_table_with_a_unique_conflict_can_still_be_altered() {
    let (_dir, mut nodes) = altered_apart(
        &["CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE)"],
        &["INSERT INTO u VALUES (1, 'a@x')"],
        &["INSERT INTO u VALUES (2, 'a@x')"],
    );
    let listed = "SELECT count(*) FROM edgestore_conflicts WHERE kind = 'unique'";
    assert_eq!(rows(&mut nodes[0], listed), vec![vec![Value::Integer(2)]]);
    // The merged duplicates are not new claims: ALTERs of the table go through.
    run(&mut nodes[0], "ALTER TABLE u ADD COLUMN n INTEGER");
    run(&mut nodes[0], "ALTER TABLE u RENAME COLUMN email TO mail");
    run(&mut nodes[0], "UPDATE u SET n = 1 WHERE id = 1");
    let refused = sql::execute(&mut nodes[0], "INSERT INTO u VALUES (3, 'a@x', 0)", &[], 0).map(|_| ());
    assert!(refused.is_err_and(|e| e.to_string().contains("UNIQUE constraint failed: u.mail")));
    let [a, b, c, d] = &mut nodes;
    for to in [&mut *b, &mut *c, &mut *d] {
        sync(a, to);
    }
    for replica in [a, b, c, d] {
        assert_eq!(rows(replica, listed), vec![vec![Value::Integer(2)]]);
        assert_eq!(replica.check_integrity().expect("check"), Vec::new());
    }
}

/// Views replicate as catalog documents: a view made on one node reads the same on
/// another; concurrent different definitions of one name converge on one winner, the
/// other listed; a drop replicates; a node that joins by state transfer gets the views.
#[test]
fn views_replicate_and_concurrent_definitions_converge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = (open(&dir, "node-a"), open(&dir, "node-b"));
    run(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)");
    run(&mut a, "INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)");
    run(&mut a, "CREATE VIEW big AS SELECT id FROM t WHERE v > 15");
    sync(&a, &mut b);
    assert_eq!(rows(&mut b, "SELECT count(*) FROM big"), vec![vec![Value::Integer(2)]]);

    // Apart, both define `v`, differently.
    run(&mut a, "CREATE VIEW v AS SELECT id FROM t WHERE v < 15");
    run(&mut b, "CREATE VIEW v AS SELECT id FROM t WHERE v > 25");
    sync(&a, &mut b);
    sync(&b, &mut a);
    let shown = "SELECT name, sql, conflicting_definitions FROM edgestore_tables WHERE kind = 'view' ORDER BY name";
    assert_eq!(rows(&mut a, shown), rows(&mut b, shown));
    assert_eq!(rows(&mut a, "SELECT id FROM v"), rows(&mut b, "SELECT id FROM v"));
    assert_eq!(rows(&mut a, shown)[1][2], Value::Integer(2), "both definitions listed");
    assert_eq!(a.state_digest().unwrap(), b.state_digest().unwrap());
    for replica in [&a, &b] {
        assert!(replica.check_integrity().unwrap().is_empty());
    }

    run(&mut b, "DROP VIEW big");
    sync(&b, &mut a);
    assert!(sql::execute(&mut a, "SELECT * FROM big", &[], 1000).is_err(), "the drop replicated");

    // A new node by state transfer, the log compacted.
    common::compact_all(&mut a);
    let mut c = open(&dir, "node-c");
    common::transfer(&a, &mut c, 2);
    assert_eq!(rows(&mut c, shown), rows(&mut a, shown));
    assert_eq!(rows(&mut c, "SELECT id FROM v"), rows(&mut a, "SELECT id FROM v"));
    assert!(c.check_integrity().unwrap().is_empty());
}
