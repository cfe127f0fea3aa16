use super::*;

/// `text` as the file `test.conf`, checked as `run` checks it: the first
/// problem, located.
fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut l = Loaded::default();
    l.apply_text(Path::new("test.conf"), text);
    l.check_values();
    match l.problems.into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(l.config),
    }
}

#[test]
fn every_default_parses_and_renders_back() {
    let c = Config::default();
    for k in KEYS {
        let shown = c.get(k.name).expect("every key has a value");
        let mut again = Config::default();
        again
            .set(k.name, &shown)
            .unwrap_or_else(|e| panic!("{} = {shown}: {e}", k.name));
        assert_eq!(
            again.get(k.name).as_deref(),
            Some(shown.as_str()),
            "{}",
            k.name
        );
    }
}

#[test]
fn keys_are_unique_and_documented() {
    let mut names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), KEYS.len());
    assert!(KEYS.iter().all(|k| !k.doc.is_empty()));
}

#[test]
fn comments_blank_lines_and_units_are_understood() {
    let c = parse(
        "# a comment\n\nnet.listen = 127.0.0.1:9443  # trailing\nproxy.buffer_size = 2m\n\
         upstream.connect_timeout = 2m\nworker.count = 3\nworker.pin_cpus = 0\n",
    )
    .expect("valid config");
    assert_eq!(c.listen.port(), 9443);
    assert_eq!(c.buffer_size, Size(2 << 20));
    assert_eq!(c.connect_timeout.0.as_secs(), 120);
    assert_eq!(c.workers, WorkerCount::Fixed(3));
    assert!(!c.pin_cpus);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = parse("net.listen = 127.0.0.1:1\n\ncache.sizee = 64m\n").expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.starts_with("test.conf:3: key 'cache.sizee': unknown key"),
        "{msg}"
    );
}

#[test]
fn bad_unit_names_the_key() {
    let msg = parse("proxy.buffer_size = 64q\n")
        .expect_err("bad unit")
        .to_string();
    assert!(
        msg.contains("test.conf:1: key 'proxy.buffer_size'"),
        "{msg}"
    );
    assert!(msg.contains("64q"), "{msg}");
}

#[test]
fn bad_value_names_the_key() {
    let msg = parse("worker.count = lots\n")
        .expect_err("bad value")
        .to_string();
    assert!(msg.contains("test.conf:1: key 'worker.count'"), "{msg}");
}

#[test]
fn line_without_equals_is_a_syntax_error_with_its_line() {
    let msg = parse("\nnet.listen 127.0.0.1:1\n")
        .expect_err("no =")
        .to_string();
    assert!(
        msg.starts_with("test.conf:2: expected `key = value`"),
        "{msg}"
    );
}

#[test]
fn a_key_set_twice_is_refused() {
    let msg = parse("worker.count = 1\nworker.count = 2\n")
        .expect_err("duplicate")
        .to_string();
    assert!(
        msg.contains("test.conf:2: key 'worker.count': set twice (first on line 1)"),
        "{msg}"
    );
}

#[test]
fn overrides_apply_after_the_file_and_name_the_argument() {
    let mut c = Config::default();
    c.apply_override("worker.count=2").expect("valid override");
    assert_eq!(c.workers, WorkerCount::Fixed(2));
    let msg = c
        .apply_override("net.listen=nowhere")
        .expect_err("bad")
        .to_string();
    assert!(
        msg.starts_with("-o net.listen=nowhere: key 'net.listen':"),
        "{msg}"
    );
    assert!(matches!(
        c.apply_override("justakey"),
        Err(ConfigError::OverrideSyntax { .. })
    ));
}

