//! The slot protocol of the session cache, on its own so that it can be
//! driven step by step (white-box tests with the slot words set by hand)
//! and model-checked (shuttle, in the tests) over any atomic [`Word`].
//!
//! A slot's first word (`S_SEQ`) is its state, changed only by
//! compare-and-swap:
//!
//! ```text
//! stable:  bit 0 = 0 | generation (17 bits) << 1
//! claimed: bit 0 = 1 | generation << 1 | claim time (24 bits) << 18 | owner pid (22 bits) << 42
//! ```
//!
//! A writer claims a slot by one CAS from the word it observed to a claimed
//! word carrying the next generation, the time and its own pid, all at
//! once, so that no one can see a claim without its time and owner (the
//! race of writing the time after the claim is gone). It publishes by a CAS
//! from exactly that claimed word to the stable word of the next
//! generation: if anyone took the claim over meanwhile, the publish fails
//! and the slot stays theirs; a sequence never goes backwards and never
//! comes back to a value a reader validated earlier within 2^17 writes.
//! A claim is taken over only when its owner is dead (no such process, or
//! a zombie, in this pid namespace) and it is at least [`STALE_CLAIM_SECS`]
//! old, or when it is [`HARD_STALE_CLAIM_SECS`] old whoever holds it (a pid
//! reused, or a writer in another pid namespace). A writer that resumes
//! after being taken over can still store into the slot before its publish
//! fails; the entry checksum turns that mix into a miss, never a wrong
//! value.

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::*;

/// One atomic 64-bit word: `std`'s, or a model checker's.
pub trait Word: Sync {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// Atomic compare-and-swap; a failed one loads with `Relaxed` (no
    /// caller acts on the value it saw).
    fn compare_exchange(&self, current: u64, new: u64, success: Ordering) -> Result<u64, u64>;
    /// A memory fence of the same family as these atomics.
    fn fence(order: Ordering);
}

impl Word for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    fn compare_exchange(&self, current: u64, new: u64, success: Ordering) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, current, new, success, Ordering::Relaxed)
    }
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// A claim this old (seconds) whose owner is dead may be taken over.
pub const STALE_CLAIM_SECS: u64 = 2;
/// A claim this old is taken over whoever holds it: a writer takes well
/// under a microsecond, so its holder is dead, frozen, or a reused pid.
pub const HARD_STALE_CLAIM_SECS: u64 = 60;

const CLAIM_BIT: u64 = 1;
const GEN_BITS: u32 = 17;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const TIME_SHIFT: u32 = 1 + GEN_BITS;
const TIME_BITS: u32 = 24;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const OWNER_SHIFT: u32 = TIME_SHIFT + TIME_BITS;
/// Linux pids are below 2^22 (`PID_MAX_LIMIT`).
const OWNER_MASK: u64 = (1 << (64 - OWNER_SHIFT)) - 1;

/// True if the state word is a claim (a writer at work, or a dead one's).
pub fn is_claimed(word: u64) -> bool {
    word & CLAIM_BIT == CLAIM_BIT
}

fn generation(word: u64) -> u64 {
    (word >> 1) & GEN_MASK
}

/// The claim of a slot whose state was `observed`, made at `now` by `owner`.
pub fn claim_word(observed: u64, now: u64, owner: u32) -> u64 {
    CLAIM_BIT
        | ((generation(observed) + 1) & GEN_MASK) << 1
        | (now & TIME_MASK) << TIME_SHIFT
        | (u64::from(owner) & OWNER_MASK) << OWNER_SHIFT
}

/// The stable word that publishes the claim `claimed`.
pub fn published_word(claimed: u64) -> u64 {
    ((generation(claimed) + 1) & GEN_MASK) << 1
}

/// The pid that made the claim.
pub fn claim_owner(word: u64) -> u32 {
    // At most 22 bits: fits.
    ((word >> OWNER_SHIFT) & OWNER_MASK) as u32
}

/// Seconds since the claim was made (modulo 2^24 s, about 194 days).
pub fn claim_age(word: u64, now: u64) -> u64 {
    now.wrapping_sub(word >> TIME_SHIFT) & TIME_MASK
}

/// This process's owner id in claims.
pub fn my_owner() -> u32 {
    std::process::id() & OWNER_MASK as u32
}

