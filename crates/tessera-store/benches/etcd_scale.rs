//! Allocator scale on one local etcd, started by the benchmark itself on 127.0.0.1.
//!
//! Run with `cargo bench -p tessera-store --features etcd --bench etcd_scale`; options
//! (after `--`): `--nodes N`, `--allocations N`, `--threads N` (simulated hosts working at
//! once, each with its own etcd connection), `--shared-client` (all threads share one store),
//! `--cache on|off|both` (whether each simulated node keeps its view in a node cache
//! directory, as the CNI plugin does on etcd; default both, one after the other),
//! `--skip-small`, `--skip-large`.
//!
//! 1. Spiderpool's published shape: 10 nodes allocate 100 addresses each, all at once.
//! 2. 100,000 allocations across 1,000 nodes, then their releases, next to the raw write
//!    ceiling of the same etcd measured by the same number of threads writing one key per
//!    txn. Reports throughput, latency percentiles, round trips and CAS conflicts per
//!    operation, and which records the conflicts were on; the bytes each kind of record
//!    put (the history etcd keeps until compaction), and etcd's backend size after the
//!    assign phase, before and after `etcdctl compact` + `defrag`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::cache::DirNodeCache;
use tessera_core::ipam::{AssignRequest, Attributes, Ipam};
use tessera_core::keys;
use tessera_core::store::CountingStore;
use tessera_store::local_etcd::LocalEtcd;
use tessera_store::{
    Compare, EtcdStore, Op, OpenOptions, Read, Snapshot, Store, StoreError, TxnOutcome,
};

struct Args {
    nodes: usize,
    allocations: usize,
    threads: usize,
    shared_client: bool,
    /// Node cache modes to run, in order (false: no cache, true: a cache directory).
    caches: Vec<bool>,
    small: bool,
    large: bool,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1000,
        allocations: 100_000,
        threads: 32,
        shared_client: false,
        caches: vec![false, true],
        small: true,
        large: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--nodes" => a.nodes = num("--nodes"),
            "--allocations" => a.allocations = num("--allocations"),
            "--threads" => a.threads = num("--threads"),
            "--shared-client" => a.shared_client = true,
            "--cache" => {
                a.caches = match it.next().as_deref() {
                    Some("on") => vec![true],
                    Some("off") => vec![false],
                    Some("both") => vec![false, true],
                    _ => panic!("--cache needs on, off or both"),
                }
            }
            "--skip-small" => a.small = false,
            "--skip-large" => a.large = false,
            // cargo bench passes --bench.
            _ => {}
        }
    }
    a
}

/// Counts, per kind of record, the compares that failed in conflicting txns. Finding the
/// culprit costs one extra read per conflict, which is not counted as a round trip.
#[derive(Default)]
struct ConflictLog {
    by_kind: Mutex<BTreeMap<&'static str, u64>>,
    /// Txns that wrote something, and the value bytes they put.
    writes: AtomicU64,
    put_bytes: AtomicU64,
    /// Committed puts per kind of record: (puts, value bytes).
    committed_puts: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

impl ConflictLog {
    /// Mean value bytes put by one writing txn, since the last call.
    fn take_mean_put_bytes(&self) -> usize {
        let writes = self.writes.swap(0, Ordering::Relaxed).max(1);
        (self.put_bytes.swap(0, Ordering::Relaxed) / writes) as usize
    }
}

struct Probe<S> {
    inner: S,
    log: Arc<ConflictLog>,
}

fn kind(key: &str) -> &'static str {
    for (prefix, kind) in [
        (keys::POOL_INDEX_PREFIX, "pool-index/<tiling>/<shard>"),
        (keys::BLOCK_PREFIX, "blocks/<node>/<block>"),
        (keys::HANDLE_PREFIX, "handles/<id>"),
        (keys::NODE_PREFIX, "nodes/<node>"),
        (keys::NAMESPACE_PREFIX, "namespaces/<ns>"),
        (keys::CONFIG_PREFIX, "config/..."),
    ] {
        if key.starts_with(prefix) {
            return kind;
        }
    }
    "other"
}