#[test]
fn sni_keys_collect_per_name_and_need_both_parts() {
    let c = parse("tls.sni.A.example.cert = /a.pem\ntls.sni.a.example.key = /a.key\n")
        .expect("valid sni");
    let a = c.sni.get("a.example").expect("name lower-cased");
    assert_eq!(a.cert.as_deref(), Some(Path::new("/a.pem")));
    assert_eq!(a.key.as_deref(), Some(Path::new("/a.key")));
    let msg = parse("tls.sni.b.example.cert = /b.pem\n")
        .expect_err("no key")
        .to_string();
    assert!(msg.contains("tls.sni.b.example"), "{msg}");
}

#[test]
fn a_wildcard_sni_name_is_accepted_as_the_whole_leftmost_label() {
    let c = parse("tls.sni.*.Example.com.cert = /w.pem\ntls.sni.*.example.com.key = /w.key\n")
        .expect("valid wildcard");
    assert!(c.sni.contains_key("*.example.com"), "{:?}", c.sni);
}

#[test]
fn a_wildcard_anywhere_but_the_whole_leftmost_label_is_refused_naming_the_key() {
    for name in [
        "w*.example.com",
        "*.*.example.com",
        "www.*.com",
        "*",
        "a..b",
    ] {
        let msg = parse(&format!("tls.sni.{name}.cert = /w.pem\n"))
            .expect_err(name)
            .to_string();
        assert!(
            msg.contains(&format!("key 'tls.sni.{name}.cert'"))
                && msg.contains("not a server name"),
            "{name}: {msg}"
        );
    }
}

#[test]
fn cert_without_key_is_refused() {
    let msg = parse("tls.cert = /c.pem\n")
        .expect_err("no key")
        .to_string();
    assert!(msg.contains("tls.key"), "{msg}");
}

#[test]
fn protocols_refuse_old_versions() {
    let msg = parse("tls.protocols = 1.1,1.2\n")
        .expect_err("1.1")
        .to_string();
    assert!(
        msg.contains("tls.protocols") && msg.contains("1.1"),
        "{msg}"
    );
}

#[test]
fn size_renders_in_the_largest_exact_unit() {
    assert_eq!(Size(64 << 10).render(), "64k");
    assert_eq!(Size(3 << 30).render(), "3g");
    assert_eq!(Size(1000).render(), "1000");
}

/// Fails when the generated file `path` (relative to the workspace) is not
/// `expected`. With `TLSFRONT_UPDATE_DOCS` set it also rewrites the file,
/// and still fails: a run that found it stale must not pass, so that the
/// rewrite is noticed and committed (the next run passes).
fn assert_generated_file_is_current(path: &str, expected: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let actual = std::fs::read_to_string(&full).unwrap_or_default();
    if actual == expected {
        return actual;
    }
    if std::env::var_os("TLSFRONT_UPDATE_DOCS").is_some() {
        std::fs::write(&full, expected).unwrap_or_else(|e| panic!("write {path}: {e}"));
        panic!("{path} was stale and has been rewritten: review and commit it, then run again");
    }
    panic!("{path} is stale: run TLSFRONT_UPDATE_DOCS=1 cargo test -p tlsfront config_reference");
}

/// `docs/config.md` is generated from the key table; this fails when it is
/// stale. `TLSFRONT_UPDATE_DOCS=1` rewrites it (and fails once).
#[test]
fn config_reference_page_is_current() {
    assert_generated_file_is_current("docs/config.md", &reference_markdown());
}

/// `examples/tlsfront.conf` lists every key at its default and parses to
/// exactly the defaults; regenerated with `TLSFRONT_UPDATE_DOCS=1` (which
/// fails once).
#[test]
fn config_reference_example_file_is_current_and_parses_to_the_defaults() {
    let actual = assert_generated_file_is_current("examples/tlsfront.conf", &example_file());
    let parsed = parse(&actual).expect("the example parses");
    assert_eq!(parsed.entries(), Config::default().entries());
}

