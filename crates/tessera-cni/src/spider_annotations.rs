//! Spiderpool's pod annotations: which SpiderIPPools one interface of a pod draws from.
//!
//! Names are returned with the `spiderippool/` prefix so that the allocator looks them up
//! among SpiderIPPools even when a Calico IPPool has the same name; wildcard patterns are
//! expanded by the allocator against the stored pools.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tessera_core::ipam::SPIDER_POOL_REF;
use tessera_core::json;
use tessera_core::text::plain_quotes;
use tessera_core::text::quoted;

use crate::error::{code, CniError};

/// Pod annotation naming the pools of the pod's interface(s):
/// `{"ipv4": ["pool-a", "backup-*"], "ipv6": [...]}`, optionally with `"interface"`.
pub const IPPOOL_ANNOTATION: &str = "ipam.spidernet.io/ippool";
/// Pod annotation naming pools per interface: a list of
/// `{"interface": "net1", "ipv4": [...], "ipv6": [...], "cleangateway": bool}`.
pub const IPPOOLS_ANNOTATION: &str = "ipam.spidernet.io/ippools";

/// What the pod's Spiderpool annotations ask for one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPools {
    /// Pool references (`spiderippool/<name or pattern>`), IPv4 first, in fallback order.
    pub pools: Vec<String>,
    /// Leave the gateway and default routes out of the result (a secondary interface whose
    /// network must not take the pod's default route).
    pub clean_gateway: bool,
}

/// The pools the pod's annotations name for interface `ifname` (empty when they name none for
/// it). An `ippools` entry for the interface wins over `ippool`; `ippool` applies to every
/// interface unless it names one. An `ippools` entry's `cleangateway` holds whichever list
/// the pools come from.
pub fn pod_pools(
    annotations: &BTreeMap<String, String>,
    ifname: &str,
) -> Result<PodPools, CniError> {
    let mut clean_gateway = false;
    if let Some(text) = annotations.get(IPPOOLS_ANNOTATION) {
        let bad = |msg: String| bad_annotation(IPPOOLS_ANNOTATION, msg);
        let Value::Array(entries) = parse_json(text).map_err(&bad)? else {
            return Err(bad(format!(
                "{text:?} must be a JSON list such as [{{\"interface\": \"eth0\", \"ipv4\": \
                 [\"pool-a\"]}}]"
            )));
        };
        let mut found: Option<PodPools> = None;
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("entry {i}");
            let Value::Object(m) = entry else {
                return Err(bad(format!("{at} must be an object")));
            };
            let iface = match m.get("interface") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
                _ => {
                    return Err(bad(format!(
                        "{at} has no \"interface\" string; every entry names the interface \
                         (CNI_IFNAME, e.g. \"eth0\" or \"net1\") it is for"
                    )))
                }
            };
            let pools = pool_lists(m).map_err(|e| bad(format!("{at}: {e}")))?;
            let clean_gateway = match m.get("cleangateway") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad(format!("{at}: cleangateway must be true or false"))),
            };
            if iface != ifname {
                continue;
            }
            if found.is_some() {
                return Err(bad(format!(
                    "interface {ifname:?} is listed more than once; list each interface once"
                )));
            }
            found = Some(PodPools {
                pools,
                clean_gateway,
            });
        }
        if let Some(found) = found {
            if !found.pools.is_empty() {
                return Ok(found);
            }
            clean_gateway = found.clean_gateway;
        }
    }
    if let Some(text) = annotations.get(IPPOOL_ANNOTATION) {
        let bad = |msg: String| bad_annotation(IPPOOL_ANNOTATION, msg);
        let Value::Object(m) = parse_json(text).map_err(&bad)? else {
            return Err(bad(format!(
                "{text:?} must be a JSON object such as {{\"ipv4\": [\"pool-a\"]}}"
            )));
        };
        let pools = pool_lists(&m).map_err(&bad)?;
        let for_this = match m.get("interface") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty() || s.trim() == ifname,
            Some(_) => return Err(bad("interface must be a string".into())),
        };
        if for_this {
            return Ok(PodPools {
                pools,
                clean_gateway,
            });
        }
    }
    Ok(PodPools {
        pools: Vec::new(),
        clean_gateway,
    })
}

/// A SpiderIPPool name or pattern as the allocator resolves it.
pub fn pool_ref(name: &str) -> String {
    format!("{SPIDER_POOL_REF}{}", name.trim())
}

fn bad_annotation(key: &str, msg: String) -> CniError {
    CniError::new(
        code::BAD_POD_REQUEST,
        format!("pod annotation {key}: {msg}"),
    )
}

/// `ipv4` then `ipv6` of an annotation object, as pool references.
fn pool_lists(m: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for key in ["ipv4", "ipv6"] {
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().map(str::trim) {
                        Some(name) if !name.is_empty() => out.push(pool_ref(name)),
                        _ => return Err(format!("{key}[{i}] must be a pool name")),
                    }
                }
            }
            Some(_) => return Err(format!("{key} must be a list of pool names")),
        }
    }
    Ok(out)
}

