//! The allocator on a real etcd: many nodes allocating at once, nodes racing for one block,
//! and allocation across etcd outages and a lost cluster member.
//!
//! Each simulated node is a thread with its own store (its own connection), as separate
//! hosts would be; in the concurrency and outage tests every other node keeps a node cache. Without an etcd binary these tests print why and pass, except under
//! `CI=true`, where they fail.

#![cfg(feature = "etcd")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::json;
use tessera_core::ipam::cache::{DirNodeCache, MemoryNodeCache};
use tessera_core::ipam::{AssignRequest, Block, Ipam, IpamError};
use tessera_core::keys;
use tessera_store::local_etcd::LocalEtcd;
use tessera_store::{EtcdStore, Op, OpenOptions, Store, StoreError};

fn put_all(store: &dyn Store, records: Vec<(String, serde_json::Value)>) {
    // etcd allows 128 operations per txn by default.
    for chunk in records.chunks(100) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|(k, v)| Op::Put(k.clone(), serde_json::to_vec(v).unwrap()))
            .collect();
        store.txn(&[], &ops).unwrap();
    }
}

fn pool(name: &str, cidr: &str, block_size: u8, selector: &str) -> (String, serde_json::Value) {
    (
        keys::pool(name),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": name},
               "spec": {"cidr": cidr, "blockSize": block_size, "nodeSelector": selector}}),
    )
}

fn node(name: &str, labels: serde_json::Value) -> (String, serde_json::Value) {
    (
        keys::node(name),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
               "metadata": {"name": name, "labels": labels}}),
    )
}

fn ipam_config(strict: bool) -> (String, serde_json::Value) {
    (
        keys::IPAM_CONFIG.to_string(),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"},
               "spec": {"strictAffinity": strict, "autoAllocateBlocks": true,
                        "maxBlocksPerHost": 0}}),
    )
}

/// The configuration guard `tessera apply` keeps; with it, nodes can use a node cache.
fn guard() -> (String, serde_json::Value) {
    (
        keys::CONFIG_GUARD.to_string(),
        json!({"nonce": "etcd-ipam-test"}),
    )
}

/// Odd-numbered nodes keep a node cache, as CNI plugins on etcd do; even ones read every time.
fn allocator(store: EtcdStore, n: usize) -> Ipam<EtcdStore> {
    let ipam = Ipam::new(store);
    if n % 2 == 1 {
        ipam.with_cache(MemoryNodeCache::new())
    } else {
        ipam
    }
}

fn request(handle: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: 1,
        ..Default::default()
    }
}

/// Every block in the store, by key.
fn blocks(store: &dyn Store) -> Vec<(String, Block)> {
    store
        .range(keys::BLOCK_PREFIX)
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key.clone(), serde_json::from_slice(&kv.value).unwrap()))
        .collect()
}

fn block_ip(block: &Block, offset: u32) -> IpAddr {
    match block.cidr {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + offset).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(offset)).into()),
    }
}

/// Every allocated address with its handle, failing on any address held twice.
fn allocations(store: &dyn Store) -> BTreeMap<IpAddr, String> {
    let mut held = BTreeMap::new();
    for (key, block) in blocks(store) {
        for (offset, alloc) in &block.allocations {
            let ip = block_ip(&block, *offset);
            if let Some(other) = held.insert(ip, alloc.clone()) {
                panic!("{ip} is held twice: by {other} and by {} ({key})", alloc);
            }
        }
    }
    held
}

fn assert_consistent(store: &dyn Store) {
    let report = Ipam::new(store).check().unwrap();
    assert!(
        report.problems.is_empty(),
        "ipam check found problems: {:#?}",
        report.problems
    );
    let mut owners: BTreeMap<IpNet, String> = BTreeMap::new();
    for (key, block) in blocks(store) {
        if let Some(other) = owners.insert(block.cidr, key.clone()) {
            panic!("block {} exists twice: {other} and {key}", block.cidr);
        }
    }
}

