//! Reads a Pod and its Namespace from a Kubernetes API server, for the CNI plugin.
//!
//! The plugin runs once per pod and must start fast, so this is not a general Kubernetes
//! client: it reads a kubeconfig ([`ApiAccess::from_kubeconfig`]), opens one connection and
//! makes plain GETs under one deadline ([`Client`]), and decodes only the fields the plugin
//! reads ([`Pod`], [`Namespace`]).
#![deny(missing_docs)]

mod client;
mod error;
mod kubeconfig;
mod objects;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::Client;
pub use error::LookupError;
pub use kubeconfig::{ApiAccess, ServerUrl, Token};
pub use objects::{
    Job, Namespace, ObjectMeta, OwnerReference, Pod, PodSpec, PodStatus, ReplicaSet,
};
