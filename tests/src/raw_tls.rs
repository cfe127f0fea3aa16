//! TLS bytes built and read by hand, for hostile-client tests: a ClientHello
//! with any field wrong ([`Hello`]), handshake records, and what the server
//! answered ([`read_flight`], [`send_raw`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Pattern;

/// `n` bytes of the deterministic stream of `seed` (a stand-in for random
/// bytes that makes a failure reproducible).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    Pattern::bytes(seed, n)
}

/// Extension numbers used below.
pub mod ext {
    pub const SERVER_NAME: u16 = 0;
    pub const SUPPORTED_GROUPS: u16 = 10;
    pub const EC_POINT_FORMATS: u16 = 11;
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    pub const EXTENDED_MASTER_SECRET: u16 = 23;
    pub const SESSION_TICKET: u16 = 35;
    pub const PRE_SHARED_KEY: u16 = 41;
    pub const SUPPORTED_VERSIONS: u16 = 43;
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    pub const KEY_SHARE: u16 = 51;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// Handshake message types.
pub mod hs {
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const SERVER_HELLO_DONE: u8 = 14;
}

fn u16be(v: usize) -> [u8; 2] {
    assert!(v <= 0xffff, "{v} does not fit 16 bits");
    (v as u16).to_be_bytes()
}

fn u24be(v: usize) -> [u8; 3] {
    assert!(v <= 0xff_ffff, "{v} does not fit 24 bits");
    let b = (v as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

/// A ClientHello a real client could send (TLS 1.2 only, or TLS 1.3 with 1.2
/// as fallback), with the fields a hostile client would play with.
#[derive(Clone, Debug)]
pub struct Hello {
    /// Offer TLS 1.3 (supported_versions, an X25519 key share) as well as 1.2.
    pub tls13: bool,
    pub sni: Option<String>,
    /// legacy_session_id (0 to 32 bytes; more to be hostile).
    pub session_id: Vec<u8>,
    /// The session_ticket extension: `None` = absent, `Some(empty)` = "I
    /// support tickets", `Some(bytes)` = a ticket to resume.
    pub ticket: Option<Vec<u8>>,
    /// A TLS 1.3 PSK offer: (identity, binder) in pre_shared_key (with
    /// psk_key_exchange_modes); needs `tls13`.
    pub psk: Option<(Vec<u8>, Vec<u8>)>,
    /// Extra extensions, sent before pre_shared_key (which must be last).
    pub extra: Vec<(u16, Vec<u8>)>,
    /// Seed of the client random, session id filler and key share.
    pub seed: u64,
}

impl Hello {
    /// A TLS 1.2-only hello for `sni` that accepts tickets.
    pub fn tls12(sni: &str, seed: u64) -> Hello {
        Hello {
            tls13: false,
            sni: Some(sni.to_string()),
            session_id: Vec::new(),
            ticket: Some(Vec::new()),
            psk: None,
            extra: Vec::new(),
            seed,
        }
    }

    /// A TLS 1.3 (and 1.2) hello for `sni`, with a 32-byte legacy session id
    /// (middlebox compatibility mode, as browsers do).
    pub fn tls13(sni: &str, seed: u64) -> Hello {
        Hello {
            tls13: true,
            sni: Some(sni.to_string()),
            session_id: noise(seed ^ 0x5e55, 32),
            ticket: None,
            psk: None,
            extra: Vec::new(),
            seed,
        }
    }

    fn extensions(&self) -> Vec<u8> {
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
        if let Some(name) = &self.sni {
            let mut e = Vec::new();
            e.extend_from_slice(&u16be(name.len() + 3));
            e.push(0); // host_name
            e.extend_from_slice(&u16be(name.len()));
            e.extend_from_slice(name.as_bytes());
            exts.push((ext::SERVER_NAME, e));
        }
        let groups: [u16; 3] = [0x001d, 0x0017, 0x0018];
        let mut e = u16be(groups.len() * 2).to_vec();
        for g in groups {
            e.extend_from_slice(&g.to_be_bytes());
        }
        exts.push((ext::SUPPORTED_GROUPS, e));
        exts.push((ext::EC_POINT_FORMATS, vec![1, 0]));
        let sigs: [u16; 9] = [
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0807,
        ];
        let mut e = u16be(sigs.len() * 2).to_vec();
        for s in sigs {
            e.extend_from_slice(&s.to_be_bytes());
        }
        exts.push((ext::SIGNATURE_ALGORITHMS, e));
        exts.push((ext::EXTENDED_MASTER_SECRET, Vec::new()));
        if let Some(t) = &self.ticket {
            exts.push((ext::SESSION_TICKET, t.clone()));
        }
        exts.push((ext::RENEGOTIATION_INFO, vec![0]));
        if self.tls13 {
            exts.push((ext::SUPPORTED_VERSIONS, vec![4, 0x03, 0x04, 0x03, 0x03]));
            let key = noise(self.seed ^ 0x4b45, 32);
            let mut e = u16be(2 + 2 + key.len()).to_vec();
            e.extend_from_slice(&0x001du16.to_be_bytes());
            e.extend_from_slice(&u16be(key.len()));
            e.extend_from_slice(&key);
            exts.push((ext::KEY_SHARE, e));
            exts.push((ext::PSK_KEY_EXCHANGE_MODES, vec![1, 1]));
        }
        exts.extend(self.extra.iter().cloned());
        if let Some((identity, binder)) = &self.psk {
            assert!(self.tls13, "a PSK offer needs tls13");
            let mut ids = Vec::new();
            ids.extend_from_slice(&u16be(identity.len()));
            ids.extend_from_slice(identity);
            ids.extend_from_slice(&[0, 0, 0, 0]); // obfuscated_ticket_age
            let mut e = u16be(ids.len()).to_vec();
            e.extend_from_slice(&ids);
            e.extend_from_slice(&u16be(binder.len() + 1));
            e.push(binder.len() as u8);
            e.extend_from_slice(binder);
            exts.push((ext::PRE_SHARED_KEY, e));
        }
        let mut out = Vec::new();
        for (ty, data) in exts {
            out.extend_from_slice(&ty.to_be_bytes());
            out.extend_from_slice(&u16be(data.len()));
            out.extend_from_slice(&data);
        }
        out
    }

    /// Length of the extensions block (at most 65535).
    pub fn extensions_len(&self) -> usize {
        self.extensions().len()
    }

    /// The ClientHello handshake message body (without its 4-byte header).
    pub fn body(&self) -> Vec<u8> {
        let mut b = vec![0x03, 0x03];
        b.extend_from_slice(&noise(self.seed, 32));
        assert!(self.session_id.len() <= 255);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        let mut suites: Vec<u16> = Vec::new();
        if self.tls13 {
            suites.extend([0x1301, 0x1302, 0x1303]);
        }
        suites.extend([0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca9, 0xcca8]);
        b.extend_from_slice(&u16be(suites.len() * 2));
        for s in suites {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(&[1, 0]); // compression: null
        let exts = self.extensions();
        b.extend_from_slice(&u16be(exts.len()));
        b.extend_from_slice(&exts);
        b
    }

    /// The handshake message: type, 24-bit length, body.
    pub fn message(&self) -> Vec<u8> {
        let body = self.body();
        let mut m = vec![hs::CLIENT_HELLO];
        m.extend_from_slice(&u24be(body.len()));
        m.extend_from_slice(&body);
        m
    }

    /// The message in handshake records of at most 16384 bytes each.
    pub fn records(&self) -> Vec<u8> {
        handshake_records(&self.message())
    }
}

/// `message` cut into handshake records (type 22, version 3.1) of at most
/// 16384 bytes of payload each.
pub fn handshake_records(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(16384) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16be(chunk.len()));
        out.extend_from_slice(chunk);
    }
    out
}

/// The parts of a ServerHello the tests look at.
#[derive(Clone, Debug, Default)]
pub struct ServerHello {
    pub session_id: Vec<u8>,
    pub cipher_suite: u16,
    /// Extension types, in order.
    pub extensions: Vec<u16>,
    /// The version chosen (supported_versions if present, else legacy_version).
    pub version: u16,
}

/// The server's first flight, as far as it is in the clear.
#[derive(Clone, Debug, Default)]
pub struct Flight {
    pub server_hello: Option<ServerHello>,
    /// Types of the plaintext handshake messages, in order.
    pub handshake_types: Vec<u8>,
    /// (level, description) of the first alert.
    pub alert: Option<(u8, u8)>,
    /// Saw ChangeCipherSpec (TLS 1.2 resumption, or TLS 1.3 compatibility).
    pub change_cipher_spec: bool,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
    /// ... with a reset (a read error) rather than EOF.
    pub reset: bool,
    /// Bytes received in all.
    pub bytes: usize,
}

impl Flight {
    /// A TLS 1.2 full handshake: the server sent its certificate.
    pub fn tls12_full(&self) -> bool {
        self.handshake_types.contains(&hs::CERTIFICATE)
            && self.handshake_types.contains(&hs::SERVER_HELLO_DONE)
    }

    /// A TLS 1.3 ServerHello that accepted a PSK (pre_shared_key extension).
    pub fn tls13_psk_accepted(&self) -> bool {
        self.server_hello
            .as_ref()
            .is_some_and(|sh| sh.extensions.contains(&ext::PRE_SHARED_KEY))
    }
}

fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut p = 0usize;
    let take = |p: &mut usize, n: usize| -> Option<&[u8]> {
        let s = body.get(*p..*p + n)?;
        *p += n;
        Some(s)
    };
    let legacy = take(&mut p, 2)?;
    let mut version = u16::from_be_bytes([legacy[0], legacy[1]]);
    take(&mut p, 32)?;
    let sid_len = take(&mut p, 1)?[0] as usize;
    let session_id = take(&mut p, sid_len)?.to_vec();
    let cs = take(&mut p, 2)?;
    let cipher_suite = u16::from_be_bytes([cs[0], cs[1]]);
    take(&mut p, 1)?;
    let mut extensions = Vec::new();
    if let Some(l) = take(&mut p, 2) {
        let end = p + u16::from_be_bytes([l[0], l[1]]) as usize;
        while p + 4 <= end {
            let h = take(&mut p, 4)?;
            let ty = u16::from_be_bytes([h[0], h[1]]);
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            let data = take(&mut p, len)?;
            if ty == ext::SUPPORTED_VERSIONS && data.len() == 2 {
                version = u16::from_be_bytes([data[0], data[1]]);
            }
            extensions.push(ty);
        }
    }
    Some(ServerHello {
        session_id,
        cipher_suite,
        extensions,
        version,
    })
}

/// Reads the server's answer on `sock` until its plaintext part is over (a
/// TLS 1.2 ServerHelloDone, a TLS 1.3 ServerHello, a ChangeCipherSpec), an
/// alert, the end of the connection, or `timeout`.
pub fn read_flight(sock: &mut TcpStream, timeout: Duration) -> Flight {
    let deadline = Instant::now() + timeout;
    let mut f = Flight::default();
    let mut raw = Vec::new();
    let mut hs_buf = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Parse whole records.
        while raw.len() >= 5 {
            let len = u16::from_be_bytes([raw[3], raw[4]]) as usize;
            if raw.len() < 5 + len {
                break;
            }
            let ty = raw[0];
            let payload: Vec<u8> = raw[5..5 + len].to_vec();
            raw.drain(..5 + len);
            match ty {
                0x15 => {
                    if f.alert.is_none() && payload.len() >= 2 {
                        f.alert = Some((payload[0], payload[1]));
                    }
                    return f;
                }
                0x14 => {
                    f.change_cipher_spec = true;
                    return f;
                }
                0x16 => {
                    hs_buf.extend_from_slice(&payload);
                    while hs_buf.len() >= 4 {
                        let mlen =
                            u32::from_be_bytes([0, hs_buf[1], hs_buf[2], hs_buf[3]]) as usize;
                        if hs_buf.len() < 4 + mlen {
                            break;
                        }
                        let mty = hs_buf[0];
                        let body: Vec<u8> = hs_buf[4..4 + mlen].to_vec();
                        hs_buf.drain(..4 + mlen);
                        f.handshake_types.push(mty);
                        if mty == hs::SERVER_HELLO {
                            f.server_hello = parse_server_hello(&body);
                            if f.server_hello.as_ref().is_some_and(|s| s.version == 0x0304) {
                                return f; // the rest is encrypted
                            }
                        }
                        if mty == hs::SERVER_HELLO_DONE {
                            return f;
                        }
                    }
                }
                _ => return f,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return f;
        }
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match sock.read(&mut buf) {
            Ok(0) => {
                f.closed = true;
                return f;
            }
            Ok(n) => {
                f.bytes += n;
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return f
            }
            Err(_) => {
                f.closed = true;
                f.reset = true;
                return f;
            }
        }
    }
}

/// Connects to `addr`, sends `bytes` (a write error is tolerated: the server
/// may close early) and reads the server's flight.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> io::Result<Flight> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.write_all(bytes);
    Ok(read_flight(&mut s, timeout))
}
