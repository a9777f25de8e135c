//! `cargo xtask vm-test`: the kernel tests of every step, run again inside other kernels under qemu.
//!
//! One kernel cannot prove the lessons: this one may lack kprobes or refuse fentry, and its struct
//! layouts are only its own. So we boot real distribution kernels (a table below, one line per
//! kernel) with an initramfs that holds the very test binaries `cargo test` built, their step
//! binaries and busybox, and run every kernel test there, one at a time, with a time limit each.

use std::{
    fmt::Write as _,
    fs,
    io::BufReader,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cargo_metadata::{Artifact, Message, TargetKind};

use crate::{
    host_packages,
    pinned::{Toolchain, run_step, target_dir},
};

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
    fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The CPU this machine (and so xtask) runs on, if it is one the guests can be built on.
    fn of_host(rust_arch: &str) -> Option<Self> {
        match rust_arch {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }
}

/// How this machine gets a guest's test binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestBuild {
    /// Built for this machine's own CPU, as `cargo test` builds them; their shared libraries go along.
    Native,
    /// Cross-built for arm64 on an x86-64 machine, linked statically.
    CrossArm64,
    /// Not built here: x86-64 guests on an arm64 machine (no cross toolchain set up for that, and
    /// an emulated x86-64 CPU is too slow to be worth it).
    NotHere,
}

impl GuestBuild {
    fn for_guest(host: Arch, guest: Arch) -> Self {
        match (host, guest) {
            (host, guest) if host == guest => Self::Native,
            (Arch::X86_64, Arch::Arm64) => Self::CrossArm64,
            (Arch::Arm64, Arch::X86_64) => Self::NotHere,
            _ => unreachable!("two CPUs, all pairs above"),
        }
    }
}

/// The Rust target of the arm64 guests, and the C cross toolchain that links for it.
const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
const ARM64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// A distribution kernel to test in: a Debian package that `apt-get download` fetches (nothing is
/// installed on the host), and the attach paths it must accept.
#[derive(Debug, Clone)]
pub struct GuestKernel {
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
        package: "linux-image-5.10.0-32-cloud-amd64",
        about: "Debian 11 (bullseye) cloud kernel: before 5.11, BPF maps count against RLIMIT_MEMLOCK; no MPTCP",
        attach_paths: "kprobe,fentry,tracepoint",
        suite: "bullseye",
        arch: Arch::X86_64,
    },
    GuestKernel {
        package: "linux-image-6.1.0-56-cloud-amd64",
        about: "Debian 12 (bookworm) stock cloud kernel",
        attach_paths: "kprobe,fentry,tracepoint",
        suite: "bookworm",
        arch: Arch::X86_64,
    },
    GuestKernel {
        package: "linux-image-6.12.117+deb12-cloud-amd64",
        about: "Debian 12's newer 6.12 cloud kernel (other struct layouts)",
        attach_paths: "kprobe,fentry,tracepoint",
        suite: "bookworm",
        arch: Arch::X86_64,
    },
    GuestKernel {
        package: "linux-image-6.12.117+deb12-cloud-arm64",
        about: "Debian 12's 6.12 cloud kernel for arm64 (another pt_regs layout for kprobe arguments)",
        attach_paths: "kprobe,fentry,tracepoint",
        suite: "bookworm",
        arch: Arch::Arm64,
    },
];
// ANCHOR_END: guest_kernels

/// The Debian suite of `--kernel` packages, and of the guests' busybox.
pub const DEFAULT_SUITE: &str = "bookworm";

/// How many listens exercise 5's burst makes in the stock kernel's guest, an emulated CPU.
const EXERCISE_5_GUEST_BURST: usize = 20_000;

/// The stock distribution kernel whose guest records the book's first transcripts (kprobes work).
pub const STOCK_KERNEL: &str = "linux-image-6.1.0-56-cloud-amd64";
/// The lessons' tests that record the book's transcripts (`support::transcripts`).
pub const TRANSCRIPT_TESTS: &str = "the_books_transcript_is_recorded";

/// How long one test may run inside the guest (TCG emulation is slow).
const CASE_LIMIT_SECS: u64 = 120;
/// How long the guest may take to boot (it needs about 2 s under TCG) and to power off, on top of
/// its cases.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it really works on this machine, else TCG
    Auto,
    /// Hardware virtualisation
    Kvm,
    /// Software emulation: slower, works everywhere
    Tcg,
}

