//! The allocator with a node cache: one round trip on the common path, and every way the
//! cached view can go stale (configuration, node labels, namespaces, other writers, a
//! rebuilt store) ends in a fresh read and the right answer, never a duplicate.

mod common_fixtures;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use common_fixtures::*;
use serde_json::{json, Value};
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::cache::{DirNodeCache, MemoryNodeCache, NodeCache};
use tessera_core::ipam::{AssignRequest, Attributes, GatewayHold, Ipam, IpamError};
use tessera_core::resources::Kind;
use tessera_core::store::{CountingStore, MemoryStore, Store};

/// A cache shared by several allocators, as the processes of one node share a directory.
#[derive(Clone, Default)]
struct Shared(Arc<MemoryNodeCache>);

impl NodeCache for Shared {
    fn load_view(&self, node: &str) -> Option<tessera_core::ipam::cache::NodeView> {
        self.0.load_view(node)
    }
    fn save_view(&self, view: &tessera_core::ipam::cache::NodeView) {
        self.0.save_view(view)
    }
    fn load_handle(&self, id: &str) -> Option<tessera_core::ipam::cache::CachedKv> {
        self.0.load_handle(id)
    }
    fn save_handle(&self, id: &str, kv: &tessera_core::ipam::cache::CachedKv) {
        self.0.save_handle(id, kv)
    }
    fn forget_handle(&self, id: &str) {
        self.0.forget_handle(id)
    }
}

fn apply(store: &dyn Store, doc: Value) {
    let r = decode_document(doc).unwrap();
    Catalog::new(store).apply(&[r]).unwrap();
}

fn ip_pool(name: &str, cidr: &str, selector: &str) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": name},
           "spec": {"cidr": cidr, "blockSize": 26, "nodeSelector": selector}})
}

fn node_doc(name: &str, rack: &str) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
           "metadata": {"name": name, "labels": {"rack": rack}}})
}

/// Two rack pools and two nodes, written through the catalog (which keeps the guard).
fn cluster() -> Arc<CountingStore<MemoryStore>> {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    apply(&*store, ip_pool("rack-0", "10.0.0.0/24", "rack == \"0\""));
    apply(&*store, ip_pool("rack-1", "10.1.0.0/24", "rack == \"1\""));
    apply(&*store, node_doc("n1", "0"));
    apply(&*store, node_doc("n2", "1"));
    store
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn one(ipam: &Ipam<impl Store>, handle: &str, node: &str) -> IpAddr {
    ipam.assign(&v4(handle, node)).unwrap().addresses[0].ip
}

fn assert_clean(store: &impl Store) {
    let report = Ipam::new(store).check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn warm_assign_and_release_are_one_round_trip_each() {
    let store = cluster();
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    one(&ipam, "h0", "n1"); // claims the node's first block
    store.reset();
    assert_eq!(one(&ipam, "h1", "n1"), ip("10.0.0.2"));
    assert_eq!(store.round_trips(), 1, "a warm assign is one txn");
    store.reset();
    assert_eq!(ipam.release_handle("h1").unwrap(), vec![ip("10.0.0.2")]);
    assert_eq!(store.round_trips(), 1, "a warm release is one txn");
    // The released address is free again, and the view knows it.
    store.reset();
    assert_eq!(one(&ipam, "h2", "n1"), ip("10.0.0.3"));
    assert_eq!(store.round_trips(), 1);
    assert_clean(&*store);
}

#[test]
fn without_a_guard_nothing_is_cached() {
    // Records written behind the catalog's back carry no guard: the cache stays unused.
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    pool(&*store, "p", json!({"cidr": "10.0.0.0/24"}));
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    one(&ipam, "h0", "n1");
    store.reset();
    one(&ipam, "h1", "n1");
    assert_eq!(store.round_trips(), 2);
}

#[test]
fn a_configuration_change_is_seen_at_once() {
    let store = cluster();
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    assert_eq!(one(&ipam, "h0", "n1"), ip("10.0.0.1"));
    apply(
        &*store,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
               "metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.0.0.2/31"]}}),
    );
    assert_eq!(one(&ipam, "h1", "n1"), ip("10.0.0.4"));
    // Disabling the pool stops allocation from it on the very next request.
    let disabled = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": "rack-0"},
           "spec": {"cidr": "10.0.0.0/24", "blockSize": 26, "nodeSelector": "rack == \"0\"",
                    "disabled": true}});
    apply(&*store, disabled);
    let err = ipam.assign(&v4("h2", "n1")).unwrap_err();
    assert!(matches!(err, IpamError::NoPool { .. }), "{err}");
    // Deleting it (and the reservation) likewise.
    Catalog::new(&*store)
        .delete(&[(Kind::IPPool, "rack-0".into())], false)
        .unwrap();
    assert!(ipam.assign(&v4("h3", "n1")).is_err());
    assert_clean(&*store);
}

