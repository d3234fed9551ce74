//! Where to attach: the cgroup v2 mount (from /proc/self/mountinfo), mounted if there is none.

use std::path::{Path, PathBuf};

use super::CaptureError;

/// Mount point of the first cgroup2 filesystem in a mountinfo text.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The cgroup to attach to: `--cgroup`, else the cgroup2 mount, else one we mount.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, CaptureError> {
    if let Some(p) = explicit {
        check_cgroup2(p)?;
        return Ok(p.to_path_buf());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(p) = find_cgroup2_mount(&mountinfo) {
        return Ok(p);
    }
    let path = PathBuf::from("/run/flow-agent/cgroup2");
    std::fs::create_dir_all(&path).map_err(|source| CaptureError::MountCgroup { path: path.clone(), source })?;
    crate::sys::mount("cgroup2", &path, "cgroup2")
        .map_err(|source| CaptureError::MountCgroup { path: path.clone(), source })?;
    tracing::info!(path = %path.display(), "mounted a cgroup v2 hierarchy");
    Ok(path)
}

fn check_cgroup2(p: &Path) -> Result<(), CaptureError> {
    std::fs::read_dir(p).map_err(|source| CaptureError::OpenCgroup { path: p.to_path_buf(), source })?;
    if !p.join("cgroup.procs").exists() || !crate::sys::is_cgroup2(p) {
        return Err(CaptureError::NotCgroup2 { path: p.to_path_buf() });
    }
    Ok(())
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
    fn unescapes_octal() {
        let mi = "44 35 0:39 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/my cg")));
    }
}
