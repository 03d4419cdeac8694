//! Group commit and store health: one thread owns the replica; writers queue behind it.
//!
//! redb has one writer at a time and every durable commit costs an fsync, so the owner
//! thread takes everything already queued and makes it durable with one fsync:
//!
//! - write batches ([`ReplicaHandle::write`]) are staged in one transaction
//!   ([`Replica::write_group`]);
//! - write jobs ([`ReplicaHandle::write_job`], which SQL DDL/DML use: each reads the state
//!   and then writes) run one after the other, each committing *non-durably*, so that a job
//!   reads what the jobs before it in the group wrote (`SET n = n + 1` loses nothing); one
//!   durable commit then persists the group. Until it returns, readers on other threads
//!   see the state before the group (the owner pins a read transaction of it), nothing is
//!   answered, and no `call` runs (sync sessions read changes to send in calls), so nothing
//!   is visible to a client or a peer before it is durable. docs/design.md "Group commit".
//!
//! Storage faults: an I/O error (ENOSPC included) poisons the redb database until it is
//! closed. The owner then marks the store faulted ([`StoreHealth::Faulted`]), answers
//! writes and applies with [`StorageError::Unavailable`], closes the file, and reopens it
//! with the caller's [`Reopen`] — with exponential backoff, on the caller's clock: the
//! library reads none, so attempts happen in [`ReplicaHandle::maintain`], which the daemon
//! calls periodically with the time and the free disk space. The failed commit was never
//! acknowledged and the reopened replica rebuilds its state from the file, so no
//! acknowledged write is lost. Nothing here blocks on I/O while holding a lock, and no
//! transaction crosses an `.await`: async callers use `spawn_blocking` around these calls.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase};

use crate::error::{ApplyError, StorageError, StoreFault, WriteError};
use crate::replica::{
    ApplyReport, CompactReport, ExpireReport, Replica, SaveReport, Snapshot, WriteBatch, WriteReceipt,
};
use crate::types::NodeId;
use crate::version_vector::VersionVector;

mod health;

use health::Recovery;
pub use health::{DiskSpace, Reopen, StoreCounters, StoreHealth, REOPEN_BACKOFF_MAX_MS, REOPEN_BACKOFF_MIN_MS};

/// Requests queued in front of the owner thread, at most.
pub const WRITE_QUEUE_REQUESTS_MAX: usize = 1024;
/// Batches and write jobs committed together, at most.
pub const GROUP_COMMIT_BATCHES_MAX: usize = 256;

type Reply<T> = SyncSender<T>;
/// Answers a group member once its group's durable commit succeeded (`None`) or failed.
type Completion = Box<dyn FnOnce(Option<&Arc<StorageError>>) + Send>;
/// A write job: runs on the replica, or is refused with the given error, and returns
/// how to answer it.
type Job = Box<dyn FnOnce(Result<&mut Replica, StorageError>) -> Completion + Send>;

enum Request {
    Write { batch: WriteBatch, now_ms: i64, reply: Reply<Result<WriteReceipt, WriteError>> },
    Job(Job),
    Apply { changes: Vec<Vec<u8>>, reply: Reply<Result<ApplyReport, ApplyError>> },
    Call(Box<dyn FnOnce(&mut Replica) + Send>),
    Maintain { now_ms: i64, disk: Option<DiskSpace>, reply: Reply<StoreHealth> },
}

/// What handles read without a round trip to the owner thread.
struct Shared {
    /// `None` while the store is closed for a reopen.
    db: Option<Arc<Database>>,
    /// The last durable state, pinned while a group has non-durable commits.
    durable: Option<Arc<redb::ReadTransaction>>,
    fault: Option<StoreFault>,
    health: StoreHealth,
    counters: StoreCounters,
    /// The free space last given to [`ReplicaHandle::maintain`].
    disk: Option<DiskSpace>,
}

/// A cloneable handle to a replica owned by a dedicated thread.
#[derive(Clone)]
pub struct ReplicaHandle {
    requests: SyncSender<Request>,
    shared: Arc<Mutex<Shared>>,
    node: NodeId,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle").field("node", &self.node).finish()
    }
}

