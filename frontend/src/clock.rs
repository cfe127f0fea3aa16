//! The wall clock the shared state keys its expiries and epochs on
//! (session cache, ticket ring, remote tier): whole unix seconds, the same
//! in every process of the box and, within their skew, of the fleet.

/// Unix time in seconds.
///
/// From the coarse real-time clock: a few nanoseconds instead of ~40 for
/// the precise one, and seconds are all that expiry and key epochs need.
pub fn unix_now() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => u64::try_from(t.tv_sec()).unwrap_or(0),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}
