//! The struct offsets of the running kernel, read from its BTF (`/sys/kernel/btf/vmlinux`): the
//! kernel's own description of its types, which bpftool and the verifier use too.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Backend, Btf, BtfType as _, Struct, Type};

use crate::{KERNEL_BTF, KERNEL_BTF_VARIABLE, SockOffsets};

/// Each field of [`SockOffsets`]: its name there, then where it is in the kernel (a struct, the path
/// of members to it) and the size the eBPF programs read it as: a field that changed type (not
/// only place) on some kernel is an error here, not a wrong value later.
const FIELDS: [(&str, &str, &[&str], usize); 20] = [
    ("socket_sk", "socket", &["sk"], POINTER),
    ("sk_max_ack_backlog", "sock", &["sk_max_ack_backlog"], 4),
    ("sk_protocol", "sock", &["sk_protocol"], 2),
    ("skc_family", "sock", &["__sk_common", "skc_family"], 2),
    (
        "skc_rcv_saddr",
        "sock",
        &["__sk_common", "skc_rcv_saddr"],
        4,
    ),
    (
        "skc_v6_rcv_saddr",
        "sock",
        &["__sk_common", "skc_v6_rcv_saddr"],
        16,
    ),
    ("inet_sport", "inet_sock", &["inet_sport"], 2),
    (
        "skc_net",
        "sock",
        &["__sk_common", "skc_net", "net"],
        POINTER,
    ),
    ("net_ns_inum", "net", &["ns", "inum"], 4),
    ("net_somaxconn", "net", &["core", "sysctl_somaxconn"], 4),
    ("task_files", "task_struct", &["files"], POINTER),
    ("files_fdt", "files_struct", &["fdt"], POINTER),
    ("fdtable_max_fds", "fdtable", &["max_fds"], 4),
    ("fdtable_fd", "fdtable", &["fd"], POINTER),
    ("file_private_data", "file", &["private_data"], POINTER),
    ("socket_file", "socket", &["file"], POINTER),
    ("task_tgid", "task_struct", &["tgid"], 4),
    ("task_pid", "task_struct", &["pid"], 4),
    ("task_comm", "task_struct", &["comm"], 16),
    ("sock_ops_sk", "bpf_sock_ops_kern", &["sk"], POINTER),
];
const POINTER: usize = size_of::<u64>();

impl SockOffsets {
    /// What a field that its lesson does not read holds: no offset at all (a read there fails).
    pub const NOT_LOOKED_UP: u32 = u32::MAX;

    /// The offsets of `fields` (named as in this struct) in the running kernel, from its BTF (or
    /// the file `LISTEN_TRACE_KERNEL_BTF` names). Each lesson names the fields it reads, so that a
    /// kernel without a field of a later lesson still runs it; the others hold `NOT_LOOKED_UP`.
    pub fn of_running_kernel(fields: &[&str]) -> anyhow::Result<Self> {
        Self::from_btf_file(&running_kernel_btf(), fields)
    }

    /// The offsets of `fields` described by the BTF file at `path`.
    pub fn from_btf_file(path: &Path, fields: &[&str]) -> anyhow::Result<Self> {
        let started = Instant::now();
        if let Some(unknown) = fields
            .iter()
            .find(|name| !FIELDS.iter().any(|(known, ..)| known == *name))
        {
            bail!("SockOffsets has no field {unknown}");
        }
        let btf = open_btf(path)?;
        let mut offsets = Self {
            resolved: 1,
            ..Self::UNSET
        };
        for (name, strukt, members, size) in FIELDS {
            *offsets.slot(name) = if fields.contains(&name) {
                field(&btf, strukt, members, size)?
            } else {
                Self::NOT_LOOKED_UP
            };
        }
        log::debug!(
            "struct offsets from {} in {:?}: {offsets:?}",
            path.display(),
            started.elapsed()
        );
        Ok(offsets)
    }

    /// The field called `name` (one of `FIELDS`).
    fn slot(&mut self, name: &str) -> &mut u32 {
        match name {
            "socket_sk" => &mut self.socket_sk,
            "sk_max_ack_backlog" => &mut self.sk_max_ack_backlog,
            "sk_protocol" => &mut self.sk_protocol,
            "skc_family" => &mut self.skc_family,
            "skc_rcv_saddr" => &mut self.skc_rcv_saddr,
            "skc_v6_rcv_saddr" => &mut self.skc_v6_rcv_saddr,
            "inet_sport" => &mut self.inet_sport,
            "skc_net" => &mut self.skc_net,
            "net_ns_inum" => &mut self.net_ns_inum,
            "net_somaxconn" => &mut self.net_somaxconn,
            "task_files" => &mut self.task_files,
            "files_fdt" => &mut self.files_fdt,
            "fdtable_max_fds" => &mut self.fdtable_max_fds,
            "fdtable_fd" => &mut self.fdtable_fd,
            "file_private_data" => &mut self.file_private_data,
            "socket_file" => &mut self.socket_file,
            "task_tgid" => &mut self.task_tgid,
            "task_pid" => &mut self.task_pid,
            "task_comm" => &mut self.task_comm,
            "sock_ops_sk" => &mut self.sock_ops_sk,
            _ => unreachable!("{name} is one of FIELDS"),
        }
    }
}

