//! The controller's operations on Tessera's datastore. Each is blocking (the `Store` trait is
//! synchronous): call them from `tokio::task::spawn_blocking`.
//!
//! Writes of Node and Namespace records go through the catalog, so they are validated and
//! compare-and-swapped like `tessera label`; releases go through the allocator, each handle
//! whole and only while its record is still the one judged.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tessera_core::catalog::{Action, Catalog, CatalogError};
use tessera_core::ipam::{HandleRecord, HandleRelease, Ipam, IpamError, Usage};
use tessera_core::keys;
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::{Store, StoreError};

use crate::mirror;

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Node or Namespace record could not be read or written (refused by validation,
    /// damaged, or the datastore failed).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// An allocation operation failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The value of the `kind` label of the sync error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Catalog(CatalogError::Store(e)) | Error::Ipam(IpamError::Store(e)) => {
                store_label(e)
            }
            Error::Store(e) => store_label(e),
            Error::Catalog(CatalogError::Conflict { .. })
            | Error::Ipam(IpamError::Contention(_)) => "conflict",
            Error::Catalog(_) => "invalid_record",
            Error::Ipam(_) => "allocator",
        }
    }

    /// True when retrying later may succeed (datastore unreachable or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Catalog(CatalogError::Store(e)) | Error::Store(e) => e.is_transient(),
            Error::Catalog(CatalogError::Conflict { .. }) => true,
            Error::Catalog(_) => false,
            Error::Ipam(e) => e.is_transient(),
        }
    }
}

fn store_label(e: &StoreError) -> &'static str {
    if e.is_transient() {
        "datastore_unavailable"
    } else {
        "datastore"
    }
}

/// What forgetting a gone node released, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCleanup {
    /// Pod handles released.
    pub handles: usize,
    /// Addresses those handles held.
    pub addresses: usize,
    /// Blocks given back (freed when empty, else left without affinity).
    pub blocks: usize,
    /// Whether the node record existed and was deleted.
    pub record_deleted: bool,
}

/// The controller's view of the datastore.
#[derive(Clone)]
pub struct Datastore {
    store: Arc<dyn Store>,
}

