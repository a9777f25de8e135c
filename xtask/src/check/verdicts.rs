//! The checks of exercises 1 to 14: each runs the learner's lesson, makes its own `listen()` calls,
//! and reads what the lesson printed for them; an error says what is still missing.

use std::{
    ffi::CString,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use support::{
    running::{RunningStep, Stream},
    trigger,
};

/// How long an exercise's event may take to show.
pub(super) const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Exercise 1: `Hello World from NAME!`, where NAME is the thread that called listen().
pub(super) fn check_process_name(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let thread_name = "ex1-listener";
    let wanted = format!("Hello World from {thread_name}!");
    thread::Builder::new()
        .name(thread_name.into())
        .spawn(|| listen_once(1))
        .map_err(|error| error.to_string())?
        .join()
        .map_err(|_| "the listening thread failed".to_string())??;
    if wait_for(&mut step, |line| line.contains(&wanted)).is_some() {
        return Ok(());
    }
    Err(if saw(&step, |line| line.ends_with(" Hello World!")) {
        format!(
            "the program says `Hello World!`, but not who called listen(). Our listener's thread \
             is named {thread_name}: the line should read `{wanted}`"
        )
    } else {
        format!(
            "no line `{wanted}` arrived; the program printed:\n{}",
            step.stdout()
        )
    })
}

/// Exercise 2: `Listening with up to 7 pending connections! (pid PID)`.
pub(super) fn check_pid(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    listen_once(7)?;
    let wanted = format!(
        "Listening with up to 7 pending connections! (pid {})",
        std::process::id()
    );
    if wait_for(&mut step, |line| line.contains(&wanted)).is_some() {
        return Ok(());
    }
    Err(
        if saw(&step, |line| {
            line.ends_with(" Listening with up to 7 pending connections!")
        }) {
            format!("the backlog is there, the process is not: the line should end with `{wanted}`")
        } else {
            format!(
                "no line ending with `{wanted}` arrived; the program printed:\n{}",
                step.stdout()
            )
        },
    )
}

/// Exercise 3: `…, skc_num PORT)` after inet_sport, on the line of our listener.
pub(super) fn check_skc_num(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 3)
        .map_err(|error| format!("{error:#}"))?;
    let port = listener.local_addr.port();
    let ours = format!(" Listening on 127.0.0.1:{port} ");
    let wanted_end = format!(", skc_num {port})");
    if wait_for(&mut step, |line| {
        line.contains(&ours) && line.ends_with(&wanted_end)
    })
    .is_some()
    {
        return Ok(());
    }
    Err(
        match step.stdout().lines().find(|line| line.contains(&ours)) {
            Some(line) => {
                format!("our listener's line is `{line}`: it should end with `{wanted_end}`")
            }
            None => format!(
                "no line for our listener on 127.0.0.1:{port}; the program printed:\n{}",
                step.stdout()
            ),
        },
    )
}

/// Exercise 4: a `TID` column after `PID`, with the id of the thread that called listen().
pub(super) fn check_thread_id(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &[])?;
    let (tid, port) = thread::spawn(|| {
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 4)
            .map_err(|error| format!("{error:#}"))?;
        Ok::<_, String>((nix::unistd::gettid().as_raw(), listener.local_addr.port()))
    })
    .join()
    .map_err(|_| "the listening thread failed".to_string())??;
    let port = port.to_string();
    let Some(row) = wait_for(&mut step, |line| {
        line.split_whitespace().last() == Some(port.as_str())
    }) else {
        return Err(format!(
            "no row for our listen on port {port}; the program printed:\n{}",
            step.stdout()
        ));
    };
    let header = step.stdout().lines().next().unwrap_or_default().to_string();
    let columns: Vec<&str> = row.split_whitespace().collect();
    let pid = std::process::id().to_string();
    match (header.split_whitespace().nth(1), columns.get(1)) {
        (Some("TID"), Some(&seen)) if seen == tid.to_string() && columns[0] == pid => Ok(()),
        (Some("TID"), seen) => Err(format!(
            "the TID column of our row says {seen:?}, but the listening thread is {tid} (in \
             process {pid}): the row is `{row}`"
        )),
        _ => Err(format!(
            "the table has no TID column after PID: the header is `{header}`, and our listen's \
             row `{row}` should read `{pid} {tid} …`"
        )),
    }
}

