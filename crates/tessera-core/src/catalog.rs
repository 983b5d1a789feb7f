//! Create, read, update and delete resources in a [`Store`], all or nothing.
//!
//! Every command validates everything first ([`validate`], then [`check_pool_against`] and
//! [`check_spider_against`] against the IPPools, SpiderIPPools and SpiderSubnets in the store
//! *and* those of the same batch), then writes every change in one store transaction whose
//! compares cover every key it read (a key that was absent must still be absent; the pools
//! read are covered by `config/guard`, which every pool write renews). When another writer
//! got there first, the whole command is re-read and re-checked, up to [`MAX_ATTEMPTS`]
//! times. A batch with one bad resource writes nothing.
//!
//! A store that limits its transactions (etcd: 128 operations) gets a change too large for
//! one in several, still all or nothing for the user (how, and why allocators never plan
//! from a half-written configuration: `Catalog::commit_in_parts`).
//!
//! The catalog cannot see allocations. A caller that can passes an [`InUseCheck`]
//! ([`Catalog::with_in_use_check`]) so that addresses in use never leave a SpiderIPPool, by
//! a change or by its deletion.
//!
//! Records are the resources' manifests as JSON, without `metadata.resourceVersion`; on read,
//! `resourceVersion` is the key's `mod_revision`. `metadata.uid` and
//! `metadata.creationTimestamp` are set when a resource is created and kept across updates.
//!
//! Tessera runs without Kubernetes, so `label` and `annotate` on a Node or Namespace that does
//! not exist yet create it (kubectl would refuse; there is no other way to declare one short of
//! `tessera apply -f`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde_json::Value;

use crate::keys;
use crate::manifest::{decode_document, DecodeError};
use crate::net::OverlapIndex;
use crate::ranges::IpRangeSet;
use crate::resources::{IPAMConfiguration, IPPool, Kind, Namespace, Node, ObjectMeta, Resource};
use crate::spider::{check_spider_against, describe_set};
use crate::spider::{SpiderIPPool, SpiderSubnet};
use crate::store::{
    Compare, KeyValue, Op, Read, Snapshot, Store, StoreError, TxnLimits, TxnOutcome,
};
use crate::text::{plain_or_quoted, quoted};
use crate::validate::{
    check_pool_against, validate, FieldError, ValidationError, IPAM_CONFIG_NAME,
};

/// How many times a command is re-read and retried when another writer changed what it read.
pub const MAX_ATTEMPTS: u32 = 5;

/// Rewritten with every configuration change (see [`keys::CONFIG_GUARD`]). Writers of
/// pool-like resources (IPPool, SpiderIPPool, SpiderSubnet) compare on it, so two commands
/// that each read the set of pools cannot both add overlapping pools.
pub const CONFIG_GUARD_KEY: &str = keys::CONFIG_GUARD;

/// The allocator's answer to "which of these addresses of a SpiderIPPool are allocated?".
#[derive(Clone, Debug, Default)]
pub struct InUse {
    /// The allocated addresses among those asked about.
    pub addresses: IpRangeSet,
    /// Compares that hold as long as the answer does (the revisions of the records the answer
    /// was read from). They join the catalog's transaction, so an allocation that lands between
    /// the question and the write makes the write start over instead of orphaning an address.
    pub compares: Vec<Compare>,
}

/// Asked before a SpiderIPPool loses addresses (its `ips` shrink or its `excludeIPs` grow):
/// given the pool's name and the addresses about to leave it, which of them are allocated.
pub type InUseCheck<'a> = dyn Fn(&str, &IpRangeSet) -> Result<InUse, StoreError> + 'a;

/// What a command did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The resource did not exist and was created.
    Created,
    /// The resource existed and was changed.
    Configured,
    /// The resource existed with exactly this content; nothing was written for it.
    Unchanged,
    /// The resource was deleted.
    Deleted,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        })
    }
}

/// The result of a command for one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Kind of the resource.
    pub kind: Kind,
    /// Name of the resource.
    pub name: String,
    /// What happened to it.
    pub action: Action,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, quoted(&self.name), self.action)
    }
}

/// Why a catalog command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A resource breaks Calico's rules.
    #[error("{0}")]
    Validation(#[from] ValidationError),
    /// A document (or a patched resource) could not be decoded.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The resource does not exist.
    #[error(
        "{kind} {} not found; see what exists with `tessera get {}`",
        quoted(.name),
        plural(*.kind)
    )]
    NotFound {
        /// Kind of the resource.
        kind: Kind,
        /// Name of the resource.
        name: String,
    },
    /// `create` found the resource already there.
    #[error(
        "resource already exists: {kind}({}); use `tessera apply` or `tessera replace` to \
         change it",
        plain_or_quoted(.name)
    )]
    AlreadyExists {
        /// Kind of the resource.
        kind: Kind,
        /// Name of the resource.
        name: String,
    },
    /// The input carried a `metadata.resourceVersion` that is no longer current.
    #[error(
        "{kind} {} was modified since it was read (resourceVersion {} given, it is \
         now {current}); get it again and reapply the change, or drop metadata.resourceVersion",
        quoted(.name),
        plain_or_quoted(.given)
    )]
    Stale {
        /// Kind of the resource.
        kind: Kind,
        /// Name of the resource.
        name: String,
        /// The resourceVersion in the input.
        given: String,
        /// The stored revision.
        current: i64,
    },
    /// The command itself asks for something that cannot be done.
    #[error("{kind} {}: {field}: {reason}", quoted(.name))]
    Refused {
        /// Kind of the resource.
        kind: Kind,
        /// Name of the resource.
        name: String,
        /// The field concerned (`metadata.labels.rack`).
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A SpiderIPPool to delete still holds allocated addresses (Spiderpool's finalizer keeps
    /// such a pool until they are released).
    #[error(
        "SpiderIPPool {} still holds {count} allocated address{} ({addresses}) and was not \
         deleted; release {} first (delete the pods that use {}, or run `tessera ipam release \
         --ip ADDRESS`; `tessera ipam show --ip ADDRESS` names the holder), then delete the pool",
        quoted(.name),
        if *.count == 1 { "" } else { "es" },
        if *.count == 1 { "it" } else { "them" },
        if *.count == 1 { "it" } else { "them" }
    )]
    PoolInUse {
        /// Name of the pool.
        name: String,
        /// How many of its addresses are allocated.
        count: u128,
        /// Which (the first ranges of them).
        addresses: String,
    },
    /// A SpiderSubnet to delete still has SpiderIPPools of its subnet (Spiderpool keeps such a
    /// subnet until they are gone).
    #[error(
        "SpiderSubnet {} still has SpiderIPPools of its subnet {subnet} ({}) and was not \
         deleted; delete those pools first, or in the same command",
        quoted(.name),
        .pools.iter().map(|p| quoted(p).to_string()).collect::<Vec<_>>().join(", ")
    )]
    SubnetHasPools {
        /// Name of the subnet.
        name: String,
        /// Its `spec.subnet`.
        subnet: String,
        /// The pools left.
        pools: Vec<String>,
    },
    /// The pools and configuration of one command need more operations than the store takes
    /// in one transaction.
    #[error(
        "this command changes {count} IPPools, SpiderIPPools, SpiderSubnets or the \
         IPAMConfiguration; they are checked against one another and written in one \
         transaction, which needs {needed} operations, and the datastore takes at most \
         {max_ops} in one (etcd's --max-txn-ops): apply them in several smaller manifests, or \
         raise --max-txn-ops on every etcd member; nothing was written"
    )]
    TooManyTogether {
        /// How many such resources the command changes.
        count: usize,
        /// Operations their transaction needs.
        needed: usize,
        /// The store's limit.
        max_ops: usize,
    },
    /// A command too large for one transaction was written in several, and one failed; the
    /// parts before it were undone (`undo` says how that went).
    #[error(
        "{cause}; this command was written in {parts} transactions to fit the datastore's \
         limits and transaction {failed} failed; {undo}"
    )]
    PartFailed {
        /// Why the part failed.
        cause: Box<CatalogError>,
        /// How many parts there were.
        parts: usize,
        /// Which one failed (from 1).
        failed: usize,
        /// What undoing the earlier parts did.
        undo: String,
    },
    /// Other writers kept changing the same resources.
    #[error(
        "the datastore kept changing while this command ran ({attempts} attempts); nothing was \
         written; run the command again"
    )]
    Conflict {
        /// How many times the command was tried.
        attempts: u32,
    },
    /// The datastore failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Several problems; each is reported on its own line.
    #[error("{}", join_lines(.0))]
    Many(Vec<CatalogError>),
}

