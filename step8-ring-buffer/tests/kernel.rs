//! Lesson 8 against the real kernel: lesson 7's rows, with the exact values on every attach path,
//! now through one BPF ring buffer; a lone listen shown at once whatever the batch pause; and a
//! full ring that counts each event it has no room for.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    kernel::{self, require_root},
    running::{RunningStep, Stream},
    table::{self, Columns},
    trigger::{self, InNewNetns},
};

const STEP: &str = env!("CARGO_BIN_EXE_step8-ring-buffer");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
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

/// The events come through one BPF ring buffer, not a perf buffer, and the reader lets events
/// gather only in a burst: with `--batch-pause 1000`, a lone listen shows well before such a pause
/// could end.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_lone_listen_is_not_held_back_by_the_batch_pause() {
    require_root();
    let netns = InNewNetns::new();
    let mut step = RunningStep::start(STEP, &["--batch-pause", "1000"]);
    let maps = kernel::map_types_held(step.pid().as_raw() as u32).unwrap();
    assert!(
        maps.contains(&kernel::MAP_TYPE_RINGBUF)
            && !maps.contains(&kernel::MAP_TYPE_PERF_EVENT_ARRAY),
        "lesson 8 holds maps of types {maps:?}"
    );
    let columns = Columns::of(&mut step, &COLUMNS);
    let own = netns.inode.to_string();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100)); // no burst: the last listen is long past
        let addr = netns.run(|| {
            trigger::listen((LOCALHOST, 0).into(), 5)
                .unwrap()
                .local_addr
        });
        let port = addr.port().to_string();
        let shown = step.find_line(
            Stream::Stdout,
            |line| {
                let row = columns.values(line);
                row[2] == own && row[6] == port
            },
            Duration::from_millis(900),
        );
        assert!(
            shown.is_some(),
            "a lone listen on port {port} waited for a batch pause:\n{:#?}",
            step.output
        );
    }
    step.stop_cleanly(Signal::SIGINT);
}

/// A one-page ring whose reader is stopped overflows: each event it had no room for is counted,
/// none of ours is printed twice, and each of ours is either printed or among the lost (the
/// machine's other listens may add to both).
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_full_ring_counts_each_event_it_drops() {
    require_root();
    // Each listener stays open until the end, so that no port is used twice.
    const LISTENS: usize = 500;
    let netns = InNewNetns::new();
    let step = RunningStep::start(STEP, &["--buffer-pages", "1"]);
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

/// What the book shows lesson 8 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(8, STEP);
}
