//! Single use, fleet-wide, or refused: with `tickets.tls13_mode =
//! stateful` and `cache.remote`, a TLS 1.3 ticket is redeemed by `GETDEL`
//! (once in the fleet) or not at all. Judged by `openssl s_client`
//! (`Reused,` / `New,`, `Early data was accepted|rejected`) offering the
//! same saved session to several hosts, which a real replaying client can
//! do; tlsfront's counters are checked against what the client saw.
//!
//! Needs redis-server and openssl (scripts/setup.sh installs them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tlsfront_tests::openssl_client::{count_reused, lines_starting, s_client, save_sessions};
use tlsfront_tests::prereq::{require, Need};
use tlsfront_tests::redis::LocalRedis;
use tlsfront_tests::resp::RespValue;
use tlsfront_tests::{write_file, CmdOutput, Frontend};

/// Sessions saved per test.
const SESSIONS: usize = 8;

fn needs() {
    require(&[Need::Program("redis-server"), Need::Program("openssl")]);
}

/// Two hosts' options: one Redis, one secret, stateful TLS 1.3 tickets
/// (one per handshake, so each saved session is the only ticket its
/// handshake made), 0-RTT allowed.
fn fleet_options(dir: &std::path::Path, redis: &LocalRedis) -> Vec<(String, String)> {
    let secret = write_file(dir, "fleet.secret", &"f".repeat(48));
    [
        ("worker.count", "1".to_string()),
        ("tls.protocols", "1.3".to_string()),
        ("tickets.tls13_mode", "stateful".to_string()),
        ("tls.tls13_tickets", "1".to_string()),
        ("tls.early_data_max", "16k".to_string()),
        ("cache.remote", format!("redis://{}", redis.addr)),
        ("cache.remote.secret", format!("file:{}", secret.display())),
        ("cache.remote.timeout", "500ms".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn start(opts: &[(String, String)]) -> Frontend {
    let refs: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Frontend::start(&refs)
}

/// Saves [`SESSIONS`] TLS 1.3 sessions made on `fe` and waits until Redis
/// holds a value for each (the issuer's writes are asynchronous).
fn sessions_in_redis(fe: &Frontend, redis: &LocalRedis, dir: &std::path::Path) -> Vec<PathBuf> {
    let before = redis.keys();
    let saved = save_sessions(fe.port, dir, SESSIONS, &["-tls1_3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.keys() < before + SESSIONS as i64 {
        assert!(
            Instant::now() < deadline,
            "the tickets did not reach Redis: {} keys, {} before\n{}",
            redis.keys(),
            before,
            fe.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    saved
}

/// s_client offering `sess` with `early` as 0-RTT data.
fn resume_with_early_data(
    fe: &Frontend,
    sess: &std::path::Path,
    early: &std::path::Path,
) -> CmdOutput {
    let sess_arg = sess.display().to_string();
    let early_arg = early.display().to_string();
    s_client(
        fe.port,
        "localhost",
        &["-tls1_3", "-sess_in", &sess_arg, "-early_data", &early_arg],
        b"",
    )
}

#[test]
fn a_stateful_ticket_redeemed_on_one_host_resumes_on_no_host_again() {
    needs();
    let dir = tlsfront_tests::temp_dir();
    let redis = LocalRedis::start(dir.path());
    let opts = fleet_options(dir.path(), &redis);
    let a = start(&opts);
    let b = start(&opts);
    let saved = sessions_in_redis(&a, &redis, dir.path());

    assert_eq!(
        count_reused(b.port, &saved, &["-tls1_3"]),
        SESSIONS,
        "A's tickets must resume once on B (GETDEL)\n{}",
        b.output()
    );
    assert!(b.stats().total.get("remote_hits") >= SESSIONS as u64);
    let a_gets = a.stats().total.get("remote_gets");
    assert_eq!(
        count_reused(a.port, &saved, &["-tls1_3"]),
        0,
        "a ticket redeemed on B must not resume on A, which issued it and still had a local copy\n{}",
        a.output()
    );
    assert!(
        a.stats().total.get("remote_gets") >= a_gets + SESSIONS as u64,
        "A must have asked Redis (GETDEL) for each, not trusted its local copy"
    );
    assert_eq!(
        count_reused(b.port, &saved, &["-tls1_3"]),
        0,
        "nor again on B"
    );
}

#[test]
fn a_stateful_ticket_resumes_once_on_the_host_that_issued_it() {
    needs();
    let dir = tlsfront_tests::temp_dir();
    let redis = LocalRedis::start(dir.path());
    let a = start(&fleet_options(dir.path(), &redis));
    let saved = sessions_in_redis(&a, &redis, dir.path());
    assert_eq!(count_reused(a.port, &saved, &["-tls1_3"]), SESSIONS);
    assert_eq!(count_reused(a.port, &saved, &["-tls1_3"]), 0);
}

#[test]
fn with_redis_gone_a_stateful_ticket_is_refused_and_its_early_data_with_it() {
    needs();
    let dir = tlsfront_tests::temp_dir();
    let mut redis = LocalRedis::start(dir.path());
    let opts = fleet_options(dir.path(), &redis);
    let a = start(&opts);
    let b = start(&opts);
    let early = write_file(dir.path(), "early.txt", "GET / HTTP/1.0\r\n\r\n");
    let saved = sessions_in_redis(&a, &redis, dir.path());

    // Control, Redis up: the first ticket resumes on the other host with
    // its early data accepted (so refusals below are not for lack of 0-RTT).
    let control = resume_with_early_data(&b, &saved[0], &early);
    assert_eq!(
        lines_starting(&control, "Reused,"),
        1,
        "{}",
        control.describe()
    );
    assert!(
        control.stdout.contains("Early data was accepted"),
        "0-RTT must be accepted across hosts while Redis answers\n{}\n{}",
        control.describe(),
        b.output()
    );

    redis.kill();
    let failures_before = {
        let t = a.stats().total;
        t.get("remote_errors") + t.get("remote_timeouts") + t.get("remote_skipped")
    };
    for sess in &saved[1..] {
        let out = resume_with_early_data(&a, sess, &early);
        assert_eq!(
            lines_starting(&out, "New,"),
            1,
            "with Redis gone, the issuer's local copy must not be redeemed (fail closed)\n{}\n{}",
            out.describe(),
            a.output()
        );
        assert!(
            out.stdout.contains("Early data was rejected"),
            "0-RTT must be refused when the ticket cannot be redeemed fleet-wide\n{}",
            out.describe()
        );
    }
    let t = a.stats().total;
    let failures = t.get("remote_errors") + t.get("remote_timeouts") + t.get("remote_skipped");
    assert!(
        failures - failures_before >= (SESSIONS - 1) as u64,
        "every refused redemption must be counted as a Redis failure: {} → {}",
        failures_before,
        failures
    );
}

/// Every key and value Redis holds.
fn redis_dump(redis: &LocalRedis) -> Vec<(Vec<u8>, Vec<u8>)> {
    let keys = match redis.command(&[b"KEYS", b"*"]) {
        Ok(RespValue::Array(keys)) => keys,
        other => panic!("KEYS *: {other:?}"),
    };
    keys.into_iter()
        .filter_map(|k| match k {
            RespValue::Bulk(Some(k)) => match redis.command(&[b"GET", &k]) {
                Ok(RespValue::Bulk(Some(v))) => Some((k, v)),
                _ => None,
            },
            other => panic!("KEYS * returned {other:?}"),
        })
        .collect()
}

#[test]
fn an_old_value_written_back_into_redis_after_its_lifetime_resumes_nothing() {
    needs();
    let dir = tlsfront_tests::temp_dir();
    let redis = LocalRedis::start(dir.path());
    let secret = write_file(dir.path(), "fleet.secret", &"o".repeat(48));
    let url = format!("redis://{}", redis.addr);
    let secret = format!("file:{}", secret.display());
    let opts = [
        ("worker.count", "1"),
        ("tls.protocols", "1.2"),
        ("cache.timeout", "2s"),
        ("cache.remote", url.as_str()),
        ("cache.remote.secret", secret.as_str()),
        ("cache.remote.timeout", "500ms"),
    ];
    let issuer = Frontend::start(&opts);
    let id_only = ["-tls1_2", "-no_ticket"];
    let saved = save_sessions(issuer.port, dir.path(), 1, &id_only);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.keys() < 1 {
        assert!(
            Instant::now() < deadline,
            "the session did not reach Redis\n{}",
            issuer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let copied = redis_dump(&redis);
    assert_eq!(copied.len(), 1, "one session, one value");

    // Control: while fresh, the value resumes on another host.
    let other = Frontend::start(&opts);
    assert_eq!(
        count_reused(other.port, &saved, &id_only),
        1,
        "{}",
        other.output()
    );

    // Past its sealed lifetime, written back with a fresh Redis TTL.
    std::thread::sleep(Duration::from_secs(3));
    for (k, v) in &copied {
        let set = redis.command(&[b"SET", k, v, b"EX", b"60"]);
        assert!(
            matches!(set, Ok(RespValue::Simple(ref s)) if s == "OK"),
            "SET: {set:?}"
        );
    }
    let third = Frontend::start(&opts);
    assert_eq!(
        count_reused(third.port, &saved, &id_only),
        0,
        "an expired value written back must not resume\n{}",
        third.output()
    );
    assert_eq!(
        third.stats().total.get("remote_stale"),
        1,
        "it must have been found and refused as stale, not missed"
    );
}
