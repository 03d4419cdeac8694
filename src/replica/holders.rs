//! Held vectors and the causal-stability horizon (`docs/design.md` § "Causal-stability
//! horizon").
//!
//! For every member `m` of the cluster known to this node, `H[m]` is the latest version
//! vector this node knows `m` to hold, with the time `m` was last heard of; `H[self]` is
//! the replica's own vector and is not stored. Entries only grow (component-wise max), a
//! vector forwarded by a peer is believed only up to what that peer itself holds, and
//! members are only added (up to [`MEMBERS_MAX`]). They live in `holders_v1`, written in
//! short durable transactions of their own, so a restart keeps them.
//!
//! The horizon is the per-origin minimum of the held vectors of the members heard from
//! within the caller's `peer_horizon_ms`, taken only while this node holds every change
//! those members reported having made (condition (b)); otherwise the previous horizon
//! stands. The last horizon is kept in memory and persisted (`meta_v1` key `horizon`) with
//! the next write of held vectors, so after a crash it may restart lower than it was,
//! never higher than what is stable: a lower horizon only names fewer stable changes.

use std::cell::RefCell;
use std::collections::BTreeMap;

use redb::ReadableTable;

use super::Replica;
use crate::codec;
use crate::error::{Corruption, StorageError};
use crate::storage;
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// Most members (other than this node) a replica tracks: like the cap on a version
/// vector's entries in a `Hello`. At the cap the horizon stops advancing (a member that
/// cannot be tracked cannot be known to hold anything).
pub const MEMBERS_MAX: usize = 4096;
/// A member's last-heard time is rewritten to disk at most this often while its held
/// vector does not grow (it is kept in memory meanwhile).
pub const HEARD_PERSIST_MS: u64 = 60_000;

/// What a node reports about one member: the vector the member holds and how long ago the
/// reporting node last heard of the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldClaim {
    /// The member.
    pub member: NodeId,
    /// The version vector the member is known to hold.
    pub vector: VersionVector,
    /// How long before the report the reporter last heard of the member (0 for itself).
    pub heard_ago_ms: u64,
}

/// A page of held vectors that grew ([`Replica::held_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldPage {
    /// The members' claims, oldest growth first.
    pub claims: Vec<HeldClaim>,
    /// The generation the page covers: ask from it next time.
    pub covered: u64,
    /// Whether nothing grew after `covered`.
    pub complete: bool,
}

/// One member's line of a [`Horizon`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHold {
    /// The member (this node included).
    pub member: NodeId,
    /// The latest vector it is known to hold (this node: its version vector).
    pub held: VersionVector,
    /// Changes this node holds that the member is not known to hold:
    /// `Σ_o (V[o] − min(H[m][o], V[o]))`.
    pub lag_changes: u64,
    /// When the member was last heard of, in the caller's clock; `None` for this node.
    pub last_heard_ms: Option<u64>,
    /// Not heard of for longer than `peer_horizon_ms`: it no longer holds the horizon back.
    pub beyond_horizon: bool,
}

/// The causal-stability horizon at one moment; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// Per origin, the highest seq stable at this node: every change `(o, s)` with
    /// `s ≤ vector[o]` is held by every member and nothing concurrent with it can arrive.
    /// Always at most the replica's version vector.
    pub vector: VersionVector,
    /// Every member, this node first, then by node id.
    pub members: Vec<MemberHold>,
    /// Members that reported making changes this node does not hold yet (condition (b)
    /// fails): while any is listed, the horizon keeps its previous value.
    pub waiting_for: Vec<NodeId>,
    /// The member table is full ([`MEMBERS_MAX`]): the horizon keeps its previous value.
    pub members_full: bool,
}

/// Counters of the held-vector table since the replica was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldersCounters {
    /// Claims lower than the held vector in some origin (a stale forwarded view, or a
    /// regressed peer): the lower entries were ignored.
    pub claims_lower: u64,
    /// Forwarded claims above what the forwarder itself holds: cut down to it.
    pub claims_capped: u64,
    /// Members not added because the table was full.
    pub members_refused: u64,
}

/// One stored member entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    vector: VersionVector,
    heard_ms: u64,
    /// The heard time as last written to `holders_v1`.
    persisted_heard_ms: u64,
    /// When the entry last grew (a number from [`Holders::generation`]).
    generation: u64,
}

/// The in-memory copy of `holders_v1` and the last horizon.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    entries: BTreeMap<NodeId, Held>,
    /// Counts entry growth; sessions send what grew after the generation they last sent.
    generation: u64,
    /// The last horizon computed (interior: [`Replica::horizon`] takes `&self`).
    last: RefCell<VersionVector>,
    /// The horizon as stored in `meta_v1`.
    persisted_last: VersionVector,
    counters: HoldersCounters,
}

