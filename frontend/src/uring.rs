//! The io_uring driver of one worker: the ring, the provided receive
//! buffers, and the operations the worker loop needs (multishot accept,
//! receive into a provided buffer, send, connect, shutdown, cancel, close).
//!
//! This is one of the three places `unsafe` is allowed (with the shared
//! memory module and the eBPF ABI): the kernel reads and writes memory we
//! point it at, long after the call that submitted the request returned.
//! The API offered to the worker is safe: every buffer or address an
//! operation points at is owned by the driver until the kernel has
//! answered ([`Inflight`]), and receive buffers are lent out only between
//! the completion that filled them and their return ([`RxBuffers`]).
//!
//! The ring is set up for one thread (`SINGLE_ISSUER`) with completions run
//! only when the thread enters the kernel (`DEFER_TASKRUN`), so one
//! `io_uring_enter` both submits every request a loop turn produced and
//! collects the completions that are ready: the loop costs one system call
//! per turn, however many connections the turn served.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// What the driver could not do.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // The fields are what the #[error] message names.
pub enum UringError {
    /// Creating the ring failed (an old kernel, or io_uring disabled by
    /// `kernel.io_uring_disabled`).
    #[error("cannot create an io_uring of {entries} entries: {source}")]
    Setup { entries: u32, source: io::Error },
    /// Registering the provided-buffer ring failed.
    #[error("cannot register {count} receive buffers of {size} bytes with io_uring: {source}")]
    BufRing {
        count: u16,
        size: usize,
        source: io::Error,
    },
    /// `io_uring_enter` failed.
    #[error("io_uring_enter: {0}")]
    Enter(io::Error),
}

/// The buffer group id of the worker's receive buffers (one group per ring).
const RX_GROUP: u16 = 0;

/// How the ring was set up (for the start-up summary and the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run at enter only.
    DeferTaskrun,
    /// `COOP_TASKRUN`: completions run at the next transition to the kernel.
    CoopTaskrun,
    /// No flags (oldest kernels).
    Plain,
}

impl RingMode {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            RingMode::DeferTaskrun => "single-issuer, defer-taskrun",
            RingMode::CoopTaskrun => "coop-taskrun",
            RingMode::Plain => "plain",
        }
    }
}

/// A send buffer: bytes `sent..filled` are still to be sent. The vector is
/// always fully initialised (`len() == capacity` once grown), so encrypting
/// into it needs no zeroing per use; [`BufPool`] recycles it.
#[derive(Debug, Default)]
pub struct Buf {
    bytes: Vec<u8>,
    filled: usize,
    sent: usize,
}

impl Buf {
    /// Bytes still to send.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.sent..self.filled]
    }

    /// Number of bytes still to send.
    pub fn len(&self) -> usize {
        self.filled - self.sent
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.filled == self.sent
    }

    /// `n` more bytes were sent.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.filled);
    }

    /// Appends `data`.
    pub fn extend(&mut self, data: &[u8]) {
        let room = self.spare(data.len());
        room[..data.len()].copy_from_slice(data);
        self.filled += data.len();
    }

    /// At least `at_least` writable bytes after the filled part; grow with
    /// zeros only when the buffer never had that much room.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.sent == self.filled {
            self.sent = 0;
            self.filled = 0;
        }
        let need = self.filled + at_least;
        if self.bytes.len() < need {
            let grown = need.max(self.bytes.len() * 2).max(4096);
            self.bytes.resize(grown, 0);
        }
        &mut self.bytes[self.filled..]
    }

    /// The caller wrote `n` bytes into [`Buf::spare`].
    pub fn commit(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.bytes.len());
    }

    /// The filled bytes, mutable (TLS records decrypt in place).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.sent..self.filled]
    }

    /// Drops the first `n` pending bytes, keeping the rest.
    pub fn consume(&mut self, n: usize) {
        self.advance(n);
        if self.sent == self.filled {
            self.sent = 0;
            self.filled = 0;
        }
    }
}

/// Free send buffers of one worker, so that a buffer is taken when data
/// arrives and given back when it has been sent, without an allocation per
/// record. Bounded: beyond `keep` free buffers, returned ones are freed.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Buf>,
    keep: usize,
    /// Buffers handed out and not returned.
    pub outstanding: usize,
}

