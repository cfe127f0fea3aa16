//! Network namespaces for the steering tests: a pair of namespaces joined by
//! a veth pair, addresses from 198.18.0.0/15 (benchmarking range) that exist
//! only inside them, removed on drop (also when the test fails).
//!
//! - [`NetnsPair`]: namespaces `A` (server side) and `B` (client side).
//! - [`NsFrontend`]: `ip netns exec A tlsfront run ...`, killed on drop.
//! - [`NetnsPair::run_in_b`]: runs a command inside `B` (e.g. this test
//!   binary again, as a client, see `tests/steering.rs`).
//!
//! Everything needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN and
//! CAP_BPF for XDP); without it a test fails saying so ([`NEEDS`]).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use tlsfront_shared::{names, FlowHashKey};

use crate::prereq::{require, Need};
use crate::{
    run_cmd, tail, temp_dir, Captured, CapturesOutput, CmdOutput, Stats, TempDir, CLI_TIMEOUT,
    READY_TIMEOUT,
};

/// Server address, inside namespace A.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Client address, inside namespace B.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// What every namespace test needs: root (CAP_SYS_ADMIN, CAP_NET_ADMIN,
/// CAP_BPF) and iproute2. [`NetnsPair::create`] and [`NsFrontend::start`]
/// fail the test, naming what is missing, without them.
pub const NEEDS: &[Need] = &[Need::Root, Need::Program("ip")];

/// Runs `f` on a thread that has joined network namespace `ns`: every
/// socket it opens lives there, and so do the threads and processes it
/// starts (they inherit its namespaces). The calling thread is not moved.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a descriptor we own; it changes only the
            // network namespace of this (scoped) thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Runs a command; panics with its output when it fails.
pub fn must(program: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_cmd(cmd, b"", CLI_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "{program} {}: {}",
        args.join(" "),
        out.describe()
    );
    out
}

/// One network namespace with only its loopback (up), deleted on drop: a
/// private copy of the per-namespace sysctls (`net.ipv4.tcp_migrate_req`)
/// and ports, for a test that must change them. Run the test in it with
/// [`in_netns`].
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn loopback_only() -> Netns {
        require(NEEDS);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tfl{}x{n}", std::process::id() % 100_000);
        must("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        must("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        let _ = run_cmd(cmd, b"", CLI_TIMEOUT);
    }
}

/// Two namespaces joined by a veth pair, deleted on drop.
pub struct NetnsPair {
    /// Server-side namespace.
    pub a: String,
    /// Client-side namespace.
    pub b: String,
    /// The veth end inside `a` (where XDP attaches).
    pub if_a: String,
    /// The veth end inside `b`.
    pub if_b: String,
    created: Vec<String>,
}

impl NetnsPair {
    /// Creates `tfs<pid><n>a/b` with `198.18.0.1/24` on A's veth and
    /// `198.18.0.2/24` on B's, both up, loopback up in both.
    pub fn create() -> NetnsPair {
        Self::create_with_queues(1)
    }

