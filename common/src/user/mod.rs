//! The userspace plumbing that every step binary shares, so that a step's `main.rs` reads as its life
//! cycle: parse options, load, attach, print events until stopped, detach.

mod attach;
mod ebpf_logs;
mod load;
mod offsets;
mod options;
mod perf_events;
mod report;
mod stop;

pub(crate) use attach::KPROBE_PMU;
pub use attach::{AttachMode, AttachPath, AttachedProbe, attach_listen_probe};
pub use ebpf_logs::{EbpfLogPrinter, init_event_output};
pub use load::{load_ebpf, load_ebpf_with_filter, load_ebpf_with_offsets};
pub use offsets::{KERNEL_BTF, KERNEL_BTF_VARIABLE};
pub use options::Options;
pub use perf_events::{EventCounts, EventSink, PerfEvents};
pub use report::Report;
pub use stop::{READY_LINE, StopReason, detach};
