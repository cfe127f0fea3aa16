//! The built-in upstream (`upstream.addr = builtin`): a tiny HTTP responder
//! on a loopback port, so that the embedded default answers
//! `curl -k https://127.0.0.1:8443/` with no other server running.
//!
//! It is a demonstration target, not a web server: one thread per
//! connection, one response, `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tracing::debug;

/// Largest request head read before answering anyway.
const MAX_HEAD: usize = 16 * 1024;

/// Starts the responder on 127.0.0.1 with a kernel-chosen port.
pub fn start_builtin() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tlsfront-builtin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("tlsfront-builtin-conn".into())
                    .spawn(move || {
                        if let Err(e) = respond(stream) {
                            debug!("built-in upstream: {e}");
                        }
                    });
            }
        })?;
    Ok(addr)
}

fn respond(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n")
        && !head.windows(2).any(|w| w == b"\n\n")
        && head.len() < MAX_HEAD
    {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let request = String::from_utf8_lossy(line).trim().to_string();
    let body = format!("hello from tlsfront\nrequest: {request}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\nServer: tlsfront-builtin\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
