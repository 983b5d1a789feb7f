//! Whether an allocation for a node could succeed right now, answered from the node's own
//! blocks and the candidate pools' indexes, never by listing a pool's blocks. A CNI plugin's
//! STATUS asks this so that a runtime stops scheduling sandboxes onto a node whose pools are
//! full.

use std::collections::BTreeMap;

use crate::keys;
use crate::net::{nets_overlap, Tiling};
use crate::store::{Read, Store};

use super::assign::free_offset;
use super::context::{Context, PoolInfo};
use super::index::{index_reads, PlannedIndex, READS_PER_INDEX};
use super::records::{decode, Attributes, Block, PoolIndex};
use super::select::{candidate_pools, Family};
use super::{AssignRequest, Ipam, IpamError};

/// Most blocks of one SpiderIPPool a readiness answer looks at (as many as an allocation
/// searches).
const MAX_SPIDER_BLOCKS: u128 = 1 << 16;

/// The allocation a readiness question is about.
#[derive(Clone, Debug, Default)]
pub struct ReadinessQuery {
    /// Node the allocation would be for.
    pub node: String,
    /// Namespace of the workload, when one is known (its annotations and labels count).
    pub namespace: Option<String>,
    /// Families that must both be served (IPv4, IPv6 or both).
    pub families: Vec<Family>,
    /// Pools named for the workload, as in [`AssignRequest::pools`].
    pub pools: Vec<String>,
    /// Pools named by the network configuration, as in [`AssignRequest::default_pools`].
    pub default_pools: Vec<String>,
}

/// The answer to a [`ReadinessQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// An allocation could succeed (a block of the node has room, a block can be claimed,
    /// or a block of another node may be borrowed from).
    Ready,
    /// No allocation can succeed; the reason names the family, node and pools.
    NotReady(String),
}

