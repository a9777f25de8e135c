//! Lesson 12, userspace side: lesson 11's events and counts, with filters that the kernel side
//! applies before anything is sent (`--pid`, `--netns`, `--port`): an event filtered out takes no
//! room in the ring and wakes nobody.

// What both sides compile: the event, and the filters, counters and calls of the kernel side's maps.
#[path = "../ebpf/src/event.rs"]
mod event;
// The struct offsets: the kernel side reads them, this side looks them up (`UNSET` is the
// kernel side's).
#[allow(dead_code)]
#[path = "../ebpf/src/offsets.rs"]
mod offsets;
// Some of its items are for the kernel side only.
#[allow(dead_code)]
#[path = "../ebpf/src/maps.rs"]
mod maps;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ptr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, CgroupArray, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, Program},
};
use clap::Parser;
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
use maps::{
    COUNTER_DROPPED, COUNTER_END_REPLACED, COUNTER_FD_CHANGED, COUNTER_NO_ROOM, COUNTER_UNREADABLE,
    LISTEN_FILTER_SYMBOL, ListenCall, ListenFilter,
};
use offsets::SockOffsets;
use tokio::io::{Interest, unix::AsyncFd};

// SAFETY: `repr(C)` structs of integers and byte arrays, without implicit padding (`ListenCall`
// spells its own out): any bytes are a valid value.
unsafe impl aya::Pod for ListenEvent {}
unsafe impl aya::Pod for SockOffsets {}
unsafe impl aya::Pod for ListenCall {}
unsafe impl aya::Pod for ListenFilter {}

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
    let cli = Cli::parse();

    // 1. Load the object, with this kernel's struct offsets written into it (lessons 2 and 3), the
    //    ring's size (`--buffer-pages`, or 4 MiB on any machine) and, new, the filters the kernel
    //    side applies before it sends anything.
    check_privileges()?;
    lift_memlock_limit(); // kernels before 5.11 count BPF maps against it
    let offsets = sock_offsets()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets:?}");
    let filter = ListenFilter {
        pid: cli.pid.unwrap_or(0),
        netns: cli.netns.unwrap_or(0),
        port: cli.port.map_or(0, u32::from),
    };
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
        .map_or(4096, |size| size as usize);
    let ring_bytes = cli
        .buffer_pages
        .map_or(DEFAULT_RING_BYTES.max(page_size), |pages| pages * page_size);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(
            "EVENTS",
            u32::try_from(ring_bytes).context("--buffer-pages is too large")?,
        )
        .override_global(SOCK_OFFSETS_SYMBOL, &offsets, true)
        .override_global(LISTEN_FILTER_SYMBOL, &filter, true)
        .load(EBPF_OBJECT)
        .map_err(explain_load_failure)?;

    // 2. One BPF ring buffer for every CPU, instead of a perf buffer per CPU (lesson 4), with
    //    the kernel side's counters beside it.
    let mut events = RingBuffer::open(&mut ebpf, cli.batch_pause)?;

    // 3. Attach: the first path in `--attach` that this kernel accepts.
    let path = attach_first_path_that_works(&mut ebpf, cli.options.attach)?;
    if path == ToolPath::Exact(AttachPath::Tracepoint) {
        eprintln!("{SYSCALL_TAX_LINE}");
    }

    // 4. Print each event as a table row, until Ctrl-C, SIGTERM or the end of `--duration`.
    let mut stop = StopSignals::install(cli.options.duration)?;
    println!(
        "{:<7} {:<16} {:<11} {:<7} {:<8} {:<40} {:<6} RESULT",
        "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT"
    );
    eprintln!("{READY_LINE}");
    let reason = events.read_until_stopped(&mut stop).await?;

    // 5. Detach: dropping `ebpf` closes every link and program fd, and the kernel frees them. New:
    //    the maps read after that are taken out first, and only then is the rest drained and
    //    counted, so that no event comes between the last drain and the counters.
    let calls = take_calls_maps(&mut ebpf)?;
    drop(ebpf);
    events.drain();
    eprintln!("{}", events.counts(calls_in_flight(&calls)?)?);
    eprintln!("{reason}: detached from the {path} and unloaded the programs");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: sock_offsets_lookup
