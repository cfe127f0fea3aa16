//! The value types of configuration keys: how each parses and prints.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A type a configuration key can hold.
pub trait ConfigValue: Sized {
    /// What the reference page says the key accepts.
    const KIND: &'static str;
    /// Parses the text after `=`; `Err` says what was expected.
    fn parse(raw: &str) -> Result<Self, String>;
    /// Prints the value so that `parse(render())` gives it back.
    fn render(&self) -> String;
    /// The number a `Range` of the key table bounds: a count, bytes for a
    /// size, milliseconds for a duration; `None` for values that are not
    /// numbers.
    fn magnitude(&self) -> Option<u64> {
        None
    }
}

impl ConfigValue for SocketAddr {
    const KIND: &'static str = "IP:PORT";
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse().map_err(|_| {
            format!("{raw:?} is not an IP:PORT address (e.g. 0.0.0.0:443 or [::]:443)")
        })
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

/// `net.listen`: one or more `IP:PORT` addresses, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub Vec<SocketAddr>);

impl Listen {
    /// The first address: its port names the `auto` shared files, and the
    /// start-up summary's examples use it.
    pub fn first(&self) -> SocketAddr {
        // Never empty: `parse` refuses an empty list.
        self.0
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)))
    }

    /// The port of [`first`](Self::first).
    pub fn port(&self) -> u16 {
        self.first().port()
    }
}

impl ConfigValue for Listen {
    const KIND: &'static str = "IP:PORT[, IP:PORT...]";
    fn parse(raw: &str) -> Result<Self, String> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for item in raw.split(',').map(str::trim) {
            let addr = <SocketAddr as ConfigValue>::parse(item)?;
            if addrs.contains(&addr) {
                return Err(format!("{addr} is listed twice"));
            }
            addrs.push(addr);
        }
        Ok(Listen(addrs))
    }
    fn render(&self) -> String {
        self.0
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl ConfigValue for u32 {
    const KIND: &'static str = "integer";
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse()
            .map_err(|_| format!("{raw:?} is not a whole number from 0 to {}", u32::MAX))
    }
    fn render(&self) -> String {
        self.to_string()
    }
    fn magnitude(&self) -> Option<u64> {
        Some(u64::from(*self))
    }
}

impl ConfigValue for bool {
    const KIND: &'static str = "0 | 1";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("{raw:?} is not a boolean: use 0 or 1")),
        }
    }
    fn render(&self) -> String {
        if *self { "1" } else { "0" }.to_string()
    }
}

/// A byte count with an optional unit `k`, `m` or `g` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl ConfigValue for Size {
    const KIND: &'static str = "size (bytes, k, m, g)";
    fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.to_ascii_lowercase();
        let (digits, shift) = match lower.as_bytes().last() {
            Some(b'k') => (&lower[..lower.len() - 1], 10),
            Some(b'm') => (&lower[..lower.len() - 1], 20),
            Some(b'g') => (&lower[..lower.len() - 1], 30),
            Some(c) if c.is_ascii_digit() => (&lower[..], 0),
            _ => {
                return Err(format!(
                    "{raw:?} is not a size: a number with an optional unit k, m or g"
                ))
            }
        };
        let n: u64 = digits.trim().parse().map_err(|_| {
            format!("{raw:?} is not a size: a number with an optional unit k, m or g")
        })?;
        n.checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| format!("{raw:?} is too large"))
    }
    fn render(&self) -> String {
        let n = self.0;
        for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return format!("{}{unit}", n >> shift);
            }
        }
        n.to_string()
    }
    fn magnitude(&self) -> Option<u64> {
        Some(self.0)
    }
}

/// What [`Duration`] and [`Seconds`] accept, for their error messages.
const DURATION_SYNTAX: &str =
    "a number with a unit ms, s, m, h or d (a bare number is seconds, as nginx reads it)";

/// `raw` as nginx reads a time: a whole number with a unit `ms`, `s`, `m`,
/// `h` or `d` (case-insensitive), a bare number being seconds.
fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    let lower = raw.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let millis_per_unit: u64 = match unit.trim_start() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        "d" => 24 * 3600 * 1000,
        _ => return Err(format!("{raw:?} is not a duration: {DURATION_SYNTAX}")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration: {DURATION_SYNTAX}"))?;
    n.checked_mul(millis_per_unit)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// `d` as [`parse_duration`] reads it back exactly: whole seconds as `Ns`,
/// anything finer as `NNNms` (a parsed duration is always whole
/// milliseconds).
fn render_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A duration to the millisecond: a number with a unit `ms`, `s`, `m`, `h`
/// or `d`; a bare number is seconds (nginx's time syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl ConfigValue for Duration {
    const KIND: &'static str = "duration (ms, s, m, h, d; bare number = seconds)";
    fn parse(raw: &str) -> Result<Self, String> {
        parse_duration(raw).map(Duration)
    }
    fn render(&self) -> String {
        render_duration(self.0)
    }
    fn magnitude(&self) -> Option<u64> {
        u64::try_from(self.0.as_millis()).ok()
    }
}

