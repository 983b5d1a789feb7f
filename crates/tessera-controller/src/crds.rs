//! Pools and reservations managed with kubectl: SpiderSubnets, SpiderIPPools,
//! SpiderReservedIPs and Calico's IPPools and IPReservations (deploy/crds/) are carried into
//! the datastore through the same validation as `tessera apply`.
//!
//! For each object: a finalizer first (so that its deletion waits for the record's), then the
//! object applied whole with the catalog's Kubernetes mirror (records it writes are marked,
//! and `tessera` refuses to change them; it never overwrites a record made with `tessera`);
//! then the status: a `Synced` condition and, for SpiderIPPools and SpiderSubnets,
//! Spiderpool's `allocatedIPCount` and `totalIPCount`. A refusal becomes the condition's
//! message and a Warning Event, with the text `tessera apply` prints. A deleted object's record
//! is deleted with `tessera delete`'s rules (a SpiderIPPool holding addresses stays, and so does
//! the object, until they are released). Every object is looked at again at every
//! garbage-collection pass (`--gc-interval`), which refreshes the counts and retries refused
//! deletions.

mod model;

pub use model::{Finding, Mirrored, CONDITION_TYPE, FINALIZER, MIRRORED};

use std::collections::BTreeSet;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};
use tessera_core::catalog::{is_managed_by_kubernetes, Catalog, CatalogError};
use tessera_core::decode::decode_document;
use tessera_core::ipam::{spider_in_use_check, Ipam, IpamError};
use tessera_core::ranges::IpRangeSet;
use tessera_core::resources::{Kind, Resource as TesseraResource};
use tessera_core::store::{Store, StoreError};

use crate::run::Context;

/// Who the Events say recorded them.
const REPORTER: &str = "tessera-controller";

/// Why looking at one object failed (it is looked at again at the next event or pass).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("datastore: {0}")]
    Datastore(#[from] CatalogError),
    #[error("a datastore call did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Watches every mirrored resource until the controller stops acting.
pub async fn mirror_all(ctx: &Context) {
    let recorder = Recorder::new(ctx.client.clone(), Reporter::from(REPORTER));
    let loops = MIRRORED.map(|mirrored| mirror_kind(ctx, mirrored, &recorder));
    futures::future::join_all(loops).await;
}

/// Watches one resource; looks at every object on each of its events and at every pass.
async fn mirror_kind(ctx: &Context, mirrored: Mirrored, recorder: &Recorder) {
    let resource = mirrored.api_resource();
    let api = Api::<DynamicObject>::all_with(ctx.client.clone(), &resource);
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let cache = writer.as_reader();
    let mut events = pin!(watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer));
    let every = ctx
        .gc
        .gc_interval
        .clamp(MIN_PASS_INTERVAL, MAX_PASS_INTERVAL);
    let mut passes = tokio::time::interval(every);
    let one = Mirror {
        ctx,
        mirrored,
        resource: &resource,
        recorder,
    };
    let mut listed = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(WatchEvent::Apply(object) | WatchEvent::InitApply(object))) => {
                    one.look_at(&object).await;
                }
                Some(Ok(WatchEvent::InitDone)) => listed = true,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, resource = mirrored.plural, "watch failed; retrying");
                    ctx.metrics.count_error("watch");
                }
                None => return,
            },
            // Until the first list is in, the watch's own events cover every object.
            _ = passes.tick(), if listed => {
                let objects = cache.state();
                for object in &objects {
                    one.look_at(object).await;
                }
                one.forget_orphans(&objects).await;
            }
        }
    }
}

/// A pass more often than this would only load the API server.
const MIN_PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Statuses are never older than this, whatever `--gc-interval` says.
const MAX_PASS_INTERVAL: Duration = Duration::from_secs(60);

/// The mirror of one resource.
struct Mirror<'a> {
    ctx: &'a Context,
    mirrored: Mirrored,
    resource: &'a ApiResource,
    recorder: &'a Recorder,
}

