//! The words around attaching: the attach paths and `--attach`, what a step says when a path
//! attached, and why one failed, with the kernel's own error. The attach calls themselves are in
//! each step's `main.rs`.

use std::{fmt, io, path::Path};

use anyhow::bail;
use aya::programs::ProgramError;
use caps::{CapSet, Capability};

use crate::{KERNEL_BTF, KPROBE_PMU, LISTEN_FUNCTION, STATE_TRACEPOINT};
/// What `--attach` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Try kprobe, then fentry, then the tracepoint
    Auto,
    /// A kprobe on inet_listen(), the article's hook (lesson 5 adds a kretprobe on its return)
    Kprobe,
    /// A BPF trampoline on inet_listen(), which needs BTF: fentry (lesson 5: fexit, on its return)
    Fentry,
    /// The tracepoint sock:inet_sock_set_state, when a socket enters TCP_LISTEN (lesson 6 adds the
    /// listen() system call's tracepoints, sys_enter_listen and sys_exit_listen)
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

/// The `--attach` of lessons 7 to 14: the modes of lessons 1–6, and the sockops path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolAttachMode {
    /// Try kprobe, then fentry, then the tracepoints: the paths that follow every listen() call
    Auto,
    /// A kprobe and a kretprobe on inet_listen()
    Kprobe,
    /// fexit on inet_listen(), which needs BTF
    Fentry,
    /// The listen() system call's tracepoints, with sock:inet_sock_set_state; while attached, every
    /// system call of the machine pays for them
    Tracepoint,
    /// A sock_ops program on the cgroup2 root, with sock:inet_sock_set_state: no system call pays
    /// for it, but it sees only listen() calls that start a listener (EADDRINUSE is the one
    /// failure it reports; not EINVAL and the like, nor a listen() that only changes the backlog)
    Sockops,
}

impl ToolAttachMode {
    /// The attach paths to try, in order: `auto` never picks the sockops path, which misses calls.
    pub fn candidates(self) -> &'static [ToolPath] {
        use ToolPath::{Exact, Sockops};
        match self {
            Self::Auto => &[
                Exact(AttachPath::Kprobe),
                Exact(AttachPath::Fentry),
                Exact(AttachPath::Tracepoint),
            ],
            Self::Kprobe => &[Exact(AttachPath::Kprobe)],
            Self::Fentry => &[Exact(AttachPath::Fentry)],
            Self::Tracepoint => &[Exact(AttachPath::Tracepoint)],
            Self::Sockops => &[Sockops],
        }
    }
}

/// One of the attach paths of lessons 7 to 14.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolPath {
    /// A path of lessons 1–6, which follows each `listen()` call to its end.
    Exact(AttachPath),
    /// A `sock_ops` program on the cgroup2 root, which the kernel calls once a socket listens.
    Sockops,
}

impl fmt::Display for ToolPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(path) => path.fmt(f),
            Self::Sockops => write!(f, "sock_ops program on the cgroup2 root"),
        }
    }
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

/// What a step says once a path is attached: each program's name and the kernel's id for it
/// (`bpftool prog show id N`).
pub fn attached_line(path: impl fmt::Display, programs: &[(&str, u32)]) -> String {
    let programs: Vec<_> = programs
        .iter()
        .map(|(name, id)| format!("program {name}, id {id}"))
        .collect();
    format!("{path}: attached ({})", programs.join("; "))
}

/// Why `path` failed: the kernel's own error, preceded by its likely cause where we can tell it.
pub fn explain_attach_failure(path: AttachPath, error: &anyhow::Error) -> String {
    explain_failure(path, error, &KernelFacts::probe())
}

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
             a security policy (an LSM or a sandbox) blocks fentry here",
        ),
        _ => None,
    };
    match cause {
        Some(cause) => format!("{cause} [{error:#}]"),
        None => format!("{error:#}"),
    }
}

/// Why one of the paths of lessons 7 to 14 failed.
pub fn explain_tool_attach_failure(path: ToolPath, error: &anyhow::Error) -> String {
    match path {
        ToolPath::Exact(path) => explain_attach_failure(path, error),
        ToolPath::Sockops => explain_sockops_failure(error),
    }
}

