//! What a migration plans from: the pools, the nodes' labels and the networks a new pool may
//! not overlap, read from the store.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::catalog::Catalog;
use crate::resources::calico::IPPool;
use crate::resources::{Kind, Resource};
use crate::store::Store;

use super::MigrateError;

/// The records a migration step is planned from.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// Every IPPool, by name.
    pub pools: BTreeMap<String, IPPool>,
    /// Every node's labels, by node name.
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Networks of SpiderIPPools and SpiderSubnets, with what they are (`SpiderSubnet s1`).
    pub spider_networks: Vec<(String, IpNet)>,
}

impl Records {
    /// Reads the records from `store`.
    pub fn read<S: Store + ?Sized>(store: &S) -> Result<Self, MigrateError> {
        let catalog = Catalog::new(store);
        let mut records = Records::default();
        for r in catalog.list(Kind::IPPool)? {
            if let Resource::IPPool(p) = r {
                records.pools.insert(p.metadata.name.clone(), p);
            }
        }
        for r in catalog.list(Kind::Node)? {
            if let Resource::Node(n) = r {
                records
                    .node_labels
                    .insert(n.metadata.name.clone(), n.metadata.labels);
            }
        }
        for kind in [Kind::SpiderSubnet, Kind::SpiderIPPool] {
            for r in catalog.list(kind)? {
                let subnet = match &r {
                    Resource::SpiderSubnet(s) => &s.spec.subnet,
                    Resource::SpiderIPPool(p) => &p.spec.subnet,
                    _ => continue,
                };
                if let Ok(net) = subnet.parse::<IpNet>() {
                    records
                        .spider_networks
                        .push((format!("{kind} {}", r.name()), net.trunc()));
                }
            }
        }
        Ok(records)
    }

    /// The names of every pool, for messages: `a, b` or `none`.
    pub fn pool_names(&self) -> String {
        if self.pools.is_empty() {
            return "none".into();
        }
        self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Every network a new pool may not overlap except `skip`'s, with what it is.
    pub fn taken_networks(&self, skip: &str) -> Vec<(String, IpNet)> {
        let pools = self
            .pools
            .values()
            .filter(|p| p.metadata.name != skip)
            .filter_map(|p| Some((format!("IPPool {}", p.metadata.name), pool_net(p)?)));
        pools.chain(self.spider_networks.iter().cloned()).collect()
    }
}

/// A pool's network, `None` when its cidr does not parse (validation keeps that out).
pub fn pool_net(pool: &IPPool) -> Option<IpNet> {
    pool.spec.cidr.parse::<IpNet>().ok().map(|n| n.trunc())
}
