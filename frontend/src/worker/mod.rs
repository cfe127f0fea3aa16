//! Per-core workers: one thread per worker, pinned to its CPU, each the
//! driver of its own io_uring ([`crate::uring`]) and its own SO_REUSEPORT
//! listener for each `net.listen` address (one multishot accept each). A
//! connection is accepted, handshaken and proxied entirely on one worker.
//!
//! The loop: one `io_uring_enter` submits every request the previous turn
//! produced and waits for completions (or the nearest deadline); each
//! completion is fed to its connection's sans-IO state machine
//! ([`Connection`]); the deadlines that passed are handed to their
//! connections; then every connection that was touched is asked what it
//! wants (sends, FINs, receives, an upstream connect) and that becomes the
//! next turn's requests. Accepting is one multishot request; receives pick
//! a buffer from the provided-buffer ring only when data arrives; timers
//! are one deadline heap per worker, with at most a few entries per
//! connection and no periodic task.
//!
//! Beside the loop: `listeners` (the sockets and CPUs, made before the
//! workers start because steering needs them too), `upstream_connect` (the
//! next upstream server of a connection and its connect) and `logs` (the
//! access line and the rate-limited failure lines).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::hello_gate::WorkerGate;
use crate::live::Live;
use crate::metrics::{Stats, WorkerStats};
use crate::relay::{Connection, End, Event, Failure, Side};
use crate::session_cache::remote::Answer;
use crate::upstream_pool::Pool;
use crate::uring::{BufPool, Completion, Driver, UringError};

mod accept;
mod answers;
mod listeners;
mod logs;
mod op_tag;
mod upstream_connect;

pub(crate) use listeners::{bind_listeners, plan_cpus};
use logs::FailureLog;
use op_tag::{tag, untag, Op};
use upstream_connect::{connect_next, Attempt};

/// Submission queue entries per worker ring (the completion queue is four
/// times larger; a full submission queue is submitted early, never lost).
const RING_ENTRIES: u32 = 1024;

/// Free send buffers a worker keeps for reuse.
const POOL_KEEP: usize = 256;

/// The longest a worker sleeps with nothing to do (a safety net: the drain
/// signal wakes it through its listener anyway).
const IDLE_WAKE: Duration = Duration::from_secs(5);

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
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

/// Sends the FIN on `fd` (shutdown of its writing side) — unless the
/// connection has just finished, when the close that follows sends it:
/// both directions reached their end, every byte was read, so `close`
/// ends with a FIN, not a reset, and one system call is saved.
///
/// A plain `shutdown(2)` rather than an io_uring one: io_uring always
/// runs a shutdown on an io-wq thread, a thread hop per FIN that cost a
/// worker 11 % of its CPU per resumed connection in the profile of
/// bench/RESULTS.md ("Where a resumed connection's CPU goes"); on a TCP
/// socket the call does not block. A failure (the peer reset meanwhile)
/// is the next read's or send's to report.
fn send_fin(fd: RawFd, finished: bool) {
    if finished {
        return;
    }
    if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write) {
        debug!(fd, "shutdown(SHUT_WR): {e}");
    }
}

