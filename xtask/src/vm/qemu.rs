//! Booting a guest under qemu (KVM where it works, TCG otherwise) and reading its cases' results.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::*;

/// How long one test may run inside the guest (TCG emulation is slow).
pub(super) const CASE_LIMIT_SECS: u64 = 120;

/// How long the guest may take to boot (it needs about 2 s under TCG) and to power off, on top of
/// its cases.
pub(super) const BOOT_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it really works on this machine, else TCG
    Auto,
    /// Hardware virtualisation
    Kvm,
    /// Software emulation: slower, works everywhere
    Tcg,
}

/// Picks KVM or TCG. `/dev/kvm` can exist and still not work (nested virtualisation), so `auto`
/// boots a guest that only powers off, once per host boot, and keeps KVM only if that finishes fast.
pub(super) fn choose_accel(wanted: Accel, vmlinuz: &Path, vm_dir: &Path) -> anyhow::Result<Accel> {
    let accel = match wanted {
        Accel::Kvm | Accel::Tcg => wanted,
        Accel::Auto if !Path::new("/dev/kvm").exists() => {
            eprintln!("    accelerator: TCG (no /dev/kvm)");
            return Ok(Accel::Tcg);
        }
        Accel::Auto => {
            let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
            let cache = vm_dir.join(format!("accel-{}", boot_id.trim()));
            match fs::read_to_string(&cache).ok().as_deref() {
                Some("kvm") => Accel::Kvm,
                Some("tcg") => Accel::Tcg,
                _ => {
                    let works = kvm_boots(vmlinuz, vm_dir)?;
                    fs::write(&cache, if works { "kvm" } else { "tcg" })?;
                    if works { Accel::Kvm } else { Accel::Tcg }
                }
            }
        }
    };
    eprintln!(
        "    accelerator: {}",
        match (wanted, accel) {
            (Accel::Auto, Accel::Kvm) => "KVM (a test boot with KVM worked)",
            (Accel::Auto, _) => "TCG (/dev/kvm exists, but a test boot with KVM failed or crawled)",
            (_, Accel::Kvm) => "KVM (--accel kvm)",
            _ => "TCG (--accel tcg)",
        }
    );
    Ok(accel)
}

pub(super) fn kvm_boots(vmlinuz: &Path, vm_dir: &Path) -> anyhow::Result<bool> {
    let dir = vm_dir.join("kvm-probe");
    let staging = dir.join("initramfs");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&staging)?;
    copy_into(
        &guest_busybox(Arch::X86_64, vm_dir)?,
        &staging,
        Path::new("/bin/busybox"),
    )?;
    let init = staging.join("init");
    fs::write(
        &init,
        "#!/bin/busybox sh\n/bin/busybox mkdir -p /dev\n/bin/busybox mount -t devtmpfs d /dev\n/bin/busybox echo GUEST-DONE >/dev/ttyS1\n/bin/busybox poweroff -f\n",
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let archive = dir.join("initramfs.cpio");
    pack_initramfs(&staging, &archive)?;
    let (output, _) = boot(
        Arch::X86_64,
        vmlinuz,
        &archive,
        Accel::Kvm,
        &dir,
        Duration::from_secs(15),
    )?;
    Ok(output.contains("GUEST-DONE"))
}

