//! `tessera ipam migrate`: seed 002's "Migrate IPPool" and "Change BlockSize" as one command
//! each, killed while it waits and finished by running it again; the dry run; the refusals.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Env;
use tessera_core::store::{KeyValue, Op, Read, Store};
use tessera_k8s_lookup::testing::{write_kubeconfig, FakeApiServer};

const DEFAULT_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/24
  blockSize: 26
  ipipMode: Always
  natOutgoing: true
"#;

const NEW_POOL: &str = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: new-pool
spec:
  cidr: 192.168.0.0/24
  blockSize: 26
  natOutgoing: true
"#;

const PODS: [(&str, &str); 3] = [("web-1", "node1"), ("web-2", "node2"), ("web-3", "node1")];

/// The default pool with three pods holding its addresses (handles `<pod>-0`).
fn seeded() -> Env {
    let env = Env::new();
    env.ok_with_input(&["apply", "-f", "-"], DEFAULT_POOL);
    for (pod, node) in PODS {
        let got = assign(&env, pod, node, 0);
        assert!(got.starts_with("10.244.0."), "{got}");
    }
    env
}

/// Assigns an address to generation `generation` of `pod`; returns it.
fn assign(env: &Env, pod: &str, node: &str, generation: u32) -> String {
    let handle = format!("{pod}-{generation}");
    env.ok(&[
        "ipam",
        "assign",
        "--node",
        node,
        "--handle",
        &handle,
        "--namespace",
        "default",
        "--pod",
        pod,
    ])
    .trim()
    .to_string()
}

/// What restarting every pod does: the new pod gets an address, the old one's is released.
/// Returns the new addresses.
fn restart_pods(env: &Env, generation: u32) -> Vec<String> {
    PODS.iter()
        .map(|(pod, node)| {
            let ip = assign(env, pod, node, generation);
            let old = format!("{pod}-{}", generation - 1);
            env.ok(&["ipam", "release", "--handle", &old]);
            ip
        })
        .collect()
}

/// Every record of the store with its revision, and the store's revision.
fn snapshot(env: &Env) -> (i64, Vec<KeyValue>) {
    let store = tessera_store::open(&env.db().to_string_lossy()).unwrap();
    let snap = store.read(&[Read::Prefix(String::new())]).unwrap();
    (snap.revision, snap.list(0).to_vec())
}

/// Starts `tessera ARGS`, waits until its standard output has a line containing `wanted`,
/// then kills it (SIGKILL, by its pid). Returns what it printed.
fn kill_once_it_prints(env: &Env, args: &[&str], wanted: &str) -> String {
    let mut child: Child = env
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tessera");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(wanted) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    child.kill().expect("kill tessera");
    child.wait().unwrap();
    assert!(found, "never printed {wanted:?}; printed:\n{seen}");
    seen
}

fn pool_json(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["get", "ippool", name, "-o", "json"])).unwrap()
}

fn check_clean(env: &Env) {
    let out = env.ok(&["ipam", "check"]);
    assert!(out.contains("found 0 problems"), "{out}");
}