impl BufPool {
    /// A pool that keeps at most `keep` free buffers.
    pub fn new(keep: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            keep,
            outstanding: 0,
        }
    }

    /// An empty buffer.
    pub fn take(&mut self) -> Buf {
        self.outstanding += 1;
        self.free.pop().unwrap_or_default()
    }

    /// Gives a buffer back.
    pub fn give(&mut self, mut buf: Buf) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.free.len() < self.keep && buf.bytes.capacity() <= 1 << 20 {
            buf.sent = 0;
            buf.filled = 0;
            self.free.push(buf);
        }
    }
}

/// A receive buffer the kernel filled: `len` bytes of buffer `bid`. Lent to
/// the worker until [`RxBuffers::recycle`] hands it back to the kernel.
#[derive(Debug)]
pub struct RxBuf {
    bid: u16,
    len: usize,
}

/// The provided-buffer ring: `count` buffers of `size` bytes the kernel
/// picks from when a receive completes, so a connection that waits for data
/// holds no buffer at all.
pub struct RxBuffers {
    /// The ring of buffer descriptors shared with the kernel (page aligned).
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    /// The buffers themselves, `count * size` bytes.
    memory: *mut u8,
    memory_len: usize,
    size: usize,
    count: u16,
    tail: u16,
    /// Buffers currently lent to the worker.
    lent: u16,
}

impl RxBuffers {
    fn new(count: u16, size: usize) -> io::Result<RxBuffers> {
        if !count.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer count must be a power of two and the size non-zero",
            ));
        }
        let ring_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let memory_len = usize::from(count) * size;
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use and unmapped in Drop with the same
        // length.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; the buffers' pages are touched only by the
        // kernel (when a receive completes) and by us while lent.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                memory_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: `ring` was mapped above with `ring_len` bytes.
            unsafe { libc::munmap(ring, ring_len) };
            return Err(e);
        }
        Ok(RxBuffers {
            ring: ring.cast(),
            ring_len,
            memory: memory.cast(),
            memory_len,
            size,
            count,
            tail: 0,
            lent: 0,
        })
    }

    /// Puts buffer `bid` at the ring's tail (not yet visible to the kernel;
    /// [`RxBuffers::publish`] makes it so).
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index < count`, so the entry lies within the ring
        // mapping; the kernel reads entries only between its head and the
        // published tail, and this entry is past the published tail, so we
        // are its only accessor until `publish`.
        let entry = unsafe { &mut *self.ring.add(index) };
        // SAFETY: `bid < count`, so the buffer lies within `memory`.
        let addr = unsafe { self.memory.add(usize::from(bid) * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the ring's tail is a u16 inside the first entry, which the
        // kernel reads with acquire semantics; the mapping is page aligned,
        // so the u16 is aligned, and it lives as long as `self`.
        let tail = unsafe { types::BufRingEntry::tail(self.ring) } as *const AtomicU16;
        // SAFETY: see above; AtomicU16 has the layout of u16.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// The bytes the kernel put in a lent buffer, writable (TLS records are
    /// decrypted in place).
    pub fn bytes(&mut self, buf: &RxBuf) -> &mut [u8] {
        let len = buf.len.min(self.size);
        // SAFETY: `buf` came from a completion of this ring, so `bid <
        // count` and the kernel wrote `len <= size` bytes into it and no
        // longer touches it: it left the ring when it was picked and comes
        // back only through `recycle`, which consumes the `RxBuf`. `&mut
        // self` ensures no other slice of our buffers is alive.
        unsafe {
            std::slice::from_raw_parts_mut(self.memory.add(usize::from(buf.bid) * self.size), len)
        }
    }

    /// Returns a lent buffer to the kernel.
    pub fn recycle(&mut self, buf: RxBuf) {
        self.push(buf.bid);
        self.lent = self.lent.saturating_sub(1);
        self.publish();
    }
}

impl Drop for RxBuffers {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in `new` with these lengths; the
        // ring (and with it the kernel's use of them) is gone: `Driver`
        // drops its `IoUring` before its `RxBuffers`.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.memory.cast(), self.memory_len);
        }
    }
}

