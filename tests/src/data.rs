//! Test data: a deterministic byte stream ([`Pattern`]) and a small digest ([`Fnv`]).

/// A deterministic pseudo-random byte stream (splitmix64), reproducible from its seed.
#[derive(Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
    /// Bytes produced (or checked) so far.
    pub pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
            pos: 0,
        }
    }

    #[inline]
    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next `buf.len()` bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.used < 8 {
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut chunks = buf[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word().to_le_bytes();
            self.used = 0;
            for b in rest {
                *b = self.word[self.used];
                self.used += 1;
            }
        }
        self.pos += buf.len() as u64;
    }

    /// The first `len` bytes of the stream of `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Pattern::new(seed).fill(&mut v);
        v
    }

    /// Compares `data` with the next bytes of the stream; on mismatch returns the
    /// absolute offset of the first differing byte.
    pub fn check(&mut self, data: &[u8]) -> Result<(), u64> {
        let start = self.pos;
        let mut expect = [0u8; 16 * 1024];
        for (k, chunk) in data.chunks(expect.len()).enumerate() {
            let e = &mut expect[..chunk.len()];
            self.fill(e);
            if e != chunk {
                let off = e.iter().zip(chunk).position(|(a, b)| a != b).unwrap();
                return Err(start + (k * expect.len() + off) as u64);
            }
        }
        Ok(())
    }
}

/// Incrementally verifies a received stream against a [`Pattern`], remembering the
/// first mismatch and how many bytes arrived.
pub struct PatternCheck {
    pattern: Pattern,
    pub received: u64,
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    pub fn new(seed: u64) -> Self {
        PatternCheck {
            pattern: Pattern::new(seed),
            received: 0,
            first_mismatch: None,
        }
    }
    pub fn feed(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        if self.first_mismatch.is_none() {
            if let Err(off) = self.pattern.check(data) {
                self.first_mismatch = Some(off);
            }
        }
    }
}

/// FNV-1a 64-bit digest.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    pub fn of(data: &[u8]) -> u64 {
        let mut f = Fnv::default();
        f.update(data);
        f.0
    }
}
