//! The second tier of the session cache: a Redis shared by every host of a
//! fleet (`cache.remote = redis://HOST:PORT[/DB]`, `rediss://` for TLS), so
//! that a session made on one host behind a load balancer resumes on
//! another. A Redis Cluster is named by `redis+cluster://HOST:PORT[,…]`
//! (seed nodes): each command touches one key, so it goes to the node owning
//! that key's slot.
//!
//! The shared mmap cache stays the first tier. **No worker ever waits for
//! Redis**: one thread of the process ([`thread`]) owns the connection ([`client`]) (one
//! multiplexed, pipelined connection, or the cluster's), and everything a
//! worker asks of Redis is a message to it:
//!
//! - **put**: the session is sealed ([`value`], with [`crate::seal`]) and handed over; at most
//!   `cache.remote.queue` writes wait at a time, more are dropped (counted).
//!   `SET key value EX secs`.
//! - **lookup**: the worker read the ClientHello before rustls did
//!   (`client_hello.rs`) and found the session it names missing locally
//!   (TLS 1.2 session IDs), or needs Redis's word on a single-use TLS 1.3
//!   ticket: it sends `GET` or `GETDEL` and goes on serving every other
//!   connection; the answer comes back through the worker's [`Mailbox`] (a
//!   lock-free queue and an eventfd the worker's io_uring reads), or the
//!   connection's budget (`cache.remote.timeout`) runs out first and the
//!   handshake goes on without it.
//! - **single use** (TLS 1.3 stateful tickets): with a remote tier a ticket
//!   is redeemed by `GETDEL` (atomic in Redis: once in the fleet) or not at
//!   all; when Redis does not answer, the handshake is a full one and 0-RTT
//!   is refused (fail closed). The local copy is dropped either way.
//! - After a failure the thread leaves Redis alone for an interval that
//!   doubles up to [`MAX_BACKOFF`], then reconnects; meanwhile lookups are
//!   answered "unavailable" at once.
//!
//! What Redis holds, and how values are bound to their ID, their secret and
//! their lifetime, is [`value`]'s.

mod client;
mod error;
mod mailbox;
mod thread;
mod value;

use crossbeam_utils::CachePadded;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::RemoteError;
pub use mailbox::{Answer, Mailbox};
pub use value::{Keys, Rejected, MIN_SECRET};

use crate::metrics::{self, PerWorkerCounters};

/// First pause after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

use crate::config::remote_url::{cluster_nodes, connection_info};
use crate::config::remote_url::{redact, CLUSTER_SCHEME};

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

crate::metrics::named_counters! {
    /// Counters of the remote tier as used by one worker.
    RemoteCounters, "remote_", {
    gets: "Lookups (GET or GETDEL) sent to Redis.",
    hits: "Lookups that returned a session that opened and was fresh.",
    misses: "Lookups that found nothing.",
    errors: "Failed connects and commands other than timeouts, of lookups and of writes.",
    timeouts: "Lookups that ran out of cache.remote.timeout.",
    skipped: "Lookups not sent because Redis was being left alone after a failure.",
    puts: "Sessions written to Redis.",
    put_dropped: "Sessions not written: cache.remote.queue writes were waiting, Redis was down, or the write failed.",
    rejected: "Values that failed authentication (tampered, another secret or another ID) or were malformed.",
    stale: "Values that opened but were outside their sealed lifetime (expired, or an old value written back).",
    psk_ignored: "PSK identities after the first of a ClientHello: never looked up (rustls finds nothing for them).",
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// What a lookup in Redis found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A session that opened and is fresh, with its expiry (unix seconds).
    Hit {
        /// Unix seconds.
        expiry: u64,
        /// rustls's encoded session.
        session: Vec<u8>,
    },
    /// Redis answered: no such session (or a stale or rejected one).
    Miss,
    /// Redis did not answer in time, failed, or is being left alone.
    Unavailable,
}

/// Settings of a [`RemoteStore`].
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `redis://…`, `rediss://…`, `redis+unix://…` or `redis+cluster://…` URL.
    pub url: String,
    /// Shared secret file.
    pub secret: PathBuf,
    /// PEM file of the CA that signs Redis's certificate (`rediss://`);
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Budget of one lookup.
    pub timeout: Duration,
    /// Writes that may wait at once.
    pub queue: usize,
    /// Number of workers (sizes the counters and mailboxes; one more for
    /// other threads).
    pub workers: usize,
}

