//! `cargo xtask bench`: what lesson 4 costs per `listen()`, next to no tracer and (when installed)
//! bpftrace on the same tracepoint, measured side by side in one run; and how fast each step is
//! ready. It writes its figures to `docs/src/benchmarks.md`.
//!
//! A run is a loop of socket + bind(127.0.0.1:0) + listen + close in this process, timed as a
//! whole; the configurations alternate within each round, so that a machine that gets busier or
//! quieter during the benchmark affects them all alike, and only medians and ratios from the same
//! run are reported.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use support::{
    running::{RunningStep, Stream},
    trigger,
};

use crate::{
    lessons,
    pinned::{Toolchain, target_dir},
    vm::which,
    workspace_root,
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// listen() calls per run
    #[arg(long, default_value_t = 200_000)]
    listens: usize,
    /// Runs of each configuration (they alternate)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Where to write the results (markdown)
    #[arg(long, default_value = "docs/src/benchmarks.md")]
    output: PathBuf,
}

/// What traces the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracer {
    None,
    Step4FilteredOut,
    Step4Table,
    Step4Json,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no tracer",
            Self::Step4FilteredOut => "step 4, all filtered in the kernel",
            Self::Step4Table => "step 4, table to a file",
            Self::Step4Json => "step 4 --json, to a file",
            Self::Bpftrace => "bpftrace, printf to a file",
        }
    }
}

/// The bpftrace program that does what lesson 4 does on the same tracepoint: a line per listen.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state /args->newstate == 10/ \
     { printf(\"%d %s %d %d\\n\", pid, comm, args->sport, args->family); }";

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Nanoseconds per listen() of the loop.
    nanos_per_listen: f64,
    /// Our own listens that the tracer printed.
    received: u64,
    /// What the tracer says it lost.
    lost: u64,
}

pub fn run(toolchain: &Toolchain, args: &BenchArgs) -> anyhow::Result<()> {
    let step4 = lessons::find(4)?;
    lessons::build(toolchain, &lessons::present()?)?;
    let work = target_dir().join("bench");
    fs::create_dir_all(&work)?;

    let mut tracers = vec![
        Tracer::None,
        Tracer::Step4FilteredOut,
        Tracer::Step4Table,
        Tracer::Step4Json,
    ];
    let bpftrace = which("bpftrace");
    if bpftrace.is_some() {
        ensure_tracefs()?;
        tracers.push(Tracer::Bpftrace);
    } else {
        eprintln!(
            "    bpftrace is not installed: measuring without it (apt-get install bpftrace adds it)"
        );
    }
    let step4_binary = target_dir().join("release").join(step4.package);

    eprintln!(
        "==> bench: {} rounds of {} listens with each of: {}",
        args.rounds,
        args.listens,
        tracers
            .iter()
            .map(|tracer| tracer.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); tracers.len()];
    for round in 1..=args.rounds {
        for (index, &tracer) in tracers.iter().enumerate() {
            let run = run_once(tracer, &step4_binary, args.listens, &work)?;
            eprintln!(
                "    round {round}: {:<28} {:>7.2} us per listen, {} of {} received, {} lost",
                tracer.name(),
                run.nanos_per_listen / 1000.0,
                run.received,
                args.listens,
                run.lost
            );
            runs[index].push(run);
        }
    }

    let unrelated = measure_unrelated_syscall(&step4_binary, args.rounds, &work)?;
    let startup = measure_startup(&step4_binary, bpftrace.is_some())?;
    let report = report(args, &tracers, &runs, &unrelated, &startup)?;
    let output = workspace_root().join(&args.output);
    fs::write(&output, &report)?;
    eprintln!("{report}");
    eprintln!("==> bench: written to {}", output.display());
    Ok(())
}

/// Starts `tracer`, waits until it is ready, runs the loop, stops it and reads its counts.
fn run_once(tracer: Tracer, step4: &Path, listens: usize, work: &Path) -> anyhow::Result<Run> {
    let out_path = work.join("tracer.out");
    let err_path = work.join("tracer.err");
    let child = match tracer {
        Tracer::None => None,
        // PID 1 (init) does not listen here: the probe runs, and sends nothing.
        Tracer::Step4FilteredOut => Some(spawn_to_files(
            Command::new(step4).args(["--attach=tracepoint", "--pid=1"]),
            &out_path,
            &err_path,
        )?),
        Tracer::Step4Table => Some(spawn_to_files(
            Command::new(step4).arg("--attach=tracepoint"),
            &out_path,
            &err_path,
        )?),
        Tracer::Step4Json => Some(spawn_to_files(
            Command::new(step4).args(["--attach=tracepoint", "--json"]),
            &out_path,
            &err_path,
        )?),
        Tracer::Bpftrace => Some(spawn_to_files(
            Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]),
            &out_path,
            &err_path,
        )?),
    };
    if child.is_some() {
        wait_until_ready(tracer, &out_path, &err_path)?;
    }

    let started = Instant::now();
    for _ in 0..listens {
        trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 7)?;
    }
    let elapsed = started.elapsed();

    let (mut received, mut lost) = (listens as u64, 0);
    if let Some(mut child) = child {
        // Let the reader drain what the kernel still holds, then stop it as Ctrl-C would.
        thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
        child.wait()?;
        let own_pid = std::process::id().to_string();
        let out = BufReader::new(File::open(&out_path)?);
        received = 0;
        for line in out.lines() {
            let line = line?;
            let own = match tracer {
                Tracer::Step4Json => line.starts_with(&format!("{{\"pid\":{own_pid},")),
                _ => line.split_whitespace().next() == Some(&own_pid),
            };
            received += u64::from(own);
            if let Some(count) = line
                .strip_prefix("Lost ")
                .and_then(|rest| rest.split(' ').next())
            {
                lost += count.parse::<u64>().unwrap_or(0); // bpftrace's "Lost N events"
            }
        }
        let stderr = fs::read_to_string(&err_path)?;
        if let Some(count) = stderr
            .lines()
            .find_map(|line| line.split_once(" events received, ")?.1.split(' ').next())
        {
            lost += count.parse::<u64>().unwrap_or(0); // step 4's summary
        }
    }
    Ok(Run {
        nanos_per_listen: elapsed.as_nanos() as f64 / listens as f64,
        received,
        lost,
    })
}

