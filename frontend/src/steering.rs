//! Connection steering (`net.steering`): which worker gets a connection.
//!
//! - `none`: the kernel's SO_REUSEPORT hash over the workers' listeners.
//! - `reuseport`: the SK_REUSEPORT program `tlsfront_reuseport` (in `ebpf/`)
//!   selects `SOCKETS[cpu]`, the listener of the worker pinned to the CPU
//!   that processes the SYN; with no listener for that CPU the kernel's hash
//!   chooses.
//! - `xdp`: the XDP program `tlsfront_xdp` on `net.xdp.interface` hashes
//!   each TCP segment to the listening port (`tlsfront_shared::worker_slot`:
//!   SipHash-1-3 of its whole 4-tuple, keyed by 128 random bits drawn at
//!   each start and written into the `FLOW_KEY` map) onto a worker and moves
//!   it to that worker's CPU through a CPUMAP; the kernel's TCP processing,
//!   and so the `reuseport` program, then run on that CPU, and the
//!   connection lands on that worker.
//!
//! [`setup`] loads the object embedded at build time, fills the maps,
//! attaches, and falls back as `net.steering.fallback` says when that is
//! impossible (no privileges, no kernel support, no eBPF in this build).
//! The returned [`Steering`] handle undoes everything on drop: the XDP
//! program leaves the interface, the listeners leave `SOCKETS` (the
//! SK_REUSEPORT program then selects nothing, i.e. the kernel's hash; it
//! goes away with the listeners). The XDP attachment is a bpf_link owned by
//! this process, so the kernel also removes it when the process dies
//! without unwinding (SIGKILL). A `--takeover` successor is handed that
//! link over the control socket and swaps its program in ([`XdpLink`]):
//! the link then stays with the successor, without a moment without XDP.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, CpuMap, HashMap, MapData, PerCpuArray, ReusePortSockArray};
use std::os::fd::AsFd as _;
use std::path::Path;

use aya::programs::{SkReuseport, Xdp};
use aya::{Ebpf, EbpfLoader, Pod};
use tlsfront_shared::{
    names, worker_slot, FlowHashKey, FlowKey, SteeringStats, CONFIG_WORKERS, MAX_WORKERS,
};
use tracing::{info, warn};

use crate::config::{Config, Steering as Mode, SteeringFallback, XdpMode};
use crate::metrics::PerWorkerCounters;

mod xdp_link;
pub use xdp_link::{XdpLink, COMMAND as XDP_LINK_COMMAND};

/// The eBPF object built by `build.rs` (empty when built with
/// `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TLSFRONT_EBPF_OBJECT"));

/// What is in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// Kernel SO_REUSEPORT hash.
    None,
    /// SK_REUSEPORT program.
    Reuseport,
    /// XDP (in this mode) + SK_REUSEPORT program.
    Xdp {
        /// Attached in native (driver) mode; else generic.
        native: bool,
    },
}

/// The steering set up by [`setup`]; undoes it on drop.
pub struct Steering {
    active: Active,
    description: String,
    /// Programs and maps; `None` for `none`.
    ebpf: Option<Ebpf>,
    /// The XDP bpf_link (shared with the control socket, which may hand it
    /// to a successor).
    xdp_link: Option<Arc<XdpLink>>,
    /// The flow hash in effect (xdp only).
    flow: Option<FlowWorkers>,
    /// CPU ids registered in `SOCKETS`.
    registered: Vec<u32>,
    counters: Option<Arc<SteeringCounters>>,
    /// The SK_REUSEPORT set-ups of the other `net.listen` addresses (one
    /// object each: a reuseport group needs its own `SOCKETS` map); their
    /// counters are summed into `counters`.
    others: Vec<Steering>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("active", &self.active)
            .field("description", &self.description)
            .finish()
    }
}

impl Steering {
    /// One line for the start-up summary, e.g.
    /// `xdp (native on veth0, CPUMAP queue 2048) + reuseport`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The per-worker counters of the eBPF programs (for `tlsfront stats`),
    /// when a program is in use.
    pub fn counters(&self) -> Option<Arc<dyn PerWorkerCounters>> {
        self.counters
            .as_ref()
            .map(|c| Arc::clone(c) as Arc<dyn PerWorkerCounters>)
    }

