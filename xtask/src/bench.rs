//! `cargo xtask bench`: what lessons 4, 5 to 13 cost per `listen()`, next to no tracer, the probe
//! alone and bpftrace on the same tracepoint, measured side by side in one run; how long a lone
//! listen, and the first listen after a burst, take to show in each; whether lesson 14 meets its
//! targets; what the others pay; and how fast each step is ready. It writes its figures to
//! `docs/src/benchmark-results.md`, which both editions' benchmarks page include.
//!
//! A run is a loop of socket + bind(127.0.0.1:0) + listen + close in this process, timed as a
//! whole; the configurations alternate within each round, so that a machine that gets busier or
//! quieter during the benchmark affects them all alike, and only medians and ratios from the same
//! run are reported.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::sys::signal::Signal;
use support::{
    running::{RunningStep, Stream},
    trigger,
};

use crate::{
    host_packages, lessons,
    measure::{
        BPFTRACE_PROGRAM, Run, Tracer, interrupt, median, run_once, spawn_to_files,
        wait_until_ready,
    },
    pinned::{Toolchain, target_dir},
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
    /// Where to write the results (markdown, included by the benchmarks pages)
    #[arg(long, default_value = "docs/src/benchmark-results.md")]
    output: PathBuf,
}

/// The attach path the bench compares on: the state tracepoint, which every kernel here has and
/// bpftrace uses too.
const BENCH_PATH: &str = "tracepoint";

pub fn run(toolchain: &Toolchain, args: &BenchArgs) -> anyhow::Result<()> {
    let step4 = lessons::find(4)?;
    let step5 = lessons::find(5)?;
    let step14 = lessons::find(lessons::TOOL)?;
    lessons::build(toolchain, &lessons::present()?)?;
    let work = target_dir().join("bench");
    fs::create_dir_all(&work)?;
    let mut tracers = vec![
        Tracer::None,
        Tracer::Step14FilteredOut,
        Tracer::Step4Table,
        Tracer::Step5Table,
        Tracer::Step14Table,
        Tracer::Step14Json,
        Tracer::Step14JsonNoPause,
        Tracer::Step14SockopsFilteredOut,
        Tracer::Step14SockopsJson,
    ];
    // Measured next to bpftrace when it can be installed; without it otherwise, said below.
    let _ = host_packages::ensure("bench", &[host_packages::BPFTRACE]);
    let bpftrace = which::which("bpftrace").ok();
    if bpftrace.is_some() {
        ensure_tracefs()?;
        tracers.push(Tracer::Bpftrace);
    } else {
        eprintln!(
            "    bpftrace is not installed: measuring without it (apt-get install bpftrace adds it)"
        );
    }
    let step4_binary = target_dir().join("release").join(step4.package);
    let step5_binary = target_dir().join("release").join(step5.package);
    let tool_binary = target_dir().join("release").join(step14.package);
    let binary_of = |tracer| match tracer {
        Tracer::Step4Table => step4_binary.as_path(),
        Tracer::Step5Table => step5_binary.as_path(),
        _ => tool_binary.as_path(),
    };

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
            let run = run_once(tracer, binary_of(tracer), BENCH_PATH, args.listens, &work)?;
            eprintln!(
                "    round {round}: {:<44} {:>7.2} us per listen, {} of {} received, {} lost",
                tracer.name(),
                run.nanos_per_listen / 1000.0,
                run.received,
                args.listens,
                run.lost
            );
            runs[index].push(run);
        }
    }

    let mut latencies = Vec::new();
    for &tracer in tracers
        .iter()
        .filter(|tracer| **tracer != Tracer::None && !tracer.filters_everything())
    {
        let latency = measure_latency(tracer, binary_of(tracer))?;
        eprintln!(
            "    latency: {:<44} lone p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; after a burst p50 {:.2} ms",
            tracer.name(),
            latency.lone_p50 * 1000.0,
            latency.lone_p99 * 1000.0,
            latency.lone_p999 * 1000.0,
            latency.after_burst_p50 * 1000.0,
        );
        latencies.push((tracer, latency));
    }
    let unrelated = measure_unrelated_syscall(&tool_binary, args.rounds, &work)?;
    let startup = measure_startup(&tool_binary, bpftrace.is_some())?;
    let report = report(args, &tracers, &runs, &latencies, &unrelated, &startup)?;
    let output = workspace_root().join(&args.output);
    fs::write(&output, &report)?;
    eprintln!("{report}");
    eprintln!("==> bench: written to {}", output.display());
    Ok(())
}

/// Lone listens per tracer, one every 10 ms: from `listen()` to its line in the tracer's output,
/// as a person watching it would wait.
const LONE_LISTENS: usize = 1000;

