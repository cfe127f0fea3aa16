//! Per-worker counters, read by the control socket (`tlsfront stats`).
//!
//! Each worker owns one `WorkerStats` and is the only writer of it, so the
//! counters are plain relaxed atomics: a reader wants a recent value, not an
//! ordering with any other memory. Each worker's counters (these, and the
//! cache's, ring's and remote tier's) sit in a `CachePadded` of their own,
//! so that workers on neighbouring cores never write one cache line.

use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod prometheus;
mod table;

pub(crate) use prometheus::serve_prometheus;
pub use table::render_table;

thread_local! {
    static CURRENT_WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the calling thread as worker `index`, so that components called
/// from inside rustls (the session cache) count per worker.
pub fn set_current_worker(index: usize) {
    CURRENT_WORKER.with(|w| w.set(Some(index)));
}

/// The worker index of the calling thread, if it is a worker.
pub(crate) fn current_worker() -> Option<usize> {
    CURRENT_WORKER.with(Cell::get)
}

/// Declares a struct of per-worker `AtomicU64` counters whose `fields()`
/// names each one `<prefix><field>` (the names `tlsfront stats` and the
/// metrics endpoint show).
macro_rules! named_counters {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, { $( $field:ident : $doc:literal ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub(crate) struct $name {
            $( #[doc = $doc] pub $field: std::sync::atomic::AtomicU64, )*
        }

        impl $name {
            /// Names and values, in declaration order.
            pub(crate) fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (
                    concat!($prefix, stringify!($field)),
                    self.$field.load(std::sync::atomic::Ordering::Relaxed),
                ), )* ]
            }
        }
    };
}
pub(crate) use named_counters;

/// How a completed handshake got its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resumption {
    /// A full handshake.
    Full,
    /// TLS 1.2, session ID found in the shared cache.
    SessionId,
    /// TLS 1.2, ticket opened by the ring.
    Tls12Ticket,
    /// TLS 1.3 PSK from a ring-sealed ticket.
    Tls13Ticket,
    /// TLS 1.3 PSK from a single-use ticket in the shared cache.
    Tls13Stateful,
}

impl Resumption {
    /// The word the access log and metrics use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Resumption::Full => "full",
            Resumption::SessionId => "id",
            Resumption::Tls12Ticket => "ticket",
            Resumption::Tls13Ticket => "tls13",
            Resumption::Tls13Stateful => "tls13-stateful",
        }
    }
}

/// Upper bounds (microseconds) of the handshake-duration histogram buckets;
/// a last, unbounded bucket follows.
pub(crate) const HANDSHAKE_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// A histogram of handshake durations (one worker writes it).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Count per bucket of [`HANDSHAKE_BUCKETS_US`], then the overflow.
    pub(crate) buckets: [AtomicU64; HANDSHAKE_BUCKETS_US.len() + 1],
    /// Sum of all observations, microseconds.
    pub(crate) sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = HANDSHAKE_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(HANDSHAKE_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A component with counters kept per worker (e.g. the session cache).
pub trait PerWorkerCounters: Send + Sync {
    /// Named counters of worker `worker`.
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)>;
}

macro_rules! counters {
    ($( $field:ident : $doc:literal ),* $(,)?) => {
        /// Counters of one worker.
        #[derive(Debug, Default)]
        pub(crate) struct WorkerStats {
            $( #[doc = $doc] pub $field: AtomicU64, )*
            /// Durations of completed handshakes.
            pub(crate) handshake_duration: Histogram,
        }

        /// A point-in-time copy of [`WorkerStats`] (or their sum).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct Snapshot {
            $( #[doc = $doc] pub $field: u64, )*
        }

        impl WorkerStats {
            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> Snapshot {
                Snapshot { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }

        impl Snapshot {
            /// Field names and values, in declaration order.
            pub(crate) fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($field), self.$field), )* ]
            }
        }
    };
}

