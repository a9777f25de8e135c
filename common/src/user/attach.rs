//! Attach with fallback: the article hooks `inet_listen()` with a kprobe, but not every kernel allows
//! that, so each step's kernel program has three entry points to the same lesson and we take the first
//! that this kernel accepts.

use std::{fmt, io, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{Program, ProgramError},
};

use super::KERNEL_BTF;
use crate::{LISTEN_FUNCTION, STATE_TRACEPOINT};

/// Present when the kernel can create kprobes through perf (CONFIG_KPROBES).
pub(crate) const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// What `--attach` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Try kprobe, then fentry, then the tracepoint
    Auto,
    /// A kprobe on inet_listen() (the article's hook)
    Kprobe,
    /// An fentry program on inet_listen() (BPF trampoline, needs BTF)
    Fentry,
    /// The tracepoint sock:inet_sock_set_state, when a socket enters TCP_LISTEN
    Tracepoint,
}

impl AttachMode {
    /// The attach paths to try, in order.
    pub fn candidates(self) -> &'static [AttachPath] {
        match self {
            Self::Auto => &[
                AttachPath::Kprobe,
                AttachPath::Fentry,
                AttachPath::Tracepoint,
            ],
            Self::Kprobe => &[AttachPath::Kprobe],
            Self::Fentry => &[AttachPath::Fentry],
            Self::Tracepoint => &[AttachPath::Tracepoint],
        }
    }
}

/// One way to hook `listen()`. Every step's eBPF crate defines the programs of each path, named by
/// [`AttachPath::programs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPath {
    Kprobe,
    Fentry,
    Tracepoint,
}

impl AttachPath {
    /// The names of the eBPF functions that may serve this path, attached in this order; a step
    /// defines those it needs (lesson 4 adds the return probes, for `listen()`'s result).
    pub const fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Kprobe => &["listen_kprobe", "listen_kretprobe"],
            Self::Fentry => &["listen_fentry", "listen_fexit"],
            Self::Tracepoint => &["listen_tracepoint"],
        }
    }
}

impl fmt::Display for AttachPath {
    /// What the program hooks, as the lessons name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kprobe => write!(f, "kprobe {LISTEN_FUNCTION}()"),
            Self::Fentry => write!(f, "fentry {LISTEN_FUNCTION}()"),
            Self::Tracepoint => write!(f, "tracepoint sock:{STATE_TRACEPOINT}"),
        }
    }
}

