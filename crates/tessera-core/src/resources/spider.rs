//! Spiderpool resources (`spiderpool.spidernet.io/v2beta1`): subnets, pools of explicit
//! address ranges, and reserved addresses. Field names follow Spiderpool's JSON exactly so
//! that existing manifests apply unchanged. Their rules are in [`crate::validate::spider`].

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::meta::{LabelSelector, ObjectMeta};
use crate::ranges::{IpRangeSet, RangeError};

/// apiVersion of Spiderpool resources.
pub const SPIDER_API_VERSION: &str = "spiderpool.spidernet.io/v2beta1";

/// A route handed to the workload with its address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network.
    pub dst: String,
    /// Next hop.
    pub gw: String,
}

/// `SpiderIPPool.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiderIPPoolSpec {
    /// 4 or 6 (derived from `subnet` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// The subnet the pool's addresses belong to.
    #[serde(default)]
    pub subnet: String,
    /// Addresses: single IPs or `a-b` ranges.
    #[serde(default, rename = "ips", skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Addresses never handed out.
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// Gateway given to workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Routes given to workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// VLAN id (informational for the main plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// Pods whose labels match may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<LabelSelector>,
    /// Pods in namespaces whose labels match may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_affinity: Option<LabelSelector>,
    /// Pods in these namespaces may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_name: Vec<String>,
    /// Pods on nodes whose labels match may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<LabelSelector>,
    /// Pods on these nodes may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,
    /// Multus network names the pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multus_name: Vec<String>,
    /// A cluster default pool (used when nothing else names a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// A disabled pool hands out nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
}

/// A Spiderpool `SpiderIPPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiderIPPool {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: SpiderIPPoolSpec,
}

/// `SpiderSubnet.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiderSubnetSpec {
    /// 4 or 6 (derived from `subnet` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// The subnet.
    #[serde(default)]
    pub subnet: String,
    /// Addresses pools of this subnet may take: single IPs or `a-b` ranges.
    #[serde(default, rename = "ips", skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Addresses never handed out.
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// VLAN id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
}

/// A Spiderpool `SpiderSubnet`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiderSubnet {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: SpiderSubnetSpec,
}

/// `SpiderReservedIP.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiderReservedIPSpec {
    /// 4 or 6 (derived from the addresses when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Reserved addresses: single IPs or `a-b` ranges.
    #[serde(default, rename = "ips")]
    pub ips: Vec<String>,
}

/// A Spiderpool `SpiderReservedIP`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiderReservedIP {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: SpiderReservedIPSpec,
}

// ---------------------------------------------------------------------------------------------
// Address sets

/// Whether addresses of a spec are IPv6: `ipVersion` when it says 4 or 6, else the family of
/// `subnet`, else the family of the first address. Validated specs agree on all three.
fn family_is_v6(ip_version: Option<u8>, subnet: &str, ips: &[String]) -> bool {
    match ip_version {
        Some(6) => true,
        Some(4) => false,
        _ => match subnet.trim().parse::<IpNet>() {
            Ok(net) => matches!(net, IpNet::V6(_)),
            Err(_) => ips.first().is_some_and(|ip| ip.contains(':')),
        },
    }
}

fn subnet_of(subnet: &str) -> Option<IpNet> {
    subnet.trim().parse::<IpNet>().ok().map(|net| net.trunc())
}

/// `ips` minus `excludeIPs`, read in family `v6`.
fn usable(ips: &[String], exclude: &[String], v6: bool) -> Result<IpRangeSet, RangeError> {
    Ok(IpRangeSet::parse(ips, v6)?.subtract(&IpRangeSet::parse(exclude, v6)?))
}

impl SpiderIPPoolSpec {
    /// True for an IPv6 pool.
    pub fn is_v6(&self) -> bool {
        family_is_v6(self.ip_version, &self.subnet, &self.ips)
    }

    /// The pool's subnet, when it parses.
    pub fn subnet_net(&self) -> Option<IpNet> {
        subnet_of(&self.subnet)
    }

    /// The addresses the pool may hand out: `ips` minus `excludeIPs`. Its size is what
    /// Spiderpool shows as TOTAL-IP-COUNT. Fails only for entries that do not parse, which a
    /// validated pool never has.
    pub fn total_ips(&self) -> Result<IpRangeSet, RangeError> {
        usable(&self.ips, &self.exclude_ips, self.is_v6())
    }
}

impl SpiderSubnetSpec {
    /// True for an IPv6 subnet.
    pub fn is_v6(&self) -> bool {
        family_is_v6(self.ip_version, &self.subnet, &self.ips)
    }

    /// The subnet as a network, when it parses.
    pub fn subnet_net(&self) -> Option<IpNet> {
        subnet_of(&self.subnet)
    }

    /// The addresses the subnet offers to its pools: `ips` minus `excludeIPs` (Spiderpool's
    /// TOTAL-IP-COUNT of a subnet).
    pub fn total_ips(&self) -> Result<IpRangeSet, RangeError> {
        usable(&self.ips, &self.exclude_ips, self.is_v6())
    }
}

impl SpiderReservedIPSpec {
    /// True for IPv6 reservations.
    pub fn is_v6(&self) -> bool {
        family_is_v6(self.ip_version, "", &self.ips)
    }

    /// The reserved addresses.
    pub fn reserved_ips(&self) -> Result<IpRangeSet, RangeError> {
        IpRangeSet::parse(&self.ips, self.is_v6())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_pool_decodes() {
        let pool: SpiderIPPool = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nginx-v4-ippool"},
            "spec": {"ipVersion": 4, "subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"]}
        }))
        .unwrap();
        assert_eq!(pool.spec.ips, ["10.244.120.10-10.244.120.20"]);
        assert_eq!(pool.spec.ip_version, Some(4));
    }
}
