//! `cargo xtask doctor`: a learner's preflight. It says, one line per item with its fix, whether
//! this machine can run the lessons: the kernel and CPU, BTF, which attach paths really load and
//! attach (by running lesson 1 itself with each `--attach`), privileges, the locked-memory limit
//! where the kernel needs it, tracefs, the toolchain and bpf-linker, free disk. Then a verdict per
//! lesson: the path it would take, whether the struct offsets of lessons 2 to 14 resolve in this
//! kernel's BTF, the syscall tracepoints that the fallback of lessons 6 to 14 needs, and MPTCP. Exit 0 only when
//! lesson 1 will run.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use common::{KERNEL_BTF, READY_LINE};
use serde_json::json;
use support::{BPF_LINKER, PINNED_RUST, running::RunningStep};

use crate::{
    lessons,
    pinned::{Toolchain, target_dir},
    workspace_root,
};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the findings as one JSON object (for a teacher who collects a room's results)
    #[arg(long)]
    pub json: bool,
}

/// One finding: what was checked, whether it is fine, what was seen, and the fix when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    item: &'static str,
    ok: bool,
    seen: String,
    fix: Option<String>,
}

impl Finding {
    fn good(item: &'static str, seen: impl Into<String>) -> Self {
        Self {
            item,
            ok: true,
            seen: seen.into(),
            fix: None,
        }
    }

