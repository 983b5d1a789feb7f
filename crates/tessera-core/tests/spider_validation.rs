//! Spiderpool's rules for one resource on its own: SpiderIPPool, SpiderSubnet and
//! SpiderReservedIP, each rule accepted and refused, with whole messages for representative
//! ones.

use proptest::prelude::*;
use serde_json::{json, Value};
use tessera_core::decode::decode_document;
use tessera_core::resources::meta::LabelSelector;
use tessera_core::resources::spider::{
    SpiderIPPool, SpiderReservedIP, SpiderSubnet, SPIDER_API_VERSION,
};
use tessera_core::resources::Resource;
use tessera_core::validate::spider::selector_problems;
use tessera_core::validate::validate;

fn doc(kind: &str, name: &str, spec: Value) -> Resource {
    decode_document(json!({
        "apiVersion": SPIDER_API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn pool(spec: Value) -> Resource {
    doc("SpiderIPPool", "nginx-v4-ippool", spec)
}

fn subnet(spec: Value) -> Resource {
    doc("SpiderSubnet", "nginx-subnet-v4", spec)
}

fn reserved(spec: Value) -> Resource {
    doc("SpiderReservedIP", "reserved", spec)
}

fn err(r: Resource) -> String {
    validate(r).unwrap_err().to_string()
}

fn fields(r: Resource) -> Vec<String> {
    validate(r)
        .unwrap_err()
        .errors
        .into_iter()
        .map(|e| e.field)
        .collect()
}

fn valid_pool(r: Resource) -> SpiderIPPool {
    match validate(r).unwrap() {
        Resource::SpiderIPPool(p) => p,
        other => panic!("not a pool: {other:?}"),
    }
}

fn valid_subnet(r: Resource) -> SpiderSubnet {
    match validate(r).unwrap() {
        Resource::SpiderSubnet(s) => s,
        other => panic!("not a subnet: {other:?}"),
    }
}

fn valid_reserved(r: Resource) -> SpiderReservedIP {
    match validate(r).unwrap() {
        Resource::SpiderReservedIP(s) => s,
        other => panic!("not a reservation: {other:?}"),
    }
}

const P: &str = "SpiderIPPool \"nginx-v4-ippool\" is invalid: ";

#[test]
fn nginx_pool_is_valid_and_gets_spiderpool_defaults() {
    let p = valid_pool(pool(json!({
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.120.10-10.244.120.20"],
    })));
    assert_eq!(p.spec.ip_version, Some(4), "ipVersion comes from subnet");
    assert_eq!(p.spec.default, Some(false));
    assert_eq!(p.spec.disable, Some(false));
    assert_eq!(p.spec.total_ips().unwrap().len(), 11);
    let v6 = valid_pool(pool(json!({"subnet": "FD00::/120", "ips": ["fd00::10"]})));
    assert_eq!(v6.spec.ip_version, Some(6));
    assert_eq!(v6.spec.subnet, "fd00::/120", "written in canonical form");
    // A pool without addresses is allowed, as in Spiderpool; it hands nothing out.
    let empty = valid_pool(pool(json!({"subnet": "10.244.0.0/16"})));
    assert_eq!(empty.spec.total_ips().unwrap().len(), 0);
}

#[test]
fn ip_version_is_4_or_6() {
    assert_eq!(
        err(pool(json!({"ipVersion": 5, "subnet": "10.244.0.0/16"}))),
        format!(
            "{P}spec.ipVersion: 5 is not supported; use 4 or 6, or leave ipVersion out to take \
             it from subnet"
        )
    );
    assert!(validate(pool(json!({"ipVersion": 4, "subnet": "10.244.0.0/16"}))).is_ok());
    assert!(validate(pool(json!({"ipVersion": 6, "subnet": "fd00::/64"}))).is_ok());
}

#[test]
fn ip_version_agrees_with_subnet() {
    assert_eq!(
        err(pool(json!({"ipVersion": 6, "subnet": "10.244.0.0/16"}))),
        format!(
            "{P}spec.ipVersion: is 6 but subnet 10.244.0.0/16 is an IPv4 network; set ipVersion \
             to 4, or leave it out to take it from subnet"
        )
    );
    assert_eq!(
        fields(pool(json!({"ipVersion": 4, "subnet": "fd00::/64"}))),
        ["spec.ipVersion"]
    );
}

#[test]
fn subnet_is_a_strictly_masked_network() {
    assert_eq!(
        err(pool(json!({"subnet": "10.244.0.1/16"}))),
        format!(
            "{P}spec.subnet: \"10.244.0.1/16\" is not a network address (host bits set); use \
             10.244.0.0/16"
        )
    );
    assert_eq!(
        err(pool(json!({"ips": ["10.244.120.10"]}))),
        format!("{P}spec.subnet: is required, e.g. 192.168.0.0/16 or fd00:10::/64")
    );
    assert_eq!(
        fields(pool(json!({"subnet": "10.244.0.0"}))),
        ["spec.subnet"]
    );
    assert_eq!(
        fields(pool(json!({"subnet": "10.244.0.0/33"}))),
        ["spec.subnet"]
    );
    assert_eq!(fields(pool(json!({"subnet": "nginx"}))), ["spec.subnet"]);
}

#[test]
fn ips_entries_parse() {
    let spec = |ips: Value| json!({"subnet": "10.244.0.0/16", "ips": ips});
    assert_eq!(
        err(pool(spec(json!(["10.244.120.20-10.244.120.10"])))),
        format!(
            "{P}spec.ips[0]: \"10.244.120.20-10.244.120.10\": the range ends before it starts; \
             write single addresses such as 10.244.120.10 or ranges such as \
             10.244.120.10-10.244.120.20"
        )
    );
    assert_eq!(
        err(pool(spec(json!(["10.244.120.10", "fd00::1"])))),
        format!(
            "{P}spec.ips[1]: \"fd00::1\" is an IPv6 address in an IPv4 list; the pool is IPv4 \
             (subnet 10.244.0.0/16)"
        )
    );
    // Blog text often turns the range dash into an en dash.
    assert_eq!(
        err(pool(spec(json!(["10.244.120.10\u{2013}10.244.120.20"])))),
        format!(
            "{P}spec.ips[0]: \"10.244.120.10\u{2013}10.244.120.20\" is not an address or range: \
             it contains typographic characters \u{2013} (U+2013) (often pasted from a web page \
             or chat); replace them with a plain '-'"
        )
    );
    assert_eq!(fields(pool(spec(json!(["nope"])))), ["spec.ips[0]"]);
    assert_eq!(
        fields(pool(spec(json!(["10.244.1.0/23"])))),
        ["spec.ips[0]"]
    );
    // Single addresses, ranges and CIDRs are all accepted.
    let p = valid_pool(pool(spec(json!([
        "10.244.120.10",
        "10.244.120.12-10.244.120.13",
        "10.244.121.0/30"
    ]))));
    assert_eq!(p.spec.total_ips().unwrap().len(), 1 + 2 + 4);
}

#[test]
fn ips_lie_inside_subnet() {
    assert_eq!(
        err(pool(json!({
            "subnet": "10.244.0.0/16",
            "ips": ["10.244.255.250-10.245.0.3"],
        }))),
        format!(
            "{P}spec.ips[0]: \"10.244.255.250-10.245.0.3\" is not inside subnet 10.244.0.0/16 \
             (10.245.0.0-10.245.0.3 are outside it); list only addresses of the subnet"
        )
    );
    assert!(validate(pool(json!({
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.0.0-10.244.255.255"],
    })))
    .is_ok());
}

#[test]
fn exclude_ips_parse_and_lie_inside_subnet() {
    let spec = |ex: Value| json!({"subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"], "excludeIPs": ex});
    assert_eq!(
        err(pool(spec(json!(["10.0.0.1"])))),
        format!(
            "{P}spec.excludeIPs[0]: \"10.0.0.1\" is not inside subnet 10.244.0.0/16 (10.0.0.1 is \
             outside it); list only addresses of the subnet"
        )
    );
    assert_eq!(fields(pool(spec(json!(["x"])))), ["spec.excludeIPs[0]"]);
    let p = valid_pool(pool(spec(json!(["10.244.120.15", "10.244.120.11"]))));
    assert_eq!(p.spec.total_ips().unwrap().len(), 9);
}

#[test]
fn address_lists_are_merged_and_sorted() {
    let p = valid_pool(pool(json!({
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.120.15-10.244.120.20", "10.244.120.10-10.244.120.16", "10.244.1.0/30"],
        "excludeIPs": ["10.244.120.12", "10.244.120.11"],
    })));
    assert_eq!(
        p.spec.ips,
        ["10.244.1.0-10.244.1.3", "10.244.120.10-10.244.120.20"]
    );
    assert_eq!(p.spec.exclude_ips, ["10.244.120.11-10.244.120.12"]);
}

#[test]
fn gateway_inside_subnet_and_not_handed_out() {
    let spec = |gw: &str| json!({"subnet": "10.244.0.0/16", "ips": ["10.244.120.10-10.244.120.20"], "gateway": gw});
    assert!(validate(pool(spec("10.244.0.1"))).is_ok());
    assert_eq!(
        err(pool(spec("10.244.120.10"))),
        format!(
            "{P}spec.gateway: 10.244.120.10 is one of the pool's ips, so it could be handed to a \
             workload; remove it from ips or add it to excludeIPs"
        )
    );
    assert_eq!(
        err(pool(spec("10.245.0.1"))),
        format!(
            "{P}spec.gateway: 10.245.0.1 is outside subnet 10.244.0.0/16; the gateway must be an \
             address of the subnet"
        )
    );
    assert_eq!(
        err(pool(spec("fd00::1"))),
        format!("{P}spec.gateway: fd00::1 is an IPv6 address but the pool is IPv4")
    );
    assert_eq!(
        err(pool(spec("gateway"))),
        format!("{P}spec.gateway: \"gateway\" is not an IP address; write e.g. 10.244.0.1")
    );
    // An excluded gateway is never handed out, so it may sit inside ips (Spiderpool agrees).
    let mut excluded = spec("10.244.120.10");
    excluded["excludeIPs"] = json!(["10.244.120.10"]);
    assert!(validate(pool(excluded)).is_ok());
}

#[test]
fn routes_have_a_network_of_the_pools_family_and_a_next_hop_on_the_subnet() {
    let spec = |routes: Value| json!({"subnet": "10.244.0.0/16", "routes": routes});
    let p = valid_pool(pool(spec(
        json!([{"dst": "10.7.0.0/16", "gw": "10.244.0.1"}]),
    )));
    assert_eq!(p.spec.routes[0].dst, "10.7.0.0/16");
    assert_eq!(
        err(pool(spec(
            json!([{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}])
        ))),
        format!(
            "{P}spec.routes[0].dst: 0.0.0.0/0 is the default route; set spec.gateway for it \
             instead of a route"
        )
    );
    assert_eq!(
        err(pool(spec(json!([
            {"dst": "10.7.0.0/16", "gw": "10.244.0.1"},
            {"dst": "10.7.0.0/16", "gw": "10.244.0.2"}
        ])))),
        format!(
            "{P}spec.routes[1].dst: 10.7.0.0/16 is also the destination of routes[0]; keep one \
             route per destination"
        )
    );
    assert_eq!(
        err(pool(spec(
            json!([{"dst": "10.7.0.0/16", "gw": "10.8.0.1"}])
        ))),
        format!(
            "{P}spec.routes[0].gw: 10.8.0.1 is outside subnet 10.244.0.0/16; a route's next hop \
             must be an address of the subnet"
        )
    );
    assert_eq!(
        err(pool(spec(
            json!([{"dst": "fd00:7::/64", "gw": "10.244.0.1"}])
        ))),
        format!(
            "{P}spec.routes[0].dst: fd00:7::/64 is an IPv6 network but the pool is IPv4; routes \
             must be of the pool's family"
        )
    );
    assert_eq!(
        fields(pool(spec(json!([{"dst": "10.7.0.1/16", "gw": "x"}])))),
        ["spec.routes[0].dst", "spec.routes[0].gw"]
    );
}

#[test]
fn vlan_is_0_to_4094() {
    let with_vlan = |vlan: i64| {
        let Resource::SpiderIPPool(mut p) = pool(json!({"subnet": "10.244.0.0/16"})) else {
            unreachable!()
        };
        p.spec.vlan = Some(vlan);
        Resource::SpiderIPPool(p)
    };
    for ok in [0, 100, 4094] {
        assert!(validate(with_vlan(ok)).is_ok(), "{ok}");
    }
    assert_eq!(
        err(with_vlan(4095)),
        format!("{P}spec.vlan: 4095 is outside 0-4094; VLAN ids are 0 (untagged) to 4094")
    );
    assert_eq!(fields(with_vlan(-1)), ["spec.vlan"]);
}

#[test]
fn names_are_dns_subdomains() {
    let named = |name: &str| doc("SpiderIPPool", name, json!({"subnet": "10.244.0.0/16"}));
    assert!(validate(named("nginx-v4-ippool.team-a")).is_ok());
    assert_eq!(
        validate(named("Nginx_Pool")).unwrap_err().to_string(),
        "SpiderIPPool \"Nginx_Pool\" is invalid: metadata.name: \"Nginx_Pool\" is not a valid \
         name: 'N' is uppercase (write 'n'); use lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit, at most 253 characters"
    );
    let sub = doc(
        "SpiderSubnet",
        "bad name",
        json!({"subnet": "10.244.0.0/16"}),
    );
    assert_eq!(fields(sub), ["metadata.name"]);
    let res = doc("SpiderReservedIP", "", json!({"ips": ["10.0.0.1"]}));
    assert_eq!(fields(res), ["metadata.name"]);
}

fn selector(value: Value) -> LabelSelector {
    serde_json::from_value(value).unwrap()
}

fn selector_messages(value: Value) -> Vec<String> {
    selector_problems(&selector(value), "spec.podAffinity")
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn label_selectors_follow_kubernetes_rules() {
    assert!(selector_messages(json!({
        "matchLabels": {"app": "nginx", "example.com/tier": ""},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web"]},
            {"key": "tier", "operator": "NotIn", "values": ["db", "cache"]},
            {"key": "canary", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}
        ]
    }))
    .is_empty());
    assert_eq!(
        selector_messages(json!({"matchExpressions": [{"key": "tier", "operator": "In"}]})),
        [
            "spec.podAffinity.matchExpressions[0].values: must list at least one value for \
          operator In; give the label values to match, or use Exists or DoesNotExist"
        ]
    );
    assert_eq!(
        selector_messages(json!({"matchExpressions": [
            {"key": "canary", "operator": "Exists", "values": ["1"]}
        ]})),
        ["spec.podAffinity.matchExpressions[0].values: must be empty for operator Exists, which \
          tests only whether the label is present; remove values, or use In or NotIn"]
    );
    assert_eq!(
        selector_messages(json!({"matchExpressions": [
            {"key": "tier", "operator": "in", "values": ["web"]}
        ]})),
        ["spec.podAffinity.matchExpressions[0].operator: \"in\" is not a label selector operator \
          (did you mean In?); use In, NotIn, Exists or DoesNotExist"]
    );
    assert_eq!(
        selector_messages(json!({"matchExpressions": [{"key": "tier", "operator": "Gt"}]})),
        [
            "spec.podAffinity.matchExpressions[0].operator: \"Gt\" is not a label selector \
          operator; use In, NotIn, Exists or DoesNotExist"
        ]
    );
    assert_eq!(
        selector_messages(json!({"matchLabels": {"app": "-nginx"}})),
        [
            "spec.podAffinity.matchLabels.app: \"-nginx\" is not a valid label value: it must \
          start and end with a letter or digit; use letters, digits, '-', '_' and '.', starting \
          and ending with a letter or digit (or leave it empty)"
        ]
    );
    assert_eq!(
        selector_messages(json!({"matchExpressions": [
            {"key": "bad key", "operator": "In", "values": ["ok", "not ok"]}
        ]}))
        .len(),
        2
    );
    // Through validation, on every affinity of a pool.
    assert_eq!(
        fields(pool(json!({
            "subnet": "10.244.0.0/16",
            "podAffinity": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "namespaceAffinity": {"matchLabels": {"team": "a b"}},
            "nodeAffinity": {"matchExpressions": [{"key": "", "operator": "Exists"}]},
        }))),
        [
            "spec.podAffinity.matchExpressions[0].values",
            "spec.namespaceAffinity.matchLabels.team",
            "spec.nodeAffinity.matchExpressions[0].key"
        ]
    );
}

#[test]
fn empty_pod_affinity_is_refused_as_spiderpool_does() {
    assert_eq!(
        err(pool(json!({"subnet": "10.244.0.0/16", "podAffinity": {}}))),
        format!(
            "{P}spec.podAffinity: is empty, which Spiderpool refuses; give matchLabels or \
             matchExpressions, or remove podAffinity to let every pod use the pool"
        )
    );
    // Empty node and namespace affinities match everything, as in Kubernetes.
    assert!(validate(pool(json!({
        "subnet": "10.244.0.0/16",
        "nodeAffinity": {},
        "namespaceAffinity": {},
    })))
    .is_ok());
}

#[test]
fn node_namespace_and_multus_names_are_valid_names() {
    let p = valid_pool(pool(json!({
        "subnet": "10.244.0.0/16",
        "nodeName": ["master", "worker1.example.com"],
        "namespaceName": ["kube-system"],
        "multusName": ["kube-system/macvlan-vlan0", "macvlan-vlan1"],
    })));
    assert_eq!(p.spec.node_name.len(), 2);
    assert_eq!(
        err(pool(
            json!({"subnet": "10.244.0.0/16", "namespaceName": ["kube.system"]})
        )),
        format!(
            "{P}spec.namespaceName[0]: \"kube.system\" is not a valid namespace name: '.' is not \
             allowed"
        )
    );
    assert_eq!(
        fields(pool(
            json!({"subnet": "10.244.0.0/16", "nodeName": ["ok", "Worker_1"]})
        )),
        ["spec.nodeName[1]"]
    );
    assert_eq!(
        err(pool(
            json!({"subnet": "10.244.0.0/16", "multusName": ["kube_system/macvlan"]})
        )),
        format!(
            "{P}spec.multusName[0]: \"kube_system/macvlan\" is not a valid Multus network name: \
             the namespace part \"kube_system\": '_' is not allowed; write NAME or \
             NAMESPACE/NAME, e.g. kube-system/macvlan-vlan0"
        )
    );
}

#[test]
fn several_problems_are_reported_together() {
    assert_eq!(
        fields(pool(json!({
            "ipVersion": 6,
            "subnet": "10.244.0.0/16",
            "ips": ["10.245.0.1", "bad"],
            "gateway": "10.0.0.1",
            "routes": [{"dst": "::/0", "gw": "10.244.0.1"}],
        }))),
        [
            "spec.ipVersion",
            "spec.ips[0]",
            "spec.ips[1]",
            "spec.gateway",
            "spec.routes[0].dst"
        ]
    );
}

#[test]
fn subnets_follow_the_same_address_rules() {
    let s = valid_subnet(subnet(json!({
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.100.1-10.244.200.2"],
        "gateway": "10.244.0.1",
        "routes": [{"dst": "10.7.0.0/16", "gw": "10.244.0.1"}],
    })));
    assert_eq!(s.spec.ip_version, Some(4));
    assert_eq!(
        s.spec.total_ips().unwrap().len(),
        25602,
        "the nginx pool example's TOTAL-IP-COUNT"
    );
    assert_eq!(
        err(subnet(json!({
            "subnet": "10.244.0.0/16",
            "ips": ["10.244.100.1-10.244.200.2"],
            "gateway": "10.244.100.1",
        }))),
        "SpiderSubnet \"nginx-subnet-v4\" is invalid: spec.gateway: 10.244.100.1 is one of the \
         subnet's ips, so it could be handed to a workload; remove it from ips or add it to \
         excludeIPs"
    );
    assert_eq!(
        fields(subnet(json!({
            "ipVersion": 7,
            "subnet": "10.244.0.0/16",
            "ips": ["10.245.0.1"],
            "excludeIPs": ["x"],
        }))),
        ["spec.ipVersion", "spec.ips[0]", "spec.excludeIPs[0]"]
    );
}

#[test]
fn reserved_ips_parse_in_one_family() {
    let r = valid_reserved(reserved(json!({"ips": ["10.244.120.15", "10.244.120.16"]})));
    assert_eq!(
        r.spec.ip_version,
        Some(4),
        "ipVersion comes from the addresses"
    );
    assert_eq!(r.spec.ips, ["10.244.120.15-10.244.120.16"]);
    let r6 = valid_reserved(reserved(json!({"ips": ["fd00::1-fd00::5"]})));
    assert_eq!(r6.spec.ip_version, Some(6));
    assert_eq!(
        err(reserved(
            json!({"ipVersion": 4, "ips": ["10.0.0.1", "fd00::1"]})
        )),
        "SpiderReservedIP \"reserved\" is invalid: spec.ips[1]: \"fd00::1\" is an IPv6 address \
         in an IPv4 list; the reservation is IPv4"
    );
    assert_eq!(
        fields(reserved(json!({"ips": ["fd00::1", "10.0.0.1"]}))),
        ["spec.ips[1]"]
    );
    assert_eq!(
        err(reserved(json!({"ips": []}))),
        "SpiderReservedIP \"reserved\" is invalid: spec.ips: is empty and ipVersion is not set; \
         list the addresses to reserve (ipVersion is taken from them)"
    );
    assert!(validate(reserved(json!({"ipVersion": 6, "ips": []}))).is_ok());
    assert_eq!(
        fields(reserved(json!({"ipVersion": 5, "ips": ["10.0.0.1"]}))),
        ["spec.ipVersion"]
    );
    assert_eq!(
        fields(reserved(json!({"ips": ["x", "y"]}))),
        ["spec.ips[0]", "spec.ips[1]"]
    );
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f:./\\- ]{0,40}",
        "(10|fd00|0|255)(\\.[0-9]{1,3}){0,3}(/[0-9]{1,3})?(-[0-9a-f.:]{1,20})?",
        any::<String>(),
    ]
}

proptest! {
    /// Whatever the address fields hold, validation answers without panicking, and what it
    /// accepts it accepts again unchanged.
    #[test]
    fn garbage_never_panics(
        version in proptest::option::of(0u8..10),
        subnet_text in text(),
        ips in proptest::collection::vec(text(), 0..4),
        exclude in proptest::collection::vec(text(), 0..3),
        gateway in proptest::option::of(text()),
        dst in text(),
        gw in text(),
    ) {
        let mut spec = json!({
            "subnet": subnet_text,
            "ips": ips,
            "excludeIPs": exclude,
            "routes": [{"dst": dst, "gw": gw}],
        });
        if let Some(v) = version {
            spec["ipVersion"] = json!(v);
        }
        if let Some(g) = gateway {
            spec["gateway"] = json!(g);
        }
        for kind in ["SpiderIPPool", "SpiderSubnet"] {
            let r = doc(kind, "p", spec.clone());
            if let Ok(ok) = validate(r) {
                prop_assert_eq!(validate(ok.clone()).unwrap(), ok);
            }
        }
        let r = doc("SpiderReservedIP", "r", json!({"ips": spec["ips"].clone()}));
        if let Ok(ok) = validate(r) {
            prop_assert_eq!(validate(ok.clone()).unwrap(), ok);
        }
    }
}

#[test]
fn ipv4_mapped_addresses_are_refused() {
    let mapped = "(::ffff:0:0/96 stands for IPv4 addresses)";
    let e = err(pool(json!({"subnet": "::ffff:10.90.0.0/120",
                            "ips": ["::ffff:10.90.0.10-::ffff:10.90.0.20"]})));
    assert!(
        e.starts_with(&format!(
            "{P}spec.subnet: \"::ffff:10.90.0.0/120\" is an IPv4-mapped IPv6 network {mapped}; \
             write the IPv4 network 10.90.0.0/24 instead; spec.ips[0]: \
             \"::ffff:10.90.0.10-::ffff:10.90.0.20\" holds IPv4-mapped IPv6 addresses"
        )),
        "{e}"
    );
    assert_eq!(
        fields(subnet(json!({"subnet": "::ffff:10.90.0.0/120"}))),
        ["spec.subnet"]
    );
    assert_eq!(
        err(reserved(json!({"ips": ["fd00::1", "::ffff:10.90.0.5"]}))),
        "SpiderReservedIP \"reserved\" is invalid: spec.ips[1]: \"::ffff:10.90.0.5\" holds \
         IPv4-mapped IPv6 addresses (::ffff:10.90.0.5), which stand for IPv4 ones; write them as \
         IPv4 addresses"
    );
    // Next to the mapped range is fine.
    valid_reserved(reserved(
        json!({"ips": ["::fffe:ffff:ffff-::fffe:ffff:ffff"]}),
    ));
}
