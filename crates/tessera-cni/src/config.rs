//! The network configuration on stdin: the main plugin's configuration with its `ipam`
//! section, plus what the runtime adds (`runtimeConfig`, `prevResult`, GC's valid
//! attachments).
//!
//! Fields are read by hand rather than through a derived deserializer so that every problem
//! names its exact path (`ipam.routes[1].dst`) and so that strings such as Calico's
//! `"assign_ipv6": "true"` are accepted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};
use tessera_core::text::quoted;

use crate::error::{code, CniError};
use crate::version::{Version, SUPPORTED};

/// Runtime capability key under which containerd and CRI-O pass the pod's annotations.
pub const POD_ANNOTATIONS_KEY: &str = "io.kubernetes.cri.pod-annotations";

/// runtimeConfig key read for the pod's labels (Spiderpool `podAffinity`). containerd does not
/// send labels by default; a runtime or a meta plugin that wants label-based pools passes them
/// here as an object of strings.
pub const POD_LABELS_KEY: &str = "io.kubernetes.cri.pod-labels";

/// Largest configuration read from stdin; anything larger is certainly not a network
/// configuration.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Which prefix length the addresses of an ADD result carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultPrefix {
    /// The pool's prefix (`10.22.0.5/16`): every address of the pool is on-link, as the
    /// `bridge`, `macvlan` and `ipvlan` plugins need for pods of one L2 segment.
    Pool,
    /// The block's prefix (`10.22.0.5/26`): on-link only within the node's block.
    Block,
    /// A host prefix (`/32`, `/128`): nothing is on-link; for routed setups.
    Host,
}

/// One route to return, as given in `ipam.routes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; when absent the main plugin uses the address's gateway or a device route.
    pub gw: Option<IpAddr>,
    /// CNI 1.1.0 route attributes (mtu, advmss, priority, table, scope), passed through.
    pub extra: Map<String, Value>,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing at all.
    None,
    /// Failures only.
    Error,
    /// Failures and suspicious input.
    Warning,
    /// One line per operation.
    Info,
    /// Everything.
    Debug,
}

/// The `ipam` section.
#[derive(Clone, Debug, PartialEq)]
pub struct IpamConf {
    /// Datastore URL; `None` means `TESSERA_DATASTORE`, then the default store.
    pub datastore: Option<String>,
    /// etcd connection options (`etcd_ca`, `etcd_cert`, `etcd_key`, `etcd_username`,
    /// `etcd_password`, `etcd_prefix`, `etcd_timeout_ms`, and Calico's `etcd_*_file` names).
    pub store_options: tessera_store::OpenOptions,
    /// Node name; `None` means `NODENAME`, the nodename file, then the hostname.
    pub nodename: Option<String>,
    /// File holding the node name.
    pub nodename_file: PathBuf,
    /// IPv4 pools (names or CIDRs) in fallback order.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools (names or CIDRs) in fallback order.
    pub ipv6_pools: Vec<String>,
    /// SpiderIPPools for IPv4 (names or wildcard patterns) in fallback order, Spiderpool's
    /// `default_ipv4_ippool`.
    pub default_ipv4_ippool: Vec<String>,
    /// SpiderIPPools for IPv6, Spiderpool's `default_ipv6_ippool`.
    pub default_ipv6_ippool: Vec<String>,
    /// Whether to assign an IPv4 address.
    pub assign_ipv4: bool,
    /// Whether to assign an IPv6 address.
    pub assign_ipv6: bool,
    /// Routes to return.
    pub routes: Vec<Route>,
    /// DNS settings to return, as given.
    pub dns: Option<Value>,
    /// Prefix of the returned addresses.
    pub result_prefix: ResultPrefix,
    /// Gateways by pool name or by a CIDR containing the pool's addresses.
    pub gateways: Vec<(String, IpAddr)>,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log file; `None` logs to stderr.
    pub log_file: Option<PathBuf>,
    /// Directory of the node cache used with etcd datastores (`cache_dir`; an empty string
    /// turns the cache off): the node's last view of its records, so the common ADD and DEL
    /// need one transaction less. `None` when turned off.
    pub cache_dir: Option<PathBuf>,
}

/// Default node cache directory: on a memory file system on most hosts, as a cache wants;
/// after a reboot the first request of each node reads the datastore again.
pub const DEFAULT_CACHE_DIR: &str = "/run/tessera/ipam-cache";

