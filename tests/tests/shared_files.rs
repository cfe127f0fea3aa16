//! The shared files (session cache, ticket-key ring, control socket) in the
//! set-ups production uses: a small tmpfs (a container's /dev/shm), a
//! privilege drop and the restarts after it, a directory or lock file some
//! other local user got to first.
//!
//! Tests that need a fresh /dev/shm run tlsfront in its own mount namespace
//! (`unshare -m`, a tmpfs mounted over /dev/shm there): nothing of the host's
//! /dev/shm is touched, and tests running in parallel never meet. They need
//! root (CI runs as root); without it they fail saying so.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tlsfront_tests::lifecycle::Proc;
use tlsfront_tests::openssl_client::{count_reused, save_sessions};
use tlsfront_tests::*;

/// The uid of `nobody`: an existing unprivileged user to drop to. A real
/// deployment uses a dedicated user (README: `useradd --system tlsfront`).
const NOBODY: u32 = 65534;

fn require_root() {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    assert_eq!(
        uid,
        Some(0),
        "this test needs root (mount namespaces, chown, setpriv); CI runs as root"
    );
}

/// A wrapper that runs tlsfront in a new mount namespace where /dev/shm is
/// a fresh tmpfs of `size`, after the shell commands `then` (may be empty).
fn in_small_shm(size: &str, then: &str) -> Vec<String> {
    vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!("mount -t tmpfs -o size={size},mode=1777 tlsfront-test /dev/shm && {then} exec \"$0\" \"$@\""),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every shared path at its default (`auto`): the configuration a new user
/// runs.
const DEFAULT_PATHS: [(&str, &str); 3] = [
    ("cache.path", "auto"),
    ("tickets.path", "auto"),
    ("control.socket", "auto"),
];

#[test]
fn on_a_1_mib_tmpfs_the_default_64_mib_cache_is_refused_at_start_naming_path_size_and_free_space() {
    require_root();
    let wrapper = in_small_shm("1m", "");
    let err = match Proc::try_start_wrapped(&strs(&wrapper), None, &DEFAULT_PATHS) {
        Ok(p) => panic!(
            "tlsfront started with a 64 MiB cache on a 1 MiB tmpfs (it would SIGBUS once the cache fills):\n{}",
            p.output()
        ),
        Err(e) => e,
    };
    println!(
        "tmpfs outcome: refused at start: {}",
        err.lines()
            .find(|l| l.contains("tlsfront: error"))
            .unwrap_or("?")
    );
    assert!(
        err.contains("unix_wait_status(256)"),
        "a clean error exit, not a signal:\n{err}"
    );
    assert!(
        err.contains("/dev/shm/tlsfront-0/"),
        "names the path:\n{err}"
    );
    assert!(
        err.contains(".cache: needs 67108864 bytes"),
        "names the size:\n{err}"
    );
    assert!(err.contains("bytes free"), "names the free space:\n{err}");
    assert!(
        !err.contains("SIGBUS") && !err.contains("signal: 7"),
        "{err}"
    );
}

#[test]
fn on_a_1_mib_tmpfs_a_cache_that_fits_serves_past_its_capacity_without_sigbus() {
    require_root();
    let wrapper = in_small_shm("1m", "");
    let mut opts = DEFAULT_PATHS.to_vec();
    // 768 KiB: 187 sets, 1496 sessions; with the 4 KiB ring the tmpfs is
    // nearly full, and every page of both is allocated at start.
    opts.extend([("cache.size", "768k"), ("worker.count", "2")]);
    let mut proc = Proc::start_wrapped(&strs(&wrapper), None, &opts);
    let tls12 = ClientSpec::new(Trust::AnyCert).versions(Versions::Tls12);
    // More sessions than the cache holds: every slot gets written, then
    // evicted, in pages that on a sparse file would have no backing.
    for i in 0..1600 {
        let config = resuming_client_config(&tls12);
        let v = visit(proc.addr(), config, "localhost")
            .unwrap_or_else(|e| panic!("handshake {i}: {e}\n{}", proc.output()));
        assert!(v.http_200, "handshake {i}: {v:?}\n{}", proc.output());
    }
    assert!(
        proc.wait_exit(Duration::from_millis(200)).is_none(),
        "tlsfront died: {:?}\n{}",
        proc.wait_exit(Duration::ZERO),
        proc.output()
    );
    let config = resuming_client_config(&tls12);
    let first = visit(proc.addr(), config.clone(), "localhost").expect("first visit");
    let again = visit(proc.addr(), config, "localhost").expect("second visit");
    assert!(
        first.http_200 && !first.resumed && again.resumed,
        "{again:?}\n{}",
        proc.output()
    );
    println!("tmpfs outcome: 1600 full handshakes on a 1 MiB tmpfs with cache.size=768k: alive, resuming");
}

#[test]
fn default_paths_live_in_a_private_0700_directory_of_the_running_user() {
    require_root();
    let wrapper = in_small_shm("8m", "");
    let mut opts = DEFAULT_PATHS.to_vec();
    opts.push(("cache.size", "1m"));
    let proc = Proc::start_wrapped(&strs(&wrapper), None, &opts);
    // The process's own view of its mount namespace.
    let dir = format!("/proc/{}/root/dev/shm/tlsfront-0", proc.pid());
    let meta = std::fs::symlink_metadata(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "{dir} mode");
    assert_eq!(meta.uid(), 0, "{dir} owner");
    for ext in ["cache", "tickets", "sock"] {
        let file = format!("{dir}/{}.{ext}", proc.port);
        let meta = std::fs::symlink_metadata(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.mode() & 0o777, 0o600, "{file} mode");
    }
    assert!(
        proc.stdout()
            .contains(&format!("/dev/shm/tlsfront-0/{}.cache", proc.port)),
        "{}",
        proc.output()
    );
}

#[test]
fn a_default_directory_another_user_could_write_is_refused_naming_it() {
    require_root();
    // What a local user could do first in a shared /dev/shm.
    let wrapper = in_small_shm("8m", "mkdir -m 777 /dev/shm/tlsfront-0 &&");
    let err = match Proc::try_start_wrapped(&strs(&wrapper), None, &DEFAULT_PATHS) {
        Ok(p) => panic!("started in a world-writable directory:\n{}", p.output()),
        Err(e) => e,
    };
    assert!(
        err.contains(
            "directory /dev/shm/tlsfront-0: writable by group or others (mode 777); refusing"
        ),
        "{err}"
    );
}

#[test]
fn a_lock_file_held_by_another_process_fails_the_start_naming_it_instead_of_hanging() {
    let dir = temp_dir();
    let cache = dir.path().join("held.cache");
    let lock_path = dir.path().join("held.cache.lock");
    let lock = std::fs::File::create(&lock_path).expect("create lock file");
    lock.lock().expect("hold the lock");
    let started = std::time::Instant::now();
    let err = match Proc::try_start_wrapped(&[], None, &[("cache.path", cache.to_str().unwrap())]) {
        Ok(p) => panic!("started while the lock is held:\n{}", p.output()),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!(
            "the lock file {} is held by another process",
            lock_path.display()
        )),
        "{err}"
    );
    drop(lock);
}

