//! `ipam release`, `ipam check`, `ipam configure`, `--show-borrowed`, reservations and
//! `status`.

mod common;

use common::Env;
use tessera_store::{Op, TxnOutcome};

const POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 192.168.0.0/24
"#;

fn with_pool() -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], POOL);
    env
}

#[test]
fn release_twice_is_not_an_error() {
    let env = with_pool();
    assert_eq!(
        env.ok(&["ipam", "assign", "--node", "n1", "--handle", "h1", "--ipv4", "2"]),
        "192.168.0.1\n192.168.0.2\n"
    );
    assert_eq!(
        env.ok(&["ipam", "release", "--handle", "h1"]),
        "Released 192.168.0.1 (handle h1)\nReleased 192.168.0.2 (handle h1)\n"
    );
    assert_eq!(
        env.ok(&["ipam", "release", "--handle", "h1"]),
        "Nothing to release\n"
    );

    env.ok(&[
        "ipam",
        "assign",
        "--node",
        "n1",
        "--handle",
        "h2",
        "--ip",
        "192.168.0.10",
    ]);
    env.ok(&[
        "ipam",
        "assign",
        "--node",
        "n1",
        "--handle",
        "h3",
        "--ip",
        "192.168.0.11",
    ]);
    assert_eq!(
        env.ok(&[
            "ipam",
            "release",
            "--ip",
            "192.168.0.10",
            "192.168.0.11",
            "192.168.0.12"
        ]),
        "Released 192.168.0.10 (handle h2)\nReleased 192.168.0.11 (handle h3)\n"
    );
    assert_eq!(
        env.ok(&["ipam", "release", "--ip", "192.168.0.10"]),
        "Nothing to release\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.0.10"]),
        "IP 192.168.0.10 is not assigned\n"
    );
}

#[test]
fn assign_json_and_specific_addresses() {
    let env = with_pool();
    // The node owns the block of the address it asked for, so the next address comes from
    // that block too.
    assert_eq!(
        env.ok(&[
            "ipam",
            "assign",
            "--node",
            "n1",
            "--handle",
            "h",
            "--ip",
            "192.168.0.200",
            "--ipv4",
            "1",
            "--interface",
            "eth0",
            "--container-id",
            "abc123",
            "-o",
            "json"
        ]),
        "{\n\
        \x20 \"handle\": \"h\",\n\
        \x20 \"addresses\": [\n\
        \x20   {\n\
        \x20     \"ip\": \"192.168.0.200\",\n\
        \x20     \"pool\": \"pool-a\",\n\
        \x20     \"poolCIDR\": \"192.168.0.0/24\",\n\
        \x20     \"block\": \"192.168.0.192/26\"\n\
        \x20   },\n\
        \x20   {\n\
        \x20     \"ip\": \"192.168.0.192\",\n\
        \x20     \"pool\": \"pool-a\",\n\
        \x20     \"poolCIDR\": \"192.168.0.0/24\",\n\
        \x20     \"block\": \"192.168.0.192/26\"\n\
        \x20   }\n\
        \x20 ]\n\
         }\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.0.200"]),
        "IP 192.168.0.200 is in use\n\
         Attributes:\n\
        \x20 handle: h\n\
        \x20 node: n1\n\
        \x20 interface: eth0\n\
        \x20 container: abc123\n"
    );
    assert_eq!(
        env.fails(&[
            "ipam",
            "assign",
            "--node",
            "n2",
            "--handle",
            "other",
            "--ip",
            "192.168.0.200"
        ]),
        "Error: address 192.168.0.200 is already in use by handle \"h\"\n"
    );
}

#[test]
fn reserved_addresses_are_reported() {
    let env = with_pool();
    let reservation = r#"apiVersion: projectcalico.org/v3
kind: IPReservation
metadata:
  name: gateways
spec:
  reservedCIDRs:
  - 192.168.0.1
  - 192.168.0.128/30
"#;
    assert_eq!(
        env.ok_with_input(&["apply", "-f", "-"], reservation),
        "Successfully applied 1 'IPReservation' resource(s)\n"
    );
    assert_eq!(
        env.ok(&["get", "ipreservations"]),
        "NAME       CIDRS\ngateways   192.168.0.1/32,192.168.0.128/30\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "192.168.0.129"]),
        "IP 192.168.0.129 is reserved by IPReservation \"gateways\"\n"
    );
    assert_eq!(
        env.ok(&["ipam", "assign", "--node", "n1", "--handle", "h"]),
        "192.168.0.2\n"
    );
}

