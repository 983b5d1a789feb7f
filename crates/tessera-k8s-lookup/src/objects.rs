//! The parts of a Pod, a Namespace, a Job and a ReplicaSet that are read. Unknown fields are
//! skipped, so any API server version decodes.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Object metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: String,
    /// Unique id of this incarnation of the object.
    #[serde(default)]
    pub uid: String,
    /// Labels.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The objects this one belongs to (a Pod's ReplicaSet or StatefulSet).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// One owner of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// The owner's API version (`apps/v1`).
    #[serde(default)]
    pub api_version: String,
    /// The owner's kind (`StatefulSet`).
    #[serde(default)]
    pub kind: String,
    /// The owner's name.
    #[serde(default)]
    pub name: String,
    /// The owner's uid.
    #[serde(default)]
    pub uid: String,
    /// Whether this owner is the managing controller.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// A Pod: metadata, the node it is scheduled on and its phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The parts of `spec` read.
    #[serde(default)]
    pub spec: PodSpec,
    /// The parts of `status` read.
    #[serde(default)]
    pub status: PodStatus,
}

/// The parts of a Pod's spec the plugin reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node the pod is scheduled on.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// The parts of a Pod's status the plugin reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
}

/// A Namespace: its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// A Job: its metadata (its owner, a CronJob that started it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Job {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// A ReplicaSet: its metadata (its owner, the Deployment that made it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ReplicaSet {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `null` reads as the empty collection, as the API server may write it.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
