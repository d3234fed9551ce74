//! Input validation exactly as the API reference states it (lengths, patterns, enums, ranges,
//! required members). Every failure is a ValidationException naming the member and the rule.

use chrono::{DateTime, TimeZone, Utc};

use crate::errors::{ApiError, ApiResult};
use crate::model::{
    AWS_SERVICES, DESTINATION_CATEGORIES, LOCAL_RESOURCE_TYPES, MONITOR_STATUSES, Metric, REMOTE_RESOURCE_TYPES,
    Resource, Tags, TargetResource,
};

fn bad(msg: String) -> ApiError {
    ApiError::Validation(msg)
}

pub fn required<T>(field: &str, v: Option<T>) -> ApiResult<T> {
    v.ok_or_else(|| bad(format!("{field} is required")))
}

/// `ResourceName`: length 1..=255, pattern `[a-zA-Z0-9_.-]+`.
pub fn resource_name(field: &str, s: &str) -> ApiResult<()> {
    let n = s.chars().count();
    if !(1..=255).contains(&n) {
        return Err(bad(format!("{field} must be 1 to 255 characters long, got {n}")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(bad(format!("{field} must match [a-zA-Z0-9_.-]+; '{c}' is not allowed")));
    }
    Ok(())
}

/// `Arn` (20..=2048) or `MonitorArn` (20..=512): pattern `arn:.*`.
pub fn arn(field: &str, s: &str, max: usize) -> ApiResult<()> {
    let n = s.chars().count();
    if n < 20 || n > max {
        return Err(bad(format!("{field} must be 20 to {max} characters long, got {n}")));
    }
    if !s.starts_with("arn:") {
        return Err(bad(format!("{field} must match the pattern arn:.*")));
    }
    Ok(())
}

/// `UuidString`: fixed length 36, `[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}`.
pub fn client_token(s: &str) -> ApiResult<()> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_digit() || ('a'..='f').contains(&c) }
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "clientToken must be 36 characters matching [a-f0-9]{{8}}-[a-f0-9]{{4}}-[a-f0-9]{{4}}-[a-f0-9]{{4}}-[a-f0-9]{{12}}, got '{s}'"
        )))
    }
}

/// `TagMap`: at most 200 entries, keys 1..=128, values 0..=256 characters.
pub fn tags(field: &str, t: &Tags) -> ApiResult<()> {
    if t.len() > 200 {
        return Err(bad(format!("{field} may hold at most 200 tags, got {}", t.len())));
    }
    for (k, v) in t {
        tag_key(k)?;
        let n = v.chars().count();
        if n > 256 {
            return Err(bad(format!("the value of tag '{k}' must be at most 256 characters, got {n}")));
        }
    }
    Ok(())
}

pub fn tag_key(k: &str) -> ApiResult<()> {
    let n = k.chars().count();
    if !(1..=128).contains(&n) {
        return Err(bad(format!("tag keys must be 1 to 128 characters long, got {n} ('{k}')")));
    }
    Ok(())
}

/// `AccountId`: length 1..=12, pattern `[0-9]{12}`.
pub fn account_id(s: &str) -> ApiResult<()> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(bad(format!("accountId must be 12 digits ([0-9]{{12}}), got '{s}'")))
    }
}

pub fn target_resources(field: &str, targets: &[TargetResource], min: usize, max: usize) -> ApiResult<()> {
    if targets.len() < min || targets.len() > max {
        return Err(bad(format!("{field} must hold {min} to {max} items, got {}", targets.len())));
    }
    for t in targets {
        if t.target_identifier.target_type != "ACCOUNT" {
            return Err(bad(format!("targetType must be one of [ACCOUNT], got '{}'", t.target_identifier.target_type)));
        }
        account_id(&t.target_identifier.target_id.account_id)?;
        if t.region.is_empty() {
            return Err(bad(format!("{field}: region must not be empty")));
        }
    }
    Ok(())
}

pub fn local_resources(field: &str, rs: &[Resource]) -> ApiResult<()> {
    resources(field, rs, &LOCAL_RESOURCE_TYPES)
}

pub fn remote_resources(field: &str, rs: &[Resource]) -> ApiResult<()> {
    resources(field, rs, &REMOTE_RESOURCE_TYPES)?;
    for r in rs {
        if r.kind == "AWS::AWSService" && !AWS_SERVICES.contains(&r.identifier.as_str()) {
            return Err(bad(format!(
                "{field}: an AWS::AWSService identifier must be one of {AWS_SERVICES:?}, got '{}'",
                r.identifier
            )));
        }
    }
    Ok(())
}

