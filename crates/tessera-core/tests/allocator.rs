//! Allocator behaviour on the memory store: the rack pools and pool migration scenarios, specific addresses,
//! reservations, affinity rules, release, and the round-trip budget.

mod common_fixtures;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use common_fixtures::*;
use serde_json::json;
use tessera_core::ipam::{AssignRequest, Attributes, GatewayHold, Ipam, IpamError};
use tessera_core::keys;
use tessera_core::store::{CountingStore, MemoryStore, Store};

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

fn racks() -> Ipam<MemoryStore> {
    let s = MemoryStore::new();
    pool(
        &s,
        "rack-0-ippool",
        json!({"cidr": "192.168.0.0/24", "ipipMode": "Always", "natOutgoing": true, "nodeSelector": "rack == \"0\""}),
    );
    pool(
        &s,
        "rack-1-ippool",
        json!({"cidr": "192.168.1.0/24", "ipipMode": "Always", "natOutgoing": true, "nodeSelector": "rack == \"1\""}),
    );
    for (n, r) in [
        ("kube-node-0", "0"),
        ("kube-node-1", "0"),
        ("kube-node-2", "1"),
        ("kube-node-3", "1"),
    ] {
        node(&s, n, &[("rack", r)]);
    }
    Ipam::new(s)
}

#[test]
fn rack_pools_follow_node_labels() {
    let ipam = racks();
    let a = ipam.assign(&v4("p1", "kube-node-0")).unwrap();
    let b = ipam.assign(&v4("p2", "kube-node-1")).unwrap();
    let c = ipam.assign(&v4("p3", "kube-node-2")).unwrap();
    let d = ipam.assign(&v4("p4", "kube-node-3")).unwrap();
    let e = ipam.assign(&v4("p5", "kube-node-2")).unwrap();
    // The pool's own network address is skipped; each node gets its own /26 block.
    assert_eq!(a.addresses[0].ip, ip("192.168.0.1"));
    assert_eq!(a.addresses[0].pool, "rack-0-ippool");
    assert_eq!(b.addresses[0].ip, ip("192.168.0.64"));
    assert_eq!(c.addresses[0].ip, ip("192.168.1.1"));
    assert_eq!(c.addresses[0].block, "192.168.1.0/26".parse().unwrap());
    assert_eq!(d.addresses[0].ip, ip("192.168.1.64"));
    assert_eq!(e.addresses[0].ip, ip("192.168.1.2"));
    assert_clean(&ipam);
}

#[test]
fn node_without_matching_pool_is_a_clear_error() {
    let ipam = racks();
    node(ipam.store(), "kube-node-9", &[("rack", "7")]);
    let err = ipam.assign(&v4("x", "kube-node-9")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no enabled IPv4 IP pool selects node \"kube-node-9\"; create one with a matching nodeSelector, or label the node"
    );
}

fn namespace_pools() -> Ipam<MemoryStore> {
    let s = MemoryStore::new();
    pool(
        &s,
        "external-pool",
        json!({"cidr": "172.16.0.0/26", "blockSize": 29, "ipipMode": "Always", "natOutgoing": true}),
    );
    pool(
        &s,
        "internal-pool",
        json!({"cidr": "192.169.0.0/24", "blockSize": 29, "ipipMode": "Always", "natOutgoing": true}),
    );
    namespace(
        &s,
        "external-ns",
        &[("cni.projectcalico.org/ipv4pools", "[\"external-pool\"]")],
    );
    // As printed in the blog post, with typographic quotes.
    namespace(
        &s,
        "internal-ns",
        &[(
            "cni.projectcalico.org/ipv4pools",
            "\u{2018}[\u{201C}internal-pool\"]\u{2019}",
        )],
    );
    node(&s, "node-0", &[]);
    Ipam::new(s)
}