/// The owner thread stopped (the replica was shut down or its thread panicked), or the
/// store is closed between reopen attempts after a fault ([`ReplicaHandle::health`] says
/// which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replica's owner thread has stopped, or its store is closed for recovery")]
pub struct Stopped;

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every update of `Shared` is a plain assignment, so a poisoned lock is consistent.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReplicaHandle {
    /// Moves the replica to a new owner thread. The thread ends, returning the replica,
    /// when every handle is dropped. A storage fault is reported but not recovered from:
    /// see [`ReplicaHandle::spawn_with_reopen`].
    pub fn spawn(replica: Replica) -> (ReplicaHandle, JoinHandle<Replica>) {
        let (handle, owner, inbox) = ReplicaHandle::prepare(replica, None);
        let thread = std::thread::Builder::new()
            .name("edgestore-writer".into())
            // SQL write statements plan and evaluate here.
            .stack_size(crate::sql::STATEMENT_STACK_BYTES)
            .spawn(move || owner.run(inbox).expect("without a reopen the replica is never closed"))
            .expect("spawning a thread");
        (handle, thread)
    }

    /// Like [`ReplicaHandle::spawn`], and after a storage fault the store is closed and
    /// reopened with `reopen` (attempts happen in [`ReplicaHandle::maintain`]). The thread
    /// returns the replica, or `None` if the store was closed when the last handle went.
    pub fn spawn_with_reopen(replica: Replica, reopen: impl Reopen) -> (ReplicaHandle, JoinHandle<Option<Replica>>) {
        let (handle, owner, inbox) = ReplicaHandle::prepare(replica, Some(Box::new(reopen)));
        let thread = std::thread::Builder::new()
            .name("edgestore-writer".into())
            .stack_size(crate::sql::STATEMENT_STACK_BYTES)
            .spawn(move || owner.run(inbox))
            .expect("spawning a thread");
        (handle, thread)
    }

    fn prepare(replica: Replica, reopen: Option<Box<dyn Reopen>>) -> (ReplicaHandle, Owner, Receiver<Request>) {
        let (requests, inbox) = mpsc::sync_channel(WRITE_QUEUE_REQUESTS_MAX);
        let shared = Arc::new(Mutex::new(Shared {
            db: Some(replica.database()),
            durable: None,
            fault: None,
            health: StoreHealth::Ok,
            counters: StoreCounters::default(),
            disk: None,
        }));
        let node = replica.node_id();
        let handle = ReplicaHandle { requests, shared: Arc::clone(&shared), node };
        let owner = Owner { replica: Some(replica), shared, node, reopen, disk: None, recovery: None };
        (handle, owner, inbox)
    }

    /// The replica's node id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Whether the store can write now (no round trip to the owner thread).
    pub fn health(&self) -> StoreHealth {
        lock(&self.shared).health.clone()
    }

    /// Faults and reopens so far.
    pub fn counters(&self) -> StoreCounters {
        lock(&self.shared).counters
    }

    /// The free space last given to [`ReplicaHandle::maintain`].
    pub fn disk_space(&self) -> Option<DiskSpace> {
        lock(&self.shared).disk
    }

    /// Gives the owner the caller's time and the free disk space (if measured): sets the
    /// low-disk state, and, if the store is faulted and the backoff has passed, attempts a
    /// reopen. Returns the health afterwards. Call it periodically (the daemon does every
    /// second); the library has no clock of its own.
    pub fn maintain(&self, now_ms: i64, disk: Option<DiskSpace>) -> Result<StoreHealth, Stopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Maintain { now_ms, disk, reply })?;
        answer.recv().map_err(|_| Stopped)
    }

    /// Writes a batch; returns after it is durably committed (possibly with others).
    pub fn write(&self, batch: WriteBatch, now_ms: i64) -> Result<WriteReceipt, WriteError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Write { batch, now_ms, reply }).map_err(|_| WriteError::Storage(StorageError::Stopped))?;
        answer.recv().unwrap_or_else(|_| Err(WriteError::Storage(StorageError::Stopped)))
    }

    /// Runs a write job on the owner thread as a member of a group commit, and answers
    /// after the group's durable commit. The job sees what earlier members of its group
    /// wrote; its own writes commit non-durably (they join the group's durable commit),
    /// and nothing it wrote is visible to other threads or peers before that. If the
    /// durable commit fails, the job's answer is that error instead of its result.
    pub fn write_job<T, E>(&self, job: impl FnOnce(&mut Replica) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WriteError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<Result<T, E>>(1);
        let job: Job = Box::new(move |replica| {
            let result = match replica {
                Err(refusal) => Err(E::from(WriteError::Storage(refusal))),
                Ok(replica) => contained(replica, job).unwrap_or_else(|e| Err(E::from(WriteError::Storage(e)))),
            };
            Box::new(move |failure: Option<&Arc<StorageError>>| {
                let _ = reply.send(match failure {
                    None => result,
                    Some(e) => Err(E::from(WriteError::Storage(duplicate(e)))),
                });
            })
        });
        self.send(Request::Job(job)).map_err(|_| E::from(WriteError::Storage(StorageError::Stopped)))?;
        answer.recv().unwrap_or_else(|_| Err(E::from(WriteError::Storage(StorageError::Stopped))))
    }

    /// Applies remote changes on the owner thread.
    pub fn apply_remote(&self, changes: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Apply { changes, reply }).map_err(|_| ApplyError::Storage(StorageError::Stopped))?;
        answer.recv().unwrap_or_else(|_| Err(ApplyError::Storage(StorageError::Stopped)))
    }

    /// Runs `f` on the owner thread with exclusive access to the replica, between group
    /// commits (so `f` sees only durable state). While the store is faulted `f` does not
    /// run and the answer is [`Stopped`].
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> T + Send + 'static) -> Result<T, Stopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Call(Box::new(move |replica| {
            let _ = reply.send(f(replica));
        })))?;
        answer.recv().map_err(|_| Stopped)
    }

    /// Runs one bounded log-compaction step on the owner thread, between group commits
    /// (docs/design.md § "Log compaction"). `upto` computes the target there, from the
    /// replica itself (its horizon), so it is at or below the vector it is compared with;
    /// at most `entries_max` entries go, so writers queued behind the step wait for one
    /// short transaction. While the store is faulted the step does not run:
    /// [`StorageError::Unavailable`].
    pub fn compact_log_step(
        &self,
        upto: impl FnOnce(&Replica) -> VersionVector + Send + 'static,
        entries_max: usize,
    ) -> Result<CompactReport, StorageError> {
        let outcome = self.call(move |replica| {
            let target = upto(replica);
            replica.compact_log_step(&target, entries_max)
        });
        outcome.unwrap_or_else(|Stopped| Err(self.not_run()))
    }

    /// Runs one bounded background document-save step on the owner thread, between group
    /// commits (docs/design.md § "Document save"): at most `docs_max` documents saved in
    /// one short durable transaction. While the store is faulted or below the low-disk
    /// floor the step does not run: [`StorageError::Unavailable`].
    pub fn save_docs_step(&self, docs_max: usize) -> Result<SaveReport, StorageError> {
        let outcome = self.call(move |replica| replica.save_docs_step(docs_max));
        outcome.unwrap_or_else(|Stopped| Err(self.not_run()))
    }

    /// Runs one bounded retention step on the owner thread, between group commits
    /// (docs/design.md § "Retention, the budget and the floor"): append-only tables'
    /// floors rise to what their retention and budget ask for at `now_ms` (wall clock,
    /// ms since the Unix epoch) and at most `blocks_max` blocks below them go, in one
    /// short durable transaction. While the store is faulted the step does not run.
    pub fn expire_append_step(&self, now_ms: i64, blocks_max: usize) -> Result<ExpireReport, StorageError> {
        let outcome = self.call(move |replica| replica.expire_append_step(now_ms, blocks_max));
        outcome.unwrap_or_else(|Stopped| Err(self.not_run()))
    }

    /// Why a [`ReplicaHandle::call`] did not run: the store is faulted, or the owner stopped.
    fn not_run(&self) -> StorageError {
        match lock(&self.shared).fault.clone() {
            Some(fault) => StorageError::Unavailable(fault),
            None => StorageError::Stopped,
        }
    }

    /// A read snapshot of the durable state, taken on the calling thread (redb readers
    /// run concurrently). While a group commit is in progress it is the state before the
    /// group; while the store is faulted it is refused with [`StorageError::Unavailable`].
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let txn = {
            let shared = lock(&self.shared);
            if let Some(fault) = &shared.fault {
                return Err(StorageError::Unavailable(fault.clone()));
            }
            match (&shared.durable, &shared.db) {
                (Some(txn), _) => Arc::clone(txn),
                // Begun under the lock: the owner pins the durable state under it before
                // its first non-durable commit, so this transaction cannot see one.
                (None, Some(db)) => Arc::new(db.begin_read().map_err(StorageError::from)?),
                (None, None) => return Err(StorageError::Stopped),
            }
        };
        Snapshot::of(txn)
    }

    fn send(&self, request: Request) -> Result<(), Stopped> {
        self.requests.send(request).map_err(|_| Stopped)
    }
}