/// Starts one worker thread per entry of `listeners` (worker n's sockets,
/// one per `net.listen` address) and waits until each accepts on all of
/// them. Workers read the running configuration from `live` for every new
/// connection.
pub fn start(
    listeners: Vec<Vec<std::net::TcpListener>>,
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

/// A connection and its sockets, as the driver sees it.
struct Conn {
    machine: Connection,
    client: RawFd,
    upstream: Option<RawFd>,
    peer: SocketAddr,
    client_recv: bool,
    upstream_recv: bool,
    connecting: bool,
    /// The deadline queued in the heap for this connection, if any.
    timer: Option<Instant>,
    touched: bool,
    log_access: bool,
    /// Plaintext bytes (up, down) already added to the worker's counters.
    counted: (u64, u64),
    /// The upstream servers this connection chooses from, once it asked.
    pool: Option<Arc<Pool>>,
    /// The server of `pool` being connected to, and those tried (a bit each).
    server: usize,
    tried: u64,
    /// Connect attempts started (their parity tells the two connect ops
    /// apart), and the socket of one that timed out, closed once its
    /// cancelled connect has completed.
    attempts: u32,
    abandoned: Option<(RawFd, u32)>,
    /// Operations on this connection's descriptors not completed yet. The
    /// descriptors are closed only when this is zero: the threads of a
    /// process share one descriptor table, and an operation the kernel
    /// runs later (on an io-wq thread) must never find its descriptor
    /// number reused by another worker's socket.
    ops: u32,
    /// Ended: waiting for `ops` to reach zero before closing.
    closing: bool,
}

impl Conn {
    /// The client's address: the PROXY header's, if the connection came
    /// with one, else the socket's peer.
    fn client_addr(&self) -> SocketAddr {
        self.machine.proxied_client().unwrap_or(self.peer)
    }

    /// The upstream server of the last connect started (`IP:PORT` or
    /// `unix:/path`), for the failure line; `None` before any.
    fn upstream_name(&self) -> Option<String> {
        let pool = self.pool.as_ref().filter(|_| self.attempts > 0)?;
        Some(pool.server(self.server).0.to_string())
    }
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct Worker {
    index: usize,
    live: Arc<Live>,
    stats: Arc<Stats>,
    /// One per `net.listen` address; the accept tag's slot is the index.
    listeners: Vec<std::net::TcpListener>,
    driver: Driver,
    pool: BufPool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    active: usize,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    touched: Vec<u32>,
    /// Connections whose receive found the buffer ring empty: armed again
    /// next turn, once buffers went back to the kernel.
    starved: Vec<(u32, u32, Side)>,
    /// Whether each listener's multishot accept is armed.
    accepting: Vec<bool>,
    /// When to arm again the accepts that stopped on an error.
    accept_again_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    failures: FailureLog,
    /// Reads ClientHellos before rustls (remote lookups, fewer tickets).
    gate: Option<Arc<WorkerGate>>,
    /// Answers of the remote tier, drained from the mailbox.
    answers: Vec<Answer>,
}

fn run_worker(
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    live: Arc<Live>,
    stats: Arc<Stats>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    crate::metrics::set_current_worker(index);
    if let Some(cpu) = stats.workers[index].cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            warn!(worker = index, cpu, "could not pin the worker to its CPU");
        }
    }
    let config = live.config();
    let rx_count = u16::try_from(config.rx_buffers).unwrap_or(u16::MAX);
    let rx_size = usize::try_from(config.rx_buffer_size.0).unwrap_or(16 * 1024);
    let driver = match Driver::new(RING_ENTRIES, rx_count, rx_size) {
        Ok(driver) => driver,
        Err(e) => {
            let _ = ready.send((index, Err(e.to_string())));
            return;
        }
    };
    debug!(
        worker = index,
        ring = driver.mode().name(),
        "io_uring ready"
    );
    let now = Instant::now();
    let mut worker = Worker {
        index,
        live,
        stats,
        accepting: vec![false; listeners.len()],
        listeners,
        driver,
        pool: BufPool::new(POOL_KEEP),
        slots: Vec::new(),
        free: Vec::new(),
        active: 0,
        timers: BinaryHeap::new(),
        touched: Vec::new(),
        starved: Vec::new(),
        accept_again_at: None,
        drain_deadline: None,
        failures: FailureLog::new(now),
        gate: None,
        answers: Vec::new(),
    };
    worker.gate = WorkerGate::new(&worker.live, index);
    if let Err(e) = worker.arm_answers(None) {
        let _ = ready.send((index, Err(e.to_string())));
        return;
    }
    for listener in 0..worker.listeners.len() {
        if let Err(e) = worker.arm_accept(listener) {
            let _ = ready.send((index, Err(e.to_string())));
            return;
        }
    }
    // The receiver only goes away when start-up failed elsewhere.
    let _ = ready.send((index, Ok(())));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(worker = index, "worker stopped: {e}"),
        Err(_) => tracing::error!(worker = index, "worker stopped after a panic"),
    }
}

impl Worker {
    fn counters(&self) -> &WorkerStats {
        &self.stats.workers[self.index].counters
    }