/// Where this kernel keeps each field the kernel side reads, found in its BTF (lesson 2).
fn sock_offsets() -> anyhow::Result<SockOffsets> {
    let btf = KernelBtf::of_running_kernel()?;
    Ok(SockOffsets {
        resolved: 1,
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
/// One BPF ring buffer shared by every CPU and watched with tokio's `AsyncFd`. The kernel
/// side wakes us only when we said that we wait (`READER_WAITS`), or when the ring fills up; a
/// reader that is busy, or pausing after a burst, is not woken at all. When the ring is full, the
/// event is dropped and counted.
struct RingBuffer {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Entry 0 is 1 while we wait for a wake-up; the kernel side sets it back to 0 when it wakes us.
    reader_waits: Array<MapData, u32>,
    /// The kernel side's counters of what did not become an event (`maps::COUNTER_*`).
    counters: PerCpuArray<MapData, u64>,
    /// `--batch-pause`: after a drain that found a burst, how long events gather before the next.
    batch_pause: Duration,
    received: u64,
}

/// The ring's size without `--buffer-pages`: room for about 50,000 events, shared by every CPU (a
/// perf buffer of 256 pages per CPU took 128 MiB on a machine of 128 CPUs).
const DEFAULT_RING_BYTES: usize = 4 << 20;

/// How long the reader waits for a wake-up at most: one that the kernel side could not send (an
/// event that came just as we said that we wait) waits no longer than this.
const SAFETY_TIMER: Duration = Duration::from_millis(100);

impl RingBuffer {
    /// Takes the `EVENTS` map of the object, a ring buffer, and watches it.
    fn open(ebpf: &mut Ebpf, batch_pause: Duration) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .context("the eBPF object has no map EVENTS")?,
        )?;
        let reader_waits = Array::try_from(
            ebpf.take_map("READER_WAITS")
                .context("the eBPF object has no map READER_WAITS")?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .context("the eBPF object has no map COUNTERS")?,
        )?;
        // SAFETY: the ring owns its map fd and keeps it open for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .context("cannot watch the ring buffer")?;
        Ok(Self {
            ring,
            reader_waits,
            counters,
            batch_pause,
            received: 0,
        })
    }
    // ANCHOR_END: ring_open

    // ANCHOR: ring_read
    /// Prints every event until `stop` fires. Returns why it stopped.
    async fn read_until_stopped(&mut self, stop: &mut StopSignals) -> anyhow::Result<StopReason> {
        // When the last wake-up came, and whether the one before came less than a pause earlier.
        let (mut last_wake_up, mut woken_again_soon) = (None::<Instant>, false);
        let reason = loop {
            let drained = self.drain();
            // Events come fast: a drain found more than one, or a wake-up came soon after the last
            // (on a single CPU the reader, woken at once, finds one event each time). Let more
            // gather, without saying that we wait, so nothing wakes us.
            let burst = drained > 1 || std::mem::take(&mut woken_again_soon);
            if burst && !self.batch_pause.is_zero() {
                tokio::select! {
                    reason = stop.wait() => break reason,
                    () = tokio::time::sleep(self.batch_pause) => continue,
                }
            }
            // About to wait: say so, then look once more, so that an event that came before the
            // kernel side could see it does not wait for the next one.
            self.reader_waits
                .set(0, &1, 0)
                .context("cannot tell the kernel side that the reader waits")?;
            if self.drain() > 0 {
                continue;
            }
            tokio::select! {
                reason = stop.wait() => break reason,
                ready = self.ring.readable_mut() => {
                    ready.context("cannot wait for the ring buffer")?.clear_ready();
                    let now = Instant::now();
                    woken_again_soon = last_wake_up
                        .is_some_and(|last: Instant| now - last < self.batch_pause);
                    last_wake_up = Some(now);
                }
                () = tokio::time::sleep(SAFETY_TIMER) => {}
            }
        };
        // What arrives until the programs are detached is drained after that (`main`).
        Ok(reason)
    }

    /// Prints every event waiting in the ring as a row, copying each out once; returns how many.
    fn drain(&mut self) -> u64 {
        let ring = self.ring.get_mut();
        let mut drained = 0;
        while let Some(item) = ring.next() {
            drained += 1;
            self.received += 1;
            if let Some(event) = event_from(&item) {
                print_row(&event);
            }
        }
        drained
    }

    // ANCHOR: counts
    /// How many events arrived, and what the kernel side counted as not sent: dropped per CPU,
    /// unreadable, and calls whose end was missed (`in_flight`: those still waiting for theirs).
    fn counts(&self, in_flight: u64) -> anyhow::Result<EventCounts> {
        let counter = |index| {
            self.counters
                .get(&index, 0)
                .context("cannot read the kernel side's counters")
        };
        let dropped = counter(COUNTER_DROPPED)?;
        Ok(EventCounts {
            received: self.received,
            lost: dropped
                .iter()
                .enumerate()
                .filter(|(_, lost)| **lost > 0)
                .map(|(cpu, lost)| (cpu as u32, *lost))
                .collect(),
            unreadable: counter(COUNTER_UNREADABLE)?.iter().sum(),
            fd_changed: counter(COUNTER_FD_CHANGED)?.iter().sum(),
            end_missed: EndsMissed {
                in_flight,
                replaced: counter(COUNTER_END_REPLACED)?.iter().sum(),
                no_room: counter(COUNTER_NO_ROOM)?.iter().sum(),
            },
        })
    }
}

/// The kernel side's maps of calls on their way, taken out of the object so that they outlive the
/// programs (see `calls_in_flight`).
fn take_calls_maps(ebpf: &mut Ebpf) -> anyhow::Result<Vec<CallsMap>> {
    ["CALLS", "MPTCP_CALLS"]
        .into_iter()
        .map(|name| {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            Ok(CallsMap::try_from(map)?)
        })
        .collect()
}

type CallsMap = aya::maps::HashMap<MapData, u64, ListenCall>;

/// The calls still waiting for their end once the programs are detached: their return came after.
fn calls_in_flight(maps: &[CallsMap]) -> anyhow::Result<u64> {
    Ok(maps.iter().map(|calls| calls.keys().count() as u64).sum())
}
// ANCHOR_END: counts

/// An item's bytes, copied into an event. A ring buffer's item is in one piece (the kernel maps the
/// ring twice in a row, so an item that wraps around its end reads on), and its length is the one
/// the kernel side gave: a shorter one is refused, never read past.
fn event_from(item: &[u8]) -> Option<ListenEvent> {
    let bytes = item.get(..size_of::<ListenEvent>())?;
    // SAFETY: `ListenEvent` is plain data (`aya::Pod`), and `bytes` holds exactly one.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// How many events arrived and how many the kernel dropped, per CPU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct EventCounts {
    received: u64,
    /// `(cpu, lost)` for each CPU that lost events.
    lost: Vec<(u32, u64)>,
    /// Calls whose socket could not be read.
    unreadable: u64,
    /// System calls whose descriptor named another file at their end than at their start.
    fd_changed: u64,
    /// Calls whose end was never seen, by cause.
    end_missed: EndsMissed,
}

/// Why the end of a call was not seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct EndsMissed {
    /// Still on their way when the programs were detached.
    in_flight: u64,
    /// Replaced by their thread's next call: their return never came (a kretprobe beyond its
    /// `maxactive`).
    replaced: u64,
    /// Refused by a full map of calls, or of sockops starts.
    no_room: u64,
}

