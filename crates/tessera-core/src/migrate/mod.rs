//! Guided migrations: moving the workloads of one IPPool to another, and changing a pool's
//! block size (seed 002's manual procedures) as steps that each make one atomic write.
//!
//! Nothing is kept outside the datastore. The next step is always planned from the records
//! alone ([`next_move_step`], [`next_block_size_step`]), and [`execute`] makes one step's write,
//! so a command interrupted anywhere continues where it stopped when run again. The order of the
//! writes never leaves both pools disabled: the target is created or enabled before the source
//! is disabled, and a pool recreated with a new block size is created enabled.
//!
//! The records that say where a migration is:
//! - the source disabled with a [`DRAIN_ANNOTATION`] request: waiting for its holders to go;
//! - the target's [`MIGRATED_FROM_ANNOTATION`] naming the source: the source is gone, so the
//!   move is done;
//! - a temporary pool's [`BLOCK_SIZE_MIGRATION_ANNOTATION`]: the manifest of the pool whose
//!   block size changes and the new size, so the pool can be recreated after its deletion.

mod checks;
mod records;
mod space;

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError};
use crate::drain::{
    drain_request, drain_status, DrainAnnotationError, DrainRequest, DrainStatus, DRAIN_ANNOTATION,
    DRAIN_STATUS_ANNOTATION,
};
use crate::ipam::{Holder, Ipam, IpamError};
use crate::resources::calico::{EncapMode, IPPool};
use crate::resources::{Kind, Resource};
use crate::store::{Store, StoreError};
use crate::validate::calico::effective_block_size;

pub use records::{pool_net, Records};
pub use space::{lowest_free, private_space_of};

/// Annotation a migration puts on its target: the name of the pool it moves workloads from.
/// Once that pool is gone, the move is done.
pub const MIGRATED_FROM_ANNOTATION: &str = "tessera.dev/migrated-from";

/// Annotation on the temporary pool of a block-size change: a [`BlockSizeChange`] as JSON.
pub const BLOCK_SIZE_MIGRATION_ANNOTATION: &str = "tessera.dev/block-size-migration";

/// What a temporary pool remembers of the pool whose block size changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockSizeChange {
    /// The pool's manifest as it was before the change.
    pub pool: serde_json::Value,
    /// The block size it is recreated with.
    pub block_size: u8,
}

/// Why a migration step was not taken.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A safety check failed; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A catalog command failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Reading allocations failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A drain annotation cannot be read.
    #[error(transparent)]
    Drain(#[from] DrainAnnotationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refused(reason: impl Into<String>) -> MigrateError {
    MigrateError::Refused(reason.into())
}

/// What the controller is asked for when a source is disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// Workloads restarting at once.
    pub max_parallel: u32,
    /// Seconds a restarted workload may take to become ready.
    pub ready_timeout_seconds: u64,
    /// RFC 3339 time of this run: the `requestedAt` of a new request.
    pub now: String,
}

/// The pool a move goes to.
#[derive(Clone, Debug)]
pub enum Target {
    /// An existing pool, by name.
    Pool(String),
    /// A pool to create (or that a previous run created) from this manifest.
    Manifest(Box<IPPool>),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Pool(name) => name,
            Target::Manifest(p) => &p.metadata.name,
        }
    }
}

/// `tessera ipam migrate --from A --to B`.
#[derive(Clone, Debug)]
pub struct MoveRequest {
    /// The pool to empty and delete.
    pub from: String,
    /// Where its workloads go.
    pub to: Target,
    /// What the drain request asks for.
    pub drain: DrainSettings,
}

/// `tessera ipam migrate --pool P --block-size N`.
#[derive(Clone, Debug)]
pub struct BlockSizeRequest {
    /// The pool whose block size changes.
    pub pool: String,
    /// The new block size.
    pub block_size: u8,
    /// The temporary pool's CIDR; default: the lowest free network of the pool's size in its
    /// private space.
    pub temporary_cidr: Option<IpNet>,
    /// The temporary pool's name; default: `<pool>-temporary`.
    pub temporary_name: Option<String>,
    /// What the drain requests ask for.
    pub drain: DrainSettings,
}