#[test]
fn borrowed_addresses_are_listed() {
    let env = with_pool();
    // A /24 of /26 blocks has room for four nodes; the fifth borrows.
    for i in 1..=4 {
        env.ok(&[
            "ipam",
            "assign",
            "--node",
            &format!("n{i}"),
            "--handle",
            &format!("h{i}"),
        ]);
    }
    assert_eq!(
        env.ok(&[
            "ipam",
            "assign",
            "--node",
            "n5",
            "--handle",
            "k8s-pod-network.x",
            "--namespace",
            "default",
            "--pod",
            "web-0"
        ]),
        "192.168.0.2\n"
    );
    env.ok(&["ipam", "assign", "--node", "n5", "--handle", "tunnel-n5"]);
    assert_eq!(
        env.ok(&["ipam", "show", "--show-borrowed"]),
        "+-------------+----------------+----------------+-------------+--------+---------------+\n\
         |     IP      | BORROWING-NODE |     BLOCK      | BLOCK OWNER |  TYPE  | ALLOCATED-TO  |\n\
         +-------------+----------------+----------------+-------------+--------+---------------+\n\
         | 192.168.0.2 | n5             | 192.168.0.0/26 | n1          | pod    | default/web-0 |\n\
         | 192.168.0.3 | n5             | 192.168.0.0/26 | n1          | handle | tunnel-n5     |\n\
         +-------------+----------------+----------------+-------------+--------+---------------+\n"
    );
}

#[test]
fn configure_updates_the_default_configuration() {
    let env = Env::new();
    assert_eq!(
        env.ok(&["ipam", "show", "--show-configuration"]),
        "+--------------------+-------+\n\
         |      PROPERTY      | VALUE |\n\
         +--------------------+-------+\n\
         | StrictAffinity     | false |\n\
         | AutoAllocateBlocks | true  |\n\
         | MaxBlocksPerHost   |     0 |\n\
         +--------------------+-------+\n"
    );
    assert_eq!(
        env.ok(&[
            "ipam",
            "configure",
            "--strictaffinity=true",
            "--max-blocks-per-host=4"
        ]),
        "Successfully set StrictAffinity to: true\nSuccessfully set MaxBlocksPerHost to: 4\n"
    );
    assert_eq!(
        env.ok(&["ipam", "configure", "--autoallocateblocks=false"]),
        "Successfully set AutoAllocateBlocks to: false\n"
    );
    assert_eq!(
        env.ok(&["get", "ipamconfig"]),
        "NAME      STRICTAFFINITY   AUTOALLOCATEBLOCKS   MAXBLOCKSPERHOST\n\
         default   true             false                4\n"
    );
    assert_eq!(
        env.fails(&["ipam", "configure"]),
        "Error: nothing to configure; give --strictaffinity=true|false, \
         --autoallocateblocks=true|false or --max-blocks-per-host=N (see the current values \
         with `tessera ipam show --show-configuration`)\n"
    );
}

