//! `cargo xtask installed`: what the project's commands installed on this machine, and with
//! `--remove`, taking it away again.
//!
//! Machine-wide installs are read from their record (`install_record`); what lives in the checkout
//! (`.tools/`, the guests' downloads in `target/vm/`) and a temporary learner account left by a
//! killed run are found by looking.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    install_record::{Kind, read, record_path},
    pinned::run_step,
    workspace_root,
};

#[derive(Debug, clap::Args)]
pub struct InstalledArgs {
    /// Remove it all: purge the packages, uninstall the toolchain and targets, delete `.tools/`
    /// and `target/vm/`, and a leftover learner account
    #[arg(long)]
    pub remove: bool,
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
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    let tools_cache = crate::install_record::tools_cache();
    let tools_cache = tools_cache.exists().then_some(tools_cache);
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
    list(
        "tools built once for every checkout (bpf-linker, mdBook, its link checker)",
        tools_cache
            .iter()
            .map(|path| path.display().to_string())
            .collect(),
    );
    list("a temporary learner account, left behind", learner.clone());
    if !args.remove {
        if !record.is_empty()
            || !in_checkout.is_empty()
            || tools_cache.is_some()
            || !learner.is_empty()
        {
            println!("`cargo xtask installed --remove` removes it all.");
        }
        return Ok(());
    }
    if !packages.is_empty() {
        run_step(
            &format!("apt-get purge {}", packages.join(" ")),
            Command::new("apt-get")
                .args(["purge", "-y", "-q"])
                .args(&packages),
        )?;
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
        // `.tools` is usually a link to the tools' cache: the link goes, then the cache below.
        if path.is_symlink() {
            fs::remove_file(path)
        } else {
            fs::remove_dir_all(path)
        }
        .with_context(|| format!("cannot remove {}", path.display()))?;
        eprintln!("    removed {}", path.display());
    }
    if let Some(path) = &tools_cache {
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
