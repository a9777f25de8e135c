//! Lesson 4, kernel side: lesson 3 + the network namespace, sent as one structured event through a
//! perf buffer instead of a log line.
//!
//! The kprobe and fentry paths now also hook the return of `inet_listen()`, to report its result.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_F_CURRENT_CPU,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_perf_event_output},
    macros::{fexit, kprobe, kretprobe, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerfEventArray},
    programs::{FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use common::{
    AF_INET6, ATTACH_FENTRY, ATTACH_KPROBE, ATTACH_TRACEPOINT, ListenEvent, ListenFilter,
    SockOffsets, TCP_LISTEN, kernel::read_field, port_from_network_order,
};

/// Where this kernel keeps the fields we read: userspace finds the offsets in the kernel's BTF and
/// writes them here before loading us. A read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);

// ANCHOR: maps
/// The events: userspace reads one ring per CPU.
#[map]
static EVENTS: PerfEventArray<ListenEvent> = PerfEventArray::new(0);

/// Events that a perf buffer had no room for, per CPU. The kernel tells userspace about such drops
/// only when room frees up again (a `PERF_RECORD_LOST` in the ring), so the last drops of a burst
/// would go unreported: counting every failed output here gives the exact number.
#[map]
static DROPPED_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `--pid` and `--netns`, written by userspace before load (0 keeps everything).
#[unsafe(no_mangle)]
static LISTEN_FILTER: Global<ListenFilter> = Global::new(ListenFilter::ANY);
// ANCHOR_END: maps

// ANCHOR: send_event
/// Lesson 3's reads plus the network namespace, as one event, unless a filter drops it.
fn send_event(
    ctx: &impl EbpfContext,
    sk: *const u8,
    backlog: u32,
    attach: u8,
    result: Option<i32>,
) -> Result<(), i32> {
    let offsets = SOCK_OFFSETS.load();
    let filter = LISTEN_FILTER.load();
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32; // the upper half is the process, the lower the thread
    if filter.pid != 0 && filter.pid != pid {
        return Ok(());
    }
    // sk->__sk_common.skc_net.net->ns.inum: the number `ls -l /proc/PID/ns/net` shows.
    let net: *const u8 = read_field(sk, offsets.skc_net)?;
    let netns: u32 = read_field(net, offsets.net_ns_inum)?;
    if filter.netns != 0 && filter.netns != netns {
        return Ok(());
    }
    let family: u16 = read_field(sk, offsets.skc_family)?;
    let addr: [u8; 16] = if family == AF_INET6 {
        read_field(sk, offsets.skc_v6_rcv_saddr)?
    } else {
        let [a, b, c, d]: [u8; 4] = read_field(sk, offsets.skc_rcv_saddr)?;
        [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    };
    let sport: u16 = read_field(sk, offsets.inet_sport)?;
    let event = ListenEvent {
        pid,
        tid: pid_tgid as u32,
        netns,
        backlog,
        addr,
        comm: bpf_get_current_comm()?,
        result: result.unwrap_or(0),
        port: port_from_network_order(sport),
        family,
        attach,
        has_result: result.is_some() as u8,
        padding: [0; 2],
    };
    // No argument limit here: the whole struct goes to the ring of this CPU.
    output_counting_drops(ctx, &event);
    Ok(())
}

/// Sends `event` to this CPU's ring of `EVENTS`, and counts it in `DROPPED_EVENTS` if the ring is
/// full.
fn output_counting_drops(ctx: &impl EbpfContext, event: &ListenEvent) {
    // aya's `PerfEventArray::output` discards the helper's result, which says whether the event
    // fit; `PerfEventArray` is the map's definition itself (`repr(transparent)`), so its address is
    // the map.
    // SAFETY: a map and an event that live for the whole call; the helper copies the event.
    let result = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            ptr::from_ref(&EVENTS).cast_mut().cast(),
            BPF_F_CURRENT_CPU,
            ptr::from_ref(event).cast_mut().cast(),
            size_of::<ListenEvent>() as u64,
        )
    };
    if result < 0
        && let Some(dropped) = DROPPED_EVENTS.get_ptr_mut(0)
    {
        // SAFETY: this CPU's own slot of a per-CPU array; nothing else writes it meanwhile.
        unsafe { *dropped += 1 };
    }
}
// ANCHOR_END: send_event

// ANCHOR: entry_points
/// What the kprobe saw, waiting for the return probe of the same thread.
#[derive(Clone, Copy)]
struct ListenCall {
    sock: u64,
    backlog: u32,
}

/// The kprobe and the kretprobe are two programs: the arguments wait here, per thread (LRU, so that
/// a missed return cannot fill it up).
#[map]
static CALLS: LruHashMap<u64, ListenCall> = LruHashMap::with_max_entries(10_240, 0);

/// `inet_listen(struct socket *sock, int backlog)` starts: keep its arguments for the return.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(backlog)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1)) {
        let _ = CALLS.insert(
            &bpf_get_current_pid_tgid(),
            &ListenCall { sock, backlog },
            0,
        );
    }
    0
}

/// `inet_listen()` returns: now the socket has its port, and we know the result.
#[kretprobe]
pub fn listen_kretprobe(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(call) = unsafe { CALLS.get(&thread) }.copied() {
        let _ = CALLS.remove(&thread);
        let result: i32 = ctx.ret();
        let sk = sock_of(call.sock as *const u8);
        let _ = sk.and_then(|sk| send_event(&ctx, sk, call.backlog, ATTACH_KPROBE, Some(result)));
    }
    0
}

/// The BPF trampoline's return hook sees the arguments and the result together: an fexit
/// program's context holds `inet_listen()`'s two arguments, then its return value.
#[fexit(function = "inet_listen")]
pub fn listen_fexit(ctx: FExitContext) -> i32 {
    let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let _ = sock_of(sock).and_then(|sk| send_event(&ctx, sk, backlog, ATTACH_FENTRY, Some(result)));
    0
}

/// Fires only for a socket that really starts listening: there is no result to report.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_LISTEN {
        let sk: *const u8 = ctx.arg(0);
        let backlog = read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog);
        let _ = backlog.and_then(|backlog| send_event(&ctx, sk, backlog, ATTACH_TRACEPOINT, None));
    }
    0
}

/// `sock->sk`: the `struct sock` behind a `struct socket`.
fn sock_of(sock: *const u8) -> Result<*const u8, i32> {
    read_field(sock, SOCK_OFFSETS.load().socket_sk)
}
// ANCHOR_END: entry_points

/// The kernel lets only GPL-compatible programs use some helpers (for example `bpf_probe_read`).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
