//! Per-worker counters, read by the control socket (`tlsfront stats`).
//!
//! Each worker owns one [`WorkerStats`] and is the only writer of it, so the
//! counters are plain relaxed atomics: a reader wants a recent value, not an
//! ordering with any other memory.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

thread_local! {
    static CURRENT_WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the calling thread as worker `index`, so that components called
/// from inside rustls (the session cache) count per worker.
pub fn set_current_worker(index: usize) {
    CURRENT_WORKER.with(|w| w.set(Some(index)));
}

/// The worker index of the calling thread, if it is a worker.
pub fn current_worker() -> Option<usize> {
    CURRENT_WORKER.with(Cell::get)
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
        pub struct WorkerStats {
            $( #[doc = $doc] pub $field: AtomicU64, )*
        }

        /// A point-in-time copy of [`WorkerStats`] (or their sum).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $( #[doc = $doc] pub $field: u64, )*
        }

        impl WorkerStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }

        impl Snapshot {
            /// Field names and values, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($field), self.$field), )* ]
            }

            /// Adds `other` into `self`.
            pub fn add(&mut self, other: &Snapshot) {
                $( self.$field += other.$field; )*
            }
        }
    };
}

counters! {
    accepted: "Connections accepted.",
    handshakes: "TLS handshakes completed.",
    resumed_tls12: "TLS 1.2 handshakes that resumed a session.",
    resumed_tls13: "TLS 1.3 handshakes that resumed a session (PSK).",
    handshake_errors: "Connections closed before or during the handshake (bad TLS, timeouts, resets).",
    active: "Connections open now.",
    upstream_errors: "Upstream connects that failed or timed out, and upstream resets.",
    bytes_client_to_upstream: "Plaintext bytes relayed from clients to the upstream.",
    bytes_upstream_to_client: "Plaintext bytes relayed from the upstream to clients.",
}

impl WorkerStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters of every worker, with the CPU each is pinned to, and of the
/// components that count per worker.
pub struct Stats {
    /// One entry per worker, by worker index.
    pub workers: Vec<(Option<usize>, WorkerStats)>,
    sources: Vec<Arc<dyn PerWorkerCounters>>,
}

impl Stats {
    /// Counters for `cpus.len()` workers, plus those of `sources`.
    pub fn new(cpus: &[Option<usize>], sources: Vec<Arc<dyn PerWorkerCounters>>) -> Stats {
        Stats {
            workers: cpus.iter().map(|c| (*c, WorkerStats::default())).collect(),
            sources,
        }
    }

    /// JSON: `{"workers":[{"worker":0,"cpu":0,...}],"total":{...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut total: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut workers = Vec::with_capacity(self.workers.len());
        for (index, (cpu, stats)) in self.workers.iter().enumerate() {
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

/// Renders the JSON of [`Stats::to_json`] as a table: one column per
/// worker and a total column.
pub fn render_table(json: &serde_json::Value) -> String {
    let workers = json["workers"].as_array().cloned().unwrap_or_default();
    let total = json["total"].as_object().cloned().unwrap_or_default();
    let mut header = vec!["counter".to_string()];
    for w in &workers {
        let cpu = w["cpu"]
            .as_u64()
            .map(|c| format!("@cpu{c}"))
            .unwrap_or_default();
        header.push(format!("w{}{cpu}", w["worker"]));
    }
    header.push("total".to_string());
    let mut rows = vec![header];
    for name in total.keys() {
        let mut row = vec![name.clone()];
        for w in &workers {
            row.push(w[name.as_str()].to_string());
        }
        row.push(total[name].to_string());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}
