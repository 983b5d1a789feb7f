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
    small_pool_with(true)
}

/// A /24 of /28 blocks with maxBlocksPerHost=2 and strictAffinity as given.
fn small_pool_with(strict_affinity: bool) -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], POOL);
    env.ok(&[
        "ipam",
        "configure",
        &format!("--strictaffinity={strict_affinity}"),
        "--max-blocks-per-host",
        "2",
    ]);
    env
}

/// The offline forecast for the small pool, strictAffinity on.
fn forecast(env: &Env, nodes: &str, pods: &str) -> String {
    forecast_with(env, nodes, pods, &["--strict-affinity"])
}

/// The offline forecast for the small pool, with `more` flags.
fn forecast_with(env: &Env, nodes: &str, pods: &str, more: &[&str]) -> String {
    let mut args = vec![
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
    ];
    args.extend_from_slice(more);
    env.ok(&args)
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
    more_nodes_served_then_refused(env, 0, served, pods);
}

/// Nodes n`first + 1`..=n`first + served` each get `pods` addresses; the next is refused.
fn more_nodes_served_then_refused(env: &Env, first: u32, served: u32, pods: u32) {
    for node in first + 1..=first + served {
        let run = assign(env, &format!("n{node}"), pods);
        assert_eq!(
            run.code, 0,
            "node {node} should get {pods} addresses: {}",
            run.stderr
        );
    }
    let next = first + served + 1;
    let run = assign(env, &format!("n{next}"), pods);
    assert_ne!(run.code, 0, "node {next} should be refused: {}", run.stdout);
}

/// Nodes n1..=n`count` each take `pods` addresses.
fn fill(env: &Env, count: u32, pods: u32) {
    for node in 1..=count {
        let run = assign(env, &format!("n{node}"), pods);
        assert_eq!(run.code, 0, "node {node}: {}", run.stderr);
    }
}

fn line<'t>(text: &'t str, label: &str) -> &'t str {
    text.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
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

#[test]
fn without_strict_affinity_the_plan_counts_borrowed_addresses() {
    let env = small_pool_with(false);
    let text = forecast_with(&env, "20", "20", &[]);
    assert!(
        text.contains("Serves:               12 nodes, 240 pods (8 from their own blocks"),
        "{text}"
    );
    assert!(
        text.contains("breaks first at node 13: the pool has no free address left"),
        "{text}"
    );
    nodes_served_then_refused(&env, 12, 20);
}

#[test]
fn live_pool_takes_as_many_more_nodes_as_forecast() {
    let env = small_pool();
    fill(&env, 3, 20);
    let text = env.ok(&["plan", "--pool", "small"]);
    assert!(
        line(&text, "Pods per node:").contains("20 measured (60 addresses in use / 3 nodes"),
        "{text}"
    );
    assert_eq!(
        line(&text, "Blocks:"),
        "Blocks:               6 in use of 16, 10 free"
    );
    assert_eq!(
        line(&text, "More nodes:"),
        "More nodes:           5 at 20 pods per node, each claiming 2 blocks"
    );
    assert!(
        line(&text, "Runs out first:").contains("new node 6 finds no free block left"),
        "{text}"
    );
    more_nodes_served_then_refused(&env, 3, 5, 20);
}

#[test]
fn live_pool_counts_the_last_blocks_kept_back_address() {
    let env = small_pool();
    fill(&env, 3, 16);
    let text = env.ok(&["plan", "--pool", "small"]);
    assert_eq!(
        line(&text, "Blocks:"),
        "Blocks:               4 in use of 16, 12 free"
    );
    assert!(
        line(&text, "More nodes:").contains("11 at 16 pods per node"),
        "{text}"
    );
    more_nodes_served_then_refused(&env, 3, 11, 16);
}

