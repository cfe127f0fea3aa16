//! A client that streams a pattern through tlsfront on its own thread
//! ([`Streamer`]), so a test can act while bytes flow.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::process::wait_until;
use crate::{Pattern, TlsClient};

/// Sends a chunk through an open [`TlsClient`] to an echo upstream and reads
/// its echo, over and over on its own thread, checking every byte, until
/// stopped. Tells how many round trips completed and the first error.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    handle: Option<thread::JoinHandle<TlsClient>>,
}

impl Streamer {
    /// Starts streaming `chunk`-byte round trips every `pause`.
    pub fn start(mut client: TlsClient, seed: u64, chunk: usize, pause: Duration) -> Streamer {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (s, r, e) = (stop.clone(), rounds.clone(), error.clone());
        let handle = thread::spawn(move || {
            let mut out = Pattern::new(seed);
            let mut expect = Pattern::new(seed);
            let mut buf = vec![0u8; chunk];
            let mut got = vec![0u8; chunk];
            while !s.load(Ordering::SeqCst) {
                out.fill(&mut buf);
                let res = (|| -> Result<(), String> {
                    let mut st = rustls::Stream::new(&mut client.conn, &mut client.sock);
                    st.write_all(&buf).map_err(|e| format!("write: {e}"))?;
                    st.flush().map_err(|e| format!("flush: {e}"))?;
                    st.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                    expect
                        .check(&got)
                        .map_err(|off| format!("echo differs at byte {off}"))
                })();
                if let Err(msg) = res {
                    let n = r.load(Ordering::SeqCst);
                    *e.lock().unwrap() = Some(format!("round {n}: {msg}"));
                    break;
                }
                r.fetch_add(1, Ordering::SeqCst);
                thread::sleep(pause);
            }
            client
        });
        Streamer {
            stop,
            rounds,
            error,
            handle: Some(handle),
        }
    }

    /// Round trips completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// The first error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    /// Waits until `n` more round trips than now have completed (true), or an
    /// error or the timeout (false).
    pub fn wait_more_rounds(&self, n: u64, timeout: Duration) -> bool {
        let target = self.rounds() + n;
        wait_until(timeout, || {
            self.rounds() >= target || self.error().is_some()
        }) && self.error().is_none()
    }

    /// Stops the thread; returns the client and the first error.
    pub fn stop(mut self) -> (TlsClient, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let client = self
            .handle
            .take()
            .unwrap()
            .join()
            .expect("streaming thread panicked");
        let err = self.error();
        (client, err)
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
