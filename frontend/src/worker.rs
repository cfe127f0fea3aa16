//! Per-core workers: one thread per worker, pinned to its CPU, with its own
//! tokio-uring runtime (its own io_uring) and its own SO_REUSEPORT listener.
//! A connection is accepted, handshaken and proxied entirely on one worker.
//!
//! This is the only code that touches sockets; what to read and write is
//! decided by the sans-IO [`Relay`].

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::ServerConnection;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Notify;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::control::Live;
use crate::metrics::{Stats, WorkerStats};
use crate::proxy::Relay;

/// Bytes asked for per socket read. Large enough that a 16 KiB TLS record
/// arrives in one read; small enough to keep per-connection memory low.
const READ_SIZE: usize = 32 * 1024;

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Creating, configuring or binding a listener failed.
    #[error("cannot listen on {addr}: {what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: io::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot start worker {index}: {source}")]
    Spawn { index: usize, source: io::Error },
    /// A worker stopped before it was ready.
    #[error("worker {index} failed to start: {reason}")]
    Start { index: usize, reason: String },
}

/// One listening socket per worker, all bound to `addr` with SO_REUSEPORT so
/// that the kernel spreads connections over them.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, WorkerError> {
    let err = |what: &'static str| move |source| WorkerError::Listen { addr, what, source };
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err("socket"))?;
        socket
            .set_reuse_address(true)
            .map_err(err("SO_REUSEADDR"))?;
        socket.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(err("IPV6_V6ONLY"))?;
        }
        socket.bind(&addr.into()).map_err(err("bind"))?;
        socket
            .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(err("listen"))?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// The CPU each worker is pinned to (`None`: not pinned), worker n on the
/// n-th CPU this process may run on.
pub fn plan_cpus(count: usize, pin: bool) -> Vec<Option<usize>> {
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    (0..count)
        .map(|i| (!cores.is_empty()).then(|| cores[i % cores.len()].id))
        .collect()
}

/// Starts one worker thread per listener and waits until each accepts.
/// Workers read the running configuration from `live` for every new
/// connection.
pub fn start(
    listeners: Vec<std::net::TcpListener>,
    live: Arc<Live>,
    stats: Arc<Stats>,
) -> Result<Vec<JoinHandle<()>>, WorkerError> {
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let live = Arc::clone(&live);
        let stats = Arc::clone(&stats);
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tlsfront-w{index}"))
            .spawn(move || run_worker(index, listener, live, stats, ready))
            .map_err(|source| WorkerError::Spawn { index, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(reason))) => return Err(WorkerError::Start { index, reason }),
            Err(_) => {
                return Err(WorkerError::Start {
                    index: handles.len(),
                    reason: "a worker thread ended before it was ready".into(),
                })
            }
        }
    }
    Ok(handles)
}

struct Worker {
    index: usize,
    live: Arc<Live>,
    stats: Arc<Stats>,
}

impl Worker {
    fn counters(&self) -> &WorkerStats {
        &self.stats.workers[self.index].1
    }
}

fn run_worker(
    index: usize,
    listener: std::net::TcpListener,
    live: Arc<Live>,
    stats: Arc<Stats>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    crate::metrics::set_current_worker(index);
    if let Some(cpu) = stats.workers[index].0 {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            warn!(worker = index, cpu, "could not pin the worker to its CPU");
        }
    }
    let worker = Rc::new(Worker { index, live, stats });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio_uring::start(async move {
            let listener = TcpListener::from_std(listener);
            // The receiver only goes away when start-up failed elsewhere.
            let _ = ready.send((index, Ok(())));
            accept_loop(&listener, &worker).await;
            drain(&worker).await;
        })
    }));
    if outcome.is_err() {
        tracing::error!(worker = index, "worker stopped after a panic");
    }
}

