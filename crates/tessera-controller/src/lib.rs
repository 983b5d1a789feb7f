//! Keeps Tessera's datastore in step with a Kubernetes cluster: node labels, namespace labels
//! and annotations, garbage collection of leaked addresses, metrics and health endpoints.
//!
//! Decisions are pure functions over plain data ([`mirror`], [`gc`]); [`datastore`] carries
//! them out on the synchronous store; the rest is plumbing around kube-rs and tokio.

pub mod autopool;
pub mod crds;
pub mod datastore;
pub mod drain;
pub mod gc;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod mirror;
pub mod run;
pub mod settings;
pub mod sticky;
