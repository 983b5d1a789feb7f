//! In-memory planning of one assign: the records it read, the changes it made to them, and
//! the single transaction that commits those changes. Releases are in `release.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::keys;
use crate::net::{addr_in_block, offset_in_block, parse_net_key, Tiling};
use crate::ranges::IpRangeSet;
use crate::store::{Compare, KeyValue, Op, Store, TxnOutcome};

use super::context::{block_len_u32, is_edge_address, Context, PoolInfo};
use super::index::{shard_of, PlannedIndex};
use super::records::{decode, encode, Block, HandleAddress, HandleRecord, IndexEntry};
use super::select::Family;
use super::{AssignRequest, AssignedAddress, GatewayHold, IpamError};

/// A block as a plan reads and changes it.
pub(super) struct PlannedBlock {
    pub(super) block: Block,
    /// Revision read (0 = the block is new).
    pub(super) revision: i64,
    pub(super) changed: bool,
    /// Addresses were taken in this plan (as opposed to only a full flag being set).
    pub(super) allocated: bool,
    pub(super) deleted: bool,
}

/// The handle holding a network's gateways, as a plan knows it.
struct PlannedGatewayHandle {
    record: HandleRecord,
    /// Revision read (0 = the handle does not exist).
    revision: i64,
    /// The plan holds a new gateway for it.
    changed: bool,
    /// The plan took a gateway as held because the record lists it.
    relied: bool,
}

impl PlannedGatewayHandle {
    fn new(hold: &GatewayHold, kv: Option<&KeyValue>) -> Result<Self, IpamError> {
        let (mut record, revision) = match kv {
            Some(kv) => (decode::<HandleRecord>(kv)?, kv.mod_revision),
            None => (HandleRecord::default(), 0),
        };
        record.id = hold.handle.clone();
        record.attrs = hold.attrs.clone();
        Ok(Self {
            record,
            revision,
            changed: false,
            relied: false,
        })
    }

    fn lists(&self, ip: IpAddr) -> bool {
        self.record.addresses.iter().any(|a| a.ip == ip)
    }
}

/// Where the search of one Spiderpool pool for a block with room stands in a plan.
struct SharedSearch {
    /// Ordinals of the blocks holding the pool's addresses, in order.
    ordinals: Vec<u128>,
    /// Where this node starts (a hash of its name), so that nodes spread over the blocks.
    start: usize,
    /// Blocks passed over: they had no room for the pool, and still have none, since a plan
    /// only takes addresses.
    passed: usize,
}

impl SharedSearch {
    fn new(pool: &PoolInfo, spider: &crate::ipam::SpiderInfo, node: &str) -> Self {
        let tiling = pool.tiling;
        let mut ordinals: Vec<u128> = Vec::new();
        for &(a, b) in spider.addresses.ranges() {
            let first = tiling.block_ordinal_of(crate::net::u128_to_addr(a, pool.is_v6()));
            let last = tiling.block_ordinal_of(crate::net::u128_to_addr(b, pool.is_v6()));
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            // Bounded: a pool larger than this many blocks is searched in its first part only.
            for o in first..=last.min(first + MAX_SHARED_BLOCKS) {
                if ordinals.last() != Some(&o) {
                    ordinals.push(o);
                }
            }
            if ordinals.len() as u128 >= MAX_SHARED_BLOCKS {
                break;
            }
        }
        let start = if ordinals.is_empty() {
            0
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            node.hash(&mut h);
            (h.finish() % ordinals.len() as u64) as usize
        };
        Self {
            ordinals,
            start,
            passed: 0,
        }
    }

    /// The block to try next, if any is left.
    fn current(&self) -> Option<u128> {
        (self.passed < self.ordinals.len())
            .then(|| self.ordinals[(self.start + self.passed) % self.ordinals.len()])
    }
}

/// Records read and changed by one operation.
///
/// A request for many addresses plans them one by one; the plan remembers how far each search
/// got (the node's blocks found full, the last block claimed, the Spiderpool blocks passed
/// over), so every block and index entry is looked at about once per plan, not once per
/// address.
pub(super) struct Plan<'a, S: ?Sized> {
    store: &'a S,
    ctx: &'a Context,
    node: &'a str,
    blocks: BTreeMap<String, PlannedBlock>,
    indexes: BTreeMap<Tiling, PlannedIndex>,
    pools_used: BTreeSet<usize>,
    /// Key of the block each address of this plan was taken from, for the handle record.
    taken_from: BTreeMap<IpAddr, String>,
    /// Planned from a node's cached view: anything beyond it needs a fresh read instead.
    from_view: bool,
    /// Per tiling, this node's blocks that may still have room, in the order they are tried
    /// (built on first use). A block found full moves to `found_full`.
    with_room: BTreeMap<Tiling, VecDeque<String>>,
    /// Per tiling, this node's blocks found full whose index flag is not set yet.
    found_full: BTreeMap<Tiling, Vec<String>>,
    /// Per tiling, where the next claim's search starts: every ordinal below it is claimed
    /// or unusable.
    claim_from: BTreeMap<Tiling, u128>,
    /// Tilings whose index was searched for blocks this node claimed after its snapshot.
    late_claims_checked: BTreeSet<Tiling>,
    /// Blocks affine to this node, counted on first use.
    owned: Option<usize>,
    /// Per Spiderpool pool name, how far its search got.
    shared: BTreeMap<String, SharedSearch>,
    /// The gateways this request keeps back and holds, if any.
    gateway: Option<&'a GatewayHold>,
    /// Their handle, once read (or read with the snapshot).
    gateway_record: Option<PlannedGatewayHandle>,
    /// Blocks the plan read a held gateway from without changing them: compared at commit.
    gateway_blocks: BTreeSet<String>,
    /// Blocks considered for a free address (the node's own, or a Spiderpool pool's), for
    /// the tests that check the work is linear.
    #[cfg(test)]
    probes: u64,
}

