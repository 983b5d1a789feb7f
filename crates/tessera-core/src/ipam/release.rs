//! Releasing addresses: by handle, by address, and a node's blocks when the node goes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::keys;
use crate::net::{offset_in_block, Tiling};
use crate::store::{Compare, KeyValue, Op, Read, Store, TxnOutcome};

use super::assign::{block_ops, parse_block_key, planned_block, PlannedBlock};
use super::context::Context;
use super::index::{index_reads, PlannedIndex, READS_PER_INDEX};
use super::records::{decode, encode, Block, HandleRecord};
use super::IpamError;

/// One address to release, as a handle or a lookup located it.
pub(super) struct Target {
    pub ip: IpAddr,
    pub block_key: String,
    pub handle: String,
}

/// Releases the targets: one snapshot of the blocks and handles involved, then one
/// transaction. Only when a block's full flag must be cleared or a block became empty is
/// there a read in between (the pool indexes, and the home's other blocks to decide whether
/// the empty block is its node's last). Returns `None` when a compare failed (the caller
/// starts over), otherwise the addresses actually released. Handles that lose their last
/// address are deleted; empty blocks are given back to their pool unless they are the last
/// block of their node in an enabled pool.
///
/// With `view_blocks` (a node's cached view of its blocks) the first read is skipped: a
/// release whose blocks or other handles the view does not hold fails with
/// [`IpamError::BeyondView`].
pub(super) fn release<S: Store + ?Sized>(
    store: &S,
    targets: &[Target],
    known_handle: Option<(&HandleRecord, i64)>,
    view_blocks: Option<&BTreeMap<String, KeyValue>>,
) -> Result<Released, IpamError> {
    if targets.is_empty() {
        return Ok(Released::nothing());
    }
    let block_keys: BTreeSet<&str> = targets.iter().map(|t| t.block_key.as_str()).collect();
    // A handle the caller has just read needs no second read: its revision is compared at
    // commit time all the same.
    let handles: BTreeSet<&str> = targets
        .iter()
        .map(|t| t.handle.as_str())
        .filter(|h| known_handle.is_none_or(|(rec, _)| rec.id != *h))
        .collect();
    let mut blocks: BTreeMap<String, PlannedBlock> = BTreeMap::new();
    let mut handle_recs: BTreeMap<String, (HandleRecord, i64, bool)> = BTreeMap::new();
    if let Some((rec, rev)) = known_handle {
        handle_recs.insert(rec.id.clone(), (rec.clone(), rev, false));
    }
    if let Some(view) = view_blocks {
        if !handles.is_empty() {
            return Err(IpamError::BeyondView);
        }
        for key in &block_keys {
            let kv = view.get(*key).ok_or(IpamError::BeyondView)?;
            blocks.insert(key.to_string(), planned_block(kv)?);
        }
    } else {
        let mut reads: Vec<Read> = block_keys
            .iter()
            .map(|k| Read::Get(k.to_string()))
            .collect();
        reads.extend(handles.iter().map(|h| Read::Get(keys::handle(h))));
        let snap = store.read(&reads)?;
        for (i, key) in block_keys.iter().enumerate() {
            if let Some(kv) = snap.get(i) {
                blocks.insert(key.to_string(), planned_block(kv)?);
            }
        }
        for (i, h) in handles.iter().enumerate() {
            if let Some(kv) = snap.get(block_keys.len() + i) {
                handle_recs.insert(h.to_string(), (decode(kv)?, kv.mod_revision, false));
            }
        }
    }

    let mut released = Vec::new();
    for t in targets {
        if let Some((rec, _, changed)) = handle_recs.get_mut(&t.handle) {
            let before = rec.addresses.len();
            rec.addresses.retain(|a| a.ip != t.ip);
            *changed |= rec.addresses.len() != before;
        }
        let Some(pb) = blocks.get_mut(&t.block_key) else {
            continue;
        };
        let Some(off) = offset_in_block(&pb.block.cidr, t.ip) else {
            continue;
        };
        if pb.block.allocations.get(&off) == Some(&t.handle) {
            pb.block.allocations.remove(&off);
            pb.changed = true;
            released.push(t.ip);
        }
    }

    // Blocks flagged full have room now; emptied blocks may go back to their pool.
    let emptied: Vec<&String> = blocks
        .iter()
        .filter(|(_, b)| b.changed && b.block.allocations.is_empty())
        .map(|(k, _)| k)
        .collect();
    let homes: BTreeSet<&str> = emptied
        .iter()
        .filter_map(|k| parse_block_key(k).map(|(h, _)| h))
        .collect();
    let tilings: BTreeSet<Tiling> = blocks
        .values()
        .filter(|b| b.changed && (b.block.marked_full || b.block.allocations.is_empty()))
        .filter_map(|b| b.block.tiling())
        .collect();
    let mut indexes: BTreeMap<Tiling, PlannedIndex> = BTreeMap::new();
    let mut home_blocks: BTreeMap<String, Block> = BTreeMap::new();
    // Pools matter only to decide whether an emptied block stays; read with the indexes.
    let mut ctx = Context::default();
    if !tilings.is_empty() || !homes.is_empty() {
        let mut reads: Vec<Read> = tilings.iter().flat_map(index_reads).collect();
        let first_home = reads.len();
        reads.extend(homes.iter().map(|h| Read::Prefix(keys::blocks_of(h))));
        reads.push(Read::Prefix(keys::CONFIG_PREFIX.into()));
        let snap = store.read(&reads)?;
        ctx = Context::from_records(snap.list(reads.len() - 1), None, None)?;
        for (i, tiling) in tilings.iter().enumerate() {
            let idx = PlannedIndex::from_snapshot(tiling, &snap, i * READS_PER_INDEX)?;
            indexes.insert(*tiling, idx);
        }
        for i in 0..homes.len() {
            for kv in snap.list(first_home + i) {
                home_blocks.insert(kv.key.clone(), decode(kv)?);
            }
        }
    }
    let emptied: Vec<String> = emptied.into_iter().cloned().collect();
    for key in emptied {
        let b = &blocks[&key].block;
        let pool_active = b
            .tiling()
            .and_then(|t| ctx.pool_by_tiling(&t))
            .is_some_and(|p| !p.disabled);
        let is_last_of_node = b.affinity.as_deref().is_some_and(|node| {
            !home_blocks.iter().any(|(k, other)| {
                *k != key
                    && other.affinity.as_deref() == Some(node)
                    && blocks.get(k).is_none_or(|p| !p.deleted)
            })
        });
        if !(pool_active && is_last_of_node) {
            blocks.get_mut(&key).expect("present").deleted = true;
        }
    }
    for pb in blocks.values_mut().filter(|b| b.changed) {
        let Some((tiling, ord)) = pb
            .block
            .tiling()
            .and_then(|t| Some((t, t.ordinal_of_block(&pb.block.cidr)?)))
        else {
            continue;
        };
        pb.block.marked_full = false;
        let Some(idx) = indexes.get_mut(&tiling) else {
            continue;
        };
        if pb.deleted {
            if let Ok(pos) = idx.index.find(ord) {
                idx.index.blocks.remove(pos);
                idx.changed = true;
            }
        } else {
            idx.changed |= idx.index.set_full(ord, false);
        }
    }

    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for (key, b) in &blocks {
        if b.changed {
            block_ops(key, b, &mut compares, &mut ops);
        }
    }
    for (tiling, idx) in &indexes {
        if idx.changed {
            idx.ops(tiling, &mut compares, &mut ops);
        }
    }
    for (id, (rec, rev, changed)) in &handle_recs {
        if *changed {
            let key = keys::handle(id);
            compares.push(Compare::unchanged(key.clone(), *rev));
            ops.push(if rec.addresses.is_empty() {
                Op::Delete(key)
            } else {
                Op::Put(key, encode(rec))
            });
        }
    }
    if ops.is_empty() {
        return Ok(Released::Done {
            ips: released,
            revision: None,
            ops,
        });
    }
    match store.txn(&compares, &ops)? {
        TxnOutcome::Committed(revision) => Ok(Released::Done {
            ips: released,
            revision: Some(revision),
            ops,
        }),
        TxnOutcome::Conflict => Ok(Released::Conflict),
    }
}

