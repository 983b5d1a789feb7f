//! The emulator behaves as the API server where Tessera's binaries depend on it: object
//! metadata, merge patches, conflicts, graceful pod deletion, tokens, and kube-rs watches.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::{json, Value};
use tessera_kube_emulator::{KubeEmulator, Options};

fn node(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn resource_version(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceVersion in {object}"))
        .to_string()
}

#[test]
fn objects_get_metadata_and_lists_a_resource_version() {
    let Some(kube) = KubeEmulator::start_or_skip("objects_get_metadata") else {
        return;
    };
    let created = kube.create("/api/v1/nodes", &node("n1", json!({"rack": "a"})));
    for field in ["uid", "creationTimestamp", "resourceVersion"] {
        assert!(created["metadata"][field].is_string(), "{field}: {created}");
    }
    assert_eq!(kube.get("/api/v1/nodes/n1"), Some(created.clone()));

    let list = kube.get("/api/v1/nodes").unwrap();
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(resource_version(&list), resource_version(&created));
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let again = kube.request(
        "POST",
        "/api/v1/nodes",
        "application/json",
        Some(&node("n1", json!({}))),
    );
    assert_eq!(
        again.unwrap().status,
        409,
        "a second create of n1 conflicts"
    );
}

#[test]
fn merge_patch_null_removes_a_key_and_delete_removes_the_object() {
    let Some(kube) = KubeEmulator::start_or_skip("merge_patch_null") else {
        return;
    };
    kube.create(
        "/api/v1/nodes",
        &node("n1", json!({"rack": "a", "zone": "z"})),
    );
    let patched = kube.patch(
        "/api/v1/nodes/n1",
        &json!({"metadata": {"labels": {"rack": null, "row": "7"}}}),
    );
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"zone": "z", "row": "7"})
    );

    let selected = kube.get("/api/v1/nodes?labelSelector=row%3D7").unwrap();
    assert_eq!(selected["items"].as_array().unwrap().len(), 1);
    let none = kube.get("/api/v1/nodes?labelSelector=rack%3Da").unwrap();
    assert_eq!(none["items"], json!([]));

    kube.delete("/api/v1/nodes/n1");
    assert_eq!(kube.get("/api/v1/nodes/n1"), None);
    let missing = kube.request("DELETE", "/api/v1/nodes/n1", "application/json", None);
    assert_eq!(missing.unwrap().status, 404);
}

#[test]
fn namespaces_are_a_resource_of_their_own() {
    let Some(kube) = KubeEmulator::start_or_skip("namespaces_resource") else {
        return;
    };
    let annotations = json!({"cni.projectcalico.org/ipv4pools": "[\"pool-b\"]"});
    kube.create(
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "blue", "annotations": annotations}}),
    );
    let list = kube.get("/api/v1/namespaces").unwrap();
    assert_eq!(list["kind"], "NamespaceList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ns| ns["metadata"]["name"].as_str().unwrap())
        .collect();
    // As in a new cluster, `default` and the kube-* namespaces exist from the start.
    assert_eq!(
        names,
        [
            "blue",
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system"
        ]
    );
    let patched = kube.patch(
        "/api/v1/namespaces/blue",
        &json!({"metadata": {"annotations": {"cni.projectcalico.org/ipv4pools": null}}}),
    );
    assert_eq!(patched["metadata"]["annotations"], json!({}));
    // A pod in the namespace is not the namespace.
    kube.create(
        "/api/v1/namespaces/blue/pods",
        &json!({"metadata": {"name": "p"}}),
    );
    assert!(kube.get("/api/v1/namespaces/blue/pods/p").is_some());
    kube.delete("/api/v1/namespaces/blue");
    assert_eq!(kube.get("/api/v1/namespaces/blue"), None);
}