    /// What the control socket needs: the XDP link (to hand to a
    /// `--takeover` successor) and the flow hash (to answer which worker a
    /// client's connection goes to).
    pub fn control(&self) -> Arc<SteeringControl> {
        Arc::new(SteeringControl {
            xdp_link: self.xdp_link.clone(),
            flow: self.flow.clone(),
        })
    }

    /// Closes this process's XDP link now (also done on drop): the program
    /// leaves the interface, unless the link was handed to a successor,
    /// which then keeps it.
    pub fn detach_xdp(&mut self) {
        let Some(link) = self.xdp_link.take() else {
            return;
        };
        if !link.detach() {
            return;
        }
        match link.handed_to() {
            Some(pid) => info!(
                "steering: XDP link on {} left to pid {pid}, which took it over",
                link.interface()
            ),
            None => info!("steering: XDP program removed from {}", link.interface()),
        }
    }

    fn none(description: String) -> Steering {
        Steering {
            active: Active::None,
            description,
            ebpf: None,
            xdp_link: None,
            flow: None,
            registered: Vec::new(),
            counters: None,
            others: Vec::new(),
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        self.detach_xdp();
        if let Some(map) = self.ebpf.as_mut().and_then(|e| e.map_mut(names::SOCKETS)) {
            if let Ok(mut sockets) = ReusePortSockArray::try_from(map) {
                for cpu in self.registered.drain(..) {
                    let _ = sockets.clear_index(&cpu);
                }
            }
        }
    }
}

/// The steering's part of the control socket (see [`Steering::control`]).
pub struct SteeringControl {
    xdp_link: Option<Arc<XdpLink>>,
    flow: Option<FlowWorkers>,
}

impl SteeringControl {
    /// The XDP link, if XDP is attached.
    pub fn xdp_link(&self) -> Option<&XdpLink> {
        self.xdp_link.as_deref()
    }

