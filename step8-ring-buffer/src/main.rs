//! Lesson 8, userspace side: lesson 7's events, now through one BPF ring buffer that every CPU
//! shares, instead of a perf buffer per CPU: one ring to watch, whose size does not grow with the
//! number of CPUs.

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

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{CgroupArray, MapData, RingBuf},
    programs::{CgroupAttachMode, Program},
};
use clap::Parser as _;
use common::{
    AF_INET6, IPPROTO_MPTCP, LISTEN_FUNCTION, MPTCP_LISTEN_FUNCTION, READY_LINE,
    SOCK_OFFSETS_SYMBOL, STATE_TRACEPOINT, SYSCALL_ENTER_BACKLOG_OFFSET, SYSCALL_ENTER_FD_OFFSET,
    SYSCALL_ENTER_TRACEPOINT, SYSCALL_EXIT_RET_OFFSET, SYSCALL_EXIT_TRACEPOINT, SYSCALL_TAX_LINE,
    user::{
        AttachPath, KernelBtf, Options, POINTER, Report, StopReason, StopSignals, ToolAttachMode,
        ToolPath, attached_line, check_privileges, check_tracepoint_field, explain_load_failure,
        explain_tool_attach_failure, lift_memlock_limit, mount_tracefs, no_tool_path_attached,
        open_cgroup2_root,
    },
};
use event::ListenEvent;
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

/// What the sock_ops program hooks: the root of the cgroup2 hierarchy, every socket's cgroup.
const CGROUP2_ROOT: &str = "the cgroup2 root";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Report> {
    // --attach auto|kprobe|fentry|tracepoint|sockops, --duration SECS
    let options = Options::<ToolAttachMode>::parse();

    // 1. Load the object, with this kernel's struct offsets written into it (lessons 2 and 3).
    check_privileges()?;
    lift_memlock_limit(); // kernels before 5.11 count BPF maps against it
    let offsets = sock_offsets()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets:?}");
    let mut ebpf = EbpfLoader::new()
        .override_global(SOCK_OFFSETS_SYMBOL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(explain_load_failure)?;

    // 2. New: one BPF ring buffer for every CPU, instead of a perf buffer per CPU (lesson 4).
    let mut events = RingBuffer::open(&mut ebpf)?;

    // 3. Attach: the first path in `--attach` that this kernel accepts.
    let path = attach_first_path_that_works(&mut ebpf, options.attach)?;
    if path == ToolPath::Exact(AttachPath::Tracepoint) {
        eprintln!("{SYSCALL_TAX_LINE}");
    }

    // 4. Print each event as a table row, until Ctrl-C, SIGTERM or the end of `--duration`.
    let mut stop = StopSignals::install(options.duration)?;
    println!(
        "{:<7} {:<16} {:<11} {:<7} {:<8} {:<40} {:<6} RESULT",
        "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT"
    );
    eprintln!("{READY_LINE}");
    let reason = events.read_until_stopped(&mut stop).await?;
    events.drain(); // what arrived before the stop
    eprintln!(
        "{} events received (a ring buffer does not say how many it had no room for)",
        events.received
    );

    // 5. Detach: dropping `ebpf` closes every link and program fd, and the kernel frees them.
    drop(ebpf);
    eprintln!("{reason}: detached from the {path} and unloaded the programs");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: sock_offsets_lookup
/// Where this kernel keeps each field the kernel side reads, found in its BTF (lesson 2).
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
        task_tgid: btf.field_offset("task_struct", &["tgid"], 4)?,
        task_pid: btf.field_offset("task_struct", &["pid"], 4)?,
        task_comm: btf.field_offset("task_struct", &["comm"], 16)?,
        sock_ops_sk: btf.field_offset("bpf_sock_ops_kern", &["sk"], POINTER)?,
    })
}
// ANCHOR_END: sock_offsets_lookup

// ANCHOR: ring_open
/// New: one BPF ring buffer shared by every CPU and watched with tokio's `AsyncFd`. The kernel
/// wakes us when an event arrives in a ring we had read to its end.
struct RingBuffer {
    ring: AsyncFd<RingBuf<MapData>>,
    /// How many events we read.
    received: u64,
}

impl RingBuffer {
    /// Takes the `EVENTS` map of the object, a ring buffer, and watches it.
    fn open(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .context("the eBPF object has no map EVENTS")?,
        )?;
        // SAFETY: the ring owns its map fd and keeps it open for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .context("cannot watch the ring buffer")?;
        Ok(Self { ring, received: 0 })
    }
    // ANCHOR_END: ring_open

    // ANCHOR: ring_read
    /// Prints every event until `stop` fires. Returns why it stopped.
    async fn read_until_stopped(&mut self, stop: &mut StopSignals) -> anyhow::Result<StopReason> {
        loop {
            // Wait, in the runtime's epoll, until the ring has something (or a stop).
            tokio::select! {
                reason = stop.wait() => return Ok(reason),
                ready = self.ring.readable_mut() => {
                    // Cleared before reading: an event that arrives while we read wakes us again.
                    ready.context("cannot wait for the ring buffer")?.clear_ready();
                    self.drain();
                }
            }
        }
    }

    /// Prints every event waiting in the ring as a row, copying each out once.
    fn drain(&mut self) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            self.received += 1;
            if let Some(event) = event_from(&item) {
                print_row(&event);
            }
        }
    }
}