impl BlockSizeRequest {
    /// The message to end with once `step` is made: deleting the temporary pool is the last
    /// step, after which the records look like a pool that needs no change.
    pub fn done_after(&self, step: &Step) -> Option<String> {
        match step {
            Step::DeleteSource { pool, .. } if *pool != self.pool => Some(format!(
                "IPPool {} has block size {} and its workloads are back in it; the temporary \
                 IPPool {pool} is deleted",
                self.pool, self.block_size
            )),
            _ => None,
        }
    }
}

/// Who still holds addresses of a draining pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    /// The draining pool.
    pub pool: String,
    /// Its network.
    pub cidr: IpNet,
    /// The handles holding its addresses.
    pub holders: Vec<Holder>,
    /// The controller's last report, when one answers the pool's request.
    pub status: Option<DrainStatus>,
}

/// One step of a migration; every step but [`Step::Wait`] and [`Step::Done`] is one write.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Create a pool: a move's target, a temporary pool, or a pool recreated with its new
    /// block size.
    Create(Box<IPPool>),
    /// Enable the target (if disabled) and mark it with the source's name.
    PrepareTarget {
        /// The target.
        pool: String,
        /// The source.
        source: String,
    },
    /// Disable the source and put the drain request on it, in one write.
    DisableSource {
        /// The source.
        pool: String,
        /// The request.
        request: DrainRequest,
    },
    /// Nothing to write: the source's addresses are still held.
    Wait(Waiting),
    /// Delete the source: nothing holds its addresses.
    DeleteSource {
        /// The source.
        pool: String,
        /// Its network, checked once more for holders just before the delete.
        cidr: IpNet,
    },
    /// Nothing is left to do.
    Done(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create(p) => write!(f, "create IPPool {} ({})", p.metadata.name, settings(p)),
            Step::PrepareTarget { pool, source } => write!(
                f,
                "enable IPPool {pool} if disabled and mark it as the target of {source} \
                 ({MIGRATED_FROM_ANNOTATION}={source})"
            ),
            Step::DisableSource { pool, request } => write!(
                f,
                "disable IPPool {pool} and ask for its workloads to be restarted \
                 ({DRAIN_ANNOTATION}: maxParallel {}, readyTimeout {}s)",
                request.max_parallel, request.ready_timeout_seconds
            ),
            Step::Wait(w) => write!(
                f,
                "wait until nothing holds an address of IPPool {} ({}): {} held now",
                w.pool,
                w.cidr,
                count(w.holders.iter().map(|h| h.addresses.len()).sum(), "address")
            ),
            Step::DeleteSource { pool, .. } => write!(f, "delete IPPool {pool}"),
            Step::Done(message) => f.write_str(message),
        }
    }
}

/// `12 addresses`, `1 address`.
pub fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with("ss")) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        _ => format!("{n} {noun}s"),
    }
}

/// A pool's settings as one line: `cidr 10.0.0.0/24, blockSize 26, nodeSelector all(),
/// ipipMode Always, natOutgoing`.
pub fn settings(pool: &IPPool) -> String {
    let s = &pool.spec;
    let mut parts = vec![format!("cidr {}", s.cidr)];
    if let Some(net) = pool_net(pool) {
        parts.push(format!(
            "blockSize {}",
            effective_block_size(&net, s.block_size)
        ));
    }
    parts.push(format!(
        "nodeSelector {}",
        s.node_selector.as_deref().unwrap_or("all()")
    ));
    for (field, mode) in [("ipipMode", s.ipip_mode), ("vxlanMode", s.vxlan_mode)] {
        if let Some(mode) = mode.filter(|m| *m != EncapMode::Never) {
            parts.push(format!("{field} {mode:?}"));
        }
    }
    if s.nat_outgoing {
        parts.push("natOutgoing".into());
    }
    if s.disabled {
        parts.push("disabled".into());
    }
    parts.join(", ")
}

/// The next step of moving `req.from`'s workloads to `req.to`, from the store's records.
pub fn next_move_step<S: Store + ?Sized>(
    store: &S,
    req: &MoveRequest,
) -> Result<Step, MigrateError> {
    let records = Records::read(store)?;
    plan_move(&records, &|net| holders(store, net), req)
}

