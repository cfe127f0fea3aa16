//! The ticket-key ring: stateless resumption (TLS 1.2 tickets, TLS 1.3
//! tickets) that every worker of every tlsfront process on the box — and
//! every host sharing a `file:` secret — can decrypt.
//!
//! The ring holds K keys (`tickets.keys`, at least 3) for consecutive
//! epochs of `tickets.rotate_interval`: index 0 the next epoch's key, 1 the
//! current one (which encrypts), 2.. the previous ones. A ticket is
//! `name (16) ‖ salt (16) ‖ nonce (12) ‖ AES-256-GCM(ciphertext ‖ tag)`,
//! sealed with a key of its own, HKDF-SHA256(salt, epoch key), and the
//! format version and name as associated data; any key still in the ring
//! decrypts. A per-ticket key keeps random GCM nonces far from their
//! birthday bound (about 2^32 seals per key) however many tickets a fleet
//! sharing a `file:` secret seals per epoch.
//!
//! The ring lives in a 0600 shared-memory file (module `shm`), double
//! buffered: a rotation writes the new ring into the buffer nobody reads,
//! then publishes it with one compare-and-swap of the publication word
//! (generation and buffer index), so a reader sees the old ring or the new
//! one, and a rotator killed half-way leaves the published ring intact.
//! Rotations are serialized by an exclusive `flock` on `<path>.lock`,
//! taken without blocking: the kernel releases it when its holder dies, so
//! no time-based guess about a dead rotator is needed. Readers never lock:
//! each process keeps the ring it decoded last ([`ArcSwap`]) and re-decodes
//! only when the publication word moves.
//!
//! The published buffer carries the ring's settings (period, source):
//! every process follows them, whatever its own configuration says, so
//! two processes with different settings on one ring (a `--takeover`
//! upgrade that changes `tickets.rotate_interval`) never rotate against each
//! other. A process applies its own settings when it is the ring's only
//! user at start (a shared `flock` on `<path>.users` tells), and at its
//! reload or `sysctl -w`; otherwise it warns and follows. Keys derived from
//! a `file:` secret are not stored in the file (only their epoch): every
//! process recomputes them.

use crossbeam_utils::CachePadded;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::clock::unix_now;
use crate::hash::FastHash;
use crate::metrics::{self, PerWorkerCounters};
use crate::seal::{self, OkmLen};
use crate::shm::{Opened, Region, ShmError};

/// RFC 8446 §4.6.1: no ticket lifetime beyond 7 days.
const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Bytes of a key name.
pub(crate) const NAME_LEN: usize = 16;
/// Bytes of an AES-256 key.
const KEY_LEN: usize = 32;
/// Associated data before the key name: the ticket format's version.
const TICKET_AAD_VERSION: &[u8] = b"tlsfront ticket v2";
/// Fewest keys: next, current, previous (the range `tickets.keys` takes).
pub(crate) const MIN_KEYS: usize = crate::config::TICKET_KEYS_MIN;
/// Most keys a ring file holds.
pub(crate) const MAX_KEYS: usize = crate::config::TICKET_KEYS_MAX;
const MAGIC: u64 = u64::from_le_bytes(*b"TLSFTKTS");
/// 2: double-buffered ring, settings in each buffer, derived keys not stored.
const VERSION: u64 = 2;
const FILE_LEN: usize = 4096;
// Header words.
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_KEYS: usize = 2;
const W_HEADER_CHECK: usize = 3;
/// The publication word: `generation << 1 | buffer index`; 0 = no ring yet.
/// Only ever changed by compare-and-swap, by the holder of the rotation
/// lock.
const W_CURRENT: usize = 4;
/// First word of buffer 0; buffer 1 follows it.
const W_BUFFERS: usize = 8;
// Buffer words, from the buffer's start.
const B_PERIOD: usize = 0;
const B_EPOCH: usize = 1;
const B_SOURCE: usize = 2;
const B_CHECK: usize = 3;
const B_ENTRIES: usize = 4;
/// An entry: the epoch its key is for, name (2 words), key (4 words). For
/// a `file:` source name and key are zero: recomputed from the epoch.
const ENTRY_WORDS: usize = 7;
const BUFFER_WORDS: usize = B_ENTRIES + MAX_KEYS * ENTRY_WORDS;
/// The fingerprint of [`KeySource::Random`].
const RANDOM_FINGERPRINT: u64 = 1;