#[test]
fn a_stale_resource_version_is_a_conflict() {
    let Some(kube) = KubeEmulator::start_or_skip("stale_resource_version") else {
        return;
    };
    let first = kube.create("/api/v1/nodes", &node("n1", json!({})));
    let stale = resource_version(&first);
    let second = kube.patch(
        "/api/v1/nodes/n1",
        &json!({"metadata": {"labels": {"a": "1"}}}),
    );
    assert_ne!(resource_version(&second), stale);

    let patch = json!({"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}});
    let refused = kube
        .request(
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            Some(&patch),
        )
        .unwrap();
    assert_eq!(refused.status, 409, "{}", refused.json);
    assert_eq!(refused.json["reason"], "Conflict");

    let mut replacement = second.clone();
    replacement["metadata"]["resourceVersion"] = json!(stale);
    let refused = kube
        .request(
            "PUT",
            "/api/v1/nodes/n1",
            "application/json",
            Some(&replacement),
        )
        .unwrap();
    assert_eq!(refused.status, 409);

    replacement["metadata"]["resourceVersion"] = json!(resource_version(&second));
    replacement["metadata"]["labels"] = json!({"b": "1"});
    let replaced = kube
        .request(
            "PUT",
            "/api/v1/nodes/n1",
            "application/json",
            Some(&replacement),
        )
        .unwrap();
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.json["metadata"]["labels"], json!({"b": "1"}));
    assert_eq!(replaced.json["metadata"]["uid"], first["metadata"]["uid"]);
}

#[test]
fn a_watch_resumes_after_a_resource_version_and_ends_at_its_timeout() {
    let Some(kube) = KubeEmulator::start_or_skip("watch_resumes") else {
        return;
    };
    let created = kube.create("/api/v1/nodes", &node("n1", json!({})));
    kube.create("/api/v1/nodes", &node("n2", json!({})));
    kube.patch(
        "/api/v1/nodes/n1",
        &json!({"metadata": {"labels": {"a": "1"}}}),
    );
    kube.delete("/api/v1/nodes/n2");

    let since = resource_version(&created);
    let started = Instant::now();
    let path = format!("/api/v1/nodes?watch=true&resourceVersion={since}&timeoutSeconds=1");
    let watch = kube
        .request("GET", &path, "application/json", None)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the watch outlived its timeout"
    );
    let events: Vec<(String, String)> = watch
        .body
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            let name = event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            (event["type"].as_str().unwrap().to_string(), name)
        })
        .collect();
    let expected = [("ADDED", "n2"), ("MODIFIED", "n1"), ("DELETED", "n2")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
    assert_eq!(events, expected, "only what came after {since}");
}

#[test]
fn status_is_written_through_its_subresource_only() {
    let Some(kube) = KubeEmulator::start_or_skip("status_subresource") else {
        return;
    };
    let pods = "/api/v1/namespaces/default/pods";
    kube.create(
        pods,
        &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}),
    );
    let ignored = kube.patch(
        &format!("{pods}/p"),
        &json!({"status": {"phase": "Failed"}}),
    );
    assert_eq!(ignored["status"]["phase"], "Running");
    let written = kube.patch(
        &format!("{pods}/p/status"),
        &json!({"status": {"phase": "Succeeded"}, "metadata": {"labels": {"x": "y"}}}),
    );
    assert_eq!(written["status"]["phase"], "Succeeded");
    assert_eq!(written["metadata"].get("labels"), None);
}

#[test]
fn the_pool_custom_resources_are_served_with_a_status_subresource() {
    let Some(kube) = KubeEmulator::start_or_skip("custom_resources") else {
        return;
    };
    let served = [
        (
            "spiderpool.spidernet.io/v2beta1",
            "spidersubnets",
            "SpiderSubnet",
        ),
        (
            "spiderpool.spidernet.io/v2beta1",
            "spiderippools",
            "SpiderIPPool",
        ),
        (
            "spiderpool.spidernet.io/v2beta1",
            "spiderreservedips",
            "SpiderReservedIP",
        ),
        ("crd.projectcalico.org/v1", "ippools", "IPPool"),
        (
            "crd.projectcalico.org/v1",
            "ipreservations",
            "IPReservation",
        ),
    ];
    for (api_version, plural, kind) in served {
        let path = format!("/apis/{api_version}/{plural}");
        let object =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "a"}, "spec": {}});
        kube.create(&path, &object);
        let ignored = kube.patch(&format!("{path}/a"), &json!({"status": {"x": 1}}));
        assert_eq!(
            ignored.get("status"),
            None,
            "{kind}: status through the main endpoint"
        );
        let written = kube.patch(&format!("{path}/a/status"), &json!({"status": {"x": 2}}));
        assert_eq!(written["status"]["x"], 2, "{kind}");
        let list = kube.get(&path).unwrap();
        assert_eq!(list["kind"], format!("{kind}List"));
    }
    let discovery = kube.get("/apis/spiderpool.spidernet.io/v2beta1").unwrap();
    let pools = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "spiderippools")
        .unwrap_or_else(|| panic!("no spiderippools in {discovery}"));
    assert_eq!(pools["namespaced"], false);
    assert_eq!(pools["shortNames"], json!(["sp"]));
}

