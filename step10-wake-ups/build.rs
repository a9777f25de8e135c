//! Builds this lesson's kernel side, the crate in `ebpf/`, for the BPF target, as aya-template does:
//! one `cargo build` builds both sides, and `src/main.rs` embeds the eBPF object that lands in
//! `OUT_DIR`.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The kernel side's crate, in `ebpf/` (a build-dependency, so cargo runs us when it changes).
const EBPF_CRATE: &str = "step10-wake-ups-ebpf";

/// The Rust whose LLVM bpf-linker was built against (`rust-toolchain.toml` pins the same one).
const EBPF_TOOLCHAIN: &str = "1.98.0";

/// Set by `cargo xtask`, which builds the eBPF programs of all lessons at once (so the BPF target's
/// `core` is compiled once, not once per lesson): the folder where our object already is.
const PREBUILT_OBJECTS: &str = "LISTEN_TRACE_EBPF_OBJECTS";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    println!("cargo::rerun-if-env-changed={PREBUILT_OBJECTS}");
    if let Some(objects) = env::var_os(PREBUILT_OBJECTS) {
        let object = PathBuf::from(objects).join(EBPF_CRATE);
        println!("cargo::rerun-if-changed={}", object.display());
        fs::copy(&object, out_dir.join(EBPF_CRATE))
            .with_context(|| format!("no eBPF object at {}", object.display()))?;
        return Ok(());
    }

    // The BPF target has no prebuilt `core`: aya-build builds it from rust-src with
    // `-Z build-std=core`, which a stable toolchain accepts with RUSTC_BOOTSTRAP=1.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ebpf");
    // aya-build runs cargo here: from the crate's own folder, cargo takes it for a package of the
    // workspace (this repository's, or its own once copied out), not only for our build-dependency.
    env::set_current_dir(root_dir).context("no ebpf/ folder")?;
    let ebpf = Package {
        name: EBPF_CRATE,
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(EBPF_TOOLCHAIN)).context(
        "building the eBPF program failed (the warnings above say why; `linker … not found` \
         means bpf-linker is missing: `cargo xtask setup` in the repository builds it)",
    )
}