#[test]
fn seed_migrate_ippool_killed_while_waiting_finishes_when_run_again() {
    let env = seeded();
    let new_pool = env.write_file("new-pool.yaml", NEW_POOL);
    let migrate = [
        "ipam",
        "migrate",
        "--from",
        "default-ipv4-ippool",
        "--to-file",
        &new_pool,
    ];
    let printed = kill_once_it_prints(&env, &migrate, "Waiting");
    assert!(
        printed.starts_with("create IPPool new-pool (cidr 192.168.0.0/24, blockSize 26"),
        "{printed}"
    );
    let old = pool_json(&env, "default-ipv4-ippool");
    assert_eq!(old["spec"]["disabled"], true);
    let drain: serde_json::Value = serde_json::from_str(
        old["metadata"]["annotations"]["tessera.dev/drain"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(drain["maxParallel"], 1);
    assert!(drain["requestedAt"].as_str().unwrap().ends_with('Z'));
    let new = pool_json(&env, "new-pool");
    assert_eq!(new["spec"].get("disabled"), None, "{new}");

    for ip in restart_pods(&env, 1) {
        assert!(ip.starts_with("192.168.0."), "{ip}");
    }
    let run = env.run(&migrate);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout,
        "delete IPPool default-ipv4-ippool\n\
         Done: IPPool default-ipv4-ippool is gone and its workloads moved to IPPool new-pool: \
         the migration is done.\n"
    );
    assert!(env
        .fails(&["get", "ippool", "default-ipv4-ippool"])
        .contains("does not exist"));
    check_clean(&env);
    // Once more: nothing left to do.
    let again = env.ok(&migrate);
    assert!(again.starts_with("Done: "), "{again}");
}

#[test]
fn seed_change_block_size_killed_in_both_moves_finishes_when_run_again() {
    let env = seeded();
    let migrate = [
        "ipam",
        "migrate",
        "--pool",
        "default-ipv4-ippool",
        "--block-size",
        "27",
    ];
    let first = kill_once_it_prints(&env, &migrate, "Waiting");
    assert!(
        first.starts_with(
            "create IPPool default-ipv4-ippool-temporary (cidr 10.0.0.0/24, blockSize 26"
        ),
        "{first}"
    );
    for ip in restart_pods(&env, 1) {
        assert!(ip.starts_with("10.0.0."), "{ip}");
    }
    let second = kill_once_it_prints(&env, &migrate, "Waiting");
    assert!(
        second.contains("create IPPool default-ipv4-ippool (cidr 10.244.0.0/24, blockSize 27")
            && second.contains("default-ipv4-ippool-temporary (10.0.0.0/24)"),
        "{second}"
    );
    let temporary = pool_json(&env, "default-ipv4-ippool-temporary");
    assert_eq!(temporary["spec"]["disabled"], true);
    for ip in restart_pods(&env, 2) {
        assert!(ip.starts_with("10.244.0."), "{ip}");
    }
    let run = env.run(&migrate);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.ends_with(
            "delete IPPool default-ipv4-ippool-temporary\n\
             Done: IPPool default-ipv4-ippool has block size 27 and its workloads are back in \
             it; the temporary IPPool default-ipv4-ippool-temporary is deleted.\n"
        ),
        "{}",
        run.stdout
    );
    let pool = pool_json(&env, "default-ipv4-ippool");
    assert_eq!(pool["spec"]["blockSize"], 27);
    assert_eq!(pool["spec"]["ipipMode"], "Always", "settings kept");
    let blocks = env.ok(&["ipam", "show", "--show-blocks"]);
    let block_lines: Vec<&str> = blocks.lines().filter(|l| l.contains("| Block")).collect();
    assert_eq!(block_lines.len(), 2, "{blocks}");
    assert!(block_lines.iter().all(|l| l.contains("/27")), "{blocks}");
    check_clean(&env);
    let again = env.run(&migrate);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        again.stdout,
        "Done: IPPool default-ipv4-ippool has block size 27: nothing to change.\n"
    );
}

#[test]
fn dry_run_lists_the_steps_and_the_pods_and_changes_nothing() {
    let env = seeded();
    let before = snapshot(&env);
    let run = env
        .command(&[
            "ipam",
            "migrate",
            "--pool",
            "default-ipv4-ippool",
            "--block-size",
            "27",
            "--dry-run",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(run.status.success());
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(snapshot(&env), before);
    let steps: Vec<&str> = out
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(steps.len(), 8, "{out}");
    assert!(
        steps[0].starts_with("1. create IPPool default-ipv4-ippool-temporary (cidr 10.0.0.0/24")
    );
    assert!(steps[4]
        .starts_with("5. create IPPool default-ipv4-ippool (cidr 10.244.0.0/24, blockSize 27"));
    assert!(steps[7].starts_with("8. delete IPPool default-ipv4-ippool-temporary"));
    assert!(out.contains("owners not resolved"), "{out}");
    assert!(
        out.contains("   - pod default/web-1 on node node1: 10.244.0.1\n"),
        "{out}"
    );
    assert!(out.ends_with("Dry run: nothing was changed.\n"), "{out}");
}

/// A pod as the API server returns it, with `owner` (api version, kind, name) as its
/// controller.
fn pod_object(name: &str, owner: Option<(&str, &str, &str)>) -> serde_json::Value {
    let refs: Vec<serde_json::Value> = owner
        .into_iter()
        .map(|(api_version, kind, name)| {
            serde_json::json!({"apiVersion": api_version, "kind": kind, "name": name,
                               "controller": true})
        })
        .collect();
    serde_json::json!({"metadata": {"name": name, "namespace": "default",
                                    "ownerReferences": refs}})
}

#[test]
fn dry_run_with_a_kubeconfig_groups_the_pods_by_the_workload_to_restart() {
    let env = seeded();
    let api = FakeApiServer::start();
    api.set_pod(&pod_object(
        "web-1",
        Some(("apps/v1", "ReplicaSet", "web-5d8f")),
    ));
    api.set_pod(&pod_object("web-2", Some(("apps/v1", "StatefulSet", "db"))));
    api.set_pod(&pod_object("web-3", None));
    api.set(
        "/apis/apps/v1/namespaces/default/replicasets/web-5d8f",
        200,
        serde_json::json!({"metadata": {"name": "web-5d8f", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "controller": true}]}})
        .to_string(),
    );
    let kubeconfig = write_kubeconfig(env.dir(), &api.url(), "t0ken");
    let before = snapshot(&env);
    let out = env
        .command(&[
            "ipam",
            "migrate",
            "--from",
            "default-ipv4-ippool",
            "--to-file",
            &env.write_file("new-pool.yaml", NEW_POOL),
            "--dry-run",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "   workloads to restart:\n\
             \x20  - Deployment default/web: pod default/web-1 on node1 (10.244.0.1)\n\
             \x20  - StatefulSet default/db: pod default/web-2 on node2 (10.244.0.64)\n\
             \x20  left to you (no restart moves them):\n\
             \x20  - pod default/web-3 on node1 (10.244.0.2): no owner\n"
        ),
        "{stdout}"
    );
    assert_eq!(snapshot(&env), before);
}

