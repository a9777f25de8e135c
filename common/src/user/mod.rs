//! For the step binaries: helpers whose subject is not eBPF, so that each step's `main.rs` shows
//! every aya call it makes and little else. The words that explain why an attach path failed, the
//! struct offsets from the kernel's BTF, the command line every step shares, the cgroup2 root, the
//! signals that stop a step, and the one-line error report.

mod explain;
mod options;
mod report;
mod stop;

pub use crate::btf::{KernelBtf, POINTER};
pub use crate::cgroup2::open_cgroup2_root;
pub use crate::tracefs::{check_tracepoint_field, mount_tracefs};
pub use explain::{
    AttachMode, AttachPath, ToolAttachMode, ToolPath, attached_line, check_privileges,
    explain_attach_failure, explain_load_failure, explain_tool_attach_failure, lift_memlock_limit,
    no_path_attached, no_tool_path_attached,
};
pub use options::Options;
pub use report::Report;
pub use stop::{StopReason, StopSignals};
