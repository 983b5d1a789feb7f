//! Catalog commands on the in-memory store: create/apply/replace/delete semantics, all or
//! nothing, pool overlap and immutability, patch, label and annotate.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use tessera_core::catalog::{Action, Catalog, CatalogError, Outcome, CONFIG_GUARD_KEY};
use tessera_core::decode::decode_document;
use tessera_core::resources::calico::IPAMConfigurationSpec;
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::{
    Compare, MemoryStore, Op, Read, Snapshot, Store, StoreError, TxnLimits, TxnOutcome,
};

fn pool(name: &str, cidr: &str) -> Resource {
    pool_with(name, json!({ "cidr": cidr }))
}

fn pool_with(name: &str, spec: Value) -> Resource {
    decode_document(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn node(name: &str, labels: Value) -> Resource {
    decode_document(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap()
}

fn revision(store: &MemoryStore) -> i64 {
    store.read(&[]).unwrap().revision
}

fn names(resources: &[Resource]) -> Vec<&str> {
    resources.iter().map(Resource::name).collect()
}

fn outcome(kind: Kind, name: &str, action: Action) -> Outcome {
    Outcome {
        kind,
        name: name.into(),
        action,
    }
}

fn spec_of(r: &Resource) -> Value {
    r.to_manifest()["spec"].clone()
}

#[test]
fn create_fills_defaults_and_server_metadata() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let out = cat
        .create(&[pool_with(
            "rack-0-ippool",
            json!({"cidr": "192.168.0.0/24", "ipipMode": "Always", "natOutgoing": true,
                   "nodeSelector": "rack == \"0\""}),
        )])
        .unwrap();
    assert_eq!(
        out,
        [outcome(Kind::IPPool, "rack-0-ippool", Action::Created)]
    );
    let got = cat.get(Kind::IPPool, "rack-0-ippool").unwrap();
    let meta = got.metadata();
    assert_eq!(meta.resource_version.as_deref(), Some("1"));
    let uid = meta.uid.as_deref().unwrap();
    assert_eq!(uid.len(), 36);
    let ts = meta.creation_timestamp.as_deref().unwrap();
    assert_eq!(ts.len(), "2022-05-12T14:34:03Z".len());
    assert!(ts.ends_with('Z'));
    assert_eq!(
        spec_of(&got),
        json!({"cidr": "192.168.0.0/24", "blockSize": 26, "ipipMode": "Always",
               "vxlanMode": "Never", "natOutgoing": true, "nodeSelector": "rack == \"0\"",
               "allowedUses": ["Workload", "Tunnel"], "assignmentMode": "Automatic"})
    );
    // The stored record carries no resourceVersion.
    let raw = store.get("config/pools/rack-0-ippool").unwrap().unwrap();
    let doc: Value = serde_json::from_slice(&raw.value).unwrap();
    assert!(doc["metadata"].get("resourceVersion").is_none());
    assert_eq!(doc["metadata"]["uid"], uid);
}

#[test]
fn create_refuses_existing_and_writes_nothing() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("rack-0-ippool", "192.168.0.0/24")])
        .unwrap();
    let before = revision(&store);
    let err = cat
        .create(&[
            pool("rack-1-ippool", "192.168.1.0/24"),
            pool("rack-0-ippool", "192.168.0.0/24"),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource already exists: IPPool(rack-0-ippool); use `tessera apply` or `tessera \
         replace` to change it"
    );
    assert_eq!(revision(&store), before);
    assert!(matches!(
        cat.get(Kind::IPPool, "rack-1-ippool"),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn apply_creates_updates_and_reports_unchanged() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let doc = pool_with(
        "extra-ippool",
        json!({"cidr": "192.168.0.0/20", "blockSize": 26,
        "vxlanMode": "Always", "natOutgoing": true}),
    );
    assert_eq!(
        cat.apply(std::slice::from_ref(&doc)).unwrap(),
        [outcome(Kind::IPPool, "extra-ippool", Action::Created)]
    );
    let first = cat.get(Kind::IPPool, "extra-ippool").unwrap();

    // Same manifest again: nothing written.
    let rev = revision(&store);
    assert_eq!(
        cat.apply(std::slice::from_ref(&doc)).unwrap(),
        [outcome(Kind::IPPool, "extra-ippool", Action::Unchanged)]
    );
    assert_eq!(revision(&store), rev);

    // Pool migration: add a nodeSelector to the same pool.
    let changed = pool_with(
        "extra-ippool",
        json!({"cidr": "192.168.0.0/20", "blockSize": 26,
        "vxlanMode": "Always", "natOutgoing": true, "nodeSelector": "type==\"test\""}),
    );
    assert_eq!(
        cat.apply(&[changed]).unwrap(),
        [outcome(Kind::IPPool, "extra-ippool", Action::Configured)]
    );
    let second = cat.get(Kind::IPPool, "extra-ippool").unwrap();
    assert_eq!(second.metadata().uid, first.metadata().uid);
    assert_eq!(
        second.metadata().creation_timestamp,
        first.metadata().creation_timestamp
    );
    assert_ne!(
        second.metadata().resource_version,
        first.metadata().resource_version
    );
    assert_eq!(spec_of(&second)["nodeSelector"], "type==\"test\"");
}

#[test]
fn replace_requires_existing_resources() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("a", "10.0.0.0/16")]).unwrap();
    let before = revision(&store);
    let err = cat
        .replace(&[pool("a", "10.0.0.0/16"), pool("b", "10.1.0.0/16")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"b\" not found; see what exists with `tessera get ippools`"
    );
    assert_eq!(revision(&store), before);
    let mut disabled = pool_with("a", json!({"cidr": "10.0.0.0/16", "disabled": true}));
    disabled
        .metadata_mut()
        .labels
        .insert("team".into(), "net".into());
    assert_eq!(
        cat.replace(&[disabled]).unwrap(),
        [outcome(Kind::IPPool, "a", Action::Configured)]
    );
    assert_eq!(
        spec_of(&cat.get(Kind::IPPool, "a").unwrap())["disabled"],
        true
    );
}