#[test]
fn the_controllers_report_is_shown_while_waiting() {
    let env = seeded();
    env.ok_with_input(&["apply", "-f", "-"], NEW_POOL);
    let migrate = [
        "ipam",
        "migrate",
        "--from",
        "default-ipv4-ippool",
        "--to",
        "new-pool",
        "--timeout",
        "1s",
    ];
    assert_eq!(env.run(&migrate).code, 2);
    // The controller's report, as tessera-controller writes it on the pool record.
    let store = tessera_store::open(&env.db().to_string_lossy()).unwrap();
    let key = "config/pools/default-ipv4-ippool";
    let mut record: serde_json::Value =
        serde_json::from_slice(&store.get(key).unwrap().unwrap().value).unwrap();
    let annotations = &mut record["metadata"]["annotations"];
    let request: serde_json::Value =
        serde_json::from_str(annotations["tessera.dev/drain"].as_str().unwrap()).unwrap();
    let status = serde_json::json!({
        "requestedAt": request["requestedAt"],
        "updatedAt": "2026-12-01T10:01:00Z",
        "restarted": [{"kind": "Deployment", "namespace": "default", "name": "web"}],
        "restarting": [{"kind": "StatefulSet", "namespace": "default", "name": "db"}],
        "stranded": [{"namespace": "default", "name": "web-3", "reason": "no owner"}]
    });
    annotations["tessera.dev/drain-status"] = status.to_string().into();
    store
        .txn(
            &[],
            &[Op::Put(key.into(), serde_json::to_vec(&record).unwrap())],
        )
        .unwrap();

    let run = env.run(&migrate);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "Controller report of 2026-12-01T10:01:00Z:\n\
             \x20 restarted: Deployment default/web\n\
             \x20 restarting: StatefulSet default/db\n\
             \x20 stranded: pod default/web-3 (no owner): delete or recreate it yourself\n"
        ),
        "{}",
        run.stdout
    );
    // Stopping, it lists what is left to do.
    assert!(run.stdout.contains("Still held:\nPOD "), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("moved 0/3 addresses, 1 workload restarted, 1 restarting, 1 stranded pod\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn no_wait_lists_the_holders_and_exits_2() {
    let env = seeded();
    env.ok_with_input(&["apply", "-f", "-"], NEW_POOL);
    let run = env.run(&[
        "ipam",
        "migrate",
        "--from",
        "default-ipv4-ippool",
        "--to",
        "new-pool",
        "--no-wait",
    ]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "POD             NODE    ADDRESSES     HANDLE\n\
             default/web-1   node1   10.244.0.1    web-1-0\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Run the same command again to continue: tessera --datastore ")
            && run
                .stdout
                .ends_with(" ipam migrate --from default-ipv4-ippool --to new-pool --no-wait\n"),
        "{}",
        run.stdout
    );
}

/// `ipam migrate --no-wait --from default-ipv4-ippool` and `to` (a refusal that is not
/// made exits 2 instead of waiting).
fn from<'a>(to: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "ipam",
        "migrate",
        "--no-wait",
        "--from",
        "default-ipv4-ippool",
    ];
    args.extend_from_slice(to);
    args
}

/// `ipam migrate --no-wait --pool POOL --block-size SIZE` and `extra`.
fn resize<'a>(pool: &'a str, size: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "ipam",
        "migrate",
        "--no-wait",
        "--pool",
        pool,
        "--block-size",
        size,
    ];
    args.extend_from_slice(extra);
    args
}

/// Writes a pool record straight into the store, as tessera-controller's mirror would.
fn put_pool(env: &Env, name: &str, manifest: serde_json::Value) {
    let store = tessera_store::open(&env.db().to_string_lossy()).unwrap();
    let key = format!("config/pools/{name}");
    store
        .txn(&[], &[Op::Put(key, serde_json::to_vec(&manifest).unwrap())])
        .unwrap();
}

