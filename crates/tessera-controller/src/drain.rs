//! Draining a pool: `tessera ipam migrate` disables a pool and asks, with the
//! [`DRAIN_ANNOTATION`] on its record, that the workloads whose pods hold its addresses be
//! restarted, so that their new pods take addresses of the enabled pools.
//!
//! Each pass, for every pool record with a request: the holders of the pool's CIDR are traced to
//! their pods (the pod cache) and owners (ReplicaSets, read fresh) with the core owner rules;
//! the workloads found are restarted as `kubectl rollout restart` does, at most
//! `maxParallel` not yet ready at a time, each once; the progress goes back on the record
//! ([`DRAIN_STATUS_ANNOTATION`]). Nothing is kept in memory between passes: a workload
//! restarted for this drain carries a `restartedAt` at or after the request's `requestedAt`, so
//! a new leader continues where the last one stopped and never restarts a workload twice.
//!
//! [`decide`] and the readiness rules are pure; [`run`] does the reading and writing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tessera_core::catalog::{Action, Catalog, CatalogError};
use tessera_core::drain::{
    self as rules, DrainRequest, DrainStatus, NotReady, Owner, PodOwner, StrandedPod, WorkloadRef,
    DRAIN_ANNOTATION, DRAIN_STATUS_ANNOTATION,
};
use tessera_core::ipam::{Holder, Ipam};
use tessera_core::resources::{Kind, Resource as Record};
use tessera_core::store::Store;
use tokio::sync::Notify;

use crate::datastore;
use crate::run::{Context, Error};

/// The pod template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// The pod template annotation naming the drain a restart was for ([`drain_id`]), set with
/// `restartedAt`: a workload restarted for one drain is restarted again for the next one (a
/// block-size change drains two pools), even when the second request's time is earlier
/// than the first restart.
pub const RESTARTED_FOR_ANNOTATION: &str = "tessera.dev/restarted-for";
/// The reason of the Event recorded on each restarted workload.
pub const EVENT_REASON: &str = "PoolMigration";
/// How often a pass runs while a drain is open (readiness is polled).
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the pools are looked at for a new request while none is open.
pub const IDLE_INTERVAL: Duration = Duration::from_secs(5);
/// Who the Events say recorded them.
const REPORTER: &str = "tessera-controller";
/// Pod changes come in bursts (a rollout): one pass after the burst.
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(500);

/// A restartable workload as a drain sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    /// Kind, namespace and name.
    pub workload: WorkloadRef,
    /// Its pod template's `restartedAt`, when it has one that reads as a time.
    pub restarted_at: Option<Timestamp>,
    /// Its pod template's [`RESTARTED_FOR_ANNOTATION`].
    pub restarted_for: Option<String>,
    /// Ready as `kubectl rollout status` judges it, or what it is waiting for.
    pub ready: Result<(), String>,
}

/// The pods (namespace, name) of each workload that hold an address of the pool.
pub type Holding = BTreeMap<WorkloadRef, Vec<(String, String)>>;

/// What one pass does for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The report to write (the workloads of `restart` are listed as restarting).
    pub status: DrainStatus,
    /// The workloads to restart now.
    pub restart: Vec<WorkloadRef>,
}

/// What names one drain: the pool and the request's time.
pub fn drain_id(pool: &str, request: &DrainRequest) -> String {
    format!("{pool} {}", request.requested_at)
}

/// When `state` was restarted for drain `id` requested at `requested_at`: its restart names
/// this drain, or (restarted by hand, `kubectl rollout restart`) came after the request.
fn restarted_for(state: &WorkloadState, id: &str, requested_at: Timestamp) -> Option<Timestamp> {
    let at = state.restarted_at?;
    let ours = match &state.restarted_for {
        Some(drain) => drain == id,
        None => at >= requested_at,
    };
    ours.then_some(at)
}

