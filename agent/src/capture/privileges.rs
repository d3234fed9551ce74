//! What the agent needs from the process before it touches the kernel, and giving it all up
//! once the programs are attached (reading and deleting map entries by fd needs no capability).

use super::CaptureError;
use crate::sys;

const CAP_SETPCAP: u32 = 8;
const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The `CapEff:` mask in a /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// Effective capabilities in a /proc/.../status file (0 if it cannot be read).
fn caps_in(status: &str) -> u64 {
    std::fs::read_to_string(status).ok().as_deref().and_then(cap_eff).unwrap_or(0)
}

/// Effective capabilities of this thread group's main thread, from /proc/self/status.
pub fn effective_caps() -> u64 {
    caps_in("/proc/self/status")
}

/// A thread that keeps some capabilities after `drop_all`: the walk's finder of network
/// namespaces (`--walk-netns-all`), which enters the namespaces it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptBy {
    pub tid: i32,
    pub caps: u64,
}

/// Reduce the calling thread's capabilities (they are per thread) to those of `keep` it has, for
/// good: no new privileges on exec, a bounding set of `keep` (when CAP_SETPCAP allows), no
/// ambient or inheritable capability, effective and permitted `keep`. Returns what it kept.
pub fn keep_only(keep: u64) -> Result<u64, CaptureError> {
    let fail = |what: &str, e: std::io::Error| {
        let but = if keep == 0 { String::new() } else { format!(" but {keep:#x}") };
        CaptureError::Privileges(format!("dropping capabilities{but}: {what}: {e}"))
    };
    sys::set_no_new_privs().map_err(|e| fail("PR_SET_NO_NEW_PRIVS", e))?;
    let caps = caps_in("/proc/thread-self/status");
    if caps & (1u64 << CAP_SETPCAP) != 0 {
        for cap in (0..=last_cap()).filter(|c| keep & (1u64 << c) == 0) {
            sys::drop_bounding_cap(cap).map_err(|e| fail(&format!("PR_CAPBSET_DROP {cap}"), e))?;
        }
    }
    sys::clear_ambient_caps().map_err(|e| fail("PR_CAP_AMBIENT_CLEAR_ALL", e))?;
    sys::capset(caps & keep).map_err(|e| fail("capset", e))?;
    Ok(caps & keep)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
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

/// Give up every capability for good in the calling thread (`keep_only(0)`). Must run before
/// the process starts a second thread (capabilities are per thread); it checks every thread
/// afterwards and fails if one still holds a capability, but for `kept` (if any), which may hold
/// what it kept and nothing more.
pub fn drop_all(kept: Option<KeptBy>) -> Result<(), CaptureError> {
    keep_only(0)?;
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| CaptureError::Privileges(format!("dropping capabilities: reading /proc/self/task: {e}")))?;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let tid = task.file_name().to_string_lossy().parse::<i32>().unwrap_or(-1);
        if let Some(caps) = cap_eff(&status) {
            check_thread(tid, caps, kept)?;
        }
    }
    Ok(())
}

/// Thread `tid`, holding `caps` after the drop: none, or no more than it was allowed to keep.
fn check_thread(tid: i32, caps: u64, kept: Option<KeptBy>) -> Result<(), CaptureError> {
    let allowed = kept.filter(|k| k.tid == tid).map_or(0, |k| k.caps);
    if caps & !allowed == 0 {
        return Ok(());
    }
    Err(CaptureError::Privileges(format!(
        "thread {tid} still holds capabilities {:#x} after dropping them (it was started before the drop)",
        caps & !allowed
    )))
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

    #[test]
    fn only_the_thread_that_keeps_capabilities_may_hold_them_and_only_those() {
        let kept = Some(KeptBy { tid: 7, caps: 1 << CAP_SYS_ADMIN });
        assert!(check_thread(7, 1 << CAP_SYS_ADMIN, kept).is_ok());
        assert!(check_thread(8, 0, kept).is_ok());
        let e = check_thread(8, 1 << CAP_SYS_ADMIN, kept).unwrap_err().to_string();
        assert!(e.contains("thread 8") && e.contains("0x200000"), "{e}");
        let e = check_thread(7, (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN), kept).unwrap_err().to_string();
        assert!(e.contains("0x1000"), "only what it did not keep: {e}");
        assert!(check_thread(7, 1, None).is_err());
    }
}
