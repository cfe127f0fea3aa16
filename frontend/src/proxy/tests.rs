//! The relay driven in memory: a rustls client and the relay exchange
//! buffers, no sockets.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::Relay;

const LIMIT: usize = 64 * 1024;

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = crate::tls::provider();
    let key = crate::tls::self_signed(&provider).expect("self-signed cert");
    let mut roots = RootCertStore::empty();
    roots
        .add(key.cert[0].clone())
        .expect("self-signed cert is a valid root");
    let resolver = crate::tls::CertResolver::new(Arc::new(key), Default::default());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn connected() -> (ClientConnection, Relay) {
    let (server, client) = configs();
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(client, name).expect("client");
    let mut relay = Relay::new(ServerConnection::new(server).expect("server"), LIMIT);
    pump(&mut client, &mut relay);
    assert!(!relay.is_handshaking() && !client.is_handshaking());
    (client, relay)
}

/// Moves every pending byte client → relay and relay → client until
/// neither has anything to say.
fn pump(client: &mut ClientConnection, relay: &mut Relay) {
    for _ in 0..64 {
        let mut progressed = false;
        // Like a socket the relay does not read from, bytes wait on the
        // client's side while the relay is paused.
        if relay.wants_client_read() && client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client write_tls");
            relay
                .receive_from_client(&buf)
                .expect("relay accepts client bytes");
            progressed = true;
        }
        let mut out = Vec::new();
        relay.client_output(&mut out).expect("relay output");
        if !out.is_empty() {
            let mut slice = &out[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client read_tls");
                client
                    .process_new_packets()
                    .expect("client accepts server bytes");
            }
            progressed = true;
        }
        if !progressed {
            return;
        }
    }
}

#[test]
fn handshake_completes_in_memory() {
    let (client, relay) = connected();
    assert_eq!(client.protocol_version(), relay.tls().protocol_version());
}

#[test]
fn client_plaintext_reaches_the_upstream_buffer_byte_exact() {
    let (mut client, mut relay) = connected();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    client.writer().write_all(&data).expect("client write");
    pump(&mut client, &mut relay);
    let mut got = Vec::new();
    relay.take_upstream_bytes(&mut got);
    assert_eq!(got, data);
}

#[test]
fn upstream_bytes_reach_the_client_and_close_notify_ends_them() {
    let (mut client, mut relay) = connected();
    assert_eq!(relay.send_to_client(b"hello").expect("write"), 5);
    relay.upstream_closed();
    pump(&mut client, &mut relay);
    let mut got = Vec::new();
    client.reader().read_to_end(&mut got).expect("clean end");
    assert_eq!(got, b"hello");
}

#[test]
fn plaintext_towards_the_client_is_bounded_by_the_limit() {
    let (_client, mut relay) = connected();
    let chunk = vec![0u8; 16 * 1024];
    let mut accepted = 0;
    for _ in 0..64 {
        accepted += relay.send_to_client(&chunk).expect("write");
    }
    assert!(accepted <= LIMIT + chunk.len(), "accepted {accepted} bytes");
    assert_eq!(relay.send_to_client(&chunk).expect("write"), 0);
}

#[test]
fn reading_from_the_client_pauses_when_the_upstream_lags() {
    let (mut client, mut relay) = connected();
    let data = vec![1u8; LIMIT * 2];
    let mut sent = 0;
    while sent < data.len() && relay.wants_client_read() {
        sent += client.writer().write(&data[sent..]).expect("write");
        pump(&mut client, &mut relay);
    }
    assert!(!relay.wants_client_read());
    let mut got = Vec::new();
    relay.take_upstream_bytes(&mut got);
    assert!(
        got.len() >= LIMIT && got.len() < LIMIT + 32 * 1024,
        "{}",
        got.len()
    );
    assert!(relay.wants_client_read());
}

#[test]
fn client_close_notify_is_a_half_close() {
    let (mut client, mut relay) = connected();
    client.writer().write_all(b"last words").expect("write");
    client.send_close_notify();
    pump(&mut client, &mut relay);
    assert!(relay.client_done());
    let mut got = Vec::new();
    relay.take_upstream_bytes(&mut got);
    assert_eq!(got, b"last words");
    // The other direction still flows.
    assert_eq!(relay.send_to_client(b"reply").expect("write"), 5);
}

#[test]
fn tcp_fin_without_close_notify_is_a_half_close() {
    let (_client, mut relay) = connected();
    relay.client_closed().expect("FIN is not an error");
    assert!(relay.client_done());
}

#[test]
fn garbage_instead_of_a_client_hello_is_an_error_with_an_alert() {
    let (server, _) = configs();
    let mut relay = Relay::new(ServerConnection::new(server).expect("server"), LIMIT);
    let err = relay.receive_from_client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(err.is_err());
    let mut out = Vec::new();
    relay.client_output(&mut out).expect("alert");
    assert_eq!(out.first(), Some(&21), "a TLS alert record is queued");
}

#[test]
fn proxy_protocol_v1_names_both_ends() {
    let h = super::proxy_protocol_header(
        1,
        "192.0.2.1:5000".parse().expect("addr"),
        "198.51.100.2:443".parse().expect("addr"),
    );
    assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
}

#[test]
fn proxy_protocol_v2_is_the_binary_form() {
    let h = super::proxy_protocol_header(
        2,
        "192.0.2.1:5000".parse().expect("addr"),
        "198.51.100.2:443".parse().expect("addr"),
    );
    assert_eq!(&h[..12], b"\r\n\r\n\x00\r\nQUIT\n");
    assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
    assert_eq!(&h[16..20], &[192, 0, 2, 1]);
    assert_eq!(&h[20..24], &[198, 51, 100, 2]);
    assert_eq!(&h[24..28], &[0x13, 0x88, 0x01, 0xbb]);
}