impl<S: Store> Store for Probe<S> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.inner.read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let out = self.inner.txn(compares, ops)?;
        if matches!(out, TxnOutcome::Committed(_)) {
            let mut by_kind = self.log.committed_puts.lock().unwrap();
            for op in ops {
                if let Op::Put(k, v) = op {
                    let entry = by_kind.entry(kind(k)).or_default();
                    entry.0 += 1;
                    entry.1 += v.len() as u64;
                }
            }
        }
        if !ops.is_empty() {
            let bytes: usize = ops
                .iter()
                .map(|op| match op {
                    Op::Put(_, v) => v.len(),
                    Op::Delete(_) => 0,
                })
                .sum();
            self.log.writes.fetch_add(1, Ordering::Relaxed);
            self.log
                .put_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if out == TxnOutcome::Conflict {
            let reads: Vec<Read> = compares.iter().map(|c| Read::Get(c.key().into())).collect();
            if let Ok(snap) = self.inner.read(&reads) {
                let mut log = self.log.by_kind.lock().unwrap();
                for (i, c) in compares.iter().enumerate() {
                    if !c.holds(snap.get(i)) {
                        *log.entry(kind(c.key())).or_default() += 1;
                    }
                }
            }
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn put_all(store: &dyn Store, records: Vec<(String, serde_json::Value)>) {
    for chunk in records.chunks(100) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|(k, v)| Op::Put(k.clone(), serde_json::to_vec(v).unwrap()))
            .collect();
        store.txn(&[], &ops).unwrap();
    }
}

/// The pool through the catalog, as `tessera apply` writes it (with the configuration
/// guard), then the nodes.
fn seed(store: &dyn Store, pool_cidr: &str, nodes: usize) {
    let pool = decode_document(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": "bench"},
           "spec": {"cidr": pool_cidr, "blockSize": 26}}),
    )
    .expect("bench pool");
    Catalog::new(store)
        .apply(&[pool])
        .expect("creating the pool");
    let mut records = Vec::new();
    for n in 0..nodes {
        records.push((
            keys::node(&format!("node-{n}")),
            json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                   "metadata": {"name": format!("node-{n}"), "labels": {"rack": (n % 10).to_string()}}}),
        ));
    }
    put_all(store, records);
}

