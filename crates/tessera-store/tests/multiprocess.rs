//! Many OS processes sharing one SQLite file, as concurrent CNI invocations on one host do.
//!
//! The test executable re-runs itself as each child (selected with `--exact` and told what to
//! do through environment variables), so no extra binary is needed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_store::conformance::{cas_increment_loop, parse_counter};
use tessera_store::{Compare, Op, Read, SqliteStore, Store, TxnOutcome};

const CHILD_DB: &str = "TESSERA_TEST_CHILD_DB";
const CHILD_GO: &str = "TESSERA_TEST_CHILD_GO";
const CHILD_INCREMENTS: &str = "TESSERA_TEST_CHILD_INCREMENTS";

const PROCESSES: usize = 32;
const INCREMENTS: u64 = 25;
const COUNTER: &str = "/tessera/test/counter";
const MIRROR: &str = "/tessera/test/mirror";

/// Spawns this test binary to run only `test_name`, with `envs` set.
fn spawn_self(test_name: &str, envs: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("creating child log");
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(std::env::current_exe().expect("current test executable"));
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning a child test process")
}

/// Waits for every child until `deadline`, killing stragglers, and returns a failure report
/// (empty when all exited 0).
fn wait_all(children: Vec<(Child, PathBuf)>, deadline: Instant) -> String {
    let mut report = String::new();
    for (i, (mut child, log)) in children.into_iter().enumerate() {
        let status = loop {
            match child.try_wait().expect("waiting for a child") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if status.is_none_or(|s| !s.success()) {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            report.push_str(&format!("child {i} ended with {status:?}:\n{output}\n"));
        }
    }
    report
}

/// Child side: wait for the start signal, then increment the counter and its mirror together
/// with CAS, checking after each step that a batch read sees both at the same txn.
fn child(db: &str, go: &str, increments: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !Path::new(go).exists() {
        assert!(Instant::now() < deadline, "start signal never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Every child opens the (possibly not yet existing) file at the same moment, so the
    // first-open path (create file, switch to WAL, create schema) races too.
    let store = SqliteStore::open(db).expect("child opening the store");
    let reads = [Read::Get(COUNTER.into()), Read::Get(MIRROR.into())];
    let mut done = 0;
    let mut attempts = 0u64;
    while done < increments {
        attempts += 1;
        assert!(
            Instant::now() < deadline && attempts < 1_000_000,
            "gave up after {attempts} attempts, {done} of {increments} increments done"
        );
        let snap = store.read(&reads).expect("child batch read");
        let (value, rev) = match (snap.get(0), snap.get(1)) {
            (None, None) => (0, 0),
            (Some(c), Some(m)) => {
                assert_eq!(
                    (&c.value, c.mod_revision),
                    (&m.value, m.mod_revision),
                    "counter and mirror are written together and must be read together"
                );
                assert_eq!(c.mod_revision, snap.revision, "only these keys are written");
                (parse_counter(&c.value), c.mod_revision)
            }
            (c, m) => panic!("read half a txn: counter={c:?} mirror={m:?}"),
        };
        let next = (value + 1).to_string().into_bytes();
        let out = store
            .txn(
                &[Compare::unchanged(COUNTER, rev)],
                &[
                    Op::Put(COUNTER.into(), next.clone()),
                    Op::Put(MIRROR.into(), next),
                ],
            )
            .expect("child CAS txn (a busy database must wait, not fail)");
        if let TxnOutcome::Committed(_) = out {
            done += 1;
        }
    }
    println!("child done: {increments} increments in {attempts} attempts");
}

#[test]
fn many_processes_increment_one_counter() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        let go = std::env::var(CHILD_GO).expect("child needs the start-signal path");
        let n = std::env::var(CHILD_INCREMENTS).unwrap().parse().unwrap();
        return child(&db, &go, n);
    }
    let dir = tempfile::tempdir().unwrap();
    // The file does not exist yet: the children create it.
    let db = dir.path().join("state").join("tessera.db");
    let go = dir.path().join("go");
    let increments = INCREMENTS.to_string();
    let envs = [
        (CHILD_DB, db.to_str().unwrap()),
        (CHILD_GO, go.to_str().unwrap()),
        (CHILD_INCREMENTS, increments.as_str()),
    ];
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let log = dir.path().join(format!("child-{i}.log"));
            (
                spawn_self("many_processes_increment_one_counter", &envs, &log),
                log,
            )
        })
        .collect();
    std::fs::write(&go, b"go").unwrap();
    let report = wait_all(children, Instant::now() + Duration::from_secs(180));
    assert!(report.is_empty(), "some children failed:\n{report}");

    let store = SqliteStore::open(&db).unwrap();
    let total = PROCESSES as u64 * INCREMENTS;
    let snap = store
        .read(&[Read::Get(COUNTER.into()), Read::Get(MIRROR.into())])
        .unwrap();
    let counter = snap.get(0).expect("counter exists");
    assert_eq!(
        parse_counter(&counter.value),
        total,
        "{PROCESSES} processes x {INCREMENTS} increments: an update was lost"
    );
    assert_eq!(snap.get(1).unwrap().value, counter.value);
    assert_eq!(
        snap.revision, total as i64,
        "one revision per successful increment"
    );
    assert_eq!(counter.create_revision, 1);
    store.integrity_check().expect("PRAGMA integrity_check");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "the store must be in WAL mode");
}

#[test]
fn processes_and_threads_share_one_file() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        let n = std::env::var(CHILD_INCREMENTS).unwrap().parse().unwrap();
        let store = SqliteStore::open(&db).expect("child opening the store");
        let deadline = Instant::now() + Duration::from_secs(120);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| cas_increment_loop(&store, COUNTER, n, deadline));
            }
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tessera.db");
    // Created up front this time, so the children only contend on txns.
    drop(SqliteStore::open(&db).unwrap());
    let envs = [(CHILD_DB, db.to_str().unwrap()), (CHILD_INCREMENTS, "20")];
    let children: Vec<_> = (0..8)
        .map(|i| {
            let log = dir.path().join(format!("child-{i}.log"));
            (
                spawn_self("processes_and_threads_share_one_file", &envs, &log),
                log,
            )
        })
        .collect();
    let report = wait_all(children, Instant::now() + Duration::from_secs(180));
    assert!(report.is_empty(), "some children failed:\n{report}");
    let store = SqliteStore::open(&db).unwrap();
    let counter = store.get(COUNTER).unwrap().expect("counter exists");
    assert_eq!(parse_counter(&counter.value), 8 * 4 * 20);
    assert_eq!(store.read(&[]).unwrap().revision, 8 * 4 * 20);
    store.integrity_check().unwrap();
}
