// ANCHOR: sock_offsets
/// Where this kernel keeps the fields the kernel side reads: bytes from the start of each struct,
/// which differ from kernel to kernel. Userspace looks each one up in the running kernel's BTF
/// (`sock_offsets()` in `src/main.rs`) and writes them into the program's read-only global
/// `SOCK_OFFSETS` before loading it. Both sides compile this file (the userspace side
/// includes it with `#[path]`), so they cannot disagree on its layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct socket`: `sk`, the `struct sock *` behind the socket.
    pub socket_sk: u32,
    /// `struct sock`: `sk_max_ack_backlog`, the backlog `listen()` set.
    pub sk_max_ack_backlog: u32,
    /// `struct sock`: `sk_protocol`, `IPPROTO_TCP` or `IPPROTO_MPTCP` for the sockets we report.
    pub sk_protocol: u32,
    /// `struct sock`: `__sk_common.skc_family`, `AF_INET` or `AF_INET6`.
    pub skc_family: u32,
    /// `struct sock`: `__sk_common.skc_rcv_saddr`, the bound IPv4 address (network byte order).
    pub skc_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr`, the bound IPv6 address.
    pub skc_v6_rcv_saddr: u32,
    /// `struct inet_sock`, which starts with `struct sock`: `inet_sport`, the local port (network
    /// byte order).
    pub inet_sport: u32,
    /// New: `struct sock`: `__sk_common.skc_net.net`, the socket's network namespace (`struct net
    /// *`).
    pub skc_net: u32,
    /// New: `struct net`: `ns.inum`, the namespace's inode number.
    pub net_ns_inum: u32,
}
// ANCHOR_END: sock_offsets

impl SockOffsets {
    /// Placeholder values in the compiled program, replaced by the loader.
    pub const UNSET: Self = Self {
        socket_sk: 0,
        sk_max_ack_backlog: 0,
        sk_protocol: 0,
        skc_family: 0,
        skc_rcv_saddr: 0,
        skc_v6_rcv_saddr: 0,
        inet_sport: 0,
        skc_net: 0,
        net_ns_inum: 0,
    };
}
