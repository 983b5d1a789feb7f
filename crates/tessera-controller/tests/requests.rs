//! The exact requests the controller sends to the Kubernetes API, against a mock service
//! (`tower_test::mock::pair`): Lease create, renew and take-over with their resourceVersion
//! preconditions, the fresh GET of a pod before its address is released, the GET that
//! confirms a node is gone before it is forgotten, and the restart of a workload by a pool
//! drain.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube::Client;
use serde_json::{json, Value};
use tessera_controller::datastore::Datastore;
use tessera_controller::gc::LeakReason;
use tessera_controller::http::Health;
use tessera_controller::lease::{Attempt, LeaseEnded, LeaseLock};
use tessera_controller::metrics::Metrics;
use tessera_controller::run::{self, Context};
use tessera_controller::settings::GcArgs;
use tessera_core::ipam::{AssignRequest, Attributes, HandleRecord, Ipam};
use tessera_core::keys;
use tessera_core::store::{MemoryStore, Op, Store};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/tessera-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/tessera-system/leases/tessera-controller";

fn mock_client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The next request, which must be `method path`; its JSON body (Null when empty).
async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Value, Reply) {
    let (request, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is gone");
    assert_eq!(
        (request.method(), request.uri().path()),
        (&method, path),
        "unexpected request"
    );
    let body = request.into_body().collect_bytes().await.unwrap();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (json, reply)
}

async fn expect_no_more(handle: &mut Handle) {
    let next = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    if let Ok(Some((request, _))) = next {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// Answers the next request, which must be a GET of `path`, with `object` or 404 Not Found.
async fn answer_get(handle: &mut Handle, path: &str, object: Option<Value>) {
    let (_, reply) = expect(handle, Method::GET, path).await;
    match object {
        Some(object) => respond(reply, StatusCode::OK, &object),
        None => not_found(reply),
    }
}

fn respond(reply: Reply, status: StatusCode, body: &Value) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    reply.send_response(response);
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn not_found(reply: Reply) {
    respond(reply, StatusCode::NOT_FOUND, &status(404, "NotFound"));
}

// ---- Lease ----

fn lock(client: Client) -> LeaseLock {
    lock_for(client, 15)
}

fn lock_for(client: Client, seconds: u64) -> LeaseLock {
    LeaseLock::new(
        client,
        "tessera-system",
        "tessera-controller",
        "replica-a",
        Duration::from_secs(seconds),
    )
}

fn now() -> Timestamp {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

fn micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn lease(holder: &str, renewed: Timestamp, resource_version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tessera-controller", "namespace": "tessera-system",
                     "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": micro(renewed), "renewTime": micro(renewed),
                 "leaseTransitions": 3}
    })
}

fn spec_time(body: &Value, field: &str) -> Timestamp {
    body["spec"][field].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_absent_lease_is_created_without_a_resource_version() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let server = async {
        answer_get(&mut handle, LEASE, None).await;
        let (body, reply) = expect(&mut handle, Method::POST, LEASES).await;
        assert_eq!(body["metadata"]["name"], "tessera-controller");
        assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(spec_time(&body, "renewTime"), now());
        respond(reply, StatusCode::CREATED, &body);
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Held);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_lease_created_by_another_replica_first_means_standby() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let server = async {
        answer_get(&mut handle, LEASE, None).await;
        let (_, reply) = expect(&mut handle, Method::POST, LEASES).await;
        respond(reply, StatusCode::CONFLICT, &status(409, "AlreadyExists"));
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Standby { holder: None });
}

#[tokio::test]
async fn the_holder_renews_with_the_resource_version_it_read() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let earlier = now() - SignedDuration::from_secs(5);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-a", earlier, "7"))).await;
        let (body, reply) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(spec_time(&body, "renewTime"), now());
        assert_eq!(
            spec_time(&body, "acquireTime"),
            earlier,
            "a renewal keeps acquireTime"
        );
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        respond(reply, StatusCode::OK, &body);
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Held);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_renewal_refused_for_a_stale_resource_version_is_a_lost_lease() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-a", now(), "7"))).await;
        let (_, reply) = expect(&mut handle, Method::PUT, LEASE).await;
        respond(reply, StatusCode::CONFLICT, &status(409, "Conflict"));
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Standby { holder: None });
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    // Renewed 14 s ago with a 15 s duration: still valid.
    let renewed = now() - SignedDuration::from_secs(14);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-b", renewed, "9"))).await;
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(
        attempt.unwrap(),
        Attempt::Standby {
            holder: Some("replica-b".into())
        }
    );
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_the_resource_version_it_read() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let renewed = now() - SignedDuration::from_secs(16);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-b", renewed, "9"))).await;
        let (body, reply) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "9");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(spec_time(&body, "acquireTime"), now());
        assert_eq!(spec_time(&body, "renewTime"), now());
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        respond(reply, StatusCode::OK, &body);
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Held);
}

