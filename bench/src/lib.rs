//! tlsfront-bench: helpers shared by the criterion benches in `benches/`.
//!
//! - [`SplitMix64`]: a fixed-seed generator, so that every implementation
//!   under test is fed exactly the same keys and values.
//! - [`MutexMap`]: the naive baseline, `Mutex<HashMap<Vec<u8>, Vec<u8>>>`,
//!   behind rustls's `StoresServerSessions` like the other two.
//! - [`Fixture`]: the keys and value of the session cache benches.
//! - [`SpinBarrier`]: lines bench threads up within ~100 ns (a futex
//!   barrier wakes the waiting thread tens of microseconds late, so short
//!   timed phases would barely overlap).
//! - [`pinned_provider`] and [`AcceptAnything`]: the client side of `tlsload`
//!   and of the in-memory handshake bench, so both do the same crypto.
//! - [`procfs`]: CPU time, `RssAnon` and wake-ups of a server from `/proc`
//!   (what `tlsload` reports for every server, from the outside).
//!
//! Results and how to read them: `RESULTS.md` beside this crate's manifest.

use std::collections::HashMap;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rustls::server::StoresServerSessions;

pub mod procfs;

/// Bytes of a session key: rustls's TLS 1.2 session IDs and TLS 1.3
/// stateful ticket IDs are both 32 bytes.
pub const KEY_LEN: usize = 32;
/// Bytes of a stored value: about an ordinary encoded rustls server session.
pub const VALUE_LEN: usize = 150;

/// A session key.
pub type Key = [u8; KEY_LEN];

/// SplitMix64: tiny, fast, and good enough to make keys that hash well.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `n` random keys.
    pub fn keys(&mut self, n: usize) -> Vec<Key> {
        (0..n)
            .map(|_| {
                let mut k = [0u8; KEY_LEN];
                self.fill(&mut k);
                k
            })
            .collect()
    }

    /// A random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// A reusable barrier that spins instead of sleeping.
#[derive(Debug)]
pub struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    /// A barrier for `threads` threads.
    pub fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Returns once all `threads` threads have called `wait` (for this
    /// generation).
    pub fn wait(&self) {
        if self.threads <= 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            while self.generation.load(Ordering::Acquire) == generation {
                spin_loop();
            }
        }
    }
}

/// The baseline: one mutex around a `HashMap`, unbounded.
#[derive(Debug, Default)]
pub struct MutexMap(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

impl MutexMap {
    /// An empty map with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        MutexMap(Mutex::new(HashMap::with_capacity(capacity)))
    }
}

impl StoresServerSessions for MutexMap {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.lock().unwrap().insert(key, value);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(key).cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.lock().unwrap().remove(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Keys and value of the session cache benches; the same for every
/// implementation.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Stored before any measurement and kept stored: read by `get` (hit)
    /// and overwritten by `put`. Thread `t` of `n` uses its own
    /// [`range`](Self::range) of them.
    pub resident: Vec<Key>,
    /// Never stored: read by `get` (miss).
    pub absent: Vec<Key>,
    /// Per thread: keys stored (untimed) and then taken (timed) by the
    /// `take` bench, one chunk at a time.
    pub take_keys: Vec<Vec<Key>>,
    /// The order in which a chunk of `take_keys` is taken: a random
    /// permutation, not the insertion order (rustls's memory cache does an
    /// O(n) search of its insertion-order queue on each `take`, which the
    /// insertion order would make artificially short).
    pub take_order: Vec<usize>,
    /// The value stored under every key.
    pub value: Vec<u8>,
}

impl Fixture {
    /// `resident` stored keys, as many absent ones, and `take_chunk` keys
    /// per thread for up to `max_threads` threads.
    pub fn new(resident: usize, take_chunk: usize, max_threads: usize) -> Self {
        let mut rng = SplitMix64::new(0x7115_F0A7_5E55_1011);
        let resident_keys = rng.keys(resident);
        let absent = rng.keys(resident);
        let take_keys = (0..max_threads).map(|_| rng.keys(take_chunk)).collect();
        let take_order = rng.permutation(take_chunk);
        let mut value = vec![0u8; VALUE_LEN];
        rng.fill(&mut value);
        Fixture {
            resident: resident_keys,
            absent,
            take_keys,
            take_order,
            value,
        }
    }

    /// The share of `keys` of thread `t` out of `threads`.
    pub fn range(keys: &[Key], t: usize, threads: usize) -> &[Key] {
        let per = keys.len() / threads;
        &keys[t * per..(t + 1) * per]
    }

