//! `tessera status`: which datastore is in use and what it holds, so a newcomer can tell at a
//! glance whether they are looking at the store they meant.

use std::fmt::Write as _;

use anyhow::Context as _;
use tessera_core::ipam::Block;
use tessera_core::keys;
use tessera_core::resources::calico::IPPool;
use tessera_core::store::Read;

use crate::datastore::{Datastore, Origin};

/// The status report.
pub fn status(ds: &Datastore) -> anyhow::Result<String> {
    let snap = ds
        .store
        .read(&[
            Read::Prefix(keys::POOL_PREFIX.into()),
            Read::Prefix(keys::NODE_PREFIX.into()),
            Read::Prefix(keys::NAMESPACE_PREFIX.into()),
            Read::Prefix(keys::BLOCK_PREFIX.into()),
            Read::Prefix(keys::HANDLE_PREFIX.into()),
        ])
        .context("cannot read the datastore")?;
    let mut enabled = 0;
    for kv in snap.list(0) {
        let pool: IPPool = serde_json::from_slice(&kv.value).with_context(|| {
            format!(
                "record {} in {} is damaged; run `tessera ipam check`",
                kv.key,
                ds.describe()
            )
        })?;
        if !pool.spec.disabled {
            enabled += 1;
        }
    }
    let mut allocated = 0usize;
    for kv in snap.list(3) {
        let block: Block = serde_json::from_slice(&kv.value).with_context(|| {
            format!(
                "record {} in {} is damaged; run `tessera ipam check`",
                kv.key,
                ds.describe()
            )
        })?;
        allocated += block.allocations.len();
    }
    let origin = match ds.origin {
        Origin::Flag => " (from --datastore)",
        Origin::Env => " (from TESSERA_DATASTORE)",
        Origin::Default => " (the default; choose another with --datastore or TESSERA_DATASTORE)",
    };
    let mut out = String::new();
    let _ = writeln!(out, "Datastore: {}{origin}", ds.describe());
    let _ = writeln!(out, "IP pools: {} ({enabled} enabled)", snap.list(0).len());
    let _ = writeln!(out, "Nodes: {}", snap.list(1).len());
    let _ = writeln!(out, "Namespaces: {}", snap.list(2).len());
    let _ = writeln!(out, "Blocks: {}", snap.list(3).len());
    let _ = writeln!(out, "Allocated addresses: {allocated}");
    let _ = writeln!(out, "Handles: {}", snap.list(4).len());
    Ok(out)
}