/// Bursts per tracer, each of `BURST_LISTENS` listens, then one listen once the burst is printed:
/// what the first event after a storm waits, when the reader may still be pausing.
const BURSTS: usize = 50;
const BURST_LISTENS: usize = 2000;

/// Delays from a `listen()` to its line, in seconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    lone_p50: f64,
    lone_p99: f64,
    lone_p999: f64,
    after_burst_p50: f64,
    after_burst_max: f64,
}

/// The `p`-th quantile (0 to 1) of `samples`, sorted in place: the smallest sample that at least
/// that share of the samples does not exceed.
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = (samples.len() as f64 * p).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn measure_latency(tracer: Tracer, binary: &Path) -> anyhow::Result<Latency> {
    let mut command = tracer.command(binary, BENCH_PATH).context("no tracer")?;
    let mut running = RunningStep::try_spawn(&mut command).map_err(|error| anyhow!(error))?;
    let ready = running.wait_for_line(
        if tracer == Tracer::Bpftrace {
            Stream::Stdout
        } else {
            Stream::Stderr
        },
        |line| line.starts_with("Attaching") || line.starts_with("Ready:"),
        Duration::from_secs(30),
    );
    if ready.is_none() {
        bail!("{} did not get ready within 30 s", tracer.name());
    }
    // bpftrace prints before it attaches: give it the time to finish.
    thread::sleep(Duration::from_millis(1500));
    // One listen, timed to its line: only lines read after it count, so an old line of a port
    // the kernel hands out again cannot answer.
    let one_listen = |running: &mut RunningStep| -> anyhow::Result<f64> {
        let started = Instant::now();
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 7)?;
        let port = listener.local_addr.port();
        running
            .wait_for_line(
                Stream::Stdout,
                |line| tracer.is_own_event(line, Some(port)),
                Duration::from_secs(5),
            )
            .with_context(|| {
                format!("{}: the listen on port {port} did not show", tracer.name())
            })?;
        Ok(started.elapsed().as_secs_f64())
    };
    let mut lone = Vec::with_capacity(LONE_LISTENS);
    for _ in 0..LONE_LISTENS {
        thread::sleep(Duration::from_millis(10));
        lone.push(one_listen(&mut running)?);
    }
    let mut after_burst = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        thread::sleep(Duration::from_millis(50));
        for _ in 0..BURST_LISTENS {
            trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 7)?;
        }
        // The burst is printed: every one of its lines has been read.
        let mut shown = 0;
        while shown < BURST_LISTENS {
            match running.next_line(Duration::from_secs(5)) {
                Some((Stream::Stdout, line)) if tracer.is_own_event(&line, None) => shown += 1,
                Some(_) => {}
                None => bail!(
                    "{}: {shown} of a burst of {BURST_LISTENS} listens showed",
                    tracer.name()
                ),
            }
        }
        after_burst.push(one_listen(&mut running)?);
    }
    let _ = running.try_stop(Signal::SIGINT);
    Ok(Latency {
        lone_p50: percentile(&mut lone, 0.5),
        lone_p99: percentile(&mut lone, 0.99),
        lone_p999: percentile(&mut lone, 0.999),
        after_burst_p50: percentile(&mut after_burst, 0.5),
        after_burst_max: percentile(&mut after_burst, 1.0),
    })
}

/// How many calls of the unrelated system call a run makes.
const UNRELATED_CALLS: u32 = 2_000_000;

/// The medians of [`measure_unrelated_syscall`], in nanoseconds per call.
struct Unrelated {
    untraced: f64,
    tracepoint: f64,
    sockops: f64,
}

/// Nanoseconds per `getppid()` (a cheap system call that has nothing to do with `listen()`), with no
/// tracer, with lesson 14 attached on the tracepoint path, and on the sockops path, alternating.
fn measure_unrelated_syscall(step14: &Path, rounds: u32, work: &Path) -> anyhow::Result<Unrelated> {
    let getppid_loop = || {
        let started = Instant::now();
        for _ in 0..UNRELATED_CALLS {
            std::hint::black_box(nix::unistd::getppid());
        }
        started.elapsed().as_nanos() as f64 / f64::from(UNRELATED_CALLS)
    };
    let (mut untraced, mut tracepoint, mut sockops) = (Vec::new(), Vec::new(), Vec::new());
    let traced_on = |path: &str| -> anyhow::Result<f64> {
        let (out, err) = (work.join("unrelated.out"), work.join("unrelated.err"));
        let mut step = spawn_to_files(
            Command::new(step14).arg(format!("--attach={path}")),
            &out,
            &err,
        )?;
        wait_until_ready(Tracer::Step14Table, &out, &err)?;
        let nanos = getppid_loop();
        interrupt(&mut step, "step14-tool")?;
        Ok(nanos)
    };
    for round in 1..=rounds {
        untraced.push(getppid_loop());
        tracepoint.push(traced_on("tracepoint")?);
        sockops.push(traced_on("sockops")?);
        eprintln!(
            "    round {round}: getppid() {:.1} ns untraced, {:.1} ns with lesson 14 on the \
             tracepoint path, {:.1} ns on the sockops path",
            untraced.last().unwrap(),
            tracepoint.last().unwrap(),
            sockops.last().unwrap()
        );
    }
    Ok(Unrelated {
        untraced: median(&mut untraced),
        tracepoint: median(&mut tracepoint),
        sockops: median(&mut sockops),
    })
}

