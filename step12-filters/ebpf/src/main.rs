//! Lesson 12, kernel side: lesson 11's events and counters, now with filters applied before anything
//! is sent: a process, a network namespace, a port.
#![no_std]
#![no_main]
// The BPF target has 64-bit atomic adds (`lock xadd`) but no compare-and-swap, so core's
// `AtomicU64::fetch_add` is not offered there: the intrinsic behind it is (aya-build already builds
// with RUSTC_BOOTSTRAP=1).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod event;
mod offsets;
// Some of its items are for the userspace side only.
#[allow(dead_code)]
mod maps;

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, sock_ops, tracepoint},
    maps::{Array, CgroupArray, HashMap, PerCpuArray, RingBuf},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        SockOpsContext, TracePointContext,
    },
};
use common::{
    AF_INET, AF_INET6, EADDRINUSE, EBADF, ENOTSOCK, IPPROTO_MPTCP, IPPROTO_TCP,
    SYSCALL_ENTER_BACKLOG_OFFSET, SYSCALL_ENTER_FD_OFFSET, SYSCALL_EXIT_RET_OFFSET, TCP_LISTEN,
    port_from_network_order,
};
use event::ListenEvent;
use maps::{
    COUNTER_COUNT, COUNTER_DROPPED, COUNTER_END_REPLACED, COUNTER_FD_CHANGED, COUNTER_NO_ROOM,
    COUNTER_UNREADABLE, ListenCall, ListenFilter,
};
use offsets::SockOffsets;

/// Where this kernel keeps the fields we read: userspace finds the offsets in the kernel's BTF and
/// writes them here before loading us. A read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);

// ANCHOR: maps
/// The events, in one ring shared by every CPU (lesson 4 had one per CPU). Userspace sets its
/// size at load time; 4 MiB holds about 50,000 events, whatever the number of CPUs.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Entry 0 is 1 while the reader waits for a wake-up. It sets it before it waits; the
/// event that wakes it sets it back to 0.
#[map]
static READER_WAITS: Array<u32> = Array::with_max_entries(1, 0);

/// What did not become an event, per CPU (`maps::COUNTER_*`): events the ring had no room for,
/// sockets that could not be read, calls whose end was never seen. Nothing else tells userspace
/// about an event a full ring refused: counting every failed output here gives the exact number.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// New: `--pid`, `--netns` and `--port`, written by userspace before load (0 keeps everything).
#[unsafe(no_mangle)]
static LISTEN_FILTER: Global<ListenFilter> = Global::new(ListenFilter::ANY);
// ANCHOR_END: maps

// ANCHOR: send_event
/// Lesson 4's event, with the call's result where its end was seen (`None`: it was not), unless a
/// filter drops it or the socket is not a TCP or MPTCP one. Inlined: a BPF function takes its arguments in 5 registers,
/// and an `Option` takes two.
#[inline(always)]
fn send_event(sk: *const u8, backlog: u32, result: Option<i32>) -> Result<(), i32> {
    send_event_of(Caller::current()?, sk, backlog, result, None)
}