fn resources(field: &str, rs: &[Resource], types: &[&str]) -> ApiResult<()> {
    for r in rs {
        if !types.contains(&r.kind.as_str()) {
            return Err(bad(format!("{field}: type must be one of {types:?}, got '{}'", r.kind)));
        }
        if r.identifier.is_empty() {
            return Err(bad(format!("{field}: identifier of a {} must not be empty", r.kind)));
        }
    }
    Ok(())
}

/// The Region a resource lies in, when its identifier says: a Region name, an AZ name
/// (`us-west-2b`), or a VPC/subnet/cluster ARN. None for AWS services and AZ ids.
pub fn resource_region(r: &Resource) -> Option<String> {
    match r.kind.as_str() {
        "AWS::Region" => Some(r.identifier.clone()),
        "AWS::AvailabilityZone" => {
            let region = r.identifier.trim_end_matches(|c: char| c.is_ascii_lowercase());
            (region.len() < r.identifier.len() && region.ends_with(|c: char| c.is_ascii_digit()))
                .then(|| region.to_string())
        }
        "AWS::AWSService" => None,
        _ => r
            .identifier
            .strip_prefix("arn:")
            .and_then(|a| a.split(':').nth(2))
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    }
}

/// The Region rules of CreateMonitor: local resources in the current Region; remote resources
/// all in one Region; with AWS services, the others in the current Region; a remote resource
/// in another Region only as an `AWS::Region`.
pub fn resource_regions(local: &[Resource], remote: &[Resource], current: &str) -> ApiResult<()> {
    for r in local {
        if let Some(region) = resource_region(r)
            && region != current
        {
            return Err(bad(format!(
                "local resources must belong to the current Region ({current}); {} {} is in {region}",
                r.kind, r.identifier
            )));
        }
    }
    let mut regions: Vec<String> = remote.iter().filter_map(resource_region).collect();
    regions.sort();
    regions.dedup();
    if regions.len() > 1 {
        return Err(bad(format!("remote resources must all belong to a single Region; got {regions:?}")));
    }
    let has_service = remote.iter().any(|r| r.kind == "AWS::AWSService");
    for r in remote {
        let Some(region) = resource_region(r) else { continue };
        if region == current {
            continue;
        }
        if has_service {
            return Err(bad(format!(
                "with AWS services as remote resources, the other remote resources must be in the current Region ({current}); {} is in {region}",
                r.identifier
            )));
        }
        if r.kind != "AWS::Region" {
            return Err(bad(format!(
                "a remote resource in another Region ({region}) can only be of type AWS::Region, not {}",
                r.kind
            )));
        }
    }
    Ok(())
}

pub fn monitor_status(s: &str) -> ApiResult<()> {
    one_of("monitorStatus", s, &MONITOR_STATUSES)
}

pub fn destination_category(s: &str) -> ApiResult<()> {
    one_of("destinationCategory", s, &DESTINATION_CATEGORIES)
}

fn one_of(field: &str, s: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&s) { Ok(()) } else { Err(bad(format!("{field} must be one of {allowed:?}, got '{s}'"))) }
}

/// `MonitorMetric` (all four) or `WorkloadInsightsMetric` (no ROUND_TRIP_TIME).
pub fn metric(s: &str, workload_insights: bool) -> ApiResult<Metric> {
    let allowed: &[&str] = if workload_insights {
        &["TIMEOUTS", "RETRANSMISSIONS", "DATA_TRANSFERRED"]
    } else {
        &["ROUND_TRIP_TIME", "TIMEOUTS", "RETRANSMISSIONS", "DATA_TRANSFERRED"]
    };
    one_of("metricName", s, allowed)?;
    Metric::parse(s).ok_or_else(|| bad(format!("metricName '{s}' is not known")))
}

/// `Limit`: 1..=500.
pub fn limit(v: i64) -> ApiResult<u32> {
    range("limit", v, 1, 500).map(|v| v as u32)
}

/// `MaxResults` of the List actions: 1..=25.
pub fn list_max_results(v: i64) -> ApiResult<u32> {
    range("maxResults", v, 1, 25).map(|v| v as u32)
}

pub fn range(field: &str, v: i64, min: i64, max: i64) -> ApiResult<i64> {
    if v < min || v > max {
        return Err(bad(format!("{field} must be between {min} and {max}, got {v}")));
    }
    Ok(v)
}

pub fn parse_int(field: &str, s: &str) -> ApiResult<i64> {
    s.parse::<i64>().map_err(|_| bad(format!("{field} must be an integer, got '{s}'")))
}

/// A timestamp member: ISO 8601 (what the SDKs send for `timestampFormat: iso8601`) or epoch
/// seconds.
pub fn timestamp(field: &str, v: &serde_json::Value) -> ApiResult<DateTime<Utc>> {
    let parsed = match v {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => n.as_f64().and_then(|f| {
            let ms = (f * 1000.0).round();
            if ms.is_finite() && ms.abs() < 1e15 { Utc.timestamp_millis_opt(ms as i64).single() } else { None }
        }),
        _ => None,
    };
    parsed.ok_or_else(|| bad(format!("{field} must be an ISO 8601 timestamp (e.g. 2025-01-01T00:00:00Z), got {v}")))
}

