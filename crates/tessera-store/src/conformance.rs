//! Checks that every [`Store`] backend must pass, so the allocator can rely on etcd v3
//! semantics whichever backend it runs on.
//!
//! Each check takes a store, exercises one part of the contract and panics with a message
//! saying which rule was broken. Checks write only below `/conformance/<check name>/` and
//! compare revisions relative to the revision they start at, so they can run one after another
//! on the same store ([`run_all`]) as long as nothing else writes to it meanwhile. Each check
//! expects its own key space to be empty: run each at most once per store.
//!
//! One deliberate tolerance: deleting an absent key inside a txn may or may not bump the
//! revision (the memory and SQLite backends bump it, etcd does not because nothing changed).

use std::time::{Duration, Instant};

use crate::{Compare, KeyValue, Op, Read, Snapshot, Store, StoreError, TxnOutcome};

/// One named conformance check.
#[derive(Clone, Copy)]
pub struct Check {
    /// The function's name, e.g. `"put_then_get"`.
    pub name: &'static str,
    /// Runs the check; panics on a violation.
    pub run: fn(&dyn Store),
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, in the order [`run_all`] runs them.
        pub const CHECKS: &[Check] = &[$(Check { name: stringify!($name), run: $name }),*];
    };
}

checks![
    get_absent,
    put_then_get,
    one_revision_per_txn,
    overwrite_keeps_create_revision,
    delete_and_recreate,
    prefix_range_order_and_boundaries,
    compare_absent,
    compare_mod_revision,
    compare_value,
    failed_txn_writes_nothing,
    compare_only_txn,
    delete_absent_key,
    empty_read_batch,
    read_batch_is_one_snapshot,
    concurrent_reads_see_whole_txns,
    concurrent_cas_increments,
    large_values,
];

/// Runs every check in [`CHECKS`] on one store.
pub fn run_all(store: &dyn Store) {
    for check in CHECKS {
        eprintln!("conformance check {} on {}", check.name, store.describe());
        (check.run)(store);
    }
}

fn ns(check: &str) -> String {
    format!("/conformance/{check}/")
}

fn ok<T>(result: Result<T, StoreError>, doing: &str) -> T {
    result.unwrap_or_else(|e| panic!("{doing}: the store failed: {e}"))
}

fn revision(store: &dyn Store) -> i64 {
    ok(store.read(&[]), "reading the current revision").revision
}

fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    ok(store.get(key), &format!("get {key:?}"))
}

fn committed(outcome: TxnOutcome, doing: &str) -> i64 {
    match outcome {
        TxnOutcome::Committed(rev) => rev,
        TxnOutcome::Conflict => panic!("{doing}: expected the txn to commit, got Conflict"),
    }
}

fn put(store: &dyn Store, key: &str, value: &[u8]) -> i64 {
    let doing = format!("unconditional put of {key:?}");
    committed(
        ok(
            store.txn(&[], &[Op::Put(key.to_string(), value.to_vec())]),
            &doing,
        ),
        &doing,
    )
}

