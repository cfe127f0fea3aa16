//! Real third-party clients (Debian's openssl s_client and curl) against tlsfront
//! with its built-in upstream.

use std::time::Duration;
use tlsfront_tests::*;

fn s_client(version_flag: &str, expect_protocol: &str) {
    let fe = Frontend::start(&[]);
    let mut cmd = tlsfront_tests::prereq::tool("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", fe.port),
        "-servername",
        "localhost",
        version_flag,
        // keep reading after stdin's EOF until the server closes
        "-ign_eof",
    ]);
    let out = run_cmd(cmd, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(20));
    let ctx = || {
        format!(
            "openssl s_client {version_flag}:\n{}\n{}",
            out.describe(),
            fe.output()
        )
    };
    assert!(
        !out.timed_out(),
        "s_client did not finish within 20 s\n{}",
        ctx()
    );
    let protocol_line = out.stdout.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("Protocol") && l.ends_with(expect_protocol))
            || l.starts_with(&format!("New, {expect_protocol},"))
    });
    assert!(
        protocol_line,
        "no line reporting {expect_protocol}\n{}",
        ctx()
    );
    assert!(
        out.stdout.contains("HTTP/1.1 200"),
        "no HTTP 200 from the built-in upstream\n{}",
        ctx()
    );
    assert_eq!(out.code(), Some(0), "s_client exit code\n{}", ctx());
}

#[test]
fn openssl_s_client_tls12_gets_http_200_from_builtin_upstream() {
    s_client("-tls1_2", "TLSv1.2");
}

#[test]
fn openssl_s_client_tls13_gets_http_200_from_builtin_upstream() {
    s_client("-tls1_3", "TLSv1.3");
}

#[test]
fn curl_gets_http_200_with_embedded_defaults() {
    // Only the port and the control socket are set: default self-signed cert,
    // built-in upstream.
    let fe = Frontend::start(&[]);
    let mut cmd = tlsfront_tests::prereq::tool("curl");
    cmd.args([
        "-k",
        "-sS",
        "-i",
        "--max-time",
        "10",
        &format!("https://127.0.0.1:{}/", fe.port),
    ]);
    let out = run_cmd(cmd, b"", Duration::from_secs(20));
    let ctx = || format!("{}\n{}", out.describe(), fe.output());
    assert_eq!(out.code(), Some(0), "curl exit code\n{}", ctx());
    assert!(
        out.stdout.starts_with("HTTP/1.1 200") || out.stdout.starts_with("HTTP/1.0 200"),
        "curl did not get HTTP 200\n{}",
        ctx()
    );
}