    /// The same with `queues` receive and transmit queues on each veth end
    /// (`numrxqueues`, `numtxqueues`): B's end spreads connections over its
    /// transmit queues, A's receives them on as many queues.
    pub fn create_with_queues(queues: u32) -> NetnsPair {
        require(NEEDS);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tfs{}x{n}", std::process::id() % 100_000);
        let mut pair = NetnsPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
            if_a: format!("{tag}a0"),
            if_b: format!("{tag}b0"),
            created: Vec::new(),
        };
        for ns in [pair.a.clone(), pair.b.clone()] {
            must("ip", &["netns", "add", &ns]);
            pair.created.push(ns);
        }
        let (a, b, ia, ib) = (&pair.a, &pair.b, &pair.if_a, &pair.if_b);
        let q = queues.to_string();
        let per_end = ["numtxqueues", &q, "numrxqueues", &q];
        let mut args = vec!["link", "add", ia.as_str()];
        args.extend(per_end);
        args.extend(["type", "veth", "peer", "name", ib.as_str()]);
        args.extend(per_end);
        must("ip", &args);
        // Moved at once: from here on deleting the namespaces removes them.
        must("ip", &["link", "set", ia, "netns", a]);
        must("ip", &["link", "set", ib, "netns", b]);
        must(
            "ip",
            &["-n", a, "addr", "add", &format!("{ADDR_A}/24"), "dev", ia],
        );
        must(
            "ip",
            &["-n", b, "addr", "add", &format!("{ADDR_B}/24"), "dev", ib],
        );
        for (ns, dev) in [(a, ia), (b, ib)] {
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `ip -n A link show <if_a>`.
    pub fn link_a(&self) -> String {
        must("ip", &["-n", &self.a, "link", "show", &self.if_a]).stdout
    }

    /// `numrxqueues` of A's veth end, as the kernel reports it.
    pub fn rx_queues_a(&self) -> Option<u32> {
        let text = must("ip", &["-d", "-n", &self.a, "link", "show", &self.if_a]).stdout;
        let mut words = text.split_whitespace();
        words.find(|w| *w == "numrxqueues")?;
        words.next()?.parse().ok()
    }

    /// Packets the XDP program saw on each receive queue of A's veth end
    /// (`ethtool -S`: `rx_queue_N_xdp_packets`; native XDP only).
    pub fn xdp_packets_per_rx_queue(&self) -> Vec<u64> {
        let text = must(
            "ip",
            &["netns", "exec", &self.a, "ethtool", "-S", &self.if_a],
        )
        .stdout;
        text.lines()
            .filter_map(|l| {
                let (name, value) = l.trim().split_once(": ")?;
                let queue = name.strip_prefix("rx_queue_")?;
                queue.strip_suffix("_xdp_packets")?;
                value.trim().parse().ok()
            })
            .collect()
    }

    /// Whether an XDP program is attached to A's veth end.
    pub fn xdp_attached(&self) -> bool {
        let link = self.link_a();
        link.contains("prog/xdp") || link.contains(" xdp")
    }

    /// Id of the XDP program attached to A's veth end (`prog/xdp id N`).
    pub fn xdp_prog_id(&self) -> Option<u32> {
        let link = self.link_a();
        let mut words = link.split_whitespace();
        words.find(|w| *w == "prog/xdp")?;
        match (words.next(), words.next()) {
            (Some("id"), Some(id)) => id.parse().ok(),
            _ => None,
        }
    }

    /// Turns TX checksum offload off on B's veth end: with native XDP on
    /// A's end, frames redirected through a CPUMAP are otherwise dropped by
    /// TCP as checksum errors (their checksum is never filled in).
    pub fn tx_checksum_off_b(&self) {
        must(
            "ip",
            &[
                "netns", "exec", &self.b, "ethtool", "-K", &self.if_b, "tx", "off",
            ],
        );
    }

    /// MAC address of an interface in a namespace.
    pub fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let text = must("ip", &["-n", ns, "link", "show", dev]).stdout;
        let hex = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {text}"));
        let mut mac = [0u8; 6];
        for (i, part) in hex.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(part, 16).expect("hex MAC");
        }
        mac
    }

    /// A command that runs `program args` inside namespace B.
    pub fn command_in_b(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.b, program]).args(args);
        cmd
    }

    /// Sends raw Ethernet frames out of B's veth end (AF_PACKET, through
    /// python3's standard library so that the test code needs no `unsafe`).
    pub fn send_frames_from_b(&self, frames: &[Vec<u8>]) -> Result<(), String> {
        const SCRIPT: &str = "import socket,sys\n\
            s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
            s.bind((sys.argv[1],0))\n\
            n=0\n\
            for line in sys.stdin:\n\
            \x20   line=line.strip()\n\
            \x20   if line:\n\
            \x20       s.send(bytes.fromhex(line)); n+=1\n\
            print(n)\n";
        let input: String = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect();
        let cmd = self.command_in_b("python3", &["-c", SCRIPT, &self.if_b]);
        let out = run_cmd(cmd, input.as_bytes(), CLI_TIMEOUT);
        if out.code() == Some(0) && out.stdout.trim() == frames.len().to_string() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it (and with it
        // the peer); any XDP program goes with the interface.
        for ns in self.created.drain(..) {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "del", &ns]);
            let _ = run_cmd(cmd, b"", CLI_TIMEOUT);
        }
    }
}

/// `tlsfront run` inside namespace A; killed on drop.
pub struct NsFrontend {
    child: Option<Child>,
    /// Port it listens on (on [`ADDR_A`]).
    pub port: u16,
    /// Its control socket (a path: reachable from any namespace).
    pub socket: std::path::PathBuf,
    /// Shared with a successor started by [`NsFrontend::start_takeover`].
    dir: Arc<TempDir>,
    captured: Captured,
}

