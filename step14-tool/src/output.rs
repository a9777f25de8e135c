//! Lesson 14's output: the events as an aligned table, like solisten's, or, new, as JSON lines, each
//! with the time the kernel made it. Both write into one buffer that is flushed per batch of events.

use std::{
    borrow::Cow,
    io::{self, BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{AF_INET6, IPPROTO_MPTCP};

use crate::event::{ATTACH_FENTRY, ATTACH_KPROBE, ATTACH_SOCKOPS, ATTACH_TRACEPOINT, ListenEvent};
use jiff::{SignedDuration, Timestamp, civil, tz::TimeZone};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

// ANCHOR: event_sink
/// Where the events go: a table, JSON lines, a test's collector.
pub trait EventSink {
    /// Writes one event. An error (a closed pipe, for instance) stops the reading.
    fn write(&mut self, event: &ListenEvent) -> io::Result<()>;
    /// Called after each batch of events, so that a buffered sink can write them out.
    fn flush(&mut self) -> io::Result<()>;
}

impl<S: EventSink + ?Sized> EventSink for Box<S> {
    fn write(&mut self, event: &ListenEvent) -> io::Result<()> {
        (**self).write(event)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}
// ANCHOR_END: event_sink

// ANCHOR: wall_clock
/// Turns the kernel's time stamps (nanoseconds since boot) into wall-clock time: the moment the
/// machine booted, found once at the start by reading both clocks, plus the stamp.
pub struct WallClock {
    booted: Timestamp,
    zone: TimeZone,
}

impl WallClock {
    /// Reads the boot clock (the one `bpf_ktime_get_boot_ns` reads) and the wall clock, one after
    /// the other; the table shows times of day in this machine's time zone.
    pub fn now() -> nix::Result<Self> {
        let since_boot = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
        let since_boot = SignedDuration::new(since_boot.tv_sec(), since_boot.tv_nsec() as i32);
        Ok(Self {
            booted: Timestamp::now() - since_boot,
            zone: TimeZone::system(),
        })
    }

    /// When an event stamped `time_ns` (nanoseconds since boot) was made.
    pub fn at(&self, time_ns: u64) -> Timestamp {
        self.booted + SignedDuration::from_nanos(time_ns as i64)
    }

    /// Its time of day, here.
    pub fn time_of_day(&self, time_ns: u64) -> civil::Time {
        self.zone.to_datetime(self.at(time_ns)).time()
    }
}
// ANCHOR_END: wall_clock

/// The bound address, IPv4 or IPv6, as people read it.
pub fn address(event: &ListenEvent) -> IpAddr {
    if event.family == AF_INET6 {
        Ipv6Addr::from(event.addr).into()
    } else {
        let [a, b, c, d, ..] = event.addr;
        Ipv4Addr::new(a, b, c, d).into()
    }
}

/// The thread's name, up to its first NUL. Any bytes can be a name (`prctl(PR_SET_NAME)`), so they
/// are read as UTF-8 lossily, never assumed to be text.
pub fn comm(event: &ListenEvent) -> Cow<'_, str> {
    let name = event
        .comm
        .split(|&byte| byte == 0)
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(name)
}

fn proto(event: &ListenEvent) -> &'static str {
    match (event.protocol == IPPROTO_MPTCP, event.family == AF_INET6) {
        (false, false) => "TCPv4",
        (false, true) => "TCPv6",
        (true, false) => "MPTCPv4",
        (true, true) => "MPTCPv6",
    }
}

fn attach_path(event: &ListenEvent) -> &'static str {
    match event.attach {
        ATTACH_KPROBE => "kprobe",
        ATTACH_FENTRY => "fentry",
        ATTACH_TRACEPOINT => "tracepoint",
        ATTACH_SOCKOPS => "sockops",
        _ => "?",
    }
}

/// `listen()`'s result: 0 or `-errno`; `None` for a socket that started listening without a call
/// the program could follow to its end (io_uring's listen, a socket of the kernel's own).
fn result(event: &ListenEvent) -> Option<i32> {
    (event.has_result == 1).then_some(event.result)
}

