//! Reading manifest files: multi-document YAML or JSON in, validated resources out.
//!
//! YAML input is split into documents at `---` / `...` marker lines (comments and empty
//! documents are skipped) and each document is parsed on its own, so a syntax error in one
//! document does not hide the problems of the others. JSON input is one object, a stream of
//! objects, or an array of them; a top-level array (YAML or JSON) counts each element as a
//! document. Lists (`kind: List`, `IPPoolList`, ...) expand into their items.
//!
//! Every problem of every document is reported, one per line, naming the source, the document
//! number (1-based), the line the document starts on, the resource's kind and name when known,
//! the field and the reason:
//!
//! ```text
//! pools.yaml: document 2 (line 14, IPPool "internal-pool"): spec.blockSize: 33 is outside 20-32 for IPv4
//! ```

use std::fmt;

use serde_json::Value;
use tessera_core::decode::decode_each;
use tessera_core::json::StrictValue;
use tessera_core::resources::{Kind, Resource};
use tessera_core::text::quoted;
use tessera_core::validate::error::FieldError;
use tessera_core::validate::validate;

/// One problem in one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based number of the document; `None` for problems of the input as a whole.
    pub document: Option<usize>,
    /// 1-based line where the document starts.
    pub line: Option<usize>,
    /// The resource's kind, when known.
    pub kind: Option<Kind>,
    /// The resource's name, when known.
    pub name: Option<String>,
    /// The field (empty for the document as a whole) and what is wrong.
    pub error: FieldError,
}

/// Every problem found in one input; the input yields no resources at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// File name, or `stdin`.
    pub source: String,
    /// The problems, in document order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: ", self.source)?;
            if let Some(n) = p.document {
                write!(f, "document {n}")?;
                let mut context = Vec::new();
                if let Some(line) = p.line {
                    context.push(format!("line {line}"));
                }
                if let Some(kind) = p.kind {
                    match p.name.as_deref() {
                        Some(name) if !name.is_empty() => {
                            context.push(format!("{kind} {}", quoted(name)))
                        }
                        _ => context.push(format!("{kind} <unnamed>")),
                    }
                }
                if !context.is_empty() {
                    write!(f, " ({})", context.join(", "))?;
                }
                f.write_str(": ")?;
            }
            write!(f, "{}", p.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// Reads every resource in `text` (from `source`, a file name or `stdin`), decoded and
/// validated, with Calico's defaults filled in. Either every document is good and all
/// resources come back, or the error lists every problem of every document.
pub fn read_manifests(text: &str, source: &str) -> Result<Vec<Resource>, ManifestError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (docs, mut problems) = if looks_like_json(text) {
        parse_json(text)
    } else {
        parse_yaml(text)
    };
    let mut resources = Vec::new();
    for doc in docs {
        for decoded in decode_each(doc.value) {
            let prefix = decoded.item.map(|i| format!("items[{i}]"));
            let problem = |kind, name, error: FieldError| Problem {
                document: Some(doc.number),
                line: Some(doc.line),
                kind,
                name,
                error,
            };
            match decoded.result {
                Ok(resource) => match validate(resource) {
                    Ok(valid) => resources.push(valid),
                    Err(e) => {
                        for fe in e.errors {
                            let fe = match &prefix {
                                Some(p) => fe.prefixed(p),
                                None => fe,
                            };
                            problems.push(problem(Some(e.kind), Some(e.name.clone()), fe));
                        }
                    }
                },
                Err(e) => {
                    for fe in e.errors {
                        problems.push(problem(e.kind, e.name.clone(), fe));
                    }
                }
            }
        }
    }
    if problems.is_empty() && resources.is_empty() {
        problems.push(Problem {
            document: None,
            line: None,
            kind: None,
            name: None,
            error: FieldError::new(
                "",
                "no resources found (the input is empty or holds only comments); pass a file \
                 with at least one manifest such as an IPPool",
            ),
        });
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(ManifestError {
            source: source.to_string(),
            problems,
        })
    }
}

/// One parsed document.
struct Doc {
    number: usize,
    line: usize,
    value: Value,
}

