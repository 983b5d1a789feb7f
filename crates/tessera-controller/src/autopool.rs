//! Auto pools (Spiderpool's SpiderSubnet feature): Deployments, ReplicaSets of their own,
//! StatefulSets, DaemonSets, Jobs of their own and CronJobs whose pod template names a
//! SpiderSubnet
//! (`ipam.spidernet.io/subnet` or `subnets`) get a SpiderIPPool per interface and family, cut
//! from that subnet, sized to their replicas (`ipam.spidernet.io/ippool-ip-number`) and open
//! only to their pods (`podAffinity` on the workload labels the CNI plugin gives a pod).
//!
//! [`plan`] decides, purely, which pools a workload wants; [`reconcile`] makes one pool so in
//! the datastore (grow from the subnet's free addresses, shrink by free addresses only);
//! [`run`] watches the workloads and runs a pass after every change and every
//! [`PASS_INTERVAL`], which also deletes the pools of deleted workloads once their addresses
//! are released (unless `ipam.spidernet.io/ippool-reclaim` is `"false"`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tessera_core::autopool::{
    self as rules, App, IpNumber, Shortage, INTERFACE_LABEL, IP_VERSION_LABEL, OWNER_GV_LABEL,
    OWNER_KIND_LABEL, OWNER_NAMESPACE_LABEL, OWNER_NAME_LABEL, OWNER_SUBNET_LABEL, OWNER_UID_LABEL,
    POOL_CIDR_LABEL, RECLAIM_LABEL,
};
use tessera_core::catalog::{Catalog, CatalogError};
use tessera_core::ipam::Ipam;
use tessera_core::ranges::IpRangeSet;
use tessera_core::resources::meta::{LabelSelector, ObjectMeta};
use tessera_core::resources::spider::{SpiderIPPool, SpiderIPPoolSpec, SpiderSubnetSpec};
use tessera_core::resources::{Kind, Resource as Record};
use tessera_core::store::{Op, Store, StoreError};
use tokio::sync::Notify;

use crate::datastore;
use crate::run::{Context, Error};

/// How often a pass runs without a change: pools of deleted workloads whose addresses were
/// in use are tried again, and resizes that failed are retried.
pub const PASS_INTERVAL: Duration = Duration::from_secs(10);
/// Changes come in bursts (a Deployment and its ReplicaSet): one pass after the burst.
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(200);

/// A workload as auto pools see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Kind, namespace and name.
    pub app: App,
    /// The workload's uid (the end of its pools' names).
    pub uid: String,
    /// How many pods it wants (DaemonSets: the nodes it runs on).
    pub replicas: u64,
    /// Its pod template's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Workload {
    fn new<K: Resource<DynamicType = ()>>(
        object: &K,
        replicas: Option<i32>,
        template: &PodTemplateSpec,
    ) -> Option<Self> {
        let annotations = template.metadata.as_ref()?.annotations.clone()?;
        if !rules::names_subnet(&annotations) {
            return None;
        }
        let api_version = K::api_version(&());
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        Some(Workload {
            app: App {
                group: group.to_string(),
                version: version.to_string(),
                kind: K::kind(&()).into_owned(),
                namespace: object.meta().namespace.clone().unwrap_or_default(),
                name: object.meta().name.clone().unwrap_or_default(),
            },
            uid: object.meta().uid.clone().unwrap_or_default(),
            replicas: u64::try_from(replicas.unwrap_or(1)).unwrap_or(0),
            annotations,
        })
    }

    /// `Deployment shop/web`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.app.kind, self.app.namespace, self.app.name)
    }
}

/// The workload of a Deployment with auto pools.
pub fn from_deployment(d: &Deployment) -> Option<Workload> {
    let spec = d.spec.as_ref()?;
    Workload::new(d, Some(spec.replicas.unwrap_or(1)), &spec.template)
}

/// The workload of a ReplicaSet with auto pools, unless a Deployment owns it (the
/// Deployment's pools serve its pods).
pub fn from_replica_set(r: &ReplicaSet) -> Option<Workload> {
    let owned = r.owner_references().iter().any(|o| o.kind == "Deployment");
    let spec = r.spec.as_ref().filter(|_| !owned)?;
    Workload::new(r, Some(spec.replicas.unwrap_or(1)), spec.template.as_ref()?)
}

