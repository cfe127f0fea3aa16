//! Shared-memory files: a file (best on tmpfs) mapped by every worker of
//! every tlsfront process, seen as an array of `AtomicU64`. The session
//! cache and the ticket-key ring each keep one.
//!
//! Opening checks that the file is safe to trust (a regular file, owned by
//! this process's user or by the `process.user` it will become, not
//! world-writable), then lets its user check the contents; a file whose
//! contents do not match is rebuilt, never trusted.
//!
//! Every byte of the file is allocated before it is mapped
//! (`posix_fallocate`): a mapping of a sparse file on a full tmpfs raises
//! SIGBUS at the first write to a page the file system cannot supply, which
//! kills the whole process. A file that cannot be backed is refused at
//! start, naming the path, the size and the free space.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

/// Why a shared file (the session cache or the ticket ring) cannot be
/// used; the message names the file, whose name says which it is.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum ShmError {
    /// The size asked for leaves no room for one unit of the file's layout
    /// (a set of the session cache).
    #[error("shared file {}: {size} bytes is too small: at least {min} bytes", path.display())]
    TooSmall {
        path: PathBuf,
        size: u64,
        min: usize,
    },
    /// An I/O operation on the file failed.
    #[error("shared file {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The path is a directory, a symlink, a device...
    #[error("shared file {}: not a regular file; refusing to touch it", path.display())]
    NotRegular { path: PathBuf },
    /// Someone else's file: not ours to rebuild.
    #[error("shared file {}: owned by uid {owner}, not by this process's uid {me}{}; refusing to use it", path.display(), trusted.map(|t| format!(" nor by process.user's uid {t}")).unwrap_or_default())]
    Owner {
        path: PathBuf,
        owner: u32,
        me: u32,
        trusted: Option<u32>,
    },
    /// The file system cannot hold the file: writing to a page it cannot
    /// supply would kill the process with SIGBUS, so it is refused at start.
    #[error("shared file {}: needs {size} bytes but its file system has only {free} bytes free; make the tmpfs larger (e.g. docker run --shm-size) or lower the size in the configuration", path.display())]
    NoSpace { path: PathBuf, size: u64, free: u64 },
    /// Another process holds the lock file (an open in progress, or a
    /// process that never releases it).
    #[error("shared file {}: the lock file {} is held by another process (a tlsfront starting on the same files, or another user's process: check with `fuser {}`); gave up after {waited_ms} ms", path.display(), lock.display(), lock.display())]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        waited_ms: u64,
    },
    /// A directory holding the shared files that others could write to.
    #[error("directory {}: {reason}; refusing to keep shared files there", path.display())]
    UnsafeDir { path: PathBuf, reason: String },
    /// Anyone could plant sessions in it.
    #[error("shared file {}: writable by everyone (mode {mode:o}); refusing to use it", path.display())]
    WorldWritable { path: PathBuf, mode: u32 },
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A valid file of this geometry was there: its sessions are kept.
    Reused,
    /// No file was there.
    Created,
    /// A file was there but did not match; it was replaced. The reason.
    Rebuilt(String),
}

/// No uid trusted besides our own.
const NO_UID: u32 = u32::MAX;
/// The uid of `process.user`, whose files this process also trusts: a
/// process started as root that will become that user finds the files its
/// predecessor (already that user) made, and must reuse them.
static TRUSTED_OWNER: AtomicU32 = AtomicU32::new(NO_UID);

/// Also trust files (and directories) owned by `uid`: the `process.user`
/// this process becomes once set up. Process-wide, because the identity
/// the process will run as is process-wide; call it before opening.
pub fn trust_owner(uid: u32) {
    TRUSTED_OWNER.store(uid, Ordering::Relaxed);
}

fn trusted_owner() -> Option<u32> {
    Some(TRUSTED_OWNER.load(Ordering::Relaxed)).filter(|&u| u != NO_UID)
}

/// Longest wait for another process's lock on `<path>.lock`. Opening holds
/// it for milliseconds (a 64 MiB allocation included); past this, the
/// holder is stuck or hostile, and the start fails naming the lock file
/// instead of hanging.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The mapped file, seen as words.
pub struct Region {
    map: MmapRaw,
}

