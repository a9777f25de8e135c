//! A lesson out of the repository, two ways, both built by plain cargo with the toolchain from the
//! lesson's `rust-toolchain.toml` and bpf-linker on `PATH`, as a project made from aya-template:
//!
//! - copied: its folder with `common/` beside it and the lock file, no workspace around them
//!   (`cargo xtask test` builds each lesson so);
//! - written out as a project of one's own (`cargo xtask new-project N DIR`, the book's "Your own
//!   project" page): a workspace of the lesson, its kernel side and `common`, with its own
//!   toolchain file and a `.cargo/config.toml` that names a bpf-linker.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    lessons::{self, Lesson},
    pinned::{output_of, path_with, run_cargo, target_dir, without_outer_cargo},
    workspace_root,
};

#[derive(Debug, clap::Args)]
pub struct NewProjectArgs {
    /// The lesson to start from
    #[arg(value_name = "N")]
    number: u8,
    /// The folder to write the project into (new, or empty)
    #[arg(value_name = "DIR")]
    folder: PathBuf,
}

/// `cargo xtask new-project N DIR`.
pub fn new_project(args: &NewProjectArgs) -> anyhow::Result<()> {
    let lesson = lessons::find(args.number)?;
    write_project(lesson, &args.folder)?;
    let folder = args.folder.display();
    println!(
        "wrote lesson {} as a project of its own in {folder}:\n  \
         {folder}/Cargo.toml            the workspace: {package}, its kernel side, common\n  \
         {folder}/{package}/build.rs    builds the kernel side (aya-build)\n  \
         {folder}/rust-toolchain.toml   Rust {rust}, whose LLVM bpf-linker must share\n  \
         {folder}/.cargo/config.toml    the bpf-linker to link with\n\
         then: cd {folder} && cargo build && sudo ./target/debug/{package}",
        lesson.number,
        package = lesson.package,
        rust = support::PINNED_RUST,
    );
    Ok(())
}

/// Copies each of `lessons` out of the repository and builds it there with a plain `cargo build`,
/// first alone (its folder and `common/`), then the first and the last as written out by
/// `new-project`; runs each binary built.
pub fn check(lessons: &[&Lesson]) -> anyhow::Result<()> {
    // Outside the repository: inside, cargo would find this workspace above the copy.
    let base = std::env::temp_dir().join("listen-trace-standalone");
    let ends = [lessons.first(), lessons.last()];
    let projects = ends.into_iter().flatten().copied();
    let builds = lessons
        .iter()
        .map(|&lesson| (lesson, false))
        .chain(projects.map(|lesson| (lesson, true)));
    for (lesson, as_project) in builds {
        if base.exists() {
            fs::remove_dir_all(&base)
                .with_context(|| format!("cannot remove {}", base.display()))?;
        }
        let (folder, how) = if as_project {
            write_project(lesson, &base)?;
            (base.clone(), "written out by new-project")
        } else {
            (copy_lesson(lesson, &base)?, "copied out")
        };
        // The dependencies compiled once for all the copies (and kept for the next run). Each
        // copy's build.rs builds its kernel side with a cargo of its own (aya-build), which takes
        // its build folder from the environment: one folder for those inner builds, so that the
        // BPF target's `core` is compiled once, not once per copy. The outer build keeps its
        // own, named on its command line (which comes before the environment), since it holds
        // that folder's lock while the build scripts run.
        let target = target_dir().join("standalone");
        let mut build = plain_cargo(&folder);
        build
            .arg("build")
            .arg("--config")
            .arg(format!(
                "build.build-dir={:?}",
                target.display().to_string()
            ))
            .env("CARGO_TARGET_DIR", &target)
            .env(
                "CARGO_BUILD_BUILD_DIR",
                target_dir().join("standalone-ebpf"),
            )
            .env("PATH", path_with(&bpf_linker_folder()?));
        run_cargo(
            &format!(
                "lesson {} {how} to {}: cargo build",
                lesson.number,
                folder.display()
            ),
            &mut build,
        )?;
        let help =
            output_of(Command::new(target.join("debug").join(lesson.package)).arg("--help"))?;
        ensure!(
            help.contains("--attach"),
            "lesson {} {how} built, but its --help does not offer --attach:\n{help}",
            lesson.number
        );
        eprintln!(
            "    lesson {} {how}: builds and runs outside the repository",
            lesson.number
        );
    }
    fs::remove_dir_all(&base).with_context(|| format!("cannot remove {}", base.display()))?;
    Ok(())
}

