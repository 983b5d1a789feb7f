//! The Calico selector language, as used by IPPool `nodeSelector` and `namespaceSelector`.
//!
//! Grammar, lowest precedence first (`&&` and `||` are left-associative):
//!
//! ```text
//! selector := <empty> | or
//! or       := and ( "||" and )*
//! and      := unary ( "&&" unary )*
//! unary    := "!" unary | primary
//! primary  := "(" or ")" | "all()" | "global()" | "has(" key ")" | key op
//! op       := "==" string | "!=" string | "in" set | "not in" set
//!           | "contains" string | "starts with" string | "ends with" string
//! set      := "{" [ string ( "," string )* ] "}"
//! string   := '"' [^"]* '"' | "'" [^']* "'"
//! ```
//!
//! Keywords are recognised by position rather than reserved, so `index`, `notable` or even `in`
//! remain usable as label keys.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::text::quoted;

/// The deepest nesting of `(` and `!` a selector may use.
///
/// Parsing and evaluation recurse once per level, so the cap is what keeps hostile input from
/// exhausting the stack. Real selectors nest a handful of levels at most.
pub const MAX_DEPTH: usize = 100;

/// A parsed selector.
///
/// Equality compares the text as written as well as its meaning, so `a=="1"` and `a == "1"`
/// are different values even though they select the same labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    source: String,
    root: Node,
}

/// A selector that failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {}: {message} at position {position}", quoted(.input))]
pub struct SelectorError {
    /// The text that was parsed.
    pub input: String,
    /// Byte offset where parsing failed.
    pub position: usize,
    /// What was expected or found.
    pub message: String,
}

impl Selector {
    /// Parses a selector expression.
    ///
    /// An empty or whitespace-only input selects everything, as in Calico.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let source = input.trim();
        if source.is_empty() {
            return Ok(Self {
                source: String::new(),
                root: Node::All,
            });
        }
        let mut parser = Parser {
            input,
            pos: 0,
            depth: 0,
        };
        let root = parser.parse_or(Context::Start)?;
        parser.skip_ws();
        if parser.pos != input.len() {
            let message = if parser.rest().starts_with(')') {
                "unbalanced ')': no matching '('".to_string()
            } else {
                format!(
                    "expected '&&', '||' or end of input, found {}",
                    parser.found()
                )
            };
            return Err(parser.error_at(parser.pos, message));
        }
        Ok(Self {
            source: source.to_string(),
            root,
        })
    }

    /// The selector that matches everything: `all()`.
    pub fn all() -> Self {
        Self {
            source: "all()".into(),
            root: Node::All,
        }
    }

    /// Whether the labels satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.root.eval(labels)
    }

    /// The selector text as written, without surrounding whitespace.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The evaluated form of a selector.
///
/// `&&` and `||` chains are stored flat rather than as nested binary nodes: a long chain then
/// costs no extra recursion when evaluated or dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    All,
    Eq(String, String),
    NotEq(String, String),
    Has(String),
    /// The set is sorted and deduplicated so membership is a binary search.
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl Node {
    fn eval(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |key: &String| labels.get(key.as_str()).map(String::as_str);
        match self {
            Node::All => true,
            Node::Eq(key, value) => get(key) == Some(value.as_str()),
            // Calico: a missing label is "not equal" and "not in" anything.
            Node::NotEq(key, value) => get(key) != Some(value.as_str()),
            Node::Has(key) => labels.contains_key(key.as_str()),
            Node::In(key, set) => get(key).is_some_and(|v| in_sorted(set, v)),
            Node::NotIn(key, set) => get(key).is_none_or(|v| !in_sorted(set, v)),
            Node::Contains(key, needle) => get(key).is_some_and(|v| v.contains(needle.as_str())),
            Node::StartsWith(key, prefix) => {
                get(key).is_some_and(|v| v.starts_with(prefix.as_str()))
            }
            Node::EndsWith(key, suffix) => get(key).is_some_and(|v| v.ends_with(suffix.as_str())),
            Node::Not(inner) => !inner.eval(labels),
            Node::And(terms) => terms.iter().all(|t| t.eval(labels)),
            Node::Or(terms) => terms.iter().any(|t| t.eval(labels)),
        }
    }
}

fn in_sorted(set: &[String], value: &str) -> bool {
    set.binary_search_by(|s| s.as_str().cmp(value)).is_ok()
}

