// What still holds a pool's addresses: what a migration waits for.

mod common_fixtures;

use common_fixtures::*;
use serde_json::json;
use tessera_core::ipam::{AssignRequest, Attributes, Ipam};
use tessera_core::store::MemoryStore;

fn pod(handle: &str, ns: &str, name: &str, node: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: 1,
        attrs: Attributes {
            namespace: Some(ns.into()),
            pod: Some(name.into()),
            node: Some(node.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn holders_are_the_handles_with_addresses_in_that_pool_only() {
    let s = MemoryStore::new();
    pool(&s, "old", json!({"cidr": "10.0.0.0/24", "blockSize": 28}));
    let ipam = Ipam::new(s);
    ipam.assign(&pod("h-web", "default", "web-1", "n1"))
        .unwrap();
    ipam.assign(&pod("h-db", "db", "pg-0", "n2")).unwrap();
    pool(
        ipam.store(),
        "new",
        json!({"cidr": "10.1.0.0/24", "blockSize": 28}),
    );
    // Disable the old pool: the next pod lands in the new one and is no holder of the old.
    pool(
        ipam.store(),
        "old",
        json!({"cidr": "10.0.0.0/24", "blockSize": 28, "disabled": true}),
    );
    ipam.assign(&pod("h-new", "default", "web-2", "n1"))
        .unwrap();

    let old = ipam.holders("10.0.0.0/24".parse().unwrap()).unwrap();
    let names: Vec<_> = old.iter().map(|h| (h.handle.as_str(), h.pod())).collect();
    assert_eq!(
        names,
        vec![
            ("h-db", Some("db/pg-0".to_string())),
            ("h-web", Some("default/web-1".to_string())),
        ]
    );
    assert!(old.iter().all(|h| h.addresses.len() == 1));
    let new = ipam.holders("10.1.0.0/24".parse().unwrap()).unwrap();
    assert_eq!(new.len(), 1);
    let new_pool: ipnet::IpNet = "10.1.0.0/24".parse().unwrap();
    assert!(new_pool.contains(&new[0].addresses[0]));

    ipam.release_handle("h-web").unwrap();
    ipam.release_handle("h-db").unwrap();
    assert!(ipam
        .holders("10.0.0.0/24".parse().unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn many_holders_are_named_as_well_as_few() {
    let s = MemoryStore::new();
    pool(&s, "big", json!({"cidr": "10.2.0.0/24", "blockSize": 26}));
    let ipam = Ipam::new(s);
    for i in 0..150 {
        let (handle, name) = (format!("h-{i:03}"), format!("web-{i}"));
        ipam.assign(&pod(&handle, "default", &name, "n1")).unwrap();
    }
    let held = ipam.holders("10.2.0.0/24".parse().unwrap()).unwrap();
    assert_eq!(held.len(), 150);
    assert_eq!(held[149].pod().as_deref(), Some("default/web-149"));
    assert!(held.iter().all(|h| h.pod().is_some()));
}