fn syntax_problem(number: usize, line: usize, reason: String) -> Problem {
    Problem {
        document: Some(number),
        line: Some(line),
        kind: None,
        name: None,
        error: FieldError::new("", reason),
    }
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{' | '['))
}

// ---------------------------------------------------------------------------------------------
// YAML

/// A document's text and where it sits in the file.
struct Chunk {
    /// Line of the document's first content (not blank, comment or directive).
    line: usize,
    /// Lines of the file before the chunk's first line: added to the parser's line numbers
    /// (padding the text with that many newlines instead would make the input quadratic).
    lines_before: usize,
    text: String,
    /// Lines of top-level sequence entries (`- ...` at column 0).
    entry_lines: Vec<usize>,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Splits YAML text into documents at `---` and `...` marker lines.
fn split_yaml(text: &str) -> Vec<Chunk> {
    struct Building {
        first_line: usize,
        lines: Vec<String>,
        content_line: Option<usize>,
        directive: bool,
        entry_lines: Vec<usize>,
    }
    impl Building {
        fn new(first_line: usize) -> Self {
            Self {
                first_line,
                lines: Vec::new(),
                content_line: None,
                directive: false,
                entry_lines: Vec::new(),
            }
        }
        fn push(&mut self, n: usize, line: String) {
            let t = line.trim_start();
            if self.content_line.is_none() {
                if line.starts_with('%') {
                    self.directive = true;
                } else if !t.is_empty() && !t.starts_with('#') {
                    self.content_line = Some(n);
                }
            }
            if is_marker(&line, "-") {
                self.entry_lines.push(n);
            }
            self.lines.push(line);
        }
        fn finish(self, out: &mut Vec<Chunk>) {
            if let Some(line) = self.content_line {
                let mut text = self.lines.join("\n");
                text.push('\n');
                out.push(Chunk {
                    line,
                    lines_before: self.first_line - 1,
                    text,
                    entry_lines: self.entry_lines,
                });
            }
        }
    }

    let mut out = Vec::new();
    let mut cur = Building::new(1);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if is_marker(line, "---") {
            if cur.directive && cur.content_line.is_none() {
                // `%YAML` / `%TAG` directives belong to the document this marker starts.
                cur.lines.push(line.to_string());
                cur.content_line = line[3..]
                    .trim_start()
                    .chars()
                    .next()
                    .filter(|c| *c != '#')
                    .map(|_| n);
                continue;
            }
            std::mem::replace(&mut cur, Building::new(n)).finish(&mut out);
            cur.push(n, format!("   {}", &line[3..]));
        } else if is_marker(line, "...") {
            std::mem::replace(&mut cur, Building::new(n + 1)).finish(&mut out);
        } else {
            cur.push(n, line.to_string());
        }
    }
    cur.finish(&mut out);
    out
}

fn parse_yaml(text: &str) -> (Vec<Doc>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut number = 0;
    for chunk in split_yaml(text) {
        match serde_saphyr::from_str::<Value>(&chunk.text) {
            Ok(Value::Null) => {}
            Ok(Value::Array(items)) => {
                let lines = if chunk.entry_lines.len() == items.len() {
                    chunk.entry_lines.clone()
                } else {
                    vec![chunk.line; items.len()]
                };
                for (value, line) in items.into_iter().zip(lines) {
                    number += 1;
                    docs.push(Doc {
                        number,
                        line,
                        value,
                    });
                }
            }
            Ok(value) => {
                number += 1;
                docs.push(Doc {
                    number,
                    line: chunk.line,
                    value,
                });
            }
            Err(e) => {
                number += 1;
                problems.push(syntax_problem(
                    number,
                    chunk.line,
                    yaml_message(&e, chunk.lines_before),
                ));
            }
        }
    }
    (docs, problems)
}

/// The parser's message for a chunk, its line numbers made file line numbers.
fn yaml_message(e: &serde_saphyr::Error, lines_before: usize) -> String {
    let e = e.without_snippet();
    let mut msg = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    if let Some(at) = msg.rfind(" at line ") {
        msg.truncate(at);
    }
    if let Some(at) = msg.find(", set DuplicateKeyPolicy") {
        msg.truncate(at);
    }
    if msg.contains("duplicate mapping key") {
        msg.push_str("; keep only one of them");
    }
    if msg.contains("tabs") {
        msg.push_str("; indent with spaces");
    }
    match e.location() {
        Some(loc) if loc.line() > 0 => format!(
            "YAML syntax error at line {}, column {}: {msg}",
            lines_before as u64 + loc.line(),
            loc.column()
        ),
        _ => format!("YAML syntax error: {msg}"),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// Line numbers of byte offsets, for offsets asked in increasing order: each byte of the text
/// is counted once, however many documents it holds.
struct LineCounter<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            offset: 0,
            line: 1,
        }
    }

    /// The 1-based line of `offset`.
    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        if offset < self.offset {
            *self = Self::new(self.text);
        }
        let bytes = &self.text.as_bytes()[self.offset..offset];
        self.line += bytes.iter().filter(|b| **b == b'\n').count();
        self.offset = offset;
        self.line
    }
}

