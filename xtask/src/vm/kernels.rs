//! The guest kernels: which Debian packages, for which CPU, offering which attach paths; and how
//! their packages (and the guests' busybox) are fetched, from sandboxed apt lists, into `target/vm/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{host_packages, pinned::run_step};

/// The CPU a guest kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64 (amd64): qemu-system-x86_64, KVM where it works
    X86_64,
    /// arm64 (aarch64): qemu-system-aarch64 under TCG, binaries cross-built and linked statically
    Arm64,
}

impl Arch {
    /// Debian's name for it, as in `linux-image-…-cloud-arm64`.
    pub(super) fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The CPU this machine (and so xtask) runs on, if it is one the guests can be built on.
    pub(super) fn of_host(rust_arch: &str) -> Option<Self> {
        match rust_arch {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }
}

/// How this machine gets a guest's test binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum GuestBuild {
    /// Built for this machine's own CPU, as `cargo test` builds them; their shared libraries go along.
    Native,
    /// Cross-built for arm64 on an x86-64 machine, linked statically.
    CrossArm64,
    /// Not built here: x86-64 guests on an arm64 machine (no cross toolchain set up for that, and
    /// an emulated x86-64 CPU is too slow to be worth it).
    NotHere,
}

impl GuestBuild {
    pub(super) fn for_guest(host: Arch, guest: Arch) -> Self {
        match (host, guest) {
            (host, guest) if host == guest => Self::Native,
            (Arch::X86_64, Arch::Arm64) => Self::CrossArm64,
            (Arch::Arm64, Arch::X86_64) => Self::NotHere,
            _ => unreachable!("two CPUs, all pairs above"),
        }
    }
}

/// The Rust target of the arm64 guests, and the C cross toolchain that links for it.
pub(super) const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";

pub(super) const ARM64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// A distribution kernel to test in: a Debian package that `apt-get download` fetches (nothing is
/// installed on the host), and the attach paths it must accept.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The series: a package name with `*` where the version goes. Each run takes the newest
    /// package of the series that the suite's index offers now, so that a point release, which
    /// removes the package before it, never leaves the guest without a kernel.
    pub series: &'static str,
    /// The package this run boots: the series' newest once `resolve` has asked the index (or the
    /// exact package given with `--kernel`).
    pub package: &'static str,
    pub about: &'static str,
    /// Every path listed here must attach in this kernel; the tests read the list from
    /// `LISTEN_TRACE_EXPECT_ATTACH` and fail if one does not.
    pub attach_paths: &'static str,
    /// The Debian suite that has the package (`bullseye`, `bookworm`): its lists are read apart
    /// from this machine's own apt sources, so the guests are the same on Debian, Ubuntu or
    /// another release.
    pub suite: &'static str,
    pub arch: Arch,
}

// ANCHOR: guest_kernels
/// The kernels `vm-test` boots. Adding a kernel is one entry.
pub const GUEST_KERNELS: &[GuestKernel] = &[
    GuestKernel {
        series: "linux-image-5.10.0-*-cloud-amd64",
        package: "linux-image-5.10.0-*-cloud-amd64",
        about: "Debian 11 (bullseye) cloud kernel: before 5.11, BPF maps count against RLIMIT_MEMLOCK; no MPTCP",
        attach_paths: "kprobe,fentry,tracepoint,sockops",
        suite: "bullseye",
        arch: Arch::X86_64,
    },
    GuestKernel {
        series: "linux-image-6.1.0-*-cloud-amd64",
        package: "linux-image-6.1.0-*-cloud-amd64",
        about: "Debian 12 (bookworm) stock cloud kernel",
        attach_paths: "kprobe,fentry,tracepoint,sockops",
        suite: "bookworm",
        arch: Arch::X86_64,
    },
    GuestKernel {
        series: "linux-image-6.12.*+deb12-cloud-amd64",
        package: "linux-image-6.12.*+deb12-cloud-amd64",
        about: "Debian 12's newer 6.12 cloud kernel (other struct layouts)",
        attach_paths: "kprobe,fentry,tracepoint,sockops",
        suite: "bookworm",
        arch: Arch::X86_64,
    },
    GuestKernel {
        series: "linux-image-6.12.*+deb12-cloud-arm64",
        package: "linux-image-6.12.*+deb12-cloud-arm64",
        about: "Debian 12's 6.12 cloud kernel for arm64 (another pt_regs layout for kprobe arguments)",
        attach_paths: "kprobe,fentry,tracepoint,sockops",
        suite: "bookworm",
        arch: Arch::Arm64,
    },
];
// ANCHOR_END: guest_kernels

