//! `cargo xtask package`: the .deb and .rpm (cargo-deb and cargo-generate-rpm, installed here if
//! missing), with a man page made from `flow-agent --help`. And the package smoke test that
//! `cargo xtask test` runs: install the .deb with dpkg, run the agent, `systemd-analyze verify`
//! the installed unit, remove and purge, and check that nothing is left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cargo, output, root, run_cmd, setup};

/// Packaging tools from crates.io, pinned.
const TOOLS: &[(&str, &str, &str)] = &[("cargo-deb", "3.8.0", "deb"), ("cargo-generate-rpm", "0.21.1", "generate-rpm")];
/// Debian packages the smoke test uses: `systemd-analyze` (and `man`, which its verify runs for
/// Documentation=), the package's own dependency, `rpm -qp`, `setpriv`.
pub const SMOKE_APT: &[&str] = &["systemd", "man-db", "adduser", "rpm", "util-linux"];

pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

fn out_dir() -> PathBuf {
    root().join("target/package")
}

/// Install cargo-deb and cargo-generate-rpm unless `cargo deb --version` etc. already work.
pub fn tools() -> Result<()> {
    for (krate, version, sub) in TOOLS {
        let works = cargo().args([*sub, "--version"]).output().map(|o| o.status.success()).unwrap_or(false);
        if !works {
            run_cmd(cargo().args(["install", "--locked", krate, "--version", version]))?;
        }
    }
    Ok(())
}

/// roff-escape preformatted text.
fn roff(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') { format!("\\&{l}\n") } else { format!("{l}\n") }
        })
        .collect()
}

/// Subcommands given their own man page section (when the binary has them).
const SUBCOMMANDS: &[&str] = &["check", "flows"];

/// flow-agent(8), from the binary's own --help texts so the two cannot disagree.
pub fn man_page(bin: &Path) -> Result<String> {
    let version = output(Command::new(bin).arg("--version"))?;
    let help = output(Command::new(bin).arg("--help"))?;
    let mut synopsis = String::from(".B flow-agent\n[\\fIOPTIONS\\fR]\n");
    let mut sections = String::new();
    for sub in SUBCOMMANDS {
        let Ok(text) = output(Command::new(bin).args([sub, "--help"])) else { continue };
        synopsis.push_str(&format!(".br\n.B flow-agent {sub}\n[\\fIOPTIONS\\fR]\n"));
        sections.push_str(&format!(".SH {}\n.nf\n{}.fi\n", sub.to_uppercase(), roff(&text)));
    }
    Ok(format!(
        ".TH FLOW-AGENT 8 \"\" \"{}\" \"System Administration\"\n\
         .SH NAME\nflow-agent \\- eBPF flow-capture agent: per-flow RTT, retransmissions, timeouts and bytes\n\
         .SH SYNOPSIS\n{synopsis}.SH OPTIONS\n.nf\n{}.fi\n{sections}\
         .SH FILES\n.TP\n.I /etc/flow-agent/config.toml\nsettings, with the same names as the options\n\
         .TP\n.I /usr/lib/systemd/system/flow-agent.service\nthe service (Type=notify, watchdog)\n\
         .TP\n.I /var/lib/flow-agent\nstate directory\n\
         .SH SEE ALSO\n.BR systemctl (1),\n.BR journalctl (1)\n",
        version.trim(),
        roff(&help),
    ))
}