impl Mirror<'_> {
    fn api(&self) -> Api<DynamicObject> {
        Api::all_with(self.ctx.client.clone(), self.resource)
    }

    /// Carries `object` into the datastore (or its deletion), logging a failure.
    async fn look_at(&self, object: &DynamicObject) {
        let result = if object.metadata.deletion_timestamp.is_some() {
            self.deleted(object).await
        } else {
            self.applied(object).await
        };
        if let Err(error) = result {
            tracing::warn!(
                %error,
                kind = self.mirrored.kind.as_str(),
                name = %object.name_any(),
                "mirroring into the datastore failed; retried at the next change or pass"
            );
            self.ctx.metrics.count_error("custom_resource");
        }
    }

    async fn applied(&self, object: &DynamicObject) -> Result<(), Error> {
        if !object.finalizers().iter().any(|f| f == FINALIZER) {
            let mut finalizers = object.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            self.set_finalizers(object, finalizers).await?;
        }
        let manifest = model::to_manifest(&self.mirrored, object);
        let kind = self.mirrored.kind;
        let name = object.name_any();
        let (finding, counts) = self
            .blocking(move |store| apply(store, kind, &name, manifest))
            .await??;
        self.report(object, &finding, counts).await
    }

    async fn deleted(&self, object: &DynamicObject) -> Result<(), Error> {
        if !object.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let (kind, name) = (self.mirrored.kind, object.name_any());
        let outcome = self
            .blocking(move |store| {
                mirror_catalog(store, |catalog| {
                    catalog.delete(&[(kind, name.clone())], true).map(|_| ())
                })
            })
            .await?;
        let outcome_note = match outcome {
            Ok(()) => "its datastore record is deleted",
            Err(CatalogError::ManagedElsewhere { .. }) => {
                "the record of this name was made with tessera and stays"
            }
            Err(e) if is_refusal(&e) => {
                let finding = Finding::DeleteRefused(e.to_string());
                return self.report(object, &finding, None).await;
            }
            Err(e) => return Err(e.into()),
        };
        let finalizers = object
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        self.set_finalizers(object, finalizers).await?;
        tracing::info!(kind = kind.as_str(), name = %object.name_any(), "deleted in Kubernetes: {outcome_note}");
        Ok(())
    }

    /// Deletes the records this mirror wrote whose Kubernetes object is gone without its
    /// finalizer having run (removed by hand, or the object deleted while the
    /// CustomResourceDefinition was replaced), so that the two never diverge for long.
    async fn forget_orphans(&self, objects: &[Arc<DynamicObject>]) {
        let kind = self.mirrored.kind;
        let present: BTreeSet<String> = objects.iter().map(|o| o.name_any()).collect();
        let outcome = self
            .blocking(move |store| delete_orphans(store, kind, &present))
            .await;
        match outcome {
            Ok(Ok(deleted)) => {
                for name in deleted {
                    tracing::info!(kind = kind.as_str(), %name, "its Kubernetes object is gone: deleted its datastore record");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, kind = kind.as_str(), "deleting records whose Kubernetes object is gone failed; retried at the next pass");
                self.ctx.metrics.count_error("custom_resource");
            }
            Err(error) => tracing::warn!(%error, "a datastore call did not finish"),
        }
    }

    /// Writes the status for `finding` when it changes, and an Event when it is news.
    async fn report(
        &self,
        object: &DynamicObject,
        finding: &Finding,
        counts: Option<(u128, u128)>,
    ) -> Result<(), Error> {
        let current = object.data.get("status");
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = model::desired_status(current, finding, counts, &now);
        if finding.is_problem() && model::is_news(current, finding) {
            self.record(object, finding).await;
        }
        if current != Some(&status) {
            self.api()
                .patch_status(
                    &object.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await?;
        }
        Ok(())
    }

    /// A Warning Event on the object; a failure is only logged (the condition says it too).
    async fn record(&self, object: &DynamicObject, finding: &Finding) {
        let event = Event {
            type_: EventType::Warning,
            reason: finding.reason().to_string(),
            note: Some(note(&finding.message())),
            action: if matches!(finding, Finding::DeleteRefused(_)) {
                "Delete"
            } else {
                "Apply"
            }
            .to_string(),
            secondary: None,
        };
        let reference = object.object_ref(self.resource);
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, name = %object.name_any(), "could not record an Event");
        }
        tracing::warn!(
            kind = self.mirrored.kind.as_str(),
            name = %object.name_any(),
            reason = finding.reason(),
            "{}",
            finding.message()
        );
    }

    async fn set_finalizers(
        &self,
        object: &DynamicObject,
        finalizers: Vec<String>,
    ) -> Result<(), Error> {
        // The resourceVersion makes this a compare-and-swap: a list changed meanwhile is not
        // overwritten (the change brings another event).
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }});
        self.api()
            .patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(())
    }

    async fn blocking<T, F>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> T + Send + 'static,
    {
        let datastore = self.ctx.datastore.clone();
        Ok(tokio::task::spawn_blocking(move || op(datastore.store())).await?)
    }
}