/// True unless `/proc` says pid `owner` is gone or a zombie (killed, not
/// yet reaped: it will never publish).
pub fn owner_alive(owner: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{owner}/stat")) {
        // The state is the field after the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// True if the claim `word` may be taken over at `now` by `me`.
pub fn abandoned(word: u64, now: u64, me: u32, alive: impl Fn(u32) -> bool) -> bool {
    let age = claim_age(word, now);
    if age < STALE_CLAIM_SECS {
        return false;
    }
    let owner = claim_owner(word);
    age >= HARD_STALE_CLAIM_SECS || (owner != me && !alive(owner))
}

/// Claims `slot` whose state word was `observed` (stable, or an abandoned
/// claim); the claimed word, or `None` if the state moved meanwhile.
pub fn try_claim<W: Word>(slot: &[W], observed: u64, now: u64, owner: u32) -> Option<u64> {
    let claimed = claim_word(observed, now, owner);
    // Acquire: what the slot held (and the reads that chose it) is at least
    // the state `observed` published.
    slot[S_SEQ]
        .compare_exchange(observed, claimed, Ordering::Acquire)
        .ok()?;
    // Release fence: a reader that sees any store made after this claim
    // also sees the claim, and retries.
    W::fence(Ordering::Release);
    Some(claimed)
}

/// Publishes the claim `claimed`: true if it was still this writer's.
pub fn publish<W: Word>(slot: &[W], claimed: u64) -> bool {
    // Release: every store of the writer is visible to a reader whose
    // Acquire load sees the new stable word.
    slot[S_SEQ]
        .compare_exchange(claimed, published_word(claimed), Ordering::Release)
        .is_ok()
}

/// A slot's contents, computed before the slot is claimed so that the
/// claim is held (and a crash can strand it) for as short a time as
/// possible.
pub struct Entry {
    /// Key hash (never 0).
    pub hash: u64,
    /// Unix seconds.
    pub expiry: u64,
    /// Packed lengths.
    pub lens: u64,
    /// Checksum of the entry.
    pub check: u64,
    /// Key then value bytes, as words.
    pub data: [u64; SLOT_WORDS - S_DATA],
    /// Data words in use.
    pub words: usize,
}

impl Entry {
    /// `key` and `value` must fit a slot (checked by the caller).
    pub fn new(hash: u64, expiry: u64, key: &[u8], value: &[u8]) -> Entry {
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

/// Writes `entry` into a slot this writer claimed.
pub fn fill<W: Word>(slot: &[W], entry: &Entry) {
    slot[S_HASH].store(entry.hash, Ordering::Relaxed);
    slot[S_EXPIRY].store(entry.expiry, Ordering::Relaxed);
    slot[S_LENS].store(entry.lens, Ordering::Relaxed);
    slot[S_CHECK].store(entry.check, Ordering::Relaxed);
    for (w, v) in slot[S_DATA..].iter().zip(&entry.data[..entry.words]) {
        w.store(*v, Ordering::Relaxed);
    }
}

/// Empties a slot this writer claimed.
pub fn clear<W: Word>(slot: &[W]) {
    slot[S_HASH].store(0, Ordering::Relaxed);
    slot[S_LENS].store(0, Ordering::Relaxed);
    slot[S_EXPIRY].store(0, Ordering::Relaxed);
    slot[S_CHECK].store(0, Ordering::Relaxed);
}

/// What a validated read of one slot found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// `key`'s entry, stable at state word `seq`; the value is in `value`.
    Hit {
        /// The state word it was read at.
        seq: u64,
        /// Unix seconds.
        expiry: u64,
    },
    /// Another key, empty, or being written through every retry.
    Miss,
    /// Lengths or checksum wrong under a stable state word (torn by a
    /// crash, or scribbled).
    Corrupt,
}

/// Reads of one slot retried after a concurrent write before giving up
/// (a miss). Writes take well under a microsecond, so a few suffice.
pub const READ_RETRIES: usize = 8;

/// Reads one slot consistently: retries while a writer is active or the
/// state moved, and checks lengths and checksum. On a hit, `value` holds
/// the value. `torn` counts reads retried because the state moved.
pub fn read<W: Word>(
    slot: &[W],
    hash: u64,
    key: &[u8],
    value: &mut Vec<u8>,
    torn: &mut u64,
) -> Read {
    let mut data = [0u64; SLOT_WORDS - S_DATA];
    for _ in 0..READ_RETRIES {
        // Acquire: pairs with the writer's Release publish, so the words
        // below are at least those of that publication.
        let seq = slot[S_SEQ].load(Ordering::Acquire);
        if is_claimed(seq) {
            std::hint::spin_loop();
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
                return Read::Corrupt;
            }
            continue;
        };
        let words = (key_len + value_len).div_ceil(8);
        for (dst, src) in data[..words].iter_mut().zip(&slot[S_DATA..]) {
            *dst = src.load(Ordering::Relaxed);
        }
        // Acquire fence: the data loads above cannot move after the second
        // state load, so if a writer's stores were seen the claim it made
        // before them is seen too.
        W::fence(Ordering::Acquire);
        if slot[S_SEQ].load(Ordering::Relaxed) != seq {
            *torn += 1;
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
            return Read::Corrupt;
        }
        value.clear();
        value.extend_from_slice(v);
        return Read::Hit { seq, expiry };
    }
    Read::Miss
}

/// Takes `key`'s entry out of a slot read stable at `seq`: one claim CAS
/// decides which of several racing takers redeems it. True for the winner.
pub fn take<W: Word>(slot: &[W], seq: u64, now: u64, owner: u32) -> bool {
    let Some(claimed) = try_claim(slot, seq, now, owner) else {
        return false;
    };
    clear(slot);
    // If this taker was taken over meanwhile (stalled 2 s with a dead
    // owner id, or 60 s), the new claimant's contents stand; the entry is
    // redeemed either way, it was cleared while this claim was held.
    publish(slot, claimed);
    true
}

/// Writes `entry` into a slot whose state was `observed`: claim, fill,
/// publish. `None` if the claim was lost to another writer; `Some(false)`
/// if this writer was taken over before it could publish.
pub fn put<W: Word>(
    slot: &[W],
    observed: u64,
    entry: &Entry,
    now: u64,
    owner: u32,
) -> Option<bool> {
    let claimed = try_claim(slot, observed, now, owner)?;
    fill(slot, entry);
    Some(publish(slot, claimed))
}

#[cfg(test)]
mod tests;
