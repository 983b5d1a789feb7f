//! Spiderpool's auto pools (its SpiderSubnet feature): a workload whose pod template names a
//! SpiderSubnet gets a SpiderIPPool per interface and address family, cut from that subnet and
//! sized to its replicas. The controller makes and resizes the pools; the CNI plugin finds the
//! pod's pool by the same names and labels. The rules both sides share live here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ranges::IpRangeSet;
use crate::resources::spider::{SpiderIPPoolSpec, SpiderSubnetSpec};

/// Pod annotation naming one SpiderSubnet per family for one interface (default `eth0`).
pub const SUBNET_ANNOTATION: &str = "ipam.spidernet.io/subnet";
/// Pod annotation naming SpiderSubnets for several interfaces; wins over `subnet`.
pub const SUBNETS_ANNOTATION: &str = "ipam.spidernet.io/subnets";
/// Pod annotation sizing the pool: `"+N"` = replicas + N, `"N"` = N addresses.
pub const IP_NUMBER_ANNOTATION: &str = "ipam.spidernet.io/ippool-ip-number";
/// Pod annotation: `"false"` keeps the pool when the workload is deleted.
pub const RECLAIM_ANNOTATION: &str = "ipam.spidernet.io/ippool-reclaim";

/// Pool label: the workload's API group and version, `apps_v1`.
pub const OWNER_GV_LABEL: &str = "ipam.spidernet.io/owner-application-gv";
/// Pool label: the workload's kind.
pub const OWNER_KIND_LABEL: &str = "ipam.spidernet.io/owner-application-kind";
/// Pool label: the workload's namespace.
pub const OWNER_NAMESPACE_LABEL: &str = "ipam.spidernet.io/owner-application-namespace";
/// Pool label: the workload's name.
pub const OWNER_NAME_LABEL: &str = "ipam.spidernet.io/owner-application-name";
/// Pool label: the workload's uid.
pub const OWNER_UID_LABEL: &str = "ipam.spidernet.io/owner-application-uid";
/// Pool label: the SpiderSubnet the pool was cut from.
pub const OWNER_SUBNET_LABEL: &str = "ipam.spidernet.io/owner-spider-subnet";
/// Pool label: the pod interface the pool serves.
pub const INTERFACE_LABEL: &str = "ipam.spidernet.io/interface";
/// Pool label: `IPv4` or `IPv6`.
pub const IP_VERSION_LABEL: &str = "ipam.spidernet.io/ip-version";
/// Pool label: whether deleting the workload deletes the pool.
pub const RECLAIM_LABEL: &str = RECLAIM_ANNOTATION;
/// Pool label: the pool's subnet with `.`, `:` and `/` written as `-`.
pub const POOL_CIDR_LABEL: &str = "ipam.spidernet.io/ippool-cidr";

/// Labels the CNI plugin gives a pod, from its workload, before matching an auto pool's
/// `podAffinity` (Spiderpool's agent does the same): group, version, kind, namespace, name.
pub const APP_API_GROUP_LABEL: &str = "ipam.spidernet.io/app-api-group";
/// See [`APP_API_GROUP_LABEL`].
pub const APP_API_VERSION_LABEL: &str = "ipam.spidernet.io/app-api-version";
/// See [`APP_API_GROUP_LABEL`].
pub const APP_KIND_LABEL: &str = "ipam.spidernet.io/app-kind";
/// See [`APP_API_GROUP_LABEL`].
pub const APP_NAMESPACE_LABEL: &str = "ipam.spidernet.io/app-namespace";
/// See [`APP_API_GROUP_LABEL`].
pub const APP_NAME_LABEL: &str = "ipam.spidernet.io/app-name";