/// How many calls of the unrelated system call a run makes.
const UNRELATED_CALLS: u32 = 2_000_000;

/// Nanoseconds per `getppid()` (a cheap system call that has nothing to do with `listen()`), with no
/// tracer and with lesson 4 attached on the tracepoint path, alternating: the medians.
fn measure_unrelated_syscall(step4: &Path, rounds: u32, work: &Path) -> anyhow::Result<(f64, f64)> {
    let getppid_loop = || {
        let started = Instant::now();
        for _ in 0..UNRELATED_CALLS {
            std::hint::black_box(nix::unistd::getppid());
        }
        started.elapsed().as_nanos() as f64 / f64::from(UNRELATED_CALLS)
    };
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        untraced.push(getppid_loop());
        let (out, err) = (work.join("unrelated.out"), work.join("unrelated.err"));
        let mut step = spawn_to_files(Command::new(step4).arg("--attach=tracepoint"), &out, &err)?;
        wait_until_ready(Tracer::Step4Table, &out, &err)?;
        traced.push(getppid_loop());
        kill(Pid::from_raw(step.id() as i32), Signal::SIGINT)?;
        step.wait()?;
        eprintln!(
            "    round {round}: getppid() {:.1} ns untraced, {:.1} ns with lesson 4 attached",
            untraced.last().unwrap(),
            traced.last().unwrap()
        );
    }
    Ok((median(&mut untraced), median(&mut traced)))
}

fn spawn_to_files(command: &mut Command, out: &Path, err: &Path) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(err)?)
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))
}

