//! Who holds what, arranged for drawing: each pool's blocks grouped by the node they are
//! affine to, and optionally by the value of a label on those nodes (`rack`). The counts are
//! those of [`Usage`], so a picture and `ipam show` never disagree. Reads configuration,
//! blocks and nodes in one snapshot; handles are not read (nothing here needs them).

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::keys;
use crate::resources::kube::Node;
use crate::store::{Read, Store};

use super::context::Context;
use super::inspect::{usage_from, BlockUsage, Usage};
use super::records::decode;
use super::IpamError;

/// One pool's blocks, grouped for drawing.
#[derive(Clone, Debug)]
pub struct PoolPicture {
    /// Pool name; empty for the blocks left from a deleted pool.
    pub name: String,
    /// Pool network.
    pub cidr: IpNet,
    /// Addresses in the pool (as `ipam show` counts them).
    pub total: u128,
    /// Addresses allocated.
    pub in_use: u128,
    /// Groups in order: named groups by name, then the node-less and unaffined ones.
    pub groups: Vec<GroupPicture>,
}

/// Where a group of nodes sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    /// Every node, when the picture is not grouped by a label.
    All,
    /// Nodes whose label has this value.
    Value(String),
    /// Nodes without the label (or without a node record).
    Unlabeled,
    /// Blocks affine to no node.
    Unaffined,
}

/// Nodes sharing a label value (or all nodes, when not grouping), with their totals.
#[derive(Clone, Debug)]
pub struct GroupPicture {
    /// Which nodes these are.
    pub key: GroupKey,
    /// Addresses in the group's blocks.
    pub total: u128,
    /// Addresses allocated in them.
    pub in_use: u128,
    /// Nodes in name order; a group of unaffined blocks has one entry without a node.
    pub nodes: Vec<NodeBlocks>,
}

/// One node's blocks of one pool.
#[derive(Clone, Debug)]
pub struct NodeBlocks {
    /// The node; `None` for blocks affine to no node.
    pub node: Option<String>,
    /// Addresses in these blocks.
    pub total: u128,
    /// Addresses allocated in them.
    pub in_use: u128,
    /// The blocks, by network.
    pub blocks: Vec<BlockUsage>,
}

/// One node's blocks over every pool.
#[derive(Clone, Debug, Default)]
pub struct NodeTotal {
    /// Value of the grouping label on the node, if grouping and set.
    pub group: Option<String>,
    /// Blocks affine to the node.
    pub blocks: usize,
    /// Addresses in them.
    pub total: u128,
    /// Addresses allocated in them.
    pub in_use: u128,
}

/// The whole picture.
#[derive(Clone, Debug, Default)]
pub struct Picture {
    /// Label the nodes are grouped by, if any.
    pub group_by: Option<String>,
    /// Pools in `ipam show` order (by name, then deleted pools' blocks).
    pub pools: Vec<PoolPicture>,
    /// Per node over every pool, by node name; unaffined blocks are not counted here.
    pub nodes: BTreeMap<String, NodeTotal>,
}

/// Pool and block usage without the borrowed addresses, which need every handle read.
/// Every count is the same as [`super::Ipam::usage`]'s.
pub fn usage_counts<S: Store + ?Sized>(store: &S) -> Result<Usage, IpamError> {
    let snap = store.read(&[
        Read::Prefix(keys::CONFIG_PREFIX.into()),
        Read::Prefix(keys::BLOCK_PREFIX.into()),
    ])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    usage_from(&ctx, snap.list(1), None)
}

/// The picture of every pool, nodes grouped by the value of label `group_by` when given.
pub fn picture<S: Store + ?Sized>(store: &S, group_by: Option<&str>) -> Result<Picture, IpamError> {
    let snap = store.read(&[
        Read::Prefix(keys::CONFIG_PREFIX.into()),
        Read::Prefix(keys::BLOCK_PREFIX.into()),
        Read::Prefix(keys::NODE_PREFIX.into()),
    ])?;
    let ctx = Context::from_records(snap.list(0), None, None)?;
    let usage = usage_from(&ctx, snap.list(1), None)?;
    let mut labels: BTreeMap<String, Option<String>> = BTreeMap::new();
    if let Some(label) = group_by {
        for kv in snap.list(2) {
            let node: Node = decode(kv)?;
            let value = node.metadata.labels.get(label).cloned();
            labels.insert(node.metadata.name, value);
        }
    }
    Ok(arrange(usage, group_by, &labels))
}

