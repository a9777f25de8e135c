//! Lesson 13's output: the events as an aligned table, like solisten's, each row with the time the
//! kernel made it, written into one buffer that is flushed per batch of events.

use std::{
    borrow::Cow,
    io::{self, BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{AF_INET6, IPPROTO_MPTCP};

use crate::event::ListenEvent;
use jiff::{SignedDuration, Timestamp, civil, tz::TimeZone};
use nix::time::{ClockId, clock_gettime};

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

/// The call's result as people read it: `ok`, the error's name (`EADDRINUSE`), or `-` where
/// the program did not see the call end.
fn result_text(event: &ListenEvent) -> String {
    match (event.has_result, event.result) {
        (0, _) => "-".into(),
        (_, 0) => "ok".into(),
        (_, result) => format!("{:?}", nix::errno::Errno::from_raw(-result)),
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

    /// Writes one row. An error (a closed pipe, for instance) stops the reading.
    pub fn write(&mut self, event: &ListenEvent) -> io::Result<()> {
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

    /// Writes out the rows of a batch of events.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
// ANCHOR_END: table

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
            netns: 4026531840,
            backlog: 7,
            addr,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            result: result.unwrap_or(0),
            port: 4242,
            family,
            has_result: result.is_some() as u16,
            protocol: common::IPPROTO_TCP,
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
