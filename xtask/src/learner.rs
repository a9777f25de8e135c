//! What a learner who is not root does, done for real by such a user: `cargo xtask test
//! --learner-flows` (and every run under `CI`) creates a user with sudo rights for the run only,
//! gives it a copy of this working tree, and runs as that user `cargo xtask run step 1`, `check
//! exercise 1` (before and after the edit), `listen --netns` and the kernel tests of lesson 1
//! (`test --lesson 1`). Each must go through sudo by itself, the way the book says. Afterwards, also when a flow fails
//! or the run is interrupted, the user, its group, its sudoers entry and its home are removed,
//! and that nothing of them is left is checked.
//!
//! The user shares this machine's Rust toolchain: in a mount namespace of its own, `/root` becomes
//! an empty, readable folder holding only the toolchain (`.rustup`, `.cargo/bin`), so nothing of
//! root's is opened up outside it.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use support::{
    running::{RunningStep, Stream},
    trigger,
};

use crate::{pinned::run_step, sudo, workspace_root};

/// The user the flows run as.
const LEARNER: &str = "listen-trace-learner";

pub fn run() -> anyhow::Result<()> {
    if !sudo::is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("the learner's flows create a user, which needs root, and CI must not skip them");
        }
        eprintln!(
            "NOT RUN: the learner's flows create a temporary user, which needs root; run \
             `cargo xtask test --learner-flows` as root to include them"
        );
        return Ok(());
    }
    remove_learner()?; // what an earlier run that was killed outright left
    // Ctrl-C or SIGTERM while the flows run: the account goes too, then the run ends. Once they
    // are over, the handler (which stays for the rest of the process) just ends the run.
    static FLOWS_RUNNING: AtomicBool = AtomicBool::new(false);
    FLOWS_RUNNING.store(true, Ordering::SeqCst);
    ctrlc::set_handler(|| {
        if FLOWS_RUNNING.load(Ordering::SeqCst) {
            eprintln!("stopped: removing the temporary user {LEARNER}");
            let _ = remove_learner();
        } else {
            eprintln!("stopped");
        }
        std::process::exit(130);
    })
    .context("cannot watch for Ctrl-C")?;
    let flows = flows();
    let removed = remove_learner();
    FLOWS_RUNNING.store(false, Ordering::SeqCst);
    flows?;
    removed?;
    let left = learner_leftovers();
    if !left.is_empty() {
        bail!(
            "the temporary user {LEARNER} left this behind: {}",
            left.join(", ")
        );
    }
    eprintln!("    the temporary user {LEARNER} is gone: no account, group, sudoers entry or home");
    Ok(())
}

/// What of the temporary learner exists on this machine (empty when nothing does).
pub fn learner_leftovers() -> Vec<String> {
    let mut left = Vec::new();
    for (database, what) in [("passwd", "an account"), ("group", "a group")] {
        if Command::new("getent")
            .args([database, LEARNER])
            .output()
            .is_ok_and(|output| output.status.success())
        {
            left.push(format!("{what} {LEARNER}"));
        }
    }
    for path in [sudoers_entry(), home()] {
        if path.exists() {
            left.push(path.display().to_string());
        }
    }
    left
}

