//! What Redis holds, and how a value proves where and when it was made.
//!
//! Keys are `tlsfront:s:` + hex(HMAC-SHA256(id key, session ID)): no session
//! ID is stored. Values are `version ‖ salt ‖ nonce ‖ AES-256-GCM(expiry ‖
//! issued ‖ issuer ‖ session)`, sealed with a key derived by HKDF-SHA256 from
//! the shared secret and the value's random salt, with the version and the
//! session ID as associated data. Whoever can write to Redis but lacks the
//! secret can neither read a session, nor make one, nor move a value to
//! another ID.
//!
//! **Freshness.** `issued` (unix seconds) and `issuer` (a random number each
//! tlsfront process draws at start) are sealed with the session: a value
//! opens only between its issue time and its expiry, and an expiry further
//! than [`MAX_LIFETIME`] from the issue time is refused. So an old blob that
//! someone copies back into Redis (a re-`SET`) resumes nothing once its own
//! lifetime is over, whatever TTL the copy was given.

use std::fmt;
use std::io::Read;
use std::path::Path;

use aws_lc_rs::{aead, hkdf, hmac};
use zeroize::Zeroizing;

use super::RemoteError;
use crate::seal::{self, OkmLen, Unsealed};

/// Prefix of every key tlsfront writes.
pub const KEY_PREFIX: &str = "tlsfront:s:";
/// Smallest shared secret accepted.
pub const MIN_SECRET: usize = 32;
/// Longest lifetime a value may claim (RFC 8446's limit for tickets, 7 days).
pub const MAX_LIFETIME: u64 = 7 * 24 * 3600;
/// A value issued up to this far in the future (clocks of two hosts) opens.
pub const CLOCK_SKEW: u64 = 60;

/// Format version: the first byte of every value (1 had no issue time).
const VERSION: u8 = 2;
/// Expiry, issue time, issuer.
const META_LEN: usize = 8 + 8 + 8;
/// Bytes a sealed value adds to a session: version, meta, sealing.
pub const OVERHEAD: usize = 1 + META_LEN + seal::OVERHEAD;

/// Why a value from Redis was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, or an unknown format version.
    Malformed,
    /// The tag did not verify: another secret, another session ID, or bytes
    /// changed in the store.
    Authentication,
    /// Authentic, but outside its lifetime: expired, issued in the future,
    /// or claiming more than [`MAX_LIFETIME`].
    Stale,
}

/// A value that opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedValue {
    /// Unix seconds after which the session is not resumed.
    pub expiry: u64,
    /// Unix seconds at which it was sealed.
    pub issued: u64,
    /// The sealing process's random issuer number.
    pub issuer: u64,
    /// rustls's encoded session.
    pub session: Vec<u8>,
}

