//! Allocator throughput on the memory store and on SQLite, plus store round trips per
//! operation. Addresses are spread over many nodes, as in a cluster (a node holds tens to a
//! few hundred pods). Run with `cargo bench -p tessera-store --bench allocator`.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput};
use serde_json::json;
use tessera_core::ipam::{AssignRequest, Ipam};
use tessera_core::keys;
use tessera_core::store::{CountingStore, MemoryStore, Op, Store};
use tessera_store::SqliteStore;

/// Nodes the allocations rotate over.
const NODES: u64 = 1000;

fn seed(store: &dyn Store) {
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "bench"},
        "spec": {"cidr": "10.0.0.0/8", "blockSize": 26, "nodeSelector": "rack == \"0\""}});
    let mut ops = vec![Op::Put(
        keys::pool("bench"),
        serde_json::to_vec(&pool).unwrap(),
    )];
    for n in 0..NODES {
        let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": format!("node-{n}"), "labels": {"rack": "0"}}});
        ops.push(Op::Put(
            keys::node(&format!("node-{n}")),
            serde_json::to_vec(&node).unwrap(),
        ));
    }
    store.txn(&[], &ops).unwrap();
}

fn request(n: u64) -> AssignRequest {
    AssignRequest {
        handle: format!("bench.{n}"),
        node: format!("node-{}", n % NODES),
        num_v4: 1,
        attrs: tessera_core::ipam::Attributes {
            namespace: Some("default".into()),
            pod: Some(format!("nginx-{n}")),
            interface: Some("eth0".into()),
            container_id: Some(format!("{n:064x}")),
            ..Default::default()
        },
        ..Default::default()
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn bench_store<S: Store>(c: &mut Criterion, name: &str, store: S) {
    seed(&store);
    let ipam = Ipam::new(store);
    let mut group = c.benchmark_group(format!("allocator/{name}"));
    group.throughput(Throughput::Elements(1));
    // Baseline: the store alone, one unconditional transaction writing a block-sized value.
    let value = vec![b'x'; 2048];
    group.bench_function("raw-put", |b| {
        b.iter(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let key = format!("bench/raw/{}", n % 4096);
            ipam.store()
                .txn(&[], &[Op::Put(key, value.clone())])
                .unwrap()
        })
    });
    group.bench_function("assign", |b| {
        b.iter(|| {
            ipam.assign(&request(NEXT.fetch_add(1, Ordering::Relaxed)))
                .unwrap()
        })
    });
    group.bench_function("assign+release", |b| {
        b.iter(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            ipam.assign(&request(n)).unwrap();
            ipam.release_handle(&format!("bench.{n}")).unwrap();
        })
    });
    group.finish();
}

/// Round trips per operation, counted over `n` operations on a fresh store.
fn round_trips<S: Store>(name: &str, store: S, n: u64) {
    let store = CountingStore::new(store);
    seed(&store);
    let ipam = Ipam::new(store);
    ipam.store().reset();
    let start = std::time::Instant::now();
    for i in 0..n {
        ipam.assign(&request(i)).unwrap();
    }
    let assign_time = start.elapsed();
    let assign_rt = ipam.store().round_trips() as f64 / n as f64;
    ipam.store().reset();
    let start = std::time::Instant::now();
    for i in 0..n {
        ipam.release_handle(&format!("bench.{i}")).unwrap();
    }
    let release_time = start.elapsed();
    let release_rt = ipam.store().round_trips() as f64 / n as f64;
    println!(
        "{name}: {n} assigns: {:.3} round trips each, {:.0} assigns/s; {n} releases: {:.3} round trips each, {:.0} releases/s",
        assign_rt,
        n as f64 / assign_time.as_secs_f64(),
        release_rt,
        n as f64 / release_time.as_secs_f64(),
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Criterion::default().configure_from_args();
    bench_store(&mut c, "memory", MemoryStore::new());
    let sqlite = SqliteStore::open(dir.path().join("bench.db")).expect("sqlite store");
    bench_store(&mut c, "sqlite", sqlite);
    c.final_summary();

    round_trips("memory", MemoryStore::new(), 10_000);
    let sqlite = SqliteStore::open(dir.path().join("rt.db")).expect("sqlite store");
    round_trips("sqlite", sqlite, 10_000);
}
