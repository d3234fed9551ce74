//! tracefs: mounted if needed; the SYN-ACK tracepoint's field offsets read from its format file.

use std::path::{Path, PathBuf};

use super::CaptureError;

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const FORMAT: &str = "events/tcp/tcp_retransmit_synack/format";

/// Offsets of the fields the SYN-ACK program reads, as the running kernel lays them out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynackOffsets {
    /// The listener's address (`skaddr`), whose cgroup the program checks.
    pub skaddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

impl SynackOffsets {
    /// Parse a tracepoint `format` file; every field must be present with the size we read.
    pub fn parse(format: &str) -> Result<Self, String> {
        let field = |name: &str, size: u32| -> Result<u32, String> {
            for line in format.lines() {
                let line = line.trim();
                let Some(rest) = line.strip_prefix("field:") else {
                    continue;
                };
                let mut parts = rest.split(';').map(str::trim);
                let decl = parts.next().unwrap_or("");
                let decl_name = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap_or("");
                let decl_name = decl_name.split('[').next().unwrap_or("");
                if decl_name != name {
                    continue;
                }
                let mut off = None;
                let mut sz = None;
                for p in parts {
                    if let Some(v) = p.strip_prefix("offset:") {
                        off = v.parse::<u32>().ok();
                    } else if let Some(v) = p.strip_prefix("size:") {
                        sz = v.parse::<u32>().ok();
                    }
                }
                return match (off, sz) {
                    (Some(o), Some(s)) if s == size => Ok(o),
                    (Some(_), Some(s)) => Err(format!("field {name} has size {s}, expected {size}")),
                    _ => Err(format!("field {name} has no offset/size")),
                };
            }
            Err(format!("field {name} not found in the format file"))
        };
        Ok(SynackOffsets {
            skaddr: field("skaddr", 8)?,
            sport: field("sport", 2)?,
            dport: field("dport", 2)?,
            family: field("family", 2)?,
            saddr: field("saddr", 4)?,
            daddr: field("daddr", 4)?,
            saddr_v6: field("saddr_v6", 16)?,
            daddr_v6: field("daddr_v6", 16)?,
        })
    }
}

/// Make sure tracefs is mounted and read the SYN-ACK tracepoint layout.
pub fn synack_offsets() -> Result<SynackOffsets, CaptureError> {
    let root = PathBuf::from(TRACEFS);
    let path = root.join(FORMAT);
    if !path.exists() && !Path::new(TRACEFS).join("events").exists() {
        crate::sys::mount("nodev", &root, "tracefs")
            .map_err(|source| CaptureError::MountTracefs { path: root.clone(), source })?;
        tracing::info!(path = TRACEFS, "mounted tracefs");
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CaptureError::TracepointFormat(format!("cannot read {}: {e}", path.display())))?;
    SynackOffsets::parse(&text).map_err(CaptureError::TracepointFormat)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: tcp_retransmit_synack
ID: 2275
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:30;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:38;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:54;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_kernel_format() {
        let o = SynackOffsets::parse(FORMAT_6_18).unwrap();
        assert_eq!(
            o,
            SynackOffsets {
                skaddr: 8,
                sport: 24,
                dport: 26,
                family: 28,
                saddr: 30,
                daddr: 34,
                saddr_v6: 38,
                daddr_v6: 54
            }
        );
    }

    #[test]
    fn rejects_missing_or_resized_fields() {
        let e = SynackOffsets::parse(&FORMAT_6_18.replace("daddr_v6", "dst6")).unwrap_err();
        assert!(e.contains("daddr_v6"), "{e}");
        let e = SynackOffsets::parse(&FORMAT_6_18.replace("offset:24;\tsize:2", "offset:24;\tsize:4")).unwrap_err();
        assert!(e.contains("sport") && e.contains("size 4"), "{e}");
    }
}
