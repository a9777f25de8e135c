//! The transcripts on the book's pages: what each lesson prints for a few listens of ours, recorded
//! by `cargo xtask docs --refresh-transcripts` on this machine and, on a stock kernel with kprobes,
//! by the lessons' kernel tests inside a `vm-test` guest (they print them between markers that
//! `vm-test` reads).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use common::{LISTEN_FUNCTION, READY_LINE, STATE_TRACEPOINT};
use nix::sys::signal::Signal;

use crate::{
    running::{RunningStep, Stream},
    trigger,
};

/// The marker lines around a transcript printed for `vm-test` (followed by the transcript's name).
pub const BEGIN: &str = "BOOK-TRANSCRIPT-BEGIN ";
pub const END: &str = "BOOK-TRANSCRIPT-END";

/// The transcripts of lesson `number`.
pub fn of_lesson(number: u8) -> impl Iterator<Item = &'static Transcript> {
    TRANSCRIPTS
        .iter()
        .filter(move |transcript| transcript.lesson == number)
}

/// Records each transcript of lesson `number` with `binary` and prints it between the markers.
pub fn record_and_print(number: u8, binary: &str) {
    for transcript in of_lesson(number) {
        let text = transcript
            .record(Path::new(binary))
            .unwrap_or_else(|error| panic!("transcript {}: {error:#}", transcript.name));
        println!("{BEGIN}{}\n{text}{END}", transcript.name);
    }
}

/// The transcripts printed between the markers in `output`: (name, text).
pub fn printed(output: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        // The test harness may print "test name ... " just before.
        if let Some(at) = line.find(BEGIN) {
            current = Some((line[at + BEGIN.len()..].trim().to_string(), String::new()));
        } else if line.trim_end() == END {
            found.extend(current.take());
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line.trim_end_matches('\r'));
            text.push('\n');
        }
    }
    found
}

/// Where the transcripts are, in the workspace: the pages include them from there.
pub const FOLDER: &str = "docs/src/transcripts";

/// A transcript on a page: which lesson, with which options, making which listens, keeping which
/// of its lines (other programs on the machine listen too).
pub struct Transcript {
    /// The file's name in `docs/src/transcripts/`, without `.txt`.
    pub name: &'static str,
    pub lesson: u8,
    pub args: &'static [&'static str],
    pub listens: fn() -> anyhow::Result<Vec<trigger::Listener>>,
    pub keep: fn(&str) -> bool,
    /// Whether the rows themselves differ from one attach path to another (lesson 5: the state
    /// tracepoint does not see a call end), so that only the lines around them keep their shape.
    pub rows_depend_on_the_path: bool,
}

/// How the line that names the syscall tracepoints' cost begins.
const SYSCALL_TAX_START: &str = "the tracepoint path slows down every system call";

pub const TRANSCRIPTS: [Transcript; 14] = [
    Transcript {
        name: "step1",
        lesson: 1,
        args: &[],
        listens: || Ok(vec![listen_on("0.0.0.0", 4242, 1)?]),
        keep: |line| line.contains(" Hello World"),
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step2",
        lesson: 2,
        args: &[],
        listens: || Ok(vec![listen_on("0.0.0.0", 4242, 7)?]),
        keep: |line| line.contains(" Listening with up to 7 pending connections!"),
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step3",
        lesson: 3,
        args: &[],
        listens: || {
            Ok(vec![
                listen_on("127.0.0.1", 4242, 7)?,
                listen_on("::1", 4243, 7)?,
                trigger::listen_without_bind(trigger::Domain::IPV4, 5)?,
            ])
        },
        keep: |line| {
            line.contains(":4242 with up to 7")
                || line.contains(":4243 with up to 7")
                || line.contains(" 0.0.0.0:0 with up to 5 ")
        },
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step4",
        lesson: 4,
        args: &[],
        listens: listen_in_a_netns_and_on_ipv6,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step5",
        lesson: 5,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: true,
    },
    Transcript {
        name: "step6",
        lesson: 6,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step7",
        lesson: 7,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step8",
        lesson: 8,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step9",
        lesson: 9,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step10",
        lesson: 10,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step11",
        lesson: 11,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step12",
        lesson: 12,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step13",
        lesson: 13,
        args: &[],
        listens: every_kind_of_listen,
        keep: table_rows_of_ours,
        rows_depend_on_the_path: false,
    },
    Transcript {
        name: "step14-json",
        lesson: 14,
        args: &["--json"],
        listens: || Ok(vec![listen_on("127.0.0.1", 4244, 7)?]),
        keep: |line| line.contains(&format!(",\"pid\":{},", std::process::id())),
        rows_depend_on_the_path: false,
    },
];