    fn bad(item: &'static str, seen: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            item,
            ok: false,
            seen: seen.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Free disk the first build needs (the toolchain, bpf-linker and the build folders).
const DISK_NEEDED_GIB: f64 = 6.0;

pub fn run(toolchain: &Toolchain, args: &DoctorArgs) -> anyhow::Result<()> {
    let mut findings = vec![kernel(), btf()?];
    let privileged = privileges();
    let can_load = privileged.ok;
    findings.push(privileged);
    if let Some(memlock) = memlock()? {
        findings.push(memlock);
    }
    findings.push(tracefs());
    findings.push(cgroup2());
    findings.push(Finding::good(
        "toolchain",
        format!("Rust {PINNED_RUST} and {BPF_LINKER} (set up by this command when missing)"),
    ));
    findings.push(disk()?);
    let lesson = lessons::find(1)?;
    lessons::build(toolchain, &[lesson])?;
    let binary = target_dir().join("release").join(lesson.package);
    let paths: Vec<Finding> = ["kprobe", "fentry", "tracepoint"]
        .into_iter()
        .map(|path| attach_path(&binary, path, can_load))
        .collect();
    let any_path = paths.iter().any(|path| path.ok);
    findings.extend(paths);

    let ready = can_load && any_path;
    let path_works = |wanted: &str| {
        findings
            .iter()
            .any(|finding| finding.item == wanted && finding.ok)
    };
    let (tool, sockops) = if can_load {
        let lesson = lessons::find(lessons::TOOL)?;
        lessons::build(toolchain, &[lesson])?;
        let binary = target_dir().join("release").join(lesson.package);
        (try_tool(&binary, "auto"), try_tool(&binary, "sockops"))
    } else {
        let not_tried = || Err("not tried (no privileges)".to_string());
        (not_tried(), not_tried())
    };
    let mut lessons = lesson_verdicts(&tool, can_load, path_works);
    for sockops_lesson in lessons.iter_mut().filter(|lesson| lesson.number >= 7) {
        sockops_lesson.seen.push_str(&match &sockops {
            Ok(_) => {
                "; `--attach sockops` attaches here (it taxes no other system call)".to_string()
            }
            Err(said) => format!("; `--attach sockops` does not attach here: {said}"),
        });
    }
    let lessons_ready = lessons.iter().filter(|lesson| lesson.ready).count();
    let verdict = if ready && lessons_ready == lessons.len() {
        format!("ready: lessons 1 to {} will run here", lessons.len())
    } else if ready {
        let not: Vec<String> = lessons
            .iter()
            .filter(|lesson| !lesson.ready)
            .map(|lesson| lesson.number.to_string())
            .collect();
        format!(
            "lesson 1 will run here, lesson(s) {} will not (see their lines)",
            not.join(", ")
        )
    } else if !can_load {
        "not ready: the lessons cannot load their programs as this user (see privileges)"
            .to_string()
    } else {
        "not ready: no attach path works on this kernel (see the lines above)".to_string()
    };
    if args.json {
        let items: Vec<_> = findings
            .iter()
            .map(|finding| {
                json!({"item": finding.item, "ok": finding.ok, "seen": finding.seen, "fix": finding.fix})
            })
            .collect();
        let per_lesson: Vec<_> = lessons
            .iter()
            .map(|lesson| {
                json!({"lesson": lesson.number, "ready": lesson.ready, "path": lesson.path, "seen": lesson.seen})
            })
            .collect();
        println!(
            "{}",
            json!({"ready": ready, "verdict": verdict, "findings": items, "lessons": per_lesson})
        );
    } else {
        for finding in &findings {
            let mark = if finding.ok { "ok " } else { "!! " };
            println!("{mark} {:<11} {}", finding.item, finding.seen);
            if let Some(fix) = &finding.fix {
                println!("    {:<11} fix: {fix}", "");
            }
        }
        for lesson in &lessons {
            let mark = if lesson.ready { "ok " } else { "!! " };
            let item = format!("lesson {}", lesson.number);
            println!("{mark} {item:<11} {}", lesson.seen);
        }
        println!("verdict: {verdict}");
    }
    if ready {
        Ok(())
    } else {
        anyhow::bail!("{verdict}")
    }
}

/// What one lesson would do here.
struct LessonVerdict {
    number: u8,
    ready: bool,
    /// The attach path `--attach auto` would take.
    path: Option<&'static str>,
    seen: String,
}

/// The verdict per lesson. Lessons 1 to 4 hook the start of `inet_listen()` (kprobe, fentry) or
/// the state tracepoint, and lesson 5 adds their returns (kretprobe, fexit): they take the first
/// path lesson 1 showed working (`path_works`). Lessons 6 to 13 and the tool (lesson 14) follow each
/// call to its end on every path (the syscall tracepoints with the state tracepoint where kprobes
/// and fentry are missing): the tool is run here, as lesson 1 was, and what it printed says which
/// path it took. Each lesson's struct offsets are looked up as that lesson looks them up
/// (`lesson_offsets`): a kernel that lacks a field of a later lesson still runs the earlier ones.
fn lesson_verdicts(
    tool: &Result<String, String>,
    can_load: bool,
    path_works: impl Fn(&str) -> bool,
) -> Vec<LessonVerdict> {
    let entry_path = ["kprobe", "fentry", "tracepoint"]
        .into_iter()
        .find(|path| path_works(path));
    let btf = common::btf::KernelBtf::of_running_kernel().map_err(|error| format!("{error:#}"));
    let tool_path = match tool {
        Ok(stderr) => ["kprobe", "fentry", "tracepoint"].into_iter().find(|path| {
            stderr
                .lines()
                .any(|line| line.starts_with(path) && line.contains(": attached (program"))
        }),
        Err(_) => None,
    };
    let mptcp = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::from(i32::from(common::IPPROTO_MPTCP))),
    )
    .is_ok();
    let mut verdicts = Vec::new();
    for number in 1..=lessons::TOOL {
        // Lesson 6 takes the path the tool takes: the syscall tracepoints where kprobes and fentry
        // are missing.
        let path = if number >= 6 { tool_path } else { entry_path };
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        if !can_load {
            problems.push("cannot load programs as this user (see privileges)".to_string());
        }
        if number >= 2 && can_load {
            match lesson_offsets(number, &btf) {
                Ok(count) => notes.push(format!(
                    "its {count} struct offsets resolve in this kernel's BTF"
                )),
                Err(error) => problems.push(format!("its struct offsets do not resolve: {error}")),
            }
        }
        if number >= 6
            && path.is_none()
            && can_load
            && let Ok(said) | Err(said) = tool
        {
            problems.push(format!(
                "lesson {number} did not attach: {}",
                said.lines().last().unwrap_or_default()
            ));
        }
        if number >= 5 {
            notes.push(if mptcp {
                "MPTCP: in this kernel (its rows show)".to_string()
            } else {
                "MPTCP: not in this kernel (no MPTCP rows)".to_string()
            });
        }
        let shown_path = match (number, path) {
            (5.., Some("kprobe")) => "a kprobe and a kretprobe on inet_listen()".to_string(),
            (5.., Some("fentry")) => "fexit on inet_listen()".to_string(),
            (5, Some(_)) => {
                "the state tracepoint, which does not see a call end (lesson 6's path does)"
                    .to_string()
            }
            (6.., Some(_)) => {
                "the syscall tracepoints sys_enter_listen and sys_exit_listen (tracefs), with the \
                 state tracepoint"
                    .to_string()
            }
            (_, Some(path)) => format!("{path} (`--attach auto`)"),
            (_, None) => "no attach path".to_string(),
        };
        if path.is_none() && problems.is_empty() {
            problems.push("no attach path works here".to_string());
        }
        let ready = problems.is_empty();
        let seen = if ready {
            std::iter::once(format!("ready: {shown_path}"))
                .chain(notes)
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            format!("not ready: {}", problems.join("; "))
        };
        verdicts.push(LessonVerdict {
            number,
            ready,
            path,
            seen,
        });
    }
    verdicts
}

