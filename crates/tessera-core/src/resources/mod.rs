//! Resource types, wire-compatible with Calico's `projectcalico.org/v3` manifests and
//! Kubernetes `v1` Namespaces/Nodes. Field names follow the upstream JSON exactly so that
//! existing manifests apply unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spider::{SpiderIPPool, SpiderReservedIP, SpiderSubnet, SPIDER_API_VERSION};

/// apiVersion of Calico resources.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";
/// apiVersion of Kubernetes core resources (Namespace, Node).
pub const CORE_API_VERSION: &str = "v1";

/// Object metadata as Kubernetes and calicoctl print it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Unique name within the kind.
    #[serde(default)]
    pub name: String,
    /// Labels (used by selectors on nodes and namespaces).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (namespaces carry pool choices here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Store revision of the object; set by Tessera on read, ignored on write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Unique id assigned at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// RFC 3339 time of creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// Encapsulation mode of a pool (`ipipMode`, `vxlanMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncapMode {
    /// No encapsulation.
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only across subnet boundaries.
    CrossSubnet,
}

/// What addresses of a pool may be used for (`allowedUses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AllowedUse {
    /// Pod / workload addresses.
    Workload,
    /// Tunnel endpoint addresses of nodes.
    Tunnel,
    /// Service LoadBalancer addresses.
    LoadBalancer,
}

/// Whether a pool is picked automatically (`Automatic`) or only when named (`Manual`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// Used for any node its nodeSelector selects.
    #[default]
    Automatic,
    /// Used only when a request names it.
    Manual,
}

/// `IPPool.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// The pool's network, strictly masked.
    #[serde(default)]
    pub cidr: String,
    /// Prefix length of the pool's blocks (default 26 for IPv4, 122 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IP-in-IP mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<EncapMode>,
    /// VXLAN mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<EncapMode>,
    /// Masquerade traffic leaving the pool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
    /// A disabled pool hands out no new addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Do not export the pool's routes over BGP.
    #[serde(
        default,
        rename = "disableBGPExport",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_bgp_export: bool,
    /// Which nodes may take blocks from the pool (Calico selector; default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Which namespaces' pods may use the pool (Calico selector over namespace labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Allowed uses (default `[Workload, Tunnel]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_uses: Option<Vec<AllowedUse>>,
    /// Automatic or Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
}

/// A Calico `IPPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IPPool {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: IPPoolSpec,
}

/// `IPReservation.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPReservationSpec {
    /// CIDRs (or single addresses) that are never handed out.
    #[serde(default, rename = "reservedCIDRs")]
    pub reserved_cidrs: Vec<String>,
}

/// A Calico `IPReservation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IPReservation {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: IPReservationSpec,
}

/// `IPAMConfiguration.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPAMConfigurationSpec {
    /// Never borrow addresses from blocks affine to other nodes.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks on demand.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Upper bound on blocks affine to one node (0 = no limit).
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

fn default_true() -> bool {
    true
}

impl Default for IPAMConfigurationSpec {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

/// A Calico `IPAMConfiguration`; the only valid name is `default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IPAMConfiguration {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: IPAMConfigurationSpec,
}

/// A node: name and labels (pool nodeSelectors match these). Accepts Calico's and
/// Kubernetes' Node manifests; their specs are kept as given but not interpreted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec, kept verbatim.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub spec: serde_json::Value,
}

/// A namespace: name, labels (pool namespaceSelectors) and annotations (pool choices).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Metadata.
    pub metadata: ObjectMeta,
}

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
