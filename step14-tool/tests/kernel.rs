//! Lesson 14 against the real kernel: JSON events with the exact values, the thread, the attach path
//! and the time they were made, on every attach path; every kind of listen reported once; a storm
//! of listens counted exactly (received + lost); the ring buffer's reader, which lets events gather
//! only in a burst; and every way the tool can end.
//!
//! Our own events are told apart by their own ports, and by a network namespace of their own.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::IPPROTO_MPTCP;
use jiff::Timestamp;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{
    kernel::{require_root, tool_attach_paths_here},
    running::{RunningStep, Stream},
    trigger::{
        self, Domain, InNewNetns,
        socket2::{Protocol, Socket, Type},
    },
};

const STEP: &str = env!("CARGO_BIN_EXE_step14-tool");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How far an event's time may be from the moments around its listen: the tool finds when the
/// machine booted by reading two clocks one after the other, which an emulated CPU does slowly.
const CLOCK_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_millis(20);

/// Checks that `time` is between `before` and `after`, give or take `CLOCK_SLACK`.
fn assert_between(time: Timestamp, before: Timestamp, after: Timestamp, what: &str) {
    assert!(
        before - CLOCK_SLACK <= time && time <= after + CLOCK_SLACK,
        "{what}: made at {time}, but the listen was between {before} and {after}"
    );
}

/// Starts lesson 14 with `args`, printing JSON lines.
fn start_json(path: &str, args: &[&str]) -> RunningStep {
    let mut all = vec!["--json", "--attach", path];
    all.extend(args);
    RunningStep::start(STEP, &all)
}