/// Start-up figures: (what, median seconds).
type Startup = Vec<(String, f64)>;

/// For each step: exec to its ready line. For step 14 and bpftrace: exec to the first listen() that
/// shows up in the output, which is what a user waits for.
fn measure_startup(step14: &Path, with_bpftrace: bool) -> anyhow::Result<Startup> {
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
    first_event("step14-tool", Command::new(step14).arg("--attach=auto"))?;
    if with_bpftrace {
        first_event(
            "bpftrace",
            Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]),
        )?;
    }
    Ok(figures)
}

/// Starts `command` and listens every 5 ms until a row with our pid appears in its output.
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
                    if support::table::pid_of_row(&line) == Some(own_pid.as_str()) =>
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

/// The generated part of the benchmarks pages: the machine, and each table of the run.
fn report(
    args: &BenchArgs,
    tracers: &[Tracer],
    runs: &[Vec<Run>],
    latencies: &[(Tracer, Latency)],
    unrelated: &Unrelated,
    startup: &Startup,
) -> anyhow::Result<String> {
    let uname = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
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
    // Each path's own floor: the probe alone on the path the tracer uses.
    let floor_of = |tracer: &Tracer| {
        let floor = if matches!(
            tracer,
            Tracer::Step14SockopsFilteredOut | Tracer::Step14SockopsJson
        ) {
            Tracer::Step14SockopsFilteredOut
        } else {
            Tracer::Step14FilteredOut
        };
        tracers
            .iter()
            .position(|tracer| *tracer == floor)
            .map(|index| medians[index])
    };

    let mut text = String::new();
    writeln!(
        text,
        "<!-- Written by `cargo xtask bench`; do not edit by hand. -->\n"
    )?;
    writeln!(
        text,
        "- machine: {cores} cores ({cpu}), kernel {}",
        uname.trim()
    )?;
    writeln!(text, "- date: {date}")?;
    writeln!(
        text,
        "- {} listens per run, {} runs of each configuration, alternating{}\n",
        args.listens,
        args.rounds,
        if tracers.contains(&Tracer::Bpftrace) {
            ""
        } else {
            " (bpftrace was not installed)"
        }
    )?;
    writeln!(text, "### The cost per listen()\n")?;
    writeln!(
        text,
        "| configuration | median per listen | ratio to no tracer | ratio to the probe alone | own events received (median) | lost (median) |"
    )?;
    writeln!(text, "|---|---|---|---|---|---|")?;
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
            tracer if tracer.filters_everything() => "none sent (filtered)".to_string(),
            _ => format!("{received:.0} of {}", args.listens),
        };
        let lost = if *tracer == Tracer::None {
            "n/a".to_string()
        } else {
            format!("{lost:.0}")
        };
        let to_floor = match (tracer, floor_of(tracer)) {
            (Tracer::None, _) | (_, None) => String::new(),
            (_, Some(floor)) => format!("{:.2}x", median_nanos / floor),
        };
        writeln!(
            text,
            "| {} | {:.2} us | {:.2}x | {to_floor} | {received} | {lost} |",
            tracer.name(),
            median_nanos / 1000.0,
            median_nanos / baseline,
        )?;
    }
    writeln!(
        text,
        "\n### From listen() to the printed line\n\n{LONE_LISTENS} lone listens, one every 10 ms; \
         then {BURSTS} bursts of {BURST_LISTENS} listens, each followed by one listen once the \
         burst is printed (\"after a burst\").\n"
    )?;
    writeln!(
        text,
        "| tracer | lone p50 | lone p99 | lone p99.9 | after a burst p50 | after a burst max |"
    )?;
    writeln!(text, "|---|---|---|---|---|---|")?;
    for (tracer, latency) in latencies {
        let ms = |seconds: f64| format!("{:.2} ms", seconds * 1000.0);
        writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} |",
            tracer
                .name()
                .trim_end_matches(", to a file")
                .trim_end_matches(" to a file"),
            ms(latency.lone_p50),
            ms(latency.lone_p99),
            ms(latency.lone_p999),
            ms(latency.after_burst_p50),
            ms(latency.after_burst_max),
        )?;
    }
    write_targets(
        &mut text, args, tracers, runs, &medians, latencies, floor_of,
    )?;
    writeln!(
        text,
        "\n### What the others pay ({UNRELATED_CALLS} calls of getppid())\n"
    )?;
    writeln!(text, "| configuration | median per getppid() | ratio |")?;
    writeln!(text, "|---|---|---|")?;
    let Unrelated {
        untraced,
        tracepoint,
        sockops,
    } = unrelated;
    writeln!(text, "| no tracer | {untraced:.1} ns | 1.00x |")?;
    writeln!(
        text,
        "| lesson 14 attached (tracepoint path) | {tracepoint:.1} ns | {:.2}x |",
        tracepoint / untraced
    )?;
    writeln!(
        text,
        "| lesson 14 attached (sockops path) | {sockops:.1} ns | {:.2}x |",
        sockops / untraced
    )?;
    writeln!(text, "\n### Start-up (median of 5)\n")?;
    writeln!(text, "| what | median |")?;
    writeln!(text, "|---|---|")?;
    for (what, seconds) in startup {
        writeln!(text, "| {what} | {:.0} ms |", seconds * 1000.0)?;
    }
    Ok(text)
}

