//! Several default pools, disabling a pool, and migrating to a pool with another CIDR or
//! block size (the DaoCloud IPPool guide).

mod common;

use common::{normalize_generated, Env};

const DEFAULT_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/18
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Always
"#;

const EXTRA_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: extra-ippool
spec:
  cidr: 192.168.0.0/20
  blockSize: 26
  vxlanMode: Always
  natOutgoing: true
"#;

const RECREATED_DEFAULT: &str = include_str!("../../../examples/default-pool-blocksize-27.yaml");

fn assign(env: &Env, handle: &str) -> String {
    env.ok(&["ipam", "assign", "--node", "node1", "--handle", handle])
}

fn two_pools() -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], DEFAULT_POOL);
    assert_eq!(
        env.ok_with_input(&["apply", "-f", "-"], EXTRA_POOL),
        "Successfully applied 1 'IPPool' resource(s)\n"
    );
    env
}

#[test]
fn get_one_pool_as_yaml_shows_the_defaults() {
    let env = two_pools();
    assert_eq!(
        normalize_generated(&env.ok(&["get", "ippools", "default-ipv4-ippool", "-o", "yaml"])),
        "apiVersion: projectcalico.org/v3\n\
         kind: IPPool\n\
         metadata:\n\
        \x20 creationTimestamp: <creationTimestamp>\n\
        \x20 name: default-ipv4-ippool\n\
        \x20 resourceVersion: <resourceVersion>\n\
        \x20 uid: <uid>\n\
         spec:\n\
        \x20 allowedUses:\n\
        \x20 - Workload\n\
        \x20 - Tunnel\n\
        \x20 assignmentMode: Automatic\n\
        \x20 blockSize: 26\n\
        \x20 cidr: 10.244.0.0/18\n\
        \x20 ipipMode: Never\n\
        \x20 natOutgoing: true\n\
        \x20 nodeSelector: all()\n\
        \x20 vxlanMode: Always\n"
    );
    assert_eq!(
        normalize_generated(&env.ok(&["get", "ippool", "extra-ippool", "-o", "json"])),
        "{\n\
        \x20 \"apiVersion\": \"projectcalico.org/v3\",\n\
        \x20 \"kind\": \"IPPool\",\n\
        \x20 \"metadata\": {\n\
        \x20   \"name\": \"extra-ippool\",\n\
        \x20   \"resourceVersion\": \"<resourceVersion>\",\n\
        \x20   \"uid\": \"<uid>\",\n\
        \x20   \"creationTimestamp\": \"<creationTimestamp>\"\n\
        \x20 },\n\
        \x20 \"spec\": {\n\
        \x20   \"cidr\": \"192.168.0.0/20\",\n\
        \x20   \"blockSize\": 26,\n\
        \x20   \"ipipMode\": \"Never\",\n\
        \x20   \"vxlanMode\": \"Always\",\n\
        \x20   \"natOutgoing\": true,\n\
        \x20   \"nodeSelector\": \"all()\",\n\
        \x20   \"allowedUses\": [\n\
        \x20     \"Workload\",\n\
        \x20     \"Tunnel\"\n\
        \x20   ],\n\
        \x20   \"assignmentMode\": \"Automatic\"\n\
        \x20 }\n\
         }\n"
    );
}

#[test]
fn disabled_pool_hands_out_nothing_new() {
    let env = two_pools();
    // Both pools select every node; the first by name serves first.
    assert_eq!(assign(&env, "before"), "10.244.0.1\n");
    assert_eq!(
        env.ok(&[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec": {"disabled": true}}"#
        ]),
        "Successfully patched 1 'IPPool' resource\n"
    );
    assert_eq!(
        env.ok(&["get", "ippool", "-o", "wide"]),
        "NAME                  CIDR             NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n\
         default-ipv4-ippool   10.244.0.0/18    true   Never      Always      true       false              all()\n\
         extra-ippool          192.168.0.0/20   true   Never      Always      false      false              all()\n"
    );
    assert_eq!(assign(&env, "after-1"), "192.168.0.1\n");
    assert_eq!(assign(&env, "after-2"), "192.168.0.2\n");
    // Naming the disabled pool explicitly is refused with the way out.
    assert_eq!(
        env.fails(&[
            "ipam",
            "assign",
            "--node",
            "node1",
            "--handle",
            "x",
            "--pool",
            "default-ipv4-ippool"
        ]),
        "Error: IP pool \"default-ipv4-ippool\" is disabled; enable it with `tessera patch \
         ippool default-ipv4-ippool -p '{\"spec\":{\"disabled\":false}}'` or choose another \
         pool\n"
    );
    assert_eq!(
        env.ok(&["status"]),
        format!(
            "Datastore: sqlite:{} (from --datastore)\n\
             IP pools: 2 (1 enabled)\n\
             Nodes: 0\n\
             Namespaces: 0\n\
             Blocks: 2\n\
             Allocated addresses: 3\n\
             Handles: 3\n",
            env.db().display()
        )
    );
}

