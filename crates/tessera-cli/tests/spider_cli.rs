//! Spiderpool manifests through the `tessera` command (the nginx pool example and the
//! rest of `examples/spiderpool`): apply as written, `get sp`,
//! `get ss` and `get sr` with Spiderpool's printer columns, `-o yaml|json` with a computed
//! status, and refusals that change nothing.

mod common;

use common::{normalize_generated, Env};

const SUBNET: &str = include_str!("../../../examples/spiderpool/nginx-subnet-v4.yaml");
const POOL: &str = include_str!("../../../examples/spiderpool/nginx-v4-ippool.yaml");
const DUAL: &str = include_str!("../../../examples/spiderpool/dual-stack.yaml");
const RESERVED: &str = include_str!("../../../examples/spiderpool/reserved-ips.yaml");

/// The nginx pool exactly as the blog post prints it: `spec` indented under `metadata`.
const POOL_AS_IN_THE_BLOG: &str = "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
   name: nginx-v4-ippool
   spec:
     ipVersion: 4
     subnet: 10.244.0.0/16
     ips:
     - 10.244.120.10-10.244.120.20
";

/// A store holding every example of `examples/spiderpool`.
fn with_spiderpool_examples() -> Env {
    let env = Env::new();
    for (text, line) in [
        (
            SUBNET,
            "Successfully applied 1 'SpiderSubnet' resource(s)\n",
        ),
        (POOL, "Successfully applied 1 'SpiderIPPool' resource(s)\n"),
        (DUAL, "Successfully applied 2 'SpiderIPPool' resource(s)\n"),
        (
            RESERVED,
            "Successfully applied 1 'SpiderReservedIP' resource(s)\n",
        ),
    ] {
        assert_eq!(env.ok_with_input(&["apply", "-f", "-"], text), line);
    }
    env
}

#[test]
fn spiderpool_examples_apply_and_list_like_kubectl() {
    let env = with_spiderpool_examples();
    let ss = "\
NAME              VERSION   SUBNET          ALLOCATED-IP-COUNT   TOTAL-IP-COUNT
nginx-subnet-v4   4         10.244.0.0/16   11                   25602
";
    assert_eq!(env.ok(&["get", "ss"]), ss);
    assert_eq!(env.ok(&["get", "spidersubnets"]), ss);
    assert_eq!(env.ok(&["get", "ss", "-o", "wide"]), ss);

    let sp = "\
NAME              VERSION   SUBNET                    ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT
dual-v4-ippool    4         172.18.40.0/24            0                    10               false
dual-v6-ippool    6         fc00:f853:ccd:e793::/64   0                    17               false
nginx-v4-ippool   4         10.244.0.0/16             0                    11               false
";
    assert_eq!(env.ok(&["get", "sp"]), sp);
    assert_eq!(env.ok(&["get", "spiderippool"]), sp);
    assert_eq!(
        env.ok(&["get", "sp", "nginx-v4-ippool"]),
        "\
NAME              VERSION   SUBNET          ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT
nginx-v4-ippool   4         10.244.0.0/16   0                    11               false
"
    );

    let sr = "\
NAME                VERSION
nginx-reserved-v4   4
";
    assert_eq!(env.ok(&["get", "sr"]), sr);
    assert_eq!(env.ok(&["get", "spiderreservedips"]), sr);
}

