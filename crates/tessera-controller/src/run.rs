//! The controller's loops: the watches of Nodes, Namespaces and Pods, the garbage-collection
//! passes and the datastore ping, run only while this replica holds the Lease.
//!
//! Decisions are made by [`crate::gc`] and [`crate::mirror`]; the datastore work by
//! [`crate::datastore`], always on the blocking thread pool. Failures are logged, counted
//! (`tessera_sync_errors_total{kind}`) and retried; none stops the controller.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tessera_core::ipam::HandleRecord;
use tokio::sync::Notify;

use crate::datastore::{self, Datastore, NodeCleanup};
use crate::gc::{self, LeakReason, LeakTracker, PodFacts, Verdict};
use crate::http::Health;
use crate::lease::{LeaseEnded, LeaseLock};
use crate::metrics::Metrics;
use crate::settings::GcArgs;

/// Waits between retries of a failed operation; after the last, it waits for the next pass.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];
/// Pod deletions come in bursts (a Deployment scaled down): one pass after the burst.
const DELETION_DEBOUNCE: Duration = Duration::from_secs(2);
/// How often readiness checks that the datastore answers.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Why the controller stopped acting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A datastore operation failed.
    #[error("datastore: {0}")]
    Datastore(#[from] datastore::Error),
    /// A request to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch failed (it is restarted with backoff).
    #[error("watch of {kind}: {source}")]
    Watch {
        /// What was watched.
        kind: &'static str,
        /// The failure.
        #[source]
        source: watcher::Error,
    },
    /// A blocking datastore call panicked or was cancelled.
    #[error("a datastore call did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// This replica no longer holds the Lease.
    #[error(transparent)]
    Lease(#[from] LeaseEnded),
    /// A loop that runs forever returned.
    #[error("the {0} loop stopped; restarting the controller")]
    Stopped(&'static str),
}

impl Error {
    /// The value of the `kind` label of `tessera_sync_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Datastore(e) => e.metric_label(),
            Error::Kube(_) => "kubernetes_api",
            Error::Watch { .. } => "watch",
            Error::Task(_) => "task",
            Error::Lease(_) => "lease",
            Error::Stopped(_) => "stopped",
        }
    }
}

/// What the loops share.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes API.
    pub client: Client,
    /// Tessera's datastore.
    pub datastore: Datastore,
    /// Where counts go.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports.
    pub health: Arc<Health>,
    /// Grace period, interval and cap of garbage collection.
    pub gc: GcArgs,
    /// Syncs that failed all their retries, tried again at the next pass.
    pending: Arc<Mutex<BTreeSet<Pending>>>,
}

/// A record whose sync failed, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Node(String),
    Namespace(String),
}

/// The caches the watches fill.
struct Caches {
    /// Every Node.
    nodes: reflector::Store<Node>,
    /// Every Namespace.
    namespaces: reflector::Store<Namespace>,
    /// Every Pod, trimmed to what garbage collection reads ([`slim_pod`]).
    pods: reflector::Store<Pod>,
    /// Every StatefulSet, for the addresses held for its pods ([`crate::sticky`]).
    statefulsets: reflector::Store<StatefulSet>,
}

impl Context {
    /// A context for the loops.
    pub fn new(
        client: Client,
        datastore: Datastore,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        gc: GcArgs,
    ) -> Self {
        Context {
            client,
            datastore,
            metrics,
            health,
            gc,
            pending: Arc::default(),
        }
    }

    /// Logs and counts a failure.
    pub(crate) fn report(&self, what: &str, error: &Error) {
        tracing::warn!(error = %error, "{what} failed");
        self.metrics.count_error(error.metric_label());
    }

