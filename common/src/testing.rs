//! What the kernel tests of every step share: start a step binary, wait until it is attached, read
//! its lines with time limits, stop it with a signal, and check that nothing stayed in the kernel.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::user::{KPROBE_PMU, READY_LINE};

/// How long a step may take from exec to its ready line (loading and attaching).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an event may take to reach the output.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the kernel tests can run here: they load eBPF programs, which needs root. Elsewhere they
/// skip, loudly; under CI (`CI` set) a skip would hide a broken suite, so it fails instead.
pub fn kernel_tests_can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let reason = format!("kernel test `{test}` needs root to load eBPF programs");
    if std::env::var_os("CI").is_some() {
        panic!("{reason}, and CI must not skip it: run the tests as root");
    }
    eprintln!("SKIPPED: {reason}; run `sudo -E cargo xtask test` to include it");
    false
}

/// Whether this kernel must accept the attach path `path` (`kprobe`, `fentry` or `tracepoint`).
/// `cargo xtask vm-test` knows which paths each guest kernel offers and lists them in
/// `LISTEN_TRACE_EXPECT_ATTACH`; elsewhere only the kernel can tell, and a clear refusal is fine.
pub fn attach_must_work(path: &str) -> bool {
    std::env::var("LISTEN_TRACE_EXPECT_ATTACH")
        .is_ok_and(|paths| paths.split(',').any(|p| p == path))
}

/// Whether this kernel has kprobes: from the kernel itself, or from the VM runner's list.
pub fn kprobes_expected() -> bool {
    std::path::Path::new(KPROBE_PMU).exists() || attach_must_work("kprobe")
}

/// The attach paths a lesson's kernel tests exercise here: the tracepoint everywhere, the kprobe
/// where the kernel has kprobes, fentry where the VM runner says the kernel accepts it (a host may
/// refuse fentry by policy; lesson 1's tests check that it says so clearly).
pub fn attach_paths_here() -> Vec<&'static str> {
    let mut paths = vec!["tracepoint"];
    if kprobes_expected() {
        paths.push("kprobe");
    }
    if attach_must_work("fentry") {
        paths.push("fentry");
    }
    eprintln!("attach paths tested on this kernel: {}", paths.join(", "));
    paths
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running step binary.
pub struct TracedStep {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line read so far, in arrival order.
    pub output: Vec<(Stream, String)>,
}

/// A step binary that has exited.
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

impl TracedStep {
    /// Starts `binary` with `args` and returns once it printed its ready line.
    /// Panics, showing what it printed, if it exits or hangs instead.
    pub fn start(binary: &str, args: &[&str]) -> Self {
        let mut step = Self::spawn(binary, args);
        if step
            .wait_for_line(Stream::Stderr, |line| line == READY_LINE, START_TIMEOUT)
            .is_none()
        {
            let finished = step.stop(Signal::SIGKILL);
            panic!(
                "{binary} {args:?} did not get ready:\n{}",
                finished.stderr()
            );
        }
        step
    }

    /// Starts `binary` without waiting for anything (for runs that are expected to fail).
    pub fn spawn(binary: &str, args: &[&str]) -> Self {
        Self::spawn_command(Command::new(binary).args(args))
    }

