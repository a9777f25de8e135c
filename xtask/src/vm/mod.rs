//! `cargo xtask vm-test`: the kernel tests of every step, run again inside other kernels under qemu.
//!
//! One kernel cannot prove the lessons: this one may lack kprobes or refuse fentry, and its struct
//! layouts are only its own. So we boot real distribution kernels (a table below, one line per
//! kernel) with an initramfs that holds the very test binaries `cargo test` built, their step
//! binaries and busybox, and run every kernel test there, one at a time, with a time limit each.

use std::{
    fs,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use cargo_metadata::{Artifact, Message, TargetKind};

mod initramfs;
mod kernels;
mod qemu;
mod results;

use initramfs::{build_initramfs, copy_into, pack_initramfs, pack_shared_part};
use kernels::{
    ARM64_LINKER, ARM64_TARGET, GuestBuild, fetch_kernel, guest_busybox, kernels_for_host, resolve,
};
pub use kernels::{Arch, DEFAULT_SUITE, GUEST_KERNELS, GuestKernel, STOCK_KERNEL};
pub use qemu::Accel;
use qemu::{CASE_LIMIT_SECS, CaseResult, GuestRun, boot_and_run, choose_accel};
use results::{
    MATRIX_PAGE, MatrixRow, compare_stock_transcripts, matrix_page, outcomes,
    write_stock_transcripts,
};

use crate::{
    host_packages,
    pinned::{Toolchain, output_of, run_step, target_dir},
};

/// The lessons' tests that record the book's transcripts (`support::transcripts`).
pub const TRANSCRIPT_TESTS: &str = "the_books_transcript_is_recorded";

#[derive(Debug, Clone, clap::Args)]
pub struct VmTestArgs {
    /// How qemu runs the guests
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Run only the tests whose `step::test` name contains this text (or one of these texts,
    /// separated by commas)
    #[arg(long)]
    pub filter: Option<String>,
    /// Test in this Debian kernel package instead of the built-in list (for example a room's
    /// kernel: `--kernel linux-image-6.12.117+deb12-amd64`); a `*` where the version goes takes
    /// the newest of that series (`--kernel 'linux-image-6.12.*+deb12-amd64'`); a series of the
    /// built-in list runs that guest, with its suite, CPU and attach paths
    #[arg(long, value_name = "PACKAGE")]
    pub kernel: Option<String>,
    /// With --kernel: the attach paths that kernel must accept (comma-separated); by default none
    /// is required, and the output shows which attached
    #[arg(long, value_name = "PATHS", requires = "kernel", default_value = "")]
    pub expect: String,
    /// With --kernel: the Debian suite that has the package (for example `bullseye`)
    #[arg(long, requires = "kernel", default_value = DEFAULT_SUITE)]
    pub suite: String,
    /// With --kernel: the CPU of that kernel package
    #[arg(long, value_enum, requires = "kernel", default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// Rewrite the kernels table (`docs/src/vm-test-results.md`) and the stock kernel's
    /// transcripts from this run; without it they are compared with this run, and it says when
    /// they are out of date
    #[arg(long)]
    pub write: bool,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            accel: Accel::Auto,
            filter: None,
            kernel: None,
            expect: String::new(),
            suite: DEFAULT_SUITE.to_string(),
            arch: Arch::X86_64,
            write: false,
        }
    }
}

impl VmTestArgs {
    /// Only the stock kernel (`STOCK_KERNEL`), with every attach path required: the guest of
    /// `cargo xtask test`, whose kernel the book's first transcripts come from.
    pub fn stock() -> Self {
        Self {
            kernel: Some(STOCK_KERNEL.to_string()),
            expect: "kprobe,fentry,tracepoint,sockops".to_string(),
            ..Self::default()
        }
    }

