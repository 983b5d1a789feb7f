//! Spiderpool's rules: [`validate_spider_pool`] and friends check one resource on its own
//! (called through [`crate::validate::validate`]), and [`check_spider_against`] checks a pool
//! or subnet against the other pools and subnets, so that one address never belongs to two
//! pools and every pool of a SpiderSubnet takes its addresses from that subnet. The types are
//! in [`crate::resources::spider`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::calico::ParsedPool;
use super::error::{FieldError, ValidationError};
use super::names::{
    check_label_map, check_metadata, dns_label_problem, label_value_problem,
    qualified_name_problem, subdomain_problem, typography_hint, NameRule,
};
use super::network::parse_network;
use crate::net::{ipv4_mapped_range, nets_overlap};
use crate::ranges::{IpRangeSet, RangeError};
use crate::resources::calico::IPPool;
use crate::resources::meta::LabelSelector;
use crate::resources::spider::{Route, SpiderIPPool, SpiderReservedIP, SpiderSubnet};
use crate::resources::{Kind, Resource};
use crate::text::quoted;

/// A set written for messages: at most three ranges, then how many more there are.
pub fn describe_set(set: &IpRangeSet) -> String {
    let parts = set.to_strings();
    if parts.len() <= 3 {
        parts.join(", ")
    } else {
        format!(
            "{} and {} more ranges",
            parts[..3].join(", "),
            parts.len() - 3
        )
    }
}

/// "is" for one address, "are" for more.
fn is_are(set: &IpRangeSet) -> &'static str {
    if set.len() == 1 {
        "is"
    } else {
        "are"
    }
}

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

// ---------------------------------------------------------------------------------------------
// One resource on its own

/// The address fields SpiderIPPool and SpiderSubnet share.
struct AddressFields<'a> {
    /// `pool` or `subnet`, for messages.
    what: &'static str,
    ip_version: &'a mut Option<u8>,
    subnet: &'a mut String,
    ips: &'a mut Vec<String>,
    exclude_ips: &'a mut Vec<String>,
    gateway: &'a mut Option<String>,
    routes: &'a mut Vec<Route>,
    vlan: Option<i64>,
}

/// Checks and normalises the address fields: `ipVersion` is filled in from `subnet`, `subnet`
/// is written in its canonical form, and `ips`/`excludeIPs` are merged and sorted as
/// Spiderpool's webhook does (so the same set always reads the same).
fn check_address_fields(f: AddressFields<'_>, errors: &mut Vec<FieldError>) {
    let given = match *f.ip_version {
        None => None,
        Some(v @ (4 | 6)) => Some(v == 6),
        Some(v) => {
            errors.push(FieldError::new(
                "spec.ipVersion",
                format!(
                    "{v} is not supported; use 4 or 6, or leave ipVersion out to take it from \
                     subnet"
                ),
            ));
            None
        }
    };
    let net = match parse_network(f.subnet, false) {
        Ok(net) => Some(net),
        Err(reason) => {
            errors.push(FieldError::new("spec.subnet", reason));
            None
        }
    };
    if let Some(net) = net {
        let v6 = matches!(net, IpNet::V6(_));
        if given.is_some_and(|g| g != v6) {
            errors.push(FieldError::new(
                "spec.ipVersion",
                format!(
                    "is {} but subnet {net} is an {} network; set ipVersion to {}, or leave it \
                     out to take it from subnet",
                    f.ip_version.unwrap_or_default(),
                    family_name(v6),
                    if v6 { 6 } else { 4 }
                ),
            ));
        } else {
            *f.ip_version = Some(if v6 { 6 } else { 4 });
        }
        *f.subnet = net.to_string();
    }
    let v6 = net.map(|n| matches!(n, IpNet::V6(_))).or(given);
    let ips = check_ranges("spec.ips", f.ips, v6, net, f.what, errors);
    let excluded = check_ranges("spec.excludeIPs", f.exclude_ips, v6, net, f.what, errors);
    let total = match (&ips, &excluded) {
        (Some(ips), Some(excluded)) => Some(ips.subtract(excluded)),
        _ => None,
    };

    if let Some(gw) = f.gateway.as_mut() {
        let hint = "the gateway must be an address of the subnet";
        if let Some(addr) = check_ip("spec.gateway", gw, v6, net, f.what, hint, errors) {
            *gw = addr.to_string();
            if total.as_ref().is_some_and(|t| t.contains(addr)) {
                errors.push(FieldError::new(
                    "spec.gateway",
                    format!(
                        "{addr} is one of the {}'s ips, so it could be handed to a workload; \
                         remove it from ips or add it to excludeIPs",
                        f.what
                    ),
                ));
            }
        }
    }

    let mut seen: Vec<(IpNet, usize)> = Vec::new();
    for (i, route) in f.routes.iter_mut().enumerate() {
        let field = format!("spec.routes[{i}].dst");
        match parse_network(&route.dst, false) {
            Err(reason) => errors.push(FieldError::new(&field, reason)),
            Ok(dst) => {
                let dst_v6 = matches!(dst, IpNet::V6(_));
                if v6.is_some_and(|v| v != dst_v6) {
                    errors.push(FieldError::new(
                        &field,
                        format!(
                            "{dst} is an {} network but the {} is {}; routes must be of the \
                             {}'s family",
                            family_name(dst_v6),
                            f.what,
                            family_name(!dst_v6),
                            f.what
                        ),
                    ));
                } else if dst.prefix_len() == 0 {
                    errors.push(FieldError::new(
                        &field,
                        format!(
                            "{dst} is the default route; set spec.gateway for it instead of a \
                             route"
                        ),
                    ));
                } else if let Some((_, j)) = seen.iter().find(|(d, _)| *d == dst) {
                    errors.push(FieldError::new(
                        &field,
                        format!(
                            "{dst} is also the destination of routes[{j}]; keep one route per \
                             destination"
                        ),
                    ));
                } else {
                    seen.push((dst, i));
                    route.dst = dst.to_string();
                }
            }
        }
        let hint = "a route's next hop must be an address of the subnet";
        let field = format!("spec.routes[{i}].gw");
        if let Some(addr) = check_ip(&field, &route.gw, v6, net, f.what, hint, errors) {
            route.gw = addr.to_string();
        }
    }

    if let Some(vlan) = f.vlan {
        if !(0..=4094).contains(&vlan) {
            errors.push(FieldError::new(
                "spec.vlan",
                format!("{vlan} is outside 0-4094; VLAN ids are 0 (untagged) to 4094"),
            ));
        }
    }
}

