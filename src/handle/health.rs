//! Store health: the public health types, and how the owner thread notices a fault,
//! closes the faulted store and reopens it with backoff on the caller's clock (see the
//! parent module and docs/design.md "Storage faults").

use super::{lock, Owner};
use crate::error::{OpenError, StoreFault};
use crate::replica::Replica;

/// Wait after the first failed reopen attempt; it doubles with each failure.
pub const REOPEN_BACKOFF_MIN_MS: i64 = 500;
/// Longest wait between two reopen attempts.
pub const REOPEN_BACKOFF_MAX_MS: i64 = 30_000;

/// Whether the store can write, as [`super::ReplicaHandle::health`] reports it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// Writes and applies are accepted.
    Ok,
    /// An I/O error closed the store; writes and applies are refused until it reopens.
    Faulted {
        /// The fault, and the last reopen attempt's error if one failed.
        reason: String,
        /// Reopen attempts that failed since the fault.
        reopen_attempts: u32,
    },
    /// Free space is below the floor: new local writes are refused, applies accepted.
    LowDisk {
        /// Free bytes last measured.
        free_bytes: u64,
        /// The floor.
        floor_bytes: u64,
    },
}

/// Free space of the store's filesystem, as the caller measured it, and the floor below
/// which local writes are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to the node's user.
    pub free_bytes: u64,
    /// The configured floor.
    pub floor_bytes: u64,
}

/// Fault counters since the handle was spawned (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Times the store went from healthy to faulted.
    pub faults: u64,
    /// Times a faulted store was reopened.
    pub reopens: u64,
}

/// How a faulted store is opened again: the daemon opens the same file with its options.
pub trait Reopen: Send + 'static {
    /// Whether an attempt can succeed now (e.g. free space is back). Asked before every
    /// attempt, so that a hopeless one does not run redb's repair for nothing.
    fn ready(&mut self) -> bool {
        true
    }
    /// Opens the store again; the faulted replica has been dropped (its file closed).
    fn reopen(&mut self) -> Result<Replica, OpenError>;
}

impl<F: FnMut() -> Result<Replica, OpenError> + Send + 'static> Reopen for F {
    fn reopen(&mut self) -> Result<Replica, OpenError> {
        self()
    }
}

/// Where a faulted store is in its recovery.
pub(super) struct Recovery {
    /// The fault that closed the store.
    pub(super) fault: StoreFault,
    /// Failed reopen attempts, and the last one's error.
    pub(super) attempts: u32,
    pub(super) last_error: Option<String>,
    /// When the next attempt may run (`None`: at the next `maintain`).
    pub(super) next_attempt_ms: Option<i64>,
}

impl Owner {
    /// Reports a new fault, and closes the store if it can be reopened.
    pub(super) fn observe(&mut self) {
        if self.recovery.is_some() {
            return;
        }
        let Some(fault) = self.replica.as_ref().and_then(|r| r.fault()).cloned() else { return };
        // The replica logged the fault with its cause (ERROR); this says what happens next.
        match self.reopen {
            Some(_) => {
                tracing::warn!(node = %self.node, "closing the faulted store; it reopens once a commit can succeed")
            }
            None => {
                tracing::error!(node = %self.node, "the store stays faulted until the process restarts (no reopen)")
            }
        }
        lock(&self.shared).counters.faults += 1;
        self.recovery = Some(Recovery { fault, attempts: 0, last_error: None, next_attempt_ms: None });
        // Published first, so that a reader never finds the store closed but not faulted.
        self.publish();
        if self.reopen.is_some() {
            self.close();
        }
    }

    /// Drops the faulted replica: redb releases the file on close, so it can be reopened.
    fn close(&mut self) {
        let mut shared = lock(&self.shared);
        shared.db = None;
        shared.durable = None;
        drop(shared);
        drop(self.replica.take());
    }

    /// The low-disk state, and a reopen attempt when the store is faulted and due.
    pub(super) fn maintain(&mut self, now_ms: i64, disk: Option<DiskSpace>) {
        if let Some(disk) = disk {
            self.disk = Some(disk);
            lock(&self.shared).disk = Some(disk);
            if let Some(replica) = &mut self.replica {
                let before = replica.low_disk().is_some();
                replica.set_free_space(disk.free_bytes, disk.floor_bytes);
                match (before, replica.low_disk()) {
                    (false, Some(fault)) => tracing::warn!(node = %self.node, %fault, "refusing local writes"),
                    (true, None) => {
                        tracing::info!(node = %self.node, free_bytes = disk.free_bytes, "free space is back above the floor: accepting local writes")
                    }
                    _ => {}
                }
            }
        }
        let due = self.recovery.as_ref().is_some_and(|r| r.next_attempt_ms.is_none_or(|at| now_ms >= at));
        if due {
            if let Some(reopen) = &mut self.reopen {
                if reopen.ready() {
                    self.attempt_reopen(now_ms);
                }
            }
        }
        self.publish();
    }

    fn attempt_reopen(&mut self, now_ms: i64) {
        let reopen = self.reopen.as_mut().expect("attempted only with a reopen");
        let recovery = self.recovery.as_mut().expect("attempted only while faulted");
        debug_assert!(self.replica.is_none(), "the faulted replica was closed");
        match reopen.reopen() {
            Ok(mut replica) => {
                assert_eq!(replica.node_id(), self.node, "the reopened store belongs to the same node");
                if let Some(disk) = self.disk {
                    replica.set_free_space(disk.free_bytes, disk.floor_bytes);
                }
                tracing::warn!(node = %self.node, failed_attempts = recovery.attempts, fault = %recovery.fault, "the store was reopened: accepting writes again");
                let mut shared = lock(&self.shared);
                shared.db = Some(replica.database());
                shared.counters.reopens += 1;
                drop(shared);
                self.replica = Some(replica);
                self.recovery = None;
            }
            Err(error) => {
                recovery.attempts += 1;
                let shift = recovery.attempts.saturating_sub(1).min(16);
                let backoff_ms = (REOPEN_BACKOFF_MIN_MS << shift).min(REOPEN_BACKOFF_MAX_MS);
                recovery.next_attempt_ms = Some(now_ms.saturating_add(backoff_ms));
                tracing::error!(node = %self.node, attempt = recovery.attempts, %error, backoff_ms, "reopening the store failed");
                recovery.last_error = Some(error.to_string());
            }
        }
    }

    /// Publishes the health for handles.
    fn publish(&self) {
        let health = match (&self.recovery, self.replica.as_ref().and_then(Replica::low_disk)) {
            (Some(recovery), _) => StoreHealth::Faulted {
                reason: match &recovery.last_error {
                    None => recovery.fault.to_string(),
                    Some(error) => format!("{}; last reopen attempt: {error}", recovery.fault),
                },
                reopen_attempts: recovery.attempts,
            },
            (None, Some(StoreFault::LowDisk { free_bytes, floor_bytes })) => {
                StoreHealth::LowDisk { free_bytes: *free_bytes, floor_bytes: *floor_bytes }
            }
            (None, _) => StoreHealth::Ok,
        };
        let mut shared = lock(&self.shared);
        shared.fault = self.recovery.as_ref().map(|r| r.fault.clone());
        shared.health = health;
    }
}