/// Where ticket keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// The OS random generator; kept in the shared file across restarts.
    Random,
    /// HKDF-SHA256 of a shared secret and the epoch, so that hosts sharing
    /// the secret agree with no coordination.
    Secret {
        /// The file the secret was read from (for messages).
        path: PathBuf,
        /// At least 32 bytes.
        secret: Zeroizing<Vec<u8>>,
    },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Random => f.write_str("random"),
            // Never the secret itself.
            KeySource::Secret { path, .. } => write!(f, "file:{}", path.display()),
        }
    }
}

impl KeySource {
    /// Reads the secret of `file:PATH`.
    pub(crate) fn from_file(path: &Path) -> Result<KeySource, TicketError> {
        let secret = Zeroizing::new(std::fs::read(path).map_err(|source| TicketError::Secret {
            path: path.to_path_buf(),
            reason: source.to_string(),
        })?);
        if secret.len() < 32 {
            return Err(TicketError::Secret {
                path: path.to_path_buf(),
                reason: format!("{} bytes; a ticket secret needs at least 32", secret.len()),
            });
        }
        Ok(KeySource::Secret {
            path: path.to_path_buf(),
            secret,
        })
    }

    /// A value that differs between sources (and between secrets) without
    /// revealing the secret: tells a ring built from another source.
    fn fingerprint(&self) -> u64 {
        match self {
            KeySource::Random => RANDOM_FINGERPRINT,
            KeySource::Secret { secret, .. } => {
                let mut out = [0u8; 8];
                hkdf_fill(secret, b"tlsfront ticket fingerprint", &mut out);
                u64::from_le_bytes(out) | 2
            }
        }
    }

    /// Name and key for `epoch`; `None` when the OS random generator
    /// failed (a key of zeros, or of whatever the buffer held, must never
    /// be used: the rotation is abandoned and the ring kept).
    fn key_for(&self, epoch: u64) -> Option<Zeroizing<[u8; NAME_LEN + KEY_LEN]>> {
        let mut out = Zeroizing::new([0u8; NAME_LEN + KEY_LEN]);
        match self {
            KeySource::Random => {
                if aws_lc_rs::rand::fill(&mut out[..]).is_err() {
                    tracing::error!("the OS random generator failed; ticket keys not rotated");
                    return None;
                }
            }
            KeySource::Secret { secret, .. } => {
                let mut info = b"tlsfront ticket key".to_vec();
                info.extend_from_slice(&epoch.to_be_bytes());
                if !hkdf_fill(secret, &info, &mut out[..]) {
                    return None;
                }
            }
        }
        Some(out)
    }
}

/// HKDF-SHA256 of `secret` (no salt) expanded with `info` into `out`;
/// false if it failed (only for lengths above 255 × 32 bytes).
fn hkdf_fill(secret: &[u8], info: &[u8], out: &mut [u8]) -> bool {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret);
    prk.expand(&[info], OkmLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .is_ok()
}

/// Why the ring cannot be used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum TicketError {
    /// The shared file.
    #[error("ticket ring {0}")]
    Shm(#[from] ShmError),
    /// The `file:` secret.
    #[error("ticket secret {}: {reason}", path.display())]
    Secret { path: PathBuf, reason: String },
    /// A key count out of range.
    #[error("tickets.keys = {0}: must be from {MIN_KEYS} to {MAX_KEYS}")]
    KeyCount(usize),
}

