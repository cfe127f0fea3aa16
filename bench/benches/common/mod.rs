//! What the three criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// 20 samples after 0.5 s of warm-up, 2 s of measurement: short enough
/// for every group of RESULTS.md in one run.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}
