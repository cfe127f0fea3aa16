//! Configuration: errors name the file, line and key (or the -o override), and
//! `tlsfront sysctl` lists every key.

use std::time::Duration;

use tlsfront_tests::*;
use tlsfront_tests::{
    control::{reload_cmd, sysctl_read, sysctl_write},
    lifecycle::Proc,
};

/// `tlsfront run -c FILE` with the given extra overrides, and (in case it
/// starts anyway) its own reserved port, control socket, cache and ticket
/// files in `dir` ([`run_command`]).
fn run_with(config: Option<&std::path::Path>, overrides: &[&str], dir: &TempDir) -> CmdOutput {
    let opts: Vec<(&str, &str)> = overrides
        .iter()
        .map(|o| o.split_once('=').expect("override is key=value"))
        .collect();
    let run = run_command(dir.path(), config, &opts);
    run_cmd(run.cmd, b"", CLI_TIMEOUT)
}

/// A config file `bad.conf` whose third line is `line3`; expects exit code 2 and
/// `bad.conf:3:` followed by `expect` on stderr.
fn bad_line_3(line3: &str, expect: &str) -> CmdOutput {
    let dir = temp_dir();
    let text = format!("# tlsfront test config\nlog.level = info\n{line3}\nworker.count = 1\n");
    let path = write_file(dir.path(), "bad.conf", &text);
    let out = run_with(Some(&path), &[], &dir);
    assert!(
        !out.timed_out(),
        "tlsfront started with a bad config line {line3:?}\n{}",
        out.describe()
    );
    assert_eq!(
        out.code(),
        Some(2),
        "exit code for bad line {line3:?}\n{}",
        out.describe()
    );
    let want = format!("{}:3:{expect}", path.display());
    assert!(
        out.stderr.contains(&want),
        "stderr should contain {want:?} for bad line {line3:?}\n{}",
        out.describe()
    );
    out
}

#[test]
fn config_file_unknown_key_is_an_error_naming_file_line_and_key() {
    let out = bad_line_3("cache.sizee = 64m", " key 'cache.sizee':");
    assert!(
        out.stderr.contains("unknown key"),
        "reason should say 'unknown key'\n{}",
        out.describe()
    );
}

#[test]
fn config_file_bad_value_is_an_error_naming_file_line_and_key() {
    bad_line_3("worker.count = lots", " key 'worker.count':");
}

#[test]
fn config_file_bad_unit_is_an_error_naming_file_line_and_key() {
    bad_line_3("proxy.buffer_size = 64q", " key 'proxy.buffer_size':");
}

#[test]
fn config_file_line_without_equals_is_an_error_naming_file_and_line() {
    bad_line_3("worker.count 2", "");
}

#[test]
fn override_bad_value_is_an_error_naming_the_override_and_key() {
    let dir = temp_dir();
    let out = run_with(None, &["worker.count=lots"], &dir);
    assert!(
        !out.timed_out(),
        "tlsfront started with -o worker.count=lots\n{}",
        out.describe()
    );
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("-o worker.count=lots: key 'worker.count':"),
        "stderr should name the override\n{}",
        out.describe()
    );
}

#[test]
fn override_unknown_key_is_an_error_naming_the_override_and_key() {
    let dir = temp_dir();
    let out = run_with(None, &["no.such_key=1"], &dir);
    assert!(
        !out.timed_out(),
        "tlsfront started with -o no.such_key=1\n{}",
        out.describe()
    );
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("-o no.such_key=1: key 'no.such_key': unknown key"),
        "stderr should name the override and say 'unknown key'\n{}",
        out.describe()
    );
}

#[test]
fn a_zero_buffer_size_stops_run_naming_the_file_line_and_key() {
    bad_line_3(
        "proxy.buffer_size = 0",
        " key 'proxy.buffer_size': 0 is out of range",
    );
}

#[test]
fn override_bad_unit_is_an_error_naming_the_override_and_key() {
    let dir = temp_dir();
    let out = run_with(None, &["proxy.buffer_size=64q"], &dir);
    assert!(!out.timed_out(), "{}", out.describe());
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("-o proxy.buffer_size=64q: key 'proxy.buffer_size':"),
        "{}",
        out.describe()
    );
}

