//! `tessera plan --pool NAME`: the forecast for a pool as the datastore holds it now, with
//! the same block arithmetic as the offline planner and the allocator.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::ipam::{decode, free_address_count, Block, Context, IpamError, PoolInfo};
use crate::keys;
use crate::net::Tiling;
use crate::resources::kube::Node;
use crate::store::{Read, Store, StoreError};

use super::{blocks_needed, nodes_borrowing, serve_new_nodes, FreeBlocks, PlanError, Served};

/// How many nodes [`LivePlan::closest`] lists.
pub const CLOSEST_NODES: usize = 10;

/// Why a pool cannot be planned from the datastore.
#[derive(Debug, thiserror::Error)]
pub enum LivePlanError {
    /// No Calico pool has this name.
    #[error("no IPPool named {pool:?}; {existing}")]
    UnknownPool {
        /// The name asked for.
        pool: String,
        /// The pools that exist, as a sentence.
        existing: String,
    },
    /// The name is a SpiderIPPool, whose blocks no node owns.
    #[error(
        "{pool:?} is a SpiderIPPool: every node shares its addresses, so there are no \
         per-node blocks to forecast; `tessera plan --pool` takes a Calico IPPool"
    )]
    SpiderPool {
        /// The name asked for.
        pool: String,
    },
    /// Nothing measured to forecast from, and no `--pods-per-node`.
    #[error("pool {pool:?} {reason}: give --pods-per-node M to forecast from M pods per node")]
    NothingMeasured {
        /// The pool.
        pool: String,
        /// What is missing.
        reason: &'static str,
    },
    /// The given figures are wrong.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A record could not be read.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pods per node measured on the nodes holding blocks of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// Addresses in use in the pool / nodes holding blocks of it, rounded up.
    pub mean: u64,
    /// Median over those nodes.
    pub median: u64,
    /// Largest.
    pub max: u64,
}

/// A node holding blocks of the pool: how much room is left in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRoom {
    /// Node name.
    pub node: String,
    /// Free addresses in its blocks of the pool.
    pub free: u32,
    /// Blocks affine to it, of every pool (maxBlocksPerHost counts them all).
    pub blocks: u32,
}

/// The node records and which of them the pool's nodeSelector takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecords {
    /// Node records in the datastore.
    pub total: usize,
    /// Those the pool's nodeSelector takes.
    pub selected: usize,
    /// Selected nodes holding no block of the pool yet: they are among the new nodes.
    pub selected_without_blocks: usize,
    /// Blocks of the pool affine to nodes with no record: (block, node).
    pub orphaned_blocks: Vec<(IpNet, String)>,
}

/// The forecast for a pool from what the datastore holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePlan {
    /// Pool name.
    pub pool: String,
    /// The pool's network and blocks.
    pub tiling: Tiling,
    /// The pool's nodeSelector.
    pub node_selector: String,
    /// IPAMConfiguration strictAffinity.
    pub strict_affinity: bool,
    /// IPAMConfiguration maxBlocksPerHost (0 = no limit).
    pub max_blocks_per_host: u32,
    /// Node records, or `None` when the datastore holds none.
    pub node_records: Option<NodeRecords>,
    /// Addresses in use in the pool.
    pub in_use: u128,
    /// Nodes holding blocks of the pool, with their room, fullest first.
    pub nodes: Vec<NodeRoom>,
    /// Pods per node measured, when some node holds addresses.
    pub measured: Option<Measured>,
    /// Pods per node the forecast uses (measured mean or `--pods-per-node`).
    pub pods_per_node: u64,
    /// Blocks of the pool.
    pub blocks: u128,
    /// Blocks claimed.
    pub blocks_claimed: u128,
    /// Unclaimed blocks a new node may claim.
    pub blocks_free: u128,
    /// Blocks a new node needs for its pods.
    pub blocks_per_new_node: u64,
    /// Why new nodes claim no block at all (disabled pool, autoAllocateBlocks off).
    pub no_claims: Option<&'static str>,
    /// New nodes served from free blocks, and why the next is not.
    pub own_blocks: Served,
    /// With strictAffinity off: new nodes served counting the addresses they borrow.
    pub with_borrowing: Option<u128>,
    /// Free addresses of the pool: in claimed blocks and in free ones.
    pub free_addresses: u128,
    /// Claimed blocks neither empty nor full.
    pub partly_used_blocks: usize,
    /// Free addresses in blocks affine to a node (only that node takes them under
    /// strictAffinity).
    pub stranded: u128,
}

