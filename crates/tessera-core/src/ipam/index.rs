//! A tiling's block index, stored in shards of [`keys::POOL_INDEX_SHARD_ORDINALS`] ordinals.
//!
//! Readers that need the whole index (a claim, a borrow, telling that a pool is exhausted)
//! read every shard with one prefix read, in the round trip they make anyway. A write
//! compares and rewrites only the shards it changes, so a claim writes one record of bounded
//! size however many blocks the tiling has. A shard that loses its last entry is deleted.
//!
//! The tiling marker under `config/` exists while any shard holds an entry. Every write that
//! creates a shard rewrites the marker with a fresh nonce, and the write that removes the last
//! entry compares the marker as read: a claim that created another shard meanwhile makes that
//! compare fail (by revision or, through a node's view, by value), so no entry is left
//! without its marker.
//!
//! Stores written before sharding hold the whole index in one record at
//! [`keys::legacy_pool_index`]. It is read as holding every ordinal no shard holds. Each write
//! that touches the tiling moves the entries of the shards it changes, and of up to
//! [`LEGACY_SHARDS_MOVED_PER_WRITE`] more, out of it, in the same transaction; the record is
//! deleted when it has none left. The bound keeps a transaction within etcd's operation limit
//! whatever the size of the old record.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys::{self, POOL_INDEX_SHARD_ORDINALS};
use crate::net::Tiling;
use crate::store::{Compare, KeyValue, Op, Read, Snapshot, Store};

use super::records::{decode, encode, IndexEntry, PoolIndex};
use super::IpamError;

/// Shards a write moves out of a legacy whole-index record besides those it changes.
pub(super) const LEGACY_SHARDS_MOVED_PER_WRITE: usize = 16;

/// How many reads [`index_reads`] makes per tiling.
pub(super) const READS_PER_INDEX: usize = 3;

/// The reads that fetch a tiling's index: the legacy record, the shards and the marker.
pub(super) fn index_reads(tiling: &Tiling) -> [Read; READS_PER_INDEX] {
    [
        Read::Get(keys::legacy_pool_index(tiling)),
        Read::Prefix(keys::pool_index_shards(tiling)),
        Read::Get(keys::tiling_marker(tiling)),
    ]
}

/// The shard holding `ordinal`.
pub(super) fn shard_of(ordinal: u128) -> u128 {
    ordinal / POOL_INDEX_SHARD_ORDINALS
}

/// One shard as read.
#[derive(Clone, Debug)]
struct StoredShard {
    revision: i64,
    entries: Vec<IndexEntry>,
}

/// A tiling's index as one operation reads and changes it.
#[derive(Clone, Debug, Default)]
pub(super) struct PlannedIndex {
    /// The whole index, with the operation's changes.
    pub index: PoolIndex,
    /// The whole index as read.
    pub original: PoolIndex,
    /// Whether the operation changed `index`.
    pub changed: bool,
    shards: BTreeMap<u128, StoredShard>,
    /// Revision of the legacy whole-index record (0: absent).
    legacy: i64,
    /// The legacy record's entries.
    legacy_entries: Vec<IndexEntry>,
    /// Revision of the tiling marker (0: absent).
    marker: i64,
}

impl PlannedIndex {
    /// Reads the index of `tiling` in one round trip.
    pub fn read<S: Store + ?Sized>(store: &S, tiling: &Tiling) -> Result<Self, IpamError> {
        let snap = store.read(&index_reads(tiling))?;
        Self::from_snapshot(tiling, &snap, 0)
    }

    /// The index of `tiling` from the [`index_reads`] found at position `at` of `snap`.
    pub fn from_snapshot(tiling: &Tiling, snap: &Snapshot, at: usize) -> Result<Self, IpamError> {
        let legacy = snap.get(at);
        let legacy_entries = match legacy {
            Some(kv) => decode::<PoolIndex>(kv)?.blocks,
            None => Vec::new(),
        };
        let mut entries = legacy_entries.clone();
        let mut shards = BTreeMap::new();
        for kv in snap.list(at + 1) {
            let number = shard_number(tiling, kv)?;
            let stored: PoolIndex = decode(kv)?;
            entries.extend(stored.blocks.iter().cloned());
            let shard = StoredShard {
                revision: kv.mod_revision,
                entries: stored.blocks,
            };
            shards.insert(number, shard);
        }
        let index = merge(entries).0;
        Ok(Self {
            original: index.clone(),
            index,
            changed: false,
            shards,
            legacy: legacy.map_or(0, |kv| kv.mod_revision),
            legacy_entries,
            marker: snap.get(at + 2).map_or(0, |kv| kv.mod_revision),
        })
    }

