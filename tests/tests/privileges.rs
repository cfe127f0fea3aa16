//! Least privilege: with `process.user`, tlsfront binds and sets up as root,
//! then runs as that user with no capability, owning its shared files, and
//! keeps resuming sessions.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tlsfront_tests::lifecycle::Proc;
use tlsfront_tests::*;

/// The `Name:\tvalue` line of /proc/<pid>/status.
fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

#[test]
fn with_process_user_it_runs_as_that_user_without_capabilities_and_owns_its_files() {
    tlsfront_tests::prereq::require(&[tlsfront_tests::prereq::Need::Root]);
    let dir = temp_dir();
    let cache = dir.path().join("c.cache");
    let ring = dir.path().join("k.ring");
    let socket = dir.path().join("ctl.sock");
    // The temp dir must be enterable by `nobody` for the socket to be usable
    // by anyone; tlsfront itself only needs its open descriptors.
    let proc = as_nobody(dir.path(), &[]);
    let pid = proc.pid();
    let uids: Vec<String> = status_field(pid, "Uid")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(uids.iter().all(|u| u == "65534"), "Uid: {uids:?}");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    for path in [&cache, &ring, &socket] {
        let meta = std::fs::symlink_metadata(path).expect("stat shared file");
        assert_eq!(meta.uid(), 65534, "{} owner", path.display());
        assert_eq!(meta.mode() & 0o777, 0o600, "{} mode", path.display());
    }
    assert!(proc
        .stdout()
        .contains("running as nobody, no capabilities kept"));

    // Still serving and resuming (the mappings were made before the drop).
    let config = resuming_client_config(&ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12));
    let first = visit(proc.addr(), config.clone(), "localhost").expect("first visit");
    assert!(first.http_200 && !first.resumed);
    let again = visit(proc.addr(), config, "localhost").expect("second visit");
    assert!(
        again.http_200 && again.resumed,
        "{again:?}\n{}",
        proc.output()
    );
}

#[test]
fn an_unknown_process_user_stops_start_up_naming_it() {
    let dir = temp_dir();
    let path = |name: &str| Path::new(dir.path()).join(name).display().to_string();
    let port = ReservedPort::new();
    let out = tlsfront_cmd(&[
        "run",
        "-o",
        &format!("net.listen={}", port.addr_string()),
        "-o",
        &format!("control.socket={}", path("s")),
        "-o",
        &format!("cache.path={}", path("c")),
        "-o",
        &format!("tickets.path={}", path("k")),
        "-o",
        "net.migrate_requests=0",
        "-o",
        "process.user=no-such-user-tlsfront",
    ]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr
            .contains("process.user no-such-user-tlsfront: no such user"),
        "{}",
        out.describe()
    );
}

/// A unix stream server at `path` that answers `name` to every
/// connection, with the socket file's mode set to `mode` and its directory
/// open to everyone (so only the socket's own mode decides).
fn unix_upstream(path: &Path, mode: u32, name: &'static str) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("socket directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind unix socket");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod socket");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(name.as_bytes());
        }
    })
}

/// tlsfront as `nobody`, its shared files and control socket in `dir`
/// (`c.cache`, `k.ring`, `ctl.sock`), with `more` settings.
fn as_nobody(dir: &Path, more: &[(&str, &str)]) -> Proc {
    let (c, r, s) = (
        dir.join("c.cache").display().to_string(),
        dir.join("k.ring").display().to_string(),
        dir.join("ctl.sock").display().to_string(),
    );
    let mut settings = vec![
        ("process.user", "nobody"),
        ("cache.path", c.as_str()),
        ("tickets.path", r.as_str()),
        ("control.socket", s.as_str()),
    ];
    settings.extend_from_slice(more);
    Proc::start(None, &settings)
}

/// tlsfront as `nobody` with `upstream.addr = unix:<socket>`.
fn as_nobody_with_unix_upstream(dir: &Path, socket: &Path) -> Proc {
    let upstream = format!("unix:{}", socket.display());
    as_nobody(dir, &[("worker.count", "1"), ("upstream.addr", &upstream)])
}

/// What one TLS request through `proc` got back.
fn answer_through(proc: &Proc) -> String {
    let config = client_config(&ClientSpec::new(Trust::AnyCert));
    let mut client = TlsClient::connect(proc.addr(), config, "localhost")
        .unwrap_or_else(|e| panic!("TLS to {}: {e}\n{}", proc.addr(), proc.output()));
    let (answer, _) = client.request(b"hello", std::time::Duration::from_secs(10));
    String::from_utf8_lossy(&answer).into_owned()
}

