//! The control socket: a unix stream socket (mode 0600) on which the running
//! process answers one command per connection.
//!
//! Protocol: the client writes one line, the server answers and closes.
//! - `stats`: the counters as JSON ([`crate::metrics::Stats::to_json`]);
//! - `sysctl`: the running configuration, one `key = value` per line;
//! - `set KEY=VALUE...`: changes live keys on every worker at once;
//! - `reload`: re-reads the config file and certificates;
//! - `xdp-link IFNAME PID`: from a `--takeover` successor (pid PID): the
//!   answer carries this process's XDP link on IFNAME as a descriptor
//!   ([`crate::steering::XdpLink::hand_over`]);
//! - `flow CLIENT_IP:PORT[=SERVER_IP]`: the worker the XDP program sends
//!   that client's connection to ([`SteeringControl::flow_worker`]).
//!
//! An answer that starts with `error: ` is a refusal, with the reason.
//!
//! It runs on its own plain thread so that a slow or stuck client of the
//! control socket never delays a worker. [`Live`] is the running
//! configuration the workers read: immutable snapshots swapped atomically
//! (arc-swap), so a change reaches every worker at once and a connection
//! never sees half of one.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::config::{Change, Config, KeySourceSpec, LogLevel, KEYS};
use crate::upstream_pool::Pools;
use crate::metrics::Stats;
use crate::session_cache::SessionCache;
use crate::steering::{SteeringControl, XDP_LINK_COMMAND};
use crate::tickets::{KeySource, TicketKeyRing};

/// Why the control socket could not be served or queried.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another live process already answers on this path.
    #[error("control socket {}: another tlsfront is running there (to replace it, start the new one with --takeover, then stop the old one)", path.display())]
    InUse { path: PathBuf },
    /// An I/O error on the socket at `path`.
    #[error("control socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The answer was not what the protocol promises.
    #[error("control socket {}: unexpected answer: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ControlError + 'a {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The bound control socket; on exit, [`ControlSocket::remove`] deletes
/// the path only if it is still this process's socket (a successor that
/// took it over keeps its own).
pub struct ControlSocket {
    path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the control socket and answers on a background thread.
///
/// A leftover socket file from a process that died is replaced; one on
/// which a process still answers is an error, unless `takeover` (a new
/// process replacing a draining one: the old one keeps its bound socket,
/// the path now leads to the new one).
pub fn serve(
    path: &Path,
    stats: Arc<Stats>,
    live: Arc<Live>,
    takeover: bool,
    steering: Arc<SteeringControl>,
) -> Result<ControlSocket, ControlError> {
    use std::os::unix::fs::MetadataExt;
    if path.exists() {
        if !takeover && UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path, "removing the previous socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path, "chmod 0600"))?;
    let inode = std::fs::symlink_metadata(path)
        .map_err(io_err(path, "stat"))?
        .ino();
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("tlsfront-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &stats, &live, &steering) {
                    debug!("control socket {}: {e}", owned.display());
                }
            }
        })
        .map_err(io_err(path, "starting its thread"))?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
        inode,
    })
}

