//! What ADD reads from the Kubernetes API server when the network configuration has a
//! `kubernetes` section: the pod (annotations, labels, uid) and its namespace (labels and
//! annotations), one GET each under the section's timeout.

use std::collections::BTreeMap;

use tessera_core::resources::kube;
use tessera_core::resources::meta::ObjectMeta;
use tessera_k8s_lookup::{ApiAccess, Client, Namespace};

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
}

/// Reads the pod `namespace/name` and its namespace with the settings of `conf`.
pub fn look_up(conf: &KubernetesConf, namespace: &str, name: &str) -> Result<PodFacts, CniError> {
    let in_section = |e: CniError| e.context(format!("set in {}", conf.path));
    let client = client(conf).map_err(in_section)?;
    let (pod, ns) = client
        .pod_and_namespace(namespace, name)
        .map_err(|e| in_section(e.into()))?;
    Ok(PodFacts {
        uid: pod.metadata.uid,
        annotations: pod.metadata.annotations,
        labels: pod.metadata.labels,
        namespace: namespace_record(ns),
    })
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
