//! How many addresses each SpiderIPPool has handed out, for the ALLOCATED-IP-COUNT column of
//! `get sp` and `status.allocatedIPCount` of `-o yaml|json`.

use std::collections::BTreeMap;

use tessera_core::store::Store;

/// Allocated addresses per SpiderIPPool name; a pool that is absent has none.
pub fn allocated_counts(store: &dyn Store) -> anyhow::Result<BTreeMap<String, u128>> {
    Ok(tessera_core::ipam::Ipam::new(store).spider_pool_usage()?)
}
