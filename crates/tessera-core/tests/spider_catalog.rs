//! Spiderpool resources in the catalog: the nginx pool example applies, pools stay inside their
//! SpiderSubnet, no address belongs to two pools (SpiderIPPools or Calico IPPools, stored or in
//! the same command), subnets do not move, and addresses in use do not leave a pool. A refused
//! command writes nothing.

use std::cell::Cell;
use std::sync::Mutex;

use serde_json::{json, Value};
use tessera_core::catalog::{Action, Catalog, CatalogError, InUse, Outcome, CONFIG_GUARD_KEY};
use tessera_core::decode::decode_document;
use tessera_core::ipam::{AssignRequest, Ipam, IpamError};
use tessera_core::keys;
use tessera_core::ranges::IpRangeSet;
use tessera_core::resources::spider::SPIDER_API_VERSION;
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::{
    Compare, MemoryStore, Op, Read, Snapshot, Store, StoreError, TxnOutcome,
};

fn doc(kind: &str, name: &str, spec: Value) -> Resource {
    decode_document(json!({
        "apiVersion": SPIDER_API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn spider_pool(name: &str, subnet: &str, ips: &[&str]) -> Resource {
    doc("SpiderIPPool", name, json!({"subnet": subnet, "ips": ips}))
}

fn spider_subnet(name: &str, subnet: &str, ips: &[&str]) -> Resource {
    doc("SpiderSubnet", name, json!({"subnet": subnet, "ips": ips}))
}

fn calico_pool(name: &str, cidr: &str) -> Resource {
    decode_document(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr},
    }))
    .unwrap()
}

/// The nginx pool example's subnet: 25602 addresses of 10.244.0.0/16.
fn nginx_subnet() -> Resource {
    spider_subnet(
        "nginx-subnet-v4",
        "10.244.0.0/16",
        &["10.244.100.1-10.244.200.2"],
    )
}

/// The nginx pool example's pool.
fn nginx_pool() -> Resource {
    doc(
        "SpiderIPPool",
        "nginx-v4-ippool",
        json!({"ipVersion": 4, "subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"]}),
    )
}

fn revision(store: &impl Store) -> i64 {
    store.read(&[]).unwrap().revision
}

