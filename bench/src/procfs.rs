//! What `/proc` says about the server under test: CPU time, anonymous
//! memory and how often its threads woke up.
//!
//! `tlsload` measures servers from the outside, the same way for every one
//! of them (tlsfront, nginx, HAProxy, hitch), so nothing here depends on a
//! server's own counters. Every figure is a sum over the processes given
//! (a master and its workers), and for the per-thread figures over every
//! thread of each process.

use std::fs;

use anyhow::{anyhow, Context, Result};

/// Ticks per second of the times in `/proc/PID/stat`: `USER_HZ`, which is
/// 100 on every Linux architecture's user ABI (it is not `CONFIG_HZ`).
const USER_HZ: f64 = 100.0;

/// utime + stime of process `pid` (all its threads, dead ones included), in
/// seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces or ')': the
    // fields that follow start after the last ')'.
    let close = stat
        .rfind(')')
        .ok_or_else(|| anyhow!("{path}: no ')' after the command name"))?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let field = |i: usize, name: &str| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("{path}: no {name} field"))?
            .parse()
            .with_context(|| format!("{path}: {name} is not a number"))
    };
    Ok((field(11, "utime")? + field(12, "stime")?) as f64 / USER_HZ)
}

/// [`cpu_seconds`] summed over `pids`.
pub fn total_cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// One `Name:  value ...` line of a `/proc/.../status` file, as a number.
fn status_field(text: &str, name: &str, path: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .ok_or_else(|| anyhow!("{path}: no {name} line"))?;
    let value = line[name.len() + 1..]
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("{path}: {name} has no value"))?;
    value
        .parse()
        .with_context(|| format!("{path}: {name} {value:?} is not a number"))
}

/// `RssAnon` of process `pid` in bytes: its private anonymous memory (heap,
/// stacks, anonymous mappings) that is resident. Shared session caches
/// (nginx's and HAProxy's shared memory zones, tlsfront's file on
/// /dev/shm) are `RssShmem` or `RssFile` and are not in it, so what grows
/// with connections is what the connections hold.
pub fn rss_anon_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(status_field(&text, "RssAnon", &path)? * 1024)
}

/// [`rss_anon_bytes`] summed over `pids`.
pub fn total_rss_anon_bytes(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| rss_anon_bytes(p)).sum()
}

/// How often the threads of some processes were scheduled, summed over all
/// their threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakeups {
    /// `voluntary_ctxt_switches`: the thread blocked (waited for I/O, a
    /// timer, a lock) and had to be woken up again.
    pub voluntary: u64,
    /// `nonvoluntary_ctxt_switches`: the thread was preempted.
    pub nonvoluntary: u64,
    /// Third field of `/proc/PID/task/TID/schedstat`: timeslices run on a
    /// CPU; 0 when the kernel has no schedstats.
    pub timeslices: u64,
}

impl Wakeups {
    /// The growth from `earlier` to `self` (counters only grow while the
    /// threads live; a thread that exited in between makes this too low,
    /// never negative).
    pub fn since(self, earlier: Wakeups) -> Wakeups {
        Wakeups {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            nonvoluntary: self.nonvoluntary.saturating_sub(earlier.nonvoluntary),
            timeslices: self.timeslices.saturating_sub(earlier.timeslices),
        }
    }
}

/// [`Wakeups`] of every thread of every process in `pids`.
pub fn wakeups(pids: &[u32]) -> Result<Wakeups> {
    let mut sum = Wakeups::default();
    for &pid in pids {
        let dir = format!("/proc/{pid}/task");
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            let entry = entry.with_context(|| format!("listing {dir}"))?;
            let task = entry.path();
            let status_path = task.join("status");
            let status = match fs::read_to_string(&status_path) {
                Ok(s) => s,
                // The thread exited after the directory was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", status_path.display()))
                }
            };
            let shown = status_path.display().to_string();
            sum.voluntary += status_field(&status, "voluntary_ctxt_switches", &shown)?;
            sum.nonvoluntary += status_field(&status, "nonvoluntary_ctxt_switches", &shown)?;
            // schedstat is "run_ns wait_ns timeslices"; absent without
            // CONFIG_SCHED_INFO, which only costs this one figure.
            if let Ok(s) = fs::read_to_string(task.join("schedstat")) {
                if let Some(Ok(n)) = s.split_whitespace().nth(2).map(str::parse::<u64>) {
                    sum.timeslices += n;
                }
            }
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).expect("cpu") >= 0.0);
        // A test binary has a heap: some anonymous memory is resident.
        assert!(rss_anon_bytes(me).expect("rss") > 0);
        let before = wakeups(&[me]).expect("wakeups");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = wakeups(&[me]).expect("wakeups");
        // Sleeping is a voluntary switch of this thread.
        assert!(after.since(before).voluntary >= 1, "{before:?} {after:?}");
    }

    #[test]
    fn a_missing_process_is_an_error_that_names_it() {
        let e = rss_anon_bytes(u32::MAX).expect_err("no such pid");
        assert!(
            format!("{e:#}").contains("/proc/4294967295/status"),
            "{e:#}"
        );
    }

    #[test]
    fn status_field_parses_kb_lines() {
        let text = "Name:\tx\nRssAnon:\t    1234 kB\nvoluntary_ctxt_switches:\t7\n";
        assert_eq!(status_field(text, "RssAnon", "t").expect("field"), 1234);
        assert_eq!(
            status_field(text, "voluntary_ctxt_switches", "t").expect("field"),
            7
        );
        assert!(status_field(text, "Missing", "t").is_err());
    }
}
