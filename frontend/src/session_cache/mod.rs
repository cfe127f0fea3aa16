//! The shared session cache: one file, mapped by every worker of every
//! tlsfront process on the box, surviving restarts.
//!
//! Set-associative: a key's hash picks a set of [`SET_ENTRIES`] slots (one 4 KiB
//! page). Each slot is a seqlock: readers take no lock and retry when the
//! state word moved under them; a writer claims a slot with one
//! compare-and-swap of the state word (carrying its pid and the time) and
//! publishes with another (`slot.rs`). A checksum over each entry is the last
//! line of defence: a torn, half-written (writer killed) or hostile slot is
//! a miss, never a wrong value. Every length read from the file is checked
//! before use, so no content of the file can cause an out-of-bounds access.
//!
//! [`SessionCache`] implements rustls's `StoresServerSessions`: TLS 1.2
//! session IDs go through `put`/`get`, and TLS 1.3 stateful tickets through
//! `put`/`take`, where `take` is one CAS on the slot's sequence, so a ticket
//! is redeemed at most once on the whole box.

pub(crate) mod fetched;
mod layout;
pub(crate) mod remote;
mod slot;

use crossbeam_utils::CachePadded;
use std::hint::spin_loop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::shm::Opened;
use crate::shm::{Region, ShmError};

/// Why the cache file cannot be used (it names the file).
pub type CacheError = ShmError;
use layout::*;
pub use remote::RemoteError;

use crate::hash::FastHash;
use crate::metrics::{self, PerWorkerCounters};

use crate::clock::unix_now;

crate::metrics::named_counters! {
    /// Counters of the cache as used by one worker.
    CacheCounters, "cache_", {
    lookups: "get and take calls.",
    hits: "Lookups that returned a session.",
    misses: "Lookups that found nothing usable (absent, expired, torn, corrupt).",
    inserts: "Sessions stored.",
    evictions: "Live sessions overwritten because their set was full.",
    expired: "Expired sessions found by a lookup or replaced by an insert.",
    oversize: "Sessions refused because key and value do not fit a slot.",
    torn_retries: "Slot reads retried because a writer changed the slot meanwhile.",
    corrupt: "Slots whose checksum or lengths did not match (torn by a crash, or scribbled).",
    contended: "Inserts or takes that lost a race for a slot.",
    }
}

// What callers may know of the layout: enough to size a file and to tell
// whether an entry fits, and, for the tests that kill writers, where each
// entry's sequence word is. Nothing else of `layout` leaves this module, so
// that the layout can change here alone.

/// Bytes of key plus value one entry holds; a session that does not fit
/// is not cached (counted `cache_oversize`).
pub const ENTRY_BYTES: usize = DATA_BYTES;
/// The longest key an entry takes (for the fuzz target, which aims its
/// keys at both sides of the limit).
#[cfg(feature = "fuzzing")]
pub(crate) const MAX_KEY_BYTES: usize = MAX_KEY;
/// Entries per set: the keys that hash to one set compete for these.
pub const SET_ENTRIES: usize = WAYS;

/// The length of a cache file of `sets` sets (`cache.size` is rounded down
/// to whole sets; one set is the smallest cache).
pub const fn file_size(sets: usize) -> u64 {
    layout::file_len(sets) as u64
}

/// The sequence word of every entry in the bytes of a cache file, in file
/// order; an odd one is a write in progress, or one whose writer died.
/// Bytes past the last whole set are ignored.
pub fn entry_sequences(file: &[u8]) -> Vec<u64> {
    let sets = file.len().saturating_sub(HEADER_BYTES) / SET_BYTES;
    (0..sets)
        .flat_map(|set| (0..WAYS).map(move |way| slot_start(set, way) * 8))
        .filter_map(|at| file.get(at..at + 8))
        .map(|word| u64::from_le_bytes(std::array::from_fn(|i| word[i])))
        .collect()
}

/// Whether `key` and `value` fit one entry (else `put` refuses them).
pub(crate) fn fits(key: &[u8], value: &[u8]) -> bool {
    key.len() <= MAX_KEY && key.len() + value.len() <= DATA_BYTES
}

/// A valid header for a file of `sets` sets with key-hash seed `seed`, as
/// its whole first [`HEADER_BYTES`] (for the fuzz target that writes
/// hostile slots behind it).
#[cfg(feature = "fuzzing")]
pub(crate) fn valid_header(sets: usize, seed: u64) -> Vec<u8> {
    let words = header_words(sets, layout::file_len(sets), seed, 0);
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.resize(HEADER_BYTES, 0);
    out
}