/// Runs a command that must be refused; checks that nothing was written and returns the
/// message.
fn refused<S: Store>(
    store: &S,
    command: impl FnOnce(&Catalog<'_, S>) -> Result<Vec<Outcome>, CatalogError>,
) -> String {
    let before = revision(store);
    let err = command(&Catalog::new(store)).unwrap_err();
    assert_eq!(revision(store), before, "a refused command wrote something");
    err.to_string()
}

fn outcome(kind: Kind, name: &str, action: Action) -> Outcome {
    Outcome {
        kind,
        name: name.into(),
        action,
    }
}

#[test]
fn nginx_subnet_and_pool_apply_in_either_order() {
    // Subnet first, as in the blog post.
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.apply(&[nginx_subnet()]).unwrap();
    assert_eq!(
        cat.apply(&[nginx_pool()]).unwrap(),
        [outcome(
            Kind::SpiderIPPool,
            "nginx-v4-ippool",
            Action::Created
        )]
    );
    // Stored under the keys the allocator reads.
    assert!(store
        .get(&keys::spider_pool("nginx-v4-ippool"))
        .unwrap()
        .is_some());
    assert!(store
        .get(&keys::spider_subnet("nginx-subnet-v4"))
        .unwrap()
        .is_some());
    assert!(store.get(CONFIG_GUARD_KEY).unwrap().is_some());
    // Applying both again changes nothing.
    let rev = revision(&store);
    assert_eq!(
        cat.apply(&[nginx_subnet(), nginx_pool()]).unwrap(),
        [
            outcome(Kind::SpiderSubnet, "nginx-subnet-v4", Action::Unchanged),
            outcome(Kind::SpiderIPPool, "nginx-v4-ippool", Action::Unchanged)
        ]
    );
    assert_eq!(revision(&store), rev);

    // Pool first, then the subnet; and both in one command, pool listed first.
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    Catalog::new(&store).apply(&[nginx_subnet()]).unwrap();
    let store = MemoryStore::new();
    Catalog::new(&store)
        .create(&[nginx_pool(), nginx_subnet()])
        .unwrap();
    let Resource::SpiderIPPool(p) = Catalog::new(&store)
        .get(Kind::SpiderIPPool, "nginx-v4-ippool")
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(p.spec.total_ips().unwrap().len(), 11);
    assert_eq!(
        Catalog::new(&store).list(Kind::SpiderSubnet).unwrap().len(),
        1
    );
}

#[test]
fn a_pool_takes_its_addresses_from_its_subnet() {
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_subnet()]).unwrap();
    let outside = spider_pool("outside", "10.244.0.0/16", &["10.244.99.250-10.244.100.5"]);
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&outside))),
        "SpiderIPPool \"outside\" is invalid: spec.ips: 10.244.99.250-10.244.100.0 are not \
         offered by SpiderSubnet \"nginx-subnet-v4\" (its ips minus excludeIPs); a pool of \
         subnet 10.244.0.0/16 takes its addresses from that SpiderSubnet: add them to the \
         subnet's ips first, or choose addresses it offers"
    );
    // The same, with subnet and pool in one command: from the subnet's side.
    let store = MemoryStore::new();
    assert_eq!(
        refused(&store, |c| c.apply(&[outside.clone(), nginx_subnet()])),
        "SpiderSubnet \"nginx-subnet-v4\" is invalid: spec.ips: SpiderIPPool \"outside\" holds \
         10.244.99.250-10.244.100.0, which this subnet does not offer (ips minus excludeIPs); \
         every pool of subnet 10.244.0.0/16 takes its addresses from the SpiderSubnet: keep \
         them in ips, or remove them from the pool first"
    );
    // Addresses the subnet excludes are not offered either.
    let store = MemoryStore::new();
    let excluding = doc(
        "SpiderSubnet",
        "nginx-subnet-v4",
        json!({"subnet": "10.244.0.0/16", "ips": ["10.244.100.1-10.244.200.2"],
               "excludeIPs": ["10.244.120.15"]}),
    );
    Catalog::new(&store).apply(&[excluding]).unwrap();
    assert_eq!(
        refused(&store, |c| c.apply(&[nginx_pool()]))
            .split(';')
            .next()
            .unwrap(),
        "SpiderIPPool \"nginx-v4-ippool\" is invalid: spec.ips: 10.244.120.15 is not offered by \
         SpiderSubnet \"nginx-subnet-v4\" (its ips minus excludeIPs)"
    );
    // ...unless the pool excludes them too.
    let pool_excluding = doc(
        "SpiderIPPool",
        "nginx-v4-ippool",
        json!({"subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"],
               "excludeIPs": ["10.244.120.15"]}),
    );
    Catalog::new(&store).apply(&[pool_excluding]).unwrap();
    // A pool of another, disjoint subnet is not the SpiderSubnet's business.
    Catalog::new(&store)
        .apply(&[spider_pool("other", "10.245.0.0/16", &["10.245.0.10"])])
        .unwrap();
}

#[test]
fn a_subnet_cannot_drop_addresses_its_pools_hold() {
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[nginx_subnet(), nginx_pool()])
        .unwrap();
    let shrunk = spider_subnet(
        "nginx-subnet-v4",
        "10.244.0.0/16",
        &["10.244.100.1-10.244.120.12"],
    );
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&shrunk))),
        "SpiderSubnet \"nginx-subnet-v4\" is invalid: spec.ips: SpiderIPPool \"nginx-v4-ippool\" \
         holds 10.244.120.13-10.244.120.20, which this subnet does not offer (ips minus \
         excludeIPs); every pool of subnet 10.244.0.0/16 takes its addresses from the \
         SpiderSubnet: keep them in ips, or remove them from the pool first"
    );
    // Shrinking the pool in the same command makes it fine.
    let small_pool = spider_pool(
        "nginx-v4-ippool",
        "10.244.0.0/16",
        &["10.244.120.10-10.244.120.12"],
    );
    Catalog::new(&store).apply(&[shrunk, small_pool]).unwrap();
}