/// Waits for the JSON event of our listen on `addr`.
fn json_event_for(step: &mut RunningStep, addr: SocketAddr) -> Value {
    let (ip, port) = (addr.ip().to_string(), addr.port());
    let line = step
        .find_line(
            Stream::Stdout,
            |line| {
                let event: Value = serde_json::from_str(line).expect("every stdout line is JSON");
                event["port"] == port && event["addr"] == ip.as_str()
            },
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no event for {addr}; output: {:#?}", step.output));
    serde_json::from_str(&line).unwrap()
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn events_carry_the_exact_values_on_every_attach_path() {
    require_root();
    let netns = InNewNetns::new();
    for path in tool_attach_paths_here() {
        let mut step = start_json(path, &[]);
        let before = Timestamp::now();
        let (addr, tid, _listener) = netns.run(|| {
            let listener = trigger::listen((LOCALHOST, 0).into(), 31).unwrap();
            (
                listener.local_addr,
                nix::unistd::gettid().as_raw(),
                listener,
            )
        });
        let after = Timestamp::now();
        let mut event = json_event_for(&mut step, addr);
        let time = event
            .as_object_mut()
            .unwrap()
            .remove("time")
            .expect("a time");
        let time: Timestamp = time.as_str().expect("RFC 3339").parse().unwrap();
        assert_between(time, before, after, path);
        assert_eq!(
            event,
            json!({
                "pid": std::process::id(),
                "tid": tid,
                "comm": InNewNetns::THREAD_NAME,
                "netns": netns.inode,
                "proto": "TCPv4",
                "backlog": 31,
                "addr": "127.0.0.1",
                "port": addr.port(),
                "result": 0,
                "attach": path,
            })
        );
        step.stop_cleanly(Signal::SIGINT);
    }
}

/// A listen on a socket of each kind, and listens that fail, in a namespace of our own: each call
/// is reported exactly once, with its protocol, the final port and its result, on every path.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn every_call_is_reported_once_with_its_protocol_port_and_result() {
    require_root();
    let netns = InNewNetns::new();
    for path in tool_attach_paths_here() {
        let step = start_json(path, &["--netns", &netns.inode.to_string()]);
        let (expected, _sockets) = netns.run(make_every_kind_of_listen);
        // Wait for the last call's row, then stop and read everything.
        let mut step = step;
        let (last_port, last_row) = expected.last().unwrap().clone();
        step.find_line(
            Stream::Stdout,
            |line| {
                serde_json::from_str::<Value>(line).is_ok_and(|event| {
                    event["port"] == last_port && event["backlog"] == last_row["backlog"]
                })
            },
            Duration::from_secs(10),
        );
        let finished = step.stop_cleanly(Signal::SIGINT);
        let mut rows: Vec<(u16, Value)> = finished
            .stdout()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("every stdout line is JSON"))
            .map(|event| {
                let port = event["port"].as_u64().unwrap() as u16;
                let row = json!({
                    "proto": event["proto"], "backlog": event["backlog"], "addr": event["addr"],
                    "result": event["result"], "error": event.get("error"), "attach": event["attach"],
                    "pid": event["pid"], "netns": event["netns"],
                });
                (port, row)
            })
            .collect();
        rows.sort_by_key(|(port, row)| (*port, row["backlog"].as_u64()));
        let mut wanted: Vec<(u16, Value)> = expected
            .iter()
            // The sockops path hears only of a start of listening: it is named as not seeing
            // EINVAL and a listen() that only changes the backlog.
            .filter(|(_, row)| path != "sockops" || row["sockops_sees"] != false)
            .map(|(port, row)| {
                let mut row = row.clone();
                row.as_object_mut().unwrap().remove("sockops_sees");
                row["attach"] = json!(path);
                row["pid"] = json!(std::process::id());
                row["netns"] = json!(netns.inode);
                (*port, row)
            })
            .collect();
        wanted.sort_by_key(|(port, row)| (*port, row["backlog"].as_u64()));
        assert_eq!(rows, wanted, "on the {path} path");
    }
}

/// The calls, made in the calling thread's namespace: returns what each must be reported as (its
/// port and row) and the sockets, kept open until the rows are read.
fn make_every_kind_of_listen() -> (Vec<(u16, Value)>, Vec<Socket>) {
    let row = |proto: &str, backlog: i32, addr: &str, result: i32, error: Option<&str>| {
        json!({
            "proto": proto, "backlog": backlog, "addr": addr, "result": result, "error": error,
            "attach": null, "pid": null, "netns": null,
        })
    };
    let mut expected = Vec::new();
    let mut sockets = Vec::new();
    let port_of = |socket: &Socket| socket.local_addr().unwrap().as_socket().unwrap().port();
    // TCP over IPv4 and IPv6, bound first.
    for (addr, proto, backlog) in [("127.0.0.1", "TCPv4", 61), ("::1", "TCPv6", 62)] {
        let listener = trigger::listen((addr.parse::<IpAddr>().unwrap(), 0).into(), backlog)
            .unwrap()
            .socket;
        expected.push((port_of(&listener), row(proto, backlog, addr, 0, None)));
        sockets.push(listener);
    }
    // A backlog above `net.core.somaxconn`: listen() caps it, and the row shows the capped one.
    let somaxconn: i32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let capped = trigger::listen((LOCALHOST, 0).into(), somaxconn + 1)
        .unwrap()
        .socket;
    expected.push((
        port_of(&capped),
        row("TCPv4", somaxconn, "127.0.0.1", 0, None),
    ));
    sockets.push(capped);
    // Never bound: the kernel picks the port during listen(); the row has that port.
    let unbound = trigger::listen_without_bind(Domain::IPV4, 63)
        .unwrap()
        .socket;
    expected.push((port_of(&unbound), row("TCPv4", 63, "0.0.0.0", 0, None)));
    // A second listen() on a listening socket only changes its backlog: a call all the same.
    unbound.listen(64).unwrap();
    expected.push((
        port_of(&unbound),
        unseen_by_sockops(row("TCPv4", 64, "0.0.0.0", 0, None)),
    ));
    sockets.push(unbound);
    // Two sockets bound to one port with SO_REUSEADDR: the second listen() fails, EADDRINUSE.
    let (first, second, error) =
        trigger::listen_on_a_port_in_use((LOCALHOST, 0).into(), 65).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EADDRINUSE));
    let port = first.local_addr.port();
    expected.push((port, row("TCPv4", 65, "127.0.0.1", 0, None)));
    expected.push((
        port,
        row(
            "TCPv4",
            66,
            "127.0.0.1",
            -libc::EADDRINUSE,
            Some("EADDRINUSE"),
        ),
    ));
    sockets.extend([first.socket, second]);
    // listen() on a connected socket fails with EINVAL.
    let (server, client, error) =
        trigger::listen_on_a_connected_socket((LOCALHOST, 0).into(), 67).unwrap();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    expected.push((
        server.local_addr.port(),
        row("TCPv4", 67, "127.0.0.1", 0, None),
    ));
    expected.push((
        port_of(&client),
        unseen_by_sockops(row("TCPv4", 68, "127.0.0.1", -libc::EINVAL, Some("EINVAL"))),
    ));
    sockets.extend([server.socket, client]);
    // MPTCP, where the kernel has it: one row, never shown as TCP.
    match Socket::new(
        Domain::IPV4,
        Type::STREAM,
        Some(Protocol::from(i32::from(IPPROTO_MPTCP))),
    ) {
        Ok(mptcp) => {
            mptcp
                .bind(&SocketAddr::from((LOCALHOST, 0)).into())
                .unwrap();
            mptcp.listen(69).unwrap();
            expected.push((port_of(&mptcp), row("MPTCPv4", 69, "127.0.0.1", 0, None)));
            sockets.push(mptcp);
        }
        Err(error) => eprintln!("this kernel has no MPTCP ({error}): no MPTCP listen to check"),
    }
    (expected, sockets)
}

