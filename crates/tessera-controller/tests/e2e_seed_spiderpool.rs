//! End to end: the Spiderpool fixed-address scenarios of the project's seed, set up through
//! Kubernetes objects only (no `tessera apply`). The real `tessera-controller`, `tessera` and
//! `tessera-ipam` binaries against a real etcd and the Kubernetes API emulator.
//!
//! The emulator runs no workload controllers: the test plays kube-controller-manager (it
//! makes each Deployment's ReplicaSet and pods) and the kubelet (it runs the plugin's ADD and
//! DEL, the plugin reading each pod from the emulator through its `kubernetes` section).
//! `tessera` only reads.

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, Controller, Pod, NETWORK};
use serde_json::{json, Value};
use tessera_core::ranges::IpRangeSet;

/// Longest a change in Kubernetes may take to reach the datastore or a status.
const FOLLOW: Duration = Duration::from_secs(30);

const SUBNETS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spidersubnets";
const POOLS: &str = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const REPLICASETS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const STATEFULSETS: &str = "/apis/apps/v1/namespaces/default/statefulsets";

/// The seed's nodes.
const NODES: [&str; 2] = ["worker5", "master1"];

/// The seed's subnet, its `ips` cut down to the range the auto pool takes and the range of
/// the pool named by hand (a pool of a SpiderSubnet's CIDR lies inside the subnet's `ips`).
fn nginx_subnet() -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": "nginx-subnet-v4"},
        "spec": {
            "ipVersion": 4,
            "subnet": "10.244.0.0/16",
            "ips": ["10.244.100.90-10.244.100.99", "10.244.120.10-10.244.120.20"],
        },
    })
}

/// The seed's pool named by hand.
fn nginx_pool() -> Value {
    json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": "nginx-v4-ippool"},
        "spec": {"ipVersion": 4, "subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"]},
    })
}

/// The pod template annotations of Deployment `nginx`: an auto pool of replicas + 3.
fn auto_pool_annotations() -> Value {
    json!({
        "ipam.spidernet.io/subnet": r#"{"ipv4":["nginx-subnet-v4"]}"#,
        "ipam.spidernet.io/ippool-ip-number": "+3",
    })
}

/// Pod annotations naming the pool `nginx-v4-ippool`.
fn named_pool_annotations() -> Value {
    json!({"ipam.spidernet.io/ippool": r#"{"ipv4":["nginx-v4-ippool"]}"#})
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

/// A Deployment and the one ReplicaSet the Deployment controller makes of it.
struct Deployment {
    name: String,
    uid: String,
    replica_set: String,
    replica_set_uid: String,
    annotations: Value,
    /// The running pods.
    pods: Vec<Pod>,
    /// How many pods were ever started (the next pod's name suffix).
    started: usize,
}

impl Deployment {
    /// Creates Deployment `name` (`kubectl create`) and its ReplicaSet `<name>-<hash>`.
    fn create(cluster: &Cluster, name: &str, replicas: u32, annotations: Value) -> Self {
        let spec = |metadata: Value| {
            json!({
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": metadata,
                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}
                }
            })
        };
        let template = json!({"labels": {"app": name}, "annotations": annotations});
        let deployment = cluster.kube.create(
            DEPLOYMENTS,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": spec(template.clone())}),
        );
        let uid = uid_of(&deployment);
        let replica_set = format!("{name}-644659db67");
        let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                            "uid": uid, "controller": true}]);
        let created = cluster.kube.create(
            REPLICASETS,
            &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": replica_set, "namespace": "default",
                                 "ownerReferences": owner},
                    "spec": spec(template)}),
        );
        Self {
            name: name.into(),
            uid,
            replica_set_uid: uid_of(&created),
            replica_set,
            annotations,
            pods: Vec::new(),
            started: 0,
        }
    }

    /// Creates the next pod of the ReplicaSet, alternating between the nodes, and ADDs it;
    /// returns its address.
    fn start_pod(&mut self, cluster: &Cluster) -> String {
        let index = self.started;
        self.started += 1;
        let pod = cluster.create_pod(
            "default",
            &format!("{}-{index}", self.replica_set),
            NODES[index % NODES.len()],
            json!({
                "labels": {"app": self.name, "pod-template-hash": "644659db67"},
                "annotations": self.annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": self.replica_set, "uid": self.replica_set_uid, "controller": true}]
            }),
        );
        let ip = cluster.attach_with(&pod, &kubelet_conf(cluster, &pod.node));
        self.pods.push(pod);
        ip
    }

    /// Deletes pod `index` (`kubectl delete pod`) and runs its DEL, as the kubelet does.
    fn stop_pod(&mut self, cluster: &Cluster, index: usize) {
        let pod = self.pods.remove(index);
        cluster.kube.delete(&pod.path());
        cluster.detach_with(&pod, &kubelet_conf(cluster, &pod.node));
    }

    /// `kubectl scale deploy`: the Deployment, then its ReplicaSet.
    fn scale(&self, cluster: &Cluster, replicas: u32) {
        let patch = json!({"spec": {"replicas": replicas}});
        cluster
            .kube
            .patch(&format!("{DEPLOYMENTS}/{}", self.name), &patch);
        cluster
            .kube
            .patch(&format!("{REPLICASETS}/{}", self.replica_set), &patch);
    }

    /// The name of its auto pool: `auto4-<name>-eth0-<uid part>`.
    fn auto_pool(&self) -> String {
        let tail = self.uid.rsplit('-').next().expect("a uid");
        format!("auto4-{}-eth0-{}", self.name, &tail[..5])
    }
}

