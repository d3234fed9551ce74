//! Flow-log record fields: their names and versions, as VPC flow logs define them, and the
//! `--flow-log-format` syntax (`${field-id}` separated by spaces).

use std::fmt;

/// Every field a VPC flow log record can hold. Fields the agent cannot know print `-`, as flow
/// logs do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Version,
    AccountId,
    InterfaceId,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
    VpcId,
    SubnetId,
    InstanceId,
    TcpFlags,
    Type,
    PktSrcAddr,
    PktDstAddr,
    Region,
    AzId,
    SublocationType,
    SublocationId,
    PktSrcAwsService,
    PktDstAwsService,
    FlowDirection,
    TrafficPath,
    EcsClusterArn,
    EcsClusterName,
    EcsContainerInstanceArn,
    EcsContainerInstanceId,
    EcsContainerId,
    EcsSecondContainerId,
    EcsServiceName,
    EcsTaskDefinitionArn,
    EcsTaskArn,
    EcsTaskId,
    RejectReason,
}

/// (field, name, the flow-log version that introduced it).
const FIELDS: &[(Field, &str, u8)] = &[
    (Field::Version, "version", 2),
    (Field::AccountId, "account-id", 2),
    (Field::InterfaceId, "interface-id", 2),
    (Field::SrcAddr, "srcaddr", 2),
    (Field::DstAddr, "dstaddr", 2),
    (Field::SrcPort, "srcport", 2),
    (Field::DstPort, "dstport", 2),
    (Field::Protocol, "protocol", 2),
    (Field::Packets, "packets", 2),
    (Field::Bytes, "bytes", 2),
    (Field::Start, "start", 2),
    (Field::End, "end", 2),
    (Field::Action, "action", 2),
    (Field::LogStatus, "log-status", 2),
    (Field::VpcId, "vpc-id", 3),
    (Field::SubnetId, "subnet-id", 3),
    (Field::InstanceId, "instance-id", 3),
    (Field::TcpFlags, "tcp-flags", 3),
    (Field::Type, "type", 3),
    (Field::PktSrcAddr, "pkt-srcaddr", 3),
    (Field::PktDstAddr, "pkt-dstaddr", 3),
    (Field::Region, "region", 4),
    (Field::AzId, "az-id", 4),
    (Field::SublocationType, "sublocation-type", 4),
    (Field::SublocationId, "sublocation-id", 4),
    (Field::PktSrcAwsService, "pkt-src-aws-service", 5),
    (Field::PktDstAwsService, "pkt-dst-aws-service", 5),
    (Field::FlowDirection, "flow-direction", 5),
    (Field::TrafficPath, "traffic-path", 5),
    (Field::EcsClusterArn, "ecs-cluster-arn", 7),
    (Field::EcsClusterName, "ecs-cluster-name", 7),
    (Field::EcsContainerInstanceArn, "ecs-container-instance-arn", 7),
    (Field::EcsContainerInstanceId, "ecs-container-instance-id", 7),
    (Field::EcsContainerId, "ecs-container-id", 7),
    (Field::EcsSecondContainerId, "ecs-second-container-id", 7),
    (Field::EcsServiceName, "ecs-service-name", 7),
    (Field::EcsTaskDefinitionArn, "ecs-task-definition-arn", 7),
    (Field::EcsTaskArn, "ecs-task-arn", 7),
    (Field::EcsTaskId, "ecs-task-id", 7),
    (Field::RejectReason, "reject-reason", 8),
];

/// The default format: the version 2 fields, in flow logs' order.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} \
                                  ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

impl Field {
    fn entry(self) -> &'static (Field, &'static str, u8) {
        FIELDS.iter().find(|(f, _, _)| *f == self).expect("every field is in FIELDS")
    }

    pub fn name(self) -> &'static str {
        self.entry().1
    }

    pub fn version(self) -> u8 {
        self.entry().2
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed `--flow-log-format`: the fields in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Default for Format {
    fn default() -> Self {
        Format::parse(DEFAULT_FORMAT).expect("the default format parses")
    }
}

impl Format {
    /// Parse `${field-id} ${field-id} ...`. Unknown fields are rejected with the valid list.
    pub fn parse(s: &str) -> Result<Format, String> {
        let mut fields = Vec::new();
        for token in s.split_whitespace() {
            let name = token.strip_prefix("${").and_then(|t| t.strip_suffix('}')).ok_or_else(|| {
                format!("{token:?} is not a field: write each field as ${{field-id}}, separated by spaces")
            })?;
            let field = FIELDS.iter().find(|(_, n, _)| *n == name).map(|(f, _, _)| *f).ok_or_else(|| {
                let valid: Vec<&str> = FIELDS.iter().map(|(_, n, _)| *n).collect();
                format!("unknown field {name:?}; valid fields: {}", valid.join(", "))
            })?;
            fields.push(field);
        }
        if fields.is_empty() {
            return Err("the format is empty: it must name at least one field, e.g. \"${srcaddr} ${dstaddr}\"".into());
        }
        Ok(Format { fields })
    }

    /// `${version}` of a record: 2 for the default format, else the highest version among the
    /// fields given (as flow logs define it).
    pub fn version(&self) -> u8 {
        self.fields.iter().map(|f| f.version()).max().unwrap_or(2)
    }

    /// The header line of a log file: the field names, space separated.
    pub fn header(&self) -> String {
        self.fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.fields.iter().map(|x| format!("${{{x}}}")).collect();
        f.write_str(&s.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_version_2() {
        let f = Format::default();
        assert_eq!(f.fields.len(), 14);
        assert_eq!(f.version(), 2);
        assert_eq!(f.to_string(), DEFAULT_FORMAT.split_whitespace().collect::<Vec<_>>().join(" "));
        assert!(f.header().starts_with("version account-id interface-id srcaddr"));
    }

    #[test]
    fn custom_formats_keep_order_and_version() {
        let f = Format::parse("${flow-direction}  ${srcaddr} ${pkt-dstaddr}").unwrap();
        assert_eq!(f.fields, vec![Field::FlowDirection, Field::SrcAddr, Field::PktDstAddr]);
        assert_eq!(f.version(), 5);
        assert_eq!(Format::parse("${vpc-id}").unwrap().version(), 3);
    }

    #[test]
    fn bad_formats_name_the_problem() {
        let e = Format::parse("${srcaddr} ${colour}").unwrap_err();
        assert!(e.contains("\"colour\"") && e.contains("valid fields: version, account-id"), "{e}");
        assert!(e.contains("flow-direction"), "{e}");
        assert!(Format::parse("   ").unwrap_err().contains("empty"));
        let e = Format::parse("srcaddr").unwrap_err();
        assert!(e.contains("${field-id}"), "{e}");
    }
}
