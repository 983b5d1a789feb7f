//! Read-only views over all IPAM records: address lookup, usage, and the consistency check.
//! These scan every block and handle; they serve administrators, never the allocation path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::catalog::InUse;
use crate::keys;
use crate::net::{net_first, net_size, offset_in_block};
use crate::ranges::IpRangeSet;
use crate::store::{Compare, KeyValue, Read, Store};

use super::assign::{allocated, parse_block_key};
use super::context::{block_len_u32, is_edge_address, Context};
use crate::net::Tiling;

use super::index::{collect_indexes, index_reads, PlannedIndex, READS_PER_INDEX};
use super::records::{decode, Allocation, Attributes, Block, HandleRecord};
use super::IpamError;

/// Where one address stands.
#[derive(Clone, Debug)]
pub struct AddressInfo {
    /// The address.
    pub ip: IpAddr,
    /// Name of the pool containing it (empty when only a deleted pool's block holds it).
    pub pool: String,
    /// Reservation holding it, if any.
    pub reservation: Option<String>,
    /// Key of the block containing it, when that block is claimed.
    pub block_key: String,
    /// The block, when claimed.
    pub block: Block,
    /// The allocation, when the address is in use.
    pub allocation: Option<Allocation>,
}

/// Finds an address's pool, block and allocation. `Ok(None)` when no block holds the
/// address (never claimed, or outside every pool).
pub(super) fn lookup<S: Store + ?Sized>(
    store: &S,
    ip: IpAddr,
) -> Result<Option<AddressInfo>, IpamError> {
    let snap = store.read(&[Read::Prefix(keys::CONFIG_PREFIX.into())])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    let pool = ctx.pool_containing(ip);
    // The address's block may belong to the pool's tiling or to a leftover one.
    let mut tilings: Vec<Tiling> = pool.map(|p| p.tiling).into_iter().collect();
    tilings.extend(
        ctx.tilings
            .iter()
            .filter(|t| t.pool.contains(&ip) && Some(**t) != pool.map(|p| p.tiling)),
    );
    let reads: Vec<Read> = tilings.iter().flat_map(index_reads).collect();
    let snap = store.read(&reads)?;
    let mut found = None;
    for (i, tiling) in tilings.iter().enumerate() {
        let index = PlannedIndex::from_snapshot(tiling, &snap, i * READS_PER_INDEX)?.index;
        let located = tiling
            .block_ordinal_of(ip)
            .and_then(|o| Some((index.entry(o)?.home.clone(), tiling.block(o)?)));
        if let Some((home, block)) = located {
            found = Some(keys::block(&home, &block));
            break;
        }
    }
    let Some(block_key) = found else {
        return Ok(None);
    };
    let Some(kv) = store.get(&block_key)? else {
        return Ok(None);
    };
    let block: Block = decode(&kv)?;
    let allocation = match offset_in_block(&block.cidr, ip).and_then(|o| block.allocations.get(&o))
    {
        None => None,
        Some(handle) => {
            let attrs = match store.get(&keys::handle(handle))? {
                Some(kv) => decode::<HandleRecord>(&kv)?.attrs,
                None => Default::default(),
            };
            Some(Allocation {
                handle: handle.clone(),
                attrs,
            })
        }
    };
    Ok(Some(AddressInfo {
        ip,
        pool: pool.map(|p| p.name.clone()).unwrap_or_default(),
        reservation: ctx.reservation_of(ip).map(str::to_string),
        block_key,
        block,
        allocation,
    }))
}

