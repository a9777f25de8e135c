//! `cargo xtask test`: the README's test command. Each phase prints its duration.

use std::time::Instant;

use crate::{
    check, docs,
    lessons::{self, Lesson},
    pinned::{Toolchain, run_cargo, run_step},
    setup, vm,
};

/// The BPF target the eBPF crates are built for (little-endian, as on x86-64 and arm64).
const BPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Debug, Default, clap::Args)]
pub struct TestArgs {
    /// Only the unit and kernel tests of lesson N (no formatting, clippy, VMs or book)
    #[arg(long, value_name = "N")]
    pub lesson: Option<u8>,
    /// Also run the learner flows: a temporary user with sudo rights runs lesson 1 and exercise 1,
    /// and is removed afterwards (always on under `CI`)
    #[arg(long, conflicts_with = "lesson")]
    pub learner_flows: bool,
    /// Also apply the deliberate bugs of `cargo xtask mutants` and check that the tests catch each
    /// (always on under `CI`)
    #[arg(long, conflicts_with = "lesson")]
    pub mutants: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let toolchain = setup::run()?;
    if let Some(number) = args.lesson {
        let lesson = lessons::find(number)?;
        run_tests(&toolchain, &["--package", lesson.package], &[lesson])?;
        eprintln!(
            "==> lesson {number}'s tests passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let steps = lessons::present()?;
    let ebpf_crates = lessons::ebpf_crates_of(&steps);

    run_step(
        "format check (cargo fmt --check)",
        &mut toolchain.cargo(&["fmt", "--all", "--check"]),
    )?;

    // Clippy as the builds compile each crate: the workspace together (as `cargo build` and the
    // tests do), and the shared crates alone with each set of features a build gives them.
    let mut host = vec!["clippy", "--release", "--workspace", "--all-targets"];
    for ebpf in &ebpf_crates {
        host.extend(["--exclude", ebpf.as_str()]);
    }
    host.extend(["--", "-D", "warnings"]);
    let mut clippy = toolchain.cargo(&host);
    crate::ebpf::build_for(
        &toolchain,
        &mut clippy,
        &ebpf_crates,
        crate::ebpf::this_arch(),
    )?;
    run_cargo("clippy, host crates", &mut clippy)?;
    for (package, features) in [
        ("common", ""),
        ("common", "user"),
        ("common", "tracefs"),
        ("support", ""),
        ("support", "aya"),
    ] {
        run_cargo(
            &format!("clippy, {package} with features [{features}]"),
            &mut toolchain.cargo(&[
                "clippy",
                "--release",
                "--package",
                package,
                "--all-targets",
                "--no-default-features",
                "--features",
                features,
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }

    run_cargo(
        "clippy, eBPF crates",
        &mut clippy_ebpf(&toolchain, &ebpf_crates),
    )?;

    let mut workspace = vec!["--workspace"];
    for ebpf in &ebpf_crates {
        workspace.extend(["--exclude", ebpf.as_str()]);
    }
    run_tests(&toolchain, &workspace, &steps)?;

    // Each lesson also builds outside this workspace, as a project of one's own.
    eprintln!(
        "==> each lesson copied out of the repository builds on its own (and the first and the last as written out by new-project)"
    );
    crate::standalone::check(&steps)?;

    // The same kernel tests in the kernels of `vm::GUEST_KERNELS`, where kprobes and fentry work.
    vm::run(&toolchain, &vm::VmTestArgs::default())?;

    // The learner's preflight must find this machine ready (CI runs on the kind of machine the
    // lessons are taught on).
    eprintln!("==> doctor: this machine is ready for the lessons");
    crate::doctor::run(&toolchain, &crate::doctor::DoctorArgs { json: false })?;

    check_exercises(&toolchain)?;

    // Proof that the tests can fail: deliberate bugs, each caught by a test.
    if args.mutants || std::env::var_os("CI").is_some() {
        crate::mutants::run(&toolchain, &crate::mutants::MutantsArgs::default())?;
    } else {
        eprintln!(
            "==> NOT RUN: the mutants (deliberate bugs the tests must catch, about 15 minutes); \
             `cargo xtask test --mutants` or `cargo xtask mutants` runs them, and CI always does"
        );
    }

    // The macOS laptops' virtual machine: its provisioning runs here too.
    crate::lima::check_template()?;
    crate::lima::check_cloud_init()?;

    // What a learner who is not root does, done by a temporary user who is not root but has sudo
    // rights, removed afterwards.
    if crate::learner::wanted(args.learner_flows) {
        crate::learner::run()?;
    } else {
        eprintln!(
            "==> NOT RUN: the learner flows (they create a temporary user with sudo rights); \
             `cargo xtask test --learner-flows` runs them, and CI always does"
        );
    }

    // The book: includes, anchors and links, transcripts that match the programs, and the build.
    eprintln!("==> the book");
    docs::check_transcripts()?;
    docs::run(
        &toolchain,
        &docs::DocsArgs {
            refresh_transcripts: false,
            screenshots: None,
        },
    )?;

    // A room without internet: the offline kit, and lesson 1 built from it alone.
    crate::offline_kit::check(&toolchain)?;

    eprintln!(
        "==> all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The unit tests and the kernel tests, one test at a time (as the VM runner does), so that one
/// kernel test never counts another's events. The kernel tests load eBPF programs and are marked
/// `#[ignore]`: as root they run (`--include-ignored`); a user who is not root runs them through
/// sudo, as `cargo xtask run` does; without sudo they stay ignored, and cargo's summary line counts
/// them as such, never as passed. Under `CI` nothing may be left out.
fn run_tests(toolchain: &Toolchain, packages: &[&str], lessons: &[&Lesson]) -> anyhow::Result<()> {
    let mut test = vec!["test", "--release"];
    test.extend(packages);
    let test_command = |args: &[&str]| -> anyhow::Result<std::process::Command> {
        let mut command = toolchain.cargo(args);
        crate::ebpf::build_for(
            toolchain,
            &mut command,
            &lessons::ebpf_crates_of(lessons),
            crate::ebpf::this_arch(),
        )?;
        Ok(command)
    };
    let all_tests = ["--", "--test-threads=1", "--include-ignored"];
    if nix::unistd::geteuid().is_root() {
        test.extend(all_tests);
        return run_cargo(
            "unit and kernel tests (cargo test)",
            &mut test_command(&test)?,
        );
    }
    if crate::sudo::has_sudo() {
        eprintln!(
            "    not root: running the test binaries through sudo (the kernel tests load eBPF)"
        );
        test.extend(["--config", r#"target."cfg(all())".runner = ["sudo", "-E"]"#]);
        test.extend(all_tests);
        return run_cargo(
            "unit and kernel tests (cargo test, through sudo)",
            &mut test_command(&test)?,
        );
    }
    if std::env::var_os("CI").is_some() {
        anyhow::bail!(
            "the kernel tests need root or sudo, and CI must not leave them out: run the tests as root"
        );
    }
    eprintln!(
        "    not root and no sudo: the kernel tests load eBPF programs, so they stay ignored \
         (cargo counts them below); run `cargo xtask test` as root to include them"
    );
    test.extend(["--", "--test-threads=1"]);
    run_cargo(
        "unit tests (cargo test; kernel tests ignored)",
        &mut test_command(&test)?,
    )
}

/// Clippy on the kernel side, for the BPF target, as aya-build compiles it.
fn clippy_ebpf(toolchain: &Toolchain, ebpf_crates: &[String]) -> std::process::Command {
    let mut args = vec![
        "clippy",
        "--release",
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
    ];
    for ebpf in ebpf_crates {
        args.extend(["--package", ebpf.as_str()]);
    }
    args.extend(["--", "-D", "warnings"]);
    let mut command = toolchain.cargo(&args);
    command.env("RUSTC_BOOTSTRAP", "1"); // -Z build-std on a stable toolchain
    command
}

/// Every reference solution passes its check, and every untouched lesson fails its exercise's check
/// with the message that says what is missing. The checks load eBPF programs: root only.
fn check_exercises(toolchain: &Toolchain) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CI").is_some() {
            anyhow::bail!("the exercise checks need root, and CI must not skip them");
        }
        eprintln!(
            "SKIPPED: the exercise checks need root; run `sudo -E cargo xtask test` to include them"
        );
        return Ok(());
    }
    let started = Instant::now();
    eprintln!("==> exercises: the reference solutions pass, the starter fails");
    // Timings are printed, never a verdict, on a shared machine.
    let check = |number, attempt| {
        let binary = check::build(toolchain, number, attempt)?;
        check::run(number, attempt, &binary, check::Timings::PrintOnly)
    };
    for exercise in &check::EXERCISES {
        check(exercise.number, check::Attempt::Solution)?;
    }
    for (number, why) in [
        (1, "but not who called listen()"),
        (2, "the backlog is there, the process is not"),
        (3, "it should end with `, skc_num"),
        (4, "the table has no TID column after PID"),
        (5, "still a perf event array"),
    ] {
        match check(number, check::Attempt::Starter) {
            Ok(()) => anyhow::bail!("exercise {number} passes before anything was changed"),
            Err(error) if format!("{error:#}").contains(why) => {
                eprintln!("    the starter of exercise {number} fails, as it must: {error:#}");
            }
            Err(error) => {
                return Err(error.context(format!(
                    "exercise {number}'s starter failed for an unexpected reason"
                )));
            }
        }
    }
    eprintln!(
        "    exercises: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