/// JSON, also when pasted with typographic quotes (as blog posts print annotations); a key
/// given twice is refused.
fn parse_json(text: &str) -> Result<Value, String> {
    json::from_str(text.trim()).or_else(|first| {
        json::from_str(&plain_quotes(text))
            .map_err(|_| format!("{} is not valid JSON ({first})", quoted(text)))
    })
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
    fn ippool_names_both_families_in_order() {
        let a = annotations(&[(
            IPPOOL_ANNOTATION,
            r#"{"ipv4": ["a", "backup-*"], "ipv6": ["b"]}"#,
        )]);
        let got = pod_pools(&a, "eth0").unwrap();
        assert_eq!(
            got.pools,
            ["spiderippool/a", "spiderippool/backup-*", "spiderippool/b"]
        );
        assert!(!got.clean_gateway);
        // Typographic quotes as a blog prints them.
        let a = annotations(&[(
            IPPOOL_ANNOTATION,
            "\u{2018}{\u{201C}ipv4\u{201D}:[\u{201C}a\u{201D}]}\u{2019}",
        )]);
        assert_eq!(pod_pools(&a, "eth0").unwrap().pools, ["spiderippool/a"]);
    }

    #[test]
    fn ippools_pick_the_interface_and_win_over_ippool() {
        let a = annotations(&[
            (
                IPPOOLS_ANNOTATION,
                r#"[{"interface": "eth0", "ipv4": ["a"]},
                    {"interface": "net1", "ipv4": ["b"], "cleangateway": true}]"#,
            ),
            (IPPOOL_ANNOTATION, r#"{"ipv4": ["c"]}"#),
        ]);
        assert_eq!(
            pod_pools(&a, "eth0").unwrap(),
            PodPools {
                pools: vec!["spiderippool/a".into()],
                clean_gateway: false
            }
        );
        assert_eq!(
            pod_pools(&a, "net1").unwrap(),
            PodPools {
                pools: vec!["spiderippool/b".into()],
                clean_gateway: true
            }
        );
        // No entry for net2: the single-pool annotation applies.
        assert_eq!(pod_pools(&a, "net2").unwrap().pools, ["spiderippool/c"]);
        let a = annotations(&[(IPPOOL_ANNOTATION, r#"{"interface": "eth0", "ipv4": ["c"]}"#)]);
        assert_eq!(pod_pools(&a, "net1").unwrap(), PodPools::default());
        assert_eq!(
            pod_pools(&BTreeMap::new(), "eth0").unwrap(),
            PodPools::default()
        );
        // An entry that only cleans the gateway keeps the pools of the lower levels.
        let a = annotations(&[(
            IPPOOLS_ANNOTATION,
            r#"[{"interface": "net1", "cleangateway": true}]"#,
        )]);
        assert_eq!(
            pod_pools(&a, "net1").unwrap(),
            PodPools {
                pools: vec![],
                clean_gateway: true
            }
        );
    }

    #[test]
    fn malformed_annotations_say_what_is_wrong() {
        let msg = |k: &str, v: &str| {
            let e = pod_pools(&annotations(&[(k, v)]), "eth0").unwrap_err();
            assert_eq!(e.code, 107);
            e.msg
        };
        assert_eq!(
            msg(IPPOOL_ANNOTATION, r#"{"ipv4": "a"}"#),
            "pod annotation ipam.spidernet.io/ippool: ipv4 must be a list of pool names"
        );
        assert_eq!(
            msg(IPPOOLS_ANNOTATION, r#"[{"ipv4": ["a"]}]"#),
            "pod annotation ipam.spidernet.io/ippools: entry 0 has no \"interface\" string; \
             every entry names the interface (CNI_IFNAME, e.g. \"eth0\" or \"net1\") it is for"
        );
        assert_eq!(
            msg(
                IPPOOLS_ANNOTATION,
                r#"[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}]"#
            ),
            "pod annotation ipam.spidernet.io/ippools: interface \"eth0\" is listed more than \
             once; list each interface once"
        );
        assert_eq!(
            msg(
                IPPOOLS_ANNOTATION,
                r#"[{"interface": "eth0", "cleangateway": "yes"}]"#
            ),
            "pod annotation ipam.spidernet.io/ippools: entry 0: cleangateway must be true or false"
        );
        assert!(msg(IPPOOL_ANNOTATION, "{nope").contains("is not valid JSON"));
        assert!(msg(IPPOOL_ANNOTATION, "[]").contains("must be a JSON object"));
        assert!(msg(IPPOOLS_ANNOTATION, "{}").contains("must be a JSON list"));
        assert_eq!(
            msg(IPPOOL_ANNOTATION, r#"{"ipv4": [""]}"#),
            "pod annotation ipam.spidernet.io/ippool: ipv4[0] must be a pool name"
        );
    }
}