#[test]
fn delete_names_every_missing_resource_unless_ignored() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[
        pool("default-ipv4-ippool", "192.168.0.0/16"),
        node("kube-node-0", json!({})),
    ])
    .unwrap();
    let before = revision(&store);
    let err = cat
        .delete(
            &[
                (Kind::IPPool, "default-ipv4-ippool".into()),
                (Kind::IPPool, "nope".into()),
                (Kind::Namespace, "gone".into()),
            ],
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"nope\" not found; see what exists with `tessera get ippools`\nNamespace \
         \"gone\" not found; see what exists with `tessera get namespaces`"
    );
    assert_eq!(err.problems().len(), 2);
    assert_eq!(revision(&store), before);

    let out = cat
        .delete(
            &[
                (Kind::IPPool, "default-ipv4-ippool".into()),
                (Kind::IPPool, "nope".into()),
                (Kind::Node, "kube-node-0".into()),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        [
            outcome(Kind::IPPool, "default-ipv4-ippool", Action::Deleted),
            outcome(Kind::Node, "kube-node-0", Action::Deleted),
        ]
    );
    assert!(cat.list(Kind::IPPool).unwrap().is_empty());
    assert!(cat.list(Kind::Node).unwrap().is_empty());
}

#[test]
fn batch_with_one_invalid_document_writes_nothing() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let bad = pool_with(
        "internal-pool",
        json!({"cidr": "192.169.0.0/24", "blockSize": 33}),
    );
    let err = cat
        .apply(&[
            pool_with(
                "external-pool",
                json!({"cidr": "172.16.0.0/26", "blockSize": 29}),
            ),
            bad,
            node("kube-node-0", json!({"rack": "0"})),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"internal-pool\" is invalid: spec.blockSize: 33 is outside 20-32 for IPv4"
    );
    assert_eq!(revision(&store), 0);
    assert!(cat.list(Kind::IPPool).unwrap().is_empty());
    assert!(cat.list(Kind::Node).unwrap().is_empty());
}

#[test]
fn every_invalid_document_is_reported() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let err = cat
        .apply(&[
            pool("a", "10.0.0.1/16"),
            pool("b", "10.1.0.0/16"),
            node("Bad_Node", json!({})),
            pool("b", "10.1.0.0/16"),
        ])
        .unwrap_err();
    let lines: Vec<String> = err.problems().iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with("IPPool \"a\" is invalid: spec.cidr"));
    assert!(lines[1].starts_with("Node \"Bad_Node\" is invalid: metadata.name"));
    assert_eq!(
        lines[2],
        "IPPool \"b\": metadata.name: appears more than once in the input; keep one of them"
    );
    assert_eq!(revision(&store), 0);
}