/// The Debian suite of `--kernel` packages, and of the guests' busybox.
pub const DEFAULT_SUITE: &str = "bookworm";

/// The stock distribution kernel whose guest records the book's first transcripts (kprobes work):
/// Debian 12's 6.1 cloud kernel, the newest of its series.
pub const STOCK_KERNEL: &str = "linux-image-6.1.0-*-cloud-amd64";

/// The newest package of `series` (a name with one `*` where the version goes) among `names`:
/// the `*` must stand for digits, dots and dashes only (so `-dbg` and `-unsigned` packages are not
/// taken), and versions compare as numbers (`6.12.118` after `6.12.99`).
pub(super) fn newest_in_series<'a>(
    series: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let (prefix, suffix) = series.split_once('*')?;
    let version = |name: &'a str| -> Option<Vec<u64>> {
        let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if middle.is_empty()
            || !middle
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        {
            return None;
        }
        middle
            .split(['.', '-'])
            .map(|number| number.parse().ok())
            .collect()
    };
    names
        .into_iter()
        .filter_map(|name| Some((version(name)?, name)))
        .max()
        .map(|(_, name)| name)
}

/// Sets `kernel.package` to the newest package of its series that the suite's index offers now
/// (the index is refreshed when it is older than a day). A kernel given by its exact package name
/// stays as it is.
pub(super) fn resolve(kernel: &mut GuestKernel, vm_dir: &Path) -> anyhow::Result<()> {
    if !kernel.series.contains('*') {
        kernel.package = kernel.series;
        return Ok(());
    }
    if which::which("apt-get").is_err() || which::which("apt-cache").is_err() {
        bail!(
            "vm-test reads Debian's package index with apt-get and apt-cache, which this machine lacks"
        );
    }
    let apt = AptSources::for_guest(kernel.suite, kernel.arch, vm_dir)?;
    apt.refresh_if_older_than(std::time::Duration::from_secs(24 * 3600))?;
    let names = apt.package_names("linux-image-")?;
    // Newest first: the index may name a package it no longer has a version of.
    let mut candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    while let Some(newest) = newest_in_series(kernel.series, candidates.iter().copied()) {
        if apt.has_version(newest)? {
            kernel.package = newest.to_string().leak();
            return Ok(());
        }
        candidates.retain(|name| *name != newest);
    }
    let near: Vec<&String> = names
        .iter()
        .filter(|name| name.contains("cloud") && name.ends_with(kernel.arch.debian()))
        .collect();
    bail!(
        "Debian {} ({}) offers no package of the series {}; its index holds: {}",
        kernel.suite,
        kernel.arch.debian(),
        kernel.series,
        if near.is_empty() {
            "no cloud kernel".to_string()
        } else {
            near.iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

/// The kernels this machine can run (`.0`) and the ones it skips (`.1`), in the order given.
pub(super) fn kernels_for_host(
    host: Arch,
    kernels: Vec<GuestKernel>,
) -> (Vec<GuestKernel>, Vec<GuestKernel>) {
    kernels
        .into_iter()
        .partition(|kernel| GuestBuild::for_guest(host, kernel.arch) != GuestBuild::NotHere)
}

/// The kernel image of `kernel`'s package, downloaded and unpacked once into `target/vm/`.
pub(super) fn fetch_kernel(kernel: &GuestKernel, vm_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = vm_dir.join(kernel.package);
    let unpacked = dir.join("root");
    if let Some(vmlinuz) = find_vmlinuz(&unpacked)? {
        return Ok(vmlinuz);
    }
    if which::which("apt-get").is_err() || which::which("dpkg").is_err() {
        bail!(
            "vm-test fetches Debian kernel packages with apt-get and dpkg, which this machine lacks"
        );
    }
    fs::create_dir_all(&dir)?;
    let apt = AptSources::for_guest(kernel.suite, kernel.arch, vm_dir)?;
    eprintln!("==> vm-test: fetch {} ({})", kernel.package, kernel.about);
    apt.download_and_unpack(kernel.package, &dir, &unpacked)
        .with_context(|| {
            format!(
                "the kernel package {} (from {}, {})",
                kernel.package,
                kernel.suite,
                kernel.arch.debian()
            )
        })?;
    find_vmlinuz(&unpacked)?.with_context(|| format!("no boot/vmlinuz-* in {}", kernel.package))
}

/// apt options that read a Debian suite's package lists for one CPU, kept apart from this
/// machine's own sources (in `target/vm/apt/SUITE-ARCH`), so that nothing is installed and the
/// same packages come on any host.
pub(super) struct AptSources {
    options: Vec<String>,
    dir: PathBuf,
}

impl AptSources {
    pub(super) fn for_guest(suite: &str, arch: Arch, vm_dir: &Path) -> anyhow::Result<Self> {
        let dir = vm_dir
            .join("apt")
            .join(format!("{suite}-{}", arch.debian()));
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("archives/partial"))?;
        let keyring = host_packages::DEBIAN_KEYRING_FILE;
        let list = dir.join("sources.list");
        fs::write(
            &list,
            format!(
                "deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian {suite}-updates main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian-security {suite}-security main\n"
            ),
        )?;
        let option = |name: &str, value: &str| ["-o".to_string(), format!("{name}={value}")];
        let path = |path: PathBuf| path.display().to_string();
        let mut options = Vec::new();
        options.extend(option("Dir::Etc::SourceList", &path(list)));
        options.extend(option("Dir::Etc::SourceParts", &path(dir.join("no-parts"))));
        options.extend(option("Dir::State::Lists", &path(dir.join("lists"))));
        options.extend(option("Dir::Cache::Archives", &path(dir.join("archives"))));
        options.extend(option("APT::Architecture", arch.debian()));
        options.extend(option("APT::Architectures", arch.debian()));
        // No binary caches: apt-cache would otherwise write them over the host's own.
        options.extend(option("Dir::Cache::pkgcache", ""));
        options.extend(option("Dir::Cache::srcpkgcache", ""));
        Ok(Self { options, dir })
    }

    /// `apt-get update` of these lists when they were last updated longer than `age` ago (or
    /// never).
    pub(super) fn refresh_if_older_than(&self, age: std::time::Duration) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|meta| meta.modified())
            .is_ok_and(|updated| updated.elapsed().is_ok_and(|elapsed| elapsed < age));
        if fresh {
            return Ok(());
        }
        run_step(
            &format!("apt-get update ({})", self.dir.display()),
            Command::new("apt-get").arg("update").args(&self.options),
        )?;
        fs::write(&stamp, "")?;
        Ok(())
    }

    /// The names of the packages in the index that start with `prefix`.
    pub(super) fn package_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let listed = crate::pinned::output_of(
            Command::new("apt-cache")
                .args(&self.options)
                .args(["pkgnames", prefix]),
        )?;
        Ok(listed.lines().map(String::from).collect())
    }

    /// Whether the index has a version of `package` to download (it may only be named by another).
    pub(super) fn has_version(&self, package: &str) -> anyhow::Result<bool> {
        let shown = Command::new("apt-cache")
            .args(&self.options)
            .args(["show", "--no-all-versions", package])
            .output()
            .context("cannot run apt-cache")?;
        Ok(shown.status.success() && String::from_utf8_lossy(&shown.stdout).contains("Version: "))
    }

    /// Downloads `package` into `dir` (refreshing the lists once if the first try fails), unpacks
    /// it into `into` and removes the `.deb`.
    pub(super) fn download_and_unpack(
        &self,
        package: &str,
        dir: &Path,
        into: &Path,
    ) -> anyhow::Result<()> {
        let download = || {
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .args(&self.options)
                .arg(package)
                .current_dir(dir)
                .status()
                .is_ok_and(|status| status.success())
        };
        if !download() {
            run_step(
                "apt-get update",
                Command::new("apt-get").arg("update").args(&self.options),
            )?;
            if !download() {
                bail!("cannot download {package} with apt-get: is the package name right?");
            }
        }
        let deb = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .context("apt-get download left no .deb")?;
        run_step(
            &format!("unpack {package}"),
            Command::new("dpkg").arg("-x").arg(&deb).arg(into),
        )?;
        fs::remove_file(&deb)?;
        Ok(())
    }
}