#[test]
fn namespace_annotation_picks_the_pool() {
    let ipam = namespace_pools();
    for i in 0..3 {
        let a = ipam
            .assign(&in_namespace(
                v4(&format!("ext{i}"), "node-0"),
                "external-ns",
            ))
            .unwrap();
        assert_eq!(a.addresses[0].pool, "external-pool");
        assert_eq!(a.addresses[0].block.prefix_len(), 29);
        let b = ipam
            .assign(&in_namespace(
                v4(&format!("int{i}"), "node-0"),
                "internal-ns",
            ))
            .unwrap();
        assert_eq!(b.addresses[0].pool, "internal-pool");
    }
    assert_clean(&ipam);
}

#[test]
fn small_pool_exhausts_with_a_clear_error() {
    let ipam = namespace_pools();
    // 64 addresses minus the network and broadcast addresses.
    let mut seen = HashSet::new();
    for i in 0..62 {
        let a = ipam
            .assign(&in_namespace(v4(&format!("h{i}"), "node-0"), "external-ns"))
            .unwrap();
        assert!(seen.insert(a.addresses[0].ip));
    }
    assert!(!seen.contains(&ip("172.16.0.0")) && !seen.contains(&ip("172.16.0.63")));
    let err = ipam
        .assign(&in_namespace(v4("one-too-many", "node-0"), "external-ns"))
        .unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no free IPv4 address for node \"node-0\" in pool(s) external-pool: every block is claimed and full"
    );
    assert_clean(&ipam);
    // A release makes room again.
    ipam.release_handle("h10").unwrap();
    ipam.assign(&in_namespace(v4("again", "node-0"), "external-ns"))
        .unwrap();
    assert_clean(&ipam);
}

#[test]
fn explicit_pools_are_used_in_fallback_order() {
    let s = MemoryStore::new();
    pool(&s, "small", json!({"cidr": "10.0.0.0/30", "blockSize": 30}));
    pool(
        &s,
        "extra-ippool",
        json!({"cidr": "192.168.0.0/20", "vxlanMode": "Always", "natOutgoing": true}),
    );
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    let mut req = v4("a", "n1");
    req.default_pools = vec!["small".into(), "192.168.0.0/20".into()];
    // A /30 pool has two usable addresses.
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].ip, ip("10.0.0.1"));
    req.handle = "b".into();
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].ip, ip("10.0.0.2"));
    req.handle = "c".into();
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].pool, "extra-ippool");
    req.default_pools = vec!["missing".into()];
    req.handle = "d".into();
    assert_eq!(
        ipam.assign(&req).unwrap_err().to_string(),
        "IP pool \"missing\" does not exist; list pools with `tessera get ippool`"
    );
    assert_clean(&ipam);
}

#[test]
fn disabled_and_manual_pools_are_only_used_as_allowed() {
    let s = MemoryStore::new();
    pool(
        &s,
        "default-ipv4-ippool",
        json!({"cidr": "10.1.0.0/16", "disabled": true}),
    );
    pool(
        &s,
        "manual",
        json!({"cidr": "10.2.0.0/16", "assignmentMode": "Manual"}),
    );
    pool(&s, "temporary-pool", json!({"cidr": "10.0.0.0/16"}));
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    assert_eq!(
        ipam.assign(&v4("a", "n1")).unwrap().addresses[0].pool,
        "temporary-pool"
    );
    let mut req = v4("b", "n1");
    req.pools = vec!["manual".into()];
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].pool, "manual");
    req.pools = vec!["default-ipv4-ippool".into()];
    req.handle = "c".into();
    assert!(
        matches!(ipam.assign(&req).unwrap_err(), IpamError::PoolDisabled(p) if p == "default-ipv4-ippool")
    );
    // A disabled pool keeps its existing allocations; a specific address in it is refused.
    let mut req = v4("d", "n1");
    req.num_v4 = 0;
    req.ips = vec![ip("10.1.0.5")];
    assert!(matches!(
        ipam.assign(&req).unwrap_err(),
        IpamError::PoolDisabled(_)
    ));
}

