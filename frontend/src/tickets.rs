//! The ticket-key ring: stateless resumption (TLS 1.2 tickets, TLS 1.3
//! tickets) that every worker of every tlsfront process on the box — and
//! every host sharing a `file:` secret — can decrypt.
//!
//! The ring holds K keys (`tickets.keys`, at least 3) for consecutive
//! epochs of `tickets.rotate_secs`: index 0 the next epoch's key, 1 the
//! current one (which encrypts), 2.. the previous ones. A ticket is
//! `name (16) ‖ nonce (12) ‖ AES-256-GCM(ciphertext ‖ tag)` with the name as
//! associated data; any key still in the ring decrypts.
//!
//! One copy of the ring lives in a 0600 shared-memory file ([`crate::shm`])
//! under a seqlock whose sequence is the ring's generation. Readers never
//! lock: each process keeps the ring it decoded last ([`ArcSwap`]) and
//! re-decodes only when the generation moves. A rotation is performed by
//! exactly one party: whoever wins the compare-and-swap of the sequence
//! from even to odd.

use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::metrics::{self, PerWorkerCounters};
use crate::session_cache::layout::Hasher;
use crate::session_cache::unix_now;
use crate::shm::{Opened, Region, ShmError};

/// RFC 8446 §4.6.1: no ticket lifetime beyond 7 days.
const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Bytes of a key name.
pub const NAME_LEN: usize = 16;
/// Bytes of an AES-256 key.
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Fewest keys: next, current, previous.
pub const MIN_KEYS: usize = 3;
/// Most keys a ring file holds.
pub const MAX_KEYS: usize = 16;
/// A rotation left half done this long (seconds) was by a process that
/// died; the next party redoes it.
const STALE_ROTATION_SECS: u64 = 2;

const MAGIC: u64 = u64::from_le_bytes(*b"TLSFTKTS");
const VERSION: u64 = 1;
const FILE_LEN: usize = 4096;
// Header words.
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_KEYS: usize = 2;
const W_HEADER_CHECK: usize = 3;
// Ring state words, under the seqlock W_SEQ.
const W_SEQ: usize = 4;
const W_PERIOD: usize = 5;
const W_EPOCH: usize = 6;
const W_SOURCE: usize = 7;
const W_CLAIMED: usize = 8;
const W_RING_CHECK: usize = 9;
const W_ENTRIES: usize = 10;
/// name (2 words), key (4 words).
const ENTRY_WORDS: usize = 6;

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
    pub fn from_file(path: &Path) -> Result<KeySource, TicketError> {
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
            KeySource::Random => 1,
            KeySource::Secret { secret, .. } => {
                let mut out = [0u8; 8];
                hkdf_fill(secret, b"tlsfront ticket fingerprint", &mut out);
                u64::from_le_bytes(out) | 2
            }
        }
    }

    /// Name and key for `epoch`.
    fn key_for(&self, epoch: u64) -> Zeroizing<[u8; NAME_LEN + KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; NAME_LEN + KEY_LEN]);
        match self {
            KeySource::Random => {
                // The OS generator does not fail on Linux; should it, the
                // key would be all zeros and the ring checksum still valid,
                // so refuse loudly instead.
                if aws_lc_rs::rand::fill(&mut out[..]).is_err() {
                    tracing::error!("the OS random generator failed; ticket key not rotated");
                }
            }
            KeySource::Secret { secret, .. } => {
                let mut info = b"tlsfront ticket key".to_vec();
                info.extend_from_slice(&epoch.to_be_bytes());
                hkdf_fill(secret, &info, &mut out[..]);
            }
        }
        out
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_fill(secret: &[u8], info: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret);
    // expand/fill fail only for lengths above 255 × 32 bytes.
    if let Ok(okm) = prk.expand(&[info], Len(out.len())) {
        let _ = okm.fill(out);
    }
}

/// Why the ring cannot be used.
#[derive(Debug, thiserror::Error)]
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