/// How long exercise 5's listener listens before it closes.
const LISTENED: Duration = Duration::from_millis(300);

/// Exercise 5: on the tracepoint path, a row whose RESULT is `closed` when our listener stops, and a
/// last column `LISTENED` that says for how long it listened (`312.5ms`).
pub(super) fn check_listened(binary: &Path) -> Result<(), String> {
    let mut step = start(binary, &["--attach", "tracepoint"])?;
    let port = thread::spawn(|| {
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 5)
            .map_err(|error| format!("{error:#}"))?;
        thread::sleep(LISTENED);
        Ok::<_, String>(listener.local_addr.port()) // and the listener closes
    })
    .join()
    .map_err(|_| "the listening thread failed".to_string())??
    .to_string();
    let header = step
        .find_line(
            Stream::Stdout,
            |line| line.starts_with("PID "),
            EVENT_TIMEOUT,
        )
        .unwrap_or_default();
    let names: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| names.iter().position(|&column| column == name);
    let (Some(port_at), Some(result_at), Some(listened_at)) =
        (column("PORT"), column("RESULT"), column("LISTENED"))
    else {
        return Err(format!(
            "the table has no LISTENED column after RESULT: the header is `{header}`"
        ));
    };
    let field = |line: &str, at: usize| line.split_whitespace().nth(at).map(str::to_string);
    let closed = wait_for(&mut step, |line| {
        field(line, port_at).as_deref() == Some(port.as_str())
            && field(line, result_at).as_deref() == Some("closed")
    });
    let Some(row) = closed else {
        return Err(format!(
            "our listener on port {port} closed after {} ms, but no row for it says `closed` in              the RESULT column; the program printed:\n{}",
            LISTENED.as_millis(),
            step.stdout()
        ));
    };
    let said = field(&row, listened_at).unwrap_or_default();
    let ms: Option<f64> = said.strip_suffix("ms").and_then(|ms| ms.parse().ok());
    let least = LISTENED.as_secs_f64() * 1e3;
    match ms {
        Some(ms) if (least..least + 2_000.0).contains(&ms) => Ok(()),
        _ => Err(format!(
            "our listener listened for {least} ms (a little more, not less), but its row says              LISTENED `{said}`: the row is `{row}`"
        )),
    }
}

/// Exercise 6: on the tracepoint path, a last column `FD` with the file descriptor the `listen()`
/// system call was given.
pub(super) fn check_fd(binary: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let mut step = start(binary, &["--attach", "tracepoint"])?;
    // A few descriptors opened first, so that ours is not simply the lowest free one.
    let spare: Vec<_> = (0..3)
        .filter_map(|_| std::fs::File::open("/dev/null").ok())
        .collect();
    let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 6)
        .map_err(|error| format!("{error:#}"))?;
    drop(spare);
    let (fd, port) = (
        listener.socket.as_raw_fd().to_string(),
        listener.local_addr.port().to_string(),
    );
    let header = step
        .find_line(
            Stream::Stdout,
            |line| line.starts_with("PID "),
            EVENT_TIMEOUT,
        )
        .unwrap_or_default();
    let names: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| names.iter().position(|&column| column == name);
    let (Some(port_at), Some(fd_at)) = (column("PORT"), column("FD")) else {
        return Err(format!(
            "the table has no FD column: the header is `{header}`"
        ));
    };
    let field = |line: &str, at: usize| line.split_whitespace().nth(at).map(str::to_string);
    let Some(row) = wait_for(&mut step, |line| {
        field(line, port_at).as_deref() == Some(port.as_str())
    }) else {
        return Err(format!(
            "no row for our listen on port {port}; the program printed:\n{}",
            step.stdout()
        ));
    };
    match field(&row, fd_at) {
        Some(seen) if seen == fd => Ok(()),
        seen => Err(format!(
            "our listen() was given file descriptor {fd}, but its row's FD column says {seen:?}: \
             the row is `{row}`"
        )),
    }
}

