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
}
