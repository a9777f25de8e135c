use std::{fmt, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, sleep_until},
};

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

/// SIGINT, SIGTERM and the optional time limit (`--duration`), installed before the step says it
/// is ready.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    limit: Option<(Instant, Duration)>,
}

impl StopSignals {
    pub fn install(duration: Option<Duration>) -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            limit: duration.map(|duration| (Instant::now() + duration, duration)),
        })
    }

    /// Resolves when it is time to stop. Cancel-safe: it can be raced in a `select!` loop.
    pub async fn wait(&mut self) -> StopReason {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_time_limit_stops() {
        let mut stop = StopSignals::install(Some(Duration::from_secs(3))).unwrap();
        assert_eq!(
            stop.wait().await,
            StopReason::DurationElapsed(Duration::from_secs(3))
        );
    }
}