fn put_op(key: &str, value: &[u8]) -> Op {
    Op::Put(key.to_string(), value.to_vec())
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

/// Reading keys that were never written finds nothing and does not change the revision.
pub fn get_absent(store: &dyn Store) {
    let ns = ns("get_absent");
    let key = format!("{ns}missing");
    let before = revision(store);
    assert_eq!(
        get(store, &key),
        None,
        "get of a never-written key must be None"
    );
    let snap = ok(
        store.read(&[Read::Get(key.clone())]),
        "read of an absent key",
    );
    assert_eq!(
        snap.results,
        vec![Vec::<KeyValue>::new()],
        "a Get of an absent key must yield one empty result"
    );
    assert!(
        ok(store.range(&ns), "range").is_empty(),
        "range over an unused prefix must be empty"
    );
    assert_eq!(
        revision(store),
        before,
        "reads must not change the revision"
    );
}

/// A put is visible with its value, and create and mod revision both equal the txn revision.
pub fn put_then_get(store: &dyn Store) {
    let ns = ns("put_then_get");
    let key = format!("{ns}k");
    let before = revision(store);
    let rev = put(store, &key, b"hello");
    assert_eq!(
        rev,
        before + 1,
        "a txn with one put must bump the revision by one"
    );
    assert_eq!(
        get(store, &key),
        Some(KeyValue {
            key: key.clone(),
            value: b"hello".to_vec(),
            create_revision: rev,
            mod_revision: rev,
        }),
        "a freshly put key must read back with create_revision = mod_revision = txn revision"
    );
    assert_eq!(
        revision(store),
        rev,
        "the store revision must be the last txn's revision"
    );

    let empty = format!("{ns}empty");
    let rev = put(store, &empty, b"");
    let kv = get(store, &empty).expect("a key put with an empty value must exist");
    assert!(kv.value.is_empty(), "an empty value must read back empty");
    assert_eq!(kv.mod_revision, rev);
}

/// Each committed txn bumps the revision by exactly one, and every write in it carries that
/// revision.
pub fn one_revision_per_txn(store: &dyn Store) {
    let ns = ns("one_revision_per_txn");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|k| format!("{ns}{k}"));
    let before = revision(store);
    let rev1 = committed(
        ok(
            store.txn(&[], &[put_op(&a, b"1"), put_op(&b, b"1"), put_op(&c, b"1")]),
            "txn with three puts",
        ),
        "txn with three puts",
    );
    assert_eq!(
        rev1,
        before + 1,
        "a txn with three puts must bump the revision by exactly one"
    );
    for key in [&a, &b, &c] {
        let kv = get(store, key).expect("key written by the txn");
        assert_eq!(
            (kv.create_revision, kv.mod_revision),
            (rev1, rev1),
            "every key of one txn must carry the txn's revision ({key})"
        );
    }
    let rev2 = committed(
        ok(
            store.txn(
                &[],
                &[put_op(&a, b"2"), Op::Delete(b.clone()), put_op(&d, b"2")],
            ),
            "txn with puts and a delete",
        ),
        "txn with puts and a delete",
    );
    assert_eq!(
        rev2,
        rev1 + 1,
        "a txn mixing puts and deletes must bump the revision by one"
    );
    let snap = ok(store.range(&ns), "range");
    assert_eq!(keys(&snap), [a.as_str(), c.as_str(), d.as_str()]);
    let by_key = |k: &str| snap.iter().find(|kv| kv.key == k).unwrap().clone();
    assert_eq!(
        (by_key(&a).create_revision, by_key(&a).mod_revision),
        (rev1, rev2)
    );
    assert_eq!(by_key(&a).value, b"2");
    assert_eq!(
        (by_key(&c).create_revision, by_key(&c).mod_revision),
        (rev1, rev1),
        "a key the txn did not touch must keep its revisions"
    );
    assert_eq!(
        (by_key(&d).create_revision, by_key(&d).mod_revision),
        (rev2, rev2)
    );
    assert_eq!(revision(store), rev2);
}

/// Overwriting a key keeps its create_revision and moves its mod_revision.
pub fn overwrite_keeps_create_revision(store: &dyn Store) {
    let key = format!("{}k", ns("overwrite_keeps_create_revision"));
    let rev1 = put(store, &key, b"v1");
    let rev2 = put(store, &key, b"v2");
    let rev3 = put(store, &key, b"v3");
    assert_eq!(
        (rev2, rev3),
        (rev1 + 1, rev1 + 2),
        "each overwrite is one new revision"
    );
    let kv = get(store, &key).expect("overwritten key");
    assert_eq!(kv.value, b"v3", "the last write wins");
    assert_eq!(
        kv.create_revision, rev1,
        "an overwrite must keep create_revision"
    );
    assert_eq!(kv.mod_revision, rev3, "an overwrite must set mod_revision");
}

/// A deleted key is gone; recreating it starts a new life with a new create_revision.
pub fn delete_and_recreate(store: &dyn Store) {
    let ns = ns("delete_and_recreate");
    let key = format!("{ns}k");
    let rev1 = put(store, &key, b"first");
    let rev2 = committed(
        ok(store.txn(&[], &[Op::Delete(key.clone())]), "delete"),
        "delete of an existing key",
    );
    assert_eq!(
        rev2,
        rev1 + 1,
        "deleting an existing key must bump the revision by one"
    );
    assert_eq!(get(store, &key), None, "a deleted key must be absent");
    assert!(
        ok(store.range(&ns), "range").is_empty(),
        "a deleted key must not be listed"
    );
    let rev3 = put(store, &key, b"second");
    assert_eq!(rev3, rev2 + 1);
    let kv = get(store, &key).expect("recreated key");
    assert_eq!(kv.value, b"second");
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (rev3, rev3),
        "a recreated key must get a new create_revision, not the one before the delete"
    );
}

