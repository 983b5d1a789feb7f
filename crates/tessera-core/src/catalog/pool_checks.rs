//! Checks of pool-like resources (IPPools, SpiderIPPools, SpiderSubnets) against one another
//! and against the allocator: overlaps, Spiderpool's subnet rules, and addresses in use that a
//! change or a delete would take out of a pool.

use std::collections::{HashMap, HashSet};

use super::{Catalog, CatalogError, Kind, POOL_KINDS};
use crate::net::OverlapIndex;
use crate::resources::spider::{SpiderIPPool, SpiderSubnet};
use crate::resources::Resource;
use crate::store::{Compare, KeyValue, Store};
use crate::validate::calico::{check_pool_against, ParsedPool};
use crate::validate::error::{FieldError, ValidationError};
use crate::validate::spider::{check_spider_against, describe_set, PoolLike};

impl<S: Store + ?Sized> Catalog<'_, S> {
    /// Refuses deleting a SpiderIPPool that holds allocated addresses; otherwise adds the
    /// compares under which the allocator's answer holds.
    pub(super) fn check_pool_is_empty(
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
    pub(super) fn pools_of_subnet(
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

    /// Checks the batch's pool-like resources against the `stored` ones and one another, and
    /// asks the allocator before a SpiderIPPool loses addresses (its answer's compares join
    /// `compares`). Returns the problems found.
    pub(super) fn check_pools(
        &self,
        valid: &[Resource],
        stored: &[Resource],
        compares: &mut Vec<Compare>,
    ) -> Result<Vec<CatalogError>, CatalogError> {
        let mut problems = Vec::new();
        // Every pool's network is parsed here, once; the rules get the typed values.
        let batch: Vec<PoolLike> = valid
            .iter()
            .filter(|r| POOL_KINDS.contains(&r.kind()))
            .map(PoolLike::new)
            .collect();
        let in_batch: HashSet<(Kind, &str)> = batch
            .iter()
            .map(|p| (p.resource.kind(), p.resource.name()))
            .collect();
        let stored: Vec<PoolLike> = stored
            .iter()
            .filter(|r| POOL_KINDS.contains(&r.kind()))
            .map(PoolLike::new)
            .collect();
        let stored_by_name: HashMap<(Kind, &str), &PoolLike> = stored
            .iter()
            .map(|p| ((p.resource.kind(), p.resource.name()), p))
            .collect();
        // Each pair is checked once: stored resources the batch leaves alone, and the batch's
        // own resources before this one (every rule is symmetric).
        let mut world = PoolWorld::default();
        for s in stored
            .iter()
            .filter(|s| !in_batch.contains(&(s.resource.kind(), s.resource.name())))
        {
            world.add(*s);
        }
        for new in &batch {
            let (kind, name) = (new.resource.kind(), new.resource.name());
            let previous = stored_by_name.get(&(kind, name)).copied();
            let others = world.overlapping(new);
            world.add(*new);
            let mut errors = Vec::new();
            if let Some(pool) = &new.calico {
                let mut calico: Vec<ParsedPool> = others.iter().filter_map(|o| o.calico).collect();
                calico.extend(previous.and_then(|old| old.calico));
                if let Err(e) = check_pool_against(pool, &calico) {
                    errors.extend(e.errors);
                }
            }
            let previous = previous.map(|p| p.resource);
            if let Err(e) = check_spider_against(new, previous, &others) {
                errors.extend(e.errors);
            }
            if let (Resource::SpiderIPPool(pool), Some(Resource::SpiderIPPool(old))) =
                (new.resource, previous)
            {
                errors.extend(self.check_leaving(pool, old, compares)?);
            }
            if !errors.is_empty() {
                problems.push(CatalogError::Validation(ValidationError {
                    kind,
                    name: name.to_string(),
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
}

/// The pool-like resources (IPPools, SpiderIPPools, SpiderSubnets) a batch is checked
/// against, indexed by network: every rule between two of them concerns shared addresses, so
/// each resource meets only those whose network overlaps its own, and a batch of n pools costs
/// n log n instead of n².
#[derive(Default)]
struct PoolWorld<'r> {
    members: Vec<PoolLike<'r>>,
    index: OverlapIndex,
    /// Members without a network (never true of validated resources); they meet every query.
    unplaced: Vec<usize>,
}

impl<'r> PoolWorld<'r> {
    fn add(&mut self, pool: PoolLike<'r>) {
        let id = self.members.len();
        self.members.push(pool);
        match pool.net {
            Some(net) => self.index.insert(&net, id),
            None => self.unplaced.push(id),
        }
    }

    /// The members whose network overlaps `pool`'s, in the order they were added.
    fn overlapping(&self, pool: &PoolLike<'_>) -> Vec<PoolLike<'r>> {
        let mut ids = self.unplaced.clone();
        if let Some(net) = pool.net {
            ids.extend(self.index.overlapping(&net));
            ids.sort_unstable();
        }
        ids.into_iter().map(|id| self.members[id]).collect()
    }
}
