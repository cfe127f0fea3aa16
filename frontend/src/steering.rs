//! Connection steering (`net.steering`): which worker gets a connection.
//!
//! - `none`: the kernel's SO_REUSEPORT hash over the workers' listeners.
//! - `reuseport`: the SK_REUSEPORT program `tlsfront_reuseport` (in `ebpf/`)
//!   selects `SOCKETS[cpu]`, the listener of the worker pinned to the CPU
//!   that processes the SYN; with no listener for that CPU the kernel's hash
//!   chooses.
//! - `xdp`: the XDP program `tlsfront_xdp` on `net.xdp.interface` hashes
//!   each TCP segment to the listening port (`tlsfront_shared::flow_hash`
//!   of its 4-tuple) onto a worker and moves it to that worker's CPU through
//!   a CPUMAP; the kernel's TCP processing, and so the `reuseport` program,
//!   then run on that CPU, and the connection lands on that worker.
//!
//! [`setup`] loads the object embedded at build time, fills the maps,
//! attaches, and falls back as `net.steering.fallback` says when that is
//! impossible (no privileges, no kernel support, no eBPF in this build).
//! The returned [`Steering`] handle undoes everything on drop: the XDP
//! program leaves the interface, the listeners leave `SOCKETS` (the
//! SK_REUSEPORT program then selects nothing, i.e. the kernel's hash; it
//! goes away with the listeners). The XDP attachment is a bpf_link owned by
//! this process, so the kernel also removes it when the process dies
//! without unwinding (SIGKILL).

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, CpuMap, HashMap, MapData, PerCpuArray, ReusePortSockArray};
use aya::programs::{SkReuseport, Xdp, XdpMode as AyaXdpMode};
use aya::{Ebpf, EbpfLoader, Pod};
use tlsfront_shared::{names, SteeringStats, CONFIG_WORKERS, MAX_WORKERS, STATS_CPUS};
use tracing::{info, warn};

use crate::config::{Config, Steering as Mode, SteeringFallback, XdpMode};
use crate::metrics::PerWorkerCounters;

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
    xdp_link: Option<(aya::programs::xdp::XdpLinkId, String)>,
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
    /// What is in effect.
    pub fn active(&self) -> Active {
        self.active
    }

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

    /// Removes the XDP program from its interface now (also done on drop).
    pub fn detach_xdp(&mut self) -> Result<(), String> {
        let Some((link, interface)) = self.xdp_link.take() else {
            return Ok(());
        };
        let program = self
            .ebpf
            .as_mut()
            .and_then(|e| e.program_mut(names::XDP_PROGRAM))
            .ok_or("the XDP program is gone")?;
        let program: &mut Xdp = program.try_into().map_err(|e| explain(&e))?;
        program
            .detach(link)
            .map_err(|e| format!("removing XDP from {interface}: {}", explain(&e)))?;
        info!("steering: XDP program removed from {interface}");
        Ok(())
    }

    fn none(description: String) -> Steering {
        Steering {
            active: Active::None,
            description,
            ebpf: None,
            xdp_link: None,
            registered: Vec::new(),
            counters: None,
            others: Vec::new(),
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.detach_xdp() {
            warn!("steering: {e}");
        }
        if let Some(map) = self.ebpf.as_mut().and_then(|e| e.map_mut(names::SOCKETS)) {
            if let Ok(mut sockets) = ReusePortSockArray::try_from(map) {
                for cpu in self.registered.drain(..) {
                    let _ = sockets.clear_index(&cpu);
                }
            }
        }
    }
}

