//! A lesson's table, read the way a person reads it: by the names in its header, so that a column
//! an exercise adds changes nothing a test reads.

use std::{net::SocketAddr, time::Duration};

use crate::running::{RunningStep, Stream};

/// How long a header or a row may take to show.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `line` is a lesson's table header: `PID …`, or `TIME PID …` where the rows begin with
/// the time of day (lesson 13).
pub fn is_header(line: &str) -> bool {
    line.starts_with("PID ") || line.starts_with("TIME ")
}

/// The PID of a lesson's table row: its first column, or its second after lesson 13's time of day.
pub fn pid_of_row(line: &str) -> Option<&str> {
    let mut columns = line.split_whitespace();
    match columns.next() {
        Some(time) if time.contains(':') => columns.next(),
        first => first,
    }
}

/// Where some of a table's columns are, by their names in its header.
pub struct Columns {
    names: Vec<&'static str>,
    positions: Vec<usize>,
}

impl Columns {
    /// Waits for the table's header (`PID …` or `TIME …`, before any row) and finds each of
    /// `names` in it.
    pub fn of(step: &mut RunningStep, names: &[&'static str]) -> Self {
        let header = step
            .find_line(Stream::Stdout, is_header, TIMEOUT)
            .unwrap_or_else(|| panic!("no table header; output: {:#?}", step.output));
        let in_header: Vec<&str> = header.split_whitespace().collect();
        let positions = names
            .iter()
            .map(|name| {
                in_header
                    .iter()
                    .position(|column| column == name)
                    .unwrap_or_else(|| panic!("no {name} column in the header `{header}`"))
            })
            .collect();
        Self {
            names: names.to_vec(),
            positions,
        }
    }

    /// The values of the columns in `line`, in the order of their names.
    pub fn values(&self, line: &str) -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        self.positions
            .iter()
            .map(|&at| words.get(at).copied().unwrap_or_default().to_string())
            .collect()
    }

    /// Where the column `name` is among the values.
    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|column| *column == name)
            .unwrap_or_else(|| panic!("{name} is not among the columns read: {:?}", self.names))
    }
}

/// Waits for the row whose `NETNS` is `netns` and whose `ADDR` and `PORT` are `addr`'s (an IPv4 and
/// an IPv6 listener may get the same port number): its values of the columns `names`.
pub fn row_with(
    step: &mut RunningStep,
    names: &[&'static str],
    netns: u64,
    addr: SocketAddr,
) -> Vec<String> {
    let columns = Columns::of(step, names);
    let at = [
        columns.index("NETNS"),
        columns.index("ADDR"),
        columns.index("PORT"),
    ];
    let wanted = [
        netns.to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ];
    let line = step
        .find_line(
            Stream::Stdout,
            |line| {
                let row = columns.values(line);
                at.iter().zip(&wanted).all(|(&at, value)| row[at] == *value)
            },
            TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no row for {addr}; output: {:#?}", step.output));
    columns.values(&line)
}
