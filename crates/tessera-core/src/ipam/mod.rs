//! The allocator: hands out addresses from pools tiled into node-affine blocks.
//!
//! Every operation reads what it needs in as few snapshots as possible, decides in memory
//! (a [`assign::Plan`]), and commits all its writes in one compare-and-swap transaction. When a
//! compare fails (another node or process changed a record it read) it starts over, up to
//! [`MAX_ATTEMPTS`] times ([`retry::on_conflict`]). Because the commit is one transaction, a
//! request either gets every address it asked for (IPv4 and IPv6, several addresses) or none,
//! and a crash at any moment leaves the store exactly as before or exactly as after.

mod assign;
mod attachments;
pub mod cache;
mod context;
mod holders;
mod index;
mod inspect;
mod picture;
mod readiness;
mod records;
mod release;
mod select;
mod sticky;

use std::net::IpAddr;

use ipnet::IpNet;

pub use assign::free_address_count;
pub use attachments::Attachment;
pub use context::{
    block_len_u32, is_edge_address, parse_net_or_addr, Context, PoolInfo, Requester, SpiderInfo,
};
pub use holders::Holder;
pub use inspect::{AddressInfo, BlockUsage, CheckReport, PoolUsage, Usage};
pub use picture::{
    picture, usage_counts, GroupKey, GroupPicture, NodeBlocks, NodeTotal, Picture, PoolPicture,
};
pub use readiness::{Readiness, ReadinessQuery};
pub use records::{
    Allocation, Attributes, Block, HandleAddress, HandleRecord, IndexEntry, PoolIndex,
};
pub use select::{
    parse_pool_annotation, Family, IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION,
    IP_ADDRS_ANNOTATION, SPIDER_POOL_REF,
};
pub use sticky::{is_earlier_pod, misfit};

use crate::keys;
use crate::retry::{self, MAX_ATTEMPTS};
use crate::store::{Compare, KeyValue, Op, Read, Store, StoreError, TxnOutcome};
use crate::text::quoted;
use assign::Plan;
use cache::{ByValue, CachedKv, NodeCache, NodeView};
pub use records::decode;
use release::Released;

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be read.
    #[error("record {key} in the datastore is damaged: {reason}; run `tessera ipam check`")]
    CorruptRecord {
        /// Store key.
        key: String,
        /// Decoder message.
        reason: String,
    },
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A named pool does not exist.
    #[error("IP pool {} does not exist; list pools with `tessera get ippool`", quoted(.0))]
    PoolNotFound(String),
    /// A named pool is disabled.
    #[error("IP pool {0:?} is disabled; enable it with `tessera patch ippool {0} -p '{{\"spec\":{{\"disabled\":false}}}}'` or choose another pool")]
    PoolDisabled(String),
    /// A named pool is of the other address family.
    #[error("IP pool {pool:?} is not an {family} pool")]
    PoolWrongFamily {
        /// Pool name.
        pool: String,
        /// Family the request needed.
        family: Family,
    },
    /// A named pool does not allow workload addresses.
    #[error("IP pool {0:?} does not allow Workload addresses (see spec.allowedUses)")]
    PoolNotForWorkloads(String),
    /// No pool can serve the node.
    #[error("no enabled {family} IP pool selects node {node:?}{namespace}; create one with a matching nodeSelector, or label the node")]
    NoPool {
        /// Address family.
        family: Family,
        /// Node name.
        node: String,
        /// Namespace note, if a namespace restricted the choice.
        namespace: String,
    },
    /// Every candidate pool is out of addresses for this node.
    #[error("no free {family} address for node {node:?} in pool(s) {pools}: {reason}")]
    Exhausted {
        /// Address family.
        family: Family,
        /// Node name.
        node: String,
        /// The pools tried, comma separated.
        pools: String,
        /// Why nothing could be found.
        reason: String,
    },
    /// Every candidate Spiderpool pool refuses the workload.
    #[error("no {family} pool accepts this workload: {reasons}")]
    PoolsRefuse {
        /// Address family.
        family: Family,
        /// Pool by pool, why it refused.
        reasons: String,
    },
    /// A requested address is not in any pool.
    #[error("address {0} is not in any IP pool")]
    AddressNotInPool(IpAddr),
    /// A requested address is already allocated.
    #[error("address {ip} is already in use by handle {}", quoted(.handle))]
    AddressInUse {
        /// The address.
        ip: IpAddr,
        /// Handle holding it.
        handle: String,
    },
    /// A requested address is reserved.
    #[error("address {ip} is reserved by IPReservation {reservation:?}")]
    AddressReserved {
        /// The address.
        ip: IpAddr,
        /// Reservation name.
        reservation: String,
    },
    /// A requested address is a pool's IPv4 network or broadcast address, or its IPv6
    /// subnet-router anycast address.
    #[error(
        "address {ip} is {} of pool {pool:?} and is never handed out",
        context::edge_address_kind(.ip)
    )]
    AddressUnusable {
        /// The address.
        ip: IpAddr,
        /// Pool name.
        pool: String,
    },
    /// The gateway a request must hold (see [`GatewayHold`]) is another handle's address.
    #[error(
        "gateway {ip}, which the main plugin puts on the host side, is already in use by \
         handle {}, so it cannot be the gateway",
        quoted(.handle)
    )]
    GatewayInUse {
        /// The gateway.
        ip: IpAddr,
        /// Handle holding it.
        handle: String,
    },
    /// A requested address lies in a block left over from a deleted or re-cut pool.
    #[error("address {ip} lies in block {block}, left over from a deleted pool and still holding addresses; release those first (`tessera ipam show --show-blocks` lists them)")]
    LeftoverBlock {
        /// The address.
        ip: IpAddr,
        /// The leftover block.
        block: IpNet,
    },
    /// A plan made from a node's cached view needed records the view does not hold. The
    /// allocator answers it with a fresh read; callers of [`Ipam`] never see it.
    #[error("the node's cached view does not hold every record this request needs")]
    BeyondView,
    /// Too many concurrent writers touched the same records.
    #[error("gave up after {0} attempts: the datastore is too busy with concurrent changes to the same records; try again")]
    Contention(u32),
}