/// Allocated addresses per Spiderpool pool (every pool listed, unused ones with 0). Reads
/// the shared blocks only.
pub(super) fn spider_pool_usage<S: Store + ?Sized>(
    store: &S,
) -> Result<BTreeMap<String, u128>, IpamError> {
    let snap = store.read(&[
        Read::Prefix(keys::CONFIG_PREFIX.into()),
        Read::Prefix(keys::blocks_of(keys::SHARED_HOME)),
    ])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    let spider: Vec<_> = ctx.pools.iter().filter(|p| p.spider.is_some()).collect();
    let mut counts: BTreeMap<String, u128> = spider.iter().map(|p| (p.name.clone(), 0)).collect();
    for kv in snap.list(1) {
        let block: Block = decode(kv)?;
        for (ip, _) in allocated(&block) {
            let owner = spider.iter().find(|p| {
                p.tiling.pool == block.pool
                    && p.spider.as_ref().is_some_and(|s| s.addresses.contains(ip))
            });
            if let Some(p) = owner {
                *counts.entry(p.name.clone()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// Which of `leaving` (addresses about to leave SpiderIPPool `pool`) are allocated, with
/// compares on every record the answer was read from (the tiling's index, for blocks claimed
/// meanwhile, and each block looked at), for the catalog to join to its write.
pub(super) fn spider_in_use<S: Store + ?Sized>(
    store: &S,
    pool: &str,
    leaving: &IpRangeSet,
) -> Result<InUse, IpamError> {
    let config = store.range(keys::CONFIG_PREFIX)?;
    let ctx = Context::from_records(&config, None, None)?;
    let Some(info) = ctx
        .pools
        .iter()
        .find(|p| p.spider.is_some() && p.name == pool)
    else {
        return Ok(InUse::default());
    };
    let mut reads = index_reads(&info.tiling).to_vec();
    reads.push(Read::Prefix(keys::blocks_of(keys::SHARED_HOME)));
    let snap = store.read(&reads)?;
    let index = PlannedIndex::from_snapshot(&info.tiling, &snap, 0)?;
    let mut answer = InUse {
        addresses: IpRangeSet::empty(info.is_v6()),
        compares: index.unchanged_compares(&info.tiling),
    };
    for kv in snap.list(READS_PER_INDEX) {
        let block: Block = decode(kv)?;
        if block.tiling() != Some(info.tiling)
            || !leaving.overlaps(&IpRangeSet::from_net(&block.cidr))
        {
            continue;
        }
        answer
            .compares
            .push(Compare::unchanged(kv.key.clone(), kv.mod_revision));
        for (ip, _) in allocated(&block) {
            if leaving.contains(ip) {
                let v = crate::net::addr_to_u128(ip);
                answer.addresses.insert(v, v);
            }
        }
    }
    Ok(answer)
}

/// Usage of one block.
#[derive(Clone, Debug)]
pub struct BlockUsage {
    /// The block's network.
    pub cidr: IpNet,
    /// Node the block is affine to.
    pub affinity: Option<String>,
    /// Addresses in the block.
    pub total: u128,
    /// Addresses allocated.
    pub in_use: u128,
    /// Allocations made for workloads on other nodes than the block's.
    pub borrowed: Vec<(IpAddr, Allocation)>,
}

/// Usage of one pool.
#[derive(Clone, Debug)]
pub struct PoolUsage {
    /// Pool name (empty for blocks whose pool was deleted).
    pub name: String,
    /// Pool network.
    pub cidr: IpNet,
    /// Addresses in the pool.
    pub total: u128,
    /// Addresses allocated.
    pub in_use: u128,
    /// Claimed blocks, by network.
    pub blocks: Vec<BlockUsage>,
}

/// Usage of every pool; blocks left from deleted pools are grouped under their old network.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Pools, in name order; pools of deleted pools (empty name) last.
    pub pools: Vec<PoolUsage>,
}

fn load_all<S: Store + ?Sized>(store: &S) -> Result<(Context, crate::store::Snapshot), IpamError> {
    let snap = store.read(&[
        Read::Prefix(keys::CONFIG_PREFIX.into()),
        Read::Prefix(keys::BLOCK_PREFIX.into()),
        Read::Prefix(keys::POOL_INDEX_PREFIX.into()),
        Read::Prefix(keys::HANDLE_PREFIX.into()),
    ])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    Ok((ctx, snap))
}

pub(super) fn usage<S: Store + ?Sized>(store: &S) -> Result<Usage, IpamError> {
    let (ctx, snap) = load_all(store)?;
    usage_from(&ctx, snap.list(1), Some(snap.list(3)))
}

/// Usage from the block records; borrowed addresses are found only when `handles` are given
/// (reading every handle is most of the cost of a usage view on a large store).
pub(super) fn usage_from(
    ctx: &Context,
    blocks: &[KeyValue],
    handles: Option<&[KeyValue]>,
) -> Result<Usage, IpamError> {
    let mut pools: Vec<PoolUsage> = ctx
        .pools
        .iter()
        .map(|p| PoolUsage {
            name: p.name.clone(),
            cidr: p.cidr(),
            total: net_size(&p.cidr()),
            in_use: 0,
            blocks: Vec::new(),
        })
        .collect();
    let mut attrs_of: HashMap<String, Attributes> = HashMap::new();
    for kv in handles.unwrap_or_default() {
        let h: HandleRecord = decode(kv)?;
        attrs_of.insert(h.id, h.attrs);
    }
    for kv in blocks {
        let block: Block = decode(kv)?;
        let in_use = block.allocations.len() as u128;
        let borrowed = allocated(&block)
            .filter_map(|(ip, handle)| {
                let attrs = attrs_of.get(handle)?;
                (attrs.node.is_some() && attrs.node != block.affinity).then(|| {
                    let allocation = Allocation {
                        handle: handle.clone(),
                        attrs: attrs.clone(),
                    };
                    (ip, allocation)
                })
            })
            .collect();
        let usage = BlockUsage {
            cidr: block.cidr,
            affinity: block.affinity.clone(),
            total: net_size(&block.cidr),
            in_use,
            borrowed,
        };
        let slot = match pools.iter().position(|p| p.cidr == block.pool) {
            Some(i) => i,
            None => {
                pools.push(PoolUsage {
                    name: String::new(),
                    cidr: block.pool,
                    total: net_size(&block.pool),
                    in_use: 0,
                    blocks: Vec::new(),
                });
                pools.len() - 1
            }
        };
        pools[slot].in_use += in_use;
        pools[slot].blocks.push(usage);
    }
    for p in &mut pools {
        p.blocks.sort_by_key(|b| net_first(&b.cidr));
    }
    Ok(Usage { pools })
}

/// Outcome of `ipam check`.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Blocks examined.
    pub blocks: usize,
    /// Handles examined.
    pub handles: usize,
    /// Allocated addresses examined.
    pub allocations: usize,
    /// Inconsistencies: each one a sentence naming the record and what is wrong.
    pub problems: Vec<String>,
    /// Things worth knowing that are not wrong (blocks of deleted pools, unaffined blocks).
    pub notes: Vec<String>,
}

pub(super) fn check<S: Store + ?Sized>(store: &S) -> Result<CheckReport, IpamError> {
    let (ctx, snap) = load_all(store)?;
    let mut report = CheckReport::default();
    let problems = &mut report.problems;

    let mut blocks: Vec<(String, Block)> = Vec::new();
    for kv in snap.list(1) {
        match decode::<Block>(kv) {
            Ok(b) => blocks.push((kv.key.clone(), b)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    report.blocks = blocks.len();

    let indexes = collect_indexes(snap.list(2), problems);

    let mut handles: BTreeMap<String, HandleRecord> = BTreeMap::new();
    for kv in snap.list(3) {
        match decode::<HandleRecord>(kv) {
            Ok(h) => {
                if keys::handle(&h.id) != kv.key {
                    problems.push(format!("handle record {} holds id {:?}", kv.key, h.id));
                }
                handles.insert(h.id.clone(), h);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    report.handles = handles.len();

    // Blocks: key agrees with content, one owner per block, no overlaps, indexed.
    let mut owners: HashMap<IpNet, Vec<String>> = HashMap::new();
    let mut by_start: Vec<(bool, u128, u128, IpNet)> = Vec::new();
    let mut seen_ips: HashMap<IpAddr, String> = HashMap::new();
    for (key, b) in &blocks {
        match parse_block_key(key) {
            Some((home, net)) if net == b.cidr => {
                owners.entry(b.cidr).or_default().push(home.to_string());
                if let Some(aff) = &b.affinity {
                    if aff != home {
                        problems.push(format!(
                            "block {} is stored under node {home:?} but affine to {aff:?}",
                            b.cidr
                        ));
                    }
                }
            }
            _ => problems.push(format!("block record {key} holds block {}", b.cidr)),
        }
        by_start.push((
            b.cidr.network().is_ipv6(),
            net_first(&b.cidr),
            net_first(&b.cidr) + (net_size(&b.cidr) - 1),
            b.cidr,
        ));
        let pool = b.tiling().and_then(|t| ctx.pool_by_tiling(&t));
        match pool {
            None => report.notes.push(format!(
                "block {} belongs to pool network {} which no IPPool defines any more ({} address(es) still allocated)",
                b.cidr,
                b.pool,
                b.allocations.len()
            )),
            Some(p) if !p.cidr().contains(&b.cidr.network()) => problems.push(format!(
                "block {} claims pool {} but lies outside it",
                b.cidr, b.pool
            )),
            _ => {}
        }
        if b.affinity.is_none() {
            report
                .notes
                .push(format!("block {} has no node affinity", b.cidr));
        }
        // Index agreement.
        let tiling = b.tiling();
        match tiling.and_then(|t| Some((t, indexes.get(&t)?))) {
            None => problems.push(format!(
                "block {} is missing from the index of pool network {}",
                b.cidr, b.pool
            )),
            Some((t, idx)) => {
                let ord = t.ordinal_of_block(&b.cidr);
                let home = parse_block_key(key).map(|(h, _)| h);
                match ord.and_then(|o| idx.entry(o)) {
                    None => problems.push(format!(
                        "block {} is missing from the index of pool network {}",
                        b.cidr, b.pool
                    )),
                    Some(e) if Some(e.home.as_str()) != home => problems.push(format!(
                        "index of {} lists block {} under {:?}, but it is stored under {:?}",
                        b.pool,
                        b.cidr,
                        e.home,
                        home.unwrap_or_default()
                    )),
                    Some(e) if e.full && !b.marked_full => problems.push(format!(
                        "block {} is marked full in its pool index but not in the block record, so a release would not clear the mark",
                        b.cidr
                    )),
                    Some(e) if e.full => {
                        let allowed = ctx.spider_addresses(&t);
                        let has_room = (0..block_len_u32(&t)).any(|off| {
                            let ip = crate::net::addr_in_block(&b.cidr, off);
                            !b.allocations.contains_key(&off)
                                && !is_edge_address(&b.pool, ip)
                                && ctx.reservation_of(ip).is_none()
                                && allowed.as_ref().is_none_or(|a| a.contains(ip))
                        });
                        if has_room {
                            problems.push(format!(
                                "block {} is marked full in its pool index but has free addresses",
                                b.cidr
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        // Allocations.
        for (ip, handle) in allocated(b) {
            report.allocations += 1;
            if let Some(other) = seen_ips.insert(ip, b.cidr.to_string()) {
                problems.push(format!(
                    "address {ip} is allocated in two blocks: {other} and {}",
                    b.cidr
                ));
            }
            if let Some(p) = pool {
                if p.is_edge_address(ip) {
                    problems.push(format!(
                        "address {ip} is {} of pool {:?} but is allocated to handle {:?}",
                        super::context::edge_address_kind(&ip),
                        p.name,
                        handle
                    ));
                }
            }
            if let Some(r) = ctx.reservation_of(ip) {
                problems.push(format!(
                    "address {ip} is reserved by IPReservation {r:?} but allocated to handle {:?}",
                    handle
                ));
            }
            match handles.get(handle) {
                None => problems.push(format!(
                    "address {ip} in block {} is allocated to handle {:?}, which does not exist",
                    b.cidr, handle
                )),
                Some(h) if !h.addresses.iter().any(|x| x.ip == ip) => problems.push(format!(
                    "address {ip} in block {} is allocated to handle {:?}, which does not list it",
                    b.cidr, handle
                )),
                _ => {}
            }
        }
    }
    for (cidr, homes) in &owners {
        if homes.len() > 1 {
            problems.push(format!(
                "block {cidr} is owned by more than one node: {}",
                homes.join(", ")
            ));
        }
    }
    by_start.sort();
    for pair in by_start.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 == b.0 && b.1 <= a.2 && a.3 != b.3 {
            problems.push(format!("blocks {} and {} overlap", a.3, b.3));
        }
    }
    // Index entries without blocks.
    let block_keys: std::collections::HashSet<&str> =
        blocks.iter().map(|(k, _)| k.as_str()).collect();
    let markers: std::collections::HashSet<&Tiling> = ctx.tilings.iter().collect();
    for (tiling, idx) in &indexes {
        let cidr = tiling.pool;
        if !markers.contains(tiling) {
            problems.push(format!(
                "index of {cidr} (/{} blocks) has no tiling marker, so allocators would not see its blocks",
                tiling.block_prefix
            ));
        }
        for e in &idx.blocks {
            match tiling.block(e.ordinal) {
                Some(bc) if block_keys.contains(keys::block(&e.home, &bc).as_str()) => {}
                Some(bc) => problems.push(format!(
                    "index of {cidr} lists block {bc} under {:?}, but no such block exists",
                    e.home
                )),
                None => problems.push(format!(
                    "index of {cidr} lists ordinal {} beyond the pool",
                    e.ordinal
                )),
            }
        }
    }
    // Handles pointing at addresses they do not hold.
    let by_key: HashMap<&str, &Block> = blocks.iter().map(|(k, b)| (k.as_str(), b)).collect();
    for h in handles.values() {
        if h.addresses.is_empty() {
            problems.push(format!("handle {:?} holds no address", h.id));
        }
        for a in &h.addresses {
            let held = by_key.get(a.block.as_str()).is_some_and(|b| {
                offset_in_block(&b.cidr, a.ip)
                    .and_then(|o| b.allocations.get(&o))
                    .is_some_and(|x| *x == h.id)
            });
            if !held {
                problems.push(format!(
                    "handle {:?} lists address {} but block {} does not hold it for the handle",
                    h.id, a.ip, a.block
                ));
            }
        }
    }
    Ok(report)
}