    /// The guest of `cargo xtask test`: the stock kernel, or on an arm64 machine (which boots no
    /// x86-64 guest) the first arm64 kernel of `GUEST_KERNELS`.
    pub fn default_level() -> Self {
        match GUEST_KERNELS
            .iter()
            .find(|kernel| kernel.arch == Arch::Arm64)
            .filter(|_| Arch::of_host(std::env::consts::ARCH) == Some(Arch::Arm64))
        {
            Some(arm64) => Self {
                kernel: Some(arm64.series.to_string()),
                expect: arm64.attach_paths.to_string(),
                suite: arm64.suite.to_string(),
                arch: Arch::Arm64,
                ..Self::default()
            },
            None => Self::stock(),
        }
    }

    /// The kernels to boot: the built-in list, or the one given with `--kernel`.
    fn kernels(&self) -> Vec<GuestKernel> {
        match &self.kernel {
            None => GUEST_KERNELS.to_vec(),
            // A series of the built-in list: that entry, with its suite and CPU.
            Some(series) if let Some(known) = GUEST_KERNELS.iter().find(|k| k.series == series) => {
                vec![GuestKernel {
                    attach_paths: if self.expect.is_empty() {
                        known.attach_paths
                    } else {
                        self.expect.clone().leak()
                    },
                    ..known.clone()
                }]
            }
            // Lives as long as the program does, like the built-in entries.
            Some(package) => vec![GuestKernel {
                series: package.clone().leak(),
                package: package.clone().leak(),
                about: "given with --kernel",
                attach_paths: self.expect.clone().leak(),
                suite: self.suite.clone().leak(),
                arch: self.arch,
            }],
        }
    }
}

/// One kernel-test binary of a step, and the tests it holds.
#[derive(Debug)]
struct KernelTests {
    step: String,
    executable: PathBuf,
    cases: Vec<String>,
}

impl KernelTests {
    /// Where the test binary sits in the guest.
    fn inside(&self) -> PathBuf {
        PathBuf::from(format!("/tests/{}-kernel", self.step))
    }
}

/// Cases from outside this workspace's own test binaries (the mutants' kernel tests), run in the
/// stock kernel's guest in the same boot as its own cases. `binaries` are copied into the guest
/// with their libraries (host path, guest path), `runner_script` is written at `runner`, and each
/// case runs `runner CASE` there as a test binary's case runs.
#[derive(Debug)]
pub struct ExtraCases {
    /// One word, unique among the extra cases (`mutant-3`): results are named `LABEL::CASE`.
    pub label: String,
    pub binaries: Vec<(PathBuf, PathBuf)>,
    pub runner: PathBuf,
    pub runner_script: String,
    pub cases: Vec<String>,
}

/// What the stock kernel's guest found: every case of its own (`step::test`, passed) and the
/// extra cases' (`LABEL::CASE`, passed), kept apart.
#[derive(Debug, Default)]
pub struct StockResults {
    pub own: Vec<(String, bool)>,
    pub extra: Vec<(String, bool)>,
}

pub fn run(toolchain: &Toolchain, args: &VmTestArgs) -> anyhow::Result<()> {
    run_with(toolchain, args, &[]).map(drop)
}

/// `run`, with `extra` cases in the stock kernel's guest (which must be among the kernels); returns
/// what the stock guest found. Only the workspace's own cases decide whether the run passed.
pub fn run_with(
    toolchain: &Toolchain,
    args: &VmTestArgs,
    extra: &[&ExtraCases],
) -> anyhow::Result<StockResults> {
    prepare(toolchain, args, extra)?.boot()
}

/// A run whose builds are done and whose guests' kernels and initramfs are ready: what is left is
/// to boot them (`boot`), which touches nothing that other builds use, so it can go on alongside
/// them.
pub struct PreparedRun {
    args: VmTestArgs,
    started: Instant,
    guests: Vec<PreparedGuest>,
    all_kernels: bool,
}