/// `holders_v1` value: u64 BE heard ms ‖ CBOR version vector.
fn encode_held(vector: &VersionVector, heard_ms: u64) -> Vec<u8> {
    let mut out = heard_ms.to_be_bytes().to_vec();
    out.extend(codec::encode(vector));
    out
}

fn decode_held(value: &[u8]) -> Result<(VersionVector, u64), StorageError> {
    let (heard, vector) = value.split_at_checked(8).ok_or(Corruption::ShortValue { table: "holders_v1" })?;
    let heard = u64::from_be_bytes(heard.try_into().expect("8 bytes"));
    Ok((codec::decode(vector).map_err(|source| Corruption::Value { table: "holders_v1", source })?, heard))
}

/// Component-wise minimum of two vectors.
fn min_vector(a: &VersionVector, b: &VersionVector) -> VersionVector {
    a.iter().map(|(origin, seq)| (origin, seq.min(b.seq(origin)))).collect()
}

/// Component-wise maximum of two vectors.
fn max_vector(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut out = a.clone();
    for (origin, seq) in b.iter() {
        if seq > out.seq(origin) {
            out.set(origin, seq);
        }
    }
    out
}

/// Changes `ours` holds that `theirs` lacks.
pub fn changes_missing(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.iter().map(|(origin, seq)| seq.saturating_sub(theirs.seq(origin))).sum()
}

impl Holders {
    /// Loads `holders_v1` and the stored horizon.
    pub(crate) fn load(txn: &redb::ReadTransaction) -> Result<Holders, StorageError> {
        let mut entries = BTreeMap::new();
        for entry in txn.open_table(storage::HOLDERS)?.iter()? {
            let (member, value) = entry?;
            let member = NodeId::from_slice(member.value()).ok_or(Corruption::NodeIdKey { table: "holders_v1" })?;
            let (vector, heard_ms) = decode_held(value.value())?;
            // Generations 1, 2, …: a new session sends every entry (it asks from 0).
            let generation = entries.len() as u64 + 1;
            entries.insert(member, Held { vector, heard_ms, persisted_heard_ms: heard_ms, generation });
        }
        let last = super::read::meta_vector(&txn.open_table(storage::META)?, storage::META_HORIZON)?;
        Ok(Holders {
            generation: entries.len() as u64,
            entries,
            last: RefCell::new(last.clone()),
            persisted_last: last,
            counters: HoldersCounters::default(),
        })
    }
}

impl Holders {
    /// Keeps the counters across a reload of the committed state.
    pub(crate) fn restore_counters(&mut self, counters: HoldersCounters) {
        self.counters = counters;
    }
}

/// What one `record_held` call changes, staged before its transaction.
struct Staged {
    /// Entries to write (grown, added, or with a heard time due to be stored).
    entries: BTreeMap<NodeId, Held>,
    /// Heard times raised in memory only.
    heard: BTreeMap<NodeId, u64>,
    /// The generation the next grown entry gets: each gets its own, so a session can
    /// send the table in bounded pieces.
    next_generation: u64,
    grew: bool,
    counters: HoldersCounters,
}