impl Datastore {
    /// Operations over `store` (`Box<dyn Store>` converts with `.into()`).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The store itself, for the operations of other modules.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn catalog(&self) -> Catalog<'_, dyn Store> {
        Catalog::new(self.store.as_ref())
    }

    fn ipam(&self) -> Ipam<&dyn Store> {
        Ipam::new(self.store.as_ref())
    }

    /// Copies a Kubernetes Node's labels into its record (see [`mirror::mirror_node`]),
    /// creating the record when missing. Returns whether anything was written.
    pub fn sync_node(
        &self,
        name: &str,
        kube_labels: &BTreeMap<String, String>,
    ) -> Result<bool, Error> {
        let (action, _) = self.catalog().modify(Kind::Node, name, true, |current| {
            let Resource::Node(stored) = current else {
                return Err(wrong_kind(current, Kind::Node, name));
            };
            warn_ownership(&stored.metadata);
            Ok(mirror::mirror_node(Some(stored), kube_labels, name)
                .map_or_else(|| current.clone(), Resource::Node))
        })?;
        Ok(action != Action::Unchanged)
    }

    /// Copies a Kubernetes Namespace's labels and pool annotations into its record (see
    /// [`mirror::mirror_namespace`]), creating the record when missing. Returns whether
    /// anything was written.
    pub fn sync_namespace(
        &self,
        name: &str,
        kube_labels: &BTreeMap<String, String>,
        kube_annotations: &BTreeMap<String, String>,
    ) -> Result<bool, Error> {
        let (action, _) = self
            .catalog()
            .modify(Kind::Namespace, name, true, |current| {
                let Resource::Namespace(stored) = current else {
                    return Err(wrong_kind(current, Kind::Namespace, name));
                };
                warn_ownership(&stored.metadata);
                Ok(
                    mirror::mirror_namespace(Some(stored), kube_labels, kube_annotations, name)
                        .map_or_else(|| current.clone(), Resource::Namespace),
                )
            })?;
        Ok(action != Action::Unchanged)
    }

    /// Deletes the record of a namespace that is gone from Kubernetes (which owns namespaces
    /// in a cluster), whoever wrote it. Returns whether there was one.
    pub fn delete_namespace(&self, name: &str) -> Result<bool, Error> {
        let deleted = self
            .catalog()
            .delete(&[(Kind::Namespace, name.to_string())], true)?;
        Ok(!deleted.is_empty())
    }

    /// Forgets a node the caller confirmed gone from Kubernetes: releases every pod handle
    /// assigned on it (each whole, only while its record is the one read), gives back its
    /// blocks (empty ones are freed, the rest lose their affinity) and deletes its record.
    /// Handles without pod attributes are left alone. Running it again does nothing more,
    /// and a node that comes back with the same name starts clean.
    pub fn forget_node(&self, name: &str) -> Result<NodeCleanup, Error> {
        let mut cleanup = NodeCleanup::default();
        for handle in self.pod_handles()? {
            if handle.attrs.node.as_deref() != Some(name) {
                continue;
            }
            let released = self.release_if_unchanged(&handle)?;
            if !released.is_empty() {
                cleanup.handles += 1;
                cleanup.addresses += released.len();
            }
        }
        cleanup.blocks = self.ipam().release_node(name)?;
        cleanup.record_deleted = !self
            .catalog()
            .delete(&[(Kind::Node, name.to_string())], true)?
            .is_empty();
        Ok(cleanup)
    }

    /// Names of the Node records the controller wrote, to compare against Kubernetes' nodes.
    pub fn mirrored_nodes(&self) -> Result<Vec<String>, Error> {
        self.mirrored(Kind::Node)
    }

    /// Names of the Namespace records the controller wrote, to compare against Kubernetes'
    /// namespaces.
    pub fn mirrored_namespaces(&self) -> Result<Vec<String>, Error> {
        self.mirrored(Kind::Namespace)
    }

    fn mirrored(&self, kind: Kind) -> Result<Vec<String>, Error> {
        Ok(self
            .catalog()
            .list(kind)?
            .into_iter()
            .filter(|r| mirror::is_mirrored(r.metadata()))
            .map(|r| r.name().to_string())
            .collect())
    }

    /// Every handle that records a pod (namespace and name, and no gateway): the handles
    /// garbage collection judges. A damaged handle record is logged and skipped.
    pub fn pod_handles(&self) -> Result<Vec<HandleRecord>, Error> {
        let mut out = Vec::new();
        for kv in self.store.range(keys::HANDLE_PREFIX)? {
            match serde_json::from_slice::<HandleRecord>(&kv.value) {
                Ok(rec) if is_pod_handle(&rec) => out.push(rec),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    key = %kv.key,
                    "handle record is damaged and is not judged: {e}; run `tessera ipam check`"
                ),
            }
        }
        Ok(out)
    }

    /// Releases the whole handle only when its stored record still has the attributes of
    /// `handle` (the record judged); otherwise, or when it is gone, releases nothing. Returns
    /// the released addresses.
    pub fn release_if_unchanged(&self, handle: &HandleRecord) -> Result<Vec<IpAddr>, Error> {
        let same = |attrs: &tessera_core::ipam::Attributes| *attrs == handle.attrs;
        match self.ipam().release_handle_of(&handle.id, &same)? {
            HandleRelease::Released(ips) => Ok(ips),
            HandleRelease::NotOwned(_) => Ok(Vec::new()),
        }
    }

    /// Size, addresses in use and blocks of every pool (scans every block).
    pub fn usage(&self) -> Result<Usage, Error> {
        Ok(self.ipam().usage()?)
    }

    /// Checks that the datastore answers (readiness).
    pub fn ping(&self) -> Result<(), Error> {
        self.store.get(keys::IPAM_CONFIG)?;
        Ok(())
    }
}

/// Whether a handle records a pod's addresses (and may be collected).
fn is_pod_handle(rec: &HandleRecord) -> bool {
    rec.attrs.namespace.is_some() && rec.attrs.pod.is_some() && rec.attrs.gateway_of.is_none()
}

/// The record of `expected` `name` holds another kind (written there by hand).
fn wrong_kind(found: &Resource, expected: Kind, name: &str) -> CatalogError {
    CatalogError::Refused {
        kind: expected,
        name: name.to_string(),
        field: "kind".into(),
        reason: format!(
            "the record holds a {} instead; delete it with `tessera delete {} {name}` (that \
             deletes the record without reading it) so that the controller can write it again",
            found.kind(),
            expected.as_str().to_ascii_lowercase(),
        ),
    }
}

fn warn_ownership(meta: &tessera_core::resources::meta::ObjectMeta) {
    if let Some(problem) = mirror::ownership_problem(meta) {
        tracing::warn!("{problem}");
    }
}