#[test]
fn cidr_and_block_size_cannot_change_on_apply() {
    let env = two_pools();
    let changed = DEFAULT_POOL.replace("10.244.0.0/18", "10.245.0.0/18");
    let run = env.run_with_input(&["apply", "-f", "-"], &changed);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            1,
            "",
            "Error: IPPool \"default-ipv4-ippool\" is invalid: spec.cidr: cannot be changed after \
             the pool is created (it is 10.244.0.0/18, the new manifest says 10.245.0.0/18); \
             create a new pool and migrate (see docs)\n"
        )
    );
    let run = env.run_with_input(&["apply", "-f", "-"], RECREATED_DEFAULT);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error: IPPool \"default-ipv4-ippool\" is invalid: spec.cidr: cannot be changed after \
             the pool is created (it is 10.244.0.0/18, the new manifest says 192.0.0.0/16); \
             create a new pool and migrate (see docs); spec.blockSize: cannot be changed after \
             the pool is created (it is 26, the new manifest says 27); create a new pool and \
             migrate (see docs)\n"
        )
    );
    assert_eq!(
        env.ok(&["get", "ippool"]),
        "NAME                  CIDR             SELECTOR\n\
         default-ipv4-ippool   10.244.0.0/18    all()\n\
         extra-ippool          192.168.0.0/20   all()\n"
    );
}

#[test]
fn migrating_to_a_new_block_size() {
    let env = two_pools();
    assert_eq!(assign(&env, "old-pod"), "10.244.0.1\n");
    env.ok(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "-p",
        r#"{"spec": {"disabled": true}}"#,
    ]);
    assert_eq!(assign(&env, "temp-pod"), "192.168.0.1\n");
    // The old pod has not been restarted yet: its block outlives the pool.
    assert_eq!(
        env.ok(&["delete", "ippool", "default-ipv4-ippool"]),
        "Successfully deleted 1 'IPPool' resource(s)\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show"]),
        "+----------+-------------------------+-----------+------------+--------------+\n\
         | GROUPING |          CIDR           | IPS TOTAL | IPS IN USE |   IPS FREE   |\n\
         +----------+-------------------------+-----------+------------+--------------+\n\
         | IP Pool  | 192.168.0.0/20          |      4096 | 1 (0%)     | 4095 (100%)  |\n\
         | IP Pool  | 10.244.0.0/18 (deleted) |     16384 | 1 (0%)     | 16383 (100%) |\n\
         +----------+-------------------------+-----------+------------+--------------+\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "10.244.0.1"]),
        "IP 10.244.0.1 is in use\n\
         Attributes:\n\
        \x20 handle: old-pod\n\
        \x20 node: node1\n"
    );
    assert_eq!(
        env.ok_with_input(&["create", "-f", "-"], RECREATED_DEFAULT),
        "Successfully created 1 'IPPool' resource(s)\n"
    );
    env.ok(&[
        "patch",
        "ippool",
        "extra-ippool",
        "-p",
        r#"{"spec": {"disabled": true}}"#,
    ]);
    assert_eq!(assign(&env, "new-pod"), "192.0.0.1\n");
    assert_eq!(
        env.ok(&["ipam", "release", "--handle", "old-pod"]),
        "Released 10.244.0.1 (handle old-pod)\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--show-blocks"]),
        "+----------+----------------+-----------+------------+--------------+\n\
         | GROUPING |      CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |\n\
         +----------+----------------+-----------+------------+--------------+\n\
         | IP Pool  | 192.0.0.0/16   |     65536 | 1 (0%)     | 65535 (100%) |\n\
         | Block    | 192.0.0.0/27   |        32 | 1 (3%)     | 31 (97%)     |\n\
         | IP Pool  | 192.168.0.0/20 |      4096 | 1 (0%)     | 4095 (100%)  |\n\
         | Block    | 192.168.0.0/26 |        64 | 1 (2%)     | 63 (98%)     |\n\
         +----------+----------------+-----------+------------+--------------+\n"
    );
}
