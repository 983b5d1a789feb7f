// A StatefulSet pod created again under its name gets its addresses back.

mod common_fixtures;

use std::net::IpAddr;

use common_fixtures::*;
use serde_json::json;
use tessera_core::ipam::{misfit, AssignRequest, Attributes, Context, Ipam};
use tessera_core::keys;
use tessera_core::store::{CountingStore, MemoryStore, Store};

const HANDLE: &str = "net:db/web-0:eth0";

fn two_pools() -> Ipam<CountingStore<MemoryStore>> {
    let s = CountingStore::new(MemoryStore::new());
    pool(&s, "a", json!({"cidr": "10.0.0.0/24", "blockSize": 28}));
    pool(
        &s,
        "b",
        json!({"cidr": "10.1.0.0/24", "blockSize": 28, "assignmentMode": "Manual"}),
    );
    Ipam::new(s)
}

/// The ADD of pod db/web-0 of StatefulSet web, in container `cid` on `node`.
fn web0(cid: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: HANDLE.into(),
        node: node.into(),
        num_v4: 1,
        attrs: Attributes {
            namespace: Some("db".into()),
            pod: Some("web-0".into()),
            container_id: Some(cid.into()),
            interface: Some("eth0".into()),
            statefulset: Some("web".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn assigned<S: Store>(ipam: &Ipam<S>, req: &AssignRequest) -> IpAddr {
    let (done, _) = ipam.assign_new(req).unwrap().expect("a new assignment");
    assert_eq!(done.addresses.len(), 1);
    done.addresses[0].ip
}

fn holder<S: Store>(ipam: &Ipam<S>, ip: IpAddr) -> Option<String> {
    ipam.lookup(ip).unwrap()?.allocation.map(|a| a.handle)
}

#[test]
fn a_recreated_statefulset_pod_gets_its_address_back_on_another_node_in_one_read() {
    let ipam = two_pools();
    let first = assigned(&ipam, &web0("c1", "n1"));
    // Another pod on n1 meanwhile: the address would not come back by chance.
    assigned(&ipam, &v4("other", "n1"));
    ipam.store().reset();
    let again = assigned(&ipam, &web0("c2", "n2"));
    assert_eq!(again, first);
    assert_eq!(
        ipam.store().round_trips(),
        2,
        "one snapshot, one transaction"
    );
    let rec = ipam.handle(HANDLE).unwrap().unwrap();
    assert_eq!(rec.attrs.container_id.as_deref(), Some("c2"));
    assert_eq!(rec.attrs.node.as_deref(), Some("n2"));
    assert_eq!(holder(&ipam, first).as_deref(), Some(HANDLE));
    assert!(ipam.check().unwrap().problems.is_empty());
}

#[test]
fn a_retried_add_and_another_pods_handle_are_not_taken_over() {
    let ipam = two_pools();
    assigned(&ipam, &web0("c1", "n1"));
    // The same container again: a retried ADD, answered from the handle by the caller.
    assert!(ipam.assign_new(&web0("c1", "n1")).unwrap().is_none());
    // The same handle id asked for by a pod of another StatefulSet, or none.
    let mut stranger = web0("c9", "n1");
    stranger.attrs.statefulset = Some("other".into());
    assert!(ipam.assign_new(&stranger).unwrap().is_none());
    stranger.attrs.statefulset = None;
    assert!(ipam.assign_new(&stranger).unwrap().is_none());
    let rec = ipam.handle(HANDLE).unwrap().unwrap();
    assert_eq!(rec.attrs.container_id.as_deref(), Some("c1"));
}

#[test]
fn a_pool_annotation_without_the_held_address_wins() {
    let ipam = two_pools();
    let first = assigned(&ipam, &web0("c1", "n1"));
    let mut moved = web0("c2", "n2");
    moved.pools = vec!["b".into()];
    let (done, _) = ipam.assign_new(&moved).unwrap().unwrap();
    let again = done.addresses[0].ip;
    assert!(again.to_string().starts_with("10.1.0."), "{again}");
    let (released, why) = done.released_held.expect("the release is reported");
    assert_eq!(released, vec![first]);
    assert!(
        why.contains("in none of the pools the pod may use now (b)"),
        "{why}"
    );
    assert_eq!(holder(&ipam, first), None, "the old address is released");
    assert_eq!(holder(&ipam, again).as_deref(), Some(HANDLE));
    assert!(ipam.check().unwrap().problems.is_empty());
}

#[test]
fn turned_off_a_recreated_pod_gets_a_new_address() {
    let ipam = two_pools();
    let first = assigned(&ipam, &web0("c1", "n1"));
    put(
        ipam.store(),
        keys::IPAM_CONFIG,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"}, "spec": {"enableStatefulSet": false}}),
    );
    let again = assigned(&ipam, &web0("c2", "n1"));
    assert_ne!(again, first);
    assert_eq!(holder(&ipam, first), None);
}

#[test]
fn held_addresses_fit_only_the_request_they_answer() {
    let s = MemoryStore::new();
    pool(&s, "a", json!({"cidr": "10.0.0.0/24"}));
    reservation(&s, "r", &["10.0.0.9"]);
    let config = s.range(keys::CONFIG_PREFIX).unwrap();
    let ctx = Context::from_records(&config, None, None).unwrap();
    let req = web0("c2", "n1");
    let held = |ips: &[&str]| -> Vec<IpAddr> { ips.iter().map(|i| i.parse().unwrap()).collect() };
    assert_eq!(misfit(&held(&["10.0.0.5"]), &req, &ctx), None);
    let two = misfit(&held(&["10.0.0.5", "10.0.0.6"]), &req, &ctx).unwrap();
    assert!(
        two.contains("asks for 1 IPv4 address(es) from pools and holds 2"),
        "{two}"
    );
    let outside = misfit(&held(&["10.9.0.5"]), &req, &ctx).unwrap();
    assert!(
        outside.contains("in none of the pools the pod may use now (a)"),
        "{outside}"
    );
    let reserved = misfit(&held(&["10.0.0.9"]), &req, &ctx).unwrap();
    assert!(reserved.contains("reserved by \"r\""), "{reserved}");
    let mut named = req.clone();
    named.ips = vec!["10.0.0.7".parse().unwrap()];
    named.num_v4 = 0;
    assert!(misfit(&held(&["10.0.0.5"]), &named, &ctx).is_some());
    assert_eq!(misfit(&held(&["10.0.0.7"]), &named, &ctx), None);
}

#[test]
fn with_a_warm_node_cache_a_new_pod_costs_one_transaction_and_a_held_handle_is_still_found() {
    let s = CountingStore::new(MemoryStore::new());
    // Through the catalog, which keeps the configuration guard the cached view relies on.
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                      "metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/24", "blockSize": 28}});
    let doc = tessera_core::decode::decode_document(pool).unwrap();
    tessera_core::catalog::Catalog::new(&s)
        .apply(&[doc])
        .unwrap();
    let ipam = Ipam::new(s).with_cache(tessera_core::ipam::cache::MemoryNodeCache::new());
    let first = assigned(&ipam, &web0("c1", "n1"));
    let mut web1 = web0("c1", "n1");
    web1.handle = "net:db/web-1:eth0".into();
    web1.attrs.pod = Some("web-1".into());
    ipam.store().reset();
    assigned(&ipam, &web1);
    assert_eq!(
        ipam.store().round_trips(),
        1,
        "the common path: one transaction"
    );
    // The view never saw web-0's handle: the commit's compare finds it, and the read after
    // it hands it over.
    assert_eq!(assigned(&ipam, &web0("c2", "n1")), first);
    assert!(ipam.check().unwrap().problems.is_empty());
}

