//! A small, bounded reader of the first TLS record of a connection: the
//! ClientHello's server name, legacy session ID and first PSK identity.
//!
//! rustls does not expose these before it acts on the hello; the access log
//! wants the server name, and a lookup of the session in a remote store can
//! only start before rustls asks for it if the worker knows the ID first.
//! The reader never panics and never reads past its input: anything it does
//! not understand is `None`, and rustls remains the judge of the hello.

/// What the first record said, as far as it could be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// The `server_name` extension's host name (lower-cased ASCII).
    pub server_name: Option<String>,
    /// The legacy session ID (TLS 1.2 resumption by ID), when not empty.
    pub session_id: Option<Vec<u8>>,
    /// The first identity of the `pre_shared_key` extension (a TLS 1.3
    /// ticket), when offered.
    pub first_psk_identity: Option<Vec<u8>>,
    /// Number of PSK identities offered.
    pub psk_identities: usize,
    /// `supported_versions` lists TLS 1.3.
    pub offers_tls13: bool,
    /// The TLS 1.2 ticket of a non-empty `session_ticket` extension.
    pub ticket12: Option<Vec<u8>>,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    fn vec8(&mut self) -> Option<Reader<'a>> {
        let n = self.u8()?;
        self.take(n).map(|data| Reader { data })
    }

    fn vec16(&mut self) -> Option<Reader<'a>> {
        let n = self.u16()?;
        self.take(n).map(|data| Reader { data })
    }
}

/// Length of the first TLS record in `data` (header included), once its
/// header is there.
pub fn first_record_len(data: &[u8]) -> Option<usize> {
    let header = data.get(..5)?;
    Some(5 + usize::from(u16::from_be_bytes([header[3], header[4]])))
}

/// Reads the ClientHello from the first bytes a client sent (one TLS
/// record). Returns `None` when they are not a ClientHello that fits in
/// the first record.
pub fn parse(first_record: &[u8]) -> Option<HelloInfo> {
    let mut record = Reader { data: first_record };
    // Record header: handshake (22), any legacy version, length.
    if record.u8()? != 22 {
        return None;
    }
    record.take(2)?;
    let len = record.u16()?;
    let mut body = Reader {
        data: record.take(len)?,
    };
    // Handshake header: client_hello (1), 24-bit length.
    if body.u8()? != 1 {
        return None;
    }
    let len = body.u24()?;
    let mut hello = Reader {
        data: body.take(len)?,
    };
    hello.take(2 + 32)?; // legacy_version, random
    let session_id = hello.vec8()?.data;
    if session_id.len() > 32 {
        return None;
    }
    let suites = hello.vec16()?;
    if suites.data.len() % 2 != 0 {
        return None;
    }
    hello.vec8()?; // compression methods
    let mut info = HelloInfo {
        session_id: (!session_id.is_empty()).then(|| session_id.to_vec()),
        ..HelloInfo::default()
    };
    if hello.data.is_empty() {
        return Some(info);
    }
    let mut extensions = hello.vec16()?;
    while !extensions.data.is_empty() {
        let kind = extensions.u16()?;
        let mut ext = extensions.vec16()?;
        match kind {
            0 => {
                let mut list = ext.vec16()?;
                while !list.data.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?.data;
                    if name_type == 0 && info.server_name.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        if name.is_empty() || name.len() > 253 || !name.is_ascii() {
                            return None;
                        }
                        info.server_name = Some(name.to_ascii_lowercase());
                    }
                }
            }
            35 => info.ticket12 = (!ext.data.is_empty()).then(|| ext.data.to_vec()),
            43 => {
                let mut versions = ext.vec8()?;
                while !versions.data.is_empty() {
                    if versions.u16()? == 0x0304 {
                        info.offers_tls13 = true;
                    }
                }
            }
            41 => {
                let mut identities = ext.vec16()?;
                while !identities.data.is_empty() {
                    let identity = identities.vec16()?.data;
                    identities.take(4)?; // obfuscated_ticket_age
                    if info.first_psk_identity.is_none() {
                        info.first_psk_identity = Some(identity.to_vec());
                    }
                    info.psk_identities += 1;
                }
            }
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hello_of(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(config),
            name.to_string().try_into().expect("name"),
        )
        .expect("client");
        let mut out = Vec::new();
        client.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let info = parse(&hello_of("API.example.com")).expect("a hello");
        assert_eq!(info.server_name.as_deref(), Some("api.example.com"));
        assert_eq!(info.psk_identities, 0);
        assert!(info.offers_tls13);
        assert_eq!(
            first_record_len(&hello_of("localhost")),
            Some(hello_of("localhost").len())
        );
    }

    #[test]
    fn a_tls12_only_client_offers_no_tls13_and_its_ticket_extension_is_empty() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name"))
                .expect("client");
        let mut out = Vec::new();
        client.write_tls(&mut out).expect("hello");
        let info = parse(&out).expect("a hello");
        assert!(!info.offers_tls13);
        assert_eq!(info.ticket12, None);
    }

    #[test]
    fn every_truncation_of_a_hello_is_none_or_partial_never_a_panic() {
        let hello = hello_of("localhost");
        for cut in 0..hello.len() {
            if let Some(info) = parse(&hello[..cut]) {
                panic!("a hello cut at {cut} of {} parsed: {info:?}", hello.len());
            }
        }
    }

    #[test]
    fn not_a_handshake_record_is_none() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse(&[]), None);
    }
}