#[test]
fn specific_addresses_reservations_and_edges() {
    let s = MemoryStore::new();
    pool(&s, "p", json!({"cidr": "10.0.0.0/24"}));
    reservation(&s, "gw", &["10.0.0.1", "10.0.0.128/30"]);
    node(&s, "n1", &[]);
    node(&s, "n2", &[]);
    let ipam = Ipam::new(s);
    let fixed = |h: &str, n: &str, addr: &str| AssignRequest {
        handle: h.into(),
        node: n.into(),
        ips: vec![ip(addr)],
        ..Default::default()
    };
    let a = ipam.assign(&fixed("a", "n1", "10.0.0.77")).unwrap();
    assert_eq!(a.addresses[0].ip, ip("10.0.0.77"));
    // Same address again, even from another node: refused, never handed out twice.
    assert_eq!(
        ipam.assign(&fixed("b", "n2", "10.0.0.77"))
            .unwrap_err()
            .to_string(),
        "address 10.0.0.77 is already in use by handle \"a\""
    );
    assert_eq!(
        ipam.assign(&fixed("b", "n2", "10.0.0.129"))
            .unwrap_err()
            .to_string(),
        "address 10.0.0.129 is reserved by IPReservation \"gw\""
    );
    assert!(matches!(
        ipam.assign(&fixed("b", "n2", "10.0.0.255")).unwrap_err(),
        IpamError::AddressUnusable { .. }
    ));
    assert!(matches!(
        ipam.assign(&fixed("b", "n2", "10.9.0.1")).unwrap_err(),
        IpamError::AddressNotInPool(_)
    ));
    // Automatic allocation skips reserved addresses and the fixed one.
    let mut got = HashSet::new();
    for i in 0..60 {
        let a = ipam.assign(&v4(&format!("auto{i}"), "n2")).unwrap();
        got.insert(a.addresses[0].ip);
    }
    for bad in [
        "10.0.0.0",
        "10.0.0.1",
        "10.0.0.77",
        "10.0.0.128",
        "10.0.0.131",
        "10.0.0.255",
    ] {
        assert!(!got.contains(&ip(bad)), "{bad} handed out");
    }
    assert_clean(&ipam);
    // Release by address.
    let released = ipam
        .release_ips(&[ip("10.0.0.77"), ip("10.0.0.200")])
        .unwrap();
    assert_eq!(released, vec![(ip("10.0.0.77"), "a".to_string())]);
    assert!(ipam.store().get(&keys::handle("a")).unwrap().is_none());
    assert_clean(&ipam);
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let s = MemoryStore::new();
    pool(&s, "v4", json!({"cidr": "10.0.0.0/24"}));
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    let mut req = v4("dual", "n1");
    req.num_v6 = 1;
    let err = ipam.assign(&req).unwrap_err();
    assert!(matches!(err, IpamError::NoPool { .. }), "{err}");
    // Nothing was written for the IPv4 half.
    assert!(ipam.store().get(&keys::handle("dual")).unwrap().is_none());
    assert!(ipam.store().range(keys::BLOCK_PREFIX).unwrap().is_empty());
    pool(ipam.store(), "v6", json!({"cidr": "fd00:10::/48"}));
    let a = ipam.assign(&req).unwrap();
    assert_eq!(a.addresses.len(), 2);
    assert_eq!(a.addresses[0].ip, ip("10.0.0.1"));
    assert_eq!(a.addresses[1].ip, ip("fd00:10::1"));
    assert_eq!(a.addresses[1].block, "fd00:10::/122".parse().unwrap());
    assert_eq!(ipam.release_handle("dual").unwrap().len(), 2);
    assert!(
        ipam.release_handle("dual").unwrap().is_empty(),
        "second release is a no-op"
    );
    assert_clean(&ipam);
}