/// A copy of a group's failure for each member (redb's errors are not `Clone`): the
/// store's state as it is, any other failure shared.
fn duplicate(error: &Arc<StorageError>) -> StorageError {
    match &**error {
        StorageError::Unavailable(fault) => StorageError::Unavailable(fault.clone()),
        StorageError::Stopped => StorageError::Stopped,
        StorageError::GroupCommitFailed(cause) => StorageError::GroupCommitFailed(Arc::clone(cause)),
        _ => StorageError::GroupCommitFailed(Arc::clone(error)),
    }
}

/// Pins a read transaction of the current (durable) state for readers on other threads.
fn pin_durable(shared: &Mutex<Shared>, replica: &Replica) -> Result<(), StorageError> {
    assert!(!replica.has_undurable_commits(), "a group begins from durable state");
    let txn = replica.database().begin_read().map_err(StorageError::from)?;
    lock(shared).durable = Some(Arc::new(txn));
    Ok(())
}

/// Runs one member of a group with deferred durability; returns how to answer it.
fn run_member(replica: &mut Replica, member: Request) -> Completion {
    match member {
        Request::Write { batch, now_ms, reply } => {
            let result = contained(replica, |replica| replica.write(batch, now_ms)).unwrap_or_else(|e| Err(e.into()));
            Box::new(move |failure: Option<&Arc<StorageError>>| {
                let _ = reply.send(match failure {
                    None => result,
                    Some(e) => Err(WriteError::Storage(duplicate(e))),
                });
            })
        }
        Request::Job(job) => job(Ok(replica)),
        _ => unreachable!("a group holds writes and jobs only"),
    }
}

