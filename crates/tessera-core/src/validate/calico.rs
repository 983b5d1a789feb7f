//! Calico's rules: IPPool, IPReservation and IPAMConfiguration, and those of Nodes and
//! Namespaces. Checking one resource fills in Calico's defaults (`blockSize`, `ipipMode`,
//! `vxlanMode`, `allowedUses`, `nodeSelector`, `assignmentMode`); [`check_pool_against`] checks
//! a pool against the pools that already exist (no overlap, no change of `cidr` or
//! `blockSize`).

use ipnet::IpNet;

use super::error::{FieldError, ValidationError};
use super::names::{check_labels, check_metadata, typography_hint, NameRule};
use super::network::{parse_cidr_field, parse_network};
use crate::net::nets_overlap;
use crate::resources::calico::{
    AllowedUse, AssignmentMode, EncapMode, IPAMConfiguration, IPPool, IPReservation,
};
use crate::resources::kube::{Namespace, Node};
use crate::resources::Kind;
use crate::selector::Selector;
use crate::text::quoted;

/// Default block size of IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block size of IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;
/// Smallest and largest allowed IPv4 block size.
pub const BLOCK_SIZE_RANGE_V4: (u8, u8) = (20, 32);
/// Smallest and largest allowed IPv6 block size.
pub const BLOCK_SIZE_RANGE_V6: (u8, u8) = (116, 128);
/// The selector a pool gets when it names none.
pub const DEFAULT_NODE_SELECTOR: &str = "all()";
/// The only allowed name of the IPAMConfiguration.
pub const IPAM_CONFIG_NAME: &str = "default";

/// An IPPool with `cidr` and `blockSize` turned into typed values once per command: the rules
/// between pools compare these and never re-read the strings.
#[derive(Debug, Clone, Copy)]
pub struct ParsedPool<'a> {
    /// The pool as written.
    pub pool: &'a IPPool,
    /// `cidr` as a network; `None` when it is not one (never true of a validated pool).
    pub net: Option<IpNet>,
    /// The block size in use: the given one or the family's default; only the given one when
    /// `cidr` is not a network.
    pub block_size: Option<u8>,
}

impl<'a> ParsedPool<'a> {
    /// Parses `pool`'s `cidr`: the one place the pool rules read that string.
    pub fn new(pool: &'a IPPool) -> Self {
        let net = parse_network(pool.spec.cidr.trim(), false).ok();
        let block_size = net
            .map(|n| effective_block_size(&n, pool.spec.block_size))
            .or(pool.spec.block_size);
        Self {
            pool,
            net,
            block_size,
        }
    }

    fn name(&self) -> &'a str {
        &self.pool.metadata.name
    }
}