/// The same for the thread `caller`; `protocol` replaces the socket's own where it is the TCP
/// subflow of an MPTCP socket (the sockops path). Inlined: a BPF function takes at most 5
/// arguments.
#[inline(always)]
fn send_event_of(
    caller: Caller,
    sk: *const u8,
    backlog: u32,
    result: Option<i32>,
    protocol: Option<u16>,
) -> Result<(), i32> {
    let offsets = offsets()?;
    // New: each filter is tested as soon as its value is known, before anything else is read.
    let filter = LISTEN_FILTER.load();
    if filter.pid != 0 && filter.pid != caller.pid {
        return Ok(());
    }
    // sk->__sk_common.skc_net.net->ns.inum, the number `ls -l /proc/PID/ns/net` shows.
    let net: *const u8 = read_field(sk, offsets.skc_net)?;
    let netns: u32 = read_field(net, offsets.net_ns_inum)?;
    if filter.netns != 0 && filter.netns != netns {
        return Ok(());
    }
    // Only TCP and MPTCP, over IPv4 or IPv6: never another protocol shown as TCP.
    let family: u16 = read_field(sk, offsets.skc_family)?;
    let protocol: u16 = match protocol {
        Some(protocol) => protocol,
        None => read_field(sk, offsets.sk_protocol)?,
    };
    if (family != AF_INET && family != AF_INET6)
        || (protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP)
    {
        return Ok(());
    }
    let addr: [u8; 16] = if family == AF_INET6 {
        read_field(sk, offsets.skc_v6_rcv_saddr)?
    } else {
        let [a, b, c, d]: [u8; 4] = read_field(sk, offsets.skc_rcv_saddr)?;
        [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    };
    let sport: u16 = read_field(sk, offsets.inet_sport)?;
    let port = port_from_network_order(sport);
    if filter.port != 0 && filter.port != u32::from(port) {
        return Ok(());
    }
    let event = ListenEvent {
        pid: caller.pid,
        netns,
        backlog,
        addr,
        comm: caller.comm,
        port,
        family,
        // TCP, or MPTCP (`mptcp_listen()`'s socket is the MPTCP one).
        protocol,
        result: result.unwrap_or(0),
        has_result: result.is_some() as u16,
    };
    // No argument limit here: the whole struct goes into the ring that every CPU shares.
    output_counting_drops(&event);
    Ok(())
}

/// The thread that called `listen()`: its process, itself, and its name.
#[derive(Clone, Copy)]
struct Caller {
    pid: u32,
    tid: u32,
    comm: [u8; 16],
}

impl Caller {
    /// From the helpers that every tracing program may call.
    fn current() -> Result<Self, i32> {
        let pid_tgid = bpf_get_current_pid_tgid();
        Ok(Self {
            pid: (pid_tgid >> 32) as u32, // the upper half is the process, the lower the thread
            tid: pid_tgid as u32,
            comm: bpf_get_current_comm()?,
        })
    }

    /// From the current task's fields, for a `sock_ops` program: Linux lets those call
    /// `bpf_get_current_pid_tgid()` only from 6.10, and `bpf_get_current_comm()` not at all.
    fn of_current_task() -> Result<Self, i32> {
        let offsets = offsets()?;
        // SAFETY: the helper only returns the address of the current task; we read it with
        // `bpf_probe_read_kernel`, never directly.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        Ok(Self {
            pid: read_field(task, offsets.task_tgid)?,
            tid: read_field(task, offsets.task_pid)?,
            comm: read_field(task, offsets.task_comm)?,
        })
    }
}

/// The offsets userspace wrote, or an error if it did not: a program never reads with unset ones.
/// `Global::load` is a volatile copy of the whole struct (84 bytes): the compiler may neither fold
/// the placeholder values in nor drop the read, so the loader's values are the ones used, and the
/// verifier sees each as a constant of the read-only map. A helper calls this where it needs an
/// offset; the copies cost a few instructions each, far below a `bpf_probe_read_kernel`.
fn offsets() -> Result<SockOffsets, i32> {
    let offsets = SOCK_OFFSETS.load();
    if offsets.resolved == 1 {
        Ok(offsets)
    } else {
        Err(-1)
    }
}

// ANCHOR: output
/// Puts `event` in the ring, and wakes the reader only if it said that it waits (the event that
/// finds `READER_WAITS` at 1 sets it back to 0), or if the ring is a quarter full, so that a burst
/// is read before the ring overflows. A reader that is busy or pausing is not woken: it finds the
/// event when it drains next. Counts the event as dropped if the ring is full.
fn output_counting_drops(event: &ListenEvent) {
    let reader_waits = READER_WAITS.get_ptr_mut(0).is_some_and(|waits| {
        // SAFETY: the map's one entry, which lives as long as the map. Two CPUs that both see 1
        // both wake the reader: one wake-up too many, nothing lost.
        unsafe {
            let waiting = *waits == 1;
            if waiting {
                *waits = 0;
            }
            waiting
        }
    });
    let filling_up =
        EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= EVENTS.query(BPF_RB_RING_SIZE.into()) / 4;
    let wake_up = if reader_waits || filling_up {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output(event, wake_up.into()).is_err() {
        count(COUNTER_DROPPED);
    }
}
// ANCHOR_END: output

/// Adds one to a counter of `COUNTERS`. Atomically: a program can be preempted by another on the
/// same CPU (a tracepoint or fexit program is not protected from that), and a plain `+= 1` could
/// then lose an increment, which would make the loss accounting inexact.
fn count(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a slot of a per-CPU array, which lives as long as the map; every write to it is
        // this atomic add, whose result is unused (so it is the classic `lock xadd`, on any kernel).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(value, 1) };
    }
}

