//! The one thread of a tlsfront process that talks to Redis.
//!
//! It runs a single-threaded tokio runtime with one multiplexed connection
//! (or the cluster client's connections): every lookup and write from every
//! worker is pipelined on it, so a Redis 2 ms away costs a handshake 2 ms of
//! waiting, never a worker 2 ms of stalling. Commands enter the pipeline in
//! the order they were handed over (tasks of a current-thread runtime first
//! run in the order they were spawned), so a session's `SET` from this
//! process precedes any later `GETDEL` of it from this process.
//!
//! Answers to workers go through their [`Mailbox`]: a lock-free queue and an
//! eventfd that the worker's io_uring has a read armed on; the eventfd is
//! written only when the worker has not been woken since it last drained
//! the queue.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{
    inc, Fetched, Rejected, RemoteError, RemoteSettings, Shared, CLUSTER_SCHEME, MAX_BACKOFF,
    MIN_BACKOFF,
};

/// Longest wait for a connection to Redis (the lookups waiting for it are
/// bounded by their own budget on the worker's side).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the answer to a write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One answer for a worker.
#[derive(Debug)]
pub struct Answer {
    /// The worker's token given with the lookup.
    pub token: u64,
    /// What Redis said.
    pub fetched: Fetched,
}

/// Where one worker's answers arrive.
#[derive(Debug)]
pub struct Mailbox {
    answers: SegQueue<Answer>,
    wake: EventFd,
    /// The eventfd was written since the worker last drained: no need to
    /// write it again.
    signalled: AtomicBool,
}

impl Mailbox {
    pub(super) fn new() -> Result<Mailbox, RemoteError> {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| RemoteError::Os {
                what: "eventfd",
                source: e.into(),
            })?;
        Ok(Mailbox {
            answers: SegQueue::new(),
            wake,
            signalled: AtomicBool::new(false),
        })
    }

    /// The eventfd to read (8 bytes) to wait for answers.
    pub fn fd(&self) -> RawFd {
        self.wake.as_fd().as_raw_fd()
    }

    /// Moves every answer that arrived into `out`. Call after the eventfd
    /// read completed (and before arming the next one).
    pub fn drain(&self, out: &mut Vec<Answer>) {
        // Cleared before popping: an answer pushed after the last pop finds
        // the flag clear and writes the eventfd again.
        self.signalled.store(false, Ordering::SeqCst);
        while let Some(a) = self.answers.pop() {
            out.push(a);
        }
    }

    fn post(&self, answer: Answer) {
        self.answers.push(answer);
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // EAGAIN only if the counter is at its maximum: readable anyway.
            let _ = self.wake.write(1);
        }
    }
}

/// How the asker wants its answer.
pub(super) enum Reply {
    /// In the worker's mailbox.
    Mailbox,
    /// On a channel (a caller that blocks: the unit tests).
    #[cfg(test)]
    Channel(std::sync::mpsc::Sender<Fetched>),
}

/// What a worker hands the thread.
pub(super) enum Job {
    Lookup {
        worker: usize,
        token: u64,
        key: String,
        session_id: Vec<u8>,
        take: bool,
        deadline: Instant,
        reply: Reply,
    },
    Set {
        key: String,
        value: Vec<u8>,
        ttl: u64,
        worker: usize,
    },
    Ping {
        deadline: Instant,
        reply: std::sync::mpsc::Sender<Result<(), RemoteError>>,
    },
}

impl Job {
    /// The worker whose counters the job's outcome goes to.
    fn worker(&self) -> usize {
        match self {
            Job::Lookup { worker, .. } | Job::Set { worker, .. } => *worker,
            // A ping comes from start-up or a tool: not a worker.
            Job::Ping { .. } => usize::MAX,
        }
    }
}

/// Where the store is.
pub(super) enum Target {
    // Both boxed: built once per process, and the two clients differ in size.
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    pub(super) fn new(settings: &RemoteSettings, budget: Duration) -> Result<Target, RemoteError> {
        let certs = match &settings.ca {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|source| RemoteError::CaRead {
                    path: path.clone(),
                    source,
                })?),
            }),
            None => None,
        };
        if settings.url.starts_with(CLUSTER_SCHEME) {
            let nodes = super::cluster_nodes(&settings.url).map_err(RemoteError::Url)?;
            let mut builder = redis::cluster::ClusterClient::builder(nodes)
                .retries(0)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(budget.max(WRITE_TIMEOUT));
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|source| RemoteError::Client {
                url: super::redact(&settings.url),
                source,
            })?;
            return Ok(Target::Cluster(Box::new(client)));
        }
        let info = super::connection_info(&settings.url).map_err(RemoteError::Url)?;
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(info, certs),
            None => redis::Client::open(info),
        }
        .map_err(|source| RemoteError::Client {
            url: super::redact(&settings.url),
            source,
        })?;
        Ok(Target::Single(Box::new(client)))
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    // Each command is bounded by its own deadline instead.
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| Conn::Cluster(Box::new(c))),
        }
    }
}