#[test]
fn a_hash_after_a_blank_starts_a_comment_elsewhere_it_belongs_to_the_value() {
    let c = parse(
        "cache.remote = redis://:pa#ss@127.0.0.1:6379 # the fleet's Redis\n\
         cache.remote.secret = file:/etc/secret\t# tab, then comment\n",
    )
    .expect("valid");
    assert_eq!(
        c.cache_remote.0.as_deref(),
        Some("redis://:pa#ss@127.0.0.1:6379")
    );
    assert_eq!(
        c.cache_remote_secret.0.as_deref(),
        Some(Path::new("/etc/secret"))
    );
}

#[test]
fn an_escaped_hash_is_kept_even_after_a_blank() {
    let c = parse("tls.cert = /etc/my \\#1/c.pem\ntls.key = /k\\#\n").expect("valid");
    assert_eq!(c.cert.0.as_deref(), Some(Path::new("/etc/my #1/c.pem")));
    assert_eq!(c.key.0.as_deref(), Some(Path::new("/k#")));
}

#[test]
fn an_override_takes_its_whole_value_hash_included() {
    let mut c = Config::default();
    c.apply_override("tls.cert=/a #b").expect("valid");
    assert_eq!(c.cert.0.as_deref(), Some(Path::new("/a #b")));
}

/// `key = value` refused, the message naming the key and the range.
fn refused_out_of_range(key: &str, value: &str) {
    let msg = parse(&format!("{key} = {value}\n"))
        .expect_err(&format!("{key} = {value}"))
        .to_string();
    assert!(
        msg.contains(&format!("test.conf:1: key '{key}'")) && msg.contains("must be from"),
        "{key} = {value}: {msg}"
    );
}

#[test]
fn a_zero_buffer_size_is_refused_naming_the_key() {
    refused_out_of_range("proxy.buffer_size", "0");
}

#[test]
fn absurd_sizes_counts_and_durations_are_refused_naming_the_key() {
    for (key, value) in [
        ("proxy.buffer_size", "1g"),
        ("tls.tls13_tickets", "1000"),
        ("net.backlog", "0"),
        ("limits.idle_timeout", "0"),
        ("limits.idle_timeout", "100000h"),
        ("limits.handshake_timeout", "2h"),
        ("upstream.connect_timeout", "0"),
        ("cache.size", "1k"),
        ("cache.timeout", "0"),
        ("cache.remote.queue", "0"),
        ("tickets.rotate_interval", "0"),
        ("tickets.rotate_interval", "200h"),
        ("worker.drain_timeout", "25h"),
        ("limits.max_connections", "4000000000"),
    ] {
        refused_out_of_range(key, value);
    }
}

#[test]
fn a_worker_count_of_zero_is_refused_naming_the_key() {
    let msg = parse("worker.count = 0\n")
        .expect_err("0 workers")
        .to_string();
    assert!(msg.contains("test.conf:1: key 'worker.count'"), "{msg}");
}

#[test]
fn every_range_names_a_numeric_key_and_holds_its_default() {
    let c = Config::default();
    for r in RANGES {
        let v = c
            .magnitude(r.key)
            .unwrap_or_else(|| panic!("{} is not a numeric key", r.key));
        assert!(
            (r.min..=r.max).contains(&v),
            "default of {} out of its range",
            r.key
        );
    }
    assert!(c.problems().is_empty(), "{:?}", c.problems());
}

#[test]
fn the_edges_of_a_range_are_accepted() {
    parse("proxy.buffer_size = 1k\ntls.tls13_tickets = 0\nlimits.idle_timeout = 7d\n")
        .expect("edges of their ranges");
}

#[test]
fn every_problem_of_a_file_is_collected_with_its_line() {
    let loaded = Loaded::read(None, &[]);
    assert!(loaded.problems.is_empty());
    let mut l = Loaded::default();
    l.apply_text(
        Path::new("test.conf"),
        "cache.sizee = 1\nworker.count = 1\nproxy.buffer_size = 0\nworker.count = 2\n",
    );
    let lines: Vec<String> = l.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("test.conf:1: key 'cache.sizee'"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("test.conf:4: key 'worker.count': set twice"),
        "{lines:?}"
    );
    assert_eq!(
        l.locate("proxy.buffer_size", "out".into()).to_string(),
        "test.conf:3: key 'proxy.buffer_size': out"
    );
}

