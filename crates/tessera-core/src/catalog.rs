//! Create, read, update and delete resources in a [`Store`], all or nothing.
//!
//! Every command validates everything first ([`validate`], then [`check_pool_against`] and
//! [`check_spider_against`] against the IPPools, SpiderIPPools and SpiderSubnets in the store
//! *and* those of the same batch), then writes every change in one store transaction whose
//! compares cover every key it read (a key that was absent must still be absent). When another
//! writer got there first, the whole command is re-read and re-checked, up to
//! [`MAX_ATTEMPTS`] times. A batch with one bad resource writes nothing.
//!
//! The catalog cannot see allocations. A caller that can passes an [`InUseCheck`]
//! ([`Catalog::with_in_use_check`]) so that addresses in use never leave a SpiderIPPool.
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
use crate::store::{Compare, KeyValue, Op, Read, Store, StoreError, TxnOutcome};
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
        self.retry(|| {
            let reads: Vec<Read> = unique
                .iter()
                .map(|(k, n)| Read::Get(key_of(*k, n)))
                .collect();
            let snap = self.store.read(&reads)?;
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut outcomes = Vec::new();
            let mut problems = Vec::new();
            for (i, (kind, name)) in unique.iter().enumerate() {
                let key = key_of(*kind, name);
                match snap.get(i) {
                    Some(kv) => {
                        compares.push(Compare::unchanged(&key, kv.mod_revision));
                        ops.push(Op::Delete(key));
                        outcomes.push(Outcome {
                            kind: *kind,
                            name: name.clone(),
                            action: Action::Deleted,
                        });
                    }
                    None if ignore_missing => {}
                    None => problems.push(CatalogError::NotFound {
                        kind: *kind,
                        name: name.clone(),
                    }),
                }
            }
            if !problems.is_empty() {
                return Err(many(problems));
            }
            self.commit(&compares, &ops).map(|c| c.map(|_| outcomes))
        })
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

    /// One attempt at writing validated resources: read, check, one txn. `Ok(None)` means
    /// another writer interfered (or, with `expected`, the single resource is no longer at
    /// that revision) and the caller should start over.
    fn try_write(
        &self,
        valid: &[Resource],
        mode: Mode,
        expected: Option<i64>,
    ) -> Result<Option<Vec<(Outcome, Resource)>>, CatalogError> {
        let has_pools = valid.iter().any(|r| POOL_KINDS.contains(&r.kind()));
        let mut reads: Vec<Read> = valid
            .iter()
            .map(|r| Read::Get(key_of(r.kind(), r.name())))
            .collect();
        if has_pools {
            for kind in POOL_KINDS {
                let prefix = prefix_of(kind).expect("pool kinds have prefixes");
                reads.push(Read::Prefix(prefix.to_string()));
            }
            reads.push(Read::Get(CONFIG_GUARD_KEY.to_string()));
        }
        let snap = self.store.read(&reads)?;
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut done = Vec::new();
        let mut problems = Vec::new();
        let now = format_rfc3339(unix_now());
        for (i, r) in valid.iter().enumerate() {
            let key = key_of(r.kind(), r.name());
            let stored = snap.get(i);
            let revision = stored.map_or(0, |kv| kv.mod_revision);
            if expected.is_some_and(|want| want != revision) {
                return Ok(None);
            }
            compares.push(Compare::unchanged(&key, revision));
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
            if action != Action::Unchanged {
                ops.push(Op::Put(key, encode(&new)));
            }
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
            let n = valid.len();
            let mut stored: Vec<Resource> = Vec::new();
            for (i, kind) in POOL_KINDS.into_iter().enumerate() {
                let prefix = prefix_of(kind).expect("pool kinds have prefixes");
                for kv in snap.list(n + i) {
                    compares.push(Compare::unchanged(&kv.key, kv.mod_revision));
                    if !kv.key[prefix.len()..].contains('/') {
                        stored.push(self.decode_stored(kv)?);
                    }
                }
            }
            let guard_rev = snap
                .get(n + POOL_KINDS.len())
                .map_or(0, |kv| kv.mod_revision);
            compares.push(Compare::unchanged(CONFIG_GUARD_KEY, guard_rev));

            let batch: Vec<&Resource> = valid
                .iter()
                .filter(|r| POOL_KINDS.contains(&r.kind()))
                .collect();
            let in_batch: HashSet<(Kind, &str)> =
                batch.iter().map(|r| (r.kind(), r.name())).collect();
            let stored_by_name: HashMap<(Kind, &str), &Resource> =
                stored.iter().map(|r| ((r.kind(), r.name()), r)).collect();
            // Each pair is checked once: stored resources the batch leaves alone, and the
            // batch's own resources before this one (every rule is symmetric).
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
                if let (
                    Some(check),
                    Resource::SpiderIPPool(pool),
                    Some(Resource::SpiderIPPool(old)),
                ) = (self.in_use, new, previous)
                {
                    if let (Ok(before), Ok(after)) = (old.spec.total_ips(), pool.spec.total_ips()) {
                        let leaving = before.subtract(&after);
                        if !leaving.is_empty() {
                            let answer = check(&pool.metadata.name, &leaving)?;
                            compares.extend(answer.compares);
                            let held = answer.addresses.intersect(&leaving);
                            if !held.is_empty() {
                                errors.push(FieldError::new(
                                    "spec.ips",
                                    format!(
                                        "{} {} allocated and would no longer belong to the \
                                         pool; keep {} in ips (and out of excludeIPs), or \
                                         release {} first",
                                        describe_set(&held),
                                        if held.len() == 1 { "is" } else { "are" },
                                        if held.len() == 1 { "it" } else { "them" },
                                        if held.len() == 1 { "it" } else { "them" },
                                    ),
                                ));
                            }
                        }
                    }
                }
                if !errors.is_empty() {
                    problems.push(CatalogError::Validation(ValidationError {
                        kind: new.kind(),
                        name: new.name().to_string(),
                        errors,
                    }));
                }
            }
        }

        if !problems.is_empty() {
            return Err(many(problems));
        }
        let Some(revision) = self.commit(&compares, &ops)? else {
            return Ok(None);
        };
        Ok(Some(
            done.into_iter()
                .map(|(outcome, mut resource, stored_rev)| {
                    let rev = if outcome.action == Action::Unchanged {
                        stored_rev
                    } else {
                        revision
                    };
                    resource.metadata_mut().resource_version = Some(rev.to_string());
                    (outcome, resource)
                })
                .collect(),
        ))
    }

    /// Runs the txn (or nothing when there is nothing to write); `Ok(None)` on conflict.
    /// A txn that changes the configuration also renews the guard's nonce.
    fn commit(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<i64>, CatalogError> {
        if ops.is_empty() {
            return Ok(Some(0));
        }
        let changes_config = ops.iter().any(|op| {
            let (Op::Put(key, _) | Op::Delete(key)) = op;
            key.starts_with(keys::CONFIG_PREFIX)
        });
        let mut ops = ops.to_vec();
        if changes_config {
            let nonce = format!("{{\"nonce\":\"{}\"}}", new_uid());
            ops.push(Op::Put(CONFIG_GUARD_KEY.to_string(), nonce.into_bytes()));
        }
        match self.store.txn(compares, &ops)? {
            TxnOutcome::Committed(rev) => Ok(Some(rev)),
            TxnOutcome::Conflict => Ok(None),
        }
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
