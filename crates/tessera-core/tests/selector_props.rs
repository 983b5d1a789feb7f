//! Property tests for the selector language: the parser must never panic, and parsing a
//! rendered expression must select exactly what the expression means.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tessera_core::selector::{Selector, MAX_DEPTH};

type Labels = BTreeMap<String, String>;

/// A selector expression, independent of the parser's own representation, so the two can be
/// checked against each other.
#[derive(Clone, Debug)]
enum Expr {
    All,
    Global,
    Eq(String, String),
    NotEq(String, String),
    Has(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    /// Redundant parentheses, to exercise them where precedence does not need them.
    Paren(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// The meaning of an expression, written straight from the Calico documentation.
fn eval(expr: &Expr, labels: &Labels) -> bool {
    let get = |k: &String| labels.get(k);
    match expr {
        Expr::All | Expr::Global => true,
        Expr::Eq(k, v) => get(k) == Some(v),
        Expr::NotEq(k, v) => get(k) != Some(v),
        Expr::Has(k) => get(k).is_some(),
        Expr::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
        Expr::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
        Expr::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
        Expr::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
        Expr::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
        Expr::Not(e) => !eval(e, labels),
        Expr::Paren(e) => eval(e, labels),
        Expr::And(l, r) => eval(l, labels) && eval(r, labels),
        Expr::Or(l, r) => eval(l, labels) || eval(r, labels),
    }
}

/// A small deterministic generator for rendering choices (whitespace, quote style), so one
/// proptest seed describes the whole rendering and shrinks with it.
struct Choices(u64);

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64; the seed is forced odd so it never sticks at zero.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// Optional whitespace between tokens.
    fn ws(&mut self) -> &'static str {
        ["", "", " ", "  ", "\t", "\n", " \r\n "][self.next(7) as usize]
    }

    /// Whitespace where at least one character is needed to end a label or keyword.
    fn ws1(&mut self) -> &'static str {
        [" ", " ", "  ", "\t", "\n"][self.next(5) as usize]
    }

    fn quote(&mut self, value: &str) -> String {
        let q = if value.contains('"') {
            '\''
        } else if value.contains('\'') || self.next(2) == 0 {
            '"'
        } else {
            '\''
        };
        format!("{q}{value}{q}")
    }
}

/// Binding strength of the context an expression is rendered into.
const OR: u8 = 0;
const AND: u8 = 1;
const UNARY: u8 = 2;

fn render(expr: &Expr, seed: u64) -> String {
    let mut choices = Choices(seed | 1);
    let mut out = String::new();
    out.push_str(choices.ws());
    render_into(expr, OR, &mut choices, &mut out);
    out.push_str(choices.ws());
    out
}

fn render_into(expr: &Expr, context: u8, c: &mut Choices, out: &mut String) {
    let string_op = |out: &mut String, c: &mut Choices, key: &str, op: &str, value: &str| {
        out.push_str(key);
        out.push_str(c.ws1());
        out.push_str(op);
        out.push_str(c.ws());
        out.push_str(&c.quote(value));
    };
    let set_op = |out: &mut String, c: &mut Choices, key: &str, op: &str, set: &[String]| {
        out.push_str(key);
        out.push_str(c.ws1());
        out.push_str(op);
        out.push_str(c.ws());
        out.push('{');
        for (i, v) in set.iter().enumerate() {
            out.push_str(c.ws());
            if i > 0 {
                out.push(',');
                out.push_str(c.ws());
            }
            out.push_str(&c.quote(v));
        }
        out.push_str(c.ws());
        out.push('}');
    };
    match expr {
        Expr::All => {
            out.push_str("all(");
            out.push_str(c.ws());
            out.push(')');
        }
        Expr::Global => out.push_str("global()"),
        Expr::Eq(k, v) | Expr::NotEq(k, v) => {
            out.push_str(k);
            out.push_str(c.ws());
            out.push_str(if matches!(expr, Expr::Eq(..)) {
                "=="
            } else {
                "!="
            });
            out.push_str(c.ws());
            out.push_str(&c.quote(v));
        }
        Expr::Has(k) => {
            out.push_str("has(");
            out.push_str(c.ws());
            out.push_str(k);
            out.push_str(c.ws());
            out.push(')');
        }
        Expr::In(k, set) => set_op(out, c, k, "in", set),
        Expr::NotIn(k, set) => {
            let op = ["not in", "not  in", "notin", "not\tin"][c.next(4) as usize];
            set_op(out, c, k, op, set)
        }
        Expr::Contains(k, v) => string_op(out, c, k, "contains", v),
        Expr::StartsWith(k, v) => {
            let op = ["starts with", "startswith", "starts \n with"][c.next(3) as usize];
            string_op(out, c, k, op, v)
        }
        Expr::EndsWith(k, v) => {
            let op = ["ends with", "endswith", "ends  with"][c.next(3) as usize];
            string_op(out, c, k, op, v)
        }
        Expr::Not(e) => {
            out.push('!');
            out.push_str(c.ws());
            render_into(e, UNARY, c, out);
        }
        Expr::Paren(e) => paren(e, c, out),
        Expr::And(l, r) | Expr::Or(l, r) => {
            let (prec, op) = match expr {
                Expr::And(..) => (AND, "&&"),
                _ => (OR, "||"),
            };
            if context > prec {
                paren(expr, c, out);
                return;
            }
            render_into(l, prec, c, out);
            out.push_str(c.ws());
            out.push_str(op);
            out.push_str(c.ws());
            // Right operands bind one level tighter so right-nested trees keep their shape.
            render_into(r, prec + 1, c, out);
        }
    }
}

