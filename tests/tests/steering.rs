//! `net.steering = xdp | reuseport | none` end to end, in network
//! namespaces: tlsfront in namespace A listens on 198.18.0.1 and (xdp)
//! attaches its XDP program to A's veth end; the clients run in namespace B
//! (threads of this test that joined B). Every connection must be accepted
//! by the worker that the XDP program's hash (`tlsfront_shared::worker_slot`, the very code
//! the program runs, with the key read from the process's `FLOW_KEY` map)
//! chose for its 4-tuple.
//!
//! Needs root and iproute2; fails, naming what is missing, otherwise
//! (`netns::NEEDS`, checked when the namespaces are made).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tlsfront_shared::{parse, worker_slot, FlowHashKey, FlowKey, Parsed};

use tlsfront_tests::netns::{
    accepted_by, in_netns, xdp_links_of, NetnsPair, NsFrontend, ADDR_A, ADDR_B,
};
use tlsfront_tests::*;

const PORT: u16 = 8443;
/// The second `net.listen` address's port, when a test lists two.
const SECOND_PORT: u16 = 8444;
/// One client connection as seen from namespace B.
#[derive(Debug, Clone, Copy)]
struct Conn {
    port: u16,
    resumed: bool,
    http_200: bool,
    /// SO_INCOMING_CPU of the client's socket at the end: the CPU of the
    /// worker that sent the response (a veth pair processes a segment on
    /// the sending CPU), i.e. the kernel's view of who served it.
    cpu: Option<u32>,
}

/// Opens `count` TLS connections (each from a new source port, each
/// resuming the session of the one before) from namespace B, on a thread
/// that joined it. Every connect and exchange is bounded by [`IO_TIMEOUT`].
fn run_clients(pair: &NetnsPair, port: u16, count: usize) -> (Vec<Conn>, Vec<String>) {
    let addr = SocketAddr::from((ADDR_A, port));
    in_netns(&pair.b, || {
        let cfg = resuming_client_config(&ClientSpec::new(Trust::AnyCert));
        let mut conns = Vec::new();
        let mut failures = Vec::new();
        for i in 0..count {
            match TlsClient::connect(addr, cfg.clone(), "localhost") {
                Ok(mut c) => {
                    let port = c.sock.local_addr().map(|a| a.port()).unwrap_or(0);
                    let resumed = c.resumed();
                    // After the handshake, not at the end (see `Visit::incoming_cpu`).
                    let cpu = c.incoming_cpu().ok();
                    let (resp, _end) =
                        c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
                    conns.push(Conn {
                        port,
                        resumed,
                        http_200: is_http_200(&resp),
                        cpu,
                    });
                }
                Err(e) => failures.push(format!("connection {i}: {e}")),
            }
        }
        (conns, failures)
    })
}

/// The options of a steering test; `listen`, when given, is `net.listen`.
fn options<'a>(
    pair: &'a NetnsPair,
    steering: &'a str,
    xdp_mode: &'a str,
    listen: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut opts = vec![
        ("net.steering", steering),
        ("net.steering.fallback", "fail"),
        ("worker.count", "2"),
        ("log.level", "debug"),
    ];
    if steering == "xdp" {
        opts.push(("net.xdp.interface", pair.if_a.as_str()));
        opts.push(("net.xdp.mode", xdp_mode));
    }
    if let Some(listen) = listen {
        opts.push(("net.listen", listen));
    }
    opts
}

