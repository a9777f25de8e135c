//! `cargo xtask check exercise N`: builds the learner's lesson, runs it against real `listen()` calls
//! and says whether the exercise is done, or what is still missing. As in rustlings, a tool, not the
//! reader's memory, knows when an exercise works.
//!
//! The reference solutions are patches in `docs/exercises/`. `--solution` checks one, applied to a
//! clean checkout of the last commit (a git worktree under `target/`); `--starter` checks that
//! checkout as it is, which must fail with a helpful message.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

mod verdicts;

use verdicts::{
    check_cgroup, check_comm, check_cpu, check_csv, check_failed, check_fd, check_listened,
    check_pid, check_process_name, check_ring_peak, check_skc_num, check_thread_id,
    check_time_millis, check_wake_ups,
};

use crate::{
    lessons::{self, Lesson},
    pinned::{Toolchain, output_of, run_cargo, run_step, target_dir},
    workspace_root,
};

/// One exercise: which lesson it extends, its solution, and what it asks.
#[derive(Debug)]
pub struct Exercise {
    pub number: u8,
    pub lesson: u8,
    pub title: &'static str,
    /// The reference solution, in `docs/exercises/`.
    pub patch: &'static str,
    /// The book's page that asks for it, in `docs/src/`.
    pub page: &'static str,
    /// The lesson's tests that no longer apply once the exercise is solved (the page names them);
    /// every other test of the lesson still passes (`cargo xtask mutants` checks both).
    pub changes_tests: &'static [&'static str],
    /// What the check says of the lesson as it is (the starter), which must fail for this reason.
    pub starter_fails_with: &'static str,
}

pub const EXERCISES: [Exercise; 14] = [
    Exercise {
        number: 1,
        lesson: 1,
        title: "say who listens",
        patch: "1-process-name.patch",
        page: "lesson-1-hello.md",
        changes_tests: &[],
        starter_fails_with: "but not who called listen()",
    },
    Exercise {
        number: 2,
        lesson: 2,
        title: "add the process ID",
        patch: "2-pid.patch",
        page: "lesson-2-backlog.md",
        changes_tests: &[],
        starter_fails_with: "the backlog is there, the process is not",
    },
    Exercise {
        number: 3,
        lesson: 3,
        title: "the port in host byte order",
        patch: "3-skc-num.patch",
        page: "lesson-3-addr-port.md",
        changes_tests: &[],
        starter_fails_with: "it should end with `, skc_num",
    },
    Exercise {
        number: 4,
        lesson: 4,
        title: "carry the thread id end to end",
        patch: "4-thread-id.patch",
        page: "lesson-4-netns-perf.md",
        changes_tests: &[],
        starter_fails_with: "the table has no TID column after PID",
    },
    Exercise {
        number: 5,
        lesson: 5,
        title: "how long each listener listened",
        patch: "5-listened.patch",
        page: "lesson-5-ends.md",
        // A listen that fails (EADDRINUSE) starts listening and stops at once: on the tracepoint
        // path it now has a `closed` row too.
        changes_tests: &["every_call_is_one_row_with_its_final_port_and_result"],
        starter_fails_with: "no LISTENED column",
    },
    Exercise {
        number: 6,
        lesson: 6,
        title: "the file descriptor of each call",
        patch: "6-fd.patch",
        page: "lesson-6-syscalls.md",
        changes_tests: &[],
        starter_fails_with: "no FD column",
    },
    Exercise {
        number: 7,
        lesson: 7,
        title: "the sockops path on a cgroup of your choice",
        patch: "7-cgroup.patch",
        page: "lesson-7-sockops.md",
        changes_tests: &[],
        starter_fails_with: "no --cgroup option",
    },
    Exercise {
        number: 8,
        lesson: 8,
        title: "the CPU of each event",
        patch: "8-cpu.patch",
        page: "lesson-8-ring-buffer.md",
        changes_tests: &[],
        starter_fails_with: "no CPU column",
    },
    Exercise {
        number: 9,
        lesson: 9,
        title: "how full the ring got",
        patch: "9-ring-peak.patch",
        page: "lesson-9-full-ring.md",
        changes_tests: &[],
        starter_fails_with: "says nothing of how full the ring got",
    },
    Exercise {
        number: 10,
        lesson: 10,
        title: "count the wake-ups",
        patch: "10-wake-ups.patch",
        page: "lesson-10-wake-ups.md",
        changes_tests: &[],
        starter_fails_with: "says nothing of wake-ups",
    },
    Exercise {
        number: 11,
        lesson: 11,
        title: "count the calls that failed",
        patch: "11-failed.patch",
        page: "lesson-11-counts.md",
        changes_tests: &[],
        starter_fails_with: "says nothing of the calls that failed",
    },
    Exercise {
        number: 12,
        lesson: 12,
        title: "a filter on the thread's name, in the kernel",
        patch: "12-comm.patch",
        page: "lesson-12-filters.md",
        changes_tests: &[],
        starter_fails_with: "no --comm option",
    },
    Exercise {
        number: 13,
        lesson: 13,
        title: "the time to the millisecond",
        patch: "13-millis.patch",
        page: "lesson-13-table.md",
        changes_tests: &[],
        starter_fails_with: "TIME should read HH:MM:SS.mmm",
    },
    Exercise {
        number: 14,
        lesson: crate::lessons::TOOL,
        title: "a third output: CSV",
        patch: "14-csv.patch",
        page: "lesson-14-tool.md",
        changes_tests: &[],
        starter_fails_with: "no --csv option",
    },
];

