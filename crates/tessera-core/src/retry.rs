//! Starting over after losing a compare-and-swap race: every read-decide-commit loop of the
//! allocator and the catalog runs through [`on_conflict`], with one bound and one pause.

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

/// How many times an operation is tried before it gives up on a datastore that keeps
/// changing the records it read.
pub const MAX_ATTEMPTS: u32 = 64;

/// Runs `attempt` (given its number, from 0) until it returns `Ok(Some(_))` or an error, at
/// most `max` times, pausing a short random while before each repeat. `attempt` returns
/// `Ok(None)` when another writer got there first and it should start over; `on_conflict`
/// returns `Ok(None)` when every attempt did. `salt` (a handle id, a node name) spreads the
/// pauses of writers racing each other.
pub fn on_conflict<T, E>(
    max: u32,
    salt: &str,
    mut attempt: impl FnMut(u32) -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    for n in 0..max {
        backoff(n, salt);
        if let Some(done) = attempt(n)? {
            return Ok(Some(done));
        }
    }
    Ok(None)
}

/// Short randomized pause before a retry, so racing writers spread out.
fn backoff(attempt: u32, salt: &str) {
    if attempt == 0 {
        return;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (salt, attempt, std::process::id(), SystemTime::now()).hash(&mut h);
    let cap_us = 200u64 << attempt.min(6);
    std::thread::sleep(Duration::from_micros(h.finish() % cap_us));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_first_attempt_that_is_not_interfered_with() {
        let mut seen = Vec::new();
        let done = on_conflict(5, "t", |n| {
            seen.push(n);
            Ok::<_, ()>((n == 2).then_some("done"))
        });
        assert_eq!(done, Ok(Some("done")));
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn gives_up_after_max_attempts_and_stops_at_an_error() {
        let mut tries = 0;
        let gave_up = on_conflict(3, "t", |_| {
            tries += 1;
            Ok::<Option<()>, ()>(None)
        });
        assert_eq!((gave_up, tries), (Ok(None), 3));
        let failed = on_conflict(
            3,
            "t",
            |n| if n == 1 { Err("boom") } else { Ok(None::<()>) },
        );
        assert_eq!(failed, Err("boom"));
    }
}
