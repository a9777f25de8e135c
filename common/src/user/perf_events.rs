//! Lesson 4 reads its events from a perf buffer: one ring per online CPU, each shared with the
//! kernel through mmap, each watched with tokio's `AsyncFd`. A program writes to the ring of the CPU
//! it runs on; when a ring is full, the kernel drops the sample and counts it as lost.

use std::{fmt, io, mem::size_of, ptr};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    maps::{
        MapData, PerCpuArray, PerfEventArray,
        perf::{PerfEvent, PerfEventArrayBuffer},
    },
    util::online_cpus,
};
use futures_util::future::select_all;
use tokio::io::{Interest, unix::AsyncFd};

use super::stop::{StopReason, StopSignals, print_ready_line};
use crate::ListenEvent;

/// The perf event array map of lesson 4's kernel side.
const EVENTS_MAP: &str = "EVENTS";
/// How long the reader lets events gather after a wake-up before it drains the rings. A ring of the
/// default 256 pages holds about 14,000 events: far more than a CPU can produce in this time.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// The kernel side's count of the events the rings had no room for (`common::kernel`).
const DROPPED_MAP: &str = "DROPPED_EVENTS";

/// Where the events go: a table, JSON lines, a test's collector.
pub trait EventSink {
    /// Writes one event. An error (a closed pipe, for instance) stops the reading.
    fn write(&mut self, event: &ListenEvent) -> io::Result<()>;
    /// Called after each batch of events, so that a buffered sink can write them out.
    fn flush(&mut self) -> io::Result<()>;
}

/// How many events arrived and how many the kernel dropped, per CPU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventCounts {
    pub received: u64,
    /// `(cpu, lost)` for each CPU that lost events.
    pub lost: Vec<(u32, u64)>,
}

impl EventCounts {
    pub fn total_lost(&self) -> u64 {
        self.lost.iter().map(|(_, lost)| lost).sum()
    }
}

impl<S: EventSink + ?Sized> EventSink for Box<S> {
    fn write(&mut self, event: &ListenEvent) -> io::Result<()> {
        (**self).write(event)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

impl fmt::Display for EventCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events received, {} lost",
            self.received,
            self.total_lost()
        )?;
        if !self.lost.is_empty() {
            let per_cpu: Vec<_> = self
                .lost
                .iter()
                .map(|(cpu, lost)| format!("CPU {cpu}: {lost}"))
                .collect();
            write!(
                f,
                " ({}; a larger --buffer-pages keeps more)",
                per_cpu.join(", ")
            )?;
        }
        Ok(())
    }
}

/// One perf buffer per online CPU, registered in the kernel side's `EVENTS` map.
pub struct PerfEvents {
    // Keeps the map's fd; the buffers are registered in it.
    _array: PerfEventArray<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    buffers: Vec<(u32, AsyncFd<PerfEventArrayBuffer>)>,
    pages: usize,
    counts: EventCounts,
}

