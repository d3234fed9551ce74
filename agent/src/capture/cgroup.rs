//! Where to attach: the cgroup v2 mount (from /proc/self/mountinfo), mounted if there is none.

use std::path::{Path, PathBuf};

use super::CaptureError;

pub use agent_common::mountinfo::find_cgroup2_mount;

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
