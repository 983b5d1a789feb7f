//! `tessera apply`'s reader on arbitrary text: it never panics or hangs, and every set of
//! resources it accepts reads back the same after `tessera get -o json` or `-o yaml` prints it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera_fuzz::cli_manifest::read_manifests;
use tessera_fuzz::cli_yaml::to_yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = read_manifests(text, "input") else {
        return;
    };
    let manifests: Vec<Value> = resources.iter().map(|r| r.to_manifest()).collect();

    let json = serde_json::to_string_pretty(&Value::Array(manifests.clone())).unwrap();
    match read_manifests(&json, "json") {
        Ok(again) => assert_eq!(again, resources, "JSON round trip changed:\n{json}"),
        Err(e) => panic!("printed JSON does not read back: {e}\n{json}"),
    }

    let yaml: Vec<String> = manifests.iter().map(to_yaml).collect();
    let yaml = yaml.join("---\n");
    match read_manifests(&yaml, "yaml") {
        Ok(again) => assert_eq!(again, resources, "YAML round trip changed:\n{yaml}"),
        Err(e) => panic!("printed YAML does not read back: {e}\n{yaml}"),
    }
});