impl Replica {
    /// Records what `from` reported: its own vector (a `Hello`, an `Ack`, its entry in a
    /// `Holders` frame) and the vectors it forwards for other members. Hearing from
    /// `from` at all refreshes its last-heard time, so `claims` may be empty.
    ///
    /// Entries only grow; a forwarded vector is capped at what `from` holds (its own
    /// entry after this report), except the member's own origin, which condition (b)
    /// needs as reported. Claims about this node are ignored (`H[self]` is `V`). Every
    /// member and every origin named, and every origin of `V`, becomes a member. Returns
    /// whether any entry grew or a member was added. Written durably, in one transaction,
    /// when anything must be stored; nothing changes in memory if that fails.
    pub fn record_held(&mut self, from: NodeId, claims: &[HeldClaim], now_ms: u64) -> Result<bool, StorageError> {
        if let Some(refusal) = self.fault_refusal() {
            return Err(refusal);
        }
        let mut staged = self.stage_claims(from, claims, now_ms);
        let last = self.holders.last.borrow().clone();
        let write_last = last != self.holders.persisted_last;
        if !staged.entries.is_empty() || write_last {
            // A transaction is written anyway: it stores the raised heard times as well.
            for (member, heard_ms) in std::mem::take(&mut staged.heard) {
                let held = self.holders.entries.get(&member).expect("heard times are raised for known members");
                staged.entries.insert(member, Held { heard_ms, ..held.clone() });
            }
            let outcome = (|| -> Result<(), StorageError> {
                let txn = self.begin_durable_write()?;
                {
                    let mut table = txn.open_table(storage::HOLDERS)?;
                    for (member, held) in &staged.entries {
                        let value = encode_held(&held.vector, held.heard_ms);
                        table.insert(member.as_bytes().as_slice(), value.as_slice())?;
                    }
                    if write_last {
                        let mut meta = txn.open_table(storage::META)?;
                        meta.insert(storage::META_HORIZON, codec::encode(&last).as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })();
            self.finish(outcome)?;
            self.holders.persisted_last = last;
        }
        let holders = &mut self.holders;
        holders.counters = add_counters(holders.counters, staged.counters);
        for (member, heard_ms) in staged.heard {
            if let Some(held) = holders.entries.get_mut(&member) {
                held.heard_ms = held.heard_ms.max(heard_ms);
            }
        }
        for (member, mut held) in staged.entries {
            held.persisted_heard_ms = held.heard_ms;
            holders.entries.insert(member, held);
        }
        holders.generation = staged.next_generation - 1;
        Ok(staged.grew)
    }

    /// Adds members (configured peers not yet heard from) with nothing known to be held;
    /// their absence is counted from `now_ms`. Members already known are left alone.
    pub fn add_members(&mut self, members: &[NodeId], now_ms: u64) -> Result<bool, StorageError> {
        let claims: Vec<HeldClaim> = members
            .iter()
            .filter(|m| **m != self.node)
            .map(|&member| HeldClaim { member, vector: VersionVector::new(), heard_ago_ms: 0 })
            .collect();
        // As if forwarded by this node itself: nothing is believed beyond empty vectors.
        self.record_held(self.node, &claims, now_ms)
    }

    /// Works out what a report changes, without touching the table.
    fn stage_claims(&self, from: NodeId, claims: &[HeldClaim], now_ms: u64) -> Staged {
        let mut staged = Staged {
            entries: BTreeMap::new(),
            heard: BTreeMap::new(),
            next_generation: self.holders.generation + 1,
            grew: false,
            counters: HoldersCounters::default(),
        };
        if from != self.node {
            let own = claims.iter().find(|c| c.member == from).map(|c| self.cap_at_own_seq(&c.vector, &mut staged));
            self.stage_one(&mut staged, from, own.as_ref(), now_ms);
        }
        // What `from` holds, after its own report: the cap on what it forwards.
        let cap = self.held_entry(&staged, from).map(|h| h.vector.clone()).unwrap_or_default();
        for claim in claims.iter().filter(|c| c.member != from && c.member != self.node) {
            let mut capped = min_vector(&claim.vector, &cap);
            capped.set(claim.member, claim.vector.seq(claim.member));
            let capped = self.cap_at_own_seq(&capped, &mut staged);
            if capped != claim.vector {
                staged.counters.claims_capped += 1;
            }
            let heard = now_ms.saturating_sub(claim.heard_ago_ms);
            self.stage_one(&mut staged, claim.member, Some(&capped), heard);
        }
        // Every origin named, and every origin this node holds, is a member.
        let named: Vec<NodeId> = claims
            .iter()
            .flat_map(|c| c.vector.iter().map(|(o, _)| o))
            .chain(self.versions.iter().map(|(o, _)| o))
            .filter(|o| *o != self.node)
            .collect();
        for origin in named {
            if self.held_entry(&staged, origin).is_none() {
                self.stage_one(&mut staged, origin, None, now_ms);
            }
        }
        staged
    }

    /// `claim` with this node's own origin capped at the last seq it made: nobody holds a
    /// change of ours that we never made, so a higher claim is false, and kept as claimed
    /// it would count our later changes as held there too. Counted as capped.
    fn cap_at_own_seq(&self, claim: &VersionVector, staged: &mut Staged) -> VersionVector {
        let made = self.versions.seq(self.node);
        if claim.seq(self.node) <= made {
            return claim.clone();
        }
        staged.counters.claims_capped += 1;
        let mut capped = claim.clone();
        capped.set(self.node, made);
        capped
    }

    /// Stages one member's report: the component-wise max with what is held, and the
    /// heard time raised to `heard_ms` (the reporter's last news of the member). A new
    /// member starts with the claim, heard at `heard_ms`.
    fn stage_one(&self, staged: &mut Staged, member: NodeId, claim: Option<&VersionVector>, heard_ms: u64) {
        let empty = VersionVector::new();
        let claim_vector = claim.unwrap_or(&empty);
        let Some(current) = self.held_entry(staged, member).cloned() else {
            if self.holders.entries.len() + staged.entries.len() >= MEMBERS_MAX {
                staged.counters.members_refused += 1;
                return;
            }
            let generation = staged.next_generation;
            staged.next_generation += 1;
            let held = Held { vector: claim_vector.clone(), heard_ms, persisted_heard_ms: 0, generation };
            staged.entries.insert(member, held);
            staged.grew = true;
            return;
        };
        if claim.is_some_and(|c| !c.dominates(&current.vector)) {
            staged.counters.claims_lower += 1;
        }
        let grown = max_vector(&current.vector, claim_vector);
        let grew = grown != current.vector;
        let heard = current.heard_ms.max(heard_ms);
        let persist_heard = heard.saturating_sub(current.persisted_heard_ms) >= HEARD_PERSIST_MS;
        if !grew && !persist_heard {
            if heard > current.heard_ms {
                staged.heard.insert(member, heard);
            }
            return;
        }
        let generation = if grew {
            staged.next_generation += 1;
            staged.next_generation - 1
        } else {
            current.generation
        };
        staged.grew |= grew;
        staged.entries.insert(member, Held { vector: grown, heard_ms: heard, generation, ..current });
    }

    fn held_entry<'a>(&'a self, staged: &'a Staged, member: NodeId) -> Option<&'a Held> {
        staged.entries.get(&member).or_else(|| self.holders.entries.get(&member))
    }

    /// Held vectors of members that grew after `generation`, oldest growth first, at most
    /// `entries_max`, each with how long ago (before `now_ms`) it was last heard of.
    /// Generation 0 asks for every entry; pass the page's `covered` next time.
    pub fn held_since(&self, generation: u64, entries_max: usize, now_ms: u64) -> HeldPage {
        let mut grown: Vec<(&NodeId, &Held)> =
            self.holders.entries.iter().filter(|(_, held)| held.generation > generation).collect();
        grown.sort_by_key(|(_, held)| held.generation);
        let complete = grown.len() <= entries_max;
        grown.truncate(entries_max);
        let covered = match grown.last() {
            Some((_, held)) if !complete => held.generation,
            _ => self.holders.generation.max(generation),
        };
        let claims = grown
            .into_iter()
            .map(|(member, held)| HeldClaim {
                member: *member,
                vector: held.vector.clone(),
                heard_ago_ms: now_ms.saturating_sub(held.heard_ms),
            })
            .collect();
        HeldPage { claims, covered, complete }
    }

    /// The counters of the held-vector table since the replica was opened.
    pub fn holders_counters(&self) -> HoldersCounters {
        self.holders.counters
    }

    /// The causal-stability horizon now (see the module documentation). Members not heard
    /// of for longer than `peer_horizon_ms` before `now_ms` do not hold it back; this node
    /// always does.
    pub fn horizon(&self, now_ms: u64, peer_horizon_ms: u64) -> Horizon {
        let v = &self.versions;
        let beyond = |held: &Held| now_ms.saturating_sub(held.heard_ms) > peer_horizon_ms;
        let live: Vec<(&NodeId, &Held)> = self.holders.entries.iter().filter(|(_, h)| !beyond(h)).collect();
        let waiting_for: Vec<NodeId> =
            live.iter().filter(|(m, held)| v.seq(**m) < held.vector.seq(**m)).map(|(m, _)| **m).collect();
        let members_full = self.holders.entries.len() >= MEMBERS_MAX;
        // An origin of V not yet recorded as a member (changes applied, no report since)
        // is a member known to hold nothing: the horizon waits for it.
        let unrecorded = v.iter().map(|(o, _)| o).filter(|o| *o != self.node && !self.holders.entries.contains_key(o));
        let waiting_for: Vec<NodeId> = waiting_for.into_iter().chain(unrecorded).collect();
        let mut last = self.holders.last.borrow_mut();
        if waiting_for.is_empty() && !members_full {
            let candidate = live.iter().fold(v.clone(), |h, (_, held)| min_vector(&h, &held.vector));
            *last = max_vector(&last, &candidate);
        }
        assert!(v.dominates(&last), "horizon {last:?} above the version vector {v:?}");
        let horizon = last.clone();
        drop(last);
        let own = MemberHold {
            member: self.node,
            held: v.clone(),
            lag_changes: 0,
            last_heard_ms: None,
            beyond_horizon: false,
        };
        let others = self.holders.entries.iter().map(|(member, held)| MemberHold {
            member: *member,
            held: held.vector.clone(),
            lag_changes: changes_missing(v, &held.vector),
            last_heard_ms: Some(held.heard_ms),
            beyond_horizon: beyond(held),
        });
        Horizon { vector: horizon, members: std::iter::once(own).chain(others).collect(), waiting_for, members_full }
    }
}

fn add_counters(a: HoldersCounters, b: HoldersCounters) -> HoldersCounters {
    HoldersCounters {
        claims_lower: a.claims_lower + b.claims_lower,
        claims_capped: a.claims_capped + b.claims_capped,
        members_refused: a.members_refused + b.members_refused,
    }
}
