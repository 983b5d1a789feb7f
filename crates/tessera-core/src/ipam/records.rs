//! The IPAM records kept in the store: blocks, per-pool block indexes and handles.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::store::KeyValue;

use super::IpamError;

/// Who an address was given to; kept in the handle record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Pod namespace.
    #[serde(rename = "ns", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod UID (`K8S_POD_UID`): tells a pod from an earlier one of the same name. Records
    /// written before it was kept have none.
    #[serde(rename = "uid", default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Node the address was assigned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Interface inside the container.
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Container id.
    #[serde(rename = "cid", default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Set on the handle holding a network's gateways (the address `bridge` with `isGateway`
    /// or `ptp` puts on the host side): that network's name. Never a pod's address.
    #[serde(rename = "gw", default, skip_serializing_if = "Option::is_none")]
    pub gateway_of: Option<String>,
    /// Set when the pod belongs to a StatefulSet: its name. The handle is then named after
    /// the pod rather than the container, and outlives the pod so that the pod created
    /// again under the same name gets the same addresses (see [`super::Ipam::assign_new`]).
    #[serde(rename = "sts", default, skip_serializing_if = "Option::is_none")]
    pub statefulset: Option<String>,
}

/// One allocated address as the admin views show it: its handle and, from the handle
/// record, who it was given to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Handle that owns the address.
    pub handle: String,
    /// Who the address was given to.
    pub attrs: Attributes,
}

/// An aligned block of a pool: the unit of compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block's network.
    pub cidr: IpNet,
    /// Network of the pool the block was carved from (pool names can be reused; networks
    /// identify the tiling).
    pub pool: IpNet,
    /// Node the block is affine to; `None` for blocks no node owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Offset where the next search for a free address starts, so that a released address is
    /// not handed out again at once.
    #[serde(default)]
    pub next: u32,
    /// Allocated addresses: offset inside the block → handle id. Who an address is for is
    /// kept in the handle only, so the blocks a node reads on every allocation stay small.
    #[serde(default)]
    pub allocations: BTreeMap<u32, String>,
    /// Mirrors the block's full flag in its pool index (both are written in one
    /// transaction), so a release knows whether the index needs updating without reading it.
    #[serde(rename = "full", default, skip_serializing_if = "std::ops::Not::not")]
    pub marked_full: bool,
}

impl Block {
    /// The tiling the block was cut from.
    pub fn tiling(&self) -> Option<crate::net::Tiling> {
        crate::net::Tiling::of_block(self.pool, &self.cidr)
    }

    /// A new, empty block.
    pub fn new(cidr: IpNet, pool: IpNet, affinity: Option<String>) -> Self {
        Self {
            cidr,
            pool,
            affinity,
            next: 0,
            allocations: BTreeMap::new(),
            marked_full: false,
        }
    }
}

/// One claimed block in a pool index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Block ordinal inside the pool's tiling.
    #[serde(rename = "o")]
    pub ordinal: u128,
    /// Home segment of the block's key (the node that claimed it, or the shared home).
    #[serde(rename = "h")]
    pub home: String,
    /// Set when an allocator saw the block full; cleared by the release that frees an address
    /// in it. A block marked full never has room; an unmarked block may be full.
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

/// Index of the claimed blocks of one tiling (pool network + block size), so that claiming
/// a block or telling that a pool is exhausted never lists the blocks themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolIndex {
    /// Claimed blocks, sorted by ordinal.
    #[serde(default)]
    pub blocks: Vec<IndexEntry>,
}

impl PoolIndex {
    /// Position of `ordinal` in `blocks` (Ok) or where it would be inserted (Err).
    pub fn find(&self, ordinal: u128) -> Result<usize, usize> {
        self.blocks.binary_search_by(|e| e.ordinal.cmp(&ordinal))
    }

    /// The entry for `ordinal`, if the block is claimed.
    pub fn entry(&self, ordinal: u128) -> Option<&IndexEntry> {
        self.find(ordinal).ok().map(|i| &self.blocks[i])
    }

    /// Marks the block `ordinal` full or not; returns whether anything changed.
    pub fn set_full(&mut self, ordinal: u128, full: bool) -> bool {
        match self.find(ordinal) {
            Ok(i) if self.blocks[i].full != full => {
                self.blocks[i].full = full;
                true
            }
            _ => false,
        }
    }

    /// First unclaimed ordinal below `count` that is usable. `unusable(o)` returns the next
    /// ordinal worth trying when block `o` cannot hold any address (all reserved, say), so
    /// a reservation spanning many blocks is skipped in one step.
    pub fn first_unclaimed(
        &self,
        count: u128,
        unusable: impl FnMut(u128) -> Option<u128>,
    ) -> Option<u128> {
        self.first_unclaimed_from(0, count, unusable)
    }

