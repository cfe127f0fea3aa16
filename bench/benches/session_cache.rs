//! Session cache micro-benchmarks: ns per `get` (hit), `get` (miss), `put`
//! and `take`, with 1 and 2 threads on one shared instance, for
//!
//! - `tlsfront`: tlsfront's shared mmap cache (`SessionCache`, 64 MiB file
//!   in `$TLSFRONT_BENCH_DIR`, else /dev/shm when it exists, else the
//!   temporary directory),
//! - `mutex_hashmap`: `Mutex<HashMap<Vec<u8>, Vec<u8>>>`,
//! - `rustls_memory`: rustls's `ServerSessionMemoryCache`,
//!
//! all called through `Arc<dyn rustls::server::StoresServerSessions>`, as
//! rustls calls them. 10,000 sessions (32-byte random keys, 150-byte values)
//! are stored before anything is measured.
//!
//! What one operation is:
//! - `get_hit`: `get` of a stored key, returning a copy of the value.
//! - `get_miss`: `get` of a key that was never stored.
//! - `put`: `put` over an already stored key (steady state: no growth, no
//!   eviction), including making the owned key and value `Vec`s that the
//!   trait takes (rustls builds them before calling `put` anyway).
//! - `take`: `take` of a stored key. Keys are stored untimed in chunks of
//!   `TAKE_CHUNK` per thread, then taken timed in a random order (not the
//!   insertion order); only the takes are timed.
//!
//! With 2 threads each thread does `iters` operations on its own half of
//! the keys; the reported time per operation is the time of the slower
//! thread divided by `iters`, i.e. the latency one thread sees while the
//! other runs. Aggregate throughput is 2 / that.
//!
//! Run: `cargo bench -p tlsfront-bench --bench session_cache`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use tlsfront::metrics::set_current_worker;
use tlsfront::session_cache::SessionCache;
use tlsfront_bench::{bench_dir, slowest_thread, Fixture, Key, MutexMap, SpinBarrier};

// The allocator of the tlsfront binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sessions stored before measuring.
const RESIDENT: usize = 10_000;
/// Keys per thread stored, then taken, per round of the `take` bench.
const TAKE_CHUNK: usize = 1_000;
/// Thread counts measured.
const THREADS: [usize; 2] = [1, 2];
/// Size of tlsfront's cache file.
const CACHE_BYTES: u64 = 64 << 20;
/// Session lifetime: far longer than the run.
const TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, Clone, Copy)]
enum Op {
    GetHit,
    GetMiss,
    Put,
    Take,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GetHit => "get_hit",
            Op::GetMiss => "get_miss",
            Op::Put => "put",
            Op::Take => "take",
        }
    }
}

/// One implementation under test.
struct Subject {
    name: &'static str,
    store: Arc<dyn StoresServerSessions>,
}

/// Runs `iters` operations `op` as thread `t` of `threads`; returns the
/// time spent in them. `barrier` lines the threads up before timing starts
/// (and, for `take`, before each timed chunk).
fn run(
    store: &dyn StoresServerSessions,
    fixture: &Fixture,
    op: Op,
    t: usize,
    threads: usize,
    iters: u64,
    barrier: &SpinBarrier,
) -> Duration {
    // As tlsfront's workers do: the cache counts per worker.
    set_current_worker(t);
    let mut found = 0u64;
    let elapsed = match op {
        Op::GetHit | Op::GetMiss | Op::Put => {
            let keys = Fixture::range(
                match op {
                    Op::GetMiss => &fixture.absent,
                    _ => &fixture.resident,
                },
                t,
                threads,
            );
            barrier.wait();
            let start = Instant::now();
            let mut i = 0;
            for _ in 0..iters {
                let key: &Key = black_box(&keys[i]);
                i += 1;
                if i == keys.len() {
                    i = 0;
                }
                match op {
                    Op::Put => {
                        found += u64::from(store.put(key.to_vec(), fixture.value.to_vec()));
                    }
                    _ => found += u64::from(black_box(store.get(key)).is_some()),
                }
            }
            start.elapsed()
        }
        Op::Take => {
            let keys = &fixture.take_keys[t];
            let mut left = iters;
            let mut timed = Duration::ZERO;
            while left > 0 {
                let n = left.min(keys.len() as u64) as usize;
                for k in keys {
                    assert!(store.put(k.to_vec(), fixture.value.to_vec()));
                }
                barrier.wait();
                let start = Instant::now();
                for &j in &fixture.take_order[..n] {
                    found += u64::from(black_box(store.take(black_box(&keys[j]))).is_some());
                }
                timed += start.elapsed();
                // No thread refills while another is still taking.
                barrier.wait();
                left -= n as u64;
            }
            timed
        }
    };
    // The labels are true: every hit, put and take succeeded, every miss
    // missed.
    let expected = match op {
        Op::GetMiss => 0,
        _ => iters,
    };
    assert_eq!(found, expected, "{} thread {t}", op.name());
    elapsed
}

/// `iters` operations on each of `threads` threads; the slower thread's
/// time.
fn measure(subject: &Subject, fixture: &Fixture, op: Op, threads: usize, iters: u64) -> Duration {
    slowest_thread(threads, |t, barrier| {
        run(&*subject.store, fixture, op, t, threads, iters, barrier)
    })
}

fn subjects(fixture: &Fixture, dir: &std::path::Path) -> Vec<Subject> {
    let (cache, _) = SessionCache::open(
        &dir.join("session.cache"),
        CACHE_BYTES,
        TIMEOUT_SECS,
        THREADS[THREADS.len() - 1],
    )
    .expect("open the tlsfront session cache");
    // The other two get the same capacity (rustls's bounds its size).
    let capacity = cache.capacity();
    let subjects = vec![
        Subject {
            name: "tlsfront",
            store: Arc::new(cache),
        },
        Subject {
            name: "mutex_hashmap",
            store: Arc::new(MutexMap::with_capacity(capacity)),
        },
        Subject {
            name: "rustls_memory",
            store: ServerSessionMemoryCache::new(capacity),
        },
    ];
    for s in &subjects {
        fixture.prefill(&*s.store);
    }
    subjects
}

fn session_cache(c: &mut Criterion) {
    let fixture = Fixture::new(RESIDENT, TAKE_CHUNK, THREADS[THREADS.len() - 1]);
    let dir = bench_dir();
    let subjects = subjects(&fixture, dir.path());

    for op in [Op::GetHit, Op::GetMiss, Op::Put, Op::Take] {
        let mut group = c.benchmark_group(op.name());
        for subject in &subjects {
            for threads in THREADS {
                group.bench_function(BenchmarkId::new(subject.name, threads), |b| {
                    b.iter_custom(|iters| measure(subject, &fixture, op, threads, iters))
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = session_cache
}
criterion_main!(benches);