/// How long ADD waits for the Kubernetes API server by default (its GETs together).
pub const DEFAULT_KUBERNETES_TIMEOUT: Duration = Duration::from_secs(5);

/// The range `kubernetes.timeout_ms` may take: long enough for a loaded API server, short
/// enough that the runtime's own ADD deadline is not spent waiting.
const KUBERNETES_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// The `kubernetes` section (Calico's field names): where ADD reads the pod and its
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConf {
    /// Where the section was found: `kubernetes` (top level, as Calico has it) or
    /// `ipam.kubernetes`; error messages name fields below it.
    pub path: &'static str,
    /// `kubeconfig`: the kubeconfig file with the server, its CA and the credentials.
    pub kubeconfig: Option<PathBuf>,
    /// `k8s_api_root`: the API server's URL; replaces the kubeconfig's server, or stands
    /// alone for an `http://` server that needs no credentials.
    pub api_root: Option<String>,
    /// `timeout_ms`: the time allowed for the GETs together.
    pub timeout: Duration,
}

/// Default place of the node name file.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/tessera/nodename";

/// A GC attachment that is still in use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidAttachment {
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// Requested spec version.
    pub version: Version,
    /// Network name.
    pub name: String,
    /// The main plugin (`bridge`, `macvlan`, ...).
    pub main_type: String,
    /// The main plugin turns the result's gateway into an address of its own (`bridge`
    /// with `isGateway`/`isDefaultGateway`, `ptp`), so the result must carry one.
    pub main_needs_gateway: bool,
    /// The `ipam` section.
    pub ipam: IpamConf,
    /// Pod annotations passed by the runtime.
    pub pod_annotations: BTreeMap<String, String>,
    /// Pod labels, when the runtime passed them under [`POD_LABELS_KEY`].
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Addresses asked for through the `ips` runtime capability.
    pub runtime_ips: Vec<IpAddr>,
    /// Addresses asked for through the CNI "args" convention, `args.cni.ips`.
    pub args_ips: Vec<IpAddr>,
    /// Addresses of `prevResult`, when one was passed.
    pub prev_result: Option<Vec<IpAddr>>,
    /// GC: attachments that stay; `None` when the runtime passed no list.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// Keys of the `ipam` section this plugin does not know (typos, other plugins' keys).
    pub unknown_ipam_keys: Vec<String>,
    /// Where ADD reads the pod and its namespace from Kubernetes; `None`: it does not.
    pub kubernetes: Option<KubernetesConf>,
}

const IPAM_KEYS: &[&str] = &[
    "type",
    "datastore",
    "etcd_ca",
    "etcd_ca_cert_file",
    "etcd_cert",
    "etcd_cert_file",
    "etcd_key",
    "etcd_key_file",
    "etcd_username",
    "etcd_password",
    "etcd_prefix",
    "etcd_timeout_ms",
    "nodename",
    "nodename_file",
    "ipv4_pools",
    "ipv6_pools",
    "default_ipv4_ippool",
    "default_ipv6_ippool",
    "assign_ipv4",
    "assign_ipv6",
    "routes",
    "dns",
    "result_prefix",
    "gateways",
    "log_level",
    "log_file",
    "cache_dir",
    "kubernetes",
];

/// Parses stdin into JSON: a syntax error is a decode error (6).
pub fn parse_json(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::decode(
            "the network configuration on stdin is empty; the runtime passes the network's \
             JSON configuration on standard input",
        ));
    }
    // Strict: a key given twice is refused, not silently the last one.
    match tessera_core::json::from_slice(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::decode(format!(
            "the network configuration on stdin must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(CniError::decode(format!(
            "the network configuration on stdin is not valid JSON: {e}"
        ))),
    }
}

/// The `cniVersion` text of a parsed configuration, for error replies.
pub fn version_text(map: &Map<String, Value>) -> Option<&str> {
    map.get("cniVersion").and_then(Value::as_str)
}

