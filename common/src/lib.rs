//! What both sides of every lesson must agree on, as aya-template's `-common` crate holds it.
//!
//! The crate root is `no_std` and dependency-free, because the eBPF programs compile it too: the
//! names of the hooks, kernel constants and byte order. The `user` feature adds what only the step
//! binaries need: helpers whose subject is not eBPF (the words that explain an attach failure, the
//! BTF member-offset lookup, command-line conventions, stop signals). What one lesson teaches (its
//! event, its struct offsets) lives in that lesson's folder, and what the eBPF programs need beyond
//! these definitions (a panic handler, reading a kernel struct's field) each program has itself,
//! so that a lesson can be copied out on its own.
#![cfg_attr(
    not(any(test, feature = "user", feature = "tracefs", feature = "btf")),
    no_std
)]

#[cfg(feature = "btf")]
pub mod btf;
#[cfg(feature = "tracefs")]
pub mod cgroup2;
#[cfg(feature = "tracefs")]
pub mod tracefs;
#[cfg(feature = "user")]
pub mod user;

/// The kernel function behind `listen()` on TCP sockets (IPv4 and IPv6): the article's hook.
pub const LISTEN_FUNCTION: &str = "inet_listen";

/// The tracepoint that reports TCP state changes; a socket that starts listening enters `TCP_LISTEN`.
pub const STATE_TRACEPOINT: &str = "inet_sock_set_state";

/// Present when the kernel can create kprobes through perf (CONFIG_KPROBES).
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Where the running kernel describes its types (CONFIG_DEBUG_INFO_BTF).
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Names another BTF file for the running kernel: one shipped apart from a kernel built without
/// BTF, or a missing or corrupt file to see how the lessons react.
pub const KERNEL_BTF_VARIABLE: &str = "LISTEN_TRACE_KERNEL_BTF";

/// The line a step prints once it is attached and reading; the tests and xtask wait for it.
pub const READY_LINE: &str = "Ready: waiting for listen() calls. Press Ctrl-C to stop.";

/// What lessons 8 to 14 print before their ready line when they pair the `listen()` system call's
/// tracepoints: what that costs the whole machine, and the path that costs nothing.
pub const SYSCALL_TAX_LINE: &str = "the tracepoint path slows down every system call of this \
    machine while it is attached (a syscall tracepoint makes each one take the kernel's \
    slow path); `--attach sockops` taxes none, but reports no failed listen() \
    other than EADDRINUSE, nor a listen() that only changes the backlog";

/// `TCP_LISTEN` from the kernel's `include/net/tcp_states.h`.
pub const TCP_LISTEN: i32 = 10;

/// `AF_INET` and `AF_INET6` from the kernel's `include/linux/socket.h`: a socket's address family.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `IPPROTO_TCP` and `IPPROTO_MPTCP` from `include/uapi/linux/in.h`: the protocols whose `listen()`
/// the lessons report. An MPTCP socket listens through a TCP socket of its own (its first
/// subflow), which the tracepoint also sees; the protocol tells them apart.
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_MPTCP: u16 = 262;

/// The function behind `listen()` on an MPTCP socket; it does not call `inet_listen()` on recent
/// kernels (and calls it for its subflow on older ones).
pub const MPTCP_LISTEN_FUNCTION: &str = "mptcp_listen";

/// The system call's tracepoints, in the `syscalls` group, which lessons 6 to 14 pair with
/// `inet_sock_set_state` to see the end of each call.
pub const SYSCALL_ENTER_TRACEPOINT: &str = "sys_enter_listen";
pub const SYSCALL_EXIT_TRACEPOINT: &str = "sys_exit_listen";

/// Where the syscall tracepoints keep their fields (their `format` file in tracefs): after 8 bytes
/// of common fields and the syscall number, each argument and the return value is 8 bytes.
pub const SYSCALL_ENTER_FD_OFFSET: usize = 16;
pub const SYSCALL_ENTER_BACKLOG_OFFSET: usize = 24;
pub const SYSCALL_EXIT_RET_OFFSET: usize = 16;

/// The name of the eBPF program's global that holds the struct offsets of its lesson (each lesson's
/// `SockOffsets`, in its `ebpf/src/offsets.rs`), written by userspace before the program is loaded.
pub const SOCK_OFFSETS_SYMBOL: &str = "SOCK_OFFSETS";

/// `EADDRINUSE` from `include/uapi/asm-generic/errno.h` (the same on x86-64 and arm64): the error
/// of a `listen()` whose port another socket holds, which the sockops path reports from the
/// state tracepoint.
pub const EADDRINUSE: i32 = 98;
/// `listen()`'s errors for a descriptor that is not open, or not a socket: the tracepoint path does
/// not look for a socket behind it then.
pub const EBADF: i32 = 9;
pub const ENOTSOCK: i32 = 88;

// ANCHOR: byte_order
/// A port as the kernel stores it in `inet_sport`: in network byte order (big-endian). On a
/// little-endian CPU, port 4242 (0x1092) is stored as the bytes `10 92`, which read back as 0x9210,
/// 37392: swap the bytes to get the port.
pub const fn port_from_network_order(stored: u16) -> u16 {
    u16::from_be(stored)
}
// ANCHOR_END: byte_order

#[cfg(test)]
mod tests {
    use super::*;

    /// What a load of those bytes gives on the CPU we run on, as `bpf_probe_read_kernel` would.
    fn stored_u16(bytes: [u8; 2]) -> u16 {
        u16::from_ne_bytes(bytes)
    }

    #[test]
    fn a_port_is_stored_big_endian() {
        // listen on port 4242: the kernel stores htons(4242), the bytes 0x10 0x92.
        let stored = stored_u16([0x10, 0x92]);
        assert_eq!(port_from_network_order(stored), 4242);
        if cfg!(target_endian = "little") {
            // What the article's `%d` of inet_sport printed on x86: the bytes read the other way.
            assert_eq!(stored, 37392);
            assert_eq!(stored, 0x9210);
        }
        assert_eq!(port_from_network_order(stored_u16([0, 0])), 0);
        assert_eq!(port_from_network_order(stored_u16([0xff, 0xff])), 65535);
    }
}