/// Release build, man page, then the .deb and the .rpm in target/package/.
pub fn build() -> Result<Packages> {
    setup::toolchain()?;
    tools()?;
    run_cmd(cargo().args(["build", "--release", "-p", "flow-agent"]))?;
    let bin = root().join("target/release/flow-agent");
    let man = man_page(&bin)?;
    let gz = root().join("target/release/flow-agent.8.gz");
    let mut gzip = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    std::io::Write::write_all(&mut gzip.stdin.take().expect("piped"), man.as_bytes())?;
    let compressed = gzip.wait_with_output()?;
    ensure!(compressed.status.success(), "gzip failed");
    std::fs::write(&gz, compressed.stdout).with_context(|| format!("writing {}", gz.display()))?;

    let out = out_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    run_cmd(cargo().args(["deb", "-p", "flow-agent", "--no-build", "--no-dbgsym", "-o"]).arg(&out))?;
    run_cmd(cargo().args(["generate-rpm", "-p", "agent", "-o"]).arg(&out))?;
    let find = |ext: &str| -> Result<PathBuf> {
        std::fs::read_dir(&out)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .with_context(|| format!("no .{ext} in {}", out.display()))
    };
    let p = Packages { deb: find("deb")?, rpm: find("rpm")? };
    eprintln!("packages:\n  {}\n  {}", p.deb.display(), p.rpm.display());
    Ok(p)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn exists(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/flow-agent.service";
/// The unit's capabilities, in setpriv's spelling.
const UNIT_CAPS: &str = "+bpf,+perfmon,+net_admin,+dac_read_search";

/// dpkg -i, run, verify the unit, dpkg -r, dpkg --purge; each step checked.
pub fn smoke(p: &Packages) -> Result<()> {
    setup::apt(SMOKE_APT)?;
    if installed("flow-agent") {
        bail!(
            "a flow-agent package is already installed on this machine; the smoke test installs and purges its own, so remove it first (`dpkg --purge flow-agent`)"
        );
    }
    let version = env!("CARGO_PKG_VERSION");

    // The .rpm cannot be installed on Debian; its contents and scripts are checked.
    let files = output(Command::new("rpm").args(["-qlp"]).arg(&p.rpm))?;
    for f in [
        "/usr/bin/flow-agent",
        "/usr/lib/systemd/system/flow-agent.service",
        "/etc/flow-agent/config.toml",
        "/usr/share/man/man8/flow-agent.8.gz",
    ] {
        ensure!(files.lines().any(|l| l == f), "the .rpm lacks {f}; it holds:\n{files}");
    }
    let scripts = output(Command::new("rpm").args(["-qp", "--scripts"]).arg(&p.rpm))?;
    ensure!(scripts.contains("useradd --system") && scripts.contains("systemctl enable"), "rpm scripts:\n{scripts}");
    let config = output(Command::new("rpm").args(["-qcp"]).arg(&p.rpm))?;
    ensure!(config.trim() == "/etc/flow-agent/config.toml", "rpm config files: {config}");

    run_cmd(Command::new("dpkg").arg("-i").arg(&p.deb))?;
    let result = installed_checks(version);
    // Remove whatever happened, then report the first failure.
    let removal = remove_checks();
    result.and(removal)
}

fn installed_checks(version: &str) -> Result<()> {
    let v = output(Command::new("/usr/bin/flow-agent").arg("--version"))?;
    ensure!(v.trim() == format!("flow-agent {version}"), "--version printed {v:?}");
    eprintln!("{}", output(Command::new("/usr/bin/flow-agent").arg("check"))?);
    // As the packaged user with exactly the unit's capabilities, as systemd would start it.
    let caps_inh = format!("--inh-caps={UNIT_CAPS}");
    let caps_amb = format!("--ambient-caps={UNIT_CAPS}");
    let as_user = output(
        Command::new("setpriv")
            .args(["--reuid=flow-agent", "--regid=flow-agent", "--init-groups", &caps_inh, &caps_amb])
            .args(["/usr/bin/flow-agent", "check", "--config", "/etc/flow-agent/config.toml"]),
    )
    .context("`flow-agent check` as the flow-agent user with the unit's capabilities")?;
    eprintln!("{as_user}");
    // verify exits 0 on unknown keys (warnings): any message at all fails the test.
    let verify =
        Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/flow-agent.service"]).output()?;
    let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    ensure!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", verify.status);
    let man = output(Command::new("zcat").arg("/usr/share/man/man8/flow-agent.8.gz"))?;
    ensure!(
        man.starts_with(".TH FLOW-AGENT 8") && man.contains("--metrics-address") && man.contains(".SH CHECK"),
        "man page:\n{man}"
    );
    let state = output(Command::new("stat").args(["-c", "%U:%G %a", "/var/lib/flow-agent"]))?;
    ensure!(state.trim() == "flow-agent:flow-agent 750", "/var/lib/flow-agent is {state}");
    ensure!(exists(WANTS), "the service is not enabled: {WANTS} is missing");
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "flow-agent"]))?;
    ensure!(conffiles.contains("/etc/flow-agent/config.toml"), "conffiles: {conffiles}");
    Ok(())
}

fn remove_checks() -> Result<()> {
    run_cmd(Command::new("dpkg").args(["-r", "flow-agent"]))?;
    ensure!(!exists("/usr/bin/flow-agent"), "dpkg -r left /usr/bin/flow-agent");
    ensure!(!exists("/usr/lib/systemd/system/flow-agent.service"), "dpkg -r left the unit");
    ensure!(exists("/etc/flow-agent/config.toml"), "dpkg -r must keep the config file (a conffile) until purge");
    run_cmd(Command::new("dpkg").args(["--purge", "flow-agent"]))?;
    for left in ["/etc/flow-agent", "/var/lib/flow-agent", WANTS, "/etc/systemd/system/flow-agent.service"] {
        ensure!(!exists(left), "dpkg --purge left {left}");
    }
    ensure!(!installed("flow-agent"), "dpkg still lists flow-agent");
    let user = Command::new("getent").args(["passwd", "flow-agent"]).output()?;
    ensure!(!user.status.success(), "dpkg --purge left the flow-agent user");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escapes_control_lines_and_backslashes() {
        assert_eq!(roff(".hidden\n'quote\na\\b\nplain"), "\\&.hidden\n\\&'quote\na\\eb\nplain\n");
    }
}
