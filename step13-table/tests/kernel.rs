//! Lesson 13 against the real kernel: each row with the exact values and the time of day its
//! listen happened, under one header, and a run that ends quietly when its output closes.
//!
//! Our own rows are told apart by their own ports: other programs on the machine listen too.

use std::{
    io::Read as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use jiff::{Timestamp, tz::TimeZone};
use nix::sys::signal::Signal;
use support::{
    kernel::require_root,
    running::{RunningStep, Stream},
    trigger,
};

const STEP: &str = env!("CARGO_BIN_EXE_step13-table");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How far a row's time may be from the moments around its listen: the program finds when the
/// machine booted by reading two clocks one after the other, which an emulated CPU does slowly.
const CLOCK_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_millis(20);

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_table_shows_the_same_values_under_one_header() {
    require_root();
    let mut step = RunningStep::start(STEP, &["--attach", "tracepoint"]);
    let before = Timestamp::now();
    let v4 = trigger::listen((LOCALHOST, 0).into(), 33)
        .unwrap()
        .local_addr;
    let v6 = trigger::listen(("::1".parse::<std::net::IpAddr>().unwrap(), 0).into(), 33)
        .unwrap()
        .local_addr;
    let after = Timestamp::now();
    // The times of day (this machine's zone, to the second) the rows may show.
    let zone = TimeZone::system();
    let time_of_day = |time: Timestamp| {
        zone.to_datetime(time)
            .time()
            .strftime("%H:%M:%S")
            .to_string()
    };
    let seconds = (before - CLOCK_SLACK).as_second()..=(after + CLOCK_SLACK).as_second();
    let times: Vec<String> = seconds
        .map(|second| time_of_day(Timestamp::from_second(second).unwrap()))
        .collect();
    for (addr, proto, ip) in [(v4, "TCPv4", "127.0.0.1"), (v6, "TCPv6", "::1")] {
        let port = addr.port().to_string();
        // The IPv4 and IPv6 listeners may get the same port number: a row is its port and address.
        let row = step
            .find_line(
                Stream::Stdout,
                |line| {
                    let columns: Vec<_> = line.split_whitespace().collect();
                    columns.get(6) == Some(&ip) && columns.get(7) == Some(&port.as_str())
                },
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("no row for {addr}: {:#?}", step.output));
        let columns: Vec<_> = row.split_whitespace().collect();
        let own_netns = trigger::netns_inode().unwrap().to_string();
        let pid = std::process::id().to_string();
        // To the second (exercise 13 adds the milliseconds).
        let to_the_second = columns[0].split('.').next().unwrap();
        assert!(
            times.iter().any(|time| time == to_the_second),
            "TIME {} is not one of {times:?}",
            columns[0]
        );
        assert_eq!(columns[1], pid);
        assert_eq!(columns[3], own_netns);
        assert_eq!(&columns[4..], [proto, "33", ip, port.as_str(), "ok"]);
        // The thread's name, cut to the kernel's 15 characters.
        let thread = std::thread::current()
            .name()
            .unwrap()
            .chars()
            .take(15)
            .collect::<String>();
        assert_eq!(columns[2], thread);
    }
    let finished = step.stop(Signal::SIGINT);
    let stdout = finished.stdout();
    // The header's words (their alignment is the unit tests'): every column has its name.
    let header = "TIME PID COMM NETNS PROTO BACKLOG ADDR PORT RESULT";
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>().join(" "),
        header
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("TIME "))
            .count(),
        1,
        "one header"
    );
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_closed_output_pipe_ends_the_run_quietly() {
    require_root();
    // `STEP | head -1`: head takes the table's header and exits; the next row meets a closed
    // pipe. The step's own exit status and messages are what we check, not head's.
    let mut step = Command::new(STEP)
        .args(["--attach", "tracepoint"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let head = Command::new("head")
        .arg("-1")
        .stdin(step.stdout.take().unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let _listener = trigger::listen((LOCALHOST, 0).into(), 53).unwrap();
        if let Some(status) = step.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = step.kill();
            panic!("the step did not end after its output closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    step.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(head.wait_with_output().unwrap().status.success());
    assert!(
        status.success(),
        "the step's exit status: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("stopped: the output was closed: detached from the"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Error"),
        "{stderr}"
    );
}

/// What the book shows lesson 13 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(13, STEP);
}
