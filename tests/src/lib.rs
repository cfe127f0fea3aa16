//! tlsfront-tests: the harness of the end-to-end suite.
//!
//! Everything here drives real processes and real sockets on loopback:
//! - [`Frontend`] starts `tlsfront run` on its own port and control socket,
//!   waits for `tlsfront: ready`, keeps its output, and kills it on drop.
//! - [`Upstream`] is a TCP server on 127.0.0.1:0 with one thread per
//!   connection ([`Upstream::echo`], or any handler).
//! - [`TlsClient`] is a rustls client over a `TcpStream`, with [`TlsClient::pump`]
//!   sending and receiving at the same time (non-blocking socket + poll), so
//!   large transfers cannot deadlock on full buffers.
//! - [`Pki`] makes a test CA and leaf certificates with rcgen.
//! - [`Pattern`] is a deterministic byte stream; [`Fnv`] a small digest.
//!
//! Every wait is bounded: nothing here can hang a test run.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use rustls;
pub use rustls::pki_types::CertificateDer;
pub use tempfile::TempDir;

pub mod cache_value;

/// How long `tlsfront run` may take to print `tlsfront: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a short CLI command (`sysctl`, `stats`, a config error) may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound for connects, handshakes and small exchanges.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Locating the binary, ports, temp dirs
// ---------------------------------------------------------------------------

/// Path of the `tlsfront` binary: `$TLSFRONT_BIN`, else `<target>/debug/tlsfront`
/// next to the `deps/` folder that holds this test executable.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TLSFRONT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TLSFRONT_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/debug/deps/<test>-<hash>  ->  <target>/debug/tlsfront
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join("tlsfront"));
        }
        candidates.push(deps.join("tlsfront"));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "tlsfront binary not found (looked at {:?}); build it first: cargo build -p tlsfront",
        candidates
    );
}

/// A TCP port on 127.0.0.1 held for as long as this value lives, so that
/// the server a test starts on it cannot lose it to another test.
///
/// It is a socket bound to 127.0.0.1:0 with SO_REUSEADDR and SO_REUSEPORT
/// that never listens. While it exists the kernel gives the port to no one
/// else: `bind(:0)` and the source ports of `connect` skip a port that has
/// a bound socket. A server that binds the port itself with SO_REUSEADDR
/// (tlsfront's listeners and metrics endpoint, nginx, redis) still can, as
/// the holder does not listen; it gets the connections, the holder none.
/// There is no window between choosing the port and the server's bind.
pub struct ReservedPort {
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
    ip: std::net::IpAddr,
}

impl ReservedPort {
    /// Reserves a port the kernel picks.
    pub fn new() -> ReservedPort {
        Self::at(0).unwrap_or_else(|e| panic!("reserving a port on 127.0.0.1: {e}"))
    }

    /// Reserves `port` (0: any), or says why not (EADDRINUSE: someone else
    /// has it).
    pub fn at(port: u16) -> io::Result<ReservedPort> {
        let (fd, port) = bound_socket(port, true)?;
        Ok(ReservedPort {
            _fd: fd,
            port,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
        })
    }

    /// Reserves a port on `[::1]` the same way (an IPv6-only socket): for
    /// an IPv6 listener of a test's tlsfront.
    pub fn new_v6() -> ReservedPort {
        let reserve = || -> io::Result<ReservedPort> {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_only_v6(true)?;
            let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
            socket.bind(&loopback.into())?;
            let port = socket
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("not an IP socket"))?;
            Ok(ReservedPort {
                _fd: socket.into(),
                port,
                ip: std::net::Ipv6Addr::LOCALHOST.into(),
            })
        };
        reserve().unwrap_or_else(|e| panic!("reserving a port on [::1] (IPv6 loopback): {e}"))
    }

    /// `IP:PORT` (`127.0.0.1`, or `[::1]` for [`new_v6`](Self::new_v6)).
    pub fn addr_string(&self) -> String {
        self.addr().to_string()
    }

    /// `IP:PORT` (`127.0.0.1`, or `[::1]` for [`new_v6`](Self::new_v6)).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

/// A TCP socket bound to 127.0.0.1:`port` that does not listen (`reuse`:
/// with SO_REUSEADDR and SO_REUSEPORT), and the port it got.
fn bound_socket(port: u16, reuse: bool) -> io::Result<(std::os::fd::OwnedFd, u16)> {
    use std::os::fd::FromRawFd;
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain socket calls on a descriptor we own; every result is checked.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        if reuse {
            let one: libc::c_int = 1;
            for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
                check(libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ))?;
            }
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        sa.sin_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            len,
        ))?;
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut olen = len;
        check(libc::getsockname(
            fd,
            &mut out as *mut _ as *mut libc::sockaddr,
            &mut olen,
        ))?;
        Ok((owned, u16::from_be(out.sin_port)))
    }
}

