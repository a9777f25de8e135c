//! `cargo xtask docs`: the book, in English (`docs/`) and Chinese (`docs/zh/`), built with mdBook,
//! and the checks that keep it from drifting away from the code: every `{{#include}}` resolves to
//! something, both editions include the same code, links lead somewhere, and the transcripts on the
//! pages have the format the programs print today (`--refresh-transcripts` rewrites them from real
//! runs).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use support::transcripts::{TRANSCRIPTS, Transcript, shape};

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
}

/// The two editions: where their pages are.
fn editions() -> [PathBuf; 2] {
    let docs = workspace_root().join("docs");
    [docs.join("src"), docs.join("zh/src")]
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
                expect: "kprobe,fentry,tracepoint".to_string(),
                write: true,
                ..vm::VmTestArgs::default()
            },
        )?;
    }
    check_pages()?;
    let mdbook = ensure_tool(toolchain, "mdbook", MDBOOK_VERSION, "search")?;
    let linkcheck = ensure_tool(toolchain, "mdbook-linkcheck2", LINKCHECK_VERSION, "")?;
    let docs = workspace_root().join("docs");
    for book in [docs.clone(), docs.join("zh")] {
        // mdBook finds its backends on PATH; this one is required here (in `book.toml` it is
        // optional, for a plain `mdbook build` without it).
        let path = std::env::join_paths(
            std::iter::once(linkcheck.parent().unwrap().to_path_buf()).chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
            ),
        )?;
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
    check_fragments(&docs)?;
    eprintln!(
        "    the book: {} (English), {} (Chinese)",
        docs.join("book/html/index.html").display(),
        docs.join("book/zh/html/index.html").display()
    );
    Ok(())
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