/// A unix upstream answering `name` on a socket of `mode`, and tlsfront
/// as `nobody` in front of it (the directory, socket path and upstream
/// thread live as long as the test).
struct BehindUnixUpstream {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    _server: std::thread::JoinHandle<()>,
    proc: Proc,
}

fn nobody_behind_unix_upstream(mode: u32, name: &'static str) -> BehindUnixUpstream {
    tlsfront_tests::prereq::require(&[tlsfront_tests::prereq::Need::Root]);
    let dir = temp_dir();
    let socket = dir.path().join("upstream.sock");
    let server = unix_upstream(&socket, mode, name);
    let proc = as_nobody_with_unix_upstream(dir.path(), &socket);
    BehindUnixUpstream {
        _dir: dir,
        socket,
        _server: server,
        proc,
    }
}

#[test]
fn after_the_drop_a_unix_upstream_process_user_may_write_is_served() {
    let up = nobody_behind_unix_upstream(0o666, "unix upstream");
    assert_eq!(
        answer_through(&up.proc),
        "unix upstream",
        "{}",
        up.proc.output()
    );
}

#[test]
fn after_the_drop_a_unix_upstream_only_root_may_write_fails_and_the_log_names_it() {
    let up = nobody_behind_unix_upstream(0o600, "must not be reached");
    let (proc, socket) = (&up.proc, &up.socket);
    // nginx answers 502 here ("connect() to unix:… failed (13: Permission
    // denied)"); a TCP proxy can only close the client.
    assert_eq!(answer_through(proc), "", "{}", proc.output());
    let line = format!(
        "upstream unix:{}: connecting: Permission denied",
        socket.display()
    );
    assert!(
        proc.wait_stderr(&line, std::time::Duration::from_secs(5)),
        "the failure line must name the socket and the cause: {line:?}\n{}",
        proc.output()
    );
}

#[test]
fn after_the_drop_a_reload_that_cannot_read_a_root_only_key_keeps_serving_and_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    tlsfront_tests::prereq::require(&[tlsfront_tests::prereq::Need::Root]);
    let dir = temp_dir();
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "server");
    // As certbot and most packages leave a private key: root's alone.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let proc = as_nobody(dir.path(), &[("tls.cert", &cert_s), ("tls.key", &key_s)]);
    let s = dir.path().join("ctl.sock");
    let trusting = client_config(&ClientSpec::new(pki.trust()));
    let before = visit(proc.addr(), trusting.clone(), "localhost").expect("served before");
    assert!(before.http_200);

    let out = tlsfront_tests::control::reload_cmd(&s);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(&key_s) && said.contains("Permission denied"),
        "the refusal must name the key file and why: {}",
        out.describe()
    );
    let after = visit(proc.addr(), trusting, "localhost").expect("served after");
    assert!(after.http_200, "the running certificate must stay in use");
}

#[test]
fn check_warns_of_the_files_and_sockets_process_user_could_not_use_after_the_drop() {
    use std::os::unix::fs::PermissionsExt;
    tlsfront_tests::prereq::require(&[tlsfront_tests::prereq::Need::Root]);
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "server");
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let socket = dir.path().join("root-only.sock");
    let _server = unix_upstream(&socket, 0o600, "unused");
    let args = [
        "process.user=nobody".to_string(),
        format!("tls.cert={}", cert.display()),
        format!("tls.key={}", key.display()),
        format!("upstream.addr=unix:{}", socket.display()),
    ];
    let mut cmd = vec!["check"];
    for a in &args {
        cmd.extend(["-o", a.as_str()]);
    }
    let out = tlsfront_cmd(&cmd);
    // `run` would start (it reads the files before the drop): not an error.
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", out.describe());
    assert!(
        warnings[0].contains("tls.key")
            && warnings[0].contains(&format!("nobody may not read {}", key.display()))
            && warnings[0].contains("a reload after the privilege drop would be refused"),
        "{}",
        out.describe()
    );
    assert!(
        warnings[1].contains("upstream.addr")
            && warnings[1].contains(&format!("nobody may not write {}", socket.display())),
        "{}",
        out.describe()
    );
    // The readable certificate is not warned of.
    assert!(!out.stderr.contains("tls.cert"), "{}", out.describe());
}