crate::metrics::named_counters! {
    /// Counters of the ring as used by one worker.
    TicketCounters, "tickets_", {
    issued: "Tickets encrypted.",
    decrypted_current: "Tickets decrypted with the current key.",
    decrypted_previous: "Tickets decrypted with the previous key.",
    decrypted_older: "Tickets decrypted with an older key still in the ring.",
    decrypted_next: "Tickets decrypted with the next key (a host whose clock is ahead).",
    decrypt_failures: "Tickets refused: unknown key name, bad tag or short input.",
    rotations: "Rotations this worker performed for the whole box.",
    }
}

/// One decoded epoch key: tickets are sealed with keys derived from it.
struct Key {
    name: [u8; NAME_LEN],
    material: Zeroizing<[u8; KEY_LEN]>,
}

impl Key {
    /// The AEAD key of the ticket with `salt`.
    fn ticket_key(&self, salt: &[u8]) -> Option<LessSafeKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.material[..]);
        let okm = prk
            .expand(&[b"tlsfront ticket key v2"], &AES_256_GCM)
            .ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// The associated data: format version and key name.
    fn aad(&self) -> [u8; TICKET_AAD_VERSION.len() + NAME_LEN] {
        let mut aad = [0u8; TICKET_AAD_VERSION.len() + NAME_LEN];
        aad[..TICKET_AAD_VERSION.len()].copy_from_slice(TICKET_AAD_VERSION);
        aad[TICKET_AAD_VERSION.len()..].copy_from_slice(&self.name);
        aad
    }
}

/// The ring as this process last decoded it.
struct Decoded {
    /// The publication word it was read at.
    current: u64,
    epoch: u64,
    period: u64,
    /// Index 0 next, 1 current, 2.. previous.
    keys: Vec<Key>,
}

/// One buffer of the file, copied out.
struct Published {
    current: u64,
    period: u64,
    epoch: u64,
    source: u64,
    /// `keys` entries of [`ENTRY_WORDS`].
    entries: Zeroizing<Vec<u64>>,
}

/// The synchronized ticket-key ring; implements rustls's
/// `ProducesTickets`.
pub struct TicketKeyRing {
    region: Region,
    path: PathBuf,
    /// Keys in the file's ring (the file's count: see [`TicketKeyRing::open`]).
    keys: usize,
    /// This process's configured period.
    period: AtomicU64,
    source: ArcSwap<KeySource>,
    fingerprint: AtomicU64,
    /// This process's settings are to be written into the ring at the next
    /// use (it made the file, was its only user at start, or was reloaded).
    apply: AtomicBool,
    /// The open `<path>.lock`: its exclusive flock serializes rotations
    /// between processes; the mutex between this process's threads (flock
    /// is per open file, shared by the threads).
    rotation_lock: Mutex<File>,
    /// The shared flock on `<path>.users` held while this process lives.
    _users: File,
    decoded: ArcSwap<Decoded>,
    counters: Box<[CachePadded<TicketCounters>]>,
}

impl std::fmt::Debug for TicketKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeyRing")
            .field("path", &self.path)
            .field("keys", &self.keys)
            .field("period", &self.period)
            .field("source", &self.source)
            .finish()
    }
}

/// Opens `<path>.users` and takes a shared flock on it; true if this
/// process could first take it exclusively: no other process uses the ring.
fn join_users(path: &Path) -> Result<(File, bool), TicketError> {
    let users_path = crate::shm::sibling(path, ".users");
    let users = crate::shm::open_lock(&users_path)?;
    let alone = users.try_lock().is_ok();
    // From exclusive (or nothing) to shared: flock converts in place. Not
    // atomic, so two processes starting at the same instant may both
    // believe they are alone; both then apply their settings once, and the
    // later one's stand (the other follows the file from then on).
    users.lock_shared().map_err(|source| {
        TicketError::Shm(ShmError::Io {
            path: users_path.clone(),
            what: "locking (shared)",
            source,
        })
    })?;
    Ok((users, alone))
}

