//! A single-use TLS 1.3 ticket that Redis gave up (`GETDEL`) for the
//! handshake about to be processed on this thread.
//!
//! The worker fetched it before rustls saw the ClientHello; rustls asks for
//! it synchronously, from inside the store's `take`, on the same thread and
//! within [`with`]. Nothing else can redeem it: it exists only here, and
//! only for that call.

use std::cell::RefCell;

thread_local! {
    static FETCHED: RefCell<Option<(Vec<u8>, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Runs `f` (which drives rustls over the ClientHello) with `session`
/// redeemable once under `key`; whatever rustls did not take is dropped.
pub fn with<R>(key: Vec<u8>, session: Vec<u8>, f: impl FnOnce() -> R) -> R {
    FETCHED.with(|slot| *slot.borrow_mut() = Some((key, session)));
    let result = f();
    FETCHED.with(|slot| slot.borrow_mut().take());
    result
}

/// The session fetched for `key`, once.
pub(super) fn take(key: &[u8]) -> Option<Vec<u8>> {
    FETCHED.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_ref() {
            Some((k, _)) if k == key => slot.take().map(|(_, session)| session),
            _ => None,
        }
    })
}
