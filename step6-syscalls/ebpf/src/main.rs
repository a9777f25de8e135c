//! Lesson 6, kernel side: lesson 5's calls followed to their end, now on the tracepoint path too,
//! for kernels that hide their functions from kprobes and fentry. The `listen()` system call's own
//! tracepoints are paired per thread like a kprobe and its kretprobe; the exit finds the socket
//! behind the file descriptor (fd → file → socket). The state tracepoint stays, for a socket that
//! starts listening outside a `listen()` system call.
#![no_std]
#![no_main]

mod event;
mod offsets;

use core::ptr;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerfEventArray},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use common::{
    AF_INET, AF_INET6, EBADF, ENOTSOCK, IPPROTO_MPTCP, IPPROTO_TCP, SYSCALL_ENTER_BACKLOG_OFFSET,
    SYSCALL_ENTER_FD_OFFSET, SYSCALL_EXIT_RET_OFFSET, TCP_LISTEN, port_from_network_order,
};
use event::ListenEvent;
use offsets::SockOffsets;

/// Where this kernel keeps the fields we read: userspace finds the offsets in the kernel's BTF and
/// writes them here before loading us. A read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);

// ANCHOR: events_map
/// The perf buffer: a map of one ring per CPU, which userspace opens and reads.
#[map]
static EVENTS: PerfEventArray<ListenEvent> = PerfEventArray::new(0);
// ANCHOR_END: events_map

// ANCHOR: send_event
/// Lesson 4's event, now with the call's result where its end was seen (`None`: it was not).
fn send_event(
    ctx: &impl EbpfContext,
    sk: *const u8,
    backlog: u32,
    result: Option<i32>,
) -> Result<(), i32> {
    let offsets = SOCK_OFFSETS.load();
    // sk->__sk_common.skc_net.net->ns.inum, the number `ls -l /proc/PID/ns/net` shows.
    let net: *const u8 = read_field(sk, offsets.skc_net)?;
    let netns: u32 = read_field(net, offsets.net_ns_inum)?;
    let family: u16 = read_field(sk, offsets.skc_family)?;
    let addr: [u8; 16] = if family == AF_INET6 {
        read_field(sk, offsets.skc_v6_rcv_saddr)?
    } else {
        let [a, b, c, d]: [u8; 4] = read_field(sk, offsets.skc_rcv_saddr)?;
        [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    };
    let sport: u16 = read_field(sk, offsets.inet_sport)?;
    let event = ListenEvent {
        // The upper half of pid_tgid is the process, the lower half the thread.
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        netns,
        backlog,
        addr,
        comm: bpf_get_current_comm()?,
        port: port_from_network_order(sport),
        family,
        // New: TCP, or MPTCP (`mptcp_listen()`'s socket is the MPTCP one).
        protocol: read_field(sk, offsets.sk_protocol)?,
        result: result.unwrap_or(0),
        has_result: result.is_some() as u16,
    };
    // No argument limit here: the whole struct is copied into the ring of the CPU we run on. When
    // that ring is full the event is dropped, and the kernel tells the reader how many it dropped.
    EVENTS.output(ctx, &event, 0);
    Ok(())
}
// ANCHOR_END: send_event

// ANCHOR: calls
/// A call on its way: what the entry program saw, kept for the return program. New: on the
/// tracepoint path, `sock` holds the file descriptor, and `file` the file it named at the entry.
#[derive(Clone, Copy)]
struct Call {
    sock: u64,
    backlog: u32,
    file: u64,
}

/// The calls of `inet_listen()` on their way, one per thread (the key is `bpf_get_current_pid_tgid()`:
/// a thread is inside at most one call at a time). A kprobe and a kretprobe are two programs that
/// share nothing else. A full map refuses a call, which is then not reported: lesson 11 counts it.
#[map]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(10_240, 0);

/// The calls of `mptcp_listen()` on their way. An MPTCP socket listens through its first subflow, a
/// TCP socket, so on older kernels `mptcp_listen()` calls `inet_listen()`: that inner call is part
/// of the MPTCP listen, not a listen of its own.
#[map]
static MPTCP_CALLS: HashMap<u64, Call> = HashMap::with_max_entries(10_240, 0);

/// Keeps the call's arguments, `(struct socket *sock, int backlog)`, for its return in this thread.
fn remember(calls: &HashMap<u64, Call>, ctx: &ProbeContext) {
    if let (Some(sock), Some(backlog)) = (ctx.arg(0), ctx.arg(1)) {
        let call = Call {
            sock,
            backlog,
            file: 0,
        };
        let _ = calls.insert(&bpf_get_current_pid_tgid(), &call, 0);
    }
}

/// The call this thread has on its way, removed from `calls` (`None`: it began before we attached).
fn take(calls: &HashMap<u64, Call>) -> Option<Call> {
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
// ANCHOR_END: calls

// ANCHOR: entry_points
/// `inet_listen(struct socket *sock, int backlog)` starts: keep its arguments for the return.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if !in_mptcp_listen() {
        remember(&CALLS, &ctx);
    }
    0
}

/// `inet_listen()` returns: now the socket has its port, and its result is in the return register.
#[kretprobe]
pub fn listen_kretprobe(ctx: RetProbeContext) -> u32 {
    report_return(&CALLS, &ctx)
}

/// `mptcp_listen(struct socket *sock, int backlog)`: the same, for an MPTCP socket.
#[kprobe]
pub fn mptcp_kprobe(ctx: ProbeContext) -> u32 {
    remember(&MPTCP_CALLS, &ctx);
    0
}

#[kretprobe]
pub fn mptcp_kretprobe(ctx: RetProbeContext) -> u32 {
    report_return(&MPTCP_CALLS, &ctx)
}

