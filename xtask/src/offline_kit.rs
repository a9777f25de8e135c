//! `cargo xtask offline-kit DIR`: everything a room without internet needs to build and run the
//! lessons, in one folder a teacher copies onto a USB stick or a local share:
//!
//! - `vendor/`: the source of every crate the workspace uses (`cargo vendor`);
//! - `toolchain/`: the pinned Rust with `rust-src`, clippy and rustfmt, as rustup installed it here;
//! - `rustup-init`: rustup, for a machine without it;
//! - `bpf-linker/`: bpf-linker, built against that toolchain's LLVM;
//! - `book/`: the built book, both editions;
//! - `install.sh`: puts all of it in place for a clone of the repository.
//!
//! A kit is for machines of the architecture that made it. `cargo xtask test` makes one and builds
//! lesson 1 with it, in a copy of the repository, with empty rustup and cargo homes and no network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use support::{BPF_LINKER, PINNED_RUST};

use crate::{
    pinned::{Toolchain, output_of, run_cargo, run_step, target_dir, without_outer_cargo},
    setup::BPF_LINKER_VERSION,
    workspace_root,
};

#[derive(Debug, clap::Args)]
pub struct OfflineKitArgs {
    /// The folder to write the kit into (replaced if it holds a kit already)
    #[arg(value_name = "DIR", default_value = "target/offline-kit")]
    pub folder: PathBuf,
    /// Then install it for a copy of the repository, with empty rustup and cargo homes, and build
    /// lesson 1 there without the network (as `cargo xtask test` does)
    #[arg(long)]
    pub verify: bool,
}

/// The script that installs a kit, next to its parts.
const INSTALL_SCRIPT: &str = include_str!("offline_kit_install.sh");

/// `cargo xtask offline-kit DIR`: writes the kit, then says its size.
fn make(toolchain: &Toolchain, args: &OfflineKitArgs) -> anyhow::Result<PathBuf> {
    let kit = workspace_root().join(&args.folder);
    eprintln!("==> the offline kit, in {}", kit.display());
    if kit.exists() {
        ensure!(
            kit.join("install.sh").exists() || fs::read_dir(&kit)?.next().is_none(),
            "{} exists and is not an offline kit: name a new or empty folder",
            kit.display()
        );
        fs::remove_dir_all(&kit)?;
    }
    fs::create_dir_all(&kit)?;

    let sysroot = toolchain.sysroot()?;

    // With every crate taken from the kit, the BPF target's `core` (built from rust-src) takes its
    // dependencies from there too: the standard library's workspace is vendored with ours.
    let mut vendor = toolchain.cargo(&["vendor", "--locked", "--versioned-dirs", "--sync"]);
    vendor
        .arg(sysroot.join("lib/rustlib/src/rust/library/Cargo.toml"))
        .arg(kit.join("vendor"))
        .env("RUSTC_BOOTSTRAP", "1");
    run_step(
        "[1/5] cargo vendor (the source of every crate the workspace and the BPF target's core use)",
        &mut vendor,
    )?;
    let toolchain_folder = sysroot
        .file_name()
        .context("the toolchain's folder has a name")?;
    fs::create_dir_all(kit.join("toolchain"))?;
    copy(
        &format!("[2/5] Rust {} as rustup installed it", toolchain.name),
        &sysroot,
        &kit.join("toolchain").join(toolchain_folder),
    )?;
    let rustup = which::which("rustup").context("rustup is not on PATH")?;
    let rustup = fs::canonicalize(&rustup)?;
    fs::copy(&rustup, kit.join("rustup-init"))?;

    let root = workspace_root();
    fs::create_dir_all(kit.join("bpf-linker"))?;
    copy(
        "[3/5] bpf-linker",
        &root.join(BPF_LINKER),
        &kit.join("bpf-linker/bpf-linker"),
    )?;
    fs::copy(
        root.join(".tools/bpf-linker.stamp"),
        kit.join("bpf-linker/bpf-linker.stamp"),
    )?;

    let books = crate::docs::build_books(toolchain)?;
    fs::create_dir_all(kit.join("book"))?;
    for (book, name) in books.iter().zip(["en", "zh"]) {
        copy("[4/5] the book", book, &kit.join("book").join(name))?;
    }

    let script = INSTALL_SCRIPT
        .replace("@RUST@", PINNED_RUST)
        .replace("@TOOLCHAIN_FOLDER@", &toolchain_folder.to_string_lossy());
    fs::write(kit.join("install.sh"), script)?;
    output_of(Command::new("chmod").arg("+x").arg(kit.join("install.sh")))?;
    eprintln!("    [5/5] install.sh");

    let size = output_of(Command::new("du").arg("-sh").arg(&kit))?;
    let size = size.split_whitespace().next().unwrap_or("?").to_string();
    let parts = output_of(
        Command::new("du")
            .args(["-sh", "vendor", "toolchain", "bpf-linker", "book"])
            .current_dir(&kit),
    )?;
    eprintln!(
        "    the kit takes {size} (for {} machines):\n{}\n    on a machine without internet: \
         copy the folder there, then `sh {}/install.sh ~/listen-trace` (the repository's clone)",
        std::env::consts::ARCH,
        parts
            .lines()
            .map(|line| format!("      {line}"))
            .collect::<Vec<_>>()
            .join("\n"),
        kit.display()
    );
    Ok(kit)
}