#[test]
fn check_is_clean_then_finds_a_damaged_record() {
    let env = with_pool();
    env.ok(&["ipam", "assign", "--node", "n1", "--handle", "h1"]);
    assert_eq!(
        env.ok(&["ipam", "check"]),
        "Checking IPAM for inconsistencies...\n\
         Found 1 IPAM blocks.\n\
         Found 1 IPAM handles.\n\
         Found 1 allocated addresses.\n\
         Check complete; found 0 problems.\n"
    );

    // A handle that claims an address its block does not hold, written behind the
    // allocator's back.
    let store = tessera_store::open(&env.db().to_string_lossy()).unwrap();
    let ghost = serde_json::json!({
        "id": "ghost",
        "addresses": [{
            "ip": "192.168.0.50",
            "block": "blocks/n1/192.168.0.0-26",
            "pool": "192.168.0.0/24",
        }],
    });
    let put = Op::Put(
        "handles/ghost".to_string(),
        serde_json::to_vec(&ghost).unwrap(),
    );
    assert!(matches!(
        store.txn(&[], &[put]).unwrap(),
        TxnOutcome::Committed(_)
    ));
    drop(store);

    let run = env.run(&["ipam", "check"]);
    assert_eq!(
        (run.code, run.stderr.as_str(), run.stdout.as_str()),
        (
            1,
            "",
            "Checking IPAM for inconsistencies...\n\
             Found 1 IPAM blocks.\n\
             Found 2 IPAM handles.\n\
             Found 1 allocated addresses.\n\
            \x20 problem: handle \"ghost\" lists address 192.168.0.50 but block \
             blocks/n1/192.168.0.0-26 does not hold it for the handle\n\
             Check complete; found 1 problems.\n"
        )
    );
}

#[test]
fn status_names_the_store_and_counts() {
    let env = with_pool();
    env.ok(&["label", "node", "n1", "zone=a"]);
    env.ok(&["annotate", "namespace", "ns1", "team=x"]);
    env.ok(&[
        "ipam", "assign", "--node", "n1", "--handle", "h1", "--ipv4", "3",
    ]);
    env.ok(&["ipam", "assign", "--node", "n2", "--handle", "h2"]);
    let db = env.db().display().to_string();
    assert_eq!(
        env.ok(&["status"]),
        format!(
            "Datastore: sqlite:{db} (from --datastore)\n\
             IP pools: 1 (1 enabled)\n\
             Nodes: 1\n\
             Namespaces: 1\n\
             Blocks: 2\n\
             Allocated addresses: 4\n\
             Handles: 2\n"
        )
    );
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("status")
        .env("TESSERA_DATASTORE", env.db())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).lines().next(),
        Some(format!("Datastore: sqlite:{db} (from TESSERA_DATASTORE)").as_str())
    );
}

#[test]
fn version_needs_no_store() {
    let env = Env::new();
    let out = env
        .command(&["version"])
        .arg("--datastore")
        .arg("/nonexistent/dir/x.db")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tessera {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(!env.db().exists());
}

#[test]
fn a_request_for_too_many_addresses_is_refused_before_any_work() {
    let env = with_pool();
    let err = env.fails(&[
        "ipam", "assign", "--node", "n1", "--handle", "big", "--ipv4", "300000",
    ]);
    assert!(
        err.contains(
            "at most 1024 addresses per request and per handle (IPv4, IPv6 and specific \
             addresses counted together), and this one asks for 300000"
        ),
        "{err}"
    );
    assert!(
        err.contains("etcd: 1.5 MiB per request, 128 operations"),
        "{err}"
    );
    let err = env.fails(&[
        "ipam", "assign", "--node", "n1", "--handle", "big", "--ipv4", "1000", "--ipv6", "25",
    ]);
    assert!(err.contains("this one asks for 1025"), "{err}");
    assert_eq!(
        env.ok(&["ipam", "release", "--handle", "big"]),
        "Nothing to release\n"
    );
}

#[test]
fn an_ipv6_pool_never_hands_out_its_subnet_router_anycast_address() {
    let env = Env::new();
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: v6\nspec:\n  \
         cidr: fd00:5::/120\n",
    );
    assert_eq!(
        env.ok(&["ipam", "assign", "--node", "n1", "--handle", "h1", "--ipv6", "1"]),
        "fd00:5::1\n"
    );
    assert_eq!(
        env.fails(&["ipam", "assign", "--node", "n1", "--handle", "h2", "--ip", "fd00:5::"]),
        "Error: address fd00:5:: is the subnet-router anycast address (RFC 4291) of pool \"v6\" \
         and is never handed out\n"
    );
    assert_eq!(
        env.ok(&["ipam", "show", "--ip", "fd00:5::"]),
        "IP fd00:5:: is not assigned\n"
    );
    env.ok(&["ipam", "check"]);
}
