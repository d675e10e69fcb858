# egresswatch-collector: the service user; the unit is known to systemd, neither enabled nor started.
systemd-sysusers /usr/lib/sysusers.d/egresswatch-collector.conf
chown root:egresswatch-collector /etc/egresswatch-collector
chmod 0750 /etc/egresswatch-collector
systemctl daemon-reload >/dev/null 2>&1 || :
