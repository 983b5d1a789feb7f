//! Decoding `spiderpool.spidernet.io/v2beta1` documents: the nginx pool example's manifests, field paths
//! in errors (also inside routes and label selectors), lists, kind names on the command line.

use serde_json::{json, Value};
use tessera_core::decode::{decode_document, decode_documents, spec_field_names};
use tessera_core::resources::spider::SPIDER_API_VERSION;
use tessera_core::resources::{Kind, Resource};

fn err(doc: Value) -> String {
    decode_document(doc).unwrap_err().to_string()
}

fn pool_doc(spec: Value) -> Value {
    json!({
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": "nginx-v4-ippool"},
        "spec": spec,
    })
}

#[test]
fn nginx_pool_decodes() {
    let Resource::SpiderIPPool(p) = decode_document(pool_doc(json!({
        "ipVersion": 4,
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.120.10-10.244.120.20"],
    })))
    .unwrap() else {
        panic!("not a SpiderIPPool")
    };
    assert_eq!(p.metadata.name, "nginx-v4-ippool");
    assert_eq!(p.spec.ip_version, Some(4));
    assert_eq!(p.spec.ips, ["10.244.120.10-10.244.120.20"]);
}

#[test]
fn nginx_pool_as_the_blog_indents_it_is_explained() {
    // The nginx pool example, as the blog prints it, indents spec under metadata.
    assert_eq!(
        err(json!({
            "apiVersion": SPIDER_API_VERSION,
            "kind": "SpiderIPPool",
            "metadata": {
                "name": "nginx-v4-ippool",
                "spec": {"ipVersion": 4, "subnet": "10.244.0.0/16"},
            },
        })),
        "SpiderIPPool \"nginx-v4-ippool\": metadata.spec: spec is indented under metadata; move \
         it left so that it lines up with metadata"
    );
}

#[test]
fn every_spiderpool_field_decodes() {
    let Resource::SpiderIPPool(p) = decode_document(pool_doc(json!({
        "ipVersion": 4,
        "subnet": "172.18.40.0/24",
        "ips": ["172.18.40.40-172.18.40.50"],
        "excludeIPs": ["172.18.40.45"],
        "gateway": "172.18.40.1",
        "routes": [{"dst": "172.18.50.0/24", "gw": "172.18.40.254"}],
        "vlan": 100,
        "podAffinity": {"matchLabels": {"app": "nginx"}},
        "namespaceAffinity": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
        "namespaceName": ["default"],
        "nodeAffinity": {"matchLabels": {"rack": "0"}},
        "nodeName": ["worker1"],
        "multusName": ["kube-system/macvlan-vlan0"],
        "default": true,
        "disable": false,
    })))
    .unwrap() else {
        panic!("not a SpiderIPPool")
    };
    assert_eq!(p.spec.routes[0].gw, "172.18.40.254");
    assert_eq!(p.spec.vlan, Some(100));
    assert_eq!(p.spec.default, Some(true));
    assert_eq!(
        p.spec.namespace_affinity.unwrap().match_expressions[0].operator,
        "Exists"
    );
    // Status from `kubectl get -o yaml` is accepted and dropped.
    let mut with_status = pool_doc(json!({"subnet": "10.244.0.0/16"}));
    with_status["status"] = json!({"allocatedIPCount": 2, "totalIPCount": 11});
    assert!(decode_document(with_status).is_ok());
}