/// Counts a call whose socket could not be read, instead of dropping it silently.
fn count_unreadable(result: Result<(), i32>) {
    if result.is_err() {
        count(COUNTER_UNREADABLE);
    }
}
// ANCHOR_END: send_event

// ANCHOR: entry_points
/// Calls of `inet_listen()` (kprobe path) or of the system call (tracepoint path) on their way, per
/// thread (`maps::ListenCall`): an entry program and a return program are two programs. A plain
/// hash map, not an LRU one: an LRU map would make room by evicting another thread's call without
/// a word, where a full map refuses the insert, which is counted.
#[map]
static CALLS: HashMap<u64, ListenCall> = HashMap::with_max_entries(10_240, 0);

/// The calls of `mptcp_listen()` on their way. An MPTCP socket listens through its first subflow, a
/// TCP socket, so on older kernels `mptcp_listen()` calls `inet_listen()`: that inner call is part
/// of the MPTCP listen, not a listen of its own.
#[map]
static MPTCP_CALLS: HashMap<u64, ListenCall> = HashMap::with_max_entries(10_240, 0);

/// Keeps `call` for the end of the same thread's call. Every call that will not be reported is
/// counted: the one it replaces (whose end was never seen), or `call` itself if the map is full.
fn remember(calls: &HashMap<u64, ListenCall>, call: ListenCall) {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: only whether an entry exists is used.
    if unsafe { calls.get(&thread) }.is_some() {
        count(COUNTER_END_REPLACED); // the call it replaces never ended
    }
    if calls.insert(&thread, &call, 0).is_err() {
        count(COUNTER_NO_ROOM); // the map is full: this call will not be reported
    }
}

/// The call this thread has on its way, removed from `calls` (`None`: it began before we attached).
fn take(calls: &HashMap<u64, ListenCall>) -> Option<ListenCall> {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let call = unsafe { calls.get(&thread) }.copied()?;
    let _ = calls.remove(&thread);
    Some(call)
}

/// Whether this thread is inside `mptcp_listen()`.
fn in_mptcp_listen() -> bool {
    // SAFETY: only whether an entry exists is used.
    unsafe { MPTCP_CALLS.get(&bpf_get_current_pid_tgid()) }.is_some()
}

/// `inet_listen(struct socket *sock, int backlog)` starts: keep its arguments for the return.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(backlog)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1))
        && !in_mptcp_listen()
    {
        remember(&CALLS, ListenCall::new(sock, backlog));
    }
    0
}

/// `inet_listen()` returns: now the socket has its port, and its result is in the return register.
#[kretprobe]
pub fn listen_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some(call) = take(&CALLS) {
        let result: i32 = ctx.ret();
        let sk = sock_of(call.sock as *const u8);
        count_unreadable(sk.and_then(|sk| send_event(sk, call.backlog, Some(result))));
    }
    0
}

/// `mptcp_listen(struct socket *sock, int backlog)`: the same, for an MPTCP socket.
#[kprobe]
pub fn mptcp_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(backlog)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1)) {
        remember(&MPTCP_CALLS, ListenCall::new(sock, backlog));
    }
    0
}

#[kretprobe]
pub fn mptcp_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some(call) = take(&MPTCP_CALLS) {
        let result: i32 = ctx.ret();
        let sk = sock_of(call.sock as *const u8);
        count_unreadable(sk.and_then(|sk| send_event(sk, call.backlog, Some(result))));
    }
    0
}

/// The trampoline's return hook sees the arguments and the result together: an fexit program's
/// context holds `inet_listen()`'s two arguments, then its return value. No map is needed.
#[fexit(function = "inet_listen")]
pub fn listen_fexit(ctx: FExitContext) -> i32 {
    if !in_mptcp_listen() {
        let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
        count_unreadable(sock_of(sock).and_then(|sk| send_event(sk, backlog, Some(result))));
    }
    0
}

/// `mptcp_listen()` starts: only so that `listen_fexit` knows that an inner call is part of it.
#[fentry(function = "mptcp_listen")]
pub fn mptcp_fentry(ctx: FEntryContext) -> i32 {
    let (sock, backlog): (u64, u32) = (ctx.arg(0), ctx.arg(1));
    remember(&MPTCP_CALLS, ListenCall::new(sock, backlog));
    0
}

