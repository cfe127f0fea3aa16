//! The session cache against its specification, in one process. The
//! multi-process tests (two processes, a writer killed mid-write) are in
//! `tests/tests/session_cache_processes.rs`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// One set: every key shares it, the hardest case for eviction and races.
const ONE_SET: u64 = (HEADER_BYTES + SET_BYTES) as u64;

fn cache_in(dir: &tempfile::TempDir, size: u64) -> SessionCache {
    let (cache, _) =
        SessionCache::open(&dir.path().join("c.cache"), size, 300, 2).expect("open cache");
    cache
}

fn far_future() -> u64 {
    unix_now() + 3600
}

#[test]
fn a_stored_session_is_found_by_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, 1 << 20);
    assert!(cache.put_local(b"session-id-1", b"secret state"));
    assert_eq!(
        cache.get_local(b"session-id-1").as_deref(),
        Some(&b"secret state"[..])
    );
    assert_eq!(cache.get_local(b"session-id-2"), None);
}

#[test]
fn take_returns_a_session_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, 1 << 20);
    assert!(cache.put_local(b"ticket", b"psk"));
    assert_eq!(cache.take_local(b"ticket").as_deref(), Some(&b"psk"[..]));
    assert_eq!(cache.take_local(b"ticket"), None);
    assert_eq!(cache.get_local(b"ticket"), None);
}

#[test]
fn an_expired_session_is_a_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, 1 << 20);
    assert!(cache.put_local_until(b"old", b"v", unix_now() - 1));
    assert_eq!(cache.get_local(b"old"), None);
    assert_eq!(cache.counters().expired.load(Ordering::Relaxed), 1);
}

#[test]
fn a_value_larger_than_a_slot_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, 1 << 20);
    let big = vec![7u8; DATA_BYTES];
    assert!(!cache.put_local(b"k", &big));
    assert_eq!(cache.counters().oversize.load(Ordering::Relaxed), 1);
    assert_eq!(cache.get_local(b"k"), None);
    let fits = vec![7u8; DATA_BYTES - 1];
    assert!(cache.put_local(b"k", &fits));
    assert_eq!(cache.get_local(b"k"), Some(fits));
}

#[test]
fn a_full_set_evicts_the_session_expiring_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, ONE_SET);
    let base = far_future();
    for i in 0..WAYS as u64 {
        assert!(cache.put_local_until(&i.to_le_bytes(), b"v", base + i));
    }
    assert!(cache.put_local_until(b"newcomer", b"v", base + 100));
    assert_eq!(
        cache.get_local(&0u64.to_le_bytes()),
        None,
        "the oldest went"
    );
    for i in 1..WAYS as u64 {
        assert!(cache.get_local(&i.to_le_bytes()).is_some(), "{i} stays");
    }
    assert_eq!(cache.counters().evictions.load(Ordering::Relaxed), 1);
}

#[test]
fn an_expired_session_is_replaced_before_a_live_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(&dir, ONE_SET);
    let base = far_future();
    for i in 0..WAYS as u64 {
        let expiry = if i == 5 { unix_now() - 10 } else { base + i };
        assert!(cache.put_local_until(&i.to_le_bytes(), b"v", expiry));
    }
    assert!(cache.put_local(b"newcomer", b"v"));
    for i in (0..WAYS as u64).filter(|i| *i != 5) {
        assert!(cache.get_local(&i.to_le_bytes()).is_some(), "{i} stays");
    }
    assert_eq!(cache.counters().evictions.load(Ordering::Relaxed), 0);
}

