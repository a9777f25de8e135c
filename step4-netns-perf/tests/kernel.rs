//! Lesson 4 against the real kernel: one table row per listen, with the exact process, thread name,
//! network namespace, backlog, address and port, on every attach path this kernel offers.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::signal::Signal;
use support::{
    kernel::{attach_paths_here, require_root},
    running::RunningStep,
    table,
    trigger::{self, Domain, InNewNetns},
};

const STEP: &str = env!("CARGO_BIN_EXE_step4-netns-perf");
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds (a thread id) changes nothing they check.
const COLUMNS: [&str; 6] = ["PID", "COMM", "NETNS", "BACKLOG", "ADDR", "PORT"];

/// The row lesson 4 prints for a listen of ours on `addr`, computed here independently of the
/// program: the values of `COLUMNS`.
fn row_for(netns: u64, backlog: u32, addr: SocketAddr) -> Vec<String> {
    vec![
        std::process::id().to_string(),
        InNewNetns::THREAD_NAME.to_string(),
        netns.to_string(),
        backlog.to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ]
}

/// Waits for the row of our listen on `addr` in the namespace `netns`: its values of `COLUMNS`.
fn row_with(step: &mut RunningStep, netns: u64, addr: SocketAddr) -> Vec<String> {
    table::row_with(step, &COLUMNS, netns, addr)
}

/// The exact row of each listen, on every path. The last one is made on a socket never bound:
/// every entry hook sees the call before the kernel picks its port, so the row says port 0 (and
/// the page explains why lesson 5 follows each call to its end).
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn rows_carry_the_exact_values_on_every_attach_path() {
    require_root();
    let netns = InNewNetns::new();
    for path in attach_paths_here() {
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
            assert_eq!(
                row_with(&mut step, netns.inode, addr),
                row_for(netns.inode, 31, addr),
                "path {path}"
            );
        }
        let picked = netns.run(|| {
            let unbound = trigger::listen_without_bind(Domain::IPV4, 17).unwrap();
            unbound.local_addr.port()
        });
        assert_ne!(picked, 0, "the kernel picked a port during listen()");
        assert_eq!(
            row_with(&mut step, netns.inode, (Ipv4Addr::UNSPECIFIED, 0).into()),
            row_for(netns.inode, 17, (Ipv4Addr::UNSPECIFIED, 0).into()),
            "path {path}: a socket never bound"
        );
        // A service manager stops with SIGTERM, as Ctrl-C (the table's test) stops with SIGINT.
        step.stop_cleanly(Signal::SIGTERM);
    }
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_table_has_one_header_and_the_summary_counts_the_rows() {
    require_root();
    let netns = InNewNetns::new();
    let mut step = RunningStep::start(STEP, &[]);
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
    assert!(
        finished
            .stderr()
            .contains(&format!("{rows} events received, 0 lost")),
        "the summary counts the {rows} rows:\n{}",
        finished.stderr()
    );
}

/// What the book shows lesson 4 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(4, STEP);
}