impl TicketKeyRing {
    /// Opens (or creates) the ring file at `path`: `keys` keys rotated every
    /// `rotate_secs` seconds, from `source`.
    ///
    /// When another process uses the ring (a `--takeover` upgrade), the
    /// ring's settings stand: a different key count, period or source here
    /// is warned about and followed, never rotated against; a reload of
    /// this process applies its own. When this process is the only user,
    /// its settings apply at once (a different key count rebuilds the file).
    pub fn open(
        path: &Path,
        keys: usize,
        rotate_secs: u64,
        source: KeySource,
        workers: usize,
    ) -> Result<(TicketKeyRing, Opened), TicketError> {
        if !(MIN_KEYS..=MAX_KEYS).contains(&keys) {
            return Err(TicketError::KeyCount(keys));
        }
        let (users, alone) = join_users(path)?;
        let (region, opened) = crate::shm::open(
            path,
            FILE_LEN,
            |words| check_header(words, if alone { Some(keys) } else { None }),
            |words| write_header(words, keys),
        )?;
        let file_keys = usize::try_from(region.words()[W_KEYS].load(Ordering::Acquire))
            .unwrap_or(keys)
            .clamp(MIN_KEYS, MAX_KEYS);
        if file_keys != keys {
            tracing::warn!(
                "ticket ring {}: tickets.keys = {keys}, but the ring another running process uses has {file_keys} keys: following the ring (a restart with no other process on it applies {keys})",
                path.display()
            );
        }
        // Random keys live in this mapping: never in a core dump or swap.
        for failure in region.protect_secrets() {
            tracing::warn!("ticket ring {}: {failure}", path.display());
        }
        let rotation_lock = crate::shm::open_lock(&crate::shm::sibling(path, ".lock"))?;
        let ring = TicketKeyRing {
            region,
            path: path.to_path_buf(),
            keys: file_keys,
            period: AtomicU64::new(rotate_secs.max(1)),
            fingerprint: AtomicU64::new(source.fingerprint()),
            source: ArcSwap::from_pointee(source),
            apply: AtomicBool::new(alone),
            rotation_lock: Mutex::new(rotation_lock),
            _users: users,
            decoded: ArcSwap::from_pointee(Decoded {
                current: u64::MAX,
                epoch: 0,
                period: 1,
                keys: Vec::new(),
            }),
            counters: (0..=workers)
                .map(|_| CachePadded::new(TicketCounters::default()))
                .collect(),
        };
        if let Some(p) = ring.read_published().filter(|_| !alone) {
            let mine = ring.fingerprint.load(Ordering::Relaxed);
            let foreign_secret = p.source != mine && p.source != RANDOM_FINGERPRINT;
            if foreign_secret {
                // Keys this process cannot compute: following is impossible.
                tracing::warn!(
                    "ticket ring {}: built by another running process from a tickets.key_source this one does not have; replacing it (tickets sealed by the other become full handshakes here)",
                    path.display()
                );
                ring.apply.store(true, Ordering::Relaxed);
            } else if p.period != rotate_secs.max(1) || p.source != mine {
                tracing::warn!(
                    "ticket ring {}: another running process set it to rotate every {}s from {}; this configuration says every {}s from {:?}: following the ring (a reload of this process applies its own)",
                    path.display(),
                    p.period,
                    if p.source == RANDOM_FINGERPRINT { "random keys" } else { "the same secret" },
                    rotate_secs.max(1),
                    ring.source.load()
                );
            }
        }
        ring.current(unix_now());
        Ok((ring, opened))
    }

    /// The shared file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Changes where keys come from (a re-read `file:` secret); the shared
    /// ring is rebuilt from it at the next use.
    pub(crate) fn set_source(&self, source: KeySource) {
        let fingerprint = source.fingerprint();
        self.source.store(Arc::new(source));
        self.fingerprint.store(fingerprint, Ordering::Release);
        self.apply.store(true, Ordering::Release);
    }

