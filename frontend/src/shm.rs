//! Shared-memory files: a file (best on tmpfs) mapped by every worker of
//! every tlsfront process, seen as an array of `AtomicU64`. The session
//! cache and the ticket-key ring each keep one.
//!
//! Opening checks that the file is safe to trust (a regular file, ours,
//! not world-writable), then lets its user check the contents; a file whose
//! contents do not match is rebuilt, never trusted.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use memmap2::MmapMut;

/// Why the cache file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// `cache.size` leaves no room for one set.
    #[error("cache file {}: cache.size of {size} bytes is too small: at least {min} bytes", path.display())]
    TooSmall {
        path: PathBuf,
        size: u64,
        min: usize,
    },
    /// An I/O operation on the file failed.
    #[error("cache file {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The path is a directory, a symlink, a device...
    #[error("cache file {}: not a regular file; refusing to touch it", path.display())]
    NotRegular { path: PathBuf },
    /// Someone else's file: not ours to rebuild.
    #[error("cache file {}: owned by uid {owner}, not by this process's uid {me}; refusing to use it", path.display())]
    Owner { path: PathBuf, owner: u32, me: u32 },
    /// Anyone could plant sessions in it.
    #[error("cache file {}: writable by everyone (mode {mode:o}); refusing to use it", path.display())]
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

/// The mapped file, seen as words.
pub struct Region {
    map: MmapMut,
}

impl Region {
    /// Every word of the file.
    pub fn words(&self) -> &[AtomicU64] {
        let ptr = self.map.as_ptr().cast::<AtomicU64>();
        let len = self.map.len() / 8;
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len` words
        // lie within it, and it stays mapped for as long as `self` is
        // borrowed. AtomicU64 has the size, alignment and bit validity of
        // u64, and every u64 pattern is valid. The memory is shared with
        // other threads and processes, but this program only ever reads or
        // writes it through these atomics, never through plain references,
        // so concurrent access is not a data race. (Another process
        // truncating the 0600 file would make access fault; that needs
        // write access to our own file, which we refuse to share.)
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// Writes dirty pages back (only matters for a cache on a disk).
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
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
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(io_error(&lock_path, "creating the lock file"))?;
    lock.lock().map_err(io_error(&lock_path, "locking"))?;

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
            let me = effective_uid().map_err(io_error(Path::new("/proc/self"), "stat"))?;
            if meta.uid() != me {
                return Err(ShmError::Owner {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    me,
                });
            }
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

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn map(path: &Path, file: &File) -> Result<Region, ShmError> {
    // SAFETY: memmap2 requires that the file not be changed in ways that
    // break Rust's aliasing rules while mapped. The mapping is only ever
    // accessed through atomics (see `Region::words`), so changes by other
    // threads or processes are ordinary atomic concurrency. The file's
    // length is fixed while it is mapped: tlsfront never truncates a cache
    // file in place (rebuilding renames a new file over it).
    let map = unsafe { MmapMut::map_mut(file) }.map_err(io_error(path, "mmap"))?;
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
    file.set_len(len as u64)
        .map_err(io_error(&tmp, "set length"))?;
    let region = map(&tmp, &file)?;
    // Nobody else can see the file before the rename below.
    init(region.words());
    region.flush().map_err(io_error(&tmp, "msync"))?;
    std::fs::rename(&tmp, path).map_err(io_error(path, "renaming the new file into place"))?;
    Ok(region)
}