#[fexit(function = "mptcp_listen")]
pub fn mptcp_fexit(ctx: FExitContext) -> i32 {
    let _ = take(&MPTCP_CALLS);
    let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    count_unreadable(sock_of(sock).and_then(|sk| send_event(sk, backlog, Some(result))));
    0
}

/// The tracepoint path, where neither kprobes nor trampolines work: the system call
/// `listen(int fd, int backlog)` starts (tracepoint `syscalls:sys_enter_listen`).
#[tracepoint]
pub fn listen_sys_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: the tracepoint's fields, at the offsets of its format (checked by userspace).
    let args = unsafe {
        (
            ctx.read_at::<i64>(SYSCALL_ENTER_FD_OFFSET),
            ctx.read_at::<i64>(SYSCALL_ENTER_BACKLOG_OFFSET),
        )
    };
    if let (Ok(fd), Ok(backlog)) = args {
        // The file the descriptor names now: at the exit, the same descriptor must still name it
        // (where it could not be read, the exit counts the call as unreadable, not as changed).
        let file = file_of_fd(fd as i32).map_or(FILE_UNREADABLE, |file| file as u64);
        remember(
            &CALLS,
            ListenCall {
                file,
                ..ListenCall::new(fd as u64, backlog as u32)
            },
        );
    }
    0
}

/// A `ListenCall::file` that could not be read at the entry (no kernel address is this).
const FILE_UNREADABLE: u64 = u64::MAX;

/// The system call returns (`syscalls:sys_exit_listen`): find the socket of its file descriptor,
/// which now has its port, and report it with the result, whether the call worked or not. The
/// kernel has released the descriptor by now, so another thread may have closed it or made it name
/// another file (`dup2`) meanwhile: the file must be the one the call entered with, or the call is
/// counted (`COUNTER_FD_CHANGED`) instead of being reported with another socket.
#[tracepoint]
pub fn listen_sys_exit(ctx: TracePointContext) -> u32 {
    let Some(call) = take(&CALLS) else {
        return 0; // the call began before we attached
    };
    // SAFETY: the tracepoint's field, at the offset of its format (checked by userspace).
    let Ok(result) = (unsafe { ctx.read_at::<i64>(SYSCALL_EXIT_RET_OFFSET) }) else {
        return 0;
    };
    if result == -i64::from(EBADF) || result == -i64::from(ENOTSOCK) {
        return 0; // no socket behind the descriptor: no TCP listen, and nothing to walk to
    }
    if call.file == FILE_UNREADABLE {
        count(COUNTER_UNREADABLE); // the descriptor's file could not be read at the entry
        return 0;
    }
    let file = match file_of_fd(call.sock as i32) {
        Ok(file) => file,
        Err(_) => {
            count(COUNTER_UNREADABLE);
            return 0;
        }
    };
    if file as u64 != call.file {
        count(COUNTER_FD_CHANGED);
        return 0;
    }
    match socket_of_file(file) {
        Ok(Some(sock)) => count_unreadable(report_syscall(sock, call.backlog, result as i32)),
        Ok(None) => {} // not a socket (ENOTSOCK, EBADF): no TCP listen
        Err(_) => count(COUNTER_UNREADABLE),
    }
    0
}

/// The event of a `listen()` system call on `sock`, with the backlog `listen()` used: the one it was
/// given, capped to the namespace's `net.core.somaxconn` as the kernel does before anything else.
fn report_syscall(sock: *const u8, backlog: u32, result: i32) -> Result<(), i32> {
    let offsets = offsets()?;
    let sk = sock_of(sock)?;
    let net: *const u8 = read_field(sk, offsets.skc_net)?;
    let somaxconn: u32 = read_field(net, offsets.net_somaxconn)?;
    let backlog = if backlog > somaxconn {
        somaxconn
    } else {
        backlog
    };
    send_event(sk, backlog, Some(result))
}

