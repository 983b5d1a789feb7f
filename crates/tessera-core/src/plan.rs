//! Capacity planning for a Calico-style pool: how many nodes and pods a pool with a given
//! block size and `maxBlocksPerHost` serves, and what runs out first. The arithmetic uses the
//! allocator's own block tiling and kept-back addresses, so forecast and allocator agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::ipam::{block_len_u32, is_edge_address};
use crate::net::Tiling;

mod live;

pub use live::{
    plan_pool, LivePlan, LivePlanError, Measured, NodeRecords, NodeRoom, CLOSEST_NODES,
};

/// Smallest and largest block prefix for IPv4 pools (Calico's blockSize range).
pub const V4_BLOCK_RANGE: (u8, u8) = (20, 32);
/// Smallest and largest block prefix for IPv6 pools (Calico's blockSize range).
pub const V6_BLOCK_RANGE: (u8, u8) = (116, 128);
/// Calico's default block prefix for IPv4 pools.
pub const V4_DEFAULT_BLOCK: u8 = 26;
/// Calico's default block prefix for IPv6 pools.
pub const V6_DEFAULT_BLOCK: u8 = 122;
/// The recommended CIDR leaves room for this many times the addresses the cluster needs.
const HEADROOM: u128 = 2;

/// What the planner was asked; `None` fields are recommended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRequest {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Pods on each node.
    pub pods_per_node: u64,
    /// The pool; `None` recommends one.
    pub cidr: Option<IpNet>,
    /// Block prefix length; `None` recommends one.
    pub block_prefix: Option<u8>,
    /// IPAMConfiguration maxBlocksPerHost; 0 is no limit.
    pub max_blocks_per_host: u32,
    /// Plan an IPv6 pool.
    pub ipv6: bool,
    /// IPAMConfiguration strictAffinity: when off (Calico's default), a node with no block of
    /// its own left borrows addresses from other nodes' partly used blocks.
    pub strict_affinity: bool,
}

/// Why a request cannot be planned; each names the flag at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A count that must be positive is zero.
    #[error("{flag} must be at least 1")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// The block size does not fit the address family.
    #[error("--block-size {size} is out of range for {family}: use {min} to {max}")]
    BlockSize {
        /// The given prefix length.
        size: u8,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Smallest allowed prefix.
        min: u8,
        /// Largest allowed prefix.
        max: u8,
    },
    /// The CIDR holds less than one block.
    #[error("--cidr {cidr} is smaller than one /{block} block: use a larger CIDR or a larger --block-size")]
    CidrTooSmall {
        /// The pool.
        cidr: IpNet,
        /// The block prefix.
        block: u8,
    },
    /// The CIDR's family is not the one asked for.
    #[error(
        "--cidr {cidr} is {actual} but {wanted} was asked for: drop --ipv6 or give an IPv6 CIDR"
    )]
    FamilyMismatch {
        /// The pool.
        cidr: IpNet,
        /// The CIDR's family.
        actual: &'static str,
        /// The requested family.
        wanted: &'static str,
    },
    /// No private range is large enough.
    #[error("{addresses} addresses needed: more than the largest private range; lower --nodes or --pods-per-node")]
    TooLarge {
        /// Addresses needed.
        addresses: u128,
    },
}

/// What runs out first as the cluster grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A node needs more blocks than maxBlocksPerHost allows.
    BlocksPerHost,
    /// Every block is claimed by a node.
    Blocks,
    /// The pool has no free address left.
    Addresses,
}

