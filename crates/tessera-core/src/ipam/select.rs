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
/// Namespace annotation naming the SpiderIPPools of its pods' IPv4 addresses (JSON list).
pub const SPIDER_NS_DEFAULT_IPV4_ANNOTATION: &str = "ipam.spidernet.io/default-ipv4-ippool";
/// Namespace annotation naming the SpiderIPPools of its pods' IPv6 addresses (JSON list).
pub const SPIDER_NS_DEFAULT_IPV6_ANNOTATION: &str = "ipam.spidernet.io/default-ipv6-ippool";

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

    /// The Spiderpool namespace annotation naming default pools of this family.
    pub fn spider_namespace_annotation(self) -> &'static str {
        match self {
            Family::V4 => SPIDER_NS_DEFAULT_IPV4_ANNOTATION,
            Family::V6 => SPIDER_NS_DEFAULT_IPV6_ANNOTATION,
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
        parse(&crate::text::plain_quotes(value)).map_err(|_| {
            format!(
                "{} is not a JSON list of strings such as [\"pool-a\"] ({first_error})",
                crate::text::quoted(value)
            )
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
        if let Some(pattern) = name
            .strip_prefix(SPIDER_POOL_REF)
            .filter(|p| is_wildcard(p))
        {
            // Spiderpool expands a pattern to the matching pools in name order (ctx.pools is
            // sorted by name); disabled pools a pattern happens to match are passed over
            // rather than failing the request, since nobody named them.
            let mut matched = false;
            for pool in ctx
                .pools
                .iter()
                .filter(|p| p.spider.is_some() && wildcard_match(pattern, &p.name))
            {
                matched = true;
                if pool.is_v6() != family.is_v6() || pool.disabled {
                    continue;
                }
                if let Some(reason) = pool.spider.as_ref().and_then(|s| s.refusal(who)) {
                    refused.push(format!("{}: {reason}", pool.name));
                    continue;
                }
                if !out.iter().any(|p| std::ptr::eq(*p, pool)) {
                    out.push(pool);
                }
            }
            if !matched {
                return Err(IpamError::InvalidRequest(format!(
                    "no SpiderIPPool matches the pattern {pattern:?}; list pools with \
                     `tessera get spiderippool`"
                )));
            }
            continue;
        }
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
    // The namespace as the caller read it from Kubernetes wins over the stored record.
    let namespace = req.namespace_record.as_ref().or(ctx.namespace.as_ref());
    let (ns_labels, ns_annotations) = match namespace {
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
            let mut names = Vec::new();
            let keys = [
                family.pools_annotation(),
                family.spider_namespace_annotation(),
            ];
            for (i, key) in keys.into_iter().enumerate() {
                let Some(value) = ns_annotations.get(key) else {
                    continue;
                };
                let listed = parse_pool_annotation(value).map_err(|e| {
                    IpamError::InvalidRequest(format!(
                        "namespace {:?} annotation {key}: {e}",
                        req.attrs.namespace.as_deref().unwrap_or_default(),
                    ))
                })?;
                // Spiderpool's annotation names SpiderIPPools only.
                names.extend(listed.into_iter().map(|n| {
                    if i == 1 {
                        format!("{SPIDER_POOL_REF}{}", n.trim())
                    } else {
                        n
                    }
                }));
            }
            if names.is_empty() {
                continue;
            }
            names
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

/// True when a pool name is a Spiderpool wildcard pattern (`*`, `?` or `[...]`).
pub fn is_wildcard(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// Shell-style match of a whole pool name against `pattern`: `*` is any run of characters,
/// `?` one character, `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) one character of (or not
/// of) a class, as Spiderpool's wildcard pool names allow. A malformed class (no closing `]`)
/// matches nothing. Iterative with one backtrack point, so any input is linear-ish and never
/// recurses.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class_match(&p[pi..], n[ni]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => return false,
            },
            Some(c) if *c == n[ni] => Some(1),
            _ => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class at the start of `p` (`[...]`); returns whether it matched
/// and the class's length in pattern characters, or `None` when the class is not closed.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|h| *h != ']') {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
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

    #[test]
    fn wildcards_match_whole_names() {
        let m = wildcard_match;
        assert!(m("backup-ipv4*", "backup-ipv4"));
        assert!(m("backup-ipv4*", "backup-ipv4-rack2"));
        assert!(!m("backup-ipv4*", "old-backup-ipv4"));
        assert!(m("pool-?", "pool-a"));
        assert!(!m("pool-?", "pool-ab"));
        assert!(m("*-v4-*", "nginx-v4-ippool"));
        assert!(m("rack[12]-v4", "rack2-v4"));
        assert!(!m("rack[12]-v4", "rack3-v4"));
        assert!(m("rack[0-9]", "rack7"));
        assert!(m("rack[!0-9]", "rackx"));
        assert!(!m("rack[^0-9]", "rack7"));
        assert!(!m("rack[0-9", "rack7"), "an unclosed class matches nothing");
        assert!(m("*", ""));
        assert!(!m("a*b*c", "a-b-d"));
        assert!(m("a*b*c", "a-x-b-y-c"));
        assert!(is_wildcard("a*") && is_wildcard("a?") && is_wildcard("a[1]"));
        assert!(!is_wildcard("nginx-v4-ippool"));
    }
}