/// The `struct file *` behind file descriptor `fd` of the current process:
/// `current->files->fdt->fd[fd]`, null where the descriptor is not open.
fn file_of_fd(fd: i32) -> Result<*const u8, i32> {
    let offsets = offsets()?;
    // SAFETY: the helper only returns the address of the current task; we read it with
    // `bpf_probe_read_kernel`, never directly.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read_field(task, offsets.task_files)?;
    let fdt: *const u8 = read_field(files, offsets.files_fdt)?;
    let max_fds: u32 = read_field(fdt, offsets.fdtable_max_fds)?;
    if fd < 0 || fd as u32 >= max_fds {
        return Ok(ptr::null());
    }
    let fd_array: *const u8 = read_field(fdt, offsets.fdtable_fd)?;
    // The slot's address in 64 bits: a large descriptor times 8 does not fit in 32.
    read_field(fd_array.wrapping_add(fd as usize * size_of::<u64>()), 0)
}

/// The `struct socket *` of `file` (its `private_data`), if the file is a socket's: a socket
/// points back to its file.
fn socket_of_file(file: *const u8) -> Result<Option<*const u8>, i32> {
    if file.is_null() {
        return Ok(None);
    }
    let offsets = offsets()?;
    let sock: *const u8 = read_field(file, offsets.file_private_data)?;
    if sock.is_null() {
        return Ok(None);
    }
    let back: *const u8 = read_field(sock, offsets.socket_file).unwrap_or(ptr::null());
    Ok((back == file).then_some(sock))
}

/// A socket starts listening (`sock:inet_sock_set_state`, entering `TCP_LISTEN`) outside any
/// `listen()` system call of this thread: io_uring's listen, or a socket of the kernel's own. Its
/// end is not seen, so it is reported as such (`has_result` 0), never dropped.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (oldstate, newstate): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    if newstate != TCP_LISTEN || oldstate == TCP_LISTEN {
        return 0; // every other TCP state change of the machine: leave at once
    }
    // SAFETY: only whether an entry exists is used.
    let in_syscall = unsafe { CALLS.get(&bpf_get_current_pid_tgid()) }.is_some();
    if !in_syscall {
        let sk: *const u8 = ctx.arg(0);
        let backlog = offsets().and_then(|offsets| read_field(sk, offsets.sk_max_ack_backlog));
        count_unreadable(backlog.and_then(|backlog| send_event(sk, backlog, None)));
    }
    0
}

// ANCHOR: sockops
/// A start of listening on its way, kept by `sockops_tracepoint` for `listen_sockops` (or for the
/// same thread's failure): the socket, or, for an MPTCP socket, the socket of the MPTCP listen
/// whose TCP subflow starts next.
#[derive(Clone, Copy)]
struct Start {
    sk: u64,
    mptcp: u64,
}

/// The sockops path's starts on their way, per thread. Each leaves within its call:
/// `listen_sockops` takes it when the start succeeds, the state change when it fails, and a
/// thread's next start replaces it.
#[map]
static STARTS: HashMap<u64, Start> = HashMap::with_max_entries(10_240, 0);

/// The cgroup `listen_sockops` is attached to, set by userspace (slot 0). The state tracepoint
/// fires for every thread of the machine, but the sock_ops program hears only of the sockets of
/// that cgroup (a container's, when the program runs in one): a start is kept only for a thread
/// under it, or the start of a thread outside, never taken, would make its close look like a
/// failed start.
#[map]
static ATTACHED_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// The sockops path: the kernel runs the `sock_ops` programs of the socket's cgroup (here the
/// cgroup2 root, so every socket's) with `BPF_SOCK_OPS_TCP_LISTEN_CB` inside `inet_listen()`, once
/// the socket listens: its port is final and the call succeeded. No system call pays for it.
#[sock_ops]
pub fn listen_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_LISTEN_CB {
        count_unreadable(report_sockops(&ctx));
    }
    1 // what a sock_ops program answers when it has nothing to refuse
}

