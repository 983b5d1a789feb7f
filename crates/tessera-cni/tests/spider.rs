//! SpiderIPPools through the plugin, run as a runtime runs it: pool choice and its
//! precedence, wildcards, affinities, multi-NIC, dual stack, gateways and routes, exhaustion
//! and STATUS, many nodes at once, and the nginx pool example's manifests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use common::{addr, Att, Env, Run};
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `conf` with these pod annotations (and labels, when given) in runtimeConfig.
fn with_pod(conf: &Value, annotations: &[(&str, &str)], labels: Option<Value>) -> Value {
    let mut conf = conf.clone();
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
    if let Some(labels) = labels {
        conf["runtimeConfig"]["io.kubernetes.cri.pod-labels"] = labels;
    }
    conf
}

/// The first address of an ADD result, without prefix.
fn first_ip(result: &Value) -> String {
    addr(result["ips"][0]["address"].as_str().expect("address"))
}

/// Runs `verb` on node `node` given by `NODENAME` (the configuration names no node).
fn on_node(env: &Env, verb: &str, conf: &Value, att: &Att, node: &str) -> Run {
    let mut conf = conf.clone();
    conf["ipam"].as_object_mut().unwrap().remove("nodename");
    let mut cmd: Command = env.command(verb, Some(att));
    cmd.env("NODENAME", node);
    env.run_cmd(cmd, conf.to_string().as_bytes())
}

fn usage(env: &Env) -> BTreeMap<String, u128> {
    env.ipam().spider_pool_usage().expect("usage")
}

type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a Value,
    &'a str,
);

