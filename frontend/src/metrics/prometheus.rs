//! The counters in the Prometheus text exposition format (0.0.4), and the
//! `metrics.listen` endpoint that serves them on a thread of its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{log_lines_dropped, Snapshot, Stats, WorkerEntry, HANDSHAKE_BUCKETS_US};

/// Renders every counter in the Prometheus text exposition format (0.0.4).
fn prometheus_text(stats: &Stats) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tlsfront_log_lines_dropped_total Log lines dropped because stderr did not keep up."
    );
    let _ = writeln!(out, "# TYPE tlsfront_log_lines_dropped_total counter");
    let _ = writeln!(
        out,
        "tlsfront_log_lines_dropped_total {}",
        log_lines_dropped()
    );
    let _ = writeln!(out, "# HELP tlsfront_build_info tlsfront version.");
    let _ = writeln!(out, "# TYPE tlsfront_build_info gauge");
    let _ = writeln!(
        out,
        "tlsfront_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let snaps: Vec<(usize, Snapshot)> = stats
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (i, w.counters.snapshot()))
        .collect();

    let _ = writeln!(
        out,
        "# HELP tlsfront_handshakes_total TLS handshakes by result and version."
    );
    let _ = writeln!(out, "# TYPE tlsfront_handshakes_total counter");
    for (w, s) in &snaps {
        for (result, version, n) in [
            ("full", "1.2", s.full_tls12),
            ("full", "1.3", s.full_tls13),
            ("resumed", "1.2", s.resumed_tls12),
            ("resumed", "1.3", s.resumed_tls13),
            ("error", "unknown", s.handshake_errors),
        ] {
            let _ = writeln!(
                out,
                "tlsfront_handshakes_total{{result=\"{result}\",version=\"{version}\",worker=\"{w}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP tlsfront_resumptions_total Resumed handshakes by mechanism."
    );
    let _ = writeln!(out, "# TYPE tlsfront_resumptions_total counter");
    for (w, s) in &snaps {
        for (mechanism, n) in [
            ("tls12_session_id", s.resumed_tls12_id),
            ("tls12_ticket", s.resumed_tls12_ticket),
            ("tls13_ticket", s.resumed_tls13_ticket),
            ("tls13_stateful", s.resumed_tls13_stateful),
        ] {
            let _ = writeln!(
                out,
                "tlsfront_resumptions_total{{mechanism=\"{mechanism}\",worker=\"{w}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP tlsfront_active_connections Connections open now."
    );
    let _ = writeln!(out, "# TYPE tlsfront_active_connections gauge");
    for (w, s) in &snaps {
        let _ = writeln!(
            out,
            "tlsfront_active_connections{{worker=\"{w}\"}} {}",
            s.active
        );
    }
    let _ = writeln!(
        out,
        "# HELP tlsfront_handshake_duration_seconds Time from accept to a completed handshake."
    );
    let _ = writeln!(out, "# TYPE tlsfront_handshake_duration_seconds histogram");
    for (
        w,
        WorkerEntry {
            counters: stats, ..
        },
    ) in stats.workers.iter().enumerate()
    {
        let h = &stats.handshake_duration;
        let mut cumulative = 0;
        for (i, bound) in HANDSHAKE_BUCKETS_US.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tlsfront_handshake_duration_seconds_bucket{{worker=\"{w}\",le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += h.buckets[HANDSHAKE_BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_bucket{{worker=\"{w}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_sum{{worker=\"{w}\"}} {}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_count{{worker=\"{w}\"}} {cumulative}"
        );
    }
    // Every other counter, of the workers and of the components (cache,
    // tickets, steering), one family each.
    let covered = [
        "handshakes",
        "full_tls12",
        "full_tls13",
        "resumed_tls12",
        "resumed_tls13",
        "resumed_tls12_id",
        "resumed_tls12_ticket",
        "resumed_tls13_ticket",
        "resumed_tls13_stateful",
        "handshake_errors",
        "active",
    ];
    let mut families: std::collections::BTreeMap<&'static str, Vec<(usize, u64)>> =
        Default::default();
    for (w, s) in &snaps {
        let fields = s
            .fields()
            .into_iter()
            .chain(stats.sources.iter().flat_map(|src| src.worker_counters(*w)));
        for (name, value) in fields.filter(|(n, _)| !covered.contains(n)) {
            families.entry(name).or_default().push((*w, value));
        }
    }
    for (name, values) in families {
        let _ = writeln!(
            out,
            "# HELP tlsfront_{name}_total {} (per worker; see tlsfront stats).",
            counter_help(name)
        );
        let _ = writeln!(out, "# TYPE tlsfront_{name}_total counter");
        for (w, v) in values {
            let _ = writeln!(out, "tlsfront_{name}_total{{worker=\"{w}\"}} {v}");
        }
    }
    out
}

/// A one-line description of a counter, from its name.
fn counter_help(name: &str) -> String {
    let (component, rest) = match name.split_once('_') {
        Some(("cache", rest)) => ("session cache", rest),
        Some(("tickets", rest)) => ("ticket-key ring", rest),
        Some(("steer", rest)) => ("eBPF steering", rest),
        _ => ("connections", name),
    };
    format!("{component}: {}", rest.replace('_', " "))
}

/// Serves [`prometheus_text`] over HTTP on `addr` (any path), on its own
/// thread so that a slow scraper never delays a worker.
pub(crate) fn serve_prometheus(
    addr: std::net::SocketAddr,
    stats: Arc<Stats>,
) -> std::io::Result<std::net::SocketAddr> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tlsfront-metrics".into())
        .spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let body = prometheus_text(&stats);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        })?;
    Ok(bound)
}