fn explain_sockops_failure(error: &anyhow::Error) -> String {
    let refused_helper = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ProgramError>(),
            Some(ProgramError::LoadError { verifier_log, .. })
                if verifier_log.to_string().contains("unknown func")
        )
    });
    if refused_helper {
        format!(
            "this kernel does not let a sock_ops program call bpf_get_current_task() or \
             bpf_probe_read_kernel(), which the sockops path needs to name the caller and read the \
             socket; `--attach auto` picks a path that works here [{error:#}]"
        )
    } else {
        format!("{error:#}")
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

/// The error when no path of `mode` attached; `failures` holds each path with its reason.
pub fn no_path_attached(mode: AttachMode, failures: &[(AttachPath, String)]) -> anyhow::Error {
    anyhow::anyhow!(no_path_attached_words(mode == AttachMode::Auto, failures))
}

/// The same for the paths of lessons 7 to 14.
pub fn no_tool_path_attached(
    mode: ToolAttachMode,
    failures: &[(ToolPath, String)],
) -> anyhow::Error {
    anyhow::anyhow!(no_path_attached_words(
        mode == ToolAttachMode::Auto,
        failures
    ))
}

fn no_path_attached_words(auto: bool, failures: &[(impl fmt::Display, String)]) -> String {
    match (auto, failures) {
        (true, _) => "none of the attach paths works on this kernel (see the lines above)".into(),
        (_, [(path, reason)]) => {
            format!("cannot attach the {path}: {reason}; `--attach auto` tries the other paths")
        }
        _ => unreachable!("a single attach mode has a single path"),
    }
}

/// Kernels before 5.11 charge the memory of BPF maps to the locked-memory limit (`ulimit -l`), which
/// is small by default: lift it before loading, as aya-template does. Quietly: newer kernels do not
/// need it, and where it is not allowed the load says why (see [`explain_load_failure`]).
pub fn lift_memlock_limit() {
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
}

/// The error of loading an object, with the locked-memory limit named where creating a map was
/// refused with EPERM (what kernels before 5.11 answer when the limit is too small).
pub fn explain_load_failure(error: aya::EbpfError) -> anyhow::Error {
    let memlock = matches!(
        &error,
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if io_error.kind() == io::ErrorKind::PermissionDenied
    );
    let error = anyhow::Error::new(error).context("cannot load the eBPF object");
    if memlock {
        error.context(
            "the kernel refused to create a BPF map: kernels before 5.11 count BPF maps against \
             the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`), which could not be raised \
             here; run as root, or raise the limit (`ulimit -l unlimited`)",
        )
    } else {
        error
    }
}

/// Fails early, with the fix, where the kernel would answer a bare EPERM: call it before loading.
pub fn check_privileges() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let missing: Vec<_> = [Capability::CAP_BPF, Capability::CAP_PERFMON]
        .into_iter()
        .filter(|&cap| !has(cap))
        .collect();
    if !missing.is_empty() {
        bail!(
            "loading eBPF programs needs root, or the capabilities CAP_BPF and CAP_PERFMON \
             (missing: {}): run it with sudo (`cargo xtask run` does that for you)",
            missing
                .iter()
                .map(|cap| cap.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

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
    fn a_map_refused_with_eperm_names_the_locked_memory_limit() {
        let refused = |raw| {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: "EVENTS".into(),
                io_error: io::Error::from_raw_os_error(raw),
            })
        };
        let message = format!("{:#}", explain_load_failure(refused(1))); // EPERM
        assert!(
            message.starts_with(
                "the kernel refused to create a BPF map: kernels before 5.11 count BPF maps against \
                 the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`)"
            ),
            "{message}"
        );
        assert!(
            message.contains("failed to create map `EVENTS`"),
            "{message}"
        );
        let other = format!("{:#}", explain_load_failure(refused(22))); // EINVAL
        assert!(
            other.starts_with("cannot load the eBPF object: "),
            "{other}"
        );
        assert!(!other.contains("RLIMIT_MEMLOCK"), "{other}");
    }

    #[test]
    fn the_tools_auto_mode_never_picks_the_sockops_path() {
        use ToolPath::*;
        let exact = [
            Exact(AttachPath::Kprobe),
            Exact(AttachPath::Fentry),
            Exact(AttachPath::Tracepoint),
        ];
        assert_eq!(ToolAttachMode::Auto.candidates(), exact);
        assert_eq!(ToolAttachMode::Sockops.candidates(), [Sockops]);
        assert_eq!(
            ToolAttachMode::Tracepoint.candidates(),
            [Exact(AttachPath::Tracepoint)]
        );
        assert_eq!(Sockops.to_string(), "sock_ops program on the cgroup2 root");
        assert_eq!(
            Exact(AttachPath::Kprobe).to_string(),
            AttachPath::Kprobe.to_string()
        );
        let message = no_path_attached_words(false, &[(Sockops, "no cgroup2".into())]);
        assert_eq!(
            message,
            "cannot attach the sock_ops program on the cgroup2 root: no cgroup2; `--attach auto` \
             tries the other paths"
        );
    }

    #[test]
    fn a_single_mode_that_fails_suggests_auto() {
        let message = no_path_attached_words(false, &[(AttachPath::Kprobe, "no kprobes".into())]);
        assert_eq!(
            message,
            "cannot attach the kprobe inet_listen(): no kprobes; `--attach auto` tries the other paths"
        );
        let failures = [
            (AttachPath::Kprobe, "a".into()),
            (AttachPath::Fentry, "b".into()),
        ];
        assert!(
            no_path_attached_words(true, &failures).starts_with("none of the attach paths works")
        );
    }
}
