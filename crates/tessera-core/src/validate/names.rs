//! The rules every kind shares: names (DNS subdomains and labels, node names), label and
//! annotation keys and values, handle ids, and the hint for typographic characters pasted
//! from web pages.

use std::collections::BTreeMap;

use super::error::FieldError;
use crate::resources::meta::ObjectMeta;
use crate::text::{plain_or_quoted, quoted};

#[derive(Clone, Copy)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253 characters.
    Subdomain,
    /// DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters.
    Label,
}

pub(crate) fn check_metadata(meta: &ObjectMeta, rule: NameRule, errors: &mut Vec<FieldError>) {
    let problem = match rule {
        NameRule::Subdomain => subdomain_problem(&meta.name),
        NameRule::Label => dns_label_problem(&meta.name),
    };
    if let Some(problem) = problem {
        let reason = if meta.name.is_empty() {
            "is required".to_string()
        } else {
            let rule_text = match rule {
                NameRule::Subdomain => SUBDOMAIN_RULE,
                NameRule::Label => {
                    "use lowercase letters, digits and '-', starting and ending with a letter \
                     or digit, at most 63 characters"
                }
            };
            format!(
                "{} is not a valid name: {problem}; {rule_text}",
                quoted(&meta.name)
            )
        };
        errors.push(FieldError::new("metadata.name", reason));
    }
    check_labels(meta, errors);
}

pub(super) fn check_labels(meta: &ObjectMeta, errors: &mut Vec<FieldError>) {
    check_label_map(&meta.labels, "metadata.labels", errors);
    check_annotation_keys(&meta.annotations, errors);
}

/// Kubernetes' rules for a map of labels (keys and values) at `path`.
pub(super) fn check_label_map(
    labels: &BTreeMap<String, String>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in labels {
        let field = format!("{path}.{}", plain_or_quoted(key));
        if let Some(p) = qualified_name_problem(key) {
            errors.push(FieldError::new(
                &field,
                format!("{} is not a valid label key: {p}", quoted(key)),
            ));
        }
        if let Some(p) = label_value_problem(value) {
            errors.push(FieldError::new(
                &field,
                format!("{} is not a valid label value: {p}", quoted(value)),
            ));
        }
    }
}

fn check_annotation_keys(annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for key in annotations.keys() {
        if let Some(p) = qualified_name_problem(key) {
            errors.push(FieldError::new(
                format!("metadata.annotations.{}", plain_or_quoted(key)),
                format!("{} is not a valid annotation key: {p}", quoted(key)),
            ));
        }
    }
}

/// How to write a DNS-1123 subdomain, as error messages say it.
const SUBDOMAIN_RULE: &str = "use lowercase letters, digits, '-' and '.', starting and ending \
                              with a letter or digit, at most 253 characters";

/// Why `name` cannot name a node, as a sentence naming it and the rule; `None` when it can.
///
/// A node name is a DNS-1123 subdomain, as Kubernetes requires of node names and as
/// `tessera label node` checks. That also keeps it one segment of a block key and apart from
/// the home of shared blocks (`_shared`), so every way a node name enters (the CNI plugin,
/// `ipam assign --node`, the allocator) applies this one rule.
pub fn node_name_problem(name: &str) -> Option<String> {
    let problem = subdomain_problem(name)?;
    Some(format!(
        "node name {} is not valid: {problem}; a node name is a DNS subdomain, as in \
         Kubernetes: {SUBDOMAIN_RULE}",
        quoted(name)
    ))
}

/// Why `name` is not a DNS-1123 subdomain, if it is not one.
pub fn subdomain_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if let Some(hint) = typography_hint(name) {
        return Some(hint);
    }
    if name.len() > 253 {
        return Some(format!("it is {} characters long", name.len()));
    }
    for part in name.split('.') {
        if let Some(p) = dns_part_problem(part, '.') {
            return Some(p);
        }
    }
    None
}

/// Why `name` is not a DNS-1123 label (namespace names), if it is not one.
pub fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if let Some(hint) = typography_hint(name) {
        return Some(hint);
    }
    if name.len() > 63 {
        return Some(format!("it is {} characters long", name.len()));
    }
    dns_part_problem(name, '-')
}

fn dns_part_problem(part: &str, sep: char) -> Option<String> {
    if part.is_empty() {
        return Some(format!("it has an empty part between '{sep}' separators"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(if c.is_ascii_uppercase() {
            format!("'{c}' is uppercase (write '{}')", c.to_ascii_lowercase())
        } else {
            format!("{c:?} is not allowed")
        });
    }
    if part.starts_with('-') || part.ends_with('-') {
        return Some("it starts or ends with '-'".into());
    }
    None
}

/// Why `key` is not a valid Kubernetes label or annotation key (`[prefix/]name`).
pub fn qualified_name_problem(key: &str) -> Option<String> {
    if let Some(hint) = typography_hint(key) {
        return Some(hint);
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if let Some(p) = subdomain_problem(prefix) {
            return Some(format!(
                "the prefix {} is not a DNS subdomain ({p}); write e.g. example.com/rack",
                quoted(prefix)
            ));
        }
    }
    if name.is_empty() {
        return Some("the name part is empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "the name part is {} characters long (at most 63)",
            name.len()
        ));
    }
    name_chars_problem(name).map(|p| {
        format!("{p}; use letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
    })
}

/// Why `value` is not a valid Kubernetes label value, if it is not one.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if let Some(hint) = typography_hint(value) {
        return Some(hint);
    }
    if value.len() > 63 {
        return Some(format!(
            "it is {} characters long (at most 63)",
            value.len()
        ));
    }
    name_chars_problem(value).map(|p| {
        format!("{p}; use letters, digits, '-', '_' and '.', starting and ending with a letter or digit (or leave it empty)")
    })
}

