//! Upstream servers: TCP servers on loopback with a thread per connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A TCP server on 127.0.0.1:0; each connection runs `handler` on its own thread.
/// Stops accepting on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Number of connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl Upstream {
    pub fn start<F>(handler: F) -> Upstream
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Upstream::start_at("127.0.0.1:0", handler)
    }

    /// Like [`start`](Self::start), listening on `bind` (e.g. `[::1]:0`).
    pub fn start_at<F>(bind: &str, handler: F) -> Upstream
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener =
            TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind upstream {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(handler);
        let (stop2, acc2) = (stop.clone(), accepted.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                acc2.fetch_add(1, Ordering::SeqCst);
                let h = handler.clone();
                thread::spawn(move || h(conn));
            }
        });
        Upstream {
            addr,
            stop,
            accepted,
        }
    }

    /// Writes back every byte it reads; closes its write side on EOF.
    pub fn echo() -> Upstream {
        Upstream::start(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// `upstream.addr` value for this server.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}