/// One lookup that a lesson's `sock_offsets()` makes, as its `src/main.rs` writes it:
/// `btf.field_offset("sock", &["__sk_common", "skc_family"], 2)?`.
#[derive(Debug, PartialEq, Eq)]
struct FieldLookup {
    name: String,
    path: Vec<String>,
    /// The size the kernel side reads: a number, or `POINTER`.
    size: usize,
}

/// The lookups in `source`, a lesson's `src/main.rs`, in their order.
fn field_lookups(source: &str) -> anyhow::Result<Vec<FieldLookup>> {
    let unquote = |text: &str| text.trim().trim_matches('"').to_string();
    source
        .split("btf.field_offset(")
        .skip(1)
        .map(|call| {
            let arguments = call.split_once(")?").map(|(arguments, _)| arguments);
            let (name, rest) = arguments
                .and_then(|arguments| arguments.split_once(", &["))
                .with_context(|| {
                    format!(
                        "cannot read the lookup `{}`",
                        call.lines().next().unwrap_or_default()
                    )
                })?;
            let (path, size) = rest
                .rsplit_once("], ")
                .with_context(|| format!("cannot read the member path of `{rest}`"))?;
            let size = match size.trim() {
                "POINTER" => common::btf::POINTER,
                number => number
                    .parse()
                    .with_context(|| format!("cannot read the size `{number}`"))?,
            };
            Ok(FieldLookup {
                name: unquote(name),
                path: path.split(',').map(unquote).collect(),
                size,
            })
        })
        .collect()
}

/// Looks up in `btf` each struct field lesson `number` looks up, as it does; the number of fields.
fn lesson_offsets(
    number: u8,
    btf: &Result<common::btf::KernelBtf, String>,
) -> Result<usize, String> {
    let lesson = lessons::find(number).map_err(|error| format!("{error:#}"))?;
    let main = workspace_root().join(lesson.package).join("src/main.rs");
    let lookups = fs::read_to_string(&main)
        .map_err(anyhow::Error::from)
        .and_then(|source| field_lookups(&source))
        .map_err(|error| format!("{}: {error:#}", main.display()))?;
    let btf = btf.as_ref().map_err(Clone::clone)?;
    for lookup in &lookups {
        let path: Vec<&str> = lookup.path.iter().map(String::as_str).collect();
        btf.field_offset(&lookup.name, &path, lookup.size)
            .map_err(|error| format!("{error:#}"))?;
    }
    Ok(lookups.len())
}

