//! Group commit: one thread owns the replica; writers send batches over a bounded channel.
//!
//! redb has one writer at a time and every durable commit costs an fsync, so concurrent
//! writers queue their batches and the owner thread applies everything queued in one
//! transaction and one fsync ([`Replica::write_group`]), then answers each writer. Nothing
//! here blocks on I/O while holding a lock, and no transaction crosses an `.await`: async
//! callers use `spawn_blocking` or a oneshot around these calls.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{ApplyError, StorageError, WriteError};
use crate::replica::{ApplyReport, Replica, Snapshot, WriteBatch, WriteReceipt};
use crate::types::NodeId;

/// Requests queued in front of the owner thread, at most.
pub const WRITE_QUEUE_REQUESTS_MAX: usize = 1024;
/// Batches committed together, at most.
pub const GROUP_COMMIT_BATCHES_MAX: usize = 256;

type Reply<T> = SyncSender<T>;

enum Request {
    Write { batch: WriteBatch, now_ms: i64, reply: Reply<Result<WriteReceipt, WriteError>> },
    Apply { changes: Vec<Vec<u8>>, reply: Reply<Result<ApplyReport, ApplyError>> },
    Call(Box<dyn FnOnce(&mut Replica) + Send>),
}

/// A cloneable handle to a replica owned by a dedicated thread.
#[derive(Clone)]
pub struct ReplicaHandle {
    requests: SyncSender<Request>,
    db: Arc<redb::Database>,
    node: NodeId,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle").field("node", &self.node).finish()
    }
}

/// The owner thread stopped (the replica was shut down or its thread panicked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replica's owner thread has stopped")]
pub struct Stopped;

impl ReplicaHandle {
    /// Moves the replica to a new owner thread. The thread ends, returning the replica,
    /// when every handle is dropped.
    pub fn spawn(replica: Replica) -> (ReplicaHandle, JoinHandle<Replica>) {
        let (requests, inbox) = mpsc::sync_channel(WRITE_QUEUE_REQUESTS_MAX);
        let handle = ReplicaHandle { requests, db: replica.database(), node: replica.node_id() };
        let thread = std::thread::Builder::new()
            .name("edgestore-writer".into())
            .spawn(move || owner_loop(replica, inbox))
            .expect("spawning a thread");
        (handle, thread)
    }

    /// The replica's node id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Writes a batch; returns after it is durably committed (possibly with others).
    pub fn write(&self, batch: WriteBatch, now_ms: i64) -> Result<WriteReceipt, WriteError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Write { batch, now_ms, reply }).map_err(|_| WriteError::Storage(StorageError::Stopped))?;
        answer.recv().unwrap_or_else(|_| Err(WriteError::Storage(StorageError::Stopped)))
    }

    /// Applies remote changes on the owner thread.
    pub fn apply_remote(&self, changes: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Apply { changes, reply }).map_err(|_| ApplyError::Storage(StorageError::Stopped))?;
        answer.recv().unwrap_or_else(|_| Err(ApplyError::Storage(StorageError::Stopped)))
    }

    /// Runs `f` on the owner thread with exclusive access to the replica.
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> T + Send + 'static) -> Result<T, Stopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Call(Box::new(move |replica| {
            let _ = reply.send(f(replica));
        })))?;
        answer.recv().map_err(|_| Stopped)
    }

    /// A read snapshot, taken on the calling thread (redb readers run concurrently).
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Snapshot::begin(&self.db)
    }

    fn send(&self, request: Request) -> Result<(), Stopped> {
        self.requests.send(request).map_err(|_| Stopped)
    }
}

fn owner_loop(mut replica: Replica, inbox: Receiver<Request>) -> Replica {
    let mut next = inbox.recv().ok();
    while let Some(request) = next.take() {
        match request {
            Request::Write { batch, now_ms, reply } => {
                let mut group = vec![(batch, reply)];
                // Everything already queued joins this commit; a non-write stops the group.
                while group.len() < GROUP_COMMIT_BATCHES_MAX {
                    match inbox.try_recv() {
                        Ok(Request::Write { batch, reply, .. }) => group.push((batch, reply)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                for (result, reply) in replica.write_group(batches, now_ms).into_iter().zip(replies) {
                    let _ = reply.send(result);
                }
            }
            Request::Apply { changes, reply } => {
                let _ = reply.send(replica.apply_remote(changes));
            }
            Request::Call(f) => f(&mut replica),
        }
        if next.is_none() {
            next = inbox.recv().ok();
        }
    }
    replica
}
