//! Lesson 3 against the real kernel: the exact address and port, both as the kernel stores them and
//! as people read them, for IPv4 and IPv6, on every attach path this kernel offers. Our own events
//! are the ones on our own ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::signal::Signal;
use support::{
    kernel::{attach_paths_here, require_root},
    running::RunningStep,
    trigger::{self, Domain},
};

const STEP: &str = env!("CARGO_BIN_EXE_step3-addr-port");

/// The line lesson 3 prints for a socket listening on `addr`, computed here independently of the
/// program: the kernel stores the port and the IPv4 address big-endian, and a load on this CPU
/// reads those bytes in its own order. Without the closing parenthesis, after which exercise 3
/// adds a field.
fn line_for(addr: SocketAddr, backlog: u32) -> String {
    let port = addr.port();
    let stored_port = u16::from_ne_bytes(port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => format!(
            " Listening on {ip}:{port} with up to {backlog} pending connections! \
             (as stored: rcv_saddr 0x{:x}, inet_sport {stored_port}",
            u32::from_ne_bytes(ip.octets())
        ),
        IpAddr::V6(ip) => format!(
            " Listening on [{ip}]:{port} with up to {backlog} pending connections! \
             (as stored: inet_sport {stored_port}"
        ),
    }
}

/// On every path, one run of the program sees three kinds of listen:
///
/// - bound sockets, IPv4 and IPv6: the exact address and port;
/// - sockets that listen without `bind()`: they get their port during `listen()`, after the moment
///   each of our hooks sees them (the kprobe and fentry run at the entry of `inet_listen()`, and the
///   kernel enters `TCP_LISTEN`, the tracepoint, just before it picks the port), so every path
///   reports port 0 and the wildcard address, while the socket itself ends up with a real port;
/// - an MPTCP listen, which changes the state of its own socket twice and of its first subflow (a
///   TCP socket) once: the tracepoint reports the subflow, once. The kprobe and fentry see
///   `inet_listen()` for the subflow only where `mptcp_listen()` still calls it (before Linux 6.6),
///   and never the MPTCP socket itself, whose `listen()` goes through `mptcp_listen()`.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn addresses_and_ports_are_exact_on_every_attach_path() {
    require_root();
    let addresses: [IpAddr; 4] = [
        Ipv4Addr::LOCALHOST.into(),
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv6Addr::LOCALHOST.into(),
        Ipv6Addr::UNSPECIFIED.into(), // dual-stack: an IPv6 socket, reported as such
    ];
    let has_mptcp = match trigger::listen_mptcp((Ipv4Addr::LOCALHOST, 0).into(), 29) {
        Ok(_) => true,
        Err(error) => {
            eprintln!("NOT RUN: this kernel has no MPTCP ({error:#}): no MPTCP listen to check");
            false
        }
    };
    let subflow_calls_inet_listen = support::kernel::release_below(6, 6);
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

        let mptcp =
            has_mptcp.then(|| trigger::listen_mptcp((Ipv4Addr::LOCALHOST, 0).into(), 29).unwrap());
        let marker = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 29).unwrap();
        step.expect_sequence(&[line_for(marker.local_addr, 29)]);
        let finished = step.stop_cleanly(Signal::SIGINT);
        if let Some(mptcp) = mptcp {
            let rows = finished
                .stdout()
                .lines()
                .filter(|line| line.contains(&line_for(mptcp.local_addr, 29)))
                .count();
            let expected = match path {
                "tracepoint" => 1,
                _ if subflow_calls_inet_listen => 1,
                _ => 0,
            };
            assert_eq!(
                rows,
                expected,
                "{path}: lines for one MPTCP listen on {}:\n{}",
                mptcp.local_addr,
                finished.stdout()
            );
        }
    }
}

/// What the book shows lesson 3 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(3, STEP);
}
