//! Lesson 10 against the real kernel: lesson 9's rows, with the exact values, now read by a reader
//! that the kernel side wakes only when it waits; and a lone listen shown at once whatever the
//! batch pause. (Lessons 8 and 9 test the table, its summary and a full ring, which lesson 10
//! leaves as they were.)
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
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

const STEP: &str = env!("CARGO_BIN_EXE_step10-wake-ups");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 10 prints for a listen of ours on `addr`, computed here independently of the
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

/// The reader lets events gather only in a burst: with `--batch-pause 1000`, a lone listen shows well before such a pause
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
        "lesson 10 holds maps of types {maps:?}"
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

/// What the book shows lesson 10 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(10, STEP);
}
