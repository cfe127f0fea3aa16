//! PROXY protocol headers, byte for byte.

#[test]
fn proxy_protocol_v1_names_both_ends() {
    let h = proxy_protocol_header(
        1,
        "192.0.2.1:5000".parse().expect("addr"),
        "198.51.100.2:443".parse().expect("addr"),
    );
    assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
}

#[test]
fn proxy_protocol_v2_is_the_binary_form() {
    let h = proxy_protocol_header(
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

// ---------------------------------------------------------------------------
// Reading headers
// ---------------------------------------------------------------------------

use super::{parse, proxy_protocol_header, Header, Parsed, MAX_HEADER};

fn proxied(src: &str, dst: &str) -> Header {
    Header::Proxied {
        source: src.parse().expect("addr"),
        destination: dst.parse().expect("addr"),
    }
}

#[test]
fn what_tlsfront_sends_it_reads_back_v1_and_v2_ipv4_and_ipv6() {
    for (src, dst) in [
        ("192.0.2.1:5000", "198.51.100.2:443"),
        ("[2001:db8::1]:40000", "[2001:db8::2]:443"),
    ] {
        for version in [1, 2] {
            let mut bytes =
                proxy_protocol_header(version, src.parse().unwrap(), dst.parse().unwrap());
            let len = bytes.len();
            bytes.extend_from_slice(b"\x16\x03\x01 the client hello");
            assert_eq!(
                parse(&bytes),
                Parsed::Complete {
                    header: proxied(src, dst),
                    len
                },
                "v{version} {src}"
            );
        }
    }
}

#[test]
fn every_prefix_of_a_header_asks_for_more() {
    for version in [1, 2] {
        let h = proxy_protocol_header(
            version,
            "[::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        for cut in 0..h.len() {
            assert_eq!(
                parse(&h[..cut]),
                Parsed::Incomplete,
                "v{version}, {cut} of {} bytes",
                h.len()
            );
        }
    }
}

#[test]
fn unknown_and_local_keep_the_connections_own_addresses() {
    assert_eq!(
        parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest"),
        Parsed::Complete {
            header: Header::Local,
            len: 35
        }
    );
    let mut local = super::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(
        parse(&local),
        Parsed::Complete {
            header: Header::Local,
            len: 16
        }
    );
}

#[test]
fn v2_tlvs_after_the_addresses_are_skipped() {
    let mut h = proxy_protocol_header(
        2,
        "192.0.2.1:5000".parse().unwrap(),
        "198.51.100.2:443".parse().unwrap(),
    );
    // Append an AUTHORITY TLV and grow the length field by its size.
    let tlv = [0x02, 0x00, 0x03, b'a', b'.', b'b'];
    h.extend_from_slice(&tlv);
    let body = u16::from_be_bytes([h[14], h[15]]) + tlv.len() as u16;
    h[14..16].copy_from_slice(&body.to_be_bytes());
    assert_eq!(
        parse(&h),
        Parsed::Complete {
            header: proxied("192.0.2.1:5000", "198.51.100.2:443"),
            len: h.len()
        }
    );
}

#[test]
fn anything_else_is_invalid_at_once() {
    for (input, why) in [
        (&b"GET / HTTP/1.1\r\n"[..], "plain HTTP"),
        (b"POST / HTTP/1.1\r\n", "starts with P"),
        (b"\x16\x03\x01\x00\xa0", "a ClientHello without a header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "three fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", "leading zero"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 443\r\n",
            "port too large",
        ),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "IPv4 under TCP6"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
    ] {
        assert!(
            matches!(parse(input), Parsed::Invalid(_)),
            "{why}: {:?}",
            parse(input)
        );
    }
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    assert!(
        matches!(parse(&long), Parsed::Invalid(_)),
        "a v1 line past 107 bytes"
    );
    let mut huge = super::V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11]);
    huge.extend_from_slice(&((MAX_HEADER - 15) as u16).to_be_bytes());
    assert!(
        matches!(parse(&huge), Parsed::Invalid(_)),
        "a v2 header past MAX_HEADER"
    );
    let mut v3 = super::V2_SIGNATURE.to_vec();
    v3.extend_from_slice(&[0x31, 0x11, 0, 12]);
    assert!(matches!(parse(&v3), Parsed::Invalid(_)), "version 3");
}

#[test]
fn a_v2_header_with_tls_tlvs_still_reads_as_its_addresses() {
    let facts = super::TlsFacts {
        alpn: Some(b"h2".to_vec()),
        authority: Some("api.example.com".into()),
        version: Some("TLSv1.3"),
        cipher: Some("TLS_AES_128_GCM_SHA256"),
        ..Default::default()
    };
    let (src, dst) = ("192.0.2.1:5000", "198.51.100.2:443");
    let h = super::proxy_protocol_v2_with_tls(src.parse().unwrap(), dst.parse().unwrap(), &facts);
    // 12 bytes of addresses, then ALPN (3 + 2), AUTHORITY (3 + 15) and SSL
    // (3 + 5 + VERSION 3 + 7 + CIPHER 3 + 22).
    assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12 + 5 + 18 + 43);
    assert_eq!(
        parse(&h),
        Parsed::Complete {
            header: proxied(src, dst),
            len: h.len()
        }
    );
}