#[test]
fn wide_adds_spiderpools_priority_columns() {
    let env = with_spiderpool_examples();
    let pinned = "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: test-pod-ippool
spec:
  subnet: 10.6.0.0/16
  ips:
  - 10.6.168.101-10.6.168.110
  nodeName: [master, worker1]
  multusName: [kube-system/macvlan-vlan0]
  disable: true
  podAffinity:
    matchLabels:
      ipam.spidernet.io/app-namespace: kube-system
";
    env.ok_with_input(&["apply", "-f", "-"], pinned);
    assert_eq!(
        env.ok(&["get", "sp", "nginx-v4-ippool", "test-pod-ippool", "-o", "wide"]),
        "\
NAME              VERSION   SUBNET          ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE   NODENAME               MULTUSNAME                      APP-NAMESPACE
nginx-v4-ippool   4         10.244.0.0/16   0                    11               false     false
test-pod-ippool   4         10.6.0.0/16     0                    10               false     true      [\"master\",\"worker1\"]   [\"kube-system/macvlan-vlan0\"]   kube-system
"
    );
}

#[test]
fn yaml_and_json_carry_the_counts_as_status() {
    let env = with_spiderpool_examples();
    assert_eq!(
        normalize_generated(&env.ok(&["get", "sp", "nginx-v4-ippool", "-o", "yaml"])),
        "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  creationTimestamp: <creationTimestamp>
  name: nginx-v4-ippool
  resourceVersion: <resourceVersion>
  uid: <uid>
spec:
  default: false
  disable: false
  ipVersion: 4
  ips:
  - 10.244.120.10-10.244.120.20
  subnet: 10.244.0.0/16
status:
  allocatedIPCount: 0
  totalIPCount: 11
"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "ss", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "SpiderSubnetList");
    assert_eq!(
        json["items"][0]["status"],
        serde_json::json!({"allocatedIPCount": 11, "totalIPCount": 25602})
    );
    // What `get -o yaml` prints applies again unchanged.
    let yaml = env.ok(&["get", "sp", "-o", "yaml"]);
    assert_eq!(
        env.ok_with_input(&["apply", "-f", "-"], &yaml),
        "Successfully applied 3 'SpiderIPPool' resource(s)\n"
    );
    // A SpiderReservedIP has no status.
    assert!(!env.ok(&["get", "sr", "-o", "yaml"]).contains("status"));
}

#[test]
fn the_blogs_indentation_is_explained() {
    let env = Env::new();
    assert_eq!(
        env.run_with_input(&["apply", "-f", "-"], POOL_AS_IN_THE_BLOG)
            .stderr,
        "Error: stdin: document 1 (line 1, SpiderIPPool \"nginx-v4-ippool\"): metadata.spec: \
         spec is indented under metadata; move it left so that it lines up with metadata\n"
    );
    assert_eq!(
        env.ok(&["get", "sp"]),
        "NAME   VERSION   SUBNET   ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT\n"
    );
}

#[test]
fn overlapping_pools_are_refused_and_nothing_is_written() {
    let env = with_spiderpool_examples();
    let before = env.ok(&["get", "sp", "-o", "yaml"]);
    let overlapping = "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: nginx-m-ippool
spec:
  subnet: 10.244.0.0/16
  ips:
  - 10.244.120.20-10.244.120.30
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
";
    let run = env.run_with_input(&["apply", "-f", "-"], overlapping);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "Error: SpiderIPPool \"nginx-m-ippool\" is invalid: spec.ips: 10.244.120.20 is also in \
         SpiderIPPool \"nginx-v4-ippool\"; an address may belong to one pool only: take the \
         overlap out of one of the two pools (drop it from ips or list it in excludeIPs)\n\
         IPPool \"default-ipv4-ippool\" is invalid: spec.cidr: 10.244.0.0/16 holds \
         10.244.120.10-10.244.120.20 of SpiderIPPool \"nginx-v4-ippool\"; an address may belong \
         to one pool only: choose a range clear of them, or delete that SpiderIPPool first; \
         spec.cidr: 10.244.0.0/16 holds \
         10.244.120.20-10.244.120.30 of SpiderIPPool \"nginx-m-ippool\"; an address may belong \
         to one pool only: choose a range clear of them, or delete that SpiderIPPool first\n"
    );
    assert_eq!(env.ok(&["get", "sp", "-o", "yaml"]), before);
    assert_eq!(env.ok(&["get", "ippools"]), "NAME   CIDR   SELECTOR\n");

    // Outside the SpiderSubnet's addresses.
    let outside = "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: outside
spec:
  subnet: 10.244.0.0/16
  ips: [10.244.250.1]
";
    assert_eq!(
        env.run_with_input(&["create", "-f", "-"], outside).stderr,
        "Error: SpiderIPPool \"outside\" is invalid: spec.ips: 10.244.250.1 is not offered by \
         SpiderSubnet \"nginx-subnet-v4\" (its ips minus excludeIPs); a pool of subnet \
         10.244.0.0/16 takes its addresses from that SpiderSubnet: add them to the subnet's ips \
         first, or choose addresses it offers\n"
    );
    assert_eq!(env.ok(&["get", "sp", "-o", "yaml"]), before);
}

#[test]
fn validation_errors_name_document_line_and_field() {
    let env = Env::new();
    let bad = "\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata:
  name: good
spec:
  subnet: 10.244.0.0/16
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: bad
spec:
  ipVersion: 6
  subnet: 10.244.0.0/16
  ips:
  - 10.244.120.20-10.244.120.10
  gateway: 10.245.0.1
";
    assert_eq!(
        env.run_with_input(&["apply", "-f", "-"], bad).stderr,
        "Error: stdin: document 2 (line 8, SpiderIPPool \"bad\"): spec.ipVersion: is 6 but \
         subnet 10.244.0.0/16 is an IPv4 network; set ipVersion to 4, or leave it out to take \
         it from subnet\n\
         stdin: document 2 (line 8, SpiderIPPool \"bad\"): spec.ips[0]: \
         \"10.244.120.20-10.244.120.10\": the range ends before it starts; write single \
         addresses such as 10.244.120.10 or ranges such as 10.244.120.10-10.244.120.20\n\
         stdin: document 2 (line 8, SpiderIPPool \"bad\"): spec.gateway: 10.245.0.1 is outside \
         subnet 10.244.0.0/16; the gateway must be an address of the subnet\n"
    );
    assert_eq!(
        env.ok(&["get", "ss"]),
        "NAME   VERSION   SUBNET   ALLOCATED-IP-COUNT   TOTAL-IP-COUNT\n"
    );
}

#[test]
fn delete_and_patch_by_short_name() {
    let env = with_spiderpool_examples();
    assert_eq!(
        env.ok(&[
            "patch",
            "sp",
            "nginx-v4-ippool",
            "-p",
            r#"{"spec":{"default":true}}"#
        ]),
        "Successfully patched 1 'SpiderIPPool' resource\n"
    );
    assert!(env
        .ok(&["get", "sp", "nginx-v4-ippool"])
        .ends_with("   11               true\n"));
    assert_eq!(
        env.ok(&["delete", "sp", "dual-v4-ippool", "dual-v6-ippool"]),
        "Successfully deleted 2 'SpiderIPPool' resource(s)\n"
    );
    assert_eq!(
        env.run_with_input(&["delete", "-f", "-"], RESERVED).stdout,
        "Successfully deleted 1 'SpiderReservedIP' resource(s)\n"
    );
    assert_eq!(
        env.fails(&["get", "ss", "missing"]),
        "Error: resource does not exist: SpiderSubnet(missing); see what exists with `tessera \
         get spidersubnets`\n"
    );
}

#[test]
fn counts_follow_allocations_and_pools_keep_addresses_in_use() {
    let env = with_spiderpool_examples();
    let mut got = Vec::new();
    for (i, node) in ["worker5", "master1", "worker5"].iter().enumerate() {
        let handle = format!("k8s-pod-network.nginx-m-{i}");
        let out = env.ok(&[
            "ipam",
            "assign",
            "--node",
            node,
            "--handle",
            &handle,
            "--pool",
            "spiderippool/nginx-v4-ippool",
        ]);
        got.push(out.trim().to_string());
    }
    // 10.244.120.15 is held by the SpiderReservedIP example.
    assert!(!got.contains(&"10.244.120.15".to_string()), "{got:?}");
    for ip in &got {
        let last: u32 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            ip.starts_with("10.244.120.") && (10..=20).contains(&last),
            "{ip}"
        );
    }
    let sp = env.ok(&["get", "sp", "nginx-v4-ippool"]);
    assert_eq!(
        sp,
        "NAME              VERSION   SUBNET          ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT\n\
         nginx-v4-ippool   4         10.244.0.0/16   3                    11               false\n"
    );
    // A subnet counts the addresses it handed to pools, not those the pools handed out.
    assert!(env
        .ok(&["get", "ss"])
        .contains("   11                   25602"));
    // Shrinking the pool so that an allocated address would leave it is refused.
    let patch = format!(r#"{{"spec": {{"excludeIPs": ["{}"]}}}}"#, got[0]);
    let err = env.fails(&["patch", "sp", "nginx-v4-ippool", "-p", &patch]);
    assert!(
        err.contains("are allocated and would no longer belong to the pool")
            || err.contains("is allocated"),
        "{err}"
    );
    env.ok(&["ipam", "release", "--ip", &got[0]]);
    env.ok(&["patch", "sp", "nginx-v4-ippool", "-p", &patch]);
    assert!(env
        .ok(&["get", "sp", "nginx-v4-ippool"])
        .contains("   2                    10 "));
    env.ok(&["ipam", "check"]);
}

#[test]
fn a_pool_holding_addresses_and_a_subnet_with_pools_are_not_deleted() {
    let env = with_spiderpool_examples();
    let ip = env.ok(&[
        "ipam",
        "assign",
        "--node",
        "worker5",
        "--handle",
        "k8s-pod-network.nginx-0",
        "--pool",
        "spiderippool/nginx-v4-ippool",
    ]);
    let ip = ip.trim();
    let refusal = format!(
        "Error: SpiderIPPool \"nginx-v4-ippool\" still holds 1 allocated address ({ip}) and was \
         not deleted; release it first (delete the pods that use it, or run `tessera ipam \
         release --ip ADDRESS`; `tessera ipam show --ip ADDRESS` names the holder), then delete \
         the pool\n"
    );
    assert_eq!(env.fails(&["delete", "sp", "nginx-v4-ippool"]), refusal);
    let by_file = env.run_with_input(&["delete", "-f", "-"], POOL);
    assert_eq!(by_file.stderr, refusal);
    assert_eq!(
        env.fails(&["delete", "ss", "nginx-subnet-v4"]),
        "Error: SpiderSubnet \"nginx-subnet-v4\" still has SpiderIPPools of its subnet \
         10.244.0.0/16 (\"nginx-v4-ippool\") and was not deleted; delete those pools first, or \
         in the same command\n"
    );
    assert!(env
        .ok(&["get", "sp", "nginx-v4-ippool"])
        .contains("nginx-v4-ippool"));

    env.ok(&["ipam", "release", "--ip", ip]);
    assert_eq!(
        env.ok(&["delete", "sp", "nginx-v4-ippool"]),
        "Successfully deleted 1 'SpiderIPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok(&["delete", "ss", "nginx-subnet-v4"]),
        "Successfully deleted 1 'SpiderSubnet' resource(s)\n"
    );
    env.ok(&["ipam", "check"]);
}
