//! `POST /publish`: agent reports (JSON, optionally gzip), checked and stored once per
//! `report_id`.

use std::io::Read;

use agent_common::report::{FlowMetrics, LatencySummary, Report, SCHEMA_VERSION};
use axum::http::HeaderMap;

/// Bodies larger than this once decompressed are refused (a gzip bomb guard).
pub const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;

/// Why a report was refused; every variant is a 400 naming the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("the body is not valid gzip: {0}")]
    Gzip(String),
    #[error("the decompressed body exceeds {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,
    #[error("unsupported Content-Encoding '{0}' (use gzip or none)")]
    Encoding(String),
    #[error("the report is not valid JSON for schema version {SCHEMA_VERSION}: {0}")]
    Json(String),
    #[error("schema_version {0} is not supported (this backend reads version {SCHEMA_VERSION})")]
    SchemaVersion(u32),
    #[error("report_id must be 1 to 128 printable ASCII characters")]
    ReportId,
    #[error("window.end ({end}) must be after window.start ({start})")]
    Window { start: String, end: String },
    #[error("agent.hostname must be 1 to 255 characters")]
    Hostname,
    #[error("{0} is {1}, larger than the largest storable counter (2^63-1)")]
    CounterTooLarge(String, u64),
    #[error("{0} is {1}; a latency mean must be a finite number >= 0")]
    BadMean(String, f64),
}

/// The body as JSON bytes: gunzipped when `Content-Encoding: gzip` says so or the body starts
/// with the gzip magic number.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, IngestError> {
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let gzip = match encoding.as_str() {
        "gzip" | "x-gzip" => true,
        "" | "identity" => body.starts_with(&[0x1f, 0x8b]),
        other => return Err(IngestError::Encoding(other.to_string())),
    };
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len() * 8);
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Gzip(e.to_string()))?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(IngestError::TooLarge);
    }
    Ok(out)
}

/// Parses and checks a report: the schema (unknown or missing fields are errors) and the
/// values the store cannot hold.
pub fn parse_report(json: &[u8]) -> Result<Report, IngestError> {
    let r: Report = serde_json::from_slice(json).map_err(|e| IngestError::Json(e.to_string()))?;
    check_report(&r)?;
    Ok(r)
}

pub fn check_report(r: &Report) -> Result<(), IngestError> {
    if r.schema_version != SCHEMA_VERSION {
        return Err(IngestError::SchemaVersion(r.schema_version));
    }
    if r.report_id.is_empty() || r.report_id.len() > 128 || !r.report_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IngestError::ReportId);
    }
    if r.window.end <= r.window.start {
        return Err(IngestError::Window { start: r.window.start.to_rfc3339(), end: r.window.end.to_rfc3339() });
    }
    if r.agent.hostname.is_empty() || r.agent.hostname.chars().count() > 255 {
        return Err(IngestError::Hostname);
    }
    for (n, f) in r.flows.iter().enumerate() {
        check_metrics(&format!("flows[{n}]"), &f.metrics)?;
    }
    check_metrics("other", &r.other.metrics)?;
    check_counter("other.flows", r.other.flows)?;
    Ok(())
}

fn check_counter(path: &str, v: u64) -> Result<(), IngestError> {
    if v > i64::MAX as u64 { Err(IngestError::CounterTooLarge(path.to_string(), v)) } else { Ok(()) }
}

fn check_latency(path: &str, l: &LatencySummary) -> Result<(), IngestError> {
    for (name, v) in
        [("count", l.count), ("min", l.min), ("max", l.max), ("p50", l.p50), ("p90", l.p90), ("p99", l.p99)]
    {
        check_counter(&format!("{path}.{name}"), v)?;
    }
    if !l.mean.is_finite() || l.mean < 0.0 {
        return Err(IngestError::BadMean(format!("{path}.mean"), l.mean));
    }
    Ok(())
}