#[test]
fn two_spider_pools_never_share_an_address() {
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    let overlapping = spider_pool(
        "nginx-m-ippool",
        "10.244.0.0/16",
        &["10.244.120.18-10.244.120.30"],
    );
    assert_eq!(
        refused(&store, |c| c.create(std::slice::from_ref(&overlapping))),
        "SpiderIPPool \"nginx-m-ippool\" is invalid: spec.ips: 10.244.120.18-10.244.120.20 are \
         also in SpiderIPPool \"nginx-v4-ippool\"; an address may belong to one pool only: take \
         the overlap out of one of the two pools (drop it from ips or list it in excludeIPs)"
    );
    // Within one command, the pair is reported once.
    let store = MemoryStore::new();
    assert_eq!(
        refused(&store, |c| c.apply(&[nginx_pool(), overlapping.clone()])),
        "SpiderIPPool \"nginx-m-ippool\" is invalid: spec.ips: 10.244.120.18-10.244.120.20 are \
         also in SpiderIPPool \"nginx-v4-ippool\"; an address may belong to one pool only: take \
         the overlap out of one of the two pools (drop it from ips or list it in excludeIPs)"
    );
    // Excluded addresses are not the pool's: excluding the overlap settles it.
    let excluding = doc(
        "SpiderIPPool",
        "nginx-m-ippool",
        json!({"subnet": "10.244.0.0/16", "ips": ["10.244.120.18-10.244.120.30"],
               "excludeIPs": ["10.244.120.18-10.244.120.20"]}),
    );
    Catalog::new(&store)
        .apply(&[nginx_pool(), excluding])
        .unwrap();
    // IPv4 and IPv6 pools never overlap.
    Catalog::new(&store)
        .apply(&[spider_pool("v6", "fd00::/120", &["fd00::10-fd00::20"])])
        .unwrap();
}

#[test]
fn overlapping_subnets_must_be_the_same_subnet() {
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    let narrower = spider_pool("narrow", "10.244.120.0/24", &["10.244.120.100"]);
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&narrower))),
        "SpiderIPPool \"narrow\" is invalid: spec.subnet: 10.244.120.0/24 overlaps \
         10.244.0.0/16, the subnet of SpiderIPPool \"nginx-v4-ippool\"; pools whose subnets \
         overlap must name the same subnet: use 10.244.0.0/16, or a subnet that does not \
         overlap it"
    );
    // A SpiderSubnet over a pool of another subnet, and a pool under a SpiderSubnet of another.
    let wide_subnet = spider_subnet("wide", "10.0.0.0/8", &["10.244.120.10-10.244.120.20"]);
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&wide_subnet))),
        "SpiderSubnet \"wide\" is invalid: spec.subnet: 10.0.0.0/8 overlaps 10.244.0.0/16, the \
         subnet of SpiderIPPool \"nginx-v4-ippool\"; the pools inside a SpiderSubnet must name \
         exactly its subnet: choose a subnet equal to 10.244.0.0/16 or clear of it, or delete \
         that pool first"
    );
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_subnet()]).unwrap();
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&narrower))),
        "SpiderIPPool \"narrow\" is invalid: spec.subnet: 10.244.120.0/24 overlaps \
         10.244.0.0/16 of SpiderSubnet \"nginx-subnet-v4\"; a pool inside a SpiderSubnet must \
         name exactly its subnet: use 10.244.0.0/16"
    );
}