/// Reads the whole configuration.
pub fn parse(map: &Map<String, Value>) -> Result<NetConf, CniError> {
    let version = match map.get("cniVersion") {
        None => return Err(CniError::config("cniVersion is missing")),
        Some(Value::String(text)) => Version::parse(text).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {text:?} is not supported; tessera-ipam supports {}",
                    SUPPORTED.join(", ")
                ),
            )
        })?,
        Some(other) => {
            return Err(CniError::config(format!(
                "cniVersion must be a string such as \"1.0.0\", not {}",
                kind(other)
            )))
        }
    };
    let name = required_str(map, "name", "")?;
    validate_network_name(&name)?;
    let main_type = required_str(map, "type", "")?;
    let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
    let main_needs_gateway = (main_type == "bridge"
        && (flag("isGateway") || flag("isDefaultGateway")))
        || main_type == "ptp";
    let ipam_map = match map.get("ipam") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam must be an object, not {}",
                kind(other)
            )))
        }
        None => {
            return Err(CniError::config(
                "the network configuration has no ipam section; add \"ipam\": {\"type\": \
                 \"tessera-ipam\"}",
            ))
        }
    };
    let ipam = parse_ipam(ipam_map)?;
    let unknown_ipam_keys = ipam_map
        .keys()
        .filter(|k| !IPAM_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();

    let (pod_annotations, pod_labels, runtime_ips) = match map.get("runtimeConfig") {
        None | Some(Value::Null) => (BTreeMap::new(), None, Vec::new()),
        Some(Value::Object(rc)) => parse_runtime_config(rc)?,
        Some(other) => {
            return Err(CniError::config(format!(
                "runtimeConfig must be an object, not {}",
                kind(other)
            )))
        }
    };
    let args_ips = args_ips(map)?;
    let kubernetes = parse_kubernetes(map, ipam_map)?;
    let prev_result = match map.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_prev_result(v)?),
    };
    // libcni writes both names: the spec's draft called the list cni.dev/attachments.
    let valid_attachments = match map
        .get("cni.dev/valid-attachments")
        .or_else(|| map.get("cni.dev/attachments"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_attachments(v)?),
    };
    Ok(NetConf {
        version,
        name,
        main_type,
        main_needs_gateway,
        ipam,
        pod_annotations,
        pod_labels,
        runtime_ips,
        args_ips,
        prev_result,
        valid_attachments,
        unknown_ipam_keys,
        kubernetes,
    })
}

/// The `kubernetes` section, at the top level (where Calico's plugins read it) or inside
/// `ipam`; given in both places it is refused rather than one silently ignored.
fn parse_kubernetes(
    top: &Map<String, Value>,
    ipam: &Map<String, Value>,
) -> Result<Option<KubernetesConf>, CniError> {
    let given = |m: &Map<String, Value>| m.get("kubernetes").filter(|v| !v.is_null()).cloned();
    let (path, section) = match (given(top), given(ipam)) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(CniError::config(
                "kubernetes and ipam.kubernetes are both given; keep one of them",
            ))
        }
        (Some(s), None) => ("kubernetes", s),
        (None, Some(s)) => ("ipam.kubernetes", s),
    };
    let Value::Object(m) = section else {
        return Err(CniError::config(format!(
            "{path} must be an object such as {{\"kubeconfig\": \"/etc/cni/net.d/tessera-kubeconfig\"}}, \
             not {}",
            kind(&section)
        )));
    };
    let prefix = format!("{path}.");
    let text = |key: &str| -> Result<Option<String>, CniError> {
        Ok(opt_str(&m, key, &prefix)?.filter(|s| !s.trim().is_empty()))
    };
    let kubeconfig = text("kubeconfig")?.map(PathBuf::from);
    let api_root = text("k8s_api_root")?;
    if kubeconfig.is_none() && api_root.is_none() {
        return Err(CniError::config(format!(
            "{path} names neither kubeconfig nor k8s_api_root; set kubeconfig to the file \
             with the API server's address and the plugin's credentials"
        )));
    }
    let timeout = match m.get("timeout_ms") {
        None | Some(Value::Null) => DEFAULT_KUBERNETES_TIMEOUT,
        Some(v) => match v.as_u64().filter(|ms| KUBERNETES_TIMEOUT_MS.contains(ms)) {
            Some(ms) => Duration::from_millis(ms),
            None => {
                return Err(CniError::config(format!(
                    "{path}.timeout_ms must be a whole number of milliseconds from {} to {}, \
                     not {v}",
                    KUBERNETES_TIMEOUT_MS.start(),
                    KUBERNETES_TIMEOUT_MS.end()
                )))
            }
        },
    };
    Ok(Some(KubernetesConf {
        path,
        kubeconfig,
        api_root,
        timeout,
    }))
}

