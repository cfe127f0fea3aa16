//! Sysctl-style configuration: `key = value` lines, `#` comments.
//!
//! `KEYS` is the single source of truth: every key's name, type, default,
//! whether it can change at run time and its one-line doc are written once,
//! in the `config_keys!` table below. Parsing, `-o key=value` overrides,
//! `tlsfront sysctl -a` and the reference page `docs/config.md` are all
//! derived from it.

mod renamed;
mod values;

use std::collections::BTreeMap;
#[cfg(test)]
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use renamed::RENAMED;
pub use renamed::{renamed_key, BareUnit, Renamed};
pub use values::{
    AutoPath, ConfigValue, Duration, KeySourceSpec, List, Listen, LogLevel, Networks, OptAddr,
    OptPath, OptUser, Protocols, ProxyProtocol, Seconds, Size, Steering, Tls13Mode, Upstream,
    UpstreamServer, WorkerCount,
};
pub use values::{ClientAuth, Interface, SteeringFallback, XdpMode};

pub(crate) mod remote_url;
pub use remote_url::{RemoteSecret, RemoteUrl};

/// Fewest keys of the ticket ring (`tickets.keys`): the next, the current
/// and the previous epoch's.
pub(crate) const TICKET_KEYS_MIN: usize = 3;
/// Most keys of the ticket ring (`tickets.keys`).
pub(crate) const TICKET_KEYS_MAX: usize = 16;

/// Description of one configuration key, as listed by `sysctl -a` and in
/// `docs/config.md`.
#[derive(Debug, Clone, Copy)]
// `kind`, `default`, `doc` are read only where docs/config.md and
// examples/tlsfront.conf are generated and checked: the unit tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct KeyInfo {
    /// Dotted key name, e.g. `net.listen`.
    pub(crate) name: &'static str,
    /// Human description of the accepted values.
    pub(crate) kind: &'static str,
    /// Default, in the same syntax a config file uses.
    pub(crate) default: &'static str,
    /// How a new value reaches a running process.
    pub(crate) change: Change,
    /// One-line documentation.
    pub(crate) doc: &'static str,
}

/// How a key's new value reaches a running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
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
    #[cfg(test)]
    pub(crate) fn describe(self) -> &'static str {
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
#[allow(missing_docs)] // The fields are what the #[error] message names.
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

/// What a server name gets of its own: `tls.sni.<name>.cert` / `.key`
/// (a certificate) and `tls.sni.<name>.upstream` (where its plaintext goes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SniCert {
    /// PEM certificate chain.
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key.
    pub(crate) key: Option<PathBuf>,
    /// Servers for this name instead of `upstream.addr`.
    pub(crate) upstream: Option<Upstream>,
    /// DER OCSP response stapled with `cert` (`tls.sni.<name>.ocsp`).
    pub(crate) ocsp: Option<PathBuf>,
}

/// Keys of the form `tls.sni.<name>.cert|key|ocsp|upstream`; documented beside [`KEYS`].
pub(crate) const SNI_KEYS: &[KeyInfo] = &[
    KeyInfo {
        name: "tls.sni.<name>.cert",
        kind: "path",
        default: "",
        change: Change::Reload,
        doc: "Certificate chain (PEM) served to clients that ask for server name <name> (matched case-insensitively). <name> may be a wildcard *.example.com: it matches exactly one leftmost label (www.example.com, not example.com or a.b.example.com), and an exact name wins over it. No SNI, or a name nothing matches, gets tls.cert.",
    },
    KeyInfo {
        name: "tls.sni.<name>.key",
        kind: "path",
        default: "",
        change: Change::Reload,
        doc: "Private key (PEM) for tls.sni.<name>.cert.",
    },
    KeyInfo {
        name: "tls.sni.<name>.upstream",
        kind: "IP:PORT or unix:/path, comma-separated",
        default: "",
        change: Change::Live,
        doc: "Where the plaintext of connections for server name <name> goes instead of upstream.addr (same form and matching as tls.sni.<name>.cert; a name may have an upstream without a certificate of its own). Empty = upstream.addr.",
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
        /// The effective configuration: one typed field per key of `KEYS`,
        /// plus the per-name SNI certificates.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( #[doc = $doc] pub $field: $ty, )*
            /// Certificates by server name (`tls.sni.<name>.cert|key`).
            pub(crate) sni: BTreeMap<String, SniCert>,
        }

        /// Every fixed key, in the order `sysctl -a` prints them.
        pub(crate) const KEYS: &[KeyInfo] = &[
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

            /// The number [`RANGES`] bounds for `key` ([`ConfigValue::magnitude`]).
            fn magnitude(&self, key: &str) -> Option<u64> {
                match key {
                    $( $key => self.$field.magnitude(), )*
                    _ => None,
                }
            }
        }
    };
}

