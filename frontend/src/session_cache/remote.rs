//! The second tier of the session cache: a Redis shared by every host of a
//! fleet (`cache.remote = redis://HOST:PORT[/DB]`), so that a session made
//! on one host behind a load balancer resumes on another. A Redis Cluster
//! is named by `redis+cluster://HOST:PORT[,HOST:PORT...]` (seed nodes): each
//! command touches one key, so it goes to the node owning that key's slot.
//!
//! The shared mmap cache stays the first tier; this one is consulted only
//! when it misses, and never makes a handshake wait longer than
//! `cache.remote.timeout_ms`:
//!
//! - **put**: the session is sealed and handed to one background writer
//!   thread through a bounded queue (`cache.remote.queue`); a full queue
//!   drops it (counted). The writer pipelines `SET key value EX secs`.
//! - **get** (TLS 1.2 session IDs): `GET` on a connection owned by the
//!   calling worker thread, whose connect, write and read timeouts are what
//!   is left of the budget. A hit is stored in the local cache.
//! - **take** (TLS 1.3 single-use tickets): `GETDEL`, atomic in Redis, so a
//!   ticket is redeemed at most once in the whole fleet. Redis is the
//!   authority for takes while it answers; while it does not, the local
//!   cache redeems (single use box-wide) and a `DEL` is queued.
//! - After a failure a thread leaves Redis alone for an interval that
//!   doubles up to [`MAX_BACKOFF`], then reconnects; meanwhile lookups are
//!   local only (full handshakes for sessions made elsewhere).
//!
//! **What Redis holds.** Keys are `tlsfront:s:` + hex(HMAC-SHA256(id key,
//! session ID)): no session ID is stored. Values are
//! `version ‖ salt ‖ nonce ‖ AES-256-GCM(expiry ‖ session)`, sealed with a
//! key derived by HKDF-SHA256 from the shared secret
//! (`cache.remote.secret = file:PATH`) and the value's random salt, with the
//! session ID as associated data: whoever can write to Redis but lacks the
//! secret can neither read a session nor make one resume, nor move a value
//! to another ID. A value that fails to open is a miss, counted as
//! `remote_rejected`. Key material held here is zeroized on drop.

use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::{aead, hkdf, hmac};
use zeroize::Zeroizing;

use crate::config::ConfigValue;
use crate::metrics::{self, PerWorkerCounters};

/// Prefix of every key tlsfront writes.
pub const KEY_PREFIX: &str = "tlsfront:s:";
/// Smallest shared secret accepted.
pub const MIN_SECRET: usize = 32;
/// First pause after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connect, write and read timeout of the background writer.
const WRITER_TIMEOUT: Duration = Duration::from_secs(1);
/// Writes sent in one pipeline by the writer.
const WRITER_BATCH: usize = 64;
/// How often the writer resolves a host name again (DNS fail-over).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Format version: the first byte of every value.
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + SALT_LEN + NONCE_LEN;
/// Bytes a sealed value adds to a session: header, expiry, tag.
pub const OVERHEAD: usize = HEADER_LEN + 8 + TAG_LEN;

// ---------------------------------------------------------------------------
// Configuration values
// ---------------------------------------------------------------------------

/// Scheme of a Redis Cluster: `redis+cluster://[[USER]:PASS@]HOST:PORT[,HOST:PORT...]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// `cache.remote`: a `redis://` (or `redis+unix://`, or `redis+cluster://`)
/// URL, or empty = off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteUrl(pub Option<String>);

impl ConfigValue for RemoteUrl {
    const KIND: &'static str =
        "redis://HOST:PORT[/DB], redis+cluster://HOST:PORT[,HOST:PORT...] or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(RemoteUrl(None));
        }
        if raw.starts_with("rediss://") || raw.starts_with("valkeys://") {
            return Err(format!(
                "{raw:?}: TLS to Redis (rediss://) is not built into tlsfront; use redis:// \
                 over a private network or a local TLS tunnel"
            ));
        }
        if raw.starts_with(CLUSTER_SCHEME) {
            return cluster_nodes(raw).map(|_| RemoteUrl(Some(raw.to_string())));
        }
        connection_info(raw).map(|_| RemoteUrl(Some(raw.to_string())))
    }
    fn render(&self) -> String {
        self.0.clone().unwrap_or_default()
    }
}

