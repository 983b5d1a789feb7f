//! One source of truth per pool: records mirrored from Kubernetes objects change only through
//! tessera-controller's mirror catalog, and the mirror never touches a record made with
//! `tessera`. Every refusal writes nothing.

use serde_json::{json, Value};
use tessera_core::catalog::{
    Action, Catalog, CatalogError, MANAGED_BY_ANNOTATION, MANAGED_BY_KUBERNETES,
};
use tessera_core::decode::decode_document;
use tessera_core::resources::spider::SPIDER_API_VERSION;
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::{MemoryStore, Store};

fn spider_pool(name: &str, ips: &str, annotations: Value) -> Resource {
    decode_document(json!({
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"subnet": "10.6.0.0/16", "ips": [ips]},
    }))
    .unwrap()
}

fn mirrored(name: &str, ips: &str) -> Resource {
    spider_pool(
        name,
        ips,
        json!({MANAGED_BY_ANNOTATION: MANAGED_BY_KUBERNETES}),
    )
}

fn everything(store: &MemoryStore) -> Vec<(String, Vec<u8>)> {
    store
        .range("")
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

fn assert_managed_elsewhere(result: Result<impl std::fmt::Debug, CatalogError>, says: &str) {
    match result {
        Err(CatalogError::ManagedElsewhere { reason, .. }) => {
            assert!(reason.contains(says), "{reason:?} does not say {says:?}")
        }
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

#[test]
fn tessera_commands_refuse_a_pool_managed_in_kubernetes_and_name_kubectl() {
    let store = MemoryStore::new();
    Catalog::new(&store)
        .as_kubernetes_mirror()
        .apply(&[mirrored("k8s-pool", "10.6.0.10-10.6.0.20")])
        .unwrap();
    let before = everything(&store);
    let catalog = Catalog::new(&store);
    let kubectl = "kubectl edit spiderippools k8s-pool";
    let plain = spider_pool("k8s-pool", "10.6.0.10-10.6.0.30", json!({}));
    assert_managed_elsewhere(catalog.apply(std::slice::from_ref(&plain)), kubectl);
    assert_managed_elsewhere(catalog.replace(&[plain]), kubectl);
    assert_managed_elsewhere(
        catalog.patch(
            Kind::SpiderIPPool,
            "k8s-pool",
            &json!({"spec": {"disable": true}}),
        ),
        kubectl,
    );
    let label = [("rack".to_string(), "a".to_string())];
    assert_managed_elsewhere(
        catalog.label(Kind::SpiderIPPool, "k8s-pool", &label, &[], false),
        kubectl,
    );
    assert_managed_elsewhere(
        catalog.annotate(
            Kind::SpiderIPPool,
            "k8s-pool",
            &[],
            &[MANAGED_BY_ANNOTATION.to_string()],
            false,
        ),
        kubectl,
    );
    assert_managed_elsewhere(
        catalog.delete(&[(Kind::SpiderIPPool, "k8s-pool".to_string())], false),
        "kubectl delete spiderippools k8s-pool",
    );
    assert_eq!(everything(&store), before, "a refusal wrote something");
}

#[test]
fn tessera_cannot_create_a_pool_that_claims_to_be_managed_in_kubernetes() {
    let store = MemoryStore::new();
    assert_managed_elsewhere(
        Catalog::new(&store).apply(&[mirrored("forged", "10.6.0.10")]),
        "set only by tessera-controller",
    );
    assert!(everything(&store).is_empty());
}

#[test]
fn the_mirror_never_overwrites_or_deletes_a_pool_made_with_tessera() {
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[spider_pool("cli-pool", "10.6.0.10", json!({}))])
        .unwrap();
    let before = everything(&store);
    let mirror = Catalog::new(&store).as_kubernetes_mirror();
    let says = "tessera delete spiderippool cli-pool";
    assert_managed_elsewhere(mirror.apply(&[mirrored("cli-pool", "10.6.0.11")]), says);
    assert_managed_elsewhere(
        mirror.delete(&[(Kind::SpiderIPPool, "cli-pool".to_string())], false),
        says,
    );
    assert_eq!(
        everything(&store),
        before,
        "the mirror wrote over a tessera pool"
    );
}

#[test]
fn the_mirror_changes_and_deletes_its_own_pools() {
    let store = MemoryStore::new();
    let mirror = Catalog::new(&store).as_kubernetes_mirror();
    mirror.apply(&[mirrored("k8s-pool", "10.6.0.10")]).unwrap();
    let changed = mirror.apply(&[mirrored("k8s-pool", "10.6.0.11")]).unwrap();
    assert_eq!(changed[0].action, Action::Configured);
    let deleted = mirror
        .delete(&[(Kind::SpiderIPPool, "k8s-pool".to_string())], false)
        .unwrap();
    assert_eq!(deleted[0].action, Action::Deleted);
}
