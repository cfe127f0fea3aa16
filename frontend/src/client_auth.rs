//! Client certificates: `tls.client_auth` and `tls.client_ca`.
//!
//! The check itself is rustls's `WebPkiClientVerifier` (chain to a CA of
//! `tls.client_ca`, client-auth usage, validity), with
//! `allow_unauthenticated` for `optional`.
//!
//! Resumption needs more: rustls resumes any session it can open and hands
//! the connection the client certificate the session recorded, or none, so
//! a session made under `optional` without a certificate (or under another
//! CA file, or by a process with `none` sharing the cache file and ticket
//! ring) would resume into `required` without any certificate being
//! verified. So every session made while client certificates are asked for
//! is bound to the *context* it was made in: a tag of the mode and of the
//! CA certificates is put in front of the session's bytes, inside the
//! cache slot or the sealed ticket, and a session whose tag is not the
//! running context's is not handed to rustls, which then does a full
//! handshake (and asks for a certificate). With `none` nothing is tagged,
//! so the default configuration stores exactly what it did before. (The
//! session cache counts a look-up whose tag is refused here as a hit: the
//! counters of `tlsfront stats` are the cache's, not resumptions.)

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::{ClientAuth, Config};

/// Bytes of the context tag in front of a bound session.
const TAG_LEN: usize = 16;

/// First byte of a tag. An untagged session (rustls's encoding starts with
/// 0 or 1, whether it has an SNI name) can never be taken for a tagged one.
const TAG_MAGIC: u8 = 0xC7;

/// Why client certificates cannot be set up; names `tls.client_ca`'s file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum ClientAuthError {
    /// The CA file could not be read or holds no certificate.
    #[error("tls.client_ca {}: {reason}", path.display())]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    /// `optional` or `required` without a CA file.
    #[error("tls.client_auth = {mode} needs tls.client_ca (the CA file client certificates must chain to)")]
    NoCa { mode: &'static str },
    /// rustls refused the CA certificates.
    #[error("tls.client_ca {}: {reason}", path.display())]
    Verifier {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The client-certificate part of a server configuration.
pub struct Setup {
    /// What rustls asks of clients.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The context sessions are bound to; `None` with `tls.client_auth = none`.
    pub context: Option<Context>,
}

/// Builds the verifier and the session context of `config`.
pub fn setup(config: &Config, provider: &Arc<CryptoProvider>) -> Result<Setup, ClientAuthError> {
    let path = match (config.client_auth, &config.client_ca.0) {
        (ClientAuth::None, _) => {
            return Ok(Setup {
                verifier: WebPkiClientVerifier::no_client_auth(),
                context: None,
            })
        }
        (_, Some(path)) => path,
        // Config::validate refuses this already; kept for callers that
        // build a Config by hand.
        (mode, None) => {
            return Err(ClientAuthError::NoCa {
                mode: mode_name(mode),
            })
        }
    };
    let cas = read_cas(path)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| ClientAuthError::Verifier {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = match config.client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    let verifier = builder.build().map_err(|e| ClientAuthError::Verifier {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Setup {
        verifier,
        context: Some(Context::of(config.client_auth, &cas)),
    })
}

fn read_cas(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientAuthError> {
    let unreadable = |reason: String| ClientAuthError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let cas = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(format!("{e:?}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(format!("{e:?}")))?;
    if cas.is_empty() {
        return Err(unreadable("no CERTIFICATE block found".into()));
    }
    Ok(cas)
}

/// The tag of a client-auth context: the mode and a hash of the CA
/// certificates, so that a session resumes only where the same clients
/// would have been let in by a full handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context([u8; TAG_LEN]);

impl Context {
    /// The context of `mode` with the CA certificates `cas`.
    pub fn of(mode: ClientAuth, cas: &[CertificateDer<'_>]) -> Context {
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        hash.update(b"tlsfront client-auth context v1");
        hash.update(mode_name(mode).as_bytes());
        for ca in cas {
            hash.update(&(ca.len() as u64).to_be_bytes());
            hash.update(ca);
        }
        let digest = hash.finish();
        let mut tag = [0u8; TAG_LEN];
        tag[0] = TAG_MAGIC;
        tag[1..].copy_from_slice(&digest.as_ref()[..TAG_LEN - 1]);
        Context(tag)
    }

    fn bind(&self, session: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(TAG_LEN + session.len());
        out.extend_from_slice(&self.0);
        out.extend_from_slice(session);
        out
    }

    /// The session without its tag, if it was made in this context.
    fn unbind(&self, mut bound: Vec<u8>) -> Option<Vec<u8>> {
        if bound.len() < TAG_LEN || bound[..TAG_LEN] != self.0 {
            return None;
        }
        bound.drain(..TAG_LEN);
        Some(bound)
    }
}

fn mode_name(mode: ClientAuth) -> &'static str {
    match mode {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    }
}

/// Session storage (session IDs, TLS 1.3 stateful tickets) whose sessions
/// resume only in the context they were made in.
#[derive(Debug)]
pub struct BoundSessions {
    inner: Arc<dyn StoresServerSessions>,
    context: Context,
}

impl BoundSessions {
    /// `inner`, bound to `context`.
    pub fn new(inner: Arc<dyn StoresServerSessions>, context: Context) -> BoundSessions {
        BoundSessions { inner, context }
    }
}

impl StoresServerSessions for BoundSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, self.context.bind(&value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.context.unbind(self.inner.get(key)?)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        // A session of another context is consumed all the same: it could
        // never resume here, and a single-use ticket stays single-use.
        self.context.unbind(self.inner.take(key)?)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A ticketer whose tickets resume only in the context they were made in
/// (the tag is sealed inside the ticket with the session).
#[derive(Debug)]
pub struct BoundTickets {
    inner: Arc<dyn ProducesTickets>,
    context: Context,
}

impl BoundTickets {
    /// `inner`, bound to `context`.
    pub fn new(inner: Arc<dyn ProducesTickets>, context: Context) -> BoundTickets {
        BoundTickets { inner, context }
    }
}

impl ProducesTickets for BoundTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&self.context.bind(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.context.unbind(self.inner.decrypt(cipher)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec![name.to_string()])
            .expect("self-signed")
            .cert
            .der()
            .clone()
    }

    #[test]
    fn a_session_resumes_only_in_the_context_it_was_made_in() {
        let cas = [ca("a")];
        let optional = Context::of(ClientAuth::Optional, &cas);
        let required = Context::of(ClientAuth::Required, &cas);
        let other_ca = Context::of(ClientAuth::Required, &[ca("b")]);
        let session = vec![1u8, 2, 3];
        let bound = required.bind(&session);
        assert_eq!(required.unbind(bound.clone()), Some(session.clone()));
        assert_eq!(optional.unbind(bound.clone()), None);
        assert_eq!(other_ca.unbind(bound), None);
    }

    #[test]
    fn an_untagged_session_never_resumes_in_a_client_auth_context() {
        let required = Context::of(ClientAuth::Required, &[ca("a")]);
        // rustls's encoding starts with 0 (no SNI) or 1 (SNI).
        for first in [0u8, 1] {
            let mut untagged = vec![first];
            untagged.extend_from_slice(&required.0[1..]);
            untagged.extend_from_slice(b"rest of a session");
            assert_eq!(required.unbind(untagged), None);
        }
    }
}