/// `cache.remote.secret`: `file:PATH` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteSecret(pub Option<PathBuf>);

impl ConfigValue for RemoteSecret {
    const KIND: &'static str = "file:PATH or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(RemoteSecret(None));
        }
        match raw.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(RemoteSecret(Some(PathBuf::from(path)))),
            _ => Err(format!("{raw:?} is not file:PATH")),
        }
    }
    fn render(&self) -> String {
        self.0
            .as_ref()
            .map(|p| format!("file:{}", p.display()))
            .unwrap_or_default()
    }
}

/// Parses a URL into the client's connection settings (TCP_NODELAY on, no
/// client-name round trips at connect).
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{}: {e}", redact(url)))?;
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_tcp_settings(tcp).set_redis_settings(settings))
}

/// The seed nodes of a `redis+cluster://` URL, each as a `redis://` one (the
/// credentials, if any, apply to every node; no database: a cluster has one).
fn cluster_nodes(url: &str) -> Result<Vec<redis::ConnectionInfo>, String> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| format!("{}: not {CLUSTER_SCHEME}", redact(url)))?;
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() || host.contains('/') || host.contains('?') {
            return Err(format!(
                "{}: expected {CLUSTER_SCHEME}HOST:PORT[,HOST:PORT...] (no database, no options)",
                redact(url)
            ));
        }
        nodes.push(connection_info(&format!("redis://{auth}{host}"))?);
    }
    Ok(nodes)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Keys and sealing
// ---------------------------------------------------------------------------

/// Why a value from Redis was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, or an unknown format version.
    Malformed,
    /// The tag did not verify: another secret, another session ID, or bytes
    /// changed in the store.
    Authentication,
}

/// The keys derived from the shared secret.
pub struct Keys {
    /// Names Redis keys: HMAC-SHA256 of the session ID.
    id: hmac::Key,
    /// Derives each value's AES-256-GCM key from its salt.
    seal: hkdf::Prk,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Keys {
    /// Derives the keys from a secret of at least [`MIN_SECRET`] bytes.
    pub fn from_secret(secret: &[u8]) -> Keys {
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"tlsfront remote session cache v1").extract(secret);
        let mut id = Zeroizing::new([0u8; 32]);
        let mut seal = Zeroizing::new([0u8; 32]);
        // expand/fill fail only for lengths above 255 × 32 bytes.
        for (info, out) in [
            (&b"tlsfront remote id key"[..], &mut id),
            (&b"tlsfront remote seal key"[..], &mut seal),
        ] {
            if let Ok(okm) = prk.expand(&[info], Len(32)) {
                let _ = okm.fill(&mut out[..]);
            }
        }
        Keys {
            // aws-lc-rs zeroizes both when they are dropped.
            id: hmac::Key::new(hmac::HMAC_SHA256, &id[..]),
            seal: hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &seal[..]),
        }
    }

    /// Reads `path` (at least [`MIN_SECRET`] bytes) and derives the keys.
    pub fn from_file(path: &Path) -> Result<Keys, String> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| format!("cache.remote.secret {}: {e}", path.display()))?;
        let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        // Sized up front so that no reallocation leaves a copy behind.
        let mut secret = Zeroizing::new(Vec::with_capacity(len.clamp(64, 1 << 20) + 1));
        file.read_to_end(&mut secret)
            .map_err(|e| format!("cache.remote.secret {}: {e}", path.display()))?;
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "cache.remote.secret {}: {} bytes; the secret needs at least {MIN_SECRET}",
                path.display(),
                secret.len()
            ));
        }
        Ok(Keys::from_secret(&secret))
    }

    /// The Redis key of a session ID.
    pub fn redis_key(&self, session_id: &[u8]) -> String {
        let tag = hmac::sign(&self.id, session_id);
        let mut key = String::with_capacity(KEY_PREFIX.len() + 64);
        key.push_str(KEY_PREFIX);
        for b in tag.as_ref() {
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 15)]));
        }
        key
    }

    fn value_key(&self, salt: &[u8]) -> Option<aead::LessSafeKey> {
        let mut raw = Zeroizing::new([0u8; 32]);
        let info: [&[u8]; 2] = [b"tlsfront remote value key", salt];
        let okm = self.seal.expand(&info, Len(32)).ok()?;
        okm.fill(&mut raw[..]).ok()?;
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &raw[..]).ok()?;
        Some(aead::LessSafeKey::new(key))
    }

    /// Seals `session` (stored under `session_id`, valid until `expiry`,
    /// unix seconds). `None` only if the random generator fails.
    pub fn seal(&self, session_id: &[u8], expiry: u64, session: &[u8]) -> Option<Vec<u8>> {
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        aws_lc_rs::rand::fill(&mut header[1..]).ok()?;
        let (salt, nonce) = header[1..].split_at(SALT_LEN);
        let key = self.value_key(salt)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut out = Vec::with_capacity(session.len() + OVERHEAD);
        out.extend_from_slice(&header);
        let mut body = Zeroizing::new(Vec::with_capacity(8 + session.len() + TAG_LEN));
        body.extend_from_slice(&expiry.to_le_bytes());
        body.extend_from_slice(session);
        key.seal_in_place_append_tag(nonce, aad(session_id), &mut *body)
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens a value read from Redis under `session_id`: (expiry, session).
    pub fn open(&self, session_id: &[u8], sealed: &[u8]) -> Result<(u64, Vec<u8>), Rejected> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        let (salt, nonce) = header[1..].split_at(SALT_LEN);
        let key = self.value_key(salt).ok_or(Rejected::Authentication)?;
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Rejected::Malformed)?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain = key
            .open_in_place(nonce, aad(session_id), &mut body[..])
            .map_err(|_| Rejected::Authentication)?;
        let (expiry, session) = plain.split_at(8);
        let mut e = [0u8; 8];
        e.copy_from_slice(expiry);
        Ok((u64::from_le_bytes(e), session.to_vec()))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Associated data: the format version and the session ID, so that a value
