//! Many plugin processes at once on one SQLite store, as a busy node runs them, and processes
//! killed mid-ADD: no address twice, no half-written state, GC cleans up after the killed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{addr, wait_bounded, Att, Env, RUN_LIMIT};
use serde_json::{json, Value};

const PROCESSES: usize = 100;

fn spawn_all(env: &Env, verb: &str, conf: &Value, atts: &[Att]) -> Vec<std::process::Child> {
    atts.iter().map(|att| env.spawn(verb, conf, att)).collect()
}

#[test]
fn hundred_concurrent_adds_then_dels() {
    let env = Env::new();
    env.pool("pods", "10.80.0.0/16", 26, json!({}));
    let conf = env.conf("1.0.0", json!({}));
    let atts: Vec<Att> = (0..PROCESSES)
        .map(|i| Att::new(&format!("ctr{i:03}")).pod("load", &format!("pod-{i}")))
        .collect();
    // Start every process before waiting for any, so that they really overlap.
    let started = Instant::now();
    let children = spawn_all(&env, "ADD", &conf, &atts);
    let mut addresses = BTreeSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_bounded(child, RUN_LIMIT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ADD {i} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_str(&stdout).expect("result JSON");
        let ip = result["ips"][0]["address"]
            .as_str()
            .expect("address")
            .to_string();
        assert!(addresses.insert(ip.clone()), "{ip} handed out twice");
    }
    eprintln!("{PROCESSES} concurrent ADDs took {:?}", started.elapsed());
    assert_eq!(addresses.len(), PROCESSES);
    let report = env.assert_consistent();
    assert_eq!((report.handles, report.allocations), (PROCESSES, PROCESSES));

    let children = spawn_all(&env, "DEL", &conf, &atts);
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_bounded(child, RUN_LIMIT);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "DEL {i} failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = env.assert_consistent();
    assert_eq!((report.handles, report.allocations), (0, 0));
}

#[test]
fn adds_killed_in_flight_leave_nothing_half_written_and_gc_collects_them() {
    const ROUNDS: usize = 40;
    let env = Env::new();
    env.pool("pods", "10.81.0.0/16", 26, json!({}));
    env.pool("pods6", "fd00:81::/112", 122, json!({}));
    // Dual stack, so that each ADD writes several records in its one transaction.
    let conf = env.conf("1.1.0", json!({"assign_ipv6": true}));
    let atts: Vec<Att> = (0..ROUNDS).map(|i| Att::new(&format!("k{i:02}"))).collect();
    // Batches of overlapping processes, each killed after its own delay from its start,
    // spread over the few milliseconds an ADD takes.
    let mut finished = Vec::new();
    let mut killed = 0;
    for (b, batch) in atts.chunks(8).enumerate() {
        let children: Vec<_> = spawn_all(&env, "ADD", &conf, batch)
            .into_iter()
            .map(|c| (c, Instant::now()))
            .collect();
        for (i, (mut child, started)) in children.into_iter().enumerate() {
            let delay = Duration::from_micros(((b * 8 + i) as u64 * 7919) % 6_000);
            if let Some(left) = (started + delay).checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
            let _ = child.kill(); // SIGKILL; fails only when the process already exited.
            let out = wait_bounded(child, RUN_LIMIT);
            if out.status.success() {
                let result: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
                finished.push((batch[i].clone(), result));
            } else {
                killed += 1;
            }
        }
    }
    assert!(
        killed > 0,
        "every ADD finished before its kill; nothing was interrupted"
    );
    eprintln!(
        "{} of {ROUNDS} ADDs finished before being killed",
        finished.len()
    );

    // Whatever the kills interrupted, the records are consistent.
    let report = env.assert_consistent();
    assert!(report.handles >= finished.len());
    eprintln!(
        "{} killed ADDs committed before dying; GC must release them",
        report.handles - finished.len()
    );
    // Every ADD that answered holds exactly what it answered, v4 and v6.
    for (att, result) in &finished {
        let held = env
            .ipam()
            .handle(&format!("tnet:{}:eth0", att.cid))
            .unwrap()
            .expect("finished ADD holds its addresses");
        let held: BTreeSet<String> = held.addresses.iter().map(|a| a.ip.to_string()).collect();
        let answered: BTreeSet<String> = result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| addr(ip["address"].as_str().unwrap()))
            .collect();
        assert_eq!(held, answered);
        assert_eq!(held.len(), 2);
    }

    // The runtime knows only the attachments whose ADD answered; GC releases the rest.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = finished
        .iter()
        .map(|(att, _)| json!({"containerID": att.cid, "ifname": "eth0"}))
        .collect();
    let run = env.cni("GC", &gc, None);
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    let report = env.assert_consistent();
    assert_eq!(report.handles, finished.len());
    assert_eq!(report.allocations, 2 * finished.len());

    for (att, _) in &finished {
        env.cni("DEL", &conf, Some(att)).ok();
    }
    let report = env.assert_consistent();
    assert_eq!((report.handles, report.allocations), (0, 0));
}
