//! Lesson 3 against the real kernel: the exact address and port, both as the kernel stores them and
//! as people read them, for IPv4 and IPv6, on every attach path this kernel offers. Our own events
//! are the ones on our own ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::signal::Signal;
use support::{
    kernel::{attach_paths_here, kernel_tests_can_run},
    running::RunningStep,
    trigger::{self, Domain},
};

const STEP: &str = env!("CARGO_BIN_EXE_step3-addr-port");

/// The line lesson 3 prints for a socket listening on `addr`, computed here independently of the
/// program: the kernel stores the port and the IPv4 address big-endian, and a load on this CPU
/// reads those bytes in its own order.
fn line_for(addr: SocketAddr, backlog: u32) -> String {
    let port = addr.port();
    let stored_port = u16::from_ne_bytes(port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => format!(
            " Listening on {ip}:{port} with up to {backlog} pending connections! \
             (as stored: rcv_saddr 0x{:x}, inet_sport {stored_port})",
            u32::from_ne_bytes(ip.octets())
        ),
        IpAddr::V6(ip) => format!(
            " Listening on [{ip}]:{port} with up to {backlog} pending connections! \
             (as stored: inet_sport {stored_port})"
        ),
    }
}

#[test]
fn addresses_and_ports_are_exact_on_every_attach_path() {
    if !kernel_tests_can_run("addresses_and_ports_are_exact_on_every_attach_path") {
        return;
    }
    let addresses: [IpAddr; 4] = [
        Ipv4Addr::LOCALHOST.into(),
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv6Addr::LOCALHOST.into(),
        Ipv6Addr::UNSPECIFIED.into(), // dual-stack: an IPv6 socket, reported as such
    ];
    for path in attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        // Port 0: the kernel picks a free port at bind(), before listen(): our own port.
        let listeners: Vec<_> = addresses
            .iter()
            .map(|&ip| trigger::listen((ip, 0).into(), 9).unwrap())
            .collect();
        let expected: Vec<_> = listeners
            .iter()
            .map(|listener| line_for(listener.local_addr, 9))
            .collect();
        step.expect_sequence(&expected);
        drop(listeners);
        step.stop_cleanly(Signal::SIGINT);
    }
}

/// A socket that listens without `bind()` gets its port during `listen()`, after the moment each of
/// our hooks sees it: the kprobe and fentry run at the entry of `inet_listen()`, and the kernel
/// enters `TCP_LISTEN` (the tracepoint) just before it picks the port. So every path reports port 0
/// and the wildcard address, while the socket itself ends up with a real port.
#[test]
fn an_unbound_socket_has_no_port_yet_when_we_see_it() {
    if !kernel_tests_can_run("an_unbound_socket_has_no_port_yet_when_we_see_it") {
        return;
    }
    for path in attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let unbound_v4 = trigger::listen_without_bind(Domain::IPV4, 23).unwrap();
        let unbound_v6 = trigger::listen_without_bind(Domain::IPV6, 23).unwrap();
        assert_ne!(
            unbound_v4.local_addr.port(),
            0,
            "the kernel picked a port during listen()"
        );
        assert_ne!(
            unbound_v6.local_addr.port(),
            0,
            "the kernel picked a port during listen()"
        );
        // A bound listener after them marks the end of our own events.
        let marker = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 23).unwrap();
        step.expect_sequence(&[
            line_for((Ipv4Addr::UNSPECIFIED, 0).into(), 23),
            line_for((Ipv6Addr::UNSPECIFIED, 0).into(), 23),
            line_for(marker.local_addr, 23),
        ]);
        step.stop_cleanly(Signal::SIGINT);
    }
}

/// An MPTCP listen changes the state of its own socket twice and of its first subflow (a TCP
/// socket) once; the kprobe sees `inet_listen()` for the subflow on older kernels only. Whatever
/// the path, it is never reported more than once, and other protocols never.
#[test]
fn an_mptcp_listen_is_reported_at_most_once() {
    if !kernel_tests_can_run("an_mptcp_listen_is_reported_at_most_once") {
        return;
    }
    for path in attach_paths_here() {
        let mut step = RunningStep::start(STEP, &["--attach", path]);
        let mptcp = match trigger::listen_mptcp((Ipv4Addr::LOCALHOST, 0).into(), 29) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("this kernel has no MPTCP ({error:#}): nothing to check");
                return;
            }
        };
        let marker = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 29).unwrap();
        step.expect_sequence(&[line_for(marker.local_addr, 29)]);
        let finished = step.stop_cleanly(Signal::SIGINT);
        let port = format!(":{} ", mptcp.local_addr.port());
        let rows = finished
            .stdout()
            .lines()
            .filter(|line| line.contains(&port))
            .count();
        assert!(
            rows <= 1,
            "{rows} lines for one MPTCP listen:\n{}",
            finished.stdout()
        );
        if path == "tracepoint" {
            assert_eq!(
                rows,
                1,
                "the subflow's state change:\n{}",
                finished.stdout()
            );
        }
    }
}

/// What the book shows lesson 3 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
fn the_books_transcript_is_recorded() {
    if !kernel_tests_can_run("the_books_transcript_is_recorded") {
        return;
    }
    support::transcripts::record_and_print(3, STEP);
}
