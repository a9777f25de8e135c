//! `cargo xtask mutants`: proof that the lessons' tests can fail. Each mutant is one deliberate
//! bug in a lesson's kernel or user code (the kind a learner or a refactoring makes), and names the
//! tests expected to catch it. Those tests must first pass on the tree without any mutant (the
//! baseline); then each mutant is applied alone to a scratch copy of the working tree, its named
//! tests run against the real kernel, and at least one of them must fail. A failure of another
//! test is reported, never counted as a catch. `--all` runs every test of the lesson instead.
//!
//! The other side of the same proof: each exercise's reference solution, applied alone, must leave
//! its lesson's tests passing (they check facts, not the wording an exercise changes), and pass
//! its exercise's check. Those runs come first: a named test that passed in one needs
//! no baseline run of its own.
//!
//! Where a mutant is caught: on this machine for the paths it has (the tracepoint everywhere), in
//! the stock Debian 12 kernel under qemu (`vm::STOCK_KERNEL`, with kprobes and fentry) for the
//! kprobe and fentry code: their test binaries are built here, and run as extra cases in one boot
//! of that guest, beside the baseline (the same tests unmutated).

use std::{
    collections::BTreeSet,
    fs,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use cargo_metadata::{Artifact, Message, TargetKind};

use catalogue::{MUTANTS, Mutant, Where};

use crate::{
    lessons,
    pinned::{Toolchain, output_of, own_build_dir, target_dir},
    vm, workspace_root,
};

mod catalogue;

#[derive(Debug, Default, clap::Args)]
pub struct MutantsArgs {
    /// Only the mutants whose name contains this text
    #[arg(long)]
    pub filter: Option<String>,
    /// Leave out the mutants that need a guest kernel (the kprobe and fentry code)
    #[arg(long)]
    pub host_only: bool,
    /// Leave out the exercises' solutions (which must pass their checks and leave their lessons'
    /// tests passing)
    #[arg(long)]
    pub no_solutions: bool,
    /// Only the exercises' solutions, no mutant
    #[arg(long, conflicts_with_all = ["no_solutions", "filter", "host_only"])]
    pub solutions_only: bool,
    /// Run every test of the mutant's lesson, not only the tests it names (slower; the table then
    /// also shows which other tests failed)
    #[arg(long)]
    pub all: bool,
}

/// What happened to one mutant.
struct Outcome {
    mutant: &'static Mutant,
    verdict: Verdict,
    seconds: f64,
}

/// What the tests that ran with a mutant say of it.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// The named tests that failed: the catch.
    caught_by: Vec<String>,
    /// Tests that failed but are not named: reported, not counted.
    others_failed: Vec<String>,
}

/// Judges a mutant by the results (`test name`, passed) of the tests that ran with it: caught when
/// at least one test it names failed. A named test that did not run at all is an error (the
/// catalogue names a test that is gone).
fn judge(named: &[&str], results: &[(String, bool)]) -> anyhow::Result<Verdict> {
    let missing: Vec<&&str> = named
        .iter()
        .filter(|name| !results.iter().any(|(test, _)| test == *name))
        .collect();
    ensure!(
        missing.is_empty(),
        "the tests {missing:?} did not run: does the catalogue name tests that are gone?"
    );
    let failed = |named_one: bool| -> Vec<String> {
        results
            .iter()
            .filter(|(test, passed)| !passed && named.contains(&test.as_str()) == named_one)
            .map(|(test, _)| test.clone())
            .collect()
    };
    Ok(Verdict {
        caught_by: failed(true),
        others_failed: failed(false),
    })
}

pub fn run(toolchain: &Toolchain, args: &MutantsArgs) -> anyhow::Result<()> {
    run_with_guest(toolchain, args, None)
}