#[test]
fn overlapping_pools_refused_against_store_and_within_batch() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    // Rack pools: the default pool holds the rack ranges, so the rack pools are refused.
    cat.create(&[pool("default-ipv4-ippool", "192.168.0.0/16")])
        .unwrap();
    let before = revision(&store);
    let err = cat
        .create(&[
            pool("rack-0-ippool", "192.168.0.0/24"),
            pool("rack-1-ippool", "192.168.1.0/24"),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"rack-0-ippool\" is invalid: spec.cidr: 192.168.0.0/24 overlaps \
         192.168.0.0/16 of IPPool \"default-ipv4-ippool\"; pools may not overlap: choose a free \
         range, or disable and delete the other pool first\nIPPool \"rack-1-ippool\" is \
         invalid: spec.cidr: 192.168.1.0/24 overlaps 192.168.0.0/16 of IPPool \
         \"default-ipv4-ippool\"; pools may not overlap: choose a free range, or disable and \
         delete the other pool first"
    );
    assert_eq!(revision(&store), before);

    // After deleting the default pool, the rack pools go in.
    cat.delete(&[(Kind::IPPool, "default-ipv4-ippool".into())], false)
        .unwrap();
    cat.create(&[
        pool("rack-0-ippool", "192.168.0.0/24"),
        pool("rack-1-ippool", "192.168.1.0/24"),
    ])
    .unwrap();

    // Within one batch: the later pool names the earlier one.
    let before = revision(&store);
    let err = cat
        .apply(&[pool("x", "10.0.0.0/16"), pool("y", "10.0.128.0/17")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"y\" is invalid: spec.cidr: 10.0.128.0/17 overlaps 10.0.0.0/16 of IPPool \"x\"; \
         pools may not overlap: choose a free range, or disable and delete the other pool first"
    );
    assert_eq!(revision(&store), before);
}

#[test]
fn pools_replaced_in_the_same_batch_are_checked_in_their_new_form() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("a", "10.0.0.0/16")]).unwrap();
    // Re-applying "a" unchanged next to a non-overlapping new pool is fine.
    let out = cat
        .apply(&[pool("a", "10.0.0.0/16"), pool("b", "10.1.0.0/16")])
        .unwrap();
    assert_eq!(out[0].action, Action::Unchanged);
    assert_eq!(out[1].action, Action::Created);
}

#[test]
fn cidr_and_block_size_cannot_change_on_apply() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("default-ipv4-ippool", "192.168.0.0/16")])
        .unwrap();
    let before = revision(&store);
    let err = cat
        .apply(&[pool_with(
            "default-ipv4-ippool",
            json!({"cidr": "192.0.0.0/16", "blockSize": 27}),
        )])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"default-ipv4-ippool\" is invalid: spec.cidr: cannot be changed after the pool \
         is created (it is 192.168.0.0/16, the new manifest says 192.0.0.0/16); create a new \
         pool and migrate (see docs); spec.blockSize: cannot be changed after the pool is \
         created (it is 26, the new manifest says 27); create a new pool and migrate (see docs)"
    );
    assert_eq!(revision(&store), before);
    // Omitting blockSize means the default, which is what is stored: accepted.
    let ok = pool_with(
        "default-ipv4-ippool",
        json!({"cidr": "192.168.0.0/16", "natOutgoing": true}),
    );
    assert_eq!(cat.apply(&[ok]).unwrap()[0].action, Action::Configured);
}

#[test]
fn patch_disables_a_pool() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool_with(
        "default-ipv4-ippool",
        json!({"cidr": "192.168.0.0/16", "ipipMode": "Always", "natOutgoing": true}),
    )])
    .unwrap();
    let created = cat.get(Kind::IPPool, "default-ipv4-ippool").unwrap();
    // Pool migration: calicoctl patch ippool default-ipv4-ippool -p '{"spec": {"disabled": true}}'
    let patched = cat
        .patch(
            Kind::IPPool,
            "default-ipv4-ippool",
            &json!({"spec": {"disabled": true}}),
        )
        .unwrap();
    assert_eq!(spec_of(&patched)["disabled"], true);
    assert_eq!(spec_of(&patched)["ipipMode"], "Always");
    assert_eq!(patched.metadata().uid, created.metadata().uid);
    assert_eq!(
        patched.metadata().resource_version,
        Some(revision(&store).to_string())
    );
    assert_eq!(
        cat.get(Kind::IPPool, "default-ipv4-ippool").unwrap(),
        patched
    );

    // Removing a field with null.
    let p = cat
        .patch(
            Kind::IPPool,
            "default-ipv4-ippool",
            &json!({"spec": {"disabled": null}}),
        )
        .unwrap();
    assert!(spec_of(&p).get("disabled").is_none());
}