/// What the store's thread and its users share.
struct Shared {
    keys: Keys,
    counters: Box<[CachePadded<RemoteCounters>]>,
    mailboxes: Box<[Mailbox]>,
    /// Writes handed over and not finished.
    writes: AtomicUsize,
    queue: usize,
}

/// The Redis tier: sealing keys, the channel to the Redis thread,
/// per-worker counters and mailboxes.
pub struct RemoteStore {
    url: String,
    budget: Duration,
    /// This process's issuer number, sealed into every value it writes.
    issuer: u64,
    shared: Arc<Shared>,
    jobs: tokio::sync::mpsc::UnboundedSender<thread::Job>,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.url)
            .field("budget", &self.budget)
            .finish()
    }
}

impl RemoteStore {
    /// Reads the secret (and CA), parses the URL and starts the Redis
    /// thread, which connects at once. Redis need not be up: lookups are
    /// answered "unavailable" and the thread retries.
    pub fn open(settings: &RemoteSettings) -> Result<RemoteStore, RemoteError> {
        let keys = Keys::from_file(&settings.secret)?;
        let budget = settings.timeout.max(Duration::from_millis(1));
        let target = client::Target::new(settings, budget)?;
        let mut issuer = [0u8; 8];
        aws_lc_rs::rand::fill(&mut issuer).map_err(|_| RemoteError::Random)?;
        let shared = Arc::new(Shared {
            keys,
            counters: (0..=settings.workers)
                .map(|_| CachePadded::new(RemoteCounters::default()))
                .collect(),
            mailboxes: (0..=settings.workers)
                .map(|_| Mailbox::new())
                .collect::<Result<_, _>>()?,
            writes: AtomicUsize::new(0),
            queue: settings.queue.max(1),
        });
        let jobs = thread::spawn(target, Arc::clone(&shared))?;
        Ok(RemoteStore {
            url: redact(&settings.url),
            budget,
            issuer: u64::from_le_bytes(issuer),
            shared,
            jobs,
        })
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The budget of one lookup.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The derived keys (for the tests that inspect what Redis holds).
    #[cfg(test)]
    pub fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// The mailbox where `worker`'s answers arrive.
    pub fn mailbox(&self, worker: usize) -> &Mailbox {
        let last = self.shared.mailboxes.len() - 1;
        &self.shared.mailboxes[worker.min(last)]
    }

    fn worker_index(&self) -> usize {
        let last = self.shared.counters.len() - 1;
        metrics::current_worker().map_or(last, |w| w.min(last))
    }

    /// `PING`, waiting at most `timeout` (also for the connection, if it is
    /// being made). Blocks the caller: for start-up and tools, never for a
    /// worker.
    pub fn ping(&self, timeout: Duration) -> Result<(), RemoteError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        self.jobs
            .send(thread::Job::Ping {
                deadline,
                reply: tx,
            })
            .map_err(|_| RemoteError::Stopped)?;
        rx.recv_timeout(timeout)
            .map_err(|_| RemoteError::NoAnswer(timeout))?
    }

    /// Hands `session` over for writing under `session_id` until `expiry`
    /// (unix seconds). Never blocks: false (and counted) when
    /// `cache.remote.queue` writes are waiting already.
    pub fn put(&self, session_id: &[u8], session: &[u8], expiry: u64) -> bool {
        let worker = self.worker_index();
        let counters = &self.shared.counters[worker];
        let now = crate::clock::unix_now();
        let ttl = expiry.saturating_sub(now);
        if ttl == 0 {
            return false;
        }
        if self.shared.writes.fetch_add(1, Ordering::AcqRel) >= self.shared.queue {
            self.shared.writes.fetch_sub(1, Ordering::AcqRel);
            inc(&counters.put_dropped);
            return false;
        }
        let job = self
            .shared
            .keys
            .seal(session_id, now, self.issuer, expiry, session)
            .map(|value| thread::Job::Set {
                key: self.shared.keys.redis_key(session_id),
                value,
                ttl,
                worker,
            });
        match job.map(|job| self.jobs.send(job)) {
            Some(Ok(())) => true,
            _ => {
                self.shared.writes.fetch_sub(1, Ordering::AcqRel);
                inc(&counters.put_dropped);
                false
            }
        }
    }