/// The call this thread has on its way in `calls`, reported with the result the function returns.
fn report_return(calls: &HashMap<u64, Call>, ctx: &RetProbeContext) -> u32 {
    if let Some(call) = take(calls) {
        let result: i32 = ctx.ret();
        let _ = sock_of(call.sock as *const u8)
            .and_then(|sk| send_event(ctx, sk, call.backlog, Some(result)));
    }
    0
}

/// The trampoline's return hook sees the arguments and the result together: an fexit program's
/// context holds `inet_listen()`'s two arguments, then its return value. No map is needed.
#[fexit(function = "inet_listen")]
pub fn listen_fexit(ctx: FExitContext) -> i32 {
    if !in_mptcp_listen() {
        let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
        let _ = sock_of(sock).and_then(|sk| send_event(&ctx, sk, backlog, Some(result)));
    }
    0
}

/// `mptcp_listen()` starts: only so that `listen_fexit` knows that an inner call is part of it.
#[fentry(function = "mptcp_listen")]
pub fn mptcp_fentry(_ctx: FEntryContext) -> i32 {
    let _ = MPTCP_CALLS.insert(
        &bpf_get_current_pid_tgid(),
        &Call {
            sock: 0,
            backlog: 0,
            file: 0,
        },
        0,
    );
    0
}

#[fexit(function = "mptcp_listen")]
pub fn mptcp_fexit(ctx: FExitContext) -> i32 {
    let _ = take(&MPTCP_CALLS);
    let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let _ = sock_of(sock).and_then(|sk| send_event(&ctx, sk, backlog, Some(result)));
    0
}

// ANCHOR: syscalls
/// New: the tracepoint path, where neither kprobes nor trampolines work: the system call
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
        // The file the descriptor names now: at the exit, the same descriptor must still name it.
        let file = file_of_fd(fd as i32).map_or(0, |file| file as u64);
        let call = Call {
            sock: fd as u64,
            backlog: backlog as u32,
            file,
        };
        let _ = CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    }
    0
}

/// The system call returns (`syscalls:sys_exit_listen`): find the socket of its file descriptor,
/// which now has its port, and report it with the result. The kernel has released the descriptor
/// by now, so another thread may have closed it or made it name another file (`dup2`) meanwhile:
/// the call is reported only if the descriptor still names the file it entered with.
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
    if let Ok(file) = file_of_fd(call.sock as i32)
        && file as u64 == call.file
        && let Ok(Some(sock)) = socket_of_file(file)
    {
        let _ = report_syscall(&ctx, sock, call.backlog, result as i32);
    }
    0
}

/// The event of a `listen()` system call on `sock`, with the backlog `listen()` used: the one it was
/// given, capped to the namespace's `net.core.somaxconn` as the kernel does before anything else.
fn report_syscall(
    ctx: &TracePointContext,
    sock: *const u8,
    backlog: u32,
    result: i32,
) -> Result<(), i32> {
    let offsets = SOCK_OFFSETS.load();
    let sk = sock_of(sock)?;
    // Any socket can listen(): keep TCP and MPTCP over IPv4 and IPv6 (a UNIX socket has no port).
    let family: u16 = read_field(sk, offsets.skc_family)?;
    let protocol: u16 = read_field(sk, offsets.sk_protocol)?;
    if (family != AF_INET && family != AF_INET6)
        || (protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP)
    {
        return Ok(());
    }
    let net: *const u8 = read_field(sk, offsets.skc_net)?;
    let somaxconn: u32 = read_field(net, offsets.net_somaxconn)?;
    let backlog = if backlog > somaxconn {
        somaxconn
    } else {
        backlog
    };
    send_event(ctx, sk, backlog, Some(result))
}

/// The `struct file *` behind file descriptor `fd` of the current process:
/// `current->files->fdt->fd[fd]`, null where the descriptor is not open.
fn file_of_fd(fd: i32) -> Result<*const u8, i32> {
    let offsets = SOCK_OFFSETS.load();
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
    let offsets = SOCK_OFFSETS.load();
    let sock: *const u8 = read_field(file, offsets.file_private_data)?;
    if sock.is_null() {
        return Ok(None);
    }
    let back: *const u8 = read_field(sock, offsets.socket_file).unwrap_or(ptr::null());
    Ok((back == file).then_some(sock))
}
// ANCHOR_END: syscalls

/// A socket starts listening outside any `listen()` system call of this thread (new: inside one,
/// the exit reports the call): io_uring's listen, or a socket of the kernel's own. Its end is not
/// seen, so its event has no result.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // SAFETY: only whether an entry exists is used.
    let in_syscall = unsafe { CALLS.get(&bpf_get_current_pid_tgid()) }.is_some();
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN && !in_syscall && is_tcp(sk) {
        let backlog = read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog);
        let _ = backlog.and_then(|backlog| send_event(&ctx, sk, backlog, None));
    }
    0
}

/// `sock->sk`: the `struct sock` behind a `struct socket`.
fn sock_of(sock: *const u8) -> Result<*const u8, i32> {
    read_field(sock, SOCK_OFFSETS.load().socket_sk)
}

/// Whether `sk` is a TCP socket (`sk->sk_protocol`): other protocols use the same state numbers
/// (SCTP's LISTENING is 10 too), and an MPTCP listen changes the state of its own socket (twice)
/// and of its first subflow, a TCP socket (once): keeping TCP keeps one per listen.
fn is_tcp(sk: *const u8) -> bool {
    read_field::<u16>(sk, SOCK_OFFSETS.load().sk_protocol) == Ok(IPPROTO_TCP)
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