/// 60 nodes in 3 racks, each rack with its own pool (nodeSelector on the rack label), all
/// allocating at once into /29 blocks so that every node claims several blocks while its
/// rack-mates race for the same pool index.
#[test]
fn sixty_nodes_allocate_at_once_across_rack_pools() {
    const NODES: usize = 60;
    const PER_NODE: usize = 12;
    let Some(etcd) = LocalEtcd::start_or_skip("sixty nodes") else {
        return;
    };
    let setup = etcd.store();
    let mut records = vec![ipam_config(true), guard()];
    for rack in 0..3 {
        records.push(pool(
            &format!("rack{rack}"),
            &format!("10.{rack}.0.0/22"),
            29,
            &format!("rack == \"{rack}\""),
        ));
    }
    for n in 0..NODES {
        records.push(node(
            &format!("node-{n}"),
            json!({"rack": (n % 3).to_string()}),
        ));
    }
    put_all(&setup, records);

    let barrier = Barrier::new(NODES);
    let results: Mutex<Vec<(String, String, IpAddr, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for n in 0..NODES {
            let (barrier, results, url) = (&barrier, &results, etcd.url());
            s.spawn(move || {
                let store = EtcdStore::open(&url, &OpenOptions::default()).unwrap();
                let ipam = allocator(store, n);
                let node = format!("node-{n}");
                barrier.wait();
                for p in 0..PER_NODE {
                    let handle = format!("{node}.pod-{p}");
                    let got = ipam
                        .assign(&request(&handle, &node))
                        .unwrap_or_else(|e| panic!("{handle}: {e}"));
                    let a = &got.addresses[0];
                    results
                        .lock()
                        .unwrap()
                        .push((node.clone(), handle, a.ip, a.pool.clone()));
                }
            });
        }
    });

    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), NODES * PER_NODE);
    let distinct: BTreeSet<IpAddr> = results.iter().map(|r| r.2).collect();
    assert_eq!(
        distinct.len(),
        results.len(),
        "an address was handed out twice"
    );
    for (node, handle, ip, pool) in &results {
        let rack = node.trim_start_matches("node-").parse::<usize>().unwrap() % 3;
        assert_eq!(
            pool,
            &format!("rack{rack}"),
            "{handle} got {ip} from {pool}"
        );
        let net: IpNet = format!("10.{rack}.0.0/22").parse().unwrap();
        assert!(net.contains(ip), "{handle} got {ip} outside its rack pool");
    }
    let held = allocations(&setup);
    for (_, handle, ip, _) in &results {
        assert_eq!(held.get(ip), Some(handle), "{ip} is not held by {handle}");
    }
    assert_eq!(held.len(), results.len());
    for (key, block) in blocks(&setup) {
        let owner = block.affinity.clone().expect("every block has an owner");
        let owner = owner.trim_start_matches("host:");
        let rack = owner.trim_start_matches("node-").parse::<usize>().unwrap() % 3;
        assert_eq!(block.pool.to_string(), format!("10.{rack}.0.0/22"), "{key}");
        assert!(
            key.contains(owner),
            "{key} is not stored under its owner {owner}"
        );
    }
    assert_consistent(&setup);
}