#[test]
fn net_listen_takes_a_comma_separated_list_of_ipv4_and_ipv6_addresses() {
    let c = parse("net.listen = 0.0.0.0:443, [::]:443,127.0.0.1:8443\n").expect("valid list");
    let want: Vec<std::net::SocketAddr> = ["0.0.0.0:443", "[::]:443", "127.0.0.1:8443"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    assert_eq!(c.listen.0, want);
    assert_eq!(c.listen.port(), 443);
    assert_eq!(
        Listen::parse(&c.listen.render()).expect("renders back"),
        c.listen
    );
}

#[test]
fn net_listen_refuses_an_empty_entry_a_duplicate_and_a_bad_address() {
    for value in [
        "127.0.0.1:1,",
        "127.0.0.1:1, 127.0.0.1:1",
        "127.0.0.1:1, nowhere",
    ] {
        let msg = parse(&format!("net.listen = {value}\n"))
            .expect_err(value)
            .to_string();
        assert!(
            msg.contains("test.conf:1: key 'net.listen'"),
            "{value}: {msg}"
        );
    }
}

#[test]
fn durations_take_nginx_units_and_a_bare_number_is_seconds() {
    for (raw, millis) in [
        ("250ms", 250),
        ("30", 30_000),
        ("30s", 30_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("5 S", 5_000),
        ("20MS", 20),
    ] {
        let d = Duration::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(d.0, std::time::Duration::from_millis(millis), "{raw}");
    }
    for raw in ["", "s", "1.5s", "-1s", "1w", "1h30m", "ms"] {
        let e = Duration::parse(raw).expect_err(raw);
        assert!(e.contains("ms, s, m, h or d"), "{raw}: {e}");
    }
}

#[test]
fn a_duration_renders_whole_seconds_as_s_and_finer_ones_as_ms_and_parses_back() {
    for (millis, shown) in [
        (0, "0s"),
        (1500, "1500ms"),
        (3_600_000, "3600s"),
        (20, "20ms"),
    ] {
        let d = Duration(std::time::Duration::from_millis(millis));
        assert_eq!(d.render(), shown);
        assert_eq!(Duration::parse(shown), Ok(d), "{shown}");
    }
}

#[test]
fn a_key_that_counts_in_whole_seconds_refuses_a_fraction_of_one_naming_the_key() {
    for key in ["cache.timeout", "tickets.rotate_interval"] {
        let msg = parse(&format!("{key} = 1500ms\n"))
            .expect_err(key)
            .to_string();
        assert!(
            msg.contains(&format!("test.conf:1: key '{key}'"))
                && msg.contains("not a whole number of seconds"),
            "{key}: {msg}"
        );
        let c = parse(&format!("{key} = 2000ms\n")).expect("whole seconds in ms");
        assert_eq!(c.get(key).as_deref(), Some("2s"), "{key}");
    }
}

#[test]
fn cache_remote_timeout_takes_milliseconds_and_its_range_is_shown_in_them() {
    let c = parse("cache.remote.timeout = 150ms\n").expect("150ms");
    assert_eq!(
        c.cache_remote_timeout.0,
        std::time::Duration::from_millis(150)
    );
    let msg = parse("cache.remote.timeout = 2s\n")
        .expect_err("over 1s")
        .to_string();
    assert_eq!(
        msg,
        "test.conf:1: key 'cache.remote.timeout': 2s is out of range: must be from 1ms to 1s"
    );
}

/// Every renamed key, under its old name, in a file of an older release.
const OLD_NAMED_FILE: &str = "worker.drain_secs = 7\nupstream.down_secs = 8\n\
    limits.handshake_timeout_secs = 9\nlimits.idle_timeout_secs = 2m\n\
    cache.timeout_secs = 600\ncache.remote.timeout_ms = 150\ntickets.rotate_secs = 1h\n";

#[test]
fn old_key_names_set_their_new_keys_with_their_old_meaning_of_a_bare_number() {
    let c = parse(OLD_NAMED_FILE).expect("an older release's file");
    for (new, value) in [
        ("worker.drain_timeout", "7s"),
        ("upstream.down_time", "8s"),
        ("limits.handshake_timeout", "9s"),
        ("limits.idle_timeout", "120s"),
        ("cache.timeout", "600s"),
        ("cache.remote.timeout", "150ms"),
        ("tickets.rotate_interval", "3600s"),
    ] {
        assert_eq!(c.get(new).as_deref(), Some(value), "{new}");
    }
    assert_eq!(c.get("cache.remote.timeout_ms").as_deref(), Some("150"));
    assert_eq!(c.get("tickets.rotate_secs").as_deref(), Some("3600s"));
}

#[test]
fn each_use_of_an_old_key_name_is_one_warning_naming_the_new_key_at_its_line() {
    let mut l = Loaded::default();
    l.apply_text(Path::new("test.conf"), OLD_NAMED_FILE);
    l.apply_override("worker.drain_secs=3");
    assert!(l.problems.is_empty(), "{:?}", l.problems);
    let lines: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(lines.len(), RENAMED.len() + 1, "{lines:#?}");
    assert!(
        lines[5].starts_with(
            "test.conf:6: key 'cache.remote.timeout_ms' is renamed 'cache.remote.timeout'"
        ) && lines[5].contains("milliseconds under the old name"),
        "{lines:#?}"
    );
    assert!(
        lines[7].starts_with("-o worker.drain_secs=3: key 'worker.drain_secs' is renamed"),
        "{lines:#?}"
    );
    let mut fresh = Loaded::default();
    fresh.apply_text(Path::new("test.conf"), "cache.timeout = 300s\n");
    assert!(fresh.warnings.is_empty(), "{:?}", fresh.warnings);
}

#[test]
fn an_old_key_name_and_its_new_one_in_one_file_are_a_key_set_twice() {
    let msg = parse("cache.timeout_secs = 300\ncache.timeout = 600s\n")
        .expect_err("the same key twice")
        .to_string();
    assert!(
        msg.contains("test.conf:2: key 'cache.timeout': set twice (first on line 1)"),
        "{msg}"
    );
}

#[test]
fn an_old_key_name_out_of_range_is_located_at_its_line_with_the_new_keys_bounds() {
    let msg = parse("\ncache.remote.timeout_ms = 5000\n")
        .expect_err("5 s")
        .to_string();
    assert_eq!(
        msg,
        "test.conf:2: key 'cache.remote.timeout': 5s is out of range: must be from 1ms to 1s"
    );
}

#[test]
fn every_old_key_name_describes_and_changes_like_its_new_key_and_is_not_listed() {
    let listed: Vec<String> = Config::default()
        .entries()
        .into_iter()
        .map(|e| e.0)
        .collect();
    for r in RENAMED {
        let new = key_info(r.new).unwrap_or_else(|| panic!("{} is no key", r.new));
        let old = key_info(r.old).unwrap_or_else(|| panic!("{} unknown", r.old));
        assert_eq!((old.name, old.change), (new.name, new.change), "{}", r.old);
        assert!(!listed.contains(&r.old.to_string()), "{} listed", r.old);
        assert!(renamed_key(r.new).is_none(), "{} is both", r.new);
    }
}

#[test]
fn the_reference_page_tables_every_renamed_key() {
    let page = reference_markdown();
    let table = page
        .split("## Renamed keys")
        .nth(1)
        .expect("a Renamed keys section");
    for r in RENAMED {
        assert!(
            table.contains(&format!("| `{}` | `{}` |", r.old, r.new)),
            "{} missing",
            r.old
        );
    }
}
