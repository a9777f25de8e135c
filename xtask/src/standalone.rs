//! A lesson copied out of the repository builds on its own, as a project made from aya-template
//! does: its folder with `common/` beside it and the lock file, no workspace around them, bpf-linker
//! on `PATH` and the toolchain from the lesson's `rust-toolchain.toml`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{
    lessons::Lesson,
    pinned::{output_of, run_cargo, target_dir},
    workspace_root,
};

/// Copies each of `lessons` to a temporary folder, builds it there with a plain `cargo build`, and
/// runs the binary it built.
pub fn check(lessons: &[&Lesson]) -> anyhow::Result<()> {
    // Outside the repository: inside, cargo would find this workspace above the copy.
    let base = std::env::temp_dir().join("listen-trace-standalone");
    for lesson in lessons {
        if base.exists() {
            fs::remove_dir_all(&base)
                .with_context(|| format!("cannot remove {}", base.display()))?;
        }
        let folder = copy_out(lesson, &base)?;
        // The dependencies compiled once for all the copies (and kept for the next run).
        let target = target_dir().join("standalone");
        let mut build = Command::new("cargo");
        build
            .arg("build")
            .current_dir(&folder)
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", path_with_bpf_linker()?);
        // What the outer cargo set for xtask would pick the toolchain, not the lesson's file.
        for inherited in [
            "RUSTUP_TOOLCHAIN",
            "CARGO",
            "RUSTC",
            "RUSTDOC",
            "RUSTC_WRAPPER",
        ] {
            build.env_remove(inherited);
        }
        build.env_remove(crate::ebpf::OBJECTS_VARIABLE);
        run_cargo(
            &format!(
                "lesson {} copied out to {}: cargo build",
                lesson.number,
                folder.display()
            ),
            &mut build,
        )?;
        let help =
            output_of(Command::new(target.join("debug").join(lesson.package)).arg("--help"))?;
        ensure!(
            help.contains("--attach"),
            "the copied-out lesson {} built, but its --help does not offer --attach:\n{help}",
            lesson.number
        );
        eprintln!(
            "    lesson {}: builds and runs outside the repository",
            lesson.number
        );
    }
    fs::remove_dir_all(&base).with_context(|| format!("cannot remove {}", base.display()))?;
    Ok(())
}

/// Copies `lesson`'s folder (without its kernel tests, which use the repository's test support),
/// `common/` and the lock file into `base`; returns the lesson's folder there.
fn copy_out(lesson: &Lesson, base: &Path) -> anyhow::Result<PathBuf> {
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

/// `PATH` with this workspace's bpf-linker first, as `cargo install bpf-linker` would put one there.
fn path_with_bpf_linker() -> anyhow::Result<std::ffi::OsString> {
    let tools = workspace_root().join(support::BPF_LINKER);
    let tools = tools.parent().context("bpf-linker has a folder")?;
    let mut paths = vec![tools.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(paths)?)
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
