//! What the eBPF programs of lessons 2 to 4 share: the struct offsets userspace hands in, a way to
//! read a kernel struct's field at such an offset, and (lesson 4) a perf output that counts drops.

use core::{mem::size_of, ptr};

#[cfg(target_arch = "bpf")]
use aya_ebpf::macros::map;
use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_F_CURRENT_CPU,
    helpers::{bpf_perf_event_output, bpf_probe_read_kernel},
    maps::{PerCpuArray, PerfEventArray},
};

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

/// Events that a perf buffer had no room for, per CPU. The kernel tells userspace about such drops
/// only when room frees up again (a `PERF_RECORD_LOST` in the ring), so the last drops of a burst
/// would go unreported: counting every failed output here gives the exact number.
#[cfg_attr(target_arch = "bpf", map)]
pub static DROPPED_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sends `event` to this CPU's ring of `events`, and counts it in [`DROPPED_EVENTS`] if the ring
/// is full.
#[inline(always)]
pub fn output_counting_drops<T>(ctx: &impl EbpfContext, events: &PerfEventArray<T>, event: &T) {
    // aya's `PerfEventArray::output` discards the helper's result, which says whether the event
    // fit; `PerfEventArray` is the map's definition itself (`repr(transparent)`), so its address is
    // the map.
    // SAFETY: a map and an event that live for the whole call; the helper copies the event.
    let result = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            ptr::from_ref(events).cast_mut().cast(),
            BPF_F_CURRENT_CPU,
            ptr::from_ref(event).cast_mut().cast(),
            size_of::<T>() as u64,
        )
    };
    if result < 0
        && let Some(dropped) = DROPPED_EVENTS.get_ptr_mut(0)
    {
        // SAFETY: this CPU's own slot of a per-CPU array; nothing else writes it meanwhile.
        unsafe { *dropped += 1 };
    }
}
