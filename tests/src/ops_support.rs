//! Helpers for the operational end-to-end tests (`tests/operations.rs`):
//! a `tlsfront run` process that can be signalled and whose exit status is
//! observed ([`Proc`]), the log lines tlsfront writes on stderr
//! ([`log_lines`]), a streaming client on its own thread ([`Streamer`]), a
//! real nginx that consumes the PROXY protocol ([`Nginx`]) and a strict
//! check of the Prometheus text format ([`check_prometheus_text`]).
//!
//! Every wait is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    run_command, tail, temp_dir, tlsfront_cmd, write_file, Captured, CapturesOutput, CmdOutput,
    Pattern, ReservedPort, RunCommand, TempDir, TlsClient, IO_TIMEOUT, READY_TIMEOUT,
};

pub use crate::process::wait_until;

// ---------------------------------------------------------------------------
// A tlsfront process that can be signalled
// ---------------------------------------------------------------------------

/// A running `tlsfront run` like [`crate::Frontend`], with its pid, so that
/// tests can send it signals and see how it exits. Killed on drop.
pub struct Proc {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    /// Holds the control socket, cache and ticket files.
    pub dir: TempDir,
    _reservation: Option<ReservedPort>,
    captured: Captured,
    status: Option<ExitStatus>,
}

impl CapturesOutput for Proc {
    fn captured(&self) -> &Captured {
        &self.captured
    }
}

impl Proc {
    /// `tlsfront run [-c config] -o k=v...` on a reserved port with its own
    /// control socket, cache and ticket files (unless `opts` sets them);
    /// waits for `tlsfront: ready`.
    pub fn start(config: Option<&Path>, opts: &[(&str, &str)]) -> Proc {
        Self::start_with_env(config, opts, &[])
    }