/// Checks every entry of an address list (`field` is `spec.ips` or `spec.excludeIPs`) and
/// returns the merged set when all entries are good and the family is known. On success the
/// list is rewritten merged and sorted.
fn check_ranges(
    field: &str,
    entries: &mut Vec<String>,
    v6: Option<bool>,
    net: Option<IpNet>,
    what: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IpRangeSet> {
    let mut all = IpRangeSet::empty(v6.unwrap_or(false));
    let mut ok = true;
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let entry_v6 = v6.unwrap_or_else(|| entry.contains(':'));
        match IpRangeSet::parse(std::slice::from_ref(entry), entry_v6) {
            Err(e) => {
                ok = false;
                errors.push(FieldError::new(path, range_problem(&e, v6, net, what)));
            }
            Ok(set) => {
                let mapped = set.intersect(&IpRangeSet::from_net(&ipv4_mapped_range()));
                if entry_v6 && !mapped.is_empty() {
                    ok = false;
                    errors.push(FieldError::new(
                        path,
                        format!(
                            "{} holds IPv4-mapped IPv6 addresses ({}), which stand for IPv4 \
                             ones; write them as IPv4 addresses",
                            quoted(entry),
                            describe_set(&mapped)
                        ),
                    ));
                    continue;
                }
                if let Some(net) = net {
                    let outside = set.subtract(&IpRangeSet::from_net(&net));
                    if !outside.is_empty() {
                        ok = false;
                        errors.push(FieldError::new(
                            path,
                            format!(
                                "{} is not inside subnet {net} ({} {} outside it); list only \
                                 addresses of the subnet",
                                quoted(entry),
                                describe_set(&outside),
                                is_are(&outside)
                            ),
                        ));
                        continue;
                    }
                }
                for &(lo, hi) in set.ranges() {
                    all.insert(lo, hi);
                }
            }
        }
    }
    if !ok || v6.is_none() {
        return None;
    }
    *entries = all.to_strings();
    Some(all)
}