    /// Changes the rotation period (`sysctl -w`, reload): the shared ring
    /// takes this process's settings now (or, if another party is rotating
    /// it at this instant, at the next use).
    pub(crate) fn set_rotate_secs(&self, secs: u64) {
        self.period.store(secs.max(1), Ordering::Relaxed);
        self.apply.store(true, Ordering::Release);
        self.current(unix_now());
    }

    /// The rotation period in seconds: the shared ring's, which this
    /// process follows (its configured one once applied).
    pub(crate) fn rotate_secs(&self) -> u64 {
        let decoded = self.decoded.load();
        if decoded.keys.is_empty() {
            self.period.load(Ordering::Relaxed)
        } else {
            decoded.period
        }
    }

    fn counters(&self) -> &TicketCounters {
        let last = self.counters.len() - 1;
        let index = metrics::current_worker().map_or(last, |w| w.min(last));
        &self.counters[index]
    }

    fn words(&self) -> &[AtomicU64] {
        self.region.words()
    }

    fn buffer(&self, index: u64) -> &[AtomicU64] {
        let start = W_BUFFERS + (index as usize & 1) * BUFFER_WORDS;
        &self.words()[start..start + BUFFER_WORDS]
    }

    /// The ring for time `now`: rotates the shared ring if its epoch is
    /// over or this process's settings are to be applied (one party does),
    /// and re-decodes when the publication moved.
    ///
    /// A guard, not a clone of the `Arc`: sealing and opening run on every
    /// core, and a reference count bump per ticket would make every core
    /// write one shared cache line.
    fn current(&self, now: u64) -> arc_swap::Guard<Arc<Decoded>> {
        let decoded = self.decoded.load();
        // Acquire: pairs with the rotator's Release publication.
        let current = self.words()[W_CURRENT].load(Ordering::Acquire);
        // A ring already at a later epoch is current too: a caller whose
        // `now` was read a moment before another thread rotated must never
        // turn the ring back (that would drop a live key).
        if current == decoded.current
            && decoded.epoch >= now / decoded.period
            && !self.apply.load(Ordering::Acquire)
        {
            return decoded;
        }
        let published = self.read_published();
        let stale = match &published {
            None => true,
            Some(p) => now / p.period > p.epoch,
        };
        let published = if stale || self.apply.load(Ordering::Acquire) {
            self.rotate(now);
            self.read_published()
        } else {
            published
        };
        match published.and_then(|p| self.decode(&p)) {
            Some(fresh) => {
                self.decoded.store(Arc::new(fresh));
                self.decoded.load()
            }
            // No ring yet, or one this process cannot decode: keep what it
            // has.
            None => decoded,
        }
    }

    /// Copies the published buffer out, consistently; `None` if there is
    /// none yet or it does not check out.
    fn read_published(&self) -> Option<Published> {
        let w = self.words();
        for _ in 0..8 {
            let current = w[W_CURRENT].load(Ordering::Acquire);
            if current == 0 {
                return None;
            }
            let b = self.buffer(current);
            let period = b[B_PERIOD].load(Ordering::Relaxed);
            let epoch = b[B_EPOCH].load(Ordering::Relaxed);
            let source = b[B_SOURCE].load(Ordering::Relaxed);
            let check = b[B_CHECK].load(Ordering::Relaxed);
            let entries: Zeroizing<Vec<u64>> = Zeroizing::new(
                b[B_ENTRIES..B_ENTRIES + self.keys * ENTRY_WORDS]
                    .iter()
                    .map(|x| x.load(Ordering::Relaxed))
                    .collect(),
            );
            // Acquire fence: the loads above happen before the re-check. A
            // buffer is only rewritten after a later publication made it
            // the unpublished one; a reader that saw any of those writes
            // sees that publication below, and retries.
            fence(Ordering::Acquire);
            if w[W_CURRENT].load(Ordering::Relaxed) != current {
                std::hint::spin_loop();
                continue;
            }
            if period == 0 || buffer_check(period, epoch, source, &entries) != check {
                return None;
            }
            return Some(Published {
                current,
                period,
                epoch,
                source,
                entries,
            });
        }
        None
    }