impl IpamError {
    /// True when retrying later may succeed (datastore unavailable or too busy).
    pub fn is_transient(&self) -> bool {
        match self {
            IpamError::Store(e) => e.is_transient(),
            IpamError::Contention(_) => true,
            _ => false,
        }
    }
}

/// What a caller wants allocated under one handle.
#[derive(Clone, Debug, Default)]
pub struct AssignRequest {
    /// Handle id, e.g. `<network>.<containerID>`.
    pub handle: String,
    /// For a StatefulSet pod ([`Attributes::statefulset`]) asked for with
    /// [`Ipam::assign_new`] ([`Ipam::assign`] ignores it): the handle named after the pod
    /// that holds its addresses while stickiness is on (IPAMConfiguration
    /// `enableStatefulSet`). The configuration read with the allocation decides: on, the
    /// addresses go to this handle; off, to [`AssignRequest::handle`], recorded like any other
    /// pod's (without the StatefulSet), and what this handle held for an earlier pod of the
    /// name is released.
    pub sticky_handle: Option<String>,
    /// Node the workload runs on.
    pub node: String,
    /// Who the addresses are for (namespace, pod, interface, container id).
    pub attrs: Attributes,
    /// Number of IPv4 addresses from pools.
    pub num_v4: u32,
    /// Number of IPv6 addresses from pools.
    pub num_v6: u32,
    /// Specific addresses (e.g. `cni.projectcalico.org/ipAddrs`), in addition to the counts.
    pub ips: Vec<IpAddr>,
    /// Pools named for this workload (pod annotations, `--pool`), names or CIDRs, in fallback
    /// order. They win over the namespace's annotations.
    pub pools: Vec<String>,
    /// Pools named by the network configuration (CNI `ipv4_pools`/`ipv6_pools`), used when
    /// neither the workload nor its namespace names pools.
    pub default_pools: Vec<String>,
    /// The pod's labels, when the caller knows them (Spiderpool `podAffinity`).
    pub pod_labels: Option<std::collections::BTreeMap<String, String>>,
    /// The namespace's labels and annotations, when the caller read them from Kubernetes:
    /// they take the place of the stored namespace record, which is then neither read nor
    /// compared.
    pub namespace_record: Option<crate::resources::kube::Namespace>,
    /// The gateway the main plugin configures on the host side, to hold for the network.
    pub gateway: Option<GatewayHold>,
}

impl AssignRequest {
    /// The namespace whose stored record the plan reads: none when the request brings the
    /// namespace's labels and annotations itself.
    fn stored_namespace(&self) -> Option<&str> {
        self.attrs
            .namespace
            .as_deref()
            .filter(|_| self.namespace_record.is_none())
    }
}

/// The gateway a main plugin makes its own address on the host side (`bridge` with
/// `isGateway`, `ptp`): the first address of each assigned address's pool or block.
///
/// The allocator never gives it to the request, and holds it under [`GatewayHold::handle`]
/// in the same transaction as the first request that needs it, so that no pod is ever given
/// it. Later requests see it held at no extra round trip: in the block they take their
/// address from (per block), or in the gateway handle, read with their snapshot (per pool).
/// A gateway that is reserved, a pool edge address or outside every pool needs no hold.
#[derive(Clone, Debug, Default)]
pub struct GatewayHold {
    /// The handle holding the network's gateways, e.g. `<network>:gateway`.
    pub handle: String,
    /// Recorded with that handle ([`Attributes::gateway_of`] names the network).
    pub attrs: Attributes,
    /// The gateway is the first address of the address's block rather than of its pool.
    pub per_block: bool,
    /// Pool names and CIDRs whose addresses get a configured gateway instead.
    pub configured: Vec<String>,
}

