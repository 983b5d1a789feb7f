//! The Calico selector language (placeholder API; full implementation pending).

use std::collections::BTreeMap;

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    source: String,
}

/// A selector that failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {message} at position {position}")]
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
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Ok(Self {
            source: input.trim().to_string(),
        })
    }

    /// The selector that matches everything: `all()`.
    pub fn all() -> Self {
        Self {
            source: "all()".into(),
        }
    }

    /// Whether the labels satisfy the selector.
    pub fn matches(&self, _labels: &BTreeMap<String, String>) -> bool {
        true
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}
