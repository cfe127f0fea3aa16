//! The slot protocol against its specification: each interleaving that
//! matters driven deterministically, with the slot words set by hand
//! (white-box), then a model check of claim / publish / take / read under
//! every schedule shuttle explores. All on heap words, no file, so the
//! white-box ones also run under Miri:
//!
//! ```text
//! AYA_BUILD_SKIP=1 MIRIFLAGS=-Zmiri-ignore-leaks cargo +nightly miri test -p tlsfront \
//!     --lib session_cache::slot -- --skip model_ --skip this_process_is_alive
//! ```
//!
//! What Miri cannot run: the shuttle models (3000 schedules each: hours
//! under the interpreter), the /proc liveness test (spawns a process), and
//! anything on a real mapping (`shm::open`: Miri has no file-backed mmap)
//! or on the ticket ring (aws-lc is C, behind FFI). Leaks are ignored for
//! the scripted slots, leaked on purpose to outlive the read they script.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const NOW: u64 = 1_700_000_000;
const ME: u32 = 4242;
const OTHER: u32 = 777;

fn slot() -> Box<[AtomicU64]> {
    crate::shm::heap_words(SLOT_WORDS)
}

fn hash_of(key: &[u8]) -> u64 {
    key_hash(1, key)
}

fn entry(key: &[u8], value: &[u8]) -> Entry {
    Entry::new(hash_of(key), NOW + 300, key, value)
}

fn read_value<W: Word>(slot: &[W], key: &[u8]) -> (Read, Vec<u8>, u64) {
    let mut value = Vec::new();
    let mut torn = 0;
    let r = read(slot, hash_of(key), key, &mut value, &mut torn);
    (r, value, torn)
}

#[test]
fn a_claim_carries_the_next_generation_its_time_and_its_owner_in_one_word() {
    let c = claim_word(0, NOW, ME);
    assert!(is_claimed(c));
    assert_eq!(claim_owner(c), ME);
    assert_eq!(claim_age(c, NOW + 5), 5);
    let p = published_word(c);
    assert!(!is_claimed(p));
    assert_ne!(p, 0, "the sequence moved on: a reader of state 0 retries");
    // Generations only go forward, through wrap-around too.
    let mut word = 0;
    for _ in 0..(1u64 << 17) + 3 {
        let next = published_word(claim_word(word, NOW, ME));
        assert_ne!(next, word);
        word = next;
    }
}

#[test]
fn a_live_claim_is_never_taken_over() {
    let alive = |_| true;
    let mine = claim_word(0, NOW, ME);
    let theirs = claim_word(0, NOW, OTHER);
    for age in [0, 1, 2, 10, HARD_STALE_CLAIM_SECS - 1] {
        assert!(
            !abandoned(mine, NOW + age, ME, alive),
            "own claim, age {age}"
        );
        assert!(
            !abandoned(theirs, NOW + age, ME, alive),
            "live owner, age {age}"
        );
    }
    // Past the hard limit a holder is frozen or a reused pid.
    assert!(abandoned(theirs, NOW + HARD_STALE_CLAIM_SECS, ME, alive));
}

#[test]
fn a_dead_writers_claim_is_taken_over_after_two_seconds() {
    let dead = |_| false;
    let theirs = claim_word(0, NOW, OTHER);
    assert!(!abandoned(theirs, NOW, ME, dead));
    assert!(!abandoned(theirs, NOW + STALE_CLAIM_SECS - 1, ME, dead));
    assert!(abandoned(theirs, NOW + STALE_CLAIM_SECS, ME, dead));
}

#[test]
fn this_process_is_alive_and_a_reaped_child_is_not() {
    assert!(owner_alive(std::process::id()));
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    assert!(!owner_alive(pid), "pid {pid} of a reaped child");
}

#[test]
fn a_writer_taken_over_cannot_publish_and_the_slot_stays_the_new_claimants() {
    let s = slot();
    // A claims, then stalls (its owner id looks dead to B).
    let a = try_claim(&s, 0, NOW, OTHER).expect("A claims");
    fill(&s, &entry(b"key-a", b"value of A"));
    // B finds the claim abandoned and takes it over.
    assert!(abandoned(a, NOW + 3, ME, |_| false));
    let b = try_claim(&s, a, NOW + 3, ME).expect("B takes over");
    // A resumes: its publish must fail, not expose B's half-written slot.
    assert!(!publish(&s, a), "A published over B's claim");
    assert_eq!(s[S_SEQ].load(Ordering::Relaxed), b, "still B's claim");
    assert_eq!(
        read_value(&s, b"key-a").0,
        Read::Miss,
        "nothing stable to read"
    );
    fill(&s, &entry(b"key-b", b"value of B"));
    assert!(publish(&s, b));
    let (r, v, _) = read_value(&s, b"key-b");
    assert!(matches!(r, Read::Hit { .. }) && v == b"value of B", "{r:?}");
}

