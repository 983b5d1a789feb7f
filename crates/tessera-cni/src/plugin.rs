//! The verbs: ADD, DEL, CHECK, GC and STATUS against the allocator.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use tessera_core::ipam::cache::DirNodeCache;
use tessera_core::ipam::{
    parse_pool_annotation, AssignRequest, AssignedAddress, Assignment, Attributes, Context, Family,
    GatewayHold, HandleRecord, HandleRelease, Ipam, IpamError, Readiness, ReadinessQuery,
    IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION, IP_ADDRS_ANNOTATION,
};
use tessera_core::net::first_host;
use tessera_core::store::Store;
use tessera_core::text::{plain_or_quoted, quoted};
use tessera_core::validate::names::node_name_problem;

use crate::config::{parse_addr_or_cidr, NetConf, ResultPrefix, Route};
use crate::env::{CniEnv, Command};
use crate::error::{code, CniError};
use crate::kubernetes::PodFacts;
use crate::log::Logger;
use crate::result::{add_result, ResultIp};
use crate::spider_annotations::{pod_pools, pool_ref, PodPools};

/// Everything one invocation knows.
pub struct Invocation<'a> {
    /// The verb.
    pub command: Command,
    /// The `CNI_*` variables.
    pub env: CniEnv,
    /// The network configuration.
    pub conf: NetConf,
    /// Where log lines go.
    pub log: &'a Logger,
    /// The pod as read from the Kubernetes API server (ADD with a `kubernetes` section).
    pub pod_from_api: Option<PodFacts>,
}

type Allocator = Ipam<Box<dyn Store>>;

/// What a retried ADD found under this attachment's handle ids.
enum Existing {
    /// This attachment's addresses, with the configuration read with them.
    Ours(Assignment, Box<Context>),
    /// Addresses held under one of this attachment's ids for another workload.
    Other {
        id: String,
        held: Assignment,
        attrs: Box<Attributes>,
    },
    /// The legacy id holds another network's attachment: not this one's.
    OtherLegacy,
    /// Nothing any more: deleted since the ADD found it.
    Gone,
}

impl<'a> Invocation<'a> {
    /// The handle of this attachment (see [`handle_id`]), so the interfaces of one container
    /// are released independently.
    pub fn handle(&self) -> String {
        handle_id(&self.conf.name, &self.env.container_id, &self.env.ifname)
    }

    /// The StatefulSet owning this ADD's pod, as read from Kubernetes; only a pod named in
    /// `CNI_ARGS` counts, since its handle is named after it.
    fn statefulset(&self) -> Option<&str> {
        let (Some(_), Some(_)) = self.pod() else {
            return None;
        };
        self.pod_from_api.as_ref()?.statefulset.as_deref()
    }

    /// The handle a StatefulSet pod's ADD holds its addresses under while stickiness is on
    /// (see [`sticky_handle_id`]); the allocator decides by the configuration it reads.
    fn request_sticky_handle(&self) -> Option<String> {
        self.statefulset().and(self.sticky_handle())
    }

    /// The handle a StatefulSet pod of this invocation's name would hold (none without a pod
    /// in `CNI_ARGS`).
    fn sticky_handle(&self) -> Option<String> {
        let (Some(ns), Some(pod)) = self.pod() else {
            return None;
        };
        Some(sticky_handle_id(&self.conf.name, ns, pod, &self.env.ifname))
    }

    /// The id earlier versions gave this attachment (see [`legacy_handle_id`]).
    fn legacy_handle(&self) -> String {
        legacy_handle_id(&self.conf.name, &self.env.container_id, &self.env.ifname)
    }

    /// Whether a handle was assigned to this attachment: its recorded container id and
    /// interface are this invocation's. Together with the handle id, that pins the network
    /// too, the legacy id included (its network is what the id has before them).
    fn is_this_attachment(&self, attrs: &Attributes) -> bool {
        attrs.container_id.as_deref() == Some(self.env.container_id.as_str())
            && attrs.interface.as_deref() == Some(self.env.ifname.as_str())
    }

    /// The pod this invocation is for, as the handle records it (namespace, name).
    fn pod(&self) -> (Option<&str>, Option<&str>) {
        (
            self.env.arg("K8S_POD_NAMESPACE"),
            self.env.arg("K8S_POD_NAME"),
        )
    }

    /// Whether a retried ADD may return what a handle holds: same attachment, same pod.
    fn is_repeat_of(&self, attrs: &Attributes) -> bool {
        self.is_this_attachment(attrs)
            && (attrs.namespace.as_deref(), attrs.pod.as_deref()) == self.pod()
    }

