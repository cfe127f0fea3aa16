//! The one thread of a tlsfront process that talks to Redis.
//!
//! It runs a single-threaded tokio runtime with one multiplexed connection
//! (or the cluster client's connections, [`super::client`]): every lookup
//! and write from every worker is pipelined on it, so a Redis 2 ms away
//! costs a handshake 2 ms of waiting, never a worker 2 ms of stalling.
//! Commands enter the pipeline in the order they were handed over (tasks of
//! a current-thread runtime first run in the order they were spawned), so a
//! session's `SET` from this process precedes any later `GETDEL` of it from
//! this process. Answers go back through the worker's mailbox
//! ([`super::mailbox`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::client::{broken, Conn, Target, WRITE_TIMEOUT};
use super::mailbox::Answer;
use super::{inc, Fetched, Rejected, RemoteError, Shared, MAX_BACKOFF, MIN_BACKOFF};

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