impl CatalogError {
    /// Every single problem (flattens [`CatalogError::Many`]).
    pub fn problems(&self) -> Vec<&CatalogError> {
        match self {
            CatalogError::Many(all) => all.iter().flat_map(|e| e.problems()).collect(),
            other => vec![other],
        }
    }
}

fn join_lines(errors: &[CatalogError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn plural(kind: Kind) -> String {
    format!("{}s", kind.as_str().to_ascii_lowercase())
}

fn many(mut problems: Vec<CatalogError>) -> CatalogError {
    if problems.len() == 1 {
        problems.remove(0)
    } else {
        CatalogError::Many(problems)
    }
}

/// Which of labels or annotations an edit changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaMap {
    Labels,
    Annotations,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Create or update.
    Apply,
    /// Only create.
    Create,
    /// Only update.
    Replace,
}

/// The store key of a resource.
pub fn key_of(kind: Kind, name: &str) -> String {
    match kind {
        Kind::IPPool => keys::pool(name),
        Kind::IPReservation => keys::reservation(name),
        Kind::IPAMConfiguration => keys::IPAM_CONFIG.to_string(),
        Kind::Node => keys::node(name),
        Kind::Namespace => keys::namespace(name),
        Kind::SpiderIPPool => keys::spider_pool(name),
        Kind::SpiderSubnet => keys::spider_subnet(name),
        Kind::SpiderReservedIP => keys::spider_reserved(name),
    }
}

/// The store prefix under which every resource of `kind` lives (`None` for the single
/// IPAMConfiguration).
pub fn prefix_of(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::IPPool => keys::POOL_PREFIX,
        Kind::IPReservation => keys::RESERVATION_PREFIX,
        Kind::Node => keys::NODE_PREFIX,
        Kind::Namespace => keys::NAMESPACE_PREFIX,
        Kind::SpiderIPPool => keys::SPIDER_POOL_PREFIX,
        Kind::SpiderSubnet => keys::SPIDER_SUBNET_PREFIX,
        Kind::SpiderReservedIP => keys::SPIDER_RESERVED_PREFIX,
        Kind::IPAMConfiguration => return None,
    })
}

/// Kinds whose addresses may not overlap one another; a change to any of them is checked
/// against all of them.
const POOL_KINDS: [Kind; 3] = [Kind::IPPool, Kind::SpiderIPPool, Kind::SpiderSubnet];

/// Resource commands over one store.
pub struct Catalog<'a, S: Store + ?Sized> {
    store: &'a S,
    attempts: u32,
    in_use: Option<&'a InUseCheck<'a>>,
}

impl<'a, S: Store + ?Sized> Catalog<'a, S> {
    /// A catalog over `store`, retrying conflicts [`MAX_ATTEMPTS`] times.
    pub fn new(store: &'a S) -> Self {
        Self {
            store,
            attempts: MAX_ATTEMPTS,
            in_use: None,
        }
    }

    /// The same catalog, asking `check` before a SpiderIPPool loses addresses and refusing
    /// the change when any of them is allocated. Without it, such changes are not checked.
    pub fn with_in_use_check(mut self, check: &'a InUseCheck<'a>) -> Self {
        self.in_use = Some(check);
        self
    }

    /// The same catalog with another bound on attempts (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Creates or updates every resource.
    pub fn apply(&self, resources: &[Resource]) -> Result<Vec<Outcome>, CatalogError> {
        self.write(resources, Mode::Apply)
    }

    /// Creates every resource; fails (writing nothing) if any already exists.
    pub fn create(&self, resources: &[Resource]) -> Result<Vec<Outcome>, CatalogError> {
        self.write(resources, Mode::Create)
    }

    /// Updates every resource; fails (writing nothing) if any does not exist.
    pub fn replace(&self, resources: &[Resource]) -> Result<Vec<Outcome>, CatalogError> {
        self.write(resources, Mode::Replace)
    }

    /// Deletes every named resource; fails (deleting nothing) naming every missing one unless
    /// `ignore_missing`. Returns what was deleted. Deleting a pool leaves its allocated blocks
    /// in place, so running workloads keep their addresses.
    ///
    /// As in Spiderpool, whose finalizers hold them back: a SpiderIPPool that still holds
    /// allocated addresses is not deleted (with the [`InUseCheck`] of
    /// [`Catalog::with_in_use_check`]; the allocator's answer is compared at the write, so an
    /// address allocated meanwhile makes the delete count again), and neither is a
    /// SpiderSubnet while SpiderIPPools of its subnet remain, unless the same command deletes
    /// them.
    pub fn delete(
        &self,
        targets: &[(Kind, String)],
        ignore_missing: bool,
    ) -> Result<Vec<Outcome>, CatalogError> {
        let mut seen = HashSet::new();
        let unique: Vec<(Kind, String)> = targets
            .iter()
            .filter(|t| seen.insert((t.0, t.1.as_str())))
            .cloned()
            .collect();
        self.retry(|| self.try_delete(&unique, ignore_missing))
    }