/// Decides which of `workloads` (those holding the pool's addresses, and those restarted for
/// this drain) to restart now, and the report. `id` names the drain ([`drain_id`]);
/// `holding` names the pods of each workload that still hold an address of the pool;
/// `stranded` the pods no restart moves.
pub fn decide(
    request: &DrainRequest,
    requested_at: Timestamp,
    id: &str,
    workloads: &[WorkloadState],
    holding: &Holding,
    mut stranded: Vec<StrandedPod>,
    now: Timestamp,
) -> Decision {
    let timeout = i64::try_from(request.ready_timeout_seconds).unwrap_or(i64::MAX);
    let mut status = DrainStatus {
        requested_at: request.requested_at.clone(),
        updated_at: now.to_string(),
        ..DrainStatus::default()
    };
    let mut pending = Vec::new();
    let mut sorted: Vec<&WorkloadState> = workloads.iter().collect();
    sorted.sort_by(|a, b| a.workload.cmp(&b.workload));
    sorted.dedup_by(|a, b| a.workload == b.workload);
    for state in sorted {
        let workload = state.workload.clone();
        let Some(at) = restarted_for(state, id, requested_at) else {
            pending.push(workload);
            continue;
        };
        match &state.ready {
            Ok(()) => {
                for (namespace, name) in holding.get(&workload).into_iter().flatten() {
                    stranded.push(StrandedPod {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        reason: format!(
                            "still holds an address of the pool after {workload} was restarted \
                             for this drain and became ready"
                        ),
                    });
                }
                status.restarted.push(workload);
            }
            Err(message) if now.as_second().saturating_sub(at.as_second()) > timeout => {
                status.not_ready.push(NotReady {
                    workload,
                    message: format!(
                        "not ready {} s after its restart: {message}",
                        request.ready_timeout_seconds
                    ),
                });
            }
            Err(_) => status.restarting.push(workload),
        }
    }
    // A workload that does not become ready stops the drain: a broken target pool must not
    // take every workload down with it.
    let slots = if status.not_ready.is_empty() {
        usize::try_from(request.max_parallel)
            .unwrap_or(usize::MAX)
            .saturating_sub(status.restarting.len())
    } else {
        0
    };
    let restart: Vec<WorkloadRef> = pending.drain(..slots.min(pending.len())).collect();
    status.restarting.extend(restart.iter().cloned());
    status.pending = pending;
    stranded.sort();
    stranded.dedup();
    status.stranded = stranded;
    Decision { status, restart }
}

/// Whether two reports say the same, whenever they were made.
pub fn same_report(a: &DrainStatus, b: &DrainStatus) -> bool {
    DrainStatus {
        updated_at: String::new(),
        ..a.clone()
    } == DrainStatus {
        updated_at: String::new(),
        ..b.clone()
    }
}

/// The `restartedAt` of a pod template (when it reads as a time) and the drain it was for.
fn restart_of(template: &PodTemplateSpec) -> (Option<Timestamp>, Option<String>) {
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    let get = |key: &str| annotations.and_then(|a| a.get(key));
    (
        get(RESTARTED_AT_ANNOTATION).and_then(|at| at.parse().ok()),
        get(RESTARTED_FOR_ANNOTATION).cloned(),
    )
}

/// `Err` while the controller has not seen the latest spec (`metadata.generation` ahead of
/// `status.observedGeneration`); passes when either is unknown.
fn observed(generation: Option<i64>, observed: Option<i64>) -> Result<(), String> {
    match (generation, observed) {
        (Some(g), Some(o)) if o < g => Err(format!(
            "waiting for the rollout to start (generation {g}, observed {o})"
        )),
        _ => Ok(()),
    }
}