/// The network configuration on `node`, with a `kubernetes` section.
fn kubelet_conf(cluster: &Cluster, node: &str) -> Value {
    let mut conf = cluster.cni_conf(node, json!({}));
    let kubeconfig = cluster.kubeconfig().to_str().expect("a UTF-8 path");
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    conf
}

/// The datastore's record of `kind` `name` (`tessera get KIND NAME -o json`), if any.
fn record(cluster: &Cluster, kind: &str, name: &str) -> Option<Value> {
    let run = cluster.tessera_run(&["get", kind, name, "-o", "json"], "");
    (run.code == 0).then(|| serde_json::from_str(&run.stdout).expect("JSON"))
}

/// The addresses of SpiderIPPool `name`, if it exists.
fn pool_addresses(cluster: &Cluster, name: &str) -> Option<IpRangeSet> {
    let pool = record(cluster, "sp", name)?;
    let ips: Vec<String> = serde_json::from_value(pool["spec"]["ips"].clone()).expect("ips");
    Some(IpRangeSet::parse(&ips, false).expect("addresses"))
}

fn assert_in_pool(cluster: &Cluster, pool: &str, ip: &str) {
    let addresses = pool_addresses(cluster, pool).unwrap_or_else(|| panic!("no pool {pool}"));
    assert!(
        addresses.contains(ip.parse().expect("an address")),
        "{ip} lies outside {pool}"
    );
}

/// The row of `name` in `tessera get sp`, Spiderpool's `kubectl get sp` columns.
fn listed_row(cluster: &Cluster, name: &str) -> Vec<String> {
    let listing = cluster.tessera(&["get", "sp"]);
    let row = listing
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .find(|columns| columns.first().is_some_and(|first| first == name));
    row.unwrap_or_else(|| panic!("no row {name} in:\n{listing}"))
}

/// Waits until `get sp` lists `name` with `allocated` of `total` addresses.
fn wait_for_counts(cluster: &Cluster, name: &str, allocated: u32, total: u32) {
    let expected = [
        name.to_string(),
        "4".into(),
        "10.244.0.0/16".into(),
        allocated.to_string(),
        total.to_string(),
        "false".into(),
    ];
    let mut last = Vec::new();
    let what = format!("get sp to list {name} with {allocated} of {total} allocated");
    wait_until(&what, FOLLOW, || {
        last = pool_addresses(cluster, name)
            .map(|_| listed_row(cluster, name))
            .unwrap_or_default();
        last == expected
    });
}

fn started(cluster: &Cluster) -> Controller {
    let mut controller = cluster.controller("a", &[]);
    controller.wait_ready();
    controller
}

/// Seed step 1: the SpiderSubnet, created through the API, reaches the datastore.
fn create_subnet(cluster: &Cluster) {
    cluster.kube.create(SUBNETS, &nginx_subnet());
    wait_until("the SpiderSubnet to be mirrored", FOLLOW, || {
        record(cluster, "ss", "nginx-subnet-v4").is_some()
    });
    let listing = cluster.tessera(&["get", "ss"]);
    let row = ["nginx-subnet-v4", "4", "10.244.0.0/16", "0", "21"];
    assert!(
        listing.lines().any(|l| l.split_whitespace().eq(row)),
        "{listing}"
    );
}

