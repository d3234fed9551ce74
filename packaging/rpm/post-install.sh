# flow-agent: state directory; enable (do not start) the service.
install -d -m 0750 -o flow-agent -g flow-agent /var/lib/flow-agent
if command -v systemctl >/dev/null; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # First install only ($1 = 1); upgrades keep the admin's choice.
    [ "$1" = 1 ] && systemctl enable flow-agent.service >/dev/null 2>&1 || true
fi
echo "flow-agent: enabled, not started. Check this host with 'flow-agent check', then 'systemctl start flow-agent'."
exit 0
