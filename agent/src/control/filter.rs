//! Flow filters of a flow operation, as Network Firewall spells them (`SourceAddress`,
//! `DestinationAddress`, `SourcePort`, `DestinationPort`, `Protocols`), checked and compiled into
//! matchers over the kernel's flow keys.
//!
//! A flow's source is the side that opened the connection, its destination the side that accepted
//! it, its destination port the target port. The source (ephemeral) port is not kept by the agent,
//! so a `SourcePort` filter narrower than all ports is rejected rather than silently matching
//! nothing.

use std::net::IpAddr;

use agent_common::maps::{FlowKey, PROTO_TCP, ROLE_SERVER};
use serde::{Deserialize, Serialize};

use crate::report::ip;

/// At most this many filters per operation.
pub const MAX_FILTERS: usize = 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AddressDefinition {
    pub address_definition: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FlowFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<AddressDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_address: Option<AddressDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
}

/// An address or CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        };
        let ((net, nlen), (host, hlen)) = (bits(self.addr), bits(ip));
        if nlen != hlen {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == host & mask
    }
}

fn parse_ports(setting: &str, s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{setting} {s:?} must be a port (0-65535) or a range \"FROM:TO\"");
    let (a, b) = match s.split_once([':', '-']) {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let (a, b) = (a.trim().parse::<u16>().map_err(|_| bad())?, b.trim().parse::<u16>().map_err(|_| bad())?);
    if a > b {
        return Err(format!("{setting} {s:?}: the range's start is above its end"));
    }
    Ok((a, b))
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "ICMP" => Ok(1),
        "ICMPV6" => Ok(58),
        n => n
            .parse::<u8>()
            .map_err(|_| format!("protocol {s:?} is not a protocol name (TCP, UDP, ICMP, ICMPv6) or number (0-255)")),
    }
}

/// A compiled filter: every condition given must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    source: Option<Cidr>,
    destination: Option<Cidr>,
    destination_ports: Option<(u16, u16)>,
    protocols: Vec<u8>,
}