/// Characters that may appear in a label key. All are ASCII, so a run of them can be sliced
/// by byte offsets without splitting a UTF-8 sequence.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// What preceded the expression being parsed, so errors can say where an operand is missing.
#[derive(Clone, Copy)]
enum Context {
    Start,
    After(&'static str),
}

struct Parser<'a> {
    input: &'a str,
    /// Always on a char boundary: it only advances past ASCII bytes or whole trimmed prefixes.
    pos: usize,
    depth: usize,
}

type ParseResult<T> = Result<T, SelectorError>;

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Consumes the longest run of label-key characters, which may be empty.
    fn take_word(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !is_key_char(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn error_at(&self, position: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            position,
            message: message.into(),
        }
    }

    /// Describes the text at the current position for "found ..." in error messages.
    fn found(&self) -> String {
        const LIMIT: usize = 32;
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return "end of input".into();
        };
        if let Some(op) = ["&&", "||", "==", "!="]
            .into_iter()
            .find(|op| rest.starts_with(op))
        {
            return format!("'{op}'");
        }
        if is_key_char(first) {
            let len = rest.find(|c| !is_key_char(c)).unwrap_or(rest.len());
            let word = &rest[..len.min(LIMIT)];
            let ellipsis = if len > LIMIT { "..." } else { "" };
            return format!("'{word}{ellipsis}'");
        }
        if first == '"' || first == '\'' {
            if let Some(end) = rest[1..].find(first) {
                let body = &rest[1..1 + end];
                let shown: String = body.chars().take(LIMIT).collect();
                let ellipsis = if shown.len() < body.len() { "..." } else { "" };
                return format!("string {first}{shown}{ellipsis}{first}");
            }
        }
        format!("'{}'", first.escape_debug())
    }

    /// Enters one level of `(` or `!` nesting, which started at `position`.
    fn enter(&mut self, position: usize) -> ParseResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(
                position,
                format!("selector nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn parse_or(&mut self, context: Context) -> ParseResult<Node> {
        let first = self.parse_and(context)?;
        let mut terms = Vec::new();
        loop {
            self.skip_ws();
            if !self.eat("||") {
                break;
            }
            terms.push(self.parse_and(Context::After("'||'"))?);
        }
        if terms.is_empty() {
            return Ok(first);
        }
        terms.insert(0, first);
        Ok(Node::Or(terms))
    }

    fn parse_and(&mut self, context: Context) -> ParseResult<Node> {
        let first = self.parse_unary(context)?;
        let mut terms = Vec::new();
        loop {
            self.skip_ws();
            if !self.eat("&&") {
                break;
            }
            terms.push(self.parse_unary(Context::After("'&&'"))?);
        }
        if terms.is_empty() {
            return Ok(first);
        }
        terms.insert(0, first);
        Ok(Node::And(terms))
    }

    fn parse_unary(&mut self, context: Context) -> ParseResult<Node> {
        self.skip_ws();
        let start = self.pos;
        if self.eat("!") {
            self.enter(start)?;
            let inner = self.parse_unary(Context::After("'!'"))?;
            self.leave();
            return Ok(Node::Not(Box::new(inner)));
        }
        self.parse_primary(context)
    }

    fn parse_primary(&mut self, context: Context) -> ParseResult<Node> {
        let start = self.pos;
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                self.enter(start)?;
                let inner = self.parse_or(Context::After("'('"))?;
                self.skip_ws();
                if !self.eat(")") {
                    return Err(self.error_at(
                        self.pos,
                        format!(
                            "expected '&&', '||' or ')' to close '(' at position {start}, found {}",
                            self.found()
                        ),
                    ));
                }
                self.leave();
                Ok(inner)
            }
            Some(c) if is_key_char(c) => {
                let word = self.take_word();
                if matches!(word, "has" | "all" | "global") {
                    let after_word = self.pos;
                    self.skip_ws();
                    if self.eat("(") {
                        return self.parse_call(word);
                    }
                    self.pos = after_word;
                }
                check_key(self, word, start)?;
                self.parse_operator(word)
            }
            _ => {
                let after = match context {
                    Context::Start => String::new(),
                    Context::After(token) => format!(" after {token}"),
                };
                Err(self.error_at(
                    start,
                    format!(
                        "expected a label, 'has(', 'all()', 'global()', '!' or '('{after}, found {}",
                        self.found()
                    ),
                ))
            }
        }
    }

    /// Parses the rest of `has(`, `all(` or `global(`; the opening parenthesis is consumed.
    fn parse_call(&mut self, function: &str) -> ParseResult<Node> {
        self.skip_ws();
        let node = if function == "has" {
            let key_start = self.pos;
            let key = self.take_word();
            if key.is_empty() {
                return Err(self.error_at(
                    key_start,
                    format!("expected a label inside 'has(', found {}", self.found()),
                ));
            }
            check_key(self, key, key_start)?;
            self.skip_ws();
            Node::Has(key.to_string())
        } else {
            Node::All
        };
        if !self.eat(")") {
            return Err(self.error_at(
                self.pos,
                format!(
                    "expected ')' to close '{function}(', found {}",
                    self.found()
                ),
            ));
        }
        Ok(node)
    }

    fn parse_operator(&mut self, key: &str) -> ParseResult<Node> {
        self.skip_ws();
        let op_start = self.pos;
        let key_owned = key.to_string();
        if self.eat("==") {
            return Ok(Node::Eq(key_owned, self.parse_string("'=='")?));
        }
        if self.eat("!=") {
            return Ok(Node::NotEq(key_owned, self.parse_string("'!='")?));
        }
        // Calico's lexer allows the two words of a compound keyword to run together
        // (`notin`, `startswith`), so both spellings are accepted.
        match self.take_word() {
            "in" => Ok(Node::In(key_owned, self.parse_set("'in'")?)),
            "notin" => Ok(Node::NotIn(key_owned, self.parse_set("'not in'")?)),
            "not" => {
                self.expect_word("not", "in")?;
                Ok(Node::NotIn(key_owned, self.parse_set("'not in'")?))
            }
            "contains" => Ok(Node::Contains(key_owned, self.parse_string("'contains'")?)),
            "startswith" => Ok(Node::StartsWith(
                key_owned,
                self.parse_string("'starts with'")?,
            )),
            "starts" => {
                self.expect_word("starts", "with")?;
                Ok(Node::StartsWith(
                    key_owned,
                    self.parse_string("'starts with'")?,
                ))
            }
            "endswith" => Ok(Node::EndsWith(key_owned, self.parse_string("'ends with'")?)),
            "ends" => {
                self.expect_word("ends", "with")?;
                Ok(Node::EndsWith(key_owned, self.parse_string("'ends with'")?))
            }
            _ => {
                self.pos = op_start;
                Err(self.error_at(
                    op_start,
                    format!(
                        "expected '==', '!=', 'in', 'not in', 'contains', 'starts with' or \
                         'ends with' after label {}, found {}",
                        quoted(key),
                        self.found()
                    ),
                ))
            }
        }
    }

    /// Consumes the second word of a compound keyword such as `not in`.
    fn expect_word(&mut self, first: &str, second: &str) -> ParseResult<()> {
        self.skip_ws();
        let start = self.pos;
        if self.take_word() == second {
            return Ok(());
        }
        self.pos = start;
        Err(self.error_at(
            start,
            format!(
                "expected '{second}' after '{first}', found {}",
                self.found()
            ),
        ))
    }

    fn parse_string(&mut self, after: &str) -> ParseResult<String> {
        self.skip_ws();
        let start = self.pos;
        let rest = self.rest();
        let quote = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => {
                return Err(self.error_at(
                    start,
                    format!(
                        "expected a quoted string after {after}, found {}",
                        self.found()
                    ),
                ))
            }
        };
        let Some(len) = rest[1..].find(quote) else {
            return Err(self.error_at(
                start,
                format!(
                    "unterminated string: missing closing {}",
                    quoted_char(quote)
                ),
            ));
        };
        self.pos += len + 2;
        Ok(rest[1..1 + len].to_string())
    }

    fn parse_set(&mut self, after: &str) -> ParseResult<Vec<String>> {
        self.skip_ws();
        if !self.eat("{") {
            return Err(self.error_at(
                self.pos,
                format!("expected '{{' after {after}, found {}", self.found()),
            ));
        }
        let mut items = Vec::new();
        self.skip_ws();
        if !self.eat("}") {
            let mut after_item = "'{'";
            loop {
                items.push(self.parse_string(after_item)?);
                self.skip_ws();
                if self.eat("}") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.error_at(
                        self.pos,
                        format!("expected ',' or '}}' in set, found {}", self.found()),
                    ));
                }
                after_item = "','";
            }
        }
        items.sort_unstable();
        items.dedup();
        Ok(items)
    }
}

