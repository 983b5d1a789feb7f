//! Which pools a request may draw from, in Calico's order of precedence.

use std::collections::BTreeMap;

use super::context::{parse_net_or_addr, Context, PoolInfo, Requester};
use super::{AssignRequest, IpamError};

/// Namespace/pod annotation naming IPv4 pools (JSON list of names or CIDRs).
pub const IPV4_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv4pools";
/// Namespace/pod annotation naming IPv6 pools.
pub const IPV6_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv6pools";
/// Pod annotation asking for specific addresses (JSON list).
pub const IP_ADDRS_ANNOTATION: &str = "cni.projectcalico.org/ipAddrs";

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// True for IPv6.
    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// The pools annotation key for this family.
    pub fn pools_annotation(self) -> &'static str {
        match self {
            Family::V4 => IPV4_POOLS_ANNOTATION,
            Family::V6 => IPV6_POOLS_ANNOTATION,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Parses an annotation holding a JSON list of strings, e.g. `["external-pool"]`.
/// Typographic quotes (as word processors and blog posts turn `"` and `'` into) are read as
/// plain quotes, so a value pasted from a document still works.
pub fn parse_pool_annotation(value: &str) -> Result<Vec<String>, String> {
    let parse = |text: &str| serde_json::from_str::<Vec<String>>(text.trim());
    parse(value).or_else(|first_error| {
        let plain: String = value
            .trim()
            .trim_matches(|c| matches!(c, '\u{2018}' | '\u{2019}' | '\''))
            .chars()
            .map(|c| match c {
                '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => '"',
                c => c,
            })
            .collect();
        parse(&plain).map_err(|_| {
            format!("{value:?} is not a JSON list of strings such as [\"pool-a\"] ({first_error})")
        })
    })
}

/// Prefix that makes a pool name refer to a SpiderIPPool even when an IPPool has the same
/// name.
pub const SPIDER_POOL_REF: &str = "spiderippool/";

/// Resolves names or CIDRs to pools of `family`, keeping their order. Entries of the other
/// family are left out (one list may name both families); unknown entries are an error.
/// Spiderpool pools whose affinities refuse the requester are left out, with the reason kept
/// in `refused`.
fn resolve_named<'c>(
    ctx: &'c Context,
    family: Family,
    names: &[String],
    who: &Requester<'_>,
    refused: &mut Vec<String>,
) -> Result<Vec<&'c PoolInfo>, IpamError> {
    let mut out: Vec<&PoolInfo> = Vec::new();
    for name in names {
        let name = name.trim();
        let pool = match name.strip_prefix(SPIDER_POOL_REF) {
            Some(spider) => ctx
                .pools
                .iter()
                .find(|p| p.spider.is_some() && p.name == spider),
            None => ctx
                .pool_by_name(name)
                .or_else(|| parse_net_or_addr(name).and_then(|net| ctx.pool_by_cidr(&net))),
        }
        .ok_or_else(|| IpamError::PoolNotFound(name.to_string()))?;
        if pool.is_v6() != family.is_v6() {
            continue;
        }
        if pool.disabled {
            return Err(IpamError::PoolDisabled(pool.name.clone()));
        }
        if !pool.workload {
            return Err(IpamError::PoolNotForWorkloads(pool.name.clone()));
        }
        if let Some(reason) = pool.spider.as_ref().and_then(|s| s.refusal(who)) {
            refused.push(format!("{}: {reason}", pool.name));
            continue;
        }
        if !out.iter().any(|p| std::ptr::eq(*p, pool)) {
            out.push(pool);
        }
    }
    Ok(out)
}

/// Pools for one family, first rule that yields pools wins: the workload's own list, the
/// namespace's annotation, the network configuration's list, then every enabled Automatic
/// pool whose nodeSelector selects the node (and namespaceSelector the namespace), followed
/// by the Spiderpool pools marked `default`. Spiderpool pools whose affinities refuse the
/// pod, its namespace or its node are filtered out at every step, as Spiderpool does.
pub(super) fn candidate_pools<'c>(
    ctx: &'c Context,
    family: Family,
    node: &str,
    req: &AssignRequest,
) -> Result<Vec<&'c PoolInfo>, IpamError> {
    let empty = BTreeMap::new();
    let (ns_labels, ns_annotations) = match &ctx.namespace {
        Some(ns) => (&ns.metadata.labels, &ns.metadata.annotations),
        None => (&empty, &empty),
    };
    let who = Requester {
        node,
        node_labels: &ctx.node_labels,
        namespace: req.attrs.namespace.as_deref(),
        namespace_labels: ns_labels,
        pod_labels: req.pod_labels.as_ref(),
    };
    let mut refused = Vec::new();
    let refusal = |refused: Vec<String>| IpamError::PoolsRefuse {
        family,
        reasons: refused.join("; "),
    };
    let named = [&req.pools, &Vec::new(), &req.default_pools];
    for (step, names) in named.into_iter().enumerate() {
        let names = if step == 1 {
            match ns_annotations.get(family.pools_annotation()) {
                Some(value) => parse_pool_annotation(value).map_err(|e| {
                    IpamError::InvalidRequest(format!(
                        "namespace {:?} annotation {}: {e}",
                        req.attrs.namespace.as_deref().unwrap_or_default(),
                        family.pools_annotation()
                    ))
                })?,
                None => continue,
            }
        } else {
            names.clone()
        };
        let pools = resolve_named(ctx, family, &names, &who, &mut refused)?;
        if !pools.is_empty() {
            return Ok(pools);
        }
        if !refused.is_empty() {
            return Err(refusal(refused));
        }
    }
    let mut pools: Vec<&PoolInfo> = ctx
        .pools
        .iter()
        .filter(|p| p.is_v6() == family.is_v6() && !p.disabled && !p.manual && p.workload)
        .filter(|p| p.node_selector.matches(&ctx.node_labels))
        .filter(|p| {
            p.namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(ns_labels))
        })
        .collect();
    for p in ctx
        .pools
        .iter()
        .filter(|p| p.is_v6() == family.is_v6() && !p.disabled)
    {
        let Some(spider) = p.spider.as_ref().filter(|s| s.default) else {
            continue;
        };
        match spider.refusal(&who) {
            None => pools.push(p),
            Some(reason) => refused.push(format!("{}: {reason}", p.name)),
        }
    }
    if pools.is_empty() {
        if !refused.is_empty() {
            return Err(refusal(refused));
        }
        return Err(IpamError::NoPool {
            family,
            node: node.to_string(),
            namespace: req
                .attrs
                .namespace
                .as_ref()
                .map(|ns| format!(" and namespace {ns:?}"))
                .unwrap_or_default(),
        });
    }
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_lists_parse() {
        assert_eq!(parse_pool_annotation(r#"["a", "b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(parse_pool_annotation("[]").unwrap(), Vec::<String>::new());
        // As printed in the Calico blog post: typographic quotes around and inside.
        assert_eq!(
            parse_pool_annotation("\u{2018}[\u{201C}external-pool\"]\u{2019}").unwrap(),
            ["external-pool"]
        );
        let err = parse_pool_annotation("external-pool").unwrap_err();
        assert!(err.contains("is not a JSON list"), "{err}");
    }
}