/// What an operation owns while the kernel works on it.
#[derive(Debug, Default)]
struct Inflight {
    /// The worker's tag for this operation, returned with its completion.
    tag: u64,
    /// The bytes a send reads.
    buf: Option<Buf>,
    /// The address a connect reads.
    addr: Option<Box<socket2::SockAddr>>,
    /// Whether this slot is in use.
    busy: bool,
}

/// One completed operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given when the operation was pushed.
    pub tag: u64,
    /// The result: a byte count or descriptor, or `-errno`.
    pub result: i32,
    /// More completions will follow for this operation (multishot).
    pub more: bool,
    /// A send's buffer, handed back.
    pub buf: Option<Buf>,
    /// A receive's data.
    pub rx: Option<RxBuf>,
}

/// Counters of the loop itself (checked against `perf stat` in the
/// benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopCounters {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Requests submitted.
    pub requests: u64,
}

/// One worker's ring with its buffers.
pub struct Driver {
    // Field order matters: the ring is dropped (closing the kernel's view of
    // every buffer) before the buffers are unmapped.
    ring: IoUring,
    /// The receive buffers.
    pub rx: RxBuffers,
    inflight: Vec<Inflight>,
    free_slots: Vec<u32>,
    queued: u32,
    mode: RingMode,
    /// Enters and requests so far.
    pub counters: LoopCounters,
}

/// Sets one ring mode's flags on a builder, with the completion queue size.
type RingSetUp = fn(&mut io_uring::Builder, u32);

