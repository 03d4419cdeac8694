//! Where the store's bytes and memory go: `edge-node status --storage`, the shell's
//! `.storage` and `GET /v1/storage` show the same breakdown (`Snapshot::storage_stats`
//! and the caches' figures). It is built once as JSON, the API's answer, and rendered as
//! text from that JSON, so a running node and a data directory opened directly print the
//! same thing.

use anyhow::Result;
use edgestore::{CacheFigures, Replica, StorageStats};
use serde_json::{json, Value as Json};

/// The breakdown as the API answers it.
pub fn to_json(stats: &StorageStats, caches: &CacheFigures) -> Json {
    let redb: Vec<Json> = stats
        .redb_tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "entries": t.entries,
                "stored_bytes": t.stored_bytes,
                "metadata_bytes": t.metadata_bytes,
                "fragmented_bytes": t.fragmented_bytes,
                "allocated_bytes": t.allocated_bytes(),
                "leaf_pages": t.leaf_pages,
                "branch_pages": t.branch_pages,
                "tree_height": t.tree_height,
            })
        })
        .collect();
    let user: Vec<Json> = stats
        .user_tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "live": t.live,
                "rows": t.rows,
                "row_bytes": t.row_bytes,
                "documents": t.documents,
                "heads_bytes": t.heads_bytes,
                "snapshots": t.snapshots,
                "snapshot_bytes": t.snapshot_bytes,
                "tail_changes": t.tail_changes,
                "implicit_docs": t.implicit_docs,
                "tail_bytes": t.tail_bytes,
                "index_entries": t.index_entries,
                "index_bytes": t.index_bytes,
                "conflicts": t.conflicts,
                "conflict_bytes": t.conflict_bytes,
                "bytes": t.bytes(),
                "bytes_per_row": t.bytes_per_row(),
            })
        })
        .collect();
    json!({
        "redb_tables": redb,
        "allocated_bytes": stats.allocated_bytes(),
        "user_tables": user,
        "caches": {
            "doc_cache_docs": caches.doc_cache_docs,
            "doc_cache_bytes": caches.doc_cache_bytes,
            "doc_cache_bytes_max": caches.doc_cache_bytes_max,
            "redb_cache_bytes_max": caches.redb_cache_bytes_max,
        },
    })
}

/// The breakdown of a replica opened here.
pub fn of_replica(replica: &Replica) -> Result<Json> {
    let stats = replica.snapshot()?.storage_stats()?;
    Ok(to_json(&stats, &replica.cache_figures()))
}

/// The breakdown as text: one line per redb table, then per user table.
pub fn render(breakdown: &Json) -> String {
    let n = |v: &Json| v.as_u64().unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "{:<14} {:>10} {:>13} {:>11} {:>13} {:>13}\n",
        "redb table", "entries", "stored B", "metadata B", "fragmented B", "allocated B"
    ));
    for t in breakdown["redb_tables"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<14} {:>10} {:>13} {:>11} {:>13} {:>13}\n",
            t["name"].as_str().unwrap_or("?"),
            n(&t["entries"]),
            n(&t["stored_bytes"]),
            n(&t["metadata_bytes"]),
            n(&t["fragmented_bytes"]),
            n(&t["allocated_bytes"]),
        ));
    }
    out.push_str(&format!("{:<14} {:>63}\n", "all tables", n(&breakdown["allocated_bytes"])));
    out.push_str(&format!(
        "\n{:<14} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "user table", "rows", "records B", "documents", "implicit", "heads B", "docs+tail B", "index B", "B/row"
    ));
    for t in breakdown["user_tables"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("?");
        let name = if t["live"].as_bool() == Some(true) { name.to_string() } else { format!("{name} (dropped)") };
        let per_row = t["bytes_per_row"].as_f64().map_or_else(|| "-".to_string(), |b| format!("{b:.1}"));
        out.push_str(&format!(
            "{:<14} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            name,
            n(&t["rows"]),
            n(&t["row_bytes"]),
            n(&t["documents"]),
            n(&t["implicit_docs"]),
            n(&t["heads_bytes"]),
            n(&t["snapshot_bytes"]) + n(&t["tail_bytes"]),
            n(&t["index_bytes"]),
            per_row,
        ));
    }
    let caches = &breakdown["caches"];
    out.push_str(&format!(
        "\ncaches: documents {} ({} of {} B estimated), redb pages up to {} B\n",
        n(&caches["doc_cache_docs"]),
        n(&caches["doc_cache_bytes"]),
        n(&caches["doc_cache_bytes_max"]),
        n(&caches["redb_cache_bytes_max"]),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_renders_every_table() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut replica = Replica::open(dir.path().join("s.redb"), edgestore::NodeId([1; 16])).expect("open");
        let schema = edgestore::TableSchema::new("t")
            .column(edgestore::ColumnDef::new("k", edgestore::ColumnType::Integer))
            .primary_key(&["k"]);
        let batch = edgestore::WriteBatch::new().create_table(schema).insert("t", [("k", edgestore::Value::from(1))]);
        replica.write(batch, 0).expect("write");
        let breakdown = of_replica(&replica).expect("breakdown");
        assert_eq!(breakdown["user_tables"][0]["rows"], 1);
        let text = render(&breakdown);
        for name in ["rows_v1", "log_v1", "digest_v1", "caches:"] {
            assert!(text.contains(name), "{text}");
        }
        assert!(text.lines().any(|l| l.starts_with("t ") && l.split_whitespace().nth(1) == Some("1")), "{text}");
    }
}