    /// The same index as read, holding `index` instead.
    pub fn with_index(&self, index: PoolIndex) -> Self {
        Self {
            index,
            ..self.clone()
        }
    }

    /// Compares that fail when anything in the index changed since it was read: each shard
    /// and the legacy record at its revision, and the marker, which a new shard rewrites.
    pub fn unchanged_compares(&self, tiling: &Tiling) -> Vec<Compare> {
        let mut compares: Vec<Compare> = self
            .shards
            .iter()
            .map(|(n, s)| Compare::unchanged(keys::pool_index_shard(tiling, *n), s.revision))
            .collect();
        compares.push(Compare::unchanged(
            keys::legacy_pool_index(tiling),
            self.legacy,
        ));
        compares.push(Compare::unchanged(keys::tiling_marker(tiling), self.marker));
        compares
    }

    /// Writes the shards whose entries changed, each compared at the revision read, and
    /// moves shards out of a legacy record. The marker is deleted with the last entry and
    /// rewritten when a shard is created (see the module documentation).
    pub fn ops(&self, tiling: &Tiling, compares: &mut Vec<Compare>, ops: &mut Vec<Op>) {
        let mut wanted = by_shard(&self.index.blocks);
        let as_read = by_shard(&self.original.blocks);
        let legacy = by_shard(&self.legacy_entries);
        let numbers: BTreeSet<u128> = (wanted.keys().chain(self.shards.keys()))
            .chain(legacy.keys())
            .copied()
            .collect();
        let written = ops.len();
        let mut created = false;
        let mut moves_left = LEGACY_SHARDS_MOVED_PER_WRITE;
        let mut kept_in_legacy = Vec::new();
        for number in numbers {
            let want = wanted.remove(&number).unwrap_or_default();
            if let Some(old) = legacy.get(&number) {
                // A shard this write does not change moves while the budget lasts.
                if as_read.get(&number).is_some_and(|r| *r == want) {
                    if moves_left == 0 {
                        kept_in_legacy.extend(old.iter().cloned());
                        continue;
                    }
                    moves_left -= 1;
                }
            }
            // Entries of a moved legacy shard are dropped from the legacy record either way.
            let stored = self.shards.get(&number);
            if stored.map_or(want.is_empty(), |s| s.entries == want) {
                continue;
            }
            let key = keys::pool_index_shard(tiling, number);
            compares.push(Compare::unchanged(&key, stored.map_or(0, |s| s.revision)));
            if want.is_empty() {
                ops.push(Op::Delete(key));
            } else {
                created |= stored.is_none();
                ops.push(Op::Put(key, encode(&PoolIndex { blocks: want })));
            }
        }
        if self.legacy != 0 {
            let key = keys::legacy_pool_index(tiling);
            compares.push(Compare::unchanged(&key, self.legacy));
            ops.push(if kept_in_legacy.is_empty() {
                Op::Delete(key)
            } else {
                let rest = PoolIndex {
                    blocks: kept_in_legacy,
                };
                Op::Put(key, encode(&rest))
            });
        }
        if ops.len() == written {
            return;
        }
        let marker = keys::tiling_marker(tiling);
        if self.index.blocks.is_empty() {
            compares.push(Compare::unchanged(&marker, self.marker));
            ops.push(Op::Delete(marker));
        } else if created || self.marker == 0 {
            let nonce = format!("{{\"nonce\":\"{}\"}}", crate::catalog::new_uid());
            ops.push(Op::Put(marker, nonce.into_bytes()));
        }
    }
}

/// `entries` grouped by shard, in order.
fn by_shard(entries: &[IndexEntry]) -> BTreeMap<u128, Vec<IndexEntry>> {
    let mut shards: BTreeMap<u128, Vec<IndexEntry>> = BTreeMap::new();
    for e in entries {
        shards
            .entry(shard_of(e.ordinal))
            .or_default()
            .push(e.clone());
    }
    shards
}

/// The shard number of a record read under the tiling's shard prefix.
fn shard_number(tiling: &Tiling, kv: &KeyValue) -> Result<u128, IpamError> {
    match keys::parse_pool_index_key(&kv.key) {
        Some((t, Some(number))) if t == *tiling => Ok(number),
        _ => Err(IpamError::CorruptRecord {
            key: kv.key.clone(),
            reason: format!(
                "the key is not a shard of the pool index of {} (/{} blocks)",
                tiling.pool, tiling.block_prefix
            ),
        }),
    }
}