fn parse_ipam(m: &Map<String, Value>) -> Result<IpamConf, CniError> {
    let assign_ipv4 = opt_bool(m, "assign_ipv4")?.unwrap_or(true);
    let assign_ipv6 = opt_bool(m, "assign_ipv6")?.unwrap_or(false);
    let result_prefix = match opt_str(m, "result_prefix", "ipam.")?.as_deref() {
        None | Some("pool") => ResultPrefix::Pool,
        Some("block") => ResultPrefix::Block,
        Some("host") => ResultPrefix::Host,
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam.result_prefix {other:?} is not one of \"pool\", \"block\", \"host\""
            )))
        }
    };
    let log_level = match opt_str(m, "log_level", "ipam.")?
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None => None,
        Some("none" | "off") => Some(LogLevel::None),
        Some("error") => Some(LogLevel::Error),
        Some("warn" | "warning") => Some(LogLevel::Warning),
        Some("info") => Some(LogLevel::Info),
        Some("debug") => Some(LogLevel::Debug),
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam.log_level {other:?} is not one of \"error\", \"warning\", \"info\", \
                 \"debug\", \"none\""
            )))
        }
    };
    let log_file = opt_str(m, "log_file", "ipam.")?
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    // A file collects history, so it gets one line per operation; stderr ends up in the
    // runtime's own log, so it only gets what needs attention.
    let log_level = log_level.unwrap_or(if log_file.is_some() {
        LogLevel::Info
    } else {
        LogLevel::Warning
    });
    let gateways = match m.get("gateways") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(g)) => g
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().ok_or_else(|| {
                    CniError::config(format!(
                        "ipam.gateways[{k:?}] must be an address string, not {}",
                        kind(v)
                    ))
                })?;
                let ip: IpAddr = text.trim().parse().map_err(|_| {
                    CniError::config(format!(
                        "ipam.gateways[{k:?}] {text:?} is not an IP address"
                    ))
                })?;
                Ok((k.trim().to_string(), ip))
            })
            .collect::<Result<_, CniError>>()?,
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam.gateways must be an object mapping pool names or CIDRs to addresses, \
                 not {}",
                kind(other)
            )))
        }
    };
    let etcd_fields: Map<String, Value> = m
        .iter()
        .filter(|(k, _)| k.starts_with("etcd_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let store_options = serde_json::from_value(Value::Object(etcd_fields))
        .map_err(|e| CniError::config(format!("ipam etcd options: {e}")))?;
    Ok(IpamConf {
        datastore: opt_str(m, "datastore", "ipam.")?.filter(|s| !s.is_empty()),
        store_options,
        nodename: opt_str(m, "nodename", "ipam.")?.filter(|s| !s.trim().is_empty()),
        nodename_file: opt_str(m, "nodename_file", "ipam.")?
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_NODENAME_FILE), PathBuf::from),
        ipv4_pools: str_list(m, "ipv4_pools")?,
        ipv6_pools: str_list(m, "ipv6_pools")?,
        default_ipv4_ippool: str_list(m, "default_ipv4_ippool")?,
        default_ipv6_ippool: str_list(m, "default_ipv6_ippool")?,
        assign_ipv4,
        assign_ipv6,
        routes: parse_routes(m)?,
        dns: parse_dns(m)?,
        result_prefix,
        gateways,
        log_level,
        log_file,
        cache_dir: match opt_str(m, "cache_dir", "ipam.")? {
            None => Some(PathBuf::from(DEFAULT_CACHE_DIR)),
            Some(s) if s.trim().is_empty() => None,
            Some(s) => Some(PathBuf::from(s)),
        },
    })
}

