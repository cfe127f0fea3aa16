//! A fleet of tlsfront hosts behind a real L4 load balancer, sharing a real
//! Redis (`tests/fleet.rs`).
//!
//! ```text
//!   namespace <tag>lb                          namespace <tag>h<i> (i = 0, 1, 2)
//!   lo: 198.18.0.1  nginx stream balancer      veth 198.18.<11+i>.2/24
//!                   (:443, :8443) and HAProxy  tlsfront on :443 (nginx on :8443)
//!                   (:1443, :9443)
//!       198.18.0.2  redis-server :6379  ◄────►
//!   veth 198.18.<11+i>.1/24 to each host       default route via 198.18.<11+i>.1
//!   clients: threads of the test that setns() here
//! ```
//!
//! Every address exists only inside namespaces the fleet creates; dropping
//! the [`Fleet`] kills its processes and deletes the namespaces (also when
//! a test fails). Needs root and `ip`, `redis-server`, `nginx` with the
//! stream module; without them a test fails saying what is missing ([`NEEDS`]).

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{in_netns, must, NsFrontend};
use crate::prereq::{require, Need};
use crate::process::wait_until;
use crate::resp::{resp, RespValue};
use crate::{temp_dir, write_file, Stats, TempDir};

/// The balancer's address (on the balancer namespace's loopback).
pub const BALANCER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Redis's address (on the balancer namespace's loopback).
pub const STORE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Redis's port.
pub const STORE_PORT: u16 = 6379;

/// Port of the tlsfront fleet, on the hosts and on the balancer.
pub const TLSFRONT_PORT: u16 = 443;

/// Port of the nginx fleet, on the hosts and on the balancer.
pub const NGINX_PORT: u16 = 8443;

/// The HAProxy balancer's port for the tlsfront fleet.
pub const HAPROXY_TLSFRONT_PORT: u16 = 1443;

/// The HAProxy balancer's port for the nginx fleet.
pub const HAPROXY_NGINX_PORT: u16 = 9443;

/// HAProxy as Debian installs it.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// nginx's stream module as Debian installs it.
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Address of host `i`.
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 11 + i as u8, 2)
}

/// The balancer namespace's end of host `i`'s link.
fn gateway_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 11 + i as u8, 1)
}

/// nginx as Debian installs it.
pub const NGINX: &str = "/usr/sbin/nginx";

