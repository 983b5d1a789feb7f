//! Resource commands in calicoctl/kubectl style: apply, create, replace, delete, get, patch,
//! label and annotate. Every write goes through [`Catalog`], which validates the whole input
//! first and writes all of it or nothing.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tessera_core::catalog::{Catalog, CatalogError, Outcome};
use tessera_core::ipam::{spider_in_use_check, Ipam};
use tessera_core::resources::{Kind, Resource};
use tessera_core::store::Store;
use tessera_core::text::{plain_or_quoted, quoted};

use crate::cli::{DeleteArgs, GetArgs, GetOutput, MetaArgs, PatchArgs};
use crate::table::Columns;
use crate::yaml::to_yaml;

/// Kind names accepted on the command line, for error messages.
const KIND_NAMES: &str = "ippool, ipreservation, ipamconfiguration, node, namespace, \
                          spiderippool (sp), spidersubnet (ss), spiderreservedip (sr)";

/// Resolves a kind as kubectl/calicoctl accept it (`ippools`, `ipp`, `ns`, ...).
pub fn parse_kind(name: &str) -> anyhow::Result<Kind> {
    Kind::from_cli_name(name).with_context(|| {
        format!(
            "unknown resource type {}; Tessera manages: {KIND_NAMES}",
            quoted(name)
        )
    })
}

/// The lower-case plural kubectl uses in hints (`ippools`, `namespaces`).
fn plural(kind: Kind) -> String {
    format!("{}s", kind.as_str().to_ascii_lowercase())
}

/// The most manifest input one command reads, in bytes. Well above any real manifest: a
/// `kubectl get nodes,namespaces -o yaml` export of a large cluster (thousands of objects,
/// each with its status) is tens of MiB, and 10,000 IPPools are about 1.3 MiB. Anything
/// larger is a wrong file or an endless stream (`-f /dev/zero`), refused before it fills the
/// memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Reads at most `limit` bytes from `source_name`, and one more to tell that there are more:
/// then the input is refused without reading on.
fn read_capped(reader: impl Read, limit: u64, source_name: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read manifests from {source_name}"))?;
    if bytes.len() as u64 > limit {
        bail!(too_large(source_name, limit));
    }
    Ok(bytes)
}

fn too_large(source_name: &str, limit: u64) -> String {
    format!(
        "{source_name} is larger than {} MiB, the limit for manifest input; split it into \
         several files and apply them one by one",
        limit >> 20
    )
}

/// Reads a manifest file, or standard input for `-`, and decodes every document.
pub fn read_resources(filename: &str) -> anyhow::Result<Vec<Resource>> {
    let (bytes, source) = if filename == "-" {
        let bytes = read_capped(
            std::io::stdin().lock(),
            MAX_MANIFEST_BYTES,
            "standard input",
        )?;
        (bytes, "stdin".to_string())
    } else {
        let cannot_read = || {
            format!(
                "cannot read {filename}; check the path given with -f (use -f - for standard \
                 input)"
            )
        };
        let file = std::fs::File::open(filename).with_context(cannot_read)?;
        // A regular file's size is known: one too large is refused without reading it.
        if file.metadata().is_ok_and(|m| m.len() > MAX_MANIFEST_BYTES) {
            bail!(too_large(filename, MAX_MANIFEST_BYTES));
        }
        (
            read_capped(file, MAX_MANIFEST_BYTES, filename)?,
            filename.to_string(),
        )
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source} is not UTF-8 text (invalid byte at offset {}); manifests must be YAML or \
             JSON saved as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(crate::manifest_input::read_manifests(&text, &source)?)
}