    /// One attempt at [`Catalog::delete`]; `Ok(None)` when another writer interfered.
    fn try_delete(
        &self,
        unique: &[(Kind, String)],
        ignore_missing: bool,
    ) -> Result<Option<Vec<Outcome>>, CatalogError> {
        let subnets = unique.iter().any(|(k, _)| *k == Kind::SpiderSubnet);
        // The guard first: every configuration record read after it is covered by its compare.
        let mut reads = vec![Read::Get(CONFIG_GUARD_KEY.to_string())];
        if subnets {
            reads.push(Read::Prefix(keys::SPIDER_POOL_PREFIX.to_string()));
        }
        let first = reads.len();
        reads.extend(unique.iter().map(|(k, n)| Read::Get(key_of(*k, n))));
        let snap = self.read_in_parts(&reads)?;
        let mut plan = Plan::new(snap.get(0).map_or(0, |kv| kv.mod_revision), subnets);
        let mut outcomes = Vec::new();
        let mut problems = Vec::new();
        let mut spider_records = Vec::new();
        for (i, (kind, name)) in unique.iter().enumerate() {
            match snap.get(first + i) {
                Some(kv) => {
                    let mut item = Item::new(*kind, name, Some(kv.clone()));
                    item.op = Some(Op::Delete(kv.key.clone()));
                    plan.items.push(item);
                    outcomes.push(Outcome {
                        kind: *kind,
                        name: name.clone(),
                        action: Action::Deleted,
                    });
                    // Only what the Spiderpool rules look at is decoded: a damaged record of
                    // another kind can still be deleted.
                    if matches!(kind, Kind::SpiderIPPool | Kind::SpiderSubnet) {
                        spider_records.push(self.decode_stored(kv)?);
                    }
                }
                None if ignore_missing => {}
                None => problems.push(CatalogError::NotFound {
                    kind: *kind,
                    name: name.clone(),
                }),
            }
        }
        for gone in &spider_records {
            match gone {
                Resource::SpiderIPPool(pool) => {
                    if let Err(e) = self.check_pool_is_empty(pool, &mut plan.extra) {
                        problems.push(e);
                    }
                }
                Resource::SpiderSubnet(subnet) => {
                    let remaining = self.pools_of_subnet(subnet, snap.list(1), unique)?;
                    if !remaining.is_empty() {
                        problems.push(CatalogError::SubnetHasPools {
                            name: subnet.metadata.name.clone(),
                            subnet: subnet.spec.subnet.clone(),
                            pools: remaining,
                        });
                    }
                }
                _ => {}
            }
        }
        if !problems.is_empty() {
            return Err(many(problems));
        }
        Ok(self.commit_plan(&plan)?.map(|_| outcomes))
    }

    /// Refuses deleting a SpiderIPPool that holds allocated addresses; otherwise adds the
    /// compares under which the allocator's answer holds.
    fn check_pool_is_empty(
        &self,
        pool: &SpiderIPPool,
        compares: &mut Vec<Compare>,
    ) -> Result<(), CatalogError> {
        let (Some(check), Ok(all)) = (self.in_use, pool.spec.total_ips()) else {
            return Ok(());
        };
        let answer = check(&pool.metadata.name, &all)?;
        compares.extend(answer.compares);
        let held = answer.addresses.intersect(&all);
        if held.is_empty() {
            return Ok(());
        }
        Err(CatalogError::PoolInUse {
            name: pool.metadata.name.clone(),
            count: held.len(),
            addresses: describe_set(&held),
        })
    }

    /// The names of the stored SpiderIPPools of `subnet`'s subnet that `targets` leaves.
    fn pools_of_subnet(
        &self,
        subnet: &SpiderSubnet,
        stored: &[KeyValue],
        targets: &[(Kind, String)],
    ) -> Result<Vec<String>, CatalogError> {
        let mut names = Vec::new();
        for kv in stored {
            let Resource::SpiderIPPool(pool) = self.decode_stored(kv)? else {
                continue;
            };
            let leaves = targets
                .iter()
                .any(|(k, n)| *k == Kind::SpiderIPPool && *n == pool.metadata.name);
            if !leaves
                && pool.spec.subnet_net().is_some()
                && pool.spec.subnet_net() == subnet.spec.subnet_net()
            {
                names.push(pool.metadata.name);
            }
        }
        Ok(names)
    }

