# k3sfleet-agent %postun ($1: 0 erase, 1 upgrade): reload units; on upgrade
# restart a running agent on the new binary. State (/var/lib/k3sfleet/agent)
# and credentials (/etc/k3sfleet/agent) are kept: rpm has no purge, delete
# them by hand when the host leaves the fleet.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart k3sfleet-agent.service >/dev/null 2>&1 || :
    fi
fi