fn paren(expr: &Expr, c: &mut Choices, out: &mut String) {
    out.push('(');
    out.push_str(c.ws());
    render_into(expr, OR, c, out);
    out.push_str(c.ws());
    out.push(')');
}

/// Keys include words the parser also uses as keywords, which must still work as keys.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "c",
        "in",
        "not",
        "has",
        "all",
        "global",
        "contains",
        "starts",
        "with",
        "index",
        "notable",
        "topology.kubernetes.io/zone",
        "x-y_z.9",
    ])
    .prop_map(str::to_string)
}

/// Short values over a tiny alphabet, so label maps and selectors often agree. A value cannot
/// hold both quote kinds, since the language has no escapes.
fn value() -> impl Strategy<Value = String> {
    "[ab'\" é]{0,3}".prop_map(|v| {
        if v.contains('"') {
            v.replace('\'', "b")
        } else {
            v
        }
    })
}

fn set() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(value(), 0..4)
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        (key(), value()).prop_map(|(k, v)| Expr::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::NotEq(k, v)),
        key().prop_map(Expr::Has),
        (key(), set()).prop_map(|(k, s)| Expr::In(k, s)),
        (key(), set()).prop_map(|(k, s)| Expr::NotIn(k, s)),
        (key(), value()).prop_map(|(k, v)| Expr::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::EndsWith(k, v)),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(6, 48, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Paren(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Expr::And(Box::new(l), Box::new(r))),
            (inner.clone(), inner).prop_map(|(l, r)| Expr::Or(Box::new(l), Box::new(r))),
        ]
    })
}

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(key(), value(), 0..6)
}

fn label_maps() -> impl Strategy<Value = Vec<Labels>> {
    prop::collection::vec(labels(), 1..8)
}

/// Fragments of the selector language, so random concatenations get past the first token and
/// reach deep into the parser.
fn soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "(",
        ")",
        "!",
        "&&",
        "||",
        "&",
        "|",
        "=",
        "==",
        "!=",
        "has(",
        "all()",
        "global()",
        "a",
        "topology.kubernetes.io/zone",
        "_",
        "/",
        "-",
        " in ",
        "in",
        " not in ",
        "not",
        " contains ",
        " starts with ",
        " ends with ",
        "{",
        "}",
        ",",
        "\"x\"",
        "'y'",
        "\"",
        "'",
        " ",
        "\t",
        "é",
        "日",
        "\u{0}",
    ]);
    let body = prop::collection::vec(token, 0..300).prop_map(|t| t.concat());
    let opener = prop::sample::select(vec!["(", "!", "(!", "!(", "( "]);
    (opener, 0..(3 * MAX_DEPTH), body).prop_map(|(o, n, b)| o.repeat(n) + &b)
}

/// Checks the invariants every parse outcome must hold.
fn check_outcome(input: &str, labels: &Labels) {
    match Selector::parse(input) {
        Ok(selector) => {
            let _ = selector.matches(labels);
            assert_eq!(selector.source(), input.trim());
            let again = Selector::parse(&selector.to_string()).expect("display output reparses");
            assert_eq!(again, selector);
        }
        Err(e) => {
            assert_eq!(e.input, input);
            assert!(e.position <= input.len(), "{e}");
            assert!(input.is_char_boundary(e.position), "{e}");
            assert!(!e.message.is_empty());
            assert!(e
                .to_string()
                .ends_with(&format!("at position {}", e.position)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(input in any::<String>(), labels in labels()) {
        check_outcome(&input, &labels);
    }

    #[test]
    fn parse_never_panics_on_token_soup(input in soup(), labels in labels()) {
        check_outcome(&input, &labels);
    }

    #[test]
    fn parse_never_panics_on_mutated_selectors(
        e in expr(),
        seed in any::<u64>(),
        cut in any::<prop::sample::Index>(),
        insert in any::<prop::sample::Index>(),
        extra in "\\PC{0,3}",
        labels in labels(),
    ) {
        // Truncating and splicing valid text gives inputs that fail late in the parse.
        let text = render(&e, seed);
        let mut boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        boundaries.push(text.len());
        let truncated = &text[..boundaries[cut.index(boundaries.len())]];
        check_outcome(truncated, &labels);
        let at = boundaries[insert.index(boundaries.len())];
        let spliced = format!("{}{extra}{}", &text[..at], &text[at..]);
        check_outcome(&spliced, &labels);
    }

    #[test]
    fn rendered_expressions_round_trip(e in expr(), seed in any::<u64>(), maps in label_maps()) {
        let text = render(&e, seed);
        let selector = Selector::parse(&text)
            .unwrap_or_else(|err| panic!("rendered {e:?} did not parse: {err}"));
        prop_assert_eq!(selector.to_string(), text.trim());
        for labels in &maps {
            prop_assert_eq!(
                selector.matches(labels),
                eval(&e, labels),
                "text {:?} labels {:?}",
                text,
                labels
            );
        }
    }

    #[test]
    fn negation_inverts_every_expression(e in expr(), seed in any::<u64>(), maps in label_maps()) {
        let text = render(&e, seed);
        let selector = Selector::parse(&text).expect("rendered text parses");
        let negated = Selector::parse(&format!("!({text})")).expect("negated text parses");
        let spaced = Selector::parse(&format!("! ( {text} )")).expect("negated text parses");
        for labels in &maps {
            prop_assert_eq!(negated.matches(labels), !selector.matches(labels));
            prop_assert_eq!(spaced.matches(labels), !selector.matches(labels));
        }
    }
}
