// Guided migrations interrupted after every step: planning again from the datastore alone
// finishes them, and no step ever leaves both pools disabled or the IPAM records inconsistent.

mod common_fixtures;

use common_fixtures::*;
use serde_json::json;
use tessera_core::catalog::Catalog;
use tessera_core::drain::{drain_request, DRAIN_ANNOTATION};
use tessera_core::ipam::{AssignRequest, Attributes, Ipam};
use tessera_core::migrate::{
    execute, next_block_size_step, next_move_step, BlockSizeRequest, DrainSettings, MigrateError,
    MoveRequest, Step, Target,
};
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::{MemoryStore, Store};
use tessera_store::SqliteStore;

/// Each test runs on these stores (the temporary directory keeps the SQLite file alive).
fn stores() -> Vec<(Box<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("t.db")).unwrap();
    vec![
        (Box::new(MemoryStore::new()), None),
        (Box::new(sqlite), Some(dir)),
    ]
}

fn drain() -> DrainSettings {
    DrainSettings {
        max_parallel: 2,
        ready_timeout_seconds: 60,
        now: "2026-12-01T10:00:00Z".into(),
    }
}

fn pod(handle: &str, name: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: 1,
        attrs: Attributes {
            namespace: Some("default".into()),
            pod: Some(name.into()),
            node: Some(node.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Three pods on two nodes holding addresses of `old` (10.0.0.0/24, /28 blocks).
fn seeded(store: &dyn Store) {
    pool(
        store,
        "old",
        json!({"cidr": "10.0.0.0/24", "blockSize": 28}),
    );
    node(store, "n1", &[]);
    node(store, "n2", &[]);
    let ipam = Ipam::new(store);
    for (i, n) in [(1, "n1"), (2, "n2"), (3, "n1")] {
        ipam.assign(&pod(&format!("h{i}-0"), &format!("web-{i}"), n))
            .unwrap();
    }
}

fn pool_of(store: &dyn Store, name: &str) -> Option<tessera_core::resources::calico::IPPool> {
    match Catalog::new(store).get(Kind::IPPool, name) {
        Ok(Resource::IPPool(p)) => Some(p),
        _ => None,
    }
}

/// What restarting every pod holding an address of `step`'s draining pool does: the pod's
/// handle is released and the pod created again asks for a new one.
fn restart_pods(store: &dyn Store, step: &Step) {
    let Step::Wait(waiting) = step else {
        return;
    };
    let ipam = Ipam::new(store);
    for h in &waiting.holders {
        ipam.release_handle(&h.handle).unwrap();
        let (base, generation) = h.handle.split_once('-').unwrap();
        let next = generation.parse::<u32>().unwrap() + 1;
        let attrs = &h.attrs;
        let req = pod(
            &format!("{base}-{next}"),
            attrs.pod.as_deref().unwrap(),
            attrs.node.as_deref().unwrap(),
        );
        let got = ipam.assign(&req).unwrap();
        assert!(
            !waiting.cidr.contains(&got.addresses[0].ip),
            "a restarted pod got {} of the draining pool",
            got.addresses[0].ip
        );
    }
}

/// After every step: one of the pools is enabled, and `ipam check` finds nothing.
fn assert_safe(store: &dyn Store, pools: &[&str]) {
    let enabled = pools
        .iter()
        .filter_map(|p| pool_of(store, p))
        .filter(|p| !p.spec.disabled)
        .count();
    assert!(enabled >= 1, "no pool of {pools:?} is enabled");
    let report = Ipam::new(store).check().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

/// Runs `next` and the step it plans until Done, at most `limit` steps (`None`: no limit);
/// returns the number of steps taken and whether it finished.
fn run(
    store: &dyn Store,
    next: &dyn Fn(&dyn Store) -> Result<Step, MigrateError>,
    limit: Option<usize>,
    pools: &[&str],
) -> (usize, bool) {
    for taken in 0..40 {
        if limit == Some(taken) {
            return (taken, false);
        }
        let step = next(store).unwrap();
        if let Step::Done(_) = step {
            return (taken, true);
        }
        execute(store, &step).unwrap();
        restart_pods(store, &step);
        assert_safe(store, pools);
    }
    panic!("the migration did not finish in 40 steps");
}

fn move_request() -> MoveRequest {
    let manifest = json!({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "new"},
        "spec": {"cidr": "10.1.0.0/24", "blockSize": 28}
    });
    let Resource::IPPool(target) = tessera_core::decode::decode_document(manifest).unwrap() else {
        unreachable!()
    };
    MoveRequest {
        from: "old".into(),
        to: Target::Manifest(Box::new(target)),
        drain: drain(),
    }
}

#[test]
fn a_move_interrupted_after_any_step_finishes_from_the_records() {
    let req = move_request();
    let next = |s: &dyn Store| next_move_step(s, &req);
    let pools = ["old", "new"];
    let whole = {
        let store = MemoryStore::new();
        seeded(&store);
        run(&store, &next, None, &pools).0
    };
    assert_eq!(whole, 4, "create, disable, wait, delete");
    for (store, _dir) in stores() {
        for k in 0..=whole {
            let store = &*store;
            for key in store.range("").unwrap() {
                store
                    .txn(&[], &[tessera_core::store::Op::Delete(key.key)])
                    .unwrap();
            }
            seeded(store);
            assert_eq!(run(store, &next, Some(k), &pools), (k, false));
            let (_, finished) = run(store, &next, None, &pools);
            assert!(finished);
            assert!(pool_of(store, "old").is_none(), "the source is deleted");
            let new = pool_of(store, "new").unwrap();
            assert!(!new.spec.disabled);
            assert_eq!(
                Ipam::new(store)
                    .holders("10.1.0.0/24".parse().unwrap())
                    .unwrap()
                    .len(),
                3
            );
            // Run again once done: it says so.
            assert!(matches!(next(store).unwrap(), Step::Done(_)));
        }
    }
}

#[test]
fn the_source_is_disabled_with_the_drain_request_in_one_write_and_keeps_its_time() {
    let store = MemoryStore::new();
    seeded(&store);
    let req = move_request();
    let create = next_move_step(&store, &req).unwrap();
    execute(&store, &create).unwrap();
    let disable = next_move_step(&store, &req).unwrap();
    let Step::DisableSource { request, .. } = &disable else {
        panic!("{disable:?}")
    };
    assert_eq!(request.requested_at, "2026-12-01T10:00:00Z");
    let before = store.range("").unwrap().len();
    execute(&store, &disable).unwrap();
    assert_eq!(
        store.range("").unwrap().len(),
        before,
        "one record rewritten"
    );
    let old = pool_of(&store, "old").unwrap();
    assert!(old.spec.disabled);
    let r = drain_request("old", &old.metadata.annotations)
        .unwrap()
        .unwrap();
    assert_eq!((r.max_parallel, r.ready_timeout_seconds), (2, 60));

    // A later run with another clock waits for the same request.
    let mut later = move_request();
    later.drain.now = "2026-12-01T11:00:00Z".into();
    assert!(matches!(
        next_move_step(&store, &later).unwrap(),
        Step::Wait(_)
    ));
    execute(
        &store,
        &Step::DisableSource {
            pool: "old".into(),
            request: tessera_core::drain::DrainRequest {
                requested_at: "2026-12-01T11:00:00Z".into(),
                max_parallel: 1,
                ready_timeout_seconds: 1,
            },
        },
    )
    .unwrap();
    let old = pool_of(&store, "old").unwrap();
    assert!(old.metadata.annotations[DRAIN_ANNOTATION].contains("2026-12-01T10:00:00Z"));
}

#[test]
fn a_block_size_change_interrupted_after_any_step_finishes_from_the_records() {
    let req = BlockSizeRequest {
        pool: "old".into(),
        block_size: 29,
        temporary_cidr: None,
        temporary_name: None,
        drain: drain(),
    };
    // Once the temporary pool is deleted the pool looks like one that needs no change.
    let next = |s: &dyn Store| -> Result<Step, MigrateError> {
        let resized = pool_of(s, "old").is_some_and(|p| p.spec.block_size == Some(29));
        if resized && pool_of(s, "old-temporary").is_none() {
            return Ok(Step::Done("done".into()));
        }
        next_block_size_step(s, &req)
    };
    let pools = ["old", "old-temporary"];
    let whole = {
        let store = MemoryStore::new();
        seeded(&store);
        run(&store, &next, None, &pools).0
    };
    assert_eq!(
        whole, 8,
        "create T, disable, wait, delete, recreate, disable T, wait, delete T"
    );
    for (store, _dir) in stores() {
        let store = &*store;
        for k in 0..=whole {
            for key in store.range("").unwrap() {
                store
                    .txn(&[], &[tessera_core::store::Op::Delete(key.key)])
                    .unwrap();
            }
            seeded(store);
            run(store, &next, Some(k), &pools);
            let (_, finished) = run(store, &next, None, &pools);
            assert!(finished);
            let p = pool_of(store, "old").unwrap();
            assert_eq!(
                (p.spec.cidr.as_str(), p.spec.block_size),
                ("10.0.0.0/24", Some(29))
            );
            assert!(!p.spec.disabled);
            let holders = Ipam::new(store)
                .holders("10.0.0.0/24".parse().unwrap())
                .unwrap();
            assert_eq!(holders.len(), 3);
            let usage = Ipam::new(store).usage().unwrap();
            assert!(usage
                .pools
                .iter()
                .flat_map(|p| &p.blocks)
                .all(|b| b.cidr.prefix_len() == 29));
        }
    }
}

#[test]
fn block_size_changes_of_two_pools_each_find_their_own_temporary_pool() {
    let store = MemoryStore::new();
    pool(&store, "a", json!({"cidr": "10.0.0.0/24", "blockSize": 28}));
    pool(&store, "b", json!({"cidr": "10.0.1.0/24", "blockSize": 28}));
    let ipam = Ipam::new(&store);
    ipam.assign(&AssignRequest {
        pools: vec!["a".into()],
        ..pod("ha-0", "pa", "n1")
    })
    .unwrap();
    ipam.assign(&AssignRequest {
        pools: vec!["b".into()],
        ..pod("hb-0", "pb", "n1")
    })
    .unwrap();
    let change = |name: &str| BlockSizeRequest {
        pool: name.into(),
        block_size: 29,
        temporary_cidr: None,
        temporary_name: None,
        drain: drain(),
    };
    for name in ["a", "b"] {
        // Create the temporary pool, disable the pool: then wait for its pod.
        for _ in 0..2 {
            let step = next_block_size_step(&store, &change(name)).unwrap();
            execute(&store, &step).unwrap();
        }
    }
    for name in ["a", "b"] {
        let step = next_block_size_step(&store, &change(name)).unwrap();
        let Step::Wait(waiting) = &step else {
            panic!("{name}: {step:?}")
        };
        assert_eq!(waiting.pool, name);
    }
}