/// opens only under the ID it was sealed for.
fn aad(session_id: &[u8]) -> aead::Aad<Vec<u8>> {
    let mut a = Vec::with_capacity(1 + session_id.len());
    a.push(VERSION);
    a.extend_from_slice(session_id);
    aead::Aad::from(a)
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

crate::metrics::named_counters! {
    /// Counters of the remote tier as used by one worker.
    RemoteCounters, "remote_", {
    gets: "Lookups (GET or GETDEL) sent to Redis after a local miss.",
    hits: "Lookups that returned a session that opened and had not expired.",
    misses: "Lookups that found nothing (or an expired session).",
    errors: "Failed connects and commands other than timeouts, of lookups and of the writer.",
    timeouts: "Lookups that ran out of cache.remote.timeout_ms (connect, write or read).",
    skipped: "Lookups not sent because this thread was backing off after a failure.",
    puts: "Sessions written to Redis.",
    put_dropped: "Sessions not written: the writer's queue was full, or its write failed.",
    rejected: "Values that failed authentication (tampered, another secret or another ID) or were malformed.",
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// What a lookup in Redis found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// A session that opened, with its expiry (unix seconds).
    Hit { expiry: u64, session: Vec<u8> },
    /// Redis answered: no such session (or expired, or rejected).
    Miss,
    /// Redis did not answer in time, failed, or is being left alone.
    Unavailable,
}

enum Job {
    Set {
        key: String,
        value: Vec<u8>,
        ttl: u64,
        worker: usize,
    },
    Del {
        key: String,
        worker: usize,
    },
}

impl Job {
    fn add_to(&self, pipe: &mut redis::Pipeline) {
        match self {
            Job::Set {
                key, value, ttl, ..
            } => pipe.cmd("SET").arg(key).arg(&value[..]).arg("EX").arg(*ttl),
            Job::Del { key, .. } => pipe.cmd("DEL").arg(key),
        }
        .ignore();
    }

    fn add_to_cluster(&self, pipe: &mut redis::cluster::ClusterPipeline) {
        match self {
            Job::Set {
                key, value, ttl, ..
            } => pipe.cmd("SET").arg(key).arg(&value[..]).arg("EX").arg(*ttl),
            Job::Del { key, .. } => pipe.cmd("DEL").arg(key),
        }
        .ignore();
    }
}

/// Settings of a [`RemoteStore`].
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `redis://…`, `redis+unix://…` or `redis+cluster://…` URL.
    pub url: String,
    /// Shared secret file.
    pub secret: PathBuf,
    /// Budget of one lookup.
    pub timeout: Duration,
    /// Capacity of the writer's queue.
    pub queue: usize,
    /// Number of workers (sizes the counters; one more for other threads).
    pub workers: usize,
}

/// The Redis tier: sealing keys, the writer's queue, per-worker counters.
pub struct RemoteStore {
    id: u64,
    url: String,
    target: Target,
    budget: Duration,
    keys: Keys,
    writer: SyncSender<Job>,
    counters: Arc<[RemoteCounters]>,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.url)
            .field("budget", &self.budget)
            .finish()
    }
}