#[test]
fn a_node_relabelled_to_another_rack_moves_at_once() {
    let store = cluster();
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    assert!(one(&ipam, "h0", "n1").to_string().starts_with("10.0.0."));
    apply(&*store, node_doc("n1", "1"));
    assert!(one(&ipam, "h1", "n1").to_string().starts_with("10.1.0."));
}

/// Namespace `team` whose annotation names the IPv4 pools `pools` (a JSON list).
fn team_namespace(pools: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "team",
                        "annotations": {"cni.projectcalico.org/ipv4pools": pools}}})
}

#[test]
fn namespace_pools_are_checked_for_each_namespace() {
    let store = cluster();
    apply(&*store, ip_pool("tenant", "10.2.0.0/24", "all()"));
    let ns = team_namespace;
    apply(&*store, ns("[\"tenant\"]"));
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    let req = |h: &str| in_namespace(v4(h, "n1"), "team");
    let a = ipam.assign(&req("h0")).unwrap().addresses[0].ip;
    assert!(a.to_string().starts_with("10.2.0."), "{a}");
    store.reset();
    ipam.assign(&req("h1")).unwrap();
    assert_eq!(store.round_trips(), 1, "the namespace is in the view now");
    apply(&*store, ns("[\"rack-0\"]"));
    let b = ipam.assign(&req("h2")).unwrap().addresses[0].ip;
    assert!(b.to_string().starts_with("10.0.0."), "{b}");
    // A namespace the view has not seen is read, not guessed.
    let c = ipam.assign(&in_namespace(v4("h3", "n1"), "other")).unwrap();
    assert!(c.addresses[0].ip.to_string().starts_with("10.0.0."));
}

#[test]
fn a_namespace_read_from_kubernetes_takes_the_place_of_the_stored_record() {
    let store = cluster();
    apply(&*store, ip_pool("tenant", "10.2.0.0/24", "all()"));
    let ns = team_namespace;
    apply(&*store, ns("[\"tenant\"]"));
    let from_api: tessera_core::resources::kube::Namespace =
        serde_json::from_value(ns("[\"rack-0\"]")).unwrap();
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    let req = |h: &str| AssignRequest {
        namespace_record: Some(from_api.clone()),
        ..in_namespace(v4(h, "n1"), "team")
    };
    for h in ["h0", "h1"] {
        let got = ipam.assign(&req(h)).unwrap().addresses[0].ip;
        assert!(got.to_string().starts_with("10.0.0."), "{got}");
    }
    // The stored record is neither read nor compared: changing it costs the warm path
    // nothing and changes nothing.
    apply(&*store, ns("[\"rack-1\"]"));
    store.reset();
    let got = ipam.assign(&req("h2")).unwrap().addresses[0].ip;
    assert!(got.to_string().starts_with("10.0.0."), "{got}");
    assert_eq!(store.round_trips(), 1);
    // Without the namespace from Kubernetes the stored record decides again.
    let plain = ipam.assign(&in_namespace(v4("h3", "n1"), "team")).unwrap();
    assert!(plain.addresses[0].ip.to_string().starts_with("10.1.0."));
    // The labels of the namespace from Kubernetes feed namespaceSelectors.
    let mut labelled = ip_pool("labelled", "10.3.0.0/24", "all()");
    labelled["spec"]["namespaceSelector"] = json!("tier == \"gold\"");
    apply(&*store, labelled);
    let gold: tessera_core::resources::kube::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "plain", "labels": {"tier": "gold"}}}))
            .unwrap();
    // On a node no rack pool selects, "labelled" comes before "tenant" when it may serve.
    let pool_for = |h: &str, ns: tessera_core::resources::kube::Namespace| {
        let req = AssignRequest {
            namespace_record: Some(ns),
            ..in_namespace(v4(h, "n3"), "plain")
        };
        ipam.assign(&req).unwrap().addresses[0].pool.clone()
    };
    assert_eq!(pool_for("h4", gold), "labelled");
    let unlabelled = serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap();
    assert_eq!(pool_for("h5", unlabelled), "tenant");
    assert_clean(&*store);
}

