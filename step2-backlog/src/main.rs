//! Lesson 2, userspace side: lesson 1, plus the struct offsets the kernel side needs.
//! The plumbing lives in `common::user`; what is left here is the life cycle, top to bottom.

use clap::Parser as _;
use common::{
    SockOffsets,
    user::{
        EbpfLogPrinter, Options, Report, attach_listen_probe, detach, init_event_output,
        load_ebpf_with_offsets,
    },
};

// ANCHOR: main
/// The kernel side (`ebpf/src/main.rs`), compiled by `build.rs` and embedded in this binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/",
    env!("CARGO_PKG_NAME"),
    "-ebpf"
));

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Report> {
    let options = Options::parse(); // --attach auto|kprobe|fentry|tracepoint, --duration SECS
    init_event_output();

    // New: where this kernel keeps the fields we read, from its BTF, handed in before loading.
    let offsets = SockOffsets::of_running_kernel()?;
    let mut ebpf = load_ebpf_with_offsets(EBPF_OBJECT, &offsets)?;
    let mut logs = EbpfLogPrinter::new(&mut ebpf)?; // reads what `info!` sends from the kernel
    let probe = attach_listen_probe(&mut ebpf, options.attach)?;

    let reason = logs.print_until_stopped(options.duration).await?;
    detach(ebpf, &probe, reason);
    Ok(())
}
// ANCHOR_END: main