/// One thread's connection to Redis and its back-off state.
struct Link {
    store: u64,
    conn: Option<Conn>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Link {
    fn failed(&mut self, now: Instant) {
        self.conn = None;
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.backoff = MIN_BACKOFF;
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }
}

/// A connection to a single Redis, or to the nodes of a cluster.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    /// Write and read timeouts of every step from now on (for a cluster:
    /// of its open node connections and of those it opens later).
    fn set_timeouts(&self, t: Duration) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => {
                c.set_write_timeout(Some(t))?;
                c.set_read_timeout(Some(t))
            }
            Conn::Cluster(c) => {
                c.set_write_timeout(Some(t))?;
                c.set_read_timeout(Some(t))
            }
        }
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c),
        }
    }
}

/// Where the store is: one Redis (its client, the address re-resolved by
/// the writer) or a cluster.
#[derive(Clone)]
enum Target {
    Single(Arc<ArcSwap<redis::Client>>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    /// Connects within `timeout`; for a cluster, that is also the timeout of
    /// each node connection opened later and of each reply (no retries: a
    /// redirection or a failure ends the command, and the caller connects
    /// again, reading the slot map anew).
    fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => client
                .load()
                .get_connection_with_timeout(timeout)
                .map(Conn::Single),
            Target::Cluster(client) => client
                .get_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout),
                )
                .map(|c| Conn::Cluster(Box::new(c))),
        }
    }
}

thread_local! {
    /// Connections of the calling thread, one per store (normally one).
    static LINKS: RefCell<Vec<Link>> = const { RefCell::new(Vec::new()) };
}

/// How a command failed.
enum Failure {
    Timeout,
    Error(String),
}