/// The guest's userland: busybox from Debian's `busybox-static` package for the guest's CPU
/// (statically linked), unpacked once into `target/vm/`.
pub(super) fn guest_busybox(arch: Arch, vm_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = vm_dir.join(format!("busybox-{}", arch.debian()));
    let busybox = dir.join("root/bin/busybox");
    if busybox.exists() {
        return Ok(busybox);
    }
    fs::create_dir_all(&dir)?;
    AptSources::for_guest(DEFAULT_SUITE, arch, vm_dir)?.download_and_unpack(
        "busybox-static",
        &dir,
        &dir.join("root"),
    )?;
    Ok(busybox)
}

pub(super) fn find_vmlinuz(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(root.join("boot")) else {
        return Ok(None);
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_builds_its_own_guests_natively_and_cross_builds_arm64_only_from_x86_64() {
        use GuestBuild::*;
        assert_eq!(GuestBuild::for_guest(Arch::X86_64, Arch::X86_64), Native);
        assert_eq!(GuestBuild::for_guest(Arch::X86_64, Arch::Arm64), CrossArm64);
        assert_eq!(GuestBuild::for_guest(Arch::Arm64, Arch::Arm64), Native);
        assert_eq!(GuestBuild::for_guest(Arch::Arm64, Arch::X86_64), NotHere);
        assert_eq!(Arch::of_host("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::of_host("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::of_host("riscv64"), None);
    }

    #[test]
    fn an_arm64_host_runs_the_arm64_guests_and_skips_the_others() {
        let (run, skipped) = kernels_for_host(Arch::Arm64, GUEST_KERNELS.to_vec());
        assert!(!run.is_empty() && run.iter().all(|kernel| kernel.arch == Arch::Arm64));
        assert!(!skipped.is_empty() && skipped.iter().all(|kernel| kernel.arch == Arch::X86_64));
        let (run, skipped) = kernels_for_host(Arch::X86_64, GUEST_KERNELS.to_vec());
        assert_eq!(run.len(), GUEST_KERNELS.len());
        assert!(skipped.is_empty());
    }

    /// Package names from Debian's index (bookworm and bookworm-security, amd64, 7 December 2026).
    const RECORDED_INDEX: &str = include_str!("testdata/bookworm-amd64-linux-images.txt");

    #[test]
    fn the_newest_package_of_each_series_is_chosen() {
        let names = || RECORDED_INDEX.lines();
        assert_eq!(
            newest_in_series("linux-image-6.1.0-*-cloud-amd64", names()),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            newest_in_series("linux-image-6.12.*+deb12-cloud-amd64", names()),
            Some("linux-image-6.12.118+deb12-cloud-amd64")
        );
        assert_eq!(
            newest_in_series(
                "linux-image-6.12.*+deb12-cloud-amd64",
                [
                    "linux-image-6.12.99+deb12-cloud-amd64",
                    "linux-image-6.12.118+deb12-cloud-amd64"
                ]
            ),
            Some("linux-image-6.12.118+deb12-cloud-amd64"),
            "versions compare as numbers"
        );
        // Neither -dbg nor -unsigned, nor the meta-package without a version.
        assert!(names().any(|name| name == "linux-image-6.1.0-57-cloud-amd64-dbg"));
        assert_eq!(
            newest_in_series(
                "linux-image-6.12.*-cloud-amd64",
                ["linux-image-6.12-cloud-amd64"]
            ),
            None
        );
        assert_eq!(
            newest_in_series("linux-image-7.0.*-cloud-amd64", names()),
            None,
            "a series the index does not have"
        );
    }

    #[test]
    fn every_guest_kernel_names_its_attach_paths() {
        for kernel in GUEST_KERNELS {
            assert!(kernel.series.starts_with("linux-image-") && kernel.series.contains('*'));
            assert_eq!(kernel.package, kernel.series, "resolved at run time");
            for path in kernel.attach_paths.split(',') {
                assert!(
                    ["kprobe", "fentry", "tracepoint", "sockops"].contains(&path),
                    "{path}"
                );
            }
        }
    }
}