/// With `second`, tlsfront listens on `ADDR_A:PORT, ADDR_A:second`.
fn start(pair: &NetnsPair, steering: &str, xdp_mode: &str, second: Option<u16>) -> NsFrontend {
    let listen = second.map(|p| format!("{ADDR_A}:{PORT}, {ADDR_A}:{p}"));
    NsFrontend::start(
        &pair.a,
        PORT,
        &options(pair, steering, xdp_mode, listen.as_deref()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The CPU of each worker as the kernel pins its thread; the start-up
/// summary must say the same.
fn kernel_cpus(fe: &NsFrontend) -> Vec<u32> {
    let kernel = worker_cpus_of(fe.pid());
    assert!(
        kernel.iter().all(|c| c.len() == 1),
        "worker threads not pinned to one CPU each: {kernel:?}"
    );
    let kernel: Vec<u32> = kernel.into_iter().map(|c| c[0]).collect();
    let summary: Vec<u32> = fe.worker_cpus().into_iter().map(|c| c as u32).collect();
    assert_eq!(
        kernel, summary,
        "worker CPUs: the kernel's vs the summary's"
    );
    kernel
}

/// The worker whose CPU served `c`, as the kernel saw it.
fn kernel_worker(cpus: &[u32], c: &Conn) -> usize {
    let cpu = c.cpu.expect("SO_INCOMING_CPU of a client socket");
    cpus.iter().position(|&w| w == cpu).unwrap_or_else(|| {
        panic!(
            "port {} served from CPU {cpu}, where no worker runs ({cpus:?})",
            c.port
        )
    })
}

/// Waits until the frontend logged `want` handshakes from namespace B.
fn wait_accepted(fe: &NsFrontend, want: usize) -> BTreeMap<u16, usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = accepted_by(&fe.stderr());
        if seen.len() >= want || Instant::now() >= deadline {
            return seen.into_iter().map(|(w, p)| (p, w)).collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The end-to-end check shared by every mode; returns connections per worker.
fn end_to_end(steering: &str, xdp_mode: &str, count: usize) -> Vec<usize> {
    end_to_end_at(steering, xdp_mode, count, None)
}

/// [`end_to_end`]; with `second`, tlsfront listens on a second port too
/// and the clients connect to that one.
fn end_to_end_at(steering: &str, xdp_mode: &str, count: usize, second: Option<u16>) -> Vec<usize> {
    end_to_end_on(&NetnsPair::create(), steering, xdp_mode, count, second)
}

/// [`end_to_end_at`] over `pair`.
fn end_to_end_on(
    pair: &NetnsPair,
    steering: &str,
    xdp_mode: &str,
    count: usize,
    second: Option<u16>,
) -> Vec<usize> {
    if xdp_mode == "native" {
        pair.tx_checksum_off_b();
    }
    let fe = start(pair, steering, xdp_mode, second);
    let line = fe.steering_line();
    let suffix = match second {
        Some(_) => "+ reuseport, SK_REUSEPORT on each of the 2 net.listen addresses",
        None => "+ reuseport",
    };
    match steering {
        "xdp" => assert!(
            line.contains(&format!("xdp ({xdp_mode} on {}", pair.if_a)) && line.ends_with(suffix),
            "summary: {line}"
        ),
        "reuseport" => assert!(line.contains("reuseport (SK_REUSEPORT"), "summary: {line}"),
        _ => assert!(
            line.contains("none (kernel SO_REUSEPORT hash"),
            "summary: {line}"
        ),
    }
    if steering == "xdp" {
        assert!(
            pair.xdp_attached(),
            "no XDP program on {}: {}",
            pair.if_a,
            pair.link_a()
        );
    }
    let cpus = kernel_cpus(&fe);
    let port = second.unwrap_or(fe.port);
    let (conns, failures) = run_clients(pair, port, count);
    assert!(
        failures.is_empty(),
        "{} failures, first {:?}\n{}",
        failures.len(),
        failures.first(),
        fe.output()
    );
    assert_eq!(conns.len(), count);
    assert!(
        conns.iter().all(|c| c.http_200),
        "a request got no HTTP 200"
    );
    let not_resumed: Vec<u16> = conns[1..]
        .iter()
        .filter(|c| !c.resumed)
        .map(|c| c.port)
        .collect();
    assert!(
        not_resumed.is_empty(),
        "{} of {} reconnections did not resume: {not_resumed:?}",
        not_resumed.len(),
        count - 1
    );

    // The worker of each connection as the kernel saw it (the CPU that
    // served it), and tlsfront's log (`handshake done worker=N`) checked
    // against it.
    let logged = wait_accepted(&fe, count);
    let hash_key = (steering == "xdp").then(|| fe.flow_key());
    let mut per_worker = vec![0usize; cpus.len()];
    let mut resumed_per_worker = vec![0usize; cpus.len()];
    let mut wrong = Vec::new();
    let mut log_disagrees = Vec::new();
    for c in &conns {
        let worker = kernel_worker(&cpus, c);
        if logged.get(&c.port) != Some(&worker) {
            log_disagrees.push((c.port, worker, logged.get(&c.port).copied()));
        }
        per_worker[worker] += 1;
        resumed_per_worker[worker] += usize::from(c.resumed);
        if let Some(hash_key) = &hash_key {
            let key = FlowKey::v4(ADDR_B.octets(), ADDR_A.octets(), c.port, port);
            let slot = worker_slot(&key, hash_key, cpus.len() as u32).unwrap() as usize;
            // The XDP program sends slot n to cpus[n], where worker n runs.
            if worker != slot {
                wrong.push((c.port, slot, worker));
            }
        }
    }
    if hash_key.is_some() {
        // `tlsfront stats --flow` computes the same worker in the process.
        for c in conns.iter().take(20) {
            let answer = fe.flow_worker(c.port, port);
            assert_eq!(
                answer,
                kernel_worker(&cpus, c),
                "stats --flow, port {}",
                c.port
            );
        }
    }
    assert!(
        log_disagrees.is_empty(),
        "{} connections logged on another worker than the kernel saw serve them (port, kernel, log): {:?}\n{}",
        log_disagrees.len(),
        &log_disagrees[..log_disagrees.len().min(10)],
        fe.output()
    );
    assert!(
        wrong.is_empty(),
        "{} of {count} connections on the wrong worker (port, expected, got): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    eprintln!("{steering}/{xdp_mode}: connections per worker {per_worker:?}, resumed {resumed_per_worker:?}");

    let stats = fe.stats();
    if steering == "none" {
        assert!(
            !stats.total.all.contains_key("steer_reuseport_selected"),
            "none has no eBPF counters"
        );
        return per_worker;
    }
    let selected = stats.per_worker("steer_reuseport_selected");
    let selected_total: u64 = selected.iter().sum();
    assert!(
        selected_total >= count as u64,
        "reuseport selections {selected:?} < {count}"
    );
    if steering == "xdp" {
        // Both workers got connections and resumed sessions.
        assert!(
            per_worker.iter().all(|&n| n > 0),
            "a worker got nothing: {per_worker:?}"
        );
        assert!(
            resumed_per_worker.iter().all(|&n| n > 0),
            "a worker resumed nothing: {resumed_per_worker:?}"
        );
        let steered = stats.per_worker("steer_xdp_steered_here");
        for (w, &n) in per_worker.iter().enumerate() {
            // At least SYN, ACK, ClientHello and the request per connection.
            assert!(
                steered[w] >= 4 * n as u64,
                "worker {w}: {} segments steered for {n} connections",
                steered[w]
            );
            assert!(
                selected[w] >= n as u64,
                "worker {w}: {} reuseport selections for {n} connections",
                selected[w]
            );
        }
        assert_eq!(stats.total.get("steer_reuseport_fallback"), 0);
        assert_eq!(stats.total.get("steer_xdp_redirect_failed"), 0);
        assert_eq!(stats.total.get("steer_xdp_parse_errors"), 0);
    }
    per_worker
}

#[test]
fn xdp_generic_steers_each_connection_to_the_hashed_worker() {
    end_to_end("xdp", "generic", 300);
}

#[test]
fn xdp_native_steers_each_connection_to_the_hashed_worker() {
    end_to_end("xdp", "native", 300);
}

#[test]
fn xdp_native_on_a_multi_queue_veth_steers_each_connection() {
    const QUEUES: u32 = 4;
    let pair = NetnsPair::create_with_queues(QUEUES);
    assert_eq!(pair.rx_queues_a(), Some(QUEUES), "{}", pair.link_a());
    end_to_end_on(&pair, "xdp", "native", 300, None);
    // The connections really arrived on several receive queues, each run
    // through the XDP program.
    let per_queue = pair.xdp_packets_per_rx_queue();
    eprintln!("XDP packets per receive queue: {per_queue:?}");
    assert_eq!(per_queue.len(), QUEUES as usize, "{per_queue:?}");
    assert!(
        per_queue.iter().filter(|&&n| n > 0).count() >= 2,
        "one receive queue got everything: {per_queue:?}"
    );
    assert!(per_queue.iter().sum::<u64>() >= 4 * 300, "{per_queue:?}");
}

#[test]
fn reuseport_passes_the_end_to_end_test() {
    end_to_end("reuseport", "", 300);
}

#[test]
fn xdp_generic_steers_the_connections_of_a_second_listen_address() {
    end_to_end_at("xdp", "generic", 100, Some(SECOND_PORT));
}

#[test]
fn reuseport_steers_the_connections_of_a_second_listen_address() {
    end_to_end_at("reuseport", "", 100, Some(SECOND_PORT));
}

#[test]
fn none_passes_the_end_to_end_test() {
    end_to_end("none", "", 300);
}

#[test]
fn attach_detach_reattach_leaves_no_program() {
    let pair = NetnsPair::create();
    // SIGTERM: graceful stop, the Steering handle detaches.
    let mut fe = start(&pair, "xdp", "generic", None);
    assert!(pair.xdp_attached(), "{}", pair.link_a());
    let mut keys = vec![fe.flow_key()];
    assert!(
        fe.terminate(Duration::from_secs(15)).is_some(),
        "no exit after SIGTERM\n{}",
        fe.output()
    );
    assert!(
        fe.stderr().contains("XDP program removed from"),
        "{}",
        fe.output()
    );
    assert!(!pair.xdp_attached(), "after SIGTERM: {}", pair.link_a());
    // Re-attach (native this time), then SIGKILL: the bpf_link dies with the process.
    let mut fe = start(&pair, "xdp", "native", None);
    assert!(pair.xdp_attached(), "{}", pair.link_a());
    keys.push(fe.flow_key());
    fe.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair.xdp_attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pair.xdp_attached(), "after SIGKILL: {}", pair.link_a());
    // And once more, generic; it still serves.
    let fe = start(&pair, "xdp", "generic", None);
    assert!(pair.xdp_attached(), "{}", pair.link_a());
    keys.push(fe.flow_key());
    let (conns, failures) = run_clients(&pair, fe.port, 5);
    assert!(failures.is_empty() && conns.len() == 5, "{failures:?}");
    let port = fe.port;
    drop(fe);
    assert_new_key_per_start(&keys, port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair.xdp_attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pair.xdp_attached(), "at the end: {}", pair.link_a());
}

/// Every start drew its own key, and the same 4-tuples land on other
/// workers under them: 64 client ports over 2 workers all agree under two
/// independent keys with probability 2^-64.
fn assert_new_key_per_start(keys: &[FlowHashKey], port: u16) {
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b, "two starts with the same flow hash key");
            let moved = (40000..40064u16)
                .map(|p| FlowKey::v4(ADDR_B.octets(), ADDR_A.octets(), p, port))
                .filter(|k| worker_slot(k, a, 2) != worker_slot(k, b, 2))
                .count();
            assert!(moved > 0, "64 tuples on the same workers under two keys");
        }
    }
}

/// Connections from namespace B, one after the other, until `stop`: each a
/// TLS handshake and a request that must get HTTP 200. Returns (served,
/// failures with their reasons).
fn client_loop(pair: &NetnsPair, port: u16, stop: &AtomicBool) -> (usize, Vec<String>) {
    let addr = SocketAddr::from((ADDR_A, port));
    in_netns(&pair.b, || {
        let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
        let (mut served, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match TlsClient::connect(addr, cfg.clone(), "localhost") {
                Ok(mut c) => {
                    let (resp, _end) =
                        c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
                    if is_http_200(&resp) {
                        served += 1;
                    } else {
                        failures.push(format!("connection {served}: no HTTP 200"));
                    }
                }
                Err(e) => failures.push(format!("connection {served}: {e}")),
            }
        }
        (served, failures)
    })
}

#[test]
fn takeover_hands_the_xdp_link_to_the_successor_without_a_gap() {
    takeover_keeps_xdp_attached("generic");
}

#[test]
fn takeover_hands_a_native_xdp_link_to_the_successor_without_a_gap() {
    takeover_keeps_xdp_attached("native");
}

/// An upgrade through `--takeover` with XDP in `xdp_mode`, under a client
/// loop, checked against the kernel's view of the link.
fn takeover_keeps_xdp_attached(xdp_mode: &str) {
    let pair = NetnsPair::create();
    if xdp_mode == "native" {
        pair.tx_checksum_off_b();
    }
    let opts = options(&pair, "xdp", xdp_mode, None);
    let mut old = NsFrontend::start(&pair.a, PORT, &opts).unwrap_or_else(|e| panic!("{e}"));
    let old_pid = old.pid();
    let old_links = xdp_links_of(old_pid);
    assert_eq!(
        old_links.len(),
        1,
        "XDP links of the old process: {old_links:?}"
    );
    let (link_id, old_prog) = old_links[0];
    assert_eq!(pair.xdp_prog_id(), Some(old_prog), "{}", pair.link_a());

    // Clients and a watcher of the interface run through the whole upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let (new, clients, unattached) = std::thread::scope(|s| {
        let clients = s.spawn(|| client_loop(&pair, PORT, &stop));
        let watcher = s.spawn(|| {
            let mut unattached = 0;
            while !stop.load(Ordering::Relaxed) {
                unattached += usize::from(pair.xdp_prog_id().is_none());
                samples.fetch_add(1, Ordering::Relaxed);
            }
            unattached
        });
        std::thread::sleep(Duration::from_millis(500));
        let new = old.start_takeover(&pair.a, &opts);
        if new.is_ok() {
            std::thread::sleep(Duration::from_millis(500));
            old.terminate(Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);
        let clients = clients.join().expect("client thread");
        (new, clients, watcher.join().expect("watcher thread"))
    });
    let new = new.unwrap_or_else(|e| panic!("successor: {e}\nold: {}", old.output()));
    let (served, failures) = clients;
    eprintln!(
        "{xdp_mode}: through the upgrade: {served} connections served, {} failed; interface sampled {} times, {unattached} without XDP",
        failures.len(),
        samples.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, first {:?}\nold: {}\nnew: {}",
        failures.len(),
        served + failures.len(),
        failures.first(),
        old.output(),
        new.output()
    );
    assert!(served >= 20, "only {served} connections in the upgrade");
    assert_eq!(unattached, 0, "samples of the interface without XDP");
    // The kernel's view: the successor holds the same link (never
    // re-created) with its own program, which is what the interface runs.
    let new_links = xdp_links_of(new.pid());
    assert_eq!(
        new_links.len(),
        1,
        "XDP links of the successor: {new_links:?}"
    );
    assert_eq!(new_links[0].0, link_id, "not the link of the old process");
    assert_ne!(new_links[0].1, old_prog, "the program was not replaced");
    assert_eq!(
        pair.xdp_prog_id(),
        Some(new_links[0].1),
        "{}",
        pair.link_a()
    );
    let line = new.steering_line();
    assert!(
        line.contains(&format!("link taken over from pid {old_pid}"))
            && line.contains("without a gap")
            && line.contains(&format!("xdp ({xdp_mode} on")),
        "summary: {line}"
    );
    assert!(
        old.stderr().contains(&format!("left to pid {}", new.pid())),
        "{}",
        old.output()
    );
    // The successor steers exactly, with its own key.
    let cpus = kernel_cpus(&new);
    let hash_key = new.flow_key();
    let (conns, failures) = run_clients(&pair, PORT, 50);
    assert!(failures.is_empty(), "{failures:?}");
    for c in &conns {
        let key = FlowKey::v4(ADDR_B.octets(), ADDR_A.octets(), c.port, PORT);
        let slot = worker_slot(&key, &hash_key, cpus.len() as u32).unwrap() as usize;
        assert_eq!(kernel_worker(&cpus, c), slot, "port {}", c.port);
    }
    // The link leaves with its last holder.
    drop(new);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair.xdp_attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !pair.xdp_attached(),
        "after the successor: {}",
        pair.link_a()
    );
}