/// `Successfully <verb> N '<Kind>' resource(s)`, one line per kind in order of first
/// appearance, as calicoctl prints it.
fn summary(verb: &str, kinds: impl IntoIterator<Item = Kind>) -> String {
    let mut counts: Vec<(Kind, usize)> = Vec::new();
    for kind in kinds {
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts
        .iter()
        .map(|(kind, n)| format!("Successfully {verb} {n} '{kind}' resource(s)\n"))
        .collect()
}

/// Turns catalog errors into messages in calicoctl's words where users grep for them.
fn explain(err: CatalogError) -> anyhow::Error {
    let lines: Vec<String> = err
        .problems()
        .into_iter()
        .map(|p| match p {
            CatalogError::NotFound { kind, name } => format!(
                "resource does not exist: {kind}({}); see what exists with `tessera get {}`",
                plain_or_quoted(name),
                plural(*kind)
            ),
            other => other.to_string(),
        })
        .collect();
    anyhow::anyhow!(lines.join("\n"))
}

/// Which manifest command to run.
#[derive(Clone, Copy, Debug)]
pub enum WriteMode {
    /// Create or update.
    Apply,
    /// Create only.
    Create,
    /// Update only.
    Replace,
}

/// `apply|create|replace -f FILE`.
pub fn write(store: &dyn Store, mode: WriteMode, filename: &str) -> anyhow::Result<String> {
    let resources = read_resources(filename)?;
    if resources.is_empty() {
        bail!("{filename} holds no resources; nothing was changed");
    }
    let check = spider_in_use_check(store);
    let catalog = Catalog::new(store).with_in_use_check(&check);
    let (outcomes, verb) = match mode {
        WriteMode::Apply => (catalog.apply(&resources), "applied"),
        WriteMode::Create => (catalog.create(&resources), "created"),
        WriteMode::Replace => (catalog.replace(&resources), "replaced"),
    };
    let outcomes = outcomes.map_err(explain)?;
    Ok(summary(verb, outcomes.iter().map(|o| o.kind)))
}

/// `delete -f FILE` or `delete KIND NAME...`.
pub fn delete(store: &dyn Store, args: &DeleteArgs) -> anyhow::Result<String> {
    let targets: Vec<(Kind, String)> = match (&args.filename, &args.kind) {
        (Some(file), _) => read_resources(file)?
            .iter()
            .map(|r| (r.kind(), r.name().to_string()))
            .collect(),
        (None, Some(kind)) => {
            let kind = parse_kind(kind)?;
            if args.names.is_empty() {
                bail!(
                    "name which {} to delete: tessera delete {} NAME...",
                    plural(kind),
                    kind.as_str().to_ascii_lowercase()
                );
            }
            args.names.iter().map(|n| (kind, n.clone())).collect()
        }
        (None, None) => bail!("give -f FILE or KIND NAME..."),
    };
    let check = spider_in_use_check(store);
    let outcomes: Vec<Outcome> = Catalog::new(store)
        .with_in_use_check(&check)
        .delete(&targets, args.skip_not_exists)
        .map_err(explain)?;
    // Like Calico, a node that leaves gives up its blocks: empty ones are freed for other
    // nodes, ones still holding addresses stay, without affinity, until those are released.
    let ipam = Ipam::new(store);
    for o in outcomes.iter().filter(|o| o.kind == Kind::Node) {
        ipam.release_node(&o.name).with_context(|| {
            format!(
                "node {} was deleted, but releasing its blocks failed; run `tessera delete node \
                 {} --skip-not-exists` again",
                o.name, o.name
            )
        })?;
    }
    if outcomes.is_empty() {
        let kind = targets.first().map(|t| t.0).unwrap_or(Kind::IPPool);
        return Ok(format!("Successfully deleted 0 '{kind}' resource(s)\n"));
    }
    Ok(summary("deleted", outcomes.iter().map(|o| o.kind)))
}

/// `get KIND [NAME...] [-o wide|yaml|json]`.
pub fn get(store: &dyn Store, args: &GetArgs) -> anyhow::Result<String> {
    let kind = parse_kind(&args.kind)?;
    let catalog = Catalog::new(store);
    let resources: Vec<Resource> = if args.names.is_empty() {
        catalog.list(kind).map_err(explain)?
    } else {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in &args.names {
            match catalog.get(kind, name) {
                Ok(r) => found.push(r),
                Err(e @ CatalogError::NotFound { .. }) => missing.push(e),
                Err(e) => return Err(explain(e)),
            }
        }
        if !missing.is_empty() {
            return Err(explain(CatalogError::Many(missing)));
        }
        found
    };
    let single = args.names.len() == 1;
    let allocated = match kind {
        Kind::SpiderIPPool | Kind::SpiderSubnet => spider_allocated(store, &resources)?,
        _ => BTreeMap::new(),
    };
    match args.output {
        Some(GetOutput::Yaml) => Ok(to_yaml(&document(kind, &resources, single, &allocated))),
        Some(GetOutput::Json) => Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&document(kind, &resources, single, &allocated))?
        )),
        wide => Ok(table(
            kind,
            &resources,
            wide == Some(GetOutput::Wide),
            &allocated,
        )),
    }
}