    /// [`Proc::start`] with these environment variables set for tlsfront.
    pub fn start_with_env(
        config: Option<&Path>,
        opts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Proc {
        Self::launch(&[], config, opts, env).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// [`start`](Self::start) under a wrapper command that ends by exec'ing
    /// its arguments (the tlsfront command line), so that the pid is still
    /// tlsfront's: `setpriv --reuid=…` to start as another user, `unshare
    /// -m … sh -c '…; exec "$0" "$@"'` to start in a mount namespace,
    /// `prlimit --nofile=…` to start with a descriptor limit.
    pub fn start_wrapped(wrapper: &[&str], config: Option<&Path>, opts: &[(&str, &str)]) -> Proc {
        Self::launch(wrapper, config, opts, &[]).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// [`start_wrapped`](Self::start_wrapped) that returns, instead of
    /// panicking, why tlsfront did not become ready (with its output).
    pub fn try_start_wrapped(
        wrapper: &[&str],
        config: Option<&Path>,
        opts: &[(&str, &str)],
    ) -> Result<Proc, String> {
        Self::launch(wrapper, config, opts, &[])
    }

    fn launch(
        wrapper: &[&str],
        config: Option<&Path>,
        opts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<Proc, String> {
        let dir = temp_dir();
        let RunCommand {
            cmd,
            port,
            socket,
            reservation,
        } = run_command(dir.path(), config, opts);
        let mut cmd = match wrapper.split_first() {
            None => cmd,
            Some((program, args)) => {
                let mut wrapped = Command::new(program);
                wrapped
                    .args(args)
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                wrapped
            }
        };
        cmd.envs(env.iter().copied());
        let cmdline = format!("{cmd:?}");
        let (child, captured, rx) = Captured::spawn(&mut cmd)?;
        let mut p = Proc {
            child,
            port,
            socket,
            dir,
            _reservation: reservation,
            captured,
            status: None,
        };
        if rx.recv_timeout(READY_TIMEOUT).is_ok() {
            return Ok(p);
        }
        let status = p.wait_exit(Duration::from_secs(2));
        thread::sleep(Duration::from_millis(100));
        Err(format!(
            "tlsfront did not become ready; exit status {status:?}\ncommand: {cmdline}\n{}",
            p.output()
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own child, which is not reaped
        // before `status` is set (we never signal after that).
        assert!(self.status.is_none(), "signal to a process that has exited");
        let r = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            r,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits at most `timeout` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// stdout and the last 8000 bytes of stderr, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- tlsfront stdout ---\n{}\n--- tlsfront stderr ---\n{}",
            self.stdout(),
            tail(&self.stderr(), 8000)
        )
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The control socket through the CLI
// ---------------------------------------------------------------------------

/// `tlsfront sysctl --socket S -w ARGS...`.
pub fn sysctl_write(socket: &Path, assignments: &[&str]) -> CmdOutput {
    let sock = socket.display().to_string();
    let mut args = vec!["sysctl", "--socket", &sock, "-w"];
    args.extend_from_slice(assignments);
    tlsfront_cmd(&args)
}

/// `tlsfront sysctl --socket S KEY...`, parsed into `key -> value`; panics
/// when the command fails.
pub fn sysctl_read(socket: &Path, keys: &[&str]) -> HashMap<String, String> {
    let sock = socket.display().to_string();
    let mut args = vec!["sysctl", "--socket", &sock];
    args.extend_from_slice(keys);
    let out = tlsfront_cmd(&args);
    assert_eq!(
        out.code(),
        Some(0),
        "tlsfront {args:?}:\n{}",
        out.describe()
    );
    crate::parse_sysctl(&out.stdout)
}

/// `tlsfront reload --socket S`.
pub fn reload_cmd(socket: &Path) -> CmdOutput {
    let sock = socket.display().to_string();
    tlsfront_cmd(&["reload", "--socket", &sock])
}

// ---------------------------------------------------------------------------
// Log lines
// ---------------------------------------------------------------------------

/// One line of tlsfront's stderr log (tracing's default format:
/// `TIME LEVEL target: message key=value ...`).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: String,
    pub target: String,
    pub message: String,
    /// `key=value` fields, with the quotes of string values removed.
    pub fields: BTreeMap<String, String>,
    pub raw: String,
}

impl LogLine {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Splits `message k=v k="v w" ...` into the message and the fields. The
/// message is what precedes the first ` key=` (keys are identifiers).
fn split_fields(rest: &str) -> (String, BTreeMap<String, String>) {
    let mut fields = BTreeMap::new();
    let bytes = rest.as_bytes();
    // Find the start of the first field: a space followed by ident '='.
    let is_key_start = |i: usize| -> Option<usize> {
        let mut j = i;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'.')
        {
            j += 1;
        }
        (j > i && j < bytes.len() && bytes[j] == b'=').then_some(j)
    };
    let mut first = None;
    for i in 0..bytes.len() {
        if (i == 0 || bytes[i - 1] == b' ') && is_key_start(i).is_some() {
            first = Some(i);
            break;
        }
    }
    let Some(mut i) = first else {
        return (rest.trim().to_string(), fields);
    };
    let message = rest[..i].trim().to_string();
    while i < bytes.len() {
        let Some(eq) = is_key_start(i) else { break };
        let key = rest[i..eq].to_string();
        let mut j = eq + 1;
        let value = if j < bytes.len() && bytes[j] == b'"' {
            // Quoted (Debug-formatted) string: up to the next unescaped quote.
            let mut v = Vec::new();
            j += 1;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' && j + 1 < bytes.len() {
                    j += 1;
                }
                v.push(bytes[j]);
                j += 1;
            }
            j += 1;
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let start = j;
            while j < bytes.len() && bytes[j] != b' ' {
                j += 1;
            }
            rest[start..j].to_string()
        };
        fields.insert(key, value);
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        i = j;
    }
    (message, fields)
}

/// The log lines of `stderr` (lines that are not `TIME LEVEL target: ...`
/// are skipped).
pub fn log_lines(stderr: &str) -> Vec<LogLine> {
    const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
    stderr
        .lines()
        .filter_map(|raw| {
            let mut words = raw.split_whitespace();
            let _time = words.next()?;
            let level = words.next()?;
            if !LEVELS.contains(&level) {
                return None;
            }
            let after_level = &raw[raw.find(level)? + level.len()..];
            let after_level = after_level.trim_start();
            let (target, rest) = after_level.split_once(": ")?;
            let (message, fields) = split_fields(rest);
            Some(LogLine {
                level: level.to_string(),
                target: target.to_string(),
                message,
                fields,
                raw: raw.to_string(),
            })
        })
        .collect()
}

/// The one access log line (`log.access = 1`) of the connection from
/// `peer`, waited for up to 5 s.
pub fn access_line_for(fe: &crate::Frontend, peer: SocketAddr) -> LogLine {
    let want = peer.to_string();
    let find = || -> Vec<LogLine> {
        log_lines(&fe.stderr())
            .into_iter()
            .filter(|l| l.target == "tlsfront::access" && l.field("client") == Some(want.as_str()))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !find().is_empty()),
        "no access line for {peer}\n{}",
        fe.output()
    );
    thread::sleep(Duration::from_millis(100));
    let lines = find();
    assert_eq!(lines.len(), 1, "access lines for {peer}: {lines:#?}");
    lines.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------
// A client that keeps streaming on its own thread
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// nginx as a PROXY protocol consumer
// ---------------------------------------------------------------------------

/// A real nginx (one process, no daemon) whose HTTP server on 127.0.0.1
/// requires the PROXY protocol and answers every request with
/// `pp=$proxy_protocol_addr:$proxy_protocol_port`. Killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    _reservation: ReservedPort,
}

impl Nginx {
    /// Starts nginx on a reserved port and waits until it accepts
    /// connections; `Err` with its error log if it does not.
    pub fn start() -> Result<Nginx, String> {
        Nginx::start_conf(|d, port| {
            format!(
                "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 \"pp=$proxy_protocol_addr:$proxy_protocol_port\\n\";
        }}
    }}
}}
"
            )
        })
    }

    /// nginx with the configuration `conf(dir, port)` makes (its own temp
    /// dir, a reserved port it must listen on at 127.0.0.1); waits until
    /// that port accepts connections.
    pub fn start_conf(conf: impl FnOnce(&str, u16) -> String) -> Result<Nginx, String> {
        let dir = temp_dir();
        let d = dir.path().display().to_string();
        let reservation = ReservedPort::new();
        let port = reservation.port;
        let conf = conf(&d, port);
        let conf_path = write_file(dir.path(), "nginx.conf", &conf);
        let nginx = crate::fleet_support::NGINX;
        crate::prereq::require(&[crate::prereq::Need::File(
            nginx,
            "nginx, from scripts/setup.sh",
        )]);
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("spawn nginx: {e}"))?;
        let mut n = Nginx {
            child,
            port,
            dir,
            _reservation: reservation,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = n.child.try_wait() {
                return Err(format!("nginx exited ({s}):\n{}", n.error_log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx did not listen within 10 s:\n{}",
                    n.error_log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// `GET /metrics` over plain HTTP/1.0; returns the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no header end in {text:?}")))?;
    Ok((head.to_string(), body.to_string()))
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

/// A Go `strconv.ParseFloat` value as the text format allows.
fn valid_value(s: &str) -> bool {
    matches!(s, "+Inf" | "-Inf" | "NaN") || (s.parse::<f64>().is_ok() && !s.contains("inf"))
}

/// Parses `{a="x",b="y"}` strictly; returns the labels in order.
fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut out = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return Err("newline in a label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated value of label {name}"))?;
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label {name}: {rest:?}"));
        }
    }
    let mut seen = HashSet::new();
    for (n, _) in &out {
        if !seen.insert(n) {
            return Err(format!("label {n} twice"));
        }
    }
    Ok(out)
}

