// Shared by the allocator tests: writes resources straight into a store.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::json;
use tessera_core::ipam::{AssignRequest, Attributes};
use tessera_core::keys;
use tessera_core::store::{Op, Store};

pub fn put(store: &dyn Store, key: &str, value: serde_json::Value) {
    store
        .txn(
            &[],
            &[Op::Put(key.into(), serde_json::to_vec(&value).unwrap())],
        )
        .unwrap();
}

pub fn pool(store: &dyn Store, name: &str, spec: serde_json::Value) {
    put(
        store,
        &keys::pool(name),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": name}, "spec": spec}),
    );
}

pub fn node(store: &dyn Store, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<_, _> = labels.iter().cloned().collect();
    put(
        store,
        &keys::node(name),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
               "metadata": {"name": name, "labels": labels}}),
    );
}

pub fn namespace(store: &dyn Store, name: &str, annotations: &[(&str, &str)]) {
    let ann: BTreeMap<_, _> = annotations.iter().cloned().collect();
    put(
        store,
        &keys::namespace(name),
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "annotations": ann}}),
    );
}

pub fn ipam_config(store: &dyn Store, strict: bool, auto: bool, max_blocks: u32) {
    put(
        store,
        keys::IPAM_CONFIG,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
               "metadata": {"name": "default"},
               "spec": {"strictAffinity": strict, "autoAllocateBlocks": auto,
                        "maxBlocksPerHost": max_blocks}}),
    );
}

pub fn reservation(store: &dyn Store, name: &str, cidrs: &[&str]) {
    put(
        store,
        &keys::reservation(name),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
               "metadata": {"name": name}, "spec": {"reservedCIDRs": cidrs}}),
    );
}

pub fn v4(handle: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: 1,
        ..Default::default()
    }
}

pub fn in_namespace(mut req: AssignRequest, ns: &str) -> AssignRequest {
    req.attrs = Attributes {
        namespace: Some(ns.into()),
        pod: Some(format!("pod-{}", req.handle)),
        ..Default::default()
    };
    req
}

pub fn spider_pool(store: &dyn Store, name: &str, spec: serde_json::Value) {
    put(
        store,
        &keys::spider_pool(name),
        json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
               "metadata": {"name": name}, "spec": spec}),
    );
}

pub fn spider_reserved(store: &dyn Store, name: &str, ips: &[&str]) {
    put(
        store,
        &keys::spider_reserved(name),
        json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
               "metadata": {"name": name}, "spec": {"ips": ips}}),
    );
}