config_keys! {
    listen: Listen = "127.0.0.1:8443", "net.listen", change = Restart,
        "Addresses and ports the TLS listeners bind, comma-separated (e.g. `0.0.0.0:443, [::]:443, 127.0.0.1:8443`); every worker binds each with SO_REUSEPORT and serves them all. An IPv6 address takes only IPv6 (IPV6_V6ONLY): list 0.0.0.0:443 too for IPv4. The auto shared files are named by the first one's port. net.steering applies to each address.";
    proxy_in: bool = "0", "net.proxy_protocol", change = Live,
        "1: every connection starts with a PROXY protocol header (v1 or v2, told apart by their signatures) from a balancer in net.proxy_protocol.trusted; the address it carries is the client's for the access log and upstream.proxy_protocol. A connection from elsewhere, or without a valid header, is closed and counted (proxy_untrusted, proxy_invalid). As HAProxy's accept-proxy, nginx's listen … proxy_protocol.";
    proxy_trusted: Networks = "", "net.proxy_protocol.trusted", change = Live,
        "Networks allowed to send PROXY headers, comma-separated (10.0.0.0/8, 2001:db8::/32, or one address); required when net.proxy_protocol = 1.";
    migrate_requests: bool = "1", "net.migrate_requests", change = Restart,
        "Set net.ipv4.tcp_migrate_req = 1 at start (needs root), so connections queued at a draining process move to its successor.";
    backlog: u32 = "1024", "net.backlog", change = Restart,
        "Listen backlog of each worker's socket.";
    steering: Steering = "none", "net.steering", change = Restart,
        "How connections reach workers: none = the kernel's SO_REUSEPORT hash; reuseport = an SK_REUSEPORT program gives each connection to the worker pinned to the CPU that handles its SYN; xdp = an XDP program on net.xdp.interface first moves each connection to a worker's CPU (SipHash of its addresses and ports keyed by a random key per start, CPUMAP; a --takeover successor takes the XDP link over), plus reuseport. Needs CAP_BPF and CAP_NET_ADMIN.";
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
    drain_timeout: Duration = "30s", "worker.drain_timeout", change = Live,
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
        "Where plaintext goes: one or more servers, comma-separated, each `IP:PORT` (`[::1]:8080` for IPv6) or `unix:/path`, used round robin; a server whose connect fails is skipped for upstream.down_time and the connection tries the next one. Or builtin = a tiny HTTP responder inside tlsfront on a loopback port.";
    proxy_protocol: ProxyProtocol = "0", "upstream.proxy_protocol", change = Live,
        "Send the client's address to the upstream first: 0 = no, 1 = PROXY protocol v1 (text), 2 = v2 (binary).";
    connect_timeout: Duration = "5s", "upstream.connect_timeout", change = Live,
        "How long to wait for an upstream server to accept; then the next server of upstream.addr is tried, and when none is left the client is closed.";
    down_time: Duration = "10s", "upstream.down_time", change = Live,
        "How long a server whose connect failed or timed out is skipped (passive health check, per process). When every server is down, they are tried anyway.";
    buffer_size: Size = "64k", "proxy.buffer_size", change = Live,
        "Bytes buffered per connection and direction before reading from that side pauses (backpressure).";
    max_connections: u32 = "0", "limits.max_connections", change = Live,
        "Open connections per worker beyond which new ones are closed at accept (total = this x worker.count); 0 = no limit.";
    handshake_timeout: Duration = "10s", "limits.handshake_timeout", change = Live,
        "A client that has not completed its TLS handshake by then is closed (slowloris).";
    idle_timeout: Duration = "300s", "limits.idle_timeout", change = Live,
        "A connection with no byte moving either way for this long is closed.";
    cache_enabled: bool = "1", "cache.enabled", change = Restart,
        "Keep TLS 1.2 session IDs and TLS 1.3 stateful tickets in the shared session cache (0 = no server-side sessions).";
    cache_path: AutoPath = "auto", "cache.path", change = Restart,
        "The shared cache file (mode 0600, space reserved at start, best on tmpfs); auto = `/dev/shm/tlsfront-<uid>/<port>.cache`, in a 0700 directory of the user tlsfront runs as (process.user, else the starting user).";
    cache_size: Size = "64m", "cache.size", change = Restart,
        "Size of the cache file; fixed, it never grows, rounded down to whole sets of sessions (the start-up summary says how many sessions it holds; README \"Resumption\" gives the bytes per session).";
    cache_timeout: Seconds = "300s", "cache.timeout", change = Live,
        "How long a cached session can be resumed (like nginx's ssl_session_timeout); whole seconds, since expiry is kept in seconds (1500ms is refused, not rounded).";
    cache_remote: RemoteUrl = "", "cache.remote", change = Restart,
        "A Redis shared by a fleet (`redis://HOST:PORT[/DB]`, `redis://:PASSWORD@HOST:PORT`, `redis+unix:///PATH`) as a second tier behind the local cache, so sessions resume on any host behind a load balancer; empty = off. A Redis Cluster: `redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]` (seed nodes; each lookup goes to the node owning its key's slot, with cache.remote.timeout as connect and reply timeout, no retries). TLS: rediss://HOST:PORT (verified against cache.remote.ca or the system's roots). An ACL user: redis://USER:PASSWORD@HOST:PORT (never shown by sysctl -a or in logs). Values are sealed with cache.remote.secret. Lookups run on a thread of their own, never on a worker.";
    cache_remote_secret: RemoteSecret = "", "cache.remote.secret", change = Restart,
        "file:PATH of a secret of 32+ bytes shared by the fleet (like tickets.key_source): seals the sessions kept in cache.remote and names their keys. Required with cache.remote.";
    cache_remote_ca: OptPath = "", "cache.remote.ca", change = Restart,
        "PEM file of the CA that signs Redis's certificate, for rediss:// (the server's name or address is verified against it); empty = the system's trusted roots.";
    cache_remote_timeout: Duration = "20ms", "cache.remote.timeout", change = Restart,
        "Longest a handshake waits for cache.remote after a local miss (write 20ms: a bare number is seconds); past it the handshake goes on as a full one. Only that handshake waits: other connections of the worker never do, so the budget can cover a loaded host's scheduling as well as Redis's round trip.";
    cache_remote_queue: u32 = "4096", "cache.remote.queue", change = Restart,
        "Writes to cache.remote that may wait at once (they are pipelined by the Redis thread, never by a handshake); past it new sessions are not written (counted as remote_put_dropped).";
    tickets_enabled: bool = "1", "tickets.enabled", change = Restart,
        "Issue session tickets sealed by the shared ticket-key ring (TLS 1.2 tickets; TLS 1.3 tickets in stateless mode).";
    tls13_mode: Tls13Mode = "stateless", "tickets.tls13_mode", change = Restart,
        "TLS 1.3 resumption: stateless = ring-sealed tickets; stateful = ticket IDs in the shared cache, redeemable once box-wide (needed for 0-RTT; rustls then issues no TLS 1.2 tickets, which resume by session ID).";
    ticket_keys: u32 = "3", "tickets.keys", change = Restart,
        "Keys in the ring: next, current and previous ones (3 to 16); a ticket lives (keys - 2) x tickets.rotate_interval.";
    ticket_rotate: Seconds = "1h", "tickets.rotate_interval", change = Live,
        "Ticket-key rotation period; epochs are aligned to unix time so hosts agree, in whole seconds (1500ms is refused, not rounded).";
    ticket_source: KeySourceSpec = "random", "tickets.key_source", change = Reload,
        "random = OS random keys kept in the shared ring file; file:PATH = keys derived (HKDF-SHA256) from a secret of 32+ bytes shared by a fleet.";
    tickets_path: AutoPath = "auto", "tickets.path", change = Restart,
        "The shared ticket-key ring file (mode 0600, keep it on tmpfs); auto = `/dev/shm/tlsfront-<uid>/<port>.tickets`.";
    tls13_tickets: u32 = "2", "tls.tls13_tickets", change = Reload,
        "Tickets sent after each TLS 1.3 handshake.";
    early_data_max: Size = "0", "tls.early_data_max", change = Reload,
        "Most 0-RTT bytes accepted per connection; 0 = 0-RTT off. Needs tickets.tls13_mode = stateful (single-use tickets box-wide against replay).";
    control_socket: AutoPath = "auto", "control.socket", change = Restart,
        "Unix socket (mode 0600) for stats and sysctl queries; auto = `/dev/shm/tlsfront-<uid>/<port>.sock`.";
    process_user: OptUser = "", "process.user", change = Restart,
        "After binding the port and attaching eBPF, become this user (its files: cache, ticket ring, control socket); a restart as root or as this user reuses files owned by it. Best a dedicated user (e.g. tlsfront), not nobody: whoever runs as it can read the ticket keys. Empty = stay as started.";
    metrics_listen: OptAddr = "", "metrics.listen", change = Restart,
        "Prometheus text endpoint (HTTP, any path), e.g. 127.0.0.1:9143; empty = off.";
    log_level: LogLevel = "info", "log.level", change = Live,
        "Log verbosity on stderr: error, warn, info, debug or trace.";
    log_access: bool = "0", "log.access", change = Live,
        "One line per finished connection (info level): client, SNI, ALPN, TLS version, how it resumed (full, id, ticket, tls13, tls13-stateful), client_cert (verified, or - when none was presented), bytes each way, duration, worker.";
}