/// A Deployment's rollout is done as `kubectl rollout status` judges it.
pub fn deployment_ready(d: &Deployment) -> Result<(), String> {
    let status = d.status.clone().unwrap_or_default();
    observed(d.metadata.generation, status.observed_generation)?;
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Err(format!("{updated} of {want} replicas updated"));
    }
    if replicas > updated {
        return Err(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return Err(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Ok(())
}

/// A StatefulSet's rollout is done as `kubectl rollout status` judges it.
pub fn stateful_set_ready(s: &StatefulSet) -> Result<(), String> {
    let status = s.status.clone().unwrap_or_default();
    observed(s.metadata.generation, status.observed_generation)?;
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    if updated < want {
        return Err(format!("{updated} of {want} pods updated"));
    }
    if ready < want {
        return Err(format!("{ready} of {want} pods ready"));
    }
    match (&status.current_revision, &status.update_revision) {
        (Some(current), Some(update)) if current != update => Err(format!(
            "revision {update} not yet current (current {current})"
        )),
        _ => Ok(()),
    }
}

/// A DaemonSet's rollout is done as `kubectl rollout status` judges it.
pub fn daemon_set_ready(d: &DaemonSet) -> Result<(), String> {
    let status = d.status.clone().unwrap_or_default();
    observed(d.metadata.generation, status.observed_generation)?;
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return Err(format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return Err(format!("{available} of {desired} updated pods available"));
    }
    Ok(())
}

/// What a holder of the pool's addresses leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trace {
    /// A pod of this workload (namespace, pod name).
    Workload(WorkloadRef, (String, String)),
    /// A pod of this ReplicaSet (namespace, ReplicaSet, pod name): its owner decides.
    ReplicaSet(String, String, String),
    /// A pod left to the admin.
    Stranded(StrandedPod),
}

/// Where a holder leads: `None` for a handle that is not a pod's (a gateway, a tunnel).
/// `pod_owner` gives the controlling owner of a pod in the cache (`None` when the pod is not
/// there, `Some(None)` when it has no owner).
pub fn trace(
    holder: &Holder,
    pod_owner: impl FnOnce(&str, &str) -> Option<Option<OwnerReference>>,
) -> Option<Trace> {
    let attrs = &holder.attrs;
    let (namespace, pod) = (attrs.namespace.clone()?, attrs.pod.clone()?);
    if let Some(workload) = rules::held_for_statefulset(holder) {
        return Some(Trace::Workload(workload, (namespace, pod)));
    }
    let stranded = |reason: String| StrandedPod {
        namespace: namespace.clone(),
        name: pod.clone(),
        reason,
    };
    let Some(owner) = pod_owner(&namespace, &pod) else {
        return Some(Trace::Stranded(stranded("pod no longer exists".into())));
    };
    let owner = owner.as_ref().map(|o| Owner {
        api_version: &o.api_version,
        kind: &o.kind,
        name: &o.name,
    });
    Some(match rules::pod_workload(&namespace, owner.as_ref()) {
        PodOwner::Workload(workload) => Trace::Workload(workload, (namespace, pod)),
        PodOwner::ReplicaSet(set) => Trace::ReplicaSet(namespace, set, pod),
        PodOwner::Stranded(reason) => Trace::Stranded(stranded(reason)),
    })
}

/// The controlling owner reference of an object.
pub fn controller_of(owners: Option<&Vec<OwnerReference>>) -> Option<OwnerReference> {
    owners?.iter().find(|o| o.controller == Some(true)).cloned()
}

/// A pool record with a drain request.
#[derive(Clone, Debug)]
struct Draining {
    pool: String,
    cidr: Result<IpNet, String>,
    disabled: bool,
    /// The annotation as written, to tell whether the request changed since it was read.
    raw_request: String,
    request: Result<DrainRequest, String>,
    previous: Option<DrainStatus>,
}

/// The pools with a drain request.
fn draining_pools(store: &dyn Store) -> Result<Vec<Draining>, datastore::Error> {
    let mut out = Vec::new();
    for record in Catalog::new(store).list(Kind::IPPool)? {
        let Record::IPPool(pool) = record else {
            continue;
        };
        let annotations = &pool.metadata.annotations;
        let Some(raw_request) = annotations.get(DRAIN_ANNOTATION).cloned() else {
            continue;
        };
        let name = pool.metadata.name.clone();
        let request = rules::drain_request(&name, annotations)
            .map_err(|e| e.to_string())
            .and_then(|r| r.ok_or_else(|| "no request".to_string()));
        out.push(Draining {
            cidr: pool
                .spec
                .cidr
                .parse()
                .map_err(|e| format!("pool {name}: spec.cidr {:?}: {e}", pool.spec.cidr)),
            disabled: pool.spec.disabled,
            previous: rules::drain_status(&name, annotations).ok().flatten(),
            pool: name,
            raw_request,
            request,
        });
    }
    Ok(out)
}

/// Writes `status` on `pool`'s record while it still carries the request `raw_request` (a
/// migration that withdrew or replaced it wins), read-modify-write with the revision. Returns
/// whether it wrote.
fn write_status(
    store: &dyn Store,
    pool: &str,
    raw_request: &str,
    status: &DrainStatus,
) -> Result<bool, datastore::Error> {
    let raw = serde_json::to_string(status).unwrap_or_default();
    let written = Catalog::new(store).modify(Kind::IPPool, pool, false, |current| {
        let mut record = current.clone();
        if let Record::IPPool(p) = &mut record {
            let annotations = &mut p.metadata.annotations;
            let stored = rules::drain_status(pool, annotations).ok().flatten();
            let same_request =
                annotations.get(DRAIN_ANNOTATION).map(String::as_str) == Some(raw_request);
            if same_request && !stored.is_some_and(|s| same_report(&s, status)) {
                annotations.insert(DRAIN_STATUS_ANNOTATION.to_string(), raw.clone());
            }
        }
        Ok(record)
    });
    match written {
        Ok((action, _)) => Ok(action != Action::Unchanged),
        // Deleted meanwhile: the migration is over.
        Err(CatalogError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Watches the pools for drain requests and works on them until the controller stops acting.
/// `pods` is the controller's pod cache (owner references kept); `pods_changed` fires on
/// every pod event.
pub async fn run(ctx: &Context, pods: &Cache<Pod>, pods_changed: &Notify) {
    if pods.wait_until_ready().await.is_err() {
        return;
    }
    let recorder = Recorder::new(ctx.client.clone(), Reporter::from(REPORTER));
    // Errors of each pool already logged, so that a lasting one is logged once per leader.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let open = pass(ctx, pods, &recorder, &mut reported).await;
        let wait = if open { DRAIN_INTERVAL } else { IDLE_INTERVAL };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = pods_changed.notified() => tokio::time::sleep(CHANGE_DEBOUNCE).await,
        }
    }
}

/// One pass over every pool with a drain request, as [`run`] makes them; returns whether any
/// is open.
pub async fn pass_once(ctx: &Context, pods: &Cache<Pod>) -> bool {
    let recorder = Recorder::new(ctx.client.clone(), Reporter::from(REPORTER));
    pass(ctx, pods, &recorder, &mut BTreeMap::new()).await
}

/// One pass over every pool with a request; returns whether any is open.
async fn pass(
    ctx: &Context,
    pods: &Cache<Pod>,
    recorder: &Recorder,
    reported: &mut BTreeMap<String, String>,
) -> bool {
    let draining = match ctx.blocking(|ds| draining_pools(ds.store())).await {
        Ok(draining) => draining,
        Err(error) => {
            ctx.report("reading the pools to drain", &error);
            return false;
        }
    };
    reported.retain(|pool, _| draining.iter().any(|d| &d.pool == pool));
    for pool in &draining {
        if let Err(error) = drain(ctx, pods, recorder, pool, reported).await {
            ctx.report(&format!("draining pool {}", pool.pool), &error);
        }
    }
    !draining.is_empty()
}

/// The request and the CIDR of a pool to act on, or why nothing is done.
fn actionable(pool: &Draining) -> Result<(&DrainRequest, IpNet), String> {
    let request = pool.request.as_ref().map_err(Clone::clone)?;
    let cidr = *pool.cidr.as_ref().map_err(Clone::clone)?;
    if !pool.disabled {
        return Err(format!(
            "pool {} is not disabled: restarting its workloads would give them its addresses \
             again; disable it (tessera ipam migrate does) or remove the annotation {}",
            pool.pool, DRAIN_ANNOTATION
        ));
    }
    Ok((request, cidr))
}

/// One pass over one pool.
async fn drain(
    ctx: &Context,
    pods: &Cache<Pod>,
    recorder: &Recorder,
    pool: &Draining,
    reported: &mut BTreeMap<String, String>,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let (request, cidr) = match actionable(pool) {
        Ok(found) => found,
        Err(why) => return refuse(ctx, pool, why, reported, now).await,
    };
    reported.remove(&pool.pool);
    let requested_at: Timestamp = request.requested_at.parse().unwrap_or(now);
    let holders = ctx
        .blocking(move |ds| Ok(Ipam::new(ds.store()).holders(cidr)?))
        .await?;
    let (holding, mut stranded) = trace_all(ctx, pods, &holders).await?;
    let mut wanted: BTreeSet<WorkloadRef> = holding.keys().cloned().collect();
    if let Some(previous) = &pool.previous {
        if previous.requested_at == request.requested_at {
            wanted.extend(previous.restarted.iter().cloned());
            wanted.extend(previous.restarting.iter().cloned());
            wanted.extend(previous.not_ready.iter().map(|n| n.workload.clone()));
        }
    }
    let found = fetch_all(ctx, wanted, &holding, &mut stranded).await?;
    let states: Vec<WorkloadState> = found.values().map(|f| f.state.clone()).collect();
    let id = drain_id(&pool.pool, request);
    let mut decision = decide(request, requested_at, &id, &states, &holding, stranded, now);
    let at = now.max(requested_at);
    for workload in std::mem::take(&mut decision.restart) {
        let fetched = &found[&workload];
        if let Err(error) = restart(ctx, recorder, &pool.pool, &id, fetched, at).await {
            ctx.report(&format!("restarting {workload}"), &error);
            decision.status.restarting.retain(|w| *w != workload);
            decision.status.pending.insert(0, workload);
        }
    }
    write(ctx, pool, decision.status).await
}

/// Logs and counts a request not acted on (once per reason), and says why on the pool.
async fn refuse(
    ctx: &Context,
    pool: &Draining,
    why: String,
    reported: &mut BTreeMap<String, String>,
    now: Timestamp,
) -> Result<(), Error> {
    if reported.get(&pool.pool) != Some(&why) {
        tracing::warn!(pool = %pool.pool, "drain request not acted on: {why}");
        ctx.metrics.count_error("drain_request");
        reported.insert(pool.pool.clone(), why.clone());
    }
    let requested_at = pool
        .request
        .as_ref()
        .map_or_else(|_| String::new(), |r| r.requested_at.clone());
    let status = DrainStatus {
        requested_at,
        updated_at: now.to_string(),
        error: Some(why),
        ..DrainStatus::default()
    };
    write(ctx, pool, status).await
}

/// Reads every `wanted` workload fresh; the pods of those that are gone join `stranded`.
async fn fetch_all(
    ctx: &Context,
    wanted: BTreeSet<WorkloadRef>,
    holding: &Holding,
    stranded: &mut Vec<StrandedPod>,
) -> Result<BTreeMap<WorkloadRef, Fetched>, Error> {
    let mut found = BTreeMap::new();
    for workload in wanted {
        let Some(fetched) = fetch(ctx, &workload).await? else {
            for (namespace, name) in holding.get(&workload).into_iter().flatten() {
                stranded.push(StrandedPod {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    reason: format!("owned by {workload}, which no longer exists"),
                });
            }
            continue;
        };
        found.insert(workload, fetched);
    }
    Ok(found)
}

/// Writes `status` on the pool unless it says what the pool's report already says.
async fn write(ctx: &Context, pool: &Draining, status: DrainStatus) -> Result<(), Error> {
    if pool
        .previous
        .as_ref()
        .is_some_and(|p| same_report(p, &status))
    {
        return Ok(());
    }
    let (name, raw) = (pool.pool.clone(), pool.raw_request.clone());
    let written = ctx
        .blocking(move |ds| write_status(ds.store(), &name, &raw, &status))
        .await?;
    if written {
        tracing::info!(pool = %pool.pool, "drain status updated");
    }
    Ok(())
}

/// The workload of each holder (with its pods still holding) and the pods left to the admin.
async fn trace_all(
    ctx: &Context,
    pods: &Cache<Pod>,
    holders: &[Holder],
) -> Result<(Holding, Vec<StrandedPod>), Error> {
    let mut holding = Holding::new();
    let mut stranded = Vec::new();
    // The Deployment of each ReplicaSet, read once per pass.
    let mut replica_sets: BTreeMap<(String, String), Result<WorkloadRef, String>> = BTreeMap::new();
    for holder in holders {
        let traced = trace(holder, |namespace, name| {
            let pod = pods.get(&ObjectRef::new(name).within(namespace))?;
            Some(controller_of(pod.metadata.owner_references.as_ref()))
        });
        let (workload, pod) = match traced {
            None => continue,
            Some(Trace::Stranded(pod)) => {
                stranded.push(pod);
                continue;
            }
            Some(Trace::Workload(workload, pod)) => (Ok(workload), pod),
            Some(Trace::ReplicaSet(namespace, set, pod)) => {
                let key = (namespace.clone(), set.clone());
                if !replica_sets.contains_key(&key) {
                    let owner = replica_set_owner(ctx, &namespace, &set).await?;
                    replica_sets.insert(key.clone(), owner);
                }
                (replica_sets[&key].clone(), (namespace, pod))
            }
        };
        match workload {
            Ok(workload) => holding.entry(workload).or_default().push(pod),
            Err(reason) => stranded.push(StrandedPod {
                namespace: pod.0,
                name: pod.1,
                reason,
            }),
        }
    }
    Ok((holding, stranded))
}

/// The Deployment owning ReplicaSet `namespace/name`, read fresh, or why there is none.
async fn replica_set_owner(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Result<WorkloadRef, String>, Error> {
    let api = Api::<ReplicaSet>::namespaced(ctx.client.clone(), namespace);
    let Some(set) = api.get_opt(name).await? else {
        return Ok(Err(format!(
            "owned by ReplicaSet {namespace}/{name}, which no longer exists"
        )));
    };
    let owner = controller_of(set.metadata.owner_references.as_ref());
    let owner = owner.as_ref().map(|o| Owner {
        api_version: &o.api_version,
        kind: &o.kind,
        name: &o.name,
    });
    Ok(rules::replicaset_workload(namespace, name, owner.as_ref()))
}

/// A workload read fresh from the API.
#[derive(Clone, Debug)]
struct Fetched {
    state: WorkloadState,
    reference: ObjectReference,
    resource_version: Option<String>,
}

/// A kind of workload a drain restarts.
trait Restartable:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    /// Its pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Ready as `kubectl rollout status` judges it.
    fn ready(&self) -> Result<(), String>;
}

impl Restartable for Deployment {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn ready(&self) -> Result<(), String> {
        deployment_ready(self)
    }
}

impl Restartable for StatefulSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn ready(&self) -> Result<(), String> {
        stateful_set_ready(self)
    }
}

impl Restartable for DaemonSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn ready(&self) -> Result<(), String> {
        daemon_set_ready(self)
    }
}