#[test]
fn spider_subnets_do_not_overlap() {
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_subnet()]).unwrap();
    for (name, net) in [("same", "10.244.0.0/16"), ("inner", "10.244.100.0/24")] {
        let other = spider_subnet(name, net, &[]);
        assert_eq!(
            refused(&store, |c| c.apply(std::slice::from_ref(&other))),
            format!(
                "SpiderSubnet {name:?} is invalid: spec.subnet: {net} overlaps 10.244.0.0/16 of \
                 SpiderSubnet \"nginx-subnet-v4\"; SpiderSubnets may not overlap: choose another \
                 range, or delete that SpiderSubnet first"
            )
        );
    }
    Catalog::new(&store)
        .apply(&[spider_subnet("next", "10.245.0.0/16", &[])])
        .unwrap();
}

#[test]
fn spider_pools_and_calico_pools_never_share_an_address() {
    // A SpiderIPPool over a Calico pool...
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[calico_pool("default-ipv4-ippool", "10.244.120.0/26")])
        .unwrap();
    assert_eq!(
        refused(&store, |c| c.apply(&[nginx_pool()])),
        "SpiderIPPool \"nginx-v4-ippool\" is invalid: spec.ips: 10.244.120.10-10.244.120.20 are \
         inside 10.244.120.0/26 of IPPool \"default-ipv4-ippool\"; an address may belong to \
         one pool only: choose addresses outside it, or delete that IPPool first"
    );
    // ...and a Calico pool over a SpiderIPPool, stored or in the same command.
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    let calico = calico_pool("default-ipv4-ippool", "10.244.0.0/16");
    let message = "IPPool \"default-ipv4-ippool\" is invalid: spec.cidr: 10.244.0.0/16 holds \
                   10.244.120.10-10.244.120.20 of SpiderIPPool \"nginx-v4-ippool\"; an address \
                   may belong to one pool only: choose a range clear of them, or delete that \
                   SpiderIPPool first";
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&calico))),
        message
    );
    let store = MemoryStore::new();
    assert_eq!(
        refused(&store, |c| c.apply(&[nginx_pool(), calico.clone()])),
        message
    );
    // A Calico pool next to the SpiderIPPool's addresses, inside its subnet, is fine: only
    // addresses count.
    Catalog::new(&store)
        .apply(&[nginx_pool(), calico_pool("rack-0", "10.244.0.0/24")])
        .unwrap();
}

#[test]
fn subnet_and_ip_version_do_not_change() {
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[nginx_pool(), nginx_subnet()])
        .unwrap();
    let moved = spider_pool("nginx-v4-ippool", "10.245.0.0/16", &["10.245.120.10"]);
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&moved))),
        "SpiderIPPool \"nginx-v4-ippool\" is invalid: spec.subnet: cannot be changed after the \
         SpiderIPPool is created (it is 10.244.0.0/16, the new manifest says 10.245.0.0/16); \
         create a new SpiderIPPool instead"
    );
    let moved = spider_subnet("nginx-subnet-v4", "fd00::/64", &[]);
    assert_eq!(
        refused(&store, |c| c.apply(std::slice::from_ref(&moved))),
        "SpiderSubnet \"nginx-subnet-v4\" is invalid: spec.subnet: cannot be changed after the \
         SpiderSubnet is created (it is 10.244.0.0/16, the new manifest says fd00::/64); create \
         a new SpiderSubnet instead"
    );
    // A patch cannot do it either, and a harmless patch works.
    let cat = Catalog::new(&store);
    let before = revision(&store);
    let err = cat
        .patch(
            Kind::SpiderIPPool,
            "nginx-v4-ippool",
            &json!({"spec": {"subnet": "10.245.0.0/16", "ips": null}}),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.subnet: cannot be changed"),
        "{err}"
    );
    assert_eq!(revision(&store), before);
    let patched = cat
        .patch(
            Kind::SpiderIPPool,
            "nginx-v4-ippool",
            &json!({"spec": {"disable": true}}),
        )
        .unwrap();
    let Resource::SpiderIPPool(p) = patched else {
        unreachable!()
    };
    assert_eq!(p.spec.disable, Some(true));
}