/// Kubernetes' longest object name; Spiderpool cuts the workload's name to fit.
const MAX_NAME_LENGTH: usize = 253;
/// How many characters of the workload's uid end a pool name.
const UID_PART_LENGTH: usize = 5;
/// The interface `subnet` serves when it names none.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The subnets one interface's pools are cut from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetChoice {
    /// The pod interface (`eth0`, `net1`).
    pub interface: String,
    /// The SpiderSubnet of the IPv4 pool.
    pub ipv4: Option<String>,
    /// The SpiderSubnet of the IPv6 pool.
    pub ipv6: Option<String>,
}

impl SubnetChoice {
    /// The subnet of a family.
    pub fn subnet(&self, v6: bool) -> Option<&str> {
        if v6 { &self.ipv6 } else { &self.ipv4 }.as_deref()
    }
}

/// The subnets named by `subnets` or else `subnet`; empty when neither is set. The error
/// names the annotation and what is wrong with it.
pub fn subnet_choices(annotations: &BTreeMap<String, String>) -> Result<Vec<SubnetChoice>, String> {
    let bad = |key: &str, why: String| format!("pod annotation {key}: {why}");
    if let Some(text) = annotations.get(SUBNETS_ANNOTATION) {
        let value = parse_json(text).map_err(|e| bad(SUBNETS_ANNOTATION, e))?;
        let Value::Array(entries) = value else {
            return Err(bad(
                SUBNETS_ANNOTATION,
                "must be a JSON list, e.g. [{\"interface\": \"eth0\", \"ipv4\": [\"subnet-a\"]}]"
                    .into(),
            ));
        };
        let mut out: Vec<SubnetChoice> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let choice = choice(entry, None)
                .map_err(|e| bad(SUBNETS_ANNOTATION, format!("entry {i}: {e}")))?;
            if out.iter().any(|c| c.interface == choice.interface) {
                return Err(bad(
                    SUBNETS_ANNOTATION,
                    format!("interface {:?} is listed twice", choice.interface),
                ));
            }
            out.push(choice);
        }
        return Ok(out);
    }
    match annotations.get(SUBNET_ANNOTATION) {
        Some(text) => {
            let value = parse_json(text).map_err(|e| bad(SUBNET_ANNOTATION, e))?;
            Ok(vec![
                choice(&value, Some(DEFAULT_INTERFACE)).map_err(|e| bad(SUBNET_ANNOTATION, e))?
            ])
        }
        None => Ok(Vec::new()),
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("is not valid JSON ({e})"))
}

/// One `{"interface": ..., "ipv4": [...], "ipv6": [...]}` object. Spiderpool uses the first
/// subnet of each list.
fn choice(value: &Value, default_interface: Option<&str>) -> Result<SubnetChoice, String> {
    let Value::Object(fields) = value else {
        return Err("must be a JSON object, e.g. {\"ipv4\": [\"subnet-a\"]}".into());
    };
    let interface = match (fields.get("interface"), default_interface) {
        (Some(Value::String(name)), _) if !name.is_empty() => name.clone(),
        (None, Some(default)) => default.to_string(),
        _ => return Err("\"interface\" must name the pod interface, e.g. \"eth0\"".into()),
    };
    let first = |key: &str| -> Result<Option<String>, String> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(Value::String(name)) if !name.is_empty() => Ok(Some(name.clone())),
                Some(_) => Err(format!("{key:?} must list SpiderSubnet names")),
            },
            Some(_) => Err(format!("{key:?} must be a list of SpiderSubnet names")),
        }
    };
    let (ipv4, ipv6) = (first("ipv4")?, first("ipv6")?);
    if ipv4.is_none() && ipv6.is_none() {
        return Err("names no subnet: give \"ipv4\" or \"ipv6\" a SpiderSubnet name".into());
    }
    Ok(SubnetChoice {
        interface,
        ipv4,
        ipv6,
    })
}

/// How many addresses an auto pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpNumber {
    /// `"+N"`: the workload's replicas plus N.
    Flexible(u64),
    /// `"N"`: N, whatever the replicas.
    Fixed(u64),
}