/// Marks a row that the sockops path does not report, as its page and `--help` say.
fn unseen_by_sockops(mut row: Value) -> Value {
    row["sockops_sees"] = json!(false);
    row
}

/// How many listens a storm makes.
const STORM: usize = 100_000;

/// How many listens a storm makes here: `STORM`, or fewer where the VM runner says the guest is
/// slow (an emulated CPU of another architecture); the accounting stays exact either way.
fn storm_size() -> usize {
    std::env::var("LISTEN_TRACE_STORM")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(STORM)
}

/// The storms measure what the buffers keep up with: two at once would share the CPUs and each
/// lose what the other made it lose.
static ONE_STORM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes `STORM` listens inside `netns` (socket, bind to a free port, listen, close) and returns
/// what lesson 13, filtered to that namespace, reported: (rows printed, received, lost).
fn storm(
    path: &str,
    netns: &InNewNetns,
    buffer_pages: Option<&str>,
    reader_paused: bool,
) -> (usize, u64, u64) {
    let _alone = ONE_STORM_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns_inode = netns.inode.to_string();
    let mut args = vec!["--attach", path, "--netns", &netns_inode];
    if let Some(pages) = buffer_pages {
        args.extend(["--buffer-pages", pages]);
    }
    let step = RunningStep::start(STEP, &args);
    let size = storm_size();
    // A paused reader drains nothing: its ring must overflow, however fast this machine is.
    if reader_paused {
        nix::sys::signal::kill(step.pid(), Signal::SIGSTOP).unwrap();
    }
    netns.run(move || {
        for _ in 0..size {
            trigger::listen((LOCALHOST, 0).into(), 47).unwrap();
        }
    });
    if reader_paused {
        nix::sys::signal::kill(step.pid(), Signal::SIGCONT).unwrap();
    }
    // Let the reader drain what is in the ring, then stop it.
    std::thread::sleep(Duration::from_secs(1));
    let finished = step.stop(Signal::SIGINT);
    assert!(finished.status.success(), "{}", finished.stderr());
    let rows = finished
        .stdout()
        .lines()
        // The BACKLOG column, after TIME, PID, COMM, NETNS and PROTO.
        .filter(|line| line.split_whitespace().nth(5) == Some("47"))
        .count();
    let (received, lost) = received_and_lost(&finished.stderr());
    (rows, received, lost)
}