fn range_problem(e: &RangeError, v6: Option<bool>, net: Option<IpNet>, what: &str) -> String {
    if let Some(hint) = typography_hint(&e.entry) {
        return format!("{} is not an address or range: {hint}", quoted(&e.entry));
    }
    let mut text = if e.reason.starts_with("is ") || e.reason.starts_with("has ") {
        format!("{} {}", quoted(&e.entry), e.reason)
    } else {
        format!("{}: {}", quoted(&e.entry), e.reason)
    };
    let family_mixup = e.reason.contains("address in an");
    match (family_mixup, v6, net) {
        (true, Some(v6), Some(net)) => text.push_str(&format!(
            "; the {what} is {} (subnet {net})",
            family_name(v6)
        )),
        (true, Some(v6), None) => text.push_str(&format!("; the {what} is {}", family_name(v6))),
        _ => {
            let (one, range) = if v6.unwrap_or(false) {
                ("fd00::10", "fd00::10-fd00::20")
            } else {
                ("10.244.120.10", "10.244.120.10-10.244.120.20")
            };
            text.push_str(&format!(
                "; write single addresses such as {one} or ranges such as {range}"
            ));
        }
    }
    text
}

/// Reads one address of family `v6` that must lie in `net` (`hint` says why).
fn check_ip(
    field: &str,
    text: &str,
    v6: Option<bool>,
    net: Option<IpNet>,
    what: &str,
    hint: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IpAddr> {
    let trimmed = text.trim();
    let addr: IpAddr = match trimmed.parse() {
        Ok(addr) => addr,
        Err(_) => {
            let reason = if trimmed.is_empty() {
                "is required; write an IP address such as 10.244.0.1".to_string()
            } else if let Some(t) = typography_hint(trimmed) {
                format!("{} is not an IP address: {t}", quoted(text))
            } else {
                let example = if v6.unwrap_or(false) {
                    "fd00::1"
                } else {
                    "10.244.0.1"
                };
                format!(
                    "{} is not an IP address; write e.g. {example}",
                    quoted(text)
                )
            };
            errors.push(FieldError::new(field, reason));
            return None;
        }
    };
    if let Some(v6) = v6 {
        if addr.is_ipv6() != v6 {
            errors.push(FieldError::new(
                field,
                format!(
                    "{addr} is an {} address but the {what} is {}",
                    family_name(addr.is_ipv6()),
                    family_name(v6)
                ),
            ));
            return None;
        }
    }
    if let Some(net) = net {
        if !net.contains(&addr) {
            errors.push(FieldError::new(
                field,
                format!("{addr} is outside subnet {net}; {hint}"),
            ));
            return None;
        }
    }
    Some(addr)
}

/// Every problem with a Kubernetes label selector, with Kubernetes' rules: valid label keys
/// and values, operators `In`, `NotIn` (at least one value), `Exists`, `DoesNotExist` (no
/// values). `path` is the selector's field (`spec.podAffinity`).
pub fn selector_problems(selector: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_label_map(
        &selector.match_labels,
        &format!("{path}.matchLabels"),
        &mut errors,
    );
    for (i, req) in selector.match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if req.key.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.key"),
                "is required; name the label to test",
            ));
        } else if let Some(p) = qualified_name_problem(&req.key) {
            errors.push(FieldError::new(
                format!("{at}.key"),
                format!("{} is not a valid label key: {p}", quoted(&req.key)),
            ));
        }
        match req.operator.as_str() {
            op @ ("In" | "NotIn") => {
                if req.values.is_empty() {
                    errors.push(FieldError::new(
                        format!("{at}.values"),
                        format!(
                            "must list at least one value for operator {op}; give the label \
                             values to match, or use Exists or DoesNotExist"
                        ),
                    ));
                }
            }
            op @ ("Exists" | "DoesNotExist") => {
                if !req.values.is_empty() {
                    errors.push(FieldError::new(
                        format!("{at}.values"),
                        format!(
                            "must be empty for operator {op}, which tests only whether the \
                             label is present; remove values, or use In or NotIn"
                        ),
                    ));
                }
            }
            "" => errors.push(FieldError::new(
                format!("{at}.operator"),
                "is required; use In, NotIn, Exists or DoesNotExist",
            )),
            other => {
                let guess = ["In", "NotIn", "Exists", "DoesNotExist"]
                    .into_iter()
                    .find(|op| op.eq_ignore_ascii_case(other));
                let mut reason = format!("{} is not a label selector operator", quoted(other));
                if let Some(guess) = guess {
                    reason.push_str(&format!(" (did you mean {guess}?)"));
                }
                reason.push_str("; use In, NotIn, Exists or DoesNotExist");
                errors.push(FieldError::new(format!("{at}.operator"), reason));
            }
        }
        for (j, value) in req.values.iter().enumerate() {
            if let Some(p) = label_value_problem(value) {
                errors.push(FieldError::new(
                    format!("{at}.values[{j}]"),
                    format!("{} is not a valid label value: {p}", quoted(value)),
                ));
            }
        }
    }
    errors
}

