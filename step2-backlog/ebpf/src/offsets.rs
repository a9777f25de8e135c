// ANCHOR: sock_offsets
/// Where this kernel keeps the fields the kernel side reads: bytes from the start of each struct,
/// which differ from kernel to kernel. Userspace looks each one up in the running kernel's BTF
/// (`sock_offsets()` in `src/main.rs`) and writes them into the program's read-only global
/// `SOCK_OFFSETS` before loading it. Both sides compile this file (the userspace side
/// includes it with `#[path]`), so they cannot disagree on its layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct sock`: `sk_max_ack_backlog`, the backlog `listen()` set.
    pub sk_max_ack_backlog: u32,
    /// `struct sock`: `sk_protocol`, `IPPROTO_TCP` or `IPPROTO_MPTCP` for the sockets we report.
    pub sk_protocol: u32,
}
// ANCHOR_END: sock_offsets

impl SockOffsets {
    /// Placeholder values in the compiled program, replaced by the loader.
    pub const UNSET: Self = Self {
        sk_max_ack_backlog: 0,
        sk_protocol: 0,
    };
}
