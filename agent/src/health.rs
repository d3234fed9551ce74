//! A minimal HTTP endpoint for probes and self-metrics: `GET /healthz` answers 200 once the
//! programs are attached, 503 before; `GET /metrics` serves `crate::metrics` in Prometheus text
//! format. Plain HTTP/1.0-style responses on tokio; one request per connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Handle on the running endpoint.
pub struct Health {
    ready: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Health {
    /// Bind `addr` and serve in the background (on the current runtime).
    pub async fn serve(addr: SocketAddr) -> std::io::Result<Health> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, flag.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("health endpoint: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Health { ready, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// Status line and body for a request line.
fn respond(request_line: &str, ready: bool) -> (&'static str, &'static str) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", ""),
        ("GET" | "HEAD", "/healthz") if ready => ("200 OK", "ok\n"),
        ("GET" | "HEAD", "/healthz") => ("503 Service Unavailable", "starting: programs not attached yet\n"),
        (_, "/healthz" | "/metrics") => ("405 Method Not Allowed", "use GET\n"),
        _ => ("404 Not Found", "not found; try /healthz or /metrics\n"),
    }
}

async fn answer(mut stream: TcpStream, ready: Arc<AtomicBool>) {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if !matches!(tokio::time::timeout(Duration::from_secs(5), read).await, Ok(Ok(()))) {
        return;
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    let (status, body) = respond(line, ready.load(Ordering::Relaxed));
    let metrics = status == "200 OK" && line.split_whitespace().nth(1).is_some_and(|p| p.starts_with("/metrics"));
    let (body, kind) = if metrics {
        (crate::metrics::global().render(), "text/plain; version=0.0.4")
    } else {
        (body.to_string(), "text/plain")
    };
    let head = text.starts_with("HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        if head { "" } else { &body }
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_is_503_until_ready() {
        let h = Health::serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let r = get(h.local_addr(), "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        h.set_ready();
        let r = get(h.local_addr(), "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("\r\n\r\nok\n"), "{r}");
        let r = get(h.local_addr(), "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\nflow_agent_spool_bytes "), "{r}");
        let r = get(h.local_addr(), "/nope").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    }

    #[test]
    fn request_lines() {
        assert_eq!(respond("POST /healthz HTTP/1.1", true).0, "405 Method Not Allowed");
        assert_eq!(respond("GET /healthz?verbose HTTP/1.1", true).0, "200 OK");
        assert_eq!(respond("", true).0, "404 Not Found");
    }
}