/// The ADD of pod db/web-0 as the CNI plugin makes it: its own handle, and the pod-named one
/// to hold its addresses under while stickiness is on.
fn web0_either(cid: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: format!("net:{cid}:eth0"),
        sticky_handle: Some(HANDLE.into()),
        ..web0(cid, node)
    }
}

fn stickiness(ipam: &Ipam<CountingStore<MemoryStore>>, on: bool) {
    put(
        ipam.store(),
        keys::IPAM_CONFIG,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"}, "spec": {"enableStatefulSet": on}}),
    );
}

#[test]
fn turned_off_a_statefulset_pod_is_assigned_like_any_other_pod_in_one_read() {
    let ipam = two_pools();
    stickiness(&ipam, false);
    // The node has its block already: the ADD claims none.
    assigned(&ipam, &v4("other", "n1"));
    ipam.store().reset();
    let (done, _) = ipam.assign_new(&web0_either("c1", "n1")).unwrap().unwrap();
    assert_eq!(
        ipam.store().round_trips(),
        2,
        "one snapshot, one transaction"
    );
    assert_eq!(done.handle, "net:c1:eth0");
    let rec = ipam.handle("net:c1:eth0").unwrap().unwrap();
    assert_eq!(rec.attrs.statefulset, None, "recorded like any other pod's");
    assert!(ipam.handle(HANDLE).unwrap().is_none());
    // Its own handle is found again by a retried ADD, and released like any other.
    assert!(ipam.assign_new(&web0_either("c1", "n1")).unwrap().is_none());
    assert_eq!(
        ipam.release_handle("net:c1:eth0").unwrap(),
        vec![done.addresses[0].ip]
    );
}