    fn run(&mut self) -> Result<(), UringError> {
        let mut completions: Vec<Completion> = Vec::with_capacity(256);
        loop {
            let timeout = self
                .next_wake()
                .map(|at| at.saturating_duration_since(Instant::now()));
            self.driver.submit(1, timeout)?;
            self.driver.complete(&mut completions);
            let now = Instant::now();
            for completion in completions.drain(..) {
                self.dispatch(now, completion)?;
            }
            self.expire(now);
            for (slot, generation, side) in std::mem::take(&mut self.starved) {
                if let Some(conn) = self.conn_mut(slot, generation) {
                    match side {
                        Side::Client => conn.client_recv = false,
                        Side::Upstream => conn.upstream_recv = false,
                    }
                    self.touch(slot);
                }
            }
            while let Some(slot) = self.touched.pop() {
                self.flush(slot, now)?;
            }
            self.publish_counters();
            if self.live.draining() && self.drain(now)? {
                // Submit the last closes before the thread ends.
                self.driver.submit(0, None)?;
                return Ok(());
            }
            if let Some(at) = self.accept_again_at {
                if now >= at && !self.live.draining() {
                    self.accept_again_at = None;
                    for listener in 0..self.listeners.len() {
                        if !self.accepting[listener] {
                            self.arm_accept(listener)?;
                        }
                    }
                }
            }
        }
    }

