//! Least privilege: with `process.user`, tlsfront binds and sets up as root,
//! then runs as that user with no capability, owning its shared files, and
//! keeps resuming sessions.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tlsfront_tests::ops_support::Proc;
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
    let (c, r, s) = (
        cache.display().to_string(),
        ring.display().to_string(),
        socket.display().to_string(),
    );
    // The temp dir must be enterable by `nobody` for the socket to be usable
    // by anyone; tlsfront itself only needs its open descriptors.
    let proc = Proc::start(
        None,
        &[
            ("process.user", "nobody"),
            ("cache.path", &c),
            ("tickets.path", &r),
            ("control.socket", &s),
        ],
    );
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