/// A connection every task may clone: commands share its pipeline.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(Box<redis::cluster_async::ClusterConnection>),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(&mut **c).await,
        }
    }
}

/// Starts the thread; the sender is how jobs reach it.
pub(super) fn spawn(
    target: Target,
    shared: Arc<Shared>,
) -> Result<UnboundedSender<Job>, RemoteError> {
    let os = |what| move |source| RemoteError::Os { what, source };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(os("starting its runtime"))?;
    let (tx, rx) = unbounded_channel();
    std::thread::Builder::new()
        .name("tlsfront-remote".into())
        .spawn(move || runtime.block_on(run(target, shared, rx)))
        .map_err(os("starting its thread"))?;
    Ok(tx)
}

/// The state of the connection.
enum Link {
    Up { conn: Conn, generation: u64 },
    Connecting,
    Down { retry_at: Instant },
}

/// What tasks tell the loop.
enum Event {
    Connected(redis::RedisResult<Conn>),
    /// A command on connection `generation` failed: the connection is gone.
    Broken(u64),
}

struct Loop {
    target: Arc<Target>,
    shared: Arc<Shared>,
    events: UnboundedSender<Event>,
    link: Link,
    generation: u64,
    backoff: Duration,
    /// Jobs that arrived while connecting.
    waiting: Vec<Job>,
}

async fn run(target: Target, shared: Arc<Shared>, mut jobs: UnboundedReceiver<Job>) {
    let (events, mut events_rx) = unbounded_channel();
    let mut lp = Loop {
        target: Arc::new(target),
        shared,
        events,
        link: Link::Down {
            retry_at: Instant::now(),
        },
        generation: 0,
        backoff: MIN_BACKOFF,
        waiting: Vec::new(),
    };
    lp.connect();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => lp.handle(job),
                // The store is gone.
                None => return,
            },
            Some(event) = events_rx.recv() => lp.event(event),
        }
    }
}