/// One decoded key.
struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// The ring as this process last decoded it.
struct Decoded {
    /// The seqlock sequence it was read at.
    seq: u64,
    epoch: u64,
    period: u64,
    /// Index 0 next, 1 current, 2.. previous.
    keys: Vec<Key>,
}

/// The synchronized ticket-key ring; implements rustls's
/// `ProducesTickets`.
pub struct TicketKeyRing {
    region: Region,
    path: PathBuf,
    keys: usize,
    period: AtomicU64,
    source: ArcSwap<KeySource>,
    fingerprint: AtomicU64,
    decoded: ArcSwap<Decoded>,
    counters: Box<[TicketCounters]>,
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

impl TicketKeyRing {
    /// Opens (or creates) the ring file at `path`: `keys` keys rotated every
    /// `rotate_secs` seconds, from `source`.
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
        let (region, opened) = crate::shm::open(
            path,
            FILE_LEN,
            |words| check_header(words, keys),
            |words| write_header(words, keys),
        )?;
        let ring = TicketKeyRing {
            region,
            path: path.to_path_buf(),
            keys,
            period: AtomicU64::new(rotate_secs.max(1)),
            fingerprint: AtomicU64::new(source.fingerprint()),
            source: ArcSwap::from_pointee(source),
            decoded: ArcSwap::from_pointee(Decoded {
                seq: u64::MAX,
                epoch: 0,
                period: 0,
                keys: Vec::new(),
            }),
            counters: (0..=workers).map(|_| TicketCounters::default()).collect(),
        };
        ring.current(unix_now());
        Ok((ring, opened))
    }

    /// The shared file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes where keys come from (a re-read `file:` secret); the shared
    /// ring is rebuilt from it at the next use.
    pub fn set_source(&self, source: KeySource) {
        let fingerprint = source.fingerprint();
        self.source.store(Arc::new(source));
        self.fingerprint.store(fingerprint, Ordering::Release);
    }

    /// Changes the rotation period; the ring follows at the next use.
    pub fn set_rotate_secs(&self, secs: u64) {
        self.period.store(secs.max(1), Ordering::Relaxed);
    }

    /// The rotation period in seconds.
    pub fn rotate_secs(&self) -> u64 {
        self.period.load(Ordering::Relaxed)
    }

    fn counters(&self) -> &TicketCounters {
        let last = self.counters.len() - 1;
        let index = metrics::current_worker().map_or(last, |w| w.min(last));
        &self.counters[index]
    }

    fn words(&self) -> &[AtomicU64] {
        self.region.words()
    }

    /// The ring for time `now`: rotates the shared ring if its epoch is
    /// over (one party does), and re-decodes when the generation moved.
    fn current(&self, now: u64) -> Arc<Decoded> {
        let period = self.rotate_secs();
        let epoch = now / period;
        let decoded = self.decoded.load_full();
        // Acquire: pairs with the rotator's Release publish.
        let seq = self.words()[W_SEQ].load(Ordering::Acquire);
        // A ring already at a later epoch is current too: a caller whose
        // `now` was read a moment before another thread rotated must never
        // turn the ring back (that would drop a live key).
        if seq == decoded.seq && decoded.epoch >= epoch && decoded.period == period {
            return decoded;
        }
        if !self.ring_is_current(seq, epoch, period) {
            self.rotate(now, epoch, period);
        }
        match self.read_ring() {
            Some(fresh) => {
                let fresh = Arc::new(fresh);
                self.decoded.store(Arc::clone(&fresh));
                fresh
            }
            // Being rotated right now, or torn: keep what we have.
            None => decoded,
        }
    }

    fn ring_is_current(&self, seq: u64, epoch: u64, period: u64) -> bool {
        let w = self.words();
        seq & 1 == 0
            && w[W_EPOCH].load(Ordering::Relaxed) >= epoch
            && w[W_PERIOD].load(Ordering::Relaxed) == period
            && w[W_SOURCE].load(Ordering::Relaxed) == self.fingerprint.load(Ordering::Acquire)
            && w[W_RING_CHECK].load(Ordering::Relaxed) == self.ring_check_now()
    }