/// The workload of a StatefulSet with auto pools.
pub fn from_stateful_set(s: &StatefulSet) -> Option<Workload> {
    let spec = s.spec.as_ref()?;
    Workload::new(s, Some(spec.replicas.unwrap_or(1)), &spec.template)
}

/// The workload of a DaemonSet with auto pools: one address per node it runs on.
pub fn from_daemon_set(d: &DaemonSet) -> Option<Workload> {
    let nodes = d.status.as_ref().map_or(0, |s| s.desired_number_scheduled);
    Workload::new(d, Some(nodes), &d.spec.as_ref()?.template)
}

/// The workload of a Job with auto pools: one address per pod it runs at once. None for a
/// Job a CronJob started: the CronJob's pools serve its pods.
pub fn from_job(j: &Job) -> Option<Workload> {
    let owned = j.owner_references().iter().any(|o| o.kind == "CronJob");
    let spec = j.spec.as_ref().filter(|_| !owned)?;
    Workload::new(j, Some(spec.parallelism.unwrap_or(1)), &spec.template)
}

/// The workload of a CronJob with auto pools, whose pools serve every Job it starts: one
/// address per pod its job template runs at once.
pub fn from_cron_job(c: &CronJob) -> Option<Workload> {
    let job = c.spec.as_ref()?.job_template.spec.as_ref()?;
    Workload::new(c, Some(job.parallelism.unwrap_or(1)), &job.template)
}

/// One pool a workload wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPlan {
    /// The name a new pool gets.
    pub name: String,
    /// The start of the names of every pool of this workload, interface and family.
    pub prefix: String,
    /// IPv6 or IPv4.
    pub v6: bool,
    /// The pod interface.
    pub interface: String,
    /// The SpiderSubnet it is cut from.
    pub subnet: String,
    /// How many addresses it holds.
    pub size: u64,
    /// Whether deleting the workload deletes it.
    pub reclaim: bool,
    /// The workload.
    pub app: App,
    /// The workload's uid.
    pub uid: String,
}

