//! Builds the eBPF programs (`../ebpf`, crate `tlsfront-ebpf`) on every normal
//! `cargo build` of this crate, through aya-build.
//!
//! aya-build runs `rustup run nightly cargo build --package tlsfront-ebpf
//! --bins --release --target bpfel-unknown-none -Z build-std=core` (bpf-linker
//! links the object) with its own target dir under `OUT_DIR`, then copies the
//! object to `$OUT_DIR/tlsfront-ebpf`. That path is exported to the crate as
//! the compile-time env var `TLSFRONT_EBPF_OBJECT`. (aya-build runs in a child
//! process so that the inner cargo's progress lines can be filtered out, see
//! `main`.)
//!
//! ```ignore
//! static EBPF: &[u8] = aya::include_bytes_aligned!(env!("TLSFRONT_EBPF_OBJECT"));
//! ```
//!
//! Environment:
//! - `TLSFRONT_EBPF_TOOLCHAIN`: rustup toolchain for the eBPF build
//!   (default `nightly`, the one `scripts/setup.sh` expects to be installed).
//! - `AYA_BUILD_SKIP=1`: skip the eBPF build (no nightly / bpf-linker needed);
//!   if no object was built before in this OUT_DIR, an EMPTY placeholder file
//!   is written instead, which the loader must treat as "eBPF unavailable"
//!   (fall back to `net.steering = reuseport`).
//!
//! Prerequisites (installed by `scripts/setup.sh`): the `nightly` toolchain
//! with `rust-src`, and `bpf-linker` 0.13.0 (LLVM 22) on `PATH`.

use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{self, Command, Stdio},
};

use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "tlsfront-ebpf";
/// Name of the `[[bin]]` target in `ebpf/Cargo.toml`; aya-build copies it to
/// `$OUT_DIR/<name>`.
const EBPF_BIN: &str = "tlsfront-ebpf";
const TOOLCHAIN_VAR: &str = "TLSFRONT_EBPF_TOOLCHAIN";
const SKIP_VAR: &str = "AYA_BUILD_SKIP";
/// Set when this build script re-runs itself to call aya-build (see below).
const CHILD_VAR: &str = "TLSFRONT_EBPF_BUILD_CHILD";

