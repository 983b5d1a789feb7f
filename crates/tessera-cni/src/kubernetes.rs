//! What ADD reads from the Kubernetes API server when the network configuration has a
//! `kubernetes` section: the pod (annotations, labels, uid) and its namespace (labels and
//! annotations), one GET each under the section's timeout; and, for a pod of a Job that names
//! a SpiderSubnet, the Job, whose CronJob owns the auto pools.

use std::collections::BTreeMap;

use tessera_core::autopool::App;
use tessera_core::resources::kube;
use tessera_core::resources::meta::ObjectMeta;
use tessera_k8s_lookup::{ApiAccess, Client, Job, Namespace, OwnerReference, Pod};

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
    /// The workload that owns the pod (a ReplicaSet of a Deployment stands for it, a Job
    /// for the CronJob that started it), for its auto pools.
    pub app: Option<App>,
    /// The StatefulSet that owns the pod (its controller owner reference of kind
    /// `StatefulSet`, `apps/v1`), if any: such a pod keeps its addresses under its name.
    pub statefulset: Option<String>,
}

/// Reads the pod `namespace/name` and its namespace with the settings of `conf`.
pub fn look_up(conf: &KubernetesConf, namespace: &str, name: &str) -> Result<PodFacts, CniError> {
    let in_section = |e: CniError| e.context(format!("set in {}", conf.path));
    let client = client(conf).map_err(in_section)?;
    let (pod, ns, job) = client
        .pod_namespace_and_job(namespace, name, job_to_read)
        .map_err(|e| in_section(e.into()))?;
    let statefulset = statefulset_of(&pod.metadata.owner_references);
    let app = app_of(namespace, &pod, job.as_ref());
    Ok(PodFacts {
        app,
        statefulset,
        uid: pod.metadata.uid,
        annotations: pod.metadata.annotations,
        labels: pod.metadata.labels,
        namespace: namespace_record(ns),
    })
}

/// The Job to read for `pod`: its controller owner, when that is a Job and the pod names a
/// SpiderSubnet (only then does the Job's CronJob matter).
fn job_to_read(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    if !tessera_core::autopool::names_subnet(&meta.annotations) {
        return None;
    }
    controller(&meta.owner_references)
        .filter(|o| tessera_core::autopool::is_job(&o.api_version, &o.kind))
        .map(|o| o.name.clone())
}

/// The workload of `pod` for its auto pools: the CronJob that started its Job (`job`, read
/// when [`job_to_read`] named it), else its own controller's.
fn app_of(namespace: &str, pod: &Pod, job: Option<&Job>) -> Option<App> {
    let cron_job = job
        .and_then(|job| controller(&job.metadata.owner_references))
        .and_then(|o| {
            tessera_core::autopool::cron_job_app(namespace, &o.api_version, &o.kind, &o.name)
        });
    let meta = &pod.metadata;
    cron_job.or_else(|| crate::autopool::pod_app(namespace, &meta.owner_references, &meta.labels))
}

/// An object's controller: its owner reference with the flag (or without it, as older
/// objects lack it).
fn controller(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller != Some(false))
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

    fn job_pod(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.owner_references = vec![OwnerReference {
            name: "nightly-29000000".into(),
            ..owner("batch/v1", "Job", Some(true))
        }];
        pod.metadata.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod
    }

    fn job_owned_by(owners: Vec<OwnerReference>) -> Job {
        let mut job = Job::default();
        job.metadata.owner_references = owners;
        job
    }

    #[test]
    fn a_pod_of_a_cron_jobs_job_naming_a_subnet_belongs_to_the_cron_job() {
        let subnet = (
            tessera_core::autopool::SUBNET_ANNOTATION,
            r#"{"ipv4": ["s4"]}"#,
        );
        let pod = job_pod(&[subnet]);
        assert_eq!(job_to_read(&pod).as_deref(), Some("nightly-29000000"));
        let cron = OwnerReference {
            name: "nightly".into(),
            ..owner("batch/v1", "CronJob", Some(true))
        };
        let app = app_of("shop", &pod, Some(&job_owned_by(vec![cron]))).unwrap();
        assert_eq!(
            (app.kind.as_str(), app.name.as_str()),
            ("CronJob", "nightly")
        );
        // A Job of its own is the workload.
        let app = app_of("shop", &pod, Some(&job_owned_by(Vec::new()))).unwrap();
        assert_eq!(
            (app.kind.as_str(), app.name.as_str()),
            ("Job", "nightly-29000000")
        );
    }

    #[test]
    fn the_job_is_read_only_for_a_pod_of_a_job_that_names_a_subnet() {
        assert_eq!(job_to_read(&job_pod(&[])), None);
        let subnet = (tessera_core::autopool::SUBNETS_ANNOTATION, "[]");
        let mut pod = job_pod(&[subnet]);
        pod.metadata.owner_references = vec![owner("apps/v1", "ReplicaSet", Some(true))];
        assert_eq!(job_to_read(&pod), None);
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
