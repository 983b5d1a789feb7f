//! Create, read, update and delete resources in a [`Store`], all or nothing.
//!
//! Every command validates everything first ([`validate`], then
//! [`check_pool_against`](crate::validate::calico::check_pool_against) and
//! [`check_spider_against`](crate::validate::spider::check_spider_against) against the IPPools, SpiderIPPools and SpiderSubnets in the store
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
//!
//! This module holds the commands; `write` plans and commits them, `parts` writes a plan too
//! large for one transaction, `pool_checks` checks pool-like resources against one another,
//! `patch` is the merge patch, `stamp` makes uids, creation times and guard nonces and `owner`
//! keeps records managed in Kubernetes apart from those managed with `tessera`.

mod owner;
mod parts;
mod patch;
mod pool_checks;
mod stamp;
mod write;

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::decode::{decode_document, DecodeError};
use crate::keys;
use crate::ranges::IpRangeSet;
use crate::resources::calico::IPAMConfiguration;
use crate::resources::kube::{Namespace, Node};
use crate::resources::meta::ObjectMeta;
use crate::resources::{Kind, Resource};
use crate::retry::{self, MAX_ATTEMPTS};
use crate::store::{Compare, KeyValue, Store, StoreError};
use crate::text::{plain_or_quoted, quoted};
use crate::validate::calico::IPAM_CONFIG_NAME;
use crate::validate::error::ValidationError;
use crate::validate::validate;

pub use owner::{
    is_managed_by_kubernetes, KUBERNETES_KINDS, MANAGED_BY_ANNOTATION, MANAGED_BY_KUBERNETES,
};
pub use patch::merge_patch;
pub use stamp::{format_rfc3339, new_uid};

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
    /// The resource is managed on the other side: in Kubernetes when `tessera` writes, with
    /// `tessera` when tessera-controller mirrors a Kubernetes object (see [`MANAGED_BY_ANNOTATION`]).
    #[error("{kind} {}: {reason}", quoted(.name))]
    ManagedElsewhere {
        /// Kind of the resource.
        kind: Kind,
        /// Name of the resource.
        name: String,
        /// Who manages it and what to do.
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
    writer: owner::Writer,
}

impl<'a, S: Store + ?Sized> Catalog<'a, S> {
    /// A catalog over `store`, retrying conflicts [`MAX_ATTEMPTS`] times.
    pub fn new(store: &'a S) -> Self {
        Self {
            store,
            attempts: MAX_ATTEMPTS,
            in_use: None,
            writer: owner::Writer::Tessera,
        }
    }

    /// The same catalog as tessera-controller's mirror of Kubernetes objects: it writes and
    /// deletes only records marked with [`MANAGED_BY_ANNOTATION`] (and new ones), where every
    /// other catalog refuses to touch them.
    pub fn as_kubernetes_mirror(mut self) -> Self {
        self.writer = owner::Writer::KubernetesMirror;
        self
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
        let (_, stored) = self.modify(kind, name, false, |current| {
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
        })?;
        Ok(stored)
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
        let (_, stored) = self.modify(kind, name, create_missing, |current| {
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
        })?;
        Ok(stored)
    }

    /// Read-modify-write of one resource: `change` gets the stored resource and returns it as
    /// it should be; the result is validated and written with a compare on the revision read,
    /// and the whole is retried from the read when another writer got there first. A result
    /// equal to what is stored writes nothing ([`Action::Unchanged`]). `create_missing` starts
    /// from an empty resource when it does not exist (Nodes and Namespaces only); otherwise a
    /// missing resource is [`CatalogError::NotFound`]. Returns what was done and the resource
    /// as stored.
    pub fn modify(
        &self,
        kind: Kind,
        name: &str,
        create_missing: bool,
        change: impl Fn(&Resource) -> Result<Resource, CatalogError>,
    ) -> Result<(Action, Resource), CatalogError> {
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
            let (outcome, resource) = result.into_iter().next().expect("one resource written");
            Ok(Some((outcome.action, resource)))
        })
    }

    /// Runs `attempt` until it is not interfered with (`Ok(None)`), at most `self.attempts`
    /// times.
    fn retry<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, CatalogError>,
    ) -> Result<T, CatalogError> {
        retry::on_conflict(self.attempts, "catalog", |_| attempt())?.ok_or(CatalogError::Conflict {
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