fn request(run: &str, n: usize, node: usize) -> AssignRequest {
    AssignRequest {
        handle: format!("{run}.{n}"),
        node: format!("node-{node}"),
        num_v4: 1,
        attrs: Attributes {
            namespace: Some("default".into()),
            pod: Some(format!("pod-{n}")),
            interface: Some("eth0".into()),
            container_id: Some(format!("{n:064x}")),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// PID of the etcd member, for its CPU time.
static ETCD_PID: AtomicU64 = AtomicU64::new(0);

/// CPU time (user + system) used so far by a process, from `/proc/PID/stat`.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// CPU used by this process and by etcd.
#[derive(Clone, Copy)]
struct Cpu {
    client: Duration,
    etcd: Duration,
}

fn cpu_now() -> Cpu {
    Cpu {
        client: cpu_time("self"),
        etcd: cpu_time(&ETCD_PID.load(Ordering::Relaxed).to_string()),
    }
}

/// What one phase measured.
struct Measured {
    ops: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    round_trips: u64,
    conflicts: u64,
    /// CPU used during the phase: (client, etcd).
    cpu: (Duration, Duration),
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
    fn report(&mut self, what: &str, ceiling: Option<f64>) {
        let (p50, p99) = (self.pct(0.50), self.pct(0.99));
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / self.ops as f64;
        print!(
            "| {what} | {} | {:.2} s | {:.0}/s | {:.2} ms | {:.2} ms | {:.3} | {:.4} | {:.0} µs | {:.0} µs |",
            self.ops,
            self.wall.as_secs_f64(),
            self.rate(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            self.round_trips as f64 / self.ops as f64,
            self.conflicts as f64 / self.ops as f64,
            per_op(self.cpu.0),
            per_op(self.cpu.1),
        );
        match ceiling {
            Some(c) => println!(" {:.0}% |", 100.0 * self.rate() / c),
            None => println!(" |"),
        }
    }
}

/// Where a scenario keeps its records: the local etcd, under a key prefix of its own so that
/// no scenario sees what another left behind.
struct Db {
    url: String,
    prefix: String,
}

fn open(db: &Db) -> EtcdStore {
    EtcdStore::open(
        &db.url,
        &OpenOptions {
            etcd_prefix: Some(db.prefix.clone()),
            ..Default::default()
        },
    )
    .expect("local etcd URL")
}

/// Operations, latencies, round trips and conflicts of one thread.
type ThreadResult = (usize, Vec<Duration>, u64, u64);

/// Runs `work(thread, store)` on `threads` threads at once, each with its own counted store
/// (or all sharing one), and sums what they measured. With `cache`, every allocator keeps
/// node views in that directory.
fn run_threads<F>(
    url: &Db,
    threads: usize,
    shared: bool,
    cache: Option<&Path>,
    log: &Arc<ConflictLog>,
    work: F,
) -> Measured
where
    F: Fn(usize, &Ipam<&CountingStore<Probe<Arc<EtcdStore>>>>, &mut Vec<Duration>) -> usize + Sync,
{
    let shared_store = Arc::new(open(url));
    let barrier = Barrier::new(threads + 1);
    let results: Mutex<Vec<ThreadResult>> = Mutex::new(Vec::new());
    let start = std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, results, work, shared_store) = (&barrier, &results, &work, &shared_store);
            let log = log.clone();
            s.spawn(move || {
                let etcd = if shared {
                    shared_store.clone()
                } else {
                    Arc::new(open(url))
                };
                // Connect before the clock starts, as a long-running node daemon would be.
                etcd.read(&[]).expect("warm-up read");
                let store = CountingStore::new(Probe { inner: etcd, log });
                let mut ipam = Ipam::new(&store);
                if let Some(dir) = cache {
                    ipam = ipam.with_cache(DirNodeCache::open(dir, &url.prefix).expect("cache"));
                }
                let mut lat = Vec::new();
                barrier.wait();
                let ops = work(t, &ipam, &mut lat);
                results
                    .lock()
                    .unwrap()
                    .push((ops, lat, store.round_trips(), store.conflicts()));
            });
        }
        barrier.wait();
        (Instant::now(), cpu_now())
    });
    let (start, cpu0) = start;
    let wall = start.elapsed();
    let cpu1 = cpu_now();
    let mut m = Measured {
        ops: 0,
        wall,
        latencies: Vec::new(),
        round_trips: 0,
        conflicts: 0,
        cpu: (cpu1.client - cpu0.client, cpu1.etcd - cpu0.etcd),
    };
    for (ops, lat, rt, conflicts) in results.into_inner().unwrap() {
        m.ops += ops;
        m.latencies.extend(lat);
        m.round_trips += rt;
        m.conflicts += conflicts;
    }
    m
}

/// The raw write ceiling: `threads` threads, each with its own connection, each committing
/// one-key txns (a value the size of a block record) as fast as etcd takes them.
fn raw_ceiling(url: &Db, threads: usize, shared: bool, total: usize, bytes: usize) -> Measured {
    let value = vec![b'x'; bytes];
    let next = AtomicU64::new(0);
    let shared_store = Arc::new(open(url));
    let barrier = Barrier::new(threads + 1);
    let lat_all = Mutex::new(Vec::new());
    let start = std::thread::scope(|s| {
        for _ in 0..threads {
            let (barrier, next, value, lat_all, shared_store) =
                (&barrier, &next, &value, &lat_all, &shared_store);
            s.spawn(move || {
                let store = if shared {
                    shared_store.clone()
                } else {
                    Arc::new(open(url))
                };
                store.read(&[]).expect("warm-up read");
                let mut lat = Vec::new();
                barrier.wait();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total as u64 {
                        break;
                    }
                    let t = Instant::now();
                    store
                        .txn(&[], &[Op::Put(format!("raw/{i}"), value.clone())])
                        .expect("raw put");
                    lat.push(t.elapsed());
                }
                lat_all.lock().unwrap().extend(lat);
            });
        }
        barrier.wait();
        (Instant::now(), cpu_now())
    });
    let (start, cpu0) = start;
    let wall = start.elapsed();
    let cpu1 = cpu_now();
    Measured {
        ops: total,
        wall,
        latencies: lat_all.into_inner().unwrap(),
        round_trips: total as u64,
        conflicts: 0,
        cpu: (cpu1.client - cpu0.client, cpu1.etcd - cpu0.etcd),
    }
}