/// startTime < endTime.
pub fn time_range(start: DateTime<Utc>, end: DateTime<Utc>) -> ApiResult<()> {
    if start >= end {
        return Err(bad(format!("startTime ({start}) must be before endTime ({end})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_pattern_and_length() {
        assert!(resource_name("monitorName", "web_tier-1.prod").is_ok());
        assert!(resource_name("monitorName", "").is_err());
        assert!(resource_name("monitorName", &"a".repeat(256)).is_err());
        assert!(resource_name("monitorName", &"a".repeat(255)).is_ok());
        let e = resource_name("monitorName", "bad name").unwrap_err().to_string();
        assert!(e.contains("monitorName") && e.contains("' '"), "{e}");
    }

    #[test]
    fn client_tokens_are_lowercase_uuids() {
        assert!(client_token("0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        assert!(client_token("0F8FAD5B-D9CB-469F-A165-70867728950E").is_err());
        assert!(client_token("0f8fad5b-d9cb-469f-a165-70867728950").is_err());
        assert!(client_token("0f8fad5bxd9cb-469f-a165-70867728950e").is_err());
    }

    #[test]
    fn arns_limits_and_metrics() {
        assert!(arn("scopeArn", "arn:aws:networkflowmonitor:us-east-1:123456789012:scope/x", 2048).is_ok());
        assert!(arn("scopeArn", "arn:short", 2048).is_err());
        assert!(arn("scopeArn", "xrn:aws:networkflowmonitor:us-east-1:1", 2048).is_err());
        assert_eq!(limit(1).unwrap(), 1);
        assert_eq!(limit(500).unwrap(), 500);
        assert!(limit(0).is_err() && limit(501).is_err());
        assert!(list_max_results(26).is_err());
        assert!(metric("ROUND_TRIP_TIME", true).is_err());
        assert_eq!(metric("ROUND_TRIP_TIME", false).unwrap(), Metric::RoundTripTime);
        assert!(destination_category("INTRA_AZ").is_ok() && destination_category("intra_az").is_err());
        assert!(account_id("123456789012").is_ok() && account_id("12345678901a").is_err());
    }

    #[test]
    fn region_rules_of_create_monitor() {
        let r = |k: &str, i: &str| Resource { kind: k.into(), identifier: i.into() };
        let vpc = r("AWS::EC2::VPC", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1");
        assert_eq!(resource_region(&r("AWS::AvailabilityZone", "us-west-2b")).as_deref(), Some("us-west-2"));
        assert_eq!(resource_region(&r("AWS::AvailabilityZone", "usw2-az1")), None);
        assert_eq!(resource_region(&vpc).as_deref(), Some("us-east-1"));
        assert!(resource_regions(std::slice::from_ref(&vpc), &[], "us-east-1").is_ok());
        assert!(resource_regions(std::slice::from_ref(&vpc), &[], "eu-west-1").is_err());
        let remote_region = r("AWS::Region", "eu-west-1");
        assert!(resource_regions(&[], std::slice::from_ref(&remote_region), "us-east-1").is_ok());
        assert!(resource_regions(&[], &[r("AWS::AvailabilityZone", "eu-west-1a")], "us-east-1").is_err());
        assert!(resource_regions(&[], &[remote_region.clone(), r("AWS::Region", "eu-west-2")], "us-east-1").is_err());
        assert!(resource_regions(&[], &[remote_region, r("AWS::AWSService", "S3")], "us-east-1").is_err());
        assert!(
            resource_regions(&[], &[r("AWS::AWSService", "S3"), r("AWS::AvailabilityZone", "us-east-1b")], "us-east-1")
                .is_ok()
        );
    }

    #[test]
    fn tags_are_bounded() {
        let mut t = Tags::new();
        t.insert("k".into(), "v".repeat(256));
        assert!(tags("tags", &t).is_ok());
        t.insert("k2".into(), "v".repeat(257));
        assert!(tags("tags", &t).is_err());
        let many: Tags = (0..201).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(tags("tags", &many).is_err());
        assert!(tag_key("").is_err());
    }

    #[test]
    fn timestamps_accept_iso8601_and_epoch() {
        let t = timestamp("startTime", &serde_json::json!("2026-11-22T10:00:00Z")).unwrap();
        assert_eq!(t.timestamp(), 1795341600);
        let t2 = timestamp("startTime", &serde_json::json!(1795341600)).unwrap();
        assert_eq!(t, t2);
        assert!(timestamp("startTime", &serde_json::json!("yesterday")).is_err());
        assert!(time_range(t, t).is_err());
    }
}