    /// This attachment's handle record: under its id, else under its legacy id, else under
    /// its pod's name (a StatefulSet pod); only one whose recorded container id and interface
    /// are this attachment's.
    fn own_record(&self, ipam: &Allocator) -> Result<Option<HandleRecord>, IpamError> {
        let ids = [self.handle(), self.legacy_handle()];
        for id in ids.into_iter().chain(self.sticky_handle()) {
            match ipam.handle(&id)? {
                Some(rec) if self.is_this_attachment(&rec.attrs) => return Ok(Some(rec)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Runs the verb; `Some` is printed on stdout.
    pub fn run(&self) -> Result<Option<Value>, CniError> {
        match self.command {
            Command::Add => match self.with_pod_from_api()? {
                Some(read) => read.add(),
                None => self.add(),
            }
            .map(Some),
            Command::Del => self.del().map(|()| None),
            Command::Check => self.check().map(|()| None),
            Command::Gc => self.gc().map(|()| None),
            Command::Status => self.status().map(|()| None),
            Command::Version => Ok(Some(crate::version::version_info())),
        }
    }

    /// This invocation with what the Kubernetes API server says of its pod, when the
    /// configuration has a `kubernetes` section and `CNI_ARGS` names a pod: the pod's
    /// annotations win over those the runtime passed, its labels replace them, and its uid
    /// must be the one the runtime passed, if any.
    fn with_pod_from_api(&self) -> Result<Option<Invocation<'a>>, CniError> {
        let Some(section) = &self.conf.kubernetes else {
            return Ok(None);
        };
        let (Some(namespace), Some(name)) = self.pod() else {
            self.log.info(format_args!(
                "{} is set but CNI_ARGS names no pod (K8S_POD_NAMESPACE, K8S_POD_NAME); \
                 nothing is read from Kubernetes",
                section.path
            ));
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let facts = crate::kubernetes::look_up(section, namespace, name)?;
        self.log.debug(format_args!(
            "read pod {namespace}/{name} (uid {}) and its namespace from Kubernetes in {} ms",
            facts.uid,
            started.elapsed().as_millis()
        ));
        if let Some(uid) = self.env.arg("K8S_POD_UID") {
            if !facts.uid.is_empty() && facts.uid != uid {
                return Err(CniError::new(
                    code::POD_NOT_IN_KUBERNETES,
                    format!(
                        "pod {namespace}/{name} in Kubernetes has uid {}, but this ADD is for \
                         uid {uid} (K8S_POD_UID): the pod was deleted and created again, so \
                         nothing is assigned to the old one",
                        facts.uid
                    ),
                ));
            }
        }
        let mut conf = self.conf.clone();
        conf.pod_annotations.extend(facts.annotations.clone());
        // The workload's labels let the pod match its auto pools' podAffinity.
        let mut labels = facts.labels.clone();
        labels.extend(facts.app.iter().flat_map(|app| app.pod_labels()));
        conf.pod_labels = Some(labels);
        Ok(Some(Invocation {
            command: self.command,
            env: self.env.clone(),
            conf,
            log: self.log,
            pod_from_api: Some(facts),
        }))
    }

    fn open(&self) -> Result<(Allocator, String), CniError> {
        let url = tessera_store::resolve_datastore(self.conf.ipam.datastore.as_deref());
        // Store errors name the datastore themselves.
        let store = tessera_store::open_with(&url, &self.conf.ipam.store_options)?;
        let describe = store.describe();
        self.log.debug(format_args!("datastore {describe}"));
        let mut ipam = Ipam::new(store);
        let remote = url.starts_with("etcd://") || url.starts_with("etcds://");
        if let Some(dir) = self.conf.ipam.cache_dir.as_deref().filter(|_| remote) {
            // The cache only saves round trips: without it every request still works. One
            // that another user could write is refused, since a planted view would be
            // planned from.
            match DirNodeCache::open(dir, &describe) {
                Ok(cache) => ipam = ipam.with_cache(cache),
                Err(e) => self.log.warn(format_args!(
                    "node cache not used: {e}; reading the datastore for every request (set \
                     ipam.cache_dir to a directory only this user can write, or \"\" to turn \
                     the cache off)"
                )),
            }
        }
        Ok((ipam, describe))
    }

    /// Where an attachment error happened, for the error details.
    fn where_(&self, node: &str, datastore: &str) -> String {
        format!(
            "network {:?}, container {}, interface {}, node {node:?}, datastore {datastore}",
            self.conf.name, self.env.container_id, self.env.ifname
        )
    }

    fn add(&self) -> Result<Value, CniError> {
        let node = node_name(&self.conf)?;
        let (request, origins) = self.assign_request(&node)?;
        let (ipam, datastore) = self.open()?;
        let at = || self.where_(&node, &datastore);
        // The ids this attachment's addresses may be held under; the configuration decides.
        let handles: Vec<String> = std::iter::once(request.handle.clone())
            .chain(request.sticky_handle.clone())
            .collect();
        // An attachment an earlier version added is held under its legacy id.
        let mut aliases = vec![self.legacy_handle()];
        let mut fresh = None;
        // Three times at most: the attachment may be deleted between the reads of a retried
        // ADD, and the legacy id may turn out to be another network's.
        for _ in 0..3 {
            if let Some(done) = ipam
                .assign_new_unless(&request, &aliases)
                .map_err(|e| self.assign_error(&ipam, e, &origins).context(at()))?
            {
                fresh = Some(done);
                break;
            }
            match self
                .existing(&ipam, &handles, &aliases)
                .map_err(|e| CniError::from(e).context(at()))?
            {
                Existing::Ours(held, context) => {
                    // The runtime retried an ADD whose result it never got: the same
                    // attachment gets the same addresses.
                    self.log.info(format_args!(
                        "already holds {}; returning them",
                        list(held.addresses.iter().map(|a| a.ip))
                    ));
                    let ips = self.result_ips(&held, &context)?;
                    return self.result(&ips, &held);
                }
                Existing::Other { id, held, attrs } => {
                    return Err(self.held_for_another(&id, &held, &attrs).context(at()))
                }
                Existing::OtherLegacy => aliases.clear(),
                Existing::Gone => {}
            }
        }
        let Some((assignment, context)) = fresh else {
            return Err(CniError::new(
                code::TRY_AGAIN,
                "the attachment was being added and deleted at the same time; try again",
            )
            .context(at()));
        };
        match self
            .result_ips(&assignment, &context)
            .and_then(|ips| Ok((self.result(&ips, &assignment)?, ips)))
        {
            Ok((result, ips)) => {
                if let Some((released, why)) = &assignment.released_held {
                    self.log.info(format_args!(
                        "released {} held for this StatefulSet pod's name instead of taking \
                         them over: {why}",
                        list(released.iter())
                    ));
                }
                self.log.info(format_args!(
                    "assigned {} on node {node:?}",
                    list(ips.iter().map(|i| i.address))
                ));
                Ok(result)
            }
            Err(e) => {
                // The main plugin never sees these addresses: give them back.
                if let Err(r) = ipam.release_handle(&assignment.handle) {
                    self.log.error(format_args!(
                        "could not give back {} after a failed ADD: {r}",
                        list(assignment.addresses.iter().map(|a| a.ip))
                    ));
                }
                Err(e.context(at()))
            }
        }
    }

    /// An allocator error of ADD as a CNI error; a gateway another handle holds is named with
    /// the workload holding it.
    fn assign_error(&self, ipam: &Allocator, e: IpamError, origins: &Origins) -> CniError {
        if let Ok(Some(auto)) = self.auto_pools() {
            let missing = matches!(e, IpamError::InvalidRequest(_));
            if let Some(error) = crate::autopool::error(ipam.store().as_ref(), &auto, missing) {
                return error;
            }
        }
        let IpamError::GatewayInUse { ip, handle } = &e else {
            return refused(e, origins);
        };
        let holder = match ipam.handle(handle) {
            Ok(Some(rec)) => format!("{} under handle {}", workload(&rec.attrs), quoted(handle)),
            _ => format!("handle {}", quoted(handle)),
        };
        CniError::new(
            code::GATEWAY_NOT_RESERVED,
            format!(
                "gateway {ip}, the first address of the result's prefix, which the {} plugin \
                 configures on the host side, is already held by {holder}; a pod's address \
                 cannot be the gateway",
                self.conf.main_type
            ),
        )
        .context(format!(
            "give that workload another address and release {ip} (`tessera ipam release --ip \
             {ip}`), or set ipam.gateways to a gateway no pod holds"
        ))
    }

    /// The gateway the main plugin configures on the host side (`bridge` with `isGateway`,
    /// `ptp`), held for the network under [`gateway_handle_id`]: the first address of each
    /// address's pool or block, as `result_prefix` says, unless a gateway is configured.
    fn gateway_hold(&self) -> Result<Option<GatewayHold>, CniError> {
        let conf = &self.conf;
        let per_block = match conf.ipam.result_prefix {
            ResultPrefix::Pool => false,
            ResultPrefix::Block => true,
            ResultPrefix::Host => return Ok(None),
        };
        if !conf.main_needs_gateway || self.pod_pools()?.clean_gateway {
            return Ok(None);
        }
        Ok(Some(GatewayHold {
            handle: gateway_handle_id(&conf.name),
            attrs: Attributes {
                gateway_of: Some(conf.name.clone()),
                ..Default::default()
            },
            per_block,
            configured: conf.ipam.gateways.iter().map(|(k, _)| k.clone()).collect(),
        }))
    }

    /// What one of the `handles`, or else one of its `aliases`, holds and for whom.
    fn existing(
        &self,
        ipam: &Allocator,
        handles: &[String],
        aliases: &[String],
    ) -> Result<Existing, IpamError> {
        for id in handles.iter().chain(aliases) {
            let view = ipam.attachment(id)?;
            let (Some(held), Some(attrs)) = (view.held, view.attrs) else {
                continue;
            };
            if self.is_repeat_of(&attrs) {
                return Ok(Existing::Ours(held, Box::new(view.context)));
            }
            if !handles.contains(id) && !self.is_this_attachment(&attrs) {
                return Ok(Existing::OtherLegacy);
            }
            let id = id.to_string();
            let attrs = Box::new(attrs);
            return Ok(Existing::Other { id, held, attrs });
        }
        Ok(Existing::Gone)
    }

    /// The error of an ADD whose handle holds addresses for another pod or container: they
    /// are never handed to a second workload.
    fn held_for_another(&self, id: &str, held: &Assignment, attrs: &Attributes) -> CniError {
        let (namespace, pod) = self.pod();
        let this = Attributes {
            namespace: namespace.map(str::to_string),
            pod: pod.map(str::to_string),
            pod_uid: self.env.arg("K8S_POD_UID").map(str::to_string),
            container_id: Some(self.env.container_id.clone()),
            interface: Some(self.env.ifname.clone()),
            ..Default::default()
        };
        CniError::new(
            code::HELD_FOR_ANOTHER,
            format!(
                "attachment {} already holds {} for {}; this ADD is for {}, so its addresses \
                 are not handed out again",
                quoted(id),
                list(held.addresses.iter().map(|a| a.ip)),
                workload(attrs),
                workload(&this)
            ),
        )
        .context(format!(
            "if that attachment is gone, release it with `tessera ipam release --handle {id}`"
        ))
    }

    /// The result: the configured routes, then those of the addresses' SpiderIPPools, with a
    /// default route through a SpiderIPPool's gateway as Spiderpool returns it (main plugins
    /// such as macvlan install routes, not gateways). No default route when the pod asked
    /// for `cleangateway`.
    fn result(&self, ips: &[ResultIp], got: &Assignment) -> Result<Value, CniError> {
        let ipam = &self.conf.ipam;
        let clean = self.pod_pools()?.clean_gateway;
        let mut routes: Vec<Route> = ipam.routes.clone();
        for (a, ip) in got.addresses.iter().zip(ips) {
            let (Some(gw), Some(_)) = (ip.gateway, a.gateway) else {
                continue;
            };
            let has_default = routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == gw.is_ipv4());
            if !has_default {
                let dst = IpNet::new(a.pool_cidr.addr(), 0)
                    .expect("prefix 0 fits every family")
                    .trunc();
                routes.push(Route {
                    dst,
                    gw: Some(gw),
                    extra: serde_json::Map::new(),
                });
            }
        }
        for a in &got.addresses {
            for r in &a.routes {
                let route = pool_route(r, a)?;
                if !routes
                    .iter()
                    .any(|x| x.dst == route.dst && x.gw == route.gw)
                {
                    routes.push(route);
                }
            }
        }
        if clean {
            routes.retain(|r| r.dst.prefix_len() != 0);
        }
        Ok(add_result(
            self.conf.version,
            ips,
            &routes,
            ipam.dns.as_ref(),
        ))
    }

    /// What the pod's Spiderpool annotations ask for this interface.
    fn pod_pools(&self) -> Result<PodPools, CniError> {
        pod_pools(&self.conf.pod_annotations, &self.env.ifname)
    }

    /// The addresses the runtime asks for, and where: `runtimeConfig.ips`, else
    /// `args.cni.ips`, else `IP` in `CNI_ARGS`. The first of them that names addresses
    /// decides and the others are ignored, with a warning when they ask for other
    /// addresses: a runtime fills `runtimeConfig` only for a capability the configuration
    /// declares, and the CNI conventions have `args` override the older `CNI_ARGS`.
    fn runtime_ips(&self) -> Result<Option<(&'static str, Vec<IpAddr>)>, CniError> {
        let sources = [
            ("runtimeConfig.ips", self.conf.runtime_ips.clone()),
            ("args.cni.ips", self.conf.args_ips.clone()),
            ("CNI_ARGS IP", self.env.requested_ips()?),
        ];
        let mut given = sources.into_iter().filter(|(_, ips)| !ips.is_empty());
        let Some((source, ips)) = given.next() else {
            return Ok(None);
        };
        let wanted: BTreeSet<&IpAddr> = ips.iter().collect();
        let ignored: Vec<String> = given
            .filter(|(_, other)| other.iter().collect::<BTreeSet<_>>() != wanted)
            .map(|(name, other)| format!("{name} ({})", list(other.iter())))
            .collect();
        if !ignored.is_empty() {
            self.log.warn(format_args!(
                "{source} decides the addresses ({}); {} {} ignored",
                list(ips.iter()),
                ignored.join(" and "),
                if ignored.len() == 1 { "is" } else { "are" }
            ));
        }
        Ok(Some((source, ips)))
    }

    /// This interface's auto pools, for a pod read from Kubernetes whose annotations name a
    /// SpiderSubnet (see [`crate::autopool`]).
    fn auto_pools(&self) -> Result<Option<crate::autopool::AutoPools>, CniError> {
        let Some(facts) = &self.pod_from_api else {
            return Ok(None);
        };
        crate::autopool::for_pod(
            &self.conf.pod_annotations,
            facts.app.as_ref(),
            &self.env.ifname,
        )
    }

    /// The allocator request, and where each address it names by value was asked for.
    fn assign_request(&self, node: &str) -> Result<(AssignRequest, Origins), CniError> {
        let conf = &self.conf;
        let annotations = &conf.pod_annotations;
        let bad_annotation = |key: &str, e: String| {
            CniError::new(code::BAD_POD_REQUEST, format!("pod annotation {key}: {e}"))
        };
        let mut origins: Origins = Vec::new();
        let mut push = |ip: IpAddr, source: &'static str| {
            if !origins.iter().any(|(o, _)| *o == ip) {
                origins.push((ip, source));
            }
        };
        if let Some((source, ips)) = self.runtime_ips()? {
            ips.into_iter().for_each(|ip| push(ip, source));
        }
        if let Some(value) = annotations.get(IP_ADDRS_ANNOTATION) {
            let items =
                parse_pool_annotation(value).map_err(|e| bad_annotation(IP_ADDRS_ANNOTATION, e))?;
            for item in items {
                let ip = parse_addr_or_cidr(&item).ok_or_else(|| {
                    bad_annotation(
                        IP_ADDRS_ANNOTATION,
                        format!("{item:?} is not an IP address"),
                    )
                })?;
                push(ip, "pod annotation cni.projectcalico.org/ipAddrs");
            }
        }
        let ips: Vec<IpAddr> = origins.iter().map(|(ip, _)| *ip).collect();
        // Spiderpool's annotations and Calico's are one rule: the workload's own choice.
        // A pod naming a SpiderSubnet draws from its workload's auto pools only.
        let mut pools = match self.auto_pools()? {
            Some(auto) => auto.patterns,
            None => self.pod_pools()?.pools,
        };
        for key in [IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION] {
            if let Some(value) = annotations.get(key) {
                pools.extend(parse_pool_annotation(value).map_err(|e| bad_annotation(key, e))?);
            }
        }
        // Specific addresses replace the automatic ones, as with Calico's ipAddrs.
        let (num_v4, num_v6) = if ips.is_empty() {
            (
                u32::from(conf.ipam.assign_ipv4),
                u32::from(conf.ipam.assign_ipv6),
            )
        } else {
            (0, 0)
        };
        if num_v4 == 0 && num_v6 == 0 && ips.is_empty() {
            return Err(CniError::config(
                "ipam.assign_ipv4 and ipam.assign_ipv6 are both false: there is nothing to \
                 assign; set one of them to true",
            ));
        }
        let env = &self.env;
        let from_api = self.pod_from_api.as_ref();
        let statefulset = self.statefulset();
        let request = AssignRequest {
            handle: self.handle(),
            sticky_handle: self.request_sticky_handle(),
            node: node.to_string(),
            attrs: Attributes {
                namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
                pod: env.arg("K8S_POD_NAME").map(str::to_string),
                pod_uid: env
                    .arg("K8S_POD_UID")
                    .map(str::to_string)
                    .or_else(|| from_api.map(|p| p.uid.clone()).filter(|u| !u.is_empty())),
                node: Some(node.to_string()),
                interface: Some(env.ifname.clone()),
                container_id: Some(env.container_id.clone()),
                gateway_of: None,
                statefulset: statefulset.map(str::to_string),
            },
            num_v4,
            num_v6,
            ips,
            pools,
            default_pools: default_pools(conf),
            pod_labels: conf.pod_labels.clone(),
            namespace_record: from_api.map(|p| p.namespace.clone()),
            gateway: self.gateway_hold()?,
        };
        Ok((request, origins))
    }

    /// The result's addresses with their prefix and gateway. Fails when a gateway is an
    /// address the datastore could hand to a pod.
    fn result_ips(&self, got: &Assignment, ctx: &Context) -> Result<Vec<ResultIp>, CniError> {
        let clean = self.pod_pools()?.clean_gateway;
        let hold = self.gateway_hold()?;
        let mut out = Vec::new();
        for a in &got.addresses {
            let full = if a.ip.is_ipv4() { 32 } else { 128 };
            let prefix_len = match self.conf.ipam.result_prefix {
                ResultPrefix::Pool => a.pool_cidr.prefix_len(),
                ResultPrefix::Block => a.block.prefix_len(),
                ResultPrefix::Host => full,
            };
            let address = IpNet::new(a.ip, prefix_len).expect("prefix of the address's family");
            let explicit = self.explicit_gateway(a)?;
            let source = match (explicit, a.gateway) {
                _ if clean => None,
                (Some(gw), _) => Some((gw, GatewaySource::Config)),
                (None, Some(gw)) => Some((gw, GatewaySource::Pool)),
                (None, None) if self.conf.main_needs_gateway => {
                    first_host(&address.trunc()).map(|gw| (gw, GatewaySource::FirstHost))
                }
                (None, None) => None,
            };
            // A held gateway was taken for the network with the address, or the ADD failed.
            let held = hold.as_ref().and_then(|h| h.gateway_of(a));
            if let Some((gw, source)) = source.filter(|(gw, _)| held != Some(*gw)) {
                self.check_gateway(gw, a, &address, source, got, ctx)?;
            }
            let gateway = source.map(|(gw, _)| gw);
            out.push(ResultIp { address, gateway });
        }
        Ok(out)
    }

    /// `ipam.gateways` entry for the address: its pool's name, else the most specific CIDR
    /// containing it.
    fn explicit_gateway(&self, a: &AssignedAddress) -> Result<Option<IpAddr>, CniError> {
        let gateways = &self.conf.ipam.gateways;
        let by_name = gateways
            .iter()
            .find(|(k, _)| !a.pool.is_empty() && *k == a.pool);
        let by_cidr = || {
            gateways
                .iter()
                .filter_map(|(k, gw)| Some((k.parse::<IpNet>().ok()?, k, gw)))
                .filter(|(net, _, _)| net.contains(&a.ip))
                .max_by_key(|(net, _, _)| net.prefix_len())
                .map(|(_, k, gw)| (k, gw))
        };
        let Some((key, gw)) = by_name.map(|(k, gw)| (k, gw)).or_else(by_cidr) else {
            return Ok(None);
        };
        if gw.is_ipv4() != a.ip.is_ipv4() {
            return Err(CniError::config(format!(
                "ipam.gateways[{key:?}] is {gw}, but {} of pool {:?} is of the other address \
                 family",
                a.ip, a.pool
            )));
        }
        Ok(Some(*gw))
    }

    fn check_gateway(
        &self,
        gw: IpAddr,
        a: &AssignedAddress,
        address: &IpNet,
        source: GatewaySource,
        got: &Assignment,
        ctx: &Context,
    ) -> Result<(), CniError> {
        let Some(pool) = ctx.pool_containing(gw) else {
            return Ok(());
        };
        if ctx.reservation_of(gw).is_some() || pool.is_edge_address(gw) {
            return Ok(());
        }
        let source = match source {
            GatewaySource::Config => "set in ipam.gateways".to_string(),
            GatewaySource::Pool => format!("spec.gateway of SpiderIPPool {:?}", a.pool),
            GatewaySource::FirstHost => format!(
                "the first address of {}, which the {} plugin configures on the host side",
                address.trunc(),
                self.conf.main_type
            ),
        };
        let taken = got.addresses.iter().any(|x| x.ip == gw);
        Err(CniError::new(
            code::GATEWAY_NOT_RESERVED,
            format!(
                "gateway {gw} for {} ({source}) lies in IP pool {:?} ({}) and no IPReservation \
                 covers it, so the datastore {} hand it to a pod",
                a.ip,
                pool.name,
                pool.cidr(),
                if taken { "did just" } else { "could" }
            ),
        )
        .context(format!(
            "reserve it once with `tessera apply -f -` and {{\"apiVersion\": \
             \"projectcalico.org/v3\", \"kind\": \"IPReservation\", \"metadata\": {{\"name\": \
             \"{}-gateway\"}}, \"spec\": {{\"reservedCIDRs\": [\"{gw}\"]}}}}, or set \
             ipam.gateways[{:?}] to an address outside the pool",
            pool.name, pool.name
        )))
    }

    fn del(&self) -> Result<(), CniError> {
        let (ipam, datastore) = self.open()?;
        let at = || self.where_(&node_or_unknown(&self.conf), &datastore);
        let owns = |attrs: &Attributes| self.is_this_attachment(attrs);
        let mut released = Vec::new();
        // The attachment's id, else the id an earlier version gave it; only a handle
        // recorded for this container and interface is released.
        for id in [self.handle(), self.legacy_handle()] {
            match ipam
                .release_handle_of(&id, &owns)
                .map_err(|e| CniError::from(e).context(at()))?
            {
                HandleRelease::Released(ips) if ips.is_empty() => {}
                HandleRelease::Released(ips) => {
                    released = ips;
                    break;
                }
                HandleRelease::NotOwned(attrs) => self.log.warn(format_args!(
                    "left handle {} alone: it holds addresses for {}",
                    quoted(&id),
                    workload(&attrs)
                )),
            }
        }
        if released.is_empty() {
            self.log.debug("nothing to release");
        } else {
            self.log
                .info(format_args!("released {}", list(released.iter())));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), CniError> {
        let (ipam, datastore) = self.open()?;
        let handle = self.handle();
        let at = || self.where_(&node_or_unknown(&self.conf), &datastore);
        let held: Vec<IpAddr> = self
            .own_record(&ipam)
            .map_err(|e| CniError::from(e).context(at()))?
            .map(|r| r.addresses.iter().map(|a| a.ip).collect())
            .unwrap_or_default();
        if held.is_empty() {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!("attachment {handle:?} holds no address in the datastore"),
            )
            .context(at()));
        }
        if let Some(prev) = &self.conf.prev_result {
            let missing: Vec<&IpAddr> = prev.iter().filter(|ip| !held.contains(ip)).collect();
            if !missing.is_empty() {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    format!(
                        "{} of prevResult {} no longer held by attachment {handle:?}; it holds {}",
                        list(missing.iter()),
                        if missing.len() == 1 { "is" } else { "are" },
                        list(held.iter())
                    ),
                )
                .context(at()));
            }
        }
        Ok(())
    }

    fn gc(&self) -> Result<(), CniError> {
        let Some(valid) = &self.conf.valid_attachments else {
            return Err(CniError::config(
                "GC needs cni.dev/valid-attachments (the runtime's list of attachments in use); \
                 without it every attachment of the network would be released",
            ));
        };
        let valid: BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|v| (v.container_id.as_str(), v.ifname.as_str()))
            .collect();
        let (ipam, datastore) = self.open()?;
        let network = &self.conf.name;
        let mut records = Vec::new();
        // This network's handles, and those an earlier version named `<network>.…`.
        for prefix in [format!("{network}{SEPARATOR}"), format!("{network}.")] {
            let found = ipam.handles_with_prefix(&prefix).map_err(|e| {
                CniError::from(e).context(format!("network {network:?}, datastore {datastore}"))
            })?;
            records.extend(found);
        }
        let mut released = 0usize;
        let mut failures = Vec::new();
        let mut transient = true;
        for rec in records {
            let (Some(cid), Some(ifname)) = (&rec.attrs.container_id, &rec.attrs.interface) else {
                continue;
            };
            // Another network whose name starts with this one's plus a dot shares the legacy
            // prefix, and a handle made by hand may have any id: only a handle whose id is
            // what this network gives the attachment recorded in it is ours.
            let ours = [
                handle_id(network, cid, ifname),
                legacy_handle_id(network, cid, ifname),
            ];
            if !ours.contains(&rec.id) {
                continue;
            }
            if valid.contains(&(cid.as_str(), ifname.as_str())) {
                continue;
            }
            match ipam.release_handle(&rec.id) {
                Ok(ips) => {
                    released += 1;
                    self.log.info(format_args!(
                        "GC released stale attachment {} ({})",
                        rec.id,
                        list(ips.iter())
                    ));
                }
                Err(e) => {
                    transient &= e.is_transient();
                    self.log
                        .error(format_args!("GC could not release {}: {e}", rec.id));
                    failures.push(format!("{}: {e}", rec.id));
                }
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(CniError {
            code: if transient {
                code::TRY_AGAIN
            } else {
                code::GC_INCOMPLETE
            },
            msg: format!(
                "GC of network {:?} released {released} stale attachment(s) but could not \
                 release {}",
                self.conf.name,
                failures.len()
            ),
            details: format!("datastore {datastore}: {}", failures.join("; ")),
        })
    }

    fn status(&self) -> Result<(), CniError> {
        let unavailable = |e: CniError| CniError {
            code: code::NOT_AVAILABLE,
            ..e
        };
        let node = node_name(&self.conf).map_err(unavailable)?;
        let (ipam, datastore) = self.open().map_err(unavailable)?;
        let ipam_conf = &self.conf.ipam;
        let mut families = Vec::new();
        if ipam_conf.assign_ipv4 {
            families.push(Family::V4);
        }
        if ipam_conf.assign_ipv6 {
            families.push(Family::V6);
        }
        let query = ReadinessQuery {
            node: node.clone(),
            namespace: None,
            families,
            pools: Vec::new(),
            default_pools: default_pools(&self.conf),
        };
        let at = format!(
            "network {:?}, node {node:?}, datastore {datastore}",
            self.conf.name
        );
        match ipam.readiness(&query) {
            Ok(Readiness::Ready) => Ok(()),
            Ok(Readiness::NotReady(reason)) => {
                Err(CniError::new(code::NOT_AVAILABLE, reason).context(at))
            }
            Err(e) => Err(unavailable(CniError::from(e).context(at))),
        }
    }
}

