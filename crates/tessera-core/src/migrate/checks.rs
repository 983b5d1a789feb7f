//! The safety checks a migration passes before it disables a pool: each failure names what
//! is wrong and what to do, and nothing has been written yet.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::catalog::{is_managed_by_kubernetes, MANAGED_BY_ANNOTATION};
use crate::ipam::Holder;
use crate::net::nets_overlap;
use crate::resources::calico::IPPool;
use crate::resources::Resource;
use crate::selector::Selector;

use super::records::{pool_net, Records};
use super::space::{lowest_free, private_space_of};
use super::{block_size_of, refused, MigrateError};

/// A pool's network, or why the migration cannot use it.
pub(super) fn network(pool: &IPPool) -> Result<IpNet, MigrateError> {
    pool_net(pool).ok_or_else(|| {
        refused(format!(
            "IPPool {}: spec.cidr {:?} is not a network; fix the pool first",
            pool.metadata.name, pool.spec.cidr
        ))
    })
}

pub(super) fn not_kubernetes_owned(pool: &IPPool) -> Result<(), MigrateError> {
    if is_managed_by_kubernetes(&Resource::IPPool(pool.clone())) {
        return Err(refused(format!(
            "IPPool {name} is managed in Kubernetes (annotation {MANAGED_BY_ANNOTATION}); \
             migrate it there, with kubectl, or remove it from Kubernetes first",
            name = pool.metadata.name
        )));
    }
    Ok(())
}

pub(super) fn same_family(source: &IPPool, target: &IPPool) -> Result<(), MigrateError> {
    let (s, t) = (network(source)?, network(target)?);
    if matches!(s, IpNet::V4(_)) != matches!(t, IpNet::V4(_)) {
        return Err(refused(format!(
            "IPPool {} ({s}) and IPPool {} ({t}) are of different address families; move to a \
             pool of the same family",
            source.metadata.name, target.metadata.name
        )));
    }
    Ok(())
}

/// An existing target given as a manifest must be the pool the manifest describes.
pub(super) fn same_network(stored: &IPPool, manifest: &IPPool) -> Result<(), MigrateError> {
    let same =
        pool_net(stored) == pool_net(manifest) && block_size_of(stored) == block_size_of(manifest);
    if !same {
        return Err(refused(format!(
            "IPPool {} already exists with {} where the manifest says {}; name the existing \
             pool with --to, or give the new pool another name",
            stored.metadata.name,
            super::settings(stored),
            super::settings(manifest)
        )));
    }
    Ok(())
}

/// A pool about to be created overlaps no pool, SpiderIPPool or SpiderSubnet.
pub(super) fn no_overlap(records: &Records, target: &IPPool) -> Result<(), MigrateError> {
    let net = network(target)?;
    let clashes: Vec<String> = records
        .taken_networks(&target.metadata.name)
        .into_iter()
        .filter(|(_, other)| nets_overlap(&net, other))
        .map(|(what, other)| format!("{what} ({other})"))
        .collect();
    if !clashes.is_empty() {
        return Err(refused(format!(
            "IPPool {} ({net}) overlaps {}; choose a free cidr",
            target.metadata.name,
            clashes.join(", ")
        )));
    }
    Ok(())
}

/// Every node holding `source` addresses is still selected by an enabled pool of the family
/// once `source` is disabled and `target` enabled; otherwise its new pods get no address.
pub(super) fn nodes_stay_served(
    records: &Records,
    source: &IPPool,
    target: &IPPool,
    holders: &[Holder],
) -> Result<(), MigrateError> {
    let v4 = matches!(network(source)?, IpNet::V4(_));
    let nodes: BTreeSet<&str> = holders
        .iter()
        .filter_map(|h| h.attrs.node.as_deref())
        .collect();
    let serving: Vec<(String, Option<Selector>)> = records
        .pools
        .values()
        .filter(|p| p.metadata.name != source.metadata.name)
        .filter(|p| p.metadata.name != target.metadata.name && !p.spec.disabled)
        .chain(std::iter::once(target))
        .filter(|p| pool_net(p).is_some_and(|n| matches!(n, IpNet::V4(_)) == v4))
        .map(|p| {
            let selector = Selector::parse(p.spec.node_selector.as_deref().unwrap_or("all()"));
            (p.metadata.name.clone(), selector.ok())
        })
        .collect();
    let empty = Default::default();
    let unserved: Vec<&str> = nodes
        .into_iter()
        .filter(|node| {
            let labels = records.node_labels.get(*node).unwrap_or(&empty);
            !serving
                .iter()
                .any(|(_, s)| s.as_ref().is_some_and(|s| s.matches(labels)))
        })
        .collect();
    if !unserved.is_empty() {
        return Err(refused(format!(
            "once IPPool {} is disabled, no enabled {} pool selects node(s) {}, which hold its \
             addresses: their new pods would get no address; give IPPool {} a nodeSelector \
             that selects them (now: {})",
            source.metadata.name,
            if v4 { "IPv4" } else { "IPv6" },
            unserved.join(", "),
            target.metadata.name,
            target.spec.node_selector.as_deref().unwrap_or("all()")
        )));
    }
    Ok(())
}

/// A block size the family allows and no larger than the pool.
pub(super) fn block_size_fits(pool: &IPPool, net: IpNet, size: u8) -> Result<(), MigrateError> {
    let (range, family) = match net {
        IpNet::V4(_) => (20..=32, "IPv4"),
        IpNet::V6(_) => (116..=128, "IPv6"),
    };
    let name = &pool.metadata.name;
    if !range.contains(&size) {
        return Err(refused(format!(
            "--block-size {size}: an {family} block size is {} to {}",
            range.start(),
            range.end()
        )));
    }
    if size < net.prefix_len() {
        return Err(refused(format!(
            "--block-size {size}: blocks of IPPool {name} ({net}) cannot be larger than the \
             pool; use {} or more",
            net.prefix_len()
        )));
    }
    Ok(())
}

/// The lowest free network of `net`'s size in its private space.
pub(super) fn free_network_like(records: &Records, net: IpNet) -> Result<IpNet, MigrateError> {
    let Some(space) = private_space_of(&net) else {
        return Err(refused(format!(
            "{net} is not in a private address space (10.0.0.0/8, 172.16.0.0/12, \
             192.168.0.0/16, fc00::/7), so no temporary network is chosen for it; give one with \
             --temporary-cidr"
        )));
    };
    let taken: Vec<IpNet> = records
        .taken_networks("")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    lowest_free(&space, net.prefix_len(), &taken).ok_or_else(|| {
        refused(format!(
            "no free /{} is left in {space} for the temporary pool; give one with \
             --temporary-cidr",
            net.prefix_len()
        ))
    })
}
