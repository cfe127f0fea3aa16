//! cache_hammer: uses a tlsfront session cache file from its own process, so
//! that tests can run several at once, or kill one mid-write.
//!
//! ```text
//! cache_hammer hammer --path P --size BYTES --writer W --threads T --keys K --millis MS
//!     T threads put/get/take self-checking values (see tlsfront_tests::cache_value)
//!     over keys 0..K for MS milliseconds; every value read is verified.
//!     Prints one summary line `hammer writer=W puts=... ...`.
//! cache_hammer write --path P --size BYTES --writer W --keys K
//!     Puts values over keys 0..K as fast as it can, forever (to be killed).
//!     Prints `writing` once the cache is open.
//! cache_hammer take --path P --size BYTES --ns NS --count N --go FILE
//!     Prints `ready`, waits (at most 20 s) for FILE to exist, then takes
//!     cache_value::key_in(NS, 0..N) in order, printing `took I` for each
//!     one it got (verified), then `done took=X`.
//! ```
//!
//! Exit status: 0 on success, 2 if any value read was torn, foreign or
//! garbage (described on stderr), 1 on bad usage or a cache that cannot be
//! opened.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tlsfront::session_cache::SessionCache;
use tlsfront_tests::cache_value::{self, MAX_LEN, MIN_LEN};

const USAGE: &str =
    "usage: cache_hammer hammer|write|take --path P --size BYTES [...] (see the source)";

/// xorshift64*: enough randomness for choosing operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn time_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = rest.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --flag, got {flag:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Args(map))
    }
    fn str(&self, name: &str) -> Result<&str, String> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing --{name}"))
    }
    fn num(&self, name: &str) -> Result<u64, String> {
        self.str(name)?
            .parse()
            .map_err(|e| format!("--{name}: {e}"))
    }
}

fn open(args: &Args) -> Result<SessionCache, String> {
    let path = PathBuf::from(args.str("path")?);
    let size = args.num("size")?;
    SessionCache::open(&path, size, 300, 1)
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

/// A value read under `key` that failed verification.
fn bad(what: &str, key: u32, v: &[u8], why: &str) -> String {
    format!(
        "BAD {what} of key {key}: {why}; {} bytes: {}",
        v.len(),
        cache_value::hex_head(v)
    )
}

#[derive(Default)]
struct Totals {
    puts: AtomicU64,
    refused: AtomicU64,
    gets: AtomicU64,
    get_hits: AtomicU64,
    takes: AtomicU64,
    take_hits: AtomicU64,
    /// Values read that another writer (thread or process) stored.
    other_writer_hits: AtomicU64,
    /// Values read that another process stored (writer ids differ in the
    /// high 16 bits).
    other_process_hits: AtomicU64,
}

fn hammer(args: &Args) -> Result<String, String> {
    let cache = Arc::new(open(args)?);
    let writer = u32::try_from(args.num("writer")?).map_err(|e| e.to_string())?;
    let threads = args.num("threads")?.max(1);
    let keys = args.num("keys")?.max(1);
    let millis = args.num("millis")?;
    let totals = Arc::new(Totals::default());
    let failed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_millis(millis);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, totals, failed) = (cache.clone(), totals.clone(), failed.clone());
            // Writer id: process in the high 16 bits, thread in the low.
            let me = (writer << 16) | t as u32;
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = Rng::new(time_seed() ^ u64::from(me).rotate_left(40));
                let mut counter = 0u64;
                let check = |what: &str, k: u32, v: &[u8]| -> Result<(), String> {
                    let d = cache_value::decode(k, v).map_err(|why| bad(what, k, v, &why))?;
                    if d.writer != me {
                        totals.other_writer_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if d.writer >> 16 != writer {
                        totals.other_process_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                };
                while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let k = rng.below(keys) as u32;
                        let key = cache_value::key(k);
                        match rng.below(10) {
                            0..=3 => {
                                counter += 1;
                                let len =
                                    MIN_LEN + rng.below((MAX_LEN - MIN_LEN + 1) as u64) as usize;
                                let v = cache_value::encode(k, me, counter, len);
                                totals.puts.fetch_add(1, Ordering::Relaxed);
                                if !cache.put_local(&key, &v) {
                                    totals.refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            4..=7 => {
                                totals.gets.fetch_add(1, Ordering::Relaxed);
                                if let Some(v) = cache.get_local(&key) {
                                    totals.get_hits.fetch_add(1, Ordering::Relaxed);
                                    check("get", k, &v)
                                        .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                                }
                            }
                            _ => {
                                totals.takes.fetch_add(1, Ordering::Relaxed);
                                if let Some(v) = cache.take_local(&key) {
                                    totals.take_hits.fetch_add(1, Ordering::Relaxed);
                                    check("take", k, &v)
                                        .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a thread panicked".to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(format!(
        "hammer writer={writer} threads={threads} keys={keys} puts={} refused={} gets={} get_hits={} takes={} take_hits={} other_writer_hits={} other_process_hits={}",
        n(&totals.puts),
        n(&totals.refused),
        n(&totals.gets),
        n(&totals.get_hits),
        n(&totals.takes),
        n(&totals.take_hits),
        n(&totals.other_writer_hits),
        n(&totals.other_process_hits),
    ))
}

fn write_forever(args: &Args) -> Result<String, String> {
    let cache = open(args)?;
    let writer = u32::try_from(args.num("writer")?).map_err(|e| e.to_string())?;
    let keys = args.num("keys")?.max(1);
    println!("writing");
    let _ = std::io::stdout().flush();
    let mut rng = Rng::new(time_seed());
    let mut counter = 0u64;
    loop {
        let k = rng.below(keys) as u32;
        counter += 1;
        let len = MIN_LEN + rng.below((MAX_LEN - MIN_LEN + 1) as u64) as usize;
        cache.put_local(
            &cache_value::key(k),
            &cache_value::encode(k, writer, counter, len),
        );
    }
}

fn take_all(args: &Args) -> Result<String, String> {
    let cache = open(args)?;
    let ns = u32::try_from(args.num("ns")?).map_err(|e| e.to_string())?;
    let count = u32::try_from(args.num("count")?).map_err(|e| e.to_string())?;
    let go = Path::new(args.str("go")?);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "ready").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !go.exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} did not appear within 20 s", go.display()));
        }
        std::hint::spin_loop();
    }
    let mut took = 0u32;
    for i in 0..count {
        if let Some(v) = cache.take_local(&cache_value::key_in(ns, i)) {
            cache_value::decode(i, &v).map_err(|why| bad("take", i, &v, &why))?;
            took += 1;
            writeln!(out, "took {i}").map_err(|e| e.to_string())?;
        }
    }
    writeln!(out, "done took={took}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(String::new())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(1);
    };
    let args = match Args::parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cache_hammer: {e}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    let result = match command.as_str() {
        "hammer" => hammer(&args),
        "write" => write_forever(&args),
        "take" => take_all(&args),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.starts_with("BAD ") => {
            eprintln!("cache_hammer: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("cache_hammer: {e}");
            ExitCode::from(1)
        }
    }
}
