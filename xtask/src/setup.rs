//! Idempotent machine setup: apt packages, rust-src, bpf-linker.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run_cmd;

/// Debian packages the agent's tests use: `ip`/`ss`/`nstat` and `nft`.
const AGENT_APT: &[&str] = &["iproute2", "nftables", "procps"];
/// bpf-linker version known to build with this toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn all() -> Result<()> {
    toolchain()?;
    apt(AGENT_APT)?;
    prometheus()?;
    crate::backend::setup()?;
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Install Debian packages that are not installed yet.
pub fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {} (install them with `sudo apt-get install {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").arg("update").arg("-q").env("DEBIAN_FRONTEND", "noninteractive"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Prometheus for the remote-write export test (agent/tests/export.rs), which starts its own
/// server. Installing the package must not start the Debian service: while it installs, a
/// policy-rc.d (if the machine has none) tells invoke-rc.d to start nothing.
fn prometheus() -> Result<()> {
    if Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = is_root() && !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# flow-agent xtask setup: start no service while installing\nexit 101\n")
            .context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let res = apt(&["prometheus"]);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    res?;
    // Under systemd, package installs start services regardless of policy-rc.d on some setups:
    // the test needs no system instance, so make sure none runs (and none starts at boot).
    if Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").args(["disable", "--now", "prometheus"]).status();
    }
    Ok(())
}

fn sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// rust-src (for build-std) and bpf-linker built against the toolchain's own libLLVM.
pub fn toolchain() -> Result<()> {
    let sysroot = sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        run_cmd(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    }
    if bpf_linker_works() {
        return Ok(());
    }
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let major =
        llvm_major(&libllvm).with_context(|| format!("cannot tell the LLVM version of {}", libllvm.display()))?;
    // bpf-linker's build wants $LLVM_PREFIX/lib/libLLVM.so: point it at the toolchain's copy.
    let prefix = cache_dir().join(format!("llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("symlink {}", link.display()))?;
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display())),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; check that {} exists", libllvm.display());
    }
    Ok(())
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("flow-agent")
}

/// The toolchain's libLLVM: `libLLVM.so.<major>.<minor>-rust-...` (the versioned file name).
fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no libLLVM in {}: is this a rustup toolchain?", dir.display()))
}

fn llvm_major(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libLLVM.so.").or_else(|| name.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(llvm_major(Path::new("/x/libLLVM.so.22.1-rust-1.95.0-stable")), Some(22));
        assert_eq!(llvm_major(Path::new("/x/libLLVM-22-rust-1.95.0-stable.so")), Some(22));
        assert_eq!(llvm_major(Path::new("/x/libfoo.so")), None);
    }
}
