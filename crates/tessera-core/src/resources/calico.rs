//! Calico's `projectcalico.org/v3` resources: IPPool, IPReservation and IPAMConfiguration.
//! Field names follow Calico's JSON exactly so that existing manifests apply unchanged.

use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;

/// apiVersion of Calico resources.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";

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
    /// A StatefulSet pod created again under its name gets its addresses back (Spiderpool's
    /// `ipam.enableStatefulSet`); off, it gets new ones like any other pod.
    #[serde(default = "default_true")]
    pub enable_stateful_set: bool,
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
            enable_stateful_set: true,
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
