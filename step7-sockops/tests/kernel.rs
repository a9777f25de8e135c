//! Lesson 7 against the real kernel: one table row per `listen()` call, with the exact process,
//! thread name, network namespace, protocol, backlog, address, the final port and the call's
//! result, on every attach path this kernel offers, the sockops path included (which sees only the
//! calls that start a listener), and the sockops path kept to its own cgroup.
//!
//! Our own listens are made in a network namespace of their own, on ports of their own: other
//! programs on the machine listen too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    kernel::{require_root, tool_attach_paths_here},
    running::{RunningStep, Stream},
    table::{self, Columns},
    trigger::{self, Domain, InNewNetns, socket2::Socket},
};

const STEP: &str = env!("CARGO_BIN_EXE_step7-sockops");
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The columns this lesson prints, by their names in the header. The tests read them by name, so
/// that a column an exercise adds changes nothing they check.
const COLUMNS: [&str; 8] = [
    "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
];

/// The row lesson 7 prints for a listen of ours on `addr`, computed here independently of the
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
/// ended with and its result, on every path; the sockops path has no row for a call that starts no
/// listener (a second `listen()`, one that fails with `EINVAL`).
/// And the tracepoint path, which every system call of the machine pays for, is the one that says so.
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
fn every_kind_of_listen(path: &str) -> (Vec<Vec<String>>, Vec<Socket>) {
    // New: the sockops path hears only of a start of listening, and of a start that fails.
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

/// The sockops path run as in a container: lesson 7 starts in a cgroup of its own, inside a
/// cgroup namespace with its own cgroup2 mount (as container runtimes mount it), so it attaches to
/// that cgroup. Listens outside it are not its to report, not even as failures when they close at
/// once (a close leaves `TCP_LISTEN` as a failed start does); a listen inside it is, exactly. The
/// starts the state tracepoint keeps stay at none, however many threads outside listen and exit.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_sockops_path_in_a_container_reports_only_the_container() {
    require_root();
    if !sockops_expected_here() {
        return;
    }
    let container = Container::new();
    let mut command = std::process::Command::new(STEP);
    command.args(["--attach", "sockops"]);
    container.enter_before_exec(&mut command);
    let mut step =
        RunningStep::try_start(&mut command, true).unwrap_or_else(|error| panic!("{error}"));

    // Outside: three listeners that close at once, then threads that each listen once and exit.
    for backlog in [31, 32, 33] {
        drop(trigger::listen((LOCALHOST, 0).into(), backlog).unwrap());
    }
    let threads = threads_that_listen_once();
    listen_once_from_threads(threads, 35);
    // Inside: one process that moves itself into the container's cgroup, then listens.
    let procs = container.procs();
    let (pid, addr) = trigger::listen_in_another_process_after((LOCALHOST, 0).into(), 34, || {
        trigger::join_cgroup(&procs).expect("cannot move into the container's cgroup")
    });
    let netns = trigger::netns_inode().unwrap();
    let row = row_with(&mut step, netns, addr);
    assert_eq!(
        (row[0].as_str(), row[4].as_str()),
        (pid.to_string().as_str(), "34")
    );
    let starts = starts_held(&step);
    assert_eq!(
        starts, 0,
        "starts kept after {threads} threads outside listened and exited"
    );

    let finished = step.stop_cleanly(Signal::SIGINT);
    let stdout = finished.stdout();
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        1,
        "only the listen inside the container: {rows:#?}"
    );
    assert!(
        finished.stderr().contains("1 events received, 0 lost"),
        "{}",
        finished.stderr()
    );
}

/// How many entries `STARTS` holds in the running lesson (its value: two `u64`s).
fn starts_held(step: &RunningStep) -> usize {
    support::kernel::hash_map_len_held::<[u64; 2]>(step.pid().as_raw() as u32, "STARTS").unwrap()
}

/// Whether this kernel is expected to offer the sockops path; where it is not, says so loudly (and
/// fails under CI, which expects it on every kernel it runs).
fn sockops_expected_here() -> bool {
    let expected = tool_attach_paths_here().contains(&"sockops");
    if !expected {
        eprintln!("NOT RUN: this kernel is not expected to offer the sockops path (before 5.10)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI expects the sockops path on every kernel it runs"
        );
    }
    expected
}

/// How many threads listen once each and exit in the sockops tests.
const THREADS_THAT_LISTEN_ONCE: usize = 20_000;

/// How many threads listen once here: `THREADS_THAT_LISTEN_ONCE`, or fewer where the VM runner says
/// the guest is emulated (the starts kept must stay at none either way).
fn threads_that_listen_once() -> usize {
    std::env::var("LISTEN_TRACE_THREADS")
        .ok()
        .and_then(|threads| threads.parse().ok())
        .unwrap_or(THREADS_THAT_LISTEN_ONCE)
}

