//! The remote tier's answers on a worker: the read of its mailbox's eventfd
//! and each answer handed to the connection that waits for it.

use std::io;
use std::time::Instant;

use tracing::warn;

use super::op_tag::{tag, untag, Op};
use super::Worker;
use crate::session_cache::remote::Fetched;
use crate::uring::{Buf, Completion, UringError};

impl Worker {
    /// Arms the read of the remote tier's eventfd (if there is one), with
    /// the 8-byte buffer of the previous read if it came back.
    pub(super) fn arm_answers(&mut self, buf: Option<Buf>) -> Result<(), UringError> {
        let Some(remote) = self.live.cache().and_then(|c| c.remote()) else {
            return Ok(());
        };
        let fd = remote.mailbox(self.index).fd();
        let buf = buf.unwrap_or_else(|| self.pool.take());
        self.driver.read(fd, buf, 8, tag(0, 0, Op::Answers))
    }

    /// The remote tier answered: each answer goes to its connection.
    pub(super) fn answered(&mut self, now: Instant, c: Completion) -> Result<(), UringError> {
        let Some(cache) = self.live.cache().cloned() else {
            return Ok(());
        };
        let Some(remote) = cache.remote() else {
            return Ok(());
        };
        if c.result < 0 && c.result != -libc::EAGAIN && c.result != -libc::EINTR {
            // An eventfd read does not fail; if it did, lookups would still
            // end at their budget.
            warn!(
                worker = self.index,
                "reading the remote tier's eventfd: {}",
                io::Error::from_raw_os_error(-c.result)
            );
        }
        let mut buf = c.buf;
        if let Some(b) = buf.as_mut() {
            b.consume(b.len());
        }
        let mut answers = std::mem::take(&mut self.answers);
        remote.mailbox(self.index).drain(&mut answers);
        for answer in answers.drain(..) {
            let (slot, generation) = untag(answer.token);
            let Worker { slots, pool, .. } = self;
            let Some(conn) = slots
                .get_mut(slot as usize)
                .filter(|s| s.generation & 0x00ff_ffff == generation)
                .and_then(|s| s.conn.as_mut())
                .filter(|c| !c.closing)
            else {
                continue;
            };
            let Some(lookup) = conn.machine.lookup() else {
                // Its budget ran out first.
                continue;
            };
            let redeemed = match answer.fetched {
                Fetched::Hit { session, .. } if lookup.take => Some(session),
                Fetched::Hit { expiry, session } => {
                    // Where rustls's `get` will find it, and the next
                    // connection of this session on this box too.
                    cache.put_local_until(&lookup.key, &session, expiry);
                    None
                }
                Fetched::Miss | Fetched::Unavailable => None,
            };
            conn.machine.lookup_done(now, redeemed, pool);
            self.touch(slot);
        }
        self.answers = answers;
        self.arm_answers(buf)
    }
}
