//! Links `tessera-ipam` as a position-dependent executable on Linux.
//!
//! The plugin runs once per pod start and stop, so its start-up is part of every pod's. A
//! position-independent executable makes the loader apply one relocation per pointer in the
//! binary's data (about 12,000 here) before `main`; linked at a fixed address it applies
//! none, which saves about 0.1 ms per call (docs/BENCHMARKS.md). The reference CNI plugins,
//! built by Go, are position-dependent too. Shared libraries, stack and heap are still placed
//! at random addresses.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bin=tessera-ipam=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