/// A duration in whole seconds, for what counts in seconds (session expiry,
/// ticket-key epochs): the syntax of [`Duration`], but a value that is not
/// a whole number of seconds (`1500ms`) is refused rather than rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub std::time::Duration);

impl ConfigValue for Seconds {
    const KIND: &'static str = "duration in whole seconds (s, m, h, d; bare number = seconds)";
    fn parse(raw: &str) -> Result<Self, String> {
        let d = parse_duration(raw)?;
        if d.subsec_millis() != 0 {
            return Err(format!(
                "{raw:?} is not a whole number of seconds: this key counts in seconds \
                 (use s, m, h or d)"
            ));
        }
        Ok(Seconds(d))
    }
    fn render(&self) -> String {
        render_duration(self.0)
    }
    fn magnitude(&self) -> Option<u64> {
        u64::try_from(self.0.as_millis()).ok()
    }
}

/// A path, or nothing when the value is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptPath(pub Option<PathBuf>);

impl ConfigValue for OptPath {
    const KIND: &'static str = "path";
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(OptPath((!raw.is_empty()).then(|| PathBuf::from(raw))))
    }
    fn render(&self) -> String {
        self.0
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

/// A comma-separated list of non-empty words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl ConfigValue for List {
    const KIND: &'static str = "comma-separated list";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Ok(List(Vec::new()));
        }
        let items: Vec<String> = raw.split(',').map(|s| s.trim().to_string()).collect();
        if items.iter().any(|s| s.is_empty() || s.len() > 255) {
            return Err(format!(
                "{raw:?} has an empty or over-long (> 255 bytes) entry"
            ));
        }
        Ok(List(items))
    }
    fn render(&self) -> String {
        self.0.join(",")
    }
}

/// The TLS versions to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// TLS 1.2 accepted.
    pub tls12: bool,
    /// TLS 1.3 accepted.
    pub tls13: bool,
}

impl ConfigValue for Protocols {
    const KIND: &'static str = "1.2 and/or 1.3, comma-separated";
    fn parse(raw: &str) -> Result<Self, String> {
        let mut p = Protocols {
            tls12: false,
            tls13: false,
        };
        for item in raw.split(',').map(str::trim) {
            match item {
                "1.2" => p.tls12 = true,
                "1.3" => p.tls13 = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a TLS version tlsfront accepts: use 1.2 and/or 1.3"
                    ))
                }
            }
        }
        Ok(p)
    }
    fn render(&self) -> String {
        match (self.tls12, self.tls13) {
            (true, true) => "1.2,1.3",
            (true, false) => "1.2",
            (false, true) => "1.3",
            (false, false) => "",
        }
        .to_string()
    }
}

/// `worker.count`: one per online CPU, or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// One worker per online CPU.
    Auto,
    /// Exactly this many (at least 1).
    Fixed(usize),
}

impl WorkerCount {
    /// The number of workers on this machine.
    pub fn resolve(self) -> usize {
        match self {
            WorkerCount::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            WorkerCount::Fixed(n) => n,
        }
    }
}

impl ConfigValue for WorkerCount {
    const KIND: &'static str = "auto | 1..1024";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw == "auto" {
            return Ok(WorkerCount::Auto);
        }
        match raw.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(WorkerCount::Fixed(n)),
            _ => Err(format!("{raw:?} is not auto or a number from 1 to 1024")),
        }
    }
    fn render(&self) -> String {
        match self {
            WorkerCount::Auto => "auto".to_string(),
            WorkerCount::Fixed(n) => n.to_string(),
        }
    }
}

/// `net.steering`: how a connection reaches its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Plain kernel SO_REUSEPORT hashing over the workers' listeners.
    None,
    /// An SK_REUSEPORT program picks the listener of the worker pinned to
    /// the CPU that processes the connection's SYN.
    Reuseport,
    /// An XDP program on `net.xdp.interface` moves each connection to the
    /// CPU of a worker (hash of the 4-tuple, CPUMAP), plus `reuseport`.
    Xdp,
}

impl ConfigValue for Steering {
    const KIND: &'static str = "xdp | reuseport | none";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "none" => Ok(Steering::None),
            "reuseport" => Ok(Steering::Reuseport),
            "xdp" => Ok(Steering::Xdp),
            _ => Err(format!(
                "{raw:?} is not a steering mode: xdp, reuseport or none (kernel SO_REUSEPORT hash)"
            )),
        }
    }
    fn render(&self) -> String {
        match self {
            Steering::None => "none",
            Steering::Reuseport => "reuseport",
            Steering::Xdp => "xdp",
        }
        .to_string()
    }
}

