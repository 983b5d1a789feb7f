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
