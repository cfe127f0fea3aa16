//! The process `tlsfront run` starts, assembled: logging, the shared files
//! (session cache, ticket ring), the rustls configuration, the listeners
//! and the eBPF steering, the running state and its control socket, the
//! privilege drop, the workers, the signals, the start-up summary.
//! `main.rs` only parses the command line and calls [`run`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigValue, KeySourceSpec, Tls13Mode, Upstream, KEYS};
use crate::control;
use crate::live::{Live, LogLevelSetter};
use crate::metrics::{PerWorkerCounters, Stats};
use crate::session_cache::{Opened, SessionCache};
// The error types a `StartError` carries whose modules are crate-internal,
// re-exported so that a caller can name (and match on) what `source()` gives.
pub use crate::shm::ShmError;
pub use crate::steering::SteeringError;
use crate::tickets::{KeySource, TicketKeyRing};
use crate::tls::CertSource;
pub use crate::worker::WorkerError;
use crate::{tls, worker};

/// Log lines queued for stderr at most; beyond that they are dropped and
/// counted (`tlsfront_log_lines_dropped_total`), so that a slow journald
/// pipe or a flood of failures never blocks a worker.
const LOG_QUEUE_LINES: usize = 16_384;

/// Why the process could not start (or a worker died): one type for the
/// assembly layer, each variant with what the layer below said.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The session cache file.
    #[error("session cache (cache.path, cache.size): {0}")]
    Cache(#[source] crate::session_cache::CacheError),
    /// The ticket ring or its key source.
    #[error("{0}")]
    Tickets(#[from] crate::tickets::TicketError),
    /// The private directory of the shared files.
    #[error("{0}")]
    SharedFiles(#[from] ShmError),
    /// Certificates, keys, the rustls configuration.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Binding the listeners or starting the workers.
    #[error("{0}")]
    Workers(#[from] WorkerError),
    /// The control socket.
    #[error("{0}")]
    Control(#[from] control::ControlError),
    /// `cache.remote`.
    #[error("{0}")]
    Remote(#[from] crate::session_cache::remote::RemoteError),
    /// `net.steering` with `net.steering.fallback = fail`.
    #[error("{0}")]
    Steering(#[from] SteeringError),
    /// The upstream servers (a unix path too long, the built-in responder).
    #[error("upstream.addr: {0}")]
    Upstream(#[source] std::io::Error),
    /// `metrics.listen`.
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        /// The address it was to listen on.
        addr: std::net::SocketAddr,
        /// What binding it said.
        source: std::io::Error,
    },
    /// `process.user`: looking the user up, handing it the files, becoming it.
    #[error("process.user {user}: {what}")]
    User {
        /// The user.
        user: String,
        /// What failed, with the OS's word.
        what: String,
    },
    /// Another process already listens on a `net.listen` address.
    #[error("{0}")]
    InUse(String),
    /// An OS facility the process needs (signals, duplicating a socket).
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

/// What `run` takes besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file it was loaded from (re-read on reload).
    pub file: Option<PathBuf>,
    /// The `-o` overrides (re-applied on reload).
    pub overrides: Vec<String>,
    /// `--takeover`: replace the process on the same control socket.
    pub takeover: bool,
}

/// Installs the logger: lines go through a bounded queue to a writer
/// thread. The guard flushes the queue when dropped (at the end of `run`).
/// Logging to stderr whose level `sysctl -w log.level=…` can change.
fn init_logging(config: &Config) -> (LogLevelSetter, tracing_appender::non_blocking::WorkerGuard) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("tlsfront-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    crate::metrics::set_log_lines_dropped(Box::new(move || dropped.dropped_lines() as u64));
    let level = LevelFilter::from_level(config.log_level.as_tracing());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(level);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false),
        )
        .init();
    let setter: LogLevelSetter = Box::new(move |level| {
        let _ = handle.modify(|f| *f = LevelFilter::from_level(level.as_tracing()));
    });
    (setter, guard)
}

fn open_cache(
    config: &Config,
    workers: usize,
) -> Result<Option<(Arc<SessionCache>, Opened)>, StartError> {
    if !config.cache_enabled {
        return Ok(None);
    }
    let path = config.cache_path();
    let (cache, opened) = SessionCache::open(
        &path,
        config.cache_size.0,
        config.cache_timeout.0.as_secs(),
        workers,
    )
    .map_err(StartError::Cache)?;
    match &opened {
        Opened::Reused => tracing::info!("session cache {}: reusing its sessions", path.display()),
        Opened::Created => tracing::info!("session cache {}: created", path.display()),
        Opened::Rebuilt(why) => tracing::warn!(
            "session cache {}: rebuilt, its sessions are lost: {why}",
            path.display()
        ),
    }
    crate::session_cache::remote::attach_configured(&cache, config, workers)?;
    Ok(Some((Arc::new(cache), opened)))
}

fn open_ring(
    config: &Config,
    workers: usize,
) -> Result<Option<(Arc<TicketKeyRing>, Opened)>, StartError> {
    if !config.tickets_enabled || config.tls13_mode != Tls13Mode::Stateless {
        return Ok(None);
    }
    let source = match &config.ticket_source {
        KeySourceSpec::Random => KeySource::Random,
        KeySourceSpec::File(p) => KeySource::from_file(p)?,
    };
    let path = config.tickets_path();
    let (ring, opened) = TicketKeyRing::open(
        &path,
        config.ticket_keys as usize,
        config.ticket_rotate.0.as_secs(),
        source,
        workers,
    )?;
    if let Opened::Rebuilt(why) = &opened {
        tracing::warn!(
            "ticket ring {}: rebuilt, earlier tickets are lost: {why}",
            path.display()
        );
    }
    Ok(Some((Arc::new(ring), opened)))
}

fn describe_opened(opened: &Opened, kept: &'static str) -> &'static str {
    match opened {
        Opened::Reused => kept,
        Opened::Created => "new",
        Opened::Rebuilt(_) => "rebuilt",
    }
}

/// Before any shared file is opened: trusts the files of `process.user`
/// (a restart as root finds those its predecessor, already that user,
/// made), makes the private directory of the `auto` paths, and warns about
/// shared files off tmpfs.
fn prepare_shared_files(config: &Config) -> Result<(), StartError> {
    if let Some(user) = &config.process_user.0 {
        let entry = lookup_user(user)?;
        crate::shm::trust_owner(entry.uid.as_raw());
    }
    if config.uses_runtime_dir() {
        let dir = config.runtime_dir();
        crate::shm::ensure_private_dir(&dir)?;
    }
    let mut shared = Vec::new();
    if config.cache_enabled {
        shared.push(("cache.path", config.cache_path()));
    }
    if config.tickets_enabled && config.tls13_mode == Tls13Mode::Stateless {
        shared.push(("tickets.path", config.tickets_path()));
    }
    for (key, path) in shared {
        if !crate::shm::on_tmpfs(&path) {
            tracing::warn!(
                "{key} {}: not on a tmpfs: the shared file is written back to a disk (slower, and {}); /dev/shm is one",
                path.display(),
                if key == "tickets.path" { "the ticket keys reach the disk" } else { "sessions reach the disk" }
            );
        }
    }
    Ok(())
}

/// `tlsfront run`: starts everything `config` says, serves until SIGTERM
/// (then drains), and returns when the workers have stopped.
pub fn run(config: Config, args: &RunOptions) -> Result<(), StartError> {
    let (set_log_level, _log_guard) = init_logging(&config);
    let count = config.workers.resolve();
    prepare_shared_files(&config)?;
    let cache = open_cache(&config, count)?;
    let ring = open_ring(&config, count)?;
    let sessions = cache.as_ref().map(|(c, _)| Arc::clone(c));
    let tickets = ring.as_ref().map(|(r, _)| Arc::clone(r));
    let (server_config, cert_source) =
        tls::server_config(&config, sessions.clone(), tickets.clone())?;

    if !args.takeover {
        for &addr in &config.listen.0 {
            refuse_if_listening(addr)?;
        }
    }
    // by_address[address][worker]
    let by_address = worker::bind_listeners(&config.listen.0, count, config.backlog)?;
    if config.migrate_requests {
        enable_request_migration();
    }
    // Duplicates of the listening sockets, to shut them down on SIGTERM
    // while the workers own the originals.
    let shutters = by_address
        .iter()
        .flatten()
        .map(|l| l.try_clone().map(socket2::Socket::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StartError::Os {
            what: "duplicating a listening socket",
            source,
        })?;
    let cpus = worker::plan_cpus(count, config.pin_cpus);
    // Kept until run() returns: dropping it removes XDP and SK_REUSEPORT.
    // An upgrade takes the XDP link over from the process answering on the
    // control socket (before this one replaces the socket).
    let socket = config.control_socket_path();
    let steering_handle = crate::steering::setup(
        &config,
        &by_address,
        &cpus,
        args.takeover.then_some(socket.as_path()),
    )?;
    let steering = steering_handle.description().to_string();
    let mut sources: Vec<Arc<dyn PerWorkerCounters>> = Vec::new();
    sources.extend(steering_handle.counters());
    if let Some(c) = &sessions {
        sources.push(Arc::clone(c) as Arc<dyn PerWorkerCounters>);
    }
    if let Some(r) = &tickets {
        sources.push(Arc::clone(r) as Arc<dyn PerWorkerCounters>);
    }
    let stats = Arc::new(Stats::new(&cpus, sources));
    let live = Arc::new(
        Live::new(
            config.clone(),
            server_config,
            args.file.clone(),
            args.overrides.clone(),
            sessions,
            tickets,
            set_log_level,
        )
        .map_err(StartError::Upstream)?,
    );
    let upstream_addr = live.builtin_upstream();
    let control_socket = control::serve(
        &socket,
        Arc::clone(&stats),
        Arc::clone(&live),
        args.takeover,
        steering_handle.control(),
    )?;
    handle_signals(Arc::clone(&live), shutters)?;
    let metrics_line = match config.metrics_listen.0 {
        Some(addr) => {
            let bound = crate::metrics::serve_prometheus(addr, Arc::clone(&stats))
                .map_err(|source| StartError::Metrics { addr, source })?;
            format!("http://{bound}/metrics (Prometheus)")
        }
        None => "off (metrics.listen)".to_string(),
    };
    // Everything that needs privileges is done: the port is bound, eBPF
    // attached, the shared files and sockets made.
    let privileges = match &config.process_user.0 {
        Some(user) => {
            let mut owned = vec![socket.clone()];
            if config.uses_runtime_dir() {
                owned.push(config.runtime_dir());
            }
            owned.extend(cache.as_ref().map(|(c, _)| c.path().to_path_buf()));
            owned.extend(ring.as_ref().map(|(r, _)| r.path().to_path_buf()));
            owned.extend(
                ring.as_ref()
                    .map(|(r, _)| crate::shm::sibling(r.path(), ".users")),
            );
            drop_privileges(user, &owned)?;
            format!("running as {user}, no capabilities kept")
        }
        None => "unchanged (process.user not set)".to_string(),
    };
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..count).map(|_| Vec::new()).collect();
    for group in by_address {
        for (worker, listener) in group.into_iter().enumerate() {
            per_worker[worker].push(listener);
        }
    }
    let handles = worker::start(per_worker, Arc::clone(&live), Arc::clone(&stats))?;

    let cache_line = match &cache {
        Some((c, opened)) => format!(
            "{} ({} sessions, {}s; {}){}",
            c.path().display(),
            c.capacity(),
            config.cache_timeout.0.as_secs(),
            describe_opened(opened, "sessions kept from before"),
            crate::session_cache::remote::describe(c)
        ),
        None => "off".to_string(),
    };
    let tickets_line = match &ring {
        Some((r, opened)) => format!(
            "{} keys, rotated every {}s, {}, shared ring {} ({}); ticket lifetime {}s",
            config.ticket_keys,
            r.rotate_secs(),
            config.ticket_source.render(),
            r.path().display(),
            describe_opened(opened, "keys kept from before"),
            r.lifetime_secs()
        ),
        None if config.tls13_mode == Tls13Mode::Stateful => {
            "off: TLS 1.3 resumes statefully through the session cache, TLS 1.2 by session ID"
                .to_string()
        }
        None => "off".to_string(),
    };
    print_summary(
        &config,
        &cpus,
        &cert_source,
        upstream_addr,
        &socket,
        &steering,
        &[
            ("session cache", cache_line),
            ("tickets", tickets_line),
            ("metrics", metrics_line),
            ("privileges", privileges),
        ],
    );
    let mut panicked = false;
    for handle in handles {
        panicked |= handle.join().is_err();
    }
    control_socket.remove();
    if panicked {
        return Err(StartError::WorkerPanicked);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The account of `process.user`.
fn lookup_user(user: &str) -> Result<nix::unistd::User, StartError> {
    let failed = |what: String| StartError::User {
        user: user.to_string(),
        what,
    };
    nix::unistd::User::from_name(user)
        .map_err(|e| failed(format!("looking it up: {e}")))?
        .ok_or_else(|| failed("no such user".to_string()))
}

/// Hands the shared files (and their lock files) to `user`, then becomes
/// that user: groups, gid, uid. A process that was root keeps no
/// capability after `setuid` (no PR_SET_KEEPCAPS).
fn drop_privileges(user: &str, owned: &[PathBuf]) -> Result<(), StartError> {
    use nix::unistd::{setgid, setgroups, setuid};
    let entry = lookup_user(user)?;
    if nix::unistd::geteuid() == entry.uid {
        // Restarted as that user already (systemd User=, runuser): nothing
        // to drop, and setgroups would fail without privileges.
        tracing::info!("process.user {user}: already running as uid {}", entry.uid);
        return Ok(());
    }
    for path in owned {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        for p in [path.clone(), PathBuf::from(lock)] {
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(entry.uid.as_raw()), Some(entry.gid.as_raw()))
                    .map_err(|e| StartError::User {
                        user: user.to_string(),
                        what: format!("chown {}: {e}", p.display()),
                    })?;
            }
        }
    }
    setgroups(&[entry.gid]).map_err(|e| StartError::User {
        user: user.to_string(),
        what: format!("setgroups: {e}"),
    })?;
    setgid(entry.gid).map_err(|e| StartError::User {
        user: user.to_string(),
        what: format!("setgid: {e}"),
    })?;
    setuid(entry.uid).map_err(|e| StartError::User {
        user: user.to_string(),
        what: format!("setuid: {e}"),
    })?;
    tracing::info!("privileges dropped: running as {user} (uid {})", entry.uid);
    Ok(())
}

/// SO_REUSEPORT would let a second tlsfront silently share the address with
/// a running one; only `--takeover` (an upgrade) may do that.
fn refuse_if_listening(addr: std::net::SocketAddr) -> Result<(), StartError> {
    let probe = if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(loopback, addr.port())
    } else {
        addr
    };
    match std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(300)) {
        Ok(_) => Err(StartError::InUse(format!(
            "net.listen {addr}: something already listens there; to replace a running tlsfront start the new one with --takeover (see scripts/upgrade.sh)"
        ))),
        Err(_) => Ok(()),
    }
}

/// Lets the kernel move connections waiting in a closing listener's queue
/// to another listener of the same SO_REUSEPORT group (Linux 5.14+), so
/// that a process draining for an upgrade refuses nothing.
fn enable_request_migration() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(PATH, "1") {
            Ok(()) => tracing::info!("{PATH} set to 1: a draining process hands its queued connections over"),
            Err(e) => tracing::warn!(
                "cannot set {PATH} to 1 ({e}): connections queued at a draining process may be reset; set it as root"
            ),
        },
        Err(e) => tracing::warn!("{PATH}: {e}: this kernel cannot migrate queued connections"),
    }
}

/// SIGHUP reloads; SIGTERM and SIGINT drain: the listening sockets are shut
/// down (pending accepts end, the workers stop accepting) and each worker
/// waits for its connections up to `worker.drain_timeout`.
fn handle_signals(live: Arc<Live>, listeners: Vec<socket2::Socket>) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(|source| {
            StartError::Os {
                what: "installing signal handlers",
                source,
            }
        })?;
    std::thread::Builder::new()
        .name("tlsfront-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match live.reload() {
                        Ok(summary) => tracing::info!("SIGHUP: {}", summary.trim_end()),
                        Err(e) => tracing::error!("SIGHUP: {e}"),
                    }
                    continue;
                }
                if live.draining() {
                    continue;
                }
                tracing::info!(
                    "signal {signal}: draining, no new connections; open ones get up to {:?}",
                    live.config().drain_timeout.0
                );
                live.start_draining();
                for listener in &listeners {
                    let _ = listener.shutdown(std::net::Shutdown::Read);
                }
            }
        })
        .map_err(|source| StartError::Os {
            what: "starting the signal thread",
            source,
        })?;
    Ok(())
}

