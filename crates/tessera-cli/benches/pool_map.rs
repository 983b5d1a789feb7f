//! How long the usage views take on a large store: 1,000 nodes in 20 racks, 100,000
//! addresses (100 per node, one handle each, as pods hold them) in a `/14` of `/26` blocks,
//! on SQLite. Times the real binary: `ipam show`, `ipam show --map`, `ipam show --map
//! --group-by rack`, `ipam report --html` and `plan --pool`, printing the median of several
//! runs.
//!
//! Run with `cargo bench -p tessera-cli --bench pool_map` (`POOL_MAP_RUNS=N` for more runs).

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_core::ipam::{AssignRequest, Attributes, Block, HandleAddress, HandleRecord, Ipam};
use tessera_core::keys;
use tessera_core::net::addr_in_block;
use tessera_core::store::{Op, Read, Store};

const NODES: usize = 1000;
const RACKS: usize = 20;
const ADDRESSES_PER_NODE: u32 = 100;
/// Records written per transaction while splitting the fill's handles.
const OPS_PER_TXN: usize = 5000;

fn main() {
    let runs: usize = std::env::var("POOL_MAP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("map.db");
    let started = Instant::now();
    fill(&db);
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    let total = NODES as u32 * ADDRESSES_PER_NODE;
    assert!(
        output(&db, &["ipam", "show"]).contains(&format!("| {total} (")),
        "the fill did not allocate {total} addresses"
    );
    let html = dir.path().join("report.html");
    let html = html.to_string_lossy();
    // The views measured, then for comparison the two that read every handle.
    let commands: [&[&str]; 7] = [
        &["ipam", "show"],
        &["ipam", "show", "--map"],
        &["ipam", "show", "--map", "--group-by", "rack"],
        &["ipam", "report", "--html", &html, "--group-by", "rack"],
        &["plan", "--pool", "pods"],
        &["ipam", "show", "--show-borrowed"],
        &["ipam", "check"],
    ];
    println!("| command | median of {runs} runs | min | max |\n|---|---|---|---|");
    for args in commands {
        let mut times: Vec<Duration> = (0..runs).map(|_| time(&db, args)).collect();
        times.sort();
        println!(
            "| `tessera {}` | {:.0} ms | {:.0} ms | {:.0} ms |",
            args.join(" ").replace(&*html, "report.html"),
            ms(times[runs / 2]),
            ms(times[0]),
            ms(times[runs - 1])
        );
    }
    let size = std::fs::metadata(&*html).expect("report written").len();
    println!("report: {:.1} MB", size as f64 / 1e6);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long one run of the real binary takes.
fn time(db: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    output(db, args);
    started.elapsed()
}

/// Standard output of one run of the real binary, which must succeed.
fn output(db: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--datastore")
        .arg(db)
        .args(args)
        .env_remove("TESSERA_DATASTORE")
        .stdin(Stdio::null())
        .output()
        .expect("run tessera");
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pool and the nodes, then 100 addresses per node through the allocator (one request
/// each), then each address moved to a handle of its own by direct record writes.
fn fill(db: &Path) {
    let store = tessera_store::open(&db.to_string_lossy()).expect("open store");
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "pods"}, "spec": {"cidr": "10.0.0.0/14", "blockSize": 26}});
    let mut ops = vec![Op::Put(keys::pool("pods"), pool.to_string().into_bytes())];
    for n in 0..NODES {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name(n), "labels": {"rack": format!("r{}", n % RACKS)}}});
        ops.push(Op::Put(
            keys::node(&node_name(n)),
            node.to_string().into_bytes(),
        ));
    }
    store.txn(&[], &ops).expect("write pool and nodes");
    let ipam = Ipam::new(&*store);
    for n in 0..NODES {
        ipam.assign(&AssignRequest {
            handle: format!("fill.{n}"),
            node: node_name(n),
            num_v4: ADDRESSES_PER_NODE,
            ..Default::default()
        })
        .expect("assign");
    }
    split_handles(&*store);
}

fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

/// Gives every address its own handle, as one per pod.
fn split_handles(store: &dyn Store) {
    let snap = store
        .read(&[
            Read::Prefix(keys::BLOCK_PREFIX.into()),
            Read::Prefix(keys::HANDLE_PREFIX.into()),
        ])
        .expect("read blocks");
    let mut ops = Vec::new();
    for kv in snap.list(0) {
        let mut block: Block = serde_json::from_slice(&kv.value).expect("block");
        let node = block.affinity.clone();
        for (offset, handle) in block.allocations.iter_mut() {
            let ip: IpAddr = addr_in_block(&block.cidr, *offset);
            *handle = format!("k8s-pod-network.{ip}");
            let record = HandleRecord {
                id: handle.clone(),
                attrs: Attributes {
                    namespace: Some("default".into()),
                    pod: Some(format!("pod-{ip}")),
                    node: node.clone(),
                    interface: Some("eth0".into()),
                    ..Default::default()
                },
                addresses: vec![HandleAddress {
                    ip,
                    block: kv.key.clone(),
                }],
            };
            ops.push(Op::Put(
                keys::handle(handle),
                serde_json::to_vec(&record).unwrap(),
            ));
        }
        ops.push(Op::Put(kv.key.clone(), serde_json::to_vec(&block).unwrap()));
    }
    ops.extend(snap.list(1).iter().map(|kv| Op::Delete(kv.key.clone())));
    for chunk in ops.chunks(OPS_PER_TXN) {
        store.txn(&[], chunk).expect("write handles");
    }
}
