//! Prerequisites of the test suite: the one place that checks them.
//!
//! The suite runs as root with everything `scripts/setup.sh` installs. A
//! test that lacks a prerequisite must not report `ok` without having done
//! what its name says, so [`require`] fails it and says what is missing and
//! how to get it. There is no "skip".
//!
//! This file depends on `std` only: the unit tests of `frontend/` include it
//! too (`#[path]` in `frontend/src/lib.rs`), so that both crates share it.

use std::path::Path;

/// One thing a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Effective user id 0 (namespaces, XDP, chown, process.user, ...).
    Root,
    /// An executable of this name on `PATH`.
    Program(&'a str),
    /// A file at this path; the second field says what it is and where it
    /// comes from.
    File(&'a str, &'a str),
}

/// Fails the calling test, naming every missing prerequisite, unless all of
/// `needs` are met.
pub fn require(needs: &[Need]) {
    let missing = missing(needs);
    assert!(
        missing.is_empty(),
        "missing prerequisite(s): {}. The suite runs as root with everything \
         scripts/setup.sh installs; a missing prerequisite fails the test (it \
         never passes without running)",
        missing.join("; ")
    );
}

/// The prerequisites of `needs` that are not met, described (empty: all met).
pub fn missing(needs: &[Need]) -> Vec<String> {
    needs
        .iter()
        .filter_map(|need| match *need {
            Need::Root if effective_uid() != Some(0) => {
                Some(format!("not root (effective uid {:?})", effective_uid()))
            }
            Need::Root => None,
            Need::Program(p) if !on_path(p) => {
                Some(format!("no `{p}` on PATH (scripts/setup.sh installs it)"))
            }
            Need::Program(_) => None,
            Need::File(path, what) if !Path::new(path).is_file() => {
                Some(format!("no {path} ({what})"))
            }
            Need::File(..) => None,
        })
        .collect()
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Is there an executable file `program` in a directory of `PATH`?
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `Command::new(program)`, after [`require`] found `program` on `PATH`: a
/// missing tool fails the test with the reason, not with a spawn error.
pub fn tool(program: &str) -> std::process::Command {
    require(&[Need::Program(program)]);
    std::process::Command::new(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "no `tlsfront-no-such-program` on PATH")]
    fn a_missing_program_fails_the_test_naming_it() {
        require(&[Need::Program("tlsfront-no-such-program")]);
    }

    #[test]
    #[should_panic(expected = "no /nonexistent/tlsfront-file (a test file)")]
    fn a_missing_file_fails_the_test_naming_it() {
        require(&[Need::File("/nonexistent/tlsfront-file", "a test file")]);
    }

    #[test]
    fn present_prerequisites_pass() {
        assert!(missing(&[
            Need::Program("sh"),
            Need::File("/proc/self/status", "procfs")
        ])
        .is_empty());
    }
}