    /// Runs `op` on the blocking thread pool with the datastore.
    pub(crate) async fn blocking<T, F>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Datastore) -> Result<T, datastore::Error> + Send + 'static,
    {
        let datastore = self.datastore.clone();
        Ok(tokio::task::spawn_blocking(move || op(&datastore)).await??)
    }

    /// Runs `op` until it succeeds or its retries are spent (`None`).
    async fn retried<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut delays = RETRY_DELAYS.into_iter();
        loop {
            match op().await {
                Ok(value) => return Some(value),
                Err(error) => self.report(what, &error),
            }
            let Some(delay) = delays.next() else {
                tracing::warn!("giving up on {what} until the next garbage-collection pass");
                return None;
            };
            tokio::time::sleep(delay).await;
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits for the Lease, then acts until it is lost or a loop fails for good; returns why it
/// stopped (the caller exits so that Kubernetes restarts the replica).
pub async fn lead(ctx: &Context, lock: &LeaseLock) -> Error {
    let mut last_holder = None;
    lock.acquire(|outcome| match outcome {
        Ok(holder) => {
            if holder != last_holder {
                tracing::info!(
                    holder = holder.as_deref().unwrap_or("(contended)"),
                    "standing by: another replica holds the lease"
                );
                last_holder.clone_from(&holder);
            }
            ctx.health.set_standby(holder);
        }
        Err(error) => ctx.report("reading the lease", &Error::Kube(error)),
    })
    .await;
    tracing::info!(identity = lock.identity(), "holding the lease; acting");
    ctx.metrics.set_leader(true);
    show_counters(&ctx.metrics);
    ctx.health.set_leader();
    tokio::select! {
        ended = lock.keep() => Error::Lease(ended),
        stopped = act(ctx) => stopped,
    }
}

/// Shows the release counters of every reason and the error counters of the API at 0 once
/// this replica acts, so that dashboards and `rate()` see them before the first event.
/// A standby replica shows none: it releases nothing.
fn show_counters(metrics: &Metrics) {
    let reasons = [
        LeakReason::PodGone,
        LeakReason::OtherUid {
            pod_uid: String::new(),
        },
        LeakReason::OtherNode {
            pod_node: String::new(),
        },
        LeakReason::Finished {
            phase: gc::Finish::Failed,
        },
        LeakReason::NodeGone,
    ];
    for reason in reasons {
        metrics.show_release_reason(reason.metric_label());
    }
    for kind in ["watch", "kubernetes_api"] {
        metrics.show_error_kind(kind);
    }
}

/// Runs the watches, the garbage-collection passes and the ping until one stops.
async fn act(ctx: &Context) -> Error {
    let (nodes, node_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (statefulsets, statefulset_writer) = reflector::store();
    let caches = Caches {
        nodes,
        namespaces,
        pods,
        statefulsets,
    };
    let pod_deleted = Notify::new();
    let pod_changed = Notify::new();
    tokio::select! {
        () = watch_nodes(ctx, node_writer) => Error::Stopped("node watch"),
        () = watch_namespaces(ctx, namespace_writer) => Error::Stopped("namespace watch"),
        () = watch_pods(ctx, pod_writer, &pod_deleted, &pod_changed) => Error::Stopped("pod watch"),
        () = crate::sticky::watch(ctx, statefulset_writer) => Error::Stopped("statefulset watch"),
        () = collect(ctx, &caches, &pod_deleted) => Error::Stopped("garbage collection"),
        () = ping(ctx) => Error::Stopped("datastore ping"),
        () = crate::crds::mirror_all(ctx) => Error::Stopped("pool and reservation mirror"),
        () = crate::drain::run(ctx, &caches.pods, &pod_changed) => Error::Stopped("pool drain"),
        stopped = crate::autopool::run(ctx) => stopped,
    }
}

/// The events of every `K` in the cluster, each trimmed by `trim` and then written into the
/// cache behind `writer`; failed watches restart with backoff.
fn reflected<K>(
    ctx: &Context,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim)
    .reflect(writer)
}

async fn watch_nodes(ctx: &Context, writer: reflector::store::Writer<Node>) {
    let mut events = pin!(reflected(ctx, writer, |node: &mut Node| {
        node.managed_fields_mut().clear();
    }));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => sync_node(ctx, &node).await,
            Ok(Event::Delete(node)) => {
                let name = node.name_any();
                let what = format!("forgetting deleted node {name}");
                // When every retry fails, the next pass compares the records with the nodes.
                ctx.retried(&what, || node_deleted(ctx, &name)).await;
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(source) => ctx.report(
                "watching nodes",
                &Error::Watch {
                    kind: "nodes",
                    source,
                },
            ),
        }
    }
}

