//! A small YAML emitter for JSON values that prints what `calicoctl -o yaml` and
//! `kubectl -o yaml` print: keys sorted the way go-yaml sorts them, block style, lists not
//! indented under their key, and strings quoted only when YAML 1.1 would read them as
//! something else.
//!
//! Runbooks diff this output against saved copies, so the exact layout matters more than
//! generality; anything a JSON value can hold round-trips through any YAML parser.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Renders `value` as one YAML document (no leading `---`), ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar, 0));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Keys in go-yaml's order (runs of digits compare as numbers, non-letters sort before
/// letters), which is what every Calico and Kubernetes tool prints.
fn sorted_keys(map: &Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_cached_key(|k| go_yaml_sort_key(k));
    keys
}

/// One piece of a key as go-yaml compares it. The variant order is the sort order: other
/// characters, then numbers, then letters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Other(char),
    /// A run of digits: by value (significant digits: how many, then which), then the run
    /// with fewer leading zeros first.
    Number {
        significant: usize,
        digits: String,
        run: usize,
    },
    Letter(char),
}

/// go-yaml's key order as a sort key. Comparing whole digit runs by value, with no
/// arithmetic that can saturate, makes it a total order, which sorting requires (go-yaml's
/// own comparison, character by character, is not one for every key set).
fn go_yaml_sort_key(key: &str) -> Vec<KeyPart> {
    let mut parts = Vec::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut run = String::from(c);
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                run.push(d);
            }
            let digits = run.trim_start_matches('0').to_string();
            parts.push(KeyPart::Number {
                significant: digits.len(),
                digits,
                run: run.len(),
            });
        } else if c.is_alphabetic() {
            parts.push(KeyPart::Letter(c));
        } else {
            parts.push(KeyPart::Other(c));
        }
    }
    parts
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>, level: usize) {
    for (i, key) in sorted_keys(map).into_iter().enumerate() {
        // The first key of a map inside a list item sits on the item's `- ` line.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        let key_text = scalar_string(key, level);
        if key_text.contains('\n') || key_text.chars().count() > MAX_IMPLICIT_KEY {
            // Too long or multi-line for a simple key: the explicit `? key` form.
            out.push_str("? ");
            out.push_str(&key_text);
            out.push('\n');
            indent(out, level);
        } else {
            out.push_str(&key_text);
        }
        out.push(':');
        write_value_after_key(out, &map[key], level);
    }
}

/// YAML reads a simple (implicit) key only up to 1024 characters, on one line.
const MAX_IMPLICIT_KEY: usize = 1024;

fn write_value_after_key(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, level + 2);
        }
        // go-yaml does not indent a list under its key.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, level);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other, level));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], level: usize) {
    for item in items {
        if !out.ends_with("- ") {
            indent(out, level);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, level + 2),
            Value::Array(a) if !a.is_empty() => write_seq(out, a, level + 2),
            other => {
                out.push_str(&inline(other, level));
                out.push('\n');
            }
        }
    }
}

/// A scalar or empty collection written on the current line. `level` is the indentation of
/// the line, used by multi-line strings.
fn inline(value: &Value, level: usize) -> String {
    debug_assert!(!is_block(value));
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s, level),
        Value::Array(_) => "[]".to_string(),
        Value::Object(_) => "{}".to_string(),
    }
}

/// A string in the style go-yaml picks: plain when that reads back as the same string,
/// double-quoted when plain would read as another type, single-quoted when plain is not
/// allowed, a literal block when it spans lines.
fn scalar_string(s: &str, level: usize) -> String {
    if s.is_empty() {
        return "\"\"".to_string();
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return double_quoted(s);
    }
    if s.contains('\n') {
        return literal_block(s, level);
    }
    if resolves_to_non_string(s) {
        return double_quoted(s);
    }
    if !plain_allowed(s) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    if reads_back_plain(s) {
        s.to_string()
    } else {
        double_quoted(s)
    }
}

/// Whether `s`, written plain, reads back as the same string with serde-saphyr, the parser
/// `tessera apply` reads manifests with. It resolves more plain scalars than YAML 1.1 says
/// (`yeS` as a boolean, `0X1F` as a number), so the rules above alone do not cover it.
fn reads_back_plain(s: &str) -> bool {
    matches!(serde_saphyr::from_str::<Value>(s), Ok(Value::String(read)) if read == s)
}

