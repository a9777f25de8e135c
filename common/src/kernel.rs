//! What the eBPF programs of lessons 2 to 5 share: a way to read a kernel struct's field at the
//! offset userspace found in the kernel's BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads the `T` that sits `offset` bytes into the kernel struct at `base`. The kernel's memory
/// cannot be dereferenced directly from a tracing program: `bpf_probe_read_kernel` copies it, and
/// fails (instead of crashing) if the address is bad.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: the helper checks the address; a bad one gives an error, never a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}