/// The snapshot read an allocation starts with (configuration, node, the node's blocks,
/// handle, namespace), repeated without the txn: what the read half of an allocation costs.
fn read_only(url: &Db, a: &Args, per_thread_nodes: &[Vec<usize>]) -> Measured {
    let log = Arc::new(ConflictLog::default());
    let per_thread = 20_000 / a.threads;
    run_threads(
        url,
        a.threads,
        a.shared_client,
        None,
        &log,
        |t, ipam, lat| {
            let nodes = &per_thread_nodes[t];
            for i in 0..per_thread {
                let node = format!("node-{}", nodes[i % nodes.len()]);
                let reads = [
                    Read::Prefix(keys::CONFIG_PREFIX.into()),
                    Read::Get(keys::node(&node)),
                    Read::Prefix(keys::blocks_of(&node)),
                    Read::Get(keys::handle(&format!("large.{i}"))),
                    Read::Get(keys::namespace("default")),
                ];
                let start = Instant::now();
                ipam.store().read(&reads).expect("read");
                lat.push(start.elapsed());
            }
            per_thread
        },
    )
}

fn header() {
    println!("| phase | ops | wall | rate | p50 | p99 | round trips/op | CAS conflicts/op | client CPU/op | etcd CPU/op | of raw ceiling |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_conflicts(log: &ConflictLog) {
    let mut by_kind = log.by_kind.lock().unwrap();
    if by_kind.is_empty() {
        println!("conflicting compares: none");
    } else {
        let parts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("conflicting compares by record: {}", parts.join(", "));
    }
    by_kind.clear();
}

/// Runs `op(node, n)` `per_node` times for each of `nodes`, one node after the other in
/// every round, timing each call; `n = node * per_node + round` numbers the handles.
/// Returns how many calls it made.
fn timed_rounds(
    nodes: &[usize],
    per_node: usize,
    lat: &mut Vec<Duration>,
    mut op: impl FnMut(usize, usize),
) -> usize {
    for round in 0..per_node {
        for &node in nodes {
            let start = Instant::now();
            op(node, node * per_node + round);
            lat.push(start.elapsed());
        }
    }
    nodes.len() * per_node
}

/// What a run with or without the node cache is called in the output.
fn mode_name(cache: bool) -> &'static str {
    if cache {
        "node cache"
    } else {
        "no cache"
    }
}

fn small(url: &Db, shared: bool, cache: Option<&Path>) {
    const NODES: usize = 10;
    const PER_NODE: usize = 100;
    let setup = open(url);
    seed(&setup, "10.1.0.0/16", NODES);
    let log = Arc::new(ConflictLog::default());
    println!(
        "\n## 1. {NODES} nodes x {PER_NODE} allocations, all nodes at once, {}\n",
        mode_name(cache.is_some())
    );
    header();
    let mut m = run_threads(url, NODES, shared, cache, &log, |t, ipam, lat| {
        timed_rounds(&[t], PER_NODE, lat, |node, n| {
            ipam.assign(&request("small", n, node)).expect("assign");
        })
    });
    m.report("assign", None);
    print_conflicts(&log);
    println!(
        "\ntotal IPAM time for {} allocations: {:.3} s",
        m.ops,
        m.wall.as_secs_f64()
    );
    let check = Ipam::new(&setup).check().expect("check");
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let mut m = run_threads(url, NODES, shared, cache, &log, |t, ipam, lat| {
        timed_rounds(&[t], PER_NODE, lat, |_, n| {
            ipam.release_handle(&format!("small.{n}")).expect("release");
        })
    });
    header();
    m.report("release", None);
}

/// Committed puts per kind of record: (puts, value bytes).
type PutsByKind = BTreeMap<&'static str, (u64, u64)>;

/// One mode's assign and release phases of the large scenario, and what they wrote.
struct LargeRun {
    cache: bool,
    assign: Measured,
    release: Measured,
    assign_bytes: usize,
    release_bytes: usize,
    assign_puts: PutsByKind,
    release_puts: PutsByKind,
    /// etcd's (dbSize, dbSizeInUse) after the assign phase: as it was, then after a
    /// compaction at the current revision and a defragmentation.
    db_after_assign: Option<(DbSize, DbSize)>,
    assign_conflicts: BTreeMap<&'static str, u64>,
    release_conflicts: BTreeMap<&'static str, u64>,
}