fn literal_block(s: &str, level: usize) -> String {
    let body = s.strip_suffix('\n').unwrap_or(s);
    let chomp = if s.ends_with('\n') { "" } else { "-" };
    // Parsers take the block's indentation from its first line that is not empty.
    let first_line = body.split('\n').find(|line| !line.is_empty());
    if first_line.is_none_or(|line| line.starts_with(' ')) || s.ends_with("\n\n") {
        // A leading space there would need an indentation indicator, and a block of nothing
        // but line breaks reads back as ""; quoting is simpler and exact.
        return double_quoted(s);
    }
    let mut out = format!("|{chomp}");
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', level + 2));
            out.push_str(line);
        }
    }
    out
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a plain scalar with this text would be read by a YAML 1.1 parser (go-yaml, which
/// Kubernetes tools use) as null, a boolean, a number or a timestamp.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let Some(first) = s.chars().next() else {
        return true;
    };
    if !matches!(first, '+' | '-' | '.' | '0'..='9') {
        return false;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let unsigned = plain.trim_start_matches(['+', '-']);
    let radix_int = |prefix: &str, radix: u32| {
        unsigned
            .strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && u128::from_str_radix(d, radix).is_ok())
    };
    if radix_int("0x", 16) || radix_int("0b", 2) || radix_int("0o", 8) {
        return true;
    }
    if !unsigned.is_empty() && unsigned.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    if unsigned.chars().any(|c| c.is_ascii_digit()) && plain.parse::<f64>().is_ok() {
        return true;
    }
    is_base60(unsigned) || looks_like_timestamp(s)
}

/// `1:20`, `190:20:30.15`: YAML 1.1 sexagesimal numbers.
fn is_base60(s: &str) -> bool {
    let mut parts = s.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    let mut rest: Vec<&str> = parts.collect();
    if rest.is_empty() || head.is_empty() || !head.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    if let Some(last) = rest.last_mut() {
        if let Some((whole, frac)) = last.split_once('.') {
            if !frac.chars().all(|c| c.is_ascii_digit()) {
                return false;
            }
            *last = whole;
        }
    }
    rest.iter().all(|p| {
        !p.is_empty() && p.len() <= 2 && p.chars().all(|c| c.is_ascii_digit()) && p < &"60"
    })
}

/// `2022-05-12`, `2022-05-12T14:34:03Z`: go-yaml reads these as timestamps.
fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if !(digits(0..4) && b.get(4) == Some(&b'-')) {
        return false;
    }
    let mut i = 5;
    let month = (i..b.len()).take_while(|&j| b[j].is_ascii_digit()).count();
    if !(1..=2).contains(&month) {
        return false;
    }
    i += month;
    if b.get(i) != Some(&b'-') {
        return false;
    }
    i += 1;
    let day = (i..b.len()).take_while(|&j| b[j].is_ascii_digit()).count();
    if !(1..=2).contains(&day) {
        return false;
    }
    i += day;
    i == b.len() || matches!(b[i], b'T' | b't' | b' ' | b'\t')
}