fn parse_routes(m: &Map<String, Value>) -> Result<Vec<Route>, CniError> {
    let items = match m.get("routes") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam.routes must be a list of {{\"dst\": CIDR, \"gw\": address}}, not {}",
                kind(other)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("ipam.routes[{i}]");
            let Value::Object(r) = item else {
                return Err(CniError::config(format!(
                    "{path} must be an object with dst and optional gw, not {}",
                    kind(item)
                )));
            };
            let dst_text = required_str(r, "dst", &format!("{path}."))?;
            let dst: IpNet = dst_text.trim().parse().map_err(|_| {
                CniError::config(format!(
                    "{path}.dst {dst_text:?} is not a CIDR such as 0.0.0.0/0"
                ))
            })?;
            let gw = match opt_str(r, "gw", &format!("{path}."))? {
                None => None,
                Some(text) => Some(text.trim().parse::<IpAddr>().map_err(|_| {
                    CniError::config(format!("{path}.gw {text:?} is not an IP address"))
                })?),
            };
            if gw.is_some_and(|g| g.is_ipv4() != dst.addr().is_ipv4()) {
                return Err(CniError::config(format!(
                    "{path}: gw and dst are of different address families"
                )));
            }
            let mut extra = Map::new();
            for (k, v) in r
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "dst" | "gw"))
            {
                let valid = match k.as_str() {
                    "mtu" | "advmss" | "priority" | "table" => v.is_u64(),
                    "scope" => v.is_i64(),
                    _ => {
                        return Err(CniError::config(format!(
                            "{path}.{k} is not a route field; use dst, gw, mtu, advmss, \
                             priority, table or scope"
                        )))
                    }
                };
                if !valid {
                    return Err(CniError::config(format!(
                        "{path}.{k} must be a whole number, not {}",
                        kind(v)
                    )));
                }
                extra.insert(k.clone(), v.clone());
            }
            Ok(Route {
                dst: dst.trunc(),
                gw,
                extra,
            })
        })
        .collect()
}

fn parse_dns(m: &Map<String, Value>) -> Result<Option<Value>, CniError> {
    match m.get("dns") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(d)) => {
            for (key, value) in d {
                let ok = match key.as_str() {
                    "domain" => value.is_string(),
                    "nameservers" | "search" | "options" => value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string)),
                    _ => {
                        return Err(CniError::config(format!(
                            "ipam.dns.{key} is not a DNS field; use nameservers, domain, search \
                             or options"
                        )))
                    }
                };
                if !ok {
                    return Err(CniError::config(format!(
                        "ipam.dns.{key} must be {}",
                        if key == "domain" {
                            "a string"
                        } else {
                            "a list of strings"
                        }
                    )));
                }
            }
            Ok(Some(Value::Object(d.clone())))
        }
        Some(other) => Err(CniError::config(format!(
            "ipam.dns must be an object, not {}",
            kind(other)
        ))),
    }
}

type RuntimeConfig = (
    BTreeMap<String, String>,
    Option<BTreeMap<String, String>>,
    Vec<IpAddr>,
);

fn parse_runtime_config(rc: &Map<String, Value>) -> Result<RuntimeConfig, CniError> {
    let mut annotations = BTreeMap::new();
    match rc.get(POD_ANNOTATIONS_KEY) {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            for (k, v) in a {
                // Annotation values are strings in Kubernetes; skipping another value would
                // silently drop what the pod asked for.
                let text = v.as_str().ok_or_else(|| {
                    CniError::new(
                        code::BAD_POD_REQUEST,
                        format!(
                            "runtimeConfig[{POD_ANNOTATIONS_KEY:?}][{}] must be a string, not {}",
                            quoted(k),
                            kind(v)
                        ),
                    )
                })?;
                annotations.insert(k.clone(), text.to_string());
            }
        }
        Some(other) => {
            return Err(CniError::new(
                code::BAD_POD_REQUEST,
                format!(
                    "runtimeConfig[{POD_ANNOTATIONS_KEY:?}] must be an object of annotations, \
                     not {}",
                    kind(other)
                ),
            ))
        }
    }
    let labels = match rc.get(POD_LABELS_KEY) {
        None | Some(Value::Null) => None,
        Some(Value::Object(l)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in l {
                // A label the plugin cannot read would silently change which pools match.
                let text = v.as_str().ok_or_else(|| {
                    CniError::new(
                        code::BAD_POD_REQUEST,
                        format!(
                            "runtimeConfig[{POD_LABELS_KEY:?}][{}] must be a string, not {}",
                            quoted(k),
                            kind(v)
                        ),
                    )
                })?;
                labels.insert(k.clone(), text.to_string());
            }
            Some(labels)
        }
        Some(other) => {
            return Err(CniError::new(
                code::BAD_POD_REQUEST,
                format!(
                    "runtimeConfig[{POD_LABELS_KEY:?}] must be an object of labels, not {}",
                    kind(other)
                ),
            ))
        }
    };
    let ips = ip_list(rc.get("ips"), "runtimeConfig.ips")?;
    Ok((annotations, labels, ips))
}

