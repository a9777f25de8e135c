//! `cargo xtask check exercise N`: builds the learner's lesson, runs it against real `listen()` calls
//! and says whether the exercise is done, or what is still missing. As in rustlings, a tool, not the
//! reader's memory, knows when an exercise works.
//!
//! The reference solutions are patches in `docs/exercises/`. `--solution` checks one, applied to a
//! clean checkout of the last commit (a git worktree under `target/`); `--starter` checks that
//! checkout as it is, which must fail with a helpful message.

use std::{
    net::Ipv4Addr,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use support::{
    kernel,
    running::{RunningStep, Stream},
    trigger,
};

use crate::{
    bench,
    lessons::{self, Lesson},
    pinned::{Toolchain, run_step, target_dir},
    workspace_root,
};

/// How long an exercise's event may take to show.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

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
}

pub const EXERCISES: [Exercise; 5] = [
    Exercise {
        number: 1,
        lesson: 1,
        title: "say who listens",
        patch: "1-process-name.patch",
        page: "lesson-1-hello.md",
    },
    Exercise {
        number: 2,
        lesson: 2,
        title: "add the process ID",
        patch: "2-pid.patch",
        page: "lesson-2-backlog.md",
    },
    Exercise {
        number: 3,
        lesson: 3,
        title: "the port in host byte order",
        patch: "3-skc-num.patch",
        page: "lesson-3-addr-port.md",
    },
    Exercise {
        number: 4,
        lesson: 4,
        title: "carry the thread id end to end",
        patch: "4-thread-id.patch",
        page: "lesson-4-netns-perf.md",
    },
    Exercise {
        number: 5,
        lesson: 5,
        title: "a ring buffer with batched wake-ups",
        patch: "5-ring-buffer.patch",
        page: "exercise-5-ring-buffer.md",
    },
];