/// The forecast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The pool planned (given or recommended).
    pub cidr: IpNet,
    /// Block prefix length (given or recommended).
    pub block_prefix: u8,
    /// maxBlocksPerHost (0 = none).
    pub max_blocks_per_host: u32,
    /// Blocks in the pool.
    pub blocks: u128,
    /// Addresses per block.
    pub block_len: u32,
    /// Addresses of a block that can be handed out, in the worst block (the pool's network
    /// and broadcast addresses are kept back).
    pub usable_per_block: u32,
    /// Addresses of the whole pool that can be handed out.
    pub usable_addresses: u128,
    /// Blocks each node needs for its pods.
    pub blocks_per_node: u64,
    /// Whether the nodes holding the pool's first or last block need one block more, for
    /// the kept-back address in it.
    pub edge_nodes_need_extra_block: bool,
    /// Pods a node can hold in its own blocks, on the node holding the pool's first block
    /// (`None` = no per-host limit).
    pub pods_per_node_limit: Option<u128>,
    /// Nodes that get all their pods from their own blocks.
    pub nodes_in_own_blocks: u128,
    /// Nodes that get all their pods: from their own blocks, and with strictAffinity off
    /// also from addresses borrowed from other nodes' blocks.
    pub nodes_served: u128,
    /// Pods those nodes hold.
    pub pods_served: u128,
    /// Addresses held in the nodes' blocks but unused, when every node has its blocks.
    pub wasted_addresses: u128,
    /// What stops the requested cluster, or `None` when it fits.
    pub breaks_first: Option<Limit>,
}

/// Plans `request`: validates it, fills in the recommended CIDR and block size, and computes
/// the forecast.
pub fn plan(request: &PlanRequest) -> Result<Plan, PlanError> {
    check_counts(request)?;
    let ipv6 = match request.cidr {
        Some(cidr) => check_family(cidr, request.ipv6)?,
        None => request.ipv6,
    };
    let block_prefix = match request.block_prefix {
        Some(size) => check_block_size(size, ipv6)?,
        None => recommend_block_prefix(request.pods_per_node, ipv6),
    };
    let cidr = match request.cidr {
        Some(cidr) => cidr.trunc(),
        None => recommend_cidr(request, block_prefix, ipv6)?,
    };
    let tiling = Tiling::new(cidr, block_prefix).ok_or(PlanError::CidrTooSmall {
        cidr,
        block: block_prefix,
    })?;
    Ok(forecast(request, &tiling))
}

fn check_counts(request: &PlanRequest) -> Result<(), PlanError> {
    if request.nodes == 0 {
        return Err(PlanError::Zero { flag: "--nodes" });
    }
    if request.pods_per_node == 0 {
        return Err(PlanError::Zero {
            flag: "--pods-per-node",
        });
    }
    Ok(())
}

fn family_name(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The CIDR's family; an IPv4 CIDR with `--ipv6` is an error.
fn check_family(cidr: IpNet, ipv6: bool) -> Result<bool, PlanError> {
    let is_v6 = matches!(cidr, IpNet::V6(_));
    if ipv6 && !is_v6 {
        return Err(PlanError::FamilyMismatch {
            cidr,
            actual: family_name(is_v6),
            wanted: family_name(ipv6),
        });
    }
    Ok(is_v6)
}

fn block_range(ipv6: bool) -> (u8, u8) {
    if ipv6 {
        V6_BLOCK_RANGE
    } else {
        V4_BLOCK_RANGE
    }
}

fn check_block_size(size: u8, ipv6: bool) -> Result<u8, PlanError> {
    let (min, max) = block_range(ipv6);
    if (min..=max).contains(&size) {
        Ok(size)
    } else {
        Err(PlanError::BlockSize {
            size,
            family: family_name(ipv6),
            min,
            max,
        })
    }
}

/// Calico's default block, or a smaller one when a node's pods fill far less than it: the
/// smallest power of two holding a node's pods, but no smaller than 8 addresses so a node
/// does not claim a new block for every few pods.
pub fn recommend_block_prefix(pods_per_node: u64, ipv6: bool) -> u8 {
    let (default, bits): (u8, u8) = if ipv6 {
        (V6_DEFAULT_BLOCK, 128)
    } else {
        (V4_DEFAULT_BLOCK, 32)
    };
    let needed_bits = bits_for(u128::from(pods_per_node)).max(3);
    bits.saturating_sub(needed_bits).max(default)
}

/// Bits needed to address `count` items: ceil(log2(count)).
fn bits_for(count: u128) -> u8 {
    match count {
        0 | 1 => 0,
        n => (128 - (n - 1).leading_zeros()) as u8,
    }
}

/// The smallest private CIDR (10.0.0.0/8 for IPv4, fd00::/48 and larger for IPv6) whose
/// blocks serve every node with `HEADROOM` to spare.
fn recommend_cidr(request: &PlanRequest, block_prefix: u8, ipv6: bool) -> Result<IpNet, PlanError> {
    let block_len = 1u128 << ((if ipv6 { 128 } else { 32 }) - block_prefix);
    let per_node = blocks_needed(request.pods_per_node, block_len - 1);
    let addresses = u128::from(request.nodes)
        .saturating_mul(u128::from(per_node))
        .saturating_mul(block_len)
        .saturating_mul(HEADROOM);
    let bits = bits_for(addresses);
    let (network, family_len, widest): (IpAddr, u8, u8) = if ipv6 {
        (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0).into(), 128, 8)
    } else {
        (Ipv4Addr::new(10, 0, 0, 0).into(), 32, 8)
    };
    let prefix = family_len.saturating_sub(bits).min(block_prefix);
    let prefix = if ipv6 { prefix.min(48) } else { prefix };
    if prefix < widest || bits > family_len {
        return Err(PlanError::TooLarge { addresses });
    }
    Ok(IpNet::new(network, prefix)
        .expect("prefix within family")
        .trunc())
}

