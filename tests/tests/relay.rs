//! Byte-exact relaying through tlsfront to an echo upstream, both directions at once.

use std::time::Duration;
use tlsfront_tests::*;

/// Sends `len` bytes of a pseudo-random pattern through tlsfront to an echo
/// upstream while reading the echo back on the same connection, and checks every
/// byte that comes back.
fn echo_round_trip(len: u64, timeout: Duration) {
    let pki = Pki::new();
    let dir = temp_dir();
    let upstream = Upstream::echo();
    let fe = Frontend::with_leaf(&pki, dir.path(), &upstream.addr_string());

    let mut client =
        TlsClient::connect(fe.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
            .unwrap_or_else(|e| panic!("TLS handshake with tlsfront failed: {e}\n{}", fe.output()));

    let seed = 0x5eed_0000 + len;
    let (r, check) = client.echo_pattern(seed, len, &PumpOpts::receive(len, timeout));
    assert_eq!(
        r.sent,
        len,
        "not everything was sent: {r:?}\n{}",
        fe.output()
    );
    assert_eq!(
        r.end,
        End::Count,
        "echo stream ended early after {} of {len} bytes: {r:?}\n{}",
        check.received,
        fe.output()
    );
    assert_eq!(check.received, len, "received byte count differs: {r:?}");
    assert_eq!(
        check.first_mismatch, None,
        "echoed data differs from what was sent, first difference at byte offset {:?} (of {len})",
        check.first_mismatch
    );
    eprintln!("relayed {len} bytes each way in {:?}", r.elapsed);
}

#[test]
fn relays_one_byte_byte_exact_both_ways() {
    echo_round_trip(1, Duration::from_secs(10));
}

#[test]
fn relays_one_mebibyte_byte_exact_both_ways() {
    echo_round_trip(1 << 20, Duration::from_secs(30));
}

#[test]
fn relays_sixty_four_mebibytes_byte_exact_both_ways() {
    echo_round_trip(64 << 20, Duration::from_secs(180));
}