fn check_metrics(path: &str, m: &FlowMetrics) -> Result<(), IngestError> {
    let c = &m.connections;
    let counters = [
        ("connections.attempted", c.attempted),
        ("connections.established", c.established),
        ("connections.closed", c.closed),
        ("connections.failed", c.failed),
        ("connections.refused", c.refused),
        ("connections.timed_out", c.timed_out),
        ("connections.reset", c.reset),
        ("connections.active", c.active),
        ("bytes_sent", m.bytes_sent),
        ("bytes_received", m.bytes_received),
        ("segments_sent", m.segments_sent),
        ("segments_received", m.segments_received),
        ("retransmissions", m.retransmissions),
        ("timeouts", m.timeouts),
    ];
    for (name, v) in counters {
        check_counter(&format!("{path}.{name}"), v)?;
    }
    check_latency(&format!("{path}.rtt_us"), &m.rtt_us)?;
    check_latency(&format!("{path}.handshake_us"), &m.handshake_us)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn report_json() -> serde_json::Value {
        serde_json::json!({
            "report_id": "r-1", "schema_version": SCHEMA_VERSION,
            "window": {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:01:00Z"},
            "agent": {"version": "0.1.0", "hostname": "h1"},
            "flows": [{
                "protocol": "TCP", "local_ip": "10.0.0.1", "remote_ip": "10.0.1.1", "target_port": 443, "role": "client",
                "local_vpc_id": "vpc-11111111", "destination_category": "INTER_AZ",
                "connections": {"attempted":1,"established":1,"closed":0,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":1},
                "bytes_sent": 10, "bytes_received": 20, "segments_sent": 3, "segments_received": 4,
                "retransmissions": 1, "timeouts": 0,
                "rtt_us": {"count":2,"min":100,"max":300,"mean":200.0,"p50":200,"p90":300,"p99":300},
                "handshake_us": {"count":1,"min":50,"max":50,"mean":50.0,"p50":50,"p90":50,"p99":50}
            }],
            "other": {"flows": 0, "connections": {"attempted":0,"established":0,"closed":0,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":0},
                "bytes_sent": 0, "bytes_received": 0, "segments_sent": 0, "segments_received": 0, "retransmissions": 0, "timeouts": 0,
                "rtt_us": {"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0},
                "handshake_us": {"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0}},
            "agent_stats": {"events": 1, "ringbuf_drops": 0, "map_full": {"sockets":0,"flows":0,"listeners":0},
                "untracked_events": 0, "flows_tracked": 1, "sockets_tracked": 1, "cpu_seconds": 0.01, "rss_bytes": 1000}
        })
    }

    #[test]
    fn accepts_plain_and_gzip_bodies() {
        let body = serde_json::to_vec(&report_json()).unwrap();
        let r = parse_report(&decode_body(&HeaderMap::new(), &body).unwrap()).unwrap();
        assert_eq!(r.flows.len(), 1);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let gz = gz.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-encoding", "gzip".parse().unwrap());
        assert_eq!(decode_body(&h, &gz).unwrap(), body);
        // Sniffed without the header too.
        assert_eq!(decode_body(&HeaderMap::new(), &gz).unwrap(), body);
        assert!(matches!(decode_body(&h, b"not gzip"), Err(IngestError::Gzip(_))));
        h.insert("content-encoding", "br".parse().unwrap());
        assert_eq!(decode_body(&h, &body), Err(IngestError::Encoding("br".into())));
    }

    #[test]
    fn refuses_malformed_reports_with_a_reason() {
        let mut j = report_json();
        j["schema_version"] = 99.into();
        assert_eq!(parse_report(&serde_json::to_vec(&j).unwrap()).unwrap_err(), IngestError::SchemaVersion(99));
        let mut j = report_json();
        j["window"]["end"] = "2026-11-22T09:00:00Z".into();
        assert!(matches!(parse_report(&serde_json::to_vec(&j).unwrap()), Err(IngestError::Window { .. })));
        let mut j = report_json();
        j["flows"][0]["bytes_sent"] = serde_json::json!(u64::MAX);
        let e = parse_report(&serde_json::to_vec(&j).unwrap()).unwrap_err().to_string();
        assert!(e.contains("flows[0].bytes_sent"), "{e}");
        let mut j = report_json();
        j["flows"][0].as_object_mut().unwrap().remove("timeouts");
        let e = parse_report(&serde_json::to_vec(&j).unwrap()).unwrap_err().to_string();
        assert!(e.contains("timeouts"), "{e}");
        let mut j = report_json();
        j["report_id"] = "".into();
        assert_eq!(parse_report(&serde_json::to_vec(&j).unwrap()).unwrap_err(), IngestError::ReportId);
        assert!(matches!(parse_report(b"{"), Err(IngestError::Json(_))));
    }
}