fn large_run(db: &Db, a: &Args, per_thread_nodes: &[Vec<usize>], cache: bool) -> LargeRun {
    let setup = open(db);
    seed(&setup, "10.128.0.0/9", a.nodes);
    let per_node = a.allocations / a.nodes;
    let dir = cache_tempdir();
    let cache_dir = cache.then(|| dir.path());
    let log = Arc::new(ConflictLog::default());
    let assign = run_threads(
        db,
        a.threads,
        a.shared_client,
        cache_dir,
        &log,
        |t, ipam, lat| {
            timed_rounds(&per_thread_nodes[t], per_node, lat, |node, n| {
                ipam.assign(&request("large", n, node)).expect("assign");
            })
        },
    );
    let assign_conflicts = std::mem::take(&mut *log.by_kind.lock().unwrap());
    let assign_bytes = log.take_mean_put_bytes();
    let assign_puts = std::mem::take(&mut *log.committed_puts.lock().unwrap());
    let db_after_assign = compacted_db_size(&db.url);
    let release = run_threads(
        db,
        a.threads,
        a.shared_client,
        cache_dir,
        &log,
        |t, ipam, lat| {
            timed_rounds(&per_thread_nodes[t], per_node, lat, |_, n| {
                ipam.release_handle(&format!("large.{n}")).expect("release");
            })
        },
    );
    let release_conflicts = std::mem::take(&mut *log.by_kind.lock().unwrap());
    let release_puts = std::mem::take(&mut *log.committed_puts.lock().unwrap());
    let check = Ipam::new(&setup).check().expect("check");
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    LargeRun {
        cache,
        assign,
        release,
        assign_bytes,
        release_bytes: log.take_mean_put_bytes(),
        assign_puts,
        release_puts,
        db_after_assign,
        assign_conflicts,
        release_conflicts,
    }
}

/// A directory for node caches on a memory file system when there is one, as the CNI
/// plugin's default (`/run/tessera/ipam-cache`) is on most hosts.
fn cache_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("cache directory")
}

/// etcd's backend size: (dbSize, dbSizeInUse) in bytes, and the revision.
#[derive(Clone, Copy)]
struct DbSize {
    total: u64,
    in_use: u64,
    revision: i64,
}

/// The store's `etcd://host:port` as etcdctl takes it.
fn endpoint(url: &str) -> String {
    url.trim_start_matches("etcd://").to_string()
}

/// `etcdctl endpoint status -w json` of the benchmark's member.
fn db_size(url: &str) -> Option<DbSize> {
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &endpoint(url),
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = &status[0]["Status"];
    Some(DbSize {
        total: s["dbSize"].as_u64()?,
        in_use: s["dbSizeInUse"].as_u64()?,
        revision: s["header"]["revision"].as_i64()?,
    })
}

/// The backend size now, then after `etcdctl compact <current revision>` and `defrag`: how
/// much of it was history.
fn compacted_db_size(url: &str) -> Option<(DbSize, DbSize)> {
    let before = db_size(url)?;
    for args in [
        vec!["compact".to_string(), before.revision.to_string()],
        vec!["defrag".to_string()],
    ] {
        // A periodic compaction may have reached this revision already: not an error here.
        let _ = std::process::Command::new("etcdctl")
            .args(["--endpoints", &endpoint(url)])
            .args(&args)
            .env("ETCDCTL_API", "3")
            .output();
    }
    Some((before, db_size(url)?))
}

/// What one phase put, per kind of record: puts, bytes, bytes per operation of the phase.
fn puts_line(puts: &PutsByKind, ops: usize) -> String {
    let parts: Vec<String> = puts
        .iter()
        .map(|(kind, (n, bytes))| {
            format!(
                "{kind}: {n} puts, {:.1} MB ({:.0} B per put, {:.0} B per operation)",
                *bytes as f64 / 1e6,
                *bytes as f64 / (*n).max(1) as f64,
                *bytes as f64 / ops.max(1) as f64
            )
        })
        .collect();
    parts.join("; ")
}

fn conflicts_line(by_kind: &BTreeMap<&'static str, u64>) -> String {
    if by_kind.is_empty() {
        return "none".to_string();
    }
    let parts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    parts.join(", ")
}

