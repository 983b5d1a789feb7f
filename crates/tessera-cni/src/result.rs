//! The ADD result, printed in the shape of the requested spec version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::config::Route;
use crate::version::Version;

/// One address of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultIp {
    /// Address with the prefix the main plugin configures.
    pub address: IpNet,
    /// Gateway, when the result carries one.
    pub gateway: Option<IpAddr>,
}

/// The IPAM result: `ips`, `routes` and `dns` (an IPAM plugin returns no `interfaces`).
///
/// 0.3.x and 0.4.0 mark each IP with `"version": "4"|"6"`; 1.0.0 dropped that field. Route
/// attributes beyond `dst` and `gw` exist from 1.1.0 on and are left out before.
pub fn add_result(
    version: Version,
    ips: &[ResultIp],
    routes: &[Route],
    dns: Option<&Value>,
) -> Value {
    let mut out = Map::new();
    out.insert("cniVersion".into(), version.as_str().into());
    let ips: Vec<Value> = ips
        .iter()
        .map(|ip| {
            let mut m = Map::new();
            if version.ip_version_field() {
                let family = if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                m.insert("version".into(), family.into());
            }
            m.insert("address".into(), ip.address.to_string().into());
            if let Some(gw) = ip.gateway {
                m.insert("gateway".into(), gw.to_string().into());
            }
            Value::Object(m)
        })
        .collect();
    out.insert("ips".into(), ips.into());
    if !routes.is_empty() {
        let routes: Vec<Value> = routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), gw.to_string().into());
                }
                if version.has_gc_status() {
                    m.extend(r.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Value::Object(m)
            })
            .collect();
        out.insert("routes".into(), routes.into());
    }
    if let Some(dns) = dns {
        out.insert("dns".into(), dns.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_per_version() {
        let ips = [
            ResultIp {
                address: "10.0.0.5/24".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
            },
            ResultIp {
                address: "fd00::5/64".parse().unwrap(),
                gateway: None,
            },
        ];
        let mut extra = Map::new();
        extra.insert("mtu".into(), json!(1400));
        let routes = [Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: None,
            extra,
        }];
        let dns = json!({"nameservers": ["10.0.0.53"]});
        assert_eq!(
            add_result(Version::V0_3_1, &ips, &routes, Some(&dns)),
            json!({"cniVersion": "0.3.1",
                   "ips": [{"version": "4", "address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                           {"version": "6", "address": "fd00::5/64"}],
                   "routes": [{"dst": "0.0.0.0/0"}],
                   "dns": {"nameservers": ["10.0.0.53"]}})
        );
        assert_eq!(
            add_result(Version::V1_1_0, &ips, &routes, None),
            json!({"cniVersion": "1.1.0",
                   "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                           {"address": "fd00::5/64"}],
                   "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}]})
        );
    }
}
