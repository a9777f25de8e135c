//! What the kernel side keeps and the userspace side reads too: the filters, the counters, and a
//! call on its way. Both sides compile this file, as `event.rs`.

/// The filters, applied in the kernel; 0 keeps every value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenFilter {
    /// Only this process (`--pid`).
    pub pid: u32,
    /// Only this network namespace (`--netns`).
    pub netns: u32,
    /// Only this local port (`--port`).
    pub port: u32,
}

impl ListenFilter {
    pub const ANY: Self = Self {
        pid: 0,
        netns: 0,
        port: 0,
    };
}

/// The name of the eBPF program's global that holds the [`ListenFilter`].
pub const LISTEN_FILTER_SYMBOL: &str = "LISTEN_FILTER";

/// The counters (a per-CPU array, `COUNTERS`), read at exit: what did not become a row.
/// Events the ring buffer had no room for.
pub const COUNTER_DROPPED: u32 = 0;
/// Calls whose socket could not be read (a failed `bpf_probe_read_kernel`).
pub const COUNTER_UNREADABLE: u32 = 1;
/// Calls whose end was never seen because the next call of the same thread replaced their entry:
/// their return never came (a kretprobe beyond its `maxactive`).
pub const COUNTER_END_REPLACED: u32 = 2;
/// `listen()` system calls whose file descriptor named another file at the exit than at the entry
/// (another thread closed it or `dup2`ed over it meanwhile): not reported, since the socket at the
/// exit is not the one that listened.
pub const COUNTER_FD_CHANGED: u32 = 3;
/// Calls whose end could not be waited for: the full map of calls (or of sockops starts) refused
/// their entry.
pub const COUNTER_NO_ROOM: u32 = 4;
/// How many counters there are.
pub const COUNTER_COUNT: u32 = 5;

/// A `listen()` on its way, kept by the entry program for its return program, per thread:
/// the arguments of `inet_listen()` or `mptcp_listen()` (`sock` is the `struct socket *`), or of
/// the system call (`sock` is the file descriptor, `file` the `struct file *` it named at the
/// entry). The padding is explicit, so that no byte of a map value is left uninitialised.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCall {
    pub sock: u64,
    pub file: u64,
    pub backlog: u32,
    pub padding: u32,
}

impl ListenCall {
    pub const fn new(sock: u64, backlog: u32) -> Self {
        Self {
            sock,
            file: 0,
            backlog,
            padding: 0,
        }
    }
}