    /// Answers `flow CLIENT_IP:PORT[=SERVER_IP[:PORT]]`: the worker (and
    /// its CPU) the XDP program sends that client's connection to, computed
    /// with this start's key, which never leaves the process. The server
    /// address defaults to the first `net.listen` address, its port to that
    /// address's port; another port must be one of `net.listen`'s.
    pub fn flow_worker(&self, args: &str) -> Result<String, String> {
        let flow = self
            .flow
            .as_ref()
            .ok_or("no flow hash here (net.steering is not xdp, or it fell back)")?;
        let (client, server) = match args.trim().split_once('=') {
            Some((c, s)) => (c, Some(s)),
            None => (args.trim(), None),
        };
        let client: SocketAddr = client
            .parse()
            .map_err(|_| format!("{client:?} is not CLIENT_IP:PORT"))?;
        let first = flow
            .listen
            .first()
            .copied()
            .ok_or("no net.listen address")?;
        let server: SocketAddr = match server {
            Some(s) => match (s.parse::<SocketAddr>(), s.parse::<IpAddr>()) {
                (Ok(addr), _) => addr,
                (_, Ok(ip)) => SocketAddr::new(ip, first.port()),
                _ => return Err(format!("{s:?} is not SERVER_IP or SERVER_IP:PORT")),
            },
            None if first.ip().is_unspecified() => {
                return Err(format!(
                    "net.listen is {first}: give the server address, CLIENT_IP:PORT=SERVER_IP"
                ))
            }
            None => first,
        };
        if !flow.listen.iter().any(|a| a.port() == server.port()) {
            return Err(format!(
                "port {} is not a net.listen port: XDP does not steer it",
                server.port()
            ));
        }
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let key = FlowKey::v6(
            octets(client.ip()),
            octets(server.ip()),
            client.port(),
            server.port(),
        );
        let workers = u32::try_from(flow.cpus.len()).map_err(|_| "too many workers")?;
        let slot = worker_slot(&key, &flow.key, workers).ok_or("no workers")?;
        let cpu = flow.cpus.get(slot as usize).ok_or("no such worker")?;
        Ok(format!("{client} -> {server}: worker {slot} cpu {cpu}\n"))
    }
}

/// The flow hash in effect: key, worker CPUs, and the steered addresses
/// (`net.listen`).
#[derive(Clone)]
struct FlowWorkers {
    key: FlowHashKey,
    cpus: Vec<u32>,
    listen: Vec<SocketAddr>,
}

const NONE_TEXT: &str = "kernel SO_REUSEPORT hash over the workers' listeners";
const REUSEPORT_TEXT: &str = "SK_REUSEPORT: the listener of the worker on the receiving CPU";

/// Sets up `config.steering` for `groups` (one per `net.listen` address,
/// worker n's socket at index n) whose workers run on `cpus` (worker n on
/// `cpus[n]`), with `net.steering.fallback` when that is impossible. `Err`
/// only when the fallback is `fail`. `takeover`: the control socket of the
/// process this one replaces (`--takeover`), whose XDP link is taken over.
pub fn setup(
    config: &Config,
    groups: &[Vec<TcpListener>],
    cpus: &[Option<usize>],
    takeover: Option<&Path>,
) -> Result<Steering, String> {
    let fallback = config.steering_fallback;
    let mut failed: Vec<String> = Vec::new();
    if config.steering == Mode::Xdp {
        match setup_groups(config, groups, cpus, Some(takeover)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let msg = format!("net.steering = xdp is not possible: {e}");
                if fallback == SteeringFallback::Fail {
                    return Err(format!("{msg} (net.steering.fallback = fail)"));
                }
                warn!("{msg}; net.steering.fallback = {}", fallback.render_name());
                failed.push(format!("xdp failed: {e}"));
            }
        }
    }
    let try_reuseport = config.steering == Mode::Reuseport
        || (config.steering == Mode::Xdp && fallback == SteeringFallback::Reuseport);
    if try_reuseport {
        match setup_groups(config, groups, cpus, None) {
            Ok(mut s) => {
                if !failed.is_empty() {
                    s.description = format!("{} (fallback; {})", s.description, failed.join("; "));
                }
                return Ok(s);
            }
            Err(e) => {
                let msg = format!("net.steering = reuseport is not possible: {e}");
                if fallback == SteeringFallback::Fail {
                    return Err(format!("{msg} (net.steering.fallback = fail)"));
                }
                warn!("{msg}; using none");
                failed.push(format!("reuseport failed: {e}"));
            }
        }
    }
    let description = if failed.is_empty() {
        format!("none ({NONE_TEXT})")
    } else {
        format!("none ({NONE_TEXT}; fallback; {})", failed.join("; "))
    };
    Ok(Steering::none(description))
}

trait RenderName {
    fn render_name(&self) -> &'static str;
}

impl RenderName for SteeringFallback {
    fn render_name(&self) -> &'static str {
        match self {
            SteeringFallback::Reuseport => "reuseport",
            SteeringFallback::None => "none",
            SteeringFallback::Fail => "fail",
        }
    }
}

/// [`setup_ebpf`] for the first group (with XDP when `xdp` is
/// `Some(takeover)`: the one XDP program, with the one flow hash key,
/// steers every port of `net.listen`, and a takeover hands over its link),
/// then `reuseport` for each other group, all or nothing. The other
/// objects' SK_REUSEPORT programs select by the receiving CPU, not by the
/// hash (XDP has moved the segment to the worker's CPU already), so one
/// key decides the worker on every address.
fn setup_groups(
    config: &Config,
    groups: &[Vec<TcpListener>],
    cpus: &[Option<usize>],
    xdp: Option<Option<&Path>>,
) -> Result<Steering, String> {
    let (first, rest) = groups.split_first().ok_or("no listeners")?;
    let mut steering = setup_ebpf(config, first, cpus, xdp)?;
    let key = steering.flow.as_ref().map(|f| f.key);
    for (i, group) in rest.iter().enumerate() {
        let addr = config.listen.0.get(i + 1).copied();
        let mut other = setup_ebpf(config, group, cpus, None).map_err(|e| match addr {
            Some(a) => format!("net.listen {a}: {e}"),
            None => e,
        })?;
        if let (Some(key), Some(ebpf)) = (&key, other.ebpf.as_mut()) {
            // Unused by its SK_REUSEPORT program, but every object of this
            // process then holds the one key in effect: whoever reads a
            // FLOW_KEY map of it (tests, bpftool) reads the XDP program's.
            write_flow_key(ebpf, key)?;
        }
        let theirs = other.counters.take();
        if let (Some(mine), Some(theirs)) = (&steering.counters, theirs) {
            if let (Ok(mut mine), Ok(mut theirs)) = (mine.maps.lock(), theirs.maps.lock()) {
                mine.append(&mut theirs);
            }
        }
        steering.others.push(other);
    }
    if !rest.is_empty() {
        steering.description = format!(
            "{}, SK_REUSEPORT on each of the {} net.listen addresses",
            steering.description,
            groups.len()
        );
    }
    Ok(steering)
}

