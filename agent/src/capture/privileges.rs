//! What the agent needs from the process before it touches the kernel.

use super::CaptureError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0)
}

/// Fail with the exact capabilities that are missing.
pub fn check() -> Result<(), CaptureError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CaptureError::Privileges(format!(
        "the agent needs {} (or CAP_SYS_ADMIN) to load and attach eBPF programs; run it as root or grant them, e.g. `setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(which flow-agent)`",
        missing.join(", ")
    )))
}
