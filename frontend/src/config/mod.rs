//! Sysctl-style configuration: `key = value` lines, `#` comments.
//!
//! [`KEYS`] is the single source of truth: every key's name, type, default,
//! whether it can change at run time and its one-line doc are written once,
//! in the `config_keys!` table below. Parsing, `-o key=value` overrides,
//! `tlsfront sysctl -a` and the reference page `docs/config.md` are all
//! derived from it.

mod values;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use values::{
    AutoPath, ConfigValue, Duration, KeySourceSpec, List, LogLevel, OptAddr, OptPath, OptUser,
    Protocols, ProxyProtocol, Size, Steering, Tls13Mode, Upstream, WorkerCount,
};
pub use values::{ClientAuth, Interface, SteeringFallback, XdpMode};

/// Description of one configuration key, as listed by `sysctl -a` and in
/// `docs/config.md`.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// Dotted key name, e.g. `net.listen`.
    pub name: &'static str,
    /// Human description of the accepted values.
    pub kind: &'static str,
    /// Default, in the same syntax a config file uses.
    pub default: &'static str,
    /// How a new value reaches a running process.
    pub change: Change,
    /// One-line documentation.
    pub doc: &'static str,
}

/// How a key's new value reaches a running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `tlsfront sysctl -w` applies it at once, to every worker.
    Live,
    /// Edit the file, then `tlsfront reload` (or SIGHUP): new connections
    /// use it, open ones keep what they had.
    Reload,
    /// Only a restart applies it.
    Restart,
}

impl Change {
    /// The word the reference page uses.
    pub fn describe(self) -> &'static str {
        match self {
            Change::Live => "live (sysctl -w)",
            Change::Reload => "reload",
            Change::Restart => "restart",
        }
    }
}

/// Why a configuration could not be used. Every variant names where the
/// problem is (file and line, or the `-o` argument) and which key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A line of a file names a key whose value is wrong, or no such key.
    #[error("{}:{line}: key '{key}': {reason}", path.display())]
    Key {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    /// A line of a file that is not `key = value`.
    #[error("{}:{line}: expected `key = value`, found {text:?}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    /// A `-o key=value` override with a bad key or value.
    #[error("-o {arg}: key '{key}': {reason}")]
    Override {
        arg: String,
        key: String,
        reason: String,
    },
    /// A `-o` argument that is not `key=value`.
    #[error("-o {arg}: expected key=value")]
    OverrideSyntax { arg: String },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Keys that are each valid but do not fit together.
    #[error("key '{key}': {reason}")]
    Inconsistent { key: String, reason: String },
}

/// An extra certificate chosen by SNI: `tls.sni.<name>.cert` / `.key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniCert {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// DER OCSP response stapled with `cert` (`tls.sni.<name>.ocsp`).
    pub ocsp: Option<PathBuf>,
}

/// Keys of the form `tls.sni.<name>.cert|key|ocsp`; documented beside [`KEYS`].
pub const SNI_KEYS: &[KeyInfo] = &[
    KeyInfo {
        name: "tls.sni.<name>.cert",
        kind: "path",
        default: "",
        change: Change::Reload,
        doc: "Certificate chain (PEM) served to clients that ask for server name <name>.",
    },
    KeyInfo {
        name: "tls.sni.<name>.key",
        kind: "path",
        default: "",
        change: Change::Reload,
        doc: "Private key (PEM) for tls.sni.<name>.cert.",
    },
    KeyInfo {
        name: "tls.sni.<name>.ocsp",
        kind: "path",
        default: "",
        change: Change::Reload,
        doc: "OCSP response (DER) stapled with tls.sni.<name>.cert, as tls.ocsp is with tls.cert.",
    },
];