/// Loads the object and sets up `reuseport`, and XDP too when `xdp` is
/// `Some(takeover)` (see [`setup`]).
fn setup_ebpf(
    config: &Config,
    listeners: &[TcpListener],
    cpus: &[Option<usize>],
    xdp: Option<Option<&Path>>,
) -> Result<Steering, String> {
    if EBPF_OBJECT.is_empty() {
        return Err(
            "this tlsfront was built without eBPF programs (AYA_BUILD_SKIP=1); \
             rebuild with the nightly toolchain and bpf-linker (scripts/setup.sh)"
                .into(),
        );
    }
    let worker_cpus: Vec<u32> = cpus
        .iter()
        .map(|c| c.and_then(|c| u32::try_from(c).ok()))
        .collect::<Option<_>>()
        .ok_or("the workers are not pinned to CPUs (worker.pin_cpus = 0)")?;
    if worker_cpus.is_empty() || worker_cpus.len() != listeners.len() {
        return Err("no workers".into());
    }
    if worker_cpus.len() > MAX_WORKERS as usize {
        return Err(format!("more than {MAX_WORKERS} workers"));
    }
    let possible = aya::util::nr_cpus()
        .map_err(|(what, e)| format!("reading {what}: {e}"))?
        .max(1);
    let possible = u32::try_from(possible).unwrap_or(u32::MAX);
    if let Some(&too_big) = worker_cpus.iter().find(|&&c| c >= possible) {
        return Err(format!("CPU {too_big} is not a possible CPU"));
    }

    let ebpf = load_object(possible)?;

    // From here on `steering` owns the object: when a later step fails,
    // dropping it undoes the earlier ones (XDP link, SOCKETS entries; a
    // socket can be in one REUSEPORT_SOCKARRAY only, so the entries must go
    // before a fallback loads the object again).
    let mut steering = Steering {
        active: Active::Reuseport,
        description: format!("reuseport ({REUSEPORT_TEXT})"),
        ebpf: Some(ebpf),
        xdp_link: None,
        flow: None,
        registered: Vec::new(),
        counters: None,
        others: Vec::new(),
    };
    let ebpf = steering.ebpf.as_mut().expect("set just above");
    let program: &mut SkReuseport = program_of(ebpf, names::REUSEPORT_PROGRAM, "SK_REUSEPORT")?;
    program
        .load()
        .map_err(|e| format!("loading the SK_REUSEPORT program: {}", explain(&e)))?;
    steering.counters = Some(Arc::new(SteeringCounters::take(ebpf, worker_cpus.clone())?));

    if let Some(takeover) = xdp {
        let interface = config
            .xdp_interface
            .0
            .clone()
            .ok_or("net.xdp.interface is not set")?;
        let ebpf = steering.ebpf.as_mut().expect("set above");
        let key = random_flow_key()?;
        let ports: Vec<u16> = config.listen.0.iter().map(SocketAddr::port).collect();
        setup_workers(ebpf, &ports, &worker_cpus, &key)?;
        setup_cpumap(ebpf, config.xdp_queue_size, &worker_cpus)?;
        let program: &mut Xdp = program_of(ebpf, names::XDP_PROGRAM, "XDP")?;
        program
            .load()
            .map_err(|e| format!("loading the XDP program: {}", explain(&e)))?;
        let prog_fd = program
            .fd()
            .map_err(|e| format!("the XDP program: {}", explain(&e)))?
            .as_fd();
        let (link, origin) = match takeover.map(|s| XdpLink::take_over(s, &interface, prog_fd)) {
            Some(Ok((link, pid))) => {
                info!("steering: took the XDP link on {interface} over from pid {pid}");
                (
                    link,
                    format!("; link taken over from pid {pid}, program replaced without a gap"),
                )
            }
            Some(Err(e)) => {
                info!("steering: no XDP link taken over ({e}); attaching a new one");
                let link = attach_xdp(prog_fd, &interface, config.xdp_mode)?;
                (link, format!("; new link, none taken over: {e}"))
            }
            None => (
                attach_xdp(prog_fd, &interface, config.xdp_mode)?,
                String::new(),
            ),
        };
        let native = link.native();
        steering.xdp_link = Some(Arc::new(link));
        steering.flow = Some(FlowWorkers {
            key,
            cpus: worker_cpus.clone(),
            listen: config.listen.0.clone(),
        });
        steering.active = Active::Xdp { native };
        steering.description = format!(
            "xdp ({} on {interface}, CPUMAP queue {}, workers' CPUs {}{origin}) + reuseport",
            if native { "native" } else { "generic" },
            config.xdp_queue_size,
            worker_cpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }

    // Listeners: SOCKETS[cpu] = the first worker pinned to that CPU.
    let Steering {
        ebpf, registered, ..
    } = &mut steering;
    let ebpf = ebpf.as_mut().expect("set above");
    {
        let map = ebpf
            .map_mut(names::SOCKETS)
            .ok_or("the eBPF object has no SOCKETS map")?;
        let mut sockets = ReusePortSockArray::try_from(map).map_err(|e| explain(&e))?;
        let mut seen = BTreeSet::new();
        for (worker, (listener, &cpu)) in listeners.iter().zip(&worker_cpus).enumerate() {
            if !seen.insert(cpu) {
                warn!(
                    worker,
                    cpu,
                    "steering: another worker is pinned to CPU {cpu} already; \
                     this one only gets connections the kernel's hash gives it"
                );
                continue;
            }
            sockets
                .set(cpu, listener, 0)
                .map_err(|e| format!("adding worker {worker}'s listener: {}", explain(&e)))?;
            registered.push(cpu);
        }
    }

    // Attach SK_REUSEPORT last: until now the kernel's hash was in effect.
    let program: &mut SkReuseport = ebpf
        .program_mut(names::REUSEPORT_PROGRAM)
        .ok_or("the eBPF object has no SK_REUSEPORT program")?
        .try_into()
        .map_err(|e| explain(&e))?;
    program
        .attach(&listeners[0])
        .map_err(|e| format!("attaching SK_REUSEPORT to the listeners: {}", explain(&e)))?;
    info!("steering: {}", steering.description);
    Ok(steering)
}

/// Loads the eBPF object with `CPUMAP` and `SOCKETS` sized for `possible`
/// CPUs (indexed by CPU id); the other maps have their compiled sizes
/// (`CPUS`, `STEERED`: [`MAX_WORKERS`]).
fn load_object(possible: u32) -> Result<Ebpf, String> {
    EbpfLoader::new()
        .map_max_entries(names::CPUMAP, possible)
        .map_max_entries(names::SOCKETS, possible)
        .load(EBPF_OBJECT)
        .map_err(|e| format!("loading the eBPF object: {}", explain(&e)))
}

/// 128 bits from the OS random generator: the flow hash key of this start.
fn random_flow_key() -> Result<FlowHashKey, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| "the OS random generator failed (flow hash key)".to_string())?;
    Ok(FlowHashKey::from_bytes(bytes))
}

