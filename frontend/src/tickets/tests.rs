//! The ticket-key ring against its specification.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::seal::SALT_LEN;

const PERIOD: u64 = 3600;
/// The start of the current epoch: rings built "now" are at this epoch, and
/// tests move time forward from it to control when rotations happen.
fn t0() -> u64 {
    unix_now() / PERIOD * PERIOD
}

fn ring_at(path: &Path, source: KeySource) -> TicketKeyRing {
    let (ring, _) = TicketKeyRing::open(path, 3, PERIOD, source, 2).expect("open ring");
    ring
}

fn secret_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 48]).expect("write secret");
    path
}

#[test]
fn a_sealed_ticket_opens_and_carries_the_name_of_the_current_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring_at(&dir.path().join("r"), KeySource::Random);
    let ticket = ring.seal_at(t0(), b"session state").expect("seal");
    assert_eq!(ticket.len(), NAME_LEN + SALT_LEN + 12 + 13 + 16);
    assert_eq!(
        ring.open_at(t0(), &ticket).as_deref(),
        Some(&b"session state"[..])
    );
    assert_eq!(ring.counters().decrypted_current.load(Ordering::Relaxed), 1);
}

#[test]
fn a_tampered_ticket_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring_at(&dir.path().join("r"), KeySource::Random);
    let ticket = ring.seal_at(t0(), b"session state").expect("seal");
    for i in [
        0,
        NAME_LEN,
        NAME_LEN + SALT_LEN,
        NAME_LEN + SALT_LEN + 12,
        ticket.len() - 1,
    ] {
        let mut bad = ticket.clone();
        bad[i] ^= 0x01;
        assert_eq!(ring.open_at(t0(), &bad), None, "flipped byte {i}");
    }
    assert_eq!(ring.open_at(t0(), &ticket[..20]), None, "short");
    assert_eq!(ring.open_at(t0(), &[]), None, "empty");
    assert_eq!(ring.counters().decrypt_failures.load(Ordering::Relaxed), 7);
}

#[test]
fn a_ticket_survives_one_rotation_and_dies_when_the_ring_has_turned_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring_at(&dir.path().join("r"), KeySource::Random);
    let ticket = ring.seal_at(t0() + PERIOD - 1, b"s").expect("seal");
    assert!(
        ring.open_at(t0() + PERIOD, &ticket).is_some(),
        "after one rotation"
    );
    assert_eq!(
        ring.counters().decrypted_previous.load(Ordering::Relaxed),
        1
    );
    assert!(
        ring.open_at(t0() + 2 * PERIOD, &ticket).is_none(),
        "after the ring turned over"
    );
}

#[test]
fn the_advertised_lifetime_never_outlives_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ring, _) =
        TicketKeyRing::open(&dir.path().join("r"), 5, PERIOD, KeySource::Random, 1).expect("open");
    assert_eq!(ring.lifetime_secs(), 3 * PERIOD);
    // Issued at the last second of its epoch, still open after `lifetime`.
    let ticket = ring.seal_at(t0() + PERIOD - 1, b"s").expect("seal");
    assert!(ring
        .open_at(t0() + PERIOD - 1 + ring.lifetime_secs(), &ticket)
        .is_some());
    ring.set_rotate_secs(30 * 24 * 3600);
    assert_eq!(ring.lifetime_secs(), 7 * 24 * 3600, "RFC 8446 cap");
}

#[test]
fn every_process_mapping_the_ring_sees_the_same_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let a = ring_at(&path, KeySource::Random);
    let b = ring_at(&path, KeySource::Random);
    let ticket = a.seal_at(t0(), b"s").expect("seal");
    assert!(b.open_at(t0(), &ticket).is_some());
    // A rotation done by one is seen by the other, and done only once.
    let later = a.seal_at(t0() + PERIOD, b"s").expect("seal after rotation");
    assert!(b.open_at(t0() + PERIOD, &later).is_some());
    let rotations: u64 = [&a, &b]
        .iter()
        .flat_map(|r| r.counters.iter())
        .map(|c| c.rotations.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        rotations, 2,
        "the first build and one rotation, by one party each"
    );
}

#[test]
fn random_keys_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let ticket = ring_at(&path, KeySource::Random)
        .seal_at(t0(), b"s")
        .expect("seal");
    let (ring, opened) =
        TicketKeyRing::open(&path, 3, PERIOD, KeySource::Random, 1).expect("reopen");
    assert_eq!(opened, Opened::Reused);
    assert!(ring.open_at(t0(), &ticket).is_some());
}