impl Loop {
    fn connect(&mut self) {
        self.link = Link::Connecting;
        let target = Arc::clone(&self.target);
        let events = self.events.clone();
        tokio::spawn(async move {
            let _ = events.send(Event::Connected(target.connect().await));
        });
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Connected(Ok(conn)) => {
                self.generation += 1;
                self.backoff = MIN_BACKOFF;
                self.link = Link::Up {
                    conn,
                    generation: self.generation,
                };
                for job in std::mem::take(&mut self.waiting) {
                    self.handle(job);
                }
            }
            Event::Connected(Err(e)) => {
                tracing::debug!(
                    "cache.remote: connecting failed: {e}; retrying in {:?}",
                    self.backoff
                );
                // Counted for the worker whose job waited for this connect
                // (the start-up connect has none: the row of other threads).
                let last = self.shared.counters.len() - 1;
                let worker = self.waiting.first().map_or(last, |j| j.worker().min(last));
                inc(&self.shared.counters[worker].errors);
                self.went_down();
            }
            Event::Broken(generation) => {
                if matches!(self.link, Link::Up { generation: g, .. } if g == generation) {
                    self.went_down();
                }
            }
        }
    }

    fn went_down(&mut self) {
        self.link = Link::Down {
            retry_at: Instant::now() + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        for job in std::mem::take(&mut self.waiting) {
            self.unavailable(job);
        }
    }

    fn handle(&mut self, job: Job) {
        match &self.link {
            Link::Up { conn, generation } => {
                let (conn, generation) = (conn.clone(), *generation);
                self.execute(conn, generation, job);
            }
            Link::Connecting => self.waiting.push(job),
            Link::Down { retry_at } => {
                if Instant::now() >= *retry_at {
                    self.connect();
                    self.waiting.push(job);
                } else {
                    self.unavailable(job);
                }
            }
        }
    }

    /// Answers `job` without Redis: it is down.
    fn unavailable(&self, job: Job) {
        let shared = &self.shared;
        match job {
            Job::Lookup {
                worker,
                token,
                reply,
                ..
            } => {
                inc(&shared.counters[worker].skipped);
                answer(shared, worker, token, reply, Fetched::Unavailable);
            }
            Job::Set { worker, .. } => {
                shared.writes.fetch_sub(1, Ordering::AcqRel);
                inc(&shared.counters[worker].put_dropped);
            }
            Job::Ping { reply, .. } => {
                let _ = reply.send(Err(RemoteError::Redis(
                    "Redis is not reachable".to_string(),
                )));
            }
        }
    }

    fn execute(&self, mut conn: Conn, generation: u64, job: Job) {
        let shared = Arc::clone(&self.shared);
        let events = self.events.clone();
        tokio::spawn(async move {
            match job {
                Job::Lookup {
                    worker,
                    token,
                    key,
                    session_id,
                    take,
                    deadline,
                    reply,
                } => {
                    let counters = &shared.counters[worker];
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        inc(&counters.timeouts);
                        answer(&shared, worker, token, reply, Fetched::Unavailable);
                        return;
                    }
                    inc(&counters.gets);
                    let mut cmd = redis::cmd(if take { "GETDEL" } else { "GET" });
                    cmd.arg(&key);
                    let fetched =
                        match tokio::time::timeout(left, conn.query::<Option<Vec<u8>>>(&cmd)).await
                        {
                            Err(_) => {
                                inc(&counters.timeouts);
                                Fetched::Unavailable
                            }
                            Ok(Err(e)) => {
                                inc(&counters.errors);
                                tracing::debug!("cache.remote: lookup failed: {e}");
                                if broken(&e) {
                                    let _ = events.send(Event::Broken(generation));
                                }
                                Fetched::Unavailable
                            }
                            Ok(Ok(None)) => {
                                inc(&counters.misses);
                                Fetched::Miss
                            }
                            Ok(Ok(Some(sealed))) => opened(&shared, worker, &session_id, &sealed),
                        };
                    answer(&shared, worker, token, reply, fetched);
                }
                Job::Set {
                    key,
                    value,
                    ttl,
                    worker,
                } => {
                    let counters = &shared.counters[worker];
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(&value[..]).arg("EX").arg(ttl);
                    let result = tokio::time::timeout(WRITE_TIMEOUT, conn.query::<()>(&cmd)).await;
                    shared.writes.fetch_sub(1, Ordering::AcqRel);
                    match result {
                        Ok(Ok(())) => inc(&counters.puts),
                        Ok(Err(e)) => {
                            inc(&counters.errors);
                            inc(&counters.put_dropped);
                            if broken(&e) {
                                let _ = events.send(Event::Broken(generation));
                            }
                        }
                        Err(_) => inc(&counters.put_dropped),
                    }
                }
                Job::Ping { deadline, reply } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let result =
                        match tokio::time::timeout(left, conn.query::<String>(&redis::cmd("PING")))
                            .await
                        {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(RemoteError::Redis(e.to_string())),
                            Err(_) => Err(RemoteError::NoAnswer(left)),
                        };
                    let _ = reply.send(result);
                }
            }
        });
    }
}

/// Whether the connection is unusable after `e` (rather than one command
/// refused, e.g. a wrong type or a MOVED the cluster client reports).
fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Opens a value Redis returned.
fn opened(shared: &Shared, worker: usize, session_id: &[u8], sealed: &[u8]) -> Fetched {
    let counters = &shared.counters[worker];
    match shared
        .keys
        .open(session_id, sealed, crate::clock::unix_now())
    {
        Ok(o) => {
            inc(&counters.hits);
            Fetched::Hit {
                expiry: o.expiry,
                session: o.session,
            }
        }
        Err(Rejected::Stale) => {
            inc(&counters.stale);
            Fetched::Miss
        }
        Err(why) => {
            inc(&counters.rejected);
            tracing::warn!(
                "cache.remote: a stored session was rejected ({why:?}): tampered, or written with another secret"
            );
            Fetched::Miss
        }
    }
}

fn answer(shared: &Shared, worker: usize, token: u64, reply: Reply, fetched: Fetched) {
    match reply {
        Reply::Mailbox => shared.mailboxes[worker].post(Answer { token, fetched }),
        #[cfg(test)]
        Reply::Channel(tx) => {
            let _ = tx.send(fetched);
        }
    }
}
