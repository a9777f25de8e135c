use anyhow::{Context as _, bail};
use aya::{Ebpf, EbpfLoader};
use caps::{CapSet, Capability};

use crate::{LISTEN_FILTER_SYMBOL, ListenFilter, SOCK_OFFSETS_SYMBOL, SockOffsets};

/// Loads an embedded eBPF object: its maps are created now, its programs when they are attached.
pub fn load_ebpf(object: &[u8]) -> anyhow::Result<Ebpf> {
    check_privileges()?;
    Ebpf::load(object).context("cannot load the eBPF object")
}

/// Loads an eBPF object that reads kernel structs, writing the kernel's struct offsets into its
/// read-only global first, so that the verifier sees them as constants.
pub fn load_ebpf_with_offsets(object: &[u8], offsets: &SockOffsets) -> anyhow::Result<Ebpf> {
    load(object, offsets, None)
}

/// Loads lesson 4's eBPF object: the struct offsets as above, and the filters it applies in the
/// kernel.
pub fn load_ebpf_with_filter(
    object: &[u8],
    offsets: &SockOffsets,
    filter: &ListenFilter,
) -> anyhow::Result<Ebpf> {
    load(object, offsets, Some(filter))
}

fn load(
    object: &[u8],
    offsets: &SockOffsets,
    filter: Option<&ListenFilter>,
) -> anyhow::Result<Ebpf> {
    check_privileges()?;
    eprintln!("struct offsets in this kernel (from its BTF): {offsets}");
    let mut loader = EbpfLoader::new();
    loader.override_global(SOCK_OFFSETS_SYMBOL, offsets, true);
    if let Some(filter) = filter {
        loader.override_global(LISTEN_FILTER_SYMBOL, filter, true);
    }
    loader.load(object).context("cannot load the eBPF object")
}

/// Fails early, with the fix, where the kernel would answer a bare EPERM.
fn check_privileges() -> anyhow::Result<()> {
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