macro_rules! config_keys {
    ($( $field:ident : $ty:ty = $default:literal, $key:literal, change = $rt:ident, $doc:literal; )*) => {
        /// The effective configuration: one typed field per key of [`KEYS`],
        /// plus the per-name SNI certificates.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( #[doc = $doc] pub $field: $ty, )*
            /// Certificates by server name (`tls.sni.<name>.cert|key`).
            pub sni: BTreeMap<String, SniCert>,
        }

        /// Every fixed key, in the order `sysctl -a` prints them.
        pub const KEYS: &[KeyInfo] = &[
            $( KeyInfo {
                name: $key,
                kind: <$ty as ConfigValue>::KIND,
                default: $default,
                change: Change::$rt,
                doc: $doc,
            }, )*
        ];

        impl Default for Config {
            fn default() -> Self {
                Config {
                    // The defaults are literals of this table; the test
                    // `every_default_parses` proves each one parses.
                    $( $field: <$ty as ConfigValue>::parse($default)
                        .expect(concat!("built-in default of ", $key)), )*
                    sni: BTreeMap::new(),
                }
            }
        }

        impl Config {
            fn set_fixed(&mut self, key: &str, raw: &str) -> Option<Result<(), String>> {
                match key {
                    $( $key => Some(<$ty as ConfigValue>::parse(raw).map(|v| self.$field = v)), )*
                    _ => None,
                }
            }

            fn get_fixed(&self, key: &str) -> Option<String> {
                match key {
                    $( $key => Some(self.$field.render()), )*
                    _ => None,
                }
            }
        }
    };
}

