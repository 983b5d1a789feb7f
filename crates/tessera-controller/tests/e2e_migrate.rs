//! End to end: seed 002's "Migrate IPPool" and "Change BlockSize", each one
//! `tessera ipam migrate` command that the test interrupts half-way and runs again, with the
//! real `tessera-controller` restarting the workloads. Real etcd, the Kubernetes API emulator,
//! the real `tessera`, `tessera-ipam` and `tessera-controller` binaries.
//!
//! The emulator runs no workload controllers: a test kubelet thread watches the Deployment,
//! StatefulSet and DaemonSet and, when a pod template's `restartedAt` changes, replaces their
//! pods one at a time as a rolling update does (the new pod made and attached with the
//! plugin's ADD, the old one detached with DEL and deleted; a StatefulSet pod deleted first,
//! its name being reused), then writes the workload's status so that it reads as ready.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Controller, Pod};
use ipnet::IpNet;
use serde_json::{json, Value};
use tessera_core::drain::{DrainStatus, DRAIN_STATUS_ANNOTATION};

/// The namespace of the workloads.
const NS: &str = "shop";
/// The cluster's nodes.
const NODES: [&str; 2] = ["n1", "n2"];
/// The pool the workloads start on, as seed 002 names it.
const SOURCE: &str = "default-ipv4-ippool";
const SOURCE_CIDR: &str = "10.244.0.0/24";
/// Longest one step of a migration may take (a rollout, a controller taking over).
const STEP: Duration = Duration::from_secs(60);
/// The pod template annotation `kubectl rollout restart` sets.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

fn source_pool() -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {SOURCE}\n\
         spec:\n  cidr: {SOURCE_CIDR}\n  blockSize: 26\n"
    )
}

/// Seed 002's new pool, made disabled: the workloads start on the source, and the migration
/// enables it.
const NEW_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: new-pool
spec:
  cidr: 192.168.0.0/24
  blockSize: 26
  disabled: true
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }
}

/// A workload and the pods the test kubelet runs for it.
struct Workload {
    kind: Kind,
    name: String,
    uid: String,
    pods: Vec<Pod>,
    /// Rollouts done (the first pods count as rollout 1).
    rollout: usize,
    /// The `restartedAt` seen last.
    restarted_at: Option<String>,
}

impl Workload {
    fn path(&self) -> String {
        format!(
            "/apis/apps/v1/namespaces/{NS}/{}/{}",
            self.kind.plural(),
            self.name
        )
    }

