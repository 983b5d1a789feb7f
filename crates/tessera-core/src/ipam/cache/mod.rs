//! A node's last view of the records its allocations depend on, kept between requests.
//!
//! On a remote store (etcd) the read before every allocation costs the store about as much
//! as the write. A node's records change rarely behind its back: its blocks are written by
//! its own requests, and configuration, node and namespace records by administrators. So a
//! node keeps what its last request read and wrote (a [`NodeView`]) and the next request
//! plans from it without reading, and commits with compares on every record the plan relied
//! on: the configuration guard's nonce, the node and namespace records, and each block it
//! writes. If anything changed, the compare fails, nothing is written, and the request falls
//! back to the ordinary read. A view is only ever a guess; the compares make it safe.
//!
//! Every record the plan took from the view is compared by **value**, never by revision:
//! revision numbers are only meaningful within one history. An etcd restored from a snapshot,
//! rebuilt, or replaced by another cluster at the same address hands out the same revision
//! numbers again for different contents, while equal bytes mean an equal record in any
//! history. A plan is a function of the contents it read, so a commit whose value compares
//! hold is correct whatever happened to the store in between. Only "absent" compares (which
//! mean the same in every history) and compares on records read fresh by the same request
//! stay revision compares.
//!
//! An assign that needs more than the view holds (claiming a block, borrowing, marking a
//! block full) falls back to a fresh read. A release that empties a block or clears a full
//! flag reads what that decision needs (the pool index, the node's other blocks) and still
//! takes its blocks and handle from the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::store::{Compare, KeyValue, Op, Read, Snapshot, Store, StoreError, TxnOutcome};

#[cfg(unix)]
mod dir;
#[cfg(unix)]
pub use dir::{CacheDirError, DirNodeCache};

/// Version of the on-disk format; views of another version are ignored.
const FORMAT: u32 = 1;

/// One cached key-value. Values are the records' JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedKv {
    /// Store key.
    pub key: String,
    /// Stored value.
    pub value: String,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision that last wrote the key.
    pub mod_revision: i64,
}

impl CachedKv {
    /// The key-value as text, or `None` for a value that is not UTF-8 (never cached).
    pub fn from_kv(kv: &KeyValue) -> Option<Self> {
        Some(Self {
            key: kv.key.clone(),
            value: String::from_utf8(kv.value.clone()).ok()?,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    }

    /// Back to a store key-value.
    pub fn to_kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone().into_bytes(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }

    /// "The key still holds exactly this value."
    pub fn compare(&self) -> Compare {
        Compare::Value(self.key.clone(), self.value.clone().into_bytes())
    }
}

/// A store whose transactions compare the records a plan took from a node's view by value.
///
/// The planner compares every record it relied on at the revision it saw. For records that
/// came from a view, that revision belongs to the history the view was made in; this adapter
/// replaces each such compare (same key, same revision as the view's record) with a compare
/// of the view's bytes, so a commit can never succeed against a store whose history was
/// rewritten. Reads and every other compare pass through unchanged.
pub struct ByValue<'a, S: ?Sized> {
    store: &'a S,
    known: HashMap<&'a str, &'a CachedKv>,
}

impl<'a, S: Store + ?Sized> ByValue<'a, S> {
    /// `store`, with compares on `records` (taken from a view) made by value.
    pub fn new(store: &'a S, records: impl IntoIterator<Item = &'a CachedKv>) -> Self {
        Self {
            store,
            known: records
                .into_iter()
                .map(|kv| (kv.key.as_str(), kv))
                .collect(),
        }
    }

    fn harden(&self, compare: &Compare) -> Compare {
        match compare {
            Compare::ModRevision(key, rev) if *rev != 0 => match self.known.get(key.as_str()) {
                Some(kv) if kv.mod_revision == *rev => kv.compare(),
                _ => compare.clone(),
            },
            _ => compare.clone(),
        }
    }
}

impl<S: Store + ?Sized> Store for ByValue<'_, S> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.store.read(reads)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<Compare> = compares.iter().map(|c| self.harden(c)).collect();
        self.store.txn(&compares, ops)
    }

    fn describe(&self) -> String {
        self.store.describe()
    }
}

/// What a node's allocations last read and wrote: the configuration range, the node record,
/// the namespaces its workloads were in, and the node's blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// Node name.
    pub node: String,
    /// The `config/` range, guard included, in key order.
    pub config: Vec<CachedKv>,
    /// The node record (`None`: it did not exist).
    pub node_record: Option<CachedKv>,
    /// Namespace records by name (`None`: the namespace record did not exist).
    pub namespaces: BTreeMap<String, Option<CachedKv>>,
    /// The node's blocks (`blocks/<node>/`), in key order.
    pub blocks: Vec<CachedKv>,
}

