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

/// Deliberately broken stores: each must fail the check that guards the rule it breaks, so a
/// check that passes everything cannot go unnoticed.
mod broken_stores {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::Duration;

    use tessera_store::conformance;
    use tessera_store::{Compare, MemoryStore, Op, Read, Snapshot, Store, StoreError, TxnOutcome};

    #[track_caller]
    fn must_fail(check: fn(&dyn Store), store: &dyn Store, rule: &str) {
        let result = catch_unwind(AssertUnwindSafe(|| check(store)));
        assert!(
            result.is_err(),
            "the check passed a store that breaks: {rule}"
        );
    }

    /// Applies ops without looking at the compares.
    struct IgnoresCompares(MemoryStore);
    impl Store for IgnoresCompares {
        fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
            self.0.read(reads)
        }
        fn txn(&self, _: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
            self.0.txn(&[], ops)
        }
        fn describe(&self) -> String {
            "ignores-compares".into()
        }
    }

    /// Commits each op as its own txn.
    struct RevisionPerOp(MemoryStore);
    impl Store for RevisionPerOp {
        fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
            self.0.read(reads)
        }
        fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
            let mut out = self.0.txn(compares, &[])?;
            for op in ops {
                out = self.0.txn(&[], std::slice::from_ref(op))?;
            }
            Ok(out)
        }
        fn describe(&self) -> String {
            "revision-per-op".into()
        }
    }

    /// Treats a prefix as a plain string prefix without its trailing '/'.
    struct SloppyPrefix(MemoryStore);
    impl Store for SloppyPrefix {
        fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
            let reads: Vec<Read> = reads
                .iter()
                .map(|r| match r {
                    Read::Prefix(p) => Read::Prefix(p.trim_end_matches('/').to_string()),
                    other => other.clone(),
                })
                .collect();
            self.0.read(&reads)
        }
        fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
            self.0.txn(compares, ops)
        }
        fn describe(&self) -> String {
            "sloppy-prefix".into()
        }
    }

    /// Checks compares, then writes in a separate step: a read-check-write race.
    struct RacyCas(MemoryStore);
    impl Store for RacyCas {
        fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
            self.0.read(reads)
        }
        fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
            if self.0.txn(compares, &[])? == TxnOutcome::Conflict {
                return Ok(TxnOutcome::Conflict);
            }
            std::thread::sleep(Duration::from_micros(200));
            self.0.txn(&[], ops)
        }
        fn describe(&self) -> String {
            "racy-cas".into()
        }
    }

    #[test]
    fn compare_checks_catch_a_store_ignoring_compares() {
        let rule = "a failed compare must write nothing";
        must_fail(
            conformance::compare_absent,
            &IgnoresCompares(MemoryStore::new()),
            rule,
        );
        must_fail(
            conformance::failed_txn_writes_nothing,
            &IgnoresCompares(MemoryStore::new()),
            rule,
        );
    }

    #[test]
    fn revision_check_catches_one_revision_per_op() {
        must_fail(
            conformance::one_revision_per_txn,
            &RevisionPerOp(MemoryStore::new()),
            "one revision per txn",
        );
    }

    #[test]
    fn prefix_check_catches_sloppy_boundaries() {
        must_fail(
            conformance::prefix_range_order_and_boundaries,
            &SloppyPrefix(MemoryStore::new()),
            "a/ must not match a0",
        );
    }

    #[test]
    fn increment_check_catches_lost_updates() {
        must_fail(
            conformance::concurrent_cas_increments,
            &RacyCas(MemoryStore::new()),
            "no lost updates",
        );
    }
}
