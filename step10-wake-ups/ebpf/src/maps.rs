//! What the kernel side keeps and the userspace side reads too: the counters. Both sides compile
//! this file, as `event.rs`.

/// The counters (a per-CPU array, `COUNTERS`), read at exit: what did not become a row.
/// Events the ring buffer had no room for.
pub const COUNTER_DROPPED: u32 = 0;
/// How many counters there are.
pub const COUNTER_COUNT: u32 = 1;