counters! {
    accepted: "Connections accepted.",
    handshakes: "TLS handshakes completed.",
    full_tls12: "Full TLS 1.2 handshakes.",
    full_tls13: "Full TLS 1.3 handshakes.",
    resumed_tls12: "TLS 1.2 handshakes that resumed a session.",
    resumed_tls13: "TLS 1.3 handshakes that resumed a session (PSK).",
    resumed_tls12_id: "TLS 1.2 resumptions by session ID (shared cache).",
    resumed_tls12_ticket: "TLS 1.2 resumptions by ticket (ticket-key ring).",
    resumed_tls13_ticket: "TLS 1.3 resumptions with a ring-sealed ticket.",
    resumed_tls13_stateful: "TLS 1.3 resumptions with a single-use ticket from the shared cache.",
    early_data_accepted: "Connections whose 0-RTT data was accepted.",
    handshake_errors: "Connections closed before or during the handshake (bad TLS, timeouts, resets).",
    active: "Connections open now.",
    rejected_over_limit: "Connections closed at accept because limits.max_connections was reached.",
    idle_timeouts: "Connections closed after limits.idle_timeout without traffic.",
    upstream_errors: "Upstream connects that failed or timed out, and upstream resets.",
    proxy_untrusted: "Connections closed at once: net.proxy_protocol = 1 and the peer is not in net.proxy_protocol.trusted.",
    proxy_invalid: "Connections closed because they did not start with a valid PROXY header (net.proxy_protocol = 1).",
    upstream_retries: "Upstream connects that failed or timed out and went on to the next server of the list (that server is then skipped for upstream.down_time).",
    bytes_client_to_upstream: "Plaintext bytes relayed from clients to the upstream.",
    bytes_upstream_to_client: "Plaintext bytes relayed from the upstream to clients.",
    uring_enters: "io_uring_enter calls of the worker loop (one per loop turn).",
    uring_requests: "io_uring requests the worker loop submitted.",
}

impl WorkerStats {
    /// Counts a completed handshake by how it resumed.
    pub(crate) fn count_handshake(&self, how: Resumption, tls13: bool, took: std::time::Duration) {
        Self::inc(&self.handshakes);
        self.handshake_duration.observe(took);
        let (by_version, by_mechanism) = match how {
            Resumption::Full if tls13 => return Self::inc(&self.full_tls13),
            Resumption::Full => return Self::inc(&self.full_tls12),
            Resumption::SessionId => (&self.resumed_tls12, &self.resumed_tls12_id),
            Resumption::Tls12Ticket => (&self.resumed_tls12, &self.resumed_tls12_ticket),
            Resumption::Tls13Ticket => (&self.resumed_tls13, &self.resumed_tls13_ticket),
            Resumption::Tls13Stateful => (&self.resumed_tls13, &self.resumed_tls13_stateful),
        };
        Self::inc(by_version);
        Self::inc(by_mechanism);
    }

    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's entry of [`Stats`].
pub(crate) struct WorkerEntry {
    /// The CPU the worker is pinned to, if it is.
    pub(crate) cpu: Option<usize>,
    /// Its counters, on cache lines of their own.
    pub(crate) counters: CachePadded<WorkerStats>,
}

/// The counters of every worker, and of the components that count per
/// worker (cache, ring, remote tier).
pub(crate) struct Stats {
    /// One entry per worker, by worker index.
    pub(crate) workers: Vec<WorkerEntry>,
    sources: Vec<Arc<dyn PerWorkerCounters>>,
}

impl Stats {
    /// Counters for `cpus.len()` workers, plus those of `sources`.
    pub(crate) fn new(cpus: &[Option<usize>], sources: Vec<Arc<dyn PerWorkerCounters>>) -> Stats {
        Stats {
            workers: cpus
                .iter()
                .map(|&cpu| WorkerEntry {
                    cpu,
                    counters: CachePadded::new(WorkerStats::default()),
                })
                .collect(),
            sources,
        }
    }

    /// JSON: `{"workers":[{"worker":0,"cpu":0,...}],"total":{...}}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut total: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut workers = Vec::with_capacity(self.workers.len());
        for (
            index,
            WorkerEntry {
                cpu,
                counters: stats,
            },
        ) in self.workers.iter().enumerate()
        {
            let mut obj = serde_json::Map::new();
            obj.insert("worker".into(), index.into());
            obj.insert("cpu".into(), (*cpu).into());
            let fields = stats
                .snapshot()
                .fields()
                .into_iter()
                .chain(self.sources.iter().flat_map(|s| s.worker_counters(index)));
            for (name, value) in fields {
                *total.entry(name).or_default() += value;
                obj.insert(name.into(), value.into());
            }
            workers.push(serde_json::Value::Object(obj));
        }
        let total: serde_json::Map<String, serde_json::Value> = total
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.into()))
            .collect();
        serde_json::json!({ "workers": workers, "total": total })
    }
}

/// Reads how many log lines the non-blocking log writer dropped.
pub(crate) type DroppedLines = Box<dyn Fn() -> u64 + Send + Sync>;

static LOG_LINES_DROPPED: std::sync::OnceLock<DroppedLines> = std::sync::OnceLock::new();

/// Registers the log writer's count of dropped lines (once per process).
pub(crate) fn set_log_lines_dropped(read: DroppedLines) {
    let _ = LOG_LINES_DROPPED.set(read);
}

/// Log lines dropped because the log's queue was full (a slow stderr).
pub(crate) fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.get().map_or(0, |read| read())
}