/// Shows a quote character in the other kind of quotes, so it stays readable.
fn quoted_char(c: char) -> String {
    if c == '\'' {
        "\"'\"".into()
    } else {
        format!("'{c}'")
    }
}

/// Checks label-key syntax: an optional DNS prefix and `/`, then a name, each starting with a
/// letter or digit. `start` is the key's byte offset, for error positions.
fn check_key(parser: &Parser<'_>, key: &str, start: usize) -> ParseResult<()> {
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(parser.error_at(
            start,
            format!("label {} must start with a letter or digit", quoted(key)),
        ));
    }
    let mut slashes = key.match_indices('/');
    if let Some((slash, _)) = slashes.next() {
        if let Some((second, _)) = slashes.next() {
            return Err(parser.error_at(
                start + second,
                format!("label {} has more than one '/'", quoted(key)),
            ));
        }
        if !key[slash + 1..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(parser.error_at(
                start + slash + 1,
                format!(
                    "label {} needs a name starting with a letter or digit after '/'",
                    quoted(key)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn matches(text: &str, pairs: &[(&str, &str)]) -> bool {
        sel(text).matches(&labels(pairs))
    }

    fn err(text: &str) -> SelectorError {
        match Selector::parse(text) {
            Ok(s) => panic!("{text:?} parsed as {s:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error position and that the message contains `fragment`.
    fn assert_err(text: &str, position: usize, fragment: &str) {
        let e = err(text);
        assert_eq!(e.position, position, "position for {text:?}: {e}");
        assert!(
            e.message.contains(fragment),
            "message for {text:?} lacks {fragment:?}: {}",
            e.message
        );
        assert_eq!(e.input, text);
    }

    #[test]
    fn equality() {
        assert!(matches(r#"rack == "0""#, &[("rack", "0")]));
        assert!(!matches(r#"rack == "0""#, &[("rack", "1")]));
        assert!(!matches(r#"rack == "0""#, &[]));
        assert!(!matches(r#"rack == "0""#, &[("rack", "00")]));
        assert!(matches(r#"rack == """#, &[("rack", "")]));
    }

    #[test]
    fn inequality_is_true_for_absent_labels() {
        assert!(matches(r#"rack != "0""#, &[("rack", "1")]));
        assert!(!matches(r#"rack != "0""#, &[("rack", "0")]));
        assert!(matches(r#"rack != "0""#, &[]));
        assert!(matches(r#"rack != "0""#, &[("zone", "0")]));
    }

    #[test]
    fn has_and_not_has() {
        assert!(matches("has(rack)", &[("rack", "")]));
        assert!(!matches("has(rack)", &[("zone", "a")]));
        assert!(matches("!has(rack)", &[("zone", "a")]));
        assert!(!matches("!has(rack)", &[("rack", "x")]));
        assert!(matches("has( rack )", &[("rack", "x")]));
        assert!(matches("! has(rack)", &[]));
    }

    #[test]
    fn set_membership() {
        let s = r#"zone in {"a", "b"}"#;
        assert!(matches(s, &[("zone", "a")]));
        assert!(matches(s, &[("zone", "b")]));
        assert!(!matches(s, &[("zone", "c")]));
        assert!(!matches(s, &[]));
        assert!(!matches("zone in {}", &[("zone", "a")]));
        assert!(!matches("zone in { }", &[]));
        assert!(matches(r#"zone in {"b","a","b"}"#, &[("zone", "b")]));
    }

    #[test]
    fn set_exclusion_is_true_for_absent_labels() {
        let s = r#"zone not in {"a","b"}"#;
        assert!(!matches(s, &[("zone", "a")]));
        assert!(!matches(s, &[("zone", "b")]));
        assert!(matches(s, &[("zone", "c")]));
        assert!(matches(s, &[]));
        assert!(matches("zone not in {}", &[("zone", "a")]));
        assert!(matches("zone not in {}", &[]));
        assert!(matches(r#"zone notin {"a"}"#, &[("zone", "c")]));
        assert!(!matches("zone not\n\tin {\"a\"}", &[("zone", "a")]));
    }

    #[test]
    fn string_operators() {
        assert!(matches(r#"name contains "ck-1""#, &[("name", "rack-12")]));
        assert!(!matches(r#"name contains "ck-3""#, &[("name", "rack-12")]));
        assert!(!matches(r#"name contains """#, &[]));
        assert!(matches(r#"name contains """#, &[("name", "x")]));
        assert!(matches(
            r#"name starts with "rack""#,
            &[("name", "rack-12")]
        ));
        assert!(!matches(r#"name starts with "12""#, &[("name", "rack-12")]));
        assert!(!matches(r#"name starts with "r""#, &[]));
        assert!(matches(r#"name ends with "-12""#, &[("name", "rack-12")]));
        assert!(!matches(r#"name ends with "rack""#, &[("name", "rack-12")]));
        assert!(!matches(r#"name ends with "2""#, &[]));
        assert!(matches(r#"name startswith "r""#, &[("name", "rack")]));
        assert!(matches(r#"name endswith "k""#, &[("name", "rack")]));
        assert!(matches(r#"name contains"ac""#, &[("name", "rack")]));
    }

    #[test]
    fn negation_and_connectives() {
        assert!(matches(r#"!a == "1""#, &[("a", "2")]));
        assert!(!matches(r#"!a == "1""#, &[("a", "1")]));
        assert!(matches(r#"!!a == "1""#, &[("a", "1")]));
        assert!(matches(
            r#"a == "1" && b == "2""#,
            &[("a", "1"), ("b", "2")]
        ));
        assert!(!matches(
            r#"a == "1" && b == "2""#,
            &[("a", "1"), ("b", "3")]
        ));
        assert!(matches(r#"a == "1" || b == "2""#, &[("b", "2")]));
        assert!(!matches(r#"a == "1" || b == "2""#, &[("a", "2")]));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let s = r#"a == "1" || b == "2" && c == "3""#;
        // Read as a || (b && c): a alone is enough, b alone is not.
        assert!(matches(s, &[("a", "1")]));
        assert!(!matches(s, &[("b", "2")]));
        assert!(matches(s, &[("b", "2"), ("c", "3")]));
        let s = r#"a == "1" && b == "2" || c == "3""#;
        assert!(matches(s, &[("c", "3")]));
        assert!(!matches(s, &[("a", "1")]));
    }

    #[test]
    fn not_binds_tighter_than_and() {
        let s = r#"!a == "1" && b == "2""#;
        assert!(matches(s, &[("b", "2")]));
        assert!(!matches(s, &[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn parentheses_override_precedence() {
        let s = r#"(a == "1" || b == "2") && c == "3""#;
        assert!(!matches(s, &[("a", "1")]));
        assert!(matches(s, &[("a", "1"), ("c", "3")]));
        assert!(matches(s, &[("b", "2"), ("c", "3")]));
        let s = r#"!(a == "1" && b == "2")"#;
        assert!(matches(s, &[("a", "1")]));
        assert!(!matches(s, &[("a", "1"), ("b", "2")]));
        assert!(matches(r#"((((a == "1"))))"#, &[("a", "1")]));
    }

    #[test]
    fn quote_styles() {
        assert!(matches("rack == '0'", &[("rack", "0")]));
        assert!(matches(r#"rack == 'say "hi"'"#, &[("rack", r#"say "hi""#)]));
        assert!(matches(r#"rack == "it's""#, &[("rack", "it's")]));
        assert!(matches(r#"rack in {'a', "b"}"#, &[("rack", "b")]));
        assert!(matches(r"rack == '\'", &[("rack", "\\")]));
        assert!(matches("rack == '日本'", &[("rack", "日本")]));
    }

    #[test]
    fn whitespace_is_free_between_tokens() {
        let one = &[("rack", "0"), ("type", "test")];
        for text in [
            r#"rack=="0""#,
            r#"  rack  ==  "0"  "#,
            "\track\n==\r\n\"0\"",
            r#"rack=="0"&&type=="test""#,
            r#"(rack=="0")&&(type!="prod")"#,
            r#"rack in{"0"}"#,
            r#"rack not in{"1"}"#,
            r#"!has(zone)&&has(rack)"#,
            "rack ==\u{3000}\"0\"",
        ] {
            assert!(matches(text, one), "{text:?}");
        }
    }

    #[test]
    fn keys_with_prefixes_and_keyword_lookalikes() {
        let l = &[
            ("topology.kubernetes.io/zone", "eu-1"),
            ("projectcalico.org/name", "node-a"),
            ("index", "3"),
            ("notable", "yes"),
            ("in", "x"),
            ("has", "h"),
            ("all", "a"),
            ("my_key-1.2", "v"),
            ("9lives", "cat"),
        ];
        assert!(matches(r#"topology.kubernetes.io/zone == "eu-1""#, l));
        assert!(matches(r#"projectcalico.org/name starts with "node""#, l));
        assert!(matches(r#"index == "3""#, l));
        assert!(matches(r#"index in {"3"}"#, l));
        assert!(matches(r#"notable not in {"no"}"#, l));
        assert!(matches(r#"in == "x""#, l));
        assert!(matches(r#"in in {"x"}"#, l));
        assert!(matches(r#"has == "h" && has(has)"#, l));
        assert!(matches(r#"all != "b""#, l));
        assert!(matches(r#"my_key-1.2 == "v""#, l));
        assert!(matches(r#"9lives == "cat""#, l));
        assert!(matches(r#"has(topology.kubernetes.io/zone)"#, l));
    }

    #[test]
    fn all_global_and_empty_select_everything() {
        let none = BTreeMap::new();
        let some = labels(&[("a", "1")]);
        for text in ["all()", "all( )", " all() ", "global()", "", "   ", "\n\t"] {
            assert!(sel(text).matches(&none), "{text:?}");
            assert!(sel(text).matches(&some), "{text:?}");
        }
        assert!(Selector::all().matches(&none));
        assert!(!matches("!all()", &[]));
        assert!(matches(r#"all() && a == "1""#, &[("a", "1")]));
        assert!(!matches(r#"all() && a == "1""#, &[]));
    }

    #[test]
    fn display_and_source_keep_the_text_as_written() {
        let s = sel("  rack==\"0\" \n");
        assert_eq!(s.to_string(), "rack==\"0\"");
        assert_eq!(s.source(), "rack==\"0\"");
        assert_eq!(sel(r#"rack == "0""#).to_string(), r#"rack == "0""#);
        assert_eq!(Selector::all().to_string(), "all()");
        assert_eq!(sel("").to_string(), "");
        let parsed: Selector = r#"a == "1""#.parse().unwrap();
        assert_eq!(parsed, sel(r#"a == "1""#));
        assert_eq!(Selector::all(), sel("all()"));
    }

    #[test]
    fn error_display_format() {
        let e = err("rack x");
        assert_eq!(
            e.to_string(),
            "invalid selector \"rack x\": expected '==', '!=', 'in', 'not in', 'contains', \
             'starts with' or 'ends with' after label \"rack\", found 'x' at position 5"
        );
    }

    #[test]
    fn error_unterminated_string() {
        assert_err(
            r#"rack == "0"#,
            8,
            "unterminated string: missing closing '\"'",
        );
        assert_err(
            r#"rack == '0""#,
            8,
            r#"unterminated string: missing closing "'""#,
        );
        assert_err(r#"rack in {"a", "b}"#, 14, "unterminated string");
    }

    #[test]
    fn error_missing_operator() {
        assert_err("rack", 4, "found end of input");
        assert_err(r#"rack "0""#, 5, "after label \"rack\", found string \"0\"");
        assert_err(r#"rack = "0""#, 5, "found '='");
        assert_err(r#"rack not "0""#, 9, "expected 'in' after 'not'");
        assert_err(r#"rack not index {}"#, 9, "found 'index'");
        assert_err(r#"rack starts "r""#, 12, "expected 'with' after 'starts'");
        assert_err(r#"rack ends wit "r""#, 10, "found 'wit'");
        assert_err(r#"rack == 0"#, 8, "expected a quoted string after '=='");
        assert_err(
            r#"rack contains x"#,
            14,
            "expected a quoted string after 'contains'",
        );
    }

    #[test]
    fn error_in_without_brace() {
        assert_err(r#"rack in "a""#, 8, "expected '{' after 'in'");
        assert_err(r#"rack not in ("a")"#, 12, "expected '{' after 'not in'");
        assert_err(r#"rack in {"a" "b"}"#, 13, "expected ',' or '}'");
        assert_err(
            r#"rack in {"a",}"#,
            13,
            "expected a quoted string after ','",
        );
        assert_err(r#"rack in {"a""#, 12, "found end of input");
        assert_err(r#"rack in {a}"#, 9, "after '{', found 'a'");
    }

    #[test]
    fn error_trailing_garbage() {
        assert_err(
            r#"rack == "0" zone"#,
            12,
            "expected '&&', '||' or end of input",
        );
        assert_err(r#"rack == "0" "1""#, 12, "found string \"1\"");
        assert_err(r#"all() all()"#, 6, "found 'all'");
        assert_err(r#"rack == "0" & zone == "1""#, 12, "found '&'");
    }

    #[test]
    fn error_unbalanced_parens() {
        assert_err(r#"(rack == "0""#, 12, "to close '(' at position 0");
        assert_err(r#"((rack == "0")"#, 14, "to close '(' at position 0");
        assert_err(r#"rack == "0")"#, 11, "unbalanced ')'");
        assert_err("()", 1, "after '(', found ')'");
        assert_err(
            ")",
            0,
            "expected a label, 'has(', 'all()', 'global()', '!' or '(', found ')'",
        );
        assert_err("has(rack", 8, "expected ')' to close 'has('");
        assert_err("has()", 4, "expected a label inside 'has('");
        assert_err("all(x)", 4, "expected ')' to close 'all('");
    }

    #[test]
    fn error_missing_operand() {
        assert_err(r#"rack == "0" &&"#, 14, "after '&&', found end of input");
        assert_err(r#"rack == "0" &&  "#, 16, "after '&&', found end of input");
        assert_err(r#"rack == "0" || )"#, 15, "after '||', found ')'");
        assert_err("!", 1, "after '!', found end of input");
        assert_err(r#"&& a == "1""#, 0, "expected a label");
        assert_err(r#"== "1""#, 0, "found '=='");
    }

    #[test]
    fn error_bad_keys() {
        assert_err(r#"_rack == "0""#, 0, "must start with a letter or digit");
        assert_err(r#"-rack == "0""#, 0, "must start with a letter or digit");
        assert_err(r#"a/b/c == "0""#, 3, "more than one '/'");
        assert_err(r#"example.com/ == "0""#, 12, "after '/'");
        assert_err(r#"example.com/-x == "0""#, 12, "after '/'");
        assert_err(r#"ключ == "0""#, 0, "found 'к'");
        assert_err(r#"rack == "0" && ключ == "0""#, 15, "found 'к'");
    }

    #[test]
    fn error_positions_are_char_boundaries() {
        for text in ["日本", "a == \"x\" 日", "(é", "a in {\"é\" é}", "é == 'x'"] {
            let e = err(text);
            assert!(text.is_char_boundary(e.position), "{text:?}: {e}");
        }
    }

    #[test]
    fn nesting_up_to_the_cap_is_accepted() {
        let text = format!(
            "{}a == \"1\"{}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        assert!(sel(&text).matches(&labels(&[("a", "1")])));
        let text = format!("{}has(a)", "!".repeat(MAX_DEPTH));
        assert!(sel(&text).matches(&labels(&[("a", "1")])));
        let text = format!(
            "{}has(a){}",
            "(!".repeat(MAX_DEPTH / 2),
            ")".repeat(MAX_DEPTH / 2)
        );
        assert!(sel(&text).matches(&labels(&[("a", "1")])));
        assert!(!sel(&text).matches(&labels(&[])));
    }

    #[test]
    fn error_too_deep() {
        let text = format!(
            "{}a == \"1\"{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_err(&text, MAX_DEPTH, "nested deeper than 100 levels");
        let text = format!("{}has(a)", "!".repeat(MAX_DEPTH + 1));
        assert_err(&text, MAX_DEPTH, "nested deeper");
        let text = format!("{}has(a)", "(!".repeat(MAX_DEPTH));
        assert_err(&text, MAX_DEPTH, "nested deeper");
        assert_err(&"(".repeat(1 << 20), MAX_DEPTH, "nested deeper");
    }

    #[test]
    fn long_flat_chains_do_not_recurse() {
        let n = 100_000;
        let text = vec!["has(a)"; n].join(" && ");
        let s = sel(&text);
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[])));
        let text = vec!["has(b)"; n].join(" || ") + " || has(a)";
        assert!(sel(&text).matches(&labels(&[("a", "")])));
    }

    #[test]
    fn keyword_operators_need_a_boundary() {
        assert_err(r#"rack index {"a"}"#, 5, "found 'index'");
        assert_err(r#"rack containsx "a""#, 5, "found 'containsx'");
        assert_err(r#"rack startswith_ "a""#, 5, "found 'startswith_'");
    }
}