/// The checks on the pages that need no program to run, which no checker does for us: mdBook only
/// logs an include whose file is missing and includes nothing for a missing anchor, and the two
/// editions must include the same code and list the same pages. (Links: mdbook-linkcheck2.)
pub fn check_pages() -> anyhow::Result<()> {
    let started = Instant::now();
    let [english, chinese] = editions();
    let mut problems = Vec::new();
    for edition in [&english, &chinese] {
        for page in pages(edition)? {
            let text = fs::read_to_string(&page)?;
            problems.extend(include_problems(&page, &text));
        }
    }
    for page in pages(&chinese)? {
        let name = page.file_name().unwrap();
        let original = english.join(name);
        if !original.exists() {
            problems.push(format!("{}: no English page of that name", page.display()));
            continue;
        }
        let (ours, theirs) = (included_code(&page)?, included_code(&original)?);
        if ours != theirs {
            problems.push(format!(
                "{} does not include the same code as {}: only in Chinese {:?}, only in English {:?}",
                page.display(),
                original.display(),
                ours.difference(&theirs).collect::<Vec<_>>(),
                theirs.difference(&ours).collect::<Vec<_>>()
            ));
        }
    }
    let (english_pages, chinese_pages) = (listed_pages(&english)?, listed_pages(&chinese)?);
    for (page, only_in) in english_pages
        .symmetric_difference(&chinese_pages)
        .map(|page| match english_pages.contains(page) {
            true => (page, "English"),
            false => (page, "Chinese"),
        })
    {
        problems.push(format!("{page}: a page of the {only_in} edition only"));
    }
    for page in pages(&chinese)? {
        problems.extend(spacing_problems(&page, &fs::read_to_string(&page)?));
    }
    if !problems.is_empty() {
        bail!(
            "the book has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    eprintln!(
        "    book pages: includes, anchors, the editions' pages and spacing are fine ({:.2} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Links to a place in a page (`page.md#heading`, `#heading`) whose page, as mdBook built it, has
/// an element of that id. By hand: mdbook-linkcheck2 checks that the page exists, not the place.
fn check_fragments(docs: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (edition, built) in editions()
        .into_iter()
        .zip([docs.join("book/html"), docs.join("book/zh/html")])
    {
        for page in pages(&edition)? {
            let text = fs::read_to_string(&page)?;
            for (target, fragment) in fragment_links(&text) {
                let html_page = match target {
                    "" => page.with_extension("html"),
                    target => page.parent().unwrap().join(target).with_extension("html"),
                };
                let Ok(relative) = html_page.strip_prefix(&edition) else {
                    continue; // a page outside the book (the sources)
                };
                let html = fs::read_to_string(built.join(relative)).unwrap_or_default();
                if !html.contains(&format!("id=\"{fragment}\"")) {
                    problems.push(format!(
                        "{}: no place `#{fragment}` in {}",
                        page.display(),
                        relative.display()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the book links to {} place(s) that do not exist:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The links of a page that name a place: (the page, `""` for this one; the fragment).
fn fragment_links(text: &str) -> Vec<(&str, &str)> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')')?];
            let (page, fragment) = target.split_once('#')?;
            let local = !page.contains("://") && (page.is_empty() || page.ends_with(".md"));
            local.then_some((page, fragment))
        })
        .collect()
}

/// The pages an edition's `SUMMARY.md` lists (the table of contents).
fn listed_pages(edition: &Path) -> anyhow::Result<BTreeSet<String>> {
    let summary = fs::read_to_string(edition.join("SUMMARY.md"))
        .with_context(|| format!("no SUMMARY.md in {}", edition.display()))?;
    Ok(summary
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &summary[at + 2..];
            Some(rest[..rest.find(')')?].to_string())
        })
        .collect())
}

/// Full-width punctuation ends with its own space: a half-width space after it (left where wrapped
/// lines were joined) is a stray. Code blocks are left alone.
fn spacing_problems(page: &Path, text: &str) -> Vec<String> {
    const FULL_WIDTH: &str = "，。：；！？、（）《》「」『』【】";
    let mut in_code = false;
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let characters: Vec<char> = line.chars().collect();
        for (at, &character) in characters.iter().enumerate() {
            if !FULL_WIDTH.contains(character) {
                continue;
            }
            // A table's cell separator (`） |`, `| （`) may stand beside one with its spaces.
            if characters.get(at + 1) == Some(&' ') && characters.get(at + 2) != Some(&'|') {
                problems.push(format!(
                    "{}:{}: a half-width space after `{character}`",
                    page.display(),
                    number + 1
                ));
            }
            if at > 0 && characters[at - 1] == ' ' && !(at > 1 && characters[at - 2] == '|') {
                problems.push(format!(
                    "{}:{}: a half-width space before `{character}`",
                    page.display(),
                    number + 1
                ));
            }
        }
    }
    problems
}

fn pages(edition: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages: Vec<_> = fs::read_dir(edition)
        .with_context(|| format!("no book pages in {}", edition.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    Ok(pages)
}

/// The `{{#include PATH[:ANCHOR]}}` directives of a page.
fn includes(text: &str) -> Vec<(&str, Option<&str>)> {
    text.match_indices("{{#include ")
        .filter_map(|(at, _)| {
            let rest = &text[at + "{{#include ".len()..];
            let inside = &rest[..rest.find("}}")?];
            Some(match inside.split_once(':') {
                Some((path, anchor)) => (path.trim(), Some(anchor.trim())),
                None => (inside.trim(), None),
            })
        })
        .collect()
}

/// The code a page includes: (file, anchor) with the file's path resolved, so that the editions
/// can be compared whatever their folders.
fn included_code(page: &Path) -> anyhow::Result<BTreeSet<(PathBuf, String)>> {
    let text = fs::read_to_string(page)?;
    let folder = page.parent().unwrap();
    Ok(includes(&text)
        .into_iter()
        .map(|(path, anchor)| {
            let file = folder
                .join(path)
                .canonicalize()
                .unwrap_or_else(|_| folder.join(path));
            // Text in two languages (an exercise's hint) is the same include in each edition.
            let file = match file.to_str().and_then(|name| name.strip_suffix(".zh.md")) {
                Some(english) => PathBuf::from(format!("{english}.md")),
                None => file,
            };
            (file, anchor.unwrap_or_default().to_string())
        })
        .collect())
}

fn include_problems(page: &Path, text: &str) -> Vec<String> {
    let folder = page.parent().unwrap();
    includes(text)
        .into_iter()
        .filter_map(|(path, anchor)| {
            let Ok(source) = fs::read_to_string(folder.join(path)) else {
                return Some(format!(
                    "{}: {{{{#include {path}}}}}: no such file",
                    page.display()
                ));
            };
            let content = match anchor {
                Some(anchor) => anchored(&source, anchor),
                None => Some(source),
            };
            match content {
                Some(content) if !content.trim().is_empty() => None,
                Some(_) => Some(format!(
                    "{}: {path}:{} is empty",
                    page.display(),
                    anchor.unwrap_or("")
                )),
                None => Some(format!(
                    "{}: {path} has no anchor {}",
                    page.display(),
                    anchor.unwrap_or("")
                )),
            }
        })
        .collect()
}

/// The lines between `ANCHOR: name` and `ANCHOR_END: name`, as mdBook takes them.
fn anchored(source: &str, anchor: &str) -> Option<String> {
    let start = format!("ANCHOR: {anchor}");
    let end = format!("ANCHOR_END: {anchor}");
    let mut lines = source
        .lines()
        .skip_while(|line| !line.trim_end().ends_with(&start));
    lines.next()?;
    let mut content = String::new();
    for line in lines {
        if line.trim_end().ends_with(&end) {
            return Some(content);
        }
        if !line.contains("ANCHOR") {
            content.push_str(line);
            content.push('\n');
        }
    }
    None
}

/// A tool of the book (mdBook, its link checker), built once from crates.io into `.tools/` like
/// bpf-linker; returns its binary.
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
        "    {name} {version}: building it from crates.io into .tools/ (a few minutes, once)"
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
            if shape(&on_page) != shape(&now) {
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
    fn includes_are_read_with_their_anchors() {
        let text = "a\n{{#include ../../step1-hello/ebpf/src/main.rs:hello}}\nb {{#include transcripts/step1.txt}}";
        assert_eq!(
            includes(text),
            [
                ("../../step1-hello/ebpf/src/main.rs", Some("hello")),
                ("transcripts/step1.txt", None)
            ]
        );
    }

    #[test]
    fn an_anchor_gives_the_lines_between_its_markers() {
        let source = "x\n// ANCHOR: main\nfn main() {}\n// ANCHOR_END: main\ny\n";
        assert_eq!(anchored(source, "main").as_deref(), Some("fn main() {}\n"));
        assert_eq!(anchored(source, "other"), None);
    }

    #[test]
    fn a_space_after_full_width_punctuation_is_a_stray() {
        let page = Path::new("x.md");
        assert_eq!(
            spacing_problems(page, "好，这样。下一句 `code`。\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            spacing_problems(page, "第一句。 第二句\n```\n代码。 不算\n```\n"),
            ["x.md:1: a half-width space after `。`"]
        );
        assert_eq!(
            spacing_problems(page, "见 `x` （注）\n| （表格） |\n"),
            ["x.md:1: a half-width space before `（`"]
        );
    }

    #[test]
    fn links_to_a_place_are_found() {
        let text = "[a](x.md#one) [b](#two) [c](https://e.org/#x) [d](y.md) [e](z.html#no)";
        assert_eq!(fragment_links(text), [("x.md", "one"), ("", "two")]);
    }

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

    #[test]
    fn the_pages_include_what_exists_and_link_where_they_can() {
        check_pages().unwrap();
    }
}