#[test]
fn patch_refusals() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("p", "10.0.0.0/16")]).unwrap();
    let before = revision(&store);
    let msg = |patch: Value| {
        cat.patch(Kind::IPPool, "p", &patch)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(json!({"spec": {"cidr": "10.9.0.0/16"}})),
        "IPPool \"p\" is invalid: spec.cidr: cannot be changed after the pool is created (it is \
         10.0.0.0/16, the new manifest says 10.9.0.0/16); create a new pool and migrate (see \
         docs)"
    );
    assert_eq!(
        msg(json!({"spec": {"disabled": "yes"}})),
        "IPPool \"p\": spec.disabled: expected true or false, got the string \"yes\""
    );
    assert_eq!(
        msg(json!({"spec": {"disabeld": true}})),
        "IPPool \"p\": spec.disabeld: unknown field; did you mean disabled? IPPool spec accepts \
         cidr, blockSize, ipipMode, vxlanMode, natOutgoing, disabled, disableBGPExport, \
         nodeSelector, namespaceSelector, allowedUses, assignmentMode"
    );
    assert_eq!(
        msg(json!({"metadata": {"name": "q"}})),
        "IPPool \"p\": metadata.name: cannot be changed by a patch; create a new resource with \
         the new name and delete this one"
    );
    assert_eq!(
        msg(json!("disabled")),
        "IPPool \"p\": patch: a patch must be a JSON object, e.g. {\"spec\":{\"disabled\":true}}"
    );
    assert_eq!(
        cat.patch(
            Kind::IPPool,
            "missing",
            &json!({"spec": {"disabled": true}})
        )
        .unwrap_err()
        .to_string(),
        "IPPool \"missing\" not found; see what exists with `tessera get ippools`"
    );
    assert_eq!(revision(&store), before);
}

#[test]
fn label_follows_kubectl_rules_and_creates_missing_nodes() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    // Rack pools: kubectl label nodes kube-node-0 rack=1 (no such node yet: it is created).
    let n = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("rack".into(), "1".into())],
            &[],
            false,
        )
        .unwrap();
    assert_eq!(n.metadata().labels["rack"], "1");
    assert_eq!(names(&cat.list(Kind::Node).unwrap()), ["kube-node-0"]);

    // Same value again: fine. Another value without --overwrite: refused, nothing written.
    cat.label(
        Kind::Node,
        "kube-node-0",
        &[("rack".into(), "1".into())],
        &[],
        false,
    )
    .unwrap();
    let before = revision(&store);
    let err = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("rack".into(), "2".into())],
            &[],
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Node \"kube-node-0\": metadata.labels.rack: already has the value \"1\"; pass \
         --overwrite to set it to \"2\""
    );
    assert_eq!(revision(&store), before);
    let n = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("rack".into(), "2".into())],
            &[],
            true,
        )
        .unwrap();
    assert_eq!(n.metadata().labels["rack"], "2");

    // `rack-` removes; removing an absent label is not an error.
    let n = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[],
            &["rack".into(), "zone".into()],
            false,
        )
        .unwrap();
    assert!(n.metadata().labels.is_empty());

    // Set and remove the same key: refused.
    let err = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("a".into(), "1".into())],
            &["a".into()],
            false,
        )
        .unwrap_err();
    assert!(matches!(err, CatalogError::Refused { .. }));

    // Invalid label values are validation errors.
    let err = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("rack".into(), "a b".into())],
            &[],
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Node \"kube-node-0\" is invalid: metadata.labels.rack: \"a b\" is not a valid label \
         value: ' ' is not allowed; use letters, digits, '-', '_' and '.', starting and ending \
         with a letter or digit (or leave it empty)"
    );

    // Labels on a missing pool: not found (only nodes and namespaces are created implicitly).
    assert!(matches!(
        cat.label(
            Kind::IPPool,
            "nope",
            &[("a".into(), "b".into())],
            &[],
            false
        ),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn annotate_namespace_with_pool_choice() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    // Namespace pools: kubectl annotate namespace external-ns "cni.projectcalico.org/ipv4pools"='["external-pool"]'
    let key = "cni.projectcalico.org/ipv4pools".to_string();
    let ns = cat
        .annotate(
            Kind::Namespace,
            "external-ns",
            &[(key.clone(), "[\"external-pool\"]".into())],
            &[],
            false,
        )
        .unwrap();
    assert_eq!(ns.metadata().annotations[&key], "[\"external-pool\"]");
    let err = cat
        .annotate(
            Kind::Namespace,
            "external-ns",
            &[(key.clone(), "[\"internal-pool\"]".into())],
            &[],
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Namespace \"external-ns\": metadata.annotations.cni.projectcalico.org/ipv4pools: already \
         has the value \"[\\\"external-pool\\\"]\"; pass --overwrite to set it to \
         \"[\\\"internal-pool\\\"]\""
    );
    let ns = cat
        .annotate(Kind::Namespace, "external-ns", &[], &[key], false)
        .unwrap();
    assert!(ns.metadata().annotations.is_empty());
    // Namespace names are DNS labels.
    assert!(matches!(
        cat.annotate(
            Kind::Namespace,
            "a.b",
            &[("x".into(), "y".into())],
            &[],
            false
        ),
        Err(CatalogError::Validation(_))
    ));
}

#[test]
fn ipam_configuration_defaults_and_updates() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    let Resource::IPAMConfiguration(c) = cat.get(Kind::IPAMConfiguration, "default").unwrap()
    else {
        panic!("not an IPAMConfiguration")
    };
    assert_eq!(c.metadata.name, "default");
    assert_eq!(c.spec, IPAMConfigurationSpec::default());
    assert!(!c.spec.strict_affinity && c.spec.auto_allocate_blocks);
    assert_eq!(c.spec.max_blocks_per_host, 0);
    assert!(matches!(
        cat.get(Kind::IPAMConfiguration, "other"),
        Err(CatalogError::NotFound { .. })
    ));

    let p = cat
        .patch(
            Kind::IPAMConfiguration,
            "default",
            &json!({"spec": {"strictAffinity": true}}),
        )
        .unwrap();
    assert_eq!(spec_of(&p)["strictAffinity"], true);
    assert_eq!(
        names(&cat.list(Kind::IPAMConfiguration).unwrap()),
        ["default"]
    );
    assert!(store.get("config/ipam").unwrap().is_some());
}