/// The programs that are now attached.
#[derive(Clone, Debug)]
pub struct AttachedProbe {
    pub path: AttachPath,
    /// Each program's name and the kernel's id for it (`bpftool prog show id N`).
    pub programs: Vec<(&'static str, u32)>,
}

/// Loads and attaches the first path of `mode` that this kernel accepts, printing one line per path
/// tried. Programs that loaded but could not attach are unloaded again.
pub fn attach_listen_probe(ebpf: &mut Ebpf, mode: AttachMode) -> anyhow::Result<AttachedProbe> {
    let mut failures = Vec::new();
    for &path in mode.candidates() {
        match load_and_attach(ebpf, path) {
            Ok(programs) => {
                eprintln!("{}", attached_line(path, &programs));
                return Ok(AttachedProbe { path, programs });
            }
            Err(error) => {
                let reason = explain_failure(path, &error, &KernelFacts::probe());
                eprintln!("{path}: not available: {reason}");
                failures.push((path, reason));
            }
        }
    }
    Err(anyhow!(no_path_attached(mode, &failures)))
}

/// Loads and attaches every program of `path` the object has; on any failure, unloads them all.
fn load_and_attach(ebpf: &mut Ebpf, path: AttachPath) -> anyhow::Result<Vec<(&'static str, u32)>> {
    let mut attached = Vec::new();
    for &name in path.programs() {
        let Some(program) = ebpf.program_mut(name) else {
            continue;
        };
        match load_and_attach_program(program) {
            Ok(id) => attached.push((name, id)),
            Err(error) => {
                unload(program);
                for (loaded, _) in &attached {
                    if let Some(program) = ebpf.program_mut(loaded) {
                        unload(program);
                    }
                }
                return Err(error);
            }
        }
    }
    if attached.is_empty() {
        anyhow::bail!(
            "the eBPF object has none of the programs {:?}",
            path.programs()
        );
    }
    Ok(attached)
}

/// Loads one program and attaches it where its kind says: `inet_listen()` for kprobes (entry or
/// return) and for fentry/fexit, the `inet_sock_set_state` tracepoint for raw tracepoints.
fn load_and_attach_program(program: &mut Program) -> anyhow::Result<u32> {
    match program {
        Program::KProbe(kprobe) => {
            kprobe.load()?;
            kprobe.attach(LISTEN_FUNCTION, 0)?;
        }
        Program::FEntry(fentry) => {
            fentry.load(LISTEN_FUNCTION, &kernel_btf()?)?;
            fentry.attach()?;
        }
        Program::FExit(fexit) => {
            fexit.load(LISTEN_FUNCTION, &kernel_btf()?)?;
            fexit.attach()?;
        }
        Program::RawTracePoint(tracepoint) => {
            tracepoint.load()?;
            tracepoint.attach(STATE_TRACEPOINT)?;
        }
        other => anyhow::bail!("unexpected program type {:?}", other.prog_type()),
    }
    Ok(program.info()?.id())
}

/// Detaches and unloads a program of a path that did not work out; it may not be loaded at all.
fn unload(program: &mut Program) {
    let _ = match program {
        Program::KProbe(kprobe) => kprobe.unload(),
        Program::FEntry(fentry) => fentry.unload(),
        Program::FExit(fexit) => fexit.unload(),
        Program::RawTracePoint(tracepoint) => tracepoint.unload(),
        _ => Ok(()),
    };
}

fn kernel_btf() -> anyhow::Result<Btf> {
    Btf::from_sys_fs().context("cannot read the kernel's BTF")
}

/// What we know of the kernel when an attach fails, to name the cause.
#[derive(Debug, Clone, Copy)]
struct KernelFacts {
    has_kprobe_pmu: bool,
    has_btf: bool,
}

impl KernelFacts {
    fn probe() -> Self {
        Self {
            has_kprobe_pmu: Path::new(KPROBE_PMU).exists(),
            has_btf: Path::new(KERNEL_BTF).exists(),
        }
    }
}

fn attached_line(path: AttachPath, programs: &[(&str, u32)]) -> String {
    let programs: Vec<_> = programs
        .iter()
        .map(|(name, id)| format!("program {name}, id {id}"))
        .collect();
    format!("{path}: attached ({})", programs.join("; "))
}

/// The kernel's own error, preceded by its likely cause where we can tell it.
fn explain_failure(path: AttachPath, error: &anyhow::Error, facts: &KernelFacts) -> String {
    let cause = match path {
        AttachPath::Kprobe if !facts.has_kprobe_pmu => {
            Some("kprobes are not available on this kernel (CONFIG_KPROBES is off)")
        }
        AttachPath::Fentry if !facts.has_btf => Some(
            "fentry needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF), and /sys/kernel/btf/vmlinux is missing",
        ),
        AttachPath::Fentry if refused_with_eperm(error) => Some(
            "the kernel refused the fentry program (EPERM) although we are privileged: \
             a security policy (lockdown, an LSM or a sandbox) blocks fentry here",
        ),
        _ => None,
    };
    match cause {
        Some(cause) => format!("{cause} [{error:#}]"),
        None => format!("{error:#}"),
    }
}

/// Whether the kernel answered the program load with EPERM.
fn refused_with_eperm(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| match cause.downcast_ref::<ProgramError>() {
            Some(ProgramError::LoadError { io_error, .. }) => {
                io_error.kind() == io::ErrorKind::PermissionDenied
            }
            Some(ProgramError::SyscallError(syscall)) => {
                syscall.io_error.kind() == io::ErrorKind::PermissionDenied
            }
            _ => false,
        })
}