/// Lesson 14's targets: with `--json`, at most this many times the probe alone on the same path.
const TARGET_OVER_FLOOR: f64 = 1.10;
/// A lone listen printed within this at p99, in seconds.
const TARGET_LONE_P99: f64 = 0.0005;
/// The first listen after a burst printed within this, every time, in seconds.
const TARGET_AFTER_BURST: f64 = 0.005;

/// Lesson 14 `--json` against its targets: its cost next to its own floor, every event received, a
/// lone listen's p99, and the first listen after a burst.
fn write_targets(
    text: &mut String,
    args: &BenchArgs,
    tracers: &[Tracer],
    runs: &[Vec<Run>],
    medians: &[f64],
    latencies: &[(Tracer, Latency)],
    floor_of: impl Fn(&Tracer) -> Option<f64>,
) -> anyhow::Result<()> {
    let tracer = Tracer::Step14Json;
    let Some(index) = tracers.iter().position(|each| *each == tracer) else {
        return Ok(());
    };
    let latency = latencies
        .iter()
        .find(|(each, _)| *each == tracer)
        .map(|(_, latency)| *latency)
        .context("lesson 14 --json has no latency figures")?;
    let ratio = medians[index] / floor_of(&tracer).context("no floor was measured")?;
    let (fewest, most_lost) = runs[index]
        .iter()
        .fold((u64::MAX, 0), |(fewest, lost), run| {
            (fewest.min(run.received), lost.max(run.lost))
        });
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    writeln!(
        text,
        "\n### Lesson 14 `--json` against its targets\n\n| target | measured | |\n|---|---|---|"
    )?;
    writeln!(
        text,
        "| at most {TARGET_OVER_FLOOR:.2}x the probe alone on the same path | {ratio:.2}x | {} |",
        verdict(ratio <= TARGET_OVER_FLOOR)
    )?;
    writeln!(
        text,
        "| every event received, none lost, in every run | at least {fewest} of {}, at most {most_lost} lost | {} |",
        args.listens,
        verdict(fewest == args.listens as u64 && most_lost == 0)
    )?;
    writeln!(
        text,
        "| a lone listen printed within {:.1} ms at p99 | {:.2} ms | {} |",
        TARGET_LONE_P99 * 1000.0,
        latency.lone_p99 * 1000.0,
        verdict(latency.lone_p99 <= TARGET_LONE_P99)
    )?;
    writeln!(
        text,
        "| the first listen after a burst printed within {:.0} ms, every time | {:.2} ms at most | {} |",
        TARGET_AFTER_BURST * 1000.0,
        latency.after_burst_max * 1000.0,
        verdict(latency.after_burst_max <= TARGET_AFTER_BURST)
    )?;
    Ok(())
}

/// bpftrace reads tracepoint formats from tracefs, which a fresh machine may not have mounted: the
/// same mount as lesson 14's.
fn ensure_tracefs() -> anyhow::Result<()> {
    common::tracefs::mount_tracefs().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_samples_at_their_rank() {
        let mut samples: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut samples, 0.5), 500.0);
        assert_eq!(percentile(&mut samples, 0.99), 990.0);
        assert_eq!(percentile(&mut samples, 0.999), 999.0);
        assert_eq!(percentile(&mut samples, 1.0), 1000.0);
        assert_eq!(percentile(&mut [7.0], 0.5), 7.0);
        assert_eq!(percentile(&mut [3.0, 1.0], 0.0), 1.0);
    }

    #[test]
    fn the_median_of_odd_and_even_samples() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
