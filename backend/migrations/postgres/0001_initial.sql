-- Version 1: reports, flows, scopes, monitors, queries.
CREATE TABLE reports (
    report_id TEXT PRIMARY KEY,
    received_at_ms BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    hostname TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    flow_count BIGINT NOT NULL,
    other_json TEXT NOT NULL,
    agent_stats_json TEXT NOT NULL
);

-- One row per flow record of a report. Times are epoch seconds; destination_category is
-- UNCLASSIFIED when the agent did not classify the flow.
CREATE TABLE flows (
    report_id TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    hostname TEXT NOT NULL,
    protocol TEXT NOT NULL,
    role TEXT NOT NULL,
    local_ip TEXT NOT NULL,
    remote_ip TEXT NOT NULL,
    target_port BIGINT NOT NULL,
    destination_category TEXT NOT NULL,
    local_instance_id TEXT,
    local_instance_arn TEXT,
    local_subnet_id TEXT,
    local_subnet_arn TEXT,
    local_vpc_id TEXT,
    local_vpc_arn TEXT,
    local_az TEXT,
    local_region TEXT,
    remote_instance_id TEXT,
    remote_instance_arn TEXT,
    remote_subnet_id TEXT,
    remote_subnet_arn TEXT,
    remote_vpc_id TEXT,
    remote_vpc_arn TEXT,
    remote_az TEXT,
    remote_region TEXT,
    snat_ip TEXT,
    dnat_ip TEXT,
    k8s_local_pod_name TEXT,
    k8s_local_pod_namespace TEXT,
    k8s_local_service_name TEXT,
    k8s_remote_pod_name TEXT,
    k8s_remote_pod_namespace TEXT,
    k8s_remote_service_name TEXT,
    conn_attempted BIGINT NOT NULL,
    conn_established BIGINT NOT NULL,
    conn_closed BIGINT NOT NULL,
    conn_failed BIGINT NOT NULL,
    conn_refused BIGINT NOT NULL,
    conn_timed_out BIGINT NOT NULL,
    conn_reset BIGINT NOT NULL,
    conn_active BIGINT NOT NULL,
    bytes_sent BIGINT NOT NULL,
    bytes_received BIGINT NOT NULL,
    segments_sent BIGINT NOT NULL,
    segments_received BIGINT NOT NULL,
    retransmissions BIGINT NOT NULL,
    timeouts BIGINT NOT NULL,
    rtt_count BIGINT NOT NULL,
    rtt_min BIGINT NOT NULL,
    rtt_max BIGINT NOT NULL,
    rtt_mean DOUBLE PRECISION NOT NULL,
    rtt_p50 BIGINT NOT NULL,
    rtt_p90 BIGINT NOT NULL,
    rtt_p99 BIGINT NOT NULL,
    hs_count BIGINT NOT NULL,
    hs_min BIGINT NOT NULL,
    hs_max BIGINT NOT NULL,
    hs_mean DOUBLE PRECISION NOT NULL,
    hs_p50 BIGINT NOT NULL,
    hs_p90 BIGINT NOT NULL,
    hs_p99 BIGINT NOT NULL
);
CREATE INDEX flows_window_category ON flows (window_start, destination_category);
CREATE INDEX flows_report ON flows (report_id);

CREATE TABLE scopes (
    scope_id TEXT PRIMARY KEY,
    scope_arn TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    targets_json TEXT NOT NULL,
    tags_json TEXT NOT NULL,
    client_token TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    status_changed_at_ms BIGINT NOT NULL
);

CREATE TABLE monitors (
    monitor_name TEXT PRIMARY KEY,
    monitor_arn TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    scope_arn TEXT NOT NULL,
    local_json TEXT NOT NULL,
    remote_json TEXT NOT NULL,
    tags_json TEXT NOT NULL,
    client_token TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    modified_at_ms BIGINT NOT NULL,
    status_changed_at_ms BIGINT NOT NULL
);

CREATE TABLE queries (
    query_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    params_json TEXT NOT NULL,
    unit TEXT,
    result_json TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX queries_owner ON queries (kind, owner);