/// `binary` run as root: directly when we are root, else through sudo.
fn as_root(binary: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        Command::new(binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(binary);
        sudo
    }
}

/// Runs the tool (lesson 14) for a moment with `--attach ATTACH`: its status lines (stderr) when it got ready,
/// else the error it ended with.
fn try_tool(binary: &Path, attach: &str) -> Result<String, String> {
    let mut command = as_root(binary);
    command.args(["--attach", attach, "--duration", "0.2"]);
    let finished = RunningStep::try_spawn(&mut command)?.try_wait(Duration::from_secs(30))?;
    let stderr = finished.stderr();
    if stderr.lines().any(|line| line == READY_LINE) {
        Ok(stderr)
    } else {
        Err(stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no output")
            .to_string())
    }
}

fn kernel() -> Finding {
    let uname = nix::sys::utsname::uname();
    let (release, machine) = uname.map_or_else(
        |_| ("unknown".into(), "unknown".into()),
        |uname| {
            (
                uname.release().to_string_lossy().into_owned(),
                uname.machine().to_string_lossy().into_owned(),
            )
        },
    );
    match machine.as_str() {
        "x86_64" | "aarch64" => Finding::good("kernel", format!("Linux {release} on {machine}")),
        _ => Finding::bad(
            "kernel",
            format!("Linux {release} on {machine}"),
            "the lessons are tested on x86-64 and arm64 (aarch64) only",
        ),
    }
}

fn btf() -> anyhow::Result<Finding> {
    Ok(if Path::new(KERNEL_BTF).exists() {
        Finding::good("BTF", format!("{KERNEL_BTF} is there"))
    } else {
        Finding::bad(
            "BTF",
            format!("{KERNEL_BTF} is missing"),
            "lessons 2 to 14 need a kernel built with CONFIG_DEBUG_INFO_BTF (every major \
             distribution's is); lesson 1 runs without it",
        )
    })
}

fn privileges() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::good("privileges", "root")
    } else if crate::sudo::has_sudo() {
        Finding::good(
            "privileges",
            "not root, sudo is installed: `cargo xtask run` goes through sudo",
        )
    } else {
        Finding::bad(
            "privileges",
            "not root, and no sudo",
            "run as root, or install sudo and give this user sudo rights",
        )
    }
}

/// The locked-memory limit, where the kernel counts BPF maps against it (before 5.11).
fn memlock() -> anyhow::Result<Option<Finding>> {
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (5, 11) {
        return Ok(None);
    }
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)?;
    let root = nix::unistd::geteuid().is_root();
    Ok(Some(
        if soft == nix::sys::resource::RLIM_INFINITY || root || soft >= 64 << 20 {
            Finding::good(
                "memlock",
                "kernel before 5.11: the lessons lift the locked-memory limit themselves",
            )
        } else {
            Finding::bad(
                "memlock",
                format!(
                    "kernel before 5.11 counts BPF maps against a locked-memory limit of {} KiB",
                    soft / 1024
                ),
                "run the lessons as root (they lift the limit), or `ulimit -l unlimited`",
            )
        },
    ))
}

fn tracefs() -> Finding {
    let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| Path::new(root).join("events").is_dir());
    Finding::good(
        "tracefs",
        if mounted {
            "mounted"
        } else {
            "not mounted: lesson 6's tracepoint path mounts it itself"
        },
    )
}

/// Where cgroup2 is mounted, which the sockops path of lessons 7 to 14 attaches to (it mounts it for a moment
/// where it is not).
fn cgroup2() -> Finding {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mount = common::cgroup2::mount_point(&mountinfo);
    Finding::good(
        "cgroup2",
        match mount {
            Some(point) => format!(
                "mounted at {} (`--attach sockops` of lessons 7 to 14 uses it)",
                point.display()
            ),
            None => "not mounted: `--attach sockops` of lessons 7 to 14 mounts it for a moment"
                .to_string(),
        },
    )
}

