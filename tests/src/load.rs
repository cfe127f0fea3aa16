//! A client loop on several threads that records every attempt ([`LoadLoop`]):
//! load kept on a process while a test reloads, upgrades or kills it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::{resuming_client_config, visit, ClientSpec, Trust, Versions};

/// One connection of a [`LoadLoop`].
#[derive(Clone, Debug)]
pub struct Attempt {
    pub thread: usize,
    pub start: Instant,
    pub end: Instant,
    /// Handshake done and an HTTP 200 from the built-in upstream.
    pub ok: bool,
    pub resumed: bool,
    pub error: Option<String>,
}

/// Threads that each run `visit` (handshake, `GET /`, read to the end)
/// against one address in a loop, with their own resuming client config,
/// until stopped.
pub struct LoadLoop {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<Vec<Attempt>>>,
}

impl LoadLoop {
    /// One thread per entry of `versions`, offering those versions; each
    /// starts over with an empty session store every `fresh_every`
    /// connections (a full handshake), if given. After a failed attempt a
    /// thread waits `pause_after_failure`.
    pub fn start(
        addr: SocketAddr,
        versions: &[Versions],
        fresh_every: Option<u64>,
        pause_after_failure: Duration,
    ) -> LoadLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = versions
            .iter()
            .copied()
            .enumerate()
            .map(|(t, versions)| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let spec = ClientSpec::new(Trust::AnyCert).versions(versions);
                    let mut cfg = resuming_client_config(&spec);
                    let mut attempts = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(k) = fresh_every {
                            if n > 0 && n.is_multiple_of(k) {
                                cfg = resuming_client_config(&spec);
                            }
                        }
                        n += 1;
                        let start = Instant::now();
                        let r = visit(addr, cfg.clone(), "localhost");
                        let end = Instant::now();
                        let a = match r {
                            Ok(v) if v.http_200 => Attempt {
                                thread: t,
                                start,
                                end,
                                ok: true,
                                resumed: v.resumed,
                                error: None,
                            },
                            Ok(v) => Attempt {
                                thread: t,
                                start,
                                end,
                                ok: false,
                                resumed: v.resumed,
                                error: Some(format!("{v:?}")),
                            },
                            Err(e) => Attempt {
                                thread: t,
                                start,
                                end,
                                ok: false,
                                resumed: false,
                                error: Some(e.to_string()),
                            },
                        };
                        let failed = !a.ok;
                        attempts.push(a);
                        if failed {
                            thread::sleep(pause_after_failure);
                        }
                    }
                    attempts
                })
            })
            .collect();
        LoadLoop { stop, handles }
    }

    /// Stops the threads; every attempt, thread by thread.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for h in self.handles.drain(..) {
            all.extend(h.join().expect("load thread panicked"));
        }
        all
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
