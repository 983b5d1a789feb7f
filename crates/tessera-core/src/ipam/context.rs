//! What the allocator knows about the cluster for one request: configuration, pools,
//! reservations, the node and the namespace, all read in one snapshot.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::keys;
use crate::net::{net_first, net_size, Tiling};
use crate::resources::{
    AllowedUse, AssignmentMode, IPAMConfiguration, IPAMConfigurationSpec, IPPool, IPReservation,
    Namespace, Node,
};
use crate::selector::Selector;
use crate::store::KeyValue;

use super::records::decode;
use super::IpamError;

/// A pool as the allocator sees it.
#[derive(Clone, Debug)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Store key of the pool record.
    pub key: String,
    /// Revision of the pool record when read.
    pub revision: i64,
    /// How the pool is cut into blocks.
    pub tiling: Tiling,
    /// Which nodes the pool serves.
    pub node_selector: Selector,
    /// Which namespaces the pool serves, if restricted.
    pub namespace_selector: Option<Selector>,
    /// Disabled pools hand out nothing new.
    pub disabled: bool,
    /// Manual pools are used only when named.
    pub manual: bool,
    /// Whether workloads may take addresses from the pool.
    pub workload: bool,
}

impl PoolInfo {
    /// Reads a stored pool record.
    pub fn from_kv(kv: &KeyValue) -> Result<Self, IpamError> {
        let pool: IPPool = decode(kv)?;
        let corrupt = |reason: String| IpamError::CorruptRecord {
            key: kv.key.clone(),
            reason,
        };
        let cidr: IpNet = pool
            .spec
            .cidr
            .parse()
            .map_err(|e| corrupt(format!("spec.cidr {:?}: {e}", pool.spec.cidr)))?;
        let default_block = if matches!(cidr, IpNet::V4(_)) {
            26
        } else {
            122
        };
        let block_prefix = pool.spec.block_size.unwrap_or(default_block);
        let tiling = Tiling::new(cidr, block_prefix)
            .ok_or_else(|| corrupt(format!("blockSize {block_prefix} does not fit {cidr}")))?;
        let node_selector = match pool.spec.node_selector.as_deref() {
            None => Selector::all(),
            Some(s) => Selector::parse(s).map_err(|e| corrupt(e.to_string()))?,
        };
        let namespace_selector = pool
            .spec
            .namespace_selector
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(Selector::parse)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?;
        let workload = pool
            .spec
            .allowed_uses
            .as_ref()
            .is_none_or(|uses| uses.contains(&AllowedUse::Workload));
        Ok(Self {
            name: pool.metadata.name,
            key: kv.key.clone(),
            revision: kv.mod_revision,
            tiling,
            node_selector,
            namespace_selector,
            disabled: pool.spec.disabled,
            manual: pool.spec.assignment_mode == Some(AssignmentMode::Manual),
            workload,
        })
    }

    /// The pool's network.
    pub fn cidr(&self) -> IpNet {
        self.tiling.pool
    }

    /// True for IPv6 pools.
    pub fn is_v6(&self) -> bool {
        self.tiling.is_v6()
    }

    /// An IPv4 pool's own network and broadcast addresses are never handed out (pools of
    /// /31 and /32 have no such addresses to spare).
    pub fn is_edge_address(&self, addr: IpAddr) -> bool {
        is_edge_address(&self.cidr(), addr)
    }
}

/// Cluster state one allocation decision needs.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// IPAM configuration (defaults when none is stored).
    pub config: IPAMConfigurationSpec,
    /// Every pool, sorted by name.
    pub pools: Vec<PoolInfo>,
    /// Reserved networks with the name of the reservation that holds them.
    pub reservations: Vec<(String, IpNet)>,
    /// Labels of the node (empty when the node is not registered).
    pub node_labels: BTreeMap<String, String>,
    /// The pod's namespace, when known and stored.
    pub namespace: Option<Namespace>,
    /// Tilings that hold claimed blocks (current pools and leftovers of deleted ones).
    pub tilings: Vec<Tiling>,
}

