//! End to end: the real `tessera-controller`, `tessera` and `tessera-ipam` binaries against a
//! real etcd and the Kubernetes API emulator. Nodes, namespaces and pods are made through the
//! emulator only, as a cluster would; pools with `tessera apply`; pods attached with a CNI ADD.
//!
//! The controllers run with `--gc-interval 1s --leak-grace-period 3s --lease-duration 3s`, and
//! a 5 s grace period where a test times a release.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Controller};
use serde_json::json;
use tessera_kube_emulator::Options;

/// Pools of the seed scenario "pools per rack": one per rack, chosen by the node label `rack`.
const RACK_POOLS: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-0-ippool
spec:
  cidr: 192.168.0.0/24
  nodeSelector: rack == "0"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-1-ippool
spec:
  cidr: 192.168.1.0/24
  nodeSelector: rack == "1"
"#;

/// Two pools every node may use; annotations choose between them.
const POOLS_A_AND_B: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 10.10.0.0/24
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.20.0.0/24
"#;

/// One pool for everything, /26 blocks.
const ONE_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pods
spec:
  cidr: 10.30.0.0/24
  blockSize: 26
"#;

/// Longest a change in Kubernetes may take to reach the store ("within seconds").
const FOLLOW: Duration = Duration::from_secs(10);

/// The leak grace period the controllers run with.
const GRACE: Duration = Duration::from_secs(3);

/// The grace period of the tests that time releases: longer than the controller's wait after
/// a pod deletion event (2 s), so that a release too early shows.
const TIMED_GRACE: Duration = Duration::from_secs(5);

fn started(cluster: &Cluster, identity: &str) -> Controller {
    started_with(cluster, identity, &[])
}

fn started_with(cluster: &Cluster, identity: &str, extra: &[&str]) -> Controller {
    let mut controller = cluster.controller(identity, extra);
    controller.wait_ready();
    controller
}

/// A controller whose leak grace period is [`TIMED_GRACE`].
fn started_timed(cluster: &Cluster) -> Controller {
    let grace = format!("{}s", TIMED_GRACE.as_secs());
    started_with(cluster, "a", &["--leak-grace-period", &grace])
}

fn label<'a>(record: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    record["metadata"]["labels"][key].as_str()
}

fn in_pool(ip: &str, prefix: &str) -> bool {
    ip.starts_with(prefix)
}