/// The values a numeric key accepts: a count, bytes for a size,
/// milliseconds for a duration. Zero would stall or switch off what most of these keys
/// are for, and the upper bounds keep deadlines, allocations and ticket
/// lifetimes sane. Checked at start, by `check`, on reload and by
/// `sysctl -w`; shown in docs/config.md.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    /// A key of [`KEYS`].
    pub(crate) key: &'static str,
    /// Smallest value accepted.
    pub(crate) min: u64,
    /// Largest value accepted.
    pub(crate) max: u64,
    /// The range as the reference page and messages word it.
    pub(crate) shown: &'static str,
}

const fn range(key: &'static str, min: u64, max: u64, shown: &'static str) -> Range {
    Range {
        key,
        min,
        max,
        shown,
    }
}

/// RFC 8446 §4.6.1: a ticket lives at most 7 days; sessions and key
/// rotations of tlsfront are held to the same.
const WEEK: u64 = 7 * 24 * HOUR;

/// A second, an hour: the unit of a duration's [`Range`] is the millisecond.
const SECOND: u64 = 1000;
const HOUR: u64 = 3600 * SECOND;

/// Every bounded key (see [`Range`]).
pub(crate) const RANGES: &[Range] = &[
    range("net.backlog", 1, 65535, "1 to 65535"),
    range("net.xdp.queue_size", 1, 16384, "1 to 16384"),
    range("worker.drain_timeout", 0, 24 * HOUR, "0s to 24h"),
    range("worker.rx_buffers", 1, 32768, "1 to 32768, a power of two"),
    range("worker.rx_buffer_size", 1 << 10, 1 << 20, "1k to 1m"),
    range(
        "tls.tls13_tickets",
        0,
        16,
        "0 (TLS 1.3 clients cannot resume) to 16",
    ),
    range(
        "upstream.connect_timeout",
        SECOND,
        600 * SECOND,
        "1s to 10m",
    ),
    range("upstream.down_time", SECOND, HOUR, "1s to 1h"),
    range("proxy.buffer_size", 1 << 10, 16 << 20, "1k to 16m"),
    range(
        "limits.max_connections",
        0,
        1 << 24,
        "0 (no limit) to 16777216",
    ),
    range("limits.handshake_timeout", SECOND, HOUR, "1s to 1h"),
    range("limits.idle_timeout", SECOND, WEEK, "1s to 7d"),
    range(
        "cache.size",
        8 << 10,
        64 << 30,
        "8k to 64g (a size below one set of the cache's layout is refused at start, naming the smallest)",
    ),
    range("cache.timeout", SECOND, WEEK, "1s to 7d"),
    range("cache.remote.timeout", 1, SECOND, "1ms to 1s"),
    range("cache.remote.queue", 1, 1 << 20, "1 to 1048576"),
    range(
        "tickets.keys",
        TICKET_KEYS_MIN as u64,
        TICKET_KEYS_MAX as u64,
        "3 to 16",
    ),
    range("tickets.rotate_interval", SECOND, WEEK, "1s to 7d"),
];