/// The maps the XDP program reads to pick a worker: the steered ports, the
/// CPU of each worker slot, the number of slots and the hash key.
fn setup_workers(
    ebpf: &mut Ebpf,
    ports: &[u16],
    worker_cpus: &[u32],
    key: &FlowHashKey,
) -> Result<(), String> {
    {
        let map = ebpf.map_mut(names::PORTS).ok_or("no PORTS map")?;
        let mut map: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(|e| explain(&e))?;
        // Every address's port: the hash spreads each over the workers.
        for &port in ports {
            map.insert(port, 1, 0)
                .map_err(|e| format!("PORTS: {}", explain(&e)))?;
        }
    }
    write_flow_key(ebpf, key)?;
    {
        let map = ebpf.map_mut(names::CPUS).ok_or("no CPUS map")?;
        let mut list: Array<_, u32> = Array::try_from(map).map_err(|e| explain(&e))?;
        for (slot, &cpu) in worker_cpus.iter().enumerate() {
            let slot = u32::try_from(slot).map_err(|_| "too many workers")?;
            list.set(slot, cpu, 0)
                .map_err(|e| format!("CPUS: {}", explain(&e)))?;
        }
    }
    {
        let map = ebpf.map_mut(names::CONFIG).ok_or("no CONFIG map")?;
        let mut cfg: Array<_, u32> = Array::try_from(map).map_err(|e| explain(&e))?;
        let n = u32::try_from(worker_cpus.len()).map_err(|_| "too many workers")?;
        cfg.set(CONFIG_WORKERS, n, 0)
            .map_err(|e| format!("CONFIG: {}", explain(&e)))?;
    }
    Ok(())
}

