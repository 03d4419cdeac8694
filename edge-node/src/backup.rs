//! A backup and its report as JSON: what `POST /v1/backup` answers and what
//! `edge-node backup` prints with no node running (`commands.rs`), from one read snapshot
//! ([`edgestore::Snapshot::backup_to`]). It knows neither the API nor the client, so both
//! sides use it.

use std::path::Path;

use edgestore::{BackupError, BackupReport, Snapshot};
use serde_json::{json, Value as Json};

/// Writes a backup from `snapshot` and describes it as JSON.
pub fn write_backup(snapshot: &Snapshot, file: &Path) -> Result<Json, BackupError> {
    Ok(describe(&snapshot.backup_to(file)?))
}

fn describe(report: &BackupReport) -> Json {
    json!({
        "path": report.path.display().to_string(),
        "bytes": report.bytes,
        "node_id": report.node_id.to_string(),
        "rows": report.rows,
        "changes": report.changes,
        "pending_changes": report.pending_changes,
    })
}