/// Addresses an ADD asks for by value, each with where it was asked for (`CNI_ARGS IP`, ...).
type Origins = Vec<(IpAddr, &'static str)>;

/// An allocator error as a CNI error; when it refuses an address asked for by value, the
/// details say where it was asked for, so that the user knows what to change.
fn refused(e: IpamError, origins: &Origins) -> CniError {
    let ip = match &e {
        IpamError::AddressNotInPool(ip)
        | IpamError::AddressInUse { ip, .. }
        | IpamError::AddressReserved { ip, .. }
        | IpamError::AddressUnusable { ip, .. }
        | IpamError::LeftoverBlock { ip, .. } => Some(*ip),
        _ => None,
    };
    let origin = origins.iter().find(|(o, _)| Some(*o) == ip);
    let err = CniError::from(e);
    match origin {
        Some((ip, source)) => err.context(format!("{ip} was asked for in {source}")),
        None => err,
    }
}

/// Where a result's gateway comes from, for the error when pods could be given it.
#[derive(Clone, Copy, Debug)]
enum GatewaySource {
    /// `ipam.gateways`.
    Config,
    /// The SpiderIPPool's `spec.gateway`.
    Pool,
    /// The first host of the address's network, for main plugins that need a gateway.
    FirstHost,
}

/// The network configuration's pools: Calico's `ipv4_pools`/`ipv6_pools`, then Spiderpool's
/// `default_ipv4_ippool`/`default_ipv6_ippool` (SpiderIPPool names or patterns).
fn default_pools(conf: &NetConf) -> Vec<String> {
    let ipam = &conf.ipam;
    ipam.ipv4_pools
        .iter()
        .chain(&ipam.ipv6_pools)
        .cloned()
        .chain(
            ipam.default_ipv4_ippool
                .iter()
                .chain(&ipam.default_ipv6_ippool)
                .map(|n| pool_ref(n)),
        )
        .collect()
}

/// A SpiderIPPool route as a result route. The catalog validated it when the pool was
/// applied, so a route that does not parse means a damaged record.
fn pool_route(
    r: &tessera_core::resources::spider::Route,
    a: &AssignedAddress,
) -> Result<Route, CniError> {
    let damaged = |what: &str| {
        CniError::new(
            code::DATASTORE_DAMAGED,
            format!(
                "SpiderIPPool {:?} has a route with {what} in the datastore; fix it with \
                 `tessera apply -f` or run `tessera ipam check`",
                a.pool
            ),
        )
    };
    let dst: IpNet = r
        .dst
        .trim()
        .parse()
        .map_err(|_| damaged(&format!("dst {:?}, not a CIDR", r.dst)))?;
    let gw: IpAddr =
        r.gw.trim()
            .parse()
            .map_err(|_| damaged(&format!("gw {:?}, not an address", r.gw)))?;
    Ok(Route {
        dst: dst.trunc(),
        gw: Some(gw),
        extra: serde_json::Map::new(),
    })
}

/// What separates the parts of a handle id: a character no network name or container id
/// can hold (the CNI spec allows them letters, digits, `_`, `.` and `-`), nor an interface
/// name (Linux refuses `:` in one).
const SEPARATOR: char = ':';

/// The handle id of an attachment: `<network>:<container id>:<interface>`.
///
/// Network names and container ids never contain `:`, so an id splits back into its three
/// parts at its first two colons: two attachments never share an id.
pub fn handle_id(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}{SEPARATOR}{container_id}{SEPARATOR}{ifname}")
}

