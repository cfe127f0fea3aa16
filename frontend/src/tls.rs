//! The rustls server configuration: certificates, SNI, ALPN, versions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::session_cache::SessionCache;
use crate::tickets::TicketKeyRing;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {}: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused it.
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// The self-signed certificate could not be made.
    #[error("generating the self-signed certificate: {0}")]
    SelfSigned(String),
    /// `tls.client_ca` / `tls.client_auth` cannot be set up.
    #[error(transparent)]
    ClientAuth(#[from] crate::client_auth::ClientAuthError),
    /// rustls refused the protocol versions or the provider.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the default certificate came from, for the start-up summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `tls.cert` / `tls.key`.
    Files(PathBuf),
    /// Generated at start for `localhost`; never written to disk.
    SelfSigned,
}

/// The crypto provider every part of tlsfront uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Picks the certificate by SNI ([`crate::server_name::lookup`]: exact,
/// then a one-label wildcard, case-insensitive); unknown or absent names get
/// the default.
#[derive(Debug)]
pub(crate) struct CertResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertResolver {
    /// A resolver serving `default` unless the SNI name matches a key of
    /// `by_name` (lower-case names; a wildcard is written `*.example.com`).
    pub(crate) fn new(
        default: Arc<CertifiedKey>,
        by_name: HashMap<String, Arc<CertifiedKey>>,
    ) -> Self {
        CertResolver { default, by_name }
    }

    /// The certificate for SNI `name` (`None`: the client sent none).
    pub(crate) fn for_name(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        name.and_then(|name| crate::server_name::lookup(&self.by_name, name))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.for_name(hello.server_name())))
    }
}

/// Loads a certificate chain and its key from PEM files.
pub(crate) fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error("certificate", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: cert.to_path_buf(),
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("key", key, e))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::KeyPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    let reason = match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => format!("{other:?}"),
    };
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

/// A certificate for `localhost`, `127.0.0.1` and `::1`, made in memory.
pub(crate) fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    CertifiedKey::from_der(vec![made.cert.der().clone()], key, provider)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))
}

/// Builds the rustls server configuration shared by every worker.
///
/// `sessions` is where TLS 1.2 session IDs and TLS 1.3 stateful tickets are
/// kept (the shared [`SessionCache`]); `None` turns server-side session
/// storage off.
/// `tickets` is the ticket-key ring, `None` when no tickets are issued.
pub fn server_config(
    config: &Config,
    sessions: Option<Arc<SessionCache>>,
    tickets: Option<Arc<TicketKeyRing>>,
) -> Result<(Arc<ServerConfig>, CertSource), TlsError> {
    let provider = provider();
    let (default, source) = match (&config.cert.0, &config.key.0) {
        (Some(cert), Some(key)) => (
            load_certified_key(cert, key, &provider)?,
            CertSource::Files(cert.clone()),
        ),
        _ => (self_signed(&provider)?, CertSource::SelfSigned),
    };
    let default = with_ocsp(default, config.ocsp.0.as_deref());
    let mut by_name = HashMap::new();
    for (name, sni) in &config.sni {
        if let (Some(cert), Some(key)) = (&sni.cert, &sni.key) {
            by_name.insert(
                name.clone(),
                Arc::new(with_ocsp(
                    load_certified_key(cert, key, &provider)?,
                    sni.ocsp.as_deref(),
                )),
            );
        }
    }
    let resolver = CertResolver::new(Arc::new(default), by_name);

    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if config.protocols.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if config.protocols.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let client_auth = crate::client_auth::setup(config, &provider)?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(client_auth.verifier)
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = config
        .alpn
        .0
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    server.session_storage = match sessions {
        Some(cache) => cache,
        None => Arc::new(rustls::server::NoServerSessionStorage {}),
    };
    if let Some(ring) = tickets {
        server.ticketer = ring;
    }
    if let Some(context) = client_auth.context {
        bind_sessions(&mut server, context);
    }
    server.send_tls13_tickets = config.tls13_tickets as usize;
    // RFC 9149: a client that asks for fewer tickets (or none) gets them.
    server.max_tls13_tickets = config.tls13_tickets as usize;
    // Validated to fit a u32 by Config::validate.
    server.max_early_data_size = u32::try_from(config.early_data_max.0).unwrap_or(0);
    Ok((Arc::new(server), source))
}

/// Binds `server`'s session storage and ticketer to the client-auth
/// `context` (see [`crate::client_auth`]): sessions made under another
/// `tls.client_auth` / `tls.client_ca` do not resume.
fn bind_sessions(server: &mut ServerConfig, context: crate::client_auth::Context) {
    use crate::client_auth::{BoundSessions, BoundTickets};
    server.session_storage = Arc::new(BoundSessions::new(
        Arc::clone(&server.session_storage),
        context,
    ));
    server.ticketer = Arc::new(BoundTickets::new(Arc::clone(&server.ticketer), context));
}