/// Removes whatever XDP program is attached to `interface` through netlink
/// (`ip link set dev IF xdp off`), e.g. one left by a process that attached
/// with netlink and was killed. Programs attached by a live process through
/// a bpf_link (what [`setup`] does on current kernels) cannot be removed
/// this way; they leave with their process or its [`Steering`].
pub fn remove_xdp(interface: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", interface, "xdp", "off"])
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip link set dev {interface} xdp off: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const NONE_TEXT: &str = "kernel SO_REUSEPORT hash over the workers' listeners";
const REUSEPORT_TEXT: &str = "SK_REUSEPORT: the listener of the worker on the receiving CPU";

/// Sets up `config.steering` for `groups` (one per `net.listen` address,
/// worker n's socket at index n) whose workers run on `cpus` (worker n on
/// `cpus[n]`), with `net.steering.fallback` when that is impossible. `Err`
/// only when the fallback is `fail`.
pub fn setup(
    config: &Config,
    groups: &[Vec<TcpListener>],
    cpus: &[Option<usize>],
) -> Result<Steering, String> {
    let fallback = config.steering_fallback;
    let mut failed: Vec<String> = Vec::new();
    if config.steering == Mode::Xdp {
        match setup_groups(config, groups, cpus, true) {
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
        match setup_groups(config, groups, cpus, false) {
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

/// [`setup_ebpf`] for the first group (with XDP when `xdp`: the XDP
/// program steers every port of `net.listen`), then `reuseport` for each
/// other group, all or nothing.
fn setup_groups(
    config: &Config,
    groups: &[Vec<TcpListener>],
    cpus: &[Option<usize>],
    xdp: bool,
) -> Result<Steering, String> {
    let (first, rest) = groups.split_first().ok_or("no listeners")?;
    let mut steering = setup_ebpf(config, first, cpus, xdp)?;
    for (i, group) in rest.iter().enumerate() {
        let addr = config.listen.0.get(i + 1).copied();
        let mut other = setup_ebpf(config, group, cpus, false).map_err(|e| match addr {
            Some(a) => format!("net.listen {a}: {e}"),
            None => e,
        })?;
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

/// Loads the object and sets up `reuseport`, and XDP too when `xdp`.
fn setup_ebpf(
    config: &Config,
    listeners: &[TcpListener],
    cpus: &[Option<usize>],
    xdp: bool,
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

    let ebpf = EbpfLoader::new()
        .map_max_entries(names::CPUMAP, possible)
        .map_max_entries(names::SOCKETS, possible)
        .load(EBPF_OBJECT)
        .map_err(|e| format!("loading the eBPF object: {}", explain(&e)))?;

    // From here on `steering` owns the object: when a later step fails,
    // dropping it undoes the earlier ones (XDP link, SOCKETS entries; a
    // socket can be in one REUSEPORT_SOCKARRAY only, so the entries must go
    // before a fallback loads the object again).
    let mut steering = Steering {
        active: Active::Reuseport,
        description: format!("reuseport ({REUSEPORT_TEXT})"),
        ebpf: Some(ebpf),
        xdp_link: None,
        registered: Vec::new(),
        counters: None,
        others: Vec::new(),
    };
    let ebpf = steering.ebpf.as_mut().expect("set just above");
    let program: &mut SkReuseport = ebpf
        .program_mut(names::REUSEPORT_PROGRAM)
        .ok_or("the eBPF object has no SK_REUSEPORT program")?
        .try_into()
        .map_err(|e| explain(&e))?;
    program
        .load()
        .map_err(|e| format!("loading the SK_REUSEPORT program: {}", explain(&e)))?;
    let stats_map = ebpf
        .take_map(names::STATS)
        .ok_or("the eBPF object has no STATS map")?;
    let stats_map: PerCpuArray<MapData, StatsValue> =
        PerCpuArray::try_from(stats_map).map_err(|e| explain(&e))?;
    steering.counters = Some(Arc::new(SteeringCounters {
        maps: Mutex::new(vec![stats_map]),
        cpus: worker_cpus.clone(),
    }));

    if xdp {
        let interface = config
            .xdp_interface
            .0
            .clone()
            .ok_or("net.xdp.interface is not set")?;
        let ebpf = steering.ebpf.as_mut().expect("set above");
        setup_xdp_maps(ebpf, config, &worker_cpus)?;
        let program: &mut Xdp = ebpf
            .program_mut(names::XDP_PROGRAM)
            .ok_or("the eBPF object has no XDP program")?
            .try_into()
            .map_err(|e| explain(&e))?;
        program
            .load()
            .map_err(|e| format!("loading the XDP program: {}", explain(&e)))?;
        let (link, native) = attach_xdp(program, &interface, config.xdp_mode)?;
        steering.xdp_link = Some((link, interface.clone()));
        steering.active = Active::Xdp { native };
        steering.description = format!(
            "xdp ({} on {interface}, CPUMAP queue {}, workers' CPUs {}) + reuseport",
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

fn setup_xdp_maps(ebpf: &mut Ebpf, config: &Config, worker_cpus: &[u32]) -> Result<(), String> {
    {
        let map = ebpf.map_mut(names::PORTS).ok_or("no PORTS map")?;
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(|e| explain(&e))?;
        // Every address's port: the hash spreads each over the workers.
        for addr in &config.listen.0 {
            ports
                .insert(addr.port(), 1, 0)
                .map_err(|e| format!("PORTS: {}", explain(&e)))?;
        }
    }
    {
        let map = ebpf.map_mut(names::CPUMAP).ok_or("no CPUMAP map")?;
        let mut cpumap = CpuMap::try_from(map).map_err(|e| explain(&e))?;
        let distinct: BTreeSet<u32> = worker_cpus.iter().copied().collect();
        for cpu in distinct {
            cpumap
                .set(cpu, config.xdp_queue_size, None, 0)
                .map_err(|e| format!("CPUMAP entry for CPU {cpu}: {}", explain(&e)))?;
        }
    }
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

fn attach_xdp(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(aya::programs::xdp::XdpLinkId, bool), String> {
    match mode {
        XdpMode::Native => {
            program_attach(program, interface, AyaXdpMode::Driver).map(|l| (l, true))
        }
        XdpMode::Generic => program_attach(program, interface, AyaXdpMode::Skb).map(|l| (l, false)),
        XdpMode::Auto => match program_attach(program, interface, AyaXdpMode::Driver) {
            Ok(link) => {
                info!("steering: XDP attached to {interface} in native mode");
                Ok((link, true))
            }
            Err(native_err) => {
                info!("steering: native XDP on {interface} not possible ({native_err}); trying generic");
                program_attach(program, interface, AyaXdpMode::Skb)
                    .map(|l| (l, false))
                    .map_err(|e| format!("{e} (native mode: {native_err})"))
            }
        },
    }
}

fn program_attach(
    program: &mut Xdp,
    interface: &str,
    mode: AyaXdpMode,
) -> Result<aya::programs::xdp::XdpLinkId, String> {
    let name = match mode {
        AyaXdpMode::Driver => "native",
        AyaXdpMode::Skb => "generic",
        _ => "other",
    };
    program
        .attach(interface, mode)
        .map_err(|e| format!("attaching XDP ({name}) to {interface}: {}", explain(&e)))
}

/// The error and its sources on one line, with a hint when the cause is a
/// missing privilege or missing kernel support.
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

// SAFETY: `SteeringStats` is `#[repr(C)]`, made only of `u64` fields and a
// `u64` array (no padding, no pointers, every bit pattern valid), so it can
// be copied from and to the kernel's map memory byte for byte;
// `StatsValue` is `repr(transparent)` over it.
unsafe impl Pod for StatsValue {}

/// The `STATS` per-CPU map, read per worker: worker n's column shows the
/// counters of the CPU it is pinned to, and how many segments the XDP
/// program steered to that CPU (from every CPU).
struct SteeringCounters {
    /// The STATS map of each loaded object (one per `net.listen` address).
    maps: Mutex<Vec<PerCpuArray<MapData, StatsValue>>>,
    /// CPU of each worker.
    cpus: Vec<u32>,
}

impl SteeringCounters {
    /// Per CPU, the sum over the objects.
    fn read(&self) -> Option<Vec<SteeringStats>> {
        let maps = self.maps.lock().ok()?;
        let mut sum: Vec<SteeringStats> = Vec::new();
        for map in maps.iter() {
            let values = map.get(&0, 0).ok()?;
            sum.resize(sum.len().max(values.len()), SteeringStats::default());
            for (total, v) in sum.iter_mut().zip(values.iter()) {
                total.add(&v.0);
            }
        }
        Some(sum)
    }
}

impl PerWorkerCounters for SteeringCounters {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        let zero = || {
            vec![
                ("steer_xdp_seen", 0),
                ("steer_xdp_passed", 0),
                ("steer_xdp_parse_errors", 0),
                ("steer_xdp_redirect_failed", 0),
                ("steer_xdp_steered_here", 0),
                ("steer_reuseport_selected", 0),
                ("steer_reuseport_fallback", 0),
            ]
        };
        let Some(&cpu) = self.cpus.get(worker) else {
            return zero();
        };
        // A CPU shared by several workers is counted in the first one only,
        // so that the totals stay right.
        if self.cpus[..worker].contains(&cpu) {
            return zero();
        }
        let Some(per_cpu) = self.read() else {
            return zero();
        };
        let here = per_cpu.get(cpu as usize).copied().unwrap_or_default();
        let steered: u64 = if (cpu as usize) < STATS_CPUS {
            per_cpu.iter().map(|s| s.xdp_redirected[cpu as usize]).sum()
        } else {
            0
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