/// Reads `workload` fresh; `None` when it does not exist.
async fn fetch(ctx: &Context, workload: &WorkloadRef) -> Result<Option<Fetched>, Error> {
    match workload.kind.as_str() {
        "Deployment" => fetch_kind::<Deployment>(ctx, workload).await,
        "StatefulSet" => fetch_kind::<StatefulSet>(ctx, workload).await,
        "DaemonSet" => fetch_kind::<DaemonSet>(ctx, workload).await,
        other => {
            tracing::warn!(%workload, kind = other, "not a workload kind a drain restarts");
            Ok(None)
        }
    }
}

async fn fetch_kind<K: Restartable>(
    ctx: &Context,
    workload: &WorkloadRef,
) -> Result<Option<Fetched>, Error> {
    let api = Api::<K>::namespaced(ctx.client.clone(), &workload.namespace);
    let Some(object) = api.get_opt(&workload.name).await? else {
        return Ok(None);
    };
    let (restarted_at, restarted_for) = object.template().map(restart_of).unwrap_or_default();
    Ok(Some(Fetched {
        state: WorkloadState {
            workload: workload.clone(),
            restarted_at,
            restarted_for,
            ready: object.ready(),
        },
        reference: object.object_ref(&()),
        resource_version: object.resource_version(),
    }))
}