#[tokio::test]
async fn a_take_over_that_loses_the_race_is_standby() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let renewed = now() - SignedDuration::from_secs(60);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-b", renewed, "9"))).await;
        let (_, reply) = expect(&mut handle, Method::PUT, LEASE).await;
        respond(reply, StatusCode::CONFLICT, &status(409, "Conflict"));
    };
    let (attempt, ()) = tokio::join!(lock.try_acquire(now()), server);
    assert_eq!(attempt.unwrap(), Attempt::Standby { holder: None });
}

#[tokio::test]
async fn release_clears_the_holder_with_the_resource_version_it_read() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-a", now(), "11"))).await;
        let (body, reply) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "11");
        assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
        respond(reply, StatusCode::OK, &body);
    };
    let (released, ()) = tokio::join!(lock.release(), server);
    released.unwrap();
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn release_leaves_another_holders_lease_alone() {
    let (client, mut handle) = mock_client();
    let lock = lock(client);
    let server = async {
        answer_get(&mut handle, LEASE, Some(lease("replica-b", now(), "11"))).await;
    };
    let (released, ()) = tokio::join!(lock.release(), server);
    released.unwrap();
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn the_holder_stops_when_another_replica_took_the_lease() {
    let (client, mut handle) = mock_client();
    let lock = lock_for(client, 3);
    let server = async {
        // The first renewal, a second in, finds another holder.
        let taken = lease("replica-b", Timestamp::now(), "12");
        answer_get(&mut handle, LEASE, Some(taken)).await;
    };
    let (ended, ()) = tokio::join!(lock.keep(), server);
    match ended {
        LeaseEnded::Lost { holder, .. } => assert_eq!(holder.as_deref(), Some("replica-b")),
        other => panic!("expected a lost lease, got {other}"),
    }
}

#[tokio::test]
async fn the_holder_stops_within_two_thirds_of_the_duration_when_renewals_fail() {
    let (client, mut handle) = mock_client();
    let lock = lock_for(client, 3);
    let started = std::time::Instant::now();
    let server = async {
        let (_, reply) = expect(&mut handle, Method::GET, LEASE).await;
        let unavailable = status(503, "ServiceUnavailable");
        respond(reply, StatusCode::SERVICE_UNAVAILABLE, &unavailable);
    };
    let (ended, ()) = tokio::join!(lock.keep(), server);
    assert!(matches!(ended, LeaseEnded::NotRenewed { .. }), "{ended}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_holder_stops_when_a_renewal_hangs() {
    let (client, mut handle) = mock_client();
    let lock = lock_for(client, 3);
    let started = std::time::Instant::now();
    // The GET is received and never answered: `_unanswered` keeps it open.
    let server = async { expect(&mut handle, Method::GET, LEASE).await };
    let both = async { tokio::join!(lock.keep(), server) };
    let (ended, _unanswered) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("still acting on a lease it could not renew");
    assert!(matches!(ended, LeaseEnded::NotRenewed { .. }), "{ended}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---- Garbage collection and node deletion ----

fn put(store: &dyn Store, key: &str, value: Value) {
    let op = Op::Put(key.into(), serde_json::to_vec(&value).unwrap());
    store.txn(&[], &[op]).unwrap();
}

/// A store with a pool, the node record `node-1` written by the controller, and the pod
/// handle `h-web-0` of pod `shop/web-0` (uid `uid-1`) on that node.
fn cluster_store() -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    put(
        store.as_ref(),
        &keys::pool("default"),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "default"}, "spec": {"cidr": "10.8.0.0/24"}}),
    );
    let datastore = Datastore::new(store.clone());
    datastore.sync_node("node-1", &Default::default()).unwrap();
    let request = AssignRequest {
        handle: "h-web-0".into(),
        node: "node-1".into(),
        attrs: web_0_attrs(),
        num_v4: 1,
        ..Default::default()
    };
    Ipam::new(store.as_ref()).assign(&request).unwrap();
    store
}