fn skip_whitespace(text: &str, mut offset: usize) -> usize {
    let bytes = text.as_bytes();
    while offset < bytes.len() && bytes[offset].is_ascii_whitespace() {
        offset += 1;
    }
    offset
}

/// Byte offsets (relative to `text`, which starts with `[`) of the array's elements.
fn json_array_element_offsets(text: &str) -> Vec<usize> {
    let mut offsets = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut expect) = (0usize, false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if depth == 1 && expect && !matches!(b, b']' | b',') {
            offsets.push(i);
            expect = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 1 {
                    expect = true;
                }
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    offsets
}

fn parse_json(text: &str) -> (Vec<Doc>, Vec<Problem>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut number = 0;
    let mut lines = LineCounter::new(text);
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<StrictValue>();
    loop {
        let start = skip_whitespace(text, stream.byte_offset());
        match stream.next() {
            None => break,
            Some(Ok(StrictValue(Value::Array(items)))) => {
                let offsets = json_array_element_offsets(&text[start..]);
                for (i, value) in items.into_iter().enumerate() {
                    number += 1;
                    let at = offsets.get(i).map_or(start, |o| start + o);
                    docs.push(Doc {
                        number,
                        line: lines.line_at(at),
                        value,
                    });
                }
            }
            Some(Ok(StrictValue(value))) => {
                number += 1;
                docs.push(Doc {
                    number,
                    line: lines.line_at(start),
                    value,
                });
            }
            Some(Err(e)) => {
                number += 1;
                let mut msg = e.to_string();
                if let Some(at) = msg.rfind(" at line ") {
                    msg.truncate(at);
                }
                problems.push(syntax_problem(
                    number,
                    lines.line_at(start),
                    format!(
                        "JSON syntax error at line {}, column {}: {msg}",
                        e.line(),
                        e.column()
                    ),
                ));
                break;
            }
        }
    }
    (docs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::resources::calico::IPPool;

    fn pools(text: &str) -> Vec<IPPool> {
        read_manifests(text, "pools.yaml")
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Resource::IPPool(p) => p,
                other => panic!("not a pool: {other:?}"),
            })
            .collect()
    }

    fn error(text: &str, source: &str) -> String {
        read_manifests(text, source).unwrap_err().to_string()
    }

    /// Rack pools: one pool per rack, two `calicoctl create` heredocs joined into one file.
    const RACK_POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-0-ippool
spec:
  cidr: 192.168.0.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == \"0\"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-1-ippool
spec:
  cidr: 192.168.1.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == \"1\"
";

    /// Namespace pools: pools.yaml with two small pools for two namespaces.
    const NAMESPACE_POOLS: &str = include_str!("../../../examples/namespace-pools.yaml");

    /// Pool migration: the extra pool, the temporary pool and the recreated default pool.
    const MIGRATION_POOLS: &str = "\
# Extra pool for when the default one runs out.
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: extra-ippool
spec:
  cidr: 192.168.0.0/20
  blockSize: 26
  vxlanMode: Always
  natOutgoing: true
  nodeSelector: type==\"test\"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: temporary-pool
spec:
  cidr: 10.0.0.0/16
  ipipMode: Always
  natOutgoing: true
---
---
# nothing in this one
---

apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  blockSize: 27   # change blockSize from 26 to 27
  cidr: 192.0.0.0/16
  ipipMode: Always
  natOutgoing: true
";

    /// Pool migration: `calicoctl get ippools default-ipv4-ippool -o yaml` on a CRD-backed cluster.
    const CRD_OUTPUT: &str = "\
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  annotations:
    projectcalico.org/metadata: '{\"uid\":\"637e72f1-d4ff-433c-92c5-cafe3aef5753\",\"creationTimestamp\":\"2022-05-12T14:34:03Z\"}'
  creationTimestamp: \"2022-05-12T14:34:03Z\"
  generation: 1
  name: default-ipv4-pool
  resourceVersion: \"689\"
  uid: c94af437-5a37-46c8-b521-641724b86ff8
spec:
  allowedUses:
    - Workload
    - Tunnel
  blockSize: 26
  cidr: 10.244.0.0/18
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Always
";

    #[test]
    fn rack_pools_read_as_two_documents() {
        let p = pools(RACK_POOLS);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].metadata.name, "rack-0-ippool");
        assert_eq!(p[0].spec.node_selector.as_deref(), Some("rack == \"0\""));
        assert_eq!(p[1].spec.cidr, "192.168.1.0/24");
        assert_eq!(p[1].spec.block_size, Some(26));
    }

    #[test]
    fn namespace_pools_with_block_size_29() {
        let p = pools(NAMESPACE_POOLS);
        assert_eq!(
            p.iter().map(|p| p.spec.block_size).collect::<Vec<_>>(),
            [Some(29), Some(29)]
        );
        assert_eq!(p[1].metadata.name, "internal-pool");
    }

    #[test]
    fn migration_pools_skip_empty_documents_and_comments() {
        let p = pools(MIGRATION_POOLS);
        let names: Vec<_> = p.iter().map(|p| p.metadata.name.as_str()).collect();
        assert_eq!(
            names,
            ["extra-ippool", "temporary-pool", "default-ipv4-ippool"]
        );
        assert_eq!(p[2].spec.block_size, Some(27));
    }

    #[test]
    fn crd_output_applies_unchanged() {
        let p = pools(CRD_OUTPUT);
        assert_eq!(p[0].spec.cidr, "10.244.0.0/18");
        assert_eq!(p[0].metadata.resource_version.as_deref(), Some("689"));
    }

    #[test]
    fn error_names_source_document_line_kind_name_field() {
        let text = NAMESPACE_POOLS.replace(
            "192.169.0.0/24\n  blockSize: 29",
            "192.169.0.0/24\n  blockSize: 33",
        );
        assert_eq!(
            error(&text, "pools.yaml"),
            "pools.yaml: document 2 (line 17, IPPool \"internal-pool\"): spec.blockSize: 33 is \
             outside 20-32 for IPv4"
        );
    }

    #[test]
    fn every_problem_of_every_document_is_reported() {
        let text = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: a
spec:
  cidr: 10.0.0.1/16
  blockSzie: 26
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ok
spec:
  cidr: 10.1.0.0/16
---
apiVersion: projectcalico.org/v3
kind: IPPol
metadata:
  name: c
";
        assert_eq!(
            error(text, "bad.yaml"),
            "bad.yaml: document 1 (line 1, IPPool \"a\"): spec.blockSzie: unknown field; did you \
             mean blockSize? IPPool spec accepts cidr, blockSize, ipipMode, vxlanMode, \
             natOutgoing, disabled, disableBGPExport, nodeSelector, namespaceSelector, \
             allowedUses, assignmentMode\n\
             bad.yaml: document 3 (line 16): kind: \"IPPol\" is not supported; did you mean \
             IPPool? Tessera accepts IPPool, IPReservation, IPAMConfiguration, Node, \
             Namespace, SpiderIPPool, SpiderSubnet and SpiderReservedIP, and lists of them \
             (List, IPPoolList, ...)"
        );
        // Once the unknown field is fixed, the validation problem shows.
        let fixed = text.replace("  blockSzie: 26\n", "");
        let msg = error(&fixed, "bad.yaml");
        assert!(
            msg.starts_with(
                "bad.yaml: document 1 (line 1, IPPool \"a\"): spec.cidr: \"10.0.0.1/16\" is not a \
                 network address (host bits set); use 10.0.0.0/16\n"
            ),
            "{msg}"
        );
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let text = format!("{RACK_POOLS}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n    labels: {{}}\n");
        assert_eq!(
            error(&text, "stdin"),
            "stdin: document 3 (line 21): YAML syntax error at line 25, column 11: mapping \
             values are not allowed in this context"
        );
        let msg = error("kind: Namespace\nkind: Node\n", "dup.yaml");
        assert_eq!(
            msg,
            "dup.yaml: document 1 (line 1): YAML syntax error at line 2, column 1: duplicate \
             mapping key `kind` is not allowed here; keep only one of them"
        );
        let msg = error(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n\tname: a\n",
            "tab.yaml",
        );
        assert!(msg.ends_with("; indent with spaces"), "{msg}");
    }

    #[test]
    fn empty_input_is_an_error() {
        for text in ["", "# only a comment\n", "---\n---\n", "\n\n"] {
            assert_eq!(
                error(text, "empty.yaml"),
                "empty.yaml: no resources found (the input is empty or holds only comments); \
                 pass a file with at least one manifest such as an IPPool"
            );
        }
    }

    #[test]
    fn typographic_quotes_are_explained() {
        let text = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: \u{2018}rack-0-ippool\u{2019}
spec:
  cidr: 192.168.0.0/24
  nodeSelector: rack == \u{201C}0\u{201D}
  \u{201C}natOutgoing\u{201D}: true
";
        // Decoding stops at the unknown key; the other problems show once it is fixed.
        assert_eq!(
            error(text, "pools.yaml"),
            "pools.yaml: document 1 (line 1, IPPool \"\u{2018}rack-0-ippool\u{2019}\"): \
             spec.\u{201C}natOutgoing\u{201D}: unknown field; did you mean natOutgoing? It \
             contains typographic characters \u{201C} (U+201C), \u{201D} (U+201D) (often pasted \
             from a web page or chat); replace them with plain ASCII quotes (\" or '). IPPool \
             spec accepts cidr, blockSize, ipipMode, vxlanMode, natOutgoing, disabled, \
             disableBGPExport, nodeSelector, namespaceSelector, allowedUses, assignmentMode"
        );
        // Once the key is fixed, the name and the selector are reported together.
        let msg = error(
            &text.replace("\u{201C}natOutgoing\u{201D}", "natOutgoing"),
            "pools.yaml",
        );
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert_eq!(
            lines[0],
            "pools.yaml: document 1 (line 1, IPPool \"\u{2018}rack-0-ippool\u{2019}\"): \
             metadata.name: \"\u{2018}rack-0-ippool\u{2019}\" is not a valid name: it contains \
             typographic characters \u{2018} (U+2018), \u{2019} (U+2019) (often pasted from a \
             web page or chat); replace them with plain ASCII quotes (\" or '); use lowercase \
             letters, digits, '-' and '.', starting and ending with a letter or digit, at most \
             253 characters"
        );
        assert!(lines[1]
            .contains("spec.nodeSelector: \"rack == \u{201C}0\u{201D}\" is not a valid selector"));
    }

    #[test]
    fn annotation_typo_in_a_namespace_manifest() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata:
  name: external-ns
  annotations:
    cni.projectcalico.org/ipv4pools: \u{2018}[\u{201C}external-pool\"]\u{2019}
";
        let msg = error(text, "ns.yaml");
        assert!(
            msg.starts_with(
                "ns.yaml: document 1 (line 1, Namespace \"external-ns\"): \
                 metadata.annotations.cni.projectcalico.org/ipv4pools:"
            ),
            "{msg}"
        );
        assert!(msg.ends_with("write [\"external-pool\"]"), "{msg}");
    }

    #[test]
    fn json_object_array_stream_and_list() {
        let one = r#"{"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}}"#;
        assert_eq!(pools(one).len(), 1);

        let array = r#"[
  {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
   "metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}},
  {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
   "metadata": {"name": "b"}, "spec": {"cidr": "10.1.0.0/16", "blockSize": 40}}
]"#;
        assert_eq!(
            error(array, "pools.json"),
            "pools.json: document 2 (line 4, IPPool \"b\"): spec.blockSize: 40 is outside 20-32 \
             for IPv4"
        );
        assert_eq!(pools(&array.replace(", \"blockSize\": 40", "")).len(), 2);

        let stream = format!(
            "{one}\n{}",
            one.replace("\"a\"", "\"b\"").replace("10.0.", "10.2.")
        );
        assert_eq!(pools(&stream).len(), 2);

        let list = r#"{"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "items": [
            {"metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}},
            {"metadata": {"name": "b"}, "spec": {"cidr": "10.1.0.1/16"}}]}"#;
        assert_eq!(
            error(list, "list.json"),
            "list.json: document 1 (line 1, IPPool \"b\"): items[1].spec.cidr: \"10.1.0.1/16\" is \
             not a network address (host bits set); use 10.1.0.0/16"
        );
    }

    #[test]
    fn json_syntax_errors_name_the_line() {
        let text =
            "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"a\",}}";
        assert_eq!(
            error(text, "ns.json"),
            "ns.json: document 1 (line 1): JSON syntax error at line 2, column 27: trailing comma"
        );
    }

    #[test]
    fn json_duplicate_keys_are_refused_like_yaml_ones() {
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"a\"},\n \"kind\": \"Node\"}";
        assert_eq!(
            error(text, "dup.json"),
            "dup.json: document 1 (line 1): JSON syntax error at line 3, column 7: duplicate key \
             \"kind\" in an object; keep only one of them"
        );
        let nested = "[{\"apiVersion\": \"projectcalico.org/v3\", \"kind\": \"IPPool\",\n  \
                      \"metadata\": {\"name\": \"a\"},\n  \"spec\": {\"cidr\": \"10.0.0.0/16\", \
                      \"cidr\": \"10.1.0.0/16\"}}]";
        assert_eq!(
            error(nested, "dup.json"),
            "dup.json: document 1 (line 1): JSON syntax error at line 3, column 40: duplicate \
             key \"cidr\" in an object; keep only one of them"
        );
    }

    #[test]
    fn yaml_lists_and_inline_documents() {
        let text = "\
--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
--- # a list of two
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: kube-node-0, labels: {rack: \"0\"}}
- apiVersion: v1
  kind: Node
  metadata: {name: kube-node-1, labels: {rack: 1}}
...
";
        assert_eq!(
            error(text, "mixed.yaml"),
            "mixed.yaml: document 2 (line 3, Node \"kube-node-1\"): items[1].metadata.labels.rack: \
             expected a string, got the number 1; quote it: \"1\""
        );
        let ok = read_manifests(&text.replace("rack: 1}", "rack: \"1\"}"), "mixed.yaml").unwrap();
        assert_eq!(
            ok.iter().map(|r| (r.kind(), r.name())).collect::<Vec<_>>(),
            [
                (Kind::Namespace, "a"),
                (Kind::Node, "kube-node-0"),
                (Kind::Node, "kube-node-1")
            ]
        );
    }

    #[test]
    fn top_level_yaml_sequence_counts_entries_as_documents() {
        let text = "\
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: v1
  kind: Namespace
  metadata: {name: B}
";
        assert!(error(text, "s.yaml")
            .starts_with("s.yaml: document 2 (line 4, Namespace \"B\"): metadata.name:"));
    }

    #[test]
    fn crlf_line_endings() {
        let text = RACK_POOLS.replace('\n', "\r\n");
        assert_eq!(pools(&text).len(), 2);
    }

    #[test]
    fn directives_stay_with_their_document() {
        let text = "%YAML 1.2\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";
        let r = read_manifests(text, "d.yaml").unwrap();
        assert_eq!(r[0].name(), "a");
    }

    #[test]
    fn mangled_input_never_panics() {
        let json = r#"[{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}}]}]"#;
        for text in [RACK_POOLS, NAMESPACE_POOLS, CRD_OUTPUT, json] {
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            for &at in &boundaries {
                let next = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                let _ = read_manifests(&text[..at], "cut");
                let _ = read_manifests(&format!("{}{}", &text[..at], &text[next..]), "del");
                for insert in [
                    ":", "-", "\"", "\t", "{", "[", "\u{201C}", "\n---\n", "#", "%",
                ] {
                    let _ =
                        read_manifests(&format!("{}{insert}{}", &text[..at], &text[at..]), "ins");
                }
            }
        }
    }

    #[test]
    fn json_element_offsets() {
        let text = r#"[ {"a": "]"}, [1, 2],"x" , 3 ]"#;
        let offs = json_array_element_offsets(text);
        let starts: Vec<char> = offs
            .iter()
            .map(|o| text[*o..].chars().next().unwrap())
            .collect();
        assert_eq!(starts, ['{', '[', '"', '3']);
    }
}