/// The mutants that need a guest kernel, built for it: the extra cases that `run_with_guest` then
/// judges, and that `cargo xtask test --full` runs in the stock guest's own boot.
pub struct GuestMutants {
    built: Vec<(&'static Mutant, vm::ExtraCases)>,
}

impl GuestMutants {
    pub fn cases(&self) -> Vec<&vm::ExtraCases> {
        self.built.iter().map(|(_, cases)| cases).collect()
    }
}

/// Builds the kernel tests of each guest mutant (all of them, with `args`' filter) in the scratch
/// tree, as extra cases for the stock guest.
pub fn build_guest_mutants(
    toolchain: &Toolchain,
    args: &MutantsArgs,
) -> anyhow::Result<GuestMutants> {
    let scratch = Scratch::prepare()?;
    let mut built = Vec::new();
    for (index, mutant) in chosen(args)?
        .into_iter()
        .enumerate()
        .filter(|(_, mutant)| mutant.caught == Where::Guest)
    {
        eprintln!(
            "==> mutant {}: lesson {}: {}: build its kernel tests for the stock guest",
            index + 1,
            mutant.lesson,
            mutant.name
        );
        let cases = scratch.with_mutant(mutant, || {
            scratch.guest_cases(
                toolchain,
                mutant,
                &format!("mutant-{}", index + 1),
                args.all,
            )
        })?;
        built.push((mutant, cases));
    }
    Ok(GuestMutants { built })
}

fn chosen(args: &MutantsArgs) -> anyhow::Result<Vec<&'static Mutant>> {
    let chosen: Vec<&Mutant> = MUTANTS
        .iter()
        .filter(|mutant| {
            args.filter
                .as_deref()
                .is_none_or(|filter| mutant.name.contains(filter))
        })
        .filter(|mutant| !(args.host_only && mutant.caught == Where::Guest))
        .filter(|_| !args.solutions_only)
        .collect();
    ensure!(
        !chosen.is_empty() || args.solutions_only,
        "no mutant matches {:?}",
        args.filter
    );
    Ok(chosen)
}

