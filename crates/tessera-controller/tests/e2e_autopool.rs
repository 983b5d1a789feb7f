//! End to end: auto pools (Spiderpool's SpiderSubnet feature). The real `tessera-controller`,
//! `tessera` and `tessera-ipam` binaries against a real etcd and the Kubernetes API emulator.
//! The emulator runs no workload controllers, so the tests make a Deployment's ReplicaSet and
//! pods themselves, as Kubernetes would; the plugin reads each pod from the emulator (a
//! `kubernetes` section) and so knows its Deployment.

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, Controller, Pod};
use serde_json::{json, Value};
use tessera_core::ranges::IpRangeSet;

/// Longest a change in Kubernetes may take to reach the pools (a pool shrinks only after
/// garbage collection released its pods' addresses, and at the next pass).
const FOLLOW: Duration = Duration::from_secs(30);

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const REPLICASETS: &str = "/apis/apps/v1/namespaces/default/replicasets";

/// A subnet of 50 addresses for auto pools.
const SUBNET: &str = r#"apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata:
  name: web-subnet-v4
spec:
  ipVersion: 4
  subnet: 10.50.0.0/24
  ips:
  - 10.50.0.10-10.50.0.59
  gateway: 10.50.0.1
"#;

/// A subnet of 2 addresses.
const TINY_SUBNET: &str = r#"apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata:
  name: tiny-subnet-v4
spec:
  subnet: 10.51.0.0/24
  ips:
  - 10.51.0.10-10.51.0.11
"#;

fn started(cluster: &Cluster) -> Controller {
    let mut controller = cluster.controller("a", &[]);
    controller.wait_ready();
    controller
}