/// Exercise 7: `--cgroup PATH` attaches the sockops path to that cgroup: the listen of a process
/// in it is a row, a listen outside it is not.
pub(super) fn check_cgroup(binary: &Path) -> Result<(), String> {
    require_option(binary, "--cgroup")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let hierarchy = common::cgroup2::mount_point(&mountinfo).ok_or(
        "cgroup2 is not mounted here: mount it (`sudo mount -t cgroup2 none /sys/fs/cgroup`) and \
         check again",
    )?;
    let cgroup = OwnCgroup::new(&hierarchy)?;
    let path = cgroup.0.to_string_lossy().into_owned();
    let mut step = start(binary, &["--attach", "sockops", "--cgroup", &path])?;
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let outside = trigger::listen(localhost, 71).map_err(|error| format!("{error:#}"))?;
    let procs = CString::new(
        cgroup
            .0
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|error| error.to_string())?;
    let (pid, inside) = trigger::listen_in_another_process_after(localhost, 72, || {
        let _ = trigger::join_cgroup(&procs); // a child left outside has no row: the check says so
    });
    if wait_for(&mut step, |line| port_of(line, inside.port())).is_none() {
        return Err(format!(
            "process {pid} listened on port {} inside {path}, but no row has that port; the \
             program printed:\n{}",
            inside.port(),
            step.stdout()
        ));
    }
    match step
        .stdout()
        .lines()
        .find(|line| port_of(line, outside.local_addr.port()))
    {
        Some(row) => Err(format!(
            "a listen outside {path} has a row (`{row}`): the sock_ops program still sees the \
             whole machine"
        )),
        None => Ok(()),
    }
}

/// Exercise 8: a `CPU` column after `PID`, with the CPU the program ran on. Each of our listens is
/// made by a thread pinned to one CPU (up to four of those this process may use), so each row's CPU
/// is known; a fixed number passes on one CPU at most.
pub(super) fn check_cpu(binary: &Path) -> Result<(), String> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let fail = |error: nix::Error| error.to_string();
    let allowed = sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(fail)?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
        .take(4)
        .collect();
    let mut step = start(binary, &[])?;
    for &cpu in &cpus {
        let port = thread::spawn(move || {
            let mut only = CpuSet::new();
            only.set(cpu).map_err(fail)?;
            sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).map_err(fail)?;
            let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 8)
                .map_err(|error| format!("{error:#}"))?;
            Ok::<_, String>(listener.local_addr.port())
        })
        .join()
        .map_err(|_| "the listening thread failed".to_string())??;
        let Some(row) = wait_for(&mut step, |line| port_of(line, port)) else {
            return Err(format!(
                "no row for our listen on port {port}; the program printed:\n{}",
                step.stdout()
            ));
        };
        let header = step.stdout().lines().next().unwrap_or_default().to_string();
        let columns: Vec<&str> = row.split_whitespace().collect();
        match (header.split_whitespace().nth(1), columns.get(1)) {
            (Some("CPU"), Some(&seen)) if seen == cpu.to_string() => {}
            (Some("CPU"), seen) => {
                return Err(format!(
                    "the CPU column of our row says {seen:?}, but the thread that listened on \
                     port {port} ran only on CPU {cpu}: the row is `{row}`"
                ));
            }
            _ => {
                return Err(format!(
                    "the table has no CPU column after PID: the header is `{header}`, and our \
                     listen's row `{row}` should read `PID {cpu} …`"
                ));
            }
        }
    }
    Ok(())
}

