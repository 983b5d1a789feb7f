//! What ADD reads from the Kubernetes API server when the network configuration has a
//! `kubernetes` section: the pod (annotations, labels, uid) and its namespace (labels and
//! annotations), one GET each under the section's timeout.

use std::collections::BTreeMap;

use tessera_core::resources::kube;
use tessera_core::resources::meta::ObjectMeta;
use tessera_k8s_lookup::{ApiAccess, Client, Namespace, OwnerReference};

use crate::config::KubernetesConf;
use crate::error::CniError;

/// The pod as the API server has it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    /// The pod's uid.
    pub uid: String,
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's namespace (labels and annotations), for pool selection.
    pub namespace: kube::Namespace,
    /// The workload that owns the pod (a ReplicaSet of a Deployment stands for it), for its
    /// auto pools.
    pub app: Option<tessera_core::autopool::App>,
    /// The StatefulSet that owns the pod (its controller owner reference of kind
    /// `StatefulSet`, `apps/v1`), if any: such a pod keeps its addresses under its name.
    pub statefulset: Option<String>,
}

/// Reads the pod `namespace/name` and its namespace with the settings of `conf`.
pub fn look_up(conf: &KubernetesConf, namespace: &str, name: &str) -> Result<PodFacts, CniError> {
    let in_section = |e: CniError| e.context(format!("set in {}", conf.path));
    let client = client(conf).map_err(in_section)?;
    let (pod, ns) = client
        .pod_and_namespace(namespace, name)
        .map_err(|e| in_section(e.into()))?;
    let statefulset = statefulset_of(&pod.metadata.owner_references);
    let app = crate::autopool::pod_app(
        namespace,
        &pod.metadata.owner_references,
        &pod.metadata.labels,
    );
    Ok(PodFacts {
        app,
        statefulset,
        uid: pod.metadata.uid,
        annotations: pod.metadata.annotations,
        labels: pod.metadata.labels,
        namespace: namespace_record(ns),
    })
}

/// The StatefulSet among a pod's owners: the owner of kind `StatefulSet` in `apps/v1` that
/// is its controller (an owner reference without the flag counts, as older objects lack it).
fn statefulset_of(owners: &[OwnerReference]) -> Option<String> {
    owners
        .iter()
        .find(|o| {
            o.kind == "StatefulSet" && o.api_version == "apps/v1" && o.controller != Some(false)
        })
        .map(|o| o.name.clone())
        .filter(|name| !name.is_empty())
}

fn client(conf: &KubernetesConf) -> Result<Client, CniError> {
    let api_root_field = format!("{}.k8s_api_root", conf.path);
    let api_root = conf
        .api_root
        .as_deref()
        .map(|root| (root, api_root_field.as_str()));
    let access = match (&conf.kubeconfig, api_root) {
        (Some(path), api_root) => ApiAccess::from_kubeconfig(path, api_root)?,
        (None, Some((root, field))) => ApiAccess::anonymous(root, field)?,
        (None, None) => {
            return Err(CniError::config(format!(
                "{} names neither kubeconfig nor k8s_api_root",
                conf.path
            )))
        }
    };
    Ok(Client::new(access, conf.timeout)?)
}

/// The namespace as the allocator's namespace record.
fn namespace_record(ns: Namespace) -> kube::Namespace {
    let meta = ns.metadata;
    kube::Namespace {
        metadata: ObjectMeta {
            name: meta.name,
            labels: meta.labels,
            annotations: meta.annotations,
            uid: Some(meta.uid).filter(|u| !u.is_empty()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(api_version: &str, kind: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "web".into(),
            controller,
            ..Default::default()
        }
    }

    #[test]
    fn only_an_apps_v1_statefulset_controller_makes_a_pod_sticky() {
        let sts = |o: OwnerReference| statefulset_of(&[o]);
        assert_eq!(
            sts(owner("apps/v1", "StatefulSet", Some(true))).as_deref(),
            Some("web")
        );
        assert_eq!(
            sts(owner("apps/v1", "StatefulSet", None)).as_deref(),
            Some("web")
        );
        assert_eq!(sts(owner("apps/v1", "StatefulSet", Some(false))), None);
        assert_eq!(sts(owner("apps/v1", "ReplicaSet", Some(true))), None);
        assert_eq!(
            sts(owner("example.com/v1", "StatefulSet", Some(true))),
            None
        );
        assert_eq!(statefulset_of(&[]), None);
    }
}