#[test]
fn other_writers_on_the_node_make_the_view_stale_but_never_duplicate() {
    let store = cluster();
    let cached = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    let plain = Ipam::new(store.clone());
    let mut seen = HashSet::new();
    for i in 0..60 {
        let who = if i % 3 == 0 { &plain } else { &cached };
        let a = who.assign(&v4(&format!("h{i}"), "n1"));
        let a = match a {
            Ok(a) => a.addresses[0].ip,
            Err(e) => panic!("assign {i}: {e}"),
        };
        assert!(seen.insert(a), "{a} handed out twice");
    }
    // Releases by the other writer are seen too: the cached release of a handle released
    // elsewhere releases nothing and leaves the store consistent.
    assert_eq!(plain.release_handle("h1").unwrap().len(), 1);
    assert!(cached.release_handle("h1").unwrap().is_empty());
    assert_eq!(cached.release_handle("h2").unwrap().len(), 1);
    assert_clean(&*store);
}

#[test]
fn a_rebuilt_store_at_the_same_revisions_is_not_mistaken_for_the_old_one() {
    // Store A and store B get the same records at the same revisions, except that the one
    // allocation of each went to a different handle. A view of A must not be used on B:
    // its block compare would pass, only the guard's nonce tells the stores apart.
    let cache = Shared::default();
    let a = cluster();
    let b = cluster();
    let on_a = Ipam::new(a.clone()).with_cache(cache.clone());
    assert_eq!(one(&on_a, "pod-a", "n1"), ip("10.0.0.1"));
    assert_eq!(one(&Ipam::new(b.clone()), "pod-b", "n1"), ip("10.0.0.1"));
    let on_b = Ipam::new(b.clone()).with_cache(cache);
    assert_eq!(one(&on_b, "pod-c", "n1"), ip("10.0.0.2"));
    let usage = Ipam::new(b.clone())
        .lookup(ip("10.0.0.1"))
        .unwrap()
        .unwrap();
    assert_eq!(usage.allocation.unwrap().handle, "pod-b");
    assert_clean(&*b);
}

#[test]
fn a_block_that_empties_or_fills_goes_through_the_fresh_path() {
    let store = cluster();
    apply(
        &*store,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"},
               "spec": {"strictAffinity": true, "autoAllocateBlocks": true, "maxBlocksPerHost": 0}}),
    );
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    // A /26 has 64 addresses, 63 usable in the pool's first block (network address).
    let mut handles = Vec::new();
    for i in 0..70 {
        let h = format!("h{i}");
        one(&ipam, &h, "n1");
        handles.push(h);
    }
    for h in &handles {
        assert_eq!(ipam.release_handle(h).unwrap().len(), 1, "{h}");
    }
    assert_clean(&*store);
    let usage = ipam.usage().unwrap();
    assert_eq!(usage.pools.iter().map(|p| p.in_use).sum::<u128>(), 0);
}

#[test]
fn plugin_processes_of_many_nodes_share_a_directory_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = cluster();
    let mut seen = HashSet::new();
    for round in 0..20 {
        for node in ["n1", "n2"] {
            // A new allocator per request, as each plugin invocation is a new process.
            let cache = DirNodeCache::open(dir.path(), "memory").unwrap();
            let ipam = Ipam::new(store.clone()).with_cache(cache);
            store.reset();
            let a = one(&ipam, &format!("{node}-{round}"), node);
            assert!(seen.insert(a));
            if round > 0 {
                assert_eq!(store.round_trips(), 1, "round {round} on {node}");
            }
        }
    }
    for round in 0..20 {
        for node in ["n1", "n2"] {
            let cache = DirNodeCache::open(dir.path(), "memory").unwrap();
            let ipam = Ipam::new(store.clone()).with_cache(cache);
            store.reset();
            assert_eq!(
                ipam.release_handle(&format!("{node}-{round}"))
                    .unwrap()
                    .len(),
                1
            );
            if round < 19 {
                assert_eq!(store.round_trips(), 1, "release {round} on {node}");
            }
        }
    }
    assert_clean(&*store);
}