fn answer(
    stream: UnixStream,
    stats: &Stats,
    live: &Live,
    steering: &SteeringControl,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(1024)
        .read_line(&mut line)?;
    let line = line.trim();
    let (command, args) = line.split_once(' ').unwrap_or((line, ""));
    let reply = match command {
        "stats" => stats.to_json().to_string(),
        "sysctl" => live
            .config()
            .entries()
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect(),
        "set" => match live.set(&args.split_whitespace().collect::<Vec<_>>()) {
            Ok(applied) => applied,
            Err(e) => format!("error: {e}"),
        },
        "reload" => match live.reload() {
            Ok(summary) => summary,
            Err(e) => format!("error: {e}"),
        },
        "flow" => match steering.flow_worker(args) {
            Ok(answer) => answer,
            Err(e) => format!("error: {e}"),
        },
        XDP_LINK_COMMAND => match steering.xdp_link() {
            Some(link) => {
                link.hand_over(&stream, args)?;
                return stream.shutdown(std::net::Shutdown::Write);
            }
            None => "error: no XDP link here (net.steering is not xdp, or it fell back)".into(),
        },
        other => format!("error: unknown command {other:?} (stats, sysctl, set, reload, flow)"),
    };
    let mut stream = stream;
    stream.write_all(reply.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Sends `command` to the process answering on `path`; returns its answer.
pub fn query(path: &Path, command: &str) -> Result<String, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(io_err(path, "connect"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err(path, "set timeout"))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io_err(path, "write"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(io_err(path, "read"))?;
    if let Some(reason) = reply.strip_prefix("error: ") {
        return Err(ControlError::Protocol {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        });
    }
    Ok(reply)
}

/// Queries `stats` and parses the JSON.
pub fn query_stats(path: &Path) -> Result<serde_json::Value, ControlError> {
    let reply = query(path, "stats")?;
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Applies a new log level to the process's subscriber.
pub type LogLevelSetter = Box<dyn Fn(LogLevel) + Send + Sync>;

/// The running configuration and what depends on it.
pub struct Live {
    config: ArcSwap<Config>,
    tls: ArcSwap<ServerConfig>,
    /// The same, issuing at most one TLS 1.3 ticket (for ClientHellos that
    /// offer one to resume).
    tls_resumed: ArcSwap<ServerConfig>,
    file: Option<PathBuf>,
    overrides: Vec<String>,
    cache: Option<Arc<SessionCache>>,
    ring: Option<Arc<TicketKeyRing>>,
    builtin: Arc<OnceLock<SocketAddr>>,
    /// The upstream servers of `config`, with their health.
    pools: ArcSwap<Pools>,
    set_log_level: LogLevelSetter,
    draining: AtomicBool,
}

impl Live {
    /// The state of a process started from `file` and `overrides`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        tls: Arc<ServerConfig>,
        file: Option<PathBuf>,
        overrides: Vec<String>,
        cache: Option<Arc<SessionCache>>,
        ring: Option<Arc<TicketKeyRing>>,
        set_log_level: LogLevelSetter,
    ) -> io::Result<Live> {
        let builtin = Arc::new(OnceLock::new());
        let pools = Pools::new(&config, builtin_responder(&builtin))?;
        Ok(Live {
            config: ArcSwap::from_pointee(config),
            tls_resumed: ArcSwap::new(crate::tls::for_resumption(&tls)),
            tls: ArcSwap::new(tls),
            file,
            overrides,
            cache,
            ring,
            builtin,
            pools: ArcSwap::from_pointee(pools),
            set_log_level,
            draining: AtomicBool::new(false),
        })
    }

    /// The current configuration snapshot: a guard, not a clone of the
    /// `Arc` (workers read it per connection on every core; a reference
    /// count bump each time would make them all write one cache line).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The rustls configuration new connections use.
    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.load_full()
    }

    /// The rustls configuration for a ClientHello that offers a TLS 1.3
    /// ticket: at most one new ticket (see [`crate::tls::for_resumption`]).
    pub fn tls_resumed(&self) -> Arc<ServerConfig> {
        self.tls_resumed.load_full()
    }

    /// The shared session cache, if on.
    pub fn cache(&self) -> Option<&Arc<SessionCache>> {
        self.cache.as_ref()
    }

    /// The built-in responder's address, if it was started
    /// (`upstream.addr = builtin`).
    pub fn builtin_upstream(&self) -> Option<SocketAddr> {
        self.builtin.get().copied()
    }

    /// Where new connections' plaintext goes.
    pub fn pools(&self) -> arc_swap::Guard<Arc<Pools>> {
        self.pools.load()
    }

    /// The pools of `next`, if its servers differ from the running ones
    /// (the running pools, and what they learnt of their servers' health,
    /// stay otherwise).
    fn pools_for(&self, next: &Config) -> Result<Option<Pools>, String> {
        if self.pools.load().same_servers(next) {
            return Ok(None);
        }
        Pools::new(next, builtin_responder(&self.builtin))
            .map(Some)
            .map_err(|e| format!("upstream: {e}"))
    }

    /// True once SIGTERM asked the workers to stop accepting.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the process as draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `sysctl -w`: sets live keys, all or none. Returns the new values.
    pub fn set(&self, assignments: &[&str]) -> Result<String, String> {
        if assignments.is_empty() {
            return Err("nothing to set: give KEY=VALUE".into());
        }
        let mut next = Config::clone(&self.config());
        let mut changed = Vec::new();
        for arg in assignments {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("{arg:?}: expected KEY=VALUE"))?;
            let info = crate::config::key_info(key)
                .ok_or_else(|| format!("key '{key}': unknown key"))?;
            match info.change {
                Change::Live => {}
                Change::Reload => {
                    return Err(format!(
                        "key '{key}': needs reload (change it in the config file, then `tlsfront reload`)"
                    ))
                }
                Change::Restart => return Err(format!("key '{key}': needs restart")),
            }
            next.set(key, value)
                .map_err(|e| format!("key '{key}': {e}"))?;
            changed.push(key);
        }
        next.validate().map_err(|e| e.to_string())?;
        let pools = self.pools_for(&next)?;
        self.apply_live(&next);
        if let Some(pools) = pools {
            self.pools.store(Arc::new(pools));
        }
        self.config.store(Arc::new(next));
        let config = self.config();
        Ok(changed
            .iter()
            .map(|k| format!("{k} = {}\n", config.get(k).unwrap_or_default()))
            .collect())
    }

    /// Pushes the live keys of `config` into the components that hold
    /// their own copy.
    fn apply_live(&self, config: &Config) {
        (self.set_log_level)(config.log_level);
        if let Some(ring) = &self.ring {
            ring.set_rotate_secs(config.ticket_rotate.0.as_secs());
        }
        if let Some(cache) = &self.cache {
            cache.set_timeout_secs(config.cache_timeout.0.as_secs());
        }
    }

    /// `reload` / SIGHUP: re-reads the config file (and the `-o` overrides
    /// given at start), certificates and the ticket secret. An invalid file
    /// changes nothing. Keys that need a restart keep their running value,
    /// and the answer says so.
    pub fn reload(&self) -> Result<String, String> {
        let mut next = Config::load(self.file.as_deref(), &self.overrides).map_err(|e| {
            format!("reload refused, still running the previous configuration: {e}")
        })?;
        let current = self.config();
        let mut kept = Vec::new();
        for info in KEYS.iter().filter(|k| k.change == Change::Restart) {
            let (old, new) = (current.get(info.name), next.get(info.name));
            if old != new {
                kept.push(format!(
                    "{} (running {}, file says {})",
                    info.name,
                    old.clone().unwrap_or_default(),
                    new.unwrap_or_default()
                ));
                if let Some(old) = old {
                    // The running value came from this very table.
                    let _ = next.set(info.name, &old);
                }
            }
        }
        // Everything is read and checked before anything is applied: a
        // refused reload must leave every ticket key as it was.
        let refused = |e: &dyn std::fmt::Display| {
            format!("reload refused, still running the previous configuration: {e}")
        };
        let new_source = match (&self.ring, &next.ticket_source) {
            (Some(_), KeySourceSpec::File(path)) => {
                Some(KeySource::from_file(path).map_err(|e| refused(&e))?)
            }
            (Some(_), KeySourceSpec::Random) if current.ticket_source != KeySourceSpec::Random => {
                Some(KeySource::Random)
            }
            _ => None,
        };
        let (tls, _) = crate::tls::server_config(&next, self.cache.clone(), self.ring.clone())
            .map_err(|e| refused(&e))?;
        let pools = self.pools_for(&next).map_err(|e| refused(&e))?;
        if let (Some(ring), Some(source)) = (&self.ring, new_source) {
            ring.set_source(source);
        }
        self.apply_live(&next);
        self.tls_resumed.store(crate::tls::for_resumption(&tls));
        self.tls.store(tls);
        if let Some(pools) = pools {
            self.pools.store(Arc::new(pools));
        }
        self.config.store(Arc::new(next));
        let mut summary = String::from("reloaded: new connections use the new configuration\n");
        for k in kept {
            summary.push_str(&format!("needs restart, kept: {k}\n"));
        }
        Ok(summary)
    }
}

/// Starts tlsfront's built-in HTTP responder the first time it is asked
/// for, and gives its address.
fn builtin_responder(
    cell: &Arc<OnceLock<SocketAddr>>,
) -> impl Fn() -> io::Result<SocketAddr> + '_ {
    move || {
        if let Some(addr) = cell.get() {
            return Ok(*addr);
        }
        let addr = crate::upstream::start_builtin()?;
        // Two racing first users may both start one; the loser's
        // responder simply goes unused.
        Ok(*cell.get_or_init(|| addr))
    }
}

/// Asks the process behind `path` to set live keys.
pub fn set_remote(path: &Path, assignments: &[String]) -> Result<String, ControlError> {
    query(path, &format!("set {}", assignments.join(" ")))
}