#[test]
fn hosts_sharing_a_secret_file_accept_each_others_tickets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path(), "secret", 7);
    let source = || KeySource::from_file(&secret).expect("secret");
    let a = ring_at(&dir.path().join("host-a"), source());
    let b = ring_at(&dir.path().join("host-b"), source());
    let ticket = a.seal_at(t0(), b"s").expect("seal");
    assert!(b.open_at(t0(), &ticket).is_some(), "same epoch");
    // Host b's clock one period ahead: the ticket is its previous key's.
    assert!(b.open_at(t0() + PERIOD, &ticket).is_some(), "clock ahead");
    // A host whose clock is one period ahead seals with what is still the
    // next key here.
    let ahead = a.seal_at(t0() + PERIOD, b"s").expect("seal ahead");
    let c = ring_at(&dir.path().join("host-c"), source());
    assert!(c.open_at(t0(), &ahead).is_some(), "clock ahead of ours");
    assert_eq!(c.counters().decrypted_next.load(Ordering::Relaxed), 1);
}

#[test]
fn a_different_secret_does_not_open_the_ticket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = KeySource::from_file(&secret_file(dir.path(), "one", 1)).expect("secret");
    let two = KeySource::from_file(&secret_file(dir.path(), "two", 2)).expect("secret");
    let ticket = ring_at(&dir.path().join("a"), one)
        .seal_at(t0(), b"s")
        .expect("seal");
    assert!(ring_at(&dir.path().join("b"), two)
        .open_at(t0(), &ticket)
        .is_none());
}

#[test]
fn changing_the_secret_replaces_the_shared_ring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let one = KeySource::from_file(&secret_file(dir.path(), "one", 1)).expect("secret");
    let two = KeySource::from_file(&secret_file(dir.path(), "two", 2)).expect("secret");
    let ticket = ring_at(&path, one).seal_at(t0(), b"s").expect("seal");
    assert!(ring_at(&path, two).open_at(t0(), &ticket).is_none());
}

#[test]
fn a_short_secret_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("short");
    std::fs::write(&path, [1u8; 31]).expect("write");
    let err = KeySource::from_file(&path)
        .expect_err("too short")
        .to_string();
    assert!(
        err.contains(&*path.to_string_lossy()) && err.contains("31 bytes"),
        "{err}"
    );
}

#[test]
fn a_key_count_below_three_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TicketKeyRing::open(&dir.path().join("r"), 2, PERIOD, KeySource::Random, 1)
        .expect_err("two keys");
    assert!(matches!(err, TicketError::KeyCount(2)));
}

#[test]
fn the_secret_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = KeySource::from_file(&secret_file(dir.path(), "s", b'Z')).expect("secret");
    let ring = ring_at(&dir.path().join("r"), source);
    let shown = format!("{ring:?}");
    assert!(
        !shown.contains("ZZZZ") && !shown.contains("90, 90"),
        "{shown}"
    );
}

/// Threads seal and open at full speed while the epoch turns under them:
/// not one ticket fails.
#[test]
fn a_rotation_under_load_fails_no_ticket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let rings: Vec<Arc<TicketKeyRing>> = (0..2)
        .map(|_| Arc::new(ring_at(&path, KeySource::Random)))
        .collect();
    let clock = Arc::new(AtomicU64::new(t0() + PERIOD - 1));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (ring, other) = (Arc::clone(&rings[i % 2]), Arc::clone(&rings[(i + 1) % 2]));
            let (clock, stop) = (Arc::clone(&clock), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sealed_at = clock.load(Ordering::Relaxed);
                    let ticket = ring.seal_at(sealed_at, &n.to_le_bytes()).expect("seal");
                    // The client comes back within one period (on a loaded
                    // machine this thread may sleep through several clock
                    // steps; a ticket two periods old is rightly refused).
                    let now = clock.load(Ordering::Relaxed).min(sealed_at + PERIOD);
                    if other.open_at(now, &ticket) != Some(n.to_le_bytes().to_vec()) {
                        let (a, b) = (ring.decoded.load(), other.decoded.load());
                        panic!(
                            "sealed at epoch {} opened at {}: sealing ring epoch {} publication {:#x}, opening ring epoch {} publication {:#x}, shared publication {:#x}",
                            sealed_at / PERIOD, now / PERIOD, a.epoch, a.current, b.epoch, b.current,
                            ring.words()[W_CURRENT].load(Ordering::Relaxed)
                        );
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for step in 1..=3 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        clock.store(t0() + PERIOD * step, Ordering::Relaxed);
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("no failure"))
        .sum();
    assert!(total > 0);
}

