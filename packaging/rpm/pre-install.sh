# flow-agent: the service user.
getent group flow-agent >/dev/null || groupadd --system flow-agent
getent passwd flow-agent >/dev/null || useradd --system --gid flow-agent --no-create-home \
    --home-dir /var/lib/flow-agent --shell /sbin/nologin --comment "flow-agent eBPF flow capture" flow-agent
exit 0