/// Makes `threads` threads, a hundred at a time, that each listen once with `backlog`, close their
/// socket and exit.
fn listen_once_from_threads(threads: usize, backlog: i32) {
    for _ in 0..threads / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                std::thread::spawn(move || {
                    drop(trigger::listen((LOCALHOST, 0).into(), backlog).unwrap())
                })
            })
            .collect();
        for thread in batch {
            thread.join().unwrap();
        }
    }
}

/// On the sockops path every start of listening leaves `STARTS` within its own call: threads that
/// each listen once and exit leave nothing behind, and each of their listens is one row.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_sockops_path_keeps_no_start_after_its_call() {
    require_root();
    if !sockops_expected_here() {
        return;
    }
    let netns = InNewNetns::new();
    let mut step = RunningStep::start(STEP, &["--attach", "sockops"]);
    let netns_at = Columns::of(&mut step, &["NETNS"]);
    let threads = threads_that_listen_once();
    netns.run(move || listen_once_from_threads(threads, 36));
    // The map is the whole machine's (the root cgroup): another process's listen may be on its way
    // at this instant, but not thousands.
    let starts = starts_held(&step);
    assert!(
        starts < 16,
        "{starts} starts kept after {threads} threads listened and exited"
    );
    let finished = step.stop_cleanly(Signal::SIGINT);
    let own = netns.inode.to_string();
    let rows = finished
        .stdout()
        .lines()
        .filter(|line| netns_at.values(line)[0] == own)
        .count() as u64;
    // A ring that was full drops events of the whole machine: the count names them, not whose.
    let stderr = finished.stderr();
    let lost: u64 = stderr
        .lines()
        .find_map(|line| line.split(" events received, ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|lost| lost.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    let threads = threads as u64;
    assert!(
        rows <= threads && rows + lost >= threads,
        "{rows} rows of ours and {lost} lost for {threads} listens:\n{stderr}"
    );
}

/// A cgroup of the test's own, and the cgroup2 hierarchy it is made in (mounted here for the test
/// where nothing mounts it, as in the VM runner's guests); both go away with it.
struct Container {
    hierarchy: std::path::PathBuf,
    mounted_here: bool,
    cgroup: std::path::PathBuf,
}

impl Container {
    fn new() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let (hierarchy, mounted_here) = match common::cgroup2::mount_point(&mountinfo) {
            Some(point) => (point, false),
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("listen-trace-test-cgroup2-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                nix::mount::mount(
                    Some("cgroup2"),
                    &dir,
                    Some("cgroup2"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .unwrap();
                (dir, true)
            }
        };
        let cgroup = hierarchy.join(format!("listen-trace-test-{}", std::process::id()));
        std::fs::create_dir(&cgroup).unwrap();
        Self {
            hierarchy,
            mounted_here,
            cgroup,
        }
    }

    /// The cgroup's `cgroup.procs`, ready for a process that has just forked.
    fn procs(&self) -> std::ffi::CString {
        std::ffi::CString::new(
            self.cgroup
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap()
    }

    /// Makes `command` start as a container's first process: in the cgroup, then in a cgroup
    /// namespace and a mount namespace of its own, with cgroup2 mounted afresh in place of the
    /// hierarchy's mount (the new mount shows the namespace's root: the cgroup).
    fn enter_before_exec(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = self.procs();
        let point =
            std::ffi::CString::new(self.hierarchy.clone().into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: the closure makes system calls only, on buffers made before the fork.
        unsafe {
            command.pre_exec(move || {
                trigger::join_cgroup(&procs)?;
                if libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    // The outer mount goes (in this namespace only): the kernel mounts one file
                    // system on the root of its own mount only once.
                    || libc::umount2(point.as_ptr(), libc::MNT_DETACH) != 0
                    || libc::mount(
                        c"cgroup2".as_ptr(),
                        point.as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Its processes have exited; the kernel lets the cgroup go a moment later.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.mounted_here {
            let _ = nix::mount::umount2(&self.hierarchy, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.hierarchy);
        }
    }
}

/// What the book shows lesson 7 printing, recorded for real: in a `vm-test` guest with kprobes
/// this becomes the page's stock-kernel transcript.
#[test]
#[ignore = "kernel test: loads eBPF programs, needs root (`cargo xtask test` runs it)"]
fn the_books_transcript_is_recorded() {
    require_root();
    support::transcripts::record_and_print(7, STEP);
}