config_keys! {
    listen: std::net::SocketAddr = "127.0.0.1:8443", "net.listen", change = Restart,
        "Address and port the TLS listeners bind (every worker binds it with SO_REUSEPORT).";
    migrate_requests: bool = "1", "net.migrate_requests", change = Restart,
        "Set net.ipv4.tcp_migrate_req = 1 at start (needs root), so connections queued at a draining process move to its successor.";
    backlog: u32 = "1024", "net.backlog", change = Restart,
        "Listen backlog of each worker's socket.";
    steering: Steering = "none", "net.steering", change = Restart,
        "How connections reach workers: none = the kernel's SO_REUSEPORT hash; reuseport = an SK_REUSEPORT program gives each connection to the worker pinned to the CPU that handles its SYN; xdp = an XDP program on net.xdp.interface first moves each connection to a worker's CPU (hash of its addresses and ports, CPUMAP), plus reuseport. Needs CAP_BPF and CAP_NET_ADMIN.";
    steering_fallback: SteeringFallback = "reuseport", "net.steering.fallback", change = Restart,
        "When net.steering cannot be set up (no privileges, no kernel support): reuseport = try reuseport, then none; none = use none; fail = stop with an error. The start-up summary says what is in effect.";
    xdp_interface: Interface = "", "net.xdp.interface", change = Restart,
        "Interface the XDP program attaches to (net.steering = xdp); the one the clients' packets arrive on.";
    xdp_mode: XdpMode = "auto", "net.xdp.mode", change = Restart,
        "XDP attach mode: native (driver), generic (skb, any interface), or auto = native if the driver has it, else generic.";
    xdp_queue_size: u32 = "2048", "net.xdp.queue_size", change = Restart,
        "Frames queued per CPU in the CPUMAP between the receiving CPU and a worker's CPU (1 to 16384).";
    workers: WorkerCount = "auto", "worker.count", change = Restart,
        "Number of workers (threads, one io_uring each); auto = one per online CPU.";
    drain_secs: Duration = "30s", "worker.drain_secs", change = Live,
        "On SIGTERM: stop accepting, then wait this long for open connections to finish before closing them.";
    pin_cpus: bool = "1", "worker.pin_cpus", change = Restart,
        "Pin worker n to the n-th online CPU (1) or let the scheduler move them (0).";
    rx_buffers: u32 = "128", "worker.rx_buffers", change = Restart,
        "Receive buffers per worker in its io_uring provided-buffer ring (a power of two, 1 to 32768); a receive takes one only when data arrives, and gives it back before the next, so this bounds the receives completing in one loop turn, not the connections.";
    rx_buffer_size: Size = "64k", "worker.rx_buffer_size", change = Restart,
        "Size of each receive buffer (1k to 1m): the most one receive reads. 64k holds four full TLS records, so few records are split across receives.";
    cert: OptPath = "", "tls.cert", change = Reload,
        "Default certificate chain (PEM); empty = a self-signed certificate for localhost made at start.";
    key: OptPath = "", "tls.key", change = Reload,
        "Private key (PEM: PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519) of tls.cert.";
    alpn: List = "", "tls.alpn", change = Reload,
        "ALPN protocols offered, in preference order, comma-separated (e.g. h2,http/1.1); empty = no ALPN.";
    ocsp: OptPath = "", "tls.ocsp", change = Reload,
        "OCSP response (DER, as `openssl ocsp -respout` writes it) stapled with tls.cert; re-read on reload. One for another certificate (serial number or issuer), past its nextUpdate or not successful is not stapled, and a warning names the file and why; empty = no stapling.";
    client_ca: OptPath = "", "tls.client_ca", change = Reload,
        "CA certificates (PEM bundle) that client certificates must chain to (tls.client_auth).";
    client_auth: ClientAuth = "none", "tls.client_auth", change = Reload,
        "Ask clients for a certificate: none; optional = clients without one are served, one that does not verify against tls.client_ca is refused; required = only clients with a verified certificate are served. A session resumes only under the same tls.client_auth and tls.client_ca it was made under, so one without a verified certificate never resumes into required.";
    protocols: Protocols = "1.2,1.3", "tls.protocols", change = Reload,
        "TLS versions accepted, comma-separated, from 1.2 and 1.3.";
    upstream: Upstream = "builtin", "upstream.addr", change = Live,
        "Where plaintext goes: IP:PORT, or builtin = a tiny HTTP responder inside tlsfront on a loopback port.";
    proxy_protocol: ProxyProtocol = "0", "upstream.proxy_protocol", change = Live,
        "Send the client's address to the upstream first: 0 = no, 1 = PROXY protocol v1 (text), 2 = v2 (binary).";
    connect_timeout: Duration = "5s", "upstream.connect_timeout", change = Live,
        "How long to wait for the upstream to accept before closing the client.";
    buffer_size: Size = "64k", "proxy.buffer_size", change = Live,
        "Bytes buffered per connection and direction before reading from that side pauses (backpressure).";
    max_connections: u32 = "0", "limits.max_connections", change = Live,
        "Open connections per worker beyond which new ones are closed at accept (total = this x worker.count); 0 = no limit.";
    handshake_timeout: Duration = "10s", "limits.handshake_timeout_secs", change = Live,
        "A client that has not completed its TLS handshake by then is closed (slowloris).";
    idle_timeout: Duration = "300s", "limits.idle_timeout_secs", change = Live,
        "A connection with no byte moving either way for this long is closed.";
    cache_enabled: bool = "1", "cache.enabled", change = Restart,
        "Keep TLS 1.2 session IDs and TLS 1.3 stateful tickets in the shared session cache (0 = no server-side sessions).";
    cache_path: AutoPath = "auto", "cache.path", change = Restart,
        "The shared cache file (mode 0600, space reserved at start, best on tmpfs); auto = /dev/shm/tlsfront-<uid>/<port>.cache, in a 0700 directory of the user tlsfront runs as (process.user, else the starting user).";
    cache_size: Size = "64m", "cache.size", change = Restart,
        "Size of the cache file; fixed, it never grows (512 bytes per session).";
    cache_timeout: Duration = "300s", "cache.timeout_secs", change = Live,
        "How long a cached session can be resumed (like nginx's ssl_session_timeout).";
    cache_remote: crate::session_cache::remote::RemoteUrl = "", "cache.remote", change = Restart,
        "A Redis shared by a fleet (redis://HOST:PORT[/DB], redis://:PASSWORD@HOST:PORT, redis+unix:///PATH) as a second tier behind the local cache, so sessions resume on any host behind a load balancer; empty = off. A Redis Cluster: redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...] (seed nodes; each lookup goes to the node owning its key's slot, with cache.remote.timeout_ms as connect and reply timeout, no retries). TLS: rediss://HOST:PORT (verified against cache.remote.ca or the system's roots). An ACL user: redis://USER:PASSWORD@HOST:PORT (never shown by sysctl -a or in logs). Values are sealed with cache.remote.secret. Lookups run on a thread of their own, never on a worker.";
    cache_remote_secret: crate::session_cache::remote::RemoteSecret = "", "cache.remote.secret", change = Restart,
        "file:PATH of a secret of 32+ bytes shared by the fleet (like tickets.key_source): seals the sessions kept in cache.remote and names their keys. Required with cache.remote.";
    cache_remote_ca: OptPath = "", "cache.remote.ca", change = Restart,
        "PEM file of the CA that signs Redis's certificate, for rediss:// (the server's name or address is verified against it); empty = the system's trusted roots.";
    cache_remote_timeout_ms: u32 = "20", "cache.remote.timeout_ms", change = Restart,
        "Longest a handshake waits for cache.remote after a local miss, in milliseconds (1 to 1000); past it the handshake goes on as a full one. Only that handshake waits: other connections of the worker never do, so the budget can cover a loaded host's scheduling as well as Redis's round trip.";
    cache_remote_queue: u32 = "4096", "cache.remote.queue", change = Restart,
        "Writes to cache.remote that may wait at once (they are pipelined by the Redis thread, never by a handshake); past it new sessions are not written (counted as remote_put_dropped).";
    tickets_enabled: bool = "1", "tickets.enabled", change = Restart,
        "Issue session tickets sealed by the shared ticket-key ring (TLS 1.2 tickets; TLS 1.3 tickets in stateless mode).";
    tls13_mode: Tls13Mode = "stateless", "tickets.tls13_mode", change = Restart,
        "TLS 1.3 resumption: stateless = ring-sealed tickets; stateful = ticket IDs in the shared cache, redeemable once box-wide (needed for 0-RTT; rustls then issues no TLS 1.2 tickets, which resume by session ID).";
    ticket_keys: u32 = "3", "tickets.keys", change = Restart,
        "Keys in the ring: next, current and previous ones (3 to 16); a ticket lives (keys - 2) x rotate_secs.";
    ticket_rotate: Duration = "1h", "tickets.rotate_secs", change = Live,
        "Ticket-key rotation period; epochs are aligned to unix time so hosts agree.";
    ticket_source: KeySourceSpec = "random", "tickets.key_source", change = Reload,
        "random = OS random keys kept in the shared ring file; file:PATH = keys derived (HKDF-SHA256) from a secret of 32+ bytes shared by a fleet.";
    tickets_path: AutoPath = "auto", "tickets.path", change = Restart,
        "The shared ticket-key ring file (mode 0600, keep it on tmpfs); auto = /dev/shm/tlsfront-<uid>/<port>.tickets.";
    tls13_tickets: u32 = "2", "tls.tls13_tickets", change = Reload,
        "Tickets sent after each TLS 1.3 handshake.";
    early_data_max: Size = "0", "tls.early_data_max", change = Reload,
        "Most 0-RTT bytes accepted per connection; 0 = 0-RTT off. Needs tickets.tls13_mode = stateful (single-use tickets box-wide against replay).";
    control_socket: AutoPath = "auto", "control.socket", change = Restart,
        "Unix socket (mode 0600) for stats and sysctl queries; auto = /dev/shm/tlsfront-<uid>/<port>.sock.";
    process_user: OptUser = "", "process.user", change = Restart,
        "After binding the port and attaching eBPF, become this user (its files: cache, ticket ring, control socket); a restart as root or as this user reuses files owned by it. Best a dedicated user (e.g. tlsfront), not nobody: whoever runs as it can read the ticket keys. Empty = stay as started.";
    metrics_listen: OptAddr = "", "metrics.listen", change = Restart,
        "Prometheus text endpoint (HTTP, any path), e.g. 127.0.0.1:9143; empty = off.";
    log_level: LogLevel = "info", "log.level", change = Live,
        "Log verbosity on stderr: error, warn, info, debug or trace.";
    log_access: bool = "0", "log.access", change = Live,
        "One line per finished connection (info level): client, SNI, ALPN, TLS version, how it resumed (full, id, ticket, tls13, tls13-stateful), client_cert (verified, or - when none was presented), bytes each way, duration, worker.";
}

