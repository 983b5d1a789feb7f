//! Who still holds addresses of one pool: what a migration waits for before the pool can go.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::keys;
use crate::store::{Read, Snapshot, Store};

use super::assign::allocated;
use super::records::{decode, Attributes, Block, HandleRecord};
use super::IpamError;

/// One handle holding addresses of a pool, with who it was given to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The handle.
    pub handle: String,
    /// The handle's addresses inside the pool, in ascending order.
    pub addresses: Vec<IpAddr>,
    /// Who the addresses were given to (empty when the handle record is missing).
    pub attrs: Attributes,
}

impl Holder {
    /// `namespace/pod` when the handle belongs to a pod.
    pub fn pod(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.attrs.namespace.as_deref()?,
            self.attrs.pod.as_deref()?
        ))
    }
}

/// Every handle holding an address in a block carved from `pool` (the pool's network: blocks
/// of a deleted pool of that network count too), ordered by handle.
pub(super) fn holders<S: Store + ?Sized>(store: &S, pool: IpNet) -> Result<Vec<Holder>, IpamError> {
    let snap = store.read(&[Read::Prefix(keys::BLOCK_PREFIX.into())])?;
    let mut addresses: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for kv in snap.list(0) {
        let block: Block = decode(kv)?;
        if block.pool != pool {
            continue;
        }
        for (ip, handle) in allocated(&block) {
            addresses.entry(handle.clone()).or_default().push(ip);
        }
    }
    let mut attrs_of: BTreeMap<String, Attributes> = BTreeMap::new();
    let (records, lists) = handle_records(store, &addresses)?;
    for kv in (0..lists).flat_map(|i| records.list(i)) {
        let h: HandleRecord = decode(kv)?;
        if addresses.contains_key(&h.id) {
            attrs_of.insert(h.id, h.attrs);
        }
    }
    Ok(addresses
        .into_iter()
        .map(|(handle, mut addresses)| {
            addresses.sort();
            let attrs = attrs_of.remove(&handle).unwrap_or_default();
            Holder {
                handle,
                addresses,
                attrs,
            }
        })
        .collect())
}

/// Handle records read one by one in a single read when a pool has few holders left (a
/// draining pool is polled while the store may hold many more handles); all of them when it
/// has many (one read of a transaction's size: etcd caps operations per transaction).
const FEW_HOLDERS: usize = 100;

fn handle_records<S: Store + ?Sized, V>(
    store: &S,
    holders: &BTreeMap<String, V>,
) -> Result<(Snapshot, usize), IpamError> {
    let reads: Vec<Read> = if holders.len() > FEW_HOLDERS {
        vec![Read::Prefix(keys::HANDLE_PREFIX.into())]
    } else {
        holders
            .keys()
            .map(|id| Read::Get(keys::handle(id)))
            .collect()
    };
    if reads.is_empty() {
        return Ok((Snapshot::default(), 0));
    }
    Ok((store.read(&reads)?, reads.len()))
}
