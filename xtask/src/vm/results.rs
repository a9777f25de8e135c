//! What a full run leaves for the book: the kernels table and the stock kernel's transcripts, written
//! with `--write`, compared otherwise.

use std::{fmt::Write as _, fs};

use super::*;

/// The file that names the kernel release the stock transcripts come from (`uname -r` in the
/// guest), which the pages include beside them.
pub(super) const STOCK_RELEASE_FILE: &str = "stock-kernel.txt";

/// Writes the transcripts that the stock kernel's guest printed as the pages' first ones,
/// `docs/src/transcripts/NAME-stock.txt`, and the release they come from in `STOCK_RELEASE_FILE`.
pub(super) fn write_stock_transcripts(results: &[CaseResult], release: &str) -> anyhow::Result<()> {
    let path = crate::workspace_root()
        .join(support::transcripts::FOLDER)
        .join(STOCK_RELEASE_FILE);
    fs::write(&path, release)?;
    eprintln!("    vm-test: wrote {} ({release})", path.display());
    for result in results.iter().filter(|result| result.passed) {
        for (name, text) in support::transcripts::printed(&result.output) {
            let path = crate::workspace_root()
                .join(support::transcripts::FOLDER)
                .join(format!("{name}-stock.txt"));
            fs::write(&path, text)?;
            eprintln!(
                "    vm-test: wrote {} (the stock kernel's transcript)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Compares the transcripts that the stock kernel's guest printed with the pages' ones by their
/// shape (values aside); returns what no longer matches.
pub(super) fn compare_stock_transcripts(results: &[CaseResult]) -> anyhow::Result<Vec<String>> {
    let mut out_of_date = Vec::new();
    // The release they were recorded in may be an older point release, but of the stock series.
    let path = crate::workspace_root()
        .join(support::transcripts::FOLDER)
        .join(STOCK_RELEASE_FILE);
    let recorded = fs::read_to_string(&path).unwrap_or_default();
    let package = format!("linux-image-{}", recorded.trim());
    if kernels::newest_in_series(STOCK_KERNEL, [package.as_str()]).is_none() {
        eprintln!(
            "    OUT OF DATE: {} names {recorded:?}, not a release of the stock series {STOCK_KERNEL}",
            path.display()
        );
        out_of_date.push(format!(
            "the stock transcripts' release ({STOCK_RELEASE_FILE})"
        ));
    }
    for result in results.iter().filter(|result| result.passed) {
        for (name, text) in support::transcripts::printed(&result.output) {
            let path = crate::workspace_root()
                .join(support::transcripts::FOLDER)
                .join(format!("{name}-stock.txt"));
            let on_page = fs::read_to_string(&path).unwrap_or_default();
            if support::transcripts::shape(&on_page) != support::transcripts::shape(&text) {
                eprintln!(
                    "    OUT OF DATE: {} no longer has the shape of what the stock kernel printed \
                     (`cargo xtask docs --refresh-transcripts` rewrites it):\n{text}",
                    path.display()
                );
                out_of_date.push(format!("the transcript {name}-stock.txt"));
            }
        }
    }
    Ok(out_of_date)
}

/// The cells of the kernels table that a run decides (CPU, paths, MPTCP, cases), without the date,
/// the seconds and the exact package and release, which change from run to run.
pub(super) fn outcomes(page: &str) -> Vec<Vec<String>> {
    page.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            // Neither the times nor the exact package and release (each run takes its series'
            // newest): the rows stay in the order of `GUEST_KERNELS`.
            line.split('|')
                .map(str::trim)
                .enumerate()
                .filter(|(column, cell)| ![1, 3].contains(column) && !cell.ends_with(" s"))
                .map(|(_, cell)| String::from(cell))
                .collect()
        })
        .collect()
}

/// The generated table of kernels × attach paths, included by the kernels page.
pub(super) const MATRIX_PAGE: &str = "docs/src/vm-test-results.md";

/// What one guest showed: its kernel, which paths attached, MPTCP, the cases and the times.
pub(super) struct MatrixRow {
    pub(super) package: &'static str,
    pub(super) arch: Arch,
    pub(super) release: String,
    pub(super) paths: Vec<(&'static str, bool)>,
    /// Whether lesson 14 said that this kernel refused its sockops path.
    pub(super) sockops_refused: bool,
    pub(super) mptcp: &'static str,
    pub(super) passed: usize,
    pub(super) cases: usize,
    pub(super) run: GuestRun,
}

impl MatrixRow {
    pub(super) fn of(kernel: &GuestKernel, results: &[CaseResult], run: GuestRun) -> Self {
        let said = |text: &str| results.iter().any(|result| result.output.contains(text));
        Self {
            package: kernel.package,
            arch: kernel.arch,
            release: run.release.clone(),
            paths: vec![
                ("kprobe", said("kprobe inet_listen(): attached")),
                ("fentry", said("fentry inet_listen(): attached")),
                (
                    "tracepoint",
                    said("tracepoint sock:inet_sock_set_state: attached"),
                ),
                (
                    "sockops",
                    said("sock_ops program on the cgroup2 root: attached"),
                ),
            ],
            sockops_refused: said("sock_ops program on the cgroup2 root: not available"),
            mptcp: if said("program mptcp_") {
                "yes"
            } else if said("has no MPTCP") {
                "not in this kernel"
            } else {
                "not checked"
            },
            passed: results.iter().filter(|result| result.passed).count(),
            cases: results.len(),
            run,
        }
    }
}

pub(super) fn matrix_page(rows: &[MatrixRow]) -> anyhow::Result<String> {
    let date = crate::utc_now()?;
    let mut text = String::from(
        "<!-- Written by `cargo xtask vm-test` (the built-in kernels, every case): do not edit. -->\n\n",
    );
    writeln!(
        text,
        "The latest `cargo xtask vm-test`, {date} (guests under qemu):\n"
    )?;
    writeln!(
        text,
        "| kernel package | CPU | `uname -r` | kprobe | fentry | tracepoint | sockops (lessons 7 to 14) | MPTCP | cases | boot | whole run |"
    )?;
    writeln!(text, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let mark = |wanted: &str| {
            let attached = row.paths.iter().any(|&(path, seen)| path == wanted && seen);
            if attached { "attached" } else { "not seen" }
        };
        let sockops = if row.sockops_refused && mark("sockops") == "not seen" {
            "refused"
        } else {
            mark("sockops")
        };
        writeln!(
            text,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} of {} passed | {:.1} s | {:.1} s |",
            row.package,
            row.arch.debian(),
            row.release,
            mark("kprobe"),
            mark("fentry"),
            mark("tracepoint"),
            sockops,
            row.mptcp,
            row.passed,
            row.cases,
            row.run.boot_seconds,
            row.run.whole_seconds,
        )?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_package_of_the_same_series_is_not_a_new_outcome() {
        let row = |package: &str, release: &str, fentry: &str, seconds: &str| {
            format!(
                "| `{package}` | amd64 | {release} | attached | {fentry} | attached | attached | yes | 38 of 38 passed | 2.3 s | {seconds} s |"
            )
        };
        let before = row(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "attached",
            "129.5",
        );
        let after = row(
            "linux-image-6.1.0-57-cloud-amd64",
            "6.1.0-57-cloud-amd64",
            "attached",
            "151.2",
        );
        assert_eq!(outcomes(&before), outcomes(&after));
        let refused = row(
            "linux-image-6.1.0-57-cloud-amd64",
            "6.1.0-57-cloud-amd64",
            "refused",
            "151.2",
        );
        assert_ne!(outcomes(&before), outcomes(&refused));
    }
}