impl EndsMissed {
    fn total(&self) -> u64 {
        self.in_flight + self.replaced + self.no_room
    }
}

impl fmt::Display for EventCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_lost: u64 = self.lost.iter().map(|(_, lost)| lost).sum();
        write!(f, "{} events received, {total_lost} lost", self.received)?;
        if !self.lost.is_empty() {
            let per_cpu: Vec<_> = self
                .lost
                .iter()
                .map(|(cpu, lost)| format!("CPU {cpu}: {lost}"))
                .collect();
            write!(
                f,
                " ({}; a larger --buffer-pages keeps more)",
                per_cpu.join(", ")
            )?;
        }
        if self.unreadable > 0 {
            write!(
                f,
                "; {} calls whose socket could not be read",
                self.unreadable
            )?;
        }
        if self.end_missed.total() > 0 {
            let EndsMissed {
                in_flight,
                replaced,
                no_room,
            } = self.end_missed;
            let causes: Vec<String> = [
                (in_flight, "on their way at the stop"),
                (replaced, "replaced by their thread's next call"),
                (no_room, "with no room left to wait"),
            ]
            .into_iter()
            .filter(|(count, _)| *count > 0)
            .map(|(count, cause)| format!("{count} {cause}"))
            .collect();
            write!(
                f,
                "; {} calls whose end was not seen ({})",
                self.end_missed.total(),
                causes.join(", ")
            )?;
        }
        if self.fd_changed > 0 {
            write!(
                f,
                "; {} calls whose file descriptor changed before they ended",
                self.fd_changed
            )?;
        }
        Ok(())
    }
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

