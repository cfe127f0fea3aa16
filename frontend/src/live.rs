//! The running state of the process ([`Live`]): the configuration, the
//! rustls configurations, the upstream pools, the shared cache and ring,
//! and how they change — live keys (`sysctl -w`) and reload (SIGHUP,
//! `tlsfront reload`). Workers read immutable snapshots swapped atomically
//! (arc-swap), so a change reaches every worker at once and a connection
//! never sees half of one. The control socket ([`crate::control`]) is one
//! way in; signals are another.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::config::{Change, Config, KeySourceSpec, LogLevel, KEYS};
use crate::session_cache::SessionCache;
use crate::tickets::{KeySource, TicketKeyRing};
use crate::upstream_pool::Pools;

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
    fn pools_for(&self, next: &Config) -> Result<Option<Pools>, LiveError> {
        if self.pools.load().same_servers(next) {
            return Ok(None);
        }
        Pools::new(next, builtin_responder(&self.builtin))
            .map(Some)
            .map_err(LiveError::Upstream)
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
    pub fn set(&self, assignments: &[&str]) -> Result<String, LiveError> {
        if assignments.is_empty() {
            return Err(LiveError::NothingToSet);
        }
        let mut next = Config::clone(&self.config());
        let mut changed = Vec::new();
        for arg in assignments {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| LiveError::NotAnAssignment(arg.to_string()))?;
            let info = crate::config::key_info(key)
                .ok_or_else(|| LiveError::UnknownKey(key.to_string()))?;
            if let Some(renamed) = crate::config::renamed_key(key) {
                tracing::warn!("sysctl -w {arg}: {}", renamed.warning());
            }
            match info.change {
                Change::Live => {}
                Change::Reload => return Err(LiveError::NeedsReload(key.to_string())),
                Change::Restart => return Err(LiveError::NeedsRestart(key.to_string())),
            }
            next.set(key, value).map_err(|reason| LiveError::BadValue {
                key: key.to_string(),
                reason,
            })?;
            changed.push(key);
        }
        next.validate()?;
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
    pub fn reload(&self) -> Result<String, LiveError> {
        let refused = |e: &dyn std::fmt::Display| LiveError::ReloadRefused(e.to_string());
        let (mut next, warnings) =
            Config::load_warned(self.file.as_deref(), &self.overrides).map_err(|e| refused(&e))?;
        for w in &warnings {
            tracing::warn!("reload: {w}");
        }
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
        for w in warnings {
            summary.push_str(&format!("warning: {w}\n"));
        }
        Ok(summary)
    }
}

/// Why `sysctl -w` or a reload changed nothing; the message is what the
/// control socket answers (after `error: `).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// `sysctl -w` without assignments.
    #[error("nothing to set: give KEY=VALUE")]
    NothingToSet,
    /// An assignment without `=`.
    #[error("{0:?}: expected KEY=VALUE")]
    NotAnAssignment(String),
    /// No such key.
    #[error("key '{0}': unknown key")]
    UnknownKey(String),
    /// A key that changes only on reload.
    #[error("key '{0}': needs reload (change it in the config file, then `tlsfront reload`)")]
    NeedsReload(String),
    /// A key that changes only on restart.
    #[error("key '{0}': needs restart")]
    NeedsRestart(String),
    /// A value the key does not take.
    #[error("key '{key}': {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Keys that are each valid but do not fit together.
    #[error("{0}")]
    Inconsistent(#[from] crate::config::ConfigError),
    /// The upstream servers of the new configuration.
    #[error("upstream: {0}")]
    Upstream(#[source] io::Error),
    /// A reload that found a problem; the running configuration stays.
    #[error("reload refused, still running the previous configuration: {0}")]
    ReloadRefused(String),
}

/// Starts tlsfront's built-in HTTP responder the first time it is asked
/// for, and gives its address.
fn builtin_responder(cell: &Arc<OnceLock<SocketAddr>>) -> impl Fn() -> io::Result<SocketAddr> + '_ {
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
