//! The struct offsets of the running kernel, read from its BTF (`/sys/kernel/btf/vmlinux`): the
//! kernel's own description of its types, which bpftool and the verifier use too.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Backend, Btf, BtfType as _, Struct, Type};

use crate::{KERNEL_BTF, KERNEL_BTF_VARIABLE};

/// The size the kernel side reads a pointer field as.
pub const POINTER: usize = size_of::<u64>();

/// The running kernel's BTF, where each lesson looks up the offsets of the struct fields its kernel
/// side reads (and only those: a kernel that lacks a field of a later lesson still runs it).
/// Rust eBPF programs get no CO-RE relocations, so userspace does this and hands the offsets to the
/// program before it is loaded.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// The running kernel's BTF (or the file `LISTEN_TRACE_KERNEL_BTF` names).
    pub fn of_running_kernel() -> anyhow::Result<Self> {
        Self::from_file(&running_kernel_btf())
    }

    /// The BTF file at `path`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        let btf = open_btf(path)?;
        log::debug!("opened {} in {:?}", path.display(), started.elapsed());
        Ok(Self { btf })
    }

    /// The byte offset of `struct NAME`'s field at `path` (`["__sk_common", "skc_family"]` is
    /// `__sk_common.skc_family`), looking through anonymous structs and unions as C does. The
    /// field must be `size` bytes long, the size the kernel side reads: a field that changed type
    /// (not only place) on some kernel is an error here, not a wrong value later.
    pub fn field_offset(&self, name: &str, path: &[&str], size: usize) -> anyhow::Result<u32> {
        field(&self.btf, name, path, size)
    }
}

/// Opens the BTF file at `path`, with an error that says what a missing one means.
fn open_btf(path: &Path) -> anyhow::Result<Btf> {
    if !path.exists() {
        bail!(
            "{} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF), which \
             lessons 2 to 14 need to find the fields of its structs; lesson 1 works without it",
            path.display()
        );
    }
    // Mapped, not parsed up front: we look up a few structs among tens of thousands of types
    // (6 ms instead of 100). Kernels before 6.x cannot map this file: read it whole there.
    Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
        .map_err(|error| anyhow!("{error}"))
        .with_context(|| format!("{} is not valid BTF", path.display()))
}

/// The running kernel's BTF file: `LISTEN_TRACE_KERNEL_BTF` where it is set, else the kernel's own.
fn running_kernel_btf() -> std::path::PathBuf {
    std::env::var_os(KERNEL_BTF_VARIABLE).map_or_else(|| KERNEL_BTF.into(), Into::into)
}

/// The byte offset of `struct NAME`'s field `path` (`["__sk_common", "skc_family"]` is
/// `__sk_common.skc_family`), looking through anonymous structs and unions as C does; an error
/// unless the field is `size` bytes long.
fn field(btf: &Btf, name: &str, path: &[&str], size: usize) -> anyhow::Result<u32> {
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
    let (bits, member) = member_at(btf, &ty, path)?.with_context(|| {
        format!(
            "struct {name} has no field {} in this kernel",
            path.join(".")
        )
    })?;
    if !bits.is_multiple_of(8) || member.bitfield_size().is_some_and(|bits| bits > 0) {
        bail!("struct {name}: field {} is a bitfield", path.join("."));
    }
    let found_size = size_of_type(
        btf,
        btf.resolve_chained_type(&member)
            .map_err(|e| anyhow!("{e}"))?,
    )?;
    if found_size != size {
        bail!(
            "struct {name}: field {} is {found_size} bytes in this kernel, where the lessons read {size}: \
             its type changed, and the lessons do not know this kernel's layout",
            path.join(".")
        );
    }
    Ok(bits / 8)
}

