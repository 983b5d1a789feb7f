//! Sets of addresses as sorted, disjoint, inclusive integer ranges: the address set of a
//! pool given as explicit IPs and `a-b` ranges (Spiderpool's `ips`), minus exclusions.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::net::{addr_to_u128, net_first, net_size, u128_to_addr};

/// A set of addresses of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRangeSet {
    v6: bool,
    ranges: Vec<(u128, u128)>,
}

/// Why an address list entry could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {reason}")]
pub struct RangeError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

impl IpRangeSet {
    /// The empty set of a family.
    pub fn empty(v6: bool) -> Self {
        Self {
            v6,
            ranges: Vec::new(),
        }
    }

    /// Every address of a network.
    pub fn from_net(net: &IpNet) -> Self {
        let first = net_first(net);
        let mut set = Self::empty(matches!(net, IpNet::V6(_)));
        set.insert(first, first + (net_size(net) - 1));
        set
    }

    /// Parses entries written as `10.0.0.5`, `10.0.0.10-10.0.0.20` or `10.0.0.0/28`, all of
    /// family `v6`.
    pub fn parse<S: AsRef<str>>(entries: &[S], v6: bool) -> Result<Self, RangeError> {
        let mut set = Self::empty(v6);
        for entry in entries {
            let text = entry.as_ref().trim();
            let err = |reason: &str| RangeError {
                entry: entry.as_ref().to_string(),
                reason: reason.to_string(),
            };
            let family = |addr: IpAddr| {
                if addr.is_ipv6() == v6 {
                    Ok(addr_to_u128(addr))
                } else if v6 {
                    Err(err("is an IPv4 address in an IPv6 list"))
                } else {
                    Err(err("is an IPv6 address in an IPv4 list"))
                }
            };
            let (lo, hi) = if let Some((a, b)) = text.split_once('-') {
                let a: IpAddr = a
                    .trim()
                    .parse()
                    .map_err(|_| err("the range start is not an IP address"))?;
                let b: IpAddr = b
                    .trim()
                    .parse()
                    .map_err(|_| err("the range end is not an IP address"))?;
                let (a, b) = (family(a)?, family(b)?);
                if a > b {
                    return Err(err("the range ends before it starts"));
                }
                (a, b)
            } else if text.contains('/') {
                let net: IpNet = text.parse().map_err(|_| err("is not a CIDR"))?;
                let first = family(net.network())?;
                if net.trunc() != net {
                    return Err(err("has host bits set"));
                }
                (first, first + (net_size(&net) - 1))
            } else {
                let a: IpAddr = text
                    .parse()
                    .map_err(|_| err("is not an IP address, a-b range or CIDR"))?;
                let a = family(a)?;
                (a, a)
            };
            set.insert(lo, hi);
        }
        Ok(set)
    }

    /// Adds `lo..=hi`, merging with neighbours.
    pub fn insert(&mut self, lo: u128, hi: u128) {
        let mut merged = (lo, hi);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b.saturating_add(1) < merged.0 {
                out.push((a, b));
            } else if merged.1.saturating_add(1) < a {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push((a, b));
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        if !placed {
            out.push(merged);
        }
        out.sort_unstable();
        self.ranges = out;
    }

    /// True for an IPv6 set.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.ranges
    }

    /// Number of addresses (saturating).
    pub fn len(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |n, (a, b)| n.saturating_add(b - a).saturating_add(1))
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether the set holds `addr`.
    pub fn contains(&self, addr: IpAddr) -> bool {
        if addr.is_ipv6() != self.v6 {
            return false;
        }
        let v = addr_to_u128(addr);
        let i = self.ranges.partition_point(|&(_, b)| b < v);
        self.ranges.get(i).is_some_and(|&(a, _)| a <= v)
    }

