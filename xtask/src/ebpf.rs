//! The lessons' eBPF programs, built all at once.
//!
//! On its own, each step's `build.rs` builds its eBPF program with aya-build, in a target folder of
//! its own (under `OUT_DIR`): the BPF target's `core` is then compiled once per step, per profile
//! and per architecture, 26 times in a full `cargo xtask test`. So `cargo xtask` builds the
//! programs itself, the way aya-build would, in one cargo run per workspace and architecture with
//! one target folder, and names the folder of the objects in `LISTEN_TRACE_EBPF_OBJECTS`; each
//! `build.rs` then copies its object from there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::pinned::{Toolchain, own_build_dir, run_cargo, target_dir};

/// The variable each step's `build.rs` reads (see there).
pub const OBJECTS_VARIABLE: &str = "LISTEN_TRACE_EBPF_OBJECTS";

/// The BPF target of every machine the lessons run on (all little-endian).
const BPF_TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF crates `packages` of the workspace at `tree` for a host of architecture `arch`
/// (`x86_64` or `aarch64`: the eBPF side reads kprobe arguments from that architecture's registers),
/// with `target_dir/ebpf/ARCH` as cargo's target and build folder. Returns the folder of the objects.
///
/// Each tree (this workspace, a clean checkout, a scratch copy) keeps its own build folder here.
/// cargo names a workspace's own packages by their path from the workspace root, so a lesson's
/// kernel side built in two trees takes one place in a shared folder; bpf-linker writes its output
/// in place, and cargo hard-links that output into the tree's target folder, so one tree's build
/// would change the other's object under its feet (seen: lesson 13 loading the object of
/// an exercise's solution).
pub fn build(
    toolchain: &Toolchain,
    tree: &Path,
    target_dir: &Path,
    arch: &str,
    packages: &[String],
) -> anyhow::Result<PathBuf> {
    let ebpf_target = target_dir.join("ebpf").join(arch);
    let mut args = vec!["build", "--release", "--bins", "--target", BPF_TARGET];
    // No prebuilt `core` for this target: it is built from rust-src (RUSTC_BOOTSTRAP=1 lets the
    // pinned stable toolchain take `-Z`).
    args.extend(["-Z", "build-std=core"]);
    for package in packages {
        args.extend(["--package", package.as_str()]);
    }
    let mut command = toolchain.cargo(&args);
    command
        .current_dir(tree)
        .arg("--target-dir")
        .arg(&ebpf_target)
        .env("RUSTC_BOOTSTRAP", "1")
        // The flags aya-build passes: the architecture, and debug info, which becomes the BTF.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        .env_remove(OBJECTS_VARIABLE);
    own_build_dir(&mut command, &ebpf_target);
    run_cargo(
        &format!(
            "build the eBPF programs for {arch} ({})",
            packages.join(", ")
        ),
        &mut command,
    )?;
    Ok(ebpf_target.join(BPF_TARGET).join("release"))
}

/// Builds the eBPF crates `packages` of this workspace for a host of architecture `arch`, and lets
/// `command` (a cargo command in this workspace that builds their steps) take them.
pub fn build_for(
    toolchain: &Toolchain,
    command: &mut Command,
    packages: &[String],
    arch: &str,
) -> anyhow::Result<()> {
    let objects = build(
        toolchain,
        &crate::workspace_root(),
        &target_dir(),
        arch,
        packages,
    )?;
    command.env(OBJECTS_VARIABLE, objects);
    Ok(())
}

/// The architecture of this machine, as the eBPF build names it.
pub fn this_arch() -> &'static str {
    std::env::consts::ARCH
}
