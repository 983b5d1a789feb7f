//! CIDR fields: strictly masked networks, single addresses where a field allows them, and
//! never the IPv4-mapped IPv6 range.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::FieldError;
use super::names::typography_hint;
use crate::net::{ipv4_mapped_range, nets_overlap, IPV4_MAPPED_TEXT};
use crate::text::quoted;

/// Parses a strictly masked network; with `allow_single_ip`, a bare address becomes a /32 or
/// /128. IPv4-mapped IPv6 addresses are refused. The error says what is wrong (without the
/// field name).
pub fn parse_network(text: &str, allow_single_ip: bool) -> Result<IpNet, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is required, e.g. 192.168.0.0/16 or fd00:10::/64".into());
    }
    let shown = quoted(text);
    if let Some(hint) = typography_hint(text) {
        return Err(format!("{shown} is not a CIDR: {hint}"));
    }
    let Some((addr_text, len_text)) = text.split_once('/') else {
        return match text.parse::<IpAddr>() {
            Ok(addr) if allow_single_ip => {
                let net = IpNet::from(addr);
                match mapped_problem(&shown, &net, true) {
                    Some(problem) => Err(problem),
                    None => Ok(net),
                }
            }
            Ok(addr) => {
                let example = match addr {
                    IpAddr::V4(_) => "/16",
                    IpAddr::V6(_) => "/64",
                };
                Err(format!(
                    "{shown} has no prefix length; write a network such as {text}{example}"
                ))
            }
            Err(_) => Err(format!(
                "{shown} is not a CIDR; write e.g. 192.168.0.0/16 or fd00:10::/64"
            )),
        };
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!(
            "{shown} is not a CIDR: {} is not an IPv4 or IPv6 address",
            quoted(addr_text)
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len_text.parse::<u8>() {
        Ok(l) if l <= max => l,
        _ => {
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "{shown} is not a CIDR: the prefix length {} must be a number from 0 to {max} \
                 for {family}",
                quoted(len_text)
            ));
        }
    };
    let net = match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, len).map_err(|e| e.to_string())?),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, len).map_err(|e| e.to_string())?),
    };
    let masked = net.trunc();
    if masked.addr() != net.addr() {
        return Err(format!(
            "{shown} is not a network address (host bits set); use {masked}"
        ));
    }
    match mapped_problem(&shown, &masked, false) {
        Some(problem) => Err(problem),
        None => Ok(masked),
    }
}

/// Why `net` (written `shown`; a bare address when `single`) may not be used: it lies in or
/// around the IPv4-mapped IPv6 range.
fn mapped_problem(shown: &str, net: &IpNet, single: bool) -> Option<String> {
    let mapped = ipv4_mapped_range();
    if !nets_overlap(net, &mapped) {
        return None;
    }
    let IpNet::V6(v6) = net else {
        return None;
    };
    if !mapped.contains(net) {
        return Some(format!(
            "{shown} overlaps {IPV4_MAPPED_TEXT}, the IPv4-mapped IPv6 addresses, which stand \
             for IPv4 ones; choose a range clear of it"
        ));
    }
    let v4 = v6.network().to_ipv4_mapped()?;
    let v4_net = Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?;
    let (what, instead) = if single {
        ("address", v4.to_string())
    } else {
        ("network", v4_net.to_string())
    };
    Some(format!(
        "{shown} is an IPv4-mapped IPv6 {what} ({IPV4_MAPPED_TEXT} stands for IPv4 addresses); \
         write the IPv4 {what} {instead} instead"
    ))
}

pub(super) fn parse_cidr_field(
    field: &str,
    text: &str,
    allow_single_ip: bool,
) -> Result<IpNet, FieldError> {
    parse_network(text, allow_single_ip).map_err(|reason| FieldError::new(field, reason))
}