fn large(db: &dyn Fn(&str) -> Db, a: &Args) {
    let per_thread_nodes: Vec<Vec<usize>> = (0..a.threads)
        .map(|t| (t..a.nodes).step_by(a.threads).collect())
        .collect();
    let total = (a.allocations / a.nodes) * a.nodes;
    println!(
        "\n## 2. {total} allocations across {} nodes, {} threads{}\n",
        a.nodes,
        a.threads,
        if a.shared_client {
            ", one shared client"
        } else {
            ", one client per thread"
        }
    );
    let raw_db = db("raw");
    let mut raw = raw_ceiling(&raw_db, a.threads, a.shared_client, 20_000.min(total), 700);
    header();
    raw.report("raw ceiling: 1-key txns of 700 B (warm-up)", None);

    let mut runs: Vec<LargeRun> = a
        .caches
        .iter()
        .map(|&cache| {
            let name = if cache { "large-cache" } else { "large" };
            large_run(&db(name), a, &per_thread_nodes, cache)
        })
        .collect();
    // The same etcd, the same clients, txns as large as the allocations' were: the write
    // ceiling for this payload.
    let bytes = runs.last().map_or(700, |r| r.assign_bytes);
    let mut matched = raw_ceiling(
        &raw_db,
        a.threads,
        a.shared_client,
        20_000.min(total),
        bytes,
    );
    let ceiling = matched.rate();
    matched.report(&format!("raw ceiling: 1-key txns of {bytes} B"), None);
    let last = if runs.last().is_some_and(|r| r.cache) {
        "large-cache"
    } else {
        "large"
    };
    let mut reads = read_only(&db(last), a, &per_thread_nodes);
    reads.report("the allocation's snapshot read alone", None);
    for run in &mut runs {
        let name = mode_name(run.cache);
        run.assign.report(&format!("assign, {name}"), Some(ceiling));
        run.release
            .report(&format!("release, {name}"), Some(ceiling));
    }
    println!();
    for run in &runs {
        let name = mode_name(run.cache);
        println!(
            "{name}: mean bytes put per writing txn: assign {} B, release {} B",
            run.assign_bytes, run.release_bytes
        );
        println!(
            "{name}: assign conflicting compares by record: {}",
            conflicts_line(&run.assign_conflicts)
        );
        println!(
            "{name}: release conflicting compares by record: {}",
            conflicts_line(&run.release_conflicts)
        );
        println!(
            "{name}: assign committed puts by record: {}",
            puts_line(&run.assign_puts, run.assign.ops)
        );
        println!(
            "{name}: release committed puts by record: {}",
            puts_line(&run.release_puts, run.release.ops)
        );
        if let Some((before, after)) = run.db_after_assign {
            println!(
                "{name}: etcd after the assign phase (revision {}): dbSize {:.1} MB, dbSizeInUse \
                 {:.1} MB; after compact + defrag: dbSize {:.1} MB, dbSizeInUse {:.1} MB",
                before.revision,
                before.total as f64 / 1e6,
                before.in_use as f64 / 1e6,
                after.total as f64 / 1e6,
                after.in_use as f64 / 1e6
            );
        }
    }
}

fn main() {
    let a = args();
    // As a production cluster runs: old revisions compacted away (the Kubernetes API server
    // compacts every 5 minutes), and room for the history a 100,000-allocation run writes.
    let etcd = LocalEtcd::start_with_args(
        1,
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=30s",
            "--quota-backend-bytes=8589934592",
        ],
    )
    .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
    let url = etcd.url();
    ETCD_PID.store(u64::from(etcd.pid(0).unwrap_or(0)), Ordering::Relaxed);
    let db = |scenario: &str| Db {
        url: url.clone(),
        prefix: format!("/bench-{scenario}/"),
    };
    println!(
        "# Tessera allocator on etcd\n\netcd {} at {url}, data in {}; {} CPUs",
        etcd_version(),
        etcd.dir().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if a.small {
        for &cache in &a.caches {
            let dir = cache_tempdir();
            let name = if cache { "small-cache" } else { "small" };
            small(&db(name), a.shared_client, cache.then(|| dir.path()));
        }
    }
    if a.large {
        large(&db, &a);
    }
}

fn etcd_version() -> String {
    let bin = tessera_store::local_etcd::binary().unwrap_or_default();
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_else(|| "?".into())
}