fn print_summary(
    config: &Config,
    cpus: &[Option<usize>],
    cert: &CertSource,
    upstream_addr: Option<std::net::SocketAddr>,
    socket: &std::path::Path,
    steering: &str,
    resumption: &[(&str, String)],
) {
    let addr = config.listen.first();
    let listening = config
        .listen
        .0
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let versions = config.protocols.render().replace(',', ", ");
    let pinned: Vec<String> = cpus.iter().flatten().map(|c| c.to_string()).collect();
    let pinning = if pinned.is_empty() {
        "not pinned".to_string()
    } else {
        format!("pinned to CPUs {}", pinned.join(","))
    };
    let cert = match cert {
        CertSource::Files(p) => p.display().to_string(),
        CertSource::SelfSigned => "self-signed for localhost (generated at start)".to_string(),
    };
    let upstream = match (&config.upstream, upstream_addr) {
        (Upstream::Builtin, Some(addr)) => format!("built-in HTTP responder on {addr}"),
        (other, _) => other.render(),
    };
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let port = addr.port();
    let summary = format!(
        "tlsfront {version}
  listening on   {listening} (TLS {versions})
  workers        {count} ({pinning})
  steering       {steering}
  certificate    {cert}
  upstream       {upstream}
{resumption}  control socket {socket}
  {keys} keys: tlsfront sysctl -a --socket {socket}; counters: tlsfront stats --socket {socket}
try:
  curl -k https://{host}:{port}/
  openssl s_client -connect {host}:{port} -tls1_2 -reconnect </dev/null   (1 New, 5 Reused)
tlsfront: ready
",
        version = env!("CARGO_PKG_VERSION"),
        count = cpus.len(),
        socket = socket.display(),
        keys = KEYS.len(),
        resumption = resumption
            .iter()
            .map(|(k, v)| format!("  {k:<14} {v}\n"))
            .collect::<String>(),
    );
    let mut stdout = std::io::stdout().lock();
    // stdout going away (a closed pipe) must not stop the server.
    let _ = stdout.write_all(summary.as_bytes());
    let _ = stdout.flush();
}
