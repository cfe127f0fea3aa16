//! A standard TLS scanner, sslyze (installed by scripts/setup.sh into its
//! own virtualenv), against a tlsfront with an ECDSA certificate: no
//! protocol below TLS 1.2, only forward-secret AEAD cipher suites, secure
//! renegotiation without client-initiated renegotiation, no compression,
//! not vulnerable to Heartbleed, CCS injection or ROBOT, downgrade
//! protection (TLS_FALLBACK_SCSV), groups X25519/P-256/P-384 only,
//! extended master secret, no 0-RTT, no OCSP stapling, and TLS 1.2
//! resumption by session ID (sslyze) and by ticket (openssl s_client). scripts/tls-scan.sh runs the same scanner by hand and prints
//! its summary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tlsfront_tests::openssl_client::{lines_starting, s_client};
use tlsfront_tests::*;

/// Resumptions sslyze attempts with each mechanism.
const RESUMPTIONS: u64 = 5;

/// `$TLSFRONT_SSLYZE`, else the virtualenv scripts/setup.sh makes.
fn sslyze() -> PathBuf {
    if let Some(p) = std::env::var_os("TLSFRONT_SSLYZE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let path = PathBuf::from(home).join(".local/share/tlsfront/sslyze/bin/sslyze");
    tlsfront_tests::prereq::require(&[tlsfront_tests::prereq::Need::File(
        path.to_str().expect("UTF-8 HOME"),
        "sslyze: scripts/setup.sh installs it from PyPI; or point TLSFRONT_SSLYZE at one",
    )]);
    path
}

/// The `result` of scan command `name`, which must have completed.
fn result<'a>(scan: &'a Value, name: &str) -> &'a Value {
    let command = &scan[name];
    assert_eq!(
        command["status"], "COMPLETED",
        "sslyze command {name} did not complete: {command:#}"
    );
    &command["result"]
}