impl CapturesOutput for NsFrontend {
    fn captured(&self) -> &Captured {
        &self.captured
    }
}

impl NsFrontend {
    /// Starts `ip netns exec <ns> tlsfront run -o net.listen=198.18.0.1:<port>
    /// -o k=v...` with its own control socket, cache and ticket files, and
    /// waits for `tlsfront: ready`. `Err` carries the output when it does
    /// not get ready (e.g. a steering set-up that failed with fallback = fail).
    pub fn start(ns: &str, port: u16, opts: &[(&str, &str)]) -> Result<NsFrontend, String> {
        Self::launch(ns, port, opts, Arc::new(temp_dir()), false)
    }

    /// Starts the upgrade of this process: the same command in namespace
    /// `ns` with `opts` and `--takeover`, on the same port, control socket,
    /// cache and ticket files; waits for `tlsfront: ready`.
    pub fn start_takeover(&self, ns: &str, opts: &[(&str, &str)]) -> Result<NsFrontend, String> {
        Self::launch(ns, self.port, opts, Arc::clone(&self.dir), true)
    }

    fn launch(
        ns: &str,
        port: u16,
        opts: &[(&str, &str)],
        dir: Arc<TempDir>,
        takeover: bool,
    ) -> Result<NsFrontend, String> {
        require(NEEDS);
        let socket = dir.path().join("control.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(crate::bin()).arg("run");
        if takeover {
            cmd.arg("--takeover");
        }
        let mut all = vec![
            ("net.listen".to_string(), format!("{ADDR_A}:{port}")),
            ("control.socket".to_string(), socket.display().to_string()),
            (
                "cache.path".to_string(),
                dir.path().join("session.cache").display().to_string(),
            ),
            (
                "tickets.path".to_string(),
                dir.path().join("tickets.ring").display().to_string(),
            ),
        ];
        // Not tested here; and a test never writes a sysctl it does not test,
        // even its namespace's own.
        if !opts.iter().any(|(k, _)| *k == "net.migrate_requests") {
            all.push(("net.migrate_requests".to_string(), "0".to_string()));
        }
        all.extend(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in &all {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        let cmdline = format!("{cmd:?}");
        let (child, captured, ready_rx) = Captured::spawn(&mut cmd)?;
        let mut fe = NsFrontend {
            child: Some(child),
            port,
            socket,
            dir,
            captured,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(fe),
            Err(_) => {
                let status = fe.wait_exit(Duration::from_secs(3));
                Err(format!(
                    "not ready ({cmdline}), exit {status:?}\n{}",
                    fe.output()
                ))
            }
        }
    }

    /// Its process id (`ip netns exec` execs tlsfront in place).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the process was killed")
    }

    /// The flow hash key its XDP program uses, read from the kernel.
    pub fn flow_key(&self) -> FlowHashKey {
        flow_key_of(self.pid()).unwrap_or_else(|e| panic!("{e}\n{}", self.output()))
    }

    /// Both, for failure messages (stderr's last 6000 characters).
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            tail(&self.stderr(), 6000)
        )
    }

