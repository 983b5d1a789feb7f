//! `tessera plan` against the allocator: the forecast's "serves K nodes" and "breaks first
//! at …" are where `tessera ipam assign` really starts to refuse.

mod common;

use common::Env;

const POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: small
spec:
  cidr: 10.1.0.0/24
  blockSize: 28
"#;

/// A /24 of /28 blocks, strictAffinity on (no borrowing) and maxBlocksPerHost=2.
fn small_pool() -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], POOL);
    env.ok(&[
        "ipam",
        "configure",
        "--strictaffinity=true",
        "--max-blocks-per-host",
        "2",
    ]);
    env
}

fn forecast(env: &Env, nodes: &str, pods: &str) -> String {
    env.ok(&[
        "plan",
        "--nodes",
        nodes,
        "--pods-per-node",
        pods,
        "--cidr",
        "10.1.0.0/24",
        "--block-size",
        "28",
        "--max-blocks-per-host",
        "2",
        "--strict-affinity",
    ])
}

fn assign(env: &Env, node: &str, count: u32) -> common::Run {
    env.run(&[
        "ipam",
        "assign",
        "--node",
        node,
        "--handle",
        &format!("h-{node}"),
        "--ipv4",
        &count.to_string(),
    ])
}

/// Nodes n1..=n`served` each get `pods` addresses from the allocator; the next node is refused.
fn nodes_served_then_refused(env: &Env, served: u32, pods: u32) {
    for node in 1..=served {
        let run = assign(env, &format!("n{node}"), pods);
        assert_eq!(
            run.code, 0,
            "node {node} should get {pods} addresses: {}",
            run.stderr
        );
    }
    let next = served + 1;
    let run = assign(env, &format!("n{next}"), pods);
    assert_ne!(run.code, 0, "node {next} should be refused: {}", run.stdout);
}

#[test]
fn blocks_run_out_where_the_plan_says() {
    let env = small_pool();
    let text = forecast(&env, "9", "20");
    assert!(
        text.contains("Blocks per node:      2 (for 20 pods)"),
        "{text}"
    );
    assert!(
        text.contains("Serves:               8 nodes, 160 pods"),
        "{text}"
    );
    assert!(
        text.contains("breaks first at node 9: every block is claimed"),
        "{text}"
    );
    nodes_served_then_refused(&env, 8, 20);
}

#[test]
fn full_blocks_run_out_one_node_early() {
    let env = small_pool();
    let text = forecast(&env, "16", "16");
    assert!(
        text.contains("Serves:               14 nodes, 224 pods"),
        "{text}"
    );
    assert!(text.contains("breaks first at node 15"), "{text}");
    nodes_served_then_refused(&env, 14, 16);
}

#[test]
fn per_host_limit_refuses_where_the_plan_says() {
    let env = small_pool();
    let text = forecast(&env, "1", "40");
    assert!(
        text.contains("breaks first at the per-host limit"),
        "{text}"
    );
    assert!(text.contains("at most 31 pods in 2 blocks"), "{text}");
    assert_eq!(assign(&env, "n1", 31).code, 0);
    assert_ne!(assign(&env, "n1", 1).code, 0);
}

#[test]
fn bad_input_names_the_flag() {
    let env = Env::new();
    let err = env.fails(&["plan", "--nodes", "0", "--pods-per-node", "10"]);
    assert_eq!(err, "Error: --nodes must be at least 1\n");
    let err = env.fails(&[
        "plan",
        "--nodes",
        "3",
        "--pods-per-node",
        "10",
        "--cidr",
        "10.0.0.0/16",
        "--ipv6",
    ]);
    assert!(err.contains("--cidr 10.0.0.0/16 is IPv4"), "{err}");
    let err = env.fails(&[
        "plan",
        "--nodes",
        "3",
        "--pods-per-node",
        "10",
        "--block-size",
        "64",
    ]);
    assert!(
        err.contains("--block-size 64 is out of range for IPv4"),
        "{err}"
    );
}
