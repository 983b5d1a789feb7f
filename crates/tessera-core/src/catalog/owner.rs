//! One source of truth per pool or reservation: Kubernetes or `tessera`.
//!
//! tessera-controller carries the pools and reservations users apply with kubectl into the
//! datastore and marks each record with [`MANAGED_BY_ANNOTATION`]. A marked record changes
//! only through its Kubernetes object: every other writer (`tessera apply`, `patch`, `label`,
//! `delete`...) is refused, with no override, since the controller would undo the change on
//! its next pass. The other way round, the controller never overwrites or deletes a record
//! that has no marker: it was made with `tessera`, and the Kubernetes object of that name is
//! refused instead.

use serde_json::Value;

use super::{plural, CatalogError};
use crate::resources::{Kind, Resource};
use crate::store::KeyValue;

/// The annotation tessera-controller puts on the records it mirrors from Kubernetes objects.
pub const MANAGED_BY_ANNOTATION: &str = "tessera.dev/managed-by";

/// The value of [`MANAGED_BY_ANNOTATION`] on records mirrored from Kubernetes.
pub const MANAGED_BY_KUBERNETES: &str = "kubernetes";

/// The kinds that can be managed in Kubernetes (those with a CustomResourceDefinition).
pub const KUBERNETES_KINDS: [Kind; 5] = [
    Kind::SpiderSubnet,
    Kind::SpiderIPPool,
    Kind::SpiderReservedIP,
    Kind::IPPool,
    Kind::IPReservation,
];

/// Who writes through a catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Writer {
    /// `tessera` and the other commands: records managed in Kubernetes are off limits.
    #[default]
    Tessera,
    /// tessera-controller's mirror of Kubernetes objects: only records it marked are its own.
    KubernetesMirror,
}

/// Whether a resource carries the marker of a record mirrored from Kubernetes.
pub fn is_managed_by_kubernetes(resource: &Resource) -> bool {
    resource
        .metadata()
        .annotations
        .get(MANAGED_BY_ANNOTATION)
        .is_some_and(|v| v == MANAGED_BY_KUBERNETES)
}

/// Whether a stored record carries the marker. Read loosely, so that a record that no longer
/// decodes is still judged by its marker.
fn stored_is_managed(kv: &KeyValue) -> bool {
    serde_json::from_slice::<Value>(&kv.value)
        .ok()
        .and_then(|doc| {
            doc.pointer("/metadata/annotations")
                .and_then(|a| a.get(MANAGED_BY_ANNOTATION))
                .map(|v| v == MANAGED_BY_KUBERNETES)
        })
        .unwrap_or(false)
}

/// Why `writer` may not put `new` (`None`: delete) over `stored` (`None`: absent).
pub(super) fn refusal(
    writer: Writer,
    kind: Kind,
    name: &str,
    new: Option<&Resource>,
    stored: Option<&KeyValue>,
) -> Option<CatalogError> {
    if !KUBERNETES_KINDS.contains(&kind) {
        return None;
    }
    let stored_managed = stored.map(stored_is_managed);
    let reason = match writer {
        Writer::Tessera if stored_managed == Some(true) => {
            let object = format!("{} {name}", plural(kind));
            format!(
                "is managed in Kubernetes (applied with kubectl; annotation {MANAGED_BY_ANNOTATION}\
                 ={MANAGED_BY_KUBERNETES}) and tessera-controller keeps this record in step with \
                 it; change it with `kubectl edit {object}` or `kubectl apply -f FILE`, delete it \
                 with `kubectl delete {object}`"
            )
        }
        Writer::Tessera if new.is_some_and(is_managed_by_kubernetes) => format!(
            "the annotation {MANAGED_BY_ANNOTATION}={MANAGED_BY_KUBERNETES} is set only by \
             tessera-controller on objects applied with kubectl; remove it from the manifest, or \
             apply the object with kubectl"
        ),
        Writer::KubernetesMirror if stored_managed == Some(false) => format!(
            "a {kind} of this name was created with `tessera` and tessera-controller does not \
             overwrite or delete it; delete it with `tessera delete {} {name}` to let the \
             Kubernetes object take its place, or give the Kubernetes object another name",
            kind.as_str().to_ascii_lowercase()
        ),
        _ => return None,
    };
    Some(CatalogError::ManagedElsewhere {
        kind,
        name: name.to_string(),
        reason,
    })
}
