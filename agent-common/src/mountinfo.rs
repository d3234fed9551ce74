//! Reading /proc/self/mountinfo: where the cgroup v2 hierarchy is mounted (shared by the agent,
//! which attaches there, and its integration tests, which create cgroups there), and which files
//! network namespaces are bound to.

use std::path::PathBuf;

/// A mountinfo line's root, mount point (unescaped) and filesystem type.
fn mount(line: &str) -> Option<(&str, PathBuf, &str)> {
    // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split_whitespace();
    let root = pre.nth(3)?;
    let point = PathBuf::from(unescape(pre.next()?));
    Some((root, point, post.split_whitespace().next()?))
}

/// Mount point of the first cgroup2 filesystem in a mountinfo text.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().filter_map(mount).find_map(|(_, point, fstype)| (fstype == "cgroup2").then_some(point))
}

/// Files network namespaces are bound to (nsfs mounts of a `net:[inode]`, such as the
/// /run/netns/NAME of `ip netns add`), in a mountinfo text.
pub fn net_namespace_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(mount)
        .filter_map(|(root, point, fstype)| (fstype == "nsfs" && root.starts_with("net:[")).then_some(point))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal bytes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let mi = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_cgroup2_mount("36 35 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
        assert_eq!(find_cgroup2_mount(""), None);
    }

    #[test]
    fn finds_the_files_network_namespaces_are_bound_to() {
        let mi = "\
25 1 0:23 / / rw,relatime - ext4 /dev/vda1 rw
45 25 0:26 / /run rw,nosuid - tmpfs tmpfs rw
48 45 0:4 net:[4026532174] /run/netns/lab\\040a rw shared:2 - nsfs nsfs rw
49 45 0:4 mnt:[4026532180] /run/mntns/x rw - nsfs nsfs rw
50 25 0:4 net:[4026532201] /var/run/netns/cni-1 rw - nsfs nsfs rw
";
        assert_eq!(
            net_namespace_mounts(mi),
            [PathBuf::from("/run/netns/lab a"), PathBuf::from("/var/run/netns/cni-1")],
            "net namespaces only, mount points unescaped"
        );
        assert!(net_namespace_mounts("").is_empty());
        assert!(net_namespace_mounts("garbage\n48 45 0:4\n").is_empty(), "short lines are skipped");
    }

    #[test]
    fn unescapes_octal_and_keeps_utf8() {
        let mi = "44 35 0:39 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/my cg")));
        let mi = "44 35 0:39 / /mnt/gr\u{fc}ppe rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/gr\u{fc}ppe")));
    }
}
