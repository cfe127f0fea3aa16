//! Redis's wire protocol (RESP) spoken directly, to read and write what a
//! tlsfront fleet keeps in Redis without the `redis` crate tlsfront uses.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<RespValue>),
}

/// Sends one command on a new connection and reads the reply (2 s limit).
pub fn resp(addr: SocketAddr, args: &[&[u8]]) -> io::Result<RespValue> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req)?;
    read_reply(&mut BufReader::new(s))
}

fn read_reply(r: &mut impl BufRead) -> io::Result<RespValue> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short reply"));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let bad = |_| io::Error::new(io::ErrorKind::InvalidData, "bad length");
    Ok(match line[0] {
        b'+' => RespValue::Simple(text),
        b'-' => RespValue::Error(text),
        b':' => RespValue::Int(text.parse().map_err(bad)?),
        b'$' => {
            let n: i64 = text.parse().map_err(bad)?;
            if n < 0 {
                RespValue::Bulk(None)
            } else {
                let mut v = vec![0u8; n as usize + 2];
                r.read_exact(&mut v)?;
                v.truncate(n as usize);
                RespValue::Bulk(Some(v))
            }
        }
        b'*' => {
            let n: i64 = text.parse().map_err(bad)?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            RespValue::Array(items)
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown reply")),
    })
}
