//! End to end: StatefulSet pods keep their addresses. The real `tessera-controller`,
//! `tessera` and `tessera-ipam` binaries against a real etcd and the Kubernetes API emulator;
//! the plugin reads each pod from the emulator (a `kubernetes` section), so it knows the pod's
//! StatefulSet from its ownerReferences.
//!
//! The controllers run with a 5 s leak grace period, so that a release that should not happen
//! has the time to show.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Controller, Pod, NETWORK};
use serde_json::{json, Value};

/// One pool for everything, /26 blocks.
const ONE_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pods
spec:
  cidr: 10.40.0.0/24
  blockSize: 26
"#;

/// The leak grace period of these tests' controllers.
const GRACE: Duration = Duration::from_secs(5);

/// Longest a change in Kubernetes may take to reach the store.
const FOLLOW: Duration = Duration::from_secs(10);

const STATEFULSETS: &str = "/apis/apps/v1/namespaces/default/statefulsets";

fn started(cluster: &Cluster) -> Controller {
    let grace = format!("{}s", GRACE.as_secs());
    let mut controller = cluster.controller("a", &["--leak-grace-period", &grace]);
    controller.wait_ready();
    controller
}

/// Creates StatefulSet `web` in namespace default with `replicas`.
fn create_web(cluster: &Cluster, replicas: i32) {
    cluster.kube.create(
        STATEFULSETS,
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": replicas, "serviceName": "web",
                         "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
    );
}

/// Creates pod `name` of StatefulSet web on `node`, as the StatefulSet controller would.
fn create_web_pod(cluster: &Cluster, name: &str, node: &str) -> Pod {
    let owner = json!({"labels": {"app": "web"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                             "uid": "5e7c0000-0000-4000-8000-000000000002", "controller": true}]});
    cluster.create_pod("default", name, node, owner)
}

/// ADD for `pod` on its node, the plugin reading the pod from the emulator.
fn attach(cluster: &Cluster, pod: &Pod) -> String {
    let mut conf: Value = cluster.cni_conf(&pod.node, json!({}));
    let kubeconfig = cluster.kubeconfig().to_str().unwrap().to_string();
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    cluster.attach_with(pod, &conf)
}

/// The handle the plugin gives StatefulSet pod `name` of namespace default.
fn held_handle(name: &str) -> String {
    format!("{NETWORK}:default/{name}:eth0")
}

/// Asserts that `ip` stays allocated, polling, for `span`.
fn assert_held_for(cluster: &Cluster, controller: &mut Controller, ip: &str, span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        controller.assert_running();
        assert!(
            cluster.in_use(ip),
            "{ip} was released; controller log:\n{}",
            controller.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `ip` is released, at most a grace period and the time to follow a change.
fn wait_released(cluster: &Cluster, ip: &str) {
    let what = format!("{ip} is released");
    common::wait_until(&what, GRACE + FOLLOW, || !cluster.in_use(ip));
}

#[test]
fn a_statefulset_pod_created_again_on_another_node_gets_its_address_back() {
    let Some(cluster) = Cluster::start("sticky_recreated_elsewhere") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    cluster.create_node("n2", json!({}));
    create_web(&cluster, 2);
    let mut controller = started(&cluster);
    let old = create_web_pod(&cluster, "web-0", "n1");
    let ip = attach(&cluster, &old);
    let other = cluster.create_pod("default", "other", "n1", json!({}));
    cluster.attach(&other);

    // The pod is deleted (its node lost): the address stays held for its name, through
    // full passes that see no pod web-0 at all.
    cluster.kube.delete(&old.path());
    assert_held_for(
        &cluster,
        &mut controller,
        &ip,
        GRACE + Duration::from_secs(2),
    );

    // The StatefulSet controller makes web-0 again, on n2, with a new UID. The full scan
    // sees the handle's UID differ from the pod's (Spiderpool issues 2442 and 2526) before
    // the ADD: the address stays all the same.
    let new = create_web_pod(&cluster, "web-0", "n2");
    assert_ne!(new.uid, old.uid);
    assert_held_for(
        &cluster,
        &mut controller,
        &ip,
        GRACE + Duration::from_secs(2),
    );
    assert_eq!(attach(&cluster, &new), ip);
    assert_eq!(cluster.holder(&ip), Some(held_handle("web-0")));
    let shown = cluster.tessera(&["ipam", "show", "--ip", &ip]);
    assert!(shown.contains("  statefulset: web\n"), "{shown}");
    assert_held_for(
        &cluster,
        &mut controller,
        &ip,
        GRACE + Duration::from_secs(2),
    );
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn scaling_down_or_deleting_the_statefulset_releases_the_held_addresses() {
    let Some(cluster) = Cluster::start("sticky_scaled_down") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    create_web(&cluster, 2);
    let mut controller = started(&cluster);
    let web0 = create_web_pod(&cluster, "web-0", "n1");
    let web1 = create_web_pod(&cluster, "web-1", "n1");
    let ip0 = attach(&cluster, &web0);
    let ip1 = attach(&cluster, &web1);

    // Scaled to one replica: web-1 goes, and so does its address; web-0's stays.
    cluster.kube.patch(
        &format!("{STATEFULSETS}/web"),
        &json!({"spec": {"replicas": 1}}),
    );
    cluster.kube.delete(&web1.path());
    wait_released(&cluster, &ip1);
    assert!(
        controller
            .log()
            .contains("its StatefulSet web scaled down to 1 replica(s)"),
        "{}",
        controller.log_tail()
    );
    assert_held_for(&cluster, &mut controller, &ip0, Duration::from_secs(1));

    // The StatefulSet deleted, then its pod: the last address goes.
    cluster.kube.delete(&format!("{STATEFULSETS}/web"));
    cluster.kube.delete(&web0.path());
    wait_released(&cluster, &ip0);
    assert!(
        controller.log().contains("its StatefulSet web was deleted"),
        "{}",
        controller.log_tail()
    );
    drop(controller);
    cluster.assert_check_clean();
}
