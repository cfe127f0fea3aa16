//! The running process's control socket through the CLI: `sysctl -w`,
//! `sysctl` reads, `reload`.

use std::collections::HashMap;
use std::path::Path;

use crate::{tlsfront_cmd, CmdOutput};

/// `tlsfront sysctl --socket S -w ARGS...`.
pub fn sysctl_write(socket: &Path, assignments: &[&str]) -> CmdOutput {
    let sock = socket.display().to_string();
    let mut args = vec!["sysctl", "--socket", &sock, "-w"];
    args.extend_from_slice(assignments);
    tlsfront_cmd(&args)
}

/// `tlsfront sysctl --socket S KEY...`, parsed into `key -> value`; panics
/// when the command fails.
pub fn sysctl_read(socket: &Path, keys: &[&str]) -> HashMap<String, String> {
    let sock = socket.display().to_string();
    let mut args = vec!["sysctl", "--socket", &sock];
    args.extend_from_slice(keys);
    let out = tlsfront_cmd(&args);
    assert_eq!(
        out.code(),
        Some(0),
        "tlsfront {args:?}:\n{}",
        out.describe()
    );
    crate::parse_sysctl(&out.stdout)
}

/// `tlsfront reload --socket S`.
pub fn reload_cmd(socket: &Path) -> CmdOutput {
    let sock = socket.display().to_string();
    tlsfront_cmd(&["reload", "--socket", &sock])
}