#[test]
fn turned_on_the_pod_named_handle_holds_the_addresses_and_turned_off_its_held_ones_go() {
    let ipam = two_pools();
    let (done, _) = ipam.assign_new(&web0_either("c1", "n1")).unwrap().unwrap();
    assert_eq!(done.handle, HANDLE);
    let first = done.addresses[0].ip;
    let rec = ipam.handle(HANDLE).unwrap().unwrap();
    assert_eq!(rec.attrs.statefulset.as_deref(), Some("web"));
    assert_eq!(assigned(&ipam, &web0_either("c2", "n2")), first);
    // Made while on, the handle is released by the pod's next ADD once it is off.
    stickiness(&ipam, false);
    let (again, _) = ipam.assign_new(&web0_either("c3", "n2")).unwrap().unwrap();
    assert_eq!(again.handle, "net:c3:eth0");
    let (released, why) = again.released_held.expect("the held addresses released");
    assert_eq!(released, vec![first]);
    assert!(why.contains("enableStatefulSet is false"), "{why}");
    assert!(ipam.handle(HANDLE).unwrap().is_none());
    // A retried ADD of a container that got the pod-named handle while on finds it.
    stickiness(&ipam, true);
    assigned(&ipam, &web0_either("c4", "n1"));
    stickiness(&ipam, false);
    assert!(ipam.assign_new(&web0_either("c4", "n1")).unwrap().is_none());
    assert!(ipam.check().unwrap().problems.is_empty());
}

#[test]
fn turned_off_with_a_warm_node_cache_a_statefulset_pod_costs_one_transaction() {
    let s = CountingStore::new(MemoryStore::new());
    let docs = [
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "a"},
               "spec": {"cidr": "10.0.0.0/24", "blockSize": 28}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"}, "spec": {"enableStatefulSet": false}}),
    ];
    let docs: Vec<_> = docs
        .into_iter()
        .map(|d| tessera_core::decode::decode_document(d).unwrap())
        .collect();
    tessera_core::catalog::Catalog::new(&s)
        .apply(&docs)
        .unwrap();
    let ipam = Ipam::new(s).with_cache(tessera_core::ipam::cache::MemoryNodeCache::new());
    // The view knows the node's block and the namespace.
    assigned(&ipam, &in_namespace(v4("other", "n1"), "db"));
    ipam.store().reset();
    let (done, _) = ipam.assign_new(&web0_either("c1", "n1")).unwrap().unwrap();
    assert_eq!(ipam.store().round_trips(), 1, "one transaction");
    assert_eq!(done.handle, "net:c1:eth0");
    assert_eq!(
        ipam.handle("net:c1:eth0")
            .unwrap()
            .unwrap()
            .attrs
            .statefulset,
        None
    );
    assert!(ipam.check().unwrap().problems.is_empty());
}
