//! `tessera plan`: the capacity forecast for a pool, offline from figures or from the pool
//! the datastore holds.

use std::fmt::Write as _;

use tessera_core::plan::{plan, plan_pool, Limit, LivePlan, Plan, PlanRequest};
use tessera_core::store::Store;

use crate::cli::PlanArgs;

/// Runs the planner on the given figures, without a datastore, and renders its forecast.
pub fn run(args: &PlanArgs) -> anyhow::Result<String> {
    let request = PlanRequest {
        nodes: args.nodes.unwrap_or_default(),
        pods_per_node: args.pods_per_node.unwrap_or_default(),
        cidr: args.cidr,
        block_prefix: args.block_size,
        max_blocks_per_host: args.max_blocks_per_host,
        ipv6: args.ipv6,
        strict_affinity: args.strict_affinity,
    };
    let forecast = plan(&request)?;
    Ok(render(&request, &forecast))
}

/// Forecasts `--pool NAME` from the datastore and renders it.
pub fn run_live(store: &dyn Store, args: &PlanArgs) -> anyhow::Result<String> {
    let name = args.pool.as_deref().unwrap_or_default();
    let live = plan_pool(store, name, args.pods_per_node)?;
    Ok(render_live(&live))
}

/// The IPAMConfiguration lines both forecasts print.
fn render_config(out: &mut String, max_blocks_per_host: u32, strict_affinity: bool) {
    let max = match max_blocks_per_host {
        0 => "unlimited".to_string(),
        n => n.to_string(),
    };
    let strict = if strict_affinity {
        "true (nodes never borrow from other nodes' blocks)"
    } else {
        "false (a node with no block of its own left borrows from partly used blocks)"
    };
    let _ = writeln!(out, "maxBlocksPerHost:     {max}");
    let _ = writeln!(out, "strictAffinity:       {strict}");
}