/// An item's bytes, copied into an event. A ring buffer's item is in one piece (the kernel maps the
/// ring twice in a row, so an item that wraps around its end reads on), and its length is the one
/// the kernel side gave: a shorter one is refused, never read past.
fn event_from(item: &[u8]) -> Option<ListenEvent> {
    let bytes = item.get(..size_of::<ListenEvent>())?;
    // SAFETY: `ListenEvent` is plain data (`aya::Pod`), and `bytes` holds exactly one.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) })
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

/// The call's result as people read it: `ok`, the error's name (`EADDRINUSE`), or `-` where
/// the program did not see the call end.
fn result_text(event: &ListenEvent) -> String {
    match (event.has_result, event.result) {
        (0, _) => "-".into(),
        (_, 0) => "ok".into(),
        (_, result) => format!("{:?}", nix::errno::Errno::from_raw(-result)),
    }
}
// ANCHOR_END: ring_read

// ANCHOR: attach
/// Tries the attach paths of `--attach` in order (`auto`: kprobe, fentry, tracepoint) and keeps the
/// first that this kernel accepts, saying for each one that failed why.
fn attach_first_path_that_works(ebpf: &mut Ebpf, mode: ToolAttachMode) -> anyhow::Result<ToolPath> {
    let mut failures = Vec::new();
    for &path in mode.candidates() {
        let attached = if path == ToolPath::Exact(AttachPath::Tracepoint) {
            prepare_syscall_tracepoints().and_then(|()| load_and_attach(ebpf, programs(path)))
        } else {
            load_and_attach(ebpf, programs(path))
        };
        match attached {
            Ok(mut attached) => {
                // MPTCP's pair of programs, where this kernel has MPTCP.
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
                let reason = explain_tool_attach_failure(path, &error);
                eprintln!("{path}: not available: {reason}");
                failures.push((path, reason));
            }
        }
    }
    Err(no_tool_path_attached(mode, &failures))
}

/// Each path's programs (`ebpf/src/main.rs`) and what each hooks. Each return side is attached
/// before its entry side: a call that passed an entry side attached first could return before its
/// return side was attached, and leave an entry in `CALLS` that no return takes.
fn programs(path: ToolPath) -> &'static [(&'static str, &'static str)] {
    let path = match path {
        ToolPath::Exact(path) => path,
        // The kernel calls the sock_ops program once a socket listens; the state change tells
        // a start that failed. The sock_ops program first: a start the state change keeps then
        // always finds it attached.
        ToolPath::Sockops => {
            return &[
                ("listen_sockops", CGROUP2_ROOT),
                ("sockops_tracepoint", STATE_TRACEPOINT),
            ];
        }
    };
    match path {
        AttachPath::Kprobe => &[
            ("listen_kretprobe", LISTEN_FUNCTION),
            ("listen_kprobe", LISTEN_FUNCTION),
        ],
        // One program: fexit sees the arguments and the result together.
        AttachPath::Fentry => &[("listen_fexit", LISTEN_FUNCTION)],
        // The system call's exit and entry, and the state change for a socket that starts
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
fn mptcp_programs(path: ToolPath) -> &'static [(&'static str, &'static str)] {
    let ToolPath::Exact(path) = path else {
        return &[]; // the sockops path tells an MPTCP socket by its start
    };
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
            // A kprobe or a kretprobe: the object says which; both attach to a function.
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
            // The trampoline's return hook.
            Program::FExit(fexit) => {
                fexit.load(hook, &Btf::from_sys_fs()?)?;
                fexit.attach()?;
                fexit.info()?.id()
            }
            // A tracepoint of the `syscalls` group (a perf-event tracepoint, found in tracefs).
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
            // A cgroup's sock_ops program. From Linux 5.7 aya attaches it with a BPF link,
            // which sits beside the cgroup's other programs whatever the mode and holds the
            // cgroup, so its directory can be closed at once.
            Program::SockOps(sock_ops) => {
                let root = open_cgroup2_root()?;
                sock_ops.load()?;
                sock_ops.attach(&root, CgroupAttachMode::Single)?;
                let id = sock_ops.info()?.id();
                // The state tracepoint, attached next, keeps a start only for a thread of this
                // cgroup, whose sockets the sock_ops program hears of.
                CgroupArray::try_from(
                    ebpf.map_mut("ATTACHED_CGROUP")
                        .context("the eBPF object has no map ATTACHED_CGROUP")?,
                )?
                .set(0, root, 0)?;
                id
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
            Some(Program::SockOps(sock_ops)) => sock_ops.unload(),
            _ => Ok(()),
        };
    }
}

/// The syscall tracepoints are perf-event tracepoints: their ids come from tracefs, which is
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
    fn an_item_is_read_whole_and_a_short_one_is_refused() {
        let event = sample_event();
        // SAFETY: plain data; reading its bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(&event).cast::<u8>(), size_of::<ListenEvent>())
        };
        assert_eq!(event_from(bytes), Some(event));
        assert_eq!(event_from(&bytes[..bytes.len() - 1]), None);
    }
}