/// The name of the error in a negative result (`EADDRINUSE`).
fn error_name(event: &ListenEvent) -> Option<String> {
    result(event)
        .filter(|&result| result < 0)
        .map(|result| format!("{:?}", nix::errno::Errno::from_raw(-result)))
}

/// The call's result as people read it: `ok`, the error's name (`EADDRINUSE`), or `-` where
/// the program did not see the call end.
fn result_text(event: &ListenEvent) -> String {
    match (result(event), error_name(event)) {
        (None, _) => "-".into(),
        (_, Some(name)) => name,
        (Some(_), None) => "ok".into(),
    }
}

// ANCHOR: table
/// An aligned table with a header, one row per event.
pub struct Table<W: Write> {
    out: BufWriter<W>,
    clock: WallClock,
}

impl<W: Write> Table<W> {
    pub const HEADER: &'static str = "TIME     PID     COMM             NETNS       PROTO   BACKLOG  ADDR                                     PORT   RESULT";

    pub fn new(out: W, clock: WallClock) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        writeln!(out, "{}", Self::HEADER)?;
        out.flush()?;
        Ok(Self { out, clock })
    }
}

impl<W: Write> EventSink for Table<W> {
    fn write(&mut self, event: &ListenEvent) -> io::Result<()> {
        let time = self.clock.time_of_day(event.time_ns);
        writeln!(
            self.out,
            "{:02}:{:02}:{:02} {:<7} {:<16} {:<11} {:<7} {:<8} {:<40} {:<6} {}",
            time.hour(),
            time.minute(),
            time.second(),
            event.pid,
            comm(event),
            event.netns,
            proto(event),
            event.backlog,
            address(event),
            event.port,
            result_text(event),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
// ANCHOR_END: table

// ANCHOR: json_lines
/// One JSON object per line, for `jq` and other programs.
pub struct JsonLines<W: Write> {
    out: BufWriter<W>,
    clock: WallClock,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            clock,
        }
    }
}

/// The JSON form of an event.
#[derive(Serialize)]
struct JsonEvent<'a> {
    /// RFC 3339, in UTC, to the nanosecond: `2026-12-07T16:44:50.123456789Z`.
    time: Timestamp,
    pid: u32,
    tid: u32,
    comm: Cow<'a, str>,
    netns: u32,
    proto: &'static str,
    backlog: u32,
    addr: IpAddr,
    port: u16,
    /// `listen()`'s return value (0 or -errno), `null` where the end of the call was not seen.
    result: Option<i32>,
    /// The name of the error, when `result` is negative.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    attach: &'static str,
}

impl<W: Write> EventSink for JsonLines<W> {
    fn write(&mut self, event: &ListenEvent) -> io::Result<()> {
        let json = JsonEvent {
            time: self.clock.at(event.time_ns),
            pid: event.pid,
            tid: event.tid,
            comm: comm(event),
            netns: event.netns,
            proto: proto(event),
            backlog: event.backlog,
            addr: address(event),
            port: event.port,
            result: result(event),
            error: error_name(event),
            attach: attach_path(event),
        };
        serde_json::to_writer(&mut self.out, &json)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
// ANCHOR_END: json_lines

#[cfg(test)]
mod tests {
    use common::AF_INET;

    use super::*;

    /// A clock of a machine that booted at 16:44:50 UTC.
    fn clock() -> WallClock {
        WallClock {
            booted: "2026-12-07T16:44:50Z".parse().unwrap(),
            zone: TimeZone::UTC,
        }
    }

    fn event(family: u16, addr: [u8; 16], result: Option<i32>) -> ListenEvent {
        ListenEvent {
            // 1.5 s after the boot.
            time_ns: 1_500_000_000,
            pid: 4321,
            tid: 4322,
            netns: 4026531840,
            backlog: 7,
            addr,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            result: result.unwrap_or(0),
            port: 4242,
            family,
            has_result: result.is_some() as u16,
            protocol: common::IPPROTO_TCP,
            attach: if result.is_some() {
                ATTACH_KPROBE
            } else {
                ATTACH_TRACEPOINT
            },
        }
    }

    fn ipv4(octets: [u8; 4]) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&octets);
        addr
    }

