//! Group commit of SQL writes through a `ReplicaHandle`: statements from concurrent
//! clients share durable commits, each statement sees the ones committed before it in its
//! group (no lost update), and nothing of a group is visible to other readers before the
//! group's durable commit.

use std::sync::mpsc;

use edgestore::sql;
use edgestore::{NodeId, Replica, ReplicaHandle, Value};
use tempfile::TempDir;

const NODE: NodeId = NodeId([5; 16]);
/// Client threads and increments per thread.
const THREADS: i64 = 8;
const INCREMENTS_PER_THREAD: i64 = 40;

fn handle(dir: &TempDir) -> ReplicaHandle {
    let replica = Replica::open(dir.path().join("store.redb"), NODE).expect("open");
    let (mut handle, _owner) = ReplicaHandle::spawn(replica);
    sql::execute(&mut handle, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)", &[], 0).expect("ddl");
    sql::execute(&mut handle, "INSERT INTO t VALUES (1, 0)", &[], 0).expect("insert");
    handle
}

fn value_of_n(handle: &ReplicaHandle) -> Value {
    let row = handle.snapshot().expect("snapshot").get("t", &[Value::from(1)]).expect("get").expect("row 1");
    row[1].clone()
}

#[test]
fn concurrent_read_modify_write_statements_lose_no_increment() {
    let dir = TempDir::new().expect("temp dir");
    let handle = handle(&dir);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let mut handle = handle.clone();
            scope.spawn(move || {
                for _ in 0..INCREMENTS_PER_THREAD {
                    let done = sql::execute(&mut handle, "UPDATE t SET n = n + 1 WHERE id = 1", &[], 0);
                    assert_eq!(done.expect("update").rows_affected, 1);
                }
            });
        }
    });
    assert_eq!(value_of_n(&handle), Value::from(THREADS * INCREMENTS_PER_THREAD));
    let problems = handle.call(|r| r.check_integrity().expect("integrity")).expect("call");
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn concurrent_inserts_of_one_key_admit_exactly_one() {
    let dir = TempDir::new().expect("temp dir");
    let handle = handle(&dir);
    let (done, results) = mpsc::channel();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (mut handle, done) = (handle.clone(), done.clone());
            scope.spawn(move || {
                let result = sql::execute(&mut handle, "INSERT INTO t VALUES (2, ?)", &[Value::from(thread)], 0);
                done.send(result.map(|r| r.rows_affected).map_err(|e| e.to_string())).expect("send");
            });
        }
    });
    drop(done);
    let results: Vec<_> = results.into_iter().collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 1, "the duplicate check sees the group's earlier insert: {results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.contains("duplicate primary key")));
}

#[test]
fn a_group_members_writes_are_invisible_to_other_readers_until_durable() {
    let dir = TempDir::new().expect("temp dir");
    let handle = handle(&dir);
    let reader = handle.clone();
    let seen: (Value, Value) = handle
        .write_job(move |replica: &mut Replica| {
            sql::execute(replica, "UPDATE t SET n = 7 WHERE id = 1", &[], 0)?;
            // Inside the group: the owner's own view has the write, a reader on the handle
            // (another thread's view) still has the durable state before the group.
            let own = replica.snapshot()?.get("t", &[Value::from(1)])?.expect("row")[1].clone();
            let other = reader.snapshot()?.get("t", &[Value::from(1)])?.expect("row")[1].clone();
            Ok::<_, sql::SqlError>((own, other))
        })
        .expect("job");
    assert_eq!(seen, (Value::from(7), Value::from(0)));
    assert_eq!(value_of_n(&handle), Value::from(7), "visible once the group is durable and answered");
}

#[test]
fn a_write_job_that_panics_fails_alone_and_the_owner_thread_goes_on() {
    let dir = TempDir::new().expect("temp dir");
    let mut handle = handle(&dir);
    let outcome = handle.write_job(|replica: &mut Replica| -> Result<(), edgestore::WriteError> {
        assert!(replica.snapshot().expect("snapshot").table("t").is_ok(), "the job runs on the replica");
        panic!("a bug in a write job");
    });
    let error = outcome.expect_err("the job panicked");
    assert!(error.to_string().contains("a bug in a write job"), "{error}");
    // The thread that every write needs is still there.
    let done = sql::execute(&mut handle, "UPDATE t SET n = n + 1 WHERE id = 1", &[], 0).expect("update");
    assert_eq!(done.rows_affected, 1);
    assert_eq!(value_of_n(&handle), Value::from(1));
    let problems = handle.call(|r| r.check_integrity().expect("integrity")).expect("call");
    assert!(problems.is_empty(), "{problems:?}");
}
