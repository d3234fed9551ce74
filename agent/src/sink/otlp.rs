//! The `otlp` destination: each report as OpenTelemetry metrics over OTLP/HTTP (protobuf,
//! optionally gzip), to an OpenTelemetry Collector or any OTLP receiver.
//!
//! Reports are per-window deltas, so every Sum and Histogram has DELTA temporality with
//! start = window start and time = window end; a collector's `deltatocumulative` processor turns
//! them into cumulative series where a backend needs that. Gauges (open connections, agent map
//! fill) are values at window end.

use std::{io::Write, sync::Mutex};

use agent_common::report::{FlowMetrics, Report};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{
    exported::{
        ACTIVE, FLOW_COUNTERS, LATENCIES, OTHER_FLOWS, OTHER_LABEL, agent_counters, agent_gauges, flow_labels,
        kernel_bounds_seconds, kernel_buckets, sum_seconds,
    },
    remote::{DeliveryError, DeliveryFuture, Destination, HttpOptions, http_client},
};

/// Largest response body read (partial-success messages, errors).
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid otlp_header {0:?}: {1}")]
    Header(String, String),
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Host facts learnt from enrichment (the local side of flows): they go into the resource and
/// stay there once known, so that one host is one resource.
#[derive(Clone, Debug, Default, PartialEq)]
struct HostFacts {
    region: Option<String>,
    az: Option<String>,
    instance_id: Option<String>,
}

impl HostFacts {
    fn learn(&mut self, r: &Report) {
        for f in &r.flows {
            let e = &f.enrichment;
            for (mine, theirs) in [
                (&mut self.region, &e.local_region),
                (&mut self.az, &e.local_az),
                (&mut self.instance_id, &e.local_instance_id),
            ] {
                if let Some(v) = theirs.as_ref().filter(|v| !v.is_empty()) {
                    *mine = Some(v.clone());
                }
            }
        }
    }
}

pub struct Otlp {
    client: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    gzip: bool,
    host: Mutex<HostFacts>,
}

impl Otlp {
    /// `headers`: "Name=value" pairs sent with every request (e.g. an API key).
    pub fn new(endpoint: &str, headers: &[String], gzip: bool, http: &HttpOptions) -> Result<Otlp, OtlpError> {
        let mut map = HeaderMap::new();
        for h in headers {
            let (k, v) = h.split_once('=').ok_or_else(|| OtlpError::Header(h.clone(), "expected NAME=VALUE".into()))?;
            let name =
                HeaderName::from_bytes(k.trim().as_bytes()).map_err(|e| OtlpError::Header(h.clone(), e.to_string()))?;
            let value = HeaderValue::from_str(v.trim()).map_err(|e| OtlpError::Header(h.clone(), e.to_string()))?;
            map.append(name, value);
        }
        Ok(Otlp {
            client: http_client(http)?,
            endpoint: endpoint.to_string(),
            headers: map,
            gzip,
            host: Mutex::new(HostFacts::default()),
        })
    }

    async fn send(&self, report: &Report) -> Result<(), DeliveryError> {
        let host = {
            let mut h = self.host.lock().unwrap_or_else(|e| e.into_inner());
            h.learn(report);
            h.clone()
        };
        // Encoding a window of many flows takes milliseconds: off the agent's runtime thread.
        let (r, gz) = (report.clone(), self.gzip);
        let body = tokio::task::spawn_blocking(move || {
            let body = encode(&r, &host).encode_to_vec();
            if gz { gzip(&body) } else { body }
        })
        .await
        .map_err(|e| DeliveryError::Retry { reason: format!("encoding the report: {e}"), retry_after: None })?;
        let mut req = self.client.post(&self.endpoint).headers(self.headers.clone());
        req = req.header(CONTENT_TYPE, "application/x-protobuf");
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retry { reason: format!("POST {}: {e}", self.endpoint), retry_after: None })?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_capped(resp).await;
        if !(200..300).contains(&status) {
            let text = describe_error(&body);
            return Err(DeliveryError::from_status(status, retry_after.as_deref(), &text));
        }
        // Partial success: the rest was accepted and the rejected points would be rejected again.
        if let Ok(r) = ExportMetricsServiceResponse::decode(body.as_slice())
            && let Some(p) = r.partial_success
            && (p.rejected_data_points > 0 || !p.error_message.is_empty())
        {
            tracing::warn!(
                sink = "otlp",
                "report {}: {} data points rejected: {}",
                report.report_id,
                p.rejected_data_points,
                p.error_message
            );
        }
        Ok(())
    }
}