fn web_0_attrs() -> Attributes {
    Attributes {
        namespace: Some("shop".into()),
        pod: Some("web-0".into()),
        pod_uid: Some("uid-1".into()),
        node: Some("node-1".into()),
        ..Default::default()
    }
}

/// The store of [`cluster_store`], a context on a mock API server, and the handle as judged.
struct Fixture {
    store: Arc<dyn Store>,
    ctx: Context,
    handle: Handle,
    judged: HandleRecord,
}

fn fixture() -> Fixture {
    let store = cluster_store();
    let (client, handle) = mock_client();
    let ctx = context(client, store.clone());
    let judged = the_handle(&store).unwrap();
    Fixture {
        store,
        ctx,
        handle,
        judged,
    }
}

fn context(client: Client, store: Arc<dyn Store>) -> Context {
    let gc = GcArgs {
        leak_grace_period: Duration::from_secs(60),
        gc_interval: Duration::from_secs(60),
        gc_max_releases: 100,
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    Context::new(client, Datastore::new(store), metrics, health, gc)
}

fn the_handle(store: &Arc<dyn Store>) -> Option<HandleRecord> {
    let handles = Datastore::new(store.clone()).pod_handles().unwrap();
    handles.into_iter().find(|h| h.id == "h-web-0")
}

/// A synced node cache holding `names`.
fn node_cache(names: &[&str]) -> reflector::Store<Node> {
    let (reader, mut writer) = reflector::store::<Node>();
    writer.apply_watcher_event(&Event::Init);
    for name in names {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        writer.apply_watcher_event(&Event::InitApply(node));
    }
    writer.apply_watcher_event(&Event::InitDone);
    reader
}

fn pod(uid: &str, node: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-0", "namespace": "shop", "uid": uid},
           "spec": {"nodeName": node, "containers": []},
           "status": {"phase": phase}})
}

const WEB_0: &str = "/api/v1/namespaces/shop/pods/web-0";
const NODE_1: &str = "/api/v1/nodes/node-1";

fn node_1() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
}