    pub fn spawn_command(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let (sender, lines) = mpsc::channel();
        for (stream, pipe) in [
            (
                Stream::Stdout,
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            ),
            (Stream::Stderr, Box::new(child.stderr.take().unwrap())),
        ] {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if sender.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            output: Vec::new(),
        }
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
            match self.lines.recv_timeout(left) {
                Ok((from, line)) => {
                    // The step's status lines, for the test's output (shown on failure, and with
                    // `--nocapture`, as `cargo xtask vm-test` runs the tests).
                    if from == Stream::Stderr {
                        eprintln!("  | {line}");
                    }
                    self.output.push((from, line.clone()));
                    if from == stream && wanted(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// A line of `stream` that satisfies `wanted`, among those already read or, failing that, the
    /// next ones: for events whose order is not guaranteed (lesson 4's rings are per CPU).
    pub fn find_line(
        &mut self,
        stream: Stream,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let seen = self
            .output
            .iter()
            .find(|(from, line)| *from == stream && wanted(line));
        match seen {
            Some((_, line)) => Some(line.clone()),
            None => self.wait_for_line(stream, wanted, timeout),
        }
    }

    /// Waits until `count` stdout lines satisfy `wanted`; returns them, or panics with the output.
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

    /// Waits until a stdout line ends with `last`, then checks that the stdout lines ending with
    /// each of `sequence` (which ends with `last`) arrived in that order. Other processes' events may
    /// come in between: the test's own are told apart by their order and unusual values.
    pub fn expect_sequence(&mut self, sequence: &[String]) {
        let last = sequence.last().expect("a sequence of at least one line");
        let seen = self.wait_for_line(
            Stream::Stdout,
            |line| line.ends_with(last.as_str()),
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
            "no line ending with {last:?} within {EVENT_TIMEOUT:?}; stdout:\n{stdout:#?}"
        );
        let mut wanted = sequence.iter().peekable();
        for line in &stdout {
            if wanted
                .peek()
                .is_some_and(|next| line.ends_with(next.as_str()))
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

    /// Stops the step with `signal` and checks the clean exit: status 0, the summary line, and the
    /// program gone from the kernel.
    pub fn stop_cleanly(self, signal: Signal) {
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
    }

    /// Sends `signal` and waits (at most 10 s) for the step to exit.
    pub fn stop(self, signal: Signal) -> Finished {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, signal);
        self.wait(Duration::from_secs(10))
    }

    /// Waits for the step to exit on its own (at most `timeout`), then collects the rest of its output.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the step did not exit within {timeout:?}; output:\n{:#?}",
                    self.output
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The pipes close at exit: drain what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.output.push(line);
        }
        Finished {
            status,
            output: std::mem::take(&mut self.output),
        }
    }
}

impl Drop for TracedStep {
    fn drop(&mut self) {
        // A failed assertion must not leave a tracer running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts, through the bpf syscall, that the programs with these ids are gone from the kernel. The
/// kernel frees a program shortly after its last fd closes, so this waits up to 5 s.
pub fn assert_programs_unloaded(program_ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let still_loaded: Vec<_> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|program| program.id())
            .filter(|id| program_ids.contains(id))
            .collect();
        if still_loaded.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {still_loaded:?} are still loaded after their step exited"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that programs with these ids are loaded right now (the tests' positive control).
pub fn assert_programs_loaded(program_ids: &[u32]) {
    let loaded: Vec<_> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|program| program.id())
        .collect();
    for id in program_ids {
        assert!(
            loaded.contains(id),
            "program id {id} is not loaded while its step runs"
        );
    }
}

/// A thread that lives in a network namespace of its own (with `lo` up) and runs the closures it is
/// given there, so that a test's listens can be told apart by their namespace.
pub struct InNewNetns {
    /// The namespace's inode, as `/proc/PID/ns/net` and lesson 4 show it.
    pub inode: u64,
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl InNewNetns {
    /// The thread's name, which is also its `comm` in the kernel's events.
    pub const THREAD_NAME: &str = "netns-listener";

    pub fn new() -> Self {
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (inode_sender, inode) = mpsc::channel();
        thread::Builder::new()
            .name(Self::THREAD_NAME.into())
            .spawn(move || {
                inode_sender
                    .send(crate::trigger::enter_new_netns().unwrap())
                    .unwrap();
                for job in queue {
                    job();
                }
            })
            .unwrap();
        Self {
            inode: inode.recv().unwrap(),
            jobs,
        }
    }

    /// Runs `job` in the namespace's thread and returns its result.
    pub fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (result_sender, result) = mpsc::channel();
        self.jobs
            .send(Box::new(move || result_sender.send(job()).unwrap()))
            .unwrap();
        result.recv().unwrap()
    }
}

impl Default for InNewNetns {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes another process call `listen()` on `addr` with `backlog`, and returns its pid and the
/// address it listened on, once it has exited.
pub fn listen_in_another_process(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> (u32, std::net::SocketAddr) {
    use nix::unistd::{ForkResult, fork, pipe, read, write};
    let (reader, writer) = pipe().unwrap();
    // SAFETY: the child only makes system calls (socket, bind, listen, getsockname, write, _exit),
    // which are safe after fork() in a multi-threaded process.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let port = crate::trigger::listen(addr, backlog)
                .map_or(0, |listener| listener.local_addr.port());
            let _ = write(&writer, &port.to_ne_bytes());
            // SAFETY: ends the child at once, without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let mut port = [0u8; 2];
            assert_eq!(
                read(&reader, &mut port).unwrap(),
                2,
                "the child could not listen"
            );
            nix::sys::wait::waitpid(child, None).unwrap();
            let port = u16::from_ne_bytes(port);
            assert_ne!(port, 0, "the child could not listen");
            (
                child.as_raw() as u32,
                std::net::SocketAddr::new(addr.ip(), port),
            )
        }
    }
}
