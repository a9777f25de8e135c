//! `cargo xtask`: everything around the normal `cargo build`, for learners and teachers.
//!
//! xtask itself is built by whatever toolchain `cargo` starts with; it installs the pinned toolchain
//! (see `support::PINNED_RUST`) and drives every other build with it.

mod bench;
mod check;
mod docs;
mod doctor;
mod ebpf;
mod host_packages;
mod install_record;
mod installed;
mod learner;
mod lessons;
mod lima;
mod listen;
mod measure;
mod mutants;
mod offline_kit;
mod pinned;
mod setup;
mod standalone;
mod sudo;
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
    /// How a command that needs root goes on through sudo: its builds are done, in this target
    /// folder (see `sudo.rs`)
    #[arg(long, global = true, hide = true, value_name = "TARGET")]
    built: Option<PathBuf>,
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
    /// Check this machine for the lessons (a few seconds; the first run builds lessons 1 and 6): kernel, BTF, attach paths, privileges
    Doctor(doctor::DoctorArgs),
    /// Build every lesson (set-up first)
    Build,
    /// Build and run a lesson (set-up first), for example `cargo xtask run step 1 -- --attach tracepoint`
    Run {
        #[command(subcommand)]
        what: RunWhat,
    },
    /// Run the checks and tests: formatting, clippy, unit tests, kernel tests here and in VMs
    Test(test::TestArgs),
    /// Run the kernel tests inside other kernels under qemu (see `xtask/src/vm/kernels.rs` for the list)
    VmTest(vm::VmTestArgs),
    /// Build the book (English and Chinese) with mdBook, after checking its includes and links
    Docs(docs::DocsArgs),
    /// Measure what lesson 14 costs per listen() next to no tracer and bpftrace, and start-up times
    Bench(bench::BenchArgs),
    /// Check an exercise: build your lesson and run it against real listen() calls
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
    /// Listen on a TCP port until Ctrl-C, to give the lessons something to see
    Listen(listen::ListenArgs),
    /// List what the project's commands installed on this machine (--remove takes it away)
    Installed(installed::InstalledArgs),
    /// Apply deliberate bugs to the lessons, one at a time, and check that their tests catch each
    Mutants(mutants::MutantsArgs),
    /// Write a lesson out as a project of your own: a workspace with its own build.rs and toolchain
    NewProject(standalone::NewProjectArgs),
    /// Write an offline kit (crates, toolchain, bpf-linker, the book) for a room without internet
    OfflineKit(offline_kit::OfflineKitArgs),
    /// Write contrib/cloud-init/listen-trace.yaml (fallback VMs) from the Lima template's provisioning
    CloudInit,
    /// Copy each lesson out of the repository and build it there with plain cargo (as `test` does)
    #[command(hide = true)]
    Standalone,
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
        /// Print a hint for the exercise, and nothing else
        #[arg(long, conflicts_with_all = ["solution", "starter", "reset"])]
        hint: bool,
        /// Put the lesson back as in the last commit, first saving your changes as a patch
        #[arg(long, conflicts_with_all = ["solution", "starter"])]
        reset: bool,
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
    let cli = Cli::parse();
    if let Some(target) = &cli.built {
        pinned::continue_built(target);
    }
    match run(cli.command) {
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
                vm::prepare_arm64_guests(&toolchain)?;
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
        Command::Test(args) => test::run(&args),
        Command::Installed(args) => installed::run(&args),
        Command::Mutants(args) => mutants::run(&setup::run()?, &args),
        Command::NewProject(args) => standalone::new_project(&args),
        Command::CloudInit => lima::write_cloud_init(),
        Command::OfflineKit(args) => offline_kit::run(&setup::run()?, &args),
        Command::Standalone => {
            setup::run()?;
            standalone::check(&lessons::present()?)
        }
        Command::Doctor(args) => doctor::run(&setup::run()?, &args),
        Command::VmTest(args) => vm::run(&setup::run()?, &args),
        Command::Bench(args) => bench::run(&setup::run()?, &args),
        Command::Docs(_) if pinned::built_in().is_some() => docs::record_transcripts(),
        Command::Docs(args) => docs::run(&setup::run()?, &args),
        Command::Check {
            what:
                CheckWhat::Exercise {
                    number,
                    solution,
                    starter,
                    hint,
                    reset,
                },
        } => {
            if hint {
                return check::print_hint(number);
            }
            if reset {
                return check::reset(number);
            }
            let attempt = match (solution, starter) {
                (true, _) => check::Attempt::Solution,
                (_, true) => check::Attempt::Starter,
                _ => check::Attempt::Yours,
            };
            let binary = match pinned::built_in() {
                Some(_) => check::built_binary(number, attempt)?,
                None => check::build(&setup::run()?, number, attempt)?,
            };
            if sudo::rest_through_sudo(&format!("checking exercise {number}"))? {
                return Ok(());
            }
            check::run(number, attempt, &binary)
        }
        Command::Listen(args) => {
            if args.netns && sudo::rest_through_sudo("listening in a new network namespace")? {
                return Ok(());
            }
            listen::run(&args)
        }
    }
}

