//! How a handshake resumed, as the stores saw it. rustls calls the session
//! cache and the ticketer synchronously, on the worker's thread, and says
//! afterwards only *that* it resumed, not how; each store notes what it did
//! in a thread-local slot that the connection reads once rustls returns.
//! A thread-local because rustls's store traits carry no context of the
//! connection being served; one worker thread processes one connection's
//! flight at a time, so the slot is that connection's while it is read.

use std::cell::Cell;

/// What a store saw while rustls processed one flight of a handshake:
/// together with the protocol version it tells how the handshake resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeHint {
    /// The session cache returned a session for a TLS 1.2 session ID.
    CacheGet,
    /// The session cache redeemed a TLS 1.3 single-use ticket.
    CacheTake,
    /// The ticket-key ring opened a ticket.
    TicketOpened,
}

thread_local! {
    static RESUME_HINT: Cell<Option<ResumeHint>> = const { Cell::new(None) };
}

/// Records what a store just did for the handshake being processed on this
/// thread (rustls calls the stores synchronously, on the worker's thread).
pub fn note(hint: ResumeHint) {
    RESUME_HINT.with(|h| h.set(Some(hint)));
}

/// Takes the hint left by the stores, if any.
pub fn take() -> Option<ResumeHint> {
    RESUME_HINT.with(Cell::take)
}
