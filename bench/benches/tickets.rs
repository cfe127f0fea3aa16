//! Ticket-key ring micro-benchmarks: ns per `seal` and per `open_ticket`
//! of a 100-byte session (about what rustls's `ProducesTickets` is given),
//! on tlsfront's shared-memory `TicketKeyRing` (3 keys, 1 h period, random
//! keys, ring file in a temporary directory under `$TLSFRONT_BENCH_DIR`,
//! else /dev/shm when it exists, else the temporary directory).
//!
//! Groups:
//! - `seal`, `open`: `seal(plain)` / `open_ticket(ticket)` at the real
//!   time (one ring, no rotation while measured). `open` opens the same
//!   ticket again and again (the ring does not enforce single use; rustls
//!   calls `decrypt` once per offered ticket).
//! - `seal_rotating/N`, `open_rotating/N`: `seal_at(now, ..)` /
//!   `open_at(now, ..)` on a ring of its own with a simulated clock that
//!   advances one period every `N` operations, so that rotations (a CAS on
//!   the shared ring, a new random key written, every key re-decoded)
//!   happen inside the measured loop. In `open_rotating` each thread opens
//!   a ticket it sealed in the previous epoch (so with the "previous" key
//!   after each rotation) and seals a fresh one once per epoch, inside the
//!   timed loop (1 seal per `N` opens). The number of rotations, and any
//!   failed open, are printed after each benchmark.
//!
//! With 2 threads both run on the one shared ring (lined up by a spin
//! barrier); the reported time per operation is the slower thread's time /
//! its operations, i.e. the latency each thread sees while the other runs;
//! aggregate throughput is 2 / that. In the rotating benches thread 0 is
//! the clock: it advances a shared epoch every `N` of its operations and
//! thread 1 reads it, so both threads see the same simulated time.
//!
//! Run: `cargo bench -p tlsfront-bench --bench tickets`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tlsfront::metrics::{set_current_worker, PerWorkerCounters};
use tlsfront::tickets::{KeySource, TicketKeyRing};
use tlsfront_bench::{bench_dir, slowest_thread, SpinBarrier, SplitMix64};

// The allocator of the tlsfront binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes of the session sealed: rustls's encoded server session handed to
/// `ProducesTickets::encrypt` is about 100 bytes.
const PLAIN_LEN: usize = 100;
/// Keys in the ring (`tickets.keys` default).
const KEYS: usize = 3;
/// Rotation period in seconds (`tickets.rotate_interval` default).
const PERIOD: u64 = 3600;
/// Thread counts measured.
const THREADS: [usize; 2] = [1, 2];
/// Operations per simulated period in the rotating benches.
const PER_PERIOD: [u64; 2] = [1000, 10];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Seal,
    Open,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sum_counter(ring: &TicketKeyRing, name: &str) -> u64 {
    (0..=THREADS[THREADS.len() - 1])
        .flat_map(|w| ring.worker_counters(w))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .sum()
}

/// `iters` seals or opens at the real time on thread `t`.
fn run_plain(
    ring: &TicketKeyRing,
    plain: &[u8],
    op: Op,
    t: usize,
    iters: u64,
    barrier: &SpinBarrier,
) -> Duration {
    set_current_worker(t);
    let ticket = ring.seal(plain).expect("seal");
    barrier.wait();
    let start = Instant::now();
    match op {
        Op::Seal => {
            for _ in 0..iters {
                black_box(ring.seal(black_box(plain)).expect("seal"));
            }
        }
        Op::Open => {
            for _ in 0..iters {
                let p = ring.open_ticket(black_box(&ticket)).expect("open");
                debug_assert_eq!(p.len(), PLAIN_LEN);
                black_box(p);
            }
        }
    }
    start.elapsed()
}

/// The simulated clock of the rotating benches.
struct Clock {
    /// Unix time of epoch 0 of the run (a period boundary).
    base: u64,
    /// Periods elapsed, advanced by thread 0.
    epoch: AtomicU64,
    /// Opens that failed (a ticket whose key left the ring).
    failed: AtomicU64,
    /// Of those, the ones where this thread's ticket was sealed two or
    /// more simulated periods before (the thread fell behind the clock,
    /// e.g. descheduled, so its key had legitimately left the ring).
    failed_lagging: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        self.base + self.epoch.load(Ordering::Relaxed) * PERIOD
    }
}

