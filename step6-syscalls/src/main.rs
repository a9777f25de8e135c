//! Lesson 6, userspace side: lesson 5, with the tracepoint path following each call to its end too.
//! It attaches the `listen()` system call's tracepoints, which are perf-event tracepoints: their
//! ids come from tracefs, which it mounts where it is missing, and it checks in their `format`
//! files that their fields sit where the kernel side reads them. While they are attached, every
//! system call of the machine pays a little: the program says so.

// The event struct, from the file the kernel side compiles too.
#[path = "../ebpf/src/event.rs"]
mod event;
// The struct offsets: the kernel side reads them, this side looks them up (`UNSET` is the
// kernel side's).
#[allow(dead_code)]
#[path = "../ebpf/src/offsets.rs"]
mod offsets;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ptr,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        MapData, PerfEventArray,
        perf::{PerfEvent, PerfEventArrayBuffer},
    },
    programs::Program,
    util::online_cpus,
};
use clap::Parser as _;
use common::{
    AF_INET6, IPPROTO_MPTCP, LISTEN_FUNCTION, MPTCP_LISTEN_FUNCTION, READY_LINE,
    SOCK_OFFSETS_SYMBOL, STATE_TRACEPOINT, SYSCALL_ENTER_BACKLOG_OFFSET, SYSCALL_ENTER_FD_OFFSET,
    SYSCALL_ENTER_TRACEPOINT, SYSCALL_EXIT_RET_OFFSET, SYSCALL_EXIT_TRACEPOINT,
    user::{
        AttachMode, AttachPath, KernelBtf, Options, POINTER, Report, StopSignals, attached_line,
        check_privileges, check_tracepoint_field, explain_attach_failure, explain_load_failure,
        lift_memlock_limit, mount_tracefs, no_path_attached,
    },
};
use event::ListenEvent;
use futures_util::future::select_all;
use offsets::SockOffsets;
use tokio::io::{Interest, unix::AsyncFd};

// SAFETY: `repr(C)`, integers and byte arrays, no padding: any bytes are a valid value.
unsafe impl aya::Pod for ListenEvent {}
unsafe impl aya::Pod for SockOffsets {}

// ANCHOR: main
/// The kernel side (`ebpf/src/main.rs`), compiled by `build.rs` and embedded in this binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/",
    env!("CARGO_PKG_NAME"),
    "-ebpf"
));

/// New: what the syscall tracepoints cost the rest of the machine, said when they are attached.
const SYSCALL_TAX_LINE: &str = "the tracepoint path slows down every system call of this machine \
    while it is attached: a syscall tracepoint makes each one take the kernel's slower tracing path";