impl PerfEvents {
    /// Opens a buffer of `pages` pages (a power of two) for each online CPU.
    pub fn open(ebpf: &mut Ebpf, pages: usize) -> anyhow::Result<Self> {
        if !pages.is_power_of_two() {
            bail!("the perf buffer size must be a power of two pages (got {pages})");
        }
        let map = ebpf
            .take_map(EVENTS_MAP)
            .with_context(|| format!("the eBPF object has no map {EVENTS_MAP}"))?;
        let mut array = PerfEventArray::try_from(map)?;
        let dropped = ebpf
            .take_map(DROPPED_MAP)
            .with_context(|| format!("the eBPF object has no map {DROPPED_MAP}"))?;
        let dropped = PerCpuArray::try_from(dropped)?;
        let cpus = online_cpus().map_err(|(path, error)| anyhow!("cannot read {path}: {error}"))?;
        let mut buffers = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let buffer = PerfEventArrayBuffer::open(cpu, pages).with_context(|| {
                format!("cannot open a perf buffer of {pages} pages on CPU {cpu}")
            })?;
            array.set(cpu, &buffer)?;
            // SAFETY: the buffer owns its perf fd and keeps it open for as long as the AsyncFd lives.
            let buffer = unsafe { AsyncFd::register_with_interest(buffer, Interest::READABLE) }
                .context("cannot watch a perf buffer")?;
            buffers.push((cpu, buffer));
        }
        Ok(Self {
            _array: array,
            dropped,
            buffers,
            pages,
            counts: EventCounts::default(),
        })
    }

    /// Prints the ready line, then hands every event to `sink` until Ctrl-C, SIGTERM, the end of
    /// `duration`, or a sink error (a closed pipe ends the run quietly). Returns why it stopped and
    /// the counts.
    pub async fn print_until_stopped(
        &mut self,
        sink: &mut impl EventSink,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<(StopReason, EventCounts)> {
        let mut stop = StopSignals::install(duration)?;
        print_ready_line();
        let reason = loop {
            let any_readable = select_all(
                self.buffers
                    .iter()
                    .map(|(_, buffer)| Box::pin(buffer.readable())),
            );
            tokio::select! {
                reason = stop.wait() => break reason,
                (ready, _, _) = any_readable => {
                    // Clear first: a sample that arrives while we drain wakes us again.
                    ready.context("cannot wait for the perf buffers")?.clear_ready();
                }
            }
            // Let events gather before draining. While this thread sleeps outside `epoll_wait`, a
            // new event has nobody to wake, which spares the program that called listen() a
            // wake-up of this thread on another CPU for every event (on the 2-core VM the lessons
            // are measured on: 4.5x the cost of an untraced listen() without the pause, 3.2x with).
            // A blocking sleep on purpose: tokio's would wait in `epoll_wait`, where every event
            // wakes it again. Signals wait at most this long.
            std::thread::sleep(BATCH_PAUSE);
            if let Err(error) = self.drain(sink) {
                break closed_or_fail(error)?;
            }
        };
        // What arrived before the stop.
        if let Err(error) = self.drain(sink) {
            closed_or_fail(error)?;
        }
        // The exact losses, from the kernel side's own count (see `common::kernel::DROPPED_EVENTS`).
        let dropped = self
            .dropped
            .get(&0, 0)
            .context("cannot read the count of dropped events")?;
        self.counts.lost = dropped
            .iter()
            .enumerate()
            .filter(|(_, lost)| **lost > 0)
            .map(|(cpu, lost)| (cpu as u32, *lost))
            .collect();
        Ok((reason, self.counts.clone()))
    }

    /// Hands every sample waiting in every buffer to `sink`, copying each out of the ring once.
    fn drain(&mut self, sink: &mut impl EventSink) -> io::Result<()> {
        let Self {
            buffers,
            pages,
            counts,
            ..
        } = self;
        let mut result = Ok(());
        for (cpu, buffer) in buffers.iter_mut() {
            let mut lost_now = 0;
            buffer.get_mut().for_each(|sample| match sample {
                PerfEvent::Sample { head, tail } => {
                    if result.is_ok() {
                        counts.received += 1;
                        result = sink.write(&event_from(head, tail));
                    }
                }
                PerfEvent::Lost { count } => lost_now += count,
            });
            if lost_now > 0 {
                eprintln!(
                    "lost {lost_now} events on CPU {cpu}: its perf buffer ({pages} pages) was full"
                );
            }
        }
        result.and_then(|()| sink.flush())
    }
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

fn closed_or_fail(error: io::Error) -> anyhow::Result<StopReason> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(StopReason::OutputClosed)
    } else {
        Err(anyhow::Error::new(error).context("cannot write the events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> ListenEvent {
        ListenEvent {
            pid: 4321,
            tid: 4322,
            netns: 4026531840,
            backlog: 7,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"xtask\0\0\0\0\0\0\0\0\0\0\0",
            result: -22,
            port: 4242,
            family: crate::AF_INET,
            attach: crate::ATTACH_KPROBE,
            has_result: 1,
            padding: [0; 2],
        }
    }

    fn bytes_of(event: &ListenEvent) -> Vec<u8> {
        // SAFETY: plain data; reading its bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(event).cast::<u8>(), size_of::<ListenEvent>())
        };
        let mut padded = bytes.to_vec();
        padded.extend([0xee; 4]); // the kernel's padding to 8 bytes
        padded
    }

    #[test]
    fn a_sample_in_one_piece_is_read_exactly() {
        let event = sample_event();
        assert_eq!(event_from(&bytes_of(&event), &[]), event);
    }

    #[test]
    fn a_sample_that_wraps_around_the_ring_is_read_exactly() {
        let event = sample_event();
        let bytes = bytes_of(&event);
        for split in [
            1,
            7,
            8,
            31,
            32,
            size_of::<ListenEvent>() - 1,
            size_of::<ListenEvent>(),
        ] {
            let (head, tail) = bytes.split_at(split);
            assert_eq!(event_from(head, tail), event, "split at {split}");
        }
    }

    #[test]
    fn the_event_layout_is_the_same_on_both_sides() {
        // The kernel side is compiled for BPF, the reader for this CPU: a fixed size with no
        // implicit padding keeps them in step.
        assert_eq!(size_of::<ListenEvent>(), 60);
        assert_eq!(std::mem::align_of::<ListenEvent>(), 4);
    }

    #[test]
    fn counts_say_where_events_were_lost() {
        let mut counts = EventCounts {
            received: 10,
            lost: Vec::new(),
        };
        assert_eq!(counts.to_string(), "10 events received, 0 lost");
        counts.lost = vec![(1, 7), (0, 2)];
        assert_eq!(counts.total_lost(), 9);
        assert_eq!(
            counts.to_string(),
            "10 events received, 9 lost (CPU 1: 7, CPU 0: 2; a larger --buffer-pages keeps more)"
        );
    }
}
