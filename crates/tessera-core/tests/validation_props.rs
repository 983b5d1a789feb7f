//! Properties of decoding and validation: arbitrary input never panics, accepted pools are
//! usable by the block math, validation is idempotent, and overlap checks are symmetric.

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Map, Value};
use tessera_core::decode::{decode_document, decode_documents};
use tessera_core::net::Tiling;
use tessera_core::resources::calico::IPPool;
use tessera_core::resources::Resource;
use tessera_core::validate::calico::{check_pool_against, ParsedPool};
use tessera_core::validate::validate;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("IPPool"),
            Just("List"),
            Just("IPPoolList"),
            Just("projectcalico.org/v3"),
            Just("v1"),
            Just("10.0.0.0/16"),
            Just("fd00::/64"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("apiVersion".to_string()),
                        Just("kind".to_string()),
                        Just("metadata".to_string()),
                        Just("spec".to_string()),
                        Just("items".to_string()),
                        Just("name".to_string()),
                        Just("labels".to_string()),
                        Just("cidr".to_string()),
                        Just("blockSize".to_string()),
                        Just("allowedUses".to_string()),
                        "[a-zA-Z]{1,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A pool manifest whose fields are arbitrary but well-typed.
fn arb_pool_doc() -> impl Strategy<Value = Value> {
    let masked_v4 = (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), l).unwrap();
        net.trunc().to_string()
    });
    let masked_v6 = (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        let net = ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), l).unwrap();
        net.trunc().to_string()
    });
    let cidr = prop_oneof![
        4 => masked_v4,
        2 => masked_v6,
        1 => (any::<[u8; 4]>(), 0u8..=33).prop_map(|(a, l)| format!(
            "{}.{}.{}.{}/{l}",
            a[0], a[1], a[2], a[3]
        )),
        1 => ".{0,20}",
    ];
    (
        cidr,
        proptest::option::of(prop_oneof![3 => 16u8..=32, 3 => 112u8..=128, 1 => 0u8..=255]),
        prop_oneof![4 => "[a-z][a-z0-9-]{0,8}[a-z0-9]", 1 => "[a-z0-9.-]{0,10}", 1 => ".{0,10}"],
        proptest::option::of(prop_oneof![
            Just("Never"),
            Just("Always"),
            Just("CrossSubnet")
        ]),
        proptest::option::of(prop_oneof![
            Just("Never"),
            Just("Always"),
            Just("CrossSubnet")
        ]),
        proptest::option::of(prop_oneof![
            prop::sample::subsequence(vec!["Workload", "Tunnel"], 0..=2),
            Just(vec!["LoadBalancer"]),
            prop::collection::vec(
                prop_oneof![Just("Workload"), Just("Tunnel"), Just("LoadBalancer")],
                0..4,
            ),
        ]),
        prop::collection::btree_map(
            prop_oneof![3 => "[a-z]{1,5}(/[a-z]{1,5})?", 1 => ".{0,10}"],
            prop_oneof![3 => "[a-z0-9]{0,5}", 1 => ".{0,10}"],
            0..3,
        ),
    )
        .prop_map(|(cidr, bs, name, ipip, vxlan, uses, labels)| {
            let mut spec = json!({ "cidr": cidr });
            if let Some(bs) = bs {
                spec["blockSize"] = bs.into();
            }
            if let Some(m) = ipip {
                spec["ipipMode"] = m.into();
            }
            if let Some(m) = vxlan {
                spec["vxlanMode"] = m.into();
            }
            if let Some(u) = uses {
                spec["allowedUses"] = u.into();
            }
            json!({
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
            })
        })
}

fn as_pool(r: Resource) -> IPPool {
    match r {
        Resource::IPPool(p) => p,
        other => panic!("not a pool: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_arbitrary_json_never_panics(doc in arb_json()) {
        let _ = decode_documents(doc.clone());
        if let Ok(r) = decode_document(doc) {
            let _ = validate(r);
        }
    }

    #[test]
    fn accepted_pools_are_usable_and_validation_is_idempotent(doc in arb_pool_doc()) {
        let Ok(r) = decode_document(doc) else { return Ok(()) };
        let Ok(valid) = validate(r) else { return Ok(()) };
        let again = validate(valid.clone()).expect("a validated pool stays valid");
        prop_assert_eq!(&again, &valid);
        let pool = as_pool(valid);
        let net: IpNet = pool.spec.cidr.parse().expect("accepted cidr parses");
        prop_assert_eq!(net.trunc(), net);
        let bs = pool.spec.block_size.expect("blockSize defaulted");
        let tiling = Tiling::new(net, bs).expect("the pool holds at least one block");
        prop_assert!(tiling.block_count() >= 1);
        match net {
            IpNet::V4(_) => prop_assert!((20..=32).contains(&bs)),
            IpNet::V6(_) => prop_assert!((116..=128).contains(&bs)),
        }
    }

    #[test]
    fn overlap_refusal_is_symmetric(a in arb_pool_doc(), b in arb_pool_doc()) {
        let decode = |d: Value| decode_document(d).ok().and_then(|r| validate(r).ok()).map(as_pool);
        let (Some(mut a), Some(mut b)) = (decode(a), decode(b)) else { return Ok(()) };
        a.metadata.name = "a".into();
        b.metadata.name = "b".into();
        let (pa, pb) = (ParsedPool::new(&a), ParsedPool::new(&b));
        let ab = check_pool_against(&pa, &[pb]).is_ok();
        let ba = check_pool_against(&pb, &[pa]).is_ok();
        prop_assert_eq!(ab, ba);
        let na: IpNet = a.spec.cidr.parse().unwrap();
        let nb: IpNet = b.spec.cidr.parse().unwrap();
        prop_assert_eq!(ab, !(na.contains(&nb.network()) || nb.contains(&na.network())));
    }
}

#[test]
fn generated_pools_are_often_valid() {
    // Guards the strategy above: the accepted-pool properties must see real pools.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..400 {
        let doc = arb_pool_doc().new_tree(&mut runner).unwrap().current();
        if decode_document(doc)
            .ok()
            .and_then(|r| validate(r).ok())
            .is_some()
        {
            accepted += 1;
        }
    }
    assert!(
        accepted > 40,
        "only {accepted} of 400 generated pools were valid"
    );
}
