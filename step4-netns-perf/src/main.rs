//! Lesson 4, userspace side: lesson 3's life cycle, with structured events read from a perf buffer
//! instead of log lines: take the `EVENTS` map, open one buffer per CPU, watch each with tokio,
//! copy each sample out as a `ListenEvent` (which now carries the network namespace), print it as
//! a table row, and count what the kernel could not fit in a buffer.

// The event struct, from the file the kernel side compiles too.
#[path = "../ebpf/src/event.rs"]
mod event;
// The struct offsets: the kernel side reads them, this side looks them up (`UNSET` is the
// kernel side's).
#[allow(dead_code)]
#[path = "../ebpf/src/offsets.rs"]
mod offsets;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ptr,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        MapData, PerfEventArray,
        perf::{PerfEvent, PerfEventArrayBuffer},
    },
    programs::{FEntry, KProbe, Program, RawTracePoint},
    util::online_cpus,
};
use clap::Parser as _;
use common::{
    AF_INET6, LISTEN_FUNCTION, READY_LINE, SOCK_OFFSETS_SYMBOL, STATE_TRACEPOINT,
    user::{
        AttachMode, AttachPath, KernelBtf, Options, POINTER, Report, StopSignals, attached_line,
        check_privileges, explain_attach_failure, explain_load_failure, lift_memlock_limit,
        no_path_attached,
    },
};
use event::ListenEvent;
use futures_util::future::select_all;
use offsets::SockOffsets;
use tokio::io::{Interest, unix::AsyncFd};

// SAFETY: `repr(C)`, integers and byte arrays, no padding: any bytes are a valid value.
unsafe impl aya::Pod for ListenEvent {}
unsafe impl aya::Pod for SockOffsets {}

// ANCHOR: main
/// The kernel side (`ebpf/src/main.rs`), compiled by `build.rs` and embedded in this binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/",
    env!("CARGO_PKG_NAME"),
    "-ebpf"
));

/// How many pages each CPU's ring of the perf buffer has (a power of two).
const PAGES_PER_CPU: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Report> {
    let options = Options::parse(); // --attach auto|kprobe|fentry|tracepoint, --duration SECS

    // 1. Load the object, with this kernel's struct offsets written into it (lessons 2 and 3).
    check_privileges()?;
    lift_memlock_limit(); // kernels before 5.11 count BPF maps against it
    let offsets = sock_offsets()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets:?}");
    let mut ebpf = EbpfLoader::new()
        .override_global(SOCK_OFFSETS_SYMBOL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(explain_load_failure)?;

    // 2. New: one perf buffer per CPU, instead of aya-log's ring of log records. Opened before
    //    attaching, so that no event is missed.
    let (_events, mut buffers) = open_perf_buffers(&mut ebpf)?;

    // 3. Attach: the first path in `--attach` that this kernel accepts (see below).
    let path = attach_first_path_that_works(&mut ebpf, options.attach)?;

    // 4. Print each event as a table row, until Ctrl-C, SIGTERM or the end of `--duration`.
    let mut stop = StopSignals::install(options.duration)?;
    println!(
        "{:<7} {:<16} {:<11} {:<8} {:<40} PORT",
        "PID", "COMM", "NETNS", "BACKLOG", "ADDR"
    );
    eprintln!("{READY_LINE}");
    let mut counts = Counts::default();
    let reason = loop {
        // Wait, in the runtime's epoll, until one CPU's ring has something (or a stop).
        let any_ready = select_all(
            buffers
                .iter_mut()
                .map(|buffer| Box::pin(buffer.readable_mut())),
        );
        tokio::select! {
            reason = stop.wait() => break reason,
            (ready, _, _) = any_ready => {
                let mut ready = ready.context("cannot wait for the perf buffers")?;
                // Cleared before reading: an event that arrives while we read wakes us again.
                ready.clear_ready();
                print_events(ready.get_inner_mut(), &mut counts);
            }
        }
    };
    for buffer in &mut buffers {
        print_events(buffer.get_mut(), &mut counts); // what arrived before the stop
    }
    eprintln!(
        "{} events received, {} lost (the kernel had no room for them in a CPU's buffer)",
        counts.received, counts.lost
    );

    // 5. Detach: dropping `ebpf` closes every link and program fd, and the kernel frees them.
    drop(ebpf);
    eprintln!("{reason}: detached from the {path} and unloaded the programs");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: sock_offsets_lookup
/// Where this kernel keeps each field the kernel side reads, found in its BTF (lesson 2).
/// New: `skc_net`, `net_ns_inum`.
fn sock_offsets() -> anyhow::Result<SockOffsets> {
    let btf = KernelBtf::of_running_kernel()?;
    Ok(SockOffsets {
        socket_sk: btf.field_offset("socket", &["sk"], POINTER)?,
        sk_max_ack_backlog: btf.field_offset("sock", &["sk_max_ack_backlog"], 4)?,
        sk_protocol: btf.field_offset("sock", &["sk_protocol"], 2)?,
        skc_family: btf.field_offset("sock", &["__sk_common", "skc_family"], 2)?,
        skc_rcv_saddr: btf.field_offset("sock", &["__sk_common", "skc_rcv_saddr"], 4)?,
        skc_v6_rcv_saddr: btf.field_offset("sock", &["__sk_common", "skc_v6_rcv_saddr"], 16)?,
        inet_sport: btf.field_offset("inet_sock", &["inet_sport"], 2)?,
        skc_net: btf.field_offset("sock", &["__sk_common", "skc_net", "net"], POINTER)?,
        net_ns_inum: btf.field_offset("net", &["ns", "inum"], 4)?,
    })
}
// ANCHOR_END: sock_offsets_lookup

// ANCHOR: perf_open
/// Takes the `EVENTS` map out of the object and opens a buffer for each online CPU: a ring of
/// `PAGES_PER_CPU` pages that the kernel and we share through mmap, registered in the map at that
/// CPU's index. A program writes to the ring of the CPU it runs on. Each buffer is watched with
/// tokio's `AsyncFd`: the kernel wakes its fd when an event arrives.
fn open_perf_buffers(
    ebpf: &mut Ebpf,
) -> anyhow::Result<(PerfEventArray<MapData>, Vec<AsyncFd<PerfEventArrayBuffer>>)> {
    let mut events = PerfEventArray::try_from(
        ebpf.take_map("EVENTS")
            .context("the eBPF object has no map EVENTS")?,
    )?;
    let cpus = online_cpus().map_err(|(path, error)| anyhow!("cannot read {path}: {error}"))?;
    let mut buffers = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        let buffer = PerfEventArrayBuffer::open(cpu, PAGES_PER_CPU)
            .with_context(|| format!("cannot open a perf buffer on CPU {cpu}"))?;
        events.set(cpu, &buffer)?;
        // SAFETY: the buffer owns its perf fd and keeps it open for as long as the `AsyncFd` lives.
        let watched = unsafe { AsyncFd::register_with_interest(buffer, Interest::READABLE) }
            .context("cannot watch a perf buffer")?;
        buffers.push(watched);
    }
    // The map must stay open too: the kernel side writes through it.
    Ok((events, buffers))
}
// ANCHOR_END: perf_open

