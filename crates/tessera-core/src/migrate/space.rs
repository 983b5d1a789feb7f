//! Finding room for a temporary pool: the lowest free network of a given size in the private
//! address space a pool lives in.

use ipnet::IpNet;

use crate::net::{net_first, net_from, net_size, nets_overlap};

/// The private spaces a pool may live in: RFC 1918 for IPv4, the ULA range for IPv6.
const PRIVATE_SPACES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// The private space holding `net`, if any.
pub fn private_space_of(net: &IpNet) -> Option<IpNet> {
    PRIVATE_SPACES
        .iter()
        .map(|s| s.parse::<IpNet>().expect("constant network"))
        .find(|space| space.contains(net))
}

/// The lowest network of `prefix_len` inside `space` overlapping none of `taken`. Each taken
/// network is stepped over at most once, so the walk is bounded by `taken.len()`.
pub fn lowest_free(space: &IpNet, prefix_len: u8, taken: &[IpNet]) -> Option<IpNet> {
    let v6 = matches!(space, IpNet::V6(_));
    if prefix_len < space.prefix_len() {
        return None;
    }
    let size = net_size(&net_from(0, prefix_len, v6));
    let mut first = net_first(space);
    for _ in 0..=taken.len() {
        let candidate = net_from(first, prefix_len, v6);
        if !space.contains(&candidate) {
            return None;
        }
        let Some(blocker) = taken.iter().find(|t| nets_overlap(t, &candidate)) else {
            return Some(candidate);
        };
        // Past the blocker's last address, rounded up to the next network of this size.
        let past = net_first(blocker).checked_add(net_size(blocker))?;
        first = past.max(first + size).checked_add(size - 1)? / size * size;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_lowest_free_network_steps_over_every_taken_one() {
        let space: IpNet = "10.0.0.0/8".parse().unwrap();
        let taken = nets(&["10.0.0.0/24", "10.0.1.0/25", "10.0.0.0/16", "10.1.0.0/24"]);
        assert_eq!(
            lowest_free(&space, 24, &taken),
            Some("10.1.1.0/24".parse().unwrap())
        );
        assert_eq!(
            lowest_free(&space, 16, &taken),
            Some("10.2.0.0/16".parse().unwrap())
        );
        assert_eq!(
            lowest_free(&space, 8, &taken),
            None,
            "the whole space is partly taken"
        );
        let v6: IpNet = "fc00::/7".parse().unwrap();
        assert_eq!(
            lowest_free(&v6, 64, &nets(&["fc00::/64"])),
            Some("fc00:0:0:1::/64".parse().unwrap())
        );
        assert_eq!(
            private_space_of(&"192.168.3.0/24".parse().unwrap()),
            Some("192.168.0.0/16".parse().unwrap())
        );
        assert_eq!(private_space_of(&"8.8.8.0/24".parse().unwrap()), None);
    }
}