impl GatewayHold {
    /// The address to hold as the gateway of `a`, if it needs one: none for a pool with a
    /// gateway of its own (SpiderIPPool `gateway`) or one [`GatewayHold::configured`] covers.
    pub fn gateway_of(&self, a: &AssignedAddress) -> Option<IpAddr> {
        let configured = self.configured.iter().any(|k| {
            (!a.pool.is_empty() && *k == a.pool)
                || k.parse::<IpNet>().is_ok_and(|net| net.contains(&a.ip))
        });
        if a.gateway.is_some() || configured {
            return None;
        }
        crate::net::first_host(&if self.per_block { a.block } else { a.pool_cidr })
    }

    /// The gateway a request keeps out of `block` of `pool`: never its own address.
    fn kept_back(&self, pool: &PoolInfo, block: IpNet) -> Option<IpAddr> {
        let scope = if self.per_block { block } else { pool.cidr() };
        let gw = crate::net::first_host(&scope)?;
        self.gateway_of(&pool.assigned(gw, block))
    }
}

/// One address handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignedAddress {
    /// The address.
    pub ip: IpAddr,
    /// Name of its pool.
    pub pool: String,
    /// The pool's network.
    pub pool_cidr: IpNet,
    /// The block's network.
    pub block: IpNet,
    /// Gateway for the workload (Spiderpool pools that set one).
    pub gateway: Option<IpAddr>,
    /// Routes for the workload (Spiderpool pools that set them).
    pub routes: Vec<crate::resources::spider::Route>,
    /// VLAN id of the pool, when set.
    pub vlan: Option<i64>,
}

/// Result of an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The handle.
    pub handle: String,
    /// Addresses handed out by this request, IPv4 first.
    pub addresses: Vec<AssignedAddress>,
    /// Addresses held for an earlier pod of this StatefulSet pod's name that no longer fit
    /// the request and were released for new ones, and why (see [`misfit`]).
    pub released_held: Option<(Vec<IpAddr>, String)>,
}

/// What [`Ipam::release_handle_of`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleRelease {
    /// The handle's addresses were released (none when the handle did not exist).
    Released(Vec<IpAddr>),
    /// The handle exists but was assigned to another workload (these are its attributes); it
    /// was left as it is.
    NotOwned(Attributes),
}

/// The allocator over a store.
pub struct Ipam<S> {
    store: S,
    cache: Option<Box<dyn NodeCache>>,
}

/// How one attempt at an assignment ended.
enum Attempt {
    /// Committed; with the configuration it was decided on.
    Done(Assignment, Box<Context>),
    /// A compare failed: nothing was written.
    Conflict,
}

/// The records one allocation plans from: a snapshot read, or a node's cached view.
struct Inputs {
    config: Vec<KeyValue>,
    node: Option<KeyValue>,
    namespace: Option<KeyValue>,
    blocks: Vec<KeyValue>,
    handle: Option<KeyValue>,
    /// The gateway handle, when read (`Some(None)`: it does not exist).
    gateway: Option<Option<KeyValue>>,
}

impl Inputs {
    fn from_view(view: &NodeView, namespace: Option<&str>, gateway: Option<CachedKv>) -> Self {
        let all = |kvs: &[CachedKv]| kvs.iter().map(CachedKv::to_kv).collect();
        Self {
            config: all(&view.config),
            node: view.node_record.as_ref().map(CachedKv::to_kv),
            namespace: namespace
                .and_then(|ns| view.namespaces.get(ns))
                .and_then(|kv| kv.as_ref().map(CachedKv::to_kv)),
            blocks: all(&view.blocks),
            handle: None,
            gateway: gateway.map(|kv| Some(kv.to_kv())),
        }
    }
}

/// `req` as the configuration records `config` have it made (see
/// [`AssignRequest::sticky_handle`]; `sticky` is that handle when it counts), the attributes
/// to record, and the handles that must not exist for it: `aliases` and the other of the
/// request's two handles.
fn resolved(
    req: &AssignRequest,
    sticky: Option<&str>,
    config: &[KeyValue],
    aliases: &[String],
) -> Result<(AssignRequest, Attributes, Vec<String>), IpamError> {
    let (req, other) = match sticky {
        Some(_) => sticky::resolve(req, sticky::stickiness_on(config)?),
        None => (req.clone(), None),
    };
    let mut attrs = req.attrs.clone();
    attrs.node = Some(req.node.clone());
    let absent = aliases.iter().cloned().chain(other).collect();
    Ok((req, attrs, absent))
}

