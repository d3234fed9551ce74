#!/usr/bin/env python3
"""End-to-end test of flow-backend with the real AWS SDK for Python.

Drives a running server through boto3's `networkflowmonitor` client (endpoint_url set,
dummy credentials): scopes, monitors, report ingest over /publish, every query kind run to
completion and paged, tags, error types for bad input, the network health indicator, deletes.
Exits 0 only if every check passes.

    python3 backend/tests/e2e_boto3.py --endpoint http://127.0.0.1:8080 [--expect-auth]
"""

import argparse
import datetime as dt
import gzip
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "999988887777"
REGION = "us-east-1"
VPC_ID = "vpc-0e2e0e2e"
VPC_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/{VPC_ID}"
HOSTS = 12  # in VPC_ID; one more host lives in another account's VPC
FLOWS = 20
MINUTES = 70
DEGRADED_MINUTE = 65  # 8 of 12 hosts retransmit heavily
ONE_HOST_MINUTE = 60  # only host 0 does

CHECKS = 0


def check(cond, what):
    global CHECKS
    CHECKS += 1
    if not cond:
        raise AssertionError(what)


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"expected {code}, got {got}: {e}")
        check(e.response["Error"].get("Message"), f"{code} without a message")
        return e
    raise AssertionError(f"expected {code} from {getattr(fn, '__name__', fn)}, call succeeded")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- reports


def latency(count, mean):
    return {"count": count, "min": 1, "max": int(mean * 2), "mean": float(mean),
            "p50": int(mean), "p90": int(mean * 1.5), "p99": int(mean * 2)}


ZERO = {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0}


def flow_for(host, i, minute):
    """One flow of `host` in `minute`, enriched so monitors' resource filters match."""
    other = host == HOSTS
    acct = OTHER_ACCOUNT if other else ACCOUNT
    vpc = "vpc-0f0f0f0f" if other else VPC_ID
    subnet = f"subnet-0e2e00{host % 3:02d}" if not other else "subnet-0f0f0f01"
    cat = "AMAZON_S3" if i == FLOWS - 1 else ("INTRA_AZ" if i % 3 == 0 else "INTER_AZ")
    retx = (host * i) % 3
    if minute == DEGRADED_MINUTE and host < 8:
        retx = 200
    if minute == ONE_HOST_MINUTE and host == 0:
        retx = 500
    f = {
        "protocol": "TCP",
        "local_ip": f"10.0.{host}.1",
        "remote_ip": f"52.1.0.{i}" if cat == "AMAZON_S3" else f"10.1.0.{i}",
        "target_port": 443 if i % 2 else 5432,
        "role": "client",
        "local_instance_id": f"i-0e2e{host:012d}",
        "local_subnet_id": subnet,
        "local_subnet_arn": f"arn:aws:ec2:{REGION}:{acct}:subnet/{subnet}",
        "local_vpc_id": vpc,
        "local_vpc_arn": f"arn:aws:ec2:{REGION}:{acct}:vpc/{vpc}",
        "local_az": f"{REGION}{'abc'[host % 3]}",
        "local_region": REGION,
        "destination_category": cat,
        "connections": {"attempted": 1, "established": 1, "closed": 0, "failed": 0,
                        "refused": 0, "timed_out": 0, "reset": 0, "active": 1},
        "bytes_sent": (host + 1) * 1000 + i * 10,
        "bytes_received": i * 7,
        "segments_sent": 1000,
        "segments_received": 900,
        "retransmissions": retx,
        "timeouts": 1 if i % 7 == 0 else 0,
        "rtt_us": latency(10 + i, 500 + host * 10 + i),
        "handshake_us": latency(1, 300),
    }
    if cat != "AMAZON_S3":
        f.update({"remote_subnet_id": f"subnet-0e2e01{i % 2:02d}", "remote_vpc_id": VPC_ID,
                  "remote_az": f"{REGION}{'ab'[i % 2]}", "remote_region": REGION})
    if i == 1:
        f["kubernetes"] = {"local_pod_name": f"web-{host}", "local_pod_namespace": "shop"}
    return f


