//! The lessons, in order, and how to build and run their step binaries.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    pinned::{Toolchain, run_cargo, target_dir},
    workspace_root,
};

/// The lesson that makes the tool to keep: its filters, its `--json`, its sockops path.
pub const TOOL: u8 = 14;

/// One lesson: a step folder at the workspace root, holding a binary crate of the same name.
#[derive(Debug, PartialEq, Eq)]
pub struct Lesson {
    pub number: u8,
    pub package: &'static str,
    pub title: &'static str,
}

pub const LESSONS: [Lesson; 14] = [
    Lesson {
        number: 1,
        package: "step1-hello",
        title: "Hello World! on every listen()",
    },
    Lesson {
        number: 2,
        package: "step2-backlog",
        title: "+ the backlog",
    },
    Lesson {
        number: 3,
        package: "step3-addr-port",
        title: "+ the bound address and port",
    },
    Lesson {
        number: 4,
        package: "step4-netns-perf",
        title: "+ the network namespace, through a perf buffer",
    },
    Lesson {
        number: 5,
        package: "step5-ends",
        title: "+ each call to its end: the result, the final port, MPTCP once",
    },
    Lesson {
        number: 6,
        package: "step6-syscalls",
        title: "+ the listen() system call's tracepoints, where kprobes and fentry are missing",
    },
    Lesson {
        number: 7,
        package: "step7-sockops",
        title: "+ a path that costs nothing: a sock_ops program on the cgroup2 root",
    },
    Lesson {
        number: 8,
        package: "step8-ring-buffer",
        title: "+ one BPF ring buffer for every CPU, instead of a perf buffer per CPU",
    },
    Lesson {
        number: 9,
        package: "step9-full-ring",
        title: "+ a full ring: its size, and a count of what it had no room for",
    },
    Lesson {
        number: 10,
        package: "step10-wake-ups",
        title: "+ wake-ups that adapt: the reader is woken only when it waits",
    },
    Lesson {
        number: 11,
        package: "step11-counts",
        title: "+ every call accounted for: exact counts of what did not become a row",
    },
    Lesson {
        number: 12,
        package: "step12-filters",
        title: "+ filters in the kernel: --pid, --netns, --port",
    },
    Lesson {
        number: 13,
        package: "step13-table",
        title: "+ a table that says when, ended quietly when its output closes",
    },
    Lesson {
        number: 14,
        package: "step14-tool",
        title: "+ the tool to keep: the thread, the attach path, JSON lines",
    },
];

impl Lesson {
    fn is_present(&self) -> bool {
        workspace_root()
            .join(self.package)
            .join("Cargo.toml")
            .exists()
    }
}

/// The lesson with this number, or an error that lists the lessons.
pub fn find(number: u8) -> anyhow::Result<&'static Lesson> {
    match LESSONS.iter().find(|lesson| lesson.number == number) {
        Some(lesson) if lesson.is_present() => Ok(lesson),
        Some(lesson) => bail!(
            "lesson {number} ({}) is not in this checkout yet\n{}",
            lesson.package,
            lesson_list()
        ),
        None => bail!("there is no lesson {number}\n{}", lesson_list()),
    }
}

/// The lessons whose step folder exists.
pub fn present() -> anyhow::Result<Vec<&'static Lesson>> {
    Ok(LESSONS
        .iter()
        .filter(|lesson| lesson.is_present())
        .collect())
}

/// The eBPF crates of the present lessons: built for the BPF target only, so every host-side cargo
/// command leaves them out.
pub fn ebpf_crates() -> anyhow::Result<Vec<String>> {
    Ok(ebpf_crates_of(&present()?))
}

/// The eBPF crates of `lessons`.
pub fn ebpf_crates_of(lessons: &[&Lesson]) -> Vec<String> {
    lessons
        .iter()
        .map(|lesson| format!("{}-ebpf", lesson.package))
        .collect()
}

fn lesson_list() -> String {
    let mut list = String::from("the lessons (`cargo xtask run step N`):");
    for lesson in &LESSONS {
        let missing = if lesson.is_present() {
            ""
        } else {
            " (not in this checkout yet)"
        };
        list += &format!(
            "\n  {}  {:<17} {}{missing}",
            lesson.number, lesson.package, lesson.title
        );
    }
    list
}

/// Builds the step binaries and their eBPF programs.
pub fn build(toolchain: &Toolchain, lessons: &[&Lesson]) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release"];
    for lesson in lessons {
        args.extend(["--package", lesson.package]);
    }
    let names: Vec<_> = lessons.iter().map(|lesson| lesson.package).collect();
    let mut build = toolchain.cargo(&args);
    crate::ebpf::build_for(
        toolchain,
        &mut build,
        &ebpf_crates_of(lessons),
        crate::ebpf::this_arch(),
    )?;
    run_cargo(&format!("build {}", names.join(", ")), &mut build)
}

