//! `openssl s_client` as a client that judges resumption (`Reused`), and the
//! session files it saves (`-sess_out`), read and edited with `openssl sess_id`.

use std::path::Path;
use std::time::Duration;

use crate::{run_cmd, CmdOutput};

/// How long one `openssl` command may take.
pub const OPENSSL_TIMEOUT: Duration = Duration::from_secs(20);

/// `openssl s_client -connect 127.0.0.1:PORT -servername NAME ARGS...` with
/// `stdin` (then closed); panics if it does not finish in time.
pub fn s_client(port: u16, server_name: &str, args: &[&str], stdin: &[u8]) -> CmdOutput {
    s_client_to(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        server_name,
        args,
        stdin,
    )
}

/// [`s_client`] to any address (in a namespace: call it from
/// [`crate::netns::in_netns`]; the child inherits the thread's namespace).
pub fn s_client_to(
    addr: std::net::SocketAddr,
    server_name: &str,
    args: &[&str],
    stdin: &[u8],
) -> CmdOutput {
    let mut cmd = crate::prereq::tool("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        server_name,
    ])
    .args(args);
    let out = run_cmd(cmd, stdin, OPENSSL_TIMEOUT);
    assert!(
        !out.timed_out(),
        "openssl s_client {args:?} did not finish within {OPENSSL_TIMEOUT:?}\n{}",
        out.describe()
    );
    out
}

/// Lines of `out.stdout` starting with `prefix` (`New,` / `Reused,`).
pub fn lines_starting(out: &CmdOutput, prefix: &str) -> usize {
    out.stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(prefix))
        .count()
}

/// The `subject=` line s_client printed (the served certificate).
pub fn served_subject(out: &CmdOutput) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

/// `openssl sess_id ARGS -in FROM -out TO`.
pub fn sess_id_convert(args: &[&str], from: &Path, to: &Path) {
    let mut cmd = crate::prereq::tool("openssl");
    cmd.arg("sess_id")
        .args(args)
        .arg("-in")
        .arg(from)
        .arg("-out")
        .arg(to);
    let o = run_cmd(cmd, b"", OPENSSL_TIMEOUT);
    assert_eq!(
        o.code(),
        Some(0),
        "openssl sess_id {args:?}\n{}",
        o.describe()
    );
}

/// The `Session-ID:` of a saved s_client session (PEM), as bytes.
pub fn session_id_of(sess: &Path) -> Vec<u8> {
    let mut cmd = crate::prereq::tool("openssl");
    cmd.args(["sess_id", "-noout", "-text", "-in"]).arg(sess);
    let out = run_cmd(cmd, b"", OPENSSL_TIMEOUT);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let hex = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Session-ID:"))
        .unwrap_or("")
        .trim()
        .to_string();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex session id"))
        .collect()
}

/// Writes to `out` the session of `sess` with the bytes `old` (its session
/// ID or ticket, found in the DER encoding) replaced by `new` (same length).
pub fn replace_in_session(sess: &Path, old: &[u8], new: &[u8], out: &Path) {
    assert_eq!(old.len(), new.len(), "the replacement must keep the length");
    assert!(!old.is_empty(), "nothing to replace");
    let der = out.with_extension("der");
    sess_id_convert(&["-outform", "DER"], sess, &der);
    let mut bytes = std::fs::read(&der).unwrap();
    let at = bytes
        .windows(old.len())
        .position(|w| w == old)
        .expect("the bytes to replace in the DER session");
    bytes[at..at + old.len()].copy_from_slice(new);
    std::fs::write(&der, &bytes).unwrap();
    sess_id_convert(&["-inform", "DER"], &der, out);
}

/// Runs `n` full handshakes with `openssl s_client ARGS -ign_eof -sess_out`
/// and a `GET /` (so that TLS 1.3 tickets, sent after the handshake, are
/// read before the server closes), one session file each in `dir`: the
/// sessions a restart must keep.
/// Panics if a handshake did not complete as a new session.
pub fn save_sessions(port: u16, dir: &Path, n: usize, args: &[&str]) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let file = dir.join(format!("session-{i}.pem"));
            let file_arg = file.display().to_string();
            let mut all = args.to_vec();
            all.extend(["-ign_eof", "-sess_out", &file_arg]);
            let out = s_client(port, "localhost", &all, b"GET / HTTP/1.0\r\n\r\n");
            assert_eq!(
                lines_starting(&out, "New,"),
                1,
                "handshake {i} to save a session\n{}",
                out.describe()
            );
            assert!(
                file.exists(),
                "s_client wrote no session file\n{}",
                out.describe()
            );
            file
        })
        .collect()
}

/// How many of `sessions` resume (`Reused,`) with `openssl s_client ARGS
/// -sess_in`.
pub fn count_reused(port: u16, sessions: &[std::path::PathBuf], args: &[&str]) -> usize {
    sessions
        .iter()
        .filter(|file| {
            let file_arg = file.display().to_string();
            let mut all = args.to_vec();
            all.extend(["-sess_in", &file_arg]);
            lines_starting(&s_client(port, "localhost", &all, b""), "Reused,") == 1
        })
        .count()
}
