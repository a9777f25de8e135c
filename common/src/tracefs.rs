//! tracefs, where perf-event tracepoints get their ids and describe their fields. Raw tracepoints
//! do not need it; the syscall tracepoints of the tracepoint path of lessons 6 to 14, and bpftrace, do.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where tracefs is usually mounted, and where an older kernel shows it inside debugfs.
const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_IN_DEBUGFS: &str = "/sys/kernel/debug/tracing";

/// The tracefs root, mounting tracefs at `/sys/kernel/tracing` first when it is not mounted.
pub fn mount_tracefs() -> anyhow::Result<PathBuf> {
    for root in [TRACEFS, TRACEFS_IN_DEBUGFS] {
        if Path::new(root).join("events").is_dir() {
            return Ok(root.into());
        }
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "tracefs is not mounted and mounting it failed: the tracepoint path needs it for the \
             syscall tracepoints (try `sudo mount -t tracefs tracefs {TRACEFS}`)"
        )
    })?;
    eprintln!("mounted tracefs at {TRACEFS} (the syscall tracepoints need it)");
    Ok(TRACEFS.into())
}

/// Checks, in a tracepoint's `format` file, that `field` sits at `offset` as the eBPF program
/// reads it.
pub fn check_tracepoint_field(format: &str, field: &str, offset: usize) -> anyhow::Result<()> {
    // A line reads `\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;`.
    let found = format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(' ').next()? != field {
            return None;
        }
        parts
            .next()?
            .trim()
            .strip_prefix("offset:")?
            .parse::<usize>()
            .ok()
    });
    match found {
        Some(found) if found == offset => Ok(()),
        Some(found) => bail!(
            "the tracepoint's field {field} is at offset {found}, where the program reads it at {offset}"
        ),
        None => bail!("the tracepoint has no field {field}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ENTER_LISTEN: &str = "name: sys_enter_listen
ID: 1543
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int backlog;\toffset:24;\tsize:8;\tsigned:0;
";

    #[test]
    fn fields_are_found_in_a_format_file() {
        check_tracepoint_field(SYS_ENTER_LISTEN, "fd", 16).unwrap();
        check_tracepoint_field(SYS_ENTER_LISTEN, "backlog", 24).unwrap();
        let moved = check_tracepoint_field(SYS_ENTER_LISTEN, "backlog", 32).unwrap_err();
        assert!(moved.to_string().contains("at offset 24"), "{moved}");
        let missing = check_tracepoint_field(SYS_ENTER_LISTEN, "ret", 16).unwrap_err();
        assert!(missing.to_string().contains("no field ret"), "{missing}");
    }
}