#[test]
fn takeover_from_a_process_without_xdp_attaches_a_new_link_and_says_so() {
    let pair = NetnsPair::create();
    let old = start(&pair, "reuseport", "", None);
    let new = old
        .start_takeover(&pair.a, &options(&pair, "xdp", "generic", None))
        .unwrap_or_else(|e| panic!("successor: {e}"));
    let line = new.steering_line();
    assert!(
        line.contains("new link, none taken over: no XDP link here"),
        "summary: {line}"
    );
    let links = xdp_links_of(new.pid());
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(pair.xdp_prog_id(), Some(links[0].1), "{}", pair.link_a());
}

/// Malformed and unusual frames, Ethernet addressed from B's veth to A's.
fn odd_frames(dst: [u8; 6], src: [u8; 6]) -> Vec<Vec<u8>> {
    let eth = |ethertype: u16| {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    };
    let tcp = |doff: u8| {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&PORT.to_be_bytes());
        t[12] = doff << 4;
        t[13] = 0x02;
        t
    };
    let ipv4 = |ihl: u8, total: u16, payload: &[u8]| {
        let mut ip = vec![0u8; usize::from(ihl.max(5)) * 4];
        ip[0] = 0x40 | ihl;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&ADDR_B.octets());
        ip[16..20].copy_from_slice(&ADDR_A.octets());
        ip.extend_from_slice(payload);
        ip
    };
    let ipv6 = |next: u8, rest: &[u8]| {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        ip[6] = next;
        ip[7] = 64;
        ip[8] = 0xfd;
        ip[23] = 2;
        ip[24] = 0xfd;
        ip[39] = 1;
        ip.extend_from_slice(rest);
        ip
    };
    let with = |mut f: Vec<u8>, rest: &[u8]| {
        f.extend_from_slice(rest);
        f
    };
    let mut hbh_tcp = vec![6u8, 0, 0, 0, 0, 0, 0, 0];
    hbh_tcp.extend(tcp(5));
    let vlan = |inner: u16| {
        let mut t = vec![0x00, 0x07];
        t.extend_from_slice(&inner.to_be_bytes());
        t
    };
    vec![
        // Truncated IPv4 header.
        with(eth(0x0800), &[0x45, 0, 0, 40, 0, 0]),
        // IHL 4 (< 5).
        with(eth(0x0800), &ipv4(4, 40, &tcp(5))),
        // IHL 15 but total length 40.
        with(eth(0x0800), &ipv4(15, 40, &tcp(5))),
        // IHL 6 with a TCP header cut to 10 bytes.
        with(eth(0x0800), &ipv4(6, 34, &tcp(5)[..10])),
        // TCP data offset 2.
        with(eth(0x0800), &ipv4(5, 40, &tcp(2))),
        // Truncated IPv6 header.
        with(eth(0x86DD), &ipv6(6, &tcp(5))[..30]),
        // IPv6 hop-by-hop + TCP (well-formed; to an address A does not have).
        with(eth(0x86DD), &ipv6(0, &hbh_tcp)),
        // IPv6 hop-by-hop header cut off.
        with(eth(0x86DD), &ipv6(0, &[])),
        // IPv6 fragment header.
        with(eth(0x86DD), &ipv6(44, &[6, 0, 0, 1, 0, 0, 0, 1])),
        // VLAN tag cut off.
        with(eth(0x8100), &[0x00]),
        // VLAN + well-formed IPv4 TCP SYN (no VLAN device: dropped later).
        with(with(eth(0x8100), &vlan(0x0800)), &ipv4(5, 40, &tcp(5))),
        // VLAN + IPv4 with IHL 3.
        with(with(eth(0x8100), &vlan(0x0800)), &ipv4(3, 40, &tcp(5))),
        // Two VLAN tags (only one is parsed: not IP, passed).
        with(with(eth(0x88A8), &vlan(0x8100)), &vlan(0x0800)),
    ]
}

