//! `tessera ipam report --html FILE`: one self-contained page (inline CSS and SVG, nothing
//! fetched) with the pool map, the totals of `ipam show`, per-node totals, the blocks of
//! deleted pools and what `ipam check` found. Every value from the datastore is escaped.
//! Totals carry stable `id`/`data-*` attributes so that tools and tests can read them.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tessera_core::ipam::{BlockUsage, CheckReport, Ipam, NodeBlocks, Picture, PoolPicture};
use tessera_core::store::Store;

use crate::cli::ReportArgs;
use crate::ipam_cmd::{count_cell, pool_cidr_cell};
use crate::map_cmd::{group_title, node_title, pool_title, read_picture};

/// Side of one block's square, in pixels.
const CELL: u32 = 12;
/// Distance from one block's square to the next.
const STEP: u32 = 14;
/// Squares per row before a node's blocks wrap.
const CELLS_PER_ROW: u32 = 48;
/// Width of the node name column.
const NAME_COLUMN: u32 = 220;
/// Height of a group title row.
const TITLE_ROW: u32 = 20;

/// Colours from empty to full, each with the percentage in use it stays below.
const PALETTE: [(u128, &str, &str); 6] = [
    (0, "#e9edf2", "empty"),
    (25, "#c6e48b", "up to 25%"),
    (50, "#7bc96f", "up to 50%"),
    (75, "#f0b429", "up to 75%"),
    (100, "#e3672b", "up to 99%"),
    (100, "#b3261e", "full"),
];

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#1d2433}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #c8ced8;padding:.2em .6em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}\
svg text{font-size:12px;font-family:monospace}svg text.group{font-weight:bold}\
.problem{color:#b3261e}";

/// `ipam report --html FILE [--group-by LABEL]`.
pub fn write_report(store: &dyn Store, args: &ReportArgs) -> anyhow::Result<String> {
    let picture = read_picture(store, args.group_by.as_deref())?;
    let check = Ipam::new(store)
        .check()
        .context("cannot check IPAM records")?;
    let page = render(&picture, &check);
    write_whole(&args.html, page.as_bytes()).with_context(|| {
        format!(
            "cannot write the report to {}; give --html a file in a writable directory",
            args.html.display()
        )
    })?;
    let blocks: usize = picture
        .pools
        .iter()
        .flat_map(|p| &p.groups)
        .flat_map(|g| &g.nodes)
        .map(|n| n.blocks.len())
        .sum();
    Ok(format!(
        "Wrote {}: {} pools, {blocks} blocks, {} nodes, {} problems.\n",
        args.html.display(),
        picture.pools.len(),
        picture.nodes.len(),
        check.problems.len()
    ))
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, so that a
/// reader never sees half a file and a failure leaves nothing behind.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp: PathBuf = path.with_file_name(temp_name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn colour(in_use: u128, total: u128) -> &'static str {
    if in_use == 0 {
        return PALETTE[0].1;
    }
    if in_use >= total {
        return PALETTE[PALETTE.len() - 1].1;
    }
    let pct = in_use * 100 / total;
    let partly = &PALETTE[1..PALETTE.len() - 1];
    partly
        .iter()
        .find(|(bound, _, _)| pct < *bound)
        .map_or(partly[partly.len() - 1].1, |(_, c, _)| c)
}

/// The whole page.
pub fn render(picture: &Picture, check: &CheckReport) -> String {
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Tessera IPAM report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Tessera IPAM report</h1>\n"
    );
    pool_totals(&mut page, picture);
    map(&mut page, picture);
    node_totals(&mut page, picture);
    leftovers(&mut page, picture);
    check_section(&mut page, check);
    page.push_str("</body>\n</html>\n");
    page
}

fn pool_totals(page: &mut String, picture: &Picture) {
    page.push_str(
        "<h2>Pools</h2>\n<table id=\"pool-totals\">\n<tr><th>GROUPING</th><th>CIDR</th>\
         <th>IPS TOTAL</th><th>IPS IN USE</th><th>IPS FREE</th></tr>\n",
    );
    for pool in &picture.pools {
        let free = pool.total.saturating_sub(pool.in_use);
        let _ = writeln!(
            page,
            "<tr class=\"pool\" data-pool=\"{}\" data-cidr=\"{}\"><td>IP Pool</td>\
             <td data-field=\"cidr\">{}</td><td class=\"n\" data-field=\"total\">{}</td>\
             <td class=\"n\" data-field=\"in-use\">{}</td>\
             <td class=\"n\" data-field=\"free\">{}</td></tr>",
            escape(&pool.name),
            pool.cidr,
            escape(&pool_cidr_cell(&pool.name, &pool.cidr)),
            pool.total,
            count_cell(pool.in_use, pool.total),
            count_cell(free, pool.total)
        );
    }
    page.push_str("</table>\n");
}