    /// Asks Redis for `session_id` (`GET`, or `GETDEL` with `take`) on
    /// behalf of `worker`, within the budget. Never blocks: the answer, with
    /// `token`, arrives in [`mailbox`](Self::mailbox)`(worker)`; false when
    /// the Redis thread is gone (no answer will come).
    pub fn lookup(&self, worker: usize, token: u64, session_id: Vec<u8>, take: bool) -> bool {
        let last = self.shared.mailboxes.len() - 1;
        self.jobs
            .send(thread::Job::Lookup {
                worker: worker.min(last),
                token,
                key: self.shared.keys.redis_key(&session_id),
                session_id,
                take,
                deadline: Instant::now() + self.budget,
                reply: thread::Reply::Mailbox,
            })
            .is_ok()
    }

    /// Counts PSK identities that were not looked up (all but the first of
    /// a ClientHello).
    pub fn note_ignored_identities(&self, worker: usize, n: usize) {
        let last = self.shared.counters.len() - 1;
        self.shared.counters[worker.min(last)]
            .psk_ignored
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// [`lookup`](Self::lookup), waiting for the answer. Blocks the caller:
    /// for tests, never for a worker.
    #[cfg(test)]
    pub fn fetch_wait(&self, session_id: &[u8], take: bool) -> Fetched {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self.jobs.send(thread::Job::Lookup {
            worker: self.worker_index(),
            token: 0,
            key: self.shared.keys.redis_key(session_id),
            session_id: session_id.to_vec(),
            take,
            deadline: Instant::now() + self.budget,
            reply: thread::Reply::Channel(tx),
        });
        if sent.is_err() {
            return Fetched::Unavailable;
        }
        // The thread answers every lookup by its deadline; the margin only
        // covers a thread that stopped.
        rx.recv_timeout(self.budget + Duration::from_secs(5))
            .unwrap_or(Fetched::Unavailable)
    }
}

/// Attaches the remote tier `config` asks for (`cache.remote`) to `cache`,
/// checking once whether Redis answers (it need not: tlsfront starts and
/// resumes locally until it does). Nothing to do when it is off.
pub fn attach_configured(
    cache: &super::SessionCache,
    config: &crate::config::Config,
    workers: usize,
) -> Result<(), RemoteError> {
    let (Some(url), Some(secret)) = (&config.cache_remote.0, &config.cache_remote_secret.0) else {
        return Ok(());
    };
    let store = RemoteStore::open(&RemoteSettings {
        url: url.clone(),
        secret: secret.clone(),
        ca: config.cache_remote_ca.0.clone(),
        timeout: config.cache_remote_timeout.0,
        queue: config.cache_remote_queue as usize,
        workers,
    })?;
    match store.ping(Duration::from_secs(1)) {
        Ok(()) => tracing::info!("cache.remote {}: reachable", store.url()),
        Err(e) => tracing::warn!(
            "cache.remote {}: not reachable now ({e}); sessions resume locally until it is",
            store.url()
        ),
    }
    if cache.attach_remote(store) {
        Ok(())
    } else {
        Err(RemoteError::AlreadyAttached)
    }
}

/// The start-up summary's words for the remote tier of `cache`.
pub fn describe(cache: &super::SessionCache) -> String {
    cache.remote().map_or_else(String::new, |r| {
        format!(
            "; remote {} (lookups within {} ms, off the workers' threads)",
            r.url(),
            r.budget().as_millis()
        )
    })
}

impl PerWorkerCounters for RemoteStore {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        self.shared
            .counters
            .get(worker)
            .map(|c| c.fields())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigValue, RemoteSecret, RemoteUrl};
    use std::path::Path;

