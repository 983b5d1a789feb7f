//! A node cache directory that another user controls. A user who can write the cache
//! directory (or the datastore's subdirectory, or plant a symbolic link for a view file) could
//! hand the plugin a forged view: one with the right configuration guard, node record and
//! blocks, so every compare of the commit holds, but without the IPReservation that keeps
//! the node's gateway addresses out of use. The plugin must refuse such a cache, log why, and
//! allocate from the datastore as if there were no cache.
//!
//! Runs against a real etcd on 127.0.0.1. Without an etcd binary these tests print why and
//! pass, except under `CI=true`, where they fail.

#![cfg(feature = "etcd")]

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Att, Env};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::Ipam;
use tessera_store::local_etcd::LocalEtcd;

/// The addresses the reservation keeps for the node's router and services: in use outside
/// Tessera, so handing one to a pod makes a duplicate address on the network.
const RESERVED: &str = "10.22.0.0/29";

/// The user the attacker runs as (`nobody`).
const ATTACKER: u32 = 65534;

fn conf(env: &Env, etcd: &LocalEtcd, cache_dir: &Path) -> Value {
    let mut c = env.conf("1.0.0", json!({}));
    c["ipam"]["datastore"] = json!(etcd.url());
    c["ipam"]["cache_dir"] = json!(cache_dir.to_str().unwrap());
    c["ipam"]["log_level"] = json!("warning");
    c
}

fn apply(etcd: &LocalEtcd, doc: Value) {
    let doc = decode_document(doc).unwrap();
    Catalog::new(&etcd.store()).apply(&[doc]).unwrap();
}

fn pool_with_reserved_gateways(etcd: &LocalEtcd) {
    apply(
        etcd,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "p1"}, "spec": {"cidr": "10.22.0.0/24", "blockSize": 26}}),
    );
    apply(
        etcd,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
        "metadata": {"name": "gateways"}, "spec": {"reservedCIDRs": [RESERVED]}}),
    );
}

/// The one view file under `base` (`<datastore dir>/node-*.json`), as a path relative to
/// `base`.
fn view_file(base: &Path) -> PathBuf {
    let sub = std::fs::read_dir(base).unwrap().next().unwrap().unwrap();
    let view = std::fs::read_dir(sub.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("node-")
        })
        .expect("a node view file");
    view.strip_prefix(base).unwrap().to_path_buf()
}

/// The view the plugin wrote with the reservation moved: every record the commit compares
/// (guard, node, blocks) is genuine, only the configuration it plans from is not. The block's
/// cursor stands after the first pod's address, so the forged reservation covers the rest of
/// the block and the search wraps around to the gateway addresses.
fn forged_view(genuine: &Path) -> Vec<u8> {
    let mut view: Value = serde_json::from_slice(&std::fs::read(genuine).unwrap()).unwrap();
    let config = view["config"].as_array_mut().unwrap();
    let kv = config
        .iter_mut()
        .find(|kv| kv["key"].as_str().unwrap().contains("reservations/"))
        .expect("the view holds the reservation");
    let mut record: Value = serde_json::from_str(kv["value"].as_str().unwrap()).unwrap();
    record["spec"]["reservedCIDRs"] = json!(["10.22.0.8/29", "10.22.0.16/28", "10.22.0.32/27"]);
    kv["value"] = json!(record.to_string());
    serde_json::to_vec(&view).unwrap()
}