#[test]
fn strict_affinity_and_max_blocks() {
    let s = MemoryStore::new();
    pool(&s, "tiny", json!({"cidr": "10.0.0.0/28", "blockSize": 29}));
    node(&s, "a", &[]);
    node(&s, "b", &[]);
    node(&s, "c", &[]);
    let ipam = Ipam::new(s);
    // a and b take one /29 each (the pool's edges are skipped: 7 usable per block).
    ipam.assign(&v4("a0", "a")).unwrap();
    ipam.assign(&v4("b0", "b")).unwrap();
    // c cannot claim a block: it borrows from a's block.
    let c = ipam.assign(&v4("c0", "c")).unwrap();
    assert_eq!(c.addresses[0].block, "10.0.0.0/29".parse().unwrap());
    let usage = ipam.usage().unwrap();
    assert_eq!(usage.pools[0].blocks[0].borrowed.len(), 1);
    ipam_config(ipam.store(), true, true, 0);
    let err = ipam.assign(&v4("c1", "c")).unwrap_err();
    assert!(
        err.to_string().contains("strictAffinity forbids borrowing"),
        "{err}"
    );
    // maxBlocksPerHost: a node limited to one block does not claim a second.
    let s = MemoryStore::new();
    pool(&s, "p", json!({"cidr": "10.1.0.0/24", "blockSize": 30}));
    node(&s, "a", &[]);
    ipam_config(&s, true, true, 1);
    let ipam = Ipam::new(s);
    // Block 10.1.0.0/30 holds .1, .2, .3 (.0 is the pool's network address).
    for h in ["x", "y", "z"] {
        ipam.assign(&v4(h, "a")).unwrap();
    }
    let err = ipam.assign(&v4("w", "a")).unwrap_err();
    assert!(err.to_string().contains("maxBlocksPerHost=1"), "{err}");
    ipam_config(ipam.store(), true, false, 0);
    let err = ipam.assign(&v4("w", "a")).unwrap_err();
    assert!(
        err.to_string().contains("autoAllocateBlocks is off"),
        "{err}"
    );
    assert_clean(&ipam);
}

#[test]
fn empty_blocks_are_released_but_one_stays_per_node() {
    let s = MemoryStore::new();
    pool(&s, "p", json!({"cidr": "10.0.0.0/24", "blockSize": 30}));
    node(&s, "a", &[]);
    let ipam = Ipam::new(s);
    // Fill two blocks (3 + 4 usable addresses).
    for i in 0..7 {
        ipam.assign(&v4(&format!("h{i}"), "a")).unwrap();
    }
    assert_eq!(ipam.store().range(&keys::blocks_of("a")).unwrap().len(), 2);
    for i in 0..7 {
        ipam.release_handle(&format!("h{i}")).unwrap();
    }
    assert_eq!(ipam.store().range(&keys::blocks_of("a")).unwrap().len(), 1);
    assert_clean(&ipam);
    // Deleting the node's affinity frees the remaining empty block.
    assert_eq!(ipam.release_node("a").unwrap(), 1);
    assert!(ipam.store().range(keys::BLOCK_PREFIX).unwrap().is_empty());
    assert!(ipam
        .store()
        .range(keys::POOL_INDEX_PREFIX)
        .unwrap()
        .is_empty());
}

#[test]
fn released_address_is_not_reused_at_once() {
    let ipam = racks();
    let a = ipam.assign(&v4("a", "kube-node-0")).unwrap().addresses[0].ip;
    ipam.release_handle("a").unwrap();
    let b = ipam.assign(&v4("b", "kube-node-0")).unwrap().addresses[0].ip;
    assert_ne!(a, b);
}

#[test]
fn affine_allocation_costs_two_round_trips() {
    let s = CountingStore::new(MemoryStore::new());
    pool(&s, "p", json!({"cidr": "10.0.0.0/16"}));
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    ipam.assign(&v4("first", "n1")).unwrap(); // claims the block
    for i in 0..20 {
        ipam.store().reset();
        ipam.assign(&v4(&format!("h{i}"), "n1")).unwrap();
        assert_eq!(ipam.store().round_trips(), 2, "allocation {i}");
    }
    ipam.store().reset();
    ipam.release_handle("h3").unwrap();
    assert_eq!(ipam.store().round_trips(), 3);
}

