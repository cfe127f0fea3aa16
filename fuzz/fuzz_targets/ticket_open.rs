//! The ticket-key ring on arbitrary tickets, and seal/open round trips; see
//! `tlsfront::fuzzing::ticket_open`. One ring (3 random keys, 1 h epochs)
//! per process, its file on /dev/shm, removed at exit by scripts/fuzz.sh.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use tlsfront::tickets::{KeySource, TicketKeyRing};

fn ring() -> &'static TicketKeyRing {
    static RING: OnceLock<TicketKeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let base = std::env::var_os("TLSFRONT_FUZZ_DIR")
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let path = base.join(format!("tlsfront-fuzz-{}.tickets", std::process::id()));
        TicketKeyRing::open(&path, 3, 3600, KeySource::Random, 1)
            .expect("opening the fuzz ticket ring")
            .0
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::ticket_open(ring(), data));