#[test]
fn allocated_addresses_do_not_leave_a_pool() {
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    let asked: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());
    let allocated = IpRangeSet::parse(&["10.244.120.12", "10.244.120.14"], false).unwrap();
    let check = |pool: &str, leaving: &IpRangeSet| -> Result<InUse, StoreError> {
        asked
            .lock()
            .unwrap()
            .push((pool.to_string(), leaving.to_strings()));
        Ok(InUse {
            addresses: allocated.clone(),
            compares: Vec::new(),
        })
    };
    let cat = Catalog::new(&store).with_in_use_check(&check);

    // Shrinking ips over allocated addresses, or excluding one of them, is refused.
    let shrunk = spider_pool(
        "nginx-v4-ippool",
        "10.244.0.0/16",
        &["10.244.120.15-10.244.120.20"],
    );
    let before = revision(&store);
    assert_eq!(
        cat.apply(std::slice::from_ref(&shrunk))
            .unwrap_err()
            .to_string(),
        "SpiderIPPool \"nginx-v4-ippool\" is invalid: spec.ips: 10.244.120.12, 10.244.120.14 \
         are allocated and would no longer belong to the pool; keep them in ips (and out of \
         excludeIPs), or release them first"
    );
    assert_eq!(revision(&store), before);
    assert_eq!(
        asked.lock().unwrap().as_slice(),
        [(
            "nginx-v4-ippool".to_string(),
            vec!["10.244.120.10-10.244.120.14".to_string()]
        )]
    );
    let excluding = doc(
        "SpiderIPPool",
        "nginx-v4-ippool",
        json!({"subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"],
               "excludeIPs": ["10.244.120.14"]}),
    );
    assert!(cat
        .apply(std::slice::from_ref(&excluding))
        .unwrap_err()
        .to_string()
        .contains("10.244.120.14 is allocated and would no longer belong to the pool; keep it"));

    // Dropping free addresses is fine; growing the pool asks nothing.
    let free_dropped = spider_pool(
        "nginx-v4-ippool",
        "10.244.0.0/16",
        &["10.244.120.11-10.244.120.20"],
    );
    cat.apply(&[free_dropped]).unwrap();
    asked.lock().unwrap().clear();
    let grown = spider_pool(
        "nginx-v4-ippool",
        "10.244.0.0/16",
        &["10.244.120.11-10.244.120.40"],
    );
    cat.apply(&[grown]).unwrap();
    assert!(asked.lock().unwrap().is_empty());
}

#[test]
fn the_in_use_answer_holds_until_the_write() {
    // The allocator's compares join the catalog's transaction: if the records it answered
    // from change before the write (an allocation landed), the write starts over and asks
    // again.
    let store = MemoryStore::new();
    Catalog::new(&store).apply(&[nginx_pool()]).unwrap();
    store
        .txn(&[], &[Op::Put("blocks/_shared/x".into(), b"{}".to_vec())])
        .unwrap();
    let calls = Cell::new(0);
    let check = |_: &str, leaving: &IpRangeSet| -> Result<InUse, StoreError> {
        calls.set(calls.get() + 1);
        let rev = store
            .get("blocks/_shared/x")?
            .map_or(0, |kv| kv.mod_revision);
        if calls.get() == 1 {
            // An allocation lands right after the allocator answered.
            store
                .txn(
                    &[],
                    &[Op::Put("blocks/_shared/x".into(), b"{\"n\":1}".to_vec())],
                )
                .unwrap();
        }
        Ok(InUse {
            addresses: IpRangeSet::empty(leaving.is_v6()),
            compares: vec![Compare::unchanged("blocks/_shared/x", rev)],
        })
    };
    let shrunk = spider_pool(
        "nginx-v4-ippool",
        "10.244.0.0/16",
        &["10.244.120.15-10.244.120.20"],
    );
    Catalog::new(&store)
        .with_in_use_check(&check)
        .apply(&[shrunk])
        .unwrap();
    assert_eq!(calls.get(), 2);
}

