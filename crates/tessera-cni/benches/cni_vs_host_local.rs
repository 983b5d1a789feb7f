//! `tessera-ipam` (SQLite store) against Debian's `host-local`, run alternately in one
//! process so that both see the same machine load.
//!
//! ```text
//! cargo bench -p tessera-cni --bench cni_vs_host_local
//! BENCH_PAIRS=1000 cargo bench -p tessera-cni --bench cni_vs_host_local
//! BENCH_ETCD=1 cargo bench -p tessera-cni --bench cni_vs_host_local
//! ```
//!
//! For each plugin it measures, as a runtime sees it (spawn, write stdin, wait): VERSION
//! (process start-up alone), ADD, DEL, and ADD+DEL pairs; then the wall time of 100 ADD
//! processes started at once. Prints medians, p99 and the Tessera/host-local ratio.
//!
//! With `BENCH_ETCD=1` the same runs also go to `tessera-ipam` on a local etcd member
//! (started on 127.0.0.1 by the bench), once without and once with the node cache.
//!
//! `tessera k8s` is `tessera-ipam` on SQLite with a `kubernetes` section: each ADD reads its
//! pod and namespace from a canned API server on 127.0.0.1 (plain HTTP, token file). With
//! `BENCH_TESSERA_BASE=/path/to/tessera-ipam` another build of the plugin (say, of the
//! previous commit) runs alongside as `tessera base`, on SQLite without that section.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_documents;
use tessera_k8s_lookup::testing::{namespace_json, pod_json, write_kubeconfig, FakeApiServer};
use tessera_store::SqliteStore;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera-ipam");
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
/// Index of host-local in the plugin list: the baseline of every ratio.
const BASELINE: usize = 1;
const CONCURRENT: usize = 100;
const WARMUP: usize = 20;

struct Plugin {
    name: &'static str,
    binary: PathBuf,
    conf: String,
}

impl Plugin {
    fn spawn(&self, verb: &str, cid: &str) -> Child {
        let mut child = Command::new(&self.binary)
            .env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/var/run/netns/{cid}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.conf.as_bytes());
        child
    }

    fn finish(&self, child: Child, verb: &str) {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{} {verb} failed: {} {}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One invocation, timed from spawn to exit.
    fn time(&self, verb: &str, cid: &str) -> Duration {
        let start = Instant::now();
        let child = self.spawn(verb, cid);
        self.finish(child, verb);
        start.elapsed()
    }
}

#[derive(Default)]
struct Samples {
    version: Vec<Duration>,
    add: Vec<Duration>,
    del: Vec<Duration>,
    pair: Vec<Duration>,
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The bench pool, written through the catalog as `tessera apply` would.
fn apply_pool(store: &dyn tessera_core::store::Store) {
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                      "metadata": {"name": "bench"},
                      "spec": {"cidr": "10.100.0.0/16", "blockSize": 26}});
    Catalog::new(store)
        .apply(&decode_documents(pool).expect("manifest"))
        .expect("apply pool");
}

/// The configuration of one Tessera variant; each allocates for a node of its own, so no
/// variant changes another's blocks.
fn tessera_conf(datastore: &str, node: &str, extra: serde_json::Value) -> String {
    let mut ipam = json!({"type": "tessera-ipam", "datastore": datastore, "nodename": node});
    if let (Some(m), serde_json::Value::Object(extra)) = (ipam.as_object_mut(), extra) {
        m.extend(extra);
    }
    json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": ipam}).to_string()
}

/// A SQLite store of its own in `dir` named `name`, for node `node`.
fn setup_tessera(dir: &Path, name: &str, node: &str) -> String {
    let db = dir.join(format!("{name}.db"));
    apply_pool(&SqliteStore::open(&db).expect("open store"));
    tessera_conf(db.to_str().unwrap(), node, json!({}))
}

/// The container ids the bench uses: the pairs, then the bursts.
fn container_ids(pairs: usize) -> impl Iterator<Item = String> {
    let pair_ids = (0..WARMUP + pairs).map(|i| format!("pair{i}"));
    let burst_ids =
        (0..3).flat_map(|round| (0..CONCURRENT).map(move |i| format!("burst{round}x{i}")));
    pair_ids.chain(burst_ids)
}

/// An API server serving every bench pod (named after its container) and the namespace,
/// and a configuration reading them through a kubeconfig in `dir`.
fn setup_tessera_k8s(dir: &Path, pairs: usize) -> (FakeApiServer, String) {
    let server = FakeApiServer::start();
    server.set_namespace(&namespace_json("bench", &[("team", "bench")], &[]));
    for cid in container_ids(pairs) {
        server.set_pod(&pod_json("bench", &cid, &format!("uid-{cid}"), &[], &[]));
    }
    let kubeconfig = write_kubeconfig(dir, &server.url(), "bench-token");
    let mut conf: serde_json::Value =
        serde_json::from_str(&setup_tessera(dir, "tessera-k8s", "k8s-node")).expect("conf");
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig.to_str().unwrap()});
    (server, conf.to_string())
}

fn setup_host_local(dir: &Path) -> String {
    json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
           "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.101.0.0/16"}]],
                    "dataDir": dir.join("host-local").to_str().unwrap()}})
    .to_string()
}

