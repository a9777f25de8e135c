//! Attach with fallback: the article hooks `inet_listen()` with a kprobe, but not every kernel allows
//! that, so each step's kernel program has three entry points to the same lesson and we take the first
//! that this kernel accepts.

use std::{fmt, io, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{FEntry, KProbe, ProgramError, RawTracePoint},
};

use crate::{LISTEN_FUNCTION, STATE_TRACEPOINT};

/// Present when the kernel can create kprobes through perf (CONFIG_KPROBES).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";
/// The kernel's own BTF, which fentry programs are checked against (CONFIG_DEBUG_INFO_BTF).
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

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

/// One way to hook `listen()`. Every step's eBPF crate defines one program per path, named by
/// [`AttachPath::program`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPath {
    Kprobe,
    Fentry,
    Tracepoint,
}

impl AttachPath {
    /// The name of the eBPF function that serves this path.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Kprobe => "listen_kprobe",
            Self::Fentry => "listen_fentry",
            Self::Tracepoint => "listen_tracepoint",
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

/// The program that is now attached.
#[derive(Clone, Copy, Debug)]
pub struct AttachedProbe {
    pub path: AttachPath,
    /// The kernel's id of the loaded program (`bpftool prog show id N`).
    pub program_id: u32,
}

/// Loads and attaches the first path of `mode` that this kernel accepts, printing one line per path
/// tried. Programs that loaded but could not attach are unloaded again.
pub fn attach_listen_probe(ebpf: &mut Ebpf, mode: AttachMode) -> anyhow::Result<AttachedProbe> {
    let mut failures = Vec::new();
    for &path in mode.candidates() {
        match load_and_attach(ebpf, path) {
            Ok(program_id) => {
                eprintln!("{}", attached_line(path, program_id));
                return Ok(AttachedProbe { path, program_id });
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

fn load_and_attach(ebpf: &mut Ebpf, path: AttachPath) -> anyhow::Result<u32> {
    let name = path.program();
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program `{name}`"))?;
    match path {
        AttachPath::Kprobe => {
            let kprobe: &mut KProbe = program.try_into()?;
            kprobe.load()?;
            if let Err(error) = kprobe.attach(LISTEN_FUNCTION, 0) {
                let _ = kprobe.unload();
                return Err(error.into());
            }
        }
        AttachPath::Fentry => {
            let btf = Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
            let fentry: &mut FEntry = program.try_into()?;
            fentry.load(LISTEN_FUNCTION, &btf)?;
            if let Err(error) = fentry.attach() {
                let _ = fentry.unload();
                return Err(error.into());
            }
        }
        AttachPath::Tracepoint => {
            let tracepoint: &mut RawTracePoint = program.try_into()?;
            tracepoint.load()?;
            if let Err(error) = tracepoint.attach(STATE_TRACEPOINT) {
                let _ = tracepoint.unload();
                return Err(error.into());
            }
        }
    }
    Ok(program.info()?.id())
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

fn attached_line(path: AttachPath, program_id: u32) -> String {
    format!(
        "{path}: attached (program {}, id {program_id})",
        path.program()
    )
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
            attached_line(AttachPath::Tracepoint, 42),
            "tracepoint sock:inet_sock_set_state: attached (program listen_tracepoint, id 42)"
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
