//! Topology-aware pools (Calico's rack example): one pool per rack selected by node labels.

mod common;

use common::Env;

const RACK_0: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-0-ippool
spec:
  cidr: 192.168.0.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == "0"
"#;

const RACK_1: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-1-ippool
spec:
  cidr: 192.168.1.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == "1"
"#;

const DEFAULT_POOL: &str = include_str!("../../../examples/default-pool.yaml");

/// Creates the rack pools and labels the four nodes as the walkthrough does.
fn racks() -> Env {
    let env = Env::new();
    assert_eq!(
        env.ok_with_input(&["create", "-f", "-"], RACK_0),
        "Successfully created 1 'IPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok_with_input(&["create", "-f", "-"], RACK_1),
        "Successfully created 1 'IPPool' resource(s)\n"
    );
    for (node, rack) in [
        ("kube-node-0", "0"),
        ("kube-node-1", "0"),
        ("kube-node-2", "1"),
        ("kube-node-3", "1"),
    ] {
        assert_eq!(
            env.ok(&["label", "nodes", node, &format!("rack={rack}")]),
            format!("node/{node} labeled\n")
        );
    }
    env
}

#[test]
fn default_pool_is_deleted_before_rack_pools_are_created() {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], DEFAULT_POOL);
    assert_eq!(
        env.ok(&["get", "ippool", "-o", "wide"]),
        "NAME                  CIDR             NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n\
         default-ipv4-ippool   192.168.0.0/16   true   Always     Never       false      false              all()\n"
    );
    // The /16 contains the rack /24s, so a rack pool cannot be created while it exists.
    let err = env.run_with_input(&["create", "-f", "-"], RACK_0);
    assert_eq!(
        (err.code, err.stdout.as_str(), err.stderr.as_str()),
        (
            1,
            "",
            "Error: IPPool \"rack-0-ippool\" is invalid: spec.cidr: 192.168.0.0/24 overlaps \
             192.168.0.0/16 of IPPool \"default-ipv4-ippool\"; pools may not overlap: choose a \
             free range, or disable and delete the other pool first\n"
        )
    );
    assert_eq!(
        env.ok(&["delete", "ippools", "default-ipv4-ippool"]),
        "Successfully deleted 1 'IPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok_with_input(&["create", "-f", "-"], RACK_0),
        "Successfully created 1 'IPPool' resource(s)\n"
    );
}

#[test]
fn rack_pools_show_like_calicoctl() {
    let env = racks();
    assert_eq!(
        env.ok(&["get", "ippool", "-o", "wide"]),
        "NAME            CIDR             NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n\
         rack-0-ippool   192.168.0.0/24   true   Always     Never       false      false              rack == \"0\"\n\
         rack-1-ippool   192.168.1.0/24   true   Always     Never       false      false              rack == \"1\"\n"
    );
    assert_eq!(
        env.ok(&["get", "ipp"]),
        "NAME            CIDR             SELECTOR\n\
         rack-0-ippool   192.168.0.0/24   rack == \"0\"\n\
         rack-1-ippool   192.168.1.0/24   rack == \"1\"\n"
    );
    assert_eq!(
        env.ok(&["get", "nodes", "-o", "wide"]),
        "NAME          LABELS\n\
         kube-node-0   rack=0\n\
         kube-node-1   rack=0\n\
         kube-node-2   rack=1\n\
         kube-node-3   rack=1\n"
    );
}

