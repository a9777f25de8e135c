//! What the eBPF programs of lessons 2 to 4 share: the struct offsets userspace hands in, and a way
//! to read a kernel struct's field at such an offset.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};

use crate::SockOffsets;

/// The offsets of the running kernel's struct fields, written by the loader before the program is
/// loaded (see [`crate::SOCK_OFFSETS_SYMBOL`]); a read-only global, so the verifier sees constants.
#[unsafe(no_mangle)]
pub static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNSET);

/// Reads the `T` that sits `offset` bytes into the kernel struct at `base`. The kernel's memory
/// cannot be dereferenced directly from a tracing program: `bpf_probe_read_kernel` copies it, and
/// fails (instead of crashing) if the address is bad.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: the helper checks the address; a bad one gives an error, never a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}