    /// Reads one resource. A missing IPAMConfiguration reads as the default one.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Resource, CatalogError> {
        match self.store.get(&key_of(kind, name))? {
            Some(kv) => self.decode_stored(&kv),
            None if kind == Kind::IPAMConfiguration && name == IPAM_CONFIG_NAME => {
                Ok(default_ipam_config())
            }
            None => Err(CatalogError::NotFound {
                kind,
                name: name.to_string(),
            }),
        }
    }

    /// Every resource of a kind, sorted by name. The IPAMConfiguration list always holds the
    /// (possibly default) configuration.
    pub fn list(&self, kind: Kind) -> Result<Vec<Resource>, CatalogError> {
        if kind == Kind::IPAMConfiguration {
            return Ok(vec![self.get(kind, IPAM_CONFIG_NAME)?]);
        }
        let Some(prefix) = prefix_of(kind) else {
            unreachable!("only the IPAMConfiguration has no prefix, handled above")
        };
        let mut out = self
            .store
            .range(prefix)?
            .iter()
            .filter(|kv| !kv.key[prefix.len()..].contains('/'))
            .map(|kv| self.decode_stored(kv))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    /// Applies an RFC 7386 JSON merge patch (e.g. `{"spec":{"disabled":true}}`) to the
    /// resource's manifest, then decodes and validates the result and stores it. Returns the
    /// stored resource.
    pub fn patch(&self, kind: Kind, name: &str, patch: &Value) -> Result<Resource, CatalogError> {
        if !patch.is_object() {
            return Err(CatalogError::Refused {
                kind,
                name: name.to_string(),
                field: "patch".into(),
                reason: "a patch must be a JSON object, e.g. {\"spec\":{\"disabled\":true}}".into(),
            });
        }
        self.modify(kind, name, false, |current| {
            let mut doc = current.to_manifest();
            merge_patch(&mut doc, patch);
            if doc.get("kind") != Some(&Value::from(kind.as_str())) {
                return Err(refused(
                    kind,
                    name,
                    "kind",
                    "cannot be changed by a patch; create a resource of the other kind instead",
                ));
            }
            if doc.pointer("/metadata/name") != Some(&Value::from(name)) {
                return Err(refused(
                    kind,
                    name,
                    "metadata.name",
                    "cannot be changed by a patch; create a new resource with the new name and \
                     delete this one",
                ));
            }
            Ok(decode_document(doc)?)
        })
    }

    /// Sets and removes labels with kubectl's rules: changing an existing label to another
    /// value needs `overwrite`; removing an absent label is not an error; a key may not be set
    /// and removed at once. A missing Node or Namespace is created.
    pub fn label(
        &self,
        kind: Kind,
        name: &str,
        sets: &[(String, String)],
        removes: &[String],
        overwrite: bool,
    ) -> Result<Resource, CatalogError> {
        self.edit_map(kind, name, MetaMap::Labels, sets, removes, overwrite)
    }

    /// Sets and removes annotations, with the same rules as [`Catalog::label`].
    pub fn annotate(
        &self,
        kind: Kind,
        name: &str,
        sets: &[(String, String)],
        removes: &[String],
        overwrite: bool,
    ) -> Result<Resource, CatalogError> {
        self.edit_map(kind, name, MetaMap::Annotations, sets, removes, overwrite)
    }

    // -----------------------------------------------------------------------------------------

    fn edit_map(
        &self,
        kind: Kind,
        name: &str,
        which: MetaMap,
        sets: &[(String, String)],
        removes: &[String],
        overwrite: bool,
    ) -> Result<Resource, CatalogError> {
        let (word, path) = match which {
            MetaMap::Labels => ("label", "metadata.labels"),
            MetaMap::Annotations => ("annotation", "metadata.annotations"),
        };
        for (k, _) in sets {
            if removes.contains(k) {
                return Err(refused(
                    kind,
                    name,
                    &format!("{path}.{}", plain_or_quoted(k)),
                    &format!(
                        "cannot both set and remove the {word} {} in one command",
                        quoted(k)
                    ),
                ));
            }
        }
        let create_missing = matches!(kind, Kind::Node | Kind::Namespace);
        self.modify(kind, name, create_missing, |current| {
            let mut new = current.clone();
            let map = match which {
                MetaMap::Labels => &mut new.metadata_mut().labels,
                MetaMap::Annotations => &mut new.metadata_mut().annotations,
            };
            let mut problems = Vec::new();
            for (k, v) in sets {
                match map.get(k) {
                    Some(old) if old != v && !overwrite => problems.push(refused(
                        kind,
                        name,
                        &format!("{path}.{}", plain_or_quoted(k)),
                        &format!(
                            "already has the value {}; pass --overwrite to set it to {}",
                            quoted(old),
                            quoted(v)
                        ),
                    )),
                    _ => {
                        map.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in removes {
                map.remove(k);
            }
            if problems.is_empty() {
                Ok(new)
            } else {
                Err(many(problems))
            }
        })
    }

    /// Read-modify-write of one resource with retries. `create_missing` starts from an empty
    /// resource when it does not exist (Nodes and Namespaces only).
    fn modify(
        &self,
        kind: Kind,
        name: &str,
        create_missing: bool,
        change: impl Fn(&Resource) -> Result<Resource, CatalogError>,
    ) -> Result<Resource, CatalogError> {
        let key = key_of(kind, name);
        self.retry(|| {
            let stored = self.store.get(&key)?;
            let (current, revision) = match &stored {
                Some(kv) => (self.decode_stored(kv)?, kv.mod_revision),
                None if kind == Kind::IPAMConfiguration && name == IPAM_CONFIG_NAME => {
                    (default_ipam_config(), 0)
                }
                None if create_missing => (empty_resource(kind, name), 0),
                None => {
                    return Err(CatalogError::NotFound {
                        kind,
                        name: name.to_string(),
                    })
                }
            };
            let mut new = change(&current)?;
            new.metadata_mut().resource_version = None;
            let valid = validate(new)?;
            let Some(result) =
                self.try_write(std::slice::from_ref(&valid), Mode::Apply, Some(revision))?
            else {
                return Ok(None);
            };
            let (_, resource) = result.into_iter().next().expect("one resource written");
            Ok(Some(resource))
        })
    }

    fn write(&self, resources: &[Resource], mode: Mode) -> Result<Vec<Outcome>, CatalogError> {
        let mut problems = Vec::new();
        let mut valid = Vec::new();
        for r in resources {
            match validate(r.clone()) {
                Ok(v) => valid.push(v),
                Err(e) => problems.push(CatalogError::Validation(e)),
            }
        }
        let mut seen = BTreeSet::new();
        for r in &valid {
            if !seen.insert((r.kind(), r.name().to_string())) {
                problems.push(refused(
                    r.kind(),
                    r.name(),
                    "metadata.name",
                    "appears more than once in the input; keep one of them",
                ));
            }
        }
        if !problems.is_empty() {
            return Err(many(problems));
        }
        self.retry(|| {
            Ok(self
                .try_write(&valid, mode, None)?
                .map(|done| done.into_iter().map(|(o, _)| o).collect()))
        })
    }

    /// One attempt at writing validated resources: read, check, commit the plan. `Ok(None)`
    /// means another writer interfered (or, with `expected`, the single resource is no longer
    /// at that revision) and the caller should start over.
    fn try_write(
        &self,
        valid: &[Resource],
        mode: Mode,
        expected: Option<i64>,
    ) -> Result<Option<Vec<(Outcome, Resource)>>, CatalogError> {
        let has_pools = valid.iter().any(|r| POOL_KINDS.contains(&r.kind()));
        // The guard first: every configuration record read after it is covered by its compare.
        let mut reads = vec![Read::Get(CONFIG_GUARD_KEY.to_string())];
        if has_pools {
            for kind in POOL_KINDS {
                let prefix = prefix_of(kind).expect("pool kinds have prefixes");
                reads.push(Read::Prefix(prefix.to_string()));
            }
        }
        let first = reads.len();
        reads.extend(valid.iter().map(|r| Read::Get(key_of(r.kind(), r.name()))));
        let snap = self.read_in_parts(&reads)?;
        let mut plan = Plan::new(snap.get(0).map_or(0, |kv| kv.mod_revision), has_pools);
        let mut done = Vec::new();
        let mut problems = Vec::new();
        let now = format_rfc3339(unix_now());
        for (i, r) in valid.iter().enumerate() {
            let key = key_of(r.kind(), r.name());
            let stored = snap.get(first + i);
            let revision = stored.map_or(0, |kv| kv.mod_revision);
            if expected.is_some_and(|want| want != revision) {
                return Ok(None);
            }
            let mut new = r.clone();
            let action = match (mode, stored) {
                (Mode::Create, Some(_)) => {
                    problems.push(CatalogError::AlreadyExists {
                        kind: r.kind(),
                        name: r.name().to_string(),
                    });
                    continue;
                }
                (Mode::Replace, None) => {
                    problems.push(CatalogError::NotFound {
                        kind: r.kind(),
                        name: r.name().to_string(),
                    });
                    continue;
                }
                (_, Some(kv)) => {
                    if let Some(given) = r.metadata().resource_version.as_deref() {
                        if !given.is_empty() && given != kv.mod_revision.to_string() {
                            problems.push(CatalogError::Stale {
                                kind: r.kind(),
                                name: r.name().to_string(),
                                given: given.to_string(),
                                current: kv.mod_revision,
                            });
                            continue;
                        }
                    }
                    let mut old = self.decode_stored(kv)?;
                    old.metadata_mut().resource_version = None;
                    let meta = new.metadata_mut();
                    meta.resource_version = None;
                    meta.uid = old.metadata().uid.clone();
                    meta.creation_timestamp = old.metadata().creation_timestamp.clone();
                    if old == new {
                        Action::Unchanged
                    } else {
                        Action::Configured
                    }
                }
                (_, None) => {
                    let meta = new.metadata_mut();
                    meta.resource_version = None;
                    meta.uid = Some(new_uid());
                    meta.creation_timestamp = Some(now.clone());
                    Action::Created
                }
            };
            let mut item = Item::new(r.kind(), r.name(), stored.cloned());
            if action != Action::Unchanged {
                item.op = Some(Op::Put(key, encode(&new)));
            }
            plan.items.push(item);
            done.push((
                Outcome {
                    kind: r.kind(),
                    name: r.name().to_string(),
                    action,
                },
                new,
                revision,
            ));
        }

        if has_pools {
            let mut stored: Vec<Resource> = Vec::new();
            for (i, kind) in POOL_KINDS.into_iter().enumerate() {
                let prefix = prefix_of(kind).expect("pool kinds have prefixes");
                for kv in snap.list(1 + i) {
                    if !kv.key[prefix.len()..].contains('/') {
                        stored.push(self.decode_stored(kv)?);
                    }
                }
            }
            problems.extend(self.check_pools(valid, &stored, &mut plan.extra)?);
        }

        if !problems.is_empty() {
            return Err(many(problems));
        }
        let Some(revisions) = self.commit_plan(&plan)? else {
            return Ok(None);
        };
        Ok(Some(
            done.into_iter()
                .zip(revisions)
                .map(|((outcome, mut resource, stored_rev), written)| {
                    let rev = if outcome.action == Action::Unchanged {
                        stored_rev
                    } else {
                        written
                    };
                    resource.metadata_mut().resource_version = Some(rev.to_string());
                    (outcome, resource)
                })
                .collect(),
        ))
    }

    /// Checks the batch's pool-like resources against the `stored` ones and one another, and
    /// asks the allocator before a SpiderIPPool loses addresses (its answer's compares join
    /// `compares`). Returns the problems found.
    fn check_pools(
        &self,
        valid: &[Resource],
        stored: &[Resource],
        compares: &mut Vec<Compare>,
    ) -> Result<Vec<CatalogError>, CatalogError> {
        let mut problems = Vec::new();
        let batch: Vec<&Resource> = valid
            .iter()
            .filter(|r| POOL_KINDS.contains(&r.kind()))
            .collect();
        let in_batch: HashSet<(Kind, &str)> = batch.iter().map(|r| (r.kind(), r.name())).collect();
        let stored_by_name: HashMap<(Kind, &str), &Resource> =
            stored.iter().map(|r| ((r.kind(), r.name()), r)).collect();
        // Each pair is checked once: stored resources the batch leaves alone, and the batch's
        // own resources before this one (every rule is symmetric).
        let mut world = PoolWorld::default();
        for s in stored
            .iter()
            .filter(|s| !in_batch.contains(&(s.kind(), s.name())))
        {
            world.add(s);
        }
        for new in batch {
            let previous = stored_by_name.get(&(new.kind(), new.name())).copied();
            let others = world.overlapping(new);
            world.add(new);
            let mut errors = Vec::new();
            if let Resource::IPPool(pool) = new {
                let mut calico: Vec<IPPool> = others
                    .iter()
                    .filter_map(|r| match r {
                        Resource::IPPool(p) => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(Resource::IPPool(old)) = previous {
                    calico.push(old.clone());
                }
                if let Err(e) = check_pool_against(pool, &calico) {
                    errors.extend(e.errors);
                }
            }
            if let Err(e) = check_spider_against(new, previous, &others) {
                errors.extend(e.errors);
            }
            if let (Resource::SpiderIPPool(pool), Some(Resource::SpiderIPPool(old))) =
                (new, previous)
            {
                errors.extend(self.check_leaving(pool, old, compares)?);
            }
            if !errors.is_empty() {
                problems.push(CatalogError::Validation(ValidationError {
                    kind: new.kind(),
                    name: new.name().to_string(),
                    errors,
                }));
            }
        }
        Ok(problems)
    }

    /// The error for allocated addresses that an update of a SpiderIPPool would take out of
    /// it, if any.
    fn check_leaving(
        &self,
        pool: &SpiderIPPool,
        old: &SpiderIPPool,
        compares: &mut Vec<Compare>,
    ) -> Result<Option<FieldError>, CatalogError> {
        let (Some(check), Ok(before), Ok(after)) =
            (self.in_use, old.spec.total_ips(), pool.spec.total_ips())
        else {
            return Ok(None);
        };
        let leaving = before.subtract(&after);
        if leaving.is_empty() {
            return Ok(None);
        }
        let answer = check(&pool.metadata.name, &leaving)?;
        compares.extend(answer.compares);
        let held = answer.addresses.intersect(&leaving);
        if held.is_empty() {
            return Ok(None);
        }
        let (verb, pronoun) = if held.len() == 1 {
            ("is", "it")
        } else {
            ("are", "them")
        };
        Ok(Some(FieldError::new(
            "spec.ips",
            format!(
                "{} {verb} allocated and would no longer belong to the pool; keep {pronoun} in \
                 ips (and out of excludeIPs), or release {pronoun} first",
                describe_set(&held),
            ),
        )))
    }

    /// Reads at one revision, or, when the store takes fewer reads per request than asked
    /// for, in several requests in order. Callers read `config/guard` first: a configuration
    /// record that changes after it changes the guard too, which their commit compares.
    fn read_in_parts(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        let Some(limits) = self.store.txn_limits().filter(|l| reads.len() > l.max_ops) else {
            return self.store.read(reads);
        };
        let mut all = Snapshot::default();
        for part in reads.chunks(limits.max_ops.max(1)) {
            let snap = self.store.read(part)?;
            if all.results.is_empty() {
                all.revision = snap.revision;
            }
            all.results.extend(snap.results);
        }
        Ok(all)
    }

    /// Commits a plan: in one transaction when the store takes it, otherwise in parts
    /// ([`Catalog::commit_in_parts`]). Returns the revision each item was written at (0 for
    /// items not written), or `None` on conflict.
    fn commit_plan(&self, plan: &Plan) -> Result<Option<Vec<i64>>, CatalogError> {
        let n = plan.items.len();
        if plan.items.iter().all(|item| item.op.is_none()) {
            return Ok(Some(vec![0; n]));
        }
        let (compares, ops) = plan.whole();
        match self.store.txn_limits() {
            Some(limits) if !Load::of_txn(&compares, &ops).fits(limits) => {
                self.commit_in_parts(plan, limits)
            }
            _ => Ok(match self.store.txn(&compares, &ops)? {
                TxnOutcome::Committed(rev) => Some(vec![rev; n]),
                TxnOutcome::Conflict => None,
            }),
        }
    }

    /// Writes a plan too large for one transaction in several, all or nothing for the user.
    ///
    /// Everything was validated against one reading of the store. The parts then go in
    /// order: first the resources that are checked on their own (reservations, nodes,
    /// namespaces), packed to the store's limits, and last, in one transaction, every
    /// IPPool, SpiderIPPool, SpiderSubnet and the IPAMConfiguration, which are checked
    /// against one another (with the allocator's in-use answers). Each part compares the
    /// records it writes (unchanged since read) and `config/guard` (unchanged since the part
    /// before, or since the read), and writes a new nonce to the guard. So:
    /// - any configuration change by another writer in between fails the next part, and the
    ///   command undoes its earlier parts and starts over;
    /// - an allocator never plans from a configuration this command half wrote and keeps
    ///   using it: a node cache that read between two parts holds a nonce the next part
    ///   replaces, and an allocator that reads fresh in between sees only whole parts, where
    ///   the pools and the configuration are either all old or all new, and the records
    ///   written before them are ones valid in either;
    /// - when a part fails, the parts before it are undone ([`Catalog::undo`]) and the error
    ///   says so.
    fn commit_in_parts(
        &self,
        plan: &Plan,
        limits: TxnLimits,
    ) -> Result<Option<Vec<i64>>, CatalogError> {
        let parts = plan.parts(limits)?;
        let mut revisions = vec![0; plan.items.len()];
        let mut guard = plan.guard;
        let mut written: Vec<(&[usize], Option<i64>)> = Vec::new();
        for (number, part) in parts.iter().enumerate() {
            let mut compares = vec![Compare::unchanged(CONFIG_GUARD_KEY, guard)];
            let mut ops = Vec::new();
            for &i in part {
                let item = &plan.items[i];
                compares.push(item.compare());
                ops.extend(item.op.clone());
            }
            if number + 1 == parts.len() {
                compares.extend(plan.extra.iter().cloned());
            }
            ops.push(new_guard());
            let failure = match self.store.txn(&compares, &ops) {
                Ok(TxnOutcome::Committed(rev)) => {
                    guard = rev;
                    for &i in part {
                        revisions[i] = rev;
                    }
                    written.push((part, Some(rev)));
                    continue;
                }
                Ok(TxnOutcome::Conflict) => None,
                Err(e) => Some(e),
            };
            let certain = written.len();
            if failure.as_ref().is_some_and(StoreError::is_transient) {
                // No answer: the part may have been applied. Undoing it is safe either way.
                written.push((part, None));
            }
            let undo = self.undo(plan, &written, limits);
            let restored = written[..certain].iter().map(|(p, _)| p.len()).sum();
            let told = undo.describe(plan, restored);
            let cause = match (failure, undo.failed) {
                (None, None) => return Ok(None),
                (Some(e), _) | (None, Some(e)) => e,
            };
            return Err(CatalogError::PartFailed {
                cause: Box::new(CatalogError::Store(cause)),
                parts: parts.len(),
                failed: number + 1,
                undo: told,
            });
        }
        Ok(Some(revisions))
    }

    /// Puts back what the `written` parts of `plan` changed, the last part first: each record
    /// as it was read, or deleted when it was absent. A record changed by another writer since
    /// is left with that writer's content. `written` holds each part's revision, or `None`
    /// for a part that may or may not have been applied.
    fn undo(&self, plan: &Plan, written: &[(&[usize], Option<i64>)], limits: TxnLimits) -> Undo {
        let mut undo = Undo::default();
        for (part, revision) in written.iter().rev() {
            let mut pending: Vec<usize> = part.to_vec();
            for _ in 0..MAX_ATTEMPTS {
                if pending.is_empty() {
                    break;
                }
                match self.try_undo(plan, &pending, *revision, limits) {
                    Ok(None) => pending.clear(),
                    Ok(Some(conflicted)) => {
                        match self.sort_conflicted(plan, &conflicted, *revision) {
                            Ok((again, kept)) => {
                                undo.kept.extend(kept);
                                pending = again;
                            }
                            Err(e) => {
                                undo.failed = Some(e);
                                return undo;
                            }
                        }
                    }
                    Err(e) => {
                        undo.failed = Some(e);
                        return undo;
                    }
                }
            }
            undo.kept.extend(pending);
        }
        undo
    }

    /// Undoes `pending` items of one part, in as many transactions as the limits ask for.
    /// Returns the items of the transactions that met a conflict, if any: those were not
    /// undone.
    fn try_undo(
        &self,
        plan: &Plan,
        pending: &[usize],
        revision: Option<i64>,
        limits: TxnLimits,
    ) -> Result<Option<Vec<usize>>, StoreError> {
        let mut conflicted = Vec::new();
        let cost = |i: usize| {
            let item = &plan.items[i];
            Load::of_txn(&[item.written(revision)], &[item.restore()])
        };
        for (batch, _) in pack(pending.iter().copied(), cost, limits) {
            let compares: Vec<Compare> = batch
                .iter()
                .map(|&i| plan.items[i].written(revision))
                .collect();
            let mut ops: Vec<Op> = batch.iter().map(|&i| plan.items[i].restore()).collect();
            ops.push(new_guard());
            if self.store.txn(&compares, &ops)? == TxnOutcome::Conflict {
                conflicted.extend(batch);
            }
        }
        Ok((!conflicted.is_empty()).then_some(conflicted))
    }

    /// Reads the `conflicted` items again: those that still hold this command's write are
    /// undone again (first list), those back as they were need nothing, and the others were
    /// changed by another writer and are kept (second list).
    fn sort_conflicted(
        &self,
        plan: &Plan,
        conflicted: &[usize],
        revision: Option<i64>,
    ) -> Result<(Vec<usize>, Vec<usize>), StoreError> {
        let reads: Vec<Read> = conflicted
            .iter()
            .map(|&i| Read::Get(plan.items[i].key.clone()))
            .collect();
        let snap = self.read_in_parts(&reads)?;
        let (mut again, mut kept) = (Vec::new(), Vec::new());
        for (n, &i) in conflicted.iter().enumerate() {
            let item = &plan.items[i];
            let now = snap.get(n);
            if item.written(revision).holds(now) {
                again.push(i);
            } else if now.map(|kv| &kv.value) != item.before.as_ref().map(|kv| &kv.value) {
                kept.push(i);
            }
        }
        Ok((again, kept))
    }

    fn retry<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, CatalogError>,
    ) -> Result<T, CatalogError> {
        for _ in 0..self.attempts {
            if let Some(done) = attempt()? {
                return Ok(done);
            }
        }
        Err(CatalogError::Conflict {
            attempts: self.attempts,
        })
    }

    fn decode_stored(&self, kv: &KeyValue) -> Result<Resource, CatalogError> {
        let corrupt = |reason: String| {
            CatalogError::Store(StoreError::Corrupt {
                endpoint: self.store.describe(),
                reason: format!("record {}: {reason}", kv.key),
            })
        };
        let doc: Value =
            serde_json::from_slice(&kv.value).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let mut r = decode_document(doc).map_err(|e| corrupt(e.to_string()))?;
        r.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// Plans, and writing them in parts

/// One record a command writes or relies on.
struct Item {
    kind: Kind,
    name: String,
    key: String,
    /// The record as read (`None`: absent). The write compares its revision; an undo puts it
    /// back.
    before: Option<KeyValue>,
    /// The write; `None` for a record the command leaves as it is.
    op: Option<Op>,
}

impl Item {
    fn new(kind: Kind, name: &str, before: Option<KeyValue>) -> Self {
        Self {
            kind,
            name: name.to_string(),
            key: key_of(kind, name),
            before,
            op: None,
        }
    }

    /// The record is still as read.
    fn compare(&self) -> Compare {
        Compare::unchanged(
            &self.key,
            self.before.as_ref().map_or(0, |kv| kv.mod_revision),
        )
    }

    /// The record still holds this command's write: absent after a delete; after a put, at
    /// the part's revision when known, else holding the written bytes.
    fn written(&self, revision: Option<i64>) -> Compare {
        match (&self.op, revision) {
            (Some(Op::Put(_, _)), Some(rev)) => Compare::unchanged(&self.key, rev),
            (Some(Op::Put(_, value)), None) => Compare::Value(self.key.clone(), value.clone()),
            _ => Compare::absent(&self.key),
        }
    }

    /// The write that puts the record back as it was read.
    fn restore(&self) -> Op {
        match &self.before {
            Some(kv) => Op::Put(self.key.clone(), kv.value.clone()),
            None => Op::Delete(self.key.clone()),
        }
    }

    /// What the item adds to a part.
    fn load(&self) -> Load {
        Load::of_txn(&[self.compare()], self.op.as_slice())
    }

    /// Pools, subnets and the IPAM configuration are checked against one another, so they
    /// are written together.
    fn written_together(&self) -> bool {
        POOL_KINDS.contains(&self.kind) || self.kind == Kind::IPAMConfiguration
    }
}

/// Everything one attempt of a command writes, with what the checks relied on.
struct Plan {
    /// The records, in the command's order.
    items: Vec<Item>,
    /// Compares that must hold when the pools are written: the allocator's in-use answers.
    extra: Vec<Compare>,
    /// `config/guard`'s revision when read, before every other record.
    guard: i64,
    /// The checks read the pools, so the write compares the guard (which every writer of a
    /// pool renews) instead of every pool.
    needs_guard: bool,
}

impl Plan {
    fn new(guard: i64, needs_guard: bool) -> Self {
        Self {
            items: Vec::new(),
            extra: Vec::new(),
            guard,
            needs_guard,
        }
    }

    /// The one transaction that writes the whole plan. A plan that changes the configuration
    /// also renews the guard's nonce.
    fn whole(&self) -> (Vec<Compare>, Vec<Op>) {
        let mut compares: Vec<Compare> = self.items.iter().map(Item::compare).collect();
        if self.needs_guard {
            compares.push(Compare::unchanged(CONFIG_GUARD_KEY, self.guard));
        }
        compares.extend(self.extra.iter().cloned());
        let mut ops: Vec<Op> = self.items.iter().filter_map(|i| i.op.clone()).collect();
        if self
            .items
            .iter()
            .any(|i| i.op.is_some() && i.key.starts_with(keys::CONFIG_PREFIX))
        {
            ops.push(new_guard());
        }
        (compares, ops)
    }

    /// The items written, split into transactions within `limits` (see
    /// [`Catalog::commit_in_parts`]): those checked on their own first, packed in order;
    /// then, in the last part, everything written together. Items left as they are need no
    /// part: the guard's compares cover the configuration they belong to.
    fn parts(&self, limits: TxnLimits) -> Result<Vec<Vec<usize>>, CatalogError> {
        let written = |together: bool| {
            (0..self.items.len())
                .filter(move |&i| {
                    let item = &self.items[i];
                    item.op.is_some() && item.written_together() == together
                })
                .collect::<Vec<usize>>()
        };
        let together = written(true);
        let mut together_load = Load::of_txn(&self.extra, &[]);
        for &i in &together {
            together_load = together_load.plus(self.items[i].load());
        }
        let alone = Load::guard().plus(together_load);
        let needed = alone.compares.max(alone.ops);
        if needed > limits.max_ops {
            return Err(CatalogError::TooManyTogether {
                count: together.len(),
                needed,
                max_ops: limits.max_ops,
            });
        }
        let mut parts = pack(written(false), |i| self.items[i].load(), limits);
        match parts.last_mut() {
            Some((part, load)) if load.plus(together_load).fits(limits) => part.extend(together),
            _ => parts.push((together, alone)),
        }
        Ok(parts.into_iter().map(|(part, _)| part).collect())
    }
}

/// Packs `items`, in order, into transactions whose loads (with the guard's) fit `limits`;
/// an item too large even alone gets one of its own, for the store to refuse by name.
/// Returns each transaction's items and load.
fn pack(
    items: impl IntoIterator<Item = usize>,
    cost: impl Fn(usize) -> Load,
    limits: TxnLimits,
) -> Vec<(Vec<usize>, Load)> {
    let mut packed: Vec<(Vec<usize>, Load)> = Vec::new();
    for i in items {
        let load = cost(i);
        match packed.last_mut() {
            Some((part, sum)) if sum.plus(load).fits(limits) => {
                part.push(i);
                *sum = sum.plus(load);
            }
            _ => packed.push((vec![i], Load::guard().plus(load))),
        }
    }
    packed
}

/// What one request carries, to compare with a store's [`TxnLimits`].
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    compares: usize,
    ops: usize,
    bytes: usize,
}

/// Bytes counted per compare or write beyond its key and value: the store's key prefix and
/// the request's framing.
const ENTRY_OVERHEAD: usize = 96;

/// Bytes of a request's limit kept free for what [`Load`] does not count.
const REQUEST_MARGIN: usize = 16 * 1024;

impl Load {
    fn of_txn(compares: &[Compare], ops: &[Op]) -> Self {
        let compare_bytes = compares.iter().map(|c| match c {
            Compare::ModRevision(key, _) => key.len(),
            Compare::Value(key, value) => key.len() + value.len(),
        });
        let op_bytes = ops.iter().map(|op| match op {
            Op::Put(key, value) => key.len() + value.len(),
            Op::Delete(key) => key.len(),
        });
        Self {
            compares: compares.len(),
            ops: ops.len(),
            bytes: compare_bytes
                .chain(op_bytes)
                .map(|b| b + ENTRY_OVERHEAD)
                .sum(),
        }
    }

    /// The guard's compare and new nonce, which every part carries.
    fn guard() -> Self {
        Self::of_txn(&[Compare::unchanged(CONFIG_GUARD_KEY, 0)], &[new_guard()])
    }

    fn plus(self, other: Self) -> Self {
        Self {
            compares: self.compares + other.compares,
            ops: self.ops + other.ops,
            bytes: self.bytes + other.bytes,
        }
    }

    fn fits(self, limits: TxnLimits) -> bool {
        self.compares <= limits.max_ops
            && self.ops <= limits.max_ops
            && self.bytes <= limits.max_bytes.saturating_sub(REQUEST_MARGIN)
    }
}

/// A new nonce for `config/guard`.
fn new_guard() -> Op {
    let nonce = format!("{{\"nonce\":\"{}\"}}", new_uid());
    Op::Put(CONFIG_GUARD_KEY.to_string(), nonce.into_bytes())
}

/// What undoing the parts written before a failure did.
#[derive(Default)]
struct Undo {
    /// Items another writer changed since this command wrote them: left as they are.
    kept: Vec<usize>,
    /// Why undoing stopped, if it did.
    failed: Option<StoreError>,
}

impl Undo {
    /// How the undo ended, for the error message; `restored` counts the items the parts
    /// certainly wrote.
    fn describe(&self, plan: &Plan, restored: usize) -> String {
        let name = |&i: &usize| {
            let item = &plan.items[i];
            format!("{} {}", item.kind, quoted(&item.name))
        };
        let list = |items: &[usize]| {
            let mut names: Vec<String> = items.iter().take(10).map(name).collect();
            if items.len() > 10 {
                names.push(format!("and {} more", items.len() - 10));
            }
            names.join(", ")
        };
        let resources = if restored == 1 {
            "resource"
        } else {
            "resources"
        };
        if let Some(e) = &self.failed {
            return format!(
                "putting back the {restored} {resources} written before it failed too ({e}); \
                 some may keep the content this command gave them: run the command again once \
                 the datastore answers, or check them with `tessera get`"
            );
        }
        let mut text =
            format!("the {restored} {resources} written before it were put back as they were");
        match self.kept.len() {
            0 => text.push_str(", so nothing was changed"),
            1 => text.push_str(&format!(
                ", except {}, which another writer changed since (it keeps that writer's \
                 content)",
                list(&self.kept)
            )),
            _ => text.push_str(&format!(
                ", except {}, which other writers changed since (they keep those writers' \
                 content)",
                list(&self.kept)
            )),
        }
        text
    }
}

/// The pool-like resources (IPPools, SpiderIPPools, SpiderSubnets) a batch is checked
/// against, indexed by network: every rule between two of them concerns shared addresses, so
/// each resource meets only those whose network overlaps its own, and a batch of n pools costs
/// n log n instead of n².
#[derive(Default)]
struct PoolWorld<'r> {
    members: Vec<&'r Resource>,
    index: OverlapIndex,
    /// Members without a network (never true of validated resources); they meet every query.
    unplaced: Vec<usize>,
}

impl<'r> PoolWorld<'r> {
    fn add(&mut self, r: &'r Resource) {
        let id = self.members.len();
        self.members.push(r);
        match pool_network(r) {
            Some(net) => self.index.insert(&net, id),
            None => self.unplaced.push(id),
        }
    }

    /// The members whose network overlaps `r`'s, in the order they were added.
    fn overlapping(&self, r: &Resource) -> Vec<&'r Resource> {
        let mut ids = self.unplaced.clone();
        if let Some(net) = pool_network(r) {
            ids.extend(self.index.overlapping(&net));
            ids.sort_unstable();
        }
        ids.into_iter().map(|id| self.members[id]).collect()
    }
}

/// The network holding every address of a pool-like resource: an IPPool's CIDR, a Spiderpool
/// resource's subnet (its ips lie inside it).
fn pool_network(r: &Resource) -> Option<IpNet> {
    match r {
        Resource::IPPool(p) => p.spec.cidr.trim().parse().ok(),
        Resource::SpiderIPPool(p) => p.spec.subnet_net(),
        Resource::SpiderSubnet(s) => s.spec.subnet_net(),
        _ => None,
    }
}

fn refused(kind: Kind, name: &str, field: &str, reason: &str) -> CatalogError {
    CatalogError::Refused {
        kind,
        name: name.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn default_ipam_config() -> Resource {
    Resource::IPAMConfiguration(IPAMConfiguration {
        metadata: ObjectMeta {
            name: IPAM_CONFIG_NAME.into(),
            ..Default::default()
        },
        spec: Default::default(),
    })
}

fn empty_resource(kind: Kind, name: &str) -> Resource {
    let metadata = ObjectMeta {
        name: name.to_string(),
        ..Default::default()
    };
    match kind {
        Kind::Node => Resource::Node(Node {
            metadata,
            spec: Value::Null,
        }),
        _ => Resource::Namespace(Namespace { metadata }),
    }
}

/// The stored form of a resource: its manifest as JSON, without `resourceVersion`.
fn encode(resource: &Resource) -> Vec<u8> {
    let mut doc = resource.to_manifest();
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Applies an RFC 7386 JSON merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(fields) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch_fields {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Time and ids

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC, e.g. `2022-05-12T14:34:03Z`.
pub fn format_rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month, day of the day `days` after 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, year starting in March
    let mp = (5 * doy + 2) / 153; // 0..=11, March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A new unique id in UUID version 4 text form, derived from the clock, the process id and a
/// per-process counter.
pub fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    let hi = splitmix64(nanos ^ pid.rotate_left(40) ^ count.wrapping_mul(0xA24B_AED4_963E_E407));
    let lo = splitmix64(hi ^ count ^ nanos.rotate_left(23) ^ pid);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_652_366_043), "2022-05-12T14:34:03Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn civil_dates_round_trip_every_day_of_four_centuries() {
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn uids_look_like_uuid_v4_and_differ() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert!(a
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // Examples from RFC 7386, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