async fn watch_namespaces(ctx: &Context, writer: reflector::store::Writer<Namespace>) {
    let mut events = pin!(reflected(ctx, writer, |namespace: &mut Namespace| {
        namespace.managed_fields_mut().clear();
    }));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(namespace) | Event::InitApply(namespace)) => {
                sync_namespace(ctx, &namespace).await;
            }
            Ok(Event::Delete(namespace)) => {
                let name = namespace.name_any();
                let what = format!("deleting the record of namespace {name}");
                ctx.retried(&what, || namespace_deleted(ctx, &name)).await;
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(source) => ctx.report(
                "watching namespaces",
                &Error::Watch {
                    kind: "namespaces",
                    source,
                },
            ),
        }
    }
}

/// Watches the pods into the cache; `deleted` fires on each deletion, `changed` on every
/// change.
async fn watch_pods(
    ctx: &Context,
    writer: reflector::store::Writer<Pod>,
    deleted: &Notify,
    changed: &Notify,
) {
    let mut events = pin!(reflected(ctx, writer, slim_pod));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Delete(_)) => {
                deleted.notify_one();
                changed.notify_one();
            }
            Ok(Event::Apply(_)) => changed.notify_one(),
            Ok(_) => {}
            Err(source) => ctx.report(
                "watching pods",
                &Error::Watch {
                    kind: "pods",
                    source,
                },
            ),
        }
    }
}

/// Keeps of a pod only what [`PodFacts`] reads and its controlling owner (whom a pool drain
/// restarts), so the cache of every pod in the cluster stays small.
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references =
        crate::drain::controller_of(meta.owner_references.as_ref()).map(|owner| vec![owner]);
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        reason: status.reason,
        ..PodStatus::default()
    });
}

/// Copies a Node's labels into its record; on failure, queues it for the next pass.
async fn sync_node(ctx: &Context, node: &Node) {
    let name = node.name_any();
    let labels = node.labels().clone();
    let what = format!("syncing node {name}");
    let synced = ctx
        .retried(&what, || {
            let (name, labels) = (name.clone(), labels.clone());
            ctx.blocking(move |ds| ds.sync_node(&name, &labels))
        })
        .await;
    match synced {
        Some(true) => tracing::info!(node = %name, "node labels copied into the node record"),
        Some(false) => {}
        None => {
            ctx.pending().insert(Pending::Node(name));
        }
    }
}

/// Copies a Namespace's labels and pool annotations; on failure, queues it for the next pass.
async fn sync_namespace(ctx: &Context, namespace: &Namespace) {
    let name = namespace.name_any();
    let labels = namespace.labels().clone();
    let annotations = namespace.annotations().clone();
    let what = format!("syncing namespace {name}");
    let synced = ctx
        .retried(&what, || {
            let (name, labels, annotations) = (name.clone(), labels.clone(), annotations.clone());
            ctx.blocking(move |ds| ds.sync_namespace(&name, &labels, &annotations))
        })
        .await;
    match synced {
        Some(true) => tracing::info!(namespace = %name, "namespace copied into its record"),
        Some(false) => {}
        None => {
            ctx.pending().insert(Pending::Namespace(name));
        }
    }
}