impl NodeView {
    /// A view of what one snapshot read returned. `None` when a value is not text or the
    /// configuration has no guard (nothing can be validated against it then).
    pub fn from_snapshot(
        node: &str,
        config: &[KeyValue],
        node_record: Option<&KeyValue>,
        namespace: Option<(&str, Option<&KeyValue>)>,
        blocks: &[KeyValue],
    ) -> Option<Self> {
        let all = |kvs: &[KeyValue]| {
            kvs.iter()
                .map(CachedKv::from_kv)
                .collect::<Option<Vec<_>>>()
        };
        let view = Self {
            format: FORMAT,
            node: node.to_string(),
            config: all(config)?,
            node_record: match node_record {
                Some(kv) => Some(CachedKv::from_kv(kv)?),
                None => None,
            },
            namespaces: match namespace {
                Some((name, kv)) => {
                    let kv = match kv {
                        Some(kv) => Some(CachedKv::from_kv(kv)?),
                        None => None,
                    };
                    BTreeMap::from([(name.to_string(), kv)])
                }
                None => BTreeMap::new(),
            },
            blocks: all(blocks)?,
        };
        view.guard()?;
        Some(view)
    }

    /// Adds the namespaces of an older view that this one does not have; each entry carries
    /// its own revision and is checked when used.
    pub fn keep_namespaces_of(&mut self, older: &NodeView) {
        for (name, kv) in &older.namespaces {
            self.namespaces
                .entry(name.clone())
                .or_insert_with(|| kv.clone());
        }
    }

    /// The configuration guard, if the configuration has one.
    fn guard(&self) -> Option<&CachedKv> {
        self.config.iter().find(|kv| kv.key == keys::CONFIG_GUARD)
    }

    /// Whether the view can stand in for a read by a request of `namespace`.
    pub fn covers(&self, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|ns| self.namespaces.contains_key(ns))
    }

    /// The compares that make a plan made from this view safe to commit: the configuration,
    /// node and namespace are still as seen, by value (absent ones still absent). Blocks and
    /// pools are compared by the plan itself; [`ByValue`] turns those into value compares.
    pub fn compares(&self, namespace: Option<&str>) -> Vec<Compare> {
        let mut out = Vec::new();
        if let Some(guard) = self.guard() {
            out.push(guard.compare());
        }
        out.push(match &self.node_record {
            Some(kv) => kv.compare(),
            None => Compare::absent(keys::node(&self.node)),
        });
        if let Some(ns) = namespace {
            out.push(match self.namespaces.get(ns).and_then(Option::as_ref) {
                Some(kv) => kv.compare(),
                None => Compare::absent(keys::namespace(ns)),
            });
        }
        out
    }

    /// Every record of the view: configuration, node, namespaces and blocks.
    pub fn records(&self) -> impl Iterator<Item = &CachedKv> {
        self.config
            .iter()
            .chain(&self.node_record)
            .chain(self.namespaces.values().flatten())
            .chain(&self.blocks)
    }

    /// Records the writes of a transaction committed at `revision`.
    pub fn apply(&mut self, ops: &[Op], revision: i64) {
        let own_blocks = keys::blocks_of(&self.node);
        for op in ops {
            let (Op::Put(key, _) | Op::Delete(key)) = op;
            let list = if key.starts_with(keys::CONFIG_PREFIX) {
                &mut self.config
            } else if key.starts_with(&own_blocks) {
                &mut self.blocks
            } else {
                continue;
            };
            let at = list.binary_search_by(|kv| kv.key.as_str().cmp(key));
            match (op, at) {
                (Op::Put(_, value), at) => {
                    let Ok(value) = String::from_utf8(value.clone()) else {
                        // Not representable: forget the record, the next read brings it back.
                        if let Ok(i) = at {
                            list.remove(i);
                        }
                        continue;
                    };
                    match at {
                        Ok(i) => {
                            list[i].value = value;
                            list[i].mod_revision = revision;
                        }
                        Err(i) => list.insert(
                            i,
                            CachedKv {
                                key: key.clone(),
                                value,
                                create_revision: revision,
                                mod_revision: revision,
                            },
                        ),
                    }
                }
                (Op::Delete(_), Ok(i)) => {
                    list.remove(i);
                }
                (Op::Delete(_), Err(_)) => {}
            }
        }
    }
}

/// Where nodes keep their views and the handles they wrote. Every method is best effort:
/// a cache that loses or garbles an entry only costs a read.
pub trait NodeCache: Send + Sync {
    /// The node's last view, if any.
    fn load_view(&self, node: &str) -> Option<NodeView>;
    /// Replaces the node's view.
    fn save_view(&self, view: &NodeView);
    /// A handle record as this node last wrote it.
    fn load_handle(&self, id: &str) -> Option<CachedKv>;
    /// Remembers a handle record this node wrote.
    fn save_handle(&self, id: &str, kv: &CachedKv);
    /// Forgets a handle (released).
    fn forget_handle(&self, id: &str);
}