impl Config {
    /// Sets `key` from its textual value. `Err` carries the reason, without
    /// the location (the caller knows the file and line or the `-o`).
    /// A renamed key's old name sets its new key, a bare number read as
    /// the old name meant it (the renamed-keys table, `config/renamed.rs`).
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
        if let Some(r) = renamed_key(key) {
            return self.set(r.new, &r.new_value(raw));
        }
        if let Some(result) = self.set_fixed(key, raw) {
            return result;
        }
        if let Some((name, which)) = sni_key(key) {
            check_sni_name(name)?;
            let entry = self.sni.entry(name.to_ascii_lowercase()).or_default();
            match which {
                SniPart::Cert => entry.cert = OptPath::parse(raw)?.0,
                SniPart::Key => entry.key = OptPath::parse(raw)?.0,
                SniPart::Ocsp => entry.ocsp = OptPath::parse(raw)?.0,
                SniPart::Upstream => {
                    entry.upstream = if raw.trim().is_empty() {
                        None
                    } else {
                        Some(Upstream::parse(raw)?)
                    }
                }
            }
            return Ok(());
        }
        Err("unknown key (see `tlsfront sysctl -a` or docs/config.md)".to_string())
    }

    /// The current value of `key`, rendered as a config file would write it
    /// (under a renamed key's old name, as the old name showed it).
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        if let Some(r) = renamed_key(key) {
            return self.get(r.new).map(|v| r.old_value(&v));
        }
        if let Some(v) = self.get_fixed(key) {
            return Some(v);
        }
        let (name, which) = sni_key(key)?;
        let entry = self.sni.get(&name.to_ascii_lowercase())?;
        Some(match which {
            SniPart::Cert => OptPath(entry.cert.clone()).render(),
            SniPart::Key => OptPath(entry.key.clone()).render(),
            SniPart::Ocsp => OptPath(entry.ocsp.clone()).render(),
            SniPart::Upstream => entry
                .upstream
                .as_ref()
                .map(Upstream::render)
                .unwrap_or_default(),
        })
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
            if let Some(upstream) = &sni.upstream {
                out.push((format!("tls.sni.{name}.upstream"), upstream.render()));
            }
        }
        out
    }

    /// Applies a config file's text on top of `self`; stops at the first
    /// problem.
    // For the config fuzz target; `Loaded` is the way in.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn apply_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let mut loaded = Loaded::new(std::mem::take(self));
        loaded.apply_text(path, text);
        *self = loaded.config;
        loaded.problems.into_iter().next().map_or(Ok(()), Err)
    }

    /// Applies one `-o key=value` argument.
    // For the unit tests and the config fuzz target; `Loaded` is the way in.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn apply_override(&mut self, arg: &str) -> Result<(), ConfigError> {
        let mut loaded = Loaded::new(std::mem::take(self));
        loaded.apply_override(arg);
        *self = loaded.config;
        loaded.problems.into_iter().next().map_or(Ok(()), Err)
    }

    /// Defaults, then the file (if any), then the overrides in order; then
    /// the checks that involve several keys. The first problem, located.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        Config::load_warned(file, overrides).map(|(config, _)| config)
    }

    /// [`load`](Self::load), with every use of a renamed key's old name, for
    /// the caller to report ([`ConfigWarning`]).
    pub fn load_warned(
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let loaded = Loaded::read(file, overrides);
        match loaded.problems.into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok((loaded.config, loaded.warnings)),
        }
    }

    /// The first of [`problems`](Self::problems), unlocated.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some((key, reason)) => Err(ConfigError::Inconsistent { key, reason }),
            None => Ok(()),
        }
    }

    /// Every value out of its range and every set of keys that do not fit
    /// together: (the key to blame, why). Empty = usable.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut bad = |key: &str, reason: &str| found.push((key.to_string(), reason.to_string()));
        for r in RANGES {
            let value = self.magnitude(r.key);
            if value.is_some_and(|v| !(r.min..=r.max).contains(&v)) {
                let shown = self.get(r.key).unwrap_or_default();
                bad(
                    r.key,
                    &format!("{shown} is out of range: must be from {}", r.shown),
                );
            }
        }
        if !self.rx_buffers.is_power_of_two() {
            bad(
                "worker.rx_buffers",
                "must be a power of two from 1 to 32768",
            );
        }
        if self.proxy_in && self.proxy_trusted.0.is_empty() {
            bad(
                "net.proxy_protocol.trusted",
                "empty, but net.proxy_protocol = 1: name the balancers allowed to send PROXY headers",
            );
        }
        if self.listen.0.iter().any(|a| a.port() == 0) {
            bad(
                "net.listen",
                "port 0 would give each worker another random port: name the port",
            );
        }
        match (&self.cert.0, &self.key.0) {
            (Some(_), None) => bad("tls.cert", "set, but tls.key is not"),
            (None, Some(_)) => bad("tls.key", "set, but tls.cert is not"),
            _ => {}
        }
        if self.client_auth != ClientAuth::None && self.client_ca.0.is_none() {
            bad(
                "tls.client_ca",
                "tls.client_auth is optional or required: the CA file client certificates must chain to is needed",
            );
        }
        if self.early_data_max.0 > 0 {
            if self.tls13_mode != Tls13Mode::Stateful {
                bad(
                    "tls.early_data_max",
                    "0-RTT needs tickets.tls13_mode = stateful (single-use tickets stop replays)",
                );
            }
            if self.early_data_max.0 > u64::from(u32::MAX) {
                bad("tls.early_data_max", "at most 4g");
            }
        }
        if self.cache_remote.0.is_some() {
            if !self.cache_enabled {
                bad(
                    "cache.remote",
                    "the remote tier sits behind the session cache: needs cache.enabled = 1",
                );
            }
            if self.cache_remote_secret.0.is_none() {
                bad(
                    "cache.remote.secret",
                    "cache.remote is set: a shared secret (file:PATH) must seal what it stores",
                );
            }
        }
        if self.tls13_mode == Tls13Mode::Stateful && !self.cache_enabled {
            bad(
                "tickets.tls13_mode",
                "stateful keeps TLS 1.3 tickets in the session cache: needs cache.enabled = 1",
            );
        }
        if self.steering == Steering::Xdp && self.xdp_interface.0.is_none() {
            bad(
                "net.xdp.interface",
                "net.steering = xdp needs the interface the clients' packets arrive on",
            );
        }
        for (name, sni) in &self.sni {
            match (&sni.cert, &sni.key) {
                (Some(_), None) => bad(
                    &format!("tls.sni.{name}.cert"),
                    &format!("set, but tls.sni.{name}.key is not: needs both .cert and .key"),
                ),
                (None, Some(_)) => bad(
                    &format!("tls.sni.{name}.key"),
                    &format!("set, but tls.sni.{name}.cert is not: needs both .cert and .key"),
                ),
                _ => {}
            }
        }
        found
    }

    /// The uid tlsfront runs as once set up: `process.user`'s, else this
    /// process's effective uid. Names the private directory of the default
    /// paths, so that a restart as root with `process.user` and a restart
    /// as that user find the same files.
    pub(crate) fn runtime_uid(&self) -> u32 {
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
    pub(crate) fn runtime_dir(&self) -> PathBuf {
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
    pub(crate) fn tickets_path(&self) -> PathBuf {
        self.tickets_path.resolve(|| self.auto_path("tickets"))
    }

    /// The session cache file this configuration resolves to.
    pub(crate) fn cache_path(&self) -> PathBuf {
        self.cache_path.resolve(|| self.auto_path("cache"))
    }

    /// True when some shared path is `auto` (then [`runtime_dir`](Self::runtime_dir)
    /// must exist before start-up opens them).
    pub(crate) fn uses_runtime_dir(&self) -> bool {
        [&self.control_socket, &self.tickets_path, &self.cache_path]
            .iter()
            .any(|p| matches!(p, AutoPath::Auto))
    }
}

enum SniPart {
    Cert,
    Key,
    Ocsp,
    Upstream,
}

/// Splits `tls.sni.<name>.cert|key|ocsp|upstream` into the name and the part.
fn sni_key(key: &str) -> Option<(&str, SniPart)> {
    let rest = key.strip_prefix("tls.sni.")?;
    let (name, part) = if let Some(n) = rest.strip_suffix(".cert") {
        (n, SniPart::Cert)
    } else if let Some(n) = rest.strip_suffix(".ocsp") {
        (n, SniPart::Ocsp)
    } else if let Some(n) = rest.strip_suffix(".upstream") {
        (n, SniPart::Upstream)
    } else {
        (rest.strip_suffix(".key")?, SniPart::Key)
    };
    (!name.is_empty()).then_some((name, part))
}

/// The description of `key`: a key of [`KEYS`] (a renamed key's old name
/// gets its new key's), or a per-name key of [`SNI_KEYS`]
/// (`tls.sni.api.example.com.upstream` → `tls.sni.<name>.upstream`).
pub(crate) fn key_info(key: &str) -> Option<&'static KeyInfo> {
    let key = renamed_key(key).map_or(key, |r| r.new);
    if let Some(k) = KEYS.iter().find(|k| k.name == key) {
        return Some(k);
    }
    let pattern = match sni_key(key)?.1 {
        SniPart::Cert => "tls.sni.<name>.cert",
        SniPart::Key => "tls.sni.<name>.key",
        SniPart::Ocsp => "tls.sni.<name>.ocsp",
        SniPart::Upstream => "tls.sni.<name>.upstream",
    };
    SNI_KEYS.iter().find(|k| k.name == pattern)
}

