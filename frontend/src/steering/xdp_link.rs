//! The XDP attachment: a bpf_link held in a file descriptor of our own, so
//! that it can be handed over.
//!
//! A `--takeover` successor asks the running process for its link over the
//! control socket (command `xdp-link IFNAME`); the answer carries the link's
//! descriptor (SCM_RIGHTS). The successor swaps its own program in with
//! BPF_LINK_UPDATE, which is atomic: the interface never runs without a
//! program, and the link, referenced by both descriptors, stays attached
//! when the old process exits. Each process's descriptor is closed when it
//! exits (also by SIGKILL), so the link leaves with the last process that
//! holds it, as before.
//!
//! aya (0.14) keeps its link descriptors private, hence the two bpf(2)
//! commands here; their layouts are those of `union bpf_attr` in
//! `include/uapi/linux/bpf.h`.

use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::TakeoverError;

/// `enum bpf_cmd`: BPF_LINK_CREATE, BPF_LINK_UPDATE.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE` (`uapi/linux/if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The control socket command a successor sends.
pub const COMMAND: &str = "xdp-link";

/// `bpf_attr.link_create` for an XDP link, padded with zeros (the kernel
/// requires unused attribute bytes to be zero).
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

/// `bpf_attr.link_update`.
#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
    _rest: [u64; 6],
}

/// Calls bpf(2) with `attr`; the non-negative result or the error.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` value of
    // `size_of::<T>()` bytes (one of the `bpf_attr` layouts above); the
    // kernel only reads that many bytes from it during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are non-negative.
    fd.as_raw_fd() as u32
}

/// An XDP bpf_link this process holds.
pub struct XdpLink {
    /// `None` once detached (the descriptor closed).
    fd: Mutex<Option<OwnedFd>>,
    interface: String,
    native: bool,
    /// Pid of a successor the link was handed to (0: none).
    handed_to: AtomicU32,
}

impl XdpLink {
    /// Attaches `program` to `interface` in native (driver) or generic mode
    /// as a new bpf_link.
    pub fn attach(program: BorrowedFd<'_>, interface: &str, native: bool) -> io::Result<XdpLink> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {interface}: {e}"),
            )
        })?;
        let attr = LinkCreate {
            prog_fd: raw(program),
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: if native {
                XDP_FLAGS_DRV_MODE
            } else {
                XDP_FLAGS_SKB_MODE
            },
            _rest: [0; 6],
        };
        let fd = bpf(BPF_LINK_CREATE, &attr)?;
        // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing
        // else in this process owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(XdpLink::new(fd, interface, native))
    }

    fn new(fd: OwnedFd, interface: &str, native: bool) -> XdpLink {
        XdpLink {
            fd: Mutex::new(Some(fd)),
            interface: interface.to_string(),
            native,
            handed_to: AtomicU32::new(0),
        }
    }

    /// The interface it is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Attached in native (driver) mode; else generic.
    pub fn native(&self) -> bool {
        self.native
    }

    /// The successor it was handed to, if any.
    pub fn handed_to(&self) -> Option<u32> {
        match self.handed_to.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Closes this process's descriptor: the program leaves the interface
    /// unless a successor holds the link too. `false` if already closed.
    pub fn detach(&self) -> bool {
        self.fd
            .lock()
            .map(|mut fd| fd.take().is_some())
            .unwrap_or(false)
    }

    /// Answers `xdp-link IFNAME` from `successor` (its pid) on `stream`:
    /// `ok IFNAME native|generic PID` with the link's descriptor attached.
    pub fn hand_over(&self, stream: &UnixStream, args: &str) -> io::Result<()> {
        let mut args = args.split_whitespace();
        let (wanted, successor) = (args.next().unwrap_or(""), args.next().unwrap_or(""));
        let refuse = |stream: &UnixStream, why: String| {
            let mut s = stream;
            s.write_all(format!("error: {why}").as_bytes())
        };
        if wanted != self.interface {
            return refuse(
                stream,
                format!("the XDP link here is on {}, not {wanted:?}", self.interface),
            );
        }
        let guard = self
            .fd
            .lock()
            .map_err(|_| io::Error::other("XDP link lock poisoned"))?;
        let Some(fd) = guard.as_ref() else {
            return refuse(stream, "the XDP link here is detached".to_string());
        };
        let line = format!(
            "ok {} {} {}",
            self.interface,
            if self.native { "native" } else { "generic" },
            std::process::id()
        );
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(line.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        if let Ok(pid) = successor.parse::<u32>() {
            self.handed_to.store(pid, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Asks the process answering on the control socket `socket` for its
    /// XDP link on `interface` and swaps `program` in (BPF_LINK_UPDATE).
    /// Returns the link, now this process's too, and the pid it came from.
    pub fn take_over(
        socket: &Path,
        interface: &str,
        program: BorrowedFd<'_>,
    ) -> Result<(XdpLink, u32), TakeoverError> {
        let what = |source: io::Error| TakeoverError::Socket {
            path: socket.to_path_buf(),
            source,
        };
        let mut stream = UnixStream::connect(socket).map_err(what)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(what)?;
        stream
            .write_all(format!("{COMMAND} {interface} {}\n", std::process::id()).as_bytes())
            .map_err(what)?;
        let mut text = [0u8; 256];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (len, received) = {
            let mut iov = [IoSliceMut::new(&mut text)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| what(e.into()))?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(|e| what(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    received.extend(fds);
                }
            }
            (msg.bytes, received)
        };
        // SAFETY: descriptors received with SCM_RIGHTS are new in this
        // process and owned by nobody else; each is wrapped exactly once.
        let received: Vec<OwnedFd> = received
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let mut line = String::from_utf8_lossy(&text[..len]).into_owned();
        if received.is_empty() {
            // A refusal (or an older tlsfront): read the rest of the text.
            let _ = stream.read_to_string(&mut line);
            let line = line.trim();
            let words = line.strip_prefix("error: ").unwrap_or(line);
            return Err(TakeoverError::Refused(words.to_string()));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (native, pid) = match fields[..] {
            ["ok", got, mode, pid] if got == interface => (
                mode == "native",
                pid.parse::<u32>()
                    .map_err(|_| TakeoverError::BadAnswer(line.clone()))?,
            ),
            _ => return Err(TakeoverError::BadAnswer(line)),
        };
        let fd = received.into_iter().next().expect("checked non-empty");
        let attr = LinkUpdate {
            link_fd: raw(fd.as_fd()),
            new_prog_fd: raw(program),
            flags: 0,
            old_prog_fd: 0,
            _rest: [0; 6],
        };
        bpf(BPF_LINK_UPDATE, &attr).map_err(|source| TakeoverError::Update {
            pid,
            interface: interface.to_string(),
            source,
        })?;
        Ok((XdpLink::new(fd, interface, native), pid))
    }
}
