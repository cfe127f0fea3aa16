//! Replays the inputs kept for the fuzz targets of `fuzz/` through the same
//! entry functions the targets call (`tlsfront::fuzzing::*`), on the stable
//! toolchain and without sanitizers: every crash the fuzzer found stays
//! fixed. Inputs: `fuzz/regressions/<target>/*` (crashes, kept by
//! scripts/fuzz.sh) and `fuzz/seeds/<target>/*` (the seed corpus).

use std::path::{Path, PathBuf};

use tlsfront::fuzzing;
use tlsfront::tickets::{KeySource, TicketKeyRing};
use tlsfront_tests::temp_dir;

/// Every file under `fuzz/{regressions,seeds}/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("reading a fuzz input directory").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `body` on every input of `target`; reports all failing files at once.
fn replay(target: &str, body: impl Fn(&[u8])) {
    let files = inputs(target);
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("reading a fuzz input");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&data)));
        if outcome.is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail (the panic messages are above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn config() {
    replay("config", fuzzing::config);
}

#[test]
fn cache_file() {
    let dir = temp_dir();
    replay("cache_file", |data| fuzzing::cache_file(dir.path(), data));
}

#[test]
fn ticket_open() {
    let dir = temp_dir();
    let (ring, _) = TicketKeyRing::open(
        &dir.path().join("fuzz.tickets"),
        3,
        3600,
        KeySource::Random,
        1,
    )
    .expect("opening a ticket ring");
    replay("ticket_open", |data| fuzzing::ticket_open(&ring, data));
}

#[test]
fn packet() {
    replay("packet", fuzzing::packet);
}