/// A Deployment whose pods name `subnet`; returns its uid.
fn create_deployment(cluster: &Cluster, name: &str, replicas: u32, subnet: &str) -> String {
    let created = cluster.kube.create(
        DEPLOYMENTS,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": template_annotations(subnet)},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}
                }
            }
        }),
    );
    created["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

fn template_annotations(subnet: &str) -> Value {
    json!({"ipam.spidernet.io/subnet": json!({"ipv4": [subnet]}).to_string()})
}

/// The Deployment's ReplicaSet, `<name>-<hash>`, as the Deployment controller makes it.
fn create_replica_set(cluster: &Cluster, deployment: &str, uid: &str, hash: &str) -> String {
    let name = format!("{deployment}-{hash}");
    let created = cluster.kube.create(
        REPLICASETS,
        &json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": uid, "controller": true}
            ]},
            "spec": {"selector": {"matchLabels": {"app": deployment}}, "template": {"metadata": {}}}
        }),
    );
    created["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

/// A pod of the ReplicaSet `<deployment>-<hash>` on node n1.
fn create_pod(
    cluster: &Cluster,
    deployment: &str,
    rs_uid: &str,
    hash: &str,
    index: usize,
    subnet: &str,
) -> Pod {
    cluster.create_pod(
        "default",
        &format!("{deployment}-{hash}-{index}"),
        "n1",
        json!({
            "labels": {"app": deployment, "pod-template-hash": hash},
            "annotations": template_annotations(subnet),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-{hash}"), "uid": rs_uid, "controller": true}]
        }),
    )
}

fn scale(cluster: &Cluster, deployment: &str, replicas: u32) {
    cluster.kube.patch(
        &format!("{DEPLOYMENTS}/{deployment}"),
        &json!({"spec": {"replicas": replicas}}),
    );
}

/// The network configuration with a `kubernetes` section.
fn conf(cluster: &Cluster) -> Value {
    let mut conf = cluster.cni_conf("n1", json!({}));
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("a UTF-8 path")
        .to_string();
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    conf
}

/// The SpiderIPPool `name` as `tessera get sp -o json` prints it.
fn pool(cluster: &Cluster, name: &str) -> Option<Value> {
    let run = cluster.tessera_run(&["get", "sp", name, "-o", "json"], "");
    (run.code == 0).then(|| serde_json::from_str(&run.stdout).expect("JSON"))
}

fn pool_addresses(cluster: &Cluster, name: &str) -> Option<IpRangeSet> {
    let pool = pool(cluster, name)?;
    let ips: Vec<String> = serde_json::from_value(pool["spec"]["ips"].clone()).expect("ips");
    Some(IpRangeSet::parse(&ips, false).expect("addresses"))
}

fn wait_for_size(cluster: &Cluster, name: &str, size: u128) {
    wait_until(
        &format!("pool {name} to hold {size} addresses"),
        FOLLOW,
        || pool_addresses(cluster, name).is_some_and(|a| a.len() == size),
    );
}

#[test]
fn a_deployments_pool_follows_its_replicas_from_3_to_10_to_2() {
    let Some(cluster) = Cluster::start("auto pools follow replicas") else {
        return;
    };
    cluster.create_node("n1", json!({}));
    cluster.apply(SUBNET);
    let _controller = started(&cluster);
    let uid = create_deployment(&cluster, "web", 3, "web-subnet-v4");
    let name = format!("auto4-web-eth0-{}", &uid.rsplit('-').next().unwrap()[..5]);

    // replicas + 1, the default of ippool-ip-number, cut from the subnet's start.
    wait_for_size(&cluster, &name, 4);
    let created = pool(&cluster, &name).unwrap();
    let labels = &created["metadata"]["labels"];
    assert_eq!(
        labels["ipam.spidernet.io/owner-application-kind"],
        "Deployment"
    );
    assert_eq!(labels["ipam.spidernet.io/owner-application-name"], "web");
    assert_eq!(
        labels["ipam.spidernet.io/owner-application-uid"],
        uid.as_str()
    );
    assert_eq!(
        labels["ipam.spidernet.io/owner-spider-subnet"],
        "web-subnet-v4"
    );
    assert_eq!(created["spec"]["ips"], json!(["10.50.0.10-10.50.0.13"]));
    // ALLOCATED-IP-COUNT of a subnet: the addresses it handed to pools.
    let listing = cluster.tessera(&["get", "ss"]);
    let row = ["web-subnet-v4", "4", "10.50.0.0/24", "4", "50"];
    assert!(
        listing.lines().any(|l| l.split_whitespace().eq(row)),
        "{listing}"
    );

    let rs_uid = create_replica_set(&cluster, "web", &uid, "7f9c5");
    let conf = conf(&cluster);
    let mut pods = Vec::new();
    let attach = |count: usize, pods: &mut Vec<Pod>| {
        for _ in 0..count {
            let pod = create_pod(
                &cluster,
                "web",
                &rs_uid,
                "7f9c5",
                pods.len(),
                "web-subnet-v4",
            );
            let ip = cluster.attach_with(&pod, &conf);
            let pool = pool_addresses(&cluster, &name).unwrap();
            assert!(
                pool.contains(ip.parse().unwrap()),
                "{ip} of {} is outside {name}",
                pod.name
            );
            pods.push(pod);
        }
    };
    attach(3, &mut pods);

    scale(&cluster, "web", 10);
    wait_for_size(&cluster, &name, 11);
    attach(7, &mut pods);

    // Scaled down: the pods go, their addresses are collected, the pool gives them back.
    scale(&cluster, "web", 2);
    for pod in pods.drain(2..) {
        cluster.kube.delete(&pod.path());
    }
    wait_for_size(&cluster, &name, 3);
    for pod in &pods {
        let ip = cluster.attach_with(pod, &conf);
        let pool = pool_addresses(&cluster, &name).unwrap();
        assert!(
            pool.contains(ip.parse().unwrap()),
            "{} kept an address of the pool",
            pod.name
        );
    }

    // Deleted: the pool goes once its last addresses are released.
    cluster.kube.delete(&format!("{DEPLOYMENTS}/web"));
    cluster.kube.delete(&format!("{REPLICASETS}/web-7f9c5"));
    for pod in &pods {
        cluster.kube.delete(&pod.path());
    }
    wait_until("the pool of the deleted Deployment to go", FOLLOW, || {
        pool(&cluster, &name).is_none()
    });
    cluster.assert_check_clean();
}

#[test]
fn a_subnet_too_small_fails_add_with_the_counts_and_an_event() {
    let Some(cluster) = Cluster::start("auto pool from a subnet too small") else {
        return;
    };
    cluster.create_node("n1", json!({}));
    cluster.apply(TINY_SUBNET);
    let _controller = started(&cluster);
    let uid = create_deployment(&cluster, "big", 3, "tiny-subnet-v4");
    let rs_uid = create_replica_set(&cluster, "big", &uid, "a1b2c");
    let pod = create_pod(&cluster, "big", &rs_uid, "a1b2c", 0, "tiny-subnet-v4");
    let conf = conf(&cluster);

    let mut last = String::new();
    wait_until("ADD to report the subnet's shortage", FOLLOW, || {
        let run = cluster.cni_add_run(&pod, &conf);
        last = format!("{}{}", run.stdout, run.stderr);
        run.code != 0 && last.contains("too few free addresses")
    });
    assert!(
        last.contains("tiny-subnet-v4")
            && last.contains("Deployment default/big")
            && last.contains("4 asked for, 2 free"),
        "{last}"
    );

    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    wait_until("an Event on the Deployment", FOLLOW, || {
        let list = cluster.kube.get(events).unwrap_or_default();
        list["items"].as_array().into_iter().flatten().any(|e| {
            e["regarding"]["name"] == "big"
                && e["regarding"]["kind"] == "Deployment"
                && e["reason"] == "SubnetExhausted"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("4 asked for, 2 free"))
        })
    });
    assert!(pool(
        &cluster,
        &format!("auto4-big-eth0-{}", &uid.rsplit('-').next().unwrap()[..5])
    )
    .is_none());
}