/// A directory for the shared files of a `process.user = nobody` set-up:
/// owned by nobody, 0700, inside a temp dir nobody may traverse.
fn nobody_dir(parent: &Path) -> std::path::PathBuf {
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let dir = parent.join("run");
    std::fs::create_dir(&dir).expect("mkdir");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

#[test]
fn after_process_user_a_restart_as_root_and_a_restart_as_that_user_both_resume_every_session() {
    require_root();
    let parent = temp_dir();
    let run = nobody_dir(parent.path());
    let sessions = temp_dir();
    let path = |name: &str| run.join(name).display().to_string();
    let (cache, ring, socket) = (path("c.cache"), path("k.ring"), path("ctl.sock"));
    let reserved = ReservedPort::new();
    let port = reserved.port;
    let listen = format!("127.0.0.1:{port}");
    // One command line for every start: the set-up of systemd Restart=.
    let opts = [
        ("net.listen", listen.as_str()),
        ("process.user", "nobody"),
        ("cache.path", cache.as_str()),
        ("tickets.path", ring.as_str()),
        ("control.socket", socket.as_str()),
        ("cache.size", "4m"),
        ("worker.count", "2"),
    ];
    let tls12 = ["-tls1_2", "-no_ticket"];
    let tls13 = ["-tls1_3"];

    let first = Proc::start(None, &opts);
    assert!(
        first.stdout().contains("running as nobody"),
        "{}",
        first.output()
    );
    let by_id = save_sessions(port, sessions.path(), 100, &tls12);
    let tickets_dir = sessions.path().join("t");
    std::fs::create_dir(&tickets_dir).expect("mkdir");
    let by_ticket = save_sessions(port, &tickets_dir, 100, &tls13);
    drop(first); // SIGKILL

    let as_root = Proc::start(None, &opts);
    assert!(
        as_root.stdout().contains("sessions kept from before")
            && as_root.stdout().contains("keys kept from before"),
        "the restart as root did not reuse nobody's files:\n{}",
        as_root.output()
    );
    let root_ids = count_reused(port, &by_id, &tls12);
    let root_tickets = count_reused(port, &by_ticket, &tls13);
    drop(as_root);

    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let as_user = Proc::start_wrapped(&wrapper, None, &opts);
    assert!(
        as_user.stdout().contains("sessions kept from before"),
        "the restart as nobody did not reuse the files:\n{}",
        as_user.output()
    );
    let user_ids = count_reused(port, &by_id, &tls12);
    let user_tickets = count_reused(port, &by_ticket, &tls13);
    println!(
        "resumed after a restart as root: {root_ids}/100 session IDs, {root_tickets}/100 TLS 1.3 tickets; \
         as nobody: {user_ids}/100 session IDs, {user_tickets}/100 TLS 1.3 tickets"
    );
    assert_eq!(
        (root_ids, root_tickets, user_ids, user_tickets),
        (100, 100, 100, 100),
        "{}",
        as_user.output()
    );
    for file in [&cache, &ring, &socket] {
        let meta = std::fs::symlink_metadata(file).expect("stat");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600), "{file}");
    }
}

