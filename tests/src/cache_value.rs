//! Self-checking keys and values for hammering the session cache from several
//! threads and processes (`cache_hammer`, `tests/session_cache_processes.rs`).
//!
//! A value names the key it was stored under, its writer and a counter, has a
//! length chosen by the writer, is filled with the [`Pattern`] of those, and
//! ends with an FNV digest of everything before it. So a reader can tell a
//! good value from a torn one (parts of two writes), a foreign one (another
//! key's value) or garbage, whatever the mix.

use crate::{Fnv, Pattern};

/// Bytes of a key: like a TLS session ID or a TLS 1.3 ticket ID.
pub const KEY_LEN: usize = 32;
/// Bytes of the fixed part of a value: key index, writer, counter, length, digest.
pub const HEAD_LEN: usize = 4 + 4 + 8 + 2;
/// Smallest value.
pub const MIN_LEN: usize = HEAD_LEN + 8;
/// Largest value that fits one entry with a [`KEY_LEN`] key (the cache
/// says how many bytes an entry holds: its layout is its own).
pub const MAX_LEN: usize = tlsfront::session_cache::ENTRY_BYTES - KEY_LEN;

/// The key of index `i` (32 bytes).
pub fn key(i: u32) -> Vec<u8> {
    let k = format!("hammer-key-{i:021}").into_bytes();
    debug_assert_eq!(k.len(), KEY_LEN);
    k
}

/// The key of index `i` within a namespace `ns` (32 bytes), e.g. one per
/// round of a test, so that rounds never see each other's entries.
pub fn key_in(ns: u32, i: u32) -> Vec<u8> {
    let k = format!("ns{ns:010}-key-{i:015}").into_bytes();
    debug_assert_eq!(k.len(), KEY_LEN);
    k
}

fn seed(key: u32, writer: u32, counter: u64) -> u64 {
    (u64::from(key) << 40) ^ (u64::from(writer) << 24) ^ counter.rotate_left(17)
}

/// The value `writer` stores under key `key` the `counter`-th time, `len`
/// bytes long (clamped to [`MIN_LEN`]..=[`MAX_LEN`]).
pub fn encode(key: u32, writer: u32, counter: u64, len: usize) -> Vec<u8> {
    let len = len.clamp(MIN_LEN, MAX_LEN);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&counter.to_le_bytes());
    v.extend_from_slice(&(len as u16).to_le_bytes());
    let filler = len - HEAD_LEN - 8;
    v.extend_from_slice(&Pattern::bytes(seed(key, writer, counter), filler));
    let digest = Fnv::of(&v);
    v.extend_from_slice(&digest.to_le_bytes());
    v
}

/// A value that passed [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub writer: u32,
    pub counter: u64,
}

/// Checks that `v` is a whole value stored under key `expected_key`; the
/// error says what is wrong with it.
pub fn decode(expected_key: u32, v: &[u8]) -> Result<Decoded, String> {
    if v.len() < MIN_LEN || v.len() > MAX_LEN {
        return Err(format!("length {} out of range", v.len()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(v[o..o + 4].try_into().unwrap());
    let (body, digest) = v.split_at(v.len() - 8);
    if Fnv::of(body).to_le_bytes() != digest {
        return Err("digest does not match (torn or garbage)".into());
    }
    let key = u32_at(0);
    let writer = u32_at(4);
    let counter = u64::from_le_bytes(v[8..16].try_into().unwrap());
    let len = u16::from_le_bytes(v[16..18].try_into().unwrap()) as usize;
    if len != v.len() {
        return Err(format!("says {len} bytes, has {}", v.len()));
    }
    if key != expected_key {
        return Err(format!("foreign value: key {key} under key {expected_key}"));
    }
    if body[HEAD_LEN..] != Pattern::bytes(seed(key, writer, counter), len - HEAD_LEN - 8)[..] {
        return Err("filler does not match".into());
    }
    Ok(Decoded { writer, counter })
}

/// Short hex of the first bytes of `v`, for error messages.
pub fn hex_head(v: &[u8]) -> String {
    v.iter().take(48).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_decodes_and_any_flipped_bit_or_other_key_is_caught() {
        for len in [0, MIN_LEN, 100, MAX_LEN, 10_000] {
            let v = encode(7, 3, 99, len);
            assert!(v.len() >= MIN_LEN && v.len() <= MAX_LEN);
            assert_eq!(
                decode(7, &v),
                Ok(Decoded {
                    writer: 3,
                    counter: 99
                })
            );
            assert!(decode(8, &v).unwrap_err().contains("foreign"));
            for bit in 0..v.len() * 8 {
                let mut bad = v.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(7, &bad).is_err(), "bit {bit} of {len}");
            }
        }
        assert_eq!(key(5).len(), KEY_LEN);
        assert_eq!(key_in(3, 5).len(), KEY_LEN);
    }
}