#[test]
fn list_is_sorted_by_name() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.apply(&[
        pool("rack-1-ippool", "192.168.1.0/24"),
        pool("extra-ippool", "10.0.0.0/16"),
        pool("rack-0-ippool", "192.168.0.0/24"),
        node("kube-node-0", json!({})),
    ])
    .unwrap();
    assert_eq!(
        names(&cat.list(Kind::IPPool).unwrap()),
        ["extra-ippool", "rack-0-ippool", "rack-1-ippool"]
    );
    for r in cat.list(Kind::IPPool).unwrap() {
        assert_eq!(r.metadata().resource_version.as_deref(), Some("1"));
    }
    assert!(cat.list(Kind::IPReservation).unwrap().is_empty());
}

#[test]
fn stale_resource_version_refused() {
    let store = MemoryStore::new();
    let cat = Catalog::new(&store);
    cat.create(&[pool("p", "10.0.0.0/16")]).unwrap();
    let mut read = cat.get(Kind::IPPool, "p").unwrap();
    cat.patch(Kind::IPPool, "p", &json!({"spec": {"natOutgoing": true}}))
        .unwrap();
    read.metadata_mut().labels.insert("a".into(), "b".into());
    let err = cat.replace(std::slice::from_ref(&read)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"p\" was modified since it was read (resourceVersion 1 given, it is now 2); get \
         it again and reapply the change, or drop metadata.resourceVersion"
    );
    // With the current version it goes through.
    let mut fresh = cat.get(Kind::IPPool, "p").unwrap();
    fresh.metadata_mut().labels.insert("a".into(), "b".into());
    assert_eq!(cat.replace(&[fresh]).unwrap()[0].action, Action::Configured);
    // A resourceVersion on a resource that does not exist yet is ignored (calicoctl output).
    let mut new = pool("q", "10.1.0.0/16");
    new.metadata_mut().resource_version = Some("689".into());
    assert_eq!(cat.apply(&[new]).unwrap()[0].action, Action::Created);
}

#[test]
fn corrupt_records_are_reported_with_their_key() {
    let store = MemoryStore::new();
    store
        .txn(
            &[],
            &[Op::Put("config/pools/broken".into(), b"{nope".to_vec())],
        )
        .unwrap();
    let cat = Catalog::new(&store);
    let err = cat.list(Kind::IPPool).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("datastore memory is corrupt or not a Tessera store: record config/pools/broken: not JSON"),
        "{err}"
    );
    // Writing pools needs the stored pools, so it fails too, and writes nothing.
    assert!(cat.apply(&[pool("p", "10.0.0.0/16")]).is_err());
    assert_eq!(revision(&store), 1);
}

/// What another writer does to the store, right before one of our transactions.
type Hook<'a> = Box<dyn FnMut(&MemoryStore) + Send + 'a>;

/// A store that runs a hook before each of the first transactions, to play another writer.
struct Interfering<'a> {
    inner: MemoryStore,
    hook: Mutex<Hook<'a>>,
    remaining: AtomicU32,
    txns: AtomicU32,
}

impl<'a> Interfering<'a> {
    fn new(times: u32, hook: impl FnMut(&MemoryStore) + Send + 'a) -> Self {
        Self {
            inner: MemoryStore::new(),
            hook: Mutex::new(Box::new(hook)),
            remaining: AtomicU32::new(times),
            txns: AtomicU32::new(0),
        }
    }
}

impl Store for Interfering<'_> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        self.inner.read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        self.txns.fetch_add(1, Ordering::SeqCst);
        if self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            (self.hook.lock().unwrap())(&self.inner);
        }
        self.inner.txn(compares, ops)
    }
    fn describe(&self) -> String {
        "interfering".into()
    }
}