    fn ring_check_now(&self) -> u64 {
        let w = self.words();
        ring_check(
            w[W_PERIOD].load(Ordering::Relaxed),
            w[W_EPOCH].load(Ordering::Relaxed),
            w[W_SOURCE].load(Ordering::Relaxed),
            &w[W_ENTRIES..W_ENTRIES + self.keys * ENTRY_WORDS],
        )
    }

    /// Seqlock read of the whole ring; `None` when a rotation is under way
    /// or the contents do not check out.
    fn read_ring(&self) -> Option<Decoded> {
        let w = self.words();
        for _ in 0..8 {
            let seq = w[W_SEQ].load(Ordering::Acquire);
            if seq & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let period = w[W_PERIOD].load(Ordering::Relaxed);
            let epoch = w[W_EPOCH].load(Ordering::Relaxed);
            let source = w[W_SOURCE].load(Ordering::Relaxed);
            let check = w[W_RING_CHECK].load(Ordering::Relaxed);
            let mut raw = Zeroizing::new([0u64; MAX_KEYS * ENTRY_WORDS]);
            for (dst, src) in raw[..self.keys * ENTRY_WORDS]
                .iter_mut()
                .zip(&w[W_ENTRIES..])
            {
                *dst = src.load(Ordering::Relaxed);
            }
            // Acquire fence: the loads above happen before the re-check.
            fence(Ordering::Acquire);
            if w[W_SEQ].load(Ordering::Relaxed) != seq {
                continue;
            }
            let entries = &raw[..self.keys * ENTRY_WORDS];
            if source != self.fingerprint.load(Ordering::Acquire)
                || ring_check_words(period, epoch, source, entries) != check
            {
                return None;
            }
            let keys = entries
                .chunks_exact(ENTRY_WORDS)
                .filter_map(decode_key)
                .collect();
            return Some(Decoded {
                seq,
                epoch,
                period,
                keys,
            });
        }
        None
    }