/// Bytes reserved in the tag for the operation slot (`Inflight` index is
/// separate; tags are the worker's own).
impl Driver {
    /// A ring of `entries` submission entries and `rx_count` receive buffers
    /// of `rx_size` bytes.
    pub fn new(entries: u32, rx_count: u16, rx_size: usize) -> Result<Driver, UringError> {
        let cq = entries.saturating_mul(4);
        let attempts: [(RingMode, RingSetUp); 3] = [
            (RingMode::DeferTaskrun, |b, cq| {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_submit_all()
                    .setup_cqsize(cq);
            }),
            (RingMode::CoopTaskrun, |b, cq| {
                b.setup_coop_taskrun().setup_submit_all().setup_cqsize(cq);
            }),
            (RingMode::Plain, |b, cq| {
                b.setup_cqsize(cq);
            }),
        ];
        let mut last = None;
        let mut built = None;
        for (mode, configure) in attempts {
            let mut builder = IoUring::builder();
            configure(&mut builder, cq);
            match builder.build(entries) {
                Ok(ring) => {
                    built = Some((ring, mode));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let (ring, mode) = built.ok_or_else(|| UringError::Setup {
            entries,
            source: last.unwrap_or_else(|| io::Error::other("no ring")),
        })?;
        let bufring_err = |source| UringError::BufRing {
            count: rx_count,
            size: rx_size,
            source,
        };
        let mut rx = RxBuffers::new(rx_count, rx_size).map_err(bufring_err)?;
        // SAFETY: the ring of `rx_count` entries is page aligned, lives in
        // `rx`, and `rx` outlives the registration: it is dropped after the
        // ring (field order of `Driver`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(rx.ring as u64, rx_count, RX_GROUP, 0)
        }
        .map_err(bufring_err)?;
        for bid in 0..rx_count {
            rx.push(bid);
        }
        rx.publish();
        Ok(Driver {
            ring,
            rx,
            inflight: Vec::new(),
            free_slots: Vec::new(),
            queued: 0,
            mode,
            counters: LoopCounters::default(),
        })
    }

    /// How the ring was set up.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    fn slot(&mut self, tag: u64) -> u32 {
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.inflight.push(Inflight::default());
                (self.inflight.len() - 1) as u32
            }
        };
        let slot = &mut self.inflight[index as usize];
        slot.tag = tag;
        slot.busy = true;
        index
    }

    /// Queues one entry, submitting what is queued when the submission
    /// queue is full.
    fn push_entry(&mut self, entry: squeue::Entry) -> Result<(), UringError> {
        loop {
            // SAFETY: every pointer in `entry` points at memory owned by an
            // `Inflight` slot (kept until the completion) or at the
            // provided buffers (kept until the ring is dropped), or at
            // nothing.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.queued += 1;
                return Ok(());
            }
            self.submit(0, None)?;
        }
    }

    /// Multishot accept on listener `fd`: one completion per connection.
    pub fn accept_multi(&mut self, fd: RawFd, tag: u64) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// One receive into a provided buffer (none is held while waiting).
    pub fn recv(&mut self, fd: RawFd, tag: u64) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0)
            .buf_group(RX_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Sends the pending bytes of `buf`; the buffer comes back with the
    /// completion.
    pub fn send(&mut self, fd: RawFd, buf: Buf, tag: u64) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let inflight = &mut self.inflight[slot as usize];
        let pending = buf.pending();
        let (ptr, len) = (
            pending.as_ptr(),
            pending.len().min(u32::MAX as usize) as u32,
        );
        // The Vec's heap block does not move when the Buf moves into the
        // slot, so `ptr` stays valid until the completion returns it.
        inflight.buf = Some(buf);
        let entry = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Reads up to `len` bytes from `fd` (an eventfd) into the spare room of
    /// `buf`, which comes back with the completion (the count is not yet
    /// committed to it).
    pub fn read(
        &mut self,
        fd: RawFd,
        mut buf: Buf,
        len: usize,
        tag: u64,
    ) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let spare = buf.spare(len);
        let (ptr, len) = (
            spare.as_mut_ptr(),
            spare.len().min(len).min(u32::MAX as usize) as u32,
        );
        // As for a send: the heap block stays put while the Buf sits in the
        // slot, until the completion hands it back.
        self.inflight[slot as usize].buf = Some(buf);
        let entry = opcode::Read::new(types::Fd(fd), ptr, len)
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Connects `fd` to `addr`.
    pub fn connect(
        &mut self,
        fd: RawFd,
        addr: socket2::SockAddr,
        tag: u64,
    ) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let addr = Box::new(addr);
        let (ptr, len) = (addr.as_ptr(), addr.len());
        // The boxed address does not move; it is kept until the completion.
        self.inflight[slot as usize].addr = Some(addr);
        let entry = opcode::Connect::new(types::Fd(fd), ptr.cast(), len)
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Cancels every operation still pending on `fd`: they complete at once
    /// with `-ECANCELED`.
    pub fn cancel(&mut self, fd: RawFd, tag: u64) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Closes `fd`, which has no operation pending.
    pub fn close(&mut self, fd: RawFd, tag: u64) -> Result<(), UringError> {
        let slot = self.slot(tag);
        let entry = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(u64::from(slot));
        self.push_entry(entry)
    }

    /// Submits what is queued and waits for at least `want` completions or
    /// until `timeout` passes, in one `io_uring_enter`.
    pub fn submit(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), UringError> {
        let submitter = self.ring.submitter();
        let result = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        self.counters.enters += 1;
        self.counters.requests += u64::from(self.queued);
        self.queued = 0;
        match result {
            Ok(_) => Ok(()),
            // The timeout passed, or a signal came: not an error.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(()),
            // Completions are waiting to be reaped: reap them first.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(UringError::Enter(e)),
        }
    }

    /// Moves every ready completion into `out`.
    pub fn complete(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let index = cqe.user_data() as usize;
            let flags = cqe.flags();
            let more = cqueue::more(flags);
            let rx = cqueue::buffer_select(flags).map(|bid| {
                self.rx.lent += 1;
                RxBuf {
                    bid,
                    len: usize::try_from(cqe.result()).unwrap_or(0),
                }
            });
            let Some(slot) = self.inflight.get_mut(index) else {
                // Not ours (cannot happen); give a picked buffer back.
                if let Some(rx) = rx {
                    self.rx.recycle(rx);
                }
                continue;
            };
            out.push(Completion {
                tag: slot.tag,
                result: cqe.result(),
                more,
                buf: slot.buf.take(),
                rx,
            });
            if !more {
                slot.addr = None;
                slot.busy = false;
                self.free_slots.push(index as u32);
            }
        }
    }
}
