//! Lesson 9 against the real kernel: lesson 8's table, whose summary now says how many events the
//! ring had no room for; and a full ring that counts each of them. (Lesson 8's tests cover the
//! rows' exact values, which lesson 9 leaves as they were.)
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    kernel::{self, require_root},
    running::RunningStep,
    table,
    trigger::{self, InNewNetns},
};

const STEP: &str = env!("CARGO_BIN_EXE_step9-full-ring");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// Waits for the row of our listen on `addr` in the namespace `netns`: its values of `COLUMNS`.
fn row_with(step: &mut RunningStep, netns: u64, addr: SocketAddr) -> Vec<String> {
    table::row_with(step, &COLUMNS, netns, addr)
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
    // What an exercise adds to the summary comes after a `; `.
    let summary = format!("{rows} events received, 0 lost");
    assert!(
        finished
            .stderr()
            .lines()
            .any(|line| line == summary || line.starts_with(&format!("{summary}; "))),
        "the summary counts the {rows} rows:\n{}",
        finished.stderr()
    );
}

/// The events come through one BPF ring buffer, not a perf buffer. A one-page ring whose reader is
/// stopped overflows: each event it had no room for is counted, none of ours is printed twice, and
/// each of ours is either printed or among the lost (the machine's other listens may add to both).
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_full_ring_counts_each_event_it_drops() {
    require_root();
    // Each listener stays open until the end, so that no port is used twice.
    const LISTENS: usize = 500;
    let netns = InNewNetns::new();
    let step = RunningStep::start(STEP, &["--buffer-pages", "1"]);
    let maps = kernel::map_types_held(step.pid().as_raw() as u32).unwrap();
    assert!(
        maps.contains(&kernel::MAP_TYPE_RINGBUF)
            && !maps.contains(&kernel::MAP_TYPE_PERF_EVENT_ARRAY),
        "lesson 9 holds maps of types {maps:?}"
    );
    nix::sys::signal::kill(step.pid(), Signal::SIGSTOP).unwrap();
    let listeners: Vec<_> = netns.run(|| {
        (0..LISTENS)
            .map(|_| trigger::listen((LOCALHOST, 0).into(), 47).unwrap())
            .collect()
    });
    let ports: HashSet<String> = listeners
        .iter()
        .map(|listener| listener.local_addr.port().to_string())
        .collect();
    nix::sys::signal::kill(step.pid(), Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(1)); // let the reader drain what the ring kept
    let finished = step.stop_cleanly(Signal::SIGINT);
    let stdout = finished.stdout();
    let header = stdout.lines().next().unwrap_or_default();
    let index = |name: &str| header.split_whitespace().position(|column| column == name);
    let (netns_at, port_at) = (index("NETNS").unwrap(), index("PORT").unwrap());
    let own = netns.inode.to_string();
    let mut ours = HashSet::new();
    for line in stdout.lines().skip(1) {
        let row: Vec<&str> = line.split_whitespace().collect();
        if row[netns_at] == own {
            assert!(ports.contains(row[port_at]), "not one of ours: {line}");
            assert!(
                ours.insert(row[port_at].to_string()),
                "printed twice: {line}"
            );
        }
    }
    let stderr = finished.stderr();
    let (received, lost) = stderr
        .lines()
        .find_map(|line| {
            let (received, rest) = line.split_once(" events received, ")?;
            let lost = rest.split(' ').next()?;
            Some((received.parse::<u64>().ok()?, lost.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    assert_eq!(
        received,
        stdout.lines().count() as u64 - 1,
        "every event received is one row"
    );
    assert!(
        lost > 0,
        "a one-page ring must overflow while its reader is stopped:\n{stderr}"
    );
    assert!(
        ours.len() < LISTENS,
        "a one-page ring kept all {LISTENS} listens"
    );
    assert!(
        ours.len() as u64 + lost >= LISTENS as u64,
        "{} of ours printed and {lost} lost: some of the {LISTENS} are missing",
        ours.len()
    );
    assert!(
        stderr.contains("a larger --buffer-pages keeps more"),
        "{stderr}"
    );
}

/// What the book shows lesson 9 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(9, STEP);
}