#[test]
fn a_pod_deleted_with_a_grace_period_terminates_then_goes() {
    let Some(kube) = KubeEmulator::start_or_skip("graceful_pod_deletion") else {
        return;
    };
    let pods = "/api/v1/namespaces/default/pods";
    kube.create(
        pods,
        &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}}),
    );
    let started = Instant::now();
    let terminating = kube.delete_with_grace(&format!("{pods}/p"), 2);
    assert!(
        terminating["metadata"]["deletionTimestamp"].is_string(),
        "{terminating}"
    );
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 2);
    assert!(
        kube.get(&format!("{pods}/p")).is_some(),
        "still there while terminating"
    );

    while kube.get(&format!("{pods}/p")).is_some() {
        assert!(started.elapsed() < Duration::from_secs(10), "never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "removed before its grace period"
    );

    // An unscheduled pod has nothing to stop: it goes at once.
    kube.create(pods, &json!({"metadata": {"name": "q"}}));
    kube.delete_with_grace(&format!("{pods}/q"), 30);
    assert_eq!(kube.get(&format!("{pods}/q")), None);
}

#[test]
fn a_required_token_is_checked() {
    let options = Options {
        token: Some("s3cret".into()),
        ..Options::default()
    };
    let Some(kube) = KubeEmulator::with_or_skip(&options, "required_token") else {
        return;
    };
    assert!(
        kube.get("/api/v1/nodes").is_some(),
        "the helpers send the token"
    );
    let stream = std::net::TcpStream::connect(("127.0.0.1", kube.port())).unwrap();
    let answer = raw_get(stream, "/api/v1/nodes");
    assert!(
        answer.starts_with("HTTP/1.0 401") || answer.starts_with("HTTP/1.1 401"),
        "{answer}"
    );
}

fn raw_get(mut stream: std::net::TcpStream, path: &str) -> String {
    use std::io::{Read, Write};
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

async fn client(kube: &KubeEmulator) -> Client {
    let file = tempfile::NamedTempFile::new().unwrap();
    kube.write_kubeconfig(file.path()).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(file.path()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_watcher_sees_nodes_added_modified_and_deleted() {
    let Some(kube) = KubeEmulator::start_or_skip("kube_rs_watcher") else {
        return;
    };
    kube.create("/api/v1/nodes", &node("before", json!({})));
    let nodes: Api<Node> = Api::all(client(&kube).await);
    let mut events = watcher(nodes, watcher::Config::default()).boxed();

    // The initial list: Init, InitApply(before), InitDone.
    let mut seen = Vec::new();
    let expected_tail = ["apply after rack=b", "delete before", "apply after rack=c"];
    while seen.len() < 2 + expected_tail.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("no watch event within 10 s; seen {seen:?}"))
            .expect("the watch stream ended")
            .expect("watch error");
        let text = match event {
            watcher::Event::Init => continue,
            watcher::Event::InitApply(n) => format!("init {}", n.metadata.name.unwrap()),
            watcher::Event::InitDone => "init done".to_string(),
            watcher::Event::Apply(n) => {
                let rack = n.metadata.labels.unwrap_or_default().get("rack").cloned();
                format!(
                    "apply {} rack={}",
                    n.metadata.name.unwrap(),
                    rack.unwrap_or_default()
                )
            }
            watcher::Event::Delete(n) => format!("delete {}", n.metadata.name.unwrap()),
        };
        seen.push(text);
        if seen.last().map(String::as_str) == Some("init done") {
            // The watch runs from the list's resourceVersion: these arrive as events.
            kube.create("/api/v1/nodes", &node("after", json!({"rack": "b"})));
            kube.delete("/api/v1/nodes/before");
            kube.patch(
                "/api/v1/nodes/after",
                &json!({"metadata": {"labels": {"rack": "c"}}}),
            );
        }
    }
    assert_eq!(seen[..2], ["init before", "init done"]);
    assert_eq!(seen[2..], expected_tail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_replaced_with_a_stale_version_is_refused() {
    let Some(kube) = KubeEmulator::start_or_skip("lease_conflict") else {
        return;
    };
    let leases: Api<Lease> = Api::namespaced(client(&kube).await, "tessera-system");
    let mut lease = Lease::default();
    lease.metadata.name = Some("leader".into());
    let created = leases.create(&Default::default(), &lease).await.unwrap();
    let mut mine = created.clone();
    mine.spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("a".into());
    leases
        .replace("leader", &Default::default(), &mine)
        .await
        .unwrap();

    let mut theirs = created;
    theirs
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("b".into());
    match leases.replace("leader", &Default::default(), &theirs).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("a stale replace must conflict, got {other:?}"),
    }
    let stored = leases.get("leader").await.unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.as_deref(), Some("a"));
}
