//! Client certificates (`tls.client_auth`, `tls.client_ca`) against real
//! clients: `openssl s_client -cert -key` and `curl --cert --key`, with
//! certificates made by `openssl` from a test CA and from another CA.
//! Resumption is judged by `s_client -sess_out / -sess_in` ("Reused").

use std::path::PathBuf;
use std::time::Duration;
use tlsfront_tests::openssl_pki::{reused, s_client, served, Issued, OpensslCa, Usage};
use tlsfront_tests::*;
use tlsfront_tests::{control::reload_cmd, logs::log_lines};

/// A CA that signs the server's and the client's certificate, and a
/// client certificate from another CA.
struct Pki {
    dir: TempDir,
    ca: OpensslCa,
    server: Issued,
    client: Issued,
    stranger: Issued,
}

fn pki() -> Pki {
    let dir = temp_dir();
    let ca = OpensslCa::new(dir.path(), "clients");
    let server = ca.issue("server", "localhost", Usage::Server);
    let client = ca.issue("client", "alice", Usage::Client);
    let other = OpensslCa::new(dir.path(), "other");
    let stranger = other.issue("stranger", "mallory", Usage::Client);
    Pki {
        dir,
        ca,
        server,
        client,
        stranger,
    }
}

impl Pki {
    /// Writes the config file with `tls.client_auth = mode` (the keys a
    /// reload re-reads are in the file, not in `-o`).
    fn write_config(&self, mode: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            "tlsfront.conf",
            &format!(
                "tls.cert = {}\ntls.key = {}\ntls.client_ca = {}\ntls.client_auth = {mode}\nlog.access = 1\n",
                self.server.chain.display(),
                self.server.key.display(),
                self.ca.cert.display()
            ),
        )
    }

    fn serve(&self, mode: &str) -> Frontend {
        Frontend::start_with_config(Some(&self.write_config(mode)), &[])
    }
}

/// `-cert FILE -key FILE` of `who`.
fn cert_args(who: &Issued) -> Vec<String> {
    vec![
        "-cert".into(),
        who.cert.display().to_string(),
        "-key".into(),
        who.key.display().to_string(),
    ]
}

fn connect(fe: &Frontend, args: &[String]) -> CmdOutput {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s_client(fe.port, &args)
}

fn with(base: &[&str], more: &[String]) -> Vec<String> {
    base.iter()
        .map(|s| s.to_string())
        .chain(more.iter().cloned())
        .collect()
}

fn assert_served(out: &CmdOutput, fe: &Frontend, what: &str) {
    assert!(
        served(out),
        "{what}: not served\n{}\n{}",
        out.describe(),
        fe.output()
    );
}

/// Not served, and the client saw a TLS alert.
fn assert_refused(out: &CmdOutput, fe: &Frontend, what: &str) {
    let all = format!("{}{}", out.stdout, out.stderr).to_ascii_lowercase();
    assert!(
        !served(out) && all.contains("alert"),
        "{what}: expected an alert and no answer\n{}\n{}",
        out.describe(),
        fe.output()
    );
}

/// The `field` of each access log line so far, in order.
fn access_field(fe: &Frontend, field: &str) -> Vec<String> {
    log_lines(&fe.stderr())
        .into_iter()
        .filter(|l| l.target == "tlsfront::access")
        .filter_map(|l| l.field(field).map(String::from))
        .collect()
}

