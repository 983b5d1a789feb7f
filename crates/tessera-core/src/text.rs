//! User input as messages show it.

/// How many characters of one piece of user input a message shows.
pub const SHOWN_CHARS: usize = 120;

/// `text` ready to put in a message: quoted and escaped as Rust's `{:?}` does (a newline,
/// tab or other control character shows as an escape, so input cannot break a line of the
/// message or forge output), and cut after [`SHOWN_CHARS`] characters with the full length
/// added: `"aaaa…"… (100000 bytes)`.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

/// User input shown bare where a message has it without quotes (a map key in a field path,
/// `metadata.labels.rack`; a name in `IPPool(name)`): as written when it is short
/// and free of control characters, [`quoted`] otherwise.
pub fn plain_or_quoted(text: &str) -> String {
    let plain = text.chars().nth(SHOWN_CHARS).is_none() && !text.chars().any(char::is_control);
    if plain {
        text.to_string()
    } else {
        quoted(text)
    }
}

/// `text` with typographic quotes (as word processors and blog posts turn `"` and `'` into)
/// read as the plain ones they stand for, trimmed, and without single quotes around it (shell
/// quoting that ended up in a value): JSON pasted from a document, made parseable.
pub fn plain_quotes(text: &str) -> String {
    let plain: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => '"',
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' => '\'',
            c => c,
        })
        .collect();
    plain.trim_matches('\'').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_and_escaped() {
        assert_eq!(quoted("rack == \"0\""), r#""rack == \"0\"""#);
        assert_eq!(quoted("a\nb\tc\u{1b}[31m"), r#""a\nb\tc\u{1b}[31m""#);
        assert_eq!(quoted(""), "\"\"");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_length() {
        let long = "é".repeat(50_000);
        let shown = quoted(&long);
        assert_eq!(
            shown,
            format!("\"{}\"… (100000 bytes)", "é".repeat(SHOWN_CHARS))
        );
        let exact = "a".repeat(SHOWN_CHARS);
        assert_eq!(quoted(&exact), format!("\"{exact}\""));
    }

    #[test]
    fn plain_text_stays_plain_unless_long_or_odd() {
        assert_eq!(
            plain_or_quoted("cni.projectcalico.org/ipv4pools"),
            "cni.projectcalico.org/ipv4pools"
        );
        assert_eq!(plain_or_quoted("a\nb"), r#""a\nb""#);
        assert!(plain_or_quoted(&"k".repeat(1000)).ends_with("… (1000 bytes)"));
    }
}