#[test]
fn sessions_survive_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    {
        let (cache, opened) = SessionCache::open(&path, 1 << 20, 300, 1).expect("open");
        assert_eq!(opened, Opened::Created);
        assert!(cache.put_local(b"k", b"v"));
    }
    let (cache, opened) = SessionCache::open(&path, 1 << 20, 300, 1).expect("reopen");
    assert_eq!(opened, Opened::Reused);
    assert_eq!(cache.get_local(b"k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_file_of_another_geometry_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    let (cache, _) = SessionCache::open(&path, 1 << 20, 300, 1).expect("open");
    assert!(cache.put_local(b"k", b"v"));
    let (cache, opened) = SessionCache::open(&path, 2 << 20, 300, 1).expect("reopen bigger");
    assert!(
        matches!(opened, Opened::Rebuilt(ref why) if why.contains("length")),
        "{opened:?}"
    );
    assert_eq!(cache.get_local(b"k"), None);
}

#[test]
fn a_truncated_file_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    drop(SessionCache::open(&path, 1 << 20, 300, 1).expect("open"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open file");
    f.set_len(5000).expect("truncate");
    let (_, opened) = SessionCache::open(&path, 1 << 20, 300, 1).expect("reopen");
    assert!(matches!(opened, Opened::Rebuilt(_)), "{opened:?}");
}

#[test]
fn a_corrupt_header_is_rebuilt_naming_what_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    drop(SessionCache::open(&path, 1 << 20, 300, 1).expect("open"));
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8] = 99; // layout version
    std::fs::write(&path, &bytes).expect("write");
    let (_, opened) = SessionCache::open(&path, 1 << 20, 300, 1).expect("reopen");
    assert!(
        matches!(opened, Opened::Rebuilt(ref why) if why.contains("version")),
        "{opened:?}"
    );
}

#[test]
fn a_world_writable_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    drop(SessionCache::open(&path, 1 << 20, 300, 1).expect("open"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let err = SessionCache::open(&path, 1 << 20, 300, 1).expect_err("refused");
    assert!(matches!(err, CacheError::WorldWritable { .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()));
}

#[test]
fn a_file_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    drop(SessionCache::open(&path, 1 << 20, 300, 1).expect("open"));
    // 65534 is `nobody`; only root can give a file away (the suite runs as root).
    crate::prereq::require(&[crate::prereq::Need::Root]);
    std::os::unix::fs::chown(&path, Some(65534), None).expect("chown to nobody as root");
    let err = SessionCache::open(&path, 1 << 20, 300, 1).expect_err("refused");
    assert!(
        matches!(err, CacheError::Owner { owner: 65534, .. }),
        "{err}"
    );
}

#[test]
fn a_directory_at_the_path_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = SessionCache::open(dir.path(), 1 << 20, 300, 1).expect_err("refused");
    assert!(matches!(err, CacheError::NotRegular { .. }), "{err}");
}

#[test]
fn a_path_that_cannot_be_created_is_named() {
    let err = SessionCache::open(Path::new("/nonexistent-dir/c.cache"), 1 << 20, 300, 1)
        .expect_err("cannot create");
    assert!(
        err.to_string().contains("/nonexistent-dir/c.cache"),
        "{err}"
    );
}

#[test]
fn a_size_below_one_set_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = SessionCache::open(&dir.path().join("c"), 4096, 300, 1).expect_err("too small");
    assert!(matches!(err, CacheError::TooSmall { .. }), "{err}");
}

#[test]
fn the_file_is_created_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    drop(SessionCache::open(&path, 1 << 20, 300, 1).expect("open"));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Random bytes over the whole body: every operation still works, and a
/// lookup returns the value that was stored or nothing, never garbage.
#[test]
fn random_bytes_over_the_body_cause_misses_never_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.cache");
    let size = (HEADER_BYTES + 16 * SET_BYTES) as u64;
    let keys: Vec<[u8; 32]> = (0..64u8).map(|i| [i; 32]).collect();
    {
        let (cache, _) = SessionCache::open(&path, size, 300, 1).expect("open");
        for k in &keys {
            cache.put_local(k, &k[..16]);
        }
    }
    let mut bytes = std::fs::read(&path).expect("read");
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    for b in bytes[HEADER_BYTES..].iter_mut().step_by(3) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&path, &bytes).expect("write");
    let (cache, opened) = SessionCache::open(&path, size, 300, 1).expect("reopen");
    assert_eq!(opened, Opened::Reused, "the header is intact");
    for k in &keys {
        if let Some(v) = cache.get_local(k) {
            assert_eq!(v, &k[..16]);
        }
        cache.put_local(k, b"again");
        assert_eq!(cache.get_local(k).as_deref(), Some(&b"again"[..]));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, bool),
    Get(u8),
    Take(u8),
}

fn op(keys: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..keys, any::<u8>(), any::<bool>()).prop_map(|(k, v, live)| Op::Put(k, v, live)),
        (0..keys).prop_map(Op::Get),
        (0..keys).prop_map(Op::Take),
    ]
}

fn key_of(k: u8) -> Vec<u8> {
    vec![k; 32]
}

fn value_of(k: u8, v: u8) -> Vec<u8> {
    let mut value = vec![v; 100 + usize::from(v)];
    value[0] = k;
    value
}