impl Destination for Otlp {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn deliver<'a>(&'a self, report: &'a Report) -> DeliveryFuture<'a> {
        Box::pin(self.send(report))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The response body, at most `MAX_RESPONSE` bytes of it.
async fn read_capped(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_RESPONSE - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_RESPONSE {
            break;
        }
    }
    out
}

/// An OTLP error body is a google.rpc.Status (message in field 2); otherwise show the text.
fn describe_error(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    match Status::decode(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// Builds the metrics of one report: one series per (metric, attribute set).
struct Builder {
    start: u64,
    end: u64,
    bounds: Vec<f64>,
    metrics: Vec<Metric>,
}

impl Builder {
    fn metric(&mut self, name: &str, unit: &str, help: &str) -> &mut Metric {
        if let Some(i) = self.metrics.iter().position(|m| m.name == name) {
            return &mut self.metrics[i];
        }
        self.metrics.push(Metric {
            name: name.to_string(),
            unit: unit.to_string(),
            description: help.to_string(),
            ..Default::default()
        });
        self.metrics.last_mut().expect("just pushed")
    }

    fn point(&self, attrs: &[KeyValue], v: number_data_point::Value, start: u64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs.to_vec(),
            start_time_unix_nano: start,
            time_unix_nano: self.end,
            value: Some(v),
            ..Default::default()
        }
    }

    /// A delta, monotonic Sum point over the window.
    fn sum(&mut self, name: &str, unit: &str, help: &str, attrs: &[KeyValue], v: number_data_point::Value) {
        let p = self.point(attrs, v, self.start);
        let m = self.metric(name, unit, help);
        match &mut m.data {
            Some(metric::Data::Sum(s)) => s.data_points.push(p),
            _ => {
                m.data = Some(metric::Data::Sum(Sum {
                    data_points: vec![p],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                }))
            }
        }
    }

    fn gauge(&mut self, name: &str, unit: &str, help: &str, attrs: &[KeyValue], v: number_data_point::Value) {
        let p = self.point(attrs, v, 0);
        let m = self.metric(name, unit, help);
        match &mut m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.push(p),
            _ => m.data = Some(metric::Data::Gauge(Gauge { data_points: vec![p] })),
        }
    }

    fn flow(&mut self, attrs: &[KeyValue], m: &FlowMetrics) {
        use number_data_point::Value::AsInt;
        for c in FLOW_COUNTERS {
            self.sum(c.otlp, c.unit, c.help, attrs, AsInt((c.get)(m).min(i64::MAX as u64) as i64));
        }
        self.gauge(
            ACTIVE.0,
            "{connection}",
            "Established connections open at window end",
            attrs,
            AsInt(m.connections.active.min(i64::MAX as u64) as i64),
        );
        for (name, _, of) in LATENCIES {
            let l = of(m);
            if l.count == 0 {
                continue;
            }
            let mut p = HistogramDataPoint {
                attributes: attrs.to_vec(),
                start_time_unix_nano: self.start,
                time_unix_nano: self.end,
                count: l.count,
                sum: Some(sum_seconds(l)),
                min: Some(l.min as f64 / 1e6),
                max: Some(l.max as f64 / 1e6),
                ..Default::default()
            };
            match kernel_buckets(l) {
                Some(counts) => {
                    p.bucket_counts = counts;
                    p.explicit_bounds = self.bounds.clone();
                }
                // No buckets (an older agent's report): one bucket holding everything.
                None => p.bucket_counts = vec![l.count],
            }
            let help = "Latency of the flow's samples (kernel log-linear buckets)";
            let m = self.metric(name, "s", help);
            match &mut m.data {
                Some(metric::Data::Histogram(h)) => h.data_points.push(p),
                _ => {
                    m.data = Some(metric::Data::Histogram(Histogram {
                        data_points: vec![p],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                    }))
                }
            }
        }
    }
}

/// The OTLP request for one report.
fn encode(r: &Report, host: &HostFacts) -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let mut resource = vec![
        kv("service.name", "flow-agent"),
        kv("service.version", r.agent.version.clone()),
        kv("host.name", r.agent.hostname.clone()),
    ];
    if host.region.is_some() || host.az.is_some() || host.instance_id.is_some() {
        resource.push(kv("cloud.provider", "aws"));
    }
    for (k, v) in
        [("cloud.region", &host.region), ("cloud.availability_zone", &host.az), ("host.id", &host.instance_id)]
    {
        if let Some(v) = v {
            resource.push(kv(k, v.clone()));
        }
    }
    let mut b = Builder {
        start: nanos(r.window.start),
        end: nanos(r.window.end),
        bounds: kernel_bounds_seconds(),
        metrics: Vec::new(),
    };
    for f in &r.flows {
        let attrs: Vec<KeyValue> = flow_labels(f).into_iter().map(|(k, v)| kv(k, v)).collect();
        b.flow(&attrs, &f.metrics);
    }
    let other = [kv(OTHER_LABEL.0, OTHER_LABEL.1)];
    b.flow(&other, &r.other.metrics);
    b.gauge(
        OTHER_FLOWS.0,
        "{flow}",
        "Flows summed into the other series in the window",
        &other,
        AsInt(r.other.flows.min(i64::MAX as u64) as i64),
    );
    let s = &r.agent_stats;
    for (name, _, v) in agent_counters(s) {
        let unit = if name.ends_with("cpu.time") { "s" } else { "1" };
        b.sum(name, unit, "flow-agent's own counter over the window", &[], AsDouble(v));
    }
    for (name, _, unit, v) in agent_gauges(s) {
        b.gauge(name, unit, "flow-agent's own gauge at window end", &[], AsDouble(v));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "flow-agent".into(),
                    version: r.agent.version.clone(),
                    ..Default::default()
                }),
                metrics: b.metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::report::{
        AgentInfo, AgentStats, Enrichment, FlowRecord, LatencyBucket, LatencySummary, OtherFlows, Protocol, Role,
        Window,
    };

    fn report() -> Report {
        let rtt = LatencySummary {
            count: 3,
            min: 100,
            max: 300,
            mean: 200.0,
            p50: 200,
            p90: 300,
            p99: 300,
            buckets: vec![LatencyBucket { le: Some(111), count: 1 }, LatencyBucket { le: Some(319), count: 2 }],
        };
        Report {
            report_id: "r1".into(),
            schema_version: 1,
            window: Window {
                start: "2026-11-22T10:00:00Z".parse().unwrap(),
                end: "2026-11-22T10:00:30Z".parse().unwrap(),
            },
            agent: AgentInfo { version: "0.1.0".into(), hostname: "h1".into() },
            flows: vec![FlowRecord {
                protocol: Protocol::Tcp,
                local_ip: "10.0.0.1".parse().unwrap(),
                remote_ip: "10.0.0.2".parse().unwrap(),
                target_port: 443,
                role: Role::Client,
                enrichment: Enrichment { local_region: Some("us-east-1".into()), ..Default::default() },
                metrics: FlowMetrics { bytes_sent: 1234, rtt_us: rtt, ..Default::default() },
            }],
            other: OtherFlows { flows: 2, metrics: FlowMetrics { bytes_sent: 5, ..Default::default() } },
            agent_stats: AgentStats { events: 9, ..Default::default() },
        }
    }

    fn attr<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a str> {
        attrs.iter().find(|a| a.key == k).and_then(|a| match &a.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn encodes_flows_other_and_stats_as_delta_metrics() {
        let r = report();
        let mut host = HostFacts::default();
        host.learn(&r);
        let bytes = encode(&r, &host).encode_to_vec();
        let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(res, "service.name"), Some("flow-agent"));
        assert_eq!(attr(res, "host.name"), Some("h1"));
        assert_eq!(attr(res, "cloud.region"), Some("us-east-1"));
        let metrics = &rm.scope_metrics[0].metrics;
        let m = |n: &str| metrics.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("no metric {n}"));
        let Some(metric::Data::Sum(s)) = &m("flow.bytes.sent").data else { panic!("not a sum") };
        assert_eq!(s.aggregation_temporality, AggregationTemporality::Delta as i32);
        assert!(s.is_monotonic);
        assert_eq!(s.data_points.len(), 2);
        let flow = &s.data_points[0];
        assert_eq!(attr(&flow.attributes, "remote_ip"), Some("10.0.0.2"));
        assert_eq!(flow.value, Some(number_data_point::Value::AsInt(1234)));
        assert_eq!(flow.start_time_unix_nano, nanos(r.window.start));
        assert_eq!(flow.time_unix_nano, nanos(r.window.end));
        let other = &s.data_points[1];
        assert_eq!(attr(&other.attributes, "other"), Some("true"));
        assert_eq!(other.value, Some(number_data_point::Value::AsInt(5)));
        let Some(metric::Data::Histogram(h)) = &m("flow.rtt").data else { panic!("not a histogram") };
        assert_eq!(h.data_points.len(), 1, "no point for the other series without samples");
        let p = &h.data_points[0];
        assert_eq!(p.count, 3);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert!((p.sum.unwrap() - 0.0006).abs() < 1e-12);
        // The bucket holding 111 us is the one whose bound is 111 us.
        let i = p.explicit_bounds.iter().position(|b| (b - 111e-6).abs() < 1e-12).unwrap();
        assert_eq!(p.bucket_counts[i], 1);
        let Some(metric::Data::Sum(ev)) = &m("flow_agent.events").data else { panic!() };
        assert_eq!(ev.data_points[0].value, Some(number_data_point::Value::AsDouble(9.0)));
    }

    #[test]
    fn host_facts_stick_once_learnt() {
        let mut host = HostFacts::default();
        host.learn(&report());
        let mut r = report();
        r.flows.clear();
        host.learn(&r);
        assert_eq!(host.region.as_deref(), Some("us-east-1"));
    }

    #[test]
    fn bad_headers_are_named() {
        let http = HttpOptions { timeout: std::time::Duration::from_secs(1), proxy: None };
        let e = Otlp::new("http://x/v1/metrics", &["nope".into()], true, &http).err().unwrap().to_string();
        assert!(e.contains("otlp_header") && e.contains("nope"), "{e}");
        let e = Otlp::new("http://x/v1/metrics", &["bad name=v".into()], true, &http).err().unwrap().to_string();
        assert!(e.contains("bad name"), "{e}");
    }
}
