//! Allocation from Spiderpool pools: explicit ranges shared by every node, exclusions and
//! reservations, affinities, defaults, gateways and routes, and exhaustion.

mod common_fixtures;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use common_fixtures::*;
use serde_json::json;
use tessera_core::ipam::{AssignRequest, Ipam, IpamError};
use tessera_core::store::{MemoryStore, Store};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn assert_clean<S: Store>(ipam: &Ipam<S>) {
    let report = ipam.check().unwrap();
    assert!(
        report.problems.is_empty(),
        "ipam check: {:#?}",
        report.problems
    );
}

fn named(handle: &str, node: &str, pools: &[&str]) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: 1,
        pools: pools.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn fixed_range_pool_yields_exactly_its_addresses_across_nodes() {
    let s = Arc::new(MemoryStore::new());
    // The nginx pool example: 10.244.120.10-10.244.120.20, here with exclusions and a reservation.
    spider_pool(
        &*s,
        "nginx-v4-ippool",
        json!({"ipVersion": 4, "subnet": "10.244.0.0/16",
        "ips": ["10.244.120.10-10.244.120.20", "10.244.121.250-10.244.122.5"],
        "excludeIPs": ["10.244.120.15"], "gateway": "10.244.0.1",
        "routes": [{"dst": "172.30.0.0/16", "gw": "10.244.0.254"}]}),
    );
    spider_reserved(&*s, "held", &["10.244.120.17", "10.244.122.0-10.244.122.1"]);
    for n in 0..3 {
        node(&*s, &format!("worker{n}"), &[]);
    }
    // 11 + 12 addresses, minus one excluded, minus three reserved.
    let usable = 11 + 12 - 1 - 3;
    let threads: Vec<_> = (0..3)
        .map(|n| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let ipam = Ipam::new(s);
                let mut got = Vec::new();
                for i in 0..20 {
                    match ipam.assign(&named(
                        &format!("w{n}-{i}"),
                        &format!("worker{n}"),
                        &["nginx-v4-ippool"],
                    )) {
                        Ok(a) => got.push(a.addresses[0].clone()),
                        Err(IpamError::Exhausted { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                got
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for a in t.join().unwrap() {
            assert_eq!(a.gateway, Some(ip("10.244.0.1")));
            assert_eq!(a.routes[0].dst, "172.30.0.0/16");
            assert!(all.insert(a.ip), "{} twice", a.ip);
        }
    }
    assert_eq!(all.len(), usable);
    for bad in [
        "10.244.120.15",
        "10.244.120.17",
        "10.244.122.0",
        "10.244.122.1",
        "10.244.120.9",
        "10.244.120.21",
    ] {
        assert!(!all.contains(&ip(bad)), "{bad} handed out");
    }
    let ipam = Ipam::new(s);
    let err = ipam
        .assign(&named("late", "worker0", &["nginx-v4-ippool"]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free IPv4 address for node \"worker0\" in pool(s) nginx-v4-ippool: every address of the pool is in use"
    );
    let counts = ipam.spider_pool_usage().unwrap();
    assert_eq!(counts["nginx-v4-ippool"], usable as u128);
    assert_clean(&ipam);
    // Releasing one makes exactly that room.
    // Any holder will do: which threads got addresses depends on scheduling.
    let holder = ipam.lookup(*all.iter().next().unwrap()).unwrap().unwrap();
    let freed = ipam
        .release_handle(&holder.allocation.unwrap().handle)
        .unwrap();
    let again = ipam
        .assign(&named("again", "worker2", &["nginx-v4-ippool"]))
        .unwrap();
    assert_eq!(again.addresses[0].ip, freed[0]);
    assert_clean(&ipam);
}

#[test]
fn affinities_filter_pools() {
    let s = MemoryStore::new();
    spider_pool(
        &s,
        "rack-a",
        json!({"subnet": "10.6.0.0/24", "ips": ["10.6.0.10-10.6.0.20"],
        "nodeName": ["worker1"]}),
    );
    spider_pool(
        &s,
        "by-label",
        json!({"subnet": "10.7.0.0/24", "ips": ["10.7.0.10-10.7.0.20"],
        "nodeAffinity": {"matchLabels": {"zone": "a"}},
        "namespaceAffinity": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["web"]}]},
        "podAffinity": {"matchLabels": {"app": "nginx"}}}),
    );
    node(&s, "worker1", &[("zone", "a")]);
    node(&s, "worker2", &[("zone", "b")]);
    put(
        &s,
        &tessera_core::keys::namespace("web"),
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "web", "labels": {"team": "web"}}}),
    );
    let ipam = Ipam::new(s);
    assert!(ipam.assign(&named("a", "worker1", &["rack-a"])).is_ok());
    let err = ipam
        .assign(&named("b", "worker2", &["rack-a"]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IPv4 pool accepts this workload: rack-a: nodeName does not list node \"worker2\""
    );
    // Pod affinity needs the pod's labels.
    let mut req = named("c", "worker1", &["by-label"]);
    req.attrs.namespace = Some("web".into());
    let err = ipam.assign(&req).unwrap_err();
    assert!(err.to_string().contains("labels are not known"), "{err}");
    req.pod_labels = Some(BTreeMap::from([("app".to_string(), "nginx".to_string())]));
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].pool, "by-label");
    // Every named pool refuses worker2: the error gives each pool's reason.
    let mut req = named("d", "worker2", &["rack-a", "by-label"]);
    req.attrs.namespace = Some("web".into());
    req.pod_labels = Some(BTreeMap::from([("app".to_string(), "nginx".to_string())]));
    let err = ipam.assign(&req).unwrap_err();
    assert!(
        err.to_string()
            .contains("by-label: nodeAffinity does not match node \"worker2\""),
        "{err}"
    );
    assert_clean(&ipam);
}