/// The next step of changing `req.pool`'s block size, from the store's records.
pub fn next_block_size_step<S: Store + ?Sized>(
    store: &S,
    req: &BlockSizeRequest,
) -> Result<Step, MigrateError> {
    let records = Records::read(store)?;
    plan_block_size(&records, &|net| holders(store, net), req)
}

fn holders<S: Store + ?Sized>(store: &S, net: IpNet) -> Result<Vec<Holder>, MigrateError> {
    Ok(Ipam::new(store).holders(net)?)
}

/// Who holds addresses of a network, as the planner asks.
pub type HoldersOf<'a> = dyn Fn(IpNet) -> Result<Vec<Holder>, MigrateError> + 'a;

/// The next step of a move, from `records` and `holders_of`.
pub fn plan_move(
    records: &Records,
    holders_of: &HoldersOf<'_>,
    req: &MoveRequest,
) -> Result<Step, MigrateError> {
    let target_name = req.to.name();
    if req.from == target_name {
        return Err(refused(format!(
            "the source and the target are the same pool {}; name another pool with --to",
            req.from
        )));
    }
    let stored_target = records.pools.get(target_name);
    let Some(source) = records.pools.get(&req.from) else {
        return match stored_target {
            Some(t) if marked_from(t) == Some(req.from.as_str()) => Ok(Step::Done(format!(
                "IPPool {} is gone and its workloads moved to IPPool {target_name}: the \
                 migration is done",
                req.from
            ))),
            _ => Err(refused(format!(
                "IPPool {} not found; pools: {}",
                req.from,
                records.pool_names()
            ))),
        };
    };
    let target = match (stored_target, &req.to) {
        (Some(t), Target::Manifest(m)) => {
            checks::same_network(t, m)?;
            t.clone()
        }
        (Some(t), Target::Pool(_)) => t.clone(),
        (None, Target::Manifest(m)) => (**m).clone(),
        (None, Target::Pool(name)) => {
            return Err(refused(format!(
                "IPPool {name} not found; pools: {}; to create it, pass its manifest with \
                 --to-file",
                records.pool_names()
            )))
        }
    };
    checks::not_kubernetes_owned(source)?;
    checks::not_kubernetes_owned(&target)?;
    checks::same_family(source, &target)?;
    let source_net = checks::network(source)?;
    let request = drain_request(&req.from, &source.metadata.annotations)?;
    if !(source.spec.disabled && request.is_some()) {
        if stored_target.is_none() {
            checks::no_overlap(records, &target)?;
        }
        checks::nodes_stay_served(records, source, &target, &holders_of(source_net)?)?;
        if let Some(step) = prepare_target(stored_target, &target, &req.from) {
            return Ok(step);
        }
        let requested_at = request.map_or_else(|| req.drain.now.clone(), |r| r.requested_at);
        return Ok(Step::DisableSource {
            pool: req.from.clone(),
            request: DrainRequest {
                requested_at,
                max_parallel: req.drain.max_parallel.max(1),
                ready_timeout_seconds: req.drain.ready_timeout_seconds,
            },
        });
    }
    // Draining. The target must stay enabled: an admin may have touched it meanwhile.
    if let Some(step) = prepare_target(stored_target, &target, &req.from) {
        return Ok(step);
    }
    let holders = holders_of(source_net)?;
    if holders.is_empty() {
        return Ok(Step::DeleteSource {
            pool: req.from.clone(),
            cidr: source_net,
        });
    }
    let status = drain_status(&req.from, &source.metadata.annotations)?
        .filter(|s| Some(&s.requested_at) == request.as_ref().map(|r| &r.requested_at));
    Ok(Step::Wait(Waiting {
        pool: req.from.clone(),
        cidr: source_net,
        holders,
        status,
    }))
}

/// Creating, or enabling and marking, the target when it is not ready yet.
fn prepare_target(stored: Option<&IPPool>, target: &IPPool, source: &str) -> Option<Step> {
    match stored {
        None => {
            let mut new = target.clone();
            new.spec.disabled = false;
            new.metadata
                .annotations
                .insert(MIGRATED_FROM_ANNOTATION.into(), source.into());
            Some(Step::Create(Box::new(new)))
        }
        Some(t) if t.spec.disabled || marked_from(t) != Some(source) => Some(Step::PrepareTarget {
            pool: t.metadata.name.clone(),
            source: source.into(),
        }),
        Some(_) => None,
    }
}