fn disk() -> anyhow::Result<Finding> {
    let stat = nix::sys::statvfs::statvfs(&workspace_root()).context("cannot read free disk")?;
    let free_gib =
        stat.blocks_available() as f64 * stat.fragment_size() as f64 / (1u64 << 30) as f64;
    Ok(if free_gib >= DISK_NEEDED_GIB {
        Finding::good("disk", format!("{free_gib:.1} GiB free"))
    } else {
        Finding::bad(
            "disk",
            format!("{free_gib:.1} GiB free"),
            format!("the first build needs about {DISK_NEEDED_GIB:.0} GiB: free some space"),
        )
    })
}

/// Runs lesson 1 with `--attach PATH` until it is ready (the path loaded and attached) or fails
/// (its last line says why, with the kernel's reason).
fn attach_path(binary: &Path, path: &'static str, can_load: bool) -> Finding {
    let item = match path {
        "kprobe" => "kprobe",
        "fentry" => "fentry",
        _ => "tracepoint",
    };
    if !can_load {
        return Finding::bad(item, "not tried (no privileges)", "see privileges");
    }
    let mut command = as_root(binary);
    command.args(["--attach", path, "--duration", "0.2"]);
    let outcome = match RunningStep::try_spawn(&mut command) {
        Ok(step) => step.try_wait(Duration::from_secs(20)),
        Err(error) => Err(error),
    };
    match outcome {
        Ok(finished) if finished.stderr().lines().any(|line| line == READY_LINE) => {
            Finding::good(item, "loads and attaches here")
        }
        Ok(finished) => {
            let reason = finished
                .stderr()
                .lines()
                .find_map(|line| {
                    line.split_once(": not available: ")
                        .map(|(_, why)| why.to_string())
                })
                .unwrap_or_else(|| finished.stderr().trim().to_string());
            Finding::bad(
                item,
                format!("unavailable: {reason}"),
                "nothing to do if another path works: `--attach auto` (the default) picks it",
            )
        }
        Err(error) => Finding::bad(
            item,
            format!("could not be tried: {error}"),
            "see the error",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookups read from each lesson's source are the fields of its `SockOffsets` (but
    /// `resolved`, which is no offset): the reading cannot miss one.
    #[test]
    fn every_lessons_lookups_are_the_fields_of_its_offsets() {
        for lesson in &lessons::LESSONS {
            let folder = workspace_root().join(lesson.package);
            let lookups =
                field_lookups(&fs::read_to_string(folder.join("src/main.rs")).unwrap()).unwrap();
            let fields = fs::read_to_string(folder.join("ebpf/src/offsets.rs"))
                .map(|offsets| {
                    offsets
                        .lines()
                        .filter(|line| {
                            line.trim_start().starts_with("pub ") && line.ends_with(": u32,")
                        })
                        .filter(|line| !line.contains("resolved"))
                        .count()
                })
                .unwrap_or(0);
            assert_eq!(lookups.len(), fields, "{}", lesson.package);
        }
        let lesson2 =
            fs::read_to_string(workspace_root().join("step2-backlog/src/main.rs")).unwrap();
        assert_eq!(
            field_lookups(&lesson2).unwrap()[0],
            FieldLookup {
                name: "sock".into(),
                path: vec!["sk_max_ack_backlog".into()],
                size: 4
            }
        );
    }

    #[test]
    fn findings_carry_their_fix_only_when_something_is_wrong() {
        assert_eq!(Finding::good("BTF", "there").fix, None);
        let bad = Finding::bad("BTF", "missing", "use a kernel with BTF");
        assert!(!bad.ok);
        assert_eq!(bad.fix.as_deref(), Some("use a kernel with BTF"));
    }
}