#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// How qemu runs the guests
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Run only the tests whose `step::test` name contains this text
    #[arg(long)]
    pub filter: Option<String>,
    /// Test in this Debian kernel package instead of the built-in list (for example a room's
    /// kernel: `--kernel linux-image-6.12.117+deb12-amd64`)
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
    /// The kernels to boot: the built-in list, or the one given with `--kernel`.
    fn kernels(&self) -> Vec<GuestKernel> {
        match &self.kernel {
            None => GUEST_KERNELS.to_vec(),
            // Lives as long as the program does, like the built-in entries.
            Some(package) => vec![GuestKernel {
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

pub fn run(toolchain: &Toolchain, args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let host = Arch::of_host(std::env::consts::ARCH).with_context(|| {
        format!(
            "vm-test runs on x86-64 or arm64 machines, not on {}",
            std::env::consts::ARCH
        )
    })?;
    let (kernels, skipped) = kernels_for_host(host, args.kernels());
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
    // Exercise 5's reference solution is checked in the stock kernel too, where the kprobes work
    // (here it is checked on this machine's path): in a run of every case.
    let exercise_5 =
        args.filter.is_none() && kernels.iter().any(|kernel| kernel.package == STOCK_KERNEL);
    if exercise_5 {
        crate::check::build(toolchain, 5, crate::check::Attempt::Solution)?;
    }
    let vm_dir = target_dir().join("vm");
    let mut failures = Vec::new();
    let mut out_of_date = Vec::new();
    let mut matrix = Vec::new();
    let mut total = 0;
    for kernel in &kernels {
        let build = GuestBuild::for_guest(host, kernel.arch);
        let tests = match build {
            GuestBuild::CrossArm64 => cross_tests.as_ref().expect("built above"),
            _ => &host_tests,
        };
        let kernel_started = Instant::now();
        let vmlinuz = fetch_kernel(kernel, &vm_dir)?;
        let accel = match kernel.arch {
            Arch::X86_64 => choose_accel(args.accel, &vmlinuz, &vm_dir)?,
            Arch::Arm64 => Accel::Tcg,
        };
        let with_exercise_5 = exercise_5 && kernel.package == STOCK_KERNEL;
        let initramfs = build_initramfs(
            kernel,
            build,
            tests,
            with_exercise_5,
            &vm_dir.join(kernel.package),
            &vm_dir,
        )?;
        let kernel_cases = case_count + usize::from(with_exercise_5);
        let (results, run) = boot_and_run(kernel, &vmlinuz, &initramfs, accel, kernel_cases)?;
        total += kernel_cases;
        eprintln!(
            "    {}: {} of {kernel_cases} cases passed, {:.1} s with the download and the initramfs",
            kernel.package,
            results.iter().filter(|result| result.passed).count(),
            kernel_started.elapsed().as_secs_f64()
        );
        if kernel.package == STOCK_KERNEL {
            if args.write {
                write_stock_transcripts(&results)?;
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
        "    vm-test: {} passed, {} failed, in {} kernel(s), {:.1} s",
        total - failures.len(),
        failures.len(),
        kernels.len(),
        started.elapsed().as_secs_f64()
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
    if args.kernel.is_none() && args.filter.is_none() && skipped.is_empty() {
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
    Ok(())
}

/// Writes the transcripts that the stock kernel's guest printed as the pages' first ones,
/// `docs/src/transcripts/NAME-stock.txt`.
fn write_stock_transcripts(results: &[CaseResult]) -> anyhow::Result<()> {
    for result in results.iter().filter(|result| result.passed) {
        for (name, text) in support::transcripts::printed(&result.output) {
            let path = crate::docs::transcripts_folder().join(format!("{name}-stock.txt"));
            fs::write(&path, text)?;
            eprintln!(
                "    vm-test: wrote {} (the stock kernel's transcript)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Compares the transcripts that the stock kernel's guest printed with the pages' ones by their
/// shape (values aside); returns what no longer matches.
fn compare_stock_transcripts(results: &[CaseResult]) -> anyhow::Result<Vec<String>> {
    let mut out_of_date = Vec::new();
    for result in results.iter().filter(|result| result.passed) {
        for (name, text) in support::transcripts::printed(&result.output) {
            let path = crate::docs::transcripts_folder().join(format!("{name}-stock.txt"));
            let on_page = fs::read_to_string(&path).unwrap_or_default();
            if support::transcripts::shape(&on_page) != support::transcripts::shape(&text) {
                eprintln!(
                    "    OUT OF DATE: {} no longer has the shape of what the stock kernel printed \
                     (`cargo xtask docs --refresh-transcripts` rewrites it):\n{text}",
                    path.display()
                );
                out_of_date.push(format!("the transcript {name}-stock.txt"));
            }
        }
    }
    Ok(out_of_date)
}

/// The cells of the kernels table that a run decides (package, paths, MPTCP, cases), without the
/// date and the seconds, which change every run.
fn outcomes(page: &str) -> Vec<Vec<String>> {
    page.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            line.split('|')
                .map(str::trim)
                .filter(|cell| !cell.ends_with(" s"))
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The generated table of kernels × attach paths, included by the kernels page.
const MATRIX_PAGE: &str = "docs/src/vm-test-results.md";

/// What one guest showed: its kernel, which paths attached, MPTCP, the cases and the times.
struct MatrixRow {
    package: &'static str,
    arch: Arch,
    release: String,
    paths: Vec<(&'static str, bool)>,
    mptcp: &'static str,
    passed: usize,
    cases: usize,
    run: GuestRun,
}

impl MatrixRow {
    fn of(kernel: &GuestKernel, results: &[CaseResult], run: GuestRun) -> Self {
        let said = |text: &str| results.iter().any(|result| result.output.contains(text));
        Self {
            package: kernel.package,
            arch: kernel.arch,
            release: run.release.clone(),
            paths: vec![
                ("kprobe", said("kprobe inet_listen(): attached")),
                ("fentry", said("fentry inet_listen(): attached")),
                (
                    "tracepoint",
                    said("tracepoint sock:inet_sock_set_state: attached"),
                ),
            ],
            mptcp: if said("program mptcp_") {
                "yes"
            } else if said("has no MPTCP") {
                "not in this kernel"
            } else {
                "not checked"
            },
            passed: results.iter().filter(|result| result.passed).count(),
            cases: results.len(),
            run,
        }
    }
}

fn matrix_page(rows: &[MatrixRow]) -> anyhow::Result<String> {
    let date = crate::utc_now()?;
    let mut text = String::from(
        "<!-- Written by `cargo xtask vm-test` (the built-in kernels, every case): do not edit. -->\n\n",
    );
    writeln!(
        text,
        "The latest `cargo xtask vm-test`, {date} (guests under qemu):\n"
    )?;
    writeln!(
        text,
        "| kernel package | CPU | `uname -r` | kprobe | fentry | tracepoint | MPTCP | cases | boot | whole run |"
    )?;
    writeln!(text, "|---|---|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let mark = |wanted: &str| {
            let attached = row.paths.iter().any(|&(path, seen)| path == wanted && seen);
            if attached { "attached" } else { "not seen" }
        };
        writeln!(
            text,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} of {} passed | {:.1} s | {:.1} s |",
            row.package,
            row.arch.debian(),
            row.release,
            mark("kprobe"),
            mark("fentry"),
            mark("tracepoint"),
            row.mptcp,
            row.passed,
            row.cases,
            row.run.boot_seconds,
            row.run.whole_seconds,
        )?;
    }
    Ok(text)
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

/// The kernels this machine can run (`.0`) and the ones it skips (`.1`), in the order given.
fn kernels_for_host(host: Arch, kernels: Vec<GuestKernel>) -> (Vec<GuestKernel>, Vec<GuestKernel>) {
    kernels
        .into_iter()
        .partition(|kernel| GuestBuild::for_guest(host, kernel.arch) != GuestBuild::NotHere)
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
    let installed = Command::new("rustup")
        .args([
            "target",
            "list",
            "--installed",
            "--toolchain",
            toolchain.name,
        ])
        .output()
        .context("cannot run rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|target| target == ARM64_TARGET)
    {
        return Ok(());
    }
    run_step(
        &format!("rustup target add {ARM64_TARGET} (for the arm64 guests)"),
        Command::new("rustup").args(["target", "add", ARM64_TARGET, "--toolchain", toolchain.name]),
    )
    .with_context(|| format!("the arm64 guests need Rust's {ARM64_TARGET} target"))?;
    crate::installed::note(crate::installed::Kind::RustTarget, &[ARM64_TARGET]);
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
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    let target = cross.then_some(ARM64_TARGET);
    if let Some(target) = target {
        args.extend(["--target", target]);
    }
    let ebpf_crates = crate::lessons::ebpf_crates()?;
    for ebpf in &ebpf_crates {
        args.extend(["--exclude", ebpf.as_str()]);
    }
    eprintln!(
        "==> vm-test: build the kernel tests{}",
        target.map_or(String::new(), |target| format!(" for {target}"))
    );
    let mut command = toolchain.cargo(&args);
    if target.is_some() {
        // Linked statically, so that the guest needs no arm64 shared libraries; the eBPF side is
        // built by each step's build.rs for the target's pt_regs (aya-build reads the target).
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
                filter.is_none_or(|filter| format!("{}::{name}", test.step).contains(filter))
            })
            .map(String::from)
            .collect();
    }
    Ok(tests)
}

/// The kernel image of `kernel`'s package, downloaded and unpacked once into `target/vm/`.
fn fetch_kernel(kernel: &GuestKernel, vm_dir: &Path) -> anyhow::Result<PathBuf> {
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
struct AptSources {
    options: Vec<String>,
}

impl AptSources {
    fn for_guest(suite: &str, arch: Arch, vm_dir: &Path) -> anyhow::Result<Self> {
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
        Ok(Self { options })
    }

    /// Downloads `package` into `dir` (refreshing the lists once if the first try fails), unpacks
    /// it into `into` and removes the `.deb`.
    fn download_and_unpack(&self, package: &str, dir: &Path, into: &Path) -> anyhow::Result<()> {
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
fn guest_busybox(arch: Arch, vm_dir: &Path) -> anyhow::Result<PathBuf> {
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

fn find_vmlinuz(root: &Path) -> anyhow::Result<Option<PathBuf>> {
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

/// The guest's `/init`: mount what the tests need, run each case with a time limit, power off.
/// Results go to the second serial port, apart from the kernel's messages on the first.
fn init_script(kernel: &GuestKernel) -> String {
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
        // An emulated arm64 CPU is several times slower: smaller storms, counted as exactly.
        storm = match kernel.arch {
            Arch::X86_64 => "",
            Arch::Arm64 => "LISTEN_TRACE_STORM=20000",
        },
        // x86-64 guests have a second serial port for the results; arm64's `virt` machine has one.
        results_tty = match kernel.arch {
            Arch::X86_64 => "ttyS1",
            Arch::Arm64 => "ttyAMA0",
        }
    )
}

/// Packs busybox, the test binaries, their step binaries (at the paths the tests were built to find
/// them) and the shared libraries all of them need into an uncompressed cpio archive.
fn build_initramfs(
    kernel: &GuestKernel,
    build: GuestBuild,
    tests: &[KernelTests],
    exercise_5: bool,
    dir: &Path,
    vm_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let staging = dir.join("initramfs");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    // Native binaries take their shared libraries along; cross-built ones are static.
    let copy = |binary: &Path, inside: Option<&Path>| match build {
        GuestBuild::CrossArm64 => copy_into(binary, &staging, inside.unwrap_or(binary)),
        _ => copy_with_libraries(binary, &staging, inside),
    };
    let busybox = guest_busybox(kernel.arch, vm_dir)?;
    copy_into(&busybox, &staging, Path::new("/bin/busybox"))?;
    let release = match build {
        GuestBuild::CrossArm64 => target_dir().join(ARM64_TARGET).join("release"),
        _ => target_dir().join("release"),
    };
    let mut cases = String::new();
    for test in tests {
        let inside = PathBuf::from(format!("/tests/{}-kernel", test.step));
        copy(&test.executable, Some(&inside))?;
        // The tests start `env!("CARGO_BIN_EXE_<step>")`: the same absolute path in the guest.
        copy(&release.join(&test.step), None)?;
        for case in &test.cases {
            writeln!(cases, "{} {} {case}", test.step, inside.display())?;
        }
    }
    if exercise_5 {
        // `cargo xtask check exercise 5 --solution` as a case of its own: this xtask, the solution
        // and lesson 5 as committed, each where the check looks for it (`--built`).
        copy(&std::env::current_exe()?, Some(Path::new("/bin/xtask")))?;
        copy(
            &crate::check::built_binary(5, crate::check::Attempt::Solution)?,
            None,
        )?;
        copy(&crate::check::floor_binary(), None)?;
        // The check finds lesson 5 by its manifest in the checkout.
        let manifest = crate::workspace_root().join("step5-results/Cargo.toml");
        copy_into(&manifest, &staging, &manifest)?;
        let check = staging.join("exercise-5-check");
        fs::write(
            &check,
            format!(
                "#!/bin/busybox sh\nLISTEN_TRACE_BURST={EXERCISE_5_GUEST_BURST} exec /bin/xtask \
                 --built '{}' check exercise 5 --solution --print-timings-only\n",
                target_dir().display()
            ),
        )?;
        fs::set_permissions(&check, fs::Permissions::from_mode(0o755))?;
        writeln!(cases, "exercise-5 /exercise-5-check solution")?;
    }
    fs::write(staging.join("cases"), cases)?;
    let init = staging.join("init");
    fs::write(&init, init_script(kernel))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let archive = dir.join("initramfs.cpio");
    let cpio = format!("find . | cpio --quiet -o -H newc > '{}'", archive.display());
    let status = Command::new("sh")
        .args(["-c", &cpio])
        .current_dir(&staging)
        .status()?;
    if !status.success() {
        bail!("cpio failed to pack {}", staging.display());
    }
    Ok(archive)
}

/// Copies `binary` into `root` (at `inside`, or at its own absolute path), with every shared library
/// `ldd` names, at the paths where the guest's dynamic loader will look.
fn copy_with_libraries(binary: &Path, root: &Path, inside: Option<&Path>) -> anyhow::Result<()> {
    let binary = binary
        .canonicalize()
        .with_context(|| format!("{} is missing", binary.display()))?;
    copy_into(&binary, root, inside.unwrap_or(&binary))?;
    let ldd = Command::new("ldd")
        .arg(&binary)
        .output()
        .context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line
            .split("=>")
            .last()
            .unwrap_or_default()
            .trim()
            .split(" (")
            .next()
            .unwrap_or_default();
        if path.starts_with('/') {
            copy_into(Path::new(path), root, Path::new(path))?;
        }
    }
    Ok(())
}

fn copy_into(source: &Path, root: &Path, inside: &Path) -> anyhow::Result<()> {
    let destination = root.join(inside.strip_prefix("/").unwrap_or(inside));
    fs::create_dir_all(destination.parent().unwrap())?;
    fs::copy(source, &destination).with_context(|| format!("cannot copy {}", source.display()))?;
    Ok(())
}

/// Picks KVM or TCG. `/dev/kvm` can exist and still not work (nested virtualisation), so `auto`
/// boots a guest that only powers off, once per host boot, and keeps KVM only if that finishes fast.
fn choose_accel(wanted: Accel, vmlinuz: &Path, vm_dir: &Path) -> anyhow::Result<Accel> {
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

fn kvm_boots(vmlinuz: &Path, vm_dir: &Path) -> anyhow::Result<bool> {
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
    Command::new("sh")
        .args([
            "-c",
            &format!("find . | cpio --quiet -o -H newc > '{}'", archive.display()),
        ])
        .current_dir(&staging)
        .status()?;
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
fn boot(
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
struct CaseResult {
    name: String,
    passed: bool,
    seconds: f64,
    output: String,
}

fn boot_and_run(
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
        // Exercise 5's check says what its solution cost here.
        for line in result
            .output
            .lines()
            .filter(|line| line.contains("exercise 5: a burst of"))
        {
            eprintln!("                   {}", line.trim());
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
struct GuestRun {
    release: String,
    boot_seconds: f64,
    whole_seconds: f64,
}

/// Reads the `CASE-START` / `CASE-END step name status start end` lines of the guest's output.
fn parse_results(output: &str) -> Vec<CaseResult> {
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

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    indent(
        &all[all.len().saturating_sub(lines)..].join("\n"),
        "        | ",
    )
}

fn indent(text: &str, prefix: &str) -> String {
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

    #[test]
    fn every_guest_kernel_names_its_attach_paths() {
        for kernel in GUEST_KERNELS {
            assert!(kernel.package.starts_with("linux-image-"));
            for path in kernel.attach_paths.split(',') {
                assert!(["kprobe", "fentry", "tracepoint"].contains(&path), "{path}");
            }
        }
    }

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
