//! Auto pools on the ADD path (with a `kubernetes` section): a pod whose annotations name a
//! SpiderSubnet for this interface (`ipam.spidernet.io/subnet` or `subnets`) draws only from
//! its workload's auto pools, which tessera-controller cuts from that subnet. The pools are
//! found by name (`auto4-<workload>-<interface>-*`) and kept to the workload by their
//! `podAffinity`, which the pod matches with the workload labels [`App::pod_labels`] adds.

use std::collections::BTreeMap;

use tessera_core::autopool::{self as rules, App, Shortage};
use tessera_core::store::Store;
use tessera_k8s_lookup::OwnerReference;

use crate::error::{code, CniError};
use crate::spider_annotations::pool_ref;

/// The auto pools of one pod interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoPools {
    /// Name patterns, one per family the annotation names a subnet for, as the allocator
    /// reads them.
    pub patterns: Vec<String>,
    /// The same patterns, for messages.
    pub names: Vec<String>,
    /// Where the controller records each family's shortage.
    pub shortage_keys: Vec<String>,
    /// `Deployment shop/web`, for messages.
    pub workload: String,
}

/// The workload that owns a pod, from its controller owner reference.
pub fn pod_app(
    namespace: &str,
    owners: &[OwnerReference],
    labels: &BTreeMap<String, String>,
) -> Option<App> {
    let owner = owners.iter().find(|o| o.controller != Some(false))?;
    rules::pod_app(
        namespace,
        &owner.api_version,
        &owner.kind,
        &owner.name,
        labels,
    )
}

/// The auto pools of interface `ifname` for a pod of `app` with `annotations`; `None` when
/// the annotations name no subnet for it.
pub fn for_pod(
    annotations: &BTreeMap<String, String>,
    app: Option<&App>,
    ifname: &str,
) -> Result<Option<AutoPools>, CniError> {
    let choices =
        rules::subnet_choices(annotations).map_err(|e| CniError::new(code::BAD_POD_REQUEST, e))?;
    let Some(choice) = choices.into_iter().find(|c| c.interface == ifname) else {
        return Ok(None);
    };
    let Some(app) = app else {
        return Err(CniError::new(
            code::BAD_POD_REQUEST,
            format!(
                "the pod's annotations name a SpiderSubnet for {ifname}, but no Deployment, \
                 ReplicaSet, StatefulSet, DaemonSet or Job owns the pod, and auto pools serve \
                 workloads only; name a pool with ipam.spidernet.io/ippool instead"
            ),
        ));
    };
    let mut out = AutoPools {
        patterns: Vec::new(),
        names: Vec::new(),
        shortage_keys: Vec::new(),
        workload: format!("{} {}/{}", app.kind, app.namespace, app.name),
    };
    for v6 in [false, true] {
        if choice.subnet(v6).is_some() {
            let prefix = rules::pool_name_prefix(v6, &app.name, ifname);
            out.shortage_keys
                .push(rules::shortage_key(&app.namespace, &prefix));
            let pattern = format!("{prefix}*");
            out.patterns.push(pool_ref(&pattern));
            out.names.push(pattern);
        }
    }
    Ok(Some(out))
}

/// The error of an ADD whose auto pools gave no address: the shortage the controller
/// recorded, or, when the pools do not exist yet (`pool_missing`), that they are on their way.
pub fn error(store: &dyn Store, pools: &AutoPools, pool_missing: bool) -> Option<CniError> {
    shortage_error(store, pools).or_else(|| pool_missing.then(|| not_created_error(pools)))
}

/// Why the auto pools gave no address, when the controller recorded a shortage for them:
/// the error names the subnet and both counts.
fn shortage_error(store: &dyn Store, pools: &AutoPools) -> Option<CniError> {
    let shortage = pools.shortage_keys.iter().find_map(|key| {
        let kv = store.get(key).ok()??;
        serde_json::from_slice::<Shortage>(&kv.value).ok()
    })?;
    Some(CniError::new(code::NO_ADDRESS, shortage.to_string()))
}

/// The error when no auto pool of the workload exists yet and no shortage is recorded.
fn not_created_error(pools: &AutoPools) -> CniError {
    CniError::new(
        code::TRY_AGAIN,
        format!(
            "the auto pool of {} ({}) does not exist yet: tessera-controller creates it from \
             the SpiderSubnet once it sees the workload; the runtime retries the ADD (if it \
             persists, check that tessera-controller runs)",
            pools.workload,
            pools.names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn deployment_app() -> App {
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "nginx-7f9c".into(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        pod_app(
            "shop",
            &[owner],
            &annotations(&[("pod-template-hash", "7f9c")]),
        )
        .unwrap()
    }

    #[test]
    fn a_pod_naming_a_subnet_draws_from_its_workloads_pools_per_family() {
        let a = annotations(&[(
            rules::SUBNET_ANNOTATION,
            r#"{"ipv4": ["s4"], "ipv6": ["s6"]}"#,
        )]);
        let app = deployment_app();
        let pools = for_pod(&a, Some(&app), "eth0").unwrap().unwrap();
        assert_eq!(
            pools.patterns,
            [
                pool_ref("auto4-nginx-eth0-*"),
                pool_ref("auto6-nginx-eth0-*")
            ]
        );
        assert_eq!(pools.workload, "Deployment shop/nginx");
        assert_eq!(
            pools.shortage_keys[0],
            "autopool-shortages/shop/auto4-nginx-eth0-"
        );
        assert_eq!(for_pod(&a, Some(&app), "net1").unwrap(), None);
        assert_eq!(
            for_pod(&annotations(&[]), Some(&app), "eth0").unwrap(),
            None
        );
    }

    #[test]
    fn no_address_from_the_auto_pools_is_explained_by_the_shortage_or_the_missing_pool() {
        use tessera_core::store::{MemoryStore, Op};
        let a = annotations(&[(rules::SUBNET_ANNOTATION, r#"{"ipv4": ["tiny"]}"#)]);
        let pools = for_pod(&a, Some(&deployment_app()), "eth0")
            .unwrap()
            .unwrap();
        let store = MemoryStore::new();
        assert!(
            error(&store, &pools, false).is_none(),
            "a full pool keeps its own error"
        );
        let waiting = error(&store, &pools, true).unwrap();
        assert_eq!(waiting.code, code::TRY_AGAIN);
        assert!(
            waiting.to_string().contains("auto4-nginx-eth0-*"),
            "{waiting}"
        );
        let shortage = Shortage {
            subnet: "tiny".into(),
            asked: 4,
            free: 2,
            workload: "Deployment shop/nginx".into(),
        };
        let value = serde_json::to_vec(&shortage).unwrap();
        store
            .txn(&[], &[Op::Put(pools.shortage_keys[0].clone(), value)])
            .unwrap();
        let short = error(&store, &pools, true).unwrap();
        assert_eq!(short.code, code::NO_ADDRESS);
        assert!(short.to_string().contains("4 asked for, 2 free"), "{short}");
    }

    #[test]
    fn a_pod_without_a_workload_cannot_use_a_subnet() {
        let a = annotations(&[(rules::SUBNET_ANNOTATION, r#"{"ipv4": ["s4"]}"#)]);
        let e = for_pod(&a, None, "eth0").unwrap_err();
        assert!(e.to_string().contains("no Deployment"), "{e}");
    }
}
