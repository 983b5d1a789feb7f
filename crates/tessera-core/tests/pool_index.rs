//! The pool index in shards: what a claim writes, tilings spanning several shards, the tiling
//! marker across shards, and stores holding the whole index in one record (written before
//! the index was sharded).

mod common_fixtures;

use std::net::IpAddr;
use std::sync::Mutex;

use common_fixtures::*;
use serde_json::json;
use tessera_core::ipam::{Ipam, PoolIndex};
use tessera_core::keys;
use tessera_core::net::Tiling;
use tessera_core::store::{
    Compare, MemoryStore, Op, Read, Snapshot, Store, StoreError, TxnOutcome,
};

/// Keeps the writes of every committed transaction.
struct Recording {
    inner: MemoryStore,
    writes: Mutex<Vec<Vec<Op>>>,
}

impl Recording {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// The index records (key, bytes put; 0 for a delete) written since the last call.
    fn index_writes(&self) -> Vec<(String, usize)> {
        let writes = std::mem::take(&mut *self.writes.lock().unwrap());
        writes
            .iter()
            .flatten()
            .map(|op| match op {
                Op::Put(k, v) => (k.clone(), v.len()),
                Op::Delete(k) => (k.clone(), 0),
            })
            .filter(|(k, _)| k.starts_with(keys::POOL_INDEX_PREFIX))
            .collect()
    }
}

impl Store for Recording {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.inner.read(reads)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let out = self.inner.txn(compares, ops)?;
        if matches!(out, TxnOutcome::Committed(_)) {
            self.writes.lock().unwrap().push(ops.to_vec());
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        "recording".into()
    }
}

fn tiling() -> Tiling {
    Tiling::parse_key("10.0.0.0-22-32").unwrap()
}

/// A /22 pool of /32 blocks: 1024 ordinals, 8 shards of 128.
fn single_address_blocks<S: Store>(store: S) -> Ipam<S> {
    pool(&store, "p", json!({"cidr": "10.0.0.0/22", "blockSize": 32}));
    Ipam::new(store)
}

fn assert_clean<S: Store>(ipam: &Ipam<S>) {
    let report = ipam.check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

fn index_keys(store: &dyn Store) -> Vec<String> {
    let kvs = store.range(keys::POOL_INDEX_PREFIX).unwrap();
    kvs.into_iter().map(|kv| kv.key).collect()
}

fn marker_exists(store: &dyn Store) -> bool {
    store
        .get(&keys::tiling_marker(&tiling()))
        .unwrap()
        .is_some()
}

/// One address on each of `count` new nodes `n<i>`: one block claim each.
fn one_per_node<S: Store>(ipam: &Ipam<S>, count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| {
            ipam.assign(&v4(&format!("h{i}"), &format!("n{i}")))
                .unwrap()
                .addresses[0]
                .ip
        })
        .collect()
}

#[test]
fn a_claim_writes_only_the_shard_of_its_block() {
    let ipam = single_address_blocks(Recording::new());
    one_per_node(&ipam, 300);
    ipam.store().index_writes();
    // The 301st claim: ordinal 301 (ordinal 0 holds only the pool's network address).
    let a = ipam.assign(&v4("late", "late-node")).unwrap();
    assert_eq!(a.addresses[0].ip, "10.0.1.45".parse::<IpAddr>().unwrap());
    let writes = ipam.store().index_writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].0, "pool-index/10.0.0.0-22-32/2");
    // 46 entries of shard 2, not the 301 of the whole index.
    assert!(writes[0].1 < 46 * 40, "{} bytes", writes[0].1);
    assert_clean(&ipam);
}

#[test]
fn a_tiling_spans_shards_and_keeps_its_marker_until_the_last_entry_goes() {
    let ipam = single_address_blocks(MemoryStore::new());
    let ips = one_per_node(&ipam, 400);
    assert_eq!(
        index_keys(ipam.store()),
        (0..4)
            .map(|s| format!("pool-index/10.0.0.0-22-32/{s}"))
            .collect::<Vec<_>>()
    );
    assert_clean(&ipam);
    // Shards 0 to 2 lose every entry: they go, the marker stays for shard 3.
    for i in 0..383 {
        ipam.release_handle(&format!("h{i}")).unwrap();
        assert_eq!(ipam.release_node(&format!("n{i}")).unwrap(), 1);
    }
    assert_eq!(index_keys(ipam.store()), ["pool-index/10.0.0.0-22-32/3"]);
    assert!(marker_exists(ipam.store()));
    assert_clean(&ipam);
    // A block is found again by address through its shard.
    let released = ipam.release_ips(&[ips[390]]).unwrap();
    assert_eq!(released, [(ips[390], "h390".to_string())]);
    for i in 383..400 {
        ipam.release_handle(&format!("h{i}")).unwrap();
        ipam.release_node(&format!("n{i}")).unwrap();
    }
    assert!(index_keys(ipam.store()).is_empty());
    assert!(!marker_exists(ipam.store()));
    assert_clean(&ipam);
}

/// Rewrites the sharded index as the single record versions before sharding kept.
fn unshard(store: &MemoryStore) {
    let mut index = PoolIndex::default();
    let mut ops = Vec::new();
    for kv in store.range(keys::POOL_INDEX_PREFIX).unwrap() {
        let shard: PoolIndex = serde_json::from_slice(&kv.value).unwrap();
        index.blocks.extend(shard.blocks);
        ops.push(Op::Delete(kv.key));
    }
    ops.push(Op::Put(
        keys::legacy_pool_index(&tiling()),
        serde_json::to_vec(&index).unwrap(),
    ));
    ops.push(Op::Put(keys::tiling_marker(&tiling()), b"{}".to_vec()));
    store.txn(&[], &ops).unwrap();
}

#[test]
fn a_store_with_the_index_in_one_record_is_read_and_moved_into_shards() {
    let ipam = single_address_blocks(MemoryStore::new());
    one_per_node(&ipam, 200);
    unshard(ipam.store());
    assert_eq!(index_keys(ipam.store()), ["pool-index/10.0.0.0-22-32"]);
    assert_clean(&ipam);
    // Lookups and claims see the blocks the old record lists.
    let info = ipam.lookup("10.0.0.150".parse().unwrap()).unwrap().unwrap();
    assert_eq!(info.allocation.map(|a| a.handle).as_deref(), Some("h149"));
    let a = ipam.assign(&v4("new", "new-node")).unwrap();
    assert_eq!(a.addresses[0].ip, "10.0.0.201".parse::<IpAddr>().unwrap());
    // That claim moved every entry into shards and deleted the old record.
    assert_eq!(
        index_keys(ipam.store()),
        ["pool-index/10.0.0.0-22-32/0", "pool-index/10.0.0.0-22-32/1"]
    );
    assert_clean(&ipam);
    // A release is the first write just as well.
    unshard(ipam.store());
    ipam.release_handle("h5").unwrap();
    assert_eq!(ipam.release_node("n5").unwrap(), 1);
    assert_eq!(index_keys(ipam.store()).len(), 2);
    assert_clean(&ipam);
    for i in (0..200).filter(|&i| i != 5) {
        ipam.release_handle(&format!("h{i}")).unwrap();
        ipam.release_node(&format!("n{i}")).unwrap();
    }
    ipam.release_handle("new").unwrap();
    ipam.release_node("new-node").unwrap();
    assert!(index_keys(ipam.store()).is_empty());
    assert!(!marker_exists(ipam.store()));
    assert_clean(&ipam);
}
