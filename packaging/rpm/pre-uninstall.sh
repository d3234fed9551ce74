# flow-agent: on erase ($1 = 0), stop and disable the service.
if [ "$1" = 0 ] && command -v systemctl >/dev/null; then
    systemctl disable --now flow-agent.service >/dev/null 2>&1 || true
fi
exit 0
