//! The plugin run directly, as a runtime runs an IPAM plugin: every verb, every spec version,
//! every error code, pool precedence, dual stack.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{addr, cni_guide_section, guide_bridge_network, Att, Env};
use serde_json::{json, Value};
use tessera_core::ipam::AssignRequest;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn env_with_pool() -> Env {
    let env = Env::new();
    env.pool("p1", "10.22.0.0/24", 28, json!({}));
    env
}

#[test]
fn version_lists_every_supported_version() {
    let env = Env::new();
    let run = env.run_cmd(env.command("VERSION", None), b"{\"cniVersion\":\"0.3.1\"}");
    assert_eq!(
        run.ok(),
        &json!({"cniVersion": "1.1.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // VERSION needs nothing on stdin.
    let run = env.run_cmd(env.command("VERSION", None), b"");
    assert_eq!(run.ok()["cniVersion"], "1.1.0");
}

#[test]
fn add_result_has_the_shape_of_every_version() {
    let env = env_with_pool();
    for (i, version) in VERSIONS.into_iter().enumerate() {
        let conf = env.conf(
            version,
            json!({"routes": [{"dst": "0.0.0.0/0", "mtu": 1400}],
                   "dns": {"nameservers": ["10.22.0.53"], "search": ["svc.local"]}}),
        );
        let att = Att::new(&format!("c{i}"));
        let result = env.add(&conf, &att);
        let ip = format!("10.22.0.{}/24", i + 1);
        let route = if version == "1.1.0" {
            json!({"dst": "0.0.0.0/0", "mtu": 1400})
        } else {
            json!({"dst": "0.0.0.0/0"})
        };
        let ips = if version.starts_with('0') {
            json!([{"version": "4", "address": ip}])
        } else {
            json!([{"address": ip}])
        };
        assert_eq!(
            result,
            json!({"cniVersion": version, "ips": ips, "routes": [route],
                   "dns": {"nameservers": ["10.22.0.53"], "search": ["svc.local"]}}),
            "version {version}"
        );
        env.cni("DEL", &conf, Some(&att)).ok();
    }
    assert_eq!(env.handle_count(), 0);
    env.assert_consistent();
}

#[test]
fn del_twice_and_without_netns_succeeds() {
    let env = env_with_pool();
    let conf = env.conf("1.0.0", json!({}));
    let att = Att::new("c1");
    env.add(&conf, &att);
    let mut gone = att.clone();
    gone.netns = String::new();
    for _ in 0..2 {
        let run = env.cni("DEL", &conf, Some(&gone));
        assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    }
    // DEL of something never added, in a store that never saw it.
    let other = Env::new();
    other
        .cni("DEL", &other.conf("0.3.1", json!({})), Some(&att))
        .ok();
    assert_eq!(env.handle_count(), 0);
}

#[test]
fn add_again_returns_the_same_addresses_and_interfaces_are_independent() {
    let env = env_with_pool();
    let conf = env.conf("1.0.0", json!({}));
    let eth0 = Att::new("c1");
    let net1 = Att::new("c1").ifname("net1");
    let first = env.add(&conf, &eth0);
    assert_eq!(
        env.add(&conf, &eth0),
        first,
        "a repeated ADD keeps its address"
    );
    let second = env.add(&conf, &net1);
    assert_ne!(first, second);
    env.cni("DEL", &conf, Some(&eth0)).ok();
    let held = env
        .ipam()
        .handle("tnet:c1:net1")
        .unwrap()
        .expect("net1 still held");
    assert_eq!(
        held.addresses[0].ip.to_string(),
        addr(second["ips"][0]["address"].as_str().unwrap())
    );
    assert_eq!(held.attrs.interface.as_deref(), Some("net1"));
    assert_eq!(held.attrs.container_id.as_deref(), Some("c1"));
    assert_eq!(held.attrs.node.as_deref(), Some("node-a"));
    assert!(env.ipam().handle("tnet:c1:eth0").unwrap().is_none());
}

#[test]
fn check_verifies_prev_result_addresses_are_still_held() {
    let env = env_with_pool();
    let conf = env.conf("1.0.0", json!({}));
    let att = Att::new("c1");
    let result = env.add(&conf, &att);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    let run = env.cni("CHECK", &with_prev, Some(&att));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{}", run.stderr);

    // An administrator released the address behind the runtime's back.
    let ip = addr(result["ips"][0]["address"].as_str().unwrap());
    env.ipam().release_ips(&[ip.parse().unwrap()]).unwrap();
    let run = env.cni("CHECK", &with_prev, Some(&att));
    assert_eq!(
        run.err(103),
        "attachment \"tnet:c1:eth0\" holds no address in the datastore"
    );

    // Held, but not what prevResult says.
    env.add(&conf, &att);
    let mut stale = conf.clone();
    stale["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.200/24"}]});
    let run = env.cni("CHECK", &stale, Some(&att));
    assert!(
        run.err(103)
            .starts_with("10.22.0.200 of prevResult is no longer held by attachment"),
        "{}",
        run.stdout
    );

    // CHECK does not exist before 0.4.0.
    let old = env.conf("0.3.1", json!({}));
    assert_eq!(
        env.cni("CHECK", &old, Some(&att)).err(1),
        "cniVersion 0.3.1 does not allow CHECK (it needs 0.4.0 or later)"
    );
    // A malformed prevResult is a decode error.
    let mut bad = conf.clone();
    bad["prevResult"] = json!({"ips": [{"address": "10.22.0.2"}]});
    assert_eq!(
        env.cni("CHECK", &bad, Some(&att)).err(6),
        "prevResult: ips[0].address \"10.22.0.2\" is not a CIDR"
    );
}

#[test]
fn gc_releases_attachments_not_listed_as_valid() {
    let env = env_with_pool();
    let conf = env.conf("1.1.0", json!({}));
    for cid in ["keep", "stale1", "stale2"] {
        env.add(&conf, &Att::new(cid));
    }
    env.add(&conf, &Att::new("keep").ifname("net1"));
    // Another network whose name starts with "tnet." and a handle made by an administrator
    // share the prefix but are not this network's attachments.
    let mut other = conf.clone();
    other["name"] = json!("tnet.x");
    env.add(&other, &Att::new("c9"));
    env.ipam()
        .assign(&AssignRequest {
            handle: "tnet.manual".into(),
            node: "node-a".into(),
            num_v4: 1,
            ..Default::default()
        })
        .unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let run = env.cni("GC", &gc, None);
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    let left: BTreeSet<String> = env
        .ipam()
        .handles_with_prefix("")
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(
        left,
        ["tnet:keep:eth0", "tnet.manual", "tnet.x:c9:eth0"]
            .map(String::from)
            .into()
    );
    env.assert_consistent();

    // The draft name of the list works too; an empty list releases every attachment.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    assert!(env.ipam().handle("tnet:keep:eth0").unwrap().is_none());

    // Without a list GC refuses rather than release everything.
    assert!(env
        .cni("GC", &conf, None)
        .err(7)
        .starts_with("GC needs cni.dev/valid-attachments"));
    // GC does not exist before 1.1.0.
    assert_eq!(
        env.cni("GC", &env.conf("1.0.0", json!({})), None).err(1),
        "cniVersion 1.0.0 does not allow GC (it needs 1.1.0 or later)"
    );
}