fn map(page: &mut String, picture: &Picture) {
    page.push_str("<h2>Map</h2>\n<p class=\"legend\">One square per block:");
    for (_, colour, what) in PALETTE {
        let _ = write!(page, "<span style=\"background:{colour}\"></span>{what}");
    }
    page.push_str("</p>\n");
    if let Some(label) = &picture.group_by {
        let _ = writeln!(
            page,
            "<p>Nodes grouped by label <code>{}</code>.</p>",
            escape(label)
        );
    }
    for pool in &picture.pools {
        let _ = writeln!(
            page,
            "<section class=\"pool-map\" data-cidr=\"{}\">\n<h3>{}: {} of {} in use</h3>",
            pool.cidr,
            escape(&pool_title(pool)),
            pool.in_use,
            pool.total
        );
        pool_svg(page, pool, picture.group_by.as_deref());
        page.push_str("</section>\n");
    }
}

/// Rows of the SVG: group titles and node rows, with their heights.
enum Row<'a> {
    Title(String),
    Node(&'a NodeBlocks),
}

fn row_height(row: &Row) -> u32 {
    match row {
        Row::Title(_) => TITLE_ROW,
        Row::Node(n) => {
            let lines = (n.blocks.len() as u32).div_ceil(CELLS_PER_ROW).max(1);
            lines * STEP + 4
        }
    }
}

fn pool_svg(page: &mut String, pool: &PoolPicture, label: Option<&str>) {
    let mut rows = Vec::new();
    for group in &pool.groups {
        if let (Some(title), Some(_)) = (group_title(&group.key, label), label) {
            rows.push(Row::Title(format!(
                "{title}: {} of {} in use",
                group.in_use, group.total
            )));
        }
        rows.extend(group.nodes.iter().map(Row::Node));
    }
    if rows.is_empty() {
        page.push_str("<p>No blocks claimed.</p>\n");
        return;
    }
    let height: u32 = rows.iter().map(row_height).sum();
    let width = NAME_COLUMN + CELLS_PER_ROW * STEP;
    let _ = writeln!(
        page,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">"
    );
    let mut y = 0;
    for row in &rows {
        match row {
            Row::Title(title) => {
                let _ = writeln!(
                    page,
                    "<text class=\"group\" x=\"0\" y=\"{}\">{}</text>",
                    y + 15,
                    escape(title)
                );
            }
            Row::Node(node) => node_row(page, node, y),
        }
        y += row_height(row);
    }
    page.push_str("</svg>\n");
}

fn node_row(page: &mut String, node: &NodeBlocks, y: u32) {
    let name = node_title(node);
    let _ = writeln!(
        page,
        "<text x=\"8\" y=\"{}\">{} {}/{}</text>",
        y + CELL,
        escape(name),
        node.in_use,
        node.total
    );
    for (i, block) in node.blocks.iter().enumerate() {
        let i = i as u32;
        let x = NAME_COLUMN + (i % CELLS_PER_ROW) * STEP;
        let cy = y + (i / CELLS_PER_ROW) * STEP + 2;
        block_rect(page, block, name, x, cy);
    }
}

fn block_rect(page: &mut String, block: &BlockUsage, node: &str, x: u32, y: u32) {
    let _ = writeln!(
        page,
        "<rect class=\"block\" x=\"{x}\" y=\"{y}\" width=\"{CELL}\" height=\"{CELL}\" \
         fill=\"{}\" data-block=\"{}\" data-node=\"{}\" data-in-use=\"{}\" data-total=\"{}\">\
         <title>{} on {}: {} of {} in use</title></rect>",
        colour(block.in_use, block.total),
        block.cidr,
        escape(node),
        block.in_use,
        block.total,
        block.cidr,
        escape(node),
        block.in_use,
        block.total
    );
}