/// Whose code is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The lesson in this working tree, as the learner changed it.
    Yours,
    /// The reference solution, applied to the last commit.
    Solution,
    /// The last commit as it is, before the exercise.
    Starter,
}

/// The exercise with this number, or an error that says which exist.
fn find(number: u8) -> anyhow::Result<&'static Exercise> {
    EXERCISES
        .iter()
        .find(|exercise| exercise.number == number)
        .with_context(|| {
            format!(
                "there is no exercise {number}; they are 1 to {}",
                EXERCISES.len()
            )
        })
}

/// Builds what `attempt` checks and returns its binary.
pub fn build(toolchain: &Toolchain, number: u8, attempt: Attempt) -> anyhow::Result<PathBuf> {
    let exercise = find(number)?;
    let lesson = lessons::find(exercise.lesson)?;
    match attempt {
        Attempt::Yours => {
            lessons::build(toolchain, &[lesson])?;
            built_binary(number, attempt)
        }
        Attempt::Solution => {
            let solution = workspace_root().join("docs/exercises").join(exercise.patch);
            build_in_clean_checkout(toolchain, lesson, Some(&solution))
        }
        Attempt::Starter => build_committed(toolchain, lesson),
    }
}

/// `lesson` as in the last commit. Where its folder, `common` and the workspace's manifests have
/// no change since that commit, those are the sources this workspace builds: its own build is
/// that lesson, and no other checkout has to compile it again. Otherwise a clean checkout of the
/// last commit builds it.
fn build_committed(toolchain: &Toolchain, lesson: &Lesson) -> anyhow::Result<PathBuf> {
    let changed = git_output(
        &workspace_root(),
        &[
            "status",
            "--porcelain",
            "--",
            lesson.package,
            "common",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )?;
    if changed.trim().is_empty() {
        lessons::build(toolchain, &[lesson])?;
        Ok(target_dir().join("release").join(lesson.package))
    } else {
        build_in_clean_checkout(toolchain, lesson, None)
    }
}

/// Where `build` put the binary of `attempt`.
pub fn built_binary(number: u8, attempt: Attempt) -> anyhow::Result<PathBuf> {
    let lesson = lessons::find(find(number)?.lesson)?;
    Ok(match attempt {
        Attempt::Yours => target_dir().join("release"),
        Attempt::Solution | Attempt::Starter => clean_checkout_target().join("release"),
    }
    .join(lesson.package))
}

/// Checks exercise `number` with the `binary` that `build` made; `Ok` when it passes, an error
/// saying what is missing otherwise.
pub fn run(number: u8, attempt: Attempt, binary: &Path) -> anyhow::Result<()> {
    let exercise = find(number)?;
    let lesson = lessons::find(exercise.lesson)?;
    eprintln!(
        "==> exercise {number} ({}): running lesson {} against real listen() calls",
        exercise.title, lesson.number
    );
    let verdict = match number {
        1 => check_process_name(binary),
        2 => check_pid(binary),
        3 => check_skc_num(binary),
        4 => check_thread_id(binary),
        5 => check_listened(binary),
        6 => check_fd(binary),
        7 => check_cgroup(binary),
        8 => check_cpu(binary),
        9 => check_ring_peak(binary),
        10 => check_wake_ups(binary),
        11 => check_failed(binary),
        12 => check_comm(binary),
        13 => check_time_millis(binary),
        _ => check_csv(binary),
    };
    match verdict {
        Ok(()) => {
            eprintln!("exercise {number} ({}): passed", exercise.title);
            Ok(())
        }
        Err(missing) => match attempt {
            Attempt::Yours => bail!(
                "exercise {number} ({}) is not done yet: {missing}\n(a hint: `cargo xtask check exercise {number} --hint`; the exercise is in docs/src/{})",
                exercise.title,
                exercise.page
            ),
            Attempt::Solution | Attempt::Starter => {
                bail!("exercise {number} ({}): {missing}", exercise.title)
            }
        },
    }
}

/// `--hint`: prints the exercise's hint (in Chinese when the locale says so), the text the lesson's
/// page folds away.
pub fn print_hint(number: u8) -> anyhow::Result<()> {
    let exercise = find(number)?;
    let chinese = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .is_some_and(|locale| locale.starts_with("zh"));
    let file = hint_file(exercise, chinese);
    let hint = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    println!(
        "Exercise {number} ({}), a hint:\n\n{}",
        exercise.title,
        hint.trim_end()
    );
    Ok(())
}

/// The hint of `exercise`, in `docs/exercises/`.
fn hint_file(exercise: &Exercise, chinese: bool) -> PathBuf {
    let language = if chinese { ".zh" } else { "" };
    workspace_root()
        .join("docs/exercises")
        .join(format!("{}-hint{language}.md", exercise.number))
}

/// `--reset`: saves the learner's changes to the files the exercise's solution touches as a patch
/// under `target/`, then puts those files back as in the last commit.
pub fn reset(number: u8) -> anyhow::Result<()> {
    let exercise = find(number)?;
    let root = workspace_root();
    let solution = root.join("docs/exercises").join(exercise.patch);
    let touched = git_output(&root, &["apply", "--numstat", path_arg(&solution)?])?;
    let files: Vec<&str> = touched
        .lines()
        .filter_map(|line| line.split('\t').nth(2))
        .collect();
    if files.is_empty() {
        bail!("{} names no file", solution.display());
    }
    let mut diff_args = vec!["diff", "HEAD", "--"];
    diff_args.extend(&files);
    let yours = git_output(&root, &diff_args)?;
    if yours.is_empty() {
        eprintln!(
            "exercise {number}: nothing to reset, {} are as in the last commit",
            files.join(", ")
        );
        return Ok(());
    }
    let saved = target_dir().join(format!(
        "exercise-{number}-yours-{}.patch",
        std::process::id()
    ));
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(&saved, &yours).with_context(|| format!("cannot write {}", saved.display()))?;
    let mut checkout = vec!["checkout", "HEAD", "--"];
    checkout.extend(&files);
    git_output(&root, &checkout)?;
    eprintln!(
        "exercise {number}: {} are back as in the last commit; your changes are saved in {}\n(`git apply {}` brings them back)",
        files.join(", "),
        saved.display(),
        saved.display()
    );
    Ok(())
}

fn path_arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("a path that is not UTF-8: {}", path.display()))
}