/// As the pages' `cargo xtask listen` commands make them: lesson 4's listens, then a socket never
/// bound (lessons 5 to 14 show the port the kernel picked for it) and a second listen() on it,
/// which only changes the backlog; listen() on a port in use (EADDRINUSE) and on a connected
/// socket (EINVAL); an MPTCP listen, where the kernel has MPTCP.
fn every_kind_of_listen() -> anyhow::Result<Vec<trigger::Listener>> {
    let mut listeners = listen_in_a_netns_and_on_ipv6()?;
    let unbound = trigger::listen_without_bind(trigger::Domain::IPV4, 5)?;
    unbound.socket.listen(9)?;
    listeners.push(unbound);
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let (first, second, _) = trigger::listen_on_a_port_in_use((localhost, 0).into(), 3)?;
    let (server, client, _) = trigger::listen_on_a_connected_socket((localhost, 0).into(), 4)?;
    for (listener, other) in [(first, second), (server, client)] {
        let local_addr = listener.local_addr;
        listeners.extend([
            listener,
            trigger::Listener {
                socket: other,
                local_addr,
            },
        ]);
    }
    listeners.extend(trigger::listen_mptcp((localhost, 0).into(), 6).ok());
    Ok(listeners)
}

/// A listen in a network namespace of its own (as `cargo xtask listen --netns` makes), and one on
/// `::1`.
fn listen_in_a_netns_and_on_ipv6() -> anyhow::Result<Vec<trigger::Listener>> {
    let in_netns = thread::spawn(|| -> anyhow::Result<trigger::Listener> {
        trigger::enter_new_netns()?;
        listen_on("0.0.0.0", 4242, 7)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the listening thread failed"))??;
    Ok(vec![in_netns, listen_on("::1", 4243, 7)?])
}

/// The table's header and the rows of this process's listens (other programs listen too).
fn table_rows_of_ours(line: &str) -> bool {
    crate::table::is_header(line)
        || crate::table::pid_of_row(line) == Some(&std::process::id().to_string())
}

/// Listens on `ip:port`, or on a port the kernel picks if that one is taken.
fn listen_on(ip: &str, port: u16, backlog: i32) -> anyhow::Result<trigger::Listener> {
    let ip: IpAddr = ip.parse()?;
    trigger::listen(SocketAddr::new(ip, port), backlog)
        .or_else(|_| trigger::listen((ip, 0).into(), backlog))
}

impl Transcript {
    /// Runs the lesson, makes the listens, stops it with SIGINT, and returns its status lines and
    /// the kept events, in order.
    pub fn record(&self, binary: &Path) -> anyhow::Result<String> {
        let step = RunningStep::try_start(Command::new(binary).args(self.args), false)
            .map_err(|error| anyhow!("{} {error}", binary.display()))?;
        // From a thread named as the command a learner runs in another terminal (`cargo xtask
        // listen`), whatever process records the transcript.
        let listens = self.listens;
        let listeners = thread::Builder::new()
            .name("xtask".to_string())
            .spawn(move || {
                // Every listen on one CPU (the threads it starts inherit this): their events then
                // share one ring of a perf buffer and come out in the order they were made.
                let mut one_cpu = nix::sched::CpuSet::new();
                let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
                    .ok()
                    .and_then(|allowed| {
                        (0..nix::sched::CpuSet::count())
                            .find(|&cpu| allowed.is_set(cpu).unwrap_or(false))
                    })
                    .unwrap_or(0);
                let _ = one_cpu.set(cpu);
                let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one_cpu);
                listens()
            })?
            .join()
            .map_err(|_| anyhow!("the listening thread failed"))??;
        // Every listen's event, or 10 s (an emulated CPU is slow); then a moment for the rest. Where
        // the rows depend on the path, some listens have none: there, 2 s without a new line after
        // the first event ends the wait too (the listens were all made before it began).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut step = step;
        let mut last_line = Instant::now();
        while Instant::now() < deadline && self.events_in(&step.output) < listeners.len() {
            if step.next_line(Duration::from_millis(100)).is_some() {
                last_line = Instant::now();
            } else if self.rows_depend_on_the_path
                && self.events_in(&step.output) > 0
                && last_line.elapsed() >= Duration::from_secs(2)
            {
                break;
            }
        }
        thread::sleep(Duration::from_millis(500));
        let finished = step
            .try_stop(Signal::SIGINT)
            .map_err(|error| anyhow!(error))?;
        drop(listeners);
        // Up to the ready line: status lines, and a table's header.
        let ready = finished
            .output
            .iter()
            .position(|(stream, line)| *stream == Stream::Stderr && line == READY_LINE)
            .context("no ready line")?;
        let (until_ready, since_ready) = finished.output.split_at(ready + 1);
        let kept =
            |(stream, line): &&(Stream, String)| *stream == Stream::Stderr || (self.keep)(line);
        let before = until_ready
            .iter()
            .filter(kept)
            .map(|(_, line)| line.clone());
        let mut events = Vec::new();
        let mut after = Vec::new();
        for (stream, line) in since_ready {
            match stream {
                Stream::Stdout if (self.keep)(line) => events.push(line.clone()),
                Stream::Stdout => {}
                Stream::Stderr => after.push(line.clone()),
            }
        }
        // The header of a table comes first among the events.
        let (header, status): (Vec<_>, Vec<_>) = before
            .into_iter()
            .partition(|line| crate::table::is_header(line));
        if events.is_empty() {
            bail!("{} printed no event of our listens", binary.display());
        }
        let mut text = status;
        text.extend(header);
        text.extend(events);
        text.extend(after);
        Ok(text.join("\n") + "\n")
    }
}

impl Transcript {
    /// How many stdout lines of `output` this transcript keeps as events (a table's header aside).
    fn events_in(&self, output: &[(Stream, String)]) -> usize {
        output
            .iter()
            .filter(|(stream, line)| {
                *stream == Stream::Stdout && (self.keep)(line) && !crate::table::is_header(line)
            })
            .count()
    }
}

/// The shape of a transcript's output: what the program prints, with every number masked (pids,
/// ports, inodes, times and ids change from run to run; letters never do), runs of spaces as one
/// (a table pads its columns to the numbers), and without what depends on the machine: the attach
/// lines, the struct offsets, a tracefs mount and the line only the tracepoint path prints.
pub fn shape(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter(|line| {
            !["kprobe ", "kretprobe ", "fentry ", "fexit ", "tracepoint "]
                .iter()
                .any(|path| line.starts_with(path))
        })
        .filter(|line| {
            !["struct offsets", "mounted tracefs"]
                .iter()
                .any(|machine| line.starts_with(machine))
                // What the syscall tracepoints cost, said on the tracepoint path of lessons 6 to 14.
                && !line.starts_with(SYSCALL_TAX_START)
        })
        .map(|line| {
            // The path a line names ("detached from the kprobe inet_listen()") depends on the
            // kernel too.
            let line = [
                format!("kprobe {LISTEN_FUNCTION}()"),
                format!("fentry {LISTEN_FUNCTION}()"),
                format!("tracepoint sock:{STATE_TRACEPOINT}"),
                r#""attach":"kprobe""#.to_string(),
                r#""attach":"fentry""#.to_string(),
                r#""attach":"tracepoint""#.to_string(),
            ]
            .iter()
            .fold(line.to_string(), |line, path| line.replace(path, "PATH"));
            let mut masked = String::new();
            let mut previous = ' ';
            for character in line.chars() {
                let class = if character.is_ascii_digit() {
                    '#'
                } else if character.is_whitespace() {
                    ' '
                } else {
                    character
                };
                if !(class == previous && (class == '#' || class == ' ')) {
                    masked.push(class);
                }
                previous = class;
            }
            masked
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_transcripts_are_found_between_their_markers() {
        let output = format!(
            "noise\ntest x ... {BEGIN}step1\r\na\r\nb\n{END}\r\nmore\n{BEGIN}step2\nc\n{END}\n"
        );
        assert_eq!(
            printed(&output),
            [
                ("step1".to_string(), "a\nb\n".to_string()),
                ("step2".to_string(), "c\n".to_string())
            ]
        );
    }

    #[test]
    fn a_stock_kernels_transcript_has_the_shape_of_the_fallbacks() {
        let stock = "kprobe inet_listen(): attached (program listen_kprobe, id 17)\n\
                     Ready: waiting for listen() calls. Press Ctrl-C to stop.\n\
                     2026-11-25T20:40:34.116Z Hello World!\n\
                     stopped by Ctrl-C (SIGINT): detached from the kprobe inet_listen() and \
                     unloaded the programs\n";
        let fallback = "kprobe inet_listen(): not available: kprobes are not available\n\
                        fentry inet_listen(): not available: EPERM\n\
                        tracepoint sock:inet_sock_set_state: attached (program x, id 2656)\n\
                        Ready: waiting for listen() calls. Press Ctrl-C to stop.\n\
                        2026-11-25T20:51:26.542Z Hello World!\n\
                        stopped by Ctrl-C (SIGINT): detached from the tracepoint \
                        sock:inet_sock_set_state and unloaded the programs\n";
        assert_eq!(shape(stock), shape(fallback));
        let taxed = fallback.replace(
            "Ready: waiting",
            &format!("{}\nReady: waiting", common::SYSCALL_TAX_LINE),
        );
        assert_eq!(
            shape(stock),
            shape(&taxed),
            "the tool's tracepoint path says more"
        );
        assert_ne!(
            shape(stock),
            shape(&fallback.replace("Hello World!", "Hello!"))
        );
        assert_ne!(
            shape(stock),
            shape(&fallback.replace("Hello World!", "Hello Worlb!")),
            "letters are never masked, hexadecimal or not"
        );
        assert_ne!(
            shape(stock),
            shape(&fallback.replace("Hello World!", "Hello World.")),
        );
    }

    #[test]
    fn every_lesson_has_a_transcript() {
        for number in 1..=8 {
            assert!(of_lesson(number).next().is_some());
        }
    }
}
