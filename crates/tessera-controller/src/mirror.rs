//! How Kubernetes' node labels and namespace labels and annotations are copied into Tessera's
//! records, without I/O.
//!
//! Kubernetes owns what it sets; an admin may still set other keys with `tessera label` and
//! `tessera annotate`. The record remembers which keys came from Kubernetes (as Calico's
//! `projectcalico.org/kube-labels` does), so a sync adds, changes and removes only those and
//! leaves the admin's keys alone. A key that Kubernetes starts to set wins over an admin's
//! value and becomes Kubernetes' from then on.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::ipam::{IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION};
use tessera_core::resources::kube::{Namespace, Node};
use tessera_core::resources::meta::ObjectMeta;

/// Annotation on a mirrored Node or Namespace record: the JSON object of the labels copied
/// from Kubernetes at the last sync. Its keys are the labels Kubernetes owns.
pub const KUBE_LABELS_ANNOTATION: &str = "tessera.dev/kube-labels";

/// Annotation on a mirrored Namespace record: the JSON list of the annotation keys copied
/// from Kubernetes at the last sync.
pub const KUBE_ANNOTATIONS_ANNOTATION: &str = "tessera.dev/kube-annotations";

/// The namespace annotations allocation reads, and so the only ones copied from Kubernetes.
pub const MIRRORED_NAMESPACE_ANNOTATIONS: [&str; 4] = [
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    "ipam.spidernet.io/default-ipv4-ippool",
    "ipam.spidernet.io/default-ipv6-ippool",
];

/// The Node record that mirrors Kubernetes' `kube_labels` over `stored` (the record as
/// read; `None` when there is none), or `None` when `stored` already does.
pub fn mirror_node(
    stored: Option<&Node>,
    kube_labels: &BTreeMap<String, String>,
    name: &str,
) -> Option<Node> {
    let mut node = stored.cloned().unwrap_or_default();
    node.metadata.name = name.to_string();
    mirror_labels(&mut node.metadata, kube_labels);
    changed(stored.map(|n| &n.metadata), &node.metadata).then_some(node)
}

/// The Namespace record that mirrors Kubernetes' labels and the annotations of
/// [`MIRRORED_NAMESPACE_ANNOTATIONS`] over `stored`, or `None` when `stored` already does.
/// Other Kubernetes annotations are not copied.
pub fn mirror_namespace(
    stored: Option<&Namespace>,
    kube_labels: &BTreeMap<String, String>,
    kube_annotations: &BTreeMap<String, String>,
    name: &str,
) -> Option<Namespace> {
    let mut namespace = stored.cloned().unwrap_or_default();
    namespace.metadata.name = name.to_string();
    mirror_labels(&mut namespace.metadata, kube_labels);
    mirror_annotations(&mut namespace.metadata, kube_annotations);
    changed(stored.map(|n| &n.metadata), &namespace.metadata).then_some(namespace)
}

/// Whether the record was written by the controller (it carries
/// [`KUBE_LABELS_ANNOTATION`]), as opposed to one only an admin wrote.
pub fn is_mirrored(meta: &ObjectMeta) -> bool {
    meta.annotations.contains_key(KUBE_LABELS_ANNOTATION)
}

/// What is wrong with the record's ownership annotations, if one of them was edited into
/// something unreadable. A sync then treats no key of that map as Kubernetes' (the admin's
/// keys are never removed on a guess); the caller logs this so the admin can look.
pub fn ownership_problem(meta: &ObjectMeta) -> Option<String> {
    [KUBE_LABELS_ANNOTATION, KUBE_ANNOTATIONS_ANNOTATION]
        .into_iter()
        .find_map(|key| {
            let value = meta.annotations.get(key)?;
            parse_owned_keys(value).is_none().then(|| {
                format!(
                    "{:?}: annotation {key} is {value:?}, which is not a JSON object or list of \
                     keys; no key is treated as copied from Kubernetes until the next sync \
                     rewrites it (keys Kubernetes no longer sets stay until removed by hand)",
                    meta.name
                )
            })
        })
}

/// Copies `kube` into `meta.labels`, removing the labels Kubernetes owned and no longer sets.
fn mirror_labels(meta: &mut ObjectMeta, kube: &BTreeMap<String, String>) {
    let owned = owned_keys(meta, KUBE_LABELS_ANNOTATION);
    replace_owned(&mut meta.labels, &owned, kube);
    let record = serde_json::to_string(kube).expect("a map of strings serializes");
    meta.annotations
        .insert(KUBE_LABELS_ANNOTATION.to_string(), record);
}