impl RemoteStore {
    /// Reads the secret, parses the URL and starts the writer thread. Redis
    /// need not be up: lookups fail fast and the writer retries.
    pub fn open(settings: &RemoteSettings) -> Result<RemoteStore, String> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let keys = Keys::from_file(&settings.secret)?;
        let budget = settings.timeout.max(Duration::from_millis(1));
        let (target, info, host) = if settings.url.starts_with(CLUSTER_SCHEME) {
            let nodes = cluster_nodes(&settings.url).map_err(|e| format!("cache.remote {e}"))?;
            let first = nodes[0].clone();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .retries(0)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .connection_timeout(budget)
                .response_timeout(budget)
                .build()
                .map_err(|e| format!("cache.remote: {e}"))?;
            (Target::Cluster(Box::new(client)), first, None)
        } else {
            let info = connection_info(&settings.url).map_err(|e| format!("cache.remote {e}"))?;
            let host = match info.addr() {
                redis::ConnectionAddr::Tcp(host, port) if host.parse::<IpAddr>().is_err() => {
                    Some((host.clone(), *port))
                }
                _ => None,
            };
            let resolved =
                resolve(&info, host.as_ref()).map_err(|e| format!("cache.remote {e}"))?;
            let client = redis::Client::open(resolved).map_err(|e| format!("cache.remote: {e}"))?;
            let client = Arc::new(ArcSwap::from_pointee(client));
            (Target::Single(client), info, host)
        };
        let counters: Arc<[RemoteCounters]> = (0..=settings.workers)
            .map(|_| RemoteCounters::default())
            .collect();
        let (tx, rx) = mpsc::sync_channel(settings.queue.max(1));
        let writer = Writer {
            rx,
            info,
            host,
            target: target.clone(),
            counters: Arc::clone(&counters),
            link: Link {
                store: 0,
                conn: None,
                backoff: MIN_BACKOFF,
                retry_at: None,
            },
            resolved_at: Instant::now(),
        };
        std::thread::Builder::new()
            .name("tlsfront-remote".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cache.remote: starting the writer thread: {e}"))?;
        Ok(RemoteStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            url: redact(&settings.url),
            target,
            budget,
            keys,
            writer: tx,
            counters,
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

    /// The derived keys (for tests and tools that inspect the store).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `PING` within `timeout`, on a connection of its own.
    pub fn ping(&self, timeout: Duration) -> Result<(), String> {
        let mut conn = self.target.connect(timeout).map_err(|e| e.to_string())?;
        conn.set_timeouts(timeout).map_err(|e| e.to_string())?;
        conn.query::<redis::Value>(&redis::cmd("PING"))
            .and_then(|v| v.extract_error())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn worker_index(&self) -> usize {
        let last = self.counters.len() - 1;
        metrics::current_worker().map_or(last, |w| w.min(last))
    }

    fn counters(&self) -> &RemoteCounters {
        &self.counters[self.worker_index()]
    }

    /// Queues `session` for writing under `session_id` until `expiry` (unix
    /// seconds). Never blocks: false (and counted) when the queue is full.
    pub fn put(&self, session_id: &[u8], session: &[u8], expiry: u64) -> bool {
        let worker = self.worker_index();
        let ttl = expiry.saturating_sub(super::unix_now());
        if ttl == 0 {
            return false;
        }
        let Some(value) = self.keys.seal(session_id, expiry, session) else {
            inc(&self.counters[worker].put_dropped);
            return false;
        };
        let job = Job::Set {
            key: self.keys.redis_key(session_id),
            value,
            ttl,
            worker,
        };
        self.send(job, worker)
    }

    /// Queues a `DEL` of `session_id` (a ticket redeemed locally while Redis
    /// did not answer). Never blocks.
    pub fn forget(&self, session_id: &[u8]) -> bool {
        let worker = self.worker_index();
        let key = self.keys.redis_key(session_id);
        self.send(Job::Del { key, worker }, worker)
    }

    fn send(&self, job: Job, worker: usize) -> bool {
        match self.writer.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                inc(&self.counters[worker].put_dropped);
                false
            }
        }
    }

    /// `GET` (or, with `take`, `GETDEL`) of `session_id`, within the budget.
    pub fn fetch(&self, session_id: &[u8], take: bool) -> Fetched {
        let counters = self.counters();
        let key = self.keys.redis_key(session_id);
        let mut cmd = redis::cmd(if take { "GETDEL" } else { "GET" });
        cmd.arg(&key);
        let start = Instant::now();
        let reply = LINKS.with(|links| {
            let mut links = links.borrow_mut();
            let link = match links.iter().position(|l| l.store == self.id) {
                Some(i) => &mut links[i],
                None => {
                    links.push(Link {
                        store: self.id,
                        conn: None,
                        backoff: MIN_BACKOFF,
                        retry_at: None,
                    });
                    links.last_mut().expect("just pushed")
                }
            };
            if link.backing_off(start) {
                inc(&counters.skipped);
                return None;
            }
            inc(&counters.gets);
            let deadline = start + self.budget;
            let reused = link.conn.is_some();
            let mut result = self.query(link, &cmd, deadline);
            // A connection that sat idle may have been closed by a Redis
            // restart: try once more on a new one if time is left.
            if reused && matches!(result, Err(Failure::Error(_))) && Instant::now() < deadline {
                link.conn = None;
                result = self.query(link, &cmd, deadline);
            }
            match result {
                Ok(reply) => {
                    link.succeeded();
                    Some(reply)
                }
                Err(failure) => {
                    match failure {
                        Failure::Timeout => inc(&counters.timeouts),
                        Failure::Error(e) => {
                            inc(&counters.errors);
                            tracing::debug!(
                                "cache.remote {}: lookup failed: {e}; retrying in {:?}",
                                self.url,
                                link.backoff
                            );
                        }
                    }
                    link.failed(Instant::now());
                    None
                }
            }
        });
        let Some(reply) = reply else {
            return Fetched::Unavailable;
        };
        let Some(sealed) = reply else {
            inc(&counters.misses);
            return Fetched::Miss;
        };
        match self.keys.open(session_id, &sealed) {
            Ok((expiry, session)) if expiry > super::unix_now() => {
                inc(&counters.hits);
                Fetched::Hit { expiry, session }
            }
            Ok(_) => {
                inc(&counters.misses);
                Fetched::Miss
            }
            Err(why) => {
                inc(&counters.rejected);
                tracing::warn!(
                    "cache.remote {}: a stored session was rejected ({why:?}): tampered, or written with another secret",
                    self.url
                );
                Fetched::Miss
            }
        }
    }

    /// One command on the thread's connection (connecting first if needed),
    /// every step bounded by `deadline`.
    fn query(
        &self,
        link: &mut Link,
        cmd: &redis::Cmd,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let left = |now: Instant| {
            let d = deadline.saturating_duration_since(now);
            (!d.is_zero()).then_some(d)
        };
        if link.conn.is_none() {
            let budget = left(Instant::now()).ok_or(Failure::Timeout)?;
            let conn = self.target.connect(budget).map_err(classify)?;
            link.conn = Some(conn);
        }
        let conn = link.conn.as_mut().expect("connected above");
        let budget = left(Instant::now()).ok_or(Failure::Timeout)?;
        conn.set_timeouts(budget).map_err(classify)?;
        let reply = conn.query::<Option<Vec<u8>>>(cmd).map_err(classify);
        if reply.is_err() {
            // A late reply would be read as the answer to the next command.
            link.conn = None;
        }
        reply
    }
}

/// Attaches the remote tier `config` asks for (`cache.remote`) to `cache`,
/// checking once whether Redis answers (it need not: tlsfront starts and
/// resumes locally until it does). Nothing to do when it is off.
pub fn attach_configured(
    cache: &super::SessionCache,
    config: &crate::config::Config,
    workers: usize,
) -> Result<(), String> {
    let (Some(url), Some(secret)) = (&config.cache_remote.0, &config.cache_remote_secret.0) else {
        return Ok(());
    };
    let store = RemoteStore::open(&RemoteSettings {
        url: url.clone(),
        secret: secret.clone(),
        timeout: Duration::from_millis(u64::from(config.cache_remote_timeout_ms)),
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
        Err("cache.remote: a remote tier is attached already".to_string())
    }
}

/// The start-up summary's words for the remote tier of `cache`.
pub fn describe(cache: &super::SessionCache) -> String {
    cache.remote().map_or_else(String::new, |r| {
        format!(
            "; remote {} (lookups within {} ms)",
            r.url(),
            r.budget().as_millis()
        )
    })
}

fn classify(e: redis::RedisError) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Error(e.to_string())
    }
}

