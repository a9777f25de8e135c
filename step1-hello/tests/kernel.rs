//! Lesson 1 against the real kernel: start the step binary, make our own `listen()` calls, read what it
//! prints, stop it, and check through the bpf syscall that nothing stayed loaded.
//!
//! A hello carries nothing that says whose listen() it was, and other processes on a shared machine
//! may call `listen()` too: there each of our calls must be followed by a hello. In the VM runner's
//! guests, where nothing else runs, the count is exact.

use std::{net::Ipv4Addr, os::unix::process::CommandExt as _, process::Command, time::Duration};

use nix::sys::signal::Signal;
use support::{
    kernel::{
        alone_on_this_kernel, assert_programs_loaded, assert_programs_unloaded, attach_must_work,
        kprobes_expected, require_root,
    },
    running::{RunningStep, Stream},
    trigger,
};

const STEP: &str = env!("CARGO_BIN_EXE_step1-hello");

/// A hello: the lesson's words, and whatever exercise 1 adds after them.
fn is_hello(line: &str) -> bool {
    line.contains(" Hello World")
}

/// Makes `count` real `listen()` calls on ports of our own, one at a time, and after each waits for
/// a hello printed after that call. Where nothing else runs (the VM runner's guests), the count is
/// exact: no hello before our first call, and one per call, no more.
fn expect_hello_for_own_listens(step: &mut RunningStep, count: usize) {
    step.read_pending(Duration::from_millis(100)); // earlier hellos are not ours
    let alone = alone_on_this_kernel();
    let before = step.output.len();
    if alone {
        assert_eq!(hellos_since(step, before), 0, "a hello with no listen()");
    }
    let mut listeners = Vec::new();
    for _ in 0..count {
        listeners.push(trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 3).unwrap());
        step.expect_events(1, is_hello);
    }
    if alone {
        step.read_pending(Duration::from_millis(300)); // a second hello per call would be here
        assert_eq!(
            hellos_since(step, before),
            count,
            "one hello per listen():\n{:#?}",
            step.output
        );
    }
}

/// How many hellos were read after the first `since` lines of output.
fn hellos_since(step: &RunningStep, since: usize) -> usize {
    step.output[since..]
        .iter()
        .filter(|(stream, line)| *stream == Stream::Stdout && is_hello(line))
        .count()
}

/// Stops `step` with `signal` and checks the clean exit: status 0, the summary, nothing left loaded.
fn stop_cleanly(step: RunningStep, signal: Signal, summary: &str) {
    let program_ids = step.program_ids();
    let finished = step.stop(signal);
    assert!(
        finished.status.success(),
        "exit status {}:\n{}",
        finished.status,
        finished.stderr()
    );
    assert!(
        finished.stderr().contains(summary),
        "no `{summary}` in:\n{}",
        finished.stderr()
    );
    assert_programs_unloaded(&program_ids);
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_tracepoint_says_hello_for_every_listen() {
    require_root();
    let mut step = RunningStep::start(STEP, &["--attach", "tracepoint"]);
    assert_programs_loaded(&step.program_ids());
    expect_hello_for_own_listens(&mut step, 3);
    stop_cleanly(
        step,
        Signal::SIGINT,
        "stopped by Ctrl-C (SIGINT): detached from the tracepoint",
    );
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn auto_attaches_the_first_path_this_kernel_accepts() {
    require_root();
    let mut step = RunningStep::start(STEP, &[]);
    let attach_lines: Vec<_> = step
        .output
        .iter()
        .filter(|(stream, line)| *stream == Stream::Stderr && line.contains("inet"))
        .map(|(_, line)| line.clone())
        .collect();
    if kprobes_expected() {
        // The article's path, first in line, must win where the kernel has kprobes.
        assert!(
            attach_lines[0].starts_with("kprobe inet_listen(): attached"),
            "{attach_lines:#?}"
        );
    } else {
        assert!(
            attach_lines[0].starts_with(
                "kprobe inet_listen(): not available: kprobes are not available on this kernel (CONFIG_KPROBES is off)"
            ),
            "{attach_lines:#?}"
        );
        assert!(
            attach_lines[1].starts_with("fentry inet_listen(): "),
            "{attach_lines:#?}"
        );
        assert!(
            attach_lines
                .last()
                .unwrap()
                .contains(": attached (program listen_"),
            "{attach_lines:#?}"
        );
    }
    expect_hello_for_own_listens(&mut step, 2);
    stop_cleanly(
        step,
        Signal::SIGTERM,
        "stopped by SIGTERM: detached from the",
    );
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn an_explicit_kprobe_says_hello_or_names_the_missing_config() {
    require_root();
    if kprobes_expected() {
        let mut step = RunningStep::start(STEP, &["--attach", "kprobe"]);
        expect_hello_for_own_listens(&mut step, 2);
        stop_cleanly(
            step,
            Signal::SIGINT,
            "detached from the kprobe inet_listen()",
        );
        return;
    }
    let finished = RunningStep::spawn(STEP, &["--attach", "kprobe"]).wait(Duration::from_secs(10));
    let stderr = finished.stderr();
    assert_eq!(finished.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "cannot attach the kprobe inet_listen(): kprobes are not available on this kernel (CONFIG_KPROBES is off)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("`--attach auto` tries the other paths"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn an_explicit_fentry_says_hello_or_says_why_not() {
    require_root();
    let mut step = RunningStep::spawn(STEP, &["--attach", "fentry"]);
    let attach_line = step
        .wait_for_line(
            Stream::Stderr,
            |line| line.starts_with("fentry inet_listen(): "),
            Duration::from_secs(20),
        )
        .expect("a line about the fentry path");
    if attach_line.starts_with("fentry inet_listen(): attached") {
        step.wait_for_line(
            Stream::Stderr,
            |line| line.starts_with("Ready:"),
            Duration::from_secs(10),
        )
        .expect("ready after attaching");
        expect_hello_for_own_listens(&mut step, 2);
        stop_cleanly(
            step,
            Signal::SIGINT,
            "detached from the fentry inet_listen()",
        );
        return;
    }
    let finished = step.wait(Duration::from_secs(10));
    let stderr = finished.stderr();
    assert!(
        !attach_must_work("fentry"),
        "this kernel must accept fentry:\n{stderr}"
    );
    assert_eq!(finished.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot attach the fentry inet_listen(): "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn duration_ends_the_run_cleanly() {
    require_root();
    let step = RunningStep::start(STEP, &["--attach", "tracepoint", "--duration", "1"]);
    let program_ids = step.program_ids();
    let finished = step.wait(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr());
    assert!(
        finished.stderr().contains("stopped after 1s (--duration)"),
        "{}",
        finished.stderr()
    );
    assert_programs_unloaded(&program_ids);
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn without_privileges_it_says_what_is_needed() {
    require_root();
    // Run it as `nobody`, as a learner without sudo would: switching from root to another user
    // drops every capability (and std clears the supplementary groups).
    let finished = RunningStep::spawn_command(Command::new(STEP).uid(65534).gid(65534))
        .wait(Duration::from_secs(10));
    let stderr = finished.stderr();
    assert_eq!(finished.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("needs root, or the capabilities CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(stderr.contains("sudo"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let finished = RunningStep::spawn(STEP, &["--attach", "uprobe"]).wait(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(2));
    assert!(
        finished
            .stderr()
            .contains("invalid value 'uprobe' for '--attach <ATTACH>'"),
        "{}",
        finished.stderr()
    );
}

/// What the book shows lesson 1 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(1, STEP);
}