    /// When the loop must wake even if nothing completes.
    fn next_wake(&mut self) -> Option<Instant> {
        self.settle_timers();
        let mut wake = self.timers.peek().map(|Reverse((at, _, _))| *at);
        for extra in [self.accept_again_at, self.drain_deadline] {
            wake = match (wake, extra) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if !self.starved.is_empty() {
            return Some(Instant::now());
        }
        // A safety net for a drain signal that produced no completion: a
        // worker with nothing to do wakes every few seconds, not once per
        // connection.
        let cap = Instant::now() + IDLE_WAKE;
        Some(wake.map_or(cap, |w| w.min(cap)))
    }

    /// Drops the heap entries at the top that no longer matter (their
    /// connection ended, or its deadline moved later: a completed
    /// handshake, traffic since), queueing the connection's real deadline
    /// instead — before the loop sleeps, so a moved deadline costs no
    /// wake-up.
    fn settle_timers(&mut self) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            let current = self
                .slots
                .get_mut(slot as usize)
                .filter(|s| s.generation & 0x00ff_ffff == generation)
                .and_then(|s| s.conn.as_mut())
                .filter(|c| !c.closing && c.timer == Some(at));
            let Some(conn) = current else {
                self.timers.pop();
                continue;
            };
            match conn.machine.poll_timeout() {
                Some(deadline) if deadline > at => {
                    self.timers.pop();
                    conn.timer = Some(deadline);
                    self.timers.push(Reverse((deadline, slot, generation)));
                }
                Some(_) => return,
                None => {
                    self.timers.pop();
                    conn.timer = None;
                }
            }
        }
    }

    fn conn_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        let s = self.slots.get_mut(slot as usize)?;
        if s.generation & 0x00ff_ffff != generation {
            return None;
        }
        s.conn.as_mut()
    }

    fn touch(&mut self, slot: u32) {
        if let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        {
            if !conn.touched {
                conn.touched = true;
                self.touched.push(slot);
            }
        }
    }

    fn dispatch(&mut self, now: Instant, c: Completion) -> Result<(), UringError> {
        let Some(op) = Op::from_tag(c.tag) else {
            return Ok(());
        };
        if op == Op::Accept {
            return self.accepted(now, c);
        }
        if op == Op::Answers {
            return self.answered(now, c);
        }
        let (slot, generation) = untag(c.tag);
        let at = Attempt {
            slot,
            generation,
            now,
        };
        let Completion {
            result, buf, rx, ..
        } = c;
        let Worker {
            slots,
            driver,
            pool,
            starved,
            live,
            stats,
            index,
            ..
        } = self;
        let conn = slots
            .get_mut(slot as usize)
            .filter(|s| s.generation & 0x00ff_ffff == generation)
            .and_then(|s| s.conn.as_mut());
        let conn = match conn {
            Some(conn) if op != Op::Housekeeping => conn,
            _ => {
                // Nothing to account (a cancellation or close), or not ours.
                if let Some(rx) = rx {
                    driver.rx.recycle(rx);
                }
                if let Some(buf) = buf {
                    pool.give(buf);
                }
                return Ok(());
            }
        };
        conn.ops = conn.ops.saturating_sub(1);
        if conn.closing {
            // The connection ended; this is one of its cancelled or late
            // operations.
            if let Some(rx) = rx {
                driver.rx.recycle(rx);
            }
            if let Some(buf) = buf {
                pool.give(buf);
            }
            if conn.ops == 0 {
                return self.finish_close(slot);
            }
            return Ok(());
        }
        let error = || io::Error::from_raw_os_error(-result);
        match op {
            Op::ClientRecv | Op::UpstreamRecv => {
                let side = if op == Op::ClientRecv {
                    conn.client_recv = false;
                    Side::Client
                } else {
                    conn.upstream_recv = false;
                    Side::Upstream
                };
                match (result, rx) {
                    (n, Some(rx)) if n > 0 => {
                        let bytes = driver.rx.bytes(&rx);
                        match side {
                            Side::Client => conn.machine.client_data(now, bytes, pool),
                            Side::Upstream => conn.machine.upstream_data(now, bytes, pool),
                        }
                        driver.rx.recycle(rx);
                    }
                    (0, rx) => {
                        if let Some(rx) = rx {
                            driver.rx.recycle(rx);
                        }
                        match side {
                            Side::Client => conn.machine.client_eof(now),
                            Side::Upstream => conn.machine.upstream_eof(now, pool),
                        }
                    }
                    (n, rx) => {
                        if let Some(rx) = rx {
                            driver.rx.recycle(rx);
                        }
                        if -n == libc::ENOBUFS {
                            // Every receive buffer was taken this turn:
                            // the data waits in the socket; try again
                            // next turn, when the buffers are back.
                            match side {
                                Side::Client => conn.client_recv = true,
                                Side::Upstream => conn.upstream_recv = true,
                            }
                            starved.push((slot, generation, side));
                        } else if n != -libc::ECANCELED {
                            conn.machine.socket_error(side, "reading from", error());
                        }
                    }
                }
            }
            Op::ClientSend | Op::UpstreamSend => {
                let side = if op == Op::ClientSend {
                    Side::Client
                } else {
                    Side::Upstream
                };
                let outcome = if result >= 0 {
                    Ok(result as usize)
                } else {
                    Err(error())
                };
                if let Some(buf) = buf {
                    conn.machine.sent(now, side, buf, outcome, pool);
                }
            }
            Op::Connect | Op::ConnectRetry => {
                let current = (op == Op::ConnectRetry) == (conn.attempts % 2 == 0);
                if !current {
                    // The cancelled connect of an attempt that timed out.
                    if let Some((fd, _)) = conn.abandoned.take() {
                        driver.close(fd, tag(0, 0, Op::Housekeeping))?;
                    }
                } else {
                    conn.connecting = false;
                    if result == 0 {
                        conn.machine.upstream_connected(now, Ok(()), pool);
                    } else if result != -libc::ECANCELED {
                        // Refused, unreachable, reset: this server is down;
                        // the next one gets this client.
                        let e = error();
                        let down = live.config().down_time.0;
                        if let Some(p) = &conn.pool {
                            p.mark_down(conn.server, now, down);
                        }
                        if let Some(fd) = conn.upstream.take() {
                            driver.close(fd, tag(0, 0, Op::Housekeeping))?;
                        }
                        let counters = &stats.workers[*index].counters;
                        connect_next(conn, driver, live, at, pool, counters, Some(e))?;
                    }
                }
            }
            Op::Housekeeping | Op::Accept | Op::Answers | Op::Lookup => {}
        }
        self.touch(slot);
        Ok(())
    }

    /// Hands the deadlines that passed to their connections.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Worker { slots, pool, .. } = self;
            let Some(conn) = slots
                .get_mut(slot as usize)
                .filter(|s| s.generation & 0x00ff_ffff == generation)
                .and_then(|s| s.conn.as_mut())
            else {
                continue;
            };
            if conn.timer != Some(at) || conn.closing {
                // An earlier deadline replaced this one, or it ended.
                continue;
            }
            conn.timer = None;
            conn.machine.handle_timeout(now, pool);
            self.touch(slot);
        }
    }

    /// Turns what a connection wants into requests.
    fn flush(&mut self, slot: u32, now: Instant) -> Result<(), UringError> {
        let generation = self.slots[slot as usize].generation & 0x00ff_ffff;
        let at = Attempt {
            slot,
            generation,
            now,
        };
        let Worker {
            slots,
            driver,
            live,
            stats,
            index,
            ..
        } = self;
        let Some(conn) = slots[slot as usize].conn.as_mut() else {
            return Ok(());
        };
        conn.touched = false;
        if conn.closing {
            return Ok(());
        }
        while let Some(event) = conn.machine.poll_event() {
            match event {
                Event::HandshakeDone => {
                    let counters = &stats.workers[*index].counters;
                    let tls13 =
                        conn.machine.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
                    counters.count_handshake(
                        conn.machine.resumption(),
                        tls13,
                        conn.machine.handshake_took().unwrap_or_default(),
                    );
                    if conn.machine.early_data_bytes() > 0 {
                        WorkerStats::inc(&counters.early_data_accepted);
                    }
                    debug!(
                        worker = *index,
                        peer = %conn.client_addr(),
                        version = ?conn.machine.protocol_version(),
                        sni = conn.machine.server_name().unwrap_or("-"),
                        resumed = conn.machine.resumption().name(),
                        "handshake done"
                    );
                }
                Event::Lookup => {
                    let remote = live.cache().and_then(|c| c.remote());
                    let asked = match (remote, conn.machine.lookup()) {
                        (Some(remote), Some(lookup)) => remote.lookup(
                            *index,
                            tag(slot, generation, Op::Lookup),
                            lookup.key.clone(),
                            lookup.take,
                        ),
                        _ => false,
                    };
                    if !asked {
                        conn.machine.lookup_done(now, None, &mut self.pool);
                    }
                }
                Event::ConnectUpstream => {
                    let counters = &stats.workers[*index].counters;
                    connect_next(conn, driver, live, at, &mut self.pool, counters, None)?;
                }
                Event::ConnectTimedOut => {
                    let config = live.config();
                    if let Some(p) = &conn.pool {
                        p.mark_down(conn.server, now, config.down_time.0);
                    }
                    // Its connect is cancelled; the socket closes when the
                    // cancellation completes (at most one such at a time).
                    let retry = conn.abandoned.is_none();
                    if let (Some(fd), true) = (conn.upstream, retry) {
                        conn.upstream = None;
                        conn.abandoned = Some((fd, conn.attempts));
                        conn.connecting = false;
                        driver.cancel(fd, tag(0, 0, Op::Housekeeping))?;
                    }
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", config.connect_timeout.0),
                    );
                    if retry {
                        let counters = &stats.workers[*index].counters;
                        connect_next(conn, driver, live, at, &mut self.pool, counters, Some(e))?;
                    } else {
                        conn.machine.upstream_connected(now, Err(e), &mut self.pool);
                    }
                }
            }
        }
        if conn.machine.end().is_none() {
            if let Some(buf) = conn.machine.poll_transmit(Side::Client) {
                conn.ops += 1;
                driver.send(conn.client, buf, tag(slot, generation, Op::ClientSend))?;
            }
            if let Some(fd) = conn.upstream {
                if let Some(buf) = conn.machine.poll_transmit(Side::Upstream) {
                    conn.ops += 1;
                    driver.send(fd, buf, tag(slot, generation, Op::UpstreamSend))?;
                }
                if conn.machine.poll_shutdown(Side::Upstream) {
                    send_fin(fd, conn.machine.end().is_some());
                }
            }
            if conn.machine.poll_shutdown(Side::Client) {
                send_fin(conn.client, conn.machine.end().is_some());
            }
            if !conn.client_recv && conn.machine.wants_read(Side::Client) {
                conn.client_recv = true;
                conn.ops += 1;
                driver.recv(conn.client, tag(slot, generation, Op::ClientRecv))?;
            }
            if let Some(fd) = conn.upstream {
                if !conn.upstream_recv
                    && !conn.connecting
                    && conn.machine.wants_read(Side::Upstream)
                {
                    conn.upstream_recv = true;
                    conn.ops += 1;
                    driver.recv(fd, tag(slot, generation, Op::UpstreamRecv))?;
                }
            }
        }
        let (up, down) = conn.machine.bytes();
        let counters = &stats.workers[*index].counters;
        WorkerStats::add(&counters.bytes_client_to_upstream, up - conn.counted.0);
        WorkerStats::add(&counters.bytes_upstream_to_client, down - conn.counted.1);
        conn.counted = (up, down);
        if conn.machine.end().is_some() {
            return self.close(slot);
        }
        if let Some(deadline) = conn.machine.poll_timeout() {
            if conn.timer.is_none_or(|queued| deadline < queued) {
                conn.timer = Some(deadline);
                self.timers.push(Reverse((deadline, slot, generation)));
            }
        }
        Ok(())
    }

    /// Ends a connection: counts and logs how, cancels what is pending on
    /// its sockets; they are closed (and the slot freed) once every
    /// operation on them has completed ([`Worker::finish_close`]).
    fn close(&mut self, slot: u32) -> Result<(), UringError> {
        let Some(mut conn) = self.slots[slot as usize].conn.take() else {
            return Ok(());
        };
        if conn.closing {
            self.slots[slot as usize].conn = Some(conn);
            return Ok(());
        }
        self.active -= 1;
        WorkerStats::dec(&self.counters().active);
        let end = conn.machine.end().cloned().unwrap_or(End::Finished);
        debug!(worker = self.index, peer = %conn.client_addr(), ?end, "closed");
        if let End::Failed(failure, reason) = &end {
            let counters = &self.stats.workers[self.index].counters;
            match failure {
                Failure::Handshake | Failure::HandshakeTimeout => {
                    WorkerStats::inc(&counters.handshake_errors)
                }
                Failure::Idle => WorkerStats::inc(&counters.idle_timeouts),
                Failure::Upstream => WorkerStats::inc(&counters.upstream_errors),
                Failure::ProxyHeader => WorkerStats::inc(&counters.proxy_invalid),
                Failure::Client | Failure::Drain => {}
            }
            let (index, peer) = (self.index, conn.client_addr());
            self.failures
                .log(index, *failure, peer, conn.upstream_name(), reason);
        }
        if conn.log_access {
            logs::access(self.index, &conn);
        }
        conn.machine.release(&mut self.pool);
        conn.closing = true;
        let pending = conn.ops;
        let (client, upstream) = (conn.client, conn.upstream);
        self.slots[slot as usize].conn = Some(conn);
        if pending == 0 {
            return self.finish_close(slot);
        }
        // Pending receives and connects complete at once with -ECANCELED
        // (a connect that timed out leaves no socket in SYN-SENT behind).
        self.driver.cancel(client, tag(0, 0, Op::Housekeeping))?;
        if let Some(fd) = upstream {
            self.driver.cancel(fd, tag(0, 0, Op::Housekeeping))?;
        }
        Ok(())
    }

    /// Closes the descriptors of an ended connection with no operation
    /// left, and frees its slot.
    fn finish_close(&mut self, slot: u32) -> Result<(), UringError> {
        let s = &mut self.slots[slot as usize];
        let Some(conn) = s.conn.take() else {
            return Ok(());
        };
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.driver
            .close(conn.client, tag(0, 0, Op::Housekeeping))?;
        if let Some(fd) = conn.upstream {
            self.driver.close(fd, tag(0, 0, Op::Housekeeping))?;
        }
        if let Some((fd, _)) = conn.abandoned {
            self.driver.close(fd, tag(0, 0, Op::Housekeeping))?;
        }
        Ok(())
    }

    /// While draining: true once this worker may stop (no connection
    /// left, or the drain time is over and the rest were closed).
    fn drain(&mut self, now: Instant) -> Result<bool, UringError> {
        let deadline = *self
            .drain_deadline
            .get_or_insert_with(|| now + self.live.config().drain_timeout.0);
        if self.active == 0 {
            info!(worker = self.index, "drained: no connection left");
            return Ok(true);
        }
        if now < deadline {
            return Ok(false);
        }
        warn!(
            worker = self.index,
            open = self.active,
            "drain time over: closing the connections still open"
        );
        for slot in 0..self.slots.len() as u32 {
            if let Some(conn) = self.slots[slot as usize]
                .conn
                .as_mut()
                .filter(|c| !c.closing)
            {
                conn.machine.abort(
                    Failure::Drain,
                    "drain time over (worker.drain_timeout)".into(),
                );
                self.close(slot)?;
            }
        }
        Ok(true)
    }

    fn publish_counters(&self) {
        let c = self.counters();
        let loop_counters = self.driver.counters;
        c.uring_enters
            .store(loop_counters.enters, std::sync::atomic::Ordering::Relaxed);
        c.uring_requests
            .store(loop_counters.requests, std::sync::atomic::Ordering::Relaxed);
    }
}

fn sockaddr(addr: nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}
