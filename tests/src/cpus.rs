//! Which CPU served a socket, and where the kernel lets each worker thread
//! run: the kernel's view of tlsfront's pinning.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// `SO_INCOMING_CPU` of a socket (see [`TlsClient::incoming_cpu`]).
pub fn incoming_cpu(sock: &TcpStream) -> io::Result<u32> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the stated size, on an open socket.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            &mut cpu as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(cpu).map_err(|_| io::Error::other(format!("SO_INCOMING_CPU = {cpu}")))
}

/// The CPUs the kernel lets each worker thread of process `pid` run on
/// (`Cpus_allowed_list` of the threads named `tlsfront-w<N>`), by worker
/// index: the kernel's view of the pinning, not tlsfront's summary.
pub fn worker_cpus_of(pid: u32) -> Vec<Vec<u32>> {
    let tasks = format!("/proc/{pid}/task");
    let mut found: Vec<(usize, Vec<u32>)> = Vec::new();
    for entry in std::fs::read_dir(&tasks).unwrap_or_else(|e| panic!("{tasks}: {e}")) {
        let dir = entry.expect("task entry").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Some(index) = comm.trim().strip_prefix("tlsfront-w") else {
            continue;
        };
        let index: usize = index.parse().expect("worker index in the thread name");
        let status = std::fs::read_to_string(dir.join("status")).expect("task status");
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_string();
        found.push((index, parse_cpu_list(&list)));
    }
    found.sort();
    assert!(
        found.iter().enumerate().all(|(i, (w, _))| i == *w),
        "worker threads of {pid}: {found:?}"
    );
    found.into_iter().map(|(_, cpus)| cpus).collect()
}

/// `0-2,5` -> `[0, 1, 2, 5]`.
pub fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().expect("CPU")..=b.parse().expect("CPU")),
            None => out.push(part.parse().expect("CPU")),
        }
    }
    out
}