impl LivePlan {
    /// Nodes closest to needing a new block: fewest free addresses in their blocks first.
    pub fn closest(&self) -> &[NodeRoom] {
        &self.nodes[..self.nodes.len().min(CLOSEST_NODES)]
    }

    /// Nodes holding maxBlocksPerHost blocks already.
    pub fn at_block_limit(&self) -> Vec<&str> {
        let max = self.max_blocks_per_host;
        let mut at: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| max > 0 && n.blocks >= max)
            .map(|n| n.node.as_str())
            .collect();
        at.sort_unstable();
        at
    }

    /// Stranded addresses as a percentage of the pool's free addresses.
    pub fn stranded_percent(&self) -> u128 {
        (self.stranded * 100)
            .checked_div(self.free_addresses)
            .unwrap_or(0)
    }
}

/// Reads pool `name`, its blocks, the IPAM configuration and the node records in one
/// snapshot and forecasts at the measured pods per node, or at `pods_per_node` when given.
pub fn plan_pool<S: Store + ?Sized>(
    store: &S,
    name: &str,
    pods_per_node: Option<u64>,
) -> Result<LivePlan, LivePlanError> {
    let snap = store.read(&[
        Read::Prefix(keys::CONFIG_PREFIX.into()),
        Read::Prefix(keys::BLOCK_PREFIX.into()),
        Read::Prefix(keys::NODE_PREFIX.into()),
    ])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    let pool = find_pool(&ctx, name)?;
    let blocks: Vec<Block> = snap
        .list(1)
        .iter()
        .map(decode::<Block>)
        .collect::<Result<_, _>>()?;
    let nodes: Vec<Node> = snap
        .list(2)
        .iter()
        .map(decode::<Node>)
        .collect::<Result<_, _>>()?;
    forecast_pool(&ctx, pool, &blocks, &nodes, pods_per_node)
}

fn find_pool<'c>(ctx: &'c Context, name: &str) -> Result<&'c PoolInfo, LivePlanError> {
    match ctx.pool_by_name(name) {
        Some(p) if p.spider.is_some() => Err(LivePlanError::SpiderPool { pool: name.into() }),
        Some(p) => Ok(p),
        None => {
            let names: Vec<&str> = ctx
                .pools
                .iter()
                .filter(|p| p.spider.is_none())
                .map(|p| p.name.as_str())
                .collect();
            let existing = if names.is_empty() {
                "the datastore holds no IPPool: create one with `tessera apply -f`".to_string()
            } else {
                format!("existing pools: {}", names.join(", "))
            };
            Err(LivePlanError::UnknownPool {
                pool: name.into(),
                existing,
            })
        }
    }
}

/// What the pool's blocks hold, per node.
#[derive(Default)]
struct BlockTally {
    claimed: Vec<u128>,
    in_use: BTreeMap<String, u128>,
    free: BTreeMap<String, u32>,
    total_in_use: u128,
    free_in_claimed: u128,
    partly_used: usize,
    stranded: u128,
}

fn tally(ctx: &Context, pool: &PoolInfo, blocks: &[Block]) -> BlockTally {
    let mut t = BlockTally::default();
    for block in blocks.iter().filter(|b| b.tiling() == Some(pool.tiling)) {
        if let Some(ordinal) = pool.tiling.ordinal_of_block(&block.cidr) {
            t.claimed.push(ordinal);
        }
        let used = block.allocations.len() as u128;
        let free = free_address_count(ctx, block);
        t.total_in_use += used;
        t.free_in_claimed += u128::from(free);
        if used > 0 && free > 0 {
            t.partly_used += 1;
        }
        if let Some(node) = &block.affinity {
            *t.in_use.entry(node.clone()).or_default() += used;
            *t.free.entry(node.clone()).or_default() += free;
            t.stranded += u128::from(free);
        }
    }
    t.claimed.sort_unstable();
    t
}

/// Ordinals of the pool's blocks no new node can claim: the claimed ones, and those a block
/// left behind by a deleted pool (or an older block size) overlaps, which the allocator
/// passes over.
fn unavailable(pool: &PoolInfo, blocks: &[Block], claimed: &[u128]) -> Vec<u128> {
    let tiling = &pool.tiling;
    let mut taken = claimed.to_vec();
    for leftover in blocks
        .iter()
        .filter(|b| b.tiling() != Some(*tiling) && crate::net::nets_overlap(&b.cidr, &tiling.pool))
    {
        let first = tiling.block_ordinal_of(leftover.cidr.network().max(tiling.pool.network()));
        let last = tiling.block_ordinal_of(leftover.cidr.broadcast().min(tiling.pool.broadcast()));
        if let (Some(first), Some(last)) = (first, last) {
            taken.extend(first..=last);
        }
    }
    taken.sort_unstable();
    taken.dedup();
    taken
}