/// Runs git in `root` and returns its standard output; an error with git's own words otherwise.
fn git_output(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    output_of(Command::new("git").arg("-C").arg(root).args(args))
}

/// Builds `lesson` in a clean checkout of the last commit (a git worktree under `target/`), with
/// `patch` applied, and returns its binary. Its own target folder keeps the learner's build intact.
pub fn build_in_clean_checkout(
    toolchain: &Toolchain,
    lesson: &Lesson,
    patch: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let base = target_dir().join("exercises");
    let tree = base.join("checkout");
    // The solutions are checked in a git checkout of the last commit.
    let git = |args: &[&str]| git_output(&root, args).map(drop);
    let tree_arg = path_arg(&tree)?;
    if tree.exists() {
        git(&["worktree", "remove", "--force", tree_arg])?;
    }
    git(&["worktree", "prune"])?;
    git(&[
        "worktree", "add", "--quiet", "--detach", "--force", tree_arg, "HEAD",
    ])?;
    if let Some(patch) = patch {
        run_step(
            &format!("apply {}", patch.display()),
            Command::new("git")
                .arg("-C")
                .arg(&tree)
                .arg("apply")
                .arg(patch),
        )?;
    }
    // The checkout links with this workspace's bpf-linker (`.cargo/config.toml` names `.tools/`).
    symlink(root.join(".tools"), tree.join(".tools"))
        .context("cannot link .tools into the checkout")?;
    let objects = crate::ebpf::build(
        toolchain,
        &tree,
        &clean_checkout_target(),
        crate::ebpf::this_arch(),
        &[format!("{}-ebpf", lesson.package)],
    )?;
    let mut build = toolchain.cargo(&["build", "--release", "--package", lesson.package]);
    build
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", clean_checkout_target())
        .env(crate::ebpf::OBJECTS_VARIABLE, objects);
    crate::pinned::own_build_dir(&mut build, &clean_checkout_target());
    run_cargo(
        &format!("build {} in {}", lesson.package, tree.display()),
        &mut build,
    )?;
    Ok(clean_checkout_target().join("release").join(lesson.package))
}