/// The entries of several records as one index sorted by ordinal, and the ordinals listed
/// more than once (only their first entry is kept).
pub(super) fn merge(mut entries: Vec<IndexEntry>) -> (PoolIndex, Vec<u128>) {
    entries.sort_by_key(|e| e.ordinal);
    let mut duplicates = Vec::new();
    entries.dedup_by(|later, first| {
        let same = later.ordinal == first.ordinal;
        if same {
            duplicates.push(later.ordinal);
        }
        same
    });
    duplicates.dedup();
    (PoolIndex { blocks: entries }, duplicates)
}

/// Every tiling's index from a prefix read of [`keys::POOL_INDEX_PREFIX`], for the admin
/// views; shards and legacy records alike. Records that cannot be read are reported in
/// `problems`, as are entries listed twice or filed in the wrong shard.
pub(super) fn collect_indexes(
    kvs: &[KeyValue],
    problems: &mut Vec<String>,
) -> BTreeMap<Tiling, PoolIndex> {
    let mut entries: BTreeMap<Tiling, Vec<IndexEntry>> = BTreeMap::new();
    for kv in kvs {
        let Some((tiling, shard)) = keys::parse_pool_index_key(&kv.key) else {
            problems.push(format!(
                "pool index key {} does not name a pool network, block size and shard",
                kv.key
            ));
            continue;
        };
        let record: PoolIndex = match decode(kv) {
            Ok(r) => r,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if let Some(number) = shard {
            if record.blocks.is_empty() {
                problems.push(format!("pool index shard {} lists no block", kv.key));
            }
            for e in record
                .blocks
                .iter()
                .filter(|e| shard_of(e.ordinal) != number)
            {
                problems.push(format!(
                    "pool index shard {} lists ordinal {}, which belongs to shard {}",
                    kv.key,
                    e.ordinal,
                    keys::pool_index_shard(&tiling, shard_of(e.ordinal))
                ));
            }
        }
        entries.entry(tiling).or_default().extend(record.blocks);
    }
    entries
        .into_iter()
        .map(|(tiling, list)| {
            let (index, duplicates) = merge(list);
            for o in duplicates {
                problems.push(format!(
                    "index of {} (/{} blocks) lists ordinal {o} more than once",
                    tiling.pool, tiling.block_prefix
                ));
            }
            (tiling, index)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn tiling() -> Tiling {
        Tiling::parse_key("10.0.0.0-16-32").unwrap()
    }

    fn entry(ordinal: u128) -> IndexEntry {
        IndexEntry {
            ordinal,
            home: "n".into(),
            full: false,
        }
    }

    fn claim(idx: &mut PlannedIndex, ordinal: u128) {
        let pos = idx.index.find(ordinal).unwrap_err();
        idx.index.blocks.insert(pos, entry(ordinal));
    }

    fn commit(store: &MemoryStore, idx: &PlannedIndex) -> bool {
        let (mut compares, mut ops) = (Vec::new(), Vec::new());
        idx.ops(&tiling(), &mut compares, &mut ops);
        matches!(
            store.txn(&compares, &ops).unwrap(),
            crate::store::TxnOutcome::Committed(_)
        )
    }

    #[test]
    fn a_claim_writes_only_its_shard() {
        let store = MemoryStore::new();
        let mut idx = PlannedIndex::read(&store, &tiling()).unwrap();
        for o in [0, 1, 130, 300] {
            claim(&mut idx, o);
        }
        assert!(commit(&store, &idx));
        let mut idx = PlannedIndex::read(&store, &tiling()).unwrap();
        assert_eq!(idx.index.blocks.len(), 4);
        claim(&mut idx, 131);
        let (mut compares, mut ops) = (Vec::new(), Vec::new());
        idx.ops(&tiling(), &mut compares, &mut ops);
        let keys: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, _) | Op::Delete(k) => k.as_str(),
            })
            .collect();
        assert_eq!(keys, ["pool-index/10.0.0.0-16-32/001"]);
    }

    #[test]
    fn the_marker_goes_with_the_last_entry_unless_another_shard_appeared() {
        let store = MemoryStore::new();
        let marker = keys::tiling_marker(&tiling());
        let mut idx = PlannedIndex::read(&store, &tiling()).unwrap();
        claim(&mut idx, 5);
        assert!(commit(&store, &idx));
        assert!(store.get(&marker).unwrap().is_some());
        // A release emptying shard 0 and a claim creating shard 2 read the same snapshot.
        let mut release = PlannedIndex::read(&store, &tiling()).unwrap();
        release.index.blocks.clear();
        let mut other = release.with_index(release.original.clone());
        claim(&mut other, 300);
        assert!(commit(&store, &other));
        assert!(!commit(&store, &release), "the marker compare must fail");
        assert!(store.get(&marker).unwrap().is_some());
        // Read again, the release empties only its shard and keeps the marker.
        let mut release = PlannedIndex::read(&store, &tiling()).unwrap();
        release.index.blocks.retain(|e| e.ordinal != 5);
        assert!(commit(&store, &release));
        assert!(store.get(&marker).unwrap().is_some());
        let mut last = PlannedIndex::read(&store, &tiling()).unwrap();
        last.index.blocks.clear();
        assert!(commit(&store, &last));
        assert!(store.get(&marker).unwrap().is_none());
        assert!(store.range(keys::POOL_INDEX_PREFIX).unwrap().is_empty());
    }

    #[test]
    fn a_legacy_record_is_read_whole_and_moved_into_shards_on_the_first_write() {
        let store = MemoryStore::new();
        let legacy = PoolIndex {
            blocks: vec![entry(1), entry(200)],
        };
        let ops = [
            Op::Put(keys::legacy_pool_index(&tiling()), encode(&legacy)),
            Op::Put(keys::tiling_marker(&tiling()), b"{}".to_vec()),
        ];
        store.txn(&[], &ops).unwrap();
        let mut idx = PlannedIndex::read(&store, &tiling()).unwrap();
        assert_eq!(idx.index, legacy);
        idx.index.set_full(1, true);
        assert!(commit(&store, &idx));
        let stored: Vec<String> = store
            .range(keys::POOL_INDEX_PREFIX)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(
            stored,
            [
                "pool-index/10.0.0.0-16-32/000",
                "pool-index/10.0.0.0-16-32/001"
            ]
        );
        let idx = PlannedIndex::read(&store, &tiling()).unwrap();
        assert!(idx.index.entry(1).unwrap().full);
        assert_eq!(idx.index.blocks.len(), 2);
    }

    #[test]
    fn a_large_legacy_record_moves_into_shards_a_bounded_number_at_a_time() {
        let store = MemoryStore::new();
        // 40 shards' worth of entries, one per shard.
        let legacy = PoolIndex {
            blocks: (0..40)
                .map(|s| entry(s * POOL_INDEX_SHARD_ORDINALS))
                .collect(),
        };
        let ops = [
            Op::Put(keys::legacy_pool_index(&tiling()), encode(&legacy)),
            Op::Put(keys::tiling_marker(&tiling()), b"{}".to_vec()),
        ];
        store.txn(&[], &ops).unwrap();
        let last = 39 * POOL_INDEX_SHARD_ORDINALS;
        let mut flagged = legacy.clone();
        flagged.set_full(last, true);
        let mut writes = 0;
        loop {
            let mut idx = PlannedIndex::read(&store, &tiling()).unwrap();
            let expected = if writes == 0 { &legacy } else { &flagged };
            assert_eq!(idx.index, *expected, "after {writes} writes");
            if idx.legacy == 0 {
                break;
            }
            // First a flag change in the last shard: it moves with 16 others. Later writes
            // change nothing and move 16 more each.
            idx.index.set_full(last, true);
            idx.changed = true;
            let (mut compares, mut ops) = (Vec::new(), Vec::new());
            idx.ops(&tiling(), &mut compares, &mut ops);
            // The changed shard, 16 moved ones, the legacy record and the marker.
            assert!(
                ops.len() <= LEGACY_SHARDS_MOVED_PER_WRITE + 3,
                "{}",
                ops.len()
            );
            assert!(matches!(
                store.txn(&compares, &ops).unwrap(),
                crate::store::TxnOutcome::Committed(_)
            ));
            writes += 1;
        }
        assert_eq!(writes, 3);
        let shards = store.range(&keys::pool_index_shards(&tiling())).unwrap();
        assert_eq!(shards.len(), 40);
    }

    #[test]
    fn collect_reports_misfiled_and_repeated_entries() {
        let t = tiling();
        let kv = |key: String, blocks: Vec<IndexEntry>| KeyValue {
            key,
            value: encode(&PoolIndex { blocks }),
            create_revision: 1,
            mod_revision: 1,
        };
        let kvs = [
            kv(keys::legacy_pool_index(&t), vec![entry(3)]),
            kv(keys::pool_index_shard(&t, 0), vec![entry(3), entry(129)]),
        ];
        let mut problems = Vec::new();
        let indexes = collect_indexes(&kvs, &mut problems);
        assert_eq!(indexes[&t].blocks.len(), 2);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("belongs to shard pool-index/10.0.0.0-16-32/001"));
        assert!(problems[1].contains("ordinal 3 more than once"));
    }
}