/// How many pages each CPU's ring of the perf buffer has (a power of two).
const PAGES_PER_CPU: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Report> {
    let options = Options::parse(); // --attach auto|kprobe|fentry|tracepoint, --duration SECS

    // 1. Load the object, with this kernel's struct offsets written into it (lessons 2 and 3).
    check_privileges()?;
    lift_memlock_limit(); // kernels before 5.11 count BPF maps against it
    let offsets = sock_offsets()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets:?}");
    let mut ebpf = EbpfLoader::new()
        .override_global(SOCK_OFFSETS_SYMBOL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(explain_load_failure)?;

    // 2. New: one perf buffer per CPU, instead of aya-log's ring of log records. Opened before
    //    attaching, so that no event is missed.
    let (_events, mut buffers) = open_perf_buffers(&mut ebpf)?;

    // 3. Attach: the first path in `--attach` that this kernel accepts, now with its return side.
    let path = attach_first_path_that_works(&mut ebpf, options.attach)?;
    if path == AttachPath::Tracepoint {
        eprintln!("{SYSCALL_TAX_LINE}"); // new
    }

    // 4. Print each event as a table row, until Ctrl-C, SIGTERM or the end of `--duration`.
    let mut stop = StopSignals::install(options.duration)?;
    println!(
        "{:<7} {:<16} {:<11} {:<7} {:<8} {:<40} {:<6} RESULT",
        "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT"
    );
    eprintln!("{READY_LINE}");
    let mut counts = Counts::default();
    let reason = loop {
        // Wait, in the runtime's epoll, until one CPU's ring has something (or a stop).
        let any_ready = select_all(
            buffers
                .iter_mut()
                .map(|buffer| Box::pin(buffer.readable_mut())),
        );
        tokio::select! {
            reason = stop.wait() => break reason,
            (ready, _, _) = any_ready => {
                let mut ready = ready.context("cannot wait for the perf buffers")?;
                // Cleared before reading: an event that arrives while we read wakes us again.
                ready.clear_ready();
                print_events(ready.get_inner_mut(), &mut counts);
            }
        }
    };
    for buffer in &mut buffers {
        print_events(buffer.get_mut(), &mut counts); // what arrived before the stop
    }
    eprintln!(
        "{} events received, {} lost (the kernel had no room for them in a CPU's buffer)",
        counts.received, counts.lost
    );

    // 5. Detach: dropping `ebpf` closes every link and program fd, and the kernel frees them.
    drop(ebpf);
    eprintln!("{reason}: detached from the {path} and unloaded the programs");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: sock_offsets_lookup
/// Where this kernel keeps each field the kernel side reads, found in its BTF (lesson 2).
/// New: `net_somaxconn`, `task_files`, `files_fdt`, `fdtable_max_fds`, `fdtable_fd`,
/// `file_private_data`, `socket_file`.
fn sock_offsets() -> anyhow::Result<SockOffsets> {
    let btf = KernelBtf::of_running_kernel()?;
    Ok(SockOffsets {
        socket_sk: btf.field_offset("socket", &["sk"], POINTER)?,
        sk_max_ack_backlog: btf.field_offset("sock", &["sk_max_ack_backlog"], 4)?,
        sk_protocol: btf.field_offset("sock", &["sk_protocol"], 2)?,
        skc_family: btf.field_offset("sock", &["__sk_common", "skc_family"], 2)?,
        skc_rcv_saddr: btf.field_offset("sock", &["__sk_common", "skc_rcv_saddr"], 4)?,
        skc_v6_rcv_saddr: btf.field_offset("sock", &["__sk_common", "skc_v6_rcv_saddr"], 16)?,
        inet_sport: btf.field_offset("inet_sock", &["inet_sport"], 2)?,
        skc_net: btf.field_offset("sock", &["__sk_common", "skc_net", "net"], POINTER)?,
        net_ns_inum: btf.field_offset("net", &["ns", "inum"], 4)?,
        net_somaxconn: btf.field_offset("net", &["core", "sysctl_somaxconn"], 4)?,
        task_files: btf.field_offset("task_struct", &["files"], POINTER)?,
        files_fdt: btf.field_offset("files_struct", &["fdt"], POINTER)?,
        fdtable_max_fds: btf.field_offset("fdtable", &["max_fds"], 4)?,
        fdtable_fd: btf.field_offset("fdtable", &["fd"], POINTER)?,
        file_private_data: btf.field_offset("file", &["private_data"], POINTER)?,
        socket_file: btf.field_offset("socket", &["file"], POINTER)?,
    })
}
// ANCHOR_END: sock_offsets_lookup

// ANCHOR: perf_open
/// Takes the `EVENTS` map out of the object and opens a buffer for each online CPU: a ring of
/// `PAGES_PER_CPU` pages that the kernel and we share through mmap, registered in the map at that
/// CPU's index. A program writes to the ring of the CPU it runs on. Each buffer is watched with
/// tokio's `AsyncFd`: the kernel wakes its fd when an event arrives.
fn open_perf_buffers(
    ebpf: &mut Ebpf,
) -> anyhow::Result<(PerfEventArray<MapData>, Vec<AsyncFd<PerfEventArrayBuffer>>)> {
    let mut events = PerfEventArray::try_from(
        ebpf.take_map("EVENTS")
            .context("the eBPF object has no map EVENTS")?,
    )?;
    let cpus = online_cpus().map_err(|(path, error)| anyhow!("cannot read {path}: {error}"))?;
    let mut buffers = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        let buffer = PerfEventArrayBuffer::open(cpu, PAGES_PER_CPU)
            .with_context(|| format!("cannot open a perf buffer on CPU {cpu}"))?;
        events.set(cpu, &buffer)?;
        // SAFETY: the buffer owns its perf fd and keeps it open for as long as the `AsyncFd` lives.
        let watched = unsafe { AsyncFd::register_with_interest(buffer, Interest::READABLE) }
            .context("cannot watch a perf buffer")?;
        buffers.push(watched);
    }
    // The map must stay open too: the kernel side writes through it.
    Ok((events, buffers))
}
// ANCHOR_END: perf_open

