//! The pure part of the custom-resource mirror: which resources are mirrored, how a Kubernetes
//! object becomes a Tessera manifest, and the status written back.

use std::collections::BTreeMap;

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Map, Value};
use tessera_core::catalog::{MANAGED_BY_ANNOTATION, MANAGED_BY_KUBERNETES};
use tessera_core::resources::Kind;

/// The finalizer that keeps a Kubernetes object until its record is gone from the datastore.
pub const FINALIZER: &str = "tessera.dev/datastore-record";

/// The type of the condition the controller writes in `status.conditions`.
pub const CONDITION_TYPE: &str = "Synced";

/// Annotations of a Kubernetes object that stay out of its Tessera record.
const KUBERNETES_ONLY_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// A custom resource mirrored into the datastore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mirrored {
    /// Tessera's kind.
    pub kind: Kind,
    /// API group of the CustomResourceDefinition.
    pub group: &'static str,
    /// Its version.
    pub version: &'static str,
    /// Its plural name.
    pub plural: &'static str,
}

/// Every mirrored resource. Each is watched on its own: a SpiderIPPool that comes before its
/// SpiderSubnet (a restart) and is refused for it is applied again at the next pass.
pub const MIRRORED: [Mirrored; 5] = [
    Mirrored::spiderpool(Kind::SpiderSubnet, "spidersubnets"),
    Mirrored::spiderpool(Kind::SpiderIPPool, "spiderippools"),
    Mirrored::spiderpool(Kind::SpiderReservedIP, "spiderreservedips"),
    Mirrored::calico(Kind::IPPool, "ippools"),
    Mirrored::calico(Kind::IPReservation, "ipreservations"),
];

impl Mirrored {
    const fn spiderpool(kind: Kind, plural: &'static str) -> Self {
        Self {
            kind,
            group: "spiderpool.spidernet.io",
            version: "v2beta1",
            plural,
        }
    }

    const fn calico(kind: Kind, plural: &'static str) -> Self {
        Self {
            kind,
            group: "crd.projectcalico.org",
            version: "v1",
            plural,
        }
    }

    /// The resource for kube's dynamic API.
    pub fn api_resource(&self) -> ApiResource {
        let gvk = GroupVersionKind::gvk(self.group, self.version, self.kind.as_str());
        ApiResource::from_gvk_with_plural(&gvk, self.plural)
    }

    /// Whether Spiderpool writes address counts in the status of this kind.
    pub fn has_counts(&self) -> bool {
        matches!(self.kind, Kind::SpiderIPPool | Kind::SpiderSubnet)
    }
}

/// The Tessera manifest of a Kubernetes object: its apiVersion, kind, name, labels,
/// annotations (without kubectl's copy of the last applied object, with the marker of a record
/// managed in Kubernetes) and spec. Kubernetes' own metadata and the status stay behind.
pub fn to_manifest(mirrored: &Mirrored, object: &DynamicObject) -> Value {
    let meta = &object.metadata;
    let mut annotations: BTreeMap<String, String> = meta
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| !KUBERNETES_ONLY_ANNOTATIONS.contains(&key.as_str()))
        .collect();
    annotations.insert(
        MANAGED_BY_ANNOTATION.to_string(),
        MANAGED_BY_KUBERNETES.to_string(),
    );
    let mut metadata = json!({
        "name": meta.name.clone().unwrap_or_default(),
        "annotations": annotations,
    });
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = json!(labels);
    }
    let mut manifest = json!({
        "apiVersion": format!("{}/{}", mirrored.group, mirrored.version),
        "kind": mirrored.kind.as_str(),
        "metadata": metadata,
    });
    if let Some(spec) = object.data.get("spec") {
        manifest["spec"] = spec.clone();
    }
    manifest
}

/// What the last look at an object found, as its condition says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The object is in the datastore as applied.
    Synced,
    /// The object was refused; the datastore keeps what it had (the message is what
    /// `tessera apply` prints).
    Rejected(String),
    /// A pool of the same name was made with `tessera`, and is left alone.
    ManagedWithTessera(String),
    /// The object is being deleted but its record cannot go yet (addresses still held).
    DeleteRefused(String),
}

impl Finding {
    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Finding::Synced => "Synced",
            Finding::Rejected(_) => "Rejected",
            Finding::ManagedWithTessera(_) => "ManagedWithTessera",
            Finding::DeleteRefused(_) => "DeleteRefused",
        }
    }

    /// The condition's message.
    pub fn message(&self) -> String {
        match self {
            Finding::Synced => "the datastore holds this object as applied".to_string(),
            Finding::Rejected(m) | Finding::ManagedWithTessera(m) => {
                format!("not applied to the datastore: {m}")
            }
            Finding::DeleteRefused(m) => format!("not deleted from the datastore yet: {m}"),
        }
    }

    /// Whether this is a problem worth an Event.
    pub fn is_problem(&self) -> bool {
        *self != Finding::Synced
    }
}

