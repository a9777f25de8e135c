//! `cargo xtask docs`: the book, in English (`docs/`) and Chinese (`docs/zh/`), built with mdBook,
//! and the checks that keep it from drifting away from the code: every `{{#include}}` resolves to
//! something, both editions include the same code, links lead somewhere, and the transcripts on the
//! pages have the format the programs print today (`--refresh-transcripts` rewrites them from real
//! runs).

use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};
use support::transcripts::{TRANSCRIPTS, Transcript, shape};

mod browser;
mod pages;

pub use pages::check_pages;

use crate::{
    check, lessons,
    pinned::{Toolchain, run_step, target_dir},
    sudo, vm, workspace_root,
};

/// The mdBook release that builds the book.
const MDBOOK_VERSION: &str = "0.5.4";

/// The link checker that runs as a second mdBook backend (`[output.linkcheck2]` in `book.toml`): a
/// fork of mdbook-linkcheck that builds against mdBook 0.5. Every relative link of a page must lead
/// to a file; it does not check `#fragments`.
const LINKCHECK_VERSION: &str = "0.13.0";

#[derive(Debug, clap::Args)]
pub struct DocsArgs {
    /// First run each lesson and write what it prints into docs/src/transcripts/
    #[arg(long)]
    pub refresh_transcripts: bool,
    /// Also save a screenshot of lesson 1's page, in each edition, into this folder
    #[arg(long, hide = true, value_name = "DIR")]
    pub screenshots: Option<PathBuf>,
}

pub fn run(toolchain: &Toolchain, args: &DocsArgs) -> anyhow::Result<()> {
    if args.refresh_transcripts {
        lessons::build(toolchain, &lessons::present()?)?;
        check::build_in_clean_checkout(
            toolchain,
            lessons::find(VERIFIER_LESSON)?,
            Some(&transcripts_folder().join(VERIFIER_PATCH)),
        )?;
        if !sudo::rest_through_sudo("recording the transcripts")? {
            record_transcripts()?;
        }
        // The stock kernel's transcripts: the lessons' transcript tests in a guest with kprobes.
        vm::run(
            toolchain,
            &vm::VmTestArgs {
                filter: Some(vm::TRANSCRIPT_TESTS.to_string()),
                kernel: Some(vm::STOCK_KERNEL.to_string()),
                expect: "kprobe,fentry,tracepoint,sockops".to_string(),
                write: true,
                ..vm::VmTestArgs::default()
            },
        )?;
    }
    pages::check_pages()?;
    let [english, chinese] = build_books(toolchain)?;
    let docs = workspace_root().join("docs");
    pages::check_fragments(&docs)?;
    for built in [english, chinese] {
        let (pages, pictures) = browser::check(&built)?;
        eprintln!(
            "    {}: {pictures} picture(s) on {pages} page(s) render in Chromium, with no console error",
            built.display()
        );
        if let Some(folder) = &args.screenshots {
            fs::create_dir_all(folder)?;
            let name = if built.ends_with("zh/html") {
                "zh"
            } else {
                "en"
            };
            let png = folder.join(format!("lesson-1-{name}.png"));
            browser::screenshot(&built.join("lesson-1-hello.html"), &png)?;
            eprintln!("    wrote {}", png.display());
        }
    }
    eprintln!(
        "    the book: {} (English), {} (Chinese)",
        docs.join("book/html/index.html").display(),
        docs.join("book/zh/html/index.html").display()
    );
    Ok(())
}