impl IpNumber {
    /// The annotation's value; `"+1"` when it is absent, as in Spiderpool.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, String> {
        let Some(text) = annotations.get(IP_NUMBER_ANNOTATION) else {
            return Ok(IpNumber::Flexible(1));
        };
        let text = text.trim();
        let bad = || {
            format!(
                "pod annotation {IP_NUMBER_ANNOTATION}: {text:?} is neither \"+N\" (replicas plus \
                 N) nor \"N\" (N addresses), e.g. \"+2\" or \"5\""
            )
        };
        match text.strip_prefix('+') {
            Some(extra) => extra.parse().map(IpNumber::Flexible).map_err(|_| bad()),
            None => text.parse().map(IpNumber::Fixed).map_err(|_| bad()),
        }
    }

    /// The pool size for `replicas`.
    pub fn size(self, replicas: u64) -> u64 {
        match self {
            IpNumber::Flexible(extra) => replicas.saturating_add(extra),
            IpNumber::Fixed(n) => n,
        }
    }
}

/// Whether deleting the workload deletes its pools (`ippool-reclaim`, default true).
pub fn reclaim(annotations: &BTreeMap<String, String>) -> Result<bool, String> {
    match annotations.get(RECLAIM_ANNOTATION).map(|v| v.trim()) {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(format!(
            "pod annotation {RECLAIM_ANNOTATION}: {v:?} is neither \"true\" nor \"false\""
        )),
    }
}

/// The workload an auto pool belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    /// API group (`apps`, `batch`).
    pub group: String,
    /// API version (`v1`).
    pub version: String,
    /// Kind (`Deployment`).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl App {
    /// The labels a pod of this workload is matched with ([`APP_API_GROUP_LABEL`]...); also
    /// the auto pool's `podAffinity`.
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        [
            (APP_API_GROUP_LABEL, &self.group),
            (APP_API_VERSION_LABEL, &self.version),
            (APP_KIND_LABEL, &self.kind),
            (APP_NAMESPACE_LABEL, &self.namespace),
            (APP_NAME_LABEL, &self.name),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }

    /// `owner-application-gv`: group and version joined with `_` (`apps_v1`; `v1` alone for
    /// the core group).
    pub fn gv_label(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}_{}", self.group, self.version)
        }
    }
}

/// Whether `annotations` (a pod's or a pod template's) name a SpiderSubnet (`subnet` or
/// `subnets`): the pod draws from its workload's auto pools.
pub fn names_subnet(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(SUBNET_ANNOTATION) || annotations.contains_key(SUBNETS_ANNOTATION)
}

/// Whether a pod's controller owner (`api_version`, `kind`) is a Job, which a CronJob may
/// have started: the pods of a CronJob's Jobs belong to the CronJob (see [`cron_job_app`]).
pub fn is_job(api_version: &str, kind: &str) -> bool {
    api_version.split_once('/').map(|(group, _)| group) == Some("batch") && kind == "Job"
}

