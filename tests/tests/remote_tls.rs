//! `cache.remote = rediss://USER:PASS@…`: TLS to a real redis-server
//! (started with `--tls-port`), its certificate verified against
//! `cache.remote.ca`, an ACL user allowed only what tlsfront needs; the
//! password never shows in `sysctl -a` or in the logs.
//!
//! Needs redis-server built with TLS (Debian's is) and openssl.

use std::time::{Duration, Instant};

use tlsfront_tests::redis::LocalRedis;
use tlsfront_tests::sessions::session_id_client;
use tlsfront_tests::{tlsfront_cmd, write_file, Frontend, Pki, TlsClient};

const PASSWORD: &str = "Zq7-acl-secret-Xw";

/// PEM of a DER certificate, by openssl.
fn pem_of(dir: &std::path::Path, name: &str, der: &[u8]) -> std::path::PathBuf {
    let der_path = dir.join(format!("{name}.der"));
    std::fs::write(&der_path, der).expect("write DER");
    let pem_path = dir.join(format!("{name}.pem"));
    let out = tlsfront_tests::prereq::tool("openssl")
        .args(["x509", "-inform", "der", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem_path)
        .output()
        .expect("openssl x509");
    assert!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pem_path
}

fn start_redis(dir: &std::path::Path, pki: &Pki) -> LocalRedis {
    let leaf = pki.leaf(&["127.0.0.1"]);
    let (cert, key) = leaf.write(dir, "redis");
    let ca = pem_of(dir, "redis-ca", &pki.ca_der);
    LocalRedis::spawn(dir, |cmd, port| {
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--tls-auth-clients", "no"])
            // Only tlsfront's user, allowed only its keys and commands.
            .args(["--user", "default", "off"])
            .args([
                "--user",
                "tlsfront",
                "on",
                &format!(">{PASSWORD}"),
                "~tlsfront:*",
            ])
            .args(["+get", "+getdel", "+set", "+ping", "+hello", "+auth"]);
    })
}

/// Waits until `f` holds the session `from` gave, then offers it to `to`:
/// whether the client saw it resume.
fn resumes_across(from: &Frontend, to: &Frontend) -> bool {
    let cfg = session_id_client();
    let first = TlsClient::connect(from.addr(), cfg.clone(), "localhost").expect("full handshake");
    assert!(!first.resumed());
    drop(first);
    // The issuer's write reaches Redis asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if from.stats().total.get("remote_puts") >= 1 || Instant::now() > deadline {
            break;
        }
    }
    let second = TlsClient::connect(to.addr(), cfg, "localhost").expect("second handshake");
    second.resumed()
}

#[test]
fn sessions_travel_over_tls_to_redis_as_an_acl_user_whose_password_is_never_shown() {
    tlsfront_tests::prereq::require(&[
        tlsfront_tests::prereq::Need::Program("redis-server"),
        tlsfront_tests::prereq::Need::Program("openssl"),
    ]);
    let dir = tlsfront_tests::temp_dir();
    let pki = Pki::new();
    let redis = start_redis(dir.path(), &pki);
    let ca = pem_of(dir.path(), "ca", &pki.ca_der);
    let secret = write_file(dir.path(), "fleet.secret", &"k".repeat(40));
    let secret = format!("file:{}", secret.display());
    let url = format!("rediss://tlsfront:{PASSWORD}@{}", redis.addr);
    let ca_opt = ca.display().to_string();
    let opts = [
        ("worker.count", "1"),
        ("cache.remote", url.as_str()),
        ("cache.remote.secret", secret.as_str()),
        ("cache.remote.ca", ca_opt.as_str()),
        ("cache.remote.timeout", "500ms"),
        ("tls.protocols", "1.2"),
        ("log.level", "debug"),
    ];
    let a = Frontend::start(&opts);
    let b = Frontend::start(&opts);
    assert!(
        resumes_across(&a, &b),
        "a session made on A must resume on B through rediss://"
    );
    assert!(b.stats().total.get("remote_hits") >= 1);

    let sock = b.socket.display().to_string();
    let all = tlsfront_cmd(&["sysctl", "--socket", &sock, "-a"]);
    assert_eq!(all.code(), Some(0), "{}", all.describe());
    assert!(
        all.stdout.contains("cache.remote = rediss://***@"),
        "{}",
        all.stdout
    );
    for (what, text) in [
        ("sysctl -a", all.stdout.clone()),
        ("A's log", a.output()),
        ("B's log", b.output()),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the Redis password:\n{text}"
        );
    }
}

#[test]
fn a_redis_whose_certificate_the_ca_did_not_sign_is_not_used() {
    tlsfront_tests::prereq::require(&[
        tlsfront_tests::prereq::Need::Program("redis-server"),
        tlsfront_tests::prereq::Need::Program("openssl"),
    ]);
    let dir = tlsfront_tests::temp_dir();
    let redis = start_redis(dir.path(), &Pki::new());
    // Another CA than the one that signed Redis's certificate.
    let wrong_ca = pem_of(dir.path(), "other-ca", &Pki::new().ca_der);
    let secret = write_file(dir.path(), "fleet.secret", &"k".repeat(40));
    let secret = format!("file:{}", secret.display());
    let url = format!("rediss://tlsfront:{PASSWORD}@{}", redis.addr);
    let ca_opt = wrong_ca.display().to_string();
    let opts = [
        ("worker.count", "1"),
        ("cache.remote", url.as_str()),
        ("cache.remote.secret", secret.as_str()),
        ("cache.remote.ca", ca_opt.as_str()),
        ("tls.protocols", "1.2"),
    ];
    let a = Frontend::start(&opts);
    let b = Frontend::start(&opts);
    assert!(
        !resumes_across(&a, &b),
        "a session must not travel through an unverified Redis"
    );
    assert_eq!(b.stats().total.get("remote_hits"), 0);
    assert_eq!(a.stats().total.get("remote_puts"), 0);
    assert!(
        a.stats().total.get("remote_errors") >= 1,
        "the failed verification must be counted"
    );
}
