//! Many plain sockets at once: the open-file limit raised for them
//! ([`raise_nofile`]) and how each was closed by the server ([`watch_closes`]).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (at most the
/// hard limit); returns the soft limit in effect afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl),
            0,
            "getrlimit: {}",
            io::Error::last_os_error()
        );
        if rl.rlim_cur < want {
            rl.rlim_cur = want.min(rl.rlim_max);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl),
                0,
                "setrlimit: {}",
                io::Error::last_os_error()
            );
        }
    }
    rl.rlim_cur
}

/// How one watched socket ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// EOF, after `bytes` bytes the server sent (an alert, say).
    Eof { bytes: usize },
    /// A read error (a reset), after `bytes` bytes.
    Error { kind: io::ErrorKind, bytes: usize },
}

/// Polls `socks` (made non-blocking) until each is closed by the peer or
/// `deadline`; for each, when it was seen closed and how (`None` = still open
/// at the deadline). Bytes the peer sends before closing are read and counted.
pub fn watch_closes(socks: &mut [TcpStream], deadline: Instant) -> Vec<Option<(Instant, Closed)>> {
    let mut out: Vec<Option<(Instant, Closed)>> = vec![None; socks.len()];
    let mut got = vec![0usize; socks.len()];
    for s in socks.iter() {
        s.set_nonblocking(true).expect("set_nonblocking");
    }
    let mut buf = [0u8; 4096];
    loop {
        let open: Vec<usize> = (0..socks.len()).filter(|&i| out[i].is_none()).collect();
        if open.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd {
                fd: socks[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, 100) as i32;
        // SAFETY: `pfds` is a valid array of pollfd for the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r <= 0 {
            continue;
        }
        let now = Instant::now();
        for (k, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let i = open[k];
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => {
                        out[i] = Some((now, Closed::Eof { bytes: got[i] }));
                        break;
                    }
                    Ok(n) => got[i] += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        out[i] = Some((
                            now,
                            Closed::Error {
                                kind: e.kind(),
                                bytes: got[i],
                            },
                        ));
                        break;
                    }
                }
            }
        }
    }
    out
}
