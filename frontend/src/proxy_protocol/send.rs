//! The header tlsfront sends the upstream first (`upstream.proxy_protocol`),
//! so that it learns the client's address.

use std::net::SocketAddr;

/// The PROXY protocol header (v1 text or v2 binary) that tells the
/// upstream the client's address: `src` is the client, `dst` the address it
/// connected to. A v1 header with mixed address families says `UNKNOWN`.
pub fn proxy_protocol_header(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        1 => {
            let line = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                ),
                (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
                    "PROXY TCP6 {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                ),
                _ => "PROXY UNKNOWN\r\n".to_string(),
            };
            line.into_bytes()
        }
        _ => {
            // Signature, version 2 + PROXY command, then family/transport.
            let mut h = super::V2_SIGNATURE.to_vec();
            h.push(0x21);
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                        SocketAddr::V6(v6) => *v6.ip(),
                    };
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&v6(s).octets());
                    h.extend_from_slice(&v6(d).octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            h
        }
    }
}

/// What a v2 header tells the upstream about the TLS connection, as TLVs
/// (the types of HAProxy's `proxy-protocol.txt` §2.2, what hitch and
/// HAProxy send): ALPN, AUTHORITY (the SNI), and SSL with the version,
/// the cipher and the client certificate's state and common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client sent.
    pub authority: Option<String>,
    /// `TLSv1.2` / `TLSv1.3`, as OpenSSL names them.
    pub version: Option<&'static str>,
    /// The cipher suite, as OpenSSL names it.
    pub cipher: Option<&'static str>,
    /// The client presented a certificate on this connection.
    pub client_cert: bool,
    /// ... and it was verified (rustls completes no handshake with a
    /// presented certificate that failed verification).
    pub client_cert_verified: bool,
    /// The client certificate's subject common name.
    pub client_cn: Option<String>,
}

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// A v2 header for `src` → `dst` followed by the TLVs of `tls`.
pub fn proxy_protocol_v2_with_tls(src: SocketAddr, dst: SocketAddr, tls: &TlsFacts) -> Vec<u8> {
    let mut h = proxy_protocol_header(2, src, dst);
    let mut tlvs = Vec::new();
    if let Some(alpn) = &tls.alpn {
        tlv(&mut tlvs, PP2_TYPE_ALPN, alpn);
    }
    if let Some(name) = &tls.authority {
        tlv(&mut tlvs, PP2_TYPE_AUTHORITY, name.as_bytes());
    }
    let mut ssl = Vec::new();
    let mut client = PP2_CLIENT_SSL;
    if tls.client_cert {
        client |= PP2_CLIENT_CERT_CONN;
    }
    ssl.push(client);
    // `verify`: 0 when the certificate was verified (or none was given).
    let verify: u32 = u32::from(tls.client_cert && !tls.client_cert_verified);
    ssl.extend_from_slice(&verify.to_be_bytes());
    if let Some(v) = tls.version {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, v.as_bytes());
    }
    if let Some(cn) = &tls.client_cn {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    if let Some(c) = tls.cipher {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, c.as_bytes());
    }
    tlv(&mut tlvs, PP2_TYPE_SSL, &ssl);
    // The address block's length (bytes 14..16) grows by the TLVs.
    let body = u16::from_be_bytes([h[14], h[15]]) as usize + tlvs.len();
    let body = u16::try_from(body).unwrap_or(u16::MAX);
    h[14..16].copy_from_slice(&body.to_be_bytes());
    h.extend_from_slice(&tlvs);
    h
}

/// Appends one TLV; values longer than a TLV can carry are cut (never the
/// case for what tlsfront sends: names of at most 255 bytes).
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// OpenSSL's name of a cipher suite rustls negotiates (what hitch and
/// HAProxy put in the SSL_CIPHER TLV).
pub fn openssl_cipher_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match suite {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The subject common name of a DER certificate (the SSL_CN TLV), if it
/// parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let cn = x509_cert::der::oid::db::rfc4519::CN;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == cn)
        .and_then(|atv| {
            use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}