#[test]
fn concurrent_overlapping_pool_is_caught_on_retry() {
    // Between our read and our txn another writer creates an overlapping pool. The pool guard
    // makes our txn fail; the retry sees the other pool and refuses the overlap.
    let store = Interfering::new(1, |inner| {
        Catalog::new(inner)
            .create(&[pool("theirs", "10.0.0.0/16")])
            .unwrap();
    });
    let err = Catalog::new(&store)
        .create(&[pool("ours", "10.0.0.0/17")])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("10.0.0.0/17 overlaps 10.0.0.0/16 of IPPool \"theirs\""),
        "{err}"
    );
    assert_eq!(store.txns.load(Ordering::SeqCst), 1);
    assert_eq!(
        names(&Catalog::new(&store.inner).list(Kind::IPPool).unwrap()),
        ["theirs"]
    );
    assert!(store.inner.get(CONFIG_GUARD_KEY).unwrap().is_some());
}

#[test]
fn conflicts_are_retried_then_reported() {
    // Another writer keeps relabelling the node: two interferences are absorbed by retries.
    let mut n = 0;
    let store = Interfering::new(2, move |inner| {
        n += 1;
        Catalog::new(inner)
            .label(
                Kind::Node,
                "kube-node-0",
                &[("other".into(), n.to_string())],
                &[],
                true,
            )
            .unwrap();
    });
    let cat = Catalog::new(&store);
    let labelled = cat
        .label(
            Kind::Node,
            "kube-node-0",
            &[("rack".into(), "0".into())],
            &[],
            false,
        )
        .unwrap();
    assert_eq!(labelled.metadata().labels["rack"], "0");
    assert_eq!(labelled.metadata().labels["other"], "2");
    assert_eq!(store.txns.load(Ordering::SeqCst), 3);

    // With interference on every attempt, the command gives up and writes nothing of its own.
    let mut n = 0;
    let store = Interfering::new(u32::MAX, move |inner| {
        n += 1;
        Catalog::new(inner)
            .label(
                Kind::Node,
                "kube-node-0",
                &[("x".into(), n.to_string())],
                &[],
                true,
            )
            .unwrap();
    });
    let cat = Catalog::new(&store).with_attempts(3);
    let err = cat
        .apply(&[node("kube-node-0", json!({"rack": "0"}))])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the datastore kept changing while this command ran (3 attempts); nothing was written; \
         run the command again"
    );
    let stored = Catalog::new(&store.inner)
        .get(Kind::Node, "kube-node-0")
        .unwrap();
    assert!(!stored.metadata().labels.contains_key("rack"));
}

/// What a test does before one of [`Limited`]'s transactions (numbered from 1), playing
/// another writer or a failure.
type BeforeTxn<'a> = Box<dyn FnMut(usize, &MemoryStore) -> Result<(), StoreError> + Send + 'a>;

/// A store with limits like etcd's, only smaller: more than `max_ops` reads, compares or
/// writes in one request are refused, as etcd refuses them. It records every transaction.
struct Limited<'a> {
    inner: MemoryStore,
    max_ops: usize,
    txns: Mutex<Vec<Vec<Op>>>,
    before: Mutex<BeforeTxn<'a>>,
}

impl<'a> Limited<'a> {
    fn new(max_ops: usize) -> Self {
        Self::with(max_ops, |_, _| Ok(()))
    }

    fn with(
        max_ops: usize,
        before: impl FnMut(usize, &MemoryStore) -> Result<(), StoreError> + Send + 'a,
    ) -> Self {
        Self {
            inner: MemoryStore::new(),
            max_ops,
            txns: Mutex::new(Vec::new()),
            before: Mutex::new(Box::new(before)),
        }
    }

    fn too_many(&self) -> StoreError {
        StoreError::Refused {
            endpoint: "limited".into(),
            reason: "etcdserver: too many operations in txn request".into(),
        }
    }
}

impl Store for Limited<'_> {
    fn read(&self, reads: &[Read]) -> Result<Snapshot, StoreError> {
        if reads.len() > self.max_ops {
            return Err(self.too_many());
        }
        self.inner.read(reads)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let number = self.txns.lock().unwrap().len() + 1;
        self.txns.lock().unwrap().push(ops.to_vec());
        (self.before.lock().unwrap())(number, &self.inner)?;
        if compares.len() > self.max_ops || ops.len() > self.max_ops {
            return Err(self.too_many());
        }
        self.inner.txn(compares, ops)
    }
    fn describe(&self) -> String {
        "limited".into()
    }
    fn txn_limits(&self) -> Option<TxnLimits> {
        Some(TxnLimits {
            max_ops: self.max_ops,
            max_bytes: 1 << 20,
        })
    }
}