fn no_path_attached(mode: AttachMode, failures: &[(AttachPath, String)]) -> String {
    match (mode, failures) {
        (AttachMode::Auto, _) => {
            "none of the attach paths works on this kernel (see the lines above)".into()
        }
        (_, [(path, reason)]) => {
            format!("cannot attach the {path}: {reason}; `--attach auto` tries the other paths")
        }
        _ => unreachable!("a single attach mode has a single path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERYTHING: KernelFacts = KernelFacts {
        has_kprobe_pmu: true,
        has_btf: true,
    };

    #[test]
    fn auto_tries_the_articles_kprobe_first_and_the_tracepoint_last() {
        use AttachPath::*;
        assert_eq!(AttachMode::Auto.candidates(), [Kprobe, Fentry, Tracepoint]);
        assert_eq!(AttachMode::Kprobe.candidates(), [Kprobe]);
        assert_eq!(AttachMode::Fentry.candidates(), [Fentry]);
        assert_eq!(AttachMode::Tracepoint.candidates(), [Tracepoint]);
    }

    #[test]
    fn paths_are_named_by_what_they_hook() {
        assert_eq!(AttachPath::Kprobe.to_string(), "kprobe inet_listen()");
        assert_eq!(AttachPath::Fentry.to_string(), "fentry inet_listen()");
        assert_eq!(
            AttachPath::Tracepoint.to_string(),
            "tracepoint sock:inet_sock_set_state"
        );
        assert_eq!(
            attached_line(AttachPath::Tracepoint, &[("listen_tracepoint", 42)]),
            "tracepoint sock:inet_sock_set_state: attached (program listen_tracepoint, id 42)"
        );
        assert_eq!(
            attached_line(
                AttachPath::Kprobe,
                &[("listen_kprobe", 7), ("listen_kretprobe", 8)]
            ),
            "kprobe inet_listen(): attached (program listen_kprobe, id 7; program listen_kretprobe, id 8)"
        );
    }

    #[test]
    fn a_kernel_without_kprobes_is_named_as_the_cause() {
        let error =
            anyhow!("kprobe attach: `{KPROBE_PMU}`: No such file or directory (os error 2)");
        let facts = KernelFacts {
            has_kprobe_pmu: false,
            ..EVERYTHING
        };
        let reason = explain_failure(AttachPath::Kprobe, &error, &facts);
        assert!(
            reason
                .starts_with("kprobes are not available on this kernel (CONFIG_KPROBES is off) [")
        );
        assert!(
            reason.contains("No such file or directory"),
            "the kernel's own words stay: {reason}"
        );
        // With kprobes present, only the kernel's error is shown: we do not guess.
        assert_eq!(
            explain_failure(AttachPath::Kprobe, &error, &EVERYTHING),
            format!("{error:#}")
        );
    }

    #[test]
    fn an_fentry_refused_with_eperm_is_explained() {
        let error = anyhow::Error::from(ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(1), // EPERM
        }));
        let reason = explain_failure(AttachPath::Fentry, &error, &EVERYTHING);
        assert!(
            reason.starts_with("the kernel refused the fentry program (EPERM)"),
            "{reason}"
        );
        let facts = KernelFacts {
            has_btf: false,
            ..EVERYTHING
        };
        let reason = explain_failure(AttachPath::Fentry, &error, &facts);
        assert!(
            reason.starts_with("fentry needs the kernel's BTF"),
            "{reason}"
        );
        let other = anyhow!("invalid argument");
        assert_eq!(
            explain_failure(AttachPath::Fentry, &other, &EVERYTHING),
            "invalid argument"
        );
    }

    #[test]
    fn a_single_mode_that_fails_suggests_auto() {
        let message = no_path_attached(
            AttachMode::Kprobe,
            &[(AttachPath::Kprobe, "no kprobes".into())],
        );
        assert_eq!(
            message,
            "cannot attach the kprobe inet_listen(): no kprobes; `--attach auto` tries the other paths"
        );
        let failures = [
            (AttachPath::Kprobe, "a".into()),
            (AttachPath::Fentry, "b".into()),
        ];
        assert!(
            no_path_attached(AttachMode::Auto, &failures)
                .starts_with("none of the attach paths works")
        );
    }
}
