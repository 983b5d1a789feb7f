//! Who may have written a file: the checks that keep other users' files out of the node
//! cache and the SQLite store.

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    unsafe extern "C" {
        /// POSIX `geteuid(2)`: takes nothing, cannot fail; `uid_t` is 32 bits on every
        /// platform Tessera runs on.
        safe fn geteuid() -> u32;
    }
    geteuid()
}

/// Who besides the owner may write an entry with permission bits `mode`, for messages:
/// "its group", "others" or "its group and others" (`None`: nobody).
pub fn others_who_may_write(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("its group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_who_may_write() {
        assert_eq!(others_who_may_write(0o755), None);
        assert_eq!(others_who_may_write(0o775), Some("its group"));
        assert_eq!(others_who_may_write(0o1777), Some("its group and others"));
        assert_eq!(others_who_may_write(0o757), Some("others"));
    }
}
