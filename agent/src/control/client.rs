//! A minimal HTTP/1.1 client for the control API: one request per connection, over the Unix
//! socket or loopback TCP.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(30);

pub enum Target {
    Unix(PathBuf),
    Http(SocketAddr),
}

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Percent-encode a path segment or query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn request(target: &Target, method: &str, path: &str, body: Option<&str>) -> Result<Response> {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let raw = match target {
        Target::Unix(p) => {
            let s = UnixStream::connect(p).map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => " (the socket is open to root and to control_group only)",
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        " (is flow-agent running? see control_socket)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("cannot connect to the control socket {}: {e}{hint}", p.display())
            })?;
            exchange(s, &head, body)
        }
        Target::Http(a) => {
            let s = TcpStream::connect_timeout(a, TIMEOUT)
                .with_context(|| format!("cannot connect to the control API at {a} (is control_http set?)"))?;
            exchange(s, &head, body)
        }
    }
    .context("talking to the control API")?;
    parse(&raw)
}

trait Stream: Read + Write {
    fn set_timeouts(&self) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(Some(TIMEOUT))?;
        self.set_write_timeout(Some(TIMEOUT))
    }
}

impl Stream for TcpStream {
    fn set_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(Some(TIMEOUT))?;
        self.set_write_timeout(Some(TIMEOUT))
    }
}

fn exchange(mut s: impl Stream, head: &str, body: &str) -> std::io::Result<Vec<u8>> {
    s.set_timeouts()?;
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("incomplete HTTP response: {text:?}") };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line: {:?}", head.lines().next()))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok(Response { status, body })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else { bail!("truncated chunked body") };
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..n).context("truncated chunk")?;
        out.push_str(chunk);
        s = rest.get(n + 2..).context("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r =
            parse(b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (400, "abcde"));
        assert!(parse(b"garbage").is_err());
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
