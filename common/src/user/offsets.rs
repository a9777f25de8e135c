//! The struct offsets of the running kernel, read from its BTF (`/sys/kernel/btf/vmlinux`): the
//! kernel's own description of its types, which bpftool and the verifier use too.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Backend, Btf, BtfType as _, Struct, Type};

use crate::{KERNEL_BTF, KERNEL_BTF_VARIABLE, SockOffsets};

impl SockOffsets {
    /// The offsets in the running kernel, from its BTF (or the file `LISTEN_TRACE_KERNEL_BTF`
    /// names).
    pub fn of_running_kernel() -> anyhow::Result<Self> {
        Self::from_btf_file(&running_kernel_btf())
    }

    /// The offsets described by the BTF file at `path`.
    pub fn from_btf_file(path: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        if !path.exists() {
            bail!(
                "{} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF), which \
                 lessons 2 to 4 need to find the fields of its structs; lesson 1 works without it",
                path.display()
            );
        }
        // Mapped, not parsed up front: we look up a few structs among tens of thousands of types
        // (6 ms instead of 100). Kernels before 6.x cannot map this file: read it whole there.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
            .map_err(|error| anyhow!("{error}"))
            .with_context(|| format!("{} is not valid BTF", path.display()))?;
        let offsets = Self {
            socket_sk: field_offset(&btf, "socket", &["sk"])?,
            sk_max_ack_backlog: field_offset(&btf, "sock", &["sk_max_ack_backlog"])?,
            skc_family: field_offset(&btf, "sock", &["__sk_common", "skc_family"])?,
            skc_rcv_saddr: field_offset(&btf, "sock", &["__sk_common", "skc_rcv_saddr"])?,
            skc_v6_rcv_saddr: field_offset(&btf, "sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
            inet_sport: field_offset(&btf, "inet_sock", &["inet_sport"])?,
            skc_net: field_offset(&btf, "sock", &["__sk_common", "skc_net", "net"])?,
            net_ns_inum: field_offset(&btf, "net", &["ns", "inum"])?,
        };
        log::debug!(
            "struct offsets from {} in {:?}: {offsets:?}",
            path.display(),
            started.elapsed()
        );
        Ok(offsets)
    }
}

impl std::fmt::Display for SockOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "socket.sk +{}, sock.sk_max_ack_backlog +{}, sock.skc_family +{}, sock.skc_rcv_saddr +{}, \
             sock.skc_v6_rcv_saddr +{}, inet_sock.inet_sport +{}, sock.skc_net.net +{}, net.ns.inum +{}",
            self.socket_sk,
            self.sk_max_ack_backlog,
            self.skc_family,
            self.skc_rcv_saddr,
            self.skc_v6_rcv_saddr,
            self.inet_sport,
            self.skc_net,
            self.net_ns_inum
        )
    }
}

/// The running kernel's BTF file: `LISTEN_TRACE_KERNEL_BTF` where it is set, else the kernel's own.
fn running_kernel_btf() -> std::path::PathBuf {
    std::env::var_os(KERNEL_BTF_VARIABLE).map_or_else(|| KERNEL_BTF.into(), Into::into)
}

/// The byte offset of `struct NAME`'s field `path` (`["__sk_common", "skc_family"]` is
/// `__sk_common.skc_family`), looking through anonymous structs and unions as C does.
fn field_offset(btf: &Btf, name: &str, path: &[&str]) -> anyhow::Result<u32> {
    let found = btf
        .resolve_types_by_name(name)
        .map_err(|error| anyhow!("{error}"));
    let ty = found
        .ok()
        .and_then(|types| {
            types.into_iter().find_map(|ty| match ty {
                Type::Struct(ty) => Some(ty),
                _ => None,
            })
        })
        .with_context(|| format!("this kernel's BTF has no struct {name}"))?;
    let bits = bit_offset(btf, &ty, path)?.with_context(|| {
        format!(
            "struct {name} has no field {} in this kernel",
            path.join(".")
        )
    })?;
    if !bits.is_multiple_of(8) {
        bail!("struct {name}: field {} is a bitfield", path.join("."));
    }
    Ok(bits / 8)
}

fn bit_offset(btf: &Btf, ty: &Struct, path: &[&str]) -> anyhow::Result<Option<u32>> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(Some(0));
    };
    for member in &ty.members {
        let name = if member.get_name_offset().unwrap_or(0) == 0 {
            String::new()
        } else {
            btf.resolve_name(member)
                .map_err(|error| anyhow!("{error}"))?
        };
        let inner = if name == *first {
            if rest.is_empty() {
                return Ok(Some(member.bit_offset()));
            }
            struct_of(btf, member)?.map(|inner| (inner, rest))
        } else if name.is_empty() {
            // An anonymous struct or union: its fields are fields of `ty`.
            struct_of(btf, member)?.map(|inner| (inner, path))
        } else {
            None
        };
        if let Some((inner, inner_path)) = inner
            && let Some(offset) = bit_offset(btf, &inner, inner_path)?
        {
            return Ok(Some(member.bit_offset() + offset));
        }
    }
    Ok(None)
}

/// The struct or union a member has as its type, through typedefs and qualifiers.
fn struct_of(btf: &Btf, member: &btf_rs::Member) -> anyhow::Result<Option<Struct>> {
    let mut ty = btf
        .resolve_chained_type(member)
        .map_err(|error| anyhow!("{error}"))?;
    loop {
        ty = match ty {
            Type::Struct(inner) | Type::Union(inner) => return Ok(Some(inner)),
            Type::Typedef(next) => btf.resolve_chained_type(&next),
            Type::Const(next) => btf.resolve_chained_type(&next),
            Type::Volatile(next) => btf.resolve_chained_type(&next),
            _ => return Ok(None),
        }
        .map_err(|error| anyhow!("{error}"))?;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_kernel_without_btf_is_a_clear_error() {
        let error = SockOffsets::from_btf_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("built without BTF (CONFIG_DEBUG_INFO_BTF)"),
            "{message}"
        );
    }

    #[test]
    fn a_corrupt_btf_file_is_a_clear_error() {
        let path =
            std::env::temp_dir().join(format!("listen-trace-bad-btf-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"this is not BTF")
            .unwrap();
        let error = SockOffsets::from_btf_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            format!("{error:#}").contains("is not valid BTF"),
            "{error:#}"
        );
    }

    /// The running kernel's own BTF, where there is one (the kernel tests check the values for real).
    #[test]
    fn the_running_kernels_offsets_are_plausible() {
        let btf = running_kernel_btf();
        if !btf.exists() {
            eprintln!("SKIPPED: no {} on this machine", btf.display());
            return;
        }
        let offsets = SockOffsets::of_running_kernel().unwrap();
        // struct sock starts with struct sock_common, whose layout begins with the addresses.
        assert!(offsets.skc_rcv_saddr < offsets.skc_family);
        assert!(offsets.skc_family < offsets.sk_max_ack_backlog);
        assert!(offsets.skc_v6_rcv_saddr < offsets.sk_max_ack_backlog);
        // struct inet_sock starts with a whole struct sock.
        assert!(offsets.inet_sport > offsets.sk_max_ack_backlog);
        assert!(
            offsets.socket_sk > 0 && offsets.socket_sk.is_multiple_of(8),
            "a pointer, aligned"
        );
    }
}
