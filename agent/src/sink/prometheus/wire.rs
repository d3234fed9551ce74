//! Prometheus remote-write v1 on the wire: the `prometheus.WriteRequest` protobuf messages (the few
//! this agent sends, as in prompb/remote.proto and types.proto), snappy block compression, and
//! the rules for metric and label names.

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Sorted by timestamp.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
}

/// Prometheus's staleness marker: "this series ended here".
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// The request body: the protobuf, snappy block-compressed (not the framed format).
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let raw = req.encode_to_vec();
    // Only fails for inputs above ~4 GiB, which a bounded request never reaches.
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
#[cfg(test)]
pub fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`; names starting with `__` are reserved for Prometheus.
pub fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snappy_round_trip() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label { name: "__name__".into(), value: "flow_agent_bytes_sent_total".into() }],
                samples: vec![Sample { value: 42.0, timestamp: 1_700_000_000_000 }],
            }],
            metadata: vec![MetricMetadata {
                r#type: MetricType::Counter as i32,
                metric_family_name: "flow_agent_bytes_sent_total".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let body = encode(&req);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(raw.as_slice()).unwrap(), req);
        // Block format, not the framing format (which starts with a stream identifier chunk).
        assert_ne!(body.first(), Some(&0xff));
    }

    #[test]
    fn names() {
        for ok in ["flow_agent_bytes_sent_total", "a:b", "_x"] {
            assert!(valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(!valid_metric_name(bad), "{bad}");
        }
        for ok in ["env", "target_port", "_x", "A1"] {
            assert!(valid_label_name(ok), "{ok}");
        }
        for bad in ["", "__name__", "a:b", "9z", "a-b", "le.x"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }
}
