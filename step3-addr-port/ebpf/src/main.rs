//! Lesson 3, kernel side: lesson 2 + the address and port the socket listens on.
//!
//! Both live in the socket, in network byte order. Every entry point now finds the socket
//! (`struct sock`) and hands it over with the backlog.
#![no_std]
#![no_main]

mod offsets;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::bpf_probe_read_kernel,
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use aya_log_ebpf::info;
use common::{AF_INET6, IPPROTO_TCP, TCP_LISTEN, port_from_network_order};
use offsets::SockOffsets;

// ANCHOR: sock_offsets_global
/// Where this kernel keeps the fields we read: userspace finds the offsets in the kernel's BTF and
/// writes them here before loading us. A read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);
// ANCHOR_END: sock_offsets_global

// ANCHOR: say_where
/// The lesson: where the socket listens, shown twice, as the kernel stores it (the article's view:
/// network byte order) and as people read it.
fn say_where(ctx: &impl EbpfContext, sk: *const u8, backlog: u32) -> Result<(), i32> {
    let offsets = SOCK_OFFSETS.load();
    // sk->__sk_common.skc_family: AF_INET or AF_INET6.
    let family: u16 = read_field(sk, offsets.skc_family)?;
    // inet_sk(sk)->inet_sport: the local port, big-endian.
    let sport: u16 = read_field(sk, offsets.inet_sport)?;
    let port = port_from_network_order(sport);
    if family == AF_INET6 {
        // sk->__sk_common.skc_v6_rcv_saddr: 16 bytes, already in reading order.
        let addr: [u8; 16] = read_field(sk, offsets.skc_v6_rcv_saddr)?;
        info!(
            ctx,
            "Listening on [{:i}]:{} with up to {} pending connections! (as stored: inet_sport {})",
            addr,
            port,
            backlog,
            sport
        );
    } else {
        // sk->__sk_common.skc_rcv_saddr: the bound IPv4 address, big-endian.
        let saddr: u32 = read_field(sk, offsets.skc_rcv_saddr)?;
        info!(
            ctx,
            "Listening on {:i}:{} with up to {} pending connections! (as stored: rcv_saddr 0x{:x}, inet_sport {})",
            // As the number whose bytes, most significant first, are the address's (what `{:i}`
            // wants): 127.0.0.1 becomes 0x7f000001.
            u32::from_be(saddr),
            port,
            backlog,
            saddr,
            sport
        );
    }
    Ok(())
}
// ANCHOR_END: say_where

// ANCHOR: entry_points
/// `inet_listen(struct socket *sock, int backlog)`: the socket we want is `sock->sk`.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(backlog)) = (ctx.arg::<*const u8>(0), ctx.arg::<u32>(1)) {
        let _ = sock_of(sock).and_then(|sk| say_where(&ctx, sk, backlog));
    }
    0
}

/// The same arguments, through the BPF trampoline.
#[fentry(function = "inet_listen")]
pub fn listen_fentry(ctx: FEntryContext) -> i32 {
    let (sock, backlog): (*const u8, u32) = (ctx.arg(0), ctx.arg(1));
    let _ = sock_of(sock).and_then(|sk| say_where(&ctx, sk, backlog));
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)` gives the socket
/// itself; the backlog is in `sk->sk_max_ack_backlog`, as in lesson 2.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN && is_tcp(sk) {
        let backlog = read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog);
        let _ = backlog.and_then(|backlog| say_where(&ctx, sk, backlog));
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