fn blocks_per_node(blocks: &[Block]) -> BTreeMap<&str, u32> {
    let mut count = BTreeMap::new();
    for node in blocks.iter().filter_map(|b| b.affinity.as_deref()) {
        *count.entry(node).or_default() += 1;
    }
    count
}

fn measure(in_use: &BTreeMap<String, u128>) -> Option<Measured> {
    let mut counts: Vec<u64> = in_use
        .values()
        .map(|&n| u64::try_from(n).unwrap_or(u64::MAX))
        .collect();
    let total: u128 = in_use.values().sum();
    if total == 0 {
        return None;
    }
    counts.sort_unstable();
    let mean = total.div_ceil(counts.len() as u128);
    Some(Measured {
        mean: u64::try_from(mean).unwrap_or(u64::MAX),
        median: counts[counts.len() / 2],
        max: counts[counts.len() - 1],
    })
}

fn node_records(pool: &PoolInfo, nodes: &[Node], blocks: &[Block]) -> Option<NodeRecords> {
    if nodes.is_empty() {
        return None;
    }
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    let holding: BTreeSet<&str> = blocks
        .iter()
        .filter(|b| b.tiling() == Some(pool.tiling))
        .filter_map(|b| b.affinity.as_deref())
        .collect();
    let selected: Vec<&Node> = nodes
        .iter()
        .filter(|n| pool.node_selector.matches(&n.metadata.labels))
        .collect();
    let orphaned_blocks = blocks
        .iter()
        .filter(|b| b.tiling() == Some(pool.tiling))
        .filter_map(|b| Some((b.cidr, b.affinity.clone()?)))
        .filter(|(_, node)| !known.contains(node.as_str()))
        .collect();
    Some(NodeRecords {
        total: nodes.len(),
        selected: selected.len(),
        selected_without_blocks: selected
            .iter()
            .filter(|n| !holding.contains(n.metadata.name.as_str()))
            .count(),
        orphaned_blocks,
    })
}

/// The pods per node to forecast at: the given figure, else the measured mean.
fn pods_to_forecast(
    pool: &PoolInfo,
    t: &BlockTally,
    measured: Option<Measured>,
    pods_per_node: Option<u64>,
) -> Result<u64, LivePlanError> {
    match (pods_per_node, measured) {
        (Some(0), _) => Err(PlanError::Zero {
            flag: "--pods-per-node",
        }
        .into()),
        (Some(m), _) => Ok(m),
        (None, Some(m)) => Ok(m.mean),
        (None, None) => {
            let reason = if t.claimed.is_empty() {
                "has no blocks yet, so there are no pods per node to measure"
            } else {
                "has blocks but no address in use, so there are no pods per node to measure"
            };
            Err(LivePlanError::NothingMeasured {
                pool: pool.name.clone(),
                reason,
            })
        }
    }
}

/// What new nodes get from the pool.
struct NewNodes {
    no_claims: Option<&'static str>,
    own_blocks: Served,
    with_borrowing: Option<u128>,
}

/// New nodes claim free blocks unless the pool or the configuration forbids it, and with
/// strictAffinity off also borrow.
fn forecast_new_nodes(
    ctx: &Context,
    pool: &PoolInfo,
    free: &FreeBlocks,
    free_in_claimed: u128,
    pods: u64,
) -> NewNodes {
    let config = &ctx.config;
    let no_claims = if pool.disabled {
        Some("the pool is disabled: it hands out no new address")
    } else if !config.auto_allocate_blocks {
        Some("autoAllocateBlocks is off: new nodes claim no block")
    } else {
        None
    };
    let (own_blocks, borrowable) = match no_claims {
        None => (
            serve_new_nodes(free, pods, config.max_blocks_per_host),
            free.addresses() + free_in_claimed,
        ),
        Some(_) => {
            let none = Served {
                nodes: 0,
                blocks: 0,
                limit: super::Limit::Blocks,
            };
            let claimed_only = if pool.disabled { 0 } else { free_in_claimed };
            (none, claimed_only)
        }
    };
    NewNodes {
        no_claims,
        own_blocks,
        with_borrowing: (!config.strict_affinity).then(|| nodes_borrowing(borrowable, pods)),
    }
}

