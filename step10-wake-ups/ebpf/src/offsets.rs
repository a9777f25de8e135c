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
    /// `struct sock`: `__sk_common.skc_net.net`, the socket's network namespace (`struct net *`).
    pub skc_net: u32,
    /// `struct net`: `ns.inum`, the namespace's inode number.
    pub net_ns_inum: u32,
    /// `struct net`: `core.sysctl_somaxconn`, the cap `listen()` puts on a backlog.
    pub net_somaxconn: u32,
    /// From a file descriptor to its socket, for the end of a `listen()` system call: `struct
    /// task_struct`: `files`.
    pub task_files: u32,
    /// `struct files_struct`: `fdt`, the table of open files.
    pub files_fdt: u32,
    /// `struct fdtable`: `max_fds`, its size.
    pub fdtable_max_fds: u32,
    /// `struct fdtable`: `fd`, the array of `struct file *`.
    pub fdtable_fd: u32,
    /// `struct file`: `private_data`, the `struct socket *` of a socket's file.
    pub file_private_data: u32,
    /// `struct socket`: `file`, which points back to the file of a real socket.
    pub socket_file: u32,
    /// Who called, for the sockops path, whose programs may not ask the helpers: `struct
    /// task_struct`: `tgid`, the process.
    pub task_tgid: u32,
    /// `struct task_struct`: `pid`, the thread.
    pub task_pid: u32,
    /// `struct task_struct`: `comm`, the thread's name.
    pub task_comm: u32,
    /// `struct bpf_sock_ops_kern`: `sk`, the socket a `sock_ops` program is called for.
    pub sock_ops_sk: u32,
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
        net_somaxconn: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_max_fds: 0,
        fdtable_fd: 0,
        file_private_data: 0,
        socket_file: 0,
        task_tgid: 0,
        task_pid: 0,
        task_comm: 0,
        sock_ops_sk: 0,
    };
}