    #[test]
    fn a_hash_in_the_password_reaches_redis_as_it_was_written() {
        for url in [
            "redis://:pa#ss@127.0.0.1:6379",
            "redis://app:pa#ss@127.0.0.1:6379/1",
        ] {
            let info = connection_info(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(info.redis_settings().password(), Some("pa#ss"), "{url}");
        }
        let nodes = cluster_nodes("redis+cluster://:pa#ss@127.0.0.1:7000,127.0.0.1:7001")
            .expect("cluster URL");
        assert!(nodes
            .iter()
            .all(|n| n.redis_settings().password() == Some("pa#ss")));
    }

    #[test]
    fn config_values_parse_and_render() {
        assert_eq!(RemoteUrl::parse("").unwrap(), RemoteUrl(None));
        let u = RemoteUrl::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(RemoteUrl::parse(&u.render()).unwrap(), u);
        assert!(RemoteUrl::parse("rediss://h:6380").is_ok());
        // The password never shows in what sysctl -a renders.
        assert_eq!(
            RemoteUrl::parse("redis://app:s3cret@h:1/0")
                .unwrap()
                .render(),
            "redis://***@h:1/0"
        );
        assert!(RemoteUrl::parse("http://x").is_err());
        assert!(RemoteUrl::parse("redis+unix:///run/redis.sock").is_ok());
        let c = RemoteUrl::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").unwrap();
        assert_eq!(RemoteUrl::parse(&c.render()).unwrap(), c);
        assert!(RemoteUrl::parse("redis+cluster://:pw@h1:7000,h2:7001").is_ok());
        assert!(RemoteUrl::parse("redis+cluster://h1:7000/2").is_err());
        assert!(RemoteUrl::parse("redis+cluster://h1:7000,,h2:7000").is_err());
        assert!(RemoteUrl::parse("redis+cluster://").is_err());
        assert_eq!(
            cluster_nodes("redis+cluster://u:pw@h1:7000,h2:7001")
                .unwrap()
                .iter()
                .map(|n| n.addr().to_string())
                .collect::<Vec<_>>(),
            ["h1:7000", "h2:7001"]
        );
        assert_eq!(
            redact("redis+cluster://u:pw@h1:1,h2:2"),
            "redis+cluster://***@h1:1,h2:2"
        );
        let s = RemoteSecret::parse("file:/etc/s").unwrap();
        assert_eq!(s, RemoteSecret(Some("/etc/s".into())));
        assert_eq!(RemoteSecret::parse(&s.render()).unwrap(), s);
        assert!(RemoteSecret::parse("/etc/s").is_err());
        assert_eq!(
            redact("redis://user:pw@h:1/0"),
            "redis://***@h:1/0".to_string()
        );
    }

    #[test]
    fn config_requires_a_secret_and_the_local_cache() {
        use crate::config::Config;
        let load = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            Config::load(None, &o).map_err(|e| e.to_string())
        };
        let e = load(&["cache.remote=redis://127.0.0.1:6379"]).unwrap_err();
        assert!(e.contains("cache.remote.secret"), "{e}");
        let e = load(&[
            "cache.remote=redis://127.0.0.1:6379",
            "cache.remote.secret=file:/s",
            "cache.enabled=0",
        ])
        .unwrap_err();
        assert!(e.contains("cache.enabled"), "{e}");
        let e = load(&["cache.remote.timeout=0"]).unwrap_err();
        assert!(e.contains("cache.remote.timeout"), "{e}");
        let c = load(&[
            "cache.remote=redis://127.0.0.1:6379/1",
            "cache.remote.secret=file:/s",
        ])
        .unwrap();
        assert_eq!(c.cache_remote_timeout.0, Duration::from_millis(20));
    }

    fn settings(url: &str, dir: &Path) -> RemoteSettings {
        let secret = dir.join("secret");
        std::fs::write(&secret, [9u8; 40]).unwrap();
        RemoteSettings {
            url: url.into(),
            secret,
            ca: None,
            timeout: Duration::from_millis(5),
            queue: 2,
            workers: 1,
        }
    }

