//! What the catalog stamps records with: a resource's `metadata.uid` and
//! `metadata.creationTimestamp`, and the nonce of `config/guard`.

use jiff::Timestamp;
use uuid::Uuid;

/// The current time as RFC 3339 UTC to the second, e.g. `2022-05-12T14:34:03Z`.
pub(super) fn now_rfc3339() -> String {
    format_rfc3339(Timestamp::now().as_second())
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC, e.g. `2022-05-12T14:34:03Z`. Times
/// outside the years -9999 to 9999 are clamped to them.
pub fn format_rfc3339(unix_secs: i64) -> String {
    let secs = unix_secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    // In range after the clamp; whole seconds print without a fraction.
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// A new random id (UUID version 4 from the operating system's random source), in
/// lowercase 8-4-4-4-12 hex form.
pub fn new_uid() -> String {
    Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_652_366_043), "2022-05-12T14:34:03Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn now_is_whole_seconds_in_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2022-05-12T14:34:03Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
    }

    #[test]
    fn uids_look_like_uuid_v4_and_differ() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert!(a
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
