//! Checks of pool-like resources (IPPools, SpiderIPPools, SpiderSubnets) against one another
//! and against the allocator: overlaps, Spiderpool's subnet rules, and addresses in use that a
//! change or a delete would take out of a pool.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::{Catalog, CatalogError, Kind, POOL_KINDS};
use crate::net::OverlapIndex;
use crate::resources::calico::IPPool;
use crate::resources::spider::{SpiderIPPool, SpiderSubnet};
use crate::resources::Resource;
use crate::store::{Compare, KeyValue, Store};
use crate::validate::calico::check_pool_against;
use crate::validate::error::{FieldError, ValidationError};
use crate::validate::spider::{check_spider_against, describe_set};

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