/// Step 4 says `Ready:` on stderr; bpftrace says `Attaching N probe` on stdout.
fn wait_until_ready(tracer: Tracer, out: &Path, err: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = match tracer {
            Tracer::Bpftrace => fs::read_to_string(out)?.contains("Attaching"),
            _ => fs::read_to_string(err)?.contains("Ready:"),
        };
        if ready {
            // bpftrace prints before it attaches: give it the time to finish.
            thread::sleep(Duration::from_millis(if tracer == Tracer::Bpftrace {
                1500
            } else {
                100
            }));
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "{} did not get ready within 30 s: {}",
        tracer.name(),
        fs::read_to_string(err)?
    )
}

/// Start-up figures: (what, median seconds).
type Startup = Vec<(String, f64)>;

/// For each step: exec to its ready line. For step 4 and bpftrace: exec to the first listen() that
/// shows up in the output, which is what a user waits for.
fn measure_startup(step4: &Path, with_bpftrace: bool) -> anyhow::Result<Startup> {
    const SAMPLES: usize = 5;
    let mut figures = Vec::new();
    for lesson in lessons::present()? {
        let binary = target_dir().join("release").join(lesson.package);
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let step = RunningStep::try_start(Command::new(&binary).arg("--attach=auto"), false)
                .map_err(|error| anyhow!("{} {error}", lesson.package))?;
            samples.push(started.elapsed().as_secs_f64());
            drop(step); // kills it
        }
        figures.push((
            format!("{}: exec to ready line", lesson.package),
            median(&mut samples),
        ));
    }
    let mut first_event = |name: &str, command: &mut Command| -> anyhow::Result<()> {
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            samples.push(exec_to_first_event(command)?);
        }
        figures.push((
            format!("{name}: exec to first traced listen()"),
            median(&mut samples),
        ));
        Ok(())
    };
    first_event("step4-netns-perf", Command::new(step4).arg("--attach=auto"))?;
    if with_bpftrace {
        first_event(
            "bpftrace",
            Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]),
        )?;
    }
    Ok(figures)
}

/// Starts `command` and listens every 5 ms until a line with our pid appears in its output.
fn exec_to_first_event(command: &mut Command) -> anyhow::Result<f64> {
    let own_pid = std::process::id().to_string();
    let started = Instant::now();
    let mut tracer = RunningStep::try_spawn(command).map_err(|error| anyhow!(error))?;
    let deadline = started + Duration::from_secs(30);
    loop {
        let _listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 7)?;
        let listened = Instant::now();
        while let Some(left) = Duration::from_millis(5).checked_sub(listened.elapsed()) {
            match tracer.next_line(left) {
                Some((Stream::Stdout, line))
                    if line.split_whitespace().next() == Some(own_pid.as_str()) =>
                {
                    return Ok(started.elapsed().as_secs_f64()); // dropping `tracer` kills it
                }
                Some(_) => {}
                None => break,
            }
        }
        if Instant::now() > deadline {
            bail!("{command:?} showed no event within 30 s");
        }
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[middle]
    } else {
        (samples[middle - 1] + samples[middle]) / 2.0
    }
}