/// Every key and its default as published in `examples/tlsfront.conf`
/// (generated from the key table of `frontend/src/config/mod.rs`; its unit
/// test `config_reference_example_file_is_current_and_parses_to_the_defaults`
/// fails when it is stale).
fn published_defaults() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tlsfront.conf");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key = value");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// `20ms`, `30s`, `5m`, `1h`, `1d`, `3600` as milliseconds; `None` if `v`
/// is not a duration.
fn millis(v: &str) -> Option<u64> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    })
}

fn sysctl_all(args: &[&str]) -> std::collections::HashMap<String, String> {
    let mut full = vec!["sysctl", "-a"];
    full.extend_from_slice(args);
    let out = tlsfront_cmd(&full);
    assert_eq!(out.code(), Some(0), "tlsfront {full:?}\n{}", out.describe());
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains(" = ") || line.ends_with(" ="),
            "line is not `key = value`: {line:?}"
        );
    }
    parse_sysctl(&out.stdout)
}

#[test]
fn sysctl_lists_every_key_with_its_default() {
    let keys = sysctl_all(&[]);
    let published = published_defaults();
    assert!(
        published.len() >= 40,
        "examples/tlsfront.conf lists only {} keys",
        published.len()
    );
    let missing: Vec<_> = published
        .iter()
        .filter(|(k, _)| !keys.contains_key(k))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "keys of examples/tlsfront.conf missing from sysctl -a: {missing:?}\ngot: {keys:?}"
    );
    let unpublished: Vec<_> = keys
        .keys()
        .filter(|k| !published.iter().any(|(p, _)| p == *k))
        .collect();
    assert!(
        unpublished.is_empty(),
        "sysctl -a lists keys examples/tlsfront.conf does not: {unpublished:?}"
    );
    // The same default, written the same way or as the same duration
    // (`1h` in the file, `3600s` from sysctl).
    let wrong: Vec<_> = published
        .iter()
        .filter(|(k, v)| {
            let got = &keys[k];
            got != v && (millis(got).is_none() || millis(got) != millis(v))
        })
        .map(|(k, v)| format!("{k}: published {v:?}, sysctl {:?}", keys[k]))
        .collect();
    assert!(wrong.is_empty(), "defaults differ: {wrong:#?}");
    // A few defaults stated independently of the generated file.
    for (k, v) in [
        ("net.listen", "127.0.0.1:8443"),
        ("worker.count", "auto"),
        ("tls.protocols", "1.2,1.3"),
        ("upstream.addr", "builtin"),
        ("log.level", "info"),
        ("tls.cert", ""),
        ("tls.alpn", ""),
    ] {
        assert_eq!(keys.get(k).map(String::as_str), Some(v), "default of {k}");
    }
    let ct = &keys["upstream.connect_timeout"];
    assert!(
        ["5", "5s"].contains(&ct.as_str()),
        "default upstream.connect_timeout = {ct:?}"
    );
    let bs = &keys["proxy.buffer_size"];
    assert!(
        ["64k", "65536", "64K"].contains(&bs.as_str()),
        "default proxy.buffer_size = {bs:?}"
    );
}

#[test]
fn sysctl_override_changes_the_printed_value() {
    let keys = sysctl_all(&["-o", "worker.count=3"]);
    assert_eq!(keys.get("worker.count").map(String::as_str), Some("3"));
    assert_eq!(
        keys.get("upstream.addr").map(String::as_str),
        Some("builtin"),
        "other keys keep defaults"
    );
}

