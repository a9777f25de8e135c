//! Lesson 1, kernel side: say `Hello World!` every time a process starts listening on a TCP socket.
//!
//! `listen()` on a TCP socket (IPv4 or IPv6) ends up in the kernel function `inet_listen()`. We hook
//! it three ways, one program each, and userspace attaches the first one the kernel accepts:
//! a kprobe (the article's choice), an fentry program, and the `sock:inet_sock_set_state` tracepoint.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use aya_log_ebpf::info;
use common::TCP_LISTEN;

// ANCHOR: hello
/// The lesson: one line through aya-log, which userspace prints.
fn say_hello(ctx: &impl EbpfContext) {
    info!(ctx, "Hello World!");
}
// ANCHOR_END: hello

// ANCHOR: entry_points
/// A kprobe on the first instruction of `inet_listen()`: runs on every call.
#[kprobe]
pub fn listen_kprobe(ctx: ProbeContext) -> u32 {
    say_hello(&ctx);
    0
}

/// The same hook through a BPF trampoline (fentry): cheaper than a kprobe, needs the kernel's BTF.
#[fentry(function = "inet_listen")]
pub fn listen_fentry(ctx: FEntryContext) -> i32 {
    say_hello(&ctx);
    0
}

/// A stable tracepoint that fires on every TCP state change. Its arguments are
/// `(const struct sock *sk, int oldstate, int newstate)`; a socket that starts listening moves to
/// `TCP_LISTEN`, so we keep only those. (An MPTCP socket "moves" to `TCP_LISTEN` a second time
/// when it already listens: `oldstate` drops that. Telling protocols apart needs a field of the
/// socket, which lesson 2 learns to read.)
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn listen_tracepoint(ctx: RawTracePointContext) -> i32 {
    let (oldstate, newstate): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    if newstate == TCP_LISTEN && oldstate != TCP_LISTEN {
        say_hello(&ctx);
    }
    0
}
// ANCHOR_END: entry_points

/// The kernel lets only GPL-compatible programs use some helpers (for example `bpf_probe_read`).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// A panic cannot unwind in the kernel: the verifier rejects any path that could reach this
/// handler, which only has to exist for the program to link.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