/// The status to write: the object's current one with the condition of `finding` (its
/// `lastTransitionTime` kept while the condition stays the same) and, when given,
/// Spiderpool's counts (`allocatedIPCount`, `totalIPCount`, saturated at int64).
pub fn desired_status(
    current: Option<&Value>,
    finding: &Finding,
    counts: Option<(u128, u128)>,
    now: &str,
) -> Value {
    let mut status: Map<String, Value> = current
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let status_word = if finding.is_problem() {
        "False"
    } else {
        "True"
    };
    let (reason, message) = (finding.reason(), finding.message());
    let previous = current_condition(current);
    let unchanged = previous.is_some_and(|c| {
        c["status"] == status_word && c["reason"] == reason && c["message"] == message.as_str()
    });
    let since = match previous {
        Some(c) if unchanged => c["lastTransitionTime"].clone(),
        _ => Value::from(now),
    };
    let condition = json!({
        "type": CONDITION_TYPE,
        "status": status_word,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .filter(|c| c["type"] != CONDITION_TYPE)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.push(condition);
    status.insert("conditions".into(), Value::from(conditions));
    if let Some((allocated, total)) = counts {
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        status.insert("allocatedIPCount".into(), clamp(allocated).into());
        status.insert("totalIPCount".into(), clamp(total).into());
    }
    Value::Object(status)
}

/// The controller's condition in a status, if any.
pub fn current_condition(status: Option<&Value>) -> Option<&Value> {
    status?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == CONDITION_TYPE)
}

/// Whether `finding` is new for the object (its condition says something else), so that an
/// Event is recorded once per change, not at every pass.
pub fn is_news(status: Option<&Value>, finding: &Finding) -> bool {
    current_condition(status).is_none_or(|c| {
        c["reason"] != finding.reason() || c["message"] != finding.message().as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(data: Value) -> DynamicObject {
        serde_json::from_value(data).unwrap()
    }

    #[test]
    fn a_manifest_keeps_name_labels_annotations_and_spec_and_marks_the_record() {
        let pool = object(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {
                "name": "p", "uid": "u", "resourceVersion": "7", "generation": 2,
                "finalizers": [FINALIZER],
                "labels": {"rack": "a"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "note": "x",
                },
            },
            "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10"]},
            "status": {"allocatedIPCount": 3},
        }));
        let manifest = to_manifest(&MIRRORED[1], &pool);
        assert_eq!(
            manifest,
            json!({
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderIPPool",
                "metadata": {
                    "name": "p",
                    "labels": {"rack": "a"},
                    "annotations": {"note": "x", MANAGED_BY_ANNOTATION: MANAGED_BY_KUBERNETES},
                },
                "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10"]},
            })
        );
    }

    #[test]
    fn a_calico_pool_keeps_its_crd_api_version() {
        let pool = object(json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.9.0.0/16"},
        }));
        let manifest = to_manifest(&MIRRORED[3], &pool);
        assert_eq!(manifest["apiVersion"], "crd.projectcalico.org/v1");
        assert_eq!(manifest["kind"], "IPPool");
    }

    #[test]
    fn the_status_keeps_other_fields_and_the_transition_time_of_an_unchanged_condition() {
        let first = desired_status(
            Some(&json!({"other": 1})),
            &Finding::Synced,
            Some((2, 11)),
            "t1",
        );
        assert_eq!(first["other"], 1);
        assert_eq!(first["allocatedIPCount"], 2);
        assert_eq!(first["totalIPCount"], 11);
        assert_eq!(first["conditions"][0]["status"], "True");
        let again = desired_status(Some(&first), &Finding::Synced, Some((3, 11)), "t2");
        assert_eq!(again["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(again["allocatedIPCount"], 3);
        let rejected = Finding::Rejected("bad".into());
        assert!(is_news(Some(&again), &rejected));
        let failed = desired_status(Some(&again), &rejected, None, "t3");
        assert_eq!(failed["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(failed["conditions"][0]["status"], "False");
        assert_eq!(failed["conditions"][0]["reason"], "Rejected");
        assert_eq!(failed["conditions"][0]["lastTransitionTime"], "t3");
        assert!(!is_news(Some(&failed), &rejected));
    }

    #[test]
    fn counts_beyond_int64_saturate() {
        let status = desired_status(None, &Finding::Synced, Some((0, u128::MAX)), "t");
        assert_eq!(status["totalIPCount"], i64::MAX);
    }
}
