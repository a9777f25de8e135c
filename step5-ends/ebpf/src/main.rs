//! Lesson 5, kernel side: lesson 4's events, with each `listen()` call followed to its end. An entry
//! program sees the arguments, but not what the call did: a return program sees the result and the
//! port the kernel picked. The two are paired per thread through a hash map. MPTCP sockets listen
//! through `mptcp_listen()`, which is hooked the same way, so that they are reported once.
#![no_std]
#![no_main]

mod event;
mod offsets;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
    maps::{HashMap, PerfEventArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use common::{AF_INET6, IPPROTO_TCP, TCP_LISTEN, port_from_network_order};
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
/// A call on its way: what the entry program saw, kept for the return program.
#[derive(Clone, Copy)]
struct Call {
    sock: u64,
    backlog: u32,
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
        let _ = calls.insert(&bpf_get_current_pid_tgid(), &Call { sock, backlog }, 0);
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

/// The tracepoint path sees a socket start listening, inside the call: not its end. Its events
/// have no result (lesson 6 follows the `listen()` system call to its end instead).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN && is_tcp(sk) {
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