/// A server name of `tls.sni.<name>`: DNS labels of letters, digits and
/// `-`, or a wildcard `*.<name>` whose `*` is the whole leftmost label (it
/// then stands for exactly one label, as clients match wildcards).
fn check_sni_name(name: &str) -> Result<(), String> {
    let plain = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() <= 253 && plain.split('.').all(label_ok) {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a server name: labels of letters, digits and '-', or a wildcard \
         '*.' + a name (the '*' is the whole leftmost label and matches exactly one label)"
    ))
}

/// Where a key got its value: a line of a config file or a `-o` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Line `line` of the file `path`.
    Line {
        /// The config file.
        path: PathBuf,
        /// 1-based.
        line: usize,
    },
    /// The `-o` argument, as given.
    Override(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Line { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Override(arg) => write!(f, "-o {arg}"),
        }
    }
}

/// A use of a renamed key's old name (in the renamed-keys table): accepted, but worth
/// telling the operator, located like a [`ConfigError`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {}", .renamed.warning())]
pub struct ConfigWarning {
    /// The line or `-o` that used the old name.
    pub origin: Origin,
    /// Which key it was.
    pub renamed: &'static Renamed,
}

impl Origin {
    /// `reason` about `key`, located here.
    pub(crate) fn error(&self, key: &str, reason: String) -> ConfigError {
        match self {
            Origin::Line { path, line } => ConfigError::Key {
                path: path.clone(),
                line: *line,
                key: key.to_string(),
                reason,
            },
            Origin::Override(arg) => ConfigError::Override {
                arg: arg.clone(),
                key: key.to_string(),
                reason,
            },
        }
    }
}

