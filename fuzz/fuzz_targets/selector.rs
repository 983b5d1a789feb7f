//! The selector language on arbitrary text: parsing and matching never panic or hang (deep
//! nesting is refused, not recursed into), and an accepted selector parses again from the
//! text it displays, with the same meaning.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tessera_core::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let again = Selector::parse(&selector.to_string())
        .unwrap_or_else(|e| panic!("displayed selector does not parse: {e}"));
    assert_eq!(again, selector);
    // Labels made of the input's own words, so keys and values it mentions can match.
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || "-_./".contains(c)))
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    let labels: BTreeMap<String, String> = words
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
        .collect();
    assert_eq!(selector.matches(&labels), again.matches(&labels));
    selector.matches(&BTreeMap::new());
});