/// A loopback port that refuses connections for as long as this value lives: a TCP
/// socket bound to 127.0.0.1:0 that never listens (so no other test can take the
/// port, and a connect gets RST / ECONNREFUSED).
pub struct RefusingPort {
    _fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let (fd, port) = bound_socket(0, false)
            .unwrap_or_else(|e| panic!("binding a socket to 127.0.0.1:0: {e}"));
        RefusingPort { _fd: fd, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        RefusingPort::new()
    }
}

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

/// A fresh temporary directory, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("tlsfront-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

// ---------------------------------------------------------------------------
// Running commands with a time limit
// ---------------------------------------------------------------------------

/// Output of a command run with [`run_cmd`].
#[derive(Debug)]
pub struct CmdOutput {
    /// `None` if the command was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    /// Everything, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn drain_to_string<R: Read + Send + 'static>(r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut r = r;
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` with `stdin` as its standard input (then closed), killing it after
/// `timeout`. stdout and stderr are captured.
pub fn run_cmd(mut cmd: Command, stdin: &[u8], timeout: Duration) -> CmdOutput {
    let start = Instant::now();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain_to_string(child.stdout.take().unwrap());
    let err = drain_to_string(child.stderr.take().unwrap());
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
        // dropping `input` closes stdin
    });
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break Some(s),
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = writer.join();
    CmdOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// `tlsfront ARGS...` with a time limit.
pub fn tlsfront_cmd(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_cmd(cmd, b"", CLI_TIMEOUT)
}

// ---------------------------------------------------------------------------
// The frontend process
// ---------------------------------------------------------------------------

/// A `tlsfront run` command line for a test, from [`run_command`].
pub struct RunCommand {
    /// The command (stdio not set).
    pub cmd: Command,
    /// The port of `net.listen`.
    pub port: u16,
    /// The control socket.
    pub socket: PathBuf,
    /// Holds the port when [`run_command`] chose it: keep it as long as the
    /// process may bind or re-bind it.
    pub reservation: Option<ReservedPort>,
}

/// `tlsfront run [-c config] -o k=v...` with, unless `opts` sets them, a
/// reserved port (`net.listen`, see [`ReservedPort`]), the control socket,
/// session cache file and ticket ring in `dir` (so that tests never share a
/// port or sessions), and `net.migrate_requests = 0` (tests do not write
/// the host's `net.ipv4.tcp_migrate_req`; the one that tests it sets it in
/// a network namespace of its own).
pub fn run_command(dir: &Path, config: Option<&Path>, opts: &[(&str, &str)]) -> RunCommand {
    let given = |k: &str| opts.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let mut all: Vec<(String, String)> = Vec::new();
    let mut reservation = None;
    let port = match given("net.listen") {
        // The first of a list names the port.
        Some(v) => v
            .split(',')
            .next()
            .unwrap_or(v)
            .trim()
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .expect("net.listen given to a test's tlsfront must be a socket address"),
        None => {
            let r = ReservedPort::new();
            let p = r.port;
            reservation = Some(r);
            all.push(("net.listen".into(), format!("127.0.0.1:{p}")));
            p
        }
    };
    let socket = match given("control.socket") {
        Some(v) => PathBuf::from(v),
        None => {
            let s = dir.join("control.sock");
            all.push(("control.socket".into(), s.display().to_string()));
            s
        }
    };
    for (key, file) in [
        ("cache.path", "session.cache"),
        ("tickets.path", "tickets.ring"),
    ] {
        if given(key).is_none() {
            all.push((key.into(), dir.join(file).display().to_string()));
        }
    }
    if given("net.migrate_requests").is_none() {
        all.push(("net.migrate_requests".into(), "0".into()));
    }
    all.extend(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut cmd = Command::new(bin());
    cmd.arg("run");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    for (k, v) in &all {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    RunCommand {
        cmd,
        port,
        socket,
        reservation,
    }
}

/// A running `tlsfront run`, killed on drop.
pub struct Frontend {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    /// Holds the control socket; removed on drop (after the child is killed).
    _dir: TempDir,
    _reservation: Option<ReservedPort>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Frontend {
    /// Starts `tlsfront run -o k=v ...` with its own free port (`net.listen`) and
    /// its own control socket, session cache file and ticket-key ring file in its
    /// own temp dir, unless `opts` sets them.
    /// Waits for `tlsfront: ready` (at most [`READY_TIMEOUT`]).
    pub fn start(opts: &[(&str, &str)]) -> Frontend {
        Self::start_with_config(None, opts)
    }

    /// Same as [`Frontend::start`], with `-c config` first.
    pub fn start_with_config(config: Option<&Path>, opts: &[(&str, &str)]) -> Frontend {
        Self::try_start(config, opts).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// Like [`Frontend::start_with_config`]; `Err` with the output when it
    /// does not get ready.
    pub fn try_start(config: Option<&Path>, opts: &[(&str, &str)]) -> Result<Frontend, String> {
        let dir = temp_dir();
        let RunCommand {
            mut cmd,
            port,
            socket,
            reservation,
        } = run_command(dir.path(), config, opts);
        let cmdline = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmdline}: {e}"))?;

        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        {
            let out = child.stdout.take().unwrap();
            let acc = stdout.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut line = Vec::new();
                let mut ready_tx = Some(ready_tx);
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break, // EOF: ready_tx dropped -> receiver sees disconnect
                        Ok(_) => {
                            let s = String::from_utf8_lossy(&line).into_owned();
                            if s.trim_end() == "tlsfront: ready" {
                                if let Some(tx) = ready_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            acc.lock().unwrap().push_str(&s);
                        }
                    }
                }
            });
        }
        {
            let mut err = child.stderr.take().unwrap();
            let acc = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => acc
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
            });
        }

        let fe = Frontend {
            child,
            port,
            socket,
            _dir: dir,
            _reservation: reservation,
            stdout,
            stderr,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(fe),
            Err(e) => {
                let mut fe = fe;
                // Give the child a moment to exit and the drain threads to catch up.
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut status = None;
                while Instant::now() < deadline {
                    if let Ok(Some(s)) = fe.child.try_wait() {
                        status = Some(s);
                        thread::sleep(Duration::from_millis(100));
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no `tlsfront: ready` within {READY_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        "stdout closed before `tlsfront: ready`".to_string()
                    }
                };
                let msg = format!(
                    "tlsfront failed to start: {why}; exit status {status:?}\ncommand: {cmdline}\n{}",
                    fe.output()
                );
                Err(msg)
            }
        }
    }

    /// The process id of the running tlsfront.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The CPU of each worker, by index, as the kernel has them pinned
    /// ([`worker_cpus_of`]); fails unless each worker has a CPU of its own.
    pub fn worker_cpus(&self) -> Vec<u32> {
        let cpus = worker_cpus_of(self.pid());
        let one: Vec<u32> = cpus.iter().filter(|c| c.len() == 1).map(|c| c[0]).collect();
        let distinct: std::collections::BTreeSet<_> = one.iter().collect();
        assert!(
            one.len() == cpus.len() && distinct.len() == cpus.len(),
            "worker threads are not pinned one per CPU: {cpus:?}"
        );
        one
    }

    /// The worker that served `v`, as the kernel saw it: the one pinned to
    /// the CPU that sent the connection's last segments (`cpus` from
    /// [`Frontend::worker_cpus`]).
    pub fn kernel_worker(&self, cpus: &[u32], v: &Visit) -> usize {
        let cpu = v.incoming_cpu.expect("SO_INCOMING_CPU of the visit");
        cpus.iter().position(|&c| c == cpu).unwrap_or_else(|| {
            panic!("connection served from CPU {cpu}, where no worker runs ({cpus:?}): {v:?}")
        })
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// stdout and stderr (the last 8000 characters of stderr), for failure messages.
    pub fn output(&self) -> String {
        let err = self.stderr();
        let tail = if err.len() > 8000 {
            let mut cut = err.len() - 8000;
            while !err.is_char_boundary(cut) {
                cut += 1;
            }
            format!("[...]{}", &err[cut..])
        } else {
            err
        };
        format!(
            "--- tlsfront stdout ---\n{}\n--- tlsfront stderr ---\n{}",
            self.stdout(),
            tail
        )
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `tlsfront stats --socket PATH --json`, parsed.
    pub fn stats(&self) -> Stats {
        let sock = self.socket.display().to_string();
        let out = tlsfront_cmd(&["stats", "--socket", &sock, "--json"]);
        assert_eq!(
            out.code(),
            Some(0),
            "tlsfront stats --socket {sock} --json failed:\n{}\n{}",
            out.describe(),
            self.output()
        );
        Stats::parse(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cannot parse stats JSON ({e}):\n{}\n{}",
                out.stdout,
                self.output()
            )
        })
    }

    /// Polls [`Frontend::stats`] until `pred` holds or `timeout` passes; returns the
    /// last stats and whether `pred` held.
    pub fn wait_stats(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> (Stats, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if pred(&s) {
                return (s, true);
            }
            if Instant::now() >= deadline {
                return (s, false);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------

/// Counters of one worker, or the total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub worker: Option<u64>,
    pub cpu: Option<u64>,
    pub accepted: u64,
    pub handshakes: u64,
    pub handshake_errors: u64,
    pub active: u64,
    pub upstream_errors: u64,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// Every unsigned integer field of the JSON object, by name, including
    /// those without a field above (`resumed_tls12`, `cache_hits`, ...).
    pub all: std::collections::BTreeMap<String, u64>,
}

/// Output of `tlsfront stats --json`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub workers: Vec<Counters>,
    pub total: Counters,
}

impl Counters {
    fn from_json(v: &serde_json::Value) -> Result<Counters, String> {
        let obj = v.as_object().ok_or("counters are not an object")?;
        let num = |k: &str| -> Result<u64, String> {
            obj.get(k)
                .ok_or_else(|| format!("missing field {k:?}"))?
                .as_u64()
                .ok_or_else(|| format!("field {k:?} is not an unsigned integer"))
        };
        Ok(Counters {
            worker: obj.get("worker").and_then(|x| x.as_u64()),
            cpu: obj.get("cpu").and_then(|x| x.as_u64()),
            accepted: num("accepted")?,
            handshakes: num("handshakes")?,
            handshake_errors: num("handshake_errors")?,
            active: num("active")?,
            upstream_errors: num("upstream_errors")?,
            bytes_client_to_upstream: num("bytes_client_to_upstream")?,
            bytes_upstream_to_client: num("bytes_upstream_to_client")?,
            all: obj
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect(),
        })
    }

    /// The counter `name` (e.g. `resumed_tls12`, `cache_hits`); panics, listing
    /// the counters present, if the JSON had no such field.
    pub fn get(&self, name: &str) -> u64 {
        match self.all.get(name) {
            Some(v) => *v,
            None => panic!(
                "stats have no counter {name:?}; present: {:?}",
                self.all.keys().collect::<Vec<_>>()
            ),
        }
    }
}

impl Stats {
    pub fn parse(text: &str) -> Result<Stats, String> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| e.to_string())?;
        let workers = v
            .get("workers")
            .and_then(|w| w.as_array())
            .ok_or("missing array \"workers\"")?
            .iter()
            .map(Counters::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        let total = Counters::from_json(v.get("total").ok_or("missing object \"total\"")?)?;
        Ok(Stats { workers, total })
    }

    /// Counter `name` of each worker, by worker index (see [`Counters::get`]).
    pub fn per_worker(&self, name: &str) -> Vec<u64> {
        self.workers.iter().map(|w| w.get(name)).collect()
    }
}

// ---------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------

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
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind upstream {bind}: {e}"));
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

// ---------------------------------------------------------------------------
// Data: pattern and digest
// ---------------------------------------------------------------------------

/// A deterministic pseudo-random byte stream (splitmix64), reproducible from its seed.
#[derive(Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
    /// Bytes produced (or checked) so far.
    pub pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
            pos: 0,
        }
    }

    #[inline]
    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next `buf.len()` bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.used < 8 {
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut chunks = buf[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word().to_le_bytes();
            self.used = 0;
            for b in rest {
                *b = self.word[self.used];
                self.used += 1;
            }
        }
        self.pos += buf.len() as u64;
    }

    /// The first `len` bytes of the stream of `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Pattern::new(seed).fill(&mut v);
        v
    }

    /// Compares `data` with the next bytes of the stream; on mismatch returns the
    /// absolute offset of the first differing byte.
    pub fn check(&mut self, data: &[u8]) -> Result<(), u64> {
        let start = self.pos;
        let mut expect = [0u8; 16 * 1024];
        for (k, chunk) in data.chunks(expect.len()).enumerate() {
            let e = &mut expect[..chunk.len()];
            self.fill(e);
            if e != chunk {
                let off = e.iter().zip(chunk).position(|(a, b)| a != b).unwrap();
                return Err(start + (k * expect.len() + off) as u64);
            }
        }
        Ok(())
    }
}