/// The addresses of the CNI "args" convention, `args.cni.ips`. Other keys of `args` belong
/// to other plugins and runtimes, so an `args` or `args.cni` that is not an object is
/// passed over like them.
fn args_ips(map: &Map<String, Value>) -> Result<Vec<IpAddr>, CniError> {
    let value = map
        .get("args")
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("ips"));
    ip_list(value, "args.cni.ips")
}

/// A list of addresses asked for (`["10.0.0.5", "fd00::5/64"]`) found at `path`; absent or
/// null is none. Anything else is the pod's malformed request (107).
fn ip_list(value: Option<&Value>, path: &str) -> Result<Vec<IpAddr>, CniError> {
    let bad = |msg: String| CniError::new(code::BAD_POD_REQUEST, msg);
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(format!(
                "{path} must be a list of addresses, not {}",
                kind(other)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item
                .as_str()
                .ok_or_else(|| bad(format!("{path}[{i}] must be a string, not {}", kind(item))))?;
            parse_addr_or_cidr(text)
                .ok_or_else(|| bad(format!("{path}[{i}] {text:?} is not an IP address")))
        })
        .collect()
}

/// `10.0.0.5` or `10.0.0.5/24` (the prefix is ignored: the pool decides it).
pub fn parse_addr_or_cidr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<IpNet>().ok().map(|n| n.addr()))
}

fn parse_prev_result(v: &Value) -> Result<Vec<IpAddr>, CniError> {
    let bad = |what: String| CniError::decode(format!("prevResult: {what}"));
    let Value::Object(r) = v else {
        return Err(bad(format!("must be an object, not {}", kind(v))));
    };
    let items = match r.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("ips must be a list, not {}", kind(other)))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("ips[{i}] has no address string")))?;
            text.parse::<IpNet>()
                .map(|n| n.addr())
                .map_err(|_| bad(format!("ips[{i}].address {text:?} is not a CIDR")))
        })
        .collect()
}

fn parse_attachments(v: &Value) -> Result<Vec<ValidAttachment>, CniError> {
    let Value::Array(items) = v else {
        return Err(CniError::config(format!(
            "cni.dev/valid-attachments must be a list of {{\"containerID\", \"ifname\"}}, not {}",
            kind(v)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |key: &str| {
                item.get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        CniError::config(format!(
                            "cni.dev/valid-attachments[{i}] has no {key} string"
                        ))
                    })
            };
            Ok(ValidAttachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// The spec: network names start with an alphanumeric character, then alphanumerics, `_`,
/// `.` or `-`.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "network name {name:?} is invalid: it must start with a letter or digit followed by \
             letters, digits, '_', '.' or '-'"
        )))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn required_str(m: &Map<String, Value>, key: &str, path: &str) -> Result<String, CniError> {
    match opt_str(m, key, path)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(CniError::config(format!("{path}{key} is missing or empty"))),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::config(format!(
            "{path}{key} must be a string, not {}",
            kind(other)
        ))),
    }
}

/// A boolean, also written as Calico's `"true"`/`"false"` strings.
fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(CniError::config(format!(
            "ipam.{key} must be true or false (or the strings \"true\"/\"false\"), not {}",
            match other {
                Value::String(s) => format!("{s:?}"),
                v => kind(v).to_string(),
            }
        ))),
    }
}