/// Replaces this process with the step binary, through sudo when we are not root, so that Ctrl-C and
/// SIGTERM reach the step itself.
pub fn exec(lesson: &Lesson, args: &[String]) -> anyhow::Result<()> {
    let binary = target_dir().join("release").join(lesson.package);
    let mut command = if crate::sudo::is_root() || !crate::sudo::has_sudo() {
        Command::new(&binary)
    } else {
        eprintln!(
            "    not root: running it with sudo (eBPF needs root, or CAP_BPF and CAP_PERFMON)"
        );
        let mut sudo = Command::new("sudo");
        sudo.arg("--preserve-env=RUST_LOG").arg(&binary);
        sudo
    };
    command.args(args);
    eprintln!(
        "==> lesson {}: {} {}",
        lesson.number,
        binary.display(),
        args.join(" ")
    );
    let error = command.exec();
    Err(error).with_context(|| format!("cannot run {}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lessons_are_numbered_in_order() {
        for (index, lesson) in LESSONS.iter().enumerate() {
            assert_eq!(usize::from(lesson.number), index + 1);
            assert!(
                lesson
                    .package
                    .starts_with(&format!("step{}-", lesson.number))
            );
        }
    }

    /// `cargo run` in a lesson's folder uses the pinned Rust, as `cargo xtask` does.
    #[test]
    fn every_lesson_folder_pins_the_toolchain() {
        for lesson in &LESSONS {
            let file = workspace_root()
                .join(lesson.package)
                .join("rust-toolchain.toml");
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&format!("channel = \"{}\"", support::PINNED_RUST)),
                "{}",
                file.display()
            );
            // Its build.rs builds the kernel side with the same Rust (bpf-linker's LLVM).
            let file = workspace_root().join(lesson.package).join("build.rs");
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&format!(
                    "const EBPF_TOOLCHAIN: &str = \"{}\";",
                    support::PINNED_RUST
                )),
                "{}",
                file.display()
            );
        }
    }

    /// A lesson names its dependencies itself (it builds where it is copied, with `common`), with
    /// the versions the other lessons and the workspace use.
    #[test]
    fn every_lesson_names_the_same_versions() {
        let read = |path: std::path::PathBuf| -> (std::path::PathBuf, toml::Table) {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text.parse().unwrap())
        };
        let root = workspace_root();
        let (_, workspace) = read(root.join("Cargo.toml"));
        let mut seen: std::collections::HashMap<String, (String, String)> = workspace["workspace"]
            ["dependencies"]
            .as_table()
            .unwrap()
            .iter()
            .filter_map(|(name, spec)| {
                Some((name.clone(), (version_of(spec)?, "the workspace".into())))
            })
            .collect();
        let manifests = LESSONS
            .iter()
            .flat_map(|lesson| {
                let folder = root.join(lesson.package);
                [folder.join("Cargo.toml"), folder.join("ebpf/Cargo.toml")]
            })
            .chain([root.join("common/Cargo.toml")]);
        for (path, manifest) in manifests.map(read) {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("workspace = true"),
                "{} takes something from the workspace",
                path.display()
            );
            for table in ["dependencies", "build-dependencies", "dev-dependencies"] {
                let Some(dependencies) = manifest.get(table).and_then(|table| table.as_table())
                else {
                    continue;
                };
                for (name, spec) in dependencies {
                    let Some(version) = version_of(spec) else {
                        continue; // a path dependency
                    };
                    let (first, where_first) = seen
                        .entry(name.clone())
                        .or_insert_with(|| (version.clone(), path.display().to_string()));
                    assert_eq!(
                        *first,
                        version,
                        "{name}: {first} in {where_first} but {version} in {}",
                        path.display()
                    );
                }
            }
        }
    }

    fn version_of(spec: &toml::Value) -> Option<String> {
        match spec {
            toml::Value::String(version) => Some(version.clone()),
            toml::Value::Table(table) => Some(table.get("version")?.as_str()?.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_bad_lesson_number_lists_the_lessons() {
        let message = find(15).unwrap_err().to_string();
        assert!(
            message.starts_with("there is no lesson 15\nthe lessons"),
            "{message}"
        );
        for lesson in &LESSONS {
            assert!(message.contains(lesson.package), "{message}");
        }
        assert_eq!(find(1).unwrap().package, "step1-hello");
    }
}