def make_report(host, minute, t0):
    start = t0 + dt.timedelta(minutes=minute)
    return {
        "report_id": f"e2e-{host}-{minute}-{uuid.uuid4()}",
        "schema_version": 1,
        "window": {"start": iso(start), "end": iso(start + dt.timedelta(minutes=1))},
        "agent": {"version": "e2e", "hostname": f"host-{host}"},
        "flows": [flow_for(host, i, minute) for i in range(FLOWS)],
        "other": {"flows": 3, "connections": {"attempted": 0, "established": 0, "closed": 0, "failed": 0,
                                              "refused": 0, "timed_out": 0, "reset": 0, "active": 0},
                  "bytes_sent": 5, "bytes_received": 5, "segments_sent": 1, "segments_received": 1,
                  "retransmissions": 0, "timeouts": 0, "rtt_us": ZERO, "handshake_us": ZERO},
        "agent_stats": {"events": 10, "ringbuf_drops": 0, "map_full": {"sockets": 0, "flows": 0, "listeners": 0},
                        "untracked_events": 0, "flows_tracked": FLOWS, "sockets_tracked": FLOWS,
                        "cpu_seconds": 0.01, "rss_bytes": 1 << 20},
    }


def _lower(headers):
    return {k.lower(): v for k, v in headers.items()}


class Publisher:
    def __init__(self, endpoint, access_key, secret_key):
        self.endpoint = endpoint
        self.creds = Credentials(access_key, secret_key)

    def post(self, body, headers=None, sign=True):
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        req = AWSRequest(method="POST", url=self.endpoint + "/publish", data=body, headers=headers)
        if sign:
            SigV4Auth(self.creds, "networkflowmonitor", REGION).add_auth(req)
        prepared = req.prepare()
        r = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers), method="POST")
        try:
            with urllib.request.urlopen(r, timeout=30) as resp:
                return resp.status, _lower(resp.headers), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, _lower(e.headers), json.loads(e.read() or b"{}")

    def get(self, path):
        req = AWSRequest(method="GET", url=self.endpoint + path)
        SigV4Auth(self.creds, "networkflowmonitor", REGION).add_auth(req)
        prepared = req.prepare()
        r = urllib.request.Request(prepared.url, headers=dict(prepared.headers), method="GET")
        with urllib.request.urlopen(r, timeout=30) as resp:
            return json.loads(resp.read())


# ---------------------------------------------------------------------------- expectations


def expected_monitor_ranking(reports, metric, category):
    """What MonitorTopContributors should return for a monitor on VPC_ID (no remote filter)."""
    groups = {}
    for r in reports:
        for f in r["flows"]:
            if f["local_vpc_id"] != VPC_ID or f["destination_category"] != category:
                continue
            g = groups.setdefault((f["local_ip"], f["remote_ip"], f["target_port"]),
                                  {"bytes": 0, "retx": 0, "to": 0, "rtt_sum": 0.0, "rtt_n": 0})
            g["bytes"] += f["bytes_sent"] + f["bytes_received"]
            g["retx"] += f["retransmissions"]
            g["to"] += f["timeouts"]
            g["rtt_sum"] += f["rtt_us"]["mean"] * f["rtt_us"]["count"]
            g["rtt_n"] += f["rtt_us"]["count"]
    def value(g):
        return {"DATA_TRANSFERRED": g["bytes"], "RETRANSMISSIONS": g["retx"], "TIMEOUTS": g["to"],
                "ROUND_TRIP_TIME": g["rtt_sum"] / g["rtt_n"] if g["rtt_n"] else None}[metric]
    rows = [(value(g), k) for k, g in groups.items() if value(g) is not None]
    rows.sort(key=lambda x: (-x[0], x[1][0], x[1][1], str(x[1][2])))
    return rows


def expected_workload(reports, metric, category):
    groups = {}
    for r in reports:
        for f in r["flows"]:
            if f["destination_category"] != category or OTHER_ACCOUNT in f["local_subnet_arn"]:
                continue
            remote = f.get("remote_subnet_id") or f["remote_ip"]
            key = (f["local_subnet_id"], remote)
            v = {"DATA_TRANSFERRED": f["bytes_sent"] + f["bytes_received"], "RETRANSMISSIONS": f["retransmissions"],
                 "TIMEOUTS": f["timeouts"]}[metric]
            groups[key] = groups.get(key, 0) + v
    return sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------------------- the test