fn main() {
    if env::var_os(CHILD_VAR).is_some() {
        child_main();
        return;
    }

    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let repo_root = manifest_dir
        .parent()
        .expect("frontend/ lives inside the repository root");
    let ebpf_dir = repo_root.join("ebpf");
    let shared_dir = repo_root.join("shared");

    // aya-build itself emits rerun-if-changed for the whole ebpf/ directory.
    // The eBPF crate also depends on ../shared, which cargo does not see from
    // here.
    println!(
        "cargo:rerun-if-changed={}",
        shared_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        shared_dir.join("src").display()
    );
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");

    let object = out_dir.join(EBPF_BIN);
    println!("cargo:rustc-env=TLSFRONT_EBPF_OBJECT={}", object.display());

    if skip_requested() {
        if !object.exists() {
            fs::write(&object, b"").unwrap_or_else(|e| {
                panic!(
                    "cannot write placeholder eBPF object {}: {e}",
                    object.display()
                )
            });
        }
        println!(
            "cargo:warning={SKIP_VAR} is set: eBPF programs not built, {} is {}",
            object.display(),
            if object.metadata().is_ok_and(|m| m.len() == 0) {
                "an empty placeholder"
            } else {
                "left from an earlier build"
            }
        );
        return;
    }

    match find_in_path("bpf-linker") {
        // Relink when bpf-linker is reinstalled (ebpf/build.rs does the same
        // inside the eBPF build so that cargo there relinks too).
        Some(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        None => panic!(
            "bpf-linker not found on PATH; it is needed to link the eBPF programs in {}. \
             Run scripts/setup.sh (installs bpf-linker 0.13.0 for LLVM 22), \
             or set {SKIP_VAR}=1 to build without eBPF steering.",
            ebpf_dir.display()
        ),
    }

    // aya-build forwards every line the inner cargo prints ("Compiling core",
    // "Finished", ...) as `cargo:warning=`, and cargo replays those warnings
    // on every later no-op build. So run aya-build in a child process (this
    // same build script, in child mode) and forward only what matters: all
    // `cargo:` directives, and warnings that are not cargo progress lines
    // (e.g. rustc diagnostics for the eBPF code). The full log goes to stderr,
    // which cargo shows when the build fails (and with -vv).
    let exe = env::current_exe().expect("path of the running build script");
    let mut child = Command::new(&exe)
        .env(CHILD_VAR, "1")
        // aya-build runs `cargo build --package tlsfront-ebpf` in the current
        // directory. The eBPF crate is excluded from the root workspace (it
        // only builds for bpfel-unknown-none) and is its own workspace, so
        // that cargo must run inside ebpf/: it then uses ebpf/Cargo.toml's
        // profiles and ebpf/Cargo.lock.
        .current_dir(&ebpf_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} for the eBPF build: {e}", exe.display()));
    let child_stdout = child.stdout.take().expect("child stdout is piped");
    for line in BufReader::new(child_stdout).lines() {
        let line = line.expect("reading the output of the eBPF build");
        eprintln!("{line}");
        let warning = line
            .strip_prefix("cargo:warning=")
            .or_else(|| line.strip_prefix("cargo::warning="));
        match warning {
            Some(message) if is_cargo_progress(message) => {}
            _ => println!("{line}"),
        }
    }
    let status = child.wait().expect("waiting for the eBPF build");
    if !status.success() {
        panic!(
            "building the eBPF programs ({EBPF_PACKAGE} in {}) failed ({status}); \
             see the cargo/rustc output above: a compile error in the eBPF \
             crate, or a missing prerequisite: the rustup toolchain `{}` with \
             rust-src, bpf-linker 0.13.0 (scripts/setup.sh installs both). \
             {SKIP_VAR}=1 builds without eBPF.",
            ebpf_dir.display(),
            toolchain_name(),
        );
    }

    assert!(
        object.is_file(),
        "aya-build succeeded but the eBPF object {} is missing \
         (is the [[bin]] in ebpf/Cargo.toml still named `{EBPF_BIN}`?)",
        object.display()
    );
}

/// Same rule aya-build applies to `AYA_BUILD_SKIP`.
fn skip_requested() -> bool {
    env::var_os(SKIP_VAR).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| Path::new(candidate).is_file())
}

/// Child mode: the actual aya-build call. Runs with the parent's environment
/// (OUT_DIR, CARGO_CFG_*, ...) and ebpf/ as current directory; its stdout is
/// filtered by the parent.
fn child_main() {
    let ebpf_dir = env::current_dir().expect("current directory of the eBPF build");
    let ebpf_dir = ebpf_dir
        .to_str()
        .unwrap_or_else(|| panic!("eBPF crate path {} is not UTF-8", ebpf_dir.display()));
    let name = toolchain_name();
    let toolchain = if name == "nightly" {
        Toolchain::Nightly
    } else {
        Toolchain::Custom(&name)
    };
    let result = aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        toolchain,
    );
    if let Err(e) = result {
        eprintln!("aya-build: {e:#}");
        process::exit(1);
    }
}

/// Rustup toolchain for the eBPF build: `$TLSFRONT_EBPF_TOOLCHAIN`, else
/// `nightly`, i.e. whatever nightly rustup has installed under that name (it
/// is used as installed: `rustup run` neither installs nor updates it).
fn toolchain_name() -> String {
    env::var(TOOLCHAIN_VAR)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "nightly".to_owned())
}

/// Status lines of the inner cargo ("   Compiling core v0.0.0", "Finished",
/// "Downloaded ...") that aya-build turns into warnings.
fn is_cargo_progress(message: &str) -> bool {
    const VERBS: &[&str] = &[
        "Adding",
        "Blocking",
        "Building",
        "Checking",
        "Compiling",
        "Downgrading",
        "Downloaded",
        "Downloading",
        "Finished",
        "Fresh",
        "Locking",
        "Removing",
        "Running",
        "Unpacking",
        "Updating",
    ];
    let message = message.trim_start();
    message.is_empty()
        || VERBS.iter().any(|verb| {
            message
                .strip_prefix(verb)
                .is_some_and(|rest| rest.starts_with(' '))
        })
}
