//! `edge-node peers list|add|remove`.
//!
//! With a node running on the data directory, the change goes through its API and takes
//! effect at once (the node also saves it in `<data dir>/peers.toml`). With no node
//! running, the command edits `peers.toml` itself and the node picks it up at start.
//! Peers written in the config file are listed but can only be removed there.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value as Json};

use crate::client::Client;
use crate::config::{parse_node_id, Config, PeerList};

// The `peers` subcommands (clap; `main.rs` nests them under `edge-node peers`).
#[derive(Subcommand)]
pub enum PeersCommand {
    /// Show the peers with their connection state and sync lag.
    List,
    /// Add a peer (or change its address); it must also add this node.
    Add {
        /// The peer's node id, as its `edge-node status` prints it.
        node_id: String,
        /// The peer's sync address (IP:PORT, UDP).
        addr: SocketAddr,
    },
    /// Remove a peer: stop syncing with it and refuse its connections.
    Remove {
        /// The peer's node id.
        node_id: String,
    },
}

/// Runs a `peers` subcommand.
pub fn main(config: &Config, command: PeersCommand) -> Result<()> {
    let client = Client::discover(&config.data_dir, config.api_token.clone())?;
    match (command, client) {
        (PeersCommand::List, Some(client)) => print_live(&client.get("/v1/peers")?),
        (PeersCommand::List, None) => print_offline(config),
        (PeersCommand::Add { node_id, addr }, client) => {
            let peer = parse_node_id(&node_id)?;
            match client {
                Some(client) => {
                    client.post("/v1/peers", &json!({ "node_id": peer.to_string(), "addr": addr.to_string() }))?;
                    println!("peer {peer} at {addr} added; the node is connecting to it");
                }
                None => {
                    let mut list = PeerList::load(&config.data_dir)?;
                    list.upsert(peer, addr);
                    list.save(&config.data_dir)?;
                    println!("peer {peer} at {addr} added; the node connects to it when it runs");
                }
            }
            println!("the peer must add this node too (its id is in `edge-node status`)");
            Ok(())
        }
        (PeersCommand::Remove { node_id }, client) => {
            let peer = parse_node_id(&node_id)?;
            match client {
                Some(client) => {
                    client.delete(&format!("/v1/peers/{peer}"))?;
                }
                None => {
                    if config.peers.iter().any(|(id, _)| *id == peer) {
                        bail!("peer {peer} is configured in the config file; remove it there");
                    }
                    let mut list = PeerList::load(&config.data_dir)?;
                    if !list.remove(peer) {
                        bail!("no peer {peer} in {}", config.data_dir.join(crate::config::PEERS_FILE).display());
                    }
                    list.save(&config.data_dir)?;
                }
            }
            println!("peer {peer} removed");
            Ok(())
        }
    }
}

fn print_live(answer: &Json) -> Result<()> {
    let peers = answer["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no peers; add one with `edge-node peers add <NODE_ID> <IP:PORT>`");
        return Ok(());
    }
    println!(
        "{:<32}  {:<21}  {:<9}  {:>5}  {:>12}  {:>9}  {:>9}",
        "node id", "address", "state", "lag", "last contact", "sent", "received"
    );
    for peer in peers {
        let contact = peer["last_contact_ms_ago"]
            .as_u64()
            .map_or("never".to_string(), |ms| format!("{:.1} s ago", ms as f64 / 1000.0));
        let connected = peer["connected"].as_bool() == Some(true);
        println!(
            "{:<32}  {:<21}  {:<9}  {:>5}  {:>12}  {:>9}  {:>9}",
            peer["node_id"].as_str().unwrap_or("?"),
            peer["addr"].as_str().unwrap_or("(incoming)"),
            if connected { "connected" } else { "down" },
            peer["lag_changes"].to_string(),
            contact,
            peer["changes_sent"].to_string(),
            peer["changes_received"].to_string(),
        );
        if let Some(transfer) = peer["transfer"].as_object() {
            let role = transfer.get("role").and_then(|r| r.as_str()).unwrap_or("?");
            let docs = transfer.get("docs").and_then(|d| d.as_u64()).unwrap_or(0);
            let what = if role == "donor" { "sending documents" } else { "receiving documents" };
            println!("    state transfer: {what}, {docs} so far");
        }
        if let Some(error) = current_error(&peer) {
            println!("    last error: {error}");
        }
    }
    Ok(())
}

/// The error to show for a peer of `/v1/peers`: its last one while it is down. An error
/// from an earlier session is history once the peer is connected again (the CLI's list
/// and the shell's `.peers` both show peers through this).
pub fn current_error(peer: &Json) -> Option<&str> {
    let connected = peer["connected"].as_bool() == Some(true);
    peer["last_error"].as_str().filter(|_| !connected)
}

fn print_offline(config: &Config) -> Result<()> {
    let listed = PeerList::load(&config.data_dir)?.parsed(&config.data_dir)?;
    if config.peers.is_empty() && listed.is_empty() {
        println!("no peers; add one with `edge-node peers add <NODE_ID> <IP:PORT>`");
    }
    for (peer, addr) in &config.peers {
        println!("{peer}  {addr}  (config file; node not running)");
    }
    for (peer, addr) in &listed {
        println!("{peer}  {addr}  (node not running)");
    }
    Ok(())
}