fn forecast_pool(
    ctx: &Context,
    pool: &PoolInfo,
    blocks: &[Block],
    nodes: &[Node],
    pods_per_node: Option<u64>,
) -> Result<LivePlan, LivePlanError> {
    let t = tally(ctx, pool, blocks);
    let measured = measure(&t.in_use);
    let pods = pods_to_forecast(pool, &t, measured, pods_per_node)?;
    let config = &ctx.config;
    let free = FreeBlocks::of_tiling(&pool.tiling, &unavailable(pool, blocks, &t.claimed));
    let free_addresses = free.addresses() + t.free_in_claimed;
    let owned = blocks_per_node(blocks);
    let mut rooms: Vec<NodeRoom> = t
        .free
        .iter()
        .map(|(node, &free)| NodeRoom {
            node: node.clone(),
            free,
            blocks: owned.get(node.as_str()).copied().unwrap_or(0),
        })
        .collect();
    rooms.sort_by(|a, b| a.free.cmp(&b.free).then_with(|| a.node.cmp(&b.node)));
    let new_nodes = forecast_new_nodes(ctx, pool, &free, t.free_in_claimed, pods);
    Ok(LivePlan {
        pool: pool.name.clone(),
        tiling: pool.tiling,
        node_selector: pool.node_selector.to_string(),
        strict_affinity: config.strict_affinity,
        max_blocks_per_host: config.max_blocks_per_host,
        node_records: node_records(pool, nodes, blocks),
        in_use: t.total_in_use,
        nodes: rooms,
        measured,
        pods_per_node: pods,
        blocks: pool.tiling.block_count(),
        blocks_claimed: t.claimed.len() as u128,
        blocks_free: free.count,
        blocks_per_new_node: blocks_needed(pods, u128::from(free.block_len)),
        no_claims: new_nodes.no_claims,
        own_blocks: new_nodes.own_blocks,
        with_borrowing: new_nodes.with_borrowing,
        free_addresses,
        partly_used_blocks: t.partly_used,
        stranded: t.stranded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Op};

    fn put(store: &MemoryStore, key: String, value: Vec<u8>) {
        store.txn(&[], &[Op::Put(key, value)]).unwrap();
    }

    fn put_block(store: &MemoryStore, cidr: &str, node: &str, used: u32) {
        let cidr: IpNet = cidr.parse().unwrap();
        let mut block = Block::new(cidr, "10.1.0.0/24".parse().unwrap(), Some(node.into()));
        block.allocations = (1..=used).map(|o| (o, format!("h-{node}"))).collect();
        put(
            store,
            keys::block(node, &cidr),
            serde_json::to_vec(&block).unwrap(),
        );
    }

    /// Pool `p`: 10.1.0.0/24 in /28 blocks, node n1 holding 10 addresses in its third block.
    fn pool_store() -> MemoryStore {
        let store = MemoryStore::default();
        let pool = serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.1.0.0/24", "blockSize": 28}
        });
        put(&store, keys::pool("p"), serde_json::to_vec(&pool).unwrap());
        put_block(&store, "10.1.0.32/28", "n1", 10);
        store
    }

    #[test]
    fn new_nodes_claim_the_free_blocks() {
        let live = plan_pool(&pool_store(), "p", None).unwrap();
        assert_eq!(live.measured.map(|m| m.mean), Some(10));
        assert_eq!((live.blocks_claimed, live.blocks_free), (1, 15));
        assert_eq!(live.own_blocks.nodes, 15);
        assert_eq!(live.with_borrowing, Some(24));
        assert_eq!(live.free_addresses, 254 - 10);
    }

    #[test]
    fn blocks_a_deleted_pool_left_are_passed_over() {
        let store = pool_store();
        put_block(&store, "10.1.0.64/26", "gone", 1);
        let live = plan_pool(&store, "p", None).unwrap();
        assert_eq!(live.blocks_free, 11);
        assert_eq!(live.own_blocks.nodes, 11);
    }

    #[test]
    fn without_automatic_blocks_new_nodes_only_borrow() {
        let store = pool_store();
        let config = serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPAMConfiguration",
            "metadata": {"name": "default"},
            "spec": {"autoAllocateBlocks": false}
        });
        put(
            &store,
            keys::IPAM_CONFIG.into(),
            serde_json::to_vec(&config).unwrap(),
        );
        let live = plan_pool(&store, "p", None).unwrap();
        assert!(live.no_claims.is_some());
        assert_eq!(live.own_blocks.nodes, 0);
        assert_eq!(live.with_borrowing, Some(0));
        let live = plan_pool(&store, "p", Some(3)).unwrap();
        assert_eq!(live.with_borrowing, Some(2));
    }
}