/// A configuration as read, with where each key was set and every problem
/// found, not only the first (`tlsfront check` names them all).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The values; a key whose value was refused keeps the one before.
    pub(crate) config: Config,
    /// Where each key set was set, by key (SNI names lower-cased); the last
    /// setting wins, as it does for the value.
    pub(crate) origins: BTreeMap<String, Origin>,
    /// Every problem, located where the file or `-o` could be blamed.
    pub(crate) problems: Vec<ConfigError>,
    /// Every use of a renamed key's old name, located.
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl Loaded {
    fn new(config: Config) -> Loaded {
        Loaded {
            config,
            ..Loaded::default()
        }
    }

    /// Defaults, then the file (if any), then the overrides in order; then
    /// the checks of [`Config::problems`], each located at the line or `-o`
    /// that set its key. Reads nothing but the file.
    pub(crate) fn read(file: Option<&Path>, overrides: &[String]) -> Loaded {
        let mut loaded = Loaded::new(Config::default());
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => loaded.apply_text(path, &text),
                Err(source) => loaded.problems.push(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        for arg in overrides {
            loaded.apply_override(arg);
        }
        loaded.check_values();
        loaded
    }

    /// Adds [`Config::problems`], each located at the line or `-o` that set
    /// its key.
    fn check_values(&mut self) {
        // A key whose value was refused is reported once, for that.
        let refused: Vec<String> = self.problems.iter().filter_map(ConfigError::key).collect();
        for (key, reason) in self.config.problems() {
            if !refused.contains(&key) {
                let located = self.locate(&key, reason);
                self.problems.push(located);
            }
        }
    }

    /// `reason` about `key`, at the line or `-o` that set it (unlocated
    /// when the key has its default).
    pub(crate) fn locate(&self, key: &str, reason: String) -> ConfigError {
        match self.origins.get(key) {
            Some(origin) => origin.error(key, reason),
            None => ConfigError::Inconsistent {
                key: key.to_string(),
                reason,
            },
        }
    }

    /// Sets `key` from `origin`, recording where it came from (and, for a
    /// renamed key's old name, a warning).
    fn set(&mut self, key: &str, value: &str, origin: Origin) {
        if let Some(renamed) = renamed_key(key) {
            self.warnings.push(ConfigWarning {
                origin: origin.clone(),
                renamed,
            });
        }
        match self.config.set(key, value) {
            Ok(()) => {
                self.origins.insert(canonical_key(key), origin);
            }
            Err(reason) => self.problems.push(origin.error(key, reason)),
        }
    }

    /// Applies a config file's text, collecting every problem.
    fn apply_text(&mut self, path: &Path, text: &str) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = index + 1;
            let origin = Origin::Line {
                path: path.to_path_buf(),
                line,
            };
            let content = strip_comment(raw_line);
            let content = content.as_str();
            if content.is_empty() {
                continue;
            }
            let syntax = || ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                text: raw_line.trim().to_string(),
            };
            let Some((key, value)) = content.split_once('=') else {
                self.problems.push(syntax());
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                self.problems.push(syntax());
                continue;
            }
            // An old name and its new one are the same key.
            if let Some(first) = seen.insert(canonical_key(key), line) {
                let reason = format!("set twice (first on line {first})");
                self.problems.push(origin.error(key, reason));
                continue;
            }
            self.set(key, value, origin);
        }
    }

    /// Applies one `-o key=value` argument (the whole value, `#` included).
    fn apply_override(&mut self, arg: &str) {
        let Some((key, value)) = arg.split_once('=') else {
            self.problems.push(ConfigError::OverrideSyntax {
                arg: arg.to_string(),
            });
            return;
        };
        self.set(key.trim(), value.trim(), Origin::Override(arg.to_string()));
    }
}