impl Region {
    /// Every word of the file.
    pub fn words(&self) -> &[AtomicU64] {
        let ptr = self.map.as_mut_ptr().cast::<AtomicU64>();
        let len = self.map.len() / 8;
        // SAFETY: the pointer comes straight from the raw mapping (never
        // from a `&[u8]` over it), which is page-aligned (so 8-aligned),
        // `len` words lie within it, and it stays mapped for as long as
        // `self` is borrowed. AtomicU64 has the size, alignment and bit
        // validity of u64, and every u64 pattern is valid. The memory is
        // shared with other threads and processes, but this program only
        // ever reads or writes it through these atomics, never through
        // plain references, so concurrent access is not a data race; a
        // shared `&[AtomicU64]` permits mutation by design (interior
        // mutability). Every page is allocated (`reserve`), so no access
        // faults for want of memory. (Another process truncating the 0600
        // file would make access fault; that needs write access to our own
        // file, which we refuse to share.)
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// For a mapping that holds keys: keeps it out of core dumps
    /// (`MADV_DONTDUMP`) and swap (`mlock`, where `RLIMIT_MEMLOCK` allows).
    /// Returns what could not be done, for the caller to warn about.
    pub fn protect_secrets(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if let Err(e) = self.map.advise(memmap2::Advice::DontDump) {
            failed.push(format!("madvise(MADV_DONTDUMP): {e}"));
        }
        if let Err(e) = self.map.lock() {
            failed.push(format!("mlock: {e} (raise LimitMEMLOCK / ulimit -l)"));
        }
        failed
    }

    /// Writes dirty pages back (only matters for a cache on a disk).
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}

/// Words in a heap buffer shaped like a mapping: the backing the unit
/// tests (and Miri, which cannot map files) drive the slot protocols on.
#[cfg(test)]
pub fn heap_words(len: usize) -> Box<[AtomicU64]> {
    (0..len).map(|_| AtomicU64::new(0)).collect()
}

fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The effective uid of this process: the owner of `/proc/self`.
fn effective_uid() -> io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Refuses a file or directory owned by anyone but this process's user or
/// the trusted `process.user`.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), ShmError> {
    let me = effective_uid().map_err(io_error(Path::new("/proc/self"), "stat"))?;
    let trusted = trusted_owner();
    if meta.uid() == me || Some(meta.uid()) == trusted {
        return Ok(());
    }
    Err(ShmError::Owner {
        path: path.to_path_buf(),
        owner: meta.uid(),
        me,
        trusted,
    })
}

/// Makes sure `dir` is a directory only this process's user (or the
/// trusted `process.user`) can write: creates it mode 0700 if missing,
/// refuses a symlink, another owner, or a mode that lets group or others
/// write (they could plant, swap or lock the files inside).
pub fn ensure_private_dir(dir: &Path) -> Result<(), ShmError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(dir, "creating the directory (mode 0700)")(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_error(dir, "stat"))?;
    if !meta.file_type().is_dir() {
        return Err(ShmError::UnsafeDir {
            path: dir.to_path_buf(),
            reason: "not a directory (a symlink or a file someone created)".into(),
        });
    }
    check_owner(dir, &meta)?;
    if meta.mode() & 0o022 != 0 {
        return Err(ShmError::UnsafeDir {
            path: dir.to_path_buf(),
            reason: format!(
                "writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Opens the shared file at `path` of exactly `len` bytes: reuses a file
/// whose contents `check` accepts, creates a missing one, rebuilds one that
/// does not match (the `Err` of `check` is the reason), and refuses one that
/// is not ours to touch. `init` writes the contents of a new file.
///
/// Creation and rebuilding happen on a temporary file renamed into place,
/// under an exclusive lock on `<path>.lock`: a process that still maps the
/// old file keeps a valid (if orphaned) mapping, never a truncated one.
pub fn open(
    path: &Path,
    len: usize,
    check: impl Fn(&[AtomicU64]) -> Result<(), String>,
    init: impl FnOnce(&[AtomicU64]),
) -> Result<(Region, Opened), ShmError> {
    let lock_path = sibling(path, ".lock");
    let lock = lock_file(path, &lock_path)?;
    let outcome = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create(path, len, init).map(|r| (r, Opened::Created))
        }
        Err(e) => Err(io_error(path, "stat")(e)),
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(ShmError::NotRegular {
                    path: path.to_path_buf(),
                });
            }
            check_owner(path, &meta)?;
            if meta.mode() & 0o002 != 0 {
                return Err(ShmError::WorldWritable {
                    path: path.to_path_buf(),
                    mode: meta.mode() & 0o7777,
                });
            }
            match reuse(path, len, check)? {
                Ok(region) => Ok((region, Opened::Reused)),
                Err(reason) => create(path, len, init).map(|r| (r, Opened::Rebuilt(reason))),
            }
        }
    };
    // Dropping `lock` releases it; an error here changes nothing.
    let _ = lock.unlock();
    outcome
}