/// Removes the temporary learner: its processes, account, group, home and sudoers entry.
pub fn remove_learner() -> anyhow::Result<()> {
    if Command::new("getent")
        .args(["passwd", LEARNER])
        .output()
        .is_ok_and(|output| output.status.success())
    {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", LEARNER])
            .status();
        run_step(
            &format!("userdel --remove {LEARNER}"),
            Command::new("userdel").args(["--remove", "--force", LEARNER]),
        )?;
    }
    if Command::new("getent")
        .args(["group", LEARNER])
        .output()
        .is_ok_and(|output| output.status.success())
    {
        run_step(
            &format!("groupdel {LEARNER}"),
            Command::new("groupdel").arg(LEARNER),
        )?;
    }
    for path in [sudoers_entry(), home()] {
        if path.is_dir() {
            fs::remove_dir_all(&path)
        } else if path.exists() {
            fs::remove_file(&path)
        } else {
            Ok(())
        }
        .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

fn sudoers_entry() -> PathBuf {
    Path::new("/etc/sudoers.d").join(LEARNER)
}

fn home() -> PathBuf {
    PathBuf::from("/home").join(LEARNER)
}

fn flows() -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("==> a learner who is not root: temporary user {LEARNER}, with sudo rights");
    let home = prepare()?;
    let checkout = home.join("listen-trace");

    run_step(
        "as the learner: cargo xtask run step 1 -- --help (set-up and build, as the learner)",
        &mut as_learner(&checkout, "cargo xtask run step 1 -- --help"),
    )?;

    // The lesson runs through sudo and sees a listen() of ours.
    let mut step = RunningStep::try_start(
        &mut as_learner(&checkout, "cargo xtask run step 1 -- --duration 20"),
        false,
    )
    .map_err(|error| anyhow!("cargo xtask run step 1, as the learner, {error}"))?;
    let _listener = trigger::listen((Ipv4Addr::LOCALHOST, 0).into(), 1)?;
    let hello = step.find_line(
        Stream::Stdout,
        |line| line.ends_with(" Hello World!"),
        Duration::from_secs(10),
    );
    stop_group(&step);
    let finished = step
        .try_wait(Duration::from_secs(10))
        .map_err(|error| anyhow!(error))?;
    if hello.is_none() {
        bail!(
            "cargo xtask run step 1, as the learner, said no Hello World!:\n{}",
            finished.stderr()
        );
    }
    if !finished.stderr().contains("not root: running it with sudo") {
        bail!(
            "cargo xtask run step 1 did not say that it used sudo:\n{}",
            finished.stderr()
        );
    }
    eprintln!("    run step 1: Hello World!, through sudo");

    // Exercise 1 as a learner does it, in the lesson's own folder: the check says what is missing,
    // the learner edits (here: applies the reference solution), and the check passes. The check
    // builds in the learner's target folder, next to the lesson it just built.
    eprintln!("==> as the learner: cargo xtask check exercise 1 (not done yet: it must say so)");
    let unsolved = as_learner(&checkout, "cargo xtask check exercise 1")
        .output()
        .context("cannot start cargo xtask check exercise 1 as the learner")?;
    let said = String::from_utf8_lossy(&unsolved.stderr);
    if unsolved.status.success() || !said.contains("is not done yet") {
        bail!(
            "cargo xtask check exercise 1 on the untouched lesson, as the learner, did not say \
             that the exercise is not done yet ({}):\n{said}",
            unsolved.status
        );
    }
    eprintln!("    check exercise 1: not done yet, as it should say");
    run_step(
        "as the learner: the reference solution applied, then cargo xtask check exercise 1",
        &mut as_learner(
            &checkout,
            "git apply docs/exercises/1-process-name.patch && cargo xtask check exercise 1 \
             && git apply -R docs/exercises/1-process-name.patch",
        ),
    )?;

    // A listener in a new network namespace: the namespace needs root, the command finds it.
    let mut listener =
        RunningStep::try_spawn(&mut as_learner(&checkout, "cargo xtask listen 0 --netns"))
            .map_err(|error| anyhow!(error))?;
    let line = listener.find_line(
        Stream::Stdout,
        |line| line.starts_with("listening on ") && line.ends_with(", new); Ctrl-C to stop"),
        Duration::from_secs(120),
    );
    stop_group(&listener);
    let finished = listener
        .try_wait(Duration::from_secs(10))
        .map_err(|error| anyhow!(error))?;
    let line = line.with_context(|| {
        format!(
            "cargo xtask listen 0 --netns, as the learner, did not listen:\n{}{}",
            finished.stdout(),
            finished.stderr()
        )
    })?;
    eprintln!("    listen --netns: {line}");

    run_step(
        "as the learner: cargo xtask test --lesson 1 (the kernel tests, through sudo)",
        &mut as_learner(&checkout, "cargo xtask test --lesson 1"),
    )?;
    eprintln!(
        "    the learner's flows: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs sudo if needed, creates the learner with sudo rights, and gives it a fresh copy of this
/// working tree in a git clone (with the built bpf-linker and the downloaded crates, so it builds offline-fast).
fn prepare() -> anyhow::Result<PathBuf> {
    crate::host_packages::ensure("the learner flows", &[crate::host_packages::SUDO])?;
    run_step(
        &format!("useradd {LEARNER} (for this run only)"),
        Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", LEARNER]),
    )?;
    let sudoers = sudoers_entry();
    fs::write(&sudoers, format!("{LEARNER} ALL=(ALL:ALL) NOPASSWD: ALL\n"))?;
    fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o440))?;

    let home = home();
    let checkout = home.join("listen-trace");
    if checkout.exists() {
        fs::remove_dir_all(&checkout)?;
    }
    let root = workspace_root();
    // A clone (the exercise checks use git), with this working tree's files on top of it.
    run_step(
        &format!("git clone {} {}", root.display(), checkout.display()),
        Command::new("git")
            .arg("clone")
            .arg("--quiet")
            .arg(&root)
            .arg(&checkout),
    )?;
    for name in working_tree_files(&root)? {
        let (from, to) = (root.join(&name), checkout.join(&name));
        if from.is_file() {
            fs::create_dir_all(to.parent().unwrap())?;
            fs::copy(&from, &to).with_context(|| format!("cannot copy {name}"))?;
        }
    }
    let cargo_home = home.join(".cargo");
    fs::create_dir_all(&cargo_home)?;
    for (from, to) in [
        // `.tools` links to the tools' cache in root's home, which the learner cannot read: the
        // learner's checkout gets a copy of what it leads to.
        (
            fs::canonicalize(root.join(".tools"))?,
            checkout.join(".tools"),
        ),
        (
            PathBuf::from("/root/.cargo/registry"),
            cargo_home.join("registry"),
        ),
    ] {
        if from.exists() && !to.exists() {
            run_step(
                &format!("copy {}", from.display()),
                Command::new("cp").arg("-a").arg(&from).arg(&to),
            )?;
        }
    }
    run_step(
        &format!("chown -R {LEARNER} {}", home.display()),
        Command::new("chown")
            .args(["-R", &format!("{LEARNER}:{LEARNER}")])
            .arg(&home),
    )?;
    Ok(home)
}

/// The files of the working tree in `root` that git tracks or would track (ignored ones aside).
pub fn working_tree_files(root: &Path) -> anyhow::Result<Vec<String>> {
    let listed = crate::pinned::output_of(Command::new("git").arg("-C").arg(root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))?;
    listed
        .as_bytes()
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| Ok(std::str::from_utf8(name)?.to_string()))
        .collect()
}

