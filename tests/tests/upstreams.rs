//! Upstream choice: `upstream.addr` lists servers (`IP:PORT`, `unix:/path`)
//! used round robin; a server whose connect fails (refused, or no answer
//! within `upstream.connect_timeout`) is skipped for `upstream.down_time`
//! and the connection goes to the next one, so a dead server costs no
//! client; `tls.sni.<name>.upstream` sends a name elsewhere; all of it
//! live-settable. Judged by which real upstream server answered each real
//! TLS client.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tlsfront_tests::{
    client_config, tlsfront_cmd, ClientSpec, Frontend, RefusingPort, TlsClient, Trust, Upstream,
};

/// A server that reads the request and answers its own name.
fn named(name: &'static str) -> Upstream {
    Upstream::start(move |mut s| answer(&mut s, name))
}

fn answer(s: &mut (impl Read + Write), name: &str) {
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf);
    let _ = s.write_all(name.as_bytes());
}

/// Which server answered one TLS connection to `fe` (SNI `sni`).
fn served_by(fe: &Frontend, sni: &str) -> String {
    let cfg = client_config(&ClientSpec::new(Trust::AnyCert));
    let mut c = TlsClient::connect(fe.addr(), Arc::clone(&cfg), sni)
        .unwrap_or_else(|e| panic!("TLS to {}: {e}\n{}", fe.addr(), fe.output()));
    let (resp, _) = c.request(b"hello", Duration::from_secs(10));
    String::from_utf8_lossy(&resp).into_owned()
}

fn one_worker(upstream: &str) -> Frontend {
    Frontend::start(&[("worker.count", "1"), ("upstream.addr", upstream)])
}

#[test]
fn connections_take_turns_over_the_listed_servers() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let list = format!(
        "{}, {},{}",
        a.addr_string(),
        b.addr_string(),
        c.addr_string()
    );
    let fe = one_worker(&list);
    let answers: Vec<String> = (0..12).map(|_| served_by(&fe, "localhost")).collect();
    for name in ["a", "b", "c"] {
        assert_eq!(
            answers.iter().filter(|x| *x == name).count(),
            4,
            "round robin over three servers: {answers:?}"
        );
    }
}

#[test]
fn a_refusing_server_costs_no_client_and_is_skipped_while_down() {
    let dead = RefusingPort::new();
    let live = named("live");
    let list = format!("{}, {}", dead.addr_string(), live.addr_string());
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("upstream.addr", &list),
        ("upstream.down_time", "60s"),
    ]);
    for i in 0..10 {
        assert_eq!(
            served_by(&fe, "localhost"),
            "live",
            "connection {i}\n{}",
            fe.output()
        );
    }
    assert_eq!(live.accepted.load(std::sync::atomic::Ordering::SeqCst), 10);
    let total = fe.stats().total;
    assert_eq!(
        total.get("upstream_retries"),
        1,
        "the refusing server must be tried once, then skipped for upstream.down_time"
    );
    assert_eq!(total.get("upstream_errors"), 0, "no client lost");
}

#[test]
fn a_server_that_never_answers_costs_no_client() {
    // A listener whose backlog is full: SYNs go unanswered (a blackhole).
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let sock = socket2::SockRef::from(&hole);
    sock.listen(0).expect("listen 0");
    let _fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&hole_addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let live = named("live");
    let list = format!("{hole_addr}, {}", live.addr_string());
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("upstream.addr", &list),
        ("upstream.connect_timeout", "1s"),
        ("upstream.down_time", "60s"),
    ]);
    let started = Instant::now();
    let first = served_by(&fe, "localhost");
    let first_took = started.elapsed();
    assert_eq!(first, "live", "{}", fe.output());
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(served_by(&fe, "localhost"), "live", "connection {i}");
    }
    eprintln!(
        "first connection (met the blackhole): {first_took:?}; five more: {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < first_took,
        "once down, the blackholed server must not be waited for again"
    );
}

#[test]
fn a_unix_socket_server_is_an_upstream() {
    let dir = tlsfront_tests::temp_dir();
    let path = dir.path().join("app.sock");
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            answer(&mut s, "unix");
            let _ = s.shutdown(Shutdown::Write);
        }
    });
    let fe = one_worker(&format!("unix:{}", path.display()));
    assert_eq!(served_by(&fe, "localhost"), "unix", "{}", fe.output());
}

#[test]
fn a_server_name_can_have_servers_of_its_own_and_they_change_live() {
    let (default, api, wild, other) = (
        named("default"),
        named("api"),
        named("wild"),
        named("other"),
    );
    let api_key = "tls.sni.api.example.com.upstream";
    let fe = Frontend::start(&[
        ("worker.count", "1"),
        ("upstream.addr", &default.addr_string()),
        (api_key, &api.addr_string()),
        ("tls.sni.*.apps.example.com.upstream", &wild.addr_string()),
    ]);
    assert_eq!(served_by(&fe, "api.example.com"), "api");
    assert_eq!(
        served_by(&fe, "API.Example.COM"),
        "api",
        "names match case-insensitively"
    );
    assert_eq!(served_by(&fe, "one.apps.example.com"), "wild");
    assert_eq!(
        served_by(&fe, "a.b.apps.example.com"),
        "default",
        "a wildcard is one label"
    );
    assert_eq!(served_by(&fe, "localhost"), "default");

    let sock = fe.socket.display().to_string();
    let set = tlsfront_cmd(&[
        "sysctl",
        "--socket",
        &sock,
        "-w",
        &format!("{api_key}={}", other.addr_string()),
    ]);
    assert_eq!(set.code(), Some(0), "{}", set.describe());
    assert_eq!(
        served_by(&fe, "api.example.com"),
        "other",
        "live change of a name's upstream"
    );
    let set = tlsfront_cmd(&[
        "sysctl",
        "--socket",
        &sock,
        "-w",
        &format!("upstream.addr={}", other.addr_string()),
    ]);
    assert_eq!(set.code(), Some(0), "{}", set.describe());
    assert_eq!(
        served_by(&fe, "localhost"),
        "other",
        "live change of upstream.addr"
    );
}

#[test]
fn a_bad_server_list_is_refused_naming_the_key_and_the_running_one_stays() {
    let a = named("a");
    let fe = one_worker(&a.addr_string());
    let sock = fe.socket.display().to_string();
    for bad in [
        "127.0.0.1:1,nowhere",
        "unix:relative.sock",
        "127.0.0.1:9, 127.0.0.1:9",
    ] {
        let set = tlsfront_cmd(&[
            "sysctl",
            "--socket",
            &sock,
            "-w",
            &format!("upstream.addr={bad}"),
        ]);
        assert_ne!(set.code(), Some(0), "{bad:?} must be refused");
        assert!(
            format!("{}{}", set.stdout, set.stderr).contains("upstream.addr"),
            "the error names the key: {}",
            set.describe()
        );
    }
    assert_eq!(served_by(&fe, "localhost"), "a");
}