#[tokio::test]
async fn a_pod_found_on_the_fresh_get_keeps_its_address() {
    let Fixture {
        store,
        ctx,
        mut handle,
        judged,
    } = fixture();
    let nodes = node_cache(&["node-1"]);
    let server = async {
        // The cache missed it (created after the list, say); the API server has it.
        answer_get(&mut handle, WEB_0, Some(pod("uid-1", "node-1", "Running"))).await;
    };
    let (released, ()) = tokio::join!(run::release_if_still_leaked(&ctx, &judged, &nodes), server);
    assert_eq!(released.unwrap(), None);
    assert_eq!(
        the_handle(&store),
        Some(judged),
        "the live pod's handle was touched"
    );
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_pod_gone_on_the_fresh_get_gives_its_address_back() {
    let Fixture {
        store,
        ctx,
        mut handle,
        judged,
    } = fixture();
    let nodes = node_cache(&["node-1"]);
    let server = async {
        answer_get(&mut handle, WEB_0, None).await;
    };
    let (released, ()) = tokio::join!(run::release_if_still_leaked(&ctx, &judged, &nodes), server);
    let (reason, addresses) = released.unwrap().expect("released");
    assert_eq!(reason, LeakReason::PodGone);
    assert_eq!(addresses, vec![judged.addresses[0].ip]);
    assert_eq!(the_handle(&store), None);
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("tessera_gc_releases_total{reason=\"pod_gone\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_statefulset_pod_recreated_with_a_new_uid_frees_only_the_old_handle() {
    let Fixture {
        store,
        ctx,
        mut handle,
        judged,
    } = fixture();
    let nodes = node_cache(&["node-1"]);
    let server = async {
        answer_get(&mut handle, WEB_0, Some(pod("uid-2", "node-1", "Running"))).await;
    };
    let (released, ()) = tokio::join!(run::release_if_still_leaked(&ctx, &judged, &nodes), server);
    let (reason, _) = released.unwrap().expect("released");
    assert_eq!(
        reason,
        LeakReason::OtherUid {
            pod_uid: "uid-2".into()
        }
    );
    assert_eq!(the_handle(&store), None);
}

#[tokio::test]
async fn a_handle_rewritten_after_judging_is_not_released() {
    let Fixture {
        store,
        ctx,
        mut handle,
        mut judged,
    } = fixture();
    // Judged as the handle of an older pod: the record now belongs to uid-1.
    judged.attrs.pod_uid = Some("uid-0".into());
    let nodes = node_cache(&["node-1"]);
    let server = async {
        answer_get(&mut handle, WEB_0, None).await;
    };
    let (released, ()) = tokio::join!(run::release_if_still_leaked(&ctx, &judged, &nodes), server);
    assert_eq!(released.unwrap(), None);
    assert!(the_handle(&store).is_some());
}

#[tokio::test]
async fn a_node_missing_from_the_cache_is_looked_up_before_judging() {
    let Fixture {
        store,
        ctx,
        mut handle,
        judged,
    } = fixture();
    let nodes = node_cache(&[]);
    let server = async {
        answer_get(&mut handle, WEB_0, Some(pod("uid-1", "node-1", "Running"))).await;
        answer_get(&mut handle, NODE_1, Some(node_1())).await;
    };
    let (released, ()) = tokio::join!(run::release_if_still_leaked(&ctx, &judged, &nodes), server);
    assert_eq!(released.unwrap(), None);
    assert!(the_handle(&store).is_some());
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_deleted_node_is_forgotten_only_after_a_get_answers_not_found() {
    let Fixture {
        store,
        ctx,
        mut handle,
        ..
    } = fixture();
    let server = async {
        answer_get(&mut handle, NODE_1, None).await;
    };
    let (cleanup, ()) = tokio::join!(run::node_deleted(&ctx, "node-1"), server);
    let cleanup = cleanup.unwrap().expect("forgotten");
    assert_eq!((cleanup.handles, cleanup.addresses), (1, 1));
    assert!(cleanup.record_deleted);
    assert_eq!(the_handle(&store), None);
    assert!(store.get(&keys::node("node-1")).unwrap().is_none());
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_node_still_answering_its_get_is_kept() {
    let Fixture {
        store,
        ctx,
        mut handle,
        ..
    } = fixture();
    let server = async {
        answer_get(&mut handle, NODE_1, Some(node_1())).await;
    };
    let (cleanup, ()) = tokio::join!(run::node_deleted(&ctx, "node-1"), server);
    assert_eq!(cleanup.unwrap(), None);
    assert!(the_handle(&store).is_some());
    assert!(store.get(&keys::node("node-1")).unwrap().is_some());
}

// ---- Draining a pool ----

const WEB_RS: &str = "/apis/apps/v1/namespaces/shop/replicasets/web-1";
const WEB_DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";
const SHOP_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const DRAIN_REQUESTED_AT: &str = "2026-12-01T12:00:00Z";

/// A store whose pool `old` is disabled with a drain request, pod `shop/web-1-a` holding one
/// of its addresses.
fn draining_store() -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let request = json!({"requestedAt": DRAIN_REQUESTED_AT, "maxParallel": 1}).to_string();
    put(
        store.as_ref(),
        &keys::pool("old"),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "old", "annotations": {"tessera.dev/drain": request}},
               "spec": {"cidr": "10.8.0.0/24"}}),
    );
    let request = AssignRequest {
        handle: "h-web-1-a".into(),
        node: "node-1".into(),
        attrs: Attributes {
            namespace: Some("shop".into()),
            pod: Some("web-1-a".into()),
            node: Some("node-1".into()),
            ..Default::default()
        },
        num_v4: 1,
        ..Default::default()
    };
    Ipam::new(store.as_ref()).assign(&request).unwrap();
    // Disabled after the address was given, as a migration does.
    let mut pool: Value =
        serde_json::from_slice(&store.get(&keys::pool("old")).unwrap().unwrap().value).unwrap();
    pool["spec"]["disabled"] = json!(true);
    put(store.as_ref(), &keys::pool("old"), pool);
    store
}

/// A pod cache holding `shop/web-1-a` of ReplicaSet `web-1`.
fn web_pod_cache() -> reflector::Store<Pod> {
    let (reader, mut writer) = reflector::store::<Pod>();
    let pod: Pod = serde_json::from_value(json!({"metadata": {
        "name": "web-1-a", "namespace": "shop", "uid": "p",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                             "uid": "r", "controller": true}]}}))
    .unwrap();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(pod));
    writer.apply_watcher_event(&Event::InitDone);
    reader
}

fn web_replica_set() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
           "metadata": {"name": "web-1", "namespace": "shop", "uid": "r",
               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "web", "uid": "d", "controller": true}]},
           "spec": {"selector": {}}})
}

