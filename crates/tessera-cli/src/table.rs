//! The two table shapes users know from Calico and Kubernetes tools:
//! [`Columns`], the borderless layout of `kubectl get` / `calicoctl get` (Go's tabwriter with
//! three spaces of padding), and [`boxed`], the bordered ASCII layout of `calicoctl ipam show`
//! (Go's tablewriter: centred headers, numbers right-aligned, text left-aligned).

use comfy_table::presets::ASCII_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, LineStyle, Table};

/// Space between columns.
const PADDING: usize = 3;
/// Narrowest column including padding, as calicoctl's tabwriter sets it.
const MIN_CELL: usize = 5;

/// A borderless table in kubectl/calicoctl style.
#[derive(Debug, Default)]
pub struct Columns {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    /// A table with the given (already upper-case) column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it should have as many cells as the header.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending with a newline. Lines carry no
    /// trailing spaces, also when their last cells are empty.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header).chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .filter_map(|l| l.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            for (c, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if c + 1 < line.len() {
                    let cell_width = (widths[c] + PADDING).max(MIN_CELL);
                    let pad = cell_width - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.truncate(out.trim_end_matches(' ').len());
            out.push('\n');
        }
        out
    }
}

/// Whether Go's tablewriter would right-align this cell (it looks like a number).
fn is_number(cell: &str) -> bool {
    let body = cell.strip_prefix('-').unwrap_or(cell);
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let grouped = {
        let mut groups = whole.split(',');
        let head = groups.next().unwrap_or_default();
        let rest: Vec<&str> = groups.collect();
        !rest.is_empty()
            && digits(head)
            && head.len() <= 3
            && rest.iter().all(|g| g.len() == 3 && digits(g))
    };
    (digits(whole) || grouped) && frac.is_none_or(digits)
}

/// A bordered ASCII table in `calicoctl ipam show` style, ending with a newline.
pub fn boxed(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .chain(std::iter::once(header[c].chars().count()))
            .max()
            .unwrap_or(0)
    };
    // Centre the titles ourselves: tablewriter puts the odd space on the right, comfy-table
    // on the left, and runbooks compare these lines byte for byte.
    let titles: Vec<Cell> = header
        .iter()
        .enumerate()
        .map(|(c, h)| {
            let gap = width(c) - h.chars().count();
            let left = gap / 2;
            let text = format!("{}{h}{}", " ".repeat(left), " ".repeat(gap - left));
            Cell::new(text).set_alignment(CellAlignment::Left)
        })
        .collect();
    let mut table = Table::new();
    table
        .load_style(ASCII_FULL_CONDENSED.header_separator(LineStyle::new('+', '-', '+', '+')))
        .set_header(titles);
    for row in rows {
        table.add_row(row.iter().map(|cell| {
            let align = if is_number(cell) {
                CellAlignment::Right
            } else {
                CellAlignment::Left
            };
            Cell::new(cell).set_alignment(align)
        }));
    }
    let mut out = table.to_string();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_by_three_and_leave_the_last_column_alone() {
        let mut t = Columns::new(&["NAME", "CIDR", "SELECTOR"]);
        t.push(vec![
            "default-ipv4-ippool".into(),
            "192.168.0.0/16".into(),
            "all()".into(),
        ]);
        t.push(vec!["b".into(), "10.0.0.0/8".into(), "".into()]);
        t.push(vec!["c".into(), "".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME                  CIDR             SELECTOR\n\
             default-ipv4-ippool   192.168.0.0/16   all()\n\
             b                     10.0.0.0/8\n\
             c\n"
        );
    }

    #[test]
    fn narrow_columns_keep_the_minimum_width() {
        let mut t = Columns::new(&["A", "B"]);
        t.push(vec!["x".into(), "y".into()]);
        assert_eq!(t.render(), "A    B\nx    y\n");
    }

    #[test]
    fn boxed_matches_calicoctl() {
        let rows = vec![vec![
            "IP Pool".to_string(),
            "192.168.0.0/24".to_string(),
            "256".to_string(),
            "3 (1%)".to_string(),
            "253 (99%)".to_string(),
        ]];
        let got = boxed(
            &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
            &rows,
        );
        assert_eq!(
            got,
            "+----------+----------------+-----------+------------+-----------+\n\
             | GROUPING |      CIDR      | IPS TOTAL | IPS IN USE | IPS FREE  |\n\
             +----------+----------------+-----------+------------+-----------+\n\
             | IP Pool  | 192.168.0.0/24 |       256 | 3 (1%)     | 253 (99%) |\n\
             +----------+----------------+-----------+------------+-----------+\n"
        );
    }

    #[test]
    fn numbers_are_detected_like_tablewriter() {
        for n in ["0", "256", "-3", "1,024", "1.5", "18446744073709551616"] {
            assert!(is_number(n), "{n}");
        }
        for s in ["3 (1%)", "1,02", "", "1.", "abc", "10.0.0.0/8"] {
            assert!(!is_number(s), "{s}");
        }
    }
}