/// Runs `f` on the owner thread with a panic contained: a bug in one write (the SQL
/// engine's, an ingest's) must not stop the thread every other write of the node needs.
/// A panic aborts `f`'s open write transaction as it unwinds; `Replica::recover` then
/// reloads the in-memory state from the committed state, so nothing the aborted
/// transaction staged survives, and the caller gets [`StorageError::WritePanicked`]. That
/// makes `AssertUnwindSafe` sound: no object `f` touched is used again unreloaded. What a
/// job committed before it panicked (non-durably, in its group) stays committed.
fn contained<T>(replica: &mut Replica, f: impl FnOnce(&mut Replica) -> T) -> Result<T, StorageError> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *replica)));
    outcome.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        tracing::error!(%message, "a write panicked; its transaction is aborted and the state reloaded");
        replica.recover(StorageError::WritePanicked(message))
    })
}

/// Answers a member of a group that did not run with `refusal`.
fn refused(member: Request, refusal: &Arc<StorageError>) -> Completion {
    match member {
        Request::Write { reply, .. } => {
            let refusal = duplicate(refusal);
            Box::new(move |_: Option<&Arc<StorageError>>| {
                let _ = reply.send(Err(WriteError::Storage(refusal)));
            })
        }
        Request::Job(job) => job(Err(duplicate(refusal))),
        _ => unreachable!("a group holds writes and jobs only"),
    }
}

/// The owner thread's state.
struct Owner {
    /// `None` while the store is closed for a reopen.
    replica: Option<Replica>,
    shared: Arc<Mutex<Shared>>,
    node: NodeId,
    reopen: Option<Box<dyn Reopen>>,
    disk: Option<DiskSpace>,
    /// Set while the store is faulted.
    recovery: Option<Recovery>,
}