    /// The `steering` line of the start-up summary.
    pub fn steering_line(&self) -> String {
        self.stdout()
            .lines()
            .find(|l| l.trim_start().starts_with("steering"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    }

    /// The CPU of each worker, from the summary (`pinned to CPUs 0,1`).
    pub fn worker_cpus(&self) -> Vec<usize> {
        let out = self.stdout();
        let line = out
            .lines()
            .find(|l| l.contains("pinned to CPUs"))
            .unwrap_or_else(|| panic!("no `pinned to CPUs` in the summary:\n{out}"));
        let list = line.rsplit("CPUs ").next().unwrap_or("");
        list.trim_end_matches(')')
            .split(',')
            .map(|c| c.trim().parse().expect("CPU number"))
            .collect()
    }

    /// `tlsfront stats --json` of this process.
    pub fn stats(&self) -> Stats {
        let sock = self.socket.display().to_string();
        let out = crate::tlsfront_cmd(&["stats", "--socket", &sock, "--json"]);
        assert_eq!(
            out.code(),
            Some(0),
            "stats: {}\n{}",
            out.describe(),
            self.output()
        );
        Stats::parse(&out.stdout).unwrap_or_else(|e| panic!("stats JSON: {e}: {}", out.stdout))
    }

    /// The worker `tlsfront stats --flow 198.18.0.2:<client_port>` names
    /// for a connection to `server_port` of 198.18.0.1: the process's own
    /// answer, from its key.
    pub fn flow_worker(&self, client_port: u16, server_port: u16) -> usize {
        let sock = self.socket.display().to_string();
        // The first net.listen port is the default; another one is named.
        let flow = if server_port == self.port {
            format!("{ADDR_B}:{client_port}")
        } else {
            format!("{ADDR_B}:{client_port}={ADDR_A}:{server_port}")
        };
        let out = crate::tlsfront_cmd(&["stats", "--socket", &sock, "--flow", &flow]);
        assert_eq!(out.code(), Some(0), "stats --flow: {}", out.describe());
        let mut words = out.stdout.split_whitespace();
        words
            .find(|w| *w == "worker")
            .and_then(|_| words.next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("stats --flow {flow}: {}", out.stdout))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit (graceful stop).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(child) = &self.child {
            let pid = child.id().to_string();
            let _ = run_cmd(
                {
                    let mut c = Command::new("kill");
                    c.args(["-TERM", &pid]);
                    c
                },
                b"",
                CLI_TIMEOUT,
            );
        }
        self.wait_exit(timeout)
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // Let the reader threads catch the last lines.
                thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsFrontend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pairs `(worker, peer port)` of every `handshake done` debug line in
/// `stderr` (needs `log.level = debug`) whose peer is [`ADDR_B`].
pub fn accepted_by(stderr: &str) -> Vec<(usize, u16)> {
    let mut out = Vec::new();
    for line in stderr.lines().filter(|l| l.contains("handshake done")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        let (Some(worker), Some(peer)) = (field("worker="), field("peer=")) else {
            continue;
        };
        let Ok(peer) = peer.parse::<std::net::SocketAddr>() else {
            continue;
        };
        if peer.ip() != std::net::IpAddr::V4(ADDR_B) {
            continue;
        }
        if let Ok(worker) = worker.parse() {
            out.push((worker, peer.port()));
        }
    }
    out
}

/// The key of the flow hash of process `pid`: the `FLOW_KEY` maps among
/// the BPF maps the process holds (`/proc/PID/fdinfo` names their ids),
/// read from the kernel, i.e. the key its XDP program hashes with. With
/// several objects (one per `net.listen` address) every one must hold the
/// same key.
pub fn flow_key_of(pid: u32) -> Result<FlowHashKey, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut keys: Vec<(u32, FlowHashKey)> = Vec::new();
    for entry in entries.flatten() {
        // Descriptors come and go; one that vanished is not a map.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        // Two descriptors of one map: read it once.
        if keys.iter().any(|&(seen, _)| seen == id) {
            continue;
        }
        let data = MapData::from_id(id).map_err(|e| format!("BPF map {id} of pid {pid}: {e}"))?;
        let info = data
            .info()
            .map_err(|e| format!("BPF map {id} of pid {pid}: {e}"))?;
        if info.name_as_str() != Some(names::FLOW_KEY) {
            continue;
        }
        let map: Array<_, [u64; 2]> =
            Array::try_from(Map::Array(data)).map_err(|e| format!("{}: {e}", names::FLOW_KEY))?;
        let [k0, k1] = map
            .get(&0, 0)
            .map_err(|e| format!("{}: {e}", names::FLOW_KEY))?;
        keys.push((id, FlowHashKey { k0, k1 }));
    }
    let Some(&(_, key)) = keys.first() else {
        return Err(format!("pid {pid} holds no {} map", names::FLOW_KEY));
    };
    if keys.iter().any(|&(_, k)| k != key) {
        return Err(format!(
            "pid {pid}'s {} maps hold different keys: {keys:?}",
            names::FLOW_KEY
        ));
    }
    Ok(key)
}

/// The XDP bpf_links process `pid` holds, as (link id, program id), from
/// its `/proc/PID/fdinfo` (the kernel's view: the same link id in two
/// processes is one link).
pub fn xdp_links_of(pid: u32) -> Vec<(u32, u32)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("link_type:").as_deref() != Some("xdp") {
            continue;
        }
        let id = |name| field(name).and_then(|v| v.parse::<u32>().ok());
        if let (Some(link), Some(prog)) = (id("link_id:"), id("prog_id:")) {
            links.push((link, prog));
        }
    }
    links.sort_unstable();
    links.dedup();
    links
}
