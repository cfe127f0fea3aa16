//! The shared session cache: one file, mapped by every worker of every
//! tlsfront process on the box, surviving restarts.
//!
//! Set-associative: a key's hash picks a set of [`WAYS`] slots (one 4 KiB
//! page). Each slot is a seqlock: readers take no lock and retry when the
//! sequence moved under them; a writer claims a slot with one
//! compare-and-swap on the sequence. A checksum over each entry is the last
//! line of defence: a torn, half-written (writer killed) or hostile slot is
//! a miss, never a wrong value. Every length read from the file is checked
//! before use, so no content of the file can cause an out-of-bounds access.
//!
//! [`SessionCache`] implements rustls's `StoresServerSessions`: TLS 1.2
//! session IDs go through `put`/`get`, and TLS 1.3 stateful tickets through
//! `put`/`take`, where `take` is one CAS on the slot's sequence, so a ticket
//! is redeemed at most once on the whole box.

pub mod layout;
pub mod remote;

use std::hint::spin_loop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

pub use crate::shm::Opened;
use crate::shm::{Region, ShmError};

/// Why the cache file cannot be used (it names the file).
pub type CacheError = ShmError;
use layout::*;

use crate::metrics::{self, PerWorkerCounters};

/// Reads of one slot retried after a concurrent write before giving up
/// (a miss). Writes take well under a microsecond, so a few suffice.
const READ_RETRIES: usize = 8;
/// A slot left odd this long (seconds) belongs to a writer that died; it
/// may be taken over.
const STALE_CLAIM_SECS: u64 = 2;

/// Unix time in seconds.
///
/// From the coarse real-time clock: a few nanoseconds instead of ~40 for
/// the precise one, and seconds are all that expiry and key epochs need.
pub fn unix_now() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => u64::try_from(t.tv_sec()).unwrap_or(0),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

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

/// What a validated read of one slot found.
enum Read {
    Hit { seq: u64, expiry: u64 },
    Miss,
}

