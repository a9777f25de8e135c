//! `cargo xtask setup`: install what a fresh machine lacks, and nothing else. Every check is cheap, so
//! `run` and `test` call it first and a ready machine pays well under a second.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use support::{BPF_LINKER, PINNED_RUST};

use crate::{
    pinned::{Toolchain, run_step},
    workspace_root,
};

/// The bpf-linker release we build; its `llvm-NN` feature must match the pinned rustc's LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the pinned toolchain must include: `rust-src` to build `core` for the BPF target, and the
/// tools that `cargo xtask test` runs.
const COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

pub fn run() -> anyhow::Result<Toolchain> {
    let started = Instant::now();
    eprintln!("==> setup: Rust {PINNED_RUST}, bpf-linker {BPF_LINKER_VERSION}");
    let toolchain = Toolchain::pinned();
    ensure_toolchain(&toolchain)?;
    tools_folder(&toolchain)?;
    ensure_bpf_linker(&toolchain)?;
    eprintln!(
        "    [3/3] tracefs: lesson 6 mounts it itself when its tracepoint path needs it (the other paths do not)"
    );
    eprintln!(
        "    setup: done in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(toolchain)
}

fn ensure_toolchain(toolchain: &Toolchain) -> anyhow::Result<()> {
    let name = toolchain.name;
    let installed = rustup(&["toolchain", "list"])?;
    if !installed
        .lines()
        .any(|line| line.starts_with(&format!("{name}-")))
    {
        eprintln!("    [1/3] Rust {name}: not installed; installing it with rustup (about 100 MB)");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", name, "--profile", "minimal"]);
        for component in COMPONENTS {
            install.args(["--component", component]);
        }
        run_step(&format!("rustup toolchain install {name}"), &mut install)?;
        crate::install_record::note(crate::install_record::Kind::Toolchain, &[name]);
        return Ok(());
    }
    let components = rustup(&["component", "list", "--installed", "--toolchain", name])?;
    let missing: Vec<_> = COMPONENTS
        .into_iter()
        .filter(|component| !components.lines().any(|line| line.starts_with(component)))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "    [1/3] Rust {name} with {}: installed",
            COMPONENTS.join(", ")
        );
        return Ok(());
    }
    eprintln!("    [1/3] Rust {name}: adding {}", missing.join(", "));
    let mut add = Command::new("rustup");
    add.args(["component", "add", "--toolchain", name])
        .args(&missing);
    run_step(
        &format!("rustup component add {}", missing.join(" ")),
        &mut add,
    )
}

/// The stdout of a rustup command, with a clear error when rustup is not there.
fn rustup(args: &[&str]) -> anyhow::Result<String> {
    if which::which("rustup").is_err() {
        bail!(
            "rustup is not installed: install Rust with rustup (https://rustup.rs), which the \
             lessons use to pin Rust {PINNED_RUST}"
        );
    }
    crate::pinned::output_of(Command::new("rustup").args(args))
}

/// The folder of the tools built from crates.io, `.tools` in the checkout (the path that
/// `.cargo/config.toml` and the offline kit name). It links to a folder per pinned toolchain in the
/// machine's cache (`install_record::tools_cache`), so that they are built once per machine and
/// version, not once per clone; a `.tools` that is a folder of its own (an offline kit's
/// `install.sh` puts bpf-linker there) is used as it is.
pub fn tools_folder(toolchain: &Toolchain) -> anyhow::Result<PathBuf> {
    let link = workspace_root().join(".tools");
    if link.is_dir() && !link.is_symlink() {
        return Ok(link);
    }
    let cache = crate::install_record::tools_cache().join(format!("rust-{}", toolchain.name));
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    if fs::read_link(&link).ok().as_deref() != Some(cache.as_path()) {
        if link.is_symlink() {
            fs::remove_file(&link)?;
        }
        symlink(&cache, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), cache.display()))?;
    }
    Ok(link)
}

