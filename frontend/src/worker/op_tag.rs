//! The tag of every io_uring operation of a worker: which connection slot,
//! which generation of it (a completion that arrives after the slot was
//! reused is told apart as stale) and which operation, in 64 bits.

/// What an operation's completion is for (the low byte of its tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Accept = 1,
    ClientRecv = 2,
    ClientSend = 3,
    UpstreamRecv = 4,
    UpstreamSend = 5,
    Connect = 6,
    /// Cancellations and closes: nothing to do when they complete.
    Housekeeping = 7,
    /// The read of the remote tier's eventfd: answers are in the mailbox.
    Answers = 9,
    /// Not an io_uring operation: the token of a remote lookup.
    Lookup = 10,
    /// The upstream connect of an odd-numbered attempt (a retry after
    /// an even one timed out: its cancelled completion must not be taken
    /// for this one's).
    ConnectRetry = 11,
}

impl Op {
    pub(super) fn from_tag(tag: u64) -> Option<Op> {
        Some(match tag & 0xff {
            1 => Op::Accept,
            2 => Op::ClientRecv,
            3 => Op::ClientSend,
            4 => Op::UpstreamRecv,
            5 => Op::UpstreamSend,
            6 => Op::Connect,
            7 => Op::Housekeeping,
            9 => Op::Answers,
            10 => Op::Lookup,
            11 => Op::ConnectRetry,
            _ => return None,
        })
    }
}

/// A tag: connection slot, the slot's generation (so that completions
/// arriving after the slot was reused are recognised as stale) and the
/// operation.
pub(super) fn tag(slot: u32, generation: u32, op: Op) -> u64 {
    (u64::from(slot) << 32) | (u64::from(generation & 0x00ff_ffff) << 8) | op as u64
}

pub(super) fn untag(tag: u64) -> (u32, u32) {
    ((tag >> 32) as u32, ((tag >> 8) & 0x00ff_ffff) as u32)
}
