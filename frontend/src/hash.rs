//! The one non-cryptographic hash of the shared files: session cache keys
//! and slot checksums, ticket ring checksums. Its output is part of the
//! on-file formats: changing it changes both layouts' versions.

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// A fast seeded 64-bit hash, word at a time. Not cryptographic: keys are
/// random session IDs chosen by the server, and the checksums (of cache
/// slots and headers, of the ticket ring's buffers) only have to catch
/// torn or scribbled memory.
#[derive(Clone, Copy)]
pub struct FastHash(u64);

impl FastHash {
    /// A hasher starting from `seed`.
    pub fn new(seed: u64) -> FastHash {
        FastHash(seed ^ K2)
    }

    /// Mixes one word in.
    pub fn word(self, w: u64) -> FastHash {
        FastHash((self.0 ^ w).wrapping_mul(K1).rotate_left(31))
    }

    /// Mixes bytes in (with their length, so that trailing zeros count).
    pub fn bytes(mut self, bytes: &[u8]) -> FastHash {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self = self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self = self.word(u64::from_le_bytes(w));
        }
        self.word(bytes.len() as u64)
    }

    /// The hash.
    pub fn finish(self) -> u64 {
        fmix(self.0)
    }
}