impl Context {
    /// Builds the context from the `config/` range and optional node and namespace records.
    pub fn from_records(
        config: &[KeyValue],
        node: Option<&KeyValue>,
        namespace: Option<&KeyValue>,
    ) -> Result<Self, IpamError> {
        let mut ctx = Context::default();
        for kv in config {
            if kv.key == keys::IPAM_CONFIG {
                let c: IPAMConfiguration = decode(kv)?;
                ctx.config = c.spec;
            } else if kv.key.starts_with(keys::POOL_PREFIX) {
                ctx.pools.push(PoolInfo::from_kv(kv)?);
            } else if let Some(t) = kv.key.strip_prefix(keys::TILING_PREFIX) {
                let tiling = Tiling::parse_key(t).ok_or_else(|| IpamError::CorruptRecord {
                    key: kv.key.clone(),
                    reason: "the key does not name a pool network and block size".into(),
                })?;
                ctx.tilings.push(tiling);
            } else if kv.key.starts_with(keys::RESERVATION_PREFIX) {
                let r: IPReservation = decode(kv)?;
                for text in &r.spec.reserved_cidrs {
                    let net = parse_net_or_addr(text).ok_or_else(|| IpamError::CorruptRecord {
                        key: kv.key.clone(),
                        reason: format!("reservedCIDRs entry {text:?} is not a CIDR or address"),
                    })?;
                    ctx.reservations.push((r.metadata.name.clone(), net));
                }
            }
        }
        ctx.pools.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(kv) = node {
            let n: Node = decode(kv)?;
            ctx.node_labels = n.metadata.labels;
        }
        if let Some(kv) = namespace {
            ctx.namespace = Some(decode(kv)?);
        }
        Ok(ctx)
    }

    /// The pool with this name.
    pub fn pool_by_name(&self, name: &str) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool whose network is exactly `cidr`.
    pub fn pool_by_cidr(&self, cidr: &IpNet) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.cidr() == *cidr)
    }

    /// The pool whose tiling is `tiling`, if it still exists.
    pub fn pool_by_tiling(&self, tiling: &Tiling) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.tiling == *tiling)
    }

    /// Tilings with claimed blocks that overlap `pool` but belong to no current pool: blocks
    /// left behind by a deleted pool, or by a pool created again with another block size.
    pub fn leftover_tilings(&self, pool: &PoolInfo) -> Vec<Tiling> {
        self.tilings
            .iter()
            .filter(|t| **t != pool.tiling && self.pool_by_tiling(t).is_none())
            .filter(|t| crate::net::nets_overlap(&t.pool, &pool.cidr()))
            .copied()
            .collect()
    }

    /// The pool containing `addr`.
    pub fn pool_containing(&self, addr: IpAddr) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.cidr().contains(&addr))
    }

    /// The reservation holding `addr`, if any.
    pub fn reservation_of(&self, addr: IpAddr) -> Option<&str> {
        self.reservations
            .iter()
            .find(|(_, net)| net.contains(&addr))
            .map(|(name, _)| name.as_str())
    }

    /// Reserved networks that intersect `block`.
    pub fn reservations_in(&self, block: &IpNet) -> Vec<IpNet> {
        self.reservations
            .iter()
            .filter(|(_, net)| crate::net::nets_overlap(net, block))
            .map(|(_, net)| *net)
            .collect()
    }

    /// When block `ordinal` of `pool` has no address that could ever be handed out (covered
    /// by reservations, or only the pool's edge addresses), the next ordinal worth trying.
    pub fn skip_unusable_block(&self, pool: &PoolInfo, ordinal: u128) -> Option<u128> {
        let block = pool.tiling.block(ordinal)?;
        if let Some(cover) =
            self.reservations.iter().map(|(_, net)| net).find(|net| {
                net.contains(&block.network()) && net.prefix_len() <= block.prefix_len()
            })
        {
            // Every block up to the end of the covering reservation is unusable too.
            let end = net_first(cover) + (net_size(cover) - 1);
            let end_ord = pool
                .tiling
                .block_ordinal_of(crate::net::u128_to_addr(end, pool.is_v6()))
                .unwrap_or(pool.tiling.block_count() - 1);
            return Some(end_ord + 1);
        }
        let usable = (0..block_len_u32(&pool.tiling)).any(|off| {
            let addr = crate::net::addr_in_block(&block, off);
            !pool.is_edge_address(addr) && self.reservation_of(addr).is_none()
        });
        (!usable).then_some(ordinal + 1)
    }
}

/// Whether `addr` is the network or broadcast address of an IPv4 pool of /30 or larger.
pub fn is_edge_address(pool: &IpNet, addr: IpAddr) -> bool {
    matches!(pool, IpNet::V4(_))
        && pool.prefix_len() <= 30
        && (addr == pool.network() || addr == pool.broadcast())
}

/// Block length as u32 (blocks hold at most 2^12 addresses for valid pools; clamp otherwise).
pub fn block_len_u32(tiling: &Tiling) -> u32 {
    u32::try_from(tiling.block_len()).unwrap_or(u32::MAX)
}

/// Parses `10.0.0.0/24` or a bare address (as a /32 or /128).
pub fn parse_net_or_addr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}
