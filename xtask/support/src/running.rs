//! Start a step binary, wait until it is attached, read its lines with time limits, and stop it with
//! a signal: the one way the kernel tests, `cargo xtask check`, `docs` and `bench` run a lesson.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use common::READY_LINE;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use wait_timeout::ChildExt as _;

#[cfg(feature = "aya")]
use crate::kernel::assert_programs_unloaded;

/// How long a step may take from exec to its ready line (loading and attaching).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an event may take to reach the output.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running program (a step binary, or a tracer to compare with), read line by line.
pub struct RunningStep {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line read so far, in arrival order.
    pub output: Vec<(Stream, String)>,
    /// Whether to echo the program's stderr lines (the tests do, so that a failure shows them).
    echo_stderr: bool,
}

/// A program that has exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub output: Vec<(Stream, String)>,
}

impl Finished {
    pub fn stderr(&self) -> String {
        lines_of(&self.output, Stream::Stderr)
    }
    pub fn stdout(&self) -> String {
        lines_of(&self.output, Stream::Stdout)
    }
}

fn lines_of(output: &[(Stream, String)], stream: Stream) -> String {
    output
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, line)| format!("{line}\n"))
        .collect()
}

impl RunningStep {
    /// Starts `binary` with `args` and returns once it printed its ready line.
    /// Panics, showing what it printed, if it exits or hangs instead (for tests).
    pub fn start(binary: &str, args: &[&str]) -> Self {
        Self::try_start(Command::new(binary).args(args), true)
            .unwrap_or_else(|error| panic!("{binary} {args:?} {error}"))
    }

    /// Starts `command` and waits for its ready line; the error says what it printed instead.
    /// `echo_stderr`: whether to echo the step's status lines as they come (the tests do).
    pub fn try_start(command: &mut Command, echo_stderr: bool) -> Result<Self, String> {
        let mut step = Self::try_spawn(command)?;
        step.echo_stderr = echo_stderr;
        if step
            .wait_for_line(Stream::Stderr, |line| line == READY_LINE, START_TIMEOUT)
            .is_none()
        {
            let finished = step.stop(Signal::SIGKILL);
            return Err(format!("did not get ready:\n{}", finished.stderr()));
        }
        Ok(step)
    }

    /// Starts `binary` without waiting for anything (for runs that are expected to fail).
    pub fn spawn(binary: &str, args: &[&str]) -> Self {
        Self::spawn_command(Command::new(binary).args(args))
    }

    /// Starts `command` without waiting; panics if it cannot start (for tests).
    pub fn spawn_command(command: &mut Command) -> Self {
        Self::try_spawn(command).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts `command` with its stdout and stderr read line by line.
    pub fn try_spawn(command: &mut Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot start {command:?}: {error}"))?;
        let (sender, lines) = mpsc::channel();
        let pipes: [(Stream, Box<dyn Read + Send>); 2] = [
            (Stream::Stdout, Box::new(child.stdout.take().unwrap())),
            (Stream::Stderr, Box::new(child.stderr.take().unwrap())),
        ];
        for (stream, pipe) in pipes {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if sender.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            lines,
            output: Vec::new(),
            echo_stderr: true,
        })
    }

    /// The program's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The ids of the attached programs, from the step's
    /// `attached (program NAME, id N; program NAME, id N)` line.
    pub fn program_ids(&self) -> Vec<u32> {
        let programs = self
            .output
            .iter()
            .find_map(|(_, line)| line.split_once(": attached (")?.1.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no `attached` line in {:#?}", self.output));
        programs
            .split("; ")
            .map(|program| {
                program
                    .rsplit_once(", id ")
                    .and_then(|(_, id)| id.parse().ok())
            })
            .collect::<Option<_>>()
            .unwrap_or_else(|| panic!("cannot read the program ids in {programs:?}"))
    }

    /// The next line of either stream, or `None` at the time limit or when both pipes closed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<(Stream, String)> {
        let (from, line) = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        // The step's status lines, for the test's output (shown on failure, and with
        // `--nocapture`, as `cargo xtask vm-test` runs the tests).
        if from == Stream::Stderr && self.echo_stderr {
            eprintln!("  | {line}");
        }
        self.output.push((from, line.clone()));
        Some((from, line))
    }

    /// Waits for the next line of `stream` that satisfies `wanted`, keeping everything read.
    pub fn wait_for_line(
        &mut self,
        stream: Stream,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.next_line(left)? {
                (from, line) if from == stream && wanted(&line) => return Some(line),
                _ => {}
            }
        }
    }

    /// A line of `stream` that satisfies `wanted`, among those already read or, failing that, the
    /// next ones: for events whose order is not guaranteed (lessons 4 to 7 read one ring per CPU).
    pub fn find_line(
        &mut self,
        stream: Stream,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        match self.saw(stream, &wanted) {
            Some(line) => Some(line),
            None => self.wait_for_line(stream, wanted, timeout),
        }
    }

