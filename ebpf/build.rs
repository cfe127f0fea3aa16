//! Relink the eBPF object when bpf-linker changes (as the aya template does):
//! cargo does not track the linker binary on its own.
use std::{env, path::Path};

fn main() {
    let path = env::var_os("PATH").unwrap_or_default();
    if let Some(linker) = env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| Path::new(candidate).is_file())
    {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