/// Boots the guest and waits for it to power off, or kills it at `limit`. Returns what the guest
/// wrote to its result port and the kernel's console.
pub(super) fn boot(
    arch: Arch,
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    dir: &Path,
    limit: Duration,
) -> anyhow::Result<(String, String)> {
    let console = dir.join("console.log");
    let output = dir.join("output.log");
    let (accel, cpu) = match (arch, accel) {
        (Arch::X86_64, Accel::Kvm) => ("kvm", "host"),
        (Arch::X86_64, _) => ("tcg", "max"),
        // cortex-a72: `max` emulates pointer authentication, which makes TCG several times slower.
        (Arch::Arm64, _) => ("tcg", "cortex-a72"),
    };
    let (qemu_binary, machine, append) = match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "pc", "console=ttyS0 panic=-1 quiet"),
        Arch::Arm64 => (
            "qemu-system-aarch64",
            "virt",
            "console=ttyAMA0 panic=-1 quiet loglevel=1",
        ),
    };
    let mut command = Command::new(qemu_binary);
    command
        .args([
            "-M", machine, "-accel", accel, "-cpu", cpu, "-m", "1024", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
    match arch {
        // The kernel's messages on the first serial port, the results on the second.
        Arch::X86_64 => command
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-serial")
            .arg(format!("file:{}", output.display())),
        // One serial port: the results among the kernel's (few, with loglevel=1) messages.
        Arch::Arm64 => command
            .arg("-serial")
            .arg(format!("file:{}", output.display())),
    };
    let mut qemu = command
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {qemu_binary}"))?;
    let started = Instant::now();
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
    // Polled, not waited for: what decides is what the guest has written to its output file.
    while qemu.try_wait()?.is_none() {
        // A guest that has not said a word by the boot limit is not coming (a KVM that crawls, a
        // kernel that hangs early): stop it then, not at the end of all its cases' time.
        let silent = started.elapsed() > BOOT_LIMIT.min(limit) && !read(&output).contains("GUEST-");
        if silent || started.elapsed() > limit {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let console = match arch {
        Arch::X86_64 => read(&console),
        Arch::Arm64 => read(&output),
    };
    Ok((read(&output), console))
}

/// One test's result in one guest kernel.
#[derive(Debug, PartialEq)]
pub(super) struct CaseResult {
    pub(super) name: String,
    pub(super) passed: bool,
    pub(super) seconds: f64,
    pub(super) output: String,
}

pub(super) fn boot_and_run(
    kernel: &GuestKernel,
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    case_count: usize,
) -> anyhow::Result<(Vec<CaseResult>, GuestRun)> {
    let dir = initramfs.parent().unwrap();
    let limit = BOOT_LIMIT + Duration::from_secs(CASE_LIMIT_SECS) * case_count as u32;
    eprintln!(
        "==> vm-test: boot {} ({}), {case_count} cases",
        kernel.package, kernel.about
    );
    let started = Instant::now();
    let (output, console) = boot(kernel.arch, vmlinuz, initramfs, accel, dir, limit)?;
    let elapsed = started.elapsed().as_secs_f64();
    let Some((release, boot_seconds)) = output.lines().find_map(|line| {
        let mut words = line.strip_prefix("GUEST-UP ")?.split(' ');
        let release = words.next()?.to_string();
        Some((release, words.next()?.parse::<f64>().ok()?))
    }) else {
        if console.trim().is_empty() {
            bail!(
                "the guest never ran its tests ({elapsed:.1} s), and its kernel printed nothing: qemu \
                 could not start it{}",
                if accel == Accel::Kvm {
                    " (KVM may not work here: try --accel tcg)"
                } else {
                    ""
                }
            );
        }
        bail!(
            "the guest never ran its tests ({elapsed:.1} s); kernel console, last lines:\n{}",
            tail(&console, 30)
        );
    };
    let results = parse_results(&output);
    // Guests boot side by side: one guest's report at a time.
    static REPORTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _reporting = REPORTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    eprintln!(
        "==> vm-test: {} ran {} cases:",
        kernel.package,
        results.len()
    );
    for result in &results {
        let verdict = if result.passed { "ok  " } else { "FAIL" };
        eprintln!("      {verdict} {:>6.1} s  {}", result.seconds, result.name);
        // The step's own words on which path attached (the harness echoes them after `| `).
        for line in result
            .output
            .lines()
            .filter_map(|line| line.split("| ").nth(1))
        {
            if line.contains(": attached (") || line.starts_with("struct offsets") {
                eprintln!("                   {line}");
            }
        }
        if !result.passed {
            eprintln!("{}", indent(&result.output, "        | "));
        }
    }
    if !output.contains("GUEST-DONE") || results.len() != case_count {
        bail!(
            "the guest stopped after {} of {case_count} cases ({elapsed:.1} s): it hung or panicked; \
             kernel console, last lines:\n{}\nresults, last lines:\n{}",
            results.len(),
            tail(&console, 30),
            tail(&output, 30)
        );
    }
    eprintln!(
        "    {}: booted in {boot_seconds:.1} s, whole run {elapsed:.1} s",
        kernel.package
    );
    let run = GuestRun {
        release,
        boot_seconds,
        whole_seconds: elapsed,
    };
    Ok((results, run))
}

/// A guest's kernel release and times.
pub(super) struct GuestRun {
    pub(super) release: String,
    pub(super) boot_seconds: f64,
    pub(super) whole_seconds: f64,
}

/// Reads the `CASE-START` / `CASE-END step name status start end` lines of the guest's output.
pub(super) fn parse_results(output: &str) -> Vec<CaseResult> {
    let mut results = Vec::new();
    let mut case_output = String::new();
    for line in output.lines() {
        if line.starts_with("CASE-START ") {
            case_output.clear();
        } else if let Some(end) = line.strip_prefix("CASE-END ") {
            let fields: Vec<_> = end.split(' ').collect();
            if let [step, name, status, start, end] = fields[..] {
                let seconds =
                    end.parse::<f64>().unwrap_or(0.0) - start.parse::<f64>().unwrap_or(0.0);
                results.push(CaseResult {
                    name: format!("{step}::{name}"),
                    passed: status == "0",
                    seconds,
                    output: std::mem::take(&mut case_output),
                });
            }
        } else {
            case_output.push_str(line);
            case_output.push('\n');
        }
    }
    results
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    indent(
        &all[all.len().saturating_sub(lines)..].join("\n"),
        "        | ",
    )
}

pub(super) fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guests_results() {
        let output = "GUEST-UP 6.1.0 2.31\nCASE-START step1-hello a\nrunning 1 test\ntest a ... ok\nCASE-END step1-hello a 0 2.50 5.75\nCASE-START step1-hello b\nboom\nCASE-END step1-hello b 101 5.80 6.00\nGUEST-DONE\n";
        let results = parse_results(output);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].name, "step1-hello::a");
        assert!(results[0].passed);
        assert!((results[0].seconds - 3.25).abs() < 1e-9);
        assert_eq!(results[0].output, "running 1 test\ntest a ... ok\n");
        assert!(!results[1].passed);
        assert_eq!(results[1].output, "boom\n");
    }
}