#[test]
fn each_node_gets_an_address_from_its_racks_pool() {
    let env = racks();
    let mut got = Vec::new();
    for (i, pod) in ["prx4z", "s7qw6", "w7r7g", "62lnf"].iter().enumerate() {
        let node = format!("kube-node-{i}");
        let ip = env.ok(&[
            "ipam",
            "assign",
            "--node",
            &node,
            "--handle",
            &format!("k8s-pod-network.{pod}"),
            "--namespace",
            "default",
            "--pod",
            &format!("nginx-5c7588df-{pod}"),
        ]);
        got.push(ip);
    }
    // A fifth pod lands on kube-node-2 again, in the block that node already owns.
    got.push(env.ok(&[
        "ipam",
        "assign",
        "--node",
        "kube-node-2",
        "--handle",
        "k8s-pod-network.pnsvv",
    ]));
    assert_eq!(
        got,
        [
            "192.168.0.1\n",
            "192.168.0.64\n",
            "192.168.1.1\n",
            "192.168.1.64\n",
            "192.168.1.2\n"
        ]
    );

    assert_eq!(
        env.ok(&["ipam", "show"]),
        "+----------+----------------+-----------+------------+-----------+\n\
         | GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS FREE  |\n\
         +----------+----------------+-----------+------------+-----------+\n\
         | IP Pool  | 192.168.0.0/24 |       256 | 2 (1%)     | 254 (99%) |\n\
         | IP Pool  | 192.168.1.0/24 |       256 | 3 (1%)     | 253 (99%) |\n\
         +----------+----------------+-----------+------------+-----------+\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--show-blocks"]),
        "+----------+-----------------+-----------+------------+-----------+\n\
         | GROUPING |      CIDR       | IPS TOTAL | IPS IN USE | IPS FREE  |\n\
         +----------+-----------------+-----------+------------+-----------+\n\
         | IP Pool  | 192.168.0.0/24  |       256 | 2 (1%)     | 254 (99%) |\n\
         | Block    | 192.168.0.0/26  |        64 | 1 (2%)     | 63 (98%)  |\n\
         | Block    | 192.168.0.64/26 |        64 | 1 (2%)     | 63 (98%)  |\n\
         | IP Pool  | 192.168.1.0/24  |       256 | 3 (1%)     | 253 (99%) |\n\
         | Block    | 192.168.1.0/26  |        64 | 2 (3%)     | 62 (97%)  |\n\
         | Block    | 192.168.1.64/26 |        64 | 1 (2%)     | 63 (98%)  |\n\
         +----------+-----------------+-----------+------------+-----------+\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.0.64"]),
        "IP 192.168.0.64 is in use\n\
         Attributes:\n\
        \x20 handle: k8s-pod-network.s7qw6\n\
        \x20 namespace: default\n\
        \x20 pod: nginx-5c7588df-s7qw6\n\
        \x20 node: kube-node-1\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.0.2"]),
        "IP 192.168.0.2 is not assigned\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.2.1"]),
        "IP 192.168.2.1 is not in any IP pool\n"
    );
}

#[test]
fn unlabeled_node_gets_no_address_and_is_told_why() {
    let env = racks();
    let err = env.fails(&["ipam", "assign", "--node", "kube-node-9", "--handle", "h"]);
    assert_eq!(
        err,
        "Error: no enabled IPv4 IP pool selects node \"kube-node-9\"; create one with a \
         matching nodeSelector, or label the node\n"
    );
}

#[test]
fn relabeling_needs_overwrite_and_removal_is_reported() {
    let env = racks();
    assert_eq!(
        env.fails(&["label", "node", "kube-node-0", "rack=1"]),
        "Error: Node \"kube-node-0\": metadata.labels.rack: already has the value \"0\"; pass \
         --overwrite to set it to \"1\"\n"
    );
    assert_eq!(
        env.ok(&["label", "node", "kube-node-0", "rack=1", "--overwrite"]),
        "node/kube-node-0 labeled\n"
    );
    assert_eq!(
        env.ok(&["label", "node", "kube-node-0", "rack=1"]),
        "node/kube-node-0 not labeled\n"
    );
    assert_eq!(
        env.ok(&["label", "node", "kube-node-0", "rack-"]),
        "node/kube-node-0 unlabeled\n"
    );
    assert_eq!(
        env.ok(&["get", "node", "kube-node-0", "-o", "wide"]),
        "NAME          LABELS\nkube-node-0   <none>\n"
    );
}

#[test]
fn deleting_a_node_releases_its_block_affinities() {
    let env = racks();
    env.ok(&["ipam", "assign", "--node", "kube-node-0", "--handle", "a"]);
    env.ok(&["ipam", "assign", "--node", "kube-node-1", "--handle", "b"]);
    env.ok(&["ipam", "release", "--handle", "b"]);
    assert_eq!(
        env.ok(&["delete", "nodes", "kube-node-0", "kube-node-1"]),
        "Successfully deleted 2 'Node' resource(s)\n"
    );
    // kube-node-1's block was empty and is gone; kube-node-0's still holds an address and
    // stays, without an owner.
    assert_eq!(
        env.ok(&["ipam", "check"]),
        "Checking IPAM for inconsistencies...\n\
         Found 1 IPAM blocks.\n\
         Found 1 IPAM handles.\n\
         Found 1 allocated addresses.\n\
        \x20 note: block 192.168.0.0/26 has no node affinity\n\
         Check complete; found 0 problems.\n"
    );
    assert_eq!(
        env.fails(&["delete", "node", "kube-node-0"]),
        "Error: resource does not exist: Node(kube-node-0); see what exists with `tessera get nodes`\n"
    );
    assert_eq!(
        env.ok(&["delete", "node", "kube-node-0", "--skip-not-exists"]),
        "Successfully deleted 0 'Node' resource(s)\n"
    );
}
