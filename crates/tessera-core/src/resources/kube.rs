//! Kubernetes `v1` Nodes and Namespaces: their labels feed pool selectors, and namespace
//! annotations name pools.

use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;

/// apiVersion of Kubernetes core resources (Namespace, Node).
pub const CORE_API_VERSION: &str = "v1";

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
