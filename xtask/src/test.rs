//! `cargo xtask test`: the README's test command. Each phase prints its duration.

use std::time::Instant;

use anyhow::Context as _;

use crate::{
    check, docs, lessons,
    pinned::{Toolchain, run_step},
    setup, vm,
};

/// The BPF target the eBPF crates are built for (little-endian, as on x86-64 and arm64).
const BPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Debug, Default, clap::Args)]
pub struct TestArgs {
    /// Only the unit and kernel tests of lesson N (no formatting, clippy, VMs or book)
    #[arg(long, value_name = "N")]
    pub lesson: Option<u8>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let toolchain = setup::run()?;
    if let Some(number) = args.lesson {
        let lesson = lessons::find(number)?;
        run_tests(&toolchain, &["--package", lesson.package])?;
        eprintln!(
            "==> lesson {number}'s tests passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let steps = lessons::present()?;
    let ebpf_crates: Vec<String> = steps
        .iter()
        .map(|lesson| format!("{}-ebpf", lesson.package))
        .collect();

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
    run_step("clippy, host crates", &mut toolchain.cargo(&host))?;
    for (package, features) in [
        ("common", ""),
        ("common", "user"),
        ("support", ""),
        ("support", "build"),
    ] {
        run_step(
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

    run_step(
        "clippy, eBPF crates",
        &mut clippy_ebpf(&toolchain, &ebpf_crates),
    )?;

    let mut workspace = vec!["--workspace"];
    for ebpf in &ebpf_crates {
        workspace.extend(["--exclude", ebpf.as_str()]);
    }
    run_tests(&toolchain, &workspace)?;

    // The same kernel tests in the kernels of `vm::GUEST_KERNELS`, where kprobes and fentry work.
    vm::run(&toolchain, &vm::VmTestArgs::default())?;

    // The learner's preflight must find this machine ready (CI runs on the kind of machine the
    // lessons are taught on).
    eprintln!("==> doctor: this machine is ready for the lessons");
    crate::doctor::run(&toolchain, &crate::doctor::DoctorArgs { json: false })?;

    check_exercises(&toolchain)?;

    // The macOS laptops' virtual machine: its provisioning runs here too.
    crate::lima::check_template()?;

    // What a learner who is not root does, done by a user who is not root but has sudo rights.
    crate::learner::run()?;

    // The book: includes, anchors and links, transcripts that match the programs, and the build.
    eprintln!("==> the book");
    docs::check_transcripts()?;
    docs::run(
        &toolchain,
        &docs::DocsArgs {
            refresh_transcripts: false,
        },
    )?;

    eprintln!(
        "==> all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The unit tests and the kernel tests, one test at a time (as the VM runner does), so that one
/// kernel test never counts another's events. The kernel tests load eBPF programs: a user who is not
/// root runs them through sudo, as `cargo xtask run` does; without sudo they are left out and
/// counted as skipped, never reported as passed.
fn run_tests(toolchain: &Toolchain, packages: &[&str]) -> anyhow::Result<()> {
    let mut test = vec!["test", "--release"];
    test.extend(packages);
    let one_at_a_time = ["--", "--test-threads=1"];
    if nix::unistd::geteuid().is_root() {
        test.extend(one_at_a_time);
        return run_step(
            "unit and kernel tests (cargo test)",
            &mut toolchain.cargo(&test),
        );
    }
    if crate::sudo::has_sudo() {
        eprintln!(
            "    not root: running the test binaries through sudo (the kernel tests load eBPF)"
        );
        test.extend(["--config", r#"target."cfg(all())".runner = ["sudo", "-E"]"#]);
        test.extend(one_at_a_time);
        return run_step(
            "unit and kernel tests (cargo test, through sudo)",
            &mut toolchain.cargo(&test),
        );
    }
    // No root and no sudo: every target but the kernel tests (`tests/kernel.rs` of each step).
    let mut unit = test.clone();
    unit.extend(["--lib", "--bins"]);
    unit.extend(one_at_a_time);
    run_step("unit tests (cargo test)", &mut toolchain.cargo(&unit))?;
    let mut list = test;
    list.extend(["--test", "kernel", "--", "--list"]);
    let listed = toolchain
        .cargo(&list)
        .output()
        .context("cannot list the kernel tests")?;
    let skipped = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.ends_with(": test"))
        .count();
    eprintln!(
        "    SKIPPED: {skipped} kernel tests: they load eBPF programs, which needs root, and this \
         user has no sudo; run `cargo xtask test` as root to include them"
    );
    Ok(())
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

/// Every reference solution passes its check, and an untouched lesson fails with a message that
/// says what is missing. The checks load eBPF programs: root only.
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
