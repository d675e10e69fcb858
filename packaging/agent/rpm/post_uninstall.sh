# egresswatch-agent: RPM has no purge; the state in /var/lib/egresswatch-agent stays (remove it by hand).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart egresswatch-agent.service >/dev/null 2>&1 || :
fi