/// Prefix ranges return exactly the keys starting with the prefix, in byte order, including
/// keys made of multi-byte UTF-8 and characters that are wildcards in SQL `LIKE`.
pub fn prefix_range_order_and_boundaries(store: &dyn Store) {
    let ns = ns("prefix_range_order_and_boundaries");
    let names = [
        "a",
        "a/",
        "a/b",
        "a/c/d",
        "a0",
        "ab/",
        "a/é",
        "a/z",
        "a/日本",
        "a/日本/x",
        "a/日",
        "a/\u{7f}",
        "a/ ",
        "a/%",
        "a/_x",
        "a/ax",
        "a/\u{10FFFF}",
        "a/\u{10FFFF}x",
        "A/x",
        "b/x",
        "a.",
        "a/\u{E000}",
    ];
    let all: Vec<String> = names.iter().map(|n| format!("{ns}{n}")).collect();
    let ops: Vec<Op> = all.iter().map(|k| put_op(k, k.as_bytes())).collect();
    let rev = committed(
        ok(store.txn(&[], &ops), "writing the keys"),
        "writing the keys",
    );

    let expect = |prefix: &str| -> Vec<String> {
        // String's Ord is byte order, which is the order the contract promises.
        let mut v: Vec<String> = all
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let check = |prefix: String| {
        let got = ok(store.range(&prefix), &format!("range {prefix:?}"));
        let want = expect(&prefix);
        assert_eq!(
            keys(&got),
            want.iter().map(String::as_str).collect::<Vec<_>>(),
            "range {prefix:?} must return exactly the keys with that prefix, in byte order"
        );
        for kv in &got {
            assert_eq!(kv.value, kv.key.as_bytes(), "value of {:?}", kv.key);
            assert_eq!((kv.create_revision, kv.mod_revision), (rev, rev));
        }
        got.len()
    };

    let n = check(format!("{ns}a/"));
    let got = ok(store.range(&format!("{ns}a/")), "range a/");
    assert!(
        !got.iter()
            .any(|kv| kv.key.ends_with("/a0") || kv.key.ends_with("/ab/")),
        "range a/ must not return a0 or ab/"
    );
    assert!(
        got.iter().any(|kv| kv.key == format!("{ns}a/")),
        "a key equal to the prefix belongs to the range"
    );
    assert_eq!(n, 16);
    assert_eq!(check(format!("{ns}a/日")), 3);
    assert_eq!(check(format!("{ns}a/日本")), 2);
    assert_eq!(check(format!("{ns}a/_")), 1, "'_' must match only itself");
    assert_eq!(check(format!("{ns}a/%")), 1, "'%' must match only itself");
    assert_eq!(check(format!("{ns}a/\u{10FFFF}")), 2);
    assert_eq!(check(format!("{ns}a/\u{D7FF}")), 0);
    assert_eq!(check(format!("{ns}a")), all.len() - 2);
    assert_eq!(check(ns.clone()), all.len());
    assert_eq!(check(format!("{ns}zz")), 0);
    assert_eq!(
        check(format!("{ns}a/c/d/")),
        0,
        "a longer prefix than any key matches nothing"
    );

    let everything = ok(store.range(""), "range over the empty prefix");
    assert!(
        everything
            .windows(2)
            .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes()),
        "range \"\" must return every key once, in byte order"
    );
    let ours: Vec<&str> = everything
        .iter()
        .map(|kv| kv.key.as_str())
        .filter(|k| k.starts_with(&ns))
        .collect();
    assert_eq!(
        ours,
        expect(&ns).iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// `Compare::absent` holds only while the key does not exist; a failed compare writes nothing.
pub fn compare_absent(store: &dyn Store) {
    let key = format!("{}k", ns("compare_absent"));
    let create = |value: &[u8]| {
        ok(
            store.txn(&[Compare::absent(&key)], &[put_op(&key, value)]),
            "create-if-absent",
        )
    };
    let rev = committed(create(b"first"), "create-if-absent of an absent key");
    assert_eq!(
        create(b"second"),
        TxnOutcome::Conflict,
        "create-if-absent of an existing key"
    );
    assert_eq!(
        get(store, &key).unwrap().value,
        b"first",
        "the failed txn must not write"
    );
    assert_eq!(
        revision(store),
        rev,
        "a failed txn must not bump the revision"
    );
}

/// `Compare::Value` holds only when the key exists with exactly those bytes.
pub fn compare_value(store: &dyn Store) {
    let ns = ns("compare_value");
    let key = format!("{ns}k");
    let absent = format!("{ns}absent");
    let empty = format!("{ns}empty");
    let rev1 = put(store, &key, b"nonce-1");
    put(store, &empty, b"");
    for (compare, what) in [
        (
            Compare::Value(key.clone(), b"nonce-2".to_vec()),
            "other bytes",
        ),
        (
            Compare::Value(key.clone(), b"nonce-".to_vec()),
            "a prefix of the bytes",
        ),
        (Compare::Value(absent.clone(), Vec::new()), "an absent key"),
    ] {
        let out = ok(store.txn(&[compare], &[put_op(&key, b"x")]), what);
        assert_eq!(
            out,
            TxnOutcome::Conflict,
            "a value compare on {what} must fail"
        );
    }
    assert_eq!(get(store, &key).unwrap().mod_revision, rev1);
    let rev2 = committed(
        ok(
            store.txn(
                &[
                    Compare::Value(key.clone(), b"nonce-1".to_vec()),
                    Compare::Value(empty.clone(), Vec::new()),
                ],
                &[put_op(&key, b"nonce-2")],
            ),
            "value compares that hold",
        ),
        "value compares that hold",
    );
    assert_eq!(get(store, &key).unwrap().mod_revision, rev2);
}

/// `Compare::unchanged` holds only at the exact mod_revision.
pub fn compare_mod_revision(store: &dyn Store) {
    let ns = ns("compare_mod_revision");
    let key = format!("{ns}k");
    let other = format!("{ns}other");
    let rev1 = put(store, &key, b"v1");
    let rev2 = committed(
        ok(
            store.txn(&[Compare::unchanged(&key, rev1)], &[put_op(&key, b"v2")]),
            "CAS at the current revision",
        ),
        "CAS at the current revision",
    );
    assert_eq!(rev2, rev1 + 1);
    for (compares, what) in [
        (vec![Compare::unchanged(&key, rev1)], "a stale revision"),
        (
            vec![Compare::unchanged(&key, rev2 + 1)],
            "a future revision",
        ),
        (vec![Compare::absent(&key)], "absent for an existing key"),
        (
            vec![Compare::unchanged(&other, rev2)],
            "a revision for an absent key",
        ),
        (
            vec![
                Compare::unchanged(&key, rev2),
                Compare::unchanged(&key, rev1),
            ],
            "one holding and one failing compare",
        ),
    ] {
        let out = ok(store.txn(&compares, &[put_op(&key, b"v3")]), what);
        assert_eq!(out, TxnOutcome::Conflict, "a compare on {what} must fail");
    }
    let kv = get(store, &key).unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v2"[..], rev2));
    assert_eq!(
        revision(store),
        rev2,
        "failed compares must not bump the revision"
    );
    let rev3 = committed(
        ok(
            store.txn(
                &[Compare::unchanged(&key, rev2), Compare::absent(&other)],
                &[put_op(&other, b"x")],
            ),
            "two holding compares",
        ),
        "two holding compares",
    );
    assert_eq!(rev3, rev2 + 1);
}

/// A txn whose compare fails leaves every key and the revision exactly as they were, even when
/// other compares held and the ops mix puts and deletes.
pub fn failed_txn_writes_nothing(store: &dyn Store) {
    let ns = ns("failed_txn_writes_nothing");
    let [a, b, c] = ["a", "b", "c"].map(|k| format!("{ns}{k}"));
    committed(
        ok(
            store.txn(&[], &[put_op(&a, b"a"), put_op(&b, b"b")]),
            "setup",
        ),
        "setup",
    );
    let before = ok(store.read(&[Read::Prefix(ns.clone())]), "read before");
    let rev_a = before.results[0][0].mod_revision;
    let out = ok(
        store.txn(
            &[Compare::unchanged(&a, rev_a), Compare::absent(&b)],
            &[
                put_op(&a, b"changed"),
                Op::Delete(b.clone()),
                put_op(&c, b"new"),
            ],
        ),
        "txn with a failing compare",
    );
    assert_eq!(
        out,
        TxnOutcome::Conflict,
        "compare absent on an existing key must fail"
    );
    let after = ok(store.read(&[Read::Prefix(ns.clone())]), "read after");
    assert_eq!(
        after, before,
        "a failed txn must change no key and not the revision"
    );
}

/// A txn with compares but no ops reports the current revision without bumping it.
pub fn compare_only_txn(store: &dyn Store) {
    let key = format!("{}k", ns("compare_only_txn"));
    let rev = put(store, &key, b"v");
    let out = ok(
        store.txn(&[Compare::unchanged(&key, rev)], &[]),
        "compare-only txn",
    );
    assert_eq!(
        out,
        TxnOutcome::Committed(rev),
        "a holding compare-only txn commits at the current revision"
    );
    assert_eq!(
        revision(store),
        rev,
        "a txn without ops must not bump the revision"
    );
    let out = ok(
        store.txn(&[Compare::unchanged(&key, rev + 7)], &[]),
        "compare-only txn",
    );
    assert_eq!(out, TxnOutcome::Conflict);
    let out = ok(store.txn(&[], &[]), "empty txn");
    assert_eq!(
        out,
        TxnOutcome::Committed(rev),
        "an empty txn commits at the current revision"
    );
    assert_eq!(revision(store), rev);
}

/// Deleting an absent key is not an error and leaves it absent.
pub fn delete_absent_key(store: &dyn Store) {
    let ns = ns("delete_absent_key");
    let absent = format!("{ns}absent");
    let before = revision(store);
    let rev = committed(
        ok(
            store.txn(&[], &[Op::Delete(absent.clone())]),
            "delete of an absent key",
        ),
        "delete of an absent key",
    );
    assert!(
        rev == before || rev == before + 1,
        "deleting an absent key may bump the revision by at most one (was {before}, got {rev})"
    );
    assert_eq!(
        revision(store),
        rev,
        "the txn must report the store's revision"
    );
    assert_eq!(get(store, &absent), None);
    let present = format!("{ns}present");
    let rev2 = committed(
        ok(
            store.txn(&[], &[Op::Delete(absent.clone()), put_op(&present, b"p")]),
            "delete of an absent key next to a put",
        ),
        "delete of an absent key next to a put",
    );
    assert_eq!(rev2, rev + 1);
    assert_eq!(get(store, &present).unwrap().mod_revision, rev2);
}

/// A read batch without reads still reports the current revision.
pub fn empty_read_batch(store: &dyn Store) {
    let key = format!("{}k", ns("empty_read_batch"));
    let rev = put(store, &key, b"v");
    let snap = ok(store.read(&[]), "empty read batch");
    assert_eq!(
        snap,
        Snapshot {
            revision: rev,
            results: vec![]
        }
    );
}

/// Results of a batch come back in request order, all taken at the reported revision.
pub fn read_batch_is_one_snapshot(store: &dyn Store) {
    let ns = ns("read_batch_is_one_snapshot");
    let [a, b, c] = ["a", "b", "sub/c"].map(|k| format!("{ns}{k}"));
    put(store, &a, b"a");
    put(store, &b, b"b");
    let rev = put(store, &c, b"c");
    let snap = ok(
        store.read(&[
            Read::Get(b.clone()),
            Read::Prefix(ns.clone()),
            Read::Get(format!("{ns}missing")),
            Read::Prefix(format!("{ns}sub/")),
            Read::Get(a.clone()),
        ]),
        "mixed read batch",
    );
    assert_eq!(
        snap.revision, rev,
        "the batch must report the current revision"
    );
    assert_eq!(snap.results.len(), 5, "one result per read");
    assert_eq!(keys(snap.list(0)), [b.as_str()]);
    assert_eq!(keys(snap.list(1)), [a.as_str(), b.as_str(), c.as_str()]);
    assert!(snap.list(2).is_empty());
    assert_eq!(keys(snap.list(3)), [c.as_str()]);
    assert_eq!(snap.get(4).map(|kv| kv.value.as_slice()), Some(&b"a"[..]));
    assert!(
        snap.results
            .iter()
            .flatten()
            .all(|kv| kv.mod_revision <= snap.revision),
        "no result may be newer than the snapshot revision"
    );
}

/// While a writer keeps updating two keys together, every read batch sees both at the same
/// txn, and that txn is the snapshot's revision.
pub fn concurrent_reads_see_whole_txns(store: &dyn Store) {
    const WRITES: usize = 300;
    let ns = ns("concurrent_reads_see_whole_txns");
    let [x, y] = ["x", "y"].map(|k| format!("{ns}{k}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = [
        Read::Get(x.clone()),
        Read::Get(y.clone()),
        Read::Prefix(ns.clone()),
    ];
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let _finish = SetOnDrop(&done);
            for i in 0..WRITES {
                let v = i.to_string().into_bytes();
                put_txn(store, &[put_op(&x, &v), put_op(&y, &v)]);
            }
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "the writer did not finish within 120s"
            );
            let snap = ok(store.read(&reads), "batch read during writes");
            match (snap.get(0), snap.get(1)) {
                (None, None) => assert!(snap.list(2).is_empty()),
                (Some(kx), Some(ky)) => {
                    assert_eq!(
                        (&kx.value, kx.mod_revision),
                        (&ky.value, ky.mod_revision),
                        "two keys written by one txn must be read at the same txn"
                    );
                    assert_eq!(
                        kx.mod_revision, snap.revision,
                        "with a single writer the snapshot revision is its last txn"
                    );
                    assert_eq!(
                        snap.list(2),
                        [kx.clone(), ky.clone()],
                        "prefix read disagrees"
                    );
                }
                (gx, gy) => panic!("read saw half a txn: x={gx:?} y={gy:?}"),
            }
        }
        writer.join().expect("writer thread panicked");
    });
    let snap = ok(store.read(&reads), "final read");
    let last = (WRITES - 1).to_string().into_bytes();
    assert_eq!(snap.get(0).unwrap().value, last);
    assert_eq!(snap.get(1).unwrap().value, last);
}

struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    // Also runs when the writer panics, so the reader loop ends and the panic surfaces.
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

fn put_txn(store: &dyn Store, ops: &[Op]) -> i64 {
    committed(
        ok(store.txn(&[], ops), "unconditional txn"),
        "unconditional txn",
    )
}

/// Eight threads each add 200 to one counter by read-modify-CAS with retry on conflict; no
/// increment may be lost, and each success is exactly one revision.
pub fn concurrent_cas_increments(store: &dyn Store) {
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 200;
    let key = format!("{}counter", ns("concurrent_cas_increments"));
    let before = revision(store);
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| cas_increment_loop(store, &key, PER_THREAD, deadline)))
            .collect();
        for w in workers {
            w.join().expect("an increment thread panicked");
        }
    });
    let kv = get(store, &key).expect("counter after the increments");
    let total = THREADS as u64 * PER_THREAD;
    assert_eq!(
        parse_counter(&kv.value),
        total,
        "{THREADS} threads x {PER_THREAD} increments must give exactly {total} (lost updates?)"
    );
    assert_eq!(
        revision(store),
        before + total as i64,
        "every successful increment is one revision, every conflict none"
    );
    assert_eq!(kv.mod_revision, before + total as i64);
}

/// Adds `count` to the decimal counter at `key` with compare-and-swap, retrying on conflict,
/// and gives up (panics) at `deadline`. Shared with the multi-process tests.
pub fn cas_increment_loop(store: &dyn Store, key: &str, count: u64, deadline: Instant) {
    let mut done = 0;
    while done < count {
        assert!(
            Instant::now() < deadline,
            "CAS increments on {key:?} did not finish in time ({done} of {count} done)"
        );
        let current = ok(store.get(key), "reading the counter");
        let (value, rev) = current.map_or((0, 0), |kv| (parse_counter(&kv.value), kv.mod_revision));
        let next = (value + 1).to_string().into_bytes();
        let out = ok(
            store.txn(
                &[Compare::unchanged(key, rev)],
                &[Op::Put(key.to_string(), next)],
            ),
            "CAS increment",
        );
        if let TxnOutcome::Committed(_) = out {
            done += 1;
        }
    }
}

/// Parses a counter written by [`cas_increment_loop`].
pub fn parse_counter(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("counter value {value:?} is not a decimal number"))
}

/// Values of 1 MiB holding every byte value round-trip exactly.
pub fn large_values(store: &dyn Store) {
    let ns = ns("large_values");
    let key = format!("{ns}big");
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 256) as u8)
        .collect();
    let rev = put(store, &key, &big);
    let kv = get(store, &key).expect("large value");
    assert_eq!(
        kv.value.len(),
        big.len(),
        "a 1 MiB value must keep its length"
    );
    assert!(
        kv.value == big,
        "a 1 MiB value must read back byte for byte"
    );
    assert_eq!(kv.mod_revision, rev);
    let listed = ok(store.range(&ns), "range over a large value");
    assert!(
        listed.len() == 1 && listed[0].value == big,
        "range must return the large value"
    );
    put(store, &key, b"small");
    assert_eq!(
        get(store, &key).unwrap().value,
        b"small",
        "shrinking a value must work"
    );
}