/// The bpf-linker of this workspace: `.tools/bin/bpf-linker`, with a stamp saying what it was built for.
struct BpfLinker {
    tools: PathBuf,
}

impl BpfLinker {
    fn new() -> Self {
        Self {
            tools: workspace_root().join(".tools"),
        }
    }
    fn binary(&self) -> PathBuf {
        workspace_root().join(BPF_LINKER)
    }
    fn stamp(&self) -> PathBuf {
        self.tools.join("bpf-linker.stamp")
    }
    /// What the stamp must say for the installed bpf-linker to fit the pinned toolchain (and to
    /// find its libLLVM beside it, in `../llvm/lib`, wherever `.tools` is).
    fn wanted(toolchain: &Toolchain) -> String {
        format!(
            "bpf-linker {BPF_LINKER_VERSION} for Rust {}, libLLVM from ../llvm/lib",
            toolchain.name
        )
    }
    /// Installed, built for this toolchain, and still able to start (its libLLVM is still there).
    fn is_ready(&self, toolchain: &Toolchain) -> bool {
        let stamp = fs::read_to_string(self.stamp()).unwrap_or_default();
        stamp.lines().next() == Some(Self::wanted(toolchain).as_str())
            && Command::new(self.binary())
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
    }
}

fn ensure_bpf_linker(toolchain: &Toolchain) -> anyhow::Result<()> {
    let linker = BpfLinker::new();
    if linker.is_ready(toolchain) {
        eprintln!(
            "    [2/3] bpf-linker {BPF_LINKER_VERSION}: installed in {}",
            shown_tools_folder()
        );
        return Ok(());
    }
    let llvm = find_llvm(toolchain, &linker.tools)?;
    eprintln!(
        "    [2/3] bpf-linker {BPF_LINKER_VERSION}: building it against LLVM {} ({}) into {}; \
         about a minute, once per machine",
        llvm.major,
        llvm.source,
        shown_tools_folder()
    );
    if Command::new("cc").arg("--version").output().is_err() {
        bail!(
            "a C compiler (`cc`) is needed to link bpf-linker: install gcc (Debian/Ubuntu: `apt-get install gcc`)"
        );
    }
    let mut install = install_tool(
        toolchain,
        "bpf-linker",
        BPF_LINKER_VERSION,
        &format!("llvm-{}", llvm.major),
    );
    install.env("LLVM_PREFIX", &llvm.prefix);
    // bpf-linker records `$LLVM_PREFIX/lib` as where its libLLVM is, an absolute path; this adds
    // the same folder relative to the binary, so that a copied `.tools` (the offline kit) works.
    install.env("RUSTFLAGS", "-C link-arg=-Wl,-rpath,$ORIGIN/../llvm/lib");
    run_step("cargo install bpf-linker", &mut install)?;
    fs::write(
        linker.stamp(),
        format!(
            "{}\nLLVM {} from {}\n",
            BpfLinker::wanted(toolchain),
            llvm.major,
            llvm.source
        ),
    )?;
    if !linker.is_ready(toolchain) {
        bail!(
            "bpf-linker was built but does not start: {}",
            linker.binary().display()
        );
    }
    Ok(())
}

/// Where `.tools` leads, as the progress lines name it.
pub fn shown_tools_folder() -> String {
    let link = workspace_root().join(".tools");
    fs::canonicalize(&link)
        .unwrap_or(link)
        .join("bin")
        .display()
        .to_string()
}

/// `cargo install` of a tool from crates.io, at an exact version and with only `features`, into
/// `.tools/` (its own build folder under `target/`, so that a failed build resumes).
pub fn install_tool(toolchain: &Toolchain, name: &str, version: &str, features: &str) -> Command {
    let tools = workspace_root().join(".tools");
    let mut install = toolchain.cargo(&[
        "install",
        name,
        "--locked",
        "--force",
        "--no-default-features",
    ]);
    install
        .args([
            "--version",
            &format!("={version}"),
            "--features",
            features,
            "--root",
        ])
        .arg(&tools);
    // With the tools' folder on PATH, cargo does not suggest adding it: xtask and
    // `.cargo/config.toml` find the tools there themselves.
    install
        .env("PATH", crate::pinned::path_with(&tools.join("bin")))
        .env(
            "CARGO_TARGET_DIR",
            crate::pinned::target_dir().join(format!("{name}-build")),
        );
    install
}

