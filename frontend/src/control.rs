//! The control socket: a unix stream socket (mode 0600) on which the running
//! process answers one command per connection.
//!
//! Protocol: the client writes one line, the server answers and closes.
//! - `stats`: the counters as JSON ([`crate::metrics::Stats::to_json`]);
//! - `sysctl`: the running configuration, one `key = value` per line.
//!
//! It runs on its own plain thread so that a slow or stuck client of the
//! control socket never delays a worker.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::config::Config;
use crate::metrics::Stats;

/// Why the control socket could not be served or queried.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another live process already answers on this path.
    #[error("control socket {}: another tlsfront is running there", path.display())]
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

/// Binds the control socket and answers on a background thread.
///
/// A leftover socket file from a process that died is replaced; one on
/// which a process still answers is an error.
pub fn serve(path: &Path, stats: Arc<Stats>, config: Config) -> Result<(), ControlError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path, "removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path, "chmod 0600"))?;
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("tlsfront-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &stats, &config) {
                    debug!("control socket {}: {e}", owned.display());
                }
            }
        })
        .map_err(io_err(path, "starting its thread"))?;
    Ok(())
}

fn answer(stream: UnixStream, stats: &Stats, config: &Config) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(1024)
        .read_line(&mut line)?;
    let reply = match line.trim() {
        "stats" => stats.to_json().to_string(),
        "sysctl" => config
            .entries()
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect(),
        other => format!("error: unknown command {other:?} (stats, sysctl)"),
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