#[test]
fn a_stalled_taker_never_turns_the_sequence_back() {
    let s = slot();
    assert_eq!(put(&s, 0, &entry(b"k", b"v"), NOW, ME), Some(true));
    let Read::Hit { seq, .. } = read_value(&s, b"k").0 else {
        panic!("stored")
    };
    // The taker claims, then stalls; another writer takes over and
    // publishes a new entry.
    let t = try_claim(&s, seq, NOW, OTHER).expect("taker claims");
    assert!(put(&s, t, &entry(b"k2", b"v2"), NOW + 5, ME) == Some(true));
    let after = s[S_SEQ].load(Ordering::Relaxed);
    // The taker resumes: clearing then publishing by CAS fails; a blind
    // store would have set the sequence back to a value readers saw.
    clear(&s);
    assert!(!publish(&s, t));
    assert_eq!(s[S_SEQ].load(Ordering::Relaxed), after);
    // The mix (cleared hash) is a miss, never a wrong value.
    assert_eq!(read_value(&s, b"k2").0, Read::Miss);
}

#[test]
fn two_takers_of_one_stable_read_redeem_it_once() {
    let s = slot();
    assert_eq!(put(&s, 0, &entry(b"t", b"psk"), NOW, ME), Some(true));
    let Read::Hit { seq, .. } = read_value(&s, b"t").0 else {
        panic!("stored")
    };
    assert!(take(&s, seq, NOW, ME), "first taker");
    assert!(!take(&s, seq, NOW, OTHER), "second taker, same read");
    assert_eq!(read_value(&s, b"t").0, Read::Miss);
}

#[test]
fn a_claim_by_a_second_writer_from_the_same_observation_loses() {
    let s = slot();
    assert!(try_claim(&s, 0, NOW, ME).is_some());
    assert_eq!(try_claim(&s, 0, NOW, OTHER), None);
}

#[test]
fn a_stable_slot_with_a_wrong_checksum_is_corrupt_not_a_value() {
    let s = slot();
    assert_eq!(put(&s, 0, &entry(b"k", b"value"), NOW, ME), Some(true));
    s[S_DATA].fetch_xor(1 << 16, Ordering::Relaxed); // a byte of the value
    assert_eq!(read_value(&s, b"k").0, Read::Corrupt);
}

// --- Deterministic interleavings inside one read -------------------------

/// A step of a script: run right after the reader's load number `.0`.
type Step = (usize, Box<dyn FnMut()>);

thread_local! {
    /// Loads made by the reader so far, and what runs right after load n.
    static LOADS: Cell<usize> = const { Cell::new(0) };
    static SCRIPT: RefCell<Vec<Step>> = RefCell::new(Vec::new());
}

/// A word that runs the test's script right after given loads: "the
/// reader loaded this, then the writer did that". Single-threaded, so the
/// interleaving is exact.
struct Scripted(AtomicU64);

