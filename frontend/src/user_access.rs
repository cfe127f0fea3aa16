//! Whether another user may read or write a path: what `tlsfront check`
//! needs to know of `process.user` before any process runs as it. After
//! the privilege drop a reload re-reads certificates, keys, OCSP responses
//! and `tls.client_ca` as that user, and `unix:` upstreams are connected to
//! as that user; a root-only file found at start would fail only later.
//!
//! Decided from the permission bits as the kernel does for a process of
//! that user without capabilities: every directory on the way must be
//! searchable, then the owner's, the group's (primary or supplementary) or
//! the others' bits apply, the first class that matches. POSIX ACLs and
//! LSMs are not consulted, so a file an ACL opens is reported (the message
//! says which bits refused it).

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// What the user must be able to do to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read it (certificates, keys, CA bundles, OCSP responses).
    Read,
    /// Write it (connecting to a unix socket needs write permission).
    Write,
}

/// A user as the kernel checks permissions for it.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    name: String,
    uid: Uid,
    gids: Vec<Gid>,
}

impl Identity {
    /// `user` with its primary and supplementary groups.
    pub(crate) fn of(user: &User) -> Result<Identity, String> {
        let name = CString::new(user.name.as_str())
            .map_err(|_| format!("user name {:?} contains a NUL byte", user.name))?;
        let gids = nix::unistd::getgrouplist(&name, user.gid)
            .map_err(|e| format!("groups of {}: {e}", user.name))?;
        Ok(Identity {
            name: user.name.clone(),
            uid: user.uid,
            gids,
        })
    }

    /// `Ok` if this user may do `access` to `path`, else why not, naming
    /// the file or directory that refuses it, its mode and owner.
    pub(crate) fn may(&self, path: &Path, access: Access) -> Result<(), String> {
        if self.uid.is_root() {
            return Ok(());
        }
        let path = absolute(path)?;
        let mut dir = PathBuf::new();
        let parents: Vec<&Path> = path.ancestors().skip(1).collect();
        for parent in parents.into_iter().rev() {
            dir.clear();
            dir.push(parent);
            self.allowed(&dir, 0o1, "enter")?;
        }
        match access {
            Access::Read => self.allowed(&path, 0o4, "read"),
            Access::Write => self.allowed(&path, 0o2, "write"),
        }
    }

    /// Whether the class of `path`'s mode that applies to this user has
    /// the bit `bit` (of `rwx` = 4, 2, 1).
    fn allowed(&self, path: &Path, bit: u32, verb: &str) -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = meta.mode();
        let (class, shift) = if meta.uid() == self.uid.as_raw() {
            ("owner", 6)
        } else if self.gids.iter().any(|g| g.as_raw() == meta.gid()) {
            ("group", 3)
        } else {
            ("others", 0)
        };
        if (mode >> shift) & bit != 0 {
            return Ok(());
        }
        Err(format!(
            "{} may not {verb} {} (mode {:04o}, owner {}:{}; the {class} bits apply)",
            self.name,
            path.display(),
            mode & 0o7777,
            user_name(meta.uid()),
            group_name(meta.gid()),
        ))
    }
}

/// `path` made absolute against the working directory (as `run`, started
/// from the same directory, would open it).
fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .map_err(|e| format!("{}: the working directory: {e}", path.display()))
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prereq::{require, Need};
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> Identity {
        let user = User::from_name("nobody")
            .expect("looking up nobody")
            .expect("the user nobody exists");
        Identity::of(&user).expect("nobody's groups")
    }

    /// A file in a directory open to everyone, with `mode`, owned by root.
    fn file_with_mode(dir: &Path, mode: u32) -> PathBuf {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let path = dir.join(format!("f{mode:o}"));
        std::fs::write(&path, b"x").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_file_others_may_read_is_readable_and_not_writable() {
        require(&[Need::Root]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = file_with_mode(dir.path(), 0o644);
        assert_eq!(nobody().may(&path, Access::Read), Ok(()));
        let refused = nobody()
            .may(&path, Access::Write)
            .expect_err("0644 root file");
        assert!(
            refused.contains("may not write") && refused.contains("mode 0644"),
            "{refused}"
        );
    }

    #[test]
    fn a_root_only_file_is_refused_naming_it_its_mode_and_owner() {
        require(&[Need::Root]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = file_with_mode(dir.path(), 0o600);
        let refused = nobody()
            .may(&path, Access::Read)
            .expect_err("0600 root file");
        assert!(
            refused.contains(&path.display().to_string())
                && refused.contains("mode 0600")
                && refused.contains("owner root:root"),
            "{refused}"
        );
    }

    #[test]
    fn a_readable_file_in_a_directory_the_user_may_not_enter_is_refused_naming_the_directory() {
        require(&[Need::Root]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = file_with_mode(dir.path(), 0o644);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod dir");
        let refused = nobody()
            .may(&path, Access::Read)
            .expect_err("closed directory");
        assert!(
            refused.contains(&format!("may not enter {}", dir.path().display())),
            "{refused}"
        );
    }

    #[test]
    fn the_owner_bits_apply_to_the_owner_even_when_others_may_more() {
        require(&[Need::Root]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = file_with_mode(dir.path(), 0o044);
        let who = nobody();
        nix::unistd::chown(&path, Some(who.uid), None).expect("chown to nobody");
        let refused = who.may(&path, Access::Read).expect_err("owner has no bits");
        assert!(refused.contains("the owner bits apply"), "{refused}");
    }
}