/// The handle of a StatefulSet pod's attachment: `<network>:<namespace>/<pod>:<interface>`.
/// It is named after the pod, not the container, so that the pod created again under its
/// name finds it and takes its addresses over; DEL, which names the container, leaves it.
/// No container id holds `/`, so it is never an attachment's [`handle_id`].
pub fn sticky_handle_id(network: &str, namespace: &str, pod: &str, ifname: &str) -> String {
    format!("{network}{SEPARATOR}{namespace}/{pod}{SEPARATOR}{ifname}")
}

/// The handle holding the gateways of network `network`: `<network>:gateway`. Its two parts
/// never make an attachment's id, which has three.
pub fn gateway_handle_id(network: &str) -> String {
    format!("{network}{SEPARATOR}gateway")
}

/// The id earlier versions gave an attachment: `<network>.<container id>.<interface>`. Dots
/// may be in every part, so two attachments could share it (network `a`, container `b.c` and
/// network `a.b`, container `c`); a handle under it is this attachment's only when its
/// recorded container id and interface are this attachment's.
pub fn legacy_handle_id(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}.{container_id}.{ifname}")
}

/// Who a handle's addresses are for, as messages name it: pod, container id, interface.
fn workload(attrs: &Attributes) -> String {
    let shown = |v: &Option<String>| v.as_deref().map(plain_or_quoted);
    let mut parts = Vec::new();
    if let Some(cid) = shown(&attrs.container_id) {
        parts.push(format!("container {cid}"));
    }
    if let Some(ifname) = shown(&attrs.interface) {
        parts.push(format!("interface {ifname}"));
    }
    let attachment = parts.join(", ");
    let pod = match (shown(&attrs.namespace), shown(&attrs.pod)) {
        (Some(ns), Some(pod)) => Some(format!("pod {ns}/{pod}")),
        (None, Some(pod)) => Some(format!("pod {pod}")),
        _ => None,
    };
    match pod {
        Some(pod) if attachment.is_empty() => pod,
        Some(pod) => format!("{pod} ({attachment})"),
        None if attachment.is_empty() => "a workload of unknown container".into(),
        None => attachment,
    }
}