/// Seed step 2: Deployment nginx gets an auto pool of replicas + 3 that follows a scale up;
/// a pod restarted gets an address of it again.
fn auto_pool_for_a_deployment(cluster: &Cluster) {
    let mut nginx = Deployment::create(cluster, "nginx", 2, auto_pool_annotations());
    let pool = nginx.auto_pool();
    wait_until(&format!("the auto pool {pool}"), FOLLOW, || {
        pool_addresses(cluster, &pool).is_some_and(|a| a.len() == 5)
    });
    let spec = record(cluster, "sp", &pool).expect("the auto pool")["spec"]["ips"].clone();
    assert_eq!(spec, json!(["10.244.100.90-10.244.100.94"]));
    for _ in 0..2 {
        let ip = nginx.start_pod(cluster);
        assert_in_pool(cluster, &pool, &ip);
    }
    wait_for_counts(cluster, &pool, 2, 5);

    // A pod restarted: the ReplicaSet replaces it, the new pod's address is of the pool.
    nginx.stop_pod(cluster, 0);
    let ip = nginx.start_pod(cluster);
    assert_in_pool(cluster, &pool, &ip);
    wait_for_counts(cluster, &pool, 2, 5);

    // `kubectl scale deploy nginx --replicas 3`.
    nginx.scale(cluster, 3);
    wait_until(&format!("{pool} to grow to 6"), FOLLOW, || {
        pool_addresses(cluster, &pool).is_some_and(|a| a.len() == 6)
    });
    let ip = nginx.start_pod(cluster);
    assert_in_pool(cluster, &pool, &ip);
    wait_for_counts(cluster, &pool, 3, 6);
}

/// Seed step 3: the SpiderIPPool applied with kubectl, named by Deployment nginx-m's pods;
/// `get sp` and the object's status count them.
fn pool_named_by_hand(cluster: &Cluster) {
    cluster.kube.create(POOLS, &nginx_pool());
    wait_until("the SpiderIPPool to be mirrored", FOLLOW, || {
        record(cluster, "sp", "nginx-v4-ippool").is_some()
    });
    let mut nginx_m = Deployment::create(cluster, "nginx-m", 2, named_pool_annotations());
    for _ in 0..2 {
        let ip = nginx_m.start_pod(cluster);
        assert_in_pool(cluster, "nginx-v4-ippool", &ip);
    }
    wait_for_counts(cluster, "nginx-v4-ippool", 2, 11);
    let path = format!("{POOLS}/nginx-v4-ippool");
    wait_until("the SpiderIPPool's status to count 2 of 11", FOLLOW, || {
        let status = &cluster.kube.get(&path).expect("the SpiderIPPool")["status"];
        status["allocatedIPCount"] == 2 && status["totalIPCount"] == 11
    });
}

/// Seed step 4 (a StatefulSet naming the pool): web-0 deleted on one node and created again
/// with a new UID on the other gets its address back, which web-1 did not take meanwhile.
fn statefulset_keeps_its_address(cluster: &Cluster) {
    let statefulset = cluster.kube.create(
        STATEFULSETS,
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 2, "serviceName": "web",
                         "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"},
                                                   "annotations": named_pool_annotations()},
                                      "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}}),
    );
    let web_pod = |name: &str, node: &str| {
        let metadata = json!({
            "labels": {"app": "web"},
            "annotations": named_pool_annotations(),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                                 "uid": uid_of(&statefulset), "controller": true}]
        });
        cluster.create_pod("default", name, node, metadata)
    };
    let first = web_pod("web-0", NODES[0]);
    let ip = cluster.attach_with(&first, &kubelet_conf(cluster, NODES[0]));
    assert_in_pool(cluster, "nginx-v4-ippool", &ip);

    // While web-0 is away its address stays held for its name: web-1, started meanwhile,
    // gets another one.
    cluster.kube.delete(&first.path());
    cluster.detach_with(&first, &kubelet_conf(cluster, NODES[0]));
    assert_eq!(
        cluster.holder(&ip),
        Some(format!("{NETWORK}:default/web-0:eth0"))
    );
    let web1 = web_pod("web-1", NODES[1]);
    let web1_ip = cluster.attach_with(&web1, &kubelet_conf(cluster, NODES[1]));
    assert_in_pool(cluster, "nginx-v4-ippool", &web1_ip);
    assert_ne!(web1_ip, ip);

    let again = web_pod("web-0", NODES[1]);
    assert_ne!(again.uid, first.uid);
    assert_eq!(
        cluster.attach_with(&again, &kubelet_conf(cluster, NODES[1])),
        ip
    );
}

#[test]
fn the_seeds_spiderpool_scenarios_work_through_kubernetes_objects_alone() {
    let Some(cluster) = Cluster::start("seed_spiderpool") else {
        return;
    };
    for node in NODES {
        cluster.create_node(node, json!({}));
    }
    let controller = started(&cluster);
    create_subnet(&cluster);
    auto_pool_for_a_deployment(&cluster);
    pool_named_by_hand(&cluster);
    statefulset_keeps_its_address(&cluster);
    drop(controller);
    cluster.assert_check_clean();
}
