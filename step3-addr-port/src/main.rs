//! Lesson 3, userspace side: lesson 2, with the offsets of the fields the kernel side reads now
//! too; the lesson is in the kernel side.

// The struct offsets: the kernel side reads them, this side looks them up (`UNSET` is the
// kernel side's).
#[allow(dead_code)]
#[path = "../ebpf/src/offsets.rs"]
mod offsets;

use std::io::Write as _;

use anyhow::Context as _;
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{FEntry, KProbe, Program, RawTracePoint},
};
use aya_log::EbpfLogger;
use clap::Parser as _;
use common::{
    LISTEN_FUNCTION, READY_LINE, SOCK_OFFSETS_SYMBOL, STATE_TRACEPOINT,
    user::{
        AttachMode, AttachPath, KernelBtf, Options, POINTER, Report, StopSignals, attached_line,
        check_privileges, explain_attach_failure, explain_load_failure, lift_memlock_limit,
        no_path_attached,
    },
};
use offsets::SockOffsets;
use tokio::io::{Interest, unix::AsyncFd};

// SAFETY: `repr(C)`, `u32`s only, no padding: any bytes are a valid value.
unsafe impl aya::Pod for SockOffsets {}

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
    print_log_records_on_stdout();

    // 1. Load the object: aya creates its maps now; each program is loaded when we attach it.
    //    New: where this kernel keeps the fields we read, from its BTF, written into the object's
    //    read-only global SOCK_OFFSETS first, so that the verifier sees them as constants.
    check_privileges()?;
    lift_memlock_limit(); // kernels before 5.11 count BPF maps against it
    let offsets = sock_offsets()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets:?}");
    let mut ebpf = EbpfLoader::new()
        .override_global(SOCK_OFFSETS_SYMBOL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(explain_load_failure)?;

    // 2. aya-log: what the kernel side logs with `info!` arrives in a map of the object. Take it
    //    before attaching, so that no record is missed, and watch it with tokio.
    let logger = EbpfLogger::init(&mut ebpf).context("the eBPF object has no aya-log map")?;
    // SAFETY: the logger owns the map's fd and keeps it open for as long as `log_records` lives.
    let mut log_records = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .context("cannot watch the log map")?;

    // 3. Attach: the first path in `--attach` that this kernel accepts (see below).
    let path = attach_first_path_that_works(&mut ebpf, options.attach)?;

    // 4. Print each record as it comes, until Ctrl-C, SIGTERM or the end of `--duration`.
    let mut stop = StopSignals::install(options.duration)?;
    eprintln!("{READY_LINE}");
    let reason = loop {
        tokio::select! {
            reason = stop.wait() => break reason,
            ready = log_records.readable_mut() => {
                let mut ready = ready.context("cannot wait for the log map")?;
                ready.get_inner_mut().flush(); // hands every waiting record to the `log` crate
                ready.clear_ready();
            }
        }
    };
    log_records.get_mut().flush(); // what arrived before the stop

    // 5. Detach: dropping `ebpf` closes every link and program fd, and the kernel frees them.
    drop(ebpf);
    eprintln!("{reason}: detached from the {path} and unloaded the programs");
    Ok(())
}
// ANCHOR_END: main

// ANCHOR: sock_offsets_lookup
/// Where this kernel keeps each field the kernel side reads, found in its BTF (lesson 2).
/// New: `socket_sk`, `skc_family`, `skc_rcv_saddr`, `skc_v6_rcv_saddr`, `inet_sport`.
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
    })
}
// ANCHOR_END: sock_offsets_lookup

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

/// Prints log records on standard output, one line each: the kernel program's messages (`info`) as
/// they are, anything else with its level and origin. Status lines go to standard error.
/// `RUST_LOG` changes the level as usual.
fn print_log_records_on_stdout() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stdout)
        .format(|buf, record| {
            let time = buf.timestamp_millis();
            match record.level() {
                log::Level::Info => writeln!(buf, "{time} {}", record.args()),
                level => writeln!(buf, "{time} {level} {}: {}", record.target(), record.args()),
            }
        })
        .init();
}
