//! StatefulSet pods keep their addresses: the real plugin, a canned API server saying the
//! pod belongs to a StatefulSet, and the pod deleted and created again under its name.

mod common;

use common::*;
use serde_json::{json, Value};
use tessera_k8s_lookup::testing::{namespace_json, pod_json, write_kubeconfig, FakeApiServer};

/// An API server with pod db/web-0 (uid `uid`), owned by StatefulSet `web` when `sticky`.
fn server_with_web0(uid: &str, sticky: bool) -> FakeApiServer {
    let server = FakeApiServer::start();
    let mut pod = pod_json("db", "web-0", uid, &[], &[]);
    if sticky {
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
            "kind": "StatefulSet", "name": "web", "uid": "sts-uid", "controller": true}]);
    }
    server.set_pod(&pod);
    server.set_namespace(&namespace_json("db", &[], &[]));
    server
}

fn conf_for(env: &Env, server: &FakeApiServer, node: &str) -> Value {
    let kubeconfig = write_kubeconfig(env.dir(), &server.url(), "t0ken\n");
    let mut conf = env.conf("1.0.0", json!({"nodename": node}));
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig.to_str().unwrap()});
    conf
}

fn first_address(result: &Value) -> String {
    addr(result["ips"][0]["address"].as_str().unwrap())
}

/// Adds web-0 in container `cid` on `node`, then deletes it; returns its address.
fn add_then_delete(env: &Env, server: &FakeApiServer, cid: &str, node: &str) -> String {
    let conf = conf_for(env, server, node);
    let att = Att::new(cid).pod("db", "web-0");
    let got = first_address(&env.add(&conf, &att));
    let check = env.cni("CHECK", &conf, Some(&att));
    assert_eq!(check.status, 0, "CHECK: {}", check.stderr);
    env.cni("DEL", &conf, Some(&att)).ok();
    got
}

#[test]
fn a_statefulset_pod_created_again_on_another_node_gets_its_address_back() {
    let env = Env::new();
    env.pool("a", "10.1.0.0/24", 26, json!({}));
    let first = add_then_delete(&env, &server_with_web0("uid-1", true), "c1", "node-a");
    // DEL left the address held for the pod's name.
    let rec = env.ipam().handle("tnet:db/web-0:eth0").unwrap().unwrap();
    assert_eq!(rec.attrs.statefulset.as_deref(), Some("web"));
    // Another pod takes the next address meanwhile.
    let conf = env.conf("1.0.0", json!({}));
    env.add(&conf, &Att::new("other").pod("db", "other"));
    let again = add_then_delete(&env, &server_with_web0("uid-2", true), "c2", "node-b");
    assert_eq!(again, first);
    let rec = env.ipam().handle("tnet:db/web-0:eth0").unwrap().unwrap();
    assert_eq!(rec.attrs.pod_uid.as_deref(), Some("uid-2"));
    assert_eq!(rec.attrs.node.as_deref(), Some("node-b"));
    env.assert_consistent();
}

#[test]
fn a_pod_of_no_statefulset_gets_a_new_address_and_del_releases_it() {
    let env = Env::new();
    env.pool("a", "10.1.0.0/24", 26, json!({}));
    let first = add_then_delete(&env, &server_with_web0("uid-1", false), "c1", "node-a");
    assert_eq!(env.handle_count(), 0);
    let again = add_then_delete(&env, &server_with_web0("uid-2", false), "c2", "node-a");
    assert_ne!(again, first);
}

fn stickiness(env: &Env, on: bool) {
    env.apply(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
                     "metadata": {"name": "default"}, "spec": {"enableStatefulSet": on}}),
    );
}

#[test]
fn turned_off_a_statefulset_pod_holds_a_container_handle_that_del_releases() {
    let env = Env::new();
    env.pool("a", "10.1.0.0/24", 26, json!({}));
    stickiness(&env, false);
    let server = server_with_web0("uid-1", true);
    add_then_delete(&env, &server, "c1", "node-a");
    assert_eq!(
        env.handle_count(),
        0,
        "DEL released it like any other pod's"
    );
    let conf = conf_for(&env, &server, "node-a");
    let att = Att::new("c2").pod("db", "web-0");
    env.add(&conf, &att);
    let rec = env.ipam().handle("tnet:c2:eth0").unwrap().unwrap();
    assert_eq!(rec.attrs.statefulset, None, "recorded like any other pod's");
    assert!(env.ipam().handle("tnet:db/web-0:eth0").unwrap().is_none());
    // A retried ADD gets the same address back.
    let again = first_address(&env.add(&conf, &att));
    assert_eq!(again, rec.addresses[0].ip.to_string());
    env.assert_consistent();
}

#[test]
fn a_handle_held_while_stickiness_was_on_goes_with_the_pods_next_add_once_off() {
    let env = Env::new();
    env.pool("a", "10.1.0.0/24", 26, json!({}));
    add_then_delete(&env, &server_with_web0("uid-1", true), "c1", "node-a");
    assert!(env.ipam().handle("tnet:db/web-0:eth0").unwrap().is_some());
    stickiness(&env, false);
    let server = server_with_web0("uid-2", true);
    let conf = conf_for(&env, &server, "node-b");
    env.add(&conf, &Att::new("c2").pod("db", "web-0"));
    assert!(env.ipam().handle("tnet:db/web-0:eth0").unwrap().is_none());
    assert!(env.ipam().handle("tnet:c2:eth0").unwrap().is_some());
    env.cni("DEL", &conf, Some(&Att::new("c2").pod("db", "web-0")))
        .ok();
    assert_eq!(env.handle_count(), 0);
}