#[test]
fn a_refused_reload_leaves_the_ticket_keys_as_they_were() {
    let dir = temp_dir();
    let secret = write_file(dir.path(), "b.secret", &"b".repeat(48));
    let file = write_file(dir.path(), "tlsfront.conf", "tickets.key_source = random\n");
    // No session cache: every resumption below is by ticket.
    let proc = Proc::start(Some(&file), &[("cache.enabled", "0")]);
    let sessions = temp_dir();
    let tls12 = ["-tls1_2"];
    let saved = save_sessions(proc.port, sessions.path(), 5, &tls12);

    // A new secret, and a certificate that is not one (found only when
    // the server configuration is built, after the secret is read): all or
    // nothing.
    let junk = write_file(dir.path(), "junk.pem", "not a certificate\n");
    write_file(
        dir.path(),
        "tlsfront.conf",
        &format!(
            "tickets.key_source = file:{}\ntls.cert = {}\ntls.key = {}\n",
            secret.display(),
            junk.display(),
            junk.display()
        ),
    );
    let out = tlsfront_tests::control::reload_cmd(&proc.socket);
    assert_ne!(
        out.code(),
        Some(0),
        "the reload was accepted:\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("reload refused"), "{}", out.describe());
    println!("refused reload: {}", out.stderr.trim());
    // A live change makes the ring rebuild now: from the secret the
    // running configuration names, keeping its keys (not from the refused
    // one, which would replace them all).
    let set = tlsfront_tests::control::sysctl_write(&proc.socket, &["tickets.rotate_interval=2h"]);
    assert_eq!(set.code(), Some(0), "{}", set.describe());
    assert_eq!(
        count_reused(proc.port, &saved, &tls12),
        5,
        "tickets sealed before a refused reload no longer open:\n{}",
        proc.output()
    );
}

#[test]
fn a_takeover_that_changes_tickets_rotate_interval_keeps_every_ticket() {
    let dir = temp_dir();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (ring, socket, cache) = (path("k.ring"), path("ctl.sock"), path("c.cache"));
    let reserved = ReservedPort::new();
    let listen = format!("127.0.0.1:{}", reserved.port);
    let opts = |rotate: &'static str| {
        vec![
            ("net.listen", listen.clone()),
            ("tickets.path", ring.clone()),
            ("control.socket", socket.clone()),
            ("cache.path", cache.clone()),
            // Tickets only: nothing else could resume.
            ("cache.enabled", "0".to_string()),
            ("tickets.rotate_interval", rotate.to_string()),
            ("worker.count", "2".to_string()),
        ]
    };
    fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
        v.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let old_opts = opts("1h");
    let new_opts = opts("2h");
    let mut old = Proc::start(None, &as_refs(&old_opts));
    let sessions = temp_dir();
    let port = old.port;
    let tls13 = ["-tls1_3"];
    let saved = save_sessions(port, sessions.path(), 100, &tls13);

    let takeover = ["sh", "-c", "exec \"$0\" \"$@\" --takeover"];
    let new = Proc::start_wrapped(&takeover, None, &as_refs(&new_opts));
    assert!(
        new.stderr().contains("following the ring"),
        "the newcomer does not say it follows the running ring:\n{}",
        new.output()
    );
    // Both processes accept on the port now (SO_REUSEPORT): connections
    // alternate between them, as they would through a real upgrade.
    let both = count_reused(port, &saved, &tls13);
    old.signal(libc::SIGTERM);
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "old did not stop\n{}",
        old.output()
    );
    let after = count_reused(port, &saved, &tls13);
    // The newcomer's reload applies its own period.
    let reload = tlsfront_tests::control::reload_cmd(&new.socket);
    assert_eq!(reload.code(), Some(0), "{}", reload.describe());
    let reloaded = count_reused(port, &saved, &tls13);
    println!(
        "takeover 1h -> 2h: tickets issued before resumed {both}/100 while both ran, {after}/100 after the old one stopped, {reloaded}/100 after the newcomer's reload"
    );
    assert_eq!(
        (both, after, reloaded),
        (100, 100, 100),
        "{}\n{}",
        old.output(),
        new.output()
    );
}

#[test]
fn root_finds_the_control_socket_of_a_server_running_as_another_user() {
    require_root();
    // The systemd set-up: the service runs as its user (User=), root asks
    // it for stats with the same configuration and no --socket.
    let reserved = ReservedPort::new();
    let port = reserved.port;
    let bin = bin().display().to_string();
    let script = format!(
        "mount -t tmpfs -o size=8m,mode=1777 t /dev/shm || exit 1; \
         setpriv --reuid=65534 --regid=65534 --clear-groups {bin} run -o net.listen=127.0.0.1:{port} -o cache.size=1m >/dev/null 2>&1 & \
         server=$!; \
         for i in $(seq 100); do [ -S /dev/shm/tlsfront-65534/{port}.sock ] && break; sleep 0.1; done; \
         {bin} stats -o net.listen=127.0.0.1:{port}; rc=$?; kill -9 $server; wait $server; exit $rc"
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let out = run_cmd(cmd, b"", Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("handshakes"), "{}", out.describe());
}