impl Config {
    /// Sets `key` from its textual value. `Err` carries the reason, without
    /// the location (the caller knows the file and line or the `-o`).
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
        if let Some(result) = self.set_fixed(key, raw) {
            return result;
        }
        if let Some((name, which)) = sni_key(key) {
            let path = OptPath::parse(raw)?;
            let entry = self.sni.entry(name.to_ascii_lowercase()).or_default();
            match which {
                SniPart::Cert => entry.cert = path.0,
                SniPart::Key => entry.key = path.0,
                SniPart::Ocsp => entry.ocsp = path.0,
            }
            return Ok(());
        }
        Err("unknown key (see `tlsfront sysctl -a` or docs/config.md)".to_string())
    }

    /// The current value of `key`, rendered as a config file would write it.
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.get_fixed(key) {
            return Some(v);
        }
        let (name, which) = sni_key(key)?;
        let entry = self.sni.get(&name.to_ascii_lowercase())?;
        let path = match which {
            SniPart::Cert => entry.cert.clone(),
            SniPart::Key => entry.key.clone(),
            SniPart::Ocsp => entry.ocsp.clone(),
        };
        Some(OptPath(path).render())
    }

    /// Every key with its value, `sysctl -a` order: fixed keys, then SNI.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = KEYS
            .iter()
            .filter_map(|k| self.get(k.name).map(|v| (k.name.to_string(), v)))
            .collect();
        for (name, sni) in &self.sni {
            out.push((
                format!("tls.sni.{name}.cert"),
                OptPath(sni.cert.clone()).render(),
            ));
            out.push((
                format!("tls.sni.{name}.key"),
                OptPath(sni.key.clone()).render(),
            ));
            if sni.ocsp.is_some() {
                out.push((
                    format!("tls.sni.{name}.ocsp"),
                    OptPath(sni.ocsp.clone()).render(),
                ));
            }
        }
        out
    }

    /// Applies a config file's text on top of `self`.
    pub fn apply_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw_line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    text: raw_line.trim().to_string(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let located = |reason: String| ConfigError::Key {
                path: path.to_path_buf(),
                line,
                key: key.to_string(),
                reason,
            };
            if key.is_empty() {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    text: raw_line.trim().to_string(),
                });
            }
            if let Some(first) = seen.insert(key.to_string(), line) {
                return Err(located(format!("set twice (first on line {first})")));
            }
            self.set(key, value).map_err(located)?;
        }
        Ok(())
    }

    /// Reads and applies a config file.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.apply_text(path, &text)
    }

    /// Applies one `-o key=value` argument.
    pub fn apply_override(&mut self, arg: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(ConfigError::OverrideSyntax {
                arg: arg.to_string(),
            });
        };
        let key = key.trim();
        self.set(key, value.trim())
            .map_err(|reason| ConfigError::Override {
                arg: arg.to_string(),
                key: key.to_string(),
                reason,
            })
    }

    /// Defaults, then the file (if any), then the overrides in order; then
    /// the checks that involve several keys.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            config.apply_file(path)?;
        }
        for arg in overrides {
            config.apply_override(arg)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks that involve more than one key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Inconsistent {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        match (&self.cert.0, &self.key.0) {
            (Some(_), None) => return bad("tls.key", "tls.cert is set but tls.key is not"),
            (None, Some(_)) => return bad("tls.cert", "tls.key is set but tls.cert is not"),
            _ => {}
        }
        if self.client_auth != ClientAuth::None && self.client_ca.0.is_none() {
            return bad(
                "tls.client_ca",
                "tls.client_auth is optional or required: the CA file client certificates must chain to is needed",
            );
        }
        if self.early_data_max.0 > 0 {
            if self.tls13_mode != Tls13Mode::Stateful {
                return bad(
                    "tls.early_data_max",
                    "0-RTT needs tickets.tls13_mode = stateful (single-use tickets stop replays)",
                );
            }
            if self.early_data_max.0 > u64::from(u32::MAX) {
                return bad("tls.early_data_max", "at most 4g");
            }
        }
        if self.cache_remote.0.is_some() {
            if !self.cache_enabled {
                return bad(
                    "cache.remote",
                    "the remote tier sits behind the session cache: needs cache.enabled = 1",
                );
            }
            if self.cache_remote_secret.0.is_none() {
                return bad(
                    "cache.remote.secret",
                    "cache.remote is set: a shared secret (file:PATH) must seal what it stores",
                );
            }
        }
        if !(1..=1000).contains(&self.cache_remote_timeout_ms) {
            return bad("cache.remote.timeout_ms", "must be from 1 to 1000");
        }
        if self.cache_remote_queue == 0 {
            return bad("cache.remote.queue", "must be at least 1");
        }
        if self.tls13_mode == Tls13Mode::Stateful && !self.cache_enabled {
            return bad(
                "tickets.tls13_mode",
                "stateful keeps TLS 1.3 tickets in the session cache: needs cache.enabled = 1",
            );
        }
        if self.steering == Steering::Xdp && self.xdp_interface.0.is_none() {
            return bad(
                "net.xdp.interface",
                "net.steering = xdp needs the interface the clients' packets arrive on",
            );
        }
        if !(1..=16384).contains(&self.xdp_queue_size) {
            return bad("net.xdp.queue_size", "must be from 1 to 16384");
        }
        let keys = self.ticket_keys as usize;
        if !(crate::tickets::MIN_KEYS..=crate::tickets::MAX_KEYS).contains(&keys) {
            return bad("tickets.keys", "must be from 3 to 16");
        }
        if !(1..=32768).contains(&self.rx_buffers) || !self.rx_buffers.is_power_of_two() {
            return bad("worker.rx_buffers", "must be a power of two from 1 to 32768");
        }
        if !(1024..=1 << 20).contains(&self.rx_buffer_size.0) {
            return bad("worker.rx_buffer_size", "must be from 1k to 1m");
        }
        if self.buffer_size.0 == 0 {
            return bad("proxy.buffer_size", "must be at least 1 byte (0 would stall every connection)");
        }
        if self.handshake_timeout.0.is_zero() {
            return bad("limits.handshake_timeout_secs", "must be at least 1s");
        }
        if self.idle_timeout.0.is_zero() {
            return bad("limits.idle_timeout_secs", "must be at least 1s");
        }
        if self.ticket_rotate.0.as_secs() == 0 {
            return bad("tickets.rotate_secs", "must be at least 1s");
        }
        for (name, sni) in &self.sni {
            if sni.cert.is_none() || sni.key.is_none() {
                let key = format!("tls.sni.{name}");
                return bad(&key, "needs both .cert and .key");
            }
        }
        Ok(())
    }

    /// The uid tlsfront runs as once set up: `process.user`'s, else this
    /// process's effective uid. Names the private directory of the default
    /// paths, so that a restart as root with `process.user` and a restart
    /// as that user find the same files.
    pub fn runtime_uid(&self) -> u32 {
        let user = self
            .process_user
            .0
            .as_deref()
            .and_then(|name| nix::unistd::User::from_name(name).ok().flatten());
        match user {
            Some(u) => u.uid.as_raw(),
            None => nix::unistd::geteuid().as_raw(),
        }
    }

    /// The private directory (mode 0700, owned by [`runtime_uid`](Self::runtime_uid))
    /// of the `auto` paths: `/dev/shm/tlsfront-<uid>`. Not a shared
    /// world-writable name: another local user cannot pre-create, swap or
    /// lock the files inside.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/tlsfront-{}", self.runtime_uid()))
    }

    /// The `auto` path of a shared file: `<runtime_dir>/<port>.<ext>`.
    fn auto_path(&self, ext: &str) -> String {
        self.runtime_dir()
            .join(format!("{}.{ext}", self.listen.port()))
            .display()
            .to_string()
    }

    /// The control socket path this configuration resolves to.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket.resolve(|| self.auto_path("sock"))
    }

    /// The ticket-key ring file this configuration resolves to.
    pub fn tickets_path(&self) -> PathBuf {
        self.tickets_path.resolve(|| self.auto_path("tickets"))
    }

    /// The session cache file this configuration resolves to.
    pub fn cache_path(&self) -> PathBuf {
        self.cache_path.resolve(|| self.auto_path("cache"))
    }

    /// True when some shared path is `auto` (then [`runtime_dir`](Self::runtime_dir)
    /// must exist before start-up opens them).
    pub fn uses_runtime_dir(&self) -> bool {
        [&self.control_socket, &self.tickets_path, &self.cache_path]
            .iter()
            .any(|p| matches!(p, AutoPath::Auto))
    }
}