/// `info` with a host name replaced by its first address, so that workers
/// never wait for DNS (the writer resolves again every [`RESOLVE_EVERY`]).
fn resolve(
    info: &redis::ConnectionInfo,
    host: Option<&(String, u16)>,
) -> Result<redis::ConnectionInfo, String> {
    let Some((name, port)) = host else {
        return Ok(info.clone());
    };
    let addr: SocketAddr = (name.as_str(), *port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {name}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name} has no address"))?;
    Ok(info
        .clone()
        .set_addr(redis::ConnectionAddr::Tcp(addr.ip().to_string(), *port)))
}

impl PerWorkerCounters for RemoteStore {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        self.counters
            .get(worker)
            .map(RemoteCounters::fields)
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// The background writer
// ---------------------------------------------------------------------------

struct Writer {
    rx: Receiver<Job>,
    info: redis::ConnectionInfo,
    host: Option<(String, u16)>,
    target: Target,
    counters: Arc<[RemoteCounters]>,
    link: Link,
    resolved_at: Instant,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(WRITER_BATCH);
        loop {
            match self.rx.recv_timeout(RESOLVE_EVERY) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {
                    self.refresh_address();
                    continue;
                }
                // The store is gone.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < WRITER_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Some(at) = self.link.retry_at {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            self.refresh_address();
            match self.write(&batch) {
                Ok(()) => {
                    self.link.succeeded();
                    for job in &batch {
                        if let Job::Set { worker, .. } = job {
                            inc(&self.counters[*worker].puts);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(
                        "cache.remote: writing {} sessions failed: {e}; retrying in {:?}",
                        batch.len(),
                        self.link.backoff
                    );
                    self.link.failed(Instant::now());
                    let first = match &batch[0] {
                        Job::Set { worker, .. } | Job::Del { worker, .. } => *worker,
                    };
                    inc(&self.counters[first].errors);
                    for job in &batch {
                        if let Job::Set { worker, .. } = job {
                            inc(&self.counters[*worker].put_dropped);
                        }
                    }
                }
            }
            batch.clear();
        }
    }

    fn write(&mut self, batch: &[Job]) -> Result<(), redis::RedisError> {
        if self.link.conn.is_none() {
            let conn = self.target.connect(WRITER_TIMEOUT)?;
            conn.set_timeouts(WRITER_TIMEOUT)?;
            self.link.conn = Some(conn);
        }
        let conn = self.link.conn.as_mut().expect("connected above");
        let result = match conn {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for job in batch {
                    job.add_to(&mut pipe);
                }
                pipe.query::<()>(conn)
            }
            // Commands go to the nodes owning their keys' slots.
            Conn::Cluster(conn) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for job in batch {
                    job.add_to_cluster(&mut pipe);
                }
                pipe.query::<()>(conn)
            }
        };
        if result.is_err() {
            self.link.conn = None;
        }
        result
    }