/// Copies the mirrored annotations of `kube` into `meta.annotations`, removing those
/// Kubernetes owned and no longer sets.
fn mirror_annotations(meta: &mut ObjectMeta, kube: &BTreeMap<String, String>) {
    let owned = owned_keys(meta, KUBE_ANNOTATIONS_ANNOTATION);
    let copied: BTreeMap<String, String> = kube
        .iter()
        .filter(|(k, _)| MIRRORED_NAMESPACE_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Only the mirrored keys can be owned: an edited list naming others removes nothing else.
    let owned: BTreeSet<String> = owned
        .into_iter()
        .filter(|k| MIRRORED_NAMESPACE_ANNOTATIONS.contains(&k.as_str()))
        .collect();
    replace_owned(&mut meta.annotations, &owned, &copied);
    let keys: Vec<&String> = copied.keys().collect();
    let record = serde_json::to_string(&keys).expect("a list of strings serializes");
    meta.annotations
        .insert(KUBE_ANNOTATIONS_ANNOTATION.to_string(), record);
}

fn replace_owned(
    map: &mut BTreeMap<String, String>,
    owned: &BTreeSet<String>,
    kube: &BTreeMap<String, String>,
) {
    map.retain(|k, _| !owned.contains(k) || kube.contains_key(k));
    map.extend(kube.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// The keys the ownership annotation `which` names; none when it is absent or unreadable.
fn owned_keys(meta: &ObjectMeta, which: &str) -> BTreeSet<String> {
    meta.annotations
        .get(which)
        .and_then(|v| parse_owned_keys(v))
        .unwrap_or_default()
}

/// Reads an ownership annotation: a JSON object (its keys) or a JSON list of strings.
fn parse_owned_keys(value: &str) -> Option<BTreeSet<String>> {
    match serde_json::from_str::<serde_json::Value>(value).ok()? {
        serde_json::Value::Object(map) => Some(map.keys().cloned().collect()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// Whether `new` differs from `stored` in what a sync writes (labels and annotations; a
/// missing record always differs).
fn changed(stored: Option<&ObjectMeta>, new: &ObjectMeta) -> bool {
    stored.is_none_or(|old| old.labels != new.labels || old.annotations != new.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node_with(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: "worker-1".into(),
                labels: map(labels),
                annotations: map(annotations),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_new_node_gets_kubernetes_labels_and_the_record_of_them() {
        let kube = map(&[("rack", "r1"), ("kubernetes.io/hostname", "worker-1")]);
        let node = mirror_node(None, &kube, "worker-1").unwrap();
        assert_eq!(node.metadata.name, "worker-1");
        assert_eq!(node.metadata.labels, kube);
        assert_eq!(
            node.metadata.annotations[KUBE_LABELS_ANNOTATION],
            r#"{"kubernetes.io/hostname":"worker-1","rack":"r1"}"#
        );
        assert!(is_mirrored(&node.metadata));
    }

    #[test]
    fn a_node_without_kubernetes_labels_is_still_recorded_as_mirrored() {
        let node = mirror_node(None, &BTreeMap::new(), "worker-1").unwrap();
        assert!(node.metadata.labels.is_empty());
        assert!(is_mirrored(&node.metadata));
    }

    #[test]
    fn labels_set_by_hand_survive_a_sync() {
        let stored = node_with(
            &[("rack", "r1"), ("tier", "gold")],
            &[(KUBE_LABELS_ANNOTATION, r#"{"rack":"r1"}"#)],
        );
        let kube = map(&[("rack", "r2")]);
        let synced = mirror_node(Some(&stored), &kube, "worker-1").unwrap();
        assert_eq!(
            synced.metadata.labels,
            map(&[("rack", "r2"), ("tier", "gold")])
        );
    }

    #[test]
    fn a_label_kubernetes_drops_is_removed_and_a_hand_label_is_not() {
        let stored = node_with(
            &[("rack", "r1"), ("zone", "a"), ("tier", "gold")],
            &[(KUBE_LABELS_ANNOTATION, r#"{"rack":"r1","zone":"a"}"#)],
        );
        let synced = mirror_node(Some(&stored), &map(&[("rack", "r1")]), "worker-1").unwrap();
        assert_eq!(
            synced.metadata.labels,
            map(&[("rack", "r1"), ("tier", "gold")])
        );
        assert_eq!(
            owned_keys(&synced.metadata, KUBE_LABELS_ANNOTATION).len(),
            1
        );
    }

    #[test]
    fn kubernetes_wins_a_key_set_by_hand_and_owns_it_from_then_on() {
        let stored = node_with(&[("rack", "by-hand")], &[(KUBE_LABELS_ANNOTATION, "{}")]);
        let synced = mirror_node(Some(&stored), &map(&[("rack", "r3")]), "worker-1").unwrap();
        assert_eq!(synced.metadata.labels["rack"], "r3");
        // Kubernetes drops it later: it goes, since it is Kubernetes' now.
        let dropped = mirror_node(Some(&synced), &BTreeMap::new(), "worker-1").unwrap();
        assert!(dropped.metadata.labels.is_empty());
    }

    #[test]
    fn an_up_to_date_record_needs_no_write() {
        let kube = map(&[("rack", "r1")]);
        let first = mirror_node(None, &kube, "worker-1").unwrap();
        assert_eq!(mirror_node(Some(&first), &kube, "worker-1"), None);
    }

    #[test]
    fn a_record_written_only_by_hand_is_taken_over_without_losing_its_labels() {
        let stored = node_with(&[("tier", "gold")], &[]);
        assert!(!is_mirrored(&stored.metadata));
        let synced = mirror_node(Some(&stored), &map(&[("rack", "r1")]), "worker-1").unwrap();
        assert_eq!(
            synced.metadata.labels,
            map(&[("rack", "r1"), ("tier", "gold")])
        );
        assert!(is_mirrored(&synced.metadata));
    }

    #[test]
    fn a_malformed_ownership_record_owns_nothing_and_is_reported() {
        let stored = node_with(
            &[("rack", "r1"), ("tier", "gold")],
            &[(KUBE_LABELS_ANNOTATION, "rack,tier")],
        );
        assert!(ownership_problem(&stored.metadata)
            .unwrap()
            .contains(KUBE_LABELS_ANNOTATION));
        let synced = mirror_node(Some(&stored), &map(&[("zone", "a")]), "worker-1").unwrap();
        assert_eq!(
            synced.metadata.labels,
            map(&[("rack", "r1"), ("tier", "gold"), ("zone", "a")])
        );
        assert_eq!(ownership_problem(&synced.metadata), None);
    }

    #[test]
    fn namespace_labels_and_only_the_pool_annotations_are_mirrored() {
        let kube_annotations = map(&[
            (IPV4_POOLS_ANNOTATION, r#"["blue"]"#),
            ("ipam.spidernet.io/default-ipv4-ippool", r#"["nginx-v4"]"#),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ]);
        let ns = mirror_namespace(None, &map(&[("team", "a")]), &kube_annotations, "web").unwrap();
        let annotations = &ns.metadata.annotations;
        assert_eq!(annotations[IPV4_POOLS_ANNOTATION], r#"["blue"]"#);
        assert!(annotations.contains_key("ipam.spidernet.io/default-ipv4-ippool"));
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(
            annotations[KUBE_ANNOTATIONS_ANNOTATION],
            r#"["cni.projectcalico.org/ipv4pools","ipam.spidernet.io/default-ipv4-ippool"]"#
        );
        assert_eq!(ns.metadata.labels, map(&[("team", "a")]));
        assert!(is_mirrored(&ns.metadata));
    }

    #[test]
    fn namespace_annotations_set_by_hand_survive_and_dropped_ones_go() {
        let stored = Namespace {
            metadata: ObjectMeta {
                name: "web".into(),
                annotations: map(&[
                    (IPV4_POOLS_ANNOTATION, r#"["blue"]"#),
                    (IPV6_POOLS_ANNOTATION, r#"["blue6"]"#),
                    (KUBE_LABELS_ANNOTATION, "{}"),
                    (
                        KUBE_ANNOTATIONS_ANNOTATION,
                        r#"["cni.projectcalico.org/ipv4pools"]"#,
                    ),
                ]),
                ..Default::default()
            },
        };
        let synced =
            mirror_namespace(Some(&stored), &BTreeMap::new(), &BTreeMap::new(), "web").unwrap();
        let annotations = &synced.metadata.annotations;
        assert!(!annotations.contains_key(IPV4_POOLS_ANNOTATION));
        assert_eq!(annotations[IPV6_POOLS_ANNOTATION], r#"["blue6"]"#);
        assert_eq!(annotations[KUBE_ANNOTATIONS_ANNOTATION], "[]");
    }

    #[test]
    fn an_edited_annotation_list_cannot_remove_other_annotations() {
        let stored = Namespace {
            metadata: ObjectMeta {
                name: "web".into(),
                annotations: map(&[
                    ("note", "keep me"),
                    (KUBE_LABELS_ANNOTATION, "{}"),
                    (KUBE_ANNOTATIONS_ANNOTATION, r#"["note"]"#),
                ]),
                ..Default::default()
            },
        };
        let synced = mirror_namespace(Some(&stored), &BTreeMap::new(), &BTreeMap::new(), "web");
        let synced = synced.unwrap_or(stored);
        assert_eq!(synced.metadata.annotations["note"], "keep me");
    }
}
