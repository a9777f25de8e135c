//! Commands run with the pinned toolchain.

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context as _, bail};
use support::PINNED_RUST;

use crate::workspace_root;

/// Set in the run through sudo: the target folder of the user's builds.
static BUILT_IN: OnceLock<PathBuf> = OnceLock::new();

/// Records that this run continues a command through sudo, whose builds are in `target`.
pub fn continue_built(target: &Path) {
    let _ = BUILT_IN.set(target.to_path_buf());
}

/// The target folder of the builds this run continues, when it runs through sudo for them.
pub fn built_in() -> Option<&'static Path> {
    BUILT_IN.get().map(|path| path.as_path())
}

/// Where cargo puts what it builds (`CARGO_TARGET_DIR` is honoured, as cargo does; a run through
/// sudo uses the folder of the builds it continues).
pub fn target_dir() -> PathBuf {
    if let Some(built) = built_in() {
        return built.to_path_buf();
    }
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), Into::into)
}

/// Gives `command`, a cargo build in a tree of its own (this workspace, a clean checkout, a scratch
/// copy), `build_dir` as its build folder, whatever `CARGO_BUILD_BUILD_DIR` says outside.
///
/// Two trees never share one: cargo tells a workspace's own packages apart by their path from the
/// workspace root, which is the same in every tree, so in a shared folder one tree's build of
/// `common` is recorded as the other's, and a build there can take the other tree's files for its
/// own and keep an artifact made from them (seen: this workspace's lesson 13 linked against the
/// clean checkout's `common`).
pub fn own_build_dir<'a>(command: &'a mut Command, build_dir: &Path) -> &'a mut Command {
    command.env("CARGO_BUILD_BUILD_DIR", build_dir)
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
            .current_dir(workspace_root());
        without_outer_cargo(&mut command);
        command
    }

    /// The toolchain's sysroot (`rustc --print sysroot`): its libLLVM, its `rust-src`.
    pub fn sysroot(&self) -> anyhow::Result<PathBuf> {
        let sysroot = output_of(
            Command::new("rustup").args(["run", self.name, "rustc", "--print", "sysroot"]),
        )?;
        Ok(PathBuf::from(sysroot.trim()))
    }
}

/// Removes from `command` what the outer `cargo` (the one running xtask) set for us, which would
/// otherwise leak into a cargo that xtask starts and pick its toolchain.
pub fn without_outer_cargo(command: &mut Command) -> &mut Command {
    for inherited in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(inherited);
    }
    command
}

/// `PATH` with `folder` first.
pub fn path_with(folder: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(folder.to_path_buf()).chain(std::env::split_paths(&path)))
        .expect("PATH holds no separator in a folder name")
}

/// Runs `command`, printing it first and its duration after; fails when it fails, naming the
/// command line.
pub fn run_step(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let status: ExitStatus = command
        .status()
        .with_context(|| format!("cannot start {}", command_line(command)))?;
    finished(what, command, status, started)
}

