//! The built book opened in a real browser, headless Chromium: every picture of a page loads and
//! has a size, and the page logs no error to its console.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{host_packages, pinned::target_dir};

/// How long the browser may take to load a page and its pictures (virtual time: it fast-forwards
/// through idle waits).
const PAGE_BUDGET_MS: &str = "10000";

/// Opens every built page of `built` (an edition's HTML folder) that shows a picture; returns the
/// pages checked and the pictures seen.
pub fn check(built: &Path) -> anyhow::Result<(usize, usize)> {
    host_packages::ensure(
        "docs (the book's pictures, opened in a browser)",
        &[host_packages::CHROMIUM, host_packages::FONT_CJK],
    )?;
    let (mut pages, mut pictures) = (0, 0);
    for page in pages_with_pictures(built)? {
        pictures += check_page(&page)?;
        pages += 1;
    }
    if pages == 0 {
        bail!("no page of {} shows a picture", built.display());
    }
    Ok((pages, pictures))
}

/// The HTML pages of `built` that show one of the book's pictures (in `images/`).
fn pages_with_pictures(built: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(built).with_context(|| format!("no book in {}", built.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "html")
            && !path.ends_with("print.html")
            && fs::read_to_string(&path)?.contains("<img src=\"images/")
        {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// Loads `page` in a frame of a small page of ours, which then reads the state of the frame's
/// pictures (the browser may read a `file:` frame with `--allow-file-access-from-files`); fails on
/// a picture that did not render or an error in the console. Returns how many pictures it saw.
fn check_page(page: &Path) -> anyhow::Result<usize> {
    let folder = target_dir().join("book-browser-check");
    fs::create_dir_all(&folder)?;
    let harness = folder.join("harness.html");
    fs::write(
        &harness,
        format!(
            r#"<!DOCTYPE html><html><body>
<iframe id="page" src="file://{page}" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("page").onload = function () {{
  setTimeout(function () {{
    var images = Array.from(this.contentDocument.images).filter(function (image) {{
      return image.src.indexOf("/images/") >= 0;
    }});
    var broken = images.filter(function (image) {{
      return !(image.complete && image.naturalWidth > 0 && image.naturalHeight > 0);
    }}).map(function (image) {{ return image.src; }});
    var sources = new Set(images.map(function (image) {{ return image.src; }}));
    document.body.setAttribute("data-pictures", sources.size);
    document.body.setAttribute("data-broken", broken.join(" "));
  }}.bind(this), 500);
}};
</script></body></html>"#,
            page = page.display()
        ),
    )?;
    let output = headless_chromium()
        .args([
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", folder.join("profile").display()),
            "--dump-dom",
        ])
        .arg(format!("file://{}", harness.display()))
        .output()
        .context("cannot start chromium")?;
    let dom = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    let attribute = |name: &str| -> Option<String> {
        let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
        Some(dom[start..start + dom[start..].find('"')?].to_string())
    };
    let Some(pictures) = attribute("data-pictures").and_then(|count| count.parse::<usize>().ok())
    else {
        bail!(
            "{}: the browser did not finish loading the page ({}):\n{log}",
            page.display(),
            output.status
        );
    };
    let broken = attribute("data-broken").unwrap_or_default();
    if pictures == 0 || !broken.is_empty() {
        bail!(
            "{}: {pictures} picture(s), of which did not render: {broken}",
            page.display()
        );
    }
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("CONSOLE") && (line.contains("ERROR") || line.contains("Uncaught"))
        })
        .collect();
    if !console_errors.is_empty() {
        bail!(
            "{}: the page logged errors:\n{}",
            page.display(),
            console_errors.join("\n")
        );
    }
    Ok(pictures)
}

/// Chromium without a screen (`--no-sandbox`: root may run it), with `PAGE_BUDGET_MS` to load a
/// page.
fn headless_chromium() -> Command {
    let mut chromium = Command::new("chromium");
    chromium.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        &format!("--virtual-time-budget={PAGE_BUDGET_MS}"),
    ]);
    chromium
}

/// A picture of `page` as the browser shows it, for a person to look at.
pub fn screenshot(page: &Path, png: &Path) -> anyhow::Result<()> {
    let status = headless_chromium()
        .args(["--hide-scrollbars", "--window-size=1280,2000"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .context("cannot start chromium")?
        .status;
    if !status.success() {
        bail!("chromium could not take a screenshot of {}", page.display());
    }
    Ok(())
}
