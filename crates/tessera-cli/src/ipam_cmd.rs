//! `tessera ipam ...`: usage tables, address lookup, consistency check, configuration, and
//! assigning or releasing addresses by hand.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{bail, Context as _};
use serde_json::json;
use tessera_core::catalog::Catalog;
use tessera_core::ipam::{usage_counts, AssignRequest, Attributes, Context, Ipam, Usage};
use tessera_core::keys;
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::Store;
use tessera_core::validate::calico::IPAM_CONFIG_NAME;
use tessera_core::validate::names::node_name_problem;

use crate::cli::{AssignArgs, AssignOutput, ConfigureArgs, ReleaseArgs, ShowArgs};
use crate::table::boxed;

/// What a command printed and whether it found problems (exit status 1 without an error).
pub struct Report {
    /// Text for standard output.
    pub stdout: String,
    /// Whether the command should exit with status 1.
    pub failed: bool,
}

impl From<String> for Report {
    fn from(stdout: String) -> Self {
        Self {
            stdout,
            failed: false,
        }
    }
}

/// `ipam show` in all its views.
pub fn show(store: &dyn Store, args: &ShowArgs) -> anyhow::Result<String> {
    let ipam = Ipam::new(store);
    if let Some(ip) = args.ip {
        return show_ip(store, &ipam, ip);
    }
    if args.show_configuration {
        return show_configuration(store);
    }
    if args.map {
        return crate::map_cmd::show_map(store, args.group_by.as_deref());
    }
    if args.show_borrowed {
        let usage = ipam.usage().context("cannot read IPAM usage")?;
        return Ok(borrowed_table(&usage));
    }
    let usage = usage_counts(store).context("cannot read IPAM usage")?;
    Ok(usage_table(&usage, args.show_blocks))
}

/// Integer percentage as Go's `%.0f` prints it (halves round to even).
pub fn percent(part: u128, total: u128) -> u128 {
    if total == 0 {
        return 0;
    }
    match part.checked_mul(100) {
        Some(scaled) => {
            let (q, r) = (scaled / total, scaled % total);
            let rest = total - r;
            if r > rest || (r == rest && q % 2 == 1) {
                q + 1
            } else {
                q
            }
        }
        // Only IPv6 pools of astronomical size get here; a float is exact enough for a
        // whole-number percentage.
        None => ((part as f64) * 100.0 / (total as f64)).round_ties_even() as u128,
    }
}

/// `n (p%)`, a count cell of the usage table.
pub fn count_cell(part: u128, total: u128) -> String {
    format!("{part} ({}%)", percent(part, total))
}

/// The CIDR cell of a pool's row: its network, marked when the pool was deleted (`name` is
/// empty) and only its leftover blocks remain.
pub fn pool_cidr_cell(name: &str, cidr: &ipnet::IpNet) -> String {
    if name.is_empty() {
        format!("{cidr} (deleted)")
    } else {
        cidr.to_string()
    }
}

/// The GROUPING/CIDR/IPS TOTAL/IPS IN USE/IPS FREE table.
pub fn usage_table(usage: &Usage, show_blocks: bool) -> String {
    let mut rows = Vec::new();
    for pool in &usage.pools {
        let free = pool.total.saturating_sub(pool.in_use);
        rows.push(vec![
            "IP Pool".to_string(),
            pool_cidr_cell(&pool.name, &pool.cidr),
            pool.total.to_string(),
            count_cell(pool.in_use, pool.total),
            count_cell(free, pool.total),
        ]);
        if show_blocks {
            for block in &pool.blocks {
                let free = block.total.saturating_sub(block.in_use);
                rows.push(vec![
                    "Block".to_string(),
                    block.cidr.to_string(),
                    block.total.to_string(),
                    count_cell(block.in_use, block.total),
                    count_cell(free, block.total),
                ]);
            }
        }
    }
    boxed(
        &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        &rows,
    )
}

/// Addresses allocated to workloads on other nodes than the block's owner.
pub fn borrowed_table(usage: &Usage) -> String {
    let mut rows = Vec::new();
    for pool in &usage.pools {
        for block in &pool.blocks {
            for (ip, alloc) in &block.borrowed {
                let attrs = &alloc.attrs;
                let (kind, to) = match (&attrs.namespace, &attrs.pod) {
                    (Some(ns), Some(pod)) => ("pod", format!("{ns}/{pod}")),
                    (None, Some(pod)) => ("pod", pod.clone()),
                    _ => ("handle", alloc.handle.clone()),
                };
                rows.push(vec![
                    ip.to_string(),
                    attrs.node.clone().unwrap_or_default(),
                    block.cidr.to_string(),
                    block.affinity.clone().unwrap_or_default(),
                    kind.to_string(),
                    to,
                ]);
            }
        }
    }
    boxed(
        &[
            "IP",
            "BORROWING-NODE",
            "BLOCK",
            "BLOCK OWNER",
            "TYPE",
            "ALLOCATED-TO",
        ],
        &rows,
    )
}