#[test]
fn gc_continues_past_a_damaged_attachment_and_reports_it() {
    use tessera_core::store::{Op, Store};
    let env = env_with_pool();
    let conf = env.conf("1.1.0", json!({}));
    env.add(&conf, &Att::new("stale"));
    // A handle whose block record is damaged cannot be released.
    let ipam = env.ipam();
    ipam.store()
        .txn(
            &[],
            &[
                Op::Put(
                    "handles/tnet.broken.eth0".into(),
                    br#"{"id":"tnet.broken.eth0","attrs":{"cid":"broken","if":"eth0"},
                        "addresses":[{"ip":"10.99.0.1","block":"blocks/ghost/10.99.0.0-28"}]}"#
                        .to_vec(),
                ),
                Op::Put("blocks/ghost/10.99.0.0-28".into(), b"not json".to_vec()),
            ],
        )
        .unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let run = env.cni("GC", &gc, None);
    assert_eq!(
        run.err(105),
        "GC of network \"tnet\" released 1 stale attachment(s) but could not release 1"
    );
    assert!(
        run.json["details"].as_str().unwrap().contains(
            "tnet.broken.eth0: record blocks/ghost/10.99.0.0-28 in the datastore is damaged"
        ),
        "{}",
        run.stdout
    );
    assert!(ipam.handle("tnet:stale:eth0").unwrap().is_none());
}

#[test]
fn status_reports_a_full_pool_and_an_unreachable_datastore() {
    let env = Env::new();
    // A /30 pool: two usable addresses (network and broadcast are never handed out).
    env.pool("tiny", "10.30.0.0/30", 30, json!({}));
    let conf = env.conf("1.1.0", json!({}));
    let run = env.cni("STATUS", &conf, None);
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    env.add(&conf, &Att::new("a"));
    env.cni("STATUS", &conf, None).ok();
    env.add(&conf, &Att::new("b"));
    let run = env.cni("STATUS", &conf, None);
    assert_eq!(
        run.err(50),
        "no free IPv4 address for node \"node-a\": the node's blocks in pool(s) tiny are full \
         and every block of those pools is claimed and full"
    );
    // The same request as ADD fails with "no address".
    let msg = env.cni("ADD", &conf, Some(&Att::new("c"))).err(100);
    assert!(
        msg.starts_with("no free IPv4 address for node \"node-a\" in pool(s) tiny"),
        "{msg}"
    );
    // Freeing one address makes the node ready again.
    env.cni("DEL", &conf, Some(&Att::new("a"))).ok();
    env.cni("STATUS", &conf, None).ok();

    // Another node can still claim nothing: the only block is taken and strict affinity
    // forbids borrowing.
    env.apply(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
                     "metadata": {"name": "default"},
                     "spec": {"strictAffinity": true}}),
    );
    let other = env.conf("1.1.0", json!({"nodename": "node-b"}));
    env.cni("STATUS", &other, None).err(50);

    // No pool selects the node.
    let empty = Env::new();
    let msg = empty
        .cni("STATUS", &empty.conf("1.1.0", json!({})), None)
        .err(50);
    assert!(
        msg.starts_with("no enabled IPv4 IP pool selects node \"node-a\""),
        "{msg}"
    );
    // The datastore cannot be opened.
    let mut broken = conf.clone();
    let file = env.dir().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    broken["ipam"]["datastore"] = json!(file.join("t.db").to_str().unwrap());
    env.cni("STATUS", &broken, None).err(50);
    // STATUS does not exist before 1.1.0.
    env.cni("STATUS", &env.conf("1.0.0", json!({})), None)
        .err(1);
}

#[test]
fn malformed_input_is_a_decode_error() {
    let env = env_with_pool();
    let att = Att::new("c1");
    let cases: [(&[u8], &str); 4] = [
        (b"{\"cniVersion\": ", "the network configuration on stdin is not valid JSON: EOF while parsing a value at line 1 column 15"),
        (b"", "the network configuration on stdin is empty; the runtime passes the network's JSON configuration on standard input"),
        (b"[1, 2]", "the network configuration on stdin must be a JSON object, not a list"),
        (b"\xff\xfe", "the network configuration on stdin is not valid JSON: expected value at line 1 column 1"),
    ];
    for (stdin, msg) in cases {
        let run = env.run_cmd(env.command("ADD", Some(&att)), stdin);
        assert_eq!(run.err(6), msg);
        assert_eq!(run.json["cniVersion"], "1.1.0");
    }
    assert_eq!(env.handle_count(), 0);
}

#[test]
fn missing_or_invalid_environment_is_code_4() {
    let env = env_with_pool();
    let conf = env.conf("0.4.0", json!({}));
    let mut cmd = env.command("ADD", None);
    cmd.env("CNI_NETNS", "/var/run/netns/x");
    let run = env.run_cmd(cmd, conf.to_string().as_bytes());
    assert_eq!(
        run.err(4),
        "required environment variables CNI_CONTAINERID, CNI_IFNAME are missing for ADD; the \
         container runtime sets them when it runs the plugin"
    );
    // Errors answer in the configuration's version.
    assert_eq!(run.json["cniVersion"], "0.4.0");

    let mut no_netns = Att::new("c1");
    no_netns.netns = String::new();
    assert!(env
        .cni("ADD", &conf, Some(&no_netns))
        .err(4)
        .starts_with("required environment variable CNI_NETNS is missing for ADD"));
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c1").ifname("eth0/1")))
            .err(4),
        "CNI_IFNAME \"eth0/1\" is invalid: it may not contain '/', ':' or whitespace"
    );
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("-c1"))).err(4),
        "CNI_CONTAINERID \"-c1\" is invalid: it must start with a letter or digit followed by \
         letters, digits, '_', '.' or '-'"
    );
    let mut bad_args = Att::new("c1");
    bad_args.args = "K8S_POD_NAME".into();
    assert_eq!(
        env.cni("ADD", &conf, Some(&bad_args)).err(4),
        "CNI_ARGS entry \"K8S_POD_NAME\" is not KEY=VALUE (CNI_ARGS is KEY=VALUE pairs \
         separated by ';')"
    );
    let run = env.cni("ATTACH", &conf, Some(&Att::new("c1")));
    assert_eq!(
        run.err(4),
        "CNI_COMMAND \"ATTACH\" is not a CNI verb; expected ADD, DEL, CHECK, GC, STATUS or \
         VERSION"
    );
    // Without CNI_COMMAND a person ran it: a note on stderr, nothing on stdout.
    let mut cmd = env.command("", None);
    cmd.env_remove("CNI_COMMAND");
    let run = env.run_cmd(cmd, b"");
    assert_eq!((run.status, run.stdout.as_str()), (0, ""));
    assert!(run
        .stderr
        .contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
    assert_eq!(env.handle_count(), 0);
}