/// Whether the string may be written as a plain scalar in block context.
fn plain_allowed(s: &str) -> bool {
    let first = s.chars().next().unwrap_or(' ');
    let second = s.chars().nth(1);
    let indicator = matches!(
        first,
        ',' | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    );
    let dash_like = matches!(first, '-' | '?' | ':') && second.is_none_or(|c| c == ' ');
    if indicator || dash_like {
        return false;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.ends_with(':') {
        return false;
    }
    !(s.contains(": ") || s.contains(" #") || s.contains('\t'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_manifest_matches_calicoctl_layout() {
        let v = json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool", "resourceVersion": "689",
                         "creationTimestamp": "2022-05-12T14:34:03Z",
                         "annotations": {"projectcalico.org/metadata": "{\"uid\":\"x\"}"}},
            "spec": {"cidr": "10.244.0.0/18", "blockSize": 26, "natOutgoing": true,
                     "allowedUses": ["Workload", "Tunnel"], "nodeSelector": "all()",
                     "ipipMode": "Never", "vxlanMode": "Always"}
        });
        assert_eq!(
            to_yaml(&v),
            "apiVersion: projectcalico.org/v3\n\
             kind: IPPool\n\
             metadata:\n\
            \x20 annotations:\n\
            \x20   projectcalico.org/metadata: '{\"uid\":\"x\"}'\n\
            \x20 creationTimestamp: \"2022-05-12T14:34:03Z\"\n\
            \x20 name: default-ipv4-ippool\n\
            \x20 resourceVersion: \"689\"\n\
             spec:\n\
            \x20 allowedUses:\n\
            \x20 - Workload\n\
            \x20 - Tunnel\n\
            \x20 blockSize: 26\n\
            \x20 cidr: 10.244.0.0/18\n\
            \x20 ipipMode: Never\n\
            \x20 natOutgoing: true\n\
            \x20 nodeSelector: all()\n\
            \x20 vxlanMode: Always\n"
        );
    }

    #[test]
    fn lists_of_maps_and_empties() {
        let v = json!({"items": [{"b": 1, "a": {"x": []}}, {"c": {}}], "kind": "IPPoolList"});
        assert_eq!(
            to_yaml(&v),
            "items:\n- a:\n    x: []\n  b: 1\n- c: {}\nkind: IPPoolList\n"
        );
    }

    #[test]
    fn quoting_rules() {
        for (s, want) in [
            ("rack == \"0\"", "rack == \"0\""),
            ("!all()", "'!all()'"),
            ("[\"external-pool\"]", "'[\"external-pool\"]'"),
            ("true", "\"true\""),
            ("yes", "\"yes\""),
            ("yeS", "\"yeS\""),
            ("oFF", "\"oFF\""),
            ("12", "\"12\""),
            ("1e3", "\"1e3\""),
            ("0x1F", "\"0x1F\""),
            ("0X1F", "\"0X1F\""),
            ("1:20", "\"1:20\""),
            ("2024-01-02", "\"2024-01-02\""),
            ("192.168.0.0/24", "192.168.0.0/24"),
            ("fd00::/48", "fd00::/48"),
            ("a: b", "'a: b'"),
            ("it's", "it's"),
            ("'q'", "'''q'''"),
            ("", "\"\""),
            ("-x", "-x"),
            ("- x", "'- x'"),
            ("inf", "inf"),
            ("tab\there", "\"tab\\there\""),
        ] {
            assert_eq!(scalar_string(s, 0), want, "for {s:?}");
        }
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let v = json!({"a": {"note": "one\ntwo\n"}});
        assert_eq!(to_yaml(&v), "a:\n  note: |\n    one\n    two\n");
        let v = json!({"note": "one\n\ntwo"});
        assert_eq!(to_yaml(&v), "note: |-\n  one\n\n  two\n");
        let v = json!({"note": "\n"});
        assert_eq!(to_yaml(&v), "note: \"\\n\"\n");
        for text in ["\n", "\n #c", " x\ny", "\n\nx\n"] {
            let v = json!({"note": text});
            assert_eq!(serde_saphyr::from_str::<Value>(&to_yaml(&v)).unwrap(), v);
        }
    }

    #[test]
    fn long_and_multi_line_keys_read_back() {
        let long = "k".repeat(1100);
        for key in ["x\ny", "x\n", long.as_str(), "short"] {
            for value in [json!(1), json!({"a": [1, {"b": 2}]}), json!(["a", "b"])] {
                let v = json!({"outer": {key: value}, key: "top"});
                let yaml = to_yaml(&v);
                let back: Value =
                    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
                assert_eq!(back, v, "{yaml}");
            }
        }
        assert_eq!(to_yaml(&json!({"x\ny": 1})), "? |-\n  x\n  y\n: 1\n");
    }

    #[test]
    fn key_order_follows_go_yaml() {
        let mut keys = vec!["b10", "b9", "a_b", "aB", "A", "a", "a01", "a1"];
        keys.sort_by_key(|k| go_yaml_sort_key(k));
        assert_eq!(keys, ["A", "a", "a_b", "a1", "a01", "aB", "b9", "b10"]);
    }

    #[test]
    fn key_order_is_total_and_sorting_never_panics() {
        // Comparing character by character ordered these in a cycle: a1b < a2 < a12 < a1b.
        let mut keys = vec!["a12", "a2", "a1b"];
        keys.sort_by_key(|k| go_yaml_sort_key(k));
        assert_eq!(keys, ["a1b", "a2", "a12"]);
        // Every key of up to four pieces, and digit runs too long for any integer type:
        // sorting them once panicked ("does not correctly implement a total order").
        let pieces = ["a", "b", "1", "2", "12", "0", "+", "_", &"7".repeat(45)];
        let mut map = Map::new();
        let mut grow = vec![String::new()];
        for _ in 0..4 {
            grow = grow
                .iter()
                .flat_map(|k| pieces.iter().map(move |p| format!("{k}{p}")))
                .collect();
            map.extend(grow.iter().map(|k| (k.clone(), Value::Null)));
        }
        let sorted = sorted_keys(&map);
        assert!(sorted
            .windows(2)
            .all(|w| go_yaml_sort_key(w[0]) <= go_yaml_sort_key(w[1])));
    }
}
