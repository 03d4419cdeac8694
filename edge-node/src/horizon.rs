//! The causal-stability horizon as JSON (in `GET /v1/status`) and as text (`edge-node
//! status`, the shell's `.sync`); docs/design.md § "Causal-stability horizon".

use edgestore::{Horizon, VersionVector};
use serde_json::{json, Value as Json};

/// The horizon at `now_ms` (the clock its last-heard times are in) as JSON: the vector per
/// origin, how far it is behind this node's own vector, why it is not advancing, and per
/// member what it holds and how far behind it holds the horizon back.
pub fn to_json(horizon: &Horizon, vector: &VersionVector, now_ms: u64) -> Json {
    let members: Vec<Json> = horizon
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.member.to_string(),
                "held_changes": m.held.total_changes(),
                "lag_changes": m.lag_changes,
                "last_heard_ms_ago": m.last_heard_ms.map(|t| now_ms.saturating_sub(t)),
                "beyond_horizon": m.beyond_horizon,
            })
        })
        .collect();
    let origins: serde_json::Map<String, Json> =
        horizon.vector.iter().map(|(origin, seq)| (origin.to_string(), json!(seq))).collect();
    json!({
        "vector": origins,
        "changes": horizon.vector.total_changes(),
        "behind_changes": vector.total_changes().saturating_sub(horizon.vector.total_changes()),
        "waiting_for": horizon.waiting_for.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "members_full": horizon.members_full,
        "members": members,
    })
}

/// The JSON of [`to_json`] as lines of text.
pub fn render(horizon: &Json) -> String {
    let mut out = format!(
        "horizon: {} change(s) stable, {} held here above it\n",
        horizon["changes"].as_u64().unwrap_or(0),
        horizon["behind_changes"].as_u64().unwrap_or(0)
    );
    let waiting: Vec<&str> = horizon["waiting_for"].as_array().into_iter().flatten().filter_map(Json::as_str).collect();
    if !waiting.is_empty() {
        out.push_str(&format!("  not advancing: changes made by {} not held here yet\n", waiting.join(", ")));
    }
    if horizon["members_full"].as_bool() == Some(true) {
        out.push_str("  not advancing: the member table is full\n");
    }
    for member in horizon["members"].as_array().into_iter().flatten() {
        let lag = member["lag_changes"].as_u64().unwrap_or(0);
        let heard = match member["last_heard_ms_ago"].as_u64() {
            Some(ms) => format!("heard {} s ago", ms / 1000),
            None => "this node".to_string(),
        };
        let state = if member["beyond_horizon"].as_bool() == Some(true) {
            "beyond the peer horizon (not holding it back)".to_string()
        } else if lag == 0 {
            "holds everything held here".to_string()
        } else {
            format!("{lag} change(s) behind")
        };
        out.push_str(&format!("  {}  {state}, {heard}\n", member["node_id"].as_str().unwrap_or("?")));
    }
    out
}

#[cfg(test)]
mod tests {
    use edgestore::{HeldClaim, NodeId, Replica, VersionVector, WriteBatch};

    use super::*;

    #[test]
    fn the_horizon_renders_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = Replica::open(dir.path().join("s.redb"), NodeId([1; 16])).unwrap();
        let table = edgestore::TableSchema::new("t")
            .column(edgestore::ColumnDef::new("id", edgestore::ColumnType::Integer))
            .primary_key(&["id"]);
        replica.write(WriteBatch::new().create_table(table), 0).unwrap();
        let held: VersionVector = [(NodeId([1; 16]), 1)].into_iter().collect();
        let claim = HeldClaim { member: NodeId([2; 16]), vector: held, heard_ago_ms: 0 };
        replica.record_held(NodeId([2; 16]), &[claim], 1_000).unwrap();
        replica.add_members(&[NodeId([3; 16])], 0).unwrap();
        let horizon = replica.horizon(9_000, 8_500);
        let json = to_json(&horizon, replica.version_vector(), 9_000);
        assert_eq!(json["changes"], 1);
        assert_eq!(json["members"].as_array().unwrap().len(), 3);
        let text = render(&json);
        assert!(text.contains("1 change(s) stable"), "{text}");
        assert!(text.contains(&format!("{}  beyond the peer horizon", NodeId([3; 16]))), "{text}");
        assert!(text.contains(&format!("{}  holds everything held here, heard 8 s ago", NodeId([2; 16]))), "{text}");
    }
}
