//! Lesson 11 against the real kernel: lesson 10's rows, with the exact values on every attach path,
//! every kind of `listen()` one row with its final port and result, and a summary that accounts
//! for every call: with nothing lost, it says so and nothing more.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    kernel::{require_root, tool_attach_paths_here},
    running::{RunningStep, Stream},
    table::Columns,
    trigger::{self, Domain, InNewNetns, socket2::Socket},
};

const STEP: &str = env!("CARGO_BIN_EXE_step11-counts");
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 11 prints for a listen of ours on `addr`, computed here independently of the
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

/// Every kind of `listen()`, made in a namespace of our own: each call is one row, with the port it
/// ended with and its result, on every path (the sockops path has no row for a call that starts no
/// listener: a second `listen()`, one that fails with `EINVAL`), and the summary counts nothing
/// else.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn every_call_is_one_row_with_its_final_port_and_result() {
    require_root();
    let netns = InNewNetns::new();
    for path in tool_attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let (expected, _sockets) = netns.run(move || every_kind_of_listen(path));
        let (last_backlog, last_port) =
            (&expected.last().unwrap()[4], &expected.last().unwrap()[6]);
        let columns = Columns::of(&mut step, &COLUMNS);
        let values = |line: &str| columns.values(line);
        let own = netns.inode.to_string();
        step.find_line(
            Stream::Stdout,
            |line| {
                let row = values(line);
                row[2] == own && &row[4] == last_backlog && &row[6] == last_port
            },
            Duration::from_secs(10),
        );
        let finished = step.stop_cleanly(Signal::SIGINT);
        // New: every call is a row or is counted; nothing was lost or unseen here, so the summary
        // is the count of the rows (the machine's other listens included) and nothing more.
        let summary = format!(
            "{} events received, 0 lost",
            finished.stdout().lines().count() - 1
        );
        // What an exercise adds to the summary comes after a `; `: anything but a count of calls
        // that did not become a row.
        let exact = |line: &str| {
            line == summary
                || (line.starts_with(&format!("{summary}; ")) && !line.contains(" calls whose "))
        };
        assert!(
            finished.stderr().lines().any(exact),
            "on the {path} path, the summary is not `{summary}`:\n{}",
            finished.stderr()
        );
        let mut rows: Vec<Vec<String>> = finished
            .stdout()
            .lines()
            .map(values)
            .filter(|row| row[2] == own)
            .collect();
        rows.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(rows, expected, "on the {path} path");
    }
}

/// The calls, made in the calling thread's namespace: the rows `path` must print for them, and the
/// sockets, kept open until the rows are read.
fn every_kind_of_listen(path: &str) -> (Vec<Vec<String>>, Vec<Socket>) {
    // The sockops path hears only of a start of listening, and of a start that fails.
    let starts_only = path == "sockops";
    let netns = trigger::netns_inode().unwrap();
    let row = |proto: &str, backlog: i32, addr: SocketAddr, result: &str| {
        let mut row = row_for(netns, proto, backlog as u32, addr, result);
        row[1] = std::thread::current()
            .name()
            .unwrap()
            .chars()
            .take(15)
            .collect();
        row
    };
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (mut rows, mut sockets) = (Vec::new(), Vec::new());
    let bound = trigger::listen(localhost, 61).unwrap();
    rows.push(row("TCPv4", 61, bound.local_addr, "ok"));
    // A backlog above `net.core.somaxconn`: listen() caps it, and the row shows the capped one.
    let somaxconn: i32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let capped = trigger::listen(localhost, somaxconn + 1).unwrap();
    rows.push(row("TCPv4", somaxconn, capped.local_addr, "ok"));
    // Never bound: the system call's exit sees the port the kernel picked.
    let unbound = trigger::listen_without_bind(Domain::IPV4, 63).unwrap();
    rows.push(row("TCPv4", 63, unbound.local_addr, "ok"));
    // A second listen() on a listening socket changes its backlog: a system call like any other.
    unbound.socket.listen(64).unwrap();
    if !starts_only {
        rows.push(row("TCPv4", 64, unbound.local_addr, "ok"));
    }
    let (first, second, error) = trigger::listen_on_a_port_in_use(localhost, 65).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EADDRINUSE));
    rows.push(row("TCPv4", 65, first.local_addr, "ok"));
    rows.push(row("TCPv4", 66, first.local_addr, "EADDRINUSE"));
    let (server, client, error) = trigger::listen_on_a_connected_socket(localhost, 67).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    rows.push(row("TCPv4", 67, server.local_addr, "ok"));
    let client_addr = client.local_addr().unwrap().as_socket().unwrap();
    if !starts_only {
        rows.push(row("TCPv4", 68, client_addr, "EINVAL"));
    }
    // MPTCP, where the kernel has it: one row, the MPTCP socket's.
    match trigger::listen_mptcp(localhost, 69) {
        Ok(mptcp) => {
            rows.push(row("MPTCPv4", 69, mptcp.local_addr, "ok"));
            sockets.push(mptcp.socket);
        }
        Err(error) => eprintln!("no MPTCP listen to check here: {error:#}"),
    }
    // Not a TCP socket: a UNIX socket's listen() is a system call too, but gives no row.
    let path = std::env::temp_dir().join(format!("listen-trace-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let unix = Socket::new(Domain::UNIX, trigger::socket2::Type::STREAM, None).unwrap();
    unix.bind(&trigger::socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    unix.listen(70).unwrap();
    std::fs::remove_file(&path).unwrap();
    sockets.extend([
        bound.socket,
        capped.socket,
        unbound.socket,
        first.socket,
        second,
        server.socket,
        client,
        unix,
    ]);
    (rows, sockets)
}

/// What the book shows lesson 11 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(11, STEP);
}