fn blocks_needed(pods: u64, usable_per_block: u128) -> u64 {
    let blocks = u128::from(pods).div_ceil(usable_per_block.max(1));
    u64::try_from(blocks).unwrap_or(u64::MAX)
}

/// Addresses of the pool the allocator keeps back in each block holding one, and how many
/// blocks hold one.
struct KeptBack {
    per_block: u32,
    blocks: u32,
}

fn kept_back(tiling: &Tiling) -> KeptBack {
    let pool = tiling.pool;
    let first = is_edge_address(&pool, pool.network());
    let last = pool.broadcast() != pool.network() && is_edge_address(&pool, pool.broadcast());
    let total = u32::from(first) + u32::from(last);
    if tiling.block_count() == 1 {
        KeptBack {
            per_block: total,
            blocks: u32::from(total > 0),
        }
    } else {
        KeptBack {
            per_block: total.min(1),
            blocks: total,
        }
    }
}

/// The unclaimed blocks of a pool in the order the allocator claims them (lowest ordinal
/// first, blocks with no address to hand out passed over), and how many addresses each
/// hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeBlocks {
    /// Unclaimed blocks with at least one address to hand out.
    pub count: u128,
    /// Addresses in a block; every unclaimed block hands out that many but the `short` ones.
    pub block_len: u32,
    /// Blocks holding a kept-back address of the pool: (position among the unclaimed blocks,
    /// addresses it hands out), by position.
    pub short: Vec<(u128, u32)>,
}

impl FreeBlocks {
    /// The unclaimed blocks of `tiling`, given the ordinals already claimed (sorted).
    pub fn of_tiling(tiling: &Tiling, claimed: &[u128]) -> Self {
        let pool = tiling.pool;
        let block_len = block_len_u32(tiling);
        let kept = kept_back(tiling);
        let mut edge_blocks: Vec<u128> = [pool.network(), pool.broadcast()]
            .into_iter()
            .filter(|&edge| is_edge_address(&pool, edge))
            .filter_map(|edge| tiling.block_ordinal_of(edge))
            .filter(|ordinal| claimed.binary_search(ordinal).is_err())
            .collect();
        edge_blocks.dedup();
        let mut count = tiling.block_count().saturating_sub(claimed.len() as u128);
        let mut short = Vec::new();
        let usable = block_len.saturating_sub(kept.per_block);
        for ordinal in edge_blocks {
            if usable == 0 {
                // The allocator never claims a block with nothing to hand out.
                count -= 1;
                continue;
            }
            let rank = ordinal - claimed.partition_point(|&c| c < ordinal) as u128;
            short.push((rank, usable));
        }
        Self {
            count,
            block_len,
            short,
        }
    }