/// The CronJob that started a Job, from the Job's controller owner reference (`api_version`,
/// `kind`, `name`): as in Spiderpool, the application of the Job's pods, whose auto pools
/// serve every Job it starts. `None` when the owner is no CronJob.
pub fn cron_job_app(namespace: &str, api_version: &str, kind: &str, name: &str) -> Option<App> {
    let (group, version) = api_version.split_once('/')?;
    (group == "batch" && kind == "CronJob" && !name.is_empty()).then(|| App {
        group: group.to_string(),
        version: version.to_string(),
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The workload that owns a pod, from its controller owner reference (`api_version`, `kind`,
/// `name`) and its labels (the pods of a CronJob's Jobs: see [`cron_job_app`]): a ReplicaSet a Deployment made (its name is the Deployment's plus
/// `-` and the pod's `pod-template-hash`) stands for that Deployment. `None` for owners that
/// are not workloads with auto pools.
pub fn pod_app(
    namespace: &str,
    api_version: &str,
    kind: &str,
    name: &str,
    pod_labels: &BTreeMap<String, String>,
) -> Option<App> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let app = |group: &str, kind: &str, name: &str| App {
        group: group.to_string(),
        version: version.to_string(),
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    match (group, kind) {
        ("apps", "ReplicaSet") => {
            let deployment = pod_labels
                .get("pod-template-hash")
                .and_then(|hash| name.strip_suffix(hash.as_str()))
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            Some(match deployment {
                Some(deployment) => app(group, "Deployment", deployment),
                None => app(group, kind, name),
            })
        }
        ("apps", "StatefulSet" | "DaemonSet") | ("batch", "Job") => Some(app(group, kind, name)),
        _ => None,
    }
}

/// The start every auto pool name of a workload, interface and family shares:
/// `auto4-<name>-<interface>-` (the workload's name cut so the whole stays within 253
/// characters, as Spiderpool cuts it).
pub fn pool_name_prefix(v6: bool, app_name: &str, interface: &str) -> String {
    // `auto4-`, two more `-` and the uid part.
    let room = MAX_NAME_LENGTH - UID_PART_LENGTH - 8;
    let mut app_name = app_name.to_ascii_lowercase();
    let interface = interface.to_ascii_lowercase();
    if app_name.len() + interface.len() > room {
        app_name.truncate(room.saturating_sub(interface.len()));
    }
    format!("auto{}-{app_name}-{interface}-", if v6 { 6 } else { 4 })
}

/// The auto pool's name: [`pool_name_prefix`] and the first 5 characters of the last part of
/// the workload's uid (`auto4-nginx-eth0-337bc`).
pub fn pool_name(v6: bool, app_name: &str, interface: &str, app_uid: &str) -> String {
    let last = app_uid.rsplit('-').next().unwrap_or(app_uid);
    let part: String = last.chars().take(UID_PART_LENGTH).collect();
    format!("{}{part}", pool_name_prefix(v6, app_name, interface))
}

/// The `ippool-cidr` label of a subnet: `10.244.0.0/16` → `10-244-0-0-16`.
pub fn cidr_label(subnet: &str) -> String {
    subnet.replace(['.', ':', '/'], "-")
}

/// The addresses of `subnet` no pool holds and no reservation keeps back: what new and
/// growing auto pools are cut from. `pools` are every SpiderIPPool (those of other subnets
/// are passed over); an address listed in a pool's `ips` counts as taken even when the pool
/// excludes it.
pub fn subnet_free<'a>(
    subnet: &SpiderSubnetSpec,
    pools: impl IntoIterator<Item = &'a SpiderIPPoolSpec>,
    reserved: &IpRangeSet,
) -> IpRangeSet {
    let v6 = subnet.is_v6();
    let mut free = subnet
        .total_ips()
        .unwrap_or_else(|_| IpRangeSet::empty(v6))
        .subtract(reserved);
    let net = subnet.subnet_net();
    for pool in pools {
        if net.is_some() && pool.subnet_net() == net {
            if let Ok(taken) = IpRangeSet::parse(&pool.ips, v6) {
                free = free.subtract(&taken);
            }
        }
    }
    free
}

/// Why a workload's auto pool could not get the addresses it needs, kept in the datastore
/// under [`shortage_key`] for the CNI plugin's error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    /// The SpiderSubnet.
    pub subnet: String,
    /// How many addresses the pool needs.
    pub asked: u64,
    /// How many the subnet has free (beyond what the pool already holds).
    pub free: u64,
    /// The workload, `Deployment shop/web`.
    pub workload: String,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpiderSubnet {} has too few free addresses for the auto pool of {}: {} asked for, \
             {} free; add addresses to the subnet's ips, or lower the replicas or \
             {IP_NUMBER_ANNOTATION}",
            self.subnet, self.workload, self.asked, self.free
        )
    }
}

/// Where every [`Shortage`] is kept.
pub const SHORTAGE_PREFIX: &str = "autopool-shortages/";