#[test]
fn large_pools_without_enumeration() {
    let s = MemoryStore::new();
    pool(&s, "big4", json!({"cidr": "10.0.0.0/8", "blockSize": 32}));
    pool(&s, "big6", json!({"cidr": "fd00:1::/48", "blockSize": 128}));
    node(&s, "n", &[]);
    let ipam = Ipam::new(s);
    let mut req = v4("h", "n");
    req.num_v6 = 1;
    let a = ipam.assign(&req).unwrap();
    // /32 blocks: the pool's network address block is skipped.
    assert_eq!(a.addresses[0].ip, ip("10.0.0.1"));
    assert_eq!(a.addresses[1].ip, ip("fd00:1::1"));
    let mut req = v4("fixed", "n");
    req.num_v4 = 0;
    req.ips = vec![
        ip("10.255.255.254"),
        ip("fd00:1:0:ffff:ffff:ffff:ffff:ffff"),
    ];
    ipam.assign(&req).unwrap();
    assert_clean(&ipam);
}

#[test]
fn concurrent_nodes_never_share_an_address() {
    let s = Arc::new(MemoryStore::new());
    pool(&*s, "p", json!({"cidr": "10.0.0.0/20", "blockSize": 28}));
    pool(&*s, "p6", json!({"cidr": "fd00::/112", "blockSize": 124}));
    for n in 0..20 {
        node(&*s, &format!("n{n}"), &[]);
    }
    let threads: Vec<_> = (0..20)
        .map(|n| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let ipam = Ipam::new(s);
                let mut out = Vec::new();
                for i in 0..40 {
                    let mut req = v4(&format!("n{n}-{i}"), &format!("n{n}"));
                    req.num_v6 = 1;
                    out.extend(
                        ipam.assign(&req)
                            .unwrap()
                            .addresses
                            .into_iter()
                            .map(|a| a.ip),
                    );
                }
                out
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for addr in t.join().unwrap() {
            assert!(all.insert(addr), "{addr} handed out twice");
        }
    }
    assert_eq!(all.len(), 20 * 40 * 2);
    assert_clean(&Ipam::new(s));
}

#[test]
fn pools_replaced_under_running_workloads_never_double_allocate() {
    // Rack pools: workloads hold addresses of the default /16 pool when it is deleted and the
    // rack pools are created inside it. Existing addresses stay; new blocks avoid old ones.
    let s = MemoryStore::new();
    pool(
        &s,
        "default-ipv4-ippool",
        json!({"cidr": "192.168.0.0/16", "ipipMode": "Always", "natOutgoing": true}),
    );
    node(&s, "kube-node-0", &[("rack", "0")]);
    let ipam = Ipam::new(s);
    let old = ipam.assign(&v4("old", "kube-node-0")).unwrap().addresses[0].clone();
    assert_eq!(old.block, "192.168.0.0/26".parse().unwrap());
    ipam.store()
        .txn(
            &[],
            &[tessera_core::store::Op::Delete(keys::pool(
                "default-ipv4-ippool",
            ))],
        )
        .unwrap();
    pool(
        ipam.store(),
        "rack-0-ippool",
        json!({"cidr": "192.168.0.0/24", "blockSize": 27, "nodeSelector": "rack == \"0\""}),
    );
    let new = ipam.assign(&v4("new", "kube-node-0")).unwrap().addresses[0].clone();
    assert_eq!(
        new.block,
        "192.168.0.64/27".parse().unwrap(),
        "the old /26 is avoided"
    );
    let fixed = AssignRequest {
        handle: "fixed".into(),
        node: "kube-node-0".into(),
        ips: vec![ip("192.168.0.9")],
        ..Default::default()
    };
    assert!(matches!(
        ipam.assign(&fixed).unwrap_err(),
        IpamError::LeftoverBlock { .. }
    ));
    let lookup = ipam.lookup(old.ip).unwrap().unwrap();
    assert_eq!(lookup.allocation.unwrap().handle, "old");
    let report = ipam.check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("no IPPool defines any more")),
        "{:#?}",
        report.notes
    );
    // Once the old workload is gone, its block and index disappear.
    ipam.release_handle("old").unwrap();
    assert!(ipam
        .store()
        .get(&keys::block("kube-node-0", &old.block))
        .unwrap()
        .is_none());
    let fixed_now = ipam.assign(&fixed).unwrap();
    assert_eq!(fixed_now.addresses[0].ip, ip("192.168.0.9"));
    assert_clean(&ipam);
}

