//! The daemon's side of store health (docs/design.md "Storage faults").
//!
//! The replica's owner thread refuses local writes below the free-space floor and reopens
//! a faulted store, but the library reads no clock and no filesystem statistics: every
//! [`PROBE_INTERVAL`] this task measures the data directory's free space (statvfs) and
//! hands it, with the time, to [`ReplicaHandle::maintain`]. [`StoreReopen`] is how the
//! owner opens the store file again; it waits until free space is back above the floor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgestore::handle::{DiskSpace, Reopen};
use edgestore::{NodeId, OpenError, Replica, ReplicaHandle};

/// How often free space is measured and the owner thread given the time.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes available to unprivileged users on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Opens the data directory's store file again after a fault.
pub struct StoreReopen {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    pub floor_bytes: u64,
    /// The memory budget the store was opened with.
    pub options: edgestore::OpenOptions,
}

impl Reopen for StoreReopen {
    /// An attempt needs room: redb repairs the file it reopens, which writes.
    fn ready(&mut self) -> bool {
        free_bytes(&self.data_dir).is_ok_and(|free| free >= self.floor_bytes)
    }

    fn reopen(&mut self) -> Result<Replica, OpenError> {
        crate::data_dir::open_store(&self.data_dir, self.node_id, &self.options)
    }
}

/// Measures free space and maintains the store until the owner thread stops.
pub async fn probe(handle: ReplicaHandle, data_dir: PathBuf, floor_bytes: u64) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unmeasured = false;
    loop {
        interval.tick().await;
        let (handle, dir) = (handle.clone(), data_dir.clone());
        let step = tokio::task::spawn_blocking(move || {
            let measured = free_bytes(&dir);
            let disk = measured.as_ref().ok().map(|&free_bytes| DiskSpace { free_bytes, floor_bytes });
            (measured.err(), handle.maintain(crate::clock::now_ms(), disk))
        });
        let Ok((error, health)) = step.await else { return };
        match (error, unmeasured) {
            (Some(error), false) => {
                tracing::warn!(dir = %data_dir.display(), %error, "cannot measure free space; the low-disk floor is not enforced");
                unmeasured = true;
            }
            (None, true) => unmeasured = false,
            _ => {}
        }
        if health.is_err() {
            return; // the owner thread stopped: the node is shutting down
        }
    }
}
