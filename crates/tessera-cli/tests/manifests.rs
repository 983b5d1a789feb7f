//! Manifest commands beyond the example scenarios: mixed kinds, replace, delete -f, JSON input, lists and
//! IPv6 pools.

mod common;

use common::{normalize_generated, Env};

const MIXED: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: v4
spec:
  cidr: 10.0.0.0/24
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: worker-1
  labels:
    zone: west
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: v6
spec:
  cidr: fd00:10::/48
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels:
    tier: gold
"#;

#[test]
fn mixed_kinds_are_counted_per_kind_in_order_of_appearance() {
    let env = Env::new();
    let file = env.write_file("all.yaml", MIXED);
    assert_eq!(
        env.ok(&["apply", "-f", &file]),
        "Successfully applied 2 'IPPool' resource(s)\n\
         Successfully applied 1 'Node' resource(s)\n\
         Successfully applied 1 'Namespace' resource(s)\n"
    );
    // Applying the same file again changes nothing and says the same, as calicoctl does.
    assert_eq!(
        env.ok(&["apply", "-f", &file]),
        "Successfully applied 2 'IPPool' resource(s)\n\
         Successfully applied 1 'Node' resource(s)\n\
         Successfully applied 1 'Namespace' resource(s)\n"
    );
    assert_eq!(
        env.fails(&["create", "-f", &file]),
        "Error: resource already exists: IPPool(v4); use `tessera apply` or `tessera replace` to change it\n\
         resource already exists: Node(worker-1); use `tessera apply` or `tessera replace` to change it\n\
         resource already exists: IPPool(v6); use `tessera apply` or `tessera replace` to change it\n\
         resource already exists: Namespace(team-a); use `tessera apply` or `tessera replace` to change it\n"
    );
    assert_eq!(
        env.ok(&["get", "namespaces", "-o", "wide"]),
        "NAME     LABELS\nteam-a   tier=gold\n"
    );
    assert_eq!(
        env.ok(&["delete", "-f", &file]),
        "Successfully deleted 2 'IPPool' resource(s)\n\
         Successfully deleted 1 'Node' resource(s)\n\
         Successfully deleted 1 'Namespace' resource(s)\n"
    );
    assert_eq!(env.ok(&["get", "nodes"]), "NAME\n");
}

#[test]
fn replace_needs_an_existing_resource() {
    let env = Env::new();
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.0.0.0/24\n";
    assert_eq!(
        env.run_with_input(&["replace", "-f", "-"], pool).stderr,
        "Error: resource does not exist: IPPool(p); see what exists with `tessera get ippools`\n"
    );
    env.ok_with_input(&["create", "-f", "-"], pool);
    let disabled = format!("{pool}  disabled: true\n");
    assert_eq!(
        env.ok_with_input(&["replace", "-f", "-"], &disabled),
        "Successfully replaced 1 'IPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok(&["get", "ippool", "-o", "wide"]),
        "NAME   CIDR          NAT     IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n\
         p      10.0.0.0/24   false   Never      Never       true       false              all()\n"
    );
}