    /// Resolves a host name again, at most every [`RESOLVE_EVERY`].
    fn refresh_address(&mut self) {
        if self.host.is_none() || self.resolved_at.elapsed() < RESOLVE_EVERY {
            return;
        }
        let Target::Single(current) = &self.target else {
            return;
        };
        self.resolved_at = Instant::now();
        match resolve(&self.info, self.host.as_ref())
            .and_then(|info| redis::Client::open(info).map_err(|e| e.to_string()))
        {
            Ok(client) => {
                if client.get_connection_info().addr()
                    != current.load().get_connection_info().addr()
                {
                    tracing::info!("cache.remote: the store's address changed");
                    current.store(Arc::new(client));
                    self.link.conn = None;
                }
            }
            Err(e) => tracing::warn!("cache.remote: {e}; keeping the last address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(&[7u8; 32])
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = keys();
        let id = [1u8; 32];
        let sealed = k.seal(&id, 1234, b"session bytes").unwrap();
        assert_eq!(sealed.len(), 13 + OVERHEAD);
        assert_eq!(k.open(&id, &sealed), Ok((1234, b"session bytes".to_vec())));
        // Another ID: the associated data differs.
        assert_eq!(k.open(&[2u8; 32], &sealed), Err(Rejected::Authentication));
        // Any flipped byte is rejected.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(k.open(&id, &bad).is_err(), "byte {i}");
        }
        // Another secret.
        let other = Keys::from_secret(&[8u8; 32]);
        assert_eq!(other.open(&id, &sealed), Err(Rejected::Authentication));
        assert_eq!(k.open(&id, &sealed[..10]), Err(Rejected::Malformed));
        // Fresh salt and nonce each time.
        assert_ne!(sealed, k.seal(&id, 1234, b"session bytes").unwrap());
    }

    #[test]
    fn redis_keys_hide_the_id_and_depend_on_the_secret() {
        let k = keys();
        let id = b"0123456789abcdef0123456789abcdef";
        let key = k.redis_key(id);
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 64);
        assert!(!key.contains("0123456789abcdef0123456789abcdef"));
        assert_eq!(key, k.redis_key(id));
        assert_ne!(key, Keys::from_secret(&[8u8; 32]).redis_key(id));
        assert_ne!(key, k.redis_key(b"another id"));
    }