    /// A line of `stream` already read that satisfies `wanted`.
    pub fn saw(&self, stream: Stream, wanted: impl Fn(&str) -> bool) -> Option<String> {
        self.output
            .iter()
            .find(|(from, line)| *from == stream && wanted(line))
            .map(|(_, line)| line.clone())
    }

    /// The stdout lines read so far.
    pub fn stdout(&self) -> String {
        lines_of(&self.output, Stream::Stdout)
    }

    /// Reads what has arrived by now (until no line came for `quiet`, or for ten times that at
    /// most), so that a test can tell the lines that come later from those before.
    pub fn read_pending(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet * 10;
        while Instant::now() < deadline && self.next_line(quiet).is_some() {}
    }

    /// Waits until `count` stdout lines satisfy `wanted` and returns them; panics with the output
    /// when they do not come within [`EVENT_TIMEOUT`]. Only lines not read yet count.
    pub fn expect_events(&mut self, count: usize, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut events = Vec::new();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while events.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for_line(Stream::Stdout, &wanted, left) {
                Some(line) => events.push(line),
                None => panic!(
                    "expected {count} matching events within {EVENT_TIMEOUT:?}, got {}; output:\n{:#?}",
                    events.len(),
                    self.output
                ),
            }
        }
        events
    }

    /// Waits until a stdout line contains `last`, then checks that the stdout lines containing
    /// each of `sequence` (which ends with `last`) arrived in that order. Containing, not ending
    /// with: an exercise may add to a lesson's line, and the lesson's facts must still be there. Other processes' events may
    /// come in between: the test's own are told apart by their order and unusual values.
    pub fn expect_sequence(&mut self, sequence: &[String]) {
        let last = sequence.last().expect("a sequence of at least one line");
        let seen = self.wait_for_line(
            Stream::Stdout,
            |line| line.contains(last.as_str()),
            EVENT_TIMEOUT,
        );
        let stdout: Vec<_> = self
            .output
            .iter()
            .filter(|(stream, _)| *stream == Stream::Stdout)
            .map(|(_, line)| line)
            .collect();
        assert!(
            seen.is_some(),
            "no line containing {last:?} within {EVENT_TIMEOUT:?}; stdout:\n{stdout:#?}"
        );
        let mut wanted = sequence.iter().peekable();
        for line in &stdout {
            if wanted
                .peek()
                .is_some_and(|next| line.contains(next.as_str()))
            {
                wanted.next();
            }
        }
        let missing: Vec<_> = wanted.collect();
        assert!(
            missing.is_empty(),
            "missing, in this order: {missing:#?}\nstdout:\n{stdout:#?}"
        );
    }

    #[cfg(feature = "aya")]
    /// Stops the step with `signal` and checks the clean exit: status 0, the summary line, and the
    /// program gone from the kernel.
    pub fn stop_cleanly(self, signal: Signal) -> Finished {
        let program_ids = self.program_ids();
        let finished = self.stop(signal);
        let stderr = finished.stderr();
        assert!(
            finished.status.success(),
            "exit status {}:\n{stderr}",
            finished.status
        );
        assert!(
            stderr.contains(": detached from the "),
            "no summary in:\n{stderr}"
        );
        assert_programs_unloaded(&program_ids);
        finished
    }

    /// Sends `signal` and waits (at most 10 s) for the step to exit; panics if it does not (for
    /// tests).
    pub fn stop(self, signal: Signal) -> Finished {
        self.try_stop(signal)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Sends `signal` and waits (at most 10 s; then it is killed) for the step to exit.
    pub fn try_stop(self, signal: Signal) -> Result<Finished, String> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, signal);
        self.try_wait(Duration::from_secs(10))
    }

    /// Waits for the step to exit on its own (at most `timeout`), then collects the rest of its
    /// output. Panics if it does not exit (for tests); see [`Self::try_wait`].
    pub fn wait(self, timeout: Duration) -> Finished {
        self.try_wait(timeout)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits for the step to exit on its own (at most `timeout`; then it is killed), and collects
    /// the rest of its output.
    pub fn try_wait(mut self, timeout: Duration) -> Result<Finished, String> {
        let status = match self
            .child
            .wait_timeout(timeout)
            .map_err(|error| error.to_string())?
        {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                return Err(format!(
                    "the program did not exit within {timeout:?}; output:\n{:#?}",
                    self.output
                ));
            }
        };
        // The pipes close at exit: drain what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.output.push(line);
        }
        Ok(Finished {
            status,
            output: std::mem::take(&mut self.output),
        })
    }
}

impl Drop for RunningStep {
    fn drop(&mut self) {
        // A failed assertion must not leave a tracer running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