/// Checks a (validated) pool against the pools that exist already: it may not overlap any
/// other pool, and if `existing` holds a pool of the same name, `cidr` and `blockSize` must
/// not differ from it.
pub fn check_pool_against(
    new: &ParsedPool<'_>,
    existing: &[ParsedPool<'_>],
) -> Result<(), ValidationError> {
    let mut errors = Vec::new();
    let (Some(new_net), Some(new_bs)) = (new.net, new.block_size) else {
        errors.push(FieldError::new(
            "spec.cidr",
            format!(
                "{} is not a network address; validate the pool first",
                quoted(&new.pool.spec.cidr)
            ),
        ));
        return Err(ValidationError {
            kind: Kind::IPPool,
            name: new.name().to_string(),
            errors,
        });
    };
    for other in existing {
        if other.name() == new.name() {
            let changed_cidr = match other.net {
                Some(n) => n != new_net,
                None => other.pool.spec.cidr != new.pool.spec.cidr,
            };
            if changed_cidr {
                errors.push(FieldError::new(
                    "spec.cidr",
                    format!(
                        "cannot be changed after the pool is created (it is {}, the new \
                         manifest says {}); create a new pool and migrate (see docs)",
                        other.pool.spec.cidr, new_net
                    ),
                ));
            }
            if let Some(other_bs) = other.block_size.filter(|&bs| bs != new_bs) {
                errors.push(FieldError::new(
                    "spec.blockSize",
                    format!(
                        "cannot be changed after the pool is created (it is {other_bs}, the \
                         new manifest says {new_bs}); create a new pool and migrate (see docs)",
                    ),
                ));
            }
            continue;
        }
        if let Some(other_net) = other.net {
            if nets_overlap(&new_net, &other_net) {
                errors.push(FieldError::new(
                    "spec.cidr",
                    format!(
                        "{new_net} overlaps {other_net} of IPPool {:?}; pools may not \
                         overlap: choose a free range, or disable and delete the other pool \
                         first",
                        other.name()
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationError {
            kind: Kind::IPPool,
            name: new.name().to_string(),
            errors,
        })
    }
}

/// The block size a pool uses: the given one, or the family's default.
pub fn effective_block_size(cidr: &IpNet, given: Option<u8>) -> u8 {
    given.unwrap_or(match cidr {
        IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
        IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
    })
}

// ---------------------------------------------------------------------------------------------
// Pools

pub(super) fn validate_pool(mut pool: IPPool, errors: &mut Vec<FieldError>) -> IPPool {
    check_metadata(&pool.metadata, NameRule::Subdomain, errors);
    let spec = &mut pool.spec;

    let net = match parse_cidr_field("spec.cidr", &spec.cidr, false) {
        Ok(net) => Some(net),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if let Some(net) = net {
        spec.cidr = net.to_string();
        let link_local: IpNet = match net {
            IpNet::V4(_) => "169.254.0.0/16".parse().expect("constant"),
            IpNet::V6(_) => "fe80::/10".parse().expect("constant"),
        };
        if nets_overlap(&net, &link_local) {
            errors.push(FieldError::new(
                "spec.cidr",
                format!(
                    "{net} overlaps the link-local range {link_local}, which cannot hold pod \
                     addresses; choose a range outside it"
                ),
            ));
        }
    }

    // Block size: range per family, and the pool must hold at least one block.
    match net {
        Some(net) => {
            let v6 = matches!(net, IpNet::V6(_));
            let (lo, hi) = if v6 {
                BLOCK_SIZE_RANGE_V6
            } else {
                BLOCK_SIZE_RANGE_V4
            };
            let family = if v6 { "IPv6" } else { "IPv4" };
            let bs = effective_block_size(&net, spec.block_size);
            if !(lo..=hi).contains(&bs) {
                errors.push(FieldError::new(
                    "spec.blockSize",
                    format!("{bs} is outside {lo}-{hi} for {family}"),
                ));
            } else if net.prefix_len() > bs {
                let default_note = if spec.block_size.is_none() {
                    " (the default)"
                } else {
                    ""
                };
                errors.push(FieldError::new(
                    "spec.blockSize",
                    format!(
                        "the pool {net} is smaller than one /{bs} block{default_note}; set \
                         blockSize to {} or more, or use a wider cidr",
                        net.prefix_len()
                    ),
                ));
            }
            spec.block_size = Some(bs);
        }
        None => {
            if let Some(bs) = spec.block_size {
                let ok = (BLOCK_SIZE_RANGE_V4.0..=BLOCK_SIZE_RANGE_V4.1).contains(&bs)
                    || (BLOCK_SIZE_RANGE_V6.0..=BLOCK_SIZE_RANGE_V6.1).contains(&bs);
                if !ok {
                    errors.push(FieldError::new(
                        "spec.blockSize",
                        format!("{bs} is outside 20-32 for IPv4 and 116-128 for IPv6"),
                    ));
                }
            }
        }
    }

    // Encapsulation.
    let ipip = *spec.ipip_mode.get_or_insert(EncapMode::Never);
    let vxlan = *spec.vxlan_mode.get_or_insert(EncapMode::Never);
    if ipip != EncapMode::Never && vxlan != EncapMode::Never {
        errors.push(FieldError::new(
            "spec.vxlanMode",
            format!(
                "cannot be {vxlan:?} while ipipMode is {ipip:?}; a pool uses at most one \
                 encapsulation: set one of them to Never"
            ),
        ));
    }
    if ipip != EncapMode::Never && matches!(net, Some(IpNet::V6(_))) {
        errors.push(FieldError::new(
            "spec.ipipMode",
            format!(
                "IPIP ({ipip:?}) is not supported on IPv6 pools; set ipipMode to Never (use \
                 vxlanMode for IPv6 encapsulation)"
            ),
        ));
    }

    // Allowed uses.
    let uses = match spec.allowed_uses.take() {
        Some(u) if !u.is_empty() => u,
        _ => vec![AllowedUse::Workload, AllowedUse::Tunnel],
    };
    let mut seen = Vec::new();
    for u in &uses {
        if seen.contains(u) {
            errors.push(FieldError::new(
                "spec.allowedUses",
                format!("{u:?} is listed more than once; list each use once"),
            ));
        } else {
            seen.push(*u);
        }
    }
    if seen.contains(&AllowedUse::LoadBalancer) && seen.len() > 1 {
        errors.push(FieldError::new(
            "spec.allowedUses",
            "LoadBalancer cannot be combined with Workload or Tunnel; put LoadBalancer \
             addresses in a pool of their own",
        ));
    }
    spec.allowed_uses = Some(uses);

    // Selectors.
    match spec.node_selector.as_deref() {
        None => spec.node_selector = Some(DEFAULT_NODE_SELECTOR.to_string()),
        Some(s) if s.trim().is_empty() => {
            spec.node_selector = Some(DEFAULT_NODE_SELECTOR.to_string())
        }
        Some(s) => {
            if let Some(e) = check_selector("spec.nodeSelector", s) {
                errors.push(e);
            }
        }
    }
    match spec.namespace_selector.as_deref() {
        None => {}
        Some(s) if s.trim().is_empty() => spec.namespace_selector = None,
        Some(s) => {
            if let Some(e) = check_selector("spec.namespaceSelector", s) {
                errors.push(e);
            }
        }
    }
    spec.assignment_mode
        .get_or_insert(AssignmentMode::Automatic);
    pool
}

fn check_selector(field: &str, text: &str) -> Option<FieldError> {
    if let Some(hint) = typography_hint(text) {
        return Some(FieldError::new(
            field,
            format!("{} is not a valid selector: {hint}", quoted(text)),
        ));
    }
    match Selector::parse(text) {
        Ok(_) => None,
        Err(e) => Some(FieldError::new(
            field,
            format!("{e}; write e.g. rack == \"0\" or has(zone) && zone in {{\"a\", \"b\"}}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Reservations, IPAM configuration, nodes, namespaces

pub(super) fn validate_reservation(
    mut r: IPReservation,
    errors: &mut Vec<FieldError>,
) -> IPReservation {
    check_metadata(&r.metadata, NameRule::Subdomain, errors);
    for (i, text) in r.spec.reserved_cidrs.iter_mut().enumerate() {
        let field = format!("spec.reservedCIDRs[{i}]");
        match parse_cidr_field(&field, text, true) {
            Ok(net) => *text = net.to_string(),
            Err(e) => errors.push(e),
        }
    }
    r
}

pub(super) fn validate_ipam_config(
    c: IPAMConfiguration,
    errors: &mut Vec<FieldError>,
) -> IPAMConfiguration {
    if c.metadata.name != IPAM_CONFIG_NAME {
        let reason = if c.metadata.name.is_empty() {
            format!("is required; the IPAMConfiguration is a single resource named {IPAM_CONFIG_NAME:?}")
        } else {
            format!(
                "{} is not allowed; the IPAMConfiguration is a single resource named \
                 {IPAM_CONFIG_NAME:?}",
                quoted(&c.metadata.name)
            )
        };
        errors.push(FieldError::new("metadata.name", reason));
    }
    check_labels(&c.metadata, errors);
    c
}

pub(super) fn validate_node(n: Node, errors: &mut Vec<FieldError>) -> Node {
    check_metadata(&n.metadata, NameRule::Subdomain, errors);
    n
}

pub(super) fn validate_namespace(n: Namespace, errors: &mut Vec<FieldError>) -> Namespace {
    check_metadata(&n.metadata, NameRule::Label, errors);
    for key in POOL_LIST_ANNOTATIONS {
        if let Some(value) = n.metadata.annotations.get(key) {
            if let Some(problem) = pool_list_problem(value) {
                errors.push(FieldError::new(
                    format!("metadata.annotations.{key}"),
                    problem,
                ));
            }
        }
    }
    n
}

/// Namespace and pod annotations whose value is a JSON list of pool names (or CIDRs).
pub const POOL_LIST_ANNOTATIONS: [&str; 2] = [
    "cni.projectcalico.org/ipv4pools",
    "cni.projectcalico.org/ipv6pools",
];

/// Why an annotation value is not a JSON list of pool names, e.g. `["external-pool"]`.
pub fn pool_list_problem(value: &str) -> Option<String> {
    let ok = |v: &str| {
        serde_json::from_str::<Vec<String>>(v)
            .map(|names| names.iter().all(|n| !n.trim().is_empty()))
            .unwrap_or(false)
    };
    if ok(value) {
        return None;
    }
    let mut reason = format!("{} is not a JSON list of pool names", quoted(value));
    if let Some(hint) = typography_hint(value) {
        reason.push_str(&format!(": {hint}"));
        let fixed = crate::text::plain_quotes(value);
        if ok(&fixed) {
            reason.push_str(&format!("; write {fixed}"));
            return Some(reason);
        }
    }
    reason.push_str("; write e.g. [\"external-pool\"]");
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::calico::IPPoolSpec;
    use crate::resources::meta::ObjectMeta;
    use crate::resources::Resource;
    use crate::validate::validate;

    fn pool(name: &str, cidr: &str) -> IPPool {
        IPPool {
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: IPPoolSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        }
    }

    /// [`check_pool_against`] on pools as written.
    fn against(new: &IPPool, existing: &[IPPool]) -> Result<(), ValidationError> {
        let existing: Vec<ParsedPool> = existing.iter().map(ParsedPool::new).collect();
        check_pool_against(&ParsedPool::new(new), &existing)
    }

    fn check(p: IPPool) -> Result<IPPool, ValidationError> {
        match validate(Resource::IPPool(p))? {
            Resource::IPPool(p) => Ok(p),
            _ => unreachable!(),
        }
    }

    fn err(p: IPPool) -> String {
        check(p).unwrap_err().to_string()
    }

    fn fields(p: IPPool) -> Vec<String> {
        check(p)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn pool_defaults_are_filled_in() {
        let p = check(pool("rack-0-ippool", "192.168.0.0/24")).unwrap();
        assert_eq!(p.spec.block_size, Some(26));
        assert_eq!(p.spec.ipip_mode, Some(EncapMode::Never));
        assert_eq!(p.spec.vxlan_mode, Some(EncapMode::Never));
        assert_eq!(
            p.spec.allowed_uses,
            Some(vec![AllowedUse::Workload, AllowedUse::Tunnel])
        );
        assert_eq!(p.spec.node_selector.as_deref(), Some("all()"));
        assert_eq!(p.spec.namespace_selector, None);
        assert_eq!(p.spec.assignment_mode, Some(AssignmentMode::Automatic));
        let p6 = check(pool("v6", "fd00:10::/64")).unwrap();
        assert_eq!(p6.spec.block_size, Some(122));
    }

    #[test]
    fn pool_name_required_and_dns_subdomain() {
        assert_eq!(
            err(pool("", "10.0.0.0/16")),
            "IPPool <unnamed> is invalid: metadata.name: is required"
        );
        assert_eq!(
            err(pool("Rack_0", "10.0.0.0/16")),
            "IPPool \"Rack_0\" is invalid: metadata.name: \"Rack_0\" is not a valid name: 'R' \
             is uppercase (write 'r'); use lowercase letters, digits, '-' and '.', starting \
             and ending with a letter or digit, at most 253 characters"
        );
        assert!(check(pool("rack-0.zone-a", "10.0.0.0/16")).is_ok());
        assert_eq!(fields(pool("-a", "10.0.0.0/16")), ["metadata.name"]);
        assert_eq!(fields(pool("a..b", "10.0.0.0/16")), ["metadata.name"]);
        assert_eq!(
            fields(pool(&"a".repeat(254), "10.0.0.0/16")),
            ["metadata.name"]
        );
        assert!(check(pool(&"a".repeat(253), "10.0.0.0/16")).is_ok());
    }

    #[test]
    fn pool_cidr_required_and_parses() {
        assert_eq!(
            err(pool("p", "")),
            "IPPool \"p\" is invalid: spec.cidr: is required, e.g. 192.168.0.0/16 or fd00:10::/64"
        );
        assert_eq!(
            err(pool("p", "10.0.0/16")),
            "IPPool \"p\" is invalid: spec.cidr: \"10.0.0/16\" is not a CIDR: \"10.0.0\" is not \
             an IPv4 or IPv6 address"
        );
        assert_eq!(
            err(pool("p", "10.0.0.0/33")),
            "IPPool \"p\" is invalid: spec.cidr: \"10.0.0.0/33\" is not a CIDR: the prefix \
             length \"33\" must be a number from 0 to 32 for IPv4"
        );
        assert_eq!(
            err(pool("p", "10.0.0.0")),
            "IPPool \"p\" is invalid: spec.cidr: \"10.0.0.0\" has no prefix length; write a \
             network such as 10.0.0.0/16"
        );
        assert!(check(pool("p", "fd00:10::/48")).is_ok());
    }

    #[test]
    fn pool_cidr_strictly_masked() {
        assert_eq!(
            err(pool("rack-0-ippool", "10.0.0.1/16")),
            "IPPool \"rack-0-ippool\" is invalid: spec.cidr: \"10.0.0.1/16\" is not a network \
             address (host bits set); use 10.0.0.0/16"
        );
        assert_eq!(
            err(pool("v6", "fd00::1/64")),
            "IPPool \"v6\" is invalid: spec.cidr: \"fd00::1/64\" is not a network address \
             (host bits set); use fd00::/64"
        );
        // Normalised text form.
        let p = check(pool("v6", "FD00:0:0::/64")).unwrap();
        assert_eq!(p.spec.cidr, "fd00::/64");
    }

    #[test]
    fn pool_cidr_outside_link_local() {
        assert_eq!(
            err(pool("ll", "169.254.0.0/24")),
            "IPPool \"ll\" is invalid: spec.cidr: 169.254.0.0/24 overlaps the link-local range \
             169.254.0.0/16, which cannot hold pod addresses; choose a range outside it"
        );
        assert_eq!(fields(pool("ll", "fe80::/64")), ["spec.cidr"]);
        assert_eq!(fields(pool("all", "0.0.0.0/0")), ["spec.cidr"]);
        assert!(check(pool("near", "169.255.0.0/16")).is_ok());
    }

    #[test]
    fn pool_block_size_range() {
        let mut p = pool("internal-pool", "192.169.0.0/16");
        p.spec.block_size = Some(33);
        assert_eq!(
            err(p.clone()),
            "IPPool \"internal-pool\" is invalid: spec.blockSize: 33 is outside 20-32 for IPv4"
        );
        p.spec.block_size = Some(19);
        assert_eq!(fields(p.clone()), ["spec.blockSize"]);
        for bs in [20, 29, 32] {
            p.spec.block_size = Some(bs);
            assert!(check(p.clone()).is_ok(), "{bs}");
        }
        let mut p6 = pool("v6", "fd00::/64");
        p6.spec.block_size = Some(26);
        assert_eq!(
            err(p6.clone()),
            "IPPool \"v6\" is invalid: spec.blockSize: 26 is outside 116-128 for IPv6"
        );
        for bs in [116, 128] {
            p6.spec.block_size = Some(bs);
            assert!(check(p6.clone()).is_ok());
        }
    }

    #[test]
    fn pool_must_hold_one_block() {
        assert_eq!(
            err(pool("tiny", "10.0.0.0/28")),
            "IPPool \"tiny\" is invalid: spec.blockSize: the pool 10.0.0.0/28 is smaller than \
             one /26 block (the default); set blockSize to 28 or more, or use a wider cidr"
        );
        let mut p = pool("tiny", "10.0.0.0/28");
        p.spec.block_size = Some(28);
        assert!(check(p).is_ok());
        // /31 and /32 pools are fine with a matching block size.
        for (cidr, bs) in [
            ("10.0.0.8/31", 31),
            ("10.0.0.9/32", 32),
            ("10.0.0.8/31", 32),
        ] {
            let mut p = pool("small", cidr);
            p.spec.block_size = Some(bs);
            assert!(check(p).is_ok(), "{cidr} {bs}");
        }
    }

    #[test]
    fn pool_one_encapsulation_only() {
        let mut p = pool("p", "10.0.0.0/16");
        p.spec.ipip_mode = Some(EncapMode::Always);
        p.spec.vxlan_mode = Some(EncapMode::CrossSubnet);
        assert_eq!(
            err(p.clone()),
            "IPPool \"p\" is invalid: spec.vxlanMode: cannot be CrossSubnet while ipipMode is \
             Always; a pool uses at most one encapsulation: set one of them to Never"
        );
        p.spec.vxlan_mode = Some(EncapMode::Never);
        assert!(check(p.clone()).is_ok());
        p.spec.ipip_mode = None;
        p.spec.vxlan_mode = Some(EncapMode::Always);
        assert!(check(p).is_ok());
    }

    #[test]
    fn no_ipip_on_ipv6() {
        let mut p = pool("v6", "fd00::/64");
        p.spec.ipip_mode = Some(EncapMode::CrossSubnet);
        assert_eq!(fields(p.clone()), ["spec.ipipMode"]);
        p.spec.ipip_mode = None;
        p.spec.vxlan_mode = Some(EncapMode::Always);
        assert!(check(p).is_ok());
    }

    #[test]
    fn allowed_uses_rules() {
        let mut p = pool("lb", "10.0.0.0/16");
        p.spec.allowed_uses = Some(vec![AllowedUse::LoadBalancer]);
        assert!(check(p.clone()).is_ok());
        p.spec.allowed_uses = Some(vec![]);
        assert_eq!(
            check(p.clone()).unwrap().spec.allowed_uses,
            Some(vec![AllowedUse::Workload, AllowedUse::Tunnel])
        );
        p.spec.allowed_uses = Some(vec![AllowedUse::Workload, AllowedUse::LoadBalancer]);
        assert_eq!(
            err(p.clone()),
            "IPPool \"lb\" is invalid: spec.allowedUses: LoadBalancer cannot be combined with \
             Workload or Tunnel; put LoadBalancer addresses in a pool of their own"
        );
        p.spec.allowed_uses = Some(vec![AllowedUse::Tunnel, AllowedUse::Tunnel]);
        assert_eq!(
            err(p.clone()),
            "IPPool \"lb\" is invalid: spec.allowedUses: Tunnel is listed more than once; list \
             each use once"
        );
        p.spec.allowed_uses = Some(vec![AllowedUse::Tunnel]);
        assert!(check(p).is_ok());
    }

    #[test]
    fn selectors_default_and_typography() {
        let mut p = pool("p", "10.0.0.0/16");
        p.spec.node_selector = Some("  ".into());
        p.spec.namespace_selector = Some(String::new());
        let ok = check(p.clone()).unwrap();
        assert_eq!(ok.spec.node_selector.as_deref(), Some("all()"));
        assert_eq!(ok.spec.namespace_selector, None);
        p.spec.node_selector = Some("rack == \u{201C}0\u{201D}".into());
        assert_eq!(
            err(p.clone()),
            "IPPool \"p\" is invalid: spec.nodeSelector: \"rack == \u{201C}0\u{201D}\" is not a \
             valid selector: it contains typographic characters \u{201C} (U+201C), \u{201D} \
             (U+201D) (often pasted from a web page or chat); replace them with plain ASCII \
             quotes (\" or ')"
        );
        p.spec.node_selector = Some("rack == \"0\"".into());
        p.spec.namespace_selector = Some("team == \u{2018}a\u{2019}".into());
        assert_eq!(fields(p), ["spec.namespaceSelector"]);
    }

    #[test]
    fn selectors_must_parse() {
        let mut p = pool("p", "10.0.0.0/16");
        p.spec.node_selector = Some("rack ==".into());
        assert_eq!(fields(p.clone()), ["spec.nodeSelector"]);
        p.spec.node_selector = Some("rack == \"0\"".into());
        p.spec.namespace_selector = Some("team in {".into());
        assert_eq!(fields(p.clone()), ["spec.namespaceSelector"]);
        p.spec.namespace_selector = Some("has(team)".into());
        assert!(check(p).is_ok());
    }

    #[test]
    fn several_problems_reported_together() {
        let mut p = pool("Bad", "10.0.0.1/8");
        p.spec.block_size = Some(40);
        p.spec.ipip_mode = Some(EncapMode::Always);
        p.spec.vxlan_mode = Some(EncapMode::Always);
        assert_eq!(
            fields(p),
            [
                "metadata.name",
                "spec.cidr",
                "spec.blockSize",
                "spec.vxlanMode"
            ]
        );
    }

    fn reservation(cidrs: &[&str]) -> Resource {
        Resource::IPReservation(IPReservation {
            metadata: ObjectMeta {
                name: "reserved".into(),
                ..Default::default()
            },
            spec: crate::resources::calico::IPReservationSpec {
                reserved_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            },
        })
    }

    #[test]
    fn reservation_normalises_single_addresses() {
        let Resource::IPReservation(r) =
            validate(reservation(&["10.0.0.5", "fd00::1", "10.1.0.0/24"])).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(
            r.spec.reserved_cidrs,
            ["10.0.0.5/32", "fd00::1/128", "10.1.0.0/24"]
        );
    }

    #[test]
    fn reservation_cidrs_strictly_masked() {
        let e = validate(reservation(&["10.0.0.0/24", "10.1.0.7/24", "nope"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPReservation \"reserved\" is invalid: spec.reservedCIDRs[1]: \"10.1.0.7/24\" is \
             not a network address (host bits set); use 10.1.0.0/24; spec.reservedCIDRs[2]: \
             \"nope\" is not a CIDR; write e.g. 192.168.0.0/16 or fd00:10::/64"
        );
    }

    #[test]
    fn ipv4_mapped_networks_are_refused() {
        assert_eq!(
            err(pool("mapped", "::ffff:10.90.0.0/120")),
            "IPPool \"mapped\" is invalid: spec.cidr: \"::ffff:10.90.0.0/120\" is an \
             IPv4-mapped IPv6 network (::ffff:0:0/96 stands for IPv4 addresses); write the IPv4 \
             network 10.90.0.0/24 instead"
        );
        assert!(err(pool("around", "::/64")).contains(
            "spec.cidr: \"::/64\" overlaps ::ffff:0:0/96, the IPv4-mapped IPv6 addresses, which \
             stand for IPv4 ones; choose a range clear of it"
        ));
        assert!(check(pool("v6", "::fffe:0:0/120")).is_ok());
        let e = validate(reservation(&["::ffff:10.90.0.5", "::ffff:0:0/96"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPReservation \"reserved\" is invalid: spec.reservedCIDRs[0]: \"::ffff:10.90.0.5\" \
             is an IPv4-mapped IPv6 address (::ffff:0:0/96 stands for IPv4 addresses); write the \
             IPv4 address 10.90.0.5 instead; spec.reservedCIDRs[1]: \"::ffff:0:0/96\" is an \
             IPv4-mapped IPv6 network (::ffff:0:0/96 stands for IPv4 addresses); write the IPv4 \
             network 0.0.0.0/0 instead"
        );
    }

    #[test]
    fn ipam_configuration_must_be_named_default() {
        let mut c = IPAMConfiguration::default();
        c.metadata.name = "default".into();
        assert!(validate(Resource::IPAMConfiguration(c.clone())).is_ok());
        c.metadata.name = "mine".into();
        assert_eq!(
            validate(Resource::IPAMConfiguration(c))
                .unwrap_err()
                .to_string(),
            "IPAMConfiguration \"mine\" is invalid: metadata.name: \"mine\" is not allowed; the \
             IPAMConfiguration is a single resource named \"default\""
        );
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Resource {
        Resource::Node(Node {
            metadata: ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            spec: serde_json::Value::Null,
        })
    }

    fn namespace(name: &str) -> Resource {
        Resource::Namespace(Namespace {
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
        })
    }

    #[test]
    fn node_names_are_subdomains() {
        assert!(validate(node("kube-node-0.example.com", &[])).is_ok());
        assert_eq!(
            validate(node("kube_node", &[])).unwrap_err().errors[0].field,
            "metadata.name"
        );
    }

    #[test]
    fn namespace_names_are_labels() {
        assert!(validate(namespace("external-ns")).is_ok());
        let e = validate(namespace("a.b")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Namespace \"a.b\" is invalid: metadata.name: \"a.b\" is not a valid name: '.' is \
             not allowed; use lowercase letters, digits and '-', starting and ending with a \
             letter or digit, at most 63 characters"
        );
        assert!(validate(namespace(&"a".repeat(64))).is_err());
        assert!(validate(namespace(&"a".repeat(63))).is_ok());
    }

    #[test]
    fn namespace_pool_annotations_are_json_lists() {
        let ns = |value: &str| {
            let mut meta = ObjectMeta {
                name: "external-ns".into(),
                ..Default::default()
            };
            meta.annotations
                .insert("cni.projectcalico.org/ipv4pools".into(), value.into());
            validate(Resource::Namespace(Namespace { metadata: meta }))
        };
        assert!(ns("[\"external-pool\"]").is_ok());
        assert!(ns("[\"external-pool\", \"10.0.0.0/24\"]").is_ok());
        // The namespace pools example, as pasted from the web page.
        assert_eq!(
            ns("\u{2018}[\u{201C}external-pool\"]\u{2019}")
                .unwrap_err()
                .to_string(),
            "Namespace \"external-ns\" is invalid: \
             metadata.annotations.cni.projectcalico.org/ipv4pools: \"\u{2018}[\u{201C}external-pool\\\"]\u{2019}\" \
             is not a JSON list of pool names: it contains typographic characters \u{2018} \
             (U+2018), \u{201C} (U+201C), \u{2019} (U+2019) (often pasted from a web page or \
             chat); replace them with plain ASCII quotes (\" or '); write [\"external-pool\"]"
        );
        assert_eq!(
            ns("external-pool").unwrap_err().errors[0].reason,
            "\"external-pool\" is not a JSON list of pool names; write e.g. [\"external-pool\"]"
        );
    }

    #[test]
    fn label_keys_and_values() {
        assert!(validate(node(
            "n",
            &[
                ("rack", "0"),
                ("topology.kubernetes.io/zone", "eu-west-1a"),
                ("empty", ""),
                ("a_b.c-d", "X_y.z-1")
            ]
        ))
        .is_ok());
        let e = validate(node("n", &[("rack", "-0")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Node \"n\" is invalid: metadata.labels.rack: \"-0\" is not a valid label value: it \
             must start and end with a letter or digit; use letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit (or leave it empty)"
        );
        assert!(validate(node("n", &[("Bad Key", "x")])).is_err());
        assert!(validate(node("n", &[("EXAMPLE.com/x", "x")])).is_err());
        assert!(validate(node("n", &[("example.com/", "x")])).is_err());
        assert!(validate(node("n", &[("k", &"v".repeat(64))])).is_err());
        assert!(validate(node("n", &[(&"k".repeat(64), "v")])).is_err());
        assert!(validate(node("n", &[("rack", "\u{201C}1\u{201D}")])).is_err());
    }

    #[test]
    fn overlap_with_other_pools_refused() {
        let existing = [check(pool("default-ipv4-ippool", "192.168.0.0/16")).unwrap()];
        let new = check(pool("rack-0-ippool", "192.168.0.0/24")).unwrap();
        assert_eq!(
            against(&new, &existing).unwrap_err().to_string(),
            "IPPool \"rack-0-ippool\" is invalid: spec.cidr: 192.168.0.0/24 overlaps \
             192.168.0.0/16 of IPPool \"default-ipv4-ippool\"; pools may not overlap: choose a \
             free range, or disable and delete the other pool first"
        );
        let other = check(pool("rack-1-ippool", "192.168.1.0/24")).unwrap();
        assert!(against(&new, std::slice::from_ref(&other)).is_ok());
        let v6 = check(pool("v6", "fd00::/64")).unwrap();
        assert!(against(&v6, &existing).is_ok());
    }

    #[test]
    fn cidr_and_block_size_are_immutable() {
        let stored = check(pool("p", "10.0.0.0/16")).unwrap();
        // Same pool with other fields changed is fine, even when blockSize is now explicit.
        let mut same = stored.clone();
        same.spec.disabled = true;
        same.spec.block_size = None;
        assert!(against(&check(same).unwrap(), std::slice::from_ref(&stored)).is_ok());
        let moved = check(pool("p", "10.1.0.0/16")).unwrap();
        assert_eq!(
            against(&moved, std::slice::from_ref(&stored))
                .unwrap_err()
                .to_string(),
            "IPPool \"p\" is invalid: spec.cidr: cannot be changed after the pool is created \
             (it is 10.0.0.0/16, the new manifest says 10.1.0.0/16); create a new pool and \
             migrate (see docs)"
        );
        let mut resized = stored.clone();
        resized.spec.block_size = Some(27);
        assert_eq!(
            against(&resized, &[stored]).unwrap_err().errors,
            [FieldError::new(
                "spec.blockSize",
                "cannot be changed after the pool is created (it is 26, the new manifest says \
                 27); create a new pool and migrate (see docs)"
            )]
        );
    }
}