/// `cp -a FROM TO`, said as a step.
fn copy(what: &str, from: &Path, to: &Path) -> anyhow::Result<()> {
    run_step(what, Command::new("cp").arg("-a").arg(from).arg(to))
}

/// `cargo xtask offline-kit [DIR] [--verify]`.
pub fn run(toolchain: &Toolchain, args: &OfflineKitArgs) -> anyhow::Result<()> {
    let kit = make(toolchain, args)?;
    if args.verify {
        verify(&kit)?;
    }
    Ok(())
}

/// Makes a kit in the target folder, then verifies it.
pub fn check(toolchain: &Toolchain) -> anyhow::Result<()> {
    run(
        toolchain,
        &OfflineKitArgs {
            folder: target_dir().join("offline-kit"),
            verify: true,
        },
    )
}

/// Installs `kit` for a copy of the repository (see `copy_repository_files`) with rustup and cargo
/// homes of their own (empty before, and rustup not on `PATH`), and builds lesson 1 there offline.
fn verify(kit: &Path) -> anyhow::Result<()> {
    let base = std::env::temp_dir().join("listen-trace-offline");
    if base.exists() {
        fs::remove_dir_all(&base)?;
    }
    let repo = base.join("listen-trace");
    copy_repository_files(&repo)?;
    let (cargo_home, rustup_home) = (base.join("cargo"), base.join("rustup"));
    // Only the system's folders: no rustup or cargo of this machine.
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        cargo_home.join("bin").display()
    );
    let with_homes = |command: &mut Command| {
        without_outer_cargo(command)
            .env("CARGO_HOME", &cargo_home)
            .env("RUSTUP_HOME", &rustup_home)
            .env("PATH", &path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove(crate::ebpf::OBJECTS_VARIABLE);
    };
    let mut install = Command::new("sh");
    install.arg(kit.join("install.sh")).arg(&repo);
    with_homes(&mut install);
    run_step(
        "the kit's install.sh, for a copy of the repository",
        &mut install,
    )?;

    // `cargo xtask setup` finds the toolchain and bpf-linker in place (it would build bpf-linker,
    // from the network, if the kit's did not fit).
    let mut setup = Command::new("cargo");
    setup.args(["xtask", "setup"]).current_dir(&repo);
    with_homes(&mut setup);
    let output = setup.output()?;
    let said = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success()
            && said.contains(&format!("bpf-linker {BPF_LINKER_VERSION}: installed"))
            && said.contains(&format!("Rust {PINNED_RUST} with rust-src")),
        "cargo xtask setup did not find the kit's toolchain and bpf-linker ready:\n{said}"
    );
    eprintln!("    cargo xtask setup, offline: the kit's toolchain and bpf-linker are ready");

    let mut build = Command::new("cargo");
    build
        .args(["build", "--offline", "--package", "step1-hello"])
        .current_dir(&repo);
    with_homes(&mut build);
    run_cargo(
        "lesson 1 built from the kit alone (cargo build --offline, empty homes)",
        &mut build,
    )?;
    let help = output_of(Command::new(repo.join("target/debug/step1-hello")).arg("--help"))?;
    if !help.contains("--attach") {
        bail!("lesson 1 built from the kit, but its --help does not offer --attach:\n{help}");
    }
    eprintln!("    lesson 1 builds and runs from the kit, without the network");
    fs::remove_dir_all(&base)?;
    Ok(())
}

/// The repository's files as they are in the working tree (tracked, or new and not ignored), copied
/// into `to`.
fn copy_repository_files(to: &Path) -> anyhow::Result<()> {
    let root = workspace_root();
    let files = output_of(
        Command::new("git")
            .args(["ls-files", "--cached", "--others", "--exclude-standard"])
            .current_dir(&root),
    )?;
    for file in files.lines() {
        let (from, into) = (root.join(file), to.join(file));
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        fs::create_dir_all(into.parent().unwrap())?;
        fs::copy(&from, &into).with_context(|| format!("cannot copy {file}"))?;
    }
    Ok(())
}
