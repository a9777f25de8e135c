//! Lesson 5 against the real kernel: one table row per `listen()` call, with the exact process,
//! thread name, network namespace, protocol, backlog, address, the final port and the call's
//! result, on every attach path this kernel offers (the tracepoint path, which does not see the
//! end of a call, says so).
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

const STEP: &str = env!("CARGO_BIN_EXE_step5-ends");
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 5 prints for a listen of ours on `addr`, computed here independently of the
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

/// What each path says of a call that worked: the return side saw it end, the tracepoint did not.
fn ok_on(path: &str) -> &'static str {
    if path == "tracepoint" { "-" } else { "ok" }
}

/// Waits for the row of our listen on `addr` in the namespace `netns`: its values of `COLUMNS`.
fn row_with(step: &mut RunningStep, netns: u64, addr: SocketAddr) -> Vec<String> {
    table::row_with(step, &COLUMNS, netns, addr)
}

/// Every kind of `listen()`, made in a namespace of our own: each call is one row, with the port it
/// ended with and its result, on the kprobe and fentry paths. The tracepoint path sees a socket
/// start listening, inside the call: not the calls that start nothing, nor the port the kernel
/// picks after that, nor a result.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn every_call_is_one_row_with_its_final_port_and_result() {
    require_root();
    let netns = InNewNetns::new();
    for path in attach_paths_here() {
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
    let netns = trigger::netns_inode().unwrap();
    let tracepoint = path == "tracepoint";
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
        rows.push(row(proto, 60, listener.local_addr, ok_on(path)));
        sockets.push(listener.socket);
    }
    // Bound first, then listening: the same row on every path, the result aside.
    let bound = trigger::listen(localhost, 61).unwrap();
    rows.push(row("TCPv4", 61, bound.local_addr, ok_on(path)));
    // Never bound: the kernel picks the port inside listen(), after the state change.
    let unbound = trigger::listen_without_bind(Domain::IPV4, 63).unwrap();
    let picked = unbound.local_addr;
    let seen = if tracepoint {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        picked
    };
    rows.push(row("TCPv4", 63, seen, ok_on(path)));
    // A second listen() on a listening socket changes its backlog: a call, but no start.
    unbound.socket.listen(64).unwrap();
    if !tracepoint {
        rows.push(row("TCPv4", 64, picked, "ok"));
    }
    // A port in use: the start of listening is undone inside the call, which fails.
    let (first, second, error) = trigger::listen_on_a_port_in_use(localhost, 65).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EADDRINUSE));
    rows.push(row("TCPv4", 65, first.local_addr, ok_on(path)));
    let result = if tracepoint { "-" } else { "EADDRINUSE" };
    rows.push(row("TCPv4", 66, first.local_addr, result));
    // A connected socket cannot listen: EINVAL, before any start of listening.
    let (server, client, error) = trigger::listen_on_a_connected_socket(localhost, 67).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    rows.push(row("TCPv4", 67, server.local_addr, ok_on(path)));
    if !tracepoint {
        let client_addr = client.local_addr().unwrap().as_socket().unwrap();
        rows.push(row("TCPv4", 68, client_addr, "EINVAL"));
    }
    // MPTCP, where the kernel has it: one row (the tracepoint path sees its TCP subflow start).
    match trigger::listen_mptcp(localhost, 69) {
        Ok(mptcp) => {
            let proto = if tracepoint { "TCPv4" } else { "MPTCPv4" };
            rows.push(row(proto, 69, mptcp.local_addr, ok_on(path)));
            sockets.push(mptcp.socket);
        }
        Err(error) => eprintln!("no MPTCP listen to check here: {error:#}"),
    }
    sockets.extend([
        bound.socket,
        unbound.socket,
        first.socket,
        second,
        server.socket,
        client,
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

/// What the book shows lesson 5 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(5, STEP);
}