/// An Event's note holds at most 1 kB: a longer message is cut (the condition keeps it whole).
fn note(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// Applies one object's manifest with the mirror catalog: what the condition says, and
/// Spiderpool's counts. Only a failure of the datastore itself is an error.
fn apply(
    store: &dyn Store,
    kind: Kind,
    name: &str,
    manifest: Value,
) -> Result<(Finding, Option<(u128, u128)>), CatalogError> {
    let outcome = decode_document(manifest)
        .map_err(CatalogError::from)
        .and_then(|resource| {
            mirror_catalog(store, |catalog| {
                catalog.apply(std::slice::from_ref(&resource))
            })
        });
    let finding = match outcome {
        Ok(_) => Finding::Synced,
        Err(e @ CatalogError::ManagedElsewhere { .. }) => {
            Finding::ManagedWithTessera(e.to_string())
        }
        Err(e) if is_refusal(&e) => Finding::Rejected(e.to_string()),
        Err(e) => return Err(e),
    };
    let counts = match finding {
        Finding::Synced => counts(store, kind, name)?,
        _ => None,
    };
    Ok((finding, counts))
}

/// Deletes the records of `kind` marked as mirrored from Kubernetes whose name is not in
/// `present`; returns their names. A record that cannot go yet (a SpiderIPPool holding
/// addresses) fails the whole, and is tried again at the next pass.
fn delete_orphans(
    store: &dyn Store,
    kind: Kind,
    present: &BTreeSet<String>,
) -> Result<Vec<String>, CatalogError> {
    let orphans: Vec<(Kind, String)> = Catalog::new(store)
        .list(kind)?
        .iter()
        .filter(|r| is_managed_by_kubernetes(r) && !present.contains(r.name()))
        .map(|r| (kind, r.name().to_string()))
        .collect();
    if orphans.is_empty() {
        return Ok(Vec::new());
    }
    mirror_catalog(store, |catalog| catalog.delete(&orphans, true))?;
    Ok(orphans.into_iter().map(|(_, name)| name).collect())
}

/// Runs `op` with the catalog of the Kubernetes mirror, which refuses to take addresses in
/// use out of a SpiderIPPool.
fn mirror_catalog<'s, T>(
    store: &'s (dyn Store + 's),
    op: impl FnOnce(&Catalog<'_, dyn Store + 's>) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    let check = spider_in_use_check(store);
    op(&Catalog::new(store)
        .as_kubernetes_mirror()
        .with_in_use_check(&check))
}

/// Whether the catalog refused the object itself (as opposed to the datastore failing, which
/// is retried).
fn is_refusal(error: &CatalogError) -> bool {
    !matches!(
        error,
        CatalogError::Store(_) | CatalogError::Conflict { .. } | CatalogError::PartFailed { .. }
    )
}

