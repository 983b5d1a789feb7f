//! Runs every conformance check on the memory and the SQLite backend, one `#[test]` each, so a
//! failure names both the check and the backend.

use tessera_store::conformance::{self, CHECKS};
use tessera_store::{MemoryStore, SqliteStore, Store};

/// A fresh SQLite store in its own temporary directory, removed when dropped.
struct TempSqlite {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

impl TempSqlite {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let store = SqliteStore::open(dir.path().join("tessera.db")).expect("opening SQLite store");
        Self { store, _dir: dir }
    }
}

macro_rules! per_backend {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[test]
                fn $check() {
                    conformance::$check(&MemoryStore::new());
                }
            )*
        }

        mod sqlite {
            use super::*;
            $(
                #[test]
                fn $check() {
                    let t = TempSqlite::new();
                    conformance::$check(&t.store);
                    t.store.integrity_check().expect("integrity after the check");
                }
            )*
        }

        #[test]
        fn every_check_has_a_test_per_backend() {
            let listed = [$(stringify!($check)),*];
            let known: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
            assert_eq!(listed.as_slice(), known.as_slice(), "update the per_backend! list");
        }
    };
}

per_backend![
    get_absent,
    put_then_get,
    one_revision_per_txn,
    overwrite_keeps_create_revision,
    delete_and_recreate,
    prefix_range_order_and_boundaries,
    compare_absent,
    compare_mod_revision,
    failed_txn_writes_nothing,
    compare_only_txn,
    delete_absent_key,
    empty_read_batch,
    read_batch_is_one_snapshot,
    concurrent_reads_see_whole_txns,
    concurrent_cas_increments,
    large_values,
];

#[test]
fn run_all_on_one_memory_store() {
    let store = MemoryStore::new();
    conformance::run_all(&store);
}

#[test]
fn run_all_on_one_sqlite_store_survives_reopen() {
    let t = TempSqlite::new();
    conformance::run_all(&t.store);
    let rev = t.store.read(&[]).unwrap().revision;
    let all = t.store.range("").unwrap();
    let path = t.store.path().to_path_buf();
    // A second handle on the same file (as a second process would have) sees the same data.
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.read(&[]).unwrap().revision, rev);
    assert_eq!(again.range("").unwrap(), all);
    let out = again
        .txn(
            &[],
            &[tessera_store::Op::Put(
                "/after/reopen".into(),
                b"x".to_vec(),
            )],
        )
        .unwrap();
    assert_eq!(out, tessera_store::TxnOutcome::Committed(rev + 1));
    assert_eq!(
        t.store.get("/after/reopen").unwrap().unwrap().mod_revision,
        rev + 1
    );
    again.integrity_check().unwrap();
}

#[test]
fn boxed_and_shared_stores_pass_too() {
    let boxed: Box<dyn Store> = tessera_store::open("memory").unwrap();
    conformance::run_all(&boxed);
    let shared: std::sync::Arc<dyn Store> = std::sync::Arc::new(TempSqlite::new().store);
    conformance::concurrent_cas_increments(&shared);
}
