//! The guest's first root file system: busybox, the test binaries and their step binaries at the
//! paths they were built to find, their libraries, and an `/init` that runs each case with a limit.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::bail;

use super::*;
use crate::pinned::target_dir;

/// The guest's `/init`: mount what the tests need, run each case with a time limit, power off.
/// Results go to the second serial port, apart from the kernel's messages on the first.
pub(super) fn init_script(kernel: &GuestKernel) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin CI=1 RUST_BACKTRACE=0 LISTEN_TRACE_ALONE=1 LISTEN_TRACE_EXPECT_ATTACH={attach_paths} {storm}
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
exec >/dev/{results_tty} 2>&1
echo "GUEST-UP $(uname -r) $(cut -d' ' -f1 /proc/uptime)"
while read -r step binary name; do
  echo "CASE-START $step $name"
  start=$(cut -d' ' -f1 /proc/uptime)
  timeout {CASE_LIMIT_SECS} "$binary" --exact "$name" --include-ignored --test-threads=1 --nocapture
  status=$?
  echo "CASE-END $step $name $status $start $(cut -d' ' -f1 /proc/uptime)"
done < /cases
echo GUEST-DONE
poweroff -f
"#,
        attach_paths = kernel.attach_paths,
        // An emulated CPU is slower than this machine's, an arm64 one several times: smaller storms
        // and fewer threads, counted as exactly (the host runs the full sizes).
        storm = match kernel.arch {
            Arch::X86_64 => "LISTEN_TRACE_STORM=50000 LISTEN_TRACE_THREADS=5000",
            Arch::Arm64 => "LISTEN_TRACE_STORM=20000 LISTEN_TRACE_THREADS=5000",
        },
        // x86-64 guests have a second serial port for the results; arm64's `virt` machine has one.
        results_tty = match kernel.arch {
            Arch::X86_64 => "ttyS1",
            Arch::Arm64 => "ttyAMA0",
        }
    )
}

/// The part of the initramfs that every guest of one build shares: busybox, the test binaries,
/// their step binaries (at the paths the tests were built to find them) and the shared libraries
/// all of them need, packed once into `vm_dir/shared-BUILD.cpio`.
pub(super) fn pack_shared_part(
    arch: Arch,
    build: GuestBuild,
    tests: &[KernelTests],
    vm_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let name = match build {
        GuestBuild::CrossArm64 => "shared-cross-arm64",
        _ => "shared-native",
    };
    let staging = fresh_folder(&vm_dir.join(name))?;
    let busybox = guest_busybox(arch, vm_dir)?;
    copy_into(&busybox, &staging, Path::new("/bin/busybox"))?;
    let release = match build {
        GuestBuild::CrossArm64 => target_dir().join(ARM64_TARGET).join("release"),
        _ => target_dir().join("release"),
    };
    for test in tests {
        copy_for(build, &test.executable, &staging, Some(&test.inside()))?;
        // The tests start `env!("CARGO_BIN_EXE_<step>")`: the same absolute path in the guest.
        copy_for(build, &release.join(&test.step), &staging, None)?;
    }
    let archive = vm_dir.join(format!("{name}.cpio"));
    pack_initramfs(&staging, &archive)?;
    Ok(archive)
}

/// A guest's initramfs: the shared part (`pack_shared_part`) followed by its own small archive (the
/// kernel unpacks concatenated archives one after the other), which holds its `/init`, its list of
/// cases, and the extra cases where they run.
pub(super) fn build_initramfs(
    kernel: &GuestKernel,
    build: GuestBuild,
    shared: &Path,
    tests: &[KernelTests],
    extra: &[&ExtraCases],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let staging = fresh_folder(&dir.join("initramfs"))?;
    let mut cases = String::new();
    for test in tests {
        for case in &test.cases {
            writeln!(cases, "{} {} {case}", test.step, test.inside().display())?;
        }
    }
    for extra in extra {
        for (binary, inside) in &extra.binaries {
            copy_for(build, binary, &staging, Some(inside))?;
        }
        let runner = staging.join(extra.runner.strip_prefix("/").unwrap_or(&extra.runner));
        fs::create_dir_all(runner.parent().expect("the runner is in a folder"))?;
        fs::write(&runner, &extra.runner_script)?;
        fs::set_permissions(&runner, fs::Permissions::from_mode(0o755))?;
        for case in &extra.cases {
            writeln!(cases, "{} {} {case}", extra.label, extra.runner.display())?;
        }
    }
    fs::write(staging.join("cases"), cases)?;
    let init = staging.join("init");
    fs::write(&init, init_script(kernel))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let own = dir.join("own.cpio");
    pack_initramfs(&staging, &own)?;
    let archive = dir.join("initramfs.cpio");
    let mut whole = fs::File::create(&archive)?;
    for part in [shared, own.as_path()] {
        std::io::copy(&mut fs::File::open(part)?, &mut whole)
            .with_context(|| format!("cannot append {}", part.display()))?;
    }
    Ok(archive)
}

