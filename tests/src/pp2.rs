//! A reader of PROXY protocol v2 headers with their TLVs (HAProxy's
//! `proxy-protocol.txt` §2.2), written from the specification and checked
//! in `tests/tests/proxy_tlvs.rs` against what a real HAProxy decodes.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A v2 header: addresses and TLVs (type, value), SSL sub-TLVs flattened
/// after the SSL TLV's own `client` and `verify` fields.
#[derive(Debug, Default, Clone)]
pub struct Pp2 {
    pub source: Option<SocketAddr>,
    pub tlvs: Vec<(u8, Vec<u8>)>,
    /// The SSL TLV's `client` bits and `verify` word.
    pub ssl: Option<(u8, u32)>,
    /// The SSL TLV's sub-TLVs.
    pub ssl_sub: Vec<(u8, Vec<u8>)>,
}

impl Pp2 {
    /// The value of TLV `kind`, as text.
    pub fn text(&self, kind: u8) -> Option<String> {
        self.tlvs
            .iter()
            .chain(&self.ssl_sub)
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

fn tlvs(mut b: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 3 {
            return Err(format!("TLV header truncated: {b:?}"));
        }
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        let v = b.get(3..3 + len).ok_or("TLV value truncated")?;
        out.push((b[0], v.to_vec()));
        b = &b[3 + len..];
    }
    Ok(out)
}

/// Reads one v2 header (TCP over IPv4) from `r`.
pub fn read(r: &mut impl Read) -> Result<Pp2, String> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..12] != b"\r\n\r\n\x00\r\nQUIT\n" || head[12] != 0x21 {
        return Err(format!("not a v2 PROXY header: {head:?}"));
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    let mut pp = Pp2::default();
    let rest = if head[13] == 0x11 {
        let a = body.get(..12).ok_or("IPv4 addresses truncated")?;
        pp.source = Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            u16::from_be_bytes([a[8], a[9]]),
        )));
        &body[12..]
    } else {
        return Err(format!(
            "family {:#x}: only TCP over IPv4 is read here",
            head[13]
        ));
    };
    pp.tlvs = tlvs(rest)?;
    if let Some((_, ssl)) = pp.tlvs.iter().find(|(k, _)| *k == 0x20) {
        let fixed = ssl.get(..5).ok_or("SSL TLV shorter than 5 bytes")?;
        pp.ssl = Some((
            fixed[0],
            u32::from_be_bytes([fixed[1], fixed[2], fixed[3], fixed[4]]),
        ));
        pp.ssl_sub = tlvs(&ssl[5..])?;
    }
    Ok(pp)
}