/// `net.steering.fallback`: what to do when the chosen steering cannot be
/// set up (no privileges, no kernel support, no eBPF object in this build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringFallback {
    /// Try `reuseport` (then `none`).
    Reuseport,
    /// Use `none`.
    None,
    /// Stop with an error.
    Fail,
}

impl ConfigValue for SteeringFallback {
    const KIND: &'static str = "reuseport | none | fail";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "reuseport" => Ok(SteeringFallback::Reuseport),
            "none" => Ok(SteeringFallback::None),
            "fail" => Ok(SteeringFallback::Fail),
            _ => Err(format!("{raw:?} is not reuseport, none or fail")),
        }
    }
    fn render(&self) -> String {
        match self {
            SteeringFallback::Reuseport => "reuseport",
            SteeringFallback::None => "none",
            SteeringFallback::Fail => "fail",
        }
        .to_string()
    }
}

/// `net.xdp.mode`: how the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only: works on every interface, slower.
    Generic,
}

impl ConfigValue for XdpMode {
    const KIND: &'static str = "auto | native | generic";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            _ => Err(format!("{raw:?} is not auto, native or generic")),
        }
    }
    fn render(&self) -> String {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
        .to_string()
    }
}

/// A network interface name, or none (empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface(pub Option<String>);

impl ConfigValue for Interface {
    const KIND: &'static str = "interface name";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Interface(None));
        }
        // IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and spaces.
        let valid = raw.len() < 16
            && raw != "."
            && raw != ".."
            && !raw
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
        if valid {
            Ok(Interface(Some(raw.to_string())))
        } else {
            Err(format!(
                "{raw:?} is not an interface name (at most 15 characters, no '/', ':' or spaces)"
            ))
        }
    }
    fn render(&self) -> String {
        self.0.clone().unwrap_or_default()
    }
}

/// `net.proxy_protocol.trusted`: networks (`10.0.0.0/8`, `2001:db8::/32`,
/// or one address) whose connections may carry a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<(IpAddr, u8)>);

impl Networks {
    /// Whether `ip` lies in one of the networks (an IPv4 client seen on an
    /// IPv6 socket, `::ffff:a.b.c.d`, counts as `a.b.c.d`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

impl ConfigValue for Networks {
    const KIND: &'static str = "CIDR[, CIDR...]";
    fn parse(raw: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = item
                .split_once('/')
                .map_or((item, None), |(a, b)| (a, Some(b)));
            let ip: IpAddr = addr.parse().map_err(|_| {
                format!("{item:?} is not an address or network (10.0.0.0/8, 2001:db8::/32)")
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|&b| b <= max)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be 0 to {max}"))?,
            };
            nets.push((ip, bits));
        }
        Ok(Networks(nets))
    }
    fn render(&self) -> String {
        self.0
            .iter()
            .map(|(ip, bits)| format!("{ip}/{bits}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One upstream server: a TCP address or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamServer {
    /// `IP:PORT` (IPv6 as `[::1]:8080`).
    Tcp(SocketAddr),
    /// `unix:/path`: a unix stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamServer::Tcp(a) => write!(f, "{a}"),
            UpstreamServer::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `upstream.addr`, `tls.sni.<name>.upstream`: the built-in responder, or
/// servers used round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// tlsfront's own tiny HTTP responder on a loopback port.
    Builtin,
    /// One or more servers, in the order given (never empty).
    Servers(Vec<UpstreamServer>),
}

impl ConfigValue for Upstream {
    const KIND: &'static str = "builtin | IP:PORT or unix:/path, comma-separated";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim() == "builtin" {
            return Ok(Upstream::Builtin);
        }
        let mut servers = Vec::new();
        for part in raw.split(',').map(str::trim) {
            let server = if let Some(path) = part.strip_prefix("unix:") {
                if !path.starts_with('/') {
                    return Err(format!(
                        "{part:?}: a unix socket needs an absolute path (unix:/run/app.sock)"
                    ));
                }
                UpstreamServer::Unix(PathBuf::from(path))
            } else {
                UpstreamServer::Tcp(part.parse().map_err(|_| {
                    format!("{part:?} is not an IP:PORT address or unix:/path (or builtin, alone)")
                })?)
            };
            if servers.contains(&server) {
                return Err(format!("{part} is listed twice"));
            }
            servers.push(server);
        }
        Ok(Upstream::Servers(servers))
    }
    fn render(&self) -> String {
        match self {
            Upstream::Builtin => "builtin".to_string(),
            Upstream::Servers(list) => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// A path derived from other keys (`auto`), or an explicit one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoPath {
    /// Derived, e.g. from the listening port.
    Auto,
    /// This path.
    Path(PathBuf),
}

impl AutoPath {
    /// The explicit path, or the one `auto` derives.
    pub fn resolve(&self, auto: impl FnOnce() -> String) -> PathBuf {
        match self {
            AutoPath::Auto => PathBuf::from(auto()),
            AutoPath::Path(p) => p.clone(),
        }
    }
}

impl ConfigValue for AutoPath {
    const KIND: &'static str = "auto | path";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "auto" => Ok(AutoPath::Auto),
            "" => Err("empty: use auto or a path".to_string()),
            p => Ok(AutoPath::Path(PathBuf::from(p))),
        }
    }
    fn render(&self) -> String {
        match self {
            AutoPath::Auto => "auto".to_string(),
            AutoPath::Path(p) => p.display().to_string(),
        }
    }
}

/// `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings (failed connections).
    Warn,
    /// Start-up and lifecycle.
    Info,
    /// Per-connection detail.
    Debug,
    /// Everything.
    Trace,
}