fn marked_from(pool: &IPPool) -> Option<&str> {
    pool.metadata
        .annotations
        .get(MIGRATED_FROM_ANNOTATION)
        .map(String::as_str)
}

/// The next step of a block-size change, from `records` and `holders_of`.
pub fn plan_block_size(
    records: &Records,
    holders_of: &HoldersOf<'_>,
    req: &BlockSizeRequest,
) -> Result<Step, MigrateError> {
    let mut temporary = None;
    for t in records.pools.values() {
        let Some(raw) = t.metadata.annotations.get(BLOCK_SIZE_MIGRATION_ANNOTATION) else {
            continue;
        };
        let change = block_size_change(t, raw)?;
        if change
            .pool
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            == Some(&req.pool)
        {
            temporary = Some((t, change));
            break;
        }
    }
    let pool = records.pools.get(&req.pool);
    let move_req = |from: &str, to: &str| MoveRequest {
        from: from.into(),
        to: Target::Pool(to.into()),
        drain: req.drain.clone(),
    };
    let Some((temp, change)) = temporary else {
        let Some(pool) = pool else {
            return Err(refused(format!(
                "IPPool {} not found; pools: {}",
                req.pool,
                records.pool_names()
            )));
        };
        if block_size_of(pool) == Some(req.block_size) {
            // Also what a run after a finished change finds.
            return Ok(Step::Done(format!(
                "IPPool {} has block size {}: nothing to change",
                req.pool, req.block_size
            )));
        }
        let temp = temporary_pool(records, pool, req)?;
        let first_move = MoveRequest {
            from: req.pool.clone(),
            to: Target::Manifest(Box::new(temp)),
            drain: req.drain.clone(),
        };
        return plan_move(records, holders_of, &first_move);
    };
    let temp_name = temp.metadata.name.as_str();
    if change.block_size != req.block_size {
        return Err(refused(format!(
            "a change of IPPool {}'s block size to {} is under way (IPPool {temp_name} holds \
             its workloads meanwhile); run `tessera ipam migrate --pool {} --block-size {}` to \
             finish it",
            req.pool, change.block_size, req.pool, change.block_size
        )));
    }
    match pool {
        Some(p) if block_size_of(p) != Some(change.block_size) => {
            plan_move(records, holders_of, &move_req(&req.pool, temp_name))
        }
        Some(_) => plan_move(records, holders_of, &move_req(temp_name, &req.pool)),
        None => Ok(Step::Create(Box::new(recreated(temp, &change, &req.pool)?))),
    }
}

fn block_size_change(temp: &IPPool, raw: &str) -> Result<BlockSizeChange, MigrateError> {
    serde_json::from_str(raw).map_err(|e| {
        refused(format!(
            "IPPool {}: annotation {BLOCK_SIZE_MIGRATION_ANNOTATION} is not valid: {e}; it \
             holds the manifest of the pool whose block size changes: restore it, or delete \
             the pool once nothing holds its addresses",
            temp.metadata.name
        ))
    })
}

/// The block size a pool's blocks have.
pub fn block_size_of(pool: &IPPool) -> Option<u8> {
    Some(effective_block_size(&pool_net(pool)?, pool.spec.block_size))
}

/// The temporary pool of a block-size change that starts now: `pool`'s settings, another
/// network, and the annotation that lets an interrupted run recreate `pool`.
fn temporary_pool(
    records: &Records,
    pool: &IPPool,
    req: &BlockSizeRequest,
) -> Result<IPPool, MigrateError> {
    checks::not_kubernetes_owned(pool)?;
    let net = checks::network(pool)?;
    checks::block_size_fits(pool, net, req.block_size)?;
    let name = req
        .temporary_name
        .clone()
        .unwrap_or_else(|| format!("{}-temporary", req.pool));
    if records.pools.contains_key(&name) {
        return Err(refused(format!(
            "IPPool {name} already exists; name the temporary pool with --temporary-pool"
        )));
    }
    let cidr = match req.temporary_cidr {
        Some(cidr) => cidr,
        None => checks::free_network_like(records, net)?,
    };
    let change = BlockSizeChange {
        pool: original_manifest(pool),
        block_size: req.block_size,
    };
    let mut temp = pool.clone();
    temp.metadata = Default::default();
    temp.metadata.name = name;
    temp.metadata.annotations.insert(
        BLOCK_SIZE_MIGRATION_ANNOTATION.into(),
        serde_json::to_string(&change).expect("a manifest serializes"),
    );
    temp.spec.cidr = cidr.to_string();
    temp.spec.disabled = false;
    Ok(temp)
}

