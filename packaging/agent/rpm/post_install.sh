# egresswatch-agent: the service user; the unit is known to systemd, neither enabled nor started.
systemd-sysusers /usr/lib/sysusers.d/egresswatch-agent.conf
chown root:egresswatch-agent /etc/egresswatch-agent
chmod 0770 /etc/egresswatch-agent
systemctl daemon-reload >/dev/null 2>&1 || :