fn report(
    args: &BenchArgs,
    tracers: &[Tracer],
    runs: &[Vec<Run>],
    (untraced, traced): &(f64, f64),
    startup: &Startup,
) -> anyhow::Result<String> {
    let uname = String::from_utf8(Command::new("uname").arg("-r").output()?.stdout)?;
    let cpu = fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, usize::from);
    let date = crate::utc_now()?;
    let medians: Vec<f64> = runs
        .iter()
        .map(|runs| {
            median(
                &mut runs
                    .iter()
                    .map(|run| run.nanos_per_listen)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let baseline = medians[0];

    let mut text = String::new();
    writeln!(text, "# Benchmarks\n")?;
    writeln!(
        text,
        "`cargo xtask bench` measures what tracing costs a program that calls `listen()`: a loop of\n\
         socket + bind(127.0.0.1:0) + listen + close, timed with no tracer, with lesson 4 writing its\n\
         table or its JSON to a file, and with bpftrace printing a line per event from the same\n\
         tracepoint (when bpftrace is installed). The configurations alternate within each round, and\n\
         the ratios compare medians from the same run, so a machine that is busier at one moment\n\
         than another shifts them all alike. Run it on a quiet machine, as root; it rewrites this page.\n"
    )?;
    writeln!(text, "## Latest run\n")?;
    writeln!(
        text,
        "- machine: {cores} cores ({cpu}), kernel {}",
        uname.trim()
    )?;
    writeln!(text, "- date: {date}")?;
    writeln!(
        text,
        "- {} listens per run, {} runs of each configuration, alternating\n",
        args.listens, args.rounds
    )?;
    writeln!(
        text,
        "| configuration | median per listen | ratio to no tracer | own events received (median) | lost (median) |"
    )?;
    writeln!(text, "|---|---|---|---|---|")?;
    for ((tracer, runs), median_nanos) in tracers.iter().zip(runs).zip(&medians) {
        let received = median(
            &mut runs
                .iter()
                .map(|run| run.received as f64)
                .collect::<Vec<_>>(),
        );
        let lost = median(&mut runs.iter().map(|run| run.lost as f64).collect::<Vec<_>>());
        let received = match tracer {
            Tracer::None => "n/a".to_string(),
            Tracer::Step4FilteredOut => "none sent (filtered)".to_string(),
            _ => format!("{received:.0} of {}", args.listens),
        };
        let lost = if *tracer == Tracer::None {
            "n/a".to_string()
        } else {
            format!("{lost:.0}")
        };
        writeln!(
            text,
            "| {} | {:.2} us | {:.2}x | {received} | {lost} |",
            tracer.name(),
            median_nanos / 1000.0,
            median_nanos / baseline,
        )?;
    }
    writeln!(
        text,
        "\nHow to read it: the row where the kernel filters every event out is the probe alone (it runs\n\
         and reads the socket, and sends nothing). The difference to the table and JSON rows is the\n\
         cost of sending events through the perf buffer: each event makes the kernel schedule a\n\
         wake-up of the reader (an inter-processor interrupt, which is expensive in a VM), which aya's\n\
         perf buffers always ask for. The reader drains in batches, so it is not woken again for every\n\
         event; bpftrace is. A BPF ring buffer, which can skip the wake-up per event, would be cheaper\n\
         still (see lesson 4)."
    )?;
    writeln!(text, "\n## What the others pay\n")?;
    writeln!(
        text,
        "A tracer of `listen()` must not slow down the rest of the machine. Lesson 4's tracepoint\n\
         path hooks the `listen()` system call's entry and exit; this loop calls another system call,\n\
         `getppid()`, {UNRELATED_CALLS} times, with no tracer and with lesson 4 attached, alternating.\n"
    )?;
    writeln!(text, "| configuration | median per getppid() | ratio |")?;
    writeln!(text, "|---|---|---|")?;
    writeln!(text, "| no tracer | {untraced:.1} ns | 1.00x |")?;
    writeln!(
        text,
        "| lesson 4 attached (tracepoint path) | {traced:.1} ns | {:.2}x |",
        traced / untraced
    )?;
    writeln!(text, "\n## Start-up (median of 5)\n")?;
    writeln!(text, "| what | median |")?;
    writeln!(text, "|---|---|")?;
    for (what, seconds) in startup {
        writeln!(text, "| {what} | {:.0} ms |", seconds * 1000.0)?;
    }
    Ok(text)
}

/// bpftrace reads tracepoint formats from tracefs, which a fresh machine may not have mounted.
fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    eprintln!("    mounting tracefs on /sys/kernel/tracing (bpftrace needs it)");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        bail!("cannot mount tracefs on /sys/kernel/tracing (needs root)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_odd_and_even_samples() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