#[test]
fn malformed_frames_do_not_break_steering() {
    let pair = NetnsPair::create();
    let fe = start(&pair, "xdp", "generic", None);
    let frames = odd_frames(pair.mac(&pair.a, &pair.if_a), pair.mac(&pair.b, &pair.if_b));
    let malformed = frames
        .iter()
        .filter(|f| parse(&f[..]) == Parsed::Malformed)
        .count();
    assert!(
        malformed >= 9,
        "the frame list lost its malformed frames: {malformed}"
    );
    const ROUNDS: usize = 40;
    let before = fe.stats().total.get("steer_xdp_parse_errors");
    let stream: Vec<Vec<u8>> = (0..ROUNDS).flat_map(|_| frames.iter().cloned()).collect();
    if let Err(e) = pair.send_frames_from_b(&stream) {
        panic!("sending raw frames from {}: {e}", pair.b);
    }
    // Valid connections right after the stream are still steered.
    let (conns, failures) = run_clients(&pair, fe.port, 100);
    assert!(failures.is_empty(), "{failures:?}\n{}", fe.output());
    let cpus = kernel_cpus(&fe);
    let hash_key = fe.flow_key();
    for c in &conns {
        let key = FlowKey::v4(ADDR_B.octets(), ADDR_A.octets(), c.port, fe.port);
        let slot = worker_slot(&key, &hash_key, cpus.len() as u32).unwrap() as usize;
        let worker = kernel_worker(&cpus, c);
        assert_eq!(
            worker, slot,
            "port {} served by worker {worker} (the kernel's view), hash says {slot}",
            c.port
        );
    }
    let stats = fe.stats();
    let errors = stats.total.get("steer_xdp_parse_errors") - before;
    // Summed over the workers' CPUs (2 workers here on this 2-CPU box).
    assert_eq!(
        errors,
        (malformed * ROUNDS) as u64,
        "parse errors counted vs malformed frames sent"
    );
}