/// The shared, lock-free, file-backed session store.
pub struct SessionCache {
    region: Region,
    path: PathBuf,
    sets: usize,
    seed: u64,
    timeout_secs: AtomicU64,
    counters: Box<[CacheCounters]>,
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
        if crate::tls::provider()
            .secure_random
            .fill(&mut seed)
            .is_err()
        {
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
            counters: (0..=workers).map(|_| CacheCounters::default()).collect(),
            remote: std::sync::OnceLock::new(),
        };
        Ok((cache, opened))
    }

    /// Adds the fleet-wide second tier: from now on sessions are also
    /// written there, and rustls's lookups that miss here ask it (see
    /// [`remote`]). Only once: false (and `store` dropped) if one is
    /// attached already.
    pub fn attach_remote(&self, store: remote::RemoteStore) -> bool {
        self.remote.set(store).is_ok()
    }

    /// The second tier, if one is attached.
    pub fn remote(&self) -> Option<&remote::RemoteStore> {
        self.remote.get()
    }

    /// Changes how long sessions stored from now on live.
    pub fn set_timeout_secs(&self, secs: u64) {
        self.timeout_secs.store(secs, Ordering::Relaxed);
    }

    /// The file this cache maps.
    pub fn path(&self) -> &Path {
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

    /// Reads one slot consistently: retries while a writer is active or
    /// the sequence moved, and checks lengths and checksum. On a hit,
    /// `value` holds the value.
    fn read_slot(&self, slot: &[AtomicU64], hash: u64, key: &[u8], value: &mut Vec<u8>) -> Read {
        let counters = self.counters();
        let mut data = [0u64; SLOT_WORDS - S_DATA];
        for _ in 0..READ_RETRIES {
            // Acquire: pairs with the writer's Release publish, so the
            // words below are at least those of that publication.
            let seq = slot[S_SEQ].load(Ordering::Acquire);
            if seq & 1 == 1 {
                spin_loop();
                continue;
            }
            if slot[S_HASH].load(Ordering::Relaxed) != hash {
                return Read::Miss;
            }
            let expiry = slot[S_EXPIRY].load(Ordering::Relaxed);
            let lens = slot[S_LENS].load(Ordering::Relaxed);
            let check = slot[S_CHECK].load(Ordering::Relaxed);
            let Some((key_len, value_len)) = unpack_lens(lens) else {
                if slot[S_SEQ].load(Ordering::Acquire) == seq {
                    counters.corrupt.fetch_add(1, Ordering::Relaxed);
                    return Read::Miss;
                }
                continue;
            };
            let words = (key_len + value_len).div_ceil(8);
            for (dst, src) in data[..words].iter_mut().zip(&slot[S_DATA..]) {
                *dst = src.load(Ordering::Relaxed);
            }
            // Acquire fence: the data loads above cannot move after the
            // second sequence load, so if a writer's stores were seen the
            // sequence it made odd before them is seen too.
            fence(Ordering::Acquire);
            if slot[S_SEQ].load(Ordering::Relaxed) != seq {
                counters.torn_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut bytes = [0u8; DATA_BYTES];
            for (chunk, w) in bytes.chunks_exact_mut(8).zip(&data[..words]) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let (k, v) = bytes[..key_len + value_len].split_at(key_len);
            if k != key {
                return Read::Miss;
            }
            if entry_check(lens, expiry, k, v) != check {
                counters.corrupt.fetch_add(1, Ordering::Relaxed);
                return Read::Miss;
            }
            value.clear();
            value.extend_from_slice(v);
            return Read::Hit { seq, expiry };
        }
        Read::Miss
    }

    /// Finds `key`; with `remove`, also takes it out atomically.
    fn lookup(&self, key: &[u8], remove: bool) -> Option<Vec<u8>> {
        let counters = self.counters();
        counters.lookups.fetch_add(1, Ordering::Relaxed);
        if key.len() > MAX_KEY {
            counters.misses.fetch_add(1, Ordering::Relaxed);
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
            let Read::Hit { seq, expiry } = self.read_slot(slot, hash, key, &mut value) else {
                continue;
            };
            if expiry <= now {
                counters.expired.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if remove {
                // One CAS decides which of several racing takers (threads
                // or processes) redeems the entry: the winner saw the
                // sequence unchanged since its validated read.
                if slot[S_SEQ]
                    .compare_exchange(
                        seq,
                        seq.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_err()
                {
                    counters.contended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Release fence: the odd sequence is ordered before the
                // clearing stores (see `write_slot`).
                fence(Ordering::Release);
                slot[S_HASH].store(0, Ordering::Relaxed);
                slot[S_LENS].store(0, Ordering::Relaxed);
                slot[S_EXPIRY].store(0, Ordering::Relaxed);
                slot[S_CHECK].store(0, Ordering::Relaxed);
                tag.store(0, Ordering::Relaxed);
                slot[S_SEQ].store(seq.wrapping_add(2), Ordering::Release);
            }
            counters.hits.fetch_add(1, Ordering::Relaxed);
            metrics::note_resume_hint(if remove {
                metrics::ResumeHint::CacheTake
            } else {
                metrics::ResumeHint::CacheGet
            });
            return Some(value);
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Looks `key` up without removing it (TLS 1.2 session IDs).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, false)
    }

    /// Looks `key` up and removes it; of any number of concurrent takers on
    /// the whole box, exactly one gets the value (TLS 1.3 single-use
    /// tickets).
    pub fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, true)
    }

    /// Stores `value` under `key` for `cache.timeout_secs`. Refused (false)
    /// when it does not fit a slot or every slot of its set is being
    /// written at this instant.
    pub fn put(&self, key: &[u8], value: &[u8]) -> bool {
        let timeout = self.timeout_secs.load(Ordering::Relaxed);
        self.put_with_expiry(key, value, unix_now().saturating_add(timeout))
    }

    /// [`put`](Self::put) with an explicit expiry (unix seconds).
    pub fn put_with_expiry(&self, key: &[u8], value: &[u8], expiry: u64) -> bool {
        let counters = self.counters();
        if key.len() > MAX_KEY || key.len() + value.len() > DATA_BYTES {
            counters.oversize.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let hash = key_hash(self.seed, key);
        let set = self.set_of(hash);
        let now = unix_now();
        let entry = Entry::new(hash, expiry, key, value);
        for _ in 0..WAYS {
            let Some((way, seq, victim)) = self.choose_victim(set, hash, now) else {
                counters.contended.fetch_add(1, Ordering::Relaxed);
                spin_loop();
                continue;
            };
            let slot = self.slot(set, way);
            // Wrapping: the sequence comes from the file, which may hold any
            // value (fuzz/regressions/cache_file); parity is kept.
            let claimed = seq.wrapping_add(if seq & 1 == 0 { 1 } else { 2 });
            if slot[S_SEQ]
                .compare_exchange(seq, claimed, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                counters.contended.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match victim {
                Victim::Live => counters.evictions.fetch_add(1, Ordering::Relaxed),
                Victim::Expired => counters.expired.fetch_add(1, Ordering::Relaxed),
                Victim::Empty | Victim::SameKey => 0,
            };
            if self.write_slot(slot, claimed, &entry, now) {
                self.tags(set)[way].store(hash, Ordering::Relaxed);
                counters.inserts.fetch_add(1, Ordering::Relaxed);
                return true;
            }
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
            let (kind, rank) = if seq & 1 == 1 {
                let claimed = slot[S_CLAIMED].load(Ordering::Relaxed);
                if now.saturating_sub(claimed) < STALE_CLAIM_SECS {
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

    /// Fills a slot this writer claimed (sequence `claimed`, odd) with an
    /// entry prepared beforehand, and publishes it. False if another writer
    /// took the slot over meanwhile (this one stalled past
    /// [`STALE_CLAIM_SECS`]); the checksum then keeps readers from trusting
    /// the mix.
    fn write_slot(&self, slot: &[AtomicU64], claimed: u64, entry: &Entry, now: u64) -> bool {
        slot[S_CLAIMED].store(now, Ordering::Relaxed);
        // Release fence: a reader that sees any store below also sees the
        // odd sequence stored before this fence, and so retries.
        fence(Ordering::Release);
        slot[S_HASH].store(entry.hash, Ordering::Relaxed);
        slot[S_EXPIRY].store(entry.expiry, Ordering::Relaxed);
        slot[S_LENS].store(entry.lens, Ordering::Relaxed);
        slot[S_CHECK].store(entry.check, Ordering::Relaxed);
        for (w, v) in slot[S_DATA..].iter().zip(&entry.data[..entry.words]) {
            w.store(*v, Ordering::Relaxed);
        }
        // Release: everything above is visible to a reader whose Acquire
        // load sees the new even sequence.
        slot[S_SEQ]
            .compare_exchange(
                claimed,
                claimed.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

/// A slot's contents, computed before the slot is claimed so that the
/// claim is held (and a crash can strand it) for as short a time as
/// possible.
struct Entry {
    hash: u64,
    expiry: u64,
    lens: u64,
    check: u64,
    data: [u64; SLOT_WORDS - S_DATA],
    words: usize,
}

impl Entry {
    /// `key` and `value` must fit a slot (checked by the caller).
    fn new(hash: u64, expiry: u64, key: &[u8], value: &[u8]) -> Entry {
        let lens = pack_lens(key.len(), value.len());
        let mut bytes = [0u8; DATA_BYTES];
        bytes[..key.len()].copy_from_slice(key);
        bytes[key.len()..key.len() + value.len()].copy_from_slice(value);
        let mut data = [0u64; SLOT_WORDS - S_DATA];
        for (w, chunk) in data.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Entry {
            hash,
            expiry,
            lens,
            check: entry_check(lens, expiry, key, value),
            data,
            words: (key.len() + value.len()).div_ceil(8),
        }
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
    let mut header = [0u64; HEADER_WORDS];
    header[H_MAGIC] = MAGIC;
    header[H_VERSION] = VERSION;
    header[H_HEADER_BYTES] = HEADER_BYTES as u64;
    header[H_SLOT_BYTES] = SLOT_BYTES as u64;
    header[H_WAYS] = WAYS as u64;
    header[H_SETS] = sets as u64;
    header[H_FILE_LEN] = len as u64;
    header[H_CREATED] = unix_now();
    header[H_SEED] = seed;
    header[H_CHECK] = header_check(&header);
    for (word, value) in words.iter().zip(header) {
        word.store(value, Ordering::Relaxed);
    }
}

/// Checksum of the header words before `H_CHECK`.
fn header_check(words: &[u64; HEADER_WORDS]) -> u64 {
    words[..H_CHECK]
        .iter()
        .fold(Hasher::new(0), |h, w| h.word(*w))
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
            .map(CacheCounters::fields)
            .unwrap_or_default();
        if let Some(r) = self.remote.get() {
            fields.extend(r.worker_counters(worker));
        }
        fields
    }
}

/// What rustls calls: the local cache first, then the remote tier if one is
/// attached (see [`remote`] for the rules).
impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let Some(r) = self.remote.get() else {
            return SessionCache::put(self, &key, &value);
        };
        let timeout = self.timeout_secs.load(Ordering::Relaxed);
        let expiry = unix_now().saturating_add(timeout);
        let local = self.put_with_expiry(&key, &value, expiry);
        r.put(&key, &value, expiry) || local
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let local = SessionCache::get(self, key);
        let Some(r) = self.remote.get().filter(|_| local.is_none()) else {
            return local;
        };
        match r.fetch(key, false) {
            remote::Fetched::Hit { expiry, session } => {
                self.put_with_expiry(key, &session, expiry);
                metrics::note_resume_hint(metrics::ResumeHint::CacheGet);
                Some(session)
            }
            remote::Fetched::Miss | remote::Fetched::Unavailable => None,
        }
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let Some(r) = self.remote.get() else {
            return SessionCache::take(self, key);
        };
        // Redis decides while it answers (GETDEL: once in the fleet); a
        // local copy is then stale either way and is dropped.
        match r.fetch(key, true) {
            remote::Fetched::Hit { session, .. } => {
                SessionCache::take(self, key);
                metrics::note_resume_hint(metrics::ResumeHint::CacheTake);
                Some(session)
            }
            remote::Fetched::Miss => {
                // Not a resumption: keep the hint as it was before.
                let hint = metrics::take_resume_hint();
                SessionCache::take(self, key);
                metrics::take_resume_hint();
                if let Some(h) = hint {
                    metrics::note_resume_hint(h);
                }
                None
            }
            remote::Fetched::Unavailable => {
                // Once on this box; the copy in Redis goes when it answers.
                let local = SessionCache::take(self, key);
                if local.is_some() {
                    r.forget(key);
                }
                local
            }
        }
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