/// `shell` run by the learner in `checkout`, in a process group of its own (to be stopped whole),
/// with this machine's Rust toolchain readable at `/root/.rustup` in a mount namespace of its own.
fn as_learner(checkout: &Path, shell: &str) -> Command {
    let script = format!(
        r#"set -eu
view=$(mktemp -d)
mkdir "$view/rustup" "$view/bin"
mount --bind /root/.rustup "$view/rustup"
mount --bind /root/.cargo/bin "$view/bin"
mount -t tmpfs -o mode=755 learner-root /root
mkdir -p /root/.rustup /root/.cargo/bin
mount --move "$view/rustup" /root/.rustup
mount --move "$view/bin" /root/.cargo/bin
cd '{checkout}'
exec runuser -u {LEARNER} -- env -i HOME=/home/{LEARNER} USER={LEARNER} LOGNAME={LEARNER} \
  PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  RUSTUP_HOME=/root/.rustup CARGO_HOME=/home/{LEARNER}/.cargo RUSTUP_AUTO_INSTALL=0 TERM=dumb \
  bash -c '{shell}'
"#,
        checkout = checkout.display(),
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .process_group(0);
    command
}

/// Ctrl-C, as a terminal sends it: SIGINT to the whole process group (sudo passes it on).
fn stop_group(step: &RunningStep) {
    let _ = killpg(Pid::from_raw(step.pid().as_raw()), Signal::SIGINT);
}
