//! The controller's datastore operations against the memory, SQLite and etcd stores.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use tessera_controller::datastore::{Datastore, Error, NodeCleanup};
use tessera_controller::mirror::{KUBE_ANNOTATIONS_ANNOTATION, KUBE_LABELS_ANNOTATION};
use tessera_core::catalog::{Catalog, CatalogError};
use tessera_core::decode::decode_document;
use tessera_core::ipam::{AssignRequest, Attributes, HandleRecord, Ipam};
use tessera_core::keys;
use tessera_core::resources::Kind;
use tessera_core::store::{MemoryStore, Op, Store};
use tessera_store::local_etcd::LocalEtcd;

/// A datastore over one backend. Fields drop in order: the store before what holds its data.
struct Fixture {
    store: Arc<dyn Store>,
    datastore: Datastore,
    _dir: Option<tempfile::TempDir>,
    _etcd: Option<LocalEtcd>,
}

impl Fixture {
    fn memory() -> Self {
        Self::over(Arc::new(MemoryStore::new()))
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("tessera.db").display());
        let store: Arc<dyn Store> = tessera_store::open(&url).unwrap().into();
        Self {
            _dir: Some(dir),
            ..Self::over(store)
        }
    }

    /// `None` (after saying why) when no etcd is installed, outside CI.
    fn etcd(test: &str) -> Option<Self> {
        let etcd = LocalEtcd::start_or_skip(test)?;
        let store: Arc<dyn Store> = Arc::new(etcd.store());
        Some(Self {
            _etcd: Some(etcd),
            ..Self::over(store)
        })
    }

    fn over(store: Arc<dyn Store>) -> Self {
        Self {
            datastore: Datastore::new(store.clone()),
            store,
            _dir: None,
            _etcd: None,
        }
    }

    fn catalog(&self) -> Catalog<'_, dyn Store> {
        Catalog::new(self.store.as_ref())
    }

    fn ipam(&self) -> Ipam<&dyn Store> {
        Ipam::new(self.store.as_ref())
    }

    fn apply(&self, manifest: serde_json::Value) {
        let resource = decode_document(manifest).unwrap();
        self.catalog().apply(&[resource]).unwrap();
    }

    fn rack_pool(&self, name: &str, cidr: &str, rack: &str) {
        self.apply(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": 29, "nodeSelector": format!("rack == '{rack}'")}
        }));
    }

    /// Pool `rack-1` (10.1.1.0/24) for rack r1, and node `worker-1` synced into it.
    fn worker_in_rack_1(&self) {
        self.rack_pool("rack-1", "10.1.1.0/24", "r1");
        self.datastore
            .sync_node("worker-1", &map(&[("rack", "r1")]))
            .unwrap();
    }

    fn label_by_hand(&self, node: &str, key: &str, value: &str) {
        let label = [(key.to_string(), value.to_string())];
        self.catalog()
            .label(Kind::Node, node, &label, &[], false)
            .unwrap();
    }

    fn labels_of(&self, kind: Kind, name: &str) -> BTreeMap<String, String> {
        self.catalog()
            .get(kind, name)
            .unwrap()
            .metadata()
            .labels
            .clone()
    }

    fn annotations_of(&self, kind: Kind, name: &str) -> BTreeMap<String, String> {
        self.catalog()
            .get(kind, name)
            .unwrap()
            .metadata()
            .annotations
            .clone()
    }

    fn assign(&self, handle: &str, node: &str, attrs: Attributes) -> IpAddr {
        let req = AssignRequest {
            handle: handle.into(),
            node: node.into(),
            attrs,
            num_v4: 1,
            ..Default::default()
        };
        self.ipam().assign(&req).unwrap().addresses[0].ip
    }

    fn handle(&self, id: &str) -> Option<HandleRecord> {
        let kv = self.store.get(&keys::handle(id)).unwrap()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }
}