fn check_names(
    field: &str,
    names: &[String],
    what: &str,
    problem: impl Fn(&str) -> Option<String>,
    errors: &mut Vec<FieldError>,
) {
    for (i, name) in names.iter().enumerate() {
        if let Some(p) = problem(name) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!("{} is not a valid {what}: {p}", quoted(name)),
            ));
        }
    }
}

/// Why a Multus network name (`NAME` or `NAMESPACE/NAME`) is not valid.
fn multus_name_problem(name: &str) -> Option<String> {
    match name.split_once('/') {
        Some((ns, n)) => dns_label_problem(ns)
            .map(|p| format!("the namespace part {}: {p}", quoted(ns)))
            .or_else(|| subdomain_problem(n).map(|p| format!("the name part {}: {p}", quoted(n)))),
        None => subdomain_problem(name),
    }
    .map(|p| format!("{p}; write NAME or NAMESPACE/NAME, e.g. kube-system/macvlan-vlan0"))
}

/// Checks a SpiderIPPool on its own and returns it with Spiderpool's defaults filled in
/// (`ipVersion` from `subnet`, `default: false`, `disable: false`) and its address lists
/// merged and sorted.
///
/// Rules: a DNS-1123 name; `ipVersion` 4 or 6 and of `subnet`'s family; `subnet` a strictly
/// masked network; every `ips`/`excludeIPs` entry an address, `a-b` range or CIDR inside
/// `subnet`; `gateway` inside `subnet` and not among the addresses handed out; routes to a
/// network of the pool's family other than the default route, each destination once, via a
/// next hop inside `subnet`; `vlan` 0-4094; label selectors valid as in Kubernetes, and
/// `podAffinity` not empty; valid node, namespace and Multus names.
pub fn validate_spider_pool(mut pool: SpiderIPPool, errors: &mut Vec<FieldError>) -> SpiderIPPool {
    check_metadata(&pool.metadata, NameRule::Subdomain, errors);
    let spec = &mut pool.spec;
    check_address_fields(
        AddressFields {
            what: "pool",
            ip_version: &mut spec.ip_version,
            subnet: &mut spec.subnet,
            ips: &mut spec.ips,
            exclude_ips: &mut spec.exclude_ips,
            gateway: &mut spec.gateway,
            routes: &mut spec.routes,
            vlan: spec.vlan,
        },
        errors,
    );
    if let Some(sel) = &spec.pod_affinity {
        if sel.match_labels.is_empty() && sel.match_expressions.is_empty() {
            errors.push(FieldError::new(
                "spec.podAffinity",
                "is empty, which Spiderpool refuses; give matchLabels or matchExpressions, or \
                 remove podAffinity to let every pod use the pool",
            ));
        }
        errors.extend(selector_problems(sel, "spec.podAffinity"));
    }
    if let Some(sel) = &spec.namespace_affinity {
        errors.extend(selector_problems(sel, "spec.namespaceAffinity"));
    }
    if let Some(sel) = &spec.node_affinity {
        errors.extend(selector_problems(sel, "spec.nodeAffinity"));
    }
    check_names(
        "spec.namespaceName",
        &spec.namespace_name,
        "namespace name",
        dns_label_problem,
        errors,
    );
    check_names(
        "spec.nodeName",
        &spec.node_name,
        "node name",
        subdomain_problem,
        errors,
    );
    check_names(
        "spec.multusName",
        &spec.multus_name,
        "Multus network name",
        multus_name_problem,
        errors,
    );
    spec.default.get_or_insert(false);
    spec.disable.get_or_insert(false);
    pool
}

/// Checks a SpiderSubnet on its own and returns it with `ipVersion` filled in and its address
/// lists merged and sorted. The address rules are those of [`validate_spider_pool`].
pub fn validate_spider_subnet(
    mut subnet: SpiderSubnet,
    errors: &mut Vec<FieldError>,
) -> SpiderSubnet {
    check_metadata(&subnet.metadata, NameRule::Subdomain, errors);
    let spec = &mut subnet.spec;
    check_address_fields(
        AddressFields {
            what: "subnet",
            ip_version: &mut spec.ip_version,
            subnet: &mut spec.subnet,
            ips: &mut spec.ips,
            exclude_ips: &mut spec.exclude_ips,
            gateway: &mut spec.gateway,
            routes: &mut spec.routes,
            vlan: spec.vlan,
        },
        errors,
    );
    subnet
}