const LEVELS: [(&str, LogLevel); 5] = [
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];

impl LogLevel {
    /// The `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl ConfigValue for LogLevel {
    const KIND: &'static str = "error | warn | info | debug | trace";
    fn parse(raw: &str) -> Result<Self, String> {
        LEVELS
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, l)| *l)
            .ok_or_else(|| format!("{raw:?} is not one of error, warn, info, debug, trace"))
    }
    fn render(&self) -> String {
        LEVELS
            .iter()
            .find(|(_, l)| l == self)
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }
}

/// `tickets.tls13_mode`: how TLS 1.3 resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls13Mode {
    /// Tickets sealed by the ticket-key ring (no server-side state).
    Stateless,
    /// Ticket IDs in the shared session cache, single use box-wide.
    Stateful,
}

impl ConfigValue for Tls13Mode {
    const KIND: &'static str = "stateless | stateful";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "stateless" => Ok(Tls13Mode::Stateless),
            "stateful" => Ok(Tls13Mode::Stateful),
            _ => Err(format!("{raw:?} is not stateless or stateful")),
        }
    }
    fn render(&self) -> String {
        match self {
            Tls13Mode::Stateless => "stateless",
            Tls13Mode::Stateful => "stateful",
        }
        .to_string()
    }
}

/// `tls.client_auth`: whether clients are asked for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for.
    None,
    /// One is asked for; a client without one is served, one with a
    /// certificate that does not verify against `tls.client_ca` is not.
    Optional,
    /// Only clients with a certificate that verifies are served.
    Required,
}

impl ConfigValue for ClientAuth {
    const KIND: &'static str = "none | optional | required";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            _ => Err(format!("{raw:?} is not none, optional or required")),
        }
    }
    fn render(&self) -> String {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
        .to_string()
    }
}

/// `tickets.key_source`: where ticket keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceSpec {
    /// The OS random generator (kept in the shared ring file).
    Random,
    /// Derived from the secret in this file (shared by a fleet).
    File(PathBuf),
}

impl ConfigValue for KeySourceSpec {
    const KIND: &'static str = "random | file:PATH";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw == "random" {
            return Ok(KeySourceSpec::Random);
        }
        match raw.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(KeySourceSpec::File(PathBuf::from(path))),
            _ => Err(format!("{raw:?} is not random or file:PATH")),
        }
    }
    fn render(&self) -> String {
        match self {
            KeySourceSpec::Random => "random".to_string(),
            KeySourceSpec::File(p) => format!("file:{}", p.display()),
        }
    }
}

/// An optional `IP:PORT`; empty = off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptAddr(pub Option<SocketAddr>);

impl ConfigValue for OptAddr {
    const KIND: &'static str = "IP:PORT or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(OptAddr(None));
        }
        <SocketAddr as ConfigValue>::parse(raw).map(|a| OptAddr(Some(a)))
    }
    fn render(&self) -> String {
        self.0.map(|a| a.to_string()).unwrap_or_default()
    }
}

/// `upstream.proxy_protocol`: 0 (off), 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyProtocol(pub u8);

impl ConfigValue for ProxyProtocol {
    const KIND: &'static str = "0 | 1 | 2";
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "0" => Ok(ProxyProtocol(0)),
            "1" => Ok(ProxyProtocol(1)),
            "2" => Ok(ProxyProtocol(2)),
            _ => Err(format!(
                "{raw:?} is not 0 (off), 1 or 2 (PROXY protocol version)"
            )),
        }
    }
    fn render(&self) -> String {
        self.0.to_string()
    }
}

/// An optional user name; empty = none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptUser(pub Option<String>);

impl ConfigValue for OptUser {
    const KIND: &'static str = "user name or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(OptUser(None));
        }
        let valid = raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !valid {
            return Err(format!("{raw:?} is not a user name"));
        }
        Ok(OptUser(Some(raw.to_string())))
    }
    fn render(&self) -> String {
        self.0.clone().unwrap_or_default()
    }
}