/// Whether exercise 5's timings decide: they do for a learner; inside `cargo xtask test` (a shared
/// machine) they are printed, never a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timings {
    Decide,
    PrintOnly,
}

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
    if number == 5 {
        // The floor of exercise 5's cost: lesson 5 as committed, built first (the solution and
        // the starter are built in the same checkout after it).
        let committed = build_in_clean_checkout(toolchain, lesson, None)?;
        std::fs::create_dir_all(target_dir().join("exercise-5"))?;
        std::fs::copy(&committed, floor_binary())
            .with_context(|| format!("cannot copy {}", committed.display()))?;
        if attempt == Attempt::Starter {
            return Ok(committed);
        }
    }
    match attempt {
        Attempt::Yours => {
            lessons::build(toolchain, &[lesson])?;
            built_binary(number, attempt)
        }
        Attempt::Solution => {
            let solution = workspace_root().join("docs/exercises").join(exercise.patch);
            build_in_clean_checkout(toolchain, lesson, Some(&solution))
        }
        Attempt::Starter => build_in_clean_checkout(toolchain, lesson, None),
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
pub fn run(number: u8, attempt: Attempt, binary: &Path, timings: Timings) -> anyhow::Result<()> {
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
        _ => check_ring_buffer(binary, timings),
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
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Exercise 1: `Hello World from NAME!`, where NAME is the thread that called listen().
fn check_process_name(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let thread_name = "ex1-listener";
    let wanted = format!("Hello World from {thread_name}!");
    thread::Builder::new()
        .name(thread_name.into())
        .spawn(|| listen_once(1))
        .map_err(|error| error.to_string())?
        .join()
        .map_err(|_| "the listening thread failed".to_string())??;
    if wait_for(&mut step, |line| line.contains(&wanted)).is_some() {
        return Ok(());
    }
    Err(if saw(&step, |line| line.ends_with(" Hello World!")) {
        format!(
            "the program says `Hello World!`, but not who called listen(). Our listener's thread \
             is named {thread_name}: the line should read `{wanted}`"
        )
    } else {
        format!(
            "no line `{wanted}` arrived; the program printed:\n{}",
            step.stdout()
        )
    })
}

/// Exercise 2: `Listening with up to 7 pending connections! (pid PID)`.
fn check_pid(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    listen_once(7)?;
    let wanted = format!(
        "Listening with up to 7 pending connections! (pid {})",
        std::process::id()
    );
    if wait_for(&mut step, |line| line.contains(&wanted)).is_some() {
        return Ok(());
    }
    Err(
        if saw(&step, |line| {
            line.ends_with(" Listening with up to 7 pending connections!")
        }) {
            format!("the backlog is there, the process is not: the line should end with `{wanted}`")
        } else {
            format!(
                "no line ending with `{wanted}` arrived; the program printed:\n{}",
                step.stdout()
            )
        },
    )
}

/// Exercise 3: `…, skc_num PORT)` after inet_sport, on the line of our listener.
fn check_skc_num(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 3)
        .map_err(|error| format!("{error:#}"))?;
    let port = listener.local_addr.port();
    let ours = format!(" Listening on 127.0.0.1:{port} ");
    let wanted_end = format!(", skc_num {port})");
    if wait_for(&mut step, |line| {
        line.contains(&ours) && line.ends_with(&wanted_end)
    })
    .is_some()
    {
        return Ok(());
    }
    Err(
        match step.stdout().lines().find(|line| line.contains(&ours)) {
            Some(line) => {
                format!("our listener's line is `{line}`: it should end with `{wanted_end}`")
            }
            None => format!(
                "no line for our listener on 127.0.0.1:{port}; the program printed:\n{}",
                step.stdout()
            ),
        },
    )
}

/// Exercise 4: a `TID` column after `PID`, with the id of the thread that called listen().
fn check_thread_id(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let (tid, port) = thread::spawn(|| {
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 4)
            .map_err(|error| format!("{error:#}"))?;
        Ok::<_, String>((nix::unistd::gettid().as_raw(), listener.local_addr.port()))
    })
    .join()
    .map_err(|_| "the listening thread failed".to_string())??;
    let port = port.to_string();
    let Some(row) = wait_for(&mut step, |line| {
        line.split_whitespace().last() == Some(port.as_str())
    }) else {
        return Err(format!(
            "no row for our listen on port {port}; the program printed:\n{}",
            step.stdout()
        ));
    };
    let header = step.stdout().lines().next().unwrap_or_default().to_string();
    let columns: Vec<&str> = row.split_whitespace().collect();
    let pid = std::process::id().to_string();
    match (header.split_whitespace().nth(1), columns.get(1)) {
        (Some("TID"), Some(&seen)) if seen == tid.to_string() && columns[0] == pid => Ok(()),
        (Some("TID"), seen) => Err(format!(
            "the TID column of our row says {seen:?}, but the listening thread is {tid} (in \
             process {pid}): the row is `{row}`"
        )),
        _ => Err(format!(
            "the table has no TID column after PID: the header is `{header}`, and our listen's \
             row `{row}` should read `{pid} {tid} …`"
        )),
    }
}

/// Exercise 5's burst: twice as many listens as lesson 5's storm test makes.
const BURST: usize = 200_000;

/// The burst's size: `BURST`, or fewer where `LISTEN_TRACE_BURST` says so (an emulated guest).
fn burst_size() -> usize {
    std::env::var("LISTEN_TRACE_BURST")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(BURST)
}
/// Exercise 5's targets: the burst's cost next to the floor (lesson 5 as committed, every event
/// filtered in the kernel, on the same attach path), and a lone listen's delay.
const MAX_OVER_FLOOR: f64 = 1.25;
const MAX_LONE_DELAY: Duration = Duration::from_millis(100);
/// How many alternating rounds (floor, then the learner's program) the cost is the median of.
const ROUNDS: usize = 3;

