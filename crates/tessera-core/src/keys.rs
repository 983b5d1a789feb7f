//! Where each record lives in the store. Keys are relative; a backend may add its own prefix.
//!
//! Everything the allocator needs to decide (IPAM configuration, pools, reservations) lives
//! under `config/`, so one range read fetches it all. A block lives under the node that first
//! claimed it (its *home*), so one range read fetches every block a node allocates from.

use ipnet::IpNet;

use crate::net::{net_key, Tiling};

/// Prefix of everything configuration-like (one range read).
pub const CONFIG_PREFIX: &str = "config/";
/// Rewritten with a fresh random nonce by every change to the configuration (pools,
/// reservations, the IPAM configuration), so one compare on it tells whether the
/// configuration is still what a reader saw, across store restores and rebuilds too.
pub const CONFIG_GUARD: &str = "config/guard";
/// The IPAM configuration record.
pub const IPAM_CONFIG: &str = "config/ipam";
/// Prefix of pools.
pub const POOL_PREFIX: &str = "config/pools/";
/// Prefix of tiling markers: one per pool network and block size that has claimed blocks,
/// so the allocator learns from its configuration read which leftover blocks of deleted or
/// re-created pools it must stay clear of.
pub const TILING_PREFIX: &str = "config/tilings/";
/// Prefix of SpiderIPPools.
pub const SPIDER_POOL_PREFIX: &str = "config/spiderippools/";
/// Prefix of SpiderSubnets.
pub const SPIDER_SUBNET_PREFIX: &str = "config/spidersubnets/";
/// Prefix of SpiderReservedIPs.
pub const SPIDER_RESERVED_PREFIX: &str = "config/spiderreservedips/";
/// Prefix of reservations.
pub const RESERVATION_PREFIX: &str = "config/reservations/";
/// Prefix of nodes.
pub const NODE_PREFIX: &str = "nodes/";
/// Prefix of namespaces.
pub const NAMESPACE_PREFIX: &str = "namespaces/";
/// Prefix of blocks.
pub const BLOCK_PREFIX: &str = "blocks/";
/// Prefix of per-pool block indexes.
pub const POOL_INDEX_PREFIX: &str = "pool-index/";
/// Prefix of handles.
pub const HANDLE_PREFIX: &str = "handles/";

/// Home segment used for blocks that no node claimed (shared blocks).
pub const SHARED_HOME: &str = "_shared";

/// Key of a pool.
pub fn pool(name: &str) -> String {
    format!("{POOL_PREFIX}{name}")
}

/// Key of a SpiderIPPool.
pub fn spider_pool(name: &str) -> String {
    format!("{SPIDER_POOL_PREFIX}{name}")
}

/// Key of a SpiderSubnet.
pub fn spider_subnet(name: &str) -> String {
    format!("{SPIDER_SUBNET_PREFIX}{name}")
}

/// Key of a SpiderReservedIP.
pub fn spider_reserved(name: &str) -> String {
    format!("{SPIDER_RESERVED_PREFIX}{name}")
}

/// Key of a reservation.
pub fn reservation(name: &str) -> String {
    format!("{RESERVATION_PREFIX}{name}")
}

/// Key of a node.
pub fn node(name: &str) -> String {
    format!("{NODE_PREFIX}{name}")
}

