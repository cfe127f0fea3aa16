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
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, CpuMap, HashMap, Map, MapData, MapError, PerCpuArray, ReusePortSockArray};
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

mod error;
mod xdp_link;
pub use error::{FlowError, SteeringError, TakeoverError};
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
    pub fn flow_worker(&self, args: &str) -> Result<String, FlowError> {
        let flow = self.flow.as_ref().ok_or(FlowError::NoFlowHash)?;
        let (client, server) = match args.trim().split_once('=') {
            Some((c, s)) => (c, Some(s)),
            None => (args.trim(), None),
        };
        let client: SocketAddr = client
            .parse()
            .map_err(|_| FlowError::Client(client.to_string()))?;
        // `setup` is only reached with listeners, so `listen` is never
        // empty; the XDP program then steers nothing anyway.
        let first = flow.listen.first().copied().ok_or(FlowError::NoFlowHash)?;
        let server: SocketAddr = match server {
            Some(s) => match (s.parse::<SocketAddr>(), s.parse::<IpAddr>()) {
                (Ok(addr), _) => addr,
                (_, Ok(ip)) => SocketAddr::new(ip, first.port()),
                _ => return Err(FlowError::Server(s.to_string())),
            },
            None if first.ip().is_unspecified() => return Err(FlowError::ServerNeeded(first)),
            None => first,
        };
        if !flow.listen.iter().any(|a| a.port() == server.port()) {
            return Err(FlowError::NotSteered(server.port()));
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
        // At most MAX_WORKERS (checked by `setup_ebpf`).
        let workers = u32::try_from(flow.cpus.len()).map_err(|_| FlowError::NoWorkers)?;
        let slot = worker_slot(&key, &flow.key, workers).ok_or(FlowError::NoWorkers)?;
        let cpu = flow.cpus.get(slot as usize).ok_or(FlowError::NoWorkers)?;
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
) -> Result<Steering, SteeringError> {
    let fallback = config.steering_fallback;
    let mut failed: Vec<String> = Vec::new();
    if config.steering == Mode::Xdp {
        match setup_groups(config, groups, cpus, Some(takeover)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if fallback == SteeringFallback::Fail {
                    return Err(SteeringError::Refused {
                        mode: "xdp",
                        cause: Box::new(e),
                    });
                }
                warn!(
                    "net.steering = xdp is not possible: {e}; net.steering.fallback = {}",
                    fallback.render_name()
                );
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
                if fallback == SteeringFallback::Fail {
                    return Err(SteeringError::Refused {
                        mode: "reuseport",
                        cause: Box::new(e),
                    });
                }
                warn!("net.steering = reuseport is not possible: {e}; using none");
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
) -> Result<Steering, SteeringError> {
    let (first, rest) = groups.split_first().ok_or(SteeringError::NoWorkers)?;
    let mut steering = setup_ebpf(config, first, cpus, xdp)?;
    let key = steering.flow.as_ref().map(|f| f.key);
    for (i, group) in rest.iter().enumerate() {
        let addr = config.listen.0.get(i + 1).copied();
        let mut other = setup_ebpf(config, group, cpus, None).map_err(|e| match addr {
            Some(addr) => SteeringError::Listen {
                addr,
                cause: Box::new(e),
            },
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
) -> Result<Steering, SteeringError> {
    if EBPF_OBJECT.is_empty() {
        return Err(SteeringError::NotBuilt);
    }
    let worker_cpus: Vec<u32> = cpus
        .iter()
        .map(|c| c.and_then(|c| u32::try_from(c).ok()))
        .collect::<Option<_>>()
        .ok_or(SteeringError::NotPinned)?;
    if worker_cpus.is_empty() || worker_cpus.len() != listeners.len() {
        return Err(SteeringError::NoWorkers);
    }
    if worker_cpus.len() > MAX_WORKERS as usize {
        return Err(SteeringError::TooManyWorkers);
    }
    let possible = aya::util::nr_cpus()
        .map_err(|(what, source)| SteeringError::PossibleCpus {
            what: what.to_string(),
            source,
        })?
        .max(1);
    let possible = u32::try_from(possible).unwrap_or(u32::MAX);
    if let Some(&too_big) = worker_cpus.iter().find(|&&c| c >= possible) {
        return Err(SteeringError::CpuNotPossible(too_big));
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
        .map_err(|e| SteeringError::kernel("loading the SK_REUSEPORT program", &e))?;
    steering.counters = Some(Arc::new(SteeringCounters::take(ebpf, worker_cpus.clone())?));

    if let Some(takeover) = xdp {
        let interface = config
            .xdp_interface
            .0
            .clone()
            .ok_or(SteeringError::NoInterface)?;
        let ebpf = steering.ebpf.as_mut().expect("set above");
        let key = random_flow_key()?;
        let ports: Vec<u16> = config.listen.0.iter().map(SocketAddr::port).collect();
        setup_workers(ebpf, &ports, &worker_cpus, &key)?;
        setup_cpumap(ebpf, config.xdp_queue_size, &worker_cpus)?;
        let program: &mut Xdp = program_of(ebpf, names::XDP_PROGRAM, "XDP")?;
        program
            .load()
            .map_err(|e| SteeringError::kernel("loading the XDP program", &e))?;
        let prog_fd = program
            .fd()
            .map_err(|e| SteeringError::kernel("the XDP program", &e))?
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
        let mut sockets: ReusePortSockArray<_> = typed_map(ebpf, names::SOCKETS)?;
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
            sockets.set(cpu, listener, 0).map_err(|e| {
                SteeringError::kernel(format!("adding worker {worker}'s listener"), &e)
            })?;
            registered.push(cpu);
        }
    }

    // Attach SK_REUSEPORT last: until now the kernel's hash was in effect.
    let program: &mut SkReuseport = program_of(ebpf, names::REUSEPORT_PROGRAM, "SK_REUSEPORT")?;
    program
        .attach(&listeners[0])
        .map_err(|e| SteeringError::kernel("attaching SK_REUSEPORT to the listeners", &e))?;
    info!("steering: {}", steering.description);
    Ok(steering)
}

/// Loads the eBPF object with `CPUMAP` and `SOCKETS` sized for `possible`
/// CPUs (indexed by CPU id); the other maps have their compiled sizes
/// (`CPUS`, `STEERED`: [`MAX_WORKERS`]).
fn load_object(possible: u32) -> Result<Ebpf, SteeringError> {
    EbpfLoader::new()
        .map_max_entries(names::CPUMAP, possible)
        .map_max_entries(names::SOCKETS, possible)
        .load(EBPF_OBJECT)
        .map_err(|e| SteeringError::kernel("loading the eBPF object", &e))
}

/// 128 bits from the OS random generator: the flow hash key of this start.
fn random_flow_key() -> Result<FlowHashKey, SteeringError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SteeringError::Random)?;
    Ok(FlowHashKey::from_bytes(bytes))
}

/// The map `name` of `ebpf`.
fn map_of<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, SteeringError> {
    ebpf.map_mut(name)
        .ok_or(SteeringError::Missing { kind: "map", name })
}

/// The map `name` of `ebpf` as `M` (an aya map type over it).
fn typed_map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, SteeringError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    M::try_from(map_of(ebpf, name)?)
        .map_err(|e| SteeringError::kernel(format!("the {name} map"), &e))
}

/// The maps the XDP program reads to pick a worker: the steered ports, the
/// CPU of each worker slot, the number of slots and the hash key.
fn setup_workers(
    ebpf: &mut Ebpf,
    ports: &[u16],
    worker_cpus: &[u32],
    key: &FlowHashKey,
) -> Result<(), SteeringError> {
    let written = |name: &'static str| {
        move |e: MapError| SteeringError::kernel(format!("writing {name}"), &e)
    };
    {
        let mut map: HashMap<_, u16, u8> = typed_map(ebpf, names::PORTS)?;
        // Every address's port: the hash spreads each over the workers.
        for &port in ports {
            map.insert(port, 1, 0).map_err(written(names::PORTS))?;
        }
    }
    write_flow_key(ebpf, key)?;
    // At most MAX_WORKERS slots (checked by `setup_ebpf`).
    let slots = u32::try_from(worker_cpus.len()).map_err(|_| SteeringError::TooManyWorkers)?;
    {
        let mut list: Array<_, u32> = typed_map(ebpf, names::CPUS)?;
        for (slot, &cpu) in (0..slots).zip(worker_cpus) {
            list.set(slot, cpu, 0).map_err(written(names::CPUS))?;
        }
    }
    let mut cfg: Array<_, u32> = typed_map(ebpf, names::CONFIG)?;
    cfg.set(CONFIG_WORKERS, slots, 0)
        .map_err(written(names::CONFIG))
}

/// `FLOW_KEY[0] = key`.
fn write_flow_key(ebpf: &mut Ebpf, key: &FlowHashKey) -> Result<(), SteeringError> {
    // `[u64; 2]` has the layout of the `#[repr(C)]` FlowHashKey.
    let mut slot: Array<_, [u64; 2]> = typed_map(ebpf, names::FLOW_KEY)?;
    slot.set(0, [key.k0, key.k1], 0)
        .map_err(|e| SteeringError::kernel(format!("writing {}", names::FLOW_KEY), &e))
}

/// A CPUMAP queue of `queue_size` frames for each CPU a worker runs on.
fn setup_cpumap(
    ebpf: &mut Ebpf,
    queue_size: u32,
    worker_cpus: &[u32],
) -> Result<(), SteeringError> {
    let mut cpumap: CpuMap<_> = typed_map(ebpf, names::CPUMAP)?;
    let distinct: BTreeSet<u32> = worker_cpus.iter().copied().collect();
    for cpu in distinct {
        cpumap.set(cpu, queue_size, None, 0).map_err(|e| {
            SteeringError::kernel(format!("{} entry for CPU {cpu}", names::CPUMAP), &e)
        })?;
    }
    Ok(())
}

fn attach_xdp(
    program: std::os::fd::BorrowedFd<'_>,
    interface: &str,
    mode: XdpMode,
) -> Result<XdpLink, SteeringError> {
    let attach = |native: bool| {
        XdpLink::attach(program, interface, native).map_err(|e| {
            let name = if native { "native" } else { "generic" };
            SteeringError::kernel(format!("attaching XDP ({name}) to {interface}"), &e)
        })
    };
    match mode {
        XdpMode::Native => attach(true),
        XdpMode::Generic => attach(false),
        XdpMode::Auto => attach(true).or_else(|native| {
            info!("steering: native XDP on {interface} not possible ({native}); trying generic");
            attach(false).map_err(|generic| SteeringError::XdpAttach {
                native: Box::new(native),
                generic: Box::new(generic),
            })
        }),
    }
}

/// The program `name` of the object, as its type (`kind` for messages).
fn program_of<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    kind: &'static str,
) -> Result<&'a mut P, SteeringError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SteeringError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| {
            SteeringError::kernel(format!("the {kind} program {name}"), &e)
        })
}

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
    fn take(ebpf: &mut Ebpf, cpus: Vec<u32>) -> Result<SteeringCounters, SteeringError> {
        let object = ObjectCounters {
            stats: take_per_cpu(ebpf, names::STATS)?,
            steered: take_per_cpu(ebpf, names::STEERED)?,
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

/// The per-CPU array `name`, taken out of `ebpf`.
fn take_per_cpu<V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>, SteeringError> {
    let map = ebpf
        .take_map(name)
        .ok_or(SteeringError::Missing { kind: "map", name })?;
    PerCpuArray::try_from(map).map_err(|e| SteeringError::kernel(format!("the {name} map"), &e))
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