fn rotations(rings: &[&TicketKeyRing]) -> u64 {
    rings
        .iter()
        .flat_map(|r| r.counters.iter())
        .map(|c| c.rotations.load(Ordering::Relaxed))
        .sum()
}

/// A `--takeover` that changes `tickets.rotate_interval`: the newcomer follows
/// the ring of the process still running, and the two never rotate against
/// each other.
#[test]
fn a_second_process_with_another_period_follows_the_ring_and_never_rotates_against_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let old = ring_at(&path, KeySource::Random);
    let (new, _) = TicketKeyRing::open(&path, 3, 2 * PERIOD, KeySource::Random, 1).expect("open");
    assert_eq!(new.rotate_secs(), PERIOD, "follows the ring's period");
    let before = rotations(&[&old, &new]);
    let mut tickets = Vec::new();
    for i in 0..20 {
        let (a, b) = if i % 2 == 0 {
            (&old, &new)
        } else {
            (&new, &old)
        };
        let ticket = a.seal_at(t0(), b"s").expect("seal");
        assert!(b.open_at(t0(), &ticket).is_some(), "round {i}");
        tickets.push(ticket);
    }
    assert_eq!(rotations(&[&old, &new]), before, "nobody rotated");
    for t in &tickets {
        assert!(old.open_at(t0(), t).is_some() && new.open_at(t0(), t).is_some());
    }
    // The newcomer's reload applies its period; the old one follows it,
    // and every ticket issued before still opens.
    new.set_rotate_secs(2 * PERIOD);
    assert_eq!(new.rotate_secs(), 2 * PERIOD);
    for t in &tickets {
        assert!(
            old.open_at(t0(), t).is_some(),
            "old process after the change"
        );
        assert!(
            new.open_at(t0(), t).is_some(),
            "new process after the change"
        );
    }
    assert_eq!(old.rotate_secs(), 2 * PERIOD, "the old process follows");
}

/// A rotator killed half-way leaves its half-written buffer unpublished:
/// the published ring, and every ticket it sealed, is intact.
#[test]
fn a_rotation_killed_half_way_loses_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let ring = ring_at(&path, KeySource::Random);
    let ticket = ring.seal_at(t0(), b"s").expect("seal");
    // What a rotator killed mid-write leaves: the other buffer scribbled,
    // the publication word untouched (the flock died with it).
    let current = ring.words()[W_CURRENT].load(Ordering::Relaxed);
    for w in ring.buffer(current ^ 1) {
        w.store(0xdead_beef, Ordering::Relaxed);
    }
    let restarted = ring_at(&path, KeySource::Random);
    assert!(
        restarted.open_at(t0(), &ticket).is_some(),
        "after the crash"
    );
    // The next rotation rewrites that buffer whole, and the key survives.
    let later = t0() + PERIOD;
    assert!(
        restarted.open_at(later, &ticket).is_some(),
        "after the next rotation"
    );
}

/// A process that holds the rotation lock forever (stuck, or hostile)
/// delays rotations; it never makes anyone wait or lose a key.
#[test]
fn a_held_rotation_lock_delays_the_rotation_and_blocks_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let ring = ring_at(&path, KeySource::Random);
    let ticket = ring.seal_at(t0(), b"s").expect("seal");
    let holder = std::fs::File::open(crate::shm::sibling(&path, ".lock")).expect("open lock");
    holder.lock().expect("hold");
    let start = std::time::Instant::now();
    let later = t0() + PERIOD;
    assert!(ring.seal_at(later, b"s").is_some());
    assert!(ring.open_at(later, &ticket).is_some());
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        ring.decoded.load().epoch,
        t0() / PERIOD,
        "not rotated meanwhile"
    );
    drop(holder);
    assert!(ring.open_at(later, &ticket).is_some());
    assert_eq!(
        ring.decoded.load().epoch,
        later / PERIOD,
        "rotated once free"
    );
}