#[test]
fn live_pool_without_strict_affinity_borrows_once_no_block_is_free() {
    let env = small_pool_with(false);
    fill(&env, 3, 20);
    let text = env.ok(&["plan", "--pool", "small"]);
    assert_eq!(
        line(&text, "More nodes:"),
        "More nodes:           9 (5 in free blocks at 20 pods per node, each claiming 2 \
         blocks, then 4 borrowing addresses)"
    );
    assert!(
        line(&text, "Runs out first:").contains("addresses run out at new node 10"),
        "{text}"
    );
    more_nodes_served_then_refused(&env, 3, 9, 20);
}

const NODES: &str = r#"apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: a
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: b
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: d
"#;

/// Node a holds 5 addresses in the pool's first block, b 13 in the second, c 31 in the
/// next two; c has no node record any more, d has one but no block yet.
fn uneven_pool() -> Env {
    let env = small_pool();
    for (node, count) in [("a", 5), ("b", 13), ("c", 31)] {
        assert_eq!(assign(&env, node, count).code, 0, "node {node}");
    }
    env.ok_with_input(&["apply", "-f", "-"], NODES);
    env
}

#[test]
fn live_pool_names_the_nodes_closest_to_a_new_block() {
    let env = uneven_pool();
    let text = env.ok(&["plan", "--pool", "small"]);
    let closest: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Closest to a new block"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        closest,
        [
            "  c  1 free, 2 blocks",
            "  b  3 free, 1 block",
            "  a  10 free, 1 block"
        ],
        "{text}"
    );
    assert_eq!(
        line(&text, "At maxBlocksPerHost:"),
        "At maxBlocksPerHost:  c"
    );
    assert!(
        line(&text, "Pods per node:").contains("17 measured (49 addresses in use / 3 nodes"),
        "{text}"
    );
    assert!(
        line(&text, "Pods per node:").contains("median 13, max 31"),
        "{text}"
    );
    assert!(
        line(&text, "Nodes:").contains("takes 3 of 3 node records, 1 of them with no block yet"),
        "{text}"
    );
}

#[test]
fn live_pool_fragmentation_on_a_hand_made_shape() {
    let env = uneven_pool();
    let text = env.ok(&["plan", "--pool", "small"]);
    assert!(
        line(&text, "Fragmentation:").contains(
            "3 blocks partly used; 14 free addresses stranded in nodes' blocks \
             (6% of the pool's 205 free addresses; only their node can use them)"
        ),
        "{text}"
    );
    assert_eq!(
        line(&text, "Blocks of gone nodes:"),
        "Blocks of gone nodes: 10.1.0.32/28 (c), 10.1.0.48/28 (c)"
    );
}

#[test]
fn live_pool_errors_say_what_to_do() {
    let env = small_pool();
    let err = env.fails(&["plan", "--pool", "big"]);
    assert_eq!(
        err,
        "Error: no IPPool named \"big\"; existing pools: small\n"
    );
    let err = env.fails(&["plan", "--pool", "small"]);
    assert!(
        err.contains("pool \"small\" has no blocks yet") && err.contains("--pods-per-node M"),
        "{err}"
    );
    let text = env.ok(&["plan", "--pool", "small", "--pods-per-node", "20"]);
    assert!(
        line(&text, "More nodes:").contains("8 at 20 pods per node"),
        "{text}"
    );
    let err = env.fails(&["plan", "--pool", "small", "--nodes", "3"]);
    assert!(err.contains("'--pool <NAME>' cannot be used with"), "{err}");
    let empty = Env::new();
    let err = empty.fails(&["plan", "--pool", "small"]);
    assert!(err.contains("the datastore holds no IPPool"), "{err}");
}

#[test]
fn live_disabled_pool_takes_no_more_nodes() {
    let env = small_pool();
    fill(&env, 1, 5);
    env.ok_with_input(
        &["apply", "-f", "-"],
        &POOL.replace("blockSize: 28", "blockSize: 28\n  disabled: true"),
    );
    let text = env.ok(&["plan", "--pool", "small"]);
    assert_eq!(
        line(&text, "More nodes:"),
        "More nodes:           0 (the pool is disabled: it hands out no new address)"
    );
    assert_ne!(assign(&env, "n2", 1).code, 0);
}