/// The size in bytes of a type, through typedefs and qualifiers.
fn size_of_type(btf: &Btf, ty: Type) -> anyhow::Result<usize> {
    let next = |ty: &dyn btf_rs::BtfType| {
        btf.resolve_chained_type(ty)
            .map_err(|error| anyhow!("{error}"))
    };
    Ok(match ty {
        Type::Int(int) => int.size(),
        Type::Ptr(_) => size_of::<u64>(),
        Type::Enum(enumeration) => enumeration.size(),
        Type::Struct(inner) | Type::Union(inner) => inner.size(),
        Type::Array(array) => array.len() * size_of_type(btf, next(&array)?)?,
        Type::Typedef(inner) => size_of_type(btf, next(&inner)?)?,
        Type::Const(inner) => size_of_type(btf, next(&inner)?)?,
        Type::Volatile(inner) => size_of_type(btf, next(&inner)?)?,
        other => bail!("a field of an unexpected type: {other:?}"),
    })
}

/// The bit offset of the field at `path` in `ty`, and the field's member entry.
fn member_at(
    btf: &Btf,
    ty: &Struct,
    path: &[&str],
) -> anyhow::Result<Option<(u32, btf_rs::Member)>> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(None);
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
                return Ok(Some((member.bit_offset(), member.clone())));
            }
            struct_of(btf, member)?.map(|inner| (inner, rest))
        } else if name.is_empty() {
            // An anonymous struct or union: its fields are fields of `ty`.
            struct_of(btf, member)?.map(|inner| (inner, path))
        } else {
            None
        };
        if let Some((inner, inner_path)) = inner
            && let Some((offset, found)) = member_at(btf, &inner, inner_path)?
        {
            return Ok(Some((member.bit_offset() + offset, found)));
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
        let error = KernelBtf::from_file(Path::new("/nonexistent/vmlinux"))
            .err()
            .unwrap();
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
        let error = KernelBtf::from_file(&path).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            format!("{error:#}").contains("is not valid BTF"),
            "{error:#}"
        );
    }

    /// The running kernel's own BTF, or `None` (said loudly) on a machine without one.
    fn running_kernels_btf() -> Option<KernelBtf> {
        let path = running_kernel_btf();
        if !path.exists() {
            eprintln!("SKIPPED: no {} on this machine", path.display());
            return None;
        }
        Some(KernelBtf::of_running_kernel().unwrap())
    }

    /// The running kernel's own BTF, where there is one (the kernel tests check the values for real).
    #[test]
    fn the_running_kernels_offsets_are_plausible() {
        let Some(btf) = running_kernels_btf() else {
            return;
        };
        let sock = |path: &[&str], size| btf.field_offset("sock", path, size).unwrap();
        let (saddr, family) = (
            sock(&["__sk_common", "skc_rcv_saddr"], 4),
            sock(&["__sk_common", "skc_family"], 2),
        );
        let (v6, backlog) = (
            sock(&["__sk_common", "skc_v6_rcv_saddr"], 16),
            sock(&["sk_max_ack_backlog"], 4),
        );
        // struct sock starts with struct sock_common, whose layout begins with the addresses.
        assert!(saddr < family && family < backlog && v6 < backlog);
        // struct inet_sock starts with a whole struct sock.
        assert!(btf.field_offset("inet_sock", &["inet_sport"], 2).unwrap() > backlog);
        let socket_sk = btf.field_offset("socket", &["sk"], POINTER).unwrap();
        assert!(
            socket_sk > 0 && socket_sk.is_multiple_of(8),
            "a pointer, aligned"
        );
    }

    /// A field read with the wrong size is refused at start-up, with the struct and field named.
    #[test]
    fn a_field_of_another_size_is_a_clear_error() {
        let Some(btf) = running_kernels_btf() else {
            return;
        };
        assert!(btf.field_offset("sock", &["sk_protocol"], 2).is_ok());
        let error = btf
            .field_offset("sock", &["sk_max_ack_backlog"], 2)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("struct sock: field sk_max_ack_backlog is 4 bytes in this kernel, where the lessons read 2"),
            "{error}"
        );
    }

    #[test]
    fn a_field_the_kernel_does_not_have_is_an_error() {
        let Some(btf) = running_kernels_btf() else {
            return;
        };
        let error = btf
            .field_offset("sock", &["sk_backlog_no_such_field"], 4)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("struct sock has no field sk_backlog_no_such_field"),
            "{error}"
        );
        let error = btf.field_offset("no_such_struct", &["x"], 4).unwrap_err();
        assert!(
            error.to_string().contains("has no struct no_such_struct"),
            "{error}"
        );
    }
}
