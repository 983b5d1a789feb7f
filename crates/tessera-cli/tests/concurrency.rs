//! Many `tessera ipam assign` processes at once on one SQLite store, as many CNI invocations
//! on one host would be: every address distinct, the records consistent afterwards.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;

use common::Env;

const PROCESSES: usize = 40;
const NODES: usize = 4;

#[test]
fn concurrent_assign_processes_get_distinct_addresses() {
    let env = Env::new();
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\n\
         kind: IPPool\n\
         metadata:\n  name: pool\n\
         spec:\n  cidr: 10.10.0.0/16\n",
    );
    // Start every process before waiting on any, so they really overlap.
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            env.command(&[
                "ipam",
                "assign",
                "--node",
                &format!("node-{}", i % NODES),
                "--handle",
                &format!("handle-{i}"),
                "--namespace",
                "load",
                "--pod",
                &format!("pod-{i}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera")
        })
        .collect();
    let mut addresses = BTreeSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait for tessera");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "process {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "process {i} printed {stdout:?}");
        assert!(
            addresses.insert(lines[0].to_string()),
            "address {} handed out twice",
            lines[0]
        );
    }
    assert_eq!(addresses.len(), PROCESSES);

    // Racing first assigns on one node share the block the first of them claimed: each node
    // ends up with exactly one.
    let status = env.ok(&["status"]);
    let blocks: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Blocks: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no block count in {status:?}"));
    assert_eq!(blocks, NODES, "{status}");
    assert_eq!(
        env.ok(&["ipam", "check"]),
        format!(
            "Checking IPAM for inconsistencies...\n\
             Found {blocks} IPAM blocks.\n\
             Found {PROCESSES} IPAM handles.\n\
             Found {PROCESSES} allocated addresses.\n\
             Check complete; found 0 problems.\n"
        )
    );
    // Every address is where `ipam show --ip` says it is.
    for ip in &addresses {
        let shown = env.ok(&["ipam", "show", "--ip", ip]);
        assert!(
            shown.starts_with(&format!("IP {ip} is in use\n")),
            "{shown}"
        );
    }
}