/// The numbers of the summary line `N events received, M lost…` in `stderr`.
fn received_and_lost(stderr: &str) -> (u64, u64) {
    stderr
        .lines()
        .find_map(|line| {
            let (received, rest) = line.split_once(" events received, ")?;
            let lost = rest.split(' ').next()?;
            Some((received.parse::<u64>().ok()?, lost.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"))
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_storm_of_listens_is_counted_exactly_with_a_small_buffer() {
    require_root();
    // The reader is paused during the storm, so the ring overflows and the count of the lost
    // events is what is checked.
    let lost = counted_storm("tracepoint", Some("1"), true);
    assert!(
        lost > 0,
        "a one-page buffer must overflow while its reader is paused"
    );
}

/// With the default buffer and a reader that is not held back, whether anything is lost depends on
/// how fast this machine is (the bench measures that): what is checked is the accounting.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_storm_of_listens_is_counted_exactly_with_the_default_buffer() {
    require_root();
    counted_storm("tracepoint", None, false);
}

/// The same on the sockops path, where a start of listening is what it reports.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn a_storm_of_listens_is_counted_exactly_on_the_sockops_path() {
    require_root();
    if tool_attach_paths_here().contains(&"sockops") {
        counted_storm("sockops", None, false);
    } else {
        // A kernel where the VM runner does not expect the path to work: if it is refused, the
        // refusal must be a clear error.
        let finished = RunningStep::spawn_command(std::process::Command::new(STEP).args([
            "--attach",
            "sockops",
            "--duration",
            "1",
        ]))
        .wait(Duration::from_secs(30));
        let stderr = finished.stderr();
        assert!(!stderr.contains("panicked"), "{stderr}");
        if !finished.status.success() {
            assert_eq!(finished.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("cannot attach the sock_ops program on the cgroup2 root: "),
                "{stderr}"
            );
        }
    }
}

/// A storm in a namespace of its own, with a ring of `buffer_pages` (`None`: the default size):
/// checks that every event is printed once and that received + lost is exactly what was
/// triggered, and returns the losses.
fn counted_storm(path: &str, buffer_pages: Option<&str>, reader_paused: bool) -> u64 {
    let size = storm_size();
    let (rows, received, lost) = storm(path, &InNewNetns::new(), buffer_pages, reader_paused);
    eprintln!(
        "{path}, ring of {buffer_pages:?} pages: {rows} rows, {received} received, {lost} lost of \
         {size}"
    );
    assert_eq!(
        rows as u64, received,
        "every event received is printed once"
    );
    assert_eq!(
        received + lost,
        size as u64,
        "received + lost = what we triggered"
    );
    lost
}

#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn rows_are_never_printed_twice() {
    require_root();
    let netns = InNewNetns::new();
    let step = start_json(
        "tracepoint",
        &["--netns", &netns.inode.to_string(), "--buffer-pages", "1"],
    );
    let addrs: Vec<SocketAddr> = netns.run(|| {
        let listeners: Vec<_> = (0..500)
            .map(|_| trigger::listen((LOCALHOST, 0).into(), 49).unwrap())
            .collect();
        listeners
            .iter()
            .map(|listener| listener.local_addr)
            .collect()
    });
    // A one-page ring wraps around many times over 500 events (and may drop some).
    std::thread::sleep(Duration::from_secs(1));
    let finished = step.stop(Signal::SIGINT);
    let ports: HashSet<u64> = addrs.iter().map(|addr| u64::from(addr.port())).collect();
    let mut seen = HashSet::new();
    for line in finished.stdout().lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let port = event["port"].as_u64().unwrap();
        assert!(ports.contains(&port), "not one of ours: {line}");
        assert!(seen.insert(port), "printed twice: {line}");
    }
    assert!(seen.len() > 50, "only {} of 500 events arrived", seen.len());
}

/// The life cycle of a tool people keep running: every way it can end leaves nothing in the kernel.
mod hardening {
    use std::{fs, process::Command};

    use super::*;
    use support::kernel::assert_programs_unloaded;

    #[test]
    #[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
    fn sigterm_and_duration_end_with_a_summary_and_nothing_loaded() {
        require_root();
        // The sockops path's link to the cgroup goes with its program.
        for path in tool_attach_paths_here()
            .into_iter()
            .filter(|path| ["tracepoint", "sockops"].contains(path))
        {
            let step = RunningStep::start(STEP, &["--attach", path]);
            let ids = step.program_ids();
            let finished = step.stop(Signal::SIGTERM);
            assert!(finished.status.success(), "{}", finished.stderr());
            assert!(
                finished.stderr().contains(" events received, "),
                "{}",
                finished.stderr()
            );
            let detached = match path {
                "sockops" => {
                    "stopped by SIGTERM: detached from the sock_ops program on the cgroup2"
                }
                _ => "stopped by SIGTERM: detached from the tracepoint",
            };
            assert!(
                finished.stderr().contains(detached),
                "{}",
                finished.stderr()
            );
            assert_programs_unloaded(&ids);
        }

        let step = RunningStep::start(STEP, &["--attach", "tracepoint", "--duration", "0.5"]);
        let ids = step.program_ids();
        let finished = step.wait(Duration::from_secs(10));
        assert!(finished.status.success(), "{}", finished.stderr());
        assert!(
            finished
                .stderr()
                .contains("stopped after 500ms (--duration)"),
            "{}",
            finished.stderr()
        );
        assert_programs_unloaded(&ids);
    }

    #[test]
    #[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
    fn kill_9_leaves_nothing_attached() {
        require_root();
        for path in tool_attach_paths_here() {
            let step = start_json(path, &[]);
            let ids = step.program_ids();
            let finished = step.stop(Signal::SIGKILL);
            assert_eq!(finished.status.code(), None, "killed by a signal");
            // No handler ran: the kernel let go of the programs when their last fd closed.
            assert_programs_unloaded(&ids);
        }
    }

    #[test]
    #[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
    fn two_instances_at_once_both_see_every_event() {
        require_root();
        let mut first = start_json("tracepoint", &[]);
        let mut second = start_json("tracepoint", &[]);
        let listeners: Vec<_> = (0..20)
            .map(|_| trigger::listen((LOCALHOST, 0).into(), 51).unwrap())
            .collect();
        for listener in &listeners {
            assert_eq!(
                json_event_for(&mut first, listener.local_addr)["backlog"],
                51
            );
            assert_eq!(
                json_event_for(&mut second, listener.local_addr)["backlog"],
                51
            );
        }
        first.stop_cleanly(Signal::SIGINT);
        second.stop_cleanly(Signal::SIGINT);
    }

    #[test]
    #[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
    fn a_kernel_without_btf_is_a_clear_error() {
        require_root();
        let corrupt =
            std::env::temp_dir().join(format!("listen-trace-corrupt-btf-{}", std::process::id()));
        fs::write(&corrupt, b"not BTF at all").unwrap();
        for (file, message) in [
            (
                "/nonexistent/vmlinux".into(),
                "this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF)",
            ),
            (corrupt.clone(), "is not valid BTF"),
        ] {
            let finished = RunningStep::spawn_command(
                Command::new(STEP).env(common::KERNEL_BTF_VARIABLE, &file),
            )
            .wait(Duration::from_secs(10));
            let stderr = finished.stderr();
            assert_eq!(finished.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(message), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        fs::remove_file(corrupt).unwrap();
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for (args, message) in [
            (&["--buffer-pages", "3"][..], "`3` is not a power of two"),
            (&["--pid", "-4"][..], "unexpected argument"),
            (
                &["--netns", "abc"][..],
                "invalid value 'abc' for '--netns <INODE>'",
            ),
            (&["--frobnicate"][..], "unexpected argument '--frobnicate'"),
        ] {
            let finished = RunningStep::spawn(STEP, args).wait(Duration::from_secs(10));
            assert_eq!(finished.status.code(), Some(2), "{args:?}");
            assert!(
                finished.stderr().contains(message),
                "{args:?}: {}",
                finished.stderr()
            );
        }
    }
}

/// What the book shows lesson 14 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(14, STEP);
}