/// The most addresses one request may ask for (IPv4 and IPv6 counts and specific addresses
/// together), and one handle may hold. A request's addresses are committed in one
/// transaction and listed in one handle record, which must fit the datastore's limits (etcd:
/// 1.5 MiB per request, 128 operations per transaction); with /26 blocks and the longest
/// handle ids, 1024 addresses stay well within both. A pod needs one address per family.
pub(super) const MAX_ADDRESSES_PER_REQUEST: u64 = 1024;

/// Refuses a request for more than [`MAX_ADDRESSES_PER_REQUEST`] addresses, before any
/// planning.
pub(super) fn check_request_size(req: &AssignRequest) -> Result<(), IpamError> {
    let asked = u64::from(req.num_v4) + u64::from(req.num_v6) + req.ips.len() as u64;
    if asked > MAX_ADDRESSES_PER_REQUEST {
        return Err(too_many_addresses(format!("this one asks for {asked}")));
    }
    Ok(())
}

fn too_many_addresses(what: String) -> IpamError {
    IpamError::InvalidRequest(format!(
        "at most {MAX_ADDRESSES_PER_REQUEST} addresses per request and per handle (IPv4, IPv6 \
         and specific addresses counted together), and {what}: one request's \
         addresses are committed in one transaction and listed in one handle record, which \
         must fit the datastore's limits (etcd: 1.5 MiB per request, 128 operations per \
         transaction); spread the addresses over several handles"
    ))
}

/// Splits a block key into (home, block network).
pub(super) fn parse_block_key(key: &str) -> Option<(&str, IpNet)> {
    let rest = key.strip_prefix(keys::BLOCK_PREFIX)?;
    let (home, net) = rest.split_once('/')?;
    Some((home, parse_net_key(net)?))
}

/// The first free offset of a block, starting at its cursor, skipping the pool's edge
/// addresses, reserved addresses, and addresses outside `allowed` (a Spiderpool pool's own
/// addresses, or every Spiderpool address of the tiling when judging fullness).
pub(super) fn free_offset(
    ctx: &Context,
    block: &Block,
    allowed: Option<&IpRangeSet>,
) -> Option<u32> {
    free_offset_keeping(ctx, block, allowed, None)
}

/// [`free_offset`], also passing over `kept`: the gateway of the request's network.
fn free_offset_keeping(
    ctx: &Context,
    block: &Block,
    allowed: Option<&IpRangeSet>,
    kept: Option<IpAddr>,
) -> Option<u32> {
    let len = u32::try_from(crate::net::net_size(&block.cidr)).unwrap_or(u32::MAX);
    if block.allocations.len() as u64 >= u64::from(len) {
        return None;
    }
    let reserved = ctx.reserved_in(&block.cidr);
    let start = block.next % len;
    (0..len)
        .map(|i| (start + i) % len)
        .find(|&off| may_hand_out(block, off, &reserved, allowed, kept))
}

/// Whether offset `off` of `block` is free and may be handed out: not allocated, not the
/// pool's edge address, not `kept`, not reserved and inside `allowed`.
fn may_hand_out(
    block: &Block,
    off: u32,
    reserved: &IpRangeSet,
    allowed: Option<&IpRangeSet>,
    kept: Option<IpAddr>,
) -> bool {
    if block.allocations.contains_key(&off) {
        return false;
    }
    let addr = addr_in_block(&block.cidr, off);
    !is_edge_address(&block.pool, addr)
        && Some(addr) != kept
        && !reserved.contains(addr)
        && allowed.is_none_or(|set| set.contains(addr))
}

/// How many addresses of a Calico block the allocator could still hand out: the free
/// offsets [`free_offset`] would find, counted.
pub fn free_address_count(ctx: &Context, block: &Block) -> u32 {
    let len = u32::try_from(crate::net::net_size(&block.cidr)).unwrap_or(u32::MAX);
    let reserved = ctx.reserved_in(&block.cidr);
    let free = (0..len).filter(|&off| may_hand_out(block, off, &reserved, None, None));
    u32::try_from(free.count()).unwrap_or(u32::MAX)
}