    #[test]
    fn short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings("redis://127.0.0.1:1", dir.path());
        std::fs::write(&s.secret, [1u8; 31]).unwrap();
        assert!(RemoteStore::open(&s)
            .unwrap_err()
            .to_string()
            .contains("at least 32"));
        s.secret = dir.path().join("missing");
        assert!(RemoteStore::open(&s).is_err());
    }

    #[test]
    fn an_unreachable_store_fails_fast_and_backs_off() {
        // A bound, never-listening port: connects are refused at once.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let dir = tempfile::tempdir().unwrap();
        let store =
            RemoteStore::open(&settings(&format!("redis://127.0.0.1:{port}"), dir.path())).unwrap();
        // The connect at start fails; lookups then are not even tried.
        let c = &store.shared.counters[1];
        let wait = Instant::now() + Duration::from_secs(5);
        while store.shared.counters[1].errors.load(Ordering::Relaxed) == 0 && Instant::now() < wait
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(store.fetch_wait(b"id", false), Fetched::Unavailable);
        assert_eq!(store.fetch_wait(b"id", true), Fetched::Unavailable);
        assert_eq!(c.gets.load(Ordering::Relaxed), 0);
        assert_eq!(c.skipped.load(Ordering::Relaxed), 2);
        // Puts never block; past the queue's capacity they are dropped.
        for i in 0..50u8 {
            store.put(&[i; 32], b"v", crate::clock::unix_now() + 60);
        }
        assert!(c.put_dropped.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_silent_store_costs_at_most_the_budget() {
        // Accepts connections (backlog) but never answers.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let store =
            RemoteStore::open(&settings(&format!("redis://127.0.0.1:{port}"), dir.path())).unwrap();
        // The connection never completes its handshake with the server: the
        // lookup waits for it, and is answered at its deadline.
        assert_eq!(store.fetch_wait(b"id", false), Fetched::Unavailable);
        let c = &store.shared.counters[1];
        // Either the connect hung (the lookup waited, then was skipped) or
        // the command did (a timeout).
        assert_eq!(
            c.timeouts.load(Ordering::Relaxed) + c.skipped.load(Ordering::Relaxed),
            1
        );
        drop(sock);
    }

    /// A real redis-server on a unix socket of a temp dir.
    struct Redis {
        child: std::process::Child,
        socket: PathBuf,
    }

    impl Redis {
        fn start(dir: &Path) -> Option<Redis> {
            let socket = dir.join("redis.sock");
            let child = std::process::Command::new("redis-server")
                .args(["--port", "0", "--save", "", "--appendonly", "no"])
                .arg("--unixsocket")
                .arg(&socket)
                .arg("--dir")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .ok()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(Redis { child, socket })
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn against_a_real_redis() {
        let dir = tempfile::tempdir().unwrap();
        crate::prereq::require(&[crate::prereq::Need::Program("redis-server")]);
        let redis = Redis::start(dir.path()).expect("spawn redis-server");
        let mut s = settings(
            &format!("redis+unix://{}", redis.socket.display()),
            dir.path(),
        );
        s.timeout = Duration::from_millis(200);
        s.queue = 64;
        let store = RemoteStore::open(&s).unwrap();
        store.ping(Duration::from_secs(5)).unwrap();
        let expiry = crate::clock::unix_now() + 60;
        assert!(store.put(b"id-1", b"session one", expiry));
        assert!(store.put(b"id-2", b"session two", expiry));
        let c = &store.shared.counters[1];
        let wait = Instant::now() + Duration::from_secs(5);
        while c.puts.load(Ordering::Relaxed) < 2 && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        let hit = Fetched::Hit {
            expiry,
            session: b"session one".to_vec(),
        };
        assert_eq!(store.fetch_wait(b"id-1", false), hit);
        assert_eq!(store.fetch_wait(b"id-1", false), hit);
        assert_eq!(store.fetch_wait(b"nope", false), Fetched::Miss);
        // GETDEL: once only.
        assert!(matches!(
            store.fetch_wait(b"id-2", true),
            Fetched::Hit { .. }
        ));
        assert_eq!(store.fetch_wait(b"id-2", true), Fetched::Miss);
        // A value moved to another key, or changed, is rejected.
        let client =
            redis::Client::open(format!("redis+unix://{}", redis.socket.display())).unwrap();
        let mut conn = client.get_connection().unwrap();
        let v: Vec<u8> = redis::cmd("GET")
            .arg(store.keys().redis_key(b"id-1"))
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(store.keys().redis_key(b"id-3"))
            .arg(&v[..])
            .query(&mut conn)
            .unwrap();
        assert_eq!(store.fetch_wait(b"id-3", false), Fetched::Miss);
        let mut bad = v.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let _: () = redis::cmd("SET")
            .arg(store.keys().redis_key(b"id-1"))
            .arg(&bad[..])
            .query(&mut conn)
            .unwrap();
        assert_eq!(store.fetch_wait(b"id-1", false), Fetched::Miss);
        assert_eq!(c.rejected.load(Ordering::Relaxed), 2);
        // The TTL is the session's.
        let ttl: i64 = redis::cmd("TTL")
            .arg(store.keys().redis_key(b"nope-never"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(ttl, -2);
        assert!(store.put(b"id-4", b"x", expiry));
        let wait = Instant::now() + Duration::from_secs(5);
        while c.puts.load(Ordering::Relaxed) < 3 && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ttl: i64 = redis::cmd("TTL")
            .arg(store.keys().redis_key(b"id-4"))
            .query(&mut conn)
            .unwrap();
        assert!((55..=60).contains(&ttl), "ttl {ttl}");
        assert_eq!(c.errors.load(Ordering::Relaxed), 0);
    }
}
