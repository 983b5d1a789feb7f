//! Random sequences of assigns, releases, label changes and configuration changes across
//! many nodes and pools never produce a duplicate address, a block with two owners, or a
//! handle pointing at a free address; `ipam check` is clean after every sequence.

mod common_fixtures;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use common_fixtures::*;
use proptest::prelude::*;
use serde_json::json;
use tessera_core::ipam::{AssignRequest, HandleRecord, Ipam, IpamError};
use tessera_core::keys;
use tessera_core::selector::Selector;
use tessera_core::store::{MemoryStore, Store};

const NODES: usize = 24;
const SHARED_SELECTOR: &str = "!has(rack) || rack == \"2\"";

#[derive(Clone, Debug)]
enum Step {
    Assign {
        node: usize,
        v4: u32,
        v6: u32,
        fixed: Option<u8>,
        spider: bool,
    },
    ReleaseHandle(usize),
    ReleaseIp(usize),
    Relabel {
        node: usize,
        rack: u8,
    },
    Configure {
        strict: bool,
        max_blocks: u32,
    },
    ReleaseNode(usize),
    /// Deletes the shared pool and creates it again, possibly with another CIDR or block
    /// size, while its old blocks still hold addresses.
    RecutShared(usize),
}

const SHARED_VARIANTS: [(&str, u8); 3] = [
    ("10.1.0.0/26", 30),
    ("10.1.0.0/25", 29),
    ("10.1.0.0/26", 28),
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..NODES, 0..3u32, 0..2u32, proptest::option::weighted(0.15, any::<u8>()), proptest::bool::weighted(0.25))
            .prop_map(|(node, v4, v6, fixed, spider)| Step::Assign { node, v4, v6, fixed, spider }),
        3 => any::<usize>().prop_map(Step::ReleaseHandle),
        1 => any::<usize>().prop_map(Step::ReleaseIp),
        1 => (0..NODES, 0..3u8).prop_map(|(node, rack)| Step::Relabel { node, rack }),
        1 => (any::<bool>(), 0..3u32).prop_map(|(strict, max_blocks)| Step::Configure { strict, max_blocks }),
        1 => (0..NODES).prop_map(Step::ReleaseNode),
        1 => (0..SHARED_VARIANTS.len()).prop_map(Step::RecutShared),
    ]
}

struct World {
    ipam: Ipam<MemoryStore>,
    racks: Vec<u8>,
    live: BTreeMap<String, Vec<IpAddr>>,
    next_handle: usize,
}

impl World {
    fn new(racks: Vec<u8>) -> Self {
        let s = MemoryStore::new();
        pool(
            &s,
            "rack-0",
            json!({"cidr": "10.0.0.0/25", "blockSize": 28, "nodeSelector": "rack == \"0\""}),
        );
        pool(
            &s,
            "rack-1",
            json!({"cidr": "10.0.1.0/26", "blockSize": 29, "nodeSelector": "rack in {'1'}"}),
        );
        pool(
            &s,
            "shared",
            json!({"cidr": "10.1.0.0/26", "blockSize": 30, "nodeSelector": "!has(rack) || rack == \"2\""}),
        );
        pool(&s, "v6", json!({"cidr": "fd00::/121", "blockSize": 125}));
        reservation(&s, "r", &["10.0.0.16/30", "10.1.0.9"]);
        // A Spiderpool pool shared by every node, with holes.
        spider_pool(
            &s,
            "sp",
            json!({"subnet": "10.8.0.0/22", "ips": ["10.8.0.60-10.8.0.70", "10.8.1.0-10.8.1.40"], "excludeIPs": ["10.8.0.64"]}),
        );
        spider_reserved(&s, "sr", &["10.8.1.5-10.8.1.9"]);
        for (i, r) in racks.iter().enumerate() {
            node(&s, &format!("n{i}"), &[("rack", &r.to_string())]);
        }
        Self {
            ipam: Ipam::new(s),
            racks,
            live: BTreeMap::new(),
            next_handle: 0,
        }
    }

    fn node_labels(&self, node: usize) -> BTreeMap<String, String> {
        [("rack".to_string(), self.racks[node].to_string())]
            .into_iter()
            .collect()
    }