/// The shared, lock-free, file-backed session store.
pub struct SessionCache {
    region: Region,
    path: PathBuf,
    sets: usize,
    seed: u64,
    timeout_secs: AtomicU64,
    counters: Box<[CachePadded<CacheCounters>]>,
    /// The fleet-wide second tier (`cache.remote`), if configured.
    remote: std::sync::OnceLock<remote::RemoteStore>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("path", &self.path)
            .field("sets", &self.sets)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

impl SessionCache {
    /// Opens (or creates, or rebuilds) the cache file at `path` of `size`
    /// bytes; sessions live `timeout_secs`. `workers` sizes the per-worker
    /// counters.
    pub fn open(
        path: &Path,
        size: u64,
        timeout_secs: u64,
        workers: usize,
    ) -> Result<(SessionCache, Opened), CacheError> {
        let mut seed = [0u8; 8];
        // A seed that cannot be drawn only makes set placement predictable;
        // keys are random server-chosen IDs, so fall back to the clock.
        if aws_lc_rs::rand::fill(&mut seed).is_err() {
            seed = unix_now().to_le_bytes();
        }
        let sets = sets_for_size(size);
        if sets == 0 {
            return Err(ShmError::TooSmall {
                path: path.to_path_buf(),
                size,
                min: file_len(1),
            });
        }
        let len = file_len(sets);
        let seed = u64::from_le_bytes(seed);
        let (region, opened) = crate::shm::open(
            path,
            len,
            |words| check_header(words, sets, len),
            |words| write_header(words, sets, len, seed),
        )?;
        let words = region.words();
        let sets = words[H_SETS].load(Ordering::Acquire) as usize;
        let seed = words[H_SEED].load(Ordering::Acquire);
        let cache = SessionCache {
            region,
            path: path.to_path_buf(),
            sets,
            seed,
            timeout_secs: AtomicU64::new(timeout_secs),
            counters: (0..=workers)
                .map(|_| CachePadded::new(CacheCounters::default()))
                .collect(),
            remote: std::sync::OnceLock::new(),
        };
        Ok((cache, opened))
    }

    /// Adds the fleet-wide second tier: from now on sessions are also
    /// written there, and rustls's lookups that miss here ask it (see
    /// `remote`). Only once: false (and `store` dropped) if one is
    /// attached already.
    pub(crate) fn attach_remote(&self, store: remote::RemoteStore) -> bool {
        self.remote.set(store).is_ok()
    }

    /// The second tier, if one is attached.
    pub(crate) fn remote(&self) -> Option<&remote::RemoteStore> {
        self.remote.get()
    }

    /// Changes how long sessions stored from now on live.
    pub(crate) fn set_timeout_secs(&self, secs: u64) {
        self.timeout_secs.store(secs, Ordering::Relaxed);
    }

    /// The file this cache maps.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How many sessions fit.
    pub fn capacity(&self) -> usize {
        self.sets * WAYS
    }

    /// The counters of the calling worker (non-worker threads share the
    /// last entry).
    fn counters(&self) -> &CacheCounters {
        let last = self.counters.len() - 1;
        let index = metrics::current_worker().map_or(last, |w| w.min(last));
        &self.counters[index]
    }

    fn slot(&self, set: usize, way: usize) -> &[AtomicU64] {
        let start = slot_start(set, way);
        // In bounds: the file length was checked against `sets` at open.
        &self.region.words()[start..start + SLOT_WORDS]
    }

    fn tags(&self, set: usize) -> &[AtomicU64] {
        let start = tag_start(set);
        &self.region.words()[start..start + WAYS]
    }

    fn set_of(&self, hash: u64) -> usize {
        (hash % self.sets as u64) as usize
    }