// ANCHOR: perf_read
/// How many events arrived, and how many the kernel dropped because a ring was full.
#[derive(Default)]
struct Counts {
    received: u64,
    lost: u64,
}

/// Prints every event waiting in `buffer` as a row. The kernel reports the events it had to drop as
/// a count, in the ring itself, once there is room again.
fn print_events(buffer: &mut PerfEventArrayBuffer, counts: &mut Counts) {
    buffer.for_each(|sample| match sample {
        PerfEvent::Sample { head, tail } => {
            counts.received += 1;
            print_row(&event_from(head, tail));
        }
        PerfEvent::Lost { count } => {
            counts.lost += count;
            eprintln!("lost {count} events: a CPU's perf buffer was full");
        }
    });
}

/// A sample's bytes, `head` then `tail` (non-empty when the sample wraps around the end of the
/// ring), copied into an event. The kernel pads samples to 8 bytes: the padding is ignored.
fn event_from(head: &[u8], tail: &[u8]) -> ListenEvent {
    let mut bytes = [0u8; size_of::<ListenEvent>()];
    let from_head = head.len().min(bytes.len());
    bytes[..from_head].copy_from_slice(&head[..from_head]);
    let from_tail = (bytes.len() - from_head).min(tail.len());
    bytes[from_head..from_head + from_tail].copy_from_slice(&tail[..from_tail]);
    // SAFETY: `ListenEvent` is plain data (`aya::Pod`): any bytes are a valid value.
    unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) }
}

/// One row of the table: the fields of the event, the address and name as people read them.
fn print_row(event: &ListenEvent) {
    let addr: IpAddr = if event.family == AF_INET6 {
        Ipv6Addr::from(event.addr).into()
    } else {
        let [a, b, c, d, ..] = event.addr;
        Ipv4Addr::new(a, b, c, d).into()
    };
    // The thread's name, up to its first NUL. Any bytes can be a name (`prctl(PR_SET_NAME)`), so
    // they are read as UTF-8 lossily, never assumed to be text.
    let name = event
        .comm
        .split(|&byte| byte == 0)
        .next()
        .unwrap_or_default();
    let comm = String::from_utf8_lossy(name);
    println!(
        "{:<7} {:<16} {:<11} {:<8} {:<40} {}",
        event.pid,
        comm,
        event.netns,
        event.backlog,
        addr.to_string(),
        event.port
    );
}
// ANCHOR_END: perf_read

