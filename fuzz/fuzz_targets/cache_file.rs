//! The session cache on an attacker-controlled cache file; see
//! `tlsfront::fuzzing::cache_file`. The file lives in a directory of this
//! process on /dev/shm (tmpfs: no disk I/O per run), removed at exit by
//! scripts/fuzz.sh.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("TLSFRONT_FUZZ_DIR")
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let dir = base.join(format!("tlsfront-fuzz-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz scratch directory");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::cache_file(dir(), data));