#[test]
fn sysctl_reads_the_config_file_and_overrides_win() {
    let dir = temp_dir();
    let path = write_file(
        dir.path(),
        "good.conf",
        "# comment\nworker.count = 2   # trailing comment\n\nupstream.addr = 127.0.0.1:9\ntls.alpn = h2,http/1.1\n",
    );
    let p = path.to_str().unwrap();
    let keys = sysctl_all(&["-c", p, "-o", "upstream.addr=127.0.0.1:10"]);
    assert_eq!(
        keys.get("worker.count").map(String::as_str),
        Some("2"),
        "value from the file"
    );
    assert_eq!(
        keys.get("tls.alpn").map(String::as_str),
        Some("h2,http/1.1"),
        "value from the file"
    );
    assert_eq!(
        keys.get("upstream.addr").map(String::as_str),
        Some("127.0.0.1:10"),
        "-o wins over the file"
    );
}

#[test]
fn sysctl_single_key_prints_key_and_value() {
    let out = tlsfront_cmd(&["sysctl", "-o", "worker.count=3", "worker.count"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "worker.count = 3", "{}", out.describe());
}

/// `tlsfront check ARGS...`.
fn check(args: &[&str]) -> CmdOutput {
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    tlsfront_cmd(&full)
}

#[test]
fn check_passes_a_good_file_with_a_one_line_summary_and_touches_nothing() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (c, k) = pki.leaf(&["localhost"]).write(dir.path(), "default");
    let (ac, ak) = pki.leaf(&["*.example.com"]).write(dir.path(), "wild");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let text = format!(
        "net.listen = 127.0.0.1:9\ntls.cert = {}\ntls.key = {}\n\
         tls.sni.*.example.com.cert = {}\ntls.sni.*.example.com.key = {}\n\
         cache.path = {s}/c.cache\ntickets.path = {s}/t.ring\ncontrol.socket = {s}/c.sock\n",
        c.display(),
        k.display(),
        ac.display(),
        ak.display(),
        s = shared.display()
    );
    let conf = write_file(dir.path(), "good.conf", &text);
    let out = check(&["-c", conf.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line of summary\n{}", out.describe());
    assert!(
        lines[0].contains("OK") && lines[0].contains("2 certificate(s)"),
        "{}",
        out.describe()
    );
    let left: Vec<_> = std::fs::read_dir(&shared)
        .expect("read dir")
        .flatten()
        .collect();
    assert!(left.is_empty(), "check made shared files: {left:?}");
}

#[test]
fn check_names_every_problem_with_its_file_line_and_key() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (cert, _) = pki.leaf(&["localhost"]).write(dir.path(), "a");
    let (_, other_key) = pki.leaf(&["localhost"]).write(dir.path(), "b");
    let text = format!(
        "# two bad keys, and a certificate with the key of another\n\
         cache.sizee = 64m\nworker.count = 1\nproxy.buffer_size = 0\n\
         tls.cert = {}\ntls.key = {}\n",
        cert.display(),
        other_key.display()
    );
    let conf = write_file(dir.path(), "bad.conf", &text);
    let out = check(&["-c", conf.to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let p = conf.display();
    for want in [
        format!("{p}:2: key 'cache.sizee': unknown key"),
        format!("{p}:4: key 'proxy.buffer_size': 0 is out of range: must be from 1k to 16m"),
        format!("{p}:6: key 'tls.key': certificate {}", cert.display()),
    ] {
        assert!(
            out.stderr.contains(&want),
            "no {want:?}\n{}",
            out.describe()
        );
    }
    assert!(
        out.stderr.contains(&*other_key.to_string_lossy()),
        "the mismatched key file is named\n{}",
        out.describe()
    );
}

#[test]
fn check_names_an_ocsp_file_run_would_not_staple_and_a_bad_client_ca() {
    let (pki, dir) = (Pki::new(), temp_dir());
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "a");
    let not_ocsp = write_file(dir.path(), "resp.der", "not a DER OCSP response");
    let not_ca = write_file(dir.path(), "clients.pem", "no certificate here\n");
    let text = format!(
        "tls.cert = {}\ntls.key = {}\ntls.ocsp = {}\ntls.client_ca = {}\ntls.client_auth = required\n",
        cert.display(),
        key.display(),
        not_ocsp.display(),
        not_ca.display()
    );
    let conf = write_file(dir.path(), "tls.conf", &text);
    let out = check(&["-c", conf.to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let p = conf.display();
    for want in [
        format!(
            "{p}:3: key 'tls.ocsp': OCSP response {}",
            not_ocsp.display()
        ),
        format!("{p}:4: key 'tls.client_ca':"),
    ] {
        assert!(
            out.stderr.contains(&want),
            "no {want:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn check_blames_an_override_by_its_argument() {
    let out = check(&[
        "-o",
        "tls.cert=/nonexistent/c.pem",
        "-o",
        "tls.key=/nonexistent/c.key",
    ]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "-o tls.cert=/nonexistent/c.pem: key 'tls.cert': certificate /nonexistent/c.pem"
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn every_command_answers_help_with_its_usage() {
    for command in ["run", "check", "sysctl", "reload", "stats"] {
        let out = tlsfront_cmd(&[command, "--help"]);
        assert_eq!(out.code(), Some(0), "{command} --help\n{}", out.describe());
        assert!(
            out.stdout
                .starts_with(&format!("usage: tlsfront {command} "))
                && out.stdout.contains("-c, --config FILE"),
            "{command} --help\n{}",
            out.describe()
        );
    }
}

#[test]
fn a_stray_argument_to_run_is_an_error_and_nothing_starts() {
    let dir = temp_dir();
    let mut run = run_command(dir.path(), None, &[]);
    run.cmd.arg("stray");
    let out = run_cmd(run.cmd, b"", CLI_TIMEOUT);
    assert!(
        !out.timed_out(),
        "run started with a stray argument\n{}",
        out.describe()
    );
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("run: unexpected argument \"stray\""),
        "{}",
        out.describe()
    );
}

#[test]
fn an_option_a_command_does_not_take_is_an_error() {
    for args in [
        &["check", "--takeover"][..],
        &["stats", "-a"],
        &["reload", "extra"],
    ] {
        let out = tlsfront_cmd(args);
        assert_eq!(out.code(), Some(2), "{args:?}\n{}", out.describe());
        assert!(
            out.stderr.starts_with(&format!("tlsfront: {}: ", args[0])),
            "{args:?}\n{}",
            out.describe()
        );
    }
}

/// The duration keys of an older release, under the names it used, one a
/// line from line 2 (line 1 is `worker.count`).
const OLD_NAMED_KEYS: &str = "worker.count = 1\nworker.drain_secs = 7\n\
    cache.remote.timeout_ms = 150\ntickets.rotate_secs = 600\nlimits.idle_timeout_secs = 2m\n";

/// The old names of [`OLD_NAMED_KEYS`], their line, their new names and
/// the value each new name must show.
const RENAMED_IN_EFFECT: [(&str, usize, &str, &str); 4] = [
    ("worker.drain_secs", 2, "worker.drain_timeout", "7s"),
    (
        "cache.remote.timeout_ms",
        3,
        "cache.remote.timeout",
        "150ms",
    ),
    ("tickets.rotate_secs", 4, "tickets.rotate_interval", "600s"),
    ("limits.idle_timeout_secs", 5, "limits.idle_timeout", "120s"),
];

/// `text` has a warning, located at `origin` (`FILE:LINE`), for each use
/// of an old name of [`RENAMED_IN_EFFECT`].
fn warns_of_every_old_name(text: &str, path: &std::path::Path, context: &str) {
    for (old, line, new, _) in RENAMED_IN_EFFECT {
        let want = format!("{}:{line}: key '{old}' is renamed '{new}'", path.display());
        assert_eq!(
            text.matches(&want).count(),
            1,
            "{context}: not one warning {want:?}\n{text}"
        );
    }
}

/// An upgrade that keeps an older release's config file: the new binary
/// takes over (`--takeover`) with the file as it was, every value is in
/// effect under its new key, each old name gets one warning naming its new
/// key on stderr, and a reload of the same file is accepted and says so
/// too. `sysctl -a` lists the new names only.
#[test]
fn an_upgrade_that_keeps_a_file_with_old_key_names_runs_it_with_the_same_values_and_warns() {
    let dir = temp_dir();
    let conf = write_file(dir.path(), "old.conf", OLD_NAMED_KEYS);
    let reserved = ReservedPort::new();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let opts = [
        ("net.listen", format!("127.0.0.1:{}", reserved.port)),
        ("control.socket", path("ctl.sock")),
        ("cache.path", path("c.cache")),
        ("tickets.path", path("t.ring")),
    ];
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut old = Proc::start(Some(&conf), &opts);
    let takeover = ["sh", "-c", "exec \"$0\" \"$@\" --takeover"];
    let new = Proc::start_wrapped(&takeover, Some(&conf), &opts);
    old.signal(libc::SIGTERM);
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process did not stop\n{}",
        old.output()
    );
    warns_of_every_old_name(&new.stderr(), &conf, "start-up");
    let news: Vec<&str> = RENAMED_IN_EFFECT.iter().map(|r| r.2).collect();
    let shown = sysctl_read(&new.socket, &news);
    for (_, _, key, value) in RENAMED_IN_EFFECT {
        assert_eq!(shown[key], value, "{key}\n{}", new.output());
    }
    let all = tlsfront_cmd(&["sysctl", "--socket", &path("ctl.sock"), "-a"]);
    for (old_name, _, new_name, _) in RENAMED_IN_EFFECT {
        assert!(
            all.stdout.contains(&format!("{new_name} = "))
                && !all.stdout.contains(&format!("{old_name} = ")),
            "sysctl -a must list {new_name}, not {old_name}\n{}",
            all.describe()
        );
    }
    let reload = reload_cmd(&new.socket);
    assert_eq!(reload.code(), Some(0), "{}", reload.describe());
    assert!(reload.stdout.contains("reloaded"), "{}", reload.describe());
    warns_of_every_old_name(&reload.stdout, &conf, "reload");
}

/// `sysctl -w` and `sysctl KEY` take an old name too: the write sets the
/// new key (a bare number of `cache.remote.timeout_ms` being milliseconds),
/// the read shows the value as the old name showed it, and each warns on
/// stderr naming the new key.
#[test]
fn sysctl_writes_and_reads_a_key_under_its_old_name_with_a_warning() {
    let p = Proc::start(None, &[("worker.count", "1")]);
    let w = sysctl_write(&p.socket, &["tickets.rotate_secs=900"]);
    assert_eq!(w.code(), Some(0), "{}", w.describe());
    assert!(
        w.stderr
            .contains("key 'tickets.rotate_secs' is renamed 'tickets.rotate_interval'"),
        "{}",
        w.describe()
    );
    assert_eq!(
        sysctl_read(&p.socket, &["tickets.rotate_interval"])["tickets.rotate_interval"],
        "900s"
    );
    assert!(
        p.wait_stderr(
            "sysctl -w tickets.rotate_secs=900: key 'tickets.rotate_secs' is renamed",
            Duration::from_secs(5)
        ),
        "the server does not log the old name's use\n{}",
        p.output()
    );
    let sock = p.socket.display().to_string();
    let read = tlsfront_cmd(&["sysctl", "--socket", &sock, "cache.remote.timeout_ms"]);
    assert_eq!(read.code(), Some(0), "{}", read.describe());
    assert_eq!(
        read.stdout.trim(),
        "cache.remote.timeout_ms = 20",
        "{}",
        read.describe()
    );
    assert!(
        read.stderr
            .contains("key 'cache.remote.timeout_ms' is renamed 'cache.remote.timeout'"),
        "{}",
        read.describe()
    );
}

/// `tlsfront check` passes a file with old key names (exit 0, the summary)
/// and names each old name as a warning, at its line, with its new key.
#[test]
fn check_passes_a_file_with_old_key_names_and_warns_of_each() {
    let dir = temp_dir();
    let shared = dir.path().display();
    let text = format!(
        "{OLD_NAMED_KEYS}cache.path = {shared}/c.cache\ntickets.path = {shared}/t.ring\n\
         control.socket = {shared}/c.sock\n"
    );
    let conf = write_file(dir.path(), "old.conf", &text);
    let out = check(&["-c", conf.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
    assert!(!out.stderr.contains("error"), "{}", out.describe());
    warns_of_every_old_name(&out.stderr, &conf, "check");
}