/// Builds both editions with mdBook and its link checker; returns their HTML folders, English first.
pub fn build_books(toolchain: &Toolchain) -> anyhow::Result<[PathBuf; 2]> {
    let mdbook = ensure_tool(toolchain, "mdbook", MDBOOK_VERSION, "search")?;
    let linkcheck = ensure_tool(toolchain, "mdbook-linkcheck2", LINKCHECK_VERSION, "")?;
    let docs = workspace_root().join("docs");
    for book in [docs.clone(), docs.join("zh")] {
        // mdBook finds its backends on PATH; this one is required here (in `book.toml` it is
        // optional, for a plain `mdbook build` without it).
        let path = crate::pinned::path_with(linkcheck.parent().unwrap());
        run_step(
            &format!(
                "mdbook build {} (HTML, then the link check)",
                book.display()
            ),
            Command::new(&mdbook)
                .arg("build")
                .arg(&book)
                .env("PATH", path),
        )?;
    }
    Ok([docs.join("book/html"), docs.join("book/zh/html")])
}

/// Runs each lesson and writes what it prints into `docs/src/transcripts/` (as root: the lessons
/// load eBPF programs), with the verifier's answer to lesson 2 reading a field without the helper.
pub fn record_transcripts() -> anyhow::Result<()> {
    let folder = transcripts_folder();
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = folder.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        sudo::give_back(&path)?;
        eprintln!("    wrote docs/src/transcripts/{name}");
        Ok(())
    };
    for transcript in &TRANSCRIPTS {
        write(
            &format!("{}.txt", transcript.name),
            transcript.record(&binary_of(transcript)?)?,
        )?;
    }
    write("verifier-rejection.txt", record_verifier_rejection()?)
}

/// Lesson 2 with `VERIFIER_PATCH` applied: it reads `sk->sk_max_ack_backlog` by dereferencing the
/// pointer, and the verifier refuses the program.
const VERIFIER_LESSON: u8 = 2;
const VERIFIER_PATCH: &str = "verifier-direct-read.patch";

/// Runs the patched lesson 2 (built by `run` in the clean checkout) on the tracepoint path and
/// returns what it printed when the kernel refused it: the verifier's log ends with its reason.
fn record_verifier_rejection() -> anyhow::Result<String> {
    let lesson = lessons::find(VERIFIER_LESSON)?;
    let binary = check::clean_checkout_target()
        .join("release")
        .join(lesson.package);
    let output = Command::new(&binary)
        .args(["--attach", "tracepoint"])
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if output.status.success() {
        bail!("lesson 2 with {VERIFIER_PATCH} was not refused by the verifier");
    }
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    shorten_verifier_log(&text).with_context(|| {
        format!(
            "lesson 2 with {VERIFIER_PATCH} failed, but not with the verifier's refusal:\n{text}"
        )
    })
}

/// The page shows the attach line up to the log's first line, then the log's last lines: the
/// instruction refused, the verifier's reason and its statistics. The walk in between (a line per
/// instruction, mostly the offsets read from `.rodata`) is counted, not shown.
fn shorten_verifier_log(text: &str) -> Option<String> {
    const LAST_LINES_BEFORE_REASON: usize = 4;
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("struct offsets"))
        .collect();
    let first = lines
        .iter()
        .position(|line| line.contains("Verifier output:"))?;
    let reason = lines
        .iter()
        .position(|line| line.contains("invalid mem access"))?;
    let tail = reason.checked_sub(LAST_LINES_BEFORE_REASON)?.max(first + 1);
    let mut shown: Vec<String> = lines[..=first]
        .iter()
        .map(|line| line.to_string())
        .collect();
    if tail > first + 1 {
        shown.push(format!(
            "[... {} more lines: the verifier's walk through the instructions ...]",
            tail - first - 1
        ));
    }
    shown.extend(lines[tail..].iter().map(|line| line.to_string()));
    Some(shown.join("\n") + "\n")
}

