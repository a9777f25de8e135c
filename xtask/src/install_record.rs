//! The record of what the project's commands installed on this machine, kept outside the
//! checkout (`$XDG_STATE_HOME/listen-trace/installed`, by default `~/.local/state/...`): each command
//! that installs something machine-wide (a Debian package, the pinned Rust toolchain, a Rust target)
//! notes it there when it did install it, so that `cargo xtask installed --remove` never takes away
//! what was there before.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

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
pub fn record_path() -> PathBuf {
    xdg_folder("XDG_STATE_HOME", ".local/state", "/var/lib").join("listen-trace/installed")
}

/// An XDG base folder: `$variable`, or `~/in_home`, or `fallback` when there is no home.
fn xdg_folder(variable: &str, in_home: &str, fallback: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(in_home)))
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// Where the tools built from crates.io (bpf-linker, mdBook, its link checker) live, once per
/// machine: `$XDG_CACHE_HOME/listen-trace/tools`, by default `~/.cache/...`. Every checkout's
/// `.tools` links to the folder of its pinned toolchain in there (see `setup::tools_folder`).
pub fn tools_cache() -> PathBuf {
    xdg_folder("XDG_CACHE_HOME", ".cache", "/var/cache").join("listen-trace/tools")
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
pub fn read() -> Vec<(Kind, String)> {
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