def wait_for(what, fn, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--access-key", default="AKIDE2ETEST")
    ap.add_argument("--secret-key", default="e2e-dummy-secret")
    ap.add_argument("--expect-auth", action="store_true", help="the server verifies SigV4 (--auth sigv4)")
    a = ap.parse_args()

    cfg = Config(retries={"max_attempts": 1, "mode": "standard"})
    nfm = boto3.client("networkflowmonitor", region_name=REGION, endpoint_url=a.endpoint,
                       aws_access_key_id=a.access_key, aws_secret_access_key=a.secret_key, config=cfg)
    raw = boto3.client("networkflowmonitor", region_name=REGION, endpoint_url=a.endpoint,
                       aws_access_key_id=a.access_key, aws_secret_access_key=a.secret_key,
                       config=Config(retries={"max_attempts": 1}, parameter_validation=False))
    pub = Publisher(a.endpoint, a.access_key, a.secret_key)

    # ---- authentication
    if a.expect_auth:
        bad = boto3.client("networkflowmonitor", region_name=REGION, endpoint_url=a.endpoint,
                           aws_access_key_id=a.access_key, aws_secret_access_key="wrong-secret", config=cfg)
        expect_error("AccessDeniedException", bad.list_scopes)
        unknown = boto3.client("networkflowmonitor", region_name=REGION, endpoint_url=a.endpoint,
                               aws_access_key_id="AKIDUNKNOWN", aws_secret_access_key="x", config=cfg)
        expect_error("UnrecognizedClientException", unknown.list_monitors)
        status, headers, body = pub.post(b"{}", sign=False)
        check(status == 403, f"unsigned /publish answered {status}")
        check(headers.get("x-amzn-errortype") == "AccessDeniedException", f"unsigned /publish: {headers}")

    # ---- scopes
    token = str(uuid.uuid4())
    targets = [{"region": REGION, "targetIdentifier": {"targetId": {"accountId": ACCOUNT}, "targetType": "ACCOUNT"}}]
    sc = nfm.create_scope(targets=targets, clientToken=token, tags={"env": "e2e"})
    scope_id, scope_arn = sc["scopeId"], sc["scopeArn"]
    check(sc["status"] in ("IN_PROGRESS", "SUCCEEDED"), f"new scope status {sc['status']}")
    check(scope_arn.startswith("arn:aws:networkflowmonitor:") and scope_arn.endswith(scope_id), scope_arn)
    again = nfm.create_scope(targets=targets, clientToken=token, tags={"env": "e2e"})
    check(again["scopeId"] == scope_id, "CreateScope with the same clientToken is idempotent")
    expect_error("ConflictException", nfm.create_scope, targets=targets, clientToken=token, tags={"env": "other"})
    wait_for("scope SUCCEEDED", lambda: nfm.get_scope(scopeId=scope_id)["status"] == "SUCCEEDED")
    got = nfm.get_scope(scopeId=scope_id)
    check(got["targets"] == targets, f"GetScope targets {got['targets']}")
    check(any(s["scopeId"] == scope_id for s in nfm.list_scopes()["scopes"]), "ListScopes lists the scope")
    up = nfm.update_scope(scopeId=scope_id, resourcesToAdd=[
        {"region": "eu-west-1", "targetIdentifier": {"targetId": {"accountId": ACCOUNT}, "targetType": "ACCOUNT"}}])
    check(up["scopeId"] == scope_id, "UpdateScope")
    check(len(nfm.get_scope(scopeId=scope_id)["targets"]) == 2, "UpdateScope added a target")
    nfm.update_scope(scopeId=scope_id, resourcesToDelete=[
        {"region": "eu-west-1", "targetIdentifier": {"targetId": {"accountId": ACCOUNT}, "targetType": "ACCOUNT"}}])
    check(nfm.get_scope(scopeId=scope_id)["targets"] == targets, "UpdateScope removed the target")
    expect_error("ResourceNotFoundException", nfm.get_scope, scopeId="no-such-scope")
    expect_error("ValidationException", nfm.create_scope, targets=[
        {"region": REGION, "targetIdentifier": {"targetId": {"accountId": "12345"}, "targetType": "ACCOUNT"}}])

    # ---- monitors
    mtoken = str(uuid.uuid4())
    local = [{"type": "AWS::EC2::VPC", "identifier": VPC_ARN}]
    m = nfm.create_monitor(monitorName="e2e-web", localResources=local, scopeArn=scope_arn,
                           clientToken=mtoken, tags={"team": "net"})
    check(m["monitorStatus"] == "PENDING", f"new monitor status {m['monitorStatus']}")
    check(m["localResources"] == local and m["remoteResources"] == [], "CreateMonitor echoes resources")
    check(isinstance(m["createdAt"], dt.datetime), "createdAt parses as a timestamp")
    monitor_arn = m["monitorArn"]
    m2 = nfm.create_monitor(monitorName="e2e-web", localResources=local, scopeArn=scope_arn,
                            clientToken=mtoken, tags={"team": "net"})
    check(m2["monitorArn"] == monitor_arn, "CreateMonitor with the same clientToken is idempotent")
    expect_error("ConflictException", nfm.create_monitor, monitorName="e2e-web", localResources=local,
                 scopeArn=scope_arn)
    nfm.create_monitor(monitorName="e2e-s3", localResources=local, scopeArn=scope_arn,
                       remoteResources=[{"type": "AWS::AWSService", "identifier": "S3"}])
    for bad_name in ("bad name!", "x" * 256):
        expect_error("ValidationException", nfm.create_monitor, monitorName=bad_name, localResources=local,
                     scopeArn=scope_arn)
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", scopeArn=scope_arn,
                 localResources=[{"type": "AWS::EC2::Instance", "identifier": "i-1"}])
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", scopeArn=scope_arn,
                 localResources=local, remoteResources=[{"type": "AWS::AWSService", "identifier": "SQS"}])
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", localResources=local,
                 scopeArn=scope_arn, clientToken="NOT-A-UUID-NOT-A-UUID-NOT-A-UUID-123")
    expect_error("ValidationException", raw.create_monitor, monitorName="ok", scopeArn=scope_arn)
    expect_error("ValidationException", raw.create_monitor, monitorName="ok", localResources=[], scopeArn=scope_arn)
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", localResources=local,
                 scopeArn="arn:aws:networkflowmonitor:us-east-1:123456789012:scope/none")
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", localResources=local,
                 scopeArn=scope_arn, tags={"k" * 129: "v"})
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", scopeArn=scope_arn,
                 localResources=[{"type": "AWS::AvailabilityZone", "identifier": "eu-west-1a"}])
    expect_error("ValidationException", nfm.create_monitor, monitorName="ok", scopeArn=scope_arn, localResources=local,
                 remoteResources=[{"type": "AWS::AvailabilityZone", "identifier": "eu-west-1a"}])
    expect_error("ResourceNotFoundException", nfm.get_monitor, monitorName="no-such-monitor")
    wait_for("monitor ACTIVE", lambda: nfm.get_monitor(monitorName="e2e-web")["monitorStatus"] == "ACTIVE")
    wait_for("monitor ACTIVE", lambda: nfm.get_monitor(monitorName="e2e-s3")["monitorStatus"] == "ACTIVE")
    pages = list(nfm.get_paginator("list_monitors").paginate(PaginationConfig={"PageSize": 1}))
    names = [x["monitorName"] for p in pages for x in p["monitors"]]
    check(names == ["e2e-s3", "e2e-web"] and len(pages) >= 2, f"ListMonitors pages {names} / {len(pages)}")
    check([x["monitorName"] for x in nfm.list_monitors(monitorStatus="ACTIVE")["monitors"]] == ["e2e-s3", "e2e-web"],
          "ListMonitors monitorStatus=ACTIVE")
    check(nfm.list_monitors(monitorStatus="PENDING")["monitors"] == [], "ListMonitors monitorStatus=PENDING")
    expect_error("ValidationException", nfm.list_monitors, monitorStatus="SLEEPING")
    expect_error("ValidationException", nfm.list_monitors, maxResults=26)
    expect_error("ValidationException", nfm.list_monitors, nextToken="zz-not-a-token")
    u = nfm.update_monitor(monitorName="e2e-web",
                           localResourcesToAdd=[{"type": "AWS::AvailabilityZone", "identifier": "us-east-1a"}],
                           remoteResourcesToAdd=[{"type": "AWS::Region", "identifier": REGION}])
    check(len(u["localResources"]) == 2 and len(u["remoteResources"]) == 1, f"UpdateMonitor add: {u}")
    u = nfm.update_monitor(monitorName="e2e-web",
                           localResourcesToRemove=[{"type": "AWS::AvailabilityZone", "identifier": "us-east-1a"}],
                           remoteResourcesToRemove=[{"type": "AWS::Region", "identifier": REGION}])
    check(u["localResources"] == local and u["remoteResources"] == [], f"UpdateMonitor remove: {u}")
    expect_error("ResourceNotFoundException", nfm.update_monitor, monitorName="no-such-monitor",
                 localResourcesToAdd=local)

    # ---- tags, on monitor and scope ARNs
    for arn, initial in ((monitor_arn, {"team": "net"}), (scope_arn, {"env": "e2e"})):
        check(nfm.list_tags_for_resource(resourceArn=arn)["tags"] == initial, f"initial tags of {arn}")
        nfm.tag_resource(resourceArn=arn, tags={"a": "1", "b": "2"})
        check(nfm.list_tags_for_resource(resourceArn=arn)["tags"] == {**initial, "a": "1", "b": "2"}, "TagResource")
        nfm.untag_resource(resourceArn=arn, tagKeys=["a", "b"])
        check(nfm.list_tags_for_resource(resourceArn=arn)["tags"] == initial, "UntagResource")
    missing_arn = "arn:aws:networkflowmonitor:us-east-1:123456789012:monitor/none"
    expect_error("ResourceNotFoundException", nfm.list_tags_for_resource, resourceArn=missing_arn)
    expect_error("ResourceNotFoundException", nfm.tag_resource, resourceArn=missing_arn, tags={"a": "b"})
    expect_error("ValidationException", raw.tag_resource, resourceArn=monitor_arn, tags={"": "b"})

    # ---- ingest
    t0 = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    reports = [make_report(h, mi, t0) for mi in range(MINUTES) for h in range(HOSTS + 1)]
    for i, r in enumerate(reports):
        body = json.dumps(r).encode()
        headers = {}
        if i % 5 == 0:
            body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
        status, _, resp = pub.post(body, headers)
        check(status == 200 and resp.get("stored") is True, f"publish {r['report_id']}: {status} {resp}")
    status, _, resp = pub.post(json.dumps(reports[0]).encode())
    check(status == 200 and resp["stored"] is False and resp["duplicate"] is True, f"duplicate publish: {resp}")
    broken = dict(reports[1], report_id=str(uuid.uuid4()))
    broken["flows"] = [dict(broken["flows"][0])]
    del broken["flows"][0]["retransmissions"]
    status, headers, resp = pub.post(json.dumps(broken).encode())
    check(status == 400 and headers.get("x-amzn-errortype") == "ValidationException", f"malformed report: {status}")
    check("retransmissions" in resp.get("message", ""), f"malformed report reason: {resp}")
    status, _, resp = pub.post(b"\x1f\x8b not really gzip")
    check(status == 400 and "gzip" in resp.get("message", ""), f"bad gzip: {status} {resp}")

    start, end = t0, t0 + dt.timedelta(minutes=MINUTES)

    # ---- MonitorTopContributors, every metric, paged
    units = {"ROUND_TRIP_TIME": "Microseconds", "TIMEOUTS": "Count", "RETRANSMISSIONS": "Count",
             "DATA_TRANSFERRED": "Bytes"}
    for metric, unit in units.items():
        limit = 25
        qid = nfm.start_query_monitor_top_contributors(monitorName="e2e-web", startTime=start, endTime=end,
                                                       metricName=metric, destinationCategory="INTER_AZ",
                                                       limit=limit)["queryId"]
        final = wait_for("query", lambda: (lambda s: s if s in ("SUCCEEDED", "FAILED", "CANCELED") else None)(
            nfm.get_query_status_monitor_top_contributors(monitorName="e2e-web", queryId=qid)["status"]))
        check(final == "SUCCEEDED", f"{metric} query ended {final}")
        pages = list(nfm.get_paginator("get_query_results_monitor_top_contributors").paginate(
            monitorName="e2e-web", queryId=qid, PaginationConfig={"PageSize": 7}))
        rows = [r for p in pages for r in p["topContributors"]]
        check(len(pages) == 4, f"{metric}: {len(pages)} pages of 7 for {len(rows)} rows")
        check(all(p["unit"] == unit for p in pages), f"{metric} unit {pages[0].get('unit')}")
        want = expected_monitor_ranking(reports, metric, "INTER_AZ")[:limit]
        check(len(rows) == len(want), f"{metric}: {len(rows)} rows, expected {len(want)}")
        got_values = [r["value"] for r in rows]
        want_values = [w[0] for w in want]
        if metric == "ROUND_TRIP_TIME":
            check(all(abs(g - w) <= 1 for g, w in zip(got_values, want_values)), f"RTT {got_values} vs {want_values}")
        else:
            check(got_values == want_values, f"{metric} values {got_values} vs {want_values}")
            if want[0][0] != want[1][0]:  # ties are ordered by the database's collation
                check((rows[0]["localIp"], rows[0]["remoteIp"], rows[0]["targetPort"]) == want[0][1],
                      f"{metric} top row {rows[0]} vs {want[0]}")
        check(got_values == sorted(got_values, reverse=True), f"{metric} ranked")
        r0 = rows[0]
        for k in ("localIp", "remoteIp", "targetPort", "destinationCategory", "localVpcId", "localVpcArn",
                  "localSubnetId", "localAz", "localRegion", "localInstanceId", "remoteSubnetId", "value"):
            check(k in r0, f"row lacks {k}: {r0}")
        check(r0["destinationCategory"] == "INTER_AZ", "category filter")
        check(all(r["localVpcId"] == VPC_ID for r in rows), "only the monitor's VPC")
    # Kubernetes metadata comes through on flows that have it.
    qid = nfm.start_query_monitor_top_contributors(monitorName="e2e-web", startTime=start, endTime=end,
                                                   metricName="DATA_TRANSFERRED", destinationCategory="INTER_AZ",
                                                   limit=500)["queryId"]
    wait_for("query", lambda: nfm.get_query_status_monitor_top_contributors(
        monitorName="e2e-web", queryId=qid)["status"] == "SUCCEEDED")
    allrows = nfm.get_query_results_monitor_top_contributors(monitorName="e2e-web", queryId=qid,
                                                             maxResults=1000)["topContributors"]
    check(len(allrows) == len(expected_monitor_ranking(reports, "DATA_TRANSFERRED", "INTER_AZ")), "limit 500")
    k8s = [r for r in allrows if "kubernetesMetadata" in r]
    check(k8s and k8s[0]["kubernetesMetadata"]["localPodNamespace"] == "shop", "kubernetesMetadata")
    # The S3 monitor sees only S3 flows.
    qid = nfm.start_query_monitor_top_contributors(monitorName="e2e-s3", startTime=start, endTime=end,
                                                   metricName="DATA_TRANSFERRED", destinationCategory="AMAZON_S3")["queryId"]
    wait_for("query", lambda: nfm.get_query_status_monitor_top_contributors(
        monitorName="e2e-s3", queryId=qid)["status"] == "SUCCEEDED")
    s3rows = nfm.get_query_results_monitor_top_contributors(monitorName="e2e-s3", queryId=qid)["topContributors"]
    check(len(s3rows) == HOSTS and all(r["remoteIp"].startswith("52.") for r in s3rows), f"S3 rows {len(s3rows)}")

    # ---- query input validation
    q = dict(monitorName="e2e-web", startTime=start, endTime=end, destinationCategory="INTER_AZ")
    expect_error("ValidationException", nfm.start_query_monitor_top_contributors, metricName="LATENCY", **q)
    expect_error("ValidationException", nfm.start_query_monitor_top_contributors, metricName="TIMEOUTS", limit=501, **q)
    expect_error("ValidationException", raw.start_query_monitor_top_contributors, metricName="TIMEOUTS", limit=0, **q)
    expect_error("ValidationException", nfm.start_query_monitor_top_contributors, monitorName="e2e-web",
                 startTime=end, endTime=start, metricName="TIMEOUTS", destinationCategory="INTER_AZ")
    expect_error("ValidationException", nfm.start_query_monitor_top_contributors, monitorName="e2e-web",
                 startTime=start, endTime=end, metricName="TIMEOUTS", destinationCategory="SOMEWHERE")
    expect_error("ValidationException", raw.start_query_monitor_top_contributors, monitorName="e2e-web",
                 startTime=start, endTime=end, metricName="TIMEOUTS")
    expect_error("ValidationException", nfm.start_query_monitor_top_contributors, monitorName="nope",
                 startTime=start, endTime=end, metricName="TIMEOUTS", destinationCategory="INTER_AZ")
    expect_error("ValidationException", nfm.start_query_workload_insights_top_contributors, scopeId=scope_id,
                 startTime=start, endTime=end, metricName="ROUND_TRIP_TIME", destinationCategory="INTER_AZ")
    expect_error("ResourceNotFoundException", nfm.get_query_results_monitor_top_contributors,
                 monitorName="e2e-web", queryId="no-such-query")
    expect_error("ValidationException", nfm.get_query_status_monitor_top_contributors,
                 monitorName="e2e-web", queryId="no-such-query")

    # ---- WorkloadInsightsTopContributors
    for metric in ("DATA_TRANSFERRED", "RETRANSMISSIONS", "TIMEOUTS"):
        qid = nfm.start_query_workload_insights_top_contributors(scopeId=scope_id, startTime=start, endTime=end,
                                                                 metricName=metric, destinationCategory="INTER_AZ",
                                                                 limit=4)["queryId"]
        wait_for("query", lambda: nfm.get_query_status_workload_insights_top_contributors(
            scopeId=scope_id, queryId=qid)["status"] == "SUCCEEDED")
        pages = list(nfm.get_paginator("get_query_results_workload_insights_top_contributors").paginate(
            scopeId=scope_id, queryId=qid, PaginationConfig={"PageSize": 3}))
        rows = [r for p in pages for r in p["topContributors"]]
        want = expected_workload(reports, metric, "INTER_AZ")[:4]
        check(len(pages) == 2, f"WI {metric}: {len(pages)} pages")
        check([r["value"] for r in rows] == [w[1] for w in want], f"WI {metric}: {rows} vs {want}")
        check(all(r["accountId"] == ACCOUNT and r["localRegion"] == REGION for r in rows), f"WI rows {rows[0]}")
        check((rows[0]["localSubnetId"], rows[0]["remoteIdentifier"]) == want[0][0], f"WI top {rows[0]} vs {want[0]}")
        check("localVpcId" in rows[0] and "localAz" in rows[0] and "localSubnetArn" in rows[0], f"WI fields {rows[0]}")

    # ---- WorkloadInsightsTopContributorsData
    qid = nfm.start_query_workload_insights_top_contributors_data(scopeId=scope_id, startTime=start, endTime=end,
                                                                  metricName="RETRANSMISSIONS",
                                                                  destinationCategory="INTER_AZ")["queryId"]
    wait_for("query", lambda: nfm.get_query_status_workload_insights_top_contributors_data(
        scopeId=scope_id, queryId=qid)["status"] == "SUCCEEDED")
    pages = list(nfm.get_paginator("get_query_results_workload_insights_top_contributors_data").paginate(
        scopeId=scope_id, queryId=qid, PaginationConfig={"PageSize": 2}))
    points = [d for p in pages for d in p["datapoints"]]
    check(pages[0]["unit"] == "Count", f"data unit {pages[0].get('unit')}")
    want = expected_workload(reports, "RETRANSMISSIONS", "INTER_AZ")
    check(len(points) == min(10, len(want)), f"{len(points)} series")
    top = points[0]
    check(top["label"] == f"{want[0][0][0]} -> {want[0][0][1]}", f"top series {top['label']} vs {want[0]}")
    check(len(top["timestamps"]) == MINUTES and len(top["values"]) == MINUTES, "one point per minute")
    check(isinstance(top["timestamps"][0], dt.datetime) and top["timestamps"][0] == start, "timestamps")
    check(sum(top["values"]) == want[0][1], f"series sums to the total {sum(top['values'])} vs {want[0][1]}")
    check(top["values"][DEGRADED_MINUTE] > top["values"][DEGRADED_MINUTE - 1], "spike visible in the series")

    # ---- StopQuery (all three kinds)
    for start_fn, stop_fn, status_fn, kw in (
        (nfm.start_query_monitor_top_contributors, nfm.stop_query_monitor_top_contributors,
         nfm.get_query_status_monitor_top_contributors, {"monitorName": "e2e-web", "limit": 5}),
        (nfm.start_query_workload_insights_top_contributors, nfm.stop_query_workload_insights_top_contributors,
         nfm.get_query_status_workload_insights_top_contributors, {"scopeId": scope_id, "limit": 5}),
        (nfm.start_query_workload_insights_top_contributors_data,
         nfm.stop_query_workload_insights_top_contributors_data,
         nfm.get_query_status_workload_insights_top_contributors_data, {"scopeId": scope_id}),
    ):
        ids = {k: v for k, v in kw.items() if k != "limit"}
        qid = start_fn(startTime=start, endTime=end, metricName="TIMEOUTS", destinationCategory="INTER_AZ", **kw)["queryId"]
        stop_fn(queryId=qid, **ids)
        st = status_fn(queryId=qid, **ids)["status"]
        # The query may have finished before the stop arrived; a stop never fails it.
        check(st in ("CANCELED", "SUCCEEDED"), f"status after stop: {st}")
        expect_error("ValidationException", stop_fn, queryId="no-such-query", **ids)

    # ---- network health indicator
    query = urllib.parse.urlencode({"startTime": iso(start), "endTime": iso(end)})
    h = pub.get(f"/monitors/e2e-web/networkHealth?{query}")
    minutes = h["minutes"]
    check(len(minutes) == MINUTES, f"{len(minutes)} health minutes")
    check(minutes[0]["status"] == "LEARNING", f"first minute {minutes[0]['status']}")
    check(minutes[DEGRADED_MINUTE]["status"] == "DEGRADED", f"minute {DEGRADED_MINUTE}: {minutes[DEGRADED_MINUTE]}")
    check(minutes[DEGRADED_MINUTE]["degradedHosts"] == 8, f"degraded hosts {minutes[DEGRADED_MINUTE]}")
    check(minutes[ONE_HOST_MINUTE]["status"] == "HEALTHY", f"one bad host: {minutes[ONE_HOST_MINUTE]}")
    check(minutes[ONE_HOST_MINUTE]["degradedHosts"] == 1, f"one bad host counted: {minutes[ONE_HOST_MINUTE]}")
    check(minutes[30]["status"] == "HEALTHY" and minutes[30]["hosts"] == HOSTS, f"minute 30: {minutes[30]}")
    check(h["networkHealthIndicator"] == "DEGRADED", "overall indicator")

    # ---- deletes
    expect_error("ConflictException", nfm.delete_scope, scopeId=scope_id)
    nfm.delete_monitor(monitorName="e2e-web")
    check(nfm.get_monitor(monitorName="e2e-web")["monitorStatus"] == "DELETING", "DELETING while deleting")
    wait_for("monitor gone", lambda: _gone(nfm, "e2e-web"))
    nfm.delete_monitor(monitorName="e2e-s3")
    wait_for("monitor gone", lambda: _gone(nfm, "e2e-s3"))
    expect_error("ResourceNotFoundException", nfm.delete_monitor, monitorName="e2e-web")
    nfm.delete_scope(scopeId=scope_id)
    wait_for("scope gone", lambda: _scope_gone(nfm, scope_id))
    print(f"e2e_boto3: all {CHECKS} checks passed against {a.endpoint}")


def _gone(nfm, name):
    try:
        nfm.get_monitor(monitorName=name)
        return False
    except ClientError as e:
        return e.response["Error"]["Code"] == "ResourceNotFoundException"


def _scope_gone(nfm, scope_id):
    try:
        nfm.get_scope(scopeId=scope_id)
        return False
    except ClientError as e:
        return e.response["Error"]["Code"] == "ResourceNotFoundException"


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"e2e_boto3: FAILED after {CHECKS} checks: {e}", file=sys.stderr)
        sys.exit(1)