#[test]
fn every_refusal_names_the_problem_and_changes_nothing() {
    let env = seeded();
    env.ok_with_input(&["apply", "-f", "-"], NEW_POOL);
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: v6\nspec:\n  cidr: fd00::/120\n",
    );
    put_pool(
        &env,
        "from-kubernetes",
        serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "from-kubernetes",
                         "annotations": {"tessera.dev/managed-by": "kubernetes"}},
            "spec": {"cidr": "172.17.0.0/24", "blockSize": 26}}),
    );
    let overlapping = env.write_file(
        "overlap.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: overlap\nspec:\n  cidr: 192.168.0.128/25\n",
    );
    let before = snapshot(&env);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            from(&["--to", "default-ipv4-ippool"]),
            "the source and the target are the same pool default-ipv4-ippool",
        ),
        (from(&["--to", "v6"]), "are of different address families"),
        (
            vec![
                "ipam",
                "migrate",
                "--from",
                "nope",
                "--to",
                "new-pool",
                "--no-wait",
            ],
            "IPPool nope not found; pools: default-ipv4-ippool, from-kubernetes, new-pool, v6",
        ),
        (
            from(&["--to", "missing"]),
            "IPPool missing not found; pools: ",
        ),
        (
            from(&["--to-file", &overlapping]),
            "IPPool overlap (192.168.0.128/25) overlaps IPPool new-pool (192.168.0.0/24)",
        ),
        (
            from(&["--to", "from-kubernetes"]),
            "IPPool from-kubernetes is managed in Kubernetes",
        ),
        (
            resize("default-ipv4-ippool", "19", &[]),
            "--block-size 19: an IPv4 block size is 20 to 32",
        ),
        (
            resize("new-pool", "23", &[]),
            "cannot be larger than the pool",
        ),
        (
            resize(
                "default-ipv4-ippool",
                "27",
                &["--temporary-pool", "new-pool"],
            ),
            "IPPool new-pool already exists; name the temporary pool with --temporary-pool",
        ),
        (
            resize(
                "default-ipv4-ippool",
                "27",
                &["--temporary-cidr", "192.168.0.0/24"],
            ),
            "overlaps IPPool new-pool (192.168.0.0/24)",
        ),
    ];
    for (args, expected) in cases {
        let err = env.fails(&args);
        assert!(err.contains(expected), "{args:?}:\n{err}");
        assert_eq!(snapshot(&env), before, "{args:?} changed the store");
    }
}

#[test]
fn a_target_that_leaves_nodes_without_a_pool_is_refused_naming_them() {
    let env = seeded();
    env.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: rack0\nspec:\n  cidr: 172.16.0.0/24\n  nodeSelector: rack == \"0\"\n",
    );
    env.ok(&["label", "node", "node1", "rack=0"]);
    let before = snapshot(&env);
    let err = env.fails(&from(&["--to", "rack0"]));
    assert!(
        err.contains(
            "once IPPool default-ipv4-ippool is disabled, no enabled IPv4 pool selects node(s) \
             node2, which hold its addresses"
        ) && err.contains("(now: rack == \"0\")"),
        "{err}"
    );
    assert_eq!(snapshot(&env), before);
}

#[test]
fn bad_flag_combinations_name_the_flag() {
    let env = Env::new();
    let manifest = env.write_file("bad.yaml", "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: x\nspec:\n  cidr: 10.0.0.0/33\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--from", "a"], "--to"),
        (vec!["--to", "b"], "--from"),
        (
            vec!["--from", "a", "--to", "b", "--to-file", "f"],
            "--to-file",
        ),
        (vec!["--pool", "a"], "--block-size"),
        (vec!["--block-size", "27"], "--pool"),
        (
            vec![
                "--from",
                "a",
                "--to",
                "b",
                "--pool",
                "c",
                "--block-size",
                "27",
            ],
            "--pool",
        ),
        (
            vec!["--from", "a", "--to", "b", "--no-wait", "--timeout", "1m"],
            "--timeout",
        ),
        (
            vec!["--from", "a", "--to", "b", "--dry-run", "--no-wait"],
            "--no-wait",
        ),
        (
            vec!["--from", "a", "--to", "b", "--max-parallel", "0"],
            "--max-parallel",
        ),
        (
            vec!["--from", "a", "--to", "b", "--timeout", "soon"],
            "--timeout",
        ),
        (
            vec![
                "--from",
                "a",
                "--temporary-cidr",
                "10.0.0.0/24",
                "--to",
                "b",
            ],
            "--temporary-cidr",
        ),
        (vec![], "--from"),
        (vec!["--from", "a", "--to-file", &manifest], "bad.yaml"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["ipam", "migrate"];
        args.extend_from_slice(&flags);
        let err = env.fails(&args);
        assert!(err.contains(named), "{flags:?}:\n{err}");
    }
}