fn str_list(m: &Map<String, Value>, key: &str) -> Result<Vec<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_str().map(str::trim) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(CniError::config(format!(
                    "ipam.{key}[{i}] must be a pool name{} string, not {}",
                    if key.ends_with("ippool") {
                        " or pattern"
                    } else {
                        " or CIDR"
                    },
                    kind(v)
                ))),
            })
            .collect(),
        Some(other) => Err(CniError::config(format!(
            "ipam.{key} must be a list of pool names{}, not {}",
            if key.ends_with("ippool") {
                ""
            } else {
                " or CIDRs"
            },
            kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        parse(&parse_json(v.to_string().as_bytes())?)
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge",
               "ipam": {"type": "tessera-ipam"}})
    }

    #[test]
    fn defaults() {
        let c = conf(base()).unwrap();
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        assert_eq!(c.ipam.result_prefix, ResultPrefix::Pool);
        assert_eq!(c.ipam.log_level, LogLevel::Warning);
        assert!(!c.main_needs_gateway);
        assert_eq!(c.ipam.nodename_file, PathBuf::from(DEFAULT_NODENAME_FILE));
        assert_eq!(c.ipam.cache_dir, Some(PathBuf::from(DEFAULT_CACHE_DIR)));
    }

    #[test]
    fn cache_dir_is_set_turned_off_or_refused() {
        let mut v = base();
        v["ipam"]["cache_dir"] = json!("/var/cache/t");
        assert_eq!(
            conf(v.clone()).unwrap().ipam.cache_dir,
            Some(PathBuf::from("/var/cache/t"))
        );
        v["ipam"]["cache_dir"] = json!(" ");
        assert_eq!(conf(v.clone()).unwrap().ipam.cache_dir, None);
        v["ipam"]["cache_dir"] = json!(3);
        let e = conf(v).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam.cache_dir"), "{}", e.msg);
    }

    #[test]
    fn calico_string_booleans() {
        let mut v = base();
        v["ipam"]["assign_ipv4"] = json!("false");
        v["ipam"]["assign_ipv6"] = json!("true");
        let c = conf(v.clone()).unwrap();
        assert!(!c.ipam.assign_ipv4 && c.ipam.assign_ipv6);
        v["ipam"]["assign_ipv6"] = json!("yes");
        let e = conf(v).unwrap_err();
        assert_eq!(e.code, 7);
        assert_eq!(
            e.msg,
            "ipam.assign_ipv6 must be true or false (or the strings \"true\"/\"false\"), not \"yes\""
        );
    }

    #[test]
    fn errors_name_the_path() {
        let mut v = base();
        v["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "nope"}]);
        assert_eq!(
            conf(v).unwrap_err().msg,
            "ipam.routes[1].dst \"nope\" is not a CIDR such as 0.0.0.0/0"
        );
        let mut v = base();
        v["ipam"]["ipv4_pools"] = json!(["a", 3]);
        assert_eq!(
            conf(v).unwrap_err().msg,
            "ipam.ipv4_pools[1] must be a pool name or CIDR string, not a number"
        );
        let mut v = base();
        v["cniVersion"] = json!("0.2.0");
        assert_eq!(conf(v).unwrap_err().code, 1);
        let mut v = base();
        v.as_object_mut().unwrap().remove("ipam");
        assert_eq!(conf(v).unwrap_err().code, 7);
        assert_eq!(parse_json(b"{").unwrap_err().code, 6);
        assert_eq!(parse_json(b"[]").unwrap_err().code, 6);
        assert_eq!(parse_json(b"  ").unwrap_err().code, 6);
    }

    #[test]
    fn bridge_gateway_and_ptp_need_gateways() {
        let mut v = base();
        v["isGateway"] = json!(true);
        assert!(conf(v).unwrap().main_needs_gateway);
        let mut v = base();
        v["type"] = json!("ptp");
        assert!(conf(v).unwrap().main_needs_gateway);
        let mut v = base();
        v["type"] = json!("macvlan");
        v["isGateway"] = json!(true);
        assert!(!conf(v).unwrap().main_needs_gateway);
    }

    #[test]
    fn runtime_config_and_prev_result() {
        let mut v = base();
        v["runtimeConfig"] = json!({
            POD_ANNOTATIONS_KEY: {"cni.projectcalico.org/ipv4pools": "[\"a\"]"},
            "ips": ["10.0.0.9/24", "fd00::9"]
        });
        v["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.9/24"}]});
        v["ipam"]["frobnicate"] = json!(1);
        let c = conf(v).unwrap();
        assert_eq!(c.pod_annotations.len(), 1);
        assert_eq!(c.pod_labels, None);
        assert_eq!(c.runtime_ips.len(), 2);
        assert_eq!(
            c.prev_result.unwrap(),
            ["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.unknown_ipam_keys, ["frobnicate"]);
        let mut v = base();
        v["prevResult"] = json!({"ips": [{"address": "10.0.0.9"}]});
        assert_eq!(conf(v).unwrap_err().code, 6);
        let mut v = base();
        v["runtimeConfig"] = json!({POD_ANNOTATIONS_KEY: {"n": 1}});
        assert_eq!(conf(v).unwrap_err().code, 107);
    }

    #[test]
    fn args_cni_ips_are_read_and_other_args_left_alone() {
        let mut v = base();
        v["args"] = json!({"cni": {"ips": ["10.0.0.9/24", "fd00::9"], "labels": []},
                           "org.example": {"ips": 3}});
        let c = conf(v.clone()).unwrap();
        assert_eq!(c.args_ips.len(), 2);
        assert!(c.runtime_ips.is_empty());
        v["args"] = json!("not an object");
        assert!(conf(v.clone()).unwrap().args_ips.is_empty());
        v["args"] = json!({"cni": {"ips": ["10.0.0.9", "x"]}});
        let e = conf(v).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (107, "args.cni.ips[1] \"x\" is not an IP address")
        );
    }

    #[test]
    fn spider_fields_and_pod_labels() {
        let mut v = base();
        v["ipam"]["default_ipv4_ippool"] = json!(["a", "b*"]);
        v["ipam"]["default_ipv6_ippool"] = json!(["c"]);
        v["runtimeConfig"] = json!({POD_LABELS_KEY: {"app": "nginx"}});
        let c = conf(v.clone()).unwrap();
        assert_eq!(c.ipam.default_ipv4_ippool, ["a", "b*"]);
        assert_eq!(c.ipam.default_ipv6_ippool, ["c"]);
        assert!(c.unknown_ipam_keys.is_empty());
        assert_eq!(c.pod_labels.unwrap()["app"], "nginx");
        v["runtimeConfig"] = json!({POD_LABELS_KEY: {"app": 1}});
        let e = conf(v.clone()).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                107,
                "runtimeConfig[\"io.kubernetes.cri.pod-labels\"][\"app\"] must be a string, \
                 not a number"
            )
        );
        v["runtimeConfig"] = json!({});
        v["ipam"]["default_ipv4_ippool"] = json!("a");
        assert_eq!(
            conf(v).unwrap_err().msg,
            "ipam.default_ipv4_ippool must be a list of pool names, not a string"
        );
    }

    #[test]
    fn kubernetes_section_at_the_top_or_in_ipam() {
        assert_eq!(conf(base()).unwrap().kubernetes, None);
        let mut v = base();
        v["kubernetes"] = json!({"kubeconfig": "/etc/k", "node_name": "calico's, ignored"});
        let k = conf(v.clone()).unwrap().kubernetes.unwrap();
        assert_eq!(
            k,
            KubernetesConf {
                path: "kubernetes",
                kubeconfig: Some(PathBuf::from("/etc/k")),
                api_root: None,
                timeout: DEFAULT_KUBERNETES_TIMEOUT,
            }
        );
        let mut inside = base();
        inside["ipam"]["kubernetes"] =
            json!({"k8s_api_root": "http://127.0.0.1:8001", "timeout_ms": 250});
        let k = conf(inside.clone()).unwrap().kubernetes.unwrap();
        assert_eq!(k.path, "ipam.kubernetes");
        assert_eq!(k.api_root.as_deref(), Some("http://127.0.0.1:8001"));
        assert_eq!(k.timeout, Duration::from_millis(250));
        assert!(conf(inside.clone()).unwrap().unknown_ipam_keys.is_empty());
        v["ipam"] = inside["ipam"].clone();
        assert_eq!(
            conf(v).unwrap_err().msg,
            "kubernetes and ipam.kubernetes are both given; keep one of them"
        );
    }

    #[test]
    fn kubernetes_errors_name_the_field() {
        let err = |section: Value| {
            let mut v = base();
            v["ipam"]["kubernetes"] = section;
            let e = conf(v).unwrap_err();
            assert_eq!(e.code, 7);
            e.msg
        };
        assert_eq!(
            err(json!({"kubeconfig": 3})),
            "ipam.kubernetes.kubeconfig must be a string, not a number"
        );
        assert!(err(json!({}))
            .starts_with("ipam.kubernetes names neither kubeconfig nor k8s_api_root;"));
        assert_eq!(
            err(json!({"kubeconfig": "/k", "timeout_ms": 90_000})),
            "ipam.kubernetes.timeout_ms must be a whole number of milliseconds from 100 to \
             60000, not 90000"
        );
        assert!(err(json!("/k")).starts_with("ipam.kubernetes must be an object"));
    }

    #[test]
    fn gc_attachments_under_either_name() {
        let mut v = base();
        v["cni.dev/attachments"] = json!([{"containerID": "c", "ifname": "eth0"}]);
        assert_eq!(conf(v).unwrap().valid_attachments.unwrap().len(), 1);
        let mut v = base();
        v["cni.dev/valid-attachments"] = json!([{"containerID": "c"}]);
        assert_eq!(
            conf(v).unwrap_err().msg,
            "cni.dev/valid-attachments[0] has no ifname string"
        );
    }
}
