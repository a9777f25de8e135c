//! What the kernel tests need to know of the kernel they run on, and whether programs are loaded.

use std::io;
#[cfg(feature = "aya")]
use std::{
    thread,
    time::{Duration, Instant},
};

use common::KPROBE_PMU;

/// The kernel tests load eBPF programs, which needs root. They are marked `#[ignore]`, so a plain
/// `cargo test` counts them as ignored; `cargo xtask test` runs them with `--include-ignored` as
/// root or through sudo. Asked to run without root, a kernel test fails with this reason rather
/// than pass without testing anything.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this kernel test loads eBPF programs, which needs root: run `cargo xtask test` or \
         `cargo xtask test --lesson N` (they use sudo), or run the tests as root"
    );
}

/// Whether nothing else on this kernel calls `listen()` while the tests run: true in the guests
/// of `cargo xtask vm-test`, which run one test at a time and nothing else. There a test can
/// count every event it sees as its own; on a shared machine it can only pick out its own.
pub fn alone_on_this_kernel() -> bool {
    std::env::var_os("LISTEN_TRACE_ALONE").is_some()
}

/// Whether this kernel must accept the attach path `path` (`kprobe`, `fentry` or `tracepoint`).
/// `cargo xtask vm-test` knows which paths each guest kernel offers and lists them in
/// `LISTEN_TRACE_EXPECT_ATTACH`; elsewhere only the kernel can tell, and a clear refusal is fine.
pub fn attach_must_work(path: &str) -> bool {
    std::env::var("LISTEN_TRACE_EXPECT_ATTACH")
        .is_ok_and(|paths| paths.split(',').any(|p| p == path))
}

/// Whether this kernel has kprobes: from the kernel itself, or from the VM runner's list.
pub fn kprobes_expected() -> bool {
    std::path::Path::new(KPROBE_PMU).exists() || attach_must_work("kprobe")
}

/// The attach paths a lesson's kernel tests exercise here: the tracepoint everywhere, the kprobe
/// where the kernel has kprobes, fentry where the VM runner says the kernel accepts it (a host may
/// refuse fentry by policy; lesson 1's tests check that it says so clearly).
pub fn attach_paths_here() -> Vec<&'static str> {
    let mut paths = vec!["tracepoint"];
    if kprobes_expected() {
        paths.push("kprobe");
    }
    if attach_must_work("fentry") {
        paths.push("fentry");
    }
    eprintln!("attach paths tested on this kernel: {}", paths.join(", "));
    paths
}

/// The attach paths of lessons 7 to 14 exercised here: [`attach_paths_here`], and the sockops path wherever
/// it is expected to work: where the VM runner lists it for the guest kernel, and on any other
/// kernel from Linux 5.10 on (the oldest kernel the VM runner proves it on).
pub fn tool_attach_paths_here() -> Vec<&'static str> {
    let mut paths = attach_paths_here();
    let listed = std::env::var("LISTEN_TRACE_EXPECT_ATTACH").is_ok();
    if attach_must_work("sockops") || (!listed && !release_below(5, 10)) {
        paths.push("sockops");
    }
    eprintln!("lessons 7 to 14 also test: {}", paths.join(", "));
    paths
}

/// Whether the running kernel's release (`uname -r`) is below `major.minor`.
pub fn release_below(major: u32, minor: u32) -> bool {
    let uname = nix::sys::utsname::uname().expect("uname");
    let release = uname.release().to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let running = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    running < (major, minor)
}

/// The ids of every BPF program loaded in the kernel, as `bpftool prog show` lists them. The
/// kernel lists the ids first, then each is opened: a program freed in between (another test's
/// step, exiting) is gone, not an error.
#[cfg(feature = "aya")]
pub fn loaded_program_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for program in aya::programs::loaded_programs() {
        match program {
            Ok(info) => ids.push(info.id()),
            Err(aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                io_error,
                ..
            })) if io_error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io::Error::other(error)),
        }
    }
    Ok(ids)
}

#[cfg(feature = "aya")]
/// Asserts, through the bpf syscall, that the programs with these ids are gone from the kernel. The
/// kernel frees a program shortly after its last fd closes, so this waits up to 5 s.
pub fn assert_programs_unloaded(program_ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let still_loaded: Vec<_> = loaded_program_ids()
            .expect("cannot list the loaded BPF programs")
            .into_iter()
            .filter(|id| program_ids.contains(id))
            .collect();
        if still_loaded.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {still_loaded:?} are still loaded after their step exited"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(feature = "aya")]
/// Asserts that programs with these ids are loaded right now (the tests' positive control).
pub fn assert_programs_loaded(program_ids: &[u32]) {
    let loaded = loaded_program_ids().expect("cannot list the loaded BPF programs");
    for id in program_ids {
        assert!(
            loaded.contains(id),
            "program id {id} is not loaded while its step runs"
        );
    }
}

/// `BPF_MAP_TYPE_PERF_EVENT_ARRAY` and `BPF_MAP_TYPE_RINGBUF`, from `include/uapi/linux/bpf.h`.
pub const MAP_TYPE_PERF_EVENT_ARRAY: u32 = 4;
pub const MAP_TYPE_RINGBUF: u32 = 27;

/// The types of the BPF maps that process `pid` holds open, from `/proc/PID/fdinfo` (as
/// `bpftool map show` would name them: 4 a perf event array, 27 a ring buffer, ...).
pub fn map_types_held(pid: u32) -> io::Result<Vec<u32>> {
    let mut types = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        types.extend(
            info.lines()
                .filter_map(|line| line.strip_prefix("map_type:"))
                .filter_map(|value| value.trim().parse::<u32>().ok()),
        );
    }
    Ok(types)
}

/// How many entries the hash map called `name` that process `pid` holds open has right now: its
/// keys, read through the bpf syscall as `bpftool map dump` reads them.
#[cfg(feature = "aya")]
pub fn hash_map_len_held<V: aya::Pod>(pid: u32, name: &str) -> io::Result<usize> {
    use aya::maps::{HashMap, Map, MapData};
    let mut found = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u32>().ok())
        else {
            continue; // not a map
        };
        let map = MapData::from_id(id).map_err(io::Error::other)?;
        let info = map.info().map_err(io::Error::other)?;
        if info.name_as_str() == Some(name) {
            found = Some(map);
            break;
        }
    }
    let map = found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} holds no map called {name}"),
        )
    })?;
    let map = HashMap::<_, u64, V>::try_from(Map::from_map_data(map).map_err(io::Error::other)?)
        .map_err(io::Error::other)?;
    Ok(map.keys().count())
}