    /// The keys of a published ring; `None` if they come from a secret this
    /// process does not have.
    fn decode(&self, p: &Published) -> Option<Decoded> {
        let source = self.source.load_full();
        let derived = p.source != RANDOM_FINGERPRINT;
        if derived && p.source != source.fingerprint() {
            return None;
        }
        let keys = p
            .entries
            .chunks_exact(ENTRY_WORDS)
            .filter_map(|e| {
                if derived {
                    decode_key(&encode_key(&*source.key_for(e[0])?)[1..])
                } else {
                    decode_key(&e[1..])
                }
            })
            .collect();
        Some(Decoded {
            current: p.current,
            epoch: p.epoch,
            period: p.period,
            keys,
        })
    }

    /// Brings the shared ring to the epoch of `now`, or to this process's
    /// settings, if no other thread or process is rotating it right now
    /// (then that one does; callers keep their ring meanwhile).
    fn rotate(&self, now: u64) {
        let Ok(lock) = self.rotation_lock.try_lock() else {
            return;
        };
        // Non-blocking: a process stuck holding it only delays rotations
        // (everyone keeps the published ring), never blocks a handshake.
        if lock.try_lock().is_err() {
            return;
        }
        self.rotate_locked(now);
        // Dropping the file would release it too; an error changes nothing.
        let _ = lock.unlock();
    }

