//! Per-namespace pools with small blocks (Calico v3.3's blockSize and namespace annotations).

mod common;

use common::Env;

const POOLS_YAML: &str = include_str!("../../../examples/namespace-pools.yaml");

const NODE: &str = "casey-crc-kadm-node-0";

fn assign(env: &Env, namespace: &str, pod: &str) -> String {
    env.ok(&[
        "ipam",
        "assign",
        "--node",
        NODE,
        "--handle",
        &format!("k8s-pod-network.{namespace}.{pod}"),
        "--namespace",
        namespace,
        "--pod",
        pod,
    ])
}

#[test]
fn namespaces_draw_from_the_pools_their_annotation_names() {
    let env = Env::new();
    let pools = env.write_file("pools.yaml", POOLS_YAML);
    assert_eq!(
        env.ok(&["apply", "-f", &pools]),
        "Successfully applied 2 'IPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok(&[
            "annotate",
            "namespace",
            "external-ns",
            r#"cni.projectcalico.org/ipv4pools=["external-pool"]"#
        ]),
        "namespace/external-ns annotated\n"
    );
    assert_eq!(
        env.ok(&[
            "annotate",
            "ns",
            "internal-ns",
            r#"cni.projectcalico.org/ipv4pools=["internal-pool"]"#
        ]),
        "namespace/internal-ns annotated\n"
    );
    assert_eq!(
        env.ok(&["get", "namespaces"]),
        "NAME\nexternal-ns\ninternal-ns\n"
    );

    let external: Vec<String> = ["8pvlc", "lrr2l", "qt6nn"]
        .iter()
        .map(|p| assign(&env, "external-ns", &format!("nginx-65899c769f-{p}")))
        .collect();
    let internal: Vec<String> = ["jxdd6", "xqzsc", "zbbm5"]
        .iter()
        .map(|p| assign(&env, "internal-ns", &format!("nginx-65899c769f-{p}")))
        .collect();
    // The pools' network addresses (.0) are never handed out.
    assert_eq!(external, ["172.16.0.1\n", "172.16.0.2\n", "172.16.0.3\n"]);
    assert_eq!(
        internal,
        ["192.169.0.1\n", "192.169.0.2\n", "192.169.0.3\n"]
    );

    // /29 blocks: 8 addresses each.
    assert_eq!(
        env.ok(&["ipam", "show", "--show-blocks"]),
        "+----------+----------------+-----------+------------+-----------+\n\
         | GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS FREE  |\n\
         +----------+----------------+-----------+------------+-----------+\n\
         | IP Pool  | 172.16.0.0/26  |        64 | 3 (5%)     | 61 (95%)  |\n\
         | Block    | 172.16.0.0/29  |         8 | 3 (38%)    | 5 (62%)   |\n\
         | IP Pool  | 192.169.0.0/24 |       256 | 3 (1%)     | 253 (99%) |\n\
         | Block    | 192.169.0.0/29 |         8 | 3 (38%)    | 5 (62%)   |\n\
         +----------+----------------+-----------+------------+-----------+\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "172.16.0.2"]),
        "IP 172.16.0.2 is in use\n\
         Attributes:\n\
        \x20 handle: k8s-pod-network.external-ns.nginx-65899c769f-lrr2l\n\
        \x20 namespace: external-ns\n\
        \x20 pod: nginx-65899c769f-lrr2l\n\
        \x20 node: casey-crc-kadm-node-0\n"
    );
}

#[test]
fn a_full_namespace_pool_does_not_spill_into_other_pools() {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], POOLS_YAML);
    env.ok(&[
        "annotate",
        "namespace",
        "external-ns",
        r#"cni.projectcalico.org/ipv4pools=["external-pool"]"#,
    ]);
    // 64 addresses minus the network and broadcast addresses.
    let out = env.ok(&[
        "ipam",
        "assign",
        "--node",
        NODE,
        "--handle",
        "bulk",
        "--namespace",
        "external-ns",
        "--ipv4",
        "62",
    ]);
    assert_eq!(out.lines().count(), 62);
    assert!(out.lines().all(|ip| ip.starts_with("172.16.0.")), "{out}");
    let err = env.fails(&[
        "ipam",
        "assign",
        "--node",
        NODE,
        "--handle",
        "one-more",
        "--namespace",
        "external-ns",
    ]);
    assert!(
        err.starts_with(
            "Error: no free IPv4 address for node \"casey-crc-kadm-node-0\" in pool(s) external-pool"
        ),
        "{err}"
    );
}

#[test]
fn annotations_keep_values_with_quotes_and_equals_signs() {
    let env = Env::new();
    env.ok(&[
        "annotate",
        "namespace",
        "ns1",
        r#"note=a=b "quoted" {"json": [1, 2]}"#,
        "plain=x",
    ]);
    assert_eq!(
        env.fails(&["annotate", "namespace", "ns1", "plain=y"]),
        "Error: Namespace \"ns1\": metadata.annotations.plain: already has the value \"x\"; \
         pass --overwrite to set it to \"y\"\n"
    );
    env.ok(&["annotate", "namespace", "ns1", "plain-"]);
    assert_eq!(
        common::normalize_generated(&env.ok(&["get", "namespace", "ns1", "-o", "yaml"])),
        "apiVersion: v1\n\
         kind: Namespace\n\
         metadata:\n\
        \x20 annotations:\n\
        \x20   note: 'a=b \"quoted\" {\"json\": [1, 2]}'\n\
        \x20 creationTimestamp: <creationTimestamp>\n\
        \x20 name: ns1\n\
        \x20 resourceVersion: <resourceVersion>\n\
        \x20 uid: <uid>\n"
    );
}
