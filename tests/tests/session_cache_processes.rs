//! The session cache file shared by several processes: concurrent writers
//! and readers in two processes, writers killed mid-write, and `take` racing
//! across processes. The other processes are the `cache_hammer` helper
//! (tests/src/bin/cache_hammer.rs); values are self-checking
//! (`tlsfront_tests::cache_value`), so any torn or foreign read is caught.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tlsfront::session_cache::{entry_sequences, file_size, SET_ENTRIES};
use tlsfront::session_cache::{Opened, SessionCache};
use tlsfront_tests::cache_value;
use tlsfront_tests::*;

const HAMMER: &str = env!("CARGO_BIN_EXE_cache_hammer");
/// One set of 8 slots: every key collides with every other.
const ONE_SET: u64 = file_size(1);
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

fn hammer_cmd(command: &str, path: &Path, size: u64, extra: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(HAMMER);
    cmd.arg(command)
        .arg("--path")
        .arg(path)
        .arg("--size")
        .arg(size.to_string());
    for (k, v) in extra {
        cmd.arg(format!("--{k}")).arg(v);
    }
    cmd
}

/// A child whose stdout arrives line by line on a channel and whose stderr
/// is collected; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
    stdout: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Proc {
            child,
            lines,
            stderr: Some(stderr),
            stdout: Vec::new(),
        }
    }

    /// Waits for the next stdout line (at most `timeout`).
    fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.stdout.push(l.clone());
                l
            }
            Err(e) => panic!("no line from cache_hammer within {timeout:?} ({e})"),
        }
    }

    /// Waits for the exit (killing it after [`PROCESS_TIMEOUT`]); returns the
    /// exit code (None if killed), all of stdout and stderr.
    fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(s) => break s.code(),
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(l);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, std::mem::take(&mut self.stdout), stderr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name=N` from a `cache_hammer hammer` summary line.
fn field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
}

/// Creates the cache file (so that no hammer process races to create it).
fn create(path: &Path, size: u64) -> SessionCache {
    let (cache, opened) = SessionCache::open(path, size, 300, 1).expect("create cache");
    assert_eq!(opened, Opened::Created);
    cache
}

/// Two `cache_hammer hammer` processes of 2 threads each on one file for
/// 1.5 s; both must exit 0 having read values the other process wrote.
fn two_processes_hammer(size: u64, keys: u64) {
    let dir = temp_dir();
    let path = dir.path().join("hammered.cache");
    let _cache = create(&path, size);
    let procs: Vec<Proc> = (1..=2u32)
        .map(|writer| {
            Proc::spawn(hammer_cmd(
                "hammer",
                &path,
                size,
                &[
                    ("writer", writer.to_string()),
                    ("threads", "2".into()),
                    ("keys", keys.to_string()),
                    ("millis", "1500".into()),
                ],
            ))
        })
        .collect();
    let results: Vec<_> = procs.into_iter().map(Proc::finish).collect();
    for (code, stdout, stderr) in &results {
        assert_eq!(
            *code,
            Some(0),
            "a hammer process failed (2 = torn or foreign value)\nstdout: {stdout:?}\nstderr: {stderr}"
        );
    }
    for (_, stdout, _) in &results {
        let summary = stdout.last().expect("summary line");
        eprintln!("cache of {size} bytes, {keys} keys: {summary}");
        assert!(
            field(summary, "get_hits") + field(summary, "take_hits") > 0,
            "{summary}"
        );
        assert!(
            field(summary, "other_process_hits") > 0,
            "never read a value the other process wrote, so nothing was shared: {summary}"
        );
    }
}

#[test]
fn two_processes_hammering_one_set_never_read_a_torn_or_foreign_value() {
    two_processes_hammer(ONE_SET, 12);
}

#[test]
fn two_processes_hammering_a_1_mib_cache_never_read_a_torn_or_foreign_value() {
    two_processes_hammer(1 << 20, 1500);
}

/// Sequence words of every slot, read from the file itself.
fn slot_sequences(path: &Path) -> Vec<u64> {
    entry_sequences(&std::fs::read(path).expect("read cache file"))
}

/// Every key of `0..keys` is either absent or holds a whole value of its own.
fn assert_all_consistent(cache: &SessionCache, keys: u32, when: &str) -> usize {
    let mut present = 0;
    for k in 0..keys {
        if let Some(v) = cache.get_local(&cache_value::key(k)) {
            if let Err(why) = cache_value::decode(k, &v) {
                panic!(
                    "{when}: key {k} holds a bad value: {why}; {} bytes: {}",
                    v.len(),
                    cache_value::hex_head(&v)
                );
            }
            present += 1;
        }
    }
    present
}

#[test]
fn writers_killed_mid_write_leave_only_misses_or_whole_values() {
    const KILLS: usize = 30;
    const KEYS: u32 = 12;
    let dir = temp_dir();
    let path = dir.path().join("crashed.cache");
    drop(create(&path, ONE_SET));
    let mut rng = u64::from(std::process::id()) | 1;
    let mut odd_after_kill = Vec::new();
    for i in 0..KILLS {
        let mut writer = Proc::spawn(hammer_cmd(
            "write",
            &path,
            ONE_SET,
            &[("writer", i.to_string()), ("keys", KEYS.to_string())],
        ));
        assert_eq!(writer.next_line(Duration::from_secs(10)), "writing");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        thread::sleep(Duration::from_micros(rng % 20_000));
        writer.child.kill().expect("SIGKILL the writer");
        let status = writer.child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the writer was meant to die of SIGKILL: {status:?}"
        );
        let odd = slot_sequences(&path).iter().filter(|s| *s & 1 == 1).count();
        odd_after_kill.push(odd);
        let (cache, opened) = SessionCache::open(&path, ONE_SET, 300, 1).expect("reopen");
        assert_eq!(
            opened,
            Opened::Reused,
            "kill {i}: the file was not reusable"
        );
        assert_all_consistent(&cache, KEYS, &format!("after kill {i}"));
    }
    eprintln!("slots left mid-write (odd) after each of {KILLS} kills: {odd_after_kill:?}");
    {
        // Not asserted (it depends on where the kills landed): with every
        // slot of the set claimed by a dead writer, a put is refused.
        let (cache, _) = SessionCache::open(&path, ONE_SET, 300, 1).expect("reopen");
        let accepted = cache.put_local(&cache_value::key(0), &cache_value::encode(0, 9998, 1, 64));
        eprintln!("a put right after the last kill was accepted: {accepted}");
    }

    // Slots a dead writer left odd are taken over once their claim is
    // STALE_CLAIM_SECS (2 s) old: then every put succeeds again.
    thread::sleep(Duration::from_millis(2100));
    let (cache, _) = SessionCache::open(&path, ONE_SET, 300, 1).expect("reopen");
    let mine: Vec<Vec<u8>> = (0..SET_ENTRIES as u32)
        .map(|k| cache_value::encode(k, 9999, 1, 40 + 40 * k as usize))
        .collect();
    for (k, v) in mine.iter().enumerate() {
        assert!(
            cache.put_local(&cache_value::key(k as u32), v),
            "put of key {k} refused 2.1 s after the last kill; slot sequences {:?}",
            slot_sequences(&path)
        );
    }
    for (k, v) in mine.iter().enumerate() {
        assert_eq!(
            cache.get_local(&cache_value::key(k as u32)).as_deref(),
            Some(&v[..]),
            "key {k} after filling the set"
        );
    }
    let odd_left = slot_sequences(&path).iter().filter(|s| *s & 1 == 1).count();
    assert_eq!(odd_left, 0, "slots still odd after the set was refilled");

    // And a fresh writer and reader run cleanly on the file.
    let (code, stdout, stderr) = Proc::spawn(hammer_cmd(
        "hammer",
        &path,
        ONE_SET,
        &[
            ("writer", "100".into()),
            ("threads", "2".into()),
            ("keys", KEYS.to_string()),
            ("millis", "500".into()),
        ],
    ))
    .finish();
    assert_eq!(code, Some(0), "stdout: {stdout:?}\nstderr: {stderr}");
    let summary = stdout.last().expect("summary");
    eprintln!("after the kills: {summary}");
    assert!(
        field(summary, "puts") > field(summary, "refused"),
        "{summary}"
    );
    assert_all_consistent(&cache, KEYS, "after the fresh hammer");
}

#[test]
fn two_processes_racing_to_take_the_same_tickets_take_each_exactly_once() {
    const ROUNDS: u32 = 5;
    // Enough that one process's pass over the tickets outlasts the other's
    // start (each spins on the go file): both take some in every round, or
    // the round tested no race.
    const N: u32 = 5_000;
    // Sparse enough that no 8-slot set overflows while all N are in.
    const SIZE: u64 = 64 << 20;
    let dir = temp_dir();
    let path = dir.path().join("tickets.cache");
    let cache = create(&path, SIZE);
    for round in 0..ROUNDS {
        for i in 0..N {
            let v = cache_value::encode(i, 0, u64::from(round), 100);
            assert!(
                cache.put_local(&cache_value::key_in(round, i), &v),
                "put {i}"
            );
        }
        // All N are there before the race (none evicted by a full set).
        let present = (0..N)
            .filter(|&i| cache.get_local(&cache_value::key_in(round, i)).is_some())
            .count();
        assert_eq!(
            present, N as usize,
            "round {round}: tickets present before the race"
        );

        let go = dir.path().join(format!("go-{round}"));
        let mut procs: Vec<Proc> = (0..2)
            .map(|_| {
                Proc::spawn(hammer_cmd(
                    "take",
                    &path,
                    SIZE,
                    &[
                        ("ns", round.to_string()),
                        ("count", N.to_string()),
                        ("go", go.display().to_string()),
                    ],
                ))
            })
            .collect();
        for p in &mut procs {
            assert_eq!(p.next_line(Duration::from_secs(10)), "ready");
        }
        std::fs::write(&go, b"").expect("go file");
        let mut taken: Vec<BTreeSet<u32>> = Vec::new();
        for p in procs {
            let (code, stdout, stderr) = p.finish();
            assert_eq!(code, Some(0), "stderr: {stderr}");
            let set: BTreeSet<u32> = stdout
                .iter()
                .filter_map(|l| l.strip_prefix("took "))
                .map(|n| n.parse().expect("took N"))
                .collect();
            assert_eq!(
                stdout.last().map(String::as_str),
                Some(format!("done took={}", set.len()).as_str()),
                "{stdout:?}"
            );
            taken.push(set);
        }
        let (a, b) = (&taken[0], &taken[1]);
        let both: Vec<_> = a.intersection(b).collect();
        eprintln!(
            "round {round}: process A took {}, process B took {} of {N}",
            a.len(),
            b.len()
        );
        assert!(
            both.is_empty(),
            "round {round}: taken by both processes: {both:?}"
        );
        assert!(
            !a.is_empty() && !b.is_empty(),
            "round {round}: one process took every ticket (A {}, B {}): no race happened",
            a.len(),
            b.len()
        );
        assert_eq!(
            a.len() + b.len(),
            N as usize,
            "round {round}: every ticket is taken exactly once"
        );
        let left = (0..N)
            .filter(|&i| cache.get_local(&cache_value::key_in(round, i)).is_some())
            .count();
        assert_eq!(
            left, 0,
            "round {round}: tickets left after both took them all"
        );
    }
}