    /// [`PoolIndex::first_unclaimed`] at or after `start`: a plan that claims several blocks
    /// resumes after its last claim instead of walking the claimed blocks again.
    pub fn first_unclaimed_from(
        &self,
        start: u128,
        count: u128,
        mut unusable: impl FnMut(u128) -> Option<u128>,
    ) -> Option<u128> {
        let mut candidate = start;
        let first = self.find(start).unwrap_or_else(|pos| pos);
        let mut entries = self.blocks[first..].iter().map(|e| e.ordinal).peekable();
        while candidate < count {
            match entries.peek() {
                Some(&o) if o == candidate => {
                    entries.next();
                    candidate += 1;
                }
                Some(&o) if o < candidate => {
                    entries.next();
                }
                _ => match unusable(candidate) {
                    None => return Some(candidate),
                    Some(next) => candidate = next.max(candidate + 1),
                },
            }
        }
        None
    }
}

/// One address held by a handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleAddress {
    /// The address.
    pub ip: IpAddr,
    /// Key of the block holding it.
    pub block: String,
}

/// A handle: which addresses one attachment holds, so release never scans blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    /// Handle id.
    pub id: String,
    /// Attributes of the latest assignment.
    #[serde(default)]
    pub attrs: Attributes,
    /// Addresses held.
    #[serde(default)]
    pub addresses: Vec<HandleAddress>,
}

/// Decodes a JSON record, naming the key on failure.
pub fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::CorruptRecord {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

/// Encodes a record as JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("IPAM records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(ords: &[u128]) -> PoolIndex {
        PoolIndex {
            blocks: ords
                .iter()
                .map(|&o| IndexEntry {
                    ordinal: o,
                    home: "n".into(),
                    full: false,
                })
                .collect(),
        }
    }

    #[test]
    fn first_unclaimed_skips_claimed_and_unusable() {
        let any = |_| None;
        assert_eq!(index(&[]).first_unclaimed(4, any), Some(0));
        assert_eq!(index(&[0, 1, 3]).first_unclaimed(4, any), Some(2));
        assert_eq!(index(&[0, 1, 2, 3]).first_unclaimed(4, any), None);
        assert_eq!(
            index(&[1]).first_unclaimed(4, |o| (o == 0).then_some(1)),
            Some(2)
        );
        assert_eq!(index(&[]).first_unclaimed(1u128 << 100, any), Some(0));
        // A reservation over blocks 0..1000 is skipped in one step.
        let skip = |o: u128| (o < 1000).then_some(1000);
        assert_eq!(
            index(&[1000]).first_unclaimed(1u128 << 80, skip),
            Some(1001)
        );
    }

    #[test]
    fn first_unclaimed_from_starts_at_its_start() {
        let any = |_| None;
        let i = index(&[0, 1, 3, 4, 6]);
        assert_eq!(i.first_unclaimed_from(0, 8, any), Some(2));
        assert_eq!(i.first_unclaimed_from(3, 8, any), Some(5));
        assert_eq!(i.first_unclaimed_from(6, 8, any), Some(7));
        assert_eq!(i.first_unclaimed_from(8, 8, any), None);
        // The walk looks at no ordinal below its start.
        let mut seen = Vec::new();
        i.first_unclaimed_from(5, 8, |o| {
            seen.push(o);
            Some(o + 1)
        });
        assert_eq!(seen, [5, 7]);
    }

    #[test]
    fn attributes_without_a_pod_uid_read_and_write_as_before() {
        let before = br#"{"ns":"default","pod":"web-0","node":"n1","if":"eth0","cid":"c1"}"#;
        let attrs: Attributes = serde_json::from_slice(before).unwrap();
        assert_eq!(attrs.pod_uid, None);
        assert_eq!(encode(&attrs), before);
        let with_uid = Attributes {
            pod_uid: Some("0b7c4a5e".into()),
            ..attrs
        };
        let text = encode(&with_uid);
        assert!(text.windows(16).any(|w| w == br#""uid":"0b7c4a5e""#));
        assert_eq!(
            serde_json::from_slice::<Attributes>(&text).unwrap(),
            with_uid
        );
    }

    #[test]
    fn set_full_reports_changes() {
        let mut i = index(&[5]);
        assert!(i.set_full(5, true));
        assert!(!i.set_full(5, true));
        assert!(!i.set_full(6, true));
        assert!(i.entry(5).unwrap().full);
    }
}
