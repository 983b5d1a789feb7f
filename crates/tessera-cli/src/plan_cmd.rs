//! `tessera plan`: the capacity forecast for a pool, without a datastore.

use std::fmt::Write as _;

use tessera_core::plan::{plan, Limit, Plan, PlanRequest};

use crate::cli::PlanArgs;

/// Runs the planner and renders its forecast as text.
pub fn run(args: &PlanArgs) -> anyhow::Result<String> {
    let request = PlanRequest {
        nodes: args.nodes,
        pods_per_node: args.pods_per_node,
        cidr: args.cidr,
        block_prefix: args.block_size,
        max_blocks_per_host: args.max_blocks_per_host,
        ipv6: args.ipv6,
    };
    let forecast = plan(&request)?;
    Ok(render(&request, &forecast))
}

fn render(request: &PlanRequest, plan: &Plan) -> String {
    let mut out = String::new();
    let max = match plan.max_blocks_per_host {
        0 => "unlimited".to_string(),
        n => n.to_string(),
    };
    let _ = writeln!(out, "Pool:                 {}", plan.cidr);
    let _ = writeln!(
        out,
        "Block size:           /{} ({} addresses, {} usable in the pool's first and last blocks)",
        plan.block_prefix, plan.block_len, plan.usable_per_block
    );
    let _ = writeln!(out, "Blocks in pool:       {}", plan.blocks);
    let _ = writeln!(out, "Usable addresses:     {}", plan.usable_addresses);
    let _ = writeln!(out, "maxBlocksPerHost:     {max}");
    let edge_note = if plan.edge_nodes_need_extra_block {
        "; one more on the nodes holding the pool's first or last block"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "Blocks per node:      {} (for {} pods{edge_note})",
        plan.blocks_per_node, request.pods_per_node
    );
    let _ = writeln!(
        out,
        "Serves:               {} nodes, {} pods",
        plan.nodes_served, plan.pods_served
    );
    let _ = writeln!(
        out,
        "Wasted when spread:   {} addresses in partly used blocks ({} nodes)",
        plan.wasted_addresses, request.nodes
    );
    let _ = writeln!(out, "Verdict:              {}", verdict(request, plan));
    out
}

fn verdict(request: &PlanRequest, plan: &Plan) -> String {
    let next = plan.nodes_served + 1;
    match plan.breaks_first {
        None => format!("fits {} nodes", request.nodes),
        Some(Limit::BlocksPerHost) => format!(
            "breaks first at the per-host limit: a node holds at most {} pods in {} blocks; \
             raise --max-blocks-per-host or use larger blocks",
            plan.pods_per_node_limit.unwrap_or(0),
            plan.max_blocks_per_host
        ),
        Some(Limit::Blocks) => format!(
            "breaks first at node {next}: every block is claimed \
             (with strictAffinity off it borrows from other nodes' blocks)"
        ),
        Some(Limit::Addresses) => {
            format!("breaks first at node {next}: the pool has no free address left")
        }
    }
}