/// Checks a SpiderReservedIP on its own: every entry of `ips` parses, all of one family that
/// agrees with `ipVersion` (filled in from the addresses when absent). The list is merged and
/// sorted.
pub fn validate_spider_reserved(
    mut reserved: SpiderReservedIP,
    errors: &mut Vec<FieldError>,
) -> SpiderReservedIP {
    check_metadata(&reserved.metadata, NameRule::Subdomain, errors);
    let spec = &mut reserved.spec;
    let given = match spec.ip_version {
        None => None,
        Some(v @ (4 | 6)) => Some(v == 6),
        Some(v) => {
            errors.push(FieldError::new(
                "spec.ipVersion",
                format!(
                    "{v} is not supported; use 4 or 6, or leave ipVersion out to take it from \
                     the addresses"
                ),
            ));
            return reserved;
        }
    };
    // Without ipVersion, the first address that parses sets the family.
    let v6 = given.or_else(|| {
        spec.ips.iter().find_map(|ip| {
            let text = ip.trim();
            let first = text.split_once('-').map_or(text, |(a, _)| a).trim();
            let first = first.split_once('/').map_or(first, |(a, _)| a);
            first.parse::<IpAddr>().ok().map(|a| a.is_ipv6())
        })
    });
    let Some(v6) = v6 else {
        if spec.ips.is_empty() {
            errors.push(FieldError::new(
                "spec.ips",
                "is empty and ipVersion is not set; list the addresses to reserve (ipVersion \
                 is taken from them)",
            ));
        }
        // Otherwise no entry parses; report each one.
        check_ranges("spec.ips", &mut spec.ips, None, None, "reservation", errors);
        return reserved;
    };
    spec.ip_version = Some(if v6 { 6 } else { 4 });
    check_ranges(
        "spec.ips",
        &mut spec.ips,
        Some(v6),
        None,
        "reservation",
        errors,
    );
    reserved
}

// ---------------------------------------------------------------------------------------------
// Against other pools and subnets

/// A pool-like resource (IPPool, SpiderIPPool, SpiderSubnet) with the network holding all its
/// addresses found once per command: an IPPool's parsed `cidr`, a Spiderpool resource's
/// subnet.
#[derive(Debug, Clone, Copy)]
pub struct PoolLike<'r> {
    /// The resource as written.
    pub resource: &'r Resource,
    /// Its network; `None` for other kinds and for unparsable fields (never true of validated
    /// resources).
    pub net: Option<IpNet>,
    /// An IPPool's typed `cidr` and `blockSize`.
    pub calico: Option<ParsedPool<'r>>,
}

impl<'r> PoolLike<'r> {
    /// Finds `resource`'s network: the one place the pool rules parse it.
    pub fn new(resource: &'r Resource) -> Self {
        let (net, calico) = match resource {
            Resource::IPPool(p) => {
                let parsed = ParsedPool::new(p);
                (parsed.net, Some(parsed))
            }
            Resource::SpiderIPPool(p) => (p.spec.subnet_net(), None),
            Resource::SpiderSubnet(s) => (s.spec.subnet_net(), None),
            _ => (None, None),
        };
        Self {
            resource,
            net,
            calico,
        }
    }
}