/// Opens `<path>.lock` (ours or `process.user`'s, never through a
/// symlink) and takes its exclusive lock without blocking: retried for
/// [`LOCK_WAIT`], then an error naming the lock file, so that a process
/// holding it forever cannot hang the start.
pub fn lock_file(path: &Path, lock_path: &Path) -> Result<File, ShmError> {
    let lock = open_lock(lock_path)?;
    let start = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(ShmError::Locked {
                    path: path.to_path_buf(),
                    lock: lock_path.to_path_buf(),
                    waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_error(lock_path, "locking")(e)),
        }
    }
}

/// Opens (creating it mode 0600) a lock file that is ours or
/// `process.user`'s, never through a symlink; takes no lock.
pub fn open_lock(lock_path: &Path) -> Result<File, ShmError> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(lock_path)
        .map_err(io_error(lock_path, "opening the lock file"))?;
    let meta = lock.metadata().map_err(io_error(lock_path, "stat"))?;
    check_owner(lock_path, &meta)?;
    Ok(lock)
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Allocates every block of the file's first `len` bytes, so that no write
/// through the mapping can fault for want of space. Contents already there
/// are kept (a file made sparse by an older tlsfront is filled in).
fn reserve(path: &Path, file: &File, len: usize) -> Result<(), ShmError> {
    let size = len as u64;
    let Ok(signed) = i64::try_from(size) else {
        return Err(ShmError::NoSpace {
            path: path.to_path_buf(),
            size,
            free: free_bytes(file),
        });
    };
    match nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, signed) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSPC) | Err(nix::errno::Errno::EFBIG) => Err(ShmError::NoSpace {
            path: path.to_path_buf(),
            size,
            free: free_bytes(file),
        }),
        Err(e) => Err(io_error(path, "reserving its space (posix_fallocate)")(
            io::Error::from(e),
        )),
    }
}

/// Bytes an unprivileged writer can still allocate on the file's file
/// system (0 if unknown: the message then says 0, which is what matters).
fn free_bytes(file: &File) -> u64 {
    nix::sys::statvfs::fstatvfs(file).map_or(0, |s| {
        s.blocks_available().saturating_mul(s.fragment_size())
    })
}

/// True when `path`'s file system is a tmpfs: shared files
/// elsewhere are written back to a disk, and key material may reach it.
pub fn on_tmpfs(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

fn map(path: &Path, file: &File) -> Result<Region, ShmError> {
    // memmap2's raw mapping is created without `unsafe`: it hands out only
    // a raw pointer, so the aliasing promises are ours to keep, in
    // `Region::words` (atomics only; the length never changes while mapped:
    // tlsfront never truncates a shared file in place, rebuilding renames a
    // new file over it).
    let map = MmapRaw::map_raw(file).map_err(io_error(path, "mmap"))?;
    Ok(Region { map })
}

/// Maps an existing file if it has `len` bytes and `check` accepts its
/// contents; the inner `Err` is the reason it does not.
fn reuse(
    path: &Path,
    len: usize,
    check: impl Fn(&[AtomicU64]) -> Result<(), String>,
) -> Result<Result<Region, String>, ShmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_error(path, "open"))?;
    let actual = file.metadata().map_err(io_error(path, "stat"))?.len();
    if actual != len as u64 {
        return Ok(Err(format!(
            "its length is {actual} bytes, this configuration needs {len}"
        )));
    }
    reserve(path, &file, len)?;
    let region = map(path, &file)?;
    Ok(check(region.words()).map(|()| region))
}

fn create(path: &Path, len: usize, init: impl FnOnce(&[AtomicU64])) -> Result<Region, ShmError> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_error(&tmp, "create"))?;
    let made = (|| {
        file.set_len(len as u64)
            .map_err(io_error(&tmp, "set length"))?;
        // Reported under the real path: that is the file the operator sized.
        reserve(path, &file, len)?;
        let region = map(&tmp, &file)?;
        // Nobody else can see the file before the rename below.
        init(region.words());
        region.flush().map_err(io_error(&tmp, "msync"))?;
        std::fs::rename(&tmp, path).map_err(io_error(path, "renaming the new file into place"))?;
        Ok(region)
    })();
    if made.is_err() {
        // A half-made file would only hold the space the refusal is about.
        let _ = std::fs::remove_file(&tmp);
    }
    made
}