/// Forgets node `name` if a fresh GET confirms it is gone (a watch event alone may be stale):
/// releases its pods' addresses, gives back its blocks, deletes its record. `None` when the
/// node still exists.
pub async fn node_deleted(ctx: &Context, name: &str) -> Result<Option<NodeCleanup>, Error> {
    let api = Api::<Node>::all(ctx.client.clone());
    if api.get_opt(name).await?.is_some() {
        tracing::info!(node = %name, "node still exists (deleted and created again?); kept");
        return Ok(None);
    }
    let owned = name.to_string();
    let cleanup = ctx.blocking(move |ds| ds.forget_node(&owned)).await?;
    tracing::info!(
        node = %name,
        handles = cleanup.handles,
        addresses = cleanup.addresses,
        blocks = cleanup.blocks,
        record_deleted = cleanup.record_deleted,
        "node is gone from the cluster: released its pods' addresses and gave back its blocks"
    );
    for _ in 0..cleanup.handles {
        ctx.metrics
            .count_release(LeakReason::NodeGone.metric_label());
    }
    Ok(Some(cleanup))
}

/// Deletes the record of namespace `name` if a fresh GET confirms it is gone.
async fn namespace_deleted(ctx: &Context, name: &str) -> Result<(), Error> {
    let api = Api::<Namespace>::all(ctx.client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let owned = name.to_string();
    if ctx.blocking(move |ds| ds.delete_namespace(&owned)).await? {
        tracing::info!(namespace = %name, "namespace is gone: deleted its record");
    }
    Ok(())
}

/// Pings the datastore for `/readyz`.
async fn ping(ctx: &Context) {
    loop {
        let answer = ctx.blocking(|ds| ds.ping()).await;
        if let Err(error) = &answer {
            ctx.report("pinging the datastore", error);
        }
        ctx.health
            .set_datastore(answer.map_err(|error| error.to_string()));
        tokio::time::sleep(PING_INTERVAL).await;
    }
}

/// Runs a garbage-collection pass once the caches hold a full list, then after every
/// `--gc-interval`, sooner when candidates wait or a pod is deleted.
async fn collect(ctx: &Context, caches: &Caches, pod_deleted: &Notify) {
    // Judging against a cache that has not listed every pod would take live pods for gone.
    let synced = tokio::try_join!(
        caches.nodes.wait_until_ready(),
        caches.namespaces.wait_until_ready(),
        caches.pods.wait_until_ready(),
        caches.statefulsets.wait_until_ready(),
    );
    if synced.is_err() {
        return;
    }
    ctx.health.set_synced(true);
    tracing::info!("nodes, namespaces and pods listed; garbage collection starts");
    let mut tracker = LeakTracker::new();
    loop {
        pass(ctx, caches, &mut tracker).await;
        let delay = next_pass_delay(&ctx.gc, tracker.candidates());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = pod_deleted.notified() => tokio::time::sleep(DELETION_DEBOUNCE).await,
        }
    }
}

/// The wait before the next pass: the interval, or the grace period when candidates wait
/// and it is shorter, so that they are released on time.
fn next_pass_delay(gc: &GcArgs, candidates: usize) -> Duration {
    let grace = gc.leak_grace_period;
    let delay = if candidates > 0 && !grace.is_zero() {
        gc.gc_interval.min(grace)
    } else {
        gc.gc_interval
    };
    delay.max(Duration::from_secs(1))
}

/// One full pass: retry failed syncs, forget nodes and namespaces that are gone, judge every
/// pod handle, release those due, refresh the pool gauges.
async fn pass(ctx: &Context, caches: &Caches, tracker: &mut LeakTracker) {
    retry_pending(ctx, caches).await;
    if let Err(error) = forget_vanished(ctx, caches).await {
        ctx.report(
            "comparing node and namespace records with the cluster",
            &error,
        );
    }
    if let Err(error) = collect_leaks(ctx, caches, tracker).await {
        ctx.report("collecting leaked addresses", &error);
    }
    match ctx.blocking(|ds| ds.usage()).await {
        Ok(usage) => ctx.metrics.set_usage(&usage),
        Err(error) => ctx.report("reading pool usage", &error),
    }
}

