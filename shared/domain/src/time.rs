//! Instants a `std` duration away from now, for leases, delays and overlaps.
//!
//! `chrono::Duration::from_std` fails above `i64::MAX` milliseconds, and adding a huge
//! delta to a date overflows it. Silently taking zero instead (as `unwrap_or_default`
//! would) turns an absurd lease into an already-expired one; these helpers instead
//! saturate at the far end of the calendar, which is what such a duration means, and
//! log that they did, since only a misconfiguration gets there.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tracing::warn;

/// `from + by`, saturating at the last representable instant.
pub fn later(from: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    match TimeDelta::from_std(by)
        .ok()
        .and_then(|delta| from.checked_add_signed(delta))
    {
        Some(instant) => instant,
        None => {
            warn!(
                duration_secs = by.as_secs(),
                "duration past the end of the calendar; clamped to its last instant"
            );
            DateTime::<Utc>::MAX_UTC
        }
    }
}

/// `from - by`, saturating at the first representable instant.
pub fn earlier(from: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    match TimeDelta::from_std(by)
        .ok()
        .and_then(|delta| from.checked_sub_signed(delta))
    {
        Some(instant) => instant,
        None => {
            warn!(
                duration_secs = by.as_secs(),
                "duration before the start of the calendar; clamped to its first instant"
            );
            DateTime::<Utc>::MIN_UTC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_durations_are_exact() {
        let now = Utc::now();
        assert_eq!(
            later(now, Duration::from_secs(30)),
            now + TimeDelta::seconds(30)
        );
        assert_eq!(
            earlier(now, Duration::from_millis(1500)),
            now - TimeDelta::milliseconds(1500)
        );
    }

    #[test]
    fn overflowing_durations_saturate_instead_of_becoming_zero() {
        let now = Utc::now();
        assert_eq!(later(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(earlier(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        // Fits a TimeDelta but not the calendar.
        let huge = Duration::from_secs(400_000 * 365 * 24 * 3600);
        assert_eq!(later(now, huge), DateTime::<Utc>::MAX_UTC);
    }
}