/// Allocated addresses of each SpiderIPPool in `resources`, or of each SpiderSubnet: the
/// addresses it handed to pools (those of the SpiderIPPools whose subnet is the subnet's,
/// auto pools and the others), as Spiderpool counts it.
fn spider_allocated(
    store: &dyn Store,
    resources: &[Resource],
) -> anyhow::Result<BTreeMap<String, u128>> {
    let catalog = Catalog::new(store);
    let per_pool = crate::spider_counts::allocated_counts(store)?;
    let mut out = BTreeMap::new();
    let mut pools = None;
    for r in resources {
        let count = match r {
            Resource::SpiderIPPool(p) => per_pool.get(&p.metadata.name).copied().unwrap_or(0),
            Resource::SpiderSubnet(s) => {
                if pools.is_none() {
                    pools = Some(catalog.list(Kind::SpiderIPPool).map_err(explain)?);
                }
                let net = s.spec.subnet_net();
                pools
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        Resource::SpiderIPPool(p)
                            if net.is_some() && p.spec.subnet_net() == net =>
                        {
                            p.spec.total_ips().ok().map(|ips| ips.len())
                        }
                        _ => None,
                    })
                    .fold(0u128, u128::saturating_add)
            }
            _ => continue,
        };
        out.insert(r.name().to_string(), count);
    }
    Ok(out)
}

/// Spiderpool's TOTAL-IP-COUNT: the addresses of `ips` minus `excludeIPs`.
fn spider_total(r: &Resource) -> Option<u128> {
    match r {
        Resource::SpiderIPPool(p) => p.spec.total_ips().ok().map(|s| s.len()),
        Resource::SpiderSubnet(s) => s.spec.total_ips().ok().map(|s| s.len()),
        _ => None,
    }
}

/// A resource's manifest; SpiderIPPools and SpiderSubnets carry the `status` Spiderpool
/// reports (`allocatedIPCount`, `totalIPCount`), computed now.
fn manifest(r: &Resource, allocated: &BTreeMap<String, u128>) -> Value {
    let mut doc = r.to_manifest();
    if let (Some(total), Value::Object(fields)) = (spider_total(r), &mut doc) {
        // Kubernetes counts are int64; an IPv6 pool can hold more, so the count saturates.
        let clamp = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
        let used = allocated.get(r.name()).copied().unwrap_or(0);
        fields.insert(
            "status".into(),
            json!({"allocatedIPCount": clamp(used), "totalIPCount": clamp(total)}),
        );
    }
    doc
}

/// One manifest for a named resource, calicoctl's `<Kind>List` otherwise.
fn document(
    kind: Kind,
    resources: &[Resource],
    single: bool,
    allocated: &BTreeMap<String, u128>,
) -> Value {
    if single {
        if let Some(r) = resources.first() {
            return manifest(r, allocated);
        }
    }
    let items: Vec<Value> = resources.iter().map(|r| manifest(r, allocated)).collect();
    json!({
        "apiVersion": kind.api_version(),
        "items": items,
        "kind": format!("{kind}List"),
    })
}

/// `k=v,k=v` like `kubectl get --show-labels`, `<none>` when empty.
fn label_list(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A list as kubectl prints a list-valued printer column: JSON, or nothing when empty.
fn json_list(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        serde_json::to_string(items).unwrap_or_default()
    }
}

/// Label a Spiderpool auto-created pool carries with its application's namespace (the
/// APP-NAMESPACE column).
const APP_NAMESPACE_LABEL: &str = "ipam.spidernet.io/app-namespace";