/// The keys derived from the shared secret.
pub struct Keys {
    /// Names Redis keys: HMAC-SHA256 of the session ID.
    id: hmac::Key,
    /// Derives each value's AES-256-GCM key from its salt.
    seal: hkdf::Prk,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Derives the keys from a secret of at least [`MIN_SECRET`] bytes.
    pub fn from_secret(secret: &[u8]) -> Keys {
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"tlsfront remote session cache v1").extract(secret);
        let mut id = Zeroizing::new([0u8; 32]);
        let mut seal = Zeroizing::new([0u8; 32]);
        // expand/fill fail only for lengths above 255 × 32 bytes.
        for (info, out) in [
            (&b"tlsfront remote id key"[..], &mut id),
            (&b"tlsfront remote seal key"[..], &mut seal),
        ] {
            if let Ok(okm) = prk.expand(&[info], OkmLen(32)) {
                let _ = okm.fill(&mut out[..]);
            }
        }
        Keys {
            // aws-lc-rs zeroizes both when they are dropped.
            id: hmac::Key::new(hmac::HMAC_SHA256, &id[..]),
            seal: hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &seal[..]),
        }
    }

    /// Reads `path` (at least [`MIN_SECRET`] bytes) and derives the keys.
    pub fn from_file(path: &Path) -> Result<Keys, RemoteError> {
        let read = |source| RemoteError::SecretRead {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read)?;
        let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        // Sized up front so that no reallocation leaves a copy behind.
        let mut secret = Zeroizing::new(Vec::with_capacity(len.clamp(64, 1 << 20) + 1));
        file.read_to_end(&mut secret).map_err(read)?;
        if secret.len() < MIN_SECRET {
            return Err(RemoteError::SecretShort {
                path: path.to_path_buf(),
                len: secret.len(),
            });
        }
        Ok(Keys::from_secret(&secret))
    }

    /// The Redis key of a session ID.
    pub fn redis_key(&self, session_id: &[u8]) -> String {
        let tag = hmac::sign(&self.id, session_id);
        let mut key = String::with_capacity(KEY_PREFIX.len() + 64);
        key.push_str(KEY_PREFIX);
        for b in tag.as_ref() {
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 15)]));
        }
        key
    }

    fn value_key(&self, salt: &[u8]) -> Option<aead::LessSafeKey> {
        let mut raw = Zeroizing::new([0u8; 32]);
        let info: [&[u8]; 2] = [b"tlsfront remote value key", salt];
        let okm = self.seal.expand(&info, OkmLen(32)).ok()?;
        okm.fill(&mut raw[..]).ok()?;
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &raw[..]).ok()?;
        Some(aead::LessSafeKey::new(key))
    }

    /// Seals `session` (stored under `session_id`, made at `issued` by
    /// `issuer`, valid until `expiry`; unix seconds). `None` only if the
    /// random generator fails.
    pub fn seal(
        &self,
        session_id: &[u8],
        issued: u64,
        issuer: u64,
        expiry: u64,
        session: &[u8],
    ) -> Option<Vec<u8>> {
        let mut plain = Zeroizing::new(Vec::with_capacity(META_LEN + session.len()));
        plain.extend_from_slice(&expiry.to_le_bytes());
        plain.extend_from_slice(&issued.to_le_bytes());
        plain.extend_from_slice(&issuer.to_le_bytes());
        plain.extend_from_slice(session);
        let mut out = Vec::with_capacity(session.len() + OVERHEAD);
        out.push(VERSION);
        seal::seal_into(&mut out, &aad(session_id), &plain, |salt| {
            self.value_key(salt)
        })?;
        Some(out)
    }

    /// Opens a value read from Redis under `session_id`, judged at `now`
    /// (unix seconds).
    pub fn open(
        &self,
        session_id: &[u8],
        sealed: &[u8],
        now: u64,
    ) -> Result<OpenedValue, Rejected> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let plain = seal::open(&sealed[1..], &aad(session_id), |salt| self.value_key(salt))
            .map_err(|why| match why {
                Unsealed::Short => Rejected::Malformed,
                Unsealed::NoKey | Unsealed::Authentication => Rejected::Authentication,
            })?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&plain[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let (expiry, issued, issuer) = (word(0), word(1), word(2));
        let fresh = now < expiry
            && issued <= now.saturating_add(CLOCK_SKEW)
            && issued <= expiry
            && expiry - issued <= MAX_LIFETIME;
        if !fresh {
            return Err(Rejected::Stale);
        }
        Ok(OpenedValue {
            expiry,
            issued,
            issuer,
            session: plain[META_LEN..].to_vec(),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Associated data: the format version and the session ID, so that a value
/// opens only under the ID it was sealed for.
fn aad(session_id: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + session_id.len());
    a.push(VERSION);
    a.extend_from_slice(session_id);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value sealed by the build before the sealing moved to
    /// `crate::seal` (revision 3b08b9e): secret 48 bytes of 7, session ID
    /// `session-id`, issued at 1,900,000,000 by issuer 42, for 300 s.
    const VALUE_OF_3B08B9E: &str = "024a718e29c5ea669058df8fc4c1859c99ff5b422603db3c2355cf68674eccfc97148fd106e1ada0e27e48454f0ebae04f954505173a6d557a47618ea77fdb43e4202aa7e18a41e8942ecf3305823dcd2c08e635";

    #[test]
    fn a_value_sealed_by_an_earlier_build_with_the_same_secret_still_opens() {
        let sealed: Vec<u8> = (0..VALUE_OF_3B08B9E.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&VALUE_OF_3B08B9E[i..i + 2], 16).expect("hex"))
            .collect();
        let o = Keys::from_secret(&[7u8; 48])
            .open(b"session-id", &sealed, 1_900_000_001)
            .expect("opens");
        assert_eq!(
            (o.issued, o.issuer, o.expiry),
            (1_900_000_000, 42, 1_900_000_300)
        );
        assert_eq!(o.session, b"fixture session");
    }

    fn keys() -> Keys {
        Keys::from_secret(&[7u8; 32])
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_value_opens_only_under_its_id_and_secret_unchanged() {
        let k = keys();
        let id = [1u8; 32];
        let sealed = k.seal(&id, NOW, 42, NOW + 60, b"session bytes").unwrap();
        assert_eq!(sealed.len(), 13 + OVERHEAD);
        let opened = k.open(&id, &sealed, NOW).unwrap();
        assert_eq!(
            opened,
            OpenedValue {
                expiry: NOW + 60,
                issued: NOW,
                issuer: 42,
                session: b"session bytes".to_vec()
            }
        );
        assert_eq!(
            k.open(&[2u8; 32], &sealed, NOW),
            Err(Rejected::Authentication)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(k.open(&id, &bad, NOW).is_err(), "byte {i}");
        }
        let other = Keys::from_secret(&[8u8; 32]);
        assert_eq!(other.open(&id, &sealed, NOW), Err(Rejected::Authentication));
        assert_eq!(k.open(&id, &sealed[..10], NOW), Err(Rejected::Malformed));
        assert_ne!(
            sealed,
            k.seal(&id, NOW, 42, NOW + 60, b"session bytes").unwrap()
        );
    }

    #[test]
    fn a_value_opens_only_within_its_own_lifetime() {
        let k = keys();
        let id = b"id";
        let sealed = k.seal(id, NOW, 1, NOW + 300, b"s").unwrap();
        // An old blob copied back into Redis: past its sealed expiry.
        assert_eq!(k.open(id, &sealed, NOW + 300), Err(Rejected::Stale));
        assert_eq!(k.open(id, &sealed, NOW + 10_000), Err(Rejected::Stale));
        assert!(k.open(id, &sealed, NOW + 299).is_ok());
        // Issued in the future beyond clock skew.
        let future = k
            .seal(id, NOW + CLOCK_SKEW + 1, 1, NOW + 600, b"s")
            .unwrap();
        assert_eq!(k.open(id, &future, NOW), Err(Rejected::Stale));
        // A lifetime no tlsfront gives.
        let long = k.seal(id, NOW, 1, NOW + MAX_LIFETIME + 1, b"s").unwrap();
        assert_eq!(k.open(id, &long, NOW), Err(Rejected::Stale));
    }

    #[test]
    fn redis_keys_hide_the_id_and_depend_on_the_secret() {
        let k = keys();
        let id = b"0123456789abcdef0123456789abcdef";
        let key = k.redis_key(id);
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 64);
        assert!(!key.contains("0123456789abcdef0123456789abcdef"));
        assert_eq!(key, k.redis_key(id));
        assert_ne!(key, Keys::from_secret(&[8u8; 32]).redis_key(id));
        assert_ne!(key, k.redis_key(b"another id"));
    }
}