// ANCHOR: perf_read
/// How many events arrived, and how many the kernel dropped because a ring was full.
#[derive(Default)]
struct Counts {
    received: u64,
    lost: u64,
}

/// Prints every event waiting in `buffer` as a row. The kernel reports the events it had to drop as
/// a count, in the ring itself, once there is room again.
fn print_events(buffer: &mut PerfEventArrayBuffer, counts: &mut Counts) {
    buffer.for_each(|sample| match sample {
        PerfEvent::Sample { head, tail } => {
            counts.received += 1;
            print_row(&event_from(head, tail));
        }
        PerfEvent::Lost { count } => {
            counts.lost += count;
            eprintln!("lost {count} events: a CPU's perf buffer was full");
        }
    });
}

/// A sample's bytes, `head` then `tail` (non-empty when the sample wraps around the end of the
/// ring), copied into an event. The kernel pads samples to 8 bytes: the padding is ignored.
fn event_from(head: &[u8], tail: &[u8]) -> ListenEvent {
    let mut bytes = [0u8; size_of::<ListenEvent>()];
    let from_head = head.len().min(bytes.len());
    bytes[..from_head].copy_from_slice(&head[..from_head]);
    let from_tail = (bytes.len() - from_head).min(tail.len());
    bytes[from_head..from_head + from_tail].copy_from_slice(&tail[..from_tail]);
    // SAFETY: `ListenEvent` is plain data (`aya::Pod`): any bytes are a valid value.
    unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) }
}

/// One row of the table: the fields of the event, the address and name as people read them.
fn print_row(event: &ListenEvent) {
    let addr: IpAddr = if event.family == AF_INET6 {
        Ipv6Addr::from(event.addr).into()
    } else {
        let [a, b, c, d, ..] = event.addr;
        Ipv4Addr::new(a, b, c, d).into()
    };
    // The thread's name, up to its first NUL. Any bytes can be a name (`prctl(PR_SET_NAME)`), so
    // they are read as UTF-8 lossily, never assumed to be text.
    let name = event
        .comm
        .split(|&byte| byte == 0)
        .next()
        .unwrap_or_default();
    let comm = String::from_utf8_lossy(name);
    let proto = match (event.protocol == IPPROTO_MPTCP, event.family == AF_INET6) {
        (false, false) => "TCPv4",
        (false, true) => "TCPv6",
        (true, false) => "MPTCPv4",
        (true, true) => "MPTCPv6",
    };
    println!(
        "{:<7} {:<16} {:<11} {:<7} {:<8} {:<40} {:<6} {}",
        event.pid,
        comm,
        event.netns,
        proto,
        event.backlog,
        addr.to_string(),
        event.port,
        result_text(event)
    );
}

/// New: the call's result as people read it: `ok`, the error's name (`EADDRINUSE`), or `-` where
/// the program did not see the call end.
fn result_text(event: &ListenEvent) -> String {
    match (event.has_result, event.result) {
        (0, _) => "-".into(),
        (_, 0) => "ok".into(),
        (_, result) => format!("{:?}", nix::errno::Errno::from_raw(-result)),
    }
}
// ANCHOR_END: perf_read