/// The target folder of the clean checkout's builds (its own, so the learner's build stays intact).
pub fn clean_checkout_target() -> PathBuf {
    target_dir().join("exercises/target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exercise_has_its_lesson_and_its_solution() {
        for (index, exercise) in EXERCISES.iter().enumerate() {
            assert_eq!(usize::from(exercise.number), index + 1);
            assert!(
                lessons::LESSONS
                    .iter()
                    .any(|lesson| lesson.number == exercise.lesson)
            );
            let patch = workspace_root().join("docs/exercises").join(exercise.patch);
            assert!(patch.exists(), "{} is missing", patch.display());
            let page = workspace_root().join("docs/src").join(exercise.page);
            assert!(
                std::fs::read_to_string(&page)
                    .unwrap()
                    .contains(&format!("cargo xtask check exercise {}", exercise.number)),
                "{} does not say how to check exercise {}",
                page.display(),
                exercise.number
            );
            for test in exercise.changes_tests {
                assert!(
                    std::fs::read_to_string(&page).unwrap().contains(test),
                    "{} does not name the test {test}, which exercise {} changes",
                    page.display(),
                    exercise.number
                );
            }
            for chinese in [false, true] {
                let hint = hint_file(exercise, chinese);
                assert!(hint.exists(), "{} is missing", hint.display());
            }
        }
    }

    /// A half-done exercise must not break another lesson's build: each solution changes only the
    /// folder of its own lesson.
    #[test]
    fn every_solution_changes_only_its_own_lesson() {
        for exercise in &EXERCISES {
            let folder = format!("{}/", lessons::find(exercise.lesson).unwrap().package);
            let patch = workspace_root().join("docs/exercises").join(exercise.patch);
            let text = std::fs::read_to_string(&patch).unwrap();
            let touched: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("+++ b/"))
                .collect();
            assert!(!touched.is_empty(), "{} changes no file", patch.display());
            for file in touched {
                assert!(
                    file.starts_with(&folder),
                    "exercise {} changes {file}, outside {folder}",
                    exercise.number
                );
            }
        }
    }
}