/// Exercise 5: lesson 5's events through one BPF ring buffer, woken only now and then. Correct:
/// every listen of a burst arrives, or the loss is reported. Cheap: the same loop of listens costs
/// at most `MAX_OVER_FLOOR` times the floor, measured side by side, and a lone listen shows
/// within `MAX_LONE_DELAY`.
fn check_ring_buffer(binary: &Path, timings: Timings) -> Result<(), String> {
    let own_pid = std::process::id().to_string();
    let mut step = start(binary, &["--json", "--pid", &own_pid])?;
    let maps = kernel::map_types_held(step.pid().as_raw() as u32)
        .map_err(|error| format!("cannot read the program's maps in /proc: {error}"))?;
    if maps.contains(&kernel::MAP_TYPE_PERF_EVENT_ARRAY)
        || !maps.contains(&kernel::MAP_TYPE_RINGBUF)
    {
        let _ = step.try_stop(Signal::SIGINT);
        return Err(format!(
            "EVENTS is still a perf event array (the program holds maps of types {maps:?}; a ring \
             buffer is type {})",
            kernel::MAP_TYPE_RINGBUF
        ));
    }

    // A lone listen, twenty times: how long until its line shows.
    let mut delays = Vec::new();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 7)
            .map_err(|error| format!("{error:#}"))?;
        let port = listener.local_addr.port();
        if step
            .find_line(
                Stream::Stdout,
                |line| line.contains(&format!("\"port\":{port},")),
                Duration::from_secs(2),
            )
            .is_none()
        {
            let _ = step.try_stop(Signal::SIGINT);
            return Err(format!(
                "a lone listen on port {port} did not show within 2 s"
            ));
        }
        delays.push(started.elapsed());
    }
    step.try_stop(Signal::SIGINT)
        .map_err(|error| format!("the program did not stop: {error}"))?;
    delays.sort();
    let (lone_median, lone_worst) = (delays[delays.len() / 2], delays[delays.len() - 1]);

    // The burst: the learner's program next to lesson 5 as committed with every event filtered
    // in the kernel (its probes run, nothing is sent), on the same attach path, alternating. Their
    // ratio is what sending the events costs; the untraced loop is shown for information.
    let work = target_dir().join("exercise-5");
    std::fs::create_dir_all(&work).map_err(|error| error.to_string())?;
    let floor = floor_binary();
    let burst_listens = burst_size();
    let run = |tracer, binary: &Path| {
        bench::run_once(tracer, binary, "auto", burst_listens, &work)
            .map_err(|error| format!("{error:#}"))
    };
    let untraced = run(bench::Tracer::None, binary)?.nanos_per_listen;
    let (mut floors, mut ratios) = (Vec::new(), Vec::new());
    let measure_rounds = |rounds: usize,
                          floors: &mut Vec<f64>,
                          ratios: &mut Vec<f64>|
     -> Result<(), String> {
        for _ in 0..rounds {
            let below = run(bench::Tracer::Step5FilteredOut, &floor)?.nanos_per_listen;
            let burst = run(bench::Tracer::Exercise5, binary)?;
            let missing = burst_listens as u64 - burst.received.min(burst_listens as u64);
            if missing > 0 && burst.lost < missing {
                return Err(format!(
                    "{} of a burst of {burst_listens} listens arrived, and only {} were reported lost",
                    burst.received, burst.lost
                ));
            }
            floors.push(below);
            ratios.push(burst.nanos_per_listen / below);
        }
        Ok(())
    };
    measure_rounds(ROUNDS, &mut floors, &mut ratios)?;
    let mut verdict = CostVerdict::of(&ratios, &floors, untraced);
    if timings == Timings::Decide && verdict.ratio > MAX_OVER_FLOOR {
        // Repeated before it fails: a noisy round must not decide.
        eprintln!(
            "    exercise 5: {:.2}x the floor over {ROUNDS} rounds, above {MAX_OVER_FLOOR}x: \
             measuring {ROUNDS} more rounds",
            verdict.ratio
        );
        measure_rounds(ROUNDS, &mut floors, &mut ratios)?;
        verdict = CostVerdict::of(&ratios, &floors, untraced);
    }
    eprintln!(
        "    exercise 5: a burst of {burst_listens} listens costs {:.2}x lesson 5 with every event filtered \
         in the kernel (median of {} rounds, from {:.2}x to {:.2}x; target {MAX_OVER_FLOOR}x), \
         {:.2}x an untraced loop (for information); a lone listen shows after {} ms (median of \
         20; worst {} ms; target {} ms)",
        verdict.ratio,
        ratios.len(),
        verdict.lowest,
        verdict.highest,
        verdict.untraced_ratio,
        lone_median.as_millis(),
        lone_worst.as_millis(),
        MAX_LONE_DELAY.as_millis()
    );
    if timings == Timings::Decide {
        if verdict.ratio > MAX_OVER_FLOOR {
            return Err(verdict.explain_failure());
        }
        if lone_median > MAX_LONE_DELAY {
            return Err(format!(
                "a lone listen shows after {} ms: more than {} ms (how often is the ring drained?)",
                lone_median.as_millis(),
                MAX_LONE_DELAY.as_millis()
            ));
        }
    }
    Ok(())
}