fn ipam_config(
    store: &dyn Store,
) -> anyhow::Result<tessera_core::resources::calico::IPAMConfigurationSpec> {
    match Catalog::new(store).get(Kind::IPAMConfiguration, IPAM_CONFIG_NAME)? {
        Resource::IPAMConfiguration(c) => Ok(c.spec),
        other => bail!(
            "the datastore holds a {} where the IPAM configuration belongs; run `tessera ipam check`",
            other.kind()
        ),
    }
}

fn show_configuration(store: &dyn Store) -> anyhow::Result<String> {
    let spec = ipam_config(store)?;
    let rows = vec![
        vec!["StrictAffinity".into(), spec.strict_affinity.to_string()],
        vec![
            "AutoAllocateBlocks".into(),
            spec.auto_allocate_blocks.to_string(),
        ],
        vec![
            "MaxBlocksPerHost".into(),
            spec.max_blocks_per_host.to_string(),
        ],
    ];
    Ok(boxed(&["PROPERTY", "VALUE"], &rows))
}

fn show_ip(store: &dyn Store, ipam: &Ipam<&dyn Store>, ip: IpAddr) -> anyhow::Result<String> {
    let info = ipam
        .lookup(ip)
        .with_context(|| format!("cannot look up {ip}"))?;
    if let Some(alloc) = info.as_ref().and_then(|i| i.allocation.as_ref()) {
        return Ok(in_use(ip, &alloc.handle, &alloc.attrs));
    }
    let config = store
        .range(keys::CONFIG_PREFIX)
        .context("cannot read pools and reservations")?;
    let ctx = Context::from_records(&config, None, None)?;
    if let Some(reservation) = ctx.reservation_of(ip) {
        return Ok(format!(
            "IP {ip} is reserved by IPReservation {reservation:?}\n"
        ));
    }
    if ctx.pool_containing(ip).is_none() {
        return Ok(format!("IP {ip} is not in any IP pool\n"));
    }
    Ok(format!("IP {ip} is not assigned\n"))
}

/// `IP x is in use` with the attributes that are set.
fn in_use(ip: IpAddr, handle: &str, a: &Attributes) -> String {
    let mut out = format!("IP {ip} is in use\nAttributes:\n  handle: {handle}\n");
    for (name, value) in [
        ("namespace", &a.namespace),
        ("pod", &a.pod),
        ("pod-uid", &a.pod_uid),
        ("node", &a.node),
        ("interface", &a.interface),
        ("container", &a.container_id),
        ("gateway-of-network", &a.gateway_of),
        ("statefulset", &a.statefulset),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "  {name}: {v}");
        }
    }
    out
}

/// `ipam check`: the report, failing when it found problems.
pub fn check(store: &dyn Store) -> anyhow::Result<Report> {
    let report = Ipam::new(store)
        .check()
        .context("cannot check IPAM records")?;
    let mut out = String::from("Checking IPAM for inconsistencies...\n");
    let _ = writeln!(out, "Found {} IPAM blocks.", report.blocks);
    let _ = writeln!(out, "Found {} IPAM handles.", report.handles);
    let _ = writeln!(out, "Found {} allocated addresses.", report.allocations);
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    for problem in &report.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let _ = writeln!(
        out,
        "Check complete; found {} problems.",
        report.problems.len()
    );
    Ok(Report {
        stdout: out,
        failed: !report.problems.is_empty(),
    })
}

/// `ipam configure`: changes the `default` IPAMConfiguration through the catalog, so the
/// same validation and all-or-nothing write apply as for `tessera apply`.
pub fn configure(store: &dyn Store, args: &ConfigureArgs) -> anyhow::Result<String> {
    if args.strict_affinity.is_none()
        && args.auto_allocate_blocks.is_none()
        && args.max_blocks_per_host.is_none()
    {
        bail!(
            "nothing to configure; give --strictaffinity=true|false, --autoallocateblocks=true|false \
             or --max-blocks-per-host=N (see the current values with `tessera ipam show \
             --show-configuration`)"
        );
    }
    let catalog = Catalog::new(store);
    let Resource::IPAMConfiguration(mut config) =
        catalog.get(Kind::IPAMConfiguration, IPAM_CONFIG_NAME)?
    else {
        bail!("the datastore holds another kind where the IPAM configuration belongs; run `tessera ipam check`");
    };
    let mut out = String::new();
    if let Some(v) = args.strict_affinity {
        config.spec.strict_affinity = v;
        let _ = writeln!(out, "Successfully set StrictAffinity to: {v}");
    }
    if let Some(v) = args.auto_allocate_blocks {
        config.spec.auto_allocate_blocks = v;
        let _ = writeln!(out, "Successfully set AutoAllocateBlocks to: {v}");
    }
    if let Some(v) = args.max_blocks_per_host {
        config.spec.max_blocks_per_host = v;
        let _ = writeln!(out, "Successfully set MaxBlocksPerHost to: {v}");
    }
    // The stored revision must not pin the write: configure sets fields, it does not
    // replace a copy the user edited.
    config.metadata.resource_version = None;
    catalog.apply(&[Resource::IPAMConfiguration(config)])?;
    Ok(out)
}

