//! rustls client session stores that control which session a client offers:
//! the first one it got ([`FirstSessionStore`]), or session IDs only.

/// A TLS 1.2 client session store that keeps the first session it is given
/// and offers it on every connection, like `openssl s_client -sess_in` of
/// one saved file (a server that does not resume it is not allowed to
/// replace it).
#[derive(Debug)]
pub struct FirstSessionStore {
    inner: rustls::client::ClientSessionMemoryCache,
    first: std::sync::Mutex<Option<rustls::client::Tls12ClientSessionValue>>,
}

impl Default for FirstSessionStore {
    fn default() -> Self {
        FirstSessionStore::new()
    }
}

impl FirstSessionStore {
    pub fn new() -> FirstSessionStore {
        FirstSessionStore {
            inner: rustls::client::ClientSessionMemoryCache::new(8),
            first: std::sync::Mutex::new(None),
        }
    }
}

impl rustls::client::ClientSessionStore for FirstSessionStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        _name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.first.lock().unwrap().get_or_insert(value);
    }
    fn tls12_session(
        &self,
        _name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.first.lock().unwrap().clone()
    }
    fn remove_tls12_session(&self, _name: &rustls::pki_types::ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A TLS 1.2 client config that offers its first session's ID (no
/// tickets) on every connection ([`FirstSessionStore`]).
pub fn first_session_client_config(
    spec: &crate::ClientSpec,
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut cfg = (*crate::client_config(spec)).clone();
    cfg.resumption =
        rustls::client::Resumption::store(std::sync::Arc::new(FirstSessionStore::new()))
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    std::sync::Arc::new(cfg)
}

/// A TLS 1.2 client config that offers only session IDs (no tickets),
/// trusts any certificate, and remembers the sessions it is given: what a
/// session-ID-resumption test across hosts needs.
pub fn session_id_client() -> std::sync::Arc<rustls::ClientConfig> {
    let spec = crate::ClientSpec::new(crate::Trust::AnyCert).versions(crate::Versions::Tls12);
    let mut cfg = (*crate::client_config(&spec)).clone();
    cfg.resumption = rustls::client::Resumption::store(std::sync::Arc::new(
        rustls::client::ClientSessionMemoryCache::new(4),
    ))
    .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    std::sync::Arc::new(cfg)
}