#[test]
fn spider_kinds_list_get_and_delete() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let reserved = doc(
        "SpiderReservedIP",
        "nginx-reserved-v4",
        json!({"ips": ["10.244.120.15"]}),
    );
    cat.apply(&[nginx_subnet(), nginx_pool(), reserved])
        .unwrap();
    assert!(store
        .get(&keys::spider_reserved("nginx-reserved-v4"))
        .unwrap()
        .is_some());
    for (kind, name) in [
        (Kind::SpiderIPPool, "nginx-v4-ippool"),
        (Kind::SpiderSubnet, "nginx-subnet-v4"),
        (Kind::SpiderReservedIP, "nginx-reserved-v4"),
    ] {
        let listed = cat.list(kind).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name(), name);
        let got = cat.get(kind, name).unwrap();
        assert_eq!(got.kind(), kind);
        assert_eq!(got.to_manifest()["apiVersion"], SPIDER_API_VERSION);
    }
    cat.delete(&[(Kind::SpiderIPPool, "nginx-v4-ippool".into())], false)
        .unwrap();
    assert!(matches!(
        cat.get(Kind::SpiderIPPool, "nginx-v4-ippool"),
        Err(CatalogError::NotFound { .. })
    ));
    // The freed addresses may now go to a Calico pool.
    cat.apply(&[calico_pool("default-ipv4-ippool", "10.244.120.0/24")])
        .unwrap();
}

/// A store where another writer creates a Calico pool right before our first transaction.
struct Racing {
    inner: MemoryStore,
    raced: Mutex<bool>,
}

impl Store for Racing {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.inner.read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let mut raced = self.raced.lock().unwrap();
        if !*raced {
            *raced = true;
            Catalog::new(&self.inner)
                .apply(&[calico_pool("theirs", "10.244.120.0/24")])
                .unwrap();
        }
        drop(raced);
        self.inner.txn(compares, ops)
    }
    fn describe(&self) -> String {
        "racing".into()
    }
}

#[test]
fn a_calico_pool_created_concurrently_is_caught_on_retry() {
    let store = Racing {
        inner: MemoryStore::new(),
        raced: Mutex::new(false),
    };
    let err = Catalog::new(&store).apply(&[nginx_pool()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("are inside 10.244.120.0/24 of IPPool \"theirs\""),
        "{err}"
    );
    assert!(Catalog::new(&store.inner)
        .list(Kind::SpiderIPPool)
        .unwrap()
        .is_empty());
}

/// The allocator's answer, as the `tessera` command passes it to the catalog.
fn allocator_check<S: Store>(
    store: &S,
) -> impl Fn(&str, &IpRangeSet) -> Result<InUse, StoreError> + '_ {
    move |pool, leaving| {
        Ipam::new(store)
            .spider_in_use(pool, leaving)
            .map_err(|e| match e {
                IpamError::Store(e) => e,
                other => panic!("{other}"),
            })
    }
}

fn assign_from(store: &MemoryStore, handle: &str, pool: &str) -> String {
    let req = AssignRequest {
        handle: handle.into(),
        node: "worker0".into(),
        num_v4: 1,
        pools: vec![pool.into()],
        ..Default::default()
    };
    Ipam::new(store).assign(&req).unwrap().addresses[0]
        .ip
        .to_string()
}