/// `FLOW_KEY[0] = key`.
fn write_flow_key(ebpf: &mut Ebpf, key: &FlowHashKey) -> Result<(), String> {
    let map = ebpf.map_mut(names::FLOW_KEY).ok_or("no FLOW_KEY map")?;
    // `[u64; 2]` has the layout of the `#[repr(C)]` FlowHashKey.
    let mut slot: Array<_, [u64; 2]> = Array::try_from(map).map_err(|e| explain(&e))?;
    slot.set(0, [key.k0, key.k1], 0)
        .map_err(|e| format!("FLOW_KEY: {}", explain(&e)))
}

/// A CPUMAP queue of `queue_size` frames for each CPU a worker runs on.
fn setup_cpumap(ebpf: &mut Ebpf, queue_size: u32, worker_cpus: &[u32]) -> Result<(), String> {
    let map = ebpf.map_mut(names::CPUMAP).ok_or("no CPUMAP map")?;
    let mut cpumap = CpuMap::try_from(map).map_err(|e| explain(&e))?;
    let distinct: BTreeSet<u32> = worker_cpus.iter().copied().collect();
    for cpu in distinct {
        cpumap
            .set(cpu, queue_size, None, 0)
            .map_err(|e| format!("CPUMAP entry for CPU {cpu}: {}", explain(&e)))?;
    }
    Ok(())
}

fn attach_xdp(
    program: std::os::fd::BorrowedFd<'_>,
    interface: &str,
    mode: XdpMode,
) -> Result<XdpLink, String> {
    let attach = |native: bool| {
        XdpLink::attach(program, interface, native).map_err(|e| {
            let name = if native { "native" } else { "generic" };
            format!("attaching XDP ({name}) to {interface}: {}", explain(&e))
        })
    };
    match mode {
        XdpMode::Native => attach(true),
        XdpMode::Generic => attach(false),
        XdpMode::Auto => attach(true).or_else(|native_err| {
            info!(
                "steering: native XDP on {interface} not possible ({native_err}); trying generic"
            );
            attach(false).map_err(|e| format!("{e} (native mode: {native_err})"))
        }),
    }
}

/// The error and its sources on one line, with a hint when the cause is a
/// missing privilege or missing kernel support.
/// The program `name` of the object, as its type (`kind` for messages).
fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no {kind} program"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| explain(&e))
}

fn explain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut errno = None;
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        source = s.source();
    }
    // aya sometimes embeds the io::Error without exposing it as a source.
    let lower = text.to_lowercase();
    let hint = match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => Some(PRIVILEGE_HINT),
        Some(libc::ENOSYS) => Some("the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"),
        Some(libc::EOPNOTSUPP) => Some("not supported by this kernel or driver"),
        Some(libc::EBUSY) => Some(
            "another XDP program is attached there (a running tlsfront? start the new one \
             with --takeover to take its link over)",
        ),
        _ if lower.contains("operation not permitted") || lower.contains("permission denied") => {
            Some(PRIVILEGE_HINT)
        }
        _ => None,
    };
    match hint {
        Some(h) => format!("{text} [{h}]"),
        None => text,
    }
}

