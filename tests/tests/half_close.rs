//! Half-close: the client's close_notify (or FIN) reaches the upstream as EOF while
//! the upstream's reply keeps flowing to the client, which then sees a clean end.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use tlsfront_tests::*;

const CLIENT_SEED: u64 = 0xC11E;
const CLIENT_LEN: u64 = 300_000;
const REPLY_SEED: u64 = 0x5E4E;
const REPLY_LEN: usize = 1 << 20;

/// Upstream that reads until EOF, then answers `bytes=N fnv=HEX\n` followed by
/// REPLY_LEN bytes of the reply pattern, and closes.
fn summarising_upstream() -> Upstream {
    Upstream::start(|mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut n = 0u64;
        let mut fnv = Fnv::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    n += k as u64;
                    fnv.update(&buf[..k]);
                }
                Err(_) => return, // no EOF seen: the client will time out
            }
        }
        let mut reply = format!("bytes={n} fnv={:016x}\n", fnv.0).into_bytes();
        reply.extend_from_slice(&Pattern::bytes(REPLY_SEED, REPLY_LEN));
        let _ = s.write_all(&reply);
        let _ = s.shutdown(Shutdown::Write);
    })
}

fn half_close_exchange(tcp_shutdown: bool) {
    let pki = Pki::new();
    let dir = temp_dir();
    let upstream = summarising_upstream();
    let fe = Frontend::with_leaf(&pki, dir.path(), &upstream.addr_string());
    let mut client =
        TlsClient::connect(fe.addr(), ClientSpec::new(pki.trust()).build(), "localhost")
            .unwrap_or_else(|e| panic!("TLS handshake failed: {e}\n{}", fe.output()));

    let mut source = pattern_source(CLIENT_SEED, CLIENT_LEN);
    let mut got = Vec::new();
    let mut sink = |d: &[u8]| got.extend_from_slice(d);
    let r = client.pump(
        &mut source,
        &mut sink,
        &PumpOpts {
            close_notify_after_send: true,
            tcp_shutdown_after_close_notify: tcp_shutdown,
            recv_until: None,
            timeout: Duration::from_secs(30),
        },
    );
    assert_eq!(r.sent, CLIENT_LEN, "{r:?}");
    assert_ne!(
        r.end,
        End::Timeout,
        "no reply/end within 30 s after close_notify: the upstream probably never saw EOF \
         (received {} bytes): {r:?}\n{}",
        got.len(),
        fe.output()
    );

    let nl = got.iter().position(|&b| b == b'\n').unwrap_or_else(|| {
        panic!(
            "reply has no summary line ({} bytes, end {:?})\n{}",
            got.len(),
            r.end,
            fe.output()
        )
    });
    let summary = String::from_utf8_lossy(&got[..nl]).into_owned();
    let expect = format!(
        "bytes={CLIENT_LEN} fnv={:016x}",
        Fnv::of(&Pattern::bytes(CLIENT_SEED, CLIENT_LEN as usize))
    );
    assert_eq!(summary, expect, "upstream saw different request bytes");
    let body = &got[nl + 1..];
    assert_eq!(
        body.len(),
        REPLY_LEN,
        "reply body length after half-close; end {:?}\n{}",
        r.end,
        fe.output()
    );
    assert!(
        body == Pattern::bytes(REPLY_SEED, REPLY_LEN).as_slice(),
        "reply body differs"
    );
    assert_eq!(
        r.end,
        End::CloseNotify,
        "after the upstream closed, the client should get close_notify (clean EOF)\n{}",
        fe.output()
    );
}

#[test]
fn client_close_notify_reaches_upstream_as_eof_and_full_reply_still_arrives() {
    half_close_exchange(false);
}

#[test]
fn client_close_notify_then_tcp_fin_still_gets_full_reply_and_clean_eof() {
    half_close_exchange(true);
}