/// Spiderpool's (allocatedIPCount, totalIPCount) of a SpiderIPPool or SpiderSubnet as stored:
/// a pool counts the addresses it handed to pods, a subnet those it handed to pools (the
/// SpiderIPPools of its subnet), as `tessera get sp` and `get ss` do.
fn counts(store: &dyn Store, kind: Kind, name: &str) -> Result<Option<(u128, u128)>, CatalogError> {
    if !matches!(kind, Kind::SpiderIPPool | Kind::SpiderSubnet) {
        return Ok(None);
    }
    let catalog = Catalog::new(store);
    let size = |ips: Result<IpRangeSet, _>| ips.map_or(0, |ips: IpRangeSet| ips.len());
    Ok(match catalog.get(kind, name)? {
        TesseraResource::SpiderIPPool(pool) => {
            let usage = Ipam::new(store).spider_pool_usage().map_err(|e| match e {
                IpamError::Store(e) => CatalogError::Store(e),
                other => CatalogError::Store(StoreError::Corrupt {
                    endpoint: store.describe(),
                    reason: other.to_string(),
                }),
            })?;
            let allocated = usage.get(name).copied().unwrap_or(0);
            Some((allocated, size(pool.spec.total_ips())))
        }
        TesseraResource::SpiderSubnet(subnet) => {
            let net = subnet.spec.subnet_net();
            let allocated = catalog
                .list(Kind::SpiderIPPool)?
                .iter()
                .filter_map(|r| match r {
                    TesseraResource::SpiderIPPool(p)
                        if net.is_some() && p.spec.subnet_net() == net =>
                    {
                        Some(size(p.spec.total_ips()))
                    }
                    _ => None,
                })
                .fold(0u128, u128::saturating_add);
            Some((allocated, size(subnet.spec.total_ips())))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tessera_core::ipam::AssignRequest;
    use tessera_core::store::MemoryStore;

    use super::*;

    fn spider_pool(name: &str, ips: &str) -> Value {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": "10.6.0.0/24", "ips": [ips]},
        }))
        .unwrap();
        model::to_manifest(&MIRRORED[1], &object)
    }

    #[test]
    fn a_long_note_is_cut_at_one_kilobyte_on_a_character_boundary() {
        assert_eq!(note("short"), "short");
        let long = "é".repeat(600);
        let cut = note(&long);
        assert!(cut.len() <= 1024 && cut.ends_with("..."), "{}", cut.len());
    }

    #[test]
    fn a_valid_pool_is_synced_with_its_counts() {
        let store = MemoryStore::new();
        let applied = apply(
            &store,
            Kind::SpiderIPPool,
            "p",
            spider_pool("p", "10.6.0.10-10.6.0.13"),
        );
        assert_eq!(applied.unwrap(), (Finding::Synced, Some((0, 4))));
    }

    #[test]
    fn a_subnet_counts_the_addresses_it_handed_to_pools() {
        let store = MemoryStore::new();
        let subnet: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": "s"},
            "spec": {"subnet": "10.6.0.0/24", "ips": ["10.6.0.1-10.6.0.100"]},
        }))
        .unwrap();
        let manifest = model::to_manifest(&MIRRORED[0], &subnet);
        apply(&store, Kind::SpiderSubnet, "s", manifest.clone()).unwrap();
        apply(
            &store,
            Kind::SpiderIPPool,
            "p",
            spider_pool("p", "10.6.0.10-10.6.0.13"),
        )
        .unwrap();
        let (finding, counts) = apply(&store, Kind::SpiderSubnet, "s", manifest).unwrap();
        assert_eq!((finding, counts), (Finding::Synced, Some((4, 100))));
    }

    #[test]
    fn an_invalid_pool_is_rejected_with_the_catalog_message_and_not_stored() {
        let store = MemoryStore::new();
        let (finding, counts) = apply(
            &store,
            Kind::SpiderIPPool,
            "p",
            spider_pool("p", "10.7.0.1"),
        )
        .unwrap();
        let Finding::Rejected(message) = finding else {
            panic!("not rejected: {finding:?}");
        };
        assert!(
            message.contains("is not inside subnet 10.6.0.0/24"),
            "{message}"
        );
        assert_eq!(counts, None);
        assert!(Catalog::new(&store)
            .list(Kind::SpiderIPPool)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_pool_made_with_tessera_is_left_alone() {
        let store = MemoryStore::new();
        let mut manifest = spider_pool("p", "10.6.0.10");
        manifest["metadata"]["annotations"] = json!({});
        Catalog::new(&store)
            .apply(&[decode_document(manifest).unwrap()])
            .unwrap();
        let (finding, _) = apply(
            &store,
            Kind::SpiderIPPool,
            "p",
            spider_pool("p", "10.6.0.20"),
        )
        .unwrap();
        assert!(
            matches!(finding, Finding::ManagedWithTessera(_)),
            "{finding:?}"
        );
        assert_eq!(
            delete_orphans(&store, Kind::SpiderIPPool, &BTreeSet::new()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn orphans_go_unless_they_hold_addresses() {
        let store = MemoryStore::new();
        for name in ["kept", "gone", "busy"] {
            let ips = match name {
                "kept" => "10.6.0.1",
                "gone" => "10.6.0.2",
                _ => "10.6.0.3",
            };
            apply(&store, Kind::SpiderIPPool, name, spider_pool(name, ips)).unwrap();
        }
        let present = BTreeSet::from(["kept".to_string(), "busy".to_string()]);
        let deleted = delete_orphans(&store, Kind::SpiderIPPool, &present).unwrap();
        assert_eq!(deleted, ["gone"]);

        let request = AssignRequest {
            handle: "h".into(),
            node: "n".into(),
            num_v4: 1,
            pools: vec!["spiderippool/busy".into()],
            ..AssignRequest::default()
        };
        Ipam::new(&store).assign(&request).unwrap();
        let (_, counts) = apply(
            &store,
            Kind::SpiderIPPool,
            "busy",
            spider_pool("busy", "10.6.0.3"),
        )
        .unwrap();
        assert_eq!(counts, Some((1, 1)));
        let error = delete_orphans(&store, Kind::SpiderIPPool, &BTreeSet::new()).unwrap_err();
        assert!(matches!(error, CatalogError::PoolInUse { .. }), "{error}");
        let left: Vec<String> = Catalog::new(&store)
            .list(Kind::SpiderIPPool)
            .unwrap()
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert_eq!(left, ["busy", "kept"], "a refused delete deleted some");
    }
}