/// Checks a validated SpiderIPPool, SpiderSubnet or Calico IPPool against the other pools and
/// subnets that will exist with it (stored ones and the rest of the same command), and against
/// `previous`, its stored version when it is an update. Other kinds pass.
///
/// The rules, as Spiderpool enforces them, plus one for living next to Calico pools:
/// - `subnet` and `ipVersion` do not change after creation;
/// - SpiderSubnets do not overlap; the subnets of SpiderIPPools and SpiderSubnets are either
///   equal or disjoint;
/// - a SpiderIPPool whose subnet is a SpiderSubnet's takes its addresses (ips minus
///   excludeIPs) from that subnet's (ips minus excludeIPs), checked from both sides;
/// - no address belongs to two SpiderIPPools, nor to a SpiderIPPool and a Calico IPPool.
///
/// `others` must not hold `new` itself. Calico pools against Calico pools are
/// [`crate::validate::calico::check_pool_against`]'s job.
pub fn check_spider_against(
    new: &PoolLike<'_>,
    previous: Option<&Resource>,
    others: &[PoolLike<'_>],
) -> Result<(), ValidationError> {
    let mut errors = Vec::new();
    match new.resource {
        Resource::SpiderIPPool(pool) => {
            let previous = match previous {
                Some(Resource::SpiderIPPool(p)) => Some(p),
                _ => None,
            };
            check_pool_against_world(pool, previous, others, &mut errors);
        }
        Resource::SpiderSubnet(subnet) => {
            let previous = match previous {
                Some(Resource::SpiderSubnet(s)) => Some(s),
                _ => None,
            };
            check_subnet_against_world(subnet, previous, others, &mut errors);
        }
        Resource::IPPool(pool) => check_calico_against_spider(pool, new.net, others, &mut errors),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationError {
            kind: new.resource.kind(),
            name: new.resource.name().to_string(),
            errors,
        })
    }
}

/// The fields of a SpiderIPPool or SpiderSubnet that never change: `subnet` as written and
/// as a network, and `ipVersion`.
type Fixed<'a> = (&'a str, Option<IpNet>, Option<u8>);

fn check_immutable(
    kind: Kind,
    (old_subnet, old_net, old_version): Fixed<'_>,
    (new_subnet, new_net, new_version): Fixed<'_>,
    errors: &mut Vec<FieldError>,
) {
    let changed = |field: &str, old: &dyn std::fmt::Display, new: &dyn std::fmt::Display| {
        FieldError::new(
            field,
            format!(
                "cannot be changed after the {kind} is created (it is {old}, the new manifest \
                 says {new}); create a new {kind} instead"
            ),
        )
    };
    if old_net != new_net {
        errors.push(changed("spec.subnet", &old_subnet, &new_subnet));
    } else if let (Some(old), Some(new)) = (old_version, new_version) {
        if old != new {
            errors.push(changed("spec.ipVersion", &old, &new));
        }
    }
}

