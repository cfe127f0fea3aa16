//! Temporary directories and files a test owns.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A fresh temporary directory, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("tlsfront-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}