fn name_chars_problem(s: &str) -> Option<String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!("{c:?} is not allowed"));
    }
    let first = s.chars().next()?;
    let last = s.chars().last()?;
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Some("it must start and end with a letter or digit".into());
    }
    None
}

/// A hint when `text` holds characters that word processors and chat tools put in place of
/// ASCII ones (curly quotes, dashes, non-breaking spaces).
pub fn typography_hint(text: &str) -> Option<String> {
    let mut found: Vec<char> = Vec::new();
    for c in text.chars() {
        if matches!(
            c,
            '\u{2018}'
                | '\u{2019}'
                | '\u{201A}'
                | '\u{201B}'
                | '\u{201C}'
                | '\u{201D}'
                | '\u{201E}'
                | '\u{2032}'
                | '\u{2033}'
                | '\u{2010}'
                | '\u{2011}'
                | '\u{2012}'
                | '\u{2013}'
                | '\u{2014}'
                | '\u{2212}'
                | '\u{00A0}'
                | '\u{202F}'
        ) && !found.contains(&c)
        {
            found.push(c);
        }
    }
    if found.is_empty() {
        return None;
    }
    let list: Vec<String> = found
        .iter()
        .map(|c| format!("{c} (U+{:04X})", *c as u32))
        .collect();
    let quotes = found
        .iter()
        .any(|c| matches!(c, '\u{2018}'..='\u{201E}' | '\u{2032}' | '\u{2033}'));
    let dashes = found
        .iter()
        .any(|c| matches!(c, '\u{2010}'..='\u{2014}' | '\u{2212}'));
    let spaces = found.iter().any(|c| matches!(c, '\u{00A0}' | '\u{202F}'));
    let mut fixes = Vec::new();
    if quotes {
        fixes.push("plain ASCII quotes (\" or ')");
    }
    if dashes {
        fixes.push("a plain '-'");
    }
    if spaces {
        fixes.push("a plain space");
    }
    Some(format!(
        "it contains typographic characters {} (often pasted from a web page or chat); \
         replace them with {}",
        list.join(", "),
        fixes.join(" and ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Handles

/// Longest handle id the allocator accepts, in bytes: room for any network name, container id
/// and interface a CNI handle is made of.
pub const MAX_HANDLE_BYTES: usize = 512;

/// Why `id` cannot name a new handle: it is empty, longer than [`MAX_HANDLE_BYTES`], or holds
/// a control character (a newline or tab would break every line the handle is printed on).
pub fn handle_id_problem(id: &str) -> Option<String> {
    let rule = format!("a handle id is printable text of at most {MAX_HANDLE_BYTES} bytes");
    if id.is_empty() {
        return Some("the handle id is empty".into());
    }
    let problem = if id.len() > MAX_HANDLE_BYTES {
        format!("is longer than {MAX_HANDLE_BYTES} bytes")
    } else {
        let c = id.chars().find(|c| c.is_control())?;
        format!("contains the control character U+{:04X}", u32::from(c))
    };
    Some(format!("the handle id {} {problem}; {rule}", quoted(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_ids_are_printable_and_bounded() {
        for good in [
            "k8s-pod-network.0123abc",
            "net.c1.eth0",
            "h\u{a0}é",
            &"h".repeat(512),
        ] {
            assert_eq!(handle_id_problem(good), None, "{good:?}");
        }
        assert_eq!(
            handle_id_problem("a\tb").unwrap(),
            "the handle id \"a\\tb\" contains the control character U+0009; a handle id is \
             printable text of at most 512 bytes"
        );
        assert!(handle_id_problem("a\u{7f}").is_some());
        assert!(handle_id_problem("a\u{85}").is_some());
        assert!(handle_id_problem(&"h".repeat(513)).is_some());
        assert_eq!(handle_id_problem("").unwrap(), "the handle id is empty");
    }

    #[test]
    fn node_name_problems_name_the_name_and_the_rule() {
        for good in [
            "kube-node-0",
            "kube-node-0.example.com",
            "0",
            &"a".repeat(253),
        ] {
            assert_eq!(node_name_problem(good), None, "{good:?}");
        }
        assert_eq!(
            node_name_problem("a/x").unwrap(),
            "node name \"a/x\" is not valid: '/' is not allowed; a node name is a DNS \
             subdomain, as in Kubernetes: use lowercase letters, digits, '-' and '.', starting \
             and ending with a letter or digit, at most 253 characters"
        );
        for bad in ["A B", "_shared", "", "-a", "a..b", "a\nb", &"a".repeat(254)] {
            assert!(node_name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(node_name_problem("Node")
            .unwrap()
            .contains("'N' is uppercase (write 'n')"));
    }

    #[test]
    fn typography_hint_names_characters() {
        assert_eq!(typography_hint("rack-0"), None);
        assert_eq!(
            typography_hint("rack\u{2013}0"),
            Some(
                "it contains typographic characters \u{2013} (U+2013) (often pasted from a web \
                 page or chat); replace them with a plain '-'"
                    .into()
            )
        );
    }
}
