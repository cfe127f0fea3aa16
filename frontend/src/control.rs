//! The control socket: a unix stream socket (mode 0600) on which the running
//! process answers one command per connection.
//!
//! Protocol: the client writes one line, the server answers and closes.
//! - `stats`: the counters as JSON (`Stats::to_json` in `metrics`);
//! - `sysctl`: the running configuration, one `key = value` per line;
//! - `set KEY=VALUE...`: changes live keys on every worker at once;
//! - `reload`: re-reads the config file and certificates;
//! - `xdp-link IFNAME PID`: from a `--takeover` successor (pid PID): the
//!   answer carries this process's XDP link on IFNAME as a descriptor
//!   (`XdpLink::hand_over` in `steering`);
//! - `flow CLIENT_IP:PORT[=SERVER_IP]`: the worker the XDP program sends
//!   that client's connection to (`SteeringControl::flow_worker`).
//!
//! An answer that starts with `error: ` is a refusal, with the reason.
//!
//! It runs on its own plain thread so that a slow or stuck client of the
//! control socket never delays a worker. What it changes is
//! `Live` (module `live`), the running state.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::live::Live;
use crate::metrics::Stats;
use crate::steering::{SteeringControl, XDP_LINK_COMMAND};

/// Why the control socket could not be served or queried.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum ControlError {
    /// Another live process already answers on this path.
    #[error("control socket {}: another tlsfront is running there (to replace it, start the new one with --takeover, then stop the old one)", path.display())]
    InUse { path: PathBuf },
    /// An I/O error on the socket at `path`.
    #[error("control socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The answer was not what the protocol promises.
    #[error("control socket {}: unexpected answer: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ControlError + 'a {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The bound control socket; on exit, [`ControlSocket::remove`] deletes
/// the path only if it is still this process's socket (a successor that
/// took it over keeps its own).
pub(crate) struct ControlSocket {
    path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Removes the socket file if it is still ours.
    pub(crate) fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the control socket and answers on a background thread.
///
/// A leftover socket file from a process that died is replaced; one on
/// which a process still answers is an error, unless `takeover` (a new
/// process replacing a draining one: the old one keeps its bound socket,
/// the path now leads to the new one).
pub(crate) fn serve(
    path: &Path,
    stats: Arc<Stats>,
    live: Arc<Live>,
    takeover: bool,
    steering: Arc<SteeringControl>,
) -> Result<ControlSocket, ControlError> {
    use std::os::unix::fs::MetadataExt;
    if path.exists() {
        if !takeover && UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path, "removing the previous socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path, "chmod 0600"))?;
    let inode = std::fs::symlink_metadata(path)
        .map_err(io_err(path, "stat"))?
        .ino();
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("tlsfront-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &stats, &live, &steering) {
                    debug!("control socket {}: {e}", owned.display());
                }
            }
        })
        .map_err(io_err(path, "starting its thread"))?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
        inode,
    })
}

fn answer(
    stream: UnixStream,
    stats: &Stats,
    live: &Live,
    steering: &SteeringControl,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(1024)
        .read_line(&mut line)?;
    let line = line.trim();
    let (command, args) = line.split_once(' ').unwrap_or((line, ""));
    let reply = match command {
        "stats" => stats.to_json().to_string(),
        "sysctl" => live
            .config()
            .entries()
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect(),
        "set" => match live.set(&args.split_whitespace().collect::<Vec<_>>()) {
            Ok(applied) => applied,
            Err(e) => format!("error: {e}"),
        },
        "reload" => match live.reload() {
            Ok(summary) => summary,
            Err(e) => format!("error: {e}"),
        },
        "flow" => match steering.flow_worker(args) {
            Ok(answer) => answer,
            Err(e) => format!("error: {e}"),
        },
        XDP_LINK_COMMAND => match steering.xdp_link() {
            Some(link) => {
                link.hand_over(&stream, args)?;
                return stream.shutdown(std::net::Shutdown::Write);
            }
            None => "error: no XDP link here (net.steering is not xdp, or it fell back)".into(),
        },
        other => format!("error: unknown command {other:?} (stats, sysctl, set, reload, flow)"),
    };
    let mut stream = stream;
    stream.write_all(reply.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Sends `command` to the process answering on `path`; returns its answer.
pub fn query(path: &Path, command: &str) -> Result<String, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(io_err(path, "connect"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err(path, "set timeout"))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io_err(path, "write"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(io_err(path, "read"))?;
    if let Some(reason) = reply.strip_prefix("error: ") {
        return Err(ControlError::Protocol {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        });
    }
    Ok(reply)
}

/// Queries `stats` and parses the JSON.
pub fn query_stats(path: &Path) -> Result<serde_json::Value, ControlError> {
    let reply = query(path, "stats")?;
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Asks the process behind `path` to set live keys.
pub fn set_live(path: &Path, assignments: &[String]) -> Result<String, ControlError> {
    query(path, &format!("set {}", assignments.join(" ")))
}