    /// Stores every resident key in `store`, and checks that each can be
    /// read back and that no absent key is found.
    pub fn prefill(&self, store: &dyn StoresServerSessions) {
        for k in &self.resident {
            assert!(store.put(k.to_vec(), self.value.clone()), "prefill put");
        }
        for k in &self.resident {
            assert_eq!(
                store.get(k).as_deref(),
                Some(&self.value[..]),
                "prefill get"
            );
        }
        for k in &self.absent {
            assert!(store.get(k).is_none(), "absent key found");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_deterministic() {
        let a = Fixture::new(1000, 100, 2);
        let b = Fixture::new(1000, 100, 2);
        assert_eq!(a.resident, b.resident);
        let mut all: Vec<Key> = a.resident.clone();
        all.extend(&a.absent);
        all.extend(a.take_keys.iter().flatten());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        let mut order = a.take_order.clone();
        order.sort();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn mutex_map_behaves_like_a_session_store() {
        let f = Fixture::new(100, 10, 2);
        let m = MutexMap::default();
        f.prefill(&m);
        let k = &f.resident[0];
        assert_eq!(m.take(k).as_deref(), Some(&f.value[..]));
        assert!(m.take(k).is_none());
        assert!(m.get(k).is_none());
    }

    #[test]
    fn spin_barrier_lines_threads_up() {
        let barrier = SpinBarrier::new(2);
        let phase = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for round in 0..1000 {
                        // Both threads bump once per round, then check
                        // that neither is ahead before the next round.
                        phase.fetch_add(1, Ordering::SeqCst);
                        barrier.wait();
                        assert_eq!(phase.load(Ordering::SeqCst), 2 * (round + 1));
                        barrier.wait();
                    }
                });
            }
        });
    }

    #[test]
    fn ranges_split_evenly() {
        let f = Fixture::new(10, 1, 2);
        assert_eq!(Fixture::range(&f.resident, 0, 2), &f.resident[..5]);
        assert_eq!(Fixture::range(&f.resident, 1, 2), &f.resident[5..]);
        assert_eq!(Fixture::range(&f.resident, 0, 1), &f.resident[..]);
    }
}

/// The client's crypto: aws-lc-rs with X25519 (and P-256) and AES-128-GCM
/// only, so that every server measured does the same key exchange and
/// cipher. X25519 alone would do for rustls, but an OpenSSL server (nginx)
/// refuses a TLS 1.2 handshake with a P-256 ECDSA certificate unless the
/// client lists P-256 among its groups; X25519 stays first and is the only
/// TLS 1.3 key share.
pub fn pinned_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs;
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];
    p.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    p
}

/// A certificate verifier that accepts anything and checks no signature,
/// so a load-generating client spends as little CPU as possible (the
/// server's work is unchanged). Benchmarks only.
#[derive(Debug)]
pub struct AcceptAnything(pub Vec<rustls::SignatureScheme>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // As for TLS 1.2: nothing is checked.
        self.verify_tls12_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

/// A client config on [`pinned_provider`] for TLS 1.3 (`tls13`) or 1.2
/// alone that accepts any certificate ([`AcceptAnything`]): a benchmark
/// client, whose checks would not change the server's work.
pub fn accept_anything_config(tls13: bool) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = std::sync::Arc::new(pinned_provider());
    let version: &'static rustls::SupportedProtocolVersion = if tls13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth())
}

/// A fresh directory for a bench's shared-memory files, removed on drop:
/// under `$TLSFRONT_BENCH_DIR`, else `/dev/shm` (memory, like production),
/// else the default temporary directory.
pub fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("TLSFRONT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("tlsfront-bench")
        .tempdir_in(&base)
        .expect("temporary directory")
}

/// Runs `f(t, barrier)` on `threads` threads (`t` = 0..threads, all
/// released together by `barrier`); the slowest thread's time.
pub fn slowest_thread<F>(threads: usize, f: F) -> std::time::Duration
where
    F: Fn(usize, &SpinBarrier) -> std::time::Duration + Sync,
{
    let barrier = SpinBarrier::new(threads);
    if threads == 1 {
        return f(0, &barrier);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || f(t, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

/// What a benchmark client does: one TLS handshake of a kind (full or
/// resumed, TLS 1.2 or 1.3), or `plain` TCP. The names are those of
/// tlsload's command line and of the handshake bench's groups (RESULTS.md).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Full12,
    Full13,
    ResumeId12,
    ResumeTicket12,
    Resume13,
    /// TLS 1.3 resumption through the server's session cache (stateful
    /// tickets); the same client as [`Mode::Resume13`].
    Resume13Stateful,
    Plain,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 7] = [
        Mode::Full12,
        Mode::Full13,
        Mode::ResumeId12,
        Mode::ResumeTicket12,
        Mode::Resume13,
        Mode::Resume13Stateful,
        Mode::Plain,
    ];

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full12 => "full12",
            Mode::Full13 => "full13",
            Mode::ResumeId12 => "resume-id12",
            Mode::ResumeTicket12 => "resume-ticket12",
            Mode::Resume13 => "resume13",
            Mode::Resume13Stateful => "resume13-stateful",
            Mode::Plain => "plain",
        }
    }

    /// Does the client offer a session to resume?
    pub fn resumes(self) -> bool {
        !matches!(self, Mode::Full12 | Mode::Full13 | Mode::Plain)
    }

    /// TLS 1.3 (else TLS 1.2, or no TLS)?
    pub fn tls13(self) -> bool {
        matches!(self, Mode::Full13 | Mode::Resume13 | Mode::Resume13Stateful)
    }
}