/// One sample line of the text format, as [`check_prometheus_text`] read it.
#[derive(Debug, Clone)]
pub struct PromSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl PromSample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`check_prometheus_text`] found: the families' types and the samples.
#[derive(Debug, Clone, Default)]
pub struct PromText {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<PromSample>,
}

impl PromText {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn select(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&PromSample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// Sum of [`PromText::select`].
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).iter().map(|s| s.value).sum()
    }
}

/// Checks `text` against the Prometheus text exposition format 0.0.4, more
/// strictly than a scraper would: every line is a comment, `# HELP`,
/// `# TYPE` or a well-formed sample; every sample belongs to a family
/// declared by a `# TYPE` before it (a histogram's `_bucket`, `_sum`,
/// `_count`), the lines of a family are one group, no family is declared
/// twice, no series (name and labels) appears twice; a histogram's buckets
/// have an `le` label, are cumulative, end with `+Inf` and that bucket
/// equals `_count`. Every error found is listed.
pub fn check_prometheus_text(text: &str) -> Result<PromText, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = PromText::default();
    let mut family_done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    if !text.ends_with('\n') {
        errors.push("the text does not end with a newline".to_string());
    }
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let words: Vec<&str> = c.trim_start().splitn(3, ' ').collect();
            match words.first().copied() {
                Some("TYPE") => {
                    if words.len() != 3 {
                        errors.push(format!("line {n}: TYPE needs a name and a type: {line:?}"));
                        continue;
                    }
                    let (name, ty) = (words[1], words[2].trim());
                    if !valid_metric_name(name) {
                        errors.push(format!("line {n}: bad metric name {name:?}"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        errors.push(format!("line {n}: bad type {ty:?}"));
                    }
                    if out.types.insert(name.to_string(), ty.to_string()).is_some() {
                        errors.push(format!("line {n}: family {name} declared twice"));
                    }
                    if let Some(prev) = current.replace(name.to_string()) {
                        family_done.insert(prev);
                    }
                }
                Some("HELP") if words.len() < 2 || !valid_metric_name(words[1]) => {
                    errors.push(format!("line {n}: bad HELP line {line:?}"));
                }
                _ => {}
            }
            continue;
        }
        // name{labels} value [timestamp]
        let (name_labels, rest) = match line.find('}') {
            Some(i) if line[..i].contains('{') => (&line[..=i], line[i + 1..].trim_start()),
            _ => match line.split_once(' ') {
                Some((a, b)) => (a, b),
                None => {
                    errors.push(format!("line {n}: no value: {line:?}"));
                    continue;
                }
            },
        };
        let (name, labels) = match name_labels.find('{') {
            Some(i) => (&name_labels[..i], &name_labels[i..]),
            None => (name_labels, ""),
        };
        if !valid_metric_name(name) {
            errors.push(format!("line {n}: bad metric name {name:?}"));
        }
        let labels = if labels.is_empty() {
            Vec::new()
        } else {
            match parse_labels(labels) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("line {n}: {e}: {line:?}"));
                    continue;
                }
            }
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        if parts.is_empty() || parts.len() > 2 || !valid_value(parts[0]) {
            errors.push(format!("line {n}: bad value/timestamp {rest:?}"));
            continue;
        }
        if parts.len() == 2 && parts[1].parse::<i64>().is_err() {
            errors.push(format!("line {n}: bad timestamp {:?}", parts[1]));
        }
        let value = match parts[0] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap(),
        };
        // Which family?
        let family = match &current {
            Some(f) => {
                let ty = out.types.get(f).map(String::as_str).unwrap_or("");
                let ok = name == f
                    || (ty == "histogram"
                        && [
                            format!("{f}_bucket"),
                            format!("{f}_sum"),
                            format!("{f}_count"),
                        ]
                        .contains(&name.to_string()))
                    || (ty == "summary"
                        && [format!("{f}_sum"), format!("{f}_count")].contains(&name.to_string()));
                ok.then(|| f.clone())
            }
            None => None,
        };
        if family.is_none() {
            let why = if out.types.contains_key(name)
                || family_done.iter().any(|f| name.starts_with(f.as_str()))
            {
                "outside its family's group"
            } else {
                "without a # TYPE line before it"
            };
            errors.push(format!("line {n}: sample {name} {why}"));
        }
        let mut sorted = labels.clone();
        sorted.sort();
        if !series.insert(format!("{name}{sorted:?}")) {
            errors.push(format!("line {n}: series {name}{labels:?} appears twice"));
        }
        out.samples.push(PromSample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets ending with +Inf == _count.
    for (family, ty) in &out.types {
        if ty != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let Some(le) = s.label("le") else {
                errors.push(format!("{family}_bucket without le: {s:?}"));
                continue;
            };
            let le = match le {
                "+Inf" => f64::INFINITY,
                v => match v.parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => {
                        errors.push(format!("{family}_bucket: bad le {v:?}"));
                        continue;
                    }
                },
            };
            let mut rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(n, _)| n != "le")
                .cloned()
                .collect();
            rest.sort();
            by_series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        if by_series.is_empty() {
            errors.push(format!("histogram {family} has no buckets"));
        }
        for (labels, buckets) in &by_series {
            for w in buckets.windows(2) {
                if !(w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
                    errors.push(format!(
                        "{family}{labels}: buckets not increasing/cumulative: {buckets:?}"
                    ));
                    break;
                }
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                errors.push(format!("{family}{labels}: no +Inf bucket: {buckets:?}"));
            }
            let count: Vec<f64> = out
                .samples
                .iter()
                .filter(|s| {
                    let mut l = s.labels.clone();
                    l.sort();
                    s.name == format!("{family}_count") && format!("{l:?}") == *labels
                })
                .map(|s| s.value)
                .collect();
            if count != [last.1] {
                errors.push(format!(
                    "{family}{labels}: _count {count:?} differs from the +Inf bucket {}",
                    last.1
                ));
            }
            let has_sum = out.samples.iter().any(|s| {
                let mut l = s.labels.clone();
                l.sort();
                s.name == format!("{family}_sum") && format!("{l:?}") == *labels
            });
            if !has_sum {
                errors.push(format!("{family}{labels}: no _sum"));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod self_tests {
    use super::*;

    const GOOD: &str =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{w=\"0\"} 1\na_total{w=\"1\"} 2\n\
# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.5\nh_count 3\n";

    #[test]
    fn prometheus_check_accepts_a_valid_exposition() {
        let m = check_prometheus_text(GOOD).unwrap();
        assert_eq!(m.sum("a_total", &[]), 3.0);
        assert_eq!(m.types["h"], "histogram");
    }

    #[test]
    fn prometheus_check_finds_each_kind_of_error() {
        for (bad, why) in [
            ("a_total 1\n", "without a # TYPE"),
            ("# TYPE a counter\na 1\na 2\n", "appears twice"),
            ("# TYPE a counter\n# TYPE a counter\na 1\n", "declared twice"),
            ("# TYPE a counter\na{x=\"1} 1\n", "unterminated"),
            ("# TYPE a counter\na one\n", "bad value"),
            ("# TYPE a counter\n# TYPE b counter\nb 1\na 1\n", "outside its family"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "_count"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "cumulative"),
            ("# TYPE a counter\na 1", "newline"),
        ] {
            let errs = check_prometheus_text(bad).expect_err(bad);
            assert!(errs.iter().any(|e| e.contains(why)), "{bad:?}: {errs:?}");
        }
    }

    #[test]
    fn log_lines_split_message_and_fields() {
        let l = log_lines(
            "2026-01-01T00:00:00.000001Z  INFO tlsfront::access: access client=127.0.0.1:5 sni=\"a b\" bytes_in=3 worker=1\nnot a log line\n",
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].level, "INFO");
        assert_eq!(l[0].target, "tlsfront::access");
        assert_eq!(l[0].message, "access");
        assert_eq!(l[0].field("client"), Some("127.0.0.1:5"));
        assert_eq!(l[0].field("sni"), Some("a b"));
        assert_eq!(l[0].field("worker"), Some("1"));
    }
}