impl std::fmt::Display for SockOffsets {
    /// The socket's fields that were looked up (the file and task ones are left out).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = [
            ("socket.sk", self.socket_sk),
            ("sock.sk_max_ack_backlog", self.sk_max_ack_backlog),
            ("sock.sk_protocol", self.sk_protocol),
            ("sock.skc_family", self.skc_family),
            ("sock.skc_rcv_saddr", self.skc_rcv_saddr),
            ("sock.skc_v6_rcv_saddr", self.skc_v6_rcv_saddr),
            ("inet_sock.inet_sport", self.inet_sport),
            ("sock.skc_net.net", self.skc_net),
            ("net.ns.inum", self.net_ns_inum),
        ];
        let looked_up: Vec<String> = shown
            .iter()
            .filter(|(_, offset)| *offset != Self::NOT_LOOKED_UP)
            .map(|(name, offset)| format!("{name} +{offset}"))
            .collect();
        write!(f, "{}", looked_up.join(", "))
    }
}

/// The offset of one more field in the running kernel, for a lesson that reads a field
/// [`SockOffsets`] does not hold (exercise 3 reads `skc_num` this way): `struct NAME`'s field
/// `path`, which must be `size` bytes long.
pub fn field_offset_in_running_kernel(
    name: &str,
    path: &[&str],
    size: usize,
) -> anyhow::Result<u32> {
    field(&open_btf(&running_kernel_btf())?, name, path, size)
}

/// Opens the BTF file at `path`, with an error that says what a missing one means.
fn open_btf(path: &Path) -> anyhow::Result<Btf> {
    if !path.exists() {
        bail!(
            "{} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF), which \
             lessons 2 to 7 need to find the fields of its structs; lesson 1 works without it",
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
        let error = SockOffsets::from_btf_file(Path::new("/nonexistent/vmlinux"), &["socket_sk"])
            .unwrap_err();
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
        let error = SockOffsets::from_btf_file(&path, &["socket_sk"]).unwrap_err();
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
        let all: Vec<&str> = FIELDS.iter().map(|(name, ..)| *name).collect();
        let offsets = SockOffsets::of_running_kernel(&all).unwrap();
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
        assert_eq!(offsets.resolved, 1);
    }

    /// A field read with the wrong size is refused at start-up, with the struct and field named.
    #[test]
    fn a_field_of_another_size_is_a_clear_error() {
        let path = running_kernel_btf();
        if !path.exists() {
            eprintln!("SKIPPED: no {} on this machine", path.display());
            return;
        }
        let btf = Btf::from_file_with_backend(&path, Backend::Cache).unwrap();
        assert_eq!(
            field(&btf, "sock", &["sk_protocol"], 2).ok().map(|_| ()),
            Some(())
        );
        let error = field(&btf, "sock", &["sk_max_ack_backlog"], 2).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("struct sock: field sk_max_ack_backlog is 4 bytes in this kernel, where the lessons read 2"),
            "{error}"
        );
    }

    /// A lesson that reads two fields looks up those two only, and says so.
    #[test]
    fn only_the_fields_a_lesson_reads_are_looked_up() {
        let btf = running_kernel_btf();
        if !btf.exists() {
            eprintln!("SKIPPED: no {} on this machine", btf.display());
            return;
        }
        let offsets =
            SockOffsets::of_running_kernel(&["sk_max_ack_backlog", "sk_protocol"]).unwrap();
        assert_ne!(offsets.sk_max_ack_backlog, SockOffsets::NOT_LOOKED_UP);
        assert_eq!(offsets.socket_sk, SockOffsets::NOT_LOOKED_UP);
        assert_eq!(offsets.sock_ops_sk, SockOffsets::NOT_LOOKED_UP);
        let said = offsets.to_string();
        assert!(said.starts_with("sock.sk_max_ack_backlog +"), "{said}");
        assert!(!said.contains("socket.sk"), "{said}");
    }

    #[test]
    fn a_field_the_struct_does_not_have_is_an_error() {
        let error = SockOffsets::of_running_kernel(&["sk_backlog"]).unwrap_err();
        assert!(
            format!("{error:#}").contains("no field sk_backlog"),
            "{error:#}"
        );
    }
}