/// What a fleet needs besides [`crate::netns::NEEDS`]: Redis and nginx
/// with the stream module (`scripts/setup.sh` installs both).
pub const NEEDS: &[Need] = &[
    Need::Root,
    Need::Program("ip"),
    Need::Program("redis-server"),
    Need::File(NGINX, "nginx, from scripts/setup.sh"),
    Need::File(STREAM_MODULE, "nginx's stream module, libnginx-mod-stream"),
];

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    /// SIGTERM, then waits up to `timeout` (SIGKILL after it).
    pub fn stop(mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces and processes of one fleet.
pub struct Fleet {
    /// Balancer, store and clients.
    pub lb: String,
    /// One namespace per host.
    pub hosts: Vec<String>,
    /// Temp dir: configs, certificate, secret, logs.
    pub dir: TempDir,
    /// The tlsfront hosts, by index (empty until [`Fleet::start_tlsfront`]).
    pub tlsfront: Vec<NsFrontend>,
    /// The nginx TLS hosts.
    pub nginx: Vec<Proc>,
    /// The balancer.
    pub balancer: Option<Proc>,
    /// The HAProxy balancer, when started.
    pub haproxy: Option<Proc>,
    /// redis-server.
    pub redis: Option<Proc>,
    /// Certificate and key every host serves.
    pub cert: (PathBuf, PathBuf),
    /// The shared secret (64 bytes) for tickets and the remote cache.
    pub secret: PathBuf,
    created: Vec<String>,
}

impl Fleet {
    /// Creates the namespaces and links of `hosts` hosts (at most 8) and
    /// writes `cert` (PEM chain, key) and a random secret into the temp dir.
    pub fn create(hosts: usize, leaf: &crate::Leaf) -> Fleet {
        require(NEEDS);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tff{}x{n}", std::process::id() % 100_000);
        let dir = temp_dir();
        let cert = leaf.write(dir.path(), "leaf");
        let secret_path = dir.path().join("fleet.secret");
        std::fs::write(&secret_path, random_bytes(64)).expect("write secret");
        let mut fleet = Fleet {
            lb: format!("{tag}lb"),
            hosts: (0..hosts).map(|i| format!("{tag}h{i}")).collect(),
            dir,
            tlsfront: Vec::new(),
            nginx: Vec::new(),
            balancer: None,
            haproxy: None,
            redis: None,
            cert,
            secret: secret_path,
            created: Vec::new(),
        };
        for ns in std::iter::once(&fleet.lb)
            .chain(&fleet.hosts)
            .cloned()
            .collect::<Vec<_>>()
        {
            must("ip", &["netns", "add", &ns]);
            fleet.created.push(ns.clone());
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        let lb = fleet.lb.clone();
        for a in [BALANCER, STORE] {
            must(
                "ip",
                &["-n", &lb, "addr", "add", &format!("{a}/32"), "dev", "lo"],
            );
        }
        for (i, ns) in fleet.hosts.clone().iter().enumerate() {
            let (outer, inner) = (format!("{tag}l{i}"), format!("{tag}v{i}"));
            must(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
            );
            // Moved at once: deleting the namespaces removes both ends.
            must("ip", &["link", "set", &outer, "netns", &lb]);
            must("ip", &["link", "set", &inner, "netns", ns]);
            let gw = gateway_addr(i);
            must(
                "ip",
                &["-n", &lb, "addr", "add", &format!("{gw}/24"), "dev", &outer],
            );
            must(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", host_addr(i)),
                    "dev",
                    &inner,
                ],
            );
            must("ip", &["-n", &lb, "link", "set", &outer, "up"]);
            must("ip", &["-n", ns, "link", "set", &inner, "up"]);
            must(
                "ip",
                &["-n", ns, "route", "add", "default", "via", &gw.to_string()],
            );
        }
        fleet
    }

    /// The URL the hosts reach Redis at.
    pub fn redis_url(&self) -> String {
        format!("redis://{STORE}:{STORE_PORT}")
    }

    /// Address of the balancer's tlsfront (or nginx) side.
    pub fn balancer_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((BALANCER, port))
    }

    /// Starts redis-server (no persistence) and waits until it answers PING.
    pub fn start_redis(&mut self) {
        let dir = self.dir.path().join("redis");
        let _ = std::fs::create_dir_all(&dir);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lb, "redis-server"])
            .args(["--bind", &STORE.to_string()])
            .args(["--port", &STORE_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.redis = Some(Proc {
            child,
            what: "redis-server".into(),
        });
        let addr = SocketAddr::from((STORE, STORE_PORT));
        let lb = self.lb.clone();
        let up = in_netns(&lb, || {
            wait_until(
                Duration::from_secs(10),
                || matches!(resp(addr, &[b"PING"]), Ok(RespValue::Simple(s)) if s == "PONG"),
            )
        });
        assert!(
            up,
            "redis-server did not answer within 10 s:\n{}",
            std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// Stops redis-server (SIGTERM; it saves nothing).
    pub fn stop_redis(&mut self) {
        if let Some(p) = self.redis.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// One RESP command to the fleet's Redis (from the balancer namespace).
    pub fn redis(&self, args: &[&[u8]]) -> io::Result<RespValue> {
        let addr = SocketAddr::from((STORE, STORE_PORT));
        in_netns(&self.lb, || resp(addr, args))
    }

    /// Starts tlsfront on every host with `opts` after the fleet's own
    /// (address, certificate, one worker, the remote cache); waits until all
    /// are ready.
    pub fn start_tlsfront(&mut self, opts: &[(&str, &str)]) {
        self.tlsfront.clear();
        let (cert, key) = (
            self.cert.0.display().to_string(),
            self.cert.1.display().to_string(),
        );
        let secret = format!("file:{}", self.secret.display());
        let url = self.redis_url();
        for (i, ns) in self.hosts.iter().enumerate() {
            let listen = format!("{}:{TLSFRONT_PORT}", host_addr(i));
            let mut all: Vec<(&str, &str)> = vec![
                ("net.listen", &listen),
                ("net.migrate_requests", "0"),
                ("worker.count", "1"),
                ("worker.pin_cpus", "0"),
                ("tls.cert", &cert),
                ("tls.key", &key),
                ("tls.protocols", "1.2,1.3"),
                ("cache.remote", &url),
                ("cache.remote.secret", &secret),
                ("log.level", "warn"),
            ];
            all.extend_from_slice(opts);
            let host = NsFrontend::start(ns, TLSFRONT_PORT, &all)
                .unwrap_or_else(|e| panic!("tlsfront on host {i}: {e}"));
            self.tlsfront.push(host);
        }
    }

    /// Stats of every tlsfront host.
    pub fn stats(&self) -> Vec<Stats> {
        self.tlsfront.iter().map(NsFrontend::stats).collect()
    }

    /// The sum over hosts of counter `name` (from `stats`).
    pub fn sum(stats: &[Stats], name: &str) -> u64 {
        stats.iter().map(|s| s.total.get(name)).sum()
    }

    /// Starts one nginx per host, at its best documented configuration for
    /// a fleet: a TLS server on :8443 (stream module, `ssl_session_cache
    /// shared:SSL:10m` per host, tickets on with the same
    /// `ssl_session_ticket_key` file on every host; nginx has no shared
    /// session store) answering a fixed HTTP response.
    pub fn start_nginx_hosts(&mut self) {
        let nginx = NGINX;
        // 80 bytes: nginx's AES-256 ticket key format.
        let ticket_key = self.dir.path().join("nginx-ticket.key");
        std::fs::write(&ticket_key, random_bytes(80)).expect("write nginx ticket key");
        for (i, ns) in self.hosts.clone().iter().enumerate() {
            let d = self.dir.path().join(format!("nginx-h{i}"));
            std::fs::create_dir_all(&d).expect("nginx dir");
            let conf = format!(
                "{head}events {{ worker_connections 256; }}
stream {{
    server {{
        listen {addr}:{NGINX_PORT} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 300s;
        ssl_session_tickets on;
        ssl_session_ticket_key {ticket_key};
        return \"HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nnginx\\n\";
    }}
}}
",
                head = nginx_conf_head(&d),
                addr = host_addr(i),
                cert = self.cert.0.display(),
                key = self.cert.1.display(),
                ticket_key = ticket_key.display(),
            );
            let path = write_file(&d, "nginx.conf", &conf);
            let p = spawn_nginx(nginx, ns, &d, &path);
            self.nginx.push(p);
            self.wait_listening(ns, SocketAddr::from((host_addr(i), NGINX_PORT)), &d);
        }
    }

    /// Starts the balancer: nginx `stream` round robin over the hosts'
    /// tlsfront (:443) and nginx (:8443).
    pub fn start_balancer(&mut self) {
        let nginx = NGINX;
        let d = self.dir.path().join("balancer");
        std::fs::create_dir_all(&d).expect("balancer dir");
        let servers = |port: u16| -> String {
            (0..self.hosts.len())
                .map(|i| format!("        server {}:{port} max_fails=0;\n", host_addr(i)))
                .collect()
        };
        let conf = format!(
            "{head}events {{ worker_connections 1024; }}
stream {{
    upstream tlsfront_hosts {{
{tls}    }}
    upstream nginx_hosts {{
{ngx}    }}
    server {{ listen {BALANCER}:{TLSFRONT_PORT}; proxy_pass tlsfront_hosts; proxy_connect_timeout 2s; }}
    server {{ listen {BALANCER}:{NGINX_PORT}; proxy_pass nginx_hosts; proxy_connect_timeout 2s; }}
}}
",
            head = nginx_conf_head(&d),
            tls = servers(TLSFRONT_PORT),
            ngx = servers(NGINX_PORT),
        );
        let path = write_file(&d, "nginx.conf", &conf);
        let lb = self.lb.clone();
        self.balancer = Some(spawn_nginx(nginx, &lb, &d, &path));
        self.wait_listening(&lb, self.balancer_addr(TLSFRONT_PORT), &d);
    }

    /// Starts HAProxy (`mode tcp`, `balance roundrobin`) as a second
    /// balancer in the balancer namespace: :1443 over the hosts' tlsfront,
    /// :9443 over their nginx.
    pub fn start_haproxy_balancer(&mut self) {
        require(&[Need::File(HAPROXY, "haproxy, from scripts/setup.sh")]);
        let d = self.dir.path().join("haproxy");
        std::fs::create_dir_all(&d).expect("haproxy dir");
        let servers = |port: u16| -> String {
            (0..self.hosts.len())
                .map(|i| format!("    server h{i} {}:{port}\n", host_addr(i)))
                .collect()
        };
        let conf = format!(
            "global
    maxconn 1024
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend tlsfront_in
    bind {BALANCER}:{HAPROXY_TLSFRONT_PORT}
    default_backend tlsfront_hosts
frontend nginx_in
    bind {BALANCER}:{HAPROXY_NGINX_PORT}
    default_backend nginx_hosts
backend tlsfront_hosts
    balance roundrobin
{tls}backend nginx_hosts
    balance roundrobin
{ngx}",
            tls = servers(TLSFRONT_PORT),
            ngx = servers(NGINX_PORT),
        );
        let path = write_file(&d, "haproxy.cfg", &conf);
        let log = File::create(d.join("error.log")).expect("haproxy log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lb, HAPROXY, "-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("haproxy log"))
            .stderr(log);
        self.haproxy = Some(Proc {
            child: cmd.spawn().expect("spawn haproxy"),
            what: "haproxy balancer".into(),
        });
        let lb = self.lb.clone();
        for port in [HAPROXY_TLSFRONT_PORT, HAPROXY_NGINX_PORT] {
            self.wait_listening(&lb, SocketAddr::from((BALANCER, port)), &d);
        }
    }

    /// The balancer's error log (for failure messages).
    pub fn balancer_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("balancer/error.log")).unwrap_or_default()
    }

    fn wait_listening(&self, ns: &str, addr: SocketAddr, dir: &Path) {
        let ok = in_netns(ns, || {
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
        });
        assert!(
            ok,
            "nginx on {addr} (namespace {ns}) did not listen within 10 s:\n{}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }
}

/// The first lines of an nginx configuration: the stream module, in the
/// foreground, one process, its pid file and error log in `d`.
fn nginx_conf_head(d: &Path) -> String {
    format!(
        "load_module {STREAM_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
",
        d = d.display()
    )
}

fn spawn_nginx(nginx: &str, ns: &str, dir: &Path, conf: &Path) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, nginx])
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc {
        child: cmd.spawn().expect("spawn nginx"),
        what: format!("nginx in {ns}"),
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Processes first (a deleted namespace lives on while they run).
        self.tlsfront.clear();
        self.nginx.clear();
        self.balancer = None;
        self.haproxy = None;
        self.redis = None;
        for ns in self.created.drain(..) {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "del", &ns]);
            let _ = crate::run_cmd(cmd, b"", crate::CLI_TIMEOUT);
        }
    }
}

/// `n` bytes from /dev/urandom.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}