/// Where the shortage of the pool `pool_name_prefix` of a workload in `namespace` is kept.
pub fn shortage_key(namespace: &str, pool_name_prefix: &str) -> String {
    format!("{SHORTAGE_PREFIX}{namespace}/{pool_name_prefix}")
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

    #[test]
    fn subnet_names_eth0_and_subnets_name_each_interface() {
        let one = annotations(&[(SUBNET_ANNOTATION, r#"{"ipv4": ["nginx-subnet-v4"]}"#)]);
        assert_eq!(
            subnet_choices(&one).unwrap(),
            [SubnetChoice {
                interface: "eth0".into(),
                ipv4: Some("nginx-subnet-v4".into()),
                ipv6: None
            }]
        );
        let many = annotations(&[
            (SUBNET_ANNOTATION, r#"{"ipv4": ["ignored"]}"#),
            (
                SUBNETS_ANNOTATION,
                r#"[{"interface": "eth0", "ipv4": ["a", "b"], "ipv6": ["a6"]},
                    {"interface": "net1", "ipv6": ["s6"]}]"#,
            ),
        ]);
        let got = subnet_choices(&many).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].subnet(false), got[0].subnet(true)),
            (Some("a"), Some("a6"))
        );
        assert_eq!(
            (got[1].interface.as_str(), got[1].subnet(false)),
            ("net1", None)
        );
        assert!(subnet_choices(&annotations(&[])).unwrap().is_empty());
    }

    #[test]
    fn bad_subnet_annotations_say_which_and_why() {
        let cases = [
            (SUBNET_ANNOTATION, "{", "is not valid JSON"),
            (SUBNET_ANNOTATION, r#"{"ipv4": []}"#, "names no subnet"),
            (SUBNET_ANNOTATION, r#"{"ipv4": "a"}"#, "must be a list"),
            (
                SUBNETS_ANNOTATION,
                r#"{"ipv4": ["a"]}"#,
                "must be a JSON list",
            ),
            (
                SUBNETS_ANNOTATION,
                r#"[{"ipv4": ["a"]}]"#,
                "entry 0: \"interface\"",
            ),
            (
                SUBNETS_ANNOTATION,
                r#"[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}]"#,
                "listed twice",
            ),
        ];
        for (key, value, want) in cases {
            let e = subnet_choices(&annotations(&[(key, value)])).unwrap_err();
            assert!(e.starts_with(&format!("pod annotation {key}: ")), "{e}");
            assert!(e.contains(want), "{value}: {e}");
        }
    }

    #[test]
    fn ip_number_is_replicas_plus_n_or_fixed_and_plus_one_by_default() {
        let size = |v: Option<&str>, replicas| {
            let a = v.map_or_else(BTreeMap::new, |v| annotations(&[(IP_NUMBER_ANNOTATION, v)]));
            IpNumber::from_annotations(&a).map(|n| n.size(replicas))
        };
        assert_eq!(size(None, 3), Ok(4));
        assert_eq!(size(Some("+3"), 2), Ok(5));
        assert_eq!(size(Some("+0"), 10), Ok(10));
        assert_eq!(size(Some("7"), 2), Ok(7));
        assert!(size(Some("-1"), 2)
            .unwrap_err()
            .contains("\"-1\" is neither"));
        assert!(size(Some("+x"), 2).is_err());
    }

    #[test]
    fn reclaim_defaults_to_true() {
        assert_eq!(reclaim(&annotations(&[])), Ok(true));
        assert_eq!(
            reclaim(&annotations(&[(RECLAIM_ANNOTATION, "false")])),
            Ok(false)
        );
        assert!(reclaim(&annotations(&[(RECLAIM_ANNOTATION, "no")])).is_err());
    }

    #[test]
    fn pool_names_follow_spiderpool() {
        let uid = "bea129aa-acf5-40cb-8669-337bc1e95a41";
        assert_eq!(
            pool_name(false, "demo-deploy-subnet", "eth0", uid),
            "auto4-demo-deploy-subnet-eth0-337bc"
        );
        assert_eq!(pool_name(true, "Web", "net1", uid), "auto6-web-net1-337bc");
        let long = "a".repeat(300);
        let name = pool_name(false, &long, "eth0", uid);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-eth0-337bc"));
        assert!(name.starts_with(&pool_name_prefix(false, &long, "eth0")));
        assert_eq!(cidr_label("10.244.0.0/16"), "10-244-0-0-16");
    }

    #[test]
    fn a_pod_of_a_deployment_belongs_to_the_deployment() {
        let labels = annotations(&[("pod-template-hash", "5d8f7c")]);
        let app = pod_app("shop", "apps/v1", "ReplicaSet", "web-5d8f7c", &labels).unwrap();
        assert_eq!(
            (app.kind.as_str(), app.name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(app.gv_label(), "apps_v1");
        assert_eq!(app.pod_labels()[APP_NAMESPACE_LABEL], "shop");
        let bare = pod_app("shop", "apps/v1", "ReplicaSet", "web", &BTreeMap::new()).unwrap();
        assert_eq!(
            (bare.kind.as_str(), bare.name.as_str()),
            ("ReplicaSet", "web")
        );
        let job = pod_app("shop", "batch/v1", "Job", "once", &BTreeMap::new()).unwrap();
        assert_eq!((job.group.as_str(), job.kind.as_str()), ("batch", "Job"));
        assert!(pod_app("shop", "v1", "Node", "n1", &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_pod_of_a_cron_jobs_job_belongs_to_the_cron_job() {
        assert!(is_job("batch/v1", "Job"));
        assert!(!is_job("apps/v1", "Job") && !is_job("batch/v1", "CronJob"));
        let app = cron_job_app("shop", "batch/v1", "CronJob", "nightly").unwrap();
        assert_eq!(
            (app.kind.as_str(), app.name.as_str(), app.gv_label()),
            ("CronJob", "nightly", "batch_v1".to_string())
        );
        assert_eq!(app.pod_labels()[APP_KIND_LABEL], "CronJob");
        assert_eq!(cron_job_app("shop", "batch/v1", "Job", "nightly"), None);
        assert_eq!(cron_job_app("shop", "example.com/v1", "CronJob", "x"), None);
        assert!(names_subnet(&annotations(&[(SUBNETS_ANNOTATION, "[]")])));
        assert!(!names_subnet(&annotations(&[(IP_NUMBER_ANNOTATION, "+1")])));
    }

    #[test]
    fn a_subnet_has_free_what_no_pool_holds_and_no_reservation_keeps() {
        let subnet: SpiderSubnetSpec = serde_json::from_value(serde_json::json!({
            "subnet": "10.6.0.0/24", "ips": ["10.6.0.10-10.6.0.30"], "excludeIPs": ["10.6.0.30"]
        }))
        .unwrap();
        let pool = |subnet: &str, ips: &[&str]| -> SpiderIPPoolSpec {
            serde_json::from_value(serde_json::json!({"subnet": subnet, "ips": ips})).unwrap()
        };
        let pools = [
            pool("10.6.0.0/24", &["10.6.0.10-10.6.0.12"]),
            pool("10.7.0.0/24", &["10.7.0.10-10.7.0.12"]),
        ];
        let reserved = IpRangeSet::parse(&["10.6.0.20"], false).unwrap();
        let free = subnet_free(&subnet, &pools, &reserved);
        assert_eq!(
            free.to_strings(),
            ["10.6.0.13-10.6.0.19", "10.6.0.21-10.6.0.29"]
        );
        assert_eq!(
            free.lowest(8).to_strings(),
            ["10.6.0.13-10.6.0.19", "10.6.0.21"]
        );
    }

    #[test]
    fn a_shortage_names_the_subnet_and_both_counts() {
        let s = Shortage {
            subnet: "tiny".into(),
            asked: 4,
            free: 2,
            workload: "Deployment shop/web".into(),
        };
        let text = s.to_string();
        assert!(text.starts_with("SpiderSubnet tiny has too few free addresses for the auto pool of Deployment shop/web: 4 asked for, 2 free"), "{text}");
    }
}