fn node_totals(page: &mut String, picture: &Picture) {
    page.push_str("<h2>Nodes</h2>\n<table id=\"node-totals\">\n<tr><th>NODE</th>");
    if let Some(label) = &picture.group_by {
        let _ = write!(page, "<th>{}</th>", escape(&label.to_uppercase()));
    }
    page.push_str("<th>BLOCKS</th><th>IPS TOTAL</th><th>IPS IN USE</th><th>IPS FREE</th></tr>\n");
    for (name, node) in &picture.nodes {
        let _ = write!(
            page,
            "<tr class=\"node\" data-node=\"{}\"><td>{}</td>",
            escape(name),
            escape(name)
        );
        if picture.group_by.is_some() {
            let _ = write!(
                page,
                "<td data-field=\"group\">{}</td>",
                escape(node.group.as_deref().unwrap_or(""))
            );
        }
        let _ = writeln!(
            page,
            "<td class=\"n\" data-field=\"blocks\">{}</td><td class=\"n\" data-field=\"total\">{}</td>\
             <td class=\"n\" data-field=\"in-use\">{}</td><td class=\"n\" data-field=\"free\">{}</td></tr>",
            node.blocks,
            node.total,
            count_cell(node.in_use, node.total),
            count_cell(node.total.saturating_sub(node.in_use), node.total)
        );
    }
    page.push_str("</table>\n");
}

fn leftovers(page: &mut String, picture: &Picture) {
    page.push_str("<h2>Blocks of deleted pools</h2>\n");
    let deleted: Vec<&PoolPicture> = picture.pools.iter().filter(|p| p.name.is_empty()).collect();
    if deleted.is_empty() {
        page.push_str("<p id=\"leftover-blocks\" data-count=\"0\">None.</p>\n");
        return;
    }
    let count: usize = deleted
        .iter()
        .flat_map(|p| &p.groups)
        .flat_map(|g| &g.nodes)
        .map(|n| n.blocks.len())
        .sum();
    let _ = writeln!(
        page,
        "<table id=\"leftover-blocks\" data-count=\"{count}\">\n<tr><th>POOL NETWORK</th>\
         <th>BLOCK</th><th>NODE</th><th>IPS IN USE</th></tr>"
    );
    for pool in deleted {
        for node in pool.groups.iter().flat_map(|g| &g.nodes) {
            for block in &node.blocks {
                let _ = writeln!(
                    page,
                    "<tr class=\"leftover\" data-block=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
                     <td class=\"n\">{}</td></tr>",
                    block.cidr,
                    pool.cidr,
                    block.cidr,
                    escape(node_title(node)),
                    count_cell(block.in_use, block.total)
                );
            }
        }
    }
    page.push_str("</table>\n");
}

fn check_section(page: &mut String, check: &CheckReport) {
    let _ = writeln!(
        page,
        "<h2>Check</h2>\n<div id=\"check\" data-problems=\"{}\" data-notes=\"{}\">\n\
         <p>{} blocks, {} handles, {} allocated addresses examined.</p>",
        check.problems.len(),
        check.notes.len(),
        check.blocks,
        check.handles,
        check.allocations
    );
    if check.problems.is_empty() {
        page.push_str("<p class=\"verdict\">No problems.</p>\n");
    } else {
        page.push_str("<ul class=\"problems\">\n");
        for problem in &check.problems {
            let _ = writeln!(page, "<li class=\"problem\">{}</li>", escape(problem));
        }
        page.push_str("</ul>\n");
    }
    if !check.notes.is_empty() {
        page.push_str("<ul class=\"notes\">\n");
        for note in &check.notes {
            let _ = writeln!(page, "<li class=\"note\">{}</li>", escape(note));
        }
        page.push_str("</ul>\n");
    }
    page.push_str("</div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_datastore_strings_is_escaped() {
        assert_eq!(
            escape("<script>a&b</script>\"'"),
            "&lt;script&gt;a&amp;b&lt;/script&gt;&quot;&#39;"
        );
    }

    #[test]
    fn colours_follow_fullness() {
        assert_eq!(colour(0, 64), PALETTE[0].1);
        assert_eq!(colour(1, 64), PALETTE[1].1);
        assert_eq!(colour(40, 64), PALETTE[3].1);
        assert_eq!(colour(63, 64), PALETTE[4].1);
        assert_eq!(colour(64, 64), PALETTE[5].1);
    }
}
