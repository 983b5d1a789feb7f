//! Pool annotations on arbitrary text: Calico's `ipv4pools`/`ipv6pools` (a JSON list of
//! names) and Spiderpool's `ippool`/`ippools` (the input split at its first NUL). Nothing
//! panics, and a list Calico's reader accepts reads back the same once printed as JSON.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tessera_core::ipam::parse_pool_annotation;
use tessera_fuzz::{spider_annotations, split_at_nul};

fuzz_target!(|data: &[u8]| {
    let (first, second) = split_at_nul(data);
    let first = String::from_utf8_lossy(first).into_owned();
    let second = String::from_utf8_lossy(second).into_owned();

    if let Ok(names) = parse_pool_annotation(&first) {
        let printed = serde_json::to_string(&names).unwrap();
        assert_eq!(parse_pool_annotation(&printed), Ok(names), "{printed}");
    }

    let annotations = BTreeMap::from([
        (spider_annotations::IPPOOL_ANNOTATION.to_string(), first),
        (spider_annotations::IPPOOLS_ANNOTATION.to_string(), second),
    ]);
    for ifname in ["eth0", "net1"] {
        let _ = spider_annotations::pod_pools(&annotations, ifname);
    }
});