fn report_sockops(ctx: &SockOpsContext) -> Result<(), i32> {
    let offsets = offsets()?;
    // The context is the kernel's `struct bpf_sock_ops_kern`, which holds the socket at the
    // offset its BTF gives: read as an address, it can be read through like on the other paths
    // (the context's `sk` field is a typed pointer, which the verifier lets no program add an
    // offset to).
    let sk: *const u8 = read_field(ctx.as_ptr().cast(), offsets.sock_ops_sk)?;
    let backlog: u32 = read_field(sk, offsets.sk_max_ack_backlog)?;
    let caller = Caller::of_current_task()?;
    // The key `bpf_get_current_pid_tgid()` gives the state tracepoint: process, then thread.
    let thread = (u64::from(caller.pid) << 32) | u64::from(caller.tid);
    // The TCP subflow of an MPTCP socket: the state tracepoint saw the MPTCP socket start first.
    let protocol = take_start(thread)
        .filter(|start| start.sk == sk as u64 && start.mptcp != 0)
        .map(|_| IPPROTO_MPTCP);
    send_event_of(caller, sk, backlog, Some(0), protocol)
}

/// The sockops path's view of `sock:inet_sock_set_state`: a socket that enters `TCP_LISTEN` is a
/// start, which `listen_sockops` reports if it succeeds; if the same thread sees it leave
/// `TCP_LISTEN` before, the port was taken (`inet_csk_listen_start()` failed with `EADDRINUSE`),
/// and that failure is reported here.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sockops_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN {
        if ATTACHED_CGROUP.current_task_under_cgroup(0) != Ok(true) {
            return 0; // a socket the sock_ops program will not hear of
        }
        let protocol = offsets().and_then(|offsets| read_field::<u16>(sk, offsets.sk_protocol));
        let thread = bpf_get_current_pid_tgid();
        let start = if protocol == Ok(IPPROTO_MPTCP) {
            // An MPTCP socket starts: its TCP subflow starts next, in the same thread.
            Start {
                sk: 0,
                mptcp: sk as u64,
            }
        } else {
            // A TCP socket starts: on its own, or as the subflow of the MPTCP socket just seen.
            // SAFETY: one field is copied out at once.
            let mptcp = match unsafe { STARTS.get(&thread) } {
                Some(earlier) if earlier.sk == 0 => earlier.mptcp,
                _ => 0,
            };
            Start {
                sk: sk as u64,
                mptcp,
            }
        };
        if STARTS.insert(&thread, &start, 0).is_err() {
            count(COUNTER_NO_ROOM); // the map is full: a failure of this start would be missed
        }
    } else if oldstate == TCP_LISTEN && newstate != TCP_LISTEN {
        let thread = bpf_get_current_pid_tgid();
        // SAFETY: the value is copied out at once.
        let start = unsafe { STARTS.get(&thread) }.copied();
        if let Some(start) = start
            && start.sk == 0
            && start.mptcp == sk as u64
        {
            // The MPTCP socket's listen ended before its subflow started: its mark goes with it.
            let _ = take_start(thread);
        } else if let Some(start) = start
            && start.sk == sk as u64
        {
            let _ = take_start(thread);
            let protocol = (start.mptcp != 0).then_some(IPPROTO_MPTCP);
            let sent = offsets()
                .and_then(|offsets| read_field(sk, offsets.sk_max_ack_backlog))
                .and_then(|backlog| {
                    let caller = Caller::current()?;
                    let result = Some(-EADDRINUSE);
                    send_event_of(caller, sk, backlog, result, protocol)
                });
            count_unreadable(sent);
        }
    }
    0
}

/// The start of listening `thread` has on its way, removed from `STARTS`.
fn take_start(thread: u64) -> Option<Start> {
    // SAFETY: the value is copied out before the entry is removed.
    let start = unsafe { STARTS.get(&thread) }.copied()?;
    let _ = STARTS.remove(&thread);
    Some(start)
}
// ANCHOR_END: sockops

/// `sock->sk`: the `struct sock` behind a `struct socket`.
fn sock_of(sock: *const u8) -> Result<*const u8, i32> {
    read_field(sock, offsets()?.socket_sk)
}
// ANCHOR_END: entry_points

/// The kernel lets only GPL-compatible programs use some helpers (for example `bpf_probe_read`).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// ANCHOR: read_field
/// Reads the `T` that sits `offset` bytes into the kernel struct at `base`. We have no kernel types
/// in Rust (and no CO-RE relocations): `bpf_probe_read_kernel` copies the bytes, and fails
/// (instead of crashing) if the address is bad.
#[inline(always)]
fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: the helper checks the address; a bad one gives an error, never a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}
// ANCHOR_END: read_field

/// A panic cannot unwind in the kernel: the verifier rejects any path that could reach this
/// handler, which only has to exist for the program to link.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