enum SniPart {
    Cert,
    Key,
    Ocsp,
}

/// Splits `tls.sni.<name>.cert|key|ocsp` into the name and the part.
fn sni_key(key: &str) -> Option<(&str, SniPart)> {
    let rest = key.strip_prefix("tls.sni.")?;
    let (name, part) = if let Some(n) = rest.strip_suffix(".cert") {
        (n, SniPart::Cert)
    } else if let Some(n) = rest.strip_suffix(".ocsp") {
        (n, SniPart::Ocsp)
    } else {
        (rest.strip_suffix(".key")?, SniPart::Key)
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
    valid.then_some((name, part))
}

/// The reference page `docs/config.md`, generated from [`KEYS`].
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str("# tlsfront configuration reference\n\n");
    out.push_str(
        "Generated from the key table in `frontend/src/config/mod.rs`; do not edit by hand \
         (regenerate with `TLSFRONT_UPDATE_DOCS=1 cargo test -p tlsfront config_reference`).\n\n",
    );
    out.push_str(
        "A config file has one `key = value` per line; `#` starts a comment. The same keys \
         are accepted on the command line as `-o key=value` (applied after the file, in order). \
         Sizes take a unit `k`, `m` or `g` (powers of 1024); durations are seconds, or take a \
         unit `s`, `m` or `h`; booleans are `0` or `1`. An unknown key, a bad value or a bad \
         unit stops the process with the file, line and key named. A key set twice in one file \
         is an error.\n\n",
    );
    out.push_str(
        "Changes take effect `live` (`tlsfront sysctl -w key=value` on the running process, every \
         worker at once), on `reload` (edit the file, then `tlsfront reload` or SIGHUP: new \
         connections use it, open ones are untouched), or only on `restart`.\n\n",
    );
    out.push_str("| key | type | default | takes effect | description |\n");
    out.push_str("|---|---|---|---|---|\n");
    for k in KEYS.iter().chain(SNI_KEYS) {
        let default = if k.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", k.default)
        };
        let rt = k.change.describe();
        // A `|` inside a cell would end it.
        let cell = |t: &str| t.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            k.name,
            cell(k.kind),
            cell(&default),
            rt,
            cell(k.doc)
        );
    }
    out
}

/// `examples/tlsfront.conf`: every key at its default, with its doc as a
/// comment; generated from [`KEYS`] like the reference page.
pub fn example_file() -> String {
    let mut out = String::from(
        "# tlsfront configuration: every key, at its default value.\n\
         # Generated from the key table (frontend/src/config/mod.rs); see docs/config.md.\n\
         # Check a file with: tlsfront sysctl -a -c FILE\n",
    );
    let mut section = "";
    for k in KEYS {
        let prefix = k.name.split('.').next().unwrap_or("");
        if prefix != section {
            section = prefix;
            let _ = write!(out, "\n# --- {section} ---\n");
        }
        let _ = writeln!(out, "# {} [{}; {}]", k.doc, k.kind, k.change.describe());
        let _ = writeln!(out, "{} = {}", k.name, k.default);
    }
    out.push_str(
        "\n# --- per server name (SNI) certificates ---\n\
         # tls.sni.api.example.com.cert = /etc/tlsfront/api.example.com.pem\n\
         # tls.sni.api.example.com.key = /etc/tlsfront/api.example.com.key\n\
         # tls.sni.api.example.com.ocsp = /etc/tlsfront/api.example.com.ocsp.der\n",
    );
    out
}

#[cfg(test)]
mod tests;