/// The node this plugin allocates for: `ipam.nodename`, else `NODENAME`, else the node name
/// file, else the host name lower-cased (Kubernetes names a node after its lower-cased host
/// name, and so does Calico). Whichever gives it, the name must be a valid node name (see
/// [`node_name_problem`]); an explicit name is taken as written, never lower-cased, so that a
/// mistyped one is reported rather than allocated for under another spelling.
pub fn node_name(conf: &NetConf) -> Result<String, CniError> {
    if let Some(name) = &conf.ipam.nodename {
        return checked_node_name(name.trim(), "ipam.nodename");
    }
    if let Some(name) = std::env::var("NODENAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return checked_node_name(name.trim(), "NODENAME");
    }
    let file = &conf.ipam.nodename_file;
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => {
            return checked_node_name(text.trim(), &file.display().to_string())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CniError::config(format!(
                "cannot read the node name from {}: {e}; set ipam.nodename or NODENAME instead",
                file.display()
            )))
        }
    }
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(name) = node_of_host_name(&text, path)? {
                return Ok(name);
            }
        }
    }
    Err(CniError::config(format!(
        "cannot tell which node this is: set ipam.nodename, the NODENAME environment variable, \
         or write the name to {}",
        file.display()
    )))
}

/// `name` when it is a valid node name; a configuration error naming where it came from
/// otherwise.
fn checked_node_name(name: &str, source: &str) -> Result<String, CniError> {
    match node_name_problem(name) {
        None => Ok(name.to_string()),
        Some(problem) => Err(CniError::config(format!("{source}: {problem}"))),
    }
}