/// How a release attempt ended.
pub(super) enum Released {
    /// The addresses released; the writes and their revision, if anything was written.
    Done {
        ips: Vec<IpAddr>,
        revision: Option<i64>,
        ops: Vec<Op>,
    },
    /// A compare failed: nothing was written and the caller starts over.
    Conflict,
}

impl Released {
    fn nothing() -> Self {
        Released::Done {
            ips: Vec::new(),
            revision: None,
            ops: Vec::new(),
        }
    }
}

/// Drops a node's affinity to all its blocks: empty ones are deleted, others stay in place
/// without affinity. Returns the number of blocks touched, or `None` on a lost race.
pub(super) fn release_node<S: Store + ?Sized>(
    store: &S,
    node: &str,
) -> Result<Option<usize>, IpamError> {
    let mut blocks = BTreeMap::new();
    for kv in store.range(&keys::blocks_of(node))? {
        let pb = planned_block(&kv)?;
        if pb.block.affinity.as_deref() == Some(node) {
            blocks.insert(kv.key.clone(), pb);
        }
    }
    if blocks.is_empty() {
        return Ok(Some(0));
    }
    let tilings: BTreeSet<Tiling> = blocks.values().filter_map(|b| b.block.tiling()).collect();
    let reads: Vec<Read> = tilings.iter().flat_map(index_reads).collect();
    let snap = store.read(&reads)?;
    let mut indexes: BTreeMap<Tiling, PlannedIndex> = BTreeMap::new();
    for (i, t) in tilings.iter().enumerate() {
        let idx = PlannedIndex::from_snapshot(t, &snap, i * READS_PER_INDEX)?;
        indexes.insert(*t, idx);
    }
    for pb in blocks.values_mut() {
        pb.changed = true;
        if pb.block.allocations.is_empty() {
            pb.deleted = true;
            let ord = pb
                .block
                .tiling()
                .and_then(|t| Some((t, t.ordinal_of_block(&pb.block.cidr)?)));
            if let Some((t, ord)) = ord {
                if let Some(idx) = indexes.get_mut(&t) {
                    if let Ok(pos) = idx.index.find(ord) {
                        idx.index.blocks.remove(pos);
                        idx.changed = true;
                    }
                }
            }
        } else {
            pb.block.affinity = None;
        }
    }
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for (key, b) in &blocks {
        block_ops(key, b, &mut compares, &mut ops);
    }
    for (tiling, idx) in &indexes {
        if idx.changed {
            idx.ops(tiling, &mut compares, &mut ops);
        }
    }
    match store.txn(&compares, &ops)? {
        TxnOutcome::Committed(_) => Ok(Some(blocks.len())),
        TxnOutcome::Conflict => Ok(None),
    }
}
