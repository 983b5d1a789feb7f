//! How a broken rule is reported: one [`FieldError`] per problem, all problems of one
//! resource together in a [`ValidationError`].

use std::fmt;

use crate::resources::Kind;
use crate::text::quoted;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.cidr` or `spec.reservedCIDRs[1]`; empty for the document
    /// as a whole.
    pub field: String,
    /// What is wrong and what to do about it.
    pub reason: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same problem with `prefix` put in front of the field path (`items[2]` + `spec.cidr`
    /// gives `items[2].spec.cidr`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Writes `Kind "name"` (or `Kind <unnamed>`).
pub(crate) fn fmt_subject(f: &mut fmt::Formatter<'_>, kind: Kind, name: &str) -> fmt::Result {
    if name.is_empty() {
        write!(f, "{kind} <unnamed>")
    } else {
        write!(f, "{kind} {}", quoted(name))
    }
}

/// Writes field errors joined with `"; "`.
pub(crate) fn fmt_errors(f: &mut fmt::Formatter<'_>, errors: &[FieldError]) -> fmt::Result {
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            f.write_str("; ")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// A resource that breaks one or more rules; nothing of it may be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Kind of the resource.
    pub kind: Kind,
    /// Name of the resource as given (may be empty or itself invalid).
    pub name: String,
    /// Every problem found, in field order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_subject(f, self.kind, &self.name)?;
        f.write_str(" is invalid: ")?;
        fmt_errors(f, &self.errors)
    }
}