/// Two nodes ask for their first address at the same moment from a pool of exactly one
/// block, with strict affinity: one claims it, the other is told the pool is exhausted.
#[test]
fn two_nodes_racing_for_one_block_leave_one_owner() {
    let Some(etcd) = LocalEtcd::start_or_skip("block race") else {
        return;
    };
    let setup = etcd.store();
    let mut records = vec![
        ipam_config(true),
        node("a", json!({})),
        node("b", json!({})),
    ];
    const ROUNDS: usize = 8;
    for r in 0..ROUNDS {
        records.push(pool(
            &format!("p{r}"),
            &format!("10.9.{r}.0/28"),
            28,
            "all()",
        ));
    }
    put_all(&setup, records);
    for r in 0..ROUNDS {
        let barrier = Barrier::new(2);
        let outcomes: Vec<Result<IpAddr, IpamError>> = std::thread::scope(|s| {
            let workers: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|n| {
                    let (barrier, url) = (&barrier, etcd.url());
                    s.spawn(move || {
                        let ipam =
                            Ipam::new(EtcdStore::open(&url, &OpenOptions::default()).unwrap());
                        let mut req = request(&format!("{n}.{r}"), n);
                        req.pools = vec![format!("p{r}")];
                        // Warm the connection so both txns leave at the same moment.
                        ipam.store().read(&[]).unwrap();
                        barrier.wait();
                        ipam.assign(&req).map(|a| a.addresses[0].ip)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let won: Vec<_> = outcomes.iter().filter(|o| o.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {r}: {outcomes:?}");
        let lost = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
        assert!(
            matches!(lost, IpamError::Exhausted { .. }),
            "round {r}: {lost}"
        );
        let net: IpNet = format!("10.9.{r}.0/28").parse().unwrap();
        let owners: Vec<_> = blocks(&setup)
            .into_iter()
            .filter(|(_, b)| b.cidr == net)
            .map(|(_, b)| b.affinity)
            .collect();
        assert_eq!(owners.len(), 1, "round {r}: {owners:?}");
    }
    assert_consistent(&setup);
}

/// Nodes keep allocating while etcd is frozen (SIGSTOP), then killed and restarted. Calls
/// during the outage fail within the timeout with an error naming the endpoint; afterwards
/// allocation resumes and no address that was handed out before is handed out again.
#[test]
fn allocation_survives_frozen_and_restarted_etcd() {
    const NODES: usize = 6;
    let Some(mut etcd) = LocalEtcd::start_or_skip("etcd outage") else {
        return;
    };
    let timeout = Duration::from_millis(1500);
    let options = OpenOptions {
        etcd_timeout_ms: Some(timeout.as_millis() as u64),
        ..Default::default()
    };
    let setup = etcd.store();
    let mut records = vec![pool("all", "10.20.0.0/16", 26, "all()"), guard()];
    for n in 0..NODES {
        records.push(node(&format!("n{n}"), json!({})));
    }
    put_all(&setup, records);

    let phase = std::sync::atomic::AtomicUsize::new(0);
    let granted: Mutex<Vec<(String, IpAddr)>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<(Duration, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for n in 0..NODES {
            let (phase, granted, failures, url, options) =
                (&phase, &granted, &failures, etcd.url(), options.clone());
            s.spawn(move || {
                let ipam = allocator(EtcdStore::open(&url, &options).unwrap(), n);
                let mut i = 0;
                while phase.load(std::sync::atomic::Ordering::Acquire) < 4 {
                    let handle = format!("n{n}.{i}");
                    i += 1;
                    let start = Instant::now();
                    match ipam.assign(&request(&handle, &format!("n{n}"))) {
                        Ok(a) => granted.lock().unwrap().push((handle, a.addresses[0].ip)),
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push((start.elapsed(), e.to_string()));
                            assert!(e.is_transient(), "{e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let count = || granted.lock().unwrap().len();
        let wait_for_progress = |what: &str| {
            let before = count();
            let deadline = Instant::now() + Duration::from_secs(20);
            while count() < before + 3 * NODES {
                assert!(Instant::now() < deadline, "no allocations {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let set = |p| phase.store(p, std::sync::atomic::Ordering::Release);
        wait_for_progress("at the start");
        etcd.pause(0);
        set(1);
        std::thread::sleep(Duration::from_secs(3));
        etcd.resume(0);
        wait_for_progress("after SIGCONT");
        set(2);
        etcd.stop(0);
        std::thread::sleep(Duration::from_secs(2));
        etcd.restart(0).unwrap();
        set(3);
        wait_for_progress("after the restart");
        set(4);
    });

    let failures = failures.into_inner().unwrap();
    assert!(!failures.is_empty(), "the outages went unnoticed");
    eprintln!("{} calls failed during the outages, e.g.:", failures.len());
    let samples: BTreeSet<&str> = failures.iter().map(|f| f.1.as_str()).collect();
    for msg in samples.iter().take(4) {
        eprintln!("  {msg}");
    }
    for (took, msg) in &failures {
        assert!(
            *took < timeout + Duration::from_secs(2),
            "a failing call took {took:?}: {msg}"
        );
        assert!(
            msg.contains(&etcd.url()),
            "the error does not name the endpoint: {msg}"
        );
    }
    let granted = granted.into_inner().unwrap();
    let distinct: BTreeSet<IpAddr> = granted.iter().map(|g| g.1).collect();
    assert_eq!(
        distinct.len(),
        granted.len(),
        "an address was handed out twice"
    );
    let held = allocations(&setup);
    for (handle, ip) in &granted {
        assert_eq!(
            held.get(ip),
            Some(handle),
            "{ip} granted to {handle} is not held"
        );
    }
    assert_consistent(&setup);
}

/// A 3-member cluster loses one member (SIGKILL) while nodes allocate: allocation goes on.
#[test]
fn three_member_cluster_keeps_allocating_with_a_member_down() {
    const NODES: usize = 6;
    let Some(mut etcd) = LocalEtcd::cluster_or_skip(3, "three-member allocation") else {
        return;
    };
    let setup = etcd.store();
    let mut records = vec![pool("all", "10.30.0.0/16", 27, "all()")];
    for n in 0..NODES {
        records.push(node(&format!("n{n}"), json!({})));
    }
    put_all(&setup, records);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let granted: Mutex<Vec<(String, IpAddr)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..NODES)
            .map(|n| {
                let (stop, granted, url) = (&stop, &granted, etcd.url());
                s.spawn(move || {
                    let ipam = Ipam::new(EtcdStore::open(&url, &OpenOptions::default()).unwrap());
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        let handle = format!("n{n}.{i}");
                        i += 1;
                        match ipam.assign(&request(&handle, &format!("n{n}"))) {
                            Ok(a) => granted.lock().unwrap().push((handle, a.addresses[0].ip)),
                            Err(e) => return Err(format!("{handle}: {e}")),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let count = || granted.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(500));
        // Member 0 is the one every client starts with.
        etcd.stop(0);
        let at_stop = count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() < at_stop + 10 * NODES {
            assert!(
                Instant::now() < deadline,
                "allocation stalled with a member down"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        for w in workers {
            if let Err(e) = w.join().unwrap() {
                panic!("an allocation failed with one of three members down: {e}");
            }
        }
    });
    let granted = granted.into_inner().unwrap();
    let distinct: BTreeSet<IpAddr> = granted.iter().map(|g| g.1).collect();
    assert_eq!(
        distinct.len(),
        granted.len(),
        "an address was handed out twice"
    );
    let held = allocations(&setup);
    for (handle, ip) in &granted {
        assert_eq!(
            held.get(ip),
            Some(handle),
            "{ip} granted to {handle} is not held"
        );
    }
    assert_consistent(&setup);
}

#[test]
fn unavailable_is_transient_for_the_allocator() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store =
        EtcdStore::open(&format!("etcd://127.0.0.1:{port}"), &OpenOptions::default()).unwrap();
    let err = Ipam::new(store).assign(&request("h", "n")).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(err, IpamError::Store(StoreError::Unavailable { .. })),
        "{err}"
    );
}

/// An operator restores etcd from a snapshot while a node keeps its node cache. The restored
/// store hands out the revision numbers of the lost writes again, for other contents: the
/// node's cached view of its block must not pass for the block now stored under the same
/// revision. No address is handed out twice, and releases through the cache stay correct.
#[test]
fn restored_snapshot_under_a_node_cache_hands_out_no_address_twice() {
    let Some(mut etcd) = LocalEtcd::start_or_skip("snapshot restore") else {
        return;
    };
    let cache_dir = tempfile::tempdir().unwrap();
    // One allocator per request, as CNI plugin processes are; the cache lives on disk.
    let cached = |etcd: &LocalEtcd| {
        Ipam::new(etcd.store())
            .with_cache(DirNodeCache::open(cache_dir.path(), &etcd.url()).unwrap())
    };
    put_all(
        &etcd.store(),
        vec![
            ipam_config(true),
            guard(),
            pool("pods", "10.12.0.0/24", 28, "all()"),
        ],
    );
    let snapshot = etcd.dir().join("backup.db");
    etcd.save_snapshot(&snapshot).unwrap();

    let e1 = cached(&etcd).assign(&request("e1", "n1")).unwrap();
    cached(&etcd).assign(&request("e2", "n1")).unwrap();
    cached(&etcd).release_handle("e2").unwrap();

    etcd.restore_snapshot(&snapshot).unwrap();
    let plain = Ipam::new(etcd.store());
    let restored: BTreeSet<IpAddr> = (1..=3)
        .map(|i| {
            plain
                .assign(&request(&format!("y{i}"), "n1"))
                .unwrap()
                .addresses[0]
                .ip
        })
        .collect();

    let e3 = cached(&etcd).assign(&request("e3", "n1")).unwrap();
    assert!(
        !restored.contains(&e3.addresses[0].ip),
        "e3 got {} although the restored store gave it to a y handle ({restored:?})",
        e3.addresses[0].ip
    );
    // e1 is gone with the restore: releasing it through the cache releases nothing.
    assert_eq!(
        cached(&etcd).release_handle("e1").unwrap(),
        Vec::<IpAddr>::new()
    );
    let e4 = cached(&etcd).assign(&request("e4", "n1")).unwrap();
    let held = allocations(&etcd.store());
    for (ip, handle) in [(e3.addresses[0].ip, "e3"), (e4.addresses[0].ip, "e4")] {
        assert_eq!(held.get(&ip).map(String::as_str), Some(handle), "{held:?}");
    }
    assert_eq!(held.len(), 5, "{held:?} (e1 {:?})", e1.addresses);
    assert_consistent(&etcd.store());
}