    fn owner(&self, kind: &str, name: &str, uid: &str) -> Value {
        json!({"labels": {"app": self.name},
               "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                                    "uid": uid, "controller": true}]})
    }

    /// The name and owner of pod `index` (on `node`) of rollout `self.rollout`.
    fn pod_spec(&self, index: usize, node: &str) -> (String, Value) {
        match self.kind {
            Kind::Deployment => {
                let set = format!("{}-{}", self.name, self.rollout);
                let owner = self.owner("ReplicaSet", &set, &format!("rs-{set}"));
                (format!("{set}-{index}"), owner)
            }
            Kind::StatefulSet => (
                format!("{}-{index}", self.name),
                self.owner("StatefulSet", &self.name, &self.uid),
            ),
            Kind::DaemonSet => (
                format!("{}-{}-{node}", self.name, self.rollout),
                self.owner("DaemonSet", &self.name, &self.uid),
            ),
        }
    }
}

/// What the test kubelet saw, shared with the test.
#[derive(Debug, Default)]
struct Log {
    /// Restarts seen per workload.
    restarts: BTreeMap<String, usize>,
    /// Workloads restarted while another one was still rolling out.
    overlaps: Vec<String>,
    /// Whatever went wrong in the kubelet thread.
    failures: Vec<String>,
    /// (rollout, pod, address) of every pod attached.
    addresses: Vec<(usize, String, String)>,
}

/// The test's kubelet and workload controllers.
struct Kubelet<'a> {
    cluster: &'a Cluster,
    workloads: Vec<Workload>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

impl Kubelet<'_> {
    /// Follows the restarts until told to stop (at most 10 minutes).
    fn run(mut self) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for i in 0..self.workloads.len() {
                let now = self.restarted_at(i);
                if now != self.workloads[i].restarted_at {
                    if let Err(e) = self.roll_out(i, now) {
                        self.log.lock().unwrap().failures.push(e);
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn restarted_at(&self, i: usize) -> Option<String> {
        let object = self.cluster.kube.get(&self.workloads[i].path())?;
        let annotations = &object["spec"]["template"]["metadata"]["annotations"];
        annotations[RESTARTED_AT].as_str().map(str::to_string)
    }

    /// Replaces the pods of workload `i` one at a time, then marks it ready.
    fn roll_out(&mut self, i: usize, restarted_at: Option<String>) -> Result<(), String> {
        let name = self.workloads[i].name.clone();
        *self.log.lock().unwrap().restarts.entry(name).or_default() += 1;
        self.workloads[i].restarted_at = restarted_at;
        self.workloads[i].rollout += 1;
        if self.workloads[i].kind == Kind::Deployment {
            create_replica_set(self.cluster, &self.workloads[i]);
        }
        for index in 0..self.workloads[i].pods.len() {
            self.replace(i, index)?;
            // A rollout takes a while: long enough for a controller pass to see it.
            std::thread::sleep(Duration::from_millis(700));
            self.check_no_other_restart(i);
        }
        mark_ready(self.cluster, &self.workloads[i]);
        Ok(())
    }

    /// Replaces pod `index` of workload `i` by one of the current rollout on the same node.
    fn replace(&mut self, i: usize, index: usize) -> Result<(), String> {
        let old = self.workloads[i].pods[index].clone();
        let reuses_name = self.workloads[i].kind == Kind::StatefulSet;
        if reuses_name {
            self.remove(&old)?;
        }
        let (name, owner) = self.workloads[i].pod_spec(index, &old.node);
        let new = self.cluster.create_pod(NS, &name, &old.node, owner);
        let ip = attach(self.cluster, &new)?;
        let rollout = self.workloads[i].rollout;
        self.log
            .lock()
            .unwrap()
            .addresses
            .push((rollout, name.clone(), ip));
        if !reuses_name {
            self.remove(&old)?;
        }
        self.workloads[i].pods[index] = new;
        Ok(())
    }

    /// DEL for `pod`, then its deletion.
    fn remove(&self, pod: &Pod) -> Result<(), String> {
        let conf = plugin_conf(self.cluster, &pod.node);
        let run = self.cluster.cni_del_run(pod, &conf);
        if run.code != 0 {
            return Err(format!("DEL of {}: {}{}", pod.name, run.stdout, run.stderr));
        }
        self.cluster.kube.delete(&pod.path());
        Ok(())
    }

    fn check_no_other_restart(&self, i: usize) {
        for j in (0..self.workloads.len()).filter(|j| *j != i) {
            if self.restarted_at(j) != self.workloads[j].restarted_at {
                let overlap = format!(
                    "{} restarted while {} was rolling out",
                    self.workloads[j].name, self.workloads[i].name
                );
                self.log.lock().unwrap().overlaps.push(overlap);
            }
        }
    }
}

/// The plugin's configuration on `node`, reading pods from the emulator (a StatefulSet pod's
/// addresses are then held for its name).
fn plugin_conf(cluster: &Cluster, node: &str) -> Value {
    let mut conf = cluster.cni_conf(node, json!({}));
    let kubeconfig = cluster.kubeconfig().to_str().unwrap().to_string();
    conf["kubernetes"] = json!({"kubeconfig": kubeconfig});
    conf
}

/// ADD for `pod`; its address.
fn attach(cluster: &Cluster, pod: &Pod) -> Result<String, String> {
    let run = cluster.cni_add_run(pod, &plugin_conf(cluster, &pod.node));
    if run.code != 0 {
        return Err(format!("ADD of {}: {}{}", pod.name, run.stdout, run.stderr));
    }
    let result: Value = serde_json::from_str(&run.stdout).map_err(|e| e.to_string())?;
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    Ok(address.split('/').next().unwrap_or_default().to_string())
}

/// Makes ReplicaSet `<deployment>-<rollout>` of Deployment `w`, as the Deployment controller
/// does at each rollout.
fn create_replica_set(cluster: &Cluster, w: &Workload) {
    let set = format!("{}-{}", w.name, w.rollout);
    cluster.kube.create(
        &format!("/apis/apps/v1/namespaces/{NS}/replicasets"),
        &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": set, "namespace": NS, "uid": format!("rs-{set}"),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": w.name, "uid": w.uid, "controller": true}]},
                "spec": {"selector": {"matchLabels": {"app": w.name}}}}),
    );
}

