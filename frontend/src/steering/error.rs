//! Why steering could not be set up, why a `flow` question was not
//! answered, and why an XDP link could not be taken over: one error type
//! each, every variant naming the step, the map or program, the interface
//! or the address it is about.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tlsfront_shared::MAX_WORKERS;

/// Why a steering mode could not be set up. The set-up falls back as
/// `net.steering.fallback` says; only [`SteeringError::Refused`] leaves
/// `steering::setup`.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    /// `net.steering` could not be set up and `net.steering.fallback =
    /// fail` forbids falling back.
    #[error("net.steering = {mode} is not possible: {cause} (net.steering.fallback = fail)")]
    Refused {
        /// The mode that was asked for (`xdp`, `reuseport`).
        mode: &'static str,
        /// Why it was not possible.
        cause: Box<SteeringError>,
    },
    /// This binary carries no eBPF object.
    #[error(
        "this tlsfront was built without eBPF programs (AYA_BUILD_SKIP=1); \
         rebuild with the nightly toolchain and bpf-linker (scripts/setup.sh)"
    )]
    NotBuilt,
    /// The programs select by CPU, so the workers must be pinned.
    #[error("the workers are not pinned to CPUs (worker.pin_cpus = 0)")]
    NotPinned,
    /// No worker, or not one listener per worker.
    #[error("no workers")]
    NoWorkers,
    /// More workers than the maps indexed by worker slot hold.
    #[error("more than {MAX_WORKERS} workers")]
    TooManyWorkers,
    /// The number of possible CPUs could not be read.
    #[error("reading {what}: {source}")]
    PossibleCpus {
        /// The file read (`/sys/devices/system/cpu/possible`).
        what: String,
        /// The read's error.
        source: io::Error,
    },
    /// A worker is pinned to a CPU the kernel's per-CPU maps do not have.
    #[error("CPU {0} is not a possible CPU")]
    CpuNotPossible(u32),
    /// `net.steering = xdp` without `net.xdp.interface`.
    #[error("net.xdp.interface is not set")]
    NoInterface,
    /// No flow hash key could be drawn.
    #[error("the OS random generator failed (flow hash key)")]
    Random,
    /// The embedded object lacks a map or program this code expects (a
    /// build of mismatched crates).
    #[error("the eBPF object has no {name} {kind}")]
    Missing {
        /// `map` or the program type.
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// A step the kernel (or aya before it) refused.
    #[error("{step}: {cause}")]
    Kernel {
        /// What was being done, e.g. `loading the XDP program`.
        step: String,
        /// The error and its sources, with a hint.
        cause: Explained,
    },
    /// Neither native nor generic XDP could be attached (`net.xdp.mode =
    /// auto`).
    #[error("{generic} (native mode: {native})")]
    XdpAttach {
        /// Why native mode failed.
        native: Box<SteeringError>,
        /// Why generic mode failed then.
        generic: Box<SteeringError>,
    },
    /// The set-up for one of the further `net.listen` addresses failed.
    #[error("net.listen {addr}: {cause}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: Box<SteeringError>,
    },
}

impl SteeringError {
    /// `step` failed with `error` (an aya or I/O error).
    pub(super) fn kernel(
        step: impl Into<String>,
        error: &(dyn StdError + 'static),
    ) -> SteeringError {
        SteeringError::Kernel {
            step: step.into(),
            cause: Explained::of(error),
        }
    }
}

/// An error and its sources on one line, with a hint when the cause is a
/// missing privilege or missing kernel support. aya's errors nest the
/// errno several sources deep, and sometimes only in their text.
#[derive(Debug)]
pub struct Explained {
    text: String,
    hint: Option<&'static str>,
}

impl Explained {
    fn of(e: &(dyn StdError + 'static)) -> Explained {
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
        if let Some(io) = e.downcast_ref::<io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        let lower = text.to_lowercase();
        let hint = match errno {
            Some(libc::EPERM) | Some(libc::EACCES) => Some(PRIVILEGE_HINT),
            Some(libc::ENOSYS) => Some("the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"),
            Some(libc::EOPNOTSUPP) => Some("not supported by this kernel or driver"),
            Some(libc::EBUSY) => Some(
                "another XDP program is attached there (a running tlsfront? start the new one \
                 with --takeover to take its link over)",
            ),
            _ if lower.contains("operation not permitted")
                || lower.contains("permission denied") =>
            {
                Some(PRIVILEGE_HINT)
            }
            _ => None,
        };
        Explained { text, hint }
    }
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hint {
            Some(h) => write!(f, "{} [{h}]", self.text),
            None => f.write_str(&self.text),
        }
    }
}

const PRIVILEGE_HINT: &str = "missing privileges: eBPF steering needs CAP_BPF and CAP_NET_ADMIN \
     (or root), and a memlock limit that allows BPF maps";

/// Why the control socket's `flow CLIENT_IP:PORT[=SERVER_IP[:PORT]]`
/// question was not answered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// XDP is not in effect here.
    #[error("no flow hash here (net.steering is not xdp, or it fell back)")]
    NoFlowHash,
    /// The client part is not an address with a port.
    #[error("{0:?} is not CLIENT_IP:PORT")]
    Client(String),
    /// The server part is neither an address nor an address with a port.
    #[error("{0:?} is not SERVER_IP or SERVER_IP:PORT")]
    Server(String),
    /// No server address was given and the first `net.listen` address is a
    /// wildcard, so the hash input is unknown.
    #[error("net.listen is {0}: give the server address, CLIENT_IP:PORT=SERVER_IP")]
    ServerNeeded(SocketAddr),
    /// The port is not one the XDP program steers.
    #[error("port {0} is not a net.listen port: XDP does not steer it")]
    NotSteered(u16),
    /// No worker to hash onto.
    #[error("no workers")]
    NoWorkers,
}

/// Why a `--takeover` successor could not take the running process's XDP
/// link over (it then attaches a link of its own).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Talking to the predecessor's control socket failed.
    #[error("control socket {}: {source}", path.display())]
    Socket {
        /// The control socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The predecessor answered without a link, in its own words (e.g. it
    /// has none, or it is on another interface).
    #[error("{0}")]
    Refused(String),
    /// An answer that is not `ok IFNAME MODE PID`.
    #[error("bad answer {0:?} on the control socket")]
    BadAnswer(String),
    /// The kernel refused to swap this process's program into the link.
    #[error("BPF_LINK_UPDATE of the XDP link of pid {pid} on {interface}: {source}")]
    Update {
        /// The predecessor.
        pid: u32,
        /// The link's interface.
        interface: String,
        /// The error.
        source: io::Error,
    },
}
