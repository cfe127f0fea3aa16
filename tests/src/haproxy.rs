//! A real HAProxy on loopback for the tests that put one in front of or
//! behind tlsfront (`proxy_in.rs`, `proxy_tlvs.rs`).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::HAPROXY;
use crate::prereq::{require, Need};
use crate::{temp_dir, write_file, ReservedPort, TempDir};

/// HAProxy (`-db`, foreground) with a configuration of the test's, its
/// stdout and stderr in a log file; killed on drop.
pub struct Haproxy {
    child: Child,
    /// The reserved port its frontend binds on 127.0.0.1.
    pub port: ReservedPort,
    log: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `global` lines (besides `maxconn`), `mode tcp`
    /// defaults, and `sections(port)`: the frontends and backends, one of
    /// which binds `127.0.0.1:port`; returns once that port accepts.
    pub fn start(global: &str, sections: impl FnOnce(u16) -> String) -> Haproxy {
        require(&[Need::File(HAPROXY, "haproxy, from scripts/setup.sh")]);
        let dir = temp_dir();
        let port = ReservedPort::new();
        let conf = format!(
            "global\n    maxconn 256\n{global}\
             defaults\n    mode tcp\n    log global\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n{}",
            sections(port.port)
        );
        let path = write_file(dir.path(), "haproxy.cfg", &conf);
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).expect("haproxy log file");
        let child = Command::new(HAPROXY)
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log file"))
            .stderr(out)
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&h.addr(), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {}:\n{}",
                h.addr(),
                h.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.port.addr()
    }

    /// What it wrote (its log, with `log stdout` in `global`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
