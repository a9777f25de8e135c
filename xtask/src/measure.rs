//! What `cargo xtask bench` measures: a loop of real `listen()` calls with a tracer running (a
//! lesson, bpftrace, or none), timed as a whole, and what the tracer received of it.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use support::trigger;
use wait_timeout::ChildExt as _;

/// What traces the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    None,
    /// Lesson 14 with every event filtered in the kernel: the probe alone, the floor.
    Step14FilteredOut,
    /// Lesson 4's table: a perf buffer whose reader is woken for every event.
    Step4Table,
    /// Lesson 5's table: the same perf buffer, with each call followed to its end.
    Step5Table,
    Step14Table,
    Step14Json,
    /// Lesson 14 `--json --batch-pause 0`: its reader lets no burst gather.
    Step14JsonNoPause,
    /// Lesson 14 on its sockops path, every event filtered in the kernel: that path's floor.
    Step14SockopsFilteredOut,
    /// Lesson 14 on its sockops path, `--json`.
    Step14SockopsJson,
    Bpftrace,
}

impl Tracer {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no tracer",
            Self::Step14FilteredOut => "step 14, all filtered in the kernel",
            Self::Step4Table => "step 4, table to a file",
            Self::Step5Table => "step 5, table to a file",
            Self::Step14Table => "step 14, table to a file",
            Self::Step14Json => "step 14 --json, to a file",
            Self::Step14JsonNoPause => "step 14 --json --batch-pause 0, to a file",
            Self::Step14SockopsFilteredOut => {
                "step 14 --attach sockops, all filtered in the kernel"
            }
            Self::Step14SockopsJson => "step 14 --attach sockops --json, to a file",
            Self::Bpftrace => "bpftrace, printf to a file",
        }
    }

    /// Whether the tracer prints JSON lines (else whitespace-separated words, the pid first).
    pub fn prints_json(self) -> bool {
        matches!(
            self,
            Self::Step14Json | Self::Step14JsonNoPause | Self::Step14SockopsJson
        )
    }

    /// Whether the tracer sends nothing (every event filtered in the kernel): the probe alone.
    pub fn filters_everything(self) -> bool {
        matches!(
            self,
            Self::Step14FilteredOut | Self::Step14SockopsFilteredOut
        )
    }

    /// The tracer's command: `binary` is the lesson's program, attached on
    /// `attach` (`--attach`; bpftrace uses the state tracepoint, the sockops rows their path).
    pub fn command(self, binary: &Path, attach: &str) -> Option<Command> {
        let lesson_on = |attach: &str, args: &[&str]| {
            let mut command = Command::new(binary);
            command.arg(format!("--attach={attach}")).args(args);
            Some(command)
        };
        let lesson = |args: &[&str]| lesson_on(attach, args);
        match self {
            Self::None => None,
            // PID 1 (init) does not listen here: the probe runs, and sends nothing.
            Self::Step14FilteredOut => lesson(&["--pid=1"]),
            Self::Step4Table | Self::Step5Table | Self::Step14Table => lesson(&[]),
            Self::Step14Json => lesson(&["--json"]),
            Self::Step14JsonNoPause => lesson(&["--json", "--batch-pause=0"]),
            Self::Step14SockopsFilteredOut => lesson_on("sockops", &["--pid=1"]),
            Self::Step14SockopsJson => lesson_on("sockops", &["--json"]),
            Self::Bpftrace => {
                let mut command = Command::new("bpftrace");
                command.args(["-e", BPFTRACE_PROGRAM]);
                Some(command)
            }
        }
    }

    /// Whether `line` is the event of a listen() of this process, on `port` if given.
    pub fn is_own_event(self, line: &str, port: Option<u16>) -> bool {
        let own_pid = std::process::id();
        if self.prints_json() {
            line.contains(&format!("\"pid\":{own_pid},"))
                && port.is_none_or(|port| line.contains(&format!("\"port\":{port},")))
        } else {
            let words: Vec<&str> = line.split_whitespace().collect();
            support::table::pid_of_row(line) == Some(own_pid.to_string().as_str())
                && port.is_none_or(|port| words.contains(&port.to_string().as_str()))
        }
    }
}

/// The bpftrace program that does what lesson 14 does on the same tracepoint: a line per listen.
pub const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state /args->newstate == 10/ \
     { printf(\"%d %s %d %d\\n\", pid, comm, args->sport, args->family); }";

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Nanoseconds per listen() of the loop.
    pub nanos_per_listen: f64,
    /// Our own listens that the tracer printed.
    pub received: u64,
    /// What the tracer says it lost.
    pub lost: u64,
}

/// Starts `tracer` (with `binary`, the lesson's program), waits until it is
/// ready, runs the loop, stops it and reads its counts.
pub fn run_once(
    tracer: Tracer,
    binary: &Path,
    attach: &str,
    listens: usize,
    work: &Path,
) -> anyhow::Result<Run> {
    let out_path = work.join("tracer.out");
    let err_path = work.join("tracer.err");
    let child = match tracer.command(binary, attach) {
        Some(mut command) => Some(spawn_to_files(&mut command, &out_path, &err_path)?),
        None => None,
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
        interrupt(&mut child, tracer.name())?;
        let out = BufReader::new(File::open(&out_path)?);
        received = 0;
        for line in out.lines() {
            let line = line?;
            received += u64::from(tracer.is_own_event(&line, None));
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
            lost += count.parse::<u64>().unwrap_or(0); // the lesson's summary
        }
    }
    Ok(Run {
        nanos_per_listen: elapsed.as_nanos() as f64 / listens as f64,
        received,
        lost,
    })
}

/// Stops a tracer as Ctrl-C would. bpftrace now and then misses a SIGINT that comes while it
/// prints (it was seen waiting in epoll minutes later): the signal is sent again every 2 s, and a
/// tracer still running after 10 s is killed, and said so.
pub fn interrupt(child: &mut Child, name: &str) -> anyhow::Result<()> {
    for _ in 0..5 {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
        if child.wait_timeout(Duration::from_secs(2))?.is_some() {
            return Ok(());
        }
    }
    eprintln!("    {name} did not stop within 10 s of SIGINT: killed");
    child.kill()?;
    child.wait()?;
    Ok(())
}

pub fn spawn_to_files(command: &mut Command, out: &Path, err: &Path) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(err)?)
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))
}

/// Step 4 says `Ready:` on stderr; bpftrace says `Attaching N probe` on stdout.
pub fn wait_until_ready(tracer: Tracer, out: &Path, err: &Path) -> anyhow::Result<()> {
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

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[middle]
    } else {
        (samples[middle - 1] + samples[middle]) / 2.0
    }
}