/// Incrementally verifies a received stream against a [`Pattern`], remembering the
/// first mismatch and how many bytes arrived.
pub struct PatternCheck {
    pattern: Pattern,
    pub received: u64,
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    pub fn new(seed: u64) -> Self {
        PatternCheck {
            pattern: Pattern::new(seed),
            received: 0,
            first_mismatch: None,
        }
    }
    pub fn feed(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        if self.first_mismatch.is_none() {
            if let Err(off) = self.pattern.check(data) {
                self.first_mismatch = Some(off);
            }
        }
    }
}

/// FNV-1a 64-bit digest.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    pub fn of(data: &[u8]) -> u64 {
        let mut f = Fnv::default();
        f.update(data);
        f.0
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A leaf certificate and its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; returns (cert path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let c = write_file(dir, &format!("{stem}.pem"), &self.cert_pem);
        let k = write_file(dir, &format!("{stem}.key"), &self.key_pem);
        (c, k)
    }
}

/// A throw-away CA that issues leaf certificates for the tests.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    /// The CA certificate as PEM (for `curl --cacert`, `openssl -CAfile`).
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "tlsfront test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("self-sign CA");
        Pki {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A leaf for `names` (DNS SANs; the first is also the CN), signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).expect("leaf params");
        if let Some(cn) = names.first() {
            p.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Trust only this CA.
    pub fn trust(&self) -> Trust {
        Trust::Roots(vec![self.ca_der.clone()])
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

// ---------------------------------------------------------------------------
// rustls client
// ---------------------------------------------------------------------------

/// Which certificates the client accepts.
#[derive(Clone)]
pub enum Trust {
    /// Verify the chain against these roots and the server name.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate (signatures are still checked); for tests that look at
    /// which certificate was served rather than whether it verifies.
    AnyCert,
}

/// TLS versions the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// How to build a client config.
#[derive(Clone)]
pub struct ClientSpec {
    pub trust: Trust,
    pub alpn: Vec<String>,
    pub versions: Versions,
}

impl ClientSpec {
    pub fn new(trust: Trust) -> ClientSpec {
        ClientSpec {
            trust,
            alpn: Vec::new(),
            versions: Versions::Both,
        }
    }
    pub fn alpn(mut self, protos: &[&str]) -> Self {
        self.alpn = protos.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn versions(mut self, v: Versions) -> Self {
        self.versions = v;
        self
    }
    pub fn build(&self) -> Arc<rustls::ClientConfig> {
        client_config(self)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client config (aws-lc-rs provider) for `spec`.
pub fn client_config(spec: &ClientSpec) -> Arc<rustls::ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match spec.versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let p = provider();
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(versions)
        .expect("protocol versions");
    let mut cfg = match &spec.trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone()).expect("add root");
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::AnyCert => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(p)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = spec.alpn.iter().map(|s| s.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// How a [`TlsClient::pump`] ended on the receive side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Received the requested number of bytes (the connection is still open).
    Count,
    /// The server sent close_notify (clean end of stream).
    CloseNotify,
    /// TCP EOF without close_notify.
    TcpEof,
    /// A socket or TLS error.
    Error(String),
    /// The deadline passed first.
    Timeout,
}

/// What a [`TlsClient::pump`] did.
#[derive(Debug, Clone)]
pub struct PumpResult {
    pub sent: u64,
    pub received: u64,
    pub end: End,
    pub elapsed: Duration,
}

/// What [`TlsClient::pump`] should do.
pub struct PumpOpts {
    /// Send `close_notify` once the source is exhausted.
    pub close_notify_after_send: bool,
    /// Also `shutdown(Write)` the TCP socket after close_notify has been flushed.
    pub tcp_shutdown_after_close_notify: bool,
    /// Stop once this many bytes have been received (None: until EOF/close).
    pub recv_until: Option<u64>,
    pub timeout: Duration,
}

/// A client TLS connection (rustls over a blocking `TcpStream`).
pub struct TlsClient {
    pub conn: rustls::ClientConnection,
    pub sock: TcpStream,
}

impl TlsClient {
    /// Connects to `addr`, sends `server_name` as SNI (if it is a DNS name) and
    /// completes the handshake within [`IO_TIMEOUT`].
    pub fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        Self::handshake_over(sock, config, server_name)
    }

    /// Completes a TLS handshake over an already connected socket (e.g. one
    /// the server's kernel queued while the server could not accept), within
    /// [`IO_TIMEOUT`].
    pub fn handshake_over(
        sock: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut c = TlsClient { conn, sock };
        let deadline = Instant::now() + IO_TIMEOUT;
        while c.conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ));
            }
            let (rd, wr) = c.conn.complete_io(&mut c.sock)?;
            if rd == 0 && wr == 0 && c.conn.is_handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF during handshake",
                ));
            }
        }
        // Flush our Finished (TLS 1.3) so the server counts the handshake.
        while c.conn.wants_write() {
            c.conn.write_tls(&mut c.sock)?;
        }
        Ok(c)
    }

    /// The kernel's `SO_INCOMING_CPU` of this client's socket: the CPU that
    /// processed the last segment it received. On loopback (and a veth
    /// pair) a segment is processed on the CPU that sent it, so for a
    /// server whose workers are pinned one per CPU this names the CPU of
    /// the worker that served the connection, as the kernel saw it.
    pub fn incoming_cpu(&self) -> io::Result<u32> {
        incoming_cpu(&self.sock)
    }

    /// The DER of the certificate the server presented.
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// The negotiated ALPN protocol, as text.
    pub fn alpn(&self) -> Option<String> {
        self.conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Sends the bytes produced by `source` (it fills the buffer and returns how many
    /// bytes it wrote, 0 when done) while passing every received plaintext byte to
    /// `sink`, both at once, on a non-blocking socket. Ends when everything is sent
    /// (and close_notify, if asked) and the receive side is done (count reached, or
    /// close_notify/EOF/error), or at the deadline.
    pub fn pump(
        &mut self,
        source: &mut dyn FnMut(&mut [u8]) -> usize,
        sink: &mut dyn FnMut(&[u8]),
        opts: &PumpOpts,
    ) -> PumpResult {
        let start = Instant::now();
        let deadline = start + opts.timeout;
        let mut res = PumpResult {
            sent: 0,
            received: 0,
            end: End::Timeout,
            elapsed: Duration::ZERO,
        };
        if let Err(e) = self.sock.set_nonblocking(true) {
            res.end = End::Error(format!("set_nonblocking: {e}"));
            return res;
        }
        self.conn.set_buffer_limit(Some(256 * 1024));
        let mut out = vec![0u8; 64 * 1024];
        let (mut out_pos, mut out_len) = (0usize, 0usize);
        let mut inbuf = vec![0u8; 64 * 1024];
        let mut send_done = false;
        let mut close_sent = false;
        let mut tcp_shut = false;
        let mut recv_end: Option<End> = None;
        let mut peer_eof = false;

        let result = loop {
            // 1. Move plaintext into rustls as far as its buffer allows.
            while !send_done {
                if out_pos == out_len {
                    out_len = source(&mut out);
                    out_pos = 0;
                    if out_len == 0 {
                        send_done = true;
                        break;
                    }
                }
                match self.conn.writer().write(&out[out_pos..out_len]) {
                    Ok(0) => break,
                    Ok(n) => {
                        out_pos += n;
                        res.sent += n as u64;
                    }
                    Err(e) => break_err(&mut recv_end, format!("rustls write: {e}")),
                }
                if recv_end.is_some() {
                    break;
                }
            }
            if send_done && opts.close_notify_after_send && !close_sent {
                self.conn.send_close_notify();
                close_sent = true;
            }

            // 2. Flush TLS records to the socket.
            let mut write_err = None;
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        write_err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = write_err {
                // The peer is gone. Report what the receive side saw first, if anything.
                break recv_end
                    .clone()
                    .unwrap_or(End::Error(format!("socket write: {e}")));
            }
            if close_sent
                && opts.tcp_shutdown_after_close_notify
                && !tcp_shut
                && !self.conn.wants_write()
            {
                let _ = self.sock.shutdown(Shutdown::Write);
                tcp_shut = true;
            }

            let all_sent = send_done
                && (!opts.close_notify_after_send || close_sent)
                && !self.conn.wants_write();
            if let Some(end) = &recv_end {
                if matches!(end, End::Error(_)) || all_sent || peer_eof {
                    break end.clone();
                }
            }
            if Instant::now() >= deadline {
                break End::Timeout;
            }

            // 3. Wait for the socket.
            let mut events = 0;
            if recv_end.is_none() && !peer_eof {
                events |= libc::POLLIN;
            }
            if self.conn.wants_write() {
                events |= libc::POLLOUT;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().clamp(1, 100) as i32;
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break End::Error(format!("poll: {e}"));
            }

            // 4. Read TLS records and drain plaintext.
            if recv_end.is_none() && !peer_eof && pfd.revents != 0 {
                match self.conn.read_tls(&mut self.sock) {
                    Ok(0) => peer_eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        recv_end = Some(End::Error(format!("socket read: {e}")));
                        continue;
                    }
                }
                if let Err(e) = self.conn.process_new_packets() {
                    // Try to send the alert, then report.
                    let _ = self.conn.write_tls(&mut self.sock);
                    recv_end = Some(End::Error(format!("TLS: {e}")));
                    continue;
                }
            }
            if recv_end.is_none() {
                loop {
                    if let Some(limit) = opts.recv_until {
                        if res.received >= limit {
                            recv_end = Some(End::Count);
                            break;
                        }
                    }
                    let want = match opts.recv_until {
                        Some(limit) => ((limit - res.received) as usize).min(inbuf.len()),
                        None => inbuf.len(),
                    };
                    match self.conn.reader().read(&mut inbuf[..want]) {
                        Ok(0) => {
                            recv_end = Some(End::CloseNotify);
                            break;
                        }
                        Ok(n) => {
                            res.received += n as u64;
                            sink(&inbuf[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if peer_eof {
                                // EOF from TCP with nothing more buffered and no close_notify
                                recv_end = Some(End::TcpEof);
                            }
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            recv_end = Some(End::TcpEof);
                            break;
                        }
                        Err(e) => {
                            recv_end = Some(End::Error(format!("rustls read: {e}")));
                            break;
                        }
                    }
                }
            }
        };
        let _ = self.sock.set_nonblocking(false);
        res.end = result;
        res.elapsed = start.elapsed();
        res
    }

    /// Sends `request`, then reads until the server ends the stream (at most
    /// `timeout`). Returns what arrived and how it ended.
    pub fn request(&mut self, request: &[u8], timeout: Duration) -> (Vec<u8>, End) {
        let mut req = Some(request.to_vec());
        let mut source = |buf: &mut [u8]| -> usize {
            match req.take() {
                Some(r) => {
                    assert!(r.len() <= buf.len(), "request too large for one chunk");
                    buf[..r.len()].copy_from_slice(&r);
                    r.len()
                }
                None => 0,
            }
        };
        let mut got = Vec::new();
        let mut sink = |d: &[u8]| got.extend_from_slice(d);
        let r = self.pump(
            &mut source,
            &mut sink,
            &PumpOpts {
                close_notify_after_send: false,
                tcp_shutdown_after_close_notify: false,
                recv_until: None,
                timeout,
            },
        );
        (got, r.end)
    }
}

fn break_err(slot: &mut Option<End>, msg: String) {
    if slot.is_none() {
        *slot = Some(End::Error(msg));
    }
}

/// Source for [`TlsClient::pump`]: `len` bytes of the pattern of `seed`.
pub fn pattern_source(seed: u64, len: u64) -> impl FnMut(&mut [u8]) -> usize {
    let mut p = Pattern::new(seed);
    let mut left = len;
    move |buf: &mut [u8]| {
        let n = (buf.len() as u64).min(left) as usize;
        p.fill(&mut buf[..n]);
        left -= n as u64;
        n
    }
}

/// An HTTP/1.0 GET through a fresh TLS connection; returns the response bytes and
/// how the stream ended.
pub fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<(Vec<u8>, End)> {
    let mut c = TlsClient::connect(addr, config, server_name)?;
    Ok(c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT))
}

// ---------------------------------------------------------------------------
// Session resumption
// ---------------------------------------------------------------------------

/// A client config like [`client_config`] whose sessions (TLS 1.2 session IDs,
/// TLS 1.3 tickets) are kept across connections in its own
/// `ClientSessionMemoryCache`: every connection made with it (or a clone of the
/// `Arc`) offers the last session it got from a server of that name. Build a
/// new one for a client that remembers nothing.
pub fn resuming_client_config(spec: &ClientSpec) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_config(spec)).clone();
    cfg.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(64),
    ));
    Arc::new(cfg)
}

