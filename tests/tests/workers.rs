//! Several workers share the listening port; the stats add up.

use std::time::Duration;
use tlsfront_tests::*;

#[test]
fn two_workers_both_handshake_and_stats_add_up() {
    const N: usize = 200;
    let fe = Frontend::start(&[("worker.count", "2")]);
    let cfg = ClientSpec::new(Trust::AnyCert).build();
    // The kernel's view of the workers: each thread pinned to its own CPU.
    let cpus = worker_cpus_of(fe.pid());
    assert!(
        cpus.len() == 2 && cpus.iter().all(|c| c.len() == 1) && cpus[0] != cpus[1],
        "worker threads not pinned one per CPU: {cpus:?}"
    );
    let mut handshakes = 0u64;
    let mut not_200 = Vec::new();
    let mut failures = Vec::new();
    // Connections per worker as the kernel saw them: the CPU that sent the
    // response segments (SO_INCOMING_CPU of the client's socket).
    let mut seen = vec![0u64; cpus.len()];
    let mut elsewhere = Vec::new();
    for i in 0..N {
        match TlsClient::connect(fe.addr(), cfg.clone(), "localhost") {
            Ok(mut c) => {
                handshakes += 1;
                // After the handshake, not at the end (see `Visit::incoming_cpu`).
                let cpu = c.incoming_cpu().expect("SO_INCOMING_CPU");
                let (resp, end) = c.request(b"GET / HTTP/1.0\r\n\r\n", IO_TIMEOUT);
                if !is_http_200(&resp) {
                    not_200.push((i, end, String::from_utf8_lossy(&resp).into_owned()));
                }
                match cpus.iter().position(|w| w[0] == cpu) {
                    Some(w) => seen[w] += 1,
                    None => elsewhere.push((i, cpu)),
                }
            }
            Err(e) => failures.push((i, e.to_string())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} handshakes failed, first: {:?}\n{}",
        failures.len(),
        failures.first(),
        fe.output()
    );
    assert!(
        not_200.is_empty(),
        "{} of {N} requests got no HTTP 200, first: {:?}\n{}",
        not_200.len(),
        not_200.first(),
        fe.output()
    );

    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= handshakes);
    assert!(ok, "total.handshakes never reached {handshakes}: {stats:?}");
    assert_eq!(
        stats.workers.len(),
        2,
        "worker.count = 2 but stats list {} workers: {stats:?}",
        stats.workers.len()
    );
    let per: Vec<u64> = stats.workers.iter().map(|w| w.handshakes).collect();
    assert_eq!(
        per.iter().sum::<u64>(),
        handshakes,
        "per-worker handshakes {per:?} vs {handshakes} completed"
    );
    assert_eq!(
        stats.total.handshakes, handshakes,
        "total.handshakes: {stats:?}"
    );
    assert!(
        per.iter().all(|&h| h > 0),
        "a worker got no connection: {per:?}"
    );
    eprintln!("per worker: stats {per:?}, kernel {seen:?}; elsewhere {elsewhere:?}");
    assert!(
        elsewhere.is_empty(),
        "responses from a CPU no worker runs on: {elsewhere:?}"
    );
    assert_eq!(
        per, seen,
        "handshakes per worker: tlsfront's stats vs the CPU the kernel saw serve each connection"
    );
}

#[test]
fn stats_count_relayed_bytes_in_both_directions() {
    let upstream = Upstream::echo();
    let fe = Frontend::start(&[("upstream.addr", &upstream.addr_string())]);
    let mut c = TlsClient::connect(
        fe.addr(),
        ClientSpec::new(Trust::AnyCert).build(),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", fe.output()));
    const LEN: u64 = 100_000;
    let (r, check) = c.echo_pattern(
        1,
        LEN,
        &PumpOpts::close_notify_after_send(Duration::from_secs(20)),
    );
    assert_eq!(check.received, LEN, "{r:?}\n{}", fe.output());
    let (stats, ok) = fe.wait_stats(Duration::from_secs(5), |s| {
        s.total.bytes_client_to_upstream >= LEN
            && s.total.bytes_upstream_to_client >= LEN
            && s.total.active == 0
    });
    assert!(
        ok,
        "stats after relaying {LEN} bytes each way and closing: {stats:?}"
    );
    assert_eq!(stats.total.bytes_client_to_upstream, LEN, "{stats:?}");
    assert_eq!(stats.total.bytes_upstream_to_client, LEN, "{stats:?}");
    assert_eq!(stats.total.accepted, 1, "{stats:?}");
    assert_eq!(stats.total.handshakes, 1, "{stats:?}");
}

#[test]
fn stats_answers_through_control_socket_override_and_config_file() {
    let fe = Frontend::start(&[("worker.count", "1")]);
    let sock = fe.socket.display().to_string();
    let dir = temp_dir();
    let conf = write_file(
        dir.path(),
        "stats.conf",
        &format!("control.socket = {sock}\n"),
    );
    for args in [
        vec!["stats", "-o", &format!("control.socket={sock}"), "--json"],
        vec!["stats", "-c", conf.to_str().unwrap(), "--json"],
    ] {
        let out = tlsfront_cmd(&args);
        assert_eq!(
            out.code(),
            Some(0),
            "tlsfront {args:?}\n{}\n{}",
            out.describe(),
            fe.output()
        );
        let s = Stats::parse(&out.stdout)
            .unwrap_or_else(|e| panic!("tlsfront {args:?}: bad JSON ({e}): {}", out.stdout));
        assert_eq!(s.workers.len(), 1, "worker.count = 1: {s:?}");
    }
}
