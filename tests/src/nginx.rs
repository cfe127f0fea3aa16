//! A real nginx as an upstream that consumes the PROXY protocol ([`Nginx`]),
//! and a plain HTTP GET ([`http_get`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{temp_dir, write_file, ReservedPort, TempDir, IO_TIMEOUT};

/// A real nginx (one process, no daemon) whose HTTP server on 127.0.0.1
/// requires the PROXY protocol and answers every request with
/// `pp=$proxy_protocol_addr:$proxy_protocol_port`. Killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    _reservation: ReservedPort,
}

impl Nginx {
    /// Starts nginx on a reserved port and waits until it accepts
    /// connections; `Err` with its error log if it does not.
    pub fn start() -> Result<Nginx, String> {
        Nginx::start_conf(|d, port| {
            format!(
                "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 \"pp=$proxy_protocol_addr:$proxy_protocol_port\\n\";
        }}
    }}
}}
"
            )
        })
    }

    /// nginx with the configuration `conf(dir, port)` makes (its own temp
    /// dir, a reserved port it must listen on at 127.0.0.1); waits until
    /// that port accepts connections.
    pub fn start_conf(conf: impl FnOnce(&str, u16) -> String) -> Result<Nginx, String> {
        let dir = temp_dir();
        let d = dir.path().display().to_string();
        let reservation = ReservedPort::new();
        let port = reservation.port;
        let conf = conf(&d, port);
        let conf_path = write_file(dir.path(), "nginx.conf", &conf);
        let nginx = crate::fleet::NGINX;
        crate::prereq::require(&[crate::prereq::Need::File(
            nginx,
            "nginx, from scripts/setup.sh",
        )]);
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("spawn nginx: {e}"))?;
        let mut n = Nginx {
            child,
            port,
            dir,
            _reservation: reservation,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = n.child.try_wait() {
                return Err(format!("nginx exited ({s}):\n{}", n.error_log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx did not listen within 10 s:\n{}",
                    n.error_log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` over plain HTTP/1.0; returns the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no header end in {text:?}")))?;
    Ok((head.to_string(), body.to_string()))
}