/// A tool of the book (mdBook, its link checker), built once per machine from crates.io into
/// `.tools/` like bpf-linker; returns its binary.
fn ensure_tool(
    toolchain: &Toolchain,
    name: &str,
    version: &str,
    features: &str,
) -> anyhow::Result<PathBuf> {
    let tool = workspace_root().join(".tools/bin").join(name);
    let version_said = Command::new(&tool).arg("--version").output();
    if version_said.is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(version)) {
        return Ok(tool);
    }
    eprintln!(
        "    {name} {version}: building it from crates.io into {} (a few minutes, once per machine)",
        crate::setup::shown_tools_folder()
    );
    let mut install = crate::setup::install_tool(toolchain, name, version, features);
    run_step(&format!("cargo install {name}"), &mut install)?;
    Ok(tool)
}

pub fn transcripts_folder() -> PathBuf {
    workspace_root().join(support::transcripts::FOLDER)
}

/// The step binary that `cargo xtask build` made for a transcript's lesson.
fn binary_of(transcript: &Transcript) -> anyhow::Result<PathBuf> {
    let lesson = lessons::find(transcript.lesson)?;
    Ok(target_dir().join("release").join(lesson.package))
}

/// The test: each transcript on the pages still has the format of what the lesson prints now, the
/// one recorded here and the one from the stock kernel (attach lines aside, which depend on the
/// kernel).
pub fn check_transcripts() -> anyhow::Result<()> {
    let started = Instant::now();
    for transcript in &TRANSCRIPTS {
        let now = transcript.record(&binary_of(transcript)?)?;
        for name in [
            transcript.name.to_string(),
            format!("{}-stock", transcript.name),
        ] {
            let path = transcripts_folder().join(format!("{name}.txt"));
            let on_page = fs::read_to_string(&path)
                .with_context(|| format!("{} is missing", path.display()))?;
            // Where the rows differ by path, the stock kernel's (another path) keep only the
            // lines around them: the header and the status lines (a row begins with its PID).
            let around_rows = |text: &str| -> Vec<String> {
                let other_path = transcript.rows_depend_on_the_path && name.ends_with("-stock");
                shape(text)
                    .into_iter()
                    .filter(|line| !(other_path && line.starts_with('#')))
                    .collect()
            };
            if around_rows(&on_page) != around_rows(&now) {
                bail!(
                    "the transcript {} no longer matches what lesson {} prints: run `cargo xtask \
                     docs --refresh-transcripts`.\non the page:\n{on_page}\nnow:\n{now}",
                    path.display(),
                    transcript.lesson
                );
            }
        }
    }
    eprintln!(
        "    transcripts: every page shows the format the lessons print ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_log_keeps_its_start_and_its_reason() {
        let log = "struct offsets x\nkprobe: ... Verifier output: 0: R1=ctx()\n1: a\n2: b\n3: c\n\
                   4: d\n5: e\n6: f\nR6 invalid mem access 'scalar'\nverification time 1 usec\n";
        assert_eq!(
            shorten_verifier_log(log).unwrap(),
            "kprobe: ... Verifier output: 0: R1=ctx()\n\
             [... 2 more lines: the verifier's walk through the instructions ...]\n\
             3: c\n4: d\n5: e\n6: f\nR6 invalid mem access 'scalar'\nverification time 1 usec\n"
        );
        assert_eq!(shorten_verifier_log("error: no BTF\n"), None);
    }

    #[test]
    fn a_shape_ignores_the_values_but_not_the_format() {
        let one = "2026-11-25T12:39:46.226Z Listening on 127.0.0.1:4242 with up to 7 pending connections!";
        let two = "2026-11-26T08:01:02.003Z Listening on 10.0.0.12:80 with up to 511 pending connections!";
        assert_eq!(shape(one), shape(two));
        let changed = "2026-11-25T12:39:46.226Z Listening on 127.0.0.1:4242, backlog 7";
        assert_ne!(shape(one), shape(changed));
        let table = "10588   xtask            4026532177  TCPv4  7        0.0.0.0      4242   n/a";
        let other = "9       nginx            4026531833  TCPv4  511      ::1          80     n/a";
        assert_ne!(shape(table), shape(other), "a name is not a value we mask");
    }
}
