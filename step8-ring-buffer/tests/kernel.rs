//! Lesson 8 against the real kernel: lesson 7's rows, with the exact values on every attach path,
//! now through one BPF ring buffer, not a perf buffer, and a summary that counts them.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::signal::Signal;
use support::{
    kernel::{self, require_root},
    running::RunningStep,
    table,
    trigger::{self, InNewNetns},
};

const STEP: &str = env!("CARGO_BIN_EXE_step8-ring-buffer");
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 8 prints for a listen of ours on `addr`, computed here independently of the
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
fn rows_carry_the_exact_values_through_the_ring() {
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

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_table_has_one_header_and_the_summary_counts_the_rows() {
    require_root();
    let netns = InNewNetns::new();
    let mut step = RunningStep::start(STEP, &[]);
    let maps = kernel::map_types_held(step.pid().as_raw() as u32).unwrap();
    assert!(
        maps.contains(&kernel::MAP_TYPE_RINGBUF)
            && !maps.contains(&kernel::MAP_TYPE_PERF_EVENT_ARRAY),
        "lesson 8 holds maps of types {maps:?}"
    );
    let addr = netns.run(|| {
        trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 5)
            .unwrap()
            .local_addr
    });
    row_with(&mut step, netns.inode, addr);
    let finished = step.stop_cleanly(Signal::SIGINT);
    let stdout = finished.stdout();
    let header = stdout.lines().next().unwrap_or_default();
    let names: Vec<&str> = header.split_whitespace().collect();
    let known: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| COLUMNS.contains(name))
        .collect();
    assert_eq!(
        known, COLUMNS,
        "the header `{header}` comes first, in this order"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("PID "))
            .count(),
        1
    );
    let rows = stdout.lines().count() - 1;
    // The summary says that the ring does not report what it dropped, in parentheses.
    let summary = format!("{rows} events received (");
    assert!(
        finished
            .stderr()
            .lines()
            .any(|line| line.starts_with(&summary)),
        "the summary counts the {rows} rows:\n{}",
        finished.stderr()
    );
}

/// What the book shows lesson 8 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(8, STEP);
}
