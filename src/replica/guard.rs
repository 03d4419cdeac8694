//! The store's write guard: faults, the low-disk floor, and deferred durability.
//!
//! redb latches the first I/O error of a transaction: every later transaction fails with
//! "previous I/O error" until the database is closed and opened again. The replica records
//! that as a [`StoreFault`] and from then on refuses writes, applies and snapshots with the
//! typed [`StorageError::Unavailable`] instead of redb's raw error; its owner
//! (`ReplicaHandle`) reopens the file. A caller-measured low-disk state refuses new local
//! writes only, so that replicated changes keep the headroom.
//!
//! Deferred durability serves group commit of write *jobs* (SQL statements that read
//! before they write): while deferred, every commit is `Durability::None`, which redb makes
//! visible to new read transactions of this process but does not persist; one
//! `Durability::Immediate` commit ([`Replica::make_durable`]) then persists all of them.
//! A crash before it loses them all, and rolls the file back to the last durable commit.
//! The owner thread hides them from every other reader and acknowledges nothing until
//! the durable commit (see `handle.rs` and docs/design.md "Group commit").

use std::cell::Cell;

use super::Replica;
use crate::error::{StorageError, StoreFault};

/// What the guard holds for a replica.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The I/O fault that poisoned the database, until the store is reopened.
    fault: Option<StoreFault>,
    /// Set while free space is below the floor.
    low_disk: Option<StoreFault>,
    /// Commits are non-durable until [`Replica::make_durable`].
    deferred: bool,
    /// A write transaction began non-durable since the last durable commit (set when it
    /// begins, so no path that commits can be missed; a spare durable commit costs little).
    undurable: Cell<bool>,
}

impl Replica {
    /// The I/O fault the store is in, if any. A faulted replica never recovers by itself:
    /// it must be dropped and its file opened again (the owner thread does that).
    pub fn fault(&self) -> Option<&StoreFault> {
        self.guard.fault.as_ref()
    }

    /// Tells the replica the free space of its filesystem: below `floor_bytes`, new local
    /// writes are refused with [`StoreFault::LowDisk`]; remote changes are still applied.
    pub fn set_free_space(&mut self, free_bytes: u64, floor_bytes: u64) {
        self.guard.low_disk = (free_bytes < floor_bytes).then_some(StoreFault::LowDisk { free_bytes, floor_bytes });
    }

    /// The low-disk state set by [`Replica::set_free_space`], if the floor is crossed.
    pub fn low_disk(&self) -> Option<&StoreFault> {
        self.guard.low_disk.as_ref()
    }

    /// Why a local write must be refused now, if it must.
    pub(crate) fn local_write_refusal(&self) -> Option<StorageError> {
        self.guard.fault.clone().or_else(|| self.guard.low_disk.clone()).map(StorageError::Unavailable)
    }

    /// Why any transaction (an apply, a snapshot) must be refused now, if it must.
    pub(crate) fn fault_refusal(&self) -> Option<StorageError> {
        self.guard.fault.clone().map(StorageError::Unavailable)
    }

    /// After a failed transaction: an I/O error faults the store (redb refuses everything
    /// after it; only a reopen clears that); any other error reloads the committed state,
    /// so that nothing of the aborted transaction stays in memory. Returns the error to
    /// report: [`StorageError::Unavailable`] once faulted.
    pub(crate) fn recover(&mut self, error: StorageError) -> StorageError {
        if let Some(fault) = &self.guard.fault {
            return StorageError::Unavailable(fault.clone());
        }
        if let Some(fault) = StoreFault::of(&error) {
            return self.enter_fault(fault);
        }
        match self.reload_state() {
            Ok(()) => error,
            Err(reload) => match StoreFault::of(&reload) {
                Some(fault) => self.enter_fault(fault),
                None => reload,
            },
        }
    }

    fn enter_fault(&mut self, fault: StoreFault) -> StorageError {
        // The in-memory state may hold what the failed transaction staged; it is rebuilt
        // from the file when the store is reopened, and nothing reads it meanwhile.
        self.cache.clear();
        tracing::error!(node = %self.node, %fault, "storage fault: refusing writes until the store is reopened");
        self.guard.fault = Some(fault.clone());
        StorageError::Unavailable(fault)
    }

    /// The durability of a write transaction beginning now.
    pub(crate) fn commit_durability(&self) -> redb::Durability {
        if self.guard.deferred {
            self.guard.undurable.set(true);
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        }
    }

    /// Makes commits non-durable until [`Replica::make_durable`].
    pub(crate) fn defer_durability(&mut self) {
        debug_assert!(!self.guard.deferred, "deferred durability does not nest");
        self.guard.deferred = true;
    }

    /// Whether a non-durable commit is waiting for [`Replica::make_durable`].
    pub(crate) fn has_undurable_commits(&self) -> bool {
        self.guard.undurable.get()
    }

    /// Ends deferred durability: one durable commit persists every non-durable commit
    /// made since [`Replica::defer_durability`] (redb writes the latest root with it).
    pub(crate) fn make_durable(&mut self) -> Result<(), StorageError> {
        self.guard.deferred = false;
        if !self.guard.undurable.get() {
            return Ok(());
        }
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        let outcome = (|| -> Result<(), StorageError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                self.guard.undurable.set(false);
                Ok(())
            }
            Err(error) => {
                // The non-durable commits are lost with the database's latched error; the
                // owner reopens the file, which rolls back to the last durable commit.
                let error = self.recover(error);
                if self.guard.fault.is_none() {
                    // Not an I/O error, yet the durable commit failed: treat it as one, so
                    // that the undurable state is never mistaken for a durable one.
                    return Err(self.enter_fault(StoreFault::Io { reason: error.to_string() }));
                }
                Err(error)
            }
        }
    }
}
