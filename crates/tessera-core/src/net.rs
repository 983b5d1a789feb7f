//! Address and block arithmetic on `u128`, for IPv4 and IPv6 alike, without ever
//! enumerating a pool's addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Address family bit width: 32 or 128.
pub fn family_bits(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

/// The address as an integer.
pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The integer as an address of the family (`v6 == false`: the low 32 bits as IPv4).
pub fn u128_to_addr(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

/// Builds a network from its first address and prefix length.
pub fn net_from(first: u128, prefix: u8, v6: bool) -> IpNet {
    match u128_to_addr(first, v6) {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix <= 32")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix <= 128")),
    }
}

/// First address of a network, as an integer.
pub fn net_first(net: &IpNet) -> u128 {
    addr_to_u128(net.network())
}

/// Number of addresses in a network (`2^(bits - prefix)`), saturating at `u128::MAX` for `::/0`.
pub fn net_size(net: &IpNet) -> u128 {
    let host_bits = u32::from(family_bits(net) - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Whether two networks share any address.
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The IPv4-mapped IPv6 range as people write it (Rust prints it `::ffff:0.0.0.0/96`).
pub const IPV4_MAPPED_TEXT: &str = "::ffff:0:0/96";

/// `::ffff:0:0/96`, the IPv4-mapped IPv6 addresses (RFC 4291, 2.5.5.2): each stands for an
/// IPv4 address, so a pool of them would hand out IPv4 addresses a second time in disguise.
pub fn ipv4_mapped_range() -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("96 <= 128"))
}

/// Key-safe text form of a network: `10.0.0.0/26` becomes `10.0.0.0-26`.
pub fn net_key(net: &IpNet) -> String {
    format!("{}-{}", net.network(), net.prefix_len())
}

/// Parses [`net_key`] output.
pub fn parse_net_key(text: &str) -> Option<IpNet> {
    let (addr, len) = text.rsplit_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

/// How a pool is cut into aligned blocks. A pool network plus a block size identifies the
/// blocks carved from it, even after the pool itself is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tiling {
    /// The pool's network.
    pub pool: IpNet,
    /// Prefix length of each block (≥ the pool's prefix length).
    pub block_prefix: u8,
}

impl Tiling {
    /// A tiling; `None` when the block prefix is shorter than the pool's or too long.
    pub fn new(pool: IpNet, block_prefix: u8) -> Option<Self> {
        let pool = pool.trunc();
        (block_prefix >= pool.prefix_len() && block_prefix <= family_bits(&pool))
            .then_some(Self { pool, block_prefix })
    }

    /// True for IPv6 pools.
    pub fn is_v6(&self) -> bool {
        matches!(self.pool, IpNet::V6(_))
    }

    /// The tiling a block belongs to, from the block and its pool network.
    pub fn of_block(pool: IpNet, block: &IpNet) -> Option<Self> {
        Self::new(pool, block.prefix_len())
    }

    /// Key-safe text form: `10.0.0.0-16-26`.
    pub fn key(&self) -> String {
        format!("{}-{}", net_key(&self.pool), self.block_prefix)
    }

    /// Parses [`Tiling::key`] output.
    pub fn parse_key(text: &str) -> Option<Self> {
        let (net, prefix) = text.rsplit_once('-')?;
        Self::new(parse_net_key(net)?, prefix.parse().ok()?)
    }