impl TlsClient {
    /// Did the handshake resume a session (TLS 1.2 session ID or TLS 1.3 PSK)?
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

/// What one [`visit`] saw.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The handshake resumed a session.
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    /// The response started with an HTTP 200 status line.
    pub http_200: bool,
    pub end: End,
    /// `SO_INCOMING_CPU` of the client's socket at the end: the CPU of the
    /// worker that served it, as the kernel saw it ([`TlsClient::incoming_cpu`]).
    pub incoming_cpu: Option<u32>,
}

/// One connection: handshake, `GET /`, read until the server ends the stream.
/// Reading to the end also processes the TLS 1.3 tickets the server sends after
/// the handshake, so a resuming `config` holds them afterwards.
pub fn visit(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<Visit> {
    let mut c = TlsClient::connect(addr, config, server_name)?;
    let (resp, end) = c.request(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", IO_TIMEOUT);
    Ok(Visit {
        resumed: c.resumed(),
        version: c.version(),
        http_200: is_http_200(&resp),
        end,
        incoming_cpu: c.incoming_cpu().ok(),
    })
}

/// True if `resp` starts with an HTTP 200 status line.
pub fn is_http_200(resp: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).into_owned();
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// Parses `key = value` lines (as printed by `tlsfront sysctl`).
pub fn parse_sysctl(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Reads from a plain TCP socket until EOF or error, at most `timeout`.
/// Returns the bytes read and `Ok(())` for EOF, `Err(kind)` for an error
/// (a `TimedOut`/`WouldBlock` kind means it was still open at the deadline).
pub fn read_until_closed(
    sock: &mut TcpStream,
    timeout: Duration,
) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, Err(io::ErrorKind::TimedOut));
        }
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match sock.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (got, Err(io::ErrorKind::TimedOut))
            }
            Err(e) => return (got, Err(e.kind())),
        }
    }
}