    /// Brings the shared ring to `epoch`, if this caller wins the CAS.
    fn rotate(&self, now: u64, epoch: u64, period: u64) {
        let w = self.words();
        let seq = w[W_SEQ].load(Ordering::Relaxed);
        let claimed = if seq & 1 == 0 {
            seq.wrapping_add(1)
        } else if now.saturating_sub(w[W_CLAIMED].load(Ordering::Relaxed)) >= STALE_ROTATION_SECS {
            // The rotator died half-way: redo it.
            seq.wrapping_add(2)
        } else {
            return;
        };
        // Acquire: the state read below is at least the last published one.
        if w[W_SEQ]
            .compare_exchange(seq, claimed, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        w[W_CLAIMED].store(now, Ordering::Relaxed);
        // Release fence: a reader seeing any store below sees the odd
        // sequence too, and retries.
        fence(Ordering::Release);
        let source = self.source.load_full();
        let fingerprint = source.fingerprint();
        let old_epoch = w[W_EPOCH].load(Ordering::Relaxed);
        let old_period = w[W_PERIOD].load(Ordering::Relaxed);
        let same_source = w[W_SOURCE].load(Ordering::Relaxed) == fingerprint
            && w[W_RING_CHECK].load(Ordering::Relaxed) == self.ring_check_now();
        let n = self.keys;
        let old: Vec<u64> = w[W_ENTRIES..W_ENTRIES + n * ENTRY_WORDS]
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        let old = Zeroizing::new(old);
        // How far the ring moves: keys keep their place relative to time;
        // a period change counts as one step so no live key is dropped.
        let shift = if !same_source {
            n
        } else if old_period != period {
            1
        } else if epoch >= old_epoch {
            usize::try_from(epoch - old_epoch).unwrap_or(n).min(n)
        } else {
            0
        };
        for i in 0..n {
            let entry = &w[W_ENTRIES + i * ENTRY_WORDS..W_ENTRIES + (i + 1) * ENTRY_WORDS];
            let key_epoch = (epoch + 1).wrapping_sub(i as u64);
            let words: Zeroizing<[u64; ENTRY_WORDS]> = match (&*source, i.checked_sub(shift)) {
                (KeySource::Random, Some(j)) => {
                    Zeroizing::new(std::array::from_fn(|k| old[j * ENTRY_WORDS + k]))
                }
                _ => encode_key(&source.key_for(key_epoch)),
            };
            for (dst, v) in entry.iter().zip(words.iter()) {
                dst.store(*v, Ordering::Relaxed);
            }
        }
        w[W_PERIOD].store(period, Ordering::Relaxed);
        w[W_EPOCH].store(epoch, Ordering::Relaxed);
        w[W_SOURCE].store(fingerprint, Ordering::Relaxed);
        w[W_RING_CHECK].store(self.ring_check_now(), Ordering::Relaxed);
        // Release: everything above is visible to whoever acquires the new
        // even sequence. Fails only if a stale-rotation recovery took over.
        if w[W_SEQ]
            .compare_exchange(
                claimed,
                claimed.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.counters().rotations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                epoch,
                period,
                "ticket keys rotated (shared ring {})",
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
        let behind =
            ring.period == self.rotate_secs() && ring.epoch + 1 == now / ring.period.max(1);
        let key = ring.keys.get(if behind { 0 } else { 1 })?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
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
                metrics::note_resume_hint(metrics::ResumeHint::TicketOpened);
                Some(plain)
            }
            None => {
                counters.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn try_open(&self, now: u64, ticket: &[u8]) -> Option<(usize, Vec<u8>)> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let ring = self.current(now);
        let (age, key) = ring
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.name[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?;
        Some((age, plain.to_vec()))
    }

    /// Seconds a ticket issued now stays decryptable at the least: a key
    /// encrypts during its epoch, then stays K−2 epochs as a previous key.
    pub fn lifetime_secs(&self) -> u64 {
        let keys = self.keys as u64;
        (keys - 2)
            .saturating_mul(self.rotate_secs())
            .min(MAX_LIFETIME_SECS)
    }
}

fn encode_key(material: &[u8; NAME_LEN + KEY_LEN]) -> Zeroizing<[u64; ENTRY_WORDS]> {
    Zeroizing::new(std::array::from_fn(|i| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&material[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    }))
}

fn decode_key(words: &[u64]) -> Option<Key> {
    let mut material = Zeroizing::new([0u8; NAME_LEN + KEY_LEN]);
    for (chunk, w) in material.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    let mut name = [0u8; NAME_LEN];
    name.copy_from_slice(&material[..NAME_LEN]);
    let key = UnboundKey::new(&AES_256_GCM, &material[NAME_LEN..]).ok()?;
    Some(Key {
        name,
        aead: LessSafeKey::new(key),
    })
}

fn ring_check_words(period: u64, epoch: u64, source: u64, entries: &[u64]) -> u64 {
    entries
        .iter()
        .fold(Hasher::new(period).word(epoch).word(source), |h, w| {
            h.word(*w)
        })
        .finish()
}

fn ring_check(period: u64, epoch: u64, source: u64, entries: &[AtomicU64]) -> u64 {
    entries
        .iter()
        .fold(Hasher::new(period).word(epoch).word(source), |h, w| {
            h.word(w.load(Ordering::Relaxed))
        })
        .finish()
}

fn header_check(keys: u64) -> u64 {
    Hasher::new(0).word(MAGIC).word(VERSION).word(keys).finish()
}

fn check_header(words: &[AtomicU64], keys: usize) -> Result<(), String> {
    let word = |i: usize| words[i].load(Ordering::Acquire);
    let expect = [
        (W_MAGIC, MAGIC, "magic"),
        (W_VERSION, VERSION, "layout version"),
        (W_KEYS, keys as u64, "number of keys (tickets.keys changed)"),
        (W_HEADER_CHECK, header_check(keys as u64), "header checksum"),
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
    // Sequence 0, source 0: the first user builds the ring.
}

impl PerWorkerCounters for TicketKeyRing {
    fn worker_counters(&self, worker: usize) -> Vec<(&'static str, u64)> {
        self.counters
            .get(worker)
            .map(TicketCounters::fields)
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