    /// Number of blocks in the pool: `2^(blockPrefix - poolPrefix)`.
    pub fn block_count(&self) -> u128 {
        let bits = u32::from(self.block_prefix - self.pool.prefix_len());
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// Addresses per block: `2^(bits - blockPrefix)`; at most 2^12 for valid pools, but the
    /// arithmetic holds for any tiling.
    pub fn block_len(&self) -> u128 {
        let bits = u32::from(family_bits(&self.pool) - self.block_prefix);
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// The block with the given ordinal (0 = the block at the pool's start).
    pub fn block(&self, ordinal: u128) -> Option<IpNet> {
        if ordinal >= self.block_count() {
            return None;
        }
        let first = net_first(&self.pool) + ordinal * self.block_len();
        Some(net_from(first, self.block_prefix, self.is_v6()))
    }

    /// Ordinal of the block holding `addr`, if the address is in the pool.
    pub fn block_ordinal_of(&self, addr: IpAddr) -> Option<u128> {
        self.pool
            .contains(&addr)
            .then(|| (addr_to_u128(addr) - net_first(&self.pool)) / self.block_len())
    }

    /// Ordinal of `block` in this tiling, if it is exactly one of the pool's blocks.
    pub fn ordinal_of_block(&self, block: &IpNet) -> Option<u128> {
        if block.prefix_len() != self.block_prefix {
            return None;
        }
        self.block_ordinal_of(block.network())
    }
}

/// The first address after the network address, where `bridge` (isGateway) and `ptp` put
/// the gateway when the result has none; `None` for networks too small to spare one (IPv4
/// /31 and /32, IPv6 /127 and /128).
pub fn first_host(net: &IpNet) -> Option<IpAddr> {
    let room = match net {
        IpNet::V4(n) => n.prefix_len() <= 30,
        IpNet::V6(n) => n.prefix_len() <= 126,
    };
    room.then(|| u128_to_addr(net_first(net) + 1, net.network().is_ipv6()))
}

/// Position of an address inside its block.
pub fn offset_in_block(block: &IpNet, addr: IpAddr) -> Option<u32> {
    if !block.contains(&addr) {
        return None;
    }
    u32::try_from(addr_to_u128(addr) - net_first(block)).ok()
}

/// The address at `offset` inside the block.
pub fn addr_in_block(block: &IpNet, offset: u32) -> IpAddr {
    u128_to_addr(
        net_first(block) + u128::from(offset),
        matches!(block, IpNet::V6(_)),
    )
}

/// Networks with an id each, answering "which of them overlap this network?" without looking
/// at the others: two networks overlap only when one contains the other, so the answer is the
/// query's supernets (one lookup per shorter prefix length) and the networks starting inside
/// it (one range scan).
#[derive(Clone, Debug, Default)]
pub struct OverlapIndex {
    /// (IPv6, first address, prefix length) to the ids of the networks with it.
    nets: BTreeMap<(bool, u128, u8), Vec<usize>>,
}

impl OverlapIndex {
    /// Adds network `net` under `id`.
    pub fn insert(&mut self, net: &IpNet, id: usize) {
        let net = net.trunc();
        let key = (is_v6(&net), net_first(&net), net.prefix_len());
        self.nets.entry(key).or_default().push(id);
    }

    /// The ids of the networks sharing an address with `net`, ascending, each once.
    pub fn overlapping(&self, net: &IpNet) -> Vec<usize> {
        let net = net.trunc();
        let (v6, first, prefix) = (is_v6(&net), net_first(&net), net.prefix_len());
        let last = addr_to_u128(net.broadcast());
        let mut ids = Vec::new();
        for shorter in 0..prefix {
            let start = net_first(&net_from(first, shorter, v6).trunc());
            if let Some(found) = self.nets.get(&(v6, start, shorter)) {
                ids.extend_from_slice(found);
            }
        }
        let inside = self
            .nets
            .range((v6, first, prefix)..=(v6, last, u8::MAX))
            .filter(|((_, _, p), _)| *p >= prefix);
        for (_, found) in inside {
            ids.extend_from_slice(found);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn is_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn v4_blocks_for_every_block_size() {
        let pool = net("10.0.0.0/16");
        for bs in 20..=32u8 {
            let t = Tiling::new(pool, bs).unwrap();
            assert_eq!(t.block_count(), 1u128 << (bs - 16));
            assert_eq!(t.block_len(), 1u128 << (32 - bs));
            let last = t.block(t.block_count() - 1).unwrap();
            assert_eq!(last.broadcast(), "10.0.255.255".parse::<IpAddr>().unwrap());
            assert_eq!(t.block(t.block_count()), None);
            let addr: IpAddr = "10.0.77.200".parse().unwrap();
            let ord = t.block_ordinal_of(addr).unwrap();
            assert!(t.block(ord).unwrap().contains(&addr));
            assert_eq!(t.ordinal_of_block(&t.block(ord).unwrap()), Some(ord));
        }
    }

    #[test]
    fn v6_blocks_for_every_block_size() {
        let pool = net("fd00:1:2::/48");
        for bs in 116..=128u8 {
            let t = Tiling::new(pool, bs).unwrap();
            assert_eq!(t.block_count(), 1u128 << (bs - 48));
            assert_eq!(t.block_len(), 1u128 << (128 - bs));
            let last = t.block(t.block_count() - 1).unwrap();
            assert_eq!(
                last.broadcast(),
                "fd00:1:2:ffff:ffff:ffff:ffff:ffff"
                    .parse::<IpAddr>()
                    .unwrap()
            );
            let addr: IpAddr = "fd00:1:2:abcd::1234".parse().unwrap();
            let ord = t.block_ordinal_of(addr).unwrap();
            let block = t.block(ord).unwrap();
            assert!(block.contains(&addr));
            let off = offset_in_block(&block, addr).unwrap();
            assert_eq!(addr_in_block(&block, off), addr);
        }
    }

    #[test]
    fn large_pools_do_not_enumerate() {
        let t = Tiling::new(net("10.0.0.0/8"), 32).unwrap();
        assert_eq!(t.block_count(), 1 << 24);
        assert_eq!(t.block((1 << 24) - 1).unwrap(), net("10.255.255.255/32"));
        let t = Tiling::new(net("fd00::/48"), 128).unwrap();
        assert_eq!(t.block_count(), 1u128 << 80);
        assert_eq!(t.block(1u128 << 79).unwrap(), net("fd00:0:0:8000::/128"));
    }

    #[test]
    fn tiling_rejects_block_shorter_than_pool() {
        assert!(Tiling::new(net("10.0.0.0/16"), 15).is_none());
        assert!(Tiling::new(net("10.0.0.0/16"), 33).is_none());
    }

    #[test]
    fn net_keys_round_trip() {
        for s in ["10.0.0.0/26", "fd00::/122", "0.0.0.0/0"] {
            let n = net(s);
            assert_eq!(parse_net_key(&net_key(&n)), Some(n));
        }
        assert_eq!(net_key(&net("fd00::/122")), "fd00::-122");
    }

    #[test]
    fn tiling_keys_round_trip() {
        let t = Tiling::new(net("fd00::/48"), 122).unwrap();
        assert_eq!(t.key(), "fd00::-48-122");
        assert_eq!(Tiling::parse_key(&t.key()), Some(t));
        assert_eq!(Tiling::parse_key("10.0.0.0-16-8"), None);
    }

    #[test]
    fn overlap() {
        assert!(nets_overlap(&net("10.0.0.0/16"), &net("10.0.5.0/24")));
        assert!(!nets_overlap(&net("10.0.0.0/16"), &net("10.1.0.0/16")));
        assert!(!nets_overlap(&net("10.0.0.0/16"), &net("fd00::/16")));
    }

    #[test]
    fn overlap_index_finds_supernets_equals_and_subnets_only() {
        let nets = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.2.0.0/16",
            "10.1.0.0/16",
            "fd00::/8",
            "0.0.0.0/0",
            "11.0.0.0/8",
        ];
        let mut index = OverlapIndex::default();
        for (id, n) in nets.iter().enumerate() {
            index.insert(&net(n), id);
        }
        assert_eq!(index.overlapping(&net("10.1.0.0/16")), [0, 1, 2, 4, 6]);
        assert_eq!(index.overlapping(&net("10.1.2.128/25")), [0, 1, 2, 4, 6]);
        assert_eq!(index.overlapping(&net("10.0.0.0/8")), [0, 1, 2, 3, 4, 6]);
        assert_eq!(index.overlapping(&net("::/0")), [5]);
        assert_eq!(index.overlapping(&net("12.0.0.0/8")), [6]);
        for probe in ["10.1.2.3/32", "10.3.0.0/16", "::/0", "10.0.0.0/7"] {
            let want: Vec<usize> = (0..nets.len())
                .filter(|&i| nets_overlap(&net(nets[i]), &net(probe)))
                .collect();
            assert_eq!(index.overlapping(&net(probe)), want, "{probe}");
        }
    }
}