/// `ipam assign`.
pub fn assign(store: &dyn Store, args: &AssignArgs) -> anyhow::Result<String> {
    if let Some(problem) = node_name_problem(&args.node) {
        bail!("--node: {problem}");
    }
    let default_v4 = args.ipv4.is_none() && args.ipv6.is_none() && args.ips.is_empty();
    let req = AssignRequest {
        handle: args.handle.clone(),
        sticky_handle: None,
        node: args.node.clone(),
        attrs: Attributes {
            namespace: args.namespace.clone(),
            pod: args.pod.clone(),
            pod_uid: None,
            node: Some(args.node.clone()),
            interface: args.interface.clone(),
            container_id: args.container_id.clone(),
            gateway_of: None,
            statefulset: None,
        },
        num_v4: if default_v4 {
            1
        } else {
            args.ipv4.unwrap_or(0)
        },
        num_v6: args.ipv6.unwrap_or(0),
        ips: args.ips.clone(),
        pools: args.pools.clone(),
        default_pools: Vec::new(),
        pod_labels: None,
        namespace_record: None,
        gateway: None,
    };
    let assignment = Ipam::new(store).assign(&req)?;
    if args.output == Some(AssignOutput::Json) {
        let addresses: Vec<_> = assignment
            .addresses
            .iter()
            .map(|a| {
                json!({
                    "ip": a.ip.to_string(),
                    "pool": a.pool,
                    "poolCIDR": a.pool_cidr.to_string(),
                    "block": a.block.to_string(),
                })
            })
            .collect();
        let doc = json!({"handle": assignment.handle, "addresses": addresses});
        return Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?));
    }
    Ok(assignment
        .addresses
        .iter()
        .map(|a| format!("{}\n", a.ip))
        .collect())
}

/// `ipam release`.
pub fn release(store: &dyn Store, args: &ReleaseArgs) -> anyhow::Result<String> {
    let ipam = Ipam::new(store);
    let released: Vec<(IpAddr, String)> = match &args.handle {
        Some(handle) => ipam
            .release_handle(handle)?
            .into_iter()
            .map(|ip| (ip, handle.clone()))
            .collect(),
        None => ipam.release_ips(&args.ips)?,
    };
    if released.is_empty() {
        return Ok("Nothing to release\n".to_string());
    }
    Ok(released
        .iter()
        .map(|(ip, handle)| format!("Released {ip} (handle {handle})\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_go() {
        assert_eq!(percent(3, 256), 1);
        assert_eq!(percent(253, 256), 99);
        assert_eq!(percent(2, 64), 3);
        assert_eq!(percent(62, 64), 97);
        assert_eq!(percent(1, 8), 12); // 12.5 rounds to even
        assert_eq!(percent(3, 8), 38); // 37.5 rounds to even
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(u128::MAX / 2, u128::MAX), 50);
    }

    #[test]
    fn a_held_gateway_shows_its_network() {
        let attrs = Attributes {
            gateway_of: Some("pods".into()),
            ..Default::default()
        };
        assert_eq!(
            in_use("10.22.0.1".parse().unwrap(), "pods:gateway", &attrs),
            "IP 10.22.0.1 is in use\nAttributes:\n  handle: pods:gateway\n  \
             gateway-of-network: pods\n"
        );
    }

    #[test]
    fn an_address_in_use_shows_the_pod_uid_after_the_pod() {
        let attrs = Attributes {
            namespace: Some("default".into()),
            pod: Some("web-0".into()),
            pod_uid: Some("6f1c2b9e-2f4d-4c1a-9a53-0e7d8b1f4a10".into()),
            node: Some("node-a".into()),
            interface: Some("eth0".into()),
            container_id: Some("c1".into()),
            gateway_of: None,
            statefulset: None,
        };
        assert_eq!(
            in_use("10.22.0.5".parse().unwrap(), "pods:c1:eth0", &attrs),
            "IP 10.22.0.5 is in use\n\
             Attributes:\n\
            \x20 handle: pods:c1:eth0\n\
            \x20 namespace: default\n\
            \x20 pod: web-0\n\
            \x20 pod-uid: 6f1c2b9e-2f4d-4c1a-9a53-0e7d8b1f4a10\n\
            \x20 node: node-a\n\
            \x20 interface: eth0\n\
            \x20 container: c1\n"
        );
    }
}
