//! What the CNI plugin reads from its runtime: `CNI_*` variables (the input up to the first
//! NUL, one `NAME=VALUE` per line) and the network configuration on stdin (the rest). The
//! plugin's parsers never panic, and what they accept holds together: pod annotations the
//! configuration carries go through the Spiderpool and Calico annotation readers too.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tessera_core::ipam::parse_pool_annotation;
use tessera_fuzz::{config, env, spider_annotations, split_at_nul};

fuzz_target!(|data: &[u8]| {
    let (env_part, stdin) = split_at_nul(data);
    let vars: BTreeMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |name: &str| vars.get(name).cloned();
    let command = env::command(&get)
        .ok()
        .flatten()
        .unwrap_or(env::Command::Add);
    let ifname = env::read(command, &get)
        .map(|e| e.ifname)
        .unwrap_or_else(|_| "eth0".into());

    let Ok(map) = config::parse_json(stdin) else {
        return;
    };
    config::version_text(&map);
    let Ok(conf) = config::parse(&map) else {
        return;
    };
    let _ = spider_annotations::pod_pools(&conf.pod_annotations, &ifname);
    for value in conf.pod_annotations.values() {
        let _ = parse_pool_annotation(value);
    }
});
