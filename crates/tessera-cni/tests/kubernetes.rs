//! ADD with a `kubernetes` section: the real plugin reads the pod and its namespace from a
//! canned API server on 127.0.0.1, and fails cleanly, allocating nothing, when it cannot.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tessera_k8s_lookup::testing::{namespace_json, pod_json, write_kubeconfig, FakeApiServer};

const IPV4_POOLS: &str = "cni.projectcalico.org/ipv4pools";

/// A store with pools `a` (10.1.0.0/24, the one the node selects) and `b` (10.2.0.0/24,
/// only when named).
fn env_with_pools() -> Env {
    let env = Env::new();
    env.pool("a", "10.1.0.0/24", 26, json!({}));
    env.pool("b", "10.2.0.0/24", 26, json!({"nodeSelector": "!all()"}));
    env
}

/// `env`'s network configuration reading Kubernetes through a kubeconfig for `server`.
fn conf_for(env: &Env, server: &str, section: Value) -> Value {
    let kubeconfig = write_kubeconfig(env.dir(), server, "t0ken\n");
    let mut conf = env.conf("1.0.0", json!({}));
    let mut k = json!({"kubeconfig": kubeconfig.to_str().unwrap()});
    if let Value::Object(extra) = section {
        k.as_object_mut().unwrap().extend(extra);
    }
    conf["kubernetes"] = k;
    conf
}

/// An API server with pod web/nginx-1 (uid `uid-1`) whose annotation names pool `b`.
fn server_of_a_pod_asking_for_b() -> FakeApiServer {
    let server = FakeApiServer::start();
    let asks = [(IPV4_POOLS, "[\"b\"]")];
    server.set_pod(&pod_json("web", "nginx-1", "uid-1", &[], &asks));
    server.set_namespace(&namespace_json("web", &[], &[]));
    server
}

fn first_address(result: &Value) -> String {
    addr(result["ips"][0]["address"].as_str().unwrap())
}

#[test]
fn the_pod_annotation_from_the_api_picks_the_pool_and_wins_over_the_runtime() {
    let env = env_with_pools();
    let server = server_of_a_pod_asking_for_b();
    let mut conf = conf_for(&env, &server.url(), json!({}));
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": {IPV4_POOLS: "[\"a\"]"}});
    let att = Att::new("c1").pod("web", "nginx-1");
    let got = env.add(&conf, &att);
    assert!(first_address(&got).starts_with("10.2.0."), "{got}");
    // The uid comes from the API when the runtime passes none.
    let rec = env.ipam().handle("tnet:c1:eth0").unwrap().unwrap();
    assert_eq!(rec.attrs.pod_uid.as_deref(), Some("uid-1"));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer t0ken"));
    // CHECK and DEL never ask the API server.
    env.cni("CHECK", &conf, Some(&att)).ok();
    env.cni("DEL", &conf, Some(&att)).ok();
    assert_eq!(server.requests().len(), 2);
    env.assert_consistent();
}

#[test]
fn the_namespace_annotation_from_the_api_picks_the_pool() {
    let env = env_with_pools();
    // The stored namespace record says otherwise: Kubernetes wins.
    env.annotate_namespace("web", &[(IPV4_POOLS, "[\"a\"]")]);
    let server = FakeApiServer::start();
    server.set_pod(&pod_json("web", "nginx-1", "uid-1", &[], &[]));
    server.set_namespace(&namespace_json("web", &[], &[(IPV4_POOLS, "[\"b\"]")]));
    let conf = conf_for(&env, &server.url(), json!({}));
    let got = env.add(&conf, &Att::new("c1").pod("web", "nginx-1"));
    assert!(first_address(&got).starts_with("10.2.0."), "{got}");
    // Without the section the stored record decides, as before.
    let plain = env.conf("1.0.0", json!({}));
    let got = env.add(&plain, &Att::new("c2").pod("web", "nginx-2"));
    assert!(first_address(&got).starts_with("10.1.0."), "{got}");
    env.assert_consistent();
}

