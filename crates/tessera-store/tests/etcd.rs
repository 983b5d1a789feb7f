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
fn a_full_database_says_so_and_how_to_free_space() {
    let Some(etcd) = LocalEtcd::with_args_or_skip(&["--quota-backend-bytes", "262144"], "NOSPACE")
    else {
        return;
    };
    let store = etcd.store();
    let err = etcd.fill_until_refused();
    assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    for needle in [
        etcd.url().as_str(),
        "is full",
        "NOSPACE",
        "etcdctl compact",
        "etcdctl defrag",
        "etcdctl alarm disarm",
        "--quota-backend-bytes",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing: {msg}");
    }
    // Once the alarm is raised, every write is refused the same way, however small.
    let err = store
        .txn(&[], &[Op::Put("small".into(), b"v".to_vec())])
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
    // Reads go on, so admin commands can still show what the store holds.
    assert!(store.get("fill/0").unwrap().is_some());
}

#[test]
fn a_record_over_max_request_bytes_is_named_with_the_limit() {
    let Some(etcd) =
        LocalEtcd::with_args_or_skip(&["--max-request-bytes", "4096"], "max-request-bytes")
    else {
        return;
    };
    let store = etcd.store();
    // Over --max-request-bytes: etcd itself refuses ("request is too large"). Over that
    // plus gRPC's 512 KiB allowance: the gRPC layer refuses before etcd sees it ("message
    // larger than max"). Either way the message names the record and the limit.
    for size in [8 * 1024, 600 * 1024] {
        let err = store
            .txn(
                &[],
                &[
                    Op::Put("small".into(), b"v".to_vec()),
                    Op::Put("config/reservations/big".into(), vec![b'x'; size]),
                ],
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { .. }),
            "{size}: {err:?}"
        );
        let msg = err.to_string();
        for needle in [
            etcd.url().as_str(),
            "config/reservations/big",
            &format!("{size} bytes"),
            "--max-request-bytes",
            "1.5 MiB",
        ] {
            assert!(msg.contains(needle), "{size}: {needle:?} missing: {msg}");
        }
        assert_eq!(store.get("small").unwrap(), None, "nothing may be written");
    }
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

/// A TCP relay to `target` that can start swallowing everything the server sends back, as a
/// network path that loses answers would.
struct LossyRelay {
    port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyRelay {
    fn start(target: std::net::SocketAddr) -> Self {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = swallow.clone();
        // The threads end when the test process does; they hold nothing but sockets.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                let (mut s_in, mut c_out, flag) = (server, client, flag.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if !flag.load(Ordering::Acquire) && c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, swallow }
    }
}

/// A write reaches etcd and is applied, but its answer is lost. The backend sends it again
/// to the next endpoint, where its own compares fail; it then finds its writes in place and
/// reports the txn as committed, once, instead of a conflict or an error.
#[test]
fn a_write_whose_answer_was_lost_is_recognised_as_applied() {
    let Some(etcd) = LocalEtcd::start_or_skip("lost answer") else {
        return;
    };
    let direct = etcd.url().trim_start_matches("etcd://").to_string();
    let relay = LossyRelay::start(direct.parse().unwrap());
    let url = format!("etcd://127.0.0.1:{},{direct}", relay.port);
    let store = open_with(
        &url,
        &OpenOptions {
            etcd_timeout_ms: Some(3000),
            ..Default::default()
        },
    )
    .unwrap();
    // The relay is listed first, so it carries the calls while it works.
    let TxnOutcome::Committed(rev) = store
        .txn(&[], &[Op::Put("block".into(), b"v1".to_vec())])
        .unwrap()
    else {
        panic!("setup write must commit");
    };
    relay
        .swallow
        .store(true, std::sync::atomic::Ordering::Release);
    let out = store
        .txn(
            &[
                tessera_store::Compare::unchanged("block", rev),
                tessera_store::Compare::absent("handle"),
            ],
            &[
                Op::Put("block".into(), b"v2".to_vec()),
                Op::Put("handle".into(), b"h".to_vec()),
            ],
        )
        .unwrap();
    let direct_store = open_with(&format!("etcd://{direct}"), &OpenOptions::default()).unwrap();
    let block = direct_store.get("block").unwrap().unwrap();
    assert_eq!(block.value, b"v2");
    assert_eq!(
        out,
        TxnOutcome::Committed(block.mod_revision),
        "the lost answer must be recovered as the revision the write was applied at"
    );
    assert_eq!(
        block.mod_revision,
        rev + 1,
        "the write must be applied exactly once"
    );
    assert_eq!(direct_store.read(&[]).unwrap().revision, rev + 1);

    // A write whose compares really fail is still a conflict, on the endpoint that answers.
    let out = store
        .txn(
            &[tessera_store::Compare::unchanged("block", rev)],
            &[Op::Put("block".into(), b"v3".to_vec())],
        )
        .unwrap();
    assert_eq!(out, TxnOutcome::Conflict);
}