/// Why a requested address is refused: an IPv4-mapped IPv6 address stands for an IPv4 one.
fn mapped_request_problem(ip: IpAddr) -> Option<String> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let v4 = v6.to_ipv4_mapped()?;
    Some(format!(
        "{ip} is an IPv4-mapped IPv6 address ({} stands for IPv4 addresses); ask for {v4} \
         instead",
        crate::net::IPV4_MAPPED_TEXT
    ))
}

impl<S: Store> Ipam<S> {
    /// An allocator over `store`.
    pub fn new(store: S) -> Self {
        Self { store, cache: None }
    }

    /// Keeps each node's view of its records in `cache` between requests, so that the common
    /// allocation and release are one transaction without a read before it (see [`cache`]).
    /// Worth it on a remote store; correctness never depends on the cache.
    pub fn with_cache(mut self, cache: impl NodeCache + 'static) -> Self {
        self.cache = Some(Box::new(cache));
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Allocates what `req` asks for, all or nothing. When the handle already holds
    /// addresses, the new ones are added to it.
    ///
    /// Common path: one snapshot read (configuration, node, namespace, the node's blocks)
    /// and one transaction; with a cache, the transaction alone.
    pub fn assign(&self, req: &AssignRequest) -> Result<Assignment, IpamError> {
        match self.assign_inner(req, None)? {
            Some((done, _)) => Ok(done),
            None => unreachable!("an assign that may extend its handle always assigns"),
        }
    }

    /// Allocates what `req` asks for to a handle that does not exist yet; `Ok(None)` when it
    /// does (a retried request: see [`Ipam::attachment`] for what it holds). A StatefulSet
    /// pod's handle ([`Attributes::statefulset`]) left by an earlier pod of the same name is
    /// taken over with its addresses, when they still fit the request (see `sticky`). Returns the
    /// configuration the allocation was decided on too, current as of its commit.
    ///
    /// The same round trips as [`Ipam::assign`]: the handle is read in the snapshot, or, from
    /// a cached view, compared as absent.
    pub fn assign_new(
        &self,
        req: &AssignRequest,
    ) -> Result<Option<(Assignment, Context)>, IpamError> {
        self.assign_inner(req, Some(&[]))
    }

    /// [`Ipam::assign_new`], answering `Ok(None)` as well when a handle named in `aliases`
    /// exists: other ids the same workload's addresses may be held under (ids an earlier
    /// version gave it). The aliases are read in the same snapshot as the handle, or from a
    /// cached view compared absent at commit, so the common path costs no extra round trip.
    pub fn assign_new_unless(
        &self,
        req: &AssignRequest,
        aliases: &[String],
    ) -> Result<Option<(Assignment, Context)>, IpamError> {
        self.assign_inner(req, Some(aliases))
    }

    /// `new_only`: `None` extends an existing handle; `Some(aliases)` assigns only when
    /// neither the handle nor any alias exists.
    fn assign_inner(
        &self,
        req: &AssignRequest,
        new_only: Option<&[String]>,
    ) -> Result<Option<(Assignment, Context)>, IpamError> {
        let only_new = new_only.is_some();
        let aliases = new_only.unwrap_or_default();
        let sticky = req.sticky_handle.as_deref().filter(|_| only_new);
        for id in std::iter::once(req.handle.as_str()).chain(sticky) {
            if let Some(problem) = crate::validate::names::handle_id_problem(id) {
                return Err(IpamError::InvalidRequest(problem));
            }
        }
        if let Some(problem) = req.ips.iter().find_map(|ip| mapped_request_problem(*ip)) {
            return Err(IpamError::InvalidRequest(problem));
        }
        check_node_name(&req.node)?;
        if req.num_v4 == 0 && req.num_v6 == 0 && req.ips.is_empty() {
            return Err(IpamError::InvalidRequest(
                "nothing to assign: ask for IPv4 or IPv6 addresses or specific IPs".into(),
            ));
        }
        assign::check_request_size(req)?;
        if let Some(gw) = &req.gateway {
            if let Some(problem) = crate::validate::names::handle_id_problem(&gw.handle) {
                return Err(IpamError::InvalidRequest(problem));
            }
            if gw.handle == req.handle || sticky == Some(gw.handle.as_str()) {
                return Err(IpamError::InvalidRequest(format!(
                    "the gateway handle {} must not be the request's own handle",
                    quoted(&gw.handle)
                )));
            }
        }
        // A per-pool gateway usually lies in another node's block: its handle, read with the
        // snapshot, tells whether it is held.
        let gateway_key = req
            .gateway
            .as_ref()
            .filter(|gw| !gw.per_block)
            .map(|gw| keys::handle(&gw.handle));
        let namespace = req.stored_namespace();

        let cached = self.cache.as_ref().and_then(|c| c.load_view(&req.node));
        let usable = cached.as_ref().filter(|v| v.covers(namespace));
        if let Some(view) = usable {
            let gateway = req
                .gateway
                .as_ref()
                .filter(|_| gateway_key.is_some())
                .and_then(|gw| self.cache.as_ref()?.load_handle(&gw.handle));
            let inputs = Inputs::from_view(view, namespace, gateway);
            let (req, attrs, absent) = resolved(req, sticky, &inputs.config, aliases)?;
            match self.try_assign(&req, &attrs, inputs, Some(view), true, &absent) {
                Ok(Attempt::Done(done, ctx)) => return Ok(Some((done, *ctx))),
                // A stale view or a request the view cannot answer: the fresh read decides.
                Ok(Attempt::Conflict) | Err(IpamError::BeyondView) => {}
                Err(IpamError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        let mut released_held = None;
        let done: Result<_, IpamError> = retry::on_conflict(MAX_ATTEMPTS, &req.handle, |attempt| {
            // The first read assumes the handle is new (it nearly always is) and saves
            // reading it: the commit's "absent" compare catches an existing one, and the
            // reads after a failed commit (from the view or not) read it.
            let read_handle = attempt > 0 || usable.is_some() || only_new;
            let mut reads = vec![
                Read::Prefix(keys::CONFIG_PREFIX.into()),
                Read::Get(keys::node(&req.node)),
                Read::Prefix(keys::blocks_of(&req.node)),
            ];
            if let Some(ns) = namespace {
                reads.push(Read::Get(keys::namespace(ns)));
            }
            if read_handle {
                reads.push(Read::Get(keys::handle(&req.handle)));
            }
            reads.extend(sticky.map(|id| Read::Get(keys::handle(id))));
            reads.extend(aliases.iter().map(|a| Read::Get(keys::handle(a))));
            if let Some(key) = &gateway_key {
                reads.push(Read::Get(key.clone()));
            }
            let mut results = self.store.read(&reads)?.results.into_iter();
            let mut next = || results.next().unwrap_or_default();
            let inputs = Inputs {
                config: next(),
                node: next().pop(),
                blocks: next(),
                namespace: if namespace.is_some() {
                    next().pop()
                } else {
                    None
                },
                handle: if read_handle { next().pop() } else { None },
                gateway: None,
            };
            // With a pod-named handle, the attachment's own existing means a retried request,
            // and the pod-named one may be an earlier pod's.
            let (own, earlier) = match sticky {
                Some(_) => (inputs.handle.clone(), next().pop()),
                None => (None, inputs.handle.clone()),
            };
            let alias_exists = aliases.iter().any(|_| !next().is_empty());
            let inputs = Inputs {
                gateway: gateway_key.as_ref().map(|_| next().pop()),
                ..inputs
            };
            let retried = own.is_some() || alias_exists;
            if only_new && (retried || earlier.is_some()) {
                // A StatefulSet pod created again finds the handle its earlier self left.
                let earlier = earlier.as_ref().filter(|_| !retried);
                let mut attrs = req.attrs.clone();
                attrs.node = Some(req.node.clone());
                return Ok(match earlier {
                    Some(kv) => match self.take_over(req, &attrs, kv, &inputs)? {
                        sticky::TakeOver::NotEarlier => Some(None),
                        sticky::TakeOver::Kept(done, ctx) => Some(Some((done, *ctx))),
                        sticky::TakeOver::Released(ips, why) => {
                            released_held = Some((ips, why));
                            None
                        }
                        sticky::TakeOver::Conflict => None,
                    },
                    None => Some(None),
                });
            }
            let (req, attrs, absent) = resolved(req, sticky, &inputs.config, aliases)?;
            let fresh = self.try_assign(&req, &attrs, inputs, cached.as_ref(), false, &absent)?;
            Ok(match fresh {
                Attempt::Done(done, ctx) => Some(Some((done, *ctx))),
                Attempt::Conflict => None,
            })
        });
        let done = done?.ok_or(IpamError::Contention(MAX_ATTEMPTS))?;
        Ok(done.map(|(assignment, ctx)| {
            let assignment = Assignment {
                released_held,
                ..assignment
            };
            (assignment, ctx)
        }))
    }

    /// One plan and commit. `cached` is the node's view as loaded from the cache;
    /// `from_view` says whether `inputs` come from it rather than from a read. The commit
    /// requires the handles `absent` not to exist.
    fn try_assign(
        &self,
        req: &AssignRequest,
        attrs: &Attributes,
        inputs: Inputs,
        cached: Option<&NodeView>,
        from_view: bool,
        absent: &[String],
    ) -> Result<Attempt, IpamError> {
        let view = cached.filter(|_| from_view);
        let namespace = req.stored_namespace();
        let ctx = Context::from_records(
            &inputs.config,
            inputs.node.as_ref(),
            inputs.namespace.as_ref(),
        )?;
        // A plan from a view commits with value compares on what it took from the view.
        let cached_gateway = inputs
            .gateway
            .as_ref()
            .filter(|_| view.is_some())
            .and_then(|kv| CachedKv::from_kv(kv.as_ref()?));
        let by_value;
        let store: &dyn Store = match view {
            Some(v) => {
                by_value = ByValue::new(&self.store, v.records().chain(&cached_gateway));
                &by_value
            }
            None => &self.store,
        };
        let mut plan = Plan::new(store, &ctx, &req.node, &inputs.blocks, view.is_some())?;
        if let Some(gw) = &req.gateway {
            plan.keep_gateways(gw, inputs.gateway.clone())?;
        }
        let mut handle: HandleRecord = match &inputs.handle {
            Some(kv) => decode(kv)?,
            None => HandleRecord {
                id: req.handle.clone(),
                ..Default::default()
            },
        };
        handle.attrs = attrs.clone();

        let mut got = Vec::new();
        for ip in &req.ips {
            got.push(plan.assign_specific(*ip, &req.handle)?);
        }
        for (family, count) in [(Family::V4, req.num_v4), (Family::V6, req.num_v6)] {
            if count == 0 {
                continue;
            }
            let pools = select::candidate_pools(&ctx, family, &req.node, req)?;
            for _ in 0..count {
                match plan.assign_auto(&pools, family, &req.handle) {
                    Ok(a) => got.push(a),
                    Err(e) => {
                        plan.save_hints();
                        return Err(e);
                    }
                }
            }
        }
        if let Some(gw) = &req.gateway {
            let wanted: std::collections::BTreeSet<IpAddr> =
                got.iter().filter_map(|a| gw.gateway_of(a)).collect();
            for ip in wanted {
                plan.hold_gateway(ip)?;
            }
        }
        for a in &got {
            handle.addresses.push(HandleAddress {
                ip: a.ip,
                block: plan
                    .block_key_of(a.ip)
                    .expect("every address of the plan was taken from a block")
                    .to_string(),
            });
        }
        let handle_rev = inputs.handle.as_ref().map_or(0, |kv| kv.mod_revision);
        let mut extra = view.map(|v| v.compares(namespace)).unwrap_or_default();
        extra.extend(absent.iter().map(|a| Compare::absent(keys::handle(a))));
        let (outcome, ops) = plan.commit((&handle, handle_rev), extra)?;
        let TxnOutcome::Committed(revision) = outcome else {
            return Ok(Attempt::Conflict);
        };
        if let Some(cache) = &self.cache {
            remember_assign(
                cache.as_ref(),
                req,
                &inputs,
                cached,
                from_view,
                &ops,
                revision,
            );
        }
        let done = Assignment {
            handle: req.handle.clone(),
            addresses: got,
            released_held: None,
        };
        Ok(Attempt::Done(done, Box::new(ctx)))
    }

    /// Releases every address of a handle. Releasing an unknown or already released handle
    /// is not an error; the released addresses are returned.
    pub fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        match self.release_handle_of(handle, &|_| true)? {
            HandleRelease::Released(ips) => Ok(ips),
            HandleRelease::NotOwned(_) => unreachable!("every handle is accepted"),
        }
    }

    /// Releases every address of a handle only when `owns` accepts the attributes recorded
    /// with it (the workload it was assigned to); the release compares the record it checked,
    /// so a handle written meanwhile is never released on an older record's word. Like
    /// [`Ipam::release_handle`], an unknown handle releases nothing without an error.
    pub fn release_handle_of(
        &self,
        handle: &str,
        owns: &dyn Fn(&Attributes) -> bool,
    ) -> Result<HandleRelease, IpamError> {
        if let Some(cache) = &self.cache {
            if let Some(released) = self.release_from_view(cache.as_ref(), handle, owns)? {
                return Ok(HandleRelease::Released(released));
            }
        }
        let done: Result<_, IpamError> = retry::on_conflict(MAX_ATTEMPTS, handle, |_| {
            let Some(kv) = self.store.get(&keys::handle(handle))? else {
                if let Some(cache) = &self.cache {
                    cache.forget_handle(handle);
                }
                return Ok(Some(HandleRelease::Released(Vec::new())));
            };
            let rec: HandleRecord = decode(&kv)?;
            if !owns(&rec.attrs) {
                return Ok(Some(HandleRelease::NotOwned(rec.attrs)));
            }
            let targets = handle_targets(&rec);
            match release::release(&self.store, &targets, Some((&rec, kv.mod_revision)), None)? {
                Released::Done { ips, revision, ops } => {
                    if let Some(cache) = &self.cache {
                        cache.forget_handle(handle);
                        let view = rec.attrs.node.as_deref().and_then(|n| cache.load_view(n));
                        if let Some(view) = view {
                            save_applied(cache.as_ref(), view, &ops, revision);
                        }
                    }
                    Ok(Some(HandleRelease::Released(ips)))
                }
                Released::Conflict => Ok(None),
            }
        });
        done?.ok_or(IpamError::Contention(MAX_ATTEMPTS))
    }

    /// The release of a handle this node wrote, planned from the cached handle and the
    /// node's view: one transaction. `Ok(None)` when the view is stale or not enough, or
    /// when `owns` refuses the cached record (the store's record decides then).
    fn release_from_view(
        &self,
        cache: &dyn NodeCache,
        handle: &str,
        owns: &dyn Fn(&Attributes) -> bool,
    ) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let Some(cached) = cache.load_handle(handle) else {
            return Ok(None);
        };
        let kv = cached.to_kv();
        let Ok(rec) = decode::<HandleRecord>(&kv) else {
            cache.forget_handle(handle);
            return Ok(None);
        };
        if !owns(&rec.attrs) {
            return Ok(None);
        }
        let Some(view) = rec.attrs.node.as_deref().and_then(|n| cache.load_view(n)) else {
            return Ok(None);
        };
        let blocks: std::collections::BTreeMap<String, KeyValue> = view
            .blocks
            .iter()
            .map(|b| (b.key.clone(), b.to_kv()))
            .collect();
        let targets = handle_targets(&rec);
        let store = ByValue::new(&self.store, view.records().chain([&cached]));
        match release::release(
            &store,
            &targets,
            Some((&rec, kv.mod_revision)),
            Some(&blocks),
        ) {
            Ok(Released::Done { ips, revision, ops }) => {
                save_applied(cache, view, &ops, revision);
                cache.forget_handle(handle);
                Ok(Some(ips))
            }
            Ok(Released::Conflict) => Ok(None),
            Err(IpamError::Store(e)) => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    /// Releases single addresses, whoever holds them. Addresses that are not allocated are
    /// skipped; the released ones are returned with the handle that held them.
    pub fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let done: Result<_, IpamError> = retry::on_conflict(MAX_ATTEMPTS, "release-ips", |_| {
            let mut targets = Vec::new();
            for ip in ips {
                if let Some(info) = self.lookup(*ip)? {
                    if let Some(alloc) = info.allocation {
                        targets.push(release::Target {
                            ip: *ip,
                            block_key: info.block_key,
                            handle: alloc.handle,
                        });
                    }
                }
            }
            let held: Vec<(IpAddr, String)> =
                targets.iter().map(|t| (t.ip, t.handle.clone())).collect();
            Ok(match release::release(&self.store, &targets, None, None)? {
                Released::Done { ips, .. } => Some(
                    held.into_iter()
                        .filter(|(ip, _)| ips.contains(ip))
                        .collect::<Vec<_>>(),
                ),
                Released::Conflict => None,
            })
        });
        done?.ok_or(IpamError::Contention(MAX_ATTEMPTS))
    }

    /// Where an address stands: its pool, block and allocation, if any.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<AddressInfo>, IpamError> {
        inspect::lookup(&self.store, ip)
    }

    /// Releases a node's claim on its blocks (the node left the cluster): empty blocks are
    /// freed, blocks that still hold addresses stay where they are without affinity.
    pub fn release_node(&self, node: &str) -> Result<usize, IpamError> {
        check_node_name(node)?;
        retry::on_conflict(MAX_ATTEMPTS, node, |_| {
            release::release_node(&self.store, node)
        })?
        .ok_or(IpamError::Contention(MAX_ATTEMPTS))
    }

    /// Every handle holding an address in a block of the pool with network `pool` (what stops
    /// the pool from being deleted), with who it was given to.
    pub fn holders(&self, pool: ipnet::IpNet) -> Result<Vec<Holder>, IpamError> {
        holders::holders(&self.store, pool)
    }

    /// Pool, block and address usage (scans every block: an admin view, not a hot path).
    pub fn usage(&self) -> Result<Usage, IpamError> {
        inspect::usage(&self.store)
    }

    /// Allocated addresses per Spiderpool pool, for `get spiderippool` counts.
    pub fn spider_pool_usage(&self) -> Result<std::collections::BTreeMap<String, u128>, IpamError> {
        inspect::spider_pool_usage(&self.store)
    }

    /// Which of `leaving` are allocated in SpiderIPPool `pool` (the catalog asks before a
    /// pool loses addresses).
    pub fn spider_in_use(
        &self,
        pool: &str,
        leaving: &crate::ranges::IpRangeSet,
    ) -> Result<crate::catalog::InUse, IpamError> {
        inspect::spider_in_use(&self.store, pool, leaving)
    }

    /// Consistency check of blocks, indexes and handles (scans everything).
    pub fn check(&self) -> Result<CheckReport, IpamError> {
        inspect::check(&self.store)
    }
}

/// The allocator's answer to "which addresses leaving a SpiderIPPool are allocated?", as the
/// catalog asks it ([`crate::catalog::Catalog::with_in_use_check`]), so that shrinking or
/// deleting a pool never strands an address in use.
pub fn spider_in_use_check(
    store: &dyn Store,
) -> impl Fn(&str, &crate::ranges::IpRangeSet) -> Result<crate::catalog::InUse, StoreError> + '_ {
    move |pool, leaving| {
        Ipam::new(store)
            .spider_in_use(pool, leaving)
            .map_err(|e| match e {
                IpamError::Store(e) => e,
                other => StoreError::Corrupt {
                    endpoint: store.describe(),
                    reason: other.to_string(),
                },
            })
    }
}

/// Updates the node's view and caches the handle after an assign committed at `revision`
/// with `ops`, planned from `inputs`: read fresh, or (`from_view`) taken from `cached`.
fn remember_assign(
    cache: &dyn NodeCache,
    req: &AssignRequest,
    inputs: &Inputs,
    cached: Option<&NodeView>,
    from_view: bool,
    ops: &[Op],
    revision: i64,
) {
    let namespace = req.stored_namespace();
    let updated = match cached {
        Some(v) if from_view => Some(v.clone()),
        _ => NodeView::from_snapshot(
            &req.node,
            &inputs.config,
            inputs.node.as_ref(),
            namespace.map(|ns| (ns, inputs.namespace.as_ref())),
            &inputs.blocks,
        )
        .map(|mut fresh| {
            if let Some(older) = cached {
                fresh.keep_namespaces_of(older);
            }
            fresh
        }),
    };
    if let Some(updated) = updated {
        save_applied(cache, updated, ops, Some(revision));
    }
    remember_handle(cache, &req.handle, inputs.handle.as_ref(), ops, revision);
    if let Some(gw) = &req.gateway {
        // The gateway handle as written, else as read fresh: the next request from the view
        // compares it by value.
        let read = inputs.gateway.as_ref().and_then(Option::as_ref);
        if !remember_handle(cache, &gw.handle, read, ops, revision) && !from_view {
            if let Some(kv) = read.and_then(CachedKv::from_kv) {
                cache.save_handle(&gw.handle, &kv);
            }
        }
    }
}

/// Caches handle `id` when `ops` (committed at `revision`) wrote it; `read` is the record
/// as read before. Returns whether it did.
fn remember_handle(
    cache: &dyn NodeCache,
    id: &str,
    read: Option<&KeyValue>,
    ops: &[Op],
    revision: i64,
) -> bool {
    let key = keys::handle(id);
    let written = ops.iter().find_map(|op| match op {
        Op::Put(k, v) if *k == key => Some(v),
        _ => None,
    });
    let Some(value) = written.and_then(|v| String::from_utf8(v.clone()).ok()) else {
        return false;
    };
    let created = read.map_or(revision, |kv| kv.create_revision);
    cache.save_handle(
        id,
        &CachedKv {
            key,
            value,
            create_revision: created,
            mod_revision: revision,
        },
    );
    true
}

/// Saves `view` with the writes `ops` committed at `revision` (nothing when nothing was
/// written).
fn save_applied(cache: &dyn NodeCache, mut view: NodeView, ops: &[Op], revision: Option<i64>) {
    if let Some(revision) = revision {
        view.apply(ops, revision);
        cache.save_view(&view);
    }
}

/// What releasing every address of a handle touches.
fn handle_targets(rec: &HandleRecord) -> Vec<release::Target> {
    rec.addresses
        .iter()
        .map(|a| release::Target {
            ip: a.ip,
            block_key: a.block.clone(),
            handle: rec.id.clone(),
        })
        .collect()
}

/// Refuses a node name Kubernetes would refuse (see [`crate::validate::names::node_name_problem`]):
/// such a name would put the node's blocks under another home.
pub(crate) fn check_node_name(node: &str) -> Result<(), IpamError> {
    match crate::validate::names::node_name_problem(node) {
        Some(problem) => Err(IpamError::InvalidRequest(problem)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn every_entry_point_refuses_a_node_name_kubernetes_would_refuse() {
        let ipam = Ipam::new(MemoryStore::new());
        for node in ["a/x", "A B", keys::SHARED_HOME, ""] {
            let req = AssignRequest {
                handle: "h".into(),
                node: node.into(),
                num_v4: 1,
                ..Default::default()
            };
            let expected = crate::validate::names::node_name_problem(node).unwrap();
            let refused = |e: IpamError| {
                assert!(
                    matches!(&e, IpamError::InvalidRequest(p) if *p == expected),
                    "{node:?}: {e}"
                )
            };
            refused(ipam.assign(&req).unwrap_err());
            refused(ipam.assign_new(&req).unwrap_err());
            refused(ipam.release_node(node).unwrap_err());
            let query = ReadinessQuery {
                node: node.into(),
                families: vec![Family::V4],
                ..Default::default()
            };
            refused(ipam.readiness(&query).unwrap_err());
        }
        assert!(ipam.store().range("").unwrap().is_empty());
    }
}
