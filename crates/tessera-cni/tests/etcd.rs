//! The plugin against a real etcd started on 127.0.0.1: ADD and DEL through the node cache,
//! with the cache turned off, and with a cache directory that cannot be used.
//!
//! Without an etcd binary these tests print why and pass, except under `CI=true`, where they
//! fail.

#![cfg(feature = "etcd")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Att, Env};
use serde_json::{json, Value};
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::Ipam;
use tessera_store::local_etcd::LocalEtcd;

fn conf(env: &Env, etcd: &LocalEtcd, cache_dir: &str) -> Value {
    let mut c = env.conf("1.0.0", json!({}));
    c["ipam"]["datastore"] = json!(etcd.url());
    c["ipam"]["cache_dir"] = json!(cache_dir);
    c
}

fn with_pool(etcd: &LocalEtcd) {
    let pool = decode_document(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "p1"}, "spec": {"cidr": "10.22.0.0/24", "blockSize": 26}}),
    )
    .unwrap();
    Catalog::new(&etcd.store()).apply(&[pool]).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn assert_clean(etcd: &LocalEtcd) {
    let report = Ipam::new(etcd.store()).check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn add_and_del_go_through_the_node_cache() {
    let Some(etcd) = LocalEtcd::start_or_skip("cni add and del through the node cache") else {
        return;
    };
    with_pool(&etcd);
    let env = Env::new();
    let cache = env.dir().join("cache");
    let conf = conf(&env, &etcd, cache.to_str().unwrap());
    let mut seen = BTreeSet::new();
    for i in 0..5 {
        let run = env.cni("ADD", &conf, Some(&Att::new(&format!("c{i}"))));
        for a in run.addresses() {
            assert!(seen.insert(a.clone()), "{a} handed out twice");
        }
    }
    let files = files_in(&cache);
    assert_eq!(
        files.iter().filter(|f| f.starts_with("node-")).count(),
        1,
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.starts_with("handle-")).count(),
        5,
        "{files:?}"
    );
    for p in walk(&cache) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    // A change made with the catalog behind the cache's back is honoured at once.
    let reserve = decode_document(json!({"apiVersion": "projectcalico.org/v3",
        "kind": "IPReservation", "metadata": {"name": "r"},
        "spec": {"reservedCIDRs": ["10.22.0.6/31"]}}))
    .unwrap();
    Catalog::new(&etcd.store()).apply(&[reserve]).unwrap();
    let run = env.cni("ADD", &conf, Some(&Att::new("c5")));
    assert_eq!(run.addresses(), ["10.22.0.8/24"]);

    for i in 0..6 {
        let run = env.cni("DEL", &conf, Some(&Att::new(&format!("c{i}"))));
        assert_eq!(run.status, 0, "{}", run.stderr);
    }
    let files = files_in(&cache);
    assert!(files.iter().all(|f| !f.starts_with("handle-")), "{files:?}");
    assert_eq!(Ipam::new(etcd.store()).usage().unwrap().pools[0].in_use, 0);
    assert_clean(&etcd);
    // Deleting the cache is always safe.
    std::fs::remove_dir_all(&cache).unwrap();
    env.cni("ADD", &conf, Some(&Att::new("c9"))).ok();
    assert_clean(&etcd);
}

#[test]
fn the_cache_can_be_turned_off_and_an_unusable_one_is_skipped() {
    let Some(etcd) = LocalEtcd::start_or_skip("cni without a usable node cache") else {
        return;
    };
    with_pool(&etcd);
    let env = Env::new();
    let off = conf(&env, &etcd, "");
    env.cni("ADD", &off, Some(&Att::new("c1"))).ok();
    // A cache path below a regular file cannot be created: the ADD works all the same.
    let file = env.dir().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let mut broken = conf(&env, &etcd, file.join("cache").to_str().unwrap());
    broken["ipam"]["log_level"] = json!("warning");
    let run = env.cni("ADD", &broken, Some(&Att::new("c2")));
    run.ok();
    assert!(run.stderr.contains("node cache"), "{}", run.stderr);
    for c in ["c1", "c2"] {
        assert_eq!(env.cni("DEL", &off, Some(&Att::new(c))).status, 0);
    }
    assert_eq!(Ipam::new(etcd.store()).usage().unwrap().pools[0].in_use, 0);
    assert_clean(&etcd);
}

#[test]
fn concurrent_and_killed_adds_on_one_node_share_the_cache_safely() {
    use std::time::{Duration, Instant};
    const PROCESSES: usize = 32;
    let Some(etcd) = LocalEtcd::start_or_skip("concurrent cni adds through one cache") else {
        return;
    };
    with_pool(&etcd);
    let env = Env::new();
    let cache = env.dir().join("cache");
    let conf = conf(&env, &etcd, cache.to_str().unwrap());
    let atts: Vec<Att> = (0..PROCESSES)
        .map(|i| Att::new(&format!("k{i:02}")))
        .collect();
    // Warm the cache, then start every process before waiting for any; every fourth is
    // killed a little after its start, the others race for the same block through the view.
    env.cni("ADD", &conf, Some(&Att::new("warm"))).ok();
    let children: Vec<_> = atts
        .iter()
        .map(|att| (env.spawn("ADD", &conf, att), Instant::now()))
        .collect();
    let mut answered = Vec::new();
    for (i, (mut child, started)) in children.into_iter().enumerate() {
        if i % 4 == 0 {
            let delay = Duration::from_micros((i as u64 * 7919) % 8_000);
            if let Some(left) = (started + delay).checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
            let _ = child.kill();
        }
        let out = common::wait_bounded(child, common::RUN_LIMIT);
        if out.status.success() {
            let result: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
            let ip = result["ips"][0]["address"].as_str().unwrap().to_string();
            answered.push((atts[i].clone(), ip));
        } else {
            assert!(
                i % 4 == 0,
                "ADD {i} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let distinct: BTreeSet<&String> = answered.iter().map(|(_, ip)| ip).collect();
    assert_eq!(
        distinct.len(),
        answered.len(),
        "an address was handed out twice"
    );
    assert_clean(&etcd);
    // GC releases what the killed ADDs committed before dying; DEL the rest.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = answered
        .iter()
        .map(|(att, _)| json!({"containerID": att.cid, "ifname": "eth0"}))
        .collect();
    gc["cni.dev/valid-attachments"]
        .as_array_mut()
        .unwrap()
        .push(json!({"containerID": "warm", "ifname": "eth0"}));
    let run = env.cni("GC", &gc, None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let usage = Ipam::new(etcd.store()).usage().unwrap();
    assert_eq!(usage.pools[0].in_use as usize, answered.len() + 1);
    for (att, _) in &answered {
        assert_eq!(env.cni("DEL", &conf, Some(att)).status, 0);
    }
    env.cni("DEL", &conf, Some(&Att::new("warm")));
    assert_eq!(Ipam::new(etcd.store()).usage().unwrap().pools[0].in_use, 0);
    assert_clean(&etcd);
}

#[test]
fn a_full_etcd_is_its_own_error_code_with_what_to_do() {
    let Some(etcd) =
        LocalEtcd::with_args_or_skip(&["--quota-backend-bytes", "262144"], "cni on a full etcd")
    else {
        return;
    };
    with_pool(&etcd);
    etcd.fill_until_refused();
    let env = Env::new();
    let run = env.cni("ADD", &conf(&env, &etcd, ""), Some(&Att::new("c1")));
    let msg = run.err(108);
    for needle in [
        "is full",
        "etcdctl compact",
        "etcdctl alarm disarm",
        "--quota-backend-bytes",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing: {msg}");
    }
}
