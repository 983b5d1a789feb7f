//! Properties of pool annotations (`cni.projectcalico.org/ipv4pools` and friends): any list
//! of names reads back from the JSON that prints it, also when a word processor turned its
//! quotes typographic, and no text makes the reader panic.

use proptest::prelude::*;
use tessera_core::ipam::parse_pool_annotation;

fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![3 => "[a-z0-9./-]{0,12}", 1 => ".{0,12}"], 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_lists_read_back(names in names()) {
        let printed = serde_json::to_string(&names).unwrap();
        prop_assert_eq!(parse_pool_annotation(&printed), Ok(names));
    }

    #[test]
    fn typographic_quotes_read_as_plain_ones(
        names in prop::collection::vec("[a-z0-9./-]{1,12}", 1..5),
        wrap in any::<bool>(),
    ) {
        let quoted: Vec<String> = names.iter().map(|n| format!("\u{201C}{n}\u{201D}")).collect();
        let mut text = format!("[{}]", quoted.join(", "));
        if wrap {
            text = format!("\u{2018}{text}\u{2019}");
        }
        prop_assert_eq!(parse_pool_annotation(&text), Ok(names));
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,40}") {
        if let Ok(names) = parse_pool_annotation(&text) {
            let printed = serde_json::to_string(&names).unwrap();
            prop_assert_eq!(parse_pool_annotation(&printed), Ok(names));
        }
    }
}