    /// Addresses the blocks at positions `from..to` hand out.
    fn addresses_in(&self, from: u128, to: u128) -> u128 {
        let shortfall: u128 = self
            .short
            .iter()
            .filter(|&&(pos, _)| from <= pos && pos < to)
            .map(|&(_, usable)| u128::from(self.block_len - usable))
            .sum();
        (to - from)
            .saturating_mul(u128::from(self.block_len))
            .saturating_sub(shortfall)
    }

    /// Addresses all the unclaimed blocks hand out.
    pub fn addresses(&self) -> u128 {
        self.addresses_in(0, self.count)
    }
}

/// How many new nodes, each asking for the same number of addresses, the allocator serves
/// from blocks of their own, and why the next one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// New nodes that get all their addresses from blocks they claim.
    pub nodes: u128,
    /// Blocks those nodes claim.
    pub blocks: u128,
    /// Why the next node does not: [`Limit::Blocks`] or [`Limit::BlocksPerHost`].
    pub limit: Limit,
}

/// New nodes claim free blocks one after the other, as the allocator does: each takes the
/// lowest unclaimed blocks until they hold `pods` addresses, and at most
/// `max_blocks_per_host` of them (0 = no limit).
pub fn serve_new_nodes(free: &FreeBlocks, pods: u64, max_blocks_per_host: u32) -> Served {
    let pods = u128::from(pods.max(1));
    let per_node = pods.div_ceil(u128::from(free.block_len.max(1)));
    let max = match max_blocks_per_host {
        0 => u128::MAX,
        n => u128::from(n),
    };
    let mut served = Served {
        nodes: 0,
        blocks: 0,
        limit: Limit::Blocks,
    };
    // Each turn either jumps over the nodes that fit before the next short block or places
    // one node; short blocks are at most two, so the loop ends after a few turns.
    loop {
        let pos = served.blocks;
        let next_short = free
            .short
            .iter()
            .map(|&(p, _)| p)
            .find(|&p| p >= pos)
            .unwrap_or(free.count);
        let plain = (next_short - pos) / per_node;
        if plain > 0 && per_node <= max {
            served.nodes += plain;
            served.blocks += plain * per_node;
            continue;
        }
        let mut taken = per_node.min(free.count - pos);
        while free.addresses_in(pos, pos + taken) < pods && pos + taken < free.count {
            taken += 1;
        }
        if taken > max {
            served.limit = Limit::BlocksPerHost;
            return served;
        }
        if free.addresses_in(pos, pos + taken) < pods {
            served.limit = Limit::Blocks;
            return served;
        }
        served.nodes += 1;
        served.blocks += taken;
    }
}

/// New nodes with strictAffinity off: every free address of the pool serves, those of free
/// blocks and, once no free block is left, those borrowed from partly used blocks.
pub fn nodes_borrowing(free_addresses: u128, pods: u64) -> u128 {
    free_addresses / u128::from(pods.max(1))
}

