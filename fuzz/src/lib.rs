//! The parsers of Tessera's two binaries, compiled from their own source files so the fuzz
//! targets exercise exactly the code `tessera` and `tessera-ipam` run. The binaries have no
//! library targets; `#[path]` brings their modules in unchanged. The CNI modules sit at the
//! crate root because they refer to each other as `crate::error` and `crate::version`.

#![allow(dead_code)]

/// `tessera apply`'s manifest reader (multi-document YAML or JSON).
#[path = "../../crates/tessera-cli/src/manifest_input.rs"]
pub mod cli_manifest;

/// `tessera get -o yaml`'s emitter.
#[path = "../../crates/tessera-cli/src/yaml.rs"]
pub mod cli_yaml;

/// The CNI plugin's error type and codes.
#[path = "../../crates/tessera-cni/src/error.rs"]
pub mod error;

/// The CNI spec versions the plugin speaks.
#[path = "../../crates/tessera-cni/src/version.rs"]
pub mod version;

/// The plugin's network configuration (stdin).
#[path = "../../crates/tessera-cni/src/config.rs"]
pub mod config;

/// The plugin's `CNI_*` environment.
#[path = "../../crates/tessera-cni/src/env.rs"]
pub mod env;

/// The plugin's Spiderpool pod annotations.
#[path = "../../crates/tessera-cni/src/spider_annotations.rs"]
pub mod spider_annotations;

/// Splits a fuzz input at its first NUL byte: the part before and the part after (empty
/// when there is no NUL). Targets that read two inputs (environment and stdin, two
/// annotations) take them this way.
pub fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