#[test]
fn random_mix_of_cached_and_plain_writers_and_admin_changes_stays_consistent() {
    let store = cluster();
    apply(&*store, node_doc("n3", "0"));
    let caches: Vec<Shared> = (0..2).map(|_| Shared::default()).collect();
    let mut live: Vec<(String, IpAddr)> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for step in 0..1500 {
        let writer = next(3);
        let ipam = match writer {
            0 => Ipam::new(store.clone()),
            w => Ipam::new(store.clone()).with_cache(caches[w as usize - 1].clone()),
        };
        match next(10) {
            0..=5 => {
                let node = ["n1", "n2", "n3"][next(3) as usize];
                let h = format!("h{step}");
                match ipam.assign(&AssignRequest {
                    handle: h.clone(),
                    node: node.into(),
                    num_v4: 1,
                    ..Default::default()
                }) {
                    Ok(a) => {
                        let got = a.addresses[0].ip;
                        assert!(live.iter().all(|(_, l)| *l != got), "{got} twice");
                        live.push((h, got));
                    }
                    Err(IpamError::Exhausted { .. }) | Err(IpamError::NoPool { .. }) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            6..=8 if !live.is_empty() => {
                let (h, addr) = live.swap_remove(next(live.len() as u64) as usize);
                assert_eq!(ipam.release_handle(&h).unwrap(), vec![addr], "step {step}");
            }
            _ => match next(3) {
                0 => apply(&*store, node_doc("n3", ["0", "1"][next(2) as usize])),
                1 => {
                    // Reserving an address in use is allowed but reported; keep to free ones.
                    let candidate = ip(&format!("10.0.0.{}", next(64)));
                    if live.iter().all(|(_, l)| *l != candidate) {
                        apply(
                            &*store,
                            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
                                   "metadata": {"name": "r"},
                                   "spec": {"reservedCIDRs": [format!("{candidate}/32")]}}),
                        );
                    }
                }
                _ => apply(
                    &*store,
                    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                           "metadata": {"name": "rack-1"},
                           "spec": {"cidr": "10.1.0.0/24", "blockSize": 26,
                                    "nodeSelector": "rack == \"1\"",
                                    "disabled": next(2) == 0}}),
                ),
            },
        }
        if step % 100 == 0 {
            assert_clean(&*store);
        }
    }
    assert_clean(&*store);
    for (h, addr) in live {
        let info = Ipam::new(store.clone()).lookup(addr).unwrap().unwrap();
        assert_eq!(info.allocation.unwrap().handle, h);
    }
}

#[test]
fn assign_new_refuses_an_existing_handle_and_costs_no_more() {
    let store = cluster();
    for cached in [false, true] {
        let mut ipam = Ipam::new(store.clone());
        if cached {
            ipam = ipam.with_cache(MemoryNodeCache::new());
        }
        let h = |i: u32| format!("new-{cached}-{i}");
        ipam.assign_new(&v4(&h(0), "n1"))
            .unwrap()
            .expect("new handle");
        store.reset();
        let (done, ctx) = ipam.assign_new(&v4(&h(1), "n1")).unwrap().expect("new");
        assert_eq!(store.round_trips(), if cached { 1 } else { 2 });
        assert!(ctx.pools.iter().any(|p| p.name == done.addresses[0].pool));
        // A retried request: nothing is written, the caller looks up what the handle holds.
        let before = Ipam::new(store.clone()).check().unwrap();
        assert!(ipam.assign_new(&v4(&h(1), "n1")).unwrap().is_none());
        let after = Ipam::new(store.clone()).check().unwrap();
        assert_eq!(
            (before.handles, before.allocations),
            (after.handles, after.allocations)
        );
        let held = ipam.attachment(&h(1)).unwrap().held.expect("held");
        assert_eq!(held.addresses, done.addresses);
    }
    assert_clean(&*store);
}