async fn retry_pending(ctx: &Context, caches: &Caches) {
    let pending = std::mem::take(&mut *ctx.pending());
    for item in pending {
        // Objects deleted since are left to the deletion path.
        match item {
            Pending::Node(name) => {
                if let Some(node) = caches.nodes.get(&ObjectRef::new(&name)) {
                    sync_node(ctx, &node).await;
                }
            }
            Pending::Namespace(name) => {
                if let Some(namespace) = caches.namespaces.get(&ObjectRef::new(&name)) {
                    sync_namespace(ctx, &namespace).await;
                }
            }
        }
    }
}

/// Node and namespace records the controller wrote whose object is gone (deletions missed
/// by the watch, or made while the controller was down).
async fn forget_vanished(ctx: &Context, caches: &Caches) -> Result<(), Error> {
    for name in ctx.blocking(|ds| ds.mirrored_nodes()).await? {
        if caches.nodes.get(&ObjectRef::new(&name)).is_none() {
            node_deleted(ctx, &name).await?;
        }
    }
    for name in ctx.blocking(|ds| ds.mirrored_namespaces()).await? {
        if caches.namespaces.get(&ObjectRef::new(&name)).is_none() {
            namespace_deleted(ctx, &name).await?;
        }
    }
    Ok(())
}

/// Judges every pod handle against the cached pods, then releases the due ones that a fresh
/// look still finds leaked.
async fn collect_leaks(
    ctx: &Context,
    caches: &Caches,
    tracker: &mut LeakTracker,
) -> Result<(), Error> {
    let handles = ctx.blocking(|ds| ds.pod_handles()).await?;
    let now = Timestamp::now();
    for handle in &handles {
        let pod = cached_pod(&caches.pods, &handle.attrs);
        let node_exists = node_cached(&caches.nodes, handle.attrs.node.as_deref());
        let set = crate::sticky::cached_set(&caches.statefulsets, &handle.attrs);
        let verdict =
            crate::sticky::judge(&handle.attrs, set.as_ref(), pod.as_ref(), node_exists, now);
        tracker.observe(&handle.id, &handle.attrs, &verdict, now);
    }
    let by_id: HashMap<&str, &HandleRecord> = handles.iter().map(|h| (h.id.as_str(), h)).collect();
    tracker.retain_seen(|id| by_id.contains_key(id));
    ctx.metrics.set_gc_candidates(tracker.candidates());

    let cap = usize::try_from(ctx.gc.gc_max_releases).unwrap_or(usize::MAX);
    for due in tracker.due(now, ctx.gc.leak_grace_period, cap) {
        let Some(handle) = by_id.get(due.handle_id.as_str()) else {
            continue;
        };
        match release_if_still_leaked(ctx, handle, &caches.nodes).await {
            Ok(_) => tracker.forget(&due.handle_id),
            Err(error) => ctx.report(&format!("releasing handle {}", due.handle_id), &error),
        }
    }
    ctx.metrics.set_gc_candidates(tracker.candidates());
    Ok(())
}

fn cached_pod(
    pods: &reflector::Store<Pod>,
    attrs: &tessera_core::ipam::Attributes,
) -> Option<PodFacts> {
    let (namespace, name) = (attrs.namespace.as_deref()?, attrs.pod.as_deref()?);
    let pod = pods.get(&ObjectRef::new(name).within(namespace))?;
    Some(PodFacts::from_pod(&pod))
}

/// Whether the recorded node is in the cache; a record without a node counts as present.
fn node_cached(nodes: &reflector::Store<Node>, node: Option<&str>) -> bool {
    node.is_none_or(|name| nodes.get(&ObjectRef::new(name)).is_some())
}