/// `iters` seals or opens at simulated time on thread `t`; thread 0
/// advances the clock one period every `per_period` of its operations.
#[allow(clippy::too_many_arguments)]
fn run_rotating(
    ring: &TicketKeyRing,
    clock: &Clock,
    plain: &[u8],
    op: Op,
    t: usize,
    iters: u64,
    per_period: u64,
    barrier: &SpinBarrier,
) -> Duration {
    set_current_worker(t);
    let mut seen = clock.epoch.load(Ordering::Relaxed);
    let mut ticket = ring.seal_at(clock.now(), plain).expect("seal");
    let mut failed = 0u64;
    let mut failed_lagging = 0u64;
    barrier.wait();
    let start = Instant::now();
    let mut in_period = 0u64;
    for _ in 0..iters {
        if t == 0 {
            in_period += 1;
            if in_period == per_period {
                in_period = 0;
                clock.epoch.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = clock.now();
        match op {
            Op::Seal => {
                black_box(ring.seal_at(now, black_box(plain)).expect("seal"));
            }
            Op::Open => {
                let epoch = (now - clock.base) / PERIOD;
                match ring.open_at(now, black_box(&ticket)) {
                    Some(p) => {
                        black_box(p);
                    }
                    None => {
                        failed += 1;
                        if epoch >= seen + 2 {
                            failed_lagging += 1;
                        }
                    }
                }
                if epoch != seen {
                    // Once per epoch: this thread's next ticket, sealed
                    // with the key current now.
                    seen = epoch;
                    ticket = ring.seal_at(now, plain).expect("seal");
                }
            }
        }
    }
    let elapsed = start.elapsed();
    clock.failed.fetch_add(failed, Ordering::Relaxed);
    clock
        .failed_lagging
        .fetch_add(failed_lagging, Ordering::Relaxed);
    elapsed
}

fn open_ring(dir: &std::path::Path, name: &str) -> TicketKeyRing {
    let (ring, _) = TicketKeyRing::open(
        &dir.join(name),
        KEYS,
        PERIOD,
        KeySource::Random,
        THREADS[THREADS.len() - 1],
    )
    .expect("open the ticket ring");
    ring
}

fn tickets(c: &mut Criterion) {
    let dir = bench_dir();
    let mut plain = vec![0u8; PLAIN_LEN];
    SplitMix64::new(7).fill(&mut plain);

    let ring = open_ring(dir.path(), "plain.tickets");
    for (op, name) in [(Op::Seal, "seal"), (Op::Open, "open")] {
        let mut group = c.benchmark_group(name);
        for threads in THREADS {
            group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                b.iter_custom(|iters| {
                    slowest_thread(threads, |t, barrier| {
                        run_plain(&ring, &plain, op, t, iters, barrier)
                    })
                })
            });
        }
        group.finish();
    }
    let rotations = sum_counter(&ring, "tickets_rotations");
    let failures = sum_counter(&ring, "tickets_decrypt_failures");
    println!("plain ring: {rotations} rotations, {failures} failed opens while measured");

    for (op, name) in [(Op::Seal, "seal_rotating"), (Op::Open, "open_rotating")] {
        let mut group = c.benchmark_group(name);
        for per_period in PER_PERIOD {
            for threads in THREADS {
                // A ring and a clock of its own per benchmark, starting at
                // the current period.
                let ring = open_ring(dir.path(), &format!("{name}-{per_period}-{threads}"));
                let clock = Clock {
                    base: unix_now() / PERIOD * PERIOD,
                    epoch: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    failed_lagging: AtomicU64::new(0),
                };
                let ops = AtomicU64::new(0);
                let before = sum_counter(&ring, "tickets_rotations");
                group.bench_function(
                    BenchmarkId::new(format!("every_{per_period}"), threads),
                    |b| {
                        b.iter_custom(|iters| {
                            ops.fetch_add(iters * threads as u64, Ordering::Relaxed);
                            slowest_thread(threads, |t, barrier| {
                                run_rotating(
                                    &ring, &clock, &plain, op, t, iters, per_period, barrier,
                                )
                            })
                        })
                    },
                );
                let rotations = sum_counter(&ring, "tickets_rotations") - before;
                let ops = ops.load(Ordering::Relaxed);
                if ops == 0 {
                    // Filtered out on the command line.
                    continue;
                }
                println!(
                    "{name}/every_{per_period}/{threads}: {rotations} rotations in {ops} operations \
                     (one per {:.0}), {} failed opens ({} of them by a thread 2+ periods behind)",
                    ops as f64 / rotations.max(1) as f64,
                    clock.failed.load(Ordering::Relaxed),
                    clock.failed_lagging.load(Ordering::Relaxed),
                );
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = tickets
}
criterion_main!(benches);