#[test]
fn the_spiderpool_pod_annotation_from_the_api_picks_the_spiderippool() {
    let env = env_with_pools();
    env.spider_pool(
        "nginx",
        json!({"subnet": "10.9.0.0/24", "ips": ["10.9.0.10-10.9.0.20"]}),
    );
    let server = FakeApiServer::start();
    server.set_pod(&pod_json(
        "web",
        "nginx-1",
        "uid-1",
        &[("app", "nginx")],
        &[("ipam.spidernet.io/ippool", "{\"ipv4\": [\"nginx\"]}")],
    ));
    server.set_namespace(&namespace_json("web", &[], &[]));
    let conf = conf_for(&env, &server.url(), json!({}));
    let got = env.add(&conf, &Att::new("c1").pod("web", "nginx-1"));
    assert_eq!(first_address(&got), "10.9.0.10");
}

/// Runs ADD for pod web/nginx-1 with `conf`; asserts it fails with `code` and that nothing
/// was allocated; returns the error text and how long it took.
fn failed_add(env: &Env, conf: &Value, att: &Att, code: u64) -> (String, Duration) {
    let started = Instant::now();
    let run = env.cni("ADD", conf, Some(att));
    let took = started.elapsed();
    run.err(code);
    assert_eq!(env.handle_count(), 0, "nothing may be allocated");
    env.assert_consistent();
    (run.full_error(), took)
}

