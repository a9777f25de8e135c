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
    /// Everything: also every guest kernel, the mutants, the learner flows, the lessons copied
    /// out, the book's build with its browser check and the offline kit (what CI runs)
    #[arg(long, conflicts_with = "lesson")]
    pub full: bool,
    /// Also run the learner flows: a temporary user with sudo rights runs lesson 1 and exercise 1,
    /// and is removed afterwards (part of --full)
    #[arg(long, conflicts_with = "lesson")]
    pub learner_flows: bool,
    /// Also apply the deliberate bugs of `cargo xtask mutants` and check that the tests named for
    /// each catch it (part of --full)
    #[arg(long, conflicts_with = "lesson")]
    pub mutants: bool,
}

/// The phases of a run, each timed, with its result; a failed phase does not stop the phases that
/// do not depend on it, and the run ends with a table of them all.
struct Phases {
    started: Instant,
    rows: Vec<(String, f64, Result<(), String>)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            rows: Vec::new(),
        }
    }

    /// Runs one phase; returns whether it passed.
    fn run(&mut self, name: &str, phase: impl FnOnce() -> anyhow::Result<()>) -> bool {
        let started = Instant::now();
        let result = phase();
        self.record(name, started.elapsed().as_secs_f64(), result)
    }

    /// Records a phase that ran elsewhere (alongside others); returns whether it passed.
    fn record(&mut self, name: &str, seconds: f64, result: anyhow::Result<()>) -> bool {
        let result = result.map_err(|error| format!("{error:#}"));
        if let Err(error) = &result {
            eprintln!("==> FAILED: {name}: {error}");
        }
        let passed = result.is_ok();
        self.rows.push((name.to_string(), seconds, result));
        passed
    }

    /// Prints where the time went, and fails with every failure listed.
    fn finish(self, level: &str) -> anyhow::Result<()> {
        let total = self.started.elapsed().as_secs_f64();
        eprintln!("\n{}", time_table(&self.rows, total));
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(name, _, result)| {
                result
                    .as_ref()
                    .err()
                    .map(|error| format!("{name}: {error}"))
            })
            .collect();
        if !failed.is_empty() {
            anyhow::bail!(
                "{level}: {} of {} phases failed:\n  {}",
                failed.len(),
                self.rows.len(),
                failed.join("\n  ")
            );
        }
        eprintln!(
            "==> {level}: all {} phases passed in {total:.1} s",
            self.rows.len()
        );
        Ok(())
    }
}