// ANCHOR: attach
/// Tries the attach paths of `--attach` in order (`auto`: kprobe, fentry, tracepoint) and keeps the
/// first that this kernel accepts, saying for each one that failed why.
fn attach_first_path_that_works(ebpf: &mut Ebpf, mode: AttachMode) -> anyhow::Result<AttachPath> {
    let mut failures = Vec::new();
    for &path in mode.candidates() {
        let attached = if path == AttachPath::Tracepoint {
            prepare_syscall_tracepoints().and_then(|()| load_and_attach(ebpf, programs(path)))
        } else {
            load_and_attach(ebpf, programs(path))
        };
        match attached {
            Ok(mut attached) => {
                // New: MPTCP's pair of programs, where this kernel has MPTCP.
                match load_and_attach(ebpf, mptcp_programs(path)) {
                    Ok(mptcp) => attached.extend(mptcp),
                    Err(error) => {
                        unload(ebpf, mptcp_programs(path));
                        eprintln!("{path}: MPTCP listens are not traced ({error:#})");
                    }
                }
                eprintln!("{}", attached_line(path, &attached));
                return Ok(path);
            }
            Err(error) => {
                unload(ebpf, programs(path)); // only the programs in use stay in the kernel
                let reason = explain_attach_failure(path, &error);
                eprintln!("{path}: not available: {reason}");
                failures.push((path, reason));
            }
        }
    }
    Err(no_path_attached(mode, &failures))
}

/// New: each path's programs (`ebpf/src/main.rs`) and what each hooks. Each return side is attached
/// before its entry side: a call that passed an entry side attached first could return before its
/// return side was attached, and leave an entry in `CALLS` that no return takes.
fn programs(path: AttachPath) -> &'static [(&'static str, &'static str)] {
    match path {
        AttachPath::Kprobe => &[
            ("listen_kretprobe", LISTEN_FUNCTION),
            ("listen_kprobe", LISTEN_FUNCTION),
        ],
        // One program: fexit sees the arguments and the result together.
        AttachPath::Fentry => &[("listen_fexit", LISTEN_FUNCTION)],
        // New: the system call's exit and entry, and the state change for a socket that starts
        // listening without a `listen()` system call.
        AttachPath::Tracepoint => &[
            ("listen_sys_exit", SYSCALL_EXIT_TRACEPOINT),
            ("listen_sys_enter", SYSCALL_ENTER_TRACEPOINT),
            ("listen_tracepoint", STATE_TRACEPOINT),
        ],
    }
}

/// The same for `mptcp_listen()`. The tracepoint path sees an MPTCP `listen()` system call as any
/// other.
fn mptcp_programs(path: AttachPath) -> &'static [(&'static str, &'static str)] {
    match path {
        AttachPath::Kprobe => &[
            ("mptcp_kretprobe", MPTCP_LISTEN_FUNCTION),
            ("mptcp_kprobe", MPTCP_LISTEN_FUNCTION),
        ],
        AttachPath::Fentry => &[
            ("mptcp_fexit", MPTCP_LISTEN_FUNCTION),
            ("mptcp_fentry", MPTCP_LISTEN_FUNCTION),
        ],
        AttachPath::Tracepoint => &[],
    }
}