#[test]
fn default_pools_and_dual_stack() {
    let s = MemoryStore::new();
    spider_pool(
        &s,
        "default-v4",
        json!({"ipVersion": 4, "subnet": "172.20.0.0/16",
        "ips": ["172.20.1.1-172.20.1.3"], "default": true}),
    );
    spider_pool(
        &s,
        "default-v6",
        json!({"ipVersion": 6, "subnet": "fd20::/64",
        "ips": ["fd20::10-fd20::12"], "default": true, "gateway": "fd20::1"}),
    );
    node(&s, "n", &[]);
    let ipam = Ipam::new(s);
    let mut req = named("dual", "n", &[]);
    req.num_v6 = 1;
    let a = ipam.assign(&req).unwrap();
    assert!(["172.20.1.1", "172.20.1.2", "172.20.1.3"]
        .contains(&a.addresses[0].ip.to_string().as_str()));
    assert_eq!(a.addresses[0].pool, "default-v4");
    assert_eq!(a.addresses[1].gateway, Some(ip("fd20::1")));
    // Three IPv6 addresses: the fourth dual-stack request gets neither family.
    req.handle = "dual2".into();
    ipam.assign(&req).unwrap();
    req.handle = "dual3".into();
    ipam.assign(&req).unwrap();
    req.handle = "dual4".into();
    assert!(matches!(
        ipam.assign(&req).unwrap_err(),
        IpamError::Exhausted { .. }
    ));
    assert!(ipam
        .store()
        .get(&tessera_core::keys::handle("dual4"))
        .unwrap()
        .is_none());
    assert_clean(&ipam);
}

#[test]
fn spider_pool_names_can_be_forced_and_fixed_addresses_checked() {
    let s = MemoryStore::new();
    pool(&s, "same", json!({"cidr": "10.1.0.0/24"}));
    spider_pool(
        &s,
        "same",
        json!({"subnet": "10.9.0.0/24", "ips": ["10.9.0.5-10.9.0.6"]}),
    );
    node(&s, "n", &[]);
    let ipam = Ipam::new(s);
    assert_eq!(
        ipam.assign(&named("calico", "n", &["same"]))
            .unwrap()
            .addresses[0]
            .pool_cidr
            .to_string(),
        "10.1.0.0/24"
    );
    let forced = ipam
        .assign(&named("spider", "n", &["spiderippool/same"]))
        .unwrap();
    assert_eq!(forced.addresses[0].ip, ip("10.9.0.5"));
    let fixed = AssignRequest {
        handle: "fixed".into(),
        node: "n".into(),
        ips: vec![ip("10.9.0.6")],
        ..Default::default()
    };
    assert_eq!(ipam.assign(&fixed).unwrap().addresses[0].pool, "same");
    let outside = AssignRequest {
        handle: "x".into(),
        ips: vec![ip("10.9.0.7")],
        ..fixed
    };
    assert!(matches!(
        ipam.assign(&outside).unwrap_err(),
        IpamError::AddressNotInPool(_)
    ));
    assert_clean(&ipam);
}

/// A Calico pool `pods` (/26 blocks) and a SpiderIPPool `sp1`, on node `n`.
fn calico_and_spider() -> Ipam<MemoryStore> {
    let s = MemoryStore::new();
    pool(&s, "pods", json!({"cidr": "10.1.0.0/24", "blockSize": 26}));
    spider_pool(
        &s,
        "sp1",
        json!({"subnet": "10.9.0.0/24", "ips": ["10.9.0.5-10.9.0.6"]}),
    );
    node(&s, "n", &[]);
    Ipam::new(s)
}

fn pool_of(ipam: &Ipam<MemoryStore>, req: &AssignRequest) -> String {
    ipam.assign(req).unwrap().addresses[0].pool.clone()
}

#[test]
fn configured_pool_order_holds_between_calico_and_spiderpool_pools() {
    // A fresh node: `pods` has room once the node claims a block, and comes first.
    let ipam = calico_and_spider();
    assert_eq!(pool_of(&ipam, &named("a", "n", &["pods", "sp1"])), "pods");
    let mut cni = named("b", "n", &[]);
    cni.default_pools = vec!["pods".into(), "sp1".into()];
    assert_eq!(pool_of(&ipam, &cni), "pods");
    // The other way round: `sp1` first, although the node now has a `pods` block with room.
    assert_eq!(pool_of(&ipam, &named("c", "n", &["sp1", "pods"])), "sp1");
    assert_clean(&ipam);
}

#[test]
fn a_spiderpool_pool_serves_when_the_calico_pool_before_it_cannot() {
    let ipam = calico_and_spider();
    // `pods` holds 4 blocks of 64: 254 usable addresses.
    let mut fill = named("fill", "n", &["pods"]);
    fill.num_v4 = 254;
    ipam.assign(&fill).unwrap();
    assert_eq!(pool_of(&ipam, &named("a", "n", &["pods", "sp1"])), "sp1");
    assert_clean(&ipam);
}