impl<'a, S: Store + ?Sized> Plan<'a, S> {
    /// A plan seeded with the node's blocks from the snapshot, or from the node's cached
    /// view (`from_view`), in which case it reads nothing and fails with
    /// [`IpamError::BeyondView`] when it would need to.
    pub(super) fn new(
        store: &'a S,
        ctx: &'a Context,
        node: &'a str,
        node_blocks: &[KeyValue],
        from_view: bool,
    ) -> Result<Self, IpamError> {
        let mut blocks = BTreeMap::new();
        for kv in node_blocks {
            blocks.insert(kv.key.clone(), planned_block(kv)?);
        }
        Ok(Self {
            store,
            ctx,
            node,
            blocks,
            indexes: BTreeMap::new(),
            pools_used: BTreeSet::new(),
            taken_from: BTreeMap::new(),
            from_view,
            with_room: BTreeMap::new(),
            found_full: BTreeMap::new(),
            claim_from: BTreeMap::new(),
            late_claims_checked: BTreeSet::new(),
            owned: None,
            shared: BTreeMap::new(),
            gateway: None,
            gateway_record: None,
            gateway_blocks: BTreeSet::new(),
            #[cfg(test)]
            probes: 0,
        })
    }

    /// Records that the plan took an address from `pool`, whose record the commit compares.
    fn use_pool(&mut self, pool: &PoolInfo) {
        // By identity: a Calico and a Spiderpool pool may share a name.
        if let Some(slot) = self.ctx.pools.iter().position(|p| std::ptr::eq(p, pool)) {
            self.pools_used.insert(slot);
        }
    }

    /// Adds a block read or created by the plan, keeping the per-node bookkeeping current.
    fn add_block(&mut self, key: String, planned: PlannedBlock) {
        let own = planned.block.affinity.as_deref() == Some(self.node);
        let tiling = planned.block.tiling();
        if self.blocks.insert(key.clone(), planned).is_some() || !own {
            return;
        }
        if let Some(n) = self.owned.as_mut() {
            *n += 1;
        }
        if let Some(list) = tiling.and_then(|t| self.with_room.get_mut(&t)) {
            list.push_back(key);
        }
    }

    /// Key of the block an address of this plan was taken from.
    pub(super) fn block_key_of(&self, ip: IpAddr) -> Option<&str> {
        self.taken_from.get(&ip).map(String::as_str)
    }

    /// Fails when the plan works from a cached view, which never stands in for a read.
    fn may_read(&self) -> Result<(), IpamError> {
        if self.from_view {
            return Err(IpamError::BeyondView);
        }
        Ok(())
    }

    fn index(&mut self, tiling: Tiling) -> Result<&mut PlannedIndex, IpamError> {
        if !self.indexes.contains_key(&tiling) {
            self.may_read()?;
            let planned = PlannedIndex::read(self.store, &tiling)?;
            self.indexes.insert(tiling, planned);
        }
        Ok(self.indexes.get_mut(&tiling).expect("inserted above"))
    }

    /// Blocks of leftover tilings (deleted or re-cut pools) that overlap `pool`: new blocks
    /// must stay clear of them while they still hold addresses.
    fn leftover_blocks(&mut self, pool: &PoolInfo) -> Result<Vec<(IpNet, String)>, IpamError> {
        let mut out = Vec::new();
        for tiling in self.ctx.leftover_tilings(pool) {
            let idx = self.index(tiling)?;
            out.extend(idx.index.blocks.iter().filter_map(|e| {
                let b = tiling.block(e.ordinal)?;
                crate::net::nets_overlap(&b, &pool.cidr()).then(|| (b, keys::block(&e.home, &b)))
            }));
        }
        Ok(out)
    }

