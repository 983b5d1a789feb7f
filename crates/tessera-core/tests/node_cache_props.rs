//! Properties of the node cache on disk: whatever a damaged or edited cache file holds (any
//! field of the node view or handle file replaced, record values included, or the file cut
//! short), the allocator never panics, never hands an address out twice, never hands out one
//! outside the pool, and leaves a store `ipam check` finds consistent. The cache is a guess
//! the store's compares verify.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{json, Value};
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_document;
use tessera_core::ipam::cache::DirNodeCache;
use tessera_core::ipam::{AssignRequest, Ipam};
use tessera_core::keys;
use tessera_core::store::{MemoryStore, Op, Store};

const POOL: &str = "10.0.0.0/24";

fn request(handle: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: "n1".into(),
        num_v4: 1,
        ..Default::default()
    }
}

/// A pool with 8-address blocks and node `n1`, under a fixed guard nonce.
fn store() -> MemoryStore {
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
    store
        .txn(
            &[],
            &[Op::Put(
                keys::CONFIG_GUARD.into(),
                br#"{"nonce":"n"}"#.to_vec(),
            )],
        )
        .unwrap();
    store
}

/// The one cache file whose name starts with `prefix`.
fn file_of(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} file in {}", dir.display()))
}

/// Scalars (and JSON record values held in strings, descended into) in document order.
fn count_leaves(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(count_leaves).sum(),
        Value::Array(a) => a.iter().map(count_leaves).sum(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(inner @ (Value::Object(_) | Value::Array(_))) => count_leaves(&inner),
            _ => 1,
        },
        _ => 1,
    }
}

/// Replaces leaf number `*target` (in [`count_leaves`] order) with `with`; true once done.
fn replace_leaf(v: &mut Value, target: &mut usize, with: &Value) -> bool {
    match v {
        Value::Object(m) => m.values_mut().any(|x| replace_leaf(x, target, with)),
        Value::Array(a) => a.iter_mut().any(|x| replace_leaf(x, target, with)),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(mut inner @ (Value::Object(_) | Value::Array(_))) => {
                let done = replace_leaf(&mut inner, target, with);
                if done {
                    *s = inner.to_string();
                }
                done
            }
            _ => replace_here(v, target, with),
        },
        _ => replace_here(v, target, with),
    }
}

fn replace_here(v: &mut Value, target: &mut usize, with: &Value) -> bool {
    if *target == 0 {
        *v = with.clone();
        return true;
    }
    *target -= 1;
    false
}

/// Values a damaged file may hold instead of the real ones: near misses of real keys,
/// addresses, handles and revisions, and plain nonsense.
fn replacement() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(7),
            json!(8),
            json!(1u64 << 40),
            json!(""),
            json!("n1"),
            json!("n2"),
            json!("h0"),
            json!("h1"),
            json!("10.0.0.0/29"),
            json!("10.0.0.8/29"),
            json!("10.0.0.0/16"),
            json!("10.0.0.1"),
            json!("blocks/n1/10.0.0.8-29"),
            json!("handles/h1"),
            json!(keys::CONFIG_GUARD),
            json!("{}"),
            json!({"1": "h1"}),
            json!([]),
        ]),
        ".{0,6}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

/// How one cache file is damaged: fields replaced, then maybe cut short.
#[derive(Clone, Debug)]
struct Damage {
    edits: Vec<(usize, Value)>,
    cut: Option<usize>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop::collection::vec((any::<usize>(), replacement()), 0..4),
        prop::option::weighted(0.1, any::<usize>()),
    )
        .prop_map(|(edits, cut)| Damage { edits, cut })
}

impl Damage {
    fn apply(&self, path: &Path) {
        let mut value: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for (choice, with) in &self.edits {
            let mut target = choice % count_leaves(&value).max(1);
            replace_leaf(&mut value, &mut target, with);
        }
        let mut bytes = serde_json::to_vec(&value).unwrap();
        if let Some(cut) = self.cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        std::fs::write(path, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn damaged_cache_files_never_cost_correctness(view in damage(), handle in damage()) {
        let store = store();
        let base = tempfile::tempdir().unwrap();
        let cache = DirNodeCache::open(base.path(), "props").unwrap();
        let dir = cache.dir().to_path_buf();
        let ipam = Ipam::new(&store).with_cache(cache);
        let first = ipam.assign(&request("h0")).unwrap();
        view.apply(&file_of(&dir, "node-"));
        handle.apply(&file_of(&dir, "handle-"));

        let pool: IpNet = POOL.parse().unwrap();
        let mut held: BTreeSet<_> = first.addresses.iter().map(|a| a.ip).collect();
        for h in ["h1", "h2"] {
            let done = ipam.assign(&request(h)).unwrap();
            for a in done.addresses {
                prop_assert!(held.insert(a.ip), "{} handed out twice", a.ip);
                prop_assert!(pool.contains(&a.ip), "{} is outside the pool", a.ip);
            }
        }
        let released = ipam.release_handle("h0").unwrap();
        prop_assert_eq!(released, vec![first.addresses[0].ip]);
        ipam.assign(&request("h3")).unwrap();
        let report = Ipam::new(&store).check().unwrap();
        prop_assert!(report.problems.is_empty(), "{:#?}", report.problems);
        prop_assert_eq!(report.handles, 3);
    }
}