fn reservation(name: &str, cidr: &str) -> Resource {
    decode_document(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPReservation",
        "metadata": {"name": name},
        "spec": {"reservedCIDRs": [cidr]},
    }))
    .unwrap()
}

fn reservations(count: usize, third_octet: u8) -> Vec<Resource> {
    (0..count)
        .map(|i| reservation(&format!("r{i:03}"), &format!("10.9.{third_octet}.{i}/32")))
        .collect()
}

/// Every record but the configuration guard, which every configuration change renews.
fn contents(store: &MemoryStore) -> Vec<(String, Vec<u8>)> {
    store
        .range("")
        .unwrap()
        .into_iter()
        .filter(|kv| kv.key != CONFIG_GUARD_KEY)
        .map(|kv| (kv.key, kv.value))
        .collect()
}

fn refused_store(reason: &str) -> StoreError {
    StoreError::Refused {
        endpoint: "limited".into(),
        reason: reason.into(),
    }
}

#[test]
fn a_change_too_large_for_one_transaction_is_written_in_parts() {
    let store = Limited::new(8);
    let mut batch = reservations(30, 0);
    batch.push(pool("a", "10.1.0.0/16"));
    batch.push(node("kube-node-0", json!({"rack": "0"})));
    batch.push(pool("b", "10.2.0.0/16"));
    let done = Catalog::new(&store).apply(&batch).unwrap();
    assert_eq!(done.len(), 33);
    assert!(done.iter().all(|o| o.action == Action::Created));
    let cat = Catalog::new(&store.inner);
    assert_eq!(cat.list(Kind::IPReservation).unwrap().len(), 30);
    assert_eq!(names(&cat.list(Kind::IPPool).unwrap()), ["a", "b"]);

    // Several transactions, the pools together in the last one, every one renewing the guard.
    let txns = store.txns.lock().unwrap().clone();
    assert!(txns.len() >= 5, "{} transactions", txns.len());
    let writes_pool = |ops: &Vec<Op>| {
        ops.iter()
            .any(|op| matches!(op, Op::Put(k, _) if k.starts_with("config/pools/")))
    };
    assert_eq!(txns.iter().filter(|ops| writes_pool(ops)).count(), 1);
    assert!(writes_pool(txns.last().unwrap()));
    for ops in &txns {
        assert!(ops
            .iter()
            .any(|op| matches!(op, Op::Put(k, _) if k == CONFIG_GUARD_KEY)));
    }

    // Applied again, nothing changes; changed, every one is configured; deleted in parts too.
    store.txns.lock().unwrap().clear();
    let again = Catalog::new(&store).apply(&batch).unwrap();
    assert!(again.iter().all(|o| o.action == Action::Unchanged));
    assert!(store.txns.lock().unwrap().is_empty());
    let moved = reservations(30, 1);
    let done = Catalog::new(&store).apply(&moved).unwrap();
    assert!(done.iter().all(|o| o.action == Action::Configured));
    let targets: Vec<(Kind, String)> = moved
        .iter()
        .map(|r| (r.kind(), r.name().to_string()))
        .collect();
    assert_eq!(
        Catalog::new(&store).delete(&targets, false).unwrap().len(),
        30
    );
    assert!(cat.list(Kind::IPReservation).unwrap().is_empty());
}

#[test]
fn a_part_that_fails_undoes_the_parts_before_it() {
    let store = Limited::with(8, |n, _| match n {
        4 => Err(refused_store("injected failure")),
        _ => Ok(()),
    });
    Catalog::new(&store.inner)
        .apply(&reservations(10, 0))
        .unwrap();
    let before = contents(&store.inner);
    // Ten updates, twenty new ones, and a pool: the fourth transaction fails.
    let mut batch = reservations(30, 1);
    batch.push(pool("a", "10.1.0.0/16"));
    let err = Catalog::new(&store).apply(&batch).unwrap_err().to_string();
    assert!(err.contains("injected failure"), "{err}");
    assert!(
        err.contains(
            "this command was written in 5 transactions to fit the datastore's limits and \
             transaction 4 failed; the 21 resources written before it were put back as they \
             were, so nothing was changed"
        ),
        "{err}"
    );
    assert_eq!(contents(&store.inner), before);

    // A delete in parts is undone the same way: the deleted records come back.
    let store = Limited::with(8, |n, _| match n {
        3 => Err(refused_store("injected failure")),
        _ => Ok(()),
    });
    Catalog::new(&store.inner)
        .apply(&reservations(20, 0))
        .unwrap();
    let before = contents(&store.inner);
    let targets: Vec<(Kind, String)> = (0..20)
        .map(|i| (Kind::IPReservation, format!("r{i:03}")))
        .collect();
    let err = Catalog::new(&store)
        .delete(&targets, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("transaction 3 failed; the 14 resources written before it were put back"),
        "{err}"
    );
    assert_eq!(contents(&store.inner), before);
}