/// The date and time now, as the generated pages show it (`2026-11-25 18:37 UTC`).
fn utc_now() -> anyhow::Result<String> {
    Ok(jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string())
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

    /// A `cargo xtask` command found in the book or the README, and whether it stands in a code
    /// block (to be typed as it is) or in a sentence (where it may name a command without its
    /// arguments, as in "`cargo xtask listen --netns`").
    fn commands_in(text: &str) -> Vec<(String, bool)> {
        let mut found = Vec::new();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                let command = line.trim_start().trim_start_matches("$ ");
                if command.starts_with("cargo xtask") {
                    found.push((command.to_string(), true));
                }
            } else {
                for (at, _) in line.match_indices("`cargo xtask") {
                    let rest = &line[at + 1..];
                    if let Some(end) = rest.find('`') {
                        found.push((rest[..end].to_string(), false));
                    }
                }
            }
        }
        found
    }

    /// The words clap sees: up to the first shell operator or comment, with the book's
    /// placeholders filled in.
    fn words(command: &str) -> Vec<String> {
        let mut words = vec!["xtask".to_string()];
        for word in command.split_whitespace().skip(2) {
            if ["|", "#", ">", "&&", ";", "&", "2>&1"].contains(&word) {
                break;
            }
            let word = word.trim_matches(|c| c == '[' || c == ']');
            words.push(
                match word {
                    "N" => "1",
                    "PACKAGE" | "<package>" => "linux-image-6.1.0-42-cloud-amd64",
                    "SUITE" => "bookworm",
                    "PATHS" => "kprobe,fentry,tracepoint",
                    word => word,
                }
                .to_string(),
            );
        }
        words
    }

    #[test]
    fn every_command_in_the_book_and_the_readme_parses() {
        use clap::error::ErrorKind;
        let root = workspace_root();
        let mut files = vec![root.join("README.md")];
        for edition in ["docs/src", "docs/zh/src"] {
            for entry in std::fs::read_dir(root.join(edition)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "md") {
                    files.push(path);
                }
            }
        }
        let mut checked = 0;
        let mut problems = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for (command, in_code) in commands_in(&text) {
                checked += 1;
                let words = words(&command);
                match Cli::try_parse_from(&words) {
                    Ok(cli) => {
                        // Quick ones must also work: a hint prints.
                        if let Command::Check {
                            what:
                                CheckWhat::Exercise {
                                    number, hint: true, ..
                                },
                        } = cli.command
                            && let Err(error) = check::print_hint(number)
                        {
                            problems.push(format!("{}: `{command}`: {error:#}", file.display()));
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::DisplayHelp => {}
                    Err(error)
                        if !in_code
                            && matches!(
                                error.kind(),
                                ErrorKind::MissingRequiredArgument
                                    | ErrorKind::MissingSubcommand
                                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                            ) => {}
                    Err(error) => {
                        problems.push(format!("{}: `{command}`: {}", file.display(), error.kind()))
                    }
                }
            }
        }
        assert!(
            checked > 50,
            "only {checked} commands found: is the search broken?"
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn commands_are_found_in_code_and_in_sentences() {
        let text = "Run `cargo xtask listen 4242` now.\n```sh\n$ cargo xtask run step 4 -- --json | jq .\n```\n";
        assert_eq!(
            commands_in(text),
            [
                ("cargo xtask listen 4242".to_string(), false),
                ("cargo xtask run step 4 -- --json | jq .".to_string(), true)
            ]
        );
        assert_eq!(
            words("cargo xtask run step N -- --json | jq ."),
            ["xtask", "run", "step", "1", "--", "--json"]
        );
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