    /// The addresses in both sets.
    pub fn intersect(&self, other: &IpRangeSet) -> IpRangeSet {
        let mut out = Self::empty(self.v6);
        if self.v6 != other.v6 {
            return out;
        }
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = self.ranges[i];
            let (c, d) = other.ranges[j];
            let lo = a.max(c);
            let hi = b.min(d);
            if lo <= hi {
                out.ranges.push((lo, hi));
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        out
    }

    /// The addresses of `self` not in `other`.
    pub fn subtract(&self, other: &IpRangeSet) -> IpRangeSet {
        if self.v6 != other.v6 {
            return self.clone();
        }
        let mut out = Self::empty(self.v6);
        let mut j = 0;
        for &(a, b) in &self.ranges {
            let mut lo = a;
            while j < other.ranges.len() && other.ranges[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < other.ranges.len() && other.ranges[k].0 <= b {
                let (c, d) = other.ranges[k];
                if c > lo {
                    out.ranges.push((lo, c - 1));
                }
                if d >= b {
                    done = true;
                    break;
                }
                lo = d + 1;
                k += 1;
            }
            if !done {
                out.ranges.push((lo, b));
            }
        }
        out
    }

    /// Whether any address is in both sets.
    pub fn overlaps(&self, other: &IpRangeSet) -> bool {
        !self.intersect(other).is_empty()
    }

    /// Whether every address of `self` is in `other`.
    pub fn is_subset_of(&self, other: &IpRangeSet) -> bool {
        self.subtract(other).is_empty()
    }

    /// The addresses of the set inside `net`.
    pub fn within(&self, net: &IpNet) -> IpRangeSet {
        self.intersect(&Self::from_net(net))
    }

    /// The `n` lowest addresses of the set (all of them when it holds fewer): what a new
    /// or growing pool is cut from its subnet's free addresses.
    pub fn lowest(&self, n: u128) -> IpRangeSet {
        let mut out = Self::empty(self.v6);
        let mut left = n;
        for &(a, b) in &self.ranges {
            if left == 0 {
                break;
            }
            let take = (b - a).saturating_add(1).min(left);
            out.ranges.push((a, a + (take - 1)));
            left -= take;
        }
        out
    }

    /// The `n` highest addresses of the set (all of them when it holds fewer): what a
    /// shrinking pool gives back, so the addresses it keeps stay at its start.
    pub fn highest(&self, n: u128) -> IpRangeSet {
        let mut out = Self::empty(self.v6);
        let mut left = n;
        for &(a, b) in self.ranges.iter().rev() {
            if left == 0 {
                break;
            }
            let take = (b - a).saturating_add(1).min(left);
            out.ranges.push((b - (take - 1), b));
            left -= take;
        }
        out.ranges.reverse();
        out
    }

    /// The set written as Spiderpool writes `ips`: single addresses and `a-b` ranges.
    pub fn to_strings(&self) -> Vec<String> {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (u128_to_addr(a, self.v6), u128_to_addr(b, self.v6));
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> IpRangeSet {
        IpRangeSet::parse(items, items.first().is_some_and(|s| s.contains(':'))).unwrap()
    }

    #[test]
    fn parses_addresses_ranges_and_cidrs() {
        let s = set(&[
            "10.244.120.10-10.244.120.20",
            "10.244.120.21",
            "10.0.0.0/30",
        ]);
        assert_eq!(s.len(), 12 + 4);
        assert_eq!(
            s.to_strings(),
            ["10.0.0.0-10.0.0.3", "10.244.120.10-10.244.120.21"]
        );
        assert!(s.contains("10.244.120.15".parse().unwrap()));
        assert!(!s.contains("10.244.120.22".parse().unwrap()));
        assert!(!s.contains("fd00::1".parse().unwrap()));
    }

    #[test]
    fn lowest_and_highest_take_whole_ranges_then_part_of_the_next() {
        let s = set(&["10.0.0.1-10.0.0.3", "10.0.0.10-10.0.0.20"]);
        assert_eq!(s.lowest(0).len(), 0);
        assert_eq!(
            s.lowest(5).to_strings(),
            ["10.0.0.1-10.0.0.3", "10.0.0.10-10.0.0.11"]
        );
        assert_eq!(s.lowest(100), s);
        assert_eq!(
            s.highest(12).to_strings(),
            ["10.0.0.3", "10.0.0.10-10.0.0.20"]
        );
        assert_eq!(s.highest(1).to_strings(), ["10.0.0.20"]);
        assert_eq!(s.highest(100), s);
        let v6 = set(&["fd00::1-fd00::ffff"]);
        assert_eq!(v6.lowest(2).to_strings(), ["fd00::1-fd00::2"]);
    }

    #[test]
    fn refuses_bad_entries() {
        let e = IpRangeSet::parse(&["10.0.0.9-10.0.0.1"], false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.0.0.9-10.0.0.1\": the range ends before it starts"
        );
        assert!(IpRangeSet::parse(&["fd00::1"], false).is_err());
        assert!(IpRangeSet::parse(&["10.0.0.1/24"], false).is_err());
        assert!(IpRangeSet::parse(&["nope"], false).is_err());
    }

    #[test]
    fn set_algebra() {
        let a = set(&["10.0.0.10-10.0.0.20"]);
        let b = set(&["10.0.0.12", "10.0.0.15-10.0.0.30"]);
        assert_eq!(
            a.subtract(&b).to_strings(),
            ["10.0.0.10-10.0.0.11", "10.0.0.13-10.0.0.14"]
        );
        assert_eq!(
            a.intersect(&b).to_strings(),
            ["10.0.0.12", "10.0.0.15-10.0.0.20"]
        );
        assert!(a.overlaps(&b));
        assert!(set(&["10.0.0.11"]).is_subset_of(&a));
        assert!(!b.is_subset_of(&a));
        assert_eq!(a.subtract(&a).len(), 0);
        let within = a.within(&"10.0.0.16/30".parse().unwrap());
        assert_eq!(within.to_strings(), ["10.0.0.16-10.0.0.19"]);
    }

    #[test]
    fn v6_and_huge_sets() {
        let s = set(&["fd00::/64"]);
        assert_eq!(s.len(), 1u128 << 64);
        let all = IpRangeSet::from_net(&"::/0".parse().unwrap());
        assert_eq!(all.len(), u128::MAX);
        assert!(s.is_subset_of(&all));
    }

    #[test]
    fn insert_merges_neighbours() {
        let mut s = IpRangeSet::empty(false);
        s.insert(10, 12);
        s.insert(14, 15);
        s.insert(13, 13);
        s.insert(1, 2);
        assert_eq!(s.ranges(), &[(1, 2), (10, 15)]);
    }
}