impl ConfigError {
    /// The key the problem is about, if it names one.
    pub(crate) fn key(&self) -> Option<String> {
        match self {
            ConfigError::Key { key, .. }
            | ConfigError::Override { key, .. }
            | ConfigError::Inconsistent { key, .. } => Some(key.clone()),
            _ => None,
        }
    }
}

/// `key` as [`Config::problems`] names it: SNI names lower-cased, a
/// renamed key by its new name.
fn canonical_key(key: &str) -> String {
    match sni_key(key) {
        Some((name, SniPart::Cert)) => format!("tls.sni.{}.cert", name.to_ascii_lowercase()),
        Some((name, SniPart::Key)) => format!("tls.sni.{}.key", name.to_ascii_lowercase()),
        Some((name, SniPart::Ocsp)) => format!("tls.sni.{}.ocsp", name.to_ascii_lowercase()),
        Some((name, SniPart::Upstream)) => {
            format!("tls.sni.{}.upstream", name.to_ascii_lowercase())
        }
        None => renamed_key(key).map_or(key, |r| r.new).to_string(),
    }
}

/// The `key = value` part of a config file line, without its comment: a
/// `#` at the start of the line or after a space or tab begins a comment;
/// any other `#` is part of the value (`redis://:pa#ss@host:6379`), and
/// `\#` is a `#` kept anywhere (`/etc/my \#1/cert.pem`).
fn strip_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut after_blank = true;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                chars.next();
                out.push('#');
            }
            '#' if after_blank => break,
            _ => out.push(c),
        }
        after_blank = c == ' ' || c == '\t';
    }
    out.trim().to_string()
}

