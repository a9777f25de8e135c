//! Commands run with the pinned toolchain.

use std::{
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{Context as _, bail};
use support::PINNED_RUST;

use crate::workspace_root;

/// Where cargo puts what it builds (`CARGO_TARGET_DIR` is honoured, as cargo does; a run through
/// sudo uses the folder of the builds it continues).
pub fn target_dir() -> std::path::PathBuf {
    if let Some(built) = crate::sudo::built_in() {
        return built.to_path_buf();
    }
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), Into::into)
}

/// What `setup` established: the pinned toolchain and the bpf-linker built for it.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub name: &'static str,
}

impl Toolchain {
    pub fn pinned() -> Self {
        Self { name: PINNED_RUST }
    }

    /// `cargo +TOOLCHAIN ARGS` in the workspace root. The variables that the outer `cargo` (the one
    /// running xtask) set for us would otherwise leak into the inner builds.
    pub fn cargo(&self, args: &[&str]) -> Command {
        let mut command = Command::new("cargo");
        command
            .arg(format!("+{}", self.name))
            .args(args)
            .current_dir(workspace_root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env_remove("RUSTC_WRAPPER");
        command
    }
}

/// Runs `command`, printing it first and its duration after; fails when it fails.
pub fn run_step(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let status: ExitStatus = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "{what} failed ({status}) after {:.1} s",
            elapsed.as_secs_f64()
        );
    }
    eprintln!("    {what}: done in {:.1} s", elapsed.as_secs_f64());
    Ok(())
}