/// A cache in process memory, for tests and embedders that live long.
#[derive(Default)]
pub struct MemoryNodeCache {
    views: Mutex<HashMap<String, NodeView>>,
    handles: Mutex<HashMap<String, CachedKv>>,
}

impl MemoryNodeCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

impl NodeCache for MemoryNodeCache {
    fn load_view(&self, node: &str) -> Option<NodeView> {
        self.views.lock().ok()?.get(node).cloned()
    }
    fn save_view(&self, view: &NodeView) {
        if let Ok(mut views) = self.views.lock() {
            views.insert(view.node.clone(), view.clone());
        }
    }
    fn load_handle(&self, id: &str) -> Option<CachedKv> {
        self.handles.lock().ok()?.get(id).cloned()
    }
    fn save_handle(&self, id: &str, kv: &CachedKv) {
        if let Ok(mut handles) = self.handles.lock() {
            handles.insert(id.to_string(), kv.clone());
        }
    }
    fn forget_handle(&self, id: &str) {
        if let Ok(mut handles) = self.handles.lock() {
            handles.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    pub(super) fn view() -> NodeView {
        NodeView::from_snapshot(
            "n1",
            &[kv(keys::CONFIG_GUARD, "{\"nonce\":\"a\"}", 3)],
            Some(&kv("nodes/n1", "{}", 4)),
            Some(("ns", None)),
            &[kv("blocks/n1/10.0.0.0-26", "{}", 5)],
        )
        .expect("a guarded snapshot makes a view")
    }

    #[test]
    fn a_snapshot_without_guard_or_with_binary_values_makes_no_view() {
        assert!(NodeView::from_snapshot("n1", &[], None, None, &[]).is_none());
        let mut binary = kv(keys::CONFIG_GUARD, "", 1);
        binary.value = vec![0xff];
        assert!(NodeView::from_snapshot("n1", &[binary], None, None, &[]).is_none());
    }

    #[test]
    fn compares_cover_guard_node_and_namespace() {
        let v = view();
        assert_eq!(
            v.compares(Some("ns")),
            vec![
                Compare::Value(keys::CONFIG_GUARD.into(), b"{\"nonce\":\"a\"}".to_vec()),
                Compare::Value("nodes/n1".into(), b"{}".to_vec()),
                Compare::absent("namespaces/ns"),
            ]
        );
        assert!(v.covers(Some("ns")) && v.covers(None) && !v.covers(Some("other")));
    }

    #[test]
    fn compares_on_view_records_become_value_compares() {
        let v = view();
        let store = crate::store::MemoryStore::new();
        let by_value = ByValue::new(&store, v.records());
        let block = "blocks/n1/10.0.0.0-26";
        assert_eq!(
            by_value.harden(&Compare::unchanged(block, 5)),
            Compare::Value(block.into(), b"{}".to_vec())
        );
        // Absent, read at another revision, or not from the view: left as they are.
        for kept in [
            Compare::absent(block),
            Compare::unchanged(block, 6),
            Compare::unchanged("pool-index/10.0.0.0-24/26", 5),
        ] {
            assert_eq!(by_value.harden(&kept), kept);
        }
    }

    #[test]
    fn apply_keeps_blocks_and_config_in_key_order_and_skips_other_keys() {
        let mut v = view();
        v.apply(
            &[
                Op::Put("blocks/n1/10.0.0.64-26".into(), b"{\"b\":2}".to_vec()),
                Op::Put("blocks/n1/10.0.0.0-26".into(), b"{\"b\":1}".to_vec()),
                Op::Put("blocks/n2/10.0.1.0-26".into(), b"{}".to_vec()),
                Op::Put("config/tilings/x".into(), b"{}".to_vec()),
                Op::Put("handles/h".into(), b"{}".to_vec()),
            ],
            9,
        );
        let keys: Vec<_> = v.blocks.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["blocks/n1/10.0.0.0-26", "blocks/n1/10.0.0.64-26"]);
        assert_eq!(
            (v.blocks[0].create_revision, v.blocks[0].mod_revision),
            (5, 9)
        );
        assert_eq!(
            (v.blocks[1].create_revision, v.blocks[1].mod_revision),
            (9, 9)
        );
        assert_eq!(v.config.len(), 2);
        v.apply(&[Op::Delete("blocks/n1/10.0.0.0-26".into())], 10);
        assert_eq!(v.blocks.len(), 1);
    }
}
