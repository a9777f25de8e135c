//! Steps 1 to 3 print what the kernel program logs with `aya-log-ebpf`: the records travel through a
//! ring buffer map (`AYA_LOGS`) and come out here through the `log` crate.

use std::io::Write as _;

use anyhow::Context as _;
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use super::stop::{StopReason, StopSignals};

/// Prints log records on standard output, one line each: the kernel program's messages (`info`) as
/// they are, anything else with its level and origin. Status lines go to standard error.
/// `RUST_LOG` changes the level as usual.
pub fn init_event_output() {
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

/// Reads the kernel program's log records as they arrive.
pub struct EbpfLogPrinter {
    records: AsyncFd<EbpfLogger<&'static dyn log::Log>>,
}

impl EbpfLogPrinter {
    /// Takes the log map of `ebpf`; call it before attaching so that no record is missed.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let logger = EbpfLogger::init(ebpf).context("the eBPF object has no aya-log map")?;
        // SAFETY: the logger owns the map's fd and keeps it open for as long as `records` lives.
        let records =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .context("cannot watch the log map")?;
        Ok(Self { records })
    }

    /// Prints the ready line, then every record until Ctrl-C, SIGTERM or the end of `duration`.
    pub async fn print_until_stopped(
        &mut self,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<StopReason> {
        let mut stop = StopSignals::install(duration)?;
        super::stop::print_ready_line();
        loop {
            tokio::select! {
                reason = stop.wait() => {
                    self.records.get_mut().flush(); // what arrived before the stop
                    return Ok(reason);
                }
                ready = self.records.readable_mut() => {
                    let mut ready = ready.context("cannot wait for log records")?;
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
            }
        }
    }
}