fn render(request: &PlanRequest, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Pool:                 {}", plan.cidr);
    let _ = writeln!(
        out,
        "Block size:           /{} ({} addresses, {} usable in the pool's first and last blocks)",
        plan.block_prefix, plan.block_len, plan.usable_per_block
    );
    let _ = writeln!(out, "Blocks in pool:       {}", plan.blocks);
    let _ = writeln!(out, "Usable addresses:     {}", plan.usable_addresses);
    render_config(&mut out, plan.max_blocks_per_host, request.strict_affinity);
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
    let borrowing = if plan.nodes_served > plan.nodes_in_own_blocks {
        format!(
            " ({} from their own blocks, the others borrowing)",
            plan.nodes_in_own_blocks
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "Serves:               {} nodes, {} pods{borrowing}",
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
             (with strictAffinity off it would borrow from other nodes' blocks)"
        ),
        Some(Limit::Addresses) => {
            format!("breaks first at node {next}: the pool has no free address left")
        }
    }
}

fn render_live(live: &LivePlan) -> String {
    let mut out = String::new();
    let tiling = &live.tiling;
    let _ = writeln!(out, "Pool:                 {} ({})", live.pool, tiling.pool);
    let _ = writeln!(
        out,
        "Block size:           /{} ({} addresses)",
        tiling.block_prefix,
        tiling.block_len()
    );
    render_config(&mut out, live.max_blocks_per_host, live.strict_affinity);
    let _ = writeln!(out, "Nodes:                {}", nodes_line(live));
    let _ = writeln!(out, "Pods per node:        {}", pods_line(live));
    let _ = writeln!(
        out,
        "Blocks:               {} in use of {}, {} free",
        live.blocks_claimed, live.blocks, live.blocks_free
    );
    let _ = writeln!(out, "More nodes:           {}", more_nodes_line(live));
    let _ = writeln!(out, "Runs out first:       {}", runs_out_line(live));
    render_closest(&mut out, live);
    render_fragmentation(&mut out, live);
    out
}

fn nodes_line(live: &LivePlan) -> String {
    let holding = format!("{} hold blocks of the pool", live.nodes.len());
    match &live.node_records {
        None => format!("{holding}; the datastore holds no node records"),
        Some(r) => format!(
            "{holding}; nodeSelector {} takes {} of {} node records, {} of them with no \
             block yet (counted among the new nodes)",
            live.node_selector, r.selected, r.total, r.selected_without_blocks
        ),
    }
}

fn pods_line(live: &LivePlan) -> String {
    let measured = match live.measured {
        None => "nothing measured".to_string(),
        Some(m) => format!(
            "{} measured ({} addresses in use / {} nodes holding blocks, rounded up), \
             median {}, max {}",
            m.mean,
            live.in_use,
            live.nodes.len(),
            m.median,
            m.max
        ),
    };
    match live.measured {
        Some(m) if m.mean == live.pods_per_node => measured,
        _ => format!(
            "forecast at {} (--pods-per-node); {measured}",
            live.pods_per_node
        ),
    }
}

fn more_nodes_line(live: &LivePlan) -> String {
    if let Some(reason) = live.no_claims {
        let borrowing = match live.with_borrowing {
            Some(n) if n > 0 => format!("{n}, borrowing addresses of claimed blocks"),
            _ => "0".to_string(),
        };
        return format!("{borrowing} ({reason})");
    }
    let own = live.own_blocks.nodes;
    let pods = live.pods_per_node;
    let each = format!(
        "at {pods} pods per node, each claiming {}",
        blocks_text(u128::from(live.blocks_per_new_node))
    );
    match live.with_borrowing {
        Some(all) if all > own => format!(
            "{all} ({own} in free blocks {each}, then {} borrowing addresses)",
            all - own
        ),
        _ => format!("{own} {each}"),
    }
}

fn runs_out_line(live: &LivePlan) -> String {
    if let Some(reason) = live.no_claims {
        return reason.to_string();
    }
    let next = live.own_blocks.nodes + 1;
    let first = match live.own_blocks.limit {
        Limit::BlocksPerHost => format!(
            "the per-host limit: new node {next} would need more than maxBlocksPerHost={} blocks",
            live.max_blocks_per_host
        ),
        _ => format!("the free blocks: new node {next} finds no free block left"),
    };
    match live.with_borrowing {
        None => format!("{first} (strictAffinity forbids borrowing)"),
        Some(all) => format!(
            "{first}; with strictAffinity off it borrows from partly used blocks, and the \
             addresses run out at new node {}",
            all + 1
        ),
    }
}

fn blocks_text(count: u128) -> String {
    match count {
        1 => "1 block".to_string(),
        n => format!("{n} blocks"),
    }
}

fn render_closest(out: &mut String, live: &LivePlan) {
    let _ = writeln!(
        out,
        "Closest to a new block (free addresses left in their blocks):"
    );
    if live.nodes.is_empty() {
        let _ = writeln!(out, "  no node holds a block of the pool");
    }
    let width = live
        .closest()
        .iter()
        .map(|n| n.node.len())
        .max()
        .unwrap_or(0);
    for room in live.closest() {
        let _ = writeln!(
            out,
            "  {:<width$}  {} free, {}",
            room.node,
            room.free,
            blocks_text(u128::from(room.blocks))
        );
    }
    let at = live.at_block_limit();
    let listed = if at.is_empty() {
        "none".to_string()
    } else {
        at.join(", ")
    };
    if live.max_blocks_per_host > 0 {
        let _ = writeln!(out, "At maxBlocksPerHost:  {listed}");
    }
}

fn render_fragmentation(out: &mut String, live: &LivePlan) {
    let who = if live.strict_affinity {
        "only their node can use them"
    } else {
        "other nodes borrow them once no free block is left"
    };
    let _ = writeln!(
        out,
        "Fragmentation:        {} blocks partly used; {} free addresses stranded in nodes' \
         blocks ({}% of the pool's {} free addresses; {who})",
        live.partly_used_blocks,
        live.stranded,
        live.stranded_percent(),
        live.free_addresses
    );
    let orphaned = match &live.node_records {
        None => "not checked: the datastore holds no node records".to_string(),
        Some(r) if r.orphaned_blocks.is_empty() => "none".to_string(),
        Some(r) => r
            .orphaned_blocks
            .iter()
            .map(|(block, node)| format!("{block} ({node})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let _ = writeln!(out, "Blocks of gone nodes: {orphaned}");
}
