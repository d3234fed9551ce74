//! Flow-log files laid out as flow logs are in S3:
//! `<dir>/AWSLogs/<account>/vpcflowlogs/<region>/<yyyy>/<mm>/<dd>/<account>_vpcflowlogs_<region>_<flow-log-id>_<YYYYMMDDTHHmmZ>_<hash>.log.gz`,
//! a header line then one record per line, gzip-compressed. A file is written whole under
//! `<dir>/.flow-agent-tmp/`, synced, then renamed into place: no partial file is ever visible.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use flate2::{Compression, write::GzEncoder};

/// Where unfinished files are written before being renamed into place (same filesystem).
pub const TMP_DIR: &str = ".flow-agent-tmp";

pub struct LogFile<'a> {
    pub account: &'a str,
    pub region: &'a str,
    pub flow_log_id: &'a str,
    pub start: DateTime<Utc>,
}

impl LogFile<'_> {
    /// The file's path relative to the destination directory.
    fn relative_path(&self, hash: &str) -> PathBuf {
        let (account, region) = (self.account, self.region);
        let name = format!(
            "{account}_vpcflowlogs_{region}_{}_{}_{hash}.log.gz",
            self.flow_log_id,
            self.start.format("%Y%m%dT%H%MZ")
        );
        Path::new("AWSLogs")
            .join(account)
            .join("vpcflowlogs")
            .join(region)
            .join(self.start.format("%Y/%m/%d").to_string())
            .join(name)
    }

    /// Write `header` and `lines` under `root`, atomically. Returns the final path.
    pub fn write(&self, root: &Path, header: &str, lines: &[String]) -> io::Result<PathBuf> {
        let hash = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let path = root.join(self.relative_path(&hash));
        let dir = path.parent().expect("a log file path has a directory");
        std::fs::create_dir_all(dir)?;
        let tmp_dir = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp_dir)?;
        let tmp = tmp_dir.join(path.file_name().expect("a log file path has a name"));
        let result = (|| {
            let mut gz = GzEncoder::new(BufWriter::new(File::create(&tmp)?), Compression::default());
            writeln!(gz, "{header}")?;
            for l in lines {
                writeln!(gz, "{l}")?;
            }
            let file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn files_are_laid_out_as_in_s3_and_complete() {
        let root = tempfile::tempdir().unwrap();
        let f = LogFile {
            account: "123456789012",
            region: "eu-west-1",
            flow_log_id: "fl-0123456789abcdef0",
            start: "2026-11-02T03:40:00Z".parse().unwrap(),
        };
        let path = f.write(root.path(), "version srcaddr", &["2 10.0.0.1".into(), "2 10.0.0.2".into()]).unwrap();
        let rel = path.strip_prefix(root.path()).unwrap().to_str().unwrap().to_string();
        let expected = "AWSLogs/123456789012/vpcflowlogs/eu-west-1/2026/11/02/\
                        123456789012_vpcflowlogs_eu-west-1_fl-0123456789abcdef0_20261102T0340Z_";
        assert!(rel.starts_with(expected) && rel.ends_with(".log.gz"), "{rel}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
        assert_eq!(text, "version srcaddr\n2 10.0.0.1\n2 10.0.0.2\n");
        assert_eq!(std::fs::read_dir(root.path().join(TMP_DIR)).unwrap().count(), 0, "no temporary file left");
    }
}