    fn fetch_block(&mut self, key: &str) -> Result<bool, IpamError> {
        if self.blocks.contains_key(key) {
            return Ok(true);
        }
        self.may_read()?;
        match self.store.get(key)? {
            Some(kv) => {
                self.add_block(key.to_string(), planned_block(&kv)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes a free address in the block at `key`, if it has one.
    fn take_free(&mut self, key: &str, pool: &PoolInfo, handle: &str) -> Option<AssignedAddress> {
        let ctx = self.ctx;
        let planned = self.blocks.get_mut(key)?;
        let allowed = pool.spider.as_ref().map(|s| &s.addresses);
        let kept = self
            .gateway
            .and_then(|g| g.kept_back(pool, planned.block.cidr));
        let off = free_offset_keeping(ctx, &planned.block, allowed, kept)?;
        let a = Self::occupy(planned, pool, off, handle);
        self.taken_from.insert(a.ip, key.to_string());
        Some(a)
    }

    fn occupy(
        planned: &mut PlannedBlock,
        pool: &PoolInfo,
        off: u32,
        handle: &str,
    ) -> AssignedAddress {
        let len = block_len_u32(&pool.tiling);
        let b = &mut planned.block;
        b.allocations.insert(off, handle.to_string());
        b.next = (off + 1) % len;
        planned.changed = true;
        planned.allocated = true;
        pool.assigned(addr_in_block(&b.cidr, off), b.cidr)
    }

    /// Claims block `ordinal` of `pool` (creating it) and records it in the pool's index:
    /// for this node, or shared by every node for Spiderpool pools. The commit's "absent"
    /// compare on the block key and revision compare on the index make a race for the same
    /// block end with exactly one owner.
    fn claim(&mut self, pool: &PoolInfo, ordinal: u128) -> Result<String, IpamError> {
        let cidr = pool
            .tiling
            .block(ordinal)
            .expect("ordinal within the tiling");
        let (home, affinity) = match pool.spider {
            Some(_) => (keys::SHARED_HOME.to_string(), None),
            None => (self.node.to_string(), Some(self.node.to_string())),
        };
        let key = keys::block(&home, &cidr);
        let idx = self.index(pool.tiling)?;
        let pos = idx.index.find(ordinal).unwrap_err();
        idx.index.blocks.insert(
            pos,
            IndexEntry {
                ordinal,
                home,
                full: false,
            },
        );
        idx.changed = true;
        self.add_block(
            key.clone(),
            PlannedBlock {
                block: Block::new(cidr, pool.cidr(), affinity),
                revision: 0,
                changed: true,
                allocated: true,
                deleted: false,
            },
        );
        Ok(key)
    }

    /// This node's blocks of `tiling` that may still have room, listed on first use.
    fn blocks_with_room(&mut self, tiling: Tiling) -> &mut VecDeque<String> {
        let (blocks, node) = (&self.blocks, self.node);
        self.with_room.entry(tiling).or_insert_with(|| {
            blocks
                .iter()
                .filter(|(_, b)| {
                    !b.deleted
                        && b.block.tiling() == Some(tiling)
                        && b.block.affinity.as_deref() == Some(node)
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Takes an address from one of this node's blocks of `pool`. A block found full is not
    /// looked at again by this plan.
    fn take_from_own_blocks(&mut self, pool: &PoolInfo, handle: &str) -> Option<AssignedAddress> {
        let tiling = pool.tiling;
        while let Some(key) = self.blocks_with_room(tiling).front().cloned() {
            #[cfg(test)]
            {
                self.probes += 1;
            }
            if let Some(a) = self.take_free(&key, pool, handle) {
                return Some(a);
            }
            self.blocks_with_room(tiling).pop_front();
            self.found_full.entry(tiling).or_default().push(key);
        }
        None
    }

    /// Whether this node may claim another block (autoAllocateBlocks, maxBlocksPerHost).
    fn may_claim(&mut self) -> bool {
        let node = self.node;
        let blocks = &self.blocks;
        let owned = *self.owned.get_or_insert_with(|| {
            blocks
                .values()
                .filter(|b| !b.deleted && b.block.affinity.as_deref() == Some(node))
                .count()
        });
        let cfg = &self.ctx.config;
        cfg.auto_allocate_blocks
            && (cfg.max_blocks_per_host == 0 || owned < cfg.max_blocks_per_host as usize)
    }

    /// Allocates one address. Pools are tried in the given order; a run of consecutive
    /// Calico pools is one step, as in Calico: the node's blocks with room in any pool of the
    /// run come before a new block in any of them, and new blocks are claimed in the pools'
    /// order. A Spiderpool pool is a step of its own, at its place in the list. Borrowing from
    /// another node's block (unless strictAffinity) comes after every pool.
    pub(super) fn assign_auto(
        &mut self,
        pools: &[&PoolInfo],
        family: Family,
        handle: &str,
    ) -> Result<AssignedAddress, IpamError> {
        let may_claim = self.may_claim();
        for run in pools.chunk_by(|a, b| a.spider.is_none() && b.spider.is_none()) {
            if let Some((pool, a)) = self.assign_from_run(run, may_claim, handle)? {
                self.use_pool(pool);
                return Ok(a);
            }
        }
        if !self.ctx.config.strict_affinity {
            for pool in pools.iter().filter(|p| p.spider.is_none()) {
                if let Some(a) = self.borrow(pool, handle)? {
                    self.use_pool(pool);
                    return Ok(a);
                }
            }
        }
        Err(self.exhausted(pools, family, may_claim))
    }

    /// One step of [`Plan::assign_auto`]: a Spiderpool pool, or a run of Calico pools.
    fn assign_from_run<'p>(
        &mut self,
        run: &[&'p PoolInfo],
        may_claim: bool,
        handle: &str,
    ) -> Result<Option<(&'p PoolInfo, AssignedAddress)>, IpamError> {
        if let [pool] = run {
            if pool.spider.is_some() {
                return Ok(self.assign_shared(pool, handle)?.map(|a| (*pool, a)));
            }
        }
        for pool in run {
            if let Some(a) = self.take_from_own_blocks(pool, handle) {
                return Ok(Some((*pool, a)));
            }
        }
        if may_claim {
            for pool in run {
                if let Some(a) = self.claim_for_node(pool, handle)? {
                    return Ok(Some((*pool, a)));
                }
            }
        }
        Ok(None)
    }

    /// Takes an address from a block of `pool` claimed for this node: one another process
    /// of the node claimed since the snapshot, or a new one.
    fn claim_for_node(
        &mut self,
        pool: &PoolInfo,
        handle: &str,
    ) -> Result<Option<AssignedAddress>, IpamError> {
        // Rather than claim a second block, use one claimed since the snapshot.
        if let Some(a) = self.use_late_claims(pool, handle)? {
            return Ok(Some(a));
        }
        self.mark_own_full(pool)?;
        let ctx = self.ctx;
        let tiling = pool.tiling;
        let leftovers = self.leftover_blocks(pool)?;
        let count = tiling.block_count();
        let start = self.claim_from.get(&tiling).copied().unwrap_or(0);
        let free = self
            .index(tiling)?
            .index
            .first_unclaimed_from(start, count, |o| {
                ctx.skip_unusable_block(pool, o).or_else(|| {
                    let b = tiling.block(o)?;
                    leftovers
                        .iter()
                        .any(|(l, _)| crate::net::nets_overlap(l, &b))
                        .then_some(o + 1)
                })
            });
        let Some(ordinal) = free else {
            self.claim_from.insert(tiling, count);
            return Ok(None);
        };
        self.claim_from.insert(tiling, ordinal + 1);
        let key = self.claim(pool, ordinal)?;
        let a = self
            .take_free(&key, pool, handle)
            .expect("a usable new block has a free address");
        Ok(Some(a))
    }

    /// Why no pool had an address for this node.
    fn exhausted(&self, pools: &[&PoolInfo], family: Family, may_claim: bool) -> IpamError {
        let cfg = &self.ctx.config;
        let reason = if pools.iter().all(|p| p.spider.is_some()) {
            "every address of the pool is in use".to_string()
        } else if !cfg.auto_allocate_blocks {
            "the node's blocks are full and autoAllocateBlocks is off".to_string()
        } else if !may_claim {
            format!(
                "the node's blocks are full and it already holds maxBlocksPerHost={} blocks",
                cfg.max_blocks_per_host
            )
        } else {
            "every block is claimed and full".to_string()
        };
        let reason = if cfg.strict_affinity {
            format!("{reason} (strictAffinity forbids borrowing from other nodes' blocks)")
        } else {
            reason
        };
        IpamError::Exhausted {
            family,
            node: self.node.to_string(),
            pools: pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason,
        }
    }

    /// Takes an address from a Spiderpool pool. Its blocks are shared by every node; each node
    /// starts its search at a different block, so nodes allocating at once from one large pool
    /// do not all compete for the same record.
    fn assign_shared(
        &mut self,
        pool: &PoolInfo,
        handle: &str,
    ) -> Result<Option<AssignedAddress>, IpamError> {
        let Some(spider) = pool.spider.as_ref() else {
            return Ok(None);
        };
        let node = self.node;
        let every_spider_address = self.ctx.spider_addresses(&pool.tiling);
        loop {
            let search = self
                .shared
                .entry(pool.name.clone())
                .or_insert_with(|| SharedSearch::new(pool, spider, node));
            let Some(ordinal) = search.current() else {
                return Ok(None);
            };
            if let Some(a) =
                self.take_from_shared_block(pool, ordinal, handle, every_spider_address.as_ref())?
            {
                return Ok(Some(a));
            }
            if let Some(search) = self.shared.get_mut(&pool.name) {
                search.passed += 1;
            }
        }
    }

    /// Takes an address of `pool` from its shared block `ordinal`, claiming the block if
    /// nobody has yet. A block with no room left for any Spiderpool pool is flagged full.
    fn take_from_shared_block(
        &mut self,
        pool: &PoolInfo,
        ordinal: u128,
        handle: &str,
        every_spider_address: Option<&IpRangeSet>,
    ) -> Result<Option<AssignedAddress>, IpamError> {
        #[cfg(test)]
        {
            self.probes += 1;
        }
        let ctx = self.ctx;
        let tiling = pool.tiling;
        let entry = self.index(tiling)?.index.entry(ordinal).cloned();
        let key = match entry {
            Some(e) if e.full => return Ok(None),
            Some(e) => {
                let Some(cidr) = tiling.block(ordinal) else {
                    return Ok(None);
                };
                let key = keys::block(&e.home, &cidr);
                if !self.fetch_block(&key)? {
                    return Ok(None);
                }
                key
            }
            None => {
                if ctx.skip_unusable_block(pool, ordinal).is_some() {
                    return Ok(None);
                }
                self.claim(pool, ordinal)?
            }
        };
        if let Some(a) = self.take_free(&key, pool, handle) {
            return Ok(Some(a));
        }
        let block = &self.blocks[&key].block;
        if free_offset(ctx, block, every_spider_address).is_none() {
            self.mark_full(tiling, &key)?;
        }
        Ok(None)
    }

    /// Takes an address from a block of this node that the index lists but the snapshot did
    /// not have (claimed concurrently by another process on the node).
    /// Looks once per plan: later claims of this node in the index are the plan's own.
    fn use_late_claims(
        &mut self,
        pool: &PoolInfo,
        handle: &str,
    ) -> Result<Option<AssignedAddress>, IpamError> {
        if !self.late_claims_checked.insert(pool.tiling) {
            return Ok(None);
        }
        let node = self.node;
        let listed: Vec<String> = self
            .index(pool.tiling)?
            .index
            .blocks
            .iter()
            .filter(|e| e.home == node)
            .filter_map(|e| pool.tiling.block(e.ordinal).map(|b| keys::block(node, &b)))
            .collect();
        let late: Vec<String> = listed
            .into_iter()
            .filter(|k| !self.blocks.contains_key(k))
            .collect();
        for key in late {
            // A block still affine to this node joins its blocks with room.
            self.fetch_block(&key)?;
            if let Some(a) = self.take_from_own_blocks(pool, handle) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Marks this node's blocks of `pool` found full as full in the index, so other nodes
    /// looking for room skip them without reading them.
    fn mark_own_full(&mut self, pool: &PoolInfo) -> Result<(), IpamError> {
        let full = self.found_full.remove(&pool.tiling).unwrap_or_default();
        for key in full {
            self.mark_full(pool.tiling, &key)?;
        }
        Ok(())
    }

    /// Sets the full flag of the block at `key` in its index and in the block itself.
    fn mark_full(&mut self, tiling: Tiling, key: &str) -> Result<(), IpamError> {
        let Some(ordinal) = self
            .blocks
            .get(key)
            .and_then(|b| tiling.ordinal_of_block(&b.block.cidr))
        else {
            return Ok(());
        };
        let idx = self.index(tiling)?;
        if idx.index.set_full(ordinal, true) {
            idx.changed = true;
            let pb = self.blocks.get_mut(key).expect("checked above");
            if !pb.block.marked_full {
                pb.block.marked_full = true;
                pb.changed = true;
            }
        }
        Ok(())
    }

    /// Takes an address from a block affine to another node (or to none).
    fn borrow(
        &mut self,
        pool: &PoolInfo,
        handle: &str,
    ) -> Result<Option<AssignedAddress>, IpamError> {
        let candidates: Vec<(u128, String)> = self
            .index(pool.tiling)?
            .index
            .blocks
            .iter()
            .filter(|e| !e.full)
            .map(|e| (e.ordinal, e.home.clone()))
            .collect();
        for (ordinal, home) in candidates {
            let Some(block_cidr) = pool.tiling.block(ordinal) else {
                continue;
            };
            let key = keys::block(&home, &block_cidr);
            if !self.fetch_block(&key)? {
                continue;
            }
            if self.blocks[&key].block.affinity.as_deref() == Some(self.node) {
                continue; // Own blocks were tried first.
            }
            if let Some(a) = self.take_free(&key, pool, handle) {
                return Ok(Some(a));
            }
            self.mark_full(pool.tiling, &key)?;
        }
        Ok(None)
    }

    /// Allocates a specific address.
    pub(super) fn assign_specific(
        &mut self,
        ip: IpAddr,
        handle: &str,
    ) -> Result<AssignedAddress, IpamError> {
        let ctx = self.ctx;
        let pool = ctx
            .pool_containing(ip)
            .ok_or(IpamError::AddressNotInPool(ip))?;
        if pool.disabled {
            return Err(IpamError::PoolDisabled(pool.name.clone()));
        }
        if pool.is_edge_address(ip) {
            return Err(IpamError::AddressUnusable {
                ip,
                pool: pool.name.clone(),
            });
        }
        if let Some(r) = ctx.reservation_of(ip) {
            return Err(IpamError::AddressReserved {
                ip,
                reservation: r.to_string(),
            });
        }
        let key = self.block_for(pool, ip)?;
        let block_cidr = self.blocks[&key].block.cidr;
        let off = offset_in_block(&block_cidr, ip).expect("block contains ip");
        let planned = self.blocks.get_mut(&key).expect("fetched or claimed");
        if let Some(existing) = planned.block.allocations.get(&off) {
            return Err(IpamError::AddressInUse {
                ip,
                handle: existing.clone(),
            });
        }
        let next = planned.block.next;
        let a = Self::occupy(planned, pool, off, handle);
        planned.block.next = next; // A fixed address does not move the cursor.
        self.taken_from.insert(a.ip, key);
        self.use_pool(pool);
        Ok(a)
    }

    /// The key of the block of `pool` that holds `ip`, read or claimed for this node.
    /// Fails when a block left over from a deleted pool holds it instead.
    fn block_for(&mut self, pool: &PoolInfo, ip: IpAddr) -> Result<String, IpamError> {
        let ordinal = pool.tiling.block_ordinal_of(ip).expect("pool contains ip");
        let block_cidr = pool
            .tiling
            .block(ordinal)
            .expect("ordinal within the tiling");
        let leftover = self
            .leftover_blocks(pool)?
            .into_iter()
            .find(|(b, _)| crate::net::nets_overlap(b, &block_cidr));
        if let Some((old_block, old_key)) = leftover {
            if self.fetch_block(&old_key)? {
                let b = &self.blocks[&old_key].block;
                if let Some(h) = offset_in_block(&b.cidr, ip).and_then(|o| b.allocations.get(&o)) {
                    return Err(IpamError::AddressInUse {
                        ip,
                        handle: h.clone(),
                    });
                }
            }
            return Err(IpamError::LeftoverBlock {
                ip,
                block: old_block,
            });
        }
        let entry = self.index(pool.tiling)?.index.entry(ordinal).cloned();
        let key = match entry {
            Some(e) => {
                let key = keys::block(&e.home, &block_cidr);
                if !self.fetch_block(&key)? {
                    return Err(IpamError::CorruptRecord {
                        key: keys::pool_index_shard(&pool.tiling, shard_of(ordinal)),
                        reason: format!(
                            "lists block {block_cidr} under {:?} but the block is missing",
                            e.home
                        ),
                    });
                }
                key
            }
            None => self.claim(pool, ordinal)?,
        };
        Ok(key)
    }

    /// Keeps `hold`'s gateways out of this plan's addresses. `record` is its handle when
    /// read with the snapshot (`Some(None)`: it does not exist).
    pub(super) fn keep_gateways(
        &mut self,
        hold: &'a GatewayHold,
        record: Option<Option<KeyValue>>,
    ) -> Result<(), IpamError> {
        self.gateway = Some(hold);
        if let Some(kv) = record {
            self.gateway_record = Some(PlannedGatewayHandle::new(hold, kv.as_ref())?);
        }
        Ok(())
    }

    /// The gateway handle, read now if the snapshot did not have it.
    fn gateway_record(&mut self) -> Result<&mut PlannedGatewayHandle, IpamError> {
        let hold = self.gateway.expect("keep_gateways comes first");
        if self.gateway_record.is_none() {
            self.may_read()?;
            let kv = self.store.get(&keys::handle(&hold.handle))?;
            self.gateway_record = Some(PlannedGatewayHandle::new(hold, kv.as_ref())?);
        }
        Ok(self.gateway_record.as_mut().expect("set above"))
    }

    /// Whether the gateway handle, as far as the plan has it, lists `ip`; if so the commit
    /// compares the handle.
    fn gateway_listed(&mut self, ip: IpAddr) -> bool {
        match self.gateway_record.as_mut() {
            Some(rec) if rec.lists(ip) => {
                rec.relied = true;
                true
            }
            _ => false,
        }
    }

    /// A block this plan already has that holds `ip` for `pool`.
    fn planned_block_of(&self, pool: &PoolInfo, ip: IpAddr) -> Option<String> {
        self.blocks
            .iter()
            .find(|(_, b)| {
                !b.deleted && b.block.tiling() == Some(pool.tiling) && b.block.cidr.contains(&ip)
            })
            .map(|(k, _)| k.clone())
    }

    /// Holds gateway `ip` for the gateway handle, in this plan's transaction, unless it is
    /// held already or nothing could give it to a pod (outside every pool, reserved, a pool
    /// edge address). Fails when another handle holds it.
    pub(super) fn hold_gateway(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        let ctx = self.ctx;
        let hold = self.gateway.expect("keep_gateways comes first");
        let Some(pool) = ctx.pool_containing(ip) else {
            return Ok(());
        };
        if pool.is_edge_address(ip) || ctx.reservation_of(ip).is_some() || self.gateway_listed(ip) {
            return Ok(());
        }
        let key = match self.planned_block_of(pool, ip) {
            Some(key) => key,
            None => {
                self.gateway_record()?;
                if self.gateway_listed(ip) {
                    return Ok(());
                }
                match self.block_for(pool, ip) {
                    Ok(key) => key,
                    Err(IpamError::AddressInUse { handle, .. }) if handle == hold.handle => {
                        return Ok(())
                    }
                    Err(IpamError::AddressInUse { ip, handle }) => {
                        return Err(IpamError::GatewayInUse { ip, handle })
                    }
                    // No pool hands out an address of a leftover block.
                    Err(IpamError::LeftoverBlock { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        let planned = &self.blocks[&key];
        let off = offset_in_block(&planned.block.cidr, ip).expect("the block holds ip");
        match planned.block.allocations.get(&off) {
            Some(h) if *h == hold.handle => {
                self.gateway_blocks.insert(key);
                return Ok(());
            }
            Some(h) => {
                return Err(IpamError::GatewayInUse {
                    ip,
                    handle: h.clone(),
                })
            }
            None => {}
        }
        let rec = self.gateway_record()?;
        rec.record.addresses.push(HandleAddress {
            ip,
            block: key.clone(),
        });
        rec.changed = true;
        let planned = self.blocks.get_mut(&key).expect("found above");
        let next = planned.block.next;
        Self::occupy(planned, pool, off, &hold.handle);
        planned.block.next = next; // Like a fixed address, it does not move the cursor.
        self.use_pool(pool);
        Ok(())
    }

    fn txn_parts(&self) -> (Vec<Compare>, Vec<Op>) {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (key, b) in &self.blocks {
            if b.changed {
                block_ops(key, b, &mut compares, &mut ops);
            }
        }
        for (tiling, idx) in &self.indexes {
            if idx.changed {
                idx.ops(tiling, &mut compares, &mut ops);
            }
        }
        for slot in &self.pools_used {
            if let Some(p) = self.ctx.pools.get(*slot) {
                compares.push(Compare::unchanged(p.key.clone(), p.revision));
            }
        }
        for key in &self.gateway_blocks {
            match self.blocks.get(key) {
                Some(b) if !b.changed => compares.push(Compare::unchanged(key, b.revision)),
                _ => {}
            }
        }
        if let Some(rec) = self
            .gateway_record
            .as_ref()
            .filter(|r| r.changed || r.relied)
        {
            let key = keys::handle(&rec.record.id);
            compares.push(Compare::unchanged(key.clone(), rec.revision));
            if rec.changed {
                ops.push(Op::Put(key, encode(&rec.record)));
            }
        }
        (compares, ops)
    }

    /// Commits every change plus the handle record in one transaction, adding `extra`
    /// compares. Returns the outcome and the writes.
    pub(super) fn commit(
        &self,
        handle: (&HandleRecord, i64),
        extra: Vec<Compare>,
    ) -> Result<(TxnOutcome, Vec<Op>), IpamError> {
        let (mut compares, mut ops) = self.txn_parts();
        compares.extend(extra);
        let (rec, rev) = handle;
        let gateways = self.gateway_record.as_ref().map(|g| &g.record);
        for rec in std::iter::once(rec).chain(gateways) {
            if rec.addresses.len() as u64 > MAX_ADDRESSES_PER_REQUEST {
                return Err(too_many_addresses(format!(
                    "handle {:?} would hold {}",
                    rec.id,
                    rec.addresses.len()
                )));
            }
        }
        let key = keys::handle(&rec.id);
        compares.push(Compare::unchanged(key.clone(), rev));
        ops.push(Op::Put(key, encode(rec)));
        let outcome = self.store.txn(&compares, &ops)?;
        Ok((outcome, ops))
    }

    /// After a failed request, keeps only what it learned about full blocks (best effort),
    /// so the next request skips them without reading them. Only blocks this plan took no
    /// address from count: their fullness is a fact of the store, not of the abandoned plan.
    pub(super) fn save_hints(&self) {
        if self.from_view {
            return;
        }
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (tiling, idx) in &self.indexes {
            if !idx.changed || idx.original.blocks.is_empty() {
                continue;
            }
            let mut hints = idx.original.clone();
            for e in &mut hints.blocks {
                let Some(key) = tiling.block(e.ordinal).map(|b| keys::block(&e.home, &b)) else {
                    continue;
                };
                let Some(pb) = self.blocks.get(&key) else {
                    continue;
                };
                if !e.full
                    && pb.block.marked_full
                    && pb.changed
                    && !pb.allocated
                    && pb.revision != 0
                {
                    e.full = true;
                    block_ops(&key, pb, &mut compares, &mut ops);
                }
            }
            if hints != idx.original {
                idx.with_index(hints).ops(tiling, &mut compares, &mut ops);
            }
        }
        if !ops.is_empty() {
            let _ = self.store.txn(&compares, &ops);
        }
    }
}

/// The compare and the write of a changed block.
pub(super) fn block_ops(
    key: &str,
    b: &PlannedBlock,
    compares: &mut Vec<Compare>,
    ops: &mut Vec<Op>,
) {
    compares.push(Compare::unchanged(key, b.revision));
    ops.push(if b.deleted {
        Op::Delete(key.to_string())
    } else {
        Op::Put(key.to_string(), encode(&b.block))
    });
}

/// How many blocks of one Spiderpool pool an allocation considers.
const MAX_SHARED_BLOCKS: u128 = 1 << 16;

/// A block as read, unchanged so far.
pub(super) fn planned_block(kv: &KeyValue) -> Result<PlannedBlock, IpamError> {
    Ok(PlannedBlock {
        block: decode(kv)?,
        revision: kv.mod_revision,
        changed: false,
        allocated: false,
        deleted: false,
    })
}

/// The addresses of a block that are allocated, with their handle.
pub(super) fn allocated(block: &Block) -> impl Iterator<Item = (IpAddr, &String)> {
    block
        .allocations
        .iter()
        .map(move |(off, a)| (addr_in_block(&block.cidr, *off), a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn put(store: &MemoryStore, key: String, value: serde_json::Value) {
        let op = Op::Put(key, serde_json::to_vec(&value).unwrap());
        store.txn(&[], &[op]).unwrap();
    }

    /// Plans `count` addresses from the pool named `pool` on a fresh node; returns the
    /// blocks looked at and the blocks the plan holds.
    fn plan_many(store: &MemoryStore, pool: &str, count: usize) -> (u64, usize) {
        let ctx =
            Context::from_records(&store.range(keys::CONFIG_PREFIX).unwrap(), None, None).unwrap();
        let pools: Vec<&PoolInfo> = ctx.pools.iter().filter(|p| p.name == pool).collect();
        let mut plan = Plan::new(store, &ctx, "n", &[], false).unwrap();
        for _ in 0..count {
            plan.assign_auto(&pools, Family::V4, "h").unwrap();
        }
        (plan.probes, plan.blocks.len())
    }

    #[test]
    fn many_addresses_look_at_each_node_block_about_once() {
        let store = MemoryStore::new();
        put(
            &store,
            keys::pool("big"),
            serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "big"}, "spec": {"cidr": "10.0.0.0/16", "blockSize": 26}}),
        );
        let (probes, blocks) = plan_many(&store, "big", 2000);
        assert_eq!(blocks, 32);
        // Once per address, plus once more for each block when it is full.
        assert!(probes <= 2000 + 32, "{probes} blocks considered");
    }

    #[test]
    fn many_spiderpool_addresses_look_at_each_shared_block_about_once() {
        let store = MemoryStore::new();
        put(
            &store,
            keys::spider_pool("sp"),
            serde_json::json!({"apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderIPPool", "metadata": {"name": "sp"},
                "spec": {"subnet": "10.9.0.0/20", "ips": ["10.9.0.0-10.9.15.255"]}}),
        );
        let (probes, blocks) = plan_many(&store, "sp", 2000);
        assert_eq!(blocks, 32);
        assert!(probes <= 2000 + 32, "{probes} blocks considered");
    }
}
