// ANCHOR: listen_event
/// One `listen()`, as the kernel side sends it through the ring buffer and the userspace side
/// reads it back. Both sides compile this one file (the userspace side includes it with
/// `#[path]`), so they cannot disagree on the layout.
///
/// `repr(C)`, and ordered so that the compiler adds no padding: every byte the kernel side copies
/// into the buffer is one it wrote (the verifier and `aya::Pod` both want that).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenEvent {
    /// The process: its thread group id, which `ps` calls the PID.
    pub pid: u32,
    /// The inode of the socket's network namespace: N in the `net:[N]` of `/proc/PID/ns/net`.
    pub netns: u32,
    /// The backlog, as in lesson 2.
    pub backlog: u32,
    /// What `listen()` returned, 0 or `-errno`; meaningful only where `has_result` is 1.
    pub result: i32,
    /// The bound address as the kernel stores it: IPv4 in the first 4 bytes, or IPv6 in all 16.
    pub addr: [u8; 16],
    /// The calling thread's name (`comm`), padded with NULs.
    pub comm: [u8; 16],
    /// The local port, in host byte order (lesson 3).
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP`, or `IPPROTO_MPTCP` for an MPTCP socket (262: it needs 16 bits).
    pub protocol: u16,
    /// 1 where the program saw the call end (its return), 0 where it did not (the
    /// tracepoint path, which sees a socket start listening, not the call).
    pub has_result: u16,
}
// ANCHOR_END: listen_event
