//! `net.proxy_protocol = 1`: tlsfront behind a real L4 balancer that sends
//! the PROXY protocol — HAProxy (`send-proxy-v2`) and nginx `stream`
//! (`proxy_protocol on`, v1). The client connects from 127.0.0.2, the
//! balancers from 127.0.0.1; tlsfront passes the client's address on with
//! `upstream.proxy_protocol = 1` to a real nginx that requires the PROXY
//! protocol and answers with the address it was told
//! (`$proxy_protocol_addr:$proxy_protocol_port`), and logs it in its
//! access log. A peer outside `net.proxy_protocol.trusted`, and a
//! connection without a valid header, are closed and counted.
//!
//! Needs haproxy, nginx with the stream module (scripts/setup.sh).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tlsfront_tests::fleet::STREAM_MODULE;
use tlsfront_tests::haproxy::Haproxy;
use tlsfront_tests::prereq::{require, Need};
use tlsfront_tests::{client_config, ClientSpec, Frontend, TlsClient, Trust};
use tlsfront_tests::{logs::access_line_for, nginx::Nginx};

/// HAProxy in `mode tcp` forwarding to `to` with `send-proxy-v2`.
fn haproxy_to(to: SocketAddr) -> Haproxy {
    Haproxy::start("", |port| {
        format!(
            "frontend in\n    bind 127.0.0.1:{port}\n    default_backend tf\n\
             backend tf\n    server tf {to} send-proxy-v2\n"
        )
    })
}

/// nginx `stream` on a reserved port forwarding to `to` with a v1 header.
fn nginx_stream(to: SocketAddr) -> Nginx {
    require(&[Need::File(
        STREAM_MODULE,
        "nginx's stream module, libnginx-mod-stream",
    )]);
    Nginx::start_conf(|d, port| {
        format!(
            "load_module {STREAM_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             stream {{\n    server {{\n        listen 127.0.0.1:{port};\n        proxy_pass {to};\n        proxy_protocol on;\n    }}\n}}\n"
        )
    })
    .unwrap_or_else(|e| panic!("nginx stream: {e}"))
}

/// tlsfront reading PROXY headers from 127.0.0.1 and sending v1 on to
/// `upstream`, with the access log on.
fn tlsfront_behind_a_balancer(upstream: &str) -> Frontend {
    Frontend::start(&[
        ("worker.count", "1"),
        ("net.proxy_protocol", "1"),
        ("net.proxy_protocol.trusted", "127.0.0.1/32, ::1"),
        ("upstream.addr", upstream),
        ("upstream.proxy_protocol", "1"),
        ("log.access", "1"),
    ])
}

/// A TLS connection from 127.0.0.2 to `addr`, one HTTP request: the
/// client's own address and the response body.
fn request_from_127_0_0_2(addr: SocketAddr) -> (SocketAddr, String) {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("bind 127.0.0.2");
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let sock: TcpStream = sock.into();
    let me = sock.local_addr().expect("local addr");
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    let mut c = TlsClient::handshake_over(sock, Arc::clone(&cfg), "localhost")
        .expect("TLS through the balancer");
    let (resp, _) = c.request(
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    (me, String::from_utf8_lossy(&resp).into_owned())
}

fn the_client_address_reaches_the_upstream_and_the_log(fe: &Frontend, balancer: SocketAddr) {
    let (me, resp) = request_from_127_0_0_2(balancer);
    assert!(
        resp.contains(&format!("pp={}:{}", me.ip(), me.port())),
        "the upstream must be told the client's address {me}, not the balancer's: {resp:?}\n{}",
        fe.output()
    );
    let line = access_line_for(fe, me);
    assert_eq!(line.field("client"), Some(me.to_string().as_str()));
    let t = fe.stats().total;
    assert_eq!((t.get("proxy_invalid"), t.get("proxy_untrusted")), (0, 0));
}

#[test]
fn behind_haproxy_send_proxy_v2_the_upstream_and_the_access_log_see_the_client() {
    let consumer = Nginx::start().expect("nginx PROXY consumer");
    let fe = tlsfront_behind_a_balancer(&consumer.addr_string());
    let haproxy = haproxy_to(fe.addr());
    the_client_address_reaches_the_upstream_and_the_log(&fe, haproxy.addr());
}

#[test]
fn behind_nginx_stream_proxy_protocol_on_the_upstream_and_the_access_log_see_the_client() {
    let consumer = Nginx::start().expect("nginx PROXY consumer");
    let fe = tlsfront_behind_a_balancer(&consumer.addr_string());
    let balancer = nginx_stream(fe.addr());
    the_client_address_reaches_the_upstream_and_the_log(
        &fe,
        balancer.addr_string().parse().unwrap(),
    );
}

#[test]
fn a_peer_outside_the_trusted_networks_is_closed_and_counted() {
    let consumer = Nginx::start().expect("nginx PROXY consumer");
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("net.proxy_protocol", "1"),
        ("net.proxy_protocol.trusted", "10.0.0.0/8"),
        ("upstream.addr", &consumer.addr_string()),
    ]);
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    assert!(
        TlsClient::connect(fe.addr(), cfg, "localhost").is_err(),
        "an untrusted peer must not be served"
    );
    let (_, ok) = fe.wait_stats(Duration::from_secs(5), |s| {
        s.total.get("proxy_untrusted") == 1
    });
    assert!(ok, "proxy_untrusted must count it\n{}", fe.output());
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_and_counted() {
    let consumer = Nginx::start().expect("nginx PROXY consumer");
    let fe = tlsfront_behind_a_balancer(&consumer.addr_string());
    // TLS straight away: no PROXY header.
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    assert!(
        TlsClient::connect(fe.addr(), cfg, "localhost").is_err(),
        "no header, no service"
    );
    let (_, ok) = fe.wait_stats(Duration::from_secs(5), |s| {
        s.total.get("proxy_invalid") == 1
    });
    assert!(ok, "proxy_invalid must count it\n{}", fe.output());
}

#[test]
fn proxy_protocol_on_without_trusted_networks_does_not_start() {
    let out = tlsfront_tests::tlsfront_cmd(&["check", "-o", "net.proxy_protocol=1"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("net.proxy_protocol.trusted"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_trusted_peer_that_resets_at_once_is_not_counted_as_untrusted() {
    // A balancer aborts its side as soon as its own client does (HAProxy
    // relays a client's RST): by the time tlsfront looks at the peer the
    // connection may be gone, which must not read as a stranger.
    let consumer = Nginx::start().expect("nginx PROXY consumer");
    let fe = tlsfront_behind_a_balancer(&consumer.addr_string());
    for _ in 0..300 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.connect_timeout(&fe.addr().into(), Duration::from_secs(5))
            .expect("connect");
        // Close with RST: linger on, zero seconds.
        sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        drop(sock);
    }
    // Then a real balanced client, so the counters are read after all of
    // the above were accepted.
    let balancer = nginx_stream(fe.addr());
    let (me, resp) = request_from_127_0_0_2(balancer.addr_string().parse().unwrap());
    assert!(
        resp.contains(&format!("pp={}:{}", me.ip(), me.port())),
        "{resp:?}"
    );
    let t = fe.stats().total;
    assert_eq!(t.get("proxy_untrusted"), 0, "{t:?}\n{}", fe.output());
}