/// Key of a namespace.
pub fn namespace(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

/// Prefix of every block whose home is `home`.
pub fn blocks_of(home: &str) -> String {
    format!("{BLOCK_PREFIX}{home}/")
}

/// Key of a block.
pub fn block(home: &str, cidr: &IpNet) -> String {
    format!("{BLOCK_PREFIX}{home}/{}", net_key(cidr))
}

/// Block ordinals per pool index shard: a claim or flag change rewrites one shard, so what it
/// writes is bounded by this many entries (about 27 B each), whatever the size of the pool.
pub const POOL_INDEX_SHARD_ORDINALS: u128 = 128;

/// Key where versions before sharding kept a tiling's whole block index in one record. Read
/// still, and moved into shards by the first write that touches it.
pub fn legacy_pool_index(tiling: &Tiling) -> String {
    format!("{POOL_INDEX_PREFIX}{}", tiling.key())
}

/// Prefix of the shards of a tiling's block index. It ends in `/`, so it neither matches the
/// legacy key nor the shards of a tiling whose key extends this one (`…-12` and `…-120`).
pub fn pool_index_shards(tiling: &Tiling) -> String {
    format!("{POOL_INDEX_PREFIX}{}/", tiling.key())
}

/// Key of shard `shard` (ordinals `shard * POOL_INDEX_SHARD_ORDINALS` onwards) of a tiling's
/// block index. The number is zero-padded to the width of the tiling's last shard, so key
/// order is ordinal order.
pub fn pool_index_shard(tiling: &Tiling, shard: u128) -> String {
    let last = (tiling.block_count() - 1) / POOL_INDEX_SHARD_ORDINALS;
    let width = last.to_string().len();
    format!("{}{shard:0width$}", pool_index_shards(tiling))
}

/// Parses a key under [`POOL_INDEX_PREFIX`]: its tiling, and its shard number (`None` for the
/// legacy whole-index key).
pub fn parse_pool_index_key(key: &str) -> Option<(Tiling, Option<u128>)> {
    let rest = key.strip_prefix(POOL_INDEX_PREFIX)?;
    match rest.split_once('/') {
        None => Some((Tiling::parse_key(rest)?, None)),
        Some((tiling, shard)) => {
            let tiling = Tiling::parse_key(tiling)?;
            let number: u128 = shard.parse().ok()?;
            (pool_index_shard(&tiling, number) == key).then_some((tiling, Some(number)))
        }
    }
}

/// Key of the marker saying a tiling has claimed blocks.
pub fn tiling_marker(tiling: &Tiling) -> String {
    format!("{TILING_PREFIX}{}", tiling.key())
}

/// Key of a handle; `/` and `%` in the id are escaped so the id stays one key segment.
pub fn handle(id: &str) -> String {
    let mut out = String::with_capacity(HANDLE_PREFIX.len() + id.len());
    out.push_str(HANDLE_PREFIX);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// Inverse of [`handle`] for the part after the prefix.
pub fn handle_id_from_key(key: &str) -> Option<String> {
    let raw = key.strip_prefix(HANDLE_PREFIX)?;
    Some(raw.replace("%2F", "/").replace("%25", "%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_index_shard_keys_sort_by_ordinal_and_parse_back() {
        let tiling = Tiling::parse_key("10.0.0.0-16-26").unwrap();
        assert_eq!(pool_index_shard(&tiling, 3), "pool-index/10.0.0.0-16-26/3");
        let big = Tiling::parse_key("10.0.0.0-8-32").unwrap();
        assert_eq!(pool_index_shard(&big, 3), "pool-index/10.0.0.0-8-32/000003");
        assert!(pool_index_shard(&big, 3) < pool_index_shard(&big, 10));
        assert_eq!(
            parse_pool_index_key("pool-index/10.0.0.0-8-32/000003"),
            Some((big, Some(3)))
        );
        assert_eq!(
            parse_pool_index_key(&legacy_pool_index(&tiling)),
            Some((tiling, None))
        );
        // Not canonical: the writer would never find it again.
        assert_eq!(parse_pool_index_key("pool-index/10.0.0.0-8-32/3"), None);
        // The shard prefix of one tiling catches neither its legacy key nor another tiling.
        let v6 = Tiling::parse_key("fd00::-8-12").unwrap();
        let v6_long = Tiling::parse_key("fd00::-8-120").unwrap();
        assert!(!legacy_pool_index(&v6).starts_with(&pool_index_shards(&v6)));
        assert!(!pool_index_shard(&v6_long, 0).starts_with(&pool_index_shards(&v6)));
    }

    #[test]
    fn handle_keys_escape_slashes() {
        let k = handle("net/a%b.c");
        assert_eq!(k, "handles/net%2Fa%25b.c");
        assert_eq!(handle_id_from_key(&k).unwrap(), "net/a%b.c");
    }
}