fn table(
    kind: Kind,
    resources: &[Resource],
    wide: bool,
    allocated: &BTreeMap<String, u128>,
) -> String {
    let mut t = match (kind, wide) {
        (Kind::IPPool, false) => Columns::new(&["NAME", "CIDR", "SELECTOR"]),
        (Kind::IPPool, true) => Columns::new(&[
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR",
        ]),
        (Kind::IPReservation, _) => Columns::new(&["NAME", "CIDRS"]),
        (Kind::IPAMConfiguration, _) => Columns::new(&[
            "NAME",
            "STRICTAFFINITY",
            "AUTOALLOCATEBLOCKS",
            "MAXBLOCKSPERHOST",
        ]),
        (Kind::Node | Kind::Namespace, false) => Columns::new(&["NAME"]),
        (Kind::Node | Kind::Namespace, true) => Columns::new(&["NAME", "LABELS"]),
        // Spiderpool's printer columns; those of priority 10 only with -o wide.
        (Kind::SpiderIPPool, false) => Columns::new(&[
            "NAME",
            "VERSION",
            "SUBNET",
            "ALLOCATED-IP-COUNT",
            "TOTAL-IP-COUNT",
            "DEFAULT",
        ]),
        (Kind::SpiderIPPool, true) => Columns::new(&[
            "NAME",
            "VERSION",
            "SUBNET",
            "ALLOCATED-IP-COUNT",
            "TOTAL-IP-COUNT",
            "DEFAULT",
            "DISABLE",
            "NODENAME",
            "MULTUSNAME",
            "APP-NAMESPACE",
        ]),
        (Kind::SpiderSubnet, _) => Columns::new(&[
            "NAME",
            "VERSION",
            "SUBNET",
            "ALLOCATED-IP-COUNT",
            "TOTAL-IP-COUNT",
        ]),
        (Kind::SpiderReservedIP, _) => Columns::new(&["NAME", "VERSION"]),
    };
    let version = |v: Option<u8>| v.map(|v| v.to_string()).unwrap_or_default();
    let counts = |r: &Resource| {
        let used = allocated.get(r.name()).copied().unwrap_or(0);
        let total = spider_total(r).unwrap_or(0);
        [used.to_string(), total.to_string()]
    };
    for r in resources {
        let name = r.name().to_string();
        let row = match r {
            Resource::IPPool(p) => {
                let s = &p.spec;
                let selector = s.node_selector.clone().unwrap_or_else(|| "all()".into());
                if wide {
                    vec![
                        name,
                        s.cidr.clone(),
                        s.nat_outgoing.to_string(),
                        format!("{:?}", s.ipip_mode.unwrap_or_default()),
                        format!("{:?}", s.vxlan_mode.unwrap_or_default()),
                        s.disabled.to_string(),
                        s.disable_bgp_export.to_string(),
                        selector,
                    ]
                } else {
                    vec![name, s.cidr.clone(), selector]
                }
            }
            Resource::IPReservation(r) => vec![name, r.spec.reserved_cidrs.join(",")],
            Resource::IPAMConfiguration(c) => vec![
                name,
                c.spec.strict_affinity.to_string(),
                c.spec.auto_allocate_blocks.to_string(),
                c.spec.max_blocks_per_host.to_string(),
            ],
            Resource::Node(_) | Resource::Namespace(_) if wide => {
                vec![name, label_list(&r.metadata().labels)]
            }
            Resource::Node(_) | Resource::Namespace(_) => vec![name],
            Resource::SpiderIPPool(p) => {
                let s = &p.spec;
                let mut row = vec![name, version(s.ip_version), s.subnet.clone()];
                row.extend(counts(r));
                row.push(s.default.unwrap_or(false).to_string());
                if wide {
                    row.push(s.disable.unwrap_or(false).to_string());
                    row.push(json_list(&s.node_name));
                    row.push(json_list(&s.multus_name));
                    row.push(
                        s.pod_affinity
                            .as_ref()
                            .and_then(|a| a.match_labels.get(APP_NAMESPACE_LABEL))
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                row
            }
            Resource::SpiderSubnet(sub) => {
                let mut row = vec![name, version(sub.spec.ip_version), sub.spec.subnet.clone()];
                row.extend(counts(r));
                row
            }
            Resource::SpiderReservedIP(res) => vec![name, version(res.spec.ip_version)],
        };
        t.push(row);
    }
    t.render()
}

/// `patch KIND NAME -p JSON`.
pub fn patch(store: &dyn Store, args: &PatchArgs) -> anyhow::Result<String> {
    let kind = parse_kind(&args.kind)?;
    let patch: Value = tessera_core::json::from_str(&args.patch).map_err(|e| {
        anyhow::anyhow!(
            "the patch is not valid JSON ({e}); write a JSON merge patch such as \
             -p '{{\"spec\": {{\"disabled\": true}}}}'"
        )
    })?;
    let check = spider_in_use_check(store);
    Catalog::new(store)
        .with_in_use_check(&check)
        .patch(kind, &args.name, &patch)
        .map_err(explain)?;
    Ok(format!("Successfully patched 1 '{kind}' resource\n"))
}

/// Which metadata map `label`/`annotate` change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaTarget {
    /// `metadata.labels`.
    Labels,
    /// `metadata.annotations`.
    Annotations,
}

/// What one `label`/`annotate` command asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MetaChanges {
    /// Keys to set, with their values.
    pub sets: Vec<(String, String)>,
    /// Keys to remove.
    pub removes: Vec<String>,
}