/// Everything `run_with` does before the boots: the builds, the downloads, the initramfs.
pub fn prepare(
    toolchain: &Toolchain,
    args: &VmTestArgs,
    extra: &[&ExtraCases],
) -> anyhow::Result<PreparedRun> {
    let started = Instant::now();
    let host = Arch::of_host(std::env::consts::ARCH).with_context(|| {
        format!(
            "vm-test runs on x86-64 or arm64 machines, not on {}",
            std::env::consts::ARCH
        )
    })?;
    let (mut kernels, skipped) = kernels_for_host(host, args.kernels());
    let vm_dir = target_dir().join("vm");
    for kernel in &mut kernels {
        resolve(kernel, &vm_dir)?;
        if kernel.package != kernel.series {
            eprintln!(
                "    vm-test: {} is the newest of {} in Debian {}",
                kernel.package, kernel.series, kernel.suite
            );
        }
    }
    for kernel in &skipped {
        eprintln!(
            "    vm-test: skipping {} ({}): x86-64 guests run on an x86-64 machine only; this arm64 \
             machine runs the arm64 guests",
            kernel.package,
            kernel.arch.debian()
        );
    }
    if kernels.is_empty() {
        bail!("none of the kernels asked for can run on this {host:?} machine");
    }
    let cross = kernels
        .iter()
        .any(|kernel| GuestBuild::for_guest(host, kernel.arch) == GuestBuild::CrossArm64);
    ensure_host_tools(toolchain, &kernels, cross)?;
    // The cases are listed by running this machine's build; a cross build has the same ones.
    let host_tests = build_kernel_tests(toolchain, args.filter.as_deref(), false)?;
    let cross_tests = if cross {
        Some(build_kernel_tests(toolchain, args.filter.as_deref(), true)?)
    } else {
        None
    };
    let case_count: usize = host_tests.iter().map(|tests| tests.cases.len()).sum();
    if case_count == 0 {
        bail!("no kernel test matches the filter {:?}", args.filter);
    }
    ensure!(
        extra.is_empty() || kernels.iter().any(|kernel| kernel.series == STOCK_KERNEL),
        "the extra cases run in the stock kernel {STOCK_KERNEL}, which this run does not boot"
    );
    // Each guest's kernel and initramfs, one after the other (downloads, packing); the part of
    // the initramfs that the guests of one build share is packed once.
    let mut shared_parts = std::collections::HashMap::new();
    let mut prepared = Vec::new();
    for kernel in &kernels {
        let build = GuestBuild::for_guest(host, kernel.arch);
        let tests = match build {
            GuestBuild::CrossArm64 => cross_tests.as_ref().expect("built above"),
            _ => &host_tests,
        };
        let shared = match shared_parts.entry(build) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(pack_shared_part(kernel.arch, build, tests, &vm_dir)?)
            }
        };
        let vmlinuz = fetch_kernel(kernel, &vm_dir)?;
        let accel = match kernel.arch {
            Arch::X86_64 => choose_accel(args.accel, &vmlinuz, &vm_dir)?,
            Arch::Arm64 => Accel::Tcg,
        };
        let is_stock = kernel.series == STOCK_KERNEL;
        let extra_here = if is_stock { extra } else { &[] };
        let initramfs = build_initramfs(
            kernel,
            build,
            shared,
            tests,
            extra_here,
            &vm_dir.join(kernel.package),
        )?;
        let extra_count: usize = extra_here.iter().map(|extra| extra.cases.len()).sum();
        prepared.push(PreparedGuest {
            kernel: kernel.clone(),
            vmlinuz,
            initramfs,
            accel,
            is_stock,
            extra_labels: extra_here.iter().map(|extra| extra.label.clone()).collect(),
            own_cases: case_count,
            extra_count,
        });
    }
    Ok(PreparedRun {
        args: args.clone(),
        started,
        guests: prepared,
        all_kernels: skipped.is_empty(),
    })
}