/// Makes `path` writable by everyone and, when running as root, owned by the attacker.
fn hand_to_attacker(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if is_root() {
        chown(path, Some(ATTACKER), Some(ATTACKER)).unwrap();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// How the attacker gets the forged view in front of the plugin.
#[derive(Clone, Copy, Debug)]
enum Plant {
    /// Creates the whole cache directory before the plugin does.
    CacheDir,
    /// Creates the datastore's subdirectory inside the plugin's own cache directory.
    DatastoreDir,
    /// Links the view file to a file of its own.
    Symlink,
}

/// Sets up `evil` as `how` says, holding `forged` where the plugin looks for the view.
fn plant(how: Plant, evil: &Path, view: &Path, forged: &[u8], outside: &Path) {
    let sub = evil.join(view.parent().unwrap());
    let target = evil.join(view);
    match how {
        Plant::CacheDir => {
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(&target, forged).unwrap();
            hand_to_attacker(evil, 0o777);
            hand_to_attacker(&sub, 0o777);
            hand_to_attacker(&target, 0o666);
        }
        Plant::DatastoreDir => {
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::set_permissions(evil, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::write(&target, forged).unwrap();
            hand_to_attacker(&sub, 0o777);
            hand_to_attacker(&target, 0o666);
        }
        Plant::Symlink => {
            std::fs::create_dir_all(&sub).unwrap();
            for dir in [evil, &sub] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
            let file = outside.join("forged-view.json");
            std::fs::write(&file, forged).unwrap();
            hand_to_attacker(&file, 0o666);
            symlink(&file, &target).unwrap();
        }
    }
}

fn attack(how: Plant) {
    let Some(etcd) = LocalEtcd::start_or_skip(&format!("planted node cache ({how:?})")) else {
        return;
    };
    pool_with_reserved_gateways(&etcd);
    let env = Env::new();
    // The plugin's own cache shows where a view lives and what it holds.
    let good = env.dir().join("good");
    let first = env.cni("ADD", &conf(&env, &etcd, &good), Some(&Att::new("c0")));
    assert_eq!(first.addresses(), ["10.22.0.8/24"]);
    let view = view_file(&good);
    let forged = forged_view(&good.join(&view));

    let evil = env.dir().join("evil");
    let outside = tempfile::tempdir().unwrap();
    plant(how, &evil, &view, &forged, outside.path());
    let planted = std::fs::read(evil.join(&view)).unwrap();

    let run = env.cni("ADD", &conf(&env, &etcd, &evil), Some(&Att::new("c1")));
    let got = run.addresses();
    assert_eq!(got.len(), 1, "{run:?}");
    let ip: Ipv4Addr = common::addr(&got[0]).parse().unwrap();
    let reserved: Ipv4Net = RESERVED.parse().unwrap();
    assert!(
        !reserved.contains(&ip),
        "{how:?}: the planted view handed out reserved address {ip}, in use by the node's \
         gateway"
    );
    assert_eq!(got, ["10.22.0.9/24"], "{how:?}");
    match how {
        Plant::CacheDir | Plant::DatastoreDir => {
            let refused = match how {
                Plant::CacheDir => evil.clone(),
                _ => evil.join(view.parent().unwrap()),
            };
            let logged = format!(
                "WARN ADD tnet c1/eth0: node cache not used: {} is not safe for the node \
                 cache: it ",
                refused.display()
            );
            assert!(
                run.stderr.contains(&logged),
                "{how:?}: the refusal must be logged as {logged:?}: {}",
                run.stderr
            );
            // Nothing was written into a directory the attacker controls.
            assert_eq!(std::fs::read(evil.join(&view)).unwrap(), planted, "{how:?}");
        }
        Plant::Symlink => {
            // The plugin's own directory: the link is replaced, never written through.
            let file = outside.path().join("forged-view.json");
            assert_eq!(std::fs::read(file).unwrap(), forged);
            assert!(!std::fs::symlink_metadata(evil.join(&view))
                .unwrap()
                .is_symlink());
        }
    }
    let report = Ipam::new(etcd.store()).check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn a_cache_directory_planted_by_another_user_is_not_used() {
    attack(Plant::CacheDir);
}

#[test]
fn a_datastore_directory_planted_by_another_user_is_not_used() {
    attack(Plant::DatastoreDir);
}

#[test]
fn a_view_file_that_is_a_symbolic_link_is_not_followed() {
    attack(Plant::Symlink);
}