    #[test]
    fn config_values_parse_and_render() {
        assert_eq!(RemoteUrl::parse("").unwrap(), RemoteUrl(None));
        let u = RemoteUrl::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(RemoteUrl::parse(&u.render()).unwrap(), u);
        assert!(RemoteUrl::parse("rediss://h:6380")
            .unwrap_err()
            .contains("not built"));
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
        let e = load(&["cache.remote=rediss://h:6380"]).unwrap_err();
        assert!(e.contains("not built"), "{e}");
        let e = load(&["cache.remote.timeout_ms=0"]).unwrap_err();
        assert!(e.contains("timeout_ms"), "{e}");
        let c = load(&[
            "cache.remote=redis://127.0.0.1:6379/1",
            "cache.remote.secret=file:/s",
        ])
        .unwrap();
        assert_eq!(c.cache_remote_timeout_ms, 5);
    }

    fn settings(url: &str, dir: &Path) -> RemoteSettings {
        let secret = dir.join("secret");
        std::fs::write(&secret, [9u8; 40]).unwrap();
        RemoteSettings {
            url: url.into(),
            secret,
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
        assert!(RemoteStore::open(&s).unwrap_err().contains("at least 32"));
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
        let start = Instant::now();
        assert_eq!(store.fetch(b"id", false), Fetched::Unavailable);
        assert!(start.elapsed() < Duration::from_millis(200));
        // Backing off: the next lookup is not even tried.
        assert_eq!(store.fetch(b"id", true), Fetched::Unavailable);
        let c = &store.counters[1];
        assert_eq!(c.gets.load(Ordering::Relaxed), 1);
        assert_eq!(c.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(
            c.errors.load(Ordering::Relaxed) + c.timeouts.load(Ordering::Relaxed),
            1
        );
        // Puts never block; past the queue's capacity they are dropped.
        for i in 0..50u8 {
            store.put(&[i; 32], b"v", super::super::unix_now() + 60);
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
        let start = Instant::now();
        assert_eq!(store.fetch(b"id", false), Fetched::Unavailable);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(50), "took {took:?}");
        assert_eq!(store.counters[1].timeouts.load(Ordering::Relaxed), 1);
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
        let expiry = super::super::unix_now() + 60;
        assert!(store.put(b"id-1", b"session one", expiry));
        assert!(store.put(b"id-2", b"session two", expiry));
        let c = &store.counters[1];
        let wait = Instant::now() + Duration::from_secs(5);
        while c.puts.load(Ordering::Relaxed) < 2 && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        let hit = Fetched::Hit {
            expiry,
            session: b"session one".to_vec(),
        };
        assert_eq!(store.fetch(b"id-1", false), hit);
        assert_eq!(store.fetch(b"id-1", false), hit);
        assert_eq!(store.fetch(b"nope", false), Fetched::Miss);
        // GETDEL: once only.
        assert!(matches!(store.fetch(b"id-2", true), Fetched::Hit { .. }));
        assert_eq!(store.fetch(b"id-2", true), Fetched::Miss);
        // A value moved to another key, or changed, is rejected.
        let Target::Single(client) = &store.target else {
            panic!("not a single Redis")
        };
        let mut conn = client.load().get_connection().unwrap();
        let v: Vec<u8> = redis::cmd("GET")
            .arg(store.keys.redis_key(b"id-1"))
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(store.keys.redis_key(b"id-3"))
            .arg(&v[..])
            .query(&mut conn)
            .unwrap();
        assert_eq!(store.fetch(b"id-3", false), Fetched::Miss);
        let mut bad = v.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let _: () = redis::cmd("SET")
            .arg(store.keys.redis_key(b"id-1"))
            .arg(&bad[..])
            .query(&mut conn)
            .unwrap();
        assert_eq!(store.fetch(b"id-1", false), Fetched::Miss);
        assert_eq!(c.rejected.load(Ordering::Relaxed), 2);
        // The TTL is the session's.
        let ttl: i64 = redis::cmd("TTL")
            .arg(store.keys.redis_key(b"nope-never"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(ttl, -2);
        assert!(store.put(b"id-4", b"x", expiry));
        let wait = Instant::now() + Duration::from_secs(5);
        while c.puts.load(Ordering::Relaxed) < 3 && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ttl: i64 = redis::cmd("TTL")
            .arg(store.keys.redis_key(b"id-4"))
            .query(&mut conn)
            .unwrap();
        assert!((55..=60).contains(&ttl), "ttl {ttl}");
        assert_eq!(c.errors.load(Ordering::Relaxed), 0);
    }
}