const PRIVILEGE_HINT: &str = "missing privileges: eBPF steering needs CAP_BPF and CAP_NET_ADMIN \
     (or root), and a memlock limit that allows BPF maps";

/// A [`SteeringStats`] as an aya map value.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default)]
struct StatsValue(SteeringStats);

// SAFETY: `SteeringStats` is `#[repr(C)]`, made only of `u64` fields (no
// padding, no pointers, every bit pattern valid), so it can
// be copied from and to the kernel's map memory byte for byte;
// `StatsValue` is `repr(transparent)` over it.
unsafe impl Pod for StatsValue {}

/// The `STATS` and `STEERED` per-CPU maps of every loaded object (one per
/// `net.listen` address), read per worker and summed over the objects:
/// worker n's column shows the counters of the CPU it is pinned to, and how
/// many segments the XDP program steered to worker slot n (from every CPU).
struct SteeringCounters {
    maps: Mutex<Vec<ObjectCounters>>,
    /// CPU of each worker.
    cpus: Vec<u32>,
}

/// The counter maps of one object.
struct ObjectCounters {
    stats: PerCpuArray<MapData, StatsValue>,
    /// Counted by the XDP program, which only the first object attaches.
    steered: PerCpuArray<MapData, u64>,
}

impl SteeringCounters {
    /// Takes the counter maps out of `ebpf` (they stay alive with the
    /// programs that use them).
    fn take(ebpf: &mut Ebpf, cpus: Vec<u32>) -> Result<SteeringCounters, String> {
        let stats = ebpf
            .take_map(names::STATS)
            .ok_or("the eBPF object has no STATS map")?;
        let steered = ebpf
            .take_map(names::STEERED)
            .ok_or("the eBPF object has no STEERED map")?;
        let object = ObjectCounters {
            stats: PerCpuArray::try_from(stats).map_err(|e| explain(&e))?,
            steered: PerCpuArray::try_from(steered).map_err(|e| explain(&e))?,
        };
        Ok(SteeringCounters {
            maps: Mutex::new(vec![object]),
            cpus,
        })
    }

    /// `STATS` of every possible CPU, summed over the objects.
    fn per_cpu(&self) -> Option<Vec<SteeringStats>> {
        let maps = self.maps.lock().ok()?;
        let mut sum: Vec<SteeringStats> = Vec::new();
        for object in maps.iter() {
            let values = object.stats.get(&0, 0).ok()?;
            sum.resize(sum.len().max(values.len()), SteeringStats::default());
            for (total, v) in sum.iter_mut().zip(values.iter()) {
                total.add(&v.0);
            }
        }
        Some(sum)
    }

    /// Segments steered to worker `slot`, summed over the CPUs that
    /// steered them and the objects.
    fn steered_to(&self, slot: usize) -> u64 {
        let Ok(slot) = u32::try_from(slot) else {
            return 0;
        };
        let Ok(maps) = self.maps.lock() else {
            return 0;
        };
        maps.iter()
            .map(|o| o.steered.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .sum()
    }
}

impl PerWorkerCounters for SteeringCounters {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        let steered = self.steered_to(worker);
        let cpu = self.cpus.get(worker).copied();
        // The per-CPU counters of a CPU shared by several workers are
        // counted in the first one only, so that the totals stay right.
        let here = match cpu {
            Some(cpu) if !self.cpus[..worker].contains(&cpu) => self
                .per_cpu()
                .and_then(|all| all.get(cpu as usize).copied())
                .unwrap_or_default(),
            _ => SteeringStats::default(),
        };
        vec![
            ("steer_xdp_seen", here.xdp_seen),
            ("steer_xdp_passed", here.xdp_passed),
            ("steer_xdp_parse_errors", here.xdp_parse_errors),
            ("steer_xdp_redirect_failed", here.xdp_redirect_failed),
            ("steer_xdp_steered_here", steered),
            ("steer_reuseport_selected", here.reuseport_selected),
            ("steer_reuseport_fallback", here.reuseport_fallback),
        ]
    }
}

#[cfg(test)]
mod tests;