impl Word for Scripted {
    fn load(&self, order: Ordering) -> u64 {
        let v = self.0.load(order);
        let n = LOADS.with(|l| {
            l.set(l.get() + 1);
            l.get()
        });
        let due: Vec<_> = SCRIPT.with(|s| {
            let mut s = s.borrow_mut();
            let (due, rest) = s.drain(..).partition(|(at, _)| *at == n);
            *s = rest;
            due
        });
        for (_, mut step) in due {
            step();
        }
        v
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn compare_exchange(&self, current: u64, new: u64, success: Ordering) -> Result<u64, u64> {
        self.0
            .compare_exchange(current, new, success, Ordering::Relaxed)
    }
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// A slot of scripted words that lives for the test (the script's steps
/// write to it while the reader reads it).
fn scripted_slot() -> &'static [Scripted] {
    Box::leak(
        (0..SLOT_WORDS)
            .map(|_| Scripted(AtomicU64::new(0)))
            .collect(),
    )
}

/// Runs `step` right after the reader's `n`-th load (1 = its first load of
/// the state word).
fn after_load(n: usize, step: impl FnMut() + 'static) {
    LOADS.with(|l| l.set(0));
    SCRIPT.with(|s| s.borrow_mut().push((n, Box::new(step))));
}

/// Loads made by `put` (none: it only CASes and stores) do not count; the
/// counter restarts at the read.
fn store_entry(s: &'static [Scripted], observed: u64, key: &[u8], value: &[u8]) -> u64 {
    let claimed = try_claim(s, observed, NOW, ME).expect("claim");
    fill(s, &entry(key, value));
    assert!(publish(s, claimed));
    published_word(claimed)
}

#[test]
fn a_write_between_the_readers_two_state_loads_makes_it_retry_and_see_one_whole_entry() {
    let s = scripted_slot();
    let first = store_entry(s, 0, b"k", b"old value");
    // Right after the reader's first state load: a whole new write.
    after_load(1, move || {
        store_entry(s, first, b"k", b"new value, longer");
    });
    let (r, v, torn) = read_value(s, b"k");
    assert_eq!(torn, 1, "the moved state was noticed");
    assert!(matches!(r, Read::Hit { .. }), "{r:?}");
    assert_eq!(v, b"new value, longer", "one whole entry, never a mix");
}

#[test]
fn a_writer_that_claims_during_a_read_and_never_publishes_leaves_a_miss() {
    let s = scripted_slot();
    let first = store_entry(s, 0, b"k", b"old value");
    // The writer claims and writes half, then dies.
    after_load(3, move || {
        let _ = try_claim(s, first, NOW, OTHER).expect("claim");
        s[S_LENS].store(pack_lens(1, 200), Ordering::Relaxed);
        s[S_DATA].store(u64::MAX, Ordering::Relaxed);
    });
    let (r, v, torn) = read_value(s, b"k");
    assert_eq!((r, v.is_empty()), (Read::Miss, true));
    assert_eq!(torn, 1);
}

#[test]
fn a_take_during_a_read_makes_the_reader_miss() {
    let s = scripted_slot();
    let first = store_entry(s, 0, b"k", b"v");
    after_load(2, move || {
        assert!(take(s, first, NOW, OTHER));
    });
    let (r, _, _) = read_value(s, b"k");
    assert_eq!(r, Read::Miss);
}

// --- Model check ----------------------------------------------------------

/// Shuttle's atomics: every access is a scheduling point.
impl Word for shuttle::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        shuttle::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        shuttle::sync::atomic::AtomicU64::store(self, value, order)
    }
    fn compare_exchange(&self, current: u64, new: u64, success: Ordering) -> Result<u64, u64> {
        shuttle::sync::atomic::AtomicU64::compare_exchange(
            self,
            current,
            new,
            success,
            Ordering::Relaxed,
        )
    }
    fn fence(order: Ordering) {
        shuttle::sync::atomic::fence(order)
    }
}

type ModelSlot = std::sync::Arc<Vec<shuttle::sync::atomic::AtomicU64>>;

fn model_slot() -> ModelSlot {
    std::sync::Arc::new(
        (0..SLOT_WORDS)
            .map(|_| shuttle::sync::atomic::AtomicU64::new(0))
            .collect(),
    )
}

const MODEL_ITERATIONS: usize = 3000;