    fn run(&mut self, step: &Step) {
        match step {
            Step::Assign {
                node,
                v4,
                v6,
                fixed,
                spider,
            } => {
                let handle = format!("h{}", self.next_handle);
                self.next_handle += 1;
                let mut req = AssignRequest {
                    handle: handle.clone(),
                    node: format!("n{node}"),
                    num_v4: *v4,
                    num_v6: *v6,
                    ..Default::default()
                };
                if let Some(f) = fixed {
                    req.ips.push(format!("10.0.0.{}", f % 128).parse().unwrap());
                }
                if *spider {
                    req.pools = vec!["sp".into()];
                }
                if req.num_v4 == 0 && req.num_v6 == 0 && req.ips.is_empty() {
                    req.num_v4 = 1;
                }
                match self.ipam.assign(&req) {
                    Ok(a) => {
                        assert_eq!(
                            a.addresses.len() as u32,
                            req.num_v4 + req.num_v6 + req.ips.len() as u32
                        );
                        let labels = self.node_labels(*node);
                        for (i, addr) in a.addresses.iter().enumerate() {
                            if i < req.ips.len() {
                                continue;
                            }
                            // Automatic addresses come from a pool that selects the node.
                            let sel = match addr.pool.as_str() {
                                "rack-0" => "rack == \"0\"",
                                "rack-1" => "rack in {'1'}",
                                "shared" => SHARED_SELECTOR,
                                "sp" => "all()",
                                _ => "all()",
                            };
                            assert!(
                                Selector::parse(sel).unwrap().matches(&labels),
                                "{addr:?} for n{node}"
                            );
                        }
                        self.live
                            .insert(handle, a.addresses.iter().map(|x| x.ip).collect());
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                IpamError::Exhausted { .. }
                                    | IpamError::NoPool { .. }
                                    | IpamError::AddressInUse { .. }
                                    | IpamError::AddressReserved { .. }
                                    | IpamError::AddressUnusable { .. }
                            ),
                            "unexpected error {e}"
                        );
                        // Nothing of a failed request stays behind.
                        assert!(self
                            .ipam
                            .store()
                            .get(&keys::handle(&handle))
                            .unwrap()
                            .is_none());
                    }
                }
            }
            Step::ReleaseHandle(pick) => {
                if self.live.is_empty() {
                    return;
                }
                let handle = self
                    .live
                    .keys()
                    .nth(pick % self.live.len())
                    .unwrap()
                    .clone();
                let mut released = self.ipam.release_handle(&handle).unwrap();
                let mut expected = self.live.remove(&handle).unwrap();
                released.sort();
                expected.sort();
                assert_eq!(released, expected);
                assert!(self.ipam.release_handle(&handle).unwrap().is_empty());
            }
            Step::ReleaseIp(pick) => {
                let all: Vec<(String, IpAddr)> = self
                    .live
                    .iter()
                    .flat_map(|(h, ips)| ips.iter().map(move |ip| (h.clone(), *ip)))
                    .collect();
                if all.is_empty() {
                    return;
                }
                let (handle, ip) = all[pick % all.len()].clone();
                let released = self.ipam.release_ips(&[ip]).unwrap();
                assert_eq!(released, vec![(ip, handle.clone())]);
                let ips = self.live.get_mut(&handle).unwrap();
                ips.retain(|x| *x != ip);
                if ips.is_empty() {
                    self.live.remove(&handle);
                }
            }
            Step::Relabel { node, rack } => {
                self.racks[*node] = *rack;
                node_fixture(self.ipam.store(), *node, *rack);
            }
            Step::Configure { strict, max_blocks } => {
                ipam_config(self.ipam.store(), *strict, true, *max_blocks);
            }
            Step::ReleaseNode(node) => {
                self.ipam.release_node(&format!("n{node}")).unwrap();
            }
            Step::RecutShared(variant) => {
                let (cidr, block) = SHARED_VARIANTS[*variant];
                self.ipam
                    .store()
                    .txn(
                        &[],
                        &[tessera_core::store::Op::Delete(keys::pool("shared"))],
                    )
                    .unwrap();
                pool(
                    self.ipam.store(),
                    "shared",
                    json!({"cidr": cidr, "blockSize": block, "nodeSelector": SHARED_SELECTOR}),
                );
            }
        }
    }

    fn verify(&self) {
        let report = self.ipam.check().unwrap();
        assert!(
            report.problems.is_empty(),
            "ipam check: {:#?}",
            report.problems
        );
        // The store's handles are exactly the live ones, with the same addresses.
        let mut stored = BTreeMap::new();
        for kv in self.ipam.store().range(keys::HANDLE_PREFIX).unwrap() {
            let h: HandleRecord = serde_json::from_slice(&kv.value).unwrap();
            let mut ips: Vec<IpAddr> = h.addresses.iter().map(|a| a.ip).collect();
            ips.sort();
            stored.insert(h.id, ips);
        }
        let mut live = self.live.clone();
        live.values_mut().for_each(|v| v.sort());
        assert_eq!(stored, live);
        let mut seen = HashSet::new();
        for ip in live.values().flatten() {
            assert!(seen.insert(*ip), "{ip} held twice");
        }
    }
}

fn node_fixture(store: &dyn Store, node: usize, rack: u8) {
    common_fixtures::node(store, &format!("n{node}"), &[("rack", &rack.to_string())]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_stay_consistent(
        racks in proptest::collection::vec(0..3u8, NODES),
        steps in proptest::collection::vec(step(), 1..150),
    ) {
        let mut world = World::new(racks);
        for (i, s) in steps.iter().enumerate() {
            world.run(s);
            if i % 10 == 0 {
                world.verify();
            }
        }
        world.verify();
    }
}