fn concurrent_adds(plugin: &Plugin, round: usize) -> Duration {
    let cids: Vec<String> = (0..CONCURRENT)
        .map(|i| format!("burst{round}x{i}"))
        .collect();
    let start = Instant::now();
    let children: Vec<Child> = cids.iter().map(|cid| plugin.spawn("ADD", cid)).collect();
    for child in children {
        plugin.finish(child, "ADD");
    }
    let took = start.elapsed();
    for cid in &cids {
        plugin.finish(plugin.spawn("DEL", cid), "DEL");
    }
    took
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new(HOST_LOCAL).exists() {
        eprintln!("{HOST_LOCAL} is missing: apt-get install containernetworking-plugins");
        std::process::exit(1);
    }
    let pairs: usize = std::env::var("BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_api_server, k8s_conf) = setup_tessera_k8s(dir.path(), pairs);
    let plugins = [
        Plugin {
            name: "tessera-ipam",
            binary: TESSERA.into(),
            conf: setup_tessera(dir.path(), "tessera", "bench-node"),
        },
        Plugin {
            name: "host-local",
            binary: HOST_LOCAL.into(),
            conf: setup_host_local(dir.path()),
        },
        Plugin {
            name: "tessera k8s",
            binary: TESSERA.into(),
            conf: k8s_conf,
        },
    ];
    let mut plugins = Vec::from(plugins);
    if let Some(base) = std::env::var_os("BENCH_TESSERA_BASE") {
        plugins.push(Plugin {
            name: "tessera base",
            binary: base.into(),
            conf: setup_tessera(dir.path(), "tessera-base", "base-node"),
        });
    }
    // Kept alive until the end of the run; dropping it stops etcd.
    let _etcd = if std::env::var_os("BENCH_ETCD").is_some() {
        let etcd = tessera_store::local_etcd::LocalEtcd::start()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        apply_pool(&etcd.store());
        // The cache on a memory file system, as the plugin's default /run/tessera is.
        let shm = Path::new("/dev/shm");
        let cache_base = if shm.is_dir() { shm } else { dir.path() };
        let cache = tempfile::tempdir_in(cache_base).expect("cache directory");
        plugins.push(Plugin {
            name: "tessera etcd",
            binary: TESSERA.into(),
            conf: tessera_conf(&etcd.url(), "etcd-node", json!({"cache_dir": ""})),
        });
        plugins.push(Plugin {
            name: "tessera etcd+cache",
            binary: TESSERA.into(),
            conf: tessera_conf(
                &etcd.url(),
                "etcd-cache-node",
                json!({"cache_dir": cache.path().to_str().unwrap()}),
            ),
        });
        Some((etcd, cache))
    } else {
        None
    };
    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    for i in 0..WARMUP + pairs {
        // Rotate which plugin goes first so none always runs on a warmer cache.
        let order = (0..plugins.len()).map(|k| (i + k) % plugins.len());
        for p in order {
            let plugin = &plugins[p];
            let cid = format!("pair{i}");
            let version = plugin.time("VERSION", &cid);
            let add = plugin.time("ADD", &cid);
            let del = plugin.time("DEL", &cid);
            if i >= WARMUP {
                let s = &mut samples[p];
                s.version.push(version);
                s.add.push(add);
                s.del.push(del);
                s.pair.push(add + del);
            }
        }
    }
    let bursts: Vec<Duration> = (0..3)
        .flat_map(|round| {
            let plugins = &plugins;
            (0..plugins.len()).map(move |p| (p, concurrent_adds(&plugins[p], round)))
        })
        .fold(
            vec![Duration::ZERO; plugins.len()],
            |mut best, (p, took)| {
                if best[p] == Duration::ZERO || took < best[p] {
                    best[p] = took;
                }
                best
            },
        );

    println!(
        "{pairs} ADD+DEL pairs per plugin, alternating, after {WARMUP} warm-up pairs; \
         {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<19} {:>14} {:>14} {:>14} {:>14} {:>14} {:>16}",
        "plugin",
        "VERSION p50",
        "ADD p50",
        "DEL p50",
        "ADD+DEL p50",
        "ADD+DEL p99",
        "100 ADDs at once"
    );
    for (p, plugin) in plugins.iter().enumerate() {
        let s = &samples[p];
        println!(
            "{:<19} {:>14} {:>14} {:>14} {:>14} {:>14} {:>16}",
            plugin.name,
            ms(percentile(&s.version, 50.0)),
            ms(percentile(&s.add, 50.0)),
            ms(percentile(&s.del, 50.0)),
            ms(percentile(&s.pair, 50.0)),
            ms(percentile(&s.pair, 99.0)),
            ms(bursts[p]),
        );
    }
    for (t, plugin) in plugins.iter().enumerate().filter(|(t, _)| *t != BASELINE) {
        let ratio = |f: fn(&Samples) -> &Vec<Duration>, p: f64| {
            percentile(f(&samples[t]), p).as_secs_f64()
                / percentile(f(&samples[BASELINE]), p).as_secs_f64()
        };
        let who = if t == 0 {
            "tessera".to_string()
        } else {
            plugin.name.to_string()
        };
        println!(
            "ratio {who}/host-local: ADD+DEL median {:.2}x, p99 {:.2}x, ADD median {:.2}x, \
             100 concurrent ADDs {:.2}x",
            ratio(|s| &s.pair, 50.0),
            ratio(|s| &s.pair, 99.0),
            ratio(|s| &s.add, 50.0),
            bursts[t].as_secs_f64() / bursts[BASELINE].as_secs_f64()
        );
    }
}