fn check_pool_against_world(
    pool: &SpiderIPPool,
    previous: Option<&SpiderIPPool>,
    others: &[PoolLike<'_>],
    errors: &mut Vec<FieldError>,
) {
    if let Some(old) = previous {
        check_immutable(
            Kind::SpiderIPPool,
            (&old.spec.subnet, old.spec.subnet_net(), old.spec.ip_version),
            (
                &pool.spec.subnet,
                pool.spec.subnet_net(),
                pool.spec.ip_version,
            ),
            errors,
        );
    }
    let (Some(net), Ok(total)) = (pool.spec.subnet_net(), pool.spec.total_ips()) else {
        return;
    };
    for other in others {
        match other.resource {
            Resource::SpiderIPPool(o) => {
                if let Some(o_net) = o.spec.subnet_net() {
                    if o_net != net && nets_overlap(&o_net, &net) {
                        errors.push(FieldError::new(
                            "spec.subnet",
                            format!(
                                "{net} overlaps {o_net}, the subnet of SpiderIPPool {:?}; pools \
                                 whose subnets overlap must name the same subnet: use {o_net}, \
                                 or a subnet that does not overlap it",
                                o.metadata.name
                            ),
                        ));
                    }
                }
                if let Ok(o_total) = o.spec.total_ips() {
                    let both = total.intersect(&o_total);
                    if !both.is_empty() {
                        errors.push(FieldError::new(
                            "spec.ips",
                            format!(
                                "{} {} also in SpiderIPPool {:?}; an address may belong to one \
                                 pool only: take the overlap out of one of the two pools (drop \
                                 it from ips or list it in excludeIPs)",
                                describe_set(&both),
                                is_are(&both),
                                o.metadata.name
                            ),
                        ));
                    }
                }
            }
            Resource::SpiderSubnet(s) => {
                let Some(s_net) = s.spec.subnet_net() else {
                    continue;
                };
                if s_net == net {
                    if let Ok(s_total) = s.spec.total_ips() {
                        let outside = total.subtract(&s_total);
                        if !outside.is_empty() {
                            errors.push(FieldError::new(
                                "spec.ips",
                                format!(
                                    "{} {} not offered by SpiderSubnet {:?} (its ips minus \
                                     excludeIPs); a pool of subnet {net} takes its addresses \
                                     from that SpiderSubnet: add them to the subnet's ips \
                                     first, or choose addresses it offers",
                                    describe_set(&outside),
                                    is_are(&outside),
                                    s.metadata.name
                                ),
                            ));
                        }
                    }
                } else if nets_overlap(&s_net, &net) {
                    errors.push(FieldError::new(
                        "spec.subnet",
                        format!(
                            "{net} overlaps {s_net} of SpiderSubnet {:?}; a pool inside a \
                             SpiderSubnet must name exactly its subnet: use {s_net}",
                            s.metadata.name
                        ),
                    ));
                }
            }
            Resource::IPPool(c) => {
                if let Some(both) = calico_overlap(other.net, &total) {
                    errors.push(FieldError::new(
                        "spec.ips",
                        format!(
                            "{} {} inside {} of IPPool {:?}; an address may belong to one pool \
                             only: choose addresses outside it, or delete that IPPool first",
                            describe_set(&both),
                            is_are(&both),
                            c.spec.cidr,
                            c.metadata.name
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn check_subnet_against_world(
    subnet: &SpiderSubnet,
    previous: Option<&SpiderSubnet>,
    others: &[PoolLike<'_>],
    errors: &mut Vec<FieldError>,
) {
    if let Some(old) = previous {
        check_immutable(
            Kind::SpiderSubnet,
            (&old.spec.subnet, old.spec.subnet_net(), old.spec.ip_version),
            (
                &subnet.spec.subnet,
                subnet.spec.subnet_net(),
                subnet.spec.ip_version,
            ),
            errors,
        );
    }
    let (Some(net), Ok(total)) = (subnet.spec.subnet_net(), subnet.spec.total_ips()) else {
        return;
    };
    for other in others {
        match other.resource {
            Resource::SpiderSubnet(o) => {
                if let Some(o_net) = o.spec.subnet_net() {
                    if nets_overlap(&o_net, &net) {
                        errors.push(FieldError::new(
                            "spec.subnet",
                            format!(
                                "{net} overlaps {o_net} of SpiderSubnet {:?}; SpiderSubnets may \
                                 not overlap: choose another range, or delete that SpiderSubnet \
                                 first",
                                o.metadata.name
                            ),
                        ));
                    }
                }
            }
            Resource::SpiderIPPool(p) => {
                let Some(p_net) = p.spec.subnet_net() else {
                    continue;
                };
                if p_net == net {
                    if let Ok(p_total) = p.spec.total_ips() {
                        let outside = p_total.subtract(&total);
                        if !outside.is_empty() {
                            errors.push(FieldError::new(
                                "spec.ips",
                                format!(
                                    "SpiderIPPool {:?} holds {}, which this subnet does not \
                                     offer (ips minus excludeIPs); every pool of subnet {net} \
                                     takes its addresses from the SpiderSubnet: keep them in \
                                     ips, or remove them from the pool first",
                                    p.metadata.name,
                                    describe_set(&outside)
                                ),
                            ));
                        }
                    }
                } else if nets_overlap(&p_net, &net) {
                    errors.push(FieldError::new(
                        "spec.subnet",
                        format!(
                            "{net} overlaps {p_net}, the subnet of SpiderIPPool {:?}; the pools \
                             inside a SpiderSubnet must name exactly its subnet: choose a \
                             subnet equal to {p_net} or clear of it, or delete that pool first",
                            p.metadata.name
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn check_calico_against_spider(
    pool: &IPPool,
    net: Option<IpNet>,
    others: &[PoolLike<'_>],
    errors: &mut Vec<FieldError>,
) {
    for other in others {
        let Resource::SpiderIPPool(o) = other.resource else {
            continue;
        };
        let Ok(o_total) = o.spec.total_ips() else {
            continue;
        };
        if let Some(both) = calico_overlap(net, &o_total) {
            errors.push(FieldError::new(
                "spec.cidr",
                format!(
                    "{} holds {} of SpiderIPPool {:?}; an address may belong to one pool only: \
                     choose a range clear of them, or delete that SpiderIPPool first",
                    pool.spec.cidr,
                    describe_set(&both),
                    o.metadata.name
                ),
            ));
        }
    }
}

/// The addresses of `set` inside a Calico pool's network `net`, when there are any.
fn calico_overlap(net: Option<IpNet>, set: &IpRangeSet) -> Option<IpRangeSet> {
    let both = set.within(&net?);
    (!both.is_empty()).then_some(both)
}
