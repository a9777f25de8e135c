//! Every system package the project's commands install on this machine, named once, by the Debian
//! package name, with how to tell that it is already there. A package that only comes as another
//! package's Recommends is missed by `apt-get install --no-install-recommends`, so each one a
//! command needs is listed here by its own name (the README's "What `cargo xtask test` installs"
//! section lists the same names, and a test below keeps the two together).

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::pinned::run_step;

/// How to tell, without apt, that a package's part we use is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A command on PATH.
    Command(&'static str),
    /// A file at a fixed path.
    File(&'static str),
}

impl Probe {
    fn is_present(self) -> bool {
        match self {
            Self::Command(command) => which::which(command).is_ok(),
            Self::File(path) => Path::new(path).exists(),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Command(command) => format!("the command {command}"),
            Self::File(path) => path.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// The Debian (and Ubuntu) package name.
    pub name: &'static str,
    pub probe: Probe,
    /// The command that needs it, for the README and the error words.
    pub used_by: &'static str,
}

/// The keyring that signs Debian's archive.
pub const DEBIAN_KEYRING_FILE: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

// ANCHOR: host_packages
/// qemu for the x86-64 guests, with the firmware it boots them through (a dependency, named anyway).
pub const QEMU_X86: Package = Package {
    name: "qemu-system-x86",
    probe: Probe::Command("qemu-system-x86_64"),
    used_by: "vm-test (x86-64 guests)",
};
pub const QEMU_X86_FIRMWARE: Package = Package {
    name: "seabios",
    probe: Probe::File("/usr/share/seabios/bios-256k.bin"),
    used_by: "vm-test (x86-64 guests)",
};
/// qemu for the arm64 guests (the `virt` machine boots `-kernel` without firmware).
pub const QEMU_ARM: Package = Package {
    name: "qemu-system-arm",
    probe: Probe::Command("qemu-system-aarch64"),
    used_by: "vm-test (arm64 guests)",
};
/// Packs the guests' initramfs.
pub const CPIO: Package = Package {
    name: "cpio",
    probe: Probe::Command("cpio"),
    used_by: "vm-test",
};
/// Verifies the Debian archive that the guest kernels and busybox come from (also on Ubuntu).
pub const DEBIAN_KEYRING: Package = Package {
    name: "debian-archive-keyring",
    probe: Probe::File(DEBIAN_KEYRING_FILE),
    used_by: "vm-test (the guests' kernel packages)",
};
/// The C cross compiler that links the arm64 test binaries on an x86-64 machine…
pub const ARM64_CROSS_GCC: Package = Package {
    name: "gcc-aarch64-linux-gnu",
    probe: Probe::Command("aarch64-linux-gnu-gcc"),
    used_by: "vm-test (arm64 guests, cross-built)",
};
/// …and the arm64 C library and start files it links against: only a Recommends of the compiler.
pub const ARM64_CROSS_LIBC: Package = Package {
    name: "libc6-dev-arm64-cross",
    probe: Probe::File("/usr/aarch64-linux-gnu/lib/crt1.o"),
    used_by: "vm-test (arm64 guests, cross-built)",
};
/// The peer that the benchmark measures next to lesson 4 (optional: measured without it otherwise).
pub const BPFTRACE: Package = Package {
    name: "bpftrace",
    probe: Probe::Command("bpftrace"),
    used_by: "bench",
};
/// How the learner flows act as a user who is not root.
pub const SUDO: Package = Package {
    name: "sudo",
    probe: Probe::Command("sudo"),
    used_by: "test (the learner flows)",
};

/// The browser that opens the built book, to check that its pictures render.
pub const CHROMIUM: Package = Package {
    name: "chromium",
    probe: Probe::Command("chromium"),
    used_by: "docs (the book's pictures)",
};

/// A small font with Chinese characters, for the Chinese edition in that browser.
pub const FONT_CJK: Package = Package {
    name: "fonts-wqy-microhei",
    probe: Probe::File("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    used_by: "docs (the Chinese edition's pictures)",
};

/// cloud-init's own schema check, for the cloud-init file of fallback VMs.
pub const CLOUD_INIT: Package = Package {
    name: "cloud-init",
    probe: Probe::Command("cloud-init"),
    used_by: "test (the cloud-init file's schema check)",
};

/// Every package above, in the order the README lists them (a test holds the README to it).
#[cfg(test)]
const ALL: &[Package] = &[
    QEMU_X86,
    QEMU_X86_FIRMWARE,
    QEMU_ARM,
    CPIO,
    DEBIAN_KEYRING,
    ARM64_CROSS_GCC,
    ARM64_CROSS_LIBC,
    BPFTRACE,
    SUDO,
    CHROMIUM,
    FONT_CJK,
    CLOUD_INIT,
];
// ANCHOR_END: host_packages

/// Installs whichever of `packages` is missing, with apt-get, saying which and for what; without
/// apt-get, fails naming each package and what it provides.
pub fn ensure(for_what: &str, packages: &[Package]) -> anyhow::Result<()> {
    let missing: Vec<&Package> = packages
        .iter()
        .filter(|package| !package.probe.is_present())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|package| package.name).collect();
    if which::which("apt-get").is_err() {
        bail!(
            "{for_what}: {} must be installed; install them with your package manager ({})",
            names.join(", "),
            missing
                .iter()
                .map(|package| format!("{} provides {}", package.name, package.probe.describe()))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    eprintln!(
        "    {for_what}: installing {} with apt-get",
        names.join(", ")
    );
    apt_get(
        &[
            &["install", "-y", "-q", "--no-install-recommends"],
            names.as_slice(),
        ]
        .concat(),
    )?;
    crate::install_record::note(crate::install_record::Kind::Package, &names);
    Ok(())
}

/// Runs apt-get, refreshing the package lists once if the first try fails (a fresh machine has none).
pub fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let what = format!("apt-get {}", args.join(" "));
    if run_step(&what, Command::new("apt-get").args(args)).is_ok() {
        return Ok(());
    }
    run_step("apt-get update", Command::new("apt-get").arg("update"))?;
    run_step(&what, Command::new("apt-get").args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README tells a teacher what the test command installs: every package, by name.
    #[test]
    fn the_readme_names_every_package_the_commands_install() {
        let readme = std::fs::read_to_string(crate::workspace_root().join("README.md")).unwrap();
        let section = readme
            .split("## What `cargo xtask test` installs")
            .nth(1)
            .expect("the README has a section on what the test command installs");
        let section = section.split("\n## ").next().unwrap();
        for package in ALL {
            assert!(
                section.contains(&format!("`{}`", package.name)),
                "the README's install section does not name {}",
                package.name
            );
        }
    }

    #[test]
    fn a_missing_file_or_command_is_missing() {
        assert!(Probe::Command("sh").is_present());
        assert!(!Probe::Command("no-such-command-listen-trace").is_present());
        assert!(Probe::File("/").is_present());
        assert!(!Probe::File("/no/such/file/listen-trace").is_present());
    }
}