/// Exercise 5's rounds, summed up.
struct CostVerdict {
    /// The median of the rounds' ratios to the floor.
    ratio: f64,
    lowest: f64,
    highest: f64,
    /// The floor's own cost next to the untraced loop, and the learner's.
    untraced_ratio: f64,
}

impl CostVerdict {
    fn of(ratios: &[f64], floors: &[f64], untraced: f64) -> Self {
        let mut sorted = ratios.to_vec();
        let ratio = bench::median(&mut sorted);
        let floor = bench::median(&mut floors.to_vec());
        Self {
            ratio,
            lowest: sorted[0],
            highest: sorted[sorted.len() - 1],
            untraced_ratio: ratio * floor / untraced,
        }
    }

    /// Why the cost check failed: on a busy machine, or with rounds that disagree, that; else the
    /// likely bug.
    fn explain_failure(&self) -> String {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let measured = format!(
            "the burst costs {:.2}x lesson 5 with every event filtered in the kernel, more than \
             {MAX_OVER_FLOOR}x (rounds from {:.2}x to {:.2}x)",
            self.ratio, self.lowest, self.highest
        );
        if load > cpus / 2.0 || self.highest > self.lowest * 1.2 {
            format!(
                "{measured}; but this machine is busy (load average {load:.1} on {cpus} CPUs) or \
                 the rounds disagree, so this may be noise, not your code: run the check again \
                 when the machine is quieter"
            )
        } else {
            format!("{measured}: are wake-ups still sent for every event?")
        }
    }
}

/// Where exercise 5's check keeps lesson 5 as committed, the floor its cost is measured against.
pub fn floor_binary() -> PathBuf {
    target_dir().join("exercise-5/lesson-5-as-committed")
}

fn listen_once(backlog: i32) -> Result<(), String> {
    trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), backlog)
        .map(drop)
        .map_err(|error| format!("{error:#}"))
}

/// Starts the learner's lesson and waits until it is attached.
fn start(binary: &Path, args: &[&str]) -> Result<RunningStep, String> {
    RunningStep::try_start(Command::new(binary).args(args), false)
        .map_err(|error| format!("the program {error}"))
}

/// Waits up to 5 s for a stdout line that satisfies `wanted` (or finds it among those read).
fn wait_for(step: &mut RunningStep, wanted: impl Fn(&str) -> bool) -> Option<String> {
    step.find_line(Stream::Stdout, wanted, EVENT_TIMEOUT)
}

/// Whether a stdout line read so far satisfies `wanted`.
fn saw(step: &RunningStep, wanted: impl Fn(&str) -> bool) -> bool {
    step.saw(Stream::Stdout, wanted).is_some()
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
    let mut build = toolchain.cargo(&["build", "--release", "--package", lesson.package]);
    build
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", clean_checkout_target());
    run_step(
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