/// The end of a step: its duration when it worked, an error with its command line when not.
fn finished(
    what: &str,
    command: &Command,
    status: ExitStatus,
    started: Instant,
) -> anyhow::Result<()> {
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "{what} failed ({status}) after {:.1} s: {}",
            elapsed.as_secs_f64(),
            command_line(command)
        );
    }
    eprintln!("    {what}: done in {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

/// Runs `command` quietly and returns its standard output; fails when it fails, with the command
/// line and what it said on standard error.
pub fn output_of(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {}", command_line(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            command_line(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// A command as one would type it: the program and its arguments.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a cargo command like [`run_step`], with the eBPF builds shown as progress, not warnings.
///
/// A step's build script builds its eBPF programs with aya-build, which passes every line of that
/// inner build on as `cargo:warning`; cargo prints them as `warning: PACKAGE@VERSION: LINE`, and
/// replays them on every build, even when nothing was rebuilt. So cargo runs verbose here
/// (`CARGO_TERM_VERBOSE`), which shows when a build script really runs: its eBPF build becomes one
/// line, the replays disappear, and an inner error or warning is still shown. Of the verbose
/// lines, only those of cargo's normal output are kept.
pub fn run_cargo(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let mut child = command
        .env("CARGO_TERM_VERBOSE", "true")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", command_line(command)))?;
    let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut building = HashSet::new();
    let mut announced = HashSet::new();
    for line in stderr.lines().map_while(Result::ok) {
        match cargo_line(&line) {
            CargoLine::Shown => eprintln!("{line}"),
            CargoLine::Verbose => {}
            CargoLine::BuildScriptRuns(package) => {
                building.insert(package);
            }
            CargoLine::Relayed { package, text } => {
                if !building.contains(package) {
                    continue; // a replay: this build script did not run now
                }
                if announced.insert(package.to_string()) {
                    eprintln!("    {package}: building its eBPF programs (aya-build)");
                }
                let text = text.trim_start();
                if text.starts_with("error") || text.starts_with("warning") {
                    eprintln!("    {package} (eBPF): {text}");
                }
            }
        }
    }
    let status = child.wait()?;
    finished(what, command, status, started)
}

/// What a line of a verbose cargo's standard error is.
#[derive(Debug, PartialEq, Eq)]
enum CargoLine<'a> {
    /// cargo's normal output (or anything else): shown.
    Shown,
    /// A line only verbose mode prints (a rustc command line, `Fresh`, `Dirty`): left out.
    Verbose,
    /// The build script of this package runs now (its folder is `build/PACKAGE-HASH/`).
    BuildScriptRuns(String),
    /// A line that a build script passed on with `cargo:warning`.
    Relayed { package: &'a str, text: &'a str },
}

fn cargo_line(line: &str) -> CargoLine<'_> {
    let trimmed = line.trim_start();
    if let Some(command) = trimmed.strip_prefix("Running `") {
        if let Some(folder) = command
            .split_whitespace()
            .map(|word| word.trim_end_matches('`'))
            .find_map(|word| word.strip_suffix("/build-script-build"))
        {
            let name = folder.rsplit('/').next().unwrap_or_default();
            let package = name
                .rsplit_once('-')
                .map_or(name, |(package, _hash)| package);
            return CargoLine::BuildScriptRuns(package.to_string());
        }
        if command.contains("--crate-name") {
            return CargoLine::Verbose;
        }
        return CargoLine::Shown; // a test binary
    }
    if trimmed.starts_with("Fresh ") || trimmed.starts_with("Dirty ") {
        return CargoLine::Verbose;
    }
    if let Some(rest) = line.strip_prefix("warning: ")
        && let Some((package_at, text)) = rest.split_once(": ")
        && let Some((package, version)) = package_at.split_once('@')
        && !package.contains(' ')
        && version.starts_with(|c: char| c.is_ascii_digit())
    {
        return CargoLine::Relayed { package, text };
    }
    CargoLine::Shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verbose_cargo_is_read_line_by_line() {
        assert_eq!(
            cargo_line(
                "     Running `/w/target/release/build/step1-hello-0c5f2b8a/build-script-build`"
            ),
            CargoLine::BuildScriptRuns("step1-hello".to_string())
        );
        assert_eq!(
            cargo_line(
                "     Running `CARGO=/x/cargo /x/rustc --crate-name step1_hello --edition=2024`"
            ),
            CargoLine::Verbose
        );
        assert_eq!(cargo_line("       Fresh aya v0.16.0"), CargoLine::Verbose);
        assert_eq!(
            cargo_line("warning: step1-hello@0.1.0:    Compiling core v0.0.0 (/x/library/core)"),
            CargoLine::Relayed {
                package: "step1-hello",
                text: "   Compiling core v0.0.0 (/x/library/core)"
            }
        );
        assert_eq!(
            cargo_line("   Compiling step1-hello v0.1.0 (/w/step1-hello)"),
            CargoLine::Shown
        );
        assert_eq!(
            cargo_line("warning: unused variable: `x`"),
            CargoLine::Shown
        );
        assert_eq!(
            cargo_line("     Running `/w/target/release/deps/kernel-0df9 --include-ignored`"),
            CargoLine::Shown
        );
    }
}
