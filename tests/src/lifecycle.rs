//! A `tlsfront run` process whose life the test drives ([`Proc`]): signals,
//! its exit status, a `--takeover` successor. Killed on drop.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::wait_until;
use crate::{
    run_command, tail, temp_dir, Captured, CapturesOutput, ReservedPort, RunCommand, TempDir,
    READY_TIMEOUT,
};

/// A running `tlsfront run` like [`crate::Frontend`], with its pid, so that
/// tests can send it signals and see how it exits. Killed on drop.
pub struct Proc {
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    /// Holds the control socket, cache and ticket files.
    pub dir: TempDir,
    _reservation: Option<ReservedPort>,
    captured: Captured,
    status: Option<ExitStatus>,
}

impl CapturesOutput for Proc {
    fn captured(&self) -> &Captured {
        &self.captured
    }
}

impl Proc {
    /// `tlsfront run [-c config] -o k=v...` on a reserved port with its own
    /// control socket, cache and ticket files (unless `opts` sets them);
    /// waits for `tlsfront: ready`.
    pub fn start(config: Option<&Path>, opts: &[(&str, &str)]) -> Proc {
        Self::start_with_env(config, opts, &[])
    }

    /// [`Proc::start`] with these environment variables set for tlsfront.
    pub fn start_with_env(
        config: Option<&Path>,
        opts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Proc {
        Self::launch(&[], config, opts, env).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// [`start`](Self::start) under a wrapper command that ends by exec'ing
    /// its arguments (the tlsfront command line), so that the pid is still
    /// tlsfront's: `setpriv --reuid=…` to start as another user, `unshare
    /// -m … sh -c '…; exec "$0" "$@"'` to start in a mount namespace,
    /// `prlimit --nofile=…` to start with a descriptor limit.
    pub fn start_wrapped(wrapper: &[&str], config: Option<&Path>, opts: &[(&str, &str)]) -> Proc {
        Self::launch(wrapper, config, opts, &[]).unwrap_or_else(|msg| panic!("{msg}"))
    }

    /// [`start_wrapped`](Self::start_wrapped) that returns, instead of
    /// panicking, why tlsfront did not become ready (with its output).
    pub fn try_start_wrapped(
        wrapper: &[&str],
        config: Option<&Path>,
        opts: &[(&str, &str)],
    ) -> Result<Proc, String> {
        Self::launch(wrapper, config, opts, &[])
    }

    fn launch(
        wrapper: &[&str],
        config: Option<&Path>,
        opts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<Proc, String> {
        let dir = temp_dir();
        let RunCommand {
            cmd,
            port,
            socket,
            reservation,
        } = run_command(dir.path(), config, opts);
        let mut cmd = match wrapper.split_first() {
            None => cmd,
            Some((program, args)) => {
                let mut wrapped = Command::new(program);
                wrapped
                    .args(args)
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                wrapped
            }
        };
        cmd.envs(env.iter().copied());
        let cmdline = format!("{cmd:?}");
        let (child, captured, rx) = Captured::spawn(&mut cmd)?;
        let mut p = Proc {
            child,
            port,
            socket,
            dir,
            _reservation: reservation,
            captured,
            status: None,
        };
        if rx.recv_timeout(READY_TIMEOUT).is_ok() {
            return Ok(p);
        }
        let status = p.wait_exit(Duration::from_secs(2));
        thread::sleep(Duration::from_millis(100));
        Err(format!(
            "tlsfront did not become ready; exit status {status:?}\ncommand: {cmdline}\n{}",
            p.output()
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own child, which is not reaped
        // before `status` is set (we never signal after that).
        assert!(self.status.is_none(), "signal to a process that has exited");
        let r = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            r,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits at most `timeout` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// stdout and the last 8000 bytes of stderr, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- tlsfront stdout ---\n{}\n--- tlsfront stderr ---\n{}",
            self.stdout(),
            tail(&self.stderr(), 8000)
        )
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
