//! The etcd backend against a real etcd started on 127.0.0.1: the conformance suite, key
//! prefixes, and what callers see when members are stopped, frozen or gone.
//!
//! Without an etcd binary these tests print why and pass, except under `CI=true`, where they
//! fail.

#![cfg(feature = "etcd")]

use std::time::{Duration, Instant};

use tessera_store::local_etcd::LocalEtcd;
use tessera_store::{conformance, open_with, Op, OpenOptions, Store, StoreError, TxnOutcome};

fn short_timeout() -> OpenOptions {
    OpenOptions {
        etcd_timeout_ms: Some(1500),
        ..Default::default()
    }
}

#[test]
fn conformance_suite_on_etcd() {
    let Some(etcd) = LocalEtcd::start_or_skip("conformance_suite_on_etcd") else {
        return;
    };
    conformance::run_all(&etcd.store());
}

#[test]
fn conformance_suite_through_open_with_a_custom_prefix() {
    let Some(etcd) = LocalEtcd::start_or_skip("custom prefix") else {
        return;
    };
    let options = OpenOptions {
        etcd_prefix: Some("/other-install/".into()),
        ..Default::default()
    };
    let store = open_with(&etcd.url(), &options).unwrap();
    assert_eq!(
        store.describe(),
        format!("{} (key prefix /other-install/)", etcd.url())
    );
    conformance::put_then_get(&*store);
    conformance::prefix_range_order_and_boundaries(&*store);
    conformance::compare_absent(&*store);

    // A store rooted at "/" sees the raw etcd keys: every key sits under the prefix.
    let root = open_with(
        &etcd.url(),
        &OpenOptions {
            etcd_prefix: Some("/".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let all = root.range("").unwrap();
    assert!(!all.is_empty());
    assert!(
        all.iter()
            .all(|kv| kv.key.starts_with("other-install//conformance/")),
        "keys outside the prefix: {:?}",
        all.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    // The default prefix sees none of it.
    assert!(etcd.store().range("").unwrap().is_empty());
}

#[test]
fn a_txn_writing_one_key_twice_applies_the_last_write() {
    let Some(etcd) = LocalEtcd::start_or_skip("duplicate keys in a txn") else {
        return;
    };
    let store = etcd.store();
    let ops = [
        Op::Put("k".into(), b"1".to_vec()),
        Op::Put("k".into(), b"2".to_vec()),
        Op::Put("gone".into(), b"x".to_vec()),
        Op::Delete("gone".into()),
    ];
    let TxnOutcome::Committed(rev) = store.txn(&[], &ops).unwrap() else {
        panic!("unconditional txn must commit");
    };
    let kv = store.get("k").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"2"[..], rev));
    assert_eq!(store.get("gone").unwrap(), None);
}

#[test]
fn too_many_ops_is_refused_with_the_limit_named() {
    let Some(etcd) = LocalEtcd::start_or_skip("max-txn-ops") else {
        return;
    };
    let store = etcd.store();
    let ops: Vec<Op> = (0..129)
        .map(|i| Op::Put(format!("k{i}"), b"v".to_vec()))
        .collect();
    let err = store.txn(&[], &ops).unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--max-txn-ops"), "{msg}");
    assert!(msg.contains(&etcd.url()), "{msg}");
}

#[test]
fn nothing_listening_is_unavailable_at_once_and_names_the_endpoint() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("etcd://127.0.0.1:{port}");
    let store = open_with(&url, &OpenOptions::default()).unwrap();
    let start = Instant::now();
    let err = store.read(&[]).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "datastore {url} is unavailable: reading failed on every endpoint (127.0.0.1:{port}: "
        )),
        "{msg}"
    );
    assert!(msg.contains("check that etcd is running"), "{msg}");
    let err = store
        .txn(&[], &[Op::Put("k".into(), b"v".to_vec())])
        .unwrap_err();
    assert!(
        err.to_string().contains("writing failed on every endpoint"),
        "{err}"
    );
}

#[test]
fn frozen_etcd_times_out_then_recovers() {
    let Some(mut etcd) = LocalEtcd::start_or_skip("frozen etcd") else {
        return;
    };
    let store = etcd.store_with(&short_timeout());
    store
        .txn(&[], &[Op::Put("k".into(), b"1".to_vec())])
        .unwrap();
    etcd.pause(0);
    let start = Instant::now();
    let err = store.read(&[]).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "read took {took:?}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&etcd.url()), "{err}");
    let start = Instant::now();
    let err = store
        .txn(&[], &[Op::Put("k".into(), b"2".to_vec())])
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        err.to_string().contains("may or may not have been applied"),
        "{err}"
    );
    etcd.resume(0);
    // The txn sent to the frozen member was queued in its socket; once thawed it applies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.read(&[]) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("no recovery after SIGCONT: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    store
        .txn(&[], &[Op::Put("k".into(), b"3".to_vec())])
        .unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().value, b"3");
}

#[test]
fn stopped_etcd_fails_fast_then_the_same_store_recovers() {
    let Some(mut etcd) = LocalEtcd::start_or_skip("stopped etcd") else {
        return;
    };
    let store = etcd.store_with(&short_timeout());
    store
        .txn(&[], &[Op::Put("k".into(), b"1".to_vec())])
        .unwrap();
    etcd.stop(0);
    for _ in 0..3 {
        let start = Instant::now();
        let err = store.read(&[]).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
        assert!(
            err.to_string().contains("failed on every endpoint"),
            "{err}"
        );
    }
    etcd.restart(0).unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().value, b"1");
    store
        .txn(&[], &[Op::Put("k".into(), b"2".to_vec())])
        .unwrap();
}

#[test]
fn three_member_cluster_keeps_serving_with_one_member_stopped() {
    let Some(mut etcd) = LocalEtcd::cluster_or_skip(3, "three-member cluster") else {
        return;
    };
    let store = etcd.store();
    conformance::compare_absent(&store);
    for victim in [0, 1] {
        etcd.stop(victim);
        for i in 0..20 {
            let key = format!("after-stop-{victim}-{i}");
            let out = store
                .txn(
                    &[tessera_store::Compare::absent(&key)],
                    &[Op::Put(key.clone(), b"v".to_vec())],
                )
                .unwrap_or_else(|e| panic!("write {i} with member {victim} stopped: {e}"));
            assert!(matches!(out, TxnOutcome::Committed(_)));
        }
        etcd.restart(victim).unwrap();
    }
    assert_eq!(store.range("after-stop-").unwrap().len(), 40);
}