/// Asserts that `ip` stays allocated, polling, until `until`.
fn assert_held_until(cluster: &Cluster, controller: &mut Controller, ip: &str, until: Instant) {
    while Instant::now() < until {
        controller.assert_running();
        assert!(
            cluster.in_use(ip),
            "{ip} was released too early; controller log:\n{}",
            controller.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_released(cluster: &Cluster, controller: &Controller, ip: &str, limit: Duration) {
    let start = Instant::now();
    while cluster.in_use(ip) {
        assert!(
            start.elapsed() < limit,
            "{ip} was not released within {limit:?}; controller log:\n{}",
            controller.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rack_pools_follow_node_labels_set_in_kubernetes() {
    let Some(cluster) = Cluster::start("rack_pools_follow_node_labels") else {
        return;
    };
    cluster.apply(RACK_POOLS);
    cluster.create_node("kube-node-0", json!({"rack": "0"}));
    cluster.create_node("kube-node-1", json!({"rack": "1"}));
    let controller = started(&cluster, "a");

    common::wait_until("both nodes are mirrored", FOLLOW, || {
        ["kube-node-0", "kube-node-1"]
            .iter()
            .all(|n| cluster.node_record(n).is_some())
    });
    let p0 = cluster.create_pod("default", "nginx-0", "kube-node-0", json!({}));
    let p1 = cluster.create_pod("default", "nginx-1", "kube-node-1", json!({}));
    let ip0 = cluster.attach(&p0);
    let ip1 = cluster.attach(&p1);
    assert!(
        in_pool(&ip0, "192.168.0."),
        "kube-node-0 is in rack 0, got {ip0}"
    );
    assert!(
        in_pool(&ip1, "192.168.1."),
        "kube-node-1 is in rack 1, got {ip1}"
    );

    // An admin's label, set with the CLI, lives next to the ones from Kubernetes.
    cluster.tessera(&["label", "node", "kube-node-0", "owner=ops"]);

    let moved = Instant::now();
    cluster.kube.patch(
        "/api/v1/nodes/kube-node-0",
        &json!({"metadata": {"labels": {"rack": "1"}}}),
    );
    common::wait_until("the relabel reaches the store", FOLLOW, || {
        cluster
            .node_record("kube-node-0")
            .is_some_and(|r| label(&r, "rack") == Some("1"))
    });
    eprintln!("relabel followed in {:?}", moved.elapsed());
    let p2 = cluster.create_pod("default", "nginx-2", "kube-node-0", json!({}));
    let ip2 = cluster.attach(&p2);
    assert!(
        in_pool(&ip2, "192.168.1."),
        "kube-node-0 moved to rack 1, got {ip2}"
    );

    let record = cluster.node_record("kube-node-0").unwrap();
    assert_eq!(label(&record, "owner"), Some("ops"), "{record}");

    // A label removed in Kubernetes goes; the admin's stays.
    cluster.kube.patch(
        "/api/v1/nodes/kube-node-0",
        &json!({"metadata": {"labels": {"rack": null}}}),
    );
    common::wait_until("the removed label leaves the store", FOLLOW, || {
        cluster
            .node_record("kube-node-0")
            .is_some_and(|r| label(&r, "rack").is_none())
    });
    let record = cluster.node_record("kube-node-0").unwrap();
    assert_eq!(label(&record, "owner"), Some("ops"), "{record}");
    for ip in [&ip0, &ip1, &ip2] {
        assert!(cluster.in_use(ip), "{ip} of a live pod");
    }
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn namespace_annotation_set_in_kubernetes_picks_the_pool() {
    let Some(cluster) = Cluster::start("namespace_annotation_picks_pool") else {
        return;
    };
    cluster.apply(POOLS_A_AND_B);
    cluster.create_node("n1", json!({}));
    let annotation = "cni.projectcalico.org/ipv4pools";
    cluster.create_namespace("blue", json!({}), json!({annotation: "[\"pool-b\"]"}));
    let controller = started(&cluster, "a");

    common::wait_until("the namespace annotation is mirrored", FOLLOW, || {
        cluster
            .namespace_record("blue")
            .is_some_and(|r| r["metadata"]["annotations"][annotation] == "[\"pool-b\"]")
    });
    let first = cluster.create_pod("blue", "web-1", "n1", json!({}));
    let ip = cluster.attach(&first);
    assert!(
        in_pool(&ip, "10.20.0."),
        "namespace blue asks for pool-b, got {ip}"
    );

    cluster.kube.patch(
        "/api/v1/namespaces/blue",
        &json!({"metadata": {"annotations": {annotation: "[\"pool-a\"]"}}}),
    );
    common::wait_until("the changed annotation is mirrored", FOLLOW, || {
        cluster
            .namespace_record("blue")
            .is_some_and(|r| r["metadata"]["annotations"][annotation] == "[\"pool-a\"]")
    });
    let second = cluster.create_pod("blue", "web-2", "n1", json!({}));
    let ip2 = cluster.attach(&second);
    assert!(
        in_pool(&ip2, "10.10.0."),
        "namespace blue now asks for pool-a, got {ip2}"
    );
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn a_deleted_node_gives_back_its_pods_addresses_and_blocks_but_not_hand_made_ones() {
    let Some(cluster) = Cluster::start("deleted_node") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.apply(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: manual\nspec:\n  \
         cidr: 10.31.0.0/24\n  assignmentMode: Manual\n",
    );
    cluster.create_node("n1", json!({}));
    cluster.create_node("n2", json!({}));
    let controller = started(&cluster, "a");
    common::wait_until("both nodes are mirrored", FOLLOW, || {
        cluster.node_record("n1").is_some() && cluster.node_record("n2").is_some()
    });

    let on_n1: Vec<_> = (0..2)
        .map(|i| cluster.create_pod("default", &format!("a-{i}"), "n1", json!({})))
        .collect();
    let ips_n1: Vec<String> = on_n1.iter().map(|p| cluster.attach(p)).collect();
    let survivor = cluster.create_pod("default", "b-0", "n2", json!({}));
    let ip_n2 = cluster.attach(&survivor);
    let manual = cluster.tessera(&[
        "ipam", "assign", "--node", "n1", "--handle", "manual-1", "--pool", "manual",
    ]);
    let manual = manual.trim().to_string();
    let blocks_before = cluster.tessera(&["ipam", "show", "--show-blocks"]);
    assert!(blocks_before.contains("10.30.0.0/26"), "{blocks_before}");

    cluster.kube.delete("/api/v1/nodes/n1");
    for ip in &ips_n1 {
        wait_released(&cluster, &controller, ip, FOLLOW);
    }
    common::wait_until("the node record is deleted", FOLLOW, || {
        cluster.node_record("n1").is_none()
    });
    let blocks = cluster.tessera(&["ipam", "show", "--show-blocks"]);
    assert!(
        !blocks.contains("10.30.0.0/26"),
        "n1's empty block is freed:\n{blocks}"
    );
    assert!(
        cluster.in_use(&manual),
        "a hand-made handle is never collected"
    );
    assert_eq!(cluster.holder(&manual).as_deref(), Some("manual-1"));
    assert!(
        cluster.in_use(&ip_n2),
        "a pod on another node keeps its address"
    );
    assert!(cluster.node_record("n2").is_some());

    // A node that comes back under the same name starts clean.
    cluster.create_node("n1", json!({"rack": "new"}));
    common::wait_until("the returning node is mirrored", FOLLOW, || {
        cluster
            .node_record("n1")
            .is_some_and(|r| label(&r, "rack") == Some("new"))
    });
    let back = cluster.create_pod("default", "a-back", "n1", json!({}));
    let ip_back = cluster.attach(&back);
    assert!(in_pool(&ip_back, "10.30.0."), "{ip_back}");
    assert_eq!(cluster.holder(&ip_back), Some(back.handle()));
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn a_pod_deleted_without_cni_del_is_collected_after_the_grace_period_and_never_before() {
    let Some(cluster) = Cluster::start("pod_deleted_without_del") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    let mut controller = started_timed(&cluster);
    let pod = cluster.create_pod("default", "lost", "n1", json!({}));
    let ip = cluster.attach(&pod);
    let neighbour = cluster.create_pod("default", "kept", "n1", json!({}));
    let neighbour_ip = cluster.attach(&neighbour);

    let deleted = Instant::now();
    cluster.kube.delete(&pod.path());
    // Held while the grace period runs (a little margin for the polling itself).
    assert_held_until(
        &cluster,
        &mut controller,
        &ip,
        deleted + TIMED_GRACE - Duration::from_millis(300),
    );
    wait_released(&cluster, &controller, &ip, TIMED_GRACE + FOLLOW);
    assert!(
        deleted.elapsed() >= TIMED_GRACE,
        "released after {:?}",
        deleted.elapsed()
    );
    assert!(
        cluster.in_use(&neighbour_ip),
        "the live neighbour keeps its address"
    );
    assert!(
        controller.log().contains(&pod.handle()),
        "the release is logged with the handle:\n{}",
        controller.log_tail()
    );
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn a_restarted_controller_frees_no_live_address() {
    let Some(cluster) = Cluster::start("restarted_controller") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    cluster.create_node("n2", json!({}));
    let mut first = started(&cluster, "a");
    let mut pods: Vec<_> = (0..3)
        .map(|i| {
            cluster.create_pod(
                "default",
                &format!("p-{i}"),
                &format!("n{}", 1 + i % 2),
                json!({}),
            )
        })
        .collect();
    let mut ips: Vec<String> = pods.iter().map(|p| cluster.attach(p)).collect();
    std::thread::sleep(Duration::from_secs(2));
    first.kill();

    // Pods come while no controller runs; one of them lands on a node the store has not
    // seen yet.
    cluster.create_node("n3", json!({}));
    for (i, node) in [(3, "n2"), (4, "n3")] {
        let pod = cluster.create_pod("default", &format!("p-{i}"), node, json!({}));
        ips.push(cluster.attach(&pod));
        pods.push(pod);
    }
    let mut second = started(&cluster, "b");
    // Past the lease of the killed one, the grace period and several passes.
    let until = Instant::now() + Duration::from_secs(3) + GRACE + Duration::from_secs(4);
    for ip in &ips {
        assert!(cluster.in_use(ip), "{ip} after the restart");
    }
    while Instant::now() < until {
        for ip in &ips {
            assert!(
                cluster.in_use(ip),
                "{ip} of a live pod was freed:\n{}",
                second.log_tail()
            );
        }
        second.assert_running();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        second.metric("tessera_controller_leader"),
        Some(1.0),
        "{}",
        second.metrics()
    );
    assert!(
        cluster.node_record("n3").is_some(),
        "a node added while down is synced at start"
    );
    drop(second);
    cluster.assert_check_clean();
}

#[test]
fn a_statefulset_pod_recreated_with_a_new_uid_keeps_only_its_new_address() {
    let Some(cluster) = Cluster::start("statefulset_pod_recreated") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    let mut controller = started_timed(&cluster);
    let owner = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": "web", "uid": "5e7c0000-0000-4000-8000-000000000001", "controller": true}]});
    let old = cluster.create_pod("default", "web-0", "n1", owner.clone());
    let old_ip = cluster.attach(&old);

    // The node restarts: the runtime never ran DEL; the StatefulSet controller makes web-0
    // again, same name and node, new UID, new sandbox.
    cluster.kube.delete(&old.path());
    let new = cluster.create_pod("default", "web-0", "n1", owner);
    assert_ne!(new.uid, old.uid);
    let new_ip = cluster.attach(&new);
    let recreated = Instant::now();

    wait_released(&cluster, &controller, &old_ip, TIMED_GRACE + FOLLOW);
    assert!(recreated.elapsed() >= TIMED_GRACE - Duration::from_millis(500));
    assert_held_until(
        &cluster,
        &mut controller,
        &new_ip,
        Instant::now() + TIMED_GRACE + Duration::from_secs(2),
    );
    assert_eq!(cluster.holder(&new_ip), Some(new.handle()));
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn a_terminating_pod_keeps_its_address_until_its_deletion_time_plus_grace() {
    let Some(cluster) = Cluster::start("terminating_pod") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    let mut controller = started(&cluster, "a");
    let pod = cluster.create_pod("default", "slow", "n1", json!({}));
    let ip = cluster.attach(&pod);

    // Terminating for 4 s: deletionTimestamp = now + 4 s, deletionGracePeriodSeconds = 4.
    let deleting = Instant::now();
    let terminating = cluster.kube.delete_with_grace(&pod.path(), 4);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    // deletionTimestamp has whole seconds, so it may be up to 1 s before now + 4 s.
    let keep_until = deleting + Duration::from_secs(3 + 4);
    assert_held_until(&cluster, &mut controller, &ip, keep_until);
    wait_released(&cluster, &controller, &ip, TIMED_GRACE + FOLLOW);
    drop(controller);
    cluster.assert_check_clean();
}

#[test]
fn metrics_readiness_and_a_standby_replica() {
    let Some(cluster) = Cluster::start("metrics_and_standby") else {
        return;
    };
    cluster.apply(ONE_POOL);
    cluster.create_node("n1", json!({}));
    let mut leader = cluster.controller("a", &[]);
    leader.wait_ready();
    let pods: Vec<_> = (0..2)
        .map(|i| cluster.create_pod("default", &format!("m-{i}"), "n1", json!({})))
        .collect();
    let ips: Vec<String> = pods.iter().map(|p| cluster.attach(p)).collect();

    let pool = |name: &str| format!("{name}{{pool=\"pods\"}}");
    common::wait_until("the pool gauges count both pods", FOLLOW, || {
        leader.metric(&pool("tessera_pool_addresses_in_use")) == Some(2.0)
    });
    let text = leader.metrics();
    assert_eq!(
        leader.metric(&pool("tessera_pool_size")),
        Some(256.0),
        "{text}"
    );
    assert_eq!(
        leader.metric(&pool("tessera_pool_blocks")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(leader.metric("tessera_gc_candidates"), Some(0.0), "{text}");
    assert_eq!(
        leader.metric("tessera_controller_leader"),
        Some(1.0),
        "{text}"
    );
    for family in ["tessera_gc_releases", "tessera_sync_errors"] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    assert_eq!(leader.http_get("/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(leader.http_get("/nope").map(|(s, _)| s), Some(404));

    // A second replica with the same lease waits.
    let mut standby = cluster.controller("b", &[]);
    common::wait_until("the standby serves /healthz", FOLLOW, || {
        standby.http_get("/healthz").is_some_and(|(s, _)| s == 200)
    });
    std::thread::sleep(Duration::from_secs(4));
    standby.assert_running();
    assert_eq!(
        standby.metric("tessera_controller_leader"),
        Some(0.0),
        "{}",
        standby.metrics()
    );

    // A pod deleted without DEL: a candidate first, then one release counted.
    cluster.kube.delete(&pods[0].path());
    common::wait_until("the leaked handle is a candidate", FOLLOW, || {
        leader.metric("tessera_gc_candidates") == Some(1.0)
    });
    wait_released(&cluster, &leader, &ips[0], GRACE + FOLLOW);
    common::wait_until("the release is counted", FOLLOW, || {
        leader.metric("tessera_gc_releases_total{reason=\"pod_gone\"}") == Some(1.0)
            && leader.metric(&pool("tessera_pool_addresses_in_use")) == Some(1.0)
            && leader.metric("tessera_gc_candidates") == Some(0.0)
    });
    let standby_releases = standby.metric("tessera_gc_releases_total{reason=\"pod_gone\"}");
    assert_eq!(
        standby_releases.unwrap_or(0.0),
        0.0,
        "the standby released nothing"
    );
    assert!(
        !standby.log().contains(&pods[0].handle()),
        "the standby acted:\n{}",
        standby.log_tail()
    );

    // The leader goes away without a word; the standby takes over once the lease expires.
    leader.kill();
    common::wait_until("the standby leads", Duration::from_secs(20), || {
        standby.metric("tessera_controller_leader") == Some(1.0)
    });
    standby.wait_ready();
    assert!(cluster.in_use(&ips[1]));
    drop(standby);
    cluster.assert_check_clean();
}

#[test]
fn the_cni_plugin_reads_pod_annotations_from_the_api_and_fails_cleanly_without_it() {
    let Some(mut cluster) = Cluster::start("cni_kubernetes_section") else {
        return;
    };
    cluster.apply(POOLS_A_AND_B);
    let annotated = cluster.create_pod(
        "default",
        "picky",
        "n1",
        json!({"annotations": {"cni.projectcalico.org/ipv4pools": "[\"pool-b\"]"}}),
    );
    let kubeconfig = cluster.kubeconfig().to_str().unwrap().to_string();
    let mut conf = cluster.cni_conf("n1", json!({}));
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    let ip = cluster.attach_with(&annotated, &conf);
    assert!(
        in_pool(&ip, "10.20.0."),
        "the pod's annotation asks for pool-b, got {ip}"
    );

    let allocated_before = allocated(&cluster);
    let orphan = cluster.create_pod("default", "unlucky", "n1", json!({}));
    cluster.kube.stop();
    let started = Instant::now();
    let run = cluster.cni_add_run(&orphan, &conf);
    assert_ne!(
        run.code, 0,
        "ADD must fail without the API server: {}",
        run.stdout
    );
    let error: serde_json::Value = serde_json::from_str(&run.stdout).expect("a CNI error");
    let message = format!("{} {}", error["msg"], error["details"]);
    assert!(
        message.contains(&cluster.kube.url().replace("http://", ""))
            || message.contains("127.0.0.1"),
        "the error names the API server: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        allocated(&cluster),
        allocated_before,
        "nothing is allocated"
    );
    cluster.assert_check_clean();
}

#[test]
fn the_cni_plugin_reads_the_api_over_https_with_a_bearer_token() {
    let certificates = tempfile::tempdir().expect("temporary directory");
    let (ca, cert, key) = common::make_certificates(certificates.path());
    let options = Options {
        token: Some("node-token".into()),
        tls: Some((cert, key)),
    };
    let Some(cluster) = Cluster::start_with("cni_kubernetes_https", &options) else {
        return;
    };
    cluster.apply(POOLS_A_AND_B);
    let pod = cluster.create_pod(
        "default",
        "secure",
        "n1",
        json!({"annotations": {"cni.projectcalico.org/ipv4pools": "[\"pool-b\"]"}}),
    );
    let kubeconfig = cluster.dir().join("https-kubeconfig");
    cluster
        .kube
        .write_https_kubeconfig(&kubeconfig, &ca)
        .unwrap();
    let mut conf = cluster.cni_conf("n1", json!({}));
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    let ip = cluster.attach_with(&pod, &conf);
    assert!(
        in_pool(&ip, "10.20.0."),
        "the pod's annotation asks for pool-b, got {ip}"
    );

    // A token the API server refuses: ADD fails and says so; nothing is allocated.
    let refused = cluster.dir().join("refused-kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    std::fs::write(&refused, text.replace("node-token", "stale-token")).unwrap();
    conf["kubernetes"] = json!({"kubeconfig": refused});
    let before = allocated(&cluster);
    let other = cluster.create_pod("default", "refused", "n1", json!({}));
    let run = cluster.cni_add_run(&other, &conf);
    assert_ne!(
        run.code, 0,
        "ADD with a refused token must fail: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("401") || run.stdout.to_lowercase().contains("unauthorized"),
        "the error says the API server refused the credentials: {}",
        run.stdout
    );
    assert_eq!(allocated(&cluster), before, "nothing is allocated");
    cluster.assert_check_clean();
}

/// "Found N allocated addresses." of `tessera ipam check`.
fn allocated(cluster: &Cluster) -> usize {
    let report = cluster.tessera_run(&["ipam", "check"], "").stdout;
    report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Found ")?
                .strip_suffix(" allocated addresses.")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no address count in:\n{report}"))
}
