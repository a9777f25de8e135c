//! Lesson 1, userspace side: load the kernel program, attach it to `listen()`, and print what it logs.
//! The plumbing lives in `common::user`; what is left here is the life cycle, top to bottom.

use clap::Parser as _;
use common::user::{
    EbpfLogPrinter, Options, Report, attach_listen_probe, detach, init_event_output, load_ebpf,
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

    let mut ebpf = load_ebpf(EBPF_OBJECT)?; // creates the maps; the programs load when attached
    let mut logs = EbpfLogPrinter::new(&mut ebpf)?; // reads what `info!` sends from the kernel
    let probe = attach_listen_probe(&mut ebpf, options.attach)?;

    let reason = logs.print_until_stopped(options.duration).await?;
    detach(ebpf, &probe, reason);
    Ok(())
}
// ANCHOR_END: main
