//! Draining a pool: how `tessera ipam migrate` asks the Kubernetes controller to move the
//! workloads off a disabled pool, and how the controller reports back. Both live as annotations
//! on the pool's record, so the request survives an interrupted command and a new controller
//! leader picks it up where the last one stopped.

use serde::{Deserialize, Serialize};

/// Annotation on a disabled pool asking `tessera-controller` to restart, the way
/// `kubectl rollout restart` does, the workloads whose pods hold the pool's addresses. Its
/// value is a [`DrainRequest`] as JSON.
pub const DRAIN_ANNOTATION: &str = "tessera.dev/drain";

/// Annotation the controller writes on a draining pool: a [`DrainStatus`] as JSON.
pub const DRAIN_STATUS_ANNOTATION: &str = "tessera.dev/drain-status";

/// Restarts in flight at once when the request does not say.
pub const DEFAULT_MAX_PARALLEL: u32 = 1;

/// How long one restarted workload may take to become ready when the request does not say.
pub const DEFAULT_READY_TIMEOUT_SECONDS: u64 = 600;

/// What the migration asks of the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRequest {
    /// RFC 3339 time the drain was asked for. A workload whose pod template already carries
    /// a `kubectl.kubernetes.io/restartedAt` at or after this time was restarted for this
    /// drain and is not restarted again.
    pub requested_at: String,
    /// Workloads restarting at once (at least 1).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Seconds one restarted workload may take to become ready; past it the controller
    /// restarts nothing more and reports the workload as not ready.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u64,
}

fn default_max_parallel() -> u32 {
    DEFAULT_MAX_PARALLEL
}

fn default_ready_timeout() -> u64 {
    DEFAULT_READY_TIMEOUT_SECONDS
}

/// A workload the controller restarts: `Deployment`, `StatefulSet` or `DaemonSet`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A pod holding an address of the draining pool that no restart will move: it has no owner
/// the controller restarts (a bare pod, a Job's pod, ...) or it no longer exists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StrandedPod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Why it is left to the admin, e.g. "no owner", "owned by Job batch/nightly".
    pub reason: String,
}

/// A restarted workload that did not become ready in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotReady {
    /// The workload.
    pub workload: WorkloadRef,
    /// What its status said last, e.g. "2 of 3 replicas updated, 1 available".
    pub message: String,
}

/// The controller's progress on a [`DrainRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// The `requestedAt` of the request this status answers.
    pub requested_at: String,
    /// RFC 3339 time of this report.
    pub updated_at: String,
    /// Restarted and ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted: Vec<WorkloadRef>,
    /// Restarted, not ready yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarting: Vec<WorkloadRef>,
    /// Waiting for their turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<WorkloadRef>,
    /// Restarted but not ready within the timeout: the drain stops restarting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<NotReady>,
    /// Pods left for the admin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stranded: Vec<StrandedPod>,
    /// Why the controller does nothing for this request (it cannot be read, or the pool is
    /// not disabled); nothing is restarted while it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A drain annotation that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: annotation {annotation} is not valid: {reason}; remove it with `tessera annotate ippool {pool} {annotation}-` and run `tessera ipam migrate` again")]