async fn accept_loop(listener: &TcpListener, worker: &Rc<Worker>) {
    loop {
        let accepted = listener.accept().await;
        if worker.live.draining() {
            // SIGTERM shut the listening socket down, which ends the
            // pending accept; a connection accepted in that instant is
            // still served.
            if let Ok((stream, peer)) = accepted {
                let worker = Rc::clone(worker);
                tokio_uring::spawn(async move { serve(stream, peer, worker).await });
            }
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let counters = worker.counters();
                WorkerStats::inc(&counters.accepted);
                let max = worker.live.config().max_connections;
                if max > 0
                    && counters.active.load(std::sync::atomic::Ordering::Relaxed) >= u64::from(max)
                {
                    // Over the limit: close at once (the client sees a
                    // reset) rather than let memory grow.
                    WorkerStats::inc(&counters.rejected_over_limit);
                    debug!(worker = worker.index, %peer, "limits.max_connections reached: closed");
                    drop(stream);
                    continue;
                }
                let worker = Rc::clone(worker);
                tokio_uring::spawn(async move { serve(stream, peer, worker).await });
            }
            Err(e) => {
                warn!(worker = worker.index, "accept failed: {e}");
                // Out of descriptors or memory: retrying at once would spin;
                // connections already open keep being served meanwhile.
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc_errno::EMFILE
                            | libc_errno::ENFILE
                            | libc_errno::ENOBUFS
                            | libc_errno::ENOMEM
                    )
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// After accepting stopped: waits for this worker's connections to end, at
/// most `worker.drain_secs`; whatever is still open then is closed when the
/// runtime drops its tasks.
async fn drain(worker: &Worker) {
    let deadline = tokio::time::Instant::now() + worker.live.config().drain_secs.0;
    let active = &worker.counters().active;
    while active.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                worker = worker.index,
                open = active.load(std::sync::atomic::Ordering::Relaxed),
                "drain time over: closing the connections still open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!(worker = worker.index, "drained: no connection left");
}

/// errno values accept(2) reports for resource exhaustion.
mod libc_errno {
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
    pub const ENOMEM: i32 = 12;
}

/// Keeps the `active` gauge right however a connection ends.
struct ActiveGuard<'a>(&'a WorkerStats);

impl<'a> ActiveGuard<'a> {
    fn new(stats: &'a WorkerStats) -> Self {
        WorkerStats::inc(&stats.active);
        ActiveGuard(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        WorkerStats::dec(&self.0.active);
    }
}

async fn serve(client: TcpStream, peer: SocketAddr, worker: Rc<Worker>) {
    let stats = worker.counters();
    let _active = ActiveGuard::new(stats);
    // Handshake flights are small writes; Nagle would delay them.
    let _ = client.set_nodelay(true);
    // One snapshot for the whole connection: a reload or sysctl -w applies
    // to connections that start after it.
    let config = worker.live.config();
    let tls = match ServerConnection::new(worker.live.tls()) {
        Ok(tls) => tls,
        Err(e) => {
            warn!(worker = worker.index, %peer, "cannot create TLS session: {e}");
            return;
        }
    };
    let buffer_size = usize::try_from(config.buffer_size.0).unwrap_or(usize::MAX);
    let mut relay = Relay::new(tls, buffer_size);
    let started = std::time::Instant::now();
    let limit = config.handshake_timeout.0;
    let outcome = match tokio::time::timeout(limit, handshake(&client, &mut relay)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            // The dropped handshake's read is still queued in io_uring and
            // holds the socket open; shutdown(2) completes it, so the
            // descriptor is really closed and the client sees a FIN.
            let _ = client.shutdown(Shutdown::Both);
            Err(format!("no complete handshake within {limit:?}"))
        }
    };
    if let Err(reason) = outcome {
        WorkerStats::inc(&stats.handshake_errors);
        info!(worker = worker.index, %peer, "handshake failed: {reason}");
        return;
    }
    let resumption = relay.resumption();
    let tls13 = relay.tls().protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    stats.count_handshake(resumption, tls13, started.elapsed());
    if relay.early_data_bytes() > 0 {
        WorkerStats::inc(&stats.early_data_accepted);
    }
    debug!(
        worker = worker.index,
        %peer,
        version = ?relay.tls().protocol_version(),
        sni = relay.tls().server_name().unwrap_or("-"),
        resumed = resumption.name(),
        "handshake done"
    );

    let upstream_addr = match worker.live.upstream() {
        Ok(addr) => addr,
        Err(e) => {
            WorkerStats::inc(&stats.upstream_errors);
            warn!(worker = worker.index, %peer, "cannot start the built-in upstream: {e}");
            close_client(&client, &mut relay).await;
            return;
        }
    };
    let connect_timeout = config.connect_timeout.0;
    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(upstream_addr)).await;
    let upstream = match connect {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            WorkerStats::inc(&stats.upstream_errors);
            warn!(worker = worker.index, %peer, "upstream {upstream_addr}: {e}; closing the client");
            close_client(&client, &mut relay).await;
            return;
        }
        Err(_) => {
            WorkerStats::inc(&stats.upstream_errors);
            warn!(
                worker = worker.index,
                %peer,
                "upstream {upstream_addr}: no answer within {connect_timeout:?}; closing the client"
            );
            close_client(&client, &mut relay).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if config.proxy_protocol.0 > 0 {
        let local = local_addr(&client).unwrap_or(config.listen);
        let header = crate::proxy::proxy_protocol_header(config.proxy_protocol.0, peer, local);
        let (res, _) = upstream.write_all(header).await;
        if let Err(e) = res {
            WorkerStats::inc(&stats.upstream_errors);
            warn!(worker = worker.index, %peer, "upstream {upstream_addr}: writing the PROXY header: {e}");
            close_client(&client, &mut relay).await;
            return;
        }
    }
    let conn = Connection {
        client,
        upstream,
        relay: RefCell::new(relay),
        failed: Cell::new(false),
        closing: RefCell::new(None),
        wake_client_reader: Notify::new(),
        wake_client_writer: Notify::new(),
        wake_upstream_reader: Notify::new(),
        wake_upstream_writer: Notify::new(),
        stats,
        peer,
        worker: worker.index,
        bytes_up: Cell::new(0),
        bytes_down: Cell::new(0),
        last_activity: Cell::new(std::time::Instant::now()),
        finished: Cell::new(false),
        wake_watchdog: Notify::new(),
    };
    // The four directions run as one task: none of them is ever dropped
    // mid-operation (a dropped io_uring read could lose the bytes it read).
    let directions = async {
        tokio::join!(
            conn.client_reader(),
            conn.client_writer(),
            conn.upstream_reader(),
            conn.upstream_writer()
        );
        conn.finished.set(true);
        conn.wake_watchdog.notify_one();
    };
    tokio::join!(directions, conn.idle_watchdog(config.idle_timeout.0));
    if config.log_access {
        let relay = conn.relay.borrow();
        let tls = relay.tls();
        let alpn = tls.alpn_protocol().map(String::from_utf8_lossy);
        info!(
            target: "tlsfront::access",
            client = %peer,
            sni = tls.server_name().unwrap_or("-"),
            alpn = alpn.as_deref().unwrap_or("-"),
            version = tls_version(tls.protocol_version()),
            resumed = resumption.name(),
            bytes_in = conn.bytes_up.get(),
            bytes_out = conn.bytes_down.get(),
            ms = started.elapsed().as_millis() as u64,
            worker = worker.index,
            "access"
        );
    }
}

/// The address the client connected to (for the PROXY header).
fn local_addr(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockname, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let addr: SockaddrStorage = getsockname(stream.as_raw_fd()).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "-",
    }
}