impl PreparedRun {
    /// Boots the guests, as many at once as this machine has cores (each guest has one emulated
    /// CPU), and judges their cases; returns what the stock guest found.
    pub fn boot(self) -> anyhow::Result<StockResults> {
        let Self {
            args,
            started,
            guests: prepared,
            all_kernels,
        } = self;
        let mut stock = StockResults::default();
        let mut failures = Vec::new();
        let mut out_of_date = Vec::new();
        let mut matrix = Vec::new();
        let mut total = 0;
        let booted = boot_all(&prepared);
        for (guest, booted) in prepared.iter().zip(booted) {
            let kernel = &guest.kernel;
            let (mut results, run) = match booted {
                Ok(booted) => booted,
                Err(error) => {
                    failures.push(format!("{} ({error:#})", kernel.package));
                    continue;
                }
            };
            let is_extra = |result: &CaseResult| {
                guest
                    .extra_labels
                    .iter()
                    .any(|label| result.name.starts_with(&format!("{label}::")))
            };
            let (extra_results, own): (Vec<CaseResult>, Vec<CaseResult>) =
                results.drain(..).partition(is_extra);
            let results = own;
            if guest.is_stock {
                stock.own = results
                    .iter()
                    .map(|result| (result.name.clone(), result.passed))
                    .collect();
                stock.extra = extra_results
                    .iter()
                    .map(|result| (result.name.clone(), result.passed))
                    .collect();
            }
            total += guest.own_cases;
            eprintln!(
                "    {}: {} of {} cases passed",
                kernel.package,
                results.iter().filter(|result| result.passed).count(),
                guest.own_cases
            );
            if guest.is_stock {
                if args.write {
                    write_stock_transcripts(&results, &run.release)?;
                } else {
                    out_of_date.extend(compare_stock_transcripts(&results)?);
                }
            }
            matrix.push(MatrixRow::of(kernel, &results, run));
            failures.extend(
                results
                    .into_iter()
                    .filter(|result| !result.passed)
                    .map(|result| format!("{} ({})", result.name, kernel.package)),
            );
        }
        eprintln!(
            "    vm-test: {} passed, {} failed, in {} kernel(s), {:.1} s{}",
            total - failures.len(),
            failures.len(),
            prepared.len(),
            started.elapsed().as_secs_f64(),
            if stock.extra.is_empty() {
                String::new()
            } else {
                format!(
                    " (and {} extra case(s) in {STOCK_KERNEL}, judged by their caller)",
                    stock.extra.len()
                )
            }
        );
        if !failures.is_empty() {
            bail!("vm-test failed: {}", failures.join(", "));
        }
        if !out_of_date.is_empty() {
            bail!(
                "vm-test: {} no longer match the lessons' output: run `cargo xtask docs \
             --refresh-transcripts`",
                out_of_date.join(", ")
            );
        }
        if args.kernel.is_none() && args.filter.is_none() && all_kernels {
            let page = crate::workspace_root().join(MATRIX_PAGE);
            let now = matrix_page(&matrix)?;
            if args.write {
                fs::write(&page, now)?;
                eprintln!(
                    "    vm-test: the table of kernels and attach paths is in {}",
                    page.display()
                );
            } else if outcomes(&fs::read_to_string(&page).unwrap_or_default()) == outcomes(&now) {
                eprintln!("    vm-test: {MATRIX_PAGE} shows what this run found");
            } else {
                eprintln!(
                    "    OUT OF DATE: {MATRIX_PAGE} does not show what this run found (attach paths, \
                 MPTCP or cases); `cargo xtask vm-test --write` rewrites it. This run:\n{now}"
                );
            }
        }
        Ok(stock)
    }
}

/// A guest ready to boot: its kernel, its initramfs, and what it will run.
struct PreparedGuest {
    kernel: GuestKernel,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    accel: Accel,
    is_stock: bool,
    /// The labels of the extra cases it runs.
    extra_labels: Vec<String>,
    /// The workspace's cases.
    own_cases: usize,
    extra_count: usize,
}