    /// Reads one slot consistently ([`slot::read`]), counting torn and
    /// corrupt reads.
    fn read_slot(
        &self,
        slot: &[AtomicU64],
        hash: u64,
        key: &[u8],
        value: &mut Vec<u8>,
    ) -> slot::Read {
        let counters = self.counters();
        let mut torn = 0;
        let read = slot::read(slot, hash, key, value, &mut torn);
        if torn > 0 {
            counters.torn_retries.fetch_add(torn, Ordering::Relaxed);
        }
        if read == slot::Read::Corrupt {
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        read
    }

    /// Finds `key`; with `remove`, also takes it out atomically. A probe
    /// (`count` false) changes no counter and leaves no resumption hint.
    fn lookup(&self, key: &[u8], remove: bool, count: bool) -> Option<Vec<u8>> {
        let counters = self.counters();
        let inc = |c: &AtomicU64| {
            if count {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        inc(&counters.lookups);
        if key.len() > MAX_KEY {
            inc(&counters.misses);
            return None;
        }
        let hash = key_hash(self.seed, key);
        let set = self.set_of(hash);
        let now = unix_now();
        let mut value = Vec::new();
        let tags = self.tags(set);
        for (way, tag) in tags.iter().enumerate() {
            // Tags are hints written after each publication (Relaxed: the
            // slot's own seqlock orders what matters); a way whose tag does
            // not match is not worth reading.
            if tag.load(Ordering::Relaxed) != hash {
                continue;
            }
            let slot = self.slot(set, way);
            let slot::Read::Hit { seq, expiry } = self.read_slot(slot, hash, key, &mut value)
            else {
                continue;
            };
            if expiry <= now {
                inc(&counters.expired);
                break;
            }
            if remove {
                // One CAS decides which of several racing takers (threads
                // or processes) redeems the entry: the winner saw the
                // state unchanged since its validated read.
                if !slot::take(slot, seq, now, slot::my_owner()) {
                    inc(&counters.contended);
                    break;
                }
                tag.store(0, Ordering::Relaxed);
            }
            if !count {
                return Some(value);
            }
            inc(&counters.hits);
            crate::resume_hint::note(if remove {
                crate::resume_hint::ResumeHint::CacheTake
            } else {
                crate::resume_hint::ResumeHint::CacheGet
            });
            return Some(value);
        }
        inc(&counters.misses);
        None
    }

    /// Looks `key` up in this box's cache without removing it (TLS 1.2
    /// session IDs). Only the local tier: rustls's `get` is the trait's.
    pub fn get_local(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, false, true)
    }

    /// Whether `key` is here now, counting nothing (the worker's look
    /// before rustls's own `get`).
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.lookup(key, false, false).is_some()
    }

    /// Looks `key` up and removes it; of any number of concurrent takers on
    /// the whole box, exactly one gets the value (TLS 1.3 single-use
    /// tickets).
    pub fn take_local(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, true, true)
    }

    /// Stores `value` under `key` for `cache.timeout`. Refused (false)
    /// when it does not fit a slot or every slot of its set is being
    /// written at this instant.
    pub fn put_local(&self, key: &[u8], value: &[u8]) -> bool {
        let timeout = self.timeout_secs.load(Ordering::Relaxed);
        self.put_local_until(key, value, unix_now().saturating_add(timeout))
    }

