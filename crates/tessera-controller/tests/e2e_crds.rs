//! End to end: pools applied with kubectl (here: created through the Kubernetes API emulator)
//! reach the datastore through the real `tessera-controller`, `tessera-ipam` allocates from
//! them, their status and Events say what happened, and `tessera` refuses to change them.
//!
//! The controller runs with `--gc-interval 1s`, so statuses are refreshed every second.

mod common;

use std::time::Duration;

use common::{Cluster, Controller};
use serde_json::{json, Value};

/// Longest a change in Kubernetes may take to reach the store or a status.
const FOLLOW: Duration = Duration::from_secs(15);

const SPIDER_POOLS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools";
const CALICO_POOLS: &str = "/apis/crd.projectcalico.org/v1/ippools";

fn spider_pool(name: &str, subnet: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": ips},
    })
}

fn started(cluster: &Cluster) -> Controller {
    let mut controller = cluster.controller("a", &[]);
    controller.wait_ready();
    controller
}

/// The datastore's record of a resource (`tessera get KIND NAME -o json`), if any.
fn record(cluster: &Cluster, kind: &str, name: &str) -> Option<Value> {
    let run = cluster.tessera_run(&["get", kind, name, "-o", "json"], "");
    (run.code == 0).then(|| serde_json::from_str(&run.stdout).expect("JSON"))
}

/// The controller's `Synced` condition of the object at `path`, once it has one.
fn condition(cluster: &Cluster, path: &str) -> Option<Value> {
    let object = cluster.kube.get(path)?;
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Synced")
        .cloned()
}

/// Waits until the object at `path` has a `Synced` condition with `reason`; returns it.
fn wait_condition(cluster: &Cluster, controller: &Controller, path: &str, reason: &str) -> Value {
    let mut last = None;
    let start = std::time::Instant::now();
    while start.elapsed() < FOLLOW {
        last = condition(cluster, path);
        if last.as_ref().is_some_and(|c| c["reason"] == reason) {
            return last.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{path} has no condition {reason} (last: {last:?}); controller log:\n{}",
        mirror_log(controller)
    );
}

/// The controller's log lines about the mirror of custom resources and its failures.
fn mirror_log(controller: &Controller) -> String {
    controller
        .log()
        .lines()
        .filter(|line| line.contains("crds") || line.contains("ERROR") || line.contains("lease"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Events recorded about object `name` (cluster-scoped objects' Events go to `default`).
fn events_about(cluster: &Cluster, name: &str) -> Vec<Value> {
    let list = cluster
        .kube
        .get("/apis/events.k8s.io/v1/namespaces/default/events")
        .unwrap_or_default();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .collect()
}

#[test]
fn a_spider_ippool_applied_with_kubectl_is_allocated_from_counted_and_deleted_once_empty() {
    let Some(cluster) = Cluster::start("crds_spider_ippool") else {
        return;
    };
    cluster.create_node("node-1", json!({}));
    let controller = started(&cluster);
    cluster.kube.create(
        SPIDER_POOLS,
        &spider_pool("k8s-pool", "10.60.0.0/24", &["10.60.0.10-10.60.0.12"]),
    );
    let path = format!("{SPIDER_POOLS}/k8s-pool");

    let synced = wait_condition(&cluster, &controller, &path, "Synced");
    assert_eq!(synced["status"], "True");
    let stored = record(&cluster, "spiderippools", "k8s-pool").expect("the pool is stored");
    assert_eq!(stored["spec"]["ips"], json!(["10.60.0.10-10.60.0.12"]));
    assert_eq!(
        stored["metadata"]["annotations"]["tessera.dev/managed-by"],
        "kubernetes"
    );
    let object = cluster.kube.get(&path).unwrap();
    assert_eq!(
        object["metadata"]["finalizers"],
        json!(["tessera.dev/datastore-record"])
    );
    assert_eq!(object["status"]["totalIPCount"], 3);
    assert_eq!(object["status"]["allocatedIPCount"], 0);

    let pod = cluster.create_pod("default", "web-0", "node-1", json!({}));
    let conf = cluster.cni_conf("node-1", json!({"default_ipv4_ippool": ["k8s-pool"]}));
    let ip = cluster.attach_with(&pod, &conf);
    assert!(
        ip.starts_with("10.60.0.1"),
        "allocated {ip} outside k8s-pool"
    );
    common::wait_until("allocatedIPCount counts the pod", FOLLOW, || {
        cluster.kube.get(&path).unwrap()["status"]["allocatedIPCount"] == 1
    });

    // The address holds the pool, and the pool holds its Kubernetes object.
    cluster.kube.delete(&path);
    let refused = wait_condition(&cluster, &controller, &path, "DeleteRefused");
    assert!(
        refused["message"].as_str().unwrap().contains(&ip),
        "{refused}"
    );
    assert!(record(&cluster, "spiderippools", "k8s-pool").is_some());
    let events = events_about(&cluster, "k8s-pool");
    assert!(
        events.iter().any(|e| e["reason"] == "DeleteRefused"),
        "no DeleteRefused Event: {events:?}"
    );

    cluster.tessera(&["ipam", "release", "--ip", &ip]);
    common::wait_until("the pool is deleted in both places", FOLLOW, || {
        cluster.kube.get(&path).is_none() && record(&cluster, "spiderippools", "k8s-pool").is_none()
    });
}

#[test]
fn an_invalid_spider_ippool_gets_the_message_of_tessera_apply_and_changes_nothing() {
    let Some(cluster) = Cluster::start("crds_invalid") else {
        return;
    };
    let controller = started(&cluster);
    let bad = spider_pool("bad-pool", "10.61.0.0/24", &["10.62.0.10"]);
    // What `tessera apply` says about the same object.
    let run = cluster.tessera_run(&["apply", "-f", "-"], &bad.to_string());
    assert_ne!(run.code, 0, "tessera apply took {bad}");
    // It names a file and document where the condition names the object; what follows is the
    // same: `stdin: document 1 (line 1, SpiderIPPool "bad-pool"): spec.ips[0]: ...`.
    let cli_message = run.stderr.trim().trim_start_matches("Error: ");
    let (_, cli_problem) = cli_message
        .split_once("): ")
        .unwrap_or_else(|| panic!("no location in {cli_message:?}"));

    cluster.kube.create(SPIDER_POOLS, &bad);
    let path = format!("{SPIDER_POOLS}/bad-pool");
    let rejected = wait_condition(&cluster, &controller, &path, "Rejected");
    assert_eq!(rejected["status"], "False");
    let message = rejected["message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!(
            "SpiderIPPool \"bad-pool\" is invalid: {cli_problem}"
        )),
        "condition {message:?} does not carry tessera apply's {cli_problem:?}"
    );
    let events = events_about(&cluster, "bad-pool");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Warning" && e["note"] == message),
        "no Warning Event with the condition's message: {events:?}"
    );
    assert!(record(&cluster, "spiderippools", "bad-pool").is_none());

    cluster
        .kube
        .patch(&path, &json!({"spec": {"ips": ["10.61.0.10"]}}));
    wait_condition(&cluster, &controller, &path, "Synced");
    let stored = record(&cluster, "spiderippools", "bad-pool").expect("the fixed pool is stored");
    assert_eq!(stored["spec"]["ips"], json!(["10.61.0.10"]));
}

#[test]
fn tessera_refuses_to_change_a_pool_managed_in_kubernetes() {
    let Some(cluster) = Cluster::start("crds_tessera_refuses") else {
        return;
    };
    let controller = started(&cluster);
    cluster.kube.create(
        CALICO_POOLS,
        &json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                "metadata": {"name": "k8s-calico"}, "spec": {"cidr": "10.70.0.0/24"}}),
    );
    wait_condition(
        &cluster,
        &controller,
        &format!("{CALICO_POOLS}/k8s-calico"),
        "Synced",
    );
    let before = record(&cluster, "ippools", "k8s-calico").expect("the pool is stored");

    let attempts: [(&[&str], &str); 3] = [
        (
            &[
                "patch",
                "ippool",
                "k8s-calico",
                "-p",
                r#"{"spec":{"disabled":true}}"#,
            ],
            "kubectl edit ippools k8s-calico",
        ),
        (
            &["label", "ippool", "k8s-calico", "rack=a"],
            "kubectl edit ippools k8s-calico",
        ),
        (
            &["delete", "ippool", "k8s-calico"],
            "kubectl delete ippools k8s-calico",
        ),
    ];
    for (args, says) in attempts {
        let run = cluster.tessera_run(args, "");
        assert_ne!(
            run.code, 0,
            "tessera {args:?} changed a pool managed in Kubernetes"
        );
        assert!(
            run.stderr.contains(says),
            "tessera {args:?}: {}",
            run.stderr
        );
    }
    let manifest = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: \
                    k8s-calico\nspec:\n  cidr: 10.71.0.0/24\n";
    let run = cluster.tessera_run(&["apply", "-f", "-"], manifest);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("kubectl"), "{}", run.stderr);
    assert_eq!(record(&cluster, "ippools", "k8s-calico"), Some(before));
}