pub struct DrainAnnotationError {
    /// The pool.
    pub pool: String,
    /// The annotation key.
    pub annotation: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Reads the drain request of a pool from its annotations; `Ok(None)` when there is none.
pub fn drain_request(
    pool: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<DrainRequest>, DrainAnnotationError> {
    let Some(raw) = annotations.get(DRAIN_ANNOTATION) else {
        return Ok(None);
    };
    let bad = |reason: String| DrainAnnotationError {
        pool: pool.to_string(),
        annotation: DRAIN_ANNOTATION,
        reason,
    };
    let request: DrainRequest = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    request
        .requested_at
        .parse::<jiff::Timestamp>()
        .map_err(|e| bad(format!("requestedAt: {e}")))?;
    if request.max_parallel == 0 {
        return Err(bad("maxParallel must be at least 1".into()));
    }
    Ok(Some(request))
}

/// Reads the controller's report on a pool; `Ok(None)` when there is none.
pub fn drain_status(
    pool: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<DrainStatus>, DrainAnnotationError> {
    annotations
        .get(DRAIN_STATUS_ANNOTATION)
        .map(|raw| {
            serde_json::from_str(raw).map_err(|e| DrainAnnotationError {
                pool: pool.to_string(),
                annotation: DRAIN_STATUS_ANNOTATION,
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// The controlling owner reference of an object (`ownerReferences` entry with
/// `controller: true`), as much of it as the owner rules need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: &'a str,
    /// `kind`, e.g. `ReplicaSet`.
    pub kind: &'a str,
    /// `name`.
    pub name: &'a str,
}

/// What a pod's controlling owner says about moving it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOwner {
    /// Restarting this workload moves the pod.
    Workload(WorkloadRef),
    /// Owned by this ReplicaSet: its own owner decides (see [`replicaset_workload`]).
    ReplicaSet(String),
    /// Nothing to restart: left to the admin, for this reason.
    Stranded(String),
}

fn workload(kind: &str, namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The StatefulSet a holder's addresses are kept for, whatever became of its pod: a
/// StatefulSet pod's addresses are held for its name, also between two of its pods, so
/// restarting the StatefulSet moves them.
pub fn held_for_statefulset(holder: &crate::ipam::Holder) -> Option<WorkloadRef> {
    let attrs = &holder.attrs;
    Some(workload(
        "StatefulSet",
        attrs.namespace.as_deref()?,
        attrs.statefulset.as_deref()?,
    ))
}

/// The workload to restart for a pod in `namespace` with controlling owner `owner`.
pub fn pod_workload(namespace: &str, owner: Option<&Owner<'_>>) -> PodOwner {
    let Some(owner) = owner else {
        return PodOwner::Stranded("no owner".into());
    };
    match (owner.api_version, owner.kind) {
        ("apps/v1", "ReplicaSet") => PodOwner::ReplicaSet(owner.name.to_string()),
        ("apps/v1", kind @ ("StatefulSet" | "DaemonSet")) => {
            PodOwner::Workload(workload(kind, namespace, owner.name))
        }
        (_, kind) => PodOwner::Stranded(format!("owned by {kind} {namespace}/{}", owner.name)),
    }
}

/// The workload to restart for a pod of ReplicaSet `replicaset` whose controlling owner is
/// `owner`: its Deployment, or the reason there is none.
pub fn replicaset_workload(
    namespace: &str,
    replicaset: &str,
    owner: Option<&Owner<'_>>,
) -> Result<WorkloadRef, String> {
    match owner {
        Some(o) if o.api_version == "apps/v1" && o.kind == "Deployment" => {
            Ok(workload("Deployment", namespace, o.name))
        }
        _ => Err(format!(
            "owned by ReplicaSet {namespace}/{replicaset}, which no Deployment owns"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn annotated(key: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(key.to_string(), value.to_string())])
    }

    #[test]
    fn a_request_reads_with_defaults() {
        let a = annotated(
            DRAIN_ANNOTATION,
            r#"{"requestedAt":"2026-12-01T10:00:00Z"}"#,
        );
        let r = drain_request("old", &a).unwrap().unwrap();
        assert_eq!(r.max_parallel, DEFAULT_MAX_PARALLEL);
        assert_eq!(r.ready_timeout_seconds, DEFAULT_READY_TIMEOUT_SECONDS);
        assert_eq!(drain_request("old", &BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn a_bad_request_names_the_pool_and_the_way_out() {
        for raw in [
            "{",
            r#"{"requestedAt":"yesterday"}"#,
            r#"{"requestedAt":"2026-12-01T10:00:00Z","maxParallel":0}"#,
        ] {
            let e = drain_request("old", &annotated(DRAIN_ANNOTATION, raw)).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("pool old") && msg.contains("tessera.dev/drain-"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_status_round_trips() {
        let status = DrainStatus {
            requested_at: "2026-12-01T10:00:00Z".into(),
            updated_at: "2026-12-01T10:01:00Z".into(),
            restarted: vec![WorkloadRef {
                kind: "Deployment".into(),
                namespace: "default".into(),
                name: "web".into(),
            }],
            stranded: vec![StrandedPod {
                namespace: "default".into(),
                name: "debug".into(),
                reason: "no owner".into(),
            }],
            ..DrainStatus::default()
        };
        let raw = serde_json::to_string(&status).unwrap();
        let a = annotated(DRAIN_STATUS_ANNOTATION, &raw);
        assert_eq!(drain_status("old", &a).unwrap(), Some(status));
    }

    #[test]
    fn a_statefulset_pods_addresses_lead_to_the_statefulset_without_its_pod() {
        let mut holder = crate::ipam::Holder {
            handle: "net:db/pg-0:eth0".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            attrs: crate::ipam::Attributes {
                namespace: Some("db".into()),
                pod: Some("pg-0".into()),
                statefulset: Some("pg".into()),
                ..Default::default()
            },
        };
        assert_eq!(
            held_for_statefulset(&holder),
            Some(workload("StatefulSet", "db", "pg"))
        );
        holder.attrs.statefulset = None;
        assert_eq!(held_for_statefulset(&holder), None);
    }

    #[test]
    fn owners_name_the_workload_to_restart_or_why_there_is_none() {
        let own = |api_version, kind, name| Owner {
            api_version,
            kind,
            name,
        };
        let sts = own("apps/v1", "StatefulSet", "db");
        assert_eq!(
            pod_workload("prod", Some(&sts)),
            PodOwner::Workload(workload("StatefulSet", "prod", "db"))
        );
        let ds = own("apps/v1", "DaemonSet", "agent");
        assert_eq!(
            pod_workload("kube-system", Some(&ds)),
            PodOwner::Workload(workload("DaemonSet", "kube-system", "agent"))
        );
        let rs = own("apps/v1", "ReplicaSet", "web-5d8f");
        assert_eq!(
            pod_workload("prod", Some(&rs)),
            PodOwner::ReplicaSet("web-5d8f".into())
        );
        let job = own("batch/v1", "Job", "nightly");
        assert_eq!(
            pod_workload("prod", Some(&job)),
            PodOwner::Stranded("owned by Job prod/nightly".into())
        );
        assert_eq!(
            pod_workload("prod", None),
            PodOwner::Stranded("no owner".into())
        );
        let deploy = own("apps/v1", "Deployment", "web");
        assert_eq!(
            replicaset_workload("prod", "web-5d8f", Some(&deploy)),
            Ok(workload("Deployment", "prod", "web"))
        );
        let err = replicaset_workload("prod", "bare", None).unwrap_err();
        assert!(err.contains("ReplicaSet prod/bare"), "{err}");
    }
}