impl PoolPlan {
    /// The pool's labels, as Spiderpool sets them (`ippool-cidr` is added from the subnet).
    fn labels(&self) -> BTreeMap<String, String> {
        let version = if self.v6 { "IPv6" } else { "IPv4" };
        [
            (OWNER_GV_LABEL, self.app.gv_label()),
            (OWNER_KIND_LABEL, self.app.kind.clone()),
            (OWNER_NAMESPACE_LABEL, self.app.namespace.clone()),
            (OWNER_NAME_LABEL, self.app.name.clone()),
            (OWNER_UID_LABEL, self.uid.clone()),
            (OWNER_SUBNET_LABEL, self.subnet.clone()),
            (INTERFACE_LABEL, self.interface.clone()),
            (IP_VERSION_LABEL, version.to_string()),
            (RECLAIM_LABEL, self.reclaim.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Whether `pool` is this plan's pool: made for a workload of the same kind, namespace
    /// and name (perhaps an earlier one that kept it), interface and family.
    fn owns(&self, pool: &SpiderIPPool) -> bool {
        let labels = &pool.metadata.labels;
        let is = |key: &str, value: &str| labels.get(key).map(String::as_str) == Some(value);
        is(OWNER_KIND_LABEL, &self.app.kind)
            && is(OWNER_NAMESPACE_LABEL, &self.app.namespace)
            && is(OWNER_NAME_LABEL, &self.app.name)
            && is(INTERFACE_LABEL, &self.interface)
            && is(IP_VERSION_LABEL, if self.v6 { "IPv6" } else { "IPv4" })
    }

    fn describe(&self) -> String {
        format!("{} {}/{}", self.app.kind, self.app.namespace, self.app.name)
    }
}

/// The pools `workload` wants: one per interface and family its annotations name a subnet
/// for. The error says which annotation is wrong and how.
pub fn plan(workload: &Workload) -> Result<Vec<PoolPlan>, String> {
    let choices = rules::subnet_choices(&workload.annotations)?;
    let size = IpNumber::from_annotations(&workload.annotations)?.size(workload.replicas);
    let reclaim = rules::reclaim(&workload.annotations)?;
    let mut plans = Vec::new();
    for choice in &choices {
        for v6 in [false, true] {
            let Some(subnet) = choice.subnet(v6) else {
                continue;
            };
            plans.push(PoolPlan {
                name: rules::pool_name(v6, &workload.app.name, &choice.interface, &workload.uid),
                prefix: rules::pool_name_prefix(v6, &workload.app.name, &choice.interface),
                v6,
                interface: choice.interface.clone(),
                subnet: subnet.to_string(),
                size,
                reclaim,
                app: workload.app.clone(),
                uid: workload.uid.clone(),
            });
        }
    }
    Ok(plans)
}

/// What [`reconcile`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pool had the wanted size.
    Unchanged,
    /// The pool was created, or grew or shrank, from `from` addresses to `to`.
    Resized {
        /// The pool's name.
        pool: String,
        /// Addresses before.
        from: u128,
        /// Addresses after.
        to: u128,
    },
    /// The subnet had too few free addresses; the pool was left as it was.
    Short(Shortage),
    /// The SpiderSubnet the workload names does not exist.
    NoSubnet,
}

/// Makes the pool of `plan` hold `plan.size` addresses: creates it from the lowest free
/// addresses of its subnet, grows it the same way, or shrinks it by its highest addresses
/// that are not allocated (fewer when too many are in use). Records a shortage for the CNI
/// plugin's error, and clears it once the pool is whole.
pub fn reconcile(store: &dyn Store, plan: &PoolPlan) -> Result<Outcome, datastore::Error> {
    let check = tessera_core::ipam::spider_in_use_check(store);
    let catalog = Catalog::new(store).with_in_use_check(&check);
    let subnet = match catalog.get(Kind::SpiderSubnet, &plan.subnet) {
        Ok(Record::SpiderSubnet(subnet)) => subnet,
        Ok(_) | Err(CatalogError::NotFound { .. }) => return Ok(Outcome::NoSubnet),
        Err(e) => return Err(e.into()),
    };
    let pools: Vec<SpiderIPPool> = catalog
        .list(Kind::SpiderIPPool)?
        .into_iter()
        .filter_map(|r| match r {
            Record::SpiderIPPool(p) => Some(p),
            _ => None,
        })
        .collect();
    let existing = pools.iter().find(|p| plan.owns(p));
    let current = existing
        .and_then(|p| IpRangeSet::parse(&p.spec.ips, plan.v6).ok())
        .unwrap_or_else(|| IpRangeSet::empty(plan.v6));
    let (have, want) = (current.len(), u128::from(plan.size));
    let ips = if have < want {
        let reserved = reserved(&catalog, plan.v6)?;
        let free = rules::subnet_free(&subnet.spec, pools.iter().map(|p| &p.spec), &reserved);
        let need = want - have;
        if free.len() < need {
            let count = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
            let shortage = Shortage {
                subnet: plan.subnet.clone(),
                asked: count(need),
                free: count(free.len()),
                workload: plan.describe(),
            };
            record_shortage(store, plan, Some(&shortage))?;
            return Ok(Outcome::Short(shortage));
        }
        let mut grown = current.clone();
        for &(a, b) in free.lowest(need).ranges() {
            grown.insert(a, b);
        }
        grown
    } else if have > want {
        let name = existing.map_or(plan.name.as_str(), |p| p.metadata.name.as_str());
        let allocated = Ipam::new(store).spider_in_use(name, &current)?.addresses;
        current.subtract(&current.subtract(&allocated).highest(have - want))
    } else {
        current.clone()
    };
    let pool = pool_record(plan, existing, &subnet.spec, &ips);
    let unchanged =
        existing.is_some_and(|e| e.spec == pool.spec && e.metadata.labels == pool.metadata.labels);
    if !unchanged {
        catalog.apply(&[Record::SpiderIPPool(pool.clone())])?;
    }
    record_shortage(store, plan, None)?;
    Ok(if unchanged {
        Outcome::Unchanged
    } else {
        Outcome::Resized {
            pool: pool.metadata.name,
            from: have,
            to: ips.len(),
        }
    })
}

/// The pool as it should be stored: the existing one (whatever else its owner set) with
/// these addresses and the current workload's labels, or a new one with the subnet's
/// gateway, routes and VLAN.
fn pool_record(
    plan: &PoolPlan,
    existing: Option<&SpiderIPPool>,
    subnet: &SpiderSubnetSpec,
    ips: &IpRangeSet,
) -> SpiderIPPool {
    let mut pool = existing.cloned().unwrap_or_else(|| SpiderIPPool {
        metadata: ObjectMeta {
            name: plan.name.clone(),
            ..ObjectMeta::default()
        },
        spec: SpiderIPPoolSpec {
            ip_version: Some(if plan.v6 { 6 } else { 4 }),
            subnet: subnet.subnet.clone(),
            gateway: subnet.gateway.clone(),
            routes: subnet.routes.clone(),
            vlan: subnet.vlan,
            ..SpiderIPPoolSpec::default()
        },
    });
    pool.metadata.labels.extend(plan.labels());
    pool.metadata.labels.insert(
        POOL_CIDR_LABEL.to_string(),
        rules::cidr_label(&subnet.subnet),
    );
    pool.spec.ips = ips.to_strings();
    pool.spec.pod_affinity = Some(LabelSelector {
        match_labels: plan.app.pod_labels(),
        ..LabelSelector::default()
    });
    pool
}

/// The addresses SpiderReservedIPs keep back, of one family.
fn reserved<S: Store + ?Sized>(
    catalog: &Catalog<'_, S>,
    v6: bool,
) -> Result<IpRangeSet, datastore::Error> {
    let mut out = IpRangeSet::empty(v6);
    for record in catalog.list(Kind::SpiderReservedIP)? {
        if let Record::SpiderReservedIP(r) = record {
            if r.spec.is_v6() == v6 {
                for &(a, b) in r.spec.reserved_ips().unwrap_or_default().ranges() {
                    out.insert(a, b);
                }
            }
        }
    }
    Ok(out)
}

/// Writes (or with `None` clears) the shortage the CNI plugin reports for this pool.
fn record_shortage(
    store: &dyn Store,
    plan: &PoolPlan,
    shortage: Option<&Shortage>,
) -> Result<(), StoreError> {
    let key = rules::shortage_key(&plan.app.namespace, &plan.prefix);
    let op = match shortage {
        Some(s) => Op::Put(key, serde_json::to_vec(s).unwrap_or_default()),
        None if store.get(&key)?.is_some() => Op::Delete(key),
        None => return Ok(()),
    };
    store.txn(&[], &[op]).map(|_| ())
}

/// Deletes the shortages recorded for pools no workload wants any more (`wanted` holds the
/// keys of those still wanted), so that a later workload of the same name does not inherit one.
pub fn forget_shortages(store: &dyn Store, wanted: &BTreeSet<String>) -> Result<(), StoreError> {
    let stale: Vec<Op> = store
        .range(rules::SHORTAGE_PREFIX)?
        .into_iter()
        .filter(|kv| !wanted.contains(&kv.key))
        .map(|kv| Op::Delete(kv.key))
        .collect();
    // Well below etcd's 128 operations per transaction.
    for chunk in stale.chunks(64) {
        store.txn(&[], chunk)?;
    }
    Ok(())
}

/// Deletes the auto pools whose workload is gone (no uid in `live`) and which are to be
/// reclaimed, each only once none of its addresses is allocated. Returns the deleted names.
pub fn reclaim_orphans(
    store: &dyn Store,
    live: &BTreeSet<String>,
) -> Result<Vec<String>, datastore::Error> {
    let check = tessera_core::ipam::spider_in_use_check(store);
    let catalog = Catalog::new(store).with_in_use_check(&check);
    let mut deleted = Vec::new();
    for record in catalog.list(Kind::SpiderIPPool)? {
        // Pools applied with kubectl belong to their objects, whatever their labels say.
        if tessera_core::catalog::is_managed_by_kubernetes(&record) {
            continue;
        }
        let Record::SpiderIPPool(pool) = record else {
            continue;
        };
        let labels = &pool.metadata.labels;
        let (Some(uid), Some(reclaim)) = (labels.get(OWNER_UID_LABEL), labels.get(RECLAIM_LABEL))
        else {
            continue;
        };
        if live.contains(uid) || reclaim != "true" {
            continue;
        }
        let name = pool.metadata.name.clone();
        match catalog.delete(&[(Kind::SpiderIPPool, name.clone())], true) {
            Ok(_) => deleted.push(name),
            // Addresses still allocated: tried again at the next pass.
            Err(CatalogError::PoolInUse { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// The caches of every workload kind with auto pools.
struct Caches {
    deployments: Cache<Deployment>,
    replica_sets: Cache<ReplicaSet>,
    stateful_sets: Cache<StatefulSet>,
    daemon_sets: Cache<DaemonSet>,
    jobs: Cache<Job>,
    cron_jobs: Cache<CronJob>,
}

impl Caches {
    /// Every workload with auto pools, with a reference for its Events.
    fn workloads(&self) -> Vec<(Workload, ObjectReference)> {
        fn each<K: Resource<DynamicType = ()> + Clone>(
            cache: &Cache<K>,
            to: fn(&K) -> Option<Workload>,
        ) -> Vec<(Workload, ObjectReference)> {
            cache
                .state()
                .iter()
                .filter_map(|k| Some((to(k)?, k.object_ref(&()))))
                .collect()
        }
        let mut out = each(&self.deployments, from_deployment);
        out.extend(each(&self.replica_sets, from_replica_set));
        out.extend(each(&self.stateful_sets, from_stateful_set));
        out.extend(each(&self.daemon_sets, from_daemon_set));
        out.extend(each(&self.jobs, from_job));
        out.extend(each(&self.cron_jobs, from_cron_job));
        out
    }

    /// The uids of every workload of these kinds, whatever its annotations (a workload
    /// whose subnet annotation was removed keeps its pools).
    fn uids(&self) -> BTreeSet<String> {
        fn each<K: Resource<DynamicType = ()> + Clone>(cache: &Cache<K>) -> Vec<String> {
            cache
                .state()
                .iter()
                .filter_map(|k| k.meta().uid.clone())
                .collect()
        }
        let mut out: BTreeSet<String> = each(&self.deployments).into_iter().collect();
        out.extend(each(&self.replica_sets));
        out.extend(each(&self.stateful_sets));
        out.extend(each(&self.daemon_sets));
        out.extend(each(&self.jobs));
        out.extend(each(&self.cron_jobs));
        out
    }

    async fn ready(&self) -> bool {
        tokio::try_join!(
            self.deployments.wait_until_ready(),
            self.replica_sets.wait_until_ready(),
            self.stateful_sets.wait_until_ready(),
            self.daemon_sets.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.cron_jobs.wait_until_ready(),
        )
        .is_ok()
    }
}

/// Watches the workloads and keeps their auto pools in step, until a watch stream ends.
pub async fn run(ctx: &Context) -> Error {
    let (deployments, w1) = reflector::store();
    let (replica_sets, w2) = reflector::store();
    let (stateful_sets, w3) = reflector::store();
    let (daemon_sets, w4) = reflector::store();
    let (jobs, w5) = reflector::store();
    let (cron_jobs, w6) = reflector::store();
    let caches = Caches {
        deployments,
        replica_sets,
        stateful_sets,
        daemon_sets,
        jobs,
        cron_jobs,
    };
    let changed = Notify::new();
    tokio::select! {
        () = watch(ctx, w1, "deployments", &changed) => Error::Stopped("deployment watch"),
        () = watch(ctx, w2, "replicasets", &changed) => Error::Stopped("replicaset watch"),
        () = watch(ctx, w3, "statefulsets", &changed) => Error::Stopped("statefulset watch"),
        () = watch(ctx, w4, "daemonsets", &changed) => Error::Stopped("daemonset watch"),
        () = watch(ctx, w5, "jobs", &changed) => Error::Stopped("job watch"),
        () = watch(ctx, w6, "cronjobs", &changed) => Error::Stopped("cronjob watch"),
        () = passes(ctx, &caches, &changed) => Error::Stopped("auto pool"),
    }
}

fn reflected<K>(
    ctx: &Context,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|k: &mut K| k.meta_mut().managed_fields = None)
    .reflect(writer)
}

async fn watch<K>(
    ctx: &Context,
    writer: reflector::store::Writer<K>,
    kind: &'static str,
    changed: &Notify,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut events = pin!(reflected(ctx, writer));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => changed.notify_one(),
            Ok(_) => {}
            Err(source) => ctx.report(&format!("watching {kind}"), &Error::Watch { kind, source }),
        }
    }
}

async fn passes(ctx: &Context, caches: &Caches, changed: &Notify) {
    if !caches.ready().await {
        return;
    }
    tracing::info!("workloads listed; auto pools follow their replicas");
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: "tessera-controller".into(),
            instance: None,
        },
    );
    // The last Event note of each pool, so that a lasting problem is reported once.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        pass(ctx, caches, &recorder, &mut reported).await;
        tokio::select! {
            () = tokio::time::sleep(PASS_INTERVAL) => {}
            () = changed.notified() => tokio::time::sleep(CHANGE_DEBOUNCE).await,
        }
    }
}

/// Resizes every workload's pools, then deletes those of workloads that are gone.
async fn pass(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    reported: &mut BTreeMap<String, String>,
) {
    let mut wanted = BTreeSet::new();
    for (workload, reference) in caches.workloads() {
        let plans = match plan(&workload) {
            Ok(plans) => plans,
            Err(why) => {
                let note = format!("{}: no auto pool: {why}", workload.describe());
                if reported.get(&workload.uid) != Some(&note) {
                    tracing::warn!("{note}");
                    event(
                        ctx,
                        recorder,
                        &reference,
                        "InvalidAutoPoolAnnotation",
                        note.clone(),
                    )
                    .await;
                    reported.insert(workload.uid.clone(), note);
                }
                continue;
            }
        };
        for plan in plans {
            let key = rules::shortage_key(&plan.app.namespace, &plan.prefix);
            wanted.insert(key.clone());
            let owned = plan.clone();
            match ctx.blocking(move |ds| reconcile(ds.store(), &owned)).await {
                Ok(Outcome::Unchanged) => {
                    reported.remove(&key);
                }
                Ok(Outcome::Resized { pool, from, to }) => {
                    reported.remove(&key);
                    tracing::info!(workload = %workload.describe(), pool = %pool, from, to,
                        "auto pool resized to the workload's replicas");
                }
                Ok(Outcome::Short(shortage)) => {
                    let note = shortage.to_string();
                    if reported.get(&key) != Some(&note) {
                        tracing::warn!(workload = %workload.describe(), "{note}");
                        event(ctx, recorder, &reference, "SubnetExhausted", note.clone()).await;
                        reported.insert(key, note);
                    }
                }
                Ok(Outcome::NoSubnet) => {
                    let note = format!(
                        "{}: SpiderSubnet {} named by the pod template does not exist; create \
                         it (tessera apply or kubectl apply) or name another subnet",
                        workload.describe(),
                        plan.subnet
                    );
                    if reported.get(&key) != Some(&note) {
                        tracing::warn!("{note}");
                        event(ctx, recorder, &reference, "SubnetNotFound", note.clone()).await;
                        reported.insert(key, note);
                    }
                }
                Err(error) => ctx.report(&format!("resizing auto pool {}", plan.name), &error),
            }
        }
    }
    match ctx
        .blocking(move |ds| Ok(forget_shortages(ds.store(), &wanted)?))
        .await
    {
        Ok(()) => {}
        Err(error) => ctx.report("forgetting the shortages of deleted workloads", &error),
    }
    let live = caches.uids();
    match ctx
        .blocking(move |ds| reclaim_orphans(ds.store(), &live))
        .await
    {
        Ok(deleted) => {
            for pool in deleted {
                tracing::info!(pool = %pool, "auto pool deleted: its workload is gone and its addresses are released");
            }
        }
        Err(error) => ctx.report("deleting auto pools of deleted workloads", &error),
    }
}

async fn event(
    ctx: &Context,
    recorder: &Recorder,
    reference: &ObjectReference,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(note),
        action: "AutoPool".to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        ctx.report("recording an event", &Error::Kube(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::autopool::SUBNET_ANNOTATION;
    use tessera_core::store::MemoryStore;

    fn deployment(replicas: i32, annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nginx", "namespace": "shop", "uid": "bea129aa-acf5-40cb-8669-337bc1e95a41"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {"metadata": {"labels": {"app": "nginx"}, "annotations": annotations}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_deployment_naming_a_subnet_wants_one_pool_per_family_sized_to_its_replicas() {
        let d = deployment(
            2,
            serde_json::json!({
                SUBNET_ANNOTATION: r#"{"ipv4": ["nginx-subnet-v4"], "ipv6": ["nginx-subnet-v6"]}"#,
                "ipam.spidernet.io/ippool-ip-number": "+3"
            }),
        );
        let plans = plan(&from_deployment(&d).unwrap()).unwrap();
        let names: Vec<_> = plans
            .iter()
            .map(|p| (p.name.as_str(), p.subnet.as_str(), p.size))
            .collect();
        assert_eq!(
            names,
            [
                ("auto4-nginx-eth0-337bc", "nginx-subnet-v4", 5),
                ("auto6-nginx-eth0-337bc", "nginx-subnet-v6", 5)
            ]
        );
        let labels = plans[0].labels();
        assert_eq!(labels[OWNER_KIND_LABEL], "Deployment");
        assert_eq!(labels[OWNER_GV_LABEL], "apps_v1");
        assert_eq!(labels[IP_VERSION_LABEL], "IPv4");
        assert_eq!(labels[RECLAIM_LABEL], "true");
    }

    #[test]
    fn workloads_without_a_subnet_or_owned_by_a_deployment_have_no_pools() {
        assert!(from_deployment(&deployment(2, serde_json::json!({"x": "y"}))).is_none());
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nginx-5d8f", "namespace": "shop", "uid": "u",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx", "uid": "d"}]},
            "spec": {"selector": {}, "template": {"metadata": {"annotations": {SUBNET_ANNOTATION: "{\"ipv4\": [\"s\"]}"}}}}
        }))
        .unwrap();
        assert!(from_replica_set(&rs).is_none());
    }

    /// A Job template naming SpiderSubnet `s4`, `parallelism` pods at once, `+2` addresses.
    fn job_spec(parallelism: i32) -> serde_json::Value {
        serde_json::json!({
            "parallelism": parallelism,
            "template": {"metadata": {"annotations": {
                SUBNET_ANNOTATION: "{\"ipv4\": [\"s4\"]}",
                "ipam.spidernet.io/ippool-ip-number": "+2"
            }}}
        })
    }

    #[test]
    fn a_cron_job_has_one_pool_for_all_its_jobs_sized_to_their_parallelism() {
        let cron: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nightly", "namespace": "shop", "uid": "c7f0e2d4-0000-4000-8000-9a8b7c6d5e4f"},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": job_spec(3)}}
        }))
        .unwrap();
        let plans = plan(&from_cron_job(&cron).unwrap()).unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(
            (plans[0].name.as_str(), plans[0].size),
            ("auto4-nightly-eth0-9a8b7", 5)
        );
        let labels = plans[0].labels();
        assert_eq!(labels[OWNER_KIND_LABEL], "CronJob");
        assert_eq!(labels[OWNER_GV_LABEL], "batch_v1");
        // The Jobs it starts have no pools of their own; a Job of its own has.
        let job = |owners: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "nightly-29000000", "namespace": "shop", "uid": "j",
                             "ownerReferences": owners},
                "spec": job_spec(1)
            }))
            .unwrap()
        };
        let started = job(
            serde_json::json!([{"apiVersion": "batch/v1", "kind": "CronJob",
            "name": "nightly", "uid": "c", "controller": true}]),
        );
        assert!(from_job(&started).is_none());
        let own = from_job(&job(serde_json::json!([]))).unwrap();
        assert_eq!((own.app.kind.as_str(), own.replicas), ("Job", 1));
    }

    fn store_with_subnet(ips: &str) -> MemoryStore {
        let store = MemoryStore::new();
        let subnet = tessera_core::decode::decode_document(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": "nginx-subnet-v4"},
            "spec": {"subnet": "10.6.0.0/24", "ips": [ips], "gateway": "10.6.0.1"}
        }))
        .unwrap();
        Catalog::new(&store).apply(&[subnet]).unwrap();
        store
    }

    fn nginx_plan(size: u64) -> PoolPlan {
        let d = deployment(
            1,
            serde_json::json!({SUBNET_ANNOTATION: "{\"ipv4\": [\"nginx-subnet-v4\"]}"}),
        );
        PoolPlan {
            size,
            ..plan(&from_deployment(&d).unwrap()).unwrap().remove(0)
        }
    }

    fn stored_pool(store: &MemoryStore) -> SpiderIPPool {
        match Catalog::new(store)
            .get(Kind::SpiderIPPool, "auto4-nginx-eth0-337bc")
            .unwrap()
        {
            Record::SpiderIPPool(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn assign(store: &MemoryStore, handle: &str) -> std::net::IpAddr {
        let request = tessera_core::ipam::AssignRequest {
            handle: handle.into(),
            node: "n1".into(),
            num_v4: 1,
            pools: vec![format!(
                "{}auto4-nginx-eth0-*",
                tessera_core::ipam::SPIDER_POOL_REF
            )],
            pod_labels: Some(nginx_plan(0).app.pod_labels()),
            ..Default::default()
        };
        Ipam::new(store).assign(&request).unwrap().addresses[0].ip
    }

    #[test]
    fn a_pool_is_cut_from_the_subnet_grows_and_shrinks_by_free_addresses_only() {
        let store = store_with_subnet("10.6.0.10-10.6.0.29");
        let created = reconcile(&store, &nginx_plan(3)).unwrap();
        assert_eq!(
            created,
            Outcome::Resized {
                pool: "auto4-nginx-eth0-337bc".into(),
                from: 0,
                to: 3
            }
        );
        let pool = stored_pool(&store);
        assert_eq!(pool.spec.ips, ["10.6.0.10-10.6.0.12"]);
        assert_eq!(pool.spec.gateway.as_deref(), Some("10.6.0.1"));
        assert_eq!(pool.metadata.labels[POOL_CIDR_LABEL], "10-6-0-0-24");
        assert_eq!(
            reconcile(&store, &nginx_plan(3)).unwrap(),
            Outcome::Unchanged
        );

        reconcile(&store, &nginx_plan(10)).unwrap();
        assert_eq!(stored_pool(&store).spec.ips, ["10.6.0.10-10.6.0.19"]);
        let held: Vec<_> = (0..10).map(|i| assign(&store, &format!("h{i}"))).collect();
        assert_eq!(held.len(), 10);
        for i in 0..8 {
            Ipam::new(&store).release_handle(&format!("h{i}")).unwrap();
        }
        // h8 and h9 hold 10.6.0.18 and 10.6.0.19: the pool keeps them and gives back the rest.
        reconcile(&store, &nginx_plan(2)).unwrap();
        assert_eq!(stored_pool(&store).spec.ips, ["10.6.0.18-10.6.0.19"]);
    }

    #[test]
    fn a_subnet_too_small_leaves_the_pool_and_records_the_shortage() {
        let store = store_with_subnet("10.6.0.10-10.6.0.13");
        let Outcome::Short(shortage) = reconcile(&store, &nginx_plan(5)).unwrap() else {
            panic!("a pool of 5 from 4 addresses");
        };
        assert_eq!((shortage.asked, shortage.free), (5, 4));
        assert_eq!(shortage.workload, "Deployment shop/nginx");
        let key = rules::shortage_key("shop", "auto4-nginx-eth0-");
        assert!(store.get(&key).unwrap().is_some());
        assert!(Catalog::new(&store)
            .list(Kind::SpiderIPPool)
            .unwrap()
            .is_empty());
        reconcile(&store, &nginx_plan(4)).unwrap();
        assert!(
            store.get(&key).unwrap().is_none(),
            "cleared once the pool is whole"
        );
    }

    #[test]
    fn shortages_of_pools_no_workload_wants_are_forgotten() {
        let store = store_with_subnet("10.6.0.10-10.6.0.13");
        assert!(matches!(
            reconcile(&store, &nginx_plan(5)).unwrap(),
            Outcome::Short(_)
        ));
        let key = rules::shortage_key("shop", "auto4-nginx-eth0-");
        forget_shortages(&store, &BTreeSet::from([key.clone()])).unwrap();
        assert!(store.get(&key).unwrap().is_some());
        forget_shortages(&store, &BTreeSet::new()).unwrap();
        assert!(store.get(&key).unwrap().is_none());
    }

    #[test]
    fn a_missing_subnet_is_said_and_makes_no_pool() {
        let store = MemoryStore::new();
        assert_eq!(
            reconcile(&store, &nginx_plan(3)).unwrap(),
            Outcome::NoSubnet
        );
        assert!(Catalog::new(&store)
            .list(Kind::SpiderIPPool)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn pools_of_deleted_workloads_go_once_their_addresses_are_released() {
        let store = store_with_subnet("10.6.0.10-10.6.0.29");
        reconcile(&store, &nginx_plan(3)).unwrap();
        assign(&store, "h0");
        let live = BTreeSet::from(["bea129aa-acf5-40cb-8669-337bc1e95a41".to_string()]);
        assert!(reclaim_orphans(&store, &live).unwrap().is_empty());
        assert!(
            reclaim_orphans(&store, &BTreeSet::new())
                .unwrap()
                .is_empty(),
            "in use"
        );
        Ipam::new(&store).release_handle("h0").unwrap();
        assert_eq!(
            reclaim_orphans(&store, &BTreeSet::new()).unwrap(),
            ["auto4-nginx-eth0-337bc"]
        );
    }

    #[test]
    fn a_bad_annotation_is_an_error_naming_it() {
        let d = deployment(
            1,
            serde_json::json!({SUBNET_ANNOTATION: "{\"ipv4\": [\"s\"]}", "ipam.spidernet.io/ippool-ip-number": "lots"}),
        );
        let e = plan(&from_deployment(&d).unwrap()).unwrap_err();
        assert!(e.contains("ippool-ip-number"), "{e}");
    }
}
