//! Reading /proc/self/mountinfo: where the cgroup v2 hierarchy is mounted. Shared by the agent
//! (which attaches there) and its integration tests (which create cgroups there).

use std::path::PathBuf;

/// Mount point of the first cgroup2 filesystem in a mountinfo text.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(pre.split_whitespace().nth(4)?)))
    })
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
    fn unescapes_octal_and_keeps_utf8() {
        let mi = "44 35 0:39 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/my cg")));
        let mi = "44 35 0:39 / /mnt/gr\u{fc}ppe rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/gr\u{fc}ppe")));
    }
}
