//! Lesson 2, kernel side: lesson 1 + the backlog, how many connections may wait to be accepted.
//!
//! Same three entry points as lesson 1. The kprobe and fentry programs find the backlog in the
//! arguments of `inet_listen()`; the tracepoint has no such argument and reads it from the socket.
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
use common::{IPPROTO_TCP, TCP_LISTEN};
use offsets::SockOffsets;

// ANCHOR: sock_offsets_global
/// Where this kernel keeps the fields we read: userspace finds the offsets in the kernel's BTF and
/// writes them here before loading us. A read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);
// ANCHOR_END: sock_offsets_global

// ANCHOR: say_backlog
/// The lesson: report the backlog that the kernel will really use.
fn say_backlog(ctx: &impl EbpfContext, backlog: u32) {
    info!(ctx, "Listening with up to {} pending connections!", backlog);
}
// ANCHOR_END: say_backlog

// ANCHOR: entry_points
/// `inet_listen(struct socket *sock, int backlog)`: the backlog is the second argument, already
/// capped by `listen()` to `net.core.somaxconn`.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(backlog) = ctx.arg::<u32>(1) {
        say_backlog(&ctx, backlog);
    }
    0
}

/// The same argument, through the BPF trampoline.
#[fentry(function = "inet_listen")]
pub fn listen_fentry(ctx: FEntryContext) -> i32 {
    let backlog: u32 = ctx.arg(1);
    say_backlog(&ctx, backlog);
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)` has no backlog, but
/// `inet_listen()` stored it in the socket, `sk->sk_max_ack_backlog`, just before the socket
/// entered `TCP_LISTEN`. Where that field sits differs between kernels: userspace found its offset
/// in this kernel's BTF and wrote it into `SOCK_OFFSETS` before loading us.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (sk, oldstate, newstate): (*const u8, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN
        && oldstate != TCP_LISTEN
        && is_tcp(sk)
        && let Ok(backlog) = read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog)
    {
        say_backlog(&ctx, backlog);
    }
    0
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
