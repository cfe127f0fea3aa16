//! Where a worker's answers from the Redis thread arrive: a lock-free queue
//! and an eventfd that the worker's io_uring has a read armed on; the
//! eventfd is written only when the worker has not been woken since it last
//! drained the queue.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::SegQueue;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Fetched, RemoteError};

/// One answer for a worker.
#[derive(Debug)]
pub struct Answer {
    /// The worker's token given with the lookup.
    pub token: u64,
    /// What Redis said.
    pub fetched: Fetched,
}

/// Where one worker's answers arrive.
#[derive(Debug)]
pub struct Mailbox {
    answers: SegQueue<Answer>,
    wake: EventFd,
    /// The eventfd was written since the worker last drained: no need to
    /// write it again.
    signalled: AtomicBool,
}

impl Mailbox {
    pub(super) fn new() -> Result<Mailbox, RemoteError> {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| RemoteError::Os {
                what: "eventfd",
                source: e.into(),
            })?;
        Ok(Mailbox {
            answers: SegQueue::new(),
            wake,
            signalled: AtomicBool::new(false),
        })
    }

    /// The eventfd to read (8 bytes) to wait for answers.
    pub fn fd(&self) -> RawFd {
        self.wake.as_fd().as_raw_fd()
    }

    /// Moves every answer that arrived into `out`. Call after the eventfd
    /// read completed (and before arming the next one).
    pub fn drain(&self, out: &mut Vec<Answer>) {
        // Cleared before popping: an answer pushed after the last pop finds
        // the flag clear and writes the eventfd again.
        self.signalled.store(false, Ordering::SeqCst);
        while let Some(a) = self.answers.pop() {
            out.push(a);
        }
    }

    pub(super) fn post(&self, answer: Answer) {
        self.answers.push(answer);
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // EAGAIN only if the counter is at its maximum: readable anyway.
            let _ = self.wake.write(1);
        }
    }
}
