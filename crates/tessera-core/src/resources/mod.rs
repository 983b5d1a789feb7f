//! Resource types, wire-compatible with Calico's `projectcalico.org/v3` manifests,
//! Spiderpool's `spiderpool.spidernet.io/v2beta1` ones and Kubernetes `v1` Namespaces/Nodes.
//! Field names follow the upstream JSON exactly so that existing manifests apply unchanged.
//!
//! Types only: the rules they must follow are in [`crate::validate`], which imports this
//! module and never the other way round.

pub mod calico;
pub mod kube;
pub mod meta;
pub mod spider;

use calico::{IPAMConfiguration, IPPool, IPReservation, CALICO_API_VERSION};
use kube::{Namespace, Node, CORE_API_VERSION};
use meta::ObjectMeta;
use spider::{SpiderIPPool, SpiderReservedIP, SpiderSubnet, SPIDER_API_VERSION};

/// The kinds Tessera stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Calico IPPool.
    IPPool,
    /// Calico IPReservation.
    IPReservation,
    /// Calico IPAMConfiguration.
    IPAMConfiguration,
    /// Node.
    Node,
    /// Namespace.
    Namespace,
    /// Spiderpool SpiderIPPool.
    SpiderIPPool,
    /// Spiderpool SpiderSubnet.
    SpiderSubnet,
    /// Spiderpool SpiderReservedIP.
    SpiderReservedIP,
}

impl Kind {
    /// Every kind, in the order `apply` writes them.
    pub const ALL: [Kind; 8] = [
        Kind::IPAMConfiguration,
        Kind::IPPool,
        Kind::IPReservation,
        Kind::SpiderSubnet,
        Kind::SpiderIPPool,
        Kind::SpiderReservedIP,
        Kind::Node,
        Kind::Namespace,
    ];

    /// The kind's canonical name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::IPReservation => "IPReservation",
            Kind::IPAMConfiguration => "IPAMConfiguration",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::SpiderIPPool => "SpiderIPPool",
            Kind::SpiderSubnet => "SpiderSubnet",
            Kind::SpiderReservedIP => "SpiderReservedIP",
        }
    }

    /// The apiVersion Tessera prints for the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace => CORE_API_VERSION,
            Kind::SpiderIPPool | Kind::SpiderSubnet | Kind::SpiderReservedIP => SPIDER_API_VERSION,
            _ => CALICO_API_VERSION,
        }
    }

    /// Resolves a kind name as kubectl/calicoctl accept it on the command line
    /// (`ippool`, `ippools`, `ipp`, `IPPool`, `ipreservations`, `ns`, ...), including
    /// calicoctl's short aliases, and Spiderpool's kinds with kubectl's short names (`sp`,
    /// `ss`, `sr`).
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.split('.').next().unwrap_or_default();
        Some(match lower {
            "ippool" | "ippools" | "ipp" | "ipps" | "pool" | "pools" => Kind::IPPool,
            "ipreservation" | "ipreservations" => Kind::IPReservation,
            "ipamconfiguration" | "ipamconfigurations" | "ipamconfig" | "ipamconfigs" => {
                Kind::IPAMConfiguration
            }
            "node" | "nodes" | "no" | "nos" => Kind::Node,
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "spiderippool" | "spiderippools" | "sp" => Kind::SpiderIPPool,
            "spidersubnet" | "spidersubnets" | "ss" => Kind::SpiderSubnet,
            "spiderreservedip" | "spiderreservedips" | "sr" => Kind::SpiderReservedIP,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any stored resource.
// A command handles a few resources at a time, so the size of the largest variant costs
// nothing worth boxing it for, and unboxed variants keep matches and constructors plain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// An IPPool.
    IPPool(IPPool),
    /// An IPReservation.
    IPReservation(IPReservation),
    /// The IPAMConfiguration.
    IPAMConfiguration(IPAMConfiguration),
    /// A Node.
    Node(Node),
    /// A Namespace.
    Namespace(Namespace),
    /// A SpiderIPPool.
    SpiderIPPool(SpiderIPPool),
    /// A SpiderSubnet.
    SpiderSubnet(SpiderSubnet),
    /// A SpiderReservedIP.
    SpiderReservedIP(SpiderReservedIP),
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::IPPool(_) => Kind::IPPool,
            Resource::IPReservation(_) => Kind::IPReservation,
            Resource::IPAMConfiguration(_) => Kind::IPAMConfiguration,
            Resource::Node(_) => Kind::Node,
            Resource::Namespace(_) => Kind::Namespace,
            Resource::SpiderIPPool(_) => Kind::SpiderIPPool,
            Resource::SpiderSubnet(_) => Kind::SpiderSubnet,
            Resource::SpiderReservedIP(_) => Kind::SpiderReservedIP,
        }
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::IPPool(r) => &r.metadata,
            Resource::IPReservation(r) => &r.metadata,
            Resource::IPAMConfiguration(r) => &r.metadata,
            Resource::Node(r) => &r.metadata,
            Resource::Namespace(r) => &r.metadata,
            Resource::SpiderIPPool(r) => &r.metadata,
            Resource::SpiderSubnet(r) => &r.metadata,
            Resource::SpiderReservedIP(r) => &r.metadata,
        }
    }

    /// The resource's metadata, mutable.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::IPPool(r) => &mut r.metadata,
            Resource::IPReservation(r) => &mut r.metadata,
            Resource::IPAMConfiguration(r) => &mut r.metadata,
            Resource::Node(r) => &mut r.metadata,
            Resource::Namespace(r) => &mut r.metadata,
            Resource::SpiderIPPool(r) => &mut r.metadata,
            Resource::SpiderSubnet(r) => &mut r.metadata,
            Resource::SpiderReservedIP(r) => &mut r.metadata,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The resource as a manifest object: `{apiVersion, kind, metadata, spec}`.
    pub fn to_manifest(&self) -> serde_json::Value {
        let body = match self {
            Resource::IPPool(r) => serde_json::to_value(r),
            Resource::IPReservation(r) => serde_json::to_value(r),
            Resource::IPAMConfiguration(r) => serde_json::to_value(r),
            Resource::Node(r) => serde_json::to_value(r),
            Resource::Namespace(r) => serde_json::to_value(r),
            Resource::SpiderIPPool(r) => serde_json::to_value(r),
            Resource::SpiderSubnet(r) => serde_json::to_value(r),
            Resource::SpiderReservedIP(r) => serde_json::to_value(r),
        }
        .unwrap_or_default();
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), self.kind().api_version().into());
        out.insert("kind".into(), self.kind().as_str().into());
        if let serde_json::Value::Object(fields) = body {
            out.extend(fields);
        }
        serde_json::Value::Object(out)
    }
}
