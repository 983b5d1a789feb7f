//! `tessera get -o yaml`'s emitter on arbitrary JSON values: the YAML it prints parses back
//! (with the YAML parser `tessera apply` uses) into the value it printed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera_fuzz::cli_yaml::to_yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let yaml = to_yaml(&value);
    match serde_saphyr::from_str::<Value>(&yaml) {
        Ok(again) => assert_eq!(again, value, "round trip changed the value:\n{yaml}"),
        Err(e) => panic!("printed YAML does not parse: {e}\n{yaml}"),
    }
});