/// The node name a host name read from `path` stands for: trimmed and lower-cased; `None`
/// when it is empty.
fn node_of_host_name(text: &str, path: &str) -> Result<Option<String>, CniError> {
    let name = text.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Ok(None);
    }
    checked_node_name(&name, &format!("the host name in {path}, lower-cased"))
        .map(Some)
        .map_err(|e| e.context("set ipam.nodename or NODENAME to the node's name in Kubernetes"))
}

fn node_or_unknown(conf: &NetConf) -> String {
    node_name(conf).unwrap_or_else(|_| "?".into())
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let parts: Vec<String> = items.map(|i| i.to_string()).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hosts() {
        let f = |s: &str| first_host(&s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(f("10.0.0.0/24").as_deref(), Some("10.0.0.1"));
        assert_eq!(f("10.0.0.64/26").as_deref(), Some("10.0.0.65"));
        assert_eq!(f("10.0.0.4/31"), None);
        assert_eq!(f("fd00::/64").as_deref(), Some("fd00::1"));
        assert_eq!(f("fd00::/128"), None);
    }

    #[test]
    fn handle_ids_keep_interfaces_and_networks_apart() {
        assert_eq!(handle_id("net", "c1", "eth0"), "net:c1:eth0");
        assert_ne!(
            handle_id("net", "c1", "eth0"),
            handle_id("net", "c1", "net1")
        );
        // Joined with dots these were one id.
        assert_eq!(
            legacy_handle_id("a", "b.c", "eth0"),
            legacy_handle_id("a.b", "c", "eth0")
        );
        assert_ne!(handle_id("a", "b.c", "eth0"), handle_id("a.b", "c", "eth0"));
        // The parts come back at the first two separators, whatever the interface holds.
        let parts = |id: &str| {
            let (network, rest) = id.split_once(SEPARATOR).unwrap();
            let (cid, ifname) = rest.split_once(SEPARATOR).unwrap();
            (network.to_string(), cid.to_string(), ifname.to_string())
        };
        for (network, cid, ifname) in [
            ("a.b", "c", "eth0"),
            ("a", "b.c", "eth0.100"),
            ("n-1_x", "0_.-", "%@"),
        ] {
            let id = handle_id(network, cid, ifname);
            assert_eq!(parts(&id), (network.into(), cid.into(), ifname.into()));
        }
    }

    #[test]
    fn host_names_are_lower_cased_then_checked() {
        assert_eq!(
            node_of_host_name("Node-A.Example.COM\n", "/etc/hostname").unwrap(),
            Some("node-a.example.com".to_string())
        );
        assert_eq!(node_of_host_name(" \n", "/etc/hostname").unwrap(), None);
        let e = node_of_host_name("my_host\n", "/etc/hostname").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.starts_with(
                "the host name in /etc/hostname, lower-cased: node name \"my_host\" is not \
                 valid: '_' is not allowed;"
            ),
            "{}",
            e.msg
        );
        assert_eq!(
            e.details,
            "set ipam.nodename or NODENAME to the node's name in Kubernetes"
        );
    }
}