/// An empty folder at `path`, made afresh.
fn fresh_folder(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        fs::remove_dir_all(path)?;
    }
    fs::create_dir_all(path)?;
    Ok(path.to_path_buf())
}

/// Copies a binary into the staging folder `root`: a native one with its shared libraries, a
/// cross-built one (static) alone.
fn copy_for(
    build: GuestBuild,
    binary: &Path,
    root: &Path,
    inside: Option<&Path>,
) -> anyhow::Result<()> {
    match build {
        GuestBuild::CrossArm64 => copy_into(binary, root, inside.unwrap_or(binary)),
        _ => copy_with_libraries(binary, root, inside),
    }
}

/// Packs the folder `staging` into `archive`, an uncompressed cpio archive in the `newc` format the
/// kernel unpacks as its first root file system: the system's `cpio`, given the list of files.
pub(super) fn pack_initramfs(staging: &Path, archive: &Path) -> anyhow::Result<()> {
    pub(super) fn list(
        root: &Path,
        relative: &Path,
        names: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        names.push(relative.display().to_string());
        if root.join(relative).symlink_metadata()?.is_dir() {
            let mut entries: Vec<_> = fs::read_dir(root.join(relative))?
                .map(|entry| entry.map(|entry| entry.file_name()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for name in entries {
                list(root, &relative.join(name), names)?;
            }
        }
        Ok(())
    }
    let mut names = Vec::new();
    list(staging, Path::new("."), &mut names)?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(archive)?)
        .spawn()
        .context("cannot run cpio")?;
    cpio.stdin
        .take()
        .expect("stdin is piped")
        .write_all((names.join("\n") + "\n").as_bytes())?;
    let status = cpio.wait()?;
    if !status.success() {
        bail!("cpio failed to pack {} ({status})", staging.display());
    }
    Ok(())
}

/// Copies `binary` into `root` (at `inside`, or at its own absolute path), with its dynamic loader
/// and every shared library it needs, at the paths where the guest's loader will look for them.
pub(super) fn copy_with_libraries(
    binary: &Path,
    root: &Path,
    inside: Option<&Path>,
) -> anyhow::Result<()> {
    let binary = binary
        .canonicalize()
        .with_context(|| format!("{} is missing", binary.display()))?;
    copy_into(&binary, root, inside.unwrap_or(&binary))?;
    let tree = lddtree::DependencyAnalyzer::new(PathBuf::from("/"))
        .analyze(&binary)
        .with_context(|| format!("cannot read the libraries {} needs", binary.display()))?;
    for library in tree.libraries.values() {
        let source = library.realpath.as_deref().with_context(|| {
            format!(
                "{} needs {}, which is not found",
                binary.display(),
                library.name
            )
        })?;
        copy_into(source, root, &library.path)?;
    }
    if let Some(interpreter) = &tree.interpreter {
        let interpreter = Path::new(interpreter);
        copy_into(&interpreter.canonicalize()?, root, interpreter)?;
    }
    Ok(())
}

pub(super) fn copy_into(source: &Path, root: &Path, inside: &Path) -> anyhow::Result<()> {
    let destination = root.join(inside.strip_prefix("/").unwrap_or(inside));
    fs::create_dir_all(destination.parent().unwrap())?;
    fs::copy(source, &destination).with_context(|| format!("cannot copy {}", source.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_script_runs_every_case_with_a_limit() {
        let script = init_script(&GUEST_KERNELS[0]);
        assert!(script.contains("LISTEN_TRACE_EXPECT_ATTACH=kprobe,fentry,tracepoint"));
        assert!(script.contains(&format!(
            "timeout {CASE_LIMIT_SECS} \"$binary\" --exact \"$name\""
        )));
        assert!(script.ends_with("poweroff -f\n"));
    }
}