/// Names of the cipher suites the server accepted in `name` (e.g.
/// `tls_1_2_cipher_suites`).
fn accepted(scan: &Value, name: &str) -> Vec<String> {
    result(scan, name)["accepted_cipher_suites"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no accepted_cipher_suites array"))
        .iter()
        .map(|s| {
            s["cipher_suite"]["name"]
                .as_str()
                .expect("cipher suite name")
                .to_string()
        })
        .collect()
}

#[test]
fn sslyze_finds_only_modern_tls() {
    let dir = temp_dir();
    let leaf = Pki::new().leaf(&["localhost"]); // ECDSA P-256
    let (cert, key) = leaf.write(dir.path(), "leaf");
    let fe = Frontend::start(&[
        ("tls.cert", cert.to_str().unwrap()),
        ("tls.key", key.to_str().unwrap()),
    ]);
    let json = dir.path().join("sslyze.json");

    let mut cmd = Command::new(sslyze());
    cmd.arg(format!("--json_out={}", json.display()))
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--reneg",
            "--compression",
            "--heartbleed",
            "--openssl_ccs",
            "--robot",
            "--fallback",
            "--resum",
            "--elliptic_curves",
            "--ems",
            "--early_data",
            "--certinfo",
        ])
        .arg(format!("--resum_attempts={RESUMPTIONS}"))
        .arg(format!("127.0.0.1:{}", fe.port));
    let out = run_cmd(cmd, b"", Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "sslyze failed:\n{}", out.describe());
    let text = std::fs::read_to_string(&json).expect("sslyze JSON output");
    let report: Value = serde_json::from_str(&text).expect("sslyze JSON parses");
    let server = &report["server_scan_results"][0];
    assert_eq!(
        server["scan_status"],
        "COMPLETED",
        "sslyze could not scan tlsfront: {server:#}\n{}",
        fe.output()
    );
    let scan = &server["scan_result"];

    // Protocols: nothing below TLS 1.2; TLS 1.2 and 1.3 both offered.
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(accepted(scan, old), Vec::<String>::new(), "{old} accepted");
    }
    let tls12 = accepted(scan, "tls_1_2_cipher_suites");
    let tls13 = accepted(scan, "tls_1_3_cipher_suites");
    assert!(!tls12.is_empty(), "TLS 1.2 not accepted");
    assert!(!tls13.is_empty(), "TLS 1.3 not accepted");

    // Cipher suites: forward secrecy (ECDHE in TLS 1.2; every TLS 1.3 suite
    // is), AEAD only: no CBC, RC4, 3DES, NULL, export or anonymous suites.
    for suite in tls12.iter().chain(&tls13) {
        let weak = ["CBC", "RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "MD5"];
        assert!(
            !weak.iter().any(|w| suite.contains(w)),
            "weak cipher suite accepted: {suite}"
        );
        assert!(
            suite.starts_with("TLS_ECDHE_")
                || (suite.starts_with("TLS_") && !suite.contains("_WITH_")),
            "cipher suite without forward secrecy accepted: {suite}"
        );
    }

    // Renegotiation: tlsfront (rustls) refuses it, and says so securely.
    let reneg = result(scan, "session_renegotiation");
    assert_eq!(reneg["supports_secure_renegotiation"], true, "{reneg:#}");
    assert_eq!(
        reneg["is_vulnerable_to_client_renegotiation_dos"], false,
        "{reneg:#}"
    );

    // The classic vulnerabilities.
    assert_eq!(
        result(scan, "tls_compression")["supports_compression"],
        false
    );
    assert_eq!(
        result(scan, "heartbleed")["is_vulnerable_to_heartbleed"],
        false
    );
    assert_eq!(
        result(scan, "openssl_ccs_injection")["is_vulnerable_to_ccs_injection"],
        false
    );
    let robot = result(scan, "robot")["robot_result"].as_str().unwrap_or("");
    assert!(robot.starts_with("NOT_VULNERABLE"), "ROBOT: {robot}");
    assert_eq!(
        result(scan, "tls_fallback_scsv")["supports_fallback_scsv"],
        true
    );

    // Key exchange groups: exactly X25519, P-256 and P-384.
    let mut groups: Vec<String> = result(scan, "elliptic_curves")["supported_curves"]
        .as_array()
        .expect("supported_curves")
        .iter()
        .map(|c| c["name"].as_str().expect("curve name").to_string())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        ["X25519", "secp256r1", "secp384r1"],
        "supported groups"
    );
    assert_eq!(
        result(scan, "tls_extended_master_secret")["supports_ems_extension"],
        true,
        "extended master secret"
    );
    // No 0-RTT unless tls.early_data_max is set (it is not here).
    assert_eq!(
        result(scan, "tls_1_3_early_data")["supports_early_data"],
        false,
        "0-RTT accepted with the default configuration"
    );
    // No OCSP stapling (not implemented): no OCSP response is sent.
    let deployment = &result(scan, "certificate_info")["certificate_deployments"][0];
    assert!(
        deployment.is_object() && deployment["ocsp_response"].is_null(),
        "OCSP response stapled, or no certificate deployment: {deployment:#}"
    );

    // Resumption by session ID, as sslyze (the client) saw it, and
    // tlsfront's counters checked against it.
    let resum = result(scan, "session_resumption");
    assert_eq!(
        resum["session_id_resumption_result"], "FULLY_SUPPORTED",
        "{resum:#}"
    );
    assert_eq!(
        resum["session_id_successful_resumptions_count"], RESUMPTIONS,
        "{resum:#}"
    );
    let stats = fe.stats();
    assert!(
        stats.total.get("resumed_tls12_id") >= RESUMPTIONS,
        "sslyze resumed {RESUMPTIONS} session IDs, the server counted: {:?}",
        stats.total
    );

    // Resumption by ticket. sslyze counts one only when the server sends
    // no new ticket; rustls renews the ticket on every TLS 1.2 resumption
    // (RFC 5077 §3.3 allows it), so sslyze reports tickets as unsupported.
    // Another client shows it: openssl s_client saves the session with its
    // ticket and offers it again; every reconnect must say `Reused`, and
    // tlsfront must have counted exactly those as ticket resumptions.
    let before = fe.stats();
    let sess = dir.path().join("tls12.sess");
    let sess = sess.to_str().expect("UTF-8 path");
    let first = s_client(fe.port, "localhost", &["-tls1_2", "-sess_out", sess], b"");
    assert_eq!(lines_starting(&first, "New,"), 1, "{}", first.describe());
    assert!(
        first.stdout.contains("TLS session ticket:"),
        "no ticket in the first session:\n{}",
        first.describe()
    );
    for i in 0..RESUMPTIONS {
        let again = s_client(fe.port, "localhost", &["-tls1_2", "-sess_in", sess], b"");
        assert_eq!(
            lines_starting(&again, "Reused,"),
            1,
            "s_client reconnect {i} with the saved ticket did not resume:\n{}\n{}",
            again.describe(),
            fe.output()
        );
    }
    let want = before.total.handshakes + 1 + RESUMPTIONS;
    let (after, ok) = fe.wait_stats(Duration::from_secs(5), |s| s.total.handshakes >= want);
    assert!(ok, "handshakes never reached {want}: {:?}", after.total);
    assert_eq!(
        after.total.get("resumed_tls12_ticket") - before.total.get("resumed_tls12_ticket"),
        RESUMPTIONS,
        "s_client resumed {RESUMPTIONS} times by ticket; the server counted: {:?}",
        after.total
    );
}
