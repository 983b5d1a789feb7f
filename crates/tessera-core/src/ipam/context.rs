//! What the allocator knows about the cluster for one request: configuration, pools,
//! reservations, the node and the namespace, all read in one snapshot.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::keys;
use crate::net::{net_first, Tiling};
use crate::ranges::IpRangeSet;
use crate::resources::calico::{
    AllowedUse, AssignmentMode, IPAMConfiguration, IPAMConfigurationSpec, IPPool, IPReservation,
};
use crate::resources::kube::{Namespace, Node};
use crate::resources::meta::LabelSelector;
use crate::resources::spider::{Route, SpiderIPPool, SpiderReservedIP};
use crate::selector::Selector;
use crate::store::KeyValue;
use crate::validate::calico::effective_block_size;

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
    /// Set for Spiderpool pools: explicit addresses, gateway, routes and affinities.
    pub spider: Option<SpiderInfo>,
}

/// What a SpiderIPPool adds to a pool: its own address set inside a shared subnet tiling,
/// what workloads get with an address, and who may use it.
#[derive(Clone, Debug)]
pub struct SpiderInfo {
    /// `ips` minus `excludeIPs`.
    pub addresses: IpRangeSet,
    /// Gateway for workloads.
    pub gateway: Option<IpAddr>,
    /// Routes for workloads.
    pub routes: Vec<Route>,
    /// VLAN id.
    pub vlan: Option<i64>,
    /// A cluster default pool.
    pub default: bool,
    /// Pod label selector.
    pub pod_affinity: Option<LabelSelector>,
    /// Namespace label selector.
    pub namespace_affinity: Option<LabelSelector>,
    /// Namespaces allowed by name.
    pub namespace_name: Vec<String>,
    /// Node label selector.
    pub node_affinity: Option<LabelSelector>,
    /// Nodes allowed by name.
    pub node_name: Vec<String>,
}

/// Who asks for an address, as the affinity rules of Spiderpool pools see it.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// Node name.
    pub node: &'a str,
    /// Node labels.
    pub node_labels: &'a BTreeMap<String, String>,
    /// Namespace name, if known.
    pub namespace: Option<&'a str>,
    /// Namespace labels.
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Pod labels, if known.
    pub pod_labels: Option<&'a BTreeMap<String, String>>,
}

impl SpiderInfo {
    /// Why the pool refuses the requester, or `None` when it accepts.
    pub fn refusal(&self, who: &Requester<'_>) -> Option<String> {
        if !self.node_name.is_empty() && !self.node_name.iter().any(|n| n == who.node) {
            return Some(format!("nodeName does not list node {:?}", who.node));
        }
        if self
            .node_affinity
            .as_ref()
            .is_some_and(|s| !s.matches(who.node_labels))
        {
            return Some(format!("nodeAffinity does not match node {:?}", who.node));
        }
        let ns = who.namespace.unwrap_or_default();
        if !self.namespace_name.is_empty() && !self.namespace_name.iter().any(|n| n == ns) {
            return Some(format!("namespaceName does not list namespace {ns:?}"));
        }
        if self
            .namespace_affinity
            .as_ref()
            .is_some_and(|s| !s.matches(who.namespace_labels))
        {
            return Some(format!("namespaceAffinity does not match namespace {ns:?}"));
        }
        if let Some(sel) = &self.pod_affinity {
            match who.pod_labels {
                Some(labels) if sel.matches(labels) => {}
                Some(_) => return Some("podAffinity does not match the pod's labels".into()),
                None => {
                    return Some(
                        "podAffinity is set but the pod's labels are not known to the plugin"
                            .into(),
                    )
                }
            }
        }
        None
    }
}

/// Block size of the shared tiling of a Spiderpool subnet: 64 addresses (or the whole subnet
/// when smaller), so that nodes allocating from one pool spread over several records.
pub fn spider_block_prefix(subnet: &IpNet) -> u8 {
    let floor = if matches!(subnet, IpNet::V4(_)) {
        26
    } else {
        122
    };
    subnet.prefix_len().max(floor)
}

