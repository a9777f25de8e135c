// ANCHOR: listen_event
/// One `listen()`, as the kernel side sends it through the ring buffer and the userspace side reads
/// it back. Both sides compile this one file (the userspace side includes it with `#[path]`), so
/// they cannot disagree on the layout. New: the time, the thread, and the attach path that saw the
/// call.
///
/// `repr(C)`, and ordered so that the compiler adds no padding: every byte the kernel side copies
/// into the buffer is one it wrote (the verifier and `aya::Pod` both want that).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenEvent {
    /// When the kernel side made the event, in nanoseconds since boot (`bpf_ktime_get_boot_ns`, a
    /// clock that keeps counting while the machine sleeps); userspace turns it into a time of day.
    pub time_ns: u64,
    /// The process: its thread group id, which `ps` calls the PID.
    pub pid: u32,
    /// The thread that called `listen()`.
    pub tid: u32,
    /// The inode of the socket's network namespace: N in the `net:[N]` of `/proc/PID/ns/net`.
    pub netns: u32,
    /// The backlog the kernel uses.
    pub backlog: u32,
    /// The bound address as the kernel stores it: IPv4 in the first 4 bytes, or IPv6 in all 16.
    pub addr: [u8; 16],
    /// The calling thread's name (`comm`), padded with NULs.
    pub comm: [u8; 16],
    /// `listen()`'s result, 0 or `-errno`; meaningful when `has_result` is 1.
    pub result: i32,
    /// The local port, in host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// The attach path that saw it: [`ATTACH_KPROBE`], [`ATTACH_FENTRY`], [`ATTACH_TRACEPOINT`] or
    /// [`ATTACH_SOCKOPS`].
    pub attach: u8,
    /// 1 where the program saw `listen()` finish (every path does for a `listen()` system call); 0
    /// for a socket that started listening without a call the program could follow to its end
    /// (io_uring's listen, or a socket of the kernel's own).
    pub has_result: u8,
    /// `IPPROTO_TCP` or `IPPROTO_MPTCP`.
    pub protocol: u16,
    /// Zeros. `time_ns` aligns the struct to 8 bytes, so without these 4 the compiler would add 4
    /// bytes of padding that nobody writes.
    pub reserved: [u8; 4],
}
// ANCHOR_END: listen_event

/// Values of [`ListenEvent::attach`].
pub const ATTACH_KPROBE: u8 = 1;
pub const ATTACH_FENTRY: u8 = 2;
pub const ATTACH_TRACEPOINT: u8 = 3;
/// The sockops path: a cgroup's `sock_ops` program.
pub const ATTACH_SOCKOPS: u8 = 4;