    /// [`put_local`](Self::put_local) with an explicit expiry (unix seconds).
    pub(crate) fn put_local_until(&self, key: &[u8], value: &[u8], expiry: u64) -> bool {
        let counters = self.counters();
        if !fits(key, value) {
            counters.oversize.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let hash = key_hash(self.seed, key);
        let set = self.set_of(hash);
        let now = unix_now();
        let entry = slot::Entry::new(hash, expiry, key, value);
        for _ in 0..WAYS {
            let Some((way, seq, victim)) = self.choose_victim(set, hash, now) else {
                counters.contended.fetch_add(1, Ordering::Relaxed);
                spin_loop();
                continue;
            };
            let slot = self.slot(set, way);
            let Some(published) = slot::put(slot, seq, &entry, now, slot::my_owner()) else {
                counters.contended.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match victim {
                Victim::Live => counters.evictions.fetch_add(1, Ordering::Relaxed),
                Victim::Expired => counters.expired.fetch_add(1, Ordering::Relaxed),
                Victim::Empty | Victim::SameKey => 0,
            };
            if published {
                self.tags(set)[way].store(hash, Ordering::Relaxed);
                counters.inserts.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Taken over while stalled past the stale limits: the slot is
            // the new claimant's.
            counters.contended.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        false
    }

    /// Picks the slot to write in `set`: one holding the same key hash,
    /// else an empty or expired one, else the live one expiring first.
    /// Slots being written are skipped unless their writer is long dead.
    fn choose_victim(&self, set: usize, hash: u64, now: u64) -> Option<(usize, u64, Victim)> {
        // Rank: lower is better. The whole set is scanned so that a key
        // already present is overwritten, never duplicated in a free slot
        // (a duplicate would outlive a `take` of the other copy).
        let mut best: Option<(usize, u64, Victim, u64)> = None;
        for way in 0..WAYS {
            let slot = self.slot(set, way);
            let seq = slot[S_SEQ].load(Ordering::Relaxed);
            let (kind, rank) = if slot::is_claimed(seq) {
                if !slot::abandoned(seq, now, slot::my_owner(), slot::owner_alive) {
                    continue;
                }
                // A dead writer's slot: free for the taking.
                (Victim::Empty, 1)
            } else {
                let slot_hash = slot[S_HASH].load(Ordering::Relaxed);
                let expiry = slot[S_EXPIRY].load(Ordering::Relaxed);
                if slot_hash == hash {
                    return Some((way, seq, Victim::SameKey));
                } else if slot_hash == 0 {
                    (Victim::Empty, 1)
                } else if expiry <= now {
                    (Victim::Expired, 2)
                } else {
                    // Oldest first: the live entry expiring first. Saturating:
                    // the expiry comes from the file (fuzz/regressions/cache_file).
                    (Victim::Live, 3u64.saturating_add(expiry))
                }
            };
            if best.as_ref().is_none_or(|b| rank < b.3) {
                best = Some((way, seq, kind, rank));
            }
        }
        best.map(|(way, seq, kind, _)| (way, seq, kind))
    }
}

/// Checks that a file's header describes this geometry.
fn check_header(words: &[AtomicU64], sets: usize, len: usize) -> Result<(), String> {
    let word = |i: usize| words[i].load(Ordering::Acquire);
    let check = header_check(&std::array::from_fn(word));
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
            return Err(format!("{what} is {found:#x}, expected {wanted:#x}"));
        }
    }
    Ok(())
}

/// Writes the header of a new file (not yet visible to anyone).
fn write_header(words: &[AtomicU64], sets: usize, len: usize, seed: u64) {
    let header = header_words(sets, len, seed, unix_now());
    for (word, value) in words.iter().zip(header) {
        word.store(value, Ordering::Relaxed);
    }
}

/// The header words of a file of this geometry, checksum included.
fn header_words(sets: usize, len: usize, seed: u64, created: u64) -> [u64; HEADER_WORDS] {
    let mut header = [0u64; HEADER_WORDS];
    header[H_MAGIC] = MAGIC;
    header[H_VERSION] = VERSION;
    header[H_HEADER_BYTES] = HEADER_BYTES as u64;
    header[H_SLOT_BYTES] = SLOT_BYTES as u64;
    header[H_WAYS] = WAYS as u64;
    header[H_SETS] = sets as u64;
    header[H_FILE_LEN] = len as u64;
    header[H_CREATED] = created;
    header[H_SEED] = seed;
    header[H_CHECK] = header_check(&header);
    header
}

/// Checksum of the header words before `H_CHECK`.
fn header_check(words: &[u64; HEADER_WORDS]) -> u64 {
    words[..H_CHECK]
        .iter()
        .fold(FastHash::new(0), |h, w| h.word(*w))
        .finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    SameKey,
    Empty,
    Expired,
    Live,
}

impl PerWorkerCounters for SessionCache {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        let mut fields = self
            .counters
            .get(worker)
            .map(|c| c.fields())
            .unwrap_or_default();
        if let Some(r) = self.remote.get() {
            fields.extend(r.worker_counters(worker));
        }
        fields
    }
}

/// What rustls calls. Never Redis: the worker asked Redis before rustls
/// saw the ClientHello (see `remote`), and placed what it found where
/// these calls look — a session ID's session in the local cache, a
/// single-use ticket in `fetched`.
impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let Some(r) = self.remote.get() else {
            return self.put_local(&key, &value);
        };
        let timeout = self.timeout_secs.load(Ordering::Relaxed);
        let expiry = unix_now().saturating_add(timeout);
        let local = self.put_local_until(&key, &value, expiry);
        r.put(&key, &value, expiry) || local
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_local(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.remote.get().is_none() {
            return self.take_local(key);
        }
        // With a remote tier a ticket is redeemed by Redis's GETDEL or not at
        // all (fail closed): a local copy is stale either way and goes,
        // without counting as a resumption.
        let hint = crate::resume_hint::take();
        self.take_local(key);
        crate::resume_hint::take();
        let session = fetched::take(key);
        match (&session, hint) {
            (Some(_), _) => crate::resume_hint::note(crate::resume_hint::ResumeHint::CacheTake),
            (None, Some(h)) => crate::resume_hint::note(h),
            (None, None) => {}
        }
        session
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