#[test]
fn invalid_configuration_is_code_7_or_1() {
    let env = env_with_pool();
    let att = Att::new("c1");
    let base = env.conf("1.0.0", json!({}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(Value, u64, &str)> = vec![
        (with(&|c| {c.as_object_mut().unwrap().remove("name");}), 7, "name is missing or empty"),
        (with(&|c| c["name"] = json!("bad name")), 7,
         "network name \"bad name\" is invalid: it must start with a letter or digit followed by letters, digits, '_', '.' or '-'"),
        (with(&|c| {c.as_object_mut().unwrap().remove("ipam");}), 7,
         "the network configuration has no ipam section; add \"ipam\": {\"type\": \"tessera-ipam\"}"),
        (with(&|c| c["ipam"]["result_prefix"] = json!("subnet")), 7,
         "ipam.result_prefix \"subnet\" is not one of \"pool\", \"block\", \"host\""),
        (with(&|c| c["ipam"]["ipv4_pools"] = json!("p1")), 7,
         "ipam.ipv4_pools must be a list of pool names or CIDRs, not a string"),
        (with(&|c| {c["ipam"]["assign_ipv4"] = json!(false);}), 7,
         "ipam.assign_ipv4 and ipam.assign_ipv6 are both false: there is nothing to assign; set one of them to true"),
        (with(&|c| c["ipam"]["datastore"] = json!("sqlit:/x.db")), 7,
         "ipam.datastore: datastore \"sqlit:/x.db\" is not a valid datastore URL: unknown scheme \"sqlit\" (for a file whose name contains ':', write ./sqlit:/x.db or sqlite:sqlit:/x.db); accepted forms: a file path, sqlite:PATH, sqlite:///ABSOLUTE/PATH, memory, or etcd://HOST:PORT[,HOST:PORT] (etcds:// for TLS); set it with --datastore or TESSERA_DATASTORE"),
        (with(&|c| c["ipam"]["gateways"] = json!({"p1": "10.22.0"})), 7,
         "ipam.gateways[\"p1\"] \"10.22.0\" is not an IP address"),
        (with(&|c| c["ipam"]["dns"] = json!({"nameserver": "x"})), 7,
         "ipam.dns.nameserver is not a DNS field; use nameservers, domain, search or options"),
        (with(&|c| c["cniVersion"] = json!("0.2.0")), 1,
         "cniVersion \"0.2.0\" is not supported; tessera-ipam supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        (with(&|c| c["cniVersion"] = json!(1)), 7,
         "cniVersion must be a string such as \"1.0.0\", not a number"),
    ];
    for (conf, code, msg) in cases {
        assert_eq!(env.cni("ADD", &conf, Some(&att)).err(code), msg);
    }
    assert_eq!(env.handle_count(), 0);
}

#[test]
fn unknown_or_disabled_pools_are_code_102() {
    let env = env_with_pool();
    env.pool("off", "10.23.0.0/24", 28, json!({"disabled": true}));
    let att = Att::new("c1");
    let conf = env.conf("1.0.0", json!({"ipv4_pools": ["nope"]}));
    assert_eq!(
        env.cni("ADD", &conf, Some(&att)).err(102),
        "IP pool \"nope\" does not exist; list pools with `tessera get ippool`"
    );
    let mut conf = env.conf("1.0.0", json!({}));
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
                                   {"cni.projectcalico.org/ipv4pools": "[\"ghost\"]"}});
    assert_eq!(
        env.cni("ADD", &conf, Some(&att)).err(102),
        "IP pool \"ghost\" does not exist; list pools with `tessera get ippool`"
    );
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
                                   {"cni.projectcalico.org/ipv4pools": "[\"off\"]"}});
    assert!(env
        .cni("ADD", &conf, Some(&att))
        .err(102)
        .starts_with("IP pool \"off\" is disabled"));
    assert_eq!(env.handle_count(), 0);
}

fn with_annotations(mut conf: Value, annotations: Value) -> Value {
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
    conf
}

#[test]
fn ip_addrs_annotation_assigns_and_refuses_addresses_in_use() {
    let env = env_with_pool();
    let conf = with_annotations(
        env.conf("1.0.0", json!({})),
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.22.0.77\"]"}),
    );
    let first = Att::new("c1").pod("default", "web-0");
    assert_eq!(
        env.add(&conf, &first)["ips"],
        json!([{"address": "10.22.0.77/24"}])
    );
    let run = env.cni("ADD", &conf, Some(&Att::new("c2").pod("default", "web-1")));
    assert_eq!(
        run.err(101),
        "address 10.22.0.77 is already in use by handle \"tnet:c1:eth0\""
    );
    assert!(run
        .full_error()
        .contains("network \"tnet\", container c2, interface eth0"));
    // The runtime's `ips` capability works the same way.
    let mut conf = env.conf("1.0.0", json!({}));
    conf["runtimeConfig"] = json!({"ips": ["10.22.0.78/24"]});
    assert_eq!(
        env.add(&conf, &Att::new("c3"))["ips"],
        json!([{"address": "10.22.0.78/24"}])
    );
    // Malformed annotations say which one.
    let conf = with_annotations(
        env.conf("1.0.0", json!({})),
        json!({"cni.projectcalico.org/ipAddrs": "10.22.0.79"}),
    );
    let msg = env.cni("ADD", &conf, Some(&Att::new("c4"))).err(107);
    assert!(
        msg.starts_with(
            "pod annotation cni.projectcalico.org/ipAddrs: \"10.22.0.79\" is not a JSON list"
        ),
        "{msg}"
    );
    let conf = with_annotations(
        env.conf("1.0.0", json!({})),
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.22.0.300\"]"}),
    );
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c5"))).err(107),
        "pod annotation cni.projectcalico.org/ipAddrs: \"10.22.0.300\" is not an IP address"
    );
    let conf = with_annotations(
        env.conf("1.0.0", json!({})),
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.99.0.1\"]"}),
    );
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c6"))).err(101),
        "address 10.99.0.1 is not in any IP pool"
    );
    assert_eq!(env.handle_count(), 2);
    env.assert_consistent();
}