// ANCHOR: cli
/// Who starts listening on a TCP port: process, network namespace, address, port, backlog.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    options: Options<ToolAttachMode>,
    /// Only this process (its PID, as `ps` shows it)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Only this network namespace (N in `net:[N]` from `ls -l /proc/PID/ns/net`)
    #[arg(long, value_name = "INODE", value_parser = clap::value_parser!(u32).range(1..))]
    netns: Option<u32>,
    /// Only this local port
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The size of the ring buffer, in pages (a power of two) [default: 4 MiB, whatever the number
    /// of CPUs]
    #[arg(long, value_name = "PAGES", value_parser = power_of_two)]
    buffer_pages: Option<usize>,
    /// After a drain that found a burst, how long events gather before the next: fewer wake-ups
    /// for the programs that call listen() (0: read each at once)
    #[arg(long, value_name = "MS", default_value = "1", value_parser = milliseconds)]
    batch_pause: Duration,
}
// ANCHOR_END: cli

fn milliseconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms <= 1000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "`{text}` is not a number of milliseconds from 0 to 1000"
        )),
    }
}

fn power_of_two(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(pages) if pages.is_power_of_two() => Ok(pages),
        _ => Err(format!(
            "`{text}` is not a power of two (1, 2, 4, … 256, …)"
        )),
    }
}

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

    #[test]
    fn the_summary_says_where_events_were_lost() {
        let mut counts = EventCounts {
            received: 10,
            lost: vec![(1, 7), (0, 2)],
            unreadable: 0,
            end_missed: EndsMissed::default(),
            fd_changed: 0,
        };
        assert_eq!(
            counts.to_string(),
            "10 events received, 9 lost (CPU 1: 7, CPU 0: 2; a larger --buffer-pages keeps more)"
        );
        counts.lost.clear();
        counts.unreadable = 1;
        counts.end_missed.in_flight = 2;
        counts.fd_changed = 3;
        assert_eq!(
            counts.to_string(),
            "10 events received, 0 lost; 1 calls whose socket could not be read; 2 calls whose end \
             was not seen (2 on their way at the stop); 3 calls whose file descriptor changed \
             before they ended"
        );
        counts.end_missed = EndsMissed {
            in_flight: 0,
            replaced: 4,
            no_room: 5,
        };
        assert!(counts.to_string().contains(
            "; 9 calls whose end was not seen (4 replaced by their thread's next call, 5 with no \
             room left to wait)"
        ));
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from(["step8", "--buffer-pages", "16"]).unwrap();
        assert_eq!(cli.buffer_pages, Some(16));
        assert_eq!(cli.batch_pause, Duration::from_millis(1));
        let error = Cli::try_parse_from(["step8", "--buffer-pages", "3"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`3` is not a power of two"), "{error}");
        let cli = Cli::try_parse_from(["step8", "--batch-pause", "0"]).unwrap();
        assert_eq!(cli.batch_pause, Duration::ZERO);
        let error = Cli::try_parse_from(["step8", "--batch-pause", "5s"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a number of milliseconds"), "{error}");
        let cli = Cli::try_parse_from(["step12", "--pid", "42", "--netns", "4026531840"]).unwrap();
        assert_eq!(
            (cli.pid, cli.netns, cli.port),
            (Some(42), Some(4026531840), None)
        );
        assert!(Cli::try_parse_from(["step12", "--pid", "0"]).is_err());
        assert!(Cli::try_parse_from(["step12", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["step12", "--port", "65536"]).is_err());
    }
}