/// `pool`'s manifest without what the store stamps or a migration adds.
fn original_manifest(pool: &IPPool) -> serde_json::Value {
    let mut p = pool.clone();
    let meta = &mut p.metadata;
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    for key in [
        DRAIN_ANNOTATION,
        DRAIN_STATUS_ANNOTATION,
        MIGRATED_FROM_ANNOTATION,
    ] {
        meta.annotations.remove(key);
    }
    Resource::IPPool(p).to_manifest()
}

/// The pool whose block size changes, as it is created again: its old manifest with the new
/// block size, enabled, marked as the target of the temporary pool.
fn recreated(temp: &IPPool, change: &BlockSizeChange, name: &str) -> Result<IPPool, MigrateError> {
    let bad = |reason: String| {
        refused(format!(
            "IPPool {}: annotation {BLOCK_SIZE_MIGRATION_ANNOTATION} does not hold a valid \
             IPPool manifest: {reason}; create IPPool {name} yourself with the new block size",
            temp.metadata.name
        ))
    };
    let resource =
        crate::decode::decode_document(change.pool.clone()).map_err(|e| bad(e.to_string()))?;
    let Resource::IPPool(mut pool) = resource else {
        return Err(bad(format!("it holds a {}", resource.kind())));
    };
    pool.spec.block_size = Some(change.block_size);
    pool.spec.disabled = false;
    pool.metadata
        .annotations
        .insert(MIGRATED_FROM_ANNOTATION.into(), temp.metadata.name.clone());
    Ok(pool)
}

/// Makes the write of one step. [`Step::Wait`] and [`Step::Done`] write nothing.
pub fn execute<S: Store + ?Sized>(store: &S, step: &Step) -> Result<(), MigrateError> {
    let catalog = Catalog::new(store);
    match step {
        Step::Create(pool) => {
            catalog.create(&[Resource::IPPool((**pool).clone())])?;
        }
        Step::PrepareTarget { pool, source } => {
            catalog.modify(Kind::IPPool, pool, false, |current| {
                let mut new = current.clone();
                if let Resource::IPPool(p) = &mut new {
                    p.spec.disabled = false;
                    p.metadata
                        .annotations
                        .insert(MIGRATED_FROM_ANNOTATION.into(), source.clone());
                }
                Ok(new)
            })?;
        }
        Step::DisableSource { pool, request } => {
            catalog.modify(Kind::IPPool, pool, false, |current| {
                disabled_with_request(current, request)
            })?;
        }
        Step::DeleteSource { pool, cidr } => {
            let held = holders(store, *cidr)?;
            if !held.is_empty() {
                return Err(refused(format!(
                    "IPPool {pool} is not deleted: {} of it are held again; run the same \
                     command again to wait for them",
                    count(held.iter().map(|h| h.addresses.len()).sum(), "address")
                )));
            }
            catalog.delete(&[(Kind::IPPool, pool.clone())], false)?;
        }
        Step::Wait(_) | Step::Done(_) => {}
    }
    Ok(())
}

/// The source disabled, with the drain request (an earlier request's `requestedAt` kept, so
/// the controller does not restart again what it restarted for it).
fn disabled_with_request(
    current: &Resource,
    request: &DrainRequest,
) -> Result<Resource, CatalogError> {
    let mut new = current.clone();
    let name = new.name().to_string();
    let annotations = &new.metadata().annotations;
    let mut request = request.clone();
    if let Ok(Some(earlier)) = drain_request(&name, annotations) {
        request.requested_at = earlier.requested_at;
    }
    if let Resource::IPPool(p) = &mut new {
        p.spec.disabled = true;
        p.metadata.annotations.insert(
            DRAIN_ANNOTATION.into(),
            serde_json::to_string(&request).expect("a request serializes"),
        );
    }
    Ok(new)
}
