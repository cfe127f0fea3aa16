//! Replays the inputs kept for the fuzz targets of `fuzz/` through the same
//! entry functions the targets call (`tlsfront::fuzzing::*`), on the stable
//! toolchain and without sanitizers: every crash the fuzzer found stays
//! fixed. Inputs: `fuzz/regressions/<target>/*` (crashes, kept by
//! scripts/fuzz.sh) and `fuzz/seeds/<target>/*` (the seed corpus).

use std::path::{Path, PathBuf};

use tlsfront::fuzzing;
use tlsfront::tickets::{KeySource, TicketKeyRing};
use tlsfront_tests::temp_dir;

/// The fuzz targets of `fuzz/`; each has a replay test below.
const TARGETS: &[&str] = &[
    "cache_file",
    "client_hello",
    "config",
    "packet",
    "proxy_header",
    "ticket_open",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file under `fuzz/{regressions,seeds}/<target>/`, sorted. The seed
/// corpus must exist and hold at least one input (a replay of nothing
/// proves nothing); regressions exist only for targets that crashed once.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = fuzz_dir();
    let mut files = Vec::new();
    let mut seeds = 0;
    for kind in ["regressions", "seeds"] {
        let dir = fuzz.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if kind == "regressions" && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        for entry in entries {
            let path = entry.expect("reading a fuzz input directory").path();
            if path.is_file() {
                files.push(path);
                seeds += usize::from(kind == "seeds");
            }
        }
    }
    assert!(
        seeds > 0,
        "fuzz/seeds/{target}/ holds no input: the replay would check nothing"
    );
    files.sort();
    files
}

/// Each target of `fuzz/Cargo.toml` is a thin wrapper around the entry
/// point of the same name that this file replays, so that what the fuzzer
/// runs cannot drift from what the suite checks.
#[test]
fn every_fuzz_target_wraps_the_entry_point_replayed_here() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|name| *name != "tlsfront-fuzz")
        .collect();
    bins.sort_unstable();
    assert_eq!(
        bins, TARGETS,
        "fuzz targets in fuzz/Cargo.toml vs replayed here"
    );
    for target in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let src =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            src.contains(&format!("tlsfront::fuzzing::{target}(")),
            "{} does not call tlsfront::fuzzing::{target}",
            path.display()
        );
    }
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

#[test]
fn client_hello() {
    replay("client_hello", fuzzing::client_hello);
}

#[test]
fn proxy_header() {
    replay("proxy_header", fuzzing::proxy_header);
}