#[test]
fn a_pool_holding_addresses_is_not_deleted_until_they_are_released() {
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[nginx_subnet(), nginx_pool()])
        .unwrap();
    let first = assign_from(&store, "a", "nginx-v4-ippool");
    assign_from(&store, "b", "nginx-v4-ippool");
    let check = allocator_check(&store);
    let cat = Catalog::new(&store).with_in_use_check(&check);
    let target = [(Kind::SpiderIPPool, "nginx-v4-ippool".to_string())];

    let before = revision(&store);
    let err = cat.delete(&target, false).unwrap_err().to_string();
    assert_eq!(
        err,
        "SpiderIPPool \"nginx-v4-ippool\" still holds 2 allocated addresses \
         (10.244.120.10-10.244.120.11) and was not deleted; release them first (delete the \
         pods that use them, or run `tessera ipam release --ip ADDRESS`; `tessera ipam show \
         --ip ADDRESS` names the holder), then delete the pool"
    );
    assert_eq!(revision(&store), before, "a refused delete wrote something");

    Ipam::new(&store).release_handle("b").unwrap();
    let err = cat.delete(&target, false).unwrap_err().to_string();
    assert!(
        err.contains(&format!("still holds 1 allocated address ({first})")),
        "{err}"
    );
    Ipam::new(&store).release_handle("a").unwrap();
    assert_eq!(
        cat.delete(&target, false).unwrap(),
        [Outcome {
            kind: Kind::SpiderIPPool,
            name: "nginx-v4-ippool".into(),
            action: Action::Deleted,
        }]
    );
}

#[test]
fn an_allocation_racing_a_pool_delete_is_counted() {
    // The delete compares the records the count came from: an address allocated between the
    // count and the delete makes the delete count again, and refuse.
    let store = MemoryStore::new();
    Catalog::new(&store)
        .apply(&[nginx_subnet(), nginx_pool()])
        .unwrap();
    let calls = Cell::new(0);
    let real = allocator_check(&store);
    let check = |pool: &str, leaving: &IpRangeSet| -> Result<InUse, StoreError> {
        let answer = real(pool, leaving)?;
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            assign_from(&store, "late", "nginx-v4-ippool");
        }
        Ok(answer)
    };
    let err = Catalog::new(&store)
        .with_in_use_check(&check)
        .delete(&[(Kind::SpiderIPPool, "nginx-v4-ippool".into())], false)
        .unwrap_err();
    assert!(
        err.to_string().contains("still holds 1 allocated address"),
        "{err}"
    );
    assert_eq!(calls.get(), 2);
}

#[test]
fn a_subnet_with_pools_is_deleted_only_with_them() {
    let store = MemoryStore::new();
    let other = spider_pool("other", "10.244.0.0/16", &["10.244.150.1-10.244.150.9"]);
    Catalog::new(&store)
        .apply(&[nginx_subnet(), nginx_pool(), other])
        .unwrap();
    let subnet = (Kind::SpiderSubnet, "nginx-subnet-v4".to_string());
    let msg = refused(&store, |cat| {
        cat.delete(std::slice::from_ref(&subnet), false)
    });
    assert_eq!(
        msg,
        "SpiderSubnet \"nginx-subnet-v4\" still has SpiderIPPools of its subnet 10.244.0.0/16 \
         (\"nginx-v4-ippool\", \"other\") and was not deleted; delete those pools first, or in \
         the same command"
    );
    let msg = refused(&store, |cat| {
        cat.delete(
            &[subnet.clone(), (Kind::SpiderIPPool, "other".into())],
            false,
        )
    });
    assert!(msg.contains("(\"nginx-v4-ippool\")"), "{msg}");
    let deleted = Catalog::new(&store)
        .delete(
            &[
                (Kind::SpiderIPPool, "nginx-v4-ippool".into()),
                subnet,
                (Kind::SpiderIPPool, "other".into()),
            ],
            false,
        )
        .unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(store
        .range(keys::CONFIG_PREFIX)
        .unwrap()
        .iter()
        .all(|kv| kv.key == CONFIG_GUARD_KEY));
}