/// Splits `key=value` (value may contain `=`) and `key-` arguments.
pub fn parse_changes(changes: &[String]) -> anyhow::Result<MetaChanges> {
    let mut sets = Vec::new();
    let mut removes = Vec::new();
    for change in changes {
        if let Some((k, v)) = change.split_once('=') {
            if k.is_empty() {
                bail!("{} has no key before '='; write key=value", quoted(change));
            }
            sets.push((k.to_string(), v.to_string()));
        } else if let Some(k) = change.strip_suffix('-').filter(|k| !k.is_empty()) {
            removes.push(k.to_string());
        } else {
            bail!(
                "{} is neither key=value (to set) nor key- (to remove)",
                quoted(change)
            );
        }
    }
    Ok(MetaChanges { sets, removes })
}

/// `label|annotate KIND NAME k=v... k-... [--overwrite]`, answered as kubectl does
/// (`node/kube-node-0 labeled`).
pub fn edit_meta(store: &dyn Store, target: MetaTarget, args: &MetaArgs) -> anyhow::Result<String> {
    let kind = parse_kind(&args.kind)?;
    let MetaChanges { sets, removes } = parse_changes(&args.changes)?;
    let catalog = Catalog::new(store);
    let pick = |r: &Resource| match target {
        MetaTarget::Labels => r.metadata().labels.clone(),
        MetaTarget::Annotations => r.metadata().annotations.clone(),
    };
    let before = match catalog.get(kind, &args.name) {
        Ok(r) => Some(pick(&r)),
        Err(CatalogError::NotFound { .. }) => None,
        Err(e) => return Err(explain(e)),
    };
    let after = match target {
        MetaTarget::Labels => catalog.label(kind, &args.name, &sets, &removes, args.overwrite),
        MetaTarget::Annotations => {
            catalog.annotate(kind, &args.name, &sets, &removes, args.overwrite)
        }
    }
    .map_err(explain)?;
    let after = pick(&after);
    let before = before.unwrap_or_default();
    let word = match target {
        MetaTarget::Annotations => "annotated",
        MetaTarget::Labels if before == after => "not labeled",
        MetaTarget::Labels if after.len() < before.len() && !args.overwrite => "unlabeled",
        MetaTarget::Labels => "labeled",
    };
    Ok(format!(
        "{}/{} {word}\n",
        kind.as_str().to_ascii_lowercase(),
        args.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the bytes handed out by an endless reader.
    struct Endless<'a>(&'a mut u64);

    impl Read for Endless<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(b'a');
            *self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn input_is_read_up_to_the_limit_and_one_byte_more() {
        assert_eq!(read_capped(&b"0123456789"[..], 10, "f").unwrap().len(), 10);
        let err = read_capped(&b"0123456789x"[..], 10, "f").unwrap_err();
        assert!(err.to_string().starts_with("f is larger than"), "{err}");
        let mut handed_out = 0;
        let err = read_capped(Endless(&mut handed_out), 1 << 20, "stdin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stdin is larger than 1 MiB, the limit for manifest input; split it into several \
             files and apply them one by one"
        );
        // `take` asks only for what is left, so the reader stops at the limit plus one byte.
        assert_eq!(handed_out, (1 << 20) + 1);
    }

    #[test]
    fn summaries_group_by_kind_in_order() {
        let s = summary(
            "applied",
            [Kind::IPPool, Kind::Node, Kind::IPPool, Kind::Namespace],
        );
        assert_eq!(
            s,
            "Successfully applied 2 'IPPool' resource(s)\n\
             Successfully applied 1 'Node' resource(s)\n\
             Successfully applied 1 'Namespace' resource(s)\n"
        );
    }

    #[test]
    fn changes_split_on_the_first_equals_sign() {
        let args: Vec<String> = [
            "cni.projectcalico.org/ipv4pools=[\"external-pool\"]",
            "a=b=c",
            "gone-",
            "empty=",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let MetaChanges { sets, removes } = parse_changes(&args).unwrap();
        assert_eq!(
            sets,
            [
                (
                    "cni.projectcalico.org/ipv4pools".to_string(),
                    "[\"external-pool\"]".to_string()
                ),
                ("a".to_string(), "b=c".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert_eq!(removes, ["gone"]);
        assert!(parse_changes(&["bare".to_string()]).is_err());
        assert!(parse_changes(&["=v".to_string()]).is_err());
        assert!(parse_changes(&["-".to_string()]).is_err());
    }
}
