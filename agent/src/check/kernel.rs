//! The running kernel: version and BTF.

use std::path::Path;

use super::Item;

/// sock_ops header-option callbacks (used to see FIN arrival) need 5.10; CAP_BPF needs 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 10);
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// (major, minor) of a kernel release string like "6.18.44-fc-v769".
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub fn version() -> Item {
    const NAME: &str = "kernel version";
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let need = format!("{}.{} or later", MIN_KERNEL.0, MIN_KERNEL.1);
    match parse_release(release) {
        Some(v) if v >= MIN_KERNEL => Item::ok(NAME, format!("{release} ({need} needed)")),
        Some(_) => Item::fail(NAME, format!("{release} is too old"), format!("upgrade to Linux {need}")),
        None => Item::fail(NAME, format!("cannot read the kernel release ({release:?})"), "is /proc mounted?"),
    }
}

pub fn btf() -> Item {
    const NAME: &str = "BTF";
    match std::fs::File::open(Path::new(BTF)).and_then(|f| f.metadata()) {
        Ok(m) => Item::ok(NAME, format!("{BTF} ({} KiB)", m.len() / 1024)),
        Err(e) => Item::fail(
            NAME,
            format!("cannot read {BTF}: {e}"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y; in a container, mount the host's /sys/kernel/btf",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.19"), Some((4, 19)));
        assert!(parse_release("4.19").unwrap() < MIN_KERNEL);
        assert_eq!(parse_release(""), None);
    }
}
