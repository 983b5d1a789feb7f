//! Planning a command's writes and committing them: read everything the checks need at once
//! (the guard first), decide every record's fate, then commit one [`Plan`] in one
//! transaction, or in parts (`parts`) when it is too large for one.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    key_of, many, prefix_of, refused, stamp, Action, Catalog, CatalogError, Mode, Outcome,
    CONFIG_GUARD_KEY, POOL_KINDS,
};
use crate::keys;
use crate::resources::{Kind, Resource};
use crate::store::{Compare, KeyValue, Op, Read, Snapshot, Store, StoreError, TxnOutcome};
use crate::validate::validate;

use super::owner;
use super::parts::Load;

impl<S: Store + ?Sized> Catalog<'_, S> {
    /// Validates `resources`, then writes them all or none, retrying conflicts.
    pub(super) fn write(
        &self,
        resources: &[Resource],
        mode: Mode,
    ) -> Result<Vec<Outcome>, CatalogError> {
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
    pub(super) fn try_write(
        &self,
        valid: &[Resource],
        mode: Mode,
        expected: Option<i64>,
    ) -> Result<Option<Vec<(Outcome, Resource)>>, CatalogError> {
        let has_pools = valid.iter().any(|r| POOL_KINDS.contains(&r.kind()));
        let reads = write_reads(valid, has_pools);
        let first = reads.len() - valid.len();
        let snap = self.read_in_parts(&reads)?;
        let mut plan = Plan::new(snap.get(0).map_or(0, |kv| kv.mod_revision), has_pools);
        let mut done = Vec::new();
        let mut problems = Vec::new();
        let now = stamp::now_rfc3339();
        for (i, r) in valid.iter().enumerate() {
            let stored = snap.get(first + i);
            let revision = stored.map_or(0, |kv| kv.mod_revision);
            if expected.is_some_and(|want| want != revision) {
                return Ok(None);
            }
            let owner = owner::refusal(self.writer, r.kind(), r.name(), Some(r), stored);
            if let Some(problem) = owner.or_else(|| refusal(r, mode, stored)) {
                problems.push(problem);
                continue;
            }
            let (action, new) = self.stamped(r, stored, &now)?;
            let mut item = Item::new(r.kind(), r.name(), stored.cloned());
            if action != Action::Unchanged {
                item.op = Some(Op::Put(item.key.clone(), encode(&new)));
            }
            plan.items.push(item);
            let outcome = Outcome {
                kind: r.kind(),
                name: r.name().to_string(),
                action,
            };
            done.push((outcome, new, revision));
        }
        if has_pools {
            let stored = self.stored_pools(&snap)?;
            problems.extend(self.check_pools(valid, &stored, &mut plan.extra)?);
        }
        if !problems.is_empty() {
            return Err(many(problems));
        }
        let Some(revisions) = self.commit_plan(&plan)? else {
            return Ok(None);
        };
        Ok(Some(with_revisions(done, revisions)))
    }

    /// `new` as it is to be stored over `stored` (`None`: absent), with what that does: a
    /// new resource gets a uid and a creation time, an existing one keeps its own.
    fn stamped(
        &self,
        new: &Resource,
        stored: Option<&KeyValue>,
        now: &str,
    ) -> Result<(Action, Resource), CatalogError> {
        let mut new = new.clone();
        let Some(kv) = stored else {
            let meta = new.metadata_mut();
            meta.resource_version = None;
            meta.uid = Some(stamp::new_uid());
            meta.creation_timestamp = Some(now.to_string());
            return Ok((Action::Created, new));
        };
        let mut old = self.decode_stored(kv)?;
        old.metadata_mut().resource_version = None;
        let meta = new.metadata_mut();
        meta.resource_version = None;
        meta.uid = old.metadata().uid.clone();
        meta.creation_timestamp = old.metadata().creation_timestamp.clone();
        let action = if old == new {
            Action::Unchanged
        } else {
            Action::Configured
        };
        Ok((action, new))
    }

    /// The stored pool-like resources, from the prefixes [`write_reads`] read after the guard.
    fn stored_pools(&self, snap: &Snapshot) -> Result<Vec<Resource>, CatalogError> {
        let mut stored = Vec::new();
        for (i, kind) in POOL_KINDS.into_iter().enumerate() {
            let prefix = prefix_of(kind).expect("pool kinds have prefixes");
            for kv in snap.list(1 + i) {
                if !kv.key[prefix.len()..].contains('/') {
                    stored.push(self.decode_stored(kv)?);
                }
            }
        }
        Ok(stored)
    }

    /// One attempt at [`Catalog::delete`]; `Ok(None)` when another writer interfered.
    pub(super) fn try_delete(
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
                    if let Some(problem) = owner::refusal(self.writer, *kind, name, None, Some(kv))
                    {
                        problems.push(problem);
                        continue;
                    }
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

    /// Reads at one revision, or, when the store takes fewer reads per request than asked
    /// for, in several requests in order. Callers read `config/guard` first: a configuration
    /// record that changes after it changes the guard too, which their commit compares.
    pub(super) fn read_in_parts(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
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
    pub(super) fn commit_plan(&self, plan: &Plan) -> Result<Option<Vec<i64>>, CatalogError> {
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
}

/// What a write of `valid` reads: the guard first (every configuration record read after it
/// is covered by its compare), then every pool-like resource when the batch has one, then
/// each resource's own key, in order, last.
fn write_reads(valid: &[Resource], has_pools: bool) -> Vec<Read> {
    let mut reads = vec![Read::Get(CONFIG_GUARD_KEY.to_string())];
    if has_pools {
        for kind in POOL_KINDS {
            let prefix = prefix_of(kind).expect("pool kinds have prefixes");
            reads.push(Read::Prefix(prefix.to_string()));
        }
    }
    reads.extend(valid.iter().map(|r| Read::Get(key_of(r.kind(), r.name()))));
    reads
}

/// Why `mode` cannot write `r` over `stored` (`None`: absent), if it cannot: `create` of an
/// existing resource, `replace` of a missing one, or a `resourceVersion` that is not current.
fn refusal(r: &Resource, mode: Mode, stored: Option<&KeyValue>) -> Option<CatalogError> {
    let (kind, name) = (r.kind(), r.name().to_string());
    match (mode, stored) {
        (Mode::Create, Some(_)) => Some(CatalogError::AlreadyExists { kind, name }),
        (Mode::Replace, None) => Some(CatalogError::NotFound { kind, name }),
        (_, Some(kv)) => {
            let given = r.metadata().resource_version.as_deref()?;
            (!given.is_empty() && given != kv.mod_revision.to_string()).then(|| {
                CatalogError::Stale {
                    kind,
                    name,
                    given: given.to_string(),
                    current: kv.mod_revision,
                }
            })
        }
        (_, None) => None,
    }
}

/// Each written resource with its `resourceVersion`: the revision its part was written at,
/// or, left unchanged, the one it was read at.
fn with_revisions(
    done: Vec<(Outcome, Resource, i64)>,
    revisions: Vec<i64>,
) -> Vec<(Outcome, Resource)> {
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
        .collect()
}

/// One record a command writes or relies on.
pub(super) struct Item {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) key: String,
    /// The record as read (`None`: absent). The write compares its revision; an undo puts it
    /// back.
    pub(super) before: Option<KeyValue>,
    /// The write; `None` for a record the command leaves as it is.
    pub(super) op: Option<Op>,
}

impl Item {
    pub(super) fn new(kind: Kind, name: &str, before: Option<KeyValue>) -> Self {
        Self {
            kind,
            name: name.to_string(),
            key: key_of(kind, name),
            before,
            op: None,
        }
    }

    /// The record is still as read.
    pub(super) fn compare(&self) -> Compare {
        Compare::unchanged(
            &self.key,
            self.before.as_ref().map_or(0, |kv| kv.mod_revision),
        )
    }

    /// The record still holds this command's write: absent after a delete; after a put, at
    /// the part's revision when known, else holding the written bytes.
    pub(super) fn written(&self, revision: Option<i64>) -> Compare {
        match (&self.op, revision) {
            (Some(Op::Put(_, _)), Some(rev)) => Compare::unchanged(&self.key, rev),
            (Some(Op::Put(_, value)), None) => Compare::Value(self.key.clone(), value.clone()),
            _ => Compare::absent(&self.key),
        }
    }

    /// The write that puts the record back as it was read.
    pub(super) fn restore(&self) -> Op {
        match &self.before {
            Some(kv) => Op::Put(self.key.clone(), kv.value.clone()),
            None => Op::Delete(self.key.clone()),
        }
    }

    /// What the item adds to a part.
    pub(super) fn load(&self) -> Load {
        Load::of_txn(&[self.compare()], self.op.as_slice())
    }

    /// Pools, subnets and the IPAM configuration are checked against one another, so they
    /// are written together.
    pub(super) fn written_together(&self) -> bool {
        POOL_KINDS.contains(&self.kind) || self.kind == Kind::IPAMConfiguration
    }
}

/// Everything one attempt of a command writes, with what the checks relied on.
pub(super) struct Plan {
    /// The records, in the command's order.
    pub(super) items: Vec<Item>,
    /// Compares that must hold when the pools are written: the allocator's in-use answers.
    pub(super) extra: Vec<Compare>,
    /// `config/guard`'s revision when read, before every other record.
    pub(super) guard: i64,
    /// The checks read the pools, so the write compares the guard (which every writer of a
    /// pool renews) instead of every pool.
    pub(super) needs_guard: bool,
}

impl Plan {
    pub(super) fn new(guard: i64, needs_guard: bool) -> Self {
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
}

/// The stored form of a resource: its manifest as JSON, without `resourceVersion`.
fn encode(resource: &Resource) -> Vec<u8> {
    let mut doc = resource.to_manifest();
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A new nonce for `config/guard`.
pub(super) fn new_guard() -> Op {
    let nonce = format!("{{\"nonce\":\"{}\"}}", stamp::new_uid());
    Op::Put(CONFIG_GUARD_KEY.to_string(), nonce.into_bytes())
}
