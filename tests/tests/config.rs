//! Configuration: errors name the file, line and key (or the -o override), and
//! `tlsfront sysctl` lists every key.

use tlsfront_tests::*;

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

/// `30s`, `5m`, `1h`, `3600` as seconds; `None` if `v` is not a duration.
fn seconds(v: &str) -> Option<u64> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
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
            got != v && (seconds(got).is_none() || seconds(got) != seconds(v))
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
