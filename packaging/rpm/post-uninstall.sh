# flow-agent: on erase ($1 = 0), the state directory goes; the user stays (its files may remain).
if [ "$1" = 0 ]; then
    rm -rf /var/lib/flow-agent
    command -v systemctl >/dev/null && systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
