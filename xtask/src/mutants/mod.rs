//! `cargo xtask mutants`: proof that the lessons' tests can fail. Each mutant is one deliberate
//! bug in a lesson's kernel or user code (the kind a learner or a refactoring makes); it is applied
//! alone to a scratch copy of the working tree, the lesson's tests run against the real kernel,
//! and at least one of them must fail. A table shows which tests caught each.
//!
//! The other side of the same proof: each exercise's reference solution, applied alone, must leave
//! its lesson's tests passing (they check facts, not the wording an exercise changes).
//!
//! Where a mutant is caught: on this machine for the paths it has (the tracepoint everywhere), in
//! a guest kernel with kprobes and fentry under qemu (`vm-test`, the stock Debian 12 kernel) for
//! the kprobe and fentry code, which this machine may not be able to load.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use catalogue::{MUTANTS, Mutant, Where};

use crate::{
    lessons,
    pinned::{Toolchain, output_of, target_dir},
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
    /// Leave out the exercises' solutions (whose lessons' tests must still pass)
    #[arg(long)]
    pub no_solutions: bool,
    /// Only the exercises' solutions, no mutant
    #[arg(long, conflicts_with_all = ["no_solutions", "filter", "host_only"])]
    pub solutions_only: bool,
}

/// What happened to one mutant.
struct Outcome {
    mutant: &'static Mutant,
    caught_by: Vec<String>,
    seconds: f64,
}

pub fn run(toolchain: &Toolchain, args: &MutantsArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the mutants run the kernel tests, which load eBPF programs: run this as root");
    }
    let started = Instant::now();
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
    let scratch = Scratch::prepare()?;
    eprintln!(
        "==> mutants: {} deliberate bugs, one at a time, in {}",
        chosen.len(),
        scratch.tree.display()
    );
    let mut outcomes = Vec::new();
    for (index, mutant) in chosen.into_iter().enumerate() {
        let mutant_started = Instant::now();
        eprintln!(
            "==> mutant {}: lesson {}: {} ({})",
            index + 1,
            mutant.lesson,
            mutant.name,
            match mutant.caught {
                Where::Host => "tests here",
                Where::Guest => "tests in a guest kernel",
            }
        );
        let caught_by = scratch.with_mutant(mutant, || match mutant.caught {
            Where::Host => scratch.host_tests(toolchain, mutant.lesson),
            Where::Guest => scratch.guest_tests(toolchain, mutant.lesson),
        })?;
        eprintln!("    caught by: {}", caught_by.join(", "));
        outcomes.push(Outcome {
            mutant,
            caught_by,
            seconds: mutant_started.elapsed().as_secs_f64(),
        });
    }
    let mut solutions = Vec::new();
    if !args.no_solutions && args.filter.is_none() {
        for exercise in &crate::check::EXERCISES {
            let patch = workspace_root().join("docs/exercises").join(exercise.patch);
            eprintln!(
                "==> exercise {}'s solution: lesson {}'s tests must still pass",
                exercise.number, exercise.lesson
            );
            let failed =
                scratch.with_patch(&patch, || scratch.host_tests(toolchain, exercise.lesson))?;
            solutions.push((exercise, failed));
        }
    }
    println!("{}", table(&outcomes));
    let mut broken = Vec::new();
    for (exercise, failed) in &solutions {
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
            "exercise {} solved: lesson {}'s tests pass{}",
            exercise.number,
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
            "a correct exercise changes other tests of its lesson than its page says: {}",
            broken.join("; ")
        );
    }
    let missed: Vec<_> = outcomes
        .iter()
        .filter(|outcome| outcome.caught_by.is_empty())
        .map(|outcome| outcome.mutant.name)
        .collect();
    if !missed.is_empty() {
        bail!("no test caught: {}", missed.join("; "));
    }
    eprintln!(
        "    mutants: every one caught, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The table of mutants and the tests that caught them (Markdown, as the note and the book show it).
fn table(outcomes: &[Outcome]) -> String {
    let mut text = String::from(
        "| lesson | mutation | where | caught by | seconds |\n|---|---|---|---|---|\n",
    );
    for outcome in outcomes {
        let caught = if outcome.caught_by.is_empty() {
            "**nothing**".to_string()
        } else {
            outcome
                .caught_by
                .iter()
                .map(|test| format!("`{test}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!(
            "| {} | {} | {} | {caught} | {:.0} |\n",
            outcome.mutant.lesson,
            outcome.mutant.name,
            match outcome.mutant.caught {
                Where::Host => "here",
                Where::Guest => "guest (kprobe, fentry)",
            },
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
    fn with_mutant(
        &self,
        mutant: &Mutant,
        test: impl FnOnce() -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Vec<String>> {
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
    fn with_patch(
        &self,
        patch: &Path,
        test: impl FnOnce() -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Vec<String>> {
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

    /// The lesson's unit and kernel tests here; returns the names of those that failed.
    fn host_tests(&self, toolchain: &Toolchain, lesson: u8) -> anyhow::Result<Vec<String>> {
        let package = lessons::find(lesson)?.package;
        let objects = crate::ebpf::build(
            toolchain,
            &self.tree,
            &self.target,
            crate::ebpf::this_arch(),
            &[format!("{package}-ebpf")],
        )?;
        let mut command = toolchain.cargo(&[
            "test",
            "--release",
            "--package",
            package,
            "--",
            "--include-ignored",
            "--test-threads=1",
        ]);
        command.env(crate::ebpf::OBJECTS_VARIABLE, objects);
        let output = self.output_of(&mut command)?;
        ensure!(
            !output.contains("error: could not compile"),
            "the mutant does not build, so it proves nothing:\n{output}"
        );
        Ok(output
            .lines()
            .filter_map(|line| line.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
            .map(String::from)
            .collect())
    }

    /// The lesson's kernel tests in the stock guest kernel, where kprobes and fentry work; returns
    /// the cases that failed there.
    fn guest_tests(&self, toolchain: &Toolchain, lesson: u8) -> anyhow::Result<Vec<String>> {
        let package = lessons::find(lesson)?.package;
        let mut command = toolchain.cargo(&[
            "xtask",
            "vm-test",
            "--kernel",
            vm::STOCK_KERNEL,
            "--suite",
            vm::DEFAULT_SUITE,
            "--expect",
            "kprobe,fentry,tracepoint,sockops",
            "--filter",
            &format!("{package}::"),
        ]);
        let output = self.output_of(&mut command)?;
        ensure!(
            !output.contains("error: could not compile")
                && output.lines().any(|line| line.starts_with("    vm-test: ")
                    && line.contains(" passed, ")
                    && line.ends_with(" s")),
            "the mutant did not build or the guest did not boot, so it proves nothing:\n{output}"
        );
        Ok(output
            .lines()
            .filter_map(|line| line.strip_prefix("error: vm-test failed: "))
            .flat_map(|failed| failed.split(", "))
            .map(|case| case.split(" (").next().unwrap_or(case).to_string())
            .collect())
    }

    /// Runs `command` in the scratch tree with its own target folder; returns stdout and stderr
    /// (kept in a log next to the tree) whatever the exit status.
    fn output_of(&self, command: &mut Command) -> anyhow::Result<String> {
        let output = command
            .current_dir(&self.tree)
            .env("CARGO_TARGET_DIR", &self.target)
            .env("CARGO_BUILD_BUILD_DIR", crate::pinned::build_dir())
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
