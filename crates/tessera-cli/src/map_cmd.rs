//! `tessera ipam show --map`: each pool's blocks drawn node by node, one cell per block
//! showing how full it is, with the same totals as `ipam show`. One line per node (wrapped
//! when a node holds many blocks), so a thousand nodes stay a thousand lines.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use tessera_core::ipam::{picture, GroupKey, GroupPicture, NodeBlocks, Picture, PoolPicture};
use tessera_core::store::Store;
use tessera_core::validate::names::qualified_name_problem;

use crate::ipam_cmd::percent;

/// Block cells per line before a node's line wraps.
const CELLS_PER_LINE: usize = 64;
/// Longest node name column; longer names push their own line's cells right.
const MAX_NAME_WIDTH: usize = 40;

/// The glyphs a block is drawn with, from empty to full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glyphs {
    /// `·`, `▁` to `▇`, `█`.
    Unicode,
    /// `.`, `1` to `9` (tenths in use), `#`: for terminals without UTF-8.
    Ascii,
}

impl Glyphs {
    /// Unicode when the locale says UTF-8 and `NO_COLOR` is not set, ASCII otherwise.
    pub fn from_env() -> Self {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return Self::Ascii;
        }
        let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.is_empty())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if locale.contains("utf-8") || locale.contains("utf8") {
            Self::Unicode
        } else {
            Self::Ascii
        }
    }

    /// The cell of a block with `in_use` of `total` addresses allocated.
    pub fn cell(self, in_use: u128, total: u128) -> char {
        let full = total == 0 || in_use >= total;
        match self {
            Self::Unicode => match in_use {
                0 if !full => '·',
                _ if full => '█',
                _ => ['▁', '▂', '▃', '▄', '▅', '▆', '▇'][level_index(in_use, total, 7)],
            },
            Self::Ascii => match in_use {
                0 if !full => '.',
                _ if full => '#',
                _ => char::from(b'1' + level_index(in_use, total, 9) as u8),
            },
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Self::Unicode => "· empty, ▁▂▃▄▅▆▇ filling, █ full",
            Self::Ascii => ". empty, 1-9 tenths in use, # full",
        }
    }
}

/// Which of `steps` levels a partly used block falls in (0 = least).
fn level_index(in_use: u128, total: u128, steps: u128) -> usize {
    let level = in_use.saturating_mul(steps) / total;
    level.min(steps - 1) as usize
}

/// Checks a `--group-by` value: a label key.
pub fn check_group_by(label: Option<&str>) -> anyhow::Result<()> {
    if let Some(label) = label {
        if let Some(problem) = qualified_name_problem(label) {
            bail!(
                "--group-by {label:?} is not a node label key: {problem}; give a key such as \
                 rack or topology.kubernetes.io/zone"
            );
        }
    }
    Ok(())
}

/// Reads the picture, grouped by `group_by` when given.
pub fn read_picture(store: &dyn Store, group_by: Option<&str>) -> anyhow::Result<Picture> {
    check_group_by(group_by)?;
    picture(store, group_by).context("cannot read IPAM usage")
}

/// `ipam show --map [--group-by LABEL]`.
pub fn show_map(store: &dyn Store, group_by: Option<&str>) -> anyhow::Result<String> {
    let picture = read_picture(store, group_by)?;
    Ok(render(&picture, Glyphs::from_env()))
}

/// `in_use/total (p%)`, the numbers `ipam show` prints.
fn counts(in_use: u128, total: u128) -> String {
    format!("{in_use}/{total} ({}%)", percent(in_use, total))
}

/// Title of a pool: its name and network, or the network of a deleted pool.
pub fn pool_title(pool: &PoolPicture) -> String {
    if pool.name.is_empty() {
        format!("blocks of deleted pool {}", pool.cidr)
    } else {
        format!("IP pool {} {}", pool.name, pool.cidr)
    }
}

/// Title of a group of nodes, `None` for the one group of an ungrouped picture.
pub fn group_title(key: &GroupKey, label: Option<&str>) -> Option<String> {
    let label = label.unwrap_or("label");
    match key {
        GroupKey::All => None,
        GroupKey::Value(v) => Some(format!("{label}={v}")),
        GroupKey::Unlabeled => Some(format!("(no {label})")),
        GroupKey::Unaffined => Some("(unaffined)".into()),
    }
}

/// Name a node's line shows.
pub fn node_title(node: &NodeBlocks) -> &str {
    node.node.as_deref().unwrap_or("(unaffined)")
}

/// The whole map as text.
pub fn render(picture: &Picture, glyphs: Glyphs) -> String {
    let mut out = format!(
        "Each cell is one block ({}); counts are addresses in use/in total.\n",
        glyphs.legend()
    );
    for pool in &picture.pools {
        let _ = writeln!(
            out,
            "\n{}: {}",
            pool_title(pool),
            counts(pool.in_use, pool.total)
        );
        if pool.groups.is_empty() {
            out.push_str("  no blocks claimed\n");
        }
        let nodes = || pool.groups.iter().flat_map(|g| &g.nodes);
        let widths = Widths {
            name: nodes()
                .map(|n| node_title(n).chars().count())
                .max()
                .unwrap_or(0)
                .min(MAX_NAME_WIDTH),
            counts: nodes()
                .map(|n| counts(n.in_use, n.total).len())
                .max()
                .unwrap_or(0),
        };
        for group in &pool.groups {
            render_group(&mut out, group, picture.group_by.as_deref(), widths, glyphs);
        }
    }
    out
}

/// Column widths shared by all node lines of a pool, so that its cells line up.
#[derive(Clone, Copy)]
struct Widths {
    name: usize,
    counts: usize,
}

fn render_group(
    out: &mut String,
    group: &GroupPicture,
    label: Option<&str>,
    widths: Widths,
    glyphs: Glyphs,
) {
    let indent = match group_title(&group.key, label) {
        // The unaffined blocks of an ungrouped map are one line among the nodes.
        Some(_) if label.is_none() => "  ",
        Some(title) => {
            let _ = writeln!(out, "  {title}: {}", counts(group.in_use, group.total));
            "    "
        }
        None => "  ",
    };
    for node in &group.nodes {
        let head = format!(
            "{indent}{:<name$}  {:<count$}  ",
            node_title(node),
            counts(node.in_use, node.total),
            name = widths.name,
            count = widths.counts
        );
        let cells: Vec<char> = node
            .blocks
            .iter()
            .map(|b| glyphs.cell(b.in_use, b.total))
            .collect();
        let pad = " ".repeat(head.chars().count());
        for (i, line) in cells.chunks(CELLS_PER_LINE).enumerate() {
            out.push_str(if i == 0 { &head } else { &pad });
            out.extend(line);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_go_from_empty_to_full() {
        let u = Glyphs::Unicode;
        let drawn: String = [0, 1, 20, 40, 63, 64]
            .iter()
            .map(|&n| u.cell(n, 64))
            .collect();
        assert_eq!(drawn, "·▁▃▅▇█");
        let a = Glyphs::Ascii;
        let drawn: String = [0, 1, 32, 63, 64].iter().map(|&n| a.cell(n, 64)).collect();
        assert_eq!(drawn, ".159#");
    }

    #[test]
    fn a_bad_group_by_names_the_flag() {
        let err = check_group_by(Some("rack/")).unwrap_err().to_string();
        assert!(
            err.starts_with("--group-by \"rack/\" is not a node label key"),
            "{err}"
        );
        assert!(check_group_by(Some("topology.kubernetes.io/zone")).is_ok());
    }
}
