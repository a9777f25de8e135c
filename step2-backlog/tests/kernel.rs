//! Lesson 2 against the real kernel: the backlog the kernel really uses, on every attach path this
//! kernel offers. Other processes on the machine call `listen()` too: our own calls are told apart by
//! their order, framed by two backlogs nobody else uses.

use std::{fs, net::Ipv4Addr};

use nix::sys::signal::Signal;
use support::{
    kernel::{attach_paths_here, require_root},
    running::RunningStep,
    trigger,
};

const STEP: &str = env!("CARGO_BIN_EXE_step2-backlog");

fn line_for(backlog: u32) -> String {
    format!(" Listening with up to {backlog} pending connections!")
}

/// `listen()` caps the backlog to this (per network namespace) before `inet_listen()` sees it.
fn somaxconn() -> u32 {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_backlog_is_exact_on_every_attach_path() {
    require_root();
    let cap = somaxconn();
    // (what we pass to listen(), what the kernel must report), between two unusual markers.
    let cases: [(i32, u32); 7] = [
        (37, 37),
        (1, 1),
        (7, 7),
        (511, 511),
        (cap as i32 + 1, cap),
        (-1, cap), // a negative backlog is capped too, as an unsigned number
        (38, 38),
    ];
    for path in attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let listeners: Vec<_> = cases
            .iter()
            .map(|&(backlog, _)| trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), backlog).unwrap())
            .collect();
        let expected: Vec<_> = cases
            .iter()
            .map(|&(_, reported)| line_for(reported))
            .collect();
        step.expect_sequence(&expected);
        drop(listeners);
        step.stop_cleanly(Signal::SIGINT);
    }
}

/// What the book shows lesson 2 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(2, STEP);
}