#[test]
fn a_configuration_change_between_parts_undoes_them_and_starts_over() {
    // Another writer adds a reservation right before our second transaction: the guard tells,
    // the first part is undone, and the command runs again on the new configuration.
    let store = Limited::with(8, |n, inner| {
        if n == 2 {
            Catalog::new(inner)
                .apply(&[reservation("theirs", "10.9.9.9/32")])
                .unwrap();
        }
        Ok(())
    });
    let batch = reservations(20, 0);
    let done = Catalog::new(&store).apply(&batch).unwrap();
    assert!(done.iter().all(|o| o.action == Action::Created));
    assert_eq!(
        Catalog::new(&store.inner)
            .list(Kind::IPReservation)
            .unwrap()
            .len(),
        21
    );

    // Interfering every other transaction, the command gives up and leaves no trace.
    let mut count = 0;
    let store = Limited::with(8, move |n, inner| {
        if n % 2 == 0 {
            count += 1;
            Catalog::new(inner)
                .apply(&[reservation(&format!("theirs{count}"), "10.9.9.9/32")])
                .unwrap();
        }
        Ok(())
    });
    let err = Catalog::new(&store)
        .with_attempts(2)
        .apply(&batch)
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::Conflict { attempts: 2 }),
        "{err}"
    );
    let left = Catalog::new(&store.inner)
        .list(Kind::IPReservation)
        .unwrap();
    assert!(
        left.iter().all(|r| r.name().starts_with("theirs")),
        "{left:?}"
    );
}

#[test]
fn undoing_leaves_alone_what_another_writer_changed_since() {
    let store = Limited::with(8, |n, inner| {
        if n == 3 {
            Catalog::new(inner)
                .label(Kind::Node, "n00", &[("x".into(), "y".into())], &[], true)
                .unwrap();
            return Err(refused_store("injected failure"));
        }
        Ok(())
    });
    let batch: Vec<Resource> = (0..20)
        .map(|i| node(&format!("n{i:02}"), json!({"rack": "0"})))
        .collect();
    let err = Catalog::new(&store).apply(&batch).unwrap_err().to_string();
    assert!(
        err.contains(
            "the 14 resources written before it were put back as they were, except Node \
             \"n00\", which another writer changed since (it keeps that writer's content)"
        ),
        "{err}"
    );
    let left = Catalog::new(&store.inner).list(Kind::Node).unwrap();
    assert_eq!(names(&left), ["n00"]);
    assert_eq!(left[0].metadata().labels["x"], "y");
}

#[test]
fn pools_that_do_not_fit_one_transaction_are_refused_before_writing() {
    let store = Limited::new(8);
    let batch: Vec<Resource> = (0..10)
        .map(|i| pool(&format!("p{i}"), &format!("10.{i}.0.0/16")))
        .collect();
    let err = Catalog::new(&store).apply(&batch).unwrap_err().to_string();
    assert_eq!(
        err,
        "this command changes 10 IPPools, SpiderIPPools, SpiderSubnets or the \
         IPAMConfiguration; they are checked against one another and written in one \
         transaction, which needs 11 operations, and the datastore takes at most 8 in one \
         (etcd's --max-txn-ops): apply them in several smaller manifests, or raise --max-txn-ops on \
         every etcd member; nothing was written"
    );
    assert!(store.txns.lock().unwrap().is_empty());
}

#[test]
fn modify_reports_what_it_did_and_writes_nothing_for_an_unchanged_resource() {
    let store = MemoryStore::new();
    let catalog = Catalog::new(&store);
    let add_rack = |current: &Resource| {
        let mut new = current.clone();
        new.metadata_mut().labels.insert("rack".into(), "r1".into());
        Ok(new)
    };
    let (action, created) = catalog.modify(Kind::Node, "n1", true, add_rack).unwrap();
    assert_eq!(action, Action::Created);
    assert_eq!(created.metadata().labels["rack"], "r1");
    let before = revision(&store);
    let (action, _) = catalog.modify(Kind::Node, "n1", true, add_rack).unwrap();
    assert_eq!(action, Action::Unchanged);
    assert_eq!(revision(&store), before);
    let (action, _) = catalog
        .modify(Kind::Node, "n1", false, |current| {
            let mut new = current.clone();
            new.metadata_mut().labels.clear();
            Ok(new)
        })
        .unwrap();
    assert_eq!(action, Action::Configured);
    assert!(matches!(
        catalog.modify(Kind::Node, "n2", false, |c| Ok(c.clone())),
        Err(CatalogError::NotFound { .. })
    ));
}
