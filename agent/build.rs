//! Builds `agent-ebpf` for `bpfel-unknown-none` and leaves the object in OUT_DIR, where
//! `capture::loader` embeds it with `include_bytes!`. Uses the same stable toolchain with
//! RUSTC_BOOTSTRAP=1 (for build-std) and bpf-linker; `cargo xtask setup` installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup` to install the eBPF toolchain (rust-src and bpf-linker linked against this toolchain's LLVM)";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../agent-ebpf");
    let common_dir = manifest_dir.join("../agent-common");
    for p in ["src", "Cargo.toml", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", common_dir.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    check_toolchain(&cargo);

    let target_dir = out_dir.join("ebpf-target");
    // Start from a clean environment: the outer build's RUSTFLAGS, target and wrappers must not
    // leak into the eBPF build.
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ebpf_dir)
        .env_clear()
        .envs(env::vars().filter(|(k, _)| {
            matches!(
                k.as_str(),
                "PATH" | "HOME" | "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN" | "TMPDIR" | "CARGO_NET_OFFLINE"
            )
        }))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    if !status.success() {
        panic!("building the eBPF programs (agent-ebpf) failed; if the toolchain is missing, {SETUP_HINT}");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/agent-ebpf");
    std::fs::copy(&obj, out_dir.join("agent-ebpf.o")).unwrap_or_else(|e| panic!("copy {}: {e}", obj.display()));
}

fn check_toolchain(cargo: &str) {
    let linker_ok = Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !linker_ok {
        panic!("bpf-linker is not installed or does not run; {SETUP_HINT}");
    }
    let sysroot = Command::new(Path::new(cargo).with_file_name("rustc"))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .or_else(|| Command::new("rustc").args(["--print", "sysroot"]).output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rust_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        panic!("rust-src is missing ({} not found); {SETUP_HINT}", rust_src.display());
    }
}