    fn table_of(events: &[ListenEvent]) -> String {
        let mut buffer = Vec::new();
        let mut table = Table::new(&mut buffer, clock()).unwrap();
        for event in events {
            table.write(event).unwrap();
        }
        table.flush().unwrap();
        drop(table);
        String::from_utf8(buffer).unwrap()
    }

    #[test]
    fn the_table_has_one_header_and_aligned_columns() {
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xffff, 0xabcd).octets();
        let text = table_of(&[
            event(AF_INET, ipv4([127, 0, 0, 1]), Some(0)),
            event(AF_INET6, v6, None),
            event(AF_INET, ipv4([0, 0, 0, 0]), Some(-22)),
        ]);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], Table::<Vec<u8>>::HEADER);
        assert_eq!(
            lines[1],
            "16:44:51 4321    nginx            4026531840  TCPv4   7        127.0.0.1                                4242   ok"
        );
        assert_eq!(
            lines[2],
            "16:44:51 4321    nginx            4026531840  TCPv6   7        2001:db8::ffff:abcd                      4242   -"
        );
        assert!(lines[3].ends_with("4242   EINVAL"), "{}", lines[3]);
        // Every column starts where its header starts.
        for column in [
            "PID", "COMM", "NETNS", "PROTO", "BACKLOG", "ADDR", "PORT", "RESULT",
        ] {
            let at = lines[0].find(column).unwrap();
            for line in &lines[1..] {
                assert_ne!(line.as_bytes()[at], b' ', "{column} in {line:?}");
                assert_eq!(line.as_bytes()[at - 1], b' ', "{column} in {line:?}");
            }
        }
    }

    #[test]
    fn json_lines_parse_back() {
        let mut buffer = Vec::new();
        let mut json = JsonLines::new(&mut buffer, clock());
        json.write(&event(AF_INET, ipv4([127, 0, 0, 1]), Some(-98)))
            .unwrap();
        json.write(&event(AF_INET6, Ipv6Addr::LOCALHOST.octets(), None))
            .unwrap();
        json.flush().unwrap();
        drop(json);
        let lines: Vec<serde_json::Value> = String::from_utf8(buffer)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({
                "time": "2026-12-07T16:44:51.5Z", "pid": 4321, "tid": 4322, "comm": "nginx", "netns": 4026531840u32, "proto": "TCPv4",
                "backlog": 7, "addr": "127.0.0.1", "port": 4242, "result": -98,
                "error": "EADDRINUSE", "attach": "kprobe"
            })
        );
        assert_eq!(lines[1]["addr"], "::1");
        assert_eq!(lines[1]["result"], serde_json::Value::Null);
        assert!(lines[1].get("error").is_none());
        assert_eq!(lines[1]["attach"], "tracepoint");
    }

    #[test]
    fn the_result_says_ok_the_error_or_that_the_end_was_not_seen() {
        assert_eq!(
            result_text(&event(AF_INET, ipv4([0; 4]), Some(-98))),
            "EADDRINUSE"
        );
        assert_eq!(result_text(&event(AF_INET, ipv4([0; 4]), Some(0))), "ok");
        assert_eq!(result_text(&event(AF_INET, ipv4([0; 4]), None)), "-");
    }

    #[test]
    fn mptcp_is_never_shown_as_tcp() {
        let mut mptcp = event(AF_INET6, Ipv6Addr::LOCALHOST.octets(), Some(0));
        mptcp.protocol = common::IPPROTO_MPTCP;
        assert_eq!(proto(&mptcp), "MPTCPv6");
        mptcp.family = AF_INET;
        assert_eq!(proto(&mptcp), "MPTCPv4");
    }

    #[test]
    fn a_name_of_sixteen_bytes_has_no_nul() {
        let mut full = event(AF_INET, ipv4([0; 4]), None);
        full.comm = *b"0123456789abcdef";
        assert_eq!(comm(&full), "0123456789abcdef");
    }
}
