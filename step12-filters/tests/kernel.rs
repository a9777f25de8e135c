//! Lesson 12 against the real kernel: lesson 11's rows, with the exact values on every attach path,
//! and the filters `--pid`, `--netns` and `--port`, each against a run without it that sees what
//! the filter drops.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::signal::Signal;
use support::{
    kernel::require_root,
    running::RunningStep,
    table::{self, Columns},
    trigger::{self, InNewNetns, listen_in_another_process},
};

const STEP: &str = env!("CARGO_BIN_EXE_step12-filters");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 12 prints for a listen of ours on `addr`, computed here independently of the
/// program: the values of `COLUMNS`.
fn row_for(netns: u64, proto: &str, backlog: u32, addr: SocketAddr, result: &str) -> Vec<String> {
    vec![
        std::process::id().to_string(),
        InNewNetns::THREAD_NAME.to_string(),
        netns.to_string(),
        proto.to_string(),
        backlog.to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
        result.to_string(),
    ]
}

/// Waits for the row of our listen on `addr` in the namespace `netns`: its values of `COLUMNS`.
fn row_with(step: &mut RunningStep, netns: u64, addr: SocketAddr) -> Vec<String> {
    table::row_with(step, &COLUMNS, netns, addr)
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn rows_carry_the_exact_values_with_no_filter() {
    require_root();
    let netns = InNewNetns::new();
    {
        // The same programs as lesson 7's on every attach path, which its tests cover: the
        // default path here.
        let path = "auto";
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let addresses: [IpAddr; 3] = [
            Ipv4Addr::LOCALHOST.into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv4Addr::UNSPECIFIED.into(),
        ];
        // Port 0: the kernel picks a free port at bind(), before listen(): our own port.
        let (listened, _listeners) = netns.run(move || {
            let listeners: Vec<_> = addresses
                .iter()
                .map(|&ip| trigger::listen((ip, 0).into(), 31).unwrap())
                .collect();
            let listened: Vec<_> = listeners
                .iter()
                .map(|listener| listener.local_addr)
                .collect();
            (listened, listeners)
        });
        for addr in listened {
            let proto = if addr.is_ipv6() { "TCPv6" } else { "TCPv4" };
            assert_eq!(
                row_with(&mut step, netns.inode, addr),
                row_for(netns.inode, proto, 31, addr, "ok"),
                "path {path}"
            );
        }
        step.stop_cleanly(Signal::SIGINT);
    }
}

/// Starts lesson 12 on the tracepoint path (every kernel has it) with `args`.
fn start(args: &[&str]) -> RunningStep {
    let mut all = vec!["--attach", "tracepoint"];
    all.extend(args);
    RunningStep::start(STEP, &all)
}

/// Stops `step` and returns the values of `name` in each of its rows.
fn column_after_stop(mut step: RunningStep, name: &'static str) -> Vec<String> {
    let columns = Columns::of(&mut step, &COLUMNS);
    let at = columns.index(name);
    let finished = step.stop_cleanly(Signal::SIGINT);
    finished
        .stdout()
        .lines()
        .skip(1)
        .map(|line| columns.values(line)[at].clone())
        .collect()
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_pid_filter_drops_other_processes() {
    require_root();
    let pid = std::process::id().to_string();
    let mut filtered = start(&["--pid", &pid]);
    let mut unfiltered = start(&[]);
    let host = trigger::netns_inode().unwrap();
    let (child, foreign) = listen_in_another_process((LOCALHOST, 0).into(), 35);
    let own = trigger::listen((LOCALHOST, 0).into(), 35)
        .unwrap()
        .local_addr;
    // The control: without the filter, both listens are seen, each with its own process.
    assert_eq!(
        row_with(&mut unfiltered, host, foreign)[0],
        child.to_string()
    );
    assert_eq!(row_with(&mut unfiltered, host, own)[0], pid);
    // With it, ours arrives and the other process's never does.
    assert_eq!(row_with(&mut filtered, host, own)[0], pid);
    for seen in column_after_stop(filtered, "PID") {
        assert_eq!(
            seen, pid,
            "the filter let through a listen of process {seen}"
        );
    }
    unfiltered.stop_cleanly(Signal::SIGINT);
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_netns_filter_drops_other_namespaces() {
    require_root();
    let netns = InNewNetns::new();
    let own = netns.inode.to_string();
    let mut filtered = start(&["--netns", &own]);
    let mut unfiltered = start(&[]);
    let inside = netns.run(|| {
        trigger::listen((LOCALHOST, 0).into(), 37)
            .unwrap()
            .local_addr
    });
    let outside = trigger::listen((LOCALHOST, 0).into(), 37)
        .unwrap()
        .local_addr;
    let host = trigger::netns_inode().unwrap();
    // The control sees the listen outside the namespace.
    row_with(&mut unfiltered, host, outside);
    row_with(&mut filtered, netns.inode, inside);
    for seen in column_after_stop(filtered, "NETNS") {
        assert_eq!(
            seen, own,
            "the filter let through a listen in namespace {seen}"
        );
    }
    unfiltered.stop_cleanly(Signal::SIGINT);
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_port_filter_drops_other_ports() {
    require_root();
    let netns = InNewNetns::new();
    // A port that is free in our namespace: the kernel gives one, we let it go and filter on it.
    let port = netns.run(|| {
        trigger::listen((LOCALHOST, 0).into(), 1)
            .unwrap()
            .local_addr
            .port()
    });
    let mut filtered = start(&["--port", &port.to_string()]);
    let mut unfiltered = start(&["--netns", &netns.inode.to_string()]);
    let (other, _kept) = netns.run(move || {
        let other = trigger::listen((LOCALHOST, 0).into(), 39).unwrap();
        let kept = trigger::listen((LOCALHOST, port).into(), 39).unwrap();
        (other, kept)
    });
    // The control sees the listen on the other port; the filter keeps only ours.
    row_with(&mut unfiltered, netns.inode, other.local_addr);
    row_with(&mut filtered, netns.inode, (LOCALHOST, port).into());
    for seen in column_after_stop(filtered, "PORT") {
        assert_eq!(
            seen,
            port.to_string(),
            "the filter let through a listen on port {seen}"
        );
    }
    unfiltered.stop_cleanly(Signal::SIGINT);
}

/// What the book shows lesson 12 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(12, STEP);
}
