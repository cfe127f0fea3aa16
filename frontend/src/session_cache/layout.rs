//! The byte layout of the cache file, and the hash used in it.
//!
//! ```text
//! offset 0        header: HEADER_WORDS u64 words (see `H_*`), rest of the
//!                 first 4 KiB reserved
//! offset 4096     set 0: a tag line (WAYS words: the key hash of each
//!                 way, 0 = none), then WAYS slots of SLOT_BYTES
//!                 set 1 ...
//! ```
//!
//! A set is one 4 KiB page. The tag line lets a lookup find the way to read
//! (or learn that there is none) from one cache line instead of touching
//! every slot; tags are only hints, every candidate slot is still read and
//! checked under its seqlock. A tag is stored after its slot is published,
//! so two writers racing on one slot, or a writer killed between the two
//! stores, can leave a tag that names another key: that entry is then a
//! miss (a full handshake) until the slot is written again, never a wrong
//! session.
//!
//! A slot is `SLOT_WORDS` little-endian u64 words, each only ever accessed
//! atomically:
//!
//! | word | meaning |
//! |---|---|
//! | `S_SEQ` | state word: even = stable (a generation), odd = claimed (generation, claim time, owner pid; see `slot`) |
//! | `S_HASH` | hash of the key; 0 = empty slot |
//! | `S_EXPIRY` | unix seconds after which the entry is dead |
//! | `S_LENS` | key length (bits 0..16), value length (bits 16..32) |
//! | `S_CHECK` | hash of lengths, expiry, key and value |
//! | `S_CLAIMED` | reserved (0); the claim time moved into `S_SEQ` |
//! | `S_DATA..` | key bytes then value bytes |

/// `"TLSFCACH"`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TLSFCACH");
/// Bumped whenever anything in this file changes meaning (2: tag lines;
/// 3: owner and claim time in the state word, see `slot`).
pub const VERSION: u64 = 3;
/// The header occupies the first page.
pub const HEADER_BYTES: usize = 4096;
/// Slots per set.
pub const WAYS: usize = 8;
/// One set is one 4 KiB page: the tag line, then the slots.
pub const SET_BYTES: usize = 4096;
/// The tag line: one word per way.
pub const TAG_BYTES: usize = 64;
/// Bytes per slot: 63 words.
pub const SLOT_BYTES: usize = (SET_BYTES - TAG_BYTES) / WAYS;
/// Words per slot.
pub const SLOT_WORDS: usize = SLOT_BYTES / 8;

/// Header word indexes.
pub const H_MAGIC: usize = 0;
/// Layout version.
pub const H_VERSION: usize = 1;
/// Header size in bytes.
pub const H_HEADER_BYTES: usize = 2;
/// Slot size in bytes.
pub const H_SLOT_BYTES: usize = 3;
/// Slots per set.
pub const H_WAYS: usize = 4;
/// Number of sets.
pub const H_SETS: usize = 5;
/// Total file length in bytes.
pub const H_FILE_LEN: usize = 6;
/// Unix seconds when the file was made.
pub const H_CREATED: usize = 7;
/// Random seed of the key hash, chosen when the file is made.
pub const H_SEED: usize = 8;
/// Hash of words 0..H_CHECK.
pub const H_CHECK: usize = 9;
/// Words of the header that carry meaning.
pub const HEADER_WORDS: usize = 10;

/// Slot word indexes.
pub const S_SEQ: usize = 0;
/// Key hash (0 = empty).
pub const S_HASH: usize = 1;
/// Expiry, unix seconds.
pub const S_EXPIRY: usize = 2;
/// Key and value lengths.
pub const S_LENS: usize = 3;
/// Checksum of the entry.
pub const S_CHECK: usize = 4;
// Word 5 is reserved (layout 2 kept the claim time there, apart from
// the claim).
/// First data word.
pub const S_DATA: usize = 6;
/// Bytes for key plus value in one slot.
pub const DATA_BYTES: usize = (SLOT_WORDS - S_DATA) * 8;
/// Longest key accepted (rustls uses 32-byte session IDs and ticket IDs).
pub const MAX_KEY: usize = 64;

/// The file length for `sets` sets.
pub const fn file_len(sets: usize) -> usize {
    HEADER_BYTES + sets * SET_BYTES
}

/// How many sets fit in `size` bytes (0 if not even one).
pub fn sets_for_size(size: u64) -> usize {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    size.saturating_sub(HEADER_BYTES) / SET_BYTES
}

/// Word index of set `set`'s tag line.
pub fn tag_start(set: usize) -> usize {
    (HEADER_BYTES + set * SET_BYTES) / 8
}

/// Word index of the first word of slot `way` of set `set`.
pub fn slot_start(set: usize, way: usize) -> usize {
    (HEADER_BYTES + set * SET_BYTES + TAG_BYTES + way * SLOT_BYTES) / 8
}

use crate::hash::FastHash;

/// Hash of a key under the file's seed; never 0 (0 marks an empty slot).
pub fn key_hash(seed: u64, key: &[u8]) -> u64 {
    FastHash::new(seed).bytes(key).finish() | 1
}

/// Checksum of a slot's contents.
pub fn entry_check(lens: u64, expiry: u64, key: &[u8], value: &[u8]) -> u64 {
    FastHash::new(lens)
        .word(expiry)
        .bytes(key)
        .bytes(value)
        .finish()
}

/// Packs the lengths word.
pub fn pack_lens(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64) | ((value_len as u64) << 16)
}

/// Unpacks the lengths word; `None` if they cannot fit a slot (a torn or
/// hostile slot).
pub fn unpack_lens(lens: u64) -> Option<(usize, usize)> {
    let key_len = (lens & 0xFFFF) as usize;
    let value_len = ((lens >> 16) & 0xFFFF) as usize;
    let fits = lens >> 32 == 0 && key_len <= MAX_KEY && key_len + value_len <= DATA_BYTES;
    fits.then_some((key_len, value_len))
}
