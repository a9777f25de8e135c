//! Lesson 4, kernel side: lesson 3 + the network namespace, and one structured event per listen
//! sent through a perf buffer instead of a log line.
//!
//! A log line carries a few arguments (`bpf_trace_printk` takes three); an event is a struct of
//! our own, as large as we need, that userspace reads back field by field.
#![no_std]
#![no_main]

mod event;
mod offsets;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, kprobe, map, raw_tracepoint},
    maps::PerfEventArray,
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
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
/// Lesson 3's reads plus the network namespace, as one event in this CPU's ring.
fn send_event(ctx: &impl EbpfContext, sk: *const u8, backlog: u32) -> Result<(), i32> {
    let offsets = SOCK_OFFSETS.load();
    // New: sk->__sk_common.skc_net.net->ns.inum, the number `ls -l /proc/PID/ns/net` shows.
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
    };
    // No argument limit here: the whole struct is copied into the ring of the CPU we run on. When
    // that ring is full the event is dropped, and the kernel tells the reader how many it dropped.
    EVENTS.output(ctx, &event, 0);
    Ok(())
}
// ANCHOR_END: send_event

// ANCHOR: entry_points
/// `inet_listen(struct socket *sock, int backlog)`: the socket we want is `sock->sk`.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(backlog)) = (ctx.arg::<*const u8>(0), ctx.arg::<u32>(1)) {
        let _ = sock_of(sock).and_then(|sk| send_event(&ctx, sk, backlog));
    }
    0
}

/// The same arguments, through the BPF trampoline.
#[fentry(function = "inet_listen")]
pub fn listen_fentry(ctx: FEntryContext) -> i32 {
    let (sock, backlog): (*const u8, u32) = (ctx.arg(0), ctx.arg(1));
    let _ = sock_of(sock).and_then(|sk| send_event(&ctx, sk, backlog));
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)` gives the socket
/// itself; the backlog is in `sk->sk_max_ack_backlog`, as in lesson 2.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN && is_tcp(sk) {
        let backlog = read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog);
        let _ = backlog.and_then(|backlog| send_event(&ctx, sk, backlog));
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