/// Reads from the client until the handshake is complete, writing each
/// flight as rustls produces it. Any plaintext that arrived with the last
/// flight stays queued in the relay for the upstream.
async fn handshake(client: &TcpStream, relay: &mut Relay) -> Result<(), String> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut out = Vec::new();
    loop {
        relay.client_output(&mut out).map_err(|e| e.to_string())?;
        if !out.is_empty() {
            let (res, b) = client.write_all(out).await;
            out = b;
            out.clear();
            res.map_err(|e| format!("writing to the client: {e}"))?;
        }
        if !relay.is_handshaking() {
            return Ok(());
        }
        let (res, b) = client.read(buf).await;
        buf = b;
        let n = res.map_err(|e| format!("reading from the client: {e}"))?;
        if n == 0 {
            return Err("the client closed the connection during the handshake".into());
        }
        if let Err(e) = relay.receive_from_client(&buf[..n]) {
            // Send the alert rustls queued, so the client learns why.
            if relay.client_output(&mut out).is_ok() && !out.is_empty() {
                let _ = client.write_all(out).await;
            }
            return Err(e.to_string());
        }
    }
}

/// Ends a client whose upstream could not be reached: close_notify, FIN.
async fn close_client(client: &TcpStream, relay: &mut Relay) {
    relay.upstream_closed();
    let mut out = Vec::new();
    if relay.client_output(&mut out).is_ok() && !out.is_empty() {
        let _ = client.write_all(out).await;
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// A connection after its handshake: four loops, one per socket and
/// direction, sharing the relay. Each loop waits on its own `Notify`, which
/// keeps a permit when nobody waits, so a wake-up is never lost between a
/// check and the wait.
struct Connection<'a> {
    client: TcpStream,
    upstream: TcpStream,
    relay: RefCell<Relay>,
    failed: Cell<bool>,
    closing: RefCell<Option<String>>,
    wake_client_reader: Notify,
    wake_client_writer: Notify,
    wake_upstream_reader: Notify,
    wake_upstream_writer: Notify,
    stats: &'a WorkerStats,
    peer: SocketAddr,
    worker: usize,
    /// Plaintext bytes client → upstream and upstream → client.
    bytes_up: Cell<u64>,
    bytes_down: Cell<u64>,
    /// When a byte last moved in either direction.
    last_activity: Cell<std::time::Instant>,
    /// All four directions have returned.
    finished: Cell<bool>,
    wake_watchdog: Notify,
}

impl Connection<'_> {
    /// Ends the connection at once: shutting both sockets down completes
    /// any read still pending on them, so every loop sees `failed` and
    /// returns.
    fn fail(&self, why: &str) {
        if self.failed.replace(true) {
            return;
        }
        info!(worker = self.worker, peer = %self.peer, "connection closed: {why}");
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
        self.wake_client_reader.notify_one();
        self.wake_client_writer.notify_one();
        self.wake_upstream_reader.notify_one();
        self.wake_upstream_writer.notify_one();
    }

    /// Ends the connection when no byte moved either way for `limit`
    /// (`limits.idle_timeout_secs`); returns when the connection ends.
    async fn idle_watchdog(&self, limit: Duration) {
        // Checking once a second (or more often for short limits) keeps the
        // timer cost per connection negligible; the end of the connection
        // wakes it at once.
        let tick = limit
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        while !self.finished.get() && !self.failed.get() {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.wake_watchdog.notified() => {}
            }
            if !self.finished.get() && self.last_activity.get().elapsed() >= limit {
                WorkerStats::inc(&self.stats.idle_timeouts);
                self.fail(&format!("idle for {limit:?} (limits.idle_timeout_secs)"));
            }
        }
    }

    fn touch(&self) {
        self.last_activity.set(std::time::Instant::now());
    }

    async fn client_reader(&self) {
        let mut buf = vec![0u8; READ_SIZE];
        while !self.failed.get() {
            let (wants, done) = {
                let relay = self.relay.borrow();
                (relay.wants_client_read(), relay.client_done())
            };
            if done {
                return;
            }
            if !wants {
                self.wake_client_reader.notified().await;
                continue;
            }
            let (res, b) = self.client.read(buf).await;
            buf = b;
            if self.failed.get() {
                return;
            }
            self.touch();
            let outcome = match res {
                Ok(0) => self.relay.borrow_mut().client_closed(),
                Ok(n) => self.relay.borrow_mut().receive_from_client(&buf[..n]),
                Err(e) => {
                    self.fail(&format!("reading from the client: {e}"));
                    return;
                }
            };
            if let Err(e) = outcome {
                // The writer flushes the alert rustls queued, then fails
                // the connection with this reason.
                self.closing.replace(Some(e.to_string()));
                self.wake_client_writer.notify_one();
                return;
            }
            self.wake_upstream_writer.notify_one();
            self.wake_client_writer.notify_one();
        }
    }

    async fn upstream_writer(&self) {
        let mut out = Vec::new();
        while !self.failed.get() {
            let done = {
                let mut relay = self.relay.borrow_mut();
                relay.take_upstream_bytes(&mut out);
                relay.client_done()
            };
            if out.is_empty() {
                if done {
                    // Half-close: the upstream sees EOF, its replies still flow.
                    let _ = self.upstream.shutdown(Shutdown::Write);
                    return;
                }
                self.wake_upstream_writer.notified().await;
                continue;
            }
            self.wake_client_reader.notify_one();
            let n = out.len() as u64;
            let (res, b) = self.upstream.write_all(out).await;
            out = b;
            out.clear();
            self.touch();
            if let Err(e) = res {
                WorkerStats::inc(&self.stats.upstream_errors);
                self.fail(&format!("writing to the upstream: {e}"));
                return;
            }
            WorkerStats::add(&self.stats.bytes_client_to_upstream, n);
            self.bytes_up.set(self.bytes_up.get() + n);
        }
    }

    async fn upstream_reader(&self) {
        let mut buf = vec![0u8; READ_SIZE];
        while !self.failed.get() {
            let (res, b) = self.upstream.read(buf).await;
            buf = b;
            if self.failed.get() {
                return;
            }
            self.touch();
            let n = match res {
                Ok(0) => {
                    self.relay.borrow_mut().upstream_closed();
                    self.wake_client_writer.notify_one();
                    return;
                }
                Ok(n) => n,
                Err(e) => {
                    WorkerStats::inc(&self.stats.upstream_errors);
                    self.fail(&format!("reading from the upstream: {e}"));
                    return;
                }
            };
            let mut sent = 0;
            while sent < n {
                if self.failed.get() {
                    return;
                }
                let took = self.relay.borrow_mut().send_to_client(&buf[sent..n]);
                match took {
                    // The buffer towards the client is full: backpressure.
                    Ok(0) => self.wake_upstream_reader.notified().await,
                    Ok(k) => {
                        sent += k;
                        self.wake_client_writer.notify_one();
                    }
                    Err(e) => {
                        self.fail(&format!("encrypting for the client: {e}"));
                        return;
                    }
                }
            }
            WorkerStats::add(&self.stats.bytes_upstream_to_client, n as u64);
            self.bytes_down.set(self.bytes_down.get() + n as u64);
        }
    }

    async fn client_writer(&self) {
        let mut out = Vec::new();
        loop {
            let (output, upstream_done) = {
                let mut relay = self.relay.borrow_mut();
                (relay.client_output(&mut out), relay.upstream_done())
            };
            if let Err(e) = output {
                self.fail(&format!("TLS output: {e}"));
                return;
            }
            if out.is_empty() {
                if self.failed.get() {
                    return;
                }
                if let Some(why) = self.closing.borrow_mut().take() {
                    self.fail(&why);
                    return;
                }
                if upstream_done {
                    // close_notify has been written; now the TCP FIN.
                    let _ = self.client.shutdown(Shutdown::Write);
                    return;
                }
                self.wake_client_writer.notified().await;
                continue;
            }
            let (res, b) = self.client.write_all(out).await;
            out = b;
            out.clear();
            if let Err(e) = res {
                self.fail(&format!("writing to the client: {e}"));
                return;
            }
            self.touch();
            self.wake_upstream_reader.notify_one();
        }
    }
}