impl Matcher {
    pub fn compile(f: &FlowFilter) -> Result<Matcher, String> {
        let cidr = |setting: &str, a: &Option<AddressDefinition>| {
            a.as_ref().map(|a| Cidr::parse(&a.address_definition).map_err(|e| format!("{setting}: {e}"))).transpose()
        };
        if let Some(sp) = &f.source_port
            && parse_ports("SourcePort", sp)? != (0, 65535)
        {
            return Err(format!(
                "SourcePort {sp:?}: the agent does not keep the connecting side's ephemeral port (flows are keyed \
                 by destination port); filter on DestinationPort, or give \"0:65535\""
            ));
        }
        Ok(Matcher {
            source: cidr("SourceAddress", &f.source_address)?,
            destination: cidr("DestinationAddress", &f.destination_address)?,
            destination_ports: f.destination_port.as_deref().map(|p| parse_ports("DestinationPort", p)).transpose()?,
            protocols: f.protocols.iter().map(|p| parse_protocol(p)).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, key: &FlowKey) -> bool {
        let v = FlowView::of(key);
        self.source.is_none_or(|c| c.contains(v.source))
            && self.destination.is_none_or(|c| c.contains(v.destination))
            && self.destination_ports.is_none_or(|(a, b)| (a..=b).contains(&v.destination_port))
            && (self.protocols.is_empty() || self.protocols.contains(&key.protocol))
    }
}

/// Check and compile the filters of a request (1 to 20; a filter with no condition matches all).
pub fn compile_all(filters: &[FlowFilter]) -> Result<Vec<Matcher>, String> {
    if filters.is_empty() {
        return Err("FlowFilters is empty: give 1 to 20 filters ({} matches every flow)".into());
    }
    if filters.len() > MAX_FILTERS {
        return Err(format!("FlowFilters has {} filters: at most {MAX_FILTERS} are allowed", filters.len()));
    }
    filters.iter().enumerate().map(|(i, f)| Matcher::compile(f).map_err(|e| format!("FlowFilters[{i}]: {e}"))).collect()
}

/// A flow key seen as a directed flow: source opened the connection.
pub struct FlowView {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub protocol: &'static str,
}

impl FlowView {
    pub fn of(key: &FlowKey) -> FlowView {
        let (local, remote) = (ip(&key.local_ip), ip(&key.remote_ip));
        let (source, destination) = if key.role == ROLE_SERVER { (remote, local) } else { (local, remote) };
        let protocol = if key.protocol == PROTO_TCP { "TCP" } else { "OTHER" };
        FlowView { source, destination, destination_port: key.target_port, protocol }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::maps::{ROLE_CLIENT, flow_key, v4_mapped};

    fn key(role: u8) -> FlowKey {
        let a = v4_mapped(u32::from_ne_bytes([10, 0, 0, 1]));
        let b = v4_mapped(u32::from_ne_bytes([10, 0, 1, 2]));
        // Client on a (port 40000) to b:443, seen from either side.
        if role == ROLE_CLIENT { flow_key(a, b, 40000, 443, role) } else { flow_key(b, a, 443, 40000, role) }
    }

    fn filter(json: &str) -> Result<Matcher, String> {
        Matcher::compile(&serde_json::from_str::<FlowFilter>(json).unwrap())
    }

    #[test]
    fn source_is_the_connecting_side_whichever_side_observed() {
        let m = filter(r#"{"SourceAddress":{"AddressDefinition":"10.0.0.0/24"},"DestinationPort":"400:500"}"#).unwrap();
        assert!(m.matches(&key(ROLE_CLIENT)) && m.matches(&key(ROLE_SERVER)));
        let m = filter(r#"{"DestinationAddress":{"AddressDefinition":"10.0.0.1"}}"#).unwrap();
        assert!(!m.matches(&key(ROLE_CLIENT)) && !m.matches(&key(ROLE_SERVER)));
        let m = filter(r#"{"DestinationAddress":{"AddressDefinition":"10.0.1.2/32"},"Protocols":["tcp"]}"#).unwrap();
        assert!(m.matches(&key(ROLE_CLIENT)));
        assert!(!filter(r#"{"Protocols":["UDP"]}"#).unwrap().matches(&key(ROLE_CLIENT)));
        assert!(!filter(r#"{"DestinationPort":"444"}"#).unwrap().matches(&key(ROLE_CLIENT)));
        assert!(!filter(r#"{"SourceAddress":{"AddressDefinition":"::/0"}}"#).unwrap().matches(&key(ROLE_CLIENT)));
        assert!(filter(r#"{"SourcePort":"0-65535"}"#).unwrap().matches(&key(ROLE_SERVER)));
        assert!(filter("{}").unwrap().matches(&key(ROLE_SERVER)));
    }

    #[test]
    fn bad_filters_name_the_problem() {
        let e = filter(r#"{"SourceAddress":{"AddressDefinition":"10.0.0.300"}}"#).unwrap_err();
        assert!(e.contains("SourceAddress") && e.contains("10.0.0.300"), "{e}");
        let e = filter(r#"{"DestinationAddress":{"AddressDefinition":"10.0.0.0/33"}}"#).unwrap_err();
        assert!(e.contains("0 to 32"), "{e}");
        assert!(filter(r#"{"DestinationPort":"90:80"}"#).unwrap_err().contains("start is above"));
        assert!(filter(r#"{"DestinationPort":"http"}"#).unwrap_err().contains("DestinationPort"));
        assert!(filter(r#"{"SourcePort":"5000"}"#).unwrap_err().contains("ephemeral"));
        assert!(filter(r#"{"Protocols":["SCTPX"]}"#).unwrap_err().contains("SCTPX"));
        assert!(compile_all(&[]).unwrap_err().contains("empty"));
        let e = compile_all(&vec![FlowFilter::default(); 21]).unwrap_err();
        assert!(e.contains("21") && e.contains("at most 20"), "{e}");
        let mut many = vec![FlowFilter::default(); 3];
        many[2].destination_port = Some("x".into());
        assert!(compile_all(&many).unwrap_err().starts_with("FlowFilters[2]: DestinationPort"));
    }
}
