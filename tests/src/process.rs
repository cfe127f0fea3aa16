//! Processes with a time limit: the `tlsfront` binary, commands whose
//! output is captured ([`run_cmd`]), and a running `tlsfront run`
//! ([`Frontend`]) killed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::clients::{visit, Visit};
use crate::cpus::worker_cpus_of;
use crate::files::temp_dir;
use crate::pki::Pki;
use crate::ports::ReservedPort;
use crate::stats::Stats;

/// How long `tlsfront run` may take to print `tlsfront: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a short CLI command (`sysctl`, `stats`, a config error) may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);

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
    captured: Captured,
}

impl CapturesOutput for Frontend {
    fn captured(&self) -> &Captured {
        &self.captured
    }
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

    /// Starts tlsfront in front of `upstream` serving a fresh `localhost`
    /// leaf of `pki` (its files written to `dir`).
    pub fn with_leaf(pki: &Pki, dir: &Path, upstream: &str) -> Frontend {
        let (cert, key) = pki.leaf(&["localhost"]).write(dir, "localhost");
        Frontend::start(&[
            ("tls.cert", cert.to_str().unwrap()),
            ("tls.key", key.to_str().unwrap()),
            ("upstream.addr", upstream),
        ])
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
        let (child, captured, ready_rx) = Captured::spawn(&mut cmd)?;
        let fe = Frontend {
            child,
            port,
            socket,
            _dir: dir,
            _reservation: reservation,
            captured,
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

    /// A full handshake and `GET /` with a client that holds no session yet
    /// (`cfg` from [`resuming_client_config`](crate::resuming_client_config)):
    /// fails unless it was full and answered 200; `context` names it in the
    /// failure.
    pub fn full_visit(&self, cfg: Arc<rustls::ClientConfig>, context: &str) -> Visit {
        let full = visit(self.addr(), cfg, "localhost")
            .unwrap_or_else(|e| panic!("{context}, full handshake: {e}\n{}", self.output()));
        assert!(!full.resumed && full.http_200, "{context}: {full:?}");
        full
    }

    /// Asserts that `counted`, the worker whose counters moved for `v`, is
    /// the one the kernel saw serve it ([`Frontend::kernel_worker`]);
    /// `context` and `event` (what was counted) name it in the failure.
    #[track_caller]
    pub fn assert_served_by(
        &self,
        cpus: &[u32],
        v: &Visit,
        counted: usize,
        context: &str,
        event: &str,
    ) {
        assert_eq!(
            self.kernel_worker(cpus, v),
            counted,
            "{context}: the worker that counted {event} is not the one the kernel saw serve it"
        );
    }

    /// stdout and stderr (the last 8000 characters of stderr), for failure messages.
    pub fn output(&self) -> String {
        let err = self.stderr();
        let tail = if err.len() > 8000 {
            format!("[...]{}", tail(&err, 8000))
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

/// Parses `key = value` lines (as printed by `tlsfront sysctl`).
pub fn parse_sysctl(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a child wrote on stdout and stderr so far, collected by a thread
/// each.
#[derive(Clone, Default)]
pub struct Captured {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Captured {
    /// Collects the piped stdout and stderr of `child`. The receiver gets a
    /// message when stdout has the line `tlsfront: ready`, and sees the
    /// channel closed if stdout closes first.
    pub fn start(child: &mut Child) -> (Captured, mpsc::Receiver<()>) {
        let captured = Captured::default();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        if let Some(out) = child.stdout.take() {
            let acc = captured.stdout.clone();
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
        if let Some(mut err) = child.stderr.take() {
            let acc = captured.stderr.clone();
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
        (captured, ready_rx)
    }

    /// Spawns `cmd` with stdin closed and its output [`Captured`] (see
    /// [`Captured::start`]); `Err` names the command.
    pub fn spawn(cmd: &mut Command) -> Result<(Child, Captured, mpsc::Receiver<()>), String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let (captured, ready) = Captured::start(&mut child);
        Ok((child, captured, ready))
    }
}

/// A process of the harness whose output is [`Captured`].
pub trait CapturesOutput {
    /// Its output.
    fn captured(&self) -> &Captured;

    /// Everything the process wrote to stdout so far.
    fn stdout(&self) -> String {
        self.captured().stdout.lock().unwrap().clone()
    }

    /// Everything the process wrote to stderr so far.
    fn stderr(&self) -> String {
        self.captured().stderr.lock().unwrap().clone()
    }
}

/// The last `max` bytes of `text` (fewer, to start on a character).
pub fn tail(text: &str, max: usize) -> &str {
    let mut cut = text.len().saturating_sub(max);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    &text[cut..]
}