fn each_backend(test: impl Fn(Fixture)) {
    test(Fixture::memory());
    test(Fixture::sqlite());
    if let Some(etcd) = Fixture::etcd("controller datastore operations on etcd") {
        test(etcd);
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, uid: &str, node: &str) -> Attributes {
    Attributes {
        namespace: Some("default".into()),
        pod: Some(name.into()),
        pod_uid: Some(uid.into()),
        node: Some(node.into()),
        interface: Some("eth0".into()),
        container_id: Some(format!("cid-{uid}")),
        gateway_of: None,
        statefulset: None,
    }
}

#[test]
fn node_labels_set_by_hand_survive_syncs() {
    each_backend(|f| {
        let ds = &f.datastore;
        assert!(ds.sync_node("worker-1", &map(&[("rack", "r1")])).unwrap());
        f.label_by_hand("worker-1", "tier", "gold");
        assert!(ds.sync_node("worker-1", &map(&[("rack", "r2")])).unwrap());
        assert_eq!(
            f.labels_of(Kind::Node, "worker-1"),
            map(&[("rack", "r2"), ("tier", "gold")])
        );
        assert!(!ds.sync_node("worker-1", &map(&[("rack", "r2")])).unwrap());
    });
}

#[test]
fn a_label_removed_in_kubernetes_is_removed_from_the_record() {
    each_backend(|f| {
        let ds = &f.datastore;
        ds.sync_node("worker-1", &map(&[("rack", "r1"), ("zone", "a")]))
            .unwrap();
        f.label_by_hand("worker-1", "tier", "gold");
        assert!(ds.sync_node("worker-1", &map(&[("rack", "r1")])).unwrap());
        assert_eq!(
            f.labels_of(Kind::Node, "worker-1"),
            map(&[("rack", "r1"), ("tier", "gold")])
        );
        assert_eq!(
            f.annotations_of(Kind::Node, "worker-1")[KUBE_LABELS_ANNOTATION],
            r#"{"rack":"r1"}"#
        );
    });
}

#[test]
fn a_node_relabelled_in_kubernetes_allocates_from_its_new_racks_pool() {
    each_backend(|f| {
        f.rack_pool("rack-1", "10.1.1.0/24", "r1");
        f.rack_pool("rack-2", "10.1.2.0/24", "r2");
        f.datastore
            .sync_node("worker-1", &map(&[("rack", "r1")]))
            .unwrap();
        let first = f.assign("net:c1:eth0", "worker-1", pod("a", "u1", "worker-1"));
        assert!(first.to_string().starts_with("10.1.1."), "{first}");
        f.datastore
            .sync_node("worker-1", &map(&[("rack", "r2")]))
            .unwrap();
        let second = f.assign("net:c2:eth0", "worker-1", pod("b", "u2", "worker-1"));
        assert!(second.to_string().starts_with("10.1.2."), "{second}");
    });
}

#[test]
fn namespace_labels_and_pool_annotations_are_mirrored_and_hand_ones_survive() {
    each_backend(|f| {
        let ds = &f.datastore;
        let annotations = map(&[
            ("cni.projectcalico.org/ipv4pools", r#"["blue"]"#),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ]);
        assert!(ds
            .sync_namespace("web", &map(&[("team", "a")]), &annotations)
            .unwrap());
        f.catalog()
            .annotate(
                Kind::Namespace,
                "web",
                &[(
                    "cni.projectcalico.org/ipv6pools".into(),
                    r#"["blue6"]"#.into(),
                )],
                &[],
                false,
            )
            .unwrap();
        assert!(ds
            .sync_namespace("web", &map(&[("team", "a")]), &BTreeMap::new())
            .unwrap());
        let stored = f.annotations_of(Kind::Namespace, "web");
        assert!(!stored.contains_key("cni.projectcalico.org/ipv4pools"));
        assert!(!stored.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(stored["cni.projectcalico.org/ipv6pools"], r#"["blue6"]"#);
        assert_eq!(stored[KUBE_ANNOTATIONS_ANNOTATION], "[]");
        assert_eq!(f.labels_of(Kind::Namespace, "web"), map(&[("team", "a")]));
        assert_eq!(ds.mirrored_namespaces().unwrap(), ["web"]);
    });
}

#[test]
fn a_malformed_pool_annotation_from_kubernetes_is_refused_and_nothing_is_written() {
    each_backend(|f| {
        let bad = map(&[("cni.projectcalico.org/ipv4pools", "blue")]);
        let err = f
            .datastore
            .sync_namespace("web", &BTreeMap::new(), &bad)
            .unwrap_err();
        assert_eq!(err.metric_label(), "invalid_record");
        assert!(!err.is_transient());
        assert!(
            err.to_string()
                .contains("metadata.annotations.cni.projectcalico.org/ipv4pools"),
            "{err}"
        );
        assert!(f.store.get(&keys::namespace("web")).unwrap().is_none());
    });
}

#[test]
fn a_deleted_namespace_loses_its_record() {
    each_backend(|f| {
        let ds = &f.datastore;
        ds.sync_namespace("web", &BTreeMap::new(), &BTreeMap::new())
            .unwrap();
        assert!(ds.delete_namespace("web").unwrap());
        assert!(!ds.delete_namespace("web").unwrap());
        assert!(matches!(
            f.catalog().get(Kind::Namespace, "web"),
            Err(CatalogError::NotFound { .. })
        ));
    });
}

#[test]
fn mirrored_nodes_are_only_those_the_controller_wrote() {
    each_backend(|f| {
        f.datastore
            .sync_node("worker-1", &map(&[("rack", "r1")]))
            .unwrap();
        f.label_by_hand("by-hand", "rack", "r1");
        assert_eq!(f.datastore.mirrored_nodes().unwrap(), ["worker-1"]);
    });
}

#[test]
fn pod_handles_leave_out_handles_made_by_hand_and_gateways() {
    each_backend(|f| {
        f.worker_in_rack_1();
        f.assign("net:c1:eth0", "worker-1", pod("a", "u1", "worker-1"));
        f.assign("by-hand", "worker-1", Attributes::default());
        let gateway = Attributes {
            gateway_of: Some("net".into()),
            ..pod("a", "u1", "worker-1")
        };
        f.assign("net:gateway", "worker-1", gateway);
        let handles = f.datastore.pod_handles().unwrap();
        let ids: Vec<&str> = handles.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["net:c1:eth0"]);
    });
}

#[test]
fn forget_node_releases_pod_handles_but_not_hand_made_ones() {
    each_backend(|f| {
        f.rack_pool("rack-1", "10.1.1.0/24", "r1");
        let ds = &f.datastore;
        for node in ["worker-1", "worker-2"] {
            ds.sync_node(node, &map(&[("rack", "r1")])).unwrap();
        }
        f.assign("net:c1:eth0", "worker-1", pod("a", "u1", "worker-1"));
        f.assign("net:c2:eth0", "worker-1", pod("b", "u2", "worker-1"));
        let kept = f.assign("by-hand", "worker-1", Attributes::default());
        f.assign("net:c3:eth0", "worker-2", pod("c", "u3", "worker-2"));

        let cleanup = ds.forget_node("worker-1").unwrap();
        assert_eq!(
            cleanup,
            NodeCleanup {
                handles: 2,
                addresses: 2,
                blocks: 1,
                record_deleted: true,
            }
        );
        assert!(f.handle("net:c1:eth0").is_none());
        assert!(f.handle("net:c2:eth0").is_none());
        assert!(f.handle("net:c3:eth0").is_some());
        let info = f.ipam().lookup(kept).unwrap().unwrap();
        assert_eq!(info.allocation.unwrap().handle, "by-hand");
        // The block still holding the hand-made address stays, without affinity.
        assert_eq!(info.block.affinity, None);
        assert_eq!(ds.mirrored_nodes().unwrap(), ["worker-2"]);
    });
}

#[test]
fn forget_node_frees_empty_blocks_and_is_idempotent() {
    each_backend(|f| {
        f.worker_in_rack_1();
        let ds = &f.datastore;
        f.label_by_hand("worker-1", "tier", "gold");
        f.assign("net:c1:eth0", "worker-1", pod("a", "u1", "worker-1"));

        let cleanup = ds.forget_node("worker-1").unwrap();
        assert_eq!((cleanup.handles, cleanup.blocks), (1, 1));
        let blocks = f.store.range(&keys::blocks_of("worker-1")).unwrap();
        assert!(blocks.is_empty(), "{blocks:?}");
        assert_eq!(ds.forget_node("worker-1").unwrap(), NodeCleanup::default());

        // It comes back: a clean record, with only what Kubernetes says.
        ds.sync_node("worker-1", &map(&[("rack", "r1")])).unwrap();
        assert_eq!(f.labels_of(Kind::Node, "worker-1"), map(&[("rack", "r1")]));
    });
}

#[test]
fn release_is_refused_when_the_handle_changed_since_it_was_judged() {
    each_backend(|f| {
        f.worker_in_rack_1();
        let ip = f.assign("net:c1:eth0", "worker-1", pod("web-0", "u1", "worker-1"));
        let judged = f.datastore.pod_handles().unwrap().remove(0);
        // The handle is written again for another pod between judging and releasing.
        f.assign("net:c1:eth0", "worker-1", pod("web-0", "u2", "worker-1"));

        assert!(f
            .datastore
            .release_if_unchanged(&judged)
            .unwrap()
            .is_empty());
        let info = f.ipam().lookup(ip).unwrap().unwrap();
        assert_eq!(
            info.allocation.unwrap().attrs.pod_uid.as_deref(),
            Some("u2")
        );

        let current = f.handle("net:c1:eth0").unwrap();
        let released = f.datastore.release_if_unchanged(&current).unwrap();
        assert_eq!(released.len(), 2);
        assert!(f.handle("net:c1:eth0").is_none());
        // Gone already: nothing more to release, no error.
        assert!(f
            .datastore
            .release_if_unchanged(&current)
            .unwrap()
            .is_empty());
    });
}

#[test]
fn usage_and_ping_answer() {
    each_backend(|f| {
        f.datastore.ping().unwrap();
        f.worker_in_rack_1();
        f.assign("net:c1:eth0", "worker-1", pod("a", "u1", "worker-1"));
        let usage = f.datastore.usage().unwrap();
        let pool = usage.pools.iter().find(|p| p.name == "rack-1").unwrap();
        assert_eq!((pool.total, pool.in_use, pool.blocks.len()), (256, 1, 1));
    });
}

#[test]
fn errors_name_their_metric_label() {
    let err = Error::from(CatalogError::Conflict { attempts: 3 });
    assert_eq!(err.metric_label(), "conflict");
    assert!(err.is_transient());
}

#[test]
fn a_record_of_another_kind_under_a_nodes_key_is_refused_without_a_panic() {
    each_backend(|f| {
        let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": "worker-1"}, "spec": {"cidr": "10.9.0.0/24"}});
        let op = Op::Put(keys::node("worker-1"), serde_json::to_vec(&pool).unwrap());
        f.store.txn(&[], &[op]).unwrap();
        let err = f
            .datastore
            .sync_node("worker-1", &map(&[("rack", "r1")]))
            .unwrap_err();
        assert_eq!(err.metric_label(), "invalid_record");
        assert!(
            err.to_string().contains("`tessera delete node worker-1`"),
            "{err}"
        );
    });
}
