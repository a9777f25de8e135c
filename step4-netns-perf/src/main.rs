//! Lesson 4, userspace side: structured events from a perf buffer instead of log lines, shown as a
//! table (like bcc's solisten) or as JSON, with filters applied in the kernel.

mod output;

use clap::Parser;
use common::{
    ListenFilter, SockOffsets,
    user::{
        EventSink, Options, PerfEvents, Report, attach_listen_probe, detach, load_ebpf_with_filter,
    },
};

/// Who starts listening on a TCP port: process, network namespace, address, port, backlog.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// Print one JSON object per line instead of a table
    #[arg(long)]
    json: bool,
    /// Only this process (its PID, as `ps` shows it)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Only this network namespace (N in `net:[N]` from `ls -l /proc/PID/ns/net`)
    #[arg(long, value_name = "INODE", value_parser = clap::value_parser!(u32).range(1..))]
    netns: Option<u32>,
    /// The size of each CPU's perf buffer, in pages (a power of two)
    #[arg(long, value_name = "PAGES", default_value_t = 256, value_parser = power_of_two)]
    buffer_pages: usize,
}

fn power_of_two(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(pages) if pages.is_power_of_two() => Ok(pages),
        _ => Err(format!(
            "`{text}` is not a power of two (1, 2, 4, … 256, …)"
        )),
    }
}

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
    let cli = Cli::parse();

    let offsets = SockOffsets::of_running_kernel()?;
    // New: filters the kernel side applies before it sends anything.
    let filter = ListenFilter {
        pid: cli.pid.unwrap_or(0),
        netns: cli.netns.unwrap_or(0),
    };
    let mut ebpf = load_ebpf_with_filter(EBPF_OBJECT, &offsets, &filter)?;
    // New: one perf buffer per CPU, instead of aya-log's ring of log records.
    let mut events = PerfEvents::open(&mut ebpf, cli.buffer_pages)?;
    let probe = attach_listen_probe(&mut ebpf, cli.options.attach)?;

    let mut sink: Box<dyn EventSink> = if cli.json {
        Box::new(output::JsonLines::new(std::io::stdout()))
    } else {
        Box::new(output::Table::new(std::io::stdout())?)
    };
    let (reason, counts) = events
        .print_until_stopped(&mut sink, cli.options.duration)
        .await?;
    eprintln!("{counts}");
    detach(ebpf, &probe, reason);
    Ok(())
}
// ANCHOR_END: main

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from(["step4", "--json", "--pid", "42", "--netns", "4026531840"])
            .unwrap();
        assert!(cli.json);
        assert_eq!(
            (cli.pid, cli.netns, cli.buffer_pages),
            (Some(42), Some(4026531840), 256)
        );
        let error = Cli::try_parse_from(["step4", "--buffer-pages", "3"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`3` is not a power of two"), "{error}");
        assert!(Cli::try_parse_from(["step4", "--pid", "0"]).is_err());
        assert!(Cli::try_parse_from(["step4", "--pid", "x"]).is_err());
    }
}
