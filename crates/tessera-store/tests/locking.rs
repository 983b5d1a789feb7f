//! Lock behaviour of the SQLite backend: writers wait for each other, readers never wait, and
//! a lock held past the busy timeout is reported as a transient, path-naming error.

use std::time::{Duration, Instant};

use tessera_store::{Op, SqliteStore, Store, StoreError, TxnOutcome};

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put(key.to_string(), value.to_vec())
}

#[test]
fn lock_held_past_the_timeout_is_unavailable_and_reads_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let timeout = Duration::from_millis(300);
    let store = SqliteStore::open_with_busy_timeout(&path, timeout).unwrap();
    assert_eq!(
        store.txn(&[], &[put("/k", b"1")]).unwrap(),
        TxnOutcome::Committed(1)
    );

    // Another process (here: another connection) takes the write lock and keeps it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    assert_eq!(
        store.get("/k").unwrap().unwrap().value,
        b"1",
        "in WAL mode readers must not wait for a writer"
    );
    let second = SqliteStore::open_with_busy_timeout(&path, timeout)
        .expect("opening an existing store must not need the write lock");

    let started = Instant::now();
    let err = store
        .txn(&[], &[put("/k", b"2")])
        .expect_err("the write lock is held elsewhere");
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        waited >= timeout,
        "must wait the busy timeout first, waited {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "must give up soon after, waited {waited:?}"
    );
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "datastore {p} is unavailable: writing: another process kept the database locked \
             for more than 300ms (database is locked); retry, and if it persists look for a \
             hung process holding the file (for example `fuser {p}`)"
        )
    );

    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        store.txn(&[], &[put("/k", b"2")]).unwrap(),
        TxnOutcome::Committed(2)
    );
    assert_eq!(second.get("/k").unwrap().unwrap().value, b"2");
}

#[test]
fn writer_waits_for_a_short_lock_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let store = SqliteStore::open(&path).unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
        .execute("UPDATE meta SET revision = revision + 1", [])
        .unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        other.execute_batch("COMMIT").unwrap();
    });
    let started = Instant::now();
    let out = store.txn(&[], &[put("/k", b"v")]).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the txn must have waited"
    );
    holder.join().unwrap();
    assert_eq!(
        out,
        TxnOutcome::Committed(2),
        "the txn must run after the other writer's commit and see its revision"
    );
}