#[test]
fn precedence_ip_addrs_pod_namespace_config_then_default_pools() {
    let env = Env::new();
    for (name, third) in [("pod", 61), ("ns", 62), ("conf", 63)] {
        env.spider_pool(
            &format!("{name}-v4"),
            json!({"subnet": format!("10.{third}.0.0/24"),
                   "ips": [format!("10.{third}.0.10-10.{third}.0.19")]}),
        );
    }
    env.spider_pool(
        "def-v4",
        json!({"subnet": "10.64.0.0/24", "ips": ["10.64.0.10-10.64.0.19"], "default": true}),
    );
    env.annotate_namespace(
        "lab",
        &[("ipam.spidernet.io/default-ipv4-ippool", r#"["ns-v4"]"#)],
    );
    let conf = env.conf("1.0.0", json!({"default_ipv4_ippool": ["conf-v4"]}));
    let ippool = ("ipam.spidernet.io/ippool", r#"{"ipv4": ["pod-v4"]}"#);
    // (what, namespace, pod annotations, configuration, expected address prefix)
    let cases: [Case; 6] = [
        (
            "ipAddrs wins",
            "lab",
            vec![
                ("cni.projectcalico.org/ipAddrs", r#"["10.63.0.15"]"#),
                ippool,
            ],
            &conf,
            "10.63.0.15",
        ),
        ("pod ippool", "lab", vec![ippool], &conf, "10.61."),
        (
            "pod ippools entry beats ippool",
            "lab",
            vec![
                ippool,
                (
                    "ipam.spidernet.io/ippools",
                    r#"[{"interface": "eth0", "ipv4": ["def-v4"]}]"#,
                ),
            ],
            &conf,
            "10.64.",
        ),
        ("namespace default", "lab", vec![], &conf, "10.62."),
        ("config default", "other", vec![], &conf, "10.63."),
        (
            "default pools",
            "other",
            vec![],
            &env.conf("1.0.0", json!({})),
            "10.64.",
        ),
    ];
    for (i, (what, ns, annotations, conf, want)) in cases.into_iter().enumerate() {
        let att = Att::new(&format!("c{i}")).pod(ns, &format!("p{i}"));
        let result = env.add(&with_pod(conf, &annotations, None), &att);
        let ip = first_ip(&result);
        assert!(ip.starts_with(want), "{what}: got {ip}, want {want}*");
        // Spider pools report their subnet's prefix.
        assert!(result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with("/24"));
    }
    assert_eq!(env.handle_count(), 6);
    env.assert_consistent();
}

#[test]
fn wildcards_expand_in_name_order_after_explicit_names() {
    let env = Env::new();
    env.spider_pool(
        "primary",
        json!({"subnet": "10.71.0.0/24", "ips": ["10.71.0.10"]}),
    );
    env.spider_pool(
        "backup-b",
        json!({"subnet": "10.71.0.0/24", "ips": ["10.71.0.30-10.71.0.31"]}),
    );
    env.spider_pool(
        "backup-a",
        json!({"subnet": "10.71.0.0/24", "ips": ["10.71.0.20"]}),
    );
    env.spider_pool(
        "backup-c6",
        json!({"subnet": "fd71::/64", "ips": ["fd71::20"]}),
    );
    let base = env.conf("1.0.0", json!({}));
    let conf = with_pod(
        &base,
        &[(
            "ipam.spidernet.io/ippool",
            r#"{"ipv4": ["primary", "backup-?"]}"#,
        )],
        None,
    );
    let got: Vec<String> = (0..4)
        .map(|i| first_ip(&env.add(&conf, &Att::new(&format!("w{i}")))))
        .collect();
    assert_eq!(got[0], "10.71.0.10", "the explicit name first");
    assert_eq!(got[1], "10.71.0.20", "then backup-a");
    let rest: BTreeSet<&str> = got[2..].iter().map(String::as_str).collect();
    assert_eq!(
        rest,
        BTreeSet::from(["10.71.0.30", "10.71.0.31"]),
        "then backup-b"
    );
    let msg = env.cni("ADD", &conf, Some(&Att::new("w4"))).err(100);
    assert!(
        msg.starts_with(
            "no free IPv4 address for node \"node-a\" in pool(s) primary, backup-a, backup-b"
        ),
        "{msg}"
    );
    // A pattern that matches no pool at all says so.
    let conf = with_pod(
        &base,
        &[("ipam.spidernet.io/ippool", r#"{"ipv4": ["nope-*"]}"#)],
        None,
    );
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("w5"))).err(107),
        "invalid request: no SpiderIPPool matches the pattern \"nope-*\"; list pools with \
         `tessera get spiderippool`"
    );
    // Patterns work in the network configuration too, and a class picks the IPv6 pool.
    env.cni("DEL", &base, Some(&Att::new("w0"))).ok();
    let conf = env.conf(
        "1.0.0",
        json!({"default_ipv4_ippool": ["prim*"], "default_ipv6_ippool": ["backup-[c]6"],
               "assign_ipv6": true}),
    );
    let result = env.add(&conf, &Att::new("w6"));
    let ips: Vec<String> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips, ["10.71.0.10/24", "fd71::20/64"]);
    env.assert_consistent();
}

#[test]
fn affinities_filter_pools_by_node_namespace_and_pod_labels() {
    let env = Env::new();
    let spec = |ip: &str, extra: Value| {
        let mut s = json!({"subnet": "10.72.0.0/24", "ips": [ip]});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    env.spider_pool("on-b", spec("10.72.0.10", json!({"nodeName": ["node-b"]})));
    env.spider_pool(
        "in-lab",
        spec("10.72.0.20", json!({"namespaceName": ["lab"]})),
    );
    env.spider_pool(
        "web",
        spec(
            "10.72.0.30",
            json!({"podAffinity": {"matchLabels": {"app": "web"}}}),
        ),
    );
    env.spider_pool("anyone", spec("10.72.0.40-10.72.0.49", json!({})));
    let conf = env.conf("1.0.0", json!({}));
    let named = |pools: &str, labels: Option<Value>| {
        with_pod(
            &conf,
            &[(
                "ipam.spidernet.io/ippool",
                &format!(r#"{{"ipv4": [{pools}]}}"#),
            )],
            labels,
        )
    };

    // nodeName: node-a falls through to the next pool, node-b gets it.
    let c = named(r#""on-b", "anyone""#, None);
    let a = on_node(&env, "ADD", &c, &Att::new("n1"), "node-a");
    assert!(first_ip(a.ok()).starts_with("10.72.0.4"), "{}", a.stdout);
    let b = on_node(&env, "ADD", &c, &Att::new("n2"), "node-b");
    assert_eq!(first_ip(b.ok()), "10.72.0.10");

    // namespaceName, from K8S_POD_NAMESPACE.
    let c = named(r#""in-lab""#, None);
    let run = env.cni("ADD", &c, Some(&Att::new("s1").pod("other", "p")));
    assert_eq!(
        run.err(100),
        "no IPv4 pool accepts this workload: in-lab: namespaceName does not list namespace \
         \"other\""
    );
    let ok = env.add(&c, &Att::new("s2").pod("lab", "p"));
    assert_eq!(first_ip(&ok), "10.72.0.20");

    // podAffinity needs the labels the runtime passes in runtimeConfig.
    let run = env.cni("ADD", &named(r#""web""#, None), Some(&Att::new("l1")));
    assert_eq!(
        run.err(100),
        "no IPv4 pool accepts this workload: web: podAffinity is set but the pod's labels are \
         not known to the plugin"
    );
    let run = env.cni(
        "ADD",
        &named(r#""web""#, Some(json!({"app": "db"}))),
        Some(&Att::new("l2")),
    );
    assert_eq!(
        run.err(100),
        "no IPv4 pool accepts this workload: web: podAffinity does not match the pod's labels"
    );
    let ok = env.add(
        &named(r#""web""#, Some(json!({"app": "web", "tier": "front"}))),
        &Att::new("l3"),
    );
    assert_eq!(first_ip(&ok), "10.72.0.30");
    // The refusals took nothing.
    assert_eq!(env.handle_count(), 4);
    env.assert_consistent();
}

#[test]
fn multi_nic_failure_on_one_interface_leaves_the_others_alone() {
    let env = Env::new();
    env.spider_pool(
        "front",
        json!({"subnet": "10.73.0.0/24", "ips": ["10.73.0.10-10.73.0.12"],
               "gateway": "10.73.0.1"}),
    );
    env.spider_pool(
        "storage",
        json!({"subnet": "10.74.0.0/24", "ips": ["10.74.0.10"], "gateway": "10.74.0.1",
               "routes": [{"dst": "10.75.0.0/16", "gw": "10.74.0.254"}]}),
    );
    let conf = with_pod(
        &env.conf("1.0.0", json!({})),
        &[(
            "ipam.spidernet.io/ippools",
            r#"[{"interface": "eth0", "ipv4": ["front"]},
                {"interface": "net1", "ipv4": ["storage"], "cleangateway": true}]"#,
        )],
        None,
    );
    let p1_eth0 = Att::new("p1");
    let p1_net1 = Att::new("p1").ifname("net1");
    let r = env.add(&conf, &p1_eth0);
    assert_eq!(
        r,
        json!({"cniVersion": "1.0.0",
               "ips": [{"address": "10.73.0.10/24", "gateway": "10.73.0.1"}],
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.73.0.1"}]})
    );
    let r = env.add(&conf, &p1_net1);
    // cleangateway: no gateway, the pool's other routes stay.
    assert_eq!(
        r,
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.74.0.10/24"}],
               "routes": [{"dst": "10.75.0.0/16", "gw": "10.74.0.254"}]})
    );

    // The second pod's eth0 succeeds, its net1 finds storage full.
    let p2_eth0 = Att::new("p2");
    let p2_net1 = Att::new("p2").ifname("net1");
    let eth0_ip = first_ip(&env.add(&conf, &p2_eth0));
    let run = env.cni("ADD", &conf, Some(&p2_net1));
    let msg = run.err(100);
    assert!(
        msg.starts_with("no free IPv4 address for node \"node-a\" in pool(s) storage"),
        "{msg}"
    );
    assert!(
        run.full_error().contains("interface net1"),
        "{}",
        run.stdout
    );
    let held = env
        .ipam()
        .handle("tnet:p2:eth0")
        .unwrap()
        .expect("p2 eth0 kept");
    assert_eq!(held.addresses[0].ip.to_string(), eth0_ip);
    assert!(env.ipam().handle("tnet:p2:net1").unwrap().is_none());
    assert_eq!(env.handle_count(), 3);
    assert_eq!(usage(&env).get("front"), Some(&2));
    assert_eq!(usage(&env).get("storage"), Some(&1));
    env.assert_consistent();

    // DEL of one interface leaves the other; its address then serves the waiting pod.
    env.cni("DEL", &conf, Some(&p1_net1)).ok();
    assert!(env.ipam().handle("tnet:p1:eth0").unwrap().is_some());
    assert_eq!(first_ip(&env.add(&conf, &p2_net1)), "10.74.0.10");
    assert_eq!(env.handle_count(), 3);
    env.assert_consistent();
}

#[test]
fn dual_stack_gets_both_addresses_or_neither() {
    let env = Env::new();
    env.spider_pool(
        "v4",
        json!({"subnet": "10.76.0.0/24", "ips": ["10.76.0.10-10.76.0.11"],
               "gateway": "10.76.0.1"}),
    );
    env.spider_pool(
        "v6",
        json!({"subnet": "fd76::/64", "ips": ["fd76::10"], "gateway": "fd76::1"}),
    );
    let conf = with_pod(
        &env.conf("1.0.0", json!({"assign_ipv6": true})),
        &[(
            "ipam.spidernet.io/ippool",
            r#"{"ipv4": ["v4"], "ipv6": ["v6"]}"#,
        )],
        None,
    );
    let r = env.add(&conf, &Att::new("d1"));
    assert_eq!(
        r["ips"],
        json!([{"address": "10.76.0.10/24", "gateway": "10.76.0.1"},
               {"address": "fd76::10/64", "gateway": "fd76::1"}])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.76.0.1"}, {"dst": "::/0", "gw": "fd76::1"}])
    );
    let msg = env.cni("ADD", &conf, Some(&Att::new("d2"))).err(100);
    assert!(msg.starts_with("no free IPv6 address"), "{msg}");
    // The IPv4 address the failed request would have taken is still free.
    assert_eq!(usage(&env).get("v4"), Some(&1));
    assert_eq!(env.handle_count(), 1);
    env.assert_consistent();
    env.cni("DEL", &conf, Some(&Att::new("d1"))).ok();
    let r = env.add(&conf, &Att::new("d2"));
    assert_eq!(r["ips"].as_array().unwrap().len(), 2);
}

#[test]
fn gateway_and_routes_in_every_result_shape() {
    let env = Env::new();
    env.spider_pool(
        "gw",
        json!({"subnet": "10.77.0.0/24", "ips": ["10.77.0.10-10.77.0.19"],
               "gateway": "10.77.0.1",
               "routes": [{"dst": "10.78.0.0/16", "gw": "10.77.0.254"}]}),
    );
    for (i, version) in VERSIONS.into_iter().enumerate() {
        // A configured route and the pool's: both, the pool's once.
        let conf = env.conf(
            version,
            json!({"default_ipv4_ippool": ["gw"],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.78.0.0/16", "gw": "10.77.0.254"}]}),
        );
        let att = Att::new(&format!("g{i}"));
        let result = env.add(&conf, &att);
        let address = result["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            address.starts_with("10.77.0.1") && address.ends_with("/24"),
            "{address}"
        );
        let mut ip = json!({"address": address, "gateway": "10.77.0.1"});
        if version.starts_with('0') {
            ip["version"] = json!("4");
        }
        assert_eq!(
            result,
            json!({"cniVersion": version, "ips": [ip],
                   "routes": [{"dst": "0.0.0.0/0"},
                              {"dst": "10.78.0.0/16", "gw": "10.77.0.254"}]}),
            "{version}"
        );
        // cleangateway drops the gateway and the default route, not the others.
        let clean = with_pod(
            &conf,
            &[(
                "ipam.spidernet.io/ippools",
                r#"[{"interface": "net1", "ipv4": ["gw"], "cleangateway": true}]"#,
            )],
            None,
        );
        let result = env.add(&clean, &att.clone().ifname("net1"));
        assert!(result["ips"][0].get("gateway").is_none(), "{result}");
        assert_eq!(
            result["routes"],
            json!([{"dst": "10.78.0.0/16", "gw": "10.77.0.254"}])
        );
        for a in [att.clone(), att.clone().ifname("net1")] {
            env.cni("DEL", &clean, Some(&a)).ok();
        }
    }
    assert_eq!(env.handle_count(), 0);
}

#[test]
fn a_pool_gateway_that_pods_could_get_is_refused() {
    let env = Env::new();
    // The gateway lies in another pool's addresses: a pod could be handed it.
    env.spider_pool(
        "a",
        json!({"subnet": "10.79.0.0/24", "ips": ["10.79.0.10"], "gateway": "10.79.0.20"}),
    );
    env.spider_pool(
        "b",
        json!({"subnet": "10.79.0.0/24", "ips": ["10.79.0.20"]}),
    );
    let conf = env.conf("1.0.0", json!({"default_ipv4_ippool": ["a"]}));
    let msg = env.cni("ADD", &conf, Some(&Att::new("x"))).err(106);
    assert!(
        msg.starts_with(
            "gateway 10.79.0.20 for 10.79.0.10 (spec.gateway of SpiderIPPool \"a\") lies in IP \
             pool \"b\""
        ),
        "{msg}"
    );
    assert_eq!(
        env.handle_count(),
        0,
        "the refused ADD gave its address back"
    );
}

#[test]
fn full_pool_is_code_100_and_status_50() {
    let env = Env::new();
    env.spider_pool(
        "tiny",
        json!({"subnet": "10.80.0.0/24", "ips": ["10.80.0.10-10.80.0.12"],
               "excludeIPs": ["10.80.0.11"], "default": true}),
    );
    let conf = env.conf("1.1.0", json!({}));
    let status = |env: &Env| env.cni("STATUS", &conf, None);
    assert_eq!(status(&env).status, 0, "{}", status(&env).stdout);
    let got: BTreeSet<String> = (0..2)
        .map(|i| first_ip(&env.add(&conf, &Att::new(&format!("f{i}")))))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from(["10.80.0.10".into(), "10.80.0.12".into()])
    );
    // Full before any ADD has failed on it.
    assert_eq!(
        status(&env).err(50),
        "no free IPv4 address in SpiderIPPool(s) tiny: every address is allocated, excluded \
         or reserved"
    );
    let run = env.cni("ADD", &conf, Some(&Att::new("f2")));
    let msg = run.err(100);
    assert!(
        msg.starts_with("no free IPv4 address for node \"node-a\" in pool(s) tiny"),
        "{msg}"
    );
    assert!(run.full_error().contains("container f2"), "{}", run.stdout);
    let run = status(&env);
    let msg = run.err(50);
    assert!(msg.contains("tiny"), "{msg}");
    // Room again after a DEL.
    env.cni("DEL", &conf, Some(&Att::new("f0"))).ok();
    assert_eq!(status(&env).status, 0, "{}", status(&env).stdout);
}

/// Several nodes at once, each a separate process per ADD: a pool of N usable addresses gives
/// exactly N distinct ones, never an excluded or reserved one, then says it is exhausted.
#[test]
fn many_nodes_share_one_pool_without_duplicates() {
    let env = Env::new();
    env.spider_pool(
        "shared",
        json!({"subnet": "10.81.0.0/24", "ips": ["10.81.0.10-10.81.0.39"],
               "excludeIPs": ["10.81.0.15", "10.81.0.16"]}),
    );
    env.apply(
        json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
                     "metadata": {"name": "legacy"},
                     "spec": {"ipVersion": 4, "ips": ["10.81.0.20"]}}),
    );
    env.reserve("router", &["10.81.0.30"]);
    let forbidden: BTreeSet<&str> =
        BTreeSet::from(["10.81.0.15", "10.81.0.16", "10.81.0.20", "10.81.0.30"]);
    let usable = 30 - forbidden.len();
    let conf = env.conf("1.0.0", json!({"default_ipv4_ippool": ["shared"]}));
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    let per_node = usable / nodes.len() + 2;
    let outcomes: Vec<(String, Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (env, conf) = (&env, &conf);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..per_node {
                        let att = Att::new(&format!("{node}-{i}"));
                        // Busy-store answers are retried, a bounded number of times.
                        let mut run = on_node(env, "ADD", conf, &att, node);
                        for _ in 0..5 {
                            if run.json["code"] != 11 {
                                break;
                            }
                            run = on_node(env, "ADD", conf, &att, node);
                        }
                        let outcome = if run.status == 0 {
                            Ok(first_ip(&run.json))
                        } else {
                            Err(run.stdout.clone())
                        };
                        out.push((node.to_string(), outcome));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("node thread"))
            .collect()
    });
    let got: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let distinct: BTreeSet<&str> = got.iter().map(|s| s.as_str()).collect();
    assert_eq!(got.len(), usable, "{outcomes:#?}");
    assert_eq!(distinct.len(), usable, "no address twice");
    for ip in &distinct {
        assert!(!forbidden.contains(ip), "{ip} is excluded or reserved");
        let ip: IpAddr = ip.parse().unwrap();
        assert!(
            ip >= "10.81.0.10".parse::<IpAddr>().unwrap()
                && ip <= "10.81.0.39".parse::<IpAddr>().unwrap()
        );
    }
    let nodes_used: BTreeSet<&str> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(nodes_used.len() >= 3, "{nodes_used:?}");
    for (_, r) in &outcomes {
        if let Err(e) = r {
            let e: Value = serde_json::from_str(e).unwrap();
            assert_eq!(e["code"], 100, "{e}");
            assert!(
                e["msg"].as_str().unwrap().contains("in pool(s) shared"),
                "{e}"
            );
        }
    }
    assert_eq!(usage(&env).get("shared"), Some(&(usable as u128)));
    env.assert_consistent();
    let late = on_node(&env, "ADD", &conf, &Att::new("late"), "node-c");
    assert!(late.err(100).contains("in pool(s) shared"));
}

#[test]
fn nginx_pool_example_serves_every_address_but_the_reserved_one() {
    let env = Env::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/spiderpool");
    for file in [
        "nginx-subnet-v4.yaml",
        "nginx-v4-ippool.yaml",
        "reserved-ips.yaml",
    ] {
        env.apply_yaml_file(&dir.join(file));
    }
    let conf = with_pod(
        &env.conf("1.0.0", json!({})),
        &[(
            "ipam.spidernet.io/ippool",
            r#"{"ipv4":["nginx-v4-ippool"]}"#,
        )],
        None,
    );
    // 11 addresses, one reserved by SpiderReservedIP nginx-reserved-v4.
    let mut got = BTreeSet::new();
    for i in 0..10 {
        let att = Att::new(&format!("nginx-{i}")).pod("default", &format!("nginx-{i}"));
        let result = env.add(&conf, &att);
        let address = result["ips"][0]["address"].as_str().unwrap();
        assert!(address.ends_with("/16"), "the subnet's prefix: {address}");
        got.insert(addr(address));
    }
    let expected: BTreeSet<String> = (10..=20)
        .filter(|n| *n != 15)
        .map(|n| format!("10.244.120.{n}"))
        .collect();
    assert_eq!(got, expected);
    let att = Att::new("nginx-10");
    assert_eq!(env.cni("ADD", &conf, Some(&att)).status, 1);
    assert_eq!(usage(&env).get("nginx-v4-ippool"), Some(&10));
    env.assert_consistent();
}
