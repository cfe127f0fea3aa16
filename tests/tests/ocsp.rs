//! OCSP stapling from files (`tls.ocsp`, `tls.sni.<name>.ocsp`), judged by
//! `openssl s_client -status`; the responses are made by `openssl ocsp`
//! from a test CA, as an operator's cron job would make them.

use std::path::{Path, PathBuf};
use tlsfront_tests::control::reload_cmd;
use tlsfront_tests::openssl_pki::{s_client, served, Issued, OpensslCa, Usage};
use tlsfront_tests::*;

/// A CA and a server certificate for `localhost` from it, in `dir`.
fn server_pki(dir: &Path) -> (OpensslCa, Issued) {
    let ca = OpensslCa::new(dir, "ocsp");
    let leaf = ca.issue("server", "localhost", Usage::Server);
    (ca, leaf)
}

/// tlsfront serving `leaf` (with its chain) and stapling `ocsp`.
fn serve(leaf: &Issued, ocsp: &Path) -> Frontend {
    let (chain, key, ocsp) = (
        leaf.chain.display().to_string(),
        leaf.key.display().to_string(),
        ocsp.display().to_string(),
    );
    Frontend::start(&[("tls.cert", &chain), ("tls.key", &key), ("tls.ocsp", &ocsp)])
}

/// `s_client -status` with `extra`; fails unless the handshake served.
fn status(fe: &Frontend, extra: &[&str]) -> String {
    let mut args = vec!["-status"];
    args.extend_from_slice(extra);
    let out = s_client(fe.port, &args);
    assert!(
        served(&out),
        "s_client {args:?}:\n{}\n{}",
        out.describe(),
        fe.output()
    );
    out.stdout
}

fn assert_stapled(stdout: &str, cert_status: &str, serial: &str, fe: &Frontend) {
    assert!(
        stdout.contains("OCSP Response Status: successful")
            && stdout.contains(&format!("Cert Status: {cert_status}"))
            && stdout.contains(&format!("Serial Number: {serial}")),
        "expected a stapled response saying {cert_status} for serial {serial}:\n{stdout}\n{}",
        fe.output()
    );
}

fn assert_not_stapled(stdout: &str, fe: &Frontend) {
    assert!(
        stdout.contains("OCSP response: no response sent"),
        "expected no stapled response:\n{stdout}\n{}",
        fe.output()
    );
}

/// The warning tlsfront logged for `file`, failing unless it says `why`.
fn assert_warned(fe: &Frontend, file: &Path, why: &str) {
    let stderr = fe.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&*file.to_string_lossy()))
        .unwrap_or_else(|| panic!("no warning naming {}:\n{stderr}", file.display()));
    assert!(line.contains(why), "warning does not say {why:?}: {line}");
}

#[test]
fn a_good_response_from_the_ca_is_stapled_over_tls12_and_tls13() {
    let dir = temp_dir();
    let (ca, leaf) = server_pki(dir.path());
    let response = dir.path().join("server.ocsp.der");
    ca.ocsp_response(&leaf, 'V', None, &response);
    let fe = serve(&leaf, &response);
    for version in ["-tls1_2", "-tls1_3"] {
        assert_stapled(&status(&fe, &[version]), "good", &leaf.serial, &fe);
    }
}

#[test]
fn a_response_for_another_certificate_is_not_stapled_and_the_file_is_named_in_a_warning() {
    let dir = temp_dir();
    let (ca, leaf) = server_pki(dir.path());
    let other = ca.issue("other", "localhost", Usage::Server);
    let response = dir.path().join("other.ocsp.der");
    ca.ocsp_response(&other, 'V', None, &response);
    let fe = serve(&leaf, &response);
    assert_not_stapled(&status(&fe, &[]), &fe);
    assert_warned(&fe, &response, "not for this certificate");
}

#[test]
fn a_response_from_another_ca_is_not_stapled() {
    // `openssl ocsp -issuer` takes the issuer from the CA given and the
    // serial number from the certificate: this response names our leaf's
    // serial number under another issuer, so only the issuer tells.
    let dir = temp_dir();
    let (_, leaf) = server_pki(dir.path());
    let other_ca = OpensslCa::new(dir.path(), "other");
    let response = dir.path().join("foreign.ocsp.der");
    other_ca.ocsp_response(&leaf, 'V', None, &response);
    let fe = serve(&leaf, &response);
    assert_not_stapled(&status(&fe, &[]), &fe);
    assert_warned(&fe, &response, "issuer");
}

#[test]
fn a_response_past_its_next_update_is_not_stapled_and_the_file_is_named_in_a_warning() {
    let dir = temp_dir();
    let (ca, leaf) = server_pki(dir.path());
    let response = dir.path().join("expired.ocsp.der");
    // Made "on 1 January 2021", valid one day: long past its nextUpdate.
    ca.ocsp_response(&leaf, 'V', Some("2021-01-01 00:00:00"), &response);
    let fe = serve(&leaf, &response);
    assert_not_stapled(&status(&fe, &[]), &fe);
    assert_warned(&fe, &response, "expired");
}

#[test]
fn a_missing_response_file_never_stops_the_server() {
    let dir = temp_dir();
    let (_, leaf) = server_pki(dir.path());
    let missing = dir.path().join("missing.ocsp.der");
    let fe = serve(&leaf, &missing);
    assert_not_stapled(&status(&fe, &[]), &fe);
    assert_warned(&fe, &missing, "No such file");
}

#[test]
fn reload_staples_the_response_that_is_in_the_file_now() {
    let dir = temp_dir();
    let (ca, leaf) = server_pki(dir.path());
    let response = dir.path().join("server.ocsp.der");
    ca.ocsp_response(&leaf, 'V', None, &response);
    let fe = serve(&leaf, &response);
    assert_stapled(&status(&fe, &[]), "good", &leaf.serial, &fe);

    // The responder now says revoked; a reload reads the new file.
    let fresh = dir.path().join("fresh.ocsp.der");
    ca.ocsp_response(&leaf, 'R', None, &fresh);
    std::fs::rename(&fresh, &response).expect("replace the response file");
    let out = reload_cmd(&fe.socket);
    assert_eq!(out.code(), Some(0), "reload: {}", out.describe());
    assert_stapled(&status(&fe, &[]), "revoked", &leaf.serial, &fe);
}

#[test]
fn each_sni_name_staples_its_own_response() {
    let dir = temp_dir();
    let (ca, leaf) = server_pki(dir.path());
    let api = ca.issue("api", "api.test", Usage::Server);
    let (default_ocsp, api_ocsp): (PathBuf, PathBuf) = (
        dir.path().join("server.ocsp.der"),
        dir.path().join("api.ocsp.der"),
    );
    ca.ocsp_response(&leaf, 'V', None, &default_ocsp);
    ca.ocsp_response(&api, 'V', None, &api_ocsp);
    let s = |p: &Path| p.display().to_string();
    let fe = Frontend::start(&[
        ("tls.cert", &s(&leaf.chain)),
        ("tls.key", &s(&leaf.key)),
        ("tls.ocsp", &s(&default_ocsp)),
        ("tls.sni.api.test.cert", &s(&api.chain)),
        ("tls.sni.api.test.key", &s(&api.key)),
        ("tls.sni.api.test.ocsp", &s(&api_ocsp)),
    ]);
    assert_stapled(&status(&fe, &[]), "good", &leaf.serial, &fe);
    assert_stapled(
        &status(&fe, &["-servername", "api.test"]),
        "good",
        &api.serial,
        &fe,
    );
}