/// Boots every guest, as many at once as this machine has cores, the emulated arm64 ones first
/// (they take longest); returns each guest's results in the order given.
fn boot_all(guests: &[PreparedGuest]) -> Vec<anyhow::Result<(Vec<CaseResult>, GuestRun)>> {
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|&index| guests[index].kernel.arch != Arch::Arm64);
    let at_once = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(guests.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<anyhow::Result<_>>>> =
        guests.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..at_once {
            scope.spawn(|| {
                loop {
                    let taken = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&index) = order.get(taken) else {
                        break;
                    };
                    let guest = &guests[index];
                    let booted = boot_and_run(
                        &guest.kernel,
                        &guest.vmlinuz,
                        &guest.initramfs,
                        guest.accel,
                        guest.own_cases + guest.extra_count,
                    );
                    *results[index].lock().expect("no thread panics holding it") = Some(booted);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|result| {
            result
                .into_inner()
                .expect("no thread panicked holding it")
                .expect("every guest was booted")
        })
        .collect()
}

/// `setup --arm64`: what the arm64 guests need on this machine, ahead of their first `vm-test`.
pub fn prepare_arm64_guests(toolchain: &Toolchain) -> anyhow::Result<()> {
    let host = Arch::of_host(std::env::consts::ARCH).context("vm-test runs on x86-64 or arm64")?;
    let arm64: Vec<GuestKernel> = GUEST_KERNELS
        .iter()
        .filter(|kernel| kernel.arch == Arch::Arm64)
        .cloned()
        .collect();
    ensure_host_tools(
        toolchain,
        &arm64,
        GuestBuild::for_guest(host, Arch::Arm64) == GuestBuild::CrossArm64,
    )
}

/// What booting `kernels` needs on this machine, installed with apt when missing; with `cross`,
/// also the C cross toolchain and the pinned toolchain's arm64 target, checked by linking a
/// program before the long build starts.
fn ensure_host_tools(
    toolchain: &Toolchain,
    kernels: &[GuestKernel],
    cross: bool,
) -> anyhow::Result<()> {
    let mut packages = vec![host_packages::CPIO, host_packages::DEBIAN_KEYRING];
    if kernels.iter().any(|kernel| kernel.arch == Arch::X86_64) {
        packages.extend([host_packages::QEMU_X86, host_packages::QEMU_X86_FIRMWARE]);
    }
    if kernels.iter().any(|kernel| kernel.arch == Arch::Arm64) {
        packages.push(host_packages::QEMU_ARM);
    }
    if cross {
        packages.extend([
            host_packages::ARM64_CROSS_GCC,
            host_packages::ARM64_CROSS_LIBC,
        ]);
    }
    host_packages::ensure("vm-test", &packages)?;
    if cross {
        ensure_arm64_target(toolchain)?;
        check_cross_linking(&target_dir().join("vm"))?;
    }
    Ok(())
}

/// The pinned toolchain's arm64 standard library, added with rustup when missing.
fn ensure_arm64_target(toolchain: &Toolchain) -> anyhow::Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        toolchain.name,
    ]))?;
    if installed.lines().any(|target| target == ARM64_TARGET) {
        return Ok(());
    }
    run_step(
        &format!("rustup target add {ARM64_TARGET} (for the arm64 guests)"),
        Command::new("rustup").args(["target", "add", ARM64_TARGET, "--toolchain", toolchain.name]),
    )
    .with_context(|| format!("the arm64 guests need Rust's {ARM64_TARGET} target"))?;
    crate::install_record::note(crate::install_record::Kind::RustTarget, &[ARM64_TARGET]);
    Ok(())
}