// ANCHOR: attach
/// Tries the attach paths of `--attach` in order (`auto`: kprobe, fentry, tracepoint) and keeps the
/// first that this kernel accepts, saying for each one that failed why.
fn attach_first_path_that_works(ebpf: &mut Ebpf, mode: AttachMode) -> anyhow::Result<AttachPath> {
    let mut failures = Vec::new();
    for &path in mode.candidates() {
        match load_and_attach(ebpf, path) {
            Ok(program) => {
                eprintln!("{}", attached_line(path, &[program]));
                return Ok(path);
            }
            Err(error) => {
                unload(ebpf, path); // only the program in use stays in the kernel
                let reason = explain_attach_failure(path, &error);
                eprintln!("{path}: not available: {reason}");
                failures.push((path, reason));
            }
        }
    }
    Err(no_path_attached(mode, &failures))
}

/// The kernel side's function for each path (`ebpf/src/main.rs`).
fn program_name(path: AttachPath) -> &'static str {
    match path {
        AttachPath::Kprobe => "listen_kprobe",
        AttachPath::Fentry => "listen_fentry",
        AttachPath::Tracepoint => "listen_tracepoint",
    }
}

/// Looks the program of `path` up in the object, converts it to its type, loads it into the kernel
/// (where the verifier checks it) and attaches it. Returns its name and the kernel's id for it.
fn load_and_attach(ebpf: &mut Ebpf, path: AttachPath) -> anyhow::Result<(&'static str, u32)> {
    let name = program_name(path);
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    let id = match path {
        AttachPath::Kprobe => {
            // The article's hook: a kprobe on the first instruction of inet_listen().
            let kprobe: &mut KProbe = program.try_into()?;
            kprobe.load()?;
            kprobe.attach(LISTEN_FUNCTION, 0)?;
            kprobe.info()?.id()
        }
        AttachPath::Fentry => {
            // A BPF trampoline: the verifier checks the program against the function's type,
            // which it finds in the kernel's BTF.
            let fentry: &mut FEntry = program.try_into()?;
            fentry.load(LISTEN_FUNCTION, &Btf::from_sys_fs()?)?;
            fentry.attach()?;
            fentry.info()?.id()
        }
        AttachPath::Tracepoint => {
            // A raw tracepoint: the tracepoint's own arguments, without tracefs.
            let tracepoint: &mut RawTracePoint = program.try_into()?;
            tracepoint.load()?;
            tracepoint.attach(STATE_TRACEPOINT)?;
            tracepoint.info()?.id()
        }
    };
    Ok((name, id))
}

/// Unloads the program of a path that did not work out (a program that never loaded is fine).
fn unload(ebpf: &mut Ebpf, path: AttachPath) {
    let _ = match ebpf.program_mut(program_name(path)) {
        Some(Program::KProbe(kprobe)) => kprobe.unload(),
        Some(Program::FEntry(fentry)) => fentry.unload(),
        Some(Program::RawTracePoint(tracepoint)) => tracepoint.unload(),
        _ => Ok(()),
    };
}
// ANCHOR_END: attach

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> ListenEvent {
        ListenEvent {
            pid: 4321,
            netns: 4026531840,
            backlog: 7,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"xtask\0\0\0\0\0\0\0\0\0\0\0",
            port: 4242,
            family: common::AF_INET,
        }
    }

    #[test]
    fn the_event_has_no_padding() {
        assert_eq!(size_of::<ListenEvent>(), 3 * 4 + 16 + 16 + 2 * 2);
    }

    #[test]
    fn a_sample_is_read_exactly_in_one_piece_or_wrapped_around_the_ring() {
        let event = sample_event();
        // SAFETY: plain data; reading its bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(&event).cast::<u8>(), size_of::<ListenEvent>())
        };
        let mut padded = bytes.to_vec();
        padded.extend([0xee; 8]); // the kernel's padding, which is not ours
        assert_eq!(event_from(&padded, &[]), event);
        for split in [1, 7, 8, 31, 32, size_of::<ListenEvent>() - 1] {
            let (head, tail) = padded.split_at(split);
            assert_eq!(event_from(head, tail), event, "split at {split}");
        }
    }
}