#[test]
fn json_input_and_list_output() {
    let env = Env::new();
    let json = r#"{"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "items": [
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
         "metadata": {"name": "a"}, "spec": {"cidr": "10.1.0.0/16", "blockSize": 24}},
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
         "metadata": {"name": "b"}, "spec": {"cidr": "10.2.0.0/16", "disableBGPExport": true}}
    ]}"#;
    assert_eq!(
        env.ok_with_input(&["create", "-f", "-"], json),
        "Successfully created 2 'IPPool' resource(s)\n"
    );
    let listed = env.ok(&["get", "ippools", "-o", "yaml"]);
    assert_eq!(
        normalize_generated(&listed),
        "apiVersion: projectcalico.org/v3\n\
         items:\n\
         - apiVersion: projectcalico.org/v3\n\
        \x20 kind: IPPool\n\
        \x20 metadata:\n\
        \x20   creationTimestamp: <creationTimestamp>\n\
        \x20   name: a\n\
        \x20   resourceVersion: <resourceVersion>\n\
        \x20   uid: <uid>\n\
        \x20 spec:\n\
        \x20   allowedUses:\n\
        \x20   - Workload\n\
        \x20   - Tunnel\n\
        \x20   assignmentMode: Automatic\n\
        \x20   blockSize: 24\n\
        \x20   cidr: 10.1.0.0/16\n\
        \x20   ipipMode: Never\n\
        \x20   nodeSelector: all()\n\
        \x20   vxlanMode: Never\n\
         - apiVersion: projectcalico.org/v3\n\
        \x20 kind: IPPool\n\
        \x20 metadata:\n\
        \x20   creationTimestamp: <creationTimestamp>\n\
        \x20   name: b\n\
        \x20   resourceVersion: <resourceVersion>\n\
        \x20   uid: <uid>\n\
        \x20 spec:\n\
        \x20   allowedUses:\n\
        \x20   - Workload\n\
        \x20   - Tunnel\n\
        \x20   assignmentMode: Automatic\n\
        \x20   blockSize: 26\n\
        \x20   cidr: 10.2.0.0/16\n\
        \x20   disableBGPExport: true\n\
        \x20   ipipMode: Never\n\
        \x20   nodeSelector: all()\n\
        \x20   vxlanMode: Never\n\
         kind: IPPoolList\n"
    );
    // What `get -o yaml` prints applies again unchanged.
    assert_eq!(
        env.ok_with_input(&["apply", "-f", "-"], &listed),
        "Successfully applied 2 'IPPool' resource(s)\n"
    );
    let as_json: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "ippool", "-o", "json"])).unwrap();
    assert_eq!(as_json["kind"], "IPPoolList");
    assert_eq!(as_json["items"][1]["spec"]["disableBGPExport"], true);
}

#[test]
fn ipv6_pools_show_full_totals() {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], MIXED);
    assert_eq!(
        env.ok(&[
            "ipam", "assign", "--node", "worker-1", "--handle", "dual", "--ipv4", "1", "--ipv6",
            "1"
        ]),
        "10.0.0.1\nfd00:10::1\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--show-blocks"]),
        "+----------+---------------+---------------------------+------------+----------------------------------+\n\
         | GROUPING |     CIDR      |         IPS TOTAL         | IPS IN USE |             IPS FREE             |\n\
         +----------+---------------+---------------------------+------------+----------------------------------+\n\
         | IP Pool  | 10.0.0.0/24   |                       256 | 1 (0%)     | 255 (100%)                       |\n\
         | Block    | 10.0.0.0/26   |                        64 | 1 (2%)     | 63 (98%)                         |\n\
         | IP Pool  | fd00:10::/48  | 1208925819614629174706176 | 1 (0%)     | 1208925819614629174706175 (100%) |\n\
         | Block    | fd00:10::/122 |                        64 | 1 (2%)     | 63 (98%)                         |\n\
         +----------+---------------+---------------------------+------------+----------------------------------+\n"
    );
}

/// `count` IPPools of one /24 each, as YAML documents.
fn many_pools_yaml(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p-{i}\n\
                 spec:\n  cidr: 10.{}.{}.0/24\n  nodeSelector: rack == \"{i}\"\n",
                i / 256,
                i % 256
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `count` Namespaces as a stream of JSON objects, one line each.
fn many_namespaces_json(count: usize) -> String {
    (0..count)
        .map(|i| format!("{{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {{\"name\": \"ns-{i}\"}}}}\n"))
        .collect()
}

/// A big apply works and checks every document; how long it takes is measured in
/// docs/BENCHMARKS.md, not asserted here.
#[test]
fn ten_thousand_documents_apply_and_the_last_is_still_checked() {
    let env = Env::new();
    let pools = env.write_file("pools.yaml", &many_pools_yaml(10_000));
    let namespaces = env.write_file("namespaces.json", &many_namespaces_json(10_000));
    for (file, want) in [
        (&pools, "Successfully applied 10000 'IPPool' resource(s)\n"),
        (
            &namespaces,
            "Successfully applied 10000 'Namespace' resource(s)\n",
        ),
    ] {
        assert_eq!(env.ok(&["apply", "-f", file]), want);
    }
    // A mistake in the last document is still found, on its own line.
    let mut bad = many_pools_yaml(10_000);
    bad.push_str("---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: last\nspec:\n  cidr: 10.39.15.0/24\n");
    let bad = env.write_file("bad.yaml", &bad);
    let err = env.fails(&["apply", "-f", &bad]);
    assert_eq!(
        err,
        "Error: IPPool \"last\" is invalid: spec.cidr: 10.39.15.0/24 overlaps 10.39.15.0/24 of \
         IPPool \"p-9999\"; pools may not overlap: choose a free range, or disable and delete \
         the other pool first\n"
    );
}
