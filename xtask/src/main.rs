//! `cargo xtask`: everything around the normal `cargo build`, for learners and teachers.
//!
//! xtask itself is built by whatever toolchain `cargo` starts with; it installs the pinned toolchain
//! (see `support::PINNED_RUST`) and drives every other build with it.

mod bench;
mod check;
mod docs;
mod doctor;
mod lessons;
mod listen;
mod pinned;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test the listen-trace lessons"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what this machine lacks: the pinned Rust toolchain, bpf-linker (idempotent)
    Setup {
        /// Also what building for arm64 guests needs (qemu-system-arm, the C cross toolchain, the
        /// Rust target), which `vm-test` otherwise installs the first time an arm64 guest runs
        #[arg(long)]
        arm64: bool,
    },
    /// Check this machine for the lessons in a few seconds: kernel, BTF, attach paths, privileges
    Doctor(doctor::DoctorArgs),
    /// Build every lesson (set-up first)
    Build,
    /// Build and run a lesson (set-up first), for example `cargo xtask run step 1 -- --attach tracepoint`
    Run {
        #[command(subcommand)]
        what: RunWhat,
    },
    /// Run the checks and tests: formatting, clippy, unit tests, kernel tests here and in VMs
    Test,
    /// Run the kernel tests inside other kernels under qemu (see `xtask/src/vm.rs` for the list)
    VmTest(vm::VmTestArgs),
    /// Build the book (English and Chinese) with mdBook, after checking its includes and links
    Docs(docs::DocsArgs),
    /// Measure what lesson 4 costs per listen() next to no tracer and bpftrace, and start-up times
    Bench(bench::BenchArgs),
    /// Check an exercise: build your lesson and run it against real listen() calls
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
    /// Listen on a TCP port until Ctrl-C, to give the lessons something to see
    Listen(listen::ListenArgs),
}

#[derive(Debug, Subcommand)]
enum CheckWhat {
    /// An exercise, for example `cargo xtask check exercise 1`
    Exercise {
        /// The exercise number (the lesson it belongs to)
        #[arg(value_name = "N")]
        number: u8,
        /// Check the reference solution (docs/exercises/) instead of your code
        #[arg(long, conflicts_with = "starter")]
        solution: bool,
        /// Check the lesson as it is before the exercise (it must fail)
        #[arg(long)]
        starter: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RunWhat {
    /// A lesson's step binary; arguments after `--` go to it (try `-- --help`)
    Step {
        /// The lesson number
        #[arg(value_name = "N")]
        number: u8,
        /// Arguments for the step binary
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with every cause, and no backtrace even under RUST_BACKTRACE: these are
            // messages for people.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup { arm64 } => {
            let toolchain = setup::run()?;
            if arm64 {
                vm::ensure_host_tools(&toolchain, true)?;
            }
            Ok(())
        }
        Command::Build => {
            let toolchain = setup::run()?;
            lessons::build(&toolchain, &lessons::present()?)
        }
        Command::Run {
            what: RunWhat::Step { number, args },
        } => {
            let lesson = lessons::find(number)?;
            let toolchain = setup::run()?;
            lessons::build(&toolchain, &[lesson])?;
            lessons::exec(lesson, &args)
        }
        Command::Test => test::run(),
        Command::Doctor(args) => doctor::run(&setup::run()?, &args),
        Command::VmTest(args) => vm::run(&setup::run()?, &args),
        Command::Bench(args) => bench::run(&setup::run()?, &args),
        Command::Docs(args) => docs::run(&setup::run()?, &args),
        Command::Check {
            what:
                CheckWhat::Exercise {
                    number,
                    solution,
                    starter,
                },
        } => {
            let attempt = match (solution, starter) {
                (true, _) => check::Attempt::Solution,
                (_, true) => check::Attempt::Starter,
                _ => check::Attempt::Yours,
            };
            check::run(&setup::run()?, number, attempt)
        }
        Command::Listen(args) => listen::run(&args),
    }
}

/// The date and time now, as the generated pages show it (`2026-11-25 18:37 UTC`).
fn utc_now() -> anyhow::Result<String> {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?
        .stdout;
    Ok(String::from_utf8(date)?.trim().to_string())
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_step_passes_what_follows_the_double_dash() {
        let cli =
            Cli::try_parse_from(["xtask", "run", "step", "1", "--", "--attach", "kprobe"]).unwrap();
        let Command::Run {
            what: RunWhat::Step { number, args },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(number, 1);
        assert_eq!(args, ["--attach", "kprobe"]);
        assert!(Cli::try_parse_from(["xtask", "run", "step", "one"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "frobnicate"]).is_err());
    }
}