/// The reference page `docs/config.md`, generated from [`KEYS`].
#[cfg(test)]
pub(crate) fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str("# tlsfront configuration reference\n\n");
    out.push_str(
        "Generated from the key table in `frontend/src/config/mod.rs`; do not edit by hand \
         (regenerate with `TLSFRONT_UPDATE_DOCS=1 cargo test -p tlsfront config_reference`).\n\n",
    );
    out.push_str(
        "A config file has one `key = value` per line. A `#` at the start of a line or after a \
         space or tab starts a comment; any other `#` belongs to the value (a Redis password: \
         `cache.remote = redis://:pa#ss@10.0.0.5:6379`), and `\\#` is a `#` kept anywhere, even \
         after a space (`tls.cert = /etc/tls/my \\#1.pem`). The same keys \
         are accepted on the command line as `-o key=value` (applied after the file, in order; \
         the whole value is taken as given, `#` included). \
         Sizes take a unit `k`, `m` or `g` (powers of 1024); durations are written as nginx \
         writes times, a whole number with a unit `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`, \
         `1h`), a bare number being seconds; booleans are `0` or `1`. Numbers, sizes and durations must lie in \
         the range their description gives. An unknown key, a bad value, a bad unit or a value \
         out of its range stops the process with the file, line and key named (`tlsfront check` \
         names every one); `sysctl -w` refuses it and keeps the running value. A key set twice \
         in one file is an error.\n\n",
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
        let doc = match RANGES.iter().find(|r| r.key == k.name) {
            Some(r) => format!("{} Range: {}.", k.doc, r.shown),
            None => k.doc.to_string(),
        };
        // A `|` inside a cell would end it.
        let cell = |t: &str| t.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            k.name,
            cell(k.kind),
            cell(&default),
            rt,
            cell(&doc)
        );
    }
    out.push_str(
        "\n## Renamed keys\n\n\
         These names of older releases are still accepted everywhere a key is (config file, \
         `-o`, `tlsfront sysctl` and `sysctl -w`, `tlsfront check`), each use with a warning \
         naming the new key; `sysctl -a` lists only the new names. Under an old name a bare \
         number keeps its old meaning.\n\n\
         | old key | new key | a bare number under the old name |\n|---|---|---|\n",
    );
    for r in RENAMED {
        let bare = match r.bare {
            BareUnit::Seconds => "seconds (as under the new name)",
            BareUnit::Milliseconds => "milliseconds (under the new name: seconds)",
        };
        let _ = writeln!(out, "| `{}` | `{}` | {bare} |", r.old, r.new);
    }
    out
}

/// `examples/tlsfront.conf`: every key at its default, with its doc as a
/// comment; generated from [`KEYS`] like the reference page.
#[cfg(test)]
pub(crate) fn example_file() -> String {
    let mut out = String::from(
        "# tlsfront configuration: every key, at its default value.\n\
         # Generated from the key table (frontend/src/config/mod.rs); see docs/config.md.\n\
         # Check a file with: tlsfront check -c FILE (tlsfront sysctl -a -c FILE shows its values)\n",
    );
    let mut section = "";
    for k in KEYS {
        let prefix = k.name.split('.').next().unwrap_or("");
        if prefix != section {
            section = prefix;
            let _ = write!(out, "\n# --- {section} ---\n");
        }
        let kind = match RANGES.iter().find(|r| r.key == k.name) {
            Some(r) => format!("{}: {}", k.kind, r.shown),
            None => k.kind.to_string(),
        };
        let _ = writeln!(out, "# {} [{kind}; {}]", k.doc, k.change.describe());
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
