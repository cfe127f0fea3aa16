//! `cache.remote = redis+cluster://…`: two tlsfront processes on loopback
//! share TLS 1.2 sessions (session IDs, no tickets) through a real
//! three-node Redis Cluster. A session made on one resumes on the other,
//! whichever node owns its key's slot.
//!
//! Needs redis-server, redis-cli and openssl (installed by
//! scripts/setup.sh); fails naming the one that is missing.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tlsfront_tests::openssl_client::{lines_starting, s_client};
use tlsfront_tests::prereq::Need;
use tlsfront_tests::*;

/// Sessions spread over the cluster's slots.
const SESSIONS: usize = 20;
/// `cache.remote.timeout`: generous, the test machine may be loaded.
const BUDGET: &str = "200ms";
const WAIT: Duration = Duration::from_secs(10);

/// The cluster's redis-server processes, killed on drop.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    /// (client port, bus port) of each node, held while the cluster runs.
    _reservations: Vec<(ReservedPort, ReservedPort)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = tlsfront_tests::prereq::tool("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A reserved port below 55000 and its cluster bus port (+10000), also
/// reserved; another pair when the bus port is taken. Both are held until
/// the cluster is gone (redis binds them with SO_REUSEADDR, see
/// [`ReservedPort`]).
fn cluster_ports() -> (ReservedPort, ReservedPort) {
    for _ in 0..100 {
        let client = ReservedPort::new();
        if client.port >= 55000 {
            continue;
        }
        if let Ok(bus) = ReservedPort::at(client.port + 10000) {
            return (client, bus);
        }
    }
    panic!("no port pair (p, p + 10000) free in 100 tries");
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let reservations: Vec<_> = (0..3).map(|_| cluster_ports()).collect();
        let ports: Vec<u16> = reservations.iter().map(|(p, _)| p.port).collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: ports.clone(),
            _reservations: reservations,
        };
        for p in &ports {
            let child = tlsfront_tests::prereq::tool("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{p}.conf")))
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            cluster.nodes.push(child);
        }
        let deadline = Instant::now() + WAIT;
        for p in &ports {
            while !redis_cli(*p, &["PING"]).contains("PONG") {
                assert!(Instant::now() < deadline, "redis-server :{p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = tlsfront_tests::prereq::tool("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in &ports {
            while !redis_cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok: {}",
                    redis_cli(*p, &["CLUSTER", "INFO"])
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Keys held by each node.
    fn sizes(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|p| redis_cli(*p, &["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

#[test]
fn tls12_sessions_resume_across_hosts_through_a_redis_cluster() {
    tlsfront_tests::prereq::require(&[
        Need::Program("redis-server"),
        Need::Program("redis-cli"),
        Need::Program("openssl"),
    ]);
    let dir = temp_dir();
    let cluster = Cluster::start(dir.path());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [42u8; 48]).unwrap();
    let secret = format!("file:{}", secret.display());
    let url = cluster.url();
    let opts: Vec<(&str, &str)> = vec![
        ("tickets.enabled", "0"),
        ("tls.protocols", "1.2,1.3"),
        ("cache.remote", &url),
        ("cache.remote.secret", &secret),
        ("cache.remote.timeout", BUDGET),
        ("worker.count", "1"),
    ];
    let a = Frontend::start(&opts);
    let b = Frontend::start(&opts);

    for i in 0..SESSIONS {
        let sess = dir.path().join(format!("s{i}.pem"));
        let sess = sess.to_str().unwrap();
        let out = s_client(a.port, "localhost", &["-tls1_2", "-sess_out", sess], b"");
        assert_eq!(lines_starting(&out, "New,"), 1, "{}", out.describe());
        // The session reaches the cluster through A's background writer.
        let want = i as u64 + 1;
        let (s, ok) = a.wait_stats(WAIT, |s| s.total.get("remote_puts") >= want);
        assert!(ok, "session {i} was not written to the cluster: {s:?}");
        let out = s_client(b.port, "localhost", &["-tls1_2", "-sess_in", sess], b"");
        assert_eq!(
            lines_starting(&out, "Reused,"),
            1,
            "session {i} made on A did not resume on B\n{}\nB: {:?}",
            out.describe(),
            b.stats()
        );
    }
    let (sb, ok) = b.wait_stats(WAIT, |s| s.total.get("remote_hits") >= SESSIONS as u64);
    assert!(ok, "B: {sb:?}");
    assert!(sb.total.get("remote_hits") >= 1);
    assert_eq!(sb.total.get("remote_errors"), 0, "B: {sb:?}");
    assert_eq!(sb.total.get("remote_timeouts"), 0, "B: {sb:?}");
    let sa = a.stats();
    assert_eq!(sa.total.get("remote_errors"), 0, "A: {sa:?}");
    // The sessions are spread over the nodes (keys are HMACs: which node
    // holds which is random; all 20 on one node has odds of 3^-19).
    let sizes = cluster.sizes();
    eprintln!(
        "keys per node {sizes:?}; B remote_hits {}",
        sb.total.get("remote_hits")
    );
    assert_eq!(sizes.iter().sum::<u64>(), SESSIONS as u64, "{sizes:?}");
    assert!(sizes.iter().filter(|n| **n > 0).count() >= 2, "{sizes:?}");
    drop(a);
    drop(b);
    drop(cluster);
}
