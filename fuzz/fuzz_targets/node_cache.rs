//! The CNI plugin's node cache files, damaged or crafted: the node view (the input up to the
//! first NUL) and a handle file (the rest) replace the files a real allocation wrote. The
//! allocator then assigns and releases through them. Nothing panics, no address is handed out
//! twice, every address comes from the pool, and `ipam check` finds the store consistent:
//! the cache is only ever a guess that the store's compares verify.

#![no_main]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::cache::DirNodeCache;
use tessera_core::ipam::{AssignRequest, Ipam};
use tessera_core::keys;
use tessera_core::store::{MemoryStore, Op, Store};
use tessera_fuzz::split_at_nul;

const POOL: &str = "10.0.0.0/24";
const GUARD: &[u8] = br#"{"nonce":"fuzz"}"#;

fn request(handle: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: "n1".into(),
        num_v4: 1,
        ..Default::default()
    }
}

/// The one cache file whose name starts with `prefix`.
fn file_of(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
}

fuzz_target!(|data: &[u8]| {
    let (view_bytes, handle_bytes) = split_at_nul(data);
    let store = MemoryStore::new();
    let docs = [
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "p"}, "spec": {"cidr": POOL, "blockSize": 29}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
               "metadata": {"name": "n1", "labels": {"rack": "0"}}}),
    ];
    let resources: Vec<_> = docs
        .into_iter()
        .map(|d| decode_document(d).unwrap())
        .collect();
    Catalog::new(&store).apply(&resources).unwrap();
    // The guard's nonce is random; a fixed one lets the seed view's compares hold, so the
    // fuzzer starts from views the allocator really plans from.
    store
        .txn(&[], &[Op::Put(keys::CONFIG_GUARD.into(), GUARD.to_vec())])
        .unwrap();
    let base = tempfile::tempdir().unwrap();
    let cache = DirNodeCache::open(base.path(), "fuzz").unwrap();
    let dir = cache.dir().to_path_buf();
    let ipam = Ipam::new(&store).with_cache(cache);
    let first = ipam.assign(&request("h0")).unwrap();

    // Replace what the first request cached with the input.
    if let Some(view) = file_of(&dir, "node-") {
        std::fs::write(view, view_bytes).unwrap();
    }
    if let Some(handle) = file_of(&dir, "handle-") {
        std::fs::write(handle, handle_bytes).unwrap();
    }

    let mut held: BTreeSet<_> = first.addresses.iter().map(|a| a.ip).collect();
    for handle in ["h1", "h2"] {
        if let Ok(done) = ipam.assign(&request(handle)) {
            for a in done.addresses {
                assert!(held.insert(a.ip), "{} handed out twice", a.ip);
                assert!(
                    POOL.parse::<ipnet::IpNet>().unwrap().contains(&a.ip),
                    "{}",
                    a.ip
                );
            }
        }
    }
    let _ = ipam.release_handle("h0");
    let _ = ipam.assign(&request("h3"));
    let report = Ipam::new(&store).check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
});