impl Owner {
    fn run(mut self, inbox: Receiver<Request>) -> Option<Replica> {
        let mut next = inbox.recv().ok();
        while let Some(request) = next.take() {
            match request {
                Request::Write { .. } | Request::Job(_) => next = self.group(request, &inbox),
                Request::Apply { changes, reply } => {
                    let result = match self.usable() {
                        Ok(replica) => replica.apply_remote(changes),
                        Err(refusal) => Err(ApplyError::Storage(refusal)),
                    };
                    self.observe();
                    let _ = reply.send(result);
                }
                Request::Call(f) => {
                    // Dropped unanswered while faulted: the caller gets `Stopped`.
                    if let Ok(replica) = self.usable() {
                        assert!(!replica.has_undurable_commits(), "a call runs between group commits only");
                        f(replica);
                    }
                    self.observe();
                }
                Request::Maintain { now_ms, disk, reply } => {
                    self.maintain(now_ms, disk);
                    let _ = reply.send(lock(&self.shared).health.clone());
                }
            }
            if next.is_none() {
                next = inbox.recv().ok();
            }
        }
        self.replica
    }

    /// The replica, unless the store is faulted.
    fn usable(&mut self) -> Result<&mut Replica, StorageError> {
        match (&self.recovery, &mut self.replica) {
            (None, Some(replica)) => Ok(replica),
            (Some(recovery), _) => Err(StorageError::Unavailable(recovery.fault.clone())),
            (None, None) => unreachable!("the store is closed only while faulted"),
        }
    }

    /// Commits a group: the first request and everything queued behind it that writes.
    /// Returns the request that ended the group, if one did.
    fn group(&mut self, first: Request, inbox: &Receiver<Request>) -> Option<Request> {
        let mut members = vec![first];
        let mut next = None;
        while members.len() < GROUP_COMMIT_BATCHES_MAX {
            match inbox.try_recv() {
                Ok(member @ (Request::Write { .. } | Request::Job(_))) => members.push(member),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if members.iter().any(|m| matches!(m, Request::Job(_))) {
            self.commit_jobs(members);
        } else {
            self.commit_batches(members);
        }
        next
    }

    /// Write batches alone: one transaction, one durable commit.
    fn commit_batches(&mut self, members: Vec<Request>) {
        let mut group = Vec::with_capacity(members.len());
        let mut now_ms = None;
        for member in members {
            let Request::Write { batch, now_ms: at, reply } = member else { unreachable!("a group without jobs") };
            now_ms.get_or_insert(at);
            group.push((batch, reply));
        }
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let results = match self.usable() {
            Ok(replica) => replica.write_group(batches, now_ms.expect("a group has a member")),
            Err(refusal) => {
                let refusal = Arc::new(refusal);
                batches.iter().map(|_| Err(WriteError::Storage(duplicate(&refusal)))).collect()
            }
        };
        self.observe();
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(result);
        }
    }

    /// A group with write jobs: every member commits non-durably, in order, so each sees
    /// the ones before it; one durable commit ends the group. Readers on other threads see
    /// the pinned state from before the group until then; nothing is answered before it.
    fn commit_jobs(&mut self, members: Vec<Request>) {
        let shared = Arc::clone(&self.shared);
        let mut completions: Vec<Completion> = Vec::with_capacity(members.len());
        let failure = match self.usable().and_then(|replica| pin_durable(&shared, replica).map(|()| replica)) {
            Err(refusal) => {
                let refusal = Arc::new(refusal);
                completions.extend(members.into_iter().map(|member| refused(member, &refusal)));
                None
            }
            Ok(replica) => {
                replica.defer_durability();
                for member in members {
                    completions.push(match replica.fault_refusal() {
                        // A member faulted the store: the rest are refused without running.
                        Some(refusal) => refused(member, &Arc::new(refusal)),
                        None => run_member(replica, member),
                    });
                }
                replica.make_durable().err().map(Arc::new)
            }
        };
        // Unpinned before anyone is answered, so that an answered client reads its write.
        lock(&shared).durable = None;
        if let (None, Some(replica)) = (&failure, &self.replica) {
            assert!(!replica.has_undurable_commits(), "a group is answered only once durable");
        }
        self.observe();
        for complete in completions {
            complete(failure.as_ref());
        }
    }
}
