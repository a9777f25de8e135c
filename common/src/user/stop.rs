use std::{fmt, time::Duration};

use anyhow::Context as _;
use aya::Ebpf;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, sleep_until},
};

use super::AttachedProbe;

/// The line a step prints once it is attached and reading; the tests wait for it.
pub const READY_LINE: &str = "Ready: waiting for listen() calls. Press Ctrl-C to stop.";

pub(super) fn print_ready_line() {
    eprintln!("{READY_LINE}");
}

/// Why a step stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Interrupted,
    Terminated,
    DurationElapsed(Duration),
    /// Whoever read the output went away (`| head -1`).
    OutputClosed,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interrupted => write!(f, "stopped by Ctrl-C (SIGINT)"),
            Self::Terminated => write!(f, "stopped by SIGTERM"),
            Self::DurationElapsed(duration) => write!(f, "stopped after {duration:?} (--duration)"),
            Self::OutputClosed => write!(f, "stopped: the output was closed"),
        }
    }
}

/// SIGINT, SIGTERM and the optional time limit, installed before the step says it is ready.
pub(super) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    limit: Option<(Instant, Duration)>,
}

impl StopSignals {
    pub(super) fn install(duration: Option<Duration>) -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            limit: duration.map(|duration| (Instant::now() + duration, duration)),
        })
    }

    /// Resolves when it is time to stop. Cancel-safe: it can be raced in a `select!` loop.
    pub(super) async fn wait(&mut self) -> StopReason {
        let deadline = async {
            match self.limit {
                Some((deadline, duration)) => {
                    sleep_until(deadline).await;
                    StopReason::DurationElapsed(duration)
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.interrupt.recv() => StopReason::Interrupted,
            _ = self.terminate.recv() => StopReason::Terminated,
            reason = deadline => reason,
        }
    }
}

/// Detaches and unloads everything `ebpf` holds (dropping it closes every link and program fd, and
/// the kernel frees what no fd holds any more), then says so.
pub fn detach(ebpf: Ebpf, probe: &AttachedProbe, reason: StopReason) {
    drop(ebpf);
    eprintln!(
        "{reason}: detached from the {} and unloaded the programs",
        probe.path
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_read_well() {
        assert_eq!(
            StopReason::Interrupted.to_string(),
            "stopped by Ctrl-C (SIGINT)"
        );
        assert_eq!(StopReason::Terminated.to_string(), "stopped by SIGTERM");
        assert_eq!(
            StopReason::DurationElapsed(Duration::from_secs(2)).to_string(),
            "stopped after 2s (--duration)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_limit_stops() {
        let mut stop = StopSignals::install(Some(Duration::from_secs(3))).unwrap();
        assert_eq!(
            stop.wait().await,
            StopReason::DurationElapsed(Duration::from_secs(3))
        );
    }
}