/// Writes the status of a finished rollout of `w`, as the workload controllers would.
fn mark_ready(cluster: &Cluster, w: &Workload) {
    let object = cluster.kube.get(&w.path()).expect("the workload exists");
    let generation = object["metadata"]["generation"].clone();
    let n = w.pods.len();
    let status = match w.kind {
        Kind::Deployment => json!({"observedGeneration": generation, "replicas": n,
            "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}),
        Kind::StatefulSet => {
            let revision = format!("{}-{}", w.name, w.rollout);
            json!({"observedGeneration": generation, "replicas": n,
                "updatedReplicas": n, "readyReplicas": n, "currentReplicas": n,
                "currentRevision": revision, "updateRevision": revision})
        }
        Kind::DaemonSet => json!({"observedGeneration": generation,
            "desiredNumberScheduled": n, "currentNumberScheduled": n,
            "numberMisscheduled": 0, "numberReady": n, "updatedNumberScheduled": n,
            "numberAvailable": n}),
    };
    cluster.kube.patch(&w.path(), &json!({"status": status}));
}

/// Creates workload `name` of `kind`, ready, with `replicas` pods spread over the nodes, each
/// attached (addresses of the source pool).
fn create_workload(cluster: &Cluster, kind: Kind, name: &str, replicas: usize) -> Workload {
    let mut spec = json!({"selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}});
    if kind != Kind::DaemonSet {
        spec["replicas"] = json!(replicas);
    }
    if kind == Kind::StatefulSet {
        spec["serviceName"] = json!(name);
    }
    let created = cluster.kube.create(
        &format!("/apis/apps/v1/namespaces/{NS}/{}", kind.plural()),
        &json!({"apiVersion": "apps/v1", "kind": kind.name(),
                "metadata": {"name": name, "namespace": NS}, "spec": spec}),
    );
    let mut workload = Workload {
        kind,
        name: name.to_string(),
        uid: created["metadata"]["uid"]
            .as_str()
            .expect("a uid")
            .to_string(),
        pods: Vec::new(),
        rollout: 1,
        restarted_at: None,
    };
    if kind == Kind::Deployment {
        create_replica_set(cluster, &workload);
    }
    for index in 0..replicas {
        let node = NODES[index % NODES.len()];
        let (pod_name, owner) = workload.pod_spec(index, node);
        let pod = cluster.create_pod(NS, &pod_name, node, owner);
        let ip = attach(cluster, &pod).unwrap_or_else(|e| panic!("{e}"));
        assert!(in_net(&ip, SOURCE_CIDR), "{pod_name} got {ip}");
        workload.pods.push(pod);
    }
    mark_ready(cluster, &workload);
    workload
}

fn in_net(ip: &str, net: &str) -> bool {
    let net: IpNet = net.parse().expect("a CIDR");
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| net.contains(&ip))
}

/// A cluster of two nodes with the source pool and `extra` pools, and a controller.
fn cluster_with_pools(test: &str, extra: &str) -> Option<(Cluster, Controller)> {
    let cluster = Cluster::start(test)?;
    cluster.apply(&source_pool());
    if !extra.is_empty() {
        cluster.apply(extra);
    }
    for node in NODES {
        cluster.create_node(node, json!({}));
    }
    cluster.create_namespace(NS, json!({}), json!({}));
    let mut controller = cluster.controller("a", &[]);
    controller.wait_ready();
    Some((cluster, controller))
}

/// The pool record `name` as JSON, if it exists.
fn pool_record(cluster: &Cluster, name: &str) -> Option<Value> {
    let list: Value = serde_json::from_str(&cluster.tessera(&["get", "ippools", "-o", "json"]))
        .expect("tessera get -o json prints JSON");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items.into_iter().find(|p| p["metadata"]["name"] == name)
}

/// The controller's report on draining pool `name`.
fn drain_status(cluster: &Cluster, name: &str) -> Option<DrainStatus> {
    let pool = pool_record(cluster, name)?;
    let raw = pool["metadata"]["annotations"][DRAIN_STATUS_ANNOTATION].as_str()?;
    Some(serde_json::from_str(raw).expect("a drain status"))
}

/// Polls `condition` until it holds, failing at once when the kubelet thread failed or a
/// drain status shows more than one workload restarting.
fn wait_for(
    what: &str,
    log: &Mutex<Log>,
    controller: &Controller,
    mut condition: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !condition() {
        let failures = log.lock().unwrap().failures.clone();
        assert!(failures.is_empty(), "the kubelet failed: {failures:?}");
        assert!(
            start.elapsed() < STEP,
            "timed out after {STEP:?} waiting until {what}; controller log:\n{}",
            controller.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restarts(log: &Mutex<Log>) -> usize {
    log.lock().unwrap().restarts.values().sum()
}

/// Waits for a `tessera` run to end (at most a few steps); its exit code and output.
fn finished(mut child: Child, output: &std::path::Path, log: &Mutex<Log>) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for tessera") {
            let text = std::fs::read_to_string(output).unwrap_or_default();
            return (status.code().unwrap_or(-1), text);
        }
        if start.elapsed() > STEP * 3 {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(output).unwrap_or_default();
            panic!(
                "tessera ipam migrate did not finish:\n{text}\nkubelet: {:?}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills a `tessera` run (SIGKILL: no chance to clean up), which must not have finished.
fn kill(mut child: Child, output: &std::path::Path) {
    child.kill().expect("kill tessera");
    let _ = child.wait();
    let text = std::fs::read_to_string(output).unwrap_or_default();
    assert!(!text.contains("Done"), "the first run finished:\n{text}");
}

/// The PoolMigration Events recorded in the workloads' namespace, by workload name.
fn migration_events(cluster: &Cluster) -> BTreeMap<String, usize> {
    let list = cluster
        .kube
        .get(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"))
        .expect("the events list");
    let mut out = BTreeMap::new();
    for event in list["items"].as_array().cloned().unwrap_or_default() {
        if event["reason"] == "PoolMigration" {
            let name = event["regarding"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            *out.entry(name).or_default() += 1;
        }
    }
    out
}

/// Runs `test` while the test kubelet follows `workloads` in a thread of its own, then checks
/// that it never failed nor saw two workloads restarting at once; what it saw.
fn with_kubelet(
    cluster: &Cluster,
    workloads: Vec<Workload>,
    test: impl FnOnce(&Mutex<Log>),
) -> Log {
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let kubelet = Kubelet {
            cluster,
            workloads,
            log: log.clone(),
            stop: stop.clone(),
        };
        scope.spawn(move || kubelet.run());
        let _stop = StopOnDrop(stop.clone());
        test(&log);
    });
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        log.failures.is_empty(),
        "the kubelet failed: {:?}",
        log.failures
    );
    assert!(
        log.overlaps.is_empty(),
        "more than one restart at a time: {:?}",
        log.overlaps
    );
    log
}

/// Starts `tessera ARGS` and kills it once the controller restarted a first workload.
fn interrupted_run(cluster: &Cluster, args: &[&str], log: &Mutex<Log>, controller: &Controller) {
    let output = cluster.dir().join("migrate-1.log");
    let first = cluster.tessera_spawn(args, &output);
    wait_for("a first workload restarted", log, controller, || {
        restarts(log) >= 1
    });
    kill(first, &output);
}

/// Starts `tessera ARGS` again, to finish what the interrupted run started.
fn second_run(cluster: &Cluster, args: &[&str]) -> (Child, std::path::PathBuf) {
    let output = cluster.dir().join("migrate-2.log");
    (cluster.tessera_spawn(args, &output), output)
}

/// Every workload of `names` restarted `times` times.
fn each(names: &[&str], times: usize) -> BTreeMap<String, usize> {
    names.iter().map(|n| (n.to_string(), times)).collect()
}

#[test]
fn migrate_ippool_restarts_each_workload_once_and_finishes_after_an_interruption() {
    let Some((cluster, mut controller)) = cluster_with_pools("migrate_ippool", NEW_POOL) else {
        return;
    };
    let workloads = vec![
        create_workload(&cluster, Kind::Deployment, "web", 3),
        create_workload(&cluster, Kind::StatefulSet, "db", 2),
        create_workload(&cluster, Kind::DaemonSet, "agent", 2),
    ];
    let bare = cluster.create_pod(NS, "debug", "n1", json!({}));
    attach(&cluster, &bare).unwrap();
    let migrate = [
        "ipam",
        "migrate",
        "--from",
        SOURCE,
        "--to",
        "new-pool",
        "--max-parallel",
        "1",
    ];
    let log = with_kubelet(&cluster, workloads, |log| {
        interrupted_run(&cluster, &migrate, log, &controller);
        // The controller dies too, after the next restart; another one takes over.
        wait_for("a second workload restarted", log, &controller, || {
            restarts(log) >= 2
        });
        controller.kill();
        let mut successor = cluster.controller("b", &[]);
        successor.wait_ready();

        let (second, output) = second_run(&cluster, &migrate);
        let mut seen = DrainStatus::default();
        wait_for(
            "every workload restarted and the bare pod listed",
            log,
            &successor,
            || {
                let Some(status) = drain_status(&cluster, SOURCE) else {
                    return false;
                };
                assert!(status.restarting.len() <= 1, "{status:?}");
                seen = status;
                seen.restarted.len() == 3 && seen.stranded.iter().any(|p| p.name == "debug")
            },
        );
        let stranded: Vec<_> = seen
            .stranded
            .iter()
            .map(|p| (p.name.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(stranded, [("debug", "no owner")]);
        // Listed, never deleted: the admin deletes it.
        assert!(
            cluster.kube.get(&bare.path()).is_some(),
            "the bare pod was deleted"
        );
        let run = cluster.cni_del_run(&bare, &plugin_conf(&cluster, "n1"));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        cluster.kube.delete(&bare.path());

        let (code, text) = finished(second, &output, log);
        assert_eq!(code, 0, "second run:\n{text}");
    });
    let once = each(&["agent", "db", "web"], 1);
    assert_eq!(log.restarts, once, "each workload restarted exactly once");
    for (_, pod, ip) in &log.addresses {
        assert!(
            in_net(ip, "192.168.0.0/24"),
            "{pod} got {ip}, not an address of new-pool"
        );
    }
    // The StatefulSet's addresses moved too, and are held for its pods' names again.
    for (_, pod, ip) in log
        .addresses
        .iter()
        .filter(|(_, pod, _)| pod.starts_with("db-"))
    {
        let handle = format!("{}:{NS}/{pod}:eth0", common::NETWORK);
        assert_eq!(cluster.holder(ip), Some(handle));
    }
    assert!(
        pool_record(&cluster, SOURCE).is_none(),
        "the source is deleted"
    );
    let target = pool_record(&cluster, "new-pool").expect("the target stays");
    assert_ne!(
        target["spec"]["disabled"],
        json!(true),
        "the target is enabled"
    );
    assert_eq!(
        migration_events(&cluster),
        once,
        "one PoolMigration Event per restarted workload"
    );
    cluster.assert_check_clean();
}

#[test]
fn change_block_size_moves_the_workloads_out_and_back_and_finishes_after_an_interruption() {
    let Some((cluster, controller)) = cluster_with_pools("migrate_block_size", "") else {
        return;
    };
    let workloads = vec![
        create_workload(&cluster, Kind::Deployment, "web", 2),
        create_workload(&cluster, Kind::StatefulSet, "db", 2),
    ];
    let migrate = [
        "ipam",
        "migrate",
        "--pool",
        SOURCE,
        "--block-size",
        "27",
        "--temporary-cidr",
        "10.250.0.0/24",
        "--max-parallel",
        "1",
    ];
    let log = with_kubelet(&cluster, workloads, |log| {
        interrupted_run(&cluster, &migrate, log, &controller);
        let (second, output) = second_run(&cluster, &migrate);
        let (code, text) = finished(second, &output, log);
        assert_eq!(code, 0, "second run:\n{text}");
    });
    assert_eq!(
        log.restarts,
        each(&["db", "web"], 2),
        "each workload restarted once per move"
    );
    for (rollout, pod, ip) in &log.addresses {
        let pool = if *rollout == 2 {
            "10.250.0.0/24"
        } else {
            SOURCE_CIDR
        };
        assert!(
            in_net(ip, pool),
            "{pod} (rollout {rollout}) got {ip}, not in {pool}"
        );
    }
    let pool = pool_record(&cluster, SOURCE).expect("the pool is back");
    assert_eq!(pool["spec"]["blockSize"], json!(27));
    assert!(pool["metadata"]["annotations"]
        .get(DRAIN_STATUS_ANNOTATION)
        .is_none());
    assert!(
        pool_record(&cluster, &format!("{SOURCE}-temporary")).is_none(),
        "the temporary pool is deleted"
    );
    cluster.assert_check_clean();
}

/// Stops the kubelet thread when dropped, also when the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