proptest! {
    /// With no more keys than ways, nothing is ever evicted: the cache
    /// answers exactly as a HashMap whose expired entries are absent.
    #[test]
    fn behaves_like_a_hashmap_when_nothing_is_evicted(ops in proptest::collection::vec(op(WAYS as u8), 1..200)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(&dir, ONE_SET);
        let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Put(k, v, live) => {
                    let expiry = if live { far_future() } else { unix_now() - 1 };
                    prop_assert!(cache.put_local_until(&key_of(k), &value_of(k, v), expiry));
                    if live { model.insert(k, value_of(k, v)); } else { model.remove(&k); }
                }
                Op::Get(k) => prop_assert_eq!(cache.get_local(&key_of(k)), model.get(&k).cloned()),
                Op::Take(k) => prop_assert_eq!(cache.take_local(&key_of(k)), model.remove(&k)),
            }
        }
    }

    /// With more keys than fit, a lookup returns the latest value stored
    /// under that key, or nothing (evicted) — never an older or a foreign
    /// value; and a taken key is gone.
    #[test]
    fn under_eviction_returns_the_latest_value_or_nothing(ops in proptest::collection::vec(op(40), 1..400)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(&dir, ONE_SET);
        let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Put(k, v, _) => {
                    prop_assert!(cache.put_local(&key_of(k), &value_of(k, v)));
                    model.insert(k, value_of(k, v));
                }
                Op::Get(k) => {
                    if let Some(got) = cache.get_local(&key_of(k)) {
                        prop_assert_eq!(Some(&got), model.get(&k));
                    }
                }
                Op::Take(k) => {
                    let expected = model.remove(&k);
                    if let Some(got) = cache.take_local(&key_of(k)) {
                        prop_assert_eq!(Some(got), expected);
                    }
                    prop_assert_eq!(cache.get_local(&key_of(k)), None);
                }
            }
        }
    }
}

/// A value that proves its own integrity: key byte, writer, counter, and a
/// checksum over them, padded to a realistic session size.
fn self_checking_value(key: u8, writer: u8, n: u32) -> Vec<u8> {
    let mut v = vec![key, writer];
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(150, (n % 251) as u8);
    let sum = v
        .iter()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn check_value(key: u8, v: &[u8]) {
    assert_eq!(v.len(), 154, "length");
    assert_eq!(v[0], key, "a foreign key's value");
    let sum = v[..150]
        .iter()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
    assert_eq!(&v[150..], &sum.to_le_bytes(), "a torn value");
}

/// Threads hammer one set with puts, gets and takes: no reader ever sees a
/// torn or foreign value, and each stored ticket is taken at most once.
#[test]
fn concurrent_threads_never_see_torn_or_foreign_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(cache_in(&dir, ONE_SET));
    let taken = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let cache = Arc::clone(&cache);
            let taken = Arc::clone(&taken);
            std::thread::spawn(move || {
                for n in 0..20_000u32 {
                    let key = ((n.wrapping_mul(7) + u32::from(t)) % 12) as u8;
                    match n % 3 {
                        0 => {
                            cache.put_local(&key_of(key), &self_checking_value(key, t, n));
                        }
                        1 => {
                            if let Some(v) = cache.get_local(&key_of(key)) {
                                check_value(key, &v);
                            }
                        }
                        _ => {
                            if let Some(v) = cache.take_local(&key_of(key)) {
                                check_value(key, &v);
                                taken.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no thread panicked");
    }
    let inserts = cache
        .counters
        .iter()
        .map(|c| c.inserts.load(Ordering::Relaxed))
        .sum::<u64>();
    assert!(taken.load(Ordering::Relaxed) <= inserts);
}

/// Many threads race to take the same ticket: exactly one wins, every time.
#[test]
fn racing_takers_redeem_a_ticket_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(cache_in(&dir, 1 << 20));
    for round in 0..300u32 {
        let key = round.to_le_bytes().repeat(8);
        assert!(cache.put_local(&key, b"single-use"));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let winners: u32 = (0..4)
            .map(|_| {
                let (cache, barrier, key) = (Arc::clone(&cache), Arc::clone(&barrier), key.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    u32::from(cache.take_local(&key).is_some())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("taker"))
            .sum();
        assert_eq!(winners, 1, "round {round}");
    }
}