#[test]
fn misspelt_fields_get_the_right_name() {
    assert_eq!(
        err(pool_doc(
            json!({"subnet": "10.244.0.0/16", "excludeIps": []})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.excludeIps: unknown field; did you mean \
         excludeIPs? SpiderIPPool spec accepts ipVersion, subnet, ips, excludeIPs, gateway, \
         routes, vlan, podAffinity, namespaceAffinity, namespaceName, nodeAffinity, nodeName, \
         multusName, default, disable"
    );
    assert_eq!(
        err(json!({
            "apiVersion": SPIDER_API_VERSION,
            "kind": "SpiderReservedIP",
            "metadata": {"name": "r"},
            "spec": {"ip": ["10.0.0.1"]},
        })),
        "SpiderReservedIP \"r\": spec.ip: unknown field; did you mean ips? SpiderReservedIP \
         spec accepts ipVersion, ips"
    );
}

#[test]
fn wrong_types_name_the_field() {
    assert_eq!(
        err(pool_doc(
            json!({"ipVersion": "4", "subnet": "10.244.0.0/16"})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.ipVersion: expected a whole number, got the \
         string \"4\"; remove the quotes"
    );
    assert_eq!(
        err(pool_doc(
            json!({"ipVersion": 400, "subnet": "10.244.0.0/16"})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.ipVersion: 400 is out of range; ipVersion is 4 \
         or 6"
    );
    assert_eq!(
        err(pool_doc(json!({"vlan": 5000, "subnet": "10.244.0.0/16"}))),
        "SpiderIPPool \"nginx-v4-ippool\": spec.vlan: 5000 is out of range; VLAN ids are 0 \
         (untagged) to 4094"
    );
    assert_eq!(
        err(pool_doc(
            json!({"ips": "10.244.120.10", "subnet": "10.244.0.0/16"})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.ips: expected a list of strings, got the string \
         \"10.244.120.10\""
    );
    assert_eq!(
        err(pool_doc(
            json!({"default": "yes", "subnet": "10.244.0.0/16"})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.default: expected true or false, got the string \
         \"yes\""
    );
}

#[test]
fn routes_are_checked_field_by_field() {
    assert_eq!(
        err(pool_doc(json!({"routes": [{"dst": "10.7.0.0/16"}]}))),
        "SpiderIPPool \"nginx-v4-ippool\": spec.routes[0].gw: is required in a route (dst, gw)"
    );
    assert_eq!(
        err(pool_doc(
            json!({"routes": [{"dst": "10.7.0.0/16", "gw": "10.6.0.1", "via": 1}]})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.routes[0].via: unknown field; A route accepts \
         dst, gw"
    );
    assert_eq!(
        err(pool_doc(json!({"routes": {"dst": "10.7.0.0/16"}}))),
        "SpiderIPPool \"nginx-v4-ippool\": spec.routes: expected a list of routes such as \
         [{dst: 10.7.0.0/16, gw: 10.6.0.1}], got a mapping"
    );
    assert_eq!(
        err(pool_doc(json!({"routes": ["10.7.0.0/16"]}))),
        "SpiderIPPool \"nginx-v4-ippool\": spec.routes[0]: expected a route (a mapping), got the \
         string \"10.7.0.0/16\""
    );
    // A null gw is a missing gw.
    assert!(err(pool_doc(
        json!({"routes": [{"dst": "10.7.0.0/16", "gw": null}]})
    ))
    .contains("spec.routes[0].gw: is required"));
}

#[test]
fn selectors_are_checked_field_by_field() {
    assert_eq!(
        err(pool_doc(
            json!({"podAffinity": {"matchLabel": {"app": "nginx"}}})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.podAffinity.matchLabel: unknown field; did you \
         mean matchLabels? A label selector accepts matchLabels, matchExpressions"
    );
    assert_eq!(
        err(pool_doc(
            json!({"nodeAffinity": {"matchExpressions": [{"key": "rack"}]}})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.nodeAffinity.matchExpressions[0].operator: is \
         required in a selector requirement (key, operator)"
    );
    assert_eq!(
        err(pool_doc(
            json!({"podAffinity": {"matchLabels": {"rack": 0}}})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.podAffinity.matchLabels.rack: expected a string, \
         got the number 0; quote it: \"0\""
    );
    assert_eq!(
        err(pool_doc(
            json!({"podAffinity": {"matchExpressions": {"key": "a"}}})
        )),
        "SpiderIPPool \"nginx-v4-ippool\": spec.podAffinity.matchExpressions: expected a list of \
         requirements such as [{key: tier, operator: In, values: [web]}], got a mapping"
    );
    // Nulls inside a selector mean "not set".
    assert!(decode_document(pool_doc(json!({
        "podAffinity": {"matchLabels": {"app": "nginx"}, "matchExpressions": null}
    })))
    .is_ok());
}

#[test]
fn api_version_must_be_spiderpools() {
    let mut doc = pool_doc(json!({"subnet": "10.244.0.0/16"}));
    doc["apiVersion"] = json!("projectcalico.org/v3");
    assert_eq!(
        err(doc),
        "SpiderIPPool \"nginx-v4-ippool\": apiVersion: \"projectcalico.org/v3\" is not \
         supported for SpiderIPPool; use spiderpool.spidernet.io/v2beta1"
    );
}

#[test]
fn lists_of_spider_resources_expand() {
    let list = json!({
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPoolList",
        "items": [
            {"metadata": {"name": "a"}, "spec": {"subnet": "10.0.0.0/24"}},
            {"metadata": {"name": "b"}, "spec": {"subnet": "10.0.1.0/24"}},
        ],
    });
    let resources = decode_documents(list).unwrap();
    assert_eq!(resources.len(), 2);
    assert!(resources.iter().all(|r| r.kind() == Kind::SpiderIPPool));
}

#[test]
fn kind_names_as_kubectl_takes_them() {
    for (name, kind) in [
        ("sp", Kind::SpiderIPPool),
        ("spiderippool", Kind::SpiderIPPool),
        ("SpiderIPPools", Kind::SpiderIPPool),
        ("spiderippools.spiderpool.spidernet.io", Kind::SpiderIPPool),
        ("ss", Kind::SpiderSubnet),
        ("spidersubnets", Kind::SpiderSubnet),
        ("sr", Kind::SpiderReservedIP),
        ("spiderreservedip", Kind::SpiderReservedIP),
    ] {
        assert_eq!(Kind::from_cli_name(name), Some(kind), "{name}");
    }
    for kind in [
        Kind::SpiderIPPool,
        Kind::SpiderSubnet,
        Kind::SpiderReservedIP,
    ] {
        assert_eq!(kind.api_version(), SPIDER_API_VERSION);
        assert!(Kind::ALL.contains(&kind));
        assert!(spec_field_names(kind).is_some());
    }
}

#[test]
fn manifests_round_trip() {
    let doc = pool_doc(json!({
        "ipVersion": 4,
        "subnet": "10.244.0.0/16",
        "ips": ["10.244.120.10-10.244.120.20"],
        "routes": [{"dst": "10.7.0.0/16", "gw": "10.244.0.1"}],
        "podAffinity": {"matchLabels": {"app": "nginx"}},
    }));
    let r = decode_document(doc.clone()).unwrap();
    assert_eq!(r.to_manifest(), doc);
    assert_eq!(decode_document(r.to_manifest()).unwrap(), r);
}