/// `key` with the OCSP response at `path` to staple, if it is usable for
/// `key`'s certificate now; else `key` as it was, with a warning naming the
/// file and why (a stale or wrong response never stops the server, and is
/// never stapled: clients would refuse the connection).
pub(crate) fn with_ocsp(mut key: CertifiedKey, path: Option<&Path>) -> CertifiedKey {
    let Some(path) = path else {
        return key;
    };
    match crate::ocsp::load(path, &key.cert, std::time::SystemTime::now()) {
        Ok((response, checked)) => {
            tracing::info!(
                "OCSP response {} stapled (certificate status {})",
                path.display(),
                checked.status
            );
            if checked.status != "good" {
                tracing::warn!(
                    "OCSP response {} says the certificate is {}",
                    path.display(),
                    checked.status
                );
            }
            key.ocsp = Some(response);
        }
        Err(e) => tracing::warn!("{e}; not stapled"),
    }
    key
}

/// `full` for a ClientHello that offers a TLS 1.3 ticket: a resumed
/// connection needs one ticket to resume again, not `tls.tls13_tickets`
/// (each costs a seal and, stateful, a slot and a Redis write). rustls has
/// one count for both kinds of handshake, so the worker picks this
/// configuration once it has read the hello; should the offered ticket not
/// resume, that full handshake gets one ticket too.
pub(crate) fn for_resumption(full: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut resumed = ServerConfig::clone(full);
    resumed.send_tls13_tickets = full.send_tls13_tickets.min(1);
    resumed.max_tls13_tickets = full.max_tls13_tickets.min(1);
    Arc::new(resumed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a certificate and key of `alg` as PEM files.
    fn write_pair(dir: &Path, alg: &'static rcgen::SignatureAlgorithm) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(alg).expect("key generation");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        let name = format!("{:?}", alg).replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    #[test]
    fn loads_ecdsa_rsa_and_ed25519_pem_pairs() {
        let dir = tempfile::tempdir().expect("temp dir");
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_RSA_SHA256,
            &rcgen::PKCS_ED25519,
        ] {
            let (cert, key) = write_pair(dir.path(), alg);
            load_certified_key(&cert, &key, &provider()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, _) = write_pair(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = write_pair(dir.path(), &rcgen::PKCS_ED25519);
        let msg = load_certified_key(&cert, &other_key, &provider())
            .expect_err("mismatched key")
            .to_string();
        assert!(
            msg.contains(&*cert.to_string_lossy()) && msg.contains(&*other_key.to_string_lossy()),
            "{msg}"
        );
    }

    /// A resolver whose certificates are told apart by pointer: the
    /// default, `api.example.com` and `*.example.com`.
    fn resolver() -> (CertResolver, [Arc<CertifiedKey>; 3]) {
        let p = provider();
        let made = [(); 3].map(|_| Arc::new(self_signed(&p).expect("self-signed")));
        let by_name = HashMap::from([
            ("api.example.com".to_string(), Arc::clone(&made[1])),
            ("*.example.com".to_string(), Arc::clone(&made[2])),
        ]);
        (CertResolver::new(Arc::clone(&made[0]), by_name), made)
    }

    #[test]
    fn an_exact_name_wins_over_a_wildcard_that_also_matches() {
        let (r, [_, exact, _]) = resolver();
        assert!(Arc::ptr_eq(r.for_name(Some("api.example.com")), &exact));
    }

    #[test]
    fn a_wildcard_covers_exactly_one_leftmost_label() {
        let (r, [default, _, wild]) = resolver();
        assert!(Arc::ptr_eq(r.for_name(Some("www.example.com")), &wild));
        assert!(Arc::ptr_eq(r.for_name(Some("a.b.example.com")), &default));
        assert!(Arc::ptr_eq(r.for_name(Some("example.com")), &default));
        assert!(Arc::ptr_eq(r.for_name(Some(".example.com")), &default));
    }

    #[test]
    fn names_match_case_insensitively_and_without_the_root_dot() {
        let (r, [_, exact, wild]) = resolver();
        assert!(Arc::ptr_eq(r.for_name(Some("API.Example.COM")), &exact));
        assert!(Arc::ptr_eq(r.for_name(Some("WWW.EXAMPLE.COM.")), &wild));
    }

    #[test]
    fn no_server_name_gets_the_default() {
        let (r, [default, _, _]) = resolver();
        assert!(Arc::ptr_eq(r.for_name(None), &default));
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let msg = load_certified_key(
            Path::new("/nonexistent/c.pem"),
            Path::new("/k"),
            &provider(),
        )
        .expect_err("missing")
        .to_string();
        assert!(msg.contains("/nonexistent/c.pem"), "{msg}");
    }
}
