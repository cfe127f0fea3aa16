//! Sealing as the ticket-key ring and the remote tier both do it:
//! AES-256-GCM under a key of its own for each sealed value, derived by the
//! caller from a random salt (`key_for(salt)`), with a random nonce, so that
//! random GCM nonces never meet under one key however many values a
//! long-lived secret seals. On the wire: `salt ‖ nonce ‖ ciphertext ‖ tag`,
//! after whatever prefix the caller writes (a key name, a format version).
//!
//! The two owners keep their own key derivations (their formats are read
//! by other hosts and by earlier releases); what they share is the framing,
//! the randomness and the checks, written once.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

/// Bytes of the random salt a value's key is derived from.
pub(crate) const SALT_LEN: usize = 16;
/// Bytes of the random GCM nonce.
pub(crate) const NONCE_LEN: usize = aws_lc_rs::aead::NONCE_LEN;
/// Bytes of the GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes sealing adds to a plaintext (the caller's prefix aside).
pub(crate) const OVERHEAD: usize = SALT_LEN + NONCE_LEN + TAG_LEN;

/// An HKDF output length, for `Prk::expand` into a buffer of that size.
pub(crate) struct OkmLen(pub(crate) usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsealed {
    /// Shorter than salt, nonce and tag.
    Short,
    /// No key for its salt (the caller's derivation failed).
    NoKey,
    /// The tag did not verify: another key, other associated data, or
    /// changed bytes.
    Authentication,
}

/// Appends `salt ‖ nonce ‖ AES-256-GCM(plain, aad) ‖ tag` to `out`, with
/// the key `key_for(salt)` of a fresh random salt. `None` if the OS random
/// generator or the key derivation failed (`out` may then hold a partial
/// value: the caller drops it).
pub(crate) fn seal_into(
    out: &mut Vec<u8>,
    aad: &[u8],
    plain: &[u8],
    key_for: impl FnOnce(&[u8]) -> Option<LessSafeKey>,
) -> Option<()> {
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).ok()?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).ok()?;
    let key = key_for(&salt)?;
    out.reserve(OVERHEAD + plain.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    // Encrypted where it lies, so no other copy of the plaintext is made.
    let body = out.len();
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[body..],
        )
        .ok()?;
    out.extend_from_slice(tag.as_ref());
    Some(())
}

/// Opens what [`seal_into`] appended (`sealed` starts at the salt), with
/// the key `key_for(salt)`; the plaintext is wiped when dropped.
pub(crate) fn open(
    sealed: &[u8],
    aad: &[u8],
    key_for: impl FnOnce(&[u8]) -> Option<LessSafeKey>,
) -> Result<Zeroizing<Vec<u8>>, Unsealed> {
    if sealed.len() < OVERHEAD {
        return Err(Unsealed::Short);
    }
    let (salt, rest) = sealed.split_at(SALT_LEN);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let key = key_for(salt).ok_or(Unsealed::NoKey)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealed::Short)?;
    let mut plain = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut plain[..])
        .map_err(|_| Unsealed::Authentication)?
        .len();
    plain.truncate(len);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{UnboundKey, AES_256_GCM};

    /// A key that depends on the salt, as both owners derive theirs.
    fn key(secret: u8) -> impl Fn(&[u8]) -> Option<LessSafeKey> {
        move |salt: &[u8]| {
            let mut raw = [secret; 32];
            for (r, s) in raw.iter_mut().zip(salt) {
                *r ^= s;
            }
            Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).ok()?))
        }
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_associated_data_only() {
        let mut out = b"prefix".to_vec();
        seal_into(&mut out, b"aad", b"the session", key(7)).expect("sealed");
        assert_eq!(out.len(), 6 + OVERHEAD + b"the session".len());
        let sealed = &out[6..];
        assert_eq!(
            &open(sealed, b"aad", key(7)).expect("opens")[..],
            b"the session"
        );
        assert_eq!(
            open(sealed, b"other", key(7)),
            Err(Unsealed::Authentication)
        );
        assert_eq!(open(sealed, b"aad", key(8)), Err(Unsealed::Authentication));
        assert_eq!(open(sealed, b"aad", |_| None), Err(Unsealed::NoKey));
        assert_eq!(
            open(&sealed[..OVERHEAD - 1], b"aad", key(7)),
            Err(Unsealed::Short)
        );
    }

    #[test]
    fn every_flipped_bit_of_a_sealed_value_is_refused() {
        let mut out = Vec::new();
        seal_into(&mut out, b"", b"abc", key(1)).expect("sealed");
        for i in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(open(&bad, b"", key(1)).is_err(), "bit {i}");
        }
    }

    #[test]
    fn two_seals_of_one_value_share_neither_salt_nor_nonce() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        seal_into(&mut a, b"", b"same", key(3)).expect("sealed");
        seal_into(&mut b, b"", b"same", key(3)).expect("sealed");
        assert_ne!(a[..SALT_LEN], b[..SALT_LEN]);
        assert_ne!(
            a[SALT_LEN..SALT_LEN + NONCE_LEN],
            b[SALT_LEN..SALT_LEN + NONCE_LEN]
        );
    }
}
