//! Lesson 6 against the real kernel: one table row per `listen()` call, with the exact process,
//! thread name, network namespace, protocol, backlog, address, the final port and the call's
//! result, on every attach path this kernel offers, the tracepoint path now included.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    kernel::{attach_paths_here, require_root},
    running::{RunningStep, Stream},
    table::{self, Columns},
    trigger::{self, Domain, InNewNetns, socket2::Socket},
};

const STEP: &str = env!("CARGO_BIN_EXE_step6-syscalls");
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 6 prints for a listen of ours on `addr`, computed here independently of the
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

/// Every kind of `listen()`, made in a namespace of our own: each call is one row, with the port it
/// ended with and its result, on every path: the tracepoint path pairs the system call's entry and
/// exit.
/// And the tracepoint path, which every system call of the machine pays for, is the one that says so.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn every_call_is_one_row_with_its_final_port_and_result() {
    require_root();
    let netns = InNewNetns::new();
    for path in attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let (expected, _sockets) = netns.run(every_kind_of_listen);
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
        // While the tracepoint path is attached, every system call of the machine pays for it:
        // the program says so, and the other paths do not.
        assert_eq!(
            finished.stderr().contains("slows down every system call"),
            path == "tracepoint",
            "on the {path} path:\n{}",
            finished.stderr()
        );
    }
}

/// The calls, made in the calling thread's namespace: the rows `path` must print for them, and the
/// sockets, kept open until the rows are read.
fn every_kind_of_listen() -> (Vec<Vec<String>>, Vec<Socket>) {
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
    // IPv6 and the wildcard address, bound first: the address as people read it.
    for ip in [
        IpAddr::from(Ipv6Addr::LOCALHOST),
        Ipv4Addr::UNSPECIFIED.into(),
    ] {
        let listener = trigger::listen((ip, 0).into(), 60).unwrap();
        let proto = if ip.is_ipv6() { "TCPv6" } else { "TCPv4" };
        rows.push(row(proto, 60, listener.local_addr, "ok"));
        sockets.push(listener.socket);
    }
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
    rows.push(row("TCPv4", 64, unbound.local_addr, "ok"));
    let (first, second, error) = trigger::listen_on_a_port_in_use(localhost, 65).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EADDRINUSE));
    rows.push(row("TCPv4", 65, first.local_addr, "ok"));
    rows.push(row("TCPv4", 66, first.local_addr, "EADDRINUSE"));
    let (server, client, error) = trigger::listen_on_a_connected_socket(localhost, 67).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    rows.push(row("TCPv4", 67, server.local_addr, "ok"));
    let client_addr = client.local_addr().unwrap().as_socket().unwrap();
    rows.push(row("TCPv4", 68, client_addr, "EINVAL"));
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

/// What the book shows lesson 6 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(6, STEP);
}