/// Keys derived from a `file:` secret are recomputed by each process: the
/// shared file holds their epochs, not the keys.
#[test]
fn derived_keys_are_not_stored_in_the_shared_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let source = KeySource::from_file(&secret_file(dir.path(), "s", 9)).expect("secret");
    let ring = ring_at(&path, source.clone());
    let ticket = ring.seal_at(t0(), b"s").expect("seal");
    let bytes = std::fs::read(&path).expect("read ring file");
    for epoch in t0() / PERIOD - 1..=t0() / PERIOD + 1 {
        let material = source.key_for(epoch).expect("derive");
        assert!(
            !bytes
                .windows(8)
                .any(|w| w == &material[NAME_LEN..NAME_LEN + 8]),
            "key of epoch {epoch} found in the file"
        );
    }
    let other = ring_at(&path, source);
    assert!(
        other.open_at(t0(), &ticket).is_some(),
        "recomputed from the epoch"
    );
}

/// Changing the period keeps every key of a `file:` ring (each entry keeps
/// the epoch it was derived for).
#[test]
fn a_period_change_keeps_the_keys_of_a_secret_ring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = KeySource::from_file(&secret_file(dir.path(), "s", 4)).expect("secret");
    let ring = ring_at(&dir.path().join("r"), source);
    let ticket = ring.seal_at(t0(), b"s").expect("seal");
    ring.set_rotate_secs(2 * PERIOD);
    assert!(ring.open_at(unix_now(), &ticket).is_some());
}

#[test]
fn an_all_zero_key_is_never_used() {
    assert!(decode_key(&[0u64; ENTRY_WORDS - 1]).is_none());
}

/// The ring's mapping holds random keys: it is kept out of core dumps
/// (and locked in RAM where the memlock limit allows: 4 KiB fits the
/// default 64 KiB-8 MiB limits).
#[test]
fn the_ring_mapping_is_excluded_from_core_dumps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let ring = ring_at(&path, KeySource::Random);
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let name = path.display().to_string();
    let block: String = smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.trim_end().ends_with(&name))
        .skip(1)
        .take_while(|l| {
            !l.contains(" /")
                && !l.starts_with(|c: char| {
                    c.is_ascii_hexdigit() && l.contains('-') && l.split_whitespace().count() >= 5
                })
        })
        .collect();
    let flags = block
        .lines()
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .unwrap_or_else(|| panic!("no VmFlags for {name} in smaps:\n{block}"));
    assert!(
        flags.split_whitespace().any(|f| f == "dd"),
        "VmFlags:{flags}"
    );
    drop(ring);
}

/// Each ticket has a key of its own (a fresh salt through HKDF): two
/// tickets of the same plaintext share no key stream, and a ticket whose
/// salt is changed does not open.
#[test]
fn every_ticket_is_sealed_with_its_own_derived_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = ring_at(&dir.path().join("r"), KeySource::Random);
    let a = ring.seal_at(t0(), b"same plaintext").expect("seal");
    let b = ring.seal_at(t0(), b"same plaintext").expect("seal");
    assert_eq!(a[..NAME_LEN], b[..NAME_LEN], "same epoch key");
    assert_ne!(
        a[NAME_LEN..NAME_LEN + SALT_LEN],
        b[NAME_LEN..NAME_LEN + SALT_LEN]
    );
    let body = NAME_LEN + SALT_LEN + 12;
    assert_ne!(a[body..], b[body..]);
    let mut moved = a.clone();
    moved[NAME_LEN..NAME_LEN + SALT_LEN].copy_from_slice(&b[NAME_LEN..NAME_LEN + SALT_LEN]);
    assert_eq!(ring.open_at(t0(), &moved), None);
}

/// A ticket sealed by the build before the sealing moved to `crate::seal`
/// (revision 3b08b9e), with the secret file of 48 bytes of 7 at unix time
/// 1,900,000,000: the format is the same, so it still opens.
const TICKET_OF_3B08B9E: &str = "96ceff4cd78ce1cf9895bbef564bf0953d9592603b55226917863a99b558bfcc45d41a2d65505d02e5046377e814846f7b1731109e78bbe4d4cad9b6df7d2616e4a0e9ade30153c0eb7f6d535a6dff0d47";

#[test]
fn a_ticket_sealed_by_an_earlier_build_with_the_same_secret_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path(), "secret", 7);
    let ring = ring_at(
        &dir.path().join("r"),
        KeySource::from_file(&secret).expect("secret"),
    );
    let ticket: Vec<u8> = (0..TICKET_OF_3B08B9E.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TICKET_OF_3B08B9E[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(
        ring.open_at(1_900_000_000, &ticket).as_deref(),
        Some(&b"fixture session state"[..])
    );
}