/// Merge-patches `workload`, of kind `K`.
async fn patch_kind<K: Restartable>(
    ctx: &Context,
    workload: &WorkloadRef,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let api = Api::<K>::namespaced(ctx.client.clone(), &workload.namespace);
    api.patch(
        &workload.name,
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// Restarts a workload as `kubectl rollout restart` does, only if it is still the version
/// read (a concurrent change, perhaps another leader's restart, makes it wait for the next
/// pass); records an Event on it and logs.
async fn restart(
    ctx: &Context,
    recorder: &Recorder,
    pool: &str,
    id: &str,
    fetched: &Fetched,
    at: Timestamp,
) -> Result<(), Error> {
    let workload = &fetched.state.workload;
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": fetched.resource_version},
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT_ANNOTATION: at.to_string(),
            RESTARTED_FOR_ANNOTATION: id,
        }}}}
    });
    match workload.kind.as_str() {
        "Deployment" => patch_kind::<Deployment>(ctx, workload, &patch).await?,
        "StatefulSet" => patch_kind::<StatefulSet>(ctx, workload, &patch).await?,
        "DaemonSet" => patch_kind::<DaemonSet>(ctx, workload, &patch).await?,
        _ => return Ok(()),
    }
    tracing::info!(%workload, %pool, restarted_at = %at,
        "restarted to move its pods off the drained pool");
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: EVENT_REASON.to_string(),
        note: Some(format!(
            "restarted to move its pods off IP pool {pool}, which is being drained"
        )),
        action: "Restart".to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &fetched.reference).await {
        ctx.report("recording an event", &Error::Kube(error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ipam::Attributes;

    fn workload(kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const REQUESTED: &str = "2026-12-01T10:00:00Z";
    const ID: &str = "old 2026-12-01T10:00:00Z";

    fn request(max_parallel: u32) -> DrainRequest {
        DrainRequest {
            requested_at: REQUESTED.into(),
            max_parallel,
            ready_timeout_seconds: 60,
        }
    }

    fn state(name: &str, restarted: Option<&str>, ready: bool) -> WorkloadState {
        WorkloadState {
            workload: workload("Deployment", name),
            restarted_at: restarted.map(at),
            restarted_for: None,
            ready: if ready {
                Ok(())
            } else {
                Err("1 of 3 replicas updated".into())
            },
        }
    }

    fn decide_at(max_parallel: u32, states: &[WorkloadState], now: &str) -> Decision {
        decide(
            &request(max_parallel),
            at(REQUESTED),
            ID,
            states,
            &BTreeMap::new(),
            Vec::new(),
            at(now),
        )
    }

    #[test]
    fn restarts_at_most_max_parallel_workloads_not_yet_ready() {
        let states = [
            state("a", None, true),
            state("b", None, true),
            state("c", None, true),
        ];
        let d = decide_at(2, &states, "2026-12-01T10:00:01Z");
        assert_eq!(
            d.restart,
            [workload("Deployment", "a"), workload("Deployment", "b")]
        );
        assert_eq!(d.status.restarting, d.restart);
        assert_eq!(d.status.pending, [workload("Deployment", "c")]);

        // a is still rolling out: with one slot, nothing more starts.
        let states = [
            state("a", Some("2026-12-01T10:00:01Z"), false),
            state("b", None, true),
        ];
        let d = decide_at(1, &states, "2026-12-01T10:00:05Z");
        assert!(d.restart.is_empty());
        assert_eq!(d.status.restarting, [workload("Deployment", "a")]);
        assert_eq!(d.status.pending, [workload("Deployment", "b")]);
    }

    #[test]
    fn a_workload_restarted_for_this_drain_is_never_restarted_again() {
        // Ready after its restart for this drain (by an earlier leader, say): done.
        let states = [
            state("a", Some("2026-12-01T10:00:00Z"), true),
            state("b", Some("2026-11-30T09:00:00Z"), true),
        ];
        let d = decide_at(1, &states, "2026-12-01T10:01:00Z");
        assert_eq!(d.status.restarted, [workload("Deployment", "a")]);
        // b was restarted before the request: it is restarted for this one.
        assert_eq!(d.restart, [workload("Deployment", "b")]);
        // The same workload listed twice (two of its pods hold addresses) is one workload.
        let twice = [state("c", None, true), state("c", None, true)];
        let d = decide_at(5, &twice, "2026-12-01T10:01:00Z");
        assert_eq!(d.restart, [workload("Deployment", "c")]);
    }

    #[test]
    fn a_workload_restarted_for_another_drain_is_restarted_for_this_one() {
        // A block-size change: restarted for the first pool's drain after the second
        // request's time (the command asked for both when it started).
        let mut earlier = state("a", Some("2026-12-01T10:00:30Z"), true);
        earlier.restarted_for = Some("first 2026-12-01T09:59:00Z".into());
        let mut ours = state("b", Some("2026-12-01T10:00:30Z"), true);
        ours.restarted_for = Some(ID.into());
        let d = decide_at(5, &[earlier, ours], "2026-12-01T10:01:00Z");
        assert_eq!(d.restart, [workload("Deployment", "a")]);
        assert_eq!(d.status.restarted, [workload("Deployment", "b")]);
    }

    #[test]
    fn a_workload_not_ready_in_time_stops_the_drain() {
        let states = [
            state("a", Some("2026-12-01T10:00:01Z"), false),
            state("b", None, true),
        ];
        let in_time = decide_at(5, &states, "2026-12-01T10:01:00Z");
        assert_eq!(in_time.restart, [workload("Deployment", "b")]);
        let late = decide_at(5, &states, "2026-12-01T10:01:02Z");
        assert!(late.restart.is_empty(), "nothing more restarts");
        assert_eq!(late.status.not_ready.len(), 1);
        assert_eq!(
            late.status.not_ready[0].workload,
            workload("Deployment", "a")
        );
        assert!(
            late.status.not_ready[0]
                .message
                .contains("1 of 3 replicas updated"),
            "{:?}",
            late.status.not_ready
        );
        assert_eq!(late.status.pending, [workload("Deployment", "b")]);
    }

    #[test]
    fn pods_of_a_ready_restarted_workload_still_holding_are_listed_for_the_admin() {
        let holding = BTreeMap::from([(
            workload("Deployment", "a"),
            vec![("shop".to_string(), "a-1".to_string())],
        )]);
        let bare = StrandedPod {
            namespace: "shop".into(),
            name: "debug".into(),
            reason: "no owner".into(),
        };
        let d = decide(
            &request(1),
            at(REQUESTED),
            ID,
            &[state("a", Some(REQUESTED), true)],
            &holding,
            vec![bare.clone()],
            at("2026-12-01T10:05:00Z"),
        );
        let names: Vec<&str> = d.status.stranded.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a-1", "debug"]);
        assert!(d.status.stranded[0].reason.contains("Deployment shop/a"));
    }

    #[test]
    fn reports_made_at_different_times_are_the_same_report() {
        let d = decide_at(1, &[state("a", None, true)], "2026-12-01T10:00:01Z");
        let later = decide_at(1, &[state("a", None, true)], "2026-12-01T10:00:09Z");
        assert!(same_report(&d.status, &later.status));
        let other = decide_at(1, &[state("b", None, true)], "2026-12-01T10:00:09Z");
        assert!(!same_report(&d.status, &other.status));
    }

    fn holder(pod: Option<&str>, statefulset: Option<&str>) -> Holder {
        Holder {
            handle: "h".into(),
            addresses: Vec::new(),
            attrs: Attributes {
                namespace: pod.map(|_| "shop".to_string()),
                pod: pod.map(str::to_string),
                statefulset: statefulset.map(str::to_string),
                ..Attributes::default()
            },
        }
    }

    fn owned_by(api_version: &str, kind: &str, name: &str) -> Option<Option<OwnerReference>> {
        Some(Some(OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }))
    }

    #[test]
    fn holders_lead_to_their_workload_or_to_the_admin() {
        let pod = ("shop".to_string(), "db-0".to_string());
        // Between two pods of a StatefulSet, its held addresses still lead to it.
        assert_eq!(
            trace(&holder(Some("db-0"), Some("db")), |_, _| None),
            Some(Trace::Workload(workload("StatefulSet", "db"), pod))
        );
        assert_eq!(
            trace(&holder(Some("web-5d8f-x"), None), |_, _| owned_by(
                "apps/v1",
                "ReplicaSet",
                "web-5d8f"
            )),
            Some(Trace::ReplicaSet(
                "shop".into(),
                "web-5d8f".into(),
                "web-5d8f-x".into()
            ))
        );
        let agent = trace(&holder(Some("agent-x"), None), |_, _| {
            owned_by("apps/v1", "DaemonSet", "agent")
        });
        assert!(
            matches!(agent, Some(Trace::Workload(w, _)) if w == workload("DaemonSet", "agent"))
        );
        let reason = |t: Option<Trace>| match t {
            Some(Trace::Stranded(p)) => p.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(trace(&holder(Some("debug"), None), |_, _| Some(None))),
            "no owner"
        );
        assert_eq!(
            reason(trace(&holder(Some("gone"), None), |_, _| None)),
            "pod no longer exists"
        );
        assert_eq!(
            reason(trace(&holder(Some("job-x"), None), |_, _| owned_by(
                "batch/v1", "Job", "nightly"
            ))),
            "owned by Job shop/nightly"
        );
        // Not a pod's handle (a gateway, a tunnel): nothing to restart or report.
        assert_eq!(trace(&holder(None, None), |_, _| None), None);
    }

    fn object<K: DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_deployment_is_ready_once_every_replica_is_updated_and_available() {
        let d = |generation: i64, status: serde_json::Value| -> Deployment {
            object(serde_json::json!({
                "metadata": {"name": "web", "generation": generation},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": status
            }))
        };
        let done = serde_json::json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 3, "availableReplicas": 3});
        assert_eq!(deployment_ready(&d(2, done.clone())), Ok(()));
        assert!(deployment_ready(&d(3, done))
            .unwrap_err()
            .contains("generation 3"));
        let surging = serde_json::json!({"observedGeneration": 2, "replicas": 4,
            "updatedReplicas": 3, "availableReplicas": 3});
        assert!(deployment_ready(&d(2, surging))
            .unwrap_err()
            .contains("1 old replicas"));
        let unavailable = serde_json::json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 3, "availableReplicas": 2});
        assert!(deployment_ready(&d(2, unavailable)).is_err());
        // No generation kept (a minimal API server): the counts alone decide.
        let plain: Deployment = object(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        }));
        assert_eq!(deployment_ready(&plain), Ok(()));
    }

    #[test]
    fn a_stateful_set_is_ready_once_its_update_revision_is_current() {
        let s = |status: serde_json::Value| -> StatefulSet {
            object(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 2, "selector": {}, "serviceName": "db", "template": {}},
                "status": status
            }))
        };
        let base = serde_json::json!({"observedGeneration": 2, "replicas": 2,
            "updatedReplicas": 2, "readyReplicas": 2,
            "currentRevision": "db-2", "updateRevision": "db-2"});
        assert_eq!(stateful_set_ready(&s(base.clone())), Ok(()));
        let mut rolling = base.clone();
        rolling["currentRevision"] = "db-1".into();
        assert!(stateful_set_ready(&s(rolling))
            .unwrap_err()
            .contains("db-2"));
        let mut half = base;
        half["readyReplicas"] = 1.into();
        assert!(stateful_set_ready(&s(half)).unwrap_err().contains("1 of 2"));
    }

    #[test]
    fn a_daemon_set_is_ready_once_every_node_runs_an_available_updated_pod() {
        let d = |updated: i32, available: i32| -> DaemonSet {
            object(serde_json::json!({
                "metadata": {"name": "agent", "generation": 1},
                "spec": {"selector": {}, "template": {}},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 2,
                    "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2,
                    "updatedNumberScheduled": updated, "numberAvailable": available}
            }))
        };
        assert_eq!(daemon_set_ready(&d(2, 2)), Ok(()));
        assert!(daemon_set_ready(&d(1, 2)).unwrap_err().contains("1 of 2"));
        assert!(daemon_set_ready(&d(2, 1)).is_err());
    }

    #[test]
    fn the_restart_time_is_read_from_the_pod_template() {
        let template: PodTemplateSpec = object(serde_json::json!({
            "metadata": {"annotations": {RESTARTED_AT_ANNOTATION: "2026-12-01T10:00:00Z"}}
        }));
        assert_eq!(restart_of(&template), (Some(at(REQUESTED)), None));
        let bad: PodTemplateSpec = object(serde_json::json!({
            "metadata": {"annotations": {RESTARTED_AT_ANNOTATION: "soon",
                RESTARTED_FOR_ANNOTATION: ID}}
        }));
        assert_eq!(restart_of(&bad), (None, Some(ID.to_string())));
    }
}