#[test]
fn the_controller_leaves_a_pool_made_with_tessera_alone() {
    let Some(cluster) = Cluster::start("crds_leaves_tessera_pools") else {
        return;
    };
    let controller = started(&cluster);
    cluster.apply(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: \
         shared\nspec:\n  subnet: 10.80.0.0/24\n  ips: [10.80.0.10]\n",
    );
    let before = record(&cluster, "spiderippools", "shared").unwrap();
    cluster.kube.create(
        SPIDER_POOLS,
        &spider_pool("shared", "10.80.0.0/24", &["10.80.0.20"]),
    );
    let path = format!("{SPIDER_POOLS}/shared");
    let condition = wait_condition(&cluster, &controller, &path, "ManagedWithTessera");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("tessera delete spiderippool shared"),
        "{condition}"
    );
    assert_eq!(
        record(&cluster, "spiderippools", "shared"),
        Some(before.clone())
    );

    // Deleting the Kubernetes object lets it go and leaves the pool made with tessera.
    cluster.kube.delete(&path);
    common::wait_until("the Kubernetes object is gone", FOLLOW, || {
        cluster.kube.get(&path).is_none()
    });
    assert_eq!(record(&cluster, "spiderippools", "shared"), Some(before));
}

#[test]
fn a_record_whose_kubernetes_object_vanished_is_deleted_at_the_next_pass() {
    let Some(cluster) = Cluster::start("crds_orphans") else {
        return;
    };
    let mut first = started(&cluster);
    cluster.kube.create(
        SPIDER_POOLS,
        &spider_pool("orphan", "10.90.0.0/24", &["10.90.0.10"]),
    );
    let path = format!("{SPIDER_POOLS}/orphan");
    wait_condition(&cluster, &first, &path, "Synced");
    // The finalizer removed by hand while no controller runs (a running one would put it
    // back at once): the object goes without any controller seeing it go.
    first.kill();
    cluster
        .kube
        .patch(&path, &json!({"metadata": {"finalizers": null}}));
    cluster.kube.delete(&path);
    assert!(cluster.kube.get(&path).is_none());
    let mut second = cluster.controller("b", &[]);
    second.wait_ready();
    common::wait_until("the orphaned record is deleted", FOLLOW, || {
        record(&cluster, "spiderippools", "orphan").is_none()
    });
}