/// An LLVM to build bpf-linker against: a prefix whose `lib/` holds `libLLVM.so`.
struct Llvm {
    major: u32,
    prefix: PathBuf,
    source: String,
}

/// Prefers the libLLVM inside the pinned toolchain (exactly rustc's LLVM, nothing to install), then a
/// system LLVM of the same major version, installed with apt when possible.
fn find_llvm(toolchain: &Toolchain, tools: &Path) -> anyhow::Result<Llvm> {
    let version = rustup(&["run", toolchain.name, "rustc", "--version", "--verbose"])?;
    let major = llvm_major(&version).context("rustc does not say which LLVM it uses")?;

    let sysroot_lib = toolchain.sysroot()?.join("lib");
    if let Some(libllvm) = find_libllvm(&sysroot_lib)? {
        // bpf-linker links `-lLLVM` from `$LLVM_PREFIX/lib` and records that folder as its rpath, so
        // the folder needs the link-time name and the library's own soname.
        let prefix = tools.join("llvm");
        let lib = prefix.join("lib");
        fs::create_dir_all(&lib)?;
        for name in [
            Path::new("libLLVM.so"),
            Path::new(libllvm.file_name().unwrap()),
        ] {
            let link = lib.join(name);
            let _ = fs::remove_file(&link);
            symlink(&libllvm, &link)
                .with_context(|| format!("cannot create {}", link.display()))?;
        }
        return Ok(Llvm {
            major,
            prefix,
            source: format!("the libLLVM of Rust {}", toolchain.name),
        });
    }

    let system = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    if !system.join("lib/libLLVM.so").exists() {
        let package = format!("llvm-{major}-dev");
        if Command::new("apt-get").arg("--version").output().is_err() {
            bail!(
                "no LLVM {major} to build bpf-linker against: Rust {} has no libLLVM in {}, and this \
                 system has no apt-get. Install LLVM {major} with its development files (for example \
                 `dnf install llvm{major}-devel` or `pacman -S llvm`) and run `LLVM_PREFIX=<its prefix> \
                 cargo xtask setup`",
                toolchain.name,
                sysroot_lib.display()
            );
        }
        run_step(
            &format!("apt-get install {package}"),
            Command::new("apt-get").args(["install", "-y", &package]),
        )?;
        crate::install_record::note(crate::install_record::Kind::Package, &[&package]);
    }
    Ok(Llvm {
        major,
        prefix: system,
        source: format!("Debian's llvm-{major}-dev"),
    })
}

/// `LLVM version: 22.1.8` in `rustc -vV` gives 22.
fn llvm_major(rustc_version: &str) -> Option<u32> {
    rustc_version.lines().find_map(|line| {
        line.strip_prefix("LLVM version: ")?
            .split('.')
            .next()?
            .parse()
            .ok()
    })
}

/// The versioned libLLVM shared object in a toolchain's `lib/` (for example
/// `libLLVM.so.22.1-rust-1.98.0-stable`).
fn find_libllvm(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM.so."))
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major_version_from_rustc() {
        let version = "rustc 1.98.0 (88d9e12ae 2026-08-18)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.98.0\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(version), Some(22));
        assert_eq!(llvm_major("rustc 1.98.0"), None);
    }

    #[test]
    fn the_stamp_names_the_linker_and_the_toolchain() {
        assert_eq!(
            BpfLinker::wanted(&Toolchain::pinned()),
            format!("bpf-linker 0.13.0 for Rust {PINNED_RUST}, libLLVM from ../llvm/lib")
        );
    }
}