/// `cargo` in `folder`, as a learner would type it there: without what the outer cargo set for
/// xtask, which would pick the toolchain instead of the folder's `rust-toolchain.toml`.
fn plain_cargo(folder: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(folder);
    without_outer_cargo(&mut cargo).env_remove(crate::ebpf::OBJECTS_VARIABLE);
    cargo
}

/// Copies `lesson`'s folder (without its kernel tests, which use the repository's test support),
/// `common/` and the lock file into `base`; returns the lesson's folder there.
fn copy_lesson(lesson: &Lesson, base: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(base)?;
    let root = workspace_root();
    for folder in [lesson.package, "common"] {
        output_of(
            Command::new("cp")
                .arg("-r")
                .arg(root.join(folder))
                .arg(base),
        )?;
    }
    let folder = base.join(lesson.package);
    fs::copy(root.join("Cargo.lock"), folder.join("Cargo.lock"))?;
    fs::remove_dir_all(folder.join("tests"))?;
    let manifest = folder.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)?;
    fs::write(&manifest, without_dev_dependencies(&text))?;
    Ok(folder)
}

/// Writes `lesson` into `folder` as a workspace of its own (see the module's comment).
fn write_project(lesson: &Lesson, folder: &Path) -> anyhow::Result<()> {
    if folder.exists() && fs::read_dir(folder)?.next().is_some() {
        bail!(
            "{} is not empty: give a new folder for the project",
            folder.display()
        );
    }
    let step = copy_lesson(lesson, folder)?;
    fs::rename(step.join("Cargo.lock"), folder.join("Cargo.lock"))?;
    fs::copy(
        step.join("rust-toolchain.toml"),
        folder.join("rust-toolchain.toml"),
    )?;
    let package = lesson.package;
    fs::write(
        folder.join("Cargo.toml"),
        format!(
            r#"# Lesson {number} of listen-trace, as a project of its own: the program ({package}), its kernel
# side ({package}/ebpf, built for the BPF target by {package}/build.rs) and what both sides agree on
# (common).
[workspace]
resolver = "3"
members = ["{package}", "{package}/ebpf", "common"]
# The kernel side is built for the BPF target by build.rs, never for this machine.
default-members = ["{package}", "common"]

[profile.release.package.{package}-ebpf]
# The eBPF object's debug info becomes its BTF, which the loader and the verifier read.
debug = 2
codegen-units = 1
"#,
            number = lesson.number
        ),
    )?;
    let linker = workspace_root().join(support::BPF_LINKER);
    fs::create_dir_all(folder.join(".cargo"))?;
    fs::write(
        folder.join(".cargo/config.toml"),
        format!(
            r#"[target.bpfel-unknown-none]
# bpf-linker reads the LLVM bitcode rustc writes, so it must be built against the LLVM of the Rust
# in rust-toolchain.toml ({rust}: LLVM 22). This is the one listen-trace's `cargo xtask setup`
# built. On another machine: `cargo +{rust} install bpf-linker --no-default-features --features
# llvm-22` with LLVM 22's development files (`LLVM_PREFIX` names where they are), then remove
# this line: rustc then finds bpf-linker on PATH.
linker = "{linker}"
"#,
            rust = support::PINNED_RUST,
            linker = linker.display()
        ),
    )?;
    Ok(())
}

/// The manifest without its `[dev-dependencies]` table and the comment lines right above it.
fn without_dev_dependencies(manifest: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut in_dev = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_dev = line.trim() == "[dev-dependencies]";
            if in_dev {
                while kept.last().is_some_and(|last| last.starts_with('#')) {
                    kept.pop();
                }
            }
        }
        if !in_dev {
            kept.push(line);
        }
    }
    kept.join("\n") + "\n"
}

/// The folder of this workspace's bpf-linker, put first on `PATH` as `cargo install bpf-linker`
/// would put one there.
fn bpf_linker_folder() -> anyhow::Result<PathBuf> {
    let linker = workspace_root().join(support::BPF_LINKER);
    Ok(linker
        .parent()
        .context("bpf-linker has a folder")?
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_dependencies_and_their_comment_go() {
        let manifest = "[package]\nname = \"x\"\n\n[dependencies]\na = \"1\"\n\n# tests only\n\
                        [dev-dependencies]\nb = \"1\"\n\n[[bin]]\nname = \"x\"\n";
        assert_eq!(
            without_dev_dependencies(manifest),
            "[package]\nname = \"x\"\n\n[dependencies]\na = \"1\"\n\n[[bin]]\nname = \"x\"\n"
        );
    }
}
