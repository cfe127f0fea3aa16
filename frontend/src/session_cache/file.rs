//! Opening, checking, (re)building and mapping the cache file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use super::layout::*;

/// Why the cache file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
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

fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The effective uid of this process: the owner of `/proc/self`.
fn effective_uid() -> io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Opens the cache at `path` for `size` bytes: reuses a valid file of the
/// same geometry, creates a missing one, rebuilds one that does not match,
/// and refuses one that is not ours to touch.
///
/// Creation and rebuilding happen on a temporary file renamed into place,
/// under an exclusive lock on `<path>.lock`: a process that still maps the
/// old file keeps a valid (if orphaned) mapping, never a truncated one.
pub fn open(path: &Path, size: u64, seed: u64) -> Result<(Region, Opened), CacheError> {
    let sets = sets_for_size(size);
    if sets == 0 {
        return Err(CacheError::TooSmall {
            path: path.to_path_buf(),
            size,
            min: file_len(1),
        });
    }
    let len = file_len(sets);
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
            create(path, sets, seed).map(|r| (r, Opened::Created))
        }
        Err(e) => Err(io_error(path, "stat")(e)),
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(CacheError::NotRegular {
                    path: path.to_path_buf(),
                });
            }
            let me = effective_uid().map_err(io_error(Path::new("/proc/self"), "stat"))?;
            if meta.uid() != me {
                return Err(CacheError::Owner {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    me,
                });
            }
            if meta.mode() & 0o002 != 0 {
                return Err(CacheError::WorldWritable {
                    path: path.to_path_buf(),
                    mode: meta.mode() & 0o7777,
                });
            }
            match reuse(path, len, sets)? {
                Ok(region) => Ok((region, Opened::Reused)),
                Err(reason) => create(path, sets, seed).map(|r| (r, Opened::Rebuilt(reason))),
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

fn map(path: &Path, file: &File) -> Result<Region, CacheError> {
    // SAFETY: memmap2 requires that the file not be changed in ways that
    // break Rust's aliasing rules while mapped. The mapping is only ever
    // accessed through atomics (see `Region::words`), so changes by other
    // threads or processes are ordinary atomic concurrency. The file's
    // length is fixed while it is mapped: tlsfront never truncates a cache
    // file in place (rebuilding renames a new file over it).
    let map = unsafe { MmapMut::map_mut(file) }.map_err(io_error(path, "mmap"))?;
    Ok(Region { map })
}

/// Maps an existing file if its header matches this geometry; the inner
/// `Err` is the reason it does not.
fn reuse(path: &Path, len: usize, sets: usize) -> Result<Result<Region, String>, CacheError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_error(path, "open"))?;
    let actual = file.metadata().map_err(io_error(path, "stat"))?.len();
    if actual != len as u64 {
        return Ok(Err(format!(
            "its length is {actual} bytes, this geometry needs {len}"
        )));
    }
    let region = map(path, &file)?;
    let h = &region.words()[..HEADER_WORDS];
    let word = |i: usize| h[i].load(Ordering::Acquire);
    let check = header_check(&std::array::from_fn(|i| word(i)));
    let expect = [
        (H_MAGIC, MAGIC, "magic"),
        (H_VERSION, VERSION, "layout version"),
        (H_HEADER_BYTES, HEADER_BYTES as u64, "header size"),
        (H_SLOT_BYTES, SLOT_BYTES as u64, "slot size"),
        (H_WAYS, WAYS as u64, "ways"),
        (H_SETS, sets as u64, "number of sets"),
        (H_FILE_LEN, len as u64, "recorded length"),
        (H_CHECK, check, "header checksum"),
    ];
    for (index, wanted, what) in expect {
        let found = word(index);
        if found != wanted {
            return Ok(Err(format!("{what} is {found:#x}, expected {wanted:#x}")));
        }
    }
    Ok(Ok(region))
}

/// Checksum of the header words before `H_CHECK`.
fn header_check(words: &[u64; HEADER_WORDS]) -> u64 {
    words[..H_CHECK]
        .iter()
        .fold(Hasher::new(0), |h, w| h.word(*w))
        .finish()
}

fn create(path: &Path, sets: usize, seed: u64) -> Result<Region, CacheError> {
    let len = file_len(sets);
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
    let now = super::unix_now();
    let mut header = [0u64; HEADER_WORDS];
    header[H_MAGIC] = MAGIC;
    header[H_VERSION] = VERSION;
    header[H_HEADER_BYTES] = HEADER_BYTES as u64;
    header[H_SLOT_BYTES] = SLOT_BYTES as u64;
    header[H_WAYS] = WAYS as u64;
    header[H_SETS] = sets as u64;
    header[H_FILE_LEN] = len as u64;
    header[H_CREATED] = now;
    header[H_SEED] = seed;
    header[H_CHECK] = header_check(&header);
    for (word, value) in region.words().iter().zip(header) {
        // Nobody else can see the file before the rename below.
        word.store(value, Ordering::Relaxed);
    }
    region.flush().map_err(io_error(&tmp, "msync"))?;
    std::fs::rename(&tmp, path).map_err(io_error(path, "renaming the new file into place"))?;
    Ok(region)
}