impl<S: Store> Ipam<S> {
    /// Whether an allocation as described by `q` could succeed now.
    ///
    /// Reads one snapshot (configuration, node, the node's blocks, namespace) and, only when
    /// the node's blocks are full, the candidate pools' indexes. The answer is optimistic
    /// where the index is: a block of another node not yet flagged full counts as room.
    pub fn readiness(&self, q: &ReadinessQuery) -> Result<Readiness, IpamError> {
        super::check_node_name(&q.node)?;
        let mut reads = vec![
            Read::Prefix(keys::CONFIG_PREFIX.into()),
            Read::Get(keys::node(&q.node)),
            Read::Prefix(keys::blocks_of(&q.node)),
        ];
        if let Some(ns) = &q.namespace {
            reads.push(Read::Get(keys::namespace(ns)));
        }
        let snap = self.store.read(&reads)?;
        let ctx = Context::from_records(snap.list(0), snap.get(1), snap.get(3))?;
        let own: Vec<Block> = snap
            .list(2)
            .iter()
            .map(decode::<Block>)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|b| b.affinity.as_deref() == Some(q.node.as_str()))
            .collect();
        let req = AssignRequest {
            node: q.node.clone(),
            attrs: Attributes {
                namespace: q.namespace.clone(),
                ..Default::default()
            },
            pools: q.pools.clone(),
            default_pools: q.default_pools.clone(),
            ..Default::default()
        };
        let mut indexes: BTreeMap<Tiling, PoolIndex> = BTreeMap::new();
        for &family in &q.families {
            let pools = match candidate_pools(&ctx, family, &q.node, &req) {
                Ok(pools) => pools,
                Err(e @ (IpamError::Store(_) | IpamError::CorruptRecord { .. })) => return Err(e),
                Err(e) => return Ok(Readiness::NotReady(e.to_string())),
            };
            let has_room = |p: &PoolInfo| {
                own.iter().any(|b| {
                    b.tiling() == Some(p.tiling)
                        && free_offset(&ctx, b, p.spider.as_ref().map(|s| &s.addresses)).is_some()
                })
            };
            if pools.iter().any(|p| has_room(p)) {
                continue;
            }
            self.load_indexes(&ctx, &pools, &mut indexes)?;
            // A SpiderIPPool's blocks are shared and flagged full only for all the pools of
            // their subnet together, so its room is read from its own blocks.
            let mut spider_room = false;
            for p in pools.iter().filter(|p| p.spider.is_some()) {
                let empty = PoolIndex::default();
                let index = indexes.get(&p.tiling).unwrap_or(&empty);
                if self.spider_has_room(&ctx, p, index)? {
                    spider_room = true;
                    break;
                }
            }
            if spider_room {
                continue;
            }
            let cfg = &ctx.config;
            let may_claim = cfg.auto_allocate_blocks
                && (cfg.max_blocks_per_host == 0 || own.len() < cfg.max_blocks_per_host as usize);
            let served = pools.iter().filter(|p| p.spider.is_none()).any(|p| {
                let empty = PoolIndex::default();
                let index = indexes.get(&p.tiling).unwrap_or(&empty);
                let claimable = may_claim && {
                    let leftovers: Vec<_> = ctx
                        .leftover_tilings(p)
                        .iter()
                        .flat_map(|t| {
                            indexes.get(t).into_iter().flat_map(move |i| {
                                i.blocks.iter().filter_map(move |e| t.block(e.ordinal))
                            })
                        })
                        .collect();
                    index
                        .first_unclaimed(p.tiling.block_count(), |o| {
                            ctx.skip_unusable_block(p, o).or_else(|| {
                                let b = p.tiling.block(o)?;
                                leftovers
                                    .iter()
                                    .any(|l| nets_overlap(l, &b))
                                    .then_some(o + 1)
                            })
                        })
                        .is_some()
                };
                let borrowable = !cfg.strict_affinity
                    && index.blocks.iter().any(|e| !e.full && e.home != q.node);
                claimable || borrowable
            });
            if !served {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                if pools.iter().all(|p| p.spider.is_some()) {
                    return Ok(Readiness::NotReady(format!(
                        "no free {family} address in SpiderIPPool(s) {}: every address is \
                         allocated, excluded or reserved",
                        names.join(", ")
                    )));
                }
                return Ok(Readiness::NotReady(format!(
                    "no free {family} address for node {:?}: the node's blocks in pool(s) {} \
                     are full and {}",
                    q.node,
                    names.join(", "),
                    if may_claim {
                        "every block of those pools is claimed and full"
                    } else if !cfg.auto_allocate_blocks {
                        "autoAllocateBlocks is off"
                    } else {
                        "the node holds maxBlocksPerHost blocks"
                    }
                )));
            }
        }
        Ok(Readiness::Ready)
    }

    /// Whether SpiderIPPool `pool` has an address to give: a block covering its addresses
    /// that is not claimed yet and holds one of them, or a claimed block with one of them
    /// free. Claimed blocks are read in small snapshots, stopping at the first with room.
    fn spider_has_room(
        &self,
        ctx: &Context,
        pool: &PoolInfo,
        index: &PoolIndex,
    ) -> Result<bool, IpamError> {
        const CHUNK: usize = 64;
        let Some(spider) = pool.spider.as_ref() else {
            return Ok(false);
        };
        let v6 = pool.is_v6();
        let mut claimed: Vec<String> = Vec::new();
        let mut seen: u128 = 0;
        for &(a, b) in spider.addresses.ranges() {
            let first = pool
                .tiling
                .block_ordinal_of(crate::net::u128_to_addr(a, v6));
            let last = pool
                .tiling
                .block_ordinal_of(crate::net::u128_to_addr(b, v6));
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            for o in first..=last {
                // The allocator searches at most this many blocks of a pool; so does this.
                seen += 1;
                if seen > MAX_SPIDER_BLOCKS {
                    break;
                }
                let Some(cidr) = pool.tiling.block(o) else {
                    continue;
                };
                match index.entry(o) {
                    None if ctx.skip_unusable_block(pool, o).is_none() => return Ok(true),
                    None => {}
                    Some(e) if e.full => {}
                    Some(e) => {
                        let key = keys::block(&e.home, &cidr);
                        if !claimed.contains(&key) {
                            claimed.push(key);
                        }
                    }
                }
            }
        }
        for chunk in claimed.chunks(CHUNK) {
            let reads: Vec<Read> = chunk.iter().map(|k| Read::Get(k.clone())).collect();
            let snap = self.store.read(&reads)?;
            for i in 0..chunk.len() {
                let Some(kv) = snap.get(i) else { continue };
                let block: Block = decode(kv)?;
                if free_offset(ctx, &block, Some(&spider.addresses)).is_some() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Reads the indexes of `pools` and of the leftover tilings overlapping them that are not
    /// loaded yet, in one snapshot.
    fn load_indexes(
        &self,
        ctx: &Context,
        pools: &[&PoolInfo],
        indexes: &mut BTreeMap<Tiling, PoolIndex>,
    ) -> Result<(), IpamError> {
        let mut wanted: Vec<Tiling> = Vec::new();
        for p in pools {
            for t in std::iter::once(p.tiling).chain(ctx.leftover_tilings(p)) {
                if !indexes.contains_key(&t) && !wanted.contains(&t) {
                    wanted.push(t);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let reads: Vec<Read> = wanted.iter().flat_map(index_reads).collect();
        let snap = self.store.read(&reads)?;
        for (i, t) in wanted.into_iter().enumerate() {
            let index = PlannedIndex::from_snapshot(&t, &snap, i * READS_PER_INDEX)?;
            indexes.insert(t, index.index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Op};

    fn put(store: &MemoryStore, key: &str, value: serde_json::Value) {
        let op = Op::Put(key.into(), serde_json::to_vec(&value).unwrap());
        store.txn(&[], &[op]).unwrap();
    }

    fn pool(store: &MemoryStore, name: &str, cidr: &str, block: u8) {
        put(
            store,
            &keys::pool(name),
            serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                               "metadata": {"name": name},
                               "spec": {"cidr": cidr, "blockSize": block}}),
        );
    }

    fn query(node: &str) -> ReadinessQuery {
        ReadinessQuery {
            node: node.into(),
            families: vec![Family::V4],
            ..Default::default()
        }
    }

    fn take(ipam: &Ipam<MemoryStore>, node: &str, handle: &str) -> Result<(), IpamError> {
        ipam.assign(&AssignRequest {
            handle: handle.into(),
            node: node.into(),
            num_v4: 1,
            ..Default::default()
        })
        .map(|_| ())
    }

    #[test]
    fn ready_until_every_block_is_claimed_and_full() {
        let ipam = Ipam::new(MemoryStore::new());
        // Two /31 blocks: two addresses each, no edge addresses in a /30 pool... except
        // the pool's network and broadcast, so two usable addresses in total.
        pool(ipam.store(), "p", "10.0.0.0/30", 31);
        assert_eq!(ipam.readiness(&query("a")).unwrap(), Readiness::Ready);
        take(&ipam, "a", "h1").unwrap();
        // Block 0 (.0, .1) is full for node a; block 1 is unclaimed.
        assert_eq!(ipam.readiness(&query("a")).unwrap(), Readiness::Ready);
        take(&ipam, "a", "h2").unwrap();
        let Readiness::NotReady(reason) = ipam.readiness(&query("a")).unwrap() else {
            panic!("pool is full")
        };
        assert!(reason.contains("pool(s) p are full"), "{reason}");
        assert!(take(&ipam, "a", "h3").is_err());
        ipam.release_handle("h1").unwrap();
        assert_eq!(ipam.readiness(&query("a")).unwrap(), Readiness::Ready);
    }

    #[test]
    fn other_nodes_may_borrow_unless_strict_affinity() {
        let ipam = Ipam::new(MemoryStore::new());
        pool(ipam.store(), "p", "10.0.0.0/28", 28);
        take(&ipam, "a", "h1").unwrap();
        // Node b cannot claim (the only block is a's) but may borrow from it.
        assert_eq!(ipam.readiness(&query("b")).unwrap(), Readiness::Ready);
        put(
            ipam.store(),
            keys::IPAM_CONFIG,
            serde_json::json!({"apiVersion": "projectcalico.org/v3",
                               "kind": "IPAMConfiguration", "metadata": {"name": "default"},
                               "spec": {"strictAffinity": true}}),
        );
        assert!(matches!(
            ipam.readiness(&query("b")).unwrap(),
            Readiness::NotReady(_)
        ));
        assert!(take(&ipam, "b", "h2").is_err());
    }

    #[test]
    fn no_pool_and_unknown_pools_are_not_ready() {
        let ipam = Ipam::new(MemoryStore::new());
        let Readiness::NotReady(reason) = ipam.readiness(&query("a")).unwrap() else {
            panic!("no pool exists")
        };
        assert!(
            reason.starts_with("no enabled IPv4 IP pool selects node"),
            "{reason}"
        );
        pool(ipam.store(), "p", "10.0.0.0/24", 26);
        let q = ReadinessQuery {
            default_pools: vec!["ghost".into()],
            ..query("a")
        };
        assert!(matches!(
            ipam.readiness(&q).unwrap(),
            Readiness::NotReady(_)
        ));
        assert!(ipam
            .readiness(&ReadinessQuery {
                node: String::new(),
                ..query("a")
            })
            .is_err());
    }
}