/// The end-of-run table: phase, seconds, result.
fn time_table(rows: &[(String, f64, Result<(), String>)], total: f64) -> String {
    let width = rows
        .iter()
        .map(|(name, ..)| name.chars().count())
        .chain(["phase".len(), "total".len()])
        .max()
        .unwrap_or(0);
    let mut table = format!("{:<width$}  {:>8}  result\n", "phase", "seconds");
    for (name, seconds, result) in rows {
        let result = if result.is_ok() { "ok" } else { "FAILED" };
        table.push_str(&format!("{name:<width$}  {seconds:>8.1}  {result}\n"));
    }
    table.push_str(&format!("{:<width$}  {total:>8.1}", "total"));
    table
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
    let toolchain = &toolchain;
    let mut phases = Phases::new();
    phases.rows.push((
        "set-up (toolchain, bpf-linker)".to_string(),
        started.elapsed().as_secs_f64(),
        Ok(()),
    ));

    phases.run("format check", || {
        run_step(
            "format check (cargo fmt --check)",
            &mut toolchain.cargo(&["fmt", "--all", "--check"]),
        )
    });
    phases.run("clippy, host and eBPF crates", || {
        clippy(toolchain, &ebpf_crates)
    });
    // At the default level, the stock guest boots alongside the phases on this kernel (its
    // emulated CPU takes one core): its builds and initramfs come first, so that nothing it
    // uses is built again while it runs.
    let mut guest_prepared = None;
    if !args.full {
        phases.run("stock guest kernel: builds and initramfs", || {
            guest_prepared = Some(vm::prepare(
                toolchain,
                &vm::VmTestArgs::default_level(),
                &[],
            )?);
            Ok(())
        });
    }
    let guest_started = Instant::now();
    let (tests_pass, guest) = std::thread::scope(|scope| {
        let guest = guest_prepared.map(|prepared| scope.spawn(|| prepared.boot()));
        let tests_pass = phases.run("unit and kernel tests, this kernel", || {
            let mut workspace = vec!["--workspace"];
            for ebpf in &ebpf_crates {
                workspace.extend(["--exclude", ebpf.as_str()]);
            }
            run_tests(toolchain, &workspace, &steps)
        });
        // The learner's preflight must find this machine ready (CI runs on the kind of machine
        // the lessons are taught on).
        phases.run("doctor", || {
            eprintln!("==> doctor: this machine is ready for the lessons");
            crate::doctor::run(toolchain, &crate::doctor::DoctorArgs { json: false })
        });
        // The book's pages: includes, anchors, both editions, and transcripts with the format the
        // lessons print today.
        phases.run("book pages and transcripts", || {
            eprintln!("==> the book's pages");
            docs::check_pages()?;
            docs::check_transcripts()
        });
        // With the mutants, the solutions are checked in their copy of the tree, where each is
        // built for its lesson's tests anyway: here only the starters.
        let solutions_with_mutants = args.full || args.mutants;
        phases.run(
            if solutions_with_mutants {
                "exercises (starters fail; solutions: see mutants)"
            } else {
                "exercises (solutions pass, starters fail)"
            },
            || check_exercises(toolchain, !solutions_with_mutants),
        );
        let guest = guest.map(|guest| {
            guest
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest's thread panicked")))
        });
        (tests_pass, guest)
    });
    if let Some(result) = guest {
        // The stock guest kernel, where kprobes and fentry work: the kernel the book's first
        // transcripts come from (on an arm64 machine, the arm64 guest).
        phases.record(
            "stock guest kernel: its kernel tests (alongside the 4 phases above)",
            guest_started.elapsed().as_secs_f64(),
            result.map(drop),
        );
    }

    if !args.full {
        if args.mutants {
            phases.run("mutants", || {
                crate::mutants::run(toolchain, &crate::mutants::MutantsArgs::default())
            });
        }
        if args.learner_flows {
            phases.run("learner flows", crate::learner::run);
        }
        eprintln!(
            "==> NOT RUN at this level: the other guest kernels, {}{}the lessons copied out, the \
             book's build and browser check, the offline kit: `cargo xtask test --full` runs them all",
            if args.mutants { "" } else { "the mutants, " },
            if args.learner_flows {
                ""
            } else {
                "the learner flows, "
            },
        );
        return phases.finish("cargo xtask test");
    }

    // Proof that the tests can fail: deliberate bugs, each caught by the tests named for it. The
    // mutants of the kprobe and fentry code run in the stock guest's boot below, as extra cases.
    let mutants = crate::mutants::MutantsArgs::default();
    let mut guest_mutants = None;
    phases.run("mutants: build the guest mutants' kernel tests", || {
        guest_mutants = Some(crate::mutants::build_guest_mutants(toolchain, &mutants)?);
        Ok(())
    });
    // Every guest kernel (the stock one included), where kprobes and fentry work.
    let mut stock_results = None;
    phases.run("kernel tests in every guest kernel", || {
        let extra = guest_mutants
            .as_ref()
            .map(crate::mutants::GuestMutants::cases)
            .unwrap_or_default();
        stock_results = Some(vm::run_with(toolchain, &vm::VmTestArgs::default(), &extra)?);
        Ok(())
    });
    if tests_pass {
        phases.run("mutants", || {
            crate::mutants::run_with_guest(toolchain, &mutants, guest_mutants.zip(stock_results))
        });
    } else {
        eprintln!(
            "==> NOT RUN: the mutants and the exercises' solutions, whose baseline is the tests \
             that failed above"
        );
    }
    // Each lesson also builds outside this workspace, as a project of one's own.
    phases.run("lessons copied out build on their own", || {
        eprintln!(
            "==> each lesson copied out of the repository builds on its own (and the first and \
             the last as written out by new-project)"
        );
        crate::standalone::check(&steps)
    });
    // The macOS laptops' virtual machine: its provisioning runs here too.
    phases.run("Lima template and cloud-init", || {
        crate::lima::check_template()?;
        crate::lima::check_cloud_init()
    });
    // What a learner who is not root does, done by a temporary user who is not root but has sudo
    // rights, removed afterwards.
    phases.run("learner flows", crate::learner::run);
    phases.run("the book: build, links, browser", || {
        docs::run(
            toolchain,
            &docs::DocsArgs {
                refresh_transcripts: false,
                screenshots: None,
            },
        )
    });
    // A room without internet: the offline kit, and lesson 1 built from it alone.
    phases.run("offline kit", || crate::offline_kit::check(toolchain));
    phases.finish("cargo xtask test --full")
}

/// Clippy as the builds compile each crate: the workspace together (as `cargo build` and the tests
/// do), the shared crates alone with each set of features a build gives them, and the kernel side
/// for the BPF target.
fn clippy(toolchain: &Toolchain, ebpf_crates: &[String]) -> anyhow::Result<()> {
    let mut host = vec!["clippy", "--release", "--workspace", "--all-targets"];
    for ebpf in ebpf_crates {
        host.extend(["--exclude", ebpf.as_str()]);
    }
    host.extend(["--", "-D", "warnings"]);
    let mut clippy = toolchain.cargo(&host);
    crate::ebpf::build_for(
        toolchain,
        &mut clippy,
        ebpf_crates,
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
        &mut clippy_ebpf(toolchain, ebpf_crates),
    )
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

/// Every untouched lesson fails its exercise's check with the message that says what is missing,
/// and, with `solutions`, every reference solution (built in a clean checkout) passes its check.
/// The checks load eBPF programs: root only.
fn check_exercises(toolchain: &Toolchain, solutions: bool) -> anyhow::Result<()> {
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
    eprintln!(
        "==> exercises: {}the starters fail",
        if solutions {
            "the reference solutions pass, "
        } else {
            ""
        }
    );
    let check = |number, attempt| {
        let binary = check::build(toolchain, number, attempt)?;
        check::run(number, attempt, &binary)
    };
    if solutions {
        for exercise in &check::EXERCISES {
            check(exercise.number, check::Attempt::Solution)?;
        }
    }
    for (number, why) in check::EXERCISES
        .iter()
        .map(|exercise| (exercise.number, exercise.starter_fails_with))
    {
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