/// Exercise 9: the summary says how full the ring got (`; at most N bytes waited in the ring`).
/// Three lone listens, each read at once, leave at most a few events waiting in the default ring;
/// a one-page ring whose reader is stopped overflows, so it was full, whatever else listens on the
/// machine: a fixed number cannot pass both.
pub(super) fn check_ring_peak(binary: &Path) -> Result<(), String> {
    const LONE: u64 = 3;
    const BURST: usize = 500;
    const WORDS: &str = " bytes waited in the ring";
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64);
    let mut step = start(binary, &[])?;
    lone_listens(&mut step, LONE)?;
    let summary = stop_for_summary(step)?;
    let Some(lone_peak) = count_before(&summary, WORDS) else {
        return Err(format!(
            "the summary says nothing of how full the ring got (`{summary}`): it should end with \
             `; at most N bytes waited in the ring`"
        ));
    };
    if lone_peak == 0 || lone_peak > page / 4 {
        return Err(format!(
            "{lone_peak} bytes waited at most, for {LONE} lone listens that the reader read at \
             once: each waited alone, one record of a few dozen bytes. Read the ring's \
             BPF_RB_AVAIL_DATA after each output"
        ));
    }
    let step = start(binary, &["--buffer-pages", "1"])?;
    let pid = step.pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).map_err(|e| e.to_string())?;
    let listeners: Result<Vec<_>, String> = (0..BURST)
        .map(|_| {
            trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 8)
                .map_err(|error| format!("{error:#}"))
        })
        .collect();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).map_err(|e| e.to_string())?;
    drop(listeners?);
    thread::sleep(Duration::from_millis(500)); // the reader drains what the ring kept
    let summary = stop_for_summary(step)?;
    match (
        count_before(&summary, " lost"),
        count_before(&summary, WORDS),
    ) {
        (Some(0) | None, _) => Err(format!(
            "a one-page ring whose reader was stopped during {BURST} listens lost nothing: \
             `{summary}`"
        )),
        (_, Some(full_peak)) if full_peak * 4 < page * 3 || full_peak > page => Err(format!(
            "{full_peak} bytes waited at most in a ring of {page} bytes that overflowed: it was \
             full when it dropped events. Keep the largest BPF_RB_AVAIL_DATA seen after any \
             output, whether it worked or not"
        )),
        (_, None) => Err(format!("no `{WORDS}` in the summary `{summary}`")),
        _ => Ok(()),
    }
}

/// `count` listens 300 ms apart, each after the reader has drained and waits again, and each row
/// seen before the next.
fn lone_listens(step: &mut RunningStep, count: u64) -> Result<(), String> {
    for _ in 0..count {
        thread::sleep(Duration::from_millis(300)); // the reader has drained and waits again
        let port = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 8)
            .map_err(|error| format!("{error:#}"))?
            .local_addr
            .port();
        if wait_for(step, |line| port_of(line, port)).is_none() {
            return Err(format!(
                "no row for our listen on port {port}; the program printed:\n{}",
                step.stdout()
            ));
        }
    }
    Ok(())
}

