//! A real redis-server on a reserved loopback port, for the remote-tier
//! tests that need no network namespace (the fleet's lives in
//! [`crate::fleet`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::resp::{resp, RespValue};
use crate::ReservedPort;

/// redis-server on 127.0.0.1 without persistence, killed on drop.
pub struct LocalRedis {
    child: Option<Child>,
    /// Where it listens (TCP, plain or TLS as started).
    pub addr: SocketAddr,
    _port: ReservedPort,
}

impl LocalRedis {
    /// Plain TCP; returns once it answers `PING`.
    pub fn start(dir: &Path) -> LocalRedis {
        let redis = LocalRedis::spawn(dir, |cmd, port| {
            cmd.args(["--port", &port.to_string()]);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(redis.command(&[b"PING"]), Ok(RespValue::Simple(ref s)) if s == "PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING",
                redis.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// With the listening options `listen` adds for the reserved port
    /// (`--port` or `--port 0 --tls-port`, ACL users…); returns once the
    /// port accepts connections.
    pub fn spawn(dir: &Path, listen: impl FnOnce(&mut Command, u16)) -> LocalRedis {
        let port = ReservedPort::new();
        let mut cmd = crate::prereq::tool("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null());
        listen(&mut cmd, port.port);
        let child = cmd.spawn().expect("spawn redis-server");
        let addr = port.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        LocalRedis {
            child: Some(child),
            addr,
            _port: port,
        }
    }

    /// One command over a fresh plain connection.
    pub fn command(&self, args: &[&[u8]]) -> std::io::Result<RespValue> {
        resp(self.addr, args)
    }

    /// `DBSIZE`.
    pub fn keys(&self) -> i64 {
        match self.command(&[b"DBSIZE"]) {
            Ok(RespValue::Int(n)) => n,
            other => panic!("DBSIZE on {}: {other:?}", self.addr),
        }
    }

    /// SIGKILL: Redis is gone, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
