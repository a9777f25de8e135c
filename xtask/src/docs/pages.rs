//! The checks on the book's sources that no checker does for us, and the places its links name.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// The two editions: where their pages are.
pub(super) fn editions() -> [PathBuf; 2] {
    let docs = workspace_root().join("docs");
    [docs.join("src"), docs.join("zh/src")]
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
pub(super) fn check_fragments(docs: &Path) -> anyhow::Result<()> {
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
    fn the_pages_include_what_exists_and_link_where_they_can() {
        check_pages().unwrap();
    }
}
