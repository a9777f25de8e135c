//! `cargo xtask installed`: what the project's commands installed on this machine, and with
//! `--remove`, taking it away again.
//!
//! Each command that installs something machine-wide (a Debian package, the pinned Rust toolchain,
//! a Rust target) notes it, when it did install it, in a record outside the checkout
//! (`$XDG_STATE_HOME/listen-trace/installed`, by default `~/.local/state/...`), so that what was
//! there before is never taken away. What lives in the checkout (`.tools/`, the guests' downloads
//! in `target/vm/`) and a temporary learner account left by a killed run are found by looking.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{pinned::run_step, workspace_root};

#[derive(Debug, clap::Args)]
pub struct InstalledArgs {
    /// Remove it all: purge the packages, uninstall the toolchain and targets, delete `.tools/`
    /// and `target/vm/`, and a leftover learner account
    #[arg(long)]
    pub remove: bool,
}

/// What kind of thing a record line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Debian package, installed with apt-get.
    Package,
    /// A Rust toolchain, installed with rustup.
    Toolchain,
    /// A Rust target of the pinned toolchain, added with rustup.
    RustTarget,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::Package => "package",
            Self::Toolchain => "toolchain",
            Self::RustTarget => "rust-target",
        }
    }
}

/// The record's path: `$XDG_STATE_HOME/listen-trace/installed`, or `~/.local/state/...`.
fn record_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    state.join("listen-trace/installed")
}

/// Notes that a command installed `names` (each once). A record that cannot be written is
/// reported, never fatal: the install itself worked.
pub fn note(kind: Kind, names: &[&str]) {
    let path = record_path();
    let known = read();
    let mut add = String::new();
    for name in names {
        if !known.iter().any(|(k, n)| *k == kind && n == name) {
            add.push_str(&format!("{} {name}\n", kind.word()));
        }
    }
    if add.is_empty() {
        return;
    }
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut file| file.write_all(add.as_bytes()));
    if let Err(error) = written {
        eprintln!(
            "    warning: cannot note what was installed in {}: {error}",
            path.display()
        );
    }
}

/// The record's lines, parsed.
fn read() -> Vec<(Kind, String)> {
    parse(&fs::read_to_string(record_path()).unwrap_or_default())
}

fn parse(text: &str) -> Vec<(Kind, String)> {
    text.lines()
        .filter_map(|line| {
            let (word, name) = line.split_once(' ')?;
            let kind = [Kind::Package, Kind::Toolchain, Kind::RustTarget]
                .into_iter()
                .find(|kind| kind.word() == word)?;
            Some((kind, name.trim().to_string()))
        })
        .collect()
}

pub fn run(args: &InstalledArgs) -> anyhow::Result<()> {
    let record = read();
    let of = |kind: Kind| -> Vec<&str> {
        record
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, name)| name.as_str())
            .collect()
    };
    let (packages, toolchains, targets) =
        (of(Kind::Package), of(Kind::Toolchain), of(Kind::RustTarget));
    let in_checkout: Vec<PathBuf> = [".tools", "target/vm"]
        .iter()
        .map(|path| workspace_root().join(path))
        .filter(|path| path.exists())
        .collect();
    let learner = crate::learner::learner_leftovers();
    println!(
        "What listen-trace's commands installed here (noted in {}):",
        record_path().display()
    );
    let list = |what: &str, items: Vec<String>| {
        let shown = if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        };
        println!("  {what}: {shown}");
    };
    list(
        "Debian packages",
        packages.iter().map(|name| name.to_string()).collect(),
    );
    list(
        "Rust toolchains (rustup)",
        toolchains.iter().map(|name| name.to_string()).collect(),
    );
    list(
        "Rust targets (rustup)",
        targets.iter().map(|name| name.to_string()).collect(),
    );
    list(
        "in this checkout",
        in_checkout
            .iter()
            .map(|path| path.display().to_string())
            .collect(),
    );
    list("a temporary learner account, left behind", learner.clone());
    if !args.remove {
        if !record.is_empty() || !in_checkout.is_empty() || !learner.is_empty() {
            println!("`cargo xtask installed --remove` removes it all.");
        }
        return Ok(());
    }
    if !packages.is_empty() {
        let mut purge = vec!["purge", "-y", "-q"];
        purge.extend(&packages);
        crate::host_packages::apt_get(&purge)?;
    }
    for toolchain in &toolchains {
        run_step(
            &format!("rustup toolchain uninstall {toolchain}"),
            Command::new("rustup").args(["toolchain", "uninstall", toolchain]),
        )?;
    }
    if toolchains.is_empty() {
        for target in &targets {
            run_step(
                &format!("rustup target remove {target}"),
                Command::new("rustup").args([
                    "target",
                    "remove",
                    "--toolchain",
                    support::PINNED_RUST,
                    target,
                ]),
            )?;
        }
    }
    for path in &in_checkout {
        fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))?;
        eprintln!("    removed {}", path.display());
    }
    if !learner.is_empty() {
        crate::learner::remove_learner()?;
    }
    let path = record_path();
    if path.exists() {
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    println!("Removed.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back_what_was_noted() {
        let parsed = parse("package qemu-system-x86\ntoolchain 1.98.0\nnonsense\nrust-target x\n");
        assert_eq!(
            parsed,
            [
                (Kind::Package, "qemu-system-x86".to_string()),
                (Kind::Toolchain, "1.98.0".to_string()),
                (Kind::RustTarget, "x".to_string()),
            ]
        );
    }
}