#[test]
fn an_existing_block_of_a_later_pool_is_used_before_claiming_in_an_earlier_one() {
    // As Calico does: the node's blocks with room come before a new block claim.
    let s = MemoryStore::new();
    pool(&s, "first", json!({"cidr": "10.1.0.0/24", "blockSize": 26}));
    pool(
        &s,
        "second",
        json!({"cidr": "10.2.0.0/24", "blockSize": 26}),
    );
    node(&s, "n", &[]);
    let ipam = Ipam::new(s);
    let mut req = v4("h1", "n");
    req.pools = vec!["second".into()];
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].pool, "second");
    req.handle = "h2".into();
    req.pools = vec!["first".into(), "second".into()];
    assert_eq!(ipam.assign(&req).unwrap().addresses[0].pool, "second");
}

#[test]
fn ipv6_pools_keep_their_subnet_router_anycast_address_back() {
    let s = MemoryStore::new();
    pool(&s, "v6", json!({"cidr": "fd00:5::/120", "blockSize": 122}));
    pool(
        &s,
        "tiny",
        json!({"cidr": "fd00:6::/127", "blockSize": 127}),
    );
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    let v6 = |h: &str, pool: &str| AssignRequest {
        handle: h.into(),
        node: "n1".into(),
        num_v6: 1,
        pools: vec![pool.into()],
        ..Default::default()
    };
    // RFC 4291 §2.6.1: the first address of the prefix is the subnet-router anycast address.
    let a = ipam.assign(&v6("a", "v6")).unwrap();
    assert_eq!(a.addresses[0].ip, ip("fd00:5::1"));
    let mut fixed = v6("b", "v6");
    fixed.num_v6 = 0;
    fixed.ips = vec![ip("fd00:5::")];
    let err = ipam.assign(&fixed).unwrap_err();
    assert!(matches!(err, IpamError::AddressUnusable { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "address fd00:5:: is the subnet-router anycast address (RFC 4291) of pool \"v6\" and \
         is never handed out"
    );
    // Every other address, the last one included, is handed out: 255 in all.
    for i in 0..254 {
        ipam.assign(&v6(&format!("h{i}"), "v6")).unwrap();
    }
    let err = ipam.assign(&v6("full", "v6")).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    // A /127 is a point-to-point link (RFC 6164): both of its addresses are used.
    let got: Vec<IpAddr> = ["p1", "p2"]
        .iter()
        .map(|h| ipam.assign(&v6(h, "tiny")).unwrap().addresses[0].ip)
        .collect();
    assert_eq!(got, [ip("fd00:6::"), ip("fd00:6::1")]);
    assert_clean(&ipam);
}

/// A request that holds its network's gateway, the first address of the pool or block.
fn with_gateway(mut req: AssignRequest, per_block: bool) -> AssignRequest {
    req.gateway = Some(GatewayHold {
        handle: "net:gateway".into(),
        attrs: Attributes {
            gateway_of: Some("net".into()),
            ..Default::default()
        },
        per_block,
        configured: Vec::new(),
    });
    req
}

fn gateway_addresses<S: Store>(ipam: &Ipam<S>) -> Vec<IpAddr> {
    let rec = ipam
        .handle("net:gateway")
        .unwrap()
        .expect("the gateway is held");
    rec.addresses.iter().map(|a| a.ip).collect()
}

#[test]
fn a_pool_gateway_is_held_once_and_costs_no_round_trip() {
    let s = CountingStore::new(MemoryStore::new());
    pool(&s, "p", json!({"cidr": "10.0.0.0/16"}));
    node(&s, "n1", &[]);
    node(&s, "n2", &[]);
    let ipam = Ipam::new(s);
    let req = |h: &str, n: &str| with_gateway(v4(h, n), false);
    // The first request takes the first block, gives the pod the next address and holds the
    // gateway in the same transaction.
    let a = ipam.assign(&req("first", "n1")).unwrap();
    assert_eq!(a.addresses[0].ip, ip("10.0.0.2"));
    assert_eq!(gateway_addresses(&ipam), [ip("10.0.0.1")]);
    // Another node's block: the gateway lies in n1's block, and its handle says it is held.
    ipam.assign(&req("other", "n2")).unwrap();
    for (node, i) in [("n1", 0), ("n2", 1), ("n1", 2), ("n2", 3)] {
        ipam.store().reset();
        let a = ipam.assign(&req(&format!("h{i}"), node)).unwrap();
        assert_ne!(a.addresses[0].ip, ip("10.0.0.1"));
        assert_eq!(ipam.store().round_trips(), 2, "allocation {i} on {node}");
    }
    assert_eq!(gateway_addresses(&ipam), [ip("10.0.0.1")]);
    // Releasing every pod leaves the gateway held.
    for h in ["first", "other", "h0", "h1", "h2", "h3"] {
        ipam.release_handle(h).unwrap();
    }
    assert_eq!(gateway_addresses(&ipam), [ip("10.0.0.1")]);
    assert_clean(&ipam);
}

#[test]
fn block_gateways_are_held_in_their_blocks() {
    let s = MemoryStore::new();
    pool(&s, "p", json!({"cidr": "10.0.0.0/24", "blockSize": 29}));
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    let mut got = Vec::new();
    // Two /29 blocks: the first loses the pool's network address and its gateway .1, the
    // second its gateway .9.
    for i in 0..12 {
        let req = with_gateway(v4(&format!("h{i}"), "n1"), true);
        got.push(ipam.assign(&req).unwrap().addresses[0].ip);
    }
    assert_eq!(
        got[..6],
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"].map(ip)
    );
    // A block's own network address is handed out, as in Calico.
    assert_eq!(got[6..8], [ip("10.0.0.8"), ip("10.0.0.10")]);
    assert_eq!(gateway_addresses(&ipam), [ip("10.0.0.1"), ip("10.0.0.9")]);
    assert_clean(&ipam);
}

#[test]
fn a_gateway_held_by_a_pod_fails_the_request_and_writes_nothing() {
    let s = MemoryStore::new();
    pool(&s, "p", json!({"cidr": "10.0.0.0/24"}));
    node(&s, "n1", &[]);
    let ipam = Ipam::new(s);
    let mut pod = v4("pod", "n1");
    pod.num_v4 = 0;
    pod.ips = vec![ip("10.0.0.1")];
    ipam.assign(&pod).unwrap();
    let before = ipam.store().range("").unwrap();
    let err = ipam
        .assign(&with_gateway(v4("h", "n1"), false))
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::GatewayInUse { ip: g, handle } if *g == ip("10.0.0.1") && handle == "pod"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "gateway 10.0.0.1, which the main plugin puts on the host side, is already in use by \
         handle \"pod\", so it cannot be the gateway"
    );
    assert_eq!(ipam.store().range("").unwrap(), before);
    // A reserved gateway needs no hold.
    reservation(ipam.store(), "gw", &["10.0.0.1"]);
    ipam.release_handle("pod").unwrap();
    ipam.assign(&with_gateway(v4("h", "n1"), false)).unwrap();
    assert!(ipam.handle("net:gateway").unwrap().is_none());
    assert_clean(&ipam);
}