/// `access_field` once `done` holds of it, or at most [`IO_TIMEOUT`] later
/// (a line is logged as its connection ends, maybe after the client exits).
fn wait_access(fe: &Frontend, field: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let values = access_field(fe, field);
        if done(&values) || std::time::Instant::now() >= deadline {
            return values;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn required_refuses_a_client_without_a_certificate_with_an_alert() {
    let p = pki();
    let fe = p.serve("required");
    for version in ["-tls1_2", "-tls1_3"] {
        let out = connect(&fe, &with(&[version], &[]));
        assert_refused(&out, &fe, &format!("{version} without a certificate"));
    }
}

#[test]
fn required_serves_a_certificate_from_the_ca_and_logs_it_verified() {
    let p = pki();
    let fe = p.serve("required");
    for version in ["-tls1_2", "-tls1_3"] {
        let out = connect(&fe, &with(&[version], &cert_args(&p.client)));
        assert_served(&out, &fe, &format!("{version} with alice's certificate"));
    }
    let mut curl = prereq::tool("curl");
    curl.args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(&p.ca.cert)
        .arg("--cert")
        .arg(&p.client.cert)
        .arg("--key")
        .arg(&p.client.key)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", fe.port))
        .arg(format!("https://localhost:{}/", fe.port));
    let out = run_cmd(curl, b"", Duration::from_secs(20));
    assert!(
        out.code() == Some(0) && out.stdout.starts_with("HTTP/1.1 200"),
        "curl --cert:\n{}\n{}",
        out.describe(),
        fe.output()
    );
    let logged = wait_access(&fe, "client_cert", |v| v.len() >= 3);
    assert_eq!(logged, ["verified"; 3], "access log\n{}", fe.output());
}

#[test]
fn required_refuses_a_certificate_from_another_ca() {
    let p = pki();
    let fe = p.serve("required");
    for version in ["-tls1_2", "-tls1_3"] {
        let out = connect(&fe, &with(&[version], &cert_args(&p.stranger)));
        assert_refused(
            &out,
            &fe,
            &format!("{version} with another CA's certificate"),
        );
    }
    let mut curl = prereq::tool("curl");
    curl.args(["-sS", "--max-time", "10", "-k", "--cert"])
        .arg(&p.stranger.cert)
        .arg("--key")
        .arg(&p.stranger.key)
        .arg(format!("https://127.0.0.1:{}/", fe.port));
    let out = run_cmd(curl, b"", Duration::from_secs(20));
    assert_ne!(
        out.code(),
        Some(0),
        "curl with another CA's certificate\n{}",
        out.describe()
    );
}

#[test]
fn optional_serves_clients_with_and_without_a_certificate_but_not_a_foreign_one() {
    let p = pki();
    let fe = p.serve("optional");
    let out = connect(&fe, &with(&["-tls1_3"], &[]));
    assert_served(&out, &fe, "without a certificate");
    let out = connect(&fe, &with(&["-tls1_3"], &cert_args(&p.client)));
    assert_served(&out, &fe, "with alice's certificate");
    let logged = wait_access(&fe, "client_cert", |v| v.len() >= 2);
    assert_eq!(logged, ["-", "verified"], "access log\n{}", fe.output());
    let out = connect(&fe, &with(&["-tls1_3"], &cert_args(&p.stranger)));
    assert_refused(&out, &fe, "with another CA's certificate");
}

#[test]
fn client_auth_without_client_ca_is_a_config_error_naming_the_key() {
    for mode in ["optional", "required"] {
        let auth = format!("tls.client_auth={mode}");
        let out = tlsfront_cmd(&["sysctl", "-a", "-o", &auth]);
        assert!(
            out.code() == Some(2) && out.stderr.contains("tls.client_ca"),
            "{mode} without tls.client_ca:\n{}",
            out.describe()
        );
    }
}

/// A session made under `optional` without a certificate resumes there
/// (the control: it is a resumable session of `kind`), never once a
/// reload made `tls.client_auth = required`: offered with alice's
/// certificate it gets a full handshake that asks for it, offered without
/// one it is refused. A session made under `required` with a verified
/// certificate resumes (when `resumes_with_cert`).
fn never_resumes_into_required(version: &[&str], kind: &str, resumes_with_cert: bool) {
    let p = pki();
    let conf = p.write_config("optional");
    let fe = Frontend::start_with_config(Some(&conf), &[]);
    let path = |name: &str| p.dir.path().join(name).display().to_string();
    let (anonymous, verified) = (path("anonymous.sess"), path("verified.sess"));
    let sess = |flag: &str, file: &str| vec![flag.to_string(), file.to_string()];

    let out = connect(&fe, &with(version, &sess("-sess_out", &anonymous)));
    assert_served(&out, &fe, "first connection, no certificate");
    let out = connect(&fe, &with(version, &sess("-sess_in", &anonymous)));
    assert!(
        served(&out) && reused(&out),
        "control: the session does not even resume under optional\n{}\n{}",
        out.describe(),
        fe.output()
    );
    let resumed = wait_access(&fe, "resumed", |v| v.iter().any(|r| r == kind));
    assert!(
        resumed.iter().any(|r| r == kind),
        "control resumed as {resumed:?}, not {kind}\n{}",
        fe.output()
    );

    p.write_config("required");
    let out = reload_cmd(&fe.socket);
    assert_eq!(out.code(), Some(0), "reload: {}", out.describe());

    let mut args = sess("-sess_in", &anonymous);
    args.extend(cert_args(&p.client));
    let out = connect(&fe, &with(version, &args));
    assert!(
        served(&out) && !reused(&out),
        "with a certificate, the anonymous session must give a full handshake\n{}\n{}",
        out.describe(),
        fe.output()
    );
    let out = connect(&fe, &with(version, &sess("-sess_in", &anonymous)));
    assert_refused(
        &out,
        &fe,
        "the anonymous session, no certificate, under required",
    );
    assert!(!reused(&out), "resumed into required\n{}", out.describe());

    if resumes_with_cert {
        let mut args = sess("-sess_out", &verified);
        args.extend(cert_args(&p.client));
        assert_served(&connect(&fe, &with(version, &args)), &fe, "verified, first");
        let mut args = sess("-sess_in", &verified);
        args.extend(cert_args(&p.client));
        let out = connect(&fe, &with(version, &args));
        assert!(
            served(&out) && reused(&out),
            "a session with a verified certificate should resume under required\n{}\n{}",
            out.describe(),
            fe.output()
        );
    }
}

#[test]
fn a_tls12_session_id_without_a_verified_certificate_never_resumes_into_required() {
    // A session ID with a client certificate does not fit a cache slot
    // (512 bytes with the certificate chain), so only the refusal is
    // shown for this kind.
    never_resumes_into_required(&["-tls1_2", "-no_ticket"], "id", false);
}

#[test]
fn a_tls12_ticket_without_a_verified_certificate_never_resumes_into_required() {
    never_resumes_into_required(&["-tls1_2"], "ticket", true);
}

#[test]
fn a_tls13_ticket_without_a_verified_certificate_never_resumes_into_required() {
    never_resumes_into_required(&["-tls1_3"], "tls13", true);
}
