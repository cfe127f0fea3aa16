//! What a worker decides from a ClientHello before rustls sees it.
//!
//! - **Remote lookups.** With `cache.remote`, a TLS 1.2 session ID that the
//!   local cache does not hold is fetched from Redis (`GET`), and a TLS 1.3
//!   stateful ticket is redeemed there (`GETDEL`) — asynchronously: the
//!   connection holds its bytes while every other connection of the worker
//!   goes on. Only the first PSK identity is ever looked up; the others
//!   are counted (`remote_psk_ignored`) and rustls finds nothing for them.
//! - **Fewer tickets.** A hello that offers a TLS 1.3 ticket is handed to
//!   the configuration that issues at most one new ticket
//!   ([`crate::tls::for_resumption`]).
//!
//! Whether TLS 1.3 will be negotiated is read from the hello's
//! `supported_versions` and the versions tlsfront allows, as rustls will
//! decide it; a hello that carries a TLS 1.2 ticket is resumed by the
//! ticket or not at all (rustls then ignores the session ID), so it needs
//! no lookup.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::UnbufferedServerConnection;

use crate::client_hello::HelloInfo;
use crate::config::Tls13Mode;
use crate::live::Live;
use crate::relay::{Decision, HelloGate, Lookup};

/// A worker's [`HelloGate`].
pub struct WorkerGate {
    live: Arc<Live>,
    worker: usize,
}

impl WorkerGate {
    /// The gate of worker `worker`, or `None` when it would never change
    /// anything (no remote tier, at most one TLS 1.3 ticket a handshake):
    /// then rustls gets the first bytes at once.
    pub fn new(live: &Arc<Live>, worker: usize) -> Option<Arc<WorkerGate>> {
        let config = live.config();
        let remote = live.cache().is_some_and(|c| c.remote().is_some());
        let fewer_tickets = config.protocols.tls13 && config.tls13_tickets > 1;
        (remote || fewer_tickets).then(|| {
            Arc::new(WorkerGate {
                live: Arc::clone(live),
                worker,
            })
        })
    }
}

impl HelloGate for WorkerGate {
    fn decide(&self, hello: &HelloInfo) -> Decision {
        let config = self.live.config();
        let mut decision = Decision::default();
        let tls13 = hello.offers_tls13 && config.protocols.tls13;
        let remote = self.live.cache().and_then(|c| c.remote().map(|r| (c, r)));
        let budget = remote.map_or(Duration::ZERO, |(_, r)| r.budget());
        if tls13 {
            let Some(identity) = &hello.first_psk_identity else {
                return decision;
            };
            if config.tls13_tickets > 1 {
                decision.tls = UnbufferedServerConnection::new(self.live.tls_resumed()).ok();
            }
            if let (Some((_, r)), Tls13Mode::Stateful) = (remote, config.tls13_mode) {
                if hello.psk_identities > 1 {
                    r.note_ignored_identities(self.worker, hello.psk_identities - 1);
                }
                decision.lookup = Some(Lookup {
                    key: identity.clone(),
                    take: true,
                    budget,
                });
            }
            return decision;
        }
        let Some((cache, _)) = remote else {
            return decision;
        };
        let Some(id) = &hello.session_id else {
            return decision;
        };
        // rustls never looks at the session ID of a hello that carries a
        // TLS 1.2 ticket, whether the ticket opens or not.
        let ticket_first = hello.ticket12.is_some();
        if config.protocols.tls12 && !ticket_first && !cache.contains(id) {
            decision.lookup = Some(Lookup {
                key: id.clone(),
                take: false,
                budget,
            });
        }
        decision
    }
}
