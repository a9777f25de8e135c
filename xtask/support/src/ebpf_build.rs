//! The `build.rs` of every step: compile the step's eBPF crate (`<step>/ebpf`) for the BPF target.
//!
//! We use `aya-build`, as aya-template does, rather than a separate `cargo xtask build-ebpf` step:
//! one `cargo build` then builds both sides, the eBPF object is embedded in the step binary with
//! `aya::include_bytes_aligned!`, and cargo rebuilds it whenever the kernel code changes.

use std::{env, path::Path};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

use crate::{BPF_LINKER, PINNED_RUST};

/// Builds the calling step's eBPF crate: the crate `<step>-ebpf` in its `ebpf/` folder, into
/// `OUT_DIR/<step>-ebpf`.
pub fn build_ebpf() -> anyhow::Result<()> {
    let step_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?;
    let package = format!(
        "{}-ebpf",
        env::var("CARGO_PKG_NAME").context("CARGO_PKG_NAME is not set")?
    );
    // This crate sits in `xtask/support/`, two levels below the workspace root.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .context("no workspace root")?;

    let pinned_rust_works = std::process::Command::new("rustup")
        .args(["run", PINNED_RUST, "rustc", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !pinned_rust_works {
        bail!(
            "the eBPF programs are built with Rust {PINNED_RUST}, which is not installed: run \
             `cargo xtask setup` (or `rustup toolchain install {PINNED_RUST} --component rust-src`)"
        );
    }

    let bpf_linker = workspace.join(BPF_LINKER);
    if !bpf_linker.exists() {
        bail!(
            "bpf-linker is missing ({}): run `cargo xtask setup`, which builds it against the \
             LLVM of Rust {PINNED_RUST}",
            bpf_linker.display()
        );
    }
    // A new bpf-linker (for example after a toolchain change) must relink the program.
    println!("cargo::rerun-if-changed={}", bpf_linker.display());
    // The eBPF crates use `common` too.
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("common/src").display()
    );

    // The eBPF target has no prebuilt `core`: it is built from rust-src with `-Z build-std=core`,
    // which a stable toolchain accepts with RUSTC_BOOTSTRAP=1 (aya-build passes it on).
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    // `cargo xtask` runs the outer cargo verbose to see which build scripts run (`pinned::run_cargo`
    // in xtask); the inner build stays as quiet as usual.
    // SAFETY: as above.
    unsafe { env::remove_var("CARGO_TERM_VERBOSE") };

    let root_dir = format!("{step_dir}/ebpf");
    let ebpf = Package {
        name: &package,
        root_dir: &root_dir,
        ..Default::default()
    };
    // Always the pinned toolchain, whatever builds the host side: its LLVM is bpf-linker's.
    aya_build::build_ebpf([ebpf], Toolchain::Custom(PINNED_RUST))
}