/// The mutants and the solutions; with `guest`, the guest mutants' cases already ran in the stock
/// guest (`cargo xtask test --full`), else they are built and run in a boot of their own.
pub fn run_with_guest(
    toolchain: &Toolchain,
    args: &MutantsArgs,
    guest: Option<(GuestMutants, vm::StockResults)>,
) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the mutants run the kernel tests, which load eBPF programs: run this as root");
    }
    let started = Instant::now();
    let chosen = chosen(args)?;
    let host: Vec<&Mutant> = chosen
        .iter()
        .copied()
        .filter(|mutant| mutant.caught == Where::Host)
        .collect();
    let scratch = Scratch::prepare()?;
    eprintln!(
        "==> mutants: {} deliberate bugs, one at a time, in {}",
        chosen.len(),
        scratch.tree.display()
    );

    // The exercises' reference solutions, each applied alone: its lesson's tests must still pass
    // (they check facts, not the wording an exercise changes), and its check must pass on the
    // binary those tests built.
    let mut solutions = Vec::new();
    // The tests that passed here with a solution applied: they build and pass in this copy, so a
    // mutant that makes one fail is caught by its mutation, not by the copy.
    let mut passed_here: BTreeSet<(u8, String)> = BTreeSet::new();
    if !args.no_solutions && args.filter.is_none() {
        for exercise in &crate::check::EXERCISES {
            let patch = workspace_root().join("docs/exercises").join(exercise.patch);
            eprintln!(
                "==> exercise {}'s solution: lesson {}'s tests must still pass, and its check",
                exercise.number, exercise.lesson
            );
            let (results, checked) = scratch.with_patch(&patch, || {
                let results = scratch.host_tests(toolchain, exercise.lesson, None)?;
                let binary = scratch.binary(exercise.lesson)?;
                let checked =
                    crate::check::run(exercise.number, crate::check::Attempt::Solution, &binary);
                Ok((results, checked))
            })?;
            let mut failed = Vec::new();
            for (test, passed) in results {
                if passed {
                    passed_here.insert((exercise.lesson, test));
                } else {
                    failed.push(test);
                }
            }
            solutions.push((exercise, failed, checked));
        }
    }

    // The baseline: every named test passes without a mutant, here (those that passed with a
    // solution above, whose change is not theirs, need no second run).
    let mut lessons_here: Vec<u8> = host.iter().map(|mutant| mutant.lesson).collect();
    lessons_here.dedup();
    for lesson in lessons_here {
        let named: BTreeSet<&str> = host
            .iter()
            .filter(|mutant| mutant.lesson == lesson)
            .flat_map(|mutant| mutant.tests.iter().copied())
            .filter(|test| !passed_here.contains(&(lesson, test.to_string())))
            .collect();
        if named.is_empty() {
            eprintln!(
                "==> baseline: lesson {lesson}'s tests named by its mutants passed here with its \
                 exercise's solution"
            );
            continue;
        }
        let named: Vec<&str> = named.into_iter().collect();
        eprintln!(
            "==> baseline: lesson {lesson}'s tests named by its mutants pass without any mutant"
        );
        let results = scratch.host_tests(toolchain, lesson, Some(&named))?;
        baseline_holds(&named, &results, "here")?;
    }

    let mut outcomes = Vec::new();
    for (index, mutant) in chosen.iter().enumerate() {
        if mutant.caught == Where::Guest {
            continue;
        }
        let mutant_started = Instant::now();
        eprintln!(
            "==> mutant {}: lesson {}: {} (tests here: {})",
            index + 1,
            mutant.lesson,
            mutant.name,
            mutant.tests.join(", ")
        );
        let results = scratch.with_mutant(mutant, || {
            scratch.host_tests(
                toolchain,
                mutant.lesson,
                (!args.all).then_some(mutant.tests),
            )
        })?;
        let verdict = judge(mutant.tests, &results)?;
        eprintln!("    caught by: {}", verdict.caught_by.join(", "));
        outcomes.push(Outcome {
            mutant,
            verdict,
            seconds: mutant_started.elapsed().as_secs_f64(),
        });
    }

    if chosen.iter().any(|mutant| mutant.caught == Where::Guest) {
        let guest_started = Instant::now();
        let (built, results) = match guest {
            Some(ran) => ran,
            None => {
                let built = build_guest_mutants(toolchain, args)?;
                let mut named = BTreeSet::new();
                for (mutant, _) in &built.built {
                    let package = lessons::find(mutant.lesson)?.package;
                    named.extend(mutant.tests.iter().map(|test| format!("{package}::{test}")));
                }
                let stock = vm::VmTestArgs {
                    filter: Some(named.into_iter().collect::<Vec<_>>().join(",")),
                    ..vm::VmTestArgs::stock()
                };
                let results = vm::run_with(toolchain, &stock, &built.cases())?;
                (built, results)
            }
        };
        // The guest's cases ran in one boot: each mutant's share of it (none when that boot was
        // the guest's own run, before this phase).
        let seconds = guest_started.elapsed().as_secs_f64() / built.built.len().max(1) as f64;
        for (mutant, cases) in &built.built {
            let package = lessons::find(mutant.lesson)?.package;
            let unmutated: Vec<(String, bool)> = results
                .own
                .iter()
                .filter_map(|(name, passed)| {
                    Some((
                        name.strip_prefix(&format!("{package}::"))?.to_string(),
                        *passed,
                    ))
                })
                .collect();
            baseline_holds(mutant.tests, &unmutated, vm::STOCK_KERNEL)?;
            let mutated: Vec<(String, bool)> = results
                .extra
                .iter()
                .filter_map(|(name, passed)| {
                    Some((
                        name.strip_prefix(&format!("{}::", cases.label))?
                            .to_string(),
                        *passed,
                    ))
                })
                .collect();
            outcomes.push(Outcome {
                mutant,
                verdict: judge(mutant.tests, &mutated)?,
                seconds,
            });
        }
    }
    outcomes.sort_by_key(|outcome| {
        MUTANTS
            .iter()
            .position(|mutant| mutant.name == outcome.mutant.name)
    });

    println!("{}", table(&outcomes));
    let mut broken = Vec::new();
    for (exercise, failed, checked) in &solutions {
        if let Err(error) = checked {
            broken.push(format!("exercise {}'s check: {error:#}", exercise.number));
        }
        let changed = exercise.changes_tests;
        let unexpected: Vec<&String> = failed
            .iter()
            .filter(|test| !changed.contains(&test.as_str()))
            .collect();
        let still_passing: Vec<&&str> = changed
            .iter()
            .filter(|test| !failed.iter().any(|failed| failed == *test))
            .collect();
        println!(
            "exercise {} solved: {}lesson {}'s tests pass{}",
            exercise.number,
            if checked.is_ok() {
                "its check passes, and "
            } else {
                "its check FAILS; "
            },
            exercise.lesson,
            if changed.is_empty() {
                String::new()
            } else {
                format!(
                    ", but for the one(s) its page names: {}",
                    changed.join(", ")
                )
            }
        );
        if !unexpected.is_empty() || !still_passing.is_empty() {
            broken.push(format!(
                "exercise {}: failing {unexpected:?}; named on its page as changed but passing \
                 {still_passing:?}",
                exercise.number
            ));
        }
    }
    if !broken.is_empty() {
        bail!(
            "an exercise's reference solution fails its check, or changes other tests of its \
             lesson than its page says: {}",
            broken.join("; ")
        );
    }
    let missed: Vec<String> = outcomes
        .iter()
        .filter(|outcome| outcome.verdict.caught_by.is_empty())
        .map(|outcome| {
            format!(
                "{} (none of {} failed)",
                outcome.mutant.name,
                outcome.mutant.tests.join(", ")
            )
        })
        .collect();
    if !missed.is_empty() {
        bail!("missed: {}", missed.join("; "));
    }
    eprintln!(
        "    mutants: every one caught by a test named for it, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every test in `named` ran and passed without a mutant, or the mutants prove nothing.
fn baseline_holds(named: &[&str], results: &[(String, bool)], where_: &str) -> anyhow::Result<()> {
    let verdict = judge(named, results)?;
    ensure!(
        verdict.caught_by.is_empty(),
        "the baseline fails {where_}: {} fail(s) without any mutant, so a mutant cannot be \
         judged by it",
        verdict.caught_by.join(", ")
    );
    Ok(())
}

/// The table of mutants and the tests that caught them (Markdown, as the note and the book show it).
fn table(outcomes: &[Outcome]) -> String {
    let mut text = String::from(
        "| lesson | mutation | where | caught by (named tests that failed) | other tests that failed | seconds |\n\
         |---|---|---|---|---|---|\n",
    );
    let list = |tests: &[String], empty: &str| {
        if tests.is_empty() {
            empty.to_string()
        } else {
            tests
                .iter()
                .map(|test| format!("`{test}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for outcome in outcomes {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} |\n",
            outcome.mutant.lesson,
            outcome.mutant.name,
            match outcome.mutant.caught {
                Where::Host => "here",
                Where::Guest => "guest (kprobe, fentry)",
            },
            list(&outcome.verdict.caught_by, "**missed**"),
            list(&outcome.verdict.others_failed, ""),
            outcome.seconds
        ));
    }
    text
}

/// A copy of the working tree (what git tracks or would track), built in a target folder of its
/// own so that the lessons built here are never replaced by a mutant.
struct Scratch {
    tree: PathBuf,
    target: PathBuf,
}

impl Scratch {
    fn prepare() -> anyhow::Result<Self> {
        let root = workspace_root();
        let base = target_dir().join("mutants");
        let scratch = Self {
            tree: base.join("tree"),
            target: base.join("target"),
        };
        if scratch.tree.exists() {
            fs::remove_dir_all(&scratch.tree)?;
        }
        for name in crate::learner::working_tree_files(&root)? {
            let (from, to) = (root.join(&name), scratch.tree.join(&name));
            if from.is_file() {
                fs::create_dir_all(to.parent().expect("a file in a folder"))?;
                fs::copy(&from, &to).with_context(|| format!("cannot copy {name}"))?;
            }
        }
        // The bpf-linker built for the pinned toolchain, and the guests' downloads, are shared.
        fs::create_dir_all(&scratch.target)?;
        symlink(&root.join(".tools"), &scratch.tree.join(".tools"))?;
        symlink(&target_dir().join("vm"), &scratch.target.join("vm"))?;
        Ok(scratch)
    }

    /// Applies `mutant`, runs `test`, and puts the file back whatever happened.
    fn with_mutant<T>(
        &self,
        mutant: &Mutant,
        test: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let path = self.tree.join(mutant.file);
        let original = fs::read_to_string(&path)?;
        let found = original.matches(mutant.from).count();
        ensure!(
            found == 1,
            "mutant {:?}: {:?} occurs {found} times in {}, not once",
            mutant.name,
            mutant.from,
            mutant.file
        );
        fs::write(&path, original.replacen(mutant.from, mutant.to, 1))?;
        let result = test();
        fs::write(&path, original)?;
        result
    }

    /// Applies the exercise solution `patch`, runs `test`, and takes the patch back out.
    fn with_patch<T>(
        &self,
        patch: &Path,
        test: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let git_apply = |reverse: bool| -> anyhow::Result<()> {
            let mut command = Command::new("git");
            command.arg("apply");
            if reverse {
                command.arg("--reverse");
            }
            // The scratch tree sits inside this repository (under `target/`), where `git apply`
            // would take paths as the repository's and skip them all: it must see no repository.
            let outside = self.tree.parent().expect("the tree is in target/mutants");
            output_of(
                command
                    .arg(patch)
                    .current_dir(&self.tree)
                    .env("GIT_CEILING_DIRECTORIES", outside),
            )
            .map(drop)
        };
        git_apply(false)?;
        let result = test();
        git_apply(true)?;
        result
    }

    /// The lesson's unit and kernel tests here (only `named`, when given); returns each test that
    /// ran, with whether it passed.
    fn host_tests(
        &self,
        toolchain: &Toolchain,
        lesson: u8,
        named: Option<&[&str]>,
    ) -> anyhow::Result<Vec<(String, bool)>> {
        let package = lessons::find(lesson)?.package;
        let objects = self.ebpf_objects(toolchain, package)?;
        let mut args = vec![
            "test",
            "--release",
            "--package",
            package,
            "--",
            "--include-ignored",
            "--test-threads=1",
        ];
        if let Some(named) = named {
            args.push("--exact");
            args.extend(named);
        }
        let mut command = toolchain.cargo(&args);
        command.env(crate::ebpf::OBJECTS_VARIABLE, objects);
        let output = self.output_of(&mut command)?;
        ensure!(
            !output.contains("error: could not compile"),
            "the tree does not build, so it proves nothing:\n{output}"
        );
        let results: Vec<(String, bool)> = output
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("test ")?;
                if let Some(test) = rest.strip_suffix(" ... ok") {
                    Some((test.to_string(), true))
                } else {
                    rest.strip_suffix(" ... FAILED")
                        .map(|test| (test.to_string(), false))
                }
            })
            .collect();
        ensure!(
            !results.is_empty(),
            "no test of {package} ran; the output was:\n{output}"
        );
        Ok(results)
    }

    /// Lesson `lesson`'s program as its tests last built it here.
    fn binary(&self, lesson: u8) -> anyhow::Result<PathBuf> {
        let package = lessons::find(lesson)?.package;
        Ok(self.target.join("release").join(package))
    }

    /// The eBPF objects of `package`'s kernel side, built from the scratch tree.
    fn ebpf_objects(&self, toolchain: &Toolchain, package: &str) -> anyhow::Result<PathBuf> {
        crate::ebpf::build(
            toolchain,
            &self.tree,
            &self.target,
            crate::ebpf::this_arch(),
            &[format!("{package}-ebpf")],
        )
    }

    /// Builds the lesson's kernel tests with `mutant` applied, for the stock guest: the test
    /// binary and the step binary it starts, kept apart from the next mutant's under
    /// `target/mutants/guest/LABEL/`, and a runner that puts this step binary where the tests look
    /// for it before it runs them. Its cases: the tests the mutant names, or with `all` every one.
    fn guest_cases(
        &self,
        toolchain: &Toolchain,
        mutant: &Mutant,
        label: &str,
        all: bool,
    ) -> anyhow::Result<vm::ExtraCases> {
        let package = lessons::find(mutant.lesson)?.package;
        let objects = self.ebpf_objects(toolchain, package)?;
        let mut command = toolchain.cargo(&[
            "test",
            "--release",
            "--package",
            package,
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ]);
        command
            .current_dir(&self.tree)
            .env("CARGO_TARGET_DIR", &self.target)
            .env(crate::ebpf::OBJECTS_VARIABLE, objects)
            .stdout(Stdio::piped());
        own_build_dir(&mut command, &self.target);
        let mut cargo = command.spawn().context("cannot start cargo")?;
        let (mut tests, mut step) = (None, None);
        for message in Message::parse_stream(BufReader::new(cargo.stdout.take().unwrap())) {
            if let Message::CompilerArtifact(Artifact {
                target,
                executable: Some(executable),
                profile,
                ..
            }) = message?
            {
                if target.kind.contains(&TargetKind::Test) && target.name == "kernel" {
                    tests = Some(PathBuf::from(executable));
                } else if target.kind.contains(&TargetKind::Bin)
                    && target.name == package
                    && !profile.test
                {
                    step = Some(PathBuf::from(executable));
                }
            }
        }
        ensure!(
            cargo.wait()?.success(),
            "the mutant's kernel tests do not build, so it proves nothing"
        );
        let (tests, step) = (
            tests.context("cargo built no kernel test binary")?,
            step.with_context(|| format!("cargo built no {package} binary"))?,
        );
        let kept = target_dir().join("mutants/guest").join(label);
        fs::create_dir_all(&kept)?;
        let (kept_tests, kept_step) = (kept.join("kernel"), kept.join(package));
        fs::copy(&tests, &kept_tests)?;
        fs::copy(&step, &kept_step)?;
        let cases = if all {
            let listed =
                output_of(Command::new(&kept_tests).args(["--list", "--format", "terse"]))?;
            listed
                .lines()
                .filter_map(|line| line.strip_suffix(": test"))
                .map(String::from)
                .collect()
        } else {
            mutant.tests.iter().map(|test| test.to_string()).collect()
        };
        let inside = PathBuf::from("/mutants").join(label);
        let (inside_tests, inside_step) = (inside.join("kernel"), inside.join(package));
        let step_dir = step.parent().expect("a binary is in a folder");
        Ok(vm::ExtraCases {
            label: label.to_string(),
            binaries: vec![
                (kept_tests, inside_tests.clone()),
                (kept_step, inside_step.clone()),
            ],
            runner: inside.join("run"),
            runner_script: format!(
                "#!/bin/busybox sh\n# This mutant's {package}, where its tests were built to find it.\n\
                 mkdir -p '{}'\ncp '{}' '{}'\nexec '{}' \"$@\"\n",
                step_dir.display(),
                inside_step.display(),
                step.display(),
                inside_tests.display()
            ),
            cases,
        })
    }

    /// Runs `command` in the scratch tree with its own target folder; returns stdout and stderr
    /// (kept in a log next to the tree) whatever the exit status.
    fn output_of(&self, command: &mut Command) -> anyhow::Result<String> {
        command
            .current_dir(&self.tree)
            .env("CARGO_TARGET_DIR", &self.target);
        let output = own_build_dir(command, &self.target)
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        fs::write(self.tree.with_file_name("last-run.log"), &text)?;
        Ok(text)
    }
}