fn forecast(request: &PlanRequest, tiling: &Tiling) -> Plan {
    let block_len = block_len_u32(tiling);
    let blocks = tiling.block_count();
    let kept = kept_back(tiling);
    let pods = u128::from(request.pods_per_node);
    let free = FreeBlocks::of_tiling(tiling, &[]);
    let usable_addresses = free.addresses();
    let blocks_per_node = blocks_needed(request.pods_per_node, u128::from(block_len));
    let claimed = u128::from(blocks_per_node);
    // A node holding a block with a kept-back address needs one more block when its
    // blocks have no spare address to absorb it (nodes claim blocks from the pool's start).
    let slack = claimed
        .saturating_mul(u128::from(block_len))
        .saturating_sub(pods);
    let edge_needs_extra = kept.blocks > 0 && slack < u128::from(kept.per_block);
    let max = request.max_blocks_per_host;
    let pods_per_node_limit = (max > 0).then(|| {
        (u128::from(max) * u128::from(block_len)).saturating_sub(u128::from(kept.per_block))
    });
    let own = serve_new_nodes(&free, request.pods_per_node, max);
    let nodes_served = if request.strict_affinity {
        own.nodes
    } else {
        nodes_borrowing(usable_addresses, request.pods_per_node).max(own.nodes)
    };
    let nodes = u128::from(request.nodes);
    let breaks_first = if nodes <= nodes_served {
        None
    } else if request.strict_affinity {
        Some(own.limit)
    } else {
        Some(Limit::Addresses)
    };
    let held = nodes
        .saturating_mul(claimed)
        .saturating_mul(u128::from(block_len));
    Plan {
        cidr: tiling.pool,
        block_prefix: tiling.block_prefix,
        max_blocks_per_host: max,
        blocks,
        block_len,
        usable_per_block: block_len - kept.per_block,
        usable_addresses,
        blocks_per_node,
        edge_nodes_need_extra_block: edge_needs_extra,
        pods_per_node_limit,
        nodes_in_own_blocks: own.nodes,
        nodes_served,
        pods_served: nodes_served.saturating_mul(pods),
        wasted_addresses: held.saturating_sub(nodes.saturating_mul(pods)),
        breaks_first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(nodes: u64, pods: u64) -> PlanRequest {
        PlanRequest {
            nodes,
            pods_per_node: pods,
            cidr: None,
            block_prefix: None,
            max_blocks_per_host: 0,
            ipv6: false,
            strict_affinity: true,
        }
    }

    fn with_pool(nodes: u64, pods: u64, cidr: &str, block: u8, max: u32) -> PlanRequest {
        PlanRequest {
            cidr: Some(cidr.parse().unwrap()),
            block_prefix: Some(block),
            max_blocks_per_host: max,
            ..request(nodes, pods)
        }
    }

    #[test]
    fn small_pool_serves_one_node_per_block() {
        let plan = plan(&with_pool(20, 10, "10.1.0.0/24", 28, 0)).unwrap();
        assert_eq!(plan.blocks, 16);
        assert_eq!(plan.block_len, 16);
        assert_eq!(plan.usable_per_block, 15);
        assert_eq!(plan.usable_addresses, 254);
        assert_eq!(plan.blocks_per_node, 1);
        assert_eq!(plan.nodes_served, 16);
        assert_eq!(plan.pods_served, 160);
        assert_eq!(plan.wasted_addresses, 20 * 6);
        assert_eq!(plan.breaks_first, Some(Limit::Blocks));
    }

    #[test]
    fn full_blocks_leave_the_edge_nodes_one_block_short() {
        let plan = plan(&with_pool(16, 16, "10.1.0.0/24", 28, 0)).unwrap();
        assert_eq!(plan.blocks_per_node, 1);
        assert!(plan.edge_nodes_need_extra_block);
        assert_eq!(plan.nodes_served, 14);
        assert_eq!(plan.breaks_first, Some(Limit::Blocks));
        let single = plan_of(&with_pool(1, 15, "10.1.0.0/28", 28, 0));
        assert_eq!(single.nodes_served, 0);
        let single = plan_of(&with_pool(1, 14, "10.1.0.0/28", 28, 0));
        assert_eq!(single.nodes_served, 1);
    }

    fn plan_of(request: &PlanRequest) -> Plan {
        plan(request).unwrap()
    }

    #[test]
    fn per_host_limit_breaks_before_blocks() {
        let plan = plan(&with_pool(2, 40, "10.1.0.0/24", 28, 2)).unwrap();
        assert_eq!(plan.blocks_per_node, 3);
        assert_eq!(plan.pods_per_node_limit, Some(31));
        assert_eq!(plan.nodes_served, 0);
        assert_eq!(plan.breaks_first, Some(Limit::BlocksPerHost));
    }

    #[test]
    fn fitting_cluster_breaks_nowhere() {
        let plan = plan(&with_pool(4, 30, "10.1.0.0/24", 28, 2)).unwrap();
        assert_eq!(plan.blocks_per_node, 2);
        assert_eq!(plan.nodes_served, 8);
        assert_eq!(plan.breaks_first, None);
    }

    #[test]
    fn without_strict_affinity_every_address_serves() {
        let loose = PlanRequest {
            strict_affinity: false,
            ..with_pool(20, 20, "10.1.0.0/24", 28, 2)
        };
        let plan = plan(&loose).unwrap();
        assert_eq!(plan.nodes_in_own_blocks, 8);
        assert_eq!(plan.nodes_served, 12);
        assert_eq!(plan.breaks_first, Some(Limit::Addresses));
    }

    #[test]
    fn free_blocks_pass_over_claimed_ones() {
        let tiling = Tiling::new("10.1.0.0/24".parse().unwrap(), 28).unwrap();
        let free = FreeBlocks::of_tiling(&tiling, &[0, 1, 2]);
        assert_eq!(free.count, 13);
        assert_eq!(free.short, vec![(12, 15)]);
        assert_eq!(free.addresses(), 13 * 16 - 1);
        let served = serve_new_nodes(&free, 16, 0);
        assert_eq!((served.nodes, served.limit), (12, Limit::Blocks));
        let tiny = Tiling::new("10.1.0.0/30".parse().unwrap(), 32).unwrap();
        let free = FreeBlocks::of_tiling(&tiny, &[]);
        assert_eq!((free.count, free.addresses()), (2, 2));
    }

    #[test]
    fn recommends_default_blocks_for_busy_nodes_and_smaller_for_few_pods() {
        assert_eq!(recommend_block_prefix(110, false), 26);
        assert_eq!(recommend_block_prefix(10, false), 28);
        assert_eq!(recommend_block_prefix(2, false), 29);
        assert_eq!(recommend_block_prefix(110, true), 122);
        assert_eq!(recommend_block_prefix(10, true), 124);
    }

    #[test]
    fn recommended_cidr_serves_the_cluster_with_headroom() {
        let plan = plan(&request(100, 110)).unwrap();
        assert_eq!(plan.block_prefix, 26);
        assert_eq!(plan.cidr, "10.0.0.0/17".parse::<IpNet>().unwrap());
        assert!(plan.nodes_served >= 200);
        assert_eq!(plan.breaks_first, None);
        let v6 = plan_v6(100, 110);
        assert_eq!(v6.cidr, "fd00::/48".parse::<IpNet>().unwrap());
        assert_eq!(v6.block_prefix, 122);
    }

    fn plan_v6(nodes: u64, pods: u64) -> Plan {
        plan(&PlanRequest {
            ipv6: true,
            ..request(nodes, pods)
        })
        .unwrap()
    }

    #[test]
    fn huge_input_does_not_overflow() {
        let huge = with_pool(u64::MAX, u64::MAX, "::/0", 116, 0);
        let plan = plan(&huge).unwrap();
        assert_eq!(plan.blocks_per_node, 1 << 52);
        let err = super::plan(&request(u64::MAX, u64::MAX)).unwrap_err();
        assert!(matches!(err, PlanError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn bad_input_names_the_flag() {
        let err = plan(&request(0, 10)).unwrap_err();
        assert!(err.to_string().contains("--nodes"), "{err}");
        let err = plan(&request(3, 0)).unwrap_err();
        assert!(err.to_string().contains("--pods-per-node"), "{err}");
        let err = plan(&with_pool(3, 10, "10.1.0.0/24", 19, 0)).unwrap_err();
        assert!(err.to_string().contains("--block-size 19"), "{err}");
        let err = plan(&with_pool(3, 10, "10.1.0.0/28", 26, 0)).unwrap_err();
        assert!(err.to_string().contains("--cidr 10.1.0.0/28"), "{err}");
        let mismatch = PlanRequest {
            ipv6: true,
            ..with_pool(3, 10, "10.1.0.0/24", 122, 0)
        };
        let err = plan(&mismatch).unwrap_err();
        assert!(err.to_string().contains("--ipv6"), "{err}");
    }
}
