//! Commands that load eBPF programs or enter a network namespace need root. For a learner who is not
//! root they build as the learner (rustup's cargo lives in the learner's home, and `sudo cargo`
//! usually finds none), then run the same command again through sudo, told by `--built` that the
//! builds are done and where they are: root builds nothing and writes only what the command makes.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Whether this process is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `sudo` is installed.
pub fn has_sudo() -> bool {
    Command::new("sudo")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs the rest of this command as root. `Ok(true)`: it ran through sudo, and succeeded;
/// `Ok(false)`: we are root (or already the run through sudo) and go on ourselves.
pub fn rest_through_sudo(what: &str) -> anyhow::Result<bool> {
    if is_root() {
        return Ok(false);
    }
    if !has_sudo() {
        bail!(
            "{what} needs root (loading eBPF programs and entering a network namespace do): run it \
             as root, or install sudo and give this user sudo rights"
        );
    }
    eprintln!("    not root: {what} goes on through sudo (the builds stay yours)");
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let status = Command::new("sudo")
        .arg("--preserve-env=RUST_LOG")
        .arg(exe)
        .arg("--built")
        .arg(crate::pinned::target_dir())
        .args(std::env::args_os().skip(1))
        .status()
        .context("cannot run sudo")?;
    if !status.success() {
        bail!("{what} failed (through sudo: {status})");
    }
    Ok(true)
}

/// Gives a file that root wrote for the user who ran sudo back to that user.
pub fn give_back(path: &Path) -> anyhow::Result<()> {
    let id = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|id| id.parse::<u32>().ok())
    };
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("cannot give {} back to uid {uid}", path.display()))?;
    }
    Ok(())
}