/// Groups `usage` by node and label value; `labels` maps node names to their label value.
fn arrange(
    usage: Usage,
    group_by: Option<&str>,
    labels: &BTreeMap<String, Option<String>>,
) -> Picture {
    let group_of = |node: Option<&String>| match (node, group_by) {
        (None, _) => GroupKey::Unaffined,
        (Some(_), None) => GroupKey::All,
        (Some(n), Some(_)) => match labels.get(n).cloned().flatten() {
            Some(value) => GroupKey::Value(value),
            None => GroupKey::Unlabeled,
        },
    };
    let mut nodes: BTreeMap<String, NodeTotal> = BTreeMap::new();
    let mut pools = Vec::with_capacity(usage.pools.len());
    for pool in usage.pools {
        // group → node (None sorts first; moved last below) → blocks
        let mut grouped: BTreeMap<GroupKey, BTreeMap<Option<String>, Vec<BlockUsage>>> =
            BTreeMap::new();
        for block in pool.blocks {
            let key = group_of(block.affinity.as_ref());
            if let Some(node) = &block.affinity {
                let total = nodes.entry(node.clone()).or_default();
                total.group = match &key {
                    GroupKey::Value(v) => Some(v.clone()),
                    _ => None,
                };
                total.blocks += 1;
                total.total += block.total;
                total.in_use += block.in_use;
            }
            grouped
                .entry(key)
                .or_default()
                .entry(block.affinity.clone())
                .or_default()
                .push(block);
        }
        let groups = grouped
            .into_iter()
            .map(|(key, by_node)| group_picture(key, by_node))
            .collect();
        pools.push(PoolPicture {
            name: pool.name,
            cidr: pool.cidr,
            total: pool.total,
            in_use: pool.in_use,
            groups,
        });
    }
    Picture {
        group_by: group_by.map(str::to_string),
        pools,
        nodes,
    }
}

fn group_picture(
    key: GroupKey,
    by_node: BTreeMap<Option<String>, Vec<BlockUsage>>,
) -> GroupPicture {
    let mut nodes: Vec<NodeBlocks> = by_node
        .into_iter()
        .map(|(node, blocks)| NodeBlocks {
            node,
            total: blocks.iter().map(|b| b.total).sum(),
            in_use: blocks.iter().map(|b| b.in_use).sum(),
            blocks,
        })
        .collect();
    // Unaffined blocks (node `None`, sorted first) go after the nodes.
    nodes.sort_by(|a, b| (a.node.is_none(), &a.node).cmp(&(b.node.is_none(), &b.node)));
    GroupPicture {
        key,
        total: nodes.iter().map(|n| n.total).sum(),
        in_use: nodes.iter().map(|n| n.in_use).sum(),
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::PoolUsage;

    fn block(cidr: &str, node: Option<&str>, in_use: u128) -> BlockUsage {
        let cidr: IpNet = cidr.parse().unwrap();
        BlockUsage {
            cidr,
            affinity: node.map(str::to_string),
            total: crate::net::net_size(&cidr),
            in_use,
            borrowed: Vec::new(),
        }
    }

    fn usage() -> Usage {
        Usage {
            pools: vec![PoolUsage {
                name: "pool-a".into(),
                cidr: "10.0.0.0/24".parse().unwrap(),
                total: 256,
                in_use: 13,
                blocks: vec![
                    block("10.0.0.0/26", Some("n2"), 5),
                    block("10.0.0.64/26", None, 1),
                    block("10.0.0.128/26", Some("n1"), 3),
                    block("10.0.0.192/26", Some("n3"), 4),
                ],
            }],
        }
    }

    #[test]
    fn nodes_are_grouped_by_label_with_unlabeled_and_unaffined_last() {
        let labels = BTreeMap::from([
            ("n1".to_string(), Some("r1".to_string())),
            ("n2".to_string(), Some("r1".to_string())),
            ("n3".to_string(), None),
        ]);
        let picture = arrange(usage(), Some("rack"), &labels);
        let groups = &picture.pools[0].groups;
        let keys: Vec<_> = groups.iter().map(|g| g.key.clone()).collect();
        assert_eq!(
            keys,
            [
                GroupKey::Value("r1".into()),
                GroupKey::Unlabeled,
                GroupKey::Unaffined
            ]
        );
        let r1: Vec<_> = groups[0].nodes.iter().map(|n| n.node.clone()).collect();
        assert_eq!(r1, [Some("n1".to_string()), Some("n2".to_string())]);
        assert_eq!((groups[0].in_use, groups[0].total), (8, 128));
        assert_eq!(picture.nodes["n2"].group.as_deref(), Some("r1"));
        assert_eq!(picture.nodes["n3"].group, None);
        assert_eq!(picture.nodes.len(), 3);
    }

    #[test]
    fn without_a_label_every_node_is_in_one_group_and_unaffined_blocks_apart() {
        let picture = arrange(usage(), None, &BTreeMap::new());
        let groups = &picture.pools[0].groups;
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key, GroupKey::All);
        assert_eq!(groups[0].nodes.len(), 3);
        assert_eq!(groups[1].key, GroupKey::Unaffined);
        assert_eq!(groups[1].nodes[0].node, None);
        let in_use: u128 = groups.iter().map(|g| g.in_use).sum();
        assert_eq!(in_use, picture.pools[0].in_use);
    }
}