/// Releases `handle` if a fresh GET of its pod (and of its node, when the cache lacks it)
/// still finds it leaked, and only if its record is still the one judged. Returns the reason
/// and the released addresses, or `None` when it was kept.
pub async fn release_if_still_leaked(
    ctx: &Context,
    handle: &HandleRecord,
    nodes: &reflector::Store<Node>,
) -> Result<Option<(LeakReason, Vec<IpAddr>)>, Error> {
    let attrs = &handle.attrs;
    let (Some(namespace), Some(pod_name)) = (attrs.namespace.as_deref(), attrs.pod.as_deref())
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    let fresh = pods
        .get_opt(pod_name)
        .await?
        .map(|pod| PodFacts::from_pod(&pod));
    let node_exists = match attrs.node.as_deref() {
        Some(node) if !node_cached(nodes, Some(node)) => Api::<Node>::all(ctx.client.clone())
            .get_opt(node)
            .await?
            .is_some(),
        _ => true,
    };
    let set = crate::sticky::fresh_set(ctx, attrs).await?;
    let now = Timestamp::now();
    let reason = match crate::sticky::judge(attrs, set.as_ref(), fresh.as_ref(), node_exists, now) {
        Verdict::Leaked(reason) => reason,
        Verdict::Keep(why) => {
            tracing::info!(handle = %handle.id, pod = %format!("{namespace}/{pod_name}"), ?why,
                "kept: a fresh look at the pod shows it is not leaked");
            return Ok(None);
        }
    };
    let record = (*handle).clone();
    let released = ctx
        .blocking(move |ds| ds.release_if_unchanged(&record))
        .await?;
    if released.is_empty() {
        tracing::info!(handle = %handle.id, "kept: the handle changed since it was judged");
        return Ok(None);
    }
    log_release(handle, &reason, &released);
    ctx.metrics.count_release(reason.metric_label());
    Ok(Some((reason, released)))
}

fn log_release(handle: &HandleRecord, reason: &LeakReason, released: &[IpAddr]) {
    let addresses: Vec<String> = released.iter().map(IpAddr::to_string).collect();
    tracing::info!(
        handle = %handle.id,
        namespace = handle.attrs.namespace.as_deref().unwrap_or(""),
        pod = handle.attrs.pod.as_deref().unwrap_or(""),
        node = handle.attrs.node.as_deref().unwrap_or(""),
        addresses = %addresses.join(","),
        reason = reason.metric_label(),
        "released leaked addresses: {reason}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gc_args(grace: u64, interval: u64) -> GcArgs {
        GcArgs {
            leak_grace_period: Duration::from_secs(grace),
            gc_interval: Duration::from_secs(interval),
            gc_max_releases: 100,
        }
    }

    #[test]
    fn waiting_candidates_bring_the_next_pass_forward_to_their_grace_period() {
        assert_eq!(
            next_pass_delay(&gc_args(900, 300), 0),
            Duration::from_secs(300)
        );
        assert_eq!(
            next_pass_delay(&gc_args(900, 300), 3),
            Duration::from_secs(300)
        );
        assert_eq!(
            next_pass_delay(&gc_args(20, 300), 0),
            Duration::from_secs(300)
        );
        assert_eq!(
            next_pass_delay(&gc_args(20, 300), 1),
            Duration::from_secs(20)
        );
        // Grace 0: leaked handles are never due, so they do not speed passes up.
        assert_eq!(
            next_pass_delay(&gc_args(0, 300), 5),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_slim_pod_keeps_every_fact_garbage_collection_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"}, "annotations": {"big": "x".repeat(1000)},
                "deletionTimestamp": "2026-12-01T12:00:00Z",
                "deletionGracePeriodSeconds": 30,
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                     "uid": "r", "controller": true}
                ]
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Failed", "reason": "Evicted", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        let facts = PodFacts::from_pod(&pod);
        slim_pod(&mut pod);
        assert_eq!(PodFacts::from_pod(&pod), facts);
        assert_eq!(pod.name_any(), "web-0");
        assert_eq!(pod.namespace().as_deref(), Some("shop"));
        assert!(pod.metadata.annotations.is_none() && pod.metadata.managed_fields.is_none());
        assert!(pod.spec.unwrap().containers.is_empty());
        // Only the controlling owner stays: a pool drain restarts it.
        let owners = pod.metadata.owner_references.unwrap();
        assert_eq!((owners.len(), owners[0].kind.as_str()), (1, "ReplicaSet"));
    }
}
