//! Who the pods holding a draining pool's addresses belong to, for `ipam migrate --dry-run`:
//! with a kubeconfig, each pod's workload by the owner rules the controller follows
//! (`tessera_core::drain`); without one, the pods by name and node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tessera_core::drain::{
    held_for_statefulset, pod_workload, replicaset_workload, Owner, PodOwner,
};
use tessera_core::ipam::Holder;
use tessera_k8s_lookup::{ApiAccess, Client, LookupError, OwnerReference};

/// How long one GET may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Groups holders by the workload a restart moves them with.
pub struct Resolver {
    client: Option<Client>,
}

/// What a restart does for one pod.
enum Fate {
    /// Restarting this workload moves it.
    Moved(String),
    /// Nothing moves it, for this reason.
    Stranded(String),
}

impl Resolver {
    /// A resolver reading pods through `kubeconfig`, or grouping by pod and node without one.
    pub fn new(kubeconfig: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = kubeconfig else {
            return Ok(Self { client: None });
        };
        let access = ApiAccess::from_kubeconfig(path, None)
            .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?;
        Ok(Self {
            client: Some(Client::new(access, LOOKUP_TIMEOUT)?),
        })
    }

    /// The holders, grouped, as lines to print.
    pub fn grouped(&self, holders: &[Holder]) -> String {
        let Some(client) = &self.client else {
            return by_pod(holders);
        };
        let mut moved: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut stranded = Vec::new();
        for h in holders {
            let what = describe(h);
            match fate(client, h) {
                Fate::Moved(workload) => moved.entry(workload).or_default().push(what),
                Fate::Stranded(reason) => stranded.push(format!("{what}: {reason}")),
            }
        }
        let mut lines = Vec::new();
        if !moved.is_empty() {
            lines.push("   workloads to restart:".to_string());
            for (workload, pods) in moved {
                lines.push(format!("   - {workload}: {}", pods.join(", ")));
            }
        }
        if !stranded.is_empty() {
            lines.push("   left to you (no restart moves them):".to_string());
            lines.extend(stranded.into_iter().map(|s| format!("   - {s}")));
        }
        lines.join("\n")
    }
}

/// `pod default/web-1 on node1 (10.244.0.1)`, or the handle when no pod is recorded.
fn describe(h: &Holder) -> String {
    let who = h
        .pod()
        .map_or_else(|| format!("handle {}", h.handle), |p| format!("pod {p}"));
    let node = h
        .attrs
        .node
        .as_deref()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    let addresses: Vec<String> = h.addresses.iter().map(ToString::to_string).collect();
    format!("{who}{node} ({})", addresses.join(", "))
}

/// Without Kubernetes: the pods by name and node.
fn by_pod(holders: &[Holder]) -> String {
    let mut lines = vec!["   held by (owners not resolved: no kubeconfig):".to_string()];
    for h in holders {
        let addresses: Vec<String> = h.addresses.iter().map(ToString::to_string).collect();
        let who = match (h.pod(), h.attrs.node.as_deref()) {
            (Some(pod), Some(node)) => format!("pod {pod} on node {node}"),
            (Some(pod), None) => format!("pod {pod}"),
            (None, _) => format!("handle {}", h.handle),
        };
        lines.push(format!("   - {who}: {}", addresses.join(", ")));
    }
    lines.join("\n")
}

/// The workload a restart moves `h`'s pod with, read from the API server.
fn fate(client: &Client, h: &Holder) -> Fate {
    let (Some(ns), Some(name)) = (h.attrs.namespace.as_deref(), h.attrs.pod.as_deref()) else {
        return Fate::Stranded("not a pod's address".into());
    };
    if let Some(set) = held_for_statefulset(h) {
        return Fate::Moved(set.to_string());
    }
    let pod = match client.pod(ns, name) {
        Ok(pod) => pod,
        Err(e) => return unreadable(e),
    };
    match pod_workload(ns, controller(&pod.metadata.owner_references).as_ref()) {
        PodOwner::Workload(w) => Fate::Moved(w.to_string()),
        PodOwner::Stranded(reason) => Fate::Stranded(reason),
        PodOwner::ReplicaSet(rs) => match client.replica_set(ns, &rs) {
            Ok(set) => {
                let owner = controller(&set.metadata.owner_references);
                match replicaset_workload(ns, &rs, owner.as_ref()) {
                    Ok(w) => Fate::Moved(w.to_string()),
                    Err(reason) => Fate::Stranded(reason),
                }
            }
            Err(e) => unreadable(e),
        },
    }
}

fn unreadable(e: LookupError) -> Fate {
    match e {
        LookupError::NotFound { .. } => Fate::Stranded(format!("{e}: no restart moves it")),
        _ => Fate::Stranded(format!("owner not resolved: {e}")),
    }
}

/// The controlling owner among `refs`.
fn controller(refs: &[OwnerReference]) -> Option<Owner<'_>> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner {
            api_version: &r.api_version,
            kind: &r.kind,
            name: &r.name,
        })
}