/// Exercise 10: the summary says how many times the kernel side woke the reader (`; W wake-ups`).
/// A lone listen, which finds the reader waiting, wakes it; a burst, which finds it pausing, does
/// so far fewer times than it has events.
pub(super) fn check_wake_ups(binary: &Path) -> Result<(), String> {
    const LONE: u64 = 3;
    const BURST: u64 = 2_000;
    let mut step = start(binary, &[])?;
    lone_listens(&mut step, LONE)?;
    thread::spawn(|| -> Result<(), String> {
        for _ in 0..BURST {
            trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 8)
                .map_err(|error| format!("{error:#}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the listening thread failed".to_string())??;
    thread::sleep(Duration::from_millis(500)); // the reader drains the burst
    let summary = stop_for_summary(step)?;
    let received = count_before(&summary, " events received");
    let wake_ups = count_before(&summary, " wake-ups");
    match (received, wake_ups) {
        (_, None) => Err(format!(
            "the summary says nothing of wake-ups (`{summary}`): it should end with `; W \
             wake-ups`, W being how many times the kernel side woke the reader"
        )),
        (None, _) => Err(format!(
            "the summary `{summary}` has no count of events received"
        )),
        (Some(received), Some(_)) if received < LONE + BURST => Err(format!(
            "only {received} events received for our {} listens: `{summary}`",
            LONE + BURST
        )),
        (_, Some(wake_ups)) if wake_ups < LONE => Err(format!(
            "{wake_ups} wake-ups, but each of our {LONE} lone listens found the reader waiting and \
             had to wake it: count the wake-ups the kernel side asks for (BPF_RB_FORCE_WAKEUP)"
        )),
        (Some(received), Some(wake_ups)) if wake_ups * 4 > received => Err(format!(
            "{wake_ups} wake-ups for {received} events: a burst finds the reader pausing, so most \
             of its events wake no one. Count only the events sent with BPF_RB_FORCE_WAKEUP"
        )),
        _ => Ok(()),
    }
}

/// Exercise 11: the summary counts the calls that failed (`; F failed`), in the kernel side: ours
/// are 3 of 23, and a count of every call is refused.
pub(super) fn check_failed(binary: &Path) -> Result<(), String> {
    const WORKED: usize = 20;
    let mut step = start(binary, &[])?;
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let fail = |error: anyhow::Error| format!("{error:#}");
    for _ in 0..WORKED {
        trigger::listen(localhost, 9).map_err(fail)?;
    }
    let mut failed_on = Vec::new();
    for _ in 0..2 {
        let (listener, _second, _error) =
            trigger::listen_on_a_port_in_use(localhost, 9).map_err(fail)?;
        failed_on.push(listener.local_addr.port());
    }
    let (_server, client, _error) =
        trigger::listen_on_a_connected_socket(localhost, 9).map_err(fail)?;
    let last = client
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .map(|addr| addr.port())
        .ok_or("our client has no port")?;
    if wait_for(&mut step, |line| port_of(line, last)).is_none() {
        return Err(format!(
            "no row for our listen() on a connected socket (port {last}); the program printed:\n{}",
            step.stdout()
        ));
    }
    let summary = stop_for_summary(step)?;
    let failed = count_before(&summary, " failed");
    match failed {
        None => Err(format!(
            "the summary says nothing of the calls that failed (`{summary}`): it should end with \
             `; F failed`, F being how many calls the kernel side saw fail"
        )),
        Some(failed) if failed < 3 => Err(format!(
            "{failed} failed, but 3 of our calls failed (two EADDRINUSE on ports {failed_on:?}, \
             one EINVAL): count each call whose result is negative"
        )),
        Some(failed) if failed >= WORKED as u64 => Err(format!(
            "{failed} failed, but {WORKED} of our calls worked: count only the calls whose result \
             is negative"
        )),
        Some(_) => Ok(()),
    }
}

/// Exercise 12: `--comm NAME` keeps the listens of the threads named NAME, and the kernel side
/// drops the others before they are sent: the summary's count of events received is the count of
/// rows.
pub(super) fn check_comm(binary: &Path) -> Result<(), String> {
    require_option(binary, "--comm")?;
    let (kept, dropped) = ("ex12-kept", "ex12-dropped");
    let own_pid = std::process::id().to_string();
    let mut step = start(binary, &["--pid", &own_pid, "--comm", kept])?;
    // Each listen in a thread of that name; the listener closes when the thread ends.
    let listen_as = |name: &str| -> Result<u16, String> {
        thread::Builder::new()
            .name(name.into())
            .spawn(|| trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 9).map(|l| l.local_addr))
            .map_err(|error| error.to_string())?
            .join()
            .map_err(|_| "the listening thread failed".to_string())?
            .map(|addr| addr.port())
            .map_err(|error| format!("{error:#}"))
    };
    let (first, other, last) = (listen_as(kept)?, listen_as(dropped)?, listen_as(kept)?);
    // The events come in order: once the last one is printed, the other's would have been too.
    for port in [first, last] {
        if wait_for(&mut step, |line| port_of(line, port)).is_none() {
            return Err(format!(
                "a thread named {kept} listened on port {port}, but no row has that port; the \
                 program printed:\n{}",
                step.stdout()
            ));
        }
    }
    if let Some(row) = step.stdout().lines().find(|line| port_of(line, other)) {
        return Err(format!(
            "a listen of a thread named {dropped} has a row (`{row}`): --comm {kept} keeps only \
             the threads of that name"
        ));
    }
    let summary = stop_for_summary(step)?;
    match count_before(&summary, " events received") {
        Some(2) => Ok(()),
        Some(received) => Err(format!(
            "the right rows are printed, but {received} events were received for 2 rows: the \
             other thread's event is sent, then dropped in userspace. Drop it in the kernel side, \
             as --pid does"
        )),
        None => Err(format!(
            "the summary `{summary}` has no count of events received"
        )),
    }
}

/// A cgroup of the check's own, removed when it goes (its processes have exited by then).
struct OwnCgroup(std::path::PathBuf);

impl OwnCgroup {
    fn new(hierarchy: &Path) -> Result<Self, String> {
        let path = hierarchy.join(format!("listen-trace-exercise-7-{}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|error| format!("cannot create the cgroup {}: {error}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        // The kernel lets a cgroup go a moment after its last process exits.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An error unless the program's `--help` lists `option`.
fn require_option(binary: &Path, option: &str) -> Result<(), String> {
    let help = Command::new(binary)
        .arg("--help")
        .output()
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    if String::from_utf8_lossy(&help.stdout).contains(option) {
        Ok(())
    } else {
        Err(format!(
            "the program has no {option} option: its `--help` does not list it"
        ))
    }
}

pub(super) fn listen_once(backlog: i32) -> Result<(), String> {
    trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), backlog)
        .map(drop)
        .map_err(|error| format!("{error:#}"))
}

/// Starts the learner's lesson and waits until it is attached.
pub(super) fn start(binary: &Path, args: &[&str]) -> Result<RunningStep, String> {
    RunningStep::try_start(Command::new(binary).args(args), false)
        .map_err(|error| format!("the program {error}"))
}

/// Exercise 13: the table's TIME to the millisecond, `HH:MM:SS.mmm`. Three listens a third of a
/// second apart, each with its own port: each row's time must be within `MILLIS_SLACK` of the
/// moments around its listen, so a fixed or rounded fraction cannot pass. The lesson runs with
/// `TZ=UTC`, so that its time of day is the one computed here.
pub(super) fn check_time_millis(binary: &Path) -> Result<(), String> {
    /// How far a row's time may be from its listen: the lesson reads two clocks at its start.
    const MILLIS_SLACK: i64 = 60;
    const DAY_MS: i64 = 86_400_000;
    let own_pid = std::process::id().to_string();
    let mut step = RunningStep::try_start(
        Command::new(binary)
            .args(["--pid", &own_pid])
            .env("TZ", "UTC"),
        false,
    )
    .map_err(|error| format!("the program {error}"))?;
    let millis_of_day = || jiff::Timestamp::now().as_millisecond().rem_euclid(DAY_MS);
    for round in 0..3 {
        let before = millis_of_day();
        let listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 11)
            .map_err(|error| format!("{error:#}"))?;
        let after = millis_of_day();
        let port = listener.local_addr.port();
        let Some(row) = wait_for(&mut step, |line| port_of(line, port)) else {
            return Err(format!(
                "no row has our port {port}; the program printed:\n{}",
                step.stdout()
            ));
        };
        let time = row.split_whitespace().next().unwrap_or_default();
        let Some(shown) = parse_time_millis(time) else {
            return Err(format!(
                "the row `{row}` starts with `{time}`: TIME should read HH:MM:SS.mmm, the time of \
                 day to the millisecond (`16:44:51.503`)"
            ));
        };
        // The distance on a clock face of one day, so that midnight does not matter.
        let distance = |a: i64, b: i64| (a - b).rem_euclid(DAY_MS).min((b - a).rem_euclid(DAY_MS));
        let (from_before, from_after) = (distance(shown, before), distance(shown, after));
        if from_before.max(from_after) > (after - before).rem_euclid(DAY_MS) + MILLIS_SLACK {
            return Err(format!(
                "the row `{row}` says {time}, but that listen happened between {} and {} (UTC): \
                 the milliseconds are the kernel's time stamp's, not a fixed or rounded fraction",
                format_millis(before),
                format_millis(after)
            ));
        }
        if round < 2 {
            thread::sleep(Duration::from_millis(333));
        }
    }
    step.try_stop(nix::sys::signal::Signal::SIGINT)
        .map_err(|error| format!("the program did not stop: {error}"))?;
    Ok(())
}

/// `HH:MM:SS.mmm` as milliseconds since midnight.
fn parse_time_millis(time: &str) -> Option<i64> {
    let (clock, millis) = time.split_once('.')?;
    let parts: Vec<i64> = clock
        .split(':')
        .map(|part| part.parse().ok())
        .collect::<Option<_>>()?;
    let [hours, minutes, seconds] = parts[..] else {
        return None;
    };
    if millis.len() != 3 || clock.len() != 8 {
        return None;
    }
    Some(((hours * 60 + minutes) * 60 + seconds) * 1000 + millis.parse::<i64>().ok()?)
}

/// Milliseconds since midnight as `HH:MM:SS.mmm`.
fn format_millis(millis: i64) -> String {
    let seconds = millis / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        millis % 1000
    )
}

/// Exercise 14: `--csv` prints a header row, then one CSV row per event with the fields of
/// `CSV_HEADER`, the thread's name quoted.
pub(super) fn check_csv(binary: &Path) -> Result<(), String> {
    const CSV_HEADER: &str = "pid,tid,comm,netns,proto,backlog,addr,port,result";
    require_option(binary, "--csv")?;
    let pid = std::process::id();
    let mut step = start(binary, &["--csv", "--pid", &pid.to_string()])?;
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (tid, port) = thread::Builder::new()
        .name("ex14-csv".into())
        .spawn(move || {
            let listener = trigger::listen(localhost, 12).map_err(|error| format!("{error:#}"))?;
            Ok::<_, String>((nix::unistd::gettid().as_raw(), listener.local_addr.port()))
        })
        .map_err(|error| error.to_string())?
        .join()
        .map_err(|_| "the listening thread failed".to_string())??;
    let (listener, _second, _error) =
        trigger::listen_on_a_port_in_use(localhost, 12).map_err(|error| format!("{error:#}"))?;
    let in_use = listener.local_addr.port();
    let netns = trigger::netns_inode().map_err(|error| format!("{error:#}"))?;
    let wanted = [
        format!("{pid},{tid},\"ex14-csv\",{netns},TCPv4,12,127.0.0.1,{port},ok"),
        format!(",{netns},TCPv4,13,127.0.0.1,{in_use},EADDRINUSE"),
    ];
    for row in &wanted {
        if wait_for(&mut step, |line| line.ends_with(row.as_str())).is_none() {
            return Err(format!(
                "no row ends with `{row}`; the program printed:\n{}",
                step.stdout()
            ));
        }
    }
    match step.stdout().lines().next() {
        Some(CSV_HEADER) => Ok(()),
        header => Err(format!(
            "the first line is {header:?}; it should be the header row `{CSV_HEADER}`"
        )),
    }
}

/// Stops the lesson with Ctrl-C and returns its summary line, `N events received, M lost…`.
fn stop_for_summary(step: RunningStep) -> Result<String, String> {
    let finished = step
        .try_stop(nix::sys::signal::Signal::SIGINT)
        .map_err(|error| format!("the program did not stop: {error}"))?;
    let stderr = finished.stderr();
    match stderr
        .lines()
        .find(|line| line.contains(" events received, "))
    {
        Some(summary) => Ok(summary.to_string()),
        None => Err(format!(
            "no summary line `N events received, M lost` in:\n{stderr}"
        )),
    }
}

/// The number just before `words` in `summary` (`3` for `" wake-ups"` in `…; 3 wake-ups`).
fn count_before(summary: &str, words: &str) -> Option<u64> {
    let (before, _) = summary.split_once(words)?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether a table row has `port` as one of its words.
fn port_of(line: &str, port: u16) -> bool {
    line.split_whitespace().any(|word| word == port.to_string())
}

/// Waits up to 5 s for a stdout line that satisfies `wanted` (or finds it among those read).
pub(super) fn wait_for(step: &mut RunningStep, wanted: impl Fn(&str) -> bool) -> Option<String> {
    step.find_line(Stream::Stdout, wanted, EVENT_TIMEOUT)
}

/// Whether a stdout line read so far satisfies `wanted`.
pub(super) fn saw(step: &RunningStep, wanted: impl Fn(&str) -> bool) -> bool {
    step.saw(Stream::Stdout, wanted).is_some()
}
