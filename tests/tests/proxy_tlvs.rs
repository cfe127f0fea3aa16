//! `upstream.proxy_protocol = 2` tells the upstream about the TLS
//! connection in TLVs, as hitch and HAProxy do: ALPN, AUTHORITY (the SNI),
//! and SSL (TLS version, cipher, whether a client certificate was
//! presented and verified). Decoded by a reader of our own
//! (`tests/src/pp2.rs`) and, for the authority and the client address, by a
//! real HAProxy (`accept-proxy`, logging `%[fc_pp_authority]` and `%ci:%cp`).
//!
//! Needs haproxy (scripts/setup.sh).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use tlsfront_tests::fleet_support::HAPROXY;
use tlsfront_tests::pp2;
use tlsfront_tests::prereq::{require, Need};
use tlsfront_tests::{client_config, write_file, ClientSpec, Frontend, ReservedPort, TlsClient, Trust, Upstream};

/// tlsfront offering ALPN, sending v2 headers to `upstream`.
fn tlsfront_to(upstream: &str) -> Frontend {
    Frontend::start(&[
        ("worker.count", "1"),
        ("tls.alpn", "h2,http/1.1"),
        ("upstream.addr", upstream),
        ("upstream.proxy_protocol", "2"),
    ])
}

/// One TLS 1.3 connection for `sni` with ALPN http/1.1; returns the
/// client's address.
fn connect(fe: &Frontend, sni: &str) -> SocketAddr {
    let spec = ClientSpec::new(Trust::AnyCert).alpn(&["http/1.1"]).versions(tlsfront_tests::Versions::Tls13);
    let mut c = TlsClient::connect(fe.addr(), client_config(&spec), sni)
        .unwrap_or_else(|e| panic!("TLS: {e}\n{}", fe.output()));
    let me = c.sock.local_addr().expect("addr");
    let _ = c.request(b"hello", Duration::from_secs(5));
    me
}

#[test]
fn the_upstream_learns_alpn_sni_tls_version_cipher_and_that_no_client_certificate_came() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Upstream::start(move |mut s| {
        let header = pp2::read(&mut s);
        let _ = s.write_all(b"ok");
        let _ = tx.lock().unwrap().send(header);
    });
    let fe = tlsfront_to(&upstream.addr_string());
    let me = connect(&fe, "api.example.com");
    let pp = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream got a connection")
        .unwrap_or_else(|e| panic!("the header does not decode: {e}"));
    assert_eq!(pp.source, Some(me), "the client's address");
    assert_eq!(pp.text(0x01).as_deref(), Some("http/1.1"), "ALPN: {pp:?}");
    assert_eq!(pp.text(0x02).as_deref(), Some("api.example.com"), "AUTHORITY: {pp:?}");
    assert_eq!(pp.ssl, Some((0x01, 0)), "SSL: over TLS, no client certificate, verify 0: {pp:?}");
    assert_eq!(pp.text(0x21).as_deref(), Some("TLSv1.3"), "SSL_VERSION: {pp:?}");
    assert!(
        pp.text(0x23).is_some_and(|c| c.starts_with("TLS_")),
        "SSL_CIPHER names a TLS 1.3 suite as OpenSSL does: {pp:?}"
    );
    assert_eq!(pp.text(0x22), None, "no SSL_CN without a client certificate");
}

/// HAProxy in `mode tcp` reading v2 headers (`accept-proxy`) and logging
/// what it decoded, forwarding to `backend`.
struct Haproxy {
    child: Child,
    port: ReservedPort,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backend: SocketAddr) -> Haproxy {
        require(&[Need::File(HAPROXY, "haproxy, from scripts/setup.sh")]);
        let dir = tlsfront_tests::temp_dir();
        let port = ReservedPort::new();
        let conf = format!(
            "global\n    log stdout format raw local0\n    maxconn 256\n\
             defaults\n    mode tcp\n    log global\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend in\n    bind 127.0.0.1:{} accept-proxy\n\
             \x20   log-format \"authority=%[fc_pp_authority] client=%ci:%cp\"\n    default_backend up\n\
             backend up\n    server up {backend}\n",
            port.port
        );
        let path = write_file(dir.path(), "haproxy.cfg", &conf);
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(HAPROXY)
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .expect("spawn haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&port.addr(), Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_accept_proxy_decodes_the_authority_and_client_tlsfront_sends() {
    let backend = Upstream::start(|mut s| {
        let _ = s.write_all(b"ok");
    });
    let haproxy = Haproxy::start(backend.addr);
    let fe = tlsfront_to(&haproxy.port.addr().to_string());
    let me = connect(&fe, "api.example.com");
    let want = format!("authority=api.example.com client={me}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !haproxy.log().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "HAProxy did not log {want:?}:\n{}\n{}",
            haproxy.log(),
            fe.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