#[test]
fn a_block_emptied_by_a_release_keeps_the_view_warm() {
    let store = cluster();
    let ipam = Ipam::new(store.clone()).with_cache(MemoryNodeCache::new());
    for i in 0..5 {
        store.reset();
        one(&ipam, &format!("h{i}"), "n1");
        let assign = store.round_trips();
        store.reset();
        assert_eq!(ipam.release_handle(&format!("h{i}")).unwrap().len(), 1);
        let release = store.round_trips();
        // Emptying the node's only block needs the pool index and the node's other blocks:
        // one read, then the transaction.
        assert_eq!(release, 2, "round {i}");
        if i > 0 {
            assert_eq!(assign, 1, "round {i}");
        }
    }
    assert_clean(&*store);
}

#[test]
fn assign_new_unless_an_alias_exists_costs_no_more() {
    use tessera_core::ipam::HandleRelease;
    let store = cluster();
    for cached in [false, true] {
        let mut ipam = Ipam::new(store.clone());
        if cached {
            ipam = ipam.with_cache(MemoryNodeCache::new());
        }
        let h = |name: &str| format!("{name}-{cached}");
        ipam.assign_new(&v4(&h("warm"), "n1"))
            .unwrap()
            .expect("new");
        store.reset();
        let aliases = [h("never-written")];
        ipam.assign_new_unless(&v4(&h("fresh"), "n1"), &aliases)
            .unwrap()
            .expect("new");
        assert_eq!(store.round_trips(), if cached { 1 } else { 2 });
        // The alias is written by another process after this one's view was warm (a record
        // of its own, no block of the view changes): the commit's compare catches it, and
        // nothing is assigned.
        let alias = tessera_core::keys::handle(&h("legacy"));
        let record = format!(r#"{{"id":"{}","addresses":[]}}"#, h("legacy"));
        let put = tessera_core::store::Op::Put(alias.clone(), record.into_bytes());
        store.txn(&[], &[put]).unwrap();
        let before = Ipam::new(store.clone()).check().unwrap();
        assert!(ipam
            .assign_new_unless(&v4(&h("renamed"), "n1"), &[h("legacy")])
            .unwrap()
            .is_none());
        let after = Ipam::new(store.clone()).check().unwrap();
        assert_eq!(before.allocations, after.allocations);
        assert!(ipam.handle(&h("renamed")).unwrap().is_none());
        store
            .txn(&[], &[tessera_core::store::Op::Delete(alias)])
            .unwrap();

        // A release that must match the recorded attributes leaves another's handle alone.
        let held = ipam.handle(&h("fresh")).unwrap().expect("held");
        assert_eq!(
            ipam.release_handle_of(&h("fresh"), &|a| a.pod.as_deref() == Some("other"))
                .unwrap(),
            HandleRelease::NotOwned(held.attrs.clone())
        );
        assert_eq!(ipam.handle(&h("fresh")).unwrap(), Some(held));
        assert!(matches!(
            ipam.release_handle_of(&h("fresh"), &|a| a.pod.is_none()).unwrap(),
            HandleRelease::Released(ips) if ips.len() == 1
        ));
    }
    assert_clean(&*store);
}

#[test]
fn a_held_pool_gateway_keeps_the_warm_assign_at_one_round_trip() {
    let store = cluster();
    let cache = Shared::default();
    let ipam = Ipam::new(store.clone()).with_cache(cache.clone());
    let req = |h: &str, n: &str| AssignRequest {
        gateway: Some(GatewayHold {
            handle: "net:gateway".into(),
            attrs: Attributes {
                gateway_of: Some("net".into()),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..v4(h, n)
    };
    assert_eq!(
        ipam.assign(&req("h0", "n1")).unwrap().addresses[0].ip,
        ip("10.0.0.2")
    );
    for i in 1..4 {
        store.reset();
        let a = ipam.assign(&req(&format!("h{i}"), "n1")).unwrap();
        assert_eq!(a.addresses[0].ip, ip(&format!("10.0.0.{}", i + 2)));
        assert_eq!(store.round_trips(), 1, "a warm assign is one txn");
    }
    // Released behind the node's back, the gateway is held again by the next request.
    Ipam::new(store.clone())
        .release_handle("net:gateway")
        .unwrap();
    ipam.assign(&req("h9", "n1")).unwrap();
    let held = Ipam::new(store.clone())
        .handle("net:gateway")
        .unwrap()
        .expect("held again");
    assert_eq!(held.addresses[0].ip, ip("10.0.0.1"));
    assert_clean(&*store);
}