#[cfg(test)]
mod self_tests {
    //! The harness checked against an in-process rustls echo server, so that a
    //! failing end-to-end test points at tlsfront, not at the harness.
    use super::*;

    /// A TLS echo server on 127.0.0.1:0 (one connection per thread): echoes until
    /// close_notify/EOF, then sends close_notify.
    fn tls_echo_server(leaf: &Leaf) -> SocketAddr {
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            rcgen::KeyPair::from_pem(&leaf.key_pem)
                .unwrap()
                .serialize_der(),
        )
        .unwrap();
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der.clone()], key)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let cfg = cfg.clone();
                thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                    let mut t = rustls::StreamOwned::new(conn, s);
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match t.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if t.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    t.conn.send_close_notify();
                    let _ = t.flush();
                });
            }
        });
        addr
    }

    #[test]
    fn pattern_is_deterministic_and_chunking_independent() {
        let whole = Pattern::bytes(42, 1000);
        let mut p = Pattern::new(42);
        let mut parts = Vec::new();
        for n in [1usize, 7, 8, 13, 300, 671] {
            let mut b = vec![0u8; n];
            p.fill(&mut b);
            parts.extend_from_slice(&b);
        }
        assert_eq!(whole, parts);
        let mut c = PatternCheck::new(42);
        c.feed(&whole[..500]);
        let mut bad = whole[500..].to_vec();
        bad[10] ^= 1;
        c.feed(&bad);
        assert_eq!(c.first_mismatch, Some(510));
    }

    #[test]
    fn pump_echoes_8_mib_both_ways_and_sees_close_notify() {
        let pki = Pki::new();
        let addr = tls_echo_server(&pki.leaf(&["localhost"]));
        let mut c =
            TlsClient::connect(addr, ClientSpec::new(pki.trust()).build(), "localhost").unwrap();
        const LEN: u64 = 8 << 20;
        let mut src = pattern_source(3, LEN);
        let mut check = PatternCheck::new(3);
        let mut sink = |d: &[u8]| check.feed(d);
        let r = c.pump(
            &mut src,
            &mut sink,
            &PumpOpts {
                close_notify_after_send: true,
                tcp_shutdown_after_close_notify: false,
                recv_until: None,
                timeout: Duration::from_secs(60),
            },
        );
        assert_eq!(r.end, End::CloseNotify, "{r:?}");
        assert_eq!(check.received, LEN);
        assert_eq!(check.first_mismatch, None);
    }

    #[test]
    fn pump_stops_at_count_and_request_reads_to_close() {
        let pki = Pki::new();
        let addr = tls_echo_server(&pki.leaf(&["localhost"]));
        let mut c =
            TlsClient::connect(addr, ClientSpec::new(pki.trust()).build(), "localhost").unwrap();
        let mut src = pattern_source(9, 1);
        let mut got = Vec::new();
        let mut sink = |d: &[u8]| got.extend_from_slice(d);
        let r = c.pump(
            &mut src,
            &mut sink,
            &PumpOpts {
                close_notify_after_send: false,
                tcp_shutdown_after_close_notify: false,
                recv_until: Some(1),
                timeout: Duration::from_secs(10),
            },
        );
        assert_eq!(r.end, End::Count);
        assert_eq!(got, Pattern::bytes(9, 1));
        // A plain TCP server that closes without close_notify gives TcpEof.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            thread::sleep(Duration::from_millis(50));
            drop(s);
        });
        let err = TlsClient::connect(a, ClientSpec::new(Trust::AnyCert).build(), "localhost");
        assert!(err.is_err());
    }

    #[test]
    fn refusing_port_refuses() {
        let p = RefusingPort::new();
        let e = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], p.port)), IO_TIMEOUT)
            .expect_err("connect to a bound, non-listening socket must fail");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn stats_json_parses() {
        let s = Stats::parse(
            r#"{"workers":[{"worker":0,"cpu":0,"accepted":3,"handshakes":2,"handshake_errors":1,"active":0,"upstream_errors":0,"bytes_client_to_upstream":10,"bytes_upstream_to_client":20}],
               "total":{"accepted":3,"handshakes":2,"handshake_errors":1,"active":0,"upstream_errors":0,"bytes_client_to_upstream":10,"bytes_upstream_to_client":20}}"#,
        )
        .unwrap();
        assert_eq!(s.workers.len(), 1);
        assert_eq!(s.workers[0].handshakes, 2);
        assert_eq!(s.total.bytes_upstream_to_client, 20);
    }
}

pub mod netns;

pub mod ops_support;

pub mod openssl_pki;

pub mod robust_support;

pub mod fleet_support;
pub mod haproxy;
pub mod prereq;
pub mod pp2;
pub mod redis;