    /// The rotation proper, under both locks.
    fn rotate_locked(&self, now: u64) {
        let w = self.words();
        let old = self.read_published();
        let mine = self.source.load_full();
        let apply = self.apply.swap(false, Ordering::AcqRel);
        // The settings the new ring gets: this process's when applying them
        // (or when there is no usable ring), else the ring's own.
        let (period, source): (u64, Arc<KeySource>) = match &old {
            Some(p) if !apply => {
                if p.source == mine.fingerprint() {
                    (p.period, mine)
                } else if p.source == RANDOM_FINGERPRINT {
                    (p.period, Arc::new(KeySource::Random))
                } else {
                    // A ring from a secret we lack, whose epoch is over and
                    // that nobody who has the secret rotated: ours now.
                    (self.period.load(Ordering::Relaxed), mine)
                }
            }
            _ => (self.period.load(Ordering::Relaxed), mine),
        };
        let fingerprint = source.fingerprint();
        let epoch = now / period;
        if let Some(p) = &old {
            if p.period == period && p.source == fingerprint && p.epoch >= epoch {
                return; // Already done by another party.
            }
        }
        // How far the ring moves: keys keep their place relative to time;
        // a period change counts as one step so no live key is dropped
        // (each entry keeps the epoch it was made for, so a derived key is
        // recomputed the same). A new source replaces every key.
        let n = self.keys;
        let kept: &[u64] = match &old {
            Some(p) if p.source == fingerprint => &p.entries,
            _ => &[],
        };
        let shift = match &old {
            Some(p) if !kept.is_empty() => {
                if p.period != period {
                    1
                } else {
                    usize::try_from(epoch.saturating_sub(p.epoch))
                        .unwrap_or(n)
                        .min(n)
                }
            }
            _ => n,
        };
        let mut entries = Zeroizing::new(vec![0u64; n * ENTRY_WORDS]);
        for (i, entry) in entries.chunks_exact_mut(ENTRY_WORDS).enumerate() {
            match i
                .checked_sub(shift)
                .filter(|j| (j + 1) * ENTRY_WORDS <= kept.len())
            {
                Some(j) => entry.copy_from_slice(&kept[j * ENTRY_WORDS..(j + 1) * ENTRY_WORDS]),
                None => {
                    let key_epoch = (epoch + 1).wrapping_sub(i as u64);
                    entry[0] = key_epoch;
                    if let KeySource::Random = &*source {
                        let Some(material) = source.key_for(key_epoch) else {
                            // Keep the ring as it is; the next use retries.
                            self.apply.fetch_or(apply, Ordering::AcqRel);
                            return;
                        };
                        entry[1..].copy_from_slice(&encode_key(&material)[1..]);
                    }
                    // Derived keys: only the epoch is stored.
                }
            }
        }
        let current = old.as_ref().map_or(0, |p| p.current);
        let next = ((current >> 1).wrapping_add(1) << 1) | ((current & 1) ^ 1);
        let next = if next == 0 { 3 } else { next };
        let b = self.buffer(next);
        // Release fence: a reader that sees any store below sees the
        // publication this rotator read (`current`) too, so a reader still
        // on the older ring in this buffer notices and retries.
        fence(Ordering::Release);
        for (dst, v) in b[B_ENTRIES..].iter().zip(entries.iter()) {
            dst.store(*v, Ordering::Relaxed);
        }
        b[B_PERIOD].store(period, Ordering::Relaxed);
        b[B_EPOCH].store(epoch, Ordering::Relaxed);
        b[B_SOURCE].store(fingerprint, Ordering::Relaxed);
        b[B_CHECK].store(
            buffer_check(period, epoch, fingerprint, &entries),
            Ordering::Relaxed,
        );
        // Release: the buffer above is visible to whoever acquires the new
        // publication. A CAS, never a blind store: should anyone have
        // published meanwhile (only a process that ignores the lock could),
        // its ring stands and ours is dropped.
        if w[W_CURRENT]
            .compare_exchange(current, next, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            self.counters().rotations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                epoch,
                period,
                "ticket keys rotated (shared ring {})",
                self.path.display()
            );
        } else {
            tracing::warn!(
                "ticket ring {}: published by another party during a locked rotation; keeping theirs",
                self.path.display()
            );
        }
    }

    /// Seals `plain` with the current key.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(unix_now(), plain)
    }

    /// [`seal`](Self::seal) as at unix time `now`.
    pub fn seal_at(&self, now: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let ring = self.current(now);
        // While another party is mid-rotation this process may still hold
        // the previous epoch's ring; its "next" key is the one that is
        // current now, and sealing with it keeps the promised lifetime.
        let behind = ring.epoch + 1 == now / ring.period.max(1);
        let key = ring.keys.get(if behind { 0 } else { 1 })?;
        let mut out = Vec::with_capacity(NAME_LEN + seal::OVERHEAD + plain.len());
        out.extend_from_slice(&key.name);
        seal::seal_into(&mut out, &key.aad(), plain, |salt| key.ticket_key(salt))?;
        self.counters().issued.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// Opens a ticket sealed by any key still in the ring.
    pub fn open_ticket(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open_at(unix_now(), ticket)
    }

    /// [`open_ticket`](Self::open_ticket) as at unix time `now`.
    pub fn open_at(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let counters = self.counters();
        let opened = self.try_open(now, ticket);
        match opened {
            Some((age, plain)) => {
                let counter = match age {
                    0 => &counters.decrypted_next,
                    1 => &counters.decrypted_current,
                    2 => &counters.decrypted_previous,
                    _ => &counters.decrypted_older,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                crate::resume_hint::note(crate::resume_hint::ResumeHint::TicketOpened);
                Some(plain)
            }
            None => {
                counters.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn try_open(&self, now: u64, ticket: &[u8]) -> Option<(usize, Vec<u8>)> {
        if ticket.len() < NAME_LEN + seal::OVERHEAD {
            return None;
        }
        let (name, sealed) = ticket.split_at(NAME_LEN);
        let ring = self.current(now);
        let (age, key) = ring
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.name[..] == *name)?;
        let plain = seal::open(sealed, &key.aad(), |salt| key.ticket_key(salt)).ok()?;
        Some((age, plain.to_vec()))
    }

    /// Seconds a ticket issued now stays decryptable at the least: a key
    /// encrypts during its epoch, then stays K−2 epochs as a previous key.
    pub(crate) fn lifetime_secs(&self) -> u64 {
        let keys = self.keys as u64;
        (keys - 2)
            .saturating_mul(self.rotate_secs())
            .min(MAX_LIFETIME_SECS)
    }
}

/// An entry's words for `material`: word 0 (the epoch) left 0.
fn encode_key(material: &[u8; NAME_LEN + KEY_LEN]) -> Zeroizing<[u64; ENTRY_WORDS]> {
    Zeroizing::new(std::array::from_fn(|i| {
        if i == 0 {
            return 0;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&material[(i - 1) * 8..i * 8]);
        u64::from_le_bytes(b)
    }))
}

/// A key from the name and key words of an entry (after its epoch word).
fn decode_key(words: &[u64]) -> Option<Key> {
    let mut material = Zeroizing::new([0u8; NAME_LEN + KEY_LEN]);
    for (chunk, w) in material.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    // A stored key of zeros was never drawn (an unwritten or scribbled
    // entry): never seal or open with it.
    if material.iter().all(|b| *b == 0) {
        return None;
    }
    let mut name = [0u8; NAME_LEN];
    name.copy_from_slice(&material[..NAME_LEN]);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&material[NAME_LEN..]);
    Some(Key {
        name,
        material: key,
    })
}

fn buffer_check(period: u64, epoch: u64, source: u64, entries: &[u64]) -> u64 {
    entries
        .iter()
        .fold(FastHash::new(period).word(epoch).word(source), |h, w| {
            h.word(*w)
        })
        .finish()
}

fn header_check(keys: u64) -> u64 {
    FastHash::new(0)
        .word(MAGIC)
        .word(VERSION)
        .word(keys)
        .finish()
}

/// Checks the header; `keys`, when given, must be the file's key count
/// (else any valid count is followed).
fn check_header(words: &[AtomicU64], keys: Option<usize>) -> Result<(), String> {
    let word = |i: usize| words[i].load(Ordering::Acquire);
    let found_keys = word(W_KEYS);
    if !(MIN_KEYS as u64..=MAX_KEYS as u64).contains(&found_keys) {
        return Err(format!("number of keys is {found_keys}, out of range"));
    }
    let wanted_keys = keys.map_or(found_keys, |k| k as u64);
    let expect = [
        (W_MAGIC, MAGIC, "magic"),
        (W_VERSION, VERSION, "layout version"),
        (W_KEYS, wanted_keys, "number of keys (tickets.keys changed)"),
        (W_HEADER_CHECK, header_check(found_keys), "header checksum"),
    ];
    for (index, wanted, what) in expect {
        let found = word(index);
        if found != wanted {
            return Err(format!("{what} is {found:#x}, expected {wanted:#x}"));
        }
    }
    Ok(())
}

fn write_header(words: &[AtomicU64], keys: usize) {
    words[W_MAGIC].store(MAGIC, Ordering::Relaxed);
    words[W_VERSION].store(VERSION, Ordering::Relaxed);
    words[W_KEYS].store(keys as u64, Ordering::Relaxed);
    words[W_HEADER_CHECK].store(header_check(keys as u64), Ordering::Relaxed);
    // Publication 0: no ring yet; the first user builds it.
}

impl PerWorkerCounters for TicketKeyRing {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        self.counters
            .get(worker)
            .map(|c| c.fields())
            .unwrap_or_default()
    }
}

impl rustls::server::ProducesTickets for TicketKeyRing {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_ticket(cipher)
    }
}

#[cfg(test)]
mod tests;