/// Deployment web, ready, its template carrying `annotations`.
fn web_deployment(generation: i64, annotations: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "namespace": "shop", "uid": "d",
                        "resourceVersion": "41", "generation": generation},
           "spec": {"replicas": 1, "selector": {},
                    "template": {"metadata": {"annotations": annotations}}},
           "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                      "availableReplicas": 1}})
}

fn drain_report(store: &Arc<dyn Store>) -> Value {
    let pool: Value =
        serde_json::from_slice(&store.get(&keys::pool("old")).unwrap().unwrap().value).unwrap();
    let raw = pool["metadata"]["annotations"]["tessera.dev/drain-status"]
        .as_str()
        .expect("a drain status")
        .to_string();
    serde_json::from_str(&raw).unwrap()
}

#[tokio::test]
async fn a_drain_restarts_the_deployment_with_a_patch_conditional_on_its_version_and_an_event() {
    let store = draining_store();
    let (client, mut handle) = mock_client();
    let ctx = context(client, store.clone());
    let pods = web_pod_cache();
    let server = async {
        answer_get(&mut handle, WEB_RS, Some(web_replica_set())).await;
        answer_get(
            &mut handle,
            WEB_DEPLOYMENT,
            Some(web_deployment(1, json!({}))),
        )
        .await;
        let (patch, reply) = expect(&mut handle, Method::PATCH, WEB_DEPLOYMENT).await;
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        let at: Timestamp = annotations["kubectl.kubernetes.io/restartedAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(at >= DRAIN_REQUESTED_AT.parse().unwrap());
        assert_eq!(
            annotations["tessera.dev/restarted-for"],
            format!("old {DRAIN_REQUESTED_AT}")
        );
        respond(
            reply,
            StatusCode::OK,
            &web_deployment(2, annotations.clone()),
        );
        let (event, reply) = expect(&mut handle, Method::POST, SHOP_EVENTS).await;
        assert_eq!(event["reason"], "PoolMigration");
        assert_eq!(event["regarding"]["name"], "web");
        assert!(event["note"].as_str().unwrap().contains("IP pool old"));
        respond(reply, StatusCode::CREATED, &event);
    };
    let (open, ()) = tokio::join!(tessera_controller::drain::pass_once(&ctx, &pods), server);
    assert!(open);
    expect_no_more(&mut handle).await;
    let report = drain_report(&store);
    assert_eq!(report["requestedAt"], DRAIN_REQUESTED_AT);
    assert_eq!(report["restarting"][0]["name"], "web");

    // The next pass finds it restarted for this drain and rolling out: nothing is patched.
    let restarted = json!({"kubectl.kubernetes.io/restartedAt": Timestamp::now().to_string(),
                           "tessera.dev/restarted-for": format!("old {DRAIN_REQUESTED_AT}")});
    let server = async {
        answer_get(&mut handle, WEB_RS, Some(web_replica_set())).await;
        answer_get(
            &mut handle,
            WEB_DEPLOYMENT,
            Some(web_deployment(2, restarted)),
        )
        .await;
    };
    let (open, ()) = tokio::join!(tessera_controller::drain::pass_once(&ctx, &pods), server);
    assert!(open);
    expect_no_more(&mut handle).await;
    assert_eq!(drain_report(&store)["restarting"][0]["name"], "web");
}

#[tokio::test]
async fn a_drain_request_that_cannot_be_read_restarts_nothing_and_says_why() {
    let store = draining_store();
    let mut pool: Value =
        serde_json::from_slice(&store.get(&keys::pool("old")).unwrap().unwrap().value).unwrap();
    pool["metadata"]["annotations"]["tessera.dev/drain"] = json!("{\"requestedAt\": \"soon\"}");
    put(store.as_ref(), &keys::pool("old"), pool);
    let (client, mut handle) = mock_client();
    let ctx = context(client, store.clone());
    assert!(tessera_controller::drain::pass_once(&ctx, &web_pod_cache()).await);
    expect_no_more(&mut handle).await;
    let report = drain_report(&store);
    let error = report["error"].as_str().expect("an error");
    assert!(
        error.contains("pool old") && error.contains("requestedAt"),
        "{error}"
    );
    assert!(report.get("restarting").is_none(), "{report}");
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("tessera_sync_errors_total{kind=\"drain_request\"} 1"),
        "{metrics}"
    );
}