#[test]
fn unusable_xdp_falls_back_as_configured() {
    let pair = NetnsPair::create();
    let base = [
        ("net.steering", "xdp"),
        ("net.xdp.interface", "tfnosuch0"),
        ("worker.count", "2"),
    ];
    let with = |fallback: &'static str| {
        let mut o = base.to_vec();
        o.push(("net.steering.fallback", fallback));
        o
    };
    let fe = NsFrontend::start(&pair.a, PORT, &with("reuseport")).unwrap_or_else(|e| panic!("{e}"));
    let line = fe.steering_line();
    assert!(
        line.contains("reuseport (SK_REUSEPORT")
            && line.contains("xdp failed")
            && line.contains("tfnosuch0"),
        "{line}"
    );
    drop(fe);
    let fe = NsFrontend::start(&pair.a, PORT, &with("none")).unwrap_or_else(|e| panic!("{e}"));
    let line = fe.steering_line();
    assert!(
        line.contains("none (kernel SO_REUSEPORT hash") && line.contains("xdp failed"),
        "{line}"
    );
    drop(fe);
    let err = NsFrontend::start(&pair.a, PORT, &with("fail"))
        .map(|_| ())
        .expect_err("fallback = fail must stop");
    assert!(
        err.contains("net.steering = xdp is not possible") && err.contains("tfnosuch0"),
        "{err}"
    );
    // xdp without an interface is a configuration error (exit 2). Its own
    // port, control socket and files, in case it started anyway.
    let dir = temp_dir();
    let run = run_command(dir.path(), None, &[("net.steering", "xdp")]);
    let out = run_cmd(run.cmd, b"", CLI_TIMEOUT);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("net.xdp.interface"),
        "{}",
        out.describe()
    );
}