#[test]
fn an_api_server_that_cannot_be_reached_fails_add_within_the_timeout() {
    let env = env_with_pools();
    let att = Att::new("c1").pod("web", "nginx-1");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let conf = conf_for(&env, &closed, json!({}));
    let (text, _) = failed_add(&env, &conf, &att, 11);
    assert!(
        text.starts_with(&format!(
            "cannot reach the Kubernetes API server at {closed}:"
        )),
        "{text}"
    );
    assert!(text.ends_with("; set in kubernetes"), "{text}");

    let silent = FakeApiServer::silent();
    let conf = conf_for(&env, &silent.url(), json!({"timeout_ms": 300}));
    let (text, took) = failed_add(&env, &conf, &att, 11);
    assert!(text.contains("did not answer within 300 ms"), "{text}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // DEL, CHECK, GC and STATUS never ask the API server.
    env.cni("DEL", &conf, Some(&att)).ok();
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    env.cni("STATUS", &gc, None).ok();
}

#[test]
fn a_missing_pod_a_refusal_or_a_replaced_pod_fail_add_and_allocate_nothing() {
    let env = env_with_pools();
    let server = FakeApiServer::start();
    server.set_namespace(&namespace_json("web", &[], &[]));
    let conf = conf_for(&env, &server.url(), json!({}));
    let att = Att::new("c1").pod("web", "nginx-1");
    let (text, _) = failed_add(&env, &conf, &att, 111);
    assert!(
        text.starts_with("pod web/nginx-1 not found on the Kubernetes API server"),
        "{text}"
    );

    server.set(
        "/api/v1/namespaces/web/pods/nginx-1",
        403,
        r#"{"kind":"Status","message":"pods \"nginx-1\" is forbidden","code":403}"#,
    );
    let (text, _) = failed_add(&env, &conf, &att, 5);
    assert!(text.contains("refused to get pods (403)"), "{text}");
    assert!(text.contains("need RBAC permission to get pods"), "{text}");

    server.set_pod(&pod_json("web", "nginx-1", "new-uid", &[], &[]));
    let mut replaced = att.clone();
    replaced.args.push_str(";K8S_POD_UID=old-uid");
    let (text, _) = failed_add(&env, &conf, &replaced, 111);
    assert!(
        text.starts_with(
            "pod web/nginx-1 in Kubernetes has uid new-uid, but this ADD is for uid old-uid"
        ),
        "{text}"
    );
    // The matching uid goes through.
    let mut same = att.clone();
    same.args.push_str(";K8S_POD_UID=new-uid");
    env.add(&conf, &same);
}

#[test]
fn a_kubeconfig_problem_is_a_configuration_error() {
    let env = env_with_pools();
    let mut conf = env.conf("1.0.0", json!({}));
    conf["ipam"]["kubernetes"] = json!({"kubeconfig": "/nonexistent/kubeconfig"});
    let (text, _) = failed_add(&env, &conf, &Att::new("c1").pod("web", "p"), 7);
    assert!(
        text.starts_with("cannot read kubeconfig /nonexistent/kubeconfig:"),
        "{text}"
    );
    assert!(text.ends_with("; set in ipam.kubernetes"), "{text}");
}

#[test]
fn without_a_pod_in_cni_args_nothing_is_read() {
    let env = env_with_pools();
    let server = FakeApiServer::start();
    let conf = conf_for(&env, &server.url(), json!({}));
    let got = env.add(&conf, &Att::new("c1"));
    assert!(first_address(&got).starts_with("10.1.0."), "{got}");
    assert!(server.requests().is_empty());
}

#[test]
fn the_documented_configuration_reads_the_pod() {
    let env = env_with_pools();
    let server = server_of_a_pod_asking_for_b();
    let section = cni_guide_section("## Kubernetes lookups");
    let mut conf: Value =
        serde_json::from_str(&lines_between(&section, "```json", "```")).expect("JSON");
    // The guide's kubeconfig and datastore are the host's: point them at this test's.
    let ours = conf_for(&env, &server.url(), json!({}));
    conf["kubernetes"]["kubeconfig"] = ours["kubernetes"]["kubeconfig"].clone();
    conf["ipam"]["datastore"] = ours["ipam"]["datastore"].clone();
    conf["ipam"]["nodename"] = json!("node-a");
    let got = env.add(&conf, &Att::new("c1").pod("web", "nginx-1"));
    assert!(first_address(&got).starts_with("10.2.0."), "{got}");
    let rbac = lines_between(&section, "```yaml", "```");
    assert!(rbac.contains("resources: [\"pods\", \"namespaces\"]\n  verbs: [\"get\"]"));
}

/// An API server with pod shop/nightly-29000000-x1 of Job nightly-29000000, which CronJob
/// nightly started, the pod naming SpiderSubnet `s4`.
fn server_of_a_cron_jobs_pod() -> FakeApiServer {
    let server = FakeApiServer::start();
    let subnet = [("ipam.spidernet.io/subnet", r#"{"ipv4": ["s4"]}"#)];
    let mut pod = pod_json("shop", "nightly-29000000-x1", "uid-1", &[], &subnet);
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "nightly-29000000", "uid": "job-uid", "controller": true}]);
    server.set_pod(&pod);
    server.set_namespace(&namespace_json("shop", &[], &[]));
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nightly-29000000", "namespace": "shop", "uid": "job-uid",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                         "name": "nightly", "uid": "cron-uid", "controller": true}]}});
    server.set(
        "/apis/batch/v1/namespaces/shop/jobs/nightly-29000000",
        200,
        job.to_string(),
    );
    server
}

#[test]
fn a_pod_of_a_cron_jobs_job_draws_from_the_cron_jobs_auto_pool() {
    let env = Env::new();
    // The pool the controller cuts for the CronJob, and one a Job of its own would get.
    env.spider_pool(
        "auto4-nightly-eth0-abcde",
        json!({"subnet": "10.7.0.0/24", "ips": ["10.7.0.10-10.7.0.12"]}),
    );
    env.spider_pool(
        "auto4-nightly-29000000-eth0-fghij",
        json!({"subnet": "10.8.0.0/24", "ips": ["10.8.0.10-10.8.0.12"]}),
    );
    let server = server_of_a_cron_jobs_pod();
    let conf = conf_for(&env, &server.url(), json!({}));
    let got = env.add(&conf, &Att::new("c1").pod("shop", "nightly-29000000-x1"));
    assert!(first_address(&got).starts_with("10.7.0."), "{got}");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "pod, namespace, job: {requests:?}");
    env.assert_consistent();
}