/// Looks each program up in the object, loads it into the kernel (where the verifier checks it)
/// and attaches it to what it hooks. Returns their names and the kernel's ids for them.
fn load_and_attach(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> anyhow::Result<Vec<(&'static str, u32)>> {
    let mut attached = Vec::new();
    for &(name, hook) in programs {
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?;
        let id = match program {
            // A kprobe or, new, a kretprobe: the object says which; both attach to a function.
            Program::KProbe(kprobe) => {
                kprobe.load()?;
                kprobe.attach(hook, 0)?;
                kprobe.info()?.id()
            }
            // A BPF trampoline: the verifier checks the program against the function's type,
            // which it finds in the kernel's BTF.
            Program::FEntry(fentry) => {
                fentry.load(hook, &Btf::from_sys_fs()?)?;
                fentry.attach()?;
                fentry.info()?.id()
            }
            // New: the trampoline's return hook.
            Program::FExit(fexit) => {
                fexit.load(hook, &Btf::from_sys_fs()?)?;
                fexit.attach()?;
                fexit.info()?.id()
            }
            // New: a tracepoint of the `syscalls` group (a perf-event tracepoint, found in tracefs).
            Program::TracePoint(tracepoint) => {
                tracepoint.load()?;
                tracepoint.attach("syscalls", hook)?;
                tracepoint.info()?.id()
            }
            // A raw tracepoint: the tracepoint's own arguments, without tracefs.
            Program::RawTracePoint(tracepoint) => {
                tracepoint.load()?;
                tracepoint.attach(hook)?;
                tracepoint.info()?.id()
            }
            program => bail!("{name} is a {:?} program", program.prog_type()),
        };
        attached.push((name, id));
    }
    Ok(attached)
}

/// Unloads the programs of a path that did not work out (those that never loaded are fine).
fn unload(ebpf: &mut Ebpf, programs: &[(&'static str, &'static str)]) {
    for &(name, _) in programs {
        let _ = match ebpf.program_mut(name) {
            Some(Program::KProbe(kprobe)) => kprobe.unload(),
            Some(Program::FEntry(fentry)) => fentry.unload(),
            Some(Program::FExit(fexit)) => fexit.unload(),
            Some(Program::TracePoint(tracepoint)) => tracepoint.unload(),
            Some(Program::RawTracePoint(tracepoint)) => tracepoint.unload(),
            _ => Ok(()),
        };
    }
}

/// New: the syscall tracepoints are perf-event tracepoints: their ids come from tracefs, which is
/// mounted here when it is missing. Their fields must sit where the kernel side reads them.
fn prepare_syscall_tracepoints() -> anyhow::Result<()> {
    let tracefs = mount_tracefs()?;
    for (tracepoint, fields) in [
        (
            SYSCALL_ENTER_TRACEPOINT,
            &[
                ("fd", SYSCALL_ENTER_FD_OFFSET),
                ("backlog", SYSCALL_ENTER_BACKLOG_OFFSET),
            ][..],
        ),
        (
            SYSCALL_EXIT_TRACEPOINT,
            &[("ret", SYSCALL_EXIT_RET_OFFSET)][..],
        ),
    ] {
        let format = tracefs
            .join("events/syscalls")
            .join(tracepoint)
            .join("format");
        let text = std::fs::read_to_string(&format).with_context(|| {
            format!(
                "cannot read {}: this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)",
                format.display()
            )
        })?;
        for &(field, offset) in fields {
            check_tracepoint_field(&text, field, offset)
                .with_context(|| format!("{}", format.display()))?;
        }
    }
    Ok(())
}
// ANCHOR_END: attach

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_says_ok_the_error_or_that_the_end_was_not_seen() {
        let mut event = sample_event();
        assert_eq!(result_text(&event), "EADDRINUSE");
        event.result = 0;
        assert_eq!(result_text(&event), "ok");
        event.has_result = 0;
        assert_eq!(result_text(&event), "-");
    }

    fn sample_event() -> ListenEvent {
        ListenEvent {
            pid: 4321,
            netns: 4026531840,
            backlog: 7,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"xtask\0\0\0\0\0\0\0\0\0\0\0",
            port: 4242,
            family: common::AF_INET,
            protocol: common::IPPROTO_TCP,
            result: -98,
            has_result: 1,
        }
    }

    #[test]
    fn the_event_has_no_padding() {
        assert_eq!(size_of::<ListenEvent>(), 4 * 4 + 16 + 16 + 4 * 2);
    }

    #[test]
    fn a_sample_is_read_exactly_in_one_piece_or_wrapped_around_the_ring() {
        let event = sample_event();
        // SAFETY: plain data; reading its bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(&event).cast::<u8>(), size_of::<ListenEvent>())
        };
        let mut padded = bytes.to_vec();
        padded.extend([0xee; 8]); // the kernel's padding, which is not ours
        assert_eq!(event_from(&padded, &[]), event);
        for split in [1, 7, 8, 31, 32, size_of::<ListenEvent>() - 1] {
            let (head, tail) = padded.split_at(split);
            assert_eq!(event_from(head, tail), event, "split at {split}");
        }
    }
}