#[test]
fn pool_precedence_pod_then_namespace_then_config_then_node_selection() {
    let env = Env::new();
    env.pool("auto", "10.40.0.0/24", 28, json!({}));
    // Manual pools serve only when named, so node selection finds only "auto".
    for (name, cidr) in [
        ("cfg", "10.41.0.0/24"),
        ("ns", "10.42.0.0/24"),
        ("pod", "10.43.0.0/24"),
    ] {
        env.pool(name, cidr, 28, json!({"assignmentMode": "Manual"}));
    }
    env.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "team",
                                  "annotations": {"cni.projectcalico.org/ipv4pools": "[\"ns\"]"}}}));
    let plain = env.conf("1.0.0", json!({}));
    let cfg = env.conf("1.0.0", json!({"ipv4_pools": ["cfg"]}));
    let pod_ann = json!({"cni.projectcalico.org/ipv4pools": "[\"pod\"]"});
    let cases = [
        (
            with_annotations(cfg.clone(), pod_ann.clone()),
            "team",
            "10.43.",
        ),
        (cfg.clone(), "team", "10.42."),
        (cfg.clone(), "other", "10.41."),
        (plain.clone(), "other", "10.40."),
        (with_annotations(plain.clone(), pod_ann), "other", "10.43."),
    ];
    for (i, (conf, ns, want)) in cases.into_iter().enumerate() {
        let att = Att::new(&format!("c{i}")).pod(ns, &format!("p{i}"));
        let got = env.add(&conf, &att)["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(got.starts_with(want), "case {i}: got {got}, want {want}*");
    }
    // Config pools by CIDR, in fallback order: the first is full, the second serves.
    let env2 = Env::new();
    env2.pool("small", "10.50.0.0/30", 30, json!({}));
    env2.pool("big", "10.51.0.0/24", 28, json!({}));
    let conf = env2.conf("1.0.0", json!({"ipv4_pools": ["10.50.0.0/30", "big"]}));
    let got: Vec<String> = (0..3)
        .map(|i| {
            env2.add(&conf, &Att::new(&format!("c{i}")))["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, ["10.50.0.1/30", "10.50.0.2/30", "10.51.0.1/24"]);
}

#[test]
fn dual_stack_and_all_or_nothing() {
    let env = Env::new();
    env.pool("v4", "10.60.0.0/24", 28, json!({}));
    env.pool("v6", "fd00:60::/120", 126, json!({}));
    let conf = env.conf("0.4.0", json!({"assign_ipv6": "true"}));
    let r = env.add(&conf, &Att::new("c1"));
    assert_eq!(
        r["ips"],
        json!([{"version": "4", "address": "10.60.0.1/24"},
               {"version": "6", "address": "fd00:60::1/120"}])
    );
    // IPv6 only.
    let v6only = env.conf("1.0.0", json!({"assign_ipv4": false, "assign_ipv6": true}));
    assert_eq!(
        env.add(&v6only, &Att::new("c2"))["ips"],
        json!([{"address": "fd00:60::2/120"}])
    );
    // With IPv6 exhausted, a dual-stack ADD takes no IPv4 address either.
    let small = Env::new();
    small.pool("v4", "10.61.0.0/24", 28, json!({}));
    small.pool("v6", "fd00:61::/127", 127, json!({}));
    let conf = small.conf("1.0.0", json!({"assign_ipv6": true}));
    for i in 0..2 {
        small.add(&conf, &Att::new(&format!("c{i}")));
    }
    let msg = small.cni("ADD", &conf, Some(&Att::new("c9"))).err(100);
    assert!(msg.starts_with("no free IPv6 address"), "{msg}");
    assert!(small.ipam().handle("tnet:c9:eth0").unwrap().is_none());
    let usage = small.ipam().usage().unwrap();
    let v4 = usage.pools.iter().find(|p| p.name == "v4").unwrap();
    assert_eq!(v4.in_use, 2, "the failed ADD left no IPv4 address behind");
    small.assert_consistent();
}

/// A bridge network (`isGateway`) on `env`'s store: network `name`, with `ipam` entries.
fn bridge_conf(env: &Env, name: &str, ipam: Value) -> Value {
    let mut bridge = env.conf("1.0.0", ipam);
    bridge["type"] = json!("bridge");
    bridge["isGateway"] = json!(true);
    bridge["name"] = json!(name);
    bridge
}

/// The addresses handle `id` holds.
fn held(env: &Env, id: &str) -> Vec<String> {
    env.ipam()
        .handle(id)
        .unwrap()
        .map(|h| h.addresses.iter().map(|a| a.ip.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn the_documented_bridge_example_works_on_an_empty_store() {
    let env = Env::new();
    let bridge = guide_bridge_network(&env);
    // "Trying it by hand", as printed, on this store.
    let by_hand = cni_guide_section("## Trying it by hand");
    let echoed = by_hand.split("echo '").nth(1).unwrap().split("' >").next();
    let mut conf: Value = serde_json::from_str(echoed.unwrap()).unwrap();
    conf["ipam"]["datastore"] = json!(env.db().to_str().unwrap());
    let printed = by_hand
        .lines()
        .find(|l| l.starts_with("{\"cniVersion\""))
        .unwrap();
    let c1 = Att::new("c1");
    assert_eq!(
        env.add(&conf, &c1),
        serde_json::from_str::<Value>(printed).unwrap()
    );
    // The conflist's bridge: the next address, the same gateway, the default route.
    let c2 = Att::new("c2");
    let result = env.add(&bridge, &c2);
    assert_eq!(
        result["ips"],
        json!([{"address": "10.22.0.3/16", "gateway": "10.22.0.1"}])
    );
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0"}]));
    // The gateway is held for the network, and `ipam show --ip` says so.
    let gateway = env.ipam().lookup("10.22.0.1".parse().unwrap()).unwrap();
    let allocation = gateway.unwrap().allocation.expect("the gateway is held");
    assert_eq!(allocation.handle, "pods:gateway");
    assert_eq!(allocation.attrs.gateway_of.as_deref(), Some("pods"));
    // Neither DEL nor GC gives it back; the pods' addresses go.
    env.cni("DEL", &conf, Some(&c1)).ok();
    let mut gc = bridge.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(env.handle_count(), 1);
    assert_eq!(held(&env, "pods:gateway"), ["10.22.0.1"]);
    let again = env.add(&bridge, &Att::new("c3"));
    assert_eq!(again["ips"][0]["gateway"], "10.22.0.1");
    assert_ne!(again["ips"][0]["address"], "10.22.0.1/16");
    env.assert_consistent();
}

#[test]
fn a_gateway_a_pod_already_holds_is_a_clear_error() {
    let env = Env::new();
    env.pool("p", "10.70.0.0/24", 26, json!({}));
    let macvlan = env.conf("1.0.0", json!({}));
    let mut old = Att::new("old").pod("default", "web-0");
    old.args.push_str(";IP=10.70.0.1");
    env.add(&macvlan, &old);
    let bridge = bridge_conf(&env, "tnet", json!({}));
    let run = env.cni("ADD", &bridge, Some(&Att::new("c1")));
    assert_eq!(
        run.err(106),
        "gateway 10.70.0.1, the first address of the result's prefix, which the bridge \
         plugin configures on the host side, is already held by pod default/web-0 (container \
         old, interface eth0) under handle \"tnet:old:eth0\"; a pod's address cannot be the \
         gateway"
    );
    assert!(
        run.full_error()
            .contains("release 10.70.0.1 (`tessera ipam release --ip 10.70.0.1`)"),
        "{}",
        run.full_error()
    );
    assert_eq!(env.handle_count(), 1, "the failed ADD took nothing");
    // Once the pod is gone, the bridge's gateway is held and the next pod gets the next one.
    env.cni("DEL", &macvlan, Some(&old)).ok();
    assert_eq!(
        env.add(&bridge, &Att::new("c1"))["ips"],
        json!([{"address": "10.70.0.2/24", "gateway": "10.70.0.1"}])
    );
    assert_eq!(held(&env, "tnet:gateway"), ["10.70.0.1"]);
    env.assert_consistent();
}

#[test]
fn result_prefix_gateways_held_or_reserved() {
    let env = Env::new();
    env.pool("p", "10.70.0.0/24", 26, json!({}));
    // The bridge configures 10.70.0.1 on the host side: held for the network, for no pod.
    let bridge = bridge_conf(&env, "tnet", json!({}));
    assert_eq!(
        env.add(&bridge, &Att::new("c1"))["ips"],
        json!([{"address": "10.70.0.2/24", "gateway": "10.70.0.1"}])
    );
    assert_eq!(held(&env, "tnet:gateway"), ["10.70.0.1"]);
    // With block prefixes, each block's first address, in the block of the node using it.
    let per_block = bridge_conf(
        &env,
        "tblk",
        json!({"result_prefix": "block", "nodename": "node-b"}),
    );
    assert_eq!(
        env.add(&per_block, &Att::new("b1"))["ips"],
        json!([{"address": "10.70.0.64/26", "gateway": "10.70.0.65"}])
    );
    assert_eq!(held(&env, "tblk:gateway"), ["10.70.0.65"]);
    // An explicit gateway outside the pool needs neither a hold nor a reservation.
    let block = env.conf(
        "1.0.0",
        json!({"result_prefix": "block",
                                          "gateways": {"10.0.0.0/8": "169.254.1.1"}}),
    );
    assert_eq!(
        env.add(&block, &Att::new("c2"))["ips"],
        json!([{"address": "10.70.0.3/26", "gateway": "169.254.1.1"}])
    );
    let host = env.conf("1.0.0", json!({"result_prefix": "host"}));
    assert_eq!(
        env.add(&host, &Att::new("c3"))["ips"],
        json!([{"address": "10.70.0.4/32"}])
    );
    // A configured gateway inside the pool, given by pool name, must be reserved.
    let named = env.conf("1.0.0", json!({"gateways": {"p": "10.70.0.254"}}));
    let run = env.cni("ADD", &named, Some(&Att::new("c4")));
    assert_eq!(
        run.err(106),
        "gateway 10.70.0.254 for 10.70.0.5 (set in ipam.gateways) lies in IP pool \"p\" \
         (10.70.0.0/24) and no IPReservation covers it, so the datastore could hand it to a pod"
    );
    assert!(run
        .full_error()
        .contains("\"reservedCIDRs\": [\"10.70.0.254\"]"));
    let wrong = env.conf("1.0.0", json!({"gateways": {"p": "fd00::1"}}));
    env.cni("ADD", &wrong, Some(&Att::new("c5"))).err(7);
    // A reserved gateway needs no hold.
    env.pool("q", "10.71.0.0/24", 26, json!({}));
    env.reserve("q-gateway", &["10.71.0.1"]);
    let reserved = bridge_conf(&env, "tres", json!({"ipv4_pools": ["q"]}));
    assert_eq!(
        env.add(&reserved, &Att::new("r1"))["ips"],
        json!([{"address": "10.71.0.2/24", "gateway": "10.71.0.1"}])
    );
    assert!(env.ipam().handle("tres:gateway").unwrap().is_none());
    env.assert_consistent();
}

#[test]
fn datastore_failures_map_to_their_codes() {
    let env = env_with_pool();
    let att = Att::new("c1");
    // A path below a regular file cannot hold a store: I/O failure.
    let file = env.dir().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let conf = env.conf(
        "1.0.0",
        json!({"datastore": file.join("t.db").to_str().unwrap()}),
    );
    let run = env.cni("ADD", &conf, Some(&att));
    assert!(run.err(5).contains("Not a directory"), "{}", run.stdout);
    // A file that is not a database: damaged store.
    let junk = env.dir().join("junk.db");
    std::fs::write(&junk, vec![b'j'; 8192]).unwrap();
    let conf = env.conf("1.0.0", json!({"datastore": junk.to_str().unwrap()}));
    let run = env.cni("ADD", &conf, Some(&att));
    assert!(
        run.err(104).contains("is corrupt or not a Tessera store"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_datastore_locked_too_long_is_try_again_later() {
    let env = env_with_pool();
    let conf = env.conf("1.0.0", json!({}));
    // Hold SQLite's write lock longer than the plugin waits for it (10 s).
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let run = env.cni("ADD", &conf, Some(&Att::new("c1")));
    let msg = run.err(11);
    assert!(msg.contains("kept the database locked"), "{msg}");
    assert!(started.elapsed() >= Duration::from_secs(9));
    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    assert_eq!(env.handle_count(), 0);
    env.add(&conf, &Att::new("c1"));
}

#[test]
fn node_name_sources_in_order() {
    let env = env_with_pool();
    let mut conf = env.conf("1.0.0", json!({}));
    conf["ipam"].as_object_mut().unwrap().remove("nodename");
    let file = env.dir().join("nodename");
    std::fs::write(&file, "from-file\n").unwrap();
    conf["ipam"]["nodename_file"] = json!(file.to_str().unwrap());
    let node_of = |cid: &str, cmd_env: Option<&str>| {
        let mut cmd = env.command("ADD", Some(&Att::new(cid)));
        if let Some(n) = cmd_env {
            cmd.env("NODENAME", n);
        }
        env.run_cmd(cmd, conf.to_string().as_bytes()).ok();
        env.ipam()
            .handle(&format!("tnet:{cid}:eth0"))
            .unwrap()
            .unwrap()
            .attrs
            .node
            .unwrap()
    };
    assert_eq!(node_of("c1", Some("from-env")), "from-env");
    assert_eq!(node_of("c2", None), "from-file");
    std::fs::remove_file(&file).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_ascii_lowercase();
    assert_eq!(node_of("c3", None), host);
}

#[test]
fn logs_go_to_the_log_file_never_to_stdout() {
    let env = env_with_pool();
    let log = env.dir().join("ipam.log");
    let conf = env.conf(
        "1.0.0",
        json!({"log_file": log.to_str().unwrap(), "log_level": "debug", "colour": "blue"}),
    );
    let run = env.cni("ADD", &conf, Some(&Att::new("c1")));
    run.ok();
    assert_eq!(run.stderr, "");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN ADD tnet c1/eth0: ignoring unknown ipam keys: colour"),
        "{text}"
    );
    assert!(
        text.contains("INFO ADD tnet c1/eth0: assigned 10.22.0.1/24 on node \"node-a\""),
        "{text}"
    );
    // Without a log file, warnings go to stderr and stdout carries only the result.
    let conf = env.conf("1.0.0", json!({"colour": "blue"}));
    let run = env.cni("ADD", &conf, Some(&Att::new("c2")));
    assert!(run.ok()["ips"].is_array());
    assert!(
        run.stderr.contains("ignoring unknown ipam keys: colour"),
        "{}",
        run.stderr
    );
}

#[test]
fn duplicate_keys_and_non_string_annotations_are_refused() {
    let env = env_with_pool();
    let att = Att::new("c1");
    let conf = env.conf("1.0.0", json!({}));
    // The same key twice in the configuration: serde_json alone would keep the last one.
    let text = conf
        .to_string()
        .replacen("{", "{\"ipam\": {\"type\": \"host-local\"}, ", 1);
    let run = env.run_cmd(env.command("ADD", Some(&att)), text.as_bytes());
    let msg = run.err(6);
    assert!(
        msg.starts_with(
            "the network configuration on stdin is not valid JSON: duplicate key \"ipam\" in \
             an object; keep only one of them at line 1 column "
        ),
        "{msg}"
    );
    let with_ip = with_annotations(
        conf.clone(),
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.22.0.5\"]"}),
    );
    let text = with_ip.to_string().replace(
        "\"cni.projectcalico.org/ipAddrs\"",
        "\"cni.projectcalico.org/ipAddrs\":\"[\\\"10.22.0.6\\\"]\",\"cni.projectcalico.org/ipAddrs\"",
    );
    let msg = env
        .run_cmd(env.command("ADD", Some(&att)), text.as_bytes())
        .err(6);
    assert!(
        msg.contains("duplicate key \"cni.projectcalico.org/ipAddrs\" in an object"),
        "{msg}"
    );
    // A duplicate inside an annotation's own JSON.
    let spider = with_annotations(
        conf.clone(),
        json!({"ipam.spidernet.io/ippool": "{\"ipv4\": [\"p1\"], \"ipv4\": [\"p2\"]}"}),
    );
    assert_eq!(
        env.cni("ADD", &spider, Some(&att)).err(107),
        "pod annotation ipam.spidernet.io/ippool: \"{\\\"ipv4\\\": [\\\"p1\\\"], \\\"ipv4\\\": \
         [\\\"p2\\\"]}\" is not valid JSON (duplicate key \"ipv4\" in an object; keep only one \
         of them at line 1 column 23)"
    );
    // Annotation values are strings; a number is not silently skipped.
    let number = with_annotations(conf, json!({"cni.projectcalico.org/ipAddrs": 5}));
    assert_eq!(
        env.cni("ADD", &number, Some(&att)).err(107),
        "runtimeConfig[\"io.kubernetes.cri.pod-annotations\"][\"cni.projectcalico.org/ipAddrs\"] \
         must be a string, not a number"
    );
    assert_eq!(env.handle_count(), 0);
}

/// The configuration of network `name` on `env`'s store.
fn network(env: &Env, name: &str) -> Value {
    let mut conf = env.conf("1.1.0", json!({}));
    conf["name"] = json!(name);
    conf
}

/// The address of the first entry of an ADD result, without prefix.
fn first_address(result: &Value) -> std::net::IpAddr {
    addr(result["ips"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

/// The handle holding `ip`, if any.
fn holder(env: &Env, ip: std::net::IpAddr) -> Option<String> {
    env.ipam()
        .lookup(ip)
        .unwrap()
        .and_then(|info| info.allocation)
        .map(|a| a.handle)
}

#[test]
fn attachments_whose_names_join_alike_never_share_an_address() {
    let env = env_with_pool();
    // Network "a" with container "b.c", and network "a.b" with container "c": joined with
    // dots, both attachments were "a.b.c.eth0".
    let (net_a, net_ab) = (network(&env, "a"), network(&env, "a.b"));
    let first = Att::new("b.c").pod("default", "first");
    let second = Att::new("c").pod("default", "second");
    let first_ip = first_address(&env.add(&net_a, &first));
    let second_result = env.add(&net_ab, &second);
    let second_ip = first_address(&second_result);
    assert_ne!(first_ip, second_ip, "two pods were given one address");
    assert_eq!(holder(&env, first_ip).as_deref(), Some("a:b.c:eth0"));
    assert_eq!(holder(&env, second_ip).as_deref(), Some("a.b:c:eth0"));

    // DEL of the first leaves the second alone, and CHECK of the second still passes.
    env.cni("DEL", &net_a, Some(&first)).ok();
    assert_eq!(holder(&env, first_ip), None);
    assert_eq!(holder(&env, second_ip).as_deref(), Some("a.b:c:eth0"));
    let mut check = net_ab.clone();
    check["prevResult"] = second_result;
    env.cni("CHECK", &check, Some(&second)).ok();
    // GC of network "a" does not see network "a.b"'s attachment.
    let mut gc = net_a.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(holder(&env, second_ip).as_deref(), Some("a.b:c:eth0"));
    env.assert_consistent();
}

#[test]
fn an_add_never_returns_the_addresses_of_another_pod_or_container() {
    let env = env_with_pool();
    let conf = network(&env, "tnet");
    let web = Att::new("c1").pod("default", "web-0");
    let held = first_address(&env.add(&conf, &web));
    // The same container and interface, but another pod: not a repeat of the first ADD.
    let run = env.cni("ADD", &conf, Some(&Att::new("c1").pod("default", "db-0")));
    assert_eq!(
        run.err(110),
        format!(
            "attachment \"tnet:c1:eth0\" already holds {held} for pod default/web-0 (container \
             c1, interface eth0); this ADD is for pod default/db-0 (container c1, interface \
             eth0), so its addresses are not handed out again"
        )
    );
    assert!(
        run.full_error().contains(
            "if that attachment is gone, release it with `tessera ipam release --handle \
             tnet:c1:eth0`"
        ),
        "{}",
        run.full_error()
    );
    // A handle with this attachment's id made by hand for another container.
    env.ipam()
        .assign(&AssignRequest {
            handle: "tnet:c2:eth0".into(),
            node: "node-a".into(),
            attrs: tessera_core::ipam::Attributes {
                container_id: Some("other".into()),
                interface: Some("eth0".into()),
                ..Default::default()
            },
            num_v4: 1,
            ..Default::default()
        })
        .unwrap();
    let manual = env.ipam().handle("tnet:c2:eth0").unwrap().unwrap();
    let run = env.cni("ADD", &conf, Some(&Att::new("c2")));
    assert!(
        run.err(110)
            .starts_with("attachment \"tnet:c2:eth0\" already holds"),
        "{}",
        run.stdout
    );
    // Nor does a DEL or GC of that attachment release it.
    env.cni("DEL", &conf, Some(&Att::new("c2"))).ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(env.ipam().handle("tnet:c2:eth0").unwrap(), Some(manual));
    assert_eq!(holder(&env, held).as_deref(), Some("tnet:c1:eth0"));
    assert_eq!(env.handle_count(), 2);
    env.assert_consistent();
}

/// Assigns an address under `handle` as the previous version of the plugin did, with the
/// attachment's attributes.
fn legacy_assign(env: &Env, handle: &str, cid: &str, pod: &str) -> std::net::IpAddr {
    let done = env
        .ipam()
        .assign_new(&AssignRequest {
            handle: handle.into(),
            node: "node-a".into(),
            attrs: tessera_core::ipam::Attributes {
                namespace: Some("default".into()),
                pod: Some(pod.into()),
                pod_uid: None,
                node: Some("node-a".into()),
                interface: Some("eth0".into()),
                container_id: Some(cid.into()),
                gateway_of: None,
                statefulset: None,
            },
            num_v4: 1,
            ..Default::default()
        })
        .unwrap()
        .expect("a new handle");
    done.0.addresses[0].ip
}

#[test]
fn attachments_made_by_the_previous_version_are_still_found() {
    let env = env_with_pool();
    let conf = network(&env, "tnet");
    let old = Att::new("old").pod("default", "old-0");
    let old_ip = legacy_assign(&env, "tnet.old.eth0", "old", "old-0");

    // CHECK finds it; a repeated ADD returns it rather than assigning another address.
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0",
                                 "ips": [{"address": format!("{old_ip}/24")}]});
    env.cni("CHECK", &check, Some(&old)).ok();
    assert_eq!(first_address(&env.add(&conf, &old)), old_ip);
    assert_eq!(env.handle_count(), 1);
    // Not for another pod on that attachment.
    env.cni("ADD", &conf, Some(&Att::new("old").pod("default", "new-0")))
        .err(110);
    // DEL releases it.
    env.cni("DEL", &conf, Some(&old)).ok();
    assert_eq!(holder(&env, old_ip), None);
    assert_eq!(env.handle_count(), 0);

    // An old handle that the previous version gave network "a", container "b.c" is not
    // network "a.b", container "c".
    let taken = legacy_assign(&env, "a.b.c.eth0", "b.c", "first");
    let (net_a, net_ab) = (network(&env, "a"), network(&env, "a.b"));
    let second = Att::new("c").pod("default", "second");
    let mut check = net_ab.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0",
                                 "ips": [{"address": format!("{taken}/24")}]});
    env.cni("CHECK", &check, Some(&second)).err(103);
    let second_ip = first_address(&env.add(&net_ab, &second));
    assert_ne!(second_ip, taken);
    env.cni("DEL", &net_ab, Some(&second)).ok();
    assert_eq!(holder(&env, taken).as_deref(), Some("a.b.c.eth0"));
    // GC of network "a.b" leaves it too; GC of network "a" knows it as its own.
    let mut gc = net_ab.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(holder(&env, taken).as_deref(), Some("a.b.c.eth0"));
    let mut gc = net_a.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "b.c", "ifname": "eth0"}]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(holder(&env, taken).as_deref(), Some("a.b.c.eth0"));
    // Its own network's DEL releases it.
    env.cni("DEL", &net_a, Some(&Att::new("b.c"))).ok();
    assert_eq!(holder(&env, taken), None);

    // GC releases a stale attachment of the previous version.
    let stale = legacy_assign(&env, "tnet.stale.eth0", "stale", "stale-0");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    env.cni("GC", &gc, None).ok();
    assert_eq!(holder(&env, stale), None);
    assert_eq!(env.handle_count(), 0);
    env.assert_consistent();
}

#[test]
fn node_names_that_kubernetes_would_refuse_are_refused() {
    let env = env_with_pool();
    let rule = "a node name is a DNS subdomain, as in Kubernetes: use lowercase letters, \
                digits, '-' and '.', starting and ending with a letter or digit, at most 253 \
                characters";
    for (name, problem) in [
        ("a/x", "'/' is not allowed"),
        ("A B", "'A' is uppercase (write 'a')"),
        ("_shared", "'_' is not allowed"),
    ] {
        let conf = env.conf("1.1.0", json!({"nodename": name}));
        let run = env.cni("ADD", &conf, Some(&Att::new("c1")));
        assert_eq!(
            run.err(7),
            format!("ipam.nodename: node name \"{name}\" is not valid: {problem}; {rule}")
        );
        assert_eq!(run.status, 1);
        // STATUS says the plugin cannot serve ADD.
        env.cni("STATUS", &conf, None).err(50);
    }
    let mut conf = env.conf("1.1.0", json!({}));
    conf["ipam"].as_object_mut().unwrap().remove("nodename");
    let mut cmd = env.command("ADD", Some(&Att::new("c1")));
    cmd.env("NODENAME", "a/x");
    let run = env.run_cmd(cmd, conf.to_string().as_bytes());
    assert!(
        run.err(7)
            .starts_with("NODENAME: node name \"a/x\" is not valid: '/' is not allowed;"),
        "{}",
        run.stdout
    );
    let file = env.dir().join("nodename");
    std::fs::write(&file, "node_a\n").unwrap();
    conf["ipam"]["nodename_file"] = json!(file.to_str().unwrap());
    let run = env.cni("ADD", &conf, Some(&Att::new("c1")));
    assert!(
        run.err(7).starts_with(&format!(
            "{}: node name \"node_a\" is not valid: '_' is not allowed;",
            file.display()
        )),
        "{}",
        run.stdout
    );
    assert_eq!(env.handle_count(), 0);
    let report = env.assert_consistent();
    assert_eq!(report.blocks, 0);
}

/// An attachment whose runtime sends `extra` in CNI_ARGS after what Podman sends (Podman
/// names the container in `K8S_POD_NAME` and sends no namespace).
fn podman_att(cid: &str, extra: &str) -> Att {
    let mut att = Att::new(cid);
    att.args = format!("IgnoreUnknown=1;K8S_POD_NAME={cid};{extra}");
    att
}

#[test]
fn cni_args_ip_asks_for_addresses_as_podman_sends_them() {
    let env = Env::new();
    env.pool("v4", "10.60.0.0/24", 28, json!({}));
    env.pool("v6", "fd00:60::/120", 124, json!({}));
    let conf = env.conf("1.0.0", json!({"assign_ipv6": true}));
    // `podman run --ip 10.60.0.200`: CNI_ARGS only, no runtimeConfig.ips.
    let web = podman_att("web", "IP=10.60.0.200");
    let one = json!([{"address": "10.60.0.200/24"}]);
    assert_eq!(env.add(&conf, &web)["ips"], one);
    assert_eq!(env.add(&conf, &web)["ips"], one, "a repeated ADD");
    // Several addresses, both families, with or without a prefix.
    let both = podman_att("db", "IP=10.60.0.201/24, fd00:60::c9");
    assert_eq!(
        env.add(&conf, &both)["ips"],
        json!([{"address": "10.60.0.201/24"}, {"address": "fd00:60::c9/120"}])
    );
    let handle = env.ipam().handle("tnet:web:eth0").unwrap().expect("held");
    assert_eq!(handle.attrs.pod.as_deref(), Some("web"));
    for att in [&web, &both] {
        env.cni("DEL", &conf, Some(att)).ok();
    }
    assert_eq!(env.handle_count(), 0);
    env.assert_consistent();
}

#[test]
fn args_cni_ips_ask_for_addresses() {
    let env = env_with_pool();
    let mut conf = env.conf("1.0.0", json!({}));
    conf["args"] = json!({"cni": {"ips": ["10.22.0.201/24", "10.22.0.202"],
                                  "labels": [{"key": "app", "value": "web"}]}});
    assert_eq!(
        env.add(&conf, &Att::new("c1"))["ips"],
        json!([{"address": "10.22.0.201/24"}, {"address": "10.22.0.202/24"}])
    );
    // Other runtimes' args are not this plugin's business: one automatic address.
    conf["args"] = json!({"org.example": {"ips": 5}});
    let ips = env.add(&conf, &Att::new("c2"))["ips"].clone();
    assert_eq!(ips.as_array().map(Vec::len), Some(1), "{ips}");
    assert!(!["10.22.0.201/24", "10.22.0.202/24"].contains(&ips[0]["address"].as_str().unwrap()));
    env.assert_consistent();
}

#[test]
fn runtime_config_ips_then_args_then_cni_args_decide_the_addresses() {
    let env = env_with_pool();
    let mut conf = env.conf("1.0.0", json!({}));
    conf["runtimeConfig"] = json!({"ips": ["10.22.0.210"]});
    conf["args"] = json!({"cni": {"ips": ["10.22.0.211"]}});
    let run = env.cni("ADD", &conf, Some(&podman_att("c1", "IP=10.22.0.212")));
    assert_eq!(run.ok()["ips"], json!([{"address": "10.22.0.210/24"}]));
    assert!(
        run.stderr.contains(
            "runtimeConfig.ips decides the addresses (10.22.0.210); args.cni.ips (10.22.0.211) \
             and CNI_ARGS IP (10.22.0.212) are ignored"
        ),
        "{}",
        run.stderr
    );
    conf.as_object_mut().unwrap().remove("runtimeConfig");
    let run = env.cni("ADD", &conf, Some(&podman_att("c2", "IP=10.22.0.212")));
    assert_eq!(run.ok()["ips"], json!([{"address": "10.22.0.211/24"}]));
    // The same addresses from two sources are one request, and nothing to warn about.
    let run = env.cni("ADD", &conf, Some(&podman_att("c2", "IP=10.22.0.211")));
    assert_eq!(run.ok()["ips"], json!([{"address": "10.22.0.211/24"}]));
    assert!(!run.stderr.contains("ignored"), "{}", run.stderr);
    assert_eq!(holder(&env, "10.22.0.212".parse().unwrap()), None);
    assert_eq!(env.handle_count(), 2);
    env.assert_consistent();
}

#[test]
fn requested_addresses_that_cannot_be_given_fail_and_allocate_nothing() {
    let env = env_with_pool();
    env.reserve("gw", &["10.22.0.1"]);
    let mut conf = env.conf("1.0.0", json!({}));
    env.add(&conf, &podman_att("web", "IP=10.22.0.50"));
    let cases = [
        (
            "IP=notanip",
            107,
            "CNI_ARGS IP=\"notanip\": \"notanip\" is not an IP address (IP takes one address, \
             or several separated by commas, such as IP=10.22.0.5,fd00::5)",
        ),
        (
            "IP=10.22.0.60,",
            107,
            "CNI_ARGS IP=\"10.22.0.60,\": \"\" is not an IP address (IP takes one address, or \
             several separated by commas, such as IP=10.22.0.5,fd00::5)",
        ),
        (
            "IP=10.22.0.60,10.99.0.1",
            101,
            "address 10.99.0.1 is not in any IP pool",
        ),
        (
            "IP=10.22.0.1",
            101,
            "address 10.22.0.1 is reserved by IPReservation \"gw\"",
        ),
        (
            "IP=10.22.0.60,10.22.0.50",
            101,
            "address 10.22.0.50 is already in use by handle \"tnet:web:eth0\"",
        ),
    ];
    for (i, (args, code, msg)) in cases.into_iter().enumerate() {
        let run = env.cni("ADD", &conf, Some(&podman_att(&format!("c{i}"), args)));
        assert_eq!(run.err(code), msg, "{args}");
        if code == 101 {
            assert!(
                run.full_error()
                    .contains("asked for in CNI_ARGS IP; network \"tnet\""),
                "{}",
                run.full_error()
            );
        }
    }
    conf["args"] = json!({"cni": {"ips": ["10.22.0.60", 7]}});
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c8"))).err(107),
        "args.cni.ips[1] must be a string, not a number"
    );
    conf["args"] = json!({"cni": {"ips": "10.22.0.60"}});
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c8"))).err(107),
        "args.cni.ips must be a list of addresses, not a string"
    );
    conf["args"] = json!({"cni": {"ips": ["10.22.0.60", "10.22.0.256"]}});
    assert_eq!(
        env.cni("ADD", &conf, Some(&Att::new("c8"))).err(107),
        "args.cni.ips[1] \"10.22.0.256\" is not an IP address"
    );
    conf["args"] = json!({"cni": {"ips": ["10.22.0.1"]}});
    let run = env.cni("ADD", &conf, Some(&Att::new("c9")));
    assert_eq!(
        run.err(101),
        "address 10.22.0.1 is reserved by IPReservation \"gw\""
    );
    assert!(
        run.full_error().contains("asked for in args.cni.ips"),
        "{}",
        run.full_error()
    );
    // Nothing was allocated: the first pod's address is the only one.
    assert_eq!(holder(&env, "10.22.0.60".parse().unwrap()), None);
    assert_eq!(env.handle_count(), 1);
    env.assert_consistent();
}

#[test]
fn the_pod_uid_is_kept_with_the_attachment() {
    let env = env_with_pool();
    let conf = env.conf("1.0.0", json!({}));
    // What containerd and CRI-O send.
    let mut att = Att::new("c1");
    att.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=6f1c2b9e-2f4d-4c1a-9a53-0e7d8b1f4a10"
        .into();
    env.add(&conf, &att);
    let attrs = env
        .ipam()
        .handle("tnet:c1:eth0")
        .unwrap()
        .expect("held")
        .attrs;
    assert_eq!(
        (attrs.namespace.as_deref(), attrs.pod.as_deref()),
        (Some("default"), Some("web-0"))
    );
    assert_eq!(
        attrs.pod_uid.as_deref(),
        Some("6f1c2b9e-2f4d-4c1a-9a53-0e7d8b1f4a10")
    );
    // Podman sends none.
    env.add(&conf, &podman_att("c2", ""));
    let attrs = env
        .ipam()
        .handle("tnet:c2:eth0")
        .unwrap()
        .expect("held")
        .attrs;
    assert_eq!(attrs.pod_uid, None);
}