fn symlink(original: &Path, link: &Path) -> anyhow::Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(original, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), original.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter()
            .map(|(test, passed)| (test.to_string(), *passed))
            .collect()
    }

    #[test]
    fn a_mutant_is_caught_only_by_a_test_named_for_it() {
        let named = ["exact_values", "every_call"];
        let verdict = judge(
            &named,
            &results(&[
                ("exact_values", false),
                ("every_call", true),
                ("storm", false),
            ]),
        )
        .unwrap();
        assert_eq!(verdict.caught_by, ["exact_values"]);
        assert_eq!(verdict.others_failed, ["storm"]);
        // A planted miss: only a test it does not name fails, so nothing caught it.
        let planted = judge(
            &named,
            &results(&[
                ("exact_values", true),
                ("every_call", true),
                ("storm", false),
            ]),
        )
        .unwrap();
        assert!(planted.caught_by.is_empty());
        assert_eq!(planted.others_failed, ["storm"]);
        // A named test that did not run is the catalogue's error, not a miss or a catch.
        assert!(judge(&named, &results(&[("exact_values", false)])).is_err());
    }

    #[test]
    fn the_baseline_must_pass_every_named_test() {
        assert!(baseline_holds(&["a", "b"], &results(&[("a", true), ("b", true)]), "here").is_ok());
        assert!(baseline_holds(&["a"], &results(&[("a", false)]), "here").is_err());
        assert!(baseline_holds(&["a"], &results(&[("b", true)]), "here").is_err());
    }

    #[test]
    fn every_mutant_names_tests_of_its_own_lesson() {
        let root = workspace_root();
        for mutant in &MUTANTS {
            assert!(!mutant.tests.is_empty(), "{} names no test", mutant.name);
            let package = lessons::find(mutant.lesson).unwrap().package;
            let mut sources = String::new();
            for folder in ["tests", "src"] {
                for entry in fs::read_dir(root.join(package).join(folder)).unwrap() {
                    sources.push_str(&fs::read_to_string(entry.unwrap().path()).unwrap());
                }
            }
            for test in mutant.tests {
                let function = test.rsplit("::").next().unwrap();
                assert!(
                    sources.contains(&format!("fn {function}()")),
                    "{}: no test {test} in {package}",
                    mutant.name
                );
            }
        }
    }

    /// Every mutant still applies: its text is found exactly once in its lesson.
    #[test]
    fn every_mutant_applies_to_its_lesson() {
        let root = workspace_root();
        for mutant in &MUTANTS {
            let source = fs::read_to_string(root.join(mutant.file)).unwrap();
            assert_eq!(
                source.matches(mutant.from).count(),
                1,
                "{}: {:?} in {}",
                mutant.name,
                mutant.from,
                mutant.file
            );
            let lesson = lessons::find(mutant.lesson).unwrap();
            assert!(mutant.file.starts_with(lesson.package), "{}", mutant.name);
        }
        assert!(MUTANTS.len() >= 10);
    }
}