impl PoolInfo {
    /// Reads a stored SpiderIPPool record.
    pub fn from_spider_kv(kv: &KeyValue) -> Result<Self, IpamError> {
        let pool: SpiderIPPool = decode(kv)?;
        let corrupt = |reason: String| IpamError::CorruptRecord {
            key: kv.key.clone(),
            reason,
        };
        let subnet: IpNet = pool
            .spec
            .subnet
            .parse()
            .map_err(|e| corrupt(format!("spec.subnet {:?}: {e}", pool.spec.subnet)))?;
        let subnet = subnet.trunc();
        let v6 = matches!(subnet, IpNet::V6(_));
        let ips =
            IpRangeSet::parse(&pool.spec.ips, v6).map_err(|e| corrupt(format!("spec.ips {e}")))?;
        let excluded = IpRangeSet::parse(&pool.spec.exclude_ips, v6)
            .map_err(|e| corrupt(format!("spec.excludeIPs {e}")))?;
        let tiling = Tiling::new(subnet, spider_block_prefix(&subnet))
            .ok_or_else(|| corrupt(format!("subnet {subnet} cannot be tiled")))?;
        let gateway = pool
            .spec
            .gateway
            .as_deref()
            .map(|g| g.trim().parse::<IpAddr>())
            .transpose()
            .map_err(|e| corrupt(format!("spec.gateway: {e}")))?;
        Ok(Self {
            name: pool.metadata.name,
            key: kv.key.clone(),
            revision: kv.mod_revision,
            tiling,
            node_selector: Selector::all(),
            namespace_selector: None,
            disabled: pool.spec.disable.unwrap_or(false),
            manual: true,
            workload: true,
            spider: Some(SpiderInfo {
                addresses: ips.within(&subnet).subtract(&excluded),
                gateway,
                routes: pool.spec.routes,
                vlan: pool.spec.vlan,
                default: pool.spec.default.unwrap_or(false),
                pod_affinity: pool.spec.pod_affinity,
                namespace_affinity: pool.spec.namespace_affinity,
                namespace_name: pool.spec.namespace_name,
                node_affinity: pool.spec.node_affinity,
                node_name: pool.spec.node_name,
            }),
        })
    }

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
        let block_prefix = effective_block_size(&cidr, pool.spec.block_size);
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
            spider: None,
        })
    }

    /// `ip`, from `block` of this pool, with what the workload gets along with it.
    pub fn assigned(&self, ip: IpAddr, block: IpNet) -> super::AssignedAddress {
        let spider = self.spider.as_ref();
        super::AssignedAddress {
            ip,
            pool: self.name.clone(),
            pool_cidr: self.cidr(),
            block,
            gateway: spider.and_then(|s| s.gateway),
            routes: spider.map(|s| s.routes.clone()).unwrap_or_default(),
            vlan: spider.and_then(|s| s.vlan),
        }
    }

    /// The pool's network.
    pub fn cidr(&self) -> IpNet {
        self.tiling.pool
    }

    /// True for IPv6 pools.
    pub fn is_v6(&self) -> bool {
        self.tiling.is_v6()
    }

    /// An IPv4 pool's own network and broadcast addresses, and an IPv6 pool's first address,
    /// are never handed out (see [`is_edge_address`]).
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
    /// Reserved addresses (IPReservation and SpiderReservedIP) by reservation name.
    pub reservations: Vec<(String, IpRangeSet)>,
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
                    ctx.reservations
                        .push((r.metadata.name.clone(), IpRangeSet::from_net(&net)));
                }
            } else if kv.key.starts_with(keys::SPIDER_POOL_PREFIX) {
                ctx.pools.push(PoolInfo::from_spider_kv(kv)?);
            } else if kv.key.starts_with(keys::SPIDER_RESERVED_PREFIX) {
                let r: SpiderReservedIP = decode(kv)?;
                for v6 in [false, true] {
                    let family: Vec<&String> = r
                        .spec
                        .ips
                        .iter()
                        .filter(|e| e.contains(':') == v6)
                        .collect();
                    let set =
                        IpRangeSet::parse(&family, v6).map_err(|e| IpamError::CorruptRecord {
                            key: kv.key.clone(),
                            reason: format!("spec.ips {e}"),
                        })?;
                    if !set.is_empty() {
                        ctx.reservations.push((r.metadata.name.clone(), set));
                    }
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

    /// The pool containing `addr`: the Calico pool whose CIDR holds it, or the Spiderpool
    /// pool whose addresses list it.
    pub fn pool_containing(&self, addr: IpAddr) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| match &p.spider {
            Some(s) => s.addresses.contains(addr),
            None => p.cidr().contains(&addr),
        })
    }

    /// The reservation holding `addr`, if any.
    pub fn reservation_of(&self, addr: IpAddr) -> Option<&str> {
        self.reservations
            .iter()
            .find(|(_, set)| set.contains(addr))
            .map(|(name, _)| name.as_str())
    }

    /// Reserved addresses inside `block`.
    pub fn reserved_in(&self, block: &IpNet) -> IpRangeSet {
        let mut out = IpRangeSet::empty(matches!(block, IpNet::V6(_)));
        for (_, set) in &self.reservations {
            for &(a, b) in set.within(block).ranges() {
                out.insert(a, b);
            }
        }
        out
    }

    /// Addresses of `tiling` that some Spiderpool pool may hand out (`None` for Calico
    /// tilings, where every address of the pool may be used).
    pub fn spider_addresses(&self, tiling: &Tiling) -> Option<IpRangeSet> {
        let mut union: Option<IpRangeSet> = None;
        for p in self.pools.iter().filter(|p| p.tiling == *tiling) {
            let spider = p.spider.as_ref()?;
            let set = union.get_or_insert_with(|| IpRangeSet::empty(p.is_v6()));
            for &(a, b) in spider.addresses.ranges() {
                set.insert(a, b);
            }
        }
        union
    }

    /// When block `ordinal` of `pool` has no address that could ever be handed out (all
    /// reserved, outside a Spiderpool pool's addresses, or only the pool's edge addresses),
    /// the next ordinal worth trying.
    pub fn skip_unusable_block(&self, pool: &PoolInfo, ordinal: u128) -> Option<u128> {
        let block = pool.tiling.block(ordinal)?;
        let mut usable = match &pool.spider {
            Some(s) => s.addresses.within(&block),
            None => IpRangeSet::from_net(&block),
        };
        usable = usable.subtract(&self.reserved_in(&block));
        for edge in [pool.cidr().network(), pool.cidr().broadcast()] {
            if pool.is_edge_address(edge) {
                let v = crate::net::addr_to_u128(edge);
                let mut e = IpRangeSet::empty(pool.is_v6());
                e.insert(v, v);
                usable = usable.subtract(&e);
            }
        }
        if !usable.is_empty() {
            return None;
        }
        // Jump over a reservation (or gap between Spiderpool ranges) spanning many blocks.
        let block_end = net_first(&block) + (crate::net::net_size(&block) - 1);
        let next_usable = match &pool.spider {
            Some(s) => s
                .addresses
                .ranges()
                .iter()
                .find(|&&(_, b)| b > block_end)
                .map(|&(a, _)| a.max(block_end + 1)),
            None => Some(block_end + 1),
        };
        let next_free = next_usable.map(|start| {
            self.reservations
                .iter()
                .flat_map(|(_, set)| set.ranges().iter())
                .find(|&&(a, b)| a <= start && start <= b)
                .map_or(start, |&(_, b)| b.saturating_add(1))
        });
        Some(match next_free {
            Some(addr) => pool
                .tiling
                .block_ordinal_of(crate::net::u128_to_addr(addr, pool.is_v6()))
                .unwrap_or(pool.tiling.block_count())
                .max(ordinal + 1),
            None => pool.tiling.block_count(),
        })
    }
}

/// Whether `addr` is an address of `pool` that is never handed out: the network or
/// broadcast address of an IPv4 pool of /30 or larger, or the subnet-router anycast address
/// (the first, RFC 4291 §2.6.1) of an IPv6 pool of /126 or larger. A /127 is a
/// point-to-point link whose two addresses are both used (RFC 6164), as are /31s.
pub fn is_edge_address(pool: &IpNet, addr: IpAddr) -> bool {
    match pool {
        IpNet::V4(_) => {
            pool.prefix_len() <= 30 && (addr == pool.network() || addr == pool.broadcast())
        }
        IpNet::V6(_) => pool.prefix_len() <= 126 && addr == pool.network(),
    }
}

/// What an address [`is_edge_address`] says is kept back is, for messages.
pub fn edge_address_kind(addr: &IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "the network or broadcast address",
        IpAddr::V6(_) => "the subnet-router anycast address (RFC 4291)",
    }
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
