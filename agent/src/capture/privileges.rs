//! What the agent needs from the process before it touches the kernel, and giving it all up
//! once the programs are attached (reading and deleting map entries by fd needs no capability).

use super::CaptureError;
use crate::sys;

const CAP_SETPCAP: u32 = 8;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The `CapEff:` mask in a /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// Effective capabilities of this thread group's main thread, from /proc/self/status.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(cap_eff).unwrap_or(0)
}

/// Names of the capabilities still needed to load and attach the programs (empty: none).
pub fn missing() -> Vec<&'static str> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect()
}

/// Fail with the exact capabilities that are missing.
pub fn check() -> Result<(), CaptureError> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CaptureError::Privileges(format!(
        "the agent needs {} (or CAP_SYS_ADMIN) to load and attach eBPF programs; run it as root or grant them, e.g. `setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(which flow-agent)`",
        missing.join(", ")
    )))
}

/// Give up every capability for good: no new privileges on exec, an empty bounding set (when
/// CAP_SETPCAP allows), no ambient, effective, permitted or inheritable capability. Must run
/// before the process starts a second thread (capabilities are per thread); it checks every
/// thread afterwards and fails if one still holds a capability.
pub fn drop_all() -> Result<(), CaptureError> {
    let fail = |what: &str, e: std::io::Error| CaptureError::Privileges(format!("dropping capabilities: {what}: {e}"));
    sys::set_no_new_privs().map_err(|e| fail("PR_SET_NO_NEW_PRIVS", e))?;
    if effective_caps() & (1u64 << CAP_SETPCAP) != 0 {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40);
        for cap in 0..=last {
            sys::drop_bounding_cap(cap).map_err(|e| fail(&format!("PR_CAPBSET_DROP {cap}"), e))?;
        }
    }
    sys::clear_ambient_caps().map_err(|e| fail("PR_CAP_AMBIENT_CLEAR_ALL", e))?;
    sys::capset(0).map_err(|e| fail("capset", e))?;
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| fail("reading /proc/self/task", e))?;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(caps) = cap_eff(&status).filter(|c| *c != 0) {
            return Err(CaptureError::Privileges(format!(
                "thread {} still holds capabilities {caps:#x} after dropping them (it was started before the drop)",
                task.file_name().to_string_lossy()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status =
            "Name:\tflow-agent\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(0xc0_0000_1000));
        assert_eq!(cap_eff("Name: x\n"), None);
    }
}
