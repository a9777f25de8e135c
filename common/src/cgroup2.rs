//! The cgroup2 hierarchy, whose root the sockops path of lessons 7 to 14 attaches to: a cgroup's `sock_ops`
//! programs run for the sockets of its processes and of every cgroup below it.

use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, bail};
use nix::mount::{MntFlags, MsFlags};

/// The root of the cgroup2 hierarchy, open. Where cgroup2 is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` beside cgroup v1), that mount; where it is not, it is mounted for a
/// moment in a directory of our own: the open directory is all the attach needs, so the mount is
/// taken away again at once and nothing stays behind.
pub fn open_cgroup2_root() -> anyhow::Result<File> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo to find the cgroup2 hierarchy")?;
    if let Some(root) = mount_point(&mountinfo) {
        return File::open(&root).with_context(|| format!("cannot open {}", root.display()));
    }
    let dir = std::env::temp_dir().join(format!("listen-trace-cgroup2-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mounted = nix::mount::mount(
        Some("cgroup2"),
        &dir,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    let root = mounted.map(|()| File::open(&dir));
    let _ = nix::mount::umount2(&dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&dir);
    match root {
        Ok(Ok(root)) => {
            eprintln!("cgroup2 is not mounted: reached its root through a mount of a moment");
            Ok(root)
        }
        Ok(Err(error)) => Err(error).context("cannot open the cgroup2 root"),
        Err(error) => bail!(
            "the sockops path attaches to the cgroup2 root, but cgroup2 is not mounted and \
             mounting it failed ({error}): this kernel may lack cgroup2 (CONFIG_CGROUPS), or this \
             sandbox forbids mounts; `--attach auto` picks a path that needs no cgroup"
        ),
    }
}

/// Where `mountinfo` (the format of `/proc/self/mountinfo`) has cgroup2 mounted, if anywhere.
pub fn mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `36 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw`: the mount point is
        // the fifth field, the file system type the first after the ` - `.
        let (mount, filesystem) = line.split_once(" - ")?;
        let fstype = filesystem.split(' ').next()?;
        let point = mount.split(' ').nth(4)?;
        // Spaces and the like are octal escapes (`\040`): such a mount point is not ours to guess.
        (fstype == "cgroup2" && !point.contains('\\')).then(|| PathBuf::from(point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_beside_cgroup_v1_or_alone() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
32 25 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:10 - tmpfs tmpfs ro,mode=755
33 32 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:11 - cgroup2 cgroup2 rw
34 32 0:29 / /sys/fs/cgroup/cpu rw,nosuid shared:12 - cgroup cgroup rw,cpu
";
        assert_eq!(
            mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "36 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(mount_point(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let legacy = "34 32 0:29 / /sys/fs/cgroup/cpu rw,nosuid shared:12 - cgroup cgroup rw,cpu\n";
        assert_eq!(mount_point(legacy), None);
        assert_eq!(mount_point(""), None);
    }
}