/// Two writers of different keys race for one slot while a reader reads
/// it: the reader gets one writer's whole entry or nothing, and the slot
/// ends stable holding exactly the entry of the writer that published last.
#[test]
fn model_two_writers_and_a_reader_never_see_a_mix() {
    shuttle::check_random(
        || {
            let s = model_slot();
            let writers: Vec<_> = [(b"ka", b"value-a"), (b"kb", b"value-b")]
                .into_iter()
                .enumerate()
                .map(|(i, (k, v))| {
                    let s = s.clone();
                    shuttle::thread::spawn(move || {
                        let observed = s[S_SEQ].load(Ordering::Relaxed);
                        if is_claimed(observed) {
                            return None;
                        }
                        put(&s, observed, &entry(k, v), NOW, 100 + i as u32)
                            .filter(|p| *p)
                            .map(|_| i)
                    })
                })
                .collect();
            let reader = {
                let s = s.clone();
                shuttle::thread::spawn(move || {
                    for (k, v) in [(&b"ka"[..], &b"value-a"[..]), (b"kb", b"value-b")] {
                        let (r, got, _) = read_value(&s, k);
                        if let Read::Hit { .. } = r {
                            assert_eq!(got, v, "a mix under key {k:?}");
                        }
                        assert_ne!(r, Read::Corrupt);
                    }
                })
            };
            let won: Vec<usize> = writers
                .into_iter()
                .filter_map(|w| w.join().ok().flatten())
                .collect();
            reader.join().expect("reader");
            let state = s[S_SEQ].load(Ordering::Relaxed);
            assert!(!is_claimed(state), "left claimed");
            assert!(!won.is_empty(), "at least one writer publishes");
            let last = if won.len() == 1 { won[0] } else { 1 };
            let (k, v): (&[u8], &[u8]) = if last == 0 {
                (b"ka", b"value-a")
            } else {
                (b"kb", b"value-b")
            };
            if won.len() == 1 {
                let (r, got, _) = read_value(&s, k);
                assert!(matches!(r, Read::Hit { .. }) && got == v, "{r:?}");
            }
        },
        MODEL_ITERATIONS,
    );
}

/// Two takers race for one stored ticket: exactly one redeems it.
#[test]
fn model_racing_takers_redeem_once() {
    shuttle::check_random(
        || {
            let s = model_slot();
            assert_eq!(put(&s, 0, &entry(b"t", b"psk"), NOW, 1), Some(true));
            let takers: Vec<_> = (0..2u32)
                .map(|i| {
                    let s = s.clone();
                    shuttle::thread::spawn(move || {
                        let (r, got, _) = read_value(&s, b"t");
                        match r {
                            Read::Hit { seq, .. } => {
                                assert_eq!(got, b"psk");
                                take(&s, seq, NOW, 10 + i)
                            }
                            _ => false,
                        }
                    })
                })
                .collect();
            let redeemed = takers
                .into_iter()
                .filter_map(|t| t.join().ok())
                .filter(|won| *won)
                .count();
            assert!(redeemed <= 1, "redeemed {redeemed} times");
            // With no other writer, the one that read first always wins.
            assert_eq!(redeemed, 1);
            assert!(!is_claimed(s[S_SEQ].load(Ordering::Relaxed)));
        },
        MODEL_ITERATIONS,
    );
}

/// A writer stalls mid-write, a second takes its claim over as abandoned,
/// a reader reads throughout: one publication wins, the sequence never goes
/// back, the reader sees a whole entry or nothing.
#[test]
fn model_a_takeover_of_a_stalled_claim_is_safe() {
    shuttle::check_random(
        || {
            let s = model_slot();
            let stalled = {
                let s = s.clone();
                shuttle::thread::spawn(move || put(&s, 0, &entry(b"ka", b"value-a"), NOW, OTHER))
            };
            let rescuer = {
                let s = s.clone();
                shuttle::thread::spawn(move || {
                    let observed = s[S_SEQ].load(Ordering::Relaxed);
                    // Three seconds later, with A's owner id dead.
                    if is_claimed(observed) && !abandoned(observed, NOW + 3, ME, |_| false) {
                        return None;
                    }
                    put(&s, observed, &entry(b"kb", b"value-b"), NOW + 3, ME)
                })
            };
            let reader = {
                let s = s.clone();
                shuttle::thread::spawn(move || {
                    let mut last = 0u64;
                    for (k, v) in [
                        (&b"ka"[..], &b"value-a"[..]),
                        (b"kb", b"value-b"),
                        (b"ka", b"value-a"),
                    ] {
                        let state = s[S_SEQ].load(Ordering::Acquire);
                        if !is_claimed(state) {
                            assert!(generation(state) >= generation(last), "sequence went back");
                            last = state;
                        }
                        let (r, got, _) = read_value(&s, k);
                        if let Read::Hit { .. } = r {
                            assert_eq!(got, v, "a mix under key {k:?}");
                        }
                    }
                })
            };
            let a = stalled.join().expect("A");
            let b = rescuer.join().expect("B");
            reader.join().expect("reader");
            // Whoever lost (a failed claim, or a publish after being taken
            // over) leaves the slot to the one that won: never claimed.
            assert!(
                !is_claimed(s[S_SEQ].load(Ordering::Relaxed)),
                "left claimed: A {a:?}, B {b:?}"
            );
        },
        MODEL_ITERATIONS,
    );
}