/// Links a static arm64 C program the way the test binaries will be linked, so that a missing
/// C library or start file is named now, not after minutes of building.
fn check_cross_linking(vm_dir: &Path) -> anyhow::Result<()> {
    let dir = vm_dir.join("cross-check");
    fs::create_dir_all(&dir)?;
    let source = dir.join("check.c");
    fs::write(&source, "int main(void) { return 0; }\n")?;
    let output = Command::new(ARM64_LINKER)
        .arg("-static")
        .arg("-o")
        .arg(dir.join("check"))
        .arg(&source)
        .output()
        .with_context(|| format!("cannot run {ARM64_LINKER}"))?;
    if !output.status.success() {
        bail!(
            "{ARM64_LINKER} cannot link a static arm64 program, so the arm64 test binaries would \
             not link either: the arm64 C library and start files (crt1.o, libc.a) are missing. \
             Install them: `apt-get install {}` on Debian or Ubuntu (the package is only a \
             Recommends of {}), or your distribution's aarch64 glibc for cross-compiling.\n{}",
            host_packages::ARM64_CROSS_LIBC.name,
            host_packages::ARM64_CROSS_GCC.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Builds the kernel tests of every step (`tests/kernel.rs`) as `cargo test` does (with `cross`,
/// for arm64), and lists their cases.
fn build_kernel_tests(
    toolchain: &Toolchain,
    filter: Option<&str>,
    cross: bool,
) -> anyhow::Result<Vec<KernelTests>> {
    let mut args = vec![
        "test",
        "--release",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    let target = cross.then_some(ARM64_TARGET);
    let ebpf_crates = crate::lessons::ebpf_crates()?;
    let lessons = crate::lessons::present()?;
    if let Some(target) = target {
        // Only what the guests run: each lesson's kernel tests (and its step binary with them).
        args.extend(["--target", target, "--test", "kernel"]);
        for lesson in &lessons {
            args.extend(["--package", lesson.package]);
        }
    } else {
        // As `cargo test` built the workspace, so that nothing is compiled again.
        args.push("--workspace");
        for ebpf in &ebpf_crates {
            args.extend(["--exclude", ebpf.as_str()]);
        }
    }
    eprintln!(
        "==> vm-test: build the kernel tests{}",
        target.map_or(String::new(), |target| format!(" for {target}"))
    );
    let mut command = toolchain.cargo(&args);
    // The eBPF side reads kprobe arguments from the registers of the guest's architecture.
    let arch = if cross {
        "aarch64"
    } else {
        crate::ebpf::this_arch()
    };
    crate::ebpf::build_for(toolchain, &mut command, &ebpf_crates, arch)?;
    if target.is_some() {
        // Linked statically, so that the guest needs no arm64 shared libraries.
        command
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                ARM64_LINKER,
            )
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static -A linker-messages",
            );
    }
    let mut cargo = command
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo")?;
    let mut tests = Vec::new();
    for message in Message::parse_stream(BufReader::new(cargo.stdout.take().unwrap())) {
        if let Message::CompilerArtifact(Artifact {
            target,
            executable: Some(executable),
            ..
        }) = message?
        {
            let is_kernel_test = target.kind.contains(&TargetKind::Test) && target.name == "kernel";
            let step = target
                .src_path
                .parent()
                .and_then(|tests| tests.parent())
                .and_then(|step| step.file_name());
            if let (true, Some(step)) = (is_kernel_test, step) {
                tests.push(KernelTests {
                    step: step.to_string(),
                    executable: executable.into(),
                    cases: Vec::new(),
                });
            }
        }
    }
    if !cargo.wait()?.success() {
        bail!("building the kernel tests failed");
    }
    if cross {
        // Cross-built binaries do not run here: the cases come from this machine's own build.
        let host = build_kernel_tests(toolchain, filter, false)?;
        for test in &mut tests {
            test.cases = host
                .iter()
                .find(|listed| listed.step == test.step)
                .map(|listed| listed.cases.clone())
                .unwrap_or_default();
        }
        return Ok(tests);
    }
    for test in &mut tests {
        let list = Command::new(&test.executable)
            .args(["--list", "--format", "terse"])
            .output()?;
        test.cases = String::from_utf8(list.stdout)?
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
            .filter(|name| {
                let full = format!("{}::{name}", test.step);
                filter.is_none_or(|filter| filter.split(',').any(|text| full.contains(text)))
            })
            .map(String::from)
            .collect();
    }
    Ok(tests)
}
